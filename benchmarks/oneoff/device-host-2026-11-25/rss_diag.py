"""Why does run.frozen_old_model raise the peak RSS at 2x512²? Variants of the fp32-eager + frozen-old-model run."""

import ctypes
import sys

import torch

from benchmarks import common, step
from wilson_ray import fast

v = sys.argv[1]
if v in ("noclone", "noclone_trim"):

    def forward(self, x, upsample=True):
        with torch.no_grad():
            return self.model(x, upsample=upsample)

    fast.FrozenOldModel.forward = forward
if v.endswith("trim"):
    real = common.build_setup

    def build(o, **kw):
        s = real(o, **kw)
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return s

    common.build_setup = build
args = [
    "--backbone",
    "resnet101",
    "--size",
    "512",
    "--batch",
    "2",
    "--step",
    "1",
    "--warmup",
    "1",
    "--iters",
    "2",
    "--no-flops",
    "--json",
    "--fp32-eager",
] + ([] if v.startswith("eager") else ["--frozen-old-model"])
sys.exit(step.main(args))
