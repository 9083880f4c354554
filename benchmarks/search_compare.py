"""What the search optimises, and against the peer: on the shared AFQMC data, the product's CPU space
(search_spaces/afqmc_cpu.yaml, tiny preset, a held-out test split of 10%):

    python benchmarks/search_compare.py [--quick] [--runs fifo_searched,fifo,asha,random,hf_optuna]
        [--workdir DIR] [--json OUT] [--anytime_png PNG] [--data ../shared/data]

Searches, each `tune.search.main` (what `python tune/search.py` runs) in this process, with the same
seeded TPE and the same trials' budget, except the peer:

- fifo_searched: FIFO, the decision threshold searched by TPE (uniform 0.3-0.7, the product's
  mode before `tuned`), ranked on F1-macro at the sampled threshold;
- fifo: FIFO, the threshold tuned on val after every evaluation (the shipped space);
- asha: the shipped space as it is: tuned threshold, ASHA on its asha_metric;
- random: as fifo, with Optuna's RandomSampler instead of TPE (`search.sampler: random`; its
  draws are TPE's seeded start-up draws, so its first trials are fifo's);
- hf_optuna (and hf_ray): `transformers.Trainer.hyperparameter_search` on the same data, model,
  collate, class weights, dropout, learning rate and warm-up; the threshold is searched (the
  peer's API has no tuning of it: `compute_metrics` scores F1 at the trial's threshold);
  Optuna's MedianPruner, as the peer leaves it; then, as its docs show, the best run's
  hyperparameters are trained once more (keeping the best checkpoint on val) to get a model,
  whose held-out test F1 is what is compared. The retraining is in its wall time.

Figures (every search is scored on the same held-out test split, which no choice has seen):

1. Metric roles: on FIFO's curves (fifo and fifo_searched), Spearman's rank correlation between
   each candidate (tuned F1 = val/f1_macro_tuned, AUC, AP, F1 at the sampled threshold) at every
   evaluation and each trial's final tuned F1 (its best over all evaluations); ASHA's rule replayed
   on fifo's curves for each candidate as the rung metric and several (grace, reduction factor),
   over 500 trial orders; the share of FIFO's updates a perfect ASHA would use.
2. ASHA against FIFO (asha, fifo): best val objective >= 0.99 of FIFO's on <= 30% of its updates.
3. Tuned against searched threshold (fifo, fifo_searched): best trial's held-out test F1 of each.
4. Ours (asha) against the peer (hf_optuna): held-out test F1 >= the peer's in <= 0.7x its wall time.
5. Anytime (issue 21): asha, fifo, random and hf_optuna on one plot (tune/anytime.py: the best so far
   on val, and the held-out test F1 of the best-so-far model where it has one, against the updates
   and the seconds since the search's first trial), and the updates and seconds each needed to reach
   0.99 of FIFO's final best. Ours: every model on the curve is scored on the held-out test split
   (the benchmark's cost, not a search's); the peer: its retrained best run, its curve's last point.

Each run's figures are kept in the work folder (`--workdir`, `<run>.json`): a later call with other
`--runs` and the same folder reports on all of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _benchutil as bu  # noqa: E402  (sets up sys.path for afqmc and tune)
import _searchutil as su

GOAL_VALUE, GOAL_STEPS = 0.99, 0.30  # ASHA vs FIFO (issue 21: at most 30% of its updates)
GOAL_TIME = 0.7  # ours vs the peer
OURS = {"fifo_searched": ("fifo", "searched"), "fifo": ("fifo", "tuned"), "asha": ("asha", "tuned"),
        "random": ("fifo", "random")}  # random: the tuned threshold, search.sampler random
SPACES = {"tuned": ("tuned", "tpe"), "searched": ("searched", "tpe"), "random": ("tuned", "random")}  # threshold, sampler
ANYTIME_RUNS = ("asha", "fifo", "random", "hf_optuna")  # on one anytime plot
PEER_METRIC = "val/f1_macro"  # the peer's objective: val F1 at the trial's (searched) threshold
# Budget keys that only ASHA reads: FIFO runs in the work folder stay comparable when these change.
ASHA_ONLY = ("grace_period", "reduction_factor", "asha_metric")
CANDIDATES = {"tuned F1": "val/f1_macro_tuned", "AUC": "val/auc", "AP": "val/ap", "F1 at sampled thr": "val/f1_macro"}


def hf_search(space_path: Path, b: dict[str, Any], backend: str, workdir: Path, threads: int) -> dict[str, Any]:
    """`Trainer.hyperparameter_search` on the space's fixed config and searched fields, then the
    best run trained again and scored on the held-out test split."""
    import optuna
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from afqmc.data import PairDataset, collate, encode
    from afqmc.metrics import classification_metrics, ranking_metrics
    from afqmc.modeling import load_model
    from afqmc.train import prepare_data
    from tune.space import load_space

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # one "no field class_weights in TrainingArguments" per trial otherwise
    space = load_space(space_path)
    cfg, settings = space.base, space.settings
    # The peer searches the space's ranges (learning rate, class weights, dropout, warmup); the
    # fine-tuning techniques (choices) are ours alone: Trainer has no FGM, R-Drop, EMA, ... to switch on.
    params = {**{k: v for k, v in su.searched_params(space_path).items() if v["type"] in ("uniform", "loguniform")},
              "threshold": su.SEARCHED_THRESHOLD}
    baseline = {**{k: space.baseline()[k] for k in params if k in space.params},
                "threshold": su.SEARCHED_THRESHOLD["baseline"]}
    started = time.perf_counter()
    data = prepare_data(cfg)  # the same split as ours: train, val, and the held-out test pairs
    current: dict[str, Any] = {"number": -1, **baseline}  # the running trial's sampled values
    evals: list[dict[str, Any]] = []  # every evaluation of every trial (optuna backend: same process)
    current_log: dict[int, dict[str, Any]] = {}  # the values each trial's model, loss and metrics used
    clock: dict[str, float] = {}  # t0: when the first trial began (the anytime curve's wall clock)
    curves: dict[int, list[float]] = {}
    used: dict[int, Any] = {}

    def suggest(trial) -> dict[str, Any]:
        """The trial's values, in the space's order (as our OptunaSearch asks them). Optuna returns the
        same value when a name is suggested again in a trial, so model_init and hp_space agree."""
        return {name: trial.suggest_float(name, spec["low"], spec["high"], log=spec["type"] == "loguniform")
                for name, spec in params.items()}

    def sampled(trial) -> dict[str, Any]:
        if trial is None:  # Trainer.__init__ builds one model before any trial
            return dict(baseline)
        if isinstance(trial, dict):  # the Ray backend passes the trial's config
            return {**baseline, **{("warmup_ratio" if k == "warmup_steps" else k): v for k, v in trial.items()}}
        # Optuna: Trainer.train calls model_init(trial) before hp_space(trial), so nothing is
        # suggested yet when the model is built; suggest here (dropout, class weights, threshold).
        return {**baseline, **suggest(trial)}

    def model_init(trial=None):
        values = sampled(trial)
        current.update(values, number=getattr(trial, "number", current["number"] + 1))
        if trial is not None:
            current_log[current["number"]] = dict(current)
            clock.setdefault("t0", time.perf_counter())
        return load_model(cfg.replace(dropout=values["dropout"]), data.tokenizer)

    def hp_space(trial) -> dict[str, Any]:
        if backend == "ray":
            from ray import tune as rt
            out = {name: (rt.loguniform if spec["type"] == "loguniform" else rt.uniform)(spec["low"], spec["high"])
                   for name, spec in params.items()}
        else:
            out = suggest(trial)
        if "warmup_ratio" in out:
            out["warmup_steps"] = out.pop("warmup_ratio")  # transformers 5: a float < 1 is a ratio
        return out

    def as_ray_point(values: dict[str, Any]) -> dict[str, Any]:
        return {("warmup_steps" if k == "warmup_ratio" else k): v for k, v in values.items()}

    def compute_loss(outputs, labels, num_items_in_batch=None):
        weights = torch.tensor([1.0, float(current["class_weights"])], device=labels.device)
        return torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weights)

    def compute_metrics(pred) -> dict[str, float]:
        prob = torch.as_tensor(pred.predictions).float().softmax(-1)[:, 1].numpy()
        m = classification_metrics(pred.label_ids, prob, float(current["threshold"]))
        return {"f1_macro": m["val/f1_macro"], "accuracy": m["val/accuracy"]}

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evals.append({"trial": current["number"], "step": state.global_step, "f1": metrics["eval_f1_macro"],
                          "wall": time.perf_counter() - clock.get("t0", started)})

    def arguments(name: str, **changes: Any) -> TrainingArguments:
        values = dict(
            output_dir=str(workdir / name), per_device_train_batch_size=cfg.per_device_batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size, max_steps=b["max_evals"] * b["eval_steps"],
            eval_strategy="steps", eval_steps=b["eval_steps"], save_strategy="no", logging_strategy="no",
            learning_rate=baseline["learning_rate"], warmup_steps=float(baseline["warmup_ratio"]),
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear",
            seed=cfg.seed, report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            # the space's length-grouped batches, with the peer's own sampler of the same scheme
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")
        values.update(changes)
        return TrainingArguments(**values)

    collator = functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0)
    trainer = Trainer(model_init=model_init, args=arguments(f"hf_{backend}"), train_dataset=PairDataset(data.train),
                      eval_dataset=PairDataset(data.val), data_collator=collator,
                      compute_loss_func=compute_loss, compute_metrics=compute_metrics, callbacks=[Record()])
    # Our search's sampler (Optuna's TPE), with the random start-up trials our search draws (each seeded
    # with its number, tune/searcher.py) given first, after the baseline: the same start as ours.
    from tune.searcher import make_sampler, trial_seed

    sampler = make_sampler("tpe", settings.seed, settings.n_startup_trials)
    start_up = []
    for k in range(1, settings.n_startup_trials):
        draw = optuna.create_study(sampler=make_sampler("random", trial_seed(settings.seed, k)))
        start_up.append(draw.ask(space.distributions()).params)
    objective = lambda metrics: metrics["eval_f1_macro"]  # noqa: E731
    if backend == "optuna":
        # The study hyperparameter_search creates is loaded from this storage, so that the baseline
        # goes first, as in our search (OptunaSearch's points_to_evaluate also enqueues it).
        storage = optuna.storages.InMemoryStorage()
        peer = optuna.create_study(storage=storage, study_name="hf", direction="maximize")
        for point in [baseline, *start_up]:
            peer.enqueue_trial(point)
        best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective,
                                             n_trials=settings.num_samples, direction="maximize", backend="optuna",
                                             storage=storage, study_name="hf", load_if_exists=True, sampler=sampler)
        search_wall = time.perf_counter() - started
        study = optuna.load_study(storage=storage, study_name="hf")
        trials = []
        for t in study.trials:
            mine = [e for e in evals if e["trial"] == t.number]
            trials.append({"trial": t.number, "state": t.state.name.lower(), "evals": len(mine),
                           "steps": max((e["step"] for e in mine), default=0),
                           "best_value": max((e["f1"] for e in mine), default=None), **t.params})
            curves[t.number] = [e["f1"] for e in mine]
            used[t.number] = {k: current_log[t.number][k] for k in params} if t.number in current_log else None
    else:
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric="objective", mode="max", sampler=sampler,
                                points_to_evaluate=[as_ray_point(p) for p in [baseline, *start_up]])
        best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective,
                                             n_trials=settings.num_samples, direction="maximize", backend="ray",
                                             search_alg=searcher, storage_path=str(workdir / "hf_ray_results"),
                                             resources_per_trial={"cpu": 1}, verbose=0)
        search_wall = time.perf_counter() - started
        analysis = best.run_summary
        trials = []
        for i, t in enumerate(analysis.trials):
            df = analysis.trial_dataframes.get(t.trial_id)
            f1s = list(df["eval_f1_macro"].dropna()) if df is not None and "eval_f1_macro" in df else []
            curves[i] = f1s  # numbered from 0, as the study numbers our search's trials
            trials.append({"trial": i, "state": t.status.lower(), "evals": len(f1s),
                           "steps": len(f1s) * b["eval_steps"], "best_value": max(f1s) if f1s else None,
                           **{k: t.config.get(k, t.config.get("warmup_steps")) for k in params}})
    if used and any(u is not None for u in used.values()):
        # The values the model, loss and metrics used must be the trial's (Optuna's record of it).
        for t in trials:
            u = used.get(t["trial"])
            assert u is None or all(abs(u[k] - t[k]) < 1e-12 for k in params), (u, t)

    # The peer's way to a model: train the best run's hyperparameters again, keeping the best
    # checkpoint on val (its F1 at the run's threshold), then predict the held-out test pairs.
    winner = {**baseline, **{("warmup_ratio" if k == "warmup_steps" else k): v for k, v in best.hyperparameters.items()}}
    current.update(winner, number=-2)
    final = Trainer(model=model_init(), args=arguments(
        f"hf_{backend}_best", save_strategy="steps", save_steps=b["eval_steps"], save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1_macro", greater_is_better=True,
        learning_rate=winner["learning_rate"], warmup_steps=float(winner["warmup_ratio"])),
        train_dataset=PairDataset(data.train), eval_dataset=PairDataset(data.val), data_collator=collator,
        compute_loss_func=compute_loss, compute_metrics=compute_metrics)
    final.train()
    test_enc = encode(data.tokenizer, data.test, cfg.max_length)
    logits = final.predict(PairDataset(test_enc)).predictions
    prob = torch.as_tensor(logits).float().softmax(-1)[:, 1].numpy()
    test = {**classification_metrics(data.test.labels, prob, float(winner["threshold"]), prefix=""),
            **ranking_metrics(data.test.labels, prob, prefix="")}
    wall = time.perf_counter() - started
    scored = [t["best_value"] for t in trials if t["best_value"] is not None]
    anytime = None if backend != "optuna" else peer_anytime(
        evals, final.state.global_step, time.perf_counter() - clock.get("t0", started), test["f1_macro"])
    return {"wall_s": wall, "search_wall_s": search_wall, "retrain_wall_s": wall - search_wall, "trials": trials,
            "curves": {"val/f1_macro": curves}, "total_steps": sum(t["steps"] for t in trials), "anytime": anytime,
            "best_value": max(scored) if scored else None, "best_run_objective": best.objective,
            "best_hyperparameters": winner, "test": {"best": {"f1_macro": test["f1_macro"],
                                                             "accuracy": test["accuracy"], "auc": test["auc"],
                                                             "threshold": float(winner["threshold"])}},
            "test_pairs": len(data.test), "pruned": sum(t["state"] == "pruned" for t in trials), "threads": threads}


def peer_anytime(evals: list[dict[str, Any]], retrain_updates: int, end_s: float, test_f1: float) -> dict[str, Any]:
    """The peer's anytime curve by tune.anytime's definition (its trials ran one after the other):
    the best val F1 at the trial's threshold (its objective) so far, against the updates and the
    seconds since its first trial began; trial 0 is the baseline. Its last point is the best run
    trained again (`retrain_updates` more, ending at `end_s`): the peer's way to a model, whose
    held-out test F1 (`test_f1`) is the only one it has."""
    from tune.anytime import anytime_curve
    from tune.folder import TrialState
    from tune.results import TrialRecord

    records = []
    for number in sorted({e["trial"] for e in evals}):
        # The peer's clock, in seconds since its first trial began, as both the report's time and
        # the time it has run (tune.anytime counts from the earliest trial start: 0).
        rows = [{"evals": i, "step": e["step"], PEER_METRIC: e["f1"], "timestamp": e["wall"], "time_total_s": e["wall"]}
                for i, e in enumerate((e for e in evals if e["trial"] == number), start=1)]
        best = max(rows, key=lambda r: r[PEER_METRIC])
        records.append(TrialRecord(trial_id=str(number), number=number, status="TERMINATED", state=TrialState.FINISHED,
                                   evals=len(rows), params={}, is_baseline=number == 0, best_value=best[PEER_METRIC],
                                   best_evals=best["evals"], best_checkpoint="(the peer keeps none)",
                                   steps=rows[-1]["step"], history=rows))
    curve = anytime_curve(records, PEER_METRIC)
    if curve["best"]:
        for key, value in (("updates", curve["updates"][-1] + retrain_updates), ("wall_s", end_s),
                           ("test_f1", test_f1)):
            curve[key].append(value)
        for key in ("best", "trial", "evals"):
            curve[key].append(curve[key][-1])
    curve["note"] = "the last point: the best run trained again (the peer's way to a model), its held-out test F1"
    return curve


def run_peer(backend: str, space: Path, workdir: Path, budget_file: Path, hf_threads: int) -> dict[str, Any]:
    """hf_search in a fresh process (this script with --worker)."""
    out = workdir / f"hf_{backend}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", backend, "--space", str(space),
           "--budget_file", str(budget_file), "--out", str(out), "--hf_threads", str(hf_threads)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    command_wall = time.perf_counter() - started
    (workdir / f"hf_{backend}.log").write_text(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not out.is_file():
        error = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "?")
        print(f"backend {backend!r} failed (exit {proc.returncode}): {error.strip()}\n--- last lines ---\n"
              + "\n".join(lines[-25:]))
        return {"error": error.strip()[:300], "command_wall_s": command_wall, "load_at_start": load}
    print("\n".join(lines[-12:]))
    return {**json.loads(out.read_text()), "command_wall_s": command_wall, "load_at_start": load}


def worker(args) -> int:
    b = json.loads(Path(args.budget_file).read_text())
    out = hf_search(Path(args.space), b, args.worker, Path(args.out).parent, args.hf_threads)
    bu.write_json(Path(args.out), out)
    return 0


# --- the analysis --------------------------------------------------------------------------------


def metric_roles(runs: dict[str, Any], b: dict[str, Any], orders: int = 500) -> dict[str, Any]:
    """Spearman at every evaluation of each candidate against the final tuned F1, on FIFO's curves;
    ASHA replayed on fifo's curves with each candidate at its rungs, over `orders` trial orders."""
    max_t = b["max_evals"]
    out: dict[str, Any] = {"correlation": [], "replay": []}
    for name in ("fifo", "fifo_searched"):
        run = runs.get(name)
        if not run or "curves" not in run:
            continue
        curves = {m: {int(n): c for n, c in v.items()} for m, v in run["curves"].items()}
        tuned = curves["val/f1_macro_tuned"]
        target = {n: max((x for x in c if x is not None), default=None) for n, c in tuned.items()}
        for label, metric in CANDIDATES.items():
            if metric == "val/f1_macro" and name == "fifo":
                continue  # the same as tuned F1 there
            rho = su.spearman_at_evals(curves[metric], target, max_t)
            out["correlation"].append({"run": name, "candidate": label, "metric": metric, "spearman": rho})
    fifo = runs.get("fifo")
    if fifo and "curves" in fifo:
        curves = {m: {int(n): c for n, c in v.items()} for m, v in fifo["curves"].items()}
        tuned = curves["val/f1_macro_tuned"]
        settings = sorted({(1, 2), (1, 3), (2, 3), (2, 4), (3, 3), (4, 3), (b["grace_period"], b["reduction_factor"])})
        for label, metric in CANDIDATES.items():
            if metric == "val/f1_macro":
                continue
            for grace, rf in settings:
                if grace >= max_t:
                    continue
                sim = su.replay_orders(curves[metric], max_t, grace, rf, GOAL_VALUE, n=orders, values=tuned)
                out["replay"].append({"rung metric": label, **sim})
    return out


def report(runs: dict[str, Any], b: dict[str, Any], orders: int = 500) -> dict[str, Any]:
    """The tables and ratios of the runs; the replays over `orders` trial orders each."""
    result: dict[str, Any] = {}
    for name, r in runs.items():
        if r.get("trials"):
            print()
            cols = [c for c in r["trials"][0] if c not in ("evals",)]
            print(bu.table(r["trials"], cols, f"{name} trials"))
    rows = [{"search": name, "wall_s": r.get("wall_s"), "best_val": r.get("best_value"),
             "test_f1_best": ((r.get("test") or {}).get("best") or {}).get("f1_macro"),
             "test_f1_baseline": ((r.get("test") or {}).get("baseline") or {}).get("f1_macro"),
             "total_steps": r.get("total_steps"), "cut": r.get("stopped_early", r.get("pruned")),
             "load": r.get("load_at_start"), "error": r.get("error")} for name, r in runs.items()]
    result["rows"] = rows
    print()
    print(bu.table(rows, ["search", "wall_s", "best_val", "test_f1_best", "test_f1_baseline", "total_steps", "cut",
                          "load", "error"], "searches (best_val: the ranking metric, val, chose the winner; "
                                            "test: held out)"))

    roles = metric_roles(runs, b, orders)
    result["metric_roles"] = roles
    if roles["correlation"]:
        evals = list(range(1, b["max_evals"] + 1))
        table = [{"run": c["run"], "candidate": c["candidate"],
                  **{f"@{k}": (None if v is None else round(v, 3)) for k, v in zip(evals, c["spearman"])}}
                 for c in roles["correlation"]]
        print()
        print(bu.table(table, ["run", "candidate", *[f"@{k}" for k in evals]],
                       f"Spearman: candidate at evaluation k (x {b['eval_steps']} updates) vs the trial's final tuned "
                       f"F1 (its best over all evaluations), across {b['num_samples']} FIFO trials"))
    if roles["replay"]:
        print()
        print(bu.table(roles["replay"], ["rung metric", "grace_period", "reduction_factor", "rungs", "perfect_share",
                                         "steps_ratio_mean", "steps_ratio_min", "steps_ratio_max", "value_ratio_mean",
                                         "share_goal_met"],
                       f"ASHA's rule replayed on fifo's curves, {orders} trial orders (value: best tuned F1 kept; "
                       f"share_goal_met: how often it is >= {GOAL_VALUE} of FIFO's)"))
    result["perfect_share_shipped"] = su.perfect_asha_share(b["max_evals"], b["grace_period"], b["reduction_factor"])
    print(f"\nshipped ASHA (grace {b['grace_period']}, reduction factor {b['reduction_factor']:g}, max_t "
          f"{b['max_evals']}): a perfect ASHA uses {result['perfect_share_shipped']:.3f} of FIFO's updates")

    asha, fifo, searched = runs.get("asha"), runs.get("fifo"), runs.get("fifo_searched")
    if asha and fifo and "trials" in asha and "trials" in fifo:
        result["steps_ratio"] = asha["total_steps"] / fifo["total_steps"]
        result["value_ratio"] = asha["best_value"] / fifo["best_value"]
        result["asha_fifo_wall_ratio"] = asha["wall_s"] / fifo["wall_s"]
        n_same = b["n_startup_trials"] + 1
        strip = lambda t: {k: v for k, v in t.items() if k not in ("state", "evals", "steps", "best_value")}  # noqa: E731
        result["same_start_trials"] = all(strip(a) == strip(f) for a, f in zip(asha["trials"][:n_same],
                                                                                 fifo["trials"][:n_same]))
        result["goal_met_asha"] = result["value_ratio"] >= GOAL_VALUE and result["steps_ratio"] <= GOAL_STEPS
        print(f"\nfirst {n_same} trials sampled identically by ASHA and FIFO: {result['same_start_trials']}")
        print(f"ASHA / FIFO: updates {result['steps_ratio']:.3f} (goal <= {GOAL_STEPS}), best {asha['metric']} "
              f"{asha['best_value']:.4f} / {fifo['best_value']:.4f} = {result['value_ratio']:.4f} (goal >= {GOAL_VALUE}), "
              f"wall time {result['asha_fifo_wall_ratio']:.3f}: {'MET' if result['goal_met_asha'] else 'MISSED'}")
    if fifo and searched and fifo.get("test") and searched.get("test"):
        t, s = fifo["test"]["best"]["f1_macro"], searched["test"]["best"]["f1_macro"]
        result["tuned_vs_searched_test_f1"] = {"tuned": t, "searched": s, "difference": t - s}
        print(f"tuned vs searched threshold (FIFO, same budget and seed): best trial's held-out test F1-macro "
              f"{t:.4f} vs {s:.4f} ({t - s:+.4f})")
    for name, r in runs.items():
        if not name.startswith("hf_") or "error" in r or not asha or "trials" not in asha:
            continue
        time_ratio = asha["wall_s"] / r["wall_s"]
        ours, peer = asha["test"]["best"]["f1_macro"], r["test"]["best"]["f1_macro"]
        met = time_ratio <= GOAL_TIME and ours >= peer
        result[f"vs_{name}"] = {"time_ratio": time_ratio, "test_f1_ours": ours, "test_f1_peer": peer,
                                "test_f1_difference": ours - peer, "goal_met": met,
                                "time_ratio_search_only": asha["wall_s"] / r["search_wall_s"]}
        print(f"ours (asha) vs {name}: wall time ratio {time_ratio:.3f} (goal <= {GOAL_TIME}; "
              f"{asha['wall_s'] / r['search_wall_s']:.3f} against its search alone, without the retraining), "
              f"held-out test F1-macro {ours:.4f} vs {peer:.4f} ({ours - peer:+.4f}, goal >= 0): "
              f"{'MET' if met else 'MISSED'}")
    for name, r in runs.items():
        if "error" in r:
            print(f"{name} failed: {r['error']}")
    return result


def anytime_report(runs: dict[str, Any], plot: Path) -> dict[str, Any]:
    """ASHA, FIFO, random search and the peer on one anytime plot (tune/anytime.py: the best so far
    against the updates and the wall time each used), and the updates and seconds each needed to
    reach GOAL_VALUE of FIFO's final best: on val (each search's ranking metric: tuned F1 for ours,
    F1 at the searched threshold for the peer) and on the held-out test F1 of the best-so-far model
    (ours: each model on the curve scored; the peer: its retrained best run only)."""
    from tune.anytime import reach
    from tune.figures import anytime

    curves = {name: runs[name]["anytime"] for name in ANYTIME_RUNS if (runs.get(name) or {}).get("anytime")}
    fifo = curves.get("fifo")
    if not curves or not fifo or not fifo["best"]:
        return {}
    tested = [v for v in fifo["test_f1"] if v is not None]
    targets = {"val": GOAL_VALUE * fifo["best"][-1], "test": GOAL_VALUE * tested[-1] if tested else None}
    rows, out = [], {"targets": targets, "plot": str(plot), "runs": {}}
    for name, curve in curves.items():
        val = reach(curve, targets["val"])
        test = reach(curve, targets["test"], "test_f1") if targets["test"] is not None else None
        out["runs"][name] = {"reach_val": val, "reach_test": test, "updates": curve["updates"][-1],
                             "wall_s": curve["wall_s"][-1], "best_val": curve["best"][-1]}
        rows.append({"search": name, "metric": curve["metric"], "best_val": curve["best"][-1],
                     "updates": curve["updates"][-1], "wall_s": curve["wall_s"][-1],
                     "val_at_updates": val and val["updates"], "val_at_s": val and val["wall_s"],
                     "test_at_updates": test and test["updates"], "test_at_s": test and test["wall_s"]})
    anytime(curves, plot, title=f"anytime: {', '.join(curves)} (wall: seconds since each search's first trial)")
    print()
    print(bu.table(rows, list(rows[0]), f"anytime: updates and seconds to reach {GOAL_VALUE} of FIFO's final best "
                                        f"(val {targets['val']:.4f}; held-out test F1 "
                                        f"{'-' if targets['test'] is None else format(targets['test'], '.4f')}); "
                                        f"the peer's val metric is F1 at its searched threshold"))
    print(f"anytime plot: {plot}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    su.add_budget_args(p)
    p.add_argument("--runs", default="fifo_searched,fifo,asha,random,hf_optuna",
                   help="the searches to run, in this order: fifo_searched, fifo, asha, random, hf_optuna, hf_ray")
    p.add_argument("--anytime_png", type=Path, help="the anytime plot of asha, fifo, random and hf_optuna (default: "
                                                   "beside --json as OUT.anytime.png, else anytime.png in --workdir)")
    p.add_argument("--hf_threads", type=int, default=os.cpu_count(),
                   help="torch threads of the peer's single process (default: every core, as a user would)")
    for hidden in ("--worker", "--space", "--budget_file", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    b = su.budget(args)
    info = bu.machine()
    plan = [x.strip() for x in args.runs.split(",") if x.strip()]
    unknown = [x for x in plan if x not in OURS and x not in ("hf_optuna", "hf_ray")]
    if unknown:
        p.error(f"unknown run(s) {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        budget_file = workdir / "budget.json"
        if budget_file.is_file():
            before = json.loads(budget_file.read_text())
            differ = sorted(k for k in set(before) | set(b) if k not in ASHA_ONLY and before.get(k) != b.get(k))
            if differ:
                p.error(f"{workdir} holds runs of another budget ({', '.join(differ)} differ: {budget_file}); "
                        f"use another --workdir")
        budget_file.write_text(json.dumps(b))
        spaces = {mode: su.write_space(workdir / f"space_{mode}.yaml", args.data, b, threshold=threshold, sampler=sampler)
                  for mode, (threshold, sampler) in SPACES.items()}
        subset = f" (first {b['max_train_samples']} pairs)" if b["max_train_samples"] else ""
        print(f"search compare: {b['num_samples']} trials of up to {b['max_evals']} x {b['eval_steps']} updates "
              f"(batch 64, tiny BERT on AFQMC{subset}, 10% held out as test); ASHA grace {b['grace_period']}, "
              f"reduction factor {b['reduction_factor']:g} on {b['asha_metric']}; TPE seed 0, "
              f"{b['n_startup_trials']} random start trials; runs: {', '.join(plan)}", flush=True)
        for name in plan:
            print(f"\n=== {name} ===", flush=True)
            load = os.getloadavg()[0]
            if name in OURS:
                scheduler, mode = OURS[name]
                run = {**su.run_search(spaces[mode], name, scheduler, workdir / "results", anytime=True),
                       "load_at_start": load}
            else:
                run = run_peer(name.removeprefix("hf_"), spaces["searched"], workdir, budget_file, args.hf_threads)
            bu.write_json(workdir / f"{name}.json", {**run, "budget": b})
        runs = {path.stem: json.loads(path.read_text()) for path in sorted(workdir.glob("*.json"))
                if path.stem in OURS or path.stem in ("hf_optuna", "hf_ray")}
        result: dict[str, Any] = {"benchmark": "search_compare", "quick": args.quick, "machine": info, "budget": b,
                                  "runs_this_call": plan, "workdir": str(workdir)}
        result.update(report(runs, b, orders=50 if args.quick else 500))  # quick: checks the code, measures nothing
        plot = args.anytime_png or (args.json.with_suffix(".anytime.png") if args.json else workdir / "anytime.png")
        result["anytime"] = anytime_report(runs, Path(plot).resolve())
        result["runs"] = runs
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
