"""Classification metrics at a decision threshold on P(label = 1), computed with sklearn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

# Thresholds tried by the sweep: 0.02, 0.03, ..., 0.98.
THRESHOLDS = np.round(np.arange(0.02, 0.985, 0.01), 2)


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


def threshold_curve(labels, prob1, thresholds=THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """F1-macro at each threshold."""
    labels = np.asarray(labels)
    prob1 = np.asarray(prob1)
    scores = np.array([f1_score(labels, (prob1 >= t).astype(int), average="macro", labels=[0, 1], zero_division=0)
                       for t in thresholds])
    return np.asarray(thresholds), scores


def best_threshold(labels, prob1) -> tuple[float, float]:
    """The threshold with the highest F1-macro (the lowest such one on ties) and that F1-macro."""
    thresholds, scores = threshold_curve(labels, prob1)
    i = int(np.argmax(scores))
    return float(thresholds[i]), float(scores[i])
