"""Sentence-pair data: reading pair files (JSON lines, a JSON array, TSV or CSV; UTF-8) with errors
that name file, line and field, the seeded stratified split, tokenization (once per data set),
length-grouped batches and dynamic padding."""

from __future__ import annotations

import codecs
import hashlib
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from sklearn.model_selection import train_test_split

from afqmc.config import ConfigError, TrainConfig

# Both schemas: the project's {"text1","text2","label": int} and CLUE's {"sentence1","sentence2","label": "0"|"1"}.
SCHEMAS = (("text1", "text2"), ("sentence1", "sentence2"))
LABELS = {0: 0, 1: 1, "0": 0, "1": 1}
# Column names a TSV/CSV header may use for the pair (text_a/text_b: LCQMC and BQ as PaddleNLP and
# ERNIE ship them); a first row holding both names of one of these is a header.
HEADER_SCHEMAS = (*SCHEMAS, ("text_a", "text_b"))
HEADERLESS = ("text1", "text2", "label")  # the columns of a file without a header, in order
# Encodings that are read as UTF-8 (a byte-order mark is dropped).
UTF8 = ("utf-8", "utf-8-sig")

# One row as a reader yields it: line, text1, text2, label (None: unlabelled) and how an error names
# an empty sentence ("field 'text1'", "column 1 ('text1')"), None when both hold text.
Row = tuple[int, str, str, int | None, str | None]


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

    def fingerprint(self) -> str:
        """A short hash of the pairs (texts and labels, in order): two splits with the same fingerprint
        hold the same pairs (held-out scores kept for them, a warm start's "same task")."""
        text = json.dumps([self.text1, self.text2, self.labels], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

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
               max_rows: int | None = None, data_format: str = "auto", encoding: str = "utf-8") -> PairData:
    """Read a file of sentence pairs: JSON lines (either schema), a JSON array of such objects, TSV
    or CSV (`data_format`; auto goes by the extension, then the first line). See `parse_pairs`.

    `require_labels`: every row must have a label 0/1 (a training or validation file). Otherwise
    the file may be unlabelled (no row has `label`) or fully labelled; a mix is an error.
    `skip_empty`: drop pairs with an empty sentence and count them instead of failing.
    `encoding`: UTF-8 (with or without a byte-order mark), or the one the file is in (e.g. gb18030).
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError(f"{name}: data file does not exist")
    if not path.is_file():
        raise DataError(f"{name}: not a file")
    text = decode_file(path.read_bytes(), name, encoding)
    # newline="": lines keep their own ends, as the csv module wants (a quoted field may hold one).
    return parse_pairs(io.StringIO(text, newline=""), name, require_labels, skip_empty, max_rows, data_format)


def parse_pairs(lines: Iterable[str], name: str, require_labels: bool = True, skip_empty: bool = False,
                max_rows: int | None = None, data_format: str = "auto") -> PairData:
    """`load_pairs` on lines already open (a file, standard input); errors name `name` and the line."""
    lines = iter(lines)
    head = []  # the lines up to the first that is not blank: they tell the format
    for raw in lines:
        head.append(raw.removeprefix("\ufeff") if not head else raw)  # a byte-order mark read as text
        if raw.strip():
            break
    fmt = detect_format(name, head[-1] if head else "", data_format)
    reader = {"json": _json_rows, "tsv": _table_rows, "csv": _table_rows}[fmt]
    rows = reader(itertools.chain(head, lines), name, require_labels, fmt)
    return _collect(rows, name, require_labels, skip_empty, max_rows)


def detect_format(name: str, first_line: str, data_format: str = "auto") -> str:
    """json, tsv or csv: `data_format` when it is given; else .tsv and .csv files by their extension,
    .json/.jsonl ones as JSON, and any other (a .txt, standard input) as TSV when its first line is
    not JSON and holds a tab (LCQMC's train.txt), else as JSON."""
    if data_format != "auto":
        return "json" if data_format == "jsonl" else data_format
    suffix = Path(name).suffix.lower()
    if suffix in (".tsv", ".csv"):
        return suffix[1:]
    if suffix in (".json", ".jsonl") or first_line.lstrip()[:1] in ("{", "["):
        return "json"
    return "tsv" if "\t" in first_line else "json"


def _collect(rows: Iterable[Row], name: str, require_labels: bool, skip_empty: bool,
             max_rows: int | None) -> PairData:
    """The pairs of a reader's rows: at most `max_rows`, empty ones skipped (or refused), labels all or none."""
    text1: list[str] = []
    text2: list[str] = []
    labels: list[int] = []
    line_numbers: list[int] = []
    n_labelled = 0
    skipped = 0
    for lineno, a, b, label, empty in rows:
        n_labelled += label is not None
        if empty is not None:
            if skip_empty:
                skipped += 1
                continue
            raise DataError(f"{name}:{lineno}: {empty} is empty (set skip_empty: true to skip such pairs)")
        text1.append(a)
        text2.append(b)
        line_numbers.append(lineno)
        if label is not None:
            labels.append(label)
        if max_rows is not None and len(text1) >= max_rows:
            break  # the rows past max_rows are not even read
    if not text1:
        raise DataError(f"{name}: no sentence pairs in the file" + (f" ({skipped} empty ones skipped)" if skipped else ""))
    if 0 < n_labelled < len(text1) + skipped:
        raise DataError(f"{name}: some rows have a 'label' and some do not; label all rows or none")
    data = PairData(text1, text2, labels if n_labelled else None, name, line_numbers, skipped)
    if require_labels and len(set(labels)) < 2:
        raise DataError(f"{name}: field 'label' holds only class {labels[0]}; training needs both 0 and 1")
    return data


# --- encodings ----------------------------------------------------------------------------------


def decode_file(raw: bytes, name: str, encoding: str = "utf-8") -> str:
    """The text of a data file's bytes. UTF-8 (a byte-order mark is dropped), or `encoding`; bytes
    that do not decode stop with the file and the first bad line, and for GBK with the command that
    converts the file. Never a guess: text that would read garbled is refused, not returned."""
    if codecs.lookup(encoding).name in UTF8:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise DataError(f"{name}: UTF-16 text (it starts with a UTF-16 byte-order mark, as Notepad's "
                            f"'Unicode' writes it); data files are UTF-8: {convert_command(name, 'UTF-16')}")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _not_utf8(raw, name, exc) from None
    if not raw.isascii() and _is_utf8(raw):  # read as another encoding, its Chinese would be garbled
        raise DataError(f"{name}: the file is UTF-8, not {encoding}: drop encoding: {encoding} (UTF-8 files "
                        f"are read as they are)")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line, column = _position(raw, exc.start)
        raise DataError(f"{name}:{line}: not {encoding} text (byte 0x{raw[exc.start]:02x} at byte {column} of "
                        f"the line)") from None


def convert_command(name: str, source_encoding: str) -> str:
    """How to convert `name` to UTF-8: iconv, or Python where there is no iconv."""
    path = Path(name)
    out = shlex.quote(str(path.with_name(f"{path.stem}.utf8{path.suffix}")))
    src = shlex.quote(name)
    python = (f"python -c \"import sys; open(sys.argv[2], 'wb').write(open(sys.argv[1], 'rb').read()"
              f".decode('{source_encoding}').encode('utf-8'))\" {src} {out}")
    return f"convert it with `iconv -f {source_encoding} -t UTF-8 {src} > {out}` (or `{python}`)"


def _not_utf8(raw: bytes, name: str, exc: UnicodeDecodeError) -> DataError:
    """The error for bytes that are not UTF-8: where, and whether they read as GB18030 (GBK's superset)."""
    line, column = _position(raw, exc.start)
    where = f"{name}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {column} of the line)"
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return DataError(f"{where}; data files are UTF-8 (a byte-order mark is fine): find the file's encoding "
                         f"and {convert_command(name, 'ENCODING')}, or train with encoding set to it")
    shown = text.split("\n")[line - 1].strip()[:30]
    return DataError(f"{where}; the bytes read as GB18030/GBK, as a Windows tool or an Excel export writes "
                     f"Chinese (line {line} then reads {shown!r}): {convert_command(name, 'GB18030')}, "
                     f"or train with encoding: gb18030 (--encoding gb18030)")


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line of byte `offset` and its 1-based byte in that line."""
    return raw.count(b"\n", 0, offset) + 1, offset - (raw.rfind(b"\n", 0, offset) + 1) + 1


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- JSON: lines, or one array of objects --------------------------------------------------------


def _json_rows(lines: Iterable[str], name: str, require_labels: bool, fmt: str = "json") -> Iterator[Row]:
    """The rows of JSON lines, or of one JSON array of objects (a file whose first character is '[')."""
    lines = iter(lines)
    first = True
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if first and raw.lstrip().startswith("["):  # only the first line tells; a later '[' is a bad row
            text = "\n" * (lineno - 1) + raw + "".join(lines)  # line numbers as in the file
            yield from _json_array_rows(text, name, require_labels)
            return
        first = False
        yield _json_row(_json_line(raw, f"{name}:{lineno}"), lineno, f"{name}:{lineno}", require_labels)


def _json_line(raw: str, where: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _json_array_rows(text: str, name: str, require_labels: bool) -> Iterator[Row]:
    """The objects of one JSON array, each named by the line it starts on (json's own decoder, one
    element at a time, so that an error names the line of the bad element)."""
    decoder = json.JSONDecoder()
    i = _SPACE.match(text, _SPACE.match(text).end() + 1).end()  # past '['
    while text[i:i + 1] != "]":
        try:
            row, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        lineno = _line_col(text, i)[0]
        yield _json_row(row, lineno, f"{name}:{lineno}", require_labels)
        i = _SPACE.match(text, end).end()
        if text[i:i + 1] == ",":
            i = _SPACE.match(text, i + 1).end()
        elif text[i:i + 1] != "]":
            line, column = _line_col(text, i)
            raise DataError(f"{name}:{line}: malformed JSON array (expected ',' or ']' at column {column})")
    if text[i + 1:].strip():
        raise DataError(f"{name}:{_line_col(text, i)[0]}: malformed JSON (text after the array's closing ']')")


def _line_col(text: str, i: int) -> tuple[int, int]:
    """The 1-based line and column of character `i`."""
    return text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)


def _json_row(row: Any, lineno: int, where: str, require_labels: bool) -> Row:
    """One JSON object: its line, two sentences, its label (None when it has none) and the name of an
    empty sentence field (None when both have text). Errors name `where` (file:line) and the field."""
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
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label not in LABELS:
            raise DataError(f"{where}: field 'label' must be 0 or 1 (or \"0\"/\"1\"), got {label!r}")
        label = LABELS[label]
    elif require_labels:
        raise DataError(f"{where}: missing field 'label' (a training or validation file needs labels)")
    empty = next((f"field '{k}'" for k, v in zip(keys, (a, b)) if not v.strip()), None)
    return lineno, a, b, label, empty


# --- TSV and CSV ---------------------------------------------------------------------------------


def _table_rows(lines: Iterable[str], name: str, require_labels: bool, fmt: str) -> Iterator[Row]:
    """The rows of a TSV or CSV file (the csv module's quoting: excel-tab, excel). With a header that
    names the pair's columns (text1/text2, sentence1/sentence2 or text_a/text_b, and label; other
    columns are ignored), or without one: text1, text2[, label] in this order, on every row."""
    reader = csv.reader(lines, dialect="excel-tab" if fmt == "tsv" else "excel")
    layout: _Layout | None = None
    end = 0  # the line the previous row ended on
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines: name the first
            if not any(c.strip() for c in cells):
                continue
            where = f"{name}:{start}"
            if layout is None:
                layout = _layout(cells, where, fmt, require_labels)
                if layout.header:
                    continue
            if len(cells) != len(layout.names) and end > start:  # a stray '"' opened a quoted field
                raise DataError(f"{where}: a quoted field runs from here to line {end} (the csv module reads a field "
                                f"that starts with '\"' as quoted, up to the next '\"'); quote the field or "
                                f"remove the '\"'")
            yield _table_row(cells, layout, start, where)
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: malformed {fmt.upper()} ({exc})") from None


@dataclass
class _Layout:
    """Where a TSV/CSV file's pair is: column index of text1, text2 and label (None: no labels)."""

    text1: int
    text2: int
    label: int | None
    names: tuple[str, ...]  # the header's cells, or text1, text2[, label]
    header: bool

    def column(self, index: int) -> str:
        return f"column {index + 1} ('{self.names[index]}')"


def _layout(cells: list[str], where: str, fmt: str, require_labels: bool) -> _Layout:
    """The columns, from the first row: a header (a row holding both names of one pair schema), or
    the first data row of a headerless file (2 or 3 columns)."""
    found = [c.strip().lower() for c in cells]
    schema = next((s for s in HEADER_SCHEMAS if s[0] in found and s[1] in found), None)
    known = {"label", *(n for s in HEADER_SCHEMAS for n in s)}
    if schema is None and all(c in known for c in found):
        raise DataError(f"{where}: the header names no pair of text columns (expected text1 and text2, or "
                        f"sentence1 and sentence2, and label), got {', '.join(cells)}")
    if schema is not None:
        for column in (*schema, "label"):
            if found.count(column) > 1:
                raise DataError(f"{where}: the header names column '{column}' twice")
        layout = _Layout(found.index(schema[0]), found.index(schema[1]),
                         found.index("label") if "label" in found else None, tuple(cells), True)
        if require_labels and layout.label is None:
            raise DataError(f"{where}: the header names no 'label' column (a training or validation file needs "
                            f"labels)")
        return layout
    if len(cells) not in (2, 3) or (require_labels and len(cells) == 2):
        need = "3 (text1, text2, label: a training or validation file needs labels)" if require_labels else \
            "2 or 3 (text1, text2[, label])"
        raise DataError(f"{where}: {len(cells)} columns; a {fmt.upper()} file without a header has {need}, or a "
                        f"first row naming its columns (text1, text2, label)")
    return _Layout(0, 1, 2 if len(cells) == 3 else None, HEADERLESS[:len(cells)], False)


def _table_row(cells: list[str], layout: _Layout, lineno: int, where: str) -> Row:
    """One TSV/CSV row, read as the first row laid out the columns; errors name the line and column."""
    if len(cells) != len(layout.names):
        first = "the header" if layout.header else "the first row"
        raise DataError(f"{where}: {len(cells)} column{'s' * (len(cells) != 1)}, {first} has {len(layout.names)} "
                        f"({', '.join(layout.names)})")
    a, b = cells[layout.text1], cells[layout.text2]
    label = None
    if layout.label is not None:
        value = cells[layout.label].strip()
        if value not in LABELS:
            order = "" if layout.header else " (a file without a header has text1, text2, label in this order)"
            raise DataError(f"{where}: {layout.column(layout.label)} must be 0 or 1, got {value!r}{order}")
        label = LABELS[value]
    empty = next((layout.column(i) for i, v in ((layout.text1, a), (layout.text2, b)) if not v.strip()), None)
    return lineno, a, b, label, empty


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
    of train_file (of the whole file, so 0.1 and 0.1 leave 80% to train on). Too few pairs for
    these splits stop here, before anything is tokenized or built.
    """
    if not Path(cfg.train_file).exists():
        raise DataError(f"config: field 'train_file': {cfg.train_file} does not exist. Set train_file (or "
                        f"--train_file) to your labelled pairs (JSON lines, TSV or CSV); AFQMC's train.json comes "
                        f"from the CLUE benchmark's AFQMC release (README, 'Data')")
    read = {"skip_empty": cfg.skip_empty, "data_format": cfg.data_format, "encoding": cfg.encoding}
    full = load_pairs(cfg.train_file, require_labels=True, max_rows=cfg.max_train_samples, **read)
    skipped = full.skipped_empty
    test = None
    if cfg.test_file:  # read now, so that a bad file stops the run before it trains
        given = load_pairs(cfg.test_file, require_labels=False, **read)
        if given.labels is not None:
            if cfg.test_ratio:
                raise ConfigError(f"config: field 'test_ratio' must be 0 when test_file ({cfg.test_file}) is labelled: "
                                  "it is the held-out test set then", "test_ratio")
            test = given
    n = len(full)  # both shares are of the whole file, counted as sklearn counts a share: rounded up
    shares = {"test": math.ceil(cfg.test_ratio * n)} if cfg.test_ratio else {}
    if not cfg.val_file:
        shares["val"] = math.ceil(cfg.val_ratio * n)
    parts = split_off(full, shares, cfg.seed)
    test = parts.get("test", test)
    val = parts["val"] if "val" in parts else load_pairs(cfg.val_file, require_labels=True, **read)
    return Splits(parts["train"], val, test, skipped)


def split_off(data: PairData, shares: dict[str, int], seed: int) -> dict[str, PairData]:
    """`data` split, seeded and stratified, into `shares` (part name: pairs, taken off in this order)
    and "train", the rest. A split that cannot hold both classes in every part is refused, with the
    file, its class counts and what each part needs (`DataError`), before anything else happens."""
    sizes = {**shares, "train": len(data) - sum(shares.values())}
    problems = [f"{part} would hold {n} pair{'s' * (n != 1)}" for part, n in sizes.items() if n < 2]
    problems += [f"class {k} has {c} pair{'s' * (c != 1)}" for k, c in enumerate(data.label_counts())
                 if c < len(sizes)]
    if problems:
        raise _too_few(data, sizes, problems)
    parts, rest = {}, data
    for part, n in shares.items():
        try:
            rest, parts[part] = split_train_val(rest, n, seed, part=part)
        except ValueError as exc:  # sklearn's own refusal (a class too small once test is off)
            raise _too_few(data, sizes, [str(exc).rstrip(".")]) from None
    parts["train"] = rest
    for part, pairs in parts.items():
        problems += [f"the {part} split drew no pair of class {k}" for k, c in enumerate(pairs.label_counts()) if not c]
    if problems:
        raise _too_few(data, sizes, problems)
    return parts


def _too_few(data: PairData, sizes: dict[str, int], problems: list[str]) -> DataError:
    counts = data.label_counts()
    layout = ", ".join(f"{part} {n}" for part, n in sizes.items())
    parts = list(sizes)
    each = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    taken = [part for part in parts if part != "train"]
    remedy = (f", raise {' or '.join(f'{p}_ratio' for p in taken)}, or give {' and '.join(f'{p}_file' for p in taken)} "
              f"instead of splitting") if taken else ""
    return DataError(
        f"{data.source}: too few pairs to split: {len(data)} pairs (class 0: {counts[0]}, class 1: {counts[1]}), "
        f"split as {layout}; {', '.join(problems)}. A stratified split needs both classes in each of {each}: "
        f"at least 2 pairs in each and {len(parts)} pairs of each class. Add labelled pairs{remedy}")


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
