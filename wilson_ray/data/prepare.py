"""Build the VOC and COCO layouts the readers expect from the official archives (docs/data.md, method.md §1.4).

VOC (``prepare_voc``): Pascal VOC 2012 trainval + SBD (Hariharan et al.) ->

    JPEGImages/            every VOC 2012 image (the archive's folder, moved)
    SegmentationClassAug/  one grey PNG per listed image: VOC's own mask (with its 255 borders) where VOC 2012 has
                           one, else SBD's ``cls/<id>.mat`` ``GTcls.Segmentation``
    splits/train_aug.txt   (SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted: 10,582 images
    splits/val.txt         VOC 2012 val, sorted: 1,449 images
    voc_1h_labels_{train,val}.npy   float64 [N, 20] class presence, from the masks

COCO (``prepare_coco``): COCO 2017 train/val images + COCO-Stuff stuffthingmaps -> ``images/<subset>/``,
``annotations/<subset>/`` (COCO ids via ``coco.prepare_coco_stuff``), ``split/{train,val}.txt`` (every image with a
mask, sorted) and ``1h_labels_{train,val}.npy`` [N, 91].

Each stage is skipped when its output is complete, and each file is written by temp + rename, so an interrupted
run resumes where it stopped. The result is validated by the same code as ``wilson-ray data check``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torchvision.datasets import SBDataset
from torchvision.datasets.voc import DATASET_YEAR_DICT

from wilson_ray.atomic import atomic_write, atomic_write_text
from wilson_ray.data import coco, voc
from wilson_ray.data.download import Archive, extract, fetch
from wilson_ray.data.manifest import ListEntries, SourceSpec, presence_from_masks, read_mask
from wilson_ray.errors import UserError

_VOC2012 = DATASET_YEAR_DICT["2012"]
VOC_ARCHIVES = {
    "voc": Archive(_VOC2012["filename"], _VOC2012["url"], _VOC2012["md5"]),
    "sbd": Archive(SBDataset.filename, SBDataset.url, SBDataset.md5),
}
VOC_BASE = _VOC2012["base_dir"]  # VOCdevkit/VOC2012
SBD_BASE = "benchmark_RELEASE/dataset"  # img/, cls/<id>.mat, train.txt, val.txt
# COCO publishes MD5s for its zips; COCO-Stuff publishes none for stuffthingmaps (the content check still runs).
COCO_ARCHIVES = {
    "train2017": Archive(
        "train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"
    ),
    "val2017": Archive(
        "val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"
    ),
    "stuffthingmaps": Archive(
        "stuffthingmaps_trainval2017.zip",
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
        None,
    ),
}
# SHA-256 of the published split lists (the ones the reference index files refer to): a prepared VOC whose lists
# match these selects exactly the reference's training images.
REFERENCE_LISTS = {
    "splits/train_aug.txt": "656221098f98c756fc0ed0963f56bf1c4e8f644ae066256879ec810f673f300e",
    "splits/val.txt": "e8e5e47a6710a667e29318e196bcb608b26956bf43e1a44f7412685a4cf97b29",
}
STAGING = ".prepare"  # extracted archives, removed at the end unless keep_staging


def read_ids(path: Path, what: str) -> set[str]:
    """The image ids of an official split file (one id per line); a missing file raises a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: does not exist; expected {what} inside the extracted archive")
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def voc_split_ids(voc_dir: Path, sbd_dir: Path) -> dict[str, list[str]]:
    """``train``: (SBD train ∪ SBD val ∪ VOC train) − VOC val; ``val``: VOC val; both sorted (the published order)."""
    seg = voc_dir / "ImageSets" / "Segmentation"
    voc_train = read_ids(seg / "train.txt", "VOC 2012's segmentation train list")
    voc_val = read_ids(seg / "val.txt", "VOC 2012's segmentation val list")
    sbd = read_ids(sbd_dir / "train.txt", "SBD's train list") | read_ids(sbd_dir / "val.txt", "SBD's val list")
    return {"train": sorted((sbd | voc_train) - voc_val), "val": sorted(voc_val)}


def sbd_mask(mat_path: Path) -> np.ndarray:
    """The class mask uint8 [H, W] of one SBD ``cls/<id>.mat`` (field ``GTcls.Segmentation``)."""
    from scipy.io import loadmat  # only needed here; pinned in constraints.txt

    try:
        return np.asarray(loadmat(str(mat_path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except Exception as err:  # scipy raises several types for a damaged or foreign file
        raise UserError(
            f"{mat_path}: not an SBD class annotation ({type(err).__name__}: {err}); expected GTcls.Segmentation"
        ) from None


def write_voc_masks(ids: list[str], voc_dir: Path, sbd_dir: Path, out: Path, log: Callable[[str], None]) -> int:
    """Write ``SegmentationClassAug/<id>.png`` (mode L) for every id; existing ones are kept. Return how many new."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for image_id in ids:
        target = out / f"{image_id}.png"
        if target.is_file():
            continue
        voc_png = voc_dir / "SegmentationClass" / f"{image_id}.png"
        mat = sbd_dir / "cls" / f"{image_id}.mat"
        if voc_png.is_file():
            mask = read_mask(voc_png, voc.VOC_SPEC.valid_values)  # palette indices 0..20 and 255
        elif mat.is_file():
            mask = sbd_mask(mat)
        else:
            raise UserError(f"image {image_id}: neither {voc_png} nor {mat} exists; expected a mask in VOC or SBD")
        atomic_write(target, lambda tmp, m=mask: Image.fromarray(m, mode="L").save(tmp, format="PNG"))
        written += 1
    log(f"SegmentationClassAug: {written} masks written, {len(ids) - written} already there")
    return written


def write_label_file(root: Path, entries: ListEntries, spec: SourceSpec, path: Path, workers: int | None) -> None:
    """Write the presence table [N, K] (float64 0/1, the reference's format) computed from the listed masks."""
    wheres = [f"{entries.list_file} line {n}" for n in entries.lines]
    presence = presence_from_masks([root / m for m in entries.masks], spec.num_ids, spec.valid_values, wheres, workers)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
            np.save(fh, presence.astype(np.float64), allow_pickle=False)

    atomic_write(path, save)


def move_folder(src: Path, dst: Path, what: str) -> None:
    """Move the extracted folder ``src`` to ``dst`` (one rename) unless ``dst`` is already there."""
    if dst.is_dir():
        return
    if not src.is_dir():
        raise UserError(f"{src}: missing after extraction; expected {what}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_voc(
    out: str | Path,
    downloads: str | Path | None = None,
    mirror: str | None = None,
    full_check: bool = True,
    keep_staging: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Download VOC 2012 + SBD, build the layout of ``voc.py`` at ``out``, check it; return ``voc.check_voc``'s report
    plus ``reference_lists``: whether each split list equals the published one (``REFERENCE_LISTS``)."""
    out = Path(out).expanduser()
    downloads = Path(downloads).expanduser() if downloads else out / STAGING / "downloads"
    staging = out / STAGING
    if all((out / name).is_file() for name in (*voc.LIST_FILES.values(), *voc.LABEL_FILES.values())):
        log(f"{out}: already prepared (split lists and label files present); checking only")
        return finish_voc(out, full_check, workers, log)
    paths = {name: fetch(a, downloads, mirror, log=log) for name, a in VOC_ARCHIVES.items()}
    voc_dir = extract(paths["voc"], staging / "voc", log) / VOC_BASE
    sbd_dir = extract(paths["sbd"], staging / "sbd", log) / SBD_BASE
    ids = voc_split_ids(voc_dir, sbd_dir)
    move_folder(voc_dir / voc.IMAGE_DIR, out / voc.IMAGE_DIR, f"{VOC_BASE}/JPEGImages in {paths['voc'].name}")
    write_voc_masks(sorted({*ids["train"], *ids["val"]}), voc_dir, sbd_dir, out / voc.MASK_DIR, log)
    for split, list_name in voc.LIST_FILES.items():
        lines = "".join(f"/{voc.IMAGE_DIR}/{i}.jpg /{voc.MASK_DIR}/{i}.png\n" for i in ids[split])
        atomic_write_text(out / list_name, lines)
        write_label_file(out, voc.read_voc_list(out, split), voc.VOC_SPEC, out / voc.LABEL_FILES[split], workers)
    report = finish_voc(out, full_check, workers, log)
    if not keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def finish_voc(out: Path, full_check: bool, workers: int | None, log: Callable[[str], None]) -> dict:
    """``voc.check_voc``'s report of ``out`` plus ``reference_lists`` (each list equal to the published one?)."""
    log(f"checking {out} ({'every image and mask decoded' if full_check else 'listed files exist'})")
    report = voc.check_voc(out, full=full_check, workers=workers)
    report["reference_lists"] = {name: sha256(out / name) == digest for name, digest in REFERENCE_LISTS.items()}
    return report


def prepare_coco(
    out: str | Path,
    downloads: str | Path | None = None,
    mirror: str | None = None,
    full_check: bool = True,
    keep_staging: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Download COCO 2017 images + COCO-Stuff stuffthingmaps, build the layout of ``coco.py`` at ``out``, check it;
    return ``coco.check_coco``'s report."""
    out = Path(out).expanduser()
    downloads = Path(downloads).expanduser() if downloads else out / STAGING / "downloads"
    staging = out / STAGING
    if all((out / name).is_file() for name in (*coco.LIST_FILES.values(), *coco.LABEL_FILES.values())):
        log(f"{out}: already prepared (split lists and label files present); checking only")
        return coco.check_coco(out, full=full_check, workers=workers)
    paths = {name: fetch(a, downloads, mirror, log=log) for name, a in COCO_ARCHIVES.items()}
    stuff = extract(paths["stuffthingmaps"], staging / "stuffthingmaps", log)
    for split, subset in coco.SUBSETS.items():
        images = extract(paths[subset], staging / subset, log) / subset
        move_folder(images, out / coco.IMAGE_DIR / subset, f"{subset}/ in {paths[subset].name}")
        if not (stuff / subset).is_dir():
            raise UserError(f"{paths['stuffthingmaps']}: has no {subset}/ folder; expected {subset}/<id>.png masks")
    written = coco.prepare_coco_stuff(stuff, out / coco.MASK_DIR)
    log(f"{coco.MASK_DIR}: {written} masks converted to COCO ids")
    for split, subset in coco.SUBSETS.items():
        masks = {p.stem for p in (out / coco.MASK_DIR / subset).glob("*.png")}
        images = {p.stem for p in (out / coco.IMAGE_DIR / subset).glob("*.jpg")}
        if not masks & images:
            raise UserError(f"{out / coco.MASK_DIR / subset}: no mask has an image in {out / coco.IMAGE_DIR / subset}")
        atomic_write_text(out / coco.LIST_FILES[split], "".join(f"{i}\n" for i in sorted(masks & images)))
        entries = coco.read_coco_list(out, split)
        write_label_file(out, entries, coco.COCO_SPEC, out / coco.LABEL_FILES[split], workers)
    log(f"checking {out} ({'every image and mask decoded' if full_check else 'listed files exist'})")
    report = coco.check_coco(out, full=full_check, workers=workers)
    if not keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return report
