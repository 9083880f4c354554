"""Data-parallel training under `accelerate launch` with two CPU processes (DDP over gloo)."""

import json
import socket
import subprocess
import sys

import pytest

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, processes: int, batch: int, extra: tuple[str, ...] = ()) -> tuple[list[dict], str]:
    launcher = ["--multi_gpu", "--main_process_port", str(free_port())] if processes > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "afqmc" / "train.py"), "--config", str(ROOT / "afqmc" / "configs" / "demo.yaml"),
           "--max_train_samples", "1205", "--max_steps", "4", "--eval_steps", "1", "--dropout", "0", "--attention_dropout", "0", "--class_weights", "null",
           "--per_device_batch_size", str(batch), "--test_file", "null", "--output_dir", str(out), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], run.stdout


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_effective_batch(tmp_path):
    one, _ = launch(tmp_path / "one", processes=1, batch=32)
    two, stdout = launch(tmp_path / "two", processes=2, batch=16)
    assert "x 2 processes" in stdout
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):  # shown with `pytest -s`: the figures compared below
        print(f"step {a['step']}: train loss {a['train/loss']:.6f} / {b['train/loss']:.6f}, val loss "
              f"{a['val/loss']:.6f} / {b['val/loss']:.6f}, val F1-macro {a['val/f1_macro']:.4f} / "
              f"{b['val/f1_macro']:.4f}, val pairs {a['val/num_samples']} / {b['val/num_samples']} (1 x 32 / 2 x 16)")
    # Only the main process logs and saves: one metrics line per evaluation, one summary line.
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    assert stdout.count("best val/f1_macro") == 1 and stdout.count("resolved config:") == 1
    for a, b in zip(one, two, strict=True):
        # Gathered over both processes: every val pair counted once, though 241 (20% of 1,205) does
        # not split evenly in two (Accelerate pads the last batch; gather_for_metrics drops the pad).
        assert a["val/num_samples"] == b["val/num_samples"] == 241
        assert b["val/tn"] + b["val/fp"] + b["val/fn"] + b["val/tp"] == 241
        assert b["val/auc"] == pytest.approx(a["val/auc"], abs=1e-2)
        assert b["train/lr"] == pytest.approx(a["train/lr"])
        # Adam turns fp32 noise in near-zero gradients into +-lr steps, so runs drift slightly apart.
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-2)
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-2)
    # The first update's loss is computed before any step: the same 32 samples (2 x 16) and the same
    # initial weights (DDP broadcasts rank 0's) give the same loss up to summation order.
    assert two[0]["train/loss"] == pytest.approx(one[0]["train/loss"], rel=1e-4)
    assert (tmp_path / "two" / "best_model" / "model.safetensors").is_file()
    # What the last evaluation predicted, gathered from both processes, is in the val split's order:
    # the labels of the split, and what the checkpoint's model predicts for each pair (val_probs.json).
    from afqmc.config import load_config
    from afqmc.data import load_splits
    from afqmc.predict import predict_saved

    checkpoint = tmp_path / "two" / "checkpoint"
    kept = json.loads((checkpoint / "val_probs.json").read_text())
    val = load_splits(load_config(checkpoint / "model" / "train_config.yaml")).val
    probs, threshold = predict_saved(checkpoint / "model", val)
    assert kept["labels"] == list(val.labels) and kept["threshold"] == pytest.approx(threshold)
    assert kept["probs"] == pytest.approx(probs, abs=1e-5)


@pytest.mark.slow
def test_two_processes_with_every_technique_on_train_and_save_once(tmp_path):
    """Pair orders, focal, FGM (a skipped pass decided on each device, with zero weight), R-Drop, layer-wise rates
    and EMA under DDP with accumulation: the run trains, only the main process logs and saves, and
    the saved model averages both orders."""
    extra = ("--augment_pair_order", "true", "--average_pair_orders", "true", "--focal_gamma", "1", "--fgm_epsilon",
             "0.5", "--rdrop_alpha", "1", "--layerwise_lr_decay", "0.8", "--ema_decay", "0.9",
             "--gradient_accumulation_steps", "2", "--dropout", "0.1", "--test_ratio", "0.1")
    two, stdout = launch(tmp_path / "two", processes=2, batch=8, extra=extra)
    assert "x 2 processes" in stdout and "8 x 2 accumulation" in stdout
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    assert all(m["val/num_samples"] == 241 and 0.0 < m["train/loss"] < 5.0 for m in two)
    assert stdout.count("best val/f1_macro") == 1 and stdout.count("held-out test (") == 1
    config = json.loads((tmp_path / "two" / "best_model" / "config.json").read_text())
    assert config["average_pair_orders"] is True
