"""Reading a finished (or interrupted) search back from what Ray stored in results/NAME/.

`collect_trials(experiment_dir)` needs no running Ray: it reads the experiment state and each
trial's result.json through `ray.tune.ExperimentAnalysis`, so reports and comparisons can reuse it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afqmc.checkpoint import atomic_directory
from afqmc.config import load_config

PRIMARY = "val/f1_macro"
STATE_NAME = "search.json"
# Metrics of a trial's best evaluation kept in the table (besides PRIMARY).
BEST_COLUMNS = ("val/accuracy", "val/f1_0", "val/f1_1", "val/loss", "val/best_threshold",
                "val/f1_macro_at_best_threshold", "step", "epoch")
DONE_STATES = ("finished", "stopped early", "failed")


@dataclass
class TrialRecord:
    trial_id: str
    number: int  # 1, 2, ... in the order the searcher suggested them: 1 is the baseline
    status: str  # Ray's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    state: str  # ours: finished, stopped early (by ASHA), failed, or unfinished
    evals: int
    params: dict[str, Any]
    is_baseline: bool = False
    best_value: float | None = None  # the highest val/f1_macro over the trial's evaluations
    best_evals: int | None = None  # at which evaluation
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None  # the checkpoint directory that holds that evaluation
    error: str | None = None
    path: str = ""


def trial_state(status: str, last_result: dict[str, Any] | None, max_evals: int) -> str:
    """finished / stopped early / failed / unfinished, from Ray's status and the last report.

    Ray marks a trial TERMINATED (and its last result `done`) both when it ran its course and when
    ASHA stopped it. A trial that ASHA stopped reached neither the search's budget (`max_evals`),
    nor its own last evaluation (`planned_evals`, reported by the trainable), nor its patience.
    """
    if status == "ERROR":
        return "failed"
    if status != "TERMINATED":
        return "unfinished"
    last = last_result or {}
    evals = last.get("evals", 0)
    if last.get("early_stopped") or evals >= min(max_evals, last.get("planned_evals", math.inf)):
        return "finished"
    return "stopped early"


def trial_number(trial) -> int:
    """1, 2, ... in the order the searcher suggested the trials (Ray's ids are random).

    Ray's experiment tag starts with that counter: `3_class_weights=2.31,dropout=...`.
    """
    return int(trial.experiment_tag.split("_", 1)[0])


def load_state(experiment_dir: str | Path) -> dict[str, Any]:
    path = Path(experiment_dir) / STATE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def collect_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the search, in the order Ray created them."""
    from ray.tune import ExperimentAnalysis  # imported here: reading results needs no running Ray

    experiment_dir = Path(experiment_dir).resolve()
    state = load_state(experiment_dir)
    max_evals = state.get("settings", {}).get("max_evals", math.inf)
    baseline = state.get("baseline") or {}
    analysis = ExperimentAnalysis(str(experiment_dir))
    records = []
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        rows = df.to_dict("records") if df is not None and len(df) else []
        # One row per evaluation. After an interrupt, an evaluation whose report reached the
        # driver after Ray's last state snapshot is done again on resume, from the checkpoint
        # before it (with the same result: training is seeded): keep the later row.
        rows = list({r.get("evals"): r for r in rows if _finite(r.get(PRIMARY))}.values())
        trial_dir = Path(trial.path)
        rec = TrialRecord(
            trial_id=trial.trial_id, number=trial_number(trial), status=trial.status,
            state=trial_state(trial.status, trial.last_result, max_evals),
            evals=int(trial.last_result.get("evals", 0)) if trial.last_result else 0,
            params=dict(trial.config), path=str(trial_dir),
        )
        if rows:
            rec.best_value = max(r[PRIMARY] for r in rows)
            # The best evaluation whose checkpoint is still on disk (ties: the earliest).
            kept = [r for r in rows if r.get("checkpoint_dir_name") and (trial_dir / r["checkpoint_dir_name"]).is_dir()]
            best = max(kept or rows, key=lambda r: (r[PRIMARY], -r.get("evals", 0)))
            rec.best_evals = int(best.get("evals", 0))
            rec.best_metrics = {k: best.get(k) for k in BEST_COLUMNS}
            if kept:
                rec.best_checkpoint = str(trial_dir / best["checkpoint_dir_name"])
        if rec.state == "failed":
            rec.error = _error_reason(trial_dir)
        records.append(rec)
    for rec in sorted(records, key=lambda r: r.number):  # the baseline is the first trial with its values
        if baseline and _same_params(rec.params, baseline):
            rec.is_baseline = True
            break
    return sorted(records, key=lambda r: r.number)


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    scored = [t for t in trials if t.best_value is not None and t.best_checkpoint]
    return max(scored, key=lambda t: (t.best_value, -t.number)) if scored else None


def export_best(trials: list[TrialRecord], experiment_dir: str | Path, test_file: str | None = None) -> TrialRecord | None:
    """Copy the best trial's best model to best_model/ and its config to best_config.yaml.

    `test_file` (the space's; trials do not predict) goes back into best_config.yaml, so that
    retraining the best configuration also predicts it.
    """
    best = best_trial(trials)
    if best is None:
        return None
    experiment_dir = Path(experiment_dir)
    model_dir = Path(best.best_checkpoint) / "model"
    with atomic_directory(experiment_dir / "best_model") as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    cfg = load_config(model_dir / "train_config.yaml")
    cfg.output_dir = str(experiment_dir / "best_run")
    cfg.test_file = test_file
    cfg.save_yaml(experiment_dir / "best_config.yaml", header=(
        f"Best trial {best.number} ({best.trial_id}) of search {experiment_dir.name}: {PRIMARY} "
        f"{best.best_value:.4f} at evaluation {best.best_evals}.\n"
        f"Retrain it: accelerate launch afqmc/train.py --config {experiment_dir.name}/best_config.yaml"))
    return best


def write_trials_csv(trials: list[TrialRecord], path: str | Path) -> None:
    params = sorted({k for t in trials for k in t.params})
    header = (["trial", "trial_id", "state", "baseline", "evals", PRIMARY, "best_evals", *BEST_COLUMNS]
              + params + ["error", "checkpoint"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for t in trials:
            writer.writerow([t.number, t.trial_id, t.state, int(t.is_baseline), t.evals, t.best_value, t.best_evals,
                             *(t.best_metrics.get(k) for k in BEST_COLUMNS), *(t.params.get(k) for k in params),
                             t.error or "", t.best_checkpoint or ""])


def keep_best_checkpoint(trial_dir: str | Path) -> None:
    """Delete every checkpoint of a finished trial but its best one (Ray also keeps the latest)."""
    checkpoints = sorted(Path(trial_dir).glob("checkpoint_*"))
    scored = []
    for ckpt in checkpoints:
        try:
            metrics = json.loads((ckpt / "model" / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _finite(metrics.get(PRIMARY)):
            scored.append((metrics[PRIMARY], ckpt))
    if not scored:
        return
    keep = max(scored, key=lambda s: s[0])[1]  # max() keeps the first (earliest) of equal values
    for ckpt in checkpoints:
        if ckpt != keep:
            shutil.rmtree(ckpt, ignore_errors=True)


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
