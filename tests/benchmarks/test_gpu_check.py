"""benchmarks/gpu_check.sh, the prepared GPU run: its summary on known inputs, and the whole script at toy sizes on
the CPU (DEVICE=cpu), so its benchmark and sweep command lines are exercised between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check_summary

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_summary_of_known_results(tmp_path):
    _write(
        tmp_path / "matmul.json",
        {"dtype": "bf16", "size": 8192, "device_name": "FakeGPU", "tflops": 800.0, "torch": "9.9"},
    )
    _write(
        tmp_path / "step_s1_b24.json",
        {
            "step": 1,
            "batch": 24,
            "size": 512,
            "amp": "bf16",
            "compile": True,
            "median_s": 0.25,
            "images_per_s": 96.0,
            "achieved_tflops": 400.0,
            "mfu": 0.5,
            "cuda_max_memory_allocated_mb": 61234.4,
        },
    )
    _write(tmp_path / "step_s1_b24_paired_fp32.json", {"step": 1, "batch": 24, "size": 512, "ratio_median": 2.154})
    _write(
        tmp_path / "sweep_torch.json",
        {
            "metric": "miou_hm",
            "mode": "max",
            "trials": [
                {"outcome": "completed", "miou_hm": 21.5},
                {"outcome": "completed", "miou_hm": 23.25},
                {"outcome": "failed", "miou_hm": None},
            ],
        },
    )
    (tmp_path / "sweep_torch_backend.txt").write_text(
        "train worker 0/1: process group nccl, device cuda:0\ntrain worker 0/1: process group nccl, device cuda:0\n"
    )
    text = gpu_check_summary.summary(tmp_path)
    assert "measured bf16 matmul (8192²) on FakeGPU: 800.00 TFLOP/s" in text
    assert "| step_s1_b24 | 1 | 24 × 512² | bf16 | on | 0.2500 | 96.0 | 400.00 | 50.0% | 61234 |" in text
    assert "ratio 2.15×" in text
    assert "- torch: 2/3 trials completed, best miou_hm 23.25" in text
    assert "- TorchTrainer workers: train worker 0/1: process group nccl, device cuda:0" in text


def test_summary_refuses_a_missing_folder(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check_summary", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "usage: python -m benchmarks.gpu_check_summary OUT_DIR" in r.stderr


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)  # two sweeps and eight benchmark processes: above pytest's 600-s default on 2 cores
def test_the_whole_script_at_toy_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": sys.executable,
        "WORK": str(tmp_path / "work"),
        "PARTS": "info matmul step sweep",
    }
    r = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    mm = json.loads((out / "matmul.json").read_text())
    assert mm["dtype"] == "bf16" and mm["tflops"] > 0
    s1 = json.loads((out / "step_s1_b2.json").read_text())
    s0 = json.loads((out / "step_s0_b2.json").read_text())
    assert (s1["step"], s0["step"], s1["batch"], s1["size"]) == (1, 0, 2, 64)
    assert s1["peak_tflops"] == mm["tflops"] and 0 < s1["mfu"] == pytest.approx(s1["achieved_tflops"] / mm["tflops"])
    assert json.loads((out / "step_s1_b2_compile_off.json").read_text())["compile"] is False
    assert json.loads((out / "step_s1_b2_paired_fp32.json").read_text())["ratio_median"] > 0
    for trainer in ("direct", "torch"):
        trials = json.loads((out / f"sweep_{trainer}.json").read_text())["trials"]
        assert [t["outcome"] for t in trials] == ["completed", "completed"], trainer
    assert (out / "sweep_torch_backend.txt").read_text().splitlines() == [
        "train worker 0/1: process group gloo, device cpu"
    ] * 2
    summary = (out / "summary.md").read_text()
    assert "| step_s1_b2 | 1 | 2 × 64² |" in summary and "- torch: 2/2 trials completed" in summary
