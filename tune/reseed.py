"""Is the winner real? Retrain the best and the baseline config of a search with K seeds.

    python tune/compare.py --reseed K results/NAME [--max_steps N] [--seeds 43,44,45]

Each config is trained K times with `afqmc.train.train`, in this process, one run after the other,
on the search's own train/val split (tokenized once): only the seed of the model's initialisation,
dropout and batch order changes. Each run gets the search's budget per trial (`max_evals`
evaluations) and is scored like a trial, by its best val F1-macro. The default seeds are the K seeds
after the search's own: the search picked the winner on its own seed, so that run is optimistic.

Prints and writes reseed.json and reseed.md in the search folder: the mean and standard deviation
of val F1-macro for each config, the gain of the best over the baseline, the gain in units of the
pooled standard deviation, and Welch's t-test.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from afqmc.config import TrainConfig, from_dict, load_config
from tune.reports import SHORT, fmt_param, markdown_table
from tune.results import PRIMARY, TrialRecord, best_trial, collect_trials, load_state

# Fields that decide the data and its tokenization: both configs must agree to share one TaskData.
DATA_FIELDS = ("train_file", "val_file", "val_ratio", "max_train_samples", "skip_empty", "max_length",
               "model_name_or_path", "vocab_file", "trust_remote_code", "seed")


def trial_config(experiment_dir: Path, trial: TrialRecord, state: dict[str, Any]) -> TrainConfig:
    """The trial's resolved TrainConfig: from its checkpoint, or rebuilt from the space (a trial without one)."""
    if trial.best_checkpoint and (Path(trial.best_checkpoint) / "model" / "train_config.yaml").is_file():
        return load_config(Path(trial.best_checkpoint) / "model" / "train_config.yaml")
    from tune.space import load_space

    space = load_space(experiment_dir / "space.yaml", state.get("overrides"), state.get("num_samples"))
    cwd = Path(state.get("cwd", "."))
    cfg = from_dict(trial.params, source=f"trial {trial.number}", base=space.base)
    paths = {k: str((cwd / getattr(cfg, k)).resolve()) for k in ("train_file", "val_file", "vocab_file")
             if getattr(cfg, k)}
    return cfg.replace(**paths)


def budget_steps(cfg: TrainConfig, n_train: int, max_evals: int | None) -> int:
    """The optimizer updates a trial of the search could make: its schedule, cut at max_evals evaluations."""
    from tune.trial import planned_evals

    updates_per_epoch = math.ceil(math.ceil(n_train / cfg.per_device_batch_size) / cfg.gradient_accumulation_steps)
    total = cfg.max_steps or math.ceil(updates_per_epoch * cfg.num_epochs)
    if max_evals and planned_evals(cfg, n_train) > max_evals:
        total = min(total, max_evals * (cfg.eval_steps or updates_per_epoch))
    return total


def reseed(experiment_dir: str | Path, k: int, seeds: list[int] | None = None, max_steps: int | None = None,
           log=print) -> dict[str, Any]:
    from afqmc.train import prepare_data, train

    experiment_dir = Path(experiment_dir).resolve()
    state = load_state(experiment_dir)
    if not state:
        raise FileNotFoundError(f"{experiment_dir}: not a search folder (no search.json)")
    trials = collect_trials(experiment_dir)
    best = best_trial(trials)
    baseline = next((t for t in trials if t.is_baseline), None)
    if best is None:
        raise ValueError(f"{experiment_dir}: no trial has a result yet")
    if baseline is None:
        raise ValueError(f"{experiment_dir}: the baseline trial is not in the search yet")

    configs = {"best": best_config(experiment_dir, best, state), "baseline": trial_config(experiment_dir, baseline, state)}
    same = best.number == baseline.number
    if same:
        del configs["baseline"]  # the baseline won: nothing to compare it with
    own_seed = configs["best"].seed
    seeds = seeds or [own_seed + i for i in range(1, k + 1)]
    data = prepare_data(configs["best"], log=log)  # the search's split (its seed), tokenized once
    max_evals = state.get("settings", {}).get("max_evals")

    results: dict[str, Any] = {}
    for role, cfg in configs.items():
        trial = best if role == "best" else baseline
        if any(getattr(cfg, f) != getattr(configs["best"], f) for f in DATA_FIELDS):
            run_data = prepare_data(cfg, log=log)
        else:
            run_data = data
        steps = max_steps or budget_steps(cfg, len(run_data.train), max_evals)
        values, runs = [], []
        for seed in seeds:
            out = tempfile.mkdtemp(prefix=f"reseed-{role}-{seed}-")
            run_cfg = cfg.replace(seed=seed, max_steps=steps, output_dir=out, test_file=None, save_best_model=False)
            try:
                summary = train(run_cfg, report=None, data=run_data, progress=False)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            value = float(summary["best"][PRIMARY])
            values.append(value)
            runs.append({"seed": seed, PRIMARY: value, "best_step": summary["best_step"], "steps": summary["steps"]})
            log(f"{role} (trial {trial.number}) seed {seed}: best {PRIMARY} {value:.4f} at step {summary['best_step']}")
        results[role] = {"trial": trial.number, "trial_id": trial.trial_id, "search_value": trial.best_value,
                         "params": trial.params, "steps": steps, "runs": runs, "values": values,
                         "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    if same:
        results["baseline"] = results["best"]

    report = _verdict(results, same)
    report.update({"search": experiment_dir.name, "seeds": seeds, "search_seed": own_seed, "results": results})
    (experiment_dir / "reseed.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = reseed_markdown(report)
    (experiment_dir / "reseed.md").write_text(text, encoding="utf-8")
    log("\n" + text)
    return report


def best_config(experiment_dir: Path, best: TrialRecord, state: dict[str, Any]) -> TrainConfig:
    """best_config.yaml (what a user retrains), else the trial's own config."""
    path = experiment_dir / "best_config.yaml"
    cfg = load_config(path) if path.is_file() else trial_config(experiment_dir, best, state)
    return cfg


def _verdict(results: dict[str, Any], same: bool) -> dict[str, Any]:
    b, a = results["best"], results["baseline"]
    gain = b["mean"] - a["mean"]
    out: dict[str, Any] = {"gain": gain, "pooled_std": None, "gain_in_pooled_std": None, "welch_p": None}
    if same:
        out["verdict"] = "the baseline is the best trial: there is no gain to test"
        return out
    if b["std"] is None or a["std"] is None:
        out["verdict"] = "one seed per config: no standard deviation, no verdict"
        return out
    pooled = math.sqrt((b["std"] ** 2 + a["std"] ** 2) / 2)
    out["pooled_std"] = pooled
    out["gain_in_pooled_std"] = gain / pooled if pooled > 0 else None
    if pooled > 0:
        from scipy.stats import ttest_ind

        out["welch_p"] = float(ttest_ind(b["values"], a["values"], equal_var=False).pvalue)
    se = math.sqrt(b["std"] ** 2 / len(b["values"]) + a["std"] ** 2 / len(a["values"]))
    if gain > 2 * se:
        out["verdict"] = (f"the gain {gain:+.4f} is larger than seed noise (more than twice its standard error "
                          f"{se:.4f})")
    elif gain > 0:
        out["verdict"] = (f"the gain {gain:+.4f} is within seed noise (standard error {se:.4f}): more seeds, or a "
                          f"longer budget, are needed to call a winner")
    else:
        out["verdict"] = f"no gain: the baseline does as well or better over these seeds ({gain:+.4f})"
    return out


def reseed_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    seeds = report["seeds"]
    headers = ["config", "trial", "search's value"] + [f"seed {s}" for s in seeds] + ["mean", "std", "params"]
    rows = []
    for role in ("best", "baseline"):
        r = res[role]
        params = " ".join(f"{SHORT.get(k, k)}={fmt_param(v)}" for k, v in r["params"].items())
        rows.append([role, str(r["trial"]), f"{r['search_value']:.4f}" if r["search_value"] is not None else "-"]
                    + [f"{v:.4f}" for v in r["values"]]
                    + [f"{r['mean']:.4f}", f"{r['std']:.4f}" if r["std"] is not None else "-", params])
    lines = [f"# Reseed of `{report['search']}`: best against baseline over {len(seeds)} seeds", "",
             f"Each run: {res['best']['steps']} optimizer updates (the search's budget per trial unless --max_steps), "
             f"the search's train/val split; scored by its best val F1-macro. The search itself used seed "
             f"{report['search_seed']}.", "",
             markdown_table(headers, rows, right=set(range(1, len(headers) - 1)))]
    if report["pooled_std"] is not None:
        p = f", Welch's t-test p = {report['welch_p']:.3f}" if report["welch_p"] is not None else ""
        ratio = (f"{report['gain_in_pooled_std']:.2f} pooled std ({report['pooled_std']:.4f})"
                 if report["gain_in_pooled_std"] is not None else "the seeds gave identical values (pooled std 0)")
        lines.append(f"Gain of the best over the baseline: {report['gain']:+.4f} mean val F1-macro = {ratio}{p}.")
    lines += [f"Verdict: {report['verdict']}.", ""]
    return "\n".join(lines)
