"""Pascal VOC 2012 (+SBD) layout reader and validator (method.md §1.4).

Layout under the dataset root::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png          values 0..20 and 255
    SaliencyMaps/<id>.png                  optional, for EPS: a salient-object detector's map (grey or RGB)
    splits/train_aug.txt, splits/val.txt   lines "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
    voc_1h_labels_train.npy, voc_1h_labels_val.npy   optional presence tables [N, 20]

Line i of a list is image index i: the index files of the reference implementation and ``Task.select`` use it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from wilson_ray.data.manifest import ListEntries, Manifest, SourceSpec, check_pairs, load_manifest, valid_value_table
from wilson_ray.errors import UserError
from wilson_ray.protocol import VOC_CLASSES

SPLITS = ("train", "val")
LIST_FILES = {"train": "splits/train_aug.txt", "val": "splits/val.txt"}
LABEL_FILES = {"train": "voc_1h_labels_train.npy", "val": "voc_1h_labels_val.npy"}
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClassAug"
SALIENCY_DIR = "SaliencyMaps"  # optional: <id>.png per image from a salient-object detector (EPS, data/extras.py)
LINE_FORMAT = "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"

VOC_SPEC = SourceSpec("voc", len(VOC_CLASSES) - 1, valid_value_table(len(VOC_CLASSES) - 1))


def check_split(split: str) -> str:
    """Return ``split`` if it is ``train`` or ``val``, else raise a UserError."""
    if split not in SPLITS:
        raise UserError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    return split


def check_root(root: str | Path, what: str = "VOC") -> Path:
    """Return ``root`` as a Path if it is an existing folder, else raise a UserError."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"data root: {root} does not exist; expected the {what} dataset folder")
    if not root.is_dir():
        raise UserError(f"data root: {root} is not a folder; expected the {what} dataset folder")
    return root


def relative_data_path(token: str, where: str) -> str:
    """A list entry as a path relative to the root; refuse entries that escape it (``..``) or are empty."""
    parts = PurePosixPath(token.lstrip("/")).parts
    if not parts or ".." in parts:
        raise UserError(f"{where}: path {token!r} is not inside the dataset root; expected a path like {LINE_FORMAT}")
    return str(PurePosixPath(*parts))


def read_list_text(list_file: Path, what: str) -> tuple[bytes, list[str]]:
    """The bytes and the lines of a split list; a missing/undecodable file or a blank line raises a UserError.

    A trailing newline is fine; a blank line inside the list is refused because it would shift image indices.
    """
    if not list_file.is_file():
        raise UserError(f"{list_file}: split list does not exist; expected {what}")
    data = list_file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{list_file}: not UTF-8 text ({err}); expected {what}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise UserError(f"{list_file} line {n}: blank line; expected {what}")
    return data, lines


def read_voc_list(root: str | Path, split: str) -> ListEntries:
    """Parse ``splits/train_aug.txt`` (train) or ``splits/val.txt`` (val); a malformed line raises a UserError."""
    root = check_root(root)
    list_file = root / LIST_FILES[check_split(split)]
    data, lines = read_list_text(list_file, f"one line per image: {LINE_FORMAT!r}")
    ids, images, masks = [], [], []
    for n, line in enumerate(lines, 1):
        where = f"{list_file} line {n}"
        tokens = line.split()
        if len(tokens) != 2:
            raise UserError(f"{where}: found {line.strip()!r}; expected two paths: {LINE_FORMAT!r}")
        image, mask = (relative_data_path(t, where) for t in tokens)
        ids.append(PurePosixPath(image).stem)
        images.append(image)
        masks.append(mask)
    return ListEntries(list_file, data, ids, images, masks, list(range(1, len(lines) + 1)))


def voc_manifest(root: str | Path, split: str, use_cache: bool = True) -> Manifest:
    """The VOC manifest of ``split`` (presence [N, 20] from ``voc_1h_labels_<split>.npy`` or from the masks)."""
    root = check_root(root)
    entries = read_voc_list(root, split)
    return load_manifest(root, split, entries, VOC_SPEC, root / LABEL_FILES[split], use_cache)


def check_voc(root: str | Path, full: bool = True, workers: int | None = None) -> dict:
    """Validate a VOC layout; return ``{"root", "dataset", "splits": {split: {"list", "count", "class_counts"}}}``.

    Always: the root and its folders exist, both lists parse, every listed file exists, label files match the lists.
    ``full``: also decode every image and mask, check mask values (0..20, 255), sizes, and that the label files agree
    with the masks. ``class_counts[name]`` is the number of images containing the class.
    """
    root = check_root(root)
    for folder in (IMAGE_DIR, MASK_DIR, "splits"):
        if not (root / folder).is_dir():
            raise UserError(
                f"data root: {root / folder} is missing; expected a VOC folder with {IMAGE_DIR}/, {MASK_DIR}/ "
                "and splits/ (method.md §1.4)"
            )
    report = {"root": str(root), "dataset": "voc", "splits": {}}
    for split in SPLITS:
        manifest = voc_manifest(root, split)
        manifest.check_files()
        presence = manifest.presence()
        if full:
            from_masks = check_pairs(manifest, workers)
            compare_presence(manifest, presence, from_masks, VOC_CLASSES, root / LABEL_FILES[split])
        report["splits"][split] = split_report(manifest, presence, VOC_CLASSES)
    return report


def compare_presence(
    manifest: Manifest, presence: np.ndarray, from_masks: np.ndarray, class_names: tuple[str, ...], label_file: Path
) -> None:
    """Raise a UserError naming the first image whose label-file row disagrees with its mask."""
    bad = np.flatnonzero((presence != from_masks).any(axis=1))
    if bad.size:
        i = int(bad[0])
        names = lambda row: [class_names[k + 1] for k in np.flatnonzero(row)] or ["nothing"]  # noqa: E731
        raise UserError(
            f"{label_file}: row {i} ({manifest.where(i)}) lists {', '.join(names(presence[i]))} but mask "
            f"{manifest.root / manifest.masks[i]} contains {', '.join(names(from_masks[i]))} "
            f"({bad.size} rows disagree); expected the label file to match the masks"
        )


def split_report(manifest: Manifest, presence: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Image count and per-class image frequency of one split."""
    counts = presence.sum(axis=0)
    return {
        "list": str(manifest.list_file),
        "count": len(manifest),
        "class_counts": {class_names[k + 1]: int(c) for k, c in enumerate(counts)},
    }
