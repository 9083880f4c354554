"""Random-kill chaos (issue 13): a search on the demo data whose driver is killed (SIGKILL) at K
seeded random moments and resumed with `--resume` after each, while trial workers are killed at
random moments too; then every trial and the study are checked, and the outcome compared with the
same search run once without kills.

    python benchmarks/chaos.py [--kills 10] [--worker_kills 4] [--num_samples 8] [--quick] [--json OUT]
    python benchmarks/chaos.py --while_waiting [--kills 5] [--num_samples 8] [--json OUT]

`--while_waiting` kills the driver only while a trial waits at an ASHA rung (read from the study,
as a restarted driver reads it), `kills` times, each after the resumed search has paused a trial
again; then the same checks.

A kill moment is drawn uniformly over what is left of the search (a start, then the uninterrupted
search's trial time times the share of trials not yet ended), counted from the driver's start: it
can land while Python imports, while Ray starts, while the folder and the study
are created, between evaluations, during a checkpoint's save or while the tables are written.
A trial worker's kill moment is drawn over the first half of the trials' time left, counted from
when the run's first trial worker appears (a short search spends most of its time starting).
What is checked (`verify`, also used by tests/test_chaos.py):

- every planned trial ended exactly once: trials.csv holds trials 1..N, each with one Ray id,
  finished, stopped early or failed; nothing lost, nothing twice;
- the study holds exactly N trials, none RUNNING or WAITING; each names its Ray trial and agrees
  with trials.csv on the state (finished: COMPLETE, stopped early: PRUNED, failed: FAIL), on every
  evaluation's value (its intermediate values) and on its value;
- the exported best model loads and predicts;
- against the uninterrupted search (same seed): each trial's parameters, and every evaluation both
  ran, are the same (seeded training, exact resume); ASHA's cuts, and so the trials' lengths and the
  winner, can differ, because ASHA compares a trial with those that reached its rung before it and
  the order of arrival changes with every restart.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import _benchutil as bu
from _searchutil import trial_reports

METRIC = "val/f1_macro"
QUICK = dict(kills=2, worker_kills=2, num_samples=3, max_steps=10)
FULL = dict(kills=10, worker_kills=4, num_samples=16, max_steps=60)


def chaos_space(workdir: Path, num_samples: int, max_steps: int, max_failures: int) -> Path:
    """The demo space on the first 600 demo pairs, `max_steps` updates per trial with an evaluation
    every 5, every trial drawn by TPE's seeded random start (so that its parameters do not depend on
    the order in which trials end), ASHA as shipped."""
    spec = yaml.safe_load((bu.REPO / "search_spaces" / "demo.yaml").read_text(encoding="utf-8"))
    spec["search"].update(num_samples=num_samples, n_startup_trials=num_samples, max_evals=max_steps // 5,
                          grace_period=1, reduction_factor=2, cpus_per_trial=1, max_failures=max_failures)
    spec["params"].update(train_file=str(bu.REPO / "afqmc" / "demo_data" / "train.jsonl"), max_train_samples=600,
                          per_device_batch_size=32, max_steps=max_steps, eval_steps=5, eval_batch_size=256)
    path = workdir / "chaos_space.yaml"
    path.write_text("# demo space for the chaos runs\n" + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _session_processes(sid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _trial_workers(sid: int) -> list:
    """The processes running a trial (Ray's actor for the trainable) in the driver's session."""
    return [p for p in _session_processes(sid) if (p.info["cmdline"] or [""])[0].startswith("ray::ImplicitFunc")]


def run_driver(args: list[str], log: Path, kill_at: float | None, worker_kill_at: float | None,
               rng: random.Random, kill_when=None) -> dict[str, Any]:
    """`python tune/search.py ARGS` in its own session; SIGKILL the driver `kill_at` s after its start
    (or once `kill_when()` is true), then whatever is left of its session; and one trial worker
    `worker_kill_at` s after the first trial worker of this run appeared (counted from there, not
    from the start: the start's imports, data and Ray take most of a short search's time)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    offset = log.stat().st_size if log.is_file() else 0
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n=== {' '.join(args)} (kill at {kill_at}, worker kill at {worker_kill_at})\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "tune/search.py", *args], cwd=bu.REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        killed = worker_killed = False
        seen: list[float] = []  # when this run's trial workers were seen running: first and last
        while proc.poll() is None:
            now = time.perf_counter() - started
            workers = _trial_workers(proc.pid)
            if workers:
                seen[1:] = [now] if seen else [now, now]
            if worker_kill_at is not None and not worker_killed:
                # (none running at this moment: try again in a moment)
                if workers and now - seen[0] >= worker_kill_at:
                    victim = rng.choice(workers)
                    os.kill(victim.pid, signal.SIGKILL)
                    worker_killed = True
                    out.write(f"=== chaos: killed trial worker {victim.pid} at {now:.1f} s\n")
            if (kill_at is not None and now >= kill_at) or (kill_when is not None and kill_when()):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                time.sleep(2)  # Ray's own processes notice that their driver is gone
                for p in _session_processes(proc.pid):
                    try:
                        p.kill()
                    except Exception:  # noqa: BLE001 -- already gone
                        pass
                out.write(f"=== chaos: killed the driver at {now:.1f} s\n")
                break
            time.sleep(0.1)
    with open(log, encoding="utf-8") as fh:
        fh.seek(offset)
        printed = fh.read()
    return {"rc": proc.wait(), "wall_s": time.perf_counter() - started, "killed": killed,
            "worker_killed": worker_killed, "stage": _stage(printed) if killed else "ended",
            "trials_s": seen[1] - seen[0] if seen else 0.0}


def _stage(printed: str) -> str:
    """Where the driver was when it was killed, from what it had printed."""
    if "trials done (" in printed:
        return "writing the tables"
    if re.search(r"^\[\d+:\d+ ", printed, flags=re.M):
        return "trials running"
    if "ray: " in printed:
        return "Ray up, no trial report yet"
    return "starting (imports, data, Ray)"


def _search_seconds(log: Path) -> float:
    """How long the trials ran, by the live view's clock (`[mm:ss ...`) on its last line."""
    found = re.findall(r"^\[(\d+):(\d+) ", log.read_text(encoding="utf-8"), flags=re.M)
    return int(found[-1][0]) * 60 + int(found[-1][1]) if found else 0.0


def _trials_done(log: Path) -> float:
    """The share of trials ended, from the last progress line of the search's live output."""
    found = re.findall(r"\[[\d:]+ (\d+)/(\d+) trials", log.read_text(encoding="utf-8")) if log.is_file() else []
    return int(found[-1][0]) / int(found[-1][1]) if found else 0.0


def chaos_search(workdir: Path, name: str, space: Path, kills: int, worker_kills: int, horizon_s: float,
                 startup_s: float, trials_s: float, seed: int) -> dict[str, Any]:
    """Start the search, kill its driver `kills` times at seeded random moments over what is left of
    it (`horizon_s`: the uninterrupted search's wall time, `startup_s` of it before the trials ran),
    resuming after each; kill `worker_kills` trial workers (one a run, at a random moment of the
    trials' time left; `trials_s`: how long the uninterrupted search's trial workers ran); then
    resume it to the end."""
    rng = random.Random(seed)
    exp_dir, log = workdir / "results" / name, workdir / f"{name}.log"
    first = ["--space", str(space), "--name", name, "--results_dir", str(workdir / "results")]
    segments: list[dict[str, Any]] = []
    while True:
        done_kills = sum(s["killed"] for s in segments)
        # Over what is left of the search: a restart's start (imports, data, Ray), then the trials not
        # yet ended, at the uninterrupted search's pace.
        left = startup_s + (horizon_s - startup_s) * max(0.1, 1 - _trials_done(log))
        kill_at = rng.uniform(0, left) if done_kills < kills else None
        # A worker kill in every run until there have been `worker_kills` (one that finds no trial
        # running before its driver is killed moves on to the next run), at a moment in the first
        # half of what is left of the trials' time, counted from when the run's first trial worker
        # is seen.
        pending = worker_kills - sum(s["worker_killed"] for s in segments)
        worker_at = rng.uniform(0.0, 0.5) * trials_s * max(0.1, 1 - _trials_done(log)) if pending > 0 else None
        args = ["--resume", str(exp_dir)] if exp_dir.is_dir() else first
        seg = run_driver(args, log, kill_at, worker_at, rng)
        segments.append({**seg, "args": args[0], "kill_at": kill_at, "worker_kill_at": worker_at})
        if not seg["killed"]:  # it ended on its own (before its kill moment, if it had one)
            break
    return {"exp_dir": str(exp_dir), "log": str(log), "segments": segments,
            "driver_kills": sum(s["killed"] for s in segments),
            "worker_kills_done": sum(s["worker_killed"] for s in segments),
            "wall_s": sum(s["wall_s"] for s in segments), "rc": segments[-1]["rc"]}


# --- what a search left: checked -----------------------------------------------------------------


def _evaluations(trial_dir: Path) -> dict[int, float]:
    """Each evaluation's value of the metric, from the trial's reports; one that was reported twice
    (redone from the checkpoint before it after a kill) must have given the same value both times."""
    out: dict[int, float] = {}
    for row in trial_reports(trial_dir):
        if "evals" in row and METRIC in row:
            e, v = int(row["evals"]), float(row[METRIC])
            if e in out and abs(out[e] - v) > 1e-9:
                raise AssertionError(f"{trial_dir.name}: evaluation {e} gave {out[e]} and then {v}")
            out[e] = v
    return out


def verify(exp_dir: Path, num_samples: int) -> dict[str, Any]:
    """Every check of the module docstring but the comparison; `problems` lists what failed."""
    import csv

    import optuna

    from tune.folder import DONE_STATES, RAY_TRIAL_ID, TrialState

    problems: list[str] = []
    with open(exp_dir / "trials.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    numbers = sorted(int(r["trial"]) for r in rows)
    lost = sorted(set(range(num_samples)) - set(numbers))  # the study's numbers: 0 is the baseline
    duplicated = len(numbers) - len(set(numbers)) + len(rows) - len({r["trial_id"] for r in rows})
    if lost or duplicated or len(rows) != num_samples:
        problems.append(f"trials.csv: {len(rows)} rows, lost {lost}, {duplicated} duplicated")
    problems += [f"trial {r['trial']} is {r['state']}" for r in rows if r["state"] not in DONE_STATES]

    study = optuna.load_study(study_name=exp_dir.name, storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    unfinished = [t.number for t in trials if not t.state.is_finished()]
    if len(trials) != num_samples or unfinished:
        problems.append(f"study: {len(trials)} trials, unfinished {unfinished}")
    by_ray = {t.user_attrs.get(RAY_TRIAL_ID): t for t in trials}
    expected = {TrialState.FINISHED: "COMPLETE", TrialState.STOPPED: "PRUNED", TrialState.FAILED: "FAIL"}
    curves = {}
    for r in rows:
        t, trial_dir = by_ray.get(r["trial_id"]), exp_dir / f"trial_{r['trial_id']}"
        # The study's parameters (Ray's params.json is written when a trial starts: one whose worker
        # died before it started has none).
        curves[int(r["trial"])] = {"params": t.params if t is not None else None,
                                   "evals": _evaluations(trial_dir), "state": r["state"]}
        problems += _agrees(r, t, curves[int(r["trial"])]["evals"], expected)
    unmatched = set(by_ray) - {r["trial_id"] for r in rows}
    if unmatched:
        problems.append(f"study trials of no Ray trial in trials.csv: {sorted(map(str, unmatched))}")
    problems += _best_model_predicts(exp_dir)
    return {"problems": problems, "lost": len(lost), "duplicated": duplicated, "trials": curves,
            "study_trials": len(trials), "states": {r["trial"]: r["state"] for r in rows}}


def _agrees(row: dict[str, str], t, evals: dict[int, float], expected: dict[str, str]) -> list[str]:
    """A trial's row of trials.csv against its trial in the study."""
    name = f"trial {row['trial']} ({row['trial_id']})"
    if t is None:
        return [f"{name}: not in the study"]
    if t.state.name != expected.get(row["state"]):
        return [f"{name}: {row['state']} in trials.csv, {t.state.name} in the study"]
    out = []
    if t.state.name != "FAIL":
        if {int(k): v for k, v in t.intermediate_values.items()} != evals:
            out.append(f"{name}: study's intermediate values {t.intermediate_values} != reports {evals}")
        want = max(evals.values()) if t.state.name == "COMPLETE" else evals[max(evals)]
        if t.value is None or abs(t.value - want) > 1e-9:
            out.append(f"{name}: study's value {t.value} != {want} from its reports")
    return out


def _best_model_predicts(exp_dir: Path) -> list[str]:
    from transformers.utils import logging as hf_logging

    from afqmc.data import load_pairs
    from afqmc.predict import load_saved_model, predict_probs

    hf_logging.disable_progress_bar()
    try:
        model, tokenizer, cfg = load_saved_model(exp_dir / "best_model")
        pairs = load_pairs(bu.REPO / "afqmc" / "demo_data" / "test.jsonl", require_labels=False)
        probs = predict_probs(model, tokenizer, pairs, cfg.max_length, 64)
    except Exception as exc:  # noqa: BLE001 -- any failure is the finding
        return [f"best_model: {type(exc).__name__}: {exc}"]
    return [] if len(probs) == len(pairs) and all(0 <= p <= 1 for p in probs) else ["best_model: bad predictions"]


def compare(chaos: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Trial by trial (by number): the same parameters, the same value at every evaluation both ran."""
    params_differ, values_differ, states_differ, common = [], [], [], 0
    for number, ref in reference["trials"].items():
        got = chaos["trials"].get(number)
        if got is None:
            continue
        if got["params"] != ref["params"]:
            params_differ.append(number)
        both = set(got["evals"]) & set(ref["evals"])
        common += len(both)
        values_differ += [(number, e) for e in sorted(both) if abs(got["evals"][e] - ref["evals"][e]) > 1e-9]
        if got["state"] != ref["state"]:
            states_differ.append(number)
    return {"params_differ": params_differ, "values_differ": values_differ, "evaluations_compared": common,
            "states_differ": states_differ}


# --- the benchmark ---------------------------------------------------------------------------------


def run(workdir: Path, kills: int, worker_kills: int, num_samples: int, max_steps: int, seed: int = 0) -> dict[str, Any]:
    """The uninterrupted search, then the same search under chaos; both verified, then compared."""
    workdir.mkdir(parents=True, exist_ok=True)
    space = chaos_space(workdir, num_samples, max_steps, max_failures=worker_kills + 2)
    ref_log = workdir / "reference.log"
    ref = run_driver(["--space", str(space), "--name", "reference", "--results_dir", str(workdir / "results")],
                     ref_log, None, None, random.Random(seed))
    if ref["rc"] != 0:
        raise RuntimeError(f"the uninterrupted search failed (exit {ref['rc']}): see {ref_log}")
    reference = verify(workdir / "results" / "reference", num_samples)
    startup = max(0.0, ref["wall_s"] - _search_seconds(ref_log))  # Python, data, Ray; the tables at the end
    chaos = chaos_search(workdir, "chaos", space, kills, worker_kills, horizon_s=ref["wall_s"], startup_s=startup,
                         trials_s=ref["trials_s"], seed=seed)
    checked = verify(Path(chaos["exp_dir"]), num_samples) if chaos["rc"] == 0 else \
        {"problems": [f"the last resume exited {chaos['rc']}: see {chaos['log']}"], "trials": {}, "lost": None,
         "duplicated": None}
    return {"num_samples": num_samples, "max_steps": max_steps, "seed": seed, "reference_wall_s": ref["wall_s"],
            "reference_startup_s": startup,
            "reference_problems": reference["problems"], **chaos, "problems": checked["problems"],
            "lost": checked["lost"], "duplicated": checked["duplicated"],
            "states": checked.get("states"), "reference_states": reference["states"],
            "against_reference": compare(checked, reference), "wall_ratio": chaos["wall_s"] / ref["wall_s"]}


def study_rungs(exp_dir: Path, settings):
    """ASHA's rungs as the study holds them (what a restarted driver rebuilds), or None before the study."""
    import optuna
    import sqlalchemy

    from tune.folder import ASHA_ATTR, RAY_TRIAL_ID
    from tune.scheduler import Rungs, milestones

    try:
        study = optuna.load_study(study_name=exp_dir.name, storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError):
        return None
    records = {t.user_attrs[RAY_TRIAL_ID]: (t.user_attrs.get(ASHA_ATTR) or {}, t.state.name)
               for t in study.get_trials(deepcopy=False) if RAY_TRIAL_ID in t.user_attrs}
    return Rungs.from_records(milestones(settings.grace_period, settings.reduction_factor, settings.max_evals),
                              settings.reduction_factor, records)


def waiting_trials(exp_dir: Path, settings) -> set[str]:
    """The trials (Ray ids) the study holds as waiting at a rung now: RUNNING there, at a rung they did not go on from."""
    rungs = study_rungs(exp_dir, settings)
    return set() if rungs is None else {t for t in rungs.trials() if rungs.waiting_at(t) is not None
                                        and t not in rungs.failed | rungs.ended}


def while_waiting(workdir: Path, kills: int, num_samples: int, max_steps: int, seed: int = 0) -> dict[str, Any]:
    """The search killed `kills` times, each time once a trial has waited at a rung for a second; resumed
    after each; then verified."""
    from tune.space import load_space

    workdir.mkdir(parents=True, exist_ok=True)
    space = chaos_space(workdir, num_samples, max_steps, max_failures=2)
    settings = load_space(space).settings
    exp_dir, log = workdir / "results" / "waiting", workdir / "waiting.log"
    segments, since, offset = [], [], [0]

    def a_trial_waits() -> bool:
        """A trial waits at a rung in the study, and this run's live view has said so (Ray runs, with a
        trial paused at its rung: not the record of the run before, read while this one imports)."""
        with open(log, encoding="utf-8") as fh:
            fh.seek(offset[0])
            said = "waits at eval" in fh.read()
        if said and waiting_trials(exp_dir, settings):
            since.append(since[0] if since else time.time())
        return bool(since) and time.time() - since[0] > 1.0

    args = ["--space", str(space), "--name", "waiting", "--results_dir", str(workdir / "results")]
    for k in range(kills + 1):
        since.clear()
        offset[0] = log.stat().st_size if log.is_file() else 0
        waited = None
        seg = run_driver(args, log, None, None, random.Random(seed + k), kill_when=a_trial_waits if k < kills else None)
        if seg["killed"]:
            waited = sorted(waiting_trials(exp_dir, settings))
        segments.append({**seg, "waiting_at_kill": waited})
        args = ["--resume", str(exp_dir)]
        if not seg["killed"]:
            break
    checked = verify(exp_dir, num_samples) if segments[-1]["rc"] == 0 else \
        {"problems": [f"the last run exited {segments[-1]['rc']}: see {log}"], "lost": None, "duplicated": None}
    return {"kills_while_waiting": sum(bool(s["waiting_at_kill"]) for s in segments), "segments": segments,
            "problems": checked["problems"], "lost": checked["lost"], "duplicated": checked["duplicated"],
            "wall_s": sum(s["wall_s"] for s in segments), "states": checked.get("states")}


def report(res: dict[str, Any], kills: int) -> None:
    print(bu.table([{"run": i + 1, "started with": s["args"], "killed while": s["stage"], "kill at s": f"{s['kill_at']:.1f}" if s["kill_at"] else "-",
                     "worker kill at s": f"{s['worker_kill_at']:.1f}" if s["worker_kill_at"] else "-",
                     "driver killed": s["killed"], "worker killed": s["worker_killed"], "wall s": f"{s['wall_s']:.1f}",
                     "exit": s["rc"]} for i, s in enumerate(res["segments"])],
                   ["run", "started with", "killed while", "kill at s", "worker kill at s", "driver killed", "worker killed", "wall s",
                    "exit"], title="runs of the chaos search"))
    against = res["against_reference"]
    print(f"\ndriver kills {res['driver_kills']} of {kills}, worker kills {res['worker_kills_done']}; trials lost "
          f"{res['lost']}, duplicated {res['duplicated']}; problems: {res['problems'] or 'none'}")
    print(f"against the uninterrupted search: {against['evaluations_compared']} evaluations compared, parameters "
          f"differ in trials {against['params_differ'] or 'none'}, values in {against['values_differ'] or 'none'}, "
          f"states (ASHA's cuts) in {against['states_differ'] or 'none'}")
    print(f"wall time: {res['wall_s']:.0f} s with kills against {res['reference_wall_s']:.0f} s without "
          f"({res['wall_ratio']:.2f}x)")
    ok = res["driver_kills"] == kills and res["lost"] == 0 and res["duplicated"] == 0 and not res["problems"]
    print(bu.verdict("kills survived, 0 lost, 0 duplicated, every check", res["driver_kills"], f"{kills} kills", ok))


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    for key, value in FULL.items():
        p.add_argument(f"--{key}", type=int, default=None, help=f"default {value} ({QUICK[key]} with --quick)")
    p.add_argument("--seed", type=int, default=0, help="the kill moments' seed")
    p.add_argument("--while_waiting", action="store_true", help="kill the driver only while a trial waits at a rung")
    args = p.parse_args(argv)
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k] for k in FULL}
    import tempfile

    if args.while_waiting:
        kills, num_samples = args.kills or 5, args.num_samples or 8
        with tempfile.TemporaryDirectory() as tmp:
            res = while_waiting(args.workdir or Path(tmp), kills, num_samples, args.max_steps or 40, args.seed)
        for i, s in enumerate(res["segments"]):
            print(f"run {i + 1}: {'killed' if s['killed'] else 'ended'} after {s['wall_s']:.1f} s; trials waiting at "
                  f"a rung at the kill: {s['waiting_at_kill']}")
        ok = res["kills_while_waiting"] == kills and res["lost"] == 0 and res["duplicated"] == 0 and not res["problems"]
        print(f"kills while a trial waited {res['kills_while_waiting']} of {kills}; trials lost {res['lost']}, "
              f"duplicated {res['duplicated']}; problems: {res['problems'] or 'none'}")
        bu.write_json(args.json, {"machine": bu.machine(), "kills": kills, "num_samples": num_samples, **res})
        return 0 if ok else 1

    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.workdir or Path(tmp), seed=args.seed, **sizes)
    report(res, sizes["kills"])
    bu.write_json(args.json, {"machine": bu.machine(), **sizes, **res})
    return 0 if res["driver_kills"] == sizes["kills"] and not res["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
