"""Warm-starting a new search from earlier ones (`python tune/search.py --warm_start results/OLD ...`).

Two mechanisms, each applied only where it is sound:

- **enqueue**: the earlier searches' best configurations (by their val value, the one that chose
  them; `search.warm_start_top_k` of them, the sources' ranks interleaved) are the new search's
  first trials after its baseline. Each keeps what fits the new space: a parameter the new space
  does not search is dropped, a value outside its new range or choices is skipped (the sampler
  draws that one), and a parameter the earlier search did not search gets the value that search
  ran with (its fixed config), when the new range holds it. Works across tasks: an earlier
  winner is a good first guess on a similar task, and the new search measures it.
- **inform**: the earlier trials, with their values, are added to the new study so that TPE models
  them from the start (Optuna's `add_trials`); only when the task is the same: the same train and
  val pairs (fingerprints), metric and model. Otherwise their values would mislead TPE. They are
  no trials of the new search: it never runs them, and its tables and counts leave them out.

`plan` checks every source (a search folder, not running, with a study; the same label set and
metric direction) before anything starts, and returns what search.json keeps ("warm_start"):
what was reused, from which search, and why the rest was not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afqmc.config import ConfigError
from tune.confirm import trial_value
from tune.folder import INFORMED_BY, RAY_TRIAL_ID, NotASearchError, SearchState, refuse_if_running

MISSING = object()


class WarmStartError(ConfigError):
    """A warm-start source cannot be used; the message names the folder and the reason."""


def task_record(base, settings, info: dict[str, Any]) -> dict[str, Any]:
    """What a search learns on (SearchState.task): compared by `plan` to call two tasks the same."""
    return {"train": info.get("train_fingerprint"), "val": info.get("val_fingerprint"),
            "labels": list(range(len(info.get("train_label_counts") or []))), "metric": settings.metric,
            "direction": "maximize", "model": base.model_name_or_path}


def plan(sources: list[str | Path], space, task: dict[str, Any], top_k: int, cwd: str | Path = ".") -> dict[str, Any]:
    """The warm start of a new search over `space` (tune.space.SearchSpace) on `task` (task_record)
    from the searches in `sources`: {"top_k", "sources": [per source: path, trials, same_task, why],
    "enqueue": [{"params", "from", "value", "notes"}], "inform": [{"params", "state", "value",
    "intermediate", "from"}], "left_out": [{"from", "why"}]}. Raises WarmStartError (nothing started)
    for a source that cannot be used."""
    loaded = [_load_source(Path(cwd) / s if not Path(s).is_absolute() else Path(s), str(s), task)
              for s in sources]
    seen = set()
    for src in loaded:
        if src["dir"] in seen:
            raise WarmStartError(f"{src['name']}: given twice to --warm_start")
        seen.add(src["dir"])
    out: dict[str, Any] = {"top_k": top_k, "sources": [], "enqueue": [], "inform": [], "left_out": []}
    ranked = []
    for src in loaded:
        same, why = _same_task(src["state"].task, task)
        trials = _finished_trials(src["study"])
        out["sources"].append({"path": src["name"], "trials": len(trials), "same_task": same, "why": why,
                               "updates": _updates(src["dir"])})
        rows = []
        for t in trials:
            where = f"{src['name']} trial {t.number}"
            mapped, notes, complete = _fit(t.params, src["base"], space)
            value = trial_value(t)
            if same:
                if complete:
                    out["inform"].append({"params": mapped, "state": t.state.name,
                                          "value": t.value if t.state.name == "COMPLETE" else None,
                                          "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
                                          "from": where})
                else:
                    out["left_out"].append({"from": where, "why": "does not inform TPE: " + "; ".join(notes)})
            if value is not None:
                rows.append((value, t.number, where, mapped, notes))
        rows.sort(key=lambda r: (-r[0], r[1]))
        ranked.append(rows)
    baseline = space.baseline()
    chosen: list[dict[str, Any]] = []
    for rank in range(max((len(r) for r in ranked), default=0)):  # the sources' best first, then their second, ...
        for rows in ranked:
            if rank >= len(rows) or len(chosen) >= top_k:
                continue
            value, _, where, mapped, notes = rows[rank]
            if not mapped:
                out["left_out"].append({"from": where, "why": "not enqueued: nothing of it fits the new space"})
            elif mapped == baseline or any(mapped == c["params"] for c in chosen):
                out["left_out"].append({"from": where, "why": "not enqueued: the same configuration as "
                                        + ("the baseline" if mapped == baseline else "one enqueued before it")})
            else:
                chosen.append({"params": mapped, "from": where, "value": value, "notes": notes})
    out["enqueue"] = chosen
    return out


def describe(warm: dict[str, Any]) -> list[str]:
    """Lines for the terminal, trials.md and compare.py: what a warm start reused and why not the rest."""
    if not warm:
        return []
    lines = []
    for src in warm.get("sources", []):
        informing = src.get("informing", sum(item["from"].startswith(src["path"] + " trial ")
                                             for item in warm.get("inform", [])))
        lines.append(f"warm start from {src['path']} ({src['trials']} finished trials): "
                     + (f"{informing} inform TPE ({src['why']})" if src["same_task"]
                        else f"enqueue only, none informs TPE: {src['why']}"))
    for item in warm.get("enqueue", []):
        lines.append(f"  enqueued {item['from']} (val {item['value']:.4f}, the value that chose it): "
                     + ", ".join(f"{k}={_short(v)}" for k, v in item["params"].items())
                     + ("".join(f"; {n}" for n in item["notes"])))
    if not warm.get("enqueue"):
        lines.append(f"  nothing enqueued (search.warm_start_top_k {warm.get('top_k')})")
    for item in warm.get("left_out", []):
        lines.append(f"  {item['from']}: {item['why']}")
    return lines


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


# --- the pieces --------------------------------------------------------------------------------------


def _load_source(exp_dir: Path, name: str, task: dict[str, Any]) -> dict[str, Any]:
    from tune.results import load_study
    from tune.space import folder_config

    exp_dir = exp_dir.resolve()
    if not exp_dir.is_dir():
        raise WarmStartError(f"--warm_start {name}: no such folder")
    try:
        state = SearchState.load(exp_dir)
    except NotASearchError as exc:
        raise WarmStartError(f"--warm_start {name}: {exc}") from None
    try:
        refuse_if_running(exp_dir)
    except ConfigError as exc:
        raise WarmStartError(f"--warm_start {name}: still running, its trials are not final ({exc})") from None
    try:
        study = load_study(exp_dir)
    except Exception as exc:  # sqlite3/SQLAlchemy/Optuna errors: the file is not a readable study
        raise WarmStartError(f"--warm_start {name}: its optuna.db cannot be read ({type(exc).__name__}: {exc})") \
            from None
    if study is None:
        raise WarmStartError(f"--warm_start {name}: holds no Optuna study (optuna.db), so no trial to start from")
    theirs = state.task
    if theirs.get("labels") and task.get("labels") and theirs["labels"] != task["labels"]:
        raise WarmStartError(f"--warm_start {name}: its task has labels {theirs['labels']}, this one "
                             f"{task['labels']}: its configurations answer another question")
    if theirs.get("direction", "maximize") != task.get("direction", "maximize"):
        raise WarmStartError(f"--warm_start {name}: its metric is to be {theirs.get('direction')}d, this "
                             f"search's {task.get('direction')}d")
    try:
        base = folder_config(exp_dir, state)
    except ConfigError as exc:
        raise WarmStartError(f"--warm_start {name}: its space cannot be read again ({exc})") from None
    return {"dir": exp_dir, "name": name, "state": state, "study": study, "base": base}


def _same_task(theirs: dict[str, Any], ours: dict[str, Any]) -> tuple[bool, str]:
    if not theirs:
        return False, "its search.json has no task record (a search from before warm starts)"
    names = {"train": "train pairs", "val": "val pairs", "metric": "metric", "model": "model"}
    differ = [f"{label} ({theirs.get(k)!r} here {ours.get(k)!r})" if k in ("metric", "model") else label
              for k, label in names.items() if theirs.get(k) != ours.get(k)]
    if differ:
        return False, "another task: other " + ", ".join(differ)
    return True, "the same task: same train and val pairs, metric and model"


def _updates(exp_dir: Path) -> int | None:
    """The optimizer updates an earlier search spent (its summary.json), what a warm start builds on."""
    import json

    path = exp_dir / "summary.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["budget"]["optimizer_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finished_trials(study) -> list:
    """The source's own trials that ended (not the ones it was informed with, not failed ones)."""
    return [t for t in study.get_trials(deepcopy=False)
            if RAY_TRIAL_ID in t.user_attrs and INFORMED_BY not in t.user_attrs
            and t.state.name in ("COMPLETE", "PRUNED")]


def _fit(params: dict[str, Any], source_base, space) -> tuple[dict[str, Any], list[str], bool]:
    """An earlier trial's configuration in the new space: (what fits, notes on the rest, whether every
    searched parameter of the new space got a value)."""
    fitted, notes = {}, []
    dropped = sorted(set(params) - set(space.params))
    for name in dropped:
        fixed = getattr(space.base, name, MISSING)
        notes.append(f"{name} dropped (not searched here; fixed to {fixed!r})" if fixed is not MISSING
                     else f"{name} dropped (not searched here)")
    for name, param in space.params.items():
        if name in params:
            value, how = params[name], "its value"
        else:
            value, how = getattr(source_base, name, MISSING), "the value its search fixed"
            if value is MISSING:
                notes.append(f"{name} not set by it (the sampler draws it)")
                continue
        if _contains(param, value):
            fitted[name] = value
        else:
            notes.append(f"{name}={value!r} skipped ({how}, outside {param.describe()}; the sampler draws it)")
    complete = len(fitted) == len(space.params) and all(
        params[name] == getattr(space.base, name, MISSING) for name in dropped)
    return fitted, notes, complete


def _contains(param, value: Any) -> bool:
    """Whether `value` is one of `param`'s (tune.space.Param) values: its choices or range."""
    if param.type == "choice":  # 1 is not True, although Python says they are equal
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in param.values)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if param.type == "int" and not float(value).is_integer():
        return False
    return param.low <= value <= param.high
