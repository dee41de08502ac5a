import pytest
import yaml

from wilson_ray.config import config_from_dict, dump_config, parse_overrides, preset_names, resolve_config
from wilson_ray.errors import UserError


def test_presets_resolve_and_round_trip():
    assert {"demo", "voc-15-5", "voc-10-10", "coco-voc"} <= set(preset_names())
    for name in preset_names():
        cfg = resolve_config(name)
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_paper_defaults_of_voc_preset():
    cfg = resolve_config("voc-15-5")
    p = cfg.method.params
    assert (p["alpha"], p["temperature"], p["pseudo_epochs"]) == (0.5, 1.0, 5)
    assert (p["cutoff_fg"], p["cutoff_bg"], p["cutoff_low"]) == (0.6, 0.7, 0.2)
    assert (p["focal_gamma"], p["focal_lambda"], p["ngwp_eps"]) == (3.0, 0.01, 1.0)
    assert (cfg.step0.lr, cfg.step0.epochs, cfg.incremental.lr, cfg.incremental.lr_head) == (0.01, 30, 0.001, 10.0)
    assert cfg.incremental.policy == "warmup" and cfg.incremental.epochs == 40
    assert resolve_config("coco-voc").method.params["alpha"] == 0.9


def test_method_switch_takes_per_method_block():
    cfg = resolve_config("voc-15-5", method="ilt")
    assert cfg.method.name == "ilt" and cfg.method.params["lambda_enc"] == 100.0
    cfg = resolve_config("demo", method="mib", overrides={"method.kd_weight": 3})
    assert cfg.method.params == {
        "kd_weight": 3.0,
        "kd_alpha": 1.0,
        "init_balanced": True,
        "memory_size": 0,  # MemoryParams (method.md §9): off unless asked for
        "memory_rule": "class_balanced",
        "memory_ratio": 0.5,
        "memory_weight": 1.0,
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.btach_size": 3}, "unknown key 'data.btach_size' (did you mean 'batch_size'?)"),
        ({"method.alhpa": 0.3}, "unknown key 'method.alhpa'"),
        ({"model.backbone": "vgg"}, "field 'model.backbone' is 'vgg'"),
        ({"data.batch_size": "big"}, "field 'data.batch_size' is 'big', expected int"),
        ({"step0.lr": -1}, "field 'step0.lr' is -1.0, expected a positive number"),
        ({"method.name": "sota"}, "unknown method 'sota'"),
    ],
)
def test_bad_fields_name_the_key(overrides, message):
    with pytest.raises(UserError) as err:
        resolve_config("demo", overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line"):
        resolve_config(config_file=bad)
    with pytest.raises(UserError, match="not found"):
        resolve_config(config_file=tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config("nope")
    wrong_block = tmp_path / "m.yaml"
    wrong_block.write_text("methods:\n  mib: {kd_wieght: 3}\n")
    with pytest.raises(UserError, match="unknown key 'method.kd_wieght'"):
        resolve_config(config_file=wrong_block)


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=0.5", "c=true", "d=[1, 2]", "e=text"]) == {
        "a.b": 0.5,
        "c": True,
        "d": [1, 2],
        "e": "text",
    }
    with pytest.raises(UserError, match="not key=value"):
        parse_overrides(["alpha"])


def test_fingerprint_changes_with_config():
    a = resolve_config("demo")
    b = resolve_config("demo", overrides={"method.alpha": 0.7})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint("data", "model") == b.fingerprint("data", "model")


def test_method_args_are_typed_from_yaml_and_round_trip():
    """The resolved config carries the method's Params instance (not a dict to re-validate later); ``to_dict``
    gives the YAML layout back, and a mapping given to MethodConfig is validated into the same instance."""
    from wilson_ray.config import MethodConfig
    from wilson_ray.methods.mib import MiBParams
    from wilson_ray.methods.wilson import WilsonParams

    cfg = resolve_config("demo", overrides={"method.alpha": 1, "method.pamr_dilations": [1, 2]})
    assert isinstance(cfg.method.args, WilsonParams)
    assert cfg.method.args.alpha == 1.0 and isinstance(cfg.method.args.alpha, float)  # int coerced once, here
    assert cfg.method.args.pamr_dilations == [1, 2]
    assert cfg.to_dict()["method"]["alpha"] == 1.0 and cfg.to_dict()["method"]["name"] == "wilson"
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError):
        cfg.method.params["alpha"] = 0.3  # a read-only view: values change through config, not behind it
    m = MethodConfig("mib", {"kd_weight": 3})
    assert m.args == MiBParams(kd_weight=3.0) and MethodConfig("mib").args == MiBParams()
    with pytest.raises(UserError, match="unknown key 'method.kd_wieght'"):
        MethodConfig("mib", {"kd_wieght": 3})
    with pytest.raises(TypeError, match="args of method 'mib' is a WilsonParams"):
        MethodConfig("mib", WilsonParams())


def test_per_method_recipe_overrides_wilsons_incremental_settings():
    """Issue 11, fidelity fix 2: MiB/LwF/ILT train step >= 1 with MiB's recipe (one LR for all groups, 30
    epochs, lr 0.001, poly), not WILSON's (40 epochs, head LR x10, warmup); WILSON keeps its own; --set wins."""
    for preset in ("voc-15-5", "voc-10-10", "coco-voc"):
        wilson = resolve_config(preset)
        assert (wilson.incremental.lr_head, wilson.incremental.policy) == (10.0, "warmup")
        for method in ("mib", "lwf", "ilt"):
            inc = resolve_config(preset, method=method).incremental
            assert (inc.epochs, inc.lr, inc.lr_head, inc.policy) == (30, 0.001, 1.0, "poly"), (preset, method)
            assert inc.lr_localizer == wilson.incremental.lr_localizer  # not in the block: the file's value
            assert resolve_config(preset, method=method).step0 == wilson.step0  # step 0 is shared
    cfg = resolve_config("voc-15-5", method="mib", overrides={"incremental.epochs": 4})
    assert (cfg.incremental.epochs, cfg.incremental.lr_head) == (4, 1.0)
    # Issue 27 fix 3: finetune has MiB's plain recipe too (test_finetune_has_mibs_plain_recipe_in_the_voc_presets).
    assert resolve_config("voc-15-5", method="cam_online").incremental.epochs == 40  # no recipe: the defaults'


def test_finetune_has_mibs_plain_recipe_in_the_voc_presets():
    """Issue 27, fidelity fix 3: the paper's FT rows come from MiB's/RECALL's tables, run with MiB's code and flags
    (method.md §3.10): step t 30 epochs, lr 0.001, one LR for all groups, poly 0.9; step 0 lr 0.01, 30 epochs,
    poly. Not WILSON's step-1 recipe (40 epochs, head lr x10, warmup)."""
    for preset in ("voc-15-5", "voc-10-10"):
        cfg = resolve_config(preset, method="finetune")
        inc, s0 = cfg.incremental, cfg.step0
        assert (inc.epochs, inc.lr, inc.lr_head, inc.policy, inc.power) == (30, 0.001, 1.0, "poly", 0.9), preset
        assert (inc.momentum, inc.nesterov, inc.weight_decay) == (0.9, True, 1e-4)
        assert (s0.epochs, s0.lr, s0.lr_head, s0.policy) == (30, 0.01, 1.0, "poly")
        assert cfg.step0 == resolve_config(preset).step0  # step 0 is the shared one
        wilson = resolve_config(preset).incremental
        assert (wilson.epochs, wilson.lr_head, wilson.policy) == (40, 10.0, "warmup")


def test_recipe_is_declared_beside_params_and_presets_only_hold_differences():
    """Issue 25: a method's recipe lives in its file (``Method.recipe``), laid over the defaults and under a file's
    sections; the presets no longer repeat it (nor the defaults)."""
    from wilson_ray.config import load_preset_dict
    from wilson_ray.methods import METHODS
    from wilson_ray.methods.mib import MIB_RECIPE

    assert {m for m, cls in METHODS.items() if cls.recipe is MIB_RECIPE} == {
        "mib",
        "lwf",
        "ilt",
        "plop",
        "sdr",
        "finetune",
    }
    assert METHODS["recall"].recipe["incremental"]["nesterov"] is False and METHODS["wilson"].recipe == {}
    for name in ("voc-15-5", "voc-10-10", "coco-voc"):
        data = load_preset_dict(name)
        blocks = [data.get("incremental") or {}] + [
            b.get("incremental") or {} for b in (data.get("methods") or {}).values()
        ]
        assert "step0" not in data and all("lr_head" not in b for b in blocks), name  # no recipe repeated
    # A file's section wins over the recipe where it says something; the recipe fills the rest.
    demo = resolve_config("demo", method="recall").incremental
    assert (demo.epochs, demo.lr, demo.lr_head, demo.nesterov) == (10, 0.005, 10.0, True)
    coco = resolve_config("coco-voc", method="mib").incremental
    assert (coco.epochs, coco.lr, coco.lr_head, coco.policy) == (30, 0.001, 1.0, "poly")
    assert resolve_config("coco-voc", method="recall").incremental.epochs == 10  # its block in that preset


def test_a_partial_section_in_a_config_file_keeps_the_other_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("incremental: {epochs: 3}\nmethod: {name: mib}\n")
    inc = resolve_config(config_file=path).incremental
    assert (inc.epochs, inc.lr, inc.lr_head, inc.policy) == (3, 0.001, 1.0, "poly")  # MiB's recipe under the file
    path.write_text("incremental: {epochs: 3}\n")
    inc = resolve_config(config_file=path).incremental
    assert (inc.epochs, inc.lr, inc.lr_head, inc.policy) == (3, 0.001, 10.0, "warmup")  # WILSON's defaults


def test_methods_are_discovered_from_their_modules():
    from wilson_ray.methods import METHODS

    assert sorted(METHODS) == sorted(
        [
            "cam",
            "cam_online",
            "eps",
            "finetune",
            "ilt",
            "joint",
            "lwf",
            "mib",
            "plop",
            "recall",
            "sdr",
            "seam",
            "ss",
            "wilson",
        ]
    )
    assert (
        METHODS["mib"].__module__ == "wilson_ray.methods.mib"
        and METHODS["seam"].__module__ == "wilson_ray.methods.wsss"
    )


def test_per_method_recipe_errors_name_the_block(tmp_path):
    for text, message in [
        (
            "methods:\n  mib: {incremental: {epoch: 3}}\n",
            "unknown key 'methods.mib.incremental.epoch' (did you mean 'epochs'?)",
        ),
        (
            "methods:\n  lwf: {incremental: {lr: -1}}\n",
            "field 'methods.lwf.incremental.lr' is -1.0, expected a positive",
        ),
        ("methods:\n  ilt: {step0: {policy: cosine}}\n", "field 'methods.ilt.step0.policy' is 'cosine'"),
    ]:
        path = tmp_path / "m.yaml"
        path.write_text(text)
        with pytest.raises(UserError) as err:
            resolve_config(config_file=path)  # checked even though wilson is the selected method
        assert message in str(err.value) and str(path) in str(err.value)


def test_removed_run_max_iters_per_epoch_says_what_replaces_it(tmp_path):
    with pytest.raises(UserError) as err:
        resolve_config("demo", overrides={"run.max_iters_per_epoch": 2})
    assert (
        "run.max_iters_per_epoch was removed; use step0.max_iters_per_epoch / incremental.max_iters_per_epoch"
        in str(err.value)
    )
    cfg = resolve_config("demo", overrides={"step0.max_iters_per_epoch": 2, "incremental.max_iters_per_epoch": 3})
    assert (cfg.step0.max_iters_per_epoch, cfg.incremental.max_iters_per_epoch) == (2, 3)
    with pytest.raises(UserError, match="field 'step0.max_iters_per_epoch' is 0, expected a positive integer"):
        resolve_config("demo", overrides={"step0.max_iters_per_epoch": 0})


def test_amp_auto_in_fast_path_and_gpu_presets():
    from wilson_ray.config import FAST_PATH

    assert FAST_PATH["run.amp"] == "auto"
    assert resolve_config("demo").run.amp == "none" and config_from_dict({}).run.amp == "none"  # plain runs
    for preset in ("voc-15-5", "voc-10-10", "coco-voc"):
        assert resolve_config(preset).run.amp == "auto"
    assert resolve_config("demo", overrides={"run.amp": "auto"}).run.amp == "auto"
    with pytest.raises(UserError, match="field 'run.amp' is 'fp8', expected 'none' or 'bf16' or 'fp16' or 'auto"):
        resolve_config("demo", overrides={"run.amp": "fp8"})


def test_config_hash_is_the_one_recipe():
    """One hash for configs (and for any nested dict, e.g. the cache's key parts or a sweep's definition):
    sha256 of sorted-key JSON, truncated; sections select, drop removes fields that do not shape the result."""
    import hashlib
    import json

    from wilson_ray.hashing import config_hash

    cfg = resolve_config("demo")
    d = cfg.to_dict()
    assert config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(cfg) == config_hash(d) == cfg.fingerprint()
    assert config_hash(cfg, sections=["data", "model"]) == cfg.fingerprint("data", "model")
    assert len(config_hash(d, length=20)) == 20
    other = resolve_config("demo", overrides={"run.progress": False})
    assert config_hash(other) != config_hash(cfg)
    assert config_hash(other, drop={"run": ["progress"]}) == config_hash(cfg, drop={"run": ["progress"]})
    assert config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1})


def test_a_methods_recipe_is_checked_like_a_file_section(monkeypatch):
    from wilson_ray.methods.mib import MiB

    monkeypatch.setattr(MiB, "recipe", {"incremental": {"epoch": 3}})
    with pytest.raises(
        UserError, match=r"method mib: unknown key 'recipe.incremental.epoch' \(did you mean 'epochs'\?\)"
    ):
        resolve_config("demo", method="mib")
    monkeypatch.setattr(MiB, "recipe", {"incremental": {"lr": -1.0}})
    with pytest.raises(UserError, match="method mib: field 'recipe.incremental.lr' is -1.0, expected a positive"):
        resolve_config("demo", method="mib")
    monkeypatch.setattr(MiB, "recipe", {"step1": {"lr": 0.1}})
    with pytest.raises(UserError, match="method mib: recipe section 'step1', expected one of step0, incremental"):
        resolve_config("demo", method="mib")


def _leaves(data: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in data.items():
        path = (*prefix, key)
        out += _leaves(value, path) if isinstance(value, dict) and value else [path]
    return out


def _without(data: dict, path: tuple) -> dict:
    import copy

    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def test_no_preset_sets_a_value_it_would_get_without_it(tmp_path):
    """Issue 25: a preset holds only what differs from the defaults, each method's recipe and the preset it extends:
    leaving out any one of its values changes the resolved config of some method (a ``step0``/``incremental``
    value can matter to one method only, the one whose recipe it overrides; a ``methods.<name>`` value to <name>)."""
    from importlib import resources

    from wilson_ray.config import METHOD_OPTIM_SECTIONS
    from wilson_ray.methods import METHODS

    redundant = []
    for name in preset_names():
        with resources.as_file(resources.files("wilson_ray.presets") / f"{name}.yaml") as path:
            own = yaml.safe_load(path.read_text(encoding="utf-8"))
        for leaf in _leaves(own):
            if leaf == ("extends",):
                continue
            if leaf[0] == "methods":
                methods = [leaf[1]]
            elif leaf[0] in METHOD_OPTIM_SECTIONS:
                methods = [None, *METHODS]
            else:  # data/model/run/method: no recipe touches them
                methods = [None]
            variant = tmp_path / f"{name}.yaml"
            variant.write_text(yaml.safe_dump(_without(own, leaf)), encoding="utf-8")
            if all(resolve_config(name, method=m) == resolve_config(config_file=variant, method=m) for m in methods):
                redundant.append(f"{name}: {'.'.join(map(str, leaf))}")
    assert not redundant, "preset values equal to what the preset resolves to without them:\n" + "\n".join(redundant)


def test_a_preset_extends_another(tmp_path, monkeypatch):
    """``extends: <preset>`` lays a preset or config file over that preset (recursively) before validation; the
    base's ``methods:`` blocks stay its own; an unknown base or a cycle is a one-line error naming the file."""
    import wilson_ray.config as config

    coco = resolve_config("demo-coco-voc")
    demo = resolve_config("demo")
    assert (coco.data.task, coco.data.root, coco.data.crop_size) == ("coco-voc", "data/synthetic-coco", 96)
    assert (coco.model, coco.step0, coco.incremental, coco.run) == (demo.model, demo.step0, demo.incremental, demo.run)
    cam = resolve_config("demo-coco-voc", method="cam").method.params
    assert cam == config_from_dict({"method": "cam"}).method.params
    assert resolve_config("demo", method="cam").method.params["epochs"] == 12  # demo's own block
    ten = resolve_config("voc-10-10")
    assert ten.data.task == "10-10" and ten.run.amp == "auto" and ten.model.pretrained == "torchvision"
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: voc-10-10\ndata: {batch_size: 8}\nmethod: {name: mib, kd_weight: 3}\n")
    cfg = resolve_config(config_file=mine)
    assert (cfg.data.task, cfg.data.batch_size, cfg.data.num_workers, cfg.method.name) == ("10-10", 8, 4, "mib")
    assert cfg.method.params["kd_weight"] == 3.0
    mine.write_text("extends: voc-15-6\n")
    with pytest.raises(UserError) as err:
        resolve_config(config_file=mine)
    assert str(err.value).startswith(f"{mine}: extends 'voc-15-6', expected a preset: one of ")
    assert "\n" not in str(err.value)
    loops = {"demo": {"extends": "voc-15-5"}, "voc-15-5": {"extends": "voc-10-10"}, "voc-10-10": {"extends": "demo"}}
    monkeypatch.setattr(config, "load_preset_dict", lambda name: dict(loops[name]))
    with pytest.raises(UserError) as err:
        resolve_config("demo")
    assert str(err.value) == (
        "preset voc-10-10: extends 'demo', a cycle (demo -> voc-15-5 -> voc-10-10 -> demo), expected a base preset"
    )
