"""Classification metrics on P(label = 1), computed with sklearn, and the decision threshold.

The threshold does not change training; it is chosen after the fact from the scores. Three uses:

- a fixed threshold (a number in the config, or one a search samples): `classification_metrics`;
- `threshold: tuned`: `tune_threshold` finds the exact best F1-macro threshold of a set of scores
  (every distinct decision the scores allow, not a fixed grid, so that near-constant early
  probabilities still rank), and `cross_fitted` scores that choice honestly: the threshold chosen
  on one half of val is scored on the other half, and the other way round, and the two are averaged;
- threshold-free: ROC-AUC and average precision (`ranking_metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from afqmc.config import TUNED
# The grid of the threshold-curve plot: 0.02, 0.03, ..., 0.98.
THRESHOLDS = np.round(np.arange(0.02, 0.985, 0.01), 2)


def best_key(metric: str) -> str:
    """The key of a run's best value so far of `metric` in its reports: best/val_f1_macro."""
    return "best/" + metric.replace("/", "_")


def classification_metrics(labels, prob1, threshold: float, prefix: str = "val/") -> dict[str, float]:
    """Accuracy, F1-macro, per-class precision/recall/F1 and the confusion matrix, as flat keys."""
    labels = np.asarray(labels)
    pred = (np.asarray(prob1) >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=0)
    (tn, fp), (fn, tp) = confusion_matrix(labels, pred, labels=[0, 1])
    out = {
        "accuracy": accuracy_score(labels, pred),
        "f1_macro": f1_score(labels, pred, average="macro", labels=[0, 1], zero_division=0),
        "threshold": threshold,
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
        "num_samples": len(labels),
    }
    for c in (0, 1):
        out[f"precision_{c}"] = precision[c]
        out[f"recall_{c}"] = recall[c]
        out[f"f1_{c}"] = f1[c]
    return {f"{prefix}{k}": (int(v) if isinstance(v, (np.integer, int)) else float(v)) for k, v in out.items()}


def ranking_metrics(labels, prob1, prefix: str = "val/") -> dict[str, float]:
    """ROC-AUC and average precision (sklearn): how well the scores rank the pairs, at no threshold.
    NaN when the labels hold one class only (neither is defined then)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return {f"{prefix}auc": math.nan, f"{prefix}ap": math.nan}
    return {f"{prefix}auc": float(roc_auc_score(labels, prob1)),
            f"{prefix}ap": float(average_precision_score(labels, prob1))}


def f1_macro_curve(labels, prob1) -> tuple[np.ndarray, np.ndarray]:
    """F1-macro at every distinct decision the scores allow, exactly, in O(n log n).

    Predicting 1 when P >= t changes only where t passes a score, so the candidates are one
    threshold below the lowest score (everything positive), the midpoints between consecutive
    distinct scores, and one above the highest (everything negative). Returns the thresholds
    (ascending) and the F1-macro at each, equal to sklearn's `f1_score(average="macro")`.
    """
    labels = np.asarray(labels).astype(int)
    prob1 = np.asarray(prob1, dtype=np.float64)
    values, inverse = np.unique(prob1, return_inverse=True)
    pos_at = np.bincount(inverse, weights=labels, minlength=len(values))
    all_at = np.bincount(inverse, minlength=len(values)).astype(np.float64)
    # Candidate k (k = 0..m) predicts 1 for the scores values[k:]: counts from the top down.
    tp = np.concatenate([np.cumsum(pos_at[::-1])[::-1], [0.0]])
    predicted = np.concatenate([np.cumsum(all_at[::-1])[::-1], [0.0]])
    n_pos = float(labels.sum())
    n_neg = len(labels) - n_pos
    fp = predicted - tp
    fn = n_pos - tp
    tn = n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
    low = values[0] / 2 if values[0] > 0 else np.nextafter(values[0], -np.inf)
    high = max((values[-1] + 1.0) / 2, float(np.nextafter(values[-1], np.inf)))
    thresholds = np.concatenate([[low], (values[:-1] + values[1:]) / 2, [high]])
    return thresholds, (f1_pos + f1_neg) / 2


def tune_threshold(labels, prob1) -> tuple[float, float]:
    """The threshold with the highest F1-macro on these scores (the lowest such one on ties), and
    that F1-macro. In-sample: the figure is optimistic for the pairs that chose it."""
    thresholds, scores = f1_macro_curve(labels, prob1)
    i = int(np.argmax(scores))
    return float(thresholds[i]), float(scores[i])


def halves(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the indices, stratified on the label, seeded: the same split at
    every evaluation of a run."""
    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    folds: tuple[list[int], list[int]] = ([], [])
    start = 0
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[start % 2].extend(idx[0::2].tolist())
        folds[(start + 1) % 2].extend(idx[1::2].tolist())
        start += len(idx)  # an odd class alternates the next one's first pair, so the halves stay even
    return np.sort(folds[0]), np.sort(folds[1])


def cross_fitted(labels, prob1, seed: int = 0, prefix: str = "val/") -> dict[str, float]:
    """The tuned threshold scored honestly (2-fold cross-fitting): choose it on one half, score the
    other half at it, swap, average. F1-macro, accuracy and the per-class figures are the two
    halves' mean; the confusion counts are their sum (every pair predicted once, by a threshold
    that its own label did not choose)."""
    labels = np.asarray(labels).astype(int)
    prob1 = np.asarray(prob1, dtype=np.float64)
    a, b = halves(labels, seed)
    per_half = []
    for choose, score in ((a, b), (b, a)):
        threshold, _ = tune_threshold(labels[choose], prob1[choose])
        per_half.append(classification_metrics(labels[score], prob1[score], threshold, prefix=""))
    out: dict[str, float] = {}
    for key in per_half[0]:
        if key in ("tn", "fp", "fn", "tp", "num_samples"):
            out[key] = int(sum(m[key] for m in per_half))
        elif key != "threshold":
            out[key] = float(np.mean([m[key] for m in per_half]))
    return {f"{prefix}{k}": v for k, v in out.items()}


def evaluation_metrics(labels, prob1, threshold: float | str, seed: int = 0, prefix: str = "val/") -> dict[str, Any]:
    """Every figure of one evaluation, as flat prefixed keys:

    - `f1_macro`, `accuracy`, per-class precision/recall/F1, confusion counts: the run's decisions,
      at its fixed `threshold`, or (threshold `tuned`) cross-fitted;
    - `threshold`: the run's decision threshold (the fixed one, or the one tuned on all the pairs:
      what the saved model uses);
    - `f1_macro_tuned`: the cross-fitted F1-macro of a tuned threshold, in either mode (equal to
      `f1_macro` when the threshold is tuned);
    - `best_threshold`, `f1_macro_at_best_threshold`: the tuned threshold on all the pairs and its
      in-sample F1-macro (optimistic: the same pairs chose and scored it);
    - `auc`, `ap`: ROC-AUC and average precision.
    """
    best, best_f1 = tune_threshold(labels, prob1)
    crossed = cross_fitted(labels, prob1, seed, prefix)
    if threshold == TUNED:
        out: dict[str, Any] = {**crossed, f"{prefix}threshold": best}
    else:
        out = classification_metrics(labels, prob1, float(threshold), prefix)
    out[f"{prefix}f1_macro_tuned"] = crossed[f"{prefix}f1_macro"]
    out[f"{prefix}best_threshold"], out[f"{prefix}f1_macro_at_best_threshold"] = best, best_f1
    out.update(ranking_metrics(labels, prob1, prefix))
    return out


def threshold_curve(labels, prob1, thresholds=THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """F1-macro at each threshold of a grid (for plots)."""
    labels = np.asarray(labels)
    prob1 = np.asarray(prob1)
    scores = np.array([f1_score(labels, (prob1 >= t).astype(int), average="macro", labels=[0, 1], zero_division=0)
                       for t in thresholds])
    return np.asarray(thresholds), scores
