"""Train one incremental step, evaluate, checkpoint (method.md §4, §5).

Plain PyTorch: runs in one process, or under any launcher that initialises ``torch.distributed`` (Ray Train,
torchrun), in which case it uses DistributedSampler, DDP, SyncBatchNorm and all-reduced confusion matrices.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from wilson_ray import fast
from wilson_ray.atomic import atomic_path
from wilson_ray.config import Config, config_from_dict
from wilson_ray.errors import UserError, load_failure_reason
from wilson_ray.methods import get_method
from wilson_ray.methods.base import Batch, Context, Method, Trainable
from wilson_ray.metrics import ConfusionMatrix, miou_table, per_class_iou
from wilson_ray.models.segmenter import Segmenter, build_segmenter
from wilson_ray.models.weights import load_backbone_weights
from wilson_ray.protocol import Task, check_overlap, get_task

CHECKPOINT_FORMAT = "wilson-ray-checkpoint"
STATE_FORMAT = "wilson-ray-train-state"


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


# ---------------------------------------------------------------------------------------------------------------
# Environment


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the local CUDA device when there is one (LOCAL_RANK under a launcher), else the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"run.device: {spec!r} is not a device, expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device: {spec!r} requested but this machine has no CUDA device; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast on CPU or GPU, fp16 on GPU (with a GradScaler, see ``train_step``), or nothing."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("run.amp: fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def _torch_load(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: not found, expected a wilson-ray checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/pickled files
        raise UserError(f"{what} {path}: not a readable weights-only checkpoint ({load_failure_reason(err)}); "
                        "expected a file written by wilson-ray (pickled objects are refused)") from None
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """Load a step checkpoint (weights + config + classes + task/step + metrics) with ``weights_only=True``."""
    ckpt = _torch_load(Path(path), "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path}: not a wilson-ray checkpoint (no '{CHECKPOINT_FORMAT}' format tag), "
                        "expected a step checkpoint written by wilson-ray train")
    return ckpt


def check_checkpoint_matches(ckpt: dict, path: Path, task: Task, step: int) -> None:
    """Refuse a checkpoint that is not the given (task, step): the class lists must be identical."""
    expected = task.class_names(step)
    if ckpt.get("class_names") != expected or ckpt.get("classes_per_step") != task.classes_per_step(step):
        raise UserError(
            f"checkpoint {path}: trained on task '{ckpt.get('task')}' step {ckpt.get('step')} with "
            f"{len(ckpt.get('class_names') or [])} classes, expected task '{task.name}' step {step} with "
            f"{len(expected)} classes ({', '.join(expected[-3:])}, ...)"
        )


def build_model(cfg: Config, task: Task, step: int) -> Segmenter:
    """The step-``step`` segmenter of ``cfg.model`` with one classifier per step (method.md §2)."""
    m = cfg.model
    return build_segmenter(
        m.backbone, task.classes_per_step(step), output_stride=m.output_stride, norm=m.norm,
        small_width=m.small_width, pooling_size=cfg.data.crop_size, head_channels=m.head_channels,
    )


def model_from_checkpoint(path: str | Path) -> tuple[Segmenter, dict]:
    """Rebuild the model stored in a checkpoint; returns (model in eval mode, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], f"checkpoint {path}")
    task = _task_of(cfg)
    model = build_model(cfg, task, ckpt["step"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _task_of(cfg: Config, method: type[Method] | None = None) -> Task:
    task = get_task(cfg.data.task)
    check_overlap(task, cfg.data.overlap)
    method = method or get_method(cfg.method.name)
    return task.flattened() if method.joint else task


def _unwrap_state(module: nn.Module) -> dict:
    return (module.module if hasattr(module, "module") else module).state_dict()


# ---------------------------------------------------------------------------------------------------------------
# Data


def data_root(cfg: Config, source: str) -> str:
    """Root folder of a data source: ``data.root``, or ``data.voc_root`` for VOC data in a COCO task."""
    if source in ("voc", "voc-as-coco") and get_task(cfg.data.task).dataset != "voc":
        if not cfg.data.voc_root:
            raise UserError(f"data.voc_root: task '{cfg.data.task}' reads VOC data ({source}), expected a VOC root")
        return cfg.data.voc_root
    return cfg.data.root


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, cfg: Config, device: torch.device, seed: int,
            drop_last: bool) -> DataLoader:
    rank, world = rank_world()
    sampler = None
    if world > 1 and shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    elif world > 1:
        # Exact sharding for evaluation: every image once over all ranks (DistributedSampler would pad).
        dataset = Subset(dataset, list(range(rank, len(dataset), world)))
    workers = cfg.data.num_workers
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=drop_last and len(dataset) >= batch_size,
        persistent_workers=workers > 0, generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
    )


def _seed_worker(worker_id: int) -> None:
    # One intra-op thread per loader process: OpenMP pools of the trainer and its workers spin against each
    # other on a small machine (measured 8x slower iterations on 2 cores with the default).
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _build_dataset(cfg: Config, task: Task, step: int, split: str, source: str | None = None):
    from wilson_ray.data.dataset import build_dataset

    if source is None:
        source = task.train_data[step] if split == "train" else task.eval_data[0]
    return build_dataset(
        data_root(cfg, source), task, step, split, overlap=cfg.data.overlap, no_mask=cfg.data.no_mask,
        crop_size=cfg.data.crop_size if split == "train" else cfg.data.val_crop_size,
        eval_mode=cfg.data.eval_mode, source=source,
    )


# ---------------------------------------------------------------------------------------------------------------
# Optimisation


def lr_factor(it: int, max_it: int, policy: str, power: float, constant_its: int) -> float:
    """Poly: (1 − it/max_it)^power. ``warmup`` (method.md §4): constant for ``constant_its`` iterations, then
    poly on the global iteration count (so the LR jumps at the end of the constant phase)."""
    if policy == "warmup" and it < constant_its:
        return 1.0
    return max(0.0, 1.0 - it / max(1, max_it)) ** power


def param_groups(module: Trainable, cfg: Config, step: int) -> list[dict]:
    """Per-group learning rates: backbone lr, head + classifiers lr × lr_head, localizer lr_localizer (§4)."""
    o = cfg.optim(step)
    groups = [
        {"params": module.model.backbone_parameters(), "lr": o.lr, "name": "backbone"},
        {"params": module.model.head_parameters(), "lr": o.lr * o.lr_head, "name": "head"},
    ]
    if module.localizer is not None:
        groups.append({"params": list(module.localizer.parameters()), "lr": o.lr_localizer, "name": "localizer"})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def prepare_models(cfg: Config, module: Trainable, old_model: nn.Module | None, device: torch.device, world: int,
                   find_unused: bool, compile: bool | None = None) -> tuple[Trainable, nn.Module, nn.Module | None]:
    """Place the trainable and the old model on ``device`` and apply the ``run.*`` speed switches.

    Returns ``(module, net, old_model)``: ``module`` is the bare trainable (state dicts, evaluation), ``net`` what
    the losses call (DDP / channels_last-gradient wrapper / compiled), ``old_model`` the frozen old model as the
    losses call it. Every switch keeps the parameters' identity, so optimisers and checkpoints are unaffected.
    ``compile`` overrides ``run.compile`` (benchmarks compile separately to keep eager copies).
    """
    compile = cfg.run.compile if compile is None else compile
    if world > 1 and device.type == "cuda":
        # PyTorch's SyncBatchNorm is CUDA-only; CPU (gloo) workers keep per-worker BatchNorm statistics.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module.to(device)
    if old_model is not None:
        old_model.to(device)
    if cfg.run.valid_taps:
        fast.use_valid_taps_(module)
        if old_model is not None:
            fast.use_valid_taps_(old_model)
    if old_model is not None and cfg.run.frozen_old_model:
        # torch.compile traces no_grad, not inference_mode
        old_model = fast.freeze_old_model(old_model, cfg.run.amp)
    if cfg.run.channels_last:
        module.to(memory_format=torch.channels_last)
        if old_model is not None:
            old_model.to(memory_format=torch.channels_last)
    net: nn.Module = module
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused
        )
    if cfg.run.channels_last:
        # Loss gradients come back NCHW from reductions; converting them once at the network's outputs keeps
        # every backward convolution of the head on the channels_last kernels.
        net = fast.ChannelsLastGradients(net)
    if compile:
        net, old_model = compile_models(net, old_model)
    return module, net, old_model


def compile_models(net: nn.Module, old_model: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """``torch.compile`` of the network and the old model (a frozen one runs under no_grad, which dynamo traces,
    instead of inference_mode)."""
    if isinstance(old_model, fast.FrozenOldModel):
        old_model.inference_mode = False
    return torch.compile(net), (torch.compile(old_model) if old_model is not None else None)


def make_optimizer(cfg: Config, module: Trainable, step: int) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) over the engine's parameter groups (method.md §4); fused when ``run.fused_sgd``."""
    o = cfg.optim(step)
    return fast.sgd(param_groups(module, cfg, step), o.lr, o.momentum, o.nesterov, o.weight_decay,
                    fused=True if cfg.run.fused_sgd else False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, amp: str = "none",
             channels_last: bool = False) -> np.ndarray:
    """Confusion matrix of argmax(upsampled logits) vs ground truth over the loader, summed over all ranks (§5)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    for images, masks, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            logits, _ = model(images, upsample=True)
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
) -> StepResult:
    """Train step ``step`` of ``cfg.data.task`` with ``cfg.method`` and evaluate it.

    Step 0 starts from the (pretrained) backbone with the BCE loss; step t >= 1 loads ``init_checkpoint`` (the step
    t-1 checkpoint) into the new model non-strictly and into a frozen old model (method.md §2.5). The final weights
    are written to ``out_dir/step<t>.pt`` (rank 0, atomically).
    """
    method_cls = get_method(cfg.method.name)
    source_task = get_task(cfg.data.task)
    task = _task_of(cfg, method_cls)
    task.check_step(step)
    rank, world = rank_world()
    device = resolve_device(cfg.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.run.seed + step * 1000 + rank)
    params = method_cls.Params(**cfg.method.params)
    method = method_cls(params, task, step, no_mask=cfg.data.no_mask)
    if rank == 0:
        for msg in method.warnings():
            print(f"warning: {msg}", file=sys.stderr)

    # --- models --------------------------------------------------------------------------------------------
    model = build_model(cfg, task, step)
    old_model = None
    if step == 0:
        load_backbone_weights(model.backbone, cfg.model.pretrained)
    else:
        if init_checkpoint is None:
            raise UserError(f"step {step}: needs the step {step - 1} checkpoint (init_checkpoint), found none")
        ckpt = load_checkpoint(init_checkpoint)
        check_checkpoint_matches(ckpt, Path(init_checkpoint), task, step - 1)
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        if unexpected or any(not k.startswith(f"classifiers.{step}.") for k in missing):
            raise UserError(f"checkpoint {init_checkpoint}: weights do not fit the configured model "
                            f"({len(missing)} missing, {len(unexpected)} unexpected keys); check model.* settings")
        old_model = build_model(cfg, task, step - 1)
        old_model.load_state_dict(ckpt["model"])
        old_model.eval().requires_grad_(False)
        method.on_model_ready(model)
    localizer = method.build_localizer(model.backbone.out_channels, cfg.model.norm) if step > 0 else None
    module = Trainable(model, localizer)
    module, net, old_model = prepare_models(cfg, module, old_model, device, world, method.uses_localizer)
    ctx = Context(net=net, module=module, old_model=old_model)

    # --- data ----------------------------------------------------------------------------------------------
    train_set = _build_dataset(cfg, task, step, "train")
    if len(train_set) == 0:
        raise UserError(f"data.root {cfg.data.root}: no training image of task '{task.name}' step {step} "
                        f"({'overlap' if cfg.data.overlap else 'disjoint'}), expected at least one")
    eval_sets = {src: _build_dataset(cfg, task, step, "val", src) for src in task.eval_data}
    per_rank_batch = max(1, cfg.data.batch_size // world)
    train_loader = _loader(train_set, per_rank_batch, True, cfg, device, cfg.run.seed + step, drop_last=True)
    val_bs = 1 if cfg.data.eval_mode == "full" else max(1, cfg.data.val_batch_size // world)
    val_loaders = {src: _loader(ds, val_bs, False, cfg, device, 0, drop_last=False) for src, ds in eval_sets.items()}

    # --- optimiser -----------------------------------------------------------------------------------------
    o = cfg.optim(step)
    optimizer = make_optimizer(cfg, module, step)
    iters = len(train_loader)
    for cap in (cfg.run.max_iters_per_epoch, o.max_iters_per_epoch):
        if cap:
            iters = min(iters, cap)
    max_it = o.epochs * iters
    constant_its = (method.constant_lr_epochs() if step > 0 else 0) * iters
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, max_it, o.policy, o.power, constant_its)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    start_epoch = 0
    if resume_from is not None:
        state = _torch_load(Path(resume_from), "training state")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("step") != step:
            raise UserError(f"training state {resume_from}: not a step-{step} wilson-ray training state")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])

    def save_state(directory: Path, epoch: int) -> Path:
        path = Path(directory) / "state.pt"
        if rank == 0:
            state = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "module": module.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict()}
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        return path

    # --- loop ----------------------------------------------------------------------------------------------
    names = task.class_names(step)
    report_task = source_task if method_cls.joint else None
    metrics: dict[str, float] = {}
    confusion = np.zeros((task.num_classes(step),) * 2, dtype=np.int64)
    extra_eval: dict[str, dict[str, float]] = {}
    per_class: dict[str, float] = {}
    progress = _progress(cfg, rank, o.epochs - start_epoch, iters)
    for epoch in range(start_epoch, o.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        module.train()
        sums: dict[str, torch.Tensor] = {}
        t0, seen = time.perf_counter(), 0
        for it, (images, masks, labels) in enumerate(train_loader):
            if it >= iters:
                break
            images = images.to(device, non_blocking=True)
            if cfg.run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            batch = Batch(images, masks.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            with autocast_context(device, cfg.run.amp):
                terms = method.step0_losses(ctx, batch) if step == 0 else method.losses(ctx, batch, epoch)
            total = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            # The official code gives frozen parts (head during localizer pre-training) an explicit zero gradient,
            # so SGD's weight decay and momentum still touch them (method.md §3.9).
            for p in module.parameters():
                if p.grad is None and p.requires_grad:
                    p.grad = torch.zeros_like(p)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            sums["total"] = sums.get("total", 0) + total.detach().float()
            seen += images.shape[0] * world
            if (it + 1) % cfg.run.log_interval == 0 or it + 1 == iters:
                value = float(total.detach())  # the only host sync of the iteration loop
                if cfg.run.fail_on_nonfinite and not math.isfinite(value):
                    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
                    raise NonFiniteLossError(f"non-finite loss at step {step} epoch {epoch + 1} iteration {it + 1}: "
                                             f"{', '.join(bad) or 'total'} = {value}")
                if progress is not None:
                    progress.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
            if progress is not None:
                progress.update(1)
        elapsed = time.perf_counter() - t0
        n_it = max(1, min(iters, len(train_loader)))
        metrics = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / elapsed}
        metrics.update({f"loss/{k}": float(v) / n_it for k, v in sums.items()})
        if cfg.run.fail_on_nonfinite and not math.isfinite(metrics.get("loss/total", 0.0)):
            raise NonFiniteLossError(f"non-finite loss at step {step} epoch {epoch + 1}: loss/total")
        last = epoch + 1 == o.epochs
        if last or (epoch + 1) % cfg.run.val_interval == 0:
            extra_eval = {}
            for i, (src, loader) in enumerate(val_loaders.items()):
                cm = evaluate(module.model, loader, task.num_classes(step), device, cfg.run.amp, cfg.run.channels_last)
                table, iou = score(cm, task, step, report_task)
                if i == 0:
                    confusion, per_class = cm, iou
                    metrics.update(table)
                    metrics.update({f"iou/{n}": v for n, v in iou.items()})
                else:
                    extra_eval[src] = table
                    metrics.update({f"{src}/{k}": v for k, v in table.items()})
        for cb in callbacks:
            cb.on_epoch_end(epoch + 1, dict(metrics), lambda d, e=epoch + 1: save_state(d, e))
    if progress is not None:
        progress.close()

    checkpoint = None
    if out_dir is not None:
        checkpoint = Path(out_dir) / f"step{step}.pt"
        if rank == 0:
            save_checkpoint(checkpoint, module.model, cfg, task, step, metrics)
        if world > 1:
            dist.barrier()
    result = StepResult(step, {k: v for k, v in metrics.items() if not k.startswith("iou/")}, per_class,
                        confusion, names, checkpoint, o.epochs, extra_eval)
    for cb in callbacks:
        cb.on_step_end(result)
    return result


def save_checkpoint(path: Path, model: nn.Module, cfg: Config, task: Task, step: int, metrics: dict) -> Path:
    """Atomically write weights + resolved config + class list + task/step + metrics."""
    state = {k: v.detach().cpu() for k, v in _unwrap_state(model).items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": 1, "model": state, "config": cfg.to_dict(), "task": task.name,
        "step": step, "class_names": task.class_names(step), "classes_per_step": task.classes_per_step(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def _progress(cfg: Config, rank: int, epochs: int, iters: int):
    if rank != 0 or not cfg.run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=epochs * iters, unit="it", dynamic_ncols=True, leave=False, file=sys.stderr)


def evaluate_checkpoint(path: str | Path, data_root: str | None = None, eval_mode: str | None = None,
                        device: str = "auto") -> StepResult:
    """Evaluate a step checkpoint on its task's validation set(s) (method.md §5)."""
    model, ckpt = model_from_checkpoint(path)
    cfg = config_from_dict(copy.deepcopy(ckpt["config"]), f"checkpoint {path}")
    if data_root:
        cfg.data.root = data_root
    if eval_mode:
        cfg.data.eval_mode = eval_mode
    method_cls = get_method(cfg.method.name)
    task, step = _task_of(cfg, method_cls), ckpt["step"]
    dev = resolve_device(device)
    model.to(dev)
    metrics, per_class, confusion, extra = {}, {}, None, {}
    for i, src in enumerate(task.eval_data):
        ds = _build_dataset(cfg, task, step, "val", src)
        bs = 1 if cfg.data.eval_mode == "full" else cfg.data.val_batch_size
        loader = _loader(ds, bs, False, cfg, dev, 0, drop_last=False)
        cm = evaluate(model, loader, task.num_classes(step), dev)
        table, iou = score(cm, task, step, get_task(cfg.data.task) if method_cls.joint else None)
        if i == 0:
            metrics, per_class, confusion = table, iou, cm
        else:
            extra[src] = table
    return StepResult(step, metrics, per_class, confusion, task.class_names(step), Path(path), 0, extra)
