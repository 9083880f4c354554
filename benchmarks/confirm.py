"""A winner that is confirmed, not lucky (issue 30): the whole search with its confirmation stage,
repeated over search seeds, on the demo space and on the CPU AFQMC space.

    python benchmarks/confirm.py [--spaces demo,afqmc_cpu] [--seeds 0,1,2] [--workdir DIR] [--json OUT]
    python benchmarks/confirm.py --quick          # tiny spaces: checks the mechanics, measures nothing

Each search is `python tune/search.py` with `search.confirm: {top_k: 3, seeds: 2, budget_share: 1.0}`
(the AFQMC spaces' default; the demo's is off) and `search.seed` set. From each summary.json, on the
held-out test pairs (no choice read them): the single-seed winner's F1-macro (the best trial by val,
as the search without the stage hands it over), the confirmed winner's (its mean over its seeds, and
the best seed's, the model best_model/ holds), the baseline's mean over the same seeds, the confirmed
winner against the baseline (gain, Welch's p, paired bootstrap interval), the seed ensemble against
the confirmed winner's best seed, and the stage's cost in updates and wall time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _benchutil as bu

SPACES = {"demo": bu.REPO / "tune" / "spaces" / "demo.yaml", "afqmc_cpu": bu.REPO / "tune" / "spaces" / "afqmc_cpu.yaml"}
CONFIRM = {"top_k": 3, "seeds": 2, "budget_share": 1.0}


def space_file(name: str, seed: int, workdir: Path, data: Path, quick: bool) -> Path:
    import yaml

    spec = yaml.safe_load(SPACES[name].read_text(encoding="utf-8"))
    spec["search"].update(seed=seed, confirm=dict(CONFIRM))
    if name == "afqmc_cpu":
        spec["params"].update(bu.shared_paths(data))
    else:
        spec["params"]["train_file"] = str(bu.REPO / "afqmc" / "demo_data" / "train.jsonl")
    if quick:
        spec["search"].update(num_samples=3, max_evals=4, grace_period=1, reduction_factor=2, n_startup_trials=2,
                              confirm={"top_k": 1, "seeds": 2, "budget_share": 3.0})
        spec["params"].update(max_train_samples=500, max_steps=20, eval_steps=5, tiny_hidden_size=32,
                              tiny_num_layers=1)
        spec["params"].pop("num_epochs", None)
    path = workdir / f"{name}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run(space: Path, results: Path, name: str) -> dict[str, Any]:
    exp = results / name
    summary_file = exp / "summary.json"
    wall = None
    if not (summary_file.is_file() and (json.loads(summary_file.read_text()).get("confirmation") or {}).get("complete")):
        shutil.rmtree(exp, ignore_errors=True)
        started = time.perf_counter()
        with open(results / f"{name}.log", "w", encoding="utf-8") as log:
            proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(space), "--name", name,
                                   "--results_dir", str(results)], cwd=bu.REPO, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=7200)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: tune/search.py exited with {proc.returncode}; see {results / name}.log")
    return figures(exp, wall)


def figures(exp: Path, wall: float | None) -> dict[str, Any]:
    from tune.results import collect_trials

    summary = json.loads((exp / "summary.json").read_text(encoding="utf-8"))
    conf = summary["confirmation"]
    configs = {c["trial"]: c for c in conf["configs"]}
    winner = configs.get(conf["winner"]) or {}
    baseline = next((c for c in conf["configs"] if c["is_baseline"]), {})
    ens = (summary.get("ensemble") or {}).get("test") or {}
    stage = [t for t in collect_trials(exp) if t.confirm_of is not None]
    return {"single_seed_winner": conf["single_seed_winner"], "changed_winner": conf["changed_winner"],
            "winner": conf["winner"], "winner_test_mean": (winner.get("test") or {}).get("mean"),
            "winner_best_seed_test": ((summary.get("test") or {}).get("models", {}).get("best") or {})
            .get("metrics", {}).get("f1_macro"),
            "baseline_test_mean": (baseline.get("test") or {}).get("mean"),
            "vs_baseline": conf.get("vs_baseline"),
            "ensemble_members": [m["trial"] for m in (summary.get("ensemble") or {}).get("members", [])],
            # the best model alone (no member added the margin): the ensemble is its best member, gain 0
            "ensemble_gain": 0.0 if (summary.get("ensemble") or {}).get("alone") else ens.get("gain_f1_macro"),
            "ensemble_gain_ci95": ens.get("gain_ci95"),
            "stage_updates": conf["cost"]["updates"], "search_updates": conf["cost"]["search_updates"],
            "stage_share": conf["cost"]["share_of_search"],
            "stage_trial_seconds": conf["cost"]["trial_seconds"],
            "stage_wall_s": _stage_wall(stage), "wall_s": wall, "plan": conf["plan"]}


def _stage_wall(stage: list) -> float | None:
    """Wall seconds from the stage's first report's start to its last report."""
    spans = [(t.history[0]["timestamp"] - (t.history[0].get("time_total_s") or 0), t.history[-1]["timestamp"])
             for t in stage if t.history and t.history[0].get("timestamp")]
    return None if not spans else max(e for _, e in spans) - min(s for s, _ in spans)


def _ms(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.splitlines()[0])
    p.add_argument("--spaces", default="demo,afqmc_cpu")
    p.add_argument("--seeds", default="0,1,2", help="search seeds (search.seed: the sampler's)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or "/tmp/confirm_bench").resolve()
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, Any] = {"benchmark": "confirm", "quick": args.quick, "machine": bu.machine(), "confirm": CONFIRM,
                           "spaces": {}}
    for name in [s for s in args.spaces.split(",") if s]:
        runs = {seed: run(space_file(name, seed, workdir, args.data, args.quick), results, f"{name}-seed{seed}")
                for seed in seeds}
        rows = list(runs.values())
        agg = {"single_seed_winner_test": _ms([r["single_seed_winner"]["test_f1"] for r in rows]),
               "confirmed_winner_test_mean": _ms([r["winner_test_mean"] for r in rows]),
               "confirmed_best_seed_test": _ms([r["winner_best_seed_test"] for r in rows]),
               "baseline_test_mean": _ms([r["baseline_test_mean"] for r in rows]),
               "ensemble_gain_vs_best_seed": _ms([r["ensemble_gain"] for r in rows]),
               "stage_share_of_updates": _ms([r["stage_share"] for r in rows]),
               "changed_winner": sum(bool(r["changed_winner"]) for r in rows)}
        out["spaces"][name] = {"runs": runs, "aggregate": agg}
        print(f"\n{name}: {len(rows)} searches (seeds {seeds})")
        for seed, r in runs.items():
            vs = r["vs_baseline"] or {}
            boot = (vs.get("bootstrap") or {}).get("ci95")
            print(f"  seed {seed}: single-seed winner trial {r['single_seed_winner']['trial']} test "
                  f"{r['single_seed_winner']['test_f1']}; confirmed winner trial {r['winner']} test mean "
                  f"{r['winner_test_mean']} (best seed {r['winner_best_seed_test']}); baseline mean "
                  f"{r['baseline_test_mean']}; gain {vs.get('gain')} p {vs.get('welch_p')} CI {boot}; "
                  f"ensemble {r['ensemble_members']} gain {r['ensemble_gain']} CI {r['ensemble_gain_ci95']}; "
                  f"stage {r['stage_updates']} updates ({r['stage_share']}), {r['stage_wall_s']} s")
        for key, value in agg.items():
            print(f"  {key}: {value}")
    bu.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
