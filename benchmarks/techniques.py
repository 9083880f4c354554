"""Each fine-tuning technique alone against the CPU space's baseline, on held-out test F1-macro.

    python benchmarks/techniques.py --json benchmarks/results/techniques.json   # ~50 min on 2 idle cores
    python benchmarks/techniques.py --quick [--only NAME,...]                  # a smoke run (3,000 pairs, 30 updates)

The baseline is the baseline trial of search_spaces/afqmc_cpu.yaml (the tiny BERT from scratch on
the shared AFQMC data: 25,600 train / 3,200 val / 3,200 held-out test pairs, the space's split), for
the space's budget of 800 updates. Each technique is turned on alone at a typical value; every
config trains with 3 seeds (initialisation, dropout, batch order) on the same split, tokenized once.
Each run keeps its best checkpoint by the cross-fitted val F1-macro (as a search trial does), and
that model is scored once on the held-out test split at its saved threshold.

FGM and R-Drop cost about twice an update: they run at equal updates and again at equal CPU time
(the updates the baseline's time buys at their measured cost per update), the fair comparison
inside a search's budget. A lexical floor (character n-gram TF-IDF + logistic regression, sklearn,
threshold chosen on val) is scored on the same split. Reported: mean +- std of test F1-macro over the
seeds, Welch's p against the baseline, and the cost per update against the baseline's.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import _benchutil as bu  # noqa: F401  (puts the repository on sys.path)

SPACE = bu.REPO / "search_spaces" / "afqmc_cpu.yaml"
TECHNIQUES: dict[str, dict[str, Any]] = {  # in the order they run (every technique's first seed, then the next)
    "baseline": {},
    "pair order (train + average)": {"augment_pair_order": True, "average_pair_orders": True},
    "EMA 0.99": {"ema_decay": 0.99},
    "R-Drop (alpha 1)": {"rdrop_alpha": 1.0},
    "FGM (epsilon 1)": {"fgm_epsilon": 1.0},
    "focal (gamma 2)": {"focal_gamma": 2.0},
    "layer-wise LR decay 0.8": {"layerwise_lr_decay": 0.8},
}
DOUBLE_COST = ("FGM (epsilon 1)", "R-Drop (alpha 1)")  # also run at equal CPU time

_DATA = None  # each worker process's tokenized data (prepare_data once per process)


def base_config(data_dir: Path, workdir: Path, steps: int):
    """The CPU space's baseline trial as one run (its fixed fields and baseline values)."""
    from tune.space import load_space, search_base, trial_config

    space = load_space(SPACE)
    cfg = trial_config(search_base(space, str(bu.REPO)), space.baseline(), source=str(SPACE))
    return cfg.replace(max_steps=steps, eval_steps=max(1, steps // 8), patience=0, output_dir=str(workdir),
                       **bu.shared_paths(data_dir))


def _init(cfg_dict: dict[str, Any], threads: int) -> None:
    global _DATA
    import torch

    from afqmc.config import from_dict
    from afqmc.train import prepare_data

    torch.set_num_threads(threads)
    _DATA = prepare_data(from_dict(cfg_dict, source="benchmark"), log=lambda *_: None)


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """One training run: the best val figure it chose by, its held-out test figures, its cost."""
    from afqmc.config import from_dict
    from afqmc.train import train

    cfg = from_dict(job["cfg"], source="benchmark")
    started = time.perf_counter()
    summary = train(cfg, data=_DATA, progress=False)
    wall = time.perf_counter() - started
    best = summary["best"]
    return {**{k: job[k] for k in ("name", "seed", "budget")}, "steps": summary["steps"],
            "val_f1_chosen": best["val/f1_macro"], "val_auc": best["val/auc"],
            "test_f1": summary["test"]["f1_macro"], "test_auc": summary["test"]["auc"],
            "wall_seconds": wall,
            "train_seconds_per_update": cfg.per_device_batch_size / summary["train_samples_per_second"]}


def _jobs(base, workdir: Path, name: str, budget: str, steps: int, seed: int, quick: bool) -> list[dict[str, Any]]:
    cfg = base.replace(seed=seed, max_steps=steps, eval_steps=max(1, steps // (2 if quick else 8)),
                       output_dir=str(workdir / f"{name}-{budget}-{seed}".replace(" ", "_")), **TECHNIQUES[name])
    return [{"name": name, "seed": seed, "budget": budget, "cfg": cfg.to_dict()}]


def _run_all(pool, todo: list[dict[str, Any]], log: Path) -> list[dict[str, Any]]:
    """Every job, each finished run appended to `log` as it finishes; runs already in `log` (a cut
    benchmark started again with the same --workdir) are kept and not run again."""
    log.parent.mkdir(parents=True, exist_ok=True)
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    key = lambda r: (r["name"], r["budget"], r["seed"], r.get("steps") or r["cfg"]["max_steps"])  # noqa: E731
    done = {key(r) for r in runs}
    for r in pool.map(_run, [j for j in todo if key(j) not in done]):
        runs.append(r)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"  {r['name']:<30} {r['budget']:<15} seed {r['seed']}  {r['steps']} updates  test F1 {r['test_f1']:.4f}"
              f"  AUC {r['test_auc']:.4f}", flush=True)
    return runs


def _costs(cfg_dict: dict[str, Any], names: list[str], short: int = 10, long: int = 50) -> dict[str, float]:
    """CPU seconds per update of each technique against the baseline's: the process time of a run of
    `long` updates minus that of `short` (set-up and the one evaluation cancel out), in one process.
    Process time, not wall time: on a shared, loaded machine wall-clock ratios of short runs swung
    from 1.05x to 2.9x for FGM; CPU time is what a search's budget spends."""
    from afqmc.config import from_dict
    from afqmc.train import train

    base = from_dict(cfg_dict, source="benchmark").replace(save_best_model=False)
    per_update = {}
    for n in names:
        times = []
        for steps in (short, long):
            started = time.process_time()
            train(base.replace(max_steps=steps, eval_steps=steps, **TECHNIQUES[n]), data=_DATA, progress=False)
            times.append(time.process_time() - started)
        per_update[n] = (times[1] - times[0]) / (long - short)
    return {n: per_update[n] / per_update["baseline"] for n in names}

def lexical_floor(base) -> dict[str, Any]:
    """Character 1-3-gram TF-IDF of each sentence; a pair is [a*b, |a-b|] (what the two share and
    what differs); logistic regression with balanced class weights; threshold chosen on val."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from afqmc.data import load_splits
    from afqmc.metrics import classification_metrics, ranking_metrics, tune_threshold

    splits = load_splits(base)
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    vec.fit(splits.train.text1 + splits.train.text2)

    def features(pairs):
        a, b = vec.transform(pairs.text1), vec.transform(pairs.text2)
        return sp.hstack([a.multiply(b), abs(a - b)]).tocsr()

    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
    model.fit(features(splits.train), splits.train.labels)
    val_p = model.predict_proba(features(splits.val))[:, 1]
    threshold, val_f1 = tune_threshold(splits.val.labels, val_p)
    test_p = model.predict_proba(features(splits.test))[:, 1]
    test = {**classification_metrics(splits.test.labels, test_p, threshold, prefix=""),
            **ranking_metrics(splits.test.labels, test_p, prefix="")}
    return {"val_f1_chosen": val_f1, "threshold": threshold, "test_f1": test["f1_macro"], "test_auc": test["auc"],
            "test_pairs": int(np.size(test_p))}


def summarize(runs: list[dict[str, Any]], costs: dict[str, float]) -> list[dict[str, Any]]:
    import numpy as np
    from scipy.stats import ttest_ind

    rows = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["name"], r["budget"]), []).append(r)
    base = [r["test_f1"] for r in groups[("baseline", "equal updates")]]
    for (name, budget), rs in groups.items():
        f1 = [r["test_f1"] for r in rs]
        p = None
        if name != "baseline" and len(f1) > 1 and len(base) > 1:
            p = float(ttest_ind(f1, base, equal_var=False).pvalue)
        rows.append({"technique": name, "budget": budget, "updates": rs[0]["steps"], "seeds": len(rs),
                     "test_f1_mean": float(np.mean(f1)), "test_f1_std": float(np.std(f1, ddof=1)) if len(f1) > 1 else None,
                     "gain": float(np.mean(f1) - np.mean(base)), "welch_p": p,
                     "test_auc_mean": float(np.mean([r["test_auc"] for r in rs])),
                     "val_f1_chosen_mean": float(np.mean([r["val_f1_chosen"] for r in rs])),
                     "cost_per_update": costs.get(name, 1.0)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,3", help="model seeds (the split stays the space's)")
    p.add_argument("--steps", type=int, default=800, help="optimizer updates per run (the CPU space's budget)")
    p.add_argument("--processes", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--only", help="comma-separated technique names (default: all)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = args.steps
    if args.quick:
        seeds, steps = seeds[:2], 30
    workdir = Path(args.workdir or bu.REPO / "results" / "bench_techniques")
    base = base_config(args.data, workdir, steps)
    if args.quick:  # 3,000 of the pairs: checks the script, measures nothing useful
        base = base.replace(max_train_samples=3000, eval_batch_size=128)
    names = [n for n in TECHNIQUES if not args.only or n in args.only.split(",") or n == "baseline"]
    print(f"baseline: the CPU space's baseline trial, {steps} updates; seeds {seeds}; techniques: {', '.join(names)}")
    floor = lexical_floor(base)
    print(f"lexical floor (char TF-IDF + logistic regression): test F1-macro {floor['test_f1']:.4f}, "
          f"AUC {floor['test_auc']:.4f} (val F1 at the val-chosen threshold {floor['val_f1_chosen']:.4f})")

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=ctx, initializer=_init,
                                                initargs=(base.to_dict(), args.threads)) as pool:
        spans = (5, 25) if args.quick else (10, 50)  # quick: checks the script, measures nothing useful
        costs = pool.submit(_costs, base.to_dict(), [n for n in names if n == "baseline" or n in DOUBLE_COST],
                            *spans).result()
        print(f"CPU time per update against the baseline's (runs of {spans[1]} minus runs of {spans[0]} updates): "
              + ", ".join(f"{n} {c:.2f}x" for n, c in costs.items()), flush=True)
        todo = [j for s in seeds for n in names for j in _jobs(base, workdir, n, "equal updates", steps, s, args.quick)]
        todo += [j for s in seeds for n in names if n in DOUBLE_COST
                 for j in _jobs(base, workdir, n, "equal CPU time", max(1, math.floor(steps / costs[n])), s, args.quick)]
        runs = _run_all(pool, todo, workdir / "runs.jsonl")
    rows = summarize(runs, costs)
    rows.append({"technique": "lexical floor: char TF-IDF + LR", "budget": "-", "seeds": 1,
                 "test_f1_mean": floor["test_f1"], "test_auc_mean": floor["test_auc"],
                 "val_f1_chosen_mean": floor["val_f1_chosen"]})
    print(bu.table(rows, ["technique", "budget", "updates", "seeds", "test_f1_mean", "test_f1_std", "gain", "welch_p",
                          "test_auc_mean", "val_f1_chosen_mean", "cost_per_update"],
                   title="held-out test F1-macro (mean over seeds; val_f1_chosen was used to choose: optimistic)"))
    bu.write_json(args.json, {"machine": bu.machine(), "steps": steps, "seeds": seeds, "rows": rows, "runs": runs,
                              "lexical_floor": floor, "baseline_config": base.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
