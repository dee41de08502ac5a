"""The sweep report, the console lines and the harmonic-mean objective, on a small fake sweep folder."""

from __future__ import annotations

import math

import pytest

from wilson_ray.metrics import harmonic_mean
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.backends import redact
from wilson_ray.orchestration.console import (
    Eta,
    asha_rungs,
    epoch_line,
    fmt_duration,
    fmt_params,
    progress_line,
    started_line,
    stopped_line,
)
from wilson_ray.orchestration.report import build_report, comparison
from wilson_ray.sweep_record import TrialRecord, rounded, short_names

KEYS = ["incremental.lr", "method.alpha"]
DEFAULTS = {"incremental.lr": 0.005, "method.alpha": 0.5}
CLASSES = ["background", "a", "b", "c", "d"]


def test_harmonic_mean():
    assert harmonic_mean(30.0, 30.0) == 30.0
    assert math.isclose(harmonic_mean(40.0, 20.0), 2 * 40 * 20 / 60)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(50.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 10.0))


def test_short_names_and_rounding():
    assert short_names(["method.alpha", "incremental.lr", "step0.lr"]) == {
        "method.alpha": "alpha",
        "incremental.lr": "incremental.lr",
        "step0.lr": "step0.lr",
    }
    assert rounded(0.0073123) == 0.00731 and rounded(1.94444) == 1.94 and rounded(3) == 3 and rounded("x") == "x"
    assert fmt_params({"method.alpha": 0.312345, "method.temperature": 1.0}) == "alpha=0.312 temperature=1.0"


def test_console_lines():
    assert asha_rungs(2, 2, 4) == [2]
    assert asha_rungs(1, 2, 10) == [1, 2, 4, 8]
    assert fmt_duration(45) == "45 s" and fmt_duration(185) == "3 min 05 s"
    assert started_line(3, 8, "abc", {"method.alpha": 0.5}) == "[3/8] abc started   alpha=0.5"
    line = epoch_line("abc", 2, 4, {"miou_old": 35.04, "miou_new": 20.0, "miou_all": 33.3, "miou_hm": 25.46})
    assert line.split() == ["abc", "epoch", "2/4", "old", "35.0", "new", "20.0", "all", "33.3", "hm", "25.5"]
    assert "epoch-2 rung" in stopped_line("abc", 2, "miou_hm", 12.34) and "12.3" in stopped_line(
        "abc", 2, "miou_hm", 12.34
    )
    assert progress_line(3, 8, 2, 130) == "  -- 3/8 trials done, 2 running, at most 2 min 10 s left"
    assert progress_line(0, 8, 2, None) == "  -- 0/8 trials done, 2 running"


def test_eta_upper_bound():
    now = [0.0]
    eta = Eta(total=4, epochs=4, concurrency=2, clock=lambda: now[0])
    assert eta.left_s() is None
    eta.start("a")
    eta.start("b")
    now[0] = 10.0
    eta.epoch("a", 1)
    eta.epoch("b", 1)  # 2 trial-epochs in 20 trial-seconds: 10 s each
    # a and b: 3 epochs each left; 2 trials not started: 4 epochs each -> 14 trial-epochs / 2 at a time
    assert eta.left_s() == pytest.approx(14 * 10 / 2)
    eta.finish("a")  # ASHA stopped it: its epochs are no longer to come
    assert eta.left_s() == pytest.approx(11 * 10 / 2)


def _trial(trials, tid, params, curve, outcome, per_class=None):
    rec = TrialRecord(trials / tid)
    rec.write_trial(tid, f"trial_{tid}", params, {"data": {"task": "15-5"}, "method": {"name": "wilson"}}, 1, "sw")
    for e, (old, new) in enumerate(curve, 1):
        rec.record_epoch(
            e,
            {
                "epoch": e,
                "miou_old": old,
                "miou_new": new,
                "miou_all": (old + new) / 2,
                "miou_hm": harmonic_mean(old, new),
                "evaluated": 1.0,
                **{f"iou/{c}": v for c, v in (per_class or {}).items()},
            },
        )
    rec.set_outcome(
        outcome,
        "stopped by ASHA at the epoch-2 rung" if outcome == "stopped_early" else None,
        rung=2 if outcome == "stopped_early" else None,
    )
    return rec


def fake_sweep(tmp_path, optuna_url=None):
    """Four trial records and their Optuna study (a SQLite file in the sweep folder, or ``optuna_url``)."""
    import optuna

    storage, name = tmp_path / "sweeps", "sw"
    folder = R.sweep_dir(storage, name)
    trials = folder / "trials"
    per_class = {"background": 80.0, "a": 40.0, "b": 30.0, "c": 35.0, "d": 25.0}
    specs = [
        ("t1", DEFAULTS, [(30, 1), (36, 20), (35, 24), (34, 26)], "completed"),
        ("t2", {"incremental.lr": 0.02, "method.alpha": 0.8}, [(28, 2), (30, 28), (31, 33), (30, 35)], "completed"),
        ("t3", {"incremental.lr": 0.006, "method.alpha": 0.35}, [(25, 0), (27, 5)], "stopped_early"),
        ("t4", {"incremental.lr": 0.012, "method.alpha": 0.6}, [(29, 1), (33, 22), (32, 27), (31, 29)], "completed"),
    ]
    for tid, params, curve, outcome in specs:
        _trial(trials, tid, params, curve, outcome, per_class)
    R.write_sweep(
        storage,
        name,
        {
            "name": name,
            "metric": "miou_hm",
            "mode": "max",
            "keys": KEYS,
            "step": 1,
            "epochs": 4,
            "rungs": [2],
            "defaults": DEFAULTS,
            "base": {"data": {"task": "15-5"}},
            "optuna_storage": redact(optuna_url) if optuna_url else None,
        },
    )
    study = optuna.create_study(
        study_name=name, storage=optuna_url or f"sqlite:///{folder / 'optuna.db'}", direction="maximize"
    )
    dists = {
        "incremental.lr": optuna.distributions.FloatDistribution(0.005, 0.03, log=True),
        "method.alpha": optuna.distributions.FloatDistribution(0.3, 0.9),
    }
    for tid, params, curve, outcome in specs:
        old, new = curve[-1]
        state = optuna.trial.TrialState.PRUNED if outcome == "stopped_early" else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                state=state,
                value=harmonic_mean(old, new) if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values={e: harmonic_mean(o, n) for e, (o, n) in enumerate(curve, 1)},
            )
        )
    return storage, name


def test_comparison_without_a_confirmation_is_a_single_seed_margin(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    cmp = comparison(rows, "miou_hm", "max", DEFAULTS)
    assert cmp["best"]["trial"] == "t2" and cmp["default"]["trial"] == "t1"
    assert cmp["margin"] == pytest.approx(harmonic_mean(30, 35) - harmonic_mean(34, 26))
    assert "one seed each, no seed spread measured" in cmp["text"] and "confirm: {top_k" in cmp["text"]


def test_comparison_with_a_default_stopped_by_asha_gives_no_margin(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    for r in rows:  # the default stopped at its first rung: its value there is not its full-length value
        if r["trial"] == "t1":
            r.update(outcome="stopped_early", epochs=1, miou_hm=5.0)
    bare = comparison(rows, "miou_hm", "max", DEFAULTS, None)
    assert "stopped by ASHA at epoch 1" in bare["text"] and "no full-length run of it" in bare["text"]
    assert "margin" not in bare


def test_comparison_with_a_confirmation_quotes_its_verdict(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    stage = {
        "verdict": "confirmed over 3 seeds: top1 ...",
        "best": "top1",
        "groups": {"top1": {"vs_default": {"diff": 4.0}}},
    }
    cmp = comparison(rows, "miou_hm", "max", DEFAULTS, stage)
    assert cmp["text"] == stage["verdict"] and cmp["margin"] == 4.0


def test_report_writes_html_and_pngs(tmp_path):
    storage, name = fake_sweep(tmp_path)
    html_path = build_report(storage, name)
    out = html_path.parent
    assert html_path.name == "report.html" and out == R.sweep_dir(storage, name) / "report"
    for png in ("curves.png", "best_so_far.png", "parallel_coordinate.png", "param_importances.png"):
        assert (out / png).stat().st_size > 5000, png
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") >= 4  # self-contained: the images are inlined
    assert "t2" in text and "(default)" in text and "stopped by ASHA" in text
    assert "one seed each, no seed spread measured" in text and "Seed confirmation" not in text
    assert "no Optuna study" not in text


def test_report_without_a_study_says_so(tmp_path):
    storage, name = fake_sweep(tmp_path)
    (R.sweep_dir(storage, name) / "optuna.db").unlink()
    text = build_report(storage, name).read_text()
    assert "no Optuna study found" in text and text.count("data:image/png;base64,") >= 2


def test_make_demo_space_compares_trials_after_the_pseudo_label_epochs():
    from pathlib import Path

    from wilson_ray.orchestration.search_space import load_search_space

    space = load_search_space(Path(__file__).resolve().parents[2] / "search_spaces" / "demo-short.yaml")
    cfg = space.base_config()
    assert space.metric == "miou_hm" and space.mode == "max"
    # ASHA's first rung comes after the localizer-only epochs and at least one epoch of l_SEG
    assert space.scheduler.grace_period >= cfg.method.args.pseudo_epochs + 1
    assert space.scheduler.grace_period < cfg.incremental.epochs
    assert space.workers_per_trial == 1 and space.resources.previous_step_workers == 2
    assert space.defaults() == {
        "incremental.lr": 0.005,
        "incremental.lr_head": 10.0,
        "method.alpha": 0.5,
        "method.temperature": 1.0,
    }
    # the sweep measures its own seed noise: the best trials and the default again over fresh seeds
    assert space.confirm is not None and space.confirm.seeds >= 3 and space.confirm.include_default
