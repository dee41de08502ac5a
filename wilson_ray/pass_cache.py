"""Cache of what a method's ``before_training`` pass computes with the old model (PLOP's thresholds, RECALL's
replay labels): computed once per (step t-1 checkpoint, step, data, pass settings) and reused by every run and
sweep trial of that step. Files live under ``<step cache>/passes/``, made once under a file lock
(``store.compute_once``) and read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from wilson_ray.atomic import atomic_write
from wilson_ray.hashing import config_hash
from wilson_ray.store import compute_once


def cached_pass(
    cache_dir: str | Path | None,
    pass_key: str | None,
    name: str,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, Any]:
    """``compute()`` once per (``pass_key``, ``name``, ``settings``); later calls read the stored result. Without
    a cache dir or key (a bare ``train_step`` in a test) it just computes."""
    if cache_dir is None or pass_key is None:
        return compute()
    key = config_hash({"step": pass_key, "name": name, "settings": settings}, length=20)
    path = Path(cache_dir) / "passes" / f"{name}-{key}.pt"
    computed: dict[str, Any] = {}

    def make(work: Path) -> Path:
        computed.update(compute())
        cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in computed.items()}
        return atomic_write(work / path.name, lambda tmp: torch.save(cpu, tmp))

    found = compute_once(path, make, _read, lock=path.with_suffix(".lock"))
    return computed if found is None else found


def _read(path: Path) -> dict[str, Any] | None:
    """The stored result, or None for a damaged entry (recomputed)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is an incomplete entry
        return None
