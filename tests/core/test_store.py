"""``store.compute_once``: the lock -> re-check -> temporary -> publish of the three caches (the processes-level
cases, a killed writer and two racing processes, are in tests/reliability/test_step_cache_processes.py, through the
step cache)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from wilson_ray.store import compute_once


def _read_text(path: Path) -> str | None:
    text = path.read_text() if path.is_file() else ""
    return text if text.endswith("\n") else None  # a complete entry ends with a newline


def _writer(calls: list, text: str = "made\n"):
    def make(work: Path) -> Path:
        calls.append(work)
        assert work.is_dir() and work.parent.name == "entries" and work.name.startswith(".a.txt-")
        (work / "a.txt").write_text(text)
        return work / "a.txt"

    return make


def test_made_once_then_read(tmp_path):
    entry = tmp_path / "entries" / "a.txt"
    calls: list = []
    assert compute_once(entry, _writer(calls), _read_text) is None  # this call made it
    assert compute_once(entry, _writer(calls), _read_text) == "made\n"  # the next one reads it
    assert len(calls) == 1 and entry.read_text() == "made\n"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["a.txt", "a.txt.lock"]  # no temporary left


def test_incomplete_entry_is_reported_removed_and_made_again(tmp_path):
    entry = tmp_path / "entries" / "a.txt"
    entry.parent.mkdir()
    entry.write_text("half")  # no trailing newline: incomplete
    stale = entry.parent / ".a.txt-killed"
    stale.mkdir()
    (stale / "a.txt").write_text("partial")
    seen: list = []
    assert compute_once(entry, _writer([]), _read_text, on_incomplete=lambda p: seen.append(p.read_text())) is None
    assert seen == ["half"] and entry.read_text() == "made\n" and not stale.exists()


def test_a_folder_entry_is_published_whole_and_readable(tmp_path):
    entry = tmp_path / "entries" / "masks"

    def make(work: Path) -> Path:
        for i in range(3):
            (work / f"{i}.png").write_bytes(b"x" * i)
        (work / "done").write_text("1")
        return work  # the temporary folder is the entry

    read = lambda f: sorted(p.name for p in f.iterdir()) if (f / "done").is_file() else None  # noqa: E731
    assert compute_once(entry, make, read, temp_prefix=".masks-") is None
    assert read(entry) == ["0.png", "1.png", "2.png", "done"] and entry.stat().st_mode & 0o777 == 0o755
    assert compute_once(entry, make, read) == ["0.png", "1.png", "2.png", "done"]
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_make_leaves_no_entry_no_temporary_and_no_empty_folder(tmp_path):
    entry = tmp_path / "cache" / "key" / "step0.pt"

    def make(work: Path) -> Path:
        (work / "step0.pt").write_text("partial")
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        compute_once(entry, make, _read_text, lock=tmp_path / "cache" / "key.lock", temp_prefix=".train-")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["key.lock"]


def _race(entry: str, barrier, log: str) -> None:
    def make(work: Path) -> Path:
        with open(log, "a") as fh:
            fh.write("made\n")
        (work / "a.txt").write_text("made\n")
        return work / "a.txt"

    barrier.wait()
    compute_once(Path(entry), make, _read_text)


def test_two_processes_make_it_once(tmp_path):
    entry, log = tmp_path / "entries" / "a.txt", tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race, args=(str(entry), barrier, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "made\n" and entry.read_text() == "made\n"
