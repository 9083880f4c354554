"""The driver's searcher: Optuna TPE behind Ray Tune's OptunaSearch, keeping the study true.

`StudySearch` (the search algorithm the Tuner asks for each trial's parameters) records in the
Optuna study what happened to each trial, and `TrialSeededTPE` (its sampler) makes a trial's
parameters depend on its number, not on the draws made before a driver's kill and resume. Both run
in the search's driver only; what runs inside a trial is tune/trial.py.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune import internals
from tune.folder import FAILED, PAUSED_AT, RAY_TRIAL_ID, failure_reason
from tune.results import ran_its_course


class TrialSeededTPE(optuna.samplers.TPESampler):
    """Optuna's TPE, its random draws for each trial seeded with the search's seed and the trial's
    number: a trial's parameters depend on its number and on the trials finished before it, not on
    how many draws the sampler made before. A driver killed and resumed restores the sampler Ray
    saved last, which may be some draws behind; the trials it suggests next are the same as in an
    uninterrupted search (exactly for the seeded random start-up trials)."""

    def __init__(self, *, seed: int | None = None, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self.search_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.search_seed is not None:
            internals.seed_tpe(self, [self.search_seed, trial.number])
        super().before_trial(study, trial)


class TrialSeededRandom(optuna.samplers.RandomSampler):
    """Optuna's RandomSampler, seeded per trial as TrialSeededTPE: trial k draws what TPE's k-th
    start-up trial draws (search.sampler: random, the baseline against TPE)."""

    def __init__(self, *, seed: int | None = None):
        super().__init__(seed=seed)
        self.search_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.search_seed is not None:
            internals.seed_random(self, [self.search_seed, trial.number])
        super().before_trial(study, trial)


def make_sampler(settings) -> optuna.samplers.BaseSampler:
    """The sampler search.sampler names (tune.space.SearchSettings), seeded with search.seed."""
    if settings.sampler == "random":
        return TrialSeededRandom(seed=settings.seed)
    return TrialSeededTPE(multivariate=True, seed=settings.seed, n_startup_trials=settings.n_startup_trials)


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch, so that the study says what happened to each trial:

    - every evaluation's value of the ranking metric (`eval_metric`, at that evaluation, not the
      best so far) is the trial's intermediate value at step `evals`: optuna-dashboard draws the
      learning curves;
    - a trial that ASHA stopped is PRUNED (Optuna takes its last intermediate value as its value),
      not COMPLETE with a truncated value; one that ran its course is COMPLETE with its best value
      (`metric`, the searcher's);
    - a trial that failed on its own (its last report names the reason) is FAIL with that reason,
      rather than a NaN value that Optuna refuses (which would leave the trial RUNNING forever);
    - after the driver was killed, the study (written at once) can be ahead of Ray's last snapshot
      of the experiment (taken every 10 s or so). A trial the study already holds as finished may
      run again on resume: its new reports leave the study's record as it is, instead of stopping
      the search. A trial the study holds as RUNNING that the snapshot never saw (suggested just
      before the kill) is given, with its parameters, to the next trial Ray asks for, instead of a
      new one: the study never keeps a trial RUNNING forever, nor more trials than the search.
    Each Optuna trial records the Ray trial it belongs to (user attribute `ray_trial_id`).
    """

    def __init__(self, *args: Any, study_name: str, storage: optuna.storages.BaseStorage, eval_metric: str,
                 max_evals: int, **kwargs: Any):
        super().__init__(*args, study_name=study_name, storage=storage, **kwargs)
        self.study_name, self.storage = study_name, storage
        self.eval_metric, self.max_evals = eval_metric, max_evals

    @property
    def study(self) -> optuna.Study:
        """The search's study, through Optuna's public API on the storage the search passed in; loaded
        once (loading it again for every report re-read every trial: the driver's time per trial
        doubled over a 200-trial search, benchmarks/soak.py). Its storage cache re-reads unfinished
        trials, so what OptunaSearch writes through its own handle is seen."""
        if getattr(self, "_study", None) is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        orphan = None if internals.optuna_trial(self, trial_id) else self._orphan()
        if orphan is not None:
            internals.adopt(self, trial_id, optuna.Trial(self.study, internals.storage_trial_id(orphan)))
        params = super().suggest(trial_id)
        trial = internals.optuna_trial(self, trial_id)
        if trial is not None:
            trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return params

    def _orphan(self) -> optuna.trial.FrozenTrial | None:
        """The first trial the study holds as RUNNING that no Ray trial of this searcher owns."""
        owned = {t.number for t in internals.known_trials(self)}
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return next((t for t in running if t.number not in owned), None)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = internals.optuna_trial(self, trial_id)
        if trial is None or internals.is_closed(self, trial_id) or self._finished_in_study(trial):
            return
        value = result.get(self.eval_metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and "evals" in result:
            trial.report(float(value), int(result["evals"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = internals.optuna_trial(self, trial_id)
        if trial is not None and self._finished_in_study(trial):
            internals.close(self, trial_id)
            return
        if result and trial is not None:
            # Ray passes the report that ended the trial (ASHA's cut, the budget) here, not to on_trial_result.
            self.on_trial_result(trial_id, result)
        reason = failure_reason(result)
        if reason:
            if trial is not None:
                trial.set_user_attr(FAILED, reason)
            result, error = None, True
        if result and not error and trial is not None and not ran_its_course(result, self.max_evals):
            self.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            internals.close(self, trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def note_paused(self, trial_id: str, evals: int | None) -> None:
        """The study's record of a trial that waits at an ASHA rung (tune/scheduler.py): RUNNING (Optuna
        has no paused state) with `paused_at_evals` = the rung's evaluation; None once it goes on."""
        trial = internals.optuna_trial(self, trial_id)
        if trial is not None and not self._finished_in_study(trial):
            trial.set_user_attr(PAUSED_AT, evals)

    def _finished_in_study(self, trial: optuna.Trial) -> bool:
        frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        return frozen is not None and frozen.state.is_finished()
