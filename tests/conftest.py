"""Shared fixtures: paths to the shared AFQMC data and small, fast configs."""

from __future__ import annotations

import os
from pathlib import Path

# One thread per test process and its children (training subprocesses, search drivers): the suite
# runs on two pytest-xdist workers on two cores, and more threads than cores only makes torch's
# OpenMP threads spin against each other. Ray trials set their own threads (one per CPU given).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from afqmc.config import TrainConfig, from_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AFQMC_TRAIN = SHARED / "afqmc" / "train.jsonl"
AFQMC_TEST = SHARED / "afqmc" / "test.jsonl"
VOCAB = SHARED / "vocab" / "bert-base-chinese-vocab.txt"
DEMO_TRAIN = ROOT / "afqmc" / "demo_data" / "train.jsonl"
DEMO_TEST = ROOT / "afqmc" / "demo_data" / "test.jsonl"


def pytest_collection_modifyitems(config, items):
    """The slow tests first, each file's in its own order: pytest-xdist hands tests out in this
    order, so the quick ones fill in at the end rather than a worker waiting alone on a search
    (the default run's wall time is the busier worker's)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def need_shared() -> None:
    if not AFQMC_TRAIN.is_file():
        pytest.fail(f"shared data missing at {AFQMC_TRAIN} (CI lays ../shared beside the repo)")


@pytest.fixture
def tiny_cfg(tmp_path):
    """A factory of small tiny-BERT configs on the demo data, writing under tmp_path."""

    def make(**changes) -> TrainConfig:
        values = dict(model_name_or_path="tiny", tiny_hidden_size=64, tiny_num_layers=1, tiny_num_heads=2,
                      train_file=str(DEMO_TRAIN), val_ratio=0.2, max_train_samples=600, learning_rate=5e-4,
                      per_device_batch_size=32, num_epochs=1, class_weights="balanced", patience=0,
                      output_dir=str(tmp_path / "run"))
        values.update(changes)
        return from_dict(values, source="test")

    return make


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def with_a_scripted_member(exp_dir: Path, copy: Path) -> int:
    """Copy a finished search to `copy` and make one of its kept models (not the best) a member the
    greedy walk must add: its cached val P(same) (tune.scoring's model_probs.json, which the reports
    read instead of predicting) is set near the val labels. Everything else is the search's own: the
    members' folders, their held-out test predictions, the export. Returns the scripted trial."""
    import json
    import shutil

    from afqmc.data import load_splits
    from tune.ensemble import candidates
    from tune.folder import MODEL_PROBS, SearchState
    from tune.results import best_trial, collect_trials
    from tune.scoring import model_probs
    from tune.space import folder_config

    shutil.copytree(exp_dir, copy, ignore=shutil.ignore_patterns("ensemble", MODEL_PROBS))
    state = SearchState.load(copy)
    trials = collect_trials(copy)
    best = best_trial(trials)
    kept = candidates(trials, state.settings.get("grace_period") if state.scheduler == "asha" else None)
    other = next(t for t in kept if t.trial_id != best.trial_id)
    val = load_splits(folder_config(copy, state)).val
    model_probs(copy, [other], val, "val")  # the cache entry, with the pairs' fingerprint
    cache = json.loads((copy / MODEL_PROBS).read_text())
    cache["val"]["models"][f"{other.trial_id}:{other.best_evals}"]["probs"] = [0.2 + 0.6 * y for y in val.labels]
    (copy / MODEL_PROBS).write_text(json.dumps(cache))
    return other.number
