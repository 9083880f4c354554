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

# The full budget is the product's CPU space as shipped (its search settings and eval_steps: 2 epochs of
# the 28.8k AFQMC training pairs at batch 64, one evaluation per 150 updates). Quick: the first 2,000
# pairs, 4 trials of up to 30 updates.
BUDGET_KEYS = ("num_samples", "n_startup_trials", "max_evals", "grace_period", "reduction_factor", "eval_steps",
               "max_train_samples")
QUICK = dict(num_samples=4, n_startup_trials=2, max_evals=3, grace_period=1, reduction_factor=2,
             eval_steps=10, max_train_samples=2000)


def full_budget() -> dict[str, Any]:
    space = yaml.safe_load(CPU_SPACE.read_text(encoding="utf-8"))
    out = {k: space["search"][k] for k in BUDGET_KEYS[:5]}
    out.update(eval_steps=space["params"]["eval_steps"], max_train_samples=space["params"].get("max_train_samples"))
    return out


def budget(args) -> dict[str, Any]:
    """The full or quick budget, with any of its keys overridden by a command-line option of the same name."""
    out = dict(QUICK) if args.quick else full_budget()
    for key in out:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def add_budget_args(p) -> None:
    full = full_budget()
    for key in BUDGET_KEYS:
        p.add_argument(f"--{key}", type=float if key == "reduction_factor" else int,
                       help=f"override the budget's {key} (full: search_spaces/afqmc_cpu.yaml's {full[key]}; "
                            f"quick {QUICK[key]})")


def write_space(path: Path, data_dir: Path, b: dict[str, Any], seed: int = 0) -> Path:
    """The product's CPU space (search_spaces/afqmc_cpu.yaml): its searched fields and fixed model,
    with the data paths from --data and the benchmark's budget."""
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
                    reduction_factor=b["reduction_factor"], cpus_per_trial=1, gpus_per_trial=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by benchmarks/ from {CPU_SPACE.name} with the benchmark's budget.\n"
                    + yaml.safe_dump({"search": settings, "params": params}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def searched_params(space_path: Path) -> dict[str, dict[str, Any]]:
    params = yaml.safe_load(Path(space_path).read_text(encoding="utf-8"))["params"]
    return {k: v for k, v in params.items() if isinstance(v, dict)}


def run_search(space_path: Path, name: str, scheduler: str, results_dir: Path, extra: list[str] = ()) -> dict[str, Any]:
    """`python tune/search.py --space ... --scheduler ...`, in this process; wall time and figures."""
    from tune.search import main as search_main

    started = time.perf_counter()
    rc = search_main(["--space", str(space_path), "--name", name, "--scheduler", scheduler,
                      "--results_dir", str(results_dir), *extra])
    wall = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"tune/search.py exited with {rc}")
    return {"wall_s": wall, **search_figures(results_dir / name)}


def trial_reports(trial_dir: Path) -> list[dict[str, Any]]:
    """What a trial reported, one dict per evaluation (Ray's result.json, one JSON line per report)."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def search_figures(exp_dir: Path) -> dict[str, Any]:
    from tune.results import collect_trials

    trials = collect_trials(exp_dir)
    rows = []
    curves = {}
    for t in trials:
        reports = trial_reports(Path(t.path))
        curves[t.number] = [r.get("val/f1_macro") for r in reports]
        rows.append({"trial": t.number, "state": t.state, "evals": t.evals,
                     "steps": max((int(r.get("step", 0)) for r in reports), default=0),  # optimizer updates run
                     "best_f1": t.best_value, **t.params})
    best = [r["best_f1"] for r in rows if r["best_f1"] is not None and math.isfinite(r["best_f1"])]
    return {"trials": rows, "curves": curves, "total_steps": sum(r["steps"] for r in rows),
            "best_f1_macro": max(best) if best else None,
            "stopped_early": sum(r["state"] == "stopped early" for r in rows),
            "failed": sum(r["state"] == "failed" for r in rows)}


def asha_milestones(max_t: int, grace: int, rf: float) -> list[int]:
    """Ray's AsyncHyperBandScheduler rungs (one bracket): grace * rf^k below max_t."""
    n = int(math.log(max_t / grace) / math.log(rf) + 1)
    return [int(grace * rf ** k) for k in range(n) if grace * rf ** k < max_t]


def simulate_asha(curves: dict[int, list[float]], max_t: int, grace: int, rf: float,
                  order: list[int] | None = None) -> dict[str, Any]:
    """ASHA's stopping rule replayed on full learning curves (FIFO's), trials taken in order
    (trial number, or `order`).

    Ray's rule: when a trial reaches a rung, it stops if its current value is below the
    (1 - 1/rf) quantile of the values recorded at that rung so far (the first one always goes on).
    A replay, not a measurement: the real search would also sample other trials after TPE's start.
    """
    import numpy as np

    rungs: dict[int, list[float]] = {m: [] for m in asha_milestones(max_t, grace, rf)}
    used, best = 0, -math.inf
    for number in order or sorted(curves):
        curve = curves[number][:max_t]
        stop_at = len(curve)
        for i, value in enumerate(curve, start=1):
            if i in rungs:
                recorded = rungs[i]
                cutoff = np.nanpercentile(recorded, (1 - 1 / rf) * 100) if recorded else None
                recorded.append(value)
                if cutoff is not None and value < cutoff:
                    stop_at = i
                    break
        used += stop_at
        best = max([best, *[v for v in curve[:stop_at] if v is not None]])
    full = sum(len(c[:max_t]) for c in curves.values())
    return {"grace_period": grace, "reduction_factor": rf, "rungs": list(rungs), "evals_used": used,
            "evals_fifo": full, "steps_ratio": used / full if full else None, "best_f1_macro": best}


def replay_orders(curves: dict[int, list[float]], max_t: int, grace: int, rf: float, f1_goal: float,
                  n: int = 500, seed: int = 0) -> dict[str, Any]:
    """`simulate_asha` over `n` random orders of the trials: which trials a rung cuts depends on
    which came before, so one order says little. The share of the updates used (mean, range) and
    how often the best F1-macro kept is at least `f1_goal` of FIFO's best."""
    import random

    rng = random.Random(seed)
    numbers = sorted(curves)
    best = max(v for c in curves.values() for v in c[:max_t] if v is not None)
    ratios, kept = [], []
    for _ in range(n):
        rng.shuffle(numbers)
        sim = simulate_asha(curves, max_t, grace, rf, order=list(numbers))
        ratios.append(sim["steps_ratio"])
        kept.append(sim["best_f1_macro"] / best)
    return {"grace_period": grace, "reduction_factor": rf, "rungs": asha_milestones(max_t, grace, rf),
            "orders": n, "steps_ratio_mean": sum(ratios) / n, "steps_ratio_min": min(ratios),
            "steps_ratio_max": max(ratios), "f1_ratio_mean": sum(kept) / n,
            "share_f1_goal_met": sum(k >= f1_goal for k in kept) / n}
