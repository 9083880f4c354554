"""tune/warmstart.py and the searcher's warm start: decided on studies written here (no Ray, no training)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
import yaml

from tune import warmstart
from tune.folder import INFORMED_BY, RAY_TRIAL_ID, TRIAL_NUMBER, WARM_FROM, SearchState, lock_search
from tune.searcher import StudySearch, own_trials
from tune.space import load_space
from tune.warmstart import WarmStartError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tune/spaces/demo.yaml"
TASK = {"train": "aaaa", "val": "bbbb", "labels": [0, 1], "metric": "val/f1_macro", "direction": "maximize",
        "model": "tiny"}


def _space_file(tmp_path: Path, name: str, change=None) -> Path:
    spec = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    spec["params"]["train_file"] = str(ROOT / "afqmc/demo_data/train.jsonl")
    if change:
        change(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _source(tmp_path: Path, name: str, trials: list[tuple[str, dict, float | dict]], task=TASK, space_file=None,
            study=True) -> Path:
    """A finished search folder: search.json, its space's copy and a study whose trials are given as
    (state, params, value: a COMPLETE trial's value or a PRUNED one's {evaluation: value})."""
    space_file = space_file or _space_file(tmp_path, f"{name}_space")
    space = load_space(space_file)
    exp = tmp_path / "results" / name
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(space_file.read_text(encoding="utf-8"), encoding="utf-8")
    SearchState(space=str(space_file), num_samples=len(trials), baseline=space.baseline(),
                settings=asdict(space.settings), cwd=str(tmp_path), task=dict(task)).save(exp)
    if not study:
        return exp
    dists = space.distributions()
    made = optuna.create_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}", direction="maximize")
    made.add_trials([optuna.trial.create_trial(
        state=optuna.trial.TrialState[state], params=params, distributions={k: dists[k] for k in params},
        value=value if state == "COMPLETE" else None,
        intermediate_values=value if isinstance(value, dict) else {}, user_attrs={RAY_TRIAL_ID: f"{name}{i}"})
        for i, (state, params, value) in enumerate(trials)])
    return exp


def _params(lr, w=2.0, dropout=0.1, warmup=0.1):
    return {"learning_rate": lr, "class_weights": w, "dropout": dropout, "warmup_ratio": warmup}


def test_warm_start_enqueues_the_top_k_first_after_the_baseline_and_informs_tpe_on_the_same_task(tmp_path):
    old = _source(tmp_path, "old", [
        ("COMPLETE", _params(5e-4, 2.2, 0.1, 0.1), 0.60),  # the old baseline: the new one too, not enqueued
        ("COMPLETE", _params(1e-3), 0.70),
        ("PRUNED", _params(3e-4), {1: 0.50, 2: 0.72}),  # cut by ASHA: ranked by its best evaluation
        ("COMPLETE", _params(1.2e-3), 0.65),
        ("FAIL", _params(1.4e-3), None),  # failed: neither enqueued nor informing
    ])
    space = load_space(DEMO)
    plan = warmstart.plan([str(old)], space, TASK, top_k=2)
    assert [e["from"] for e in plan["enqueue"]] == [f"{old} trial 2", f"{old} trial 1"]
    assert plan["enqueue"][0]["value"] == 0.72 and plan["enqueue"][0]["params"] == _params(3e-4)
    assert [i["from"] for i in plan["inform"]] == [f"{old} trial {n}" for n in range(4)]
    assert plan["sources"][0]["same_task"] and plan["sources"][0]["trials"] == 4

    searcher = StudySearch(space.distributions(), metric="best/val/f1_macro", study_name="new",
                           storage_url=f"sqlite:///{tmp_path / 'new.db'}", eval_metric="val/f1_macro", max_evals=6,
                           seed=0, n_startup_trials=4, baseline=space.baseline(), num_samples=5, warm_start=plan)
    asked = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [{k: v for k, v in a.items() if k != TRIAL_NUMBER} for a in asked] == \
        [space.baseline(), _params(3e-4), _params(1e-3)]
    study = searcher.study
    informing = [t for t in study.trials if INFORMED_BY in t.user_attrs]
    assert len(informing) == 4 and {t.state.name for t in informing} == {"COMPLETE", "PRUNED"}
    assert sorted(t.value for t in informing if t.value is not None) == [0.60, 0.65, 0.70]
    assert [t.intermediate_values for t in informing if t.state.name == "PRUNED"] == [{1: 0.50, 2: 0.72}]
    assert study.trials[1].user_attrs[WARM_FROM] == f"{old} trial 2"
    assert len(own_trials(study)) == 3  # the informing trials are no trials of this search
    assert not searcher.all_made()
    searcher.suggest("t3"), searcher.suggest("t4")
    assert searcher.all_made() and searcher.suggest("t5") == StudySearch.FINISHED


def test_a_warm_start_from_another_task_only_enqueues(tmp_path):
    other = _source(tmp_path, "other", [("COMPLETE", _params(1e-3), 0.7), ("COMPLETE", _params(6e-4), 0.6)],
                    task={**TASK, "val": "cccc"})
    plan = warmstart.plan([str(other)], load_space(DEMO), TASK, top_k=3)
    assert plan["inform"] == [] and not plan["sources"][0]["same_task"]
    assert "other val pairs" in plan["sources"][0]["why"]
    assert len(plan["enqueue"]) == 2
    other_model = _source(tmp_path, "model", [("COMPLETE", _params(1e-3), 0.7)], task={**TASK, "model": "hfl/x"})
    plan = warmstart.plan([str(other_model)], load_space(DEMO), TASK, top_k=3)
    assert plan["inform"] == [] and "model" in plan["sources"][0]["why"]
    older = _source(tmp_path, "older", [("COMPLETE", _params(1e-3), 0.7)], task={})  # before task records
    plan = warmstart.plan([str(older)], load_space(DEMO), TASK, top_k=3)
    assert plan["inform"] == [] and "no task record" in plan["sources"][0]["why"] and len(plan["enqueue"]) == 1


def test_parameters_outside_the_new_space_are_dropped_and_values_outside_its_ranges_skipped(tmp_path):
    def wider(spec):  # the old space searched weight_decay and lr up to 1e-2; it fixed dropout at 0.2
        spec["params"]["weight_decay"] = {"type": "uniform", "low": 0.0, "high": 0.1, "baseline": 0.01}
        spec["params"]["learning_rate"]["high"] = 1e-2
        spec["params"]["dropout"] = 0.2

    old_space = _space_file(tmp_path, "wider", wider)
    params = {"learning_rate": 5e-3, "class_weights": 3.0, "warmup_ratio": 0.05, "weight_decay": 0.05}
    old = _source(tmp_path, "old", [("COMPLETE", params, 0.7),
                                    ("COMPLETE", {**params, "learning_rate": 1e-3, "weight_decay": 0.0}, 0.6)],
                  space_file=old_space)
    plan = warmstart.plan([str(old)], load_space(DEMO), TASK, top_k=3)
    first, second = plan["enqueue"]
    # lr 5e-3 is outside the new [2e-4, 1.5e-3]: skipped (the sampler draws it); weight_decay is not
    # searched here: dropped; dropout was fixed there at 0.2, inside the new range: kept.
    assert first["params"] == {"class_weights": 3.0, "dropout": 0.2, "warmup_ratio": 0.05}
    notes = " ".join(first["notes"])
    assert "learning_rate=0.005 skipped" in notes and "weight_decay dropped" in notes
    assert second["params"] == {"learning_rate": 1e-3, "class_weights": 3.0, "dropout": 0.2, "warmup_ratio": 0.05}
    # The same task, yet neither informs TPE: one lacks a value of the new space, the other ran with a
    # weight decay (0.0) other than this search's fixed one (0.01).
    assert plan["inform"] == [] and len(plan["left_out"]) == 2

    searcher = StudySearch(load_space(DEMO).distributions(), metric="best/val/f1_macro", study_name="n",
                           storage_url=f"sqlite:///{tmp_path / 'n.db'}", eval_metric="val/f1_macro", max_evals=6,
                           seed=0, baseline=load_space(DEMO).baseline(), num_samples=4, warm_start=plan)
    searcher.suggest("b")
    partial = searcher.suggest("w")
    assert {k: partial[k] for k in first["params"]} == first["params"]
    assert 2e-4 <= partial["learning_rate"] <= 1.5e-3  # drawn by the sampler


@pytest.mark.parametrize("case, phrase", [
    ("missing", "no such folder"),
    ("not_a_search", "not a search folder"),
    ("no_study", "holds no Optuna study"),
    ("running", "still running"),
    ("labels", "labels [0, 1, 2]"),
    ("direction", "minimized"),
    ("twice", "given twice"),
])
def test_a_source_that_cannot_be_used_is_refused_with_the_folder_and_the_reason(tmp_path, case, phrase):
    good = [("COMPLETE", _params(1e-3), 0.7)]
    if case == "missing":
        sources = [tmp_path / "nope"]
    elif case == "not_a_search":
        (tmp_path / "plain").mkdir()
        sources = [tmp_path / "plain"]
    elif case == "no_study":
        sources = [_source(tmp_path, "empty", good, study=False)]
    elif case == "labels":
        sources = [_source(tmp_path, "three", good, task={**TASK, "labels": [0, 1, 2]})]
    elif case == "direction":
        sources = [_source(tmp_path, "lower", good, task={**TASK, "direction": "minimize"})]
    else:
        sources = [_source(tmp_path, "src", good)]
    if case == "twice":
        sources = sources * 2
    lock = lock_search(sources[0]) if case == "running" else None
    try:
        with pytest.raises(WarmStartError, match=re.escape(phrase)) as err:
            warmstart.plan([str(s) for s in sources], load_space(DEMO), TASK, top_k=3)
        assert str(sources[0]) in str(err.value)
    finally:
        if lock is not None:
            lock.close()


@pytest.mark.slow  # it launches the command line in a process
def test_a_refused_warm_start_starts_nothing(tmp_path):
    """The command line: a source that is not a search stops the new search before Ray starts, and
    no results folder is made."""
    (tmp_path / "plain").mkdir()
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(_space_file(tmp_path, "s")),
                           "--name", "new", "--results_dir", str(tmp_path / "results"), "--warm_start",
                           str(tmp_path / "plain")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a search folder" in proc.stderr
    assert "ray:" not in proc.stdout and not (tmp_path / "results" / "new").exists()
