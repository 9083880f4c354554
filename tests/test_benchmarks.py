"""The benchmarks' --quick modes, run for real (made smaller still) so that they do not rot.

These check that each benchmark finishes and reports sane figures (positive samples/s, F1 in
[0, 1], a ratio computed from them), never that a timing goal is met: the machines are shared
and noisy, and the goals are judged in benchmarks/README.md from full runs.
"""

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, need_shared

BENCH = ROOT / "benchmarks"


def run_bench(script: str, tmp_path, *args: str, timeout: int = 300) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    cmd = [sys.executable, str(BENCH / f"{script}.py"), *args, "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=timeout)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    return json.loads(out.read_text()), run.stdout


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def f1(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


@pytest.mark.slow
@pytest.mark.full
def test_loop_overhead_quick(tmp_path):
    need_shared()
    res, stdout = run_bench("loop_overhead", tmp_path, "--quick", "--steps", "8", "--pairs", "1",
                            "--data", str(SHARED))
    assert res["identical_batches"]  # the plain loop trained on exactly train()'s batches
    assert res["train_loss_ours"] == pytest.approx(res["train_loss_plain"], rel=1e-4)  # ... and did the same work
    for key in ("ours_samples_per_second", "plain_samples_per_second", "ours_samples_per_cpu_second",
                "plain_samples_per_cpu_second"):
        assert positive(res[key]), key
    pair = res["pairs"][0]
    assert res["ratio"] == pytest.approx(pair["ours_cpu"] / pair["plain_cpu"])
    assert res["ratio_wall"] == pytest.approx(pair["ours_wall"] / pair["plain_wall"])
    assert "ours / plain samples per CPU second" in stdout


@pytest.mark.slow
@pytest.mark.full
def test_dynamic_padding_quick(tmp_path):
    need_shared()
    res, stdout = run_bench("dynamic_padding", tmp_path, "--quick", "--speed_steps", "6", "--rounds", "1",
                            "--quality_pairs", "320", "--val_pairs", "256", "--data", str(SHARED))
    assert 20 < res["padding"]["mean_pair_tokens"] < 40  # AFQMC pairs are about 30 tokens
    assert res["padding"]["grouped_mean_width"] < res["padding"]["dynamic_mean_width"] <= 64
    assert all(positive(r["cpu_median"]) and positive(r["wall_median"]) for r in res["speed"]) and len(res["speed"]) == 6
    assert len(res["ratios"]) == 7 and all(positive(v) for v in [*res["ratios"].values(), *res["ratios_wall"].values()])
    runs = res["speed_runs_cpu"]
    assert res["ratios"]["ours_grouped_vs_pad64"] == pytest.approx(runs["ours/grouped"][0] / runs["ours/pad64"][0])
    assert [q["variant"] for q in res["quality"]] == ["ours/grouped", "ours/dynamic", "ours/pad64"]
    assert all(f1(q["val_f1_macro"]) and q["steps"] == 10 for q in res["quality"])
    assert "ours/grouped vs ours/pad64 (group_by_length: true)" in stdout


@pytest.mark.slow
@pytest.mark.full
def test_techniques_quick(tmp_path):
    """The baseline and FGM over 2 seeds, at equal updates and at equal CPU time, and the TF-IDF floor."""
    need_shared()
    res, stdout = run_bench("techniques", tmp_path, "--quick", "--only", "FGM (epsilon 1)", "--processes", "1",
                            "--data", str(SHARED))
    rows = {(r["technique"], r["budget"]): r for r in res["rows"]}
    assert set(rows) == {("baseline", "equal updates"), ("FGM (epsilon 1)", "equal updates"),
                         ("FGM (epsilon 1)", "equal CPU time"), ("lexical floor: char TF-IDF + LR", "-")}
    assert all(f1(r["test_f1_mean"]) for r in rows.values())
    fgm, timed = rows[("FGM (epsilon 1)", "equal updates")], rows[("FGM (epsilon 1)", "equal CPU time")]
    assert fgm["seeds"] == 2 and fgm["welch_p"] is not None and fgm["cost_per_update"] > 1.2  # a second backward
    assert timed["updates"] < fgm["updates"] == 30
    assert res["lexical_floor"]["test_pairs"] == 300 and "lexical floor" in stdout


@pytest.mark.slow
@pytest.mark.full
def test_gpu_check_without_a_gpu_and_on_cpu(tmp_path):
    import torch

    if not torch.cuda.is_available():  # says so and exits 0
        res, stdout = run_bench("gpu_check", tmp_path)
        assert res["measured"] is False and "no CUDA GPU" in stdout
    # The same code paths on CPU with a small model: one trial per precision, two trials in two
    # processes, train() against the plain loop.
    res, _ = run_bench("gpu_check", tmp_path, "--cpu_smoke", "--steps", "2")
    assert [r["precision"] for r in res["single"]] == ["fp16", "bf16", "fp16+sync"]
    assert all(positive(r["samples_per_second"]) and not r["oom"] for r in res["single"])
    assert res["two_trials_fit"] and len(res["two_trials"]) == 2
    assert all(positive(r["samples_per_second"]) for r in res["two_trials"])
    assert positive(res["ours_vs_plain"]["ratio"])
    assert [r["gradient_checkpointing"] for r in res["checkpointing"]] == [False, True]
    assert all(positive(r["samples_per_second"]) for r in res["checkpointing"])


# --- the search benchmarks: Ray's start and a trial process's imports (~20 s) dominate these ------------

TINY_SEARCH = ["--max_train_samples", "600", "--eval_steps", "3", "--max_evals", "2", "--grace_period", "1"]


@pytest.mark.slow
@pytest.mark.full
def test_search_compare_quick(tmp_path, capsys):
    """FIFO with a tuned threshold, ASHA and Trainer.hyperparameter_search (Optuna backend; the Ray
    one would start another Ray and pickle the Trainer, ~40 s more) on 2 trials of 3 x 3 updates,
    every search scored on the same held-out test split. Not run here (each search is ~25 s of
    start-up): the searched-threshold FIFO run, whose part of the report is checked on a copy of
    FIFO's run (a searched threshold in a real search: tests/test_results.py), and the random
    search, a FIFO search with search.sampler: random (its draws: tests/test_search.py)."""
    import copy

    need_shared()
    work = tmp_path / "work"
    res, stdout = run_bench("search_compare", tmp_path, "--quick", "--num_samples", "2", "--n_startup_trials", "2",
                            "--max_train_samples", "600", "--eval_steps", "3", "--max_evals", "3", "--grace_period", "1",
                            "--runs", "fifo,asha,hf_optuna", "--data", str(SHARED), "--workdir", str(work),
                            timeout=900)  # three searches: ~2 min idle, past 3 on a loaded machine
    runs = res["runs"]
    asha, fifo, hf = runs["asha"], runs["fifo"], runs["hf_optuna"]
    assert "error" not in hf, hf
    assert [len(r["trials"]) for r in (asha, fifo, hf)] == [2, 2, 2]
    _check_anytime(res, runs)
    # The baseline, then the same seeded random trials, in our searches; the peer starts the same.
    assert res["same_start_trials"]
    assert hf["trials"][0]["learning_rate"] == pytest.approx(5e-4)
    assert hf["trials"][1]["learning_rate"] == pytest.approx(asha["trials"][1]["learning_rate"], rel=1e-9)
    assert fifo["total_steps"] == 2 * 3 * 3  # FIFO runs every trial to the budget
    assert 0 < asha["total_steps"] <= fifo["total_steps"] and 0 < hf["total_steps"] <= 2 * 3 * 3
    for run in (asha, fifo, hf):
        assert positive(run["wall_s"]) and f1(run["best_value"]) and f1(run["test"]["best"]["f1_macro"])
        assert run["test_pairs"] == 60  # 10% of the 600 pairs, the same split in every search
    assert fifo["metric"] == "val/f1_macro" and set(fifo["curves"]) >= {"val/f1_macro_tuned", "val/auc", "val/ap"}
    # tuned: the ranked value is the cross-fitted tuned F1.
    for n, curve in fifo["curves"]["val/f1_macro"].items():
        assert curve == fifo["curves"]["val/f1_macro_tuned"][n]
    assert res["steps_ratio"] == pytest.approx(asha["total_steps"] / fifo["total_steps"])
    assert res["value_ratio"] == pytest.approx(asha["best_value"] / fifo["best_value"])
    roles = res["metric_roles"]
    assert {(c["run"], c["candidate"]) for c in roles["correlation"]} == {
        ("fifo", "tuned F1"), ("fifo", "AUC"), ("fifo", "AP")}
    assert all(len(c["spearman"]) == 3 for c in roles["correlation"])  # one per evaluation
    assert roles["replay"] and all(0 < r["perfect_share"] <= 1 for r in roles["replay"])
    assert positive(res["vs_hf_optuna"]["time_ratio"])
    assert "ASHA / FIFO: updates" in stdout and "ours (asha) vs hf_optuna: wall time ratio" in stdout
    assert "Spearman" in stdout

    # The report with a searched-threshold run beside FIFO's (here a copy of it, so every difference is 0).
    sys.path.insert(0, str(BENCH))
    import search_compare

    loaded = {name: json.loads((work / f"{name}.json").read_text()) for name in ("fifo", "asha")}
    loaded["fifo_searched"] = copy.deepcopy(loaded["fifo"])
    out = search_compare.report(loaded, res["budget"], orders=20)
    printed = capsys.readouterr().out
    assert {(c["run"], c["candidate"]) for c in out["metric_roles"]["correlation"]} == {
        ("fifo", "tuned F1"), ("fifo", "AUC"), ("fifo", "AP"), ("fifo_searched", "tuned F1"),
        ("fifo_searched", "AUC"), ("fifo_searched", "AP"), ("fifo_searched", "F1 at sampled thr")}
    assert set(out["tuned_vs_searched_test_f1"]) == {"tuned", "searched", "difference"}
    assert out["tuned_vs_searched_test_f1"]["difference"] == pytest.approx(0.0)
    assert "tuned vs searched threshold" in printed


def _check_anytime(res: dict, runs: dict) -> None:
    """search_compare's anytime figures: each curve monotone, ending at its search's best and spend;
    ours with the best's held-out test F1 at its end, the peer's retrained model after its search."""
    from pathlib import Path

    anytime = res["anytime"]
    assert set(anytime["runs"]) == set(runs) and Path(anytime["plot"]).is_file()
    for name, figures in anytime["runs"].items():
        curve, run = runs[name]["anytime"], runs[name]
        for key in ("updates", "wall_s", "best"):
            assert curve[key] == sorted(curve[key]), (name, key)
        assert curve["best"][-1] == pytest.approx(run["best_value"]) and curve["test_f1"][-1] == run["test"]["best"]["f1_macro"]
        assert curve["updates"][-1] == run["total_steps"] + (9 if name == "hf_optuna" else 0)  # + the peer's retraining
        reached = figures["reach_val"]
        assert reached is None or (reached["value"] >= anytime["targets"]["val"] and reached["updates"] <= curve["updates"][-1])
    assert anytime["runs"]["fifo"]["reach_val"]["updates"] <= runs["fifo"]["total_steps"]  # it reaches its own best


@pytest.mark.slow
@pytest.mark.full
def test_search_overhead_quick(tmp_path):
    need_shared()
    res, stdout = run_bench("search_overhead", tmp_path, "--quick", "--sizes", "600", "--rounds", "1",
                            "--eval_steps", "3", "--max_evals", "1", "--gap_trials", "3", "--gap_eval_steps", "2",
                            "--data", str(SHARED))
    row = res["rows"][0]
    assert positive(row["direct_s"]) and positive(row["search_s"]) and positive(res["trial_process_imports_s"])
    assert row["overhead_s"] == pytest.approx(row["search_s"] - row["direct_s"])
    # Where the time goes: every step of the search was seen, and together they are the search
    # (less what follows the reports: the closing lines); the direct run's steps are its whole run.
    steps = {x["step"]: x for x in res["breakdown"]}
    assert len(steps) == 8 and all(x["search_s"] is not None and x["search_s"] >= 0 for x in steps.values())
    assert positive(steps["ray start"]["search_s"]) and positive(steps["tuner set-up, trial process start"]["search_s"])
    assert sum(x["search_s"] for x in steps.values()) == pytest.approx(row["search_s"], abs=1.0)
    assert sum(x["direct_s"] or 0 for x in steps.values()) == pytest.approx(row["direct_s"], abs=0.01)
    assert "where the time goes" in stdout
    # The data is tokenized once per search (train and val), in the driver; never in a trial process.
    assert res["tokenized_once_in_driver"]
    # 600 pairs, of which the CPU space holds out 10% as test (never tokenized: only the best models read it).
    assert res["tokenization"]["search_600_0"] == {"driver_calls": 2, "driver_pairs": 540, "trial_process_calls": 0}
    assert "once per search, in the driver" in stdout
    # Fixed overhead beyond the base imports, and the per-trial gap: the 3 trials ran one after another in
    # one reused trial process, which read the search's data from the object store once (SharedData).
    # (Each import time is one fresh process's wall time, so their order is not asserted: a busy machine swaps it.)
    assert positive(res["base_imports_s"]) and positive(res["trial_process_imports_s"])
    assert res["fixed_overhead_beyond_imports_s"]["600"] == pytest.approx(row["overhead_s"] - res["base_imports_s"])
    gaps = res["gaps"]
    assert len(gaps) == 2 and all(g["trial_processes"] == 1 and g["data_cached"] for g in gaps)
    for g in gaps:
        steps = [g[k] for k in ("to_next_start_s", "config_s", "accelerator_s", "setup_s", "model_s", "to_first_update_s")]
        assert all(x >= 0 for x in steps) and sum(steps) == pytest.approx(g["gap_s"])
        assert positive(g["model_s"]) and g["gap_less_model_s"] == pytest.approx(g["gap_s"] - g["model_s"])
    assert res["gap_median"][0]["gaps"] == 2 and "per-trial gap" in stdout


@pytest.mark.slow
@pytest.mark.full
def test_warm_start_quick(tmp_path):
    """benchmarks/warm_start.py on tiny spaces: every run made, the warm search's enqueued configurations
    found among its trials, the extension grown to twice the trials."""
    need_shared()
    res, stdout = run_bench("warm_start", tmp_path, "--quick", "--spaces", "demo", "--workdir", str(tmp_path / "w"),
                            "--data", str(SHARED), timeout=900)
    runs = res["spaces"]["demo"]["runs"]
    assert set(runs) == {"first", "cold", "extend", "warm", "xfer"}
    assert runs["cold"]["trials"] == runs["extend"]["trials"] == 2 * runs["first"]["trials"]
    assert runs["extend"]["extensions"][0]["from"] == runs["first"]["trials"]
    assert runs["warm"]["informing"] == runs["first"]["trials"] and runs["xfer"]["informing"] == 0
    assert all(e["trial"] is not None for e in runs["warm"]["enqueued"] + runs["xfer"]["enqueued"])
    assert all(f1(r["best_val"]) and positive(r["updates"]) for r in runs.values())
    assert "demo: cold best val" in stdout


@pytest.mark.slow
@pytest.mark.full
def test_confirm_quick(tmp_path):
    """benchmarks/confirm.py on a tiny demo space, one search seed: the stage ran, its figures are read."""
    res, stdout = run_bench("confirm", tmp_path, "--quick", "--spaces", "demo", "--seeds", "0", "--workdir",
                            str(tmp_path / "c"), timeout=900)
    run = res["spaces"]["demo"]["runs"]["0"]
    assert positive(run["stage_updates"]) and f1(run["winner_test_mean"]) and f1(run["baseline_test_mean"])
    assert run["single_seed_winner"]["trial"] is not None and "confirmed_winner_test_mean" in stdout
