import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score, precision_score,
                             recall_score, roc_auc_score)

from afqmc.metrics import (classification_metrics, cross_fitted, evaluation_metrics, f1_macro_curve, halves,
                           ranking_metrics, threshold_curve, tune_threshold)


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
    thr, score = tune_threshold(labels, prob)
    assert score == pytest.approx(1.0)
    assert thr == pytest.approx(0.35)  # the midpoint between the last negative and the first positive
    thresholds, scores = threshold_curve(labels, prob)
    assert scores[np.searchsorted(thresholds, 0.5)] < 1.0  # the default threshold is worse here
    assert len(thresholds) == len(scores) and thresholds.min() > 0 and thresholds.max() < 1


def test_tuned_threshold_is_the_exact_optimum_of_a_hand_made_case():
    # Scores 0.1 .. 0.8 with labels 0 0 1 0 1 1 0 1. Predicting 1 from 0.5 up (0.5, 0.6, 0.8):
    # TP 3, FP 1, FN 1, TN 3: F1 of both classes 0.75, F1-macro 0.75, the best of the 9 possible
    # decisions (checked by brute force below). The threshold is the midpoint of 0.4 and 0.5.
    prob = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    thr, score = tune_threshold(labels, prob)
    assert thr == pytest.approx(0.45) and score == pytest.approx(0.75)
    brute = max(f1_score(labels, (prob >= t).astype(int), average="macro") for t in [*prob, 1.0])
    assert score == pytest.approx(brute)


@pytest.mark.parametrize("seed", range(6))
def test_f1_curve_is_exact_at_every_candidate_and_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(80) < 0.31).astype(int)
    # Rounded scores give ties; seed 0 and 3 are near-constant (as early in training): 0.31 +- 1e-6.
    prob = 0.31 + rng.random(80) * 1e-6 if seed % 3 == 0 else np.round(rng.random(80), 1)
    thresholds, scores = f1_macro_curve(labels, prob)
    assert np.all(np.diff(thresholds) > 0) and len(thresholds) == len(np.unique(prob)) + 1
    for t, s in zip(thresholds, scores):
        assert s == pytest.approx(f1_score(labels, (prob >= t).astype(int), average="macro", labels=[0, 1],
                                           zero_division=0), abs=1e-12)
    brute = max(f1_score(labels, (prob >= t).astype(int), average="macro", labels=[0, 1], zero_division=0)
                for t in [*prob, 2.0])
    assert tune_threshold(labels, prob)[1] == pytest.approx(brute, abs=1e-12)


def test_near_constant_scores_still_rank_where_a_fixed_grid_sees_one_class():
    rng = np.random.default_rng(7)
    labels = (rng.random(400) < 0.31).astype(int)
    prob = 0.3 + 1e-4 * labels + rng.random(400) * 2e-4  # informative, but every score rounds to 0.30
    grid_thresholds, grid_scores = threshold_curve(labels, prob)
    assert grid_scores.max() < 0.42  # the 0.01 grid sees one class at every threshold
    assert tune_threshold(labels, prob)[1] > 0.6 and cross_fitted(labels, prob)["val/f1_macro"] > 0.6


def test_halves_are_disjoint_stratified_and_seeded():
    labels = np.array([0] * 69 + [1] * 31)
    a, b = halves(labels, seed=3)
    assert len(set(a) & set(b)) == 0 and len(a) + len(b) == 100 and abs(len(a) - len(b)) <= 1
    assert abs(labels[a].sum() - labels[b].sum()) <= 1
    assert [x.tolist() for x in halves(labels, seed=3)] == [a.tolist(), b.tolist()]
    assert halves(labels, seed=4)[0].tolist() != a.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_cross_fitted_f1_is_not_above_the_in_sample_one(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(600) < 0.31).astype(int)
    prob = np.clip(0.15 * labels + rng.random(600) * 0.7, 0, 1)
    crossed = cross_fitted(labels, prob, seed=seed)
    in_sample = tune_threshold(labels, prob)[1]
    assert crossed["val/f1_macro"] <= in_sample
    # Exactly, always: each half scored at the other half's threshold is at most its own best.
    a, b = halves(labels, seed)
    own_best = (tune_threshold(labels[a], prob[a])[1] + tune_threshold(labels[b], prob[b])[1]) / 2
    assert crossed["val/f1_macro"] <= own_best + 1e-12
    # Every pair is predicted once; F1-macro is the mean of the per-class F1s.
    assert crossed["val/tn"] + crossed["val/fp"] + crossed["val/fn"] + crossed["val/tp"] == 600
    assert crossed["val/f1_macro"] == pytest.approx((crossed["val/f1_0"] + crossed["val/f1_1"]) / 2)


@pytest.mark.parametrize("seed", range(3))
def test_auc_and_ap_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.31).astype(int)
    prob = np.clip(0.2 * labels + rng.random(300), 0, 1)
    m = ranking_metrics(labels, prob)
    assert m["val/auc"] == pytest.approx(roc_auc_score(labels, prob), abs=1e-12)
    assert m["val/ap"] == pytest.approx(average_precision_score(labels, prob), abs=1e-12)
    assert np.isnan(ranking_metrics([1, 1, 1], [0.2, 0.5, 0.9])["val/auc"])  # one class: undefined, not a crash


def test_evaluation_metrics_in_both_threshold_modes():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.31).astype(int)
    prob = np.clip(0.2 * labels + rng.random(500) * 0.8, 0, 1)
    fixed = evaluation_metrics(labels, prob, 0.5)
    tuned = evaluation_metrics(labels, prob, "tuned")
    assert fixed["val/threshold"] == 0.5
    assert fixed["val/f1_macro"] == pytest.approx(f1_score(labels, (prob >= 0.5).astype(int), average="macro"))
    assert tuned["val/threshold"] == tuned["val/best_threshold"] == pytest.approx(tune_threshold(labels, prob)[0])
    assert tuned["val/f1_macro"] == tuned["val/f1_macro_tuned"] == fixed["val/f1_macro_tuned"]
    assert tuned["val/f1_macro"] <= tuned["val/f1_macro_at_best_threshold"]  # in-sample is optimistic
    for m in (fixed, tuned):
        assert m["val/auc"] == pytest.approx(roc_auc_score(labels, prob))
