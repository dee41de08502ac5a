"""The shared two-stage adapter of the image-label rows (baselines.md §0), steps 1-2: train a WSSS learner on the
step's training images with their new-class image labels, infer its hard pseudo-masks, cache them.

The masks are keyed by learner, task, step, setting, learner config, model, seed and the data stamp, and live in
``<data root>/PseudoLabels/<learner>_<task>_<step>_<dis|ov>_<key>/`` (or the user cache for a read-only root), one
``<image id>.png`` per training image in the step's internal class indices (255 = ignore), plus ``quality.json``:
the masks' mIoU against the ground truth of those images. Made once under a file lock (``store.compute_once``: the
first process trains, the others wait and read) and published with an atomic folder rename, so every later run,
sweep trial, rank and loader worker reads the same finished masks.

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wilson_ray.atomic import atomic_write_text
from wilson_ray.data.extras import data_input
from wilson_ray.data.manifest import data_stamp, root_writable, user_cache_dir
from wilson_ray.data.transforms import eval_transform
from wilson_ray.hashing import config_hash
from wilson_ray.metrics import ConfusionMatrix, per_class_iou
from wilson_ray.protocol import VOID, Task
from wilson_ray.runtime import resolve_device, seed_worker
from wilson_ray.store import compute_once
from wilson_ray.weak.base import WeakLearner

if TYPE_CHECKING:
    from wilson_ray.config import Config

PSEUDO_DIR = "PseudoLabels"
QUALITY_FILE = "quality.json"
LEARNER_OUTPUT_STRIDE = 8  # ResNet-38 of the WSSS repositories (SEAM, EPS, SS) keeps stride 8


# ---------------------------------------------------------------------------------------------------------------
# Where the masks live


def mask_key(cfg: Config, task: Task, step: int, learner: str, params: Any) -> str:
    """Hash of everything that shapes the masks: learner and its knobs, task, step, setting, label visibility,
    the learner's backbone and init, the seed and the data (split lists)."""
    m = cfg.model
    parts = {
        "learner": learner,
        "params": dataclasses.asdict(params),
        "task": task.name,
        "step": step,
        "overlap": cfg.data.overlap,
        "no_mask": cfg.data.no_mask,
        "seed": cfg.run.seed,
        "model": {"backbone": m.backbone, "norm": m.norm, "pretrained": m.pretrained, "small_width": m.small_width},
        "stamp": data_stamp(cfg.data.root_of(task.train_data[step])),
        "version": 1,
    }
    return config_hash(parts, length=16)


def masks_root(data_root: str | Path) -> Path:
    """``<root>/PseudoLabels`` for a writable root, else the user cache's folder of that root."""
    root = Path(data_root).expanduser().resolve()
    return (root if root_writable(root) else user_cache_dir(root)) / PSEUDO_DIR


def mask_folder(cfg: Config, task: Task, step: int, learner: str, params: Any) -> Path:
    """The cache entry of this learner's masks at ``step`` (it may not exist yet)."""
    setting = "ov" if cfg.data.overlap else "dis"
    name = f"{learner}_{task.name}_{step}_{setting}_{mask_key(cfg, task, step, learner, params)}"
    return masks_root(cfg.data.root_of(task.train_data[step])) / name


def read_quality(folder: str | Path) -> dict | None:
    """The ``quality.json`` of a finished mask folder (mask mIoU, counts, seconds), or None."""
    try:
        return json.loads((Path(folder) / QUALITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# The learner's views of the step's training images


def label_columns(task: Task, step: int, no_mask: bool) -> slice:
    """Columns of the step's label vector [C-1] the learner sees: the new classes, or every class (``no_mask``)."""
    return slice(0, None) if no_mask else slice(task.num_old(step) - 1, None)


class _LearnerView(Dataset):
    """(image, mask, labels[columns], extras) of a step dataset: what the learner trains on."""

    def __init__(self, dataset, columns: slice):
        self.dataset, self.columns = dataset, columns

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, mask, labels, *rest = self.dataset[i]
        return image, mask, labels[self.columns], (rest[0] if rest else {})


class InferenceView(Dataset):
    """Un-augmented full images: (image [3,H,W] normalised, labels [K], extras, image id), the learner's
    ``after_training`` / ``infer_mask`` input; ``ground_truth(i)`` is the step's mask with void kept."""

    def __init__(self, dataset, columns: slice):
        base = copy.copy(dataset)
        base.transform = eval_transform(1, "full")
        base.lut = dataset.lut.copy()
        base.lut[VOID] = VOID  # void stays ignored when scoring the masks
        self.dataset, self.columns = base, columns

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, _, labels, *rest = self.dataset[i]
        return image, labels[self.columns], (rest[0] if rest else {}), self.dataset.image_id(i)

    def ground_truth(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.dataset.load(i)[1].astype(np.int64))


def learner_datasets(
    cfg: Config, task: Task, step: int, learner_cls: type[WeakLearner], params: Any
) -> tuple[Dataset, InferenceView]:
    """(augmented training view at the learner's crop, un-augmented inference view) of the step's training images
    (the disjoint/overlap selection of every method), with the learner's extra inputs checked."""
    from wilson_ray.data.dataset import build_dataset

    source = task.train_data[step]
    root = cfg.data.root_of(source)
    dataset = build_dataset(
        root,
        task,
        step,
        "train",
        overlap=cfg.data.overlap,
        no_mask=cfg.data.no_mask,
        crop_size=params.crop_size,
        source=source,
    )
    if learner_cls.extra_inputs:
        dataset = dataset.with_extras(tuple(data_input(n, root, learner_cls.name) for n in learner_cls.extra_inputs))
    columns = label_columns(task, step, cfg.data.no_mask)
    return _LearnerView(dataset, columns), InferenceView(dataset, columns)


def learner_model_config(cfg: Config, params: Any):
    """The learner's backbone settings at the WSSS nets' output stride 8: the run's backbone and init, or the
    learner's own ``backbone`` with its ``pretrained`` init (e.g. Wide-ResNet-38 as in the paper's rows)."""
    m = cfg.model
    backbone, pretrained = getattr(params, "backbone", None), getattr(params, "pretrained", None)
    if backbone is not None and backbone != m.backbone:
        m = dataclasses.replace(m, backbone=backbone, pretrained=pretrained)
    elif pretrained is not None:
        m = dataclasses.replace(m, pretrained=pretrained)
    return dataclasses.replace(m, output_stride=LEARNER_OUTPUT_STRIDE)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: train the learner's net


def train_learner(
    learner: WeakLearner, cfg: Config, dataset: Dataset, device: torch.device, seed: int
) -> torch.nn.Module:
    """Train ``learner``'s net on ``dataset`` with its own schedule (SGD, poly LR, ``LearnerSchedule`` knobs);
    returns the net in eval mode."""
    from wilson_ray.methods.base import Batch

    p = learner.p
    torch.manual_seed(seed)
    net = learner.build_net(learner_model_config(cfg, p)).to(device)
    optimizer = torch.optim.SGD(learner.param_groups(net, p.lr, p.weight_decay), lr=p.lr, momentum=p.momentum)
    batch_size = min(p.batch_size, len(dataset))
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    iters = len(loader) if not p.max_iters_per_epoch else min(len(loader), p.max_iters_per_epoch)
    total = max(1, p.epochs * iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** p.power)
    net.train()
    for epoch in range(p.epochs):
        for it, (images, _, labels, extras) in enumerate(loader):
            if it >= iters:
                break
            batch = Batch(
                images.to(device), torch.empty(0), labels.to(device), {k: v.to(device) for k, v in extras.items()}
            )
            optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients freed for its peak
            terms = learner.losses(net, batch, epoch)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                bad = ", ".join(k for k, v in terms.items() if not torch.isfinite(v)) or "total"
                raise RuntimeError(
                    f"{learner.name} learner: non-finite loss at epoch {epoch + 1} iteration {it + 1}: {bad}"
                )
            loss.backward()
            optimizer.step()
            scheduler.step()
    return net.eval()


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: infer and score the masks


@torch.no_grad()
def infer_masks(
    learner: WeakLearner,
    net: torch.nn.Module,
    view: InferenceView,
    folder: Path,
    offset: int,
    num_classes: int,
    device: torch.device,
) -> dict:
    """Write ``learner.infer_mask`` of every image of ``view`` to ``folder/<id>.png`` in internal indices (learner
    class k -> k + ``offset``) and return the quality figures against the ground truth (mIoU over background +
    the learned classes, as WSSS papers report, and over the learned classes alone)."""
    cm = ConfusionMatrix(num_classes)
    for i in range(len(view)):
        image, labels, extras, image_id = view[i]
        extras = {k: v.unsqueeze(0).to(device) for k, v in extras.items()}
        mask = learner.infer_mask(net, image.unsqueeze(0).to(device), labels.to(device), extras).cpu().long()
        internal = torch.where((mask > 0) & (mask != VOID), mask + offset, mask)
        Image.fromarray(internal.numpy().astype(np.uint8)).save(folder / f"{image_id}.png")
        cm.update(internal, view.ground_truth(i))
    iou = per_class_iou(cm.numpy()) * 100.0
    learned = [0] + list(range(offset + 1, num_classes))
    mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return {
        "mask_miou": mean(iou[learned]),
        "mask_miou_new": mean(iou[learned[1:]]),
        "mask_iou": {str(c): (None if math.isnan(iou[c]) else float(iou[c])) for c in learned},
        "images": len(view),
    }


# ---------------------------------------------------------------------------------------------------------------
# The cache entry


def check_learner_inputs(cfg: Config, task: Task, step: int, learner_cls: type[WeakLearner], params: Any) -> None:
    """Raise the UserError the learner's data would cause (missing/mis-sized saliency maps), writing nothing."""
    if mask_folder(cfg, task, step, learner_cls.name, params).is_dir():
        return
    learner_datasets(cfg, task, step, learner_cls, params)


def ensure_pseudo_masks(
    cfg: Config,
    task: Task,
    step: int,
    learner_cls: type[WeakLearner],
    params: Any,
    device: torch.device | None = None,
    verbose: bool = True,
) -> Path:
    """The folder of ``learner_cls``'s hard pseudo-masks of ``step``'s training images: read from the cache, or
    made (train the learner, run its ``after_training``, infer every mask) and published atomically."""
    folder = mask_folder(cfg, task, step, learner_cls.name, params)
    if (folder / QUALITY_FILE).is_file():
        return folder
    train_view, infer_view = learner_datasets(cfg, task, step, learner_cls, params)  # bad input: error, no write

    def make(tmp: Path) -> Path:
        dev = device or resolve_device(cfg.run.device)
        start = time.perf_counter()
        if verbose:
            print(
                f"pseudo-masks: training the {learner_cls.name} learner on {len(train_view)} images of task "
                f"'{task.name}' step {step} once ({folder})",
                file=sys.stderr,
                flush=True,
            )
        num_labels = task.num_classes(step) - 1 if cfg.data.no_mask else task.num_classes(step) - task.num_old(step)
        learner = learner_cls(params, num_labels)
        seed = cfg.run.seed + 7919 * step
        net = train_learner(learner, cfg, train_view, dev, seed)
        learner.after_training(net, infer_view, dev)
        offset = task.num_classes(step) - 1 - num_labels
        quality = infer_masks(learner, net, infer_view, tmp, offset, task.num_classes(step), dev)
        quality.update(
            {
                "learner": learner_cls.name,
                "task": task.name,
                "step": step,
                "overlap": cfg.data.overlap,
                "seconds": round(time.perf_counter() - start, 1),
                "params": dataclasses.asdict(params),
            }
        )
        atomic_write_text(tmp / QUALITY_FILE, json.dumps(quality, indent=1, default=str) + "\n")
        if verbose:
            print(
                f"pseudo-masks: {learner_cls.name} mask mIoU {quality['mask_miou']:.1f} on the step's training "
                f"images ({quality['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        return tmp  # the folder is the entry

    compute_once(folder, make, lambda f: f if (f / QUALITY_FILE).is_file() else None)
    return folder


__all__ = [
    "InferenceView",
    "check_learner_inputs",
    "ensure_pseudo_masks",
    "infer_masks",
    "learner_datasets",
    "mask_folder",
    "mask_key",
    "masks_root",
    "read_quality",
    "train_learner",
]
