"""A multi-objective sweep's old/new Pareto front in MLflow (issue 26), on a SQLite store without Ray: each search
trial's run tagged ``wilson_ray.pareto_front`` true or false, the sweep's run naming the members."""

from __future__ import annotations

from test_sweep_report import fake_sweep

from wilson_ray.orchestration import confirm as C
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.tune_driver import parent_tags, upload_records
from wilson_ray.sweep_record import TrialRecord
from wilson_ray.tracking.mlflow_tracker import (
    TAG_PARETO,
    TAG_PARETO_TRIALS,
    TAG_TRIAL,
    SweepRun,
    TrackingInfo,
    TrialTracker,
    default_artifact_location,
    default_tracking_uri,
    sweep_runs,
)


def _info(tmp_path) -> TrackingInfo:
    return TrackingInfo(
        uri=default_tracking_uri(tmp_path),
        experiment="sw",
        sweep="sw",
        artifact_location=default_artifact_location(tmp_path, "sw"),
    )


def _pareto_tags(info: TrackingInfo) -> dict[str, str | None]:
    return {
        r.data.tags[TAG_TRIAL]: r.data.tags.get(TAG_PARETO)
        for r in sweep_runs(info.uri, info.experiment)
        if TAG_TRIAL in r.data.tags
    }


def test_front_members_are_tagged_on_their_runs_and_named_on_the_sweep_run(tmp_path):
    storage, name = fake_sweep(tmp_path)
    sweep = R.sweep_dir(storage, name)
    # one confirmation trial: a run of its own, not a search trial, so no front tag
    point = {"group": "top1", "seed": 43, "source_trial": "t2"}
    TrialRecord(sweep / C.FOLDER / "trials" / "c1").write_trial("c1", "confirm-top1-seed43", {}, {}, 1, name,
                                                                confirm=point)  # fmt: skip
    info = _info(tmp_path)
    info.parent_run_id = SweepRun(info).open()
    rows = R.trial_rows(storage, name)
    front = [r["trial"] for r in C.search_front(rows)]
    assert front == ["t1", "t4", "t2"]  # final (old, new): t1 (34, 26), t4 (31, 29), t2 (30, 35); t3 was stopped

    upload_records(info, storage, name, front)
    assert _pareto_tags(info) == {"t1": "true", "t2": "true", "t3": "false", "t4": "true", "c1": None}

    # the sweep run ran again with a front that lost t1 and t4: their runs lose the mark, no run is added
    upload_records(info, storage, name, ["t2"])
    assert _pareto_tags(info) == {"t1": "false", "t2": "true", "t3": "false", "t4": "false", "c1": None}
    assert len(sweep_runs(info.uri, info.experiment)) == 6  # the sweep's run, four trials, one confirmation

    # a single-objective sweep tags nothing
    upload_records(_info(tmp_path / "other"), *fake_sweep(tmp_path / "other"))
    assert set(_pareto_tags(_info(tmp_path / "other")).values()) == {None}

    tags = parent_tags(rows, R.best_row(rows, "miou_hm", "max"), "miou_hm", None, front)
    assert tags[TAG_PARETO_TRIALS] == "t1, t4, t2"
    assert (
        "Pareto front of old vs new mIoU (3 completed trials no other beats on both; their runs are tagged "
        "wilson_ray.pareto_front=true): t1 (old 34.00, new 26.00), t4 (old 31.00, new 29.00), t2 (old 30.00, "
        "new 35.00)."
    ) in tags["mlflow.note.content"]
    assert TAG_PARETO_TRIALS not in parent_tags(rows, None, "miou_hm")  # a single-objective sweep


def test_set_tags_is_false_when_mlflow_is_unreachable(tmp_path):
    storage, name = fake_sweep(tmp_path)
    rec = R.records(storage, name)[0]
    info = TrackingInfo(uri="http://127.0.0.1:9", experiment="sw", sweep="sw")  # port 9: nothing listens
    warned = []
    assert TrialTracker(info, rec, warn=warned.append).set_tags({TAG_PARETO: "true"}) is False
    assert len(warned) == 1 and "unreachable" in warned[0]
