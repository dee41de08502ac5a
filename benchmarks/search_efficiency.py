"""Search efficiency: Optuna-TPE + ASHA vs random search vs a small grid over the same space, on the synthetic data.

    python -m benchmarks.search_efficiency --space benchmarks/spaces/search3.yaml --data-root data/synthetic \
        --out runs/bench-search --json

Three real sweeps (``python -m wilson_ray sweep``, sharing one step-0 cache) over the same parameters:

* ``grid``   — ``search.sampler: grid`` (``grid_points`` per numeric parameter), no early stopping;
* ``random`` — ``search.sampler: random``, no early stopping, ``--random-trials`` trials;
* ``tpe_asha`` — ``search.sampler: tpe`` (paper defaults first) + ASHA on ``epoch``, ``--tpe-trials`` trials.

Budget = trial-epochs actually trained (an ASHA-stopped trial counts the epochs it ran). For each strategy the
anytime curve is: walk every trial's epoch records in time order, add one trial-epoch per record, and when a trial
finishes all its epochs, its final all-mIoU may raise the best. Reported: best final all-mIoU, trial-epochs spent,
the budget at which the strategy first came within ``--tolerance`` mIoU of the grid's best (and as a fraction of
the grid's budget), plus a plot ``search_efficiency.png`` and ``search_efficiency.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks import common

STRATEGIES = ("grid", "random", "tpe_asha")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_efficiency", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="benchmarks/spaces/search3.yaml")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--out", default="runs/bench-search", help="storage of the three sweeps and the results")
    p.add_argument("--grid-points", type=int, default=3)
    p.add_argument("--random-trials", type=int, default=9)
    p.add_argument("--tpe-trials", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1.0, help="mIoU distance to the grid's best that counts")
    p.add_argument(
        "--only",
        choices=STRATEGIES,
        action="append",
        help="run only these strategies (repeatable); the analysis reads whatever sweeps exist in --out",
    )
    p.add_argument("--analyse-only", action="store_true", help="no sweeps, only read --out")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _space_variant(src: Path, dst: Path, strategy: str, a: argparse.Namespace) -> Path:
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    base = data.setdefault("base", {})
    if base.get("config"):
        base["config"] = str((src.parent / base["config"]).resolve())
    search = dict(data.get("search") or {})
    search["seed"] = a.seed
    if strategy == "grid":
        search.update(sampler="grid", grid_points=a.grid_points, evaluate_defaults=False)
        search.pop("num_samples", None)
        data["scheduler"] = {"type": "none"}
    elif strategy == "random":
        search.update(sampler="random", num_samples=a.random_trials, evaluate_defaults=False)
        data["scheduler"] = {"type": "none"}
    else:
        search.update(sampler="tpe", num_samples=a.tpe_trials, evaluate_defaults=True)
        data["scheduler"] = {**(data.get("scheduler") or {}), "type": "asha"}
    data["search"] = search
    data["name"] = f"search-{strategy}"
    dst.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst


def curve(sweep_dir: Path, metric: str = "miou_all") -> dict:
    """Anytime curve of one sweep from its trial records: [(trial-epochs spent, best final metric so far)]."""
    events = []
    planned = {}
    for trial in sorted((sweep_dir / "trials").glob("*")):
        info = json.loads((trial / "trial.json").read_text()) if (trial / "trial.json").is_file() else None
        if info is None:
            continue
        cfg = info.get("config") or {}
        planned[trial.name] = int((cfg.get("incremental") or {}).get("epochs", 0))
        for f in sorted((trial / "epochs").glob("*.json")):
            rec = json.loads(f.read_text())
            events.append((rec["time"], trial.name, int(rec["epoch"]), rec["metrics"].get(metric)))
    events.sort()
    spent, best, points, finals = 0, None, [], {}
    for _, name, epoch, value in events:
        spent += 1
        if epoch >= planned.get(name, 10**9) and value is not None:
            finals[name] = value
            best = value if best is None else max(best, value)
        points.append((spent, best))
    return {"points": points, "trial_epochs": spent, "best": best, "trials": len(planned), "completed": len(finals)}


def first_within(points: list, target: float, tolerance: float) -> int | None:
    for spent, best in points:
        if best is not None and best >= target - tolerance:
            return spent
    return None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        xs = [p[0] for p in r["points"] if p[1] is not None]
        ys = [p[1] for p in r["points"] if p[1] is not None]
        ax.step(xs, ys, where="post", label=f"{name} (best {r['best']:.2f})" if r["best"] is not None else name)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best final all-mIoU so far")
    ax.set_title("Search efficiency, synthetic 15-5 step 1 (WILSON)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = str(Path(a.data_root).resolve())
    walls = {}
    if not a.analyse_only:
        for strategy in a.only or STRATEGIES:
            space = _space_variant(Path(a.space).resolve(), out / f"{strategy}.yaml", strategy, a)
            cmd = [
                sys.executable,
                "-m",
                "wilson_ray",
                "sweep",
                "--space",
                str(space),
                "--storage",
                str(out),
                "--data-root",
                data_root,
                "--no-mlflow",
                "--quiet",
            ]
            t = time.perf_counter()
            with open(out / f"{strategy}.log", "w", encoding="utf-8") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            walls[strategy] = round(time.perf_counter() - t, 1)
            if rc != 0:
                raise SystemExit(f"sweep {strategy} exited with {rc}; see {out / f'{strategy}.log'}")
    results = {s: curve(out / f"search-{s}") for s in STRATEGIES if (out / f"search-{s}" / "trials").is_dir()}
    summary = {
        "benchmark": "search_efficiency",
        "space": a.space,
        "tolerance": a.tolerance,
        "wall_s": walls,
        **common.machine_info(),
    }
    grid = results.get("grid")
    for name, r in results.items():
        row = {k: r[k] for k in ("best", "trial_epochs", "trials", "completed")}
        if grid and grid["best"] is not None:
            hit = first_within(r["points"], grid["best"], a.tolerance)
            row["epochs_to_within_tol_of_grid_best"] = hit
            row["fraction_of_grid_epochs"] = round(hit / grid["trial_epochs"], 3) if hit else None
        summary[name] = row
    if results:
        plot(results, out / "search_efficiency.png")
    (out / "search_efficiency.json").write_text(
        json.dumps({**summary, "curves": {k: v["points"] for k, v in results.items()}})
    )
    if a.json:
        print(json.dumps(summary))
    else:
        for name in results:
            print(name, summary[name])
        print(f"plot: {out / 'search_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
