"""``wilson-ray train``, ``eval`` and ``table``: whole incremental tasks in one process, no Ray."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from wilson_ray.atomic import atomic_write_text
from wilson_ray.config import Config, parse_overrides, resolve_config
from wilson_ray.errors import UserError

# The rows of the paper's Table 1: pixel labels at every step (joint bound, fine-tuning, LwF, ILT, MiB, PLOP, SDR,
# RECALL), then image labels at the incremental steps (CAM, SEAM, SS, EPS, WILSON).
PAPER_TABLE_METHODS = (
    "joint",
    "finetune",
    "lwf",
    "ilt",
    "mib",
    "plop",
    "sdr",
    "recall",
    "cam",
    "seam",
    "ss",
    "eps",
    "wilson",
)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that resolves a config."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="shipped preset: demo, voc-15-5, voc-10-10, coco-voc (default: demo)")
    src.add_argument("--config", help="a resolved config YAML (e.g. from `wilson-ray best`)")
    p.add_argument("--task", help="incremental task, e.g. 15-5, 10-10, 15-1, coco-voc")
    p.add_argument("--overlap", action="store_true", default=None, help="overlap setting instead of disjoint")
    p.add_argument("--no-mask", action="store_true", default=None, help="image labels of old classes too (Tab. 5)")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision")
    p.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="the fast path measured for this hardware (wilson_ray.hardware.fast_path_plan): amp auto (bf16 only where "
        "native), channels_last, valid-tap ASPP, fused SGD, frozen old model where it pays, "
        "torch.compile on CUDA",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set method.alpha=0.7 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, method: str | None = None) -> Config:
    overrides = parse_overrides(args.set)
    for flag, key in (
        ("task", "data.task"),
        ("overlap", "data.overlap"),
        ("no_mask", "data.no_mask"),
        ("data_root", "data.root"),
        ("device", "run.device"),
        ("amp", "run.amp"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.setdefault(key, value)
    method = method or getattr(args, "method", None)
    if getattr(args, "replay_root", None):
        # Only a method with a replay folder (RECALL) takes it, so `table --replay-root` leaves the others alone.
        if hasattr(resolve_config(args.preset, args.config, method, overrides).method.args, "replay_root"):
            overrides.setdefault("method.replay_root", args.replay_root)
    if getattr(args, "fast", None):
        # The fast path depends on the hardware (bf16 is a trap on a CPU without it): resolve the device first,
        # then take that device's measured plan; explicit flags and --set still win.
        from wilson_ray.hardware import fast_path_overrides
        from wilson_ray.runtime import resolve_device

        device = resolve_device(resolve_config(args.preset, args.config, method, overrides).run.device)
        for key, value in fast_path_overrides(device).items():
            overrides.setdefault(key, value)
    return resolve_config(args.preset, args.config, method, overrides)


def _cache_dir(args) -> Path:
    from wilson_ray.step_key import default_cache_dir  # imports torch: only for commands that train

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def parse_steps(text: str) -> list[int]:
    """``--steps 0,1`` -> [0, 1]; anything but comma-separated integers is a UserError (range: ``check_step``)."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--steps: got {text!r}, expected comma-separated step numbers, e.g. 1 or 0,1") from None


def cmd_train(args: argparse.Namespace) -> int:
    from wilson_ray.runner import format_table, run_task

    cfg = config_from_args(args)
    steps = parse_steps(args.steps) if args.steps else None
    rows = run_task(cfg, args.out, _cache_dir(args), steps=steps)
    print(format_table(cfg, rows))
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from wilson_ray.engine import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.ckpt, data_root=args.data_root, eval_mode=args.eval_mode, device=args.device or "auto"
    )
    out = {"step": result.step, **result.metrics, "per_class_iou": result.per_class_iou, "extra": result.extra_eval}
    if args.json:
        print(json.dumps(out, indent=2, default=lambda v: None))
    else:
        for key in ("miou_old", "miou_new", "miou_all", "miou_all_mib"):
            print(f"{key:>14}: {result.metrics.get(key, float('nan')):6.2f}")
        for name, iou in result.per_class_iou.items():
            print(f"{name:>14}: {iou:6.2f}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Every method of the paper's table on one task, sharing one cached step 0."""
    from wilson_ray.cache import cached_step
    from wilson_ray.methods import get_method
    from wilson_ray.runner import format_table, mask_quality, run_task
    from wilson_ray.step_setup import check_step_inputs, task_of

    methods = args.methods.split(",") if args.methods else list(PAPER_TABLE_METHODS)
    out = Path(args.out)
    configs = {method: config_from_args(args, method=method) for method in methods}  # bad name: error first
    for cfg in configs.values():  # every row's inputs (saliency maps) checked before anything trains
        view = task_of(cfg)
        for step in range(1, view.train.num_steps):
            check_step_inputs(cfg, step)
    shared = next((c for c in configs.values() if get_method(c.method.name).step0 is not None), None)
    if shared is not None:  # the shared step 0 first, so no row's time includes it
        cached_step(shared, 0, _cache_dir(args))
    # Further validation sets (coco-voc: VOC val as COCO ids, the paper's "VOC" column): their mIoU columns too.
    extra = task_of(next(iter(configs.values()))).train.eval_data[1:]
    extra_keys = [f"{src}/{k}" for src in extra for k in ("miou_old", "miou_new", "miou_all")]
    table = []
    for method, cfg in configs.items():
        start = time.perf_counter()
        rows = run_task(cfg, out / method, _cache_dir(args))
        seconds = time.perf_counter() - start
        print(format_table(cfg, rows), flush=True)
        first, last = rows[0].metrics, rows[-1].metrics
        table.append(
            {
                "method": method,
                "step0_old": first.get("miou_old"),
                **{k: last.get(k) for k in ("miou_old", "miou_new", "miou_all", "miou_all_mib")},
                # NaN (e.g. no old class in VOC val) written as null
                **{k: None if math.isnan(last.get(k, math.nan)) else last[k] for k in extra_keys},
                "mask_miou": mask_quality(cfg, rows[-1].step),
                "seconds": round(seconds, 1),
            }
        )
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"  # noqa: E731
    md = [
        "| method | step-0 old | old | new | all | all (MiB) | "
        + "".join(f"new on {src} | all on {src} | " for src in extra)
        + "mask mIoU | time (s) |",
        "|---|---|---|---|---|---|---|---|" + "---|---|" * len(extra),
    ]
    md += [
        f"| {r['method']} | {fmt(r['step0_old'])} | {fmt(r['miou_old'])} | {fmt(r['miou_new'])} | "
        f"{fmt(r['miou_all'])} | {fmt(r['miou_all_mib'])} | "
        + "".join(f"{fmt(r[f'{src}/miou_new'])} | {fmt(r[f'{src}/miou_all'])} | " for src in extra)
        + f"{fmt(r['mask_miou'])} | {r['seconds']:.0f} |"
        for r in table
    ]
    atomic_write_text(out / "table.md", "\n".join(md) + "\n")
    atomic_write_text(out / "table.json", json.dumps(table, indent=2, default=lambda v: None))
    print("\n".join(md))
    print(f"wrote {out / 'table.md'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="run an incremental task in one process (step 0 cached, then every step)")
    add_config_arguments(p)
    p.add_argument(
        "--method",
        help="joint, finetune, lwf, ilt, mib, plop, sdr, recall, cam_online, wilson, cam, "
        "seam, ss, eps (default: the preset's)",
    )
    p.add_argument("--replay-root", help="RECALL's replay folder: one sub-folder of images per old class name")
    p.add_argument("--out", help="folder for the checkpoints, results.json and the resolved config.yaml")
    p.add_argument("--steps", help="comma-separated steps to run (default: all)")
    p.add_argument("--cache-dir", help="step cache (default: $WILSON_RAY_CACHE or ~/.cache/wilson-ray/steps)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its task's validation set")
    p.add_argument("--ckpt", required=True, help="a step checkpoint written by train")
    p.add_argument("--data-root", help="dataset folder (default: the checkpoint's data.root)")
    p.add_argument("--eval-mode", choices=["crop", "full"], help="paper's center crop or full images")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("table", help="the paper's table: every method on one task, one shared step 0")
    add_config_arguments(p)
    p.add_argument("--methods", help=f"comma-separated (default: {','.join(PAPER_TABLE_METHODS)})")
    p.add_argument("--replay-root", help="RECALL's replay folder: one sub-folder of images per old class name")
    p.add_argument("--out", required=True, help="folder for per-method results and table.md / table.json")
    p.add_argument("--cache-dir", help="step cache (default: $WILSON_RAY_CACHE or ~/.cache/wilson-ray/steps)")
    p.set_defaults(func=cmd_table)
