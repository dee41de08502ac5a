"""Fused vs default (foreach) SGD step on ResNet-101-DeepLab-sized fp32 parameters, 2 threads; min over reps."""

import json
import time

import torch

torch.set_num_threads(2)
torch.manual_seed(0)
from torchvision.models import resnet101

m = resnet101()
params = [p for p in m.parameters()]
for p in params:
    p.grad = torch.randn_like(p)
res = {}
for fused in (False, True, False, True):
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=fused or None)
    for _ in range(2):
        opt.step()
    ts = []
    for _ in range(8):
        t = time.perf_counter()
        opt.step()
        ts.append(time.perf_counter() - t)
    res.setdefault("fused" if fused else "foreach", []).append(min(ts))
print(json.dumps({"n_params": sum(p.numel() for p in params), **{k: [round(x, 4) for x in v] for k, v in res.items()}}))
