"""Search overhead: wall time of a one-trial search against calling the train function directly for
the same work, at two data sizes; and how often the data is tokenized, and where.

    python benchmarks/search_overhead.py [--quick] [--data ../shared/data] [--json OUT]

Goal: a fixed overhead of a few seconds, and nothing per trial that grows with the data.

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
Tune) is timed alone, since a trial process pays it and the direct run, in a warm process, does not.
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="comma-separated data sizes in pairs (default 2000,8000 quick; 4000,32000 full)")
    p.add_argument("--rounds", type=int, help="(direct, search) pairs per size (default 1 quick, 2 full)")
    p.add_argument("--eval_steps", type=int, help="updates per evaluation (default 10 quick, 50 full)")
    p.add_argument("--max_evals", type=int, default=2, help="evaluations of the trial")
    args = p.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("2000,8000" if args.quick else "4000,32000")).split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    eval_steps = args.eval_steps or (10 if args.quick else 50)
    info = bu.machine()
    rows: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []  # per size and round, each step of the search against the direct run's
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "tokenizer_calls.log"
        count_tokenization(log)
        trial_imports = time_trial_imports()
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
    result = {"benchmark": "search_overhead", "quick": args.quick, "machine": info, "rows": rows,
              "breakdown": breakdown, "breakdown_median": median_steps, "trial_process_imports_s": trial_imports,
              "overhead_s_by_size": per_size, "overhead_growth_s": growth,
              "tokenization": tokenization, "tokenized_once_in_driver": once,
              "goal": "fixed overhead of a few seconds; nothing per trial that grows with the data"}
    print()
    print(bu.table(rows, ["pairs", "round", "direct_s", "search_s", "overhead_s", "ratio"]))
    print("\nmedian overhead of a one-trial search: " + ", ".join(f"{s} pairs {v:.1f} s" for s, v in per_size.items())
          + (f"; growth {growth:+.1f} s from {sizes[0]} to {sizes[-1]} pairs" if growth is not None else ""))
    print()
    print(bu.table(median_steps, ["step", *[f"{k}_{size}" for size in sizes for k in ("direct_s", "search_s", "overhead_s")]],
                   "where the time goes (median over rounds; direct: the same points of the direct run)"))
    print(f"a trial process's imports (torch, transformers, afqmc, Ray Tune), timed alone in a fresh "
          f"interpreter: {trial_imports:.1f} s")
    print(f"tokenization per search: {searches[0]['driver_calls'] if searches else '?'} calls in the driver "
          f"(train and val), {sum(v['trial_process_calls'] for v in searches)} in trial processes: "
          f"{'once per search, in the driver' if once else 'NOT once per search'}")
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
