"""Shared fixtures: a tiny synthetic VOC-layout dataset, a writable copy of the real VOC presence files, and an
isolated user cache (``XDG_CACHE_HOME``) so tests never write to ``~/.cache``."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from wilson_ray.data import synthetic

VOC_META = Path(__file__).parent / "data" / "voc"  # real VOC lists + presence files, no images

TINY = dict(seed=0, train=40, val=10, size=64, replay=2)


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory) -> Path:
    """Point the user cache at a temporary folder for the whole session."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (40 train / 10 val, 64 px); treat as read-only, copy it to break it."""
    root = tmp_path_factory.mktemp("synth") / "voc"
    synthetic.generate(root, **TINY)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the tiny synthetic dataset that a test may damage, without what other tests derived from
    it in the shared root (the manifest cache, pseudo-masks cached under PseudoLabels/)."""
    dst = tmp_path / "voc"
    shutil.copytree(synth_root, dst, ignore=shutil.ignore_patterns(".wilson-ray", "PseudoLabels"))
    return dst


@pytest.fixture(scope="session")
def voc_meta_root(tmp_path_factory) -> Path:
    """A writable copy of tests/data/voc (lists + label files of the real VOC, no images)."""
    dst = tmp_path_factory.mktemp("vocmeta") / "voc"
    shutil.copytree(VOC_META, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


@pytest.fixture(scope="session")
def voc_presence() -> dict[str, np.ndarray]:
    """The real VOC presence tables (bool) of train_aug and val."""
    return {s: np.load(VOC_META / f"voc_1h_labels_{s}.npy").astype(bool) for s in ("train", "val")}
