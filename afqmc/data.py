"""Sentence-pair data: JSON-lines loading with errors that name file, line and field, the seeded
stratified split, tokenization (once per data set), length-grouped batches and dynamic padding."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from sklearn.model_selection import train_test_split

from afqmc.config import ConfigError, TrainConfig

# Both schemas: the project's {"text1","text2","label": int} and CLUE's {"sentence1","sentence2","label": "0"|"1"}.
SCHEMAS = (("text1", "text2"), ("sentence1", "sentence2"))
LABELS = {0: 0, 1: 1, "0": 0, "1": 1}


class DataError(ValueError):
    """Bad input data; the message names file, line and field."""


@dataclass
class PairData:
    """Pairs of one file (or one side of a split). `labels` is None for unlabelled data."""

    text1: list[str]
    text2: list[str]
    labels: list[int] | None
    source: str
    lines: list[int] = field(default_factory=list)  # 1-based line of each pair in `source`
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.text1)

    def subset(self, index: Sequence[int], source: str | None = None) -> "PairData":
        return PairData(
            [self.text1[i] for i in index],
            [self.text2[i] for i in index],
            None if self.labels is None else [self.labels[i] for i in index],
            source or self.source,
            [self.lines[i] for i in index] if self.lines else [],
        )

    def label_counts(self) -> list[int]:
        labels = self.labels or []
        return [labels.count(0), labels.count(1)]


def load_pairs(path: str | os.PathLike, require_labels: bool = True, skip_empty: bool = False,
               max_rows: int | None = None) -> PairData:
    """Read a JSON-lines file of sentence pairs in either schema.

    `require_labels`: every row must have a label 0/1 (a training or validation file). Otherwise
    the file may be unlabelled (no row has `label`) or fully labelled; a mix is an error.
    `skip_empty`: drop pairs with an empty sentence and count them instead of failing.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError(f"{name}: data file does not exist")
    if not path.is_file():
        raise DataError(f"{name}: not a file")
    with path.open(encoding="utf-8") as fh:
        return parse_pairs(fh, name, require_labels, skip_empty, max_rows)


def parse_pairs(lines: Iterable[str], name: str, require_labels: bool = True, skip_empty: bool = False,
                max_rows: int | None = None) -> PairData:
    """`load_pairs` on lines already open (a file, standard input); errors name `name` and the line."""
    text1: list[str] = []
    text2: list[str] = []
    labels: list[int] = []
    line_numbers: list[int] = []
    n_labelled = 0
    skipped = 0
    for lineno, raw in enumerate(lines, start=1):
        if max_rows is not None and len(text1) >= max_rows:
            break
        if not raw.strip():
            continue
        a, b, label, empty = _read_row(raw, f"{name}:{lineno}", require_labels)
        n_labelled += label is not None
        if empty is not None:
            if skip_empty:
                skipped += 1
                continue
            raise DataError(f"{name}:{lineno}: field '{empty}' is empty (set skip_empty: true to skip such pairs)")
        text1.append(a)
        text2.append(b)
        line_numbers.append(lineno)
        if label is not None:
            labels.append(label)
    if not text1:
        raise DataError(f"{name}: no sentence pairs in the file" + (f" ({skipped} empty ones skipped)" if skipped else ""))
    if 0 < n_labelled < len(text1) + skipped:
        raise DataError(f"{name}: some rows have a 'label' and some do not; label all rows or none")
    data = PairData(text1, text2, labels if n_labelled else None, name, line_numbers, skipped)
    if require_labels and len(set(labels)) < 2:
        raise DataError(f"{name}: field 'label' holds only class {labels[0]}; training needs both 0 and 1")
    return data


def _read_row(raw: str, where: str, require_labels: bool) -> tuple[str, str, int | None, str | None]:
    """One JSON line: its two sentences, its label (None when it has none) and the name of an empty
    sentence field (None when both have text). Errors name `where` (file:line) and the field."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    keys = next((k for k in SCHEMAS if k[0] in row or k[1] in row), SCHEMAS[0])
    a, b = (row.get(k) for k in keys)
    for key, value in zip(keys, (a, b)):
        if value is None:
            raise DataError(f"{where}: missing field '{key}' (expected {keys[0]!r} and {keys[1]!r})")
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' must be a string, got {value!r}")
    label = None
    if "label" in row:
        label = row["label"]
        if isinstance(label, bool) or label not in LABELS:
            raise DataError(f"{where}: field 'label' must be 0 or 1 (or \"0\"/\"1\"), got {label!r}")
        label = LABELS[label]
    elif require_labels:
        raise DataError(f"{where}: missing field 'label' (a training or validation file needs labels)")
    empty = next((k for k, v in zip(keys, (a, b)) if not v.strip()), None)
    return a, b, label, empty


def split_train_val(data: PairData, val_ratio: float | int, seed: int, part: str = "val") -> tuple[PairData, PairData]:
    """Seeded split stratified on the label, so both sides keep the class ratio: the rest (to train
    on) and a `val_ratio` share (or that many pairs) named `part` (val, or test)."""
    index = list(range(len(data)))
    train_idx, val_idx = train_test_split(index, test_size=val_ratio, random_state=seed, stratify=data.labels)
    source = data.source.removesuffix(" (train split)")
    return (data.subset(sorted(train_idx), f"{source} (train split)"),
            data.subset(sorted(val_idx), f"{source} ({part} split)"))


@dataclass
class Splits:
    """The pairs of one run: train, val and the held-out test set (labelled, or None)."""

    train: PairData
    val: PairData
    test: PairData | None
    skipped_empty: int = 0


def load_splits(cfg: TrainConfig) -> Splits:
    """Read and split the data as `cfg` says; every caller that needs a run's data uses this one.

    test: `test_ratio` of train_file (split off first, seeded and stratified), or `test_file` when it
    is labelled (an unlabelled one is only predicted, at the end). val: `val_file`, or `val_ratio`
    of train_file (of the whole file, so 0.1 and 0.1 leave 80% to train on).
    """
    if not Path(cfg.train_file).exists():
        raise DataError(f"config: field 'train_file': {cfg.train_file} does not exist. Set train_file (or "
                        f"--train_file) to your labelled JSON-lines pairs; AFQMC's train.json comes from the CLUE "
                        f"benchmark's AFQMC release (README, 'Data')")
    full = load_pairs(cfg.train_file, require_labels=True, skip_empty=cfg.skip_empty, max_rows=cfg.max_train_samples)
    skipped = full.skipped_empty
    test = None
    if cfg.test_file:  # read now, so that a bad file stops the run before it trains
        given = load_pairs(cfg.test_file, require_labels=False, skip_empty=cfg.skip_empty)
        if given.labels is not None:
            if cfg.test_ratio:
                raise ConfigError(f"config: field 'test_ratio' must be 0 when test_file ({cfg.test_file}) is labelled: "
                                  "it is the held-out test set then", "test_ratio")
            test = given
    n = len(full)  # both shares are of the whole file, counted as sklearn counts a share: rounded up
    if cfg.test_ratio:
        full, test = split_train_val(full, math.ceil(cfg.test_ratio * n), cfg.seed, part="test")
    if cfg.val_file:
        train, val = full, load_pairs(cfg.val_file, require_labels=True, skip_empty=cfg.skip_empty)
    else:
        train, val = split_train_val(full, math.ceil(cfg.val_ratio * n), cfg.seed)
    return Splits(train, val, test, skipped)


def count_overlap(a: PairData, b: PairData) -> int:
    """How many pairs of `b` also occur in `a` (in either order) — leakage between train and val."""
    seen = {(x, y) for x, y in zip(a.text1, a.text2)}
    seen |= {(y, x) for x, y in seen}
    return sum((x, y) in seen for x, y in zip(b.text1, b.text2))


# --- tokenization and batching -----------------------------------------------------------------


@dataclass
class Encoded:
    """A tokenized data set: lists of ids per pair (no padding) and the labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int] | None

    def __len__(self) -> int:
        return len(self.input_ids)

    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)


def encode(tokenizer: Any, data: PairData, max_length: int) -> Encoded:
    """`[CLS] a [SEP] b [SEP]` with token_type_ids, truncated to max_length, unpadded."""
    enc = tokenizer(data.text1, data.text2, truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=True)
    return Encoded(enc["input_ids"], enc["token_type_ids"], data.labels)


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, encoded: Encoded):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.encoded.input_ids[i], "token_type_ids": self.encoded.token_type_ids[i]}
        if self.encoded.labels is not None:
            item["labels"] = self.encoded.labels[i]
        return item


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffled batches of pairs of similar length, so dynamic padding pads little (`group_by_length`).

    Per epoch, like Hugging Face's `group_by_length`: a random permutation cut into mega-batches of
    `megabatch` batches, each sorted by length and cut into batches; then the batches are shuffled
    (HF keeps each mega-batch's batches together), except that the one holding the longest pair goes
    first, so an out-of-memory error shows at the first step, and the one short batch (if any) goes
    last. Yields indices: with `DataLoader(batch_size=batch_size)` its consecutive chunks are exactly
    those batches.

    The order depends only on `seed + epoch` (as Accelerate's seedable sampler), never on a global
    RNG: the same seed gives the same batches, each epoch others, and a resumed run (which skips the
    batches already used of its epoch) the same ones as an unbroken run. `set_epoch` is called by
    Accelerate's prepared loader (also through its per-process shard), as for its own sampler.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, megabatch: int = 50):
        self.lengths, self.batch_size, self.seed, self.megabatch = list(lengths), batch_size, seed, megabatch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size, step = self.batch_size, self.batch_size * self.megabatch
        batches = []
        for start in range(0, len(perm), step):
            mega = sorted(perm[start:start + step], key=self.lengths.__getitem__, reverse=True)
            batches += [mega[i:i + size] for i in range(0, len(mega), size)]
        short = [batches.pop()] if batches and len(batches[-1]) < size else []  # only the last can be short
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if batches:
            longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i][0]])  # sorted: [0] is longest
            batches.insert(0, batches.pop(longest))
        return batches + short

    def __iter__(self):
        for batch in self.batches():
            yield from batch


def collate(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest pair of this batch (dynamic padding), not to max_length.

    Not `transformers.DataCollatorWithPadding`: it goes through `tokenizer.pad` and measured 24 ms
    per batch of 32 here, as long as a whole training step of the tiny model; this takes well under 1 ms.
    """
    width = max(len(x["input_ids"]) for x in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, x in enumerate(batch):
        n = len(x["input_ids"])
        input_ids[row, :n] = torch.tensor(x["input_ids"])
        token_type_ids[row, :n] = torch.tensor(x["token_type_ids"])
        attention_mask[row, :n] = 1
    out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if "labels" in batch[0]:
        out["labels"] = torch.tensor([x["labels"] for x in batch], dtype=torch.long)
    return out
