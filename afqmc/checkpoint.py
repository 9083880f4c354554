"""Crash-safe directory writes and the saved-model format.

A directory is written under a temporary name and renamed into place, so a run killed (or a disk
that fills up) half-way through a save leaves the previous version loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from afqmc.card import write_model_card
from afqmc.config import TrainConfig, load_config

CONFIG_NAME = "train_config.yaml"
METRICS_NAME = "metrics.json"
TRAINER_STATE_NAME = "trainer_state.json"
# In a checkpoint, beside model/: P(same) of each val pair (in the val split's order) at the
# evaluation that wrote it, with the labels, the threshold saved with the model and the seconds
# per pair that evaluation took.
VAL_PROBS_NAME = "val_probs.json"


class CheckpointError(RuntimeError):
    pass


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target` in (nearly) one step.

    The old version is renamed to `<target>.old` before the new one moves in and is deleted after,
    so at every moment `target` or `<target>.old` is complete (`resolve_directory` finds it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f"{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {target} ({exc.strerror or exc}); "
                                  f"the previous version is intact") from exc
        raise
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def resolve_directory(path: str | os.PathLike) -> Path:
    """`path`, or its `.old` twin when a crash came between the two renames of `atomic_directory`."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(f"{path.name}.old")
    if old.is_dir():
        return old
    raise CheckpointError(f"{path}: no such checkpoint or model directory")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that a reader (or a process killed half-way) sees the old file or the
    new one, never a part: a temporary file beside it, flushed, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# The model's decision threshold on P(label = 1), kept in its config.json (afqmc.predict uses it).
THRESHOLD_ATTR = "decision_threshold"
# true in config.json: P(same) is the mean over both orders of a pair (average_pair_orders).
PAIR_ORDERS_ATTR = "average_pair_orders"


def save_model_dir(path: Path, model: Any, tokenizer: Any, cfg: TrainConfig, metrics: dict[str, Any]) -> None:
    """A `save_pretrained` folder (safetensors weights + tokenizer) plus the resolved config, the
    metrics and a model card (README.md).

    The evaluation's decision threshold (`val/threshold`: the fixed one, or the one tuned on val)
    goes into config.json, so that the model carries the threshold it was chosen with; so does
    `average_pair_orders`, so that every prediction averages the two orders as evaluation did.
    """
    if metrics.get("val/threshold") is not None:
        setattr(model.config, THRESHOLD_ATTR, float(metrics["val/threshold"]))
    if cfg.average_pair_orders:
        setattr(model.config, PAIR_ORDERS_ATTR, True)
    model.save_pretrained(path, safe_serialization=True)
    # The tokenizer truncates as training did, also when a pipeline loads it (truncation=True).
    tokenizer.model_max_length = cfg.max_length
    tokenizer.save_pretrained(path)
    cfg.save_yaml(path / CONFIG_NAME, header="Resolved TrainConfig of the run that produced this model.")
    write_json(path / METRICS_NAME, metrics)
    write_model_card(path, cfg, metrics)


def load_model_config(path: str | os.PathLike) -> TrainConfig:
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: not a saved afqmc model (no {CONFIG_NAME})")
    return load_config(path / CONFIG_NAME)
