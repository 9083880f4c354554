"""One MLflow run per trial of a search (`search.loggers: [mlflow]`), with MLflow's public client.

Each trial's run (named "trial N", tagged with its Ray trial id) holds its sampled parameters, every
evaluation's figures at the evaluation's step, and at the end its state (finished / stopped early /
failed, and why) as tags and the run's status. The store is `sqlite:///results/NAME/mlflow.db`
unless `--tracking_uri` names another (a server: `http://host:5000`). A resumed search continues the
runs of its trials. TensorBoard needs nothing: Ray Tune writes each trial's event files into its
folder (`tensorboard --logdir results/NAME`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from tune.folder import TrialState, failure_reason
from tune.results import searched_params, trial_number, trial_state

# The report keys logged as metrics: the evaluation's figures and where the trial is.
METRIC_PREFIXES = ("val/", "train/", "best/")
METRIC_KEYS = ("step", "evals", "epoch")


def default_tracking_uri(experiment_dir) -> str:
    return f"sqlite:///{experiment_dir}/mlflow.db"


class MLflowTrials(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_name: str, max_evals: int):
        self.tracking_uri, self.experiment_name, self.max_evals = tracking_uri, experiment_name, max_evals
        self._client = None
        self._runs: dict[str, str] = {}  # Ray trial id -> MLflow run id

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment; not the client
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            self._experiment_id = experiment.experiment_id if experiment else \
                self._client.create_experiment(self.experiment_name)
        return self._client

    def _run(self, trial) -> str:
        """The trial's run: known, found by its tag (after a resume), or new with its parameters."""
        if trial.trial_id not in self._runs:
            client = self.client
            found = client.search_runs([self._experiment_id], filter_string=f"tags.trial_id = '{trial.trial_id}'")
            if found:
                self._runs[trial.trial_id] = found[0].info.run_id
            else:
                number = trial_number(trial)
                run = client.create_run(self._experiment_id, run_name=f"trial {number}",
                                        tags={"trial_id": trial.trial_id, "trial": str(number),
                                              "baseline": str(number == 0).lower()})
                from mlflow.entities import Param

                client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in searched_params(trial.config).items()])
                self._runs[trial.trial_id] = run.info.run_id
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step, now = int(result.get("step", 0) or 0), int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if (k.startswith(METRIC_PREFIXES) or k in METRIC_KEYS) and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)]
        if metrics:
            self.client.log_batch(self._run(trial), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, trial_state("TERMINATED", trial.last_result, self.max_evals))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, TrialState.FAILED)

    def _end(self, trial, state: str) -> None:
        run_id = self._run(trial)
        reason = failure_reason(trial.last_result) or ""
        self.client.set_tag(run_id, "state", state)
        if reason:
            self.client.set_tag(run_id, "reason", str(reason)[:5000])
        self.client.set_terminated(run_id, "FAILED" if state == TrialState.FAILED else "FINISHED")
