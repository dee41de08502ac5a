"""Peak memory of a whole command and every process it starts (Ray's raylet, GCS, workers, the MLflow store...).

Linux only (reads /proc).

    python -m benchmarks.peak_rss --json -- bash scripts/demo.sh

Samples the command's process tree every ``--interval`` seconds (/proc) and prints one JSON object: wall seconds,
exit code, and three peaks:

- ``peak_tree_pss_mb``: summed proportional set size (``/proc/<pid>/smaps_rollup``), the memory the tree really
  holds: a page shared by k processes (libtorch, the Python runtime, forked data-loader workers) counts 1/k in
  each, so the sum counts it once. This is the figure the demo's memory target is about.
- ``peak_tree_rss_mb``: summed resident set size; counts every shared page once *per process*, so on a tree of
  30+ Python processes that all map libtorch it is far above what the machine actually spends.
- ``peak_used_delta_mb``: the machine's used memory (MemTotal - MemAvailable) above its level at the start; it
  includes the page cache of files the command wrote, so it is an upper bound when nothing else runs.

Ray daemons started by the command are children of it (``ray.init`` in the driver), so they are counted; a
cluster started beforehand (``ray start``) is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS bytes) of every live process, from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for pid, fields in common.proc_stats().items():
        try:
            with open(f"/proc/{pid}/statm", encoding="utf-8") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[pid] = (int(fields[1]), rss_pages * page)
    return out


def _pss(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def used_memory() -> int:
    """MemTotal - MemAvailable of the machine, in bytes."""
    info = {}
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def tree_memory(root: int, pss: bool = True) -> tuple[int, int, int, int]:
    """(summed RSS, summed PSS or 0, largest single RSS, process count) of ``root`` and its descendants, in
    bytes. PSS costs the kernel a page-table walk per process (tens of ms for a process mapping libtorch)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    rss_total, pss_total, largest, n, todo = 0, 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            rss = procs[pid][1]
            rss_total, largest, n = rss_total + rss, max(largest, rss), n + 1
            pss_total += _pss(pid) if pss else 0
        todo.extend(children.get(pid, []))
    return rss_total, pss_total, largest, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peak_rss", description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument(
        "--pss-interval",
        type=float,
        default=3.0,
        help="seconds between PSS samples (smaps_rollup is "
        "expensive: sampling it every 0.5 s on a 30-process tree took most of a core here)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the command after --")
    t0 = time.perf_counter()
    base_used = used_memory()
    child = subprocess.Popen(cmd, stdout=sys.stderr)  # the command's output goes to stderr, the result to stdout
    peak_rss, peak_pss, peak_single, peak_n, peak_used = 0, 0, 0, 0, 0
    next_pss = 0.0
    while child.poll() is None:
        want_pss = time.perf_counter() >= next_pss
        if want_pss:
            next_pss = time.perf_counter() + a.pss_interval
        rss, pss, largest, n = tree_memory(child.pid, pss=want_pss)
        if pss > peak_pss:
            peak_pss, peak_n = pss, n
        peak_rss, peak_single = max(peak_rss, rss), max(peak_single, largest)
        peak_used = max(peak_used, used_memory() - base_used)
        time.sleep(a.interval)
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    out = {
        "benchmark": "peak_rss",
        "cmd": cmd,
        "returncode": child.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_tree_pss_mb": mb(peak_pss),
        "peak_tree_rss_mb": mb(peak_rss),
        "peak_used_delta_mb": mb(peak_used),
        "peak_single_rss_mb": mb(peak_single),
        "processes_at_peak_pss": peak_n,
        "sampler_cpu_s": round(time.process_time(), 1),
        **common.machine_info(),
    }
    print(
        json.dumps(out)
        if a.json
        else f"peak PSS {out['peak_tree_pss_mb']:.0f} MB over {peak_n} processes (summed RSS "
        f"{out['peak_tree_rss_mb']:.0f} MB, largest single {out['peak_single_rss_mb']:.0f} MB, machine used "
        f"+{out['peak_used_delta_mb']:.0f} MB), {out['wall_s']} s, exit {child.returncode}"
    )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
