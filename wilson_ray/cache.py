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
from wilson_ray.config import Config
from wilson_ray.filelock import locked
from wilson_ray.methods import get_method
from wilson_ray.step_key import step_key


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
