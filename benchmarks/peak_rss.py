"""Peak memory of a whole command and every process it starts (Ray's raylet, GCS, workers, the MLflow store...).

Linux only (reads /proc).

    python -m benchmarks.peak_rss --json -- bash scripts/demo.sh

Samples the summed resident set size of the command's process tree every ``--interval`` seconds (/proc) and
prints one JSON object: wall seconds, exit code, peak summed RSS, the peak of the largest single process, and the
process count at the peak. Ray daemons started by the command are children of it (``ray.init`` in the driver), so
they are counted; a cluster started beforehand (``ray start``) is not.
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
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm", encoding="utf-8") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry)] = (int(fields[1]), rss_pages * page)
    return out


def tree_rss(root: int) -> tuple[int, int, int]:
    """(summed RSS, largest single RSS, process count) of ``root`` and its descendants, in bytes."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, largest, n, todo = 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            rss = procs[pid][1]
            total, largest, n = total + rss, max(largest, rss), n + 1
        todo.extend(children.get(pid, []))
    return total, largest, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peak_rss", description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--json", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the command after --")
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=sys.stderr)  # the command's output goes to stderr, the result to stdout
    peak, peak_single, peak_n = 0, 0, 0
    while child.poll() is None:
        total, largest, n = tree_rss(child.pid)
        if total > peak:
            peak, peak_n = total, n
        peak_single = max(peak_single, largest)
        time.sleep(a.interval)
    out = {"benchmark": "peak_rss", "cmd": cmd, "returncode": child.returncode,
           "wall_s": round(time.perf_counter() - t0, 1), "peak_tree_rss_mb": round(peak / 2**20, 1),
           "peak_single_rss_mb": round(peak_single / 2**20, 1), "processes_at_peak": peak_n,
           **common.machine_info()}
    print(json.dumps(out) if a.json else f"peak RSS {out['peak_tree_rss_mb']:.0f} MB over {peak_n} processes "
          f"(largest single {out['peak_single_rss_mb']:.0f} MB), {out['wall_s']} s, exit {child.returncode}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
