"""A sweep whose driver is killed and run again finishes with exactly ``num_samples`` trials (issue 17).

The driver is stopped at deterministic points (``wilson_ray.orchestration.kill_points``: the first process to reach the
point named by ``WILSON_RAY_TEST_KILL_AT`` writes a marker file and blocks; the test then SIGKILLs the whole
session, local Ray cluster included). Tune's experiment checkpoint period is set to an hour for the killed run, so
the restored driver sees the oldest state Tune can leave behind (the one saved when the first trial was created):
the worst case for a restore, and the same every time.

After the rerun: Tune trials = ``num_samples``; one record, one MLflow run and one Optuna trial per Tune trial;
the default point evaluated once; no epoch logged twice in MLflow.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "search_spaces" / "demo.yaml"
# Cheapest sweep that still has two epochs per trial: single-worker trials in the Tune process (no TorchTrainer)
TINY = [
    "--workers-per-trial",
    "1",
    "--num-cpus",
    "2",
    "--quiet",
    "--set",
    "step0.epochs=1",
    "--set",
    "step0.max_iters_per_epoch=1",
    "--set",
    "incremental.epochs=2",
    "--set",
    "incremental.max_iters_per_epoch=1",
    "--set",
    "data.batch_size=4",
    "--set",
    "data.val_batch_size=8",
    "--set",
    "data.num_workers=0",
]


# ---------------------------------------------------------------------------------------------------------------
# The searcher alone (no cluster): a lost Tune trial's Optuna trial and record go to the Tune trial that replaces it


def test_restored_searcher_hands_a_lost_trial_its_record(tmp_path):
    import optuna

    from wilson_ray.orchestration.compat import RECORD_ATTR, WilsonOptunaSearch
    from wilson_ray.orchestration.search_space import load_search_space
    from wilson_ray.sweep_record import record_id

    space = load_search_space(SPACE)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    trials = tmp_path / "trials"

    def searcher():
        return WilsonOptunaSearch(
            space=space.to_optuna(),
            metric="miou_all",
            mode="max",
            points_to_evaluate=[space.defaults()],
            study_name="s",
            sampler=optuna.samplers.TPESampler(seed=0),
            storage=optuna.storages.RDBStorage(db),
            record_dir=trials,
        )

    s = searcher()
    assert s.suggest("a") == space.defaults()
    s.save(str(tmp_path / "state.pkl"))  # Tune's last experiment checkpoint: it knows trial "a" only
    s.on_trial_complete("a", {"miou_all": 10.0})  # "a" finished, told to Optuna ...
    lost = s.suggest("b")  # ... "b" was created and started (its record may exist), then the driver died

    restored = WilsonOptunaSearch.__new__(WilsonOptunaSearch)  # Tuner.restore unpickles it (no __init__) ...
    restored.restore(str(tmp_path / "state.pkl"))  # ... and loads the searcher state of the last checkpoint
    assert restored.suggest("c") == lost  # the lost trial's Optuna trial, not a new one
    assert record_id(trials, "c") == "b"  # ... and its record (and so its MLflow run and Train run)
    assert record_id(trials, "a") == "a"
    # the restored "a" (finished before the kill) reports its final result again and ends: no error, no new trial
    restored.on_trial_result("a", {"miou_all": 10.0, "training_iteration": 1})
    restored.on_trial_complete("a", {"miou_all": 10.0})
    restored.on_trial_complete("c", {"miou_all": 5.0})
    third = restored.suggest("d")
    assert third != space.defaults() and third != lost
    restored.on_trial_complete("d", {"miou_all": 7.0})
    study = optuna.load_study(study_name="s", storage=db)
    assert [t.user_attrs.get(RECORD_ATTR) for t in study.trials] == ["a", "b", "d"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # the paper's defaults were enqueued once and ran once
    assert sum(t.params == space.defaults() for t in study.trials) == 1


def test_next_trial_start_fires_after_a_completed_or_stopped_trial(tmp_path):
    """The ``next_trial_start`` kill point's condition: with two trials in flight the first to end may be the one
    ASHA stopped (a CI run once waited for a completed one that came only after the last trial had started)."""
    from wilson_ray.sweep_record import ALIASES, TrialRecord, any_trial_ended

    trials = tmp_path / "trials"
    (trials / ALIASES).mkdir(parents=True)  # the alias folder holds no outcome
    TrialRecord(trials / "a").set_outcome("running")
    TrialRecord(trials / "b").write_trial("b", "t_b", {}, {}, 1, "s")  # created, no outcome yet
    assert not any_trial_ended(trials)
    TrialRecord(trials / "c").set_outcome("failed", "boom")
    assert not any_trial_ended(trials)  # a failed trial is no "next trial after an ended one" case
    TrialRecord(trials / "a").set_outcome("stopped_early", "ASHA", rung=1)
    assert any_trial_ended(trials)
    TrialRecord(trials / "a").set_outcome("completed")
    assert any_trial_ended(trials)


# ---------------------------------------------------------------------------------------------------------------
# Real sweeps killed at each point


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
    return out


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")  # one step cache: step 0 is trained once for every case


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}) before {what}: {proc.stdout.read()[-4000:]}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def run_killed_then_again(cmd: list[str], point: str, marker: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WILSON_RAY_TEST_KILL_AT": point,
        "WILSON_RAY_TEST_KILL_MARKER": str(marker),
        "TUNE_GLOBAL_CHECKPOINT_S": "3600",
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    try:
        wait_for(marker.is_file, 420, proc, f"kill point {point}")
    finally:
        kill_session(proc.pid)  # the driver, its local cluster and every trial, like a lost job
        proc.wait(timeout=60)
    wait_for(lambda: not session_pids(proc.pid), 60, what="the killed session to end")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WILSON_RAY_TEST_", "TUNE_GLOBAL_CHECKPOINT"))}
    again = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = again.communicate(timeout=480)
    finally:
        if session_pids(again.pid):
            time.sleep(5)  # ray.shutdown() is asynchronous for a moment
        leftover = bool(session_pids(again.pid))
        kill_session(again.pid)
    assert not leftover, "the rerun left processes (Ray cluster) behind"
    return subprocess.CompletedProcess(cmd, again.returncode, out, err)


def check_one_of_each(storage: Path, name: str, samples: int, out: str) -> None:
    """The invariants of issue 17 after a killed sweep was run again."""
    import optuna
    from mlflow.tracking import MlflowClient

    from wilson_ray.orchestration.search_space import load_search_space

    sweep = storage / name
    # the newest by the timestamp in its name (a restored run uploads the older ones again: mtime is no guide)
    newest = max(glob.glob(str(sweep / "experiment_state-*.json")))
    tune_trials = [json.loads(t[0])["trial_id"] for t in json.loads(Path(newest).read_text())["trial_data"]]
    assert len(tune_trials) == samples, tune_trials

    summary = json.loads((sweep / "summary.json").read_text())
    rows = summary["trials"]
    assert len(rows) == samples, (rows, out[-3000:])
    assert all(r["outcome"] in ("completed", "stopped_early") for r in rows), rows

    defaults = load_search_space(SPACE).defaults()
    assert sum(all(r[k] == pytest.approx(v) for k, v in defaults.items()) for r in rows) == 1, rows

    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
    assert len([r for r in runs if r.data.tags.get("wilson_ray.role") == "sweep"]) == 1
    assert sorted(c.data.tags["wilson_ray.trial_id"] for c in children) == sorted(r["trial"] for r in rows)
    by_id = {r["trial"]: r for r in rows}
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "epoch")]
        row = by_id[c.data.tags["wilson_ray.trial_id"]]
        assert steps == list(range(1, int(row["epochs"]) + 1)), (steps, row)  # every epoch once, in order
        assert c.info.status == ("KILLED" if row["outcome"] == "stopped_early" else "FINISHED")

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == samples, [(t.number, t.state, t.params) for t in study.trials]
    assert all(t.state.is_finished() for t in study.trials), [t.state for t in study.trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == samples
    assert sum(t.params == pytest.approx(defaults) for t in study.trials) == 1


POINTS = ["first_report", "mid_epoch", "trial_end", "next_trial_start", "before_summary"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("point", POINTS)
def test_sweep_killed_at_point_resumes_with_one_of_each(synth, storage, tmp_path, point):
    """One trial at a time (``--num-cpus 2`` with ``--num-samples 3`` and one CPU per trial would run two: the
    concurrent case is the next test), killed at ``point``, then the same command again."""
    name = f"kill-{point.replace('_', '-')}"
    cmd = [
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
        "3",
        "--cpus-per-worker",
        "2",
        *TINY,
    ]
    again = run_killed_then_again(cmd, point, tmp_path / "killed")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert "resuming" in out
    check_one_of_each(storage, name, 3, out)
    # the rerun's own start phases (a restored Tuner runs the first run's pickled callbacks, and copies the
    # sweep folder back over startup.json at its end: the driver writes it again after fit)
    start = json.loads((storage / name / "startup.json").read_text())
    assert start["notes"]["restored"] is True
    names = [p["name"] for p in start["phases"]]
    runs_a_trial = point != "before_summary"  # killed after every trial finished: the rerun starts none
    from wilson_ray.orchestration.tune_driver import END_PHASES

    assert names[-len(END_PHASES) :] == list(END_PHASES), names
    starts = names[: -len(END_PHASES)]
    assert starts[-2:] == (["first_trial_start", "first_epoch"] if runs_a_trial else ["previous_step", "tuner"]), names


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("point", ["next_trial_start", "mid_epoch"])
def test_concurrent_sweep_killed_resumes_with_one_of_each(synth, storage, tmp_path, point):
    """Two single-CPU trials at a time on the 2-CPU local cluster: the kill lands with two trials in flight."""
    name = f"kill2-{point.replace('_', '-')}"
    cmd = [
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
        "3",
        "--cpus-per-worker",
        "1",
        *TINY,
    ]
    again = run_killed_then_again(cmd, point, tmp_path / "killed")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert "up to 2 at a time" in out and "resuming" in out
    check_one_of_each(storage, name, 3, out)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.timeout(1200)
def test_sweep_killed_during_its_seed_confirmation_resumes_with_one_run_per_config_and_seed(synth, storage, tmp_path):
    """The confirmation stage (issue 26): the driver is killed when a confirmation trial starts after another one
    ended; the rerun keeps the search as it was and finishes the stage with exactly one trial, one record and one
    MLflow run per (configuration, seed), and writes the verdict.

    The search runs without ASHA, so all three trials complete and the stage always has its two configurations,
    the default and top1 (with ASHA, the two non-default trials could both be stopped early, leaving no candidate
    to confirm and so no test), and the Welch test and the verdict are always checked. The restored Tune
    experiment is its first checkpoint (two trials handed out), so the points handed out after it are handed out
    again and must continue the records the killed driver started (``ConfirmationSearcher``)."""
    from mlflow.tracking import MlflowClient

    from wilson_ray.tracking.mlflow_tracker import shown

    space = tmp_path / "space.yaml"
    text = SPACE.read_text()
    assert text.count("scheduler:\n  type: asha\n") == 1, "demo.yaml's scheduler section changed: update this test"
    space.write_text(
        text.replace("scheduler:\n  type: asha\n", "scheduler:\n  type: none\n") + "\nconfirm: {top_k: 1, seeds: 2}\n"
    )
    name = "kill-confirm"
    cmd = [
        sys.executable, "-m", "wilson_ray", "sweep", "--space", str(space), "--data-root", str(synth),
        "--storage", str(storage), "--name", name, "--num-samples", "3", "--cpus-per-worker", "1", *TINY,
    ]  # fmt: skip
    again = run_killed_then_again(cmd, "confirm_trial_start", tmp_path / "killed")
    out = again.stdout + again.stderr
    (tmp_path / "rerun.log").write_text(out)  # the whole console of the rerun, for a failure's post-mortem
    assert again.returncode == 0, out[-6000:]
    check_one_of_each(storage, name, 3, out)  # the search itself: untouched by the stage's kill
    sweep = storage / name
    stage = json.loads((sweep / "confirm.json").read_text())
    groups = stage["groups"]
    assert set(groups) == {"default", "top1"}, (groups, out[-4000:])
    assert all(g["seeds"] == [43, 44] for g in groups.values()), groups  # run.seed 42 + 1, + 2
    expected = sorted((g, s) for g in groups for s in (43, 44))
    newest = max(glob.glob(str(sweep / "confirm" / "experiment_state-*.json")))
    assert len(json.loads(Path(newest).read_text())["trial_data"]) == len(expected)
    records = [json.loads(p.read_text()) for p in (sweep / "confirm" / "trials").glob("*/trial.json")]
    assert sorted((r["confirm"]["group"], r["confirm"]["seed"]) for r in records) == expected
    assert all(r["config"]["run"]["seed"] == r["confirm"]["seed"] for r in records)
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)]
    confirm_runs = [r for r in runs if r.data.tags.get("wilson_ray.role") == "confirm"]
    assert (
        sorted((r.data.tags["wilson_ray.confirm_group"], int(r.data.tags["wilson_ray.seed"])) for r in confirm_runs)
        == expected
    )
    statuses = {
        (r.data.tags["wilson_ray.confirm_group"], r.data.tags["wilson_ray.seed"]): (
            r.info.status,
            r.data.tags.get("wilson_ray.outcome"),
        )
        for r in confirm_runs
    }
    assert all(r.info.status == "FINISHED" for r in confirm_runs), (statuses, out[-4000:])
    parent = next(r for r in runs if r.data.tags.get("wilson_ray.role") == "sweep")
    # MLflow holds 4 significant digits of each metric (tracking.mlflow_tracker.shown); confirm.json the exact mean
    assert parent.data.metrics["confirm/default/miou_all_mean"] == shown(groups["default"]["miou_all"]["mean"])
    test = groups["top1"]["vs_default"]
    assert test["n_a"] == 2 and test["n_b"] == 2 and 0.0 <= test["p"] <= 1.0 and test["alpha"] == pytest.approx(0.05)
    assert stage["best"] == "top1" and "Bonferroni over 1 candidates" in stage["test"]
    assert f"Welch p = {test['p']:.3g}" in stage["verdict"], stage["verdict"]
    assert parent.data.tags["wilson_ray.verdict"] == stage["verdict"]
    assert parent.data.metrics["confirm/top1/p_vs_default"] == shown(test["p"])
    for col in ("miou_old", "miou_new"):  # the intervals of old and new mIoU too, not only the objective's
        assert parent.data.metrics[f"confirm/top1/{col}_low"] == shown(groups["top1"][col]["low"])
    assert "seed confirmation" in out and "resuming it" in out
    assert "old [95% CI]" in out and "new [95% CI]" in out and stage["verdict"] in out
