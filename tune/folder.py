"""The results folder of a search (results/NAME/): one home for its contract.

Every file name the search, the reports, the comparison and reseeding read or write; the names of
the metrics they exchange; the short names and the formatting of parameters in tables; and the
typed record of `search.json` (how the search was started: what `--resume` and the reports read),
with one loader and one error for a folder that is not a search. docs/ARCHITECTURE.md lists them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afqmc.checkpoint import write_text_atomic
from afqmc.config import ConfigError, PRIMARY, SELECTION_METRICS, TECHNIQUES

# --- file names in results/NAME/ -----------------------------------------------------------------
SEARCH_JSON = "search.json"  # SearchState: how the search was started
SPACE_COPY = "space.yaml"  # the space file as it was when the search started
STUDY_DB = "optuna.db"  # the Optuna study (SQLite), written by the driver only
TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
SUMMARY = "summary.json"
BEST_CONFIG = "best_config.yaml"
BEST_MODEL = "best_model"
PLOTS = "plots"
VAL_PREDICTIONS = "best_val_predictions.json"  # the best model's val probabilities (threshold curve)
TEST_SCORES = "test_scores.json"  # the held-out test figures of each scored model
ENSEMBLE = "ensemble"  # the ensemble of the kept models (tune/ensemble.py; afqmc/ensemble.py reads it)
MODEL_PROBS = "model_probs.json"  # each kept model's val (and, for the ensemble's members, test) P(same)
RESEED_JSON, RESEED_MD = "reseed.json", "reseed.md"
RESEED_ENSEMBLE_JSON = "reseed_ensemble.json"  # the ensemble against the single best over new seeds
COMPARISON_MD = "comparison.md"
TRAIN_RUNS = "train_runs"  # Ray Train's copy of multi-worker trials' checkpoints, while they run
LOGS = "logs"  # ray.log (Ray's own messages) and trial_<id>.log (each trial's output), unless --verbose
TRIAL_PREFIX = "trial_"  # trial_<Ray trial id>/: one folder per trial (params.json, result.json, checkpoint_*/)


def trial_dirname(trial) -> str:
    """`trial_<id>` for a Ray trial, instead of Ray's default name, which lists every parameter and the date."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


# --- metric names in the trials' reports ---------------------------------------------------------
# PRIMARY (afqmc.config): the default ranking metric (search.metric), F1-macro at the trial's threshold.
FAILED = "failed"  # the key of a trial's last report when it failed on its own (NaN loss): the reason
TEST_F1 = "test/f1_macro"  # the held-out F1 of a scored model, in trials.csv
ASHA_ATTR = "asha"  # user attribute of a trial in optuna.db: its values at ASHA's rungs and the rungs it went on from
RAY_TRIAL_ID = "ray_trial_id"  # user attribute of each trial in optuna.db: the Ray trial it belongs to
TRIAL_NUMBER = "trial_number"  # in a Ray trial's config (params.json): its number in the study (0: the baseline)
# User attributes of warm-start trials in optuna.db (tune/warmstart.py): an enqueued configuration's
# source ("results/OLD trial 7"), and an earlier search's trial added only to inform TPE (never run here).
WARM_FROM = "warm_start_from"
INFORMED_BY = "informed_by"
TARGET_ATTR = "num_samples"  # study user attribute: how many trials the search is to hold (--num_samples)
# The confirmation stage (search.confirm, tune/confirm.py): a stage trial re-runs the configuration
# of the study's trial CONFIRM_OF (user attribute, and key of its Ray config) on another seed (the
# TrainConfig field `seed` in its Ray config, and user attribute CONFIRM_SEED), with no ASHA cut.
CONFIRM_OF = "confirm_of"
CONFIRM_SEED = "confirm_seed"
CONFIRM_PLAN = "confirm_plan"  # study user attribute: the stage's plan, once the search's trials have ended
STEPS_ATTR = "updates"  # user attribute of each trial: {"steps": updates so far, "full": its whole schedule's}
TRAIN_GROUP = "train_placement_group"  # in a multi-worker trial's reports: its Ray Train workers' placement group


def failure_report(reason: str, last: dict[str, Any]) -> dict[str, Any]:
    """The last report of a trial that failed on its own: the reason under FAILED, where it was
    (`last`: its last report before), and NaN for every selection metric and its best so far, which
    ASHA and the searcher need in every report and neither counts."""
    from afqmc.metrics import best_key  # here: afqmc.metrics imports sklearn, which reading a folder does not need

    nan = {key: math.nan for metric in SELECTION_METRICS for key in (metric, best_key(metric))}
    return {"evals": last.get("evals", 0), "step": last.get("step", 0), **nan, FAILED: str(reason)}


def failure_reason(report: dict[str, Any] | None) -> str | None:
    """Why a trial failed on its own, from its last report (`failure_report`); None if it did not."""
    reason = (report or {}).get(FAILED)
    return str(reason) if reason else None


class TrialState(enum.StrEnum):
    """A trial's state in trials.csv (`state`), summary.json, the live view and the trackers."""

    FINISHED = "finished"  # ran its course: the search's budget, its own schedule or its patience
    STOPPED = "stopped early"  # by ASHA
    FAILED = "failed"  # on its own (its last report says why) or its worker kept dying (error.txt)
    UNFINISHED = "unfinished"  # running, or the search was interrupted


DONE_STATES = (TrialState.FINISHED, TrialState.STOPPED, TrialState.FAILED)

# --- parameters in tables ------------------------------------------------------------------------
# Short names for table headers (trials.csv keeps the TrainConfig field names); each fine-tuning
# technique's comes from its TrainConfig field (afqmc.config.TECHNIQUES).
SHORT = {"learning_rate": "lr", "class_weights": "w1/w0", "dropout": "dropout", "threshold": "thr",
         "weight_decay": "wd", "warmup_ratio": "warmup", "per_device_batch_size": "batch",
         "num_epochs": "epochs", "gradient_accumulation_steps": "accum", "attention_dropout": "attn_drop",
         "max_grad_norm": "clip", "tiny_num_layers": "layers", "tiny_hidden_size": "hidden",
         **{name: tech.short for name, tech in TECHNIQUES.items()}, "gradient_checkpointing": "gc"}
# Longer names for plot axes.
LABEL = {"learning_rate": "learning rate", "class_weights": "class weight w1/w0", "threshold": "threshold",
         "warmup_ratio": "warmup ratio", "dropout": "dropout", "weight_decay": "weight decay",
         **{name: tech.label for name, tech in TECHNIQUES.items()}}


def fmt_param(value: Any) -> str:
    """A parameter value in a table: class weights [1, r] as r, small or large floats in e-notation."""
    if isinstance(value, list) and len(value) == 2 and value[0] == 1:  # class weights [1, r]
        value = value[1]
    if hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.2e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"
    return "-" if value is None or _is_na(value) else str(value)


def format_params(params: dict[str, Any], names: list[str] | None = None) -> str:
    names = names or list(params)
    return " ".join(f"{SHORT.get(k, k)}={fmt_param(params[k])}" for k in names if k in params)


def _is_na(value: Any) -> bool:
    try:
        import pandas as pd

        return value is pd.NA
    except ImportError:  # pragma: no cover
        return False


# --- search.json ---------------------------------------------------------------------------------


class NotASearchError(FileNotFoundError):
    """The folder holds no search started by tune/search.py."""


@dataclass
class SearchState:
    """How a search was started (search.json): what `--resume` rebuilds it from, and what the
    reports read. Relative paths in the space resolve from `cwd`."""

    space: str = ""  # the space file given (its copy is SPACE_COPY)
    overrides: dict[str, Any] = field(default_factory=dict)  # --field value fixed on the command line
    num_samples: int = 0
    scheduler: str = "asha"
    baseline: dict[str, Any] = field(default_factory=dict)  # the first trial's searched values
    workers_per_trial: int = 1
    settings: dict[str, Any] = field(default_factory=dict)  # the space's SearchSettings, as a dict
    cwd: str = "."
    started: str = ""
    tracking_uri: str | None = None  # --tracking_uri of search.loggers: [mlflow] (None: mlflow.db in the folder)
    # What the search learns on: its data (fingerprints of the train and val splits), label set, metric
    # and model; a warm start informs TPE with another search's trials only when these are the same.
    task: dict[str, Any] = field(default_factory=dict)
    # Each `--resume NAME --num_samples N` that grew the search: {"from", "to", "started"}.
    extensions: list[dict[str, Any]] = field(default_factory=list)
    # What `--warm_start` reused (tune/warmstart.py's plan): enqueued, informing, left out, and why.
    warm_start: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """What the search ranks trials by (searches from before `search.metric`: F1-macro)."""
        return self.settings.get("metric") or PRIMARY

    @property
    def max_evals(self) -> float:
        return self.settings.get("max_evals", math.inf)

    def save(self, experiment_dir: str | Path) -> None:
        path = Path(experiment_dir) / SEARCH_JSON
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, experiment_dir: str | Path) -> "SearchState":
        """The record of `experiment_dir`; NotASearchError (naming the folder) when it has none."""
        path = Path(experiment_dir) / SEARCH_JSON
        if not path.is_file():
            raise NotASearchError(f"{Path(experiment_dir)}: not a search folder (no {SEARCH_JSON}: "
                                  f"tune/search.py writes it when a search starts)")
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- the lock of a running search --------------------------------------------------------------

LOCK_NAME = ".search.lock"  # held (flock) by the driver of a running search; it holds the driver's pid


def lock_search(exp_dir: Path):
    """Hold the search's lock for as long as this process lives (the OS releases it on any exit)."""
    import fcntl

    handle = open(exp_dir / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        refuse_if_running(exp_dir)  # raises, naming the running driver
        raise ConfigError(f"{exp_dir}: a search of this name is running now") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def refuse_if_running(exp_dir: Path) -> None:
    """A search whose driver still holds its lock: refuse at once, touching nothing of it."""
    import fcntl

    path = exp_dir / LOCK_NAME
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = handle.read().strip() or "?"
            raise ConfigError(f"{exp_dir}: a search of this name is running now (driver pid {pid}); wait for it "
                              f"to end (then --resume it, or use another --name)") from None
