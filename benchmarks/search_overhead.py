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
Ray's own start-up (ray.init + ray.shutdown) is timed alone too, as part of the breakdown.
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


def run_direct(space_path: Path, workdir: Path) -> float:
    import torch

    from afqmc.train import prepare_data, train
    from tune.space import load_space

    space = load_space(space_path)
    cfg = space.base.replace(**space.baseline(), output_dir=str(workdir / "direct"), test_file=None,
                             save_best_model=True)  # what the search sets for its trials
    torch.set_num_threads(1)  # a trial gets one core (cpus_per_trial 1)
    started = time.perf_counter()
    data = prepare_data(cfg)
    train(cfg, report=lambda m, c: None, data=data, progress=False)
    return time.perf_counter() - started


def time_ray_start() -> float:
    import ray

    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    ray.shutdown()
    return time.perf_counter() - started


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
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "tokenizer_calls.log"
        count_tokenization(log)
        ray_start = time_ray_start()
        print(f"search overhead: one trial of {args.max_evals} x {eval_steps} updates (batch 64, tiny BERT), data sizes "
              f"{sizes}, {rounds} round(s) each; Ray start + stop alone {ray_start:.1f} s", flush=True)
        tokenization: dict[str, Any] = {}
        for size in sizes:
            b = dict(su.QUICK, num_samples=1, n_startup_trials=1, max_evals=args.max_evals, grace_period=1,
                     eval_steps=eval_steps, max_train_samples=size)
            space = su.write_space(workdir / f"space_{size}.yaml", args.data, b)
            for r in range(rounds):
                order = ("direct", "search") if r % 2 == 0 else ("search", "direct")
                wall: dict[str, float] = {}
                for kind in order:
                    log.unlink(missing_ok=True)
                    if kind == "direct":
                        wall[kind] = run_direct(space, workdir / f"d{size}_{r}")
                    else:
                        wall[kind] = su.run_search(space, f"s{size}_{r}", "fifo", workdir / "results")["wall_s"]
                    calls = read_log(log)
                    here = [n for pid, n in calls if pid == os.getpid()]
                    elsewhere = [n for pid, n in calls if pid != os.getpid()]
                    tokenization[f"{kind}_{size}_{r}"] = {"driver_calls": len(here), "driver_pairs": sum(here),
                                                          "trial_process_calls": len(elsewhere)}
                rows.append({"pairs": size, "round": r + 1, "direct_s": wall["direct"], "search_s": wall["search"],
                             "overhead_s": wall["search"] - wall["direct"], "ratio": wall["search"] / wall["direct"]})
                print(f"{size} pairs, round {r + 1}: direct {wall['direct']:.1f} s, search {wall['search']:.1f} s, "
                      f"overhead {rows[-1]['overhead_s']:.1f} s", flush=True)

    per_size = {s: bu.median(r["overhead_s"] for r in rows if r["pairs"] == s) for s in sizes}
    growth = per_size[sizes[-1]] - per_size[sizes[0]] if len(sizes) > 1 else None
    searches = [v for k, v in tokenization.items() if k.startswith("search")]
    once = all(v["driver_calls"] == 2 and v["trial_process_calls"] == 0 for v in searches)
    result = {"benchmark": "search_overhead", "quick": args.quick, "machine": info, "rows": rows,
              "ray_start_stop_s": ray_start, "overhead_s_by_size": per_size, "overhead_growth_s": growth,
              "tokenization": tokenization, "tokenized_once_in_driver": once,
              "goal": "fixed overhead of a few seconds; nothing per trial that grows with the data"}
    print()
    print(bu.table(rows, ["pairs", "round", "direct_s", "search_s", "overhead_s", "ratio"]))
    print("\nmedian overhead of a one-trial search: " + ", ".join(f"{s} pairs {v:.1f} s" for s, v in per_size.items())
          + (f"; growth {growth:+.1f} s from {sizes[0]} to {sizes[-1]} pairs" if growth is not None else ""))
    print(f"Ray start + stop alone: {ray_start:.1f} s")
    print(f"tokenization per search: {searches[0]['driver_calls'] if searches else '?'} calls in the driver "
          f"(train and val), {sum(v['trial_process_calls'] for v in searches)} in trial processes: "
          f"{'once per search, in the driver' if once else 'NOT once per search'}")
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
