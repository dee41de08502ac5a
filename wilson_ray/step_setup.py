"""What a step is built from: its task, model, datasets and loaders, optimiser and LR schedule, and the
``run.*`` speed switches applied to the models (method.md §2, §4).

``engine.train_step`` calls these in order; the step cache, the runner, the plots and the benchmarks call the
same functions, so every user of a step builds it one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from wilson_ray import fast
from wilson_ray.checkpoint import check_checkpoint_matches, load_checkpoint, load_into_step_model
from wilson_ray.config import Config, OptimConfig, config_from_dict
from wilson_ray.errors import UserError
from wilson_ray.methods import get_method
from wilson_ray.methods.base import Method, TaskView, Trainable, default_param_groups
from wilson_ray.models.segmenter import Segmenter, build_segmenter
from wilson_ray.models.weights import load_backbone_weights
from wilson_ray.protocol import Task, check_overlap, get_task
from wilson_ray.runtime import rank_world, seed_worker

# ---------------------------------------------------------------------------------------------------------------
# Task and model


def task_of(cfg: Config, method: type[Method] | None = None) -> TaskView:
    """The task ``cfg.method`` trains (``.train``) and reports in (``.report``) for ``cfg.data.task``, with the
    overlap setting checked against the task."""
    task = get_task(cfg.data.task)
    check_overlap(task, cfg.data.overlap)
    method = method or get_method(cfg.method.name)
    return method.task_view(task)


def old_class_names(cfg: Config, step: int) -> list[str]:
    """The classes the trained task has learnt before step ``step`` (background included; none at step 0)."""
    return list(task_of(cfg).train.class_names(step - 1)) if step > 0 else []


def added_classes(names: list[str], old: list[str]) -> list[str]:
    """The classes among ``names`` that are neither background nor among ``old`` (``old_class_names``)."""
    known = set(old)
    return [n for n in names if n not in known and n != "background"]


def new_class_names(cfg: Config, step: int, names: list[str]) -> list[str]:
    """The classes among ``names`` that step ``step`` of the trained task adds (background and the classes of
    steps < ``step`` left out)."""
    return added_classes(names, old_class_names(cfg, step))


def build_model(cfg: Config, task: Task, step: int) -> Segmenter:
    """The step-``step`` segmenter of ``cfg.model`` with one classifier per step (method.md §2)."""
    m = cfg.model
    return build_segmenter(
        m.backbone,
        task.classes_per_step(step),
        output_stride=m.output_stride,
        norm=m.norm,
        small_width=m.small_width,
        pooling_size=cfg.data.crop_size,
        head_channels=m.head_channels,
    )


def model_from_checkpoint(path: str | Path) -> tuple[Segmenter, dict]:
    """Rebuild the model stored in a step checkpoint from its own config; returns (model in eval mode,
    checkpoint dict)."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], f"checkpoint {path}")
    model = build_model(cfg, task_of(cfg).train, ckpt["step"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def initial_models(
    cfg: Config, task: Task, step: int, init_checkpoint: Any = None
) -> tuple[Segmenter, Segmenter | None, dict]:
    """(step-``step`` model, frozen old model or None, the previous step's method state or {}) at the start of a
    step.

    Without a previous step the model starts from ``model.pretrained``; otherwise it loads the step t-1
    checkpoint non-strictly (its new classifier keeps its random init) and a frozen copy becomes the old model
    (method.md §2.5)."""
    model = build_model(cfg, task, step)
    if step == 0:
        load_backbone_weights(model.backbone, cfg.model.pretrained)
        return model, None, {}
    if init_checkpoint is None:
        raise UserError(f"step {step}: needs the step {step - 1} checkpoint (init_checkpoint), found none")
    ckpt = load_checkpoint(init_checkpoint)
    check_checkpoint_matches(ckpt, init_checkpoint, task, step - 1)
    load_into_step_model(model, ckpt, init_checkpoint, step)
    old_model = build_model(cfg, task, step - 1)
    old_model.load_state_dict(ckpt["model"])
    old_model.eval().requires_grad_(False)
    # Only the method's state outlives this call: the checkpoint's weight tensors (a whole model) are freed here
    # instead of staying referenced for the whole step.
    return model, old_model, ckpt.get("method_state", {})


# ---------------------------------------------------------------------------------------------------------------
# Data


def build_step_dataset(cfg: Config, task: Task, step: int, split: str, source: str | None = None):
    """The (task, step, split) dataset of ``source`` (default: the step's training source, or the task's first
    evaluation source), remapped to the step's internal class indices."""
    from wilson_ray.data.dataset import build_dataset

    if source is None:
        source = task.train_data[step] if split == "train" else task.eval_data[0]
    return build_dataset(
        cfg.data.root_of(source),
        task,
        step,
        split,
        overlap=cfg.data.overlap,
        no_mask=cfg.data.no_mask,
        crop_size=cfg.data.crop_size if split == "train" else cfg.data.val_crop_size,
        eval_mode=cfg.data.eval_mode,
        source=source,
    )


class WithExtraInputs(Dataset):
    """A dataset whose samples carry the per-sample inputs a method declares (``Method.extra_inputs``).

    The wrapped dataset supplies them through ``extra_input(name, index) -> Tensor``; a sample becomes
    ``(image, mask, labels, {name: tensor})``, batched into ``Batch.extras``."""

    def __init__(self, dataset: Dataset, names: tuple[str, ...], method_name: str):
        if not callable(getattr(dataset, "extra_input", None)):
            raise UserError(
                f"method {method_name}: needs per-sample inputs {', '.join(names)}, found a "
                f"{type(dataset).__name__} without extra_input(name, index), expected a dataset "
                "that supplies them"
            )
        self.dataset = dataset
        self.names = names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask, labels = self.dataset[index][:3]
        return image, mask, labels, {name: self.dataset.extra_input(name, index) for name in self.names}


def extra_inputs(cfg: Config, task: Task, step: int, method: Method, check_only: bool = False) -> tuple:
    """The ``ExtraInput`` folders of the method's ``extra_inputs`` at ``step``: those the method prepares itself
    (``Method.prepare_inputs``, e.g. offline pseudo-masks; left out under ``check_only``, which writes nothing)
    and those the data supplies (saliency maps)."""
    from wilson_ray.data.extras import data_input

    if not method.extra_inputs:
        return ()
    own = method.prepare_inputs(cfg, check_only=check_only)
    root = cfg.data.root_of(task.train_data[step])
    out = []
    for name in method.extra_inputs:
        if name not in own:
            out.append(data_input(name, root, method.name))
        elif own[name] is not None:
            out.append(own[name])
    return tuple(out)


def train_dataset(cfg: Config, task: Task, step: int, method: Method, check_only: bool = False) -> Dataset:
    """The step's training set, with the method's extra inputs (each file checked); an empty one is a UserError.
    ``check_only``: the same checks, without preparing the method's own inputs (nothing is written)."""
    dataset = build_step_dataset(cfg, task, step, "train")
    if len(dataset) == 0:
        raise UserError(
            f"data.root {cfg.data.root}: no training image of task '{task.name}' step {step} "
            f"({'overlap' if cfg.data.overlap else 'disjoint'}), expected at least one"
        )
    if not check_only:
        attach_memory(cfg, task, step, method)
    if method.extra_inputs:
        if callable(getattr(dataset, "with_extras", None)):
            dataset = dataset.with_extras(extra_inputs(cfg, task, step, method, check_only))
        else:
            dataset = WithExtraInputs(dataset, tuple(method.extra_inputs), method.name)
    return dataset


def attach_memory(cfg: Config, task: Task, step: int, method: Method) -> list[dict]:
    """Choose the step's memory of earlier images and attach it to the method's ``memory()`` (docs/method.md §9);
    returns its entries ([] when the method keeps none).

    Pool: the memory the step t-1 checkpoint carries plus step t-1's training images; ``select_memory`` keeps at
    most the budget of them by the method's rule, seeded by ``run.seed`` and the step. Each image is read by the
    training set of the step it came from (that step's crop and flip)."""
    from wilson_ray.data import memory

    slot = method.memory()
    if step == 0 or slot is None:
        return []
    previous = build_step_dataset(cfg, task, step - 1, "train")
    pool = list(slot.carried) + memory.step_candidates(previous, step - 1)
    entries = memory.select_memory(pool, slot.budget, slot.rule, seed=cfg.run.seed * 1000 + step)
    if not entries:
        return []
    steps = sorted({e["step"] for e in entries})
    datasets = {s: previous if s == step - 1 else build_step_dataset(cfg, task, s, "train") for s in steps}
    slot.attach(memory.MemoryReplay(memory.MemoryImages(entries, datasets), seed=cfg.run.seed + step))
    return entries


def check_step_inputs(cfg: Config, step: int) -> None:
    """Raise the UserError the method's extra inputs at ``step`` would cause (e.g. a missing or mis-sized saliency
    map), without preparing anything: a run that cannot reach that step writes nothing."""
    task = task_of(cfg).train
    method = get_method(cfg.method.name).for_step(cfg.method.args, task, step, no_mask=cfg.data.no_mask)
    if method.extra_inputs:
        train_dataset(cfg, task, step, method, check_only=True)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, cfg: Config, device: torch.device, seed: int, drop_last: bool
) -> DataLoader:
    """DataLoader of one rank: a DistributedSampler for training under several ranks, an exact shard (every
    image once over all ranks) for evaluation."""
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
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last and len(dataset) >= batch_size,
        persistent_workers=workers > 0,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
    )


def eval_loaders(cfg: Config, task: Task, step: int, device: torch.device, world: int = 1) -> dict[str, DataLoader]:
    """One evaluation loader per evaluation source of the task (first: the task's own validation set)."""
    batch = 1 if cfg.data.eval_mode == "full" else max(1, cfg.data.val_batch_size // world)
    return {
        src: make_loader(build_step_dataset(cfg, task, step, "val", src), batch, False, cfg, device, 0, drop_last=False)
        for src in task.eval_data
    }


# ---------------------------------------------------------------------------------------------------------------
# Optimisation


def lr_factor(it: int, max_it: int, policy: str, power: float, constant_its: int) -> float:
    """Poly: (1 − it/max_it)^power. ``warmup`` (method.md §4): constant for ``constant_its`` iterations, then
    poly on the global iteration count (so the LR jumps at the end of the constant phase)."""
    if policy == "warmup" and it < constant_its:
        return 1.0
    return max(0.0, 1.0 - it / max(1, max_it)) ** power


def param_groups(module: Trainable, cfg: Config, step: int, method: Method | None = None) -> list[dict]:
    """The method's parameter groups (default: backbone lr, head + classifiers lr × lr_head, localizer
    lr_localizer, method.md §4), each with its ``initial_lr``."""
    o = cfg.optim(step)
    groups = method.param_groups(module, o) if method is not None else default_param_groups(module, o)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def make_optimizer(cfg: Config, module: Trainable, step: int, method: Method | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) over the method's parameter groups (method.md §4); fused when ``run.fused_sgd``."""
    o = cfg.optim(step)
    return fast.sgd(
        param_groups(module, cfg, step, method),
        o.lr,
        o.momentum,
        o.nesterov,
        o.weight_decay,
        fused=True if cfg.run.fused_sgd else False,
    )


def iterations_per_epoch(cfg: Config, step: int, loader_len: int) -> int:
    """Iterations of one epoch: the loader's length, capped by the phase's ``max_iters_per_epoch``."""
    iters = loader_len
    # run.max_iters_per_epoch is being removed in favour of the per-phase field; read while it exists.
    for cap in (getattr(cfg.run, "max_iters_per_epoch", None), cfg.optim(step).max_iters_per_epoch):
        if cap:
            iters = min(iters, cap)
    return iters


def make_scheduler(
    optimizer: torch.optim.Optimizer, o: OptimConfig, iters: int, constant_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LR schedule of ``o.policy`` over ``o.epochs × iters`` iterations (method.md §4)."""
    max_it = o.epochs * iters
    constant_its = constant_epochs * iters
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, max_it, o.policy, o.power, constant_its)
    )


# ---------------------------------------------------------------------------------------------------------------
# Placement and speed switches


def prepare_models(
    cfg: Config,
    module: Trainable,
    old_model: nn.Module | None,
    device: torch.device,
    world: int,
    find_unused: bool,
    compile: bool | None = None,
    amp: str | None = None,
) -> tuple[Trainable, nn.Module, nn.Module | None]:
    """Place the trainable and the old model on ``device`` and apply the ``run.*`` speed switches.

    Returns ``(module, net, old_model)``: ``module`` is the bare trainable (state dicts, evaluation), ``net`` what
    the losses call (DDP / channels_last-gradient wrapper / compiled), ``old_model`` the frozen old model as the
    losses call it. Every switch keeps the parameters' identity, so optimisers and checkpoints are unaffected.
    ``compile`` overrides ``run.compile`` (benchmarks compile separately to keep eager copies); ``amp`` is the
    resolved autocast mode (default ``run.amp``).
    """
    compile = cfg.run.compile if compile is None else compile
    amp = cfg.run.amp if amp is None else amp
    if cfg.run.reuse_heap and device.type == "cpu":
        fast.reuse_heap()
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
        # The engine never uses the eager old model again: fold it in place, and run it under no_grad (what
        # torch.compile traces; its outputs need no copy out of inference_mode) — peak RSS stays at fp32 eager's.
        old_model = fast.freeze_old_model(old_model, amp, inference_mode=False, in_place=True)
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
