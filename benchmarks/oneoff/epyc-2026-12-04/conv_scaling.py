"""Per-convolution CPU time of the old model's fp32 eager forward (no_grad) at 4 × 256² and at 2 × 512² (the same
number of pixels × 2), matched by weight shape: which convolutions take more than twice as long at 512²
(issue 28, BENCHMARKS §1C: our fp32 eager is 1.04× the official at 4 × 256² but 0.82× at 2 × 512²).

    PYTHONPATH=. python benchmarks/oneoff/epyc-2026-12-04/conv_scaling.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import common


def conv_times(size: int, batch: int) -> dict[tuple, tuple[float, tuple]]:
    """(weight shape, calls) -> (self CPU ms over 2 forwards, input shape)."""
    o = common.StepOptions(
        backbone="resnet101",
        size=size,
        batch=batch,
        step=1,
        method="wilson",
        amp="none",
        channels_last=False,
        valid_taps=False,
        fused_sgd=False,
        frozen_old_model=False,
    )
    s = common.build_setup(o)
    old, x = s.eager_ctx.old_model, s.batch.images
    with torch.no_grad():
        for _ in range(2):
            old(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            for _ in range(2):
                old(x)
    out = {}
    for e in p.key_averages(group_by_input_shape=True):
        if e.key == "aten::mkldnn_convolution":
            out[(tuple(e.input_shapes[1]), e.count)] = (e.self_cpu_time_total / 1e3, tuple(e.input_shapes[0]))
    return out


def main() -> None:
    torch.set_num_threads(2)
    small, large = conv_times(256, 4), conv_times(512, 2)
    for key, (t_s, in_s) in sorted(small.items(), key=lambda kv: -kv[1][0])[:14]:
        if key in large:
            t_l, in_l = large[key]
            print(f"weight {key[0]} x{key[1]}: {t_s:7.1f} ms {in_s} -> {t_l:7.1f} ms {in_l}  ({t_l / t_s:.2f}x)")
    print(
        {
            "4x256 ms": round(sum(v[0] for v in small.values()), 1),
            "2x512 ms": round(sum(v[0] for v in large.values()), 1),
        }
    )


if __name__ == "__main__":
    main()
