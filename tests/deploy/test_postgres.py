"""PostgreSQL as the MLflow store and the Optuna storage of a sweep, against a real server started here
(``pg_server.PostgresServer``: temporary data folder, 127.0.0.1, a free port, password authentication), and the
rule that no SQLite file is written from several nodes (``orchestration.backends``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pg_server import PostgresServer, have_postgres

from wilson_ray.cli import main
from wilson_ray.errors import UserError
from wilson_ray.orchestration import backends

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "search_spaces" / "demo.yaml"


@pytest.fixture(scope="module")
def pg():
    if not have_postgres():
        pytest.skip("PostgreSQL (initdb, pg_ctl, postgres) is not on the PATH; .ci/run installs it")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
        assert not server.pids(), "postgres processes survived stop()"
        assert not server.root.exists(), "the data folder survived stop()"


@pytest.mark.timeout(180)
def test_optuna_study_on_postgresql_keeps_one_trial_per_tune_trial(pg, tmp_path):
    """The restored-searcher case of issue 17 with the study in PostgreSQL: a lost Tune trial's Optuna trial is
    handed to its replacement, and the study ends with one trial per Tune trial."""
    import optuna

    from wilson_ray.orchestration.compat import RECORD_ATTR, WilsonOptunaSearch
    from wilson_ray.orchestration.search_space import load_search_space
    from wilson_ray.sweep_record import record_id

    space = load_search_space(SPACE)
    url = pg.url("optuna")
    trials = tmp_path / "trials"

    s = WilsonOptunaSearch(
        space=space.to_optuna(),
        metric="miou_all",
        mode="max",
        points_to_evaluate=[space.defaults()],
        study_name="pg",
        sampler=optuna.samplers.TPESampler(seed=0),
        storage=optuna.storages.RDBStorage(url),
        record_dir=trials,
    )
    assert s.suggest("a") == space.defaults()
    s.save(str(tmp_path / "state.pkl"))
    s.on_trial_complete("a", {"miou_all": 10.0})
    lost = s.suggest("b")

    restored = WilsonOptunaSearch.__new__(WilsonOptunaSearch)
    restored.restore(str(tmp_path / "state.pkl"))  # the pickled RDBStorage reconnects to the server by URL
    assert restored.suggest("c") == lost and record_id(trials, "c") == "b"
    restored.on_trial_result("a", {"miou_all": 10.0, "training_iteration": 1})
    restored.on_trial_complete("a", {"miou_all": 10.0})
    restored.on_trial_complete("c", {"miou_all": 5.0})
    third = restored.suggest("d")
    restored.on_trial_complete("d", {"miou_all": 7.0})

    study = optuna.load_study(study_name="pg", storage=url)
    assert [t.user_attrs.get(RECORD_ATTR) for t in study.trials] == ["a", "b", "d"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in study.trials] == [10.0, 5.0, 7.0]
    assert third not in (space.defaults(), lost)
    # it is the server's database, not a file: the rows are there for any client
    assert pg.sql("optuna", "SELECT count(*) FROM trials")[0][0] == 3


@pytest.mark.timeout(240)
def test_mlflow_on_postgresql_one_run_per_trial_one_value_per_epoch(pg, tmp_path):
    """A trial record synced to MLflow on PostgreSQL, again after a restart (a new tracker, as a restarted worker
    makes): one child run, every epoch once per metric."""
    from mlflow.tracking import MlflowClient
    from test_tracking import epoch_metrics, finish_record, make_record

    from wilson_ray.tracking.mlflow_tracker import SweepRun, TrackingInfo, TrialTracker, default_artifact_location

    uri = pg.url("mlflow")
    info = TrackingInfo(
        uri=uri, experiment="pgsw", sweep="pgsw", artifact_location=default_artifact_location(tmp_path, "pgsw")
    )
    assert SweepRun(info).open(params={"config.method.name": "wilson"}) is not None
    rec = make_record(tmp_path, "t0001", epochs=2)
    assert TrialTracker(info, rec).sync()
    rec.record_epoch(3, epoch_metrics(3))
    finish_record(rec)
    assert TrialTracker(info, rec).sync(force=True)  # a new process: finds its run, adds epoch 3 only
    assert TrialTracker(info, rec).sync(force=True)  # nothing new: nothing logged twice

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pgsw")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("wilson_ray.role") == "trial"]
    assert len(runs) == 2 and len(trials) == 1
    run_id = trials[0].info.run_id
    for key in ("epoch", "train_loss/total", "train/lr"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    assert [m.step for m in client.get_metric_history(run_id, "miou/all")] == [2]
    assert trials[0].info.status == "FINISHED"
    assert pg.sql("mlflow", "SELECT count(*) FROM runs")[0][0] == 2


def test_optuna_storage_flag_is_checked_in_one_line(capsys, tmp_path):
    for url, fragment in (
        ("ftp://db/optuna", "has scheme 'ftp', expected one of sqlite://, postgresql://"),
        ("postgresql:///optuna", "has no host"),
        ("sqlite://", "is not a sqlite file URL"),
    ):
        code = main(["sweep", "--space", str(SPACE), "--storage", str(tmp_path / "s"), "--optuna-storage", url])
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], err
        assert not (tmp_path / "s").exists()
    # the password never reaches a message
    with pytest.raises(UserError) as e:
        backends.check_optuna_storage("postgres://u:secret@db:5432/optuna")
    assert "secret" not in str(e.value) and "u:***@db:5432" in str(e.value)


def _two_nodes(monkeypatch):
    import ray

    from wilson_ray.orchestration import tune_driver

    node = {"Alive": True, "Resources": {"CPU": 1.0}}
    monkeypatch.setattr(tune_driver, "init_ray", lambda address, num_cpus: False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e10})
    monkeypatch.setattr(ray, "nodes", lambda: [dict(node), dict(node), {"Alive": False, "Resources": {}}])


def test_sqlite_mlflow_store_on_a_two_node_cluster_is_refused(monkeypatch, capsys, tmp_path, synth_root):
    """Default and explicit SQLite tracking URIs are refused on a 2-node cluster (Ray's node query patched:
    no cluster starts), before the sweep writes anything but its empty storage folder."""
    _two_nodes(monkeypatch)
    storage = tmp_path / "s"
    for extra in ([], ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]):
        code = main(
            [
                "sweep",
                "--space",
                str(SPACE),
                "--storage",
                str(storage),
                "--data-root",
                str(synth_root),
                "--workers-per-trial",
                "1",
                *extra,
            ]
        )
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1, err
        assert (
            err[0].startswith("wilson-ray: error: --tracking-uri: sqlite:///")
            and "the Ray cluster has 2 nodes" in err[0]
            and "expected an MLflow server" in err[0]
        ), err
        assert not any(storage.iterdir()) and not (tmp_path / "m.db").exists()


def test_shared_storage_rules(tmp_path):
    said: list[str] = []
    pg_uri = "postgresql://u:pw@db:5432/mlflow"
    sqlite_study = f"sqlite:///{tmp_path / 'optuna.db'}"
    # one node, local disk: SQLite is fine, nothing said
    backends.check_shared_sqlite(tmp_path, 1, f"sqlite:///{tmp_path / 'm.db'}", sqlite_study, said.append)
    assert said == []
    # several nodes: MLflow on PostgreSQL is fine; a SQLite study is only written by the driver: one warning
    backends.check_shared_sqlite(tmp_path, 3, pg_uri, sqlite_study, said.append)
    assert len(said) == 1 and said[0].startswith("wilson-ray: warning: the Optuna study is a SQLite file")
    assert "the Ray cluster has 3 nodes" in said[0]
    backends.check_shared_sqlite(tmp_path, 3, "http://mlflow:5000", "postgresql://u@db/optuna", said.append)
    backends.check_shared_sqlite(tmp_path, 3, None, "postgresql://u@db/optuna", said.append)  # --no-mlflow
    assert len(said) == 1


def test_network_filesystem_counts_as_shared(tmp_path):
    """One node, but the storage is on NFS: SQLite's locks do not hold there either."""
    info = tmp_path / "mountinfo"
    shared = tmp_path / "nfs"
    (shared / "sweeps").mkdir(parents=True)
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:50 / {shared} rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2\n"
    )
    assert backends.filesystem_type(shared / "sweeps" / "not-yet", str(info)) == "nfs4"
    assert backends.filesystem_type(tmp_path, str(info)) == "ext4"
    assert backends.filesystem_type(Path("/proc")) == "proc"  # the real mount table
    assert backends.storage_sharing(shared / "sweeps", 1, str(info)) == "it is on a nfs4 file system"
    assert backends.storage_sharing(tmp_path, 1, str(info)) is None


def test_redact_hides_only_the_password():
    assert (
        backends.redact("postgresql://wilson:s3cret@198.18.0.1:5432/optuna")
        == "postgresql://wilson:***@198.18.0.1:5432/optuna"
    )
    assert backends.redact("postgresql://wilson@db/optuna") == "postgresql://wilson@db/optuna"
    assert backends.redact("sqlite:////x/optuna.db") == "sqlite:////x/optuna.db"


@pytest.mark.timeout(120)
def test_report_draws_the_search_figures_from_a_study_on_postgresql(pg, tmp_path, monkeypatch, capsys):
    """A sweep whose study is on a server: the report reopens it from the recorded (redacted) URL with the password
    from PGPASSWORD, or from ``--optuna-storage``; without the password it says why instead of the figures."""
    from test_sweep_report import fake_sweep

    storage, name = fake_sweep(tmp_path, optuna_url=pg.url("optuna"))
    recorded = (storage / name / "sweep.json").read_text()
    assert pg.password not in recorded and ":***@" in recorded  # the driver records the URL redacted

    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    assert main(["report", "--storage", str(storage), "--name", name, "--out", str(tmp_path / "r0")]) == 0
    text = (tmp_path / "r0" / "report.html").read_text()
    assert "could not be opened" in text and "--optuna-storage" in text and pg.password not in text
    assert not (tmp_path / "r0" / "parallel_coordinate.png").exists()

    monkeypatch.setenv("PGPASSWORD", pg.password)
    assert main(["report", "--storage", str(storage), "--name", name, "--out", str(tmp_path / "r1")]) == 0
    monkeypatch.delenv("PGPASSWORD")
    assert (
        main(
            [
                "report",
                "--storage",
                str(storage),
                "--name",
                name,
                "--out",
                str(tmp_path / "r2"),
                "--optuna-storage",
                pg.url("optuna"),
            ]
        )
        == 0
    )
    for out in ("r1", "r2"):
        for png in ("parallel_coordinate.png", "param_importances.png"):
            assert (tmp_path / out / png).stat().st_size > 5000, (out, png)
        assert "could not be opened" not in (tmp_path / out / "report.html").read_text()
    assert "report:" in capsys.readouterr().out
