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
    assert cfg.method.params == {"kd_weight": 3.0, "kd_temperature": 1.0, "init_balanced": True}


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
    assert parse_overrides(["a.b=0.5", "c=true", "d=[1, 2]", "e=text"]) == {"a.b": 0.5, "c": True, "d": [1, 2], "e": "text"}
    with pytest.raises(UserError, match="not key=value"):
        parse_overrides(["alpha"])


def test_fingerprint_changes_with_config():
    a = resolve_config("demo")
    b = resolve_config("demo", overrides={"method.alpha": 0.7})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint("data", "model") == b.fingerprint("data", "model")
