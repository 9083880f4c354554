"""GPU check: does a MacBERT-base-shaped model train in an 8 GB budget, how fast, and do two
search trials fit on one such card? Synthetic data; no download, no shared data needed.

    python benchmarks/gpu_check.py [--steps 40] [--cap_gb 8] [--json OUT]
    python benchmarks/gpu_check.py --cpu_smoke      # the same code paths on CPU with a small model (tests)

Without a CUDA GPU (and without --cpu_smoke) it says so and exits 0.

Model: BERT with MacBERT-base's shape (hidden 768, 12 layers, 12 heads, intermediate 3072,
vocabulary 21,128; ~102M parameters), random weights (speed and memory do not depend on them).
Batch 32, pairs of realistic AFQMC lengths (log-normal, median 27 tokens, capped at 64), padded
per batch; the first timed batch is padded to 64 so that the peak covers the longest batch.
Training step: AdamW, autocast (fp16 with a GradScaler, or bf16), unscale + clip to 1.0, step.

1. One trial, the card capped at --cap_gb with torch.cuda.set_per_process_memory_fraction:
   peak memory (max_memory_allocated / max_memory_reserved) and samples/s, per precision; also
   fp16 with a host sync per step (our loop checks the loss for NaN every update: its cost here).
2. Two trials at once under the same cap: two processes, each capped at cap / 2, started
   together. Two processes, not two models in one process, because that is what Ray does with
   gpus_per_trial 0.5: each trial is its own worker process with its own CUDA context and
   caching allocator, and the context (a few hundred MB) is outside the allocator's cap, so the
   device-wide use (torch.cuda.mem_get_info) is reported against the cap as well.
3. Ours against plain on the GPU: afqmc.train.train() (tiny preset set to MacBERT-base's shape,
   fp16) against the plain fp16 loop on the same batches, samples/s ratio.
4. Gradient checkpointing (`gradient_checkpointing: true`): peak memory and samples/s with and
   without it, one fp16 trial under the cap, for MacBERT-base and for RoBERTa-wwm-ext-large's shape
   (hidden 1024, 24 layers, ~325M parameters: what checkpointing is for on an 8 GB card).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _benchutil as bu  # noqa: E402  (sets up sys.path for afqmc)

import numpy as np
import torch

GiB = 1024 ** 3
MACBERT_BASE = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
SMOKE_SHAPE = dict(vocab_size=21128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=256, max_position_embeddings=512, type_vocab_size=2)
# hfl/chinese-roberta-wwm-ext-large: BERT-large's shape with the same vocabulary (~325M parameters).
ROBERTA_LARGE = dict(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)
BATCH, MAX_LEN = 32, 64


def build_model(shape: dict[str, int], device: str, checkpointing: bool = False) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**shape, num_labels=2)).to(device)
    if checkpointing:  # as afqmc/train.py turns it on
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def synthetic_batches(n: int, vocab: int, seed: int = 0, first_full: bool = True) -> list[dict[str, torch.Tensor]]:
    """Batches of [CLS] a [SEP] b [SEP] pairs with AFQMC-like lengths, padded to the longest pair."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lengths = np.clip(np.round(rng.lognormal(math.log(27), 0.345, BATCH)), 8, MAX_LEN).astype(int)
        if first_full and i == 0:
            lengths[0] = MAX_LEN
        width = int(lengths.max())
        ids = torch.zeros(BATCH, width, dtype=torch.long)
        types = torch.zeros(BATCH, width, dtype=torch.long)
        mask = torch.zeros(BATCH, width, dtype=torch.long)
        for row, n_tok in enumerate(lengths):
            ids[row, :n_tok] = torch.from_numpy(rng.integers(106, vocab, n_tok))
            ids[row, 0], ids[row, n_tok - 1] = 101, 102
            types[row, n_tok // 2:n_tok] = 1
            mask[row, :n_tok] = 1
        out.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                    "labels": torch.from_numpy(rng.integers(0, 2, BATCH))})
    return out


def train_steps(model, batches, precision: str, device: str, warmup: int = 3, sync_each_step: bool = False,
                loss_weights: torch.Tensor | None = None) -> dict[str, Any]:
    """AdamW steps under autocast; returns samples/s over the batches after `warmup`."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None, "no": None}[precision]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    loss_fn = torch.nn.CrossEntropyLoss(weight=None if loss_weights is None else loss_weights.to(device))
    model.train()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    samples, started = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        labels = batch["labels"]
        with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                           attention_mask=batch["attention_mask"]).logits
        loss = loss_fn(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if sync_each_step and not torch.isfinite(loss):  # what our loop does every update
            raise RuntimeError("loss is not finite")
        if started is not None:
            samples += len(labels)
    _sync(device)
    elapsed = time.perf_counter() - started
    return {"samples_per_second": samples / elapsed, "timed_steps": len(batches) - warmup,
            "final_loss": loss.item()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory(device: str) -> dict[str, float | None]:
    if device != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None, "device_used_gb": None}
    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated() / GiB,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / GiB,
            "device_used_gb": (total - free) / GiB}  # every process on the card, CUDA contexts included


def one_trial(shape, precision: str, device: str, steps: int, sync_each_step: bool = False,
              checkpointing: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {"precision": precision + ("+sync" if sync_each_step else ""), "oom": False,
                           "gradient_checkpointing": checkpointing}
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        model = build_model(shape, device, checkpointing)
        row.update(train_steps(model, synthetic_batches(steps + 3, shape["vocab_size"]), precision, device,
                               sync_each_step=sync_each_step))
    except torch.OutOfMemoryError as exc:
        row["oom"] = True
        row["error"] = str(exc).splitlines()[0]
    row.update(memory(device))
    model = None  # noqa: F841
    return row


def set_cap(cap_gb: float, device: str) -> float | None:
    if device != "cuda":
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, cap_gb * GiB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    return fraction


def _pair_worker(index: int, shape, precision: str, device: str, steps: int, cap_gb: float, barrier, queue) -> None:
    """One of two concurrent trials: its own process, CUDA context and capped allocator."""
    try:
        torch.set_num_threads(1)
        fraction = set_cap(cap_gb, device)
        if device == "cuda":
            torch.cuda.init()
        model = build_model(shape, device)
        batches = synthetic_batches(steps + 3, shape["vocab_size"], seed=index)
        barrier.wait(timeout=300)  # both trials train at the same time
        row = {"trial": index, "fraction": fraction, "oom": False}
        try:
            row.update(train_steps(model, batches, precision, device))
        except torch.OutOfMemoryError as exc:
            row["oom"] = True
            row["error"] = str(exc).splitlines()[0]
        row.update(memory(device))  # before the other trial can exit: the device-wide figure holds both
        barrier.wait(timeout=300)
        queue.put(row)
    except Exception as exc:  # report, do not hang the parent
        queue.put({"trial": index, "oom": isinstance(exc, torch.OutOfMemoryError), "error": repr(exc)})
        try:
            barrier.abort()
        except Exception:
            pass


def two_trials(shape, precision: str, device: str, steps: int, cap_gb: float) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_pair_worker, args=(i, shape, precision, device, steps, cap_gb / 2, barrier, queue))
             for i in range(2)]
    for proc in procs:
        proc.start()
    rows = []
    for _ in procs:
        try:
            rows.append(queue.get(timeout=600))
        except Exception as exc:
            rows.append({"error": f"no result from a trial process: {exc!r}", "oom": None})
    for proc in procs:
        proc.join(timeout=60)
    return sorted(rows, key=lambda r: r.get("trial", 9))


# --- 3. our loop against the plain one, on the GPU ---------------------------------------------------


def write_synthetic_task(folder: Path, shape: dict[str, int], n_pairs: int) -> dict[str, str]:
    """A vocab of `vocab_size` tokens (CJK characters) and JSON-lines pairs of AFQMC-like lengths."""
    n_chars = shape["vocab_size"] - 5
    chars = [chr(0x4E00 + i) for i in range(n_chars)]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n_pairs):
        total = int(np.clip(round(rng.lognormal(math.log(27), 0.345)), 8, MAX_LEN)) - 3
        a = max(1, int(total * rng.uniform(0.35, 0.65)))
        text = lambda k: "".join(chars[j] for j in rng.integers(0, 3000, k))  # noqa: E731
        lines.append(json.dumps({"text1": text(a), "text2": text(max(1, total - a)), "label": int(rng.random() < 0.31)},
                                ensure_ascii=False))
    train = folder / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"train_file": str(train), "vocab_file": str(vocab)}


def ours_vs_plain(shape, device: str, steps: int, precision: str, folder: Path) -> dict[str, Any]:
    import functools

    from afqmc.config import from_dict
    from afqmc.data import PairDataset, collate
    from afqmc.modeling import load_model
    from afqmc.train import _class_weights, prepare_data, train
    from loop_overhead import batch_order

    files = write_synthetic_task(folder, shape, n_pairs=(steps + 8) * BATCH + 512)
    cfg = from_dict(dict(model_name_or_path="tiny", tiny_hidden_size=shape["hidden_size"],
                         tiny_num_layers=shape["num_hidden_layers"], tiny_num_heads=shape["num_attention_heads"],
                         **files, val_ratio=0.05, max_length=MAX_LEN, per_device_batch_size=BATCH,
                         eval_batch_size=128, learning_rate=2e-5, warmup_ratio=0.0, class_weights="balanced",
                         max_steps=steps, eval_steps=steps, mixed_precision=precision, save_best_model=False,
                         output_dir=str(folder / "run")), source="gpu_check")
    data = prepare_data(cfg, log=lambda s: None)
    rows = []
    for i in range(2):  # ours, plain, ours, plain: the first pair warms up
        reports: list[dict] = []
        train(cfg, report=lambda m, c: reports.append(m), data=data, progress=False)
        ours = reports[-1]["train/samples_per_second"]
        order = batch_order(len(data.train), BATCH, cfg.seed, steps)
        pad = functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0)
        batches = [pad([PairDataset(data.train)[j] for j in b]) for b in order]
        model = load_model(cfg, data.tokenizer).to(device)
        # warmup=0: timed like train(), from the first batch; train() also pays for moving batches to the device.
        plain = train_steps(model, batches, precision, device, warmup=0,
                            loss_weights=_class_weights(cfg, data.train.labels))["samples_per_second"]
        del model
        rows.append({"ours": ours, "plain": plain, "ratio": ours / plain})
    return {"runs": rows, "ratio": rows[-1]["ratio"], "precision": precision, "steps": steps}


# --- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement (after 3 warm-up steps)")
    p.add_argument("--cap_gb", type=float, default=8.0, help="emulated card size in GiB")
    p.add_argument("--precisions", default="fp16,bf16", help="comma-separated: fp16, bf16, fp32")
    p.add_argument("--pair_precision", default="fp16", help="precision of the two concurrent trials")
    p.add_argument("--skip_ours", action="store_true", help="skip part 3 (ours against plain)")
    p.add_argument("--cpu_smoke", action="store_true",
                   help="run every part on CPU with a small model: checks the script, measures nothing useful")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    if args.cpu_smoke:
        device, shape, steps = "cpu", SMOKE_SHAPE, min(args.steps, 4)
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device, shape, steps = "cuda", MACBERT_BASE, args.steps
    else:
        print("gpu_check: no CUDA GPU on this machine; nothing measured. Run it where a GPU is available "
              "(or pass --cpu_smoke to check the script on CPU).")
        bu.write_json(args.json, {"benchmark": "gpu_check", "gpu": None, "measured": False})
        return 0

    info = bu.machine()
    result: dict[str, Any] = {"benchmark": "gpu_check", "machine": info, "device": device, "shape": shape,
                              "batch_size": BATCH, "max_length": MAX_LEN, "cap_gb": args.cap_gb, "steps": steps}
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        result["device_total_gb"] = total / GiB
        print(f"gpu_check on {info['gpu']} ({total / GiB:.1f} GiB), capped at {args.cap_gb:g} GiB per process "
              f"(fraction {args.cap_gb * GiB / total:.4f})")
        if args.cap_gb * GiB > total:
            print(f"note: the card holds less than {args.cap_gb:g} GiB; the cap is the whole card")
    result["fraction"] = set_cap(args.cap_gb, device)
    params = sum(p.numel() for p in build_model(shape, "cpu").parameters())
    result["parameters"] = params
    print(f"model: BERT {shape['num_hidden_layers']} x {shape['hidden_size']}, vocab {shape['vocab_size']}, "
          f"{params / 1e6:.1f}M parameters; batch {BATCH}, length <= {MAX_LEN}; {steps} timed steps")

    # 1. one trial under the cap
    single = []
    for precision in [x.strip() for x in args.precisions.split(",") if x.strip()]:
        if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            single.append({"precision": precision, "error": "bf16 not supported on this GPU"})
            continue
        single.append(one_trial(shape, precision, device, steps))
        print(f"  {single[-1]}", flush=True)
    single.append(one_trial(shape, args.pair_precision, device, steps, sync_each_step=True))
    print(f"  {single[-1]}", flush=True)
    result["single"] = single
    print(bu.table(single, ["precision", "samples_per_second", "peak_allocated_gb", "peak_reserved_gb",
                            "device_used_gb", "oom"], f"\none trial under {args.cap_gb:g} GiB"))
    plain = next((r for r in single if r["precision"] == args.pair_precision), None)
    synced = single[-1]
    if plain and plain.get("samples_per_second") and synced.get("samples_per_second"):
        result["sync_each_step_ratio"] = synced["samples_per_second"] / plain["samples_per_second"]
        print(f"a host sync per step (NaN check): {result['sync_each_step_ratio']:.3f} x the samples/s without")

    # 2. two trials at once, each capped at half
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        result["parent_device_used_gb"] = (total - free) / GiB  # this process's context + cache, before the trials
    pair = two_trials(shape, args.pair_precision, device, steps, args.cap_gb)
    result["two_trials"] = pair
    both_fit = all(r.get("oom") is False and "error" not in r for r in pair)
    device_used = None
    if device == "cuda":  # what the two trial processes use together, this parent process left out
        device_used = max((r.get("device_used_gb") or 0.0) for r in pair) - result["parent_device_used_gb"]
    result["two_trials_fit"] = both_fit
    result["two_trials_device_used_gb"] = device_used
    agg = sum(r.get("samples_per_second", 0.0) for r in pair)
    result["two_trials_total_samples_per_second"] = agg
    if plain and plain.get("samples_per_second"):
        result["two_trials_vs_one"] = agg / plain["samples_per_second"]
    print(bu.table(pair, ["trial", "samples_per_second", "peak_allocated_gb", "peak_reserved_gb", "device_used_gb",
                          "oom"], f"\ntwo {args.pair_precision} trials at once, {args.cap_gb / 2:g} GiB each"))
    print(f"both fit: {both_fit}; together {agg:.1f} samples/s"
          + (f" ({result['two_trials_vs_one']:.2f} x one trial alone)" if "two_trials_vs_one" in result else "")
          + (f"; device use of the two trial processes {device_used:.2f} GiB (their CUDA contexts included) against "
             f"{args.cap_gb:g} GiB: {'fits' if device_used <= args.cap_gb else 'DOES NOT FIT'}" if device_used else ""))

    # 3. our loop against the plain loop
    if not args.skip_ours:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                # On CPU train() runs fp32 whatever the config says (fp16 falls back), so both sides do.
                result["ours_vs_plain"] = ours_vs_plain(shape, device, steps, args.pair_precision
                                                        if device == "cuda" else "no", Path(tmp))
                r = result["ours_vs_plain"]
                print(f"\nours vs plain ({r['precision']}, {r['steps']} steps): " + ", ".join(
                    f"ours {x['ours']:.1f} / plain {x['plain']:.1f} = {x['ratio']:.3f}" for x in r["runs"])
                      + " (the first pair warms up)")
            except Exception as exc:  # the GPU figures above still count
                result["ours_vs_plain"] = {"error": repr(exc)}
                print(f"\nours vs plain failed: {exc!r}")
    # 4. gradient checkpointing: memory against speed
    result["checkpointing"] = checkpointing_rows(shape, args.pair_precision, device, steps)
    print(bu.table(result["checkpointing"], ["model", "gradient_checkpointing", "samples_per_second",
                                             "peak_allocated_gb", "peak_reserved_gb", "oom"],
                   f"\ngradient checkpointing, one {args.pair_precision} trial under {args.cap_gb:g} GiB"))
    bu.write_json(args.json, result)
    return 0


def checkpointing_rows(shape, precision: str, device: str, steps: int) -> list[dict[str, Any]]:
    """One trial with and without gradient checkpointing, for the base shape and (on a GPU) the large one."""
    models = {"macbert-base": shape} if device != "cuda" else {"macbert-base": shape, "roberta-wwm-ext-large": ROBERTA_LARGE}
    rows = []
    for name, model_shape in models.items():
        for checkpointing in (False, True):
            rows.append({"model": name, **one_trial(model_shape, precision, device, steps, checkpointing=checkpointing)})
            print(f"  {rows[-1]}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
