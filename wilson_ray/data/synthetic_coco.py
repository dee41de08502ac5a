"""Procedural scenes written in the COCO layout (method.md §1.4-5), for a CPU-sized COCO-to-VOC run.

The same drawing machinery as the VOC-layout set (``synthetic.py``), written as the COCO reader reads it
(``coco.py``, the layout ``data prepare coco`` builds): ``images/{train2017,val2017}/<id>.jpg``,
``annotations/{train2017,val2017}/<id>.png`` (grey PNGs holding COCO category ids, 255 on object boundaries),
``split/{train,val}.txt``, ``1h_labels_{train,val}.npy`` (float64 [N, 91]) and ``synthetic.json``.

Classes (40 of COCO's 80, keeping the protocol's structure, method.md §1.5):

* the 20 VOC classes under their COCO ids (``protocol.VOC_TO_COCO``), each drawn in the style of its VOC id in the
  VOC-layout set, so a model that learns "cat" from the VOC-layout set at step 1 finds it again in COCO val;
* 20 of the 60 non-VOC classes of coco-voc step 0 (every third one by COCO id, ``OLD_IDS``), in the 20
  (shape, texture) pairs VOC's classes leave free: all 40 classes look different.

The task stays ``coco-voc`` (81 model channels); the 40 step-0 classes the set never draws have no ground-truth
pixel and are left out of every mean (method.md §5). The VOC side of the protocol (step 1's training images and the
"VOC" evaluation) is a VOC-layout synthetic set (``wilson-ray data synth``), not written here.

Non-VOC classes carry ``OLD_SHARE`` of the class weights, so that about half of the training images hold no VOC
class and are step 0's (disjoint) images. Same arguments, same bytes, as in ``synthetic.py``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from wilson_ray.atomic import atomic_write_text
from wilson_ray.data import coco
from wilson_ray.data.synthetic import (
    CLASS_STYLES,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    GENERATOR_VERSION,
    META_FILE,
    NUM_FG,
    ClassStyle,
    SceneModel,
    SynthParams,
    SynthResult,
    already_generated,
    class_styles,
    make_staging,
    plan_split,
    render_with_coverage,
    swap_into_place,
)
from wilson_ray.protocol import COCO_CLASSES, VOC_CLASSES, VOC_TO_COCO, get_task

# Salts every random stream, so a COCO-layout set and a VOC-layout set of the same seed are different draws.
STREAM = (0xC0C0,)
NEW_IDS: tuple[int, ...] = VOC_TO_COCO[1:]  # COCO id of VOC id v at position v - 1
OLD_IDS: tuple[int, ...] = get_task("coco-voc").steps[0][1:][::3]
# Class number k (1..40, SceneModel's) -> COCO id CLASS_IDS[k - 1]: VOC's 20 first, then the non-VOC ones.
CLASS_IDS: tuple[int, ...] = NEW_IDS + OLD_IDS
OLD_SHARE = 0.65
STYLES: dict[int, ClassStyle] = {
    **{coco_id: CLASS_STYLES[v] for v, coco_id in enumerate(NEW_IDS)},
    **{coco_id: style for coco_id, style in zip(OLD_IDS, class_styles(len(CLASS_IDS))[NUM_FG:])},
}
_ID_BASE = {"train": 1_000_000, "val": 2_000_000}


def scene_model(seed: int) -> SceneModel:
    """The seed's class weights (non-VOC classes rescaled to ``OLD_SHARE`` in all) and co-occurrence graph."""
    model = SceneModel.from_seed(seed, len(CLASS_IDS), STREAM)
    w = model.weights.copy()
    w[:NUM_FG] *= (1 - OLD_SHARE) / w[:NUM_FG].sum()
    w[NUM_FG:] *= OLD_SHARE / w[NUM_FG:].sum()
    return SceneModel(w, model.partners)


def image_id(split: str, i: int) -> str:
    """A 12-digit COCO-style image id, distinct across the two splits."""
    return f"{_ID_BASE[split] + i:012d}"


def _write_split(folder: Path, model: SceneModel, params: SynthParams, split: str) -> np.ndarray:
    """Render and write the images and masks of ``split``; write its list; return its presence [N, 91]."""
    subset = coco.SUBSETS[split]
    n = getattr(params, split)
    ids, presence = [], np.zeros((n, coco.NUM_COCO_IDS), dtype=np.float64)
    for i, (classes, n_forced) in enumerate(plan_split(model, params.seed, split, n, STREAM)):
        values = [CLASS_IDS[c - 1] for c in classes]
        img, mask, _ = render_with_coverage(params.seed, split, i, values, n_forced, params.size, STYLES, STREAM)
        name = image_id(split, i)
        Image.fromarray(img).save(folder / coco.IMAGE_DIR / subset / f"{name}.jpg", format="JPEG", quality=90)
        Image.fromarray(mask).save(folder / coco.MASK_DIR / subset / f"{name}.png", format="PNG")  # mode L
        presence[i] = np.bincount(mask.ravel(), minlength=256)[1 : coco.NUM_COCO_IDS + 1] > 0
        ids.append(name)
    (folder / coco.LIST_FILES[split]).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return presence


def _metadata(params: SynthParams, model: SceneModel) -> dict:
    voc_of = {coco_id: v for v, coco_id in enumerate(VOC_TO_COCO) if v}
    return {
        "generator": "wilson-ray synthetic",
        "layout": "coco",
        "version": GENERATOR_VERSION,
        "params": {k: v for k, v in asdict(params).items() if k != "replay"},
        "classes": [
            {
                "id": coco_id,
                "name": COCO_CLASSES[coco_id],
                "coco_voc_step": 1 if coco_id in voc_of else 0,
                "voc_id": voc_of.get(coco_id),
                **({"voc_name": VOC_CLASSES[voc_of[coco_id]]} if coco_id in voc_of else {}),
                **asdict(STYLES[coco_id]),
                "weight": round(float(model.weights[k]), 6),
                "partners": [CLASS_IDS[p - 1] for p in model.partners[k].tolist()],
            }
            for k, coco_id in enumerate(CLASS_IDS)
        ],
    }


def generate(
    out: str | Path,
    seed: int = DEFAULT_SEED,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    size: int = DEFAULT_SIZE,
    force: bool = False,
) -> SynthResult:
    """Write a synthetic COCO-layout dataset to ``out``; return what was written (class counts: [91], column k is
    COCO id k+1). Same folder handling as ``synthetic.generate``: written aside and renamed into place, an
    identical dataset is kept, any other non-empty ``out`` refused unless ``force``."""
    params = SynthParams(seed, train, val, size, replay=0).check(len(CLASS_IDS))
    out = Path(out).expanduser()
    model = scene_model(seed)
    meta = _metadata(params, model)
    if already_generated(out, meta, force):
        counts = {s: coco.coco_manifest(out, s).presence().sum(0).astype(int).tolist() for s in coco.SPLITS}
        return SynthResult(out, params, False, 0.0, counts["train"], counts["val"])

    start = time.perf_counter()
    tmp = make_staging(out)
    try:
        for subset in coco.SUBSETS.values():
            (tmp / coco.IMAGE_DIR / subset).mkdir(parents=True)
            (tmp / coco.MASK_DIR / subset).mkdir(parents=True)
        (tmp / "split").mkdir()
        counts = {}
        for split in coco.SPLITS:
            presence = _write_split(tmp, model, params, split)
            with open(tmp / coco.LABEL_FILES[split], "wb") as fh:
                np.save(fh, presence, allow_pickle=False)
            counts[split] = presence.sum(0).astype(int).tolist()
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1) + "\n")
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthResult(out, params, True, time.perf_counter() - start, counts["train"], counts["val"])
