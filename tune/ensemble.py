"""Ensemble selection over the models a search trained (Caruana et al., 2004), on val only.

A search trains 16-20 models and keeps one; the others are often different enough to help. This
module chooses an ensemble of them from their ALREADY COMPUTED val probabilities (the caller scores
each kept model on val once; nothing here predicts), judges it once on held-out test, and exports it
as a folder that `python -m afqmc.predict --checkpoint DIR` predicts with (afqmc/ensemble.py owns
that format). Pure numpy and sklearn; no Ray, no torch.

The algorithm (`greedy_selection`):

- start from the model the ensemble is judged against: in a search, its best model (best_model/,
  the confirmed winner's best seed with the confirmation stage); called without one, the single
  model with the best val selection metric;
- add, with replacement, the model whose addition most improves the metric of the ensemble's
  P(same) = the weighted mean of its members' P(same); weights = selection counts / total;
- stop after `k` selections or when no addition improves the metric by more than the margin
  (search.ensemble_margin). Ties go to the candidate listed first (the caller's order), so the
  choice is deterministic. When nothing joins the best model, there is no ensemble: the summary
  says the best model stands alone, and nothing is exported.

Why the search's best model, not the best by the selection metric (issue 30): the search's best is
chosen on val F1-macro (over seeds, with the stage), the walk on val AUC; when the two differ, an
"ensemble" of one was another single model, judged against best_model/ (on one CPU AFQMC search it
lost 0.0099 F1-macro on held-out test). Starting from the best model, across 12 searches
(benchmarks/ensemble_guard.py, margin 0.005), the mean held-out gain went from 0.0102 to 0.0114 and
the worst from -0.0099 to 0.0000.

The selection metric ("The selection metric"): a search selects on val ROC-AUC
(search.ensemble_metric, default auc); `metric="log_loss"` is the other choice, and the default of
the functions here when called directly. Two measurements disagree, for a reason that decides it:

- on pools of 12 character TF-IDF pair models (benchmarks/ensemble_metric.py: logistic regression
  balanced or not and naive Bayes, each fit on a random half of AFQMC train; 3,200 val and 3,200
  held-out test pairs; k = 5; 3 pools), log loss gave the larger held-out test gain over the single
  best (+0.0158 on average against +0.0097 with AUC): log loss is smooth in the weights and rewards
  being right with confidence where members disagree, while AUC is piecewise constant and fits
  val's pair orders;
- on a real search of this product (the CPU space with the techniques, 16 trials of the tiny
  stand-in; benchmarks/README.md), log loss chose a single trial that ASHA had cut after 100
  updates, whose near-constant P(same) of 0.33 sat closest to the class prior: its log loss was the
  lowest of all (0.619), its AUC 0.511, and on held-out test the "ensemble" lost 0.036 F1-macro to
  the best trial (paired bootstrap interval [-0.059, -0.013]). AUC chose the best-ranking trials
  (trial 0 and trial 15, 1:4). The search's candidates are trained with different class weights
  and focal gammas, which move their probabilities on purpose; log loss then measures calibration,
  which the tuned threshold makes irrelevant, more than ranking, which it cannot fix. The TF-IDF
  pool had no such spread of calibrations. So the search selects on AUC.

The val figure an ensemble reports is cross-fitted (`cross_fitted_selection`): members, weights and
threshold chosen on one half of val (afqmc.metrics.halves, the trials' own split), F1-macro scored
on the other half, both ways, averaged. The in-sample figure (everything chosen and scored on all of
val) is reported beside it, labelled so: the selection grades itself there.

Entry points for the search's end (tune/search.py, compare.py --ensemble K):

    choice = select_ensemble({name: val_probs, ...}, val_labels, k=5, seed=cfg.seed)
    test = judge_on_test(choice, {name: test_probs, ...}, test_labels, single=best_name,
                         single_threshold=best_saved_threshold)
    export_ensemble(choice, {name: model_dir, ...}, results/NAME/ensemble, figures={"test": test, "cost": ...})
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from afqmc.metrics import classification_metrics, cross_fitted, halves, ranking_metrics, tune_threshold

METRICS = ("log_loss", "auc")  # the selection metrics: log loss (the default) and ROC-AUC, for comparison
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for the log loss (a saved 0 or 1 is not infinite)


@dataclass(frozen=True)
class EnsembleChoice:
    """An ensemble chosen on val: its distinct members (in order of first selection), their selection
    counts and weights (counts / total), its decision threshold (tuned on all of val, as a trial's is),
    and its val figures.

    `val`: the ensemble's in-sample figures (`log_loss`, `auc`, `f1_macro_in_sample`: at the
    threshold tuned on the same pairs that chose it: optimistic) and `f1_macro_cross_fitted` (members,
    weights and threshold chosen on one half of val, scored on the other, both ways, averaged),
    with `f1_macro_cross_fitted_halves`. `single_val`: the same for `single_best` (the best candidate
    by the selection metric, where the walk starts), its threshold tuned on all of val and its F1
    cross-fitted on the same halves (threshold only: it is one model). `history`: each selection and
    the val metric after it.
    """

    members: tuple[str, ...]
    counts: tuple[int, ...]
    weights: tuple[float, ...]
    threshold: float
    metric: str
    k: int
    seed: int
    single_best: str
    single_threshold: float
    history: tuple[tuple[str, float], ...]
    val: dict[str, Any]
    single_val: dict[str, Any]

    def probs(self, candidates: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's P(same) from its members' P(same) on any pairs (e.g. held-out test)."""
        return np.asarray(self.weights) @ np.stack([np.asarray(candidates[m], dtype=np.float64)
                                                    for m in self.members])

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# --- the selection metric and the greedy walk ----------------------------------------------------


def selection_score(labels: np.ndarray, prob1: np.ndarray, metric: str) -> float:
    """The val selection metric as higher-is-better: minus the log loss, or the ROC-AUC (sklearn)."""
    if metric == "log_loss":
        return -float(log_loss(labels, np.clip(prob1, EPS, 1 - EPS), labels=[0, 1]))
    if metric == "auc":
        return float(roc_auc_score(labels, prob1))
    raise ValueError(f"selection metric must be one of {METRICS} (got {metric!r})")


def greedy_selection(probs: np.ndarray, labels, k: int = 5, metric: str = "log_loss", margin: float = 0.0,
                     start: int | None = None) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Greedy forward selection with replacement (Caruana et al., 2004) over the rows of `probs`
    (candidates x pairs): the selection counts of each candidate (summing to at most `k`) and the
    walk, as (candidate index, higher-is-better metric after adding it).

    Starts from row `start` (the model the ensemble is judged against), else from the best single
    row; each step adds the row whose addition gives the best metric of
    the counts-weighted mean; stops at `k` selections or when no addition improves the metric by more
    than `margin` (the guard: a member that helps only by val noise stays out). Ties go to the lowest
    index (np.argmax keeps the first).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if probs.ndim != 2 or probs.shape[1] != len(labels) or len(probs) == 0:
        raise ValueError(f"probs must be candidates x {len(labels)} pairs (got shape {probs.shape})")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    counts = np.zeros(len(probs), dtype=int)
    total = np.zeros(probs.shape[1])
    history: list[tuple[int, float]] = []
    current = -np.inf
    if start is not None:
        counts[start], total = 1, probs[start].copy()
        current = selection_score(labels, probs[start], metric)
        history.append((start, current))
    while counts.sum() < k:
        n = counts.sum()
        scores = np.array([selection_score(labels, (total + row) / (n + 1), metric) for row in probs])
        best = int(np.argmax(scores))
        if scores[best] <= current + margin:  # nothing improves by more than the margin: stop
            break
        counts[best] += 1
        total += probs[best]
        current = float(scores[best])
        history.append((best, current))
    return counts, history


# --- choosing an ensemble on val -----------------------------------------------------------------


def select_ensemble(candidates: dict[str, np.ndarray], val_labels, k: int = 5, seed: int = 0,
                    metric: str = "log_loss", margin: float = 0.0, start: str | None = None) -> EnsembleChoice:
    """Choose an ensemble of `candidates` (name -> val P(same), every array over the same val pairs,
    in the same order) by greedy selection on `metric`, with at most `k` selections; tune its
    threshold on val (afqmc.metrics.tune_threshold, as a trial's) and report its val figures in-sample
    and cross-fitted on the halves of `seed` (afqmc.metrics.halves). `start`: the candidate the walk
    starts from (the search's best model: the others join it only if each raises the metric by more
    than `margin`), else the best by the metric. Reads val labels only: it takes no test pairs."""
    names = list(candidates)
    labels = np.asarray(val_labels).astype(int)
    matrix = _matrix(candidates, names, len(labels))
    first = None if start is None else names.index(start)
    counts, walk = greedy_selection(matrix, labels, k, metric, margin, first)
    order = list(dict.fromkeys(i for i, _ in walk))  # distinct members in order of first selection
    weights = counts[order] / counts.sum()
    ens = weights @ matrix[order]
    threshold, f1_in = tune_threshold(labels, ens)
    crossed = cross_fitted_selection(matrix, labels, k, seed, metric, margin, first)
    single = walk[0][0]
    single_threshold, single_f1 = tune_threshold(labels, matrix[single])
    return EnsembleChoice(
        members=tuple(names[i] for i in order), counts=tuple(int(counts[i]) for i in order),
        weights=tuple(float(w) for w in weights), threshold=threshold, metric=metric, k=k, seed=seed,
        single_best=names[single], single_threshold=single_threshold,
        history=tuple((names[i], value) for i, value in walk),
        val={**_val_figures(labels, ens), "f1_macro_in_sample": f1_in,
             "f1_macro_cross_fitted": crossed["f1_macro"], "f1_macro_cross_fitted_halves": crossed["halves"],
             "cross_fitted_members": [[names[i] for i in m] for m in crossed["members"]],
             "num_samples": len(labels)},
        single_val={**_val_figures(labels, matrix[single]), "f1_macro_in_sample": single_f1,
                    "f1_macro_cross_fitted": cross_fitted(labels, matrix[single], seed, prefix="")["f1_macro"]})


def cross_fitted_selection(probs: np.ndarray, labels, k: int = 5, seed: int = 0,
                           metric: str = "log_loss", margin: float = 0.0, start: int | None = None) -> dict[str, Any]:
    """The ensemble's honest val F1-macro: on each half of val (afqmc.metrics.halves(labels, seed)),
    choose the members, weights and threshold, and score F1-macro on the other half at them; the
    mean of the two, each half's figure, and the members each half chose (indices)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    a, b = halves(labels, seed)
    scores, members = [], []
    for choose, score in ((a, b), (b, a)):
        counts, _ = greedy_selection(probs[:, choose], labels[choose], k, metric, margin, start)
        weights = counts / counts.sum()
        threshold, _ = tune_threshold(labels[choose], weights @ probs[:, choose])
        scores.append(classification_metrics(labels[score], weights @ probs[:, score], threshold, prefix="")["f1_macro"])
        members.append([int(i) for i in np.flatnonzero(counts)])
    return {"f1_macro": float(np.mean(scores)), "halves": [float(s) for s in scores], "members": members}


def _val_figures(labels: np.ndarray, prob1: np.ndarray) -> dict[str, float]:
    return {"log_loss": -selection_score(labels, prob1, "log_loss"),
            **ranking_metrics(labels, prob1, prefix="")}


def _matrix(candidates: dict[str, np.ndarray], names: list[str], n: int) -> np.ndarray:
    """The candidates' probabilities as one array (candidates x pairs); errors name the candidate."""
    if not names:
        raise ValueError("no candidate models to choose an ensemble from")
    rows = []
    for name in names:
        row = np.asarray(candidates[name], dtype=np.float64)
        if row.shape != (n,):
            raise ValueError(f"candidate {name!r}: {row.size} probabilities for {n} val pairs")
        if not np.all(np.isfinite(row)) or row.min() < 0 or row.max() > 1:
            raise ValueError(f"candidate {name!r}: probabilities must be finite and in [0, 1]")
        rows.append(row)
    return np.stack(rows)


# --- judged once on held-out test ------------------------------------------------------------------


def judge_on_test(choice: EnsembleChoice, test_probs: dict[str, np.ndarray], test_labels,
                  single: str | None = None, single_threshold: float | None = None,
                  n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The ensemble and the single best model scored on the held-out test pairs, each at its own
    threshold chosen on val (nothing is chosen here), and the paired bootstrap 95% interval of the
    ensemble's gain in F1-macro.

    `test_probs`: name -> test P(same) of every member and of `single`. `single`: the model the
    ensemble is judged against (the search's best trial; default `choice.single_best`), at
    `single_threshold` (its saved threshold; default the one `choice` tuned for `single_best`).
    """
    single = single or choice.single_best
    if single_threshold is None:
        if single != choice.single_best:
            raise ValueError(f"give single_threshold for {single!r} (its saved decision threshold)")
        single_threshold = choice.single_threshold
    labels = np.asarray(test_labels).astype(int)
    ens = choice.probs(test_probs)
    one = np.asarray(test_probs[single], dtype=np.float64)
    ens_pred, one_pred = (ens >= choice.threshold).astype(int), (one >= single_threshold).astype(int)
    figures = lambda p, t: {**classification_metrics(labels, p, t, prefix=""),  # noqa: E731
                            **ranking_metrics(labels, p, prefix="")}
    return {"ensemble": figures(ens, choice.threshold), "single_best": {"name": single, **figures(one, single_threshold)},
            **paired_bootstrap_gain(labels, ens_pred, one_pred, n_resamples, seed)}


def paired_bootstrap_gain(labels, pred_a, pred_b, n_resamples: int = 2000, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """F1-macro of predictions `pred_a` minus that of `pred_b` on the same labelled pairs, and its
    paired bootstrap percentile interval: the same resampled pairs score both.

    F1-macro depends on a resample only through the counts of the 8 kinds of pair (label, a's
    prediction, b's prediction), and resampling n pairs with replacement draws those counts from a
    multinomial of the observed frequencies; so each resample is one multinomial draw (seeded)
    instead of n indices: exact, vectorised, and O(resamples) in memory.
    """
    y, a, b = (np.asarray(v).astype(int) for v in (labels, pred_a, pred_b))
    kind = 4 * y + 2 * a + b
    freq = np.bincount(kind, minlength=8) / len(kind)
    counts = np.random.default_rng(seed).multinomial(len(kind), freq, size=n_resamples)  # resamples x 8
    observed = np.bincount(kind, minlength=8)[None, :]
    gain = lambda c: _f1_macro(c, "a") - _f1_macro(c, "b")  # noqa: E731
    samples = gain(counts)
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return {"gain_f1_macro": float(gain(observed)[0]), "gain_ci95": [float(low), float(high)],
            "gain_resamples": n_resamples, "gain_seed": seed}


def _f1_macro(counts: np.ndarray, who: str) -> np.ndarray:
    """F1-macro of predictor a or b from counts of the 8 kinds (index 4*label + 2*a + b), per row;
    sklearn's zero_division=0 for a class that is neither present nor predicted."""
    c = counts.reshape(-1, 2, 2, 2)  # label, a, b
    conf = c.sum(axis=3) if who == "a" else c.sum(axis=2)  # label x prediction
    tn, fp, fn, tp = conf[:, 0, 0], conf[:, 0, 1], conf[:, 1, 0], conf[:, 1, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_0 = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
    return (f1_0 + f1_1) / 2


# --- the exported folder ---------------------------------------------------------------------------


def export_ensemble(choice: EnsembleChoice, model_dirs: dict[str, Path], target: Path,
                    figures: dict[str, Any] | None = None) -> Path:
    """Write the ensemble folder `target` (results/NAME/ensemble) atomically: a copy of each distinct
    member's saved model (what prediction needs), ensemble.json and a model card (afqmc/ensemble.py).

    `model_dirs`: name -> the member's saved-model folder (a trial's checkpoint_*/model, or a folder
    holding model/). `figures`: optional `test` (judge_on_test's dict), `cost` (e.g.
    `seconds_per_pair`, `single_seconds_per_pair`: measured by the caller) and anything else to keep
    in ensemble.json (e.g. `search`, `candidates`)."""
    from afqmc.ensemble import write_ensemble

    missing = [m for m in choice.members if m not in model_dirs]
    if missing:
        raise ValueError(f"no model folder given for member(s) {missing}")
    figures = dict(figures or {})
    selection = {k: v for k, v in choice.to_dict().items() if k not in ("members", "counts", "weights", "threshold")}
    return write_ensemble(Path(target), [(m, Path(model_dirs[m]), w, c) for m, w, c in
                                         zip(choice.members, choice.weights, choice.counts)],
                          choice.threshold, selection=selection, test=figures.pop("test", None),
                          cost=figures.pop("cost", None), extra=figures)


def ensemble_cost(choice: EnsembleChoice, seconds_per_pair: dict[str, float], single: str) -> dict[str, Any]:
    """The prediction cost of the ensemble against one model, from each model's measured seconds per
    pair (e.g. timed when the scoring module predicted val): the ensemble runs each distinct member
    once. For export_ensemble's figures["cost"]."""
    ens = sum(seconds_per_pair[m] for m in choice.members)
    return {"seconds_per_pair": ens, "single_seconds_per_pair": seconds_per_pair[single],
            "time_ratio": ens / seconds_per_pair[single] if seconds_per_pair[single] > 0 else None}


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- the search's ensemble (the end of a search, compare.py --ensemble K) ---------------------------


def candidates(trials: list, first_rung: int | None = None) -> list:
    """The ensemble's candidates: the kept models of the finished and ASHA-stopped trials, by number
    (ties in the selection go to the lower one), but not those ASHA stopped at its first rung."""
    from tune.folder import TrialState

    return sorted((t for t in trials if t.state in (TrialState.FINISHED, TrialState.STOPPED) and t.best_checkpoint
                   and not (first_rung and t.state == TrialState.STOPPED and t.evals <= first_rung)),
                  key=lambda t: t.number)


def search_ensemble(experiment_dir: Path, base, trials: list, best, k: int, test_pairs=None, val_pairs=None,
                    metric: str = "auc", margin: float = 0.0, first_rung: int | None = None) -> dict[str, Any] | None:
    """The ensemble of a search's kept models: every finished and ASHA-stopped trial's kept model is
    scored on val once (tune.scoring.model_probs, cached), at most `k` are chosen on val
    (`select_ensemble`), the members and the best trial are scored once on the held-out test pairs
    and judged (`judge_on_test`), and the ensemble is exported to results/NAME/ensemble/ (its members
    copied; nothing is copied again when the folder already holds this choice).

    `base`: the search's fixed config (tune.space.search_base: its split); `best`: the search's best
    trial, the single model the ensemble must beat; `metric`: the selection's (search.ensemble_metric,
    AUC by default: see "The selection metric" above); `margin`: what a member must add to it
    (search.ensemble_margin); `first_rung`: ASHA's first rung, in evaluations: a trial ASHA stopped
    there is no candidate (its model sits near the class prior, and would join only for val noise),
    unless it is `best`, where the walk starts;
    `test_pairs`, `val_pairs`: those splits when the
    caller (the search's driver) holds them, else they are read again. Returns the summary's `ensemble` entry, or None
    when `k` is 0 or fewer than two models were kept. Nothing here reads test labels before the
    choice is made: selection gets val only."""
    from afqmc.data import load_splits
    from afqmc.ensemble import ENSEMBLE_JSON
    from tune.folder import ENSEMBLE
    from tune.scoring import kept_model, model_probs

    kept = candidates(trials, first_rung)
    if best is not None and best.best_checkpoint and best not in kept:  # the walk starts from it (first-rung cut or not)
        kept = sorted([*kept, best], key=lambda t: t.number)
    if k <= 0 or best is None or len(kept) < 2:
        return None
    name = {t.trial_id: f"trial {t.number}" for t in [*kept, best]}
    need_test = test_pairs is None and bool(base.test_ratio or base.test_file)
    splits = load_splits(base) if val_pairs is None or need_test else None
    val_set = val_pairs if val_pairs is not None else splits.val
    val = model_probs(experiment_dir, kept, val_set, "val")
    choice = select_ensemble({name[t.trial_id]: np.asarray(val["probs"][t.trial_id]) for t in kept},
                             val_set.labels, k=k, seed=base.seed, metric=metric, margin=margin,
                             start=name[best.trial_id] if best in kept else None)
    by_name = {name[t.trial_id]: t for t in kept}
    target = Path(experiment_dir) / ENSEMBLE
    if choice.members == (name[best.trial_id],):  # no other model adds more than the margin: nothing to export
        if (target / ENSEMBLE_JSON).is_file():  # an earlier report's ensemble (another margin): it no longer holds
            shutil.rmtree(target)
        return _summary_entry(choice, by_name, best, None, None, None, margin)
    test_set = test_pairs if test_pairs is not None else (splits.test if splits else None)
    judged = None
    if test_set is not None and test_set.labels is not None:
        scored = [by_name[m] for m in choice.members] + ([] if name[best.trial_id] in choice.members else [best])
        test = model_probs(experiment_dir, scored, test_set, "test")
        judged = judge_on_test(choice, {name[t.trial_id]: np.asarray(test["probs"][t.trial_id]) for t in scored},
                               test_set.labels, single=name[best.trial_id], single_threshold=test["threshold"][best.trial_id],
                               seed=base.seed)
    cost = ensemble_cost(choice, {name[t.trial_id]: val["seconds_per_pair"][t.trial_id] for t in kept},
                         single=name[best.trial_id]) if best.trial_id in val["seconds_per_pair"] else None
    figures = {"test": judged, "cost": cost, "search": Path(experiment_dir).name, "candidates": [name[t.trial_id] for t in kept]}
    if not _holds(target, choice, figures):
        export_ensemble(choice, {m: kept_model(by_name[m]) for m in choice.members}, target, figures)
    return _summary_entry(choice, by_name, best, judged, cost, target, margin)


def _holds(target: Path, choice: EnsembleChoice, figures: dict[str, Any]) -> bool:
    """The folder already holds this choice and these figures (a rebuilt report copies nothing)."""
    from afqmc.ensemble import ENSEMBLE_JSON

    path = target / ENSEMBLE_JSON
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    return ([m.get("name") for m in spec.get("members", [])] == list(choice.members)
            and [m.get("weight") for m in spec.get("members", [])] == list(choice.weights)
            and spec.get("threshold") == choice.threshold and spec.get("test") == _plain(figures["test"]))


def _summary_entry(choice: EnsembleChoice, by_name: dict, best, judged: dict[str, Any] | None, cost,
                   target: Path | None, margin: float) -> dict[str, Any]:
    """What summary.json, trials.md, the end-of-search printout and compare.py say of the ensemble.
    `target` None: the best model alone (`alone`: no other kept model added more than `margin`), not
    exported."""
    from afqmc.ensemble import count_parameters

    members = [{"trial": by_name[m].number, "trial_id": by_name[m].trial_id, "weight": w, "count": c}
               for m, w, c in zip(choice.members, choice.weights, choice.counts)]
    params = sum(count_parameters(p) for p in sorted((target / "members").iterdir()) if p.is_dir()) \
        if target is not None and (target / "members").is_dir() else None
    keep = ("f1_macro", "accuracy", "auc", "threshold", "num_samples")
    test = None if judged is None else {
        "ensemble": {k: judged["ensemble"][k] for k in keep},
        "single_best": {"trial": best.number, **{k: judged["single_best"][k] for k in keep}},
        "gain_f1_macro": judged["gain_f1_macro"], "gain_ci95": judged["gain_ci95"],
        "gain_resamples": judged["gain_resamples"]}
    return _plain({"folder": None if target is None else str(target), "alone": target is None, "k": choice.k,
                   "metric": choice.metric, "margin": margin, "members": members,
                   "threshold": choice.threshold, "val": {k: v for k, v in choice.val.items() if k != "cross_fitted_members"},
                   "single_val": choice.single_val, "test": test,
                   "cost": {**(cost or {}), "members": len(members), "parameters": params}})


def ensemble_lines(ens: dict[str, Any] | None) -> list[str]:
    """The ensemble in words: trials.md's header, the end of a search, compare.py."""
    if not ens:
        return []
    if ens.get("alone"):
        return [f"ensemble: none: no other kept model raised val {ens['metric']} by more than "
                f"search.ensemble_margin {ens['margin']:g} over the best model's (trial {ens['members'][0]['trial']}), "
                f"so the best model stands alone"]
    members = ", ".join(f"trial {m['trial']} x{m['count']}" for m in ens["members"])
    val = ens["val"]
    lines = [f"ensemble ({ens['folder'].rsplit('/', 1)[-1]}/): {members} (greedy selection on val {ens['metric']}, at "
             f"most {ens['k']}); val F1-macro {val['f1_macro_cross_fitted']:.4f} cross-fitted "
             f"({val['f1_macro_in_sample']:.4f} in-sample: the selection graded itself), threshold {ens['threshold']:.4f}"]
    test = ens.get("test")
    if test:
        low, high = test["gain_ci95"]
        lines.append(f"ensemble on held-out test: F1-macro {test['ensemble']['f1_macro']:.4f} against the single best "
                     f"{test['single_best']['f1_macro']:.4f} (trial {test['single_best']['trial']}): gain "
                     f"{test['gain_f1_macro']:+.4f}, paired bootstrap 95% interval [{low:+.4f}, {high:+.4f}]")
    cost = ens.get("cost") or {}
    if cost.get("time_ratio") is not None:
        n = cost["members"]
        lines.append(f"ensemble cost: {n} model{'s' if n != 1 else ''}, {cost['parameters'] or 0:,} parameters, "
                     f"{cost['time_ratio']:.1f}x one model's prediction time")
    return lines
