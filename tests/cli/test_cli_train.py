"""`wilson-ray train / eval` through the real CLI entry point (in-process, so it stays fast)."""

import json

import pytest

from tests.methods.test_methods import TINY
from wilson_ray.cli import main

SETS = [f"--set={k}={v}" for k, v in TINY.items()]


def test_train_writes_results_and_reuses_cached_step0(synth_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = [
        "train",
        "--preset",
        "demo",
        "--method",
        "finetune",
        "--data-root",
        str(synth_root),
        "--cache-dir",
        str(cache),
        *SETS,
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "task 15-5 (disjoint), method finetune" in out and "old" in out
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [s["step"] for s in res["steps"]] == [0, 1]
    assert len(res["steps"][1]["per_class_iou"]) == 21
    for key in ("miou_old", "miou_new", "miou_all", "miou_all_mib"):
        assert 0 <= res["steps"][1][key] <= 100
    assert res["steps"][0]["miou_new"] is None  # no new classes at step 0
    assert (tmp_path / "a" / "step1.pt").is_file() and (tmp_path / "a" / "config.yaml").is_file()
    entries = list(cache.glob("*/step0.pt"))
    assert len(entries) == 1
    # a second method with the same step-0 config reuses the cached step 0 (no new entry, same metrics)
    assert (
        main(
            [
                "train",
                "--preset",
                "demo",
                "--method",
                "lwf",
                "--data-root",
                str(synth_root),
                "--cache-dir",
                str(cache),
                *SETS,
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert list(cache.glob("*/step0.pt")) == entries
    res_b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res_b["steps"][0]["reused_from_cache"] and res_b["steps"][0]["miou_all"] == res["steps"][0]["miou_all"]
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "a" / "step1.pt"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["step"] == 1 and ev["miou_all"] == pytest.approx(res["steps"][1]["miou_all"], abs=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--preset", "demo", "--set", "data.batchsize=2"], "unknown key 'data.batchsize'"),
        (["train", "--preset", "demo", "--task", "15-6"], "task: unknown task '15-6'"),
        (
            ["train", "--preset", "demo", "--task", "offline", "--overlap"],
            "--overlap: task 'offline' has a single step",
        ),
        (["train", "--preset", "demo", "--steps", "7"], "step: got 7 for task '15-5', expected an integer in 0..1"),
        (["train", "--preset", "nope"], "--preset: unknown preset 'nope'"),
        (["eval", "--ckpt", "/nonexistent/x.pt"], "checkpoint /nonexistent/x.pt: not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--cache-dir", str(tmp_path)] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wilson-ray: error:") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written
