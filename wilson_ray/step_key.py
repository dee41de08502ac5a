"""What names a step's checkpoint in the step cache: ``step_key`` (a hash of everything that shapes its weights)
and ``default_cache_dir`` (where the cache lives).

Below the engine (which keys its before-training passes by the step t-1 key) and the cache (which trains and
stores the entries): both read the key from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from wilson_ray.data.manifest import data_stamp
from wilson_ray.hashing import config_hash
from wilson_ray.methods import get_method
from wilson_ray.methods.base import StepZero

if TYPE_CHECKING:
    from wilson_ray.config import Config

# Fields that do not change the trained weights, so they are left out of the key.
NEUTRAL = {
    "data": {"num_workers", "val_batch_size", "eval_mode", "val_crop_size"},
    "run": {"device", "progress", "log_interval", "val_interval", "fail_on_nonfinite", "compile", "ddp_find_unused"},
}


def step_key(cfg: Config, step: int) -> str:
    """Cache key of the checkpoint of ``step`` under ``cfg``: a hash of everything that shapes its weights."""
    d = cfg.to_dict()
    for section, fields in NEUTRAL.items():
        d[section] = {k: v for k, v in d[section].items() if k not in fields}
    # The folders as written ("data/synthetic" or its absolute path) do not key the entry: the stamp below holds
    # each one resolved, so the same dataset reached either way shares one checkpoint.
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("root", "voc_root")}
    step0 = get_method(cfg.method.name).step0
    # The BCE step 0 keeps its historical key (None); another shared step-0 class is keyed by its name only, so
    # every method naming it (and every sweep trial of them) reuses one checkpoint.
    shared_key = None if step0 is StepZero else {"step0": getattr(step0, "name", None)}
    parts = {
        "data": d["data"],
        "stamp": data_stamp(cfg.data.root) + (data_stamp(cfg.data.voc_root) if cfg.data.voc_root else []),
        "model": d["model"],
        "step0": d["step0"],
        "run": d["run"],
        "step": step,
        # Step 0 is the same step for every method naming the same step-0 class (the joint bound trains its own).
        "method": d["method"] if (step > 0 or step0 is None) else shared_key,
        "incremental": d["incremental"] if step > 0 else None,
        "previous": step_key(cfg, step - 1) if step > 0 else None,
    }
    return config_hash(parts, length=20)


def default_cache_dir() -> Path:
    """``$WILSON_RAY_CACHE``, else ``$XDG_CACHE_HOME/wilson-ray/steps`` (``~/.cache/...``)."""
    if os.environ.get("WILSON_RAY_CACHE"):
        return Path(os.environ["WILSON_RAY_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wilson-ray" / "steps"
