"""The training loop, driven for real on the tiny preset."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, BertTokenizer

from sklearn.metrics import f1_score

from afqmc.config import ConfigError, from_dict
from afqmc.data import load_pairs, load_splits, split_train_val
from afqmc.metrics import evaluation_metrics
from afqmc.modeling import load_model, load_tokenizer
from afqmc.predict import load_saved_model, predict_probs, saved_threshold
from afqmc.train import TrainingError, prepare_data, train
from conftest import AFQMC_TRAIN, DEMO_TEST, DEMO_TRAIN, ROOT, VOCAB, need_shared

# Every test here trains (or launches the CLI): the full run, not the quick tier (-m "not slow").
pytestmark = pytest.mark.slow


def spy_on_clipping(monkeypatch) -> list:
    """Record, at each optimizer update, the accumulated gradients before and after clipping."""
    seen = []
    original = Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *args, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        grads = [p.grad.detach().clone() for p in parameters]
        before = original(self, parameters, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in parameters]))
        seen.append({"grads": grads, "before": float(before), "after": float(after), "max_norm": max_norm})
        return before

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    return seen


def test_accumulation_matches_one_big_batch(tiny_cfg, tmp_path, monkeypatch):
    """8 x 4 accumulated and 32 x 1 give the same update (fp32, no dropout, no class weights).

    Compared on the gradient that reaches the optimizer: Adam's first step is lr * sign(g) for
    every element, so weights would differ wherever g is float noise around 0.
    """
    seen = spy_on_clipping(monkeypatch)
    common = dict(max_steps=1, eval_steps=1, dropout=0.0, attention_dropout=0.0, warmup_ratio=0.0,
                  class_weights=None, seed=3)
    a = tiny_cfg(per_device_batch_size=8, gradient_accumulation_steps=4, output_dir=str(tmp_path / "a"), **common)
    b = tiny_cfg(per_device_batch_size=32, gradient_accumulation_steps=1, output_dir=str(tmp_path / "b"), **common)
    data = prepare_data(a)
    ra, rb = [], []
    train(a, report=lambda m, c: ra.append(m), data=data, progress=False)
    train(b, report=lambda m, c: rb.append(m), data=data, progress=False)
    assert len(seen) == 2  # one update each, however many micro-batches
    # Equal up to fp32 summation order (batch shapes differ). Per tensor that noise is large for the
    # attention query/key gradients, which nearly cancel at a random init, so compare the whole update.
    assert seen[0]["before"] == pytest.approx(seen[1]["before"], rel=1e-3)
    ga, gb = (torch.cat([g.flatten() for g in s["grads"]]) for s in seen)
    assert ((ga - gb).norm() / gb.norm()).item() < 1e-2  # no division by 4 would give 3.0
    assert ra[-1]["train/loss"] == pytest.approx(rb[-1]["train/loss"], rel=1e-4)
    assert ra[-1]["val/loss"] == pytest.approx(rb[-1]["val/loss"], rel=1e-3)


def test_clipping_bounds_the_gradient_norm(tiny_cfg, monkeypatch):
    seen = spy_on_clipping(monkeypatch)
    train(tiny_cfg(max_steps=5, max_grad_norm=0.05, eval_steps=5), progress=False)
    assert len(seen) == 5
    for s in seen:
        assert s["max_norm"] == 0.05
        assert s["before"] > 0.05  # clipping had something to do ...
        assert s["after"] <= 0.05 * 1.001  # ... and did it


def test_metrics_reported_at_every_evaluation_and_best_model_reloads(tiny_cfg, tmp_path):
    reports = []
    cfg = tiny_cfg(eval_steps=5, max_steps=15, test_file=str(DEMO_TEST))  # threshold: tuned (the default)
    summary = train(cfg, report=lambda m, ckpt: reports.append((m, ckpt)), progress=False)
    assert [m["step"] for m, _ in reports] == [5, 10, 15] and [m["evals"] for m, _ in reports] == [1, 2, 3]
    keys = {"train/loss", "val/loss", "val/accuracy", "val/f1_macro", "val/precision_0", "val/recall_1",
            "val/f1_0", "val/f1_1", "val/tn", "val/fp", "val/fn", "val/tp", "val/threshold", "val/best_threshold",
            "val/f1_macro_at_best_threshold", "val/f1_macro_tuned", "val/auc", "val/ap", "best/val_f1_macro",
            "train/samples_per_second", "train/lr"}
    assert keys <= set(reports[0][0])
    for m, _ in reports:
        assert m["val/tn"] + m["val/fp"] + m["val/fn"] + m["val/tp"] == m["val/num_samples"] == 120
        # tuned: the reported F1 is the cross-fitted one, never above the in-sample one of the same scores
        assert m["val/threshold"] == m["val/best_threshold"] and m["val/f1_macro"] == m["val/f1_macro_tuned"]
        assert m["val/f1_macro"] <= m["val/f1_macro_at_best_threshold"]
    best = max(r[0]["val/f1_macro"] for r in reports)
    assert summary["best"]["val/f1_macro"] == best

    out = tmp_path / "run"
    saved = json.loads((out / "best_model" / "metrics.json").read_text())
    assert saved["val/f1_macro"] == best
    # The saved model carries the threshold chosen on all of val, and reproduces its val metrics
    # (scores, cross-fitted F1, threshold) through the predict path ...
    model, tok, saved_cfg = load_saved_model(out / "best_model")
    assert model.config.decision_threshold == pytest.approx(saved["val/threshold"])
    assert saved_threshold(model, saved_cfg) == pytest.approx(saved["val/threshold"])
    val = load_splits(cfg).val  # val pairs as text again, through the same split
    probs = predict_probs(model, tok, val, saved_cfg.max_length)
    again = evaluation_metrics(val.labels, probs, saved_cfg.threshold, seed=saved_cfg.seed)
    assert again["val/f1_macro"] == pytest.approx(best, abs=1e-9)
    assert again["val/threshold"] == pytest.approx(saved["val/threshold"], abs=1e-6)
    assert again["val/auc"] == pytest.approx(saved["val/auc"], abs=1e-6)
    # ... and loads with plain transformers too.
    assert AutoModelForSequenceClassification.from_pretrained(out / "best_model").config.num_labels == 2
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 300 and all(0.0 <= p["prob"] <= 1.0 and p["pred"] in (0, 1) for p in preds)
    assert all(p["pred"] == int(p["prob"] >= saved["val/threshold"]) for p in preds if abs(p["prob"] -
                                                                                       saved["val/threshold"]) > 1e-5)
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["best_step"] == summary["best_step"]
    assert "test" not in summary_file  # the demo test file has no labels: predicted, not scored


def test_fixed_threshold_is_used_as_given(tiny_cfg):
    reports = []
    train(tiny_cfg(eval_steps=5, max_steps=10, threshold=0.45), report=lambda m, c: reports.append(m), progress=False)
    for m in reports:
        assert m["val/threshold"] == 0.45  # never the tuned one
        assert m["val/f1_macro_tuned"] <= m["val/f1_macro_at_best_threshold"]


def test_held_out_test_split_is_disjoint_stratified_and_scored_once_at_the_end(tiny_cfg, tmp_path):
    cfg = tiny_cfg(eval_steps=5, max_steps=10, max_train_samples=1000, val_ratio=0.2, test_ratio=0.2)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (600, 200, 200)
    lines = [set(x.lines) for x in (splits.train, splits.val, splits.test)]
    assert not (lines[0] & lines[1]) and not (lines[0] & lines[2]) and not (lines[1] & lines[2])
    assert abs(splits.test.label_counts()[1] / 200 - splits.train.label_counts()[1] / 600) < 0.01
    # Without a test split, the val split is the one this project always made.
    no_test = load_splits(cfg.replace(test_ratio=0.0))
    _, val = split_train_val(load_pairs(cfg.train_file, max_rows=1000), 0.2, cfg.seed)
    assert no_test.test is None and no_test.val.lines == val.lines

    summary = train(cfg, progress=False)
    test = summary["test"]
    assert test["num_samples"] == 200 and test["source"].endswith("(test split)")
    assert test["threshold"] == pytest.approx(summary["best"]["val/threshold"])  # the saved one, not a new choice
    model, tok, saved_cfg = load_saved_model(tmp_path / "run" / "best_model")
    probs = predict_probs(model, tok, splits.test, saved_cfg.max_length)
    assert test["f1_macro"] == pytest.approx(f1_score(splits.test.labels, (np.array(probs) >= test["threshold"])
                                                      .astype(int), average="macro"))
    assert "best_threshold" not in test  # a threshold chosen on test is not reported for the test set


def test_a_labelled_test_file_is_the_held_out_test_set(tiny_cfg, tmp_path):
    rows = [json.loads(line) for line in DEMO_TRAIN.read_text(encoding="utf-8").splitlines()[-100:]]
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    summary = train(tiny_cfg(eval_steps=5, max_steps=5, test_file=str(test_file)), progress=False)
    assert summary["test"]["num_samples"] == 100 and summary["predictions"].endswith("predictions.jsonl")
    with pytest.raises(ConfigError, match="test_ratio"):
        load_splits(tiny_cfg(test_file=str(test_file), test_ratio=0.1))


@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_matches_an_uninterrupted_run(tiny_cfg, tmp_path, group_by_length):
    """Stop after the 2nd evaluation (mid-epoch), resume from the checkpoint, end where one run ends."""
    common = dict(eval_steps=4, max_steps=12, max_train_samples=800, dropout=0.1, group_by_length=group_by_length)
    full = []
    train(tiny_cfg(output_dir=str(tmp_path / "full"), **common), report=lambda m, c: full.append(m), progress=False)

    class Stop(Exception):
        pass

    def stop_at_8(m, ckpt):
        if m["step"] == 8:
            raise Stop

    cfg = tiny_cfg(output_dir=str(tmp_path / "cut"), **common)
    with pytest.raises(Stop):
        train(cfg, report=stop_at_8, progress=False)
    resumed = []
    train(cfg, report=lambda m, c: resumed.append(m), resume_from=str(tmp_path / "cut" / "checkpoint"),
          progress=False)
    assert [m["step"] for m in resumed] == [12]
    for key in ("train/loss", "val/loss", "val/f1_macro", "train/lr"):
        assert resumed[-1][key] == pytest.approx(full[-1][key], rel=1e-4, abs=1e-6), key


def test_group_by_length_trains_on_the_samplers_batches_each_epoch(tiny_cfg, monkeypatch):
    """train() with group_by_length takes its batches from LengthGroupedSampler, re-drawn per epoch
    (Accelerate's prepared loader passes set_epoch on to it)."""
    import afqmc.train as afqmc_train
    from afqmc.data import LengthGroupedSampler

    cfg = tiny_cfg(group_by_length=True, max_steps=30, eval_steps=30, max_train_samples=400)  # 320 train pairs: 10 batches
    data = prepare_data(cfg)
    seen, original = [], afqmc_train.collate

    def recording(batch, pad_id=0):
        seen.append(sorted(tuple(x["input_ids"]) for x in batch))
        return original(batch, pad_id=pad_id)

    monkeypatch.setattr(afqmc_train, "collate", recording)
    train(cfg, data=data, progress=False)
    lengths = [len(x) for x in data.train.input_ids]
    sampler = LengthGroupedSampler(lengths, cfg.per_device_batch_size, seed=cfg.seed)
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected += [sorted(tuple(data.train.input_ids[i]) for i in b) for b in sampler.batches()]
    assert seen[:30] == expected  # (the val batches follow)
    assert expected[:10] != expected[10:20]


def test_nan_loss_stops_the_run_with_the_reason(tiny_cfg):
    with pytest.raises(TrainingError, match=r"training loss is (nan|inf|-inf) at step \d+ \(learning_rate 10000\)"):
        train(tiny_cfg(learning_rate=1e4, max_steps=40, eval_steps=10, max_grad_norm=1e9), progress=False)


def test_early_stopping_with_patience(tiny_cfg):
    # lr so small that F1 at a fixed threshold cannot improve after the first evaluation: stop after
    # `patience` (2) more, at the third.
    summary = train(tiny_cfg(learning_rate=1e-9, warmup_ratio=0.0, eval_steps=1, max_steps=30, patience=2,
                             threshold=0.5), progress=False)
    assert summary["stopped_early"] and summary["evals"] == 3 and summary["steps"] == 3
    assert summary["best_step"] == 1 and summary["last"]["early_stopped"] is True


def test_a_val_file_is_used_as_given(tiny_cfg, tmp_path):
    rows = DEMO_TRAIN.read_text(encoding="utf-8").splitlines()
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("\n".join(rows[-150:]) + "\n", encoding="utf-8")
    cfg = tiny_cfg(val_file=str(val_file), max_steps=5, eval_steps=5)
    data = prepare_data(cfg)
    assert len(data.val) == 150 and len(data.train) == 600  # the whole train_file (first 600 rows) trains
    reports = []
    train(cfg, report=lambda m, c: reports.append(m), data=data, progress=False)
    assert reports[-1]["val/num_samples"] == 150


def test_balanced_class_weights_are_n_over_two_n_c():
    from afqmc.train import _class_weights

    labels = [0] * 69 + [1] * 31
    weights = _class_weights(from_dict({"class_weights": "balanced"}), labels)
    assert weights.tolist() == pytest.approx([100 / (2 * 69), 100 / (2 * 31)])
    assert _class_weights(from_dict({"class_weights": 2.0}), labels).tolist() == [1.0, 2.0]
    assert _class_weights(from_dict({"class_weights": None}), labels) is None


def test_macbert_format_checkpoint_loads_through_the_real_path(tmp_path):
    """A save_pretrained dir shaped like hfl/chinese-macbert-base (config, safetensors, tokenizer)."""
    need_shared()
    ckpt = tmp_path / "chinese-macbert-base"
    tok = BertTokenizer(str(VOCAB))
    config = BertConfig(vocab_size=21128, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, architectures=["BertForMaskedLM"])
    BertForSequenceClassification(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    cfg = from_dict({"model_name_or_path": str(ckpt), "dropout": 0.2})
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    assert len(tokenizer) == 21128 and tokenizer("花呗")["input_ids"][1] != tokenizer.unk_token_id
    assert model.config.hidden_dropout_prob == 0.2 and model.config.classifier_dropout == 0.2
    assert model.config.num_labels == 2


def test_shared_afqmc_learns(tmp_path):
    """Tiny preset on 2,000 real AFQMC rows: the loss falls and val F1-macro beats the majority class."""
    need_shared()
    cfg = from_dict(dict(model_name_or_path="tiny", vocab_file=str(VOCAB), train_file=str(AFQMC_TRAIN),
                         max_train_samples=2000, learning_rate=5e-4, per_device_batch_size=32, num_epochs=4,
                         class_weights="balanced", output_dir=str(tmp_path / "afqmc")))
    reports = []
    train(cfg, report=lambda m, c: reports.append(m), progress=False)
    losses = [m["train/loss"] for m in reports]
    assert losses[-1] < losses[0]
    assert max(m["val/f1_macro"] for m in reports) > 0.45  # majority class: 0.41


def test_cli_runs_and_rejects_bad_fields(tmp_path, capsys):
    """`accelerate launch afqmc/train.py` as a process (the entry point); the prediction, the resume
    and the bad field call the modules' main() in this process (no interpreter start each)."""
    from afqmc import predict as predict_cli
    from afqmc import train as train_cli

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
           "--num_machines", "1", "--dynamo_backend", "no", str(ROOT / "afqmc" / "train.py"),
           "--config", str(ROOT / "afqmc" / "configs" / "demo.yaml"), "--max_steps", "6", "--eval_steps", "3",
           "--max_train_samples", "400", "--output_dir", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.index("resolved config:") < run.stdout.index("best val/f1_macro")
    for name in ("best_model/model.safetensors", "best_model/train_config.yaml", "best_model/metrics.json",
                 "checkpoint/trainer_state.json", "metrics.jsonl", "predictions.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    capsys.readouterr()
    code = predict_cli.main(["--checkpoint", str(out / "best_model"), "--data",
                             str(ROOT / "afqmc" / "demo_data" / "train.jsonl"), "--output", str(tmp_path / "p.jsonl")])
    assert code == 0 and "f1_macro" in capsys.readouterr().out and (tmp_path / "p.metrics.json").is_file()

    # --resume_from on the command line: the finished run resumes at its last step, trains nothing
    # more, and keeps its log.
    code = train_cli.main([*cmd[cmd.index("--config"):], "--resume_from", str(out / "checkpoint")])
    again = capsys.readouterr()
    assert code == 0, again.err[-3000:]
    assert f"resumed from {out / 'checkpoint'} at step 6" in again.out + again.err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    code = train_cli.main(["--config", str(ROOT / "afqmc" / "configs" / "demo.yaml"), "--learning_rte", "1e-3"])
    assert code == 2 and "unknown field 'learning_rte'" in capsys.readouterr().err


def test_exported_model_works_in_a_pipeline_and_carries_a_card(tiny_cfg, tmp_path):
    """The saved model names its labels, keeps its threshold in config.json, has a model card with
    its val and held-out test figures, and `transformers.pipeline` gives predict's labels once the
    threshold is applied (the three lines the README and the card show)."""
    from transformers import pipeline

    cfg = tiny_cfg(eval_steps=5, max_steps=10, max_train_samples=1000, test_ratio=0.2, test_file=str(DEMO_TEST))
    summary = train(cfg, progress=False)
    best = tmp_path / "run" / "best_model"
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "different", "1": "same"} and config["label2id"] == {"different": 0, "same": 1}
    assert config["decision_threshold"] == pytest.approx(summary["best"]["val/threshold"])
    card = (best / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert f"| held-out test | 200 | {summary['test']['f1_macro']:.4f} |" in card
    assert f"| val | 200 | {summary['best']['val/f1_macro']:.4f} |" in card
    assert f"P(same) >= **{config['decision_threshold']:.4f}**" in card and "threshold: tuned" in card

    clf = pipeline("text-classification", model=str(best), top_k=None, truncation=True)
    pairs = [json.loads(line) for line in DEMO_TEST.read_text(encoding="utf-8").splitlines()[:40]]
    outputs = clf([{"text": p["text1"], "text_pair": p["text2"]} for p in pairs])
    labels = []
    for scores in outputs:
        scores = {s["label"]: s["score"] for s in scores}
        labels.append("same" if scores["same"] >= clf.model.config.decision_threshold else "different")
    predicted = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[:40]]
    assert [("same" if p["pred"] else "different") for p in predicted] == labels
    for scores, p in zip(outputs, predicted, strict=True):
        assert {s["label"]: s["score"] for s in scores}["same"] == pytest.approx(p["prob"], abs=1e-5)


def test_predict_cli_one_pair_stdin_threshold_and_a_model_without_a_threshold(tiny_cfg, tmp_path, capsys,
                                                                              monkeypatch):
    """`python -m afqmc.predict` as a process once (the entry point); the other cases call its main()
    in this process (no interpreter start each: ~25 s less), with stdin, stdout and stderr as a shell
    would give them."""
    import io

    from afqmc import predict as predict_cli

    train(tiny_cfg(eval_steps=5, max_steps=5), progress=False)
    best = tmp_path / "run" / "best_model"
    one = subprocess.run([sys.executable, "-m", "afqmc.predict", "--checkpoint", str(best), "--text1", "花呗怎么还款",
                          "--text2", "花呗如何还钱"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert one.returncode == 0, one.stderr
    row = json.loads(one.stdout)
    threshold = json.loads((best / "config.json").read_text())["decision_threshold"]
    assert row["text1"] == "花呗怎么还款" and row["pred"] == int(row["prob"] >= threshold)

    def run(*args: str, checkpoint=best, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = predict_cli.main(["--checkpoint", str(checkpoint), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run("--text1", "花呗怎么还款", "--text2", "花呗如何还钱", "--threshold", "0.01")
    forced = json.loads(out)
    assert code == 0 and forced["prob"] == pytest.approx(row["prob"], abs=1e-6) and forced["pred"] == 1

    lines = DEMO_TEST.read_text(encoding="utf-8").splitlines()[:5]
    code, out, err = run("--data", "-", stdin="\n".join(lines) + "\n")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text1"] for r in rows] == [json.loads(line)["text1"] for line in lines]
    code, _, err = run("--data", "-", stdin='{"text1": "a"}\n')
    assert code == 2 and "<stdin>:1: missing field 'text2'" in err

    # A tuned model whose config.json lost its threshold: a clear error, unless --threshold is given.
    stripped = tmp_path / "stripped"
    shutil.copytree(best, stripped)
    config = json.loads((stripped / "config.json").read_text())
    del config["decision_threshold"]
    (stripped / "config.json").write_text(json.dumps(config))
    code, _, err = run("--text1", "a", "--text2", "b", checkpoint=stripped)
    assert code == 2 and "no decision threshold saved with the model" in err and "--threshold" in err
    code, out, _ = run("--text1", "a", "--text2", "b", "--threshold", "0.5", checkpoint=stripped)
    assert code == 0 and json.loads(out)["pred"] in (0, 1)


def test_bf16_on_cpu_runs_under_autocast(tiny_cfg):
    from accelerate.state import AcceleratorState

    # Accelerate keeps one precision per process; this test process trains in fp32 elsewhere.
    AcceleratorState._reset_state(True)
    try:
        summary = train(tiny_cfg(max_steps=3, eval_steps=3, mixed_precision="bf16"), progress=False)
    finally:
        AcceleratorState._reset_state(True)
    # Accelerate hands the logits back in fp32; inside, the layers computed in bfloat16.
    assert summary["precision"] == {"mixed_precision": "bf16", "forward_dtype": "bfloat16"}
    plain = train(tiny_cfg(max_steps=3, eval_steps=3), progress=False)
    assert plain["precision"] == {"mixed_precision": "no", "forward_dtype": "float32"}


def test_the_launcher_decides_unless_the_config_says_otherwise(tmp_path):
    def launch(out, *launcher_flags, extra=(), env=None):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--dynamo_backend", "no", *launcher_flags, str(ROOT / "afqmc" / "train.py"),
               "--config", str(ROOT / "afqmc" / "configs" / "demo.yaml"), "--max_steps", "4", "--eval_steps", "4",
               "--max_train_samples", "400", "--test_file", "null", "--output_dir", str(out), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, **(env or {})})
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout, json.loads((out / "summary.json").read_text()), (out / "train_config.yaml").read_text()

    # demo.yaml leaves both unset: `accelerate launch --mixed_precision bf16` decides, and Accelerate's
    # ACCELERATE_GRADIENT_ACCUMULATION_STEPS (which accelerate launch sets for DeepSpeed runs) too.
    stdout, summary, saved = launch(tmp_path / "a", "--mixed_precision", "bf16",
                                    env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
    assert summary["precision"] == {"mixed_precision": "bf16", "forward_dtype": "bfloat16"}
    assert summary["gradient_accumulation_steps"] == 2 and "x 2 accumulation" in stdout
    assert "mixed_precision: bf16" in saved and "gradient_accumulation_steps: 2" in saved
    assert "warning" not in stdout
    # A config value that disagrees wins, and says so, naming both.
    stdout, summary, saved = launch(tmp_path / "b", "--mixed_precision", "bf16", extra=("--mixed_precision", "no"))
    assert summary["precision"] == {"mixed_precision": "no", "forward_dtype": "float32"}
    assert "warning: mixed_precision 'no' in the config overrides the launcher's 'bf16'" in stdout
    assert "mixed_precision: 'no'" in saved


def test_report_to_tensorboard_and_mlflow_logs_the_config_and_every_evaluation(tiny_cfg, tmp_path):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reports = []
    train(tiny_cfg(eval_steps=3, max_steps=9, report_to=["tensorboard", "mlflow"]),
          report=lambda m, c: reports.append(m), progress=False)
    expected = [(m["step"], m["val/f1_macro"]) for m in reports]
    assert [s for s, _ in expected] == [3, 6, 9]
    out = tmp_path / "run"
    events = EventAccumulator(str(next((out / "afqmc").glob("events.out.tfevents.*"))))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/f1_macro")] == [(s, pytest.approx(v)) for s, v in expected]
    assert {"val/auc", "train/loss", "val/threshold"} <= set(events.Tags()["scalars"])
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("afqmc").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.0005" and run.data.params["threshold"] == "tuned"
    history = client.get_metric_history(run.info.run_id, "val/f1_macro")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in expected]
