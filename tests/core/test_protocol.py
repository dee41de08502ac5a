"""Image selection (method.md §1.3) against the reference index files and the counts table, on the real VOC
presence files in tests/data/voc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wilson_ray import protocol
from wilson_ray.data import voc

VOC_META = Path(__file__).resolve().parents[1] / "data" / "voc"


@pytest.mark.parametrize("name,overlap", [("15-5", False), ("15-5-ov", True)])
@pytest.mark.parametrize("step", [0, 1])
def test_selection_reproduces_reference_index_files(voc_presence, name, overlap, step):
    reference = np.load(VOC_META / "index" / name / f"train-{step}.npy")
    selected = protocol.get_task("15-5").select(voc_presence["train"], step, overlap)
    assert set(selected.tolist()) == set(reference.tolist())
    assert len(selected) == len(reference)


# method.md §1.3 table: per task, per step, (disjoint, overlap).
COUNTS = {
    "15-5": [(8437, 9568), (2145, 2145)],
    "10-10": [(3706, 6139), (6876, 6876)],
    "15-1": [(8437, 9568), (378, 487), (299, 299), (420, 491), (500, 500), (548, 548)],
    "19-1": [(10034, 10410), (548, 548)],
}


@pytest.mark.parametrize("task_name", list(COUNTS))
def test_selection_counts_match_method_table(voc_presence, task_name):
    task = protocol.get_task(task_name)
    for step, (disjoint, overlap) in enumerate(COUNTS[task_name]):
        assert len(task.select(voc_presence["train"], step, overlap=False)) == disjoint, step
        assert len(task.select(voc_presence["train"], step, overlap=True)) == overlap, step


def test_disjoint_steps_do_not_intersect_and_overlap_shares_images(voc_presence):
    task = protocol.get_task("15-5")
    p = voc_presence["train"]
    d0, d1 = (set(task.select(p, s, False).tolist()) for s in (0, 1))
    o0, o1 = (set(task.select(p, s, True).tolist()) for s in (0, 1))
    assert not d0 & d1
    assert len(o0 & o1) == 1131
    assert d1 == o1  # last step: no future classes


def test_manifest_presence_equals_label_file(voc_meta_root, voc_presence):
    for split in ("train", "val"):
        m = voc.voc_manifest(voc_meta_root, split)
        assert np.array_equal(m.presence(), voc_presence[split])
    assert len(voc.voc_manifest(voc_meta_root, "train")) == 10582
    assert len(voc.voc_manifest(voc_meta_root, "val")) == 1449


def test_every_voc_image_has_a_positive(voc_presence):
    for p in voc_presence.values():
        assert p.any(axis=1).all()
