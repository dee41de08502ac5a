"""Tensors saved for backward by one WILSON step-1 forward of the benchmark setup (``saved_tensors_hooks``): unique
storages, grouped by the module running when each was saved, the largest ones, and the other live tensors
(issue 28, BENCHMARKS §1A).

    PYTHONPATH=. python benchmarks/oneoff/epyc-2026-12-04/saved_census.py --backbone resnet101 --size 256 \
        --batch 4 --step 1 --fp32-eager
"""

import collections
import gc
import sys

import torch
from torch import nn

from benchmarks import common
from benchmarks.step import options, parse_args

a = parse_args(sys.argv[1:])
torch.set_num_threads(2)
s = common.build_setup(options(a))
stack = ["<top>"]
names = {
    m: n for n, m in list(s.module.named_modules()) + [("old." + n, m) for n, m in s.ctx.old_model.named_modules()]
}


def pre(m, args):
    stack.append(names.get(m, type(m).__name__))


def post(m, args, out):
    stack.pop()


hs = []
for m in list(s.module.modules()) + list(s.ctx.old_model.modules()):
    hs.append(m.register_forward_pre_hook(pre))
    hs.append(m.register_forward_hook(post))
seen = {}


def pack(t):
    try:
        st = t.untyped_storage()
        key = st.data_ptr()
        nb = st.nbytes()
    except Exception:
        return t
    if key not in seen:
        seen[key] = (nb, stack[-1], tuple(t.shape), t.dtype)
    return t


with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    terms = common.losses(s)
params = {p.untyped_storage().data_ptr() for p in s.module.parameters()}
act = {k: v for k, v in seen.items() if k not in params}
tot = sum(v[0] for v in act.values())
print(f"saved (non-parameter) unique storages: {len(act)}, {tot / 2**20:.1f} MiB")
by = collections.defaultdict(int)
for nb, mod, shape, dt in act.values():
    top = ".".join(mod.split(".")[:3])
    by[top] += nb
for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:40]:
    print(f"  {v / 2**20:8.1f} MiB  {k}")
print("largest:")
for k, (nb, mod, shape, dt) in sorted(act.items(), key=lambda kv: -kv[1][0])[:15]:
    print(f"  {nb / 2**20:8.1f} MiB {mod} {shape} {dt}")
# live tensors not saved (gc census)
live = 0
big = []
for o in gc.get_objects():
    if torch.is_tensor(o) and not isinstance(o, nn.Parameter):
        try:
            k = o.untyped_storage().data_ptr()
            nb = o.untyped_storage().nbytes()
        except Exception:
            continue
        if k not in seen and k not in params:
            big.append((nb, tuple(o.shape), o.dtype))
big = sorted(set(big), reverse=True)
print(f"other live tensors (gc-visible): {sum(b[0] for b in big) / 2**20:.1f} MiB; largest", big[:8])
