"""Shared pieces of the benchmarks: machine description, timing statistics, and the step-iteration setup that
reuses the engine's real code path (``engine.build_model``, ``get_method``, ``Trainable``, ``param_groups``,
``autocast_context``, ``Method.losses`` / ``Method.step0_losses``)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from wilson_ray import engine, fast
from wilson_ray.config import Config, resolve_config
from wilson_ray.methods import get_method
from wilson_ray.methods.base import Batch, Context, Method, Trainable
from wilson_ray.protocol import Task, get_task

TASK = "15-5"


# ---------------------------------------------------------------------------------------------------------------
# Machine and statistics


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info(device: torch.device | None = None) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "time": _dt.datetime.now().strftime("%H:%M:%S"),
        "loadavg_start": load_average(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["gpu"] = None
    return info


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarise(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "times_s": [round(t, 4) for t in times],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# The step iteration


@dataclass
class StepOptions:
    backbone: str = "resnet101"
    size: int = 512
    batch: int = 2
    step: int = 1
    method: str = "wilson"
    amp: str = "bf16"  # none | bf16 | fp16
    channels_last: bool = True
    compile: bool = False  # torch.compile of the trainable and the old model (run.compile)
    compile_old: bool = False  # torch.compile of the old model only, with inductor freezing (weights as constants)
    old_model: str = "frozen"  # engine (Method.old_outputs under no_grad) | inference | frozen (BN folded, bf16)
    fused_sgd: bool = True
    # Proposed changes outside the engine, measured here (see BENCHMARKS.md "Recommended changes"):
    valid_taps: bool = True  # ASPP dilated convs as per-tap GEMMs over valid pixels (wilson_ray.fast.use_valid_taps_)
    cl_grads: bool = True  # loss gradients made channels_last before they enter the network (fast.ChannelsLastGradients)
    zbar_amp: bool = False  # the localizer's target pass z̄ under the ambient autocast, not fp32 (methods/wilson.py)
    device: str = "cpu"
    seed: int = 0


@dataclass
class StepSetup:
    opts: StepOptions
    cfg: Config
    task: Task
    method: Method
    device: torch.device
    module: Trainable  # eager, unwrapped
    old_eager: nn.Module | None  # the old model as the engine builds it (before any fast-path wrapping)
    ctx: Context  # what the timed iteration uses (compiled / frozen old model when asked)
    eager_ctx: Context  # the same modules uncompiled (FLOP counting, profiling)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batch: Batch
    epoch: int
    build_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def make_config(o: StepOptions) -> Config:
    """The preset of the backbone (``demo`` for ``small``, ``voc-15-5`` otherwise) with the benchmark's sizes."""
    preset = "demo" if o.backbone == "small" else "voc-15-5"
    overrides = {
        "model.backbone": o.backbone, "model.pretrained": None, "data.crop_size": o.size,
        "data.batch_size": o.batch, "run.amp": o.amp, "run.channels_last": o.channels_last,
        "run.compile": o.compile, "run.device": o.device, "run.progress": False, "data.task": TASK,
    }
    return resolve_config(preset, method=o.method, overrides=overrides, source=f"benchmark ({preset})")


def make_batch(task: Task, step: int, batch: int, size: int, device: torch.device, seed: int = 0) -> Batch:
    """Random data in memory: normalised-ish images, random masks (5 % void), two new classes positive per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    c = task.num_classes(step)
    n_old = task.num_old(step)
    masks = torch.randint(0, c if step == 0 else 1, (batch, size, size), generator=g)
    if step == 0:
        void = torch.rand(batch, size, size, generator=g) < 0.05
        masks = masks.masked_fill(void, 255)
    labels = torch.zeros(batch, c - 1)
    if step == 0:
        for b in range(batch):
            present = masks[b][masks[b] < 255].unique()
            labels[b, present[present > 0] - 1] = 1.0
    else:
        new_cols = torch.arange(n_old - 1, c - 1)
        for b in range(batch):
            pick = new_cols[torch.randperm(len(new_cols), generator=g)[: min(2, len(new_cols))]]
            labels[b, pick] = 1.0
    return Batch(images.to(device), masks.to(device), labels.to(device))


def calibrate_bn_(model: nn.Module, images: torch.Tensor) -> None:
    """Give every BatchNorm the running statistics of ``images`` (one train-mode forward, cumulative average),
    as a trained model has; a random-init old model in eval mode with (0, 1) statistics has exploding features."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(images, upsample=False)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)


def prime_localizer_(localizer: nn.Module, num_old: int, seed: int = 7, scale: float = 0.3, bias: float = 5.0) -> None:
    """Make a random-init localizer confident on background and the new classes (as after its pre-training
    epochs), so that ℓ_SSS's pseudo ground truth is non-empty and its per-image gate passes."""
    last = localizer.layers[-1]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * scale)
        last.bias.zero_()
        last.bias[0] = bias
        last.bias[num_old:] = bias


def realistic_init_(model: nn.Module, old_model: nn.Module | None, localizer: nn.Module | None, method: Method,
                    batch: Batch) -> None:
    """Default ``init`` of :func:`build_setup`: BN statistics of a trained model (from other random images than
    the batch's, so the new model's batch statistics differ from the old model's running ones as in training),
    a primed localizer."""
    other = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(12345))
    if old_model is not None:
        calibrate_bn_(old_model, other)
        old_model.eval()
        model.load_state_dict(old_model.state_dict(), strict=False)
    else:
        calibrate_bn_(model, other)
    if localizer is not None:
        prime_localizer_(localizer, method.num_old)


def build_setup(o: StepOptions, init: Callable | None = realistic_init_) -> StepSetup:
    """Models, method, optimiser and one batch, built as ``engine.train_step`` builds them (random init).

    ``init(model, old_model, localizer, method, batch)`` runs on the fp32 eager modules before any fast-path
    conversion (``None``: plain random init)."""
    t0 = time.perf_counter()
    torch.manual_seed(o.seed)
    cfg = make_config(o)
    device = engine.resolve_device(o.device)
    method_cls = get_method(cfg.method.name)
    task = engine._task_of(cfg, method_cls)
    step = task.check_step(o.step)
    method = method_cls(method_cls.Params(**cfg.method.params), task, step, no_mask=cfg.data.no_mask)
    model = engine.build_model(cfg, task, step)
    old_model = None
    if step > 0:
        old_model = engine.build_model(cfg, task, step - 1)
        # The step-t model starts from the step t-1 weights (new classifier random), as in train_step.
        model.load_state_dict(old_model.state_dict(), strict=False)
        old_model.eval().requires_grad_(False)
        method.on_model_ready(model)
    localizer = method.build_localizer(model.backbone.out_channels, cfg.model.norm) if step > 0 else None
    batch = make_batch(task, step, o.batch, o.size, torch.device("cpu"), o.seed)
    if init is not None:
        init(model, old_model, localizer, method, batch)
    batch = Batch(batch.images.to(device), batch.masks.to(device), batch.labels.to(device))
    module = Trainable(model, localizer).to(device)
    if old_model is not None:
        old_model.to(device)
    if cfg.run.channels_last:
        module.to(memory_format=torch.channels_last)
        if old_model is not None:
            old_model.to(memory_format=torch.channels_last)
    notes = []
    if o.valid_taps:
        n = fast.use_valid_taps_(model) + (fast.use_valid_taps_(old_model) if old_model is not None else 0)
        notes.append(f"{n} dilated convolutions as valid-tap GEMMs")
    old_run = old_model
    if old_model is not None and o.old_model != "engine":
        if o.old_model == "inference":
            old_run = fast.FrozenOldModel(old_model, dtype=None, fold_bn=False)
        elif o.old_model == "frozen":
            old_run = fast.freeze_old_model(old_model, cfg.run.amp,
                                            inference_mode=not (cfg.run.compile or o.compile_old))
            notes.append(f"old model: {old_run.folded} BatchNorms folded into convs, weights "
                         f"{'bf16' if old_run.dtype is not None else 'fp32'}, inference_mode")
        else:
            raise ValueError(f"--old-model: {o.old_model!r}, expected engine, inference or frozen")
        if cfg.run.channels_last:
            old_run.to(memory_format=torch.channels_last)
    net: nn.Module = module
    eager_ctx = Context(net=module, module=module, old_model=old_run)
    if o.cl_grads and cfg.run.channels_last:
        net = fast.ChannelsLastGradients(module)
        eager_ctx = Context(net=net, module=module, old_model=old_run)
    if cfg.run.compile:
        net = torch.compile(net)
    if old_run is not None and (cfg.run.compile or o.compile_old):
        if o.compile_old:
            import torch._inductor.config as inductor_config

            # Frozen weights become constants: inductor folds them and pre-packs them for oneDNN (inference only).
            inductor_config.freezing = True
        old_run = torch.compile(old_run)
    ctx = Context(net=net, module=module, old_model=old_run)

    oc = cfg.optim(step)
    groups = engine.param_groups(module, cfg, step)
    if o.fused_sgd:
        optimizer = fast.sgd(groups, oc.lr, oc.momentum, oc.nesterov, oc.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=oc.lr, momentum=oc.momentum, nesterov=oc.nesterov,
                                    weight_decay=oc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: engine.lr_factor(it, 10**6, oc.policy,
                                                                                         oc.power, 0))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    # After the localizer pre-training, so every WILSON term (seg, cls, loc, sss with PAMR, enc) is active.
    epoch = getattr(method.p, "pseudo_epochs", 0) if step > 0 else 0
    module.train()
    return StepSetup(o, cfg, task, method, device, module, old_model, ctx, eager_ctx, optimizer, scheduler,
                     scaler, batch, epoch, time.perf_counter() - t0, notes)


def wilson_losses_zbar_amp(self, ctx: Context, batch: Batch, epoch: int):
    """``Wilson.losses`` with one change (proposed): the eval-mode localizer pass that gives the targets z̄ runs
    under the ambient autocast (bf16) instead of in fp32, then is cast to fp32 for the target computation."""
    from wilson_ray import losses as L

    pseudo = epoch >= self.p.pseudo_epochs
    out = ctx.net(batch.images, logits=pseudo, upsample=False, localizer=True)
    f, z = out["features"], out["localizer"]
    s_old, f_old = self.old_outputs(ctx, batch.images)
    terms = self.localizer_losses(z, s_old, batch.labels)
    terms["enc"] = self.p.lambda_enc * L.encoder_distillation_loss(f, f_old)
    if pseudo:
        localizer = ctx.module.localizer
        with torch.no_grad():
            was_training = localizer.training
            localizer.eval()
            z_bar = localizer(f.detach()).float()  # the change: no `autocast(enabled=False)` / `f.float()`
            localizer.train(was_training)
            q_hat, weight = self.targets(z_bar, batch.labels, s_old.float())
        terms["seg"] = self.p.lambda_seg * L.segmentation_loss(out["logits"], q_hat, weight)
        terms.update(self.self_supervision(z, z_bar, batch))
    return terms


def losses(s: StepSetup, ctx: Context | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of the benchmark batch, under the engine's autocast, as ``engine.train_step`` computes them."""
    ctx = ctx or s.ctx
    batch = s.batch
    images = batch.images
    if s.cfg.run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch = Batch(images, batch.masks, batch.labels)
    with engine.autocast_context(s.device, s.cfg.run.amp):
        if s.opts.step == 0:
            return s.method.step0_losses(ctx, batch)
        if s.opts.zbar_amp and s.method.name == "wilson":
            return wilson_losses_zbar_amp(s.method, ctx, batch, s.epoch)
        return s.method.losses(ctx, batch, s.epoch)


def iteration(s: StepSetup, ctx: Context | None = None,
              timer: Callable[[str], None] | None = None) -> torch.Tensor:
    """One training iteration exactly as the loop body of ``engine.train_step`` (losses, zero_grad, backward,
    zero gradients for unused parameters, optimiser and scheduler step). ``timer(name)`` marks phase ends."""
    terms = losses(s, ctx)
    total = sum(terms.values())
    if timer:
        timer("losses")
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(total).backward()
    if timer:
        timer("backward")
    for p in s.module.parameters():
        if p.grad is None and p.requires_grad:
            p.grad = torch.zeros_like(p)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    if timer:
        timer("optimizer")
    return total.detach()
