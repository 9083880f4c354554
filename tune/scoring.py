"""Scoring kept models: a trial's kept model on the search's val split or held-out test pairs, cached.

The one place where the tune side predicts with a model. The reports (the threshold curve, the
held-out test figures), the export (the model card's test figures), reseed and the ensemble call
it; the predictions and figures are afqmc.predict's (`predict_saved`, `labelled_metrics`), the
ones a single run and `python -m afqmc.predict` give. Each figure is computed once and kept in the
search folder (best_val_predictions.json, test_scores.json, model_probs.json): rebuilding the
reports predicts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from afqmc.checkpoint import CONFIG_NAME, VAL_PROBS_NAME, write_text_atomic
from afqmc.config import PRIMARY, TrainConfig, load_config
from tune.folder import MODEL_PROBS, TEST_SCORES, VAL_PREDICTIONS
from tune.results import TrialRecord, checkpoint_model


def kept_model(trial: TrialRecord) -> Path:
    """The saved model of the trial's kept (best) checkpoint."""
    if not trial.best_checkpoint:
        raise ValueError(f"trial {trial.number} has no kept checkpoint")
    return checkpoint_model(trial.best_checkpoint)


def kept_config(trial: TrialRecord) -> TrainConfig:
    """The resolved TrainConfig the trial's kept model was trained with (saved beside it)."""
    return load_config(kept_model(trial) / CONFIG_NAME)


def predict(model_dir: Path, pairs) -> tuple[list[float], float]:
    """P(label = 1) of a saved model on `pairs` (on the GPU if there is one), and its saved threshold."""
    import torch
    from transformers.utils import logging as hf_logging

    from afqmc.predict import predict_saved

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the search's output
    return predict_saved(model_dir, pairs, "cuda" if torch.cuda.is_available() else "cpu")


def val_predictions(experiment_dir: Path, trial: TrialRecord, metric: str = PRIMARY, val_pairs=None) -> dict[str, Any]:
    """Labels and P(label = 1) of the trial's kept model on the search's val split, and its val
    `metric` recomputed from them (cached in best_val_predictions.json, for one trial). `val_pairs`:
    that split as the search's driver holds it (else it is loaded again, from the trial's config)."""
    cache = experiment_dir / VAL_PREDICTIONS
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("trial_id") == trial.trial_id and cached.get("best_evals") == trial.best_evals:
            return cached
    from afqmc.data import load_splits
    from afqmc.metrics import evaluation_metrics

    model_dir, cfg = kept_model(trial), kept_config(trial)
    # The same load and split as the search's, from the trial's own (absolute) paths.
    val = val_pairs if val_pairs is not None else load_splits(cfg).val
    probs, threshold = shared_probs(experiment_dir, trial, val, "val")  # the ensemble's, when it scored this model
    recomputed = evaluation_metrics(val.labels, probs, cfg.threshold, seed=cfg.seed)[metric]
    out = {"trial_id": trial.trial_id, "trial": trial.number, "best_evals": trial.best_evals,
           "threshold": threshold, "metric": metric, "stored_value": trial.best_value, "recomputed_value": recomputed,
           "source": f"{val.source} (val_ratio {cfg.val_ratio}, test_ratio {cfg.test_ratio}, seed {cfg.seed}, "
                     f"max_train_samples {cfg.max_train_samples}) predicted with {model_dir}",
           "labels": [int(y) for y in val.labels], "probs": [round(float(p), 7) for p in probs]}
    write_text_atomic(cache, json.dumps(out) + "\n")
    return out


def fingerprint(pairs) -> str:
    """A short hash of labelled pairs: the test scores kept for them are those of these very pairs."""
    return pairs.fingerprint()


def held_out_test(experiment_dir: Path, base: TrainConfig, trials: dict[str, TrialRecord | None],
                  test_pairs=None) -> dict[str, Any] | None:
    """The kept model of each trial in `trials` (by role: best, baseline, ...), scored once on the
    held-out test pairs (the space's test_ratio split or labelled test_file) at its saved threshold;
    None without a test set. `base`: the search's fixed config (tune.space.search_base); `test_pairs`:
    those pairs as the search's driver loaded them (else they are read again).

    Nothing here chooses: the models and thresholds were chosen on val before. The scores are kept
    in test_scores.json (by trial, evaluation and a fingerprint of the test pairs).
    """
    if not (base.test_ratio or base.test_file):
        return None
    from afqmc.data import DataError, load_splits
    from afqmc.predict import labelled_metrics

    cache_file = experiment_dir / TEST_SCORES
    cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    try:
        test = test_pairs if test_pairs is not None else load_splits(base).test
    except (DataError, OSError) as exc:  # the data has moved: the figures already scored still stand
        if not cache:
            raise
        test, note = None, f"test data not readable ({exc}); figures from {TEST_SCORES}"
    else:
        if test is None:  # an unlabelled test_file: predicted by best_config.yaml's retraining, not scored
            return None
        note = None
        if cache.get("fingerprint") != fingerprint(test):  # new, or the test data changed: score again
            cache = {"source": test.source, "pairs": len(test), "label_counts": test.label_counts(),
                     "fingerprint": fingerprint(test), "scores": {}}
    models: dict[str, Any] = {}
    for role, trial in trials.items():
        key = f"{trial.trial_id}:{trial.best_evals}" if trial is not None and trial.best_checkpoint else None
        if key is not None and key not in cache["scores"] and test is not None:
            probs, threshold = shared_probs(experiment_dir, trial, test, "test")  # the ensemble reuses them
            cache["scores"][key] = labelled_metrics(test.labels, probs, threshold)
        models[role] = None if key not in cache["scores"] else {
            "trial": trial.number, "trial_id": trial.trial_id, "state": trial.state, "evals": trial.evals,
            "best_evals": trial.best_evals, "metrics": cache["scores"][key]}
    if test is not None:
        write_text_atomic(cache_file, json.dumps(cache, indent=2) + "\n")
    b, a = models.get("best"), models.get("baseline")
    return {"source": cache["source"], "pairs": cache["pairs"], "label_counts": cache["label_counts"],
            "fingerprint": cache["fingerprint"], "models": models, "note": note,
            "gain_f1_macro": b["metrics"]["f1_macro"] - a["metrics"]["f1_macro"] if b and a else None}


def shared_probs(experiment_dir: Path, trial: TrialRecord, pairs, split: str) -> tuple[list[float], float]:
    """P(same) of the trial's kept model on `pairs` and its saved threshold, as `model_probs` keeps
    them: the val predictions, the held-out test scores and the ensemble share one prediction per
    model and split (a model predicted here is not predicted again for the ensemble, nor the reverse)."""
    out = model_probs(experiment_dir, [trial], pairs, split)
    return out["probs"][trial.trial_id], out["threshold"][trial.trial_id]


def model_probs(experiment_dir: Path, trials: list[TrialRecord], pairs, split: str) -> dict[str, Any]:
    """P(same) of each trial's kept model on `pairs` (the search's val split, or its held-out test
    pairs: `split` names which), and the seconds each took per pair: each model predicts each split
    once, kept in model_probs.json (by split, a fingerprint of the pairs, the trial and its kept
    evaluation); on val, what the trial's own evaluation predicted is taken where its checkpoint
    keeps it (evaluated_val_probs), and nothing is predicted. Returns {"probs": {trial_id: [...]},
    "seconds_per_pair": {...}, "threshold": {...}} (threshold: each model's saved decision threshold)."""
    import time

    cache_file = experiment_dir / MODEL_PROBS
    cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    entry = cache.get(split, {})
    if entry.get("fingerprint") != fingerprint(pairs):  # new, or other pairs: predict again
        entry = {"fingerprint": fingerprint(pairs), "pairs": len(pairs), "models": {}}
    out: dict[str, Any] = {"probs": {}, "seconds_per_pair": {}, "threshold": {}}
    for trial in trials:
        key = f"{trial.trial_id}:{trial.best_evals}"
        if key not in entry["models"]:
            kept = evaluated_val_probs(trial, pairs) if split == "val" else None
            if kept is None:
                started = time.perf_counter()
                probs, threshold = predict(kept_model(trial), pairs)
                kept = {"probs": [round(float(p), 7) for p in probs], "threshold": threshold,
                        "seconds_per_pair": (time.perf_counter() - started) / max(1, len(pairs)), "source": "predicted"}
            entry["models"][key] = kept
            cache[split] = entry
            write_text_atomic(cache_file, json.dumps(cache) + "\n")  # a killed driver keeps what it predicted
        out["probs"][trial.trial_id] = entry["models"][key]["probs"]
        for field in ("seconds_per_pair", "threshold"):
            out[field][trial.trial_id] = entry["models"][key][field]
    return out


def evaluated_val_probs(trial: TrialRecord, pairs) -> dict[str, Any] | None:
    """What the trial's evaluation predicted on val at its kept checkpoint (VAL_PROBS_NAME, beside
    its model), when that was for these very pairs (the same labels in the same order): the
    reports and the ensemble then predict nothing on val. None when the checkpoint has no such
    file (from before it existed) or it is for other pairs."""
    if not trial.best_checkpoint:
        return None
    try:
        stored = json.loads((Path(trial.best_checkpoint) / VAL_PROBS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("threshold") is None or stored.get("labels") != [int(y) for y in pairs.labels]:
        return None
    return {"probs": stored["probs"], "threshold": stored["threshold"], "seconds_per_pair": stored["seconds_per_pair"],
            "source": "the trial's evaluation"}
