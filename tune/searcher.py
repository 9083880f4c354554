"""The driver's searcher: Optuna's ask-and-tell behind Ray Tune's public `Searcher` interface.

The Optuna study (optuna.db) is the one record of the search's trials: what was suggested (each
trial's parameters and number), every evaluation's value (intermediate values, which
optuna-dashboard draws), how each trial ended (COMPLETE, PRUNED by ASHA, FAIL with its reason) and
where ASHA placed it (user attributes written by tune/scheduler.py through `save_asha`). Everything
else (the tables, the live view, ASHA's rungs after a restart) reads it from here; Ray's own
snapshot only serves Ray's restore.

Only public Ray and Optuna API: `study.ask`/`trial.report`/`study.tell`, `study.enqueue_trial` for
the baseline, a fresh seeded sampler set on the study (`study.sampler`) before each ask, and
`optuna.Trial(study, id)` with the id from the storage's public methods to continue a trial the
driver did not ask for itself (after a restart).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
from ray.tune.search import Searcher

from tune.confirm import own_search_trials, stage_trial
from tune.confirm import plan as confirm_plan
from tune.folder import (ASHA_ATTR, CONFIRM_OF, CONFIRM_PLAN, CONFIRM_SEED, FAILED, INFORMED_BY, RAY_TRIAL_ID,
                         STEPS_ATTR, TARGET_ATTR, TRIAL_NUMBER, WARM_FROM, failure_reason)
from tune.results import ran_its_course


def trial_seed(search_seed: int | None, number: int) -> int | None:
    """The seed of trial `number`'s draws: from the search's seed and the trial's number alone, so that a
    trial's parameters do not depend on how many draws were made before a driver's kill and resume."""
    if search_seed is None:
        return None
    return int(np.random.SeedSequence([search_seed, number]).generate_state(1)[0])


def make_sampler(kind: str, seed: int | None, n_startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """search.sampler (tune.space.SearchSettings): TPE (multivariate) or random. With the same seed, the
    random sampler draws what TPE draws for its start-up trials (TPE's start-up sampler is a
    RandomSampler of the same seed)."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate
        return optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=n_startup_trials)


def own_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials of its search: asked for (not waiting in the queue), not added to inform TPE."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING and INFORMED_BY not in t.user_attrs]


class StudySearch(Searcher):
    """Ray Tune's Searcher on an Optuna study (ask-and-tell):

    - `suggest` asks the study for the next trial, with a sampler seeded for that trial's number; the
      first trial is the baseline (enqueued when the study is created). The study's number travels
      in the trial's config (`TRIAL_NUMBER`), and the Ray trial's id in the study (`ray_trial_id`).
    - every evaluation's value of `eval_metric` is the trial's intermediate value at step `evals`,
      once (a report seen again, after a restore, is not reported twice);
    - a trial that ran its course is COMPLETE with its best value (`metric`); one that ASHA stopped
      is PRUNED (Optuna takes its last intermediate value); one that failed on its own (its last
      report names the reason) or whose worker kept dying is FAIL, with the reason as `failed`;
    - after the driver was killed, the study can be ahead of Ray's snapshot: a trial the study holds
      as finished leaves its record as it is, and a trial it holds as RUNNING that Ray's snapshot
      never saw (asked for just before the kill) is handed, with its parameters, to the next Ray
      trial instead of a new one: the study never keeps a trial RUNNING forever.
    - how many trials the search holds is the study's to say (its `num_samples` attribute, set when
      the study is created and raised by `--resume NAME --num_samples N`): `suggest` answers
      FINISHED once the study holds that many of its own trials, so Ray runs with unlimited samples
      and an extended search needs no change to Ray's saved state.
    - a warm start (tune/warmstart.py) is written into a new study: earlier searches' configurations
      enqueued right after the baseline (attribute `warm_start_from`), and, for the same task,
      earlier trials added with their values to inform TPE (attribute `informed_by`; never run here,
      and no trial of this search).
    - with `confirm` (search.confirm), once the search's own trials have ended, the confirmation
      stage's runs (tune/confirm.py) are planned into the study and handed out like any trial, each
      with its seed and `confirm_of` in its config (ASHA lets such a run go to the end); until the
      last search trial ends, `suggest` answers None (the stage's configurations are not known yet).
    """

    num_samples: int | None = None  # (class defaults: a searcher Ray pickled before these existed)
    warm_start: dict[str, Any] = {}
    confirm: dict[str, Any] = {}
    search_seed: int = 0

    def __init__(self, space: dict[str, optuna.distributions.BaseDistribution], *, metric: str, study_name: str,
                 storage_url: str, eval_metric: str, max_evals: float, sampler: str = "tpe", seed: int | None = None,
                 n_startup_trials: int = 10, baseline: dict[str, Any] | None = None, num_samples: int | None = None,
                 warm_start: dict[str, Any] | None = None, confirm: dict[str, Any] | None = None,
                 search_seed: int = 0):
        super().__init__(metric=metric, mode="max")
        self.num_samples, self.warm_start = num_samples, warm_start or {}
        # The confirmation stage (search.confirm, tune/confirm.py) and the seed the search's trials train with.
        self.confirm, self.search_seed = confirm or {}, search_seed
        self.space, self.study_name, self.storage_url = space, study_name, storage_url
        self.eval_metric, self.max_evals = eval_metric, max_evals
        self.sampler_kind, self.seed, self.n_startup_trials = sampler, seed, n_startup_trials
        self.baseline = baseline
        self._handed: set[str] = set()  # the Ray trials given a study trial (saved with Ray's snapshot)
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self._handles: dict[str, tuple[optuna.Trial, int]] = {}  # Ray trial -> (its study trial, storage id)

    # --- the study ---------------------------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        """The search's study, created with the baseline enqueued as its first trial (then a warm
        start's configurations and informing trials), else loaded."""
        if self._study is None:
            self._storage = optuna.storages.RDBStorage(self.storage_url)
            self._study = optuna.create_study(study_name=self.study_name, storage=self._storage,
                                              direction="maximize", load_if_exists=True)
            if not self._study.get_trials(deepcopy=False):
                self._populate(self._study)
        return self._study

    def _populate(self, study: optuna.Study) -> None:
        if self.num_samples is not None and TARGET_ATTR not in study.user_attrs:
            study.set_user_attr(TARGET_ATTR, self.num_samples)
        if self.baseline is not None:
            study.enqueue_trial(self.baseline)
        for item in self.warm_start.get("enqueue", []):
            study.enqueue_trial(item["params"], user_attrs={WARM_FROM: item["from"]}, skip_if_exists=True)
        informing = [optuna.trial.create_trial(
            state=optuna.trial.TrialState[item["state"]], value=item.get("value"), params=item["params"],
            distributions={k: self.space[k] for k in item["params"]}, user_attrs={INFORMED_BY: item["from"]},
            intermediate_values={int(k): v for k, v in (item.get("intermediate") or {}).items()})
            for item in self.warm_start.get("inform", [])]
        if informing:
            study.add_trials(informing)

    @property
    def target(self) -> int | None:
        """How many trials the search is to hold: the study's record, else the constructor's."""
        return self.study.user_attrs.get(TARGET_ATTR, self.num_samples)

    def all_made(self) -> bool:
        """Whether the study holds every trial the search is to have (ASHA: no more peers will come);
        the confirmation stage's trials come after these and are no peers."""
        target = self.target
        return target is not None and len(own_search_trials(self.study)) >= target

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the searcher: the study is loaded again
        return {**self.__dict__, "_study": None, "_storage": None, "_handles": {}}

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        return next((t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(RAY_TRIAL_ID) == trial_id),
                    None)

    def _handle(self, number: int) -> tuple[optuna.Trial, int]:
        """The study's trial `number` to report to and tell, and its storage id (from the storage's
        public methods: Optuna's Trial takes the id, not the number)."""
        study_id = self._storage.get_study_id_from_name(self.study.study_name)
        storage_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return optuna.Trial(self.study, storage_id), storage_id

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        """The study's trial of a Ray trial, if it is still RUNNING (a finished one keeps its record)."""
        if trial_id not in self._handles:
            frozen = self._frozen(trial_id)
            if frozen is None:
                return None
            self._handles[trial_id] = self._handle(frozen.number)
        handle, storage_id = self._handles[trial_id]
        return None if self._storage.get_trial(storage_id).state.is_finished() else handle

    # --- Ray's Searcher API ------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        study = self.study
        orphan = self._orphan()
        if orphan is not None:
            handle, storage_id = self._handle(orphan.number)
        elif self.all_made():
            stage = self._stage()  # the confirmation stage, if any, once the search's trials have ended
            if stage is not True:
                return stage
            handle = study.ask(self.space)  # the stage's next run, enqueued with its configuration
            storage_id = self._handle(handle.number)[1]
        else:
            study.sampler = make_sampler(self.sampler_kind, trial_seed(self.seed, len(study.get_trials(deepcopy=False))),
                                         self.n_startup_trials)
            handle = study.ask(self.space)
            storage_id = self._handle(handle.number)[1]
        handle.set_user_attr(RAY_TRIAL_ID, trial_id)
        self._handles[trial_id] = (handle, storage_id)
        self._handed.add(trial_id)
        config = {**handle.params, TRIAL_NUMBER: handle.number}
        attrs = self._storage.get_trial(storage_id).user_attrs
        if CONFIRM_OF in attrs:  # a stage run: its seed, and the mark that makes ASHA let it run to the end
            config.update({"seed": int(attrs[CONFIRM_SEED]), CONFIRM_OF: int(attrs[CONFIRM_OF])})
        return config

    def _stage(self) -> bool | str | None:
        """After the search's trials: True when a stage run waits to be asked for; None while search
        trials still run (the stage's top configurations are not known yet); else FINISHED. The plan is
        written to the study first, then each of its runs not in the study yet is enqueued: a driver
        killed in between enqueues the rest when it resumes, and none twice."""
        if not self.confirm:
            return Searcher.FINISHED
        study = self.study
        search = own_search_trials(study)
        if any(t.state == optuna.trial.TrialState.RUNNING for t in search):
            return None
        stage = [t for t in study.get_trials(deepcopy=False) if stage_trial(t)]
        planned = study.user_attrs.get(CONFIRM_PLAN)
        if planned is None or planned.get("search_trials") != len(search):  # first time, or an extended search
            baseline = next((t.number for t in search if self.baseline is not None and t.params == self.baseline), None)
            planned = confirm_plan(search, baseline, self.confirm, self.search_seed, done=stage)
            study.set_user_attr(CONFIRM_PLAN, planned)
        have = {(int(t.user_attrs[CONFIRM_OF]), int(t.user_attrs[CONFIRM_SEED])) for t in stage}
        by_number = {t.number: t for t in search}
        for of, seed in planned["runs"]:
            if (of, seed) not in have:
                study.enqueue_trial(by_number[of].params, user_attrs={CONFIRM_OF: of, CONFIRM_SEED: seed})
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        return True if any(stage_trial(t) for t in waiting) else Searcher.FINISHED

    def _orphan(self) -> optuna.trial.FrozenTrial | None:
        """The first trial the study holds as RUNNING that no Ray trial this searcher knows of owns:
        asked for after Ray's last snapshot, by a driver that was killed."""
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return next((t for t in running if t.user_attrs.get(RAY_TRIAL_ID) not in self._handed), None)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        handle = self._trial(trial_id)
        if handle is not None:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        handle, storage_id = self._handles[trial_id]
        if result.get("step") is not None and result.get("planned_updates"):  # its spend (the stage's budget)
            full = int(result["planned_updates"])
            if result.get("eval_every"):
                full = min(full, int(self.max_evals * result["eval_every"]))
            handle.set_user_attr(STEPS_ATTR, {"steps": int(result["step"]), "full": full})
        value, step = result.get(self.eval_metric), result.get("evals")
        if not (isinstance(value, (int, float)) and math.isfinite(value) and step is not None):
            return
        if int(step) not in self._storage.get_trial(storage_id).intermediate_values:  # a report Ray delivers again after a restore: already here
            handle.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        handle = self._trial(trial_id)
        if handle is None:
            return
        if result:  # Ray passes the report that ended the trial (ASHA's cut, the budget) here only
            self._report(trial_id, result)
        reason = failure_reason(result)
        value = (result or {}).get(self.metric)
        if reason or error:
            if reason:
                handle.set_user_attr(FAILED, reason)
            self.study.tell(handle.number, state=optuna.trial.TrialState.FAIL)
        elif result and ran_its_course(result, self.max_evals) and isinstance(value, (int, float)) \
                and math.isfinite(value):
            self.study.tell(handle.number, float(value))
        else:  # stopped by ASHA: while it ran (with its last report), or while it waited at a rung
            self.study.tell(handle.number, state=optuna.trial.TrialState.PRUNED)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"handed": sorted(self._handed)}, fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            self._handed = set(pickle.load(fh)["handed"])

    # --- ASHA's record (tune/scheduler.py) ----------------------------------------------------------

    def asha_records(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Each Ray trial's ASHA record in the study, and the trial's state there."""
        return {t.user_attrs[RAY_TRIAL_ID]: (t.user_attrs.get(ASHA_ATTR) or {}, t.state.name)
                for t in self.study.get_trials(deepcopy=False) if RAY_TRIAL_ID in t.user_attrs}

    def save_asha(self, trial_id: str, record: dict[str, Any]) -> None:
        handle = self._trial(trial_id)
        if handle is not None:
            handle.set_user_attr(ASHA_ATTR, record)
