"""One advisory file lock (``fcntl.flock``) for processes that share a folder: the sweep's trial records and
their MLflow sync. Blocking, or with a timeout after which the caller is told it did not get the lock."""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def locked(path: str | Path, timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) inside the block; yields True once held, or False
    when ``timeout`` seconds passed without it (``None``: wait as long as it takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if timeout is None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
