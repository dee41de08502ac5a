"""Checkpoint cache of earlier steps: each is trained once per (data, task, setting, model, seed, earlier-step
config) and reused by every run or sweep trial that needs it.

Concurrency (``store.compute_once``): a per-entry ``fcntl`` lock (released by the kernel when its holder dies); the
first caller trains, the others wait and then read. Entries are published with an atomic rename, so a killed writer
leaves no entry, never a truncated one; an entry that is not a complete checkpoint anyway (copied in half, damaged)
is trained again.
"""

from __future__ import annotations

import copy
import json
import sys
import zipfile
from pathlib import Path

from wilson_ray.atomic import atomic_write_text
from wilson_ray.config import Config
from wilson_ray.methods import get_method
from wilson_ray.step_key import step_key
from wilson_ray.store import compute_once


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

    def make(work: Path) -> Path:
        if verbose:
            print(f"cache: training step {step} of task '{cfg.data.task}' once ({entry})", file=sys.stderr)
        return train(copy.deepcopy(cfg), step, init, work)

    def incomplete(path: Path) -> None:
        print(
            f"cache: ignoring incomplete entry {path} (not a complete checkpoint); training it again", file=sys.stderr
        )

    found = compute_once(
        entry,
        make,
        lambda path: path if path.is_file() and valid_entry(path) else None,
        lock=cache_dir / f"{key}.lock",
        temp_prefix=".train-",
        on_incomplete=incomplete,
    )
    if found is None:  # this call trained it: the config beside the entry says what it was trained from
        atomic_write_text(entry.parent / "config.json", json.dumps(cfg.to_dict(), indent=1, default=str))
    return entry


def previous_step_checkpoint(cfg: Config, step: int, cache_dir: str | Path, trainer=None) -> Path | None:
    """Checkpoint of step ``step - 1`` (trained once and cached), or None at step 0; ``trainer``: see
    ``cached_step``."""
    return cached_step(cfg, step - 1, cache_dir, trainer=trainer) if step > 0 else None
