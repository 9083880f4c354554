"""ASHA without start-up promotions: a trial goes on from a rung only if it is among the best
1/reduction_factor of the trials that reached that rung; one that reaches a rung with too few peers
waits there (paused, its checkpoint kept) until enough have arrived. The ASHA paper's promotion
variant (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", Algorithm 2).

Why not Ray's ASHAScheduler: its asynchronous rule lets a trial through a rung when the rung has too
few recorded results to compare it with, so the first trials of a search pass every rung. On the
shipped CPU space that used 41-49% of FIFO's optimizer updates where these rungs allow 25%
(benchmarks/README.md, 3).

The rules (`Rungs`; the same object decides in a search and in `replay`):

- Rungs at `grace_period * reduction_factor**k` evaluations, below `max_t`. A trial's value at a
  rung is its `metric` at that evaluation (not its best so far). A non-finite value is not recorded:
  the trial failed and ends on its own.
- Rung k has floor(n_k / reduction_factor) places, n_k counting every trial recorded there. A trial
  at rung k **may go on** if it is among that many best of the rung's trials that have not failed
  or ended there on their own (such a trial was a fair peer; it just cannot go on) and a place is
  free. A trial ASHA stopped at the rung still ranks there (it cannot go on, and it holds no
  place): within one search no trial arrives at a rung after such a stop, but an extended search
  (`--resume NAME --num_samples N`) adds trials that must beat it. The
  places that trials which went on hold (failed ones give theirs back) are taken, the rest go to
  the best candidates first. So no rung ever sends on more than its share, even though an early
  trial that went on may later drop out of the top: with every trial's curve run to the end, the
  budget is that of synchronous successive halving (16 trials, rungs at 2 and 8 of 16, a quarter
  kept: 25% of FIFO).
  Ties: the earlier arrival ranks first.
- On arrival at a rung, a trial that may go on continues; otherwise it **waits** (PAUSE: Ray keeps
  its last checkpoint, the one of this evaluation, and frees its worker).
- A rung is **settled** when no more trials can arrive at it: the searcher has made all its trials,
  every live trial that is running or pending has been recorded there, and every trial waiting
  below it can neither go on nor wait for more peers (its own rung is settled). A settled rung has
  at least one place (so a small search still trains its best trial to max_t). A waiting trial
  whose rung is settled and that may not go on is stopped (Optuna: PRUNED, at its last value).
- When a worker is free, a waiting trial that may go on resumes from its checkpoint before any new
  trial starts (the highest rung first, the best value first).
- No worker idles while a trial could run: waiting trials do not count against the search's
  concurrency (`PauseAwareLimiter`), so the searcher makes a new trial in their place.

The state (every trial's values at its rungs and the rungs it went on from) is the Optuna study's:
after every change the scheduler writes each changed trial's record as a user attribute of its
study trial (through the searcher's `save_asha`), and a restarted driver rebuilds the rungs from
the study (`asha_records`), whose trial states say who failed or ended. So a search whose driver
was killed resumes with its waiting trials still waiting at their rungs: Ray restores them as
pending, and `on_trial_add` pauses them again (a trial the study holds as finished is stopped
rather than run again). Ray's own snapshot of a trial can be older than the study: a restored
trial's records at rungs beyond its last result in Ray's record are dropped, and it arrives at
them again. A waiting trial whose worker died is filed by Ray as pending and started again (Ray
starts every pending trial; there is no public way to file it as paused): at its next report it
waits again, one evaluation later, unless it may go on.

Only Ray's public scheduler API: CONTINUE/PAUSE/STOP, `choose_trial_to_run`, `stop_trial`, the
`supports_buffered_results` property, `Trial.set_status` of a trial being added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from tune.folder import CONFIRM_OF


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The rungs' evaluations: grace, grace*rf, grace*rf^2, ... below max_t."""
    if grace_period < 1 or reduction_factor <= 1:
        raise ValueError(f"ASHA needs grace_period >= 1 and reduction_factor > 1 (got {grace_period}, "
                         f"{reduction_factor})")
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return out


@dataclass
class Rungs:
    """The rules of the promotion variant on recorded values; no Ray in here."""

    milestones: list[int]
    reduction_factor: float
    values: list[dict[str, float]] = field(default_factory=list)  # per rung: trial -> value, in arrival order
    promoted: list[set[str]] = field(default_factory=list)  # per rung: trials that went on from it
    failed: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)  # ended at their last rung without going on (on their own, stopped)
    cut: set[str] = field(default_factory=set)  # of those, the ones ASHA stopped there: they still rank

    def __post_init__(self) -> None:
        self.values = self.values or [{} for _ in self.milestones]
        self.promoted = self.promoted or [set() for _ in self.milestones]

    def rung_reached(self, trial_id: str, evals: int) -> int | None:
        """The lowest rung this evaluation reaches that the trial has not been recorded at."""
        return next((k for k, m in enumerate(self.milestones) if m <= evals and trial_id not in self.values[k]),
                    None)

    def record(self, k: int, trial_id: str, value: float) -> None:
        self.values[k][trial_id] = value

    def forget_after(self, trial_id: str, evals: int) -> bool:
        """Drop the trial's records at the rungs beyond `evals` evaluations (and its promotions from
        them); whether there were any."""
        changed = False
        for k, m in enumerate(self.milestones):
            if m > evals and trial_id in self.values[k]:
                del self.values[k][trial_id]
                self.promoted[k].discard(trial_id)
                changed = True
        return changed

    def goers(self, k: int, settled: bool = False) -> list[str]:
        """The trials of rung k that may go on now: the free places of the rung go to the best of its
        trials (as many as it has places) that have not failed, ended or gone on yet. A rung of n
        trials has floor(n / rf) places, a settled one at least one; trials that went on hold theirs
        (failed ones give theirs back)."""
        quota = int(len(self.values[k]) // self.reduction_factor)
        quota = max(quota, 1) if settled else quota
        ranked = sorted((t for t in self.values[k] if t not in self.failed | (self.ended - self.cut)),
                        key=lambda t: -self.values[k][t])
        free = quota - len(self.promoted[k] - self.failed)
        return [t for t in ranked[:quota] if t not in self.promoted[k] | self.cut][:max(free, 0)]

    def may_go_on(self, k: int, trial_id: str, settled: bool = False) -> bool:
        return trial_id in self.goers(k, settled)

    def waiting_at(self, trial_id: str) -> int | None:
        """The rung a trial waits at: its highest recorded rung, if it did not go on from there."""
        recorded = [k for k in range(len(self.milestones)) if trial_id in self.values[k]]
        if not recorded or trial_id in self.failed | self.ended or trial_id in self.promoted[recorded[-1]]:
            return None
        return recorded[-1]

    def settled(self, active: Iterable[str], waiting: dict[str, int], all_made: bool) -> list[bool]:
        """For each rung, whether no more trials can arrive at it (see the module's docstring), given
        the live trials: `active` (running or pending) and `waiting` ({trial: its rung})."""
        out: list[bool] = []
        for k in range(len(self.milestones)):
            below = {j for j in waiting.values() if j < k}  # can a trial waiting there still come up?
            out.append(all_made and all(t in self.values[k] for t in active)
                       and all(out[j] and not any(waiting.get(t) == j for t in self.goers(j, settled=True))
                               for j in below))
        return out

    def verdicts(self, active: Iterable[str], waiting: dict[str, int], all_made: bool) -> tuple[list, set]:
        """The waiting trials that may go on now ([(rung, trial)]), and those to stop (their rung is
        settled and has no place for them)."""
        settled = self.settled(active, waiting, all_made)
        goers = [set(self.goers(k, settled[k])) for k in range(len(self.milestones))]
        promotable = [(k, t) for t, k in waiting.items() if t in goers[k]]
        hopeless = {t for t, k in waiting.items() if settled[k] and t not in goers[k]}
        return promotable, hopeless

    def record_of(self, trial_id: str) -> dict[str, Any]:
        """The trial's record (what the study keeps): its value at each rung it reached, by the rung's
        evaluation, and the rungs it went on from."""
        return {"values": {str(m): self.values[k][trial_id] for k, m in enumerate(self.milestones)
                           if trial_id in self.values[k]},
                "went_on": [m for k, m in enumerate(self.milestones) if trial_id in self.promoted[k]]}

    def trials(self) -> set[str]:
        return set().union(*self.values) if self.values else set()

    def add_record(self, trial_id: str, record: dict[str, Any], state: str) -> None:
        """A trial's record (`record_of`) and its state in the study (FAIL: failed; COMPLETE or PRUNED
        while waiting at a rung: ended there)."""
        for k, m in enumerate(self.milestones):
            if str(m) in (record.get("values") or {}):
                self.record(k, trial_id, float(record["values"][str(m)]))
            if m in (record.get("went_on") or ()):
                self.promoted[k].add(trial_id)
        if state == "FAIL":
            self.failed.add(trial_id)
        elif state in ("COMPLETE", "PRUNED") and self.waiting_at(trial_id) is not None:
            self.ended.add(trial_id)
            if state == "PRUNED":  # stopped by ASHA at that rung
                self.cut.add(trial_id)

    @classmethod
    def from_records(cls, milestones: list[int], reduction_factor: float,
                     records: dict[str, tuple[dict[str, Any], str]]) -> Rungs:
        """The rungs rebuilt from each trial's record and its state in the study."""
        rungs = cls(list(milestones), reduction_factor)
        for trial_id, (record, state) in records.items():
            rungs.add_record(trial_id, record, state)
        return rungs


class PauseAwareLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter, except that trials waiting at a rung (`waiting`, set by the
    scheduler) do not count: their workers are free, and the searcher fills them with new trials."""

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.waiting: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials - self.waiting) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, self.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion


def _find(search_alg, attribute: str):
    """The searcher in Ray's wrappers (SearchGenerator.searcher, ConcurrencyLimiter.searcher) that has
    `attribute`, or None."""
    node = search_alg
    while node is not None and not hasattr(node, attribute):
        node = getattr(node, "searcher", None)
    return node


def _all_made(search_alg) -> bool:
    """Whether no trial will be added: the study's word (StudySearch.all_made: the search runs Ray with
    unlimited samples and the study holds the target), else Ray's."""
    searcher = _find(search_alg, "all_made")
    return searcher.all_made() if searcher is not None else search_alg.is_finished()


class PromotionASHA(FIFOScheduler):
    """The search's `--scheduler asha`: see the module's docstring. `max_concurrent` is the search's
    concurrency (the same as PauseAwareLimiter's): a waiting trial resumes only into a free slot. The
    rungs are kept in the study of the searcher that has `asha_records`/`save_asha` (StudySearch);
    without one (`replay`) they live in memory only."""

    def __init__(self, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, max_concurrent: int):
        super().__init__()
        if mode != "max":
            raise ValueError("PromotionASHA ranks trials by a metric to maximise (mode 'max')")
        self._time_attr, self._metric, self.max_concurrent = time_attr, metric, max_concurrent
        self.rungs = Rungs(milestones(grace_period, reduction_factor, max_t), reduction_factor)
        self._loaded = False
        self._settling = False
        self._closed: set[str] = set()  # trials the study holds as finished when the driver (re)started
        self._restorable: dict[str, dict[str, Any]] = {}  # records of running trials, until Ray restores them
        self._written: dict[str, dict[str, Any]] = {}  # each trial's record as the study has it
        self._erred: str | None = None  # the trial of the last on_trial_error

    @property
    def supports_buffered_results(self) -> bool:  # one decision per evaluation: a rung is never skipped
        return False

    # --- Ray's scheduler API -------------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """A trial Ray restored (after the driver was killed) that waited at a rung waits again; one the
        study holds as finished is stopped (`_settle`). Ray also adds again a trial whose worker died
        and that it retries (right after `on_trial_error`): it has not failed."""
        self._load(tune_controller)
        retried, self._erred = self._erred == trial.trial_id, None
        if trial.trial_id in self._restorable:
            self.rungs.add_record(trial.trial_id, self._restorable.pop(trial.trial_id), "RUNNING")
            self._written[trial.trial_id] = self.rungs.record_of(trial.trial_id)
        if trial.status not in (Trial.ERROR, Trial.TERMINATED):
            self.rungs.failed.discard(trial.trial_id)
            # What Ray restores a trial to (its last result in Ray's snapshot, and the checkpoint of it)
            # can be behind what these rules saw before the driver was killed: the trial runs those
            # evaluations again (seeded: the same values), and arrives at those rungs again.
            done = (trial.last_result or {}).get(self._time_attr)  # Ray's Trial and ReplayTrial both keep it
            self.rungs.forget_after(trial.trial_id, int(done or 0))
            self._save(tune_controller)
        # Restored (not retried: Ray has filed that one as PENDING already, and starts it; it waits
        # again at its next report): Ray files it under the status it has after this call.
        if trial.status == Trial.PENDING and not retried and (
                trial.trial_id in self._closed or self.rungs.waiting_at(trial.trial_id) is not None):
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict[str, Any]) -> str:
        if CONFIRM_OF in trial.config:  # a confirmation-stage run (tune/confirm.py): its full schedule, no rung
            return TrialScheduler.CONTINUE
        value, evals = result.get(self._metric), result.get(self._time_attr)
        waits = self.rungs.waiting_at(trial.trial_id)
        if waits is not None:  # it waited at a rung, and Ray started it again (its worker had died)
            return self._decide(tune_controller, trial, waits)
        k = None if evals is None else self.rungs.rung_reached(trial.trial_id, int(evals))
        if k is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return TrialScheduler.CONTINUE
        self.rungs.record(k, trial.trial_id, float(value))
        return self._decide(tune_controller, trial, k)

    def _decide(self, tune_controller, trial: Trial, k: int) -> str:
        """Go on from rung k, stop, or wait there (the trial waits at rung k, unless it goes on)."""
        promotable, hopeless = self._verdicts(tune_controller)
        if (k, trial.trial_id) in promotable:
            self.rungs.promoted[k].add(trial.trial_id)
            decision = TrialScheduler.CONTINUE
        elif trial.trial_id in hopeless:
            self.rungs.cut.add(trial.trial_id)
            decision = TrialScheduler.STOP
        else:
            decision = TrialScheduler.PAUSE
        self._save(tune_controller)
        self._settle(tune_controller, exclude=trial)
        return decision

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._erred = trial.trial_id  # if Ray retries it, its on_trial_add comes next
        self.rungs.failed.add(trial.trial_id)
        self._settle(tune_controller)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict[str, Any]) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def _ended(self, tune_controller, trial: Trial) -> None:
        """A trial that ends at a rung it did not go on from (on its own, or stopped) holds no
        candidacy for its places."""
        if self.rungs.waiting_at(trial.trial_id) is not None:
            self.rungs.ended.add(trial.trial_id)
        self._settle(tune_controller)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """A waiting trial that may go on (into a free slot), else the first pending trial."""
        self._load(tune_controller)
        promotable = self._settle(tune_controller)
        trials = tune_controller.get_trials()
        busy = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED}
        promotable = [(k, t) for k, t in promotable if t in paused]
        if promotable and busy < self.max_concurrent:
            k, trial_id = max(promotable, key=lambda kt: (kt[0], self.rungs.values[kt[0]][kt[1]]))
            self.rungs.promoted[k].add(trial_id)
            self._save(tune_controller)
            return paused[trial_id]
        # A paused trial that waits at no rung was not paused by these rules (a pause the rules do not
        # know of): it runs like a pending one rather than wait for ever.
        strays = [t for t in paused.values() if self.rungs.waiting_at(t.trial_id) is None
                  and t.trial_id not in self._closed]
        if strays and busy < self.max_concurrent:
            return strays[0]
        return next((t for t in trials if t.status == Trial.PENDING), None)

    def debug_string(self) -> str:
        counts = ", ".join(f"{m}: {len(v)} ({len(p)} on)" for m, v, p in
                           zip(self.rungs.milestones, self.rungs.values, self.rungs.promoted))
        return f"PromotionASHA rungs (evaluations: trials, went on) {counts}"

    # --- its own state -------------------------------------------------------------------------

    def _live(self, tune_controller) -> tuple[set[str], dict[str, int]]:
        """Live trials: (running or pending, {waiting trial: its rung})."""
        active, waiting = set(), {}
        for t in tune_controller.get_live_trials():
            if t.status in (Trial.TERMINATED, Trial.ERROR) or t.trial_id in self._closed \
                    or CONFIRM_OF in (t.config or {}):
                continue
            k = self.rungs.waiting_at(t.trial_id)
            if k is None:
                active.add(t.trial_id)
            else:
                waiting[t.trial_id] = k
        return active, waiting

    def _verdicts(self, tune_controller) -> tuple[list, set]:
        active, waiting = self._live(tune_controller)
        return self.rungs.verdicts(active, waiting, _all_made(tune_controller.search_alg))

    def _settle(self, tune_controller, exclude: Trial | None = None) -> list[tuple[int, str]]:
        """Stop each waiting trial whose rung is settled and that may not go on, and each paused one
        the study holds as finished; tell the limiter which trials wait (they free their slot).
        Returns the waiting trials that may go on (stopping the others does not change them: those
        hold no place)."""
        if self._settling:  # stop_trial below calls on_trial_remove
            return []
        self._settling = True
        try:
            promotable, hopeless = self._verdicts(tune_controller)
            for trial in list(tune_controller.get_live_trials()):
                if (trial.trial_id in hopeless or trial.trial_id in self._closed) and trial is not exclude \
                        and trial.status == Trial.PAUSED:
                    if trial.trial_id in hopeless:
                        self.rungs.cut.add(trial.trial_id)
                    tune_controller.stop_trial(trial)
            limiter = _find(tune_controller.search_alg, "waiting")
            if limiter is not None:  # those that may go on keep their slot
                limiter.waiting = set(self._live(tune_controller)[1]) - {t for _, t in promotable}
        finally:
            self._settling = False
        return promotable

    def _save(self, tune_controller) -> None:
        """Write each trial's record that changed to the study (a trial Ray reports on is RUNNING there)."""
        store = _find(tune_controller.search_alg, "save_asha")
        if store is None:
            return
        for trial_id in self.rungs.trials():
            record = self.rungs.record_of(trial_id)
            if self._written.get(trial_id) != record:
                store.save_asha(trial_id, record)
                self._written[trial_id] = record

    def _load(self, tune_controller) -> None:
        """Once, before the first decision: the rungs as the study has them (empty in a new search)."""
        if self._loaded:
            return
        self._loaded = True
        store = _find(tune_controller.search_alg, "asha_records")
        if store is None:
            return
        records = store.asha_records()
        self._closed = {t for t, (_, state) in records.items() if state in ("COMPLETE", "PRUNED", "FAIL")}
        # A finished trial's record counts at once; a running one's when Ray restores the trial
        # (`on_trial_add`): a trial asked for after Ray's last snapshot is run again under another Ray
        # id (StudySearch hands it to the next trial), and its old record must not hold a place.
        self.rungs = Rungs.from_records(self.rungs.milestones, self.rungs.reduction_factor,
                                        {t: r for t, r in records.items() if t in self._closed})
        self._restorable = {t: r for t, (r, state) in records.items() if t not in self._closed}
        self._written = {t: self.rungs.record_of(t) for t in self.rungs.trials()}


# --- replay: the same rules on given learning curves, without Ray ---------------------------------


class ReplayTrial:
    """A trial of `replay`: what the scheduler reads of a Ray trial."""

    config: dict = {}  # Ray's trial config: a replayed trial is never a confirmation run

    def __init__(self, trial_id: str, curve: list[float], evals: int = 0):
        self.trial_id, self.curve, self.status, self.evals = trial_id, curve, Trial.PENDING, evals

    @property
    def last_result(self) -> dict[str, int]:  # what Ray's trial holds of its last report
        return {"evals": self.evals} if self.evals else {}

    def set_status(self, status: str) -> None:
        self.status = status


class ReplaySearch:
    """What the scheduler reads of Ray's search algorithm: whether all trials are made, and the
    waiting trials (which, as in PauseAwareLimiter, do not count against the concurrency)."""

    def __init__(self, num_samples: int):
        self.num_samples, self.made, self.waiting = num_samples, 0, set()

    def is_finished(self) -> bool:
        return self.made >= self.num_samples


class ReplayController:
    """Ray's TuneController as a scheduler sees it (get_trials, get_live_trials, stop_trial, search_alg)."""

    def __init__(self, scheduler: PromotionASHA, curves: list[list[float]]):
        self.scheduler, self.search_alg, self.trials = scheduler, ReplaySearch(len(curves)), []
        self.curves = [list(c) for c in curves]  # of the trials the searcher has yet to make

    def get_trials(self) -> list[ReplayTrial]:
        return self.trials

    def get_live_trials(self) -> list[ReplayTrial]:
        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def stop_trial(self, trial: ReplayTrial) -> None:
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = Trial.TERMINATED

    def add(self, curve: list[float], evals: int = 0, trial_id: str | None = None) -> ReplayTrial:
        """A new trial; or, with `evals`, one Ray restores after that many evaluations (Ray's trial ids are
        random: `trial_id`; by default the trial's index)."""
        trial = ReplayTrial(trial_id or str(len(self.trials)), curve, evals)
        self.trials.append(trial)
        self.search_alg.made += 1
        self.scheduler.on_trial_add(self, trial)
        return trial

    def fill(self, concurrency: int) -> None:
        """As Ray's step does: the searcher makes a trial if a slot is free (waiting trials free
        theirs), then the trial the scheduler chooses starts."""
        while sum(t.status == Trial.RUNNING for t in self.trials) < concurrency:
            live = {t.trial_id for t in self.get_live_trials()}
            if self.curves and len(live - self.search_alg.waiting) < concurrency \
                    and not any(t.status == Trial.PENDING for t in self.trials):
                self.add(self.curves.pop(0))
            chosen = self.scheduler.choose_trial_to_run(self)
            if chosen is None:
                return
            chosen.status = Trial.RUNNING


def replay(curves: list[list[float]], max_t: int, grace_period: int, reduction_factor: float,
           concurrency: int = 1) -> list[int]:
    """The evaluations each trial runs under PromotionASHA when the trials are made in this order and
    every evaluation takes the same time. `curves[i][e - 1]` is trial i's metric at evaluation e; a
    curve shorter than max_t ends on its own there (early stopping, a failure)."""
    scheduler = PromotionASHA("evals", "metric", "max", max_t, grace_period, reduction_factor, concurrency)
    ctrl = ReplayController(scheduler, curves)
    while True:
        ctrl.fill(concurrency)
        running = [t for t in ctrl.trials if t.status == Trial.RUNNING]
        if not running:
            break
        for trial in running:
            trial.evals += 1
            decision = scheduler.on_trial_result(ctrl, trial, {"evals": trial.evals,
                                                               "metric": trial.curve[trial.evals - 1]})
            if decision == TrialScheduler.STOP or trial.evals >= min(max_t, len(trial.curve)):
                ctrl.stop_trial(trial)
            elif decision == TrialScheduler.PAUSE:
                trial.status = Trial.PAUSED
    return [t.evals for t in ctrl.trials]
