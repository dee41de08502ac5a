"""Synthetic generator: determinism, VOC layout, class coverage, void band, co-occurrence, folder handling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilson_ray import protocol
from wilson_ray.data import synthetic, voc
from wilson_ray.errors import UserError

SMALL = dict(train=12, val=6, size=48, replay=0)  # replay images: tests/methods/test_method_recall.py


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every generated file (the manifest cache excluded), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".wilson-ray" not in p.parts
    }


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    synthetic.generate(tmp_path / "a", seed=3, **SMALL)
    synthetic.generate(tmp_path / "b", seed=3, **SMALL)
    synthetic.generate(tmp_path / "c", seed=4, **SMALL)
    a, b, c = (tree_hashes(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 3 * (12 + 6) + 5  # images + masks + saliency maps, 2 lists, 2 label files, synthetic.json
    assert set(a) == set(c)
    differing = [k for k in a if a[k] != c[k]]
    assert len(differing) > 30


def test_layout_is_accepted_by_voc_reader(synth_root):
    report = voc.check_voc(synth_root, full=True)
    for split, n in (("train", 40), ("val", 10)):
        assert report["splits"][split]["count"] == n
        # every class appears in both splits
        assert all(c > 0 for c in report["splits"][split]["class_counts"].values()), split
    lines = (synth_root / "splits" / "train_aug.txt").read_text().splitlines()
    assert lines[0] == "/JPEGImages/synth_train_000000.jpg /SegmentationClassAug/synth_train_000000.png"
    with Image.open(synth_root / "JPEGImages" / "synth_train_000000.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
    with Image.open(synth_root / "SegmentationClassAug" / "synth_train_000000.png") as m:
        assert m.mode == "P"


def test_masks_have_void_band_and_valid_values(synth_root):
    m = voc.voc_manifest(synth_root, "train")
    has_void = 0
    for rel in m.masks:
        mask = np.asarray(Image.open(synth_root / rel))
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        has_void += 255 in values
        if 255 in values:
            # the band is thin: objects keep more labelled pixels than their outline
            assert ((mask > 0) & (mask < 255)).sum() > (mask == 255).sum() * 0.3
    assert has_void == len(m)


def test_label_files_match_masks(synth_root):
    for split in voc.SPLITS:
        labels = np.load(synth_root / voc.LABEL_FILES[split])
        assert labels.dtype == np.float64 and labels.shape[1] == 20
        m = voc.voc_manifest(synth_root, split)
        for i, rel in enumerate(m.masks):
            counts = np.bincount(np.asarray(Image.open(synth_root / rel)).ravel(), minlength=256)
            assert np.array_equal(labels[i] > 0, counts[1:21] > 0)


def test_overlap_keeps_more_images_than_disjoint(synth_root):
    presence = voc.voc_manifest(synth_root, "train").presence()
    task = protocol.get_task("15-5")
    disjoint = len(task.select(presence, 0, overlap=False))
    overlap = len(task.select(presence, 0, overlap=True))
    assert overlap >= disjoint + 5, (disjoint, overlap)


def test_scenes_have_several_objects_and_uneven_frequencies():
    model = synthetic.SceneModel.from_seed(0)
    rng = np.random.default_rng(1)
    scenes = [model.sample_classes(rng) for _ in range(2000)]
    sizes = np.bincount([len(s) for s in scenes])
    assert sizes[0] == 0 and sizes[1:5].min() > 100 and len(sizes) == 5
    freq = np.bincount([c for s in scenes for c in set(s)], minlength=21)[1:]
    assert freq.min() > 0 and freq.max() > 2 * freq.min()


def test_class_styles_are_distinct():
    styles = {(s.shape, s.texture) for s in synthetic.CLASS_STYLES}
    assert len(styles) == 20
    assert len({s.shape for s in synthetic.CLASS_STYLES}) == 8
    assert len({s.texture for s in synthetic.CLASS_STYLES}) == 5


def test_void_band_is_dilate_minus_erode():
    label = np.zeros((12, 12), np.uint8)
    label[3:9, 3:9] = 7
    band = synthetic.void_band(label, 3)
    expected = np.zeros((12, 12), bool)
    expected[2:10, 2:10] = True
    expected[4:8, 4:8] = False
    assert np.array_equal(band, expected)


def test_existing_same_dataset_is_kept(tmp_path):
    first = synthetic.generate(tmp_path / "d", seed=1, **SMALL)
    assert first.generated
    before = tree_hashes(tmp_path / "d")
    again = synthetic.generate(tmp_path / "d", seed=1, **SMALL)
    assert not again.generated
    assert again.train_class_counts == first.train_class_counts
    assert tree_hashes(tmp_path / "d") == before


def test_refuses_foreign_folder_unless_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"--out: .* already holds other files"):
        synthetic.generate(out, **SMALL)
    synthetic.generate(tmp_path / "e", seed=1, **SMALL)
    with pytest.raises(UserError, match=r"already holds a synthetic dataset with other arguments"):
        synthetic.generate(tmp_path / "e", seed=2, **SMALL)
    synthetic.generate(out, force=True, **SMALL)
    assert not (out / "notes.txt").exists() and (out / "synthetic.json").is_file()
    assert not list(tmp_path.glob(".d.*"))  # no temporary folders left behind


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "d").mkdir()
    assert synthetic.generate(tmp_path / "d", **SMALL).generated


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(val=3), r"--val: got 3, expected an integer >= 5"),
        (dict(train=0), r"--train: got 0"),
        (dict(size=16), r"--size: got 16, expected an integer >= 32"),
        (dict(seed=-1), r"--seed: got -1"),
    ],
)
def test_parameter_errors(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        synthetic.generate(tmp_path / "x", **{**SMALL, **kwargs})
    assert not (tmp_path / "x").exists()


def test_minimum_split_covers_all_classes(tmp_path):
    synthetic.generate(tmp_path / "m", seed=5, train=5, val=5, size=48)
    for split in voc.SPLITS:
        assert np.load(tmp_path / "m" / voc.LABEL_FILES[split]).any(axis=0).all()
