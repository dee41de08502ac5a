"""Manifest: table layout, Parquet cache, invalidation, read-only fallback, presence from masks."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wilson_ray.data import manifest as mf
from wilson_ray.data import voc
from wilson_ray.errors import UserError

VOC_META = Path(__file__).resolve().parents[1] / "data" / "voc"


@pytest.fixture
def meta_copy(tmp_path) -> Path:
    """A private writable copy of the real VOC lists + label files (no images)."""
    dst = tmp_path / "voc"
    shutil.copytree(VOC_META, dst, ignore=shutil.ignore_patterns("index"))
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def _set_write(path: Path, on: bool) -> None:
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if on else mode & ~bits)


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_table_layout_and_no_images_needed(meta_copy):
    m = voc.voc_manifest(meta_copy, "val")
    names = m.table.column_names
    assert names[:4] == ["image_id", "image", "mask", "line"]
    assert names[4:] == [str(k) for k in range(1, 21)]
    assert m.image_ids[0] == "2007_000033"
    assert m.images[0] == "JPEGImages/2007_000033.jpg"
    assert m.masks[0] == "SegmentationClassAug/2007_000033.png"
    assert m.presence().dtype == bool and m.presence().shape == (1449, 20)
    assert not (meta_copy / "JPEGImages").exists()


def test_second_build_reads_cache(meta_copy):
    first = voc.voc_manifest(meta_copy, "train")
    assert not first.from_cache
    assert first.cache_path == meta_copy / ".wilson-ray" / "manifest-train.parquet"
    assert first.cache_path.is_file()
    second = voc.voc_manifest(meta_copy, "train")
    assert second.from_cache
    assert np.array_equal(first.presence(), second.presence())
    meta = pq.read_schema(first.cache_path).metadata
    assert b"wilson_ray.fingerprint" in meta


def test_label_file_change_invalidates_cache(meta_copy):
    voc.voc_manifest(meta_copy, "val")
    label = meta_copy / "voc_1h_labels_val.npy"
    arr = np.load(label)
    arr[0] = 0
    arr[0, 4] = 1  # image 0 now "contains" boat only
    np.save(label, arr)
    _bump_mtime(label)  # same-size rewrite: the mtime alone must invalidate
    m = voc.voc_manifest(meta_copy, "val")
    assert not m.from_cache
    assert m.presence()[0].tolist() == [k == 4 for k in range(20)]


def test_list_change_invalidates_cache(meta_copy):
    voc.voc_manifest(meta_copy, "val")
    lst = meta_copy / "splits" / "val.txt"
    lines = lst.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    lst.write_text("\n".join(lines) + "\n")
    m = voc.voc_manifest(meta_copy, "val")
    assert not m.from_cache
    assert m.image_ids[0] == "2007_000042"


def test_corrupt_cache_is_rebuilt(meta_copy):
    path = voc.voc_manifest(meta_copy, "val").cache_path
    path.write_bytes(b"not parquet")
    m = voc.voc_manifest(meta_copy, "val")
    assert not m.from_cache and len(m) == 1449
    assert voc.voc_manifest(meta_copy, "val").from_cache


def test_read_only_root_uses_user_cache(meta_copy, user_cache):
    _set_write(meta_copy, False)
    try:
        m = voc.voc_manifest(meta_copy, "val")
        assert not (meta_copy / ".wilson-ray").exists()
        expected = mf.user_cache_dir(meta_copy) / "manifest-val.parquet"
        assert m.cache_path == expected
        assert str(expected).startswith(str(user_cache))
        assert voc.voc_manifest(meta_copy, "val").from_cache
    finally:
        _set_write(meta_copy, True)


def test_label_file_shape_mismatch_names_file(meta_copy):
    label = meta_copy / "voc_1h_labels_val.npy"
    np.save(label, np.zeros((10, 20)))
    with pytest.raises(UserError, match=r"voc_1h_labels_val\.npy: shape \(10, 20\) disagrees with .*val\.txt"):
        voc.voc_manifest(meta_copy, "val")


def test_label_file_bad_values_names_file(meta_copy):
    label = meta_copy / "voc_1h_labels_val.npy"
    arr = np.load(label)
    arr[3, 3] = 0.5
    np.save(label, arr)
    with pytest.raises(UserError, match=r"voc_1h_labels_val\.npy: holds values other than 0 and 1"):
        voc.voc_manifest(meta_copy, "val")


def test_presence_from_masks_without_label_file(synth_copy):
    expected = np.load(synth_copy / "voc_1h_labels_train.npy").astype(bool)
    (synth_copy / "voc_1h_labels_train.npy").unlink()
    m = voc.voc_manifest(synth_copy, "train")
    assert not m.from_cache
    assert np.array_equal(m.presence(), expected)
    assert voc.voc_manifest(synth_copy, "train").from_cache
    # Presence derived from masks is invalidated by a mask change.
    _bump_mtime(synth_copy / m.masks[0])
    assert not voc.voc_manifest(synth_copy, "train").from_cache


def test_presence_from_masks_pool_matches_serial(synth_copy):
    m = voc.voc_manifest(synth_copy, "train")
    paths = [synth_copy / p for p in m.masks]
    serial = mf.presence_from_masks(paths, 20, voc.VOC_SPEC.valid_values, workers=1)
    old = mf.POOL_MIN_MASKS
    mf.POOL_MIN_MASKS = 1
    try:
        pooled = mf.presence_from_masks(paths, 20, voc.VOC_SPEC.valid_values, workers=2)
    finally:
        mf.POOL_MIN_MASKS = old
    assert np.array_equal(serial, pooled)
    assert np.array_equal(serial, m.presence())


def test_missing_mask_without_label_file_names_list_line(synth_copy):
    (synth_copy / "voc_1h_labels_val.npy").unlink()
    (synth_copy / "SegmentationClassAug" / "synth_val_000004.png").unlink()
    with pytest.raises(UserError, match=r"val\.txt line 5: mask .*synth_val_000004\.png does not exist"):
        voc.voc_manifest(synth_copy, "val")


def test_describe_values():
    assert mf.describe_values(mf.valid_value_table(20)) == "0..20 and 255"
