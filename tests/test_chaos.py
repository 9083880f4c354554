"""Random-kill chaos (issue 13): a small search whose driver is SIGKILLed at 3 seeded random moments
and resumed after each, with trial workers killed at random moments too (benchmarks/chaos.py; its
full run kills 10 times)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos  # noqa: E402


@pytest.mark.slow
@pytest.mark.full
def test_a_search_killed_at_random_moments_ends_every_trial_once(tmp_path):
    res = chaos.run(tmp_path, **chaos.QUICK, seed=3)
    log = (tmp_path / "chaos.log").read_text(encoding="utf-8")[-4000:]
    assert res["rc"] == 0 and not res["reference_problems"], log
    assert res["driver_kills"] == chaos.QUICK["kills"], (res["segments"], log)
    assert res["worker_kills_done"] >= 1, res["segments"]
    # Every planned trial ended once; the study agrees with trials.csv; the best model predicts.
    assert res["lost"] == 0 and res["duplicated"] == 0 and res["problems"] == [], (res["problems"], log)
    # The same trials as the uninterrupted search, and the same value at every evaluation both ran.
    against = res["against_reference"]
    assert against["params_differ"] == [] and against["values_differ"] == [], against
    assert against["evaluations_compared"] >= chaos.QUICK["num_samples"]


@pytest.mark.slow
def test_asha_search_killed_while_a_trial_waits_at_a_rung_resumes_with_nothing_lost(tmp_path):
    """tune/scheduler.py under a SIGKILL of the driver while a trial waits (paused) at an ASHA rung:
    the resumed search ends every trial once, the study agrees, and it spends exactly what the
    scheduler's rules replayed on its curves predict (one trial at a time: a decided order)."""
    import random
    import time

    import yaml

    from tune.scheduler import replay
    from tune.space import load_space

    space = chaos.chaos_space(tmp_path, num_samples=4, max_steps=20, max_failures=2)
    spec = yaml.safe_load(space.read_text(encoding="utf-8"))
    spec["search"]["max_concurrent_trials"] = 1  # one at a time: the order of arrival is the trials' order
    space.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    settings = load_space(space).settings
    exp_dir, log = tmp_path / "results" / "killed", tmp_path / "chaos.log"
    since = []

    def a_trial_waits() -> bool:  # for a second (its pause is done), per the scheduler's record in the study
        rungs = chaos.study_rungs(exp_dir, settings)
        if rungs is not None and any(rungs.waiting_at(t) is not None for t in rungs.values[0]):
            since.append(since[0] if since else time.time())
        return bool(since) and time.time() - since[0] > 1.0

    first = chaos.run_driver(["--space", str(space), "--name", "killed", "--results_dir", str(tmp_path / "results")],
                             log, None, None, random.Random(0), kill_when=a_trial_waits)
    assert first["killed"], log.read_text(encoding="utf-8")[-3000:]
    resumed = chaos.run_driver(["--resume", str(exp_dir)], log, None, None, random.Random(0))
    assert resumed["rc"] == 0, log.read_text(encoding="utf-8")[-3000:]
    killed = chaos.verify(exp_dir, 4)
    assert killed["problems"] == [] and killed["lost"] == 0 and killed["duplicated"] == 0, killed["problems"]

    # Each trial ran the evaluations the rules give it on its own curve, no more, none lost.
    ran = {n: sorted(t["evals"]) for n, t in killed["trials"].items()}
    assert all(e == list(range(1, len(e) + 1)) for e in ran.values()), ran
    curves = []
    for n in sorted(ran):
        rows = chaos.trial_reports(exp_dir / f"trial_{_ray_id(exp_dir, n)}")
        values = {int(r["evals"]): float(r[settings.asha_metric]) for r in rows if settings.asha_metric in r}
        curves.append([values.get(e, values[max(values)]) for e in range(1, settings.max_evals + 1)])
    predicted = replay(curves, settings.max_evals, settings.grace_period, settings.reduction_factor, concurrency=1)
    assert [len(ran[n]) for n in sorted(ran)] == predicted
    # The study holds what the resumed search decided too (every trial reached the first rung).
    saved = chaos.study_rungs(exp_dir, settings)
    ray_ids = {_ray_id(exp_dir, n) for n in ran}
    assert set(saved.values[0]) == ray_ids, (saved.values, ray_ids)
    assert sum(predicted) < 4 * settings.max_evals  # ASHA cut some


def _ray_id(exp_dir, number: int) -> str:
    import csv

    with open(exp_dir / "trials.csv", encoding="utf-8") as fh:
        return next(r["trial_id"] for r in csv.DictReader(fh) if int(r["trial"]) == number)



def test_a_checkpoint_ray_deleted_after_its_snapshot_is_given_back_from_the_newest(tmp_path, monkeypatch):
    """The race the kill-while-waiting search found: Ray (num_to_keep=1) deleted a trial's previous
    latest checkpoint when it saved a newer one, and the driver was killed before Ray's next snapshot,
    which still names the deleted one; restoring would fail and lose the trial. On resume the named
    folder gets a copy of the trial's newest checkpoint; a finished trial, or one whose checkpoint is
    there, is left alone."""
    from types import SimpleNamespace

    import optuna
    from ray import tune

    import tune.results as results
    from tune.folder import RAY_TRIAL_ID
    from tune.search import restore_missing_checkpoints

    def trial_dir(name: str, checkpoints: list[int]) -> SimpleNamespace:
        for i in checkpoints:
            (tmp_path / name / f"checkpoint_{i:06d}").mkdir(parents=True)
            (tmp_path / name / f"checkpoint_{i:06d}" / "state.txt").write_text(f"{name} {i}")
        return SimpleNamespace(trial_id=name, last=tmp_path / name / "checkpoint_000001")

    raced, intact, ended = trial_dir("raced", [0, 2]), trial_dir("intact", [1]), trial_dir("ended", [0])
    study = optuna.create_study(direction="maximize")
    for t, state in ((raced, "RUNNING"), (intact, "RUNNING"), (ended, "COMPLETE")):
        study.add_trial(optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), value=0.5 if state == "COMPLETE" else None,
            user_attrs={RAY_TRIAL_ID: t.trial_id}))

    class Analysis:  # Ray's public ExperimentAnalysis, as the snapshot would give it
        def __init__(self, path):
            self.trials = [raced, intact, ended]

        def get_last_checkpoint(self, trial):
            return SimpleNamespace(path=str(trial.last))

    monkeypatch.setattr(tune, "ExperimentAnalysis", Analysis)
    monkeypatch.setattr(results, "load_study", lambda exp_dir: study)
    notes = restore_missing_checkpoints(tmp_path)
    assert (raced.last / "state.txt").read_text() == "raced 2"  # the newest, under the name Ray restores
    assert len(notes) == 1 and "raced" in notes[0] and "checkpoint_000002" in notes[0]
    assert not (tmp_path / "ended" / "checkpoint_000001").exists()  # a finished trial is not touched
    assert sorted(p.name for p in (tmp_path / "intact").iterdir()) == ["checkpoint_000001"]
