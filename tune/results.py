"""Reading a finished (or interrupted, or running) search back from results/NAME/.

`collect_trials(experiment_dir)` needs no running Ray and reads no file of Ray's own format: the
Optuna study (optuna.db) says which trials there are, their numbers (0 is the baseline; the ones
optuna-dashboard shows), their parameters and how each ended; each trial's folder (`trial_<Ray
id>/`, named by the search) holds its reports (result.json, one line per evaluation) and its kept
checkpoint. So the reports (tune/reports.py) and comparisons (tune/compare.py) work on a finished,
interrupted or running search.
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
from tune.folder import (CONFIRM_OF, CONFIRM_SEED, FAILED, RAY_TRIAL_ID, STUDY_DB, TRIAL_NUMBER, TRIAL_PREFIX,
                         SearchState, TrialState, failure_reason)

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
    status: str  # the study's: COMPLETE, PRUNED, FAIL, RUNNING ("" for a trial the study does not hold)
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
    confirm_of: int | None = None  # a confirmation-stage trial (tune/confirm.py): the trial it re-runs on `seed`
    seed: int | None = None


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
    return f"running or interrupted: {so_far}" if rec.status else f"not in the study: {so_far}"


def trial_number(trial) -> int:
    """The study's number of a Ray trial (0 is the baseline): the searcher puts it in the trial's config."""
    return int(trial.config[TRIAL_NUMBER])


def searched_params(config: dict[str, Any]) -> dict[str, Any]:
    """A Ray trial's sampled values (its config, less its study number and a stage trial's marker and seed)."""
    stage = CONFIRM_OF in config
    return {k: v for k, v in config.items() if k not in (TRIAL_NUMBER, CONFIRM_OF) and not (stage and k == "seed")}


STUDY_STATES = {"COMPLETE": TrialState.FINISHED, "PRUNED": TrialState.STOPPED, "FAIL": TrialState.FAILED}


@dataclass
class StoredTrial:
    """A trial as the search stored it: its study trial (None if optuna.db cannot be read) and its folder."""

    trial_id: str
    number: int
    state: str  # the study's TrialState name ("" without the study)
    params: dict[str, Any]
    failed: str | None  # the reason the study holds for a FAIL
    path: Path
    rows: list[dict[str, Any]]  # every report, in order
    confirm_of: int | None = None  # a confirmation-stage trial: the trial whose configuration it re-runs
    seed: int | None = None  # and its seed


def stored_trials(experiment_dir: Path) -> list[StoredTrial]:
    """Every trial of the search: those of the study, with their folders (a trial asked for just before
    the driver was killed has none yet), and any folder the study does not hold (optuna.db unreadable:
    the numbers are then those in the trials' configs)."""
    study = _study_or_warn(experiment_dir)
    folders = {d.name.removeprefix(TRIAL_PREFIX): d for d in experiment_dir.glob(f"{TRIAL_PREFIX}*")
               if (d / "params.json").is_file()}
    out = []
    for t in (study.get_trials(deepcopy=False) if study is not None else []):
        trial_id = t.user_attrs.get(RAY_TRIAL_ID)
        if trial_id is None:  # the baseline enqueued, never asked for: not a trial yet
            continue
        folder = folders.pop(trial_id, experiment_dir / f"{TRIAL_PREFIX}{trial_id}")
        out.append(StoredTrial(trial_id, t.number, t.state.name, dict(t.params), t.user_attrs.get(FAILED), folder,
                               _read_result_rows(folder / "result.json"), t.user_attrs.get(CONFIRM_OF),
                               t.user_attrs.get(CONFIRM_SEED)))
    # Folders the study does not hold (it cannot be read, or the trial started before it was written):
    # numbered as in their configs, else after the others in the order they were made.
    unheld = sorted(folders.items(), key=lambda kv: (kv[1] / "params.json").stat().st_mtime)
    next_number = max([t.number for t in out] + [-1]) + 1
    for trial_id, folder in unheld:
        config = json.loads((folder / "params.json").read_text(encoding="utf-8"))
        number = config.get(TRIAL_NUMBER)
        if number is None:
            number, next_number = next_number, next_number + 1
        out.append(StoredTrial(trial_id, int(number), "", searched_params(config), None, folder,
                               _read_result_rows(folder / "result.json"), config.get(CONFIRM_OF), config.get("seed")
                               if CONFIRM_OF in config else None))
    return out


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


def _study_or_warn(experiment_dir: Path):
    """The study, or None with a warning when optuna.db cannot be read."""
    import warnings

    import optuna
    import sqlalchemy

    try:
        return load_study(experiment_dir)
    except (OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as exc:
        warnings.warn(f"{experiment_dir / STUDY_DB}: not readable ({type(exc).__name__}: {exc}); trials from their "
                      f"folders alone, their states unknown", stacklevel=3)
        return None


def collect_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the search, by its number (the study's)."""
    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    records = [_record(t, state) for t in stored_trials(experiment_dir)]
    for rec in sorted(records, key=lambda r: r.number):  # the baseline is the first trial with its values
        if state.baseline and _same_params(rec.params, state.baseline):
            rec.is_baseline = True
            break
    return sorted(records, key=lambda r: r.number)


def _record(trial: StoredTrial, state: SearchState) -> TrialRecord:
    """A trial's record: its state (the study's) and why, and its best evaluation by the search's
    ranking metric (its reports)."""
    metric, max_evals = state.metric, state.max_evals
    # One row per evaluation. After an interrupt, an evaluation whose report reached the driver
    # after Ray's last state snapshot is done again on resume, from the checkpoint before it (with
    # the same result: training is seeded): keep the later row.
    rows = list({r.get("evals"): r for r in trial.rows if _finite(r.get(metric))}.values())
    rows.sort(key=lambda r: r.get("evals", 0))
    last = trial.rows[-1] if trial.rows else {}
    own_state = STUDY_STATES.get(trial.state, TrialState.UNFINISHED)
    if not trial.state and failure_reason(last):  # no study to ask: a failure's last report says so
        own_state = TrialState.FAILED
    rec = TrialRecord(
        trial_id=trial.trial_id, number=trial.number, status=trial.state, state=own_state,
        evals=max([int(last.get("evals", 0) or 0)] + [int(r.get("evals", 0)) for r in rows]),
        params=trial.params, path=str(trial.path),
        history=[{k: v for k, v in r.items() if k != "config"} for r in rows],
        confirm_of=None if trial.confirm_of is None else int(trial.confirm_of),
        seed=None if trial.seed is None else int(trial.seed),
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
        rec.error = trial.failed or failure_reason(last) or _error_reason(trial.path)
    rec.reason = state_reason(rec, max_evals)
    return rec


def checkpoint_model(checkpoint: str | Path) -> Path:
    """The saved model in a trial's checkpoint (train() saves it under model/ beside its training state)."""
    return Path(checkpoint) / "model"


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    """The search's winner: after a confirmation stage, the best seed (by val) of the configuration
    with the best mean val over its seeds (tune/confirm.py); else the trial with the best val value."""
    if any(t.confirm_of is not None for t in trials):
        from tune.confirm import confirmed_winner

        winner = confirmed_winner(trials)
        if winner is not None:
            return winner["best_seed"]
    return single_best(trials)


def single_best(trials: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the best val value (and a kept model): the winner on one seed."""
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
