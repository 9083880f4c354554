"""The model card (README.md) of a saved model, written with huggingface_hub's ModelCard (offline).

It says what a user of the folder needs: the base model, the data, the val figures (which chose the
checkpoint and the threshold, so they are optimistic) and the held-out test figures (which no
choice has seen), the decision threshold and how to apply it with `transformers.pipeline`, and the
config that produced the model. Written when the model is saved, and again once it has been scored
on the held-out test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from afqmc.config import TINY, TrainConfig

CARD_NAME = "README.md"
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Metrics

| split | pairs | F1-macro | accuracy | ROC-AUC | what it is |
|---|---:|---:|---:|---:|---|
{{ metric_rows }}

## Decision threshold

The model predicts `same` (label 1: the two questions ask the same thing) when
P(same) >= **{{ threshold }}**, a threshold {{ threshold_how }}. It is stored in `config.json` as
`decision_threshold`. `transformers.pipeline` returns both scores and takes the larger one
(0.5); apply the threshold like this:

```python
from transformers import pipeline
clf = pipeline("text-classification", model="{{ path }}", top_k=None, truncation=True)
scores = {s["label"]: s["score"] for s in clf({"text": "花呗怎么还款", "text_pair": "花呗如何还钱"})}
label = "same" if scores["same"] >= clf.model.config.decision_threshold else "different"
```

or `python -m afqmc.predict --checkpoint {{ path }} --data pairs.jsonl` (JSON lines with `text1`,
`text2`), which applies it and writes `prob` and `pred` per pair.

## Training config

The resolved `TrainConfig` (also in `train_config.yaml`);
`accelerate launch afqmc/train.py --config train_config.yaml` trains it again.

```yaml
{{ config_yaml }}
```
"""


def write_model_card(model_dir: str | Path, cfg: TrainConfig, val: dict[str, Any],
                     test: dict[str, Any] | None = None, path: str | Path | None = None) -> Path:
    """Write `model_dir`/README.md from the run's config, its val metrics (prefixed `val/`) and,
    when scored, its held-out test metrics (unprefixed: f1_macro, accuracy, auc, num_samples).
    `path`: where the folder will be used from, when it is written elsewhere first."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    base = cfg.model_name_or_path
    hub_base = base if base != TINY and "/" in base and not Path(base).exists() else None
    data = ModelCardData(language="zh", library_name="transformers", pipeline_tag="text-classification",
                         base_model=hub_base, tags=["afqmc", "sentence-pair-classification", "afqmc-tune"])
    threshold = val.get("val/threshold")
    tuned = cfg.threshold == "tuned"
    rows = [_row("val", val.get("val/num_samples"), val.get("val/f1_macro"), val.get("val/accuracy"),
                 val.get("val/auc"), "chose the checkpoint" + (" and the threshold; F1 cross-fitted" if tuned else "")
                 + ": optimistic")]
    if test:
        rows.append(_row("held-out test", test.get("num_samples"), test.get("f1_macro"), test.get("accuracy"),
                         test.get("auc"), "never used for a choice: the figure to trust"))
    else:
        rows.append("| held-out test | - | - | - | - | not scored (set `test_ratio` or a labelled `test_file`) |")
    origin = "a tiny BERT initialised at random" if base == TINY else f"`{base}`"
    summary = (f"A sentence-pair classifier for AFQMC-style question matching, fine-tuned from {origin} on "
               f"`{Path(cfg.train_file).name}` with afqmc-tune (val: "
               + (f"`{Path(cfg.val_file).name}`" if cfg.val_file else f"{cfg.val_ratio:.0%} of it")
               + (f", held-out test: {cfg.test_ratio:.0%} of it" if cfg.test_ratio else "")
               + "). Labels: 0 `different`, 1 `same`.")
    card = ModelCard.from_template(
        data, template_str=TEMPLATE, title="AFQMC sentence-pair classifier", summary=summary,
        metric_rows="\n".join(rows), threshold=f"{threshold:.4f}" if threshold is not None else "?",
        threshold_how="tuned on val after the evaluation that chose this model (best F1-macro)" if tuned
        else "fixed in the config", path=str(path or model_dir),
        config_yaml=yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).strip())
    path = model_dir / CARD_NAME
    card.save(path)
    return path


def _row(split: str, n: Any, f1: Any, acc: Any, auc: Any, what: str) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, (int, float)) else "-"

    return f"| {split} | {n if n is not None else '-'} | {fmt(f1)} | {fmt(acc)} | {fmt(auc)} | {what} |"
