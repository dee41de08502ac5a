"""One-off (issue 28, point 1): would oneDNN's fused convolution + LeakyReLU speed up the frozen old model?

The frozen old model runs forward only, its BNs folded into the convolutions, so each conv + activation pair of
ResNet-101 could be one oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``, the op inductor's CPU
fusion emits) instead of a convolution and a separate in-place LeakyReLU pass over its output. This times both
forms on the old model's conv shapes at 4 x 256² (channels_last, 2 threads), fp32 and bf16, alternated; prints
one JSON line per shape and dtype.

    python benchmarks/oneoff/epyc-2026-12-07/fused_conv_act.py
"""

import json
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
# (batch, in, out, kernel, stride, dilation, size): representative convs of ResNet-101 at 4 x 256², output stride 16
SHAPES = [
    (4, 64, 64, 1, 1, 1, 64),
    (4, 64, 64, 3, 1, 1, 64),
    (4, 256, 128, 1, 1, 1, 64),
    (4, 128, 128, 3, 1, 1, 32),
    (4, 512, 256, 1, 1, 1, 32),
    (4, 256, 256, 3, 1, 1, 16),
    (4, 1024, 256, 1, 1, 1, 16),
    (4, 512, 512, 3, 1, 2, 16),
]


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1000


for dtype in (torch.float32, torch.bfloat16):
    for n, cin, cout, k, s, d, hw in SHAPES:
        x = torch.randn(n, cin, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k) * 0.05).to(dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(cout).to(dtype)
        pad = d * (k // 2)
        with torch.inference_mode():
            ref = F.leaky_relu(F.conv2d(x, w, b, s, pad, d), 0.01)
            fused = torch.ops.mkldnn._convolution_pointwise(
                x, w, b, [pad] * 2, [s] * 2, [d] * 2, 1, "leaky_relu", [0.01], ""
            )
            err = (ref.float() - fused.float()).abs().max().item()
            eager, one = [], []
            for _ in range(3):  # alternate the two forms
                eager.append(timed(lambda: F.leaky_relu_(F.conv2d(x, w, b, s, pad, d), 0.01)))
                one.append(
                    timed(
                        lambda: torch.ops.mkldnn._convolution_pointwise(
                            x, w, b, [pad] * 2, [s] * 2, [d] * 2, 1, "leaky_relu", [0.01], ""
                        )
                    )
                )
        print(
            json.dumps(
                {
                    "dtype": str(dtype).split(".")[-1],
                    "shape": [n, cin, cout, k, s, d, hw],
                    "eager_ms": round(sorted(eager)[1], 3),
                    "fused_ms": round(sorted(one)[1], 3),
                    "speedup": round(sorted(eager)[1] / sorted(one)[1], 3),
                    "max_abs_diff": err,
                }
            )
        )
