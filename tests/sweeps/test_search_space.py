"""Search-space YAML: the shipped spaces load, and every bad input is a one-line UserError naming the file and
the parameter (issue 5: not YAML, unknown parameter, low > high, log-uniform range <= 0, unknown distribution)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wilson_ray.config import flatten
from wilson_ray.errors import UserError
from wilson_ray.orchestration.search_space import load_search_space, trial_overrides

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

BASE = {
    "name": "t",
    "base": {"preset": "demo", "method": "wilson"},
    "task": "15-5",
    "step": 1,
    "parameters": {
        "method.alpha": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        "method.lambda_cls": {"distribution": "loguniform", "low": 0.1, "high": 10.0},
        "incremental.epochs": {"distribution": "int", "low": 2, "high": 12},
        "method.lambda_enc": {"distribution": "choice", "values": [0.0, 1.0, 10.0]},
    },
}


def write(tmp_path: Path, data, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def with_param(key: str, spec) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["parameters"] = {key: spec}
    return data


@pytest.mark.parametrize("name", ["demo", "voc-15-5", "voc-10-10", "coco-voc", "mib"])
def test_shipped_spaces_load(name):
    space = load_search_space(SPACES / f"{name}.yaml")
    assert space.step == 1 and space.params
    defaults = space.defaults()
    assert all(p.contains(defaults[p.key]) for p in space.params)  # the paper's point lies inside the space
    cfg = space.resolve(defaults)
    flat = flatten(cfg.to_dict())
    assert all(flat[k] == v for k, v in defaults.items())


def test_demo_space_sweeps_wilson_losses_alpha_temperature():
    space = load_search_space(SPACES / "demo.yaml")
    assert {
        "method.lambda_cls",
        "method.lambda_loc",
        "method.lambda_sss",
        "method.lambda_enc",
        "method.lambda_seg",
        "method.alpha",
        "method.temperature",
    } <= set(space.keys)
    assert space.base_config().data.task == "15-5" and space.base_config().method.name == "wilson"
    assert space.workers_per_trial == 2 and space.num_samples >= 8


def test_mib_space_uses_mib_params():
    space = load_search_space(SPACES / "mib.yaml")
    assert space.base_config().method.name == "mib"
    assert {"method.kd_weight", "method.kd_alpha"} <= set(space.keys)
    assert space.multi_objective and space.metrics() == ["miou_old", "miou_new"]


def test_optuna_distributions_and_overrides(tmp_path):
    space = load_search_space(write(tmp_path, BASE))
    dists = space.to_optuna()
    assert dists["method.lambda_cls"].log and dists["incremental.epochs"].low == 2
    assert dists["method.lambda_enc"].choices == (0.0, 1.0, 10.0)
    over = trial_overrides(
        space, {"method.alpha": 0.3, "method.lambda_cls": 2.0, "incremental.epochs": 4.0, "method.lambda_enc": 1.0}
    )
    assert over["incremental.epochs"] == 4 and isinstance(over["incremental.epochs"], int)
    assert space.resolve(over).incremental.epochs == 4
    assert space.fingerprint() == load_search_space(write(tmp_path, BASE, "again.yaml")).fingerprint()


def expect_error(tmp_path, data, *fragments):
    path = write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_search_space(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_not_yaml(tmp_path):
    expect_error(tmp_path, "parameters: [unclosed\n  - {", "not valid YAML")


def test_not_a_mapping(tmp_path):
    expect_error(tmp_path, "- a\n- b\n", "mapping")


def test_unknown_parameter(tmp_path):
    msg = expect_error(
        tmp_path,
        with_param("method.lambda_clss", {"distribution": "uniform", "low": 0, "high": 1}),
        "method.lambda_clss",
        "unknown parameter",
    )
    assert "lambda_cls" in msg  # did-you-mean


def test_unknown_parameter_of_other_method(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.kd_weight", {"distribution": "uniform", "low": 1, "high": 2}),
        "method.kd_weight",
        "wilson",
    )


def test_section_is_not_a_parameter(tmp_path):
    expect_error(tmp_path, with_param("data.batch", {"distribution": "int", "low": 1, "high": 2}), "data.batch")
    expect_error(tmp_path, with_param("method.name", {"distribution": "choice", "values": ["mib"]}), "method.name")


def test_low_greater_than_high(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "low": 0.9, "high": 0.1}),
        "method.alpha",
        "low 0.9 > high 0.1",
    )


def test_loguniform_nonpositive(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.lambda_cls", {"distribution": "loguniform", "low": 0, "high": 1}),
        "method.lambda_cls",
        "loguniform",
        "> 0",
    )


def test_unknown_distribution(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "normal", "low": 0, "high": 1}),
        "method.alpha",
        "'normal'",
        "uniform, loguniform, int, choice",
    )


def test_int_bounds_must_be_integers(tmp_path):
    expect_error(
        tmp_path,
        with_param("incremental.epochs", {"distribution": "int", "low": 1.5, "high": 4}),
        "incremental.epochs",
        "integer",
    )


def test_bound_of_wrong_type_for_the_key(tmp_path):
    # run.seed is an int field: a float bound fails when the config is resolved at the corners
    expect_error(tmp_path, with_param("run.seed", {"distribution": "uniform", "low": 0.5, "high": 3.5}), "run.seed")


def test_bound_outside_config_range(tmp_path):
    expect_error(
        tmp_path, with_param("incremental.lr", {"distribution": "uniform", "low": 0.0, "high": 0.1}), "incremental.lr"
    )


def test_empty_choice_and_missing_bounds(tmp_path):
    expect_error(tmp_path, with_param("method.alpha", {"distribution": "choice", "values": []}), "non-empty")
    expect_error(tmp_path, with_param("method.alpha", {"distribution": "uniform", "low": 0}), "missing 'high'")


def test_default_outside_range(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "low": 0.6, "high": 0.9}),
        "method.alpha",
        "default 0.5",
    )


def test_unknown_top_level_key_and_missing_step(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["paramters"] = data.pop("parameters")
    expect_error(tmp_path, data, "paramters", "parameters")
    data = yaml.safe_load(yaml.safe_dump(BASE))
    del data["step"]
    expect_error(tmp_path, data, "step")


def test_bad_base(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["base"]["preset"] = "demoo"
    expect_error(tmp_path, data, "demoo")
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["base"]["set"] = {"incremental.epoch": 3}
    expect_error(tmp_path, data, "incremental.epoch")


def test_bad_metric_and_scheduler(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["objective"] = {"metric": "accuracy"}
    expect_error(tmp_path, data, "objective.metric", "miou_all")
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["scheduler"] = {"type": "asha", "reduction_factor": 1}
    expect_error(tmp_path, data, "reduction_factor")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_search_space(tmp_path / "nope.yaml")


def test_cli_rejects_bad_space_with_exit_2(tmp_path, capsys):
    from wilson_ray.cli import main

    path = write(tmp_path, with_param("method.alpha", {"distribution": "uniform", "low": 1, "high": 0}))
    assert main(["sweep", "--space", str(path), "--storage", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wilson-ray: error:") and "method.alpha" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # nothing written


def test_cli_rejects_unknown_tracking_scheme(tmp_path, capsys):
    from wilson_ray.cli import main

    rc = main(
        [
            "sweep",
            "--space",
            str(SPACES / "demo.yaml"),
            "--storage",
            str(tmp_path / "s"),
            "--tracking-uri",
            "ftp://example.org/mlflow",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--tracking-uri" in err and "'ftp'" in err and not (tmp_path / "s").exists()


def test_cli_rejects_unwritable_storage(tmp_path, capsys):
    from wilson_ray.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["sweep", "--space", str(SPACES / "demo.yaml"), "--storage", str(blocker / "sub"), "--no-mlflow"])
    assert rc == 2
    assert "--storage" in capsys.readouterr().err


def test_cluster_check_refuses_trials_that_never_fit(monkeypatch):
    """More workers or GPUs per trial than the cluster has: a UserError up front, not a trial pending forever."""
    import ray

    from wilson_ray.orchestration import cluster

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e10})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert cluster.check_cluster(2, 1.0, 0.0, num_samples=8) == 1
    assert cluster.check_cluster(1, 1.0, 0.0, num_samples=8) == 2
    assert cluster.check_cluster(1, 1.0, 0.0, num_samples=1) == 1
    with pytest.raises(UserError, match="--workers-per-trial 3") as err:
        cluster.check_cluster(3, 1.0, 0.0, num_samples=8)
    assert "2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="--gpus-per-worker 1 x --workers-per-trial 2.*0 GPUs"):
        cluster.check_cluster(2, 1.0, 1.0, num_samples=8)


def _searcher(space, db: str, name: str, metric, mode):
    import optuna

    from wilson_ray.orchestration.compat import WilsonOptunaSearch

    return WilsonOptunaSearch(
        space=space.to_optuna(),
        metric=metric,
        mode=mode,
        points_to_evaluate=[space.defaults()],
        study_name=name,
        sampler=optuna.samplers.TPESampler(seed=0),
        storage=optuna.storages.RDBStorage(db),
    )


def test_optuna_search_multi_objective_and_paper_defaults_first(tmp_path):
    import optuna

    space = load_search_space(SPACES / "mib.yaml")
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = _searcher(space, db, "mo", ["miou_old", "miou_new"], ["max", "max"])
    first = s.suggest("t1")
    assert first == space.defaults()  # points_to_evaluate: the paper's values
    second = s.suggest("t2")
    assert all(p.contains(second[p.key]) for p in space.params)
    s.on_trial_complete("t1", {"miou_old": 70.0, "miou_new": 40.0})
    study = optuna.load_study(study_name="mo", storage=db)  # what optuna-dashboard opens
    assert len(study.directions) == 2
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].values == [70.0, 40.0]


def test_restored_searcher_reuses_orphaned_optuna_trial(tmp_path):
    """The driver died after Optuna `ask`ed a trial but before Tune saved it: after the restore, the next new
    Tune trial takes over that Optuna trial, so the study has exactly one Optuna trial per Tune trial."""
    import optuna

    from wilson_ray.orchestration.compat import WilsonOptunaSearch

    space = load_search_space(SPACES / "demo.yaml")
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = _searcher(space, db, "orph", "miou_all", "max")
    s.suggest("a")
    s.save(str(tmp_path / "state.pkl"))  # Tune's last experiment checkpoint knows only trial "a"
    lost = s.suggest("b")  # asked, then the driver is killed
    restored = WilsonOptunaSearch.__new__(WilsonOptunaSearch)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("c") == lost
    restored.on_trial_complete("c", {"miou_all": 5.0})
    restored.suggest("d")
    study = optuna.load_study(study_name="orph", storage=db)
    assert len(study.trials) == 3  # a, b==c, d: no orphan, no duplicate
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 1


def test_best_without_sweep_is_a_user_error(tmp_path, capsys):
    from wilson_ray.cli import main

    assert main(["best", "--storage", str(tmp_path), "--name", "nope", "--out", str(tmp_path / "b.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and err.count("\n") == 1
    assert not (tmp_path / "b.yaml").exists()


def test_grid_and_random_samplers_cover_the_space(tmp_path):
    """search.sampler grid: every point of SearchSpace.grid exactly once (log-spaced for log-uniform, int rounded,
    choice values as given); random: seeded, inside the bounds."""
    import optuna

    from wilson_ray.orchestration.compat import WilsonOptunaSearch
    from wilson_ray.orchestration.tune_driver import optuna_sampler

    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["search"] = {"sampler": "grid", "grid_points": 3}
    data["parameters"] = {
        "method.temperature": {"distribution": "loguniform", "low": 0.25, "high": 4.0},
        "method.alpha": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        "method.lambda_enc": {"distribution": "choice", "values": [1.0, 10.0]},
    }
    space = load_search_space(write(tmp_path, data))
    grid = space.grid()
    assert grid["method.temperature"] == pytest.approx([0.25, 1.0, 4.0])
    assert grid["method.alpha"] == pytest.approx([0.0, 0.5, 1.0])
    assert space.grid_size() == 18
    s = WilsonOptunaSearch(
        space=space.to_optuna(),
        metric="miou_all",
        mode="max",
        study_name="g",
        sampler=optuna_sampler(space, None),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'g.db'}"),
    )
    seen = set()
    for i in range(18):
        point = flatten(s.suggest(f"t{i}"))
        seen.add((round(point["method.temperature"], 6), point["method.alpha"], point["method.lambda_enc"]))
        s.on_trial_complete(f"t{i}", {"miou_all": float(i)})
    assert len(seen) == 18

    data["search"] = {"sampler": "random", "seed": 3}
    space = load_search_space(write(tmp_path, data))
    draws = []
    for name in ("r1", "r2"):
        r = WilsonOptunaSearch(
            space=space.to_optuna(),
            metric="miou_all",
            mode="max",
            study_name=name,
            sampler=optuna_sampler(space, None),
            storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}"),
        )
        draws.append(flatten(r.suggest("t0")))
    assert draws[0] == draws[1]  # seeded
    assert all(p.contains(draws[0][p.key]) for p in space.params)

    data["search"] = {"sampler": "anneal"}
    with pytest.raises(UserError, match="search.sampler is 'anneal', expected one of tpe, random, grid"):
        load_search_space(write(tmp_path, data))


def test_trainer_choice(tmp_path):
    from wilson_ray.orchestration.cluster import trainer_kind

    assert load_search_space(write(tmp_path, BASE)).trainer == "auto"
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["resources"] = {"workers_per_trial": 1, "trainer": "direct"}
    assert load_search_space(write(tmp_path, data)).trainer == "direct"
    data["resources"]["trainer"] = "process"
    expect_error(tmp_path, data, "resources.trainer", "'process'", "auto, torch, direct")
    # auto: one worker trains in the trial's own process, more use a TorchTrainer
    assert [trainer_kind("auto", 1), trainer_kind("auto", 2), trainer_kind("torch", 1)] == ["direct", "torch", "torch"]
    with pytest.raises(UserError, match=r"--trainer direct: .* --workers-per-trial is 4"):
        trainer_kind("direct", 4)


def test_trial_processes_are_reused_for_direct_trials_only(monkeypatch):
    """Tune's reuse_actors: a direct trial's process runs the next trial (no new process, no re-imports); a
    TorchTrainer trial's is never reused (its stopped trial's workers would hold the CPUs); the env overrides."""
    from wilson_ray.orchestration.tune_driver import reuse_trial_processes

    monkeypatch.delenv("WILSON_RAY_REUSE_ACTORS", raising=False)
    assert [reuse_trial_processes("direct"), reuse_trial_processes("torch")] == [True, False]
    monkeypatch.setenv("WILSON_RAY_REUSE_ACTORS", "0")
    assert reuse_trial_processes("direct") is False
    monkeypatch.setenv("WILSON_RAY_REUSE_ACTORS", "1")
    assert reuse_trial_processes("torch") is True


def test_sections_are_typed_dataclasses(tmp_path):
    """The file's sections come out as the dataclasses config.from_dict validated (no hand-read dicts)."""
    from wilson_ray.orchestration.search_space import Objective, Resources, Scheduler, Search

    data = yaml.safe_load(yaml.safe_dump(BASE))
    data.update(
        objective={"metric": "loss/total"},
        search={"num_samples": 5, "sampler": "random"},
        scheduler={"grace_period": 2, "max_t": 6},
        resources={"cpus_per_worker": 2, "trainer": "direct"},
    )
    space = load_search_space(write(tmp_path, data))
    assert space.objective == Objective(metric="loss/total", mode="min")  # a loss is minimised unless told
    assert space.search == Search(num_samples=5, sampler="random")
    assert space.scheduler == Scheduler(grace_period=2, max_t=6, reduction_factor=2.0)
    assert space.resources == Resources(cpus_per_worker=2.0, trainer="direct")
    assert isinstance(space.resources.cpus_per_worker, float)
    assert (space.metric, space.num_samples, space.trainer) == ("loss/total", 5, "direct")  # flat reads
    assert space.scheduler.grace_period == 2 and space.scheduler.max_t == 6
    for off in (None, {"type": "none"}, {"type": "fifo"}):
        data["scheduler"] = off
        assert load_search_space(write(tmp_path, data)).scheduler is None
    data["objective"] = None  # an empty section: its defaults
    assert load_search_space(write(tmp_path, data)).objective == Objective(metric="miou_all", mode="max")


@pytest.mark.parametrize(
    "section, fragments",
    [
        (
            {"search": {"num_sample": 3}},
            ["unknown key 'search.num_sample' (did you mean 'num_samples'?); expected one of num_samples, seed"],
        ),
        ({"search": {"num_samples": "many"}}, ["search.num_samples is 'many', expected an integer"]),
        ({"search": {"num_samples": 0}}, ["search.num_samples is 0, expected a positive number"]),
        ({"objective": 5}, ["'objective' is 5, expected a mapping"]),
        ({"scheduler": {"type": "hyperband"}}, ["scheduler.type is 'hyperband', expected one of asha, none, fifo"]),
        ({"scheduler": {"max_t": 0}}, ["scheduler.max_t is 0, expected a positive number"]),
        ({"resources": {"cpus_per_worker": -1}}, ["resources.cpus_per_worker is -1.0, expected >= 0"]),
        ({"step": -1}, ["step is -1, expected >= 0"]),
        ({"base": {"preset": "demo", "sett": {}}}, ["unknown key 'base.sett' (did you mean 'set'?)"]),
    ],
)
def test_section_errors_name_the_field(tmp_path, section, fragments):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data.update(section)
    expect_error(tmp_path, data, *fragments)


def test_parameter_fields_are_checked_like_config_fields(tmp_path):
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "lo": 0, "high": 1}),
        "parameter 'method.alpha': unknown field 'lo' (did you mean 'low'?), expected distribution, low",
    )
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "low": "a", "high": 1}),
        "parameter 'method.alpha': low is 'a', expected a number",
    )
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "low": 0, "high": 1, "log": 1}),
        "parameter 'method.alpha': log is 1, expected true or false",
    )


def test_removed_key_is_named_in_a_space(tmp_path):
    msg = "run.max_iters_per_epoch was removed; use step0.max_iters_per_epoch / incremental.max_iters_per_epoch"
    expect_error(tmp_path, with_param("run.max_iters_per_epoch", {"distribution": "int", "low": 1, "high": 3}), msg)
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["base"]["set"] = {"run.max_iters_per_epoch": 3}
    expect_error(tmp_path, data, msg)


def test_fingerprint_follows_what_defines_the_trials(tmp_path):
    """Same trials -> same fingerprint (resources and sampler do not change a trial); another bound, another
    base value or another objective -> another one."""
    first = load_search_space(write(tmp_path, BASE)).fingerprint()
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["resources"] = {"workers_per_trial": 3}
    data["search"] = {"sampler": "random"}
    assert load_search_space(write(tmp_path, data)).fingerprint() == first
    for change in (
        lambda d: d["parameters"]["method.alpha"].update(high=0.9),
        lambda d: d["base"].update(set={"incremental.epochs": 3}),
        lambda d: d.update(objective={"metric": "miou_new"}),
    ):
        data = yaml.safe_load(yaml.safe_dump(BASE))
        change(data)
        assert load_search_space(write(tmp_path, data)).fingerprint() != first


def test_pareto_confirmation_needs_a_multi_objective_sweep(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["confirm"] = {"top_k": 2, "seeds": 2, "pareto": True}
    expect_error(tmp_path, data, "confirm.pareto is true, expected objective.multi_objective: true")
    data["objective"] = {"multi_objective": True}
    assert load_search_space(write(tmp_path, data)).confirm.pareto


def test_a_parameter_is_one_typed_class_from_its_entry(tmp_path):
    """The entry as written and the validated parameter are one ``Param``; its key is the entry's name in
    ``parameters:``, not a field an entry may set."""
    from wilson_ray.orchestration.search_space import Param

    space = load_search_space(write(tmp_path, BASE))
    epochs = next(p for p in space.params if p.key == "incremental.epochs")
    assert isinstance(epochs, Param) and (epochs.low, epochs.high, epochs.default) == (2, 12, 10)
    assert isinstance(epochs.low, int) and epochs.contains(10) and not epochs.contains(10.5)
    expect_error(
        tmp_path,
        with_param("method.alpha", {"distribution": "uniform", "low": 0, "high": 1, "key": "method.beta"}),
        "parameter 'method.alpha': unknown field 'key'",
    )
