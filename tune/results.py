"""Reading a finished (or interrupted) search back from what Ray stored in results/NAME/.

`collect_trials(experiment_dir)` needs no running Ray: it reads the experiment state and each
trial's result.json through `ray.tune.ExperimentAnalysis` (and the folders of trials that started
after Ray's last snapshot), so the reports (tune/reports.py) and comparisons (tune/compare.py)
work on a finished, interrupted or running search.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afqmc.card import CARD_NAME, write_model_card
from afqmc.checkpoint import atomic_directory
from afqmc.config import SELECTION_METRICS, load_config
from afqmc.metrics import best_key
from tune.folder import BEST_CONFIG, BEST_MODEL, FAILED, PRIMARY, SearchState

# Metrics of a trial's best evaluation kept in the table.
BEST_COLUMNS = (*SELECTION_METRICS, "val/threshold", "val/f1_0", "val/f1_1", "val/loss", "val/best_threshold",
                "val/f1_macro_at_best_threshold", "step", "epoch")
DONE_STATES = ("finished", "stopped early", "failed")


def searcher_metric(metric: str) -> str:
    """A trial's value for TPE: its best `metric` so far (what train() reports as best/...)."""
    return best_key(metric)


@dataclass
class TrialRecord:
    trial_id: str
    number: int  # 1, 2, ... in the order the searcher suggested them: 1 is the baseline
    status: str  # Ray's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    state: str  # ours: finished, stopped early (by ASHA), failed, or unfinished
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


def trial_state(status: str, last_result: dict[str, Any] | None, max_evals: int) -> str:
    """finished / stopped early / failed / unfinished, from Ray's status and the last report.

    Ray marks a trial TERMINATED (and its last result `done`) both when it ran its course and when
    ASHA stopped it: `ran_its_course` tells them apart.
    """
    last = last_result or {}
    if status == "ERROR" or (status == "TERMINATED" and last.get(FAILED)):
        return "failed"
    if status != "TERMINATED":
        return "unfinished"
    return "finished" if ran_its_course(last, max_evals) else "stopped early"


def ran_its_course(last_result: dict[str, Any], max_evals: float) -> bool:
    """The trial's last report ends its run: the search's budget (`max_evals`), its own last
    evaluation (`planned_evals`, reported by the trainable) or its patience. A trial that ASHA
    stopped reached none of them."""
    evals = last_result.get("evals", 0)
    return bool(last_result.get("early_stopped")) or evals >= min(max_evals, last_result.get("planned_evals", math.inf))


def state_reason(rec: "TrialRecord", max_evals: float) -> str:
    """A short reason for a trial's state, for the tables."""
    planned = rec.planned_evals
    if rec.state == "failed":
        return rec.error or "failed (see the trial's error.txt)"
    if rec.state == "stopped early":
        of = min(x for x in (planned, max_evals) if x is not None)
        return f"stopped by ASHA after {rec.evals} of {of:g} evaluations"
    if rec.state == "finished":
        last = rec.history[-1] if rec.history else {}
        if last.get("early_stopped"):
            return f"early stopping (patience) after {rec.evals} evaluations"
        if planned is not None and rec.evals < planned:
            return f"reached the search budget ({rec.evals} evaluations; its schedule had {planned})"
        return f"ran its {rec.evals} evaluations"
    so_far = f"{rec.evals} evaluations so far"
    return f"{rec.status.lower()}: {so_far}" if rec.status not in ("", "UNLISTED") else f"not yet in Ray's state: {so_far}"


def trial_number(trial) -> int:
    """1, 2, ... in the order the searcher suggested the trials (Ray's ids are random).

    Ray's experiment tag starts with that counter: `3_class_weights=2.31,dropout=...`.
    """
    return int(trial.experiment_tag.split("_", 1)[0])


def collect_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the search, in the order Ray created them."""
    from ray.tune import ExperimentAnalysis  # imported here: reading results needs no running Ray

    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    metric, max_evals, baseline = state.metric, state.max_evals, state.baseline
    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
        listed = [(t.trial_id, trial_number(t), t.status, t.last_result, dict(t.config), Path(t.path),
                   analysis.trial_dataframes.get(t.trial_id)) for t in analysis.trials]
    except ValueError:  # no experiment snapshot yet: a search that has just started
        listed = []
    # Trials that started after Ray's last snapshot (a running search): read from their folders.
    known = {tid for tid, *_ in listed}
    for n, trial_dir in enumerate(_unlisted_trial_dirs(experiment_dir, known),
                                  start=max((x[1] for x in listed), default=0) + 1):
        rows = _read_result_rows(trial_dir / "result.json")
        params = json.loads((trial_dir / "params.json").read_text(encoding="utf-8"))
        listed.append((trial_dir.name.removeprefix("trial_"), n, "UNLISTED", rows[-1] if rows else None, params,
                       trial_dir, rows))
    records = []
    for trial_id, number, status, last_result, params, trial_dir, df in listed:
        rows = df if isinstance(df, list) else (df.to_dict("records") if df is not None and len(df) else [])
        # One row per evaluation. After an interrupt, an evaluation whose report reached the
        # driver after Ray's last state snapshot is done again on resume, from the checkpoint
        # before it (with the same result: training is seeded): keep the later row.
        rows = list({r.get("evals"): r for r in rows if _finite(r.get(metric))}.values())
        rows.sort(key=lambda r: r.get("evals", 0))
        last = last_result or {}
        # The snapshot may be older than result.json (a running search): the later of the two counts.
        evals = max([int(last.get("evals", 0) or 0)] + [int(r.get("evals", 0)) for r in rows])
        rec = TrialRecord(
            trial_id=trial_id, number=number, status=status,
            state=trial_state(status, last_result, max_evals),
            evals=evals, params=params, path=str(trial_dir),
            history=[{k: v for k, v in r.items() if k != "config"} for r in rows],
        )
        if rows:
            rec.steps = int(rows[-1].get("step", 0))
            rec.planned_evals = int(rows[-1]["planned_evals"]) if _finite(rows[-1].get("planned_evals")) else None
            rec.wall_time_s = float(rows[-1]["time_total_s"]) if _finite(rows[-1].get("time_total_s")) else None
            rec.best_value = max(r[metric] for r in rows)
            # The best evaluation whose checkpoint is still on disk (ties: the earliest).
            kept = [r for r in rows if r.get("checkpoint_dir_name") and (trial_dir / r["checkpoint_dir_name"]).is_dir()]
            best = max(kept or rows, key=lambda r: (r[metric], -r.get("evals", 0)))
            rec.best_evals = int(best.get("evals", 0))
            rec.best_metrics = {k: best.get(k) for k in BEST_COLUMNS}
            if kept:
                rec.best_checkpoint = str(trial_dir / best["checkpoint_dir_name"])
        if rec.state == "failed":
            rec.error = (last.get(FAILED) if status == "TERMINATED" else None) or _error_reason(trial_dir)
        rec.reason = state_reason(rec, max_evals)
        records.append(rec)
    for rec in sorted(records, key=lambda r: r.number):  # the baseline is the first trial with its values
        if baseline and _same_params(rec.params, baseline):
            rec.is_baseline = True
            break
    return sorted(records, key=lambda r: r.number)


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    scored = [t for t in trials if t.best_value is not None and t.best_checkpoint]
    return max(scored, key=lambda t: (t.best_value, -t.number)) if scored else None


def export_best(trials: list[TrialRecord], experiment_dir: str | Path, test_file: str | None = None,
                metric: str = PRIMARY) -> TrialRecord | None:
    """Copy the best trial's best model to best_model/ and its config to best_config.yaml.

    `test_file` (the space's; trials do not predict) goes back into best_config.yaml, so that
    retraining the best configuration also predicts it.
    """
    best = best_trial(trials)
    if best is None:
        return None
    experiment_dir = Path(experiment_dir)
    model_dir = Path(best.best_checkpoint) / "model"
    cfg = load_config(model_dir / "train_config.yaml")
    if not _same_model(model_dir, experiment_dir / BEST_MODEL):  # rebuilding the reports copies nothing
        with atomic_directory(experiment_dir / BEST_MODEL) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            # The card names the exported folder (the trial's was written in its scratch folder).
            write_model_card(tmp, cfg, json.loads((model_dir / "metrics.json").read_text(encoding="utf-8")),
                             path=experiment_dir / BEST_MODEL)
    cfg.output_dir = str(experiment_dir / "best_run")
    cfg.test_file = test_file
    cfg.save_yaml(experiment_dir / BEST_CONFIG, header=(
        f"Best trial {best.number} ({best.trial_id}) of search {experiment_dir.name}: {metric} "
        f"{best.best_value:.4f} at evaluation {best.best_evals} (val: it chose this trial, so it is optimistic).\n"
        f"Retrain it: accelerate launch afqmc/train.py --config {experiment_dir.name}/{BEST_CONFIG}"))
    return best


def keep_best_checkpoint(trial_dir: str | Path, metric: str = PRIMARY) -> None:
    """Delete every checkpoint of a finished trial but its best one by `metric` (Ray also keeps the latest)."""
    checkpoints = sorted(Path(trial_dir).glob("checkpoint_*"))
    scored = []
    for ckpt in checkpoints:
        try:
            metrics = json.loads((ckpt / "model" / "metrics.json").read_text(encoding="utf-8"))
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


def _same_model(source: Path, copy: Path) -> bool:
    """`copy` already holds the model of `source`: same files, same sizes, same metrics and config."""
    if not copy.is_dir():
        return False
    # README.md (the model card) is rewritten once the model has been scored on the held-out test set.
    files = {p.relative_to(source): p.stat().st_size for p in source.rglob("*") if p.is_file() and p.name != CARD_NAME}
    copied = {p.relative_to(copy): p.stat().st_size for p in copy.rglob("*") if p.is_file() and p.name != CARD_NAME}
    return files == copied and all((source / name).read_bytes() == (copy / name).read_bytes()
                                   for name in ("metrics.json", "train_config.yaml") if (source / name).is_file())


def _unlisted_trial_dirs(experiment_dir: Path, known: set[str]) -> list[Path]:
    dirs = [d for d in experiment_dir.glob("trial_*") if (d / "params.json").is_file()
            and d.name.removeprefix("trial_") not in known]
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
