"""``wilson-ray data``: generate the synthetic dataset, validate a layout, show a task's image selection,
convert COCO-Stuff labels.

    wilson-ray data synth --out DIR [--layout voc|coco] [--seed S] [--train N] [--val M] [--size PX] [--force]
    wilson-ray data check --root DIR [--dataset auto|voc|coco] [--quick] [--json]
    wilson-ray data splits --root DIR --task T [--overlap] [--json]
    wilson-ray data prepare-coco --stuffthingmaps DIR --out DIR
    wilson-ray data prepare voc|coco --out DIR [--downloads DIR] [--mirror URL] [--quick] [--keep-staging] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wilson_ray import protocol
from wilson_ray.data import coco, synthetic, synthetic_coco, voc
from wilson_ray.errors import UserError


def register(subparsers) -> None:
    """Add the ``data`` command and its sub-commands to ``subparsers``."""
    data = subparsers.add_parser("data", help="datasets: synthetic generation, validation, task splits")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("synth", help="write a synthetic dataset in the VOC (default) or COCO layout")
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.add_argument(
        "--layout",
        choices=("voc", "coco"),
        default="voc",
        help="voc: the 20 VOC classes in the VOC layout; coco: 20 VOC + 20 non-VOC COCO classes in the COCO layout, "
        "for coco-voc with a VOC-layout set as data.voc_root (docs/data.md §4; default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED, help="random seed (default %(default)s)")
    p.add_argument("--train", type=int, default=synthetic.DEFAULT_TRAIN, help="training images (default %(default)s)")
    p.add_argument("--val", type=int, default=synthetic.DEFAULT_VAL, help="validation images (default %(default)s)")
    p.add_argument("--size", type=int, default=synthetic.DEFAULT_SIZE, help="image side, pixels (default %(default)s)")
    p.add_argument(
        "--replay",
        type=int,
        help=f"unlabelled replay images per class in replay/<class>/ for RECALL (voc layout only; default "
        f"{synthetic.DEFAULT_REPLAY})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing, different dataset at --out")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("check", help="validate a dataset layout; print image counts and class frequencies")
    p.add_argument("--root", required=True, type=Path, help="dataset folder")
    p.add_argument(
        "--dataset",
        choices=("auto", "voc", "coco"),
        default="auto",
        help="layout (default: voc if splits/train_aug.txt exists, coco if split/train.txt exists)",
    )
    p.add_argument("--quick", action="store_true", help="only check that listed files exist; do not decode them")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("splits", help="per step of a task: classes and training images (needs lists + labels only)")
    p.add_argument(
        "--root",
        required=True,
        action="append",
        metavar="[LAYOUT=]DIR",
        help="dataset folder; for coco-voc give both: --root voc=DIR --root coco=DIR",
    )
    p.add_argument("--task", required=True, help=f"one of {', '.join(protocol.TASKS)}")
    p.add_argument("--overlap", action="store_true", help="overlap setting instead of disjoint")
    p.add_argument(
        "--json", action="store_true", help="print {task, overlap, steps: [{step, classes, count, indices}]} as JSON"
    )
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("prepare-coco", help="convert COCO-Stuff stuffthingmaps to COCO-id masks (method.md §1.4)")
    p.add_argument("--stuffthingmaps", required=True, type=Path, help="folder with train2017/ and val2017/ PNGs")
    p.add_argument("--out", required=True, type=Path, help="output folder, e.g. data/coco/annotations")
    p.set_defaults(func=cmd_prepare_coco)

    p = sub.add_parser("prepare", help="download the official archives and build a VOC or COCO layout (docs/data.md)")
    p.add_argument("dataset", choices=("voc", "coco"), help="voc: VOC 2012 + SBD; coco: COCO 2017 + COCO-Stuff")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to build (pass it as data.root)")
    p.add_argument(
        "--downloads",
        type=Path,
        help="folder for the archives, kept afterwards (default: under --out, deleted at the end)",
    )
    p.add_argument(
        "--mirror",
        help="base URL serving the archives by file name (default: $WILSON_RAY_DATA_MIRROR or the official URLs)",
    )
    p.add_argument("--quick", action="store_true", help="final check: listed files exist (default: decode every file)")
    p.add_argument("--keep-staging", action="store_true", help="keep the extracted archives under --out/.prepare")
    p.add_argument("--json", action="store_true", help="print the final check's report as JSON")
    p.set_defaults(func=cmd_prepare)


def cmd_synth(args: argparse.Namespace) -> int:
    if args.layout == "coco":
        return synth_coco(args)
    replay = synthetic.DEFAULT_REPLAY if args.replay is None else args.replay
    result = synthetic.generate(args.out, args.seed, args.train, args.val, args.size, force=args.force, replay=replay)
    p = result.params
    verb = f"wrote in {result.seconds:.1f}s" if result.generated else "already present, kept"
    print(
        f"synthetic dataset {verb}: {result.root} (seed {p.seed}, {p.train} train / {p.val} val, {p.size}px, "
        f"{p.replay} replay images per class in {synthetic.REPLAY_DIR}/)"
    )
    print("images per class (train / val):")
    for k, (tr, va) in enumerate(zip(result.train_class_counts, result.val_class_counts), 1):
        print(f"  {k:2d} {protocol.VOC_CLASSES[k]:<12} {tr:6d} {va:6d}")
    return 0


def synth_coco(args: argparse.Namespace) -> int:
    """``data synth --layout coco``: the COCO-layout set and its per-class image counts, by coco-voc step."""
    if args.replay is not None:
        raise UserError(
            f"--replay: got {args.replay} with --layout coco; expected no --replay (the COCO layout has no replay "
            "folder; RECALL reads one of old-class images)"
        )
    result = synthetic_coco.generate(args.out, args.seed, args.train, args.val, args.size, force=args.force)
    p = result.params
    verb = f"wrote in {result.seconds:.1f}s" if result.generated else "already present, kept"
    print(
        f"synthetic COCO-layout dataset {verb}: {result.root} "
        f"(seed {p.seed}, {p.train} train / {p.val} val, {p.size}px)"
    )
    print("images per class (train / val), by COCO id; coco-voc learns the non-VOC ones at step 0, VOC's at step 1:")
    voc_of = {c: v for v, c in enumerate(protocol.VOC_TO_COCO) if v}
    for coco_id in sorted(synthetic_coco.CLASS_IDS):
        tr, va = result.train_class_counts[coco_id - 1], result.val_class_counts[coco_id - 1]
        role = f"step 1 (VOC {protocol.VOC_CLASSES[voc_of[coco_id]]})" if coco_id in voc_of else "step 0"
        print(f"  {coco_id:2d} {protocol.COCO_CLASSES[coco_id]:<14} {tr:6d} {va:6d}   {role}")
    print(
        "step 1 and the VOC evaluation read a VOC-layout set (data.voc_root): wilson-ray data synth --out "
        "data/synthetic, the demo-coco-voc preset's"
    )
    return 0


def detect_layout(root: Path) -> str:
    """``voc`` or ``coco`` from the files present under ``root``; a UserError if neither list is there."""
    root = voc.check_root(root, "VOC or COCO")
    if (root / voc.LIST_FILES["train"]).is_file() or (root / voc.IMAGE_DIR).is_dir():
        return "voc"
    if (root / coco.LIST_FILES["train"]).is_file():
        return "coco"
    raise UserError(
        f"data root: {root} has neither {voc.LIST_FILES['train']} (VOC) nor {coco.LIST_FILES['train']} (COCO); "
        "expected a dataset folder laid out as in method.md §1.4"
    )


def cmd_check(args: argparse.Namespace) -> int:
    layout = detect_layout(args.root) if args.dataset == "auto" else args.dataset
    check = voc.check_voc if layout == "voc" else coco.check_coco
    report = check(args.root, full=not args.quick)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    mode = "listed files exist" if args.quick else "all images and masks decoded and checked"
    print(f"{layout} dataset OK ({mode}): {report['root']}")
    splits = report["splits"]
    print("  " + ", ".join(f"{s}: {r['count']} images" for s, r in splits.items()))
    print(f"  images containing each class ({' / '.join(splits)}):")
    names = list(splits["train"]["class_counts"])
    for name in names:
        counts = " ".join(f"{r['class_counts'][name]:7d}" for r in splits.values())
        print(f"    {name:<16}{counts}")
    return 0


def parse_roots(values: list[str]) -> Path | dict[str, Path]:
    """``--root DIR`` -> DIR; ``--root voc=DIR --root coco=DIR`` -> {"voc": DIR, "coco": DIR}."""
    if len(values) == 1 and not values[0].startswith(("voc=", "coco=")):
        return Path(values[0])
    roots = {}
    for value in values:
        layout, sep, path = value.partition("=")
        if not sep or layout not in ("voc", "coco") or not path:
            raise UserError(f"--root: got {value!r}; expected LAYOUT=DIR with LAYOUT voc or coco when given twice")
        if layout in roots:
            raise UserError(f"--root: {layout}= given twice; expected one folder per layout")
        roots[layout] = Path(path)
    return roots


def cmd_splits(args: argparse.Namespace) -> int:
    from wilson_ray.data.dataset import summary  # imports torch: only for this sub-command

    task = protocol.get_task(args.task)
    protocol.check_overlap(task, args.overlap)
    steps = summary(parse_roots(args.root), task, args.overlap)
    if args.json:
        print(json.dumps({"task": task.name, "overlap": bool(args.overlap), "steps": steps}))
        return 0
    setting = "overlap" if args.overlap else "disjoint"
    print(f"task {task.name} ({setting}), {task.num_steps} step(s):")
    for s in steps:
        print(f"  step {s['step']}: {s['count']:6d} training images; classes: {', '.join(s['classes'])}")
    return 0


def cmd_prepare_coco(args: argparse.Namespace) -> int:
    n = coco.prepare_coco_stuff(args.stuffthingmaps, args.out)
    print(f"converted {n} masks into {args.out} (unchanged ones skipped)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from wilson_ray.data import prepare  # imports torchvision: only for this sub-command

    build = prepare.prepare_voc if args.dataset == "voc" else prepare.prepare_coco

    def log(message: str) -> None:  # progress on stderr: stdout carries only the result (and --json stays parseable)
        print(message, file=sys.stderr, flush=True)

    report = build(
        args.out, args.downloads, args.mirror, full_check=not args.quick, keep_staging=args.keep_staging, log=log
    )
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    counts = ", ".join(f"{s}: {r['count']} images" for s, r in report["splits"].items())
    print(f"{args.dataset} dataset prepared and checked: {report['root']} ({counts})")
    for name, same in report.get("reference_lists", {}).items():
        print(f"  {name}: {'identical to' if same else 'DIFFERS from'} the published list")
    return 0
