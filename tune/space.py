"""Search spaces: a YAML file of `TrainConfig` fields, each fixed or a distribution, plus Ray settings.

    # what the space is for, and the command that runs it
    search:                      # not TrainConfig fields: how the search runs
      num_samples: 12
      max_evals: 5               # evaluations a trial may reach (ASHA's max_t; FIFO stops there too)
      grace_period: 1
      reduction_factor: 2
      cpus_per_trial: 1
      gpus_per_trial: 0
    params:                      # TrainConfig fields only
      model_name_or_path: tiny   # fixed
      learning_rate: {type: loguniform, low: 1.0e-4, high: 2.0e-3, baseline: 5.0e-4}
      class_weights: {type: uniform, low: 1.0, high: 4.0, baseline: 2.2}   # w1 / w0
      dropout: {type: uniform, low: 0.0, high: 0.3}                        # baseline: the default
      threshold: {type: uniform, low: 0.3, high: 0.7}

Everything is checked here, before Ray starts; errors name the file, the line and the key.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import optuna

from afqmc.config import (DATA_FIELDS, FIELDS, ConfigError, TrainConfig, absolute_paths, coerce_value, from_dict,
                          normalize_metric, parse_number, read_yaml_mapping)
from tune.folder import CONFIRM_OF, SPACE_COPY, TRIAL_NUMBER, SearchState

TYPES = ("loguniform", "uniform", "int", "choice")
DIST_KEYS = {"type", "low", "high", "values", "baseline", "log"}

# Set by the search itself (trial directories, ASHA's time unit, search.metric), not searchable.
RUN_FIELDS = {"output_dir", "save_best_model", "test_file", "eval_steps", "metric_for_best_model", "report_to"}
# The default of search.asha_metric: the candidate whose value at ASHA's rungs ranked the trials most
# like their final val F1-macro (tuned threshold, cross-fitted) on the CPU space (benchmarks/README.md).
DEFAULT_ASHA_METRIC = "val/auc"
LOGGERS = ("mlflow",)  # search.loggers
ENSEMBLE_METRICS = ("auc", "log_loss")  # search.ensemble_metric (tune/ensemble.py METRICS)
SAMPLERS = ("tpe", "random")  # search.sampler (tune/searcher.py make_sampler)


class SpaceError(ConfigError):
    """A search space file is wrong; the message names file, line and key."""


@dataclass
class SearchSettings:
    """The `search:` section: how many trials, ASHA's budget and the resources of one trial."""

    num_samples: int = 10  # trials, the baseline included
    # What TPE optimises, the leaderboard ranks by and each trial keeps its best model by (every
    # trial's metric_for_best_model); higher is better. See afqmc.config.SELECTION_METRICS.
    metric: str = "val/f1_macro"
    # What ASHA compares at its rungs: a trial's value at that evaluation (not its best so far).
    asha_metric: str = DEFAULT_ASHA_METRIC
    seed: int = 0  # seeds the sampler
    # What proposes the trials: tpe (Optuna's TPE) or random (Optuna's RandomSampler: every trial a
    # seeded random draw, the same draws as TPE's start-up trials; the baseline still goes first).
    sampler: str = "tpe"
    n_startup_trials: int = 10  # random trials before TPE models the results (Optuna's default)
    max_evals: int = 10  # the most evaluations a trial runs: ASHA's max_t, and the stop for FIFO
    grace_period: int = 1  # evaluations before ASHA may stop a trial
    reduction_factor: float = 3  # ASHA keeps the top 1 / reduction_factor at each rung
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0  # a fraction shares one GPU between trials; ignored without a GPU
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    # Retries of a trial whose worker died (killed, node lost): each one continues from the
    # trial's last checkpoint. A trial that fails on its own (NaN loss) is never retried.
    max_failures: int = 2
    # Workers (processes) per trial: above 1, each trial is a Ray Train TorchTrainer (data parallel)
    # and cpus_per_trial / gpus_per_trial are per worker.
    workers_per_trial: int = 1
    # Trackers of the search besides Tune's TensorBoard files (always written): [mlflow] logs one
    # MLflow run per trial (tune/tracking.py).
    loggers: list[str] = field(default_factory=list)
    # After the search, the ensemble of at most this many kept models (greedy selection on val log
    # loss, tune/ensemble.py) in results/NAME/ensemble/; 0 = none.
    ensemble_size: int = 5
    # What the greedy selection maximises on val: auc (the default: class weights and the focal loss,
    # both searched, shift a model's probabilities, and log loss then rewards calibration over
    # ranking: measured on the CPU space, benchmarks/README.md) or log_loss.
    ensemble_metric: str = "auc"
    # The guard of the greedy selection: a member joins only if it raises the selection metric on val
    # by more than this (tune/ensemble.py). 0.005 of val AUC: across 12 searches, the walk from the best
    # model had its highest mean held-out test gain there (0.0114) and no search below its best model
    # (benchmarks/README.md, issue 30).
    ensemble_margin: float = 0.005
    # With `--warm_start results/OLD ...`: the earlier searches' best configurations tried first,
    # right after the baseline (tune/warmstart.py); 0 = none (their trials may still inform TPE).
    warm_start_top_k: int = 3
    # The confirmation stage (tune/confirm.py): after the trials, the `top_k` best configurations by
    # val and the baseline are trained again on new seeds (`seeds` per configuration, an original that
    # ran its course counting as one), in full, with no ASHA cut, within `budget_share` of the updates
    # the search spent; the winner is the best mean val. {} (or `off`): no stage.
    confirm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Param:
    """One searched field: an Optuna distribution plus the baseline value (evaluated first)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: list[Any] | None = None
    log: bool = False
    baseline: Any = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        import optuna  # here: a trial process imports this module (trial_config) and never needs Optuna

        if self.type == "choice":
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.type == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.type == "loguniform")

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice {self.values}"
        return f"{self.type}{' (log)' if self.log else ''} [{self.low:g}, {self.high:g}]"


@dataclass
class SearchSpace:
    path: str
    settings: SearchSettings
    base: TrainConfig  # defaults, then the fixed params, then command-line overrides
    params: dict[str, Param]
    fixed_by_command_line: list[str] = field(default_factory=list)

    def baseline(self) -> dict[str, Any]:
        """The point evaluated first: every searched field at its baseline value."""
        return {name: p.baseline for name, p in self.params.items()}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {name: p.distribution() for name, p in self.params.items()}


# --- a trial's TrainConfig: the one way it is built (the driver, the trials, reports, reseed) ----


def search_base(space: SearchSpace, cwd: str) -> TrainConfig:
    """The search's fixed TrainConfig (the space's fixed fields and the command-line overrides),
    its relative paths resolved from `cwd`, where the search was started."""
    return absolute_paths(space.base, cwd)


def trial_config(base: TrainConfig, sampled: dict[str, Any], source: str = "trial") -> TrainConfig:
    """A trial's TrainConfig: the search's `base` (search_base) with the sampled values. Every trial
    keeps its best model (the export copies one) and predicts no test_file (the driver keeps the
    held-out pairs; best_config.yaml gets the space's test_file back). A Ray trial's config also
    carries its study number (TRIAL_NUMBER), which is no TrainConfig field."""
    sampled = {k: v for k, v in sampled.items() if k not in (TRIAL_NUMBER, CONFIRM_OF)}
    return from_dict(sampled, source=source, base=base).replace(save_best_model=True, test_file=None)


def folder_space(experiment_dir: str | Path, state: SearchState) -> SearchSpace:
    """The space of a search from its folder: the copy of the space file it started with
    (SPACE_COPY) and its command-line overrides (search.json)."""
    return load_space(Path(experiment_dir) / SPACE_COPY, state.overrides, state.num_samples or None)


def folder_config(experiment_dir: str | Path, state: SearchState) -> TrainConfig:
    """The search's fixed TrainConfig (search_base) rebuilt from its folder, as its driver used it."""
    return search_base(folder_space(experiment_dir, state), state.cwd)


# --- loading -------------------------------------------------------------------------------------


def load_space(path: str | Path, overrides: dict[str, Any] | None = None,
               num_samples: int | None = None) -> SearchSpace:
    """Read and check a search space; `overrides` (from `--field value`) fix fields of it."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search space file does not exist; the shipped spaces are "
                         f"{', '.join(shipped_spaces())} (--space NAME), or give a YAML file's path")
    data, _ = read_yaml_mapping(path)  # safe_load; errors for bad YAML
    lines = _key_lines(path)

    def where(key: str) -> str:
        return f"{path}:{lines[key]}" if key in lines else str(path)

    for key in data:
        if key not in ("search", "params"):
            raise SpaceError(f"{where(str(key))}: unknown section '{key}' (expected 'search' and 'params')", str(key))
    search = data.get("search") or {}
    params = data.get("params") or {}
    for section, value in (("search", search), ("params", params)):
        if not isinstance(value, dict):
            raise SpaceError(f"{where(section)}: '{section}' must be a mapping of key: value", section)

    settings = _parse_settings(search, where)
    if num_samples is not None:
        settings.num_samples = _check_int("num_samples", num_samples, 1, "command line")

    fixed: dict[str, Any] = {}
    searched: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        name = str(name)
        if name not in FIELDS:
            coerce_value(name, None, where(f"params.{name}"))  # raises: unknown field (did you mean ...?)
        if isinstance(value, dict):
            searched[name] = value
        else:
            fixed[name] = value
    base_lines = {name: lines[f"params.{name}"] for name in fixed if f"params.{name}" in lines}
    base = from_dict(fixed, source=str(path), lines=base_lines)  # a bad fixed value names file and line

    overrides = dict(overrides or {})
    fixed_by_cli = sorted(name for name in overrides if name in searched)
    for name in fixed_by_cli:
        del searched[name]
    if overrides:
        base = from_dict(overrides, source="command line", base=base)

    if "report_to" in fixed or "report_to" in overrides:
        raise SpaceError(f"{where('params.report_to')}: a search does not take 'report_to' (each trial's trackers); "
                         f"set 'search.loggers: [mlflow]' (Tune writes TensorBoard files anyway)", "report_to")
    if "metric_for_best_model" in fixed or "metric_for_best_model" in overrides:
        raise SpaceError(f"{where('params.metric_for_best_model')}: set 'search.metric' instead of "
                         "'metric_for_best_model': the search ranks and keeps trials by it", "metric_for_best_model")
    base = from_dict({"metric_for_best_model": settings.metric}, source=str(path), base=base)
    parsed = {name: _parse_param(name, spec, base, where, f"params.{name}") for name, spec in searched.items()}
    if not parsed:
        raise SpaceError(f"{path}: 'params' has no distribution: nothing to search")
    if "seed" in parsed and base.val_file is None:
        raise SpaceError(f"{where('params.seed')}: 'seed' cannot be searched when val is split from "
                         "train_file (the split is made once, in the driver); set val_file", "seed")
    return SearchSpace(str(path), settings, base, parsed, fixed_by_cli)


def shipped_spaces() -> list[str]:
    """The names of the spaces shipped with the package (tune/spaces/, also search_spaces/)."""
    return sorted(p.stem for p in (Path(__file__).resolve().parent / "spaces").glob("*.yaml"))


def _parse_settings(search: dict[str, Any], where) -> SearchSettings:
    settings = SearchSettings()
    known = {f.name for f in fields(SearchSettings)}
    for key, value in search.items():
        key, value = str(key), parse_number(value)
        src = where(f"search.{key}")
        if key not in known:
            raise SpaceError(f"{src}: unknown key 'search.{key}' (known: {', '.join(sorted(known))})", key)
        if key in ("num_samples", "max_evals", "grace_period", "workers_per_trial"):
            value = _check_int(key, value, 1, src)
        elif key in ("seed", "n_startup_trials", "max_failures", "ensemble_size", "warm_start_top_k"):
            value = _check_int(key, value, 0, src)
        elif key == "max_concurrent_trials":
            value = None if value is None else _check_int(key, value, 1, src)
        elif key == "sampler":
            if value not in SAMPLERS:
                raise SpaceError(f"{src}: 'search.sampler' must be one of {', '.join(SAMPLERS)} (got {value!r})", key)
        elif key == "ensemble_metric":
            if value not in ENSEMBLE_METRICS:
                raise SpaceError(f"{src}: 'search.ensemble_metric' must be one of {', '.join(ENSEMBLE_METRICS)} "
                                 f"(got {value!r})", key)
        elif key == "confirm":
            value = _parse_confirm(value, where)
        elif key in ("metric", "asha_metric"):
            value = normalize_metric(value, f"search.{key}", src)
        elif key == "loggers":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or any(v not in LOGGERS for v in value):
                raise SpaceError(f"{src}: 'search.loggers' must be a list of {', '.join(LOGGERS)} (got {value!r}); "
                                 f"Tune's TensorBoard files are always written", key)
        elif key == "reduction_factor":
            value = _check_number(key, value, src)
            if value <= 1:
                raise SpaceError(f"{src}: 'search.{key}' must be > 1 (got {value})", key)
        elif key == "ensemble_margin":
            value = _check_number(key, value, src)
            if value < 0:
                raise SpaceError(f"{src}: 'search.ensemble_margin' must be >= 0 (got {value})", key)
        elif key == "cpus_per_trial":
            value = _check_number(key, value, src)
            if value <= 0:
                raise SpaceError(f"{src}: 'search.{key}' must be > 0 (got {value})", key)
        elif key == "gpus_per_trial":
            value = _check_number(key, value, src)
            if value < 0 or (value > 1 and not float(value).is_integer()):
                raise SpaceError(f"{src}: 'search.{key}' must be a fraction in [0, 1] or a whole number "
                                 f"of GPUs (got {value})", key)
        setattr(settings, key, value)
    if settings.grace_period > settings.max_evals:
        raise SpaceError(f"{where('search.grace_period')}: 'search.grace_period' ({settings.grace_period}) "
                         f"must be <= 'search.max_evals' ({settings.max_evals})", "grace_period")
    return settings


@dataclass
class _Field:
    """The searched field being parsed: where it is (for errors) and the config it must fit."""

    name: str
    key: str  # params.NAME
    src: str  # file:line
    base: TrainConfig

    def fail(self, why: str) -> SpaceError:
        return SpaceError(f"{self.src}: '{self.key}' {why}", self.name)

    def check(self, value: Any, what: str) -> Any:
        """`value` must be a valid value of the field: its type and TrainConfig's own checks."""
        try:
            value = coerce_value(self.name, value, self.src)
            from_dict({self.name: value}, source=self.src, base=self.base)
        except ConfigError as exc:
            raise SpaceError(f"{self.src}: '{self.key}' {what}: {exc}", self.name) from None
        return value


def _parse_param(name: str, spec: dict[str, Any], base: TrainConfig, where, key: str) -> Param:
    f = _Field(name, key, where(key), base)
    if name in DATA_FIELDS:
        raise f.fail("cannot be searched: the data is tokenized once, before the trials, so it must be fixed")
    if name in RUN_FIELDS:
        raise f.fail("cannot be searched: the search sets it for every trial (output_dir, test_file, "
                     "save_best_model, metric_for_best_model from search.metric; eval_steps is ASHA's unit of time)")
    unknown = set(map(str, spec)) - DIST_KEYS
    if unknown:
        raise f.fail(f"has unknown key(s) {', '.join(sorted(unknown))} (a distribution has "
                     f"type, low, high, values, baseline, log)")
    kind = spec.get("type")
    if kind not in TYPES:
        raise f.fail(f"needs 'type' to be one of {', '.join(TYPES)} (got {kind!r})")
    param = _parse_choice(f, spec) if kind == "choice" else _parse_range(f, kind, spec)
    param.baseline = _parse_baseline(f, param, spec)
    return param


def _parse_choice(f: _Field, spec: dict[str, Any]) -> Param:
    values = spec.get("values")
    values = [parse_number(v) for v in values] if isinstance(values, list) else values
    if not isinstance(values, list) or not values:
        raise f.fail("(type choice) needs a non-empty list 'values'")
    for v in values:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise f.fail(f"choice values must be numbers, strings, booleans or null (got {v!r})")
        f.check(v, f"value {v!r}")
    for extra in ("low", "high", "log"):
        if extra in spec:
            raise f.fail(f"(type choice) takes 'values', not '{extra}'")
    return Param(f.name, "choice", values=list(values))


def _parse_range(f: _Field, kind: str, spec: dict[str, Any]) -> Param:
    if "values" in spec:
        raise f.fail(f"(type {kind}) takes 'low' and 'high', not 'values'")
    low, high = parse_number(spec.get("low")), parse_number(spec.get("high"))
    for bound, v in (("low", low), ("high", high)):
        if kind == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            raise f.fail(f"(type int) needs an integer '{bound}' (got {v!r})")
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise f.fail(f"needs a number '{bound}' (got {v!r})")
    if low >= high:
        raise f.fail(f"needs low < high (got low={low!r}, high={high!r})")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and kind != "int"):
        raise f.fail("'log' is true or false, for type int only (use type loguniform for floats)")
    if (kind == "loguniform" or log) and low <= 0:
        raise f.fail(f"is on a log scale, so it needs low > 0 (got low={low!r})")
    if kind in ("uniform", "loguniform") and not _takes_float(f.name):
        raise f.fail(f"is an integer field: use type int or choice, not {kind}")
    f.check(low, "low")
    f.check(high, "high")
    if kind == "int":
        return Param(f.name, kind, low=low, high=high, log=log)
    return Param(f.name, kind, low=float(low), high=float(high))


def _parse_baseline(f: _Field, param: Param, spec: dict[str, Any]) -> Any:
    """The value evaluated first: the spec's `baseline`, else TrainConfig's default; inside the range."""
    baseline = parse_number(spec["baseline"]) if "baseline" in spec else _default_baseline(f.name)
    if param.type == "choice":
        inside = baseline in param.values
    else:
        inside = (isinstance(baseline, (int, float)) and not isinstance(baseline, bool)
                  and param.low <= baseline <= param.high and (param.type != "int" or float(baseline).is_integer()))
    if not inside:
        given = "'baseline'" if "baseline" in spec else "the TrainConfig default"
        raise f.fail(f"baseline ({given} {baseline!r}) is not in {param.describe()}; set 'baseline' "
                     f"to the value the search must beat")
    f.check(baseline, "baseline")
    return int(baseline) if param.type == "int" else (float(baseline) if param.type != "choice" else baseline)


def _default_baseline(name: str) -> Any:
    value = FIELDS[name].default
    if name == "class_weights":  # as the minority/majority ratio a numeric distribution searches
        if value is None:
            return 1.0
        if isinstance(value, list):
            return value[1] / value[0]
    return value


def _takes_float(name: str) -> bool:
    if name == "class_weights":  # one number r means [1, r]
        return True
    hint = typing.get_type_hints(TrainConfig)[name]
    return hint is float or float in typing.get_args(hint)


CONFIRM_DEFAULTS = {"top_k": 3, "seeds": 2, "budget_share": 1.0}  # search.confirm: on


def _parse_confirm(value: Any, where) -> dict[str, Any]:
    """search.confirm: off (no stage), on (the defaults), or a mapping of top_k, seeds, budget_share."""
    src = where("search.confirm")
    if value in (None, False, "off", 0):
        return {}
    if value is True or value == "on":
        return dict(CONFIRM_DEFAULTS)
    if not isinstance(value, dict):
        raise SpaceError(f"{src}: 'search.confirm' must be off, on, or a mapping of top_k, seeds and budget_share "
                         f"(got {value!r})", "confirm")
    out = dict(CONFIRM_DEFAULTS)
    for key, item in value.items():
        key, item, at = str(key), parse_number(item), where(f"search.confirm.{key}")
        if key not in CONFIRM_DEFAULTS:
            raise SpaceError(f"{at}: unknown key 'search.confirm.{key}' (known: {', '.join(CONFIRM_DEFAULTS)})",
                             "confirm")
        if key == "budget_share":
            item = _check_number(f"confirm.{key}", item, at)
            if item <= 0:
                raise SpaceError(f"{at}: 'search.confirm.budget_share' must be > 0 (got {item})", "confirm")
        else:
            item = _check_int(f"search.confirm.{key}", item, 0 if key == "top_k" else 1, at)
        out[key] = item
    return out if out["top_k"] else {}


def _check_int(key: str, value: Any, minimum: int, src: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpaceError(f"{src}: '{key}' must be an integer >= {minimum} (got {value!r})", key)
    return value


def _check_number(key: str, value: Any, src: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{src}: 'search.{key}' must be a number (got {value!r})", key)
    return value


def _key_lines(path: Path) -> dict[str, int]:
    """1-based line of every mapping key, dotted for nested ones: `params.learning_rate.low`."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                lines.setdefault(name, key.start_mark.line + 1)
                walk(value, name + ".")

    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    if node is not None:
        walk(node, "")
    return lines
