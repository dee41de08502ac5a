"""``wilson-ray table``: every method of one task, each row once per training seed, sharing one cached step 0 per
seed; ``table.md`` / ``table.json`` with the mean ± sample std of each column over the seeds (``wilson_ray.stats``).

One seed (the default) writes the single-run table of earlier versions: rows in ``<out>/<method>/`` and one number
per cell. With N > 1 seeds (``run.seed`` s, s+1, ..., s+N-1) each row runs into ``<out>/<method>/seed<k>/``.
A row whose ``results.json`` was written under the same resolved config is reused, not trained again, so an
interrupted table resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wilson_ray.atomic import atomic_write_text
from wilson_ray.cache import cached_step
from wilson_ray.config import Config, dump_config
from wilson_ray.errors import UserError
from wilson_ray.methods import get_method
from wilson_ray.runner import format_table, mask_quality, run_task
from wilson_ray.stats import CONFIDENCE, format_summary, summarize
from wilson_ray.step_key import step_key

# (key in table.json, header in table.md, digits); a row's numbers are those after the task's last step, except
# the step-0 old-class mIoU and the pseudo-masks' quality.
COLUMNS = (
    ("step0_old", "step-0 old", 1),
    ("miou_old", "old", 1),
    ("miou_new", "new", 1),
    ("miou_all", "all", 1),
    ("miou_all_mib", "all (MiB)", 1),
    ("mask_miou", "mask mIoU", 1),
    ("seconds", "time (s)", 0),
)
EXTRA_KEYS = ("miou_old", "miou_new", "miou_all")  # per further validation set (coco-voc: VOC val as COCO ids)
# A task of more than one incremental step (15-1, 10-2, ...) also gets the paper's two class-range columns after
# its last step: the step-0 classes and those added after step 0 (e.g. "1-15" and "16-20" for 15-1).
RANGE_KEYS = ("miou_step0_classes", "miou_later_classes")
ROW_FILE = "row.json"  # beside results.json: the row's table numbers, with its training time
# Row variants: ``--methods wilson+memory`` is the WILSON row with a memory of earlier steps' images (method.md §9);
# every method whose ``Params`` carry the memory fields (``MemoryParams``) takes it.
VARIANTS = ("memory",)
DEFAULT_MEMORY_SIZE = 32  # images; the budget of the measured 15-1 / 10-2 rows (docs/results.md)


def parse_row(spec: str, memory_size: int | None = None) -> tuple[str, str, dict]:
    """A ``--methods`` entry -> (row name, method name, the row's own config overrides): ``wilson`` is the method
    as configured; ``wilson+memory`` the same method with ``method.memory_size`` = ``memory_size`` (default
    ``DEFAULT_MEMORY_SIZE``)."""
    memory_size = DEFAULT_MEMORY_SIZE if memory_size is None else memory_size
    method, _, variant = spec.partition("+")
    cls = get_method(method)  # an unknown method: its own did-you-mean error
    if not variant:
        return spec, method, {}
    if variant not in VARIANTS:
        raise UserError(f"--methods: row {spec!r} has the variant {variant!r}, expected one of {', '.join(VARIANTS)}")
    if not has_memory_option(cls):
        from wilson_ray.methods import METHODS

        accepting = ", ".join(name for name, c in sorted(METHODS.items()) if has_memory_option(c))
        raise UserError(
            f"--methods: row {spec!r}: method {method!r} has no memory option (method.memory_size), "
            f"expected one of {accepting}"
        )
    if memory_size < 1:
        raise UserError(f"--memory-size: got {memory_size}, expected a budget of at least 1 image")
    return spec, method, {"method.memory_size": memory_size}


def has_memory_option(cls: type) -> bool:
    """Whether a method class's ``Params`` have the memory fields (so its ``+memory`` row exists)."""
    return "memory_size" in {f.name for f in dataclasses.fields(cls.Params)}


def columns(extra_sources: Sequence[str] = ()) -> tuple[tuple[str, str, int], ...]:
    """The table's columns: ``COLUMNS`` with, before the mask column, the old/new/all mIoU of every further
    validation set of the task (``Task.eval_data[1:]``; coco-voc: ``voc-as-coco``, the paper's VOC columns)."""
    i = [k for k, _, _ in COLUMNS].index("mask_miou")
    extra = tuple((f"{src}/{k}", f"{k[5:]} on {src}", 1) for src in extra_sources for k in EXTRA_KEYS)
    return COLUMNS[:i] + extra + COLUMNS[i:]


def class_ranges(task_name: str) -> tuple[tuple[str, str, int], ...]:
    """The class-range columns of a task of more than one incremental step, named as in the paper's tables
    ("1-15", "16-20" for 15-1); none for a task of one or two steps, where they equal old and new."""
    from wilson_ray.protocol import get_task

    task = get_task(task_name)
    if task.num_steps <= 2:
        return ()
    base, total = task.num_classes(0), task.num_classes(task.num_steps - 1)
    return ((RANGE_KEYS[0], f"1-{base - 1}", 1), (RANGE_KEYS[1], f"{base}-{total - 1}", 1))


def range_values(task_name: str, per_class_iou: dict[str, float]) -> dict[str, float | None]:
    """mIoU over the step-0 foreground classes and over the classes added later, from a step's per-class IoU
    (``results.json``: class name -> IoU in internal order, background first; classes without ground truth
    skipped)."""
    ranges = class_ranges(task_name)
    if not ranges:
        return {}
    from wilson_ray.protocol import get_task

    base = get_task(task_name).num_classes(0)
    ious = [_clean(v) for v in per_class_iou.values()]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {RANGE_KEYS[0]: mean(ious[1:base]), RANGE_KEYS[1]: mean(ious[base:])}


def extra_sources(cfg: Config) -> tuple[str, ...]:
    """The further validation sets a config's task is evaluated on (none for the VOC tasks)."""
    from wilson_ray.protocol import get_task

    return tuple(get_task(cfg.data.task).eval_data[1:])


def seed_list(base: int, count: int) -> list[int]:
    """The ``count`` training seeds base, base+1, ..., base+count-1 (base: the config's ``run.seed``)."""
    if count < 1:
        raise UserError(f"--seeds: got {count}, expected the number of seeds, an integer >= 1")
    return list(range(base, base + count))


def with_seed(cfg: Config, seed: int) -> Config:
    """``cfg`` with ``run.seed`` set to ``seed`` (a different step-0 cache entry, mask folder and initialisation)."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))


def run_dir(out: Path, method: str, seed: int, n_seeds: int) -> Path:
    """Where one (row, seed) run lives: ``<out>/<method>`` for a single-seed table, else ``.../seed<k>``."""
    return out / method if n_seeds == 1 else out / method / f"seed{seed}"


@dataclass
class RowRun:
    """One row trained (or reused) with one seed: its table numbers and where they came from."""

    method: str
    seed: int
    values: dict[str, float | None]
    reused: bool
    folder: Path
    steps: str | None = None  # the per-step old/new/all table of a run trained now (``runner.format_table``)
    replaced: bool = False  # trained over a finished run of another config (e.g. another --set)
    task: str | None = None  # the config's task (``data.task``): its class ranges name the range columns


def _clean(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def row_values(cfg: Config, results: dict, seconds: float | None) -> dict[str, float | None]:
    """The table numbers of one run from its ``results.json`` content."""
    first, last = results["steps"][0], results["steps"][-1]
    other = last.get("other_eval") or {}
    return {
        "step0_old": _clean(first.get("miou_old")),
        **{k: _clean(last.get(k)) for k in ("miou_old", "miou_new", "miou_all", "miou_all_mib")},
        **{f"{src}/{k}": _clean((other.get(src) or {}).get(k)) for src in extra_sources(cfg) for k in EXTRA_KEYS},
        **range_values(cfg.data.task, last.get("per_class_iou") or {}),
        "mask_miou": _clean(mask_quality(cfg, last["step"])),
        "seconds": None if seconds is None else round(seconds, 1),
    }


def reusable(cfg: Config, folder: Path) -> bool:
    """True when ``folder`` holds a finished run of exactly ``cfg``: its ``results.json`` and the same resolved
    ``config.yaml`` (written after results.json, so a run killed in between is trained again)."""
    saved = folder / "config.yaml"
    return (folder / "results.json").is_file() and saved.is_file() and saved.read_text() == dump_config(cfg)


def run_row(cfg: Config, folder: Path, cache_dir: Path, name: str | None = None) -> RowRun:
    """Train one row with one seed into ``folder`` (step 0 from the cache), or reuse the finished run there;
    ``name``: the row's name in the table (default: the method's)."""
    name = name or cfg.method.name
    if reusable(cfg, folder):
        results = json.loads((folder / "results.json").read_text())
        row_file = folder / ROW_FILE
        seconds = json.loads(row_file.read_text()).get("seconds") if row_file.is_file() else None
        return RowRun(name, cfg.run.seed, row_values(cfg, results, seconds), True, folder, task=cfg.data.task)
    replaced = (folder / "results.json").is_file()
    start = time.perf_counter()
    rows = run_task(cfg, folder, cache_dir)
    seconds = time.perf_counter() - start
    results = json.loads((folder / "results.json").read_text())
    values = row_values(cfg, results, seconds)
    atomic_write_text(folder / ROW_FILE, json.dumps({"seed": cfg.run.seed, **values}, indent=2))
    return RowRun(name, cfg.run.seed, values, False, folder, format_table(cfg, rows), replaced, cfg.data.task)


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def describe(run: RowRun) -> str:
    """The console line of one finished (row, seed)."""
    v = run.values
    cols = ", ".join(f"{head} {_fmt(v[key], digits)}" for key, head, digits in COLUMNS[:4])
    what = f"reused {run.folder / 'results.json'}" if run.reused else f"trained in {_fmt(v['seconds'], 0)} s"
    if run.replaced:
        what += f", replacing the run of another config in {run.folder}"
    return f"seed {run.seed}  {run.method:<13} {cols}  ({what})"


def run_table(
    configs: dict[str, Config],
    seeds: Sequence[int],
    out: Path,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> list[RowRun]:
    """Every row of ``configs`` once per seed, seed by seed: the step 0s a seed's rows need are trained (or read
    from the cache) first, so that no row's time includes one, then each row is trained or reused."""
    runs = []
    for seed in seeds:
        seeded = {m: with_seed(cfg, seed) for m, cfg in configs.items()}
        folders = {m: run_dir(out, m, seed, len(seeds)) for m in seeded}
        todo = [c for m, c in seeded.items() if not reusable(c, folders[m])]
        shared = {step_key(c, 0): c for c in todo if get_method(c.method.name).step0 is not None}
        for cfg in shared.values():
            cached_step(cfg, 0, cache_dir)
        for method, cfg in seeded.items():
            runs.append(run_row(cfg, folders[method], cache_dir, method))
            if runs[-1].steps:
                log(runs[-1].steps)
            log(describe(runs[-1]))
    return runs


def _columns_of(runs: Sequence[RowRun]) -> tuple[tuple[str, str, int], ...]:
    """The columns of a table of ``runs``: the fixed ones, those of the further validation sets they have and, for a
    task of several incremental steps, its class ranges (after the all column)."""
    cols = columns(tuple(dict.fromkeys(k.split("/")[0] for r in runs[:1] for k in r.values if "/" in k)))
    ranges = class_ranges(runs[0].task) if runs and runs[0].task else ()
    if not ranges or RANGE_KEYS[0] not in runs[0].values:
        return cols
    i = [k for k, _, _ in cols].index("miou_all_mib")
    return cols[:i] + ranges + cols[i:]


def table_json(runs: Sequence[RowRun], seeds: Sequence[int]) -> list | dict:
    """``table.json``: one seed, a list of rows of numbers (the single-run schema); several seeds, per row and
    column the summary (n, mean, std, low, high) and the per-seed ``values``, with each seed's raw row."""
    if len(seeds) == 1:
        return [{"method": r.method, **r.values} for r in runs]
    cols = _columns_of(runs)
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = sorted((r for r in runs if r.method == method), key=lambda r: r.seed)
        row: dict = {"method": method}
        for key, _, _ in cols:
            values = [r.values[key] for r in mine]
            row[key] = {**summarize(values).as_dict(), "values": values}
        row["runs"] = [{"seed": r.seed, **r.values} for r in mine]
        rows.append(row)
    return {
        "seeds": list(seeds),
        "statistics": f"mean and sample std (ddof=1) over the seeds; low/high: the {CONFIDENCE:.0%} Student-t "
        "interval of the mean; values: one per seed, in the order of 'seeds' (null: no number)",
        "rows": rows,
    }


def table_md(runs: Sequence[RowRun], seeds: Sequence[int]) -> str:
    """``table.md``: one line per row; with several seeds each cell is mean ± sample std over the seeds."""
    cols = _columns_of(runs)
    head = "| method | " + " | ".join(h for _, h, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    if len(seeds) == 1:
        for r in runs:
            lines.append(f"| {r.method} | " + " | ".join(_fmt(r.values[k], d) for k, _, d in cols) + " |")
        return "\n".join(lines) + "\n"
    intro = (
        f"{len(seeds)} seeds (run.seed {', '.join(map(str, seeds))}): each cell is the mean ± the sample standard "
        f"deviation (ddof=1) over the seeds; the {CONFIDENCE:.0%} Student-t interval of each mean and the "
        "per-seed values are in table.json."
    )
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        cells = [format_summary(summarize([r.values[k] for r in mine]), d) for k, _, d in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return intro + "\n\n" + "\n".join(lines) + "\n"


def write_table(runs: Sequence[RowRun], seeds: Sequence[int], out: Path) -> str:
    """Write ``table.md`` and ``table.json`` under ``out`` (atomically); returns the markdown."""
    md = table_md(runs, seeds)
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.json", json.dumps(table_json(runs, seeds), indent=2))
    return md
