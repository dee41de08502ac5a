"""Decoded + augmented images per second of the real training Dataset through a DataLoader, per worker process.

    python -m benchmarks.data_pipeline --root /tmp/wr-bench-synth-96 --size 96 --workers 0,1,2 --json

The dataset is ``wilson_ray.data.dataset.build_dataset(root, task, step, "train", crop_size=size)`` (JPEG decode,
PNG mask decode + validation, label remap, random resized crop, flip, normalise), loaded as ``engine.train_step``
loads it (``runtime.seed_worker``: one intra-op thread per worker). If ``--root`` holds no dataset, a synthetic
VOC-layout set of ``--train`` images of ``--size`` pixels is generated there first
(``wilson_ray.data.synthetic.generate``). Compare ``images_per_s_per_worker`` with the step benchmark's
``images_per_s``: the loader is not the bottleneck while one worker delivers more images/s than a step consumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks import common
from wilson_ray import runtime
from wilson_ray.data import synthetic
from wilson_ray.data.dataset import build_dataset
from wilson_ray.data.transforms import to_tv_tensors
from wilson_ray.protocol import get_task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="VOC-layout dataset folder (generated there if missing/empty)")
    p.add_argument("--size", type=int, default=96, help="training crop size (and image size when generating)")
    p.add_argument("--train", type=int, default=400, help="training images when generating")
    p.add_argument("--task", default="15-5")
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--warmup-batches", type=int, default=2, help="untimed batches first (worker start-up)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per worker count (median reported)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def ensure_dataset(root: Path, size: int, train: int) -> dict:
    if (root / "splits" / "train_aug.txt").is_file() or (root / "splits").is_dir():
        return {"generated": False}
    t = time.perf_counter()
    synthetic.generate(root, seed=0, train=train, val=max(10, train // 10), size=size)
    return {"generated": True, "generate_s": round(time.perf_counter() - t, 1), "generated_train": train}


def per_image_split(ds, n: int = 64) -> dict:
    """Single-process seconds per image of decoding (image + mask, validation, remap) and of the transforms."""
    n = min(n, len(ds))
    t_load = t_tf = 0.0
    for i in range(n):
        t = time.perf_counter()
        image, mask = ds.load(i)
        t1 = time.perf_counter()
        ds.transform(*to_tv_tensors(image, mask))
        t2 = time.perf_counter()
        t_load += t1 - t
        t_tf += t2 - t1
    return {"decode_ms_per_image": 1000 * t_load / n, "augment_ms_per_image": 1000 * t_tf / n, "n": n}


def time_loader(ds, workers: int, batch: int, batches: int, warmup: int, repeats: int) -> dict:
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=False,
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=runtime.seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )

    def batches_forever():
        while True:
            yield from loader

    it = batches_forever()
    t = time.perf_counter()
    for _ in range(warmup):
        next(it)
    startup = time.perf_counter() - t
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = 0
        for _ in range(batches):
            images, masks, labels = next(it)
            n += images.shape[0]
        rates.append(n / (time.perf_counter() - t))
    del it  # the generator holds the loader; dropping it stops the workers
    med = statistics.median(rates)
    procs = max(1, workers)
    return {
        "workers": workers,
        "images_per_s": med,
        "images_per_s_per_worker": med / procs,
        "rates": [round(r, 1) for r in rates],
        "startup_s": round(startup, 2),
    }


def run(a: argparse.Namespace) -> dict:
    root = Path(a.root)
    gen = ensure_dataset(root, a.size, a.train)
    task = get_task(a.task)
    ds = build_dataset(root, task, a.step, "train", crop_size=a.size)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # the main process as one worker (w=0), like runtime.seed_worker does for workers
    split = per_image_split(ds)
    results = []
    for w in [int(x) for x in a.workers.split(",") if x.strip()]:
        results.append(time_loader(ds, w, a.batch, a.batches, a.warmup_batches, a.repeats))
    torch.set_num_threads(threads_before)
    img = ds.load(0)[0]
    return {
        "benchmark": "data_pipeline",
        "root": str(root),
        "task": a.task,
        "step": a.step,
        "split": "train",
        "dataset_len": len(ds),
        "image_size": list(img.size),
        "crop_size": a.size,
        "batch": a.batch,
        "batches": a.batches,
        "repeats": a.repeats,
        **gen,
        "per_image": split,
        "loaders": results,
        "loadavg_end": common.load_average(),
        **common.machine_info(),
    }


def main(argv=None) -> int:
    a = parse_args(argv)
    r = run(a)
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['dataset_len']} images {r['image_size']} -> crop {r['crop_size']}: decode "
            f"{r['per_image']['decode_ms_per_image']:.2f} ms + augment {r['per_image']['augment_ms_per_image']:.2f} "
            f"ms per image (one process)"
        )
        for x in r["loaders"]:
            print(
                f"  workers={x['workers']}: {x['images_per_s']:.1f} img/s, {x['images_per_s_per_worker']:.1f} "
                f"img/s per worker process (start-up {x['startup_s']} s)"
            )
        print(f"  load {r['loadavg_start']} -> {r['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
