"""Old-model forward at 4x256² (ResNet-101 DeepLab, fp32, 2 threads): engine's no_grad eager vs fast.freeze_old_model;
each with and without channels_last; min over reps, alternated."""

import json
import time

import torch

from benchmarks import common
from wilson_ray import fast

torch.set_num_threads(2)
o = common.StepOptions(
    backbone="resnet101",
    size=256,
    batch=4,
    step=1,
    amp="none",
    channels_last=False,
    frozen_old_model=False,
    valid_taps=False,
    fused_sgd=False,
)
s = common.build_setup(o)
old = s.old_eager
frozen = fast.freeze_old_model(old, "none")
x = s.batch.images


def eager(x):
    with torch.no_grad():
        return old(x, upsample=False)


def froz(x):
    return frozen(x, upsample=False)


res = {"eager": [], "frozen": []}
for _ in range(2):
    eager(x)
    froz(x)
for i in range(5):
    for name, f in (("eager", eager), ("frozen", froz)) if i % 2 == 0 else (("frozen", froz), ("eager", eager)):
        t = time.perf_counter()
        f(x)
        res[name].append(time.perf_counter() - t)
print(
    json.dumps(
        {
            k: {"min": round(min(v), 3), "median": round(sorted(v)[2], 3), "times": [round(t, 3) for t in v]}
            for k, v in res.items()
        }
    )
)
