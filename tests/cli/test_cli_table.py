"""`wilson-ray table --seeds N` through the real CLI entry point on the tiny synthetic set: one cached step 0 per
seed shared by the rows, mean ± sample std per column, resumable."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tests.methods.test_methods import TINY
from wilson_ray.checkpoint import load_checkpoint
from wilson_ray.cli import main

SETS = [f"--set={k}={v}" for k, v in TINY.items()]
METRICS = ("step0_old", "miou_old", "miou_new", "miou_all", "miou_all_mib")


def _table(synth_root, cache, out, *extra):
    return [
        "table",
        "--preset",
        "demo",
        "--methods",
        "finetune,lwf",
        "--data-root",
        str(synth_root),
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        *SETS,
        *extra,
    ]


def test_table_with_two_seeds_reports_mean_and_std_and_resumes(synth_root, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(_table(synth_root, cache, out, "--seeds", "2")) == 0
    captured = capsys.readouterr()
    # one step 0 per seed, trained once and shared by both rows
    assert captured.err.count("cache: training step 0") == 2
    assert len(list(cache.glob("*/step0.pt"))) == 2
    lines = [line for line in captured.out.splitlines() if line.startswith("seed ")]
    assert [line.split()[:3] for line in lines] == [
        ["seed", "42", "finetune"],
        ["seed", "42", "lwf"],
        ["seed", "43", "finetune"],
        ["seed", "43", "lwf"],
    ]
    assert all("trained in" in line for line in lines)

    table = json.loads((out / "table.json").read_text())
    assert table["seeds"] == [42, 43] and [r["method"] for r in table["rows"]] == ["finetune", "lwf"]
    t = stats.t.ppf(0.975, 1)
    for row in table["rows"]:
        results = [json.loads((out / row["method"] / f"seed{s}" / "results.json").read_text()) for s in (42, 43)]
        assert [r["seed"] for r in row["runs"]] == [42, 43]
        for key in METRICS:
            step = 0 if key == "step0_old" else -1
            per_seed = [res["steps"][step][key.replace("step0_old", "miou_old")] for res in results]
            cell = row[key]
            assert cell["values"] == per_seed == [r[key] for r in row["runs"]]
            assert cell["n"] == 2
            assert cell["mean"] == pytest.approx(np.mean(per_seed), abs=1e-4)
            assert cell["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-4)
            half = t * np.std(per_seed, ddof=1) / math.sqrt(2)
            assert cell["low"] == pytest.approx(np.mean(per_seed) - half, abs=1e-3)
            assert cell["high"] == pytest.approx(np.mean(per_seed) + half, abs=1e-3)
        assert row["mask_miou"]["n"] == 0 and row["mask_miou"]["values"] == [None, None]  # no offline masks
    # the two seeds are two trainings: other step-0 weights, and (TINY's few iterations leave most columns at the
    # all-background values, whatever the seed) other numbers
    w_a, w_b = (load_checkpoint(p)["model"] for p in cache.glob("*/step0.pt"))
    assert any(not torch.equal(w_a[k], w_b[k]) for k in w_a if w_a[k].is_floating_point())
    differ = [r[k] for r in table["rows"] for k in METRICS if r[k]["values"][0] != r[k]["values"][1]]
    assert differ and all(cell["std"] > 0 for cell in differ)

    md = (out / "table.md").read_text()
    assert md.startswith("2 seeds (run.seed 42, 43)") and "sample standard deviation (ddof=1)" in md
    fin = table["rows"][0]["miou_all"]
    assert f"{np.mean(fin['values']):.1f} ± {np.std(fin['values'], ddof=1):.1f}" in md.splitlines()[4]
    assert md in captured.out

    # a rerun trains nothing: every (row, seed) and the step 0s are reused, and the table is the same
    step1 = out / "lwf" / "seed43" / "step1.pt"
    mtime = step1.stat().st_mtime_ns
    assert main(_table(synth_root, cache, out, "--seeds", "2")) == 0
    again = capsys.readouterr()
    assert "cache: training" not in again.err
    assert sum("reused" in line for line in again.out.splitlines() if line.startswith("seed ")) == 4
    assert step1.stat().st_mtime_ns == mtime
    assert json.loads((out / "table.json").read_text()) == table

    # one seed (the default) keeps the single-run layout and schema: the seed-42 runs, from the same cached step 0
    single = tmp_path / "single"
    assert main(_table(synth_root, cache, single)) == 0
    assert "cache: training" not in capsys.readouterr().err
    rows = json.loads((single / "table.json").read_text())
    assert [r["method"] for r in rows] == ["finetune", "lwf"]
    assert (single / "finetune" / "results.json").is_file() and not (single / "finetune" / "seed42").exists()
    for r, multi in zip(rows, table["rows"]):
        assert set(r) == {"method", *METRICS, "mask_miou", "seconds"}
        for key in METRICS:
            assert r[key] == pytest.approx(multi[key]["values"][0], abs=1e-6)
    assert "±" not in (single / "table.md").read_text()
    # another config in the same folder is trained again (and says so), not reused; step 0 stays shared
    assert main(_table(synth_root, cache, single, "--set=incremental.lr=0.01")) == 0
    changed = capsys.readouterr()
    assert "cache: training" not in changed.err
    assert sum("replacing the run of another config" in line for line in changed.out.splitlines()) == 2
    assert "lr: 0.01" in (single / "lwf" / "config.yaml").read_text()


def test_table_with_zero_seeds_is_one_line_exit_2_and_nothing_written(synth_root, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(_table(synth_root, cache, out, "--seeds", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "wilson-ray: error: --seeds: got 0, expected the number of seeds, an integer >= 1"
    assert not cache.exists() and not out.exists()


def test_a_memory_row_on_a_many_step_task_is_named_budgeted_and_drawn_per_step(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = _table(synth_root, tmp_path / "cache", out, "--task", "10-5", "--memory-size", "3")
    args[args.index("finetune,lwf")] = "finetune,wilson+memory"
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "table.json").read_text())}
    assert list(rows) == ["finetune", "wilson+memory"]
    assert "| wilson+memory |" in (out / "table.md").read_text()
    run = out / "wilson+memory"
    assert "memory_size: 3" in (run / "config.yaml").read_text()
    assert "memory_size: 3" not in (out / "finetune" / "config.yaml").read_text()  # the variant is the row's own
    for step in (1, 2):  # 10-5: steps 1 and 2 train with a memory of the earlier steps' images, never above B
        memory = json.loads((run / f"step{step}.memory.json").read_text())
        assert 1 <= len(memory["images"]) == memory["size"] <= 3 and memory["budget"] == 3
    results = json.loads((run / "results.json").read_text())
    assert len(results["steps"]) == 3 and f"wrote {out / 'steps.png'}" in printed
    assert (out / "steps.png").stat().st_size > 10_000
    # the paper's class-range columns after the last step: 10-5's step-0 classes 1-10 and the later ones 11-20
    assert "| all | 1-10 | 11-20 | all (MiB) |" in (out / "table.md").read_text()
    ious = list(results["steps"][-1]["per_class_iou"].values())
    base, later = [v for v in ious[1:11] if v == v], [v for v in ious[11:] if v == v]
    assert len(ious) == 21 and base and later
    assert rows["wilson+memory"]["miou_step0_classes"] == pytest.approx(sum(base) / len(base))
    assert rows["wilson+memory"]["miou_later_classes"] == pytest.approx(sum(later) / len(later))


@pytest.mark.parametrize(
    ("methods", "extra", "message"),
    [
        ("wilson+mem", (), "row 'wilson+mem' has the variant 'mem', expected one of memory"),
        (
            "sdr+memory",
            (),
            "method 'sdr' has no memory option (method.memory_size), expected one of cam_online, finetune, ilt, lwf, "
            "mib, plop, wilson",
        ),
        ("wilson+memory", ("--memory-size", "0"), "--memory-size: got 0, expected a budget of at least 1 image"),
    ],
)
def test_a_bad_row_variant_is_one_line_exit_2_before_anything_trains(
    synth_root, tmp_path, capsys, methods, extra, message
):
    args = _table(synth_root, tmp_path / "cache", tmp_path / "out", *extra)
    args[args.index("finetune,lwf")] = f"finetune,{methods}"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("method", ["wilson", "cam_online", "finetune", "mib", "lwf", "ilt", "plop"])
def test_every_method_with_the_memory_fields_takes_a_memory_row(method):
    from wilson_ray.table import parse_row

    assert parse_row(f"{method}+memory", 7) == (f"{method}+memory", method, {"method.memory_size": 7})
    assert parse_row(method, 7) == (method, method, {})
