"""Search overhead: wall time of a one-trial search against calling the train function directly for
the same work, at two data sizes; and how often the data is tokenized, and where.

    python benchmarks/search_overhead.py [--quick] [--data ../shared/data] [--json OUT] [--before OLD.json]

Goals (issue 21): the fixed cost of a search beyond Python's own imports of torch, transformers and
Ray at most 8 s at 32,000 pairs; between two trials on the same worker at most 1 s plus the model's
construction; nothing per trial that grows with the data. `--before` prints an earlier run's
headline figures (its --json) beside this run's.

Same work: the search space's baseline trial (search_spaces/afqmc_cpu.yaml's values, a small
step budget) run by
  direct   afqmc.train.prepare_data + afqmc.train.train in this process (1 torch thread, as a trial);
  search   tune.search.main (python tune/search.py) with num_samples 1, FIFO, in this process.
Measured alternately (direct, search, search, direct, ...); overhead = search - direct, median.
At two data sizes (the first N pairs of the shared training file): an overhead that does not grow
with N has nothing in it that scales with the data (a one-trial search holds one trial's
per-trial costs, so this covers the per-trial part too).

Tokenization: the tokenizer that prepare_data builds is wrapped (in the driver, before the search
starts) in a proxy that logs every call with its process id; the proxy travels to the trial
processes inside the data, so a trial that tokenized would log from its own process.
Where the overhead goes: the search's own steps are timed in this process (the functions of
tune.search that start Ray, write the reports and stop Ray are wrapped, and Tune's callbacks give
the trial's start and its reports), against the same points of the direct run. A fresh
interpreter's `import tune.trial` (what a trial process imports: torch, transformers, afqmc, Ray
Tune) is timed alone, since a trial process pays it and the direct run, in a warm process, does not;
so is a fresh interpreter's import of torch, transformers' BERT and Ray Tune alone (BASE_IMPORTS).
The fixed overhead beyond those imports is the one-trial search's overhead less that import time.

The per-trial gap: at each data size, a search of --gap_trials trials of one evaluation
(--gap_eval_steps updates), one at a time (max_concurrent_trials 1), so that Tune runs them one
after another in the same trial process (reuse_actors). Probes installed in that process
(`install_probe`, travelling by value inside the trainable) note with wall-clock times (time.time)
each trial's start (its call of run_trial, after Tune handed it the data), Accelerate's set-up, the
model's construction (load_model), the end of its first optimizer update (a step post-hook on the
optimizer train() builds) and each report to Tune (the call of ray.tune.report, which copies the
checkpoint and, for a trial's last report, ends its training thread). The gap between trial k and
trial k+1 of the same process is from k's last report to the end of k+1's first optimizer update:
Tune ending k and resetting the process, k+1's set-up, its model's construction, its loaders and
one update. Reported with the model's construction (`model_s`) and the gap less it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _benchutil as bu  # noqa: E402  (sets up sys.path for afqmc and tune)
import _searchutil as su


class CountingTokenizer:
    """Delegates to a tokenizer; every call (= tokenization) appends `pid pairs` to a log file."""

    def __init__(self, inner: Any, log: str):
        self.inner = inner
        self.log = log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        n = len(args[0]) if args and isinstance(args[0], (list, tuple)) else 1
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {n}\n")
        return self.inner(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "log"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def count_tokenization(log: Path):
    """Patch afqmc.train.load_tokenizer so that prepare_data's tokenizer is a CountingTokenizer."""
    import afqmc.train as afqmc_train

    original = afqmc_train.load_tokenizer

    def load(cfg, texts=()):
        return CountingTokenizer(original(cfg, texts), str(log))

    afqmc_train.load_tokenizer = load
    if __name__ != "__main__":  # trial processes must not need to import this module
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return original


def read_log(log: Path) -> list[tuple[int, int]]:
    if not log.is_file():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines() if line.strip()]


class Phases:
    """Times of the search's steps, taken in this process by wrapping tune.search's functions and
    Tune's callbacks for the duration of one search (`with Phases() as ph: ...`; `ph.t` maps event
    names to perf_counter times)."""

    WRAPPED = ("prepare_data", "_init_ray", "write_reports")

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def mark(self, name: str, first: bool = True) -> None:
        if not (first and name in self.t):
            self.t[name] = time.perf_counter()

    def _wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"{name}_start")
            try:
                return original(*args, **kwargs)
            finally:
                self.mark(f"{name}_end")

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def __enter__(self) -> "Phases":
        import tune.search as search

        search.ray_environment(None)  # as search.main does, before Ray is imported
        import ray

        from tune.terminal import LiveView

        for attr in self.WRAPPED:
            self._wrap(search, attr, attr.strip("_"))
        self._wrap(ray, "shutdown", "ray_shutdown")
        for hook, names in (("on_trial_start", ("trial_start",)), ("on_trial_result", ("first_result", "last_result"))):
            original = getattr(LiveView, hook)

            def timed(view, *args: Any, _original=original, _names=names, **kwargs: Any) -> Any:
                self.mark(_names[0])
                if len(_names) > 1:
                    self.mark(_names[1], first=False)
                return _original(view, *args, **kwargs)

            setattr(LiveView, hook, timed)
            self._undo.append((LiveView, hook, original))
        self.mark("start")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


# --- the per-trial gap: probes inside the trial processes ------------------------------------------


def probed_trainable(log: str):
    """tune.trial.run_trial with probes: in the trial's process it first installs `install_probe(log)`
    (once per process), notes the trial's start, then runs the real run_trial. Travels by value
    (cloudpickle: this module is `__main__`, or registered by value), so trial processes need not
    import this file."""

    def run_trial(config, data, base, workers=1, worker_resources=None, train_storage=None, log_dir=None):
        import tune.trial

        install_probe(log)
        # Whether this process holds the search's data already (SharedData, from an earlier trial).
        shared = getattr(tune.trial, "SharedData", None)
        probe_note(log, "start", data_cached=bool(shared and isinstance(data, shared) and data.ref.hex() in shared._cache))
        return tune.trial.run_trial(config, data, base, workers, worker_resources, train_storage, log_dir)

    return run_trial


def probe_note(log: str, event: str, **times: float) -> None:
    """One JSON line in `log`: the event, this process, the trial, the wall time (time.time())."""
    import json

    from ray import tune

    line = {"event": event, "pid": os.getpid(), "trial": tune.get_context().get_trial_id(), "t": time.time(), **times}
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def install_probe(log: str) -> None:
    """In a trial process: note each model construction (afqmc.train.load_model, with its start),
    each trial's first optimizer update (a step post-hook, torch's own, on the optimizer train()
    builds) and every report to Tune (ray.tune.report, at its call). Once per process: a reused
    process keeps them."""
    import afqmc.train as afqmc_train
    import ray.tune as ray_tune

    if getattr(afqmc_train, "_overhead_probe", None) == log:
        return
    afqmc_train._overhead_probe = log
    load_model, setup_optimizer, report = afqmc_train.load_model, afqmc_train._setup_optimizer, ray_tune.report

    def timed_load_model(cfg, tokenizer):
        started = time.time()
        model = load_model(cfg, tokenizer)
        probe_note(log, "model", start=started)
        return model

    setup_accelerator = afqmc_train._setup_accelerator

    def timed_accelerator(cfg):
        started = time.time()
        out = setup_accelerator(cfg)
        probe_note(log, "accelerator", start=started)
        return out

    afqmc_train._setup_accelerator = timed_accelerator

    def hooked_optimizer(cfg, model):
        optimizer = setup_optimizer(cfg, model)
        done: list[bool] = []

        def first_update(*_: Any) -> None:
            if not done:
                done.append(True)
                probe_note(log, "first_update")

        optimizer.register_step_post_hook(first_update)
        return optimizer

    def noted_report(*args: Any, **kwargs: Any) -> Any:
        probe_note(log, "report")
        return report(*args, **kwargs)

    afqmc_train.load_model, afqmc_train._setup_optimizer, ray_tune.report = timed_load_model, hooked_optimizer, noted_report


# The per-trial gap's steps, as (name, from event, to event): from trial k's last report ("last_report",
# of k) to trial k+1's start in the same process (Tune ends k, resets the process for k+1, which gets
# the data from the object store), its set-up before the model (the config, Accelerate), the model's
# construction, and from there to its first optimizer update done (loaders, prepare, one step).
GAP_STEPS = (("to_next_start_s", "last_report", "start"), ("config_s", "start", "accelerator_start"),
             ("accelerator_s", "accelerator_start", "accelerator_end"), ("setup_s", "accelerator_end", "model_start"),
             ("model_s", "model_start", "model_end"), ("to_first_update_s", "model_end", "first_update"))


def trial_gaps(log: Path) -> list[dict[str, Any]]:
    """The per-trial gaps of a search from its probe log: for each trial k+1 that ran in the same
    process right after trial k, from k's last report to k+1's first optimizer update, step by step."""
    import json

    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    trials: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        t = trials.setdefault(e["trial"], {"pid": e["pid"]})
        if e["event"] == "report":
            t["last_report"] = e["t"]
        elif e["event"] in ("model", "accelerator"):
            t.setdefault(f"{e['event']}_start", e["start"])
            t.setdefault(f"{e['event']}_end", e["t"])
        else:
            t.setdefault(e["event"], e["t"])
            if e["event"] == "start":
                t["data_cached"] = e.get("data_cached", False)
    ordered = sorted((t for t in trials.values() if "start" in t), key=lambda t: t["start"])
    gaps = []
    for prev, nxt in zip(ordered, ordered[1:]):
        if prev["pid"] != nxt["pid"] or "last_report" not in prev or "first_update" not in nxt:
            continue
        row = {name: nxt[b] - (prev if a == "last_report" else nxt)[a] for name, a, b in GAP_STEPS}
        row["gap_s"] = nxt["first_update"] - prev["last_report"]
        row["data_cached"] = nxt["data_cached"]
        row["gap_less_model_s"] = row["gap_s"] - row["model_s"]
        gaps.append(row)
    return gaps


def measure_gaps(space_path: Path, name: str, results: Path, log: Path) -> dict[str, Any]:
    """A search of several short trials, one at a time (max_concurrent_trials 1: one after another in
    the same process), with the probes; its gaps and how many trial processes ran."""
    import json

    import tune.trial

    log.unlink(missing_ok=True)
    if __name__ != "__main__":  # trial processes must not need to import this module
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    original = tune.trial.run_trial
    tune.trial.run_trial = probed_trainable(str(log))  # tune.search._trainable imports it from here
    try:
        wall = su.run_search(space_path, name, "fifo", results)["wall_s"]
    finally:
        tune.trial.run_trial = original
    pids = {json.loads(line)["pid"] for line in log.read_text().splitlines() if line.strip()}
    return {"wall_s": wall, "trial_processes": len(pids), "gaps": trial_gaps(log)}


# The steps of a run, as (name, from event, to event); a direct run has only the data, the training
# and its end. Search minus direct, step by step, is where the overhead goes.
SEARCH_STEPS = (("data (load, tokenize)", "start", "prepare_data_end"),
                ("ray start", "prepare_data_end", "init_ray_end"),
                ("tuner set-up, trial process start", "init_ray_end", "trial_start"),
                ("to the first evaluation", "trial_start", "first_result"),
                ("first to last evaluation", "first_result", "last_result"),
                ("after the last evaluation", "last_result", "ray_shutdown_start"),
                ("ray stop", "ray_shutdown_start", "ray_shutdown_end"),
                ("reports (tables, plots, best model)", "ray_shutdown_end", "write_reports_end"))
DIRECT_STEPS = {"data (load, tokenize)": ("start", "prepare_data_end"),
                "to the first evaluation": ("prepare_data_end", "first_result"),
                "first to last evaluation": ("first_result", "last_result"),
                "after the last evaluation": ("last_result", "end")}


def steps(t: dict[str, float], search: bool) -> dict[str, float | None]:
    spans = SEARCH_STEPS if search else [(name, a, b) for name, (a, b) in DIRECT_STEPS.items()]
    return {name: (t[b] - t[a]) if a in t and b in t else None for name, a, b in spans}


def time_trial_imports() -> float:
    """A fresh interpreter importing what a trial process imports (tune.trial), less the interpreter's own start."""
    import subprocess

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - started

    return run("import tune.trial") - run("pass")


BASE_IMPORTS = "import torch, ray.tune; from transformers import BertForSequenceClassification, BertTokenizer"


def time_base_imports() -> float:
    """A fresh interpreter importing torch, transformers' BERT and Ray Tune alone, less the interpreter's
    start: Python's own price for those libraries, which any process that trains with them pays."""
    import subprocess

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - started

    return run(BASE_IMPORTS) - run("pass")


def run_direct(space_path: Path, workdir: Path, t: dict[str, float] | None = None) -> float:
    import torch

    from afqmc.train import prepare_data, train
    from tune.space import load_space

    space = load_space(space_path)
    cfg = space.base.replace(**space.baseline(), output_dir=str(workdir / "direct"), test_file=None,
                             save_best_model=True)  # what the search sets for its trials
    torch.set_num_threads(1)  # a trial gets one core (cpus_per_trial 1)
    t = {} if t is None else t

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        t.setdefault("first_result", time.perf_counter())
        t["last_result"] = time.perf_counter()

    t["start"] = started = time.perf_counter()
    data = prepare_data(cfg)
    t["prepare_data_end"] = time.perf_counter()
    train(cfg, report=report, data=data, progress=False)
    t["end"] = time.perf_counter()
    return t["end"] - started


def gap_searches(args, sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    """At each data size, a search of `--gap_trials` trials of one evaluation, one at a time: the
    per-trial gaps (measure_gaps), each row with its size."""
    out = []
    for size in sizes:
        b = dict(su.QUICK, num_samples=args.gap_trials, n_startup_trials=args.gap_trials, max_evals=1, grace_period=1,
                 eval_steps=args.gap_eval_steps, max_train_samples=size)
        space = su.write_space(workdir / f"gap_space_{size}.yaml", args.data, b)
        text = space.read_text(encoding="utf-8").replace("search:\n", "search:\n  max_concurrent_trials: 1\n", 1)
        space.write_text(text, encoding="utf-8")
        res = measure_gaps(space, f"gap{size}", workdir / "results", workdir / f"probe_{size}.log")
        out.extend({"pairs": size, "trial_processes": res["trial_processes"], **g} for g in res["gaps"])
        print(f"{size} pairs: {args.gap_trials} trials one at a time in {res['trial_processes']} trial process(es), "
              f"gaps " + ", ".join(f"{g['gap_s']:.2f} s" for g in res["gaps"]), flush=True)
    return out


def gap_summary(gaps: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Median per-trial gap and its steps, per data size."""
    keys = [name for name, _, _ in GAP_STEPS] + ["gap_s", "gap_less_model_s"]
    return [{"pairs": size, "gaps": len(rows), **{k: bu.median(r[k] for r in rows) for k in keys}}
            for size in sizes if (rows := [g for g in gaps if g["pairs"] == size])]


def print_results(result: dict[str, Any], sizes: list[int]) -> None:
    rows, per_size, growth = result["rows"], result["overhead_s_by_size"], result["overhead_growth_s"]
    print()
    print(bu.table(rows, ["pairs", "round", "direct_s", "search_s", "overhead_s", "ratio"]))
    print("\nmedian overhead of a one-trial search: " + ", ".join(f"{s} pairs {v:.1f} s" for s, v in per_size.items())
          + (f"; growth {growth:+.1f} s from {sizes[0]} to {sizes[-1]} pairs" if growth is not None else ""))
    print()
    print(bu.table(result["breakdown_median"],
                   ["step", *[f"{k}_{size}" for size in sizes for k in ("direct_s", "search_s", "overhead_s")]],
                   "where the time goes (median over rounds; direct: the same points of the direct run)"))
    print(f"a trial process's imports (torch, transformers, afqmc, Ray Tune), timed alone in a fresh "
          f"interpreter: {result['trial_process_imports_s']:.1f} s; of which torch, transformers' BERT and Ray Tune "
          f"alone: {result['base_imports_s']:.1f} s")
    print("fixed overhead beyond those imports (goal: at most 8 s at 32,000 pairs): "
          + ", ".join(f"{s} pairs {v:.1f} s" for s, v in result["fixed_overhead_beyond_imports_s"].items()))
    print()
    print(bu.table(result["gap_median"], ["pairs", "gaps", *[name for name, _, _ in GAP_STEPS], "gap_s",
                                          "gap_less_model_s"],
                   "per-trial gap: one trial's last report to the next trial's first update in the same process "
                   "(median; goal: gap less model construction at most 1 s)"))
    searches = [v for k, v in result["tokenization"].items() if k.startswith("search")]
    print(f"tokenization per search: {searches[0]['driver_calls'] if searches else '?'} calls in the driver "
          f"(train and val), {sum(v['trial_process_calls'] for v in searches)} in trial processes: "
          f"{'once per search, in the driver' if result['tokenized_once_in_driver'] else 'NOT once per search'}")


def print_before_after(before: dict[str, Any], after: dict[str, Any], sizes: list[int]) -> None:
    """The headline figures of an earlier run (--before) beside this one's."""

    def figures(r: dict[str, Any]) -> dict[str, float | None]:
        out: dict[str, float | None] = {"trial process imports": r.get("trial_process_imports_s"),
                                        "torch, transformers, ray imports": r.get("base_imports_s")}
        for size in sizes:
            overhead = (r.get("overhead_s_by_size") or {}).get(str(size), (r.get("overhead_s_by_size") or {}).get(size))
            out[f"overhead, {size} pairs"] = overhead
            out[f"beyond imports, {size} pairs"] = None if overhead is None or out["torch, transformers, ray imports"] \
                is None else overhead - out["torch, transformers, ray imports"]
            gap = next((g for g in r.get("gap_median") or [] if g["pairs"] == size), None)
            for key in ("gap_s", "model_s", "gap_less_model_s"):
                out[f"{key}, {size} pairs"] = gap and gap[key]
        return out

    b, a = figures(before), figures(after)
    rows = [{"figure": k, "before_s": b[k], "after_s": a[k]} for k in a]
    print()
    print(bu.table(rows, ["figure", "before_s", "after_s"], "before (--before) and after (this run)"))


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="comma-separated data sizes in pairs (default 2000,8000 quick; 4000,32000 full)")
    p.add_argument("--rounds", type=int, help="(direct, search) pairs per size (default 1 quick, 2 full)")
    p.add_argument("--eval_steps", type=int, help="updates per evaluation (default 10 quick, 50 full)")
    p.add_argument("--max_evals", type=int, default=2, help="evaluations of the trial")
    p.add_argument("--gap_trials", type=int, help="trials of the per-trial gap's search (default 3 quick, 4 full)")
    p.add_argument("--before", type=Path, metavar="JSON", help="an earlier run's --json: print before and after")
    p.add_argument("--gap_eval_steps", type=int, default=5, help="updates of each trial of the gap's search")
    args = p.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("2000,8000" if args.quick else "4000,32000")).split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    eval_steps = args.eval_steps or (10 if args.quick else 50)
    args.gap_trials = args.gap_trials or (3 if args.quick else 4)
    info = bu.machine()
    rows: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []  # per size and round, each step of the search against the direct run's
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "tokenizer_calls.log"
        count_tokenization(log)
        trial_imports, base_imports = time_trial_imports(), time_base_imports()
        print(f"search overhead: one trial of {args.max_evals} x {eval_steps} updates (batch 64, tiny BERT), data sizes "
              f"{sizes}, {rounds} round(s) each; a trial process's "
              f"imports alone {trial_imports:.1f} s", flush=True)
        tokenization: dict[str, Any] = {}
        for size in sizes:
            b = dict(su.QUICK, num_samples=1, n_startup_trials=1, max_evals=args.max_evals, grace_period=1,
                     eval_steps=eval_steps, max_train_samples=size)
            space = su.write_space(workdir / f"space_{size}.yaml", args.data, b)
            for r in range(rounds):
                order = ("direct", "search") if r % 2 == 0 else ("search", "direct")
                wall: dict[str, float] = {}
                times: dict[str, dict[str, float]] = {}
                for kind in order:
                    log.unlink(missing_ok=True)
                    if kind == "direct":
                        wall[kind] = run_direct(space, workdir / f"d{size}_{r}", t=times.setdefault(kind, {}))
                    else:
                        with Phases() as ph:
                            wall[kind] = su.run_search(space, f"s{size}_{r}", "fifo", workdir / "results")["wall_s"]
                        times[kind] = ph.t
                    calls = read_log(log)
                    here = [n for pid, n in calls if pid == os.getpid()]
                    elsewhere = [n for pid, n in calls if pid != os.getpid()]
                    tokenization[f"{kind}_{size}_{r}"] = {"driver_calls": len(here), "driver_pairs": sum(here),
                                                          "trial_process_calls": len(elsewhere)}
                rows.append({"pairs": size, "round": r + 1, "direct_s": wall["direct"], "search_s": wall["search"],
                             "overhead_s": wall["search"] - wall["direct"], "ratio": wall["search"] / wall["direct"]})
                direct_steps, search_steps = steps(times["direct"], False), steps(times["search"], True)
                breakdown.extend({"pairs": size, "round": r + 1, "step": name, "direct_s": direct_steps.get(name),
                                  "search_s": value,
                                  "overhead_s": None if value is None else value - (direct_steps.get(name) or 0.0)}
                                 for name, value in search_steps.items())
                print(f"{size} pairs, round {r + 1}: direct {wall['direct']:.1f} s, search {wall['search']:.1f} s, "
                      f"overhead {rows[-1]['overhead_s']:.1f} s", flush=True)
        gaps = gap_searches(args, sizes, workdir)

    per_size = {s: bu.median(r["overhead_s"] for r in rows if r["pairs"] == s) for s in sizes}
    growth = per_size[sizes[-1]] - per_size[sizes[0]] if len(sizes) > 1 else None
    searches = [v for k, v in tokenization.items() if k.startswith("search")]
    once = all(v["driver_calls"] == 2 and v["trial_process_calls"] == 0 for v in searches)

    def median_of(size: int, name: str, key: str) -> float | None:
        values = [x[key] for x in breakdown if x["pairs"] == size and x["step"] == name and x[key] is not None]
        return bu.median(values) if values else None

    median_steps = [{"step": name, **{f"{k}_{size}": median_of(size, name, k)
                                      for size in sizes for k in ("direct_s", "search_s", "overhead_s")}}
                    for name, _, _ in SEARCH_STEPS]
    per_trial = gap_summary(gaps, sizes)
    beyond = {size: v - base_imports for size, v in per_size.items()}
    result = {"benchmark": "search_overhead", "quick": args.quick, "machine": info, "rows": rows,
              "breakdown": breakdown, "breakdown_median": median_steps, "trial_process_imports_s": trial_imports,
              "base_imports_s": base_imports, "overhead_s_by_size": per_size, "overhead_growth_s": growth,
              "fixed_overhead_beyond_imports_s": beyond, "gaps": gaps, "gap_median": per_trial,
              "tokenization": tokenization, "tokenized_once_in_driver": once,
              "goal": "fixed overhead beyond the imports of torch, transformers and ray at most 8 s at 32,000 pairs; "
                      "per-trial gap at most 1 s plus the model's construction"}
    print_results(result, sizes)
    if args.before:
        print_before_after(json.loads(args.before.read_text(encoding="utf-8")), result, sizes)
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
