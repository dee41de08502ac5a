"""Seed-to-seed spread of a sweep's paper-default trial: the number a sweep's best trial must beat.

    python -m benchmarks.seed_spread --space search_spaces/demo-short.yaml --data-root data/synthetic
    python -m benchmarks.seed_spread --space search_spaces/demo-short.yaml --seeds 42 43 44 45 46 --json

Trains the space's trial with every swept key at its default (the point ``evaluate_defaults`` enqueues) once per
training seed (``run.seed``), with the real engine and no Ray, ``--parallel`` one-thread processes at a time
(as the sweep's one-CPU trials run), from the cached previous step (trained first, not timed). Prints each
seed's old/new/all and objective, their spread (max - min) and the ``seed_spread:`` block to paste into the space
file, so the sweep's summary can say whether its best trial beats the default by more than seed noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from benchmarks import common

KEYS = ("miou_old", "miou_new", "miou_all", "miou_hm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seed_spread", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", required=True, help="search-space YAML (its base, step and objective are used)")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument(
        "--seeds", type=int, nargs="+", help="training seeds (default: the space's seed_spread.seeds, else 42-46)"
    )
    p.add_argument("--parallel", type=int, default=2, help="trials at a time, one intra-op thread each")
    p.add_argument("--cache-dir", help="step cache (default: the toolkit's, so a demo's step 0 is reused)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _config(space_path: str, data_root: str, seed: int):
    from wilson_ray.orchestration.search_space import load_search_space

    space = load_search_space(space_path, {"data.root": data_root})
    cfg = space.resolve(space.defaults(), {"data.root": data_root, "run.seed": seed, "run.progress": False})
    return space, cfg


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _trial(space_path: str, data_root: str, seed: int, init: str | None, out: str) -> dict:
    from wilson_ray import engine

    space, cfg = _config(space_path, data_root, seed)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's own lines must not mix into the JSON on stdout
        result = engine.train_step(cfg, space.step, init_checkpoint=init, out_dir=out)
    return {
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        **{k: round(float(result.metrics[k]), 2) for k in KEYS},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from wilson_ray.cache import previous_step_checkpoint
    from wilson_ray.step_key import default_cache_dir

    space, cfg = _config(args.space, args.data_root, 42)
    seeds = args.seeds or (space.seed_spread.seeds if space.seed_spread else [42, 43, 44, 45, 46])
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    with contextlib.redirect_stdout(sys.stderr):  # not timed: every seed starts from it
        init = previous_step_checkpoint(cfg, space.step, cache)
    tmp = tempfile.mkdtemp(prefix="seed-spread-")
    start = time.perf_counter()
    with ProcessPoolExecutor(args.parallel, mp.get_context("spawn"), initializer=_init_worker) as pool:
        futures = [
            pool.submit(_trial, args.space, args.data_root, s, str(init) if init else None, f"{tmp}/s{s}")
            for s in seeds
        ]
        trials = [f.result() for f in futures]
    metric = space.metric
    values = [t[metric] for t in trials]
    machine = common.machine_info()
    measured = (
        f"benchmarks.seed_spread on {machine.get('cpu_model', '?')} ({machine.get('cpu_capability', '?')}), "
        f"{date.today().isoformat()}; old/new " + " ".join(f"{t['miou_old']}/{t['miou_new']}" for t in trials)
    )
    out = {
        "space": args.space,
        "metric": metric,
        "seeds": seeds,
        "values": values,
        "spread": round(max(values) - min(values), 2),
        "wall_s": round(time.perf_counter() - start, 1),
        "trials": trials,
        "machine": machine,
        "seed_spread": {
            "metric": metric,
            "seeds": seeds,
            "values": values,
            "command": f"python -m benchmarks.seed_spread --space {args.space}",
            "measured": measured,
        },
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for t in trials:
        print(
            f"seed {t['seed']}: old {t['miou_old']:.2f} new {t['miou_new']:.2f} all {t['miou_all']:.2f} "
            f"hm {t['miou_hm']:.2f} ({t['seconds']} s)"
        )
    print(
        f"{metric}: {min(values):.2f}-{max(values):.2f}, spread {out['spread']:.2f} over {len(seeds)} seeds "
        f"({out['wall_s']} s)\n\nfor {args.space}:\nseed_spread:"
    )
    for k, v in out["seed_spread"].items():
        print(f"  {k}: {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
