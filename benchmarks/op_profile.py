"""Where an iteration's CPU time goes, per operator: ``--op-profile FILE`` of ``benchmarks.step`` and
``benchmarks.official_step``, and the side-by-side table of two such files.

    python -m benchmarks.step --fp32-eager --size 512 --batch 2 --op-profile /tmp/ours.json --json
    python -m benchmarks.official_step --official PATH --size 512 --batch 2 --op-profile /tmp/official.json --json
    python -m benchmarks.op_profile /tmp/official.json /tmp/ours.json --top 25

The profile covers the timed iterations only (``torch.profiler``, CPU activity, started after the warm-up), and
stores each operator's *self* CPU time per iteration: summed over threads, so on 2 threads an iteration's total is
up to twice its wall time, and the profiler's own cost inflates ops with many small calls. It says which operators
differ between two runs, not the runs' speed (their own JSON says that). Imports only torch and the standard
library (``official_step`` must not import ``wilson_ray`` before the official code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class OpProfile:
    """A CPU ``torch.profiler`` session started and stopped by hand around the timed iterations."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._prof = None
        self.iters = 0

    def start(self) -> None:
        if self.path is None or self._prof is not None:
            return
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU])
        self._prof.start()

    def stop(self, iters: int) -> None:
        """End the session over ``iters`` iterations and write the per-operator table."""
        if self._prof is None:
            return
        self._prof.stop()
        self.iters = iters
        rows = per_op(self._prof.key_averages(), iters)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"iters": iters, "self_cpu_ms_per_iter": rows}, indent=1) + "\n")
        tmp.replace(self.path)
        self._prof = None


def per_op(events, iters: int) -> dict[str, dict[str, float]]:
    """``{op: {"ms": self CPU ms per iteration, "calls": calls per iteration}}``, largest first."""
    rows = {
        e.key: {"ms": e.self_cpu_time_total / 1e3 / iters, "calls": e.count / iters}
        for e in events
        if e.self_cpu_time_total > 0
    }
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["ms"]))


def compare(a: dict, b: dict, top: int = 25) -> list[str]:
    """Markdown rows: the ``top`` operators by the larger of the two self times, with both and their difference."""
    ra, rb = a["self_cpu_ms_per_iter"], b["self_cpu_ms_per_iter"]
    ops = sorted(set(ra) | set(rb), key=lambda k: -max(ra.get(k, {}).get("ms", 0), rb.get(k, {}).get("ms", 0)))
    lines = ["| operator | A ms/iter (calls) | B ms/iter (calls) | B − A ms |", "|---|---|---|---|"]
    for k in ops[:top]:
        x, y = ra.get(k, {"ms": 0.0, "calls": 0}), rb.get(k, {"ms": 0.0, "calls": 0})
        cells = f"{x['ms']:.0f} ({x['calls']:.0f}) | {y['ms']:.0f} ({y['calls']:.0f})"
        lines.append(f"| `{k}` | {cells} | {y['ms'] - x['ms']:+.0f} |")
    tot_a = sum(v["ms"] for v in ra.values())
    tot_b = sum(v["ms"] for v in rb.values())
    lines.append(f"| all operators | {tot_a:.0f} | {tot_b:.0f} | {tot_b - tot_a:+.0f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="--op-profile JSON (column A)")
    p.add_argument("b", help="--op-profile JSON (column B)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    docs = []
    for f in (args.a, args.b):
        try:
            docs.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            print(f"error: {f}: cannot read an --op-profile JSON ({e})", file=sys.stderr)
            return 2
    print("\n".join(compare(*docs, top=args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
