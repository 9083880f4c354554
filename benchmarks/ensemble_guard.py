"""The ensemble's guard (issue 30): which margin keeps members that only fit val noise out?

    python benchmarks/ensemble_guard.py results/A [results/B ...] [--margins 0,0.001,0.002,0.005,0.01,0.02]
        [--json OUT]

For each finished search folder: every kept model is a candidate (also those ASHA stopped at its
first rung: the "cut" column says whether they are left out, as the search now does); each is
scored on val and on the held-out test pairs once (tune.scoring.model_probs, cached in the folder);
then, for each margin, the greedy selection on val AUC (search.ensemble_metric's default) chooses
the members, and the ensemble is judged on the held-out test pairs against the search's single best
(tune.ensemble.judge_on_test: the F1-macro gain and its paired bootstrap interval). Val chose the
members; the test figure judges them. A margin is a default of the tool, chosen across searches by
this table, not per search.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

import _benchutil as bu


# (first-rung cuts left out, where the walk starts): the best candidate by val AUC (before issue 30's
# last change) or the search's best model, the one the ensemble is judged against (the search now)
VARIANTS = ((False, "best_auc"), (True, "best_auc"), (True, "search_best"))


def measure(folder: Path, margins: list[float], k: int) -> list[dict[str, Any]]:
    from afqmc.data import load_splits
    from tune.ensemble import candidates, judge_on_test, select_ensemble
    from tune.folder import SearchState
    from tune.results import best_trial, collect_trials
    from tune.scoring import model_probs
    from tune.space import folder_config

    state = SearchState.load(folder)
    base = folder_config(folder, state)
    splits = load_splits(base)
    trials = collect_trials(folder)
    best = best_trial(trials)
    first_rung = state.settings.get("grace_period")
    rows = []
    for cut, start in VARIANTS:
        kept = candidates(trials, first_rung if cut else None)
        if best not in kept:
            kept.append(best)
        name = {t.trial_id: f"trial {t.number}" for t in kept}
        val = model_probs(folder, kept, splits.val, "val")
        test = model_probs(folder, kept, splits.test, "test")
        for margin in margins:
            choice = select_ensemble({name[t.trial_id]: np.asarray(val["probs"][t.trial_id]) for t in kept},
                                     splits.val.labels, k=k, seed=base.seed, metric="auc", margin=margin,
                                     start=name[best.trial_id] if start == "search_best" else None)
            judged = judge_on_test(choice, {name[t.trial_id]: np.asarray(test["probs"][t.trial_id]) for t in kept},
                                   splits.test.labels, single=name[best.trial_id],
                                   single_threshold=test["threshold"][best.trial_id], seed=base.seed)
            rows.append({"search": folder.name, "first_rung_cut_out": cut, "start": start, "margin": margin,
                         "candidates": len(kept), "members": len(choice.members),
                         "val_cross_fitted_f1": choice.val["f1_macro_cross_fitted"],
                         "single_val_cross_fitted_f1": choice.single_val["f1_macro_cross_fitted"],
                         "test_gain_f1": judged["gain_f1_macro"], "test_gain_ci95": judged["gain_ci95"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--margins", default="0,0.001,0.002,0.005,0.01,0.02")
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args(argv)
    margins = [float(m) for m in args.margins.split(",")]
    rows = [r for folder in args.folders for r in measure(folder.resolve(), margins, args.k)]
    print(bu.table([{**r, "test_gain_ci95": f"[{r['test_gain_ci95'][0]:+.4f}, {r['test_gain_ci95'][1]:+.4f}]"}
                    for r in rows], list(rows[0])))
    summary = []
    for cut, start in VARIANTS:
        for margin in margins:
            same = [r for r in rows if r["margin"] == margin and (r["first_rung_cut_out"], r["start"]) == (cut, start)]
            gains, members = [r["test_gain_f1"] for r in same], [r["members"] for r in same]
            summary.append({"first_rung_cut_out": cut, "start": start, "margin": margin, "searches": len(gains),
                            "mean_test_gain": float(np.mean(gains)), "worst_test_gain": float(np.min(gains)),
                            "mean_members": float(np.mean(members))})
    print(bu.table(summary, list(summary[0]), title="across searches"))
    bu.write_json(args.json, {"benchmark": "ensemble_guard", "machine": bu.machine(), "rows": rows,
                              "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
