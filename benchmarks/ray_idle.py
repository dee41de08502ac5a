"""An idle local Ray cluster's cost on this machine: ``ray.init`` time, the CPU its daemons take while nothing runs,
``ray.shutdown`` time — with Ray's defaults and with the environment ``wilson-ray sweep`` starts its local
cluster with (``orchestration.cluster.LOCAL_CLUSTER_ENV``), alternated.

    python -m benchmarks.ray_idle --repeats 3 --idle 40 --json

Each measurement is a fresh process (the raylet reads the environment when it starts): ``ray.init`` as the sweep
calls it (2 CPUs, dashboard on 127.0.0.1), a settle time, then the CPU time (user + system, from /proc) of every
process but the measuring one over ``--idle`` seconds, in % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common


def _cpu_seconds(exclude: int) -> float:
    hz = os.sysconf("SC_CLK_TCK")
    return sum(int(f[11]) + int(f[12]) for pid, f in common.proc_stats().items() if pid != exclude) / hz


def child(idle: float, settle: float) -> dict:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    init_s = time.perf_counter() - t0
    time.sleep(settle)
    a = _cpu_seconds(os.getpid())
    time.sleep(idle)
    b = _cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    ray.shutdown()
    return {
        "init_s": round(init_s, 2),
        "idle_cpu_pct_of_core": round(100 * (b - a) / idle, 1),
        "shutdown_s": round(time.perf_counter() - t0, 2),
    }


def run(a: argparse.Namespace) -> dict:
    from wilson_ray.orchestration.cluster import LOCAL_CLUSTER_ENV

    base = {k: v for k, v in os.environ.items() if k not in LOCAL_CLUSTER_ENV}
    rows = []
    for i in range(a.repeats):
        for variant, env in (("ray defaults", base), ("sweep's local cluster", {**base, **LOCAL_CLUSTER_ENV})):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.ray_idle",
                    "--child",
                    "--idle",
                    str(a.idle),
                    "--settle",
                    str(a.settle),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"repeat": i + 1, "variant": variant, **json.loads(out.stdout.strip().splitlines()[-1])})
    return {
        "benchmark": "ray_idle",
        "idle_s": a.idle,
        "settle_s": a.settle,
        "env": LOCAL_CLUSTER_ENV,
        "rows": rows,
        **common.machine_info(),
        "loadavg_end": common.load_average(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_idle", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--idle", type=float, default=40.0, help="seconds of idle cluster measured")
    p.add_argument("--settle", type=float, default=8.0, help="seconds after ray.init before measuring")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.idle, a.settle)))
        return 0
    r = run(a)
    if a.json:
        print(json.dumps(r))
    else:
        for row in r["rows"]:
            print(
                f"{row['repeat']} {row['variant']:<22} ray.init {row['init_s']:5.2f} s  idle daemons "
                f"{row['idle_cpu_pct_of_core']:5.1f} % of a core  ray.shutdown {row['shutdown_s']:4.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
