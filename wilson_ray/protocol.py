"""The incremental protocol as data: datasets, class orders, tasks, image selection, visible labels.

method.md §1. A task is a row of ``TASKS``; nothing else in the code branches on task names.

Conventions
-----------
* *Dataset ids* are the label values stored in a dataset's masks (VOC: 0..20; COCO: category ids 0..91).
* *Internal indices* are model channels: 0 is background, then the classes of step 0, step 1, ... in task order.
* A *presence table* is a boolean array [N, K] whose column k-1 says whether dataset id k (k >= 1) has at
  least one pixel in image i (background and 255 are not columns), exactly the layout of
  ``voc_1h_labels_train.npy`` (K = 20) and COCO's ``1h_labels_train.npy`` (K = 91).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wilson_ray.errors import UserError

VOID = 255

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# COCO category ids 1..91 (stuff values and the 11 unused ids become background, method.md §1.4).
COCO_CLASSES: tuple[str, ...] = (
    "background",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "street sign",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "hat",
    "backpack",
    "umbrella",
    "shoe",
    "eye glasses",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "plate",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "mirror",
    "dining table",
    "window",
    "desk",
    "toilet",
    "door",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "blender",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "hair brush",
)

# VOC id -> COCO category id (method.md §1.5); index = VOC id.
VOC_TO_COCO: tuple[int, ...] = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)

COCO_UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


@dataclass(frozen=True)
class DatasetSpec:
    """Label space of a dataset: ``class_names[k]`` is the name of dataset id k."""

    name: str
    class_names: tuple[str, ...]

    @property
    def num_ids(self) -> int:
        """Number of dataset ids, background included (VOC 21, COCO 92)."""
        return len(self.class_names)


DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec("voc", VOC_CLASSES),
    "coco": DatasetSpec("coco", COCO_CLASSES),
}


def _r(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b + 1))


_COCO_VOC_STEP1 = tuple(sorted(VOC_TO_COCO[1:]))
_COCO_VOC_STEP0 = (0,) + tuple(k for k in range(1, 92) if k not in _COCO_VOC_STEP1 and k not in COCO_UNUSED_IDS)


@dataclass(frozen=True)
class Task:
    """One row of the task table.

    ``steps[t]`` lists the dataset ids learned at step t (step 0 includes background 0), in internal order.
    ``train_data[t]`` names the training source of step t: ``"voc"``, ``"coco"`` or ``"voc-as-coco"`` (VOC images
    whose masks are re-coded to COCO ids, method.md §1.5). ``eval_data`` lists the validation sets.
    """

    name: str
    dataset: str
    steps: tuple[tuple[int, ...], ...]
    train_data: tuple[str, ...]
    eval_data: tuple[str, ...]
    paper: bool = False

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

    @cached_property
    def order(self) -> tuple[int, ...]:
        """Dataset id of every internal index, over all steps."""
        return tuple(c for step in self.steps for c in step)

    def flattened(self) -> "Task":
        """The joint (offline) upper bound of this task: one step with every class and all training data."""
        return Task(f"{self.name}-joint", self.dataset, (self.order,), self.train_data[:1], self.eval_data, False)

    def check_step(self, step: int) -> int:
        """Return ``step`` if valid for this task, else raise a UserError naming the range."""
        if not isinstance(step, (int, np.integer)) or not 0 <= step < self.num_steps:
            raise UserError(
                f"step: got {step!r} for task '{self.name}', expected an integer in 0..{self.num_steps - 1}"
            )
        return int(step)

    def classes_per_step(self, step: int) -> list[int]:
        """Number of model channels added at each step up to ``step`` (step 0 counts background)."""
        self.check_step(step)
        return [len(s) for s in self.steps[: step + 1]]

    def num_classes(self, step: int) -> int:
        """Model channels at ``step`` (background + every class seen so far)."""
        return sum(self.classes_per_step(step))

    def num_old(self, step: int) -> int:
        """Channels of the old model at ``step`` (0 at step 0)."""
        return sum(self.classes_per_step(step)[:-1])

    def seen_ids(self, step: int) -> tuple[int, ...]:
        """Dataset ids of internal indices 0..num_classes(step)-1."""
        return self.order[: self.num_classes(step)]

    def new_ids(self, step: int) -> tuple[int, ...]:
        """Dataset ids learned at ``step`` (background excluded)."""
        self.check_step(step)
        return tuple(c for c in self.steps[step] if c != 0)

    def old_ids(self, step: int) -> tuple[int, ...]:
        """Dataset ids learned before ``step`` (background excluded)."""
        return tuple(c for c in self.seen_ids(step)[: self.num_old(step)] if c != 0)

    def future_ids(self, step: int) -> tuple[int, ...]:
        """Dataset ids learned after ``step``."""
        return self.order[self.num_classes(step) :]

    def class_names(self, step: int) -> list[str]:
        """Names of internal indices 0..num_classes(step)-1."""
        return [self.spec.class_names[c] for c in self.seen_ids(step)]

    def internal_split(self, step: int) -> tuple[list[int], list[int]]:
        """Internal indices of (old, new) foreground classes at ``step``: the paper's mIoU columns (§5).

        At step 0 the "old" columns are the step-0 classes and "new" is empty.
        """
        n_old = self.num_old(step)
        n = self.num_classes(step)
        if step == 0:
            return list(range(1, n)), []
        return list(range(1, n_old)), list(range(n_old, n))

    def label_lut(self, step: int, training: bool) -> np.ndarray:
        """Lookup table (uint8, 256 entries) from dataset id to internal index at ``step`` (method.md §1.1, §5).

        Training masks carry pixel labels of the step's own classes only: old and future classes map to
        background. Evaluation masks carry every class seen so far; not-yet-learned classes map to background.
        Void (255) maps to background in training masks (inherited from MiB, method.md §1.1) and stays 255 for
        evaluation, where it is ignored.
        """
        lut = np.zeros(256, dtype=np.uint8)
        n_old = self.num_old(step) if training else 0
        for internal, ds_id in enumerate(self.seen_ids(step)):
            if internal >= n_old:
                lut[ds_id] = internal
        lut[VOID] = 0 if training else VOID
        return lut

    def visible_label_columns(self, step: int, no_mask: bool = False) -> np.ndarray:
        """Internal foreground indices (1..C-1) whose image-level labels are visible at ``step`` (method.md §1.1).

        Weak steps see only the new classes; with ``no_mask`` (paper Tab. 5) every seen class is visible.
        """
        n = self.num_classes(step)
        if no_mask or step == 0:
            return np.arange(1, n)
        return np.arange(self.num_old(step), n)

    def select(self, presence: np.ndarray, step: int, overlap: bool) -> np.ndarray:
        """Indices of the training images of ``step`` (method.md §1.3), a vectorised filter over ``presence``.

        Disjoint: at least one current class, and every present class in old ∪ current.
        Overlap: at least one current class.
        """
        self.check_step(step)
        presence = np.asarray(presence).astype(bool, copy=False)
        k = presence.shape[1]
        cols = lambda ids: np.asarray([c - 1 for c in ids if 1 <= c <= k], dtype=np.int64)  # noqa: E731
        current = presence[:, cols(self.new_ids(step))].any(axis=1)
        if overlap:
            keep = current
        else:
            allowed = np.zeros(k, dtype=bool)
            allowed[cols(self.seen_ids(step))] = True
            keep = current & ~presence[:, ~allowed].any(axis=1)
        return np.flatnonzero(keep)


def _voc(name: str, *steps: tuple[int, ...], paper: bool = False) -> Task:
    return Task(name, "voc", steps, ("voc",) * len(steps), ("voc",), paper)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _voc("15-5", _r(0, 15), _r(16, 20), paper=True),
        _voc("10-10", _r(0, 10), _r(11, 20), paper=True),
        _voc("15-1", _r(0, 15), (16,), (17,), (18,), (19,), (20,)),
        _voc("19-1", _r(0, 19), (20,)),
        _voc("19-1b", tuple(c for c in _r(0, 20) if c != 5), (5,)),
        _voc("10-5", _r(0, 10), _r(11, 15), _r(16, 20)),
        _voc("10-2", _r(0, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20)),
        _voc("offline", _r(0, 20)),
        Task(
            "coco-voc",
            "coco",
            (_COCO_VOC_STEP0, _COCO_VOC_STEP1),
            ("coco", "voc-as-coco"),
            ("coco", "voc-as-coco"),
            paper=True,
        ),
    )
}


def get_task(name: str) -> Task:
    """Look up a task by name; a UserError lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"task: unknown task {name!r}, expected one of {', '.join(TASKS)}") from None


def has_overlap_setting(task: Task) -> bool:
    """Whether the overlap setting selects different images from disjoint at some step (not for 1-step tasks)."""
    return task.num_steps > 1


def check_overlap(task: Task, overlap: bool) -> None:
    """Refuse ``--overlap`` for a task that has no such split."""
    if overlap and not has_overlap_setting(task):
        raise UserError(
            f"--overlap: task '{task.name}' has a single step, so it has no overlap split; "
            "expected a multi-step task (e.g. 15-5, 10-10) or no --overlap"
        )


def recode_voc_to_coco_lut() -> np.ndarray:
    """Lookup table (uint8, 256) re-coding VOC mask ids to COCO category ids; 255 stays 255 (method.md §1.5)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(VOC_TO_COCO)] = VOC_TO_COCO
    lut[VOID] = VOID
    return lut


def recode_voc_presence_to_coco(presence: np.ndarray) -> np.ndarray:
    """Re-code a VOC presence table [N, 20] to COCO columns [N, 91]."""
    out = np.zeros((presence.shape[0], len(COCO_CLASSES) - 1), dtype=bool)
    out[:, np.asarray(VOC_TO_COCO[1:]) - 1] = np.asarray(presence, dtype=bool)
    return out
