"""What a researcher reads after a sweep (issue 29): the summary figure plots the metric it names, ASHA's rung
decisions are recorded with their cutoff (the same decisions as Ray's own scheduler), the best-so-far curve ends
at the reported best, and the report words its caveats."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tests.sweeps.test_sweep_report import fake_sweep
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.compat import ExplainedASHA
from wilson_ray.orchestration.console import passed_line, plan_line, stopped_line
from wilson_ray.orchestration.report import best_so_far, best_so_far_png
from wilson_ray.sweep_record import TrialRecord, explain_rung
from wilson_ray.tracking import plots


def test_summary_figure_right_panel_plots_the_named_metric(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    curves = {r["trial"]: R.metric_curve(r, "miou_hm") for r in rows}
    fig = plots.sweep_summary_figure(rows, "miou_hm", curves)
    right = fig.axes[-1] if len(fig.axes) == 2 else fig.axes[1]
    assert right.get_title() == "miou_hm per epoch"
    plotted = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
    by_id = {r["trial"]: r for r in rows}
    for tid, ys in plotted.items():
        epochs = by_id[tid]["_epochs"]
        assert ys == [epochs[e]["miou_hm"] for e in sorted(epochs)]  # hm, not miou_all
        assert ys != [epochs[e]["miou_all"] for e in sorted(epochs)]
    assert set(plotted) == {"t1", "t2", "t3", "t4"}


def _feed(sched, order):
    trials = {}
    actions = []
    for tid, epoch, value in order:
        trial = trials.setdefault(tid, SimpleNamespace(trial_id=tid))
        if epoch == 1:
            sched.on_trial_add(None, trial)
        actions.append(sched.on_trial_result(None, trial, {"epoch": epoch, "miou_hm": value}))
    return actions


# Four trials reach the epoch-2 rung one after another: asynchronous ASHA compares each only with those before it.
ORDER = [
    ("a", 1, 5.0),
    ("a", 2, 11.5),  # first at the rung: passes whatever its value
    ("b", 1, 6.0),
    ("b", 2, 30.0),  # median(11.5) = 11.5 -> passes
    ("c", 1, 6.0),
    ("c", 2, 21.0),  # median(11.5, 30) = 20.75 -> passes
    ("d", 1, 6.0),
    ("d", 2, 18.6),  # median(11.5, 30, 21) = 21 -> stopped, though above a's 11.5
]


def test_explained_asha_decides_as_ray_and_records_the_cutoff(tmp_path):
    kwargs = dict(time_attr="epoch", metric="miou_hm", mode="max", max_t=4, grace_period=2, reduction_factor=2)
    plain = _feed(ASHAScheduler(**kwargs), ORDER)
    explained = _feed(ExplainedASHA(trials_dir=tmp_path, **kwargs), ORDER)
    assert explained == plain
    assert [a for (t, e, _), a in zip(ORDER, plain) if e == 2] == [TrialScheduler.CONTINUE] * 3 + [TrialScheduler.STOP]
    got = {t: TrialRecord(tmp_path / t).rungs()[2] for t in "abcd"}
    assert got["a"]["cutoff"] is None and got["a"]["compared"] == 0 and not got["a"]["stopped"]
    assert got["b"]["cutoff"] == pytest.approx(11.5) and got["b"]["compared"] == 1
    assert got["c"]["cutoff"] == pytest.approx(20.75) and got["c"]["compared"] == 2
    assert got["d"]["cutoff"] == pytest.approx(21.0) and got["d"]["stopped"] and got["d"]["value"] == 18.6
    assert all(set(TrialRecord(tmp_path / t).rungs()) == {2} for t in "abcd")  # epoch 1 is no rung
    assert explain_rung(got["d"]) == (
        "miou_hm 18.60 < cutoff 21.00 (the median of the 3 results recorded at this rung before it)"
    )
    assert "no cutoff yet" in explain_rung(got["a"])
    assert stopped_line("d", 2, "miou_hm", 18.6, got["d"]).endswith(explain_rung(got["d"]))
    assert "passed the epoch-2 rung: miou_hm 21.00 >= cutoff 20.75" in passed_line("c", 2, got["c"])


def test_explained_asha_in_min_mode_reports_the_cutoff_in_the_metric_units(tmp_path):
    sched = ExplainedASHA(trials_dir=tmp_path, time_attr="epoch", metric="miou_hm", mode="min", max_t=4, grace_period=2)
    _feed(sched, [("a", 1, 1.0), ("a", 2, 0.4), ("b", 1, 1.0), ("b", 2, 0.9)])
    d = TrialRecord(tmp_path / "b").rungs()[2]
    assert d["cutoff"] == pytest.approx(0.4) and d["stopped"] and d["mode"] == "min"
    assert "0.90 > cutoff 0.40" in explain_rung(d)


def test_plan_line_describes_asynchronous_asha():
    line = plan_line("sw", 8, 1, "direct", 2, 4, "miou_hm", [2], "/s", None)
    assert "weaker half" not in line
    assert "asynchronous ASHA" in line and "median of the results recorded at that rung before it" in line
    assert "75% quantile" in plan_line("sw", 8, 1, "direct", 2, 4, "miou_hm", [2], "/s", None, reduction_factor=4)


def test_best_so_far_ends_at_the_reported_best(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rows = R.trial_rows(storage, name)
    records = {r["trial"]: {e: dict(m) for e, m in r["_epochs"].items()} for r in rows}
    for tid, epochs in records.items():  # time order: t1's epochs, then t2's, ...
        for e, m in epochs.items():
            m["_time"] = float(int(tid[1:]) * 10 + e)
    best = R.best_row(rows, "miou_hm", "max")
    records["t4"][3]["miou_hm"] = best["miou_hm"] + 5.0  # an intermediate epoch above every final value
    points, ys, finals = best_so_far(rows, records, "miou_hm", "max")
    assert len(points) == sum(len(e) for e in records.values()) == 14
    assert ys[-1] == pytest.approx(best["miou_hm"])  # not the intermediate 5 points higher
    assert max(v for _, v in points) == pytest.approx(best["miou_hm"] + 5.0)
    assert [round(v, 6) for _, v in finals] == [round(r["miou_hm"], 6) for r in sorted(rows, key=lambda r: r["trial"])]
    best_so_far_png(rows, records, "miou_hm", "max", tmp_path / "bsf.png")
    assert (tmp_path / "bsf.png").stat().st_size > 1000


def test_overlays_have_a_class_key_and_a_localizer_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    names = ["background", "aeroplane", "bicycle", "bird"]
    mask = np.zeros((16, 16), dtype=np.int64)
    mask[4:9, 4:9] = 3
    mask[0, :] = 255
    rows = [
        [
            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            plots.colorize(mask, 4),
            plots.colorize(np.where(mask == 255, 0, mask), 4),
            (plots.plt_cmap()(rng.random((16, 16)))[..., :3] * 255).astype(np.uint8),
            plots.colorize(mask, 4),
        ]
    ] * 2
    titles = ["image", "ground truth", "prediction", "localizer (new classes)", "pseudo-label"]
    fig = plots.overlays_figure(rows, titles, names, {0, 3, 255}, "t")
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["background", "bird", "void (255)"]
    bars = [ax for ax in fig.axes if ax.get_xlabel() == "localizer score"]
    assert len(bars) == 1
    column = fig.axes[3].get_position()  # row 0, localizer column
    assert abs(bars[0].get_position().x0 - column.x0) < 1e-6  # right under the localizer column, not over another
    plots.save_figure(fig, tmp_path / "o.png")
