"""Ray overhead: N trials through ``wilson-ray sweep`` against the very same N trials as plain processes.

    python -m benchmarks.ray_overhead --space search_spaces/demo.yaml --data-root data/synthetic --trials 3 --json

1. A copy of the space with no early stopping (every trial runs all its epochs), no seed confirmation stage (a
   ``confirm:`` section is dropped: the sweep runs exactly the ``--trials`` trials the plain runs repeat),
   ``--trials`` samples, and one worker per trial holding all ``--cpus`` CPUs, so trials run one after another as
   plain processes would.
   ``--trainer direct`` (the sweep's default for one worker) trains in the Tune trial process; ``--trainer torch``
   runs every trial as a one-worker Ray Train ``TorchTrainer``, the path multi-worker trials take.
2. The earlier steps are put in the sweep's step cache first (not timed: both sides reuse it).
3. ``python -m wilson_ray sweep ...`` (Ray start, Tune, Optuna, Ray Train, per-epoch checkpoints and reports,
   MLflow tracking on) is timed as one process.
4. Each finished trial's resolved config is written to YAML and trained again with ``python -m wilson_ray train
   --config trial.yaml --steps <step>`` (same cache), one process after another; the sum is timed.
5. With ``--bracket``, the sweep and the plain runs each run once more (a new folder, the same seeded trials):
   sweep, plain, sweep, plain, all in one invocation. A VM whose speed drifts by 10-30 % within minutes biases a
   sweep-then-plain ratio either way; interleaving two of each and comparing their means cancels a steady drift
   (to first order) and shows the spread between repeats of the same side.

Prints one JSON object: both wall times, the per-trial times of the plain runs, and ``ratio`` = sweep / plain
(with ``--bracket`` also ``sweep_after_s``, ``plain_after_s``, ``runs`` (each of the four runs: kind, seconds,
per-trial seconds of a plain run) and ``ratio_bracketed`` = mean of the two sweeps / mean of the two plain runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="search_spaces/demo.yaml")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument(
        "--cpus",
        type=int,
        default=os.cpu_count() or 2,
        help="CPUs of the local Ray cluster and of the one worker per trial",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for every trial (e.g. incremental.epochs=4 for >= 1 min trials)",
    )
    p.add_argument("--storage", help="folder for the sweep and the configs (default: a temporary folder)")
    p.add_argument("--no-mlflow", action="store_true", help="sweep without MLflow tracking")
    p.add_argument(
        "--trainer",
        choices=("direct", "torch"),
        default="direct",
        help="direct: the trial trains in its Tune process (default for 1 worker); torch: a TorchTrainer",
    )
    p.add_argument(
        "--bracket",
        action="store_true",
        help="sweep, plain, sweep, plain in one run; report mean sweep / mean plain (ratio_bracketed)",
    )
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _space_copy(src: Path, dst: Path, trials: int, cpus: int) -> Path:
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    base = data.setdefault("base", {})
    if base.get("config"):  # relative to the original file
        base["config"] = str((src.parent / base["config"]).resolve())
    data["scheduler"] = {"type": "none"}
    data.pop("confirm", None)  # no seed confirmation stage: the plain runs repeat exactly the search's trials
    data["search"] = {**(data.get("search") or {}), "num_samples": trials}
    data["resources"] = {
        **(data.get("resources") or {}),
        "workers_per_trial": 1,
        "cpus_per_worker": cpus,
        "gpus_per_worker": 0,
    }
    data["name"] = "ray-overhead"
    dst.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst


def _timed(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {rc}; see {log}")
    return elapsed


def _timeline(trial_dir: Path) -> dict:
    """From the trial record's file times: trial start -> first epoch record, mean gap between epoch records,
    last epoch record -> outcome (final evaluation, artifacts, MLflow)."""
    start = (trial_dir / "trial.json").stat().st_mtime
    epochs = sorted(p.stat().st_mtime for p in (trial_dir / "epochs").glob("*.json"))
    end = (trial_dir / "outcome.json").stat().st_mtime
    gaps = [b - a for a, b in zip(epochs, epochs[1:])]
    return {
        "trial": trial_dir.name,
        "start_to_first_epoch_s": round(epochs[0] - start, 1),
        "epoch_s_mean": round(sum(gaps) / len(gaps), 2) if gaps else None,
        "last_epoch_to_end_s": round(end - epochs[-1], 1),
        "total_s": round(end - start, 1),
    }


def _phases(sweep_dir: Path) -> dict[str, float]:
    """The sweep driver's phases, ``{name: seconds}`` (``<sweep>/startup.json``; empty when it is missing)."""
    from wilson_ray.phases import durations, read

    path = sweep_dir / "startup.json"
    return durations(read(path)) if path.is_file() else {}


def _plain_miou(log: Path) -> list[float] | None:
    """old/new/all mIoU from the last row of ``wilson-ray train``'s result table in ``log``."""
    rows = re.findall(
        r"^\s*\d+\s+\d+ \(.*\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", log.read_text(encoding="utf-8"), flags=re.M
    )
    return [float(x) for x in rows[-1]] if rows else None


def _sweep_miou(trial_dir: Path) -> list[float]:
    final = json.loads((trial_dir / "final" / "final.json").read_text(encoding="utf-8"))["metrics"]
    return [round(float(final[k]), 2) for k in ("miou_old", "miou_new", "miou_all")]


def run(a: argparse.Namespace) -> dict:
    from wilson_ray.cache import previous_step_checkpoint
    from wilson_ray.config import parse_overrides, resolve_config
    from wilson_ray.orchestration.results import best_config_text, read_sweep, trial_rows
    from wilson_ray.orchestration.search_space import load_search_space
    from wilson_ray.step_key import step_key

    storage = Path(a.storage or tempfile.mkdtemp(prefix="wilson-ray-overhead-")).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    data_root = str(Path(a.data_root).resolve())
    space_path = _space_copy(Path(a.space).resolve(), storage / "space.yaml", a.trials, a.cpus)
    extra = {**parse_overrides(a.set), "data.root": data_root}
    space = load_search_space(space_path, extra)
    cache = storage / "step_cache"
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the engine's "amp: ..." line; stdout holds only the result
        previous_step_checkpoint(space.base_config(extra), space.step, cache)
    warm_s = time.perf_counter() - t
    info = common.machine_info()

    py = sys.executable
    sets = [x for kv in a.set for x in ("--set", kv)]

    def sweep_cmd(folder: Path) -> list[str]:
        return [
            py,
            "-m",
            "wilson_ray",
            "sweep",
            "--space",
            str(space_path),
            "--storage",
            str(folder),
            "--data-root",
            data_root,
            "--num-cpus",
            str(a.cpus),
            "--trainer",
            a.trainer,
            "--quiet",
            *sets,
            *(["--no-mlflow"] if a.no_mlflow else []),
        ]

    def completed(folder: Path) -> list[dict]:
        return [r for r in trial_rows(folder, space.name) if r["outcome"] == "completed"]

    sweep_s = _timed(sweep_cmd(storage), storage / "sweep.log")

    rows = completed(storage)
    if len(rows) != a.trials:
        raise SystemExit(f"{len(rows)} of {a.trials} trials completed; see {storage / 'sweep.log'}")
    sweep = read_sweep(storage, space.name)
    for r in rows:
        (storage / f"plain_{r['trial']}.yaml").write_text(best_config_text(r, sweep), encoding="utf-8")

    def plain_runs(tag: str = "") -> list[float]:
        """Each trial's config as one ``wilson-ray train`` process after another; seconds per trial."""
        out = []
        for r in rows:
            cfg_path = storage / f"plain_{r['trial']}.yaml"
            # A cache holding only the earlier step: `train --cache-dir` also caches the step it trains, so a
            # shared cache that already has this trial's step (the same seeded configs from an earlier run of this
            # benchmark, or the plain run before) would make the plain run a checkpoint load instead of training.
            plain_cache = storage / f"plain_cache_{r['trial']}"
            shutil.rmtree(plain_cache, ignore_errors=True)
            prev = step_key(resolve_config(config_file=cfg_path), space.step - 1)
            shutil.copytree(cache / prev, plain_cache / prev)
            cmd = [py, "-m", "wilson_ray", "train", "--config", str(cfg_path), "--steps", str(space.step)]
            out.append(_timed([*cmd, "--cache-dir", str(plain_cache)], storage / f"plain{tag}_{r['trial']}.log"))
            shutil.rmtree(plain_cache, ignore_errors=True)
        return out

    plain = plain_runs()
    plain_s = sum(plain)
    trials_dir = storage / space.name / "trials"
    timeline = [_timeline(trials_dir / r["trial"]) for r in rows]
    # Same seeded configs on the same CPU: a sweep trial must reach exactly the plain run's mIoU (a reused trial
    # process must not carry state from the trial before it).
    results = [
        {
            "trial": r["trial"],
            "sweep": _sweep_miou(trials_dir / r["trial"]),
            "plain": _plain_miou(storage / f"plain_{r['trial']}.log"),
        }
        for r in rows
    ]
    # where the sweep's own seconds go: the driver's phases (startup.json), from process start to Ray's shutdown
    phases = {"sweep_phases_s": _phases(storage / space.name)}
    bracket = {}
    if a.bracket:  # the same seeded trials again, in a folder of their own (a sweep of the same name resumes)
        again = storage / "bracket"
        shutil.rmtree(again, ignore_errors=True)
        shutil.copytree(cache, again / "step_cache")
        after_s = _timed(sweep_cmd(again), again / "sweep.log")
        after = sorted(_sweep_miou(again / space.name / "trials" / r["trial"]) for r in completed(again))
        plain_after = plain_runs("_after")
        plain_after_s = sum(plain_after)
        plain_after_miou = sorted(_plain_miou(storage / f"plain_after_{r['trial']}.log") for r in rows)
        runs = [
            {"kind": "sweep", "s": round(sweep_s, 2)},
            {"kind": "plain", "s": round(plain_s, 2), "trial_s": [round(x, 2) for x in plain]},
            {"kind": "sweep", "s": round(after_s, 2)},
            {"kind": "plain", "s": round(plain_after_s, 2), "trial_s": [round(x, 2) for x in plain_after]},
        ]
        bracket = {
            "order": "sweep, plain, sweep, plain",
            "runs": runs,
            "sweep_after_s": round(after_s, 2),
            "plain_after_s": round(plain_after_s, 2),
            "sweep_mean_s": round((sweep_s + after_s) / 2, 2),
            "plain_mean_s": round((plain_s + plain_after_s) / 2, 2),
            "ratio_bracketed": round((sweep_s + after_s) / (plain_s + plain_after_s), 4),
            # the same side twice: how far repeats of one command drift on this machine during the benchmark
            "sweep_repeat_ratio": round(after_s / sweep_s, 4),
            "plain_repeat_ratio": round(plain_after_s / plain_s, 4),
            "sweep_phases_after_s": _phases(again / space.name),
            "same_results_after": after == sorted(x["plain"] for x in results) == plain_after_miou,
        }
    return {
        "benchmark": "ray_overhead",
        "space": a.space,
        "trials": a.trials,
        "cpus": a.cpus,
        "set": a.set,
        "trainer": a.trainer,
        "mlflow": not a.no_mlflow,
        "epochs_per_trial": [r["epochs"] for r in rows],
        "sweep_s": round(sweep_s, 2),
        "plain_s": round(plain_s, 2),
        "plain_trial_s": [round(x, 2) for x in plain],
        "ratio": round(sweep_s / plain_s, 4),
        "cache_warm_s": round(warm_s, 2),
        "storage": str(storage),
        "sweep_trial_timeline": timeline,
        "miou_old_new_all": results,
        "same_results": all(x["sweep"] == x["plain"] for x in results),
        **phases,
        **bracket,
        **info,
        "loadavg_end": common.load_average(),
    }


def main(argv=None) -> int:
    a = parse_args(argv)
    r = run(a)
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['trials']} trials: sweep {r['sweep_s']:.1f} s, plain processes {r['plain_s']:.1f} s "
            f"({', '.join(f'{x:.1f}' for x in r['plain_trial_s'])}), ratio {r['ratio']:.3f}; "
            f"same mIoU as the plain runs: {r['same_results']}"
        )
        if "sweep_after_s" in r:
            runs = ", ".join(f"{x['kind']} {x['s']:.1f} s" for x in r["runs"])
            print(
                f"bracketed (sweep, plain, sweep, plain): {runs}; mean sweep / mean plain "
                f"{r['ratio_bracketed']:.3f}; same mIoU: {r['same_results_after']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
