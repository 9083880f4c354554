"""The search's Tune callbacks that look after the results folder (they run in the driver).

The live view, also a callback, is tune/terminal.py; trackers (MLflow) are tune/tracking.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune

from tune.folder import TRAIN_GROUP, TRAIN_RUNS
from tune.results import keep_best_checkpoint


class ReleaseTrainWorkers(tune.Callback):
    """When a multi-worker trial ends, remove its Ray Train workers' placement group (named in its
    reports), which would otherwise hold their CPUs and GPUs after Tune stopped the trial, and what
    its Train run left in the experiment's train_runs/. A trial that waits at an ASHA rung (PAUSED:
    tune/scheduler.py) frees its workers' group too; it resumes from its checkpoint in a new one."""

    def __init__(self):
        self._released: set[str] = set()  # groups of paused trials, removed already

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_step_end(self, iteration, trials, **info):
        for trial in trials:
            group = (trial.last_result or {}).get(TRAIN_GROUP)
            if trial.status == "PAUSED" and group and group not in self._released:
                self._released.add(group)
                _remove_group(group)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    @staticmethod
    def _release(trial) -> None:
        group = (trial.last_result or {}).get(TRAIN_GROUP)
        if not group:
            return
        _remove_group(group)
        runs = Path(trial.path).parent / TRAIN_RUNS
        for run in runs.glob(f"{trial.trial_id}-*"):
            shutil.rmtree(run, ignore_errors=True)
        if runs.is_dir() and not any(runs.iterdir()):
            runs.rmdir()


def _remove_group(group: str) -> None:
    """Remove the placement group whose id a worker reported (as `group.id.hex()`), through Ray's public
    PlacementGroup handle."""
    import ray
    from ray.util.placement_group import PlacementGroup

    try:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group)))
    except Exception:  # noqa: BLE001 -- already removed by Ray Train when its run ended normally
        pass


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
