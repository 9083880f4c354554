"""What the search prints: a live line per event with the running counts, and the final leaderboard."""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from afqmc.metrics import best_key
from afqmc.config import PRIMARY
from tune.folder import SHORT, TrialState, failure_reason, fmt_param, format_params
from tune.results import TrialRecord, searched_params, trial_number, trial_state


def progress(elapsed_s: float, num_samples: int, trials: list[tuple[int, bool]], per_trial: int | None) -> str:
    """Where a search is: trials done of planned, optimizer updates used of the budget, the time so
    far and at most how long is left. `trials`: (updates done, ended) of each trial started;
    `per_trial`: the most updates a trial may make (its schedule, cut at max_evals). The time left
    assumes every unfinished trial runs to the end at the rate so far: ASHA's cuts make it shorter."""
    done = sum(ended for _, ended in trials)
    used = sum(steps for steps, _ in trials)
    clock = f"{int(elapsed_s) // 60:02d}:{int(elapsed_s) % 60:02d}"
    if not per_trial:
        return f"{clock} {done}/{num_samples} trials"
    budget = num_samples * per_trial
    left = sum(per_trial - steps for steps, ended in trials if not ended) + (num_samples - len(trials)) * per_trial
    eta = ""
    if used and elapsed_s > 0 and left > 0:
        minutes = left / (used / elapsed_s) / 60
        eta = f", <= {math.ceil(minutes)} min left" if minutes >= 1 else ", < 1 min left"
    return f"{clock} {done}/{num_samples} trials, {used:,}/{budget:,} updates{eta}"


class LiveView(tune.Callback):
    """One line per trial event, each with the search's progress (`progress`), plus the counts and
    the best trial so far after each trial ends and every minute.

    Stateless between runs (the counts come from Ray's trial list), so it is right after a resume.
    """

    def __init__(self, max_evals: int, metric: str = PRIMARY, asha_metric: str | None = None,
                 status_every_s: float = 60.0, num_samples: int | None = None,
                 earlier_steps: list[int] | None = None):
        self.max_evals, self.num_samples = max_evals, num_samples
        # The updates of trials that ended in an earlier Ray run of the search (an extension, a resume
        # with nothing unfinished): they count among its trials and updates.
        self.earlier = [(int(steps), True) for steps in earlier_steps or []]
        self._trials: list = []
        self.metric, self.best = metric, best_key(metric)
        self.asha_metric = asha_metric if asha_metric != metric else None
        self.status_every_s = status_every_s
        self._started = time.time()
        self._last_status = self._started
        self._waiting: set[str] = set()  # trials told to be waiting at a rung

    def setup(self, **info):
        self._started = self._last_status = time.time()

    def _print(self, text: str, ended=None) -> None:
        """`ended`: a trial that is ending now (Ray sets its status after this callback)."""
        def steps_of(t) -> tuple[int, bool]:
            last = t.last_result or {}
            return int(last.get("step", 0) or 0), t.status in ("TERMINATED", "ERROR") or t is ended

        reports = [t.last_result for t in self._trials if (t.last_result or {}).get("planned_updates")]
        per_trial = None
        if reports:  # every trial's schedule (train() reports it), cut at the search's max_evals
            r = reports[0]
            per_trial = min(int(r["planned_updates"]), self.max_evals * int(r["eval_every"]))
        trials = self.earlier + [steps_of(t) for t in self._trials]
        # A confirmation stage (tune/confirm.py) adds runs beyond num_samples: they count as trials here.
        line = progress(time.time() - self._started, max(self.num_samples or 0, len(trials)), trials, per_trial)
        print(f"[{line}] {text}", flush=True)

    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trials = trials
        tag = " (baseline)" if trial_number(trial) == 0 else ""  # the searcher suggests the baseline first
        self._waiting.discard(trial.trial_id)
        done = (trial.last_result or {}).get("evals")
        if done:  # it waited at an ASHA rung, or its worker died: it goes on from its checkpoint
            self._print(f"trial {trial_number(trial)}{tag} goes on from its checkpoint of eval {done}")
            return
        self._print(f"trial {trial_number(trial)} started{tag}: {format_params(searched_params(trial.config))}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._trials = trials
        if self.metric not in result or failure_reason(result):  # a failure is printed when the trial ends
            return
        asha = f", {self.asha_metric} {result.get(self.asha_metric, math.nan):.4f}" if self.asha_metric else ""
        self._print(f"trial {trial_number(trial)} eval {result.get('evals')}/{self.max_evals}: {self.metric} "
                    f"{result[self.metric]:.4f}{asha} (trial best {result.get(self.best, math.nan):.4f}, "
                    f"train loss {result.get('train/loss', math.nan):.4f})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trials = trials
        last = trial.last_result or {}
        state = trial_state("TERMINATED", last, self.max_evals)
        if state == TrialState.FAILED:
            reason = failure_reason(last)
            self._print(f"trial {trial_number(trial)} FAILED after {last.get('evals', 0)} evals: {reason}",
                        ended=trial)
            self._status(trials, ended=(trial, "TERMINATED"))
            return
        how = "stopped early by ASHA" if state == TrialState.STOPPED else "finished"
        self._print(f"trial {trial_number(trial)} {how} after {last.get('evals', 0)} evals: best {self.metric} "
                    f"{last.get(self.best, math.nan):.4f}", ended=trial)
        self._status(trials, ended=(trial, "TERMINATED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"trial {trial_number(trial)} FAILED: {_short_error(trial)}", ended=trial)
        self._status(trials, ended=(trial, "ERROR"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"trial {trial_number(trial)} lost its worker ({_short_error(trial)}); retrying from its "
                    f"last checkpoint (failure {trial.run_metadata.num_failures} of at most {trial.max_failures} retried)")

    def on_step_end(self, iteration, trials, **info):
        for t in trials:  # Ray pauses a trial that reached an ASHA rung before enough peers (tune/scheduler.py)
            if t.status == "PAUSED" and t.trial_id not in self._waiting:
                self._waiting.add(t.trial_id)
                self._print(f"trial {trial_number(t)} waits at eval {(t.last_result or {}).get('evals')}: too few "
                            f"trials at this ASHA rung yet to rank it")
        if time.time() - self._last_status >= self.status_every_s:
            self._status(trials)

    def _status(self, trials, ended=None) -> None:
        """The counts; `ended` is (trial, status) of a trial whose status Ray sets after this callback."""
        self._last_status = time.time()
        status = {t.trial_id: t.status for t in trials}
        if ended:
            status[ended[0].trial_id] = ended[1]
        states = [trial_state(status[t.trial_id], t.last_result, self.max_evals) for t in trials]
        running = sum(status[t.trial_id] == "RUNNING" for t in trials)
        waiting = sum(status[t.trial_id] == "PAUSED" for t in trials)
        counts = (f"{running} running, {f'{waiting} waiting at a rung, ' if waiting else ''}"
                  f"{states.count(TrialState.FINISHED)} finished, "
                  f"{states.count(TrialState.STOPPED)} stopped early, {states.count(TrialState.FAILED)} failed")
        scored = [t for t in trials if _finite((t.last_result or {}).get(self.best))]
        if scored:
            best = max(scored, key=lambda t: (t.last_result[self.best], -trial_number(t)))
            counts += (f" | best so far: trial {trial_number(best)} {self.metric} "
                       f"{best.last_result[self.best]:.4f} ({format_params(searched_params(best.config))})")
        self._print(counts, ended=ended[0] if ended else None)


def _short_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        lines = [line.strip() for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "unknown error"
    except (OSError, TypeError):
        return "see the trial's error.txt"


def print_leaderboard(trials: list[TrialRecord], param_names: list[str], max_rows: int = 10,
                      metric: str = PRIMARY) -> None:
    ranked = sorted((t for t in trials if t.best_value is not None), key=lambda t: (-t.best_value, t.number))
    if not ranked:
        print("no trial reported a result")
        return
    headers = ["rank", "trial", "state", "evals", "value", "val_f1", "thr", "val_auc", "val_acc"] + \
              [SHORT.get(n, n) for n in param_names]
    rows = []
    for rank, t in enumerate(ranked[:max_rows], start=1):
        m = t.best_metrics
        rows.append([str(rank), f"{t.number}{' (baseline)' if t.is_baseline else ''}", t.state, str(t.evals),
                     f"{t.best_value:.4f}", _fmt(m.get(PRIMARY)), _fmt(m.get("val/threshold"), "{:.3f}"),
                     _fmt(m.get("val/auc")), _fmt(m.get("val/accuracy"))]
                    + [fmt_param(t.params.get(n)) for n in param_names])
    baseline = next((t for t in ranked[max_rows:] if t.is_baseline), None)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\ntop {len(rows)} of {len(trials)} trials by their best {metric} (value; val numbers chose the "
          f"trials, so they are optimistic):")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if baseline:
        print(f"baseline: trial {baseline.number}, {metric} {baseline.best_value:.4f}, "
              f"rank {ranked.index(baseline) + 1}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(value) if _finite(value) else "-"
