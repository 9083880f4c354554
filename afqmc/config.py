"""`TrainConfig`: every default of a run in one place, overridden by a YAML file, then the CLI.

Only fields of `TrainConfig` may appear in a config file, on the command line (`--field_name value`)
or in a search space. Runtime plumbing (how metrics are reported, Ray resources) lives elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
TUNED = "tuned"  # threshold value: chosen on val after every evaluation (afqmc.metrics)
# Val metrics a run can select its best model by (and a search rank and cut trials by); all are
# higher-is-better. val/f1_macro is at the run's threshold (cross-fitted when it is tuned).
SELECTION_METRICS = ("val/f1_macro", "val/f1_macro_tuned", "val/auc", "val/ap", "val/accuracy")
PRIMARY = "val/f1_macro"  # the default metric_for_best_model (and search.metric): F1-macro at the threshold
TINY = "tiny"  # model_name_or_path value that builds a small randomly initialised BERT
DATA_FORMATS = ("auto", "json", "jsonl", "tsv", "csv")  # data_format values (json and jsonl are one reader)


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the source and the field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def option(default: Any, help: str) -> Any:
    """A TrainConfig field with its help text in its metadata (what --help prints; HfArgumentParser's
    `field(metadata={"help": ...})` convention)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Technique:
    """A fine-tuning technique (afqmc/techniques.py) as its TrainConfig field declares it: the one
    place that names it. The config checks its value here, tune/folder.py takes its short name and
    label from here, the tests' "everything off" run and the check that the AFQMC search spaces search
    every technique read `TECHNIQUES`."""

    off: Any  # the value that turns it off: the field's default (a run without it is bit for bit the old run)
    short: str  # its name in tables and the live view (tune/folder.py SHORT)
    label: str  # its name on plot axes (tune/folder.py LABEL)
    low: float | None = None  # the allowed values: None for a switch (a bool), else an interval of numbers
    high: float = math.inf
    ends: str = "[]"  # which ends of the interval are allowed: "[)" is low <= value < high

    def why_invalid(self, value: Any) -> str | None:
        """Why `value` is out of range (a message for ConfigError), or None when it is fine."""
        if self.low is None:
            return None  # a switch: coerce_value checked that it is a bool
        above = value >= self.low if self.ends[0] == "[" else value > self.low
        below = value <= self.high if self.ends[1] == "]" else value < self.high
        if above and below:
            return None
        off = f" ({self.off:g} = off)"
        if self.high == math.inf:
            return f"must be {'>=' if self.ends[0] == '[' else '>'} {self.low:g}{off}"
        return f"must be in {self.ends[0]}{self.low:g}, {self.high:g}{self.ends[1]}{off}"


def technique(off: Any, help: str, short: str, label: str, low: float | None = None, high: float = math.inf,
              ends: str = "[]") -> Any:
    """A TrainConfig field that is a fine-tuning technique: off by default, its `Technique` in its metadata."""
    return dataclasses.field(default=off, metadata={"help": help,
                                                    "technique": Technique(off, short, label, low, high, ends)})


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model_name_or_path: str = option("hfl/chinese-macbert-base", "hub name, local save_pretrained dir or \"tiny\"")
    vocab_file: str | None = option(None, "tiny only: WordPiece vocab.txt; None builds a character vocab")
    tiny_hidden_size: int = option(128, "tiny only: hidden size")
    tiny_num_layers: int = option(2, "tiny only: transformer layers")
    tiny_num_heads: int = option(2, "tiny only: attention heads")
    trust_remote_code: bool = option(False, "never on unless the user asks")
    # --- data --------------------------------------------------------------------------------
    train_file: str = option("afqmc/demo_data/train.jsonl",
                             "labelled pairs: JSON lines, TSV or CSV (README, \"Data\")")
    val_file: str | None = option(None, "None: a seeded stratified split of train_file")
    val_ratio: float = option(0.1, "share of train_file held out as val (without val_file)")
    test_ratio: float = option(
        0.0, "A held-out test split of train_file (seeded, stratified, disjoint from train and val), as a "
        "fraction of the whole file; 0 = none. Nothing that trains or chooses reads its labels: the best model "
        "is scored on it once, at the end, at its saved threshold.")
    test_file: str | None = option(
        None, "Pairs to predict with the best model at the end (predictions.jsonl). A labelled file is also the "
        "held-out test set (then test_ratio must be 0).")
    max_train_samples: int | None = option(None, "first N rows of train_file (quick runs)")
    skip_empty: bool = option(False, "skip (and count) pairs with an empty sentence instead of failing")
    data_format: str = option(
        "auto", "How the data files are read: auto (.tsv and .csv by their extension; JSON lines or one JSON "
        "array otherwise, or TSV where the first line is not JSON and holds a tab), json, jsonl, tsv, csv.")
    encoding: str = option(
        "utf-8", "The data files' text encoding: utf-8 (a byte-order mark is fine), or the one they are in, e.g. "
        "gb18030 for GBK files (a file that is UTF-8 is then refused, as it would read garbled).")
    max_length: int = option(64, "tokens of a pair, [CLS] and [SEP]s included; longer pairs are truncated")
    group_by_length: bool = option(
        False, "Batches of pairs of similar length (shuffled; seeded per epoch), so dynamic padding pads little: "
        "1.6-1.8x samples/s on AFQMC (benchmarks/README.md). A speed option, not one to search.")
    # --- optimisation ------------------------------------------------------------------------
    learning_rate: float = option(2e-5, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.1, "share of the updates with a linear warm-up, then linear decay to 0")
    max_grad_norm: float = option(1.0, "gradient clipping (global L2 norm)")
    per_device_batch_size: int = option(32, "pairs per micro-batch and process")
    eval_batch_size: int = option(128, "pairs per evaluation batch")
    gradient_accumulation_steps: int | None = option(
        None, "Micro-batches per optimizer update. None: the launcher's (Accelerate's ACCELERATE_GRADIENT_"
        "ACCUMULATION_STEPS, set by accelerate launch for DeepSpeed), else 1; a value here wins, with a warning.")
    num_epochs: float = option(3.0, "passes over the training pairs (fractions allowed)")
    max_steps: int = option(0, "optimizer updates; > 0 overrides num_epochs")
    mixed_precision: str | None = option(
        None, "no | fp16 | bf16. None: what Accelerate resolves (`accelerate launch --mixed_precision`, "
        "`accelerate config`, the environment), else no; a value here wins, with a warning. fp16 falls back to "
        "no on CPU.")
    seed: int = option(42, "seeds the splits, the initialisation, dropout and the batch order")
    # --- task --------------------------------------------------------------------------------
    class_weights: list[float] | str | None = option(
        None, "[w0, w1] weights of labels 0 and 1 in the cross-entropy; one number r means [1, r]; \"balanced\" "
        "derives them from the training labels; None is unweighted. Only the ratio matters.")
    dropout: float = option(0.1, "hidden and classifier dropout")
    attention_dropout: float | None = option(
        None, "dropout on attention probabilities; None keeps the model's (0.1 in BERT)")
    threshold: float | str = option(
        "tuned", "Predict label 1 when P(label = 1) >= threshold. A number in (0, 1), or \"tuned\": chosen on the "
        "val probabilities after every evaluation (F1-macro, cross-fitted on two halves of val, is then the "
        "run's val/f1_macro; the saved model keeps the threshold chosen on all of val).")
    # --- fine-tuning techniques (afqmc/techniques.py), each off by default ----------------------
    # Each is declared with `technique(...)`: its off value, short name, plot label and range live here
    # and nowhere else (TECHNIQUES below); a new one is a field here and its code in techniques.py/train.py.
    augment_pair_order: bool = technique(
        False, "Train on each pair in a random order per epoch (AFQMC's relation is symmetric): seeded by seed "
        "and epoch, exact on resume; both orders come from one tokenization.", "swap", "pair-order swap")
    average_pair_orders: bool = technique(
        False, "Average P(same) over both orders of each pair at evaluation, held-out test scoring and predict "
        "(the saved model records it in config.json, so afqmc.predict applies it).", "avg2", "both orders")
    focal_gamma: float = technique(
        0.0, "Focal loss's gamma (the class weights act as its alpha); 0 = the class-weighted cross-entropy.",
        "focal", "focal gamma", low=0.0)
    label_smoothing: float = technique(
        0.0, "Label smoothing: each pair's target is 1 - eps on its label plus eps / 2 on each class (so the "
        "label keeps 1 - eps / 2); its class weight still weighs the pair, and focal_gamma applies to every "
        "class's term (afqmc.techniques.classification_loss). Training only: val/loss stays the weighted "
        "cross-entropy of the labels. 0 = off (0.1 is a common choice).", "ls", "label smoothing",
        low=0.0, high=1.0, ends="[)")
    fgm_epsilon: float = technique(
        0.0, "FGM adversarial training: the size of the word-embedding perturbation (epsilon * g / ||g||); "
        "0 = off.", "fgm", "FGM epsilon", low=0.0)
    rdrop_alpha: float = technique(
        0.0, "R-Drop: the weight of the symmetric KL divergence between two dropout passes of a batch; 0 = off.",
        "rdrop", "R-Drop alpha", low=0.0)
    layerwise_lr_decay: float = technique(
        1.0, "Layer-wise learning-rate decay: the head at learning_rate, each layer below at this times the "
        "rate of the one above, the embeddings lowest; 1 = off (one rate for all).", "llrd", "layer-wise LR decay",
        low=0.0, high=1.0, ends="(]")
    ema_decay: float = technique(
        0.0, "EMA of the weights, updated after every optimizer update; evaluation, the checkpoint and "
        "best_model/ use the average; 0 = off (0.999 is a common choice).", "ema", "EMA decay",
        low=0.0, high=1.0, ends="[)")
    gradient_checkpointing: bool = option(
        False, "Recompute activations during backward instead of keeping them: less memory (what lets a large "
        "model train on 8 GB), slower updates, the same losses. A memory option, not one to search.")
    # --- evaluation, early stopping, outputs ------------------------------------------------
    eval_steps: int = option(0, "evaluate every N optimizer updates; 0 = once per epoch")
    metric_for_best_model: str = option(
        PRIMARY, "The val metric that early stopping, the kept best model and a search's ranking follow (higher "
        "is better): val/f1_macro, val/f1_macro_tuned, val/auc, val/ap or val/accuracy.")
    patience: int = option(0, "stop after N evaluations without a better metric_for_best_model; 0 = never")
    output_dir: str = option("results/run", "checkpoint/, best_model/, metrics.jsonl, summary.json")
    report_to: str | list[str] = option(
        "none", "Experiment trackers of a single run, through Accelerate: none, tensorboard (output_dir/afqmc), "
        "mlflow (MLFLOW_TRACKING_URI, else output_dir/mlflow.db), wandb; a list for several. A search has its "
        "own (search.loggers; Tune's TensorBoard files are always written).")
    save_best_model: bool = option(True, "keep best_model/ (a save_pretrained folder)")

    # -----------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        """Coerce shorthand values and raise ConfigError naming the first bad field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: field '{name}' {why} (got {getattr(self, name)!r})", name)

        self._check_class_weights(bad)

        positive = {"learning_rate", "per_device_batch_size", "eval_batch_size", "max_length",
                    "gradient_accumulation_steps", "num_epochs", "tiny_hidden_size",
                    "tiny_num_layers", "tiny_num_heads"}
        for name in sorted(positive):
            value = getattr(self, name)
            if not (value is None and name == "gradient_accumulation_steps") and not value > 0:
                raise bad(name, "must be > 0")
        for name in ("weight_decay", "max_grad_norm", "max_steps", "eval_steps", "patience"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise bad("max_train_samples", "must be > 0 or null")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", "must be in [0, 1)")
        for name in ("dropout", "attention_dropout"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise bad(name, "must be in [0, 1)")
        self._check_techniques(bad)
        if isinstance(self.threshold, str):
            if self.threshold != TUNED:
                raise bad("threshold", f"must be a number in (0, 1) or '{TUNED}'")
        elif not 0.0 < self.threshold < 1.0:
            raise bad("threshold", f"must be in (0, 1) or '{TUNED}'")
        if self.val_file is None and not 0.0 < self.val_ratio < 1.0:
            raise bad("val_ratio", "must be in (0, 1) when no val_file is given")
        if not 0.0 <= self.test_ratio < 1.0:
            raise bad("test_ratio", "must be in [0, 1)")
        if self.val_file is None and self.val_ratio + self.test_ratio >= 1.0:
            raise bad("test_ratio", f"plus val_ratio ({self.val_ratio}) must leave pairs to train on")
        if self.data_format not in DATA_FORMATS:
            raise bad("data_format", f"must be one of {', '.join(DATA_FORMATS)}")
        try:
            "a".encode(self.encoding)  # also refuses codecs that are no text encoding (rot13, base64)
        except (LookupError, UnicodeError):
            raise bad("encoding", "is not a text encoding Python knows (utf-8, gb18030, ...)") from None
        reports = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        if not reports or any(r not in TRACKERS for r in reports) or ("none" in reports and len(reports) > 1):
            raise bad("report_to", f"must be one of {', '.join(TRACKERS)}, or a list of them without none")
        if self.metric_for_best_model not in SELECTION_METRICS:
            self.metric_for_best_model = normalize_metric(self.metric_for_best_model, "metric_for_best_model", source)
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}")
        if self.max_length < 8:
            raise bad("max_length", "must be >= 8 (a pair needs 3 special tokens and some text)")
        if self.tiny_hidden_size % self.tiny_num_heads:
            raise bad("tiny_hidden_size", "must be divisible by tiny_num_heads")
        if not self.model_name_or_path:
            raise bad("model_name_or_path", "must not be empty")
        if not self.train_file:
            raise bad("train_file", "must not be empty")

    def _check_class_weights(self, bad) -> None:
        """[w0, w1], one number r meaning [1, r], "balanced" or None; numbers become floats."""
        cw = self.class_weights
        if isinstance(cw, (int, float)) and not isinstance(cw, bool):
            self.class_weights = cw = [1.0, float(cw)]
        if isinstance(cw, str) and cw != "balanced":
            raise bad("class_weights", "must be [w0, w1], one number (w1 / w0), 'balanced' or null")
        if isinstance(cw, list):
            if len(cw) != 2 or not all(_is_number(w) and w > 0 for w in cw):
                raise bad("class_weights", "must hold two numbers > 0")
            self.class_weights = [float(w) for w in cw]

    def _check_techniques(self, bad) -> None:
        """The techniques' strengths: each in the range its field declares (TECHNIQUES), "off" included."""
        for name, tech in TECHNIQUES.items():
            why = tech.why_invalid(getattr(self, name))
            if why:
                raise bad(name, why)

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return from_dict(changes, source="override", base=self)

    def save_yaml(self, path: str | os.PathLike, header: str | None = None) -> None:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if header:
            text = "".join(f"# {line}\n" for line in header.splitlines()) + text
        Path(path).write_text(text, encoding="utf-8")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
# The fine-tuning techniques, by field name, in TrainConfig's order: what each field's `technique(...)` declares.
TECHNIQUES: dict[str, Technique] = {name: f.metadata["technique"] for name, f in FIELDS.items()
                                    if "technique" in f.metadata}


def field_docs() -> dict[str, str]:
    """Each field's help text, from its metadata (`option` / `technique`): no source needed at run time."""
    return {name: f.metadata.get("help", "") for name, f in FIELDS.items()}


def fields_help() -> str:
    """Every TrainConfig field as `--name TYPE (default) description`: the epilog of the CLIs' --help."""
    import textwrap

    docs = field_docs()
    lines = ["TrainConfig fields (set in the --config YAML, or as --field_name value):"]
    for name, f in FIELDS.items():
        kind = " | ".join("null" if t is type(None) else t.__name__ for t in _allowed_types(name))
        head = f"  --{name} {kind} (default {f.default!r})"
        lines.append(head)
        lines += textwrap.wrap(docs[name], width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


_HINTS = typing.get_type_hints(TrainConfig)


def normalize_metric(name: Any, field: str, source: str = "config") -> str:
    """A selection metric by its full name (val/auc) or short one (auc, eval_auc, val_auc)."""
    text = str(name)
    short = text.removeprefix("val/").removeprefix("eval_").removeprefix("val_")
    full = f"val/{short}"
    if full not in SELECTION_METRICS:
        raise ConfigError(f"{source}: field '{field}' must be one of {', '.join(SELECTION_METRICS)} "
                          f"(got {name!r})", field)
    return full


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _allowed_types(name: str) -> tuple[type, ...]:
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
    else:
        args = (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def coerce_value(name: str, value: Any, source: str = "config") -> Any:
    """Check `value` against the declared type of field `name`; strings from the CLI are parsed."""
    if name not in FIELDS:
        raise ConfigError(f"{source}: unknown field '{name}'{_did_you_mean(name)}", name)
    allowed = _allowed_types(name)
    # Strings from the command line are parsed ('3e-5', '[1, 2]', 'null'), also for fields that take
    # a word or a number (threshold: 0.5 or tuned); plain string fields keep theirs ("no" stays "no").
    if isinstance(value, str) and (str not in allowed or float in allowed or list in allowed):
        value = parse_value(value)
    if type(None) in allowed and (value is None or value in ("null", "None", "~")):
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        if not math.isfinite(value):
            raise ConfigError(f"{source}: field '{name}' must be finite (got {value!r})", name)
        return float(value)
    elif isinstance(value, float) and int in allowed and value.is_integer():
        return int(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, list) and list in allowed:
        return value
    elif name == "class_weights" and _is_number(value):
        return float(value)  # shorthand for [1, r]; expanded by validate()
    names = ", ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{source}: field '{name}' must be of type {names} (got {value!r})", name)


def parse_number(text: Any) -> Any:
    """A number written as text, read the same way in a config file, a search space and on the command
    line: '3e-5' is a float, although YAML 1.1 (and so PyYAML) reads it as a string. Any other value
    is returned as it is (so a quoted "no" stays a word)."""
    if isinstance(text, str):
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return text


def parse_value(text: Any) -> Any:
    """A command-line value: a number (`parse_number`), else YAML ('[1, 2]', 'null', 'true'), else the text."""
    if not isinstance(text, str):
        return text
    number = parse_number(text)
    if number is not text:
        return number
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, FIELDS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Fields that decide which pairs a run trains, validates and tests on, and how they are tokenized:
# a search tokenizes once, in its driver, so none of them can vary between its trials.
DATA_FIELDS = ("train_file", "val_file", "val_ratio", "test_ratio", "max_train_samples", "skip_empty", "max_length",
               "model_name_or_path", "vocab_file", "trust_remote_code", "data_format", "encoding")
# Fields that name files (or a local model directory): relative to where the command started.
PATH_FIELDS = ("train_file", "val_file", "test_file", "vocab_file")


# Where afqmc/ is installed: the checkout, or site-packages for a non-editable install.
INSTALL_ROOT = Path(__file__).resolve().parents[1]


def _resolve(root: str | os.PathLike, path: str) -> str:
    """`path` from `root`; a relative path that is not there but names a file shipped with the package
    (the demo data, `afqmc/demo_data/...`) is that file, so the shipped spaces work from anywhere."""
    found = Path(root) / path
    shipped = INSTALL_ROOT / path
    if not found.exists() and not Path(path).is_absolute() and shipped.exists():
        return str(shipped)
    return str(found.resolve())


def absolute_paths(cfg: TrainConfig, root: str | os.PathLike) -> TrainConfig:
    """`cfg` with its file fields (and a local model directory) made absolute from `root`: a search's
    trials run in their own working directories, and a resumed search may start from another one."""
    changes: dict[str, Any] = {k: _resolve(root, getattr(cfg, k)) for k in PATH_FIELDS if getattr(cfg, k)}
    local_model = Path(root) / cfg.model_name_or_path
    if cfg.model_name_or_path != TINY and local_model.exists():
        changes["model_name_or_path"] = str(local_model.resolve())
    return cfg.replace(**changes)


def default_values() -> dict[str, Any]:
    return {f.name: f.default for f in FIELDS.values()}


def from_dict(values: dict[str, Any], source: str = "config", base: TrainConfig | None = None,
              lines: dict[str, int] | None = None) -> TrainConfig:
    """`base` (or the defaults) updated with `values`, every key and value checked.

    `lines` maps keys to their line in `source` (a file) so that errors name file, line and field.
    """
    lines = lines or {}

    def where(key: str | None) -> str:
        return f"{source}:{lines[key]}" if key in lines else source

    merged = base.to_dict() if base is not None else default_values()
    for key, value in values.items():
        merged[str(key)] = coerce_value(str(key), value, where(str(key)))
    cfg = TrainConfig.__new__(TrainConfig)
    cfg.__dict__.update(merged)
    try:
        cfg.validate(source)
    except ConfigError as exc:
        if exc.field in lines:
            raise ConfigError(str(exc).replace(source, where(exc.field), 1), exc.field) from None
        raise
    return cfg


def read_yaml_mapping(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping safely; returns it and the line (1-based) of each top-level key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of field: value")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    return data, lines


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (e.g. parsed from the CLI)."""
    cfg = TrainConfig()
    if path is not None:
        data, lines = read_yaml_mapping(path)
        cfg = from_dict(data, source=str(path), lines=lines)
    if overrides:
        cfg = from_dict(overrides, source="command line", base=cfg)
    return cfg


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--field_name value` or `--field_name=value` pairs into a dict (values still strings)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --field_name value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"command line: field '{key}' needs a value")
            value = argv[i + 1]
            i += 1
        coerce_value(key, value, "command line")
        out[key] = value
        i += 1
    return out
