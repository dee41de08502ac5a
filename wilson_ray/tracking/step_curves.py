"""Per-step old/new mIoU curves of several rows of an incremental task, from their ``results.json`` (docs/results.md
"15-1 with a memory"). Matplotlib (Agg) only.

    python -m wilson_ray.tracking.step_curves --out curves.png wilson=runs/t/wilson wilson+memory=runs/t-mem/wilson
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from wilson_ray.errors import UserError
from wilson_ray.tracking.plots import pyplot, save_figure


def read_curves(results: str | Path) -> dict[str, list[float]]:
    """``{"old": [...], "new": [...], "base": [...]}`` per step of a ``results.json`` (or its folder): the step's own
    old/new columns and the mean IoU of the step-0 classes (background left out); NaN where a column is empty."""
    path = Path(results)
    path = path / "results.json" if path.is_dir() else path
    try:
        steps = json.loads(path.read_text())["steps"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"results {path}: not readable ({err}), expected a results.json of wilson-ray train") from None
    value = lambda v: math.nan if v is None else float(v)  # noqa: E731
    base_names = [n for n in steps[0]["per_class_iou"] if n != "background"]
    curves: dict[str, list[float]] = {"old": [], "new": [], "base": []}
    for s in steps:
        curves["old"].append(value(s["miou_old"]))
        curves["new"].append(value(s["miou_new"]))
        base = [value(s["per_class_iou"].get(n)) for n in base_names]
        base = [v for v in base if not math.isnan(v)]
        curves["base"].append(sum(base) / len(base) if base else math.nan)
    return curves


def mean_curves(results: Sequence[str | Path]) -> dict[str, tuple[list[float], list[float]]]:
    """Per curve (``read_curves``) and step, the mean and the sample std (ddof=1; 0 for one run) over the runs of
    one row, e.g. its seeds; NaN entries are left out of a step's mean (NaN when every run has none)."""
    runs = [read_curves(r) for r in results]
    steps = {len(c["old"]) for c in runs}
    if len(steps) != 1:
        raise UserError(f"results {', '.join(map(str, results))}: runs with {sorted(steps)} steps, expected one task")
    n = steps.pop()
    out = {}
    for key in ("base", "old", "new"):
        means, stds = [], []
        for i in range(n):
            values = [c[key][i] for c in runs if not math.isnan(c[key][i])]
            mean = sum(values) / len(values) if values else math.nan
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            means.append(mean)
            stds.append(math.sqrt(var) if values else math.nan)
        out[key] = (means, stds)
    return out


def step_curves_png(rows: dict[str, str | Path | Sequence[str | Path]], path: str | Path, title: str = "") -> Path:
    """Three panels over the steps, one line per row: mIoU of the step-0 classes, of the step's old classes and of
    the step's new classes. A row given several runs (its seeds) is drawn as their mean with a ± std band."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    panels = [("base", "step-0 classes"), ("old", "old classes of the step"), ("new", "new classes of the step")]
    for label, results in rows.items():
        runs = [results] if isinstance(results, (str, Path)) else list(results)
        curves = mean_curves(runs)
        for ax, (key, _) in zip(axes, panels):
            mean, std = curves[key]
            steps = list(range(len(mean)))
            (line,) = ax.plot(steps, mean, marker="o", label=label if len(runs) == 1 else f"{label} (n={len(runs)})")
            if len(runs) > 1:
                low = [m - s for m, s in zip(mean, std)]
                high = [m + s for m, s in zip(mean, std)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    for ax, (_, name) in zip(axes, panels):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wilson_ray.tracking.step_curves", description=__doc__)
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    parser.add_argument("rows", nargs="+", help="label=folder-or-results.json, one per line of the figure")
    args = parser.parse_args(argv)
    rows = {}
    for item in args.rows:
        label, sep, results = item.partition("=")
        if not sep:
            print(f"error: row {item!r}: expected label=path/to/results.json", file=sys.stderr)
            return 2
        rows[label] = results
    try:
        print(f"wrote {step_curves_png(rows, args.out, args.title)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
