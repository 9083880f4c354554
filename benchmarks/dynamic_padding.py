"""Dynamic padding: samples/s and val metrics with length-grouped batches (`group_by_length: true`)
and with random batches, both padded per batch (our collate), against padding every pair to
max_length (64), on the shared AFQMC data.

    python benchmarks/dynamic_padding.py [--quick] [--data ../shared/data] [--json OUT]

Goal: >= 1.6x the samples/s of pad-to-64 (the mean pair is about 30 tokens). Headline: ours/grouped
against ours/pad64.

Variants (the tiny preset, batch 32, the same seed and model init):
  ours/grouped   afqmc.train.train() with group_by_length: afqmc.data.LengthGroupedSampler (Hugging
                 Face's recipe: shuffle, cut into mega-batches of 50 batches, sort each by length;
                 then the batches shuffled), padded to each batch's longest pair
  ours/dynamic   train() as shipped by default: random batches padded to their longest pair
  ours/pad64     the same train() with its collate swapped for one that pads to max_length
  plain/dynamic  the plain PyTorch loop of loop_overhead.py, the same random batches, our collate
  plain/pad64    the plain loop, pad-to-64 collate
  plain/grouped  the plain loop, the same length-grouped batches as ours/grouped, our collate

1. Speed: short runs of every variant, in rotating order, several rounds; the ratios are the
   medians over rounds of the per-round ratios, in samples per CPU second of this 1-thread
   process (the headline: the load of other work does not move it; see loop_overhead.py) and in
   samples per wall second.
2. Quality: one longer run each of ours/grouped, ours/dynamic and ours/pad64 from the same seed,
   evaluated on the val split: F1-macro and accuracy at threshold 0.5.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import _benchutil as bu  # noqa: E402  (sets up sys.path for afqmc)

import numpy as np
import torch

from afqmc.data import Encoded, LengthGroupedSampler, collate
from afqmc.train import TaskData, prepare_data
from loop_overhead import batch_order, run_plain
from loop_overhead import run_ours as loop_run_ours

GOAL = 1.6


def pad_to_max(max_length: int):
    def pad(batch, pad_id=0):
        out = collate(batch, pad_id=pad_id)
        width = out["input_ids"].shape[1]
        if width < max_length:
            extra = max_length - width
            out["input_ids"] = torch.nn.functional.pad(out["input_ids"], (0, extra), value=pad_id)
            out["token_type_ids"] = torch.nn.functional.pad(out["token_type_ids"], (0, extra))
            out["attention_mask"] = torch.nn.functional.pad(out["attention_mask"], (0, extra))
        return out
    return pad


def grouped_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """train()'s batches of one epoch with group_by_length (the product's sampler)."""
    sampler = LengthGroupedSampler(lengths, batch_size, seed=seed)
    sampler.set_epoch(epoch)
    return sampler.batches()


def random_order(n: int, batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """train()'s batches over several epochs (its sampler reseeds with seed + epoch)."""
    out = []
    for epoch in range(epochs):
        per_epoch = -(-n // batch_size)
        out += batch_order(n, batch_size, seed + epoch, per_epoch)
    return out


def subset(enc: Encoded, n: int | None) -> Encoded:
    if n is None or n >= len(enc):
        return enc
    return Encoded(enc.input_ids[:n], enc.token_type_ids[:n], enc.labels[:n])


def run_ours(cfg, data, pad64: bool = False, grouped: bool = False) -> dict:
    """train() as shipped (random batches), with group_by_length, or with its collate swapped for
    pad-to-max_length (loop_overhead.run_ours)."""
    return loop_run_ours(cfg.replace(group_by_length=grouped), data,
                         collate_fn=pad_to_max(cfg.max_length) if pad64 else None)


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    p.add_argument("--speed_steps", type=int, help="updates per speed run (default 30 quick, 80 full)")
    p.add_argument("--rounds", type=int, help="speed rounds (default 2 quick, 4 full)")
    p.add_argument("--variants", help="comma-separated speed variants (default: all six)")
    p.add_argument("--epochs", type=float, help="epochs of the quality runs (default 2 full; quick: 1 epoch of "
                                                "--quality_pairs)")
    p.add_argument("--quality_pairs", type=int, help="training pairs of the quality runs (default: all 28.8k; "
                                                     "quick 3000)")
    p.add_argument("--val_pairs", type=int, help="val pairs scored by the quality runs (default: all 3,200)")
    p.add_argument("--no_quality", action="store_true", help="speed only")
    args = p.parse_args(argv)
    bu.setup_threads(args.threads)
    steps = args.speed_steps or (30 if args.quick else 80)
    rounds = args.rounds or (2 if args.quick else 4)
    epochs = int(args.epochs or (1 if args.quick else 2))
    quality_pairs = args.quality_pairs or (3000 if args.quick else None)
    bs = 32
    info = bu.machine()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        base = bu.tiny_afqmc(args.data, per_device_batch_size=bs, output_dir=str(workdir / "run"))
        full = prepare_data(base)
        lengths = [len(x) for x in full.train.input_ids]
        max_len = base.max_length

        # --- padding statistics over one epoch of each batching -------------------------------------
        rand = batch_order(len(lengths), bs, base.seed, -(-len(lengths) // bs))
        grp = grouped_order(lengths, bs, base.seed, 0)

        def width_stats(batches):
            widths = np.array([max(lengths[i] for i in b) for b in batches])
            return float(widths.mean()), float(sum(lengths) / sum(w * len(b) for w, b in zip(widths, batches)))

        stats = {"mean_pair_tokens": float(np.mean(lengths)), "pairs_at_max_length": float(np.mean(np.array(lengths) >= max_len))}
        stats["dynamic_mean_width"], stats["dynamic_real_token_fraction"] = width_stats(rand)
        stats["grouped_mean_width"], stats["grouped_real_token_fraction"] = width_stats(grp)
        stats["pad64_real_token_fraction"] = float(np.mean(lengths) / max_len)
        print(f"AFQMC train split: mean pair {stats['mean_pair_tokens']:.1f} tokens, "
              f"{stats['pairs_at_max_length']:.1%} at max_length {max_len}; mean padded width per batch of {bs}: "
              f"random {stats['dynamic_mean_width']:.1f}, grouped {stats['grouped_mean_width']:.1f}, pad64 {max_len}; "
              f"real tokens / computed: dynamic {stats['dynamic_real_token_fraction']:.2f}, grouped "
              f"{stats['grouped_real_token_fraction']:.2f}, pad64 {stats['pad64_real_token_fraction']:.2f}")

        # --- 1. speed: short runs, rotating order ---------------------------------------------------
        small_val = TaskData(full.tokenizer, full.train, subset(full.val, 256), full.info)  # cheap final eval
        speed_cfg = base.replace(max_steps=steps, eval_steps=steps)
        pad64 = pad_to_max(max_len)
        variants = {
            "ours/grouped": lambda: run_ours(speed_cfg, small_val, grouped=True),
            "ours/dynamic": lambda: run_ours(speed_cfg, small_val),
            "ours/pad64": lambda: run_ours(speed_cfg, small_val, pad64=True),
            "plain/dynamic": lambda: run_plain(speed_cfg, small_val, rand[:steps]),
            "plain/pad64": lambda: run_plain(speed_cfg, small_val, rand[:steps], collate_fn=pad64),
            "plain/grouped": lambda: run_plain(speed_cfg, small_val, grp[:steps]),
        }
        if args.variants:
            variants = {n: variants[n] for n in args.variants.split(",")}
        names = list(variants)
        speed: dict[str, list[float]] = {n: [] for n in names}  # samples per CPU second (the headline)
        speed_wall: dict[str, list[float]] = {n: [] for n in names}
        print(f"\nspeed: {steps} updates per run, {rounds} rounds of {len(names)} variants; samples per CPU second "
              f"(samples per wall second)")
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = variants[name]()
                speed[name].append(out["samples_per_cpu_second"])
                speed_wall[name].append(out["samples_per_second"])
            print(f"round {r + 1}: " + ", ".join(f"{n} {speed[n][-1]:.1f} ({speed_wall[n][-1]:.1f})" for n in names),
                  flush=True)

        def ratio(a: str, b: str, figures=speed) -> float:
            return bu.median(x / y for x, y in zip(figures[a], figures[b]))

        pairs = {  # name: (numerator, denominator); the first is the headline
            "ours_grouped_vs_pad64": ("ours/grouped", "ours/pad64"),
            "ours_dynamic_vs_pad64": ("ours/dynamic", "ours/pad64"),
            "ours_grouped_vs_dynamic": ("ours/grouped", "ours/dynamic"),
            "plain_grouped_vs_pad64": ("plain/grouped", "plain/pad64"),
            "plain_dynamic_vs_pad64": ("plain/dynamic", "plain/pad64"),
            "ours_grouped_vs_plain_grouped": ("ours/grouped", "plain/grouped"),
            "ours_dynamic_vs_plain_dynamic": ("ours/dynamic", "plain/dynamic"),
        }
        pairs = {k: v for k, v in pairs.items() if set(v) <= set(names)}
        ratios = {k: ratio(*v) for k, v in pairs.items()}
        ratios_wall = {k: ratio(*v, figures=speed_wall) for k, v in pairs.items()}

        # --- 2. quality: longer runs, val metrics -------------------------------------------------------
        quality = []
        if not args.no_quality:
            qdata = TaskData(full.tokenizer, subset(full.train, quality_pairs), subset(full.val, args.val_pairs),
                             full.info)
            n = len(qdata.train)
            per_epoch = -(-n // bs)
            qcfg = base.replace(num_epochs=epochs, max_steps=0, eval_steps=per_epoch)
            print(f"\nquality: {epochs} epoch(s) of {n} pairs ({per_epoch * epochs} updates), val {len(qdata.val)} pairs")
            for name in ("ours/grouped", "ours/dynamic", "ours/pad64"):
                out = run_ours(qcfg, qdata, pad64=name.endswith("pad64"), grouped=name.endswith("grouped"))
                quality.append({"variant": name, **out})
                print(f"{name}: {out['samples_per_cpu_second']:.1f} samples per CPU second "
                      f"({out['samples_per_second']:.1f} per wall second), val F1-macro {out['val_f1_macro']:.4f}, "
                      f"accuracy {out['val_accuracy']:.4f}", flush=True)

    rows = [{"variant": n, "cpu_median": bu.median(v), "cpu_min": min(v), "cpu_max": max(v),
             "wall_median": bu.median(speed_wall[n])} for n, v in speed.items()]
    headline = ratios.get("ours_grouped_vs_pad64")
    result = {"benchmark": "dynamic_padding", "quick": args.quick, "machine": info, "batch_size": bs,
              "speed_steps": steps, "rounds": rounds, "padding": stats, "speed": rows, "speed_runs_cpu": speed,
              "speed_runs_wall": speed_wall, "ratios": ratios, "ratios_wall": ratios_wall, "quality": quality,
              "goal": f">= {GOAL}x samples/s vs pad-to-64 (ours/grouped vs ours/pad64, per CPU second)",
              "goal_met": headline is not None and headline >= GOAL,
              "goal_met_dynamic": ratios.get("ours_dynamic_vs_pad64", 0) >= GOAL,
              "load_average_1min_at_end": os.getloadavg()[0]}
    print()
    print(bu.table(rows, ["variant", "cpu_median", "cpu_min", "cpu_max", "wall_median"],
                   "speed: samples per CPU second (median, min, max over rounds) and per wall second (median)"))
    if quality:
        print()
        print(bu.table(quality, ["variant", "steps", "samples_per_cpu_second", "samples_per_second", "val_f1_macro",
                                 "val_accuracy", "best_val_f1_macro"], "quality (val split)"))
    print()
    print(f"{'ratio (median over rounds)':<32} {'CPU':>6} {'wall':>6}")
    for k, v in ratios.items():
        print(f"{k:<32} {v:6.3f} {ratios_wall[k]:6.3f}")
    if headline is not None:
        print(bu.verdict("ours/grouped vs ours/pad64 (group_by_length: true)", headline, f">= {GOAL}",
                         headline >= GOAL))
    if "ours_dynamic_vs_pad64" in ratios:
        print(bu.verdict("ours/dynamic vs ours/pad64 (random batches)", ratios["ours_dynamic_vs_pad64"], f">= {GOAL}",
                         ratios["ours_dynamic_vs_pad64"] >= GOAL))
        print("(random batches of 32 are padded to ~56 of 64 tokens on average: the longest of 32 pairs is long; "
              "grouping pairs of similar length removes most padding)")
    bu.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
