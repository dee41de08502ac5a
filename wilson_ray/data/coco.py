"""COCO (COCO-to-VOC task) layout reader, COCO-Stuff label conversion, and VOC re-coded to COCO ids (method.md §1.4-5).

COCO layout under the dataset root::

    images/train2017/<id>.jpg, images/val2017/<id>.jpg
    annotations/train2017/<id>.png, annotations/val2017/<id>.png    COCO category ids 0..91 and 255
    split/train.txt, split/val.txt       one image id per line (a path or file name is reduced to its stem)
    1h_labels_train.npy, 1h_labels_val.npy   optional presence tables [N, 91]: column k is category id k+1

The ``voc-as-coco`` source is a VOC root read with its masks re-coded to COCO ids (``protocol.VOC_TO_COCO``): the
training data of coco-voc step 1 and the "VOC" evaluation of coco-voc.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from wilson_ray.atomic import atomic_write
from wilson_ray.data import voc
from wilson_ray.data.manifest import (
    ListEntries,
    Manifest,
    SourceSpec,
    check_pairs,
    load_manifest,
    read_mask,
    valid_value_table,
)
from wilson_ray.errors import UserError
from wilson_ray.protocol import COCO_CLASSES, VOID, recode_voc_presence_to_coco

SPLITS = ("train", "val")
LIST_FILES = {"train": "split/train.txt", "val": "split/val.txt"}
LABEL_FILES = {"train": "1h_labels_train.npy", "val": "1h_labels_val.npy"}
SUBSETS = {"train": "train2017", "val": "val2017"}
IMAGE_DIR = "images"
MASK_DIR = "annotations"

# COCO category ids 1..91 (method.md §1.4: label files are N x 91, thing value 90 -> id 91).
NUM_COCO_IDS = len(COCO_CLASSES) - 1
COCO_SPEC = SourceSpec("coco", NUM_COCO_IDS, valid_value_table(NUM_COCO_IDS))
# Presence is in COCO columns, but the masks on disk are VOC-coded: validate them as VOC masks.
VOC_AS_COCO_SPEC = SourceSpec("voc-as-coco", NUM_COCO_IDS, voc.VOC_SPEC.valid_values)
CLASS_NAMES: tuple[str, ...] = COCO_CLASSES

# COCO-Stuff stuffthingmaps: values 0..90 are things (category id - 1), 91..181 stuff, 255 unlabeled.
_N_THING_VALUES = 91


def stuffthing_lut() -> np.ndarray:
    """Lookup table (uint8, 256) from a stuffthingmaps value to a COCO id: thing v -> v+1, stuff -> 0, 255 -> 255."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:_N_THING_VALUES] = np.arange(1, _N_THING_VALUES + 1)
    lut[VOID] = VOID
    return lut


def read_coco_list(root: str | Path, split: str) -> ListEntries:
    """Parse ``split/<split>.txt`` into paths under ``images/<subset>/`` and ``annotations/<subset>/``."""
    root = voc.check_root(root, "COCO")
    list_file = root / LIST_FILES[voc.check_split(split)]
    data, lines = voc.read_list_text(list_file, "one COCO image id per line")
    subset = SUBSETS[split]
    ids, images, masks = [], [], []
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if len(tokens) != 1:
            raise UserError(f"{list_file} line {n}: found {line.strip()!r}; expected a single COCO image id")
        image_id = PurePosixPath(tokens[0]).stem
        if not image_id or image_id in (".", ".."):
            raise UserError(f"{list_file} line {n}: found {line.strip()!r}; expected a COCO image id")
        ids.append(image_id)
        images.append(f"{IMAGE_DIR}/{subset}/{image_id}.jpg")
        masks.append(f"{MASK_DIR}/{subset}/{image_id}.png")
    return ListEntries(list_file, data, ids, images, masks, list(range(1, len(lines) + 1)))


def coco_manifest(root: str | Path, split: str, use_cache: bool = True) -> Manifest:
    """The COCO manifest of ``split`` (presence [N, 91] from ``1h_labels_<split>.npy`` or from the masks)."""
    root = voc.check_root(root, "COCO")
    entries = read_coco_list(root, split)
    return load_manifest(root, split, entries, COCO_SPEC, root / LABEL_FILES[split], use_cache)


def voc_as_coco_manifest(root: str | Path, split: str, use_cache: bool = True) -> Manifest:
    """The VOC manifest of ``split`` with presence re-coded to COCO columns [N, 91] (method.md §1.5)."""
    manifest = voc.voc_manifest(root, split, use_cache)
    return manifest.with_presence(recode_voc_presence_to_coco(manifest.presence()), VOC_AS_COCO_SPEC)


def check_coco(root: str | Path, full: bool = True, workers: int | None = None) -> dict:
    """Validate a COCO layout; same checks and report as ``voc.check_voc`` (mask values 0..91 and 255)."""
    root = voc.check_root(root, "COCO")
    for folder in (
        *(f"{IMAGE_DIR}/{s}" for s in SUBSETS.values()),
        *(f"{MASK_DIR}/{s}" for s in SUBSETS.values()),
        "split",
    ):
        if not (root / folder).is_dir():
            raise UserError(
                f"data root: {root / folder} is missing; expected a COCO folder with images/{{train2017,val2017}}/, "
                "annotations/{train2017,val2017}/ and split/ (method.md §1.4)"
            )
    report = {"root": str(root), "dataset": "coco", "splits": {}}
    for split in SPLITS:
        manifest = coco_manifest(root, split)
        manifest.check_files()
        presence = manifest.presence()
        if full:
            from_masks = check_pairs(manifest, workers)
            voc.compare_presence(manifest, presence, from_masks, CLASS_NAMES, root / LABEL_FILES[split])
        report["splits"][split] = voc.split_report(manifest, presence, CLASS_NAMES)
    return report


def prepare_coco_stuff(stuffthingmaps_dir: str | Path, out_annotations_dir: str | Path) -> int:
    """Convert COCO-Stuff stuffthingmaps PNGs to COCO-id masks (method.md §1.4); return the number written.

    Every ``*.png`` under ``stuffthingmaps_dir`` (e.g. ``train2017/``, ``val2017/``) is written to the same relative
    path under ``out_annotations_dir`` (the COCO root's ``annotations/``), atomically. Outputs newer than their input
    are skipped, so an interrupted conversion resumes where it stopped.
    """
    src = Path(stuffthingmaps_dir).expanduser()
    out = Path(out_annotations_dir).expanduser()
    if not src.is_dir():
        raise UserError(f"--stuffthingmaps: {src} is not a folder; expected COCO-Stuff's stuffthingmaps_trainval2017")
    files = sorted(p for p in src.rglob("*.png") if p.is_file())
    if not files:
        raise UserError(f"--stuffthingmaps: {src} holds no .png files; expected train2017/*.png and val2017/*.png")
    if out.resolve() == src.resolve():
        raise UserError(f"--out: {out} is the input folder; expected a different folder for the converted masks")
    lut = stuffthing_lut()
    written = 0
    for path in files:
        target = out / path.relative_to(src)
        if target.is_file() and target.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            continue
        values = read_mask(path)  # any uint8 value is a valid stuffthingmaps value
        converted = Image.fromarray(lut[values])  # uint8 [H, W] -> mode L
        atomic_write(target, lambda tmp: converted.save(tmp, format="PNG"))
        written += 1
    return written
