"""VOC and COCO layout readers: validation errors name the file; COCO-Stuff conversion; VOC re-coded to COCO."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilson_ray import protocol
from wilson_ray.data import coco, voc
from wilson_ray.data.dataset import build_dataset
from wilson_ray.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# VOC


def test_check_voc_accepts_synthetic(synth_root):
    report = voc.check_voc(synth_root, full=True)
    assert report["splits"]["train"]["count"] == 40
    assert report["splits"]["val"]["count"] == 10
    counts = report["splits"]["train"]["class_counts"]
    assert list(counts) == list(protocol.VOC_CLASSES[1:])
    assert all(c > 0 for c in counts.values())


def test_missing_root():
    with pytest.raises(UserError, match=r"data root: /nonexistent/voc does not exist"):
        voc.check_voc("/nonexistent/voc")


def test_missing_folder_names_it(synth_copy):
    shutil.rmtree(synth_copy / "SegmentationClassAug")
    with pytest.raises(UserError, match=r"SegmentationClassAug is missing; expected a VOC folder"):
        voc.check_voc(synth_copy, full=False)


def test_missing_list_file(synth_copy):
    (synth_copy / "splits" / "val.txt").unlink()
    with pytest.raises(UserError, match=r"splits/val\.txt: split list does not exist"):
        voc.check_voc(synth_copy, full=False)


def _edit_line(list_file: Path, n: int, text: str) -> None:
    lines = list_file.read_text().splitlines()
    lines[n - 1] = text
    list_file.write_text("\n".join(lines) + "\n")


def test_list_line_pointing_at_missing_file(synth_copy):
    _edit_line(
        synth_copy / "splits" / "train_aug.txt",
        3,
        "/JPEGImages/nothere.jpg /SegmentationClassAug/synth_train_000002.png",
    )
    with pytest.raises(UserError) as err:
        voc.check_voc(synth_copy, full=False)
    msg = str(err.value)
    assert "train_aug.txt line 3" in msg and "JPEGImages/nothere.jpg does not exist" in msg
    assert "\n" not in msg


def test_malformed_list_line(synth_copy):
    _edit_line(synth_copy / "splits" / "val.txt", 2, "/JPEGImages/synth_val_000001.jpg")
    with pytest.raises(UserError, match=r"val\.txt line 2: found '/JPEGImages/synth_val_000001\.jpg'; expected two"):
        voc.voc_manifest(synth_copy, "val")


def test_list_path_escaping_root(synth_copy):
    _edit_line(synth_copy / "splits" / "val.txt", 1, "/../etc/passwd /SegmentationClassAug/x.png")
    with pytest.raises(UserError, match=r"val\.txt line 1: path '/\.\./etc/passwd' is not inside the dataset root"):
        voc.voc_manifest(synth_copy, "val")


def test_blank_line_inside_list(synth_copy):
    _edit_line(synth_copy / "splits" / "val.txt", 4, "   ")
    with pytest.raises(UserError, match=r"val\.txt line 4: blank line"):
        voc.voc_manifest(synth_copy, "val")


def test_corrupt_jpeg(synth_copy):
    path = synth_copy / "JPEGImages" / "synth_train_000005.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(UserError) as err:
        voc.check_voc(synth_copy, full=True)
    assert "synth_train_000005.jpg" in str(err.value) and "train_aug.txt line 6" in str(err.value)
    voc.check_voc(synth_copy, full=False)  # the quick check only stats files


def test_garbage_image(synth_copy):
    (synth_copy / "JPEGImages" / "synth_val_000000.jpg").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match=r"image .*synth_val_000000\.jpg is corrupt"):
        voc.check_voc(synth_copy, full=True)


def test_mask_wrong_size(synth_copy):
    path = synth_copy / "SegmentationClassAug" / "synth_train_000001.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)
    with pytest.raises(UserError, match=r"mask .*synth_train_000001\.png is 12x10 \(WxH\) but its image .* is 64x64"):
        voc.check_voc(synth_copy, full=True)


def test_mask_invalid_value(synth_copy):
    path = synth_copy / "SegmentationClassAug" / "synth_val_000002.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 37
    Image.fromarray(mask).save(path)
    with pytest.raises(
        UserError,
        match=r"mask .*synth_val_000002\.png contains value\(s\) 37; expected only 0\.\.20 "
        r"and 255",
    ):
        voc.check_voc(synth_copy, full=True)


def test_rgb_mask_refused(synth_copy):
    path = synth_copy / "SegmentationClassAug" / "synth_val_000001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(UserError, match=r"synth_val_000001\.png has PIL mode RGB; expected a single-channel"):
        voc.check_voc(synth_copy, full=True)


def test_label_file_disagreeing_with_masks(synth_copy):
    label = synth_copy / "voc_1h_labels_val.npy"
    arr = np.load(label)
    arr[1] = 1 - arr[1]
    np.save(label, arr)
    with pytest.raises(UserError, match=r"voc_1h_labels_val\.npy: row 1 .* lists .* but mask .*synth_val_000001"):
        voc.check_voc(synth_copy, full=True)


def test_dataset_build_checks_selected_files(synth_copy):
    task = protocol.get_task("15-5")
    ds = build_dataset(synth_copy, task, 0, "train", crop_size=32)
    victim = ds.manifest.masks[int(ds.indices[0])]
    (synth_copy / victim).unlink()
    with pytest.raises(UserError, match=rf"mask .*{Path(victim).name} does not exist"):
        build_dataset(synth_copy, task, 0, "train", crop_size=32)


def test_dataset_item_with_bad_mask_names_file(synth_copy):
    task = protocol.get_task("15-5")
    ds = build_dataset(synth_copy, task, 1, "val", crop_size=32)
    path = synth_copy / ds.manifest.masks[0]
    mask = np.asarray(Image.open(path)).copy()
    mask[5, 5] = 99
    Image.fromarray(mask).save(path)
    with pytest.raises(UserError, match=rf"{path.name} contains value\(s\) 99"):
        ds[0]


# ----------------------------------------------------------------------------------------------------------------
# COCO


COCO_MASKS = {  # COCO ids per fake image (train, then val)
    "train": [[1, 8], [3, 64], [8, 10], [0], [44, 1, 90]],
    "val": [[8], [1, 72]],
}


def make_coco(root: Path, with_labels: bool = True) -> Path:
    """A fake COCO layout with a few 40x30 images whose masks hold the ids of ``COCO_MASKS``."""
    rng = np.random.default_rng(0)
    for split, subset in coco.SUBSETS.items():
        (root / "images" / subset).mkdir(parents=True)
        (root / "annotations" / subset).mkdir(parents=True)
        ids, presence = [], []
        for i, classes in enumerate(COCO_MASKS[split]):
            image_id = f"{(100 if split == 'val' else 0) + i:012d}"
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
                root / "images" / subset / f"{image_id}.jpg"
            )
            mask = np.zeros((30, 40), np.uint8)
            for j, c in enumerate(classes):
                mask[:, j * 8 : j * 8 + 6] = c
            mask[-1] = 255
            Image.fromarray(mask).save(root / "annotations" / subset / f"{image_id}.png")
            row = np.zeros(91)
            row[[c - 1 for c in classes if c]] = 1
            ids.append(image_id)
            presence.append(row)
        (root / "split").mkdir(exist_ok=True)
        (root / "split" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        if with_labels:
            np.save(root / f"1h_labels_{split}.npy", np.stack(presence))
    return root


def test_coco_manifest_and_check(tmp_path):
    root = make_coco(tmp_path / "coco")
    m = coco.coco_manifest(root, "train")
    assert m.images[1] == "images/train2017/000000000001.jpg"
    assert m.masks[1] == "annotations/train2017/000000000001.png"
    assert m.presence().shape == (5, 91)
    assert m.presence()[4, [43, 0, 89]].all()
    report = coco.check_coco(root, full=True)
    assert report["splits"]["train"]["class_counts"]["person"] == 2
    assert report["splits"]["val"]["count"] == 2


def test_coco_presence_from_masks_equals_label_file(tmp_path):
    with_labels = coco.coco_manifest(make_coco(tmp_path / "a"), "train").presence()
    from_masks = coco.coco_manifest(make_coco(tmp_path / "b", with_labels=False), "train").presence()
    assert np.array_equal(with_labels, from_masks)


def test_coco_invalid_mask_value(tmp_path):
    root = make_coco(tmp_path / "coco")
    path = root / "annotations" / "val2017" / "000000000101.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 120
    Image.fromarray(mask).save(path)
    with pytest.raises(UserError, match=r"000000000101\.png contains value\(s\) 120; expected only 0\.\.91 and 255"):
        coco.check_coco(root, full=True)


def test_coco_missing_folder(tmp_path):
    root = make_coco(tmp_path / "coco")
    shutil.rmtree(root / "annotations" / "val2017")
    with pytest.raises(UserError, match=r"annotations/val2017 is missing; expected a COCO folder"):
        coco.check_coco(root)


def test_coco_missing_image_names_list_line(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "images" / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(UserError, match=r"split/train\.txt line 4: image .*000000000003\.jpg does not exist"):
        coco.check_coco(root, full=False)


def test_coco_label_file_shape(tmp_path):
    root = make_coco(tmp_path / "coco")
    np.save(root / "1h_labels_val.npy", np.zeros((2, 80)))
    with pytest.raises(UserError, match=r"1h_labels_val\.npy: shape \(2, 80\) disagrees"):
        coco.coco_manifest(root, "val")


def test_stuffthing_conversion(tmp_path):
    src = tmp_path / "stuffthingmaps" / "train2017"
    src.mkdir(parents=True)
    values = np.array([[0, 5, 90, 91, 150, 181, 255, 11]], np.uint8)
    Image.fromarray(values).save(src / "000000000001.png")
    out = tmp_path / "coco" / "annotations"
    assert coco.prepare_coco_stuff(tmp_path / "stuffthingmaps", out) == 1
    converted = np.asarray(Image.open(out / "train2017" / "000000000001.png"))
    assert converted.tolist() == [[1, 6, 91, 0, 0, 0, 255, 12]]
    assert coco.prepare_coco_stuff(tmp_path / "stuffthingmaps", out) == 0  # up to date: skipped
    lut = coco.stuffthing_lut()
    assert lut[0] == 1 and lut[90] == 91 and lut[91] == 0 and lut[254] == 0 and lut[255] == 255


def test_stuffthing_conversion_errors(tmp_path):
    with pytest.raises(UserError, match=r"--stuffthingmaps: .* is not a folder"):
        coco.prepare_coco_stuff(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds no \.png files"):
        coco.prepare_coco_stuff(tmp_path / "empty", tmp_path / "out")


def test_voc_as_coco_presence_and_masks(synth_root):
    voc_m = voc.voc_manifest(synth_root, "val")
    coco_m = coco.voc_as_coco_manifest(synth_root, "val")
    vp, cp = voc_m.presence(), coco_m.presence()
    assert cp.shape == (10, 91) and not cp[:, 90].any()
    for voc_id, coco_id in enumerate(protocol.VOC_TO_COCO[1:], 1):
        assert np.array_equal(cp[:, coco_id - 1], vp[:, voc_id - 1])
    assert cp.sum() == vp.sum()

    task = protocol.get_task("coco-voc")
    ds = build_dataset(synth_root, task, 1, "val", source="voc-as-coco", eval_mode="full")
    assert ds.source == "voc-as-coco" and ds.num_classes == 81
    for i in range(len(ds)):
        raw = np.asarray(Image.open(synth_root / voc_m.masks[i]))
        _, mask = ds.load(i)
        # VOC id -> COCO id -> internal index (61.. are the VOC classes by COCO id, person first)
        internal = {cid: k for k, cid in enumerate(task.seen_ids(1))}
        expected = np.vectorize(lambda v: 255 if v == 255 else internal[protocol.VOC_TO_COCO[v]])(raw)
        assert np.array_equal(mask, expected)
    assert task.seen_ids(1)[61] == 1  # person


def test_coco_voc_root_mapping(tmp_path, synth_root):
    coco_root = make_coco(tmp_path / "coco")
    task = protocol.get_task("coco-voc")
    roots = {"voc": synth_root, "coco": coco_root}
    step0 = build_dataset(roots, task, 0, "train", crop_size=16)
    # Step 0 classes: non-VOC COCO ids; images with 8/10/90 (truck, traffic light, toothbrush) qualify.
    assert step0.source == "coco" and len(step0) > 0
    image, mask, labels = step0[0]
    assert labels.shape == (60,)
    step1 = build_dataset(roots, task, 1, "train", crop_size=16)
    assert step1.source == "voc-as-coco" and len(step1) == len(voc.voc_manifest(synth_root, "train"))
    with pytest.raises(UserError, match=r"root: no folder given for the coco layout"):
        build_dataset({"voc": synth_root}, task, 0, "train")
