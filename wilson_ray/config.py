"""Typed configuration: dataclasses for data/model/optim/method/run, YAML presets, field-level validation.

Every constant of the method lives here or in a method's ``Params`` dataclass with the paper's value as default
(architecture.md, Conventions). Unknown or mistyped keys are errors naming the key, never silent no-ops.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from wilson_ray.errors import UserError
from wilson_ray.hashing import config_hash
from wilson_ray.protocol import get_task


@dataclass
class DataConfig:
    root: str = "data/voc"  # dataset root: VOC layout, or the COCO root for coco-voc
    voc_root: str | None = None  # coco-voc only: the VOC root for step 1 and the VOC-val evaluation
    task: str = "15-5"
    overlap: bool = False
    no_mask: bool = False  # paper Tab. 5: image labels of old and new classes at weak steps
    crop_size: int = 512
    val_crop_size: int = 512
    eval_mode: Literal["crop", "full"] = "crop"  # method.md §5: resize+center-crop (paper) or full image
    batch_size: int = 24
    val_batch_size: int = 24
    num_workers: int = 2

    def root_of(self, source: str) -> str:
        """Root folder of a data source: ``root``, or ``voc_root`` for VOC data in a COCO task."""
        if source in ("voc", "voc-as-coco") and get_task(self.task).dataset != "voc":
            if not self.voc_root:
                raise UserError(f"data.voc_root: task '{self.task}' reads VOC data ({source}), expected a VOC root")
            return self.voc_root
        return self.root


@dataclass
class ModelConfig:
    backbone: Literal["resnet101", "resnet50", "small", "wideresnet38"] = "resnet101"
    output_stride: Literal[8, 16] = 16
    norm: Literal["bn_leaky", "bn_relu"] = "bn_leaky"
    pretrained: str | None = None  # None, "torchvision", a torchvision-format .pth, or "iabn:<path>"
    small_width: int = 16
    head_channels: int = 256


@dataclass
class OptimConfig:
    epochs: int = 30
    lr: float = 0.01  # backbone learning rate
    lr_head: float = 1.0  # multiplier of lr for head + classifiers (method.md §4)
    lr_localizer: float = 0.01  # absolute learning rate of the localizer (`lr_pseudo`)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    policy: Literal["poly", "warmup"] = "poly"
    power: float = 0.9
    max_iters_per_epoch: int | None = None  # cap of this phase's epochs (short sweep trials); None = full epochs


@dataclass
class RunConfig:
    seed: int = 42
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # auto: bf16 where the device computes it natively, fp16 on a GPU without bf16, fp32 elsewhere (hardware.py)
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"
    channels_last: bool = False  # NHWC activations/weights (and loss gradients), oneDNN/cuDNN's fast layout
    compile: bool = False  # torch.compile of the trainable and the old model
    # Fast path (issue 6; BENCHMARKS.md measures each): `wilson-ray train --fast` turns all of these on with amp=auto.
    frozen_old_model: bool = False  # old model with BN folded into convs, weights in the amp dtype, inference_mode
    valid_taps: bool = False  # ASPP dilated convs as per-tap GEMMs over valid pixels (CPU: avoids oneDNN's slow path)
    fused_sgd: bool = False  # torch.optim.SGD(fused=True): one kernel over all parameters
    reuse_heap: bool = False  # CPU, glibc: freed tensor memory kept in the heap for the next iteration (no refaults)
    # DDP's find_unused_parameters (an extra autograd-graph traversal per iteration); None: only for a method that
    # needs it (WILSON's localizer-only epochs leave the segmentation head without gradients). BENCHMARKS.md §3A.
    ddp_find_unused: bool | None = None
    val_interval: int = 2  # evaluate every N epochs (and always after the last)
    log_interval: int = 10  # iterations between loss logs (the only host syncs)
    progress: bool = True
    fail_on_nonfinite: bool = True


# Every fast-path switch of RunConfig, all on. `--fast` applies the values `hardware.fast_path_plan` measured for
# the device instead (BENCHMARKS.md measures each switch per hardware kind); benchmarks use this full set.
FAST_PATH: dict[str, Any] = {
    "run.amp": "auto",
    "run.channels_last": True,
    "run.frozen_old_model": True,
    "run.valid_taps": True,
    "run.fused_sgd": True,
    "run.reuse_heap": True,
}


# Old keys that were removed, with what replaces them: found in a file or ``--set``, the error says so.
REMOVED_KEYS: dict[str, str] = {
    "run.max_iters_per_epoch": "run.max_iters_per_epoch was removed; use step0.max_iters_per_epoch / "
    "incremental.max_iters_per_epoch",
}

# Sections a preset's ``methods.<name>`` block may override for that method (its own optimisation recipe).
METHOD_OPTIM_SECTIONS = ("step0", "incremental")


@dataclass
class MethodConfig:
    """The method and its typed parameters: ``args`` is an instance of the method's ``Params`` dataclass (a
    mapping is validated into one), so a value keeps its type from the YAML to the loss."""

    name: str = "wilson"
    args: Any = None  # the method's Params instance; None = the paper's defaults

    def __post_init__(self) -> None:
        if self.args is None or isinstance(self.args, dict):
            self.args = method_args(self.name, self.args or {}, "config")
            return
        from wilson_ray.methods import get_method

        if not isinstance(self.args, get_method(self.name).Params):
            raise TypeError(f"MethodConfig: args of method {self.name!r} is a {type(self.args).__name__}")

    @property
    def params(self) -> typing.Mapping[str, Any]:
        """Read-only ``{param: value}`` view of ``args`` (as in the YAML files); change values through config."""
        return types.MappingProxyType(dataclasses.asdict(self.args))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    step0: OptimConfig = field(default_factory=OptimConfig)
    incremental: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=40, lr=0.001, lr_head=10.0, policy="warmup")
    )
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; ``method`` is flattened to ``{name, **params}`` as in the YAML files."""
        d = dataclasses.asdict(self)
        m = d.pop("method")
        d["method"] = {"name": m["name"], **m["args"]}
        return d

    def optim(self, step: int) -> OptimConfig:
        """Optimiser settings of ``step`` (step 0 differs from the incremental steps, method.md §4)."""
        return self.step0 if step == 0 else self.incremental

    def fingerprint(self, *sections: str) -> str:
        """Stable short hash of the given top-level sections (all when none): a cache key."""
        return config_hash(self, sections=sections or None)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Validation: one checker for every typed section (config, search space, sweep settings)


@dataclass(frozen=True)
class ErrorStyle:
    """How a validation error names a field and lists choices. The config's wording (``field 'a.b' is 'x',
    expected 'p' or 'q'``) by default; ``quoted=False`` gives a search-space file's (``a.b is 'x', expected one
    of p, q``); ``item`` names the entries of a keyed mapping (``parameter 'method.alpha': low is ...``)."""

    quoted: bool = True
    item: str | None = None  # e.g. "parameter": prefix "k" -> "parameter 'k': field"

    def join(self, prefix: str, key: Any) -> str:
        if not prefix:
            return str(key)
        return f"{self.item} '{prefix}': {key}" if self.item else f"{prefix}.{key}"

    def name(self, where: str) -> str:
        return f"field '{where}'" if self.quoted else where

    def type_name(self, tp: Any) -> str:
        origin = typing.get_origin(tp)
        if origin is Literal:
            args = typing.get_args(tp)
            if self.quoted:
                return " or ".join(repr(a) for a in args)
            return "one of " + ", ".join(str(a) for a in args)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if float in args:  # an int is accepted for a float: "a number" says both
                args = tuple(a for a in args if a is not int)
            return " or ".join(self.type_name(a) for a in args)
        if tp is type(None):
            return "null"
        if not self.quoted and (origin or tp) in _PLAIN_TYPE_NAMES:
            return _PLAIN_TYPE_NAMES[origin or tp]
        return getattr(tp, "__name__", str(tp))

    def bad(self, source: str, where: str, value: Any, expected: str) -> UserError:
        return UserError(f"{source}: {self.name(where)} is {value!r}, expected {expected}")

    def unknown(self, source: str, prefix: str, key: Any, names: list[str]) -> UserError:
        where = self.join(prefix, key)
        if where in REMOVED_KEYS:
            return UserError(f"{source}: {REMOVED_KEYS[where]}")
        near = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        if self.item and prefix:
            return UserError(
                f"{source}: {self.item} '{prefix}': unknown field '{key}'{hint}, expected {', '.join(names)}"
            )
        if not self.quoted:
            return UserError(f"{source}: unknown key '{where}'{hint}; expected one of {', '.join(names)}")
        section = f"'{prefix}'" if prefix else "the top level"
        return UserError(f"{source}: unknown key '{where}'{hint}; expected a key of {section}: {', '.join(names)}")

    def not_mapping(self, source: str, prefix: str, data: Any) -> UserError:
        if self.quoted:
            return UserError(f"{source}: section '{prefix or '<top>'}' is {type(data).__name__}, expected a mapping")
        if not prefix:
            return UserError(f"{source}: expected a YAML mapping at the top level, found {type(data).__name__}")
        return UserError(f"{source}: '{prefix}' is {data!r}, expected a mapping")


CONFIG_STYLE = ErrorStyle()
_PLAIN_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


def _coerce(value: Any, tp: Any, where: str, source: str, style: ErrorStyle = CONFIG_STYLE) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:
            return from_dict(sections[0], value, source, where, style)  # its own, precise error
        for arg in args:
            try:
                return _coerce(value, arg, where, source, style)
            except UserError:
                continue
        raise style.bad(source, where, value, style.type_name(tp))
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise style.bad(source, where, value, style.type_name(tp))
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (arg, *_) = typing.get_args(tp) or (Any,)
            items = [_coerce(v, arg, f"{where}[{i}]", source, style) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, where, style)
    raise style.bad(source, where, value, style.type_name(tp))


def from_dict(cls: type, data: Any, source: str = "config", prefix: str = "", style: ErrorStyle = CONFIG_STYLE) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys (with a did-you-mean) and wrong types with
    the field's name; ``style`` words the errors (config or search-space file)."""
    if not isinstance(data, dict):
        raise style.not_mapping(source, prefix, data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise style.unknown(source, prefix, key, names)
        kwargs[key] = _coerce(value, hints[key], style.join(prefix, key), source, style)
    return cls(**kwargs)


def method_args(name: str, params: dict[str, Any], source: str = "config", prefix: str = "method") -> Any:
    """The method's ``Params`` dataclass built from ``params`` (unknown or mistyped keys: one-line errors)."""
    from wilson_ray.methods import get_method  # local import: methods import losses/models, not config

    return from_dict(get_method(name).Params, params, source, prefix)


def method_recipe(name: str) -> dict[str, dict[str, Any]]:
    """The ``recipe`` method ``name`` declares beside its ``Params`` (``{section: {OptimConfig field: value}}``),
    checked like a file's sections."""
    from wilson_ray.methods import get_method  # local import, as in method_args

    recipe = get_method(name).recipe
    for sec, sub in recipe.items():
        where = f"recipe.{sec}"
        if sec not in METHOD_OPTIM_SECTIONS:
            raise UserError(
                f"method {name}: recipe section {sec!r}, expected one of {', '.join(METHOD_OPTIM_SECTIONS)}"
            )
        _raise_first(_optim_checks(from_dict(OptimConfig, dict(sub), f"method {name}", where), where), f"method {name}")
    return recipe


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict (YAML layout) into a ``Config``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a YAML mapping at the top level, found {type(data).__name__}")
    data = copy.deepcopy(data)
    method = data.pop("method", {}) or {}
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise UserError(f"{source}: field 'method' is {method!r}, expected a mapping with 'name'")
    name = method.pop("name", MethodConfig.name)
    if not isinstance(name, str):
        raise UserError(f"{source}: field 'method.name' is {name!r}, expected a method name")
    cfg = from_dict(Config, data, source)
    cfg.method = MethodConfig(name=name, args=method_args(name, method, source))
    _check_values(cfg, source)
    return cfg


def _optim_checks(o: OptimConfig, sec: str) -> list[tuple[str, Any, bool, str]]:
    return [
        (f"{sec}.epochs", o.epochs, o.epochs > 0, "a positive integer"),
        (f"{sec}.lr", o.lr, o.lr > 0, "a positive number"),
        (f"{sec}.lr_head", o.lr_head, o.lr_head > 0, "a positive number"),
        (f"{sec}.lr_localizer", o.lr_localizer, o.lr_localizer > 0, "a positive number"),
        (f"{sec}.weight_decay", o.weight_decay, o.weight_decay >= 0, "a number >= 0"),
        (
            f"{sec}.max_iters_per_epoch",
            o.max_iters_per_epoch,
            o.max_iters_per_epoch is None or o.max_iters_per_epoch > 0,
            "a positive integer or null",
        ),
    ]


def _raise_first(checks: list[tuple[str, Any, bool, str]], source: str) -> None:
    for where, value, ok, expected in checks:
        if not ok:
            raise CONFIG_STYLE.bad(source, where, value, expected)


def _check_values(cfg: Config, source: str) -> None:
    """Range checks a type annotation cannot express."""
    checks = [
        ("data.crop_size", cfg.data.crop_size, cfg.data.crop_size > 0, "a positive integer"),
        ("data.batch_size", cfg.data.batch_size, cfg.data.batch_size > 0, "a positive integer"),
        ("data.val_batch_size", cfg.data.val_batch_size, cfg.data.val_batch_size > 0, "a positive integer"),
        ("data.num_workers", cfg.data.num_workers, cfg.data.num_workers >= 0, "an integer >= 0"),
        ("run.val_interval", cfg.run.val_interval, cfg.run.val_interval > 0, "a positive integer"),
        ("run.log_interval", cfg.run.log_interval, cfg.run.log_interval > 0, "a positive integer"),
    ]
    for sec in ("step0", "incremental"):
        checks += _optim_checks(getattr(cfg, sec), sec)
    _raise_first(checks, source)


# ---------------------------------------------------------------------------------------------------------------
# Loading: presets, files, overrides


def preset_names() -> list[str]:
    """Names of the presets shipped in ``wilson_ray/presets``."""
    return sorted(p.name[:-5] for p in resources.files("wilson_ray.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """``yaml.safe_load`` a file with one-line errors naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: not found, expected an existing YAML file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{what} {path}: not valid YAML{at} ({getattr(err, 'problem', err)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path}: not a text file, expected UTF-8 YAML") from None


def load_preset_dict(name: str) -> dict[str, Any]:
    """Raw dict of a shipped preset."""
    if name not in preset_names():
        raise UserError(f"--preset: unknown preset {name!r}, expected one of {', '.join(preset_names())}")
    with resources.as_file(resources.files("wilson_ray.presets") / f"{name}.yaml") as p:
        return read_yaml(p, "preset")


def _laid_over(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` over ``base``: mappings merged key by key (recursively), any other value replaced; a ``method:``
    block of another method replaces the base's (its parameters are not this method's)."""
    out = dict(base)
    for key, value in data.items():
        old = out.get(key)
        if not (isinstance(value, dict) and isinstance(old, dict)):
            out[key] = value
        elif key == "method" and value.get("name", old.get("name")) != old.get("name"):
            out[key] = value
        else:
            out[key] = _laid_over(old, value)
    return out


def extend_preset(data: dict[str, Any], source: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset or config file laid over the preset its ``extends:`` names (which may extend another), before
    validation. The base's ``methods:`` blocks are not inherited: they hold one setting's per-method arguments
    (the file's own are). ``chain``: the presets already on the way here (a preset's own name first)."""
    name = data.get("extends")
    if name is None:
        return data
    data = {k: v for k, v in data.items() if k != "extends"}
    if not isinstance(name, str) or name not in preset_names():
        raise UserError(f"{source}: extends {name!r}, expected a preset: one of {', '.join(preset_names())}")
    if name in chain:
        raise UserError(f"{source}: extends {name!r}, a cycle ({' -> '.join((*chain, name))}), expected a base preset")
    base = load_preset_dict(name)
    if not isinstance(base, dict):
        raise UserError(f"preset {name}: expected a YAML mapping at the top level, found {type(base).__name__}")
    base = extend_preset(base, f"preset {name}", (*chain, name))
    base.pop("methods", None)
    return _laid_over(base, data)


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``a.b.c = value`` in a nested dict, creating sections; the key is validated later."""
    parts = key.split(".")
    if not all(parts):
        raise UserError(f"{source}: key {key!r} is malformed, expected dotted names like 'method.alpha'")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{source}: key {key!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values read as YAML scalars) into a flat dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set: {item!r} is not key=value, expected e.g. method.alpha=0.7")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    method: str | None = None,
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
) -> Config:
    """Resolve preset/config file + ``--method`` + dotted overrides into a validated ``Config``.

    The optimisation sections are laid over each other, each winning over the one before: the defaults
    (``OptimConfig``: WILSON's recipe, method.md §4), the method's own ``recipe`` (declared in its file, e.g. MiB's
    one learning rate for all groups and 30 epochs), the file's ``step0:`` / ``incremental:`` sections (a preset's
    scale, e.g. the demo's short schedule, for every method), the file's ``methods.<name>.step0/incremental`` (one
    method in this file), then ``overrides``.

    A preset may hold ``methods: {name: {params}}`` with per-method best arguments (as Mammoth's best-args YAML);
    the selected method takes its block from there. ``method`` switches the method and drops another method's
    parameters. ``extends: <preset>`` lays the file over that preset first (``extend_preset``).
    """
    if preset and config_file:
        raise UserError("--preset and --config: got both, expected one of them")
    if config_file:
        data, src = read_yaml(config_file, "config"), str(config_file)
    else:
        data, src = load_preset_dict(preset or "demo"), f"preset {preset or 'demo'}"
    if not isinstance(data, dict):
        raise UserError(f"{src}: expected a YAML mapping at the top level, found {type(data).__name__}")
    data = copy.deepcopy(extend_preset(data, src, () if config_file else (preset or "demo",)))
    per_method = data.pop("methods", {}) or {}
    if not isinstance(per_method, dict):
        raise UserError(f"{src}: field 'methods' is {per_method!r}, expected a mapping of method name to params")
    blocks: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for other, block in per_method.items():  # every block is checked, even those not selected now
        if not isinstance(block, dict):
            raise UserError(f"{src}: field 'methods.{other}' is {block!r}, expected a mapping of params")
        recipe = {k: v for k, v in block.items() if k in METHOD_OPTIM_SECTIONS}
        params = {k: v for k, v in block.items() if k not in METHOD_OPTIM_SECTIONS}
        method_args(str(other), params, src)
        for sec, sub in recipe.items():
            where = f"methods.{other}.{sec}"
            _raise_first(_optim_checks(from_dict(OptimConfig, sub, src, where), where), src)
        blocks[str(other)] = params, recipe
    block = data.get("method") or {}
    if isinstance(block, str):
        block = {"name": block}
    name = method or block.get("name", MethodConfig.name)
    params, recipe = blocks.get(name, ({}, {}))
    params = dict(params)
    if block.get("name", name) == name:
        params.update({k: v for k, v in block.items() if k != "name"})
    data["method"] = {"name": name, **params}
    defaults, own = Config(), method_recipe(name)
    for sec in METHOD_OPTIM_SECTIONS:  # the method's recipe over the defaults, under the file's own sections
        base = data.get(sec)
        if base is not None and not isinstance(base, dict):
            continue  # from_dict below names the bad section
        data[sec] = {**dataclasses.asdict(getattr(defaults, sec)), **own.get(sec, {}), **(base or {})}
    for sec, sub in recipe.items():
        base = data.get(sec)
        data[sec] = {**(base if isinstance(base, dict) else {}), **sub}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, source or src)


def dump_config(cfg: Config) -> str:
    """YAML text of a resolved config that ``wilson-ray train --config`` reads back to the same ``Config``."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
