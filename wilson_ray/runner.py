"""Run a whole incremental task in one process: every step in order, results table and ``results.json``."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from wilson_ray.atomic import atomic_write_text
from wilson_ray.cache import cached_step
from wilson_ray.checkpoint import load_checkpoint
from wilson_ray.config import Config, dump_config
from wilson_ray.engine import Callback, StepResult, train_step
from wilson_ray.methods import get_method
from wilson_ray.protocol import get_task
from wilson_ray.step_setup import check_step_inputs, task_of


@dataclass
class StepRow:
    step: int
    metrics: dict[str, float]
    per_class_iou: dict[str, float]
    checkpoint: str | None
    cached: bool


def _row_from_checkpoint(path: Path, step: int) -> StepRow:
    metrics = load_checkpoint(path)["metrics"]
    per_class = {k[4:]: v for k, v in metrics.items() if k.startswith("iou/")}
    return StepRow(step, {k: v for k, v in metrics.items() if not k.startswith("iou/")}, per_class, str(path), True)


def _row(result: StepResult) -> StepRow:
    return StepRow(
        result.step, result.metrics, result.per_class_iou, str(result.checkpoint) if result.checkpoint else None, False
    )


def run_task(
    cfg: Config,
    out_dir: str | Path | None,
    cache_dir: str | Path,
    steps: Sequence[int] | None = None,
    callbacks: Sequence[Callback] = (),
    reuse_step0: bool = True,
) -> list[StepRow]:
    """Train every step of ``cfg.data.task`` (or ``steps``) with ``cfg.method``.

    Step 0 comes from the step cache (trained once per config, shared by all methods); later steps are trained
    into ``out_dir`` (or a cache entry when ``out_dir`` is None). A method that does not share step 0 (the joint
    bound: one step over all classes) trains its own.
    """
    task = task_of(cfg).train
    steps = list(range(task.num_steps)) if steps is None else list(steps)
    out = Path(out_dir) if out_dir else None
    for step in steps:  # a missing external input (saliency map, pseudo-mask input, replay folder) fails here,
        if step > 0:  # before anything is written or trained
            check_step_inputs(cfg, task.check_step(step))
            get_method(cfg.method.name).preflight(cfg.method.args, task, step)
    rows: list[StepRow] = []
    for step in steps:
        task.check_step(step)
        if step == 0 and reuse_step0 and get_method(cfg.method.name).step0 is not None:
            ckpt = cached_step(cfg, 0, cache_dir)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ckpt, out / "step0.pt")
                ckpt = out / "step0.pt"
            rows.append(_row_from_checkpoint(ckpt, 0))
            continue
        init = None
        if step > 0:
            prev = out / f"step{step - 1}.pt" if out is not None else None
            init = prev if prev is not None and prev.is_file() else cached_step(cfg, step - 1, cache_dir)
        if out is None:
            rows.append(_row_from_checkpoint(cached_step(cfg, step, cache_dir), step))
        else:
            rows.append(
                _row(train_step(cfg, step, init_checkpoint=init, out_dir=out, callbacks=callbacks, cache_dir=cache_dir))
            )
    if out is not None:
        write_results(out / "results.json", cfg, rows)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    return rows


def mask_quality(cfg: Config, step: int) -> float | None:
    """The pseudo-mask mIoU (background + new classes, vs the ground truth of the step's training images) of an
    image-label row's cached masks at ``step``; None for a method without offline masks."""
    return get_method(cfg.method.name).label_quality(cfg, step)


def results_dict(cfg: Config, rows: list[StepRow]) -> dict:
    """The ``results.json`` content: per step the mIoU columns (both conventions) and the per-class IoU."""
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731  JSON has no NaN
    return {
        "task": cfg.data.task,
        "overlap": cfg.data.overlap,
        "method": cfg.method.name,
        "steps": [
            {
                "step": r.step,
                "checkpoint": r.checkpoint,
                "reused_from_cache": r.cached,
                "miou_old": clean(r.metrics.get("miou_old")),
                "miou_new": clean(r.metrics.get("miou_new")),
                "miou_all": clean(r.metrics.get("miou_all")),
                "miou_all_mib": clean(r.metrics.get("miou_all_mib")),
                "per_class_iou": {k: clean(v) for k, v in r.per_class_iou.items()},
                # the task's further validation sets (coco-voc: "voc-as-coco", VOC val as COCO ids), by source
                "other_eval": {
                    src: {k: clean(r.metrics.get(f"{src}/{k}")) for k in ("miou_old", "miou_new", "miou_all")}
                    for src in get_task(cfg.data.task).eval_data[1:]
                },
            }
            for r in rows
        ],
    }


def write_results(path: Path, cfg: Config, rows: list[StepRow]) -> None:
    atomic_write_text(path, json.dumps(results_dict(cfg, rows), indent=2))


def format_table(cfg: Config, rows: list[StepRow]) -> str:
    """Plain-text table of old / new / all mIoU per step (paper convention; MiB's "all" beside it)."""
    task = get_task(cfg.data.task)
    view = task_of(cfg)
    head = f"{'step':>4}  {'classes':<22} {'old':>6} {'new':>6} {'all':>6} {'all(MiB)':>9}"
    lines = [f"task {task.name} ({'overlap' if cfg.data.overlap else 'disjoint'}), method {cfg.method.name}", head]
    fmt = lambda v: "     -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"  # noqa: E731
    for r in rows:
        if view.report is not None:  # trained on the flattened task: one step over every class
            classes = f"all ({cfg.method.name})"
        else:
            ids = task.new_ids(r.step) if r.step > 0 else task.steps[0][1:]
            classes = f"{len(ids)} ({task.spec.class_names[ids[0]]}..)" if ids else "-"
        m = r.metrics
        lines.append(
            f"{r.step:>4}  {classes:<22} {fmt(m.get('miou_old'))} {fmt(m.get('miou_new'))} "
            f"{fmt(m.get('miou_all'))} {fmt(m.get('miou_all_mib')):>9}"
        )
    return "\n".join(lines)
