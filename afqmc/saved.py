"""A saved model folder (a `save_pretrained` directory written by afqmc/train.py, or the `model/` of a
training checkpoint): loading it, its decision threshold, and its P(same) for pairs.

Both afqmc/predict.py and afqmc/ensemble.py (whose members are saved models) use these; neither
imports the other back (predict -> ensemble -> saved).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from afqmc.checkpoint import PAIR_ORDERS_ATTR, THRESHOLD_ATTR, CheckpointError, load_model_config, resolve_directory
from afqmc.config import TrainConfig
from afqmc.data import PairDataset, collate, encode
from afqmc.techniques import swapped


def model_directory(path: str | Path) -> Path:
    """The saved-model folder of `path`: itself, or the model/ of a training checkpoint."""
    path = resolve_directory(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def load_saved_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """Model, tokenizer and TrainConfig from a saved model dir (or a training checkpoint holding one)."""
    path = model_directory(checkpoint)  # a training checkpoint: the model of that evaluation
    cfg = load_model_config(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    return model.to(device).eval(), tokenizer, cfg


def saved_threshold(model, cfg: TrainConfig, where: str | Path = "model") -> float:
    """The decision threshold the model was saved with (config.json), else its config's fixed one."""
    value = getattr(model.config, THRESHOLD_ATTR, None)
    if value is not None:
        return float(value)
    if not isinstance(cfg.threshold, str):
        return float(cfg.threshold)
    raise CheckpointError(f"{where}: no decision threshold saved with the model ({THRESHOLD_ATTR} in config.json) "
                          f"and its config says threshold: {cfg.threshold}; give one with --threshold")


def predict_probs(model, tokenizer, pairs, max_length: int, batch_size: int = 128,
                  device: str | torch.device = "cpu") -> list[float]:
    """P(same) of each pair; the mean over both orders of the pair when the model was saved with
    `average_pair_orders` (config.json), as its evaluation was."""
    encoded = encode(tokenizer, pairs, max_length)
    encoded.labels = None
    probs = _encoded_probs(model, tokenizer, encoded, batch_size, device)
    if getattr(model.config, PAIR_ORDERS_ATTR, False):
        other = _encoded_probs(model, tokenizer, swapped(encoded, tokenizer.sep_token_id), batch_size, device)
        probs = [(a + b) / 2 for a, b in zip(probs, other)]
    return probs


@torch.no_grad()
def _encoded_probs(model, tokenizer, encoded, batch_size: int, device) -> list[float]:
    loader = torch.utils.data.DataLoader(PairDataset(encoded), batch_size=batch_size,
                                         collate_fn=lambda b: collate(b, tokenizer.pad_token_id or 0))
    probs: list[float] = []
    for batch in loader:
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        probs.extend(logits.softmax(-1)[:, 1].cpu().tolist())
    return probs
