import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from afqmc.metrics import best_threshold, classification_metrics, threshold_curve


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.71)])
def test_metrics_equal_sklearn(seed, threshold):
    rng = np.random.default_rng(seed)
    labels = (rng.random(500) < 0.31).astype(int)
    prob = np.clip(0.3 * labels + rng.random(500) * 0.7, 0, 1)
    pred = (prob >= threshold).astype(int)
    m = classification_metrics(labels, prob, threshold)
    assert m["val/accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["val/f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    for c in (0, 1):
        assert m[f"val/precision_{c}"] == pytest.approx(precision_score(labels, pred, pos_label=c))
        assert m[f"val/recall_{c}"] == pytest.approx(recall_score(labels, pred, pos_label=c))
        assert m[f"val/f1_{c}"] == pytest.approx(f1_score(labels, pred, pos_label=c))
    assert [[m["val/tn"], m["val/fp"]], [m["val/fn"], m["val/tp"]]] == confusion_matrix(labels, pred).tolist()
    assert m["val/num_samples"] == 500 and m["val/threshold"] == threshold


def test_one_class_predictions_do_not_crash():
    m = classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.5)
    assert m["val/f1_1"] == 0.0 and m["val/precision_1"] == 0.0 and m["val/f1_macro"] == pytest.approx(1 / 3)


def test_threshold_sweep_finds_the_separating_threshold():
    labels = np.array([0] * 70 + [1] * 30)
    prob = np.concatenate([np.linspace(0.0, 0.34, 70), np.linspace(0.36, 0.6, 30)])  # separable at 0.35
    thr, score = best_threshold(labels, prob)
    assert score == pytest.approx(1.0)
    assert 0.34 < thr <= 0.36
    thresholds, scores = threshold_curve(labels, prob)
    assert scores[np.searchsorted(thresholds, 0.5)] < 1.0  # the default threshold is worse here
    assert len(thresholds) == len(scores) and thresholds.min() > 0 and thresholds.max() < 1
