"""Named start-up phases of a process, in seconds since the process started (standard library only, and
``wilson_ray.atomic``).

``PhaseRecorder.mark(name)`` ends a phase: its offset is the time since the process started, its duration the
time since the previous mark (the first phase's: since the process started). ``write`` stores the phases as
JSON through a temporary file in the same folder and a rename (``atomic.atomic_write_text``), so a reader never
sees half a file. The sweep driver writes ``<sweep folder>/startup.json`` with it (``orchestration/tune_driver``).

Where "process start" is: ``process_start_time()`` reads the process's start time from ``/proc/self/stat``
(field 22, clock ticks after boot) against ``/proc/uptime``, so the interpreter's own start and every import
before this module are inside the first phase (resolution: one clock tick, 10 ms on Linux). Where ``/proc`` is
missing it falls back to the wall time at which this module was first imported (``IMPORT_TIME``), and
``origin_source`` in the JSON says which one was used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from wilson_ray.atomic import atomic_write_text  # standard library only, like this module

IMPORT_TIME = time.time()  # the fallback origin: this module's first import


def process_start_time() -> tuple[float, str]:
    """The wall time (``time.time()`` scale) at which this process started, and its source: ``"proc"`` (from
    ``/proc/self/stat`` and ``/proc/uptime``) or ``"import"`` (``IMPORT_TIME``, where ``/proc`` is unreadable)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
        # the command name (field 2) is in parentheses and may hold spaces: count fields after its ")"
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        started = now - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return IMPORT_TIME, "import"
    return min(started, IMPORT_TIME), "proc"


class PhaseRecorder:
    """An ordered list of named phases; each ``mark`` ends one. Not thread-safe: mark from one thread."""

    def __init__(self, origin: float | None = None, clock: Callable[[], float] = time.time):
        """``origin``: the wall time offsets count from (default: ``process_start_time()``); ``clock``: the
        wall clock (``time.time``; tests pass their own)."""
        if origin is None:
            origin, self.origin_source = process_start_time()
        else:
            if not isinstance(origin, (int, float)) or isinstance(origin, bool) or origin != origin:
                raise ValueError(f"origin: {origin!r}, expected a wall time in seconds")
            self.origin_source = "given"
        self.origin = float(origin)
        self.clock = clock
        self._phases: list[tuple[str, float, float]] = []  # (name, offset, duration)
        self.notes: dict[str, float | int | str | bool | None] = {}

    def mark(self, name: str) -> float:
        """End the phase ``name`` now; returns its duration in seconds. A name is a non-empty string without
        surrounding blanks, used once; a clock that went back counts as no time passing (offsets never
        decrease)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"phase name: {name!r}, expected a non-empty string without surrounding blanks")
        if any(n == name for n, _, _ in self._phases):
            raise ValueError(f"phase {name!r}: already marked, expected each phase once")
        before = self._phases[-1][1] if self._phases else 0.0
        offset = max(self.clock() - self.origin, before)
        self._phases.append((name, offset, offset - before))
        return offset - before

    def has(self, name: str) -> bool:
        """Whether ``name`` has been marked."""
        return any(n == name for n, _, _ in self._phases)

    def note(self, key: str, value: float | int | str | bool | None) -> None:
        """A side figure stored next to the phases (e.g. a background thread's own seconds)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"note key: {key!r}, expected a non-empty string")
        if value is not None and not isinstance(value, (int, float, str, bool)):
            raise ValueError(f"note {key!r}: {value!r}, expected a number, a string, a bool or None")
        self.notes[key] = value

    def phases(self) -> list[dict[str, float | str]]:
        """The phases in the order marked: ``{"name", "offset_s", "duration_s"}`` (seconds, 3 decimals)."""
        return [{"name": n, "offset_s": round(o, 3), "duration_s": round(d, 3)} for n, o, d in self._phases]

    def to_dict(self) -> dict:
        """What ``write`` stores: origin (wall time and source), the phases, the total and the notes."""
        return {
            "origin": round(self.origin, 3),
            "origin_source": self.origin_source,
            "phases": self.phases(),
            "total_s": round(self._phases[-1][1], 3) if self._phases else 0.0,
            "notes": dict(self.notes),
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write ``to_dict()`` as JSON to ``path`` atomically (a temporary file in the same folder, then a
        rename); the folder must exist. Returns the path."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent}: no such folder, expected the folder of {path.name} to exist")
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def read(path: str | os.PathLike) -> dict:
    """A file ``PhaseRecorder.write`` wrote; ``{phase name: duration_s}`` is ``durations(read(path))``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def durations(data: dict) -> dict[str, float]:
    """``{phase name: duration_s}`` of ``to_dict()`` / ``read()`` output, in phase order."""
    return {p["name"]: p["duration_s"] for p in data.get("phases", [])}
