"""The backbone's dilated stage-4 convolutions: are they slower per FLOP than plain ones here, and does computing
them another way pay?

    python -m benchmarks.dilated_conv --json
    python -m benchmarks.dilated_conv --size 256 --batch 4 --json

One 3×3, 512→512 convolution of ResNet-101's stage 4 at output stride 16 (dilation 2, 'same' padding; the map is
size/16), forward + backward (input and weight gradients), fp32, channels_last, ``--threads`` intra-op threads.
Alternates, round after round: ``plain`` (the same convolution without dilation: the per-FLOP reference),
``dilated`` (``nn.Conv2d``, what the model runs), ``valid_taps`` (``fast.ValidTapsConv2d``: one matrix product per
tap over the valid region, as the ASPP uses) and ``space_to_batch`` (the map split into its dilation² phase
sub-maps, a plain 3×3 convolution over them as a batch, reassembled: exact for 'same' padding). Prints each one's
median and min seconds and its ratio to ``dilated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common
from wilson_ray.fast import ValidTapsConv2d


def space_to_batch_conv(x: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
    """A stride-1 3×3 convolution with dilation ``d`` and padding ``d``, computed as a plain (dilation 1, padding
    1) convolution over the d² phase sub-maps of ``x`` (zero-padded to a multiple of d: the padding a dilated
    'same' convolution reads is zeros too, so the result is exact), reassembled and cropped."""
    b, c, h, w = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, wp - w, 0, hp - h))
    sub = x.reshape(b, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, hp // d, wp // d)
    out = F.conv2d(sub.contiguous(memory_format=torch.channels_last), weight, padding=1)
    o = out.shape[1]
    out = out.reshape(b, d, d, o, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2).reshape(b, o, hp, wp)
    return out[:, :, :h, :w]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dilated_conv", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="input crop; the stage-4 map is size/16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--dilation", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, d, s = args.channels, args.dilation, args.size // 16
    x0 = torch.randn(args.batch, c, s, s).contiguous(memory_format=torch.channels_last)
    dilated = nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False).to(memory_format=torch.channels_last)
    plain = nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    taps = nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False)
    taps.__class__ = ValidTapsConv2d
    for m in (plain, taps):
        m.weight.data.copy_(dilated.weight.data)
    impls = {
        "plain": plain,
        "dilated": dilated,
        "valid_taps": taps,
        "space_to_batch": lambda x: space_to_batch_conv(x, dilated.weight, d),
    }

    x = x0.clone().requires_grad_(True)
    ref = dilated(x)
    for name in ("valid_taps", "space_to_batch"):  # exactness before speed
        err = (impls[name](x) - ref).abs().max().item()
        if err > 1e-3:
            print(f"dilated_conv: {name} differs from nn.Conv2d by {err:.2e}", file=sys.stderr)
            return 1

    def once(f) -> float:
        xi = x0.clone().requires_grad_(True)
        t = time.perf_counter()
        y = f(xi)
        y.backward(torch.ones_like(y))
        return time.perf_counter() - t

    machine = common.machine_info()  # the load average before the timed rounds
    times: dict[str, list[float]] = {k: [] for k in impls}
    for f in impls.values():  # warm-up
        once(f)
    for _ in range(args.rounds):
        for k, f in impls.items():
            times[k].append(once(f))
    flop = 3 * 2 * args.batch * s * s * c * c * 9  # forward + two backward products, 2 FLOP per MAC
    out = {
        "size": args.size,
        "batch": args.batch,
        "map": s,
        "channels": c,
        "dilation": d,
        "threads": args.threads,
        "flop_per_call": flop,
        "machine": machine,
        "results": {},
    }
    base = sorted(times["dilated"])[len(times["dilated"]) // 2]
    for k, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        out["results"][k] = {
            "median_s": round(med, 5),
            "min_s": round(min(ts), 5),
            "vs_dilated": round(base / med, 2),
            "gflop_s": round(flop / med / 1e9, 1),
        }
    out["machine"]["loadavg_end"] = common.load_average()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, r in out["results"].items():
            print(
                f"{k:15s} median {r['median_s'] * 1e3:8.2f} ms  min {r['min_s'] * 1e3:8.2f} ms  "
                f"{r['vs_dilated']:.2f}x dilated  {r['gflop_s']} GFLOP/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
