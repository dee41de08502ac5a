"""torch Dataset of one (task, step, split): remapped masks and image-level labels (method.md §1.1, §1.3, §1.4).

Roots. ``root`` is either one folder, used for every source of the task, or a mapping from layout to folder,
``{"voc": VOC_ROOT, "coco": COCO_ROOT}``: the ``voc`` and ``voc-as-coco`` sources read the VOC root, ``coco`` the
COCO root. A VOC-only task needs just the VOC folder; coco-voc needs the mapping (or a single root per call with an
explicit ``source``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from wilson_ray import protocol
from wilson_ray.data import coco, voc
from wilson_ray.data.extras import ExtraInput
from wilson_ray.data.manifest import Manifest, read_image, read_mask
from wilson_ray.data.transforms import EVAL_MODES, eval_transform, to_tv_tensors, train_transform
from wilson_ray.errors import UserError
from wilson_ray.protocol import Task

Root = Union[str, PathLike, Mapping[str, Union[str, PathLike]]]


@dataclass(frozen=True)
class Source:
    """A training/evaluation source: which layout it reads, its task dataset, and how its masks are re-coded."""

    name: str
    layout: str  # key of the root mapping: "voc" or "coco"
    dataset: str  # protocol dataset whose ids the (re-coded) masks hold
    manifest: Callable[[Path, str], Manifest]
    recode: np.ndarray | None = None  # uint8 [256] applied to mask values before the task LUT


SOURCES: dict[str, Source] = {
    "voc": Source("voc", "voc", "voc", voc.voc_manifest),
    "coco": Source("coco", "coco", "coco", coco.coco_manifest),
    "voc-as-coco": Source("voc-as-coco", "voc", "coco", coco.voc_as_coco_manifest, protocol.recode_voc_to_coco_lut()),
}
SPLITS = ("train", "val")


def get_source(name: str, task: Task | None = None) -> Source:
    """Look up a source; a UserError if unknown or if its label space is not the task's."""
    if name not in SOURCES:
        raise UserError(f"source: unknown data source {name!r}, expected one of {', '.join(SOURCES)}")
    src = SOURCES[name]
    if task is not None and src.dataset != task.dataset:
        raise UserError(
            f"source: {name!r} holds {src.dataset} labels but task '{task.name}' uses {task.dataset} ids; "
            f"expected one of {', '.join(s for s, v in SOURCES.items() if v.dataset == task.dataset)}"
        )
    return src


def resolve_root(root: Root, source: str) -> Path:
    """The folder ``source`` reads: ``root`` itself, or ``root[layout]`` when ``root`` is a mapping."""
    layout = get_source(source).layout
    if isinstance(root, Mapping):
        if layout not in root:
            raise UserError(
                f"root: no folder given for the {layout} layout (source {source!r}); expected a mapping with a "
                f"{layout!r} entry, got {', '.join(map(str, root)) or 'none'}"
            )
        return Path(root[layout]).expanduser()
    return Path(root).expanduser()


def source_manifest(root: Root, source: str, split: str) -> Manifest:
    """The manifest of ``source`` / ``split`` under ``root`` (see the module docstring for ``root``)."""
    voc.check_split(split)
    return get_source(source).manifest(resolve_root(root, source), split)


def default_source(task: Task, step: int, split: str) -> str:
    """The task's source for ``split``: ``train_data[step]`` for train, ``eval_data[0]`` for val."""
    return task.train_data[task.check_step(step)] if split == "train" else task.eval_data[0]


def label_matrix(task: Task, step: int, presence: np.ndarray, no_mask: bool = False) -> np.ndarray:
    """Float32 [N, C-1] image-level labels: entry j is 1 iff internal class j+1 is present and visible at ``step``.

    ``presence`` is in dataset-id columns [N, K]; visibility follows ``Task.visible_label_columns`` (only new
    classes at weak steps unless ``no_mask``).
    """
    seen = np.asarray(task.seen_ids(step)[1:], dtype=np.int64)  # dataset id of internal 1..C-1
    labels = np.asarray(presence, dtype=bool)[:, seen - 1]
    visible = np.zeros(len(seen), dtype=bool)
    visible[task.visible_label_columns(step, no_mask) - 1] = True
    return (labels & visible).astype(np.float32)


class SegmentationDataset(Dataset):
    """Images of ``manifest`` at ``indices``; items are ``(image [3,H,W] float, mask [H,W] long, labels [C-1] float)``,
    plus ``{name: tensor}`` of the ``extras`` (``with_extras``), which get the image's crop and flip.

    Masks are validated on load (values, size) and mapped through ``lut`` (dataset id -> internal index).
    """

    extras: tuple[ExtraInput, ...] = ()

    def __init__(
        self,
        manifest: Manifest,
        indices: np.ndarray,
        lut: np.ndarray,
        labels: np.ndarray,
        transform: Callable,
        num_classes: int,
        class_names: list[str],
        task: Task | None = None,
        step: int | None = None,
        split: str | None = None,
        source: str | None = None,
    ):
        self.manifest = manifest
        self.indices = np.asarray(indices, dtype=np.int64)
        self.lut = np.asarray(lut, dtype=np.uint8)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        self.transform = transform
        self.num_classes = num_classes
        self.class_names = class_names
        self.task, self.step, self.split, self.source = task, step, split, source
        self._images = manifest.images
        self._masks = manifest.masks
        self._valid = manifest.spec.valid_values

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset(task={getattr(self.task, 'name', None)!r}, step={self.step}, "
            f"split={self.split!r}, source={self.source!r}, n={len(self)}, num_classes={self.num_classes})"
        )

    def image_id(self, item: int) -> str:
        return self.manifest.table.column("image_id")[int(self.indices[item])].as_py()

    def load(self, item: int):
        """The raw RGB image and the remapped uint8 mask of ``item``, before transforms."""
        i = int(self.indices[item])
        where = self.manifest.where(i)
        image = read_image(self.manifest.root / self._images[i], where)
        mask_path = self.manifest.root / self._masks[i]
        mask = read_mask(mask_path, self._valid, where)
        if mask.shape != (image.height, image.width):
            raise UserError(
                f"{where}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
                f"{image.width}x{image.height}; expected equal sizes"
            )
        return image, self.lut[mask]

    def with_extras(self, extras: tuple[ExtraInput, ...]) -> "SegmentationDataset":
        """A copy whose items also carry ``extras``; every file is checked first (exists, image's size), so a
        missing or mis-sized one is a UserError before anything trains."""
        images = self._images
        for item in range(len(self)):
            i = int(self.indices[item])
            for extra in extras:
                extra.check(self.image_id(item), self.manifest.root / images[i], self.manifest.where(i))
        out = copy.copy(self)
        out.extras = tuple(extras)
        return out

    def __getitem__(self, item: int):
        image, mask = self.load(item)
        if not self.extras:
            image, mask = self.transform(*to_tv_tensors(image, mask))
            return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long(), self.labels[item]
        where = self.manifest.where(int(self.indices[item]))
        raw = [tv_tensors.Mask(torch.from_numpy(e.read(self.image_id(item), image.size, where))) for e in self.extras]
        image, mask, *raw = self.transform(*to_tv_tensors(image, mask), *raw)  # one crop/flip for all of them
        extras = {e.name: e.finish(v.as_subclass(torch.Tensor)) for e, v in zip(self.extras, raw)}
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long(), self.labels[item], extras


def task_lut(task: Task, step: int, training: bool, source: str) -> np.ndarray:
    """uint8 [256] mapping a mask value of ``source`` to an internal index (re-coding VOC to COCO first if needed)."""
    lut = task.label_lut(step, training)
    recode = get_source(source).recode
    return lut if recode is None else lut[recode]


def build_dataset(
    root: Root,
    task: Task,
    step: int,
    split: str,
    overlap: bool = False,
    no_mask: bool = False,
    crop_size: int = 512,
    eval_mode: str = "crop",
    source: str | None = None,
    check_files: bool = True,
) -> SegmentationDataset:
    """The Dataset of ``task`` at ``step`` for ``split`` (``"train"`` or ``"val"``).

    Train: the images ``task.select`` picks (disjoint or ``overlap``), masks with void and unseen classes -> 0,
    augmented (``train_transform``). Val: every image of the val list, void kept as 255, ``eval_transform``
    (``eval_mode`` ``crop`` or ``full``). ``source`` defaults to ``default_source``. ``check_files`` stats every
    selected file up front so a broken layout fails at build time, not in a data-loader worker.
    """
    step = task.check_step(step)
    if split not in SPLITS:
        raise UserError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    if eval_mode not in EVAL_MODES:
        raise UserError(f"eval_mode: got {eval_mode!r}, expected one of {', '.join(EVAL_MODES)}")
    if not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise UserError(f"crop_size: got {crop_size!r}, expected a positive integer")
    protocol.check_overlap(task, overlap)
    source = source or default_source(task, step, split)
    get_source(source, task)
    manifest = source_manifest(root, source, split)
    training = split == "train"
    presence = manifest.presence()
    if training:
        indices = task.select(presence, step, overlap)
        if indices.size == 0:
            raise UserError(
                f"{manifest.list_file}: no image contains a class of task '{task.name}' step {step} "
                f"({', '.join(task.spec.class_names[c] for c in task.new_ids(step))}); expected at least one"
            )
    else:
        indices = np.arange(len(manifest))
    if check_files:
        manifest.check_files(indices)
    transform = train_transform(crop_size) if training else eval_transform(crop_size, eval_mode)
    return SegmentationDataset(
        manifest,
        indices,
        task_lut(task, step, training, source),
        label_matrix(task, step, presence[indices], no_mask),
        transform,
        task.num_classes(step),
        task.class_names(step),
        task,
        step,
        split,
        source,
    )


def summary(root: Root, task: Task, overlap: bool = False) -> list[dict]:
    """Per step: ``{"step", "classes" (names learned at the step), "count", "indices"}`` of the training images.

    Needs only the split lists and class presence (label files or masks), no images.
    """
    protocol.check_overlap(task, overlap)
    out = []
    for step in range(task.num_steps):
        source = get_source(default_source(task, step, "train"), task).name
        manifest = source_manifest(root, source, "train")
        indices = task.select(manifest.presence(), step, overlap)
        out.append(
            {
                "step": step,
                "classes": [task.spec.class_names[c] for c in task.steps[step]],
                "count": int(indices.size),
                "indices": indices.tolist(),
            }
        )
    return out
