"""Predict with a saved model; with a labelled file, also print and save the metrics.

    python -m afqmc.predict --checkpoint results/run/best_model --data pairs.jsonl [--output preds.jsonl]
    python -m afqmc.predict --checkpoint DIR --text1 "..." --text2 "..."     # one pair
    cat pairs.jsonl | python -m afqmc.predict --checkpoint DIR --data -      # JSON lines in and out

Each output line is the input pair with `prob` (P(label = 1)) and `pred` (the label at the model's
saved decision threshold, or --threshold). An ensemble folder (results/NAME/ensemble, afqmc/ensemble.py)
predicts the weighted mean of its members' P(same), at the ensemble's threshold. A labelled input file
also gets `<output stem>.metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

from afqmc.checkpoint import CheckpointError, write_json
from afqmc.config import ConfigError
from afqmc.data import DataError, PairData, load_pairs, parse_pairs
from afqmc.ensemble import is_ensemble, load_ensemble
from afqmc.metrics import classification_metrics, ranking_metrics, tune_threshold
# A saved model's loading and P(same) live in afqmc.saved, which afqmc.ensemble uses too (one way:
# predict -> ensemble -> saved); they are imported here as well, where callers have always found them.
from afqmc.saved import load_saved_model, predict_probs, saved_threshold


def labelled_metrics(labels, probs, threshold: float) -> dict[str, Any]:
    """The figures of a labelled file at the model's threshold: accuracy, F1s, confusion, AUC, AP."""
    return {**classification_metrics(labels, probs, threshold, prefix=""), **ranking_metrics(labels, probs, prefix="")}


@dataclass
class Predictor:
    """What predicting needs of a saved model or an ensemble folder (afqmc/ensemble.py): P(same) of
    pairs, the saved decision threshold (raises when there is none), and the data reading option."""

    probs: Callable[[PairData], list[float]]
    saved_threshold: Callable[[], float]
    skip_empty: bool


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A saved model, or an ensemble (a folder with ensemble.json: its members' weighted mean P(same))."""
    if is_ensemble(checkpoint):
        ens = load_ensemble(checkpoint, device)
        return Predictor(lambda pairs: ens.predict_probs(pairs, device), lambda: ens.threshold, ens.skip_empty)
    model, tokenizer, cfg = load_saved_model(checkpoint, device)
    return Predictor(lambda pairs: predict_probs(model, tokenizer, pairs, cfg.max_length, cfg.eval_batch_size, device),
                     lambda: saved_threshold(model, cfg, checkpoint), cfg.skip_empty)


def predict_saved(checkpoint: str | Path, pairs: PairData, device: str | torch.device = "cpu"
                  ) -> tuple[list[float], float]:
    """P(same) of `pairs` by a saved model or an ensemble folder, and its saved threshold."""
    predictor = load_predictor(checkpoint, device)
    return predictor.probs(pairs), predictor.saved_threshold()


def score_pairs(checkpoint: str | Path, pairs: PairData, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The saved model's (or ensemble's) metrics on labelled `pairs`, at its saved threshold (nothing
    is chosen here)."""
    probs, threshold = predict_saved(checkpoint, pairs, device)
    return labelled_metrics(pairs.labels, probs, threshold)


def predict_file(checkpoint: str | Path, data_file: str | Path, output: str | Path | None = None,
                 device: str | torch.device = "cpu", threshold: float | None = None) -> dict[str, Any]:
    """Write predictions for `data_file`; returns the metrics when it has labels, else {}.
    `threshold` replaces the model's saved one."""
    predictor = load_predictor(checkpoint, device)
    pairs = load_pairs(data_file, require_labels=False, skip_empty=predictor.skip_empty)
    output = Path(output) if output else Path(data_file).with_suffix(".predictions.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as fh:
        metrics = _predict_pairs(predictor, pairs, fh, threshold)
    if metrics:
        write_json(output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json"), metrics)
    return metrics


def _predict_pairs(predictor: Predictor, pairs: PairData, out: TextIO, threshold: float | None) -> dict[str, Any]:
    """Predictions of `pairs` as JSON lines to `out`; the metrics when the pairs have labels, else {}."""
    threshold = predictor.saved_threshold() if threshold is None else threshold
    probs = predictor.probs(pairs)
    for i, p in enumerate(probs):
        row = {"text1": pairs.text1[i], "text2": pairs.text2[i], "prob": round(p, 6), "pred": int(p >= threshold)}
        if pairs.labels is not None:
            row["label"] = pairs.labels[i]
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    if pairs.labels is None:
        return {}
    metrics = labelled_metrics(pairs.labels, probs, threshold)
    # What this file's own best threshold would give: for information only (chosen on the scored pairs).
    metrics["best_threshold"], metrics["f1_macro_at_best_threshold"] = tune_threshold(pairs.labels, probs)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m afqmc.predict --checkpoint results/run/best_model --data pairs.jsonl\n"
               "  python -m afqmc.predict --checkpoint results/run/best_model --text1 花呗怎么还款 --text2 花呗如何还钱\n"
               "  cat pairs.jsonl | python -m afqmc.predict --checkpoint results/run/best_model --data - > preds.jsonl")
    parser.add_argument("--checkpoint", required=True, help="a saved model directory (e.g. results/run/best_model), "
                                                            "or an ensemble folder (results/NAME/ensemble)")
    parser.add_argument("--data", help="JSON-lines pairs, labelled or not; '-' reads standard input and writes the "
                                       "predictions to standard output (metrics of labelled pairs to standard error)")
    parser.add_argument("--text1", help="with --text2: predict one pair and print it as JSON")
    parser.add_argument("--text2")
    parser.add_argument("--output", help="predictions file (default: next to --data)")
    parser.add_argument("--threshold", type=float,
                        help="decision threshold on P(same) (default: the one saved with the model)")
    args = parser.parse_args(argv)
    if (args.text1 is None) != (args.text2 is None):
        parser.error("--text1 and --text2 go together")
    if (args.data is None) == (args.text1 is None):
        parser.error("give --data FILE (or -), or --text1 and --text2")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        parser.error(f"--threshold must be in (0, 1) (got {args.threshold})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if args.data and args.data != "-":
            metrics = predict_file(args.checkpoint, args.data, args.output, device, args.threshold)
            out = args.output or Path(args.data).with_suffix(".predictions.jsonl")
            print(f"predictions written to {out}")
        else:
            predictor = load_predictor(args.checkpoint, device)
            if args.text1 is not None:
                pairs = PairData([args.text1], [args.text2], None, "command line")
            else:
                pairs = parse_pairs(sys.stdin, "<stdin>", require_labels=False, skip_empty=predictor.skip_empty)
            with (open(args.output, "w", encoding="utf-8") if args.output else nullcontext(sys.stdout)) as out:
                metrics = _predict_pairs(predictor, pairs, out, args.threshold)
    except (CheckpointError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if metrics:
        width = max(map(len, metrics))
        text = "".join(f"{k:<{width}}  {v:.4f}\n" if isinstance(v, float) else f"{k:<{width}}  {v}\n"
                       for k, v in metrics.items())
        print(text, end="", file=sys.stdout if args.data not in (None, "-") else sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
