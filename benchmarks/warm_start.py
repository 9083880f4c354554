"""Searches that build on each other (issue 29): a warm start, an extension and a transfer between
tasks, each against a cold search, on the demo space and on the CPU AFQMC space.

    python benchmarks/warm_start.py [--spaces demo,afqmc_cpu] [--half 8] [--workdir DIR] [--json OUT]
    python benchmarks/warm_start.py --quick        # tiny spaces: checks the mechanics, measures nothing

Per space, all with the space's own seed, ASHA, `python tune/search.py` as a user runs it:
- first:  a search of `half` trials;
- cold:   a search of 2 x `half` trials from nothing;
- extend: a copy of `first`, grown to 2 x `half` trials (`--resume --num_samples`);
- warm:   a search of `half` trials warm-started from `first` (the same task: its top-k enqueued, its
          trials inform TPE);
- xfer:   a search of `half` trials warm-started from the other space's `first` (another task: the
          top-k enqueued only), against `first` (a cold search of the same size).

Reported from each search's summary.json: the best val value (it chose the winner: optimistic), the
optimizer updates spent, the updates at which the anytime curve first reached 0.99 of the cold
search's best, and the held-out test F1-macro of the winner (pairs no choice has seen). The goal on
the demo space: the warm search reaches 0.99 of the cold search's best val in at most half of the
cold search's updates. Every search folder is kept in the workdir; a run found complete there is
read, not run again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _benchutil as bu

SPACES = {"demo": bu.REPO / "tune" / "spaces" / "demo.yaml", "afqmc_cpu": bu.REPO / "tune" / "spaces" / "afqmc_cpu.yaml"}


def space_file(name: str, workdir: Path, data: Path, quick: bool) -> Path:
    import yaml

    spec = yaml.safe_load(SPACES[name].read_text(encoding="utf-8"))
    spec["search"]["confirm"] = False  # the searches themselves are compared (the stage: confirm.py)
    if name == "afqmc_cpu":
        spec["params"].update(bu.shared_paths(data))
    else:
        spec["params"]["train_file"] = str(bu.REPO / "afqmc" / "demo_data" / "train.jsonl")
    if quick:
        spec["search"].update(max_evals=4, grace_period=1, reduction_factor=2, n_startup_trials=2)
        spec["params"].update(max_train_samples=500, max_steps=20, eval_steps=5, tiny_hidden_size=32,
                              tiny_num_layers=1)
        spec["params"].pop("num_epochs", None)
    path = workdir / f"{name}.yaml"
    path.write_text(f"# {name}, for benchmarks/warm_start.py\n" + yaml.safe_dump(spec, sort_keys=False),
                    encoding="utf-8")
    return path


def _complete(exp: Path) -> bool:
    path = exp / "summary.json"
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("complete", False)


def _run(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "tune/search.py", *cmd], cwd=bu.REPO, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"tune/search.py {' '.join(cmd)} exited with {proc.returncode}; see {log}")
    return time.perf_counter() - started


def search(space: Path, results: Path, name: str, n: int, extra: list[str] = ()) -> dict[str, Any]:
    exp = results / name
    wall = None
    if not _complete(exp):
        shutil.rmtree(exp, ignore_errors=True)
        wall = _run(["--space", str(space), "--name", name, "--results_dir", str(results), "--num_samples", str(n),
                     *extra], results / f"{name}.log")
    return {**figures(exp), "wall_s": wall}


def extend(results: Path, source: str, name: str, n: int) -> dict[str, Any]:
    exp = results / name
    wall = None
    if not _complete(exp) or json.loads((exp / "summary.json").read_text(encoding="utf-8"))["trials"] < n:
        if not exp.exists():
            shutil.copytree(results / source, exp)
        wall = _run(["--resume", str(exp), "--num_samples", str(n)], results / f"{name}.log")
    return {**figures(exp), "wall_s": wall}


def figures(exp: Path) -> dict[str, Any]:
    summary = json.loads((exp / "summary.json").read_text(encoding="utf-8"))
    models = (summary.get("test") or {}).get("models") or {}
    best = summary.get("best") or {}
    warm = summary.get("warm_start") or {}
    trials = {}
    with open(exp / "trials.csv", encoding="utf-8") as fh:
        import csv

        for row in csv.DictReader(fh):
            trials[int(row["trial"])] = row
    return {"trials": summary["trials"], "best_val": best.get("value"), "best_trial": best.get("trial"),
            "updates": summary["budget"]["optimizer_steps"], "anytime": summary.get("anytime"),
            "test_f1": (models.get("best") or {}).get("metrics", {}).get("f1_macro"),
            "baseline_test_f1": (models.get("baseline") or {}).get("metrics", {}).get("f1_macro"),
            "extensions": summary.get("extensions") or [],
            "enqueued": [{"from": e["from"], "source_val": e["value"],
                          **_enqueued_result(trials, e["params"], summary["metric"])}
                         for e in warm.get("enqueued", [])],
            "informing": sum(s.get("informing", 0) for s in warm.get("sources", []))}


def _enqueued_result(trials: dict[int, dict], params: dict[str, Any], metric: str) -> dict[str, Any]:
    """What an enqueued configuration scored in the new search: its trial, val value and rank there."""
    order = sorted((r for r in trials.values() if r.get(metric)), key=lambda r: -float(r[metric]))
    for rank, row in enumerate(order, start=1):
        if all(_close(row.get(k), v) for k, v in params.items()):
            return {"trial": int(row["trial"]), "val": float(row[metric]), "rank": rank, "of": len(order)}
    return {"trial": None}


def _close(cell: Any, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(cell) == str(value)
    try:
        return abs(float(cell) - value) <= 1e-6 * max(1.0, abs(value))
    except (TypeError, ValueError):
        return False


def reach(run: dict[str, Any], target: float | None) -> int | None:
    from tune.anytime import reach as first_reach

    if target is None or not run.get("anytime"):
        return None
    hit = first_reach(run["anytime"], target)
    return None if hit is None else int(hit["updates"])


def measure(args) -> dict[str, Any]:
    workdir = Path(args.workdir or "/tmp/warm_start_bench").resolve()
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    spaces = [s for s in args.spaces.split(",") if s]
    half = args.half
    files = {s: space_file(s, workdir, args.data, args.quick) for s in SPACES}
    out: dict[str, Any] = {"benchmark": "warm_start", "quick": args.quick, "machine": bu.machine(), "half": half,
                           "workdir": str(workdir), "spaces": {}}
    for s in SPACES:  # every space's `first` search: the transfers start from the other space's
        search(files[s], results, f"{s}-first", half)
    for s in spaces:
        other = next(o for o in SPACES if o != s)
        runs = {"first": figures(results / f"{s}-first"),
                "cold": search(files[s], results, f"{s}-cold", 2 * half),
                "extend": extend(results, f"{s}-first", f"{s}-extend", 2 * half),
                "warm": search(files[s], results, f"{s}-warm", half, ["--warm_start", str(results / f"{s}-first")]),
                "xfer": search(files[s], results, f"{s}-xfer", half, ["--warm_start", str(results / f"{other}-first")])}
        cold_best = runs["cold"]["best_val"]
        target = None if cold_best is None else 0.99 * cold_best
        for run in runs.values():
            run["updates_to_099_cold"] = reach(run, target)
        warm_reach = runs["warm"]["updates_to_099_cold"]
        out["spaces"][s] = {
            "runs": runs, "cold_best": cold_best,
            "warm_share_of_cold_updates": None if warm_reach is None else warm_reach / runs["cold"]["updates"],
            "warm_share_with_source": None if warm_reach is None else
            (warm_reach + runs["first"]["updates"]) / runs["cold"]["updates"],
            "goal_warm_half": None if warm_reach is None else warm_reach <= 0.5 * runs["cold"]["updates"]}
    return out


def report(out: dict[str, Any]) -> None:
    for s, res in out["spaces"].items():
        rows = []
        for label, run in res["runs"].items():
            rows.append({"run": label, "trials": run["trials"], "best val (chose)": _f(run["best_val"]),
                         "updates": f"{run['updates']:,}", "to 0.99 cold": run["updates_to_099_cold"],
                         "test F1 (winner)": _f(run["test_f1"]), "test F1 (baseline)": _f(run["baseline_test_f1"])})
        print(bu.table(rows, list(rows[0]), title=f"{s}: cold best val {_f(res['cold_best'])}"))
        for label in ("warm", "xfer"):
            for e in res["runs"][label]["enqueued"]:
                print(f"  {label}: enqueued {e['from']} (val {e['source_val']:.4f} there): "
                      + (f"trial {e['trial']}, val {e['val']:.4f} here, rank {e['rank']} of {e['of']}"
                         if e.get("trial") is not None else "not found among the trials"))
        share = res["warm_share_of_cold_updates"]
        if share is not None:
            print(f"  warm reached 0.99 of the cold best after {share:.1%} of the cold search's updates "
                  f"({res['warm_share_with_source']:.1%} counting its source's)")
            print(bu.verdict(f"{s}: warm start reaches 0.99 of cold's best val", share, "<= 50% of cold's updates",
                             bool(res["goal_warm_half"])))
        else:
            print("  warm never reached 0.99 of the cold search's best val")


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.splitlines()[0])
    p.add_argument("--spaces", default="demo,afqmc_cpu", help="comma-separated: demo, afqmc_cpu")
    p.add_argument("--half", type=int, default=8, help="trials of the first, warm and transfer searches (the cold "
                                                       "and extended ones have twice as many)")
    args = p.parse_args(argv)
    if args.quick:
        args.half = min(args.half, 2)
    out = measure(args)
    report(out)
    bu.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
