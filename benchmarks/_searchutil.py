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

# Full and quick budgets. Full: 2 epochs of the 28.8k AFQMC training pairs at batch 64, one evaluation
# per 150 updates (1/3 epoch). Quick: the first 2,000 pairs, 30 updates.
FULL = dict(num_samples=8, n_startup_trials=4, max_evals=6, grace_period=1, reduction_factor=3,
            eval_steps=150, max_train_samples=None)
QUICK = dict(num_samples=4, n_startup_trials=2, max_evals=3, grace_period=1, reduction_factor=2,
             eval_steps=10, max_train_samples=2000)


def budget(args) -> dict[str, Any]:
    """FULL or QUICK, with any of its keys overridden by a command-line option of the same name."""
    out = dict(QUICK if args.quick else FULL)
    for key in out:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def add_budget_args(p) -> None:
    for key in FULL:
        p.add_argument(f"--{key}", type=float if key == "reduction_factor" else int,
                       help=f"override the budget's {key} (full {FULL[key]}, quick {QUICK[key]})")


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


def trial_steps(trial_dir: Path) -> int:
    """Optimizer updates a trial ran: the last `step` it reported (Ray's result.json, one line per report)."""
    path = Path(trial_dir) / "result.json"
    steps = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                steps = max(steps, int(json.loads(line).get("step", 0)))
    return steps


def search_figures(exp_dir: Path) -> dict[str, Any]:
    from tune.results import collect_trials

    trials = collect_trials(exp_dir)
    rows = []
    for t in trials:
        rows.append({"trial": t.number, "state": t.state, "evals": t.evals, "steps": trial_steps(Path(t.path)),
                     "best_f1": t.best_value, **t.params})
    best = [r["best_f1"] for r in rows if r["best_f1"] is not None and math.isfinite(r["best_f1"])]
    return {"trials": rows, "total_steps": sum(r["steps"] for r in rows),
            "best_f1_macro": max(best) if best else None,
            "stopped_early": sum(r["state"] == "stopped early" for r in rows),
            "failed": sum(r["state"] == "failed" for r in rows)}
