"""The anytime curve (tune/anytime.py) on synthetic trial records, its plot, and compare.py --anytime."""

from __future__ import annotations

import json

import pytest

from tune.anytime import anytime_curve, reach, report_times
from tune.folder import TrialState
from tune.results import TrialRecord, best_trial

M = "val/f1_macro"


def _rows(start: float, evals: list[tuple[int, float, float]], restart_at: int | None = None) -> list[dict]:
    """Ray-like reports: (evals, seconds after `start`, value) each, 10 updates an evaluation; from
    the report at index `restart_at` on, a run resumed from a checkpoint (time_since_restore and
    iterations from 0)."""
    rows, run_start, iters = [], start, 0
    for i, (e, t, value) in enumerate(evals):
        if i == restart_at:
            run_start, iters = start + t - 1.0, 0  # the resumed run began a second before this report
        iters += 1
        since = start + t - run_start
        rows.append({"evals": e, "step": 10 * e, M: value, "timestamp": int(start + t), "time_since_restore": since,
                     "iterations_since_restore": iters, "time_total_s": t})
    return rows


def _trial(number: int, rows: list[dict], kept: bool = True, baseline: bool = False) -> TrialRecord:
    best = max(rows, key=lambda r: r[M])
    return TrialRecord(trial_id=f"t{number}", number=number, status="TERMINATED", state=TrialState.FINISHED,
                       evals=rows[-1]["evals"], params={}, is_baseline=baseline, best_value=best[M],
                       best_evals=best["evals"], best_checkpoint="ckpt" if kept else None, steps=rows[-1]["step"],
                       history=rows)


def _search() -> list[TrialRecord]:
    """Four trials from t = 1000.3: the baseline (0), trial 1 (the best; resumed from the checkpoint of
    its 1st evaluation, it runs its 2nd again), trial 2 (ties trial 1 later: a higher number), trial 3
    without a kept checkpoint (its higher value cannot be the summary's best)."""
    t0 = 1000.3
    return [_trial(0, _rows(t0, [(1, 2.0, 0.40), (2, 4.0, 0.45), (3, 6.0, 0.44)]), baseline=True),
            _trial(1, _rows(t0, [(1, 3.0, 0.42), (2, 5.0, 0.50), (2, 7.5, 0.50), (3, 9.0, 0.61)], restart_at=2)),
            _trial(2, _rows(t0 + 6.5, [(1, 2.0, 0.30), (2, 4.0, 0.61)])),
            _trial(3, _rows(t0 + 9.5, [(1, 1.0, 0.70)]), kept=False)]


def test_report_times_place_each_report_within_its_second_and_follow_a_resume():
    rows = _rows(1000.3, [(1, 2.0, 0.4), (2, 4.6, 0.5), (3, 9.0, 0.6)], restart_at=2)
    times = report_times(rows)
    assert times == sorted(times)
    assert times[:2] == pytest.approx([1002.3, 1004.9], abs=0.5)
    assert times[2] == pytest.approx(1009.3, abs=1.0)  # a run of its own: its start is found again
    assert all(int(t) == r["timestamp"] or abs(t - r["timestamp"]) < 1 for t, r in zip(times, rows))


def test_anytime_is_monotone_and_ends_at_the_best_trials_value():
    trials = _search()
    scores = {"t1:3": {"f1_macro": 0.58}, "t0:2": {"f1_macro": 0.43}}
    curve = anytime_curve(trials, M, scores)
    best = best_trial(trials)
    for key in ("updates", "wall_s", "best"):
        assert curve[key] == sorted(curve[key]), key
    assert curve["best"][-1] == best.best_value == 0.61 and curve["trial"][-1] == best.number == 1
    # Every report that raised the best, by wall time, and the end of the spend: the updates of all
    # trials so far (trial 3's count, its value does not), the steps trial 1 redid on resume once.
    assert list(zip(curve["trial"], curve["evals"], curve["best"])) == [
        (0, 1, 0.40), (1, 1, 0.42), (0, 2, 0.45), (1, 2, 0.50), (1, 3, 0.61), (1, 3, 0.61)]
    assert curve["updates"] == [10, 20, 30, 40, 70, 90]  # 110 if trial 1's redone 10 updates counted twice
    assert curve["updates"][-1] == sum(t.steps for t in trials)
    assert curve["wall_s"][0] == pytest.approx(2.0, abs=0.6) and curve["wall_s"][-1] == pytest.approx(10.5, abs=1.0)
    assert curve["test_f1"] == [None, None, 0.43, None, 0.58, 0.58]  # only models scored on held-out test
    assert curve["baseline"] == {"trial": 0, "value": 0.45, "test_f1": 0.43}
    assert reach(curve, 0.99 * 0.5) == {"updates": 40, "wall_s": curve["wall_s"][3], "value": 0.50, "trial": 1}
    assert reach(curve, 0.62) is None and reach(curve, 0.5, "test_f1")["value"] == 0.58


def test_a_search_without_kept_models_has_an_empty_curve():
    trial = _trial(0, _rows(0.0, [(1, 1.0, 0.4)]), kept=False, baseline=True)
    curve = anytime_curve([trial], M)
    assert curve["best"] == curve["updates"] == [] and curve["baseline"]["value"] == 0.4


def _summary_folder(tmp_path, name: str, curve: dict, **more) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"name": name, "metric": M, "anytime": curve, **more}))
    return str(folder)


def test_compare_draws_several_searches_on_one_anytime_plot(tmp_path, capsys):
    from matplotlib.image import imread

    from tune import compare

    curve = anytime_curve(_search(), M, {"t1:3": {"f1_macro": 0.58}})
    other = {**curve, "best": [b - 0.05 for b in curve["best"]], "test_f1": [None] * len(curve["best"])}
    out = tmp_path / "anytime.png"
    assert compare.main([_summary_folder(tmp_path, "a", curve), _summary_folder(tmp_path, "b", other),
                         "--anytime", str(out)]) == 0
    img = imread(out)[..., :3]
    assert img.shape[0] >= 600 and img.shape[1] >= 1000  # two rows: val, and held-out test where scored
    assert (img.max(axis=2) - img.min(axis=2) > 0.2).mean() > 0.002  # lines in colour
    text = capsys.readouterr().out
    assert "a: best val/f1_macro 0.6100 (trial 1) reached after 70 of its 90 updates" in text and "b: best" in text
    # A folder without the curve (a summary from before it) is named, and nothing is drawn.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"name": "old"}))
    assert compare.main([str(tmp_path / "old"), "--anytime", str(tmp_path / "x.png")]) == 2
    assert "no anytime curve" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_compare_names_what_a_warm_started_or_extended_search_built_on(tmp_path, capsys):
    """Beside a cold search, the anytime plot and its lines say what the others took from earlier work:
    the updates a warm start's sources spent, and an extension's growth."""
    from tune import compare

    curve = anytime_curve(_search(), M)
    warm = {"top_k": 3, "sources": [{"path": "results/first", "trials": 8, "same_task": True, "why": "same",
                                     "updates": 1200, "informing": 8}], "enqueued": [], "left_out": []}
    ext = [{"from": 8, "to": 16, "started": "2026-12-07T10:00:00", "updates_spent": 900,
            "before": {"best": 0.5, "best_trial": 3, "updates": 1200, "trials": 8},
            "after": {"best": 0.6, "best_trial": 12, "updates": 2100, "trials": 16}}]
    dirs = [_summary_folder(tmp_path, "cold", curve), _summary_folder(tmp_path, "warm", curve, warm_start=warm),
            _summary_folder(tmp_path, "grown", curve, extensions=ext)]
    assert compare.main([*dirs, "--anytime", str(tmp_path / "a.png")]) == 0
    text = capsys.readouterr().out
    assert "warm: best" in text and "(warm start from first: +1,200 updates before)" in text
    assert "grown: best" in text and "(extended 8->16)" in text
    lines = compare.reuse_lines(ext, warm, M)
    assert lines[0].startswith("extended from 8 to 16 trials") and "spent 900 optimizer updates" in lines[0]
    assert "warm start from results/first (8 finished trials): 8 inform TPE" in lines[1]


def test_the_wall_clock_leaves_out_an_extended_searchs_pause_between_its_runs():
    """Two trials of the first run, then one of an extension an hour later: the curve's seconds count
    only the time some trial ran (the updates, every one)."""
    first = [_trial(0, _rows(1000.0, [(1, 10.0, 0.5), (2, 20.0, 0.55)]), baseline=True),
             _trial(1, _rows(1000.0, [(1, 12.0, 0.6), (2, 30.0, 0.62)]))]
    later = _trial(2, _rows(4600.0, [(1, 10.0, 0.7), (2, 20.0, 0.71)]))
    curve = anytime_curve(first + [later], M)
    assert curve["updates"][-1] == 60
    assert curve["wall_s"][-1] == pytest.approx(30.0 + 20.0, abs=1.0)  # 30 s of the first run, 20 of the second
    assert curve["trial"][-1] == 2 and curve["best"][-1] == 0.71
