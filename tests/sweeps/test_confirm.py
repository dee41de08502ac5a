"""The seed confirmation stage without Ray: which configurations and seeds it plans, the statistics and the
verdict it writes, its console table and its report section (the stage itself runs in test_sweep_restore)."""

from __future__ import annotations

import json
import math

import pytest
from test_sweep_report import DEFAULTS, _trial, fake_sweep

from wilson_ray.metrics import harmonic_mean
from wilson_ray.orchestration import confirm as C
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.report import build_report
from wilson_ray.orchestration.search_space import Confirm, parse_space
from wilson_ray.sweep_record import TrialRecord


def _space(tmp_path, **confirm):
    data = {
        "base": {"preset": "demo", "method": "wilson"},
        "step": 1,
        "objective": {"metric": "miou_hm"},
        "parameters": {
            "incremental.lr": {"distribution": "loguniform", "low": 0.001, "high": 0.05, "default": 0.005},
            "method.alpha": {"distribution": "uniform", "low": 0.3, "high": 0.9, "default": 0.5},
        },
        "confirm": confirm,
    }
    space = parse_space(data, tmp_path / "space.yaml")
    # parse_space leaves the defaults to load_search_space (which resolves the base); pin them here
    space.defaults = lambda: dict(DEFAULTS)
    return space


def test_plan_points_confirms_the_best_trials_and_the_default_with_fresh_seeds(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    space = _space(tmp_path, top_k=2, seeds=3)
    points = C.plan_points(rows, space, base_seed=42)
    # t2 (hm 32.3) and t4 (hm 29.9) are the best completed non-default trials; t3 was stopped by ASHA; t1 is the
    # default (its own group, whatever its rank)
    assert [(p["group"], p["seed"], p["source_trial"]) for p in points] == [
        (g, s, t) for g, t in (("default", "t1"), ("top1", "t2"), ("top2", "t4")) for s in (43, 44, 45)
    ]
    assert points[0]["values"] == DEFAULTS and points[3]["values"] == {"incremental.lr": 0.02, "method.alpha": 0.8}
    assert len(C.plan_points(rows, _space(tmp_path, top_k=1, seeds=2, include_default=False), 42)) == 2


def test_pareto_front_of_old_and_new():
    rows = [
        {"trial": "a", "miou_old": 30.0, "miou_new": 10.0},
        {"trial": "b", "miou_old": 20.0, "miou_new": 20.0},
        {"trial": "c", "miou_old": 19.0, "miou_new": 19.0},  # dominated by b
        {"trial": "d", "miou_old": 30.0, "miou_new": 9.0},  # dominated by a (equal old, lower new)
        {"trial": "e", "miou_old": float("nan"), "miou_new": 50.0},  # no evaluation: not on the front
    ]
    assert [r["trial"] for r in C.pareto_front(rows)] == ["a", "b"]


def test_confirm_section_is_validated(tmp_path):
    with pytest.raises(Exception, match="confirm.seeds is 1, expected >= 2"):
        _space(tmp_path, seeds=1)
    with pytest.raises(Exception, match="confirm.top_k is 0"):
        _space(tmp_path, top_k=0)
    with pytest.raises(Exception, match="'seed_spread' .* was removed, expected 'confirm"):
        parse_space({"step": 1, "parameters": {"method.alpha": [0.1]}, "seed_spread": {}}, tmp_path / "s.yaml")
    assert _space(tmp_path).confirm == Confirm(top_k=2, seeds=3, include_default=True, pareto=False)


def _confirm_trial(sweep, group, seed, old, new, source):
    folder = sweep / C.FOLDER / "trials"
    tid = f"{group}_{seed}"
    rec = _trial(folder, tid, {"incremental.lr": 0.02}, [(old - 2, new - 2), (old, new)], "completed")
    trial = rec.trial()
    rec.write_trial(tid, f"confirm-{group}-seed{seed}", trial["params"], trial["config"], 1, "sw",
                    confirm={"group": group, "seed": seed, "source_trial": source})  # fmt: skip
    return rec


# per seed (old, new): the default is clearly worse than top1; top2 overlaps the default
STAGE = {
    "default": [(30.0, 20.0), (31.0, 19.0), (29.0, 21.0)],
    "top1": [(34.0, 30.0), (35.0, 29.0), (33.0, 31.0)],
    "top2": [(30.0, 22.0), (28.0, 18.0), (32.0, 21.0)],
}


def _fake_stage(tmp_path):
    storage, name = fake_sweep(tmp_path)
    sweep = R.sweep_dir(storage, name)
    for group, values in STAGE.items():
        for seed, (old, new) in zip((43, 44, 45), values):
            _confirm_trial(sweep, group, seed, old, new, {"default": "t1", "top1": "t2", "top2": "t4"}[group])
    return storage, name, sweep


def test_summarize_stage_computes_mean_std_interval_and_welch(tmp_path):
    from scipy import stats

    storage, name, sweep = _fake_stage(tmp_path)
    stage = C.summarize_stage(sweep, "miou_hm", "max")
    assert json.loads((sweep / "confirm.json").read_text())["best"] == "top1"
    hm = {g: [harmonic_mean(o, n) for o, n in v] for g, v in STAGE.items()}
    d = stage["groups"]["default"]
    assert d["seeds"] == [43, 44, 45] and d["source_trial"] == "t1"
    assert d["miou_old"]["mean"] == pytest.approx(30.0) and d["miou_old"]["std"] == pytest.approx(1.0)
    # 95 % Student-t interval of the default's old mIoU: 30 ± t(0.975, 2) * 1 / sqrt(3), t = 4.302653
    assert d["miou_old"]["low"] == pytest.approx(30 - 4.302653 / math.sqrt(3), abs=1e-3)
    assert d["miou_hm"]["mean"] == pytest.approx(sum(hm["default"]) / 3, abs=1e-4)
    top1 = stage["groups"]["top1"]["vs_default"]
    ref = stats.ttest_ind(hm["top1"], hm["default"], equal_var=False, alternative="greater")
    assert top1["p"] == pytest.approx(ref.pvalue) and top1["significant"] and top1["alpha"] == pytest.approx(0.025)
    assert not stage["groups"]["top2"]["vs_default"]["significant"]
    assert stage["verdict"].startswith("confirmed over 3 seeds: top1 (trial t2) miou_hm")
    assert "a real improvement" in stage["verdict"] and "Bonferroni over 2 candidates" in stage["test"]
    lines = C.table_lines(stage)
    assert len(lines) == 4 and lines[1].split()[:3] == ["default", "t1", "3"] and "±" in lines[2]


def test_console_table_shows_the_interval_of_the_objective_and_of_old_and_new(tmp_path):
    storage, name, sweep = _fake_stage(tmp_path)
    lines = C.table_lines(C.summarize_stage(sweep, "miou_hm", "max"))
    head = lines[0]
    assert head.split()[:3] == ["config", "trial", "seeds"]
    for col in ("miou_hm [95% CI]", "old [95% CI]", "new [95% CI]"):
        assert col in head
    # 95 % Student-t intervals, t(0.975, 2) = 4.302653: default old 30 ± 1 -> 30 ± 2.484 = [27.52, 32.48]; new
    # 20 ± 1 -> [17.52, 22.48]; top2 new 22, 18, 21: mean 20.33, std sqrt(13/3) = 2.082 -> ± 5.171 = [15.16, 25.50]
    default, top1, top2 = lines[1:]
    assert "30.00 ± 1.00 [27.52, 32.48]" in default and "20.00 ± 1.00 [17.52, 22.48]" in default
    assert "34.00 ± 1.00 [31.52, 36.48]" in top1 and "30.00 ± 1.00 [27.52, 32.48]" in top1
    assert "30.00 ± 2.00 [25.03, 34.97]" in top2 and "20.33 ± 2.08 [15.16, 25.50]" in top2
    # columns line up: each cell starts under its header
    for col, cell in (("old [95% CI]", "30.00 ± 1.00 [27.52"), ("new [95% CI]", "20.00 ± 1.00 [17.52")):
        assert head.index(col) == default.index(cell)
    assert (
        default.endswith("  -")
        and top2.split()[-1] == f"{C.read_stage(sweep)['groups']['top2']['vs_default']['p']:.3g}"
    )
    # an objective that is old mIoU is one column under its own name, not shown twice
    lines = C.table_lines(C.summarize_stage(sweep, "miou_old", "max"))
    assert "miou_old [95% CI]" in lines[0] and "old [95% CI]" not in lines[0].replace("miou_old", "")
    assert lines[1].count("30.00 ± 1.00 [27.52, 32.48]") == 1


def test_a_stage_without_a_real_gap_says_so(tmp_path):
    storage, name = fake_sweep(tmp_path)
    sweep = R.sweep_dir(storage, name)
    for seed, (a, b) in zip((43, 44, 45), ((30.0, 29.0), (25.0, 26.0), (33.0, 31.0))):
        _confirm_trial(sweep, "default", seed, a, 20.0, "t1")
        _confirm_trial(sweep, "top1", seed, b, 21.0, "t2")
    stage = C.summarize_stage(sweep, "miou_hm", "max")
    assert not stage["groups"]["top1"]["vs_default"]["significant"]
    assert "not significant at 0.05, so the sweep has not shown that it beats the default" in stage["verdict"]
    # a seed still running is not counted
    TrialRecord(sweep / C.FOLDER / "trials" / "top1_45").set_outcome("running")
    assert C.summarize_stage(sweep, "miou_hm", "max")["groups"]["top1"]["miou_hm"]["n"] == 2


def test_report_shows_the_confirmation(tmp_path):
    storage, name, sweep = _fake_stage(tmp_path)
    C.summarize_stage(sweep, "miou_hm", "max")
    html_path = build_report(storage, name)
    text = html_path.read_text()
    assert "<h2>Seed confirmation</h2>" in text and "a real improvement" in text and "43, 44, 45" in text
    # mean ± std and the 95 % interval of the objective and of old and new mIoU, each in its own column
    for col in ("miou_hm", "miou_old", "miou_new"):
        assert f"<th>{col} mean ± std</th><th>{col} 95 % interval</th>" in text
    default_row = next(r for r in text.split("<tr") if "<td>default</td>" in r)
    assert "<td>30.00 ± 1.00</td><td>[27.52, 32.48]</td><td>20.00 ± 1.00</td><td>[17.52, 22.48]</td>" in default_row
    assert (html_path.parent / "confirm.png").stat().st_size > 5000


def test_multi_objective_report_draws_the_pareto_front(tmp_path):
    import optuna

    storage, name = fake_sweep(tmp_path)
    sweep = R.sweep_dir(storage, name)
    (sweep / "optuna.db").unlink()
    meta = R.read_sweep(storage, name)
    R.write_sweep(storage, name, {**meta, "multi_objective": True})
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}", directions=["maximize", "maximize"]
    )
    dists = {
        "incremental.lr": optuna.distributions.FloatDistribution(0.005, 0.03, log=True),
        "method.alpha": optuna.distributions.FloatDistribution(0.3, 0.9),
    }
    for i, (old, new) in enumerate([(34, 26), (30, 35), (31, 29), (28, 20)]):
        params = {"incremental.lr": 0.005 + 0.005 * i, "method.alpha": 0.3 + 0.1 * i}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[old, new]))
    html_path = build_report(storage, name)
    assert (html_path.parent / "pareto_front.png").stat().st_size > 5000
    assert "Pareto front of old vs new mIoU" in html_path.read_text()
    # the parallel coordinates of a two-objective study are coloured by the harmonic mean of its two values
    assert (html_path.parent / "parallel_coordinate.png").stat().st_size > 5000
    # the front in words and in the trials table: t1 (34, 26), t4 (31, 29) and t2 (30, 35) beat each other on one
    # of old/new each; t3 (27, 5) was stopped by ASHA (and is dominated anyway)
    text = html_path.read_text()
    assert (
        "Pareto front of old vs new mIoU: 3 completed trials that no other completed trial beats on both, best old "
        "mIoU first: t1 (old 34.00, new 26.00); t4 (old 31.00, new 29.00); t2 (old 30.00, new 35.00)."
    ) in text
    assert "<td>t1 (default) (Pareto)</td>" in text and "<td>t2 (Pareto)</td>" in text and "<td>t3</td>" in text
    assert "confirm: {pareto: true}" in text  # no confirmation of the front yet: how to ask for one


def test_search_front_is_the_completed_trials_no_other_beats_on_old_and_new(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    assert [r["trial"] for r in C.search_front(rows)] == ["t1", "t4", "t2"]
    # a completed trial better than t4 on both pushes it off the front; a stopped one never counts
    rows.append({**rows[3], "trial": "t5", "miou_old": 32.0, "miou_new": 30.0})
    rows.append({**rows[2], "trial": "t6", "miou_old": 99.0, "miou_new": 99.0})  # t3's copy: stopped_early
    assert [r["trial"] for r in C.search_front(rows)] == ["t1", "t5", "t2"]


def test_plan_says_asha_keeps_a_scalar_objective_in_a_multi_objective_sweep():
    from wilson_ray.orchestration.console import plan_line

    multi = plan_line("sw", 8, 1, "direct", 2, 4, "miou_all", [1, 2], "/s", None, multi_objective=True)
    first = multi.splitlines()[0]
    assert first.endswith(
        "objective: Optuna's sampler on (miou_old, miou_new) jointly (multi-objective, a Pareto front); ASHA needs "
        "one number and stops on miou_all"
    )
    assert "judges each trial when it reaches epoch 1, 2: it goes on if its miou_all is at least the median" in multi
    single = plan_line("sw", 8, 1, "direct", 2, 4, "miou_all", [1, 2], "/s", None).splitlines()[0]
    assert single.endswith("objective miou_all (the scalar ASHA and Optuna's sampler use)")
    assert "Pareto" not in single
    # with a confirmation of the front, the plan says so
    conf = Confirm(top_k=3, seeds=2, include_default=True, pareto=True)
    plan = plan_line("sw", 8, 1, "direct", 2, 4, "miou_all", [1], "/s", None, multi_objective=True, confirm=conf)
    assert (
        "  then a seed confirmation: the 3 best Pareto-front members and the paper default again with 2 new "
        "training seeds each, full length, no early stopping"
    ) in plan.splitlines()


def test_a_restarted_stage_continues_the_records_an_earlier_driver_started(tmp_path):
    """A driver killed before Tune's first checkpoint of the stage leaves records (and MLflow runs) but nothing
    Tune can restore; the next driver plans the same points again, and each new Tune trial of a point that already
    has a record continues it (an alias) instead of opening a second one for that (configuration, seed)."""
    from wilson_ray.orchestration.tune_driver import ConfirmationSearcher
    from wilson_ray.sweep_record import record_id

    storage, name = fake_sweep(tmp_path)
    sweep = R.sweep_dir(storage, name)
    points = C.plan_points(R.trial_rows(storage, name), _space(tmp_path, top_k=1, seeds=2), base_seed=42)
    assert [(p["group"], p["seed"]) for p in points] == [("default", 43), ("default", 44), ("top1", 43), ("top1", 44)]
    trials = sweep / C.FOLDER / "trials"
    # the killed driver's Tune trials had started (default, 43) and (top1, 43): their records exist
    for tid, point in (("ab12c_00000", points[0]), ("ab12c_00002", points[2])):
        meta = {k: point[k] for k in ("group", "seed", "source_trial")}
        TrialRecord(trials / tid).write_trial(tid, f"confirm-{point['group']}-seed{point['seed']}", point["values"],
                                              {}, 1, name, confirm=meta)  # fmt: skip
    assert C.existing_record(sweep, points[2]) == "ab12c_00002" and C.existing_record(sweep, points[1]) is None
    # a record of the same group and seed for another source trial is not the same point
    assert C.existing_record(sweep, {**points[2], "source_trial": "t4"}) is None

    searcher = ConfirmationSearcher(points, sweep)
    assert searcher.suggest("new_0") == {C.CONFIG_KEY: points[0]}
    assert searcher.suggest("new_1") == {C.CONFIG_KEY: points[1]}
    assert record_id(trials, "new_0") == "ab12c_00000"  # continues the earlier record
    assert record_id(trials, "new_1") == "new_1"  # a point nobody started: its own record
    # Tune's experiment checkpoint holds the searcher; a driver restored from it hands out the rest
    searcher.save(str(tmp_path / "searcher.json"))
    again = ConfirmationSearcher([], tmp_path / "elsewhere")
    again.restore(str(tmp_path / "searcher.json"))
    assert again.suggest("new_2") == {C.CONFIG_KEY: points[2]} and record_id(trials, "new_2") == "ab12c_00002"
    assert again.suggest("new_3") == {C.CONFIG_KEY: points[3]} and record_id(trials, "new_3") == "new_3"
    assert again.suggest("new_4") == ConfirmationSearcher.FINISHED
    again.on_trial_complete("new_3", {"miou_all": 30.0})  # nothing to learn, nothing raised


def test_pareto_confirmation_takes_front_members_only(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    # a completed trial with the second-best old mIoU that t1 (34 old, 26 new) dominates
    rows.append({**rows[1], "trial": "t5", "params": {"incremental.lr": 0.03, "method.alpha": 0.9},
                 "miou_old": 33.0, "miou_new": 10.0, "outcome": "completed"})  # fmt: skip
    space = _space(tmp_path, top_k=2, seeds=2, include_default=False)
    space.objective.metric = "miou_old"
    by_old = [p["source_trial"] for p in C.plan_points(rows, space, 42)][::2]
    assert by_old == ["t5", "t4"]  # top-k by old mIoU (the default t1 is left out of the candidates)
    space.confirm.pareto = True
    front = [p["source_trial"] for p in C.plan_points(rows, space, 42)][::2]
    assert front == ["t4", "t2"]  # t5 is dominated: the front's members, best old mIoU first
