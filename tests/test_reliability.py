"""Reliability (issue 5): bad input, security defaults, atomic writes and the step-0 cache. ``pytest -m faults``.

* Bad input: one table of user mistakes, each run through the real CLI as typed (``main([...])`` in-process, two
  also as ``python -m wilson_ray`` processes): exit code 2, exactly one stderr line ``wilson-ray: error: ...`` naming
  the file/field/flag and what was expected, no traceback, nothing written (``--out``/``--storage``/``--cache-dir``
  absent or empty, data files unchanged).
* Security: servers bind 127.0.0.1 unless told otherwise; a pickled object in a checkpoint and a python tag in YAML
  are refused without running their code; the docker images run as a non-root user.
* Atomic writes: a writer SIGKILLed in the middle of a write (the generic helper, the real checkpoint save, the
  best-config export, the synthetic generator) leaves the previous good file or none, never a truncated one.
* Step cache: two processes asking for the same missing step-0 checkpoint train it once; a process killed while
  writing the entry leaves nothing a later call accepts, the lock is free, and the next call trains it again.

The Ray faults (worker SIGKILL, driver killed and rerun, MLflow server restart, NaN trial) are in
``tests/test_ray_sweep.py`` (``-m "faults and ray"``, about 10 min); everything here runs in the default suite.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.test_methods import TINY
from wilson_ray.cli import main

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "demo.yaml"
# The tiny training config of tests/test_methods.py as CLI flags (step 0 in a few seconds on one core).
SETS = [f"--set={k}={v}" for k, v in TINY.items()]
MANIFEST_CACHE = ".wilson-ray"  # the manifest cache every reader keeps next to the data (or in ~/.cache)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``root`` except the readers' manifest cache."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha1(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and MANIFEST_CACHE not in p.relative_to(root).parts
    }


def child_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------------------------
# Bad input: the table


@dataclass
class Ctx:
    """What a case builds its command from; ``empty`` must stay absent or empty, ``unchanged`` byte-identical."""

    tmp: Path
    synth_root: Path
    mp: pytest.MonkeyPatch
    empty: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)

    def data(self, damage: Callable[[Path], None] | None = None) -> Path:
        """A data root: the shared synthetic set, or a private copy of it broken by ``damage`` (watched)."""
        if damage is None:
            self.unchanged.append(self.synth_root)
            return self.synth_root
        root = self.tmp / "voc"
        shutil.copytree(self.synth_root, root, ignore=shutil.ignore_patterns(MANIFEST_CACHE))
        damage(root)
        self.unchanged.append(root)
        return root

    def train(self, *argv: str, root: Path | None = None) -> list[str]:
        out, cache = self.tmp / "out", self.tmp / "cache"
        self.empty += [out, cache]
        return [
            "train",
            "--preset",
            "demo",
            "--data-root",
            str(root or self.data()),
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            *SETS,
            *argv,
        ]

    def sweep(self, space: Path, *argv: str) -> list[str]:
        from wilson_ray.orchestration import tune_driver

        def no_cluster(address, num_cpus):
            raise AssertionError("this bad input must be refused before a Ray cluster is started")

        self.mp.setattr(tune_driver, "init_ray", no_cluster)
        storage = self.tmp / "storage"
        self.empty.append(storage)
        return ["sweep", "--space", str(space), "--storage", str(storage), "--data-root", str(self.data()), *argv]

    def space(self, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
        path = self.tmp / "space.yaml"
        if text is None:
            data = yaml.safe_load(SPACE.read_text())
            edit(data)
            text = yaml.safe_dump(data)
        path.write_text(text)
        self.unchanged.append(path)
        return path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        self.unchanged.append(path)
        return path

    def fake_cluster(self, cpus: float, gpus: float = 0.0) -> None:
        """The cluster check runs for real against a patched resource query: ``init_ray`` is replaced (no Ray
        cluster starts), ``ray.cluster_resources``/``ray.nodes`` report one node with ``cpus`` CPUs."""
        import ray

        from wilson_ray.orchestration import tune_driver

        res = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.mp.setattr(tune_driver, "init_ray", lambda address, num_cpus: False)
        self.mp.setattr(ray, "cluster_resources", lambda: dict(res, memory=1e10))
        self.mp.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": dict(res)}])


def _edit_list_line(root: Path) -> None:
    path = root / "splits" / "train_aug.txt"
    lines = path.read_text().splitlines()
    lines[2] = "/JPEGImages/nothere.jpg /SegmentationClassAug/synth_train_000002.png"
    path.write_text("\n".join(lines) + "\n")


def _truncate_jpeg(root: Path) -> None:
    path = root / "JPEGImages" / "synth_train_000005.jpg"
    path.write_bytes(path.read_bytes()[:200])


def _small_mask(root: Path) -> None:
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "SegmentationClassAug" / "synth_train_000001.png")


def _mask_value_37(root: Path) -> None:
    path = root / "SegmentationClassAug" / "synth_val_000002.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 37
    Image.fromarray(mask).save(path)


def _param(key: str, spec: dict) -> Callable[[dict], None]:
    return lambda d: d["parameters"].__setitem__(key, spec)


def _other_task_checkpoint(ctx: Ctx) -> list[str]:
    """``--out`` already holds a step-0 checkpoint of 15-5; ``--task 10-10 --steps 1`` must refuse it."""
    from wilson_ray.checkpoint import save_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.protocol import get_task
    from wilson_ray.step_setup import build_model

    cfg = resolve_config("demo", overrides=TINY)
    task = get_task("15-5")
    out = ctx.tmp / "out"
    save_checkpoint(out / "step0.pt", build_model(cfg, task, 0), cfg, task, 0, {})
    argv = ctx.train("--task", "10-10", "--steps", "1")
    ctx.empty.remove(out)
    ctx.unchanged.append(out)  # only the user's own step0.pt, untouched
    return argv


def _truncated_checkpoint(ctx: Ctx) -> list[str]:
    from wilson_ray.checkpoint import save_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.protocol import get_task
    from wilson_ray.step_setup import build_model

    cfg = resolve_config("demo", overrides=TINY)
    task = get_task("15-5")
    full = save_checkpoint(ctx.tmp / "full.pt", build_model(cfg, task, 0), cfg, task, 0, {}).read_bytes()
    return ["eval", "--ckpt", str(ctx.file("half.pt", full[: len(full) // 2]))]


def _torch_file_without_tag(ctx: Ctx) -> list[str]:
    import torch

    torch.save({"model": {"w": torch.zeros(2)}}, ctx.tmp / "plain.pt")
    ctx.unchanged.append(ctx.tmp / "plain.pt")
    return ["eval", "--ckpt", str(ctx.tmp / "plain.pt")]


def _unwritable_storage(ctx: Ctx) -> list[str]:
    blocker = ctx.file("blocker", "a file, not a folder\n")
    argv = ctx.sweep(SPACE, "--no-mlflow")
    argv[argv.index("--storage") + 1] = str(blocker / "sweeps")
    return argv


def _too_many_workers(ctx: Ctx) -> list[str]:
    argv = ctx.sweep(SPACE, "--workers-per-trial", "3", "--no-mlflow")
    ctx.fake_cluster(cpus=2.0)
    return argv


def _too_many_gpus(ctx: Ctx) -> list[str]:
    argv = ctx.sweep(SPACE, "--gpus-per-worker", "1", "--no-mlflow")
    ctx.fake_cluster(cpus=8.0)
    return argv


# (id, build the argv, fragments the one error line must contain; {tmp} is the test's tmp_path)
CASES: list[tuple[str, Callable[[Ctx], list[str]], list[str]]] = [
    (
        "missing-dataset-root",
        lambda c: ["data", "check", "--root", str(c.tmp / "nope")],
        ["data root: {tmp}/nope does not exist", "expected the VOC or COCO dataset folder"],
    ),
    (
        "missing-dataset-root-train",
        lambda c: c.train(root=c.tmp / "nope"),
        ["data root: {tmp}/nope does not exist", "expected the VOC dataset folder"],
    ),
    (
        "list-line-missing-image",
        lambda c: ["data", "check", "--root", str(c.data(_edit_list_line))],
        [
            "{tmp}/voc/splits/train_aug.txt line 3",
            "JPEGImages/nothere.jpg does not exist",
            "expected every file named in the list to exist",
        ],
    ),
    (
        "list-line-missing-image-train",
        lambda c: c.train(root=c.data(_edit_list_line)),
        ["train_aug.txt line 3", "JPEGImages/nothere.jpg does not exist", "expected every file named in the list"],
    ),
    (
        "corrupt-jpeg",
        lambda c: ["data", "check", "--root", str(c.data(_truncate_jpeg))],
        ["train_aug.txt line 6", "synth_train_000005.jpg is corrupt", "expected a valid image"],
    ),
    (
        "mask-wrong-size",
        lambda c: ["data", "check", "--root", str(c.data(_small_mask))],
        ["mask {tmp}/voc/SegmentationClassAug/synth_train_000001.png is 12x10 (WxH)", "is 64x64; expected equal sizes"],
    ),
    (
        "mask-value-outside-classes",
        lambda c: ["data", "check", "--root", str(c.data(_mask_value_37))],
        ["synth_val_000002.png contains value(s) 37", "expected only 0..20 and 255"],
    ),
    ("unknown-task", lambda c: c.train("--task", "15-6"), ["task: unknown task '15-6'", "expected one of 15-5, 10-10"]),
    (
        "step-out-of-range",
        lambda c: c.train("--steps", "7"),
        ["step: got 7 for task '15-5'", "expected an integer in 0..1"],
    ),
    (
        "steps-not-a-number",
        lambda c: c.train("--steps", "last"),
        ["--steps: got 'last'", "expected comma-separated step numbers"],
    ),
    (
        "overlap-without-overlap-split",
        lambda c: c.train("--task", "offline", "--overlap"),
        ["--overlap: task 'offline' has a single step", "expected a multi-step task"],
    ),
    (
        "overlap-without-overlap-split-splits",
        lambda c: ["data", "splits", "--root", str(c.data()), "--task", "offline", "--overlap"],
        ["--overlap: task 'offline' has a single step", "expected a multi-step task"],
    ),
    (
        "space-not-yaml",
        lambda c: c.sweep(c.space(text="parameters: [unclosed\n  - {")),
        ["search space {tmp}/space.yaml: not valid YAML at line 2", "expected"],
    ),
    (
        "space-unknown-parameter",
        lambda c: c.sweep(c.space(_param("method.lambda_clss", {"distribution": "uniform", "low": 0, "high": 1}))),
        [
            "search space {tmp}/space.yaml",
            "unknown parameter 'method.lambda_clss'",
            "did you mean 'method.lambda_cls'",
            "expected a dotted key",
        ],
    ),
    (
        "space-low-above-high",
        lambda c: c.sweep(c.space(_param("method.alpha", {"distribution": "uniform", "low": 0.9, "high": 0.1}))),
        ["search space {tmp}/space.yaml", "parameter 'method.alpha': low 0.9 > high 0.1, expected low <= high"],
    ),
    (
        "space-loguniform-nonpositive",
        lambda c: c.sweep(c.space(_param("method.lambda_cls", {"distribution": "loguniform", "low": 0, "high": 1}))),
        ["search space {tmp}/space.yaml", "parameter 'method.lambda_cls': loguniform low is 0, expected low > 0"],
    ),
    (
        "space-base-key-misspelt",
        lambda c: c.sweep(c.space(lambda d: d["base"]["set"].__setitem__("incremental.epoch", 3))),
        [
            "search space {tmp}/space.yaml",
            "unknown key 'incremental.epoch' (did you mean 'epochs'?)",
            "expected a key of 'incremental'",
        ],
    ),
    (
        "preset-name-misspelt",
        lambda c: ["train", "--preset", "demoo", "--cache-dir", str(c.tmp / "cache")],
        ["--preset: unknown preset 'demoo'", "expected one of coco-voc, demo"],
    ),
    (
        "set-key-misspelt",
        lambda c: c.train("--set", "data.batchsize=2"),
        ["unknown key 'data.batchsize' (did you mean 'batch_size'?)", "expected a key of 'data'"],
    ),
    (
        "config-key-misspelt",
        lambda c: [
            "train",
            "--config",
            str(c.file("config.yaml", "data:\n  root: x\n  taks: 15-5\n")),
            "--cache-dir",
            str(c.tmp / "cache"),
        ],
        ["{tmp}/config.yaml: unknown key 'data.taks' (did you mean 'task'?)", "expected a key of 'data'"],
    ),
    (
        "checkpoint-of-another-task",
        _other_task_checkpoint,
        [
            "checkpoint {tmp}/out/step0.pt: trained on task '15-5' step 0 with 16 classes",
            "expected task '10-10' step 0 with 11 classes",
        ],
    ),
    (
        "checkpoint-missing",
        lambda c: ["eval", "--ckpt", str(c.tmp / "nope.pt")],
        ["checkpoint {tmp}/nope.pt: not found", "expected a wilson-ray checkpoint file"],
    ),
    (
        "checkpoint-garbage-bytes",
        lambda c: ["eval", "--ckpt", str(c.file("junk.pt", b"this is not a checkpoint"))],
        ["checkpoint {tmp}/junk.pt: not a readable weights-only checkpoint", "expected a file written by wilson-ray"],
    ),
    (
        "checkpoint-truncated",
        _truncated_checkpoint,
        [
            "checkpoint {tmp}/half.pt: not a readable weights-only checkpoint",
            "zip archive",
            "expected a file written by wilson-ray",
        ],
    ),
    (
        "checkpoint-without-format-tag",
        _torch_file_without_tag,
        ["checkpoint {tmp}/plain.pt: not a wilson-ray checkpoint", "expected a step checkpoint written by wilson-ray"],
    ),
    (
        "storage-not-writable",
        _unwritable_storage,
        ["--storage: {tmp}/blocker/sweeps is not a writable folder", "expected a folder this user can create files in"],
    ),
    (
        "more-workers-than-cluster",
        _too_many_workers,
        [
            "--workers-per-trial 3 x 1 CPUs: a trial needs 3 CPUs, but the Ray cluster has 2",
            "expected at most 2 workers per trial",
        ],
    ),
    (
        "more-gpus-than-cluster",
        _too_many_gpus,
        [
            "--gpus-per-worker 1 x --workers-per-trial 2: a trial needs 2 GPUs",
            "the Ray cluster has 0 GPUs",
            "expected fewer workers or --gpus-per-worker 0",
        ],
    ),
    (
        "tracking-uri-unknown-scheme",
        lambda c: c.sweep(SPACE, "--tracking-uri", "ftp://example.org/mlflow"),
        ["--tracking-uri: 'ftp://example.org/mlflow' has unknown scheme 'ftp'", "expected one of sqlite:"],
    ),
]


@pytest.mark.parametrize("build, fragments", [pytest.param(b, f, id=i) for i, b, f in CASES])
def test_bad_input_one_line_exit_2_nothing_written(build, fragments, synth_root, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path, synth_root, monkeypatch)
    argv = build(ctx)
    before = {p: snapshot(p) for p in ctx.unchanged}
    capsys.readouterr()

    code = main(argv)
    out = capsys.readouterr()

    lines = out.err.splitlines()
    assert code == 2, out.err
    assert len(lines) == 1 and lines[0].startswith("wilson-ray: error: "), out.err
    assert "Traceback" not in out.err + out.out and out.out == ""
    for fragment in fragments:
        assert fragment.format(tmp=tmp_path) in lines[0], lines[0]
    for path in ctx.empty:
        assert not path.exists() or not any(path.iterdir()), f"{path} was written: {list(path.rglob('*'))}"
    for path, files in before.items():
        assert snapshot(path) == files, f"{path} changed"


def test_table_covers_at_least_18_cases():
    assert len(CASES) >= 18 and len({c[0] for c in CASES}) == len(CASES)


def test_corrupt_image_found_while_training_is_one_error_line(synth_root, tmp_path, monkeypatch, capsys):
    """An image that only breaks when a data-loader worker decodes it (``data check`` finds it up front): the error
    is the reader's one line, not the worker's traceback (torch re-raises it wrapped), and no entry or --out is
    written. The step-cache notice printed when training started stays above it; the lock file stays."""
    ctx = Ctx(tmp_path, synth_root, monkeypatch)
    root = ctx.data(
        lambda r: [
            (r / "JPEGImages" / p.name).write_bytes(p.read_bytes()[:200])
            for p in (r / "JPEGImages").glob("synth_train_*.jpg")
        ]
    )
    code = main(ctx.train("--set", "data.num_workers=1", root=root))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert lines[0].startswith("cache: training step 0") and len(lines) == 2, err
    assert lines[1].startswith(f"wilson-ray: error: {root}/splits/train_aug.txt line ")
    assert "is unreadable or corrupt" in lines[1] and "expected a valid image" in lines[1]
    assert not (tmp_path / "out").exists()
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_bad_input_as_a_process_exit_2_no_traceback(tmp_path):
    """``python -m wilson_ray train --steps 1,x`` (a ValueError traceback before the fix). The pickled-checkpoint
    test below is the second process-level case."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wilson_ray",
            "train",
            "--preset",
            "demo",
            "--steps",
            "1,x",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wilson-ray: error: --steps: got '1,x', expected"), proc.stderr
    assert not (tmp_path / "cache").exists()


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


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes: SIGKILL in the middle of a write


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before the sync point: {out[-2000:]} {err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the child's sync point")
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the child finished before it could be killed mid-write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def spawn(tmp_path: Path, code: str, *args: str) -> subprocess.Popen:
    script = tmp_path / f"child_{len(list(tmp_path.glob('child_*.py')))}.py"
    script.write_text(code)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
    )


# A slow writer for the children: write the first half, signal, then hang until killed.
SLOW = r"""
import os, sys, time
from pathlib import Path
SIGNAL = Path(os.environ.get("SLOW_SIGNAL", "started"))

def slow_write(fh, data):
    fh.write(data[: len(data) // 2]); fh.flush(); os.fsync(fh.fileno())
    SIGNAL.touch()
    time.sleep(300)
    fh.write(data[len(data) // 2:])

def patch_torch_save():
    import io, torch
    real = torch.save
    def save(obj, f, *a, **k):
        buf = io.BytesIO(); real(obj, buf, *a, **k)
        with open(f, "wb") as fh:
            slow_write(fh, buf.getvalue())
    torch.save = save

def patch_write_text():
    def write_text(self, text, encoding=None, errors=None, newline=None):
        with open(self, "wb") as fh:
            slow_write(fh, text.encode(encoding or "utf-8"))
    Path.write_text = write_text
"""


@pytest.mark.parametrize("previous", [True, False], ids=["previous-file", "no-file"])
def test_atomic_write_killed_mid_write(previous, tmp_path):
    from wilson_ray.atomic import atomic_write_bytes

    target = tmp_path / "out" / "big.bin"
    good = b"previous good content\n" * 1000
    if previous:
        atomic_write_bytes(target, good)
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
from wilson_ray.atomic import atomic_write
atomic_write(sys.argv[1], lambda tmp: slow_write(open(tmp, "wb"), b"n" * (8 << 20)))
""",
        str(target),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    (partial,) = target.parent.glob(".big.bin.*.tmp")
    assert partial.stat().st_size == 4 << 20  # the kill lands in the middle of the write
    sigkill(proc)
    if previous:
        assert target.read_bytes() == good
    else:
        assert not target.exists()


def test_atomic_write_gives_usual_permissions(tmp_path):
    from wilson_ray.atomic import _umask, atomic_write_text

    fresh = atomic_write_text(tmp_path / "fresh.txt", "x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "new"


def test_checkpoint_save_killed_mid_write_keeps_previous(tmp_path):
    from wilson_ray.checkpoint import load_checkpoint
    from wilson_ray.step_setup import model_from_checkpoint

    target = tmp_path / "run" / "step0.pt"
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
import json
import torch
from wilson_ray.config import resolve_config
from wilson_ray.checkpoint import save_checkpoint
from wilson_ray.step_setup import build_model
from wilson_ray.protocol import get_task
cfg = resolve_config("demo", overrides=json.loads(sys.argv[2]))
task = get_task("15-5")
model = build_model(cfg, task, 0)
save_checkpoint(Path(sys.argv[1]), model, cfg, task, 0, {"miou_all": 1.0})   # the previous good checkpoint
Path("saved").touch()
patch_torch_save()
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
save_checkpoint(Path(sys.argv[1]), model, cfg, task, 0, {"miou_all": 2.0})   # killed in the middle
""",
        str(target),
        json.dumps(TINY),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    assert list(target.parent.glob(".step0.pt.*.tmp"))
    sigkill(proc)
    ckpt = load_checkpoint(target)
    assert ckpt["metrics"]["miou_all"] == 1.0
    model, _ = model_from_checkpoint(target)
    assert all(np.isfinite(v.numpy()).all() for v in model.state_dict().values() if v.is_floating_point())


def _fake_sweep(storage: Path, name: str, alpha: float, miou: float) -> None:
    from wilson_ray.config import resolve_config
    from wilson_ray.orchestration.results import write_sweep
    from wilson_ray.tracking.mlflow_tracker import TrialRecord

    write_sweep(storage, name, {"name": name, "metric": "miou_all", "mode": "max", "step": 1})
    cfg = resolve_config("demo", overrides={"method.alpha": alpha}).to_dict()
    rec = TrialRecord(storage / name / "trials" / f"t{alpha}")
    rec.write_trial(f"t{alpha}", f"trial_{alpha}", {"method.alpha": alpha}, cfg, 1, name)
    rec.record_epoch(1, {"epoch": 1, "miou_all": miou, "miou_old": miou, "miou_new": miou})
    rec.set_outcome("completed")


def test_best_config_export_killed_mid_write_keeps_previous(tmp_path, capsys):
    from wilson_ray.config import resolve_config

    storage, out = tmp_path / "sweeps", tmp_path / "best.yaml"
    _fake_sweep(storage, "sw", alpha=0.3, miou=10.0)
    assert main(["best", "--storage", str(storage), "--name", "sw", "--out", str(out)]) == 0
    good = out.read_text()
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.3
    _fake_sweep(storage, "sw", alpha=0.7, miou=20.0)  # a better trial: the next export rewrites best.yaml
    proc = spawn(
        tmp_path,
        SLOW
        + r"""
patch_write_text()
from wilson_ray.orchestration.results import export_best   # what `wilson-ray best` calls (without importing torch)
export_best(sys.argv[1], "sw", sys.argv[2])
""",
        str(storage),
        str(out),
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc)
    (partial,) = tmp_path.glob(".best.yaml.*.tmp")  # the kill lands while the new best.yaml is half written
    assert 0 < partial.stat().st_size
    sigkill(proc)
    assert out.read_text() == good
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.3
    capsys.readouterr()
    assert main(["best", "--storage", str(storage), "--name", "sw", "--out", str(out)]) == 0  # the rerun finishes
    assert resolve_config(None, str(out)).method.params["alpha"] == 0.7


@pytest.mark.parametrize("previous", [True, False], ids=["previous-dataset", "no-dataset"])
def test_synthetic_generation_killed_leaves_previous_or_nothing(previous, tmp_path):
    from wilson_ray.data import synthetic, voc

    out = tmp_path / "synthetic"
    if previous:
        synthetic.generate(out, seed=1, train=20, val=6, size=48)
    before = snapshot(out)
    # what `wilson-ray data synth --out OUT --train 600 --val 100 --size 64 --force` calls
    proc = spawn(
        tmp_path,
        "import sys\nfrom wilson_ray.data import synthetic\n"
        "synthetic.generate(sys.argv[1], seed=0, train=600, val=100, size=64, force=True)\n",
        str(out),
    )
    wait_for(lambda: any(len(list(d.glob("JPEGImages/*.jpg"))) >= 20 for d in tmp_path.glob(".synthetic.*.tmp")), proc)
    sigkill(proc)
    if previous:
        assert snapshot(out) == before
        report = voc.check_voc(out, full=True)
        assert report["splits"]["train"]["count"] == 20 and report["splits"]["val"]["count"] == 6
    else:
        assert not out.exists()


def test_damaged_manifest_cache_is_rebuilt_not_trusted(synth_copy):
    from wilson_ray.data import voc

    first = voc.voc_manifest(synth_copy, "train")
    cache = first.cache_path
    assert cache is not None and cache.is_file()
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # as if a non-atomic writer was killed
    again = voc.voc_manifest(synth_copy, "train")
    assert not again.from_cache and np.array_equal(again.presence(), first.presence())
    assert voc.voc_manifest(synth_copy, "train").from_cache  # rewritten whole


# ----------------------------------------------------------------------------------------------------------------
# Step-0 cache: concurrency and kills


CACHE_CHILD = (
    SLOW
    + r"""
import json
from wilson_ray import engine
from wilson_ray.cache import cached_step
from wilson_ray.config import resolve_config

cache, overrides, me = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
real_train_step = engine.train_step
def counting_train_step(*args, **kwargs):
    with open("train_calls.log", "a") as fh:
        fh.write(me + "\n")
    return real_train_step(*args, **kwargs)
engine.train_step = counting_train_step
if me == "slow":
    patch_torch_save()
cfg = resolve_config("demo", overrides=overrides)
Path(f"ready-{me}").touch()
deadline = time.time() + 120
while len(list(Path(".").glob("ready-*"))) < int(os.environ.get("BARRIER", "1")) and time.time() < deadline:
    time.sleep(0.01)   # both processes ask at the same moment
print(json.dumps({"path": str(cached_step(cfg, 0, cache))}))
"""
)


def _cache_cfg(root: Path) -> dict:
    return {**TINY, "data.root": str(root), "step0.max_iters_per_epoch": 1, "incremental.max_iters_per_epoch": 1}


@pytest.mark.timeout(300)
def test_two_processes_train_a_missing_step0_once(synth_root, tmp_path):
    from wilson_ray.checkpoint import load_checkpoint

    cache = tmp_path / "cache"
    overrides = json.dumps(_cache_cfg(synth_root))
    env = {**child_env(tmp_path), "BARRIER": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_CHILD, str(cache), overrides, me],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for me in ("a", "b")
    ]
    results = [p.communicate(timeout=280) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    paths = {json.loads(out.strip().splitlines()[-1])["path"] for out, _ in results}
    assert len(paths) == 1  # both got the same entry
    notices = sum(err.count("cache: training step 0") for _, err in results)
    calls = (tmp_path / "train_calls.log").read_text().split()
    assert notices == 1 and len(calls) == 1, (notices, calls)  # trained exactly once
    (path,) = paths
    assert load_checkpoint(path)["step"] == 0
    assert [p.name for p in cache.glob("*/step0.pt")] == ["step0.pt"]
    assert not list(cache.glob("*/.train-*"))


@pytest.mark.timeout(300)
def test_cache_writer_killed_leaves_no_valid_entry_and_next_call_retrains(synth_root, tmp_path, capsys):
    from wilson_ray.cache import cached_step, valid_entry
    from wilson_ray.checkpoint import load_checkpoint
    from wilson_ray.config import resolve_config
    from wilson_ray.step_key import step_key

    cache = tmp_path / "cache"
    overrides = _cache_cfg(synth_root)
    proc = subprocess.Popen(
        [sys.executable, "-c", CACHE_CHILD, str(cache), json.dumps(overrides), "slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
    )
    wait_for(lambda: (tmp_path / "started").exists(), proc, timeout=240)
    cfg = resolve_config("demo", overrides=overrides)
    key = step_key(cfg, 0)
    (partial,) = cache.glob(f"{key}/.train-*/.step0.pt.*.tmp")  # killed inside the checkpoint write
    sigkill(proc)

    entry = cache / key / "step0.pt"
    assert not entry.exists()  # no entry, not a truncated one
    with open(cache / f"{key}.lock", "a+") as fh:  # the dead writer's lock is free
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    # Even a half-written file at the entry's name (a non-atomic copy, an older writer) is not taken as valid:
    shutil.copyfile(partial, entry)
    assert not valid_entry(entry)

    capsys.readouterr()
    path = cached_step(cfg, 0, cache)
    err = capsys.readouterr().err
    assert path == entry and "ignoring incomplete entry" in err and "cache: training step 0" in err
    assert valid_entry(entry) and load_checkpoint(entry)["step"] == 0
    assert not list(cache.glob(f"{key}/.train-*"))  # the killed writer's temporary folder is gone
    assert cached_step(cfg, 0, cache) == entry and "training" not in capsys.readouterr().err  # now reused


def test_step_cache_key_same_for_relative_and_absolute_data_root(tmp_path, monkeypatch):
    """One dataset reached as ``data/x`` or as its absolute path is one cache entry; another folder is another."""
    from wilson_ray.config import resolve_config
    from wilson_ray.step_key import step_key

    for name in ("x", "y"):
        (tmp_path / "data" / name / "splits").mkdir(parents=True)
        (tmp_path / "data" / name / "splits" / "train_aug.txt").write_text(f"{name}\n")
    monkeypatch.chdir(tmp_path)
    rel = resolve_config("demo", overrides={"data.root": "data/x"})
    absolute = resolve_config("demo", overrides={"data.root": str(tmp_path / "data" / "x")})
    other = resolve_config("demo", overrides={"data.root": "data/y"})
    assert step_key(rel, 0) == step_key(absolute, 0) and step_key(rel, 1) == step_key(absolute, 1)
    assert step_key(rel, 0) != step_key(other, 0)
