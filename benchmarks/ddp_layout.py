"""How to spend two CPU cores on a sweep: one two-worker DDP trial, or two one-worker trials at once; and what
DDP's ``find_unused_parameters`` costs.

    python -m benchmarks.ddp_layout --layout ddp  --data-root data/synthetic --json
    python -m benchmarks.ddp_layout --layout pair --data-root data/synthetic --json
    python -m benchmarks.ddp_layout --layout ddp  --method mib --set run.ddp_find_unused=true  --json
    python -m benchmarks.ddp_layout --layout ddp  --method mib --set run.ddp_find_unused=false --json

The real engine (``engine.train_step``) trains step 1 of the demo preset from its cached step 0 (trained first,
not timed), with no Ray: ``ddp`` runs one trial as two gloo processes of one intra-op thread each (each sees half
of the batch, as a two-worker TorchTrainer trial would); ``pair`` runs two trials (seeds ``--seed`` and
``--seed + 1``) as two one-thread processes side by side, as two one-worker sweep trials would. Prints wall time,
trial-epochs per minute and each trial's old/new/all mIoU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_layout", description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", choices=("ddp", "pair"), required=True)
    p.add_argument("--method", default="wilson")
    p.add_argument("--preset", default="demo")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--epochs", type=int, default=6, help="step-1 epochs per trial")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--cache-dir", help="step cache (default: a temporary folder; step 0 is trained there first)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _config(args, seed: int):
    from wilson_ray.config import parse_overrides, resolve_config

    overrides = parse_overrides(args.set)
    overrides.update(
        {"data.root": args.data_root, "incremental.epochs": args.epochs, "run.seed": seed, "run.progress": False}
    )
    return resolve_config(preset=args.preset, method=args.method, overrides=overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args, seed: int, init: str, out: str, queue) -> None:
    sys.stdout = sys.stderr  # the run's own lines (amp: ...) must not mix into the JSON on stdout
    torch.set_num_threads(1)
    from wilson_ray import engine

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start = time.perf_counter()
        result = engine.train_step(_config(args, seed), 1, init_checkpoint=init, out_dir=out)
        seconds = time.perf_counter() - start
        if rank == 0:
            queue.put(
                {
                    "seed": seed,
                    "seconds": round(seconds, 1),
                    **{k: round(float(result.metrics[k]), 2) for k in ("miou_old", "miou_new", "miou_all")},
                }
            )
    finally:
        if world > 1:
            dist.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    from wilson_ray.cache import cached_step

    tmp = tempfile.mkdtemp(prefix="ddp-layout-")
    cache = args.cache_dir or os.path.join(tmp, "cache")
    with contextlib.redirect_stdout(sys.stderr):  # not timed: both layouts start from it
        init = str(cached_step(_config(args, args.seed), 0, cache))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    if args.layout == "ddp":
        port = _free_port()
        procs = [
            ctx.Process(target=_worker, args=(r, 2, port, args, args.seed, init, os.path.join(tmp, "ddp"), queue))
            for r in range(2)
        ]
    else:
        procs = [
            ctx.Process(target=_worker, args=(0, 1, 0, args, args.seed + i, init, os.path.join(tmp, f"t{i}"), queue))
            for i in range(2)
        ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    if any(p.exitcode for p in procs):
        print(f"ddp_layout: a process failed (exit codes {[p.exitcode for p in procs]})", file=sys.stderr)
        return 1
    trials = [queue.get() for _ in range(1 if args.layout == "ddp" else 2)]
    out = {
        "layout": args.layout,
        "method": args.method,
        "epochs": args.epochs,
        "overrides": args.set,
        "wall_s": round(wall, 1),
        "trial_epochs_per_min": round(len(trials) * args.epochs / wall * 60, 2),
        "trials": trials,
        "machine": common.machine_info(),
    }
    print(
        json.dumps(out, indent=1)
        if args.json
        else f"{args.layout}: {wall:.1f} s, {out['trial_epochs_per_min']} trial-epochs/min, "
        + "; ".join(f"seed {t['seed']}: old {t['miou_old']} new {t['miou_new']} all {t['miou_all']}" for t in trials)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
