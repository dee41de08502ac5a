"""Ray Tune sweeps: Optuna (TPE) + ASHA over one incremental step, each trial a ``TorchTrainer`` run.

Train V2 pattern (stack.md): a Tune *function* trainable (``trial``, 0 CPUs) gets the trial's config,
makes sure the earlier steps' checkpoint is in the step cache, and runs a ``TorchTrainer`` named after the trial
id with ``TuneReportCallback``, so Tune sees every epoch and a restored trial finds its own checkpoints.

Idempotent: ``run_sweep`` restores ``<storage>/<name>`` with ``Tuner.restore`` when it exists (finished trials are
kept, unfinished ones resume from their last epoch checkpoint, errored ones are resumed) and finishes what is left.
"""

from __future__ import annotations

import copy
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
from ray.tune.search.optuna import OptunaSearch

from wilson_ray.config import config_from_dict, set_dotted
from wilson_ray.errors import UserError
from wilson_ray.ray import results as R
from wilson_ray.ray.search_space import SearchSpace, flatten, trial_overrides
from wilson_ray.tracking.mlflow_tracker import (
    SweepRun,
    TrackingInfo,
    TrialRecord,
    TrialTracker,
    check_tracking_uri,
    default_artifact_location,
    default_tracking_uri,
    is_local_store,
    ui_command,
)

DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2}  # the trial function only waits on its TorchTrainer


class TrialFailed(RuntimeError):
    """A trial that cannot succeed by retrying (non-finite loss): the reason is the message."""


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
    trainer: str | None = None  # auto | torch | direct (default: the space's resources.trainer)
    address: str | None = None
    num_cpus: int | None = None  # logical CPUs of a local cluster (default: this machine's)
    extra: dict[str, Any] = field(default_factory=dict)  # --set / --data-root overrides
    verbose: int = 1
    seed: int | None = None


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


# ---------------------------------------------------------------------------------------------------------------
# The trial


def trial_config_dict(settings: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The trial's full config as a dict: the resolved base with the swept leaves replaced. The driver
    validated the space (every bound resolves); the workers validate this dict again (``config_from_dict``),
    so the trial function itself need not import the core (and torch) just for that."""
    d = copy.deepcopy(settings["base"])
    for k, v in values.items():
        set_dotted(d, k, v, source="search space")
    return d


def trial_config(settings: dict[str, Any], values: dict[str, Any]):
    return config_from_dict(trial_config_dict(settings, values), source=f"sweep {settings['name']}")


def trial(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """Tune function trainable: one trial = one TorchTrainer run of ``settings['step']``, or with
    ``settings['trainer'] == 'direct'`` the step itself, in this process (see ``train_loop.run_direct``)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from wilson_ray.ray.train_loop import build_trainer, loop_config, run_direct

    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    values = {k: config[k] for k in settings["keys"] if k in config}
    for k, kind in settings["kinds"].items():
        if kind == "int" and k in values:
            values[k] = int(values[k])
    cfg_dict = trial_config_dict(settings, values)
    record = TrialRecord(Path(settings["sweep_dir"]) / "trials" / trial_id)
    record.write_trial(trial_id, trial_name, values, cfg_dict, settings["step"], settings["name"])
    reason = record.failure()
    if reason is not None:
        _sync(settings, record)
        raise TrialFailed(reason)
    if (record.outcome() or {}).get("outcome") == "completed" and record.final():
        # Finished in an earlier run whose end Tune never saw (the driver died in between): report the final
        # result again instead of training again.
        tune.report(_final_result(record))
        return
    if (record.outcome() or {}).get("outcome") not in (None, "running"):
        record.set_outcome("running")  # a resumed errored trial: its MLflow run is RUNNING again
    init = settings.get("init_checkpoint")
    if init is None and settings["step"] > 0:
        # The swept keys change the earlier steps (e.g. step >= 2): train/read them in the cache (file lock:
        # concurrent trials with the same key train it once).
        from wilson_ray.cache import previous_step_checkpoint

        init = previous_step_checkpoint(trial_config(settings, values), settings["step"], settings["cache_dir"])
    try:
        if settings["trainer"] == "direct":
            run_direct(loop_config(cfg_dict=cfg_dict, step=settings["step"], trial_id=trial_id,
                                   trial_dir=record.dir, init_checkpoint=init, tracking=settings.get("tracking"),
                                   cpus=settings["cpus_per_worker"]))
        else:
            build_trainer(
                cfg_dict=cfg_dict, step=settings["step"], trial_id=trial_id, trial_dir=record.dir,
                storage_path=Path(settings["sweep_dir"]) / "train", init_checkpoint=init,
                workers=settings["workers"], cpus_per_worker=settings["cpus_per_worker"],
                gpus_per_worker=settings["gpus_per_worker"], max_failures=settings["max_failures"],
                tracking=settings.get("tracking"), callbacks=[TuneReportCallback()],
            ).fit()
    except Exception:  # Train's errors wrap the worker's; Tune retries or reports it (TrialOutcomeCallback)
        reason = record.failure()
        if reason is not None:
            _sync(settings, record)
            raise TrialFailed(reason) from None
        raise
    reason = record.failure()
    if reason is not None:
        _sync(settings, record)
        raise TrialFailed(reason)


def _final_result(record: TrialRecord) -> dict[str, float]:
    from wilson_ray.ray.train_loop import ray_metrics

    final = record.final() or {}
    epochs = record.epochs()
    last = epochs[max(epochs)] if epochs else {}
    metrics = {**last, **(final.get("metrics") or {})}
    metrics["epoch"] = float(final.get("epochs") or metrics.get("epoch") or 0)
    return ray_metrics(metrics, {})


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "Type: message" line of a wrapped traceback
        if ":" in ln and not ln.startswith(("File ", "Traceback", "^")):
            return ln[:500]
    return (lines[-1] if lines else type(err).__name__)[:500]


def _sync(settings: dict[str, Any], record: TrialRecord) -> None:
    if settings.get("tracking"):
        TrialTracker(TrackingInfo.from_dict(settings["tracking"]), record).sync(force=True)


# ---------------------------------------------------------------------------------------------------------------
# Driver-side bookkeeping


class TrialOutcomeCallback(tune.Callback):
    """Records how each trial ended (completed / stopped early by ASHA / failed + reason) and syncs MLflow."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def _record(self, trial) -> TrialRecord:
        return TrialRecord(Path(self.settings["sweep_dir"]) / "trials" / trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self._record(trial)
        if rec.trial() is None:
            return
        epoch = float((trial.last_result or {}).get("epoch", 0) or 0)
        if rec.failure() is None:
            if rec.final() is not None:
                rec.set_outcome("completed")
            elif epoch < self.settings["epochs"]:
                rec.set_outcome("stopped_early", f"ASHA stopped it after epoch {int(epoch)}")
            else:
                rec.set_outcome("completed")
        _sync(self.settings, rec)

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._record(trial)
        if rec.trial() is None:
            values = {k: trial.config.get(k) for k in self.settings["keys"]}
            cfg = trial_config_dict(self.settings, values)
            rec.write_trial(trial.trial_id, str(trial), values, cfg, self.settings["step"], self.settings["name"])
        reason = rec.failure()
        if reason is None:
            err = None
            try:
                err = trial.get_error()
            except Exception:  # noqa: BLE001
                pass
            reason = _one_line(err) if err is not None else "trial errored"
        rec.set_outcome("failed", reason)
        _sync(self.settings, rec)


class WilsonOptunaSearch(OptunaSearch):
    """OptunaSearch that, after a restore, hands Optuna trials asked but never seen by Tune (the driver died
    between ``ask`` and the next experiment checkpoint) to the next new Tune trials, so the study keeps exactly
    one Optuna trial per Tune trial."""

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self._wr_orphans = None

    def _orphans(self) -> list:
        if getattr(self, "_wr_orphans", "none") is None:
            import optuna

            known = {t._trial_id for t in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            self._wr_orphans = [t for t in running if t._trial_id not in known]
        return getattr(self, "_wr_orphans", None) or []

    def suggest(self, trial_id: str):
        orphans = self._orphans()
        if trial_id not in self._ot_trials and orphans and not callable(self._space):
            import optuna
            from ray.tune.utils.util import unflatten_dict

            frozen = orphans.pop(0)
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            return unflatten_dict(dict(frozen.params))
        return super().suggest(trial_id)


# ---------------------------------------------------------------------------------------------------------------
# Cluster


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS, as under ``ray job submit``), else start a local cluster with
    the dashboard on 127.0.0.1 (stack.md: without it a stopped trial can leak its placement group).
    Returns True when this process started the cluster."""
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address or None, log_to_driver=True)
        except Exception as err:  # noqa: BLE001 - ConnectionError, auth errors, bad addresses ...
            text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            hint = (" (the cluster uses token authentication: export RAY_AUTH_MODE=token)"
                    if "auth" in (text + type(err).__name__).lower() else "")
            raise UserError(f"--address: cannot connect to the Ray cluster at {address or os.environ['RAY_ADDRESS']} "
                            f"({type(err).__name__}: {text}){hint}, expected a running cluster "
                            "(scripts/start_head.sh) or no --address for a local one") from None
        return False
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=True)
    return True


def check_cluster(workers: int, cpus_per_worker: float, gpus_per_worker: float, num_samples: int) -> int:
    """Refuse trials the cluster can never place (instead of pending forever); returns max concurrent trials."""
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    max_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    if gpus_per_worker > 0 and (need_gpu > gpus or gpus_per_worker > max_gpu):
        raise UserError(f"--gpus-per-worker {gpus_per_worker:g} x --workers-per-trial {workers}: a trial needs "
                        f"{need_gpu:g} GPUs (up to {gpus_per_worker:g} on one node), but the Ray cluster has "
                        f"{gpus:g} GPUs (at most {max_gpu:g} per node); expected fewer workers or "
                        "--gpus-per-worker 0")
    if need_cpu > cpus or cpus_per_worker > max_cpu:
        raise UserError(f"--workers-per-trial {workers} x {cpus_per_worker:g} CPUs: a trial needs {need_cpu:g} "
                        f"CPUs, but the Ray cluster has {cpus:g} (at most {max_cpu:g} per node); expected at most "
                        f"{int(cpus // max(cpus_per_worker, 1e-9))} workers per trial")
    limits = [num_samples]
    if need_cpu > 0:
        limits.append(int(cpus // need_cpu))
    if need_gpu > 0:
        limits.append(int(gpus // need_gpu))
    return max(1, min(limits))


# ---------------------------------------------------------------------------------------------------------------
# The sweep


def trainer_kind(requested: str, workers: int) -> str:
    """``torch`` (a TorchTrainer per trial) or ``direct`` (the step in the trial's own process): ``auto`` is
    direct for single-worker trials, where a worker group only adds start-up and per-epoch report cost."""
    if requested == "direct" and workers > 1:
        raise UserError(f"--trainer direct: runs a trial in one process, but --workers-per-trial is {workers}; "
                        "expected --workers-per-trial 1 or --trainer torch/auto")
    if requested == "auto":
        return "direct" if workers == 1 else "torch"
    return requested


def _settings(opts: SweepOptions, name: str, sweep_path: Path, base_cfg, tracking: TrackingInfo | None,
              workers: int, cpus: float, gpus: float, trainer: str) -> dict[str, Any]:
    space = opts.space
    step = space.step
    epochs_key = "incremental.epochs" if step > 0 else "step0.epochs"
    epochs = base_cfg.optim(step).epochs
    for p in space.params:
        if p.key == epochs_key:
            epochs = int(p.high if p.distribution != "choice" else max(p.values))
    return {
        "name": name, "sweep_dir": str(sweep_path), "step": step, "base": base_cfg.to_dict(),
        "keys": space.keys, "kinds": {p.key: p.distribution for p in space.params},
        "workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus, "trainer": trainer,
        "max_failures": space.max_failures, "cache_dir": str(Path(opts.storage) / "step_cache"),
        "tracking": tracking.to_dict() if tracking else None, "epochs": epochs,
    }


def _shared_previous_step(space: SearchSpace, extra: dict[str, Any], base_cfg) -> bool:
    """True when no swept key changes the cache key of step ``space.step - 1`` (the usual case: loss weights
    and incremental LRs do not touch step 0), so every trial uses the driver's checkpoint."""
    from wilson_ray.cache import step_key

    key = step_key(base_cfg, space.step - 1)
    probes = [{p.key: p.low for p in space.params if p.distribution != "choice"},
              {p.key: p.high for p in space.params if p.distribution != "choice"}]
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
            out["model.pretrained"] = (("iabn:" if pre.startswith("iabn:") else "") + str(Path(path).resolve()))
    return out


def run_sweep(opts: SweepOptions, log=print) -> SweepOutcome:
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
        raise UserError(f"--name {name}: the sweep at {sweep_path} was made from a different search space or base "
                        f"config (fingerprint {previous.get('fingerprint')} vs {fingerprint}); expected the same "
                        "--space/--set/--data-root to resume it, or a new --name")

    if previous is not None and previous.get("trainer", trainer) != trainer:
        # its trials' checkpoints live where the first run's trainer put them (Train's or Tune's storage)
        log(f"sweep {name}: resuming with --trainer {previous['trainer']} as it was started (not {trainer})")
        trainer = trainer_kind(previous["trainer"], workers)
    uri = None
    tracking = None
    if opts.tracking:
        uri = check_tracking_uri(opts.tracking_uri) if opts.tracking_uri else default_tracking_uri(storage)
        tracking = TrackingInfo(uri=uri, experiment=name, sweep=name,
                                artifact_location=default_artifact_location(storage, name) if is_local_store(uri)
                                else None)

    started = init_ray(opts.address, opts.num_cpus)
    try:
        concurrency = check_cluster(workers, cpus, gpus, num_samples)
        sweep_path.mkdir(parents=True, exist_ok=True)
        R.write_sweep(storage, name, {
            "name": name, "fingerprint": fingerprint, "space": str(space.path.resolve()), "step": space.step,
            "metric": space.metric, "mode": space.mode, "multi_objective": space.multi_objective,
            "keys": space.keys, "num_samples": num_samples, "workers_per_trial": workers,
            "cpus_per_worker": cpus, "gpus_per_worker": gpus, "trainer": trainer, "tracking_uri": uri,
            "cache_dir": str(storage / "step_cache"), "created": (previous or {}).get("created", time.time()),
            "base": base_cfg.to_dict(),
        })
        if tracking is not None:
            parent = SweepRun(tracking)
            parent.open(params={**{f"config.{k}": v for k, v in flatten(base_cfg.to_dict()).items()},
                                "step": space.step, "metric": space.metric, "mode": space.mode,
                                "num_samples": num_samples, "workers_per_trial": workers,
                                **{f"space.{p.key}": p.describe() for p in space.params}},
                        tags={"wilson_ray.space": str(space.path.resolve())}, files=[space.path])
            tracking.parent_run_id = parent.run_id
        settings = _settings(opts, name, sweep_path, base_cfg, tracking, workers, cpus, gpus, trainer)

        # Earlier steps once, here, with all the driver's cores; trials then only read the cache.
        if space.step > 0:
            from wilson_ray.cache import previous_step_checkpoint

            t0 = time.time()
            ckpt = previous_step_checkpoint(base_cfg, space.step, settings["cache_dir"])
            log(f"step {space.step - 1} checkpoint: {ckpt} ({time.time() - t0:.0f} s)")
            if _shared_previous_step(space, extra, base_cfg):
                settings["init_checkpoint"] = str(ckpt)

        tuner, restored = _tuner(space, settings, sweep_path, storage, name, num_samples, concurrency, opts)
        log(f"sweep {name}: {'resuming' if restored else 'starting'} {num_samples} trials, {workers} worker(s) "
            f"per trial ({'TorchTrainer' if trainer == 'torch' else 'in the trial process'}), up to {concurrency} "
            f"at a time; storage {sweep_path}")
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        return _finish(space, settings, storage, name, tracking, restored, interrupted, log)
    finally:
        if started:
            ray.shutdown()


def _tuner(space: SearchSpace, settings: dict[str, Any], sweep_path: Path, storage: Path, name: str,
           num_samples: int, concurrency: int, opts: SweepOptions):
    resources = DRIVER_RESOURCES
    if settings["trainer"] == "direct":  # the trial process trains: it holds the one worker's reservation
        resources = {"CPU": settings["cpus_per_worker"], "GPU": settings["gpus_per_worker"]}
    trainable = tune.with_resources(tune.with_parameters(trial, settings=settings), resources)
    if tune.Tuner.can_restore(str(sweep_path)):
        tuner = tune.Tuner.restore(str(sweep_path), trainable=trainable, resume_errored=True)
        return tuner, True
    import optuna

    db = f"sqlite:///{sweep_path / 'optuna.db'}"
    storage_obj = optuna.storages.RDBStorage(db)
    try:  # a study left by a run that died before Tune's first experiment checkpoint: start it over
        optuna.delete_study(study_name=name, storage=storage_obj)
    except KeyError:
        pass
    metrics = space.metrics()
    searcher = WilsonOptunaSearch(
        space=space.to_optuna(), metric=metrics if space.multi_objective else metrics[0],
        mode=["max"] * len(metrics) if space.multi_objective else space.mode,
        points_to_evaluate=[space.defaults()] if space.evaluate_defaults and space.sampler != "grid" else None,
        sampler=_sampler(space, opts.seed), study_name=name, storage=storage_obj,
    )
    scheduler = None
    if space.scheduler:
        from ray.tune.schedulers import ASHAScheduler

        max_t = space.scheduler.get("max_t") or settings["epochs"]
        scheduler = ASHAScheduler(time_attr="epoch", metric=space.metric, mode=space.mode, max_t=max_t,
                                  grace_period=min(space.scheduler["grace_period"], max_t),
                                  reduction_factor=space.scheduler["reduction_factor"])
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=concurrency,
                                    # a reused trial process keeps running the TorchTrainer of a trial ASHA
                                    # stopped, whose workers then hold the CPUs the next trial waits for
                                    # (measured: the demo hung after its first early stop)
                                    reuse_actors=os.environ.get("WILSON_RAY_REUSE_ACTORS", "0") == "1",
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=opts.verbose,
            # direct trials have no Train worker group: worker crashes land here too
            failure_config=tune.FailureConfig(max_failures=space.trial_max_failures + (
                settings["max_failures"] if settings["trainer"] == "direct" else 0)),
            callbacks=[TrialOutcomeCallback(settings)],
        ),
    )
    return tuner, False


def trial_dirname(trial) -> str:
    """Short Tune trial folders (the default repeats every parameter value in the name)."""
    return f"trial_{trial.trial_id}"


def _sampler(space: SearchSpace, seed: int | None):
    """Optuna sampler of ``search.sampler``: TPE (default), random, or the grid of ``SearchSpace.grid``."""
    import optuna

    seed = space.seed if seed is None else seed
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, space.num_samples // 3)))


def _finish(space: SearchSpace, settings: dict[str, Any], storage: Path, name: str, tracking: TrackingInfo | None,
            restored: bool, interrupted: bool, log) -> SweepOutcome:
    from wilson_ray.atomic import atomic_write_text
    from wilson_ray.tracking import plots

    sweep_path = Path(settings["sweep_dir"])
    _backfill_from_tune(sweep_path, settings)
    if tracking is not None:
        if tracking.parent_run_id is None:  # MLflow was down when the sweep started
            tracking.parent_run_id = SweepRun(tracking).open()
        for rec in R.records(storage, name):
            TrialTracker(tracking, rec).sync(force=True)
    rows = R.trial_rows(storage, name)
    best = R.best_row(rows, space.metric, space.mode)
    best_yaml = None
    files: list[Path] = []
    table_rows = [{"trial": r["trial"], **r["params"], **{k: r[k] for k in ("miou_old", "miou_new", "miou_all",
                  "miou_all_mib", "epochs", "outcome", "reason")}} for r in rows]
    files.append(plots.write_table_csv(table_rows, sweep_path / "summary.csv"))
    files.append(atomic_write_text(sweep_path / "summary.json", json.dumps(
        {"name": name, "metric": space.metric, "mode": space.mode, "best": best and best["trial"],
         "trials": table_rows}, indent=1, default=str)))
    try:
        files.append(plots.sweep_summary_png(rows, space.metric, sweep_path / "summary.png",
                                             curves={r["trial"]: list(r["_curve"].items()) for r in rows}))
    except Exception as err:  # noqa: BLE001 - a plot must not fail a finished sweep
        log(f"wilson-ray: warning: sweep summary plot failed: {err}")
    if best is not None:
        best_yaml = atomic_write_text(sweep_path / "best.yaml", R.best_config_text(best, R.read_sweep(storage, name)))
        files.append(best_yaml)
    if tracking is not None:
        parent = SweepRun(tracking)
        metrics = {f"best_{k}": best[k] for k in ("miou_old", "miou_new", "miou_all", "miou_all_mib")
                   if best and best.get(k) is not None}
        metrics["trials"] = len(rows)
        metrics["trials_failed"] = sum(r["outcome"] == "failed" for r in rows)
        done = parent.finish(metrics, files, status="KILLED" if interrupted else "FINISHED",
                             tags={"wilson_ray.best_trial": best["trial"]} if best else None)
        if not done:
            log(f"wilson-ray: warning: MLflow at {tracking.uri} unreachable at the end of the sweep; everything is "
                f"kept in {sweep_path}/trials and uploaded when the same sweep command runs again")
    return SweepOutcome(name=name, path=sweep_path, rows=rows, best=best, best_yaml=best_yaml,
                        tracking_uri=tracking.uri if tracking else None, restored=restored, keys=space.keys,
                        metric=space.metric, mode=space.mode, interrupted=interrupted)


def _backfill_from_tune(sweep_path: Path, settings: dict[str, Any]) -> None:
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
            keep = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and (k.startswith("loss/") or k in ("lr", "images_per_s", "epoch") or
                         (k.startswith("miou") and res.get("evaluated", 0) >= 1) or
                         (k == "iou_background" and res.get("evaluated", 0) >= 1))}
            by_trial.setdefault(tid, {})[int(epoch)] = keep
        for tid, epochs in by_trial.items():
            rec = TrialRecord(sweep_path / "trials" / tid)
            if rec.trial() is None:
                continue
            have = rec.epochs()
            for epoch, metrics in epochs.items():
                if epoch not in have and all(math.isfinite(v) for v in metrics.values()):
                    rec.record_epoch(epoch, metrics)


def print_outcome(out: SweepOutcome, log=print) -> None:
    """The trials table, the best config and the commands to look at the results."""
    log("")
    log(f"sweep {out.name}: {len(out.rows)} trials ({sum(r['outcome'] == 'completed' for r in out.rows)} completed, "
        f"{sum(r['outcome'] == 'stopped_early' for r in out.rows)} stopped early by ASHA, "
        f"{sum(r['outcome'] == 'failed' for r in out.rows)} failed)"
        + ("; interrupted: run the same command again to resume" if out.interrupted else ""))
    log(R.format_table(out.rows, out.keys, out.best))
    if out.best is not None:
        log("")
        log(f"best trial {out.best['trial']} ({out.metric} = {out.best[out.metric]:.2f}; "
            f"old {out.best['miou_old']:.2f}, new {out.best['miou_new']:.2f}):")
        for k, v in out.best["params"].items():
            log(f"  {k} = {v}")
        log(f"best config: {out.best_yaml}")
        sweep = R.read_sweep(out.path.parent, out.name) or {}
        log(f"reproduce:   wilson-ray train --config {out.best_yaml} --cache-dir {sweep.get('cache_dir')}")
    else:
        log("no trial has an evaluation yet")
    if out.tracking_uri:
        log(f"MLflow UI:   {ui_command(out.tracking_uri)}")
    log(f"Optuna:      optuna-dashboard sqlite:///{out.path / 'optuna.db'}")
