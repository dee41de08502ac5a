"""``run.reuse_heap`` (``fast.reuse_heap``): freed tensor memory stays in glibc's heap, so allocating the same
tensor again faults no new pages in; the engine turns it on for a CPU step only when the switch is on.

The allocation check runs in a fresh process: the setting is process-wide and kept until exit, and the test
process must keep glibc's defaults. Transparent huge pages are disabled in that process (``prctl``), so a page
fault is one 4 KiB page whatever the machine's THP mode is.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from wilson_ray import fast, step_setup
from wilson_ray.config import resolve_config

CHILD = r"""
import ctypes, json, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages only
import torch
from wilson_ray import fast

applied = fast.reuse_heap() if sys.argv[1] == "on" else False

def faults_of_one_allocation():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(64 << 18)  # 64 MiB of float32, above glibc's largest mmap threshold (32 MiB)
    x.fill_(1.0)  # touch every page
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults = [faults_of_one_allocation() for _ in range(10)]
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reused_heap_faults_a_reallocated_tensor_in_once():
    pages = (64 << 20) // 4096  # 16384 pages of 4 KiB
    off, on = _child("off"), _child("on")
    # glibc's default: a 64 MiB block is mmap'd and unmapped on free, so every allocation faults all its pages in
    assert off["applied"] is False
    assert min(off["faults"]) >= 0.9 * pages, off
    # reused heap: the first allocations grow the heap (a small block allocated into a freed big one splits it,
    # so the heap grows up to three times here), then the same pages are reused: the last six fault nothing
    assert on["applied"] is True
    assert on["faults"][0] >= 0.9 * pages and max(on["faults"][4:]) < 0.05 * pages, on


def test_reuse_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(fast, "_heap_reused", False)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", ""))
    assert fast.reuse_heap() is False


@pytest.mark.parametrize(("switch", "device", "called"), [(True, "cpu", 1), (False, "cpu", 0)])
def test_prepare_models_applies_the_switch_on_a_cpu_step(monkeypatch, switch, device, called):
    calls = []
    monkeypatch.setattr(fast, "reuse_heap", lambda: calls.append(1) or True)
    cfg = resolve_config("demo", overrides={"run.reuse_heap": switch, "model.pretrained": None})
    model = step_setup.build_model(cfg, step_setup.task_of(cfg).train, 0)
    step_setup.prepare_models(cfg, model, None, torch.device(device), 1, False)
    assert len(calls) == called
