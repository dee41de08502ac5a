"""The sweep driver: Ray Tune + Optuna (TPE / random / grid) + ASHA over one incremental step.

``run_sweep`` validates the request, starts or joins the cluster (``cluster``), trains the earlier steps once,
builds or restores the ``Tuner`` whose trials run ``trial.trial`` with the typed ``SweepSettings``, and writes
the summary. The sweep's other jobs live next to it: the trial function (``trial``), how trials ended
(``outcome``), the cluster checks (``cluster``), Ray/Optuna private-API shims (``compat``), the trial record
(``wilson_ray.sweep_record``).

Idempotent: ``run_sweep`` restores ``<storage>/<name>`` with ``Tuner.restore`` when it exists (finished trials are
kept, unfinished ones resume from their last epoch checkpoint, errored ones are resumed) and finishes what is left.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from wilson_ray.config import flatten
from wilson_ray.errors import UserError
from wilson_ray.orchestration import cluster
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.backends import (
    alive_nodes,
    check_shared_sqlite,
    optuna_storage_url,
    redact,
    storage_sharing,
)
from wilson_ray.orchestration.cluster import check_cluster, init_ray, trainer_kind
from wilson_ray.orchestration.compat import WilsonOptunaSearch
from wilson_ray.orchestration.confirm import CONFIG_KEY as CONFIRM_CONFIG_KEY
from wilson_ray.orchestration.confirm import FOLDER as CONFIRM_FOLDER
from wilson_ray.orchestration.confirm import existing_record, search_front, summarize_stage, table_lines
from wilson_ray.orchestration.console import ConsoleReporter, asha_rungs, fmt_params, plan_line
from wilson_ray.orchestration.kill_points import kill_point
from wilson_ray.orchestration.outcome import TrialOutcomeCallback
from wilson_ray.orchestration.search_space import SearchSpace
from wilson_ray.orchestration.settings import SweepSettings, TrialPlan
from wilson_ray.orchestration.trial import trial
from wilson_ray.phases import PhaseRecorder
from wilson_ray.sweep_record import TrialRecord, record_id, set_alias
from wilson_ray.tracking.mlflow_tracker import (
    TAG_PARETO,
    TAG_PARETO_TRIALS,
    VIEW_KEY,
    SweepRun,
    TrackingInfo,
    TrialTracker,
    check_tracking_uri,
    default_artifact_location,
    default_tracking_uri,
    is_local_store,
    prepare_store,
    share_view,
    ui_command,
    venv_command,
)
from wilson_ray.tracking.ui import dashboard_installed, install_hint

DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2}  # the trial function only waits on its TorchTrainer


@dataclass
class SweepOptions:
    space: SearchSpace
    storage: Path
    name: str | None = None
    num_samples: int | None = None
    workers_per_trial: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    tracking_uri: str | None = None
    tracking: bool = True
    optuna_storage: str | None = None  # SQLAlchemy URL of the Optuna study (default: sqlite in the sweep folder)
    trainer: str | None = None  # auto | torch | direct (default: the space's resources.trainer)
    address: str | None = None
    num_cpus: int | None = None  # logical CPUs of a local cluster (default: this machine's)
    extra: dict[str, Any] = field(default_factory=dict)  # --set / --data-root overrides
    verbose: int = 1
    seed: int | None = None
    # the driver's start phases (``wilson_ray.phases``): ``cmd_sweep`` passes the one it marked its own phases
    # in; run_sweep marks the rest and writes them to <sweep folder>/startup.json
    phases: PhaseRecorder | None = None


STARTUP_FILE = "startup.json"
# The phases of ``startup.json`` in order (the first three are marked by ``wilson-ray sweep``, ``cmd_sweep``):
STARTUP_PHASES = (
    "cli",  # process start -> the sweep command runs: interpreter, wilson_ray.cli, argument parsing
    "space",  # the search space read and validated: its base config resolved (imports torch and the methods)
    "driver_imports",  # the driver module: ray, ray.tune, Optuna's Tune searcher
    "ray_init",  # the local Ray cluster started (or joined); MLflow is prepared on a thread meanwhile
    "mlflow_store",  # the sweep record written, MLflow's store ready (waiting for the thread) and the parent run
    "previous_step",  # step t-1's checkpoint found in the cache (or trained)
    "tuner",  # the Optuna study, searcher, scheduler and Tuner built (or restored)
    "first_trial_start",  # Tune started the first trial (driver callback)
    # the first trial's first epoch result reached the driver (driver callback); a trial's last epoch is reported
    # after its final figures, so with 1-epoch trials this phase holds them too
    "first_epoch",
)
# ... and the phases after the trials, marked in the same file when the sweep ends normally:
END_PHASES = (
    "trials",  # Tune's fit returned: the last trial ended and Tune stopped its trial processes
    "confirmation",  # the seed confirmation stage (0 s for a sweep without ``confirm:``)
    "finish",  # the records synced, summary files, plots and report written, the MLflow parent run closed
    "ray_shutdown",  # the local Ray cluster stopped (0 s when the sweep joined a running cluster)
)


# startup.json path -> this driver process's recorder. Tune pickles a Tuner's callbacks into its experiment
# folder and a restored Tuner runs the unpickled ones, so the callback holds only the path and finds the recorder
# of the process that runs it here (a restored sweep records its own start, not the first run's).
_ACTIVE_PHASES: dict[str, PhaseRecorder] = {}


class StartupCallback(tune.Callback):
    """Marks the first trial's start and its first reported epoch in the driver's ``PhaseRecorder`` and
    rewrites ``startup.json`` after each. The time is the driver's when Tune hands it the event (what a user
    waits for), not the trial process's: no clock of another process is compared."""

    def __init__(self, path: Path):
        self.path = str(path)

    def _mark(self, name: str) -> None:
        phases = _ACTIVE_PHASES.get(self.path)
        if phases is not None and not phases.has(name):
            phases.mark(name)
            write_startup(phases, Path(self.path))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._mark("first_trial_start")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if int(result.get("epoch", 0) or 0) >= 1:
            self._mark("first_trial_start")  # a no-op after its start event
            self._mark("first_epoch")


def write_startup(phases: PhaseRecorder, path: Path) -> None:
    """``startup.json`` of the sweep (atomic); a failed write warns once on stderr, it never fails the sweep."""
    try:
        phases.write(path)
    except OSError as err:
        if not phases.notes.get("write_failed"):
            phases.note("write_failed", True)
            print(f"wilson-ray: warning: could not write {path}: {err}", file=sys.stderr)


@dataclass
class SweepOutcome:
    name: str
    path: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_yaml: Path | None
    tracking_uri: str | None
    restored: bool
    keys: list[str]
    metric: str
    mode: str
    interrupted: bool = False
    report: Path | None = None
    mlflow_view: str | None = None  # the experiment page with the trials' columns (MLflow's shared view)
    confirmation: dict[str, Any] | None = None  # the seed confirmation stage's summary (``confirm.summarize_stage``)


# ---------------------------------------------------------------------------------------------------------------
# The sweep


def _settings(
    opts: SweepOptions,
    name: str,
    sweep_path: Path,
    base_cfg,
    tracking: TrackingInfo | None,
    workers: int,
    cpus: float,
    gpus: float,
    trainer: str,
) -> SweepSettings:
    space = opts.space
    step = space.step
    epochs_key = "incremental.epochs" if step > 0 else "step0.epochs"
    epochs = base_cfg.optim(step).epochs
    for p in space.params:
        if p.key == epochs_key:
            epochs = int(p.high if p.distribution != "choice" else max(p.values))
    return SweepSettings(
        name=name,
        sweep_dir=str(sweep_path),
        step=step,
        base=base_cfg.to_dict(),
        space=space,
        workers=workers,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus,
        trainer=trainer,
        max_failures=space.max_failures,
        cache_dir=str(Path(opts.storage) / "step_cache"),
        tracking=tracking.to_dict() if tracking else None,
        epochs=epochs,
        worker_logs=opts.verbose < 2,
    )


def _shared_previous_step(space: SearchSpace, extra: dict[str, Any], base_cfg) -> bool:
    """True when no swept key changes the cache key of step ``space.step - 1`` (the usual case: loss weights
    and incremental LRs do not touch step 0), so every trial uses the driver's checkpoint."""
    from wilson_ray.step_key import step_key

    key = step_key(base_cfg, space.step - 1)
    probes = [
        {p.key: p.low for p in space.params if p.distribution != "choice"},
        {p.key: p.high for p in space.params if p.distribution != "choice"},
    ]
    probes += [{p.key: v} for p in space.params for v in p.values or []]
    return all(step_key(space.resolve(values, extra), space.step - 1) == key for values in probes if values)


def _absolute_paths(extra: dict[str, Any], base_cfg) -> dict[str, Any]:
    """Data/weights paths relative to the current folder become absolute (trials run elsewhere)."""
    out = dict(extra)
    for key, value in (("data.root", base_cfg.data.root), ("data.voc_root", base_cfg.data.voc_root)):
        if value and not Path(value).is_absolute():
            out[key] = str(Path(value).expanduser().resolve())
    pre = base_cfg.model.pretrained
    if pre and pre not in ("torchvision",):
        path = pre.split(":", 1)[1] if pre.startswith("iabn:") else pre
        if not Path(path).is_absolute() and Path(path).exists():
            out["model.pretrained"] = ("iabn:" if pre.startswith("iabn:") else "") + str(Path(path).resolve())
    return out


def run_sweep(opts: SweepOptions, log=print) -> SweepOutcome:
    phases = opts.phases if opts.phases is not None else PhaseRecorder()
    space = opts.space
    storage = R.check_storage(opts.storage)
    opts.storage = storage
    name = opts.name or space.name
    sweep_path = R.sweep_dir(storage, name)
    workers = opts.workers_per_trial or space.workers_per_trial
    cpus = opts.cpus_per_worker if opts.cpus_per_worker is not None else space.cpus_per_worker
    gpus = opts.gpus_per_worker if opts.gpus_per_worker is not None else space.gpus_per_worker
    num_samples = opts.num_samples or (space.grid_size() if space.sampler == "grid" else space.num_samples)
    if workers < 1:
        raise UserError(f"--workers-per-trial: {workers}, expected a positive integer")
    if gpus < 0 or cpus < 0:
        raise UserError("--gpus-per-worker/--cpus-per-worker: negative, expected >= 0")
    trainer = trainer_kind(opts.trainer or space.trainer, workers)  # bad flags fail before the cluster starts

    extra = dict(opts.extra)
    base_cfg = space.base_config(extra)
    extra = _absolute_paths(extra, base_cfg)
    base_cfg = space.base_config(extra)
    fingerprint = space.fingerprint(extra)
    previous = R.read_sweep(storage, name)
    if previous is not None and previous.get("fingerprint") != fingerprint:
        raise UserError(
            f"--name {name}: the sweep at {sweep_path} was made from a different search space or base "
            f"config (fingerprint {previous.get('fingerprint')} vs {fingerprint}); expected the same "
            "--space/--set/--data-root to resume it, or a new --name"
        )

    if previous is not None and previous.get("trainer", trainer) != trainer:
        # its trials' checkpoints live where the first run's trainer put them (Train's or Tune's storage)
        log(f"sweep {name}: resuming with --trainer {previous['trainer']} as it was started (not {trainer})")
        trainer = trainer_kind(previous["trainer"], workers)
    uri = None
    tracking = None
    if opts.tracking:
        uri = check_tracking_uri(opts.tracking_uri) if opts.tracking_uri else default_tracking_uri(storage)
        tracking = TrackingInfo(
            uri=uri,
            experiment=name,
            sweep=name,
            artifact_location=default_artifact_location(storage, name) if is_local_store(uri) else None,
        )

    if opts.verbose < 2:  # Tune's new console output prints its experiment banner even when silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cluster.VERBOSE = opts.verbose >= 2
    # MLflow's import and a new SQLite store's migrations (seconds) on a thread while ray.init starts the
    # cluster; its errors are raised here by store.wait(), before the parent run is opened
    # (the SQLite file only for a local cluster on local storage: check_shared_sqlite refuses it otherwise)
    local = not (opts.address or os.environ.get("RAY_ADDRESS")) and storage_sharing(storage, 1) is None
    store = prepare_store(tracking, open_store=local) if tracking is not None else None
    started = init_ray(opts.address, opts.num_cpus)
    phases.mark("ray_init")
    try:
        try:  # the checks that can refuse the sweep; a refused sweep leaves nothing, the store thread's file too
            concurrency = check_cluster(workers, cpus, gpus, num_samples)
            optuna_url = optuna_storage_url(opts.optuna_storage, sweep_path)
            check_shared_sqlite(storage, alive_nodes(), uri, optuna_url, log)  # no SQLite written from many nodes
        except UserError:
            if store is not None:
                store.discard()
            raise
        sweep_path.mkdir(parents=True, exist_ok=True)
        R.write_sweep(
            storage,
            name,
            {
                "name": name,
                "fingerprint": fingerprint,
                "space": str(space.path.resolve()),
                "step": space.step,
                "metric": space.metric,
                "mode": space.mode,
                "multi_objective": space.multi_objective,
                "keys": space.keys,
                "num_samples": num_samples,
                "workers_per_trial": workers,
                "cpus_per_worker": cpus,
                "gpus_per_worker": gpus,
                "trainer": trainer,
                "tracking_uri": uri and redact(uri),
                "optuna_storage": redact(optuna_url),
                "cache_dir": str(storage / "step_cache"),
                "created": (previous or {}).get("created", time.time()),
                "base": base_cfg.to_dict(),
                "defaults": space.defaults() if space.evaluate_defaults else None,
                "epochs": _settings(opts, name, sweep_path, base_cfg, None, workers, cpus, gpus, trainer).epochs,
                "rungs": _rungs_of(space, base_cfg),
                "confirm": dataclasses.asdict(space.confirm) if space.confirm else None,
            },
        )
        if tracking is not None:
            phases.note("mlflow_thread_s", round(store.wait(), 3))
            parent = SweepRun(tracking)
            parent.open(
                params=_parent_params(space, base_cfg, num_samples, workers),
                tags={"wilson_ray.space": str(space.path.resolve())},
                files=[space.path],
            )
            tracking.parent_run_id = parent.run_id
        phases.mark("mlflow_store")
        settings = _settings(opts, name, sweep_path, base_cfg, tracking, workers, cpus, gpus, trainer)

        log(
            plan_line(
                name,
                num_samples,
                workers,
                trainer,
                concurrency,
                settings.epochs,
                space.metric,
                _rungs(space, settings),
                str(sweep_path),
                uri,
                reduction_factor=space.scheduler.reduction_factor if space.scheduler else 2.0,
                multi_objective=space.multi_objective,
                confirm=space.confirm,
            )
        )
        # Earlier steps once, here (or on a TorchTrainer); trials then only read the cache.
        if space.step > 0:
            from wilson_ray.cache import previous_step_checkpoint

            t0 = time.time()
            n = space.resources.previous_step_workers
            trainer = _ddp_step_trainer(settings, n, log) if n > 1 else None
            ckpt = previous_step_checkpoint(base_cfg, space.step, settings.cache_dir, trainer=trainer)
            log(f"step {space.step - 1} checkpoint: {ckpt} ({time.time() - t0:.0f} s)")
            if _shared_previous_step(space, extra, base_cfg):
                settings = dataclasses.replace(settings, init_checkpoint=str(ckpt))
        phases.mark("previous_step")

        startup_path = sweep_path / STARTUP_FILE
        _ACTIVE_PHASES[str(startup_path)] = phases
        tuner, restored = _tuner(
            space,
            settings,
            sweep_path,
            storage,
            name,
            num_samples,
            concurrency,
            opts,
            extra_callbacks=[StartupCallback(startup_path)],
        )
        phases.mark("tuner")
        phases.note("restored", restored)
        phases.note("tracking", tracking is not None)
        write_startup(phases, startup_path)
        if restored:
            log(f"sweep {name}: resuming it (finished trials are kept, unfinished ones continue)")
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        phases.mark("trials")
        # again after fit: a restored Tuner copies the experiment folder (this sweep's folder) to its staging
        # folder at the start and back at the end, over the startup.json its own callback wrote meanwhile
        write_startup(phases, startup_path)
        if space.confirm is not None and not interrupted:
            interrupted = _run_confirmation(space, settings, sweep_path, storage, name, opts, log)
        phases.mark("confirmation")
        kill_point("before_summary")
        outcome = _finish(space, settings, storage, name, tracking, restored, interrupted, log, optuna_url)
        phases.mark("finish")
        return outcome
    finally:
        _ACTIVE_PHASES.pop(str(sweep_path / STARTUP_FILE), None)
        if started:
            ray.shutdown()
        if phases.has("finish"):  # the end phases are written for a sweep that ended normally
            phases.mark("ray_shutdown")
            write_startup(phases, sweep_path / STARTUP_FILE)


def _ddp_step_trainer(settings: SweepSettings, workers: int, log):
    """``cache.cached_step``'s trainer: an earlier step trained once on a ``workers``-worker Ray Train
    TorchTrainer (DDP, SyncBatchNorm; gloo on CPU), what a cluster user runs for a long step."""
    from wilson_ray.orchestration.train_loop import build_trainer

    def train(cfg, step: int, init, out_dir: Path) -> Path:
        folder = Path(settings.sweep_dir) / "earlier_steps" / f"step{step}"
        log(
            f"step {step}: training it once on a {workers}-worker Ray Train TorchTrainer (DDP); "
            f"log: {folder}/worker-0.log"
        )
        t0 = time.time()
        cfg.run.val_interval = 5  # the sweep's every-epoch evaluation is for ASHA; evaluation changes no weight
        plan = TrialPlan(
            trial_id=f"step{step}",
            step=step,
            config=cfg,
            trial_dir=str(folder),
            init_checkpoint=str(init) if init else None,
            worker_logs=settings.worker_logs,
        )
        build_trainer(
            plan,
            storage_path=Path(settings.sweep_dir) / "train",
            workers=workers,
            cpus_per_worker=1.0,
            gpus_per_worker=settings.gpus_per_worker,
            max_failures=1,
        ).fit()
        epochs = TrialRecord(folder).epochs()
        last = epochs[max(epochs)] if epochs else {}
        miou = ", ".join(f"{k[5:]} {last[k]:.1f}" for k in ("miou_old", "miou_all") if k in last)
        log(f"step {step}: {len(epochs)} epochs in {time.time() - t0:.0f} s ({miou})")
        return folder / "model" / f"step{step}.pt"

    return train


def _parent_params(space: SearchSpace, base_cfg, num_samples: int, workers: int) -> dict[str, Any]:
    """The sweep run's params: what was swept (``space.<name>`` = its distribution) and how; the best values
    come at the end (``best.<name>``), the whole base config is the ``base_config.yaml`` artifact."""
    from wilson_ray.sweep_record import short_names

    names = short_names(space.keys)
    flat = flatten(base_cfg.to_dict())
    return {
        **{f"space.{names[p.key]}": p.describe() for p in space.params},
        "method": base_cfg.method.name,
        "task": base_cfg.data.task,
        "step": space.step,
        "epochs": flat.get("incremental.epochs" if space.step > 0 else "step0.epochs"),
        "metric": space.metric,
        "mode": space.mode,
        "num_samples": num_samples,
        "workers_per_trial": workers,
    }


def _tuner(
    space: SearchSpace,
    settings: SweepSettings,
    sweep_path: Path,
    storage: Path,
    name: str,
    num_samples: int,
    concurrency: int,
    opts: SweepOptions,
    extra_callbacks: list | None = None,
):
    resources = DRIVER_RESOURCES
    callbacks = [TrialOutcomeCallback(settings), *(extra_callbacks or [])]
    if opts.verbose >= 1:
        callbacks.append(
            ConsoleReporter(
                space.keys, num_samples, settings.epochs, concurrency, space.metric, trials_dir=sweep_path / "trials"
            )
        )
    if settings.trainer == "direct":  # the trial process trains: it holds the one worker's reservation
        resources = {"CPU": settings.cpus_per_worker, "GPU": settings.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(trial, settings=settings), resources)
    if tune.Tuner.can_restore(str(sweep_path)):
        tuner = tune.Tuner.restore(str(sweep_path), trainable=trainable, resume_errored=True)
        return tuner, True
    import optuna

    db = optuna_storage_url(opts.optuna_storage, sweep_path)
    # a database server may restart during a long sweep: check pooled connections before use
    storage_obj = optuna.storages.RDBStorage(
        db, engine_kwargs=None if db.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:  # a study left by a run that died before Tune's first experiment checkpoint: start it over
        optuna.delete_study(study_name=name, storage=storage_obj)
    except KeyError:
        pass
    metrics = space.metrics()
    searcher = WilsonOptunaSearch(
        space=space.to_optuna(),
        metric=metrics if space.multi_objective else metrics[0],
        mode=["max"] * len(metrics) if space.multi_objective else space.mode,
        points_to_evaluate=[space.defaults()] if space.evaluate_defaults and space.sampler != "grid" else None,
        sampler=optuna_sampler(space, opts.seed),
        study_name=name,
        storage=storage_obj,
        record_dir=sweep_path / "trials",
        max_epochs=space.scheduler.max_t or settings.epochs if space.scheduler else None,
    )
    scheduler = None
    if space.scheduler:
        from wilson_ray.orchestration.compat import ExplainedASHA

        max_t = space.scheduler.max_t or settings.epochs
        scheduler = ExplainedASHA(
            trials_dir=sweep_path / "trials",
            time_attr="epoch",
            metric=space.metric,
            mode=space.mode,
            max_t=max_t,
            grace_period=min(space.scheduler.grace_period, max_t),
            reduction_factor=space.scheduler.reduction_factor,
        )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            reuse_actors=reuse_trial_processes(settings.trainer),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=1 if opts.verbose >= 2 else 0,
            # direct trials have no Train worker group: worker crashes land here too
            failure_config=tune.FailureConfig(
                max_failures=space.trial_max_failures + (settings.max_failures if settings.trainer == "direct" else 0)
            ),
            # a direct trial checkpoints every epoch into its Tune folder (model + optimiser state: ~0.35 GB
            # for ResNet-101); a restart needs only the newest, the one before covers a half-written one
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    return tuner, False


def _run_confirmation(
    space: SearchSpace, settings: SweepSettings, sweep_path: Path, storage: Path, name: str, opts: SweepOptions, log
) -> bool:
    """The seed confirmation stage (``confirm``): the chosen configurations x seeds as a second Tune experiment
    ``<sweep>/confirm`` of ordinary trials (no searcher, no early stopping), restored like the search. Returns
    True when interrupted."""
    from wilson_ray.orchestration import confirm as C

    folder = sweep_path / C.FOLDER
    csettings = dataclasses.replace(settings, sweep_dir=str(folder))
    restoring = tune.Tuner.can_restore(str(folder))
    points = C.plan_points(R.trial_rows(storage, name), space, int(settings.base["run"]["seed"]))
    if not points and not restoring:
        log("seed confirmation: no completed trial to confirm")
        return False
    concurrency = check_cluster(settings.workers, settings.cpus_per_worker, settings.gpus_per_worker, len(points))
    groups = list(dict.fromkeys(p["group"] for p in points))
    log(
        f"seed confirmation: {', '.join(groups)} x seeds {sorted({p['seed'] for p in points})} = {len(points)} "
        f"trials of {settings.epochs} epochs, up to {concurrency} at a time" + ("; resuming it" if restoring else "")
    )
    for g in groups:
        p = next(p for p in points if p["group"] == g)
        src = f"trial {p['source_trial']}" if p["source_trial"] else "the paper defaults"
        log(f"  {g}: {src}  {fmt_params(p['values'])}")
    callbacks: list = [TrialOutcomeCallback(csettings)]
    if opts.verbose >= 1:
        callbacks.append(
            ConsoleReporter(
                space.keys,
                len(points),
                settings.epochs,
                concurrency,
                space.metric,
                trials_dir=folder / "trials",
                values_of=lambda t: {
                    "config": t.config[C.CONFIG_KEY]["group"],
                    "seed": t.config[C.CONFIG_KEY]["seed"],
                },
            )
        )
    resources = DRIVER_RESOURCES
    if settings.trainer == "direct":
        resources = {"CPU": settings.cpus_per_worker, "GPU": settings.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(trial, settings=csettings), resources)
    if restoring:
        tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConfirmationSearcher(points, sweep_path),
                num_samples=len(points),
                max_concurrent_trials=concurrency,
                reuse_actors=reuse_trial_processes(settings.trainer),
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=C.FOLDER,
                storage_path=str(sweep_path),
                verbose=1 if opts.verbose >= 2 else 0,
                failure_config=tune.FailureConfig(
                    max_failures=space.trial_max_failures
                    + (settings.max_failures if settings.trainer == "direct" else 0)
                ),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
        )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    return False


class ConfirmationSearcher(Searcher):
    """Hands the confirmation points (``confirm.plan_points``) to Tune one per trial, in plan order, and makes each
    Tune trial continue the record an earlier driver's trial of the same point wrote (``confirm.existing_record``,
    ``sweep_record.set_alias``), so a (configuration, seed) keeps one record and one MLflow run.

    Why not ``tune.grid_search``: its trial ids are a random prefix drawn per Tuner and a counter. A driver killed
    before Tune's first experiment checkpoint of the stage (the trials already started, their records and MLflow
    runs open) leaves nothing to restore, so the next driver plans the stage again, and new ids meant new records
    and a second run per (configuration, seed). This searcher's state is saved with Tune's checkpoint, so a
    restored stage goes on from the points it had handed out; points handed out after that checkpoint are handed
    out again and find their records the same way. Public ``Searcher`` API only."""

    def __init__(self, points: list[dict[str, Any]], sweep_path: str | Path):
        super().__init__()
        self.points = list(points)
        self.sweep_path = str(sweep_path)
        self.handed_out = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next point as the trial's config (``confirm.CONFIG_KEY``), ``Searcher.FINISHED`` after the last."""
        if self.handed_out >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.handed_out]
        self.handed_out += 1
        earlier = existing_record(Path(self.sweep_path), point)
        if earlier is not None:  # written before Tune creates the trial: its trial function reads the alias
            set_alias(Path(self.sweep_path) / CONFIRM_FOLDER / "trials", trial_id, earlier)
        return {CONFIRM_CONFIG_KEY: point}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: the points are fixed (Tune's concurrency limiter calls it when a trial ends)."""

    def save(self, checkpoint_path: str) -> None:
        """The points and how many were handed out, as JSON (Tune saves it with its experiment checkpoint)."""
        from wilson_ray.atomic import atomic_write_text

        state = {"points": self.points, "sweep_path": self.sweep_path, "handed_out": self.handed_out}
        atomic_write_text(Path(checkpoint_path), json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        """The state ``save`` wrote."""
        state = json.loads(Path(checkpoint_path).read_text(encoding="utf-8"))
        self.points, self.sweep_path, self.handed_out = state["points"], state["sweep_path"], state["handed_out"]


def reuse_trial_processes(trainer: str) -> bool:
    """Whether Tune runs the next trial in a finished trial's process (``reuse_actors``): yes for direct trials,
    which then skip a process start and the imports of torch, the package and MLflow (seconds of CPU per trial
    on a small machine); no for TorchTrainer trials, where a reused trial process keeps running the TorchTrainer
    of a trial ASHA stopped, whose workers then hold the CPUs the next trial waits for (measured: the demo hung
    after its first early stop). ``WILSON_RAY_REUSE_ACTORS=0/1`` overrides both."""
    forced = os.environ.get("WILSON_RAY_REUSE_ACTORS")
    if forced in ("0", "1"):
        return forced == "1"
    return trainer == "direct"


def _rungs_of(space: SearchSpace, base_cfg) -> list[int]:
    return _rungs(
        space, _settings(SweepOptions(space=space, storage=Path(".")), "", Path("."), base_cfg, None, 1, 1, 0, "direct")
    )


def _rungs(space: SearchSpace, settings: SweepSettings) -> list[int]:
    if not space.scheduler:
        return []
    max_t = space.scheduler.max_t or settings.epochs
    return asha_rungs(min(space.scheduler.grace_period, max_t), space.scheduler.reduction_factor, max_t)


def trial_dirname(trial) -> str:
    """Short Tune trial folders (the default repeats every parameter value in the name)."""
    return f"trial_{trial.trial_id}"


def optuna_sampler(space: SearchSpace, seed: int | None):
    """Optuna sampler of ``search.sampler``: TPE (default), random, or the grid of ``SearchSpace.grid``."""
    import optuna

    seed = space.seed if seed is None else seed
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, space.num_samples // 3)))


def _finish(
    space: SearchSpace,
    settings: SweepSettings,
    storage: Path,
    name: str,
    tracking: TrackingInfo | None,
    restored: bool,
    interrupted: bool,
    log,
    optuna_url: str | None = None,
) -> SweepOutcome:
    from wilson_ray.atomic import atomic_write_text
    from wilson_ray.tracking import plots

    sweep_path = Path(settings.sweep_dir)
    _backfill_from_tune(sweep_path)
    if tracking is not None:
        if tracking.parent_run_id is None:  # MLflow was down when the sweep started
            tracking.parent_run_id = SweepRun(tracking).open()
    rows = R.trial_rows(storage, name)
    # a multi-objective sweep's answer is the old/new front, not one best trial: its members are tagged
    front = [r["trial"] for r in search_front(rows)] if space.multi_objective else None
    if tracking is not None:
        upload_records(tracking, storage, name, front)
    stage = summarize_stage(sweep_path, space.metric, space.mode) if space.confirm is not None else None
    best = R.best_row(rows, space.metric, space.mode)
    best_yaml = None
    files: list[Path] = []
    table_rows = [
        {
            "trial": r["trial"],
            **r["params"],
            **{
                k: r[k]
                for k in ("miou_old", "miou_new", "miou_all", "miou_all_mib", "miou_hm", "epochs", "outcome", "reason")
            },
        }
        for r in rows
    ]
    files.append(plots.write_table_csv(table_rows, sweep_path / "summary.csv"))
    files.append(
        atomic_write_text(
            sweep_path / "summary.json",
            json.dumps(
                {
                    "name": name,
                    "metric": space.metric,
                    "mode": space.mode,
                    "best": best and best["trial"],
                    "trials": table_rows,
                },
                indent=1,
                default=str,
            ),
        )
    )
    try:
        files.append(
            plots.sweep_summary_png(
                rows,
                space.metric,
                sweep_path / "summary.png",
                curves={r["trial"]: R.metric_curve(r, space.metric) for r in rows},
                mode=space.mode,
            )
        )
    except Exception as err:  # noqa: BLE001 - a plot must not fail a finished sweep
        log(f"wilson-ray: warning: sweep summary plot failed: {err}")
    if best is not None:
        best_yaml = atomic_write_text(sweep_path / "best.yaml", R.best_config_text(best, R.read_sweep(storage, name)))
        files.append(best_yaml)
    report = mlflow_view = None
    try:
        from wilson_ray.orchestration.report import build_report

        report = build_report(storage, name, optuna_storage=optuna_url)
    except Exception as err:  # noqa: BLE001 - a report must not fail a finished sweep
        log(f"wilson-ray: warning: the sweep report failed: {type(err).__name__}: {err}")
    if tracking is not None:
        parent = SweepRun(tracking)
        metrics = {
            f"best_{k}": best[k]
            for k in ("miou_old", "miou_new", "miou_all", "miou_all_mib", "miou_hm")
            if best and best.get(k) is not None
        }
        # the best trial's values also under the trials' own metric and param names, so the sweep's row in the
        # runs table shows what the sweep found instead of a row of dashes
        metrics.update(
            {k: best[k] for k in ("miou_old", "miou_new", "miou_all", "miou_hm") if best and _finite(best.get(k))}
        )
        metrics.update(_stage_metrics(stage))
        if front is not None:
            metrics["pareto_front_size"] = len(front)
        metrics["trials"] = len(rows)
        metrics["trials_failed"] = sum(r["outcome"] == "failed" for r in rows)
        metrics["trials_stopped"] = sum(r["outcome"] == "stopped_early" for r in rows)
        from wilson_ray.sweep_record import rounded, short_names

        names = short_names(space.keys)
        best_params = {f"best.{names[k]}": rounded(v) for k, v in (best or {}).get("params", {}).items()}
        best_params.update({names[k]: rounded(v) for k, v in (best or {}).get("params", {}).items()})
        if best:
            best_params["best.trial"] = best["trial"]
        done = parent.finish(
            metrics,
            files,
            status="KILLED" if interrupted else "FINISHED",
            tags=parent_tags(rows, best, space.metric, stage, front),
            params=best_params,
            folders={"report": report.parent} if report else None,
        )
        exp_id = share_view(
            tracking,
            tracking.parent_run_id,
            [names[k] for k in space.keys],
            list(dict.fromkeys([space.metric, "miou_old", "miou_new", "miou_all", "miou_hm"])),
        )
        if exp_id is not None:
            mlflow_view = (
                f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}"
                "&workflowType=machine_learning"
            )
        if not done:
            log(
                f"wilson-ray: warning: MLflow at {tracking.uri} unreachable at the end of the sweep; everything is "
                f"kept in {sweep_path}/trials and uploaded when the same sweep command runs again"
            )
    return SweepOutcome(
        name=name,
        path=sweep_path,
        rows=rows,
        best=best,
        best_yaml=best_yaml,
        tracking_uri=tracking.uri if tracking else None,
        restored=restored,
        keys=space.keys,
        metric=space.metric,
        mode=space.mode,
        interrupted=interrupted,
        report=report,
        mlflow_view=mlflow_view,
        confirmation=stage,
    )


def upload_records(tracking: TrackingInfo, storage: Path, name: str, front: list[str] | None = None) -> None:
    """Sync every trial record of the sweep and of its confirmation stage to MLflow (what the trials could not
    upload themselves). With ``front`` (a multi-objective sweep: the ids of ``confirm.search_front``) each search
    trial's run is tagged ``wilson_ray.pareto_front`` true or false."""
    sweep_path = R.sweep_dir(storage, name)
    search = R.records(storage, name)
    for i, rec in enumerate(search + R.records(sweep_path, CONFIRM_FOLDER)):
        tracker = TrialTracker(tracking, rec)
        tracker.sync(force=True)
        if front is not None and i < len(search):
            # "false" too: a trial that left the front since an earlier run of the sweep loses its mark
            tracker.set_tags({TAG_PARETO: "true" if rec.dir.name in front else "false"})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stage_metrics(stage: dict[str, Any] | None) -> dict[str, float]:
    """The confirmation stage on the sweep's run: ``confirm/<group>/<column>_{mean,std,low,high}`` and the
    one-sided p-value of each candidate against the default."""
    out: dict[str, float] = {}
    for g, s in ((stage or {}).get("groups") or {}).items():
        for col in dict.fromkeys([stage["metric"], "miou_old", "miou_new", "miou_all"]):
            for k in ("mean", "std", "low", "high"):
                if _finite(s[col].get(k)):
                    out[f"confirm/{g}/{col}_{k}"] = s[col][k]
        p = (s.get("vs_default") or {}).get("p")
        if _finite(p):
            out[f"confirm/{g}/p_vs_default"] = p
    return out


def parent_tags(
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    metric: str,
    stage: dict[str, Any] | None = None,
    front: list[str] | None = None,
) -> dict[str, str]:
    """The sweep run's tags: its best trial, a short outcome column, the confirmation's verdict, the old/new
    Pareto front's members (``front``: a multi-objective sweep) and a description for its page."""
    n = {o: sum(r["outcome"] == o for r in rows) for o in ("completed", "stopped_early", "failed")}
    note = (
        f"Sweep of {len(rows)} trials: {n['completed']} completed, {n['stopped_early']} stopped early by ASHA, "
        f"{n['failed']} failed. Its row shows the best trial's values."
    )
    tags = {"outcome": f"sweep: {len(rows)} trials", "mlflow.note.content": note}
    if best:
        tags["wilson_ray.best_trial"] = best["trial"]
        tags["mlflow.note.content"] += f" Best trial {best['trial']}: {metric} {best[metric]:.2f}."
    if front is not None:
        by_id = {r["trial"]: r for r in rows}
        members = ", ".join(f"{t} (old {by_id[t]['miou_old']:.2f}, new {by_id[t]['miou_new']:.2f})" for t in front)
        tags[TAG_PARETO_TRIALS] = ", ".join(front)[:5000] or "none"
        tags["mlflow.note.content"] += (
            f"\n\nPareto front of old vs new mIoU ({len(front)} completed trials no other beats on both; their runs "
            f"are tagged {TAG_PARETO}=true): {members or 'none'}."
        )
    if stage and stage.get("verdict"):
        tags["wilson_ray.verdict"] = stage["verdict"][:5000]
        tags["mlflow.note.content"] += (
            "\n\nSeed confirmation: " + stage["verdict"] + "\n\n" + "\n".join(["```", *table_lines(stage), "```"])
        )
    return tags


def _backfill_from_tune(sweep_path: Path) -> None:
    """Epochs Tune saw but the trial record lacks (a worker killed between its report and its record write)
    are written from Tune's per-trial ``result.json`` (losses and mIoU columns; per-class IoU only in records)."""
    for result_file in sweep_path.glob("*/result.json"):
        try:
            lines = result_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        by_trial: dict[str, dict[int, dict[str, float]]] = {}
        for line in lines:
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                continue
            tid, epoch = res.get("trial_id"), res.get("epoch")
            if not tid or not isinstance(epoch, (int, float)) or epoch < 1:
                continue
            keep = {
                k: v
                for k, v in res.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (
                    k.startswith("loss/")
                    or k in ("lr", "images_per_s", "epoch")
                    or (k.startswith("miou") and res.get("evaluated", 0) >= 1)
                    or (k == "iou_background" and res.get("evaluated", 0) >= 1)
                )
            }
            by_trial.setdefault(tid, {})[int(epoch)] = keep
        for tid, epochs in by_trial.items():
            rec = TrialRecord(sweep_path / "trials" / record_id(sweep_path / "trials", tid))
            if rec.trial() is None:
                continue
            have = rec.epochs()
            for epoch, metrics in epochs.items():
                if epoch not in have and all(math.isfinite(v) for v in metrics.values()):
                    rec.record_epoch(epoch, metrics)


def print_outcome(out: SweepOutcome, log=print) -> None:
    """The trials table, the best config and the commands to look at the results."""
    log("")
    log(
        f"sweep {out.name}: {len(out.rows)} trials ({sum(r['outcome'] == 'completed' for r in out.rows)} completed, "
        f"{sum(r['outcome'] == 'stopped_early' for r in out.rows)} stopped early by ASHA, "
        f"{sum(r['outcome'] == 'failed' for r in out.rows)} failed)"
        + ("; interrupted: run the same command again to resume" if out.interrupted else "")
    )
    log(R.format_table(out.rows, out.keys, out.best))
    sweep = R.read_sweep(out.path.parent, out.name) or {}
    if out.best is not None:
        from wilson_ray.orchestration.report import comparison

        cmp = comparison(out.rows, out.metric, out.mode, sweep.get("defaults"), out.confirmation)
        log("")
        if out.confirmation:
            log("seed confirmation (each cell: mean ± std over the seeds [95 % interval of the mean]; p: one-sided")
            log("Welch t-test against the default):")
            for line in table_lines(out.confirmation):
                log(f"  {line}")
        log(cmp["text"])
        log("")
        log(
            f"best trial {out.best['trial']} ({out.metric} = {out.best[out.metric]:.2f}; "
            f"old {out.best['miou_old']:.2f}, new {out.best['miou_new']:.2f}):"
        )
        from wilson_ray.sweep_record import rounded

        for k, v in out.best["params"].items():
            log(f"  {k} = {rounded(v)}")  # exact values: the best config below
        log(f"best config: {out.best_yaml}")
        log(
            f"reproduce:   {venv_command('wilson-ray')} train --config {out.best_yaml} "
            f"--cache-dir {sweep.get('cache_dir')}"
        )
    else:
        log("no trial has an evaluation yet")
    storage = out.path.parent.resolve()
    if out.tracking_uri and not out.tracking_uri.startswith(("http://", "https://")):
        log(
            f"look at it:  {venv_command('wilson-ray')} ui --storage {storage} --name {out.name}"
            "   # MLflow (+ optuna-dashboard) on 127.0.0.1; Ctrl-C stops them"
        )
    if out.tracking_uri:
        log(f"MLflow UI:   {ui_command(redact(out.tracking_uri))}")
        if out.mlflow_view:
            log(f"             then open {out.mlflow_view}")
    study = (R.read_sweep(out.path.parent, out.name) or {}).get("optuna_storage") or optuna_storage_url(None, out.path)
    if dashboard_installed():
        log(f"Optuna:      {venv_command('optuna-dashboard')} {study} --host 127.0.0.1")
    else:
        log(f"Optuna:      optuna-dashboard is not installed; to add it: {install_hint()}")
    if out.report is not None:
        log(f"report:      {out.report}")
