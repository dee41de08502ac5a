"""COCO-to-VOC end to end: `data synth --layout coco` + `table --preset demo-coco-voc` on a tiny config, through the
real CLI entry point (in-process). Both evaluations (COCO val, VOC val as COCO ids) must be in the table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.methods.test_methods import TINY
from wilson_ray.cli import main

# TINY's sizes (64 px, width-8 backbone, batch 4), trained long enough for step 1 to learn something: 60 step-0
# epochs of the 11 disjoint step-0 images (120 iterations), 20 step-1 epochs of the 40 VOC-layout images (200).
COCO_VOC_TINY = {
    **TINY,
    "step0.epochs": 60,
    "step0.max_iters_per_epoch": 10,
    "incremental.epochs": 20,
    "incremental.max_iters_per_epoch": 10,
    "method.pseudo_epochs": 2,
    "run.val_interval": 100,  # evaluate once, at the end of each step
}


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared CPU, spinning worker threads would cost more than they compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_table_coco_voc_runs_both_evaluations(synth_root, tmp_path, capsys, one_thread):
    coco_root = tmp_path / "coco"
    synth = ["data", "synth", "--layout", "coco", "--out", str(coco_root), "--train", "40", "--val", "40"]
    assert main([*synth, "--size", "64"]) == 0
    out = tmp_path / "table"
    argv = ["table", "--preset", "demo-coco-voc", "--methods", "wilson", "--data-root", str(coco_root)]
    argv += ["--set", f"data.voc_root={synth_root}", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv + [f"--set={k}={v}" for k, v in COCO_VOC_TINY.items()]) == 0
    printed = capsys.readouterr().out
    assert "task coco-voc (disjoint), method wilson" in printed
    assert "| new on voc-as-coco | all on voc-as-coco |" in printed

    (row,) = json.loads((out / "table.json").read_text())
    coco_cols = ("step0_old", "miou_old", "miou_new", "miou_all")
    voc_cols = ("voc-as-coco/miou_new", "voc-as-coco/miou_all")
    for key in coco_cols + voc_cols:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and 0 <= row[key] <= 100, (key, row[key])
    assert row["voc-as-coco/miou_old"] is None  # VOC val holds no non-VOC class: no old column there
    assert row["miou_new"] > 0 and row["voc-as-coco/miou_new"] > 0  # step 1 learned the VOC classes somewhat

    res = json.loads((out / "wilson" / "results.json").read_text())
    step1 = res["steps"][1]
    assert res["task"] == "coco-voc" and step1["miou_new"] == row["miou_new"]
    assert step1["other_eval"]["voc-as-coco"]["miou_new"] == row["voc-as-coco/miou_new"]
    # 81-way model: background, 60 step-0 classes, then the 20 VOC classes by COCO id (person first)
    names = list(step1["per_class_iou"])
    assert len(names) == 81 and names[61] == "person" and names[80] == "tv"
