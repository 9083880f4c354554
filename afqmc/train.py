"""Fine-tune a sentence-pair classifier: one run, or one trial of a search (same function).

    accelerate launch afqmc/train.py --config afqmc/configs/demo.yaml [--field_name value ...]
    accelerate launch afqmc/train.py --config FILE --resume_from results/run/checkpoint

`train(cfg, report)` calls `report(metrics, checkpoint_dir)` at every evaluation; the CLI passes a
logging reporter, the search passes Ray Tune's. Nothing here imports Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is afqmc/ itself; make the package importable instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, find_executable_batch_size, set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from afqmc.card import write_model_card
from afqmc.checkpoint import (METRICS_NAME, TRAINER_STATE_NAME, VAL_PROBS_NAME, CheckpointError, atomic_directory,
                              resolve_directory, save_model_dir, write_json, write_text_atomic)
from afqmc.config import PRIMARY, ConfigError, TrainConfig, fields_help, load_config, parse_overrides
from afqmc.data import (DataError, Encoded, LengthGroupedSampler, PairData, PairDataset, collate, count_overlap,
                        encode, load_splits)
from afqmc.metrics import best_key, evaluation_metrics
from afqmc.modeling import load_model, load_tokenizer
from afqmc.techniques import FGM, PairOrderDataset, make_ema, make_objective, parameter_groups, swapped

Reporter = Callable[[dict[str, Any], "str | None"], None]


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the message says why."""


@dataclass
class TaskData:
    """Everything a run needs that does not depend on the tunable hyperparameters: tokenized once."""

    tokenizer: Any
    train: Encoded
    val: Encoded
    info: dict[str, Any]
    # The labelled held-out pairs, scored once by the best model at the end; nothing that trains or
    # chooses reads them (a search keeps them in its driver: trials get TaskData without them).
    test: PairData | None = None
    # The val pairs as text (a search's driver scores kept models on them: the ensemble; trials get
    # TaskData without them, they train on the tokenized `val`).
    val_pairs: PairData | None = None


@dataclass
class TrainerState:
    """Counters that a checkpoint must restore besides the accelerator's state."""

    step: int = 0  # optimizer updates done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    evals: int = 0
    best_metric: float = -math.inf
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement
    samples_seen: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


# --- setup ---------------------------------------------------------------------------------------


def prepare_data(cfg: TrainConfig, log: Callable[[str], None] = print) -> TaskData:
    """Load, split and tokenize train and val once; a search does this in the driver only."""
    splits = load_splits(cfg)
    train_pairs, val_pairs, test = splits.train, splits.val, splits.test
    tokenizer = load_tokenizer(cfg, train_pairs.text1 + train_pairs.text2)
    train_enc = encode(tokenizer, train_pairs, cfg.max_length)
    val_enc = encode(tokenizer, val_pairs, cfg.max_length)
    unk = tokenizer.unk_token_id
    n_unk = sum(ids.count(unk) for ids in train_enc.input_ids)
    info = {
        "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
        "train_label_counts": train_pairs.label_counts(), "val_label_counts": val_pairs.label_counts(),
        "pairs_in_train_and_val": count_overlap(train_pairs, val_pairs),
        "test_pairs": len(test) if test else 0, "test_label_counts": test.label_counts() if test else None,
        "test_source": test.source if test else None,
        "pairs_in_train_and_test": count_overlap(train_pairs, test) if test else 0,
        "skipped_empty": splits.skipped_empty, "vocab_size": len(tokenizer),
        "unk_rate": n_unk / max(1, train_enc.num_tokens()),
        # What a warm start compares to call two searches' tasks the same (tune/warmstart.py).
        "train_fingerprint": train_pairs.fingerprint(), "val_fingerprint": val_pairs.fingerprint(),
    }
    held_out = (f", {info['test_pairs']} held-out test pairs {info['test_label_counts']} "
                f"({info['pairs_in_train_and_test']} also in train)") if test else ""
    log(f"data: {info['train_pairs']} train pairs {info['train_label_counts']}, {info['val_pairs']} val pairs "
        f"{info['val_label_counts']}, {info['pairs_in_train_and_val']} val pairs also in train{held_out}, "
        f"{info['skipped_empty']} empty skipped, [UNK] rate {info['unk_rate']:.2%}")
    return TaskData(tokenizer, train_enc, val_enc, info, test, val_pairs)


# What `accelerate launch` (its flags or `accelerate config`'s file) tells the process it starts.
LAUNCHER_ENV = {"mixed_precision": "ACCELERATE_MIXED_PRECISION",
                "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"}


def resolve_launcher_settings(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """mixed_precision and gradient_accumulation_steps: the launcher decides where the config leaves
    them unset (None); a config value that disagrees with the launcher wins, with a warning naming both.
    Returns the resolved config and the warnings."""
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    for name, env in LAUNCHER_ENV.items():
        launcher = os.environ.get(env)
        if launcher is not None and name == "gradient_accumulation_steps":
            launcher = int(launcher)
        value = getattr(cfg, name)
        if value is None:
            changes[name] = launcher if launcher is not None else ("no" if name == "mixed_precision" else 1)
        elif launcher is not None and launcher != value:
            warnings.append(f"warning: {name} {value!r} in the config overrides the launcher's {launcher!r} "
                            f"({env}, from `accelerate launch` or `accelerate config`)")
    return (cfg.replace(**changes) if changes else cfg), warnings


def _setup_accelerator(cfg: TrainConfig) -> tuple[TrainConfig, Accelerator]:
    """The Accelerator, and the config as it runs: the launcher's settings where the config left them
    unset (with a warning where they disagree), the mixed precision actually used."""
    cfg, warnings = resolve_launcher_settings(cfg)
    mixed_precision = cfg.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        mixed_precision = "no"  # fp16 autocast needs a GPU; the same config still runs on CPU
    accelerator = Accelerator(
        # Without a GPU, CPU mode: with several processes (torchrun's WORLD_SIZE) that is DDP over gloo.
        cpu=not torch.cuda.is_available(),
        log_with=trackers_of(cfg) or None, project_dir=cfg.output_dir,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # The sampler reshuffles with seed + epoch, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    for warning in warnings:
        accelerator.print(warning)
    if accelerator.mixed_precision != cfg.mixed_precision:
        accelerator.print(f"note: mixed_precision {cfg.mixed_precision} needs a GPU; this run uses "
                          f"{accelerator.mixed_precision}")
        cfg = cfg.replace(mixed_precision=accelerator.mixed_precision)  # train_config.yaml says what was used
    return cfg, accelerator


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
PROJECT = "afqmc"  # the trackers' project: TensorBoard's folder in output_dir, MLflow's experiment


def trackers_of(cfg: TrainConfig) -> list[str]:
    reports = [cfg.report_to] if isinstance(cfg.report_to, str) else list(cfg.report_to)
    return [r for r in reports if r != "none"]


def _start_trackers(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """Accelerate's trackers (report_to): the resolved config first; every evaluation then logs its
    metrics at its step (_evaluate_and_report). MLflow writes to MLFLOW_TRACKING_URI, else to a SQLite
    store in output_dir (no server needed)."""
    import importlib.util

    trackers = trackers_of(cfg)
    for name in trackers:
        if not any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name]):
            raise ConfigError(f"config: field 'report_to': {name} needs the {TRACKER_PACKAGES[name][0]} package "
                              f"(pip install {TRACKER_PACKAGES[name][0]}, or pip install -e '.[tracking]')", "report_to")
    if not trackers:
        return
    if "mlflow" in trackers and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}")
    config = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in cfg.to_dict().items()}
    accelerator.init_trackers(PROJECT, config=config, init_kwargs={"mlflow": {"run_name": Path(cfg.output_dir).name}})


def _setup_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and LayerNorm weights (the BERT recipe); layer-wise rates if asked.
    groups = parameter_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.layerwise_lr_decay)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _class_weights(cfg: TrainConfig, labels: list[int], device="cpu") -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":  # n / (2 n_c), sklearn's "balanced"
        counts = np.bincount(labels, minlength=2)
        return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32, device=device)
    return torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """The run's schedule, computed once (from the prepared train loader: Accelerate gives each
    process its share of the batches) and reported with every evaluation, so that whoever reads the
    reports (a search's tables, reseeding) never recomputes it."""

    updates_per_epoch: int
    total_steps: int  # optimizer updates
    eval_every: int  # updates between evaluations

    @classmethod
    def of(cls, cfg: TrainConfig, batches_per_epoch: int) -> "Schedule":
        updates_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
        total = cfg.max_steps or math.ceil(updates_per_epoch * cfg.num_epochs)
        return cls(updates_per_epoch, total, cfg.eval_steps or updates_per_epoch)

    @property
    def planned_evals(self) -> int:  # one every eval_every updates, and one at the end
        return math.ceil(self.total_steps / self.eval_every)

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every == 0 or step >= self.total_steps

    def as_metrics(self) -> dict[str, int]:
        return {"planned_updates": self.total_steps, "planned_evals": self.planned_evals,
                "eval_every": self.eval_every}


@dataclass
class Run:
    """What every evaluation of one run needs, built once by `train` (the loop's fixed context)."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    data: TaskData
    val_loader: Any
    val_swapped: Any  # the val pairs in the other order (average_pair_orders), else None
    weights: torch.Tensor | None  # class weights of the loss (val/loss uses them too)
    scheduler: Any  # the learning-rate schedule
    schedule: Schedule
    report: Reporter | None
    bar: Any  # tqdm: the table rows are written through it
    objective: Any  # objective(model, batch, labels): the micro-batch's training loss (afqmc.techniques)
    adversarial: Any  # the loss of FGM's perturbed pass (no R-Drop doubling), with fgm
    fgm: FGM | None
    ema: Any  # torch.optim.swa_utils.AveragedModel of the weights (ema_decay), else None
    forward_dtype: str | None = None  # what the first forward pass computed in (bfloat16 under bf16 autocast)

    @property
    def kept_model(self) -> torch.nn.Module:
        """What is evaluated and saved: the EMA of the weights when there is one, else the model."""
        return self.model if self.ema is None else self.ema.module


def train(cfg: TrainConfig, report: Reporter | None = None, data: TaskData | None = None,
          resume_from: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one model; returns a summary with the best evaluation's metrics.

    `report(metrics, checkpoint_dir)` is called on every process after every evaluation, once the
    checkpoint for that evaluation is on disk: the same metrics everywhere, `checkpoint_dir` on the
    main process and None on the others (a reporter that writes, writes on the main process only).
    Build, prepare, loop, finish, in this order.
    """
    cfg, accelerator = _setup_accelerator(cfg)
    log = accelerator.print
    hf_logging.disable_progress_bar()  # no per-save "Writing model shards" bars between our table rows
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(output_dir / "train_config.yaml", header="Resolved TrainConfig of this run.")
    _start_trackers(cfg, accelerator)
    set_seed(cfg.seed)
    data = data or prepare_data(cfg, log)

    model = load_model(cfg, data.tokenizer)
    loaders = _setup_loaders(cfg, data)
    optimizer = _setup_optimizer(cfg, model)
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_loader, val_loader, val_swapped = loaders + [None] * (3 - len(loaders))
    schedule = Schedule.of(cfg, len(train_loader))
    # The learning-rate schedule counts optimizer updates of this process; it is stepped by hand after
    # each real update (not prepared, so Accelerate does not step it once per process).
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * schedule.total_steps),
                                                schedule.total_steps)
    accelerator.register_for_checkpointing(scheduler)  # before load_state, which restores it
    weights = _class_weights(cfg, data.train.labels, accelerator.device)
    techniques = _setup_techniques(cfg, accelerator, model, weights)  # before load_state too: the EMA is restored

    state = TrainerState()
    if resume_from:
        state = _load_checkpoint(accelerator, resume_from)
        log(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}, best "
            f"{cfg.metric_for_best_model} {state.best_metric:.4f})")
    log(f"training: {schedule.total_steps} optimizer updates ({schedule.updates_per_epoch} per epoch), batch "
        f"{cfg.per_device_batch_size} x {cfg.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes, evaluating every {schedule.eval_every} updates, "
        f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}, threshold {cfg.threshold}, "
        f"best model by {cfg.metric_for_best_model}")
    bar = tqdm(total=schedule.total_steps, initial=state.step,
               disable=not (progress and accelerator.is_main_process), desc="train", dynamic_ncols=True)
    run = Run(cfg, accelerator, model, data, val_loader, val_swapped, weights, scheduler, schedule, report, bar,
              **techniques)
    _loop(run, state, train_loader, optimizer)
    bar.close()

    accelerator.wait_for_everyone()
    summary = _summarize(cfg, state, schedule.total_steps, data.info)
    summary["precision"] = {"mixed_precision": accelerator.mixed_precision, "forward_dtype": run.forward_dtype}
    if accelerator.is_main_process:
        if cfg.save_best_model and state.history:
            summary.update(_predict_and_score_test(cfg, data, output_dir / "best_model", accelerator.device, log))
        write_json(output_dir / "summary.json", summary)
    accelerator.end_training()
    return summary


def _setup_techniques(cfg: TrainConfig, accelerator: Accelerator, model, weights) -> dict[str, Any]:
    """The step's loss (focal, label smoothing, R-Drop), FGM's adversarial loss and the FGM itself, and
    the EMA of the weights, registered for checkpointing (afqmc/techniques.py; each None or plain when off)."""
    ema = make_ema(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    embedding = accelerator.unwrap_model(model).get_input_embeddings().weight
    fgm = FGM(embedding, cfg.fgm_epsilon) if cfg.fgm_epsilon else None
    return {"objective": make_objective(cfg.focal_gamma, cfg.rdrop_alpha, weights, cfg.label_smoothing),
            "adversarial": make_objective(cfg.focal_gamma, 0.0, weights, cfg.label_smoothing), "fgm": fgm, "ema": ema}


def _setup_loaders(cfg: TrainConfig, data: TaskData) -> list[Any]:
    """The train loader, the val loader and, with average_pair_orders, the val pairs swapped."""
    pad = functools.partial(collate, pad_id=data.tokenizer.pad_token_id or 0)
    # An own generator: DataLoader draws each iterator's base seed from it, not from the global RNG
    # that dropout uses, so a resumed run (new iterator after restoring the RNG) matches an unbroken one.
    # group_by_length: batches of similar length, in an order seeded by cfg.seed + epoch (set_epoch in _loop).
    grouped = LengthGroupedSampler([len(x) for x in data.train.input_ids], cfg.per_device_batch_size,
                                   seed=cfg.seed) if cfg.group_by_length else None
    sep = data.tokenizer.sep_token_id
    train_set = PairOrderDataset(data.train, sep, cfg.seed) if cfg.augment_pair_order else PairDataset(data.train)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.per_device_batch_size,
                                               shuffle=grouped is None, sampler=grouped, collate_fn=pad,
                                               generator=torch.Generator().manual_seed(cfg.seed))
    loaders = [train_loader, torch.utils.data.DataLoader(PairDataset(data.val), batch_size=cfg.eval_batch_size,
                                                         collate_fn=pad)]
    if cfg.average_pair_orders:
        loaders.append(torch.utils.data.DataLoader(PairDataset(swapped(data.val, sep)), batch_size=cfg.eval_batch_size,
                                                   collate_fn=pad))
    return loaders


def _loop(run: Run, state: TrainerState, train_loader, optimizer) -> None:
    """Epochs of accumulated, clipped updates, an evaluation every `eval_every` updates, until the
    schedule ends or early stopping says stop. `state` carries what a resume needs."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    _probe_forward_dtype(run)
    window_loss, window_batches = torch.zeros((), device=accelerator.device), 0
    # The first update whose loss was not finite (0: none yet), kept on the device: no host sync per
    # update; `_stop_if_not_finite` reads it every FINITE_CHECK_EVERY updates and before every evaluation.
    bad_step = torch.zeros((), dtype=torch.long, device=accelerator.device)
    stop = state.step >= run.schedule.total_steps
    model.train()
    while not stop:
        train_loader.set_epoch(state.epoch)  # the batch order
        if isinstance(train_loader.dataset, PairOrderDataset):  # each pair's order (augment_pair_order):
            train_loader.dataset.set_epoch(state.epoch)  # Accelerate's stops at a sharded batch sampler (DDP)
        batches = accelerator.skip_first_batches(train_loader, state.batches_in_epoch) \
            if state.batches_in_epoch else train_loader
        started = time.perf_counter()
        for batch in batches:
            labels = batch.pop("labels")
            with accelerator.accumulate(model):
                loss = _backward(run, batch, labels)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            state.samples_seen += len(labels) * accelerator.num_processes
            window_loss += loss.detach()
            window_batches += 1
            if not accelerator.sync_gradients:
                continue
            # One optimizer update done (or skipped by the fp16 scaler after an overflow).
            if not accelerator.optimizer_step_was_skipped:
                run.scheduler.step()
                if run.ema is not None:
                    run.ema.update_parameters(accelerator.unwrap_model(model))
            state.step += 1
            run.bar.update(1)
            # A NaN or inf stays in the window's sum until the evaluation, which checks first: nothing
            # computed after a non-finite loss is evaluated, saved or reported.
            bad_step = torch.where((bad_step == 0) & ~torch.isfinite(window_loss), state.step, bad_step)
            if state.step % FINITE_CHECK_EVERY == 0 or run.schedule.is_eval_step(state.step):
                _stop_if_not_finite(run, bad_step, window_loss, state.step)
            if run.schedule.is_eval_step(state.step):
                state.train_seconds += time.perf_counter() - started
                train_loss = accelerator.reduce(window_loss, "mean").item() / window_batches
                epoch = state.epoch + state.batches_in_epoch / len(train_loader)
                stop = _evaluate_and_report(run, state, epoch, train_loss)
                window_loss, window_batches = torch.zeros((), device=accelerator.device), 0
                started = time.perf_counter()
                model.train()
            if stop or state.step >= run.schedule.total_steps:
                stop = True
                break
        else:  # the epoch ran out
            state.train_seconds += time.perf_counter() - started
            state.epoch += 1
            state.batches_in_epoch = 0


def _backward(run: Run, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The micro-batch's training loss, backwarded (Accelerate scales it for accumulation and fp16);
    with FGM, then the loss on perturbed embeddings too, before the caller clips and steps."""
    if run.fgm is not None:
        run.fgm.catch_next_backward()
    loss = run.objective(run.model, batch, labels)
    run.accelerator.backward(loss)
    if run.fgm is not None:
        run.fgm.attack(lambda weight: run.accelerator.backward(weight * run.adversarial(run.model, batch, labels)))
    return loss


def _probe_forward_dtype(run: Run) -> None:
    """Note the dtype the first linear layer computes in during the first training forward pass
    (Accelerate returns the logits in fp32 whatever autocast did inside): bfloat16 or float16 shows
    that mixed precision is active, not only requested."""
    layer = next(m for m in run.accelerator.unwrap_model(run.model).modules() if isinstance(m, torch.nn.Linear))

    def hook(module, inputs, output) -> None:
        run.forward_dtype = str(output.dtype).removeprefix("torch.")
        handle.remove()

    handle = layer.register_forward_hook(hook)


# How often, in optimizer updates, the loop reads whether the loss stayed finite (besides before every
# evaluation, where it syncs anyway). Reading it is a host sync: on a GPU the CPU waits for the queued
# work to finish and the GPU then idles while the CPU queues the next kernels, a stall of up to one
# step's launch time; every 32 updates bounds that to ~3% of the launch time of the steps (nanoGPT reads
# its loss every 10 iterations; the Hugging Face Trainer every logging_steps, 500 by default). A NaN then
# stops the run at most 31 updates late: seconds on a GPU, and nothing after the NaN is saved.
FINITE_CHECK_EVERY = 32


def _stop_if_not_finite(run: Run, bad_step: torch.Tensor, window_loss: torch.Tensor, step: int) -> None:
    """Raise TrainingError when a training loss was NaN or inf on any process since the run (re)started.

    One host sync, and with several processes one gather. Every process calls this at the same updates
    and reads the same gathered steps, so all stop at the same update: after a NaN on one process, the
    next gradient all-reduce makes every model NaN, and a process that went on would wait forever."""
    accelerator = run.accelerator
    steps = accelerator.gather(bad_step.reshape(1)) if accelerator.num_processes > 1 else bad_step.reshape(1)
    bad = [s for s in steps.tolist() if s]
    if not bad:
        return
    losses = accelerator.gather(window_loss.reshape(1)) if accelerator.num_processes > 1 else window_loss.reshape(1)
    value = next((x for x in losses.tolist() if not math.isfinite(x)), float("nan"))
    raise TrainingError(f"training loss is {value} at step {min(bad)} (learning_rate {run.cfg.learning_rate:g}); "
                        f"stopping this run (seen at step {step}: the loss is read every {FINITE_CHECK_EVERY} "
                        "updates and before every evaluation; any checkpoint is from an evaluation before it)")


def _predict_and_score_test(cfg: TrainConfig, data: TaskData, best_model: Path, device, log) -> dict[str, Any]:
    """The end of a run: the best model, reloaded from disk, predicts test_file and is scored once
    on the held-out test pairs at its saved threshold (the first figure no choice has seen)."""
    from afqmc.predict import predict_file, score_pairs

    out: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if cfg.test_file:  # a labelled one is the held-out test set, and predict_file scores it
        out["predictions"] = str(Path(cfg.output_dir) / "predictions.jsonl")
        metrics = predict_file(best_model, cfg.test_file, out["predictions"], device=device)
    if not metrics and data.test is not None:  # the test_ratio split
        metrics = score_pairs(best_model, data.test, device=device)
    if metrics and data.test is not None:
        out["test"] = {k: v for k, v in metrics.items() if k not in HELD_OUT_HIDDEN}
        out["test"]["source"] = data.test.source
        saved = json.loads((best_model / METRICS_NAME).read_text(encoding="utf-8"))
        write_model_card(best_model, cfg, saved, out["test"])  # the card gets the held-out figures
        log(f"held-out test ({out['test']['num_samples']} pairs, never used for a choice): F1-macro "
            f"{out['test']['f1_macro']:.4f}, accuracy {out['test']['accuracy']:.4f}, AUC {out['test']['auc']:.4f} "
            f"at the saved threshold {out['test']['threshold']:.4f}")
    return out


# A labelled prediction file also gets the threshold that would be best on that file; for the
# held-out test set that figure is left out: choosing on test is what the test set must not do.
HELD_OUT_HIDDEN = ("best_threshold", "f1_macro_at_best_threshold")


def _evaluate_and_report(run: Run, state: TrainerState, epoch: float, train_loss: float) -> bool:
    """Evaluate, update early stopping, write checkpoint and best model, report. True means stop."""
    cfg, accelerator = run.cfg, run.accelerator
    # monotonic, not perf_counter: perf_counter's calls are the training-time spans alone (state.train_seconds),
    # which benchmarks/loop_overhead.py reads back in pairs.
    started = time.monotonic()
    with accelerator.autocast():  # the EMA copy is not a prepared model: its forward has no autocast of its own
        val, probs, labels = evaluate(accelerator, run.kept_model, run.val_loader, run.weights, cfg.threshold,
                                      cfg.seed, run.val_swapped)
    # What this evaluation predicted, kept with its checkpoint: a search's reports and ensemble read it
    # there instead of predicting val again with the saved model (VAL_PROBS_NAME).
    predicted = {"labels": labels.tolist(), "probs": [round(float(x), 7) for x in probs],
                 "threshold": val.get("val/threshold"),
                 "seconds_per_pair": (time.monotonic() - started) / max(1, len(labels))}
    state.evals += 1
    value = val[cfg.metric_for_best_model]
    improved = value > state.best_metric
    if improved:
        state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
    else:
        state.bad_evals += 1
    stop = cfg.patience > 0 and state.bad_evals >= cfg.patience
    metrics = {
        "step": state.step, "epoch": round(epoch, 4), "evals": state.evals, **run.schedule.as_metrics(),
        "train/loss": train_loss, "train/lr": run.scheduler.get_last_lr()[0],
        "train/samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
        **val,
        best_key(cfg.metric_for_best_model): state.best_metric, "best/step": state.best_step,
        "early_stopped": stop,
    }
    state.history.append(metrics)
    _print_eval(run.bar, metrics, cfg.metric_for_best_model, first=state.evals == 1)
    if accelerator.trackers:  # report_to: the evaluation's figures at its step
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                        step=state.step)
    checkpoint_dir = _save_checkpoint(cfg, accelerator, run.kept_model, run.data, state, metrics, improved, predicted)
    if run.report is not None:
        run.report(metrics, checkpoint_dir if accelerator.is_main_process else None)
    return stop


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader, weights: torch.Tensor | None,
             threshold: float | str, seed: int = 0, swapped=None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Val loss and metrics over the whole val set, gathered from every process (no duplicates):
    at the run's threshold (fixed, or tuned and cross-fitted), plus AUC and AP (afqmc.metrics);
    and P(same) and the label of each val pair, in the val set's order (gather_for_metrics of a
    sequential loader). With `swapped` (the same pairs in the other order), P(same) is the mean
    over both orders and the loss is that mean's negative log-likelihood."""
    p, y, loss = _val_outputs(accelerator, model, loader)
    if swapped is not None:
        p = (p + _val_outputs(accelerator, model, swapped)[0]) / 2
        loss = -np.log(np.clip(np.where(y == 1, p, 1 - p), 1e-12, None))
    w = np.ones_like(loss) if weights is None else weights.cpu().numpy()[y]
    out = evaluation_metrics(y, p, threshold, seed=seed)
    out["val/loss"] = float((w * loss).sum() / w.sum())  # the training objective, class weights included
    return out, p, y


def _val_outputs(accelerator: Accelerator, model, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(same), the labels and the per-pair cross-entropy of `loader`'s pairs, from every process."""
    model.eval()
    probs, labels, losses = [], [], []
    for batch in loader:
        y = batch.pop("labels")
        logits = model(**batch).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        p, y, loss = accelerator.gather_for_metrics((logits.softmax(-1)[:, 1], y, loss))
        probs.append(p.cpu())
        labels.append(y.cpu())
        losses.append(loss.cpu())
    p, y, loss = (torch.cat(x).numpy() for x in (probs, labels, losses))
    return p, y, loss


def _save_checkpoint(cfg, accelerator, model, data, state, metrics, improved, predicted) -> str:
    """Full training state (to resume) plus the model of this evaluation (to export) and what it
    predicted on val (`predicted`, VAL_PROBS_NAME)."""
    output_dir = Path(cfg.output_dir)
    target = output_dir / "checkpoint"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_directory(target) as tmp:
            accelerator.save_state(str(tmp / "state"))
            write_json(tmp / TRAINER_STATE_NAME, asdict(state))
            write_text_atomic(tmp / VAL_PROBS_NAME, json.dumps(predicted) + "\n")
            if cfg.save_best_model:
                save_model_dir(tmp / "model", accelerator.unwrap_model(model), data.tokenizer, cfg, metrics)
        if improved and cfg.save_best_model:
            with atomic_directory(output_dir / "best_model") as tmp:
                save_model_dir(tmp, accelerator.unwrap_model(model), data.tokenizer, cfg, metrics)
    accelerator.wait_for_everyone()
    return str(target)


def _load_checkpoint(accelerator: Accelerator, path: str) -> TrainerState:
    path = resolve_directory(path)
    accelerator.load_state(str(path / "state"))
    return TrainerState(**json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8")))


def _summarize(cfg: TrainConfig, state: TrainerState, total_steps: int, info: dict[str, Any]) -> dict[str, Any]:
    best = next((m for m in state.history if m["step"] == state.best_step), state.history[-1] if state.history else {})
    return {
        "output_dir": cfg.output_dir, "steps": state.step, "total_steps": total_steps, "evals": state.evals,
        "per_device_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "stopped_early": bool(state.history and state.history[-1]["early_stopped"]),
        "best_step": state.best_step, "best": best, "last": state.history[-1] if state.history else {},
        "train_samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
        "data": info,
    }


EVAL_COLUMNS = [("step", "step", "{:>6d}"), ("epoch", "epoch", "{:>6.2f}"), ("train/loss", "train_loss", "{:>10.4f}"),
                ("val/loss", "val_loss", "{:>8.4f}"), ("val/accuracy", "val_acc", "{:>7.4f}"),
                ("val/f1_macro", "val_f1", "{:>7.4f}"), ("val/threshold", "thr", "{:>6.4f}"),
                ("val/f1_1", "f1_pos", "{:>6.4f}"), ("val/auc", "val_auc", "{:>7.4f}"), ("val/ap", "val_ap", "{:>6.4f}"),
                (None, "best", "{:>7.4f}"), ("train/samples_per_second", "samples/s", "{:>9.1f}")]


def _print_eval(bar, metrics: dict[str, Any], metric: str, first: bool) -> None:
    """One table row per evaluation; `best` is the best metric_for_best_model so far."""
    if bar.disable:
        return
    if first:
        bar.write("  ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in EVAL_COLUMNS))
    bar.write("  ".join(fmt.format(metrics[key or best_key(metric)]) for key, _, fmt in EVAL_COLUMNS))


def train_with_oom_retry(cfg: TrainConfig, report: Reporter | None = None, **kwargs: Any) -> dict[str, Any]:
    """`train`, retried after an out-of-memory error with half the per-device batch and twice the
    accumulation (the same effective batch), down to batch 1; then a TrainingError with the reason.

    Accelerate's `find_executable_batch_size` recognises the error and frees the device cache; each
    retry starts the run over (out-of-memory errors come in the first steps).
    """
    cfg, _ = resolve_launcher_settings(cfg)  # train() says the warnings
    effective = cfg.per_device_batch_size * cfg.gradient_accumulation_steps
    batch = cfg.per_device_batch_size

    def halve() -> int:
        nonlocal batch
        # The largest divisor of the effective batch up to half the current one keeps it exact.
        smaller = max((d for d in range(1, batch // 2 + 1) if effective % d == 0), default=0)
        print(f"out of memory at per_device_batch_size {batch}; retrying with {smaller} x "
              f"{effective // smaller if smaller else '-'} accumulation", file=sys.stderr)
        batch = smaller
        return batch

    @find_executable_batch_size(starting_batch_size=batch, reduce_batch_size_fn=halve)
    def attempt(batch_size: int) -> dict[str, Any]:
        run_cfg = cfg.replace(per_device_batch_size=batch_size, gradient_accumulation_steps=effective // batch_size)
        return train(run_cfg, report, **kwargs)

    try:
        return attempt()
    except RuntimeError as exc:
        if "No executable batch size found" not in str(exc):
            raise
        raise TrainingError(f"out of memory even with per_device_batch_size 1 (effective batch {effective}); "
                            "lower max_length or use a smaller model") from None


# --- command line --------------------------------------------------------------------------------


def logging_reporter(output_dir: str) -> Reporter:
    """The CLI's reporter: every evaluation's metrics appended to metrics.jsonl, by the main process."""
    path = Path(output_dir) / "metrics.jsonl"

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if not PartialState().is_main_process:
            return
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**metrics, "checkpoint": checkpoint_dir}) + "\n")

    return report


# Set by `accelerate launch` (single and multi-process) for the script it starts.
LAUNCHED = "ACCELERATE_DYNAMO_BACKEND"
# Under `accelerate launch`, the launcher follows a failed script with its own traceback (ending in
# subprocess.CalledProcessError, or torch's ChildFailedError with several processes) unless given -q;
# it says only that the script exited with a non-zero status, and is what a user reads first.
LAUNCHER_NOTE = ("(the error above stopped the run; a traceback that `accelerate launch` prints after it only "
                 "reports that this script exited with status 2, and `accelerate launch -q` leaves it out)")


def fail(exc: Exception) -> int:
    """The CLI's one-line error (`error: ...`, naming the file, line and field where there is one), and
    under `accelerate launch` a pointer back to it from the launcher's traceback; exit status 2."""
    text = f"error: {exc}\n"
    if os.environ.get(LAUNCHED) is not None and int(os.environ.get("RANK", "0")) == 0:
        text += LAUNCHER_NOTE + "\n"
    sys.stderr.write(text)  # one write: the lines of several processes do not interleave
    sys.stderr.flush()
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fine-tune a sentence-pair classifier. Any TrainConfig field can be overridden "
                    "with --field_name value.", allow_abbrev=False, epilog=fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    parser.add_argument("--resume_from", help="a checkpoint directory written by an earlier run")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(rest))
    except ConfigError as exc:
        return fail(exc)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun
    if main_process:  # the resolved config comes first
        print("resolved config:\n" + "".join(f"  {k}: {v!r}\n" for k, v in cfg.to_dict().items()), end="")
    try:
        if main_process and not args.resume_from and (Path(cfg.output_dir) / "metrics.jsonl").exists():
            (Path(cfg.output_dir) / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
        summary = train_with_oom_retry(cfg, logging_reporter(cfg.output_dir), resume_from=args.resume_from)
    except (ConfigError, DataError, TrainingError, CheckpointError) as exc:
        return fail(exc)
    best = summary["best"]
    if best and main_process:
        metric = cfg.metric_for_best_model
        print(f"best {metric} {best[metric]:.4f} at step {summary['best_step']} (val F1-macro {best[PRIMARY]:.4f} "
              f"at threshold {best['val/threshold']:.4f}, accuracy {best['val/accuracy']:.4f}, AUC "
              f"{best['val/auc']:.4f}; val numbers chose the model and its threshold, so they are optimistic); "
              f"{summary['train_samples_per_second']:.1f} train samples/s; outputs in {cfg.output_dir}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
