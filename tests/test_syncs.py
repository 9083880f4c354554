"""No host sync per optimizer update: the loop reads the loss (and gathers across processes) only at
its evaluations and every FINITE_CHECK_EVERY updates, and a NaN still stops every process, at the same
update, with nothing after it saved. Real CPU runs of the tiny model, counted by wrapping the calls."""

import json
import subprocess
import sys

import pytest
import torch

import afqmc.train as afqmc_train
from afqmc.checkpoint import TRAINER_STATE_NAME
from afqmc.train import TrainingError, train
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from loop_overhead import count_syncs  # noqa: E402  (the benchmark's --syncs counts the same way)

pytestmark = pytest.mark.slow  # each test trains (a few seconds) or launches two processes


def nan_from(monkeypatch, micro_batch: int) -> None:
    """Make the training loss NaN from the `micro_batch`-th micro-batch on (1-based), in afqmc.train's objective."""
    real = afqmc_train.make_objective

    def make_objective(*args, **kwargs):
        inner, calls = real(*args, **kwargs), [0]

        def objective(model, batch, labels):
            calls[0] += 1
            loss = inner(model, batch, labels)
            return loss + float("nan") if calls[0] >= micro_batch else loss

        return objective

    monkeypatch.setattr(afqmc_train, "make_objective", make_objective)


def test_the_counter_sees_a_sync_and_a_collective_and_their_update(tiny_cfg):
    """The counter itself: a sync added to the loop after every update is found at every update."""
    cfg = tiny_cfg(max_steps=6, eval_steps=3)
    real = afqmc_train._backward

    def backward_that_syncs(run, batch, labels):
        loss = real(run, batch, labels)
        loss.item()
        run.accelerator.reduce(loss.detach())
        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(afqmc_train, "_backward", backward_that_syncs)
        found = count_syncs(cfg, extra_roots=(__file__,))
    # the .item() of micro-batch k runs before update k's optimizer step: counted after update k - 1
    assert found["updates_with_syncs"] == [0, 1, 2, 3, 4, 5, 6]
    assert found["updates_with_collectives"] == [0, 1, 2, 3, 4, 5, 6]


# Every technique on (FGM's skip decision stays on the device too). torch's own AveragedModel (the EMA)
# tests its n_averaged buffer on the host at each update: torch's code, not counted (benchmarks/README.md).
ALL_ON = dict(augment_pair_order=True, average_pair_orders=True, focal_gamma=1.0, label_smoothing=0.1,
              fgm_epsilon=0.5, rdrop_alpha=1.0, layerwise_lr_decay=0.8, ema_decay=0.9)


@pytest.mark.parametrize("techniques", [{}, ALL_ON], ids=["plain", "every technique"])
def test_no_host_sync_or_collective_between_evaluations_and_loss_checks(tiny_cfg, monkeypatch, techniques):
    monkeypatch.setattr(afqmc_train, "FINITE_CHECK_EVERY", 5)
    found = count_syncs(tiny_cfg(max_steps=24, eval_steps=12, gradient_accumulation_steps=2,
                                 per_device_batch_size=8, **techniques))
    assert found["updates"] == 24
    # The loss check every 5 updates (one read of the first bad step), and at the evaluations (12, 24),
    # which also read the window's loss; nothing after any other update.
    # (augment_pair_order draws each epoch's pair orders with a CPU generator and reads them with
    # .tolist() before the epoch's first batch: a CPU tensor, never a device sync, once per epoch.)
    epoch_starts = [0] if techniques.get("augment_pair_order") else []
    assert found["updates_with_syncs"] == epoch_starts + [5, 10, 12, 15, 20, 24]
    assert found["updates_with_collectives"] == [12, 24]  # the train loss's reduce, the end's wait_for_everyone
    assert found["syncs_in_eval"] > 0  # the evaluation syncs, as it must (its metrics are on the host)


@pytest.mark.parametrize("eval_steps,nan_update,seen,kept", [(4, 6, 8, 4), (20, 2, 5, None)])
def test_a_nan_loss_stops_within_the_check_interval_and_the_checkpoint_is_from_before(
        tiny_cfg, monkeypatch, eval_steps, nan_update, seen, kept):
    """NaN from update `nan_update` on: found at the next check (every 5 updates, or the evaluation,
    which checks before it evaluates or saves); the message names the first bad update."""
    monkeypatch.setattr(afqmc_train, "FINITE_CHECK_EVERY", 5)
    nan_from(monkeypatch, nan_update)
    cfg = tiny_cfg(max_steps=20, eval_steps=eval_steps)
    reports = []
    with pytest.raises(TrainingError, match=rf"^training loss is nan at step {nan_update} \(learning_rate 0.0005\); "
                                            rf"stopping this run \(seen at step {seen}: the loss is read every 5 "):
        train(cfg, report=lambda m, c: reports.append(m), progress=False)
    assert seen - nan_update < 5
    assert [m["step"] for m in reports] == ([kept] if kept else [])
    checkpoint = ROOT / cfg.output_dir / "checkpoint"
    if kept:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        assert state["step"] == kept and all(torch.isfinite(torch.tensor(h["train/loss"])) for h in state["history"])
        from safetensors.torch import load_file

        weights = load_file(str(checkpoint / "model" / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())
    else:
        assert not checkpoint.exists()


WRAPPER = """
import os, sys
sys.path.insert(0, {root!r})
import afqmc.train as t

real = t.make_objective


def make_objective(*args, **kwargs):
    inner, calls = real(*args, **kwargs), [0]

    def objective(model, batch, labels):
        calls[0] += 1
        loss = inner(model, batch, labels)
        # NaN on the second process only, from its micro-batch {nan}: the first learns of it from the gather
        return loss + float("nan") if os.environ["RANK"] == "1" and calls[0] >= {nan} else loss

    return objective


t.make_objective = make_objective
t.FINITE_CHECK_EVERY = 4
sys.exit(t.main(sys.argv[1:]))
"""


def test_two_processes_stop_at_the_same_update_when_one_sees_a_nan(tmp_path):
    from test_distributed import free_port

    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(WRAPPER.format(root=str(ROOT), nan=3))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--main_process_port", str(free_port()),
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(script), "--config", str(ROOT / "afqmc" / "configs" / "demo.yaml"), "--max_train_samples", "600",
           "--max_steps", "12", "--eval_steps", "10", "--per_device_batch_size", "8", "--test_file", "null",
           "--output_dir", str(tmp_path / "run")]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode != 0
    # Both processes stop after update 4 (the first check after the NaN at 3), each saying so with the
    # same reason. (How each then exits varies: 2, or SIGABRT when gloo loses the peer that exited first.)
    reason = "error: training loss is nan at step 3 (learning_rate 0.0005); stopping this run (seen at step 4:"
    assert run.stderr.count(reason) == 2, run.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoint").exists()  # nothing after the NaN was saved
