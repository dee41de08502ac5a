"""MLflow tracking on a sqlite store: parent/child runs, per-epoch metrics, artifacts, a restored trial continuing
its own run, and an unreachable store that warns once while the record keeps everything (issue 5, fault 3)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from ports import free_port

from wilson_ray.errors import UserError
from wilson_ray.sweep_record import TrialRecord
from wilson_ray.tracking import plots
from wilson_ray.tracking.mlflow_tracker import (
    SweepRun,
    TrackingInfo,
    TrialTracker,
    check_tracking_uri,
    default_artifact_location,
    default_tracking_uri,
    sweep_runs,
)

CLASSES = ["background", "a", "b", "c"]


def info_for(tmp_path: Path, uri: str | None = None) -> TrackingInfo:
    return TrackingInfo(
        uri=uri or default_tracking_uri(tmp_path),
        experiment="sw",
        sweep="sw",
        artifact_location=default_artifact_location(tmp_path, "sw"),
    )


def epoch_metrics(epoch: int) -> dict:
    m = {
        "epoch": epoch,
        "lr": 0.01 / epoch,
        "images_per_s": 100.0 / 3,
        "loss/cls": 1.0 / epoch,
        "loss/total": 2.0 / epoch,
    }
    if epoch % 2 == 0:
        m.update(
            {
                "miou_old": 10.0 * epoch,
                "miou_new": 5.0 * epoch,
                "miou_all": 8.0 * epoch,
                "iou/background": 80.0,
                "iou/a": 1.0,
            }
        )
    return m


def make_record(tmp_path: Path, trial_id: str = "t0001", epochs: int = 2) -> TrialRecord:
    rec = TrialRecord(tmp_path / "trials" / trial_id)
    rec.write_trial(
        trial_id,
        f"trial_{trial_id}",
        {"method.alpha": 0.3},
        {"method": {"name": "wilson", "alpha": 0.3}, "data": {"task": "15-5"}},
        1,
        "sw",
    )
    for e in range(1, epochs + 1):
        rec.record_epoch(e, epoch_metrics(e))
    return rec


def finish_record(rec: TrialRecord) -> None:
    final = rec.dir / "final"
    cm = np.array([[5, 1, 0, 0], [0, 3, 1, 0], [0, 0, 2, 0], [1, 0, 0, 4]])
    per_class = {n: float(v) for n, v in zip(CLASSES, [80.0, 50.0, 40.0, 30.0])}
    plots.write_confusion(cm, CLASSES, final)
    plots.confusion_png(cm, CLASSES, final / "confusion.png")
    plots.write_per_class(per_class, final)
    plots.iou_bar_png(per_class, final / "iou_bar.png", new_classes=["c"])
    (final / "final.json").write_text(
        '{"metrics": {"miou_all": 16.0, "miou_old": 20.0, "miou_new": 10.0}, '
        '"per_class_iou": {"background": 80.0, "a": 50.0}, "epochs": 2, "step": 1}'
    )
    rec.set_outcome("completed")


@pytest.mark.timeout(120)
def test_parent_child_metrics_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    info = info_for(tmp_path)
    parent = SweepRun(info)
    parent_id = parent.open(params={"config.method.name": "wilson"}, tags={"x": "y"})
    assert parent_id is not None and info.parent_run_id == parent_id
    rec = make_record(tmp_path)
    finish_record(rec)
    tracker = TrialTracker(info, rec)
    assert tracker.sync()

    runs = sweep_runs(info.uri, "sw")
    assert [r.data.tags.get("wilson_ray.role") for r in runs] == ["sweep", "trial"]
    child = runs[1]
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags["wilson_ray.trial_id"] == "t0001"
    assert child.info.status == "FINISHED" and child.data.tags["wilson_ray.outcome"] == "completed"
    assert child.data.params["config.method.alpha"] == "0.3"
    # the precision the trial trained in, as resolved on this (CUDA-less) machine from run.amp (default none)
    assert child.data.params["amp_resolved"] == "none" and child.data.params["hardware"].startswith("amp: none (CPU")
    client = MlflowClient(info.uri)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss/total")] == [1, 2]
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "miou/all")] == [(2, 16.0)]
    assert child.data.metrics["miou/all"] == 16.0  # the last epoch's value is the run's value: one name per series
    # stored (and shown in the runs table) with 4 significant digits, not 16
    assert [m.value for m in client.get_metric_history(child.info.run_id, "train/images_per_s")] == [33.33, 33.33]
    assert not [k for k in child.data.metrics if k.startswith(("final/", "final_iou/"))], child.data.metrics
    # MLflow's names: mIoU first on the run page (sections sorted by prefix), no metric named like a param
    assert {"miou/all", "train_loss/total", "train/lr", "epoch"} <= set(child.data.metrics)
    assert not {"lr", "miou_all", "loss/total"} & set(child.data.metrics)
    assert child.data.tags["outcome"] == "completed"
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "final")}
    assert {
        "final/confusion.png",
        "final/confusion.csv",
        "final/confusion.npy",
        "final/iou_bar.png",
        "final/per_class_iou.json",
    } <= arts
    # artifacts live under the storage folder we chose, not the working directory
    assert Path(child.info.artifact_uri.replace("file://", "")).is_relative_to(tmp_path / "mlartifacts")

    # a second sync is a no-op (no duplicated epochs); the parent closes with the summary
    assert tracker.sync(force=True)
    assert len(client.get_metric_history(child.info.run_id, "train_loss/total")) == 2
    best = tmp_path / "best.yaml"
    best.write_text("method: {name: wilson}\n")
    assert parent.finish({"best_miou_all": 16.0}, [best])
    parent_run = client.get_run(parent_id)
    assert parent_run.info.status == "FINISHED" and parent_run.data.metrics["best_miou_all"] == 16.0
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent_id)}
    # re-opening the sweep finds the same parent run
    assert SweepRun(info_for(tmp_path)).open() == parent_id


@pytest.mark.timeout(120)
def test_restored_trial_continues_its_run(tmp_path):
    from mlflow.tracking import MlflowClient

    info = info_for(tmp_path)
    SweepRun(info).open()
    rec = make_record(tmp_path, epochs=2)
    assert TrialTracker(info, rec).sync()
    first = rec.run_id()
    # the trial is restored elsewhere: a new tracker, and even the cached run id is gone -> found by tag
    (rec.dir / "mlflow_run.json").unlink()
    rec.record_epoch(2, epoch_metrics(2))  # epoch 2 re-run after a crash: never logged twice
    rec.record_epoch(3, epoch_metrics(3))
    assert TrialTracker(info, rec).sync()
    assert rec.run_id() == first
    runs = [r for r in sweep_runs(info.uri, "sw") if r.data.tags.get("wilson_ray.role") == "trial"]
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    steps = [m.step for m in MlflowClient(info.uri).get_metric_history(first, "epoch")]
    assert steps == [1, 2, 3]


@pytest.mark.timeout(120)
def test_unreachable_store_warns_once_and_backfills(tmp_path):
    warnings: list[str] = []
    down = info_for(tmp_path, f"http://127.0.0.1:{free_port()}")
    rec = make_record(tmp_path, epochs=0)
    tracker = TrialTracker(down, rec, warn=warnings.append)
    for e in range(1, 4):
        rec.record_epoch(e, epoch_metrics(e))  # training goes on ...
        assert tracker.sync(force=True) is False  # ... MLflow is down
    assert len(warnings) == 1 and "unreachable" in warnings[0] and down.uri in warnings[0]
    assert sorted(rec.epochs()) == [1, 2, 3]  # nothing lost: the record has every epoch

    # the store "comes back": the next sync (another process, or the end of the sweep) backfills every epoch
    from mlflow.tracking import MlflowClient

    up = info_for(tmp_path)
    assert TrialTracker(up, rec, warn=warnings.append).sync()
    run_id = rec.run_id()
    assert [m.step for m in MlflowClient(up.uri).get_metric_history(run_id, "train_loss/total")] == [1, 2, 3]
    assert len(warnings) == 1


@pytest.mark.timeout(120)
def test_same_tracker_recovers_when_store_is_back(tmp_path):
    """The rank-0 worker's tracker keeps retrying: once the store answers, the backlog goes up, no new warning."""
    warnings: list[str] = []
    info = info_for(tmp_path, f"http://127.0.0.1:{free_port()}")
    rec = make_record(tmp_path, epochs=2)
    tracker = TrialTracker(info, rec, warn=warnings.append)
    assert tracker.sync(force=True) is False
    assert tracker.sync() is False  # within the retry pause: no attempt, no new warning
    info.uri = default_tracking_uri(tmp_path)  # the "server" is back (same object the connection uses)
    tracker.conn.client = None
    assert tracker.sync(force=True) is True
    assert len(warnings) == 1 and sorted(rec.epochs()) == [1, 2]


@pytest.mark.timeout(120)
def test_outcome_half_uploaded_or_overwritten_is_repaired_by_the_next_sync(tmp_path, monkeypatch):
    """A sync that fails between the outcome's tag and the run's status (a locked SQLite store), or a RUNNING set
    on the run since, must not leave a completed trial's run RUNNING: the next sync (the sweep's end) ends it."""
    from mlflow.tracking import MlflowClient

    info = info_for(tmp_path)
    rec = make_record(tmp_path, epochs=2)
    assert TrialTracker(info, rec).sync()  # the run exists, RUNNING
    finish_record(rec)
    real = MlflowClient.set_terminated
    calls = []

    def locked_once(self, run_id, *args, **kwargs):
        calls.append(run_id)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_terminated", locked_once)
    assert TrialTracker(info, rec, warn=lambda _: None).sync() is False
    assert TrialTracker(info, rec).sync()
    client = MlflowClient(info.uri)
    run = client.get_run(rec.run_id())
    assert (run.info.status, run.data.tags["wilson_ray.outcome"]) == ("FINISHED", "completed")
    assert run.info.end_time == int(rec.outcome()["time"] * 1000)
    assert len(calls) == 2

    client.update_run(rec.run_id(), status="RUNNING")  # e.g. a restored trial's process that read an old outcome
    assert TrialTracker(info, rec).sync()
    assert client.get_run(rec.run_id()).info.status == "FINISHED"


def test_failed_outcome_sets_reason(tmp_path):
    info = info_for(tmp_path)
    rec = make_record(tmp_path, epochs=1)
    rec.mark_failed("NonFiniteLossError: non-finite loss at step 1 epoch 2: loss/cls = nan")
    assert TrialTracker(info, rec).sync()
    run = sweep_runs(info.uri, "sw")[0]
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["wilson_ray.failure_reason"]
    assert rec.failure().startswith("NonFiniteLossError")


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/x/mlflow.db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "postgresql://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "databricks",
    ],
)
def test_known_tracking_uris(uri):
    assert check_tracking_uri(uri) == uri


@pytest.mark.parametrize("uri", ["ftp://host/x", "s3://bucket/mlflow", "mlflow.db", "sqlite://", "http://", ""])
def test_unknown_tracking_uris(uri):
    with pytest.raises(UserError) as err:
        check_tracking_uri(uri)
    assert "--tracking-uri" in str(err.value) and "\n" not in str(err.value)


def test_plots_write_pngs(tmp_path):
    cm = np.random.default_rng(0).integers(0, 50, size=(4, 4))
    assert plots.confusion_png(cm, CLASSES, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert plots.iou_bar_png({"background": 90.0, "a": float("nan")}, tmp_path / "b.png").stat().st_size > 0
    rows = [{"trial": f"t{i}", "miou_old": i, "miou_new": 2 * i, "miou_all": 3 * i} for i in range(3)]
    assert (
        plots.sweep_summary_png(rows, "miou_all", tmp_path / "s.png", curves={"t1": [(1, 1.0), (2, 2.0)]})
        .stat()
        .st_size
        > 0
    )
    paths = plots.write_confusion(cm, CLASSES, tmp_path)
    assert np.array_equal(np.load(paths[0]), cm)
    assert paths[1].read_text().splitlines()[0].endswith("a,b,c")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_ui_interrupted_while_starting_stops_the_server_it_already_started(tmp_path, monkeypatch):
    """Ctrl-C between the MLflow server's start and the end of ``open_ui`` (printing its URL, starting
    optuna-dashboard) must not leave that server running in its own session."""
    import subprocess

    from wilson_ray.tracking import ui

    started = []

    def fake_start(argv, url, health, name, log, timeout=120.0):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        started.append(proc)
        return ui.Server(name, url, proc)

    def interrupted(line):
        raise KeyboardInterrupt

    monkeypatch.setattr(ui, "start", fake_start)
    with pytest.raises(KeyboardInterrupt):
        ui.open_ui(tmp_path, None, port=free_port(), log=interrupted)
    assert len(started) == 1
    assert started[0].wait(15) is not None  # stopped (SIGTERM), not left behind


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["ctrl-c with SIGINT inherited as ignored", "SIGTERM"])
def test_ui_stops_its_servers_on_ctrl_c_even_if_started_ignoring_it_and_on_sigterm(tmp_path, how):
    """A ui started by a process that ignores SIGINT (the full test suite did: CI at 4245fdc and 9428a83) still
    stops on Ctrl-C; a SIGTERM stops the servers too instead of leaving them in their own sessions."""
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "wilson_ray", "ui", "--storage", str(tmp_path), "--port", str(free_port())]
    ignore = how.startswith("ctrl-c")
    proc = subprocess.Popen(
        [*cmd, "--no-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None,
    )
    try:
        lines = []
        while not lines or "Ctrl-C stops the servers" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1] or proc.poll() is None, "".join(lines)
        os.killpg(proc.pid, signal.SIGINT if ignore else signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", f"backend-store-uri sqlite:///{tmp_path}"], check=False)
    assert "Shutting down" in (tmp_path / "ui-logs" / "mlflow.log").read_text()  # the server got its SIGTERM


def test_new_classes_of_a_stopped_trial_come_from_its_record_without_its_config(tmp_path, monkeypatch):
    """A trial ASHA stopped has no final.json: its figures' new classes come from the old classes its worker wrote
    into trial.json (no config is resolved in the driver); a finished trial's come from final.json."""
    import wilson_ray.config as config_module
    from wilson_ray.orchestration.outcome import new_classes
    from wilson_ray.sweep_record import TrialRecord

    def refuse(*args, **kwargs):
        raise AssertionError("the driver resolved a trial config")

    monkeypatch.setattr(config_module, "config_from_dict", refuse)
    rec = TrialRecord(tmp_path / "t1")
    rec.dir.mkdir()
    rec.write_trial("t1", "t1", {}, {}, 1, "s", old_classes=["background", "a", "b"])
    names = ["background", "a", "b", "c", "d"]
    assert new_classes(rec, rec.trial(), names) == ["c", "d"]
    assert new_classes(rec, {**rec.trial(), "step": 0}, names) == []
    (rec.dir / "final").mkdir()
    (rec.dir / "final" / "final.json").write_text(json.dumps({"new_classes": ["d"]}), encoding="utf-8")
    assert new_classes(rec, rec.trial(), names) == ["d"]


def test_old_and_new_class_names_of_a_step():
    from wilson_ray.config import resolve_config
    from wilson_ray.protocol import get_task
    from wilson_ray.step_setup import added_classes, new_class_names, old_class_names

    cfg = resolve_config("voc-15-5", overrides={"model.pretrained": None})
    task = get_task("15-5")
    old = old_class_names(cfg, 1)
    assert len(old) == 16 and old[0] == "background" and old_class_names(cfg, 0) == []
    names = list(task.class_names(1))
    assert new_class_names(cfg, 1, names) == added_classes(names, old) == names[16:]
    assert len(names[16:]) == 5
