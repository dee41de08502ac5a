"""MLflow tracking of sweeps: one parent run per sweep, one child run per trial, fed from an on-disk trial record.

The source of truth is the trial's *record*, a folder in the sweep's storage (``sweep_record.TrialRecord``): the
trial config,
one JSON file per epoch, the final per-class IoU / confusion matrix / figures and the outcome, each written
atomically. ``TrialTracker.sync()`` uploads whatever MLflow does not have yet and is idempotent, so:

* the rank-0 Train worker syncs after every epoch (metrics with ``step=epoch``);
* if MLflow is unreachable, training goes on with ONE warning; the record keeps everything and the next sync
  (next epoch, the end of the trial, the end of the sweep, or re-running the sweep command) backfills it;
* a restored or restarted trial finds its own run by the ``wilson_ray.trial_id`` tag (no duplicate runs), and
  epochs MLflow already has are never logged twice (no duplicate steps).

``mlflow`` is imported lazily: reading records (``wilson-ray best``) needs no MLflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from wilson_ray.errors import UserError
from wilson_ray.filelock import locked
from wilson_ray.sweep_record import TrialRecord, finite_metrics

KNOWN_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")
TAG_SWEEP = "wilson_ray.sweep"
TAG_TRIAL = "wilson_ray.trial_id"
TAG_ROLE = "wilson_ray.role"
TAG_OUTCOME = "wilson_ray.outcome"
TAG_REASON = "wilson_ray.failure_reason"
TAG_STOP = "wilson_ray.stop_reason"  # why ASHA stopped a trial, and at which rung (epoch)
TAG_RUNG = "wilson_ray.asha_rung"
TAG_GROUP = "wilson_ray.confirm_group"  # a confirmation trial: default, top1, ...
TAG_SEED = "wilson_ray.seed"
TAG_SOURCE = "wilson_ray.confirms_trial"  # the search trial whose values it re-runs
TAG_PARETO = "wilson_ray.pareto_front"  # multi-objective sweeps: "true" / "false" on each search trial's run
TAG_PARETO_TRIALS = "wilson_ray.pareto_front_trials"  # and the front's trial ids on the sweep's run
TAG_SUMMARY = "wilson_ray.summary_logged"
# MLflow 3 opens an experiment in its GenAI view unless tagged as model training (the UI's experiment kinds)
TAG_KIND = "mlflow.experimentKind"
KIND_TRAINING = "custom_model_development"
TAG_FINAL = "wilson_ray.final_logged"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

TAG_SHOWN_OUTCOME = "outcome"  # a short column for the runs table: completed / stopped@2 / failed


def shown_outcome(outcome: dict[str, Any]) -> str:
    """How a trial ended, short enough for a runs-table column: ``completed``, ``stopped@2`` (ASHA, at the
    epoch-2 rung), ``failed``."""
    kind = outcome.get("outcome") or "running"
    if kind == "stopped_early":
        return f"stopped@{outcome['rung']}" if outcome.get("rung") is not None else "stopped"
    return str(kind)


# outcome -> MLflow run status. A trial ASHA stopped ends KILLED: the runs table's status icon then tells it from a
# completed one at a glance (its description and the "outcome" tag say at which rung and why).
OUTCOME_STATUS = {
    "running": "RUNNING",
    "completed": "FINISHED",
    "stopped_early": "KILLED",
    "failed": "FAILED",
    "killed": "KILLED",
}


# ---------------------------------------------------------------------------------------------------------------
# URIs


def check_tracking_uri(uri: str, flag: str = "--tracking-uri") -> str:
    """Accept the URI schemes MLflow has a store for; anything else is a one-line UserError."""
    if not isinstance(uri, str) or not uri.strip():
        raise UserError(f"{flag}: empty, expected e.g. sqlite:///runs/mlflow.db or http://127.0.0.1:5000")
    uri = uri.strip()
    if uri == "databricks":
        return uri
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if scheme not in KNOWN_SCHEMES and not (scheme == "" and uri.startswith(("/", "."))):
        raise UserError(
            f"{flag}: {uri!r} has unknown scheme {scheme!r}, expected one of "
            f"{', '.join(s + ':' for s in KNOWN_SCHEMES)}"
        )
    if scheme in ("http", "https") and not urlparse(uri).netloc:
        raise UserError(f"{flag}: {uri!r} has no host, expected e.g. http://127.0.0.1:5000")
    if scheme == "sqlite":
        if sqlite_file(uri) is None:
            raise UserError(f"{flag}: {uri!r} is not a sqlite file URI, expected sqlite:////absolute/path/mlflow.db")
    return uri


def default_tracking_uri(storage: str | Path) -> str:
    """``sqlite:///<storage>/mlflow.db`` (absolute)."""
    return f"sqlite:///{Path(storage).expanduser().resolve() / 'mlflow.db'}"


def sqlite_file(uri: str) -> str | None:
    """The file of a ``sqlite:///`` URI in SQLAlchemy's form (``sqlite:////abs`` or ``sqlite:///rel``); None for
    any other URI, an empty path or ``:memory:``."""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return path if path and path != ":memory:" else None


ARTIFACT_ROOT = "mlartifacts"


def default_artifact_location(storage: str | Path, experiment: str) -> str:
    return (Path(storage).expanduser().resolve() / ARTIFACT_ROOT / experiment).as_uri()


def is_local_store(uri: str) -> bool:
    """True for database URIs, where the client writes artifacts itself (so we pick their location)."""
    return urlparse(uri).scheme.split("+")[0].lower() in ("sqlite", "postgresql", "mysql", "mssql")


def venv_command(tool: str) -> str:
    """``tool`` as installed beside this Python (``.venv/bin/mlflow``), absolute, so a printed command works from a
    fresh shell without activating the venv."""
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.is_file() else tool


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri`` (a server URI is opened in a browser directly): one
    server process without the job runner (``mlflow ui`` starts ~15 processes, 2.4 GiB, 20 s to answer)."""
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {uri} in a browser (MLflow server)"
    return (
        f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {venv_command('mlflow')} server --backend-store-uri {uri} "
        "--host 127.0.0.1 --port 5000 --workers 1"
    )


def configure_http_client() -> None:
    """Fail fast when a tracking server is down instead of retrying for minutes (we buffer and retry later)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_key(name: str) -> str:
    return _METRIC_NAME.sub("_", str(name))


# MLflow's run page draws one chart section per name prefix ("a/b" -> section "a"), sorted by prefix, with the
# un-prefixed metrics last; and a metric named like a param hides the param in the run overview ("lr 0"). So the
# record's names are given prefixes in MLflow that put the mIoU columns first (miou < per_class_iou < train <
# train_loss) and keep the schedule's lr apart from the swept lr.
MLFLOW_PREFIXES = (("miou_", "miou/"), ("iou/", "per_class_iou/"), ("loss/", "train_loss/"))
MLFLOW_RENAMES = {"lr": "train/lr", "images_per_s": "train/images_per_s", "epoch": "epoch"}


def mlflow_metric(name: str) -> str:
    """The MLflow name of a record's metric: ``miou_hm`` -> ``miou/hm``, ``iou/cat`` -> ``per_class_iou/cat``,
    ``loss/seg`` -> ``train_loss/seg``, ``lr`` -> ``train/lr``; ``epoch`` stays (the marker of a logged epoch)."""
    name = str(name)
    if name in MLFLOW_RENAMES:
        return MLFLOW_RENAMES[name]
    for old, new in MLFLOW_PREFIXES:
        if name.startswith(old):
            return metric_key(new + name[len(old) :])
    return metric_key(name)


# ---------------------------------------------------------------------------------------------------------------
# MLflow connection with one warning when unreachable


@dataclass
class TrackingInfo:
    """What a process needs to log to the sweep's MLflow experiment (JSON-able: it travels to Ray workers)."""

    uri: str
    experiment: str
    sweep: str
    artifact_location: str | None = None
    parent_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackingInfo":
        return cls(**data)


def _default_warn(msg: str) -> None:
    print(f"wilson-ray: warning: {msg}", file=sys.stderr, flush=True)


class _Connection:
    """A lazily created ``MlflowClient``; failures flip it offline with ONE warning, later calls retry."""

    RETRY_AFTER_S = 5.0

    def __init__(self, info: TrackingInfo, warn: Callable[[str], None] | None = None, where: str = ""):
        self.info = info
        self.warn = warn or _default_warn
        self.where = where
        self.client = None
        self.experiment_id: str | None = None
        self.offline = False
        self.warned = False
        self._last_failure = 0.0
        configure_http_client()

    def ensure(self):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.info.uri)
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.info.experiment)
            if exp is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        self.info.experiment,
                        artifact_location=self.info.artifact_location,
                        tags={TAG_SWEEP: self.info.sweep, TAG_KIND: KIND_TRAINING},
                    )
                except Exception:
                    exp = self.client.get_experiment_by_name(self.info.experiment)  # created concurrently
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                if exp.tags.get(TAG_KIND) is None:
                    self.client.set_experiment_tag(exp.experiment_id, TAG_KIND, KIND_TRAINING)
                self.experiment_id = exp.experiment_id
        return self.client

    def may_try(self) -> bool:
        return not self.offline or time.monotonic() - self._last_failure >= self.RETRY_AFTER_S

    def failed(self, err: BaseException) -> None:
        self.offline = True
        self._last_failure = time.monotonic()
        if not self.warned:
            self.warned = True
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            self.warn(
                f"MLflow at {self.info.uri} is unreachable ({type(err).__name__}: {reason}); training "
                f"continues, {self.where or 'results'} are kept in the sweep storage and uploaded when it "
                "is back (or at the end of the sweep)"
            )

    def recovered(self) -> bool:
        was = self.offline
        self.offline = False
        return was


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _find_runs(client, experiment_id: str, tag: str, value: str) -> list:
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time ASC"],
        max_results=50,
    )


# ---------------------------------------------------------------------------------------------------------------
# Parent run of a sweep


class SweepRun:
    """The sweep's parent run: found by tag on a re-run (no duplicates), created otherwise."""

    def __init__(self, info: TrackingInfo, warn: Callable[[str], None] | None = None):
        self.info = info
        self.conn = _Connection(info, warn, "sweep results")
        self.run_id: str | None = info.parent_run_id

    def open(
        self, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None, files: list[Path] = ()
    ) -> str | None:
        """Find or create the parent run; returns its id, or None when MLflow is unreachable."""
        try:
            client = self.conn.ensure()
            if self.run_id is None:
                runs = _find_runs(client, self.conn.experiment_id, TAG_ROLE, "sweep")
                runs = [r for r in runs if r.data.tags.get(TAG_SWEEP) == self.info.sweep]
                if runs:
                    self.run_id = runs[0].info.run_id
                else:
                    run = client.create_run(
                        self.conn.experiment_id,
                        run_name=self.info.sweep,
                        tags={TAG_ROLE: "sweep", TAG_SWEEP: self.info.sweep, **(tags or {})},
                    )
                    self.run_id = run.info.run_id
            run = client.get_run(self.run_id)
            if run.info.status != "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
            have = run.data.params
            todo = [(k, v) for k, v in _params(params or {}).items() if k not in have]
            _log_params(client, self.run_id, todo)
            for tag, value in (tags or {}).items():
                if run.data.tags.get(tag) != value:
                    client.set_tag(self.run_id, tag, value)
            for f in files:
                client.log_artifact(self.run_id, str(f))
            self.conn.recovered()
        except Exception as err:  # noqa: BLE001 - any store/network failure means "offline"
            self.conn.failed(err)
        self.info.parent_run_id = self.run_id
        return self.run_id

    def finish(
        self,
        metrics: dict[str, float],
        files: list[Path],
        status: str = "FINISHED",
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        folders: dict[str, Path] | None = None,
    ) -> bool:
        """Log the sweep summary (best metrics and values, best config YAML, plots, tables, the report folder
        under its artifact path) and close the parent run."""
        if self.run_id is None and self.open() is None:
            return False
        try:
            from mlflow.entities import Metric

            client = self.conn.ensure()
            have = client.get_run(self.run_id).data.params
            _log_params(client, self.run_id, [(k, v) for k, v in _params(params or {}).items() if k not in have])
            for artifact_path, folder in (folders or {}).items():
                if Path(folder).is_dir():
                    client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)
            now = int(time.time() * 1000)
            client.log_batch(
                self.run_id,
                metrics=[Metric(mlflow_metric(k), shown(v), now, 0) for k, v in finite_metrics(metrics).items()],
            )
            for f in files:
                if Path(f).is_file():
                    client.log_artifact(self.run_id, str(f))
            for tag, value in (tags or {}).items():
                client.set_tag(self.run_id, tag, value)
            client.set_terminated(self.run_id, status=status)
            self.conn.recovered()
            return True
        except Exception as err:  # noqa: BLE001
            self.conn.failed(err)
            return False


class StorePreparation:
    """MLflow made ready on a daemon thread while the caller does something else (the sweep driver: a local
    ``ray.init``): ``import mlflow`` for every store, and with ``open_store`` for a SQLite store also creating or
    migrating the file and finding or creating the experiment (MLflow keeps one store object per URI in the
    process, so the driver's own client later reuses it). ``wait()`` joins the thread and raises what failed
    there, in the caller's thread, as a one-line ``UserError``; nothing is swallowed."""

    def __init__(
        self, info: TrackingInfo, open_store: bool = True, work: Callable[[TrackingInfo, bool], None] | None = None
    ):
        self.info = info
        self.open_store = open_store
        self._work = work or _prepare
        self._error: BaseException | None = None
        self.seconds: float | None = None  # the thread's own time, once it ended
        # what the thread may create, noted before it starts, so that discard() removes only that
        self._new_paths = [p for p in _local_store_paths(info) if not p.exists()] if open_store else []
        configure_http_client()  # environment changes stay in the caller's thread
        self._thread = threading.Thread(target=self._run, name="wilson-ray-mlflow-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self._work(self.info, self.open_store)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread by wait()
            self._error = err
        finally:
            self.seconds = time.perf_counter() - t0

    def wait(self, timeout: float | None = None) -> float:
        """Wait for the thread (up to ``timeout`` s); returns its seconds, or raises ``UserError`` naming the
        store and the thread's error (type and first line)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise UserError(
                f"MLflow store {self.info.uri}: still not ready after {timeout:g} s, expected it to open in seconds "
                "(a locked or very slow SQLite file?); or run with --no-mlflow"
            )
        err = self._error
        if err is not None:
            self._error = None
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise UserError(
                f"MLflow store {self.info.uri}: could not be prepared ({type(err).__name__}: {reason}), expected "
                "a writable MLflow store (a SQLite file in a writable folder) or --no-mlflow"
            ) from err
        return self.seconds or 0.0

    def discard(self) -> None:
        """The sweep was refused after the thread started (e.g. a SQLite store on a cluster that turned out to
        have several nodes): wait for the thread, ignore its error, and remove the SQLite file and artifact
        folder it created (only those that did not exist before)."""
        self._thread.join()
        self._error = None
        for path in self._new_paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                if path.parent.name == ARTIFACT_ROOT and path.parent.is_dir() and not any(path.parent.iterdir()):
                    path.parent.rmdir()
            else:
                for extra in ("", "-journal", "-wal", "-shm"):
                    Path(f"{path}{extra}").unlink(missing_ok=True)


def _local_store_paths(info: TrackingInfo) -> list[Path]:
    """The SQLite file and the local artifact folder of ``info``'s store (those that are local paths)."""
    out = [Path(f)] if (f := sqlite_file(info.uri)) else []
    if info.artifact_location and urlparse(info.artifact_location).scheme == "file":
        out.append(Path(urlparse(info.artifact_location).path))
    return out


def _prepare(info: TrackingInfo, open_store: bool) -> None:
    import mlflow  # noqa: F401 - the import itself is most of the work for a server store

    if open_store and urlparse(info.uri).scheme.split("+")[0].lower() == "sqlite":
        # a local file: creating it and running MLflow's migrations takes seconds, and its failure is not a
        # server that may come back (server and database stores keep the one-warning offline path)
        _Connection(info, lambda msg: None).ensure()


def prepare_store(
    info: TrackingInfo, open_store: bool = True, work: Callable[[TrackingInfo, bool], None] | None = None
) -> StorePreparation:
    """Start preparing the MLflow store of ``info`` on a daemon thread (``StorePreparation``). ``open_store``
    False: only import mlflow (the caller has not yet checked that this process may write the SQLite file);
    ``work(info, open_store)`` replaces the preparation (tests)."""
    return StorePreparation(info, open_store, work)


VIEW_KEY = "wilson-ray"  # the experiment page's shared view: ?viewStateShareKey=wilson-ray


def share_view(info: TrackingInfo, parent_run_id: str | None, params: list[str], metrics: list[str]) -> str | None:
    """Store an experiment-page view in the experiment (MLflow UI's shared view state: the tag
    ``mlflow.sharedViewState.<key>``): the sweep's trials expanded under its run, with the swept params, the mIoU
    columns and the outcome as columns. Returns the experiment id (None when MLflow is unreachable)."""
    conn = _Connection(info, lambda msg: None)
    try:
        client = conn.ensure()
        cols = (
            [f"tags.`{TAG_SHOWN_OUTCOME}`"]
            + [f"metrics.`{mlflow_metric(m)}`" for m in metrics]
            + [f"params.`{p}`" for p in params]
        )
        state = {
            "selectedColumns": cols,
            "runsExpanded": {parent_run_id: True} if parent_run_id else {},
            # MLflow nests child runs under their parent only when the table is in start-time order (sorting by a
            # metric flattens it); the sweep's row carries its best trial's values, and a click sorts by any column
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
        }
        client.set_experiment_tag(conn.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))
        return conn.experiment_id
    except Exception:  # noqa: BLE001 - a convenience, never a failure
        return None


def _params(flat: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in flat.items():
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        out[metric_key(k)] = s[:6000]
    return out


def _log_params(client, run_id: str, items: list[tuple[str, str]]) -> None:
    from mlflow.entities import Param

    for chunk in _chunks(items, 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])


# ---------------------------------------------------------------------------------------------------------------
# Child run of a trial


def _amp_params(run: dict[str, Any]) -> dict[str, str]:
    """What ``run.amp`` (``auto`` included) resolves to on the hardware of the process that opens the run (the
    trial's rank-0 worker), and the capability that decided it: a reader sees which precision a trial trained in."""
    try:
        from wilson_ray import hardware
        from wilson_ray.runtime import resolve_device

        device = resolve_device(str(run.get("device", "auto")))
        requested = str(run.get("amp", "none"))
        resolved = hardware.resolve_amp(requested, device)
        return {"amp_resolved": resolved, "hardware": hardware.describe_amp_choice(requested, resolved, device)}
    except Exception:  # noqa: BLE001 - a label must never fail the upload of a trial's metrics
        return {}


# Not logged per epoch: ``epoch`` is the step itself (logged last, as the marker of a complete epoch) and
# ``iou_background`` is ``iou/background`` again (one name per series).
SKIP_METRICS = ("epoch", "iou_background")


def shown(value: float) -> float:
    """A metric's value as MLflow stores and shows it: 4 significant digits (mIoU 30.39, loss 0.1234, lr 0.00908).
    The runs table prints what it stores, and 16 digits of an mIoU are noise; the trial record keeps the exact
    values."""
    return float(f"{value:.4g}")


def trial_params(trial: dict[str, Any]) -> dict[str, Any]:
    """What a reader of the runs table needs: the swept values under short names, rounded (``alpha``), and
    exactly under their config keys (``config.method.alpha``), plus what the trial is (method, task, step,
    epochs, seed, precision). The full config is the run's ``config.yaml`` artifact."""
    from wilson_ray.sweep_record import rounded, short_names

    cfg = trial.get("config") or {}
    swept = trial.get("params") or {}
    names = short_names(list(swept))
    step = int(trial.get("step") or 0)
    optim = (cfg.get("incremental") if step > 0 else cfg.get("step0")) or {}
    out: dict[str, Any] = {names[k]: rounded(v) for k, v in swept.items()}
    out.update({f"config.{k}": v for k, v in swept.items()})
    out.update(
        {
            "config.method.name": (cfg.get("method") or {}).get("name"),
            "task": (cfg.get("data") or {}).get("task"),
            "step": step,
            "epochs": optim.get("epochs"),
            "iters_per_epoch": optim.get("max_iters_per_epoch"),
            "seed": (cfg.get("run") or {}).get("seed"),
            "trial_id": trial["trial_id"],
        }
    )
    out.update(_amp_params(cfg.get("run") or {}))
    return {k: v for k, v in out.items() if v is not None}


def _config_yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def _log_text(client, run_id: str, text: str, name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        client.log_artifact(run_id, str(path))


class TrialTracker:
    """Uploads a ``TrialRecord`` to its child run; ``sync()`` is cheap when nothing is new and safe to repeat."""

    def __init__(self, info: TrackingInfo, record: TrialRecord | str | Path, warn: Callable[[str], None] | None = None):
        self.info = info
        self.record = record if isinstance(record, TrialRecord) else TrialRecord(record)
        self.conn = _Connection(info, warn, "this trial's metrics")
        self.run_id: str | None = None
        self._logged_epochs: set[int] | None = None
        self._params_done = False
        self._final_done = False
        self._outcome_done: str | None = None

    # -- the run ---------------------------------------------------------------------------------------------
    def _run(self, client, trial: dict[str, Any]) -> str:
        if self.run_id is not None:
            return self.run_id
        trial_id = trial["trial_id"]
        run_id = self.record.run_id()
        if run_id is not None:
            try:
                run = client.get_run(run_id)
                if run.info.lifecycle_stage == "deleted" or run.data.tags.get(TAG_TRIAL) != trial_id:
                    run_id = None
            except Exception as err:  # noqa: BLE001
                if "RESOURCE_DOES_NOT_EXIST" not in str(err) and "not found" not in str(err).lower():
                    raise
                run_id = None
        if run_id is None:
            runs = [
                r
                for r in _find_runs(client, self.conn.experiment_id, TAG_TRIAL, trial_id)
                if r.data.tags.get(TAG_SWEEP) == self.info.sweep
            ]
            if runs:
                run_id = runs[0].info.run_id
            else:
                tags = {
                    TAG_TRIAL: trial_id,
                    TAG_SWEEP: self.info.sweep,
                    TAG_ROLE: "trial",
                    TAG_RUN_NAME: trial.get("trial_name") or trial_id,
                }
                if self.info.parent_run_id:
                    tags[TAG_PARENT] = self.info.parent_run_id
                confirm = trial.get("confirm")
                if confirm:  # a seed-confirmation trial: filterable by its configuration and seed
                    tags[TAG_ROLE] = "confirm"
                    tags[TAG_GROUP] = str(confirm.get("group"))
                    tags[TAG_SEED] = str(confirm.get("seed"))
                    if confirm.get("source_trial"):
                        tags[TAG_SOURCE] = str(confirm["source_trial"])
                started = trial.get("started")
                run_id = client.create_run(
                    self.conn.experiment_id,
                    run_name=tags[TAG_RUN_NAME],
                    tags=tags,
                    start_time=int(started * 1000) if started else None,
                ).info.run_id
            self.record.set_run_id(run_id)
        self.run_id = run_id
        return run_id

    def sync(self, force: bool = False, lock_timeout: float = 120.0) -> bool:
        """Upload what MLflow lacks (run, params, epochs, final artifacts, outcome). False when offline.

        Several processes may sync the same trial (its rank-0 worker, the sweep driver at the trial's end and
        at the sweep's end): a file lock in the record serialises them and each sync re-reads what the run
        already holds, so nothing is logged twice.
        """
        trial = self.record.trial()
        if trial is None:
            return True  # nothing to track yet
        if not force and not self.conn.may_try():
            return False
        with locked(self.record.dir / ".mlflow_sync.lock", lock_timeout) as held:
            if not held:
                return False
            try:
                client = self.conn.ensure()
                run_id = self._run(client, trial)
                run = client.get_run(run_id)
                if not self._params_done:
                    if self.info.parent_run_id and run.data.tags.get(TAG_PARENT) != self.info.parent_run_id:
                        client.set_tag(run_id, TAG_PARENT, self.info.parent_run_id)
                    params = trial_params(trial)
                    have = run.data.params
                    _log_params(client, run_id, [(k, v) for k, v in _params(params).items() if k not in have])
                    if "config.yaml" not in {a.path for a in client.list_artifacts(run_id)}:
                        _log_text(client, run_id, _config_yaml(trial.get("config") or {}), "config.yaml")
                    self._params_done = True
                    outcome = (self.record.outcome() or {}).get("outcome")
                    if outcome in (None, "running") and run.info.status != "RUNNING":
                        client.update_run(run_id, status="RUNNING")  # a restored trial continues its run
                self._logged_epochs = {int(m.step) for m in client.get_metric_history(run_id, "epoch")}
                self._final_done = run.data.tags.get(TAG_FINAL) == "1"
                # The outcome counts as uploaded only while the run's status agrees with its tag: a sync that
                # failed between the two, or a status set RUNNING since, is repaired by the next sync.
                done = run.data.tags.get(TAG_OUTCOME)
                agrees = done is not None and run.info.status == OUTCOME_STATUS.get(done, "FINISHED")
                self._outcome_done = done if agrees else None
                self._sync_epochs(client, run_id)
                self._sync_final(client, run_id)
                self._sync_outcome(client, run_id)
                self._sync_summary(client, run_id, run.data.tags)
                if self.conn.recovered():
                    _default_warn(
                        f"MLflow at {self.info.uri} is reachable again; trial {trial['trial_id']} is up to date"
                    )
                return True
            except Exception as err:  # noqa: BLE001 - any store/network failure means "offline"
                self.conn.failed(err)
                return False

    def set_tags(self, tags: dict[str, str]) -> bool:
        """Set ``tags`` on the trial's run (sweep-level facts known at the sweep's end, e.g. whether the trial is
        on the Pareto front); a tag the run holds with the same value is not set again. False when offline."""
        trial = self.record.trial()
        if trial is None:
            return False
        try:
            client = self.conn.ensure()
            run_id = self._run(client, trial)
            have = client.get_run(run_id).data.tags
            for tag, value in tags.items():
                if have.get(tag) != value:
                    client.set_tag(run_id, tag, value)
            return True
        except Exception as err:  # noqa: BLE001 - any store/network failure means "offline"
            self.conn.failed(err)
            return False

    def _sync_epochs(self, client, run_id: str) -> None:
        from mlflow.entities import Metric

        assert self._logged_epochs is not None
        for epoch, metrics in sorted(self.record.epochs().items()):
            if epoch in self._logged_epochs:
                continue
            ts = int(time.time() * 1000)
            items = [Metric(mlflow_metric(k), shown(v), ts, epoch) for k, v in metrics.items() if k not in SKIP_METRICS]
            items.append(Metric("epoch", float(epoch), ts, epoch))
            # One batch (MLflow's limit is 1000 metrics) is all-or-nothing; "epoch" goes last either way: it marks
            # the epoch as logged, so a partial upload is retried rather than skipped.
            for chunk in _chunks(items, 1000):
                client.log_batch(run_id, metrics=chunk)
            self._logged_epochs.add(epoch)

    def _sync_final(self, client, run_id: str) -> None:
        if self._final_done:
            return
        final = self.record.final()
        if not final:
            return
        # Artifacts only: the final metrics are the last epoch's, already in the per-epoch series (a `final/*`
        # copy would be a second, single-point name for the same series in MLflow's charts).
        folder = self.record.dir / "final"
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                client.log_artifact(run_id, str(f), artifact_path="final")
        client.set_tag(run_id, TAG_FINAL, "1")
        self._final_done = True

    def _sync_outcome(self, client, run_id: str) -> None:
        data = self.record.outcome()
        if not data:
            return
        outcome = data.get("outcome")
        if outcome == self._outcome_done:
            return
        status = OUTCOME_STATUS.get(outcome, "FINISHED")
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            ended = data.get("time")
            client.set_terminated(run_id, status=status, end_time=int(ended * 1000) if ended else None)
        if outcome == "stopped_early":
            client.set_tag(run_id, TAG_STOP, str(data.get("reason") or "stopped early by ASHA")[:5000])
            if data.get("rung") is not None:
                client.set_tag(run_id, TAG_RUNG, str(data["rung"]))
            client.set_tag(run_id, "mlflow.note.content", str(data.get("reason") or "stopped early by ASHA"))
        elif data.get("reason"):
            client.set_tag(run_id, TAG_REASON, str(data["reason"])[:5000])
            client.set_tag(run_id, "mlflow.note.content", f"failed: {data['reason']}"[:5000])
        client.set_tag(run_id, TAG_SHOWN_OUTCOME, shown_outcome(data))
        client.set_tag(run_id, TAG_OUTCOME, outcome)  # last: it marks the outcome as uploaded (see sync)
        self._outcome_done = outcome

    def _sync_summary(self, client, run_id: str, tags: dict[str, str]) -> None:
        """The figures the driver draws from the record when a trial ends (learning curves; per-class IoU of
        the last evaluation), so a trial ASHA stopped has artifacts too."""
        folder = self.record.dir / "summary"
        if tags.get(TAG_SUMMARY) == "1" or not (folder / "done").is_file():
            return
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name != "done":
                client.log_artifact(run_id, str(f), artifact_path="summary")
        client.set_tag(run_id, TAG_SUMMARY, "1")


class BackgroundSync:
    """Runs ``tracker.sync()`` on a daemon thread so a slow or hung tracking server never stalls training;
    ``request()`` after each epoch (requests coalesce), ``close()`` at the end makes a last forced sync."""

    def __init__(self, tracker: TrialTracker):
        self.tracker = tracker
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="wilson-ray-mlflow", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            closing = self._closing
            try:
                self.tracker.sync(force=closing)
            except Exception as err:  # noqa: BLE001 - never kill training from the tracking thread
                self.tracker.conn.failed(err)
            if closing:
                return

    def close(self, timeout: float = 60.0) -> bool:
        """Last sync (forced); True when the thread finished within ``timeout``."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


# ---------------------------------------------------------------------------------------------------------------
# Queries (tests, `wilson-ray best`, the sweep summary)


def sweep_runs(uri: str, experiment: str) -> list:
    """Every run of a sweep's experiment (parent first), via ``MlflowClient.search_runs``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=5000, order_by=["attributes.start_time ASC"])
    return sorted(runs, key=lambda r: r.data.tags.get(TAG_ROLE) != "sweep")
