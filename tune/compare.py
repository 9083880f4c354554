"""Compare the trials of one or more searches, rebuild their reports, or check the winner against seed noise.

    python tune/compare.py results/A [results/B ...] [--top N] [--status finished,stopped]
        [--sort COLUMN] [--ascending] [--output comparison.md]
    python tune/compare.py --regenerate results/NAME [...]     # trials.csv/.md, summary.json, plots/ again
    python tune/compare.py --ensemble K results/NAME           # the same, with the ensemble of at most K kept models
    python tune/compare.py --reseed_ensemble K results/NAME    # the ensemble against the single best over K seeds
    python tune/compare.py --reseed K results/NAME [--max_steps N] [--seeds 1,2,3]
    python tune/compare.py --anytime OUT.png results/A [results/B ...]  # their anytime curves on one plot

The comparison is read from each experiment folder (Ray's results and state), not from trials.csv,
so it also shows a search that is still running or was interrupted. It prints a table and writes
comparison.md (by default into the one search's folder, or into the folder that holds them all).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is tune/ itself; make the repository's packages importable instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os

import pandas as pd

import json

from tune.folder import COMPARISON_MD, PRIMARY, SHORT, SUMMARY, SearchState, TrialState
from tune.ensemble import ensemble_lines
from tune.reports import (METRICS, STATES, confirmation_lines, extension_lines, leaderboard_rows, markdown_table, param_names, ranked,
                          regenerate, trials_frame, warm_start_lines)
from tune.results import collect_trials

# Names accepted by --sort besides the CSV columns: the headers of the table, and a few more.
SORT_ALIASES = {**{header.lower(): key for key, header, _ in METRICS},
                "val_f1": PRIMARY, "f1": PRIMARY, "gain": "gain_vs_baseline", "auc": "val/auc", "ap": "val/ap",
                "test": "test/f1_macro", "test_f1": "test/f1_macro", "f1@thr*": "val/f1_macro_at_best_threshold",
                "thr*": "val/best_threshold", "accuracy": "val/accuracy", "min": "wall_time_s",
                "time": "wall_time_s", "wall_time": "wall_time_s"}
STATE_ALIASES = {"finished": TrialState.FINISHED, "completed": TrialState.FINISHED, "complete": TrialState.FINISHED,
                 "stopped": TrialState.STOPPED, "stopped early": TrialState.STOPPED,
                 "stopped_early": TrialState.STOPPED, "asha": TrialState.STOPPED, "failed": TrialState.FAILED,
                 "error": TrialState.FAILED, "unfinished": TrialState.UNFINISHED, "running": TrialState.UNFINISHED,
                 "interrupted": TrialState.UNFINISHED}


def load_searches(experiment_dirs: list[str | Path]) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """The trials of every search as one frame with a `search` column, the parameters, and a line per search.

    Held-out test figures come from each search's summary.json (written at its end, or by
    --regenerate); nothing is scored here."""
    frames, params, info = [], [], []
    names = _unique_names([Path(d) for d in experiment_dirs])
    for exp, name in zip(experiment_dirs, names):
        exp = Path(exp).resolve()
        state = SearchState.load(exp)
        trials = collect_trials(exp)
        summary_file = exp / SUMMARY
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
        test = summary.get("test")
        frame = trials_frame(trials, state, test)
        frame.insert(0, "search", name)
        frames.append(frame)
        params += [p for p in param_names(trials, state) if p not in params]
        own = frame["confirm_of"].isna() if "confirm_of" in frame else True
        counts = {s: int(((frame["state"] == s) & own).sum()) for s in STATES}
        base = frame[frame["baseline"] == 1]
        metric = state.metric
        stage = int(frame["confirm_of"].notna().sum()) if "confirm_of" in frame else 0
        info.append({"search": name, "path": str(exp), "trials": len(frame) - stage, "stage_runs": stage,
                     "metric": metric,
                     "num_samples": state.num_samples, "counts": counts,
                     "best": frame[metric].max() if frame[metric].notna().any() else None,
                     "baseline": base[metric].iloc[0] if len(base) else None, "test": test,
                     "ensemble": summary.get("ensemble"), "extensions": summary.get("extensions") or [],
                     "warm_start": summary.get("warm_start"), "confirmation": summary.get("confirmation")})
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, params, info


def select(frame: pd.DataFrame, sort: str = PRIMARY, ascending: bool = False, top: int | None = None,
           states: list[str] | None = None) -> pd.DataFrame:
    if states:
        frame = frame[frame["state"].isin(states)]
    frame = ranked(frame, sort, ascending)
    return frame.head(top) if top else frame


def resolve_column(name: str, frame: pd.DataFrame) -> str:
    """A CSV column (val/accuracy, learning_rate) or a short header (acc, lr, w1/w0)."""
    if name in frame.columns:
        return name
    key = name.lower()
    if key in SORT_ALIASES:
        return SORT_ALIASES[key]
    for field, short in SHORT.items():
        if key == short.lower() and field in frame.columns:
            return field
    choices = [c for c in frame.columns if c not in ("path", "checkpoint", "error", "reason", "trial_id")]
    raise ValueError(f"unknown column {name!r} for --sort; one of: {', '.join(choices)} "
                     f"(or {', '.join(sorted(SORT_ALIASES))})")


def resolve_states(text: str) -> list[str]:
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in STATE_ALIASES:
            raise ValueError(f"unknown status {part!r} for --status; one of: finished, stopped, failed, unfinished")
        out.append(STATE_ALIASES[part])
    return out


def terminal_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    left = {"search", "trial", "state"}
    lines = ["  ".join(h.ljust(w) if h in left else h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) if h in left else c.rjust(w) for c, h, w in zip(r, headers, widths)) for r in rows]
    return "\n".join(lines)


def describe_searches(info: list[dict]) -> list[str]:
    lines = []
    for s in info:
        counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items() if n)
        best = f"best {s['metric']} {s['best']:.4f}" if s["best"] is not None else "no result yet"
        base = f", baseline {s['baseline']:.4f}" if s["baseline"] is not None and not pd.isna(s["baseline"]) else ""
        models = (s.get("test") or {}).get("models") or {}
        tested = [f"{role} (trial {m['trial']}) {m['metrics']['f1_macro']:.4f}" for role, m in models.items() if m]
        test = f"; held-out test F1-macro: {', '.join(tested)}" if tested else "; no held-out test score"
        runs = f" and {s['stage_runs']} confirmation runs" if s.get("stage_runs") else ""
        lines.append(f"{s['search']}: {s['trials']} of {s['num_samples']} trials{runs} ({counts or 'none yet'}); {best}{base}"
                     f" (val: optimistic){test} ({s['path']})")
        lines += [f"  {line}" for line in confirmation_lines(s.get("confirmation"), s["metric"])]
        lines += [f"  {line}" for line in ensemble_lines(s.get("ensemble"))]
        lines += [f"  {line}" for line in reuse_lines(s.get("extensions"), s.get("warm_start"), s["metric"])]
    return lines


def reuse_lines(extensions: list[dict] | None, warm: dict | None, metric: str) -> list[str]:
    """What a search took from earlier work: its extensions, and its warm start's sources."""
    return extension_lines(extensions or [], metric) + [line.strip() for line in warm_start_lines(warm)]


def reuse_label(summary: dict) -> str:
    """A short tag for a search that was extended or warm-started (the anytime plot's legend)."""
    tags = [f"extended {e['from']}->{e['to']}" for e in summary.get("extensions") or []]
    warm = summary.get("warm_start") or {}
    if warm.get("sources"):
        spent = sum(src.get("updates") or 0 for src in warm["sources"])
        tags.append(f"warm start from {', '.join(Path(src['path']).name for src in warm['sources'])}"
                    + (f": +{spent:,} updates before" if spent else ""))
    return f" ({'; '.join(tags)})" if tags else ""


def compare(experiment_dirs: list[str], sort: str | None = None, ascending: bool = False, top: int | None = None,
            status: str | None = None, output: str | None = None, print_fn=print) -> Path:
    frame, params, info = load_searches(experiment_dirs)
    if frame.empty:
        raise ValueError("no trials in these searches yet")
    metrics = {s["metric"] for s in info}
    metric = metrics.pop() if len(metrics) == 1 else PRIMARY  # searches that rank by different metrics: F1
    column = resolve_column(sort or metric, frame)
    states = resolve_states(status) if status else None
    shown = select(frame, column, ascending, top, states)
    headers, rows = leaderboard_rows(shown, params, search="", metric=metric)
    order = f"sorted by {column} ({'ascending' if ascending else 'descending'})"
    what = (f"{len(shown)} of {len(frame)} trials" + (f" with status {', '.join(states)}" if states else "")
            + f", {order}; gain is over each search's own baseline")
    for line in describe_searches(info):
        print_fn(line)
    print_fn(f"\n{what}:")
    print_fn(terminal_table(headers, rows))

    out = Path(output) if output else _default_output([Path(d) for d in experiment_dirs])
    md = ["# Comparison of searches", ""]
    md += [f"- {line}" for line in describe_searches(info)]
    md += ["", f"{what}. Val figures chose the trials and their thresholds (optimistic); test F1 is held out "
               "(the best and the baseline trial of each search). val F1: at the trial's threshold (cross-fitted "
               "when tuned).", ""]
    md.append(markdown_table(headers, rows, right={i for i, h in enumerate(headers)
                                                   if h not in ("search", "trial", "state")}))
    out.write_text("\n".join(md), encoding="utf-8")
    print_fn(f"\nwritten to {_rel(out)}")
    return out


def anytime_plot(experiment_dirs: list[str | Path], output: str | Path, print_fn=print) -> Path:
    """The anytime curves of several searches (summary.json's "anytime", tune/anytime.py) on one plot;
    reads only each summary.json. A line per search: when it reached its best, of what it used."""
    from tune.anytime import reach
    from tune.figures import anytime

    curves = {}
    for exp, name in zip(experiment_dirs, _unique_names([Path(d) for d in experiment_dirs])):
        path = Path(exp) / SUMMARY
        summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        curve = summary.get("anytime")
        if not curve or not curve.get("best"):
            raise ValueError(f"{path}: no anytime curve (a search without a kept model, or reports from before "
                             f"it: python tune/compare.py --regenerate {exp})")
        curves[name + reuse_label(summary)] = curve
        first = reach(curve, curve["best"][-1])
        print_fn(f"{name}: best {curve['metric']} {curve['best'][-1]:.4f} (trial {curve['trial'][-1]}) reached after "
                 f"{first['updates']} of its {curve['updates'][-1]} updates, {first['wall_s']:.0f} of "
                 f"{curve['wall_s'][-1]:.0f} s{reuse_label(summary)}")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    anytime(curves, out, title=f"anytime: {', '.join(curves)}")
    print_fn(f"written to {_rel(out)}")
    return out


def _default_output(dirs: list[Path]) -> Path:
    if len(dirs) == 1:
        return dirs[0] / COMPARISON_MD
    return Path(os.path.commonpath([str(d.resolve()) for d in dirs])) / COMPARISON_MD


def _unique_names(dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _reseed(args, parser) -> None:
    """--reseed K (the best and the baseline config) or --reseed_ensemble K (the ensemble's members
    and the single best), on K seeds."""
    from tune.reseed import reseed, reseed_ensemble

    k = args.reseed if args.reseed is not None else args.reseed_ensemble
    if len(args.experiments) != 1:
        parser.error("--reseed and --reseed_ensemble take one search folder")
    if k < 2 and not args.seeds:
        parser.error("--reseed and --reseed_ensemble need K >= 2 (a standard deviation needs two runs)")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    if args.reseed is not None:
        reseed(args.experiments[0], k, seeds=seeds, max_steps=args.max_steps, against=args.against)
    else:
        reseed_ensemble(args.experiments[0], k, seeds=seeds, max_steps=args.max_steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare trials across searches (results/NAME folders), rebuild their tables and plots "
                    "(--regenerate), or retrain the best and the baseline config with K seeds (--reseed K).")
    parser.add_argument("experiments", nargs="+", metavar="results/NAME")
    parser.add_argument("--top", type=int, help="keep the first N trials after sorting")
    parser.add_argument("--status", help="keep trials with these states, comma-separated: finished, stopped "
                                         "(early, by ASHA), failed, unfinished")
    parser.add_argument("--sort", help="column to sort by (default: the searches' ranking metric, search.metric): any "
                                       "column of trials.csv or a header of the table (auc, acc, lr, gain, test, min ...)")
    parser.add_argument("--ascending", action="store_true", help="sort ascending (default: descending)")
    parser.add_argument("--output", help="the Markdown file (default: comparison.md in the search's folder, or in "
                                         "the folder holding all of them)")
    parser.add_argument("--regenerate", action="store_true",
                        help="rebuild trials.csv, trials.md, summary.json, best_config.yaml and plots/ of each "
                             "search from its folder alone (nothing is trained)")
    parser.add_argument("--no_plots", action="store_true", help="with --regenerate: tables only")
    parser.add_argument("--anytime", metavar="OUT.png",
                        help="draw the searches' anytime curves (the best val value so far against the updates and "
                             "the wall time used, from each summary.json) on one plot, instead of the table")
    parser.add_argument("--reseed_ensemble", type=int, metavar="K",
                        help="retrain the ensemble's member configs and the single best's with K new seeds: held-out "
                             "test F1 of the ensemble (threshold tuned on val per seed) against the single best's")
    parser.add_argument("--ensemble", type=int, metavar="K",
                        help="rebuild the reports with the ensemble of at most K kept models chosen on val (ensemble/; "
                             "0: none; default: the space's search.ensemble_size, 5)")
    parser.add_argument("--reseed", type=int, metavar="K", help="retrain the best and the baseline config with K "
                                                                "seeds; report mean and std of val F1-macro")
    parser.add_argument("--seeds", help="with --reseed: the seeds, comma-separated (default: K seeds after the "
                                        "search's own)")
    parser.add_argument("--max_steps", type=int, help="with --reseed: optimizer updates per run (default: the "
                                                      "search's budget per trial)")
    parser.add_argument("--against", metavar="FILE", help="with --reseed: a YAML file of TrainConfig fields that replace "
                                                          "the baseline trial's, to compare the winner with another "
                                                          "starting point (the same data)")
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error("--top must be >= 1")
    try:
        if args.reseed is not None or args.reseed_ensemble is not None:
            _reseed(args, parser)
            return 0
        if args.anytime:
            anytime_plot(args.experiments, args.anytime)
            return 0
        if args.regenerate or args.ensemble is not None:
            regenerate(args.experiments, plots=not args.no_plots, ensemble_size=args.ensemble)
            return 0
        compare(args.experiments, sort=args.sort, ascending=args.ascending, top=args.top, status=args.status,
                output=args.output)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
