"""The Tune function trainable: one trial = one incremental step with the trial's swept values.

Train V2 pattern (stack.md): the trial function gets the trial's config, makes sure the earlier steps'
checkpoint is in the step cache, and runs a ``TorchTrainer`` named after the trial's record with
``TuneReportCallback`` (so Tune sees every epoch and a restored trial finds its own checkpoints), or, for
single-worker trials (``trainer == "direct"``), the step itself in this process (``train_loop.run_direct``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ray import tune

from wilson_ray.config import config_from_dict, set_dotted
from wilson_ray.orchestration.confirm import CONFIG_KEY
from wilson_ray.orchestration.kill_points import kill_point
from wilson_ray.orchestration.search_space import trial_overrides
from wilson_ray.orchestration.settings import SweepSettings, TrialPlan
from wilson_ray.orchestration.train_loop import to_log_file
from wilson_ray.sweep_record import TrialRecord, any_trial_ended, record_id
from wilson_ray.tracking.mlflow_tracker import TrackingInfo, TrialTracker


class TrialFailed(RuntimeError):
    """A trial that cannot succeed by retrying (non-finite loss): the reason is the message."""


def trial_config_dict(settings: SweepSettings, values: dict[str, Any]) -> dict[str, Any]:
    """The trial's full config as a dict: the resolved base with the swept leaves set by ``config.set_dotted``
    (what ``--set`` uses). A dict, not a ``Config``: the record (``trial.json``) stores it and the driver writes one
    for a trial that never started (``outcome``) without building a config; ``trial`` validates it once
    (``config_from_dict``)."""
    d = copy.deepcopy(settings.base)
    for k, v in values.items():
        set_dotted(d, k, v, source="search space")
    return d


def trial_values(settings: SweepSettings, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A Tune config's swept values (dotted keys) and, for a confirmation trial (``confirm.CONFIG_KEY``), its
    group, seed and source trial; the seed goes into the config as ``run.seed``."""
    point = config.get(CONFIG_KEY)
    if isinstance(point, dict):
        meta = {k: point.get(k) for k in ("group", "seed", "source_trial")}
        return dict(point["values"]), meta
    return trial_overrides(settings.space, config), None


def trial(config: dict[str, Any], settings: SweepSettings) -> None:
    """Tune function trainable: one trial = one TorchTrainer run of ``settings.step``, or with
    ``settings.trainer == 'direct'`` the step itself, in this process (see ``train_loop.run_direct``)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from wilson_ray.orchestration.train_loop import build_trainer, run_direct

    # A reused trial process (direct trials) waits this long for a stopped trial's thread to unwind before
    # starting the next trial in it (Tune's default, 2 s, turns a slow unwind into an errored trial). Read by
    # Tune in this process, so it holds on a remote cluster too.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    ctx = tune.get_context()
    trials_dir = settings.trials_dir
    # A Tune trial re-created for one the driver lost continues that trial's record, MLflow run and Train run
    trial_id, trial_name = record_id(trials_dir, ctx.get_trial_id()), ctx.get_trial_name()
    values, confirm = trial_values(settings, config)
    cfg_dict = trial_config_dict(settings, values if confirm is None else {**values, "run.seed": confirm["seed"]})
    if confirm is not None:  # the MLflow run's name says what it confirms
        trial_name = f"confirm-{confirm['group']}-seed{confirm['seed']}"
    record = TrialRecord(trials_dir / trial_id)
    if settings.worker_logs:
        to_log_file(record.dir / "trial.log")
    record.write_trial(trial_id, trial_name, values, cfg_dict, settings.step, settings.name, confirm=confirm)
    kill_point(
        "next_trial_start" if confirm is None else "confirm_trial_start", when=lambda: any_trial_ended(trials_dir)
    )
    reason = record.failure()
    if reason is not None:
        sync_record(settings, record)
        raise TrialFailed(reason)
    if (record.outcome() or {}).get("outcome") == "completed" and record.final():
        # Finished in an earlier run whose end Tune never saw (the driver died in between): report the final
        # result again instead of training again.
        tune.report(final_result(record))
        return
    if (record.outcome() or {}).get("outcome") not in (None, "running"):
        record.set_outcome("running")  # a resumed errored trial: its MLflow run is RUNNING again
    cfg = config_from_dict(cfg_dict, source=f"sweep {settings.name}, trial {trial_id}")  # the one resolution
    from wilson_ray.step_setup import old_class_names

    record.write_trial(
        trial_id,
        trial_name,
        values,
        cfg_dict,
        settings.step,
        settings.name,
        confirm=confirm,
        old_classes=old_class_names(cfg, settings.step),
    )
    init = settings.init_checkpoint
    if init is None and settings.step > 0:
        # The swept keys change the earlier steps (e.g. step >= 2): train/read them in the cache (file lock:
        # concurrent trials with the same key train it once).
        from wilson_ray.cache import previous_step_checkpoint

        init = str(previous_step_checkpoint(cfg, settings.step, settings.cache_dir))
    plan = TrialPlan(
        trial_id=trial_id,
        step=settings.step,
        config=cfg,
        trial_dir=str(record.dir),
        init_checkpoint=init,
        tracking=settings.tracking,
        cpus=settings.cpus_per_worker,
        worker_logs=settings.worker_logs,
    )
    try:
        if settings.trainer == "direct":
            run_direct(plan)
        else:
            build_trainer(
                plan,
                storage_path=Path(settings.sweep_dir) / "train",
                workers=settings.workers,
                cpus_per_worker=settings.cpus_per_worker,
                gpus_per_worker=settings.gpus_per_worker,
                max_failures=settings.max_failures,
                callbacks=[TuneReportCallback()],
            ).fit()
    except Exception:  # Train's errors wrap the worker's; Tune retries or reports it (TrialOutcomeCallback)
        reason = record.failure()
        if reason is not None:
            sync_record(settings, record)
            raise TrialFailed(reason) from None
        raise
    reason = record.failure()
    if reason is not None:
        sync_record(settings, record)
        raise TrialFailed(reason)


def final_result(record: TrialRecord) -> dict[str, float]:
    """The result Tune sees for a trial finished earlier: its last epoch's metrics with the final ones on top."""
    from wilson_ray.orchestration.train_loop import ray_metrics

    final = record.final() or {}
    epochs = record.epochs()
    last = epochs[max(epochs)] if epochs else {}
    metrics = {**last, **(final.get("metrics") or {})}
    metrics["epoch"] = float(final.get("epochs") or metrics.get("epoch") or 0)
    return ray_metrics(metrics, {})


def sync_record(settings: SweepSettings, record: TrialRecord) -> None:
    """Upload what MLflow lacks of ``record`` now (no-op without tracking)."""
    if settings.tracking:
        TrialTracker(TrackingInfo.from_dict(settings.tracking), record).sync(force=True)
