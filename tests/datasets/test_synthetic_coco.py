"""Synthetic COCO-layout set: determinism, the COCO reader and check accept it, the coco-voc class mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.datasets.test_synthetic import tree_hashes
from wilson_ray import cli, protocol
from wilson_ray.data import coco, synthetic, synthetic_coco
from wilson_ray.data.dataset import summary
from wilson_ray.errors import UserError

SMALL = dict(train=16, val=10, size=48)
# method.md §1.5, written out: VOC id -> the COCO category id the paper's COCO-to-VOC uses.
PAPER_VOC_TO_COCO = {
    1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21,
    11: 67, 12: 18, 13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}  # fmt: skip


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthcoco") / "coco"
    synthetic_coco.generate(root, seed=1, **SMALL)
    return root


def test_same_seed_same_bytes_different_seed_differs(tmp_path, coco_root):
    synthetic_coco.generate(tmp_path / "a", seed=1, **SMALL)
    synthetic_coco.generate(tmp_path / "b", seed=2, **SMALL)
    a, ref, b = tree_hashes(tmp_path / "a"), tree_hashes(coco_root), tree_hashes(tmp_path / "b")
    assert a == ref
    assert len(a) == 2 * (16 + 10) + 5  # images + masks, 2 lists, 2 label files, synthetic.json
    assert set(a) == set(b) and sum(a[k] != b[k] for k in a) > 40
    # a second call with the same arguments keeps the folder; other arguments are refused without --force
    assert not synthetic_coco.generate(tmp_path / "a", seed=1, **SMALL).generated
    with pytest.raises(UserError, match="already holds a synthetic dataset with other arguments"):
        synthetic_coco.generate(tmp_path / "a", seed=3, **SMALL)
    # a VOC-layout set of the same seed is another draw (salted streams), not the same scenes re-coded
    synthetic.generate(tmp_path / "voc", seed=1, replay=0, **SMALL)
    coco_mask = np.asarray(Image.open(coco_root / "annotations/val2017/000002000000.png"))
    voc_mask = np.asarray(Image.open(tmp_path / "voc/SegmentationClassAug/synth_val_000000.png"))
    assert not np.array_equal(protocol.recode_voc_to_coco_lut()[voc_mask], coco_mask)


def test_layout_is_the_readers_and_check_passes(coco_root):
    report = coco.check_coco(coco_root, full=True)  # every image and mask decoded, label files == masks
    assert [report["splits"][s]["count"] for s in ("train", "val")] == [16, 10]
    assert (coco_root / "split/train.txt").read_text().splitlines()[:2] == ["000001000000", "000001000001"]
    with Image.open(coco_root / "images/train2017/000001000000.jpg") as img:
        assert img.format == "JPEG" and img.size == (48, 48)
    with Image.open(coco_root / "annotations/train2017/000001000000.png") as m:
        assert m.mode == "L"  # grey COCO ids, as `data prepare coco` writes them
    for split in coco.SPLITS:
        labels = np.load(coco_root / coco.LABEL_FILES[split])
        assert labels.dtype == np.float64 and labels.shape == (SMALL[split], 91)
        present = np.flatnonzero(labels.any(0)) + 1
        assert set(present) == set(synthetic_coco.CLASS_IDS)  # all 40 classes in each split, nothing else


def test_classes_keep_the_coco_voc_structure(coco_root):
    task = protocol.get_task("coco-voc")
    assert len(task.new_ids(1)) == 20 and len(task.steps[0]) == 61  # background + 60 old, 20 new
    assert dict(enumerate(protocol.VOC_TO_COCO[1:], 1)) == PAPER_VOC_TO_COCO
    meta = json.loads((coco_root / synthetic.META_FILE).read_text())
    assert meta["layout"] == "coco" and len(meta["classes"]) == 40
    new = {c["voc_id"]: c for c in meta["classes"] if c["coco_voc_step"] == 1}
    old = [c for c in meta["classes"] if c["coco_voc_step"] == 0]
    assert {v: c["id"] for v, c in new.items()} == PAPER_VOC_TO_COCO
    assert {c["id"] for c in new.values()} == set(task.new_ids(1))
    assert len(old) == 20 and {c["id"] for c in old} <= set(task.steps[0][1:])
    assert all(c["voc_id"] is None for c in old)
    # a VOC class looks as in the VOC-layout set (what step 1 learns it from); all 40 classes look different
    for v, c in new.items():
        assert (c["shape"], c["texture"], c["hue"]) == tuple(vars(synthetic.CLASS_STYLES[v - 1]).values())
        assert c["voc_name"] == protocol.VOC_CLASSES[v]
    assert len({(c["shape"], c["texture"]) for c in meta["classes"]}) == 40


def test_coco_voc_selects_non_voc_images_for_step0(coco_root, synth_root):
    steps = summary({"coco": coco_root, "voc": synth_root}, protocol.get_task("coco-voc"))
    presence = coco.coco_manifest(coco_root, "train").presence()
    voc_cols = np.asarray(protocol.VOC_TO_COCO[1:]) - 1
    step0 = np.asarray(steps[0]["indices"])
    assert 0 < len(step0) < 16 and not presence[step0][:, voc_cols].any()  # disjoint: no VOC class at step 0
    assert steps[1]["count"] == 40  # every image of the VOC-layout set (40 train) holds a VOC class


def test_cli_synth_coco_prints_roles_and_refuses_replay(tmp_path, capsys):
    argv = ["data", "synth", "--layout", "coco", "--out", str(tmp_path / "c"), "--train", "12", "--val", "10"]
    assert cli.main([*argv, "--size", "40"]) == 0
    out = capsys.readouterr().out
    assert "synthetic COCO-layout dataset wrote in" in out
    assert "   5 airplane" in out and "step 1 (VOC aeroplane)" in out and "   8 truck" in out
    assert out.count("step 0\n") == 20 and out.count("step 1 (VOC") == 20
    assert cli.main(["data", "check", "--root", str(tmp_path / "c"), "--quick"]) == 0
    assert "coco dataset OK" in capsys.readouterr().out
    assert cli.main([*argv, "--replay", "3"]) == 2
    assert "--replay: got 3 with --layout coco" in capsys.readouterr().err
    assert cli.main([*argv[:-4], "--train", "9", "--val", "10"]) == 2
    assert "--train: got 9, expected an integer >= 10 so that all 40 classes" in capsys.readouterr().err
