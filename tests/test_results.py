"""Results of a search: tables, plots, best config, comparison, regeneration and reseeding.

One real demo search (8 short trials, ASHA) runs once for the module, in a subprocess, as a user
runs it; every test reads what it left in its folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from afqmc.config import from_dict, load_config
from conftest import with_a_scripted_member
from tune import compare as compare_cli
from tune.folder import SearchState
from tune.reports import markdown_table

# Under pytest-xdist these tests run on one worker: most share one search (a module fixture).
pytestmark = pytest.mark.xdist_group("results_search")

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = "val/f1_macro"
NUM_SAMPLES, MAX_STEPS, EVAL_STEPS = 8, 20, 5
MAX_EVALS = MAX_STEPS // EVAL_STEPS
PLOTS = {"learning_curves.png", "params_vs_f1.png", "importance.png", "confusion_matrix.png", "threshold_curve.png",
         "anytime.png"}
TABLES = ("trials.csv", "trials.md", "summary.json", "best_config.yaml")


def _space(tmp_path: Path, train_file: Path) -> Path:
    """The demo space on the first 1000 demo pairs, 20 updates per trial, an evaluation every 5.

    20 updates are too few for the tiny model to learn: at a fixed threshold most trials predict one
    class, so their val F1-macro is 0.4083 (all negative) or 0.2366 (all positive). This space
    searches the threshold (the slower, optional mode) and ranks and cuts on F1 at it, and its
    baseline is made poor on purpose (w1/w0 = 4 and threshold 0.3: every pair positive), so that the
    best trial is another one. It holds out a test split (test_ratio 0.2 of the 1000 pairs).
    """
    spec = yaml.safe_load((ROOT / "search_spaces/demo.yaml").read_text(encoding="utf-8"))
    spec["search"].update(num_samples=NUM_SAMPLES, n_startup_trials=3, max_evals=MAX_EVALS, grace_period=1,
                          reduction_factor=3, cpus_per_trial=1, asha_metric=PRIMARY)
    spec["params"].update(train_file=str(train_file), max_train_samples=1000, per_device_batch_size=32,
                          max_steps=MAX_STEPS, eval_steps=EVAL_STEPS, eval_batch_size=256, test_ratio=0.2)
    spec["params"]["class_weights"]["baseline"] = 4.0
    spec["params"]["threshold"] = {"type": "uniform", "low": 0.3, "high": 0.7, "baseline": 0.3}
    path = tmp_path / "space.yaml"
    path.write_text("# demo space, shortened for the tests\n" + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("results")
    train_file = tmp_path / "train.jsonl"
    shutil.copyfile(ROOT / "afqmc/demo_data/train.jsonl", train_file)
    started = time.time()
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(_space(tmp_path, train_file)),
                           "--name", "demo_results", "--results_dir", str(tmp_path / "results")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp_dir = tmp_path / "results" / "demo_results"
    return {"exp_dir": exp_dir, "stdout": proc.stdout, "train_file": train_file, "tmp": tmp_path,
            "seconds": time.time() - started}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


# --- fast ----------------------------------------------------------------------------------------


def test_markdown_table_aligns_and_escapes():
    text = markdown_table(["name", "value"], [["a|b", "1.5"], ["long name", "10"]], right={1})
    lines = text.splitlines()
    assert lines[0] == "| name      | value |"
    assert lines[1] == "| --------- | ----: |"
    assert lines[2] == "| a\\|b      |   1.5 |"
    assert len({len(line) for line in lines}) == 1


def test_compare_refuses_a_folder_that_is_not_a_search(tmp_path, capsys):
    assert compare_cli.main([str(tmp_path)]) == 2
    assert "not a search folder" in capsys.readouterr().err


def test_compare_sort_and_status_names():
    import pandas as pd

    frame = pd.DataFrame({"trial": [1], PRIMARY: [0.5], "val/accuracy": [0.6], "learning_rate": [1e-3]})
    assert compare_cli.resolve_column("acc", frame) == "val/accuracy"
    assert compare_cli.resolve_column("lr", frame) == "learning_rate"
    assert compare_cli.resolve_column("val/f1_macro", frame) == PRIMARY
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        compare_cli.resolve_column("nope", frame)
    assert compare_cli.resolve_states("finished, stopped") == ["finished", "stopped early"]
    with pytest.raises(ValueError, match="unknown status"):
        compare_cli.resolve_states("done")


def test_reseed_verdict_weighs_the_gain_against_seed_noise():
    from tune.reseed import seed_stats, seed_verdict

    def res(best, baseline):
        return {"best": {"test": seed_stats(best)}, "baseline": {"test": seed_stats(baseline)}}

    clear = seed_verdict(res([0.70, 0.71, 0.72], [0.60, 0.61, 0.62]), "test", same=False)
    assert clear["gain"] == pytest.approx(0.10) and clear["pooled_std"] == pytest.approx(0.01)
    assert clear["gain_in_pooled_std"] == pytest.approx(10.0) and clear["welch_p"] < 0.001
    assert "larger than seed noise" in clear["verdict"]
    noisy = seed_verdict(res([0.70, 0.60, 0.65], [0.66, 0.58, 0.62]), "test", same=False)
    assert noisy["gain"] == pytest.approx(0.03) and noisy["welch_p"] > 0.3
    assert "within seed noise" in noisy["verdict"]
    # More than twice the standard error, yet Welch's p is 0.08 with 3 seeds a side: not a winner.
    few = seed_verdict(res([0.5953, 0.5879, 0.6448], [0.5531, 0.5473, 0.5561]), "test", same=False)
    assert few["gain"] > 2 * math.sqrt(0.0310**2 / 3 + 0.0044**2 / 3) and 0.05 < few["welch_p"] < 0.1
    assert "within seed noise (Welch's p = 0.08" in few["verdict"], few["verdict"]
    worse = seed_verdict(res([0.60, 0.61], [0.62, 0.63]), "test", same=False)
    assert worse["verdict"].startswith("no gain")
    same = seed_verdict(res([0.60, 0.61], [0.60, 0.61]), "test", same=True)
    assert same["verdict"].startswith("the baseline is the best trial") and same["welch_p"] is None


def test_reports_of_a_search_that_has_just_started(tmp_path):
    """No Ray snapshot, no study, no checkpoint yet: the tables still list every trial and its evaluations."""
    from tune.reports import write_reports

    exp = tmp_path / "early"
    baseline = {"learning_rate": 5e-4, "threshold": 0.5}
    (exp / "trial_aaa").mkdir(parents=True)
    (exp / "trial_bbb").mkdir()
    (exp / "search.json").write_text(json.dumps({"baseline": baseline, "num_samples": 4, "scheduler": "asha",
                                                 "settings": {"max_evals": 3, "seed": 0}}))
    (exp / "trial_aaa" / "params.json").write_text(json.dumps(baseline))
    (exp / "trial_bbb" / "params.json").write_text(json.dumps({"learning_rate": 1e-3, "threshold": 0.4}))
    rows = [{"evals": e, "step": 10 * e, PRIMARY: f1, "val/accuracy": 0.7, "time_total_s": 5.0 * e,
             "timestamp": 1000 + 5 * e, "planned_evals": 3} for e, f1 in ((1, 0.41), (2, 0.52))]
    (exp / "trial_aaa" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"evals": 3, "st')
    reports = write_reports(exp, log=lambda s: None)
    table = _csv(exp / "trials.csv")
    assert [(r["trial"], r["state"], r["evals"], r["steps"], r[PRIMARY], r["baseline"]) for r in table] == \
        [("0", "unfinished", "2", "20", "0.52", "1"), ("1", "unfinished", "0", "0", "", "0")]
    assert reports.best is None and not (exp / "best_config.yaml").exists()
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["counts"] == {"finished": 0, "stopped early": 0, "failed": 0, "unfinished": 2}
    assert summary["budget"]["evals"] == 2 and summary["budget"]["max_evals_total"] == 12
    assert {p.name for p in (exp / "plots").glob("*.png")} == {"learning_curves.png", "params_vs_f1.png"}
    assert any("importance" in n for n in reports.notes)
    assert any("space.yaml not readable" in n for n in reports.notes)  # said, not skipped without a word
    assert re.search(r"\|\s+1 \| 0 \(baseline\)\s+\| unfinished\s+\|\s+2 \|\s+20 \| 0.5200 \|", (exp / "trials.md").read_text())


# --- on a real demo search (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_search_leaves_every_table_and_plot(search):
    exp_dir = search["exp_dir"]
    for name in TABLES:
        assert (exp_dir / name).is_file(), name
    assert {p.name for p in (exp_dir / "plots").glob("*.png")} == PLOTS
    assert (exp_dir / "best_model" / "config.json").is_file()
    exp = exp_dir.resolve()
    assert f"tables: {exp}/trials.md, {exp}/trials.csv; plots: {exp}/plots/" in search["stdout"]


@pytest.mark.slow
def test_trials_csv_has_one_row_per_trial_and_its_best_row_is_the_search_best(search):
    exp_dir = search["exp_dir"]
    rows = _csv(exp_dir / "trials.csv")
    dirs = sorted(p.name.removeprefix("trial_") for p in exp_dir.glob("trial_*"))
    assert len(rows) == NUM_SAMPLES and sorted(r["trial_id"] for r in rows) == dirs
    assert sorted(int(r["trial"]) for r in rows) == list(range(NUM_SAMPLES))  # the study's numbers
    for col in ("state", "reason", "learning_rate", "class_weights", "dropout", "threshold", "warmup_ratio",
                "evals", "steps", "wall_time_s", PRIMARY, "val/f1_macro_at_best_threshold", "val/best_threshold",
                "val/accuracy", "val/f1_0", "val/f1_1", "best_step", "gain_vs_baseline"):
        assert col in rows[0], col

    # Every row agrees with Ray's own per-evaluation results of that trial.
    for r in rows:
        results = _rows(exp_dir / f"trial_{r['trial_id']}")
        top = max(x[PRIMARY] for x in results)
        # Its best evaluation: the one whose checkpoint was kept (of equal values, any may be).
        best = next(x for x in results if x["evals"] == int(r["best_evals"]))
        assert float(r[PRIMARY]) == pytest.approx(top, abs=1e-12) and best[PRIMARY] == pytest.approx(top, abs=1e-12)
        assert int(r["evals"]) == results[-1]["evals"] and int(r["steps"]) == results[-1]["step"]
        assert int(r["best_step"]) == best["step"] == best["evals"] * EVAL_STEPS
        assert (exp_dir / f"trial_{r['trial_id']}" / r["checkpoint"].split("/")[-1]).is_dir()
        assert float(r["val/accuracy"]) == pytest.approx(best["val/accuracy"])
        assert float(r["val/f1_1"]) == pytest.approx(best["val/f1_1"])
        assert float(r["val/best_threshold"]) == pytest.approx(best["val/best_threshold"])
        assert float(r["wall_time_s"]) == pytest.approx(results[-1]["time_total_s"], abs=0.1)
        params = json.loads((exp_dir / f"trial_{r['trial_id']}" / "params.json").read_text())
        assert float(r["learning_rate"]) == pytest.approx(params["learning_rate"])
        assert float(r["class_weights"]) == pytest.approx(params["class_weights"])

    # The best row is the maximum over every evaluation of every trial, and the search's best.
    top = max(max(x[PRIMARY] for x in _rows(p)) for p in exp_dir.glob("trial_*"))
    best_row = max(rows, key=lambda r: (float(r[PRIMARY]), -int(r["trial"])))
    assert float(best_row[PRIMARY]) == pytest.approx(top, abs=1e-12)
    reported = re.search(r"best trial (\d+): val/f1_macro ([0-9.]+)", search["stdout"])
    assert reported and reported.group(1) == best_row["trial"]
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["best"]["trial"] == int(best_row["trial"]) and summary["best"]["value"] == pytest.approx(top)
    assert summary["metric"] == PRIMARY
    assert summary["trials"] == NUM_SAMPLES and summary["complete"] is True

    # The baseline: trial 0, marked; every gain is over its value.
    baseline = [r for r in rows if r["baseline"] == "1"]
    assert len(baseline) == 1 and baseline[0]["trial"] == "0"
    base = float(baseline[0][PRIMARY])
    for r in rows:
        assert float(r["gain_vs_baseline"]) == pytest.approx(float(r[PRIMARY]) - base, abs=1e-12)
    assert summary["baseline"]["trial"] == 0 and summary["baseline"]["value"] == pytest.approx(base)
    assert summary["best"]["gain_vs_baseline"] == pytest.approx(top - base)
    budget = summary["budget"]
    assert budget["evals"] == sum(int(r["evals"]) for r in rows) <= NUM_SAMPLES * MAX_EVALS
    assert budget["max_evals_total"] == NUM_SAMPLES * MAX_EVALS
    assert budget["optimizer_steps"] == sum(int(r["steps"]) for r in rows)


@pytest.mark.slow
def test_anytime_curve_is_monotone_and_ends_at_the_best_trials_value(search):
    """summary.json's anytime curve, against Ray's own reports: the best so far over every report in
    time order, the updates of all trials so far; it ends at the summary's best and budget."""
    exp_dir = search["exp_dir"]
    summary = json.loads((exp_dir / "summary.json").read_text())
    curve = summary["anytime"]
    assert curve["metric"] == PRIMARY and len(curve["best"]) >= 2
    for key in ("updates", "wall_s", "best"):
        assert curve[key] == sorted(curve[key]), key
    assert curve["best"][-1] == summary["best"]["value"] and curve["trial"][-1] == summary["best"]["trial"]
    assert curve["updates"][-1] == summary["budget"]["optimizer_steps"]
    assert 0 < curve["wall_s"][-1] <= summary["budget"]["wall_seconds"] + 1
    assert curve["baseline"]["trial"] == 0 and curve["baseline"]["value"] == summary["baseline"]["value"]
    # The held-out test F1 where that model was scored: the best's at the end, never a choice's input.
    assert curve["test_f1"][-1] == summary["test"]["models"]["best"]["metrics"]["f1_macro"]
    # Each raise of the best is a report of that trial with that value, the highest of all reports before it.
    numbers = {int(r["trial"]): r["trial_id"] for r in _csv(exp_dir / "trials.csv")}
    reports = {n: _rows(exp_dir / f"trial_{tid}") for n, tid in numbers.items()}
    for value, number, evals in zip(curve["best"], curve["trial"], curve["evals"]):
        assert next(r for r in reports[number] if r["evals"] == evals)[PRIMARY] == value
    assert curve["best"][-1] == max(r[PRIMARY] for rows in reports.values() for r in rows)


@pytest.mark.slow
def test_trial_numbers_are_the_studys_in_the_tables_and_the_live_view(search):
    """One number for one trial: trials.csv, the study (what optuna-dashboard shows) and the live
    view's lines give the trial with the same parameters the same number; 0 is the baseline."""
    import optuna

    from tune.folder import TRIAL_NUMBER, format_params

    exp_dir = search["exp_dir"]
    rows = _csv(exp_dir / "trials.csv")
    study = optuna.load_study(study_name="demo_results", storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    searched = ("learning_rate", "class_weights", "dropout", "threshold", "warmup_ratio")
    for r in rows:
        same = [t for t in study.trials
                if all(_plain(t.params[k]) == pytest.approx(float(r[k]), rel=1e-9) for k in searched)]
        assert [t.number for t in same] == [int(r["trial"])], r["trial"]
    started = dict(re.findall(r"trial (\d+) started(?: \(baseline\))?: (.*)", search["stdout"]))
    params = {r["trial"]: json.loads((exp_dir / f"trial_{r['trial_id']}" / "params.json").read_text()) for r in rows}
    assert all(p.pop(TRIAL_NUMBER) == int(n) for n, p in params.items())  # each Ray trial carries its number
    assert {n: set(line.split()) for n, line in started.items()} == \
        {n: set(format_params(p).split()) for n, p in params.items()}
    assert re.search(r"trial 0 started \(baseline\)", search["stdout"])


def _plain(value):
    """A class-weights pair [1, r] as r, as trials.csv writes it."""
    return value[1] if isinstance(value, list) else value


@pytest.mark.slow
def test_best_and_baseline_are_scored_once_on_the_held_out_test_split(search, tmp_path):
    from afqmc.data import load_splits
    from afqmc.predict import load_saved_model, predict_probs
    from sklearn.metrics import f1_score, roc_auc_score

    exp_dir = search["exp_dir"]
    summary = json.loads((exp_dir / "summary.json").read_text())
    test = summary["test"]
    assert test["pairs"] == 200 and test["source"].endswith("(test split)") and sum(test["label_counts"]) == 200
    models = test["models"]
    assert models["best"]["trial"] == summary["best"]["trial"] and models["baseline"]["trial"] == 0
    # The exported model, on the same split, at its saved threshold: the same figures.
    cfg = load_config(exp_dir / "best_model" / "train_config.yaml")
    splits = load_splits(cfg)
    lines = [set(x.lines) for x in (splits.train, splits.val, splits.test)]
    assert not (lines[0] & lines[2]) and not (lines[1] & lines[2]) and len(splits.test) == 200
    model, tok, saved_cfg = load_saved_model(exp_dir / "best_model")
    probs = np.array(predict_probs(model, tok, splits.test, saved_cfg.max_length))
    best = models["best"]["metrics"]
    assert best["threshold"] == pytest.approx(saved_cfg.threshold)  # searched threshold: the trial's own
    assert best["f1_macro"] == pytest.approx(f1_score(splits.test.labels, (probs >= best["threshold"]).astype(int),
                                                      average="macro"), abs=1e-9)
    assert best["auc"] == pytest.approx(roc_auc_score(splits.test.labels, probs), abs=1e-6)
    assert test["gain_f1_macro"] == pytest.approx(best["f1_macro"] - models["baseline"]["metrics"]["f1_macro"])
    # The exported model's card has its held-out figures and names the exported folder.
    card = (exp_dir / "best_model" / "README.md").read_text(encoding="utf-8")
    assert f"| held-out test | 200 | {best['f1_macro']:.4f} |" in card
    assert f'model="{(exp_dir / "best_model").resolve()}"' in card
    # In the tables: the test column holds the two scored models only; trials.md says which is which.
    rows = {r["trial"]: r for r in _csv(exp_dir / "trials.csv")}
    scored = {t for t, r in rows.items() if r["test/f1_macro"]}
    assert scored == {str(models["best"]["trial"]), "0"}
    assert float(rows["0"]["test/f1_macro"]) == pytest.approx(models["baseline"]["metrics"]["f1_macro"])
    text = (exp_dir / "trials.md").read_text()
    assert f"best (trial {models['best']['trial']}" in text and "baseline (trial 0" in text
    assert "Val numbers chose" in text and "held-out test: 200 pairs" in text and "| test F1 |" in text
    assert "held-out test" in search["stdout"]
    # Each model was scored once: a rebuild reads test_scores.json, it does not predict again.
    scores = json.loads((exp_dir / "test_scores.json").read_text())
    assert len(scores["scores"]) == len({models["best"]["trial_id"], models["baseline"]["trial_id"]})
    import tune.scoring as scoring
    from tune.space import folder_config

    def no_predict(*args, **kwargs):
        raise AssertionError("a model was scored again")

    real, scoring.predict = scoring.predict, no_predict
    try:
        best, baseline = _best_and_baseline(exp_dir)
        again = scoring.held_out_test(exp_dir.resolve(), folder_config(exp_dir, SearchState.load(exp_dir)),
                                      {"best": best, "baseline": baseline})
    finally:
        scoring.predict = real
    assert again["models"] == test["models"]


@pytest.mark.slow
def test_reports_predict_each_kept_model_once_per_split(search, tmp_path, monkeypatch):
    """The val predictions (threshold curve), the held-out test scores and the ensemble share one
    prediction per model and split (model_probs.json): none of them predicts what another did."""
    import tune.scoring as scoring
    from tune.reports import write_reports

    copy = tmp_path / "copy"
    shutil.copytree(search["exp_dir"], copy, ignore=shutil.ignore_patterns(
        "ensemble", "model_probs.json", "test_scores.json", "best_val_predictions.json"))
    predicted: list[tuple[str, str]] = []

    def counted(model_dir, pairs, real=scoring.predict):
        predicted.append((str(model_dir), scoring.fingerprint(pairs)))
        return real(model_dir, pairs)

    monkeypatch.setattr(scoring, "predict", counted)
    reports = write_reports(copy, log=lambda *_: None)
    assert reports.summary["test"]["models"]["best"] and reports.summary["ensemble"]
    assert (copy / "best_val_predictions.json").is_file() and (copy / "plots" / "threshold_curve.png").is_file()
    assert predicted and len(predicted) == len(set(predicted)), predicted
    # The best model predicted test once, though two reports use it; val not at all: each kept
    # model's val P(same) is what its trial's evaluation predicted (val_probs.json in its checkpoint).
    best = str(scoring.kept_model(reports.best))
    assert sum(d == best for d, _ in predicted) == 1
    val = json.loads((copy / "model_probs.json").read_text())["val"]["models"]
    assert val and all(m["source"] == "the trial's evaluation" for m in val.values())
    curve = json.loads((copy / "best_val_predictions.json").read_text())
    assert curve["recomputed_value"] == pytest.approx(reports.best.best_value, abs=1e-6)


@pytest.mark.slow
def test_the_trials_val_probs_are_the_saved_models_and_a_checkpoint_without_them_is_predicted(search, tmp_path,
                                                                                              monkeypatch):
    """What a trial's evaluation kept on val (val_probs.json) is what its saved model predicts; a
    checkpoint without it (written before it existed), or with it for other pairs, is predicted."""
    import tune.scoring as scoring
    from afqmc.data import load_splits
    from tune.results import collect_trials

    best = _best_and_baseline(search["exp_dir"])[0]
    val = load_splits(scoring.kept_config(best)).val
    kept = scoring.evaluated_val_probs(best, val)
    probs, threshold = scoring.predict(scoring.kept_model(best), val)
    assert kept["threshold"] == pytest.approx(threshold) and kept["seconds_per_pair"] > 0
    assert kept["probs"] == pytest.approx(probs, abs=1e-5)
    # Other pairs (one label changed): not theirs.
    other = dataclasses.replace(val, labels=[1 - val.labels[0], *val.labels[1:]])
    assert scoring.evaluated_val_probs(best, other) is None
    # A copy of the search whose checkpoints have no val_probs.json: the best model predicts val.
    copy = tmp_path / "copy"
    shutil.copytree(search["exp_dir"], copy, ignore=shutil.ignore_patterns(
        "ensemble", "model_probs.json", "test_scores.json", "best_val_predictions.json", "val_probs.json"))
    trial = next(t for t in collect_trials(copy) if t.trial_id == best.trial_id)
    predicted = []
    monkeypatch.setattr(scoring, "predict", lambda d, p, real=scoring.predict: predicted.append(d) or real(d, p))
    got = scoring.val_predictions(copy, trial, val_pairs=val)
    assert predicted == [scoring.kept_model(trial)] and got["probs"] == pytest.approx(probs, abs=1e-6)


def _best_and_baseline(exp_dir: Path):
    from tune.results import best_trial, collect_trials

    trials = collect_trials(exp_dir)
    return best_trial(trials), next(t for t in trials if t.is_baseline)


@pytest.mark.slow
def test_trials_md_is_the_leaderboard_by_val_f1(search):
    exp_dir = search["exp_dir"]
    rows = _csv(exp_dir / "trials.csv")
    text = (exp_dir / "trials.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert len(body) == NUM_SAMPLES
    col = {h: i for i, h in enumerate(header)}
    values = [float(r[col["val F1"]]) for r in body]
    assert values == sorted(values, reverse=True)
    assert [int(r[col["rank"]]) for r in body] == list(range(1, NUM_SAMPLES + 1))
    by_trial = {r["trial"]: r for r in rows}
    marked = [r for r in body if "(baseline)" in r[col["trial"]]]
    assert len(marked) == 1 and marked[0][col["trial"]] == "0 (baseline)" and marked[0][col["gain"]] == "+0.0000"
    for r in body:
        number = r[col["trial"]].split()[0]
        assert r[col["val F1"]] == f"{float(by_trial[number][PRIMARY]):.4f}"
        assert r[col["gain"]] == f"{float(by_trial[number]['gain_vs_baseline']):+.4f}"
    assert "Parameter importance (fANOVA" in text and "Baseline: trial 0" in text


@pytest.mark.slow
def test_statuses_match_what_asha_did(search):
    exp_dir, stdout = search["exp_dir"], search["stdout"]
    rows = _csv(exp_dir / "trials.csv")
    logged_stops = set(re.findall(r"trial (\d+) stopped early", stdout))
    logged_finished = set(re.findall(r"trial (\d+) finished", stdout))
    for r in rows:
        results = _rows(exp_dir / f"trial_{r['trial_id']}")
        # Each trial's own schedule is MAX_EVALS evaluations (patience 0): a trial that ended before
        # it was stopped by the scheduler, at an ASHA rung (grace 1, reduction factor 3: 1 and 3).
        if results[-1]["evals"] < MAX_EVALS:
            assert r["state"] == "stopped early", r
            assert results[-1]["evals"] in (1, 3)
            assert r["reason"] == f"stopped by ASHA after {results[-1]['evals']} of {MAX_EVALS} evaluations"
            assert r["trial"] in logged_stops
        else:
            assert r["state"] == "finished" and r["reason"] == f"ran its {MAX_EVALS} evaluations", r
            assert r["trial"] in logged_finished
    states = [r["state"] for r in rows]
    assert "stopped early" in states, "ASHA stopped no trial"
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["counts"] == {"finished": states.count("finished"), "stopped early": states.count("stopped early"),
                                 "failed": 0, "unfinished": 0}
    assert "stopped (ASHA)" in (exp_dir / "trials.md").read_text()


@pytest.mark.slow
def test_best_config_round_trips_and_retrains_the_winner(search, tmp_path):
    import torch

    from afqmc import train as train_cli

    exp_dir = search["exp_dir"]
    cfg = load_config(exp_dir / "best_config.yaml")
    again = tmp_path / "again.yaml"
    cfg.save_yaml(again)
    assert load_config(again) == cfg == from_dict(yaml.safe_load(again.read_text()))
    summary = json.loads((exp_dir / "summary.json").read_text())
    best = summary["best"]
    assert cfg.learning_rate == pytest.approx(best["params"]["learning_rate"])
    assert cfg.class_weights == [1.0, pytest.approx(best["params"]["class_weights"])]
    assert cfg.threshold == pytest.approx(best["params"]["threshold"])
    assert cfg.max_steps == MAX_STEPS and cfg.train_file == str(search["train_file"])
    assert (exp_dir / "best_config.yaml").read_text().startswith(f"# Best trial {best['trial']} ")

    # What `accelerate launch afqmc/train.py --config results/NAME/best_config.yaml` runs, on one
    # thread like a trial: the winner's evaluations come back exactly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = train_cli.main(["--config", str(exp_dir / "best_config.yaml"), "--output_dir", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    retrained = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    searched = _rows(exp_dir / f"trial_{best['trial_id']}")
    assert len(retrained) >= len(searched)  # the search may have cut the winner; the retraining runs it all
    for a, b in zip(searched, retrained[:len(searched)], strict=True):
        assert a["evals"] == b["evals"] and a[PRIMARY] == pytest.approx(b[PRIMARY], abs=1e-9)
    assert max(r[PRIMARY] for r in retrained) >= best["value"] - 1e-9


@pytest.mark.slow
def test_plots_are_valid_pngs_that_are_not_blank(search):
    from matplotlib.image import imread

    exp_dir = search["exp_dir"]
    for path in sorted((exp_dir / "plots").glob("*.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        img = imread(path)[..., :3]
        assert img.shape[0] >= 300 and img.shape[1] >= 500, (path, img.shape)
        ink = (img.min(axis=2) < 0.9).mean()  # pixels that are not (near) white
        colour = (img.max(axis=2) - img.min(axis=2) > 0.2).mean()  # data drawn in colour, not only axes
        assert 0.01 < ink < 0.9 and colour > 0.002, (path.name, ink, colour)
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert sorted(summary["plots"]) == sorted(f"plots/{p}" for p in PLOTS)
    # The threshold curve came from the best model's val predictions, which match the search's value.
    curve = summary["threshold_curve"]
    assert curve["recomputed_value"] == pytest.approx(summary["best"]["value"], abs=1e-6)
    imp = summary["importance"]
    assert set(imp["values"]) == {"learning_rate", "class_weights", "dropout", "threshold", "warmup_ratio"}
    assert sum(imp["values"].values()) == pytest.approx(1.0, abs=1e-6)
    if imp["basis"] == "completed trials":  # fANOVA reads COMPLETE trials; ASHA's cuts are PRUNED
        assert imp["trials"] == summary["counts"]["finished"]
    else:  # the completed trials all tied (20 updates teach the tiny model little): the cut ones join
        assert imp["trials"] == summary["counts"]["finished"] + summary["counts"]["stopped early"]
    assert list(imp["values"].values()) == sorted(imp["values"].values(), reverse=True)


@pytest.mark.slow
def test_regenerate_rebuilds_everything_from_the_folder_alone(search, tmp_path):
    exp_dir = search["exp_dir"]
    copy = tmp_path / "regen"
    shutil.copytree(exp_dir, copy)
    for name in TABLES:
        (copy / name).unlink()
    shutil.rmtree(copy / "plots")
    hidden = search["train_file"].with_suffix(".hidden")
    search["train_file"].rename(hidden)  # no data: only the folder
    try:
        assert compare_cli.main(["--regenerate", str(copy)]) == 0
    finally:
        hidden.rename(search["train_file"])
    assert {p.name for p in (copy / "plots").glob("*.png")} == PLOTS
    original, rebuilt = _csv(exp_dir / "trials.csv"), _csv(copy / "trials.csv")
    assert len(rebuilt) == len(original)
    for a, b in zip(original, rebuilt, strict=True):
        for key in a:
            if key != "checkpoint":
                assert a[key] == b[key], key
    # The same config; only output_dir follows the folder (best_run/ inside it).
    assert load_config(copy / "best_config.yaml").replace(output_dir="x") == \
        load_config(exp_dir / "best_config.yaml").replace(output_dir="x")
    before, after = (json.loads((d / "summary.json").read_text()) for d in (exp_dir, copy))
    assert after["best"]["trial"] == before["best"]["trial"] and after["counts"] == before["counts"]
    assert after["importance"]["values"] == pytest.approx(before["importance"]["values"])
    assert sorted(p.name for p in copy.glob("trial_*")) == sorted(p.name for p in exp_dir.glob("trial_*"))
    # Nothing was trained: the copy holds exactly the checkpoints the search left.
    assert sorted(p.relative_to(copy) for p in copy.glob("trial_*/checkpoint_*")) == \
        sorted(p.relative_to(exp_dir) for p in exp_dir.glob("trial_*/checkpoint_*"))


@pytest.mark.slow
def test_compare_two_searches_and_a_running_one(search, tmp_path):
    exp_dir = search["exp_dir"]
    second = tmp_path / "second"
    shutil.copytree(exp_dir, second)
    proc = subprocess.run([sys.executable, "tune/compare.py", str(exp_dir), str(second), "--top", "5",
                           "--sort", "acc", "--status", "finished,stopped"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    table = lines[head + 1:head + 6]
    assert len(table) == 5 and not lines[head + 6].strip()
    headers = re.split(r"\s{2,}", lines[head].strip())
    # Cells are two spaces apart; "0 (baseline)" and "stopped (ASHA)" hold single spaces.
    accuracies = [float(re.split(r"\s{2,}", line.strip())[headers.index("acc")]) for line in table]
    assert accuracies == sorted(accuracies, reverse=True)
    rows = _csv(exp_dir / "trials.csv")
    assert accuracies[0] == pytest.approx(max(float(r["val/accuracy"]) for r in rows), abs=5e-5)
    assert {line.split()[1] for line in table} <= {"demo_results", "second"}
    out = Path(re.search(r"written to (\S+)", proc.stdout).group(1))
    assert out.is_absolute() and out.name == "comparison.md" and out.is_file()
    text = out.read_text()
    assert "demo_results" in text and "second" in text and text.count("\n| ") >= 6
    assert proc.stdout.count("held-out test F1-macro: best (trial") == 2

    # All trials of both, sorted by learning rate, and only the finished ones.
    out_md = tmp_path / "all.md"
    assert compare_cli.main([str(exp_dir), str(second), "--sort", "lr", "--ascending", "--output", str(out_md)]) == 0
    body = [line for line in out_md.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(body) == 2 * NUM_SAMPLES
    finished = sum(r["state"] == "finished" for r in rows)
    assert compare_cli.main([str(exp_dir), "--status", "finished", "--output", str(out_md)]) == 0
    body = [line for line in out_md.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(body) == finished and all("finished" in line for line in body)

    # A search still running: the study holds every trial RUNNING, and a trial is midway (its last line
    # half written).
    import optuna

    from tune.folder import RAY_TRIAL_ID

    running = tmp_path / "running"
    shutil.copytree(exp_dir, running)
    (running / "optuna.db").unlink()
    study = optuna.create_study(study_name="running", storage=f"sqlite:///{running / 'optuna.db'}")
    for r in sorted(rows, key=lambda r: int(r["trial"])):
        study.ask().set_user_attr(RAY_TRIAL_ID, r["trial_id"])
    for name in TABLES:
        (running / name).unlink()
    trial = running / f"trial_{rows[0]['trial_id']}" / "result.json"
    first = trial.read_text().splitlines()[0]
    trial.write_text(first + "\n" + first[: len(first) // 2])
    out_md = tmp_path / "running.md"
    assert compare_cli.main([str(running), "--output", str(out_md)]) == 0
    body = [line for line in out_md.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(body) == NUM_SAMPLES and sum("unfinished" in line for line in body) == NUM_SAMPLES


def compare_one_thread(argv: list[str]) -> int:
    """compare.py's main with one torch thread, like a trial (two threads on a busy 2-core machine
    are 3x slower), the test process's setting restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compare_cli.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_reseed_reports_mean_and_std_of_best_and_baseline(search, capsys):
    exp_dir = search["exp_dir"]
    assert compare_one_thread(["--reseed", "2", "--max_steps", "10", str(exp_dir)]) == 0
    out = capsys.readouterr().out
    report = json.loads((exp_dir / "reseed.json").read_text())
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert report["seeds"] == [43, 44]  # after the search's own seed 42
    assert report["test_pairs"] == 200 and report["test_source"].endswith("(test split)")
    res = report["results"]
    assert res["best"]["trial"] == summary["best"]["trial"] != 0 and res["baseline"]["trial"] == 0
    for role in ("best", "baseline"):
        assert res[role]["steps"] == 10 and all(r["steps"] == 10 for r in res[role]["runs"])
        for figure in ("test", "val"):  # the held-out figure that judges, and the val one that chose
            values = res[role][figure]["values"]
            assert values == [r[figure] for r in res[role]["runs"]] and len(values) == 2
            assert all(0 < v <= 1 for v in values)
            assert res[role][figure]["mean"] == pytest.approx(np.mean(values))
            assert res[role][figure]["std"] == pytest.approx(np.std(values, ddof=1))
    for figure in ("test", "val"):
        v = report[figure]
        assert v["gain"] == pytest.approx(res["best"][figure]["mean"] - res["baseline"][figure]["mean"])
        pooled = math.sqrt((res["best"][figure]["std"] ** 2 + res["baseline"][figure]["std"] ** 2) / 2)
        assert v["pooled_std"] == pytest.approx(pooled, abs=1e-12)
        if pooled > 0:
            assert v["gain_in_pooled_std"] == pytest.approx(v["gain"] / pooled)
    assert "Verdict:" in out and "held-out test F1-macro: gain" in out and "| best " in out and "| baseline " in out
    assert (exp_dir / "reseed.md").read_text().startswith("# Reseed of `demo_results`")


@pytest.mark.slow
@pytest.mark.full  # it trains every member and the best again per seed: the reseed itself, not a search property
def test_reseed_ensemble_against_the_single_best(search, tmp_path):
    """Each seed retrains every member config and the single best's; the ensemble's threshold is
    tuned on its val mixture (val chooses) and the mixture is scored once on held-out test. (A copy of
    the search with a scripted member: its own tiny models leave the best model alone.)"""
    from tune.reports import write_reports

    exp_dir = tmp_path / "with_member"
    with_a_scripted_member(search["exp_dir"], exp_dir)
    summary = write_reports(exp_dir, plots=False, log=lambda *_: None).summary
    assert len(summary["ensemble"]["members"]) == 2
    assert compare_one_thread(["--reseed_ensemble", "2", "--max_steps", "6", str(exp_dir)]) == 0
    report = json.loads((exp_dir / "reseed_ensemble.json").read_text())
    assert report["seeds"] == [43, 44] and report["members"] == summary["ensemble"]["members"]
    assert report["single_best"] == summary["best"]["trial"] and len(report["runs"]) == 2
    for who, key in (("ensemble_test", "ensemble_test"), ("single_test", "single_test")):
        values = [r[key] for r in report["runs"]]
        assert all(0 < v <= 1 for v in values) and report[who]["values"] == values
        assert report[who]["mean"] == pytest.approx(np.mean(values))
    assert report["verdict"]["gain"] == pytest.approx(report["ensemble_test"]["mean"] - report["single_test"]["mean"])
    assert all(0 < r["ensemble_threshold"] < 1 for r in report["runs"])


@pytest.mark.slow
def test_reseed_when_the_baseline_is_the_winner(search, tmp_path):
    """A search whose best trial is its baseline: reseeding trains that config only and says there is
    no gain to test (the folder is the module's search with search.json naming the winner as baseline)."""
    copy = tmp_path / "baseline_wins"
    shutil.copytree(search["exp_dir"], copy)
    summary = json.loads((copy / "summary.json").read_text())
    state = SearchState.load(copy)
    state.baseline = summary["best"]["params"]
    state.save(copy)
    assert compare_one_thread(["--reseed", "2", "--max_steps", "5", str(copy)]) == 0
    report = json.loads((copy / "reseed.json").read_text())
    res = report["results"]
    assert res["best"]["trial"] == res["baseline"]["trial"] == summary["best"]["trial"]
    assert res["baseline"] == res["best"] and len(res["best"]["runs"]) == 2  # trained once per seed, not twice
    for figure in ("test", "val"):
        assert report[figure]["verdict"] == "the baseline is the best trial: there is no gain to test"
        assert report[figure]["welch_p"] is None and report[figure]["gain"] == 0


@pytest.mark.slow
def test_reseed_against_another_starting_point(search, tmp_path):
    against = tmp_path / "untuned.yaml"
    against.write_text("# a starting point not tuned on this data\nlearning_rate: 1.0e-4\nclass_weights: null\n")
    copy = tmp_path / "against"
    shutil.copytree(search["exp_dir"], copy)
    assert compare_one_thread(["--reseed", "2", "--max_steps", "5", "--against", str(against), str(copy)]) == 0
    report = json.loads((copy / "reseed.json").read_text())
    other = report["results"]["baseline"]
    assert report["against"] == str(against) and other["trial"] == "untuned.yaml"
    assert other["params"] == {"learning_rate": 1e-4, "class_weights": None} and other["steps"] == 5
    assert len(other["runs"]) == 2 and report["test"]["welch_p"] is not None or report["test"]["pooled_std"] == 0
    assert (copy / "reseed.md").read_text().startswith(f"# Reseed of `{copy.name}`: best against `untuned.yaml`")


@pytest.mark.slow
@pytest.mark.full  # a second real Ray run; the default run keeps the extension's decisions on scripted calls
def test_an_extended_search_adds_trials_and_leaves_the_earlier_ones_untouched(search, tmp_path):
    """`--resume NAME --num_samples N` on a finished search (a copy of the module's): the same study
    grows by the new trials; the earlier ones keep their values, folders and checkpoints (not
    retrained); the reports cover every trial and say what the extension added. The space file it
    started with has changed on disk since: the stored copy is used, with a note."""
    import optuna

    copy = tmp_path / "grown"
    shutil.copytree(search["exp_dir"], copy)
    changed = tmp_path / "space_now.yaml"  # the file the search was started with, edited since
    changed.write_text((copy / "space.yaml").read_text(encoding="utf-8").replace("num_samples", "num_samples: 99\n#"),
                       encoding="utf-8")
    state = SearchState.load(copy)
    state.space = str(changed)
    state.save(copy)

    def snapshot() -> tuple[list, dict]:
        study = optuna.load_study(study_name="demo_results", storage=f"sqlite:///{copy / 'optuna.db'}")
        trials = [(t.number, t.state.name, t.params, t.value, t.intermediate_values, dict(t.user_attrs))
                  for t in study.trials]
        files = {str(p.relative_to(copy)): p.read_bytes() for d in copy.glob("trial_*")
                 for p in sorted(d.rglob("*")) if p.is_file() and (p.name == "result.json" or "checkpoint_" in str(p))}
        return trials, files

    trials_before, files_before = snapshot()
    assert len(trials_before) == NUM_SAMPLES
    proc = subprocess.run([sys.executable, "tune/search.py", "--resume", str(copy), "--num_samples",
                           str(NUM_SAMPLES + 2)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"extending {copy} from {NUM_SAMPLES} trials (of {NUM_SAMPLES}) to {NUM_SAMPLES + 2}" in out
    assert "has changed since the search started" in out and "space.yaml" in out
    assert f"extended from {NUM_SAMPLES} to {NUM_SAMPLES + 2} trials" in out

    trials_after, files_after = snapshot()
    assert trials_after[:NUM_SAMPLES] == trials_before  # the same study; the earlier trials untouched
    assert [t[0] for t in trials_after] == list(range(NUM_SAMPLES + 2))
    assert all(t[1] in ("COMPLETE", "PRUNED") and "asha" in t[5] for t in trials_after[NUM_SAMPLES:])
    assert {k: v for k, v in files_after.items() if k in files_before} == files_before  # not retrained
    assert len(_csv(copy / "trials.csv")) == NUM_SAMPLES + 2

    summary = json.loads((copy / "summary.json").read_text(encoding="utf-8"))
    assert summary["trials"] == summary["num_samples"] == NUM_SAMPLES + 2 and summary["complete"]
    ext = summary["extensions"][0]
    new_steps = sum(int(r["steps"]) for r in _csv(copy / "trials.csv") if int(r["trial"]) >= NUM_SAMPLES)
    assert (ext["from"], ext["to"], ext["before"]["trials"]) == (NUM_SAMPLES, NUM_SAMPLES + 2, NUM_SAMPLES)
    assert ext["updates_spent"] == new_steps > 0 and ext["after"]["updates"] == summary["budget"]["optimizer_steps"]
    assert ext["after"]["best"] >= ext["before"]["best"]
    assert "extended from" in (copy / "trials.md").read_text(encoding="utf-8")
    assert SearchState.load(copy).num_samples == NUM_SAMPLES + 2  # a plain --resume keeps the new target


@pytest.mark.slow
def test_a_search_may_grow_but_not_shrink_or_change_a_setting(search, tmp_path):
    """`--resume NAME --num_samples N` may only grow a search: a smaller target, or another setting
    beside it, is refused with exit code 2 and a message that says so, before anything runs; the
    folder and its study are left as they were."""
    copy = tmp_path / "kept"
    shutil.copytree(search["exp_dir"], copy)
    before = {p.name: p.read_bytes() for p in (copy / "search.json", copy / "optuna.db")}
    smaller = subprocess.run([sys.executable, "tune/search.py", "--resume", str(copy), "--num_samples", "3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert smaller.returncode == 2 and "can grow, not shrink" in smaller.stderr
    other = subprocess.run([sys.executable, "tune/search.py", "--resume", str(copy), "--num_samples", "12",
                            "--learning_rate", "1e-3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "only --num_samples may grow it" in other.stderr
    assert {p.name: p.read_bytes() for p in (copy / "search.json", copy / "optuna.db")} == before


@pytest.mark.full
def test_an_interrupted_extension_resumes_with_nothing_lost(search, tmp_path):
    """Ctrl-C while an extension's new trials run, then a plain `--resume`: the target of the extension
    holds, the earlier trials stay untouched, every new trial runs once (an interrupted one goes on
    from its checkpoint)."""
    import os
    import signal

    copy = tmp_path / "grown"
    shutil.copytree(search["exp_dir"], copy)
    target = NUM_SAMPLES + 3
    before = {t["trial_id"]: (copy / f"trial_{t['trial_id']}" / "result.json").read_bytes()
              for t in _csv(copy / "trials.csv")}
    proc = subprocess.Popen([sys.executable, "tune/search.py", "--resume", str(copy), "--num_samples", str(target)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out, sent = [], False
    for line in proc.stdout:
        out.append(line)
        started = re.search(r"trial (\d+) started", line)  # the second new trial: the first one has run
        if not sent and started and int(started.group(1)) > NUM_SAMPLES:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
            sent = True
    proc.wait(timeout=300)
    first = "".join(out)
    assert sent and proc.returncode == 130, first[-4000:]
    assert SearchState.load(copy).num_samples == target

    second = subprocess.run([sys.executable, "tune/search.py", "--resume", str(copy)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-3000:]
    trials = _csv(copy / "trials.csv")
    assert sorted(int(t["trial"]) for t in trials) == list(range(target))
    assert len({t["trial_id"] for t in trials}) == target
    for t in trials:
        rows = _rows(copy / f"trial_{t['trial_id']}")
        if t["trial_id"] in before:
            assert (copy / f"trial_{t['trial_id']}" / "result.json").read_bytes() == before[t["trial_id"]]
            continue
        evals = [r["evals"] for r in rows]
        assert evals.count(1) == 1, evals  # never restarted from scratch
    summary = json.loads((copy / "summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] and summary["extensions"][0]["to"] == target
