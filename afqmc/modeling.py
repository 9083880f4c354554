"""Model and tokenizer: any Hugging Face checkpoint, or the `tiny` preset (a small random BERT)."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertTokenizer)

from afqmc.config import TINY, ConfigError, TrainConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The labels' names in config.json (what `transformers.pipeline` returns): AFQMC's 1 means the two
# questions ask the same thing.
ID2LABEL = {0: "different", 1: "same"}
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
# Config attributes that hold hidden or classifier dropout, across BERT-family architectures.
DROPOUT_ATTRS = ("hidden_dropout_prob", "classifier_dropout", "hidden_dropout", "dropout", "seq_classif_dropout")
ATTENTION_DROPOUT_ATTRS = ("attention_probs_dropout_prob", "attention_dropout")


def build_char_vocab(texts: Iterable[str], path: Path) -> Path:
    """A character vocabulary from the training texts (for the tiny preset without a vocab file).

    Chinese characters are split one per token by BERT's basic tokenizer; other characters can
    continue a word, so they get a `##` form as well.
    """
    counts = collections.Counter(ch for text in texts for ch in text if not ch.isspace())
    chars = sorted(counts, key=lambda c: (-counts[c], c))
    tokens = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars if not _is_cjk(c)]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F


def load_tokenizer(cfg: TrainConfig, train_texts: Iterable[str] = ()) -> Any:
    if cfg.model_name_or_path == TINY:
        if cfg.vocab_file:
            if not Path(cfg.vocab_file).is_file():
                raise ConfigError(f"config: field 'vocab_file': {cfg.vocab_file} does not exist", "vocab_file")
            # Positional path: BertTokenizerFast(vocab_file=...) silently builds a 5-token vocab (tests/test_data.py).
            return BertTokenizer(cfg.vocab_file)
        with tempfile.TemporaryDirectory() as tmp:
            return BertTokenizer(str(build_char_vocab(train_texts, Path(tmp) / "vocab.txt")))
    _check_model_path(cfg.model_name_or_path)
    return AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)


def load_model(cfg: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """A 2-label sequence classifier with the config's dropout on hidden and classifier layers, and
    gradient checkpointing when the config asks for it."""
    model = _build_model(cfg, tokenizer)
    if cfg.gradient_checkpointing:  # non-reentrant: works under DDP, keeps the dropout RNG per segment
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _build_model(cfg: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """The tiny preset, randomly initialised from the seed, or a checkpoint with the config's dropout."""
    if cfg.model_name_or_path == TINY:
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.tiny_hidden_size,
            num_hidden_layers=cfg.tiny_num_layers, num_attention_heads=cfg.tiny_num_heads,
            intermediate_size=4 * cfg.tiny_hidden_size, max_position_embeddings=max(512, cfg.max_length),
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=0.1 if cfg.attention_dropout is None else cfg.attention_dropout,
            classifier_dropout=cfg.dropout, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(cfg.seed)  # the random init is part of the run's seed
        return BertForSequenceClassification(config)
    _check_model_path(cfg.model_name_or_path)
    config = AutoConfig.from_pretrained(cfg.model_name_or_path, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
                                        trust_remote_code=cfg.trust_remote_code)
    for attr in DROPOUT_ATTRS:
        if hasattr(config, attr):
            setattr(config, attr, cfg.dropout)
    for attr in ATTENTION_DROPOUT_ATTRS:
        if cfg.attention_dropout is not None and hasattr(config, attr):
            setattr(config, attr, cfg.attention_dropout)
    # from_pretrained reads safetensors, or .bin files with torch.load(weights_only=True).
    return AutoModelForSequenceClassification.from_pretrained(
        cfg.model_name_or_path, config=config, trust_remote_code=cfg.trust_remote_code)


def _check_model_path(name: str) -> None:
    """A clear error for a local path that is missing or is not a model directory.

    A name like `hfl/chinese-macbert-base` that is not a local directory is left to the hub
    lookup (which fails offline with the library's own message).
    """
    path = Path(name)
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists() or name.count("/") > 1
    if not looks_local:
        return
    if not path.exists():
        raise ConfigError(f"config: field 'model_name_or_path': {name} does not exist", "model_name_or_path")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"config: field 'model_name_or_path': {name} is not a model directory "
                          "(no config.json; expected a save_pretrained folder)", "model_name_or_path")
