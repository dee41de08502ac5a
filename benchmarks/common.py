"""Shared pieces of the benchmarks: machine description, timing statistics, and the step-iteration setup that
reuses the engine's real code path (``step_setup.build_model``, ``get_method``, ``Trainable``, ``param_groups``,
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

from wilson_ray import fast, runtime, step_setup
from wilson_ray.config import Config, resolve_config
from wilson_ray.methods import get_method
from wilson_ray.methods.base import Batch, Context, Method, Trainable
from wilson_ray.protocol import Task

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
    from wilson_ray import hardware

    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        **hardware.cpu_capability().as_dict(),
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


def proc_stats() -> dict[int, list[str]]:
    """pid -> the fields of ``/proc/<pid>/stat`` after the command name (field 4 on: ppid at [1], utime and stime
    in clock ticks at [11] and [12]) of every live process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                out[int(entry)] = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return out


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
    """The benchmark's settings; every speed switch is the engine's own ``run.*`` field (config.FAST_PATH)."""

    backbone: str = "resnet101"
    size: int = 512
    batch: int = 2
    step: int = 1
    method: str = "wilson"
    amp: str = "bf16"  # run.amp as run: none | bf16 | fp16 (``auto`` is resolved by benchmarks.step.options)
    channels_last: bool = True  # run.channels_last (activations, weights and loss gradients)
    compile: bool = False  # run.compile: torch.compile of the trainable and the old model
    compile_blocks: bool = False  # compile_blocks_ (below): regional compile, one graph per distinct ResNet block
    frozen_old_model: bool = True  # run.frozen_old_model: BN folded, weights in the amp dtype, inference_mode
    valid_taps: bool = True  # run.valid_taps: ASPP dilated convs as per-tap GEMMs over valid pixels
    fused_sgd: bool = True  # run.fused_sgd
    # run.reuse_heap: process-wide once on (glibc's mallopt), so off unless asked: only benchmarks.step's own
    # process turns it on (its options()), never a test process that builds setups
    reuse_heap: bool = False
    device: str = "cpu"
    seed: int = 0
    amp_requested: str | None = None  # run.amp before hardware.resolve_amp (e.g. auto)


@dataclass
class StepSetup:
    opts: StepOptions
    cfg: Config
    task: Task
    method: Method
    device: torch.device
    module: Trainable  # eager, unwrapped
    old_eager: nn.Module | None  # the eager old model when it is what the losses call (None once frozen: a copy)
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
        "model.backbone": o.backbone,
        "model.pretrained": None,
        "data.crop_size": o.size,
        "data.batch_size": o.batch,
        "run.amp": o.amp,
        "run.channels_last": o.channels_last,
        "run.compile": o.compile,
        "run.frozen_old_model": o.frozen_old_model,
        "run.valid_taps": o.valid_taps,
        "run.fused_sgd": o.fused_sgd,
        "run.reuse_heap": o.reuse_heap,
        "run.device": o.device,
        "run.progress": False,
        "data.task": TASK,
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


def realistic_init_(
    model: nn.Module, old_model: nn.Module | None, localizer: nn.Module | None, method: Method, batch: Batch
) -> None:
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
    device = runtime.resolve_device(o.device)
    method_cls = get_method(cfg.method.name)
    task = step_setup.task_of(cfg, method_cls).train
    step = task.check_step(o.step)
    method = method_cls(method_cls.Params(**cfg.method.params), task, step, no_mask=cfg.data.no_mask)
    model = step_setup.build_model(cfg, task, step)
    old_model = None
    if step > 0:
        old_model = step_setup.build_model(cfg, task, step - 1)
        # The step-t model starts from the step t-1 weights (new classifier random), as in train_step.
        model.load_state_dict(old_model.state_dict(), strict=False)
        old_model.eval().requires_grad_(False)
        method.on_model_ready(model)
    localizer = method.build_localizer(model.backbone.out_channels, cfg.model.norm) if step > 0 else None
    batch = make_batch(task, step, o.batch, o.size, torch.device("cpu"), o.seed)
    if init is not None:
        init(model, old_model, localizer, method, batch)
    batch = Batch(batch.images.to(device), batch.masks.to(device), batch.labels.to(device))
    module = Trainable(model, localizer)
    # The engine's own placement and fast-path switches; compiled afterwards so eager copies stay for FLOP counting.
    module, net, old_run = step_setup.prepare_models(cfg, module, old_model, device, 1, False, compile=False)
    if old_run is not old_model:
        # The engine drops its eager old model once frozen (a copy); holding it here would add one model's
        # weights to the fast path's peak RSS that training does not pay.
        old_model = None
    notes = []
    if o.valid_taps:
        n = sum(type(m) is fast.ValidTapsConv2d for m in module.modules())
        notes.append(f"{n} dilated convolutions of the new model as valid-tap GEMMs (and of the old model)")
    if isinstance(old_run, fast.FrozenOldModel):
        notes.append(
            f"old model: {old_run.folded} BatchNorms folded into convs, weights "
            f"{'bf16' if old_run.dtype is not None else 'fp32'}, folded in place, no_grad"
        )
    eager_ctx = Context(net=net, module=module, old_model=old_run)
    if cfg.run.compile:
        net, old_run = step_setup.compile_models(net, old_run)
    if o.compile_blocks:
        n = sum(compile_blocks_(m) for m in (module, old_run) if m is not None)
        notes.append(f"{n} ResNet blocks compiled regionally (benchmarks.common.compile_blocks_)")
    ctx = Context(net=net, module=module, old_model=old_run)
    optimizer = step_setup.make_optimizer(cfg, module, step)
    oc = cfg.optim(step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: step_setup.lr_factor(it, 10**6, oc.policy, oc.power, 0)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    # After the localizer pre-training, so every WILSON term (seg, cls, loc, sss with PAMR, enc) is active.
    epoch = getattr(method.p, "pseudo_epochs", 0) if step > 0 else 0
    module.train()
    return StepSetup(
        o,
        cfg,
        task,
        method,
        device,
        module,
        old_model,
        ctx,
        eager_ctx,
        optimizer,
        scheduler,
        scaler,
        batch,
        epoch,
        time.perf_counter() - t0,
        notes,
    )


def losses(s: StepSetup, ctx: Context | None = None) -> dict[str, torch.Tensor]:
    """The loss terms of the benchmark batch, under the engine's autocast, as ``engine.train_step`` computes them."""
    ctx = ctx or s.ctx
    batch = s.batch
    images = batch.images
    if s.cfg.run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch = Batch(images, batch.masks, batch.labels)
    with runtime.autocast_context(s.device, s.cfg.run.amp):
        if s.opts.step == 0:
            return s.method.step0_losses(ctx, batch)
        return s.method.losses(ctx, batch, s.epoch)


def iteration(s: StepSetup, ctx: Context | None = None, timer: Callable[[str], None] | None = None) -> torch.Tensor:
    """One training iteration exactly as the loop body of ``engine.train_step`` (zero_grad, losses, backward,
    zero gradients for unused parameters, optimiser and scheduler step). ``timer(name)`` marks phase ends."""
    s.optimizer.zero_grad(set_to_none=True)  # before the forward, as engine.train_one_epoch (peak memory)
    terms = losses(s, ctx)
    total = sum(terms.values())
    if timer:
        timer("losses")
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


# Regional compilation: measured slower than the CPU plan on AVX2 (BENCHMARKS §1A), so only the benchmark has it
def compile_blocks_(module: nn.Module, recompile_limit: int = 64) -> int:
    """``torch.compile`` every ResNet residual block (torchvision ``Bottleneck`` / ``BasicBlock``) of ``module`` in
    place (``nn.Module.compile``). The blocks of a stage share one ``forward``, and dynamo lifts parameters to graph
    inputs, so the 22 identical blocks of ResNet-101's stage 3 run one compiled graph: compile time grows with the
    number of distinct block shapes (about eight), not with depth. ``recompile_limit`` (per code object) is raised
    to cover those shapes in train and eval mode. Returns the number of blocks compiled."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
    blocks = [m for m in module.modules() if isinstance(m, (Bottleneck, BasicBlock))]
    for b in blocks:
        b.compile()
    return len(blocks)
