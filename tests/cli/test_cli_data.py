"""``wilson-ray data ...``: splits JSON and counts, check, synth, prepare-coco, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilson_ray import cli

REPO = Path(__file__).resolve().parents[2]
VOC_META = Path(__file__).resolve().parents[1] / "data" / "voc"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def splits_json(capsys, root, task, *extra):
    code, out, err = run(capsys, "data", "splits", "--root", str(root), "--task", task, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_splits_json_15_5(capsys, voc_meta_root):
    doc = splits_json(capsys, voc_meta_root, "15-5")
    assert list(doc) == ["task", "overlap", "steps"]
    assert doc["task"] == "15-5" and doc["overlap"] is False
    assert [list(s) for s in doc["steps"]] == [["step", "classes", "count", "indices"]] * 2
    assert [s["count"] for s in doc["steps"]] == [8437, 2145]
    assert doc["steps"][1]["classes"] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    for step in (0, 1):
        ref = np.load(VOC_META / "index" / "15-5" / f"train-{step}.npy")
        assert sorted(doc["steps"][step]["indices"]) == sorted(ref.tolist())


def test_splits_json_overlap_and_10_10(capsys, voc_meta_root):
    ov = splits_json(capsys, voc_meta_root, "15-5", "--overlap")
    assert ov["overlap"] is True and [s["count"] for s in ov["steps"]] == [9568, 2145]
    ref = np.load(VOC_META / "index" / "15-5-ov" / "train-0.npy")
    assert set(ov["steps"][0]["indices"]) == set(ref.tolist())
    assert [s["count"] for s in splits_json(capsys, voc_meta_root, "10-10")["steps"]] == [3706, 6876]


def test_splits_on_read_only_root_uses_user_cache(capsys, tmp_path, user_cache):
    root = tmp_path / "ro"
    root.mkdir()
    for name in ("splits", "voc_1h_labels_train.npy"):
        src = VOC_META / name
        if src.is_dir():
            (root / name).mkdir()
            for f in src.iterdir():
                (root / name / f.name).write_bytes(f.read_bytes())
        else:
            (root / name).write_bytes(src.read_bytes())
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    for p, m in modes.items():
        p.chmod(m & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        code, out, err = run(capsys, "data", "splits", "--root", str(root), "--task", "19-1")
        assert code == 0, err
        assert "10034" in out and "548" in out
        assert not (root / ".wilson-ray").exists()
        assert list(user_cache.glob("wilson-ray/*/manifest-train.parquet"))
    finally:
        for p, m in modes.items():
            p.chmod(m)


def test_splits_text_output(capsys, voc_meta_root):
    code, out, _ = run(capsys, "data", "splits", "--root", str(voc_meta_root), "--task", "15-1", "--overlap")
    assert code == 0
    assert "step 1:    487 training images; classes: pottedplant" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--task", "15-6"], "task: unknown task '15-6', expected one of"),
        (["--task", "offline", "--overlap"], "--overlap: task 'offline' has a single step"),
    ],
)
def test_splits_user_errors(capsys, voc_meta_root, argv, match):
    code, out, err = run(capsys, "data", "splits", "--root", str(voc_meta_root), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and match in err


def test_check_synthetic(capsys, synth_root):
    code, out, err = run(capsys, "data", "check", "--root", str(synth_root))
    assert code == 0, err
    assert "train: 40 images, val: 10 images" in out
    assert "tvmonitor" in out
    code, out, _ = run(capsys, "data", "check", "--root", str(synth_root), "--json", "--quick")
    report = json.loads(out)
    assert report["dataset"] == "voc" and report["splits"]["val"]["count"] == 10


def test_check_broken_root_one_line(capsys, synth_copy):
    path = synth_copy / "SegmentationClassAug" / "synth_train_000003.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    code, out, err = run(capsys, "data", "check", "--root", str(synth_copy))
    assert code == 2
    assert err.startswith("wilson-ray: error: ") and err.count("\n") == 1
    assert "synth_train_000003.png" in err and "expected equal sizes" in err


def test_check_unknown_layout(capsys, tmp_path):
    code, _, err = run(capsys, "data", "check", "--root", str(tmp_path))
    assert code == 2 and "has neither splits/train_aug.txt (VOC) nor split/train.txt (COCO)" in err


def test_subprocess_broken_root_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "wilson_ray", "data", "check", "--root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"wilson-ray: error: data root: {tmp_path / 'nope'} does not exist; expected the VOC or COCO dataset folder"
    ]


def test_synth_then_splits(capsys, tmp_path):
    out_dir = tmp_path / "syn"
    code, out, err = run(
        capsys, "data", "synth", "--out", str(out_dir), "--train", "20", "--val", "6", "--size", "48", "--seed", "2"
    )
    assert code == 0, err
    assert "synthetic dataset wrote" in out and "tvmonitor" in out
    code, out, _ = run(
        capsys, "data", "synth", "--out", str(out_dir), "--train", "20", "--val", "6", "--size", "48", "--seed", "2"
    )
    assert code == 0 and "already present, kept" in out
    code, _, err = run(capsys, "data", "synth", "--out", str(out_dir), "--train", "21", "--val", "6", "--size", "48")
    assert code == 2 and "--out:" in err and "--force" in err
    doc = splits_json(capsys, out_dir, "10-10")
    assert sum(s["count"] for s in doc["steps"]) > 0


def test_synth_bad_args(capsys, tmp_path):
    code, _, err = run(capsys, "data", "synth", "--out", str(tmp_path / "x"), "--val", "2")
    assert code == 2 and "--val: got 2" in err


def test_prepare_coco(capsys, tmp_path):
    src = tmp_path / "stm" / "val2017"
    src.mkdir(parents=True)
    Image.fromarray(np.array([[0, 90, 100, 255]], np.uint8)).save(src / "000000000009.png")
    code, out, err = run(
        capsys, "data", "prepare-coco", "--stuffthingmaps", str(tmp_path / "stm"), "--out", str(tmp_path / "ann")
    )
    assert code == 0, err
    assert "converted 1 masks" in out
    assert np.asarray(Image.open(tmp_path / "ann" / "val2017" / "000000000009.png")).tolist() == [[1, 91, 0, 255]]


def test_parse_roots():
    from wilson_ray.commands.data import parse_roots
    from wilson_ray.errors import UserError

    assert parse_roots(["/d/voc"]) == Path("/d/voc")
    assert parse_roots(["voc=/d/voc", "coco=/d/coco"]) == {"voc": Path("/d/voc"), "coco": Path("/d/coco")}
    with pytest.raises(UserError, match=r"--root: got '/d/coco'; expected LAYOUT=DIR"):
        parse_roots(["voc=/d/voc", "/d/coco"])
    with pytest.raises(UserError, match=r"--root: voc= given twice"):
        parse_roots(["voc=/a", "voc=/b"])


def test_splits_coco_voc_needs_both_roots(capsys, voc_meta_root):
    code, _, err = run(capsys, "data", "splits", "--root", f"voc={voc_meta_root}", "--task", "coco-voc")
    assert code == 2 and "root: no folder given for the coco layout" in err
