"""The confirmation stage (tune/confirm.py): decided on scripted trials and studies; one real search."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from ray.tune.schedulers import TrialScheduler

from tune import confirm
from tune.folder import CONFIRM_OF, CONFIRM_PLAN, CONFIRM_SEED, STEPS_ATTR, TRIAL_NUMBER, TrialState
from tune.results import TrialRecord, best_trial, single_best
from tune.searcher import StudySearch
from tune.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parents[1]


def _record(number, value, state=TrialState.FINISHED, confirm_of=None, seed=None, baseline=False):
    return TrialRecord(trial_id=f"t{number}", number=number, status="COMPLETE", state=state, evals=4,
                       params={"x": number}, is_baseline=baseline, best_value=value, best_checkpoint=f"/ckpt/{number}",
                       confirm_of=confirm_of, seed=seed)


def test_the_winner_is_the_best_mean_over_seeds_not_the_luckiest_trial():
    """Trial 1 is the single-seed winner (0.80); over two seeds its mean is 0.75, below trial 2's 0.785:
    the confirmed winner is trial 2's configuration, and best_model/ its best seed by val."""
    trials = [_record(0, 0.70, baseline=True), _record(1, 0.80), _record(2, 0.78),
              _record(3, 0.75, state=TrialState.STOPPED),  # cut by ASHA: not confirmed, not a seed
              _record(4, 0.70, confirm_of=1, seed=43), _record(5, 0.79, confirm_of=2, seed=43),
              _record(6, 0.69, confirm_of=0, seed=43)]
    assert single_best(trials).number == 1
    winner = confirm.confirmed_winner(trials)
    assert winner["config"] == 2 and winner["mean"] == pytest.approx(0.785) and winner["n"] == 2
    assert best_trial(trials).number == 5  # its best seed (0.79 > the original's 0.78)
    groups = confirm.groups(trials)
    assert [t.number for t in groups[1]] == [1, 4] and [t.number for t in groups[0]] == [0, 6]
    # Without the stage, the single-seed winner stands.
    assert best_trial(trials[:4]).number == 1


def _frozen(number, value, state="COMPLETE", params=None, steps=40, full=40):
    kwargs = {"value": value} if state == "COMPLETE" else {"intermediate_values": {1: value}} if state == "PRUNED" \
        else {}
    t = optuna.trial.create_trial(state=optuna.trial.TrialState[state], params=params or {"x": number / 10},
                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                                  user_attrs={STEPS_ATTR: {"steps": steps, "full": full}}, **kwargs)
    t.number = number
    return t


def test_the_plan_reruns_on_new_seeds_in_full_and_the_baseline_on_the_same_seeds():
    trials = [_frozen(0, 0.60, "PRUNED", steps=10), _frozen(1, 0.80), _frozen(2, 0.75, "PRUNED", steps=20),
              _frozen(3, 0.50, "PRUNED", steps=10), _frozen(4, 0.70)]
    plan = confirm.plan(trials, baseline_number=0, settings={"top_k": 2, "seeds": 2, "budget_share": 10},
                        search_seed=42)
    assert plan["configs"] == [1, 2, 0] and plan["seeds"] == [43, 44]
    # trial 1 ran its course: it is one of its 2 seeds; 2 and the baseline were cut: 2 new seeds each.
    assert plan["runs"] == [[1, 43], [2, 43], [0, 43], [2, 44], [0, 44]]
    assert plan["budget"]["run_updates"] == 40 and plan["budget"]["planned"] == 5 * 40

    # Within the search's own updates (120): top_k shrinks first, then the seeds.
    tight = confirm.plan(trials, 0, {"top_k": 2, "seeds": 2, "budget_share": 1.0}, 42)
    assert (tight["top_k"], tight["seeds_per_config"]) == (1, 2) and tight["runs"] == [[1, 43], [0, 43], [0, 44]]
    assert "top_k 1, seeds 2" in tight["notes"][0]
    tighter = confirm.plan(trials, 0, {"top_k": 2, "seeds": 2, "budget_share": 0.5}, 42)
    assert (tighter["top_k"], tighter["seeds_per_config"]) == (1, 1) and tighter["runs"] == [[0, 43]]
    nothing = confirm.plan(trials, 0, {"top_k": 2, "seeds": 2, "budget_share": 0.1}, 42)
    assert nothing["runs"] == [] and "no stage" in nothing["notes"][-1]


def test_no_stage_when_every_trial_failed():
    failed = [_frozen(0, 0.0, "FAIL"), _frozen(1, 0.0, "FAIL")]
    plan = confirm.plan(failed, 0, {"top_k": 2, "seeds": 2, "budget_share": 10}, 42)
    assert plan["runs"] == [] and plan["notes"] == ["no trial has a val value: no stage"]


def test_an_extended_search_confirms_only_configurations_it_has_not_seen():
    trials = [_frozen(0, 0.60, "PRUNED"), _frozen(1, 0.80), _frozen(2, 0.55, "PRUNED")]
    first = confirm.plan(trials, 0, {"top_k": 1, "seeds": 2, "budget_share": 10}, 42)
    done = []
    for of, seed in first["runs"]:
        t = _frozen(10 + len(done), 0.7, params=trials[of].params)
        t.user_attrs.update({CONFIRM_OF: of, CONFIRM_SEED: seed})
        done.append(t)
    grown = trials + [_frozen(3, 0.90)]  # the extension found a better configuration
    again = confirm.plan(grown, 0, {"top_k": 2, "seeds": 2, "budget_share": 10}, 42, done=done)
    new = [r for r in again["runs"] if (r[0], r[1]) not in {(d.user_attrs[CONFIRM_OF], d.user_attrs[CONFIRM_SEED])
                                                            for d in done}]
    assert new == [[3, 43]]  # the new winner's one seed; 1 and the baseline are confirmed already


def _searcher(tmp_path, confirm_settings, num_samples=3):
    return StudySearch({"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="best_m", study_name="s",
                       storage_url=f"sqlite:///{tmp_path / 's.db'}", eval_metric="m", max_evals=2, seed=0,
                       n_startup_trials=5, baseline={"x": 0.5}, num_samples=num_samples, confirm=confirm_settings,
                       search_seed=42)


def _run(searcher, trial_id, values, full=True):
    for evals, v in enumerate(values, start=1):
        searcher.on_trial_result(trial_id, {"m": v, "evals": evals, "step": 5 * evals, "planned_updates": 10,
                                            "eval_every": 5})
    last = {"m": values[-1], "best_m": max(values), "evals": len(values), "step": 5 * len(values),
            "planned_updates": 10}
    searcher.on_trial_complete(trial_id, last if full else {**last, "planned_evals": 2})


def test_the_stage_runs_as_trials_of_the_search_and_resumes_inside_it(tmp_path):
    """Through Ray's calls: the stage waits for the search's trials to end, hands out each run once with
    its seed and the mark that keeps ASHA off it, and, after a kill inside the stage, the restored
    searcher hands on the run asked for after the snapshot and enqueues nothing twice."""
    from tune.scheduler import PromotionASHA, ReplayController

    searcher = _searcher(tmp_path, {"top_k": 1, "seeds": 2, "budget_share": 10})
    tuner_pkl = pickle.dumps(searcher)
    configs = [searcher.suggest(f"r{i}") for i in range(3)]
    assert [c[TRIAL_NUMBER] for c in configs] == [0, 1, 2] and searcher.all_made()
    _run(searcher, "r0", [0.5])  # the baseline, cut by ASHA at its first rung (PRUNED)
    searcher.on_trial_complete("r0", {"m": 0.5, "evals": 1})
    _run(searcher, "r1", [0.6, 0.9])
    assert searcher.suggest("wait") is None  # r2 still runs: the top configurations are not known yet
    _run(searcher, "r2", [0.4, 0.45])
    first = searcher.suggest("s0")
    assert first == {**configs[1], TRIAL_NUMBER: 3, "seed": 43, CONFIRM_OF: 1}  # the winner's one new seed
    searcher.save(str(tmp_path / "state.pkl"))  # Ray's snapshot
    second = searcher.suggest("s1")
    assert second["seed"] == 43 and second[CONFIRM_OF] == 0 and second["x"] == 0.5  # the baseline, same seed
    # The driver is killed here; the restored searcher (Ray's pickle and its snapshot) goes on.
    restored = pickle.loads(tuner_pkl)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("s1b") == second  # asked after the snapshot: handed on, not asked again
    third = restored.suggest("s2")
    assert third["seed"] == 44 and third[CONFIRM_OF] == 0
    assert restored.suggest("s3") == StudySearch.FINISHED
    study = restored.study
    stage = [t for t in study.trials if CONFIRM_OF in t.user_attrs]
    assert sorted((t.user_attrs[CONFIRM_OF], t.user_attrs[CONFIRM_SEED]) for t in stage) == [(0, 43), (0, 44), (1, 43)]
    assert study.user_attrs[CONFIRM_PLAN]["runs"] == [[1, 43], [0, 43], [0, 44]]

    # ASHA lets a stage run go to the end: no rung, no cut.
    scheduler = PromotionASHA("evals", "m", "max", 4, 1, 2, 1)
    ctrl = ReplayController(scheduler, [[0.0]])
    run = ctrl.add([])
    run.config = third
    assert scheduler.on_trial_result(ctrl, run, {"evals": 1, "m": 0.1}) == TrialScheduler.CONTINUE
    assert run.trial_id not in scheduler.rungs.values[0]


def test_no_stage_without_the_setting(tmp_path):
    searcher = _searcher(tmp_path, {}, num_samples=1)
    searcher.suggest("a")
    _run(searcher, "a", [0.5, 0.6])
    assert searcher.suggest("b") == StudySearch.FINISHED


@pytest.mark.parametrize("value, phrase", [
    ("{top_k: 2, seed: 3}", "unknown key 'search.confirm.seed'"),
    ("{top_k: 2, seeds: 0}", "'search.confirm.seeds' must be an integer >= 1"),
    ("{budget_share: -1}", "'search.confirm.budget_share' must be > 0"),
    ("5", "'search.confirm' must be off, on, or a mapping"),
])
def test_bad_confirm_settings_name_the_file_line_and_key(tmp_path, value, phrase):
    text = (ROOT / "tune/spaces/demo.yaml").read_text(encoding="utf-8")
    path = tmp_path / "space.yaml"
    path.write_text(text.replace("search:\n", f"search:\n  confirm: {value}\n"), encoding="utf-8")
    with pytest.raises(SpaceError, match=phrase) as err:
        load_space(path)
    assert f"{path}:7" in str(err.value)


def test_the_stage_is_on_in_both_afqmc_spaces_and_off_in_the_demo():
    assert load_space(ROOT / "tune/spaces/demo.yaml").settings.confirm == {}
    for name in ("afqmc_cpu", "default"):
        assert load_space(ROOT / f"tune/spaces/{name}.yaml").settings.confirm == {"top_k": 3, "seeds": 2,
                                                                                  "budget_share": 1.0}


def test_mean_f1_gain_bootstrap_is_paired_and_covers_the_observed_gain():
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = [np.where(rng.random(400) < 0.8, y, 1 - y) for _ in range(2)]
    poor = [np.where(rng.random(400) < 0.6, y, 1 - y) for _ in range(2)]
    out = confirm.mean_f1_gain_bootstrap(y, good, poor)
    low, high = out["ci95"]
    assert low <= out["gain_f1_macro"] <= high and low > 0
    same = confirm.mean_f1_gain_bootstrap(y, good, good)
    assert same["gain_f1_macro"] == 0 and same["ci95"] == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.full
def test_a_search_with_the_stage_confirms_its_winner_in_full(tmp_path):
    """A real demo search of 3 trials with the stage: the stage's runs are trials of the same run, each
    its full schedule with its own seed; the winner is the best mean; the reports say so. In the full
    tier (the stage's decisions are tested on scripted calls in the default run)."""
    spec = yaml.safe_load((ROOT / "tune/spaces/demo.yaml").read_text(encoding="utf-8"))
    spec["search"].update(num_samples=3, n_startup_trials=3, max_evals=2, grace_period=1, reduction_factor=2,
                          confirm={"top_k": 1, "seeds": 2, "budget_share": 3.0})
    spec["params"].update(train_file=str(ROOT / "afqmc/demo_data/train.jsonl"), max_train_samples=400,
                          per_device_batch_size=32, max_steps=10, eval_steps=5, eval_batch_size=256,
                          tiny_hidden_size=32, tiny_num_layers=1)
    spec["params"].pop("num_epochs", None)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(space), "--name", "conf",
                           "--results_dir", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    exp = tmp_path / "results" / "conf"
    summary = json.loads((exp / "summary.json").read_text(encoding="utf-8"))
    conf = summary["confirmation"]
    assert conf["complete"] and conf["runs_ended"] == len(conf["plan"]["runs"]) > 0
    from tune.results import collect_trials

    trials = collect_trials(exp)
    stage = [t for t in trials if t.confirm_of is not None]
    assert len(stage) == len(conf["plan"]["runs"])
    for t in stage:  # the full schedule (2 evaluations), the seed it was given, no ASHA cut
        assert t.state == TrialState.FINISHED and t.evals == 2 and t.seed in conf["plan"]["seeds"]
        config = json.loads((Path(t.path) / "params.json").read_text(encoding="utf-8"))
        assert config["seed"] == t.seed and config[CONFIRM_OF] == t.confirm_of
    baseline = next(t for t in trials if t.is_baseline)
    assert {t.seed for t in stage if t.confirm_of == baseline.number} <= set(conf["plan"]["seeds"])
    winner = confirm.confirmed_winner(trials)
    assert conf["winner"] == winner["config"] and summary["best"]["trial"] == winner["best_seed"].number
    assert (exp / "best_config.yaml").read_text(encoding="utf-8").startswith("# Confirmed winner")
    assert "confirmation: the top 1 configurations" in proc.stdout and "confirmation:" in (exp / "trials.md").read_text()
    assert conf["cost"]["updates"] == sum(t.steps for t in stage)
    assert 3 == sum(t.confirm_of is None for t in trials)  # the search's own trials, counted apart
