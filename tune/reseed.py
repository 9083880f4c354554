"""Is the winner real? Retrain the best and the baseline config of a search with K seeds.

    python tune/compare.py --reseed K results/NAME [--max_steps N] [--seeds 43,44,45]

Each config is trained K times with `afqmc.train.train`, in this process, one run after the other,
on the search's own train/val split (tokenized once): only the seed of the model's initialisation,
dropout and batch order changes. Each run gets the search's budget per trial (`max_evals`
evaluations) and chooses its checkpoint and threshold on val like a trial; its best model is then
scored once on the search's held-out test set (when the search has one), at its saved threshold.
The default seeds are the K seeds after the search's own: the search picked the winner on its own
seed, so that run is optimistic.

Prints and writes reseed.json and reseed.md in the search folder: for each config the mean and
standard deviation over the seeds of the held-out test F1-macro (the figure that judges) and of
the best val value (the one that chose), the gain of the best over the baseline on each, the gain in
units of the pooled standard deviation, and Welch's t-test.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from afqmc.checkpoint import CONFIG_NAME
from afqmc.config import DATA_FIELDS, ConfigError, TrainConfig, from_dict, load_config, read_yaml_mapping
from tune import space
from tune.folder import BEST_CONFIG, RESEED_ENSEMBLE_JSON, RESEED_JSON, RESEED_MD, SUMMARY, SearchState, format_params
from tune.reports import markdown_table
from tune.results import TrialRecord, best_trial, collect_trials
from tune.scoring import kept_config, kept_model


def trial_config(experiment_dir: Path, trial: TrialRecord, state: SearchState) -> TrainConfig:
    """The trial's resolved TrainConfig: its kept model's, or rebuilt from the space (a trial without one)."""
    if trial.best_checkpoint and (kept_model(trial) / CONFIG_NAME).is_file():
        return kept_config(trial)
    return space.trial_config(space.folder_config(experiment_dir, state), trial.params, source=f"trial {trial.number}")


def budget_steps(trial: TrialRecord, max_evals: int | None) -> int:
    """The optimizer updates a trial of the search could make: the schedule its train() reported,
    cut at the search's max_evals evaluations."""
    last = next((r for r in reversed(trial.history) if r.get("planned_updates")), None)
    if last is None:
        raise ValueError(f"trial {trial.number} reported no schedule: its budget is unknown (give --max_steps)")
    total = int(last["planned_updates"])
    return min(total, int(max_evals) * int(last["eval_every"])) if max_evals else total


def reseed(experiment_dir: str | Path, k: int, seeds: list[int] | None = None, max_steps: int | None = None,
           log=print, against: str | Path | None = None) -> dict[str, Any]:
    """The best trial's config and the baseline trial's over `k` seeds (see the module's docstring).
    `against`: a YAML file of TrainConfig fields that replace the baseline's (the same data), to
    weigh the winner against another starting point, such as one not tuned on this data."""
    from afqmc.train import prepare_data

    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    trials = collect_trials(experiment_dir)
    best = best_trial(trials)
    baseline = next((t for t in trials if t.is_baseline), None)
    if best is None or baseline is None:
        raise ValueError(f"{experiment_dir}: " + ("no trial has a result yet" if best is None else
                                                  "the baseline trial is not in the search yet"))

    configs = {"best": best_config(experiment_dir, best, state),
               "baseline": trial_config(experiment_dir, baseline, state)}
    baseline_label = _label(baseline)
    if against is not None:
        configs["baseline"], baseline_label = _against(against, configs["baseline"])
    same = best.number == baseline.number and against is None
    if same:
        del configs["baseline"]  # the baseline won: nothing to compare it with
    own_seed = configs["best"].seed
    seeds = seeds or [own_seed + i for i in range(1, k + 1)]
    metric = state.metric
    search = _search_config(experiment_dir, state, configs["best"], log)
    data = prepare_data(search, log=log)  # the search's split (its seed) and held-out test set, tokenized once
    max_evals = state.settings.get("max_evals")

    results: dict[str, Any] = {}
    labels = {"best": _label(best), "baseline": baseline_label}
    for role, cfg in configs.items():
        label = labels[role]
        if any(getattr(cfg, f) != getattr(search, f) for f in (*DATA_FIELDS, "seed")):
            raise ValueError(f"{role} ({label['trial']}): its data settings differ from the search's; cannot reseed "
                             f"it on the search's split")
        # Every config gets the budget of the trial it is compared with (the one `against` replaces).
        steps = max_steps or budget_steps(best if role == "best" else baseline, max_evals)
        runs = [_run_seed(cfg.replace(seed=seed, max_steps=steps, metric_for_best_model=metric), data,
                          f"{role} ({label['trial']})", log) for seed in seeds]
        results[role] = {**label, "steps": steps, "runs": runs,
                         "val": seed_stats([r["val"] for r in runs]),
                         "test": seed_stats([r["test"] for r in runs]) if data.test is not None else None}
    if same:
        results["baseline"] = results["best"]

    report = {"search": experiment_dir.name, "metric": metric, "seeds": seeds, "search_seed": own_seed,
              "against": str(against) if against is not None else None,
              "test_pairs": len(data.test) if data.test is not None else 0,
              "test_source": data.test.source if data.test is not None else None,
              "val": seed_verdict(results, "val", same), "results": results}
    report["test"] = seed_verdict(results, "test", same) if data.test is not None else None
    (experiment_dir / RESEED_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = reseed_markdown(report)
    (experiment_dir / RESEED_MD).write_text(text, encoding="utf-8")
    log("\n" + text)
    return report


def _search_config(experiment_dir: Path, state: SearchState, best: TrainConfig, log) -> TrainConfig:
    """The search's fixed config from its folder; the best trial's (the same data fields) when the
    space copy cannot be read, and a note that says so."""
    try:
        return space.folder_config(experiment_dir, state)
    except (ConfigError, OSError) as exc:
        log(f"note: the search's space copy is not readable ({exc}); its data settings are taken from the best "
            f"trial's config")
        return best


def _label(trial: TrialRecord) -> dict[str, Any]:
    return {"trial": trial.number, "trial_id": trial.trial_id, "search_value": trial.best_value, "params": trial.params}


def _against(path: str | Path, baseline: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The baseline's config with the fields of `path` (errors name the file, line and field)."""
    changes, lines = read_yaml_mapping(path)
    cfg = from_dict(changes, source=str(path), base=baseline, lines=lines)
    return cfg, {"trial": Path(path).name, "trial_id": None, "search_value": None, "params": changes}


def _run_seed(cfg: TrainConfig, data, name: str, log) -> dict[str, Any]:
    """One retraining in a scratch folder: its best val value (which chose its checkpoint and
    threshold) and its best model's held-out test F1-macro (None without a test set)."""
    from afqmc.train import train

    out = tempfile.mkdtemp(prefix=f"reseed-{cfg.seed}-")
    # The best model is saved only to score it on the held-out test set; nothing else is predicted.
    run_cfg = cfg.replace(output_dir=out, test_file=None, save_best_model=data.test is not None)
    try:
        summary = train(run_cfg, report=None, data=data, progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    metric = cfg.metric_for_best_model
    run = {"seed": cfg.seed, "val": float(summary["best"][metric]), "best_step": summary["best_step"],
           "steps": summary["steps"], "threshold": summary["best"].get("val/threshold"),
           "test": summary["test"]["f1_macro"] if "test" in summary else None}
    log(f"{name} seed {cfg.seed}: best {metric} {run['val']:.4f} at step {run['best_step']}"
        + (f", held-out test F1-macro {run['test']:.4f}" if run["test"] is not None else ""))
    return run


def seed_stats(values: list[float]) -> dict[str, Any]:
    return {"values": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def best_config(experiment_dir: Path, best: TrialRecord, state: SearchState) -> TrainConfig:
    """best_config.yaml (what a user retrains), else the trial's own config."""
    path = experiment_dir / BEST_CONFIG
    cfg = load_config(path) if path.is_file() else trial_config(experiment_dir, best, state)
    return cfg


def seed_verdict(results: dict[str, Any], figure: str, same: bool) -> dict[str, Any]:
    """Best against baseline on `figure` (test or val): the gain, the pooled std, Welch's p, in words."""
    b, a = results["best"][figure], results["baseline"][figure]
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
    # Welch's test, not "twice the standard error": with 3 seeds a side its t distribution has ~2-4
    # degrees of freedom, and 2 standard errors is far from 5%.
    p = out["welch_p"]
    if gain > 0 and p is not None and p < 0.05:
        out["verdict"] = (f"the gain {gain:+.4f} is larger than seed noise (Welch's p = {p:.3f} < 0.05; standard "
                          f"error {se:.4f})")
    elif gain > 0:
        out["verdict"] = (f"the gain {gain:+.4f} is within seed noise (Welch's p = {p if p is None else round(p, 3)}"
                          f", standard error {se:.4f}): more seeds, or a longer budget, are needed to call a winner")
    else:
        out["verdict"] = f"no gain: the baseline does as well or better over these seeds ({gain:+.4f})"
    return out


def reseed_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    seeds = report["seeds"]
    metric = report["metric"]
    figures = [("test", "held-out test F1-macro")] if report.get("test") else []
    figures.append(("val", f"best val {metric} (chose the checkpoint: optimistic)"))
    headers = ["config", "trial", "figure", "search's value"] + [f"seed {s}" for s in seeds] + ["mean", "std", "params"]
    rows = []
    for role in ("best", "baseline"):
        r = res[role]
        params = format_params(r["params"])
        for figure, _ in figures:
            stats = r[figure]
            search_value = r["search_value"] if figure == "val" else None
            rows.append([role, str(r["trial"]), figure, f"{search_value:.4f}" if search_value is not None else "-"]
                        + [f"{v:.4f}" for v in stats["values"]]
                        + [f"{stats['mean']:.4f}", f"{stats['std']:.4f}" if stats["std"] is not None else "-", params])
    test = (f"; its best model scored once on the held-out test set ({report['test_pairs']} pairs, "
            f"{report['test_source']}) at its saved threshold") if report.get("test") else \
        "; the search has no held-out test set, so only val figures (which chose) are compared"
    other = f"`{Path(report['against']).name}` (the baseline with its fields)" if report.get("against") else "baseline"
    lines = [f"# Reseed of `{report['search']}`: best against {other} over {len(seeds)} seeds", "",
             f"Each run: {res['best']['steps']} optimizer updates (the search's budget per trial unless --max_steps), "
             f"the search's train/val split, checkpoint and threshold chosen on val by {metric}{test}. The search "
             f"itself used seed {report['search_seed']}.", "",
             markdown_table(headers, rows, right=set(range(3, len(headers) - 1)))]
    for figure, title in figures:
        v = report[figure]
        if v["pooled_std"] is not None:
            p = f", Welch's t-test p = {v['welch_p']:.3f}" if v["welch_p"] is not None else ""
            ratio = (f"{v['gain_in_pooled_std']:.2f} pooled std ({v['pooled_std']:.4f})"
                     if v["gain_in_pooled_std"] is not None else "the seeds gave identical values (pooled std 0)")
            lines.append(f"{title}: gain of the best over the baseline {v['gain']:+.4f} = {ratio}{p}. "
                         f"Verdict: {v['verdict']}.")
        else:
            lines.append(f"{title}: {v['verdict']}.")
        lines.append("")
    return "\n".join(lines)


# --- the ensemble over seeds ------------------------------------------------------------------------


def reseed_ensemble(experiment_dir: str | Path, k: int, seeds: list[int] | None = None,
                    max_steps: int | None = None, log=print) -> dict[str, Any]:
    """The search's ensemble (summary.json `ensemble`) retrained on `k` new seeds: per seed, every
    member's config is trained again (each choosing its checkpoint on val, as a trial), the members'
    val P(same) are mixed with the ensemble's weights and its threshold is tuned on that val mixture
    (val chooses), and the mixture is scored once on the held-out test set. The single best trial's
    config is trained on the same seeds. Reports both test F1-macro means and stds and Welch's p
    (reseed_ensemble.json in the search folder)."""
    from afqmc.metrics import classification_metrics, tune_threshold
    from afqmc.train import prepare_data

    experiment_dir = Path(experiment_dir).resolve()
    state = SearchState.load(experiment_dir)
    summary = json.loads((experiment_dir / SUMMARY).read_text(encoding="utf-8")) if (experiment_dir / SUMMARY).is_file() else {}
    ens = summary.get("ensemble")
    if not ens:
        raise ValueError(f"{experiment_dir}: no ensemble in {SUMMARY} (build one: python tune/compare.py --ensemble 5 "
                         f"{experiment_dir})")
    if ens.get("alone"):
        raise ValueError(f"{experiment_dir}: the ensemble is the best model alone (no other kept model added more than "
                         f"search.ensemble_margin {ens.get('margin')}): retrain the best with --reseed {k}")
    trials = {t.number: t for t in collect_trials(experiment_dir)}
    best = best_trial(list(trials.values()))
    members = [(trials[m["trial"]], m["weight"]) for m in ens["members"]]
    search = _search_config(experiment_dir, state, trial_config(experiment_dir, best, state), log)
    data = prepare_data(search, log=log)
    if data.test is None:
        raise ValueError(f"{experiment_dir}: the search has no held-out test set to judge the ensemble on")
    seeds = seeds or [search.seed + i for i in range(1, k + 1)]
    metric, max_evals = state.metric, state.settings.get("max_evals")
    runs = []
    for seed in seeds:
        mixed = {"val": 0.0, "test": 0.0}
        for trial, weight in members:
            cfg = trial_config(experiment_dir, trial, state).replace(
                seed=seed, max_steps=max_steps or budget_steps(trial, max_evals), metric_for_best_model=metric)
            probs = _member_probs(cfg, data, f"member trial {trial.number}", log)
            for split in mixed:
                mixed[split] = mixed[split] + weight * np.asarray(probs[split])
        threshold, _ = tune_threshold(data.val_pairs.labels, mixed["val"])
        test = classification_metrics(data.test.labels, mixed["test"], threshold, prefix="")["f1_macro"]
        single = _run_seed(trial_config(experiment_dir, best, state).replace(
            seed=seed, max_steps=max_steps or budget_steps(best, max_evals), metric_for_best_model=metric),
            data, f"single best (trial {best.number})", log)
        runs.append({"seed": seed, "ensemble_test": float(test), "ensemble_threshold": threshold,
                     "single_test": single["test"]})
        log(f"seed {seed}: ensemble held-out test F1-macro {test:.4f}, single best {single['test']:.4f}")
    results = {"best": {"test": seed_stats([r["ensemble_test"] for r in runs])},
               "baseline": {"test": seed_stats([r["single_test"] for r in runs])}}
    verdict = seed_verdict(results, "test", same=len(members) == 1 and members[0][0].number == best.number)
    report = {"search": experiment_dir.name, "seeds": seeds, "members": ens["members"], "single_best": best.number,
              "ensemble_test": results["best"]["test"], "single_test": results["baseline"]["test"],
              "verdict": {**verdict, "verdict": verdict["verdict"].replace("the baseline", "the single best")},
              "runs": runs}
    (experiment_dir / RESEED_ENSEMBLE_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    e, b = report["ensemble_test"], report["single_test"]
    log(f"ensemble of {len(members)} over {len(seeds)} seeds: held-out test F1-macro {e['mean']:.4f} +- "
        f"{e['std'] or 0:.4f}; single best {b['mean']:.4f} +- {b['std'] or 0:.4f}: {report['verdict']['verdict']}")
    return report


def _member_probs(cfg: TrainConfig, data, name: str, log) -> dict[str, list[float]]:
    """One retraining of an ensemble member in a scratch folder: its kept model's P(same) on the
    val and the held-out test pairs (the kept checkpoint chosen on val, as a trial's)."""
    from afqmc.predict import predict_saved
    from afqmc.train import train

    out = tempfile.mkdtemp(prefix=f"reseed-member-{cfg.seed}-")
    try:
        summary = train(cfg.replace(output_dir=out, test_file=None, save_best_model=True), data=data, progress=False)
        model = Path(out) / "best_model"
        probs = {"val": predict_saved(model, data.val_pairs)[0], "test": predict_saved(model, data.test)[0]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    log(f"{name} seed {cfg.seed}: best {cfg.metric_for_best_model} {summary['best'][cfg.metric_for_best_model]:.4f}")
    return probs
