"""The confirmation stage (`search.confirm`): a winner that is confirmed, not lucky.

The search picks its best trial on one noisy val figure, on one seed: the winner's curse. So, once
the search's own trials have ended, the stage trains again, on new seeds and with their full
schedule (no ASHA cut), the `top_k` best configurations by val and the baseline:

- each configuration gets `seeds` values: its original trial counts as one only if it ran its
  course (a trial ASHA cut is trained again from the start, on new seeds); the new seeds are the
  search's seed + 1, + 2, ..., the same for every configuration, the baseline included;
- the runs are trials of the same Ray run (StudySearch hands them out after the search's trials;
  the scheduler lets them run to the end), so they share the search's resources and survive an
  interrupt and `--resume` like any trial;
- the stage costs at most `budget_share` of the optimizer updates the search's trials spent: beyond
  it, `top_k` shrinks first (down to 1), then `seeds`;
- the winner is the configuration with the best mean val over its seeds; `best_model/` is its best
  seed by val. The held-out test figures (tune/reports.py) say what that choice was worth.

`plan` decides the runs from the study's trials alone; `groups` and `confirmed_winner` read the
trial records back (tune/results.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tune.folder import CONFIRM_OF, CONFIRM_SEED, INFORMED_BY, STEPS_ATTR


def stage_trial(trial) -> bool:
    """A study trial (FrozenTrial) of the confirmation stage."""
    return CONFIRM_OF in trial.user_attrs


def trial_value(trial) -> float | None:
    """A study trial's val value: COMPLETE, its value (its best); PRUNED, its best evaluation's."""
    values = [trial.value] if trial.state.name == "COMPLETE" else list(trial.intermediate_values.values())
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(values) if values else None


def plan(search_trials: list, baseline_number: int | None, settings: dict[str, Any], search_seed: int,
         done: list | None = None) -> dict[str, Any]:
    """The stage's runs for the search's ended trials (`search_trials`: FrozenTrials, the stage's own
    excluded), given `settings` (search.confirm: top_k, seeds, budget_share) and the seed the search's
    trials ran with. `done`: the stage trials already in the study (an extended search plans again:
    a configuration already confirmed is not run again, and its runs count against the budget).

    Returns {"configs": [trial numbers, best first, the baseline last], "seeds": [the new seeds],
    "runs": [[trial number, seed], ...] (in order: every configuration on the first new seed, then the
    second, ...), "top_k", "seeds_per_config", "budget": {"search_updates", "run_updates", "allowed",
    "planned"}, "notes"}.
    """
    done = done or []
    by_number = {t.number: t for t in search_trials}
    valued = sorted((t for t in search_trials if trial_value(t) is not None and t.state.name in ("COMPLETE", "PRUNED")),
                    key=lambda t: (-trial_value(t), t.number))
    ranked: list[int] = []
    for t in valued:  # the best configurations, each once (an enqueued duplicate is the same configuration)
        if all(t.params != by_number[n].params for n in ranked):
            ranked.append(t.number)
    search_updates = sum(_updates(t)["steps"] for t in search_trials)
    run_updates = max((_updates(t)["full"] for t in search_trials), default=0)
    allowed = settings.get("budget_share", 1.0) * search_updates
    notes = []
    top_k, seeds = int(settings.get("top_k", 0)), int(settings.get("seeds", 1))
    done_runs = {(int(t.user_attrs[CONFIRM_OF]), int(t.user_attrs[CONFIRM_SEED])) for t in done}

    def runs_for(k: int, n_seeds: int) -> tuple[list[int], list[int], list[list[int]]]:
        configs = ranked[:k]
        if baseline_number is not None and baseline_number in by_number and baseline_number not in configs:
            configs = configs + [baseline_number]
        new_seeds = [search_seed + i for i in range(1, n_seeds + 1)]
        runs = []
        for i, seed in enumerate(new_seeds):
            for c in configs:
                ran_its_course = by_number[c].state.name == "COMPLETE"
                if i < n_seeds - ran_its_course:  # an original that ran its course is one of the seeds
                    runs.append([c, seed])
        return configs, new_seeds, runs

    def cost(runs: list[list[int]]) -> int:
        return run_updates * sum((c, s) not in done_runs for c, s in runs) + run_updates * len(done_runs)

    if not ranked:  # every trial failed: nothing to confirm, and the baseline would only fail again
        return {"configs": [], "seeds": [], "runs": [], "top_k": 0, "seeds_per_config": 0,
                "search_trials": len(search_trials),
                "budget": {"search_updates": search_updates, "run_updates": run_updates, "allowed": allowed,
                           "planned": 0}, "notes": ["no trial has a val value: no stage"]}
    configs, new_seeds, runs = runs_for(top_k, seeds)
    while cost(runs) > allowed and (top_k > 1 or seeds > 1):
        if top_k > 1:
            top_k -= 1
        else:
            seeds -= 1
        configs, new_seeds, runs = runs_for(top_k, seeds)
    if (top_k, seeds) != (settings.get("top_k"), settings.get("seeds")):
        notes.append(f"top_k {settings.get('top_k')} and seeds {settings.get('seeds')} would cost more than "
                     f"budget_share {settings.get('budget_share', 1.0):g} of the search's {search_updates:,} updates "
                     f"({run_updates:,} per run): top_k {top_k}, seeds {seeds}")
    if cost(runs) > allowed:
        notes.append(f"even top_k 1 and seeds 1 cost {cost(runs):,} updates, above budget_share "
                     f"{settings.get('budget_share', 1.0):g} of {search_updates:,}: no stage")
        configs, new_seeds, runs = [], [], []
    return {"configs": configs, "seeds": new_seeds, "runs": runs, "top_k": top_k, "seeds_per_config": seeds,
            "search_trials": len(search_trials),
            "budget": {"search_updates": search_updates, "run_updates": run_updates, "allowed": allowed,
                       "planned": cost(runs)}, "notes": notes}


def _updates(trial) -> dict[str, int]:
    """A study trial's optimizer updates so far and its full schedule's (StudySearch records them)."""
    got = trial.user_attrs.get(STEPS_ATTR) or {}
    return {"steps": int(got.get("steps", 0)), "full": int(got.get("full", 0))}


def own_search_trials(study) -> list:
    """The study's trials of the search itself: asked for, not informing (a warm start), not the stage's."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name != "WAITING" and INFORMED_BY not in t.user_attrs and not stage_trial(t)]


# --- reading the stage back (trial records: tune/results.py) ------------------------------------------


def groups(trials: list) -> dict[int, list]:
    """Each confirmed configuration (by its original trial's number) and its seeds' trial records: the
    original if it ran its course, and its stage trials that have a val value."""
    from tune.folder import TrialState

    by_number = {t.number: t for t in trials}
    out: dict[int, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.confirm_of is None or t.best_value is None:
            continue
        seeds = out.setdefault(t.confirm_of, [])
        original = by_number.get(t.confirm_of)
        if not seeds and original is not None and original.state == TrialState.FINISHED \
                and original.best_value is not None:
            seeds.append(original)
        seeds.append(t)
    return out


def confirmed_winner(trials: list) -> dict[str, Any] | None:
    """The configuration with the best mean val over its seeds: {"config": its original trial's number,
    "best_seed": the record of its best seed by val (with a kept model), "mean", "std", "n"}."""
    best = None
    for number, seeds in groups(trials).items():
        values = [t.best_value for t in seeds]
        kept = [t for t in seeds if t.best_checkpoint]
        if not kept:
            continue
        mean = float(np.mean(values))
        if best is None or (mean, -number) > (best["mean"], -best["config"]):
            best = {"config": number, "mean": mean, "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                    "n": len(values), "best_seed": max(kept, key=lambda t: (t.best_value, -t.number))}
    return best


# --- the figures (summary.json "confirmation", trials.md, the end of a search, compare.py) -----------


def summary(experiment_dir, base, trials: list, plan_record: dict[str, Any] | None, test_pairs=None) -> dict | None:
    """What the stage found: each confirmed configuration's mean and std over its seeds on val (the
    value that chose) and on the held-out test pairs; the confirmed winner against the baseline (the
    gain in mean test F1-macro, Welch's test over the seeds, a paired bootstrap interval over the test
    pairs); whether the stage changed the winner and what the single-seed winner scored; its cost."""
    from tune.folder import DONE_STATES
    from tune.reseed import seed_stats, seed_verdict
    from tune.results import single_best

    if not plan_record and not any(t.confirm_of is not None for t in trials):
        return None
    plan_record = plan_record or {}
    by_number = {t.number: t for t in trials}
    found = groups(trials)
    winner = confirmed_winner(trials)
    single = single_best([t for t in trials if t.confirm_of is None])
    baseline = next((t for t in trials if t.is_baseline), None)
    stage = [t for t in trials if t.confirm_of is not None]
    runs = [tuple(r) for r in plan_record.get("runs", [])]
    ended = {(t.confirm_of, t.seed) for t in stage if t.state in DONE_STATES}
    test = _test_predictions(experiment_dir, base, [t for seeds in found.values() for t in seeds]
                             + ([single] if single else []), test_pairs)
    configs = []
    for number in plan_record.get("configs", sorted(found)):
        seeds = found.get(number, [])
        original = by_number.get(number)
        val = [t.best_value for t in seeds]
        tested = [test["f1"][t.trial_id] for t in seeds if t.trial_id in test.get("f1", {})]
        configs.append({"trial": number, "params": original.params if original else {},
                        "is_baseline": bool(original and original.is_baseline),
                        "seeds": [{"trial": t.number, "seed": t.seed, "val": t.best_value,
                                   "test_f1": test.get("f1", {}).get(t.trial_id)} for t in seeds],
                        "val": seed_stats(val) if val else None, "test": seed_stats(tested) if tested else None})
    out: dict[str, Any] = {
        "plan": {k: plan_record.get(k) for k in ("top_k", "seeds_per_config", "seeds", "runs", "notes")},
        "complete": bool(plan_record) and all(r in ended for r in runs), "runs_ended": len(ended & set(runs)),
        "configs": configs, "winner": winner and winner["config"],
        "best_seed_trial": winner and winner["best_seed"].number,
        "single_seed_winner": single and {"trial": single.number, "val": single.best_value,
                                          "test_f1": test.get("f1", {}).get(single.trial_id)},
        "changed_winner": bool(winner and single and winner["config"] != single.number
                               and winner["config"] != single.confirm_of),
        "cost": _cost(trials, stage), "test_pairs": test.get("pairs")}
    base_group = baseline and found.get(baseline.number)
    if winner and base_group:
        w = next(c for c in configs if c["trial"] == winner["config"])
        b = next(c for c in configs if c["trial"] == baseline.number)
        if w["test"] and b["test"]:
            same = winner["config"] == baseline.number
            verdict = seed_verdict({"best": {"test": w["test"]}, "baseline": {"test": b["test"]}}, "test", same)
            labels, preds = test.get("labels"), test.get("preds", {})
            a = [preds[t.trial_id] for t in found[winner["config"]] if t.trial_id in preds]
            c = [preds[t.trial_id] for t in base_group if t.trial_id in preds]
            interval = mean_f1_gain_bootstrap(labels, a, c) if labels is not None and a and c and not same else None
            out["vs_baseline"] = {**verdict, "bootstrap": interval}
    return out


def _cost(trials: list, stage: list) -> dict[str, Any]:
    search_updates = sum(t.steps for t in trials if t.confirm_of is None)
    updates = sum(t.steps for t in stage)
    walls = [t.wall_time_s for t in stage if t.wall_time_s is not None]
    return {"updates": updates, "search_updates": search_updates,
            "share_of_search": updates / search_updates if search_updates else None,
            "trial_seconds": float(sum(walls))}


def _test_predictions(experiment_dir, base, models: list, test_pairs) -> dict[str, Any]:
    """Each model's held-out test F1-macro at its saved threshold and its predictions, pair by pair
    (tune.scoring: predicted once per model and kept); {} without a labelled test set."""
    from afqmc.data import load_splits
    from tune.scoring import held_out_test, shared_probs

    kept = {f"trial_{t.number}": t for t in models if t is not None and t.best_checkpoint}
    if base is None or not kept:
        return {}
    scored = held_out_test(experiment_dir, base, kept, test_pairs)
    if not scored:
        return {}
    pairs = test_pairs if test_pairs is not None else load_splits(base).test
    out: dict[str, Any] = {"f1": {}, "preds": {}, "labels": np.asarray(pairs.labels), "pairs": len(pairs)}
    for role, t in kept.items():
        m = scored["models"].get(role)
        if m is None:
            continue
        out["f1"][t.trial_id] = m["metrics"]["f1_macro"]
        probs, threshold = shared_probs(experiment_dir, t, pairs, "test")
        out["preds"][t.trial_id] = (np.asarray(probs) >= threshold).astype(int)
    return out


def mean_f1_gain_bootstrap(labels, preds_a: list, preds_b: list, n_resamples: int = 2000, seed: int = 0,
                           level: float = 0.95) -> dict[str, Any]:
    """The mean F1-macro over the seeds of `preds_a` minus that over `preds_b` (each a list of one
    prediction per test pair, per seed), and its paired bootstrap percentile interval: each resample
    of the test pairs scores every seed of both."""
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_resamples, len(y)))

    def f1(pred: np.ndarray, index=None) -> np.ndarray:
        yy, pp = (y, pred) if index is None else (y[index], pred[index])
        tp = ((yy == 1) & (pp == 1)).sum(-1)
        tn = ((yy == 0) & (pp == 0)).sum(-1)
        fp = ((yy == 0) & (pp == 1)).sum(-1)
        fn = ((yy == 1) & (pp == 0)).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            f_neg = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
        return (f_pos + f_neg) / 2

    def gain(index=None):
        return (np.mean([f1(np.asarray(p), index) for p in preds_a], axis=0)
                - np.mean([f1(np.asarray(p), index) for p in preds_b], axis=0))

    samples = gain(idx)
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return {"gain_f1_macro": float(gain()), "ci95": [float(low), float(high)], "resamples": n_resamples}


def lines(conf: dict[str, Any] | None, metric: str) -> list[str]:
    """The stage's figures in words."""
    if not conf:
        return []
    plan = conf.get("plan") or {}
    out = [f"confirmation: the top {plan.get('top_k')} configurations and the baseline, {plan.get('seeds_per_config')} "
           f"seeds each (new seeds {plan.get('seeds')}; an original that ran its course counts as one), in full"
           + ("" if conf["complete"] else f" - NOT COMPLETE: {conf['runs_ended']} of {len(plan.get('runs') or [])} "
              f"runs ended; resume the search to finish it")]
    for c in conf["configs"]:
        val, test = c.get("val"), c.get("test")
        tag = " (baseline)" if c["is_baseline"] else ""
        tag += " <- confirmed winner" if c["trial"] == conf.get("winner") else ""
        out.append(f"  trial {c['trial']}{tag}: {metric} " + (_mean_std(val) if val else "-")
                   + " (chose), held-out test F1-macro " + (_mean_std(test) if test else "-")
                   + f" over {len(c['seeds'])} seeds")
    single = conf.get("single_seed_winner")
    if single:
        score = "" if single.get("test_f1") is None else f", held-out test F1-macro {single['test_f1']:.4f}"
        out.append(f"  single-seed winner: trial {single['trial']} (val {single['val']:.4f}{score}); the confirmation "
                   + ("changed the winner" if conf["changed_winner"] else "kept it"))
    vs = conf.get("vs_baseline")
    if vs:
        boot = vs.get("bootstrap")
        out.append(f"  confirmed winner against the baseline on held-out test: mean F1-macro gain {vs['gain']:+.4f}, "
                   f"Welch's p {'-' if vs.get('welch_p') is None else format(vs['welch_p'], '.3f')}"
                   + (f", paired bootstrap 95% interval [{boot['ci95'][0]:+.4f}, {boot['ci95'][1]:+.4f}]" if boot else "")
                   + f": {vs['verdict']}")
    cost = conf.get("cost") or {}
    if cost.get("share_of_search") is not None:
        out.append(f"  cost: {cost['updates']:,} optimizer updates, {cost['share_of_search']:.0%} of the search's "
                   f"{cost['search_updates']:,}")
    return out


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.4f}" + ("" if stats.get("std") is None else f" +- {stats['std']:.4f}")
