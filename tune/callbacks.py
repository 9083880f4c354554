"""The search's Tune callbacks that look after the results folder (they run in the driver).

The live view, also a callback, is tune/terminal.py; trackers (MLflow) are tune/tracking.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune

from tune import internals
from tune.folder import TRAIN_GROUP, TRAIN_RUNS
from tune.results import keep_best_checkpoint


class ReleaseTrainWorkers(tune.Callback):
    """When a multi-worker trial ends, remove its Ray Train workers' placement group (named in its
    reports), which would otherwise hold their CPUs and GPUs after Tune stopped the trial, and what
    its Train run left in the experiment's train_runs/."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    @staticmethod
    def _release(trial) -> None:
        group = (trial.last_result or {}).get(TRAIN_GROUP)
        if not group:
            return
        try:
            internals.remove_placement_group(group)
        except Exception:  # noqa: BLE001 -- already removed by Ray Train when its run ended normally
            pass
        runs = Path(trial.path).parent / TRAIN_RUNS
        for run in runs.glob(f"{trial.trial_id}-*"):
            shutil.rmtree(run, ignore_errors=True)
        if runs.is_dir() and not any(runs.iterdir()):
            runs.rmdir()


class KeepBestCheckpoint(tune.Callback):
    """When a trial ends, delete its checkpoints but the best one.

    While a trial runs, Ray keeps its best checkpoint and its latest (to resume it); once it has
    ended (finished, stopped by ASHA, or failed) the latest is of no use.
    """

    def __init__(self, metric: str):
        self.metric = metric

    def on_trial_complete(self, iteration, trials, trial, **info):
        keep_best_checkpoint(trial.path, self.metric)

    def on_trial_error(self, iteration, trials, trial, **info):
        keep_best_checkpoint(trial.path, self.metric)
