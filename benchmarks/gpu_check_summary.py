"""The markdown summary of one ``benchmarks/gpu_check.sh`` output folder, ready for BENCHMARKS.md.

    python -m benchmarks.gpu_check_summary OUT_DIR

One line per step run (``step_*.json`` of ``benchmarks.step``): step, batch, amp, compile, seconds per iteration,
images/s, achieved TFLOP/s, MFU against the measured matmul rate (``matmul.json``) and peak GPU memory; the paired
run's fp32-eager / fast ratio; one line per sweep (``sweep_*.json``: trials completed, best objective) and the
process group the TorchTrainer workers reported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "–"


def step_lines(out: Path) -> list[str]:
    """The step table: one row per ``step_*.json`` in ``out`` (paired runs as their ratio)."""
    lines = [
        "| run | step | batch × size² | amp | compile | s/iter | img/s | TFLOP/s | MFU | GPU mem (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("step_*.json")):
        r = _load(path)
        if r is None:
            continue
        if "ratio_median" in r:  # --paired: fp32 eager against the configured fast path in one process
            lines.append(
                f"| {path.stem} | {r.get('step', '–')} | {r.get('batch', '–')} × {r.get('size', '–')}² | fp32 eager "
                f"vs fast | | ratio {_fmt(r['ratio_median'], '.2f')}× | | | | |"
            )
            continue
        lines.append(
            f"| {path.stem} | {r['step']} | {r['batch']} × {r['size']}² | {r.get('amp', '–')} | "
            f"{'on' if r.get('compile') else 'off'} | {_fmt(r['median_s'], '.4f')} | "
            f"{_fmt(r['images_per_s'], '.1f')} | "
            f"{_fmt(r.get('achieved_tflops'), '.2f')} | {_fmt(r.get('mfu'), '.1%')} | "
            f"{_fmt(r.get('cuda_max_memory_allocated_mb'), '.0f')} |"
        )
    return lines


def sweep_lines(out: Path) -> list[str]:
    """One line per ``sweep_<trainer>.json``: completed trials and the best objective, and the workers' backend."""
    lines = []
    for path in sorted(out.glob("sweep_*.json")):
        s = _load(path)
        if s is None:
            continue
        trials = s.get("trials", [])
        done = [t for t in trials if t.get("outcome") == "completed"]
        values = [t[s["metric"]] for t in done if isinstance(t.get(s["metric"]), (int, float))]
        best = (max if s.get("mode") == "max" else min)(values) if values else None
        lines.append(
            f"- {path.stem.removeprefix('sweep_')}: {len(done)}/{len(trials)} trials completed, best {s['metric']} "
            f"{_fmt(best, '.2f')}"
        )
    backend = out / "sweep_torch_backend.txt"
    if backend.exists():
        seen = sorted({line.strip() for line in backend.read_text(encoding="utf-8").splitlines() if line.strip()})
        lines.append(f"- TorchTrainer workers: {'; '.join(seen) or 'no worker line found'}")
    return lines


def summary(out: Path) -> str:
    """The whole markdown summary of ``out``."""
    mm = _load(out / "matmul.json")
    head = [f"# gpu_check: {out}"]
    if mm:
        head.append(
            f"measured {mm['dtype']} matmul ({mm['size']}²) on {mm['device_name']}: {mm['tflops']:.2f} TFLOP/s "
            f"(torch {mm['torch']}); MFU below is against this rate"
        )
    device = out / "device.txt"
    if device.exists():
        head += ["", "```", device.read_text(encoding="utf-8").strip(), "```"]
    return "\n".join(head + ["", *step_lines(out), "", *sweep_lines(out)]) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        raise SystemExit("usage: python -m benchmarks.gpu_check_summary OUT_DIR (the folder gpu_check.sh wrote)")
    sys.stdout.write(summary(Path(sys.argv[1])))
