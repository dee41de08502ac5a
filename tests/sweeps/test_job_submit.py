"""The cluster workflow: ``scripts/start_head.sh`` starts a local Ray head (dashboard/job server on 127.0.0.1),
``scripts/submit_sweep.sh`` runs a sweep through ``ray job submit --working-dir .``, and submitting the same
command again resumes (here: finds nothing left) instead of starting over. The head is stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ports import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--set",
    "incremental.epochs=2",
    "--set",
    "step0.max_iters_per_epoch=2",
    "--set",
    "incremental.max_iters_per_epoch=2",
    "--set",
    "step0.epochs=2",
    "--set",
    "data.batch_size=8",
    "--set",
    "data.val_batch_size=16",
    "--set",
    "data.num_workers=0",
]


def session_pids(temp_dir: str) -> list[int]:
    """Processes of the Ray head started with ``--temp-dir temp_dir`` (every one carries the path)."""
    out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


@pytest.fixture()
def head(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="wrray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ports = {"dashboard": free_port(), "gcs": free_port(), "client": free_port(), "agent": free_port()}
    env = {
        **os.environ,
        "NUM_CPUS": "2",
        "RAY_PORT": str(ports["gcs"]),
        "DASHBOARD_PORT": str(ports["dashboard"]),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "start_head.sh"),
            "--temp-dir",
            temp_dir,
            "--ray-client-server-port",
            str(ports["client"]),
            "--dashboard-agent-listen-port",
            str(ports["agent"]),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert f"http://127.0.0.1:{ports['dashboard']}" in proc.stdout
        yield {"env": env, "address": f"http://127.0.0.1:{ports['dashboard']}", "temp_dir": temp_dir}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in session_pids(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 20
            while session_pids(temp_dir) and time.time() < deadline:
                time.sleep(0.5)
        assert not session_pids(temp_dir), "Ray head processes survived"
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(600)
def test_ray_job_submit_sweep_and_resubmit(head, tmp_path):
    synth = tmp_path / "synth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "wilson_ray",
            "data",
            "synth",
            "--out",
            str(synth),
            "--train",
            "40",
            "--val",
            "10",
            "--size",
            "64",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    storage = tmp_path / "storage"
    env = {**head["env"], "RAY_JOB_ADDRESS": head["address"]}
    cmd = [
        "bash",
        str(ROOT / "scripts" / "submit_sweep.sh"),
        "--space",
        "search_spaces/demo.yaml",
        "--data-root",
        str(synth),
        "--storage",
        str(storage),
        "--name",
        "job",
        "--num-samples",
        "1",
        "--workers-per-trial",
        "2",
        "--quiet",
        *FAST,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert "succeeded" in out and "best trial" in out
    summary = json.loads((storage / "job" / "summary.json").read_text())
    assert [t["outcome"] for t in summary["trials"]] == ["completed"]
    assert (storage / "mlflow.db").is_file() and (storage / "job" / "best.yaml").is_file()

    # a job runs once: the same submission again restores the sweep and finds nothing left to do
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert "resuming" in out
    summary2 = json.loads((storage / "job" / "summary.json").read_text())
    assert [t["trial"] for t in summary2["trials"]] == [t["trial"] for t in summary["trials"]]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{storage / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["job"], output_format="list")
    assert sorted(r.data.tags.get("wilson_ray.role") for r in runs) == ["sweep", "trial"]
    assert all("miou/all" in r.data.metrics for r in runs if r.data.tags.get("wilson_ray.role") == "trial")


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_ray_job_killed_then_resubmitted_keeps_one_of_each(head, tmp_path):
    """Issue 17 under ``ray job submit``: the job is stopped (``ray job stop``: its driver and every trial die)
    while its second trial starts, then the same ``scripts/submit_sweep.sh`` command is submitted again."""
    from test_sweep_restore import TINY, check_one_of_each

    synth = tmp_path / "synth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "wilson_ray",
            "data",
            "synth",
            "--out",
            str(synth),
            "--train",
            "24",
            "--val",
            "6",
            "--size",
            "64",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    storage = tmp_path / "storage"
    marker = tmp_path / "killed"
    sweep = [
        "--space",
        "search_spaces/demo.yaml",
        "--data-root",
        str(synth),
        "--storage",
        str(storage),
        "--name",
        "jobkill",
        "--num-samples",
        "3",
        "--cpus-per-worker",
        "2",
        *TINY,
    ]
    env = {**head["env"], "RAY_JOB_ADDRESS": head["address"], "RAY_AUTH_MODE": "token"}
    runtime_env = {
        "env_vars": {
            "WILSON_RAY_TEST_KILL_AT": "next_trial_start",
            "WILSON_RAY_TEST_KILL_MARKER": str(marker),
            "TUNE_GLOBAL_CHECKPOINT_S": "3600",
        }
    }
    job_id = "wilson-ray-kill-test"
    submit = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--address",
            head["address"],
            "--working-dir",
            ".",
            "--no-wait",
            "--submission-id",
            job_id,
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "-m",
            "wilson_ray",
            "sweep",
            *sweep,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    deadline = time.time() + 480
    while not marker.is_file():
        assert time.time() < deadline, "the job never reached the kill point"
        time.sleep(0.5)
    stop = subprocess.run(
        ["ray", "job", "stop", "--address", head["address"], job_id],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]

    again = subprocess.run(
        ["bash", str(ROOT / "scripts" / "submit_sweep.sh"), *sweep],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert "resuming" in out
    check_one_of_each(storage, "jobkill", 3, out)
