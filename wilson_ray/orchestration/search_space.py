"""Search spaces as YAML: the fixed base of a sweep plus one distribution per swept config key.

Pure Python (no ray import): ``load_search_space`` validates a file in a plain process and every error is a
one-line ``UserError`` naming the file and the parameter. The file's sections are dataclasses (``SpaceFile``,
``Base``, ``Objective``, ``Search``, ``Scheduler``, ``Resources``, ``Param``) checked by the same
``config.from_dict`` as a config file, once, here; the sweep reads them typed.
Layout (see ``search_spaces/demo.yaml``)::

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
    confirm: {top_k: 2, seeds: 3, include_default: true, pareto: false}   # optional: the seed confirmation
                                    # stage after the search (orchestration/confirm.py)
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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from wilson_ray.config import (
    REMOVED_KEYS,
    Config,
    ErrorStyle,
    flatten,
    from_dict,
    read_yaml,
    resolve_config,
)
from wilson_ray.errors import UserError
from wilson_ray.hashing import config_hash

Metric = Literal["miou_all", "miou_old", "miou_new", "miou_all_mib", "miou_hm", "iou_background", "loss/total"]
Distribution = Literal["uniform", "loguniform", "int", "choice"]
Sampler = Literal["tpe", "random", "grid"]
Trainer = Literal["auto", "torch", "direct"]
METRICS = get_args(Metric)
DISTRIBUTIONS = get_args(Distribution)
SAMPLERS = get_args(Sampler)
TRAINERS = get_args(Trainer)
MULTI_OBJECTIVE = ("miou_old", "miou_new")
_UNSWEEPABLE = ("method.name", "data.task", "data.root", "data.voc_root", "data.overlap", "run.device")

# A search-space file words its errors ``objective.metric is 'x', expected one of ...`` (no "field '...'"), and a
# parameter's ``parameter 'method.alpha': low is ...``; the checking itself is config.from_dict's.
FILE_STYLE = ErrorStyle(quoted=False)
PARAM_STYLE = ErrorStyle(quoted=False, item="parameter")


# ---------------------------------------------------------------------------------------------------------------
# The file's sections, as typed dataclasses (validated by config.from_dict)


@dataclass
class Base:
    """``base:`` the fixed part of every trial, resolved like ``wilson-ray train``."""

    preset: str | None = None
    config: str | None = None  # a config YAML, relative to the space file
    method: str | None = None
    set: dict[str, Any] | None = None  # dotted overrides, exactly like --set


@dataclass
class Objective:
    metric: Metric = "miou_all"
    mode: Literal["min", "max"] | None = None  # None: min for a loss, max otherwise
    multi_objective: bool = False  # Optuna on (miou_old, miou_new) jointly; ASHA keeps ``metric``


@dataclass
class Search:
    num_samples: int = 8
    seed: int = 0
    evaluate_defaults: bool = True  # the paper's point is the first trial (Optuna points_to_evaluate)
    sampler: Sampler = "tpe"
    grid_points: int = 3  # grid sampler: points per numeric parameter (low, middle, high; log-spaced if log)


@dataclass
class Scheduler:
    """ASHA's settings (``scheduler: null`` or ``type: none`` means no early stopping)."""

    type: Literal["asha", "none", "fifo"] | None = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None  # None: the trial's epochs


@dataclass
class Resources:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2  # Train: worker crashes a trial survives
    trial_max_failures: int = 1  # Tune: trial-driver crashes
    trainer: Trainer = "auto"  # torch: a TorchTrainer per trial; direct: in the trial process (1 worker); auto
    previous_step_workers: int = 0  # > 1: the earlier steps train once on a TorchTrainer of that many workers


@dataclass
class Confirm:
    """``confirm:`` after the search, re-run the ``top_k`` best trials' values and the paper-default point with
    ``seeds`` fresh training seeds each (run.seed + 1 .. run.seed + seeds: the search's own seed is the one the
    best trials were selected on), as ordinary Tune trials; the summary reports mean ± std and a 95 % interval
    per configuration and Welch's t-test of the best against the default (``wilson_ray.stats``)."""

    top_k: int = 2
    seeds: int = 3
    include_default: bool = True
    pareto: bool = False  # multi-objective sweeps: confirm the members of the old/new Pareto front instead


@dataclass
class SpaceFile:
    """A search-space YAML file's top level."""

    name: str | None = None
    description: str | None = None
    base: Base = field(default_factory=Base)
    task: str | None = None  # -> data.task
    overlap: bool | None = None  # -> data.overlap
    step: int | None = None  # required; checked by hand for its message
    objective: Objective = field(default_factory=Objective)
    search: Search = field(default_factory=Search)
    scheduler: Scheduler | None = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    parameters: Any = None  # {dotted key: Param mapping or list}; checked below for its message
    confirm: Confirm | None = None


# ---------------------------------------------------------------------------------------------------------------
# The validated space


@dataclass
class Param:
    """One swept config key and its distribution: an entry of ``parameters:`` as written (a list is shorthand for
    ``distribution: choice``), typed by ``config.from_dict``, then checked and normalised in place by
    ``_parse_param`` (bounds of an int distribution as ints) and ``load_search_space`` (``default`` from the base
    config when not written)."""

    distribution: Any = None  # checked by hand: its error names the parameter and suggests the nearest
    low: int | float | None = None
    high: int | float | None = None
    values: list[Any] | None = None
    step: int | float | None = None
    log: bool = False
    default: Any = None
    # The dotted config key, the entry's name in ``parameters:`` (not a field of the entry: from_dict rejects it)
    key: str = field(default="", init=False)

    def describe(self) -> str:
        """``uniform[0.0, 1.0]`` / ``choice[...]``: the distribution in one short string."""
        if self.distribution == "choice":
            return f"choice{self.values}"
        q = f", step {self.step}" if self.step else ""
        return f"{self.distribution}[{self.low}, {self.high}{q}]"

    def contains(self, value: Any) -> bool:
        """True if ``value`` can be drawn from this distribution."""
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
    objective: Objective = field(default_factory=Objective)
    search: Search = field(default_factory=Search)
    scheduler: Scheduler | None = field(default_factory=Scheduler)  # None: no early stopping
    resources: Resources = field(default_factory=Resources)
    params: list[Param] = field(default_factory=list)
    confirm: Confirm | None = None  # the seed confirmation stage after the search (None: none)
    _resolved: dict[str, Config] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # trials get the space without the driver's resolved configs
        return {**self.__dict__, "_resolved": {}}

    # -- the sections' fields, read flat ----------------------------------------------------------------------
    metric = property(lambda self: self.objective.metric)
    mode = property(lambda self: self.objective.mode)
    multi_objective = property(lambda self: self.objective.multi_objective)
    num_samples = property(lambda self: self.search.num_samples)
    seed = property(lambda self: self.search.seed)
    evaluate_defaults = property(lambda self: self.search.evaluate_defaults)
    sampler = property(lambda self: self.search.sampler)
    grid_points = property(lambda self: self.search.grid_points)
    workers_per_trial = property(lambda self: self.resources.workers_per_trial)
    cpus_per_worker = property(lambda self: self.resources.cpus_per_worker)
    gpus_per_worker = property(lambda self: self.resources.gpus_per_worker)
    max_failures = property(lambda self: self.resources.max_failures)
    trial_max_failures = property(lambda self: self.resources.trial_max_failures)
    trainer = property(lambda self: self.resources.trainer)

    # -- configs ---------------------------------------------------------------------------------------------
    def resolve(self, values: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Config:
        """The full config of a trial: base + ``extra`` overrides (CLI) + swept ``values``."""
        overrides = {**self.overrides, **(extra or {}), **(values or {})}
        # The driver asks for the same few configs many times (the base, the corners checked at load, the
        # probes of the previous step's cache key, the fingerprint): each distinct one is resolved once. A copy
        # goes out because callers may adjust their config (Config is a plain dataclass).
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self._resolved:
            self._resolved[key] = resolve_config(
                self.preset, self.config_file, self.method, overrides, source=f"search space {self.path}"
            )
        return copy.deepcopy(self._resolved[key])

    def base_config(self, extra: dict[str, Any] | None = None) -> Config:
        """The config every trial starts from (no swept value applied)."""
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
        n = self.search.grid_points
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
        """Number of points of ``grid()``."""
        return math.prod(len(v) for v in self.grid().values())

    def metrics(self) -> list[str]:
        """Objective metric(s) for the searcher: one, or old-vs-new mIoU when multi-objective."""
        return list(MULTI_OBJECTIVE) if self.objective.multi_objective else [self.objective.metric]

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """Hash of what defines the sweep's trials (base config, parameters, step, objective)."""
        return config_hash(
            {
                "base": self.base_config(extra).to_dict(),
                "params": [vars(p) for p in self.params],
                "step": self.step,
                "objective": [self.objective.metric, self.objective.mode, self.objective.multi_objective],
            }
        )

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


def _number(value: Any, where: str, src: str, kind: type = float) -> Any:
    """A finite number (an integral one for ``kind`` int, returned as int); bounds keep their YAML type."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
        or not math.isfinite(value)
    ):
        expected = "an integer" if kind is int else "a finite number"
        raise UserError(f"{src}: {where} is {value!r}, expected {expected}")
    return int(value) if kind is int else value


def _ranges(src: str, checks: list[tuple[str, Any, bool, str]]) -> None:
    for where, value, ok, expected in checks:
        if not ok:
            raise FILE_STYLE.bad(src, where, value, expected)


def _parse_param(key: Any, spec: Any, src: str) -> Param:
    where = f"parameter '{key}'"
    if not isinstance(key, str) or "." not in key:
        raise UserError(f"{src}: {where} is not a dotted config key, expected e.g. 'method.alpha'")
    if isinstance(spec, list):
        spec = {"distribution": "choice", "values": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{src}: {where} is {spec!r}, expected a mapping with 'distribution' and bounds")
    p: Param = from_dict(Param, spec, src, key, PARAM_STYLE)
    p.key = key
    dist = p.distribution
    if dist not in DISTRIBUTIONS:
        near = difflib.get_close_matches(str(dist), DISTRIBUTIONS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(
            f"{src}: {where}: distribution {dist!r} is unknown{hint}, expected one of {', '.join(DISTRIBUTIONS)}"
        )
    if dist == "choice":
        values = p.values
        if not values:
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
        if spec.get(k) is None:
            raise UserError(f"{src}: {where}: missing '{k}', expected {dist} bounds low and high")
    kind = int if dist == "int" else float
    low = _number(p.low, f"{where}: low", src, kind)
    high = _number(p.high, f"{where}: high", src, kind)
    if low > high:
        raise UserError(f"{src}: {where}: low {low} > high {high}, expected low <= high")
    if dist == "loguniform" and low <= 0:
        raise UserError(f"{src}: {where}: loguniform low is {low}, expected low > 0 (log of a non-positive bound)")
    if p.log and dist == "int" and low <= 0:
        raise UserError(f"{src}: {where}: log int low is {low}, expected low > 0")
    if p.log and dist != "int":
        raise UserError(f"{src}: {where}: 'log' is for distribution: int, use distribution: loguniform")
    if p.step is not None:
        if dist == "loguniform":
            raise UserError(f"{src}: {where}: 'step' is not supported by loguniform, expected uniform or int")
        p.step = _number(p.step, f"{where}: step", src, kind)
        if p.step <= 0:
            raise UserError(f"{src}: {where}: step is {p.step!r}, expected a positive number")
    p.low, p.high = low, high
    return p


def _check_key(p: Param, flat: dict[str, Any], method: str, src: str) -> None:
    if p.key in _UNSWEEPABLE:
        raise UserError(
            f"{src}: parameter '{p.key}' cannot be swept (it changes what a trial is), expected a "
            f"hyperparameter such as method.alpha; run one sweep per {p.key.split('.')[-1]}"
        )
    if p.key in REMOVED_KEYS:
        raise UserError(f"{src}: parameter '{p.key}': {REMOVED_KEYS[p.key]}")
    if p.key not in flat:
        sections = {k for k in flat if k.startswith(p.key + ".")}
        if sections:
            raise UserError(
                f"{src}: parameter '{p.key}' is a config section, expected one of its keys, e.g. "
                f"'{sorted(sections)[0]}'"
            )
        near = difflib.get_close_matches(p.key, list(flat), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        what = f"of method '{method}'" if p.key.startswith("method.") else "in the config"
        raise UserError(
            f"{src}: unknown parameter '{p.key}': not a key {what}{hint}; expected a dotted key of "
            "the resolved config, e.g. method.alpha"
        )


def parse_space(data: Any, path: Path) -> SearchSpace:
    """Validate a search space's YAML mapping (``path`` names it in errors and anchors ``base.config``); the
    sections are typed by ``config.from_dict``, then the cross-field rules below. Not yet checked against the
    resolved config: ``load_search_space`` does that."""
    src = f"search space {path}"
    if isinstance(data, dict):
        # An empty section (``objective:`` with nothing under it) means its defaults; ``scheduler: null`` is none.
        data = {
            k: ({} if v is None and k in ("base", "objective", "search", "resources") else v) for k, v in data.items()
        }
    if isinstance(data, dict) and "seed_spread" in data:
        raise UserError(
            f"{src}: 'seed_spread' (hand-typed seed values) was removed, expected 'confirm: {{top_k: 2, seeds: 3}}' "
            "so the sweep measures the seed spread itself"
        )
    f: SpaceFile = from_dict(SpaceFile, data, src, "", FILE_STYLE)
    base = f.base
    if base.preset is not None and base.config is not None:
        raise UserError(f"{src}: base has both 'preset' and 'config', expected one of them")
    config_file = base.config
    if config_file is not None:
        cf = Path(config_file).expanduser()
        if not cf.is_absolute():
            beside = path.parent / cf
            cf = beside if beside.is_file() or not cf.is_file() else cf
        config_file = str(cf.resolve())
    overrides = dict(base.set or {})
    if f.task is not None:
        overrides["data.task"] = f.task
    if "overlap" in data:
        overrides["data.overlap"] = f.overlap
    if f.step is None:
        raise UserError(f"{src}: missing 'step', expected the incremental step to sweep (e.g. step: 1)")

    name = f.name or path.stem
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"{src}: name {name!r} has characters other than letters, digits, '-', '_', '.'")
    obj = f.objective
    if obj.mode is None:
        obj.mode = "min" if obj.metric.startswith("loss") else "max"
    sched = f.scheduler
    if sched is not None and sched.type in (None, "none", "fifo"):
        sched = None
    checks = [
        ("step", f.step, f.step >= 0, ">= 0"),
        ("search.num_samples", f.search.num_samples, f.search.num_samples > 0, "a positive number"),
        ("search.grid_points", f.search.grid_points, f.search.grid_points > 0, "a positive number"),
        (
            "resources.workers_per_trial",
            f.resources.workers_per_trial,
            f.resources.workers_per_trial > 0,
            "a positive number",
        ),
    ]
    for res in ("cpus_per_worker", "gpus_per_worker"):
        v = getattr(f.resources, res)
        checks.append((f"resources.{res}", v, math.isfinite(v) and v >= 0, ">= 0"))
    if sched is not None:
        checks += [
            ("scheduler.grace_period", sched.grace_period, sched.grace_period > 0, "a positive number"),
            ("scheduler.max_t", sched.max_t, sched.max_t is None or sched.max_t > 0, "a positive number"),
            (
                "scheduler.reduction_factor",
                sched.reduction_factor,
                math.isfinite(sched.reduction_factor) and sched.reduction_factor > 1,
                "a number > 1",
            ),
        ]
    if f.confirm is not None:
        checks += [
            ("confirm.top_k", f.confirm.top_k, f.confirm.top_k >= 1, "a positive number"),
            ("confirm.seeds", f.confirm.seeds, f.confirm.seeds >= 2, ">= 2 (a spread needs two seeds)"),
        ]
    _ranges(src, checks)
    if f.confirm is not None and f.confirm.pareto and not obj.multi_objective:
        raise UserError(
            f"{src}: confirm.pareto is true, expected objective.multi_objective: true (the Pareto front is of "
            "miou_old and miou_new) or pareto: false"
        )
    if not isinstance(f.parameters, dict) or not f.parameters:
        raise UserError(f"{src}: 'parameters' is {f.parameters!r}, expected a mapping of config key to distribution")
    return SearchSpace(
        path=path,
        name=name,
        preset=base.preset,
        config_file=config_file,
        method=base.method,
        overrides=overrides,
        step=f.step,
        objective=obj,
        search=f.search,
        scheduler=sched,
        resources=f.resources,
        confirm=f.confirm,
        params=[_parse_param(k, v, src) for k, v in f.parameters.items()],
    )


def load_search_space(path: str | Path, extra: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML; ``extra`` are CLI overrides (``--set``, ``--data-root``)."""
    path = Path(path)
    src = f"search space {path}"
    space = parse_space(read_yaml(path, "search space"), path)
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
            if space.search.evaluate_defaults:
                raise UserError(
                    f"{src}: parameter '{p.key}': default {p.default!r} is outside {p.describe()}, "
                    "expected the range to include it (or set 'default:' / evaluate_defaults: false)"
                )
        if p.distribution == "int" and isinstance(p.default, float) and p.default.is_integer():
            p.default = int(p.default)
    _check_corners(space, extra, src)
    return space


def _check_corners(space: SearchSpace, extra: dict[str, Any] | None, src: str) -> None:
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
    """The swept values out of a Tune trial config (keys are the dotted config keys; an int parameter's value,
    which Tune may hand over as a float, as an int)."""
    out = {}
    for p in space.params:
        if p.key not in config:
            raise KeyError(p.key)
        v = config[p.key]
        out[p.key] = int(v) if p.distribution == "int" else v
    return out
