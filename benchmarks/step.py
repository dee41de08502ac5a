"""Seconds per training iteration of a step-0 (BCE) or step-t WILSON iteration, fp32 eager vs the fast path.

    python -m benchmarks.step --backbone resnet101 --size 512 --batch 2 --step 1 --method wilson [--fp32-eager] --json

Random init, random data in memory (one fixed batch), ``--threads`` intra-op threads (2 by default). One iteration
is the loop body of ``engine.train_step`` (zero_grad, losses under the engine's autocast, backward, zero
gradients for unused parameters, SGD Nesterov with the engine's 3 parameter groups, scheduler step); a WILSON
step-1 iteration runs at epoch = pseudo_epochs, so ℓ_SEG, ℓ_CLS, ℓ_LOC, ℓ_SSS (PAMR on) and ℓ_ENC are all active.

Settings. Without ``--fp32-eager`` the fast path is on (``wilson-ray train --fast``, ``config.FAST_PATH``): bf16
autocast, channels_last, the frozen old model (BN folded, bf16 weights, inference_mode), valid-tap ASPP
convolutions and fused SGD; ``--compile`` adds ``torch.compile`` of the trainable and the old model. ``--fp32-eager``
is the engine's defaults (all off). Every switch can be set on its own on top of either; the models are built and
switched by ``step_setup.prepare_models``, exactly as in training.

Output: one JSON object (``--json``) with median/min/max seconds, images/s, peak RSS, FLOPs per iteration
(``torch.utils.flop_counter.FlopCounterMode`` over one eager iteration: new model forward+backward, old model
forward, both localizer passes), achieved TFLOP/s, and the settings; ``--profile`` adds the time split.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import statistics
import sys
import time
from collections import defaultdict

import torch
from torch import nn

from benchmarks import common
from benchmarks.op_profile import OpProfile
from wilson_ray import pseudo_labels, runtime

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) for the MFU column on a GPU; --peak-tflops overrides.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet101", choices=["resnet101", "resnet50", "small"])
    p.add_argument("--size", type=int, default=512, help="square crop size in pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--step", type=int, default=1, help="0: step-0 BCE iteration; >= 1: the method's iteration")
    p.add_argument("--method", default="wilson")
    p.add_argument(
        "--fp32-eager",
        action="store_true",
        help="amp none, no channels_last, no compile, engine "
        "old model, plain SGD (each overridable by the flags below)",
    )
    p.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default=None,
        help="run.amp; default auto (hardware.resolve_amp: bf16 where native, fp16 on a GPU without "
        "bf16, else none) for the fast path, none with --fp32-eager",
    )
    p.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the trainable and the old model (run.compile)",
    )
    p.add_argument(
        "--compile-blocks",
        dest="compile_blocks",
        action="store_true",
        help="regional torch.compile: each ResNet block, one graph per distinct shape "
        "(benchmarks.common.compile_blocks_); set TORCHINDUCTOR_CACHE_DIR to time a cold or a warm cache",
    )
    p.add_argument(
        "--frozen-old-model",
        dest="frozen_old_model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run.frozen_old_model: BN folded + weights in the amp dtype + inference_mode",
    )
    p.add_argument("--fused-sgd", dest="fused_sgd", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--valid-taps",
        dest="valid_taps",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run.valid_taps: ASPP dilated convs as per-tap GEMMs over valid pixels",
    )
    p.add_argument(
        "--reuse-heap",
        dest="reuse_heap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run.reuse_heap: freed tensor memory kept in glibc's heap (process-wide: with --paired, both setups)",
    )
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 5, 20 for small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 2, 3 with compile)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--profile", action="store_true", help="also time the phases of the iteration (eager)")
    p.add_argument(
        "--op-profile",
        dest="op_profile",
        default=None,
        help="write the timed iterations' self CPU time per operator to this JSON (benchmarks.op_profile)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the rate MFU is measured against (TFLOP/s; e.g. from benchmarks.matmul_rate)",
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help="also build the fp32-eager setup and alternate its iterations with the configured ones in "
        "one process: a ratio that survives a noisy machine (peak RSS is then of both)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


SWITCHES = ("amp", "channels_last", "compile", "frozen_old_model", "valid_taps", "fused_sgd", "reuse_heap")


def _switches(o: common.StepOptions) -> dict:
    return {**{k: getattr(o, k) for k in SWITCHES}, "amp_requested": o.amp_requested}


def options(a: argparse.Namespace) -> common.StepOptions:
    """The benchmark's settings: the fast path is ``--fast`` on this hardware (amp ``auto`` resolved by
    ``hardware.resolve_amp``, the other switches from ``hardware.fast_path_plan``); fp32 eager is the engine's
    defaults (all off); explicit flags override either."""
    from wilson_ray import hardware

    fast = not a.fp32_eager
    device = runtime.resolve_device(a.device)
    if fast:
        base = dict(amp="auto", **hardware.fast_path_plan(device))
    else:
        base = dict(
            amp="none",
            channels_last=False,
            compile=False,
            frozen_old_model=False,
            fused_sgd=False,
            valid_taps=False,
            reuse_heap=False,
        )
    for k in base:
        v = getattr(a, k)
        if v is not None:
            base[k] = v
    requested = base["amp"]
    base["amp"] = hardware.resolve_amp(requested, device)
    return common.StepOptions(
        backbone=a.backbone,
        size=a.size,
        batch=a.batch,
        step=a.step,
        method=a.method,
        device=a.device,
        amp_requested=requested,
        compile_blocks=bool(getattr(a, "compile_blocks", False)),
        **base,
    )


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def count_flops(s: common.StepSetup) -> int:
    """FLOPs of one eager iteration (FlopCounterMode counts matmuls/convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from wilson_ray import fast

    # Nominal FLOPs: valid-tap convolutions are counted as the plain convolutions they replace.
    mods = [m for m in (s.module, s.eager_ctx.old_model) if m is not None]
    switched = [fast.use_plain_convs_(m) for m in mods]
    try:
        with FlopCounterMode(display=False) as counter:
            common.iteration(s, s.eager_ctx)
        common.sync(s.device)
    finally:
        for m, n in zip(mods, switched):
            if n:
                fast.use_valid_taps_(m)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------------
# Profile: per-phase wall time on the eager modules


class _Timed(nn.Module):
    def __init__(self, inner: nn.Module, key: str, acc: dict, device: torch.device):
        super().__init__()
        self.inner, self.key, self.acc, self.device = inner, key, acc, device

    def forward(self, *args, **kwargs):
        common.sync(self.device)
        t = time.perf_counter()
        out = self.inner(*args, **kwargs)
        common.sync(self.device)
        self.acc[self.key] += time.perf_counter() - t
        return out


def profile(s: common.StepSetup, iters: int) -> dict:
    """Median seconds per phase over ``iters`` eager iterations (after the timed run, so already warm)."""
    from wilson_ray.methods.base import Context

    acc: dict[str, float] = defaultdict(float)
    dev = s.device
    ctx = Context(
        net=_Timed(s.eager_ctx.net, "net_forward", acc, dev),
        module=s.module,
        old_model=_Timed(s.eager_ctx.old_model, "old_forward", acc, dev) if s.eager_ctx.old_model else None,
    )
    hooks = []
    loc = s.module.localizer
    if loc is not None:
        start = {}

        def pre(mod, args):
            common.sync(dev)
            start["t"] = time.perf_counter()

        def post(mod, args, out):
            common.sync(dev)
            acc["localizer_train" if mod.training else "localizer_eval"] += time.perf_counter() - start["t"]

        hooks = [loc.register_forward_pre_hook(pre), loc.register_forward_hook(post)]
    real_pamr = pseudo_labels.pamr

    def timed_pamr(*args, **kwargs):
        common.sync(dev)
        t = time.perf_counter()
        out = real_pamr(*args, **kwargs)
        common.sync(dev)
        acc["pamr"] += time.perf_counter() - t
        return out

    pseudo_labels.pamr = timed_pamr
    per_iter: list[dict] = []
    try:
        for _ in range(iters):
            acc.clear()
            common.sync(dev)
            marks = {"t": time.perf_counter()}

            def timer(name):
                common.sync(dev)
                now = time.perf_counter()
                acc[name] += now - marks["t"]
                marks["t"] = now

            t0 = time.perf_counter()
            common.iteration(s, ctx, timer)
            acc["total"] = time.perf_counter() - t0
            per_iter.append(dict(acc))
    finally:
        pseudo_labels.pamr = real_pamr
        for h in hooks:
            h.remove()
    med = {k: statistics.median(d.get(k, 0.0) for d in per_iter) for k in per_iter[0]}
    loc_train, loc_eval = med.get("localizer_train", 0.0), med.get("localizer_eval", 0.0)
    new_fwd = med.get("net_forward", 0.0) - loc_train
    split = {
        "new_model_forward_s": new_fwd,
        "backward_s": med.get("backward", 0.0),
        "new_model_fwd_bwd_s": new_fwd + med.get("backward", 0.0),
        "old_model_forward_s": med.get("old_forward", 0.0),
        "localizer_passes_fwd_s": loc_train + loc_eval,
        "pamr_s": med.get("pamr", 0.0),
        "losses_and_targets_s": med.get("losses", 0.0)
        - med.get("net_forward", 0.0)
        - med.get("old_forward", 0.0)
        - loc_eval
        - med.get("pamr", 0.0),
        "optimizer_step_s": med.get("optimizer", 0.0),
        "total_s": med.get("total", 0.0),
    }
    split["note"] = (
        "eager modules; backward includes the localizer's backward; localizer_passes_fwd_s = the "
        "train-mode pass (inside the new model's forward) + the eval-mode target pass"
    )
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in split.items()}


# ---------------------------------------------------------------------------------------------------------------


def run(a: argparse.Namespace) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    o = options(a)
    iters = a.iters if a.iters is not None else (20 if a.backbone == "small" else 5)
    compiled = o.compile or o.compile_blocks
    warmup = a.warmup if a.warmup is not None else (3 if compiled else 2)
    s = common.build_setup(o)
    info = common.machine_info(s.device)
    build_rss = common.peak_rss_mb()  # the build's own peak (BN calibration forward), before any iteration

    warm_times = []
    for _ in range(warmup):
        common.sync(s.device)
        t = time.perf_counter()
        common.iteration(s)
        common.sync(s.device)
        warm_times.append(time.perf_counter() - t)
    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    times, cpu = [], []
    loss = None
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ops = OpProfile(a.op_profile)
    ops.start()
    for _ in range(iters):
        common.sync(s.device)
        t, c = time.perf_counter(), time.process_time()
        loss = common.iteration(s)
        common.sync(s.device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    ops.stop(iters)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / iters
    stats = common.summarise(times)
    out = {
        "benchmark": "step",
        "backbone": o.backbone,
        "size": o.size,
        "batch": o.batch,
        "step": o.step,
        "method": o.method,
        **_switches(o),
        "compile_blocks": o.compile_blocks,
        "fp32_eager": bool(a.fp32_eager),
        "threads": torch.get_num_threads(),
        "device": str(s.device),
        "iters": iters,
        "warmup": warmup,
        **stats,
        "images_per_s": o.batch / stats["median_s"],
        # CPU seconds of this process (all threads) per iteration: less sensitive to other load than wall time
        "cpu_s_median": statistics.median(cpu),
        # page faults per iteration: freshly mapped allocator memory the kernel must zero on first touch
        "minor_faults_per_iter": round(faults),
        "warmup_times_s": [round(t, 3) for t in warm_times],
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "build_peak_rss_mb": round(build_rss, 1),
        "build_s": round(s.build_s, 2),
        "final_loss": float(loss) if loss is not None else None,
    }
    if compiled and warm_times:
        out["compile_s_approx"] = round(warm_times[0] - stats["median_s"], 2)
    if s.device.type == "cuda":
        out["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(s.device) / 2**20, 1)
    out["loadavg_end"] = common.load_average()
    if a.profile:
        out["profile"] = profile(s, max(3, min(iters, 5)))
    if not a.no_flops:
        flops = count_flops(s)
        out["flops_per_iter"] = flops
        out["achieved_tflops"] = flops / stats["median_s"] / 1e12
        # --peak-tflops (e.g. benchmarks.matmul_rate's measured rate) on any device; else a GPU's datasheet peak
        peak = a.peak_tflops
        if peak is None and s.device.type == "cuda":
            name = torch.cuda.get_device_name(s.device)
            peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
        if peak:
            out["peak_tflops"] = peak
            out["mfu"] = out["achieved_tflops"] / peak
    out["notes"] = s.notes
    out.update(info)
    return out


def run_paired(a: argparse.Namespace) -> dict:
    """Alternate fp32-eager and configured iterations; per-pair ratios fp32 / configured."""
    if a.threads:
        torch.set_num_threads(a.threads)
    o = options(a)
    ref_args = argparse.Namespace(
        **{
            **vars(a),
            "fp32_eager": True,
            "amp": None,
            "channels_last": None,
            "compile": None,
            "frozen_old_model": None,
            "fused_sgd": None,
            "valid_taps": None,
            "reuse_heap": None,
            "compile_blocks": False,
        }
    )
    r = options(ref_args)
    iters = a.iters if a.iters is not None else (20 if a.backbone == "small" else 5)
    warmup = a.warmup if a.warmup is not None else (3 if o.compile or o.compile_blocks else 2)
    fast_s, ref_s = common.build_setup(o), common.build_setup(r)
    info = common.machine_info(fast_s.device)
    warm_fast = []
    for _ in range(warmup):
        t = time.perf_counter()
        common.iteration(fast_s)
        warm_fast.append(round(time.perf_counter() - t, 2))  # the first one includes any compilation
        common.iteration(ref_s)
    t_fast, t_ref, c_fast, c_ref = [], [], [], []
    for i in range(iters):
        order = [(fast_s, t_fast, c_fast), (ref_s, t_ref, c_ref)]
        for s, tl, cl in order if i % 2 == 0 else order[::-1]:
            common.sync(s.device)
            t, c = time.perf_counter(), time.process_time()
            common.iteration(s)
            common.sync(s.device)
            tl.append(time.perf_counter() - t)
            cl.append(time.process_time() - c)
    ratios = [x / y for x, y in zip(t_ref, t_fast)]
    out = {
        "benchmark": "step_paired",
        "backbone": o.backbone,
        "size": o.size,
        "batch": o.batch,
        "step": o.step,
        "method": o.method,
        "threads": torch.get_num_threads(),
        "iters": iters,
        "warmup": warmup,
        "fast": {
            **_switches(o),
            "compile_blocks": o.compile_blocks,
            "warmup_times_s": warm_fast,
            **common.summarise(t_fast),
            "cpu_s_median": statistics.median(c_fast),
        },
        "fp32_eager": {**common.summarise(t_ref), "cpu_s_median": statistics.median(c_ref)},
        "ratio_median": statistics.median(ratios),
        "ratios": [round(x, 3) for x in ratios],
        "cpu_ratio_median": statistics.median(c_ref) / statistics.median(c_fast),
        "peak_rss_mb_both": round(common.peak_rss_mb(), 1),
        "loadavg_end": common.load_average(),
    }
    out.update(info)
    return out


def _human(r: dict) -> str:
    lines = [
        f"{r['backbone']} {r['batch']}x{r['size']}^2 step {r['step']} {r['method']}  "
        + " ".join(f"{k}={r[k]}" for k in SWITCHES)
        + f" threads={r['threads']}",
        f"  median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f}, n={r['iters']})  "
        f"{r['images_per_s']:.2f} img/s  peak RSS {r['peak_rss_mb']:.0f} MB  cpu {r['cpu_s_median']:.2f} s/iter",
    ]
    if "flops_per_iter" in r:
        lines.append(f"  {r['flops_per_iter'] / 1e12:.3f} TFLOP/iter, {r['achieved_tflops']:.3f} TFLOP/s")
    if "profile" in r:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in r["profile"].items() if k != "note"))
    lines.append(f"  load {r['loadavg_start']} -> {r['loadavg_end']}  {r['cpu_model']}  torch {r['torch']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.paired:
        r = run_paired(a)
        print(json.dumps(r) if a.json else json.dumps(r, indent=1))
        return 0
    r = run(a)
    print(json.dumps(r) if a.json else _human(r))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
