"""Where and how a step runs: rank/world, device, seeds, autocast mode (method.md §4)."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from wilson_ray.errors import UserError


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) in a plain process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the local CUDA device when there is one (LOCAL_RANK under a launcher), else the CPU; a bare
    ``cuda`` gets that same index (``torch.cuda.set_device`` refuses a device without one)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return _local_cuda()
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"run.device: {spec!r} is not a device, expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device: {spec!r} requested but this machine has no CUDA device; use auto or cpu")
    return _local_cuda() if device.type == "cuda" and device.index is None else device


def _local_cuda() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's default generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread and per-worker NumPy/Python seeds."""
    # One intra-op thread per loader process: OpenMP pools of the trainer and its workers spin against each
    # other on a small machine (measured 8x slower iterations on 2 cores with the default).
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast on CPU or GPU, fp16 on GPU (with a GradScaler, see ``engine.train_step``), or nothing.
    ``amp`` is an already resolved mode (``hardware.resolve_amp``)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("run.amp: fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
