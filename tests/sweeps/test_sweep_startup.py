"""The sweep's fixed start (issue 28 point 3): what the driver imports, MLflow's store prepared on a thread while
Ray starts (its errors raised in the driver's thread), and ``<sweep folder>/startup.json`` with the driver's start
phases (the last test starts a local Ray cluster: ``-m ray``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wilson_ray.errors import UserError
from wilson_ray.tracking.mlflow_tracker import TrackingInfo, default_tracking_uri, prepare_store

ROOT = Path(__file__).resolve().parents[2]


def _imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_sweep_driver_imports_no_scipy_mlflow_or_plotting():
    mods = _imported_after("import wilson_ray.orchestration.tune_driver\nimport wilson_ray.commands.sweep")
    assert "ray.tune" in mods  # the probe did import the driver
    for heavy in ("scipy", "mlflow", "matplotlib"):
        assert heavy not in mods, f"importing the sweep driver imported {heavy}"


def test_scipy_comes_with_the_first_statistic_not_with_the_module():
    code = (
        "from wilson_ray import stats\nimport sys\nassert 'scipy' not in sys.modules\n"
        "s = stats.summarize([1.0, 2.0, 4.0])\nassert 'scipy.stats' in sys.modules\n"
        "assert abs(s.mean - 7 / 3) < 1e-12 and s.low < s.mean < s.high\n"
        "w = stats.welch([3.0, 3.5, 4.0], [1.0, 1.2, 0.9])\nassert w.p < 0.01 and w.significant\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _info(tmp_path: Path, uri: str | None = None) -> TrackingInfo:
    return TrackingInfo(uri=uri or default_tracking_uri(tmp_path), experiment="exp", sweep="exp")


def test_an_error_on_the_store_thread_is_raised_in_the_callers_thread(tmp_path):
    def broken(info, open_store):
        raise RuntimeError("no such table: experiments\n(the rest of a long SQLAlchemy message)")

    store = prepare_store(_info(tmp_path), work=broken)
    with pytest.raises(UserError) as err:
        store.wait(timeout=30)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"MLflow store {default_tracking_uri(tmp_path)}: could not be prepared")
    assert "RuntimeError: no such table: experiments" in msg and "--no-mlflow" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


def test_a_real_sqlite_store_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"
    store = prepare_store(_info(tmp_path, uri))
    with pytest.raises(UserError, match=r"MLflow store sqlite:///.*/file/mlflow\.db: could not be prepared \("):
        store.wait(timeout=120)


def test_a_prepared_store_has_the_experiment_and_the_driver_reuses_it(tmp_path):
    info = _info(tmp_path)
    seconds = prepare_store(info).wait(timeout=120)
    assert seconds > 0 and (tmp_path / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(info.uri).get_experiment_by_name("exp")
    assert exp is not None and exp.tags.get("wilson_ray.sweep") == "exp"
    # open_store=False only imports mlflow: no file is written (the driver has not checked the storage yet)
    other = tmp_path / "other"
    other.mkdir()
    prepare_store(_info(other), open_store=False).wait(timeout=60)
    assert not (other / "mlflow.db").exists()


def test_a_refused_sweep_discards_only_what_the_store_thread_created(tmp_path):
    """A sweep refused after the thread started (a SQLite store on a cluster found to have 2 nodes) removes the
    SQLite file and artifact folder the thread made, and keeps a store that was there before."""
    import time

    def slow_create(info, open_store):  # the thread is still working when the refusal comes
        time.sleep(0.5)
        Path(info.uri[len("sqlite:///") :]).write_bytes(b"SQLite format 3\x00")
        art = Path(info.artifact_location[len("file://") :])
        art.mkdir(parents=True)
        (art / "x").write_text("1", encoding="utf-8")

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    info = TrackingInfo(
        uri=default_tracking_uri(fresh),
        experiment="exp",
        sweep="exp",
        artifact_location=(fresh / "mlartifacts" / "exp").as_uri(),
    )
    prepare_store(info, work=slow_create).discard()
    assert not any(fresh.iterdir())
    # a store the user already had is never removed, even when the thread touched it
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mlflow.db").write_bytes(b"theirs")
    info = TrackingInfo(uri=default_tracking_uri(kept), experiment="exp", sweep="exp")
    prepare_store(info, work=lambda i, o: None).discard()
    assert (kept / "mlflow.db").read_bytes() == b"theirs"


def test_the_driver_raises_the_store_error_before_opening_the_parent_run(tmp_path, monkeypatch):
    """``run_sweep`` without a cluster (``init_ray`` and the cluster checks stubbed): the thread's failure ends
    the sweep with the one-line UserError, before any MLflow run or trial."""
    from wilson_ray.orchestration import tune_driver as D
    from wilson_ray.orchestration.search_space import load_search_space

    data = tmp_path / "data"
    data.mkdir()
    space = load_search_space(ROOT / "search_spaces" / "demo.yaml", {"data.root": str(data)})

    def broken(info, open_store):
        raise OSError("disk I/O error")

    real = D.prepare_store
    monkeypatch.setattr(D, "prepare_store", lambda info, open_store=True: real(info, open_store, work=broken))
    monkeypatch.setattr(D, "init_ray", lambda address, num_cpus: False)
    monkeypatch.setattr(D, "check_cluster", lambda *a: 1)
    monkeypatch.setattr(D, "alive_nodes", lambda: 1)
    opened = []
    monkeypatch.setattr(D.SweepRun, "open", lambda self, *a, **k: opened.append(1))
    opts = D.SweepOptions(space=space, storage=tmp_path / "runs", extra={"data.root": str(data)}, verbose=0)
    with pytest.raises(UserError, match=r"could not be prepared \(OSError: disk I/O error\)"):
        D.run_sweep(opts, log=lambda *a: None)
    assert opened == []


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_writes_its_start_phases(tmp_path):
    """A 1-trial direct sweep through the CLI writes ``startup.json``: every phase of
    ``tune_driver.STARTUP_PHASES`` and then of ``END_PHASES`` once, in order, with non-negative durations that add
    up to the offsets."""
    from wilson_ray.orchestration.tune_driver import END_PHASES, STARTUP_PHASES

    synth = tmp_path / "synth"
    subprocess.run(
        [sys.executable, "-m", "wilson_ray", "data", "synth", "--out", str(synth)]
        + ["--train", "24", "--val", "8", "--size", "64"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    storage = tmp_path / "runs"
    sets = {
        "incremental.epochs": 1,
        "step0.epochs": 1,
        "step0.max_iters_per_epoch": 2,
        "incremental.max_iters_per_epoch": 2,
        "data.batch_size": 8,
        "data.val_batch_size": 16,
        "data.num_workers": 0,
    }
    cmd = [sys.executable, "-m", "wilson_ray", "sweep", "--space", str(ROOT / "search_spaces" / "demo.yaml")]
    cmd += ["--data-root", str(synth), "--storage", str(storage), "--name", "start", "--num-samples", "1"]
    cmd += ["--workers-per-trial", "1", "--num-cpus", "2", "--quiet"]
    cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=560, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads((storage / "start" / "startup.json").read_text(encoding="utf-8"))
    names = [p["name"] for p in data["phases"]]
    assert names == [*STARTUP_PHASES, *END_PHASES], names
    ends = {p["name"]: p["duration_s"] for p in data["phases"][len(STARTUP_PHASES) :]}
    assert ends["confirmation"] < 0.5 and ends["finish"] > 0 and ends["ray_shutdown"] > 0, ends  # no confirm:
    assert all(p["duration_s"] >= 0 for p in data["phases"])
    offsets = [p["offset_s"] for p in data["phases"]]
    assert offsets == sorted(offsets) and offsets[0] > 0
    assert sum(p["duration_s"] for p in data["phases"]) == pytest.approx(data["total_s"], abs=0.01)
    assert data["origin_source"] == "proc" and data["notes"]["tracking"] is True
    assert data["notes"]["restored"] is False and data["notes"]["mlflow_thread_s"] > 0
    assert not list((storage / "start").glob(".startup.json*"))  # no temporary file left behind
