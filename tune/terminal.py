"""What the search prints: a live line per event with the running counts, and the final leaderboard."""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from afqmc.metrics import best_key
from tune.folder import FAILED, PRIMARY, SHORT, fmt_param, format_params
from tune.results import TrialRecord, trial_number, trial_state


class LiveView(tune.Callback):
    """One line per trial event, plus the counts and the best trial so far after each trial ends.

    Stateless between runs (the counts come from Ray's trial list), so it is right after a resume.
    """

    def __init__(self, max_evals: int, metric: str = PRIMARY, asha_metric: str | None = None,
                 status_every_s: float = 60.0):
        self.max_evals = max_evals
        self.metric, self.best = metric, best_key(metric)
        self.asha_metric = asha_metric if asha_metric != metric else None
        self.status_every_s = status_every_s
        self._started = time.time()
        self._last_status = self._started

    def setup(self, **info):
        self._started = self._last_status = time.time()

    def _print(self, text: str) -> None:
        elapsed = int(time.time() - self._started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        tag = " (baseline)" if trial_number(trial) == 1 else ""
        self._print(f"trial {trial_number(trial)} started{tag}: {format_params(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric not in result or result.get(FAILED):  # a failure is printed when the trial ends
            return
        asha = f", {self.asha_metric} {result.get(self.asha_metric, math.nan):.4f}" if self.asha_metric else ""
        self._print(f"trial {trial_number(trial)} eval {result.get('evals')}/{self.max_evals}: {self.metric} "
                    f"{result[self.metric]:.4f}{asha} (trial best {result.get(self.best, math.nan):.4f}, "
                    f"train loss {result.get('train/loss', math.nan):.4f})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        state = trial_state("TERMINATED", last, self.max_evals)
        if state == "failed":
            self._print(f"trial {trial_number(trial)} FAILED after {last.get('evals', 0)} evals: {last[FAILED]}")
            self._status(trials, ended=(trial, "TERMINATED"))
            return
        how = "stopped early by ASHA" if state == "stopped early" else "finished"
        self._print(f"trial {trial_number(trial)} {how} after {last.get('evals', 0)} evals: best {self.metric} "
                    f"{last.get(self.best, math.nan):.4f}")
        self._status(trials, ended=(trial, "TERMINATED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"trial {trial_number(trial)} FAILED: {_short_error(trial)}")
        self._status(trials, ended=(trial, "ERROR"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"trial {trial_number(trial)} lost its worker ({_short_error(trial)}); retrying from its "
                    f"last checkpoint (failure {trial.run_metadata.num_failures} of at most {trial.max_failures} retried)")

    def on_step_end(self, iteration, trials, **info):
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
        counts = (f"{running} running, {states.count('finished')} finished, "
                  f"{states.count('stopped early')} stopped early, {states.count('failed')} failed")
        scored = [t for t in trials if _finite((t.last_result or {}).get(self.best))]
        if scored:
            best = max(scored, key=lambda t: (t.last_result[self.best], -trial_number(t)))
            counts += (f" | best so far: trial {trial_number(best)} {self.metric} "
                       f"{best.last_result[self.best]:.4f} ({format_params(best.config)})")
        self._print(counts)


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
