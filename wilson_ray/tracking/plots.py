"""Figures and tables of a trained step and of a sweep: per-class IoU bars, confusion matrix, prediction overlays,
sweep summary. Matplotlib (Agg) only; every file is written atomically. No mlflow, no ray here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from wilson_ray.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or opened)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically and close it; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plt_cmap(name: str = "inferno"):
    return pyplot().get_cmap(name)


def palette(n: int) -> np.ndarray:
    """The Pascal VOC colour map (uint8 [n, 3]); index 255 (void) is drawn white by ``colorize``."""
    cmap = np.zeros((max(n, 1), 3), dtype=np.uint8)
    for i in range(max(n, 1)):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def colorize(mask: np.ndarray, n: int) -> np.ndarray:
    pal = palette(n)
    out = np.full(mask.shape + (3,), 255, dtype=np.uint8)
    valid = mask < n
    out[valid] = pal[mask[valid]]
    return out


# ---------------------------------------------------------------------------------------------------------------
# One step


def iou_bar_png(
    per_class: dict[str, float], path: str | Path, new_classes: Iterable[str] = (), title: str | None = None
) -> Path:
    """Bar chart of per-class IoU (%), new classes of the step in orange, old ones (and background) in blue."""
    plt = pyplot()
    names = list(per_class)
    values = [0.0 if v is None or not math.isfinite(v) else float(v) for v in per_class.values()]
    new = set(new_classes)
    colors = ["tab:orange" if n in new else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 1.5), 3.6))
    ax.bar(range(len(names)), values, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    if new:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color="tab:blue", label="old"), Patch(color="tab:orange", label="new")],
            fontsize=7,
            loc="upper right",
        )
    ax.set_title(title or "per-class IoU", fontsize=9)
    return save_figure(fig, Path(path))


def confusion_png(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, title: str | None = None
) -> Path:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction)."""
    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.28 * n + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=6)
    ax.set_yticks(range(n), class_names, fontsize=6)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=9)
    return save_figure(fig, Path(path))


def write_confusion(confusion: np.ndarray, class_names: Sequence[str], directory: str | Path) -> list[Path]:
    """``confusion.npy`` (raw int64 counts) and ``confusion.csv`` (with class-name header) in ``directory``."""
    directory = Path(directory)
    cm = np.asarray(confusion, dtype=np.int64)
    buf = io.BytesIO()
    np.save(buf, cm)
    npy = atomic_write_bytes(directory / "confusion.npy", buf.getvalue())
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["gt \\ pred", *class_names])
    for name, row in zip(class_names, cm.tolist()):
        w.writerow([name, *row])
    return [npy, atomic_write_text(directory / "confusion.csv", text.getvalue())]


def write_per_class(per_class: dict[str, float], directory: str | Path) -> list[Path]:
    directory = Path(directory)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["class", "iou"])
    for k, v in per_class.items():
        w.writerow([k, f"{v:.4f}"])
    return [
        atomic_write_text(directory / "per_class_iou.csv", text.getvalue()),
        atomic_write_text(directory / "per_class_iou.json", json.dumps(per_class, indent=1)),
    ]


def overlays_png(
    checkpoint: str | Path, path: str | Path, n: int = 4, data_root: str | None = None, device: str = "cpu", weak=None
) -> Path | None:
    """Image | ground truth | prediction for the first ``n`` val images of the checkpoint's task and step, and
    with ``weak(image [1,3,H,W], labels [1,C]) -> (localizer map [H,W] in [0,1], pseudo-label [H,W])`` (a weak
    method's localizer and its pseudo-label at the end of the step) those two panels too.

    Loads the model with ``weights_only=True`` (``step_setup.model_from_checkpoint``) and the val set of the
    checkpoint's config. Returns None when the val set is empty.
    """
    import torch

    from wilson_ray.config import config_from_dict
    from wilson_ray.data.transforms import denormalise
    from wilson_ray.step_setup import build_step_dataset, model_from_checkpoint, task_of

    model, ckpt = model_from_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"checkpoint {checkpoint}")
    if data_root:
        cfg.data.root = data_root
    step = int(ckpt["step"])
    task = task_of(cfg).train
    dataset = build_step_dataset(cfg, task, step, "val")
    count = min(n, len(dataset))
    if count == 0:
        return None
    k = task.num_classes(step)
    model.to(device)
    rows = []
    titles = ["image", "ground truth", "prediction"]
    if weak is not None:
        titles += ["localizer (new classes)", "pseudo-label"]
    # images with a new class first: the ones a weak step is about
    new_ids = set(range(k - len(task.class_names(step)) + len(task.class_names(step - 1)), k)) if step > 0 else set()
    order = (
        sorted(range(len(dataset)), key=lambda i: not (set(np.unique(dataset[i][1].numpy())) & new_ids))[:count]
        if new_ids and len(dataset) <= 400
        else list(range(count))
    )
    present: set[int] = set()  # class ids drawn anywhere in the figure: its colour key
    with torch.no_grad():
        for i in order:
            image, mask, labels = dataset[i]
            logits = model(image.unsqueeze(0).to(device), upsample=True).logits
            pred = logits.argmax(1)[0].cpu().numpy().astype(np.int64)
            img = (denormalise(image).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            row = [img, colorize(mask.numpy().astype(np.int64), k), colorize(pred, k)]
            present |= set(np.unique(mask.numpy()).tolist()) | set(np.unique(pred).tolist())
            if weak is not None:
                heat, pseudo = weak(image.unsqueeze(0), labels.unsqueeze(0))
                present |= set(np.unique(np.asarray(pseudo)).tolist())
                row += [
                    (plt_cmap()(np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8),
                    colorize(np.asarray(pseudo, dtype=np.int64), k),
                ]
            rows.append(row)
    names = task.class_names(step)
    fig = overlays_figure(rows, titles, names, present, f"task {task.name} step {step}: {len(names)} classes")
    return save_figure(fig, Path(path))


def overlays_figure(
    rows: list[list[np.ndarray]], titles: Sequence[str], names: Sequence[str], present: set[int], title: str
):
    """The overlay grid (one row per image, one column per title), a colour key of the classes ``present`` and,
    when a column is the localizer map, a colour bar of its scores under that column."""
    plt = pyplot()
    count = len(rows)
    fig, axes = plt.subplots(count, len(titles), figsize=(2.5 * len(titles), 2.5 * count), squeeze=False)
    for r, images in enumerate(rows):
        for c, (im, label) in enumerate(zip(images, titles)):
            axes[r][c].imshow(im)
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    _class_key(fig, present, names, len(names))
    heat = [c for c, t in enumerate(titles) if t.startswith("localizer")]
    if heat:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        fig.canvas.draw()  # final axes positions, so the bar sits right under the column
        pos = axes[-1][heat[0]].get_position()
        cax = fig.add_axes([pos.x0, pos.y0 - 0.03, pos.width, 0.012])
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), plt_cmap()), cax=cax, orientation="horizontal")
        bar.set_label("localizer score", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig


def _class_key(fig, present: set[int], names: Sequence[str], n: int) -> None:
    """A legend under the figure: the colour of every class drawn in it (void, 255, is white)."""
    from matplotlib.patches import Patch

    pal = palette(n)
    handles = [Patch(facecolor=pal[c] / 255.0, edgecolor="k", label=names[c]) for c in sorted(present) if c < n]
    if 255 in present:
        handles.append(Patch(facecolor="white", edgecolor="k", label="void (255)"))
    if handles:
        fig.legend(
            handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, bbox_to_anchor=(0.5, -0.02)
        )


# ---------------------------------------------------------------------------------------------------------------
# A sweep


def sweep_summary_figure(
    rows: Sequence[dict[str, Any]],
    metric: str,
    curves: dict[str, list[tuple[int, float]]] | None = None,
    mode: str = "max",
):
    """Left: old vs new mIoU per trial (colour: ``metric``, the best circled); right: ``metric`` per epoch, one
    line per trial (``curves``: trial -> [(epoch, value of ``metric``)]). Returns the matplotlib figure."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    pts = [(r.get("miou_old"), r.get("miou_new"), r.get(metric), r.get("trial")) for r in rows]
    pts = [p for p in pts if all(isinstance(v, (int, float)) and math.isfinite(v) for v in p[:3])]
    if pts:
        xs, ys, cs, names = zip(*pts)
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=50, edgecolors="k", linewidths=0.5)
        fig.colorbar(sc, ax=ax, label=metric)
        best = int(np.argmax(cs) if mode == "max" else np.argmin(cs))
        ax.scatter([xs[best]], [ys[best]], s=220, facecolors="none", edgecolors="red", linewidths=1.5)
        for x, y, name in zip(xs, ys, names):
            ax.annotate(str(name)[:8], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mIoU old classes (%)")
    ax.set_ylabel("mIoU new classes (%)")
    ax.set_title(f"{len(rows)} trials", fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for name, curve in (curves or {}).items():
        if curve:
            e, v = zip(*sorted(curve))
            ax.plot(e, v, marker=".", label=str(name)[:8])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if curves and len(curves) <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.set_title(f"{metric} per epoch", fontsize=9)
    fig.tight_layout()
    return fig


def sweep_summary_png(
    rows: Sequence[dict[str, Any]],
    metric: str,
    path: str | Path,
    curves: dict[str, list[tuple[int, float]]] | None = None,
    mode: str = "max",
) -> Path:
    """``sweep_summary_figure`` written to ``path`` (PNG, atomically)."""
    return save_figure(sweep_summary_figure(rows, metric, curves, mode), Path(path))


def write_table_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return atomic_write(path, lambda p: p.write_text(text.getvalue(), encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Learning curves (a trial's summary and the sweep report)

CURVE_KEYS = (
    ("miou_old", "old", "tab:blue"),
    ("miou_new", "new", "tab:orange"),
    ("miou_all", "all", "tab:green"),
    ("miou_hm", "hm", "tab:red"),
)
CURVE_TITLES = {
    "old": "mIoU old classes",
    "new": "mIoU new classes",
    "all": "mIoU all (background included)",
    "hm": "miou_hm: harmonic mean of old and new",
}


def _evaluated(epochs: dict[int, dict[str, float]]) -> list[tuple[int, dict[str, float]]]:
    return [(e, m) for e, m in sorted(epochs.items()) if "miou_all" in m and m.get("evaluated", 1)]


def learning_curves_png(
    trials: dict[str, dict[int, dict[str, float]]],
    path: str | Path,
    stopped: dict[str, int] | None = None,
    best: str | None = None,
    max_epochs: int | None = None,
    marks: Sequence[int] = (),
) -> Path:
    """Old / new / all mIoU and their harmonic mean (``miou_hm``, the demo's objective) per epoch, one panel each,
    one line per trial (the best one thick); a trial ASHA stopped ends in an x at its rung; ``marks``: epochs drawn
    as dotted verticals (ASHA's rungs)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(16, 3.8), sharex=True)
    cmap = plt.get_cmap("tab10")
    for i, (name, epochs) in enumerate(trials.items()):
        pts = _evaluated(epochs)
        if not pts:
            continue
        color = cmap(i % 10)
        xs = [e for e, _ in pts]
        for ax, (key, label, _) in zip(axes, CURVE_KEYS):
            ys = [m.get(key, float("nan")) for _, m in pts]
            lw = 2.6 if name == best else 1.2
            ax.plot(xs, ys, marker=".", color=color, lw=lw, label=str(name)[:8] + (" (best)" if name == best else ""))
            if stopped and name in stopped:
                ax.plot([xs[-1]], [ys[-1]], marker="x", color=color, ms=9, mew=2)
    for ax, (_, label, _) in zip(axes, CURVE_KEYS):
        for m in marks:
            ax.axvline(m, color="grey", ls=":", lw=1)
        ax.set_title(CURVE_TITLES[label], fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if max_epochs:
            ax.set_xlim(0.5, max_epochs + 0.5)
            ax.set_xticks(range(1, max_epochs + 1))
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("mIoU (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        note = " (x: stopped by ASHA; dotted: ASHA rungs)" if stopped or marks else ""
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(8, len(labels)),
            fontsize=7,
            bbox_to_anchor=(0.5, -0.08),
            title="trial" + note,
            title_fontsize=7,
        )
    fig.tight_layout()
    return save_figure(fig, Path(path))


def confirmation_png(stage: dict[str, Any], path: str | Path) -> Path:
    """The seed confirmation stage: per configuration (x) each seed's value (dots), the mean (bar) and its 95 %
    Student-t interval (whisker), one panel per column (the objective, old mIoU, new mIoU)."""
    plt = pyplot()
    groups = list(stage["groups"])
    cols = list(dict.fromkeys([stage["metric"], "miou_old", "miou_new"]))
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.4), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for i, g in enumerate(groups):
            s = stage["groups"][g]
            vals = [v for v in s["values"].get(col, []) if v is not None]
            colour = "tab:gray" if g == "default" else ("tab:orange" if g == stage.get("best") else "tab:blue")
            ax.scatter([i] * len(vals), vals, s=18, color=colour, alpha=0.7, zorder=3)
            m = s[col]
            if m.get("mean") is not None:
                lo, hi = m.get("low"), m.get("high")
                yerr = [[m["mean"] - lo], [hi - m["mean"]]] if lo is not None and hi is not None else None
                ax.errorbar([i + 0.18], [m["mean"]], yerr=yerr, fmt="_", ms=14, color=colour, capsize=4, zorder=4)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlim(-0.5, len(groups) - 0.3)
        title = {"miou_hm": "harmonic mean of old and new mIoU", "miou_old": "old mIoU", "miou_new": "new mIoU"}
        ax.set_title(title.get(col, col), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("mIoU (%)")
    fig.suptitle(
        "seed confirmation: dots = seeds, bar = mean, whisker = 95 % interval (orange: best, grey: default)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, Path(path))
