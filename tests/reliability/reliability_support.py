"""What the reliability tests share: the repository paths, the tiny training flags, a snapshot of a folder (to
prove nothing was written), child processes (their environment, a slow writer to kill mid-write, waiting, SIGKILL)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.methods.test_methods import TINY

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "search_spaces" / "demo.yaml"
# The tiny training config of tests/methods/test_methods.py as CLI flags (step 0 in a few seconds on one core).
SETS = [f"--set={k}={v}" for k, v in TINY.items()]
MANIFEST_CACHE = ".wilson-ray"  # the manifest cache every reader keeps next to the data (or in ~/.cache)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``root`` except the readers' manifest cache."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha1(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and MANIFEST_CACHE not in p.relative_to(root).parts
    }


def child_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONUNBUFFERED": "1"}


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before the sync point: {out[-2000:]} {err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the child's sync point")
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the child finished before it could be killed mid-write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def spawn(tmp_path: Path, code: str, *args: str) -> subprocess.Popen:
    script = tmp_path / f"child_{len(list(tmp_path.glob('child_*.py')))}.py"
    script.write_text(code)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(tmp_path),
        cwd=tmp_path,
    )


# A slow writer for the children: write the first half, signal, then hang until killed.
SLOW = r"""
import os, sys, time
from pathlib import Path
SIGNAL = Path(os.environ.get("SLOW_SIGNAL", "started"))

def slow_write(fh, data):
    fh.write(data[: len(data) // 2]); fh.flush(); os.fsync(fh.fileno())
    SIGNAL.touch()
    time.sleep(300)
    fh.write(data[len(data) // 2:])

def patch_torch_save():
    import io, torch
    real = torch.save
    def save(obj, f, *a, **k):
        buf = io.BytesIO(); real(obj, buf, *a, **k)
        with open(f, "wb") as fh:
            slow_write(fh, buf.getvalue())
    torch.save = save

def patch_write_text():
    def write_text(self, text, encoding=None, errors=None, newline=None):
        with open(self, "wb") as fh:
            slow_write(fh, text.encode(encoding or "utf-8"))
    Path.write_text = write_text
"""
