"""benchmarks.official_step / benchmarks.vs_official: the harness around the official WILSON code, not the official
code itself (which is not in this repository). No ResNet-101 runs: the missing-path errors, the pooling and ratio
arithmetic on known inputs, the alternating run order, the markdown table from a fixed JSON, the in-place-ABN
stand-in, and one subprocess run of official_step against a tiny fake official tree that only has the interface
the harness drives (Trainer, argparser, tasks), to exercise the import path, the stand-in and the loader timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import official_step, vs_official

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------------
# Missing or wrong path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_directory_is_one_line_naming_path_file_and_how_to_get_it(tmp_path, capsys):
    missing = tmp_path / "no-such-checkout"
    assert official_step.main(["--official", str(missing), "--json"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --official {missing}: no such directory")
    assert "train.py" in line
    assert "git clone https://github.com/fcdl94/WILSON" in line
    assert official_step.OFFICIAL_COMMIT in line


def test_incomplete_checkout_names_the_first_missing_file(tmp_path, capsys):
    for rel in official_step.REQUIRED_FILES:
        if rel != "segmentation_module.py":
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("")
    assert official_step.main(["--official", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --official {tmp_path}: segmentation_module.py not found")
    assert "with segmentation_module.py in it" in line and "git clone https://github.com/fcdl94/WILSON" in line


def test_empty_directory_names_train_py(tmp_path, capsys):
    assert official_step.main(["--official", str(tmp_path)]) == 2
    assert _error_line(capsys).startswith(f"error: --official {tmp_path}: train.py not found")


def test_no_official_flag(capsys):
    assert official_step.main([]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: --official is required") and "git clone" in line


def test_vs_official_checks_the_path_before_running_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vs_official, "run_one", lambda cmd, cwd=None: pytest.fail("ran a benchmark"))
    assert vs_official.main(["--official", str(tmp_path / "x"), "--out", str(tmp_path / "o.json")]) == 2
    assert "no such directory" in _error_line(capsys)
    assert not (tmp_path / "o.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Pooling and ratios


def test_pool_takes_the_median_of_all_timed_iterations_and_the_largest_rss():
    runs = [
        {"times_s": [1.0, 2.0, 3.0], "median_s": 2.0, "peak_rss_mb": 100.0},
        {"times_s": [4.0, 5.0], "median_s": 4.5, "peak_rss_mb": 120.0},
    ]
    assert vs_official.pool(runs) == {
        "median_s": 3.0,
        "n": 5,
        "times_s": [1.0, 2.0, 3.0, 4.0, 5.0],
        "pass_medians_s": [2.0, 4.5],
        "peak_rss_mb": 120.0,
        "peak_rss_mb_runs": [100.0, 120.0],
    }


def test_ratios_are_official_over_ours():
    pooled = {
        "official": {"median_s": 6.0, "peak_rss_mb": 3000.0},
        "fast": {"median_s": 2.0, "peak_rss_mb": 2000.0},
        "fp32_eager": {"median_s": 4.0, "peak_rss_mb": 1500.0},
    }
    assert vs_official.ratios(pooled) == {
        "official_over_fast": 3.0,
        "rss_official_over_fast": 1.5,
        "official_over_fp32_eager": 1.5,
        "rss_official_over_fp32_eager": 2.0,
    }
    assert vs_official.ratios({"fast": pooled["fast"]}) == {}


def _rec(p, key, variant, times, rss):
    import statistics

    return {
        "pass": p,
        "config": key,
        "variant": variant,
        "result": {"times_s": times, "median_s": statistics.median(times), "peak_rss_mb": rss},
    }


def test_summarise_pools_each_variant_over_both_passes():
    cfg = {"step": 1, "batch": 4, "size": 256}
    key = vs_official.config_key(cfg)
    assert key == "step1_4x256"
    runs = [
        _rec(0, key, "official", [5.0, 6.0, 7.0], 3600.0),
        _rec(0, key, "fast", [2.0, 2.0, 3.0], 3400.0),
        _rec(0, key, "fp32_eager", [6.0, 6.0, 6.0], 3500.0),
        _rec(1, key, "fp32_eager", [6.0, 6.0, 6.0], 3550.0),
        _rec(1, key, "fast", [2.0, 3.0, 3.0], 3450.0),
        _rec(1, key, "official", [6.0, 6.0, 8.0], 3620.0),
    ]
    (c,) = vs_official.summarise(runs, [cfg])
    assert c["label"] == "WILSON step 1, 4 × 256²"
    assert c["variants"]["official"]["median_s"] == 6.0  # median of 5, 6, 6, 6, 7, 8
    assert c["variants"]["official"]["pass_medians_s"] == [6.0, 6.0]
    assert c["variants"]["fast"]["median_s"] == 2.5  # median of 2, 2, 2, 3, 3, 3
    assert c["variants"]["fast"]["peak_rss_mb"] == 3450.0
    assert c["official_over_fast"] == 2.4
    assert c["official_over_fp32_eager"] == 1.0
    assert c["rss_official_over_fp32_eager"] == 3620.0 / 3550.0


# ---------------------------------------------------------------------------------------------------------------
# Order and commands


def test_run_order_reverses_the_variants_every_other_pass():
    a, b = {"step": 1, "batch": 4, "size": 256}, {"step": 0, "batch": 2, "size": 512}
    got = [(p, vs_official.config_key(c), v) for p, c, v in vs_official.run_order([a, b], passes=3)]
    assert got == [
        (0, "step1_4x256", "official"),
        (0, "step1_4x256", "fast"),
        (0, "step1_4x256", "fp32_eager"),
        (0, "step0_2x512", "official"),
        (0, "step0_2x512", "fast"),
        (0, "step0_2x512", "fp32_eager"),
        (1, "step1_4x256", "fp32_eager"),
        (1, "step1_4x256", "fast"),
        (1, "step1_4x256", "official"),
        (1, "step0_2x512", "fp32_eager"),
        (1, "step0_2x512", "fast"),
        (1, "step0_2x512", "official"),
        (2, "step1_4x256", "official"),
        (2, "step1_4x256", "fast"),
        (2, "step1_4x256", "fp32_eager"),
        (2, "step0_2x512", "official"),
        (2, "step0_2x512", "fast"),
        (2, "step0_2x512", "fp32_eager"),
    ]


def test_commands_each_a_fresh_python_process():
    cfg = {"step": 1, "batch": 2, "size": 512}
    common = ["--size", "512", "--batch", "2", "--step", "1", "--warmup", "2", "--iters", "5", "--threads", "2"]
    assert vs_official.command("official", cfg, "/w", 2, 5, 2, python="py") == [
        "py",
        "-m",
        "benchmarks.official_step",
        "--official",
        "/w",
        "--abn",
        "auto",
        *common,
        "--json",
    ]
    ours = ["py", "-m", "benchmarks.step", "--backbone", "resnet101", "--method", "wilson", *common, "--json"]
    assert vs_official.command("fast", cfg, "/w", 2, 5, 2, python="py") == [*ours, "--no-flops"]
    assert vs_official.command("fp32_eager", cfg, "/w", 2, 5, 2, python="py") == [*ours, "--no-flops", "--fp32-eager"]
    # our step benchmark accepts every flag the harness passes
    from benchmarks import step

    a = step.parse_args(vs_official.command("fp32_eager", cfg, "/w", 2, 5, 2)[3:])
    assert (a.size, a.batch, a.step, a.warmup, a.iters, a.threads, a.fp32_eager, a.no_flops) == (
        512,
        2,
        1,
        2,
        5,
        2,
        True,
        True,
    )
    o = official_step.parse_args(vs_official.command("official", cfg, "/w", 2, 5, 2)[3:])
    assert (o.official, o.size, o.batch, o.step, o.warmup, o.iters, o.threads) == ("/w", 512, 2, 1, 2, 5, 2)


def test_dry_run_prints_the_commands_in_order(tmp_path, capsys):
    official = _fake_tree(tmp_path / "WILSON")
    assert vs_official.main(["--official", str(official), "--dry-run", "--configs", "1:4:256,0:2:512"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12
    assert "benchmarks.official_step" in lines[0] and "--fp32-eager" in lines[2]
    assert "--fp32-eager" in lines[6] and "benchmarks.official_step" in lines[8]


def test_official_argv_is_run_sh():
    assert (
        official_step.official_argv(1, 512, 2, "iabn")
        == (
            "--dataset voc --task 15-5 --batch_size 2 --val_interval 2 --step 1 --weakly --alpha 0.5 --lr 0.001 "
            "--loss_de 1 --lr_policy warmup --affinity --epochs 40 --crop_size 512 --no_pretrained --norm_act iabn"
        ).split()
    )
    assert (
        official_step.official_argv(0, 256, 4, "abn")
        == (
            "--dataset voc --task 15-5 --batch_size 4 --val_interval 2 --step 0 --bce --lr 0.01 --epochs 30 "
            "--crop_size 256 --no_pretrained --norm_act abn"
        ).split()
    )


# ---------------------------------------------------------------------------------------------------------------
# Markdown


FIXED = {
    "benchmark": "vs_official",
    "date": "2026-12-04",
    "passes": 2,
    "warmup": 2,
    "iters": 5,
    "machine": {
        "cpu_model": "AMD EPYC",
        "cpu_flags": ["avx2", "avx512f", "avx512_bf16"],
        "torch": "2.14.1",
        "threads": 2,
        "official_commit": "8c6c59598d7633815d2fc4ea4d94e8879cc60dd3",
        "abn": "standin",
        "amp": "none",
        "fast_amp": "bf16",
    },
    "configs": [
        {
            "step": 1,
            "batch": 4,
            "size": 256,
            "label": "WILSON step 1, 4 × 256²",
            "variants": {
                "official": {"median_s": 4.93, "pass_medians_s": [4.9, 5.01], "peak_rss_mb": 3001.4},
                "fast": {"median_s": 2.5, "pass_medians_s": [2.45, 2.55], "peak_rss_mb": 2800.0},
                "fp32_eager": {"median_s": 5.0, "pass_medians_s": [5.0, 5.0], "peak_rss_mb": 3100.6},
            },
            "official_over_fast": 1.972,
            "official_over_fp32_eager": 0.986,
        },
        {
            "step": 0,
            "batch": 2,
            "size": 512,
            "label": "step 0 (BCE), 2 × 512²",
            "variants": {"official": {"median_s": 7.0, "pass_medians_s": [7.0], "peak_rss_mb": 3600.0}},
        },
    ],
}


def test_markdown_table_from_a_fixed_json():
    assert vs_official.markdown(FIXED) == (
        "2026-12-04, AMD EPYC (flags: avx2, avx512f, avx512_bf16), torch 2.14.1, 2 threads. Official: fcdl94/WILSON "
        "@ 8c6c59598d76, norm layers pure-PyTorch in-place-ABN stand-in, amp none; ours: fast, fp32 eager (fast: amp "
        "bf16). 2 passes, each run a fresh process (2 warm-up + 5 timed iterations), variant order reversed "
        "every other pass; median over the pooled timed iterations (each pass's median in brackets); ratio "
        "official / ours (> 1: ours faster); peak RSS = largest ru_maxrss over the passes.\n"
        "\n"
        "| configuration | official s | ours fast s | ours fp32 eager s | official / fast | official / fp32 eager "
        "| peak RSS MB: official, fast, fp32 eager |\n"
        "|---|---|---|---|---|---|---|\n"
        "| WILSON step 1, 4 × 256² | 4.930 (4.90, 5.01) | 2.500 (2.45, 2.55) | 5.000 (5.00, 5.00) | 1.97× | 0.99× "
        "| 3001, 2800, 3101 |\n"
        "| step 0 (BCE), 2 × 512² | 7.000 (7.00) | — | — | — | — | 3600, —, — |\n"
    )


def test_fast_fp32_variant_is_the_fast_path_without_bf16_and_gets_its_own_columns():
    cfg = {"step": 1, "batch": 4, "size": 256}
    cmd = vs_official.command("fast_fp32", cfg, "/w", 2, 5, 2, python="py")
    assert cmd[-2:] == ["--amp", "none"] and "--fp32-eager" not in cmd
    from benchmarks import step

    o = step.options(step.parse_args(cmd[3:]))
    assert o.amp == "none" and o.channels_last and o.valid_taps  # the fast switches stay on (every CPU plan)
    doc = json.loads(json.dumps(FIXED))
    first = doc["configs"][0]
    first["variants"]["fast_fp32"] = {"median_s": 3.0, "pass_medians_s": [2.9, 3.1], "peak_rss_mb": 2500.0}
    first.update(vs_official.ratios(first["variants"]))
    lines = vs_official.markdown(doc).splitlines()
    assert lines[2] == (
        "| configuration | official s | ours fast s | ours fast fp32 s | ours fp32 eager s | official / fast "
        "| official / fast fp32 | official / fp32 eager | peak RSS MB: official, fast, fast fp32, fp32 eager |"
    )
    assert lines[3] == "|---|" + "---|" * 8
    assert lines[4] == (
        "| WILSON step 1, 4 × 256² | 4.930 (4.90, 5.01) | 2.500 (2.45, 2.55) | 3.000 (2.90, 3.10) "
        "| 5.000 (5.00, 5.00) | 1.97× | 1.64× | 0.99× | 3001, 2800, 2500, 3101 |"
    )


def test_unknown_variant_is_refused_before_anything_runs(tmp_path, capsys):
    official = _fake_tree(tmp_path / "WILSON")
    assert vs_official.main(["--official", str(official), "--variants", "official,fastest", "--dry-run"]) == 2
    assert "unknown fastest" in capsys.readouterr().err


def test_op_profile_compare_lists_the_larger_operators_of_either_side(tmp_path, capsys):
    from benchmarks import op_profile

    conv = {"ms": 100.0, "calls": 4}
    a = {"iters": 2, "self_cpu_ms_per_iter": {"aten::conv": conv, "aten::add": {"ms": 5, "calls": 8}}}
    b = {"iters": 2, "self_cpu_ms_per_iter": {"aten::conv": {**conv, "ms": 90.0}, "aten::pamr": {"ms": 30, "calls": 1}}}
    lines = op_profile.compare(a, b, top=2)
    assert lines[2:] == [
        "| `aten::conv` | 100 (4) | 90 (4) | -10 |",
        "| `aten::pamr` | 0 (0) | 30 (1) | +30 |",
        "| all operators | 105 | 120 | +15 |",
    ]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text("{not json")
    assert op_profile.main([str(pa), str(pb)]) == 2
    assert str(pb) in capsys.readouterr().err


def test_markdown_from_a_written_json(tmp_path, capsys):
    path = tmp_path / "vs.json"
    path.write_text(json.dumps(FIXED))
    assert vs_official.main(["--markdown-from", str(path)]) == 0
    assert capsys.readouterr().out == vs_official.markdown(FIXED)


# ---------------------------------------------------------------------------------------------------------------
# Small pieces of official_step


def test_cpu_flags_from_cpuinfo_text():
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16 avx512_bf16\n"
    assert official_step.cpu_flags(text) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert official_step.cpu_flags("flags : sse avx2\n") == ["avx2"]
    assert official_step.cpu_flags("no flags line") == []


def test_git_commit_reads_head_refs_and_packed_refs(tmp_path):
    sha = "a" * 40
    assert official_step.git_commit(tmp_path) is None
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/master\n")
    assert official_step.git_commit(tmp_path) == sha
    (tmp_path / ".git" / "refs" / "heads" / "master").write_text("b" * 40 + "\n")
    assert official_step.git_commit(tmp_path) == "b" * 40
    (tmp_path / ".git" / "HEAD").write_text("c" * 40 + "\n")
    assert official_step.git_commit(tmp_path) == "c" * 40


def test_timed_loader_marks_one_iteration_per_batch():
    loader = official_step.TimedLoader("batch", 3)
    assert len(loader) == 3
    loader.sampler.set_epoch(5)
    assert list(loader) == ["batch"] * 3
    assert len(loader.marks) == 4 and len(loader.iteration_times()) == 3
    assert all(t >= 0 for t in loader.iteration_times())


def test_standin_abn_is_batchnorm_then_the_activation_read_at_forward_time():
    import torch
    from torch.nn import functional as F

    mods = official_step.standin_modules()
    abn = mods["inplace_abn"]
    assert mods["inplace_abn.functions"] is abn.functions
    x = torch.randn(2, 4, 3, 3)
    for cls in (abn.ABN, abn.InPlaceABN):
        m = cls(4, activation="leaky_relu", activation_param=0.01)
        ref = torch.nn.BatchNorm2d(4)
        torch.testing.assert_close(m(x.clone()), F.leaky_relu(ref(x.clone()), 0.01))
        m.activation = "identity"  # what the official residual blocks do to their last BN
        torch.testing.assert_close(m(x.clone()), ref(x.clone()))
    sync = abn.InPlaceABNSync(4, activation="leaky_relu", activation_param=0.01, group=None)
    assert sync.activation_param == 0.01
    out = abn.functions.inplace_abn(x.clone(), None, None, torch.zeros(4), torch.ones(4), True, 0.1, 1e-5, "elu", 1.0)
    torch.testing.assert_close(out, F.elu(F.batch_norm(x, None, None, training=True), 1.0))


# ---------------------------------------------------------------------------------------------------------------
# A tiny fake official tree: the interface official_step drives, nothing of the official code


FAKE = {
    "tasks.py": """
        def get_task_list():
            return ["15-5"]

        def get_per_task_classes(dataset, name, step):
            return [16, 5][: step + 1]
    """,
    "argparser.py": """
        import argparse
        import tasks

        def get_argparser():
            p = argparse.ArgumentParser()
            for flag in ("--dataset", "--task", "--norm_act", "--lr_policy"):
                p.add_argument(flag, default="poly")
            for flag in ("--batch_size", "--val_interval", "--step", "--epochs", "--crop_size"):
                p.add_argument(flag, type=int)
            for flag in ("--alpha", "--lr", "--loss_de"):
                p.add_argument(flag, type=float)
            for flag in ("--weakly", "--affinity", "--bce", "--no_pretrained"):
                p.add_argument(flag, action="store_true")
            p.add_argument("--pseudo_ep", type=int, default=5)
            p.add_argument("--random_seed", type=int, default=42)
            p.add_argument("--output_stride", type=int, default=16)
            p.add_argument("--backbone", default="fake-net")
            return p

        def modify_command_options(opts):
            opts.pooling = opts.crop_size // opts.output_stride
            return opts
    """,
    "segmentation_module.py": """
        import torch
        from torch import nn
        from inplace_abn import InPlaceABN  # the stand-in when the package is absent

        class Net(nn.Module):
            def __init__(self, classes):  # one classifier per step, as the official incremental model
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), InPlaceABN(8))
                self.cls = nn.ModuleList([nn.Conv2d(8, c, 1) for c in classes])

            def forward(self, x, interpolate=True):
                f = self.body(x)
                return torch.cat([c(f) for c in self.cls], 1), {"body": f}
    """,
    "train.py": """
        import json, os
        import torch
        from torch import nn
        from torch.cuda import amp
        from torch.nn.parallel import DistributedDataParallel
        import tasks
        from segmentation_module import Net
        from inplace_abn import InPlaceABN

        CALLS = os.environ["FAKE_CALLS"]

        class Trainer:
            def __init__(self, logger, device, opts):
                classes = tasks.get_per_task_classes(opts.dataset, opts.task, opts.step)
                self.opts, self.scaler = opts, amp.GradScaler(enabled=False)
                self.model_old = Net(classes[:-1]).eval() if opts.step > 0 else None
                model = Net(classes)
                self.pseudolabeler = None
                params = list(model.parameters())
                if opts.weakly:
                    self.pseudolabeler = DistributedDataParallel(
                        nn.Sequential(nn.Conv2d(8, 8, 1), InPlaceABN(8), nn.Conv2d(8, sum(classes), 1)),
                        device_ids=[opts.device_id], output_device=opts.device_id)
                    params += list(self.pseudolabeler.parameters())
                self.model = DistributedDataParallel(model, device_ids=[opts.device_id],
                                                     output_device=opts.device_id, find_unused_parameters=False)
                self.optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=0.9, nesterov=True)
                logger.info("built")

            def train(self, cur_epoch, train_loader, print_int=10):
                train_loader.sampler.set_epoch(cur_epoch)
                n = 0
                for images, labels, l1h in train_loader:
                    out, feats = self.model(images, interpolate=False)
                    loss = out.mean()
                    if self.pseudolabeler is not None:
                        loss = loss + self.pseudolabeler(feats["body"]).mean()
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()
                    n += 1
                with open(CALLS, "w") as f:
                    json.dump({"epoch": cur_epoch, "iterations": n, "images": list(images.shape),
                               "labels": list(labels.shape), "l1h": l1h.sum(1).tolist(),
                               "masks_max": int(labels.max()), "max_iters": self.opts.max_iters,
                               "start_decay": getattr(self.opts, "start_decay", None),
                               "step": self.opts.step, "lr": self.opts.lr}, f)
                return torch.tensor(1.5), torch.tensor(0.5)
    """,
}


def _fake_tree(root: Path) -> Path:
    for rel in official_step.REQUIRED_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    for rel, text in FAKE.items():
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 0])
def test_official_step_drives_a_fake_official_tree(tmp_path, step):
    official = _fake_tree(tmp_path / "WILSON")
    calls = tmp_path / "calls.json"
    cmd = [sys.executable, "-m", "benchmarks.official_step", "--official", str(official)]
    cmd += ["--size", "16", "--batch", "2", "--step", str(step), "--warmup", "1", "--iters", "3", "--abn", "standin"]
    cmd += ["--threads", "1", "--json", "--op-profile", str(tmp_path / "ops.json")]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**_env(), "FAKE_CALLS": str(calls)}
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pure-PyTorch stand-in" in proc.stderr
    assert r["benchmark"] == "official_step" and r["official"] == str(official.resolve())
    assert len(r["times_s"]) == 3 and len(r["warmup_times_s"]) == 1
    assert r["abn"] == "standin" and any("stand-in" in n for n in r["notes"])
    assert r["amp"] == "none" and r["threads"] == 1 and r["step"] == step
    assert r["epoch_loss"] == [1.5, 0.5]
    assert r["official_argv"] == official_step.official_argv(step, 16, 2, "iabn")
    seen = json.loads(calls.read_text())
    assert seen["iterations"] == 4  # warm-up + timed, one train() call
    ops = json.loads((tmp_path / "ops.json").read_text())  # the 3 timed iterations' operators, per iteration
    assert ops["iters"] == 3 and ops["self_cpu_ms_per_iter"]["aten::mean"]["calls"] == (2 if step else 1)
    assert seen["epoch"] == (5 if step else 0)  # step 1 at cur_epoch = pseudo_ep: every term on
    assert seen["images"] == [2, 3, 16, 16] and seen["labels"] == [2, 16, 16]
    assert seen["max_iters"] == (40 if step else 30) * 4  # run.py: epochs x len(train_loader)
    assert seen["start_decay"] == (5 * 4 if step else None)
    assert seen["lr"] == (0.001 if step else 0.01)
    if step:
        assert seen["l1h"] == [2.0, 2.0]  # two new classes per image, as benchmarks.common.make_batch
        assert seen["masks_max"] == 0
    else:
        assert seen["masks_max"] <= 15  # no 255 in official training masks


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "FAKE_CALLS"}
