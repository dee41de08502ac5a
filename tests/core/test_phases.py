"""``wilson_ray.phases``: the start-up phase recorder behind a sweep's ``startup.json`` (issue 28 point 3).

Marks keep their order, offsets never decrease (also when the clock steps back), durations are the gaps between
marks, the file is written through a temporary name and a rename, bad names and values are errors, and the
process start comes from ``/proc`` (before this module's import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from wilson_ray import phases as P
from wilson_ray.phases import PhaseRecorder


class Clock:
    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_marks_keep_order_offsets_and_durations():
    rec = PhaseRecorder(origin=100.0, clock=Clock(101.5, 104.0, 104.0, 110.25))
    assert rec.mark("imports") == pytest.approx(1.5)
    assert rec.mark("ray_init") == pytest.approx(2.5)
    assert rec.mark("empty") == 0.0
    rec.mark("first_epoch")
    got = rec.phases()
    assert [p["name"] for p in got] == ["imports", "ray_init", "empty", "first_epoch"]
    assert [p["offset_s"] for p in got] == [1.5, 4.0, 4.0, 10.25]
    assert [p["duration_s"] for p in got] == [1.5, 2.5, 0.0, 6.25]
    # each offset is the sum of the durations up to it
    assert sum(p["duration_s"] for p in got) == pytest.approx(got[-1]["offset_s"])
    d = rec.to_dict()
    assert d["total_s"] == 10.25 and d["origin"] == 100.0 and d["origin_source"] == "given"
    assert rec.has("ray_init") and not rec.has("tuner")


def test_a_clock_that_steps_back_never_makes_an_offset_decrease():
    rec = PhaseRecorder(origin=0.0, clock=Clock(5.0, 3.0, 7.0))
    for name in ("a", "b", "c"):
        rec.mark(name)
    offsets = [p["offset_s"] for p in rec.phases()]
    assert offsets == sorted(offsets) == [5.0, 5.0, 7.0]
    assert all(p["duration_s"] >= 0 for p in rec.phases())


def test_real_clock_offsets_are_monotone_and_since_process_start():
    rec = PhaseRecorder()
    for i in range(5):
        rec.mark(f"p{i}")
    offsets = [p["offset_s"] for p in rec.phases()]
    assert offsets == sorted(offsets)
    # this interpreter has run (pytest, imports) for a while before the first mark
    assert rec.origin <= P.IMPORT_TIME <= time.time()
    if os.path.exists("/proc/self/stat"):
        assert rec.origin_source == "proc"


def test_process_start_is_before_the_module_import_in_a_fresh_interpreter():
    code = (
        "import time; t0 = time.time(); sum(range(3_000_000))\n"  # some work before the import
        "from wilson_ray import phases\n"
        "start, src = phases.process_start_time()\n"
        "print(src, phases.IMPORT_TIME - start, t0 - start)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    src, import_after_start, t0_after_start = out[0], float(out[1]), float(out[2])
    if src == "proc":
        assert import_after_start > 0
        assert t0_after_start > -0.05  # one clock tick of /proc's resolution
    else:
        assert import_after_start == 0.0


def test_write_is_atomic_and_readable(tmp_path, monkeypatch):
    rec = PhaseRecorder(origin=0.0, clock=Clock(1.0, 3.0))
    rec.mark("a")
    rec.mark("b")
    rec.note("mlflow_thread_s", 2.5)
    path = tmp_path / "startup.json"
    path.write_text("old", encoding="utf-8")
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst)))
        assert path.read_text(encoding="utf-8") == "old"  # the target is untouched until the rename
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert rec.write(path) == path
    ((src, dst),) = renames
    assert dst == str(path) and src != dst and os.path.dirname(src) == str(tmp_path)
    data = P.read(path)
    assert data == json.loads(path.read_text(encoding="utf-8"))
    assert P.durations(data) == {"a": 1.0, "b": 2.0}
    assert data["notes"] == {"mlflow_thread_s": 2.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["startup.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "startup.json"
    path.write_text('{"old": 1}', encoding="utf-8")
    rec = PhaseRecorder(origin=0.0, clock=Clock(1.0))
    rec.mark("a")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        rec.write(path)
    assert path.read_text(encoding="utf-8") == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["startup.json"]


@pytest.mark.parametrize("name", ["", " x", "x ", None, 3])
def test_bad_phase_names_are_errors(name):
    rec = PhaseRecorder(origin=0.0, clock=lambda: 1.0)
    with pytest.raises(ValueError, match="phase name"):
        rec.mark(name)
    assert rec.phases() == []


def test_a_phase_marked_twice_is_an_error():
    rec = PhaseRecorder(origin=0.0, clock=lambda: 1.0)
    rec.mark("ray_init")
    with pytest.raises(ValueError, match="already marked"):
        rec.mark("ray_init")
    assert len(rec.phases()) == 1


@pytest.mark.parametrize("origin", ["now", float("nan"), True])
def test_a_bad_origin_is_an_error(origin):
    with pytest.raises(ValueError, match="origin"):
        PhaseRecorder(origin=origin)


def test_bad_notes_are_errors():
    rec = PhaseRecorder(origin=0.0)
    with pytest.raises(ValueError, match="note key"):
        rec.note("", 1)
    with pytest.raises(ValueError, match="expected a number"):
        rec.note("x", [1, 2])


def test_writing_into_a_missing_folder_is_an_error(tmp_path):
    rec = PhaseRecorder(origin=0.0, clock=lambda: 1.0)
    rec.mark("a")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        rec.write(tmp_path / "missing" / "startup.json")
    assert not (tmp_path / "missing").exists()
