"""The search's winner as files a user takes away: best_model/ (with its model card) and best_config.yaml.

The model and its config come from the best trial's kept checkpoint (tune.scoring.kept_model); the
card gets the held-out test figures once tune.scoring has them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from afqmc.card import CARD_NAME, write_model_card
from afqmc.checkpoint import CONFIG_NAME, METRICS_NAME, atomic_directory
from afqmc.config import PRIMARY, load_config
from tune.folder import BEST_CONFIG, BEST_MODEL
from tune.results import TrialRecord, best_trial
from tune.scoring import kept_config, kept_model


def export_best(trials: list[TrialRecord], experiment_dir: str | Path, test_file: str | None = None,
                metric: str = PRIMARY) -> TrialRecord | None:
    """Copy the best trial's best model to best_model/ and its config to best_config.yaml.

    `test_file` (the space's; trials do not predict) goes back into best_config.yaml, so that
    retraining the best configuration also predicts it.
    """
    best = best_trial(trials)
    if best is None:
        return None
    experiment_dir = Path(experiment_dir)
    model_dir, cfg = kept_model(best), kept_config(best)
    if not _same_model(model_dir, experiment_dir / BEST_MODEL):  # rebuilding the reports copies nothing
        with atomic_directory(experiment_dir / BEST_MODEL) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            # The card names the exported folder (the trial's was written in its scratch folder).
            write_model_card(tmp, cfg, json.loads((model_dir / METRICS_NAME).read_text(encoding="utf-8")),
                             path=experiment_dir / BEST_MODEL)
    cfg.output_dir = str(experiment_dir / "best_run")
    cfg.test_file = test_file
    winner = None
    if any(t.confirm_of is not None for t in trials):
        from tune.confirm import confirmed_winner

        winner = confirmed_winner(trials)
    if winner is not None:
        chose = (f"Confirmed winner of search {experiment_dir.name}: the configuration of trial {winner['config']}, "
                 f"mean {metric} {winner['mean']:.4f} over {winner['n']} seeds (the best mean; val chose it). Its best "
                 f"seed by val is trial {best.number} (seed {cfg.seed}): {best.best_value:.4f} at evaluation "
                 f"{best.best_evals}, the model in {BEST_MODEL}/.")
    else:
        chose = (f"Best trial {best.number} ({best.trial_id}) of search {experiment_dir.name}: {metric} "
                 f"{best.best_value:.4f} at evaluation {best.best_evals} (val: it chose this trial, so it is optimistic).")
    cfg.save_yaml(experiment_dir / BEST_CONFIG, header=(
        f"{chose}\nRetrain it: accelerate launch afqmc/train.py --config {experiment_dir.name}/{BEST_CONFIG}"))
    return best


def card_with_test(model_dir: Path, test: dict[str, Any]) -> None:
    """Rewrite an exported model's card with its held-out test figures (`test`: the metrics and their source)."""
    val = json.loads((model_dir / METRICS_NAME).read_text(encoding="utf-8"))
    write_model_card(model_dir, load_config(model_dir / CONFIG_NAME), val, test)


def _same_model(source: Path, copy: Path) -> bool:
    """`copy` already holds the model of `source`: same files, same sizes, same metrics and config."""
    if not copy.is_dir():
        return False
    # README.md (the model card) is rewritten once the model has been scored on the held-out test set.
    files = {p.relative_to(source): p.stat().st_size for p in source.rglob("*") if p.is_file() and p.name != CARD_NAME}
    copied = {p.relative_to(copy): p.stat().st_size for p in copy.rglob("*") if p.is_file() and p.name != CARD_NAME}
    return files == copied and all((source / name).read_bytes() == (copy / name).read_bytes()
                                   for name in (METRICS_NAME, CONFIG_NAME) if (source / name).is_file())
