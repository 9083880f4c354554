"""tune/scheduler.py: ASHA's promotion variant, decided on scripted results (no Ray)."""

from __future__ import annotations

import itertools
import random

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tune.scheduler import PauseAwareLimiter, PromotionASHA, ReplayController, Rungs, milestones, replay

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


class MemoryStore:
    """What the scheduler keeps in the study through StudySearch (`asha_records`, `save_asha`), in memory:
    each trial's record, and its state in the study (RUNNING until `states` says otherwise)."""

    def __init__(self):
        self.records, self.states = {}, {}

    def asha_records(self):
        return {t: (r, self.states.get(t, "RUNNING")) for t, r in self.records.items()}

    def save_asha(self, trial_id, record):
        self.records[trial_id] = record


def _script(num_samples: int, rf: float = 2, max_t: int = 4, grace: int = 1, concurrency: int = 1, store=None):
    """A scheduler (rungs at 1 and 2 evaluations, half kept) and a controller of `num_samples` trials;
    the scheduler keeps its rungs in `store` (the searcher Ray's search algorithm wraps)."""
    scheduler = PromotionASHA("evals", "m", "max", max_t, grace, rf, concurrency)
    ctrl = ReplayController(scheduler, [[0.0]] * num_samples)
    ctrl.search_alg.searcher = store
    return scheduler, ctrl


def _arrive(scheduler, ctrl, trial, evals: int, value: float) -> str:
    """The trial runs and reports `value` at `evals`; Ray then pauses or stops it as decided."""
    trial.status, trial.evals = Trial.RUNNING, evals  # Ray's trial keeps its last result
    decision = scheduler.on_trial_result(ctrl, trial, {"evals": evals, "m": value})
    if decision == PAUSE:
        trial.status = Trial.PAUSED
    elif decision == STOP:
        ctrl.stop_trial(trial)
    return decision


def test_rungs_are_grace_times_powers_of_the_reduction_factor_below_max_t():
    assert milestones(2, 4, 16) == [2, 8]
    assert milestones(1, 3, 6) == [1, 3]
    assert milestones(1, 2, 4) == [1, 2]
    with pytest.raises(ValueError, match="reduction_factor"):
        milestones(1, 1, 4)


def test_a_rung_with_too_few_peers_waits_then_promotes_the_best_once_enough_arrived():
    scheduler, ctrl = _script(num_samples=4)
    a, b = ctrl.add([]), ctrl.add([])
    assert _arrive(scheduler, ctrl, a, 1, 0.9) == PAUSE  # alone at its rung: floor(1/2) = 0 may go on
    assert ctrl.search_alg.waiting == {"0"}  # its slot is free for a new trial
    assert scheduler.choose_trial_to_run(ctrl) is b  # the pending one, not the waiting one
    assert _arrive(scheduler, ctrl, b, 1, 0.5) == PAUSE  # two now: one may go on, and it is a (0.9)
    assert ctrl.search_alg.waiting == {"1"}  # a may go on: it holds its slot
    assert scheduler.choose_trial_to_run(ctrl) is a  # into the free slot, before any new trial
    assert a.trial_id in scheduler.rungs.promoted[0] and scheduler.rungs.waiting_at("0") is None
    assert scheduler.rungs.waiting_at("1") == 0


def test_a_trial_in_the_top_share_of_a_full_rung_goes_on_at_once():
    scheduler, ctrl = _script(num_samples=6)
    trials = [ctrl.add([]) for _ in range(5)]
    assert _arrive(scheduler, ctrl, trials[0], 1, 0.5) == PAUSE
    assert _arrive(scheduler, ctrl, trials[1], 1, 0.7) == CONTINUE  # best of two
    assert _arrive(scheduler, ctrl, trials[2], 1, 0.6) == PAUSE  # floor(3/2) = 1 place, taken by 0.7
    # The rung filled long ago; a late trial is ranked among all of it:
    assert _arrive(scheduler, ctrl, trials[3], 1, 0.8) == CONTINUE  # 2 of 4 go on: 0.8 and 0.7
    assert _arrive(scheduler, ctrl, trials[4], 1, 0.1) == PAUSE  # 5th of 5, not settled: one trial to come
    assert scheduler.choose_trial_to_run(ctrl) is None  # nobody waiting may go on; no trial pending
    late = ctrl.add([])
    assert _arrive(scheduler, ctrl, late, 1, 0.55) == STOP  # 4th of 6, the last of all: the rung is settled
    # Settled: every waiting trial that may not go on was stopped (the study tells them PRUNED); 3 of
    # 6 places now, and the third is the waiting 0.6, which resumes first.
    assert [t.trial_id for t in ctrl.trials if t.status == Trial.TERMINATED] == ["0", "4", "5"]
    assert scheduler.choose_trial_to_run(ctrl) is None  # two trials run: no free slot (concurrency 1)
    trials[1].status = trials[3].status = Trial.TERMINATED
    assert scheduler.choose_trial_to_run(ctrl) is trials[2]
    assert sorted(scheduler.rungs.promoted[0]) == ["1", "2", "3"]


def test_a_trial_that_fails_while_paused_gives_its_place_to_the_next_best():
    scheduler, ctrl = _script(num_samples=3)
    a, b = ctrl.add([]), ctrl.add([])
    assert _arrive(scheduler, ctrl, a, 1, 0.9) == PAUSE
    a.status = Trial.ERROR  # e.g. its node went away while it waited
    scheduler.on_trial_error(ctrl, a)
    assert _arrive(scheduler, ctrl, b, 1, 0.5) == CONTINUE  # 2 at the rung, 1 place: a cannot take it
    assert scheduler.choose_trial_to_run(ctrl) is None
    assert scheduler.rungs.waiting_at("0") is None


def test_a_trial_that_ray_retries_after_its_worker_died_has_not_failed():
    """Ray tells on_trial_error, then adds the trial again, when it retries a trial from its checkpoint."""
    scheduler, ctrl = _script(num_samples=2)
    a, b = ctrl.add([]), ctrl.add([])
    assert _arrive(scheduler, ctrl, a, 1, 0.9) == PAUSE
    assert scheduler.choose_trial_to_run(ctrl) is b
    _arrive(scheduler, ctrl, b, 1, 0.5)
    assert scheduler.choose_trial_to_run(ctrl) is a
    a.status = Trial.RUNNING
    scheduler.on_trial_error(ctrl, a)  # its worker died at evaluation 2
    a.status = Trial.PENDING
    scheduler.on_trial_add(ctrl, a)  # and Ray retries it
    assert "0" not in scheduler.rungs.failed and a.status == Trial.PENDING
    assert _arrive(scheduler, ctrl, a, 2, 0.8) == CONTINUE  # rung 2 holds it alone, and it is settled


def test_a_trial_whose_worker_died_while_it_waited_at_a_rung_waits_there_again():
    """Ray's retry of a trial whose worker died (TuneController._requeue_trial): on_trial_error, the
    trial filed as PENDING, on_trial_add, and Ray starts every PENDING trial (no public way to file it
    as PAUSED). At its next report it waits again at its rung, until it may go on."""
    scheduler, ctrl = _script(num_samples=3)
    a, b = ctrl.add([]), ctrl.add([])
    assert _arrive(scheduler, ctrl, a, 1, 0.9) == PAUSE  # alone at its rung
    # Its worker dies during the pause's save: Ray retries it, and starts it from its checkpoint.
    scheduler.on_trial_error(ctrl, a)
    a.status = Trial.PENDING
    scheduler.on_trial_add(ctrl, a)
    assert a.status == Trial.PENDING and "0" not in scheduler.rungs.failed
    assert scheduler.rungs.waiting_at("0") == 0
    assert _arrive(scheduler, ctrl, a, 2, 0.95) == PAUSE  # one evaluation later, it waits again
    assert scheduler.rungs.waiting_at("0") == 0 and scheduler.rungs.values[1] == {}  # rung 2 not reached
    assert scheduler.choose_trial_to_run(ctrl) is b  # the pending one; a waits for a peer
    assert _arrive(scheduler, ctrl, b, 1, 0.5) == PAUSE
    assert scheduler.choose_trial_to_run(ctrl) is a  # promoted: the best of two at its rung
    assert _arrive(scheduler, ctrl, a, 3, 0.95) == PAUSE  # it reaches rung 2 (evaluation 2) now, alone


def test_nothing_waits_forever_when_the_searcher_is_done():
    """The last trials to arrive settle every rung: each waiting trial goes on or is stopped."""
    rng = random.Random(3)
    curves = [[rng.random() for _ in range(16)] for _ in range(11)]
    for concurrency in (1, 2, 3):
        evals = replay(curves, max_t=16, grace_period=2, reduction_factor=4, concurrency=concurrency)
        assert all(e in (2, 8, 16) for e in evals), evals
        assert evals.count(16) >= 1  # someone reached the end


def test_replay_spends_the_perfect_share_when_trials_arrive_one_after_another():
    """16 trials, rungs at 2 and 8 of 16 evaluations, a quarter kept: 16*2 + 4*6 + 1*8 = 64 = 25%
    of FIFO's 256, whatever the curves, for a search of one trial at a time."""
    rng = random.Random(0)
    for _ in range(20):
        curves = [[rng.random() for _ in range(16)] for _ in range(16)]
        evals = replay(curves, max_t=16, grace_period=2, reduction_factor=4, concurrency=1)
        assert sum(evals) == 64 and sorted(evals) == [2] * 12 + [8] * 3 + [16]
        # the one that ran to the end was the best at evaluation 8 of the four that got there
        at_8 = [i for i, e in enumerate(evals) if e >= 8]
        assert evals.index(16) == max(at_8, key=lambda i: curves[i][7])


def test_ray_asha_would_have_let_the_first_trials_through():
    """The reason for this scheduler: with the same rungs, the first trials of Ray's rule pass for lack
    of peers. Here the first arrivals are the worst: under ours they wait and are stopped."""
    curves = [[0.1 * (i + 1)] * 16 for i in range(16)]  # trial i is worse than every later one
    evals = replay(curves, max_t=16, grace_period=2, reduction_factor=4, concurrency=1)
    assert evals[0] == evals[1] == 2 and evals[15] == 16


def test_the_limiter_does_not_count_waiting_trials():
    class Searcher:  # the least a Ray Searcher needs
        metric, mode = "m", "max"

        def set_max_concurrency(self, n):
            return False

        def suggest(self, trial_id):
            return {"x": 1}

    from ray.tune.search import Searcher as RaySearcher

    inner = type("S", (Searcher, RaySearcher), {})()
    limiter = PauseAwareLimiter(inner, max_concurrent=2)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two live
    limiter.waiting = {"a"}
    assert limiter.suggest("c") == {"x": 1}  # a waits at a rung: its slot is free
    assert limiter.suggest("d") is None


def test_a_restored_scheduler_pauses_again_the_trials_that_waited():
    """After the driver was killed, Ray restores unfinished trials as PENDING: those that waited at a
    rung (the study's records say so) wait again, those that went on run, and one the study holds as
    finished is stopped rather than run again."""
    store = MemoryStore()
    scheduler, ctrl = _script(num_samples=5, store=store)
    a, b = ctrl.add([]), ctrl.add([])
    _arrive(scheduler, ctrl, a, 1, 0.9)
    _arrive(scheduler, ctrl, b, 1, 0.5)
    assert scheduler.choose_trial_to_run(ctrl) is a
    c, d = ctrl.add([]), ctrl.add([])
    _arrive(scheduler, ctrl, d, 1, 0.1)
    assert store.records["0"] == {"values": {"1": 0.9}, "went_on": [1]}
    assert store.records["1"] == {"values": {"1": 0.5}, "went_on": []}
    store.states["3"] = "PRUNED"  # the study is ahead of Ray's snapshot: d was stopped before the kill

    restored, ctrl2 = _script(num_samples=5, store=store)
    for old in (a, b, c, d):
        trial = ctrl2.add([], evals=old.evals)  # as Ray's snapshot holds them
        assert trial.trial_id == old.trial_id
    assert [t.status for t in ctrl2.trials] == [Trial.PENDING, Trial.PAUSED, Trial.PENDING, Trial.PAUSED]
    assert restored.rungs.values == scheduler.rungs.values and restored.rungs.promoted == scheduler.rungs.promoted
    assert restored.rungs.ended == {"3"}
    restored.choose_trial_to_run(ctrl2)
    assert ctrl2.trials[3].status == Trial.TERMINATED and ctrl2.trials[1].status == Trial.PAUSED


def test_a_restored_trial_behind_the_studys_record_arrives_at_those_rungs_again():
    """Ray's snapshot of the experiment (every few seconds) can be older than the study (written at
    every decision): the driver was killed after a trial's evaluation 2 reached rung 2 and paused
    it there, but Ray restores it from evaluation 1. It must not wait at a rung it has not reached
    in Ray's record (it would be stopped or promoted on a value of a report Ray never kept): the
    restored scheduler forgets that record, and the trial goes on from evaluation 1 (it was promoted
    at rung 1) and arrives at rung 2 again."""
    store = MemoryStore()
    scheduler, ctrl = _script(num_samples=3, store=store)
    a, b = ctrl.add([]), ctrl.add([])
    _arrive(scheduler, ctrl, a, 1, 0.4)
    assert _arrive(scheduler, ctrl, b, 1, 0.5) == CONTINUE  # the best of two at rung 1
    assert _arrive(scheduler, ctrl, b, 2, 0.6) == PAUSE  # alone at rung 2
    assert scheduler.rungs.waiting_at("1") == 1

    restored, ctrl2 = _script(num_samples=3, store=store)
    a2, b2 = ctrl2.add([], evals=1), ctrl2.add([], evals=1)  # Ray's snapshot: b at evaluation 1
    assert a2.status == Trial.PAUSED and b2.status == Trial.PENDING
    assert restored.rungs.values[1] == {} and restored.rungs.promoted[0] == {"1"}
    assert store.records["1"] == {"values": {"1": 0.5}, "went_on": [1]}  # and so does the study
    assert restored.choose_trial_to_run(ctrl2) is b2
    assert _arrive(restored, ctrl2, b2, 2, 0.6) == PAUSE  # the same value again: it waits there again


def test_rungs_round_trip_through_the_trials_records():
    rungs = Rungs([1, 3], 3.0)
    for t, v in zip("abcde", (0.1, 0.4, 0.3, 0.2, 0.05)):
        rungs.record(0, t, v)
    assert [rungs.may_go_on(0, t) for t in "abcd"] == [False, True, False, False]  # floor(5/3) = 1 place
    rungs.promoted[0].add("b")
    rungs.failed.add("d")
    rungs.ended.add("e")
    rungs.cut.add("e")  # stopped by ASHA there: PRUNED in the study
    states = {"d": "FAIL", "e": "PRUNED"}
    again = Rungs.from_records([1, 3], 3.0, {t: (rungs.record_of(t), states.get(t, "RUNNING")) for t in "abcde"})
    assert again == rungs
    assert not any(again.may_go_on(0, t) for t in "abcd")  # b holds the one place
    again.failed.add("b")  # b failed after it went on: its place is free, and c is the best left
    assert [again.may_go_on(0, t) for t in "abcd"] == [False, False, True, False]


@pytest.mark.parametrize("order", list(itertools.islice(itertools.permutations(range(5)), 0, 120, 17)))
def test_every_trial_that_went_on_was_in_the_top_share_when_it_did(order):
    rng = random.Random(sum(order))
    curves = [[rng.random() for _ in range(6)] for _ in order]
    curves = [curves[i] for i in order]
    evals = replay(curves, max_t=6, grace_period=1, reduction_factor=3, concurrency=2)
    # rung 1 (evaluation 1) of 5 trials has floor(5/3) = 1 place; rung 3 then holds that one trial,
    # and a settled rung has at least one place: it runs to the end.
    went_on = [i for i, e in enumerate(evals) if e > 1]
    assert len(went_on) == 1 and evals[went_on[0]] == 6
    best_at_1 = max(range(5), key=lambda i: curves[i][0])
    assert went_on[0] in (best_at_1, *range(3))  # the best of all, or of the first three (one place then)


def test_a_trial_paused_by_something_else_runs_again_rather_than_wait_for_ever():
    scheduler, ctrl = _script(num_samples=1)
    a = ctrl.add([])
    a.status = Trial.PAUSED  # not at any rung: e.g. Ray paused it
    assert scheduler.choose_trial_to_run(ctrl) is a


def test_a_paused_multi_worker_trial_frees_its_workers_group_once(monkeypatch):
    """A Ray Train trial that waits at a rung must not hold its workers' CPUs and GPUs meanwhile."""
    from tune import callbacks
    from tune.folder import TRAIN_GROUP

    removed = []
    monkeypatch.setattr(callbacks, "_remove_group", removed.append)
    release = callbacks.ReleaseTrainWorkers()
    waiting = type("T", (), {"status": "PAUSED", "last_result": {TRAIN_GROUP: "g1"}})()
    running = type("T", (), {"status": "RUNNING", "last_result": {TRAIN_GROUP: "g2"}})()
    single = type("T", (), {"status": "PAUSED", "last_result": {}})()
    for _ in range(3):
        release.on_step_end(iteration=0, trials=[waiting, running, single])
    assert removed == ["g1"]


def test_a_trial_that_ends_on_its_own_at_a_rung_leaves_its_place_to_the_next_best():
    """E.g. its schedule (num_epochs) or its patience ends it at a rung's evaluation."""
    scheduler, ctrl = _script(num_samples=2)
    a, b = ctrl.add([]), ctrl.add([])
    a.status = Trial.RUNNING
    scheduler.on_trial_result(ctrl, a, {"evals": 1, "m": 0.9})
    ctrl.stop_trial(a)  # its last report: Ray ends it (on_trial_complete) whatever the decision
    assert "0" in scheduler.rungs.ended and scheduler.rungs.waiting_at("0") is None
    assert _arrive(scheduler, ctrl, b, 1, 0.5) == CONTINUE  # the one place is b's
    curves = [[0.9], [0.5, 0.5, 0.5, 0.5]]
    assert replay(curves, max_t=4, grace_period=1, reduction_factor=2) == [1, 4]


def _study_search(tmp_path, name="s", **kwargs):
    import optuna

    from tune.searcher import StudySearch

    return StudySearch({"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="best_m", study_name=name,
                       storage_url=f"sqlite:///{tmp_path / 's.db'}", eval_metric="m", max_evals=4, seed=0,
                       n_startup_trials=5, **kwargs)


class Generator:
    """Ray's SearchGenerator around the limiter, as the scheduler reaches it."""

    def __init__(self, limiter, num_samples):
        self.searcher, self.num_samples, self.made = limiter, num_samples, 0

    def is_finished(self):
        return self.made >= self.num_samples


def test_the_study_holds_a_waiting_trial_running_with_its_rung_then_pruned(tmp_path):
    """The scheduler's decisions reach the Optuna study through the searcher Ray wraps: a waiting
    trial is RUNNING with its ASHA record; one stopped while it waited is PRUNED at its last value;
    the limiter frees the waiting trial's slot."""
    import optuna

    from tune.folder import ASHA_ATTR

    study_search = _study_search(tmp_path, num_samples=2)  # the study's target: no more trials after 2
    limiter = PauseAwareLimiter(study_search, max_concurrent=1)
    scheduler, ctrl = _script(num_samples=2)
    ctrl.search_alg = Generator(limiter, 2)

    def add() -> object:
        trial = ctrl.add([])
        assert limiter.suggest(trial.trial_id) is not None
        return trial

    a = add()
    assert limiter.suggest("extra") is None  # one slot, taken by a
    assert _arrive(scheduler, ctrl, a, 1, 0.4) == PAUSE
    limiter.on_trial_result("0", {"m": 0.4, "evals": 1})
    study = optuna.load_study(study_name="s", storage=study_search.storage_url)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert study.trials[0].user_attrs[ASHA_ATTR] == {"values": {"1": 0.4}, "went_on": []}
    assert limiter.waiting == {"0"}
    b = add()  # a's slot is free
    assert _arrive(scheduler, ctrl, b, 1, 0.9) == CONTINUE  # the one place of 2; a is stopped (rung settled)
    limiter.on_trial_result("1", {"m": 0.9, "evals": 1})
    assert a.status == Trial.TERMINATED
    limiter.on_trial_complete("0")  # what Ray tells the searcher when it stops a PAUSED trial
    study = optuna.load_study(study_name="s", storage=study_search.storage_url)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED and study.trials[0].value == pytest.approx(0.4)
    assert study.trials[1].user_attrs[ASHA_ATTR] == {"values": {"1": 0.9}, "went_on": [1]}


def test_searcher_and_scheduler_through_a_worker_death_a_kill_and_a_restore_behind_the_study(tmp_path):
    """The searcher and the scheduler together, through Ray's public calls in Ray's order, no Ray
    cluster: a trial's worker dies while it waits at a rung (it waits again at its next report); the
    driver is killed after Ray's last snapshot, while the study went on (a trial asked for after the
    snapshot, a promotion); the restored searcher and scheduler, rebuilt from the study, hand the lost
    trial to the next Ray trial, keep the promotion, and count no ghost at the rung."""
    import pickle

    import optuna

    from tune.folder import ASHA_ATTR, TRIAL_NUMBER

    def driver(searcher):
        limiter = PauseAwareLimiter(searcher, max_concurrent=1)
        scheduler, ctrl = _script(num_samples=3)  # rungs at 1 and 2 evaluations, half kept
        ctrl.search_alg = Generator(limiter, 3)
        return limiter, scheduler, ctrl

    def new_trial(limiter, ctrl, trial_id=None):
        trial = ctrl.add([], trial_id=trial_id)  # on_trial_add
        config = limiter.suggest(trial.trial_id)
        ctrl.search_alg.made = len(ctrl.trials)
        return trial, config

    def report(limiter, scheduler, ctrl, trial, evals, value):
        decision = _arrive(scheduler, ctrl, trial, evals, value)  # Ray: the scheduler first, then the searcher
        limiter.on_trial_result(trial.trial_id, {"m": value, "evals": evals})
        return decision

    tuner_pkl = pickle.dumps(_study_search(tmp_path, name="e2e", num_samples=3))  # Ray pickles the searcher at the start
    searcher = pickle.loads(tuner_pkl)
    limiter, scheduler, ctrl = driver(searcher)
    a, config_a = new_trial(limiter, ctrl)
    assert config_a[TRIAL_NUMBER] == 0
    assert report(limiter, scheduler, ctrl, a, 1, 0.6) == PAUSE  # alone at rung 1
    scheduler.on_trial_error(ctrl, a)  # its worker dies while it waits; Ray retries it, and starts it
    a.status = Trial.PENDING
    scheduler.on_trial_add(ctrl, a)
    assert report(limiter, scheduler, ctrl, a, 2, 0.7) == PAUSE  # it waits again, one evaluation on
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Ray's last snapshot: a, paused after evaluation 2
    b, config_b = new_trial(limiter, ctrl)
    assert report(limiter, scheduler, ctrl, b, 1, 0.5) == PAUSE  # two at rung 1: the place is a's
    assert scheduler.choose_trial_to_run(ctrl) is a  # promoted: in the study at once
    # The driver is killed here.

    restored = pickle.loads(tuner_pkl)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    limiter2, scheduler2, ctrl2 = driver(restored)
    a2 = ctrl2.add([], evals=2)  # Ray restores a from its snapshot (as PENDING)
    assert a2.trial_id == "0" and a2.status == Trial.PENDING  # it went on from rung 1: it runs
    assert scheduler2.rungs.promoted[0] == {"0"} and scheduler2.rungs.values[0] == {"0": 0.6}  # no ghost of b
    ctrl2.search_alg.made = 1
    b2, config_b2 = new_trial(limiter2, ctrl2, "b2")  # the trial asked for after the snapshot: handed on
    assert config_b2 == config_b
    assert report(limiter2, scheduler2, ctrl2, b2, 1, 0.5) == PAUSE  # it arrives at rung 1 again, alone with a
    assert scheduler2.rungs.values[0] == {"0": 0.6, "b2": 0.5}
    study = optuna.load_study(study_name="e2e", storage=restored.storage_url)
    assert [t.number for t in study.trials] == [0, 1] and all(t.state.name == "RUNNING" for t in study.trials)
    assert study.trials[1].user_attrs["ray_trial_id"] == "b2"
    assert study.trials[1].user_attrs[ASHA_ATTR] == {"values": {"1": 0.5}, "went_on": []}
    assert study.trials[0].user_attrs[ASHA_ATTR] == {"values": {"1": 0.6}, "went_on": [1]}
    assert study.trials[0].intermediate_values == {1: 0.6, 2: 0.7}


def test_an_extended_search_compares_its_new_trials_with_the_earlier_ones_at_each_rung():
    """`--resume NAME --num_samples N` runs a new Ray run over the study: its scheduler starts from the
    rungs of the trials that ended before, so a new trial meets every trial that reached its rung,
    the ones ASHA stopped there included (alone, it would wait for peers)."""
    store = MemoryStore()  # the first run's 4 trials, ended: a went on from rungs 1 and 2, b c d were cut
    store.records = {"a": {"values": {"1": 0.9, "2": 0.8}, "went_on": [1, 2]},
                     "b": {"values": {"1": 0.7}, "went_on": []}, "c": {"values": {"1": 0.6}, "went_on": []},
                     "d": {"values": {"1": 0.5}, "went_on": []}}
    store.states = {"a": "COMPLETE", "b": "PRUNED", "c": "PRUNED", "d": "PRUNED"}
    scheduler, ctrl = _script(num_samples=3, store=store)  # the extension: 3 new trials
    e = ctrl.add([])
    assert _arrive(scheduler, ctrl, e, 1, 0.95) == CONTINUE  # 5 at rung 1, 2 places, a holds one: e's
    assert set(scheduler.rungs.values[0]) == {"a", "b", "c", "d", e.trial_id}
    f = ctrl.add([])
    assert _arrive(scheduler, ctrl, f, 1, 0.65) == PAUSE  # 3 places of 6, all ranked above it (b was cut, yet ranks)
    g = ctrl.add([])
    assert _arrive(scheduler, ctrl, g, 1, 0.75) == CONTINUE  # 3rd of 7: the free place is its, not b's
    assert _arrive(scheduler, ctrl, e, 2, 0.85) == PAUSE  # rung 2's one place (of 2 trials) is a's
    assert store.records[e.trial_id] == {"values": {"1": 0.95, "2": 0.85}, "went_on": [1]}

    fresh, ctrl2 = _script(num_samples=3, store=MemoryStore())  # the same trial with no earlier peers
    alone = ctrl2.add([])
    assert _arrive(fresh, ctrl2, alone, 1, 0.95) == PAUSE  # it would wait for peers
