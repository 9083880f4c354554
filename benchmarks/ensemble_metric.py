"""Which val metric should greedy ensemble selection maximise: log loss or ROC-AUC? (issue 22)

A search's candidates are fine-tuned BERTs; training a pool of them takes hours on CPU, so this pool
is cheap lexical pair models of different features, class weights and learners (some well
calibrated, some not: naive Bayes is extreme, unbalanced weights shift), trained on the shared AFQMC
train split, with the split's val and held-out test. For each selection metric: the ensemble
tune/ensemble.py chooses on val, its cross-fitted val F1, and its held-out test F1-macro against the
single best model by val cross-fitted F1 (paired bootstrap 95% interval). Repeated over pools drawn
with different seeds (which models, which half of train each sees).

    python benchmarks/ensemble_metric.py [--quick] [--pools 3] [--json OUT]      # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afqmc.config import from_dict  # noqa: E402
from afqmc.data import load_splits  # noqa: E402
from afqmc.metrics import cross_fitted, tune_threshold  # noqa: E402
from tune.ensemble import judge_on_test, select_ensemble  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "afqmc" / "train.jsonl"


def pool(splits, seed: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`size` pair models, each fit on a seeded random half of train: name -> (val P, test P)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB

    rng = np.random.default_rng(seed)
    train, val, test = splits.train, splits.val, splits.test
    y = np.asarray(train.labels)
    specs = [(ngram, learner, c, weight) for ngram in ((1, 1), (1, 2), (1, 3), (2, 3))
             for learner, c, weight in (("lr", 4.0, "balanced"), ("lr", 0.5, None), ("nb", 0.3, None))]
    out = {}
    vecs = {}
    for i in rng.permutation(len(specs))[:size]:
        ngram, learner, c, weight = specs[i]
        if ngram not in vecs:
            vec = TfidfVectorizer(analyzer="char", ngram_range=ngram, min_df=2, sublinear_tf=True)
            vecs[ngram] = vec.fit(train.text1 + train.text2)
        vec = vecs[ngram]

        def features(pairs):
            a, b = vec.transform(pairs.text1), vec.transform(pairs.text2)
            return sp.hstack([a.multiply(b), abs(a - b)]).tocsr()

        rows = rng.permutation(len(y))[: len(y) // 2]
        model = (LogisticRegression(C=c, class_weight=weight, max_iter=2000) if learner == "lr"
                 else MultinomialNB(alpha=c))
        model.fit(features(train)[rows], y[rows])
        out[f"{learner}{ngram[0]}{ngram[1]}_C{c}_{weight or 'plain'}"] = (
            model.predict_proba(features(val))[:, 1], model.predict_proba(features(test))[:, 1])
    return out


def compare(splits, candidates, k: int, seed: int) -> dict[str, dict]:
    val_labels, test_labels = np.asarray(splits.val.labels), np.asarray(splits.test.labels)
    vals = {n: v for n, (v, _) in candidates.items()}
    tests = {n: t for n, (_, t) in candidates.items()}
    out = {}
    for metric in ("log_loss", "auc"):
        t0 = time.perf_counter()
        choice = select_ensemble(vals, val_labels, k=k, seed=seed, metric=metric)
        seconds = time.perf_counter() - t0
        # the single best by the trials' own figure: val F1 with a cross-fitted tuned threshold
        best = max(vals, key=lambda n: cross_fitted(val_labels, vals[n], seed, prefix="")["f1_macro"])
        test = judge_on_test(choice, tests, test_labels, single=best,
                             single_threshold=tune_threshold(val_labels, vals[best])[0], seed=seed)
        out[metric] = {"members": dict(zip(choice.members, choice.weights)), "steps": len(choice.history),
                       "val_f1_in_sample": choice.val["f1_macro_in_sample"],
                       "val_f1_cross_fitted": choice.val["f1_macro_cross_fitted"],
                       "test_f1": test["ensemble"]["f1_macro"], "test_auc": test["ensemble"]["auc"],
                       "single_best": best, "single_test_f1": test["single_best"]["f1_macro"],
                       "gain": test["gain_f1_macro"], "gain_ci95": test["gain_ci95"], "seconds": seconds}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 models on 6000 pairs, one pool")
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--size", type=int, default=12)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cfg = from_dict({"model_name_or_path": "tiny", "train_file": args.data, "val_ratio": 0.1, "test_ratio": 0.1,
                     "max_train_samples": 6000 if args.quick else None}, source="ensemble_metric")
    splits = load_splits(cfg)
    pools, size = (1, 6) if args.quick else (args.pools, args.size)
    runs = []
    for seed in range(pools):
        result = compare(splits, pool(splits, seed, size), args.k, seed)
        runs.append(result)
        for metric, r in result.items():
            print(f"pool {seed} {metric:>8}: {len(r['members'])} members / {r['steps']} steps, val F1 in-sample "
                  f"{r['val_f1_in_sample']:.4f} cross-fitted {r['val_f1_cross_fitted']:.4f}; test F1 "
                  f"{r['test_f1']:.4f} vs single {r['single_test_f1']:.4f}: gain {r['gain']:+.4f} "
                  f"[{r['gain_ci95'][0]:+.4f}, {r['gain_ci95'][1]:+.4f}]  ({r['seconds']:.1f} s)")
    for metric in ("log_loss", "auc"):
        gains = [r[metric]["gain"] for r in runs]
        print(f"{metric:>8}: mean test gain {np.mean(gains):+.4f} over {len(runs)} pools; mean test F1 "
              f"{np.mean([r[metric]['test_f1'] for r in runs]):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"val_pairs": len(splits.val), "test_pairs": len(splits.test),
                                               "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
