"""The Ray Tune trainable: one trial is one call of `afqmc.train.train` with sampled hyperparameters.

It lives in its own module (not in search.py, which runs as `__main__`) so Ray pickles it by
reference and the workers import it, like any library function.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from typing import Any

import torch
from ray import tune

from afqmc.config import TrainConfig, from_dict
from afqmc.train import TaskData, train_with_oom_retry
from tune.results import keep_best_checkpoint


def run_trial(config: dict[str, Any], data: TaskData, base: dict[str, Any]) -> None:
    """Train with `base` (the fixed fields) updated by `config` (the sampled ones).

    `data` arrives through Ray's object store (`tune.with_parameters`): the driver tokenized it
    once, so a trial never reads or tokenizes the data files.
    """
    cfg = from_dict({**base, **config}, source=f"trial {tune.get_context().get_trial_id()}")
    # A local scratch directory, outside the trial's working directory: Ray copies every reported
    # checkpoint into the experiment, and would also sync anything left in the working directory.
    work_dir = tempfile.mkdtemp(prefix=f"afqmc-{tune.get_context().get_trial_id()}-")
    cfg.output_dir = work_dir
    logging.getLogger("ray").setLevel(logging.WARNING)  # not one "Checkpoint successfully created" per eval
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # one trial per core(s) it was given, not every core

    planned = planned_evals(cfg, len(data.train))

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        # `planned_evals` tells a trial that ran its course from one that ASHA stopped (Ray marks
        # both TERMINATED). Ray copies the checkpoint directory into the trial's storage before
        # returning, so train() may overwrite it at the next evaluation.
        tune.report({**metrics, "planned_evals": planned},
                    checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    # train_with_oom_retry: trials that share a GPU halve their batch (and double the accumulation)
    # rather than fail when the card runs out of memory.
    try:
        checkpoint = tune.get_checkpoint()  # set when Ray resumes this trial after an interrupt
        if checkpoint is None:
            train_with_oom_retry(cfg, report, data=data, progress=False)
        else:
            with checkpoint.as_directory() as resume_dir:
                train_with_oom_retry(cfg, report, data=data, resume_from=resume_dir, progress=False)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def planned_evals(cfg: TrainConfig, n_train: int) -> int:
    """How many evaluations `train(cfg)` makes on `n_train` pairs on one process (its schedule)."""
    updates_per_epoch = math.ceil(math.ceil(n_train / cfg.per_device_batch_size) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or math.ceil(updates_per_epoch * cfg.num_epochs)
    return math.ceil(total_steps / (cfg.eval_steps or updates_per_epoch))


def trial_dirname(trial) -> str:
    """`trial_<id>` instead of Ray's default name, which lists every parameter and the date."""
    return f"trial_{trial.trial_id}"


class KeepBestCheckpoint(tune.Callback):
    """When a trial ends, delete its checkpoints but the best one.

    While a trial runs, Ray keeps its best checkpoint and its latest (to resume it); once it has
    ended (finished, stopped by ASHA, or failed) the latest is of no use.
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        keep_best_checkpoint(trial.path)

    def on_trial_error(self, iteration, trials, trial, **info):
        keep_best_checkpoint(trial.path)
