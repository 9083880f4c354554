"""The ensemble folder: several saved models whose weighted mean P(same) predicts, at one threshold.

    results/NAME/ensemble/
        ensemble.json       members (name, folder, weight, selection count, own threshold, parameters),
                            the ensemble's threshold, how it was chosen, its val and test figures, its cost
        README.md           the model card
        members/<name>/     a copy of each distinct member's saved model: config.json (with its own
                            decision threshold and average_pair_orders), train_config.yaml, tokenizer,
                            safetensors weights; what prediction needs, nothing else

`python -m afqmc.predict --checkpoint results/NAME/ensemble ...` predicts with it (afqmc/predict.py
dispatches on ensemble.json): each member's P(same) through `afqmc.saved.predict_probs` (so a
member saved with average_pair_orders averages both orders, as it was evaluated), their weighted
mean, `pred` at the ensemble's threshold. The members are copies, so the folder stands alone.
Choosing an ensemble is the search's business (tune/ensemble.py); this module only writes and reads
the folder, and never imports tune or Ray.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afqmc.card import CARD_NAME
from afqmc.checkpoint import (METRICS_NAME, TRAINER_STATE_NAME, THRESHOLD_ATTR, CheckpointError, atomic_directory,
                              resolve_directory, write_json, write_text_atomic)
from afqmc.saved import load_saved_model, model_directory, predict_probs

ENSEMBLE_JSON = "ensemble.json"
MEMBERS_DIR = "members"
FORMAT = "afqmc-ensemble"
VERSION = 1
# Files of a saved model that prediction does not read (the member's own card would name its trial's folder).
NOT_COPIED = {CARD_NAME, METRICS_NAME, TRAINER_STATE_NAME}


def is_ensemble(path: str | Path) -> bool:
    """Whether `path` (or its `.old` twin after an interrupted write) is an ensemble folder."""
    try:
        return (resolve_directory(path) / ENSEMBLE_JSON).is_file()
    except CheckpointError:
        return False


# --- writing ---------------------------------------------------------------------------------------


def write_ensemble(target: Path, members: list[tuple[str, Path, float, int]], threshold: float,
                   selection: dict[str, Any] | None = None, test: dict[str, Any] | None = None,
                   cost: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the ensemble folder `target` atomically (afqmc.checkpoint.atomic_directory).

    `members`: (name, saved-model folder, weight, selection count) of each distinct member; the
    weights must sum to 1. `threshold`: the ensemble's decision threshold on its mean P(same).
    `selection`: how it was chosen, with its val figures (`val`, `single_val`, `metric`, `history`,
    ...); `test`: its held-out test figures; `cost`: measured prediction times, completed here with
    the members and their parameters. Returns `target`."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    total = sum(w for _, _, w, _ in members)
    if abs(total - 1.0) > 1e-6 or not 0.0 < threshold < 1.0:
        raise ValueError(f"weights must sum to 1 (got {total}) and the threshold be in (0, 1) (got {threshold})")
    names = _folder_names([m[0] for m in members])
    entries = []
    with atomic_directory(target) as tmp:
        for (name, source, weight, count), folder in zip(members, names):
            source = model_directory(source)
            _copy_for_prediction(source, tmp / MEMBERS_DIR / folder)
            entries.append({"name": name, "path": f"{MEMBERS_DIR}/{folder}", "weight": float(weight),
                            "count": int(count), "threshold": _member_threshold(source),
                            "parameters": count_parameters(source), "source": str(source)})
        cost = {**(cost or {}), "members": len(entries), "parameters": sum(e["parameters"] for e in entries)}
        spec = {"format": FORMAT, "version": VERSION, "threshold": float(threshold), "members": entries,
                "selection": selection or {}, "test": test, "cost": cost, **(extra or {})}
        write_json(tmp / ENSEMBLE_JSON, spec)
        write_text_atomic(tmp / CARD_NAME, ensemble_card(spec, target))
    return target


def _folder_names(names: list[str]) -> list[str]:
    """A distinct, file-system-safe folder name for each member."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "member"
        folder, i = base, 1
        while folder in out:
            i += 1
            folder = f"{base}_{i}"
        out.append(folder)
    return out


def _copy_for_prediction(source: Path, dest: Path) -> None:
    """Copy the files of a saved model that prediction reads (weights, configs, tokenizer)."""
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{source}: not a saved model (no config.json)")
    dest.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in NOT_COPIED:
            shutil.copy2(path, dest / path.name)


def _member_threshold(model_dir: Path) -> float | None:
    value = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get(THRESHOLD_ATTR)
    return None if value is None else float(value)


def count_parameters(model_dir: Path) -> int:
    """The number of weights in a saved model's safetensors files (read from their headers only)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                total += n
    return total


# --- reading and predicting --------------------------------------------------------------------------


@dataclass
class Ensemble:
    """A loaded ensemble: each member's (model, tokenizer, TrainConfig) and weight, and its threshold."""

    path: Path
    threshold: float
    members: list[tuple[Any, Any, Any, float]]
    spec: dict[str, Any]

    @property
    def skip_empty(self) -> bool:
        return all(cfg.skip_empty for _, _, cfg, _ in self.members)

    def predict_probs(self, pairs, device="cpu") -> list[float]:
        """The weighted mean of the members' P(same) (each through afqmc.saved.predict_probs)."""
        total = [0.0] * len(pairs)
        for model, tokenizer, cfg, weight in self.members:
            probs = predict_probs(model, tokenizer, pairs, cfg.max_length, cfg.eval_batch_size, device)
            total = [t + weight * p for t, p in zip(total, probs)]
        return total


def read_spec(path: str | Path) -> dict[str, Any]:
    """ensemble.json of an ensemble folder, checked; errors name the file and the field."""
    where = resolve_directory(path) / ENSEMBLE_JSON
    try:
        spec = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: not readable as JSON ({exc})") from exc
    if spec.get("format") != FORMAT or not isinstance(spec.get("members"), list) or not spec["members"]:
        raise CheckpointError(f"{where}: not an afqmc ensemble (needs format {FORMAT!r} and a list of members)")
    for i, m in enumerate(spec["members"]):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not isinstance(m.get("weight"), (int, float)):
            raise CheckpointError(f"{where}: members[{i}]: needs a 'path' and a numeric 'weight'")
    threshold = spec.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise CheckpointError(f"{where}: field 'threshold' must be a number in (0, 1) (got {threshold!r})")
    return spec


def load_ensemble(path: str | Path, device="cpu") -> Ensemble:
    """Load every member of the ensemble folder `path` (afqmc.saved.load_saved_model each)."""
    root = resolve_directory(path)
    spec = read_spec(root)
    members = []
    for m in spec["members"]:
        model, tokenizer, cfg = load_saved_model(root / m["path"], device)
        members.append((model, tokenizer, cfg, float(m["weight"])))
    return Ensemble(root, float(spec["threshold"]), members, spec)


# --- the model card ---------------------------------------------------------------------------------


def ensemble_card(spec: dict[str, Any], path: Path) -> str:
    """The README.md of an ensemble folder: what it is, its members and weights, its threshold, its
    figures (val chose it; held-out test judges it), its cost, and how to predict with it."""
    sel, test, cost = spec.get("selection") or {}, spec.get("test") or {}, spec.get("cost") or {}
    val, single = sel.get("val") or {}, sel.get("single_val") or {}
    rows = "\n".join(f"| {m['name']} | {m['weight']:.3f} | {m['count']} | {_f(m.get('threshold'))} | "
                     f"{m['parameters']:,} |" for m in spec["members"])
    lines = [
        "---", "language: zh", "library_name: transformers", "tags: [afqmc, sentence-pair-classification, "
        "afqmc-tune, ensemble]", "---", "", "# AFQMC sentence-pair ensemble", "",
        f"The weighted mean of {len(spec['members'])} fine-tuned models' P(same) (label 1: the two questions ask "
        f"the same thing), chosen by greedy forward selection with replacement (Caruana et al., 2004) on val "
        f"{sel.get('metric', '?').replace('_', ' ')} over the models a search trained, at most {sel.get('k', '?')} "
        "selections; a member's weight is its share of the selections.", "",
        "| member | weight | selected | own threshold | parameters |", "|---|---:|---:|---:|---:|", rows, "",
        "## Decision threshold", "",
        f"`same` when the weighted mean P(same) >= **{spec['threshold']:.4f}**, tuned on val for the "
        "ensemble (best F1-macro), as a trial's threshold is.", "",
        "## Metrics", "",
        "Val chose the members, the weights and the threshold: its in-sample figure grades the selection "
        "on the pairs that made it (optimistic); the cross-fitted one chooses on one half of val and scores "
        "on the other, both ways. Only held-out test, which no choice has seen, says how good it is.", "",
        "| figure | ensemble | single best |", "|---|---:|---:|",
        f"| val F1-macro, in-sample (optimistic) | {_f(val.get('f1_macro_in_sample'))} | "
        f"{_f(single.get('f1_macro_in_sample'))} |",
        f"| val F1-macro, cross-fitted | {_f(val.get('f1_macro_cross_fitted'))} | "
        f"{_f(single.get('f1_macro_cross_fitted'))} |",
        f"| val log loss | {_f(val.get('log_loss'))} | {_f(single.get('log_loss'))} |",
        f"| val ROC-AUC | {_f(val.get('auc'))} | {_f(single.get('auc'))} |",
    ]
    lines += _test_rows(test) + ["", "## Cost", "", _cost_line(cost), "", "## Predict", "", "```bash",
                                 f"python -m afqmc.predict --checkpoint {path} --data pairs.jsonl",
                                 f"python -m afqmc.predict --checkpoint {path} --text1 花呗怎么还款 --text2 花呗如何还钱",
                                 "```", "", f"Each member is a saved model under `{MEMBERS_DIR}/` (a copy: the "
                                 "trial folders it came from can go); `ensemble.json` holds the weights.", ""]
    return "\n".join(lines)


def _test_rows(test: dict[str, Any]) -> list[str]:
    if not test or "ensemble" not in test:
        return ["| held-out test F1-macro | not scored | - |"]
    ens, one = test["ensemble"], test.get("single_best") or {}
    low, high = test.get("gain_ci95") or (None, None)
    return [f"| held-out test F1-macro (the figure to trust) | {_f(ens.get('f1_macro'))} | {_f(one.get('f1_macro'))} |",
            f"| held-out test accuracy | {_f(ens.get('accuracy'))} | {_f(one.get('accuracy'))} |", "",
            f"Gain over the single best ({one.get('name', '?')}) on {ens.get('num_samples', '?')} held-out test pairs: "
            f"{_f(test.get('gain_f1_macro'), '+.4f')} F1-macro, paired bootstrap 95% interval "
            f"[{_f(low, '+.4f')}, {_f(high, '+.4f')}] ({test.get('gain_resamples', '?')} resamples)."]


def _cost_line(cost: dict[str, Any]) -> str:
    text = f"{cost.get('members', '?')} models, {cost.get('parameters', 0):,} parameters in all"
    if cost.get("seconds_per_pair") and cost.get("single_seconds_per_pair"):
        text += (f"; prediction {cost['seconds_per_pair'] * 1000:.2f} ms per pair against "
                 f"{cost['single_seconds_per_pair'] * 1000:.2f} ms for the single model "
                 f"({cost['seconds_per_pair'] / cost['single_seconds_per_pair']:.1f}x)")
    return text + "."


def _f(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
