"""Loop overhead: samples/s of our training loop (`afqmc.train.train`) against a plain PyTorch loop
doing the same work: same model init, same batches in the same order (same collate), same
class-weighted loss, backward, gradient clipping, AdamW (same parameter groups) and linear schedule.

    python benchmarks/loop_overhead.py [--quick] [--data ../shared/data] [--json OUT]
    python benchmarks/loop_overhead.py --syncs [--json OUT]        # host syncs and collectives per 100 updates
    accelerate launch --multi_gpu --num_processes 2 benchmarks/loop_overhead.py --syncs    # ... under 2 processes

Goal: ours >= 0.95 x the plain loop. The two are measured alternately in one process (ours first
in even pairs, plain first in odd ones, so drift of the shared machine cancels) and the median
of the per-pair ratios is reported.

Ours is timed by the loop itself (`train/samples_per_second`: from the first batch to the last
update, evaluation and checkpointing excluded; evaluation happens once, after the last step).
The plain loop is timed the same way, from creating its batch iterator to its last update.
Both in CPU seconds of this process (1 torch thread) and in wall seconds; the headline ratio is
the CPU one, which the load of other work on a shared machine does not move (see DualClock in
_benchutil.py); on an idle machine the two agree.
The first pair is a warm-up that also checks that both loops saw identical batches; it is not
counted.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import _benchutil as bu  # noqa: E402  (sets up sys.path for afqmc)

import torch
from torch.utils.data import DataLoader, RandomSampler

import afqmc
import afqmc.train as afqmc_train
from afqmc.data import PairDataset, collate
from afqmc.modeling import load_model
from afqmc.train import prepare_data, train

GOAL = 0.95


def batch_order(n: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """The index batches train() sees in its first epoch.

    Accelerate swaps the DataLoader's RandomSampler for a SeedableRandomSampler, which reseeds the
    loader's generator with `seed + epoch` (its initial seed is torch's global seed, which train()
    sets to cfg.seed) and then draws exactly as RandomSampler does.
    """
    order = list(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) < steps:
        raise ValueError(f"{steps} steps need {steps * batch_size} training pairs in one epoch, have {n}")
    return batches[:steps]


def fingerprint(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    return (int(batch["input_ids"].shape[1]), int(batch["input_ids"].sum()), int(batch["labels"].sum()))


def run_ours(cfg, data, record: list | None = None, collate_fn=None) -> dict:
    """train() as shipped; `collate_fn` (pad_id keyword) swaps the collate its loaders use.

    train() times its steps itself (`train/samples_per_second`, evaluation excluded). With its clock
    swapped for a DualClock that figure is per CPU second, and the wall seconds of the same spans are
    read back from the clock's log.
    """
    reports: list[dict] = []
    clock = bu.DualClock()
    original_time, original_collate = afqmc_train.time, afqmc_train.collate
    inner = collate_fn or original_collate
    if record is not None:  # note what each batch holds (the val batches come after the training ones)
        def recording(batch, pad_id=0):
            out = inner(batch, pad_id=pad_id)
            record.append(fingerprint(out))
            return out
        afqmc_train.collate = recording
    else:
        afqmc_train.collate = inner
    afqmc_train.time = clock
    try:
        started = time.perf_counter()
        summary = train(cfg, report=lambda m, c: reports.append(m), data=data, progress=False)
        wall = time.perf_counter() - started
    finally:
        afqmc_train.collate, afqmc_train.time = original_collate, original_time
    last = reports[-1]
    samples = summary["steps"] * cfg.per_device_batch_size
    cpu_s, wall_s = clock.spans()
    reported = samples / last["train/samples_per_second"]
    assert abs(cpu_s - reported) < 1e-6 * max(1.0, reported), "train() no longer times its steps as expected"
    return {"samples_per_cpu_second": samples / cpu_s, "samples_per_second": samples / wall_s,
            "train_loss": last["train/loss"], "steps": summary["steps"], "call_wall_s": wall, "timed_s": wall_s,
            "val_f1_macro": last["val/f1_macro"], "val_accuracy": last["val/accuracy"],
            "best_val_f1_macro": last["best/val_f1_macro"]}


def run_plain(cfg, data, batches: list[list[int]], record: list | None = None, collate_fn=None,
              evaluate_every: int = 0) -> dict:
    """The same work as train() in plain PyTorch, no Accelerate. `collate_fn` defaults to ours
    (dynamic padding); with `evaluate_every` > 0 the val set is scored every that many updates and
    after the last one (outside the timed part), as train() does."""
    torch.manual_seed(cfg.seed)
    model = load_model(cfg, data.tokenizer)  # seeds and initialises exactly as train() does
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    total = len(batches)
    warmup = math.ceil(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    labels_all = torch.tensor(data.train.labels)
    counts = torch.bincount(labels_all, minlength=2).float()
    weights = len(labels_all) / (2.0 * counts) if cfg.class_weights == "balanced" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    pad = collate_fn or functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0)
    # An own generator: the loader's base seed must not come from the global RNG that dropout uses.
    loader = DataLoader(PairDataset(data.train), batch_sampler=batches, collate_fn=pad,
                        generator=torch.Generator().manual_seed(cfg.seed))

    window_loss = torch.zeros(())
    history: list[dict] = []
    elapsed = cpu = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for step, batch in enumerate(loader, start=1):
        if record is not None:
            record.append(fingerprint(batch))
        labels = batch.pop("labels")
        logits = model(**batch).logits
        loss = loss_fn(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_loss += loss.detach()
        if evaluate_every and (step % evaluate_every == 0 or step == total):
            elapsed += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            history.append({"step": step, **evaluate_plain(model, data, cfg)})
            model.train()
            started, cpu_started = time.perf_counter(), time.process_time()
    elapsed += time.perf_counter() - started
    cpu += time.process_time() - cpu_started
    samples = total * cfg.per_device_batch_size
    return {"samples_per_second": samples / elapsed, "samples_per_cpu_second": samples / cpu,
            "train_loss": window_loss.item() / total, "steps": total, "timed_s": elapsed, "history": history}


# --- host syncs and collectives per update (--syncs) ----------------------------------------------

# Tensor methods that make the host wait for the device when the tensor is on a GPU.
SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# Accelerator methods that are collectives when there are several processes (the loop's own calls).
ACCELERATOR_COLLECTIVES = ("reduce", "gather", "gather_for_metrics", "pad_across_processes", "wait_for_everyone")
# torch.distributed's Python collectives (DDP's gradient all-reduce runs in its C++ reducer: not counted).
DIST_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
                    "broadcast_object_list", "barrier", "reduce", "gather", "reduce_scatter_tensor")


class SyncCounter:
    """Counts, by optimizer update, the host syncs and collectives a training run makes, by wrapping them.

    A sync is a call of a SYNCING method on a tensor from the code of afqmc/ or accelerate/ (torch's
    own optimizers read their CPU step counters with .item(), which is no sync: DESIGN.md says to count
    the project's own calls). A collective is an Accelerator collective called from afqmc/ (kind
    "collective": what the loop asks for) or a torch.distributed collective (kind "dist": what reaches
    the process group; none with one process). `extra_roots` adds folders whose calls count (tests).
    Each event is recorded with the number of optimizer updates done
    (torch's global optimizer step hook) and whether an evaluation (`_evaluate_and_report`) was running.
    """

    def __init__(self, extra_roots: tuple[str, ...] = ()):
        import accelerate

        self.roots = (str(Path(afqmc.__file__).parent), str(Path(accelerate.__file__).parent), *extra_roots)
        self.callers = (self.roots[0], *extra_roots)  # whose Accelerator calls are the loop's
        self.events: list[tuple[str, str, int, bool]] = []  # (sync | collective | dist, name, update, in evaluation)
        self.updates = 0
        self._in_eval = False
        self._undo: list = []

    def _record(self, kind: str, name: str) -> None:
        self.events.append((kind, name, self.updates, self._in_eval))

    def _patch(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        self._undo.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self) -> "SyncCounter":
        import accelerate
        import torch.distributed as dist
        from torch.optim.optimizer import register_optimizer_step_post_hook

        roots, callers = self.roots, self.callers

        def tensor_method(name):
            def make(original):
                def wrapper(tensor, *args, **kwargs):
                    if sys._getframe(1).f_code.co_filename.startswith(roots):
                        self._record("sync", name)
                    return original(tensor, *args, **kwargs)
                return wrapper
            return make

        def accelerator_method(name):
            def make(original):
                def wrapper(acc, *args, **kwargs):
                    if sys._getframe(1).f_code.co_filename.startswith(callers):
                        self._record("collective", f"Accelerator.{name}")
                    return original(acc, *args, **kwargs)
                return wrapper
            return make

        def dist_function(name):
            def make(original):
                def wrapper(*args, **kwargs):
                    self._record("dist", f"torch.distributed.{name}")
                    return original(*args, **kwargs)
                return wrapper
            return make

        def evaluation(original):
            def wrapper(*args, **kwargs):
                self._in_eval = True
                try:
                    return original(*args, **kwargs)
                finally:
                    self._in_eval = False
            return wrapper

        for name in SYNCING:
            self._patch(torch.Tensor, name, tensor_method(name))
        for name in ACCELERATOR_COLLECTIVES:
            self._patch(accelerate.Accelerator, name, accelerator_method(name))
        for name in DIST_COLLECTIVES:
            if hasattr(dist, name):
                self._patch(dist, name, dist_function(name))
        self._patch(afqmc_train, "_evaluate_and_report", evaluation)
        self._hook = register_optimizer_step_post_hook(lambda *_: setattr(self, "updates", self.updates + 1))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def between_evaluations(self, kind: str) -> dict[int, int]:
        """{update: events of `kind` after that update, outside evaluations}."""
        out: dict[int, int] = {}
        for k, _, update, in_eval in self.events:
            if k == kind and not in_eval:
                out[update] = out.get(update, 0) + 1
        return out


def count_syncs(cfg, data=None, extra_roots: tuple[str, ...] = ()) -> dict:
    """train(cfg) under a SyncCounter: the syncs and collectives outside and inside evaluations."""
    with SyncCounter(extra_roots) as counter:
        train(cfg, data=data, progress=False)
    per = {kind: counter.between_evaluations(kind) for kind in ("sync", "collective", "dist")}
    names = sorted({f"{k} {n}" for k, n, _, e in counter.events if not e})
    return {"updates": counter.updates, "evaluations": len(train_evals(cfg, counter.updates)),
            "syncs_outside_eval": sum(per["sync"].values()),
            "collectives_outside_eval": sum(per["collective"].values()),
            "process_group_calls_outside_eval": sum(per["dist"].values()),
            "updates_with_syncs": sorted(per["sync"]), "updates_with_collectives": sorted(per["collective"]),
            "updates_with_process_group_calls": sorted(per["dist"]),
            "syncs_in_eval": sum(1 for k, _, _, e in counter.events if k == "sync" and e),
            "collectives_in_eval": sum(1 for k, _, _, e in counter.events if k == "collective" and e),
            "process_group_calls_in_eval": sum(1 for k, _, _, e in counter.events if k == "dist" and e),
            "outside_eval_by_name": {n: sum(1 for k, m, _, e in counter.events if f"{k} {m}" == n and not e)
                                     for n in names}}


def train_evals(cfg, updates: int) -> list[int]:
    every = cfg.eval_steps or updates
    return [u for u in range(1, updates + 1) if u % every == 0 or u == updates]


def main_syncs(args) -> int:
    from accelerate import PartialState

    bu.setup_threads(args.threads)
    updates, batch_size = 100, 16
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bu.tiny_afqmc(args.data, max_train_samples=math.ceil(updates * batch_size / 0.9) + 64,
                            max_steps=updates, eval_steps=50, per_device_batch_size=batch_size,
                            tiny_hidden_size=32, tiny_num_layers=1, output_dir=str(args.workdir or Path(tmp)))
        found = count_syncs(cfg)
    state = PartialState()
    print(f"process {state.process_index} of {state.num_processes}: {found['updates']} updates, evaluations at "
          f"{train_evals(cfg, found['updates'])}; outside evaluations {found['syncs_outside_eval']} host syncs after "
          f"updates {found['updates_with_syncs']}, {found['collectives_outside_eval']} collectives after updates "
          f"{found['updates_with_collectives']} ({found['process_group_calls_outside_eval']} torch.distributed calls); "
          f"by name {found['outside_eval_by_name']}; inside evaluations {found['syncs_in_eval']} syncs, "
          f"{found['collectives_in_eval']} collectives "
          f"({found['process_group_calls_in_eval']} torch.distributed calls)",
          flush=True)
    if args.json and state.is_main_process:
        bu.write_json(args.json, {"benchmark": "loop_overhead --syncs", "processes": state.num_processes,
                                  "machine": bu.machine(), **found})
    return 0


@torch.no_grad()
def evaluate_plain(model, data, cfg) -> dict[str, float]:
    """Val F1-macro etc. at cfg.threshold, with afqmc's own metric code."""
    from afqmc.metrics import classification_metrics

    model.eval()
    pad = functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0)
    loader = DataLoader(PairDataset(data.val), batch_size=cfg.eval_batch_size, collate_fn=pad)
    probs, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels"))
        probs.append(model(**batch).logits.float().softmax(-1)[:, 1])
    return classification_metrics(torch.cat(labels).numpy(), torch.cat(probs).numpy(), cfg.threshold)


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="optimizer updates per measurement (default 40 quick, 150 full)")
    p.add_argument("--pairs", type=int, help="measured pairs (ours, plain) after the warm-up (default 3 quick, 7 full)")
    p.add_argument("--syncs", action="store_true",
                   help="instead: count host syncs and collectives per optimizer update in a 100-update run")
    args = p.parse_args(argv)
    if args.syncs:
        return main_syncs(args)
    bu.setup_threads(args.threads)
    steps = args.steps or (40 if args.quick else 150)
    pairs = args.pairs or (3 if args.quick else 7)
    batch_size = 32
    info = bu.machine()
    print(f"loop overhead: {steps} updates of batch {batch_size}, tiny BERT (2 x 128) on AFQMC, "
          f"{pairs} measured pairs + 1 warm-up; {info['cpus']} CPUs, {info['torch_threads']} torch threads, "
          f"load {info['load_average_1min_at_start']}")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        # Just enough pairs for `steps` batches in one epoch (train is 90% of them) and a small val set.
        n_rows = math.ceil(steps * batch_size / 0.9) + 64
        cfg = bu.tiny_afqmc(args.data, max_train_samples=n_rows, max_steps=steps, eval_steps=steps,
                            per_device_batch_size=batch_size, output_dir=str(workdir / "ours"))
        data = prepare_data(cfg)
        batches = batch_order(len(data.train), batch_size, cfg.seed, steps)

        seen_ours: list = []
        seen_plain: list = []
        warm_ours = run_ours(cfg, data, record=seen_ours)
        warm_plain = run_plain(cfg, data, batches, record=seen_plain)
        same_batches = seen_ours[:steps] == seen_plain  # ours also recorded its val batches after these
        print(f"warm-up: ours {warm_ours['samples_per_second']:.1f}, plain {warm_plain['samples_per_second']:.1f} "
              f"samples/s; identical batches: {same_batches}; mean train loss ours {warm_ours['train_loss']:.6f} "
              f"plain {warm_plain['train_loss']:.6f}")
        if not same_batches:
            print("error: the plain loop did not see train()'s batches; the comparison would be unfair", file=sys.stderr)
            return 1

        rows = []
        for i in range(pairs):
            if i % 2 == 0:
                ours = run_ours(cfg, data)
                plain = run_plain(cfg, data, batches)
            else:
                plain = run_plain(cfg, data, batches)
                ours = run_ours(cfg, data)
            rows.append({"pair": i + 1, "first": "ours" if i % 2 == 0 else "plain",
                         "ours_cpu": ours["samples_per_cpu_second"], "plain_cpu": plain["samples_per_cpu_second"],
                         "ratio_cpu": ours["samples_per_cpu_second"] / plain["samples_per_cpu_second"],
                         "ours_wall": ours["samples_per_second"], "plain_wall": plain["samples_per_second"],
                         "ratio_wall": ours["samples_per_second"] / plain["samples_per_second"],
                         "ours_call_wall_s": ours["call_wall_s"], "ours_timed_s": ours["timed_s"]})
            r = rows[-1]
            print(f"pair {i + 1}: samples per CPU second ours {r['ours_cpu']:.1f}, plain {r['plain_cpu']:.1f}, ratio "
                  f"{r['ratio_cpu']:.3f}; samples/s (wall) ours {r['ours_wall']:.1f}, plain {r['plain_wall']:.1f}, "
                  f"ratio {r['ratio_wall']:.3f}", flush=True)

    ratio = bu.median(r["ratio_cpu"] for r in rows)
    result = {
        "benchmark": "loop_overhead", "quick": args.quick, "machine": info, "steps": steps,
        "batch_size": batch_size, "pairs": rows, "identical_batches": same_batches,
        "train_loss_ours": warm_ours["train_loss"], "train_loss_plain": warm_plain["train_loss"],
        "ours_samples_per_cpu_second": bu.median(r["ours_cpu"] for r in rows),
        "plain_samples_per_cpu_second": bu.median(r["plain_cpu"] for r in rows),
        "ours_samples_per_second": bu.median(r["ours_wall"] for r in rows),
        "plain_samples_per_second": bu.median(r["plain_wall"] for r in rows),
        "ratio": ratio, "ratio_min": min(r["ratio_cpu"] for r in rows), "ratio_max": max(r["ratio_cpu"] for r in rows),
        "ratio_wall": bu.median(r["ratio_wall"] for r in rows),
        "ratio_wall_min": min(r["ratio_wall"] for r in rows), "ratio_wall_max": max(r["ratio_wall"] for r in rows),
        # What one train() call costs beyond its timed steps: setup, the final evaluation, checkpoint.
        "ours_fixed_overhead_s": bu.median(r["ours_call_wall_s"] - r["ours_timed_s"] for r in rows),
        "load_average_1min_at_end": os.getloadavg()[0],
        "goal": f">= {GOAL}", "goal_met": ratio >= GOAL,
    }
    print()
    print(bu.table(rows, ["pair", "first", "ours_cpu", "plain_cpu", "ratio_cpu", "ours_wall", "plain_wall", "ratio_wall"],
                   "samples per CPU second (cpu) and per wall second (wall)"))
    print(f"\nmedian samples per CPU second: ours {result['ours_samples_per_cpu_second']:.1f}, plain "
          f"{result['plain_samples_per_cpu_second']:.1f}; per-pair ratios {result['ratio_min']:.3f}..{result['ratio_max']:.3f}")
    print(f"median samples/s (wall): ours {result['ours_samples_per_second']:.1f}, plain "
          f"{result['plain_samples_per_second']:.1f}; ratio {result['ratio_wall']:.3f} "
          f"(per pair {result['ratio_wall_min']:.3f}..{result['ratio_wall_max']:.3f})")
    print(f"train() call beyond its timed steps (setup, final evaluation, checkpoint): "
          f"{result['ours_fixed_overhead_s']:.2f} s")
    print(bu.verdict("ours / plain samples per CPU second (median of pairs)", ratio, f">= {GOAL}", result["goal_met"]))
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
