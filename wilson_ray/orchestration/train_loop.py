"""Ray Train: one incremental step of the core engine on N ``TorchTrainer`` workers.

``train_loop_per_worker(config)`` runs on every worker. Ray Train has already initialised ``torch.distributed``
(gloo on CPU, nccl on GPU), so ``engine.train_step`` shards the data with DistributedSampler, wraps the model in
DDP with SyncBatchNorm and all-reduces the confusion matrices (mIoU over the whole val set). Per epoch, every rank
calls ``ray.train.report`` (a barrier); rank 0 attaches the training state written by the engine's
``save_state`` as the checkpoint, records the epoch in the trial record and syncs it to MLflow. A restarted
worker group (``FailureConfig(max_failures)``) resumes from ``ray.train.get_checkpoint()``.

``build_trainer(...)`` makes the ``TorchTrainer`` for one trial (used by the Tune driver, or alone).

``run_direct(config)`` runs the same step in the calling Tune trial's own process instead (single-worker trials,
``resources.trainer: direct``): the same callback reports through ``ray.tune.report`` and resumes from
``ray.tune.get_checkpoint()``, so Tune's ``FailureConfig`` restarts a crashed trial from its last epoch.
A TorchTrainer with one worker adds a controller actor, a worker actor, a placement group and a process
group to every trial and a report round trip to every epoch, and buys nothing a single process needs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from wilson_ray.orchestration.kill_points import kill_point
from wilson_ray.orchestration.settings import TrialPlan

STATE_META = "wilson_ray_state.json"
MIOU_KEYS = ("miou_old", "miou_new", "miou_all", "miou_all_mib", "miou_hm", "iou_background")

# Ray Train V2 controller settings that cut per-trial overhead on a small machine (measured: a trivial 2-worker
# run 25 s -> 18 s). They travel from the process that builds the trainer to the controller and workers.
TRAIN_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",  # default 2 s: each report and the end wait for a poll
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one more actor per trial; no pre-emptible nodes here
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def apply_train_env() -> None:
    for k, v in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def ray_metrics(metrics: dict[str, float], last_eval: dict[str, float]) -> dict[str, float]:
    """The scalars Tune sees each epoch: losses, lr, images/s and the mIoU columns.

    On epochs without evaluation the mIoU columns repeat the last evaluation (0 before the first), so every
    result carries the objective (Tune requires it; ASHA compares trials at its rungs) and ``evaluated`` says
    whether the values are fresh.
    """
    fresh = "miou_all" in metrics
    if fresh:
        last_eval.clear()
        last_eval.update({k: float(metrics[k]) for k in MIOU_KEYS if k in metrics})
    # Order matters: Tune's progress table shows the first few metrics (epoch, mIoU all/old/new).
    out: dict[str, float] = {"epoch": float(metrics.get("epoch", 0))}
    for k in MIOU_KEYS:
        v = last_eval.get(k, 0.0)
        out[k] = v if math.isfinite(v) else 0.0
    for k, v in metrics.items():
        if k in out or k.startswith("iou/") or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        out[k] = float(v)
    out["evaluated"] = 1.0 if fresh else 0.0
    return out


class RayReportCallback:
    """engine Callback: report each epoch to Ray Train (+ checkpoint from rank 0) and to the trial record.

    The final epoch is reported only at ``on_step_end``, after rank 0 has written the final artifacts, so a
    scheduler decision on the last result (ASHA stops trials at max_t) cannot cut them off.
    """

    def __init__(self, rank: int, total_epochs: int, record=None, tracker=None, final_artifacts=None, report=None):
        self.rank = rank
        self.report = report or _train_report
        self.total_epochs = total_epochs
        self.record = record
        self.tracker = tracker
        self.final_artifacts = final_artifacts
        self.last_eval: dict[str, float] = {}
        self._pending: tuple[dict[str, float], str] | None = None

    # engine.Callback interface
    def on_epoch_end(self, epoch, metrics, save_state) -> None:
        tmp = tempfile.mkdtemp(prefix=f"wilson-ray-e{epoch:04d}-")
        state = save_state(Path(tmp))
        if self.rank == 0:
            Path(tmp, STATE_META).write_text(json.dumps({"state_file": Path(state).name, "epoch": epoch}))
            if self.record is not None:
                self.record.record_epoch(epoch, metrics)  # before the report: see mlflow_tracker docstring
        m = ray_metrics(metrics, self.last_eval)
        if epoch >= self.total_epochs:
            self._pending = (m, tmp)
            return
        self._report(m, tmp)
        if self.rank == 0:
            kill_point("mid_epoch")

    def on_step_end(self, result) -> None:
        if self.rank == 0 and self.final_artifacts is not None:
            try:
                self.final_artifacts(result)
            except Exception:  # noqa: BLE001 - figures must not fail a trained trial
                print("wilson-ray: warning: final artifacts failed:\n" + traceback.format_exc(), file=sys.stderr)
        if self._pending is not None:
            m, tmp = self._pending
            self._pending = None
            self._report(m, tmp)

    def _report(self, metrics: dict[str, float], tmp: str) -> None:
        try:
            self.report(metrics, tmp if self.rank == 0 else None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.tracker is not None:
            self.tracker.request()


def _train_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    import ray.train

    ray.train.report(
        metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    )


def _tune_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def write_final_artifacts(record, result, cfg, step: int) -> None:
    """Per-class IoU (json/csv + bar chart), confusion matrix (npy/csv/png), overlays, final.json (rank 0)."""
    from wilson_ray.atomic import atomic_write_text
    from wilson_ray.tracking import plots

    final = record.dir / "final"
    final.mkdir(parents=True, exist_ok=True)
    try:
        from wilson_ray.step_setup import new_class_names

        new = new_class_names(cfg, step, result.class_names)
    except Exception:  # noqa: BLE001 - a figure's labels must not fail the trial
        new = []
    plots.write_per_class(result.per_class_iou, final)
    plots.iou_bar_png(
        result.per_class_iou,
        final / "iou_bar.png",
        new_classes=new,
        title=f"per-class IoU, task {cfg.data.task} step {step} ({cfg.method.name})",
    )
    plots.write_confusion(result.confusion, result.class_names, final)
    plots.confusion_png(result.confusion, result.class_names, final / "confusion.png")
    if result.checkpoint is not None and Path(result.checkpoint).is_file():
        try:
            plots.overlays_png(result.checkpoint, final / "overlays.png", n=4, weak=_figure_panels(result))
        except Exception:  # noqa: BLE001
            print("wilson-ray: warning: prediction overlays failed:\n" + traceback.format_exc(), file=sys.stderr)
    data = {
        "metrics": {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "per_class_iou": result.per_class_iou,
        "epochs": result.epochs,
        "step": result.step,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        # the driver colours its summary bar chart with these instead of rebuilding the config (outcome.py)
        "new_classes": new,
    }
    atomic_write_text(final / "final.json", json.dumps(data, indent=1, default=lambda v: None))
    if (record.outcome() or {}).get("outcome") != "stopped_early":  # ASHA's stop raced the last epoch
        record.set_outcome("completed")


def _figure_panels(result):
    """The method's extra overlay panels (``Method.figure_panels``) of a step trained in this process, or None."""
    if result.live is None:
        return None
    method, ctx = result.live
    return method.figure_panels(ctx)


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    from wilson_ray.engine import NonFiniteLossError
    from wilson_ray.errors import UserError

    return (
        NonFiniteLossError,
        UserError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        ImportError,
        AssertionError,
        NotImplementedError,
        ZeroDivisionError,
    )


def to_log_file(path: Path) -> None:
    """Send this process's stdout and stderr (Python's and the C level's: torch, gloo) to ``path`` (appended),
    so a trial's output lives with its record instead of on the sweep's console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Train worker; ``config["plan"]`` is the trial's ``TrialPlan`` (``build_trainer``)."""
    import ray.train

    plan: TrialPlan = config["plan"]
    if plan.worker_logs:
        to_log_file(Path(plan.trial_dir) / f"worker-{ray.train.get_context().get_world_rank()}.log")
    device = None
    if plan.use_gpu:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    ctx = ray.train.get_context()
    # One line a user (and benchmarks/gpu_check.sh) can check: which collective backend this worker really got.
    print(
        f"train worker {ctx.get_world_rank()}/{ctx.get_world_size()}: process group {process_group_backend()}, "
        f"device {device or 'cpu'}",
        flush=True,
    )
    run_step(plan, ctx.get_world_rank(), ray.train.get_checkpoint(), _train_report, device)


def process_group_backend() -> str:
    """The initialised torch.distributed backend ('nccl', 'gloo'), or 'none' when no process group exists."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "none"


def run_direct(plan: TrialPlan) -> None:
    """One trial's step in the calling Tune function trainable's process (no TorchTrainer)."""
    from ray import tune

    if plan.cpus >= 1:
        import torch

        torch.set_num_threads(int(plan.cpus))  # the trial's CPU reservation, as a Train worker would get it
    run_step(plan, 0, tune.get_checkpoint(), _tune_report, None)


def run_step(plan: TrialPlan, rank: int, checkpoint, report, device: str | None) -> None:
    """Train ``plan.step`` with per-epoch ``report(metrics, checkpoint_dir)``, resuming from ``checkpoint``
    (a Ray ``Checkpoint`` holding ``STATE_META``, or None); rank 0 keeps the trial record and MLflow in sync."""
    from wilson_ray.sweep_record import TrialRecord
    from wilson_ray.tracking.mlflow_tracker import BackgroundSync, TrackingInfo, TrialTracker

    record = TrialRecord(plan.trial_dir)
    failed = record.failure()
    if failed is not None:
        # A deterministic failure (non-finite loss) of an earlier attempt: every rank returns at once; the trial
        # driver turns the marker into a failed trial instead of burning the retry budget.
        return
    cfg = plan.config
    step = plan.step
    if device is not None:  # the plan is shared (frozen): this worker's device goes into its own copy
        cfg = copy.deepcopy(cfg)
        cfg.run.device = device
    tracker = None
    if rank == 0 and plan.tracking:
        tracker = BackgroundSync(TrialTracker(TrackingInfo.from_dict(plan.tracking), record))
        tracker.request()  # find or create the run while the model and data load
    callback = RayReportCallback(
        rank,
        cfg.optim(step).epochs,
        record=record if rank == 0 else None,
        tracker=tracker,
        final_artifacts=(lambda result: write_final_artifacts(record, result, cfg, step)) if rank == 0 else None,
        report=report,
    )
    from wilson_ray import engine

    DETERMINISTIC_ERRORS = _deterministic_errors()
    init = plan.init_checkpoint
    with contextlib.ExitStack() as stack:
        resume = None
        if checkpoint is not None:
            folder = Path(stack.enter_context(checkpoint.as_directory()))
            meta = json.loads((folder / STATE_META).read_text())
            if int(meta["epoch"]) >= cfg.optim(step).epochs and record.final():
                if tracker is not None:
                    tracker.close()
                return  # the step was complete; only the end of the last attempt was lost
            resume = folder / meta["state_file"]
            if rank == 0:
                print(
                    f"wilson-ray: resuming trial {plan.trial_id} after epoch {meta['epoch']}",
                    file=sys.stderr,
                    flush=True,
                )
        if rank == 0:
            kill_point("first_report")
        try:
            engine.train_step(
                cfg,
                step,
                init_checkpoint=Path(init) if init else None,
                out_dir=Path(plan.trial_dir) / "model",
                callbacks=[callback],
                resume_from=resume,
            )
        except SystemExit:
            # Tune stopped the trial at its report (ASHA). A reused trial process (direct trials) starts the next
            # trial as soon as this thread ends, so the last MLflow sync finishes on its own thread meanwhile.
            if tracker is not None:
                tracker.close(timeout=0)
            raise
        except DETERMINISTIC_ERRORS as err:
            # Retrying cannot help (non-finite loss, bad config/data, a bug): record the reason so every later
            # attempt stops at once. Crashes and collective errors (RuntimeError, OSError) stay retryable.
            record.mark_failed(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            if tracker is not None:
                tracker.close(timeout=30)
            raise
    if tracker is not None:
        tracker.close()


def build_trainer(
    plan: TrialPlan,
    *,
    storage_path: str | Path,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_failures: int = 2,
    callbacks: list | None = None,
):
    """The ``TorchTrainer`` of one trial's ``plan``; its run is named after the trial so a restored trial finds
    its checkpoints (Train V2 restores a run from ``storage_path/name``)."""
    import ray.train
    from ray.train.torch import TorchConfig

    from wilson_ray.orchestration.compat import trainer_class

    apply_train_env()
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    return trainer_class()(
        train_loop_per_worker,
        train_loop_config={"plan": dataclasses.replace(plan, use_gpu=use_gpu)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=plan.trial_id,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
