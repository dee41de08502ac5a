"""Search spaces as YAML: the fixed base of a sweep plus one distribution per swept config key.

Pure Python (no ray import): ``load_search_space`` validates a file in a plain process and every error is a
one-line ``UserError`` naming the file and the parameter. Layout (see ``search_spaces/demo.yaml``)::

    name: demo-wilson-15-5          # default sweep name (``--name`` overrides)
    base:                           # the fixed part: what ``wilson-ray train`` would resolve
      preset: demo                  # or  config: path/to/resolved.yaml  (relative to this file)
      method: wilson
      set: {incremental.epochs: 4}  # dotted overrides, exactly like --set
    task: 15-5                      # -> data.task      (optional; the preset's otherwise)
    overlap: false                  # -> data.overlap   (optional)
    step: 1                         # the incremental step every trial trains (earlier steps come from the cache)
    objective: {metric: miou_all, mode: max, multi_objective: false}
    search: {num_samples: 8, seed: 0, evaluate_defaults: true, sampler: tpe}   # sampler: tpe | random | grid
                                    # grid: grid_points per numeric parameter (default 3), num_samples = grid size
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_t: null}
    resources: {workers_per_trial: 2, cpus_per_worker: 1, gpus_per_worker: 0, max_failures: 2,
                trial_max_failures: 1, trainer: auto}   # trainer: auto | torch | direct
                                    # auto: a TorchTrainer when workers_per_trial > 1, else the trial's own process
    parameters:
      method.alpha: {distribution: uniform, low: 0.0, high: 1.0}
      method.lambda_cls: {distribution: loguniform, low: 0.1, high: 10.0}
      incremental.epochs: {distribution: int, low: 20, high: 40}
      method.lambda_enc: {distribution: choice, values: [0.0, 0.1, 1.0, 10.0]}

Every parameter key must be a leaf of the resolved config (``method.*`` keys are checked against the chosen
method's parameters); its bounds/values are type- and range-checked by resolving the config with them. The
paper's defaults (the base config's values, or an explicit ``default:``) are the first trial when
``search.evaluate_defaults`` is true (Optuna ``points_to_evaluate``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wilson_ray.config import Config, read_yaml, resolve_config
from wilson_ray.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
METRICS = ("miou_all", "miou_old", "miou_new", "miou_all_mib", "iou_background", "loss/total")
MULTI_OBJECTIVE = ("miou_old", "miou_new")

_TOP_KEYS = ("name", "base", "task", "overlap", "step", "objective", "search", "scheduler", "resources",
             "parameters", "description")
_BASE_KEYS = ("preset", "config", "method", "set")
_OBJECTIVE_KEYS = ("metric", "mode", "multi_objective")
_SEARCH_KEYS = ("num_samples", "seed", "evaluate_defaults", "sampler", "grid_points")
SAMPLERS = ("tpe", "random", "grid")
_SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
_RESOURCE_KEYS = ("workers_per_trial", "cpus_per_worker", "gpus_per_worker", "max_failures", "trial_max_failures",
                  "trainer")
TRAINERS = ("auto", "torch", "direct")
_PARAM_KEYS = ("distribution", "low", "high", "values", "step", "log", "default")
_UNSWEEPABLE = ("method.name", "data.task", "data.root", "data.voc_root", "data.overlap", "run.device")


@dataclass
class Param:
    """One swept config key and its distribution."""

    key: str
    distribution: str
    low: float | int | None = None
    high: float | int | None = None
    values: list[Any] | None = None
    step: float | int | None = None
    log: bool = False
    default: Any = None

    def describe(self) -> str:
        if self.distribution == "choice":
            return f"choice{self.values}"
        q = f", step {self.step}" if self.step else ""
        return f"{self.distribution}[{self.low}, {self.high}{q}]"

    def contains(self, value: Any) -> bool:
        if self.distribution == "choice":
            return value in (self.values or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.distribution == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclass
class SearchSpace:
    """A validated search space; ``resolve(params)`` gives the full ``Config`` of one trial."""

    path: Path
    name: str
    preset: str | None
    config_file: str | None
    method: str | None
    overrides: dict[str, Any]
    step: int
    metric: str = "miou_all"
    mode: str = "max"
    multi_objective: bool = False
    num_samples: int = 8
    seed: int = 0
    evaluate_defaults: bool = True
    sampler: str = "tpe"  # Optuna sampler: tpe | random | grid
    grid_points: int = 3  # grid sampler: points per numeric parameter (low, middle, high; log-spaced if log)
    scheduler: dict[str, Any] | None = field(default_factory=lambda: {"type": "asha"})
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    trial_max_failures: int = 1
    trainer: str = "auto"  # torch: a TorchTrainer per trial; direct: in the trial process (1 worker); auto
    params: list[Param] = field(default_factory=list)

    # -- configs ---------------------------------------------------------------------------------------------
    def resolve(self, values: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Config:
        """The full config of a trial: base + ``extra`` overrides (CLI) + swept ``values``."""
        overrides = {**self.overrides, **(extra or {}), **(values or {})}
        return resolve_config(self.preset, self.config_file, self.method, overrides,
                              source=f"search space {self.path}")

    def base_config(self, extra: dict[str, Any] | None = None) -> Config:
        return self.resolve(None, extra)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def defaults(self) -> dict[str, Any]:
        """The paper's point: every swept key at its default (Optuna ``points_to_evaluate``)."""
        return {p.key: p.default for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """Grid of the ``grid`` sampler: a choice's values; ``grid_points`` evenly spaced numbers over
        [low, high] (geometrically for log-uniform, rounded and deduplicated for int)."""
        out: dict[str, list[Any]] = {}
        n = self.grid_points
        for p in self.params:
            if p.distribution == "choice":
                out[p.key] = list(p.values or [])
                continue
            lo, hi = float(p.low), float(p.high)
            if p.distribution == "loguniform" or p.log:
                pts = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)] if n > 1 else [math.sqrt(lo * hi)]
            else:
                pts = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [(lo + hi) / 2]
            if p.distribution == "int":
                pts = sorted({int(round(v)) for v in pts})
            out[p.key] = pts
        return out

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def metrics(self) -> list[str]:
        """Objective metric(s) for the searcher: one, or old-vs-new mIoU when multi-objective."""
        return list(MULTI_OBJECTIVE) if self.multi_objective else [self.metric]

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """Hash of what defines the sweep's trials (base config, parameters, step, objective)."""
        payload = {
            "base": self.base_config(extra).to_dict(),
            "params": [vars(p) for p in self.params],
            "step": self.step,
            "objective": [self.metric, self.mode, self.multi_objective],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_optuna(self) -> dict[str, Any]:
        """Optuna distributions keyed by dotted config key (for ``OptunaSearch(space=...)``)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for p in self.params:
            if p.distribution == "uniform":
                out[p.key] = FloatDistribution(float(p.low), float(p.high), step=p.step)
            elif p.distribution == "loguniform":
                out[p.key] = FloatDistribution(float(p.low), float(p.high), log=True)
            elif p.distribution == "int":
                out[p.key] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[p.key] = CategoricalDistribution(list(p.values or []))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Loading and validation


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


def _mapping(value: Any, where: str, src: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{src}: '{where}' is {value!r}, expected a mapping")
    for key in value:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"{src}: unknown key '{where + '.' if where else ''}{key}'{hint}; "
                            f"expected one of {', '.join(allowed)}")
    return value


def _number(value: Any, where: str, src: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not float(value).is_integer()) or not math.isfinite(value):
        expected = "an integer" if kind is int else "a finite number"
        raise UserError(f"{src}: {where} is {value!r}, expected {expected}")
    return int(value) if kind is int else value


def _positive(value: Any, where: str, src: str, kind: type = int, allow_zero: bool = False) -> Any:
    value = _number(value, where, src, kind)
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{src}: {where} is {value!r}, expected {'>= 0' if allow_zero else 'a positive number'}")
    return value


def _parse_param(key: Any, spec: Any, src: str) -> Param:
    where = f"parameter '{key}'"
    if not isinstance(key, str) or "." not in key:
        raise UserError(f"{src}: {where} is not a dotted config key, expected e.g. 'method.alpha'")
    if isinstance(spec, list):
        spec = {"distribution": "choice", "values": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{src}: {where} is {spec!r}, expected a mapping with 'distribution' and bounds")
    for k in spec:
        if k not in _PARAM_KEYS:
            raise UserError(f"{src}: {where}: unknown field '{k}', expected {', '.join(_PARAM_KEYS)}")
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        near = difflib.get_close_matches(str(dist), DISTRIBUTIONS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(f"{src}: {where}: distribution {dist!r} is unknown{hint}, expected one of "
                        f"{', '.join(DISTRIBUTIONS)}")
    p = Param(key=key, distribution=dist, log=bool(spec.get("log", False)), default=spec.get("default"))
    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{src}: {where}: 'values' is {values!r}, expected a non-empty list")
        for v in values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise UserError(f"{src}: {where}: choice value {v!r} is not a scalar (number, string, bool, null)")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"{src}: {where}: 'values' {values!r} has duplicates")
        for k in ("low", "high", "step"):
            if k in spec:
                raise UserError(f"{src}: {where}: '{k}' is not used by a choice, expected only 'values'")
        p.values = list(values)
        return p
    if "values" in spec:
        raise UserError(f"{src}: {where}: 'values' is only for distribution: choice, expected low/high")
    for k in ("low", "high"):
        if k not in spec:
            raise UserError(f"{src}: {where}: missing '{k}', expected {dist} bounds low and high")
    kind = int if dist == "int" else float
    low = _number(spec["low"], f"{where}: low", src, kind)
    high = _number(spec["high"], f"{where}: high", src, kind)
    if low > high:
        raise UserError(f"{src}: {where}: low {low} > high {high}, expected low <= high")
    if dist == "loguniform" and low <= 0:
        raise UserError(f"{src}: {where}: loguniform low is {low}, expected low > 0 (log of a non-positive bound)")
    if p.log and dist == "int" and low <= 0:
        raise UserError(f"{src}: {where}: log int low is {low}, expected low > 0")
    if p.log and dist != "int":
        raise UserError(f"{src}: {where}: 'log' is for distribution: int, use distribution: loguniform")
    if spec.get("step") is not None:
        if dist == "loguniform":
            raise UserError(f"{src}: {where}: 'step' is not supported by loguniform, expected uniform or int")
        p.step = _positive(spec["step"], f"{where}: step", src, kind)
    p.low, p.high = low, high
    return p


def _check_key(p: Param, flat: dict[str, Any], method: str, src: str) -> None:
    if p.key in _UNSWEEPABLE:
        raise UserError(f"{src}: parameter '{p.key}' cannot be swept (it changes what a trial is), expected a "
                        f"hyperparameter such as method.alpha; run one sweep per {p.key.split('.')[-1]}")
    if p.key not in flat:
        sections = {k for k in flat if k.startswith(p.key + ".")}
        if sections:
            raise UserError(f"{src}: parameter '{p.key}' is a config section, expected one of its keys, e.g. "
                            f"'{sorted(sections)[0]}'")
        near = difflib.get_close_matches(p.key, list(flat), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        what = f"of method '{method}'" if p.key.startswith("method.") else "in the config"
        raise UserError(f"{src}: unknown parameter '{p.key}': not a key {what}{hint}; expected a dotted key of "
                        "the resolved config, e.g. method.alpha")


def load_search_space(path: str | Path, extra: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML; ``extra`` are CLI overrides (``--set``, ``--data-root``)."""
    path = Path(path)
    data = read_yaml(path, "search space")
    src = f"search space {path}"
    if not isinstance(data, dict):
        raise UserError(f"{src}: expected a YAML mapping at the top level, found {type(data).__name__}")
    _mapping(data, "", src, _TOP_KEYS)

    base = _mapping(data.get("base"), "base", src, _BASE_KEYS)
    preset, config_file = base.get("preset"), base.get("config")
    if preset is not None and config_file is not None:
        raise UserError(f"{src}: base has both 'preset' and 'config', expected one of them")
    if config_file is not None:
        cf = Path(str(config_file)).expanduser()
        if not cf.is_absolute():
            beside = path.parent / cf
            cf = beside if beside.is_file() or not cf.is_file() else cf
        config_file = str(cf.resolve())
    if not isinstance(base.get("set") or {}, dict):
        raise UserError(f"{src}: base.set is {base.get('set')!r}, expected a mapping of dotted key to value")
    overrides = dict(base.get("set") or {})
    if "task" in data:
        overrides["data.task"] = str(data["task"])
    if "overlap" in data:
        overrides["data.overlap"] = data["overlap"]
    method = base.get("method")
    if method is not None and not isinstance(method, str):
        raise UserError(f"{src}: base.method is {method!r}, expected a method name")

    if "step" not in data:
        raise UserError(f"{src}: missing 'step', expected the incremental step to sweep (e.g. step: 1)")
    step = _positive(data["step"], "step", src, int, allow_zero=True)

    space = SearchSpace(path=path, name=str(data.get("name") or path.stem), preset=preset, config_file=config_file,
                        method=method, overrides=overrides, step=step)
    if not space.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"{src}: name {space.name!r} has characters other than letters, digits, '-', '_', '.'")

    obj = _mapping(data.get("objective"), "objective", src, _OBJECTIVE_KEYS)
    space.metric = obj.get("metric", space.metric)
    if space.metric not in METRICS:
        raise UserError(f"{src}: objective.metric is {space.metric!r}, expected one of {', '.join(METRICS)}")
    space.mode = obj.get("mode", "min" if space.metric.startswith("loss") else "max")
    if space.mode not in ("min", "max"):
        raise UserError(f"{src}: objective.mode is {space.mode!r}, expected min or max")
    space.multi_objective = bool(obj.get("multi_objective", False))

    search = _mapping(data.get("search"), "search", src, _SEARCH_KEYS)
    space.num_samples = _positive(search.get("num_samples", space.num_samples), "search.num_samples", src)
    space.seed = _number(search.get("seed", space.seed), "search.seed", src, int)
    space.evaluate_defaults = bool(search.get("evaluate_defaults", True))
    space.sampler = search.get("sampler", space.sampler)
    if space.sampler not in SAMPLERS:
        raise UserError(f"{src}: search.sampler is {space.sampler!r}, expected one of {', '.join(SAMPLERS)}")
    space.grid_points = _positive(search.get("grid_points", space.grid_points), "search.grid_points", src)

    if "scheduler" in data and data["scheduler"] is None:
        space.scheduler = None
    else:
        sched = _mapping(data.get("scheduler"), "scheduler", src, _SCHEDULER_KEYS)
        kind = sched.get("type", "asha")
        if kind in (None, "none", "fifo"):
            space.scheduler = None
        elif kind != "asha":
            raise UserError(f"{src}: scheduler.type is {kind!r}, expected asha or none")
        else:
            space.scheduler = {
                "type": "asha",
                "grace_period": _positive(sched.get("grace_period", 1), "scheduler.grace_period", src),
                "reduction_factor": _number(sched.get("reduction_factor", 2), "scheduler.reduction_factor", src),
                "max_t": (_positive(sched["max_t"], "scheduler.max_t", src) if sched.get("max_t") is not None
                          else None),
            }
            if space.scheduler["reduction_factor"] <= 1:
                raise UserError(f"{src}: scheduler.reduction_factor is {space.scheduler['reduction_factor']}, "
                                "expected a number > 1")

    res = _mapping(data.get("resources"), "resources", src, _RESOURCE_KEYS)
    space.workers_per_trial = _positive(res.get("workers_per_trial", 1), "resources.workers_per_trial", src)
    space.cpus_per_worker = _positive(res.get("cpus_per_worker", 1), "resources.cpus_per_worker", src, float,
                                      allow_zero=True)
    space.gpus_per_worker = _positive(res.get("gpus_per_worker", 0), "resources.gpus_per_worker", src, float,
                                      allow_zero=True)
    space.max_failures = _number(res.get("max_failures", 2), "resources.max_failures", src, int)
    space.trial_max_failures = _number(res.get("trial_max_failures", 1), "resources.trial_max_failures", src, int)
    space.trainer = res.get("trainer", "auto")
    if space.trainer not in TRAINERS:
        raise UserError(f"{src}: resources.trainer is {space.trainer!r}, expected one of {', '.join(TRAINERS)}")

    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{src}: 'parameters' is {params!r}, expected a mapping of config key to distribution")
    space.params = [_parse_param(k, v, src) for k, v in params.items()]

    # -- against the resolved config ----------------------------------------------------------------------------
    try:
        base_cfg = space.base_config(extra)
    except UserError as err:
        msg = str(err)
        raise UserError(msg if msg.startswith(src) else f"{src}: base: {msg}") from None
    flat = flatten(base_cfg.to_dict())
    for p in space.params:
        _check_key(p, flat, base_cfg.method.name, src)
        if p.default is None:
            p.default = flat[p.key]
        if isinstance(p.default, bool) and p.distribution != "choice":
            raise UserError(f"{src}: parameter '{p.key}' is a boolean, expected distribution: choice")
        if not p.contains(p.default):
            if space.evaluate_defaults:
                raise UserError(f"{src}: parameter '{p.key}': default {p.default!r} is outside {p.describe()}, "
                                "expected the range to include it (or set 'default:' / evaluate_defaults: false)")
        if p.distribution == "int" and isinstance(p.default, float) and p.default.is_integer():
            p.default = int(p.default)
    _check_values(space, extra, src)
    if space.step > 0 and base_cfg.optim(space.step) is None:  # pragma: no cover - defensive
        raise UserError(f"{src}: step {space.step}: no optimiser settings")
    return space


def _check_values(space: SearchSpace, extra: dict[str, Any] | None, src: str) -> None:
    """Resolve the config at the corners of the space so a bound of the wrong type/range fails now, naming it."""
    probes: list[tuple[str, dict[str, Any]]] = []
    ranged = [p for p in space.params if p.distribution != "choice"]
    if ranged:
        probes.append(("low", {p.key: p.low for p in ranged}))
        probes.append(("high", {p.key: p.high for p in ranged}))
    for p in space.params:
        for v in p.values or []:
            probes.append((f"value {v!r}", {p.key: v}))
    for what, values in probes:
        try:
            space.resolve(values, extra)
        except UserError as err:
            msg = str(err)
            key = next((k for k in values if f"'{k}'" in msg), None) or next(iter(values))
            raise UserError(f"{src}: parameter '{key}' {what}: {msg.replace(src + ': ', '')}") from None


def trial_overrides(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """The swept values out of a Tune trial config (keys are the dotted config keys)."""
    out = {}
    for p in space.params:
        if p.key not in config:
            raise KeyError(p.key)
        v = config[p.key]
        out[p.key] = int(v) if p.distribution == "int" else v
    return out


def copy_space(space: SearchSpace, **changes: Any) -> SearchSpace:
    new = copy.deepcopy(space)
    for k, v in changes.items():
        setattr(new, k, v)
    return new
