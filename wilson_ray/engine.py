"""Train one incremental step and evaluate it (method.md §4, §5).

Reads top to bottom: ``train_one_epoch`` (the iteration loop), ``evaluate`` (the one evaluation loop, used by
training and by ``evaluate_checkpoint``), ``train_step`` (build -> hooks -> epochs -> checkpoint). What a step is
built from lives in ``step_setup``, the file formats in ``checkpoint``, device/seed/autocast in ``runtime``; what
differs between methods lives in the method (``methods.base.Method``), so nothing here branches on the method or
the step.

Plain PyTorch: runs in one process, or under any launcher that initialises ``torch.distributed`` (Ray Train,
torchrun), in which case it uses DistributedSampler, DDP, SyncBatchNorm and all-reduced confusion matrices.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from wilson_ray import step_setup
from wilson_ray.checkpoint import (
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from wilson_ray.config import Config, config_from_dict
from wilson_ray.hardware import describe_amp_choice, resolve_amp
from wilson_ray.methods import get_method
from wilson_ray.methods.base import Batch, Context, Method, Trainable
from wilson_ray.metrics import ConfusionMatrix, miou_table, per_class_iou
from wilson_ray.protocol import Task
from wilson_ray.runtime import autocast_context, rank_world, resolve_device, seed_everything
from wilson_ray.step_key import default_cache_dir, step_key
from wilson_ray.step_setup import (
    make_optimizer,
    model_from_checkpoint,
    prepare_models,
    task_of,
)

__all__ = [
    "Callback",
    "NonFiniteLossError",
    "StepResult",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_sources",
    "score",
    "train_one_epoch",
    "train_step",
]


_PRINTED: set[str] = set()


def _print_once(line: str) -> None:
    """Print an informational line on stdout once per process (a table trains many steps; the choice is the same)."""
    if line not in _PRINTED:
        _PRINTED.add(line)
        print(line, flush=True)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the loss term and the epoch."""


class Callback:
    """Hooks called by ``train_step`` on every rank (trackers, Ray reporting, tests)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], save_state: Callable[[Path], Path]) -> None:
        """After each epoch; ``epoch`` is 1-based. ``save_state(dir)`` writes the resumable training state."""

    def on_step_end(self, result: "StepResult") -> None:
        """After the final evaluation and checkpoint of the step."""


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    per_class_iou: dict[str, float]
    confusion: np.ndarray
    class_names: list[str]
    checkpoint: Path | None
    epochs: int
    extra_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    # the step's live method and Context at its end (rank 0 figures: localizer maps, pseudo-labels); not saved
    live: tuple | None = None


@dataclass
class Loop:
    """The per-run settings of the iteration loop (amp already resolved)."""

    step: int
    device: torch.device
    amp: str
    channels_last: bool
    world: int
    log_interval: int
    fail_on_nonfinite: bool


class DeviceBatches:
    """A loader's samples as ``Batch`` on the device (images channels_last when asked), at most ``limit``."""

    def __init__(self, loader: DataLoader, loop: Loop, limit: int | None = None):
        self.loader, self.loop, self.limit = loader, loop, limit

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(self.limit, len(self.loader))

    def __iter__(self) -> Iterator[Batch]:
        device = self.loop.device
        for it, sample in enumerate(self.loader):
            if self.limit is not None and it >= self.limit:
                break
            images, masks, labels = sample[:3]
            images = images.to(device, non_blocking=True)
            if self.loop.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            extras = {k: v.to(device, non_blocking=True) for k, v in sample[3].items()} if len(sample) > 3 else {}
            yield Batch(images, masks.to(device, non_blocking=True), labels.to(device, non_blocking=True), extras)


# ---------------------------------------------------------------------------------------------------------------
# One epoch


def train_one_epoch(
    method: Method,
    ctx: Context,
    batches: DeviceBatches,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    loop: Loop,
    epoch: int,
    progress=None,
) -> dict:
    """One epoch of ``method.losses`` + SGD over ``batches``; returns {epoch, lr, images_per_s, loss/<term>}
    with each term's mean over the epoch (``epoch`` is 0-based, the returned one 1-based)."""
    ctx.module.train()
    sums: dict[str, torch.Tensor] = {}
    t0, seen, n_it = time.perf_counter(), 0, len(batches)
    for it, batch in enumerate(batches):
        # Free the previous iteration's gradients before the forward, as the official code does (its
        # ``optim.zero_grad()`` precedes the new model's forward): zeroed after the forward, they would stay
        # alive across it and add one trainable model's fp32 gradients (242 MiB for ResNet-101 DeepLab +
        # localizer) to the peak at the end of the forward (BENCHMARKS §1A).
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(loop.device, loop.amp):
            terms = method.losses(ctx, batch, epoch)
        total = sum(terms.values())
        scaler.scale(total).backward()
        # The official code gives frozen parts (head during localizer pre-training) an explicit zero gradient,
        # so SGD's weight decay and momentum still touch them (method.md §3.9).
        for p in ctx.module.parameters():
            if p.grad is None and p.requires_grad:
                p.grad = torch.zeros_like(p)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
        sums["total"] = sums.get("total", 0) + total.detach().float()
        seen += batch.images.shape[0] * loop.world
        if (it + 1) % loop.log_interval == 0 or it + 1 == n_it:
            value = float(total.detach())  # the only host sync of the iteration loop
            if loop.fail_on_nonfinite and not math.isfinite(value):
                bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
                raise NonFiniteLossError(
                    f"non-finite loss at step {loop.step} epoch {epoch + 1} iteration "
                    f"{it + 1}: {', '.join(bad) or 'total'} = {value}"
                )
            if progress is not None:  # running means of the epoch so far, per loss term
                running = {k: f"{float(v) / (it + 1):.3f}" for k, v in sums.items() if k != "total"}
                progress.set_postfix(
                    loss=f"{float(sums['total']) / (it + 1):.3f}",
                    **running,
                    img_s=f"{seen / (time.perf_counter() - t0):.1f}",
                )
        if progress is not None:
            progress.update(1)
    elapsed = time.perf_counter() - t0
    metrics = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / elapsed}
    metrics.update({f"loss/{k}": float(v) / max(1, n_it) for k, v in sums.items()})
    if loop.fail_on_nonfinite and not math.isfinite(metrics.get("loss/total", 0.0)):
        raise NonFiniteLossError(f"non-finite loss at step {loop.step} epoch {epoch + 1}: loss/total")
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> np.ndarray:
    """Confusion matrix of argmax(upsampled logits) vs ground truth over the loader, summed over all ranks (§5)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    for images, masks, *_ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            logits = model(images, upsample=True).logits
        cm.update(logits.argmax(1), masks.to(device))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(cm.matrix)
    model.train(was_training)
    return cm.numpy()


def score(confusion: np.ndarray, task: Task, step: int, report_task: Task | None = None) -> tuple[dict, dict]:
    """(mIoU columns, per-class IoU by name) of a confusion matrix. ``report_task`` gives the old/new split for
    the joint upper bound (trained on a flattened task but reported in its source task's columns)."""
    rt = report_task or task
    rstep = rt.num_steps - 1 if report_task is not None else step
    old, new = rt.internal_split(rstep)
    names = task.class_names(step)
    iou = per_class_iou(confusion) * 100.0
    return miou_table(confusion, old, new), {n: float(v) for n, v in zip(names, iou)}


@dataclass
class Evaluation:
    """Scores of every evaluation source: the first source's table, per-class IoU and confusion, the others'
    tables under ``extra``."""

    metrics: dict[str, float]
    per_class: dict[str, float]
    confusion: np.ndarray
    extra: dict[str, dict[str, float]]


def evaluate_sources(
    model: nn.Module,
    loaders: dict[str, DataLoader],
    task: Task,
    step: int,
    report_task: Task | None,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> Evaluation:
    """``evaluate`` + ``score`` on each evaluation source (the first is the task's own validation set)."""
    result = None
    extra: dict[str, dict[str, float]] = {}
    for src, loader in loaders.items():
        cm = evaluate(model, loader, task.num_classes(step), device, amp, channels_last)
        table, iou = score(cm, task, step, report_task)
        if result is None:
            result = Evaluation(table, iou, cm, extra)
        else:
            extra[src] = table
    return result


# ---------------------------------------------------------------------------------------------------------------
# One step


def train_step(
    cfg: Config,
    step: int,
    *,
    init_checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    resume_from: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> StepResult:
    """Train step ``step`` of ``cfg.data.task`` with ``cfg.method`` and evaluate it.

    Step 0 starts from the (pretrained) backbone; step t >= 1 loads ``init_checkpoint`` (the step t-1 checkpoint)
    into the new model non-strictly and into a frozen old model (method.md §2.5). Which losses train the step is
    the method's choice (``Method.for_step``: the shared BCE step 0, method.md §3.1). The final weights and the
    method's state are written to ``out_dir/step<t>.pt`` (rank 0, atomically). ``cache_dir`` (default: the step
    cache) also holds what a method's ``before_training`` pass caches (``wilson_ray.pass_cache``).
    """
    # --- where and how ---------------------------------------------------------------------------------------
    method_cls = get_method(cfg.method.name)
    view = task_of(cfg, method_cls)
    task = view.train
    task.check_step(step)
    rank, world = rank_world()
    device = resolve_device(cfg.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = resolve_amp(cfg.run.amp, device)
    seed_everything(cfg.run.seed + step * 1000 + rank)
    # cfg.method.args is the method's typed Params instance, validated once by the config (no re-parsing here).
    method = method_cls.for_step(cfg.method.args, task, step, no_mask=cfg.data.no_mask)
    if rank == 0:
        for msg in method.warnings():
            print(f"warning: {msg}", file=sys.stderr)

    # --- models ----------------------------------------------------------------------------------------------
    model, old_model, method_state = step_setup.initial_models(cfg, task, step, init_checkpoint)
    method.load_state_dict(method_state)
    method.on_model_ready(model)
    module = Trainable(model, method.build_localizer(model.backbone.out_channels, cfg.model.norm))
    find_unused = method.uses_localizer if cfg.run.ddp_find_unused is None else cfg.run.ddp_find_unused
    module, net, old_model = prepare_models(cfg, module, old_model, device, world, find_unused, amp=amp)
    ctx = Context(
        net=net,
        module=module,
        old_model=old_model,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        pass_key=f"{step_key(cfg, step - 1)}-step{step}" if step > 0 else None,
    )

    # --- data ------------------------------------------------------------------------------------------------
    train_set = step_setup.train_dataset(cfg, task, step, method)
    per_rank_batch = max(1, cfg.data.batch_size // world)
    train_loader = step_setup.make_loader(
        train_set, per_rank_batch, True, cfg, device, cfg.run.seed + step, drop_last=True
    )
    val_loaders = step_setup.eval_loaders(cfg, task, step, device, world)
    loop = Loop(step, device, amp, cfg.run.channels_last, world, cfg.run.log_interval, cfg.run.fail_on_nonfinite)
    iters = step_setup.iterations_per_epoch(cfg, step, len(train_loader))
    batches = DeviceBatches(train_loader, loop, iters)

    # --- optimiser -------------------------------------------------------------------------------------------
    o = cfg.optim(step)
    optimizer = make_optimizer(cfg, module, step, method)
    scheduler = step_setup.make_scheduler(optimizer, o, iters, method.constant_lr_epochs())
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    state_parts = {"module": module, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "method": method}
    start_epoch = 0
    if resume_from is not None:
        start_epoch = load_training_state(resume_from, step, state_parts)
    else:
        # The pass reads its own loader (same data, same seed) and runs on a forked RNG, so the training batches and
        # augmentations do not depend on whether it ran or came from the cache (``pass_cache``): a computed pass used
        # to consume the training loader's first shuffle and the global RNG its crops draw from.
        pass_loader = step_setup.make_loader(
            train_set, per_rank_batch, True, cfg, device, cfg.run.seed + step, drop_last=True
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            method.before_training(ctx, DeviceBatches(pass_loader, loop, iters))

    def save_state(directory: Path, epoch: int) -> Path:
        path = Path(directory) / "state.pt"
        if rank == 0:
            save_training_state(path, step, epoch, state_parts)
        return path

    if rank == 0:  # once everything is built and checked: a bad input prints its one error line and nothing else
        _print_once(describe_amp_choice(cfg.run.amp, amp, device))

    # --- epochs ----------------------------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    evaluation = Evaluation({}, {}, np.zeros((task.num_classes(step),) * 2, dtype=np.int64), {})
    for epoch in range(start_epoch, o.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        progress = _progress(cfg, rank, f"step {step} epoch {epoch + 1}/{o.epochs}", iters)
        metrics = train_one_epoch(method, ctx, batches, optimizer, scheduler, scaler, loop, epoch, progress)
        if epoch + 1 == o.epochs or (epoch + 1) % cfg.run.val_interval == 0:
            evaluation = evaluate_sources(
                module.model, val_loaders, task, step, view.report, device, amp, cfg.run.channels_last
            )
            metrics.update(evaluation.metrics)
            metrics.update({f"iou/{n}": v for n, v in evaluation.per_class.items()})
            metrics.update({f"{src}/{k}": v for src, table in evaluation.extra.items() for k, v in table.items()})
        if progress is not None:
            if "miou_all" in metrics:
                progress.set_postfix_str(
                    f"loss {metrics.get('loss/total', float('nan')):.3f}  mIoU old "
                    f"{metrics['miou_old']:.1f} new {metrics['miou_new']:.1f} "
                    f"all {metrics['miou_all']:.1f}"
                )
            progress.close()
        for cb in callbacks:
            cb.on_epoch_end(epoch + 1, dict(metrics), lambda d, e=epoch + 1: save_state(d, e))

    # --- checkpoint ------------------------------------------------------------------------------------------
    checkpoint = None
    if out_dir is not None:
        checkpoint = Path(out_dir) / f"step{step}.pt"
        if rank == 0:
            save_checkpoint(checkpoint, module.model, cfg, task, step, metrics, method.state_dict())
        if world > 1:
            dist.barrier()
    result = StepResult(
        step,
        {k: v for k, v in metrics.items() if not k.startswith("iou/")},
        evaluation.per_class,
        evaluation.confusion,
        task.class_names(step),
        checkpoint,
        o.epochs,
        evaluation.extra,
        live=(method, ctx),
    )
    for cb in callbacks:
        cb.on_step_end(result)
    return result


def _progress(cfg: Config, rank: int, desc: str, iters: int):
    """One bar per epoch (rank 0, ``run.progress``), kept on screen with the epoch's losses and mIoU."""
    if rank != 0 or not cfg.run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=iters, desc=desc, unit="it", dynamic_ncols=True, leave=True, file=sys.stderr)


def evaluate_checkpoint(
    path: str | Path, data_root: str | None = None, eval_mode: str | None = None, device: str = "auto"
) -> StepResult:
    """Evaluate a step checkpoint on its task's validation set(s) in fp32 (method.md §5)."""
    model, ckpt = model_from_checkpoint(path)
    cfg = config_from_dict(copy.deepcopy(ckpt["config"]), f"checkpoint {path}")
    if data_root:
        cfg.data.root = data_root
    if eval_mode:
        cfg.data.eval_mode = eval_mode
    view, step = task_of(cfg), ckpt["step"]
    dev = resolve_device(device)
    model.to(dev)
    loaders = step_setup.eval_loaders(cfg, view.train, step, dev)
    ev = evaluate_sources(model, loaders, view.train, step, view.report, dev)
    return StepResult(
        step, ev.metrics, ev.per_class, ev.confusion, view.train.class_names(step), Path(path), 0, ev.extra
    )
