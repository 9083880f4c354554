"""Ensemble selection (tune/ensemble.py) on hand-made probabilities, and the exported ensemble folder
(afqmc/ensemble.py) predicting through `python -m afqmc.predict` with tiny random models."""

import dataclasses
import io
import itertools
import json
import shutil
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss

from afqmc.checkpoint import save_model_dir
from afqmc.data import load_pairs
from afqmc.ensemble import ENSEMBLE_JSON, MEMBERS_DIR, is_ensemble, load_ensemble
from afqmc.metrics import halves, tune_threshold
from afqmc.modeling import load_model, load_tokenizer
from afqmc.predict import predict_saved, load_saved_model, main, predict_probs, score_pairs
from conftest import DEMO_TRAIN, ROOT
from tune.ensemble import (_f1_macro, cross_fitted_selection, ensemble_cost, export_ensemble, greedy_selection,
                           judge_on_test, paired_bootstrap_gain, select_ensemble)


def complementary(n: int = 400, extra: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A is confidently right on the first half of the pairs and mildly wrong on the second; B the
    reverse (a little less sure); C is weakly right everywhere. Their 1:1 mean beats any other mix."""
    y = np.tile([1, 0], n // 2)
    first = np.arange(n) < n // 2
    right = lambda conf: np.where(y == 1, conf, 1 - conf)  # noqa: E731
    cands = {"A": np.where(first, right(0.92), right(0.42)), "B": np.where(first, right(0.42), right(0.9))}
    if extra:
        cands["C"] = right(0.56)
    return cands, y


def brute_force(cands: dict[str, np.ndarray], y: np.ndarray, k: int) -> dict[str, int]:
    """The multiset of at most k candidates with the lowest val log loss of its mean."""
    names = list(cands)
    best, best_loss = None, np.inf
    for size in range(1, k + 1):
        for combo in itertools.combinations_with_replacement(names, size):
            loss = log_loss(y, np.mean([cands[c] for c in combo], axis=0), labels=[0, 1])
            if loss < best_loss - 1e-12:
                best, best_loss = combo, loss
    return {c: best.count(c) for c in dict.fromkeys(best)}


def test_greedy_selection_finds_the_known_best_mix_and_stops_there():
    cands, y = complementary()
    assert brute_force(cands, y, 4) == {"A": 1, "B": 1}  # the mix that is known best
    choice = select_ensemble(cands, y, k=5)
    assert choice.single_best == "A" and choice.history[0][0] == "A"  # starts from the best single model
    assert choice.members == ("A", "B") and choice.counts == (1, 1) and choice.weights == (0.5, 0.5)
    assert len(choice.history) == 2  # a third selection (A, B or C) makes it worse: it stops
    ens = (cands["A"] + cands["B"]) / 2
    assert -choice.history[-1][1] == pytest.approx(log_loss(y, ens)) == pytest.approx(choice.val["log_loss"])
    assert choice.val["log_loss"] < choice.single_val["log_loss"]
    assert (choice.threshold, choice.val["f1_macro_in_sample"]) == tune_threshold(y, ens)  # as a trial's
    assert np.allclose(choice.probs(cands), ens)


def test_selection_with_replacement_weights_by_counts_and_respects_k():
    """Three calibrated models of independent noisy views of the label, one less noisy: the best mix
    of five selections weighs the strong one 3:1:1."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    signal = np.where(y == 1, 1.0, -1.0)

    def view(sd: float) -> np.ndarray:  # P(y = 1 | x) for x = signal + N(0, sd^2): logit 2x / sd^2
        return 1 / (1 + np.exp(-2 * (signal + rng.normal(0, sd, 2000)) / sd**2))

    cands = {"strong": view(1.0), "weak": view(1.25), "other": view(1.25)}
    best = brute_force(cands, y, 5)
    assert best == {"strong": 3, "weak": 1, "other": 1}
    choice = select_ensemble(cands, y, k=5)
    assert dict(zip(choice.members, choice.counts)) == best  # with replacement: strong chosen 3 times
    assert sum(choice.counts) == len(choice.history) <= 5
    assert choice.weights == tuple(c / sum(choice.counts) for c in choice.counts)
    expected = sum(c * cands[m] for m, c in zip(choice.members, choice.counts)) / sum(choice.counts)
    assert np.allclose(choice.probs(cands), expected)
    # many models that each help: k caps the selections
    parts = {f"m{i}": np.where(np.arange(600) % 6 == i, np.where(y[:600] == 1, 0.95, 0.05), 0.5) for i in range(6)}
    for k in (1, 3):
        c = select_ensemble(parts, y[:600], k=k)
        assert sum(c.counts) == k == len(c.history)
    assert select_ensemble(parts, y[:600], k=1).members == ("m0",)  # tie: the first listed


def test_nothing_improves_one_model_and_a_copy_of_it_adds_nothing():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    good = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, 500), 0.01, 0.99)
    cands = {"noise": rng.uniform(0, 1, 500), "good": good, "copy": good.copy()}
    choice = select_ensemble(cands, y, k=5)
    assert choice.members == ("good",) and choice.weights == (1.0,) and len(choice.history) == 1
    counts, walk = greedy_selection(np.stack(list(cands.values())), y, k=5)
    assert counts.tolist() == [0, 1, 0] and [i for i, _ in walk] == [1]
    with pytest.raises(ValueError, match="candidate 'bad': 3 probabilities for 500 val pairs"):
        select_ensemble({**cands, "bad": np.zeros(3)}, y)


def test_cross_fitted_val_figure_is_below_the_in_sample_one_where_selection_overfits():
    """30 models of pure noise: selecting among them and tuning the threshold on the same pairs looks
    good in-sample; chosen on one half and scored on the other, it is a coin."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    cands = {f"noise{i}": rng.uniform(0.3, 0.7, 300) for i in range(30)}
    choice = select_ensemble(cands, y, k=5, seed=7)
    assert choice.val["f1_macro_in_sample"] > 0.55
    assert choice.val["f1_macro_cross_fitted"] < choice.val["f1_macro_in_sample"] - 0.05
    assert choice.val["f1_macro_cross_fitted"] == pytest.approx(np.mean(choice.val["f1_macro_cross_fitted_halves"]))
    # the halves are afqmc.metrics' (the trials' own split of val, by the seed)
    crossed = cross_fitted_selection(np.stack(list(cands.values())), y, k=5, seed=7)
    assert crossed["f1_macro"] == choice.val["f1_macro_cross_fitted"]
    a, b = halves(y, 7)
    counts_a, _ = greedy_selection(np.stack(list(cands.values()))[:, a], y[a], k=5)
    assert crossed["members"][0] == np.flatnonzero(counts_a).tolist()


def test_flipped_test_labels_leave_the_choice_unchanged():
    cands, y = complementary()
    rng = np.random.default_rng(5)
    test_probs = {name: np.clip(p[rng.permutation(len(p))] + rng.normal(0, 0.05, len(p)), 0, 1)
                  for name, p in cands.items()}
    test_y = rng.integers(0, 2, len(y))
    choice = select_ensemble(cands, y, k=5)
    frozen = dataclasses.replace(choice)
    plain = judge_on_test(choice, test_probs, test_y)
    flipped = judge_on_test(choice, test_probs, 1 - test_y)
    assert choice == frozen and choice == select_ensemble(cands, y, k=5)  # members, weights, threshold
    assert plain["ensemble"]["threshold"] == flipped["ensemble"]["threshold"] == choice.threshold
    assert plain["ensemble"]["tp"] == flipped["ensemble"]["fp"]  # the labels were read by the judging only


def test_paired_bootstrap_interval_holds_the_gain_is_seeded_and_matches_index_resampling():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 800)
    a = np.where(rng.uniform(size=800) < 0.2, 1 - y, y)
    b = np.where(rng.uniform(size=800) < 0.3, 1 - y, y)
    out = paired_bootstrap_gain(y, a, b, n_resamples=2000, seed=0)
    observed = f1_score(y, a, average="macro") - f1_score(y, b, average="macro")
    assert out["gain_f1_macro"] == pytest.approx(observed)
    low, high = out["gain_ci95"]
    assert low < observed < high and low > 0  # a clearly better predictor: the interval is above 0
    assert paired_bootstrap_gain(y, a, b, seed=0) == out and paired_bootstrap_gain(y, a, b, seed=1) != out
    # the multinomial draw of the 8 kinds of pair is the index bootstrap: same spread
    idx = np.random.default_rng(9).integers(0, 800, (1000, 800))
    naive = [f1_score(y[i], a[i], average="macro") - f1_score(y[i], b[i], average="macro") for i in idx[:300]]
    draws = np.random.default_rng(0).multinomial(800, np.bincount(4 * y + 2 * a + b, minlength=8) / 800, size=2000)
    fast = _f1_macro(draws, "a") - _f1_macro(draws, "b")
    assert np.std(fast) == pytest.approx(np.std(naive), rel=0.2) and np.mean(fast) == pytest.approx(observed, abs=0.005)
    counts = np.bincount(4 * y + 2 * a + b, minlength=8)[None]
    assert _f1_macro(counts, "b")[0] == pytest.approx(f1_score(y, b, average="macro"))


# --- the exported folder and afqmc.predict ---------------------------------------------------------


def save_tiny(tiny_cfg, path, seed: int, **changes):
    """A randomly initialised tiny BERT saved as afqmc saves a trial's model (with its threshold)."""
    cfg = tiny_cfg(seed=seed, **changes)
    texts = [line for line in DEMO_TRAIN.read_text(encoding="utf-8").splitlines()[:300]]
    tokenizer = load_tokenizer(cfg, [json.loads(t)["text1"] + json.loads(t)["text2"] for t in texts])
    model = load_model(cfg, tokenizer)
    save_model_dir(path, model, tokenizer, cfg, {"val/threshold": 0.3 + 0.1 * seed, "val/f1_macro": 0.5})
    return sum(p.numel() for p in model.parameters())


def test_an_exported_ensemble_predicts_its_members_weighted_mean_alone(tiny_cfg, tmp_path, capsys, monkeypatch):
    params = save_tiny(tiny_cfg, tmp_path / "trial_a" / "checkpoint_000002" / "model", seed=1)
    params += save_tiny(tiny_cfg, tmp_path / "trial_b" / "model", seed=2, average_pair_orders=True)
    cands, y = complementary(extra=False)
    chosen = select_ensemble({"trial a": cands["A"], "trial_b": cands["B"]}, y)
    choice = dataclasses.replace(chosen, counts=(2, 1), weights=(2 / 3, 1 / 3), threshold=0.45)  # a chosen twice
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(DEMO_TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[300:330]), encoding="utf-8")
    pairs = load_pairs(data)
    expected = np.zeros(len(pairs))
    for folder, w in ((tmp_path / "trial_a" / "checkpoint_000002", 2 / 3), (tmp_path / "trial_b", 1 / 3)):
        model, tok, cfg = load_saved_model(folder)
        expected += w * np.asarray(predict_probs(model, tok, pairs, cfg.max_length))
    test = judge_on_test(choice, {"trial a": cands["A"], "trial_b": cands["B"]}, y)
    target = tmp_path / "results" / "s" / "ensemble"
    export_ensemble(choice, {"trial a": tmp_path / "trial_a" / "checkpoint_000002", "trial_b": tmp_path / "trial_b"},
                    target, figures={"test": test, "cost": {"seconds_per_pair": 0.002, "single_seconds_per_pair": 0.001}})
    shutil.rmtree(tmp_path / "trial_a")
    shutil.rmtree(tmp_path / "trial_b")  # the ensemble holds copies

    spec = json.loads((target / ENSEMBLE_JSON).read_text())
    assert is_ensemble(target) and spec["threshold"] == 0.45
    assert [(m["name"], m["path"], m["count"]) for m in spec["members"]] == [
        ("trial a", f"{MEMBERS_DIR}/trial_a", 2), ("trial_b", f"{MEMBERS_DIR}/trial_b", 1)]
    assert [m["threshold"] for m in spec["members"]] == [pytest.approx(0.4), pytest.approx(0.5)]
    assert spec["cost"]["members"] == 2 and spec["cost"]["parameters"] == params
    assert spec["selection"]["val"]["f1_macro_cross_fitted"] == chosen.val["f1_macro_cross_fitted"]
    assert spec["test"]["gain_ci95"] == test["gain_ci95"]
    assert sorted(p.name for p in (target / MEMBERS_DIR).iterdir()) == ["trial_a", "trial_b"]
    assert not (target / MEMBERS_DIR / "trial_a" / "metrics.json").exists()
    card = (target / "README.md").read_text(encoding="utf-8")
    assert "| trial a | 0.667 | 2 |" in card and "**0.4500**" in card and "cross-fitted" in card and "2.0x" in card

    out = tmp_path / "preds.jsonl"
    assert main(["--checkpoint", str(target), "--data", str(data), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert np.allclose([r["prob"] for r in rows], expected, atol=1e-6)
    assert [r["pred"] for r in rows] == [int(p >= 0.45) for p in expected]
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["threshold"] == 0.45 and metrics["num_samples"] == len(pairs)
    capsys.readouterr()
    assert main(["--checkpoint", str(target), "--text1", pairs.text1[0], "--text2", pairs.text2[0]]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["prob"] == pytest.approx(expected[0], abs=1e-6) and one["pred"] == int(expected[0] >= 0.45)
    monkeypatch.setattr(sys, "stdin", io.StringIO(data.read_text(encoding="utf-8")))
    assert main(["--checkpoint", str(target), "--data", "-", "--threshold", "0.2"]) == 0
    piped = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["pred"] for r in piped] == [int(p >= 0.2) for p in expected]
    assert load_ensemble(target).threshold == 0.45
    # the scoring helpers take an ensemble folder as they take a model folder
    assert score_pairs(target, pairs)["f1_macro"] == pytest.approx(metrics["f1_macro"])
    probs, threshold = predict_saved(target, pairs)
    assert threshold == 0.45 and np.allclose(probs, expected, atol=1e-6)
    assert not is_ensemble(target / MEMBERS_DIR / "trial_b") and not is_ensemble(tmp_path / "nowhere")
    cost = ensemble_cost(choice, {"trial a": 0.002, "trial_b": 0.003}, single="trial_b")
    assert cost == {"seconds_per_pair": 0.005, "single_seconds_per_pair": 0.003, "time_ratio": pytest.approx(5 / 3)}


def test_a_broken_ensemble_json_is_named_with_its_field(tmp_path, capsys):
    folder = tmp_path / "ensemble"
    folder.mkdir()
    (folder / ENSEMBLE_JSON).write_text(json.dumps({"format": "afqmc-ensemble", "threshold": 2,
                                                    "members": [{"path": "members/a", "weight": 1.0}]}))
    assert main(["--checkpoint", str(folder), "--text1", "a", "--text2", "b"]) == 2
    assert f"{folder / ENSEMBLE_JSON}: field 'threshold' must be a number in (0, 1)" in capsys.readouterr().err
    (folder / ENSEMBLE_JSON).write_text(json.dumps({"format": "afqmc-ensemble", "threshold": 0.5,
                                                    "members": [{"path": "members/a", "weight": 1.0}]}))
    assert main(["--checkpoint", str(folder), "--text1", "a", "--text2", "b"]) == 2
    assert "members/a: no such checkpoint or model directory" in capsys.readouterr().err


@pytest.mark.slow
def test_the_metric_benchmark_quick_mode_runs_on_the_shared_data(tmp_path):
    """benchmarks/ensemble_metric.py --quick (the measurement behind the log-loss choice) keeps working."""
    from conftest import need_shared

    need_shared()
    import importlib.util

    spec = importlib.util.spec_from_file_location("ensemble_metric", ROOT / "benchmarks" / "ensemble_metric.py")
    ensemble_metric = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ensemble_metric)

    out = tmp_path / "out.json"
    assert ensemble_metric.main(["--quick", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    for metric in ("log_loss", "auc"):
        r = run[metric]
        assert 0.45 < r["test_f1"] < 0.8 and 1 <= len(r["members"]) <= 5
        assert r["gain_ci95"][0] <= r["gain"] <= r["gain_ci95"][1]


def test_the_guard_keeps_first_rung_cuts_out_and_rejects_a_member_below_the_margin():
    """Issue 30's guard: a trial ASHA stopped at its first rung is no candidate (one stopped later is,
    and so is every fully trained one); the greedy walk adds a member only if it raises the val metric
    by more than the margin."""
    from tune.ensemble import candidates
    from tune.folder import TrialState
    from tune.results import TrialRecord

    def rec(number, state, evals):
        return TrialRecord(trial_id=f"t{number}", number=number, status="", state=state, evals=evals, params={},
                           best_value=0.5, best_checkpoint=f"/c/{number}")

    trials = [rec(0, TrialState.FINISHED, 8), rec(1, TrialState.STOPPED, 2), rec(2, TrialState.STOPPED, 4),
              rec(3, TrialState.FAILED, 3), rec(4, TrialState.FINISHED, 8)]
    assert [t.number for t in candidates(trials, first_rung=2)] == [0, 2, 4]
    assert [t.number for t in candidates(trials)] == [0, 1, 2, 4]  # FIFO: no rung, every kept model

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    first = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 600), 0, 1)
    second = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, 600), 0, 1)  # its own errors: averaging helps a bit
    probs = np.stack([first, second])
    _, walk = greedy_selection(probs, y, k=5, metric="auc")
    assert len(walk) >= 2
    gain = walk[1][1] - walk[0][1]
    assert gain > 0
    _, kept = greedy_selection(probs, y, k=5, metric="auc", margin=0.5 * gain)
    _, guarded = greedy_selection(probs, y, k=5, metric="auc", margin=1.01 * gain)
    assert kept[:2] == walk[:2] and guarded == walk[:1]  # below the margin: the member stays out


def test_the_walk_starts_from_the_search_best_and_it_stands_alone_when_nothing_adds_the_margin(tmp_path, monkeypatch):
    """Issue 30: the ensemble starts from the model it is judged against (the search's best, chosen on
    val F1-macro), not from the best candidate by val AUC; when no other model raises val AUC by more
    than the margin, there is no ensemble: the summary says the best model stands alone, nothing is
    exported, and an earlier report's ensemble/ (under another margin) is removed."""
    from types import SimpleNamespace

    from tune import scoring
    from tune.ensemble import ensemble_lines, search_ensemble, select_ensemble
    from tune.folder import TrialState
    from tune.results import TrialRecord

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    probs = {"t0": np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, 400), 0, 1),   # the search's best
             "t1": np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.2, 400), 0, 1),   # the best by AUC
             "t2": np.clip(0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.2, 400), 0, 1)}
    by_auc = select_ensemble({f"trial {k[1]}": v for k, v in probs.items()}, y, k=5, metric="auc")
    assert by_auc.single_best == "trial 1" and by_auc.history[0][0] == "trial 1"
    from_best = select_ensemble({f"trial {k[1]}": v for k, v in probs.items()}, y, k=5, metric="auc", start="trial 0")
    assert from_best.single_best == "trial 0" and from_best.history[0][0] == "trial 0"
    assert from_best.members[0] == "trial 0" and "trial 1" in from_best.members  # the better one joins it

    trials = [TrialRecord(trial_id=f"t{n}", number=n, status="", state=TrialState.FINISHED, evals=8, params={},
                          best_value=0.6 - 0.01 * n, best_checkpoint=f"/c/{n}") for n in range(3)]
    monkeypatch.setattr(scoring, "model_probs", lambda exp, ts, pairs, split: {
        "probs": {t.trial_id: probs[t.trial_id] for t in ts}, "threshold": {t.trial_id: 0.5 for t in ts},
        "seconds_per_pair": {t.trial_id: 1e-4 for t in ts}})
    stale = tmp_path / "ensemble"
    stale.mkdir()
    (stale / ENSEMBLE_JSON).write_text("{}")
    pairs = SimpleNamespace(labels=y)
    entry = search_ensemble(tmp_path, SimpleNamespace(seed=0), trials, trials[0], k=5, test_pairs=pairs,
                            val_pairs=pairs, metric="auc", margin=0.5)
    assert entry["alone"] and entry["folder"] is None and entry["test"] is None
    assert [m["trial"] for m in entry["members"]] == [0] and entry["margin"] == 0.5
    assert not stale.exists()
    assert ensemble_lines(entry) == ["ensemble: none: no other kept model raised val auc by more than "
                                     "search.ensemble_margin 0.5 over the best model's (trial 0), so the best model "
                                     "stands alone"]


def test_reseeding_an_ensemble_that_is_the_best_model_alone_is_refused_with_what_to_run(tmp_path):
    """An ensemble that is the best model alone has nothing to reseed beyond the best: the refusal names
    the folder, the margin and the command that does it (--reseed K)."""
    from tune.folder import SearchState
    from tune.reseed import reseed_ensemble

    SearchState(space="space.yaml").save(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"ensemble": {
        "alone": True, "margin": 0.005, "members": [{"trial": 3, "weight": 1.0, "count": 1}]}}))
    with pytest.raises(ValueError, match=r"best model alone .*0\.005.*--reseed 2") as err:
        reseed_ensemble(tmp_path, 2)
    assert str(tmp_path) in str(err.value)
