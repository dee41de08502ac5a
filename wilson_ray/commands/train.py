"""``wilson-ray train``, ``eval`` and ``table``: whole incremental tasks in one process, no Ray."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def config_from_args(args: argparse.Namespace, method: str | None = None, extra: dict | None = None) -> Config:
    """The resolved config of a command: preset and config file, then ``--set``, then the flags; ``extra`` (a
    table row's own settings) wins over all of them."""
    overrides = {**parse_overrides(args.set), **(extra or {})}
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
    """Every method of the paper's table on one task, each row once per seed, one shared cached step 0 per seed."""
    from wilson_ray.methods import get_method
    from wilson_ray.step_setup import check_step_inputs, task_of
    from wilson_ray.table import parse_row, run_table, seed_list, write_table

    specs = args.methods.split(",") if args.methods else list(PAPER_TABLE_METHODS)
    out = Path(args.out)
    configs = {}
    for spec in specs:  # a bad name or variant: its error before anything trains
        name, method, extra = parse_row(spec, args.memory_size)
        configs[name] = config_from_args(args, method=method, extra=extra)
    seeds = seed_list(next(iter(configs.values())).run.seed, args.seeds)
    for cfg in configs.values():  # every row's inputs (saliency maps, replay folders) checked before anything trains
        view = task_of(cfg)
        for step in range(1, view.train.num_steps):
            check_step_inputs(cfg, step)
            get_method(cfg.method.name).preflight(cfg.method.args, view.train, step)
    print(
        f"table: {len(configs)} rows x {len(seeds)} seed(s) (run.seed {', '.join(map(str, seeds))}) into {out}",
        flush=True,
    )
    runs = run_table(configs, seeds, out, _cache_dir(args), log=lambda line: print(line, flush=True))
    print(write_table(runs, seeds, out), end="")
    print(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    if task_of(next(iter(configs.values()))).train.num_steps > 2:  # a many-step task: how each row got there
        from wilson_ray.tracking.step_curves import step_curves_png

        rows = {name: [r.folder for r in runs if r.method == name] for name in configs}
        title = f"{next(iter(configs.values())).data.task}, {len(seeds)} seed(s): mean" + (
            " ± std" if len(seeds) > 1 else ""
        )
        print(f"wrote {step_curves_png(rows, out / 'steps.png', title)}")
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
    p.add_argument(
        "--methods",
        help=f"comma-separated rows (default: {','.join(PAPER_TABLE_METHODS)}); METHOD+memory: the method with a "
        "memory of earlier steps' images (--memory-size)",
    )
    p.add_argument("--replay-root", help="RECALL's replay folder: one sub-folder of images per old class name")
    p.add_argument(
        "--memory-size",
        type=int,
        metavar="B",
        help="the memory budget of a METHOD+memory row (e.g. wilson+memory), in images (default: 32, the budget of "
        "the measured 15-1 and 10-2 rows)",
    )
    p.add_argument("--out", required=True, help="folder for per-method results and table.md / table.json")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train every row with N seeds, run.seed, run.seed+1, ..., run.seed+N-1 (42, 43, ... by default), "
        "each into OUT/<method>/seed<k>/, and report each column's mean ± sample std (default: 1, one run per row "
        "in OUT/<method>/)",
    )
    p.add_argument("--cache-dir", help="step cache (default: $WILSON_RAY_CACHE or ~/.cache/wilson-ray/steps)")
    p.set_defaults(func=cmd_table)
