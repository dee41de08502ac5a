"""Security defaults: servers bind 127.0.0.1 unless told otherwise; a pickled object in a checkpoint and a python
tag in YAML are refused without running their code; the docker images run as a non-root user. ``pytest -m faults``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from reliability_support import (
    REPO,
    SPACE,
    child_env,
)

from wilson_ray.cli import main

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------------------------
# Security defaults


def _stub(bin_dir: Path, name: str, log: Path) -> None:
    """An executable ``name`` on PATH that records its arguments instead of starting a server."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
    path.chmod(0o755)


@pytest.mark.parametrize(
    "script, binary, env, expected",
    [
        ("mlflow_server.sh", "mlflow", {}, "--host 127.0.0.1 --port 5000"),
        ("mlflow_server.sh", "mlflow", {"MLFLOW_HOST": "0.0.0.0"}, "--host 0.0.0.0 --port 5000"),
        ("start_head.sh", "ray", {}, "--dashboard-host 127.0.0.1 --dashboard-port 8265"),
        ("start_head.sh", "ray", {"DASHBOARD_HOST": "0.0.0.0"}, "--dashboard-host 0.0.0.0"),
    ],
    ids=["mlflow-default", "mlflow-told-otherwise", "ray-default", "ray-told-otherwise"],
)
def test_server_scripts_bind_localhost_unless_told_otherwise(script, binary, env, expected, tmp_path):
    """Run the real script with a stub ``mlflow``/``ray`` that records the command line it would start."""
    log = tmp_path / "calls.log"
    _stub(tmp_path / "bin", binary, log)
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_HOST", "DASHBOARD_HOST", "RAY_ADDRESS")}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / script), *([str(tmp_path / "store")] if binary == "mlflow" else [])],
        env={**base, **env, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (call,) = log.read_text().splitlines()
    assert call.startswith(f"{binary} ") and expected in call, call


def test_local_ray_cluster_dashboard_binds_localhost(monkeypatch):
    """``wilson-ray sweep`` without --address starts a local cluster whose dashboard listens on 127.0.0.1."""
    import ray

    from wilson_ray.orchestration import cluster

    seen = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    assert cluster.init_ray(None, 2) is True
    assert seen["dashboard_host"] == "127.0.0.1" and seen["include_dashboard"] is True


def test_compose_publishes_ports_on_localhost_and_mlflow_hint():
    from wilson_ray.tracking.mlflow_tracker import ui_command

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports
    assert "--host 127.0.0.1" in ui_command("sqlite:////runs/mlflow.db")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_docker_images_run_as_non_root(dockerfile):
    lines = [ln.strip() for ln in (REPO / "docker" / dockerfile).read_text().splitlines()]
    instructions = [ln.split(None, 1) for ln in lines if ln and not ln.startswith("#") and ln.split()[0].isupper()]
    users = [i for i, ins in enumerate(instructions) if ins[0] == "USER"]
    assert users, f"{dockerfile} has no USER"
    last = instructions[users[-1]][1].split(":")[0]
    assert last not in ("root", "0"), last
    assert not any(ins[0] == "RUN" for ins in instructions[users[-1] :]), "RUN after the last USER"
    assert any("useradd" in ln and f" {last}" in ln for ln in lines), "the user is not created in the image"


class Payload:
    """A pickled object whose unpickling runs a shell command (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_object_is_refused_unexecuted(tmp_path, capsys):
    import torch

    from wilson_ray.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
    from wilson_ray.errors import UserError

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "x": Payload(marker)}, evil)
    # control: the payload is real (an unsafe load would run it)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UserError) as err:
        load_checkpoint(evil)
    assert "refused by weights_only=True" in str(err.value) and "\n" not in str(err.value)
    assert main(["eval", "--ckpt", str(evil)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"checkpoint {evil}: not a readable weights-only checkpoint" in lines[0]
    assert "refused by weights_only=True" in lines[0] and "posix.system" in lines[0]
    assert not marker.exists()


def test_checkpoint_with_pickled_object_refused_by_a_process(tmp_path):
    import torch

    from wilson_ray.checkpoint import CHECKPOINT_FORMAT

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "x": Payload(marker)}, evil)
    proc = subprocess.run(
        [sys.executable, "-m", "wilson_ray", "eval", "--ckpt", str(evil)],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "refused by weights_only=True" in proc.stderr
    assert not marker.exists()


def test_yaml_python_tags_are_refused_unexecuted(tmp_path, capsys):
    marker = tmp_path / "executed"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    # control: the document is a real payload for an unsafe loader
    yaml.unsafe_load(f"x: {tag}\n")
    assert marker.exists()
    marker.unlink()

    config = tmp_path / "config.yaml"
    config.write_text(f"data: {tag}\n")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.read_text().replace("name: demo-wilson-15-5", f"name: {tag}"))
    for argv, fragment in [
        (["train", "--config", str(config), "--cache-dir", str(tmp_path / "c")], f"config {config}: not valid YAML"),
        (["sweep", "--space", str(space), "--storage", str(tmp_path / "s")], f"search space {space}: not valid YAML"),
        (
            ["train", "--preset", "demo", "--set", f"method.alpha={tag}", "--cache-dir", str(tmp_path / "c")],
            "field 'method.alpha'",
        ),
    ]:
        assert main(argv) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
        assert not marker.exists()
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()


def test_package_uses_only_safe_loaders():
    """No unsafe YAML/pickle loading anywhere in the package; every torch.load is weights_only=True."""
    import re

    for path in (REPO / "wilson_ray").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert not re.search(r"\bpickle\.loads?\(|weights_only\s*=\s*False", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
