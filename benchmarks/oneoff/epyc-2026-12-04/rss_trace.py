"""RSS of two benchmark iterations, sampled every 2 ms: the maximum and final RSS of each phase (losses = both
forwards, backward, optimizer) per iteration (issue 28, BENCHMARKS §1A).

    PYTHONPATH=. python benchmarks/oneoff/epyc-2026-12-04/rss_trace.py current --backbone resnet101 --size 256 \
        --batch 4 --step 1 --fp32-eager

VARIANT: ``current`` runs ``benchmarks.common.iteration`` as it is; ``zg_first`` also zeroes the gradients before
the losses (how the fix was tried before ``common.iteration`` itself did it; the same since then)."""

import os
import sys
import threading
import time

import torch

from benchmarks import common
from benchmarks.step import options, parse_args

variant = sys.argv[1]
a = parse_args(sys.argv[2:])
torch.set_num_threads(2)
o = options(a)
s = common.build_setup(o)
page = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20


samples = []
stop = False


def sampler():
    while not stop:
        samples.append((time.perf_counter(), rss()))
        time.sleep(0.002)


nparam = sum(p.numel() for p in s.module.parameters() if p.requires_grad)
print(
    f"trainable {nparam / 1e6:.2f} M params = {nparam * 4 / 2**20:.0f} MiB fp32 (grads the same, momentum the same)",
    flush=True,
)
if variant == "zg_first":
    orig_losses = common.losses

    def losses(s_, ctx=None):
        s_.optimizer.zero_grad(set_to_none=True)
        return orig_losses(s_, ctx)

    common.losses = losses
th = threading.Thread(target=sampler, daemon=True)
th.start()
for it in range(2):
    marks = [("start", time.perf_counter())]
    loss = common.iteration(s, None, lambda name: marks.append((name, time.perf_counter())))
    marks.append(("end", time.perf_counter()))
    prev = marks[0][1]
    line = [f"iter {it}: loss {float(loss):.6f}"]
    for name, t in marks[1:]:
        seg = [r for (ts, r) in samples if prev <= ts <= t]
        if seg:
            line.append(f"{name}: max {max(seg):.0f} end {seg[-1]:.0f}")
        prev = t
    print("  ".join(line), flush=True)
stop = True
print(f"ru_maxrss {common.peak_rss_mb():.0f} MB")
