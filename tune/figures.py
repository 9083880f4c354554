"""The plots of a search (PNG), drawn with matplotlib's object API: no pyplot, no display, no global state.

Each function draws one figure from what tune.reports gathered and saves it to `path`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tune.folder import LABEL, PRIMARY, TrialState
from tune.results import TrialRecord

# How each state is drawn in the learning curves and the parameter plots.
STYLE = {TrialState.FINISHED: dict(linestyle="-", marker="o", alpha=0.9),
         TrialState.STOPPED: dict(linestyle="--", marker="x", alpha=0.6),
         TrialState.FAILED: dict(linestyle=":", marker="v", alpha=0.6),
         TrialState.UNFINISHED: dict(linestyle="-.", marker=".", alpha=0.6)}
STATE_LABEL = {TrialState.FINISHED: "finished", TrialState.STOPPED: "stopped early by ASHA",
               TrialState.FAILED: "failed", TrialState.UNFINISHED: "unfinished (running or interrupted)"}
DPI = 110
# Trial colours: tab10 and then tab20's light shades, without the greys (grey marks ASHA-stopped trials).
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_TAB20_LIGHT = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
PALETTE = _TAB10 + _TAB20_LIGHT


def _save(fig: Figure, path: str | Path) -> None:
    fig.savefig(path, dpi=DPI, facecolor="white")


def learning_curves(trials: list[TrialRecord], path: str | Path, metric: str = PRIMARY) -> None:
    """The search's ranking metric (val) against optimizer step, one line per trial; ASHA-stopped
    trials dashed and pale, ending in a cross; the baseline black, the best trial thick."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    best = max((t for t in trials if t.best_value is not None), key=lambda t: (t.best_value, -t.number), default=None)
    colors = {t.number: PALETTE[i % len(PALETTE)] for i, t in enumerate(trials)}
    for t in trials:
        steps = [r["step"] for r in t.history]
        values = [r[metric] for r in t.history]
        if not steps:
            continue
        style = dict(STYLE.get(t.state, STYLE[TrialState.UNFINISHED]))
        color = "black" if t.is_baseline else colors[t.number]
        if t.state == TrialState.STOPPED:
            color = "0.55" if not t.is_baseline else color
        width = 3.0 if t is best else 1.4
        ax.plot(steps, values, color=color, linewidth=width, markersize=5 if t.state != TrialState.STOPPED else 7,
                zorder=3 if t is best else 2, **style)
        tag = f"{t.number}" + (" base" if t.is_baseline else "") + (" best" if t is best else "")
        ax.annotate(tag, (steps[-1], values[-1]), xytext=(4, 0), textcoords="offset points", fontsize=8,
                    color=color, va="center")
    handles = [Line2D([], [], color="C0" if s == TrialState.FINISHED else "0.55", label=STATE_LABEL[s], **STYLE[s])
               for s in STYLE if any(t.state == s for t in trials)]
    baseline = next((t for t in trials if t.is_baseline), None)
    if baseline is not None:
        handles.append(Line2D([], [], color="black", label=f"baseline (trial {baseline.number})"))
    if best is not None:
        handles.append(Line2D([], [], color="0.3", linewidth=3, label=f"best: trial {best.number} ({best.best_value:.4f})"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric + (" (at the trial's threshold; cross-fitted when tuned)" if metric == PRIMARY else ""))
    ax.set_title(f"{metric} per evaluation, {len(trials)} trials")
    ax.grid(alpha=0.3)
    _save(fig, path)


def params_vs_metric(trials: list[TrialRecord], params: list[str], log_params: set[str],
                     bounds: dict[str, tuple[float, float]] | None = None, *, path: str | Path,
                     metric: str = PRIMARY) -> None:
    """Each searched parameter against the trial's best value of the ranking metric, over its
    search range; the baseline's level dashed."""
    bounds = bounds or {}
    scored = [t for t in trials if t.best_value is not None]
    n = max(1, len(params))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    baseline = next((t for t in scored if t.is_baseline), None)
    best = max(scored, key=lambda t: (t.best_value, -t.number), default=None)
    for ax, name in zip(axes, params):
        values = [_number(t.params.get(name)) for t in scored]
        categorical = any(isinstance(v, str) or v is None for v in values)
        if categorical:
            cats = sorted({str(v) for v in values})
            values = [cats.index(str(v)) for v in values]
            ax.set_xticks(range(len(cats)), cats)
        for t, x in zip(scored, values):
            style = STYLE.get(t.state, STYLE[TrialState.UNFINISHED])
            # ASHA-stopped trials (most of a search under ASHA) keep the colour; their marker (x) tells them apart
            color = "black" if t.is_baseline else ("C3" if t is best else "C0")
            ax.scatter([x], [t.best_value], marker="*" if t is best else style["marker"], color=color,
                       s=120 if t is best else 40, alpha=style["alpha"], zorder=3)
            ax.annotate(str(t.number), (x, t.best_value), xytext=(3, 3), textcoords="offset points", fontsize=7)
        if baseline is not None:
            ax.axhline(baseline.best_value, color="black", linestyle="--", linewidth=0.8)
        if name in log_params and not categorical:
            ax.set_xscale("log")
        if name in bounds and not categorical:  # the whole range searched, a margin either side
            low, high = bounds[name]
            if name in log_params and low > 0:
                pad = (high / low) ** 0.04
                ax.set_xlim(low / pad, high * pad)
            else:
                pad = (high - low) * 0.04
                ax.set_xlim(low - pad, high + pad)
        ax.set_xlabel(LABEL.get(name, name))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    fig.suptitle(f"searched parameters against the trial's best {metric} "
                 "(o finished, x stopped by ASHA, * best, black: baseline, dashed: its value)", fontsize=10)
    _save(fig, path)


def importance(values: dict[str, float], method: str, n_trials: int, path: str | Path) -> None:
    """Horizontal bars, the most important parameter on top."""
    names = list(values)[::-1]
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh([LABEL.get(n, n) for n in names], [values[n] for n in names], color="C0")
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=9)
    ax.set_xlim(0, max(values.values(), default=1) * 1.15 or 1)
    ax.set_xlabel("importance (share of the variance of the trials' value in the study)")
    ax.set_title(f"parameter importance, {method} on the Optuna study ({n_trials} trials)")
    _save(fig, path)


def confusion_matrices(best: TrialRecord, row: dict[str, Any], preds: dict[str, Any] | None, path: str | Path) -> None:
    """The best trial's val confusion matrix as the search scored it (at its fixed threshold, or
    cross-fitted when the threshold is tuned) and, when the val probabilities are known, on all of
    val at the threshold tuned on all of it (in-sample: what the saved model uses when tuned)."""
    tuned = row.get("val/threshold") == row.get("val/best_threshold") and row.get(PRIMARY) == row.get("val/f1_macro_tuned")
    first = ("cross-fitted: each half at the threshold tuned on the other" if tuned
             else f"at its threshold {row.get('val/threshold', float('nan')):.3f}")
    panels = [(first, np.array([[row["val/tn"], row["val/fp"]], [row["val/fn"], row["val/tp"]]]))]
    if preds is not None:
        thr = row.get("val/best_threshold")
        labels, probs = np.asarray(preds["labels"]), np.asarray(preds["probs"])
        pred = (probs >= thr).astype(int)
        panels.append((f"all of val at the tuned threshold {thr:.3f} (in-sample)",
                       np.array([[np.sum((labels == 0) & (pred == 0)), np.sum((labels == 0) & (pred == 1))],
                                 [np.sum((labels == 1) & (pred == 0)), np.sum((labels == 1) & (pred == 1))]])))
    fig = Figure(figsize=(4.3 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, cm) in zip(axes, panels):
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{int(count)}\n{count / max(1, cm[i].sum()):.0%}", ha="center", va="center",
                    color="white" if count > cm.max() / 2 else "black", fontsize=11)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"best trial {best.number}: val confusion matrix (evaluation {best.best_evals}, "
                 f"val F1-macro {row.get(PRIMARY, float('nan')):.4f})", fontsize=10)
    _save(fig, path)


def threshold_curve(best: TrialRecord, row: dict[str, Any], preds: dict[str, Any], path: str | Path) -> None:
    """val F1-macro of the best model against the decision threshold."""
    from afqmc.metrics import threshold_curve as curve
    from afqmc.metrics import tune_threshold

    thresholds, scores = curve(preds["labels"], preds["probs"])
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(thresholds, scores, color="C0", label="val F1-macro (in-sample)")
    own = preds["threshold"]
    ax.axvline(own, color="black", linestyle="--", linewidth=1,
               label=f"its saved threshold {own:.3f} (val F1 as scored: {row.get(PRIMARY, float('nan')):.4f})")
    best_thr, best_f1 = tune_threshold(preds["labels"], preds["probs"])
    ax.scatter([best_thr], [best_f1], color="C3", zorder=3,
               label=f"best threshold on all of val {best_thr:.3f}: F1 {best_f1:.4f} (optimistic)")
    ax.set_xlabel("threshold on P(label = 1)")
    ax.set_ylabel("val F1-macro")
    ax.set_title(f"best trial {best.number}: threshold curve on val ({len(preds['labels'])} pairs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    _save(fig, path)


def _number(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] == 1:
        return value[1]
    return value


def anytime(curves: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    """The best value so far against the optimizer updates and the wall time the search used (one
    line per search in `curves`: name -> summary.json's "anytime"), each baseline's value dashed;
    below, where any model on a curve was scored on the held-out test split, its test F1-macro."""
    tested = any(v is not None for c in curves.values() for v in c.get("test_f1") or [])
    long_names = max((len(name) for name in curves), default=0) > 30
    rows = (4 if tested else 2) * len(curves) // (1 if long_names else 2)  # legend lines below the plots
    fig = Figure(figsize=(11, (7.5 if tested else 4.5) + 0.17 * rows), layout="constrained")
    axes = fig.subplots(2 if tested else 1, 2, squeeze=False, sharex="col")
    for i, (name, curve) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)] if len(curves) > 1 else "C0"
        base = curve.get("baseline") or {}
        for col, x in enumerate(("updates", "wall_s")):
            ax = axes[0][col]
            ax.plot(curve[x], curve["best"], drawstyle="steps-post", color=color, linewidth=1.8, marker="o",
                    markersize=3, label=f"{name}: best {curve['metric']} so far (val)")
            if base.get("value") is not None:
                ax.axhline(base["value"], color=color, linestyle="--", linewidth=0.9,
                           label=f"{name}: baseline (trial {base['trial']}) {base['value']:.4f}")
            if tested:
                known = [(a, v) for a, v in zip(curve[x], curve["test_f1"]) if v is not None]
                if known:
                    axes[1][col].plot(*zip(*known), drawstyle="steps-post", color=color, marker="s", markersize=4,
                                      label=f"{name}: the best-so-far model's held-out test F1")
                if base.get("test_f1") is not None:
                    axes[1][col].axhline(base["test_f1"], color=color, linestyle="--", linewidth=0.9,
                                         label=f"{name}: baseline's held-out test F1 {base['test_f1']:.4f}")
    for row in axes:
        for col, ax in enumerate(row):
            ax.grid(alpha=0.3)
    for col, label in enumerate(("optimizer updates used by the search", "wall seconds since the first trial")):
        axes[-1][col].set_xlabel(label)
    axes[0][0].set_ylabel("best so far (val: it chose the trials)")
    if tested:
        axes[1][0].set_ylabel("held-out test F1-macro (no choice read it)")
    # One legend below the plots (the labels of several searches would cover their curves).
    handles, labels = [], []
    for ax in (axes[0][0], axes[-1][0]) if tested else (axes[0][0],):
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, fontsize=7, loc="outside lower center",
               ncols=1 if long_names or len(curves) == 1 else 2)
    fig.suptitle(textwrap.fill(title or "anytime: the best trial so far against the search's spend", 140), fontsize=10)
    _save(fig, path)
