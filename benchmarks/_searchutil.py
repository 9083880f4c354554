"""Helpers of the search benchmarks: the benchmark's search space and running our search.

The search itself is the product's (`tune.search.main`, the same function as
`python tune/search.py`); these helpers only write the space file and read the results back
(`tune.results.collect_trials`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

import _benchutil as bu

CPU_SPACE = bu.REPO / "search_spaces" / "afqmc_cpu.yaml"

# The full budget is the product's CPU space as shipped (its search settings, eval_steps and the
# metric ASHA cuts on). Quick: the first 2,000 pairs, 4 trials of up to 30 updates.
BUDGET_KEYS = ("num_samples", "n_startup_trials", "max_evals", "grace_period", "reduction_factor", "eval_steps",
               "max_train_samples", "asha_metric")
QUICK = dict(num_samples=4, n_startup_trials=2, max_evals=3, grace_period=1, reduction_factor=2,
             eval_steps=10, max_train_samples=2000)
# The threshold searched as the product did before `tuned`: a distribution TPE samples, ranked and
# cut on F1-macro at the sampled threshold.
SEARCHED_THRESHOLD = {"type": "uniform", "low": 0.3, "high": 0.7, "baseline": 0.5}


def full_budget() -> dict[str, Any]:
    space = yaml.safe_load(CPU_SPACE.read_text(encoding="utf-8"))
    out = {k: space["search"][k] for k in BUDGET_KEYS[:5]}
    out.update(eval_steps=space["params"]["eval_steps"], max_train_samples=space["params"].get("max_train_samples"),
               asha_metric=space["search"].get("asha_metric"))
    return out


def budget(args) -> dict[str, Any]:
    """The full or quick budget, with any of its keys overridden by a command-line option of the same name."""
    out = {**full_budget(), **QUICK} if args.quick else full_budget()
    for key in out:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def add_budget_args(p) -> None:
    full = full_budget()
    for key in BUDGET_KEYS:
        kind = float if key == "reduction_factor" else (str if key == "asha_metric" else int)
        p.add_argument(f"--{key}", type=kind,
                       help=f"override the budget's {key} (full: search_spaces/afqmc_cpu.yaml's {full[key]}; "
                            f"quick {QUICK.get(key, full[key])})")


def write_space(path: Path, data_dir: Path, b: dict[str, Any], seed: int = 0, threshold: str = "tuned",
                sampler: str = "tpe") -> Path:
    """The product's CPU space (search_spaces/afqmc_cpu.yaml): its searched fields, fixed model and
    held-out test split, with the data paths from --data and the benchmark's budget. `threshold`
    "searched" replaces the tuned threshold by SEARCHED_THRESHOLD, ranked and cut on F1 at it;
    `sampler` is search.sampler (tpe or random)."""
    space = yaml.safe_load(CPU_SPACE.read_text(encoding="utf-8"))
    params = dict(space["params"])
    params.update(bu.shared_paths(data_dir))
    params.update(eval_steps=b["eval_steps"], num_epochs=1000,  # the budget is max_evals x eval_steps updates
                  max_steps=b["max_evals"] * b["eval_steps"], save_best_model=True)
    if b["max_train_samples"]:
        params["max_train_samples"] = b["max_train_samples"]
    settings = dict(space["search"])
    settings.update(num_samples=b["num_samples"], seed=seed, n_startup_trials=b["n_startup_trials"],
                    max_evals=b["max_evals"], grace_period=b["grace_period"],
                    reduction_factor=b["reduction_factor"], cpus_per_trial=1, gpus_per_trial=0, sampler=sampler,
                    confirm=False)  # the search itself is measured here (its confirmation stage: confirm.py)
    if b.get("asha_metric"):
        settings["asha_metric"] = b["asha_metric"]
    if threshold == "searched":
        params["threshold"] = dict(SEARCHED_THRESHOLD)
        settings.update(metric="val/f1_macro", asha_metric="val/f1_macro")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by benchmarks/ from {CPU_SPACE.name} with the benchmark's budget "
                    f"(threshold {threshold}, sampler {sampler}).\n"
                    + yaml.safe_dump({"search": settings, "params": params}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def searched_params(space_path: Path) -> dict[str, dict[str, Any]]:
    params = yaml.safe_load(Path(space_path).read_text(encoding="utf-8"))["params"]
    return {k: v for k, v in params.items() if isinstance(v, dict)}


def run_search(space_path: Path, name: str, scheduler: str, results_dir: Path, extra: list[str] = (),
               anytime: bool = False) -> dict[str, Any]:
    """`python tune/search.py --space ... --scheduler ...`, in this process; wall time and figures
    (with `anytime`, the anytime curve with held-out test F1 along it: anytime_with_test)."""
    from tune.search import main as search_main

    started = time.perf_counter()
    rc = search_main(["--space", str(space_path), "--name", name, "--scheduler", scheduler,
                      "--results_dir", str(results_dir), *extra])
    wall = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"tune/search.py exited with {rc}")
    return {"wall_s": wall, **search_figures(results_dir / name, anytime)}


def trial_reports(trial_dir: Path) -> list[dict[str, Any]]:
    """What a trial reported, one dict per evaluation (Ray's result.json, one JSON line per report)."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# The per-evaluation figures kept from each trial: the candidates for ranking and cutting trials.
CURVE_METRICS = ("val/f1_macro", "val/f1_macro_tuned", "val/auc", "val/ap")


def search_figures(exp_dir: Path, anytime: bool = False) -> dict[str, Any]:
    """What a search did, from its folder: per trial its state, updates, best value and parameters;
    its curves of every candidate metric; and the held-out test figures of its best and baseline."""
    from tune.folder import SearchState, TrialState, failure_reason
    from tune.results import collect_trials

    metric = SearchState.load(exp_dir).metric
    trials = collect_trials(exp_dir)
    rows = []
    curves: dict[str, dict[int, list[float]]] = {m: {} for m in CURVE_METRICS}
    for t in trials:
        reports = [r for r in trial_reports(Path(t.path)) if not failure_reason(r)]
        for m in CURVE_METRICS:
            curves[m][t.number] = [r.get(m) for r in reports]
        rows.append({"trial": t.number, "state": t.state, "evals": t.evals,
                     "steps": max((int(r.get("step", 0)) for r in reports), default=0),  # optimizer updates run
                     "best_value": t.best_value, **t.params})
    best = [r["best_value"] for r in rows if r["best_value"] is not None and math.isfinite(r["best_value"])]
    summary = json.loads((exp_dir / "summary.json").read_text(encoding="utf-8"))
    test = summary.get("test") or {}
    tested = {role: m and {"trial": m["trial"], **{k: m["metrics"][k] for k in ("f1_macro", "accuracy", "auc",
                                                                               "threshold")}}
              for role, m in (test.get("models") or {}).items()}
    return {"metric": metric, "trials": rows, "curves": curves, "total_steps": sum(r["steps"] for r in rows),
            "anytime": anytime_with_test(exp_dir, trials, summary) if anytime else summary.get("anytime"),
            "best_value": max(best) if best else None, "best_trial": (summary.get("best") or {}).get("trial"),
            "test": tested, "test_pairs": test.get("pairs"),
            "stopped_early": sum(r["state"] == TrialState.STOPPED for r in rows),
            "failed": sum(r["state"] == TrialState.FAILED for r in rows)}


def anytime_with_test(exp_dir: Path, trials: list, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The search's anytime curve (summary.json, tune/anytime.py) with the held-out test F1 of every
    model on it: the kept model of each trial at the evaluation where it became the best so far
    (scored once each by tune.scoring.held_out_test, kept in test_scores.json); a point whose model
    was not kept (the trial's later evaluation was better) has none. The benchmark's cost only: a
    search's own reports score just the best and the baseline."""
    from tune.anytime import search_curve
    from tune.folder import SearchState
    from tune.scoring import held_out_test
    from tune.space import folder_space, search_base

    curve = summary.get("anytime")
    if not curve:
        return None
    state = SearchState.load(exp_dir)
    on_curve = set(zip(curve["trial"], curve["evals"]))
    models = {f"anytime_{t.number}": t for t in trials if (t.number, t.best_evals) in on_curve}
    test = held_out_test(exp_dir, search_base(folder_space(exp_dir, state), state.cwd), models)
    return search_curve(exp_dir, trials, state.metric, test)


def spearman_at_evals(curves: dict[int, list[float]], target: dict[int, float], max_t: int) -> list[float | None]:
    """Spearman's rank correlation, across trials, between a metric at evaluation k (k = 1..max_t)
    and each trial's final figure (`target`), for every k; None where it is undefined."""
    from scipy.stats import spearmanr

    out = []
    for k in range(max_t):
        pairs = [(c[k], target[n]) for n, c in curves.items()
                 if len(c) > k and c[k] is not None and target.get(n) is not None]
        if len(pairs) < 3 or len({a for a, _ in pairs}) < 2:
            out.append(None)
            continue
        rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
        out.append(None if rho != rho else float(rho))  # NaN: constant input
    return out


def perfect_asha_share(max_t: int, grace: int, rf: float) -> float:
    """The share of FIFO's updates a synchronous, perfectly informed ASHA uses: every trial runs to
    the first rung, a 1/rf share of them to the next, and so on, the last share to max_t."""
    rungs = asha_milestones(max_t, grace, rf)
    used, last, share = 0.0, 0, 1.0
    for r in rungs:
        used += share * (r - last)
        last, share = r, share / rf
    return (used + share * (max_t - last)) / max_t


def asha_milestones(max_t: int, grace: int, rf: float) -> list[int]:
    """The rungs of the search's ASHA (tune.scheduler): grace * rf^k below max_t."""
    from tune.scheduler import milestones

    return milestones(grace, rf, max_t)


def simulate_asha(curves: dict[int, list[float]], max_t: int, grace: int, rf: float,
                  order: list[int] | None = None, values: dict[int, list[float]] | None = None,
                  concurrency: int = 2) -> dict[str, Any]:
    """The search's ASHA rules (tune.scheduler.replay: a trial waits at a rung until it has a place)
    replayed on full learning curves (FIFO's), trials made in order (trial number, or `order`),
    `concurrency` at a time, every evaluation taking the same time. `curves` are what ASHA compares
    at its rungs; `values` (default: the same) what the search keeps: the best value a trial reaches
    before it is stopped. A replay, not a measurement: the real search would also sample other
    trials after TPE's start.
    """
    from tune.scheduler import replay

    values = values or curves
    numbers = list(order or sorted(curves))
    evals = replay([[math.nan if v is None else v for v in curves[n][:max_t]] for n in numbers], max_t, grace, rf,
                   concurrency=concurrency)
    best = max(v for n, e in zip(numbers, evals) for v in values[n][:e] if v is not None)
    full = sum(len(c[:max_t]) for c in curves.values())
    return {"grace_period": grace, "reduction_factor": rf, "rungs": asha_milestones(max_t, grace, rf),
            "evals_used": sum(evals), "evals_fifo": full, "steps_ratio": sum(evals) / full if full else None,
            "best_value": best}


def replay_orders(curves: dict[int, list[float]], max_t: int, grace: int, rf: float, goal: float,
                  n: int = 500, seed: int = 0, values: dict[int, list[float]] | None = None) -> dict[str, Any]:
    """`simulate_asha` over `n` random orders of the trials: which trials a rung cuts depends on
    which came before, so one order says little. The share of the updates used (mean, range) and
    how often the best value kept is at least `goal` of FIFO's best."""
    import random

    values = values or curves
    rng = random.Random(seed)
    numbers = sorted(curves)
    best = max(v for c in values.values() for v in c[:max_t] if v is not None)
    ratios, kept = [], []
    for _ in range(n):
        rng.shuffle(numbers)
        sim = simulate_asha(curves, max_t, grace, rf, order=list(numbers), values=values)
        ratios.append(sim["steps_ratio"])
        kept.append(sim["best_value"] / best)
    return {"grace_period": grace, "reduction_factor": rf, "rungs": asha_milestones(max_t, grace, rf),
            "perfect_share": perfect_asha_share(max_t, grace, rf),
            "orders": n, "steps_ratio_mean": sum(ratios) / n, "steps_ratio_min": min(ratios),
            "steps_ratio_max": max(ratios), "value_ratio_mean": sum(kept) / n,
            "share_goal_met": sum(k >= goal for k in kept) / n}
