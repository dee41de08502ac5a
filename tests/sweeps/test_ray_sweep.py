"""End-to-end sweeps on a tiny synthetic set: Ray Tune + Optuna + ASHA, 2-worker TorchTrainer trials, MLflow.

* a 2-trial sweep: MLflow parent/child structure, per-epoch metrics, artifacts; ``wilson-ray best`` exports a
  config that resolves to the best trial's;
* faults (also ``-m faults``): the sweep driver SIGKILLed after its first trial and run again (every trial
  finishes, no MLflow run and no Optuna trial is duplicated); a Train worker SIGKILLed mid-training (resumes from
  its epoch checkpoint, MLflow has every epoch once); a non-finite loss (the trial fails with the reason, the
  sweep goes on); the MLflow server stopped and restarted mid-sweep (one warning, no epoch lost or doubled).

Each test has a hard timeout (a leaked placement group hangs rather than fails) and leaves no Ray cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "search_spaces" / "demo.yaml"
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


def trial_logs(sweep: Path) -> str:
    """Everything the sweep's trials and their workers printed (the console shows trial events only; worker output
    goes to trials/<id>/trial.log and worker-<rank>.log unless --verbose)."""
    return "".join(p.read_text(errors="replace") for p in sorted((sweep / "trials").rglob("*.log")))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "wilson_ray",
            "data",
            "synth",
            "--out",
            str(out),
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
    return out


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


def sweep_cmd(synth: Path, storage: Path, name: str, samples: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wilson_ray",
        "sweep",
        "--space",
        str(SPACE),
        "--data-root",
        str(synth),
        "--storage",
        str(storage),
        "--name",
        name,
        "--num-samples",
        str(samples),
        "--workers-per-trial",
        "2",
        "--num-cpus",
        "2",
        "--quiet",
        *FAST,
        *extra,
    ]


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def trial_runs(uri: str, name: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[name], output_format="list", max_results=1000)


def session_pids(sid: int) -> list[int]:
    """Every process of the session ``sid``: Ray puts its workers in their own process groups, not sessions."""
    out = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def group_alive(sid: int) -> bool:
    return bool(session_pids(sid))


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run in its own process group and make sure nothing of it (Ray's local cluster included) survives."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if group_alive(proc.pid):
            time.sleep(5)  # ray.shutdown() is asynchronous for a moment
        if group_alive(proc.pid):
            kill_session(proc.pid)
            leftover = True
        else:
            leftover = False
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    result.leftover = leftover
    return result


@pytest.mark.timeout(600)
def test_two_trial_sweep_mlflow_structure(synth, storage, tmp_path):
    name = "two"
    proc = run_in_group(sweep_cmd(synth, storage, name, 2), timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not proc.leftover, "the sweep left processes (Ray cluster) behind"
    assert "best trial" in proc.stdout and "/bin/mlflow server --backend-store-uri sqlite:///" in proc.stdout
    # the printed commands name the venv's own executables, so they work from a fresh shell
    assert f"{Path(sys.executable).parent}/wilson-ray ui --storage " in proc.stdout
    assert f"reproduce:   {Path(sys.executable).parent}/wilson-ray train --config " in proc.stdout
    assert "--host 127.0.0.1" in proc.stdout

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    runs = trial_runs(uri, name)
    parents = [r for r in runs if r.data.tags.get("wilson_ray.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags["wilson_ray.trial_id"] for c in children}) == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for c in children:
        for key in ("miou/old", "miou/new", "miou/all", "train_loss/total", "train/lr", "train/images_per_s"):
            assert key in c.data.metrics, key
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
        outcome = c.data.tags["wilson_ray.outcome"]
        assert outcome in ("completed", "stopped_early")  # ASHA (grace 1) may stop the weaker one after epoch 1
        assert steps == list(range(1, len(steps) + 1)) and len(steps) == (
            2 if outcome == "completed" else len(steps)
        ), (outcome, steps)
        assert c.data.params["config.method.name"] == "wilson" and "config.method.alpha" in c.data.params
        assert c.info.status == ("KILLED" if outcome == "stopped_early" else "FINISHED")  # ASHA stops show as such
        if outcome == "completed":
            arts = {a.path for a in client.list_artifacts(c.info.run_id, "final")}
            assert {
                "final/iou_bar.png",
                "final/confusion.png",
                "final/confusion.csv",
                "final/confusion.npy",
                "final/overlays.png",
                "final/per_class_iou.json",
            } <= arts, arts
            assert not any(k.startswith(("final/", "final_iou/")) for k in c.data.metrics)  # one name per series
    assert any(c.data.tags["wilson_ray.outcome"] == "completed" for c in children)  # the default point runs
    parent_arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best.yaml", "summary.png", "summary.csv"} <= parent_arts
    assert parents[0].info.status == "FINISHED"

    # the paper's defaults are the first trial (points_to_evaluate)
    summary = json.loads((storage / name / "summary.json").read_text())
    assert len(summary["trials"]) == 2

    # best -> a full config that `wilson-ray train --config` reads back
    out = tmp_path / "best.yaml"
    proc = run(
        [sys.executable, "-m", "wilson_ray", "best", "--storage", str(storage), "--name", name, "--out", str(out)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    from wilson_ray.config import resolve_config

    cfg = resolve_config(config_file=out)
    best = summary["best"]
    trial = json.loads((storage / name / "trials" / best / "trial.json").read_text())
    assert cfg.to_dict() == resolve_config(config_file=out).to_dict()
    assert cfg.method.params["alpha"] == trial["config"]["method"]["alpha"]
    assert cfg.data.root == str(synth)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_killed_sweep_resumes_without_duplicates(synth, storage):
    name = "resume"
    cmd = sweep_cmd(synth, storage, name, 3)
    trials = storage / name / "trials"

    def first_done() -> bool:
        return any(
            (p / "outcome.json").is_file()
            and json.loads((p / "outcome.json").read_text())["outcome"] in ("completed", "stopped_early")
            for p in trials.glob("*")
        )

    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(first_done, 500, proc)
        time.sleep(3)  # the second trial is starting
    finally:
        kill_session(proc.pid)  # the driver, its local cluster and every worker, like a lost job
        proc.wait(timeout=60)
    wait_for(lambda: not group_alive(proc.pid), 60)

    again = run_in_group(cmd, timeout=700)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert not again.leftover
    assert "resuming" in again.stdout + again.stderr

    summary = json.loads((storage / name / "summary.json").read_text())
    assert len(summary["trials"]) == 3
    assert all(t["outcome"] in ("completed", "stopped_early") for t in summary["trials"]), summary

    runs = trial_runs(f"sqlite:///{storage / 'mlflow.db'}", name)
    children = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
    ids = [c.data.tags["wilson_ray.trial_id"] for c in children]
    assert sorted(ids) == sorted(t["trial"] for t in summary["trials"]), ids  # one run per trial
    assert len([r for r in runs if r.data.tags.get("wilson_ray.role") == "sweep"]) == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
        assert steps == sorted(set(steps)), steps  # no duplicated epochs

    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")
    assert len(study.trials) == 3, [(t.number, t.state, t.params) for t in study.trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_nonfinite_trial_fails_with_reason_and_sweep_continues(synth, storage, tmp_path):
    import yaml

    space = yaml.safe_load(SPACE.read_text())
    # trial 1 (the "default") diverges: lr 1e30 -> non-finite loss in epoch 2; the sweep must go on
    space["parameters"] = {"incremental.lr": {"distribution": "choice", "values": [0.005, 1.0e30], "default": 1.0e30}}
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(space))
    cmd = sweep_cmd(synth, storage, "nan", 2)
    cmd[cmd.index("--space") + 1] = str(path)
    proc = run_in_group(cmd, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((storage / "nan" / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    bad = [t for t in summary["trials"] if t["incremental.lr"] == 1.0e30]
    assert bad and all(t["outcome"] == "failed" and "NonFiniteLossError" in t["reason"] for t in bad)
    assert "NonFiniteLossError" in proc.stdout  # the CLI's summary names the reason
    runs = trial_runs(f"sqlite:///{storage / 'mlflow.db'}", "nan")
    failed = [r for r in runs if r.data.tags.get("wilson_ray.outcome") == "failed"]
    assert failed and all(
        r.info.status == "FAILED" and "non-finite" in r.data.tags["wilson_ray.failure_reason"] for r in failed
    )


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_killed_worker_resumes_from_its_checkpoint(synth, storage):
    """A Train worker SIGKILLed during training: FailureConfig restarts the worker group from the last epoch
    checkpoint, the trial completes, and MLflow holds every epoch exactly once."""
    name = "workerkill"
    cmd = sweep_cmd(synth, storage, name, 1)
    cmd[cmd.index("incremental.epochs=2")] = "incremental.epochs=4"
    cmd[cmd.index("step0.max_iters_per_epoch=2")] = "step0.max_iters_per_epoch=5"
    cmd[cmd.index("incremental.max_iters_per_epoch=2")] = "incremental.max_iters_per_epoch=5"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        epochs = storage / name / "trials"
        # epoch 2 has started once its record exists, so epoch 1's checkpoint is registered: kill mid-training
        wait_for(lambda: any((p / "epochs" / "0002.json").is_file() for p in epochs.glob("*")), 400, proc)
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,sid=,args="], capture_output=True, text=True).stdout
        workers = [
            int(f[0])
            for f in (line.split(None, 3) for line in ps.splitlines())
            if len(f) == 4 and int(f[2]) == proc.pid and f[0] == f[1] and f[3].startswith("ray::RayTrainWorker")
        ]
        assert workers, "no Ray Train worker found"
        os.kill(int(workers[-1]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    assert proc.returncode == 0, out[-5000:]
    assert "resuming trial" in trial_logs(storage / name)  # the worker's own output: the trial's log, not the console
    summary = json.loads((storage / name / "summary.json").read_text())
    (t,) = summary["trials"]
    assert t["outcome"] == "completed" and t["epochs"] == 4, t
    runs = [
        r
        for r in trial_runs(f"sqlite:///{storage / 'mlflow.db'}", name)
        if r.data.tags.get("wilson_ray.role") == "trial"
    ]
    assert len(runs) == 1
    from mlflow.tracking import MlflowClient

    steps = [
        m.step
        for m in MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").get_metric_history(runs[0].info.run_id, "epoch")
    ]
    assert steps == [1, 2, 3, 4], steps
    wait_for(lambda: not group_alive(proc.pid), 60)


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_single_worker_trial_runs_in_its_tune_process_and_resumes_after_a_kill(synth, storage):
    """``--workers-per-trial 1`` (trainer auto -> direct): the step runs in the Tune trial's process, with no
    TorchTrainer; that process SIGKILLed mid-training is restarted by Tune's FailureConfig from the trial's last
    epoch checkpoint, the trial completes, and MLflow holds every epoch exactly once."""
    name = "direct"
    cmd = sweep_cmd(synth, storage, name, 1)
    cmd[cmd.index("--workers-per-trial") + 1] = "1"
    cmd[cmd.index("incremental.epochs=2")] = "incremental.epochs=4"
    cmd[cmd.index("step0.max_iters_per_epoch=2")] = "step0.max_iters_per_epoch=5"
    cmd[cmd.index("incremental.max_iters_per_epoch=2")] = "incremental.max_iters_per_epoch=5"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        epochs = storage / name / "trials"
        wait_for(lambda: any((p / "epochs" / "0002.json").is_file() for p in epochs.glob("*")), 400, proc)
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,sid=,args="], capture_output=True, text=True).stdout
        rows = [line.split(None, 3) for line in ps.splitlines()]
        assert not any(
            len(f) == 4 and int(f[2]) == proc.pid and f[3].startswith("ray::RayTrainWorker") for f in rows
        ), "a single-worker trial started a Ray Train worker group"
        trials = [
            int(f[0])
            for f in rows
            if len(f) == 4 and int(f[2]) == proc.pid and f[0] == f[1] and f[3].startswith("ray::ImplicitFunc")
        ]
        assert trials, "no Tune trial process found"
        os.kill(trials[-1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    assert proc.returncode == 0, out[-5000:]
    assert "in the trial's own process" in out and "resuming trial" in trial_logs(storage / name)
    assert not (storage / name / "train").exists()  # no TorchTrainer run storage
    # four epoch checkpoints reported, the two newest kept (Tune's CheckpointConfig(num_to_keep=2))
    kept = sorted(
        json.loads((p / "wilson_ray_state.json").read_text())["epoch"]
        for p in (storage / name).glob("trial_*/checkpoint_*")
    )
    assert kept == [3, 4], kept
    summary = json.loads((storage / name / "summary.json").read_text())
    (t,) = summary["trials"]
    assert t["outcome"] == "completed" and t["epochs"] == 4, t
    runs = [
        r
        for r in trial_runs(f"sqlite:///{storage / 'mlflow.db'}", name)
        if r.data.tags.get("wilson_ray.role") == "trial"
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    steps = [
        m.step
        for m in MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").get_metric_history(runs[0].info.run_id, "epoch")
    ]
    assert steps == [1, 2, 3, 4], steps
    wait_for(lambda: not group_alive(proc.pid), 60)


@pytest.mark.timeout(600)
def test_direct_trials_reuse_their_processes_and_asha_stops_them_cleanly(synth, storage):
    """Single-worker (direct) trials: Tune runs later trials in earlier trials' processes (reuse_actors), an
    ASHA stop unwinds the stopped trial before the next one starts in its process, and every trial still ends
    with its own complete record and MLflow run."""
    name = "reuse"
    cmd = sweep_cmd(synth, storage, name, 4)
    cmd[cmd.index("--workers-per-trial") + 1] = "1"  # demo space: 1 CPU per worker -> two trials at a time
    proc = run_in_group(cmd, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not proc.leftover, "the sweep left processes (Ray cluster) behind"
    records = [json.loads(p.read_text()) for p in sorted((storage / name / "trials").glob("*/trial.json"))]
    assert len(records) == 4
    processes = {(r["host"], r["pid"]) for r in records}
    assert len(processes) <= 2, processes  # 4 trials, at most 2 at a time: later ones ran in reused processes
    summary = json.loads((storage / name / "summary.json").read_text())
    outcomes = {t["trial"]: (t["outcome"], t["epochs"]) for t in summary["trials"]}
    assert all(o in ("completed", "stopped_early") for o, _ in outcomes.values()), outcomes
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    children = [r for r in trial_runs(uri, name) if r.data.tags.get("wilson_ray.role") == "trial"]
    assert len(children) == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for c in children:
        outcome, epochs = outcomes[c.data.tags["wilson_ray.trial_id"]]
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
        assert c.info.status == ("KILLED" if outcome == "stopped_early" else "FINISHED")
        assert c.data.tags["wilson_ray.outcome"] == outcome
        assert steps == list(range(1, epochs + 1)) and (outcome == "stopped_early" or epochs == 2), (outcome, steps)
        if outcome == "completed":
            assert "final/overlays.png" in {a.path for a in client.list_artifacts(c.info.run_id, "final")}


def start_mlflow(store: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "mlflow_server.sh"), str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    import urllib.request

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, 120)
    return proc


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_mlflow_server_restart_loses_no_epoch(synth, storage, tmp_path):
    """The tracking server dies after the first epoch and comes back later: training does not stop, there is
    one warning, and at the end the runs hold every epoch exactly once (buffered in the trial records)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "mlflow-server"
    server = start_mlflow(store, port)
    name = "mlflowdown"
    cmd = sweep_cmd(synth, storage, name, 2, "--tracking-uri", f"http://127.0.0.1:{port}")
    cmd[cmd.index("incremental.epochs=2")] = "incremental.epochs=4"
    cmd[cmd.index("step0.max_iters_per_epoch=2")] = "step0.max_iters_per_epoch=5"
    cmd[cmd.index("incremental.max_iters_per_epoch=2")] = "incremental.max_iters_per_epoch=5"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        trials = storage / name / "trials"
        wait_for(lambda: any((p / "epochs" / "0001.json").is_file() for p in trials.glob("*")), 400, proc)
        kill_session(server.pid)  # the tracking server goes away mid-trial
        server.wait(timeout=30)
        wait_for(lambda: any((p / "epochs" / "0003.json").is_file() for p in trials.glob("*")), 300, proc)
        server = start_mlflow(store, port)  # ... and comes back while the sweep runs
        out, _ = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    try:
        assert proc.returncode == 0, out[-5000:]
        assert "is unreachable" in out
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
        summary = json.loads((storage / name / "summary.json").read_text())
        assert sorted(c.data.tags["wilson_ray.trial_id"] for c in children) == sorted(
            t["trial"] for t in summary["trials"]
        )
        for c in children:
            record = {t["trial"]: t for t in summary["trials"]}[c.data.tags["wilson_ray.trial_id"]]
            steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
            assert steps == list(range(1, record["epochs"] + 1)), (steps, record)
            assert "mlflow.parentRunId" in c.data.tags
    finally:
        kill_session(server.pid)
