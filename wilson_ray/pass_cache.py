"""Cache of what a method's ``before_training`` pass computes with the old model (PLOP's thresholds, RECALL's
replay labels): computed once per (step t-1 checkpoint, step, data, pass settings) and reused by every run and
sweep trial of that step. Files live under ``<step cache>/passes/``, written atomically under a file lock and read
with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from wilson_ray.atomic import atomic_path
from wilson_ray.filelock import locked
from wilson_ray.hashing import config_hash


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_suffix(".lock")):
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged entry is recomputed
                path.unlink()
        result = compute()
        with atomic_path(path) as tmp:
            torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in result.items()}, tmp)
    return result
