"""Seconds per forward+backward of an encoder alone (train mode, random init, random input in memory).

    python -m benchmarks.backbone_step --backbone wideresnet38 --size 321 --batch 2 --output-stride 8 --json

For encoders that ``benchmarks/step.py`` (a whole method iteration on the VOC preset at OS 16) does not cover, e.g.
Wide-ResNet-38 at OS 8 as SEAM/SS/EPS and COCO-to-VOC run it. The loss is the mean of the body features, so the
backward pass covers every layer. FLOPs are counted once on the meta device (no compute): forward + backward.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from wilson_ray.models.backbone import BACKBONES, build_backbone


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbone_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="wideresnet38", choices=BACKBONES)
    p.add_argument("--size", type=int, default=321, help="square input size in pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--output-stride", type=int, default=8, choices=[8, 16])
    p.add_argument("--norm", default="bn_leaky")
    p.add_argument("--iters", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def flops(a: argparse.Namespace) -> int:
    """Forward + backward FLOPs of one iteration, counted on meta tensors."""
    with torch.device("meta"):
        body = build_backbone(a.backbone, output_stride=a.output_stride, norm=a.norm).train()
        x = torch.empty(a.batch, 3, a.size, a.size)
        with FlopCounterMode(display=False) as counter:
            body(x).mean().backward()
    return counter.get_total_flops()


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    info = common.machine_info()
    torch.manual_seed(0)
    body = build_backbone(a.backbone, output_stride=a.output_stride, norm=a.norm).train()
    x = torch.randn(a.batch, 3, a.size, a.size)
    times = []
    for i in range(a.warmup + a.iters):
        start = time.perf_counter()
        out = body(x)
        out.mean().backward()
        body.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    total = flops(a)
    stats = common.summarise(times)
    result = {
        "benchmark": "backbone_step",
        "backbone": a.backbone,
        "size": a.size,
        "batch": a.batch,
        "output_stride": a.output_stride,
        "norm": a.norm,
        "threads": torch.get_num_threads(),
        "out_shape": list(out.shape),
        "params_m": round(sum(p.numel() for p in body.parameters()) / 1e6, 2),
        **stats,
        "gflop_per_iter": round(total / 1e9, 1),
        "achieved_gflops": round(total / 1e9 / stats["median_s"], 1),
        "peak_rss_mb": round(common.peak_rss_mb()),
        **info,
        "loadavg_end": common.load_average(),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(
            f"{a.backbone} {a.batch}x{a.size}^2 OS {a.output_stride}: median {stats['median_s']:.2f} s "
            f"(min {stats['min_s']:.2f}), {result['gflop_per_iter']} GFLOP, {result['achieved_gflops']} GFLOP/s, "
            f"peak RSS {result['peak_rss_mb']} MB on {info['cpu_model']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
