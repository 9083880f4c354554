"""Reading a finished (or interrupted) search back from what Ray stored in results/NAME/.

`collect_trials(experiment_dir)` needs no running Ray: it reads the experiment state and each
trial's result.json through `ray.tune.ExperimentAnalysis` (and the folders of trials that started
after Ray's last snapshot), so the reports (tune/reports.py) and comparisons (tune/compare.py)
work on a finished, interrupted or running search. A trial's number is the Optuna study's
(optuna.db; 0 is the baseline), the one optuna-dashboard shows.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afqmc.checkpoint import METRICS_NAME
from afqmc.config import PRIMARY, SELECTION_METRICS
from afqmc.metrics import best_key
from tune import internals
from tune.folder import (RAY_TRIAL_ID, STUDY_DB, TRIAL_PREFIX, SearchState, TrialState,
                         failure_reason)

# Metrics of a trial's best evaluation kept in the table.
BEST_COLUMNS = (*SELECTION_METRICS, "val/threshold", "val/f1_0", "val/f1_1", "val/loss", "val/best_threshold",
                "val/f1_macro_at_best_threshold", "step", "epoch")


def searcher_metric(metric: str) -> str:
    """A trial's value for TPE: its best `metric` so far (what train() reports as best/...)."""
    return best_key(metric)


@dataclass
class TrialRecord:
    trial_id: str
    number: int  # the Optuna study's: 0, 1, ... in the order the searcher suggested them; 0 is the baseline
    status: str  # Ray's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    state: TrialState  # ours: finished, stopped early (by ASHA), failed, or unfinished
    evals: int
    params: dict[str, Any]
    is_baseline: bool = False
    best_value: float | None = None  # the highest value of the search's ranking metric over its evaluations
    best_evals: int | None = None  # at which evaluation
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None  # the checkpoint directory that holds that evaluation
    error: str | None = None
    path: str = ""
    reason: str = ""  # why the trial is in its state: ASHA's stop, the budget, the error
    steps: int = 0  # optimizer updates done (the last evaluation's step)
    planned_evals: int | None = None  # the evaluations its own schedule has (reported by the trainable)
    wall_time_s: float | None = None  # Ray's time_total_s at its last evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation's metrics, in order


def trial_state(status: str, last_result: dict[str, Any] | None, max_evals: int) -> TrialState:
    """finished / stopped early / failed / unfinished, from Ray's status and the last report.

    Ray marks a trial TERMINATED (and its last result `done`) both when it ran its course and when
    ASHA stopped it: `ran_its_course` tells them apart.
    """
    last = last_result or {}
    if status == "ERROR" or (status == "TERMINATED" and failure_reason(last)):
        return TrialState.FAILED
    if status != "TERMINATED":
        return TrialState.UNFINISHED
    return TrialState.FINISHED if ran_its_course(last, max_evals) else TrialState.STOPPED


def ran_its_course(last_result: dict[str, Any], max_evals: float) -> bool:
    """The trial's last report ends its run: the search's budget (`max_evals`), its own last
    evaluation (`planned_evals`, reported by the trainable) or its patience. A trial that ASHA
    stopped reached none of them."""
    evals = last_result.get("evals", 0)
    return bool(last_result.get("early_stopped")) or evals >= min(max_evals, last_result.get("planned_evals", math.inf))


def state_reason(rec: "TrialRecord", max_evals: float) -> str:
    """A short reason for a trial's state, for the tables."""
    planned = rec.planned_evals
    if rec.state == TrialState.FAILED:
        return rec.error or "failed (see the trial's error.txt)"
    if rec.state == TrialState.STOPPED:
        of = min(x for x in (planned, max_evals) if x is not None)
        return f"stopped by ASHA after {rec.evals} of {of:g} evaluations"
    if rec.state == TrialState.FINISHED:
        last = rec.history[-1] if rec.history else {}
        if last.get("early_stopped"):
            return f"early stopping (patience) after {rec.evals} evaluations"
        if planned is not None and rec.evals < planned:
            return f"reached the search budget ({rec.evals} evaluations; its schedule had {planned})"
        return f"ran its {rec.evals} evaluations"
    so_far = f"{rec.evals} evaluations so far"
    return f"{rec.status.lower()}: {so_far}" if rec.status not in ("", "UNLISTED") else f"not yet in Ray's state: {so_far}"


def trial_number(trial) -> int:
    """The study's number of a Ray trial (0 is the baseline). The searcher asks the study for one
    trial per suggestion, in the order Ray counts them; collect_trials reads the study's own record."""
    return internals.suggestion_index(trial)


@dataclass
class RayTrial:
    """A trial as Ray stored it: in its experiment state, or only in its folder (`status` UNLISTED)."""

    trial_id: str
    order: int  # Ray's suggestion index (0, 1, ...): the trial's number where the study does not have it
    status: str
    last_result: dict[str, Any] | None
    params: dict[str, Any]
    path: Path
    rows: list[dict[str, Any]]  # every report, in order


def ray_trials(experiment_dir: Path) -> list[RayTrial]:
    """Every trial Ray stored: those of its last experiment snapshot, then the folders of trials
    that started after it (a running search), in the order they were created."""
    from ray.tune import ExperimentAnalysis  # imported here: reading results needs no running Ray

    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
        listed = []
        for t in analysis.trials:
            df = analysis.trial_dataframes.get(t.trial_id)
            listed.append(RayTrial(t.trial_id, trial_number(t), t.status, t.last_result, dict(t.config), Path(t.path),
                                   df.to_dict("records") if df is not None and len(df) else []))
    except ValueError:  # no experiment snapshot yet: a search that has just started
        listed = []
    known = {t.trial_id for t in listed}
    for n, trial_dir in enumerate(_unlisted_trial_dirs(experiment_dir, known),
                                  start=max((t.order for t in listed), default=-1) + 1):
        rows = _read_result_rows(trial_dir / "result.json")
        params = json.loads((trial_dir / "params.json").read_text(encoding="utf-8"))
        listed.append(RayTrial(trial_dir.name.removeprefix(TRIAL_PREFIX), n, "UNLISTED", rows[-1] if rows else None,
                               params, trial_dir, rows))
    return listed


def load_study(experiment_dir: Path):
    """The search's Optuna study from optuna.db (its only study; the folder may have been renamed), or None."""
    import optuna

    db = experiment_dir / STUDY_DB
    if not db.is_file():
        return None
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    name = experiment_dir.name if experiment_dir.name in names else names[0]
    return optuna.load_study(study_name=name, storage=storage)


def study_numbers(experiment_dir: Path) -> dict[str, int]:
    """The study's number of each Ray trial it holds (by the user attribute `ray_trial_id`); empty,
    with a warning, when optuna.db cannot be read (the numbers are then Ray's order, the same in a
    search that ran as it should)."""
    import warnings

    import optuna
    import sqlalchemy

    try:
        study = load_study(experiment_dir)
    except (OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as exc:
        warnings.warn(f"{experiment_dir / STUDY_DB}: not readable ({type(exc).__name__}: {exc}); trial numbers "
                      f"in Ray's order", stacklevel=2)
        return {}
    if study is None:
        return {}
    return {t.user_attrs[RAY_TRIAL_ID]: t.number for t in study.get_trials(deepcopy=False)
            if RAY_TRIAL_ID in t.user_attrs}


def collect_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the search, by its number (the study's)."""
    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    numbers = study_numbers(experiment_dir)
    records = [_record(t, numbers.get(t.trial_id, t.order), state) for t in ray_trials(experiment_dir)]
    for rec in sorted(records, key=lambda r: r.number):  # the baseline is the first trial with its values
        if state.baseline and _same_params(rec.params, state.baseline):
            rec.is_baseline = True
            break
    return sorted(records, key=lambda r: r.number)


def _record(trial: RayTrial, number: int, state: SearchState) -> TrialRecord:
    """A trial's record: its state and why, and its best evaluation by the search's ranking metric."""
    metric, max_evals = state.metric, state.max_evals
    # One row per evaluation. After an interrupt, an evaluation whose report reached the driver
    # after Ray's last state snapshot is done again on resume, from the checkpoint before it (with
    # the same result: training is seeded): keep the later row.
    rows = list({r.get("evals"): r for r in trial.rows if _finite(r.get(metric))}.values())
    rows.sort(key=lambda r: r.get("evals", 0))
    last = trial.last_result or {}
    # The snapshot may be older than result.json (a running search): the later of the two counts.
    evals = max([int(last.get("evals", 0) or 0)] + [int(r.get("evals", 0)) for r in rows])
    rec = TrialRecord(
        trial_id=trial.trial_id, number=number, status=trial.status,
        state=trial_state(trial.status, trial.last_result, max_evals),
        evals=evals, params=trial.params, path=str(trial.path),
        history=[{k: v for k, v in r.items() if k != "config"} for r in rows],
    )
    if rows:
        rec.steps = int(rows[-1].get("step", 0))
        rec.planned_evals = int(rows[-1]["planned_evals"]) if _finite(rows[-1].get("planned_evals")) else None
        rec.wall_time_s = float(rows[-1]["time_total_s"]) if _finite(rows[-1].get("time_total_s")) else None
        rec.best_value = max(r[metric] for r in rows)
        # The best evaluation whose checkpoint is still on disk (ties: the earliest).
        kept = [r for r in rows if r.get("checkpoint_dir_name") and (trial.path / r["checkpoint_dir_name"]).is_dir()]
        best = max(kept or rows, key=lambda r: (r[metric], -r.get("evals", 0)))
        rec.best_evals = int(best.get("evals", 0))
        rec.best_metrics = {k: best.get(k) for k in BEST_COLUMNS}
        if kept:
            rec.best_checkpoint = str(trial.path / best["checkpoint_dir_name"])
    if rec.state == TrialState.FAILED:
        rec.error = (failure_reason(last) if trial.status == "TERMINATED" else None) or _error_reason(trial.path)
    rec.reason = state_reason(rec, max_evals)
    return rec


def checkpoint_model(checkpoint: str | Path) -> Path:
    """The saved model in a trial's checkpoint (train() saves it under model/ beside its training state)."""
    return Path(checkpoint) / "model"


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    scored = [t for t in trials if t.best_value is not None and t.best_checkpoint]
    return max(scored, key=lambda t: (t.best_value, -t.number)) if scored else None


def keep_best_checkpoint(trial_dir: str | Path, metric: str = PRIMARY) -> None:
    """Delete every checkpoint of a finished trial but its best one by `metric` (Ray also keeps the latest)."""
    checkpoints = sorted(Path(trial_dir).glob("checkpoint_*"))
    scored = []
    for ckpt in checkpoints:
        try:
            metrics = json.loads((checkpoint_model(ckpt) / METRICS_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _finite(metrics.get(metric)):
            scored.append((metrics[metric], ckpt))
    if not scored:
        return
    keep = max(scored, key=lambda s: s[0])[1]  # max() keeps the first (earliest) of equal values
    for ckpt in checkpoints:
        if ckpt != keep:
            shutil.rmtree(ckpt, ignore_errors=True)


def _unlisted_trial_dirs(experiment_dir: Path, known: set[str]) -> list[Path]:
    dirs = [d for d in experiment_dir.glob(f"{TRIAL_PREFIX}*") if (d / "params.json").is_file()
            and d.name.removeprefix(TRIAL_PREFIX) not in known]
    return sorted(dirs, key=lambda d: (d / "params.json").stat().st_mtime)


def _read_result_rows(path: Path) -> list[dict[str, Any]]:
    """Ray's result.json, one JSON object per line; a line still being written is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def _error_reason(trial_dir: Path) -> str | None:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return None
    lines = [line.strip() for line in error_file.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    return lines[-1] if lines else None


def _same_params(params: dict[str, Any], baseline: dict[str, Any]) -> bool:
    for key, value in baseline.items():
        got = params.get(key)
        if isinstance(value, (int, float)) and isinstance(got, (int, float)) and not isinstance(value, bool):
            if not math.isclose(value, got, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif got != value:
            return False
    return True


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
