"""The anytime curve of a search: the best value of its ranking metric so far, against what it spent.

summary.json["anytime"] (written by tune/reports.py, drawn as plots/anytime.png, and by
`python tune/compare.py --anytime OUT.png A B ...` for several searches on one plot):

    metric    the search's ranking metric (search.metric, val): what `best` is
    updates   optimizer updates used by the whole search at that moment: the sum over trials of the
              highest step each had reported by then (a step that a resumed trial runs again from a
              checkpoint counts once; what a trial did after its last report is not yet counted)
    wall_s    seconds since the search's first trial started (Ray's start and the driver's data
              preparation before it are not counted; a search that was down between a kill and
              its resume counts that time)
    best      the best value of `metric` over every report so far: the trial the summary would
              name best if the search had stopped then (ties: the lower trial number)
    trial     that trial's number; `evals`: its evaluation that holds the value (at the last point, the
              evaluation whose model the trial kept: of equal values, a later one may be)
    test_f1   the held-out test F1-macro of that model where it was scored (test_scores.json: its
              trial and evaluation), else null; never read by a choice
    baseline  the baseline trial's number, best value and held-out test F1 (null where none)

One point per report that raised the best, and a last point at the end of the search's spend
(the best unchanged): a step function, non-decreasing in `updates`, `wall_s` and `best`; its last
`best` is the summary's best trial's value. Reports are ordered by wall time (Ray's `timestamp`,
in whole seconds, refined with `time_since_restore` within a trial's run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tune.folder import TEST_SCORES
from tune.results import TrialRecord


def report_times(history: list[dict[str, Any]]) -> list[float]:
    """The wall-clock time (epoch seconds) of each of a trial's reports.

    Ray's `timestamp` is time.time() cut to whole seconds; `time_since_restore` counts from the
    start of the trial's (latest) run in the process. Within one run the start lies in
    [timestamp - time_since_restore, timestamp + 1 - time_since_restore) for every report: the
    middle of the intersection of those intervals, plus time_since_restore, places each report to
    well under a second. A run starts again where `iterations_since_restore` does not grow.
    """
    times: list[float] = []
    run: list[dict[str, Any]] = []

    def close() -> None:
        if not run:
            return
        if all(_num(r.get("timestamp")) and _num(r.get("time_since_restore")) for r in run):
            low = max(r["timestamp"] - r["time_since_restore"] for r in run)
            high = min(r["timestamp"] + 1 - r["time_since_restore"] for r in run)
            start = (low + high) / 2 if high > low else low
            times.extend(start + r["time_since_restore"] for r in run)
        else:  # rows without Ray's fields (older results): the timestamp, else the trial's own clock
            times.extend(float(r.get("timestamp", r.get("time_total_s", 0.0)) or 0.0) for r in run)
        run.clear()

    for row in history:
        if run and not row.get("iterations_since_restore", math.inf) > run[-1].get("iterations_since_restore", 0):
            close()
        run.append(row)
    close()
    return times


def anytime_curve(trials: list[TrialRecord], metric: str, test_scores: dict[str, Any] | None = None) -> dict[str, Any]:
    """The anytime curve of a search (see the module's docstring) from its trial records.

    `test_scores`: test_scores.json's "scores" ({"<trial_id>:<evals>": metrics}), the held-out test
    figures already computed; nothing is predicted here. The best-so-far is taken over the trials the
    summary can name best (those with a kept checkpoint: tune.results.best_trial); every trial's
    updates count.
    """
    scores = test_scores or {}
    events = []
    for t in trials:
        eligible = bool(t.best_checkpoint)  # as tune.results.best_trial
        for row, when in zip(t.history, report_times(t.history)):
            events.append((when, t.number, int(row.get("evals", 0)), int(row.get("step", 0) or 0),
                           row.get(metric) if eligible else None, t.trial_id))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    busy = _busy_clock([(_trial_start(t), max(report_times(t.history))) for t in trials if t.history])
    steps: dict[int, int] = {}  # the highest step each trial has reported so far
    points: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    for when, number, evals, step, value, trial_id in events:
        steps[number] = max(steps.get(number, 0), step)
        if _num(value) and (best is None or (value, -number) > (best[0], -best[1])):
            best = (float(value), number)
            test = scores.get(f"{trial_id}:{evals}")
            points.append({"updates": sum(steps.values()), "wall_s": busy(when), "best": best[0],
                           "trial": number, "evals": evals, "test_f1": test.get("f1_macro") if test else None})
    if points:  # the end of the search's spend: the summary's best, its kept evaluation (of equal values)
        last = next(t for t in trials if t.number == points[-1]["trial"])
        test = scores.get(f"{last.trial_id}:{last.best_evals}")
        points.append({**points[-1], "updates": sum(steps.values()), "wall_s": busy(events[-1][0]),
                       "evals": last.best_evals, "test_f1": test.get("f1_macro") if test else None})
    baseline = next((t for t in trials if t.is_baseline), None)
    base_test = scores.get(f"{baseline.trial_id}:{baseline.best_evals}") if baseline else None
    return {"metric": metric, **{k: [p[k] for p in points] for k in ("updates", "wall_s", "best", "trial", "evals",
                                                                       "test_f1")},
            "baseline": None if baseline is None or baseline.best_value is None else {
                "trial": baseline.number, "value": baseline.best_value,
                "test_f1": base_test.get("f1_macro") if base_test else None}}


def search_curve(experiment_dir: Path, trials: list[TrialRecord], metric: str,
                 test: dict[str, Any] | None) -> dict[str, Any]:
    """`anytime_curve` with the held-out test scores kept in the folder (test_scores.json), when
    they are those of the search's test pairs (`test`: summary.json's "test", its fingerprint)."""
    scores = {}
    path = Path(experiment_dir) / TEST_SCORES
    if test and path.is_file():
        cache = json.loads(path.read_text(encoding="utf-8"))
        if cache.get("fingerprint") == test.get("fingerprint"):
            scores = cache.get("scores", {})
    return anytime_curve(trials, metric, scores)


def reach(curve: dict[str, Any], target: float, key: str = "best") -> dict[str, Any] | None:
    """The first point of `curve` whose `key` (best: val; test_f1: held-out) is >= `target`: its
    updates and wall seconds; None if the curve never reaches it."""
    for i, value in enumerate(curve.get(key) or []):
        if _num(value) and value >= target:
            return {"updates": curve["updates"][i], "wall_s": curve["wall_s"][i], "value": value,
                    "trial": curve["trial"][i]}
    return None


def _busy_clock(spans: list[tuple[float, float]]):
    """Seconds since the first trial started, counting only time in which some trial ran (the union of
    the trials' spans): an extended or resumed search's pause between its runs does not count."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])

    def busy(when: float) -> float:
        return max(0.0, sum(min(end, when) - start for start, end in merged if start < when))

    return busy


def _trial_start(t: TrialRecord) -> float:
    """When the trial's first run started (its first report's time less its time since restore)."""
    first = t.history[0]
    return report_times(t.history)[0] - float(first.get("time_since_restore", first.get("time_total_s", 0.0)) or 0.0)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
