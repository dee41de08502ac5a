"""Checkpoint cache of earlier steps: each is trained once per (data, task, setting, model, seed, earlier-step
config) and reused by every run or sweep trial that needs it.

Concurrency: a per-entry ``fcntl`` lock (released by the kernel when its holder dies); the first caller trains,
the others wait and then read. Entries are written with an atomic rename, so a killed writer leaves no entry, never
a truncated one; an entry that is not a complete checkpoint anyway (copied in half, damaged) is trained again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from wilson_ray.atomic import atomic_write_text
from wilson_ray.config import Config, config_hash
from wilson_ray.filelock import locked
from wilson_ray.methods import get_method

# Fields that do not change the trained weights, so they are left out of the key.
_NEUTRAL = {
    "data": {"num_workers", "val_batch_size", "eval_mode", "val_crop_size"},
    "run": {"device", "progress", "log_interval", "val_interval", "fail_on_nonfinite", "compile", "ddp_find_unused"},
}


def _data_stamp(root: str) -> list:
    """Identity of a dataset folder: its resolved path and the size/mtime of its split lists."""
    path = Path(root).expanduser().resolve()
    stamp: list = [str(path)]
    for sub in ("splits", "split"):
        folder = path / sub
        if folder.is_dir():
            stamp += [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())]
    return stamp


def step_key(cfg: Config, step: int) -> str:
    """Cache key of the checkpoint of ``step`` under ``cfg``: a hash of everything that shapes its weights."""
    d = cfg.to_dict()
    for section, fields in _NEUTRAL.items():
        d[section] = {k: v for k, v in d[section].items() if k not in fields}
    # The folders as written ("data/synthetic" or its absolute path) do not key the entry: the stamp below holds
    # each one resolved, so the same dataset reached either way shares one checkpoint.
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("root", "voc_root")}
    method = get_method(cfg.method.name)
    shared_step0 = method.shares_step0
    # The BCE step 0 keeps its historical key (None); another shared strategy is keyed by its kind only, so every
    # method of that kind (and every sweep trial of it) reuses one checkpoint.
    shared_key = None if method.step0_kind == "bce" else {"step0_kind": method.step0_kind}
    parts = {
        "data": d["data"],
        "stamp": _data_stamp(cfg.data.root) + (_data_stamp(cfg.data.voc_root) if cfg.data.voc_root else []),
        "model": d["model"],
        "step0": d["step0"],
        "run": d["run"],
        "step": step,
        # Step 0 is the same BCE step for every method that shares it (the joint bound trains differently).
        "method": d["method"] if (step > 0 or not shared_step0) else shared_key,
        "incremental": d["incremental"] if step > 0 else None,
        "previous": step_key(cfg, step - 1) if step > 0 else None,
    }
    return config_hash(parts, length=20)


def valid_entry(path: Path) -> bool:
    """True if ``path`` is a complete checkpoint file: torch's zip container with its central directory (written
    last, so a truncated or half-copied file fails) and a pickle record. Cheap: reads the end of the file only."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("/data.pkl") for name in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def preflight(cfg: Config, step: int) -> None:
    """Raise the UserError a bad task/step/data layout would cause, before the cache is touched: a run that
    cannot start writes nothing (no lock, no entry folder) and prints nothing but the error."""
    from wilson_ray.step_setup import build_step_dataset, task_of

    task = task_of(cfg).train
    task.check_step(step)
    if step > 0:
        get_method(cfg.method.name).preflight(cfg.method.args, task, step)
    build_step_dataset(cfg, task, step, "train")
    for source in task.eval_data:
        build_step_dataset(cfg, task, step, "val", source)


def cached_step(cfg: Config, step: int, cache_dir: str | Path, verbose: bool = True, trainer=None) -> Path:
    """Checkpoint of ``step`` for ``cfg``: read from the cache, or trained (with its earlier steps) and stored.

    ``trainer(cfg, step, init, out_dir) -> checkpoint path`` trains a missing step instead of ``engine.train_step``
    in this process (e.g. on a Ray Train worker group); what it returns is published like the engine's."""
    from wilson_ray.engine import train_step

    def train(run_cfg, step, init, out_dir):
        if trainer is not None:
            return Path(trainer(run_cfg, step, init, Path(out_dir)))
        return train_step(run_cfg, step, init_checkpoint=init, out_dir=out_dir, cache_dir=cache_dir).checkpoint

    cache_dir = Path(cache_dir)
    key = step_key(cfg, step)
    entry = cache_dir / key / f"step{step}.pt"
    if entry.is_file() and valid_entry(entry):
        return entry
    preflight(cfg, step)
    init = cached_step(cfg, step - 1, cache_dir, verbose, trainer) if step > 0 else None
    with locked(cache_dir / f"{key}.lock"):
        if entry.is_file():
            if valid_entry(entry):  # another process trained it while we waited
                return entry
            print(
                f"cache: ignoring incomplete entry {entry} (not a complete checkpoint); training it again",
                file=sys.stderr,
            )
            entry.unlink()
        if verbose:
            print(f"cache: training step {step} of task '{cfg.data.task}' once ({entry})", file=sys.stderr)
        entry.parent.mkdir(parents=True, exist_ok=True)
        for stale in entry.parent.glob(".train-*"):  # left by a killed trainer (we hold the lock: none is live)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with tempfile.TemporaryDirectory(dir=entry.parent, prefix=".train-") as tmp:
                run_cfg = copy.deepcopy(cfg)
                os.replace(train(run_cfg, step, init, tmp), entry)  # atomic publish: readers see all or nothing
        except BaseException:
            with contextlib.suppress(OSError):
                entry.parent.rmdir()  # only if empty: a failed first training leaves no entry folder
            raise
        atomic_write_text(cache_dir / key / "config.json", json.dumps(cfg.to_dict(), indent=1, default=str))
    return entry


def previous_step_checkpoint(cfg: Config, step: int, cache_dir: str | Path, trainer=None) -> Path | None:
    """Checkpoint of step ``step - 1`` (trained once and cached), or None at step 0; ``trainer``: see
    ``cached_step``."""
    return cached_step(cfg, step - 1, cache_dir, trainer=trainer) if step > 0 else None


def default_cache_dir() -> Path:
    """``$WILSON_RAY_CACHE``, else ``$XDG_CACHE_HOME/wilson-ray/steps`` (``~/.cache/...``)."""
    if os.environ.get("WILSON_RAY_CACHE"):
        return Path(os.environ["WILSON_RAY_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wilson-ray" / "steps"
