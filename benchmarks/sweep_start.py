"""The sweep's fixed start: a 1-trial sweep run N times, each in a fresh folder; per-phase medians of its
``startup.json`` and, for any checkout, launch -> first epoch from the trial record's file times.

    python -m benchmarks.sweep_start --space search_spaces/demo.yaml --data-root data/synthetic --runs 5 --json
    python -m benchmarks.sweep_start ... --ab /path/to/other/checkout     # alternate this code and another

1. A copy of the space with 1 trial, no early stopping, no seed confirmation stage, one worker per trial holding
   ``--cpus`` CPUs (a direct trial), ``incremental.epochs=2`` unless ``--set`` says otherwise (a trial's last
   epoch is reported after its final figures: with 2 epochs the first report is the plain epoch-1 one).
2. The earlier steps are put in a step cache first (not timed); each run gets a copy of it in its own folder.
3. Each run is ``python -m wilson_ray sweep ... --quiet`` in the checkout under test, also on ``PYTHONPATH`` (this
   one, or with ``--ab`` the other one, imported with this one's virtual environment; alternated ABBA so a steady
   drift of the machine hits both alike), after one untimed warm-up run per checkout (``--warmup``: bytecode,
   page cache).
4. Per run: ``launch_to_first_epoch_s`` (the first epoch record's mtime - the launch time; what a user waits for,
   measured the same way for code that writes no ``startup.json``), ``launch_to_trial_s`` (the trial record),
   ``wall_s`` (the whole sweep process) and, where the checkout writes one, every phase's duration from
   ``<sweep>/startup.json``. Medians per checkout, and with ``--ab`` the median difference this - other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]  # this checkout
NAME = "sweep-start"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="search_spaces/demo.yaml")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--runs", type=int, default=5, help="timed runs per checkout (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per checkout first (default 1)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local cluster and the trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for the trial")
    p.add_argument("--ab", metavar="OTHER_CHECKOUT", help="alternate runs of this code and of this checkout")
    p.add_argument("--no-mlflow", action="store_true", help="sweep without MLflow tracking")
    p.add_argument("--storage", help="folder for the runs (default: a temporary folder)")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--keep", action="store_true", help="keep each run's sweep folder")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.runs < 1 or a.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if a.ab and not (Path(a.ab) / "wilson_ray" / "__init__.py").is_file():
        p.error(f"--ab {a.ab}: no wilson_ray/__init__.py there, expected a checkout of this repository")
    return a


def space_copy(src: Path, dst: Path, cpus: int) -> Path:
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    base = data.setdefault("base", {})
    if base.get("config"):  # relative to the original file
        base["config"] = str((src.parent / base["config"]).resolve())
    data["scheduler"] = {"type": "none"}
    data.pop("confirm", None)
    data["search"] = {**(data.get("search") or {}), "num_samples": 1}
    data["resources"] = {
        **(data.get("resources") or {}),
        "workers_per_trial": 1,
        "cpus_per_worker": cpus,
        "gpus_per_worker": 0,
        "previous_step_workers": 1,
    }
    data["name"] = NAME
    dst.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst


def one_run(checkout: Path, cmd: list[str], folder: Path, cache: Path) -> dict:
    """One sweep in ``folder`` with ``PYTHONPATH=checkout``; its times (see the module docstring)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(cache, folder / "step_cache")
    env = {**os.environ, "PYTHONPATH": str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    launched = time.time()
    t0 = time.perf_counter()
    with open(folder / "sweep.log", "w", encoding="utf-8") as log:
        # cwd too: ``python -m`` puts the current folder first on sys.path, before PYTHONPATH
        proc = subprocess.run(
            [*cmd, "--storage", str(folder)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=checkout
        )
        rc = proc.returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"sweep exited with {rc} (checkout {checkout}); see {folder / 'sweep.log'}")
    trials = sorted((folder / NAME / "trials").glob("*/trial.json"))
    epochs = sorted((folder / NAME / "trials").glob("*/epochs/*.json"))
    if not trials or not epochs:
        raise SystemExit(f"no trial with an epoch record in {folder / NAME / 'trials'}; see {folder / 'sweep.log'}")
    out = {
        "wall_s": round(wall, 2),
        "launch_to_trial_s": round(trials[0].stat().st_mtime - launched, 2),
        "launch_to_first_epoch_s": round(min(p.stat().st_mtime for p in epochs) - launched, 2),
    }
    startup = folder / NAME / "startup.json"
    if startup.is_file():
        data = json.loads(startup.read_text(encoding="utf-8"))
        out["phases"] = {p["name"]: p["duration_s"] for p in data["phases"]}
        out["offsets"] = {p["name"]: p["offset_s"] for p in data["phases"]}
        out["notes"] = data.get("notes", {})
        # the recorder counts from the process's start, a little after the launch above
        out["launch_to_process_start_s"] = round(data["origin"] - launched, 3)
    return out


def medians(runs: list[dict]) -> dict:
    """Per-figure medians over ``runs`` (phases: per phase name, over the runs that recorded it)."""
    out = {
        k: round(statistics.median(r[k] for r in runs), 2)
        for k in ("wall_s", "launch_to_trial_s", "launch_to_first_epoch_s")
    }
    with_phases = [r for r in runs if "phases" in r]
    if with_phases:
        names = list(dict.fromkeys(n for r in with_phases for n in r["phases"]))
        out["phases"] = {
            n: round(statistics.median(r["phases"][n] for r in with_phases if n in r["phases"]), 3) for n in names
        }
        out["offsets"] = {
            n: round(statistics.median(r["offsets"][n] for r in with_phases if n in r["offsets"]), 3) for n in names
        }
    return out


def which_package(checkout: Path) -> str:
    """The ``wilson_ray`` a process with ``PYTHONPATH=checkout`` imports (it must be the checkout's own)."""
    env = {**os.environ, "PYTHONPATH": str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import wilson_ray, os; print(os.path.dirname(os.path.dirname(os.path.abspath(wilson_ray.__file__))))"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=checkout
    )
    path = found.stdout.strip()
    if Path(path).resolve() != checkout.resolve():
        raise SystemExit(f"PYTHONPATH={checkout} imports wilson_ray from {path}, expected the checkout's own")
    return path


def run(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    from benchmarks import common
    from wilson_ray.cache import previous_step_checkpoint
    from wilson_ray.config import parse_overrides
    from wilson_ray.orchestration.search_space import load_search_space

    storage = Path(a.storage or tempfile.mkdtemp(prefix="wilson-ray-sweep-start-")).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    data_root = str(Path(a.data_root).resolve())
    space_path = space_copy(Path(a.space).resolve(), storage / "space.yaml", a.cpus)
    sets = ["incremental.epochs=2", *a.set]  # a later --set wins
    extra = {**parse_overrides(sets), "data.root": data_root}
    space = load_search_space(space_path, extra)
    cache = storage / "step_cache"
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        previous_step_checkpoint(space.base_config(extra), space.step, cache)
    warm_s = time.perf_counter() - t
    info = common.machine_info()

    cmd = [sys.executable, "-m", "wilson_ray", "sweep", "--space", str(space_path), "--data-root", data_root]
    cmd += ["--num-cpus", str(a.cpus), "--trainer", "direct", "--quiet", *[x for kv in sets for x in ("--set", kv)]]
    cmd += ["--no-mlflow"] if a.no_mlflow else []
    sides = {"this": HERE}
    if a.ab:
        sides["other"] = Path(a.ab).resolve()
    packages = {side: which_package(path) for side, path in sides.items()}

    results: dict[str, list[dict]] = {side: [] for side in sides}
    order: list[str] = []
    for w in range(a.warmup):
        for side, path in sides.items():
            one_run(path, cmd, storage / f"warmup_{side}_{w}", cache)
            shutil.rmtree(storage / f"warmup_{side}_{w}", ignore_errors=True)
    for i in range(a.runs):
        pair = list(sides)
        if i % 2:  # ABBA: a steady drift of the machine's speed hits both sides alike
            pair.reverse()
        for side in pair:
            folder = storage / f"run_{side}_{i}"
            r = one_run(sides[side], cmd, folder, cache)
            r["run"] = i
            results[side].append(r)
            order.append(side)
            print(f"{side} run {i + 1}/{a.runs}: launch -> first epoch {r['launch_to_first_epoch_s']:.2f} s, "
                  f"sweep {r['wall_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
            if not a.keep:
                shutil.rmtree(folder, ignore_errors=True)
    out = {
        "benchmark": "sweep_start",
        "space": a.space,
        "set": sets,
        "cpus": a.cpus,
        "mlflow": not a.no_mlflow,
        "runs": a.runs,
        "warmup": a.warmup,
        "order": order,
        "checkouts": {side: str(path) for side, path in sides.items()},
        "packages": packages,
        "cache_warm_s": round(warm_s, 2),
        "storage": str(storage),
        "median": {side: medians(rs) for side, rs in results.items()},
        "per_run": results,
        **info,
        "loadavg_end": common.load_average(),
    }
    if a.ab:
        this, other = results["this"], results["other"]
        diffs = [x["launch_to_first_epoch_s"] - y["launch_to_first_epoch_s"] for x, y in zip(this, other)]
        out["first_epoch_diff_median_s"] = round(statistics.median(diffs), 2)  # this - other, per pair
        out["first_epoch_diffs_s"] = [round(d, 2) for d in diffs]
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    r = run(a)
    text = json.dumps(r, indent=None if a.json else 1)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    if a.json:
        print(text)
    else:
        for side, m in r["median"].items():
            print(
                f"{side} ({r['checkouts'][side]}): median over {r['runs']} runs: launch -> first epoch "
                f"{m['launch_to_first_epoch_s']:.2f} s, launch -> trial record {m['launch_to_trial_s']:.2f} s, "
                f"sweep {m['wall_s']:.1f} s"
            )
            for name, d in (m.get("phases") or {}).items():
                print(f"  {name:<18} {d:7.3f} s   (ends at {m['offsets'][name]:7.3f} s)")
        if "first_epoch_diff_median_s" in r:
            print(f"launch -> first epoch, this - other, median over pairs: {r['first_epoch_diff_median_s']:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
