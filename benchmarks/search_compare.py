"""Search efficiency and the peer, side by side in one run, on the shared AFQMC data (tiny preset):

    python benchmarks/search_compare.py [--quick] [--data ../shared/data] [--json OUT] [--backends optuna,ray]

1. ASHA against FIFO (issue goal: ASHA reaches >= 99% of FIFO's best val F1-macro with <= 40% of
   its optimizer updates). Both are the product's search (`tune.search.main`, the function behind
   `python tune/search.py --scheduler asha|fifo`), called in this process, with the same seeded
   TPE sampler, the product's CPU space (search_spaces/afqmc_cpu.yaml: learning rate, class
   weights, dropout, threshold, warm-up) and the same number of trials. The first
   n_startup_trials + 1 trials (the baseline, then TPE's seeded random start) get the same values
   in both; later ones depend on the results, which ASHA changes by stopping trials.

2. Our search (the ASHA run above) against the peer a user would pick instead:
   `transformers.Trainer.hyperparameter_search` (goal: at least the same best F1-macro in <= 0.7x
   the wall time). One `Trainer` with `model_init` returning our tiny model
   (afqmc.modeling.load_model), the same tokenized data (afqmc.train.prepare_data, wrapped as
   torch datasets), our collate, `compute_metrics` giving F1-macro at the trial's threshold; class
   weights through `compute_loss_func`, dropout through `model_init(trial)`, learning rate and
   warm-up through the TrainingArguments it sets from `hp_space`. Same TPE settings (seed,
   n_startup_trials, multivariate) and the same baseline trial first (enqueued in the study it
   loads); Optuna's default pruner (MedianPruner), as `hyperparameter_search` leaves it; trials one
   after another in one process with every core (--hf_threads). It saves no checkpoints
   (save_strategy "no"), which favours it: ours writes one per evaluation (what resuming and
   exporting the best model need). The Ray backend of the same API is tried too (its defaults: no
   scheduler, 1 CPU per trial; our TPE as its search_alg); what fails is reported.
   Each peer search runs in a fresh process (a Trainer that has trained once in a process can no
   longer be pickled for Ray: Accelerate's shared GradientState keeps references to old data
   loaders).

Wall time ("search_wall_s"): from loading and tokenizing the data to the end of the search, for
every run (interpreter start and the driver's imports are left out of all of them; our trial
workers' start and imports are in ours). Best F1-macro: the best val F1-macro of any evaluation of
any trial (what our search exports; the peer's BestRun.objective, its best trial's last
evaluation, is reported as well). Order: ASHA, peer (Optuna), FIFO, peer (Ray), so that the two
runs compared for wall time are next to each other.
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

GOAL_F1, GOAL_STEPS = 0.99, 0.40  # ASHA vs FIFO
GOAL_TIME = 0.7  # ours vs the peer


def hf_search(space_path: Path, b: dict[str, Any], backend: str, workdir: Path, threads: int) -> dict[str, Any]:
    """`Trainer.hyperparameter_search` on the space's fixed config and searched fields."""
    import optuna
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from afqmc.data import PairDataset, collate
    from afqmc.metrics import classification_metrics
    from afqmc.modeling import load_model
    from afqmc.train import prepare_data
    from tune.space import load_space

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # one "no field class_weights in TrainingArguments" per trial otherwise
    space = load_space(space_path)
    cfg, settings = space.base, space.settings
    params = su.searched_params(space_path)
    baseline = space.baseline()
    started = time.perf_counter()
    data = prepare_data(cfg)
    current: dict[str, Any] = {"number": -1, **baseline}  # the running trial's sampled values
    evals: list[dict[str, Any]] = []  # every evaluation of every trial (optuna backend: same process)
    current_log: dict[int, dict[str, Any]] = {}  # the values each trial's model, loss and metrics used
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
        logits = torch.as_tensor(pred.predictions).float()
        m = classification_metrics(pred.label_ids, logits.softmax(-1)[:, 1].numpy(), float(current["threshold"]))
        return {"f1_macro": m["val/f1_macro"], "accuracy": m["val/accuracy"]}

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evals.append({"trial": current["number"], "step": state.global_step, "f1": metrics["eval_f1_macro"]})

    args = TrainingArguments(
        output_dir=str(workdir / f"hf_{backend}"), per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, max_steps=b["max_evals"] * b["eval_steps"],
        eval_strategy="steps", eval_steps=b["eval_steps"], save_strategy="no", logging_strategy="no",
        learning_rate=baseline["learning_rate"], warmup_steps=float(baseline["warmup_ratio"]),
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear",
        seed=cfg.seed, report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        # the space's length-grouped batches, with the peer's own sampler of the same scheme
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    )
    trainer = Trainer(model_init=model_init, args=args, train_dataset=PairDataset(data.train),
                      eval_dataset=PairDataset(data.val),
                      data_collator=functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0),
                      compute_loss_func=compute_loss, compute_metrics=compute_metrics, callbacks=[Record()])
    sampler = optuna.samplers.TPESampler(multivariate=True, seed=settings.seed,
                                         n_startup_trials=settings.n_startup_trials)
    objective = lambda metrics: metrics["eval_f1_macro"]  # noqa: E731
    if backend == "optuna":
        # The study hyperparameter_search creates is loaded from this storage, so that the baseline
        # goes first, as in our search (OptunaSearch's points_to_evaluate also enqueues it).
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(storage=storage, study_name="hf", direction="maximize").enqueue_trial(baseline)
        best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective,
                                             n_trials=settings.num_samples, direction="maximize", backend="optuna",
                                             storage=storage, study_name="hf", load_if_exists=True, sampler=sampler)
        wall = time.perf_counter() - started
        study = optuna.load_study(storage=storage, study_name="hf")
        trials = []
        for t in study.trials:
            mine = [e for e in evals if e["trial"] == t.number]
            trials.append({"trial": t.number + 1, "state": t.state.name.lower(), "evals": len(mine),
                           "steps": max((e["step"] for e in mine), default=0),
                           "best_f1": max((e["f1"] for e in mine), default=None), **t.params})
            curves[t.number + 1] = [e["f1"] for e in mine]
            used[t.number + 1] = {k: current_log[t.number][k] for k in params} if t.number in current_log else None
    else:
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric="objective", mode="max", sampler=sampler, points_to_evaluate=[as_ray_point(baseline)])
        best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective,
                                             n_trials=settings.num_samples, direction="maximize", backend="ray",
                                             search_alg=searcher, storage_path=str(workdir / "hf_ray_results"),
                                             resources_per_trial={"cpu": 1}, verbose=0)
        wall = time.perf_counter() - started
        analysis = best.run_summary
        trials = []
        for i, t in enumerate(analysis.trials):
            df = analysis.trial_dataframes.get(t.trial_id)
            f1s = list(df["eval_f1_macro"].dropna()) if df is not None and "eval_f1_macro" in df else []
            curves[i + 1] = f1s
            trials.append({"trial": i + 1, "state": t.status.lower(), "evals": len(f1s),
                           "steps": len(f1s) * b["eval_steps"], "best_f1": max(f1s) if f1s else None,
                           **{k: t.config.get(k, t.config.get("warmup_steps")) for k in params}})
    scored = [t["best_f1"] for t in trials if t["best_f1"] is not None]
    if used and any(u is not None for u in used.values()):
        # The values the model, loss and metrics used must be the trial's (Optuna's record of it).
        for t in trials:
            u = used.get(t["trial"])
            assert u is None or all(abs(u[k] - t[k]) < 1e-12 for k in params), (u, t)
    return {"wall_s": wall, "trials": trials, "curves": curves, "total_steps": sum(t["steps"] for t in trials),
            "best_f1_macro": max(scored) if scored else None, "best_run_objective": best.objective,
            "pruned": sum(t["state"] == "pruned" for t in trials), "threads": threads}


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


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    su.add_budget_args(p)
    p.add_argument("--backends", default="optuna,ray",
                   help="Trainer.hyperparameter_search backends to compare with ('' for none)")
    p.add_argument("--hf_threads", type=int, default=os.cpu_count(),
                   help="torch threads of the peer's single process (default: every core, as a user would)")
    for hidden in ("--worker", "--space", "--budget_file", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    b = su.budget(args)
    info = bu.machine()
    backends = [x.strip() for x in args.backends.split(",") if x.strip()]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        space = su.write_space(workdir / "space.yaml", args.data, b)
        budget_file = workdir / "budget.json"
        budget_file.write_text(json.dumps(b))
        subset = f" (first {b['max_train_samples']} pairs)" if b["max_train_samples"] else ""
        print(f"search compare: {b['num_samples']} trials of up to {b['max_evals']} x {b['eval_steps']} updates "
              f"(batch 64, tiny BERT on AFQMC{subset}); ASHA grace {b['grace_period']}, reduction factor "
              f"{b['reduction_factor']:g}; TPE seed 0, {b['n_startup_trials']} random start trials", flush=True)
        plan = [("asha", None), *[(f"hf_{x}", x) for x in backends[:1]], ("fifo", None),
                *[(f"hf_{x}", x) for x in backends[1:]]]
        for name, backend in plan:
            print(f"\n=== {name} ===", flush=True)
            if backend is None:
                load = os.getloadavg()[0]
                runs[name] = {**su.run_search(space, name, name, workdir / "results"), "load_at_start": load}
            else:
                runs[name] = run_peer(backend, space, workdir, budget_file, args.hf_threads)
            if args.json:  # what is done so far survives an interrupted run
                bu.write_json(args.json, {"benchmark": "search_compare", "partial": True, "budget": b, "runs": runs})

    asha, fifo = runs["asha"], runs["fifo"]
    result: dict[str, Any] = {"benchmark": "search_compare", "quick": args.quick, "machine": info, "budget": b,
                              "runs": runs}
    for name, r in runs.items():
        if r.get("trials"):
            print()
            print(bu.table(r["trials"], list(r["trials"][0].keys()), f"{name} trials"))
    rows = [{"search": name, "search_wall_s": r.get("wall_s"), "best_f1_macro": r.get("best_f1_macro"),
             "total_steps": r.get("total_steps"), "trials_cut": r.get("stopped_early", r.get("pruned")),
             "load": r.get("load_at_start"), "error": r.get("error")} for name, r in runs.items()]
    result["rows"] = rows
    print()
    print(bu.table(rows, ["search", "search_wall_s", "best_f1_macro", "total_steps", "trials_cut", "load", "error"]))

    # 1. ASHA against FIFO
    n_same = b["n_startup_trials"] + 1
    strip = lambda t: {k: v for k, v in t.items() if k not in ("state", "evals", "steps", "best_f1")}  # noqa: E731
    result["same_start_trials"] = all(strip(a) == strip(f) for a, f in zip(asha["trials"][:n_same], fifo["trials"][:n_same]))
    result["steps_ratio"] = asha["total_steps"] / fifo["total_steps"]
    result["f1_ratio"] = asha["best_f1_macro"] / fifo["best_f1_macro"]
    result["asha_fifo_wall_ratio"] = asha["wall_s"] / fifo["wall_s"]
    result["goal_met_asha"] = result["f1_ratio"] >= GOAL_F1 and result["steps_ratio"] <= GOAL_STEPS
    print(f"\nfirst {n_same} trials sampled identically by ASHA and FIFO: {result['same_start_trials']}")
    print(f"ASHA / FIFO: updates {result['steps_ratio']:.3f} (goal <= {GOAL_STEPS}), best F1-macro "
          f"{result['f1_ratio']:.4f} (goal >= {GOAL_F1}), wall time {result['asha_fifo_wall_ratio']:.3f}: "
          f"{'MET' if result['goal_met_asha'] else 'MISSED'}")

    # ASHA's rule replayed on FIFO's full learning curves, for other settings than the space's
    fifo_curves = {int(k): v for k, v in fifo["curves"].items()}
    sims = []
    for grace, rf in ((1, 2), (1, 3), (2, 2), (2, 3), (3, 3), (b["grace_period"], b["reduction_factor"])):
        if grace >= b["max_evals"] or any(s["grace_period"] == grace and s["reduction_factor"] == rf for s in sims):
            continue
        sim = su.simulate_asha(fifo_curves, b["max_evals"], grace, rf)
        sim["f1_ratio"] = sim["best_f1_macro"] / fifo["best_f1_macro"] if fifo["best_f1_macro"] else None
        sims.append(sim)
    result["asha_replayed_on_fifo"] = sims
    print()
    print(bu.table(sims, ["grace_period", "reduction_factor", "rungs", "steps_ratio", "best_f1_macro", "f1_ratio"],
                   "ASHA's rule replayed on FIFO's learning curves (a replay, not a measured search)"))
    orders = [su.replay_orders(fifo_curves, b["max_evals"], s["grace_period"], s["reduction_factor"], GOAL_F1)
              for s in sims]
    result["asha_replayed_on_fifo_random_orders"] = orders
    print()
    print(bu.table(orders, ["grace_period", "reduction_factor", "rungs", "steps_ratio_mean", "steps_ratio_min",
                            "steps_ratio_max", "f1_ratio_mean", "share_f1_goal_met"],
                   f"the same replay over {orders[0]['orders'] if orders else 0} random orders of the trials "
                   f"(share_f1_goal_met: how often the best F1-macro kept is >= {GOAL_F1} of FIFO's)"))

    # 2. ours (ASHA) against the peer
    for name, r in runs.items():
        if not name.startswith("hf_") or "error" in r:
            continue
        time_ratio = asha["wall_s"] / r["wall_s"]
        f1_diff = asha["best_f1_macro"] - r["best_f1_macro"]
        met = time_ratio <= GOAL_TIME and f1_diff >= 0
        result[f"time_ratio_vs_{name}"], result[f"f1_diff_vs_{name}"], result[f"goal_met_vs_{name}"] = time_ratio, f1_diff, met
        print(f"ours (ASHA) vs {name}: wall time ratio {time_ratio:.3f} (goal <= {GOAL_TIME}), best F1-macro "
              f"{asha['best_f1_macro']:.4f} vs {r['best_f1_macro']:.4f} (difference {f1_diff:+.4f}, goal >= 0): "
              f"{'MET' if met else 'MISSED'}")
    for name, r in runs.items():
        if "error" in r:
            print(f"{name} failed: {r['error']}")
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
