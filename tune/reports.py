"""The results of a search as files in results/NAME/, rebuilt from the experiment folder alone.

    python tune/compare.py --regenerate results/NAME

`write_reports(experiment_dir)` reads what Ray stored (each trial's result.json, the experiment
state) and the Optuna study (optuna.db), trains nothing, and writes:

    trials.csv          one row per trial: state and why, the searched parameters, evaluations, steps,
                        wall time, the best evaluation's val metrics, the gain over the baseline, and
                        the held-out test F1 of the two scored models
    trials.md           the same as a leaderboard by the search's ranking metric, the baseline marked,
                        under the held-out test figures of the best and the baseline trial
    summary.json        best trial, baseline, counts by state, budget used, importance, held-out test,
                        the anytime curve (tune/anytime.py: the best so far against updates and time)
    best_config.yaml    the best trial's complete TrainConfig (and best_model/, its model)
    plots/*.png         learning curves, parameters against the ranking metric, parameter importance,
                        the best trial's confusion matrix and threshold curve, the anytime curve

tune/search.py calls it at the end of every search, an interrupted one included. The models are
scored by tune/scoring.py (the held-out test figures of the best and the baseline trial, the best
model's val probabilities for the threshold curve), once each: later rebuilds need neither the data
nor the models. best_model/ and best_config.yaml are tune/export.py's. What cannot be made (an
unreadable space copy, a plot that fails) is a note in trials.md and summary.json, never a lost table.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afqmc.checkpoint import write_text_atomic
from afqmc.config import PRIMARY, ConfigError, TrainConfig
from tune.anytime import search_curve
from tune.ensemble import ensemble_lines, search_ensemble
from tune.export import card_with_test, export_best
from tune.folder import (BEST_CONFIG, BEST_MODEL, PLOTS, SHORT, SPACE_COPY, STUDY_DB, SUMMARY, TEST_F1, TRIALS_CSV,
                         TRIALS_MD, SearchState, TrialState, fmt_param)
from tune.results import TrialRecord, best_trial, collect_trials, load_study
from tune.scoring import held_out_test, val_predictions
from tune.space import SearchSettings, SearchSpace, folder_space, search_base

STATES = tuple(TrialState)  # finished, stopped early, failed, unfinished
# The trial's metrics in the tables: its best evaluation's val figures (CSV name, Markdown header,
# format), in this order after the ranking metric; then the held-out test F1 (best and baseline only).
METRICS = [(PRIMARY, "val F1", "{:.4f}"), ("val/f1_macro_tuned", "F1 tuned", "{:.4f}"),
           ("val/threshold", "thr", "{:.3f}"), ("val/auc", "AUC", "{:.4f}"), ("val/ap", "AP", "{:.4f}"),
           ("val/accuracy", "acc", "{:.4f}"), ("val/f1_0", "F1 neg", "{:.4f}"), ("val/f1_1", "F1 pos", "{:.4f}"),
           (TEST_F1, "test F1", "{:.4f}")]
METRIC_TITLES = {key: header for key, header, _ in METRICS}
# In trials.csv only: the in-sample best threshold of val and its (optimistic) F1-macro, the loss.
CSV_ONLY = ("val/best_threshold", "val/f1_macro_at_best_threshold", "val/loss")


@dataclass
class Reports:
    """What `write_reports` wrote."""

    experiment_dir: Path
    frame: pd.DataFrame
    summary: dict[str, Any]
    best: TrialRecord | None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- the table -----------------------------------------------------------------------------------


def param_names(trials: list[TrialRecord], state: SearchState) -> list[str]:
    """The searched parameters, in the order of the space file."""
    names = list(state.baseline)
    return names + sorted({k for t in trials for k in t.params} - set(names))


def best_row(trial: TrialRecord) -> dict[str, Any]:
    """The metrics of the trial's best evaluation (the one its best checkpoint holds)."""
    for row in trial.history:
        if row.get("evals") == trial.best_evals:
            return row
    return {}


def trials_frame(trials: list[TrialRecord], state: SearchState,
                 test: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per trial, in trial order; the columns of trials.csv. The ranking metric's column
    holds the trial's best value (its best evaluation's); `gain_vs_baseline` is in that metric;
    `test/f1_macro` is filled for the scored models (the best and the baseline trial)."""
    params = param_names(trials, state)
    metric = state.metric
    baseline = next((t for t in trials if t.is_baseline), None)
    base_value = baseline.best_value if baseline else None
    tested = {r["trial"]: r["metrics"]["f1_macro"] for r in (test or {}).get("models", {}).values() if r}
    rows = []
    for t in trials:
        best = best_row(t)
        row: dict[str, Any] = {"trial": t.number, "trial_id": t.trial_id, "state": t.state, "reason": t.reason,
                               "baseline": int(t.is_baseline)}
        row.update({name: _plain(t.params.get(name)) for name in params})
        row.update({"evals": t.evals, "planned_evals": t.planned_evals, "steps": t.steps,
                    "wall_time_s": None if t.wall_time_s is None else round(t.wall_time_s, 1)})
        row[metric] = t.best_value
        row["gain_vs_baseline"] = (t.best_value - base_value) if t.best_value is not None and base_value is not None \
            else None
        for key in [k for k, *_ in METRICS if k not in (metric, TEST_F1)] + list(CSV_ONLY):
            row[key] = best.get(key)
        row[TEST_F1] = tested.get(t.number)
        row.update({"best_evals": t.best_evals, "best_step": best.get("step"),
                    # a confirmation-stage run (tune/confirm.py): the trial whose configuration it re-runs, its seed
                    "confirm_of": t.confirm_of, "seed": t.seed,
                    "error": t.error or "", "checkpoint": t.best_checkpoint or "", "path": t.path})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("evals", "steps", "best_evals", "best_step", "planned_evals", "confirm_of", "seed"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame


def ranked(frame: pd.DataFrame, by: str = PRIMARY, ascending: bool = False) -> pd.DataFrame:
    """Sorted by `by`; trials without a value last; ties by trial number."""
    return frame.sort_values([by, "trial"], ascending=[ascending, True], na_position="last", kind="stable")


# --- Markdown ------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs tabulate, which this project does not use)."""
    right = set(range(len(headers))) if right is None else right
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in [headers, *rows]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) \
            + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])]) + "\n"


def fmt(value: Any, spec: str = "{:.4f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value is pd.NA:
        return "-"
    if isinstance(value, (float, np.floating)):
        return spec.format(float(value))
    return str(value)


def fmt_gain(value: Any) -> str:
    return "-" if value is None or value is pd.NA or not math.isfinite(float(value)) else f"{float(value):+.4f}"


STATE_LABEL = {TrialState.FINISHED: "finished", TrialState.STOPPED: "stopped (ASHA)", TrialState.FAILED: "failed",
               TrialState.UNFINISHED: "unfinished"}


def metric_columns(frame: pd.DataFrame, metric: str, params: list[str]) -> list[tuple[str, str, str]]:
    """The metric columns of a leaderboard: the ranking metric first, then the others that say
    something here (F1 tuned only where some trial's threshold is not tuned, thr only where it is
    not a searched column, test F1 only where a model was scored)."""
    first = next(((k, h, f) for k, h, f in METRICS if k == metric), (metric, metric, "{:.4f}"))
    cols = [first]
    for key, header, spec in METRICS:
        if key == metric or key not in frame:
            continue
        if key == "val/f1_macro_tuned" and PRIMARY in frame and \
                (frame[key] - frame[PRIMARY]).abs().fillna(0).max() < 1e-12:
            continue  # every threshold is tuned: the column repeats val F1
        if (key == "val/threshold" and "threshold" in params) or (key == TEST_F1 and frame[key].isna().all()):
            continue
        cols.append((key, header, spec))
    return cols


def leaderboard_rows(frame: pd.DataFrame, params: list[str], search: str | None = None,
                     rank: bool = True, metric: str = PRIMARY) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of a leaderboard of `frame` in its order (the caller sorts it)."""
    cols = metric_columns(frame, metric, params)
    headers = (["rank"] if rank else []) + (["search"] if search is not None else []) + \
              ["trial", "state", "evals", "steps", cols[0][1], "gain"] + [h for _, h, _ in cols[1:]] + \
              [SHORT.get(p, p) for p in params] + ["min"]
    rows = []
    for i, r in enumerate(frame.to_dict("records"), start=1):
        trial = f"{r['trial']}" + (" (baseline)" if r["baseline"] else "")
        cells = ([str(i)] if rank else []) + ([str(r.get("search", search))] if search is not None else [])
        cells += [trial, STATE_LABEL.get(r["state"], r["state"]), fmt(r["evals"]), fmt(r["steps"]),
                  fmt(r.get(cols[0][0]), cols[0][2]), fmt_gain(r["gain_vs_baseline"])]
        cells += [fmt(r.get(key), spec) for key, _, spec in cols[1:]]
        cells += [fmt_param(r.get(p)) for p in params]
        cells += [fmt(None if r["wall_time_s"] is None or pd.isna(r["wall_time_s"]) else r["wall_time_s"] / 60,
                      "{:.1f}")]
        rows.append(cells)
    return headers, rows


def trials_markdown(name: str, frame: pd.DataFrame, params: list[str], summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    budget = summary["budget"]
    settings = summary.get("settings") or {}
    metric = summary.get("metric") or PRIMARY
    best, base = summary["best"], summary["baseline"]
    lines = [f"# Search `{name}`: trials by {metric}", ""]
    how = (f"ASHA on {settings.get('asha_metric', PRIMARY)} (grace {settings.get('grace_period')}, reduction factor "
           f"{settings.get('reduction_factor')})" if summary.get("scheduler") == "asha" else "FIFO")
    lines.append(f"{summary['trials']} of {summary['num_samples']} trials, up to {settings.get('max_evals', '?')} "
                 f"evaluations each, {how}, TPE seed {settings.get('seed', '?')} on the best {metric}: " +
                 ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != TrialState.UNFINISHED) + ".")
    used = f"{budget['evals']} of {budget['max_evals_total']} evaluations ({budget['evals_fraction']:.0%})" \
        if budget.get("max_evals_total") else f"{budget['evals']} evaluations"
    lines.append(f"Budget used: {used}, {budget['optimizer_steps']:,} optimizer steps, "
                 f"{budget['trial_seconds'] / 60:.1f} trial-minutes in {budget['wall_seconds'] / 60:.1f} minutes.")
    lines.append("")
    reuse = extension_lines(summary.get("extensions") or [], metric) + warm_start_lines(summary.get("warm_start"))
    if reuse:
        lines += [f"- {line.strip()}" for line in reuse] + [""]
    if best:
        if best["trial"] == (base or {}).get("trial"):
            gain = " (the baseline itself)"
        elif best.get("gain_vs_baseline") is not None:
            gain = f" ({best['gain_vs_baseline']:+.4f} over the baseline)"
        else:
            gain = ""
        lines.append(f"Best: trial {best['trial']}, {metric} {best['value']:.4f}{gain}, at step "
                     f"{best['best_step']}; config in `{BEST_CONFIG}`, model in `{BEST_MODEL}/`.")
    if base:
        value = f"{metric} {base['value']:.4f} (rank {base.get('rank') or '-'})" if base.get("value") is not None \
            else base["reason"] or base["state"]
        lines.append(f"Baseline: trial {base['trial']}, {value}.")
    lines += ["", "**Val numbers chose** each trial's checkpoint and threshold, ASHA's cuts and the winner: they are "
                  "optimistic. **Held-out test numbers** come from pairs that no choice has seen, each model scored "
                  "once at its saved threshold:", ""]
    lines += [f"- {line}" for line in test_lines(summary.get("test"))]
    lines += [f"- {line.strip()}" for line in confirmation_lines(summary.get("confirmation"), metric)]
    lines += [f"- {line}" for line in ensemble_lines(summary.get("ensemble"))]
    ranked_by = "" if metric == PRIMARY else f"{METRIC_TITLES.get(metric, metric)}: the trial's best value; "
    lines += ["", f"Each trial is shown at its best evaluation by {metric} (val). {ranked_by}gain: over the baseline, "
                  "in that metric; val F1: F1-macro at the trial's threshold thr (when it is tuned: "
                  "chosen on one half of val, scored on the other, both ways, averaged); F1 tuned: the same "
                  "cross-fitted figure for a tuned threshold; AUC, AP: ROC-AUC and average precision (no threshold); "
                  "F1 neg/pos: per-class F1; test F1: held-out; min: wall time of the trial.", ""]
    headers, rows = leaderboard_rows(ranked(frame, metric), params, metric=metric)
    lines.append(markdown_table(headers, rows, right={i for i, h in enumerate(headers) if h not in ("trial", "state")}))
    imp = summary.get("importance") or {}
    if imp.get("values"):
        lines.append(f"Parameter importance ({imp['method']} on the Optuna study, {imp['trials']} "
                     f"{imp.get('basis', 'trials')}): " +
                     ", ".join(f"{SHORT.get(k, k)} {v:.2f}" for k, v in imp["values"].items()) + ".")
        lines.append("")
    failed = frame[frame["state"] == TrialState.FAILED]
    if len(failed):
        lines.append("Failed trials:")
        lines += [f"- trial {r['trial']}: {r['reason']}" for r in failed.to_dict("records")]
        lines.append("")
    if summary.get("plots"):
        lines.append("Plots: " + ", ".join(f"[{Path(p).stem}]({p})" for p in summary["plots"]) + ".")
        lines.append("")
    if summary.get("notes"):  # what could not be made, and why
        lines += ["Notes:", *(f"- {note}" for note in summary["notes"]), ""]
    return "\n".join(lines)


# --- the Optuna study ----------------------------------------------------------------------------


def param_importances(experiment_dir: Path, seed: int = 0) -> dict[str, Any]:
    """fANOVA importances of the searched parameters for the study's value (a trial's best val F1-macro)."""
    import optuna

    try:
        study = load_study(experiment_dir)
        if study is None:
            return {"method": "fANOVA", "values": {}, "trials": 0, "error": f"no Optuna study in {STUDY_DB}"}
        study = _own_study(study)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        basis = "completed trials"
        if len(complete) < 2 or len({t.value for t in complete}) == 1:
            # Too few completed trials (ASHA cut the others: a small search completes one) or nothing
            # for fANOVA to explain: every trial at the same budget instead.
            study, complete, basis = _at_common_evaluation(study)
            if len(complete) < 2:
                return {"method": "fANOVA", "values": {}, "trials": len(complete),
                        "error": "fewer than 2 trials with a value at a common evaluation"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
        values = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        return {"method": "fANOVA", "values": values, "trials": len(complete), "basis": basis}
    except Exception as exc:  # the tables must not depend on it
        return {"method": "fANOVA", "values": {}, "trials": 0, "error": f"{type(exc).__name__}: {exc}"}


def _own_study(study):
    """The study, or, when it holds other trials than the search's own (a warm start's informing
    trials, the confirmation stage's runs), an in-memory copy of the search's own: the importances
    are those of what the search sampled."""
    import optuna

    from tune.confirm import own_search_trials

    own = own_search_trials(study)
    if len(own) == sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials):
        return study
    with _quiet_optuna():
        copy = optuna.create_study(direction=study.direction)
    copy.add_trials([t for t in own if t.state.is_finished()])
    return copy


@contextlib.contextmanager
def _quiet_optuna():
    """No "A new study created in memory" line for a study made only to compute importances."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _at_common_evaluation(study):
    """A study of the finished and ASHA-cut trials, each valued at the furthest evaluation all of
    them reached (ASHA's first rung, usually): their intermediate values there, a comparison at
    equal budget. Returns (study, its trials, the basis in words)."""
    import optuna

    ended = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
             and t.intermediate_values]
    if not ended:
        return study, [], "no trial with evaluations"
    step = min(max(t.intermediate_values) for t in ended)
    valued = [t for t in ended if step in t.intermediate_values]
    with _quiet_optuna():
        common = optuna.create_study(direction=study.direction)
    common.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                 value=t.intermediate_values[step]) for t in valued])
    return common, valued, (f"every finished and ASHA-cut trial at evaluation {step}, the furthest all of them "
                            f"reached (too few completed trials to explain, or they tied)")


# --- the held-out test set -------------------------------------------------------------------------


def test_lines(test: dict[str, Any] | None) -> list[str]:
    """The held-out test figures in words (trials.md, the end of a search, compare.py)."""
    if not test:
        return ["held-out test: none (set test_ratio, or a labelled test_file, in the space to score the winner "
                "on pairs that no choice has seen)"]
    lines = [f"held-out test: {test['pairs']} pairs ({test['source']}), never read by training, early stopping, "
             f"the checkpoint or threshold choice, ASHA or TPE"]
    for role, m in test["models"].items():
        if m is None:
            lines.append(f"{role}: no kept model to score")
            continue
        x = m["metrics"]
        cut = f"; stopped by ASHA after {m['evals']} evaluations" if m["state"] == TrialState.STOPPED else ""
        lines.append(f"{role} (trial {m['trial']}{cut}): test F1-macro {x['f1_macro']:.4f}, accuracy "
                     f"{x['accuracy']:.4f}, AUC {x['auc']:.4f}, at its threshold {x['threshold']:.4f}")
    if test.get("note"):
        lines.append(f"note: {test['note']}")
    if test.get("gain_f1_macro") is not None and test["models"]["best"]["trial"] != test["models"]["baseline"]["trial"]:
        lines.append(f"gain of the best over the baseline on test: {test['gain_f1_macro']:+.4f} F1-macro (one split, "
                     f"one seed: `python tune/compare.py --reseed 3` says whether it exceeds seed noise)")
    return lines


# --- everything ----------------------------------------------------------------------------------


def write_reports(experiment_dir: str | Path, trials: list[TrialRecord] | None = None,
                  test_file: str | None = None, plots: bool = True, log=print, test_pairs=None,
                  ensemble_size: int | None = None, val_pairs=None) -> Reports:
    """Write trials.csv, trials.md, summary.json, best_config.yaml (+ best_model/) and plots/, score
    the best and the baseline trial on the held-out test set, and build the ensemble of the kept
    models (ensemble/: `ensemble_size` members at most, by default the space's search.ensemble_size).

    Reads only the experiment folder (and, once, the val and test data); works on a finished,
    interrupted or running search. `test_file` goes into best_config.yaml; by default the space's own.
    `test_pairs`, `val_pairs`: the held-out test and the val pairs, when the caller (the search's
    driver) holds them already.
    """
    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    trials = collect_trials(experiment_dir) if trials is None else trials
    settings = state.settings
    metric = state.metric
    notes: list[str] = []
    files: list[Path] = []
    space = _space(experiment_dir, state, notes)
    base = None if space is None else search_base(space, state.cwd)

    best = best_trial(trials)
    if best is not None:
        export_best(trials, experiment_dir, test_file if test_file is not None else (base.test_file if base else None),
                    metric=metric)
        files += [experiment_dir / BEST_CONFIG, experiment_dir / BEST_MODEL]
    else:
        notes.append(f"no trial has a checkpoint with a val {metric} yet: no {BEST_CONFIG}")
    test = _held_out_test(experiment_dir, base, best, next((t for t in trials if t.is_baseline), None), test_pairs,
                          notes)

    frame = trials_frame(trials, state, test)
    params = param_names(trials, state)
    write_text_atomic(experiment_dir / TRIALS_CSV, frame.drop(columns=["path"]).to_csv(index=False))
    files.append(experiment_dir / TRIALS_CSV)

    importance = param_importances(experiment_dir, seed=settings.get("seed", 0))
    if importance.get("error"):
        notes.append(f"parameter importance: {importance['error']}")
    summary = _summary(experiment_dir, trials, frame, state, best, importance)
    summary.update(test=test, anytime=search_curve(experiment_dir, trials, metric, test))
    summary["confirmation"] = _confirmation(experiment_dir, base, trials, test_pairs, notes)
    k = settings.get("ensemble_size", SearchSettings.ensemble_size) if ensemble_size is None else ensemble_size
    summary["ensemble"] = _ensemble(experiment_dir, base, trials, best, k, test_pairs, val_pairs, notes,
                                    settings.get("ensemble_metric", SearchSettings.ensemble_metric),
                                    settings.get("ensemble_margin", SearchSettings.ensemble_margin),
                                    settings.get("grace_period") if state.scheduler == "asha" else None)

    if plots:
        made = _draw_plots(experiment_dir, state, space, trials, params, best, importance, summary, notes, val_pairs)
        summary["plots"] = [str(p.relative_to(experiment_dir)) for p in made]
        files += made
    else:  # tables only: the plots already there stay listed
        summary["plots"] = sorted(str(p.relative_to(experiment_dir)) for p in (experiment_dir / PLOTS).glob("*.png"))
    summary["notes"] = notes
    write_text_atomic(experiment_dir / TRIALS_MD, trials_markdown(experiment_dir.name, frame, params, summary))
    write_text_atomic(experiment_dir / SUMMARY, json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")
    files += [experiment_dir / TRIALS_MD, experiment_dir / SUMMARY]
    for note in notes:
        log(f"note: {note}")
    return Reports(experiment_dir, frame, summary, best, files, notes)


def _held_out_test(experiment_dir: Path, base: TrainConfig | None, best: TrialRecord | None,
                   baseline: TrialRecord | None, test_pairs, notes: list[str]) -> dict[str, Any] | None:
    """The held-out test figures of the best and the baseline trial (tune.scoring), and the exported
    model's card with the best's; a failure is a note (the tables must not depend on it)."""
    if base is None:  # the note on the space copy says why
        return None
    try:
        test = held_out_test(experiment_dir, base, {"best": best, "baseline": baseline}, test_pairs)
    except Exception as exc:  # noqa: BLE001 -- any failure to score: the tables are still written, with the reason
        notes.append(f"held-out test not scored: {type(exc).__name__}: {exc}")
        return None
    scored = (test or {}).get("models", {}).get("best")
    if scored is not None and (experiment_dir / BEST_MODEL).is_dir():  # the exported model's card gets its figures
        card_with_test(experiment_dir / BEST_MODEL, {**scored["metrics"], "source": test["source"]})
    return test


def _confirmation(experiment_dir: Path, base: TrainConfig | None, trials: list[TrialRecord], test_pairs,
                  notes: list[str]) -> dict[str, Any] | None:
    """The confirmation stage's figures (tune.confirm.summary); a failure is a note."""
    from tune.confirm import summary as confirmation_summary
    from tune.folder import CONFIRM_PLAN

    try:
        study = load_study(experiment_dir)
        plan = study.user_attrs.get(CONFIRM_PLAN) if study is not None else None
        return confirmation_summary(experiment_dir, base, trials, plan, test_pairs)
    except Exception as exc:  # noqa: BLE001 -- the tables must not depend on it
        notes.append(f"confirmation figures not made: {type(exc).__name__}: {exc}")
        return None


def _ensemble(experiment_dir: Path, base: TrainConfig | None, trials: list[TrialRecord], best: TrialRecord | None,
              k: int, test_pairs, val_pairs, notes: list[str], metric: str, margin: float = 0.0,
              first_rung: int | None = None) -> dict[str, Any] | None:
    """The ensemble of the kept models (tune.ensemble.search_ensemble); a failure is a note, as the
    held-out test scores' (the tables must not depend on it)."""
    if base is None or not k:  # no space copy (its note says why), or --ensemble 0 / ensemble_size: 0
        return None
    try:
        return search_ensemble(experiment_dir, base, trials, best, k, test_pairs, val_pairs, metric, margin, first_rung)
    except Exception as exc:  # noqa: BLE001 -- any failure to build it: the tables are still written, with the reason
        notes.append(f"ensemble not built: {type(exc).__name__}: {exc}")
        return None


def _draw_plots(experiment_dir: Path, state: SearchState, space: SearchSpace | None, trials: list[TrialRecord],
                params: list[str], best: TrialRecord | None, importance: dict[str, Any], summary: dict[str, Any],
                notes: list[str], val_pairs=None) -> list[Path]:
    """Every plot that can be drawn (a failing one is a note, never a lost table); returns the files.
    Also checks the best model against its stored val value (summary["threshold_curve"]).
    `val_pairs`: the search's val split, when the caller holds it."""
    from tune import figures

    metric = state.metric
    plot_dir = experiment_dir / PLOTS
    plot_dir.mkdir(exist_ok=True)
    jobs = [("learning_curves.png", lambda p: figures.learning_curves(trials, p, metric)),
            ("params_vs_f1.png", lambda p: figures.params_vs_metric(trials, params, *_scales(space),
                                                                    path=p, metric=metric))]
    if summary.get("anytime", {}).get("best"):
        jobs.append(("anytime.png", lambda p: figures.anytime({experiment_dir.name: summary["anytime"]}, p)))
    if importance.get("values"):
        jobs.append(("importance.png", lambda p: figures.importance(importance["values"], importance["method"],
                                                                    importance["trials"], p)))
    if best is not None:
        preds = None
        try:
            preds = val_predictions(experiment_dir, best, metric, val_pairs)
            summary["threshold_curve"] = {k: preds[k] for k in ("trial", "threshold", "metric", "stored_value",
                                                                 "recomputed_value", "source")}
            if abs(preds["recomputed_value"] - best.best_value) > 1e-4:
                notes.append(f"the best model's recomputed val {metric} {preds['recomputed_value']:.4f} differs "
                             f"from the search's {best.best_value:.4f}: has the data file changed?")
        except Exception as exc:
            notes.append(f"threshold curve skipped: the val data or the best model could not be read "
                         f"({type(exc).__name__}: {exc})")
        jobs.append(("confusion_matrix.png", lambda p: figures.confusion_matrices(best, best_row(best), preds, p)))
        if preds is not None:
            jobs.append(("threshold_curve.png", lambda p: figures.threshold_curve(best, best_row(best), preds, p)))
    made = []
    for name, job in jobs:
        path = plot_dir / name
        try:
            job(path)
            made.append(path)
        except Exception as exc:  # a plot must not cost the tables
            notes.append(f"{name} not drawn: {type(exc).__name__}: {exc}")
    for stale in set(plot_dir.glob("*.png")) - set(made):  # e.g. from before a resume
        stale.unlink()
    return made


def _summary(experiment_dir: Path, trials: list[TrialRecord], frame: pd.DataFrame, state: SearchState,
             best: TrialRecord | None, importance: dict[str, Any]) -> dict[str, Any]:
    settings = state.settings
    metric = state.metric
    num_samples = state.num_samples or settings.get("num_samples") or len(trials)
    max_evals = settings.get("max_evals")
    order = ranked(frame, metric)
    ranks = {int(t): i for i, t in enumerate(order[order[metric].notna()]["trial"], start=1)}

    def describe(t: TrialRecord | None) -> dict[str, Any] | None:
        if t is None:
            return None
        row = frame[frame["trial"] == t.number].iloc[0].to_dict()
        out = {"trial": t.number, "trial_id": t.trial_id, "state": t.state, "reason": t.reason,
               "value": t.best_value, "gain_vs_baseline": row["gain_vs_baseline"], "rank": ranks.get(t.number),
               "evals": t.evals, "best_evals": t.best_evals, "best_step": row["best_step"], "steps": t.steps,
               "wall_time_s": t.wall_time_s, "params": t.params,
               "metrics": {k: v for k, v in best_row(t).items()
                           if k.startswith("val/") or k in ("step", "epoch", "train/loss")},
               "checkpoint": t.best_checkpoint}
        return out

    baseline = next((t for t in trials if t.is_baseline), None)
    walls = [t.wall_time_s for t in trials if t.wall_time_s is not None]
    search = [t for t in trials if t.confirm_of is None]  # the confirmation stage's runs are counted apart
    evals_done = int(sum(t.evals for t in trials))
    max_total = int(num_samples * max_evals) if max_evals else None
    best_now = {"best": None if best is None else best.best_value, "best_trial": None if best is None else best.number,
                "updates": int(sum(t.steps for t in trials)), "trials": len(trials)}
    return {
        "name": experiment_dir.name, "experiment_dir": str(experiment_dir), "metric": metric,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "num_samples": num_samples, "trials": len(search), "confirmation_runs": len(trials) - len(search),
        "complete": len(search) >= num_samples and all(t.state in STATES[:3] for t in trials),
        "counts": {s: sum(t.state == s for t in search) for s in STATES},
        "best": describe(best), "baseline": describe(baseline),
        "budget": {"evals": evals_done, "max_evals_total": max_total,
                   "evals_fraction": evals_done / max_total if max_total else None,
                   "optimizer_steps": int(sum(t.steps for t in trials)),
                   "trial_seconds": float(sum(walls)),
                   "wall_seconds": _busy_seconds(trials)},
        "settings": settings, "scheduler": state.scheduler,
        "importance": importance,
        "extensions": extension_figures(state.extensions, best_now),
        "warm_start": warm_start_summary(state.warm_start),
    }


def extension_figures(extensions: list[dict[str, Any]], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Each extension of the search (SearchState.extensions) with what it added: the best val value and
    the updates before it (recorded when it started) and after it (the next one's before, or now)."""
    out = []
    for i, ext in enumerate(extensions):
        after = extensions[i + 1]["before"] if i + 1 < len(extensions) else now
        before = ext.get("before") or {}
        out.append({**ext, "after": after,
                    "updates_spent": after["updates"] - before.get("updates", 0) if before else None})
    return out


def confirmation_lines(conf: dict[str, Any] | None, metric: str) -> list[str]:
    from tune.confirm import lines

    return lines(conf, metric)


def warm_start_lines(warm: dict[str, Any] | None) -> list[str]:
    """summary.json's warm start in words (tune/warmstart.describe over its summary)."""
    from tune.warmstart import describe

    if not warm:
        return []
    return describe({"top_k": warm["top_k"], "sources": warm["sources"], "enqueue": warm["enqueued"],
                     "left_out": warm["left_out"], "inform": []})


def extension_lines(extensions: list[dict[str, Any]], metric: str) -> list[str]:
    """The extensions in words (the end of a search, trials.md, compare.py)."""
    lines = []
    for ext in extensions:
        before, after = ext.get("before") or {}, ext["after"]

        def best(x):
            return "none" if x.get("best") is None else f"{x['best']:.4f} (trial {x['best_trial']})"

        lines.append(f"extended from {ext['from']} to {ext['to']} trials on {ext['started']}: best {metric} (val, "
                     f"the value that chose) {best(before)} before, {best(after)} after; the new trials spent "
                     f"{ext['updates_spent']:,} optimizer updates (the {before.get('trials', '?')} before them: "
                     f"{before.get('updates', 0):,})")
    return lines


def warm_start_summary(warm: dict[str, Any]) -> dict[str, Any] | None:
    """search.json's warm start for summary.json: what was reused and why not the rest (the informing
    trials counted by source, not listed)."""
    if not warm:
        return None
    counts: dict[str, int] = {}
    for item in warm.get("inform", []):
        source = item["from"].rsplit(" trial ", 1)[0]
        counts[source] = counts.get(source, 0) + 1
    return {"top_k": warm.get("top_k"),
            "sources": [{**src, "informing": counts.get(src["path"], 0)} for src in warm.get("sources", [])],
            "enqueued": warm.get("enqueue", []), "left_out": warm.get("left_out", [])}


def _busy_seconds(trials: list[TrialRecord]) -> float:
    """The wall time during which some trial ran: the union of the trials' spans (an extended or resumed
    search's pause between its runs does not count)."""
    spans = []
    for t in trials:
        if not t.history:
            continue
        first, last = t.history[0], t.history[-1]
        if first.get("timestamp") is None or last.get("timestamp") is None:
            continue
        spans.append((first["timestamp"] - (first.get("time_total_s") or 0), last["timestamp"]))
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return float(total)


def _space(experiment_dir: Path, state: SearchState, notes: list[str]) -> SearchSpace | None:
    """The search's space from its folder; None, with a note of what is skipped, when it cannot be read."""
    try:
        return folder_space(experiment_dir, state)
    except (ConfigError, OSError) as exc:  # SpaceError is a ConfigError; a missing copy an OSError or ConfigError
        notes.append(f"{SPACE_COPY} not readable ({exc}): no held-out test scores, best_config.yaml without the "
                     f"space's test_file, and the parameter plots without the space's ranges and log scales "
                     f"(learning_rate is drawn on a log scale)")
        return None


def _scales(space: SearchSpace | None) -> tuple[set[str], dict[str, tuple[float, float]]]:
    """The parameters searched on a log scale, and the range of each numeric one (from the space)."""
    if space is None:  # the usual log-scale parameter; the note says the space was not read
        return {"learning_rate"}, {}
    logs = {n for n, p in space.params.items() if p.type == "loguniform" or p.log}
    return logs, {n: (p.low, p.high) for n, p in space.params.items() if p.type != "choice"}


def _plain(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] == 1:  # class weights [1, r]
        return value[1]
    return value


def _clean(value: Any) -> Any:
    """Plain JSON: numpy numbers as Python ones, NaN and pandas' NA as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or value is pd.NA or isinstance(value, (bool, str)):
        return None if value is pd.NA else value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def regenerate(experiments: list[str | Path], plots: bool = True, print_fn=print, ensemble_size: int | None = None) -> None:
    """Rebuild the reports of each search from its folder alone (`compare.py --regenerate`; with
    `ensemble_size`, `--ensemble K`: the ensemble of at most K kept models, 0 for none)."""
    for exp in experiments:
        reports = write_reports(exp, plots=plots, ensemble_size=ensemble_size)
        for line in ensemble_lines(reports.summary.get("ensemble")):
            print_fn(line)
        print_fn(f"{exp}: wrote " + ", ".join(str(p.relative_to(reports.experiment_dir)) for p in reports.files))
