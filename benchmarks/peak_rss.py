"""Peak memory of a whole command and every process it starts (Ray's raylet, GCS, workers, the MLflow store...).

    python -m benchmarks.peak_rss --json -- bash scripts/demo.sh

Samples the summed resident set size of the command's process tree every ``--interval`` seconds (psutil) and
prints one JSON object: wall seconds, exit code, peak summed RSS, the peak of the largest single process, and the
process count at the peak. Ray daemons started by the command are children of it (``ray.init`` in the driver), so
they are counted; a cluster started beforehand (``ray start``) is not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil

from benchmarks import common


def tree_rss(root: psutil.Process) -> tuple[int, int, int]:
    """(summed RSS, largest single RSS, process count) of ``root`` and its descendants, in bytes."""
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.Error:
        pass
    total, largest, n = 0, 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
        n += 1
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
    root = psutil.Process(child.pid)
    peak, peak_single, peak_n = 0, 0, 0
    while child.poll() is None:
        total, largest, n = tree_rss(root)
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
