"""Compute a cache entry once across processes: the one "lock -> re-check -> make in a temporary place -> publish"
of the three caches (earlier-step checkpoints, ``cache.cached_step``; before-training passes,
``pass_cache.cached_pass``; offline pseudo-masks, ``weak.pipeline.ensure_pseudo_masks``).

The lock is ``filelock.locked`` (``fcntl``: the kernel releases it when its holder dies, so a killed maker never
blocks the next one). The entry is made inside a fresh temporary folder next to it and moved onto its name with one
``os.replace``, so readers see a complete entry or none; what a killed maker left (its temporary folder, or an
entry its reader finds incomplete) is removed by the next maker, which holds the lock and so knows no maker is live.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from wilson_ray.filelock import locked

T = TypeVar("T")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def compute_once(
    entry: Path,
    make: Callable[[Path], Path],
    read: Callable[[Path], T | None],
    *,
    lock: Path | None = None,
    temp_prefix: str | None = None,
    on_incomplete: Callable[[Path], None] | None = None,
) -> T | None:
    """Publish ``entry`` (a file or a folder) once: under the lock ``lock`` (default ``<entry>.lock`` beside it),
    ``read(entry)`` is tried first and its value returned when not None (another process made the entry while we
    waited); otherwise an entry that exists but does not read is incomplete (``on_incomplete(entry)`` is told, then
    it is removed), and ``make(work)`` makes the entry inside the fresh temporary folder ``work`` (next to
    ``entry``, named ``temp_prefix...``; ``work`` itself may be the entry) and returns its path, which is moved onto
    ``entry`` atomically. Returns None when this call made the entry.

    A failed ``make`` leaves nothing: its temporary folder goes, and so does the entry's folder when this left it
    empty. Callers check for a finished entry before calling (a cheap check outside the lock)."""
    entry = Path(entry)
    parent = entry.parent
    prefix = temp_prefix or f".{entry.name}-"
    parent.mkdir(parents=True, exist_ok=True)
    with locked(lock or parent / f"{entry.name}.lock"):
        found = read(entry) if entry.exists() else None
        if found is not None:
            return found
        if entry.exists() or entry.is_symlink():
            if on_incomplete is not None:
                on_incomplete(entry)
            _remove(entry)
        for stale in parent.glob(f"{prefix}*"):  # left by a killed maker (we hold the lock: none is live)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            made = Path(make(work))
            if made.is_dir():
                os.chmod(made, 0o755)  # mkdtemp creates 0700: a shared cache must stay readable
            os.replace(made, entry)  # atomic publish: readers see all of it or nothing
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty: a failed first make leaves no entry folder
            raise
        shutil.rmtree(work, ignore_errors=True)  # what make left beside the entry (none when work was the entry)
    return None


__all__ = ["compute_once"]
