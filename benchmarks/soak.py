"""Soak: a long search on the demo data (many trials of a tiny budget), with the driver's memory, its
open files, its processes, Ray's object store and placement groups and the results folder's size
sampled over time; at the end, whether anything was left behind.

    python benchmarks/soak.py [--num_samples 200] [--quick] [--json OUT] [--png PATH] [--workdir DIR]

Goals (issue 13): the driver's memory grows by less than 100 MB over 200 trials; the results folder
is bounded (only the kept checkpoints grow it: one per trial, by design); no process of the search
and no placement group is left at the end.

The search is the product's: `tune.search.main` (what `python tune/search.py` runs) in its own
process and session, started as
    python -c DRIVER --space WORK/space.yaml --name soak --results_dir WORK/results --num_samples N
where DRIVER imports tune.search, wraps `ray.shutdown` so that Ray's placement groups, live actors
and object store are noted just before the search stops its Ray (to WORK/ray_at_end.json), and
calls `main`. The space is search_spaces/demo.yaml with a tiny budget (`soak_space`): the first 200
demo pairs, 4 updates, an evaluation every 2, ASHA cutting after the first.

Every `--interval` seconds (default 2) this process samples, from outside:
  driver     RSS, open file descriptors, CPU seconds (psutil on the driver's pid);
  processes  the driver and all its descendants (Ray's GCS, raylet, agents, trial workers);
  disk       the results folder's size on disk (allocated blocks), and Ray's session folder;
  Ray        object store bytes in use, objects, and live placement groups, parsed from the
             raylet's own dump (logs/debug_state.txt in the session folder, rewritten every 2 s
             here: RAY_debug_dump_period_milliseconds). Ray's GCS is not asked from outside: the
             local Ray uses token authentication, and this benchmark does not read the token;
  trials     trials done, from the driver's live lines ("[mm:ss D/N trials ...]").
After the driver exits: its exit code; every process of its session (or seen as its descendant)
still alive after up to 20 s is a leaked one (noted, then killed); the results folder is accounted
for: each trial's kept checkpoint(s), best_model/, and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import _benchutil as bu  # noqa: E402  (sets up sys.path and PYTHONPATH for afqmc and tune)

DEMO_SPACE = bu.REPO / "search_spaces" / "demo.yaml"
DEMO_TRAIN = bu.REPO / "afqmc" / "demo_data" / "train.jsonl"
FULL_TRIALS, QUICK_TRIALS = 200, 12
DEFAULT_PNG = bu.REPO / "benchmarks" / "results" / "soak.png"  # the full run's curves, linked from its README
MB = 2**20
MEMORY_GOAL_MB = 100.0  # driver RSS growth over GOAL_TRIALS trials
GOAL_TRIALS = 200
# Disk: besides its kept checkpoint, a trial leaves ~85 KB (result.json, progress.csv, params, its
# TensorBoard file and log, its share of Ray's experiment state, which lists every trial). 256 KB
# leaves room for that, and a checkpoint that was not deleted (>= 1 MB here) breaks it.
DISK_SLACK_PER_TRIAL = 256 * 1024
# No ensemble at the end (ensemble_size 0): the soak measures the driver over many trials; the
# ensemble's scoring of every kept model is tested with the searches of tests/test_search.py.
SEARCH = dict(n_startup_trials=4, max_evals=2, grace_period=1, reduction_factor=2, cpus_per_trial=1, gpus_per_trial=0,
              ensemble_size=0)
PARAMS = dict(max_train_samples=200, per_device_batch_size=32, max_steps=4, eval_steps=2, eval_batch_size=256,
              tiny_hidden_size=64, tiny_num_layers=1)

# The driver: the product's search, plus a note of Ray's state just before the search stops Ray.
DRIVER = r"""
import json, os, sys, time
from collections import Counter
import tune.search as search
search.ray_environment(None)  # Ray's environment switches, as search.main sets them, before Ray is imported
import ray

real_shutdown = ray.shutdown

def note_then_shutdown(*args, **kwargs):
    if ray.is_initialized() and not os.path.exists(os.environ["SOAK_RAY_AT_END"]):
        from ray._private.state import actors
        from ray.util import placement_group_table
        import psutil
        me = psutil.Process()
        total, free = ray.cluster_resources(), ray.available_resources()
        state = {"time": time.time(), "rss": me.memory_info().rss,
                 "fds": me.num_fds() - 1,  # less the one that lists them
                 "placement_groups": dict(Counter(v["state"] for v in placement_group_table().values())),
                 "actors": dict(Counter(a["State"] for a in actors().values())),
                 "object_store_used_bytes": total.get("object_store_memory", 0) - free.get("object_store_memory", 0)}
        with open(os.environ["SOAK_RAY_AT_END"], "w") as fh:
            json.dump(state, fh)
    return real_shutdown(*args, **kwargs)

ray.shutdown = note_then_shutdown
sys.exit(search.main(sys.argv[1:]))
"""

PROGRESS = re.compile(r"^\[\d+:\d\d (\d+)/(\d+) trials")
SEARCH_OVER = ("top ", "no trial reported")  # the leaderboard follows the search (and Ray's stop)


def soak_space(path: Path, num_samples: int) -> Path:
    """search_spaces/demo.yaml with the soak's tiny budget: 2 evaluations of 2 updates per trial."""
    spec = yaml.safe_load(DEMO_SPACE.read_text(encoding="utf-8"))
    spec["search"].update(num_samples=num_samples, **SEARCH)
    spec["params"].update(train_file=str(DEMO_TRAIN), **PARAMS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by benchmarks/soak.py: search_spaces/demo.yaml with a tiny budget per trial.\n"
                    + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def start_driver(space: Path, workdir: Path, num_samples: int) -> subprocess.Popen:
    """The search in its own session (its pid is the session id), stdout piped to this process."""
    # One torch thread in the driver (its reports): on 2 cores the trials have both.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_debug_dump_period_milliseconds": "2000",
           "SOAK_RAY_AT_END": str(workdir / "ray_at_end.json"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", DRIVER, "--space", str(space), "--name", "soak",
           "--results_dir", str(workdir / "results"), "--num_samples", str(num_samples)]
    with open(workdir / "driver.err", "w", encoding="utf-8") as err:  # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=bu.REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                start_new_session=True)


class DriverOutput(threading.Thread):
    """Reads the driver's stdout: each line to driver.log, the trials done (with the time) from its
    live lines, and when the search was over (the leaderboard's first line)."""

    def __init__(self, proc: subprocess.Popen, log: Path, started: float):
        super().__init__(daemon=True)
        self.proc, self.log, self.started = proc, log, started
        self.done, self.planned, self.over_at = 0, None, None
        self.first_start_at: float | None = None
        self.trial_done_at: dict[int, float] = {}  # trials done -> seconds since start, when first seen

    def run(self) -> None:
        """Until the driver closes its stdout."""
        with open(self.log, "w", encoding="utf-8") as fh:
            for line in self.proc.stdout:
                fh.write(line)
                now = time.perf_counter() - self.started
                m = PROGRESS.match(line)
                if m:
                    self.done, self.planned = int(m.group(1)), int(m.group(2))
                    self.trial_done_at.setdefault(self.done, now)
                    if self.first_start_at is None and " started" in line:
                        self.first_start_at = now
                elif self.over_at is None and line.startswith(SEARCH_OVER):
                    self.over_at = now


# --- what is sampled --------------------------------------------------------------------------------


def folder_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (files may vanish while it walks: Ray deletes checkpoints)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += folder_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


def family(driver, seen: dict[int, tuple[float, str]]) -> list:
    """The driver and its live descendants; each is noted in `seen` (pid -> create time, name)."""
    import psutil

    try:
        procs = [driver, *driver.children(recursive=True)]
    except psutil.Error:
        return []
    for p in procs:
        try:
            seen.setdefault(p.pid, (p.create_time(), p.name()))
        except psutil.Error:
            pass
    return procs


def session_dir(procs) -> Path | None:
    """Ray's session folder, from the command line of one of its processes (the GCS and the raylet say it)."""
    import psutil

    for p in procs:
        try:
            for arg in p.cmdline():
                if arg.startswith(("--session-dir=", "--session_dir=")):
                    return Path(arg.split("=", 1)[1])
        except psutil.Error:
            continue
    return None


def raylet_state(session: Path | None) -> dict[str, Any]:
    """Object store use and live placement groups, from the raylet's latest logs/debug_state.txt."""
    try:
        text = (session / "logs" / "debug_state.txt").read_text(encoding="utf-8", errors="replace")
    except (OSError, TypeError):
        return {}
    local = re.search(r'Local resources: \{"total":\{(.*?)\}, "available": \{(.*?)\}', text)
    pinned = re.search(r"pinned objects size: (\d+)", text)
    objects = re.search(r"num local plasma objects: (\d+)", text)
    if not local:
        return {}
    store = [re.search(r"object_store_memory: \[(\d+)\]", part) for part in local.groups()]
    groups = set(re.findall(r"bundle_group_(?:\d+_)?([0-9a-f]{16,})", local.group(1)))
    used = (int(store[0].group(1)) - int(store[1].group(1))) / 10000 if all(store) else None  # Ray's fixed point
    return {"store_used": used, "store_pinned": int(pinned.group(1)) if pinned else None,
            "store_objects": int(objects.group(1)) if objects else None, "placement_groups": len(groups)}


def sample(driver, out: DriverOutput, exp_dir: Path, seen: dict, started: float) -> dict[str, Any] | None:
    """One row of the time series; None once the driver is gone."""
    import psutil

    try:
        with driver.oneshot():
            rss, fds, cpu = driver.memory_info().rss, driver.num_fds(), sum(driver.cpu_times()[:2])
    except psutil.Error:
        return None
    procs = family(driver, seen)
    session = session_dir(procs)
    return {"t": time.perf_counter() - started, "wall": time.time(), "done": out.done, "over": out.over_at is not None,
            "rss": rss, "fds": fds, "cpu_s": cpu, "procs": len(procs), "disk": folder_bytes(exp_dir),
            "session_disk": folder_bytes(session) if session else None, "session_dir": str(session or ""),
            **raylet_state(session)}


# --- the run ----------------------------------------------------------------------------------------


def run_soak(num_samples: int, workdir: Path, interval: float = 2.0, timeout_s: float = 3 * 3600) -> dict[str, Any]:
    """Run the search of `num_samples` trials in `workdir`, sampling every `interval` s; every figure.

    The function the test calls (tests/test_soak.py) and `main` prints; nothing here judges a goal
    except `goals`, which `figures` fills in."""
    import psutil

    workdir.mkdir(parents=True, exist_ok=True)
    space = soak_space(workdir / "space.yaml", num_samples)
    exp_dir = workdir / "results" / "soak"
    started = time.perf_counter()
    proc = start_driver(space, workdir, num_samples)
    out = DriverOutput(proc, workdir / "driver.log", started)
    out.start()
    driver, seen, samples = psutil.Process(proc.pid), {}, []
    try:
        while proc.poll() is None:
            row = sample(driver, out, exp_dir, seen, started)
            if row is not None:
                samples.append(row)
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"the soak's search ran over {timeout_s:.0f} s")
            time.sleep(interval)
        wall = time.perf_counter() - started
        out.join(timeout=30)
        leaks = left_behind(proc.pid, seen)
    finally:
        _stop_session(proc, seen)
    end = json.loads((workdir / "ray_at_end.json").read_text()) if (workdir / "ray_at_end.json").is_file() else None
    session = next((Path(s["session_dir"]) for s in reversed(samples) if s["session_dir"]), None)
    fig = figures(num_samples, samples, out, proc.returncode, wall, leaks, disk_accounting(exp_dir), end,
                  folder_bytes(session) if session else None, workdir)
    return {**fig, "series": samples}


def left_behind(sid: int, seen: dict[int, tuple[float, str]], wait_s: float = 20.0) -> dict[str, Any]:
    """After the driver's exit: the processes of its session, or seen as its descendants, still
    alive after up to `wait_s` seconds (Ray's shutdown takes a moment), and when the last one went."""
    import psutil

    exited = time.perf_counter()

    def alive() -> list[dict[str, Any]]:
        found = []
        for p in psutil.process_iter(["pid", "name", "create_time"]):
            try:
                ours = os.getsid(p.pid) == sid or seen.get(p.pid, (None,))[0] == p.info["create_time"]
            except (OSError, psutil.Error):
                continue
            if ours and p.pid != os.getpid():
                found.append({"pid": p.pid, "name": p.info["name"]})
        return found

    left = alive()
    while left and time.perf_counter() - exited < wait_s:
        time.sleep(0.5)
        left = alive()
    return {"leaked": left, "seconds_to_clean_exit": None if left else time.perf_counter() - exited,
            "processes_seen": len(seen), "ray_core_left": [p for p in left if p["name"] in ("gcs_server", "raylet")]}


def _stop_session(proc: subprocess.Popen, seen: dict[int, tuple[float, str]]) -> None:
    """Whatever the search started that is still alive (a failed or interrupted soak, a leak): gone.
    Its process group first (SIGINT: the driver stops Ray; then SIGKILL), then, by pid, any process
    seen as its descendant that is still the same process (same start time)."""
    import psutil

    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(2)  # Ray's processes leave after the driver
    for pid, (created, _) in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and pid != os.getpid():
                p.kill()
        except psutil.Error:
            continue


def disk_accounting(exp_dir: Path) -> dict[str, Any]:
    """The results folder at the end: each trial's kept checkpoints, best_model/, and the rest."""
    trials = sorted(exp_dir.glob("trial_*"))
    kept = {t.name: sorted(t.glob("checkpoint_*")) for t in trials}
    ckpt_bytes = [folder_bytes(c) for cs in kept.values() for c in cs]
    total, best = folder_bytes(exp_dir), folder_bytes(exp_dir / "best_model")
    rest = total - sum(ckpt_bytes) - best
    return {"total": total, "trials": len(trials), "checkpoints": len(ckpt_bytes),
            "trials_with_one_checkpoint": sum(len(cs) == 1 for cs in kept.values()),
            "checkpoints_bytes": sum(ckpt_bytes), "checkpoint_mean_bytes": sum(ckpt_bytes) / max(1, len(ckpt_bytes)),
            "best_model_bytes": best, "rest_bytes": rest, "rest_per_trial_bytes": rest / max(1, len(trials)),
            "trial_states": _trial_states(exp_dir)}


def _trial_states(exp_dir: Path) -> dict[str, int]:
    """Trials by state, from the search's trials.csv."""
    import csv

    path = exp_dir / "trials.csv"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        states = [row["state"] for row in csv.DictReader(fh)]
    return {s: states.count(s) for s in sorted(set(states))}


# --- figures and goals ------------------------------------------------------------------------------


def search_samples(samples: list[dict[str, Any]], end: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The samples taken while the search ran: Ray up (the driver has descendants), before the
    driver stopped Ray (`end`, its note) and wrote its reports (which read every trial back and
    load the best model)."""
    stop = end["time"] if end and "time" in end else float("inf")
    return [s for s in samples if s["procs"] > 1 and not s["over"] and s["wall"] <= stop]


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs; None with fewer than 2 distinct xs."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def memory_figures(running: list[dict[str, Any]], planned: int, end: dict[str, Any] | None) -> dict[str, Any]:
    """Driver RSS and fds after the first trial and at the end of the search (noted by the driver
    just before it stops Ray; else the last sample before), the growth between them, and the slope
    over the second half of the trials (steady state)."""
    first = next((s for s in running if s["done"] >= 1), None)
    last = running[-1] if running else None
    if last is not None and end and "rss" in end:
        last = {**last, "rss": end["rss"], "fds": end["fds"], "done": end.get("done", last["done"])}
    if first is None or last is None or last["done"] <= first["done"]:
        return {}
    trials = last["done"] - first["done"]
    growth = (last["rss"] - first["rss"]) / MB
    late = [s for s in running if s["done"] >= planned / 2]
    slope = _slope([s["done"] for s in late], [s["rss"] / MB for s in late])
    return {"rss_after_first_trial_mb": first["rss"] / MB, "rss_end_mb": last["rss"] / MB,
            "rss_growth_mb": growth, "rss_growth_trials": trials, "rss_growth_per_100_trials_mb": growth / trials * 100,
            "rss_growth_over_200_trials_mb": growth / trials * GOAL_TRIALS,
            "rss_slope_second_half_mb_per_100_trials": None if slope is None else slope * 100,
            "fds_after_first_trial": first["fds"], "fds_end": last["fds"], "fd_growth": last["fds"] - first["fds"],
            "procs_after_first_trial": first["procs"]}


def cpu_figures(running: list[dict[str, Any]], planned: int) -> dict[str, Any]:
    """The driver's CPU seconds per trial over the first and the second half of the trials: work
    per trial that grows with the trials so far shows as a second half that costs more."""
    def at(done: float) -> dict[str, Any] | None:
        return next((s for s in running if s["done"] >= done), None)

    a, b, c = at(1), at(planned / 2), running[-1] if running else None
    if not (a and b and c) or not (a["done"] < b["done"] < c["done"]):
        return {}
    return {"driver_cpu_s_per_trial_first_half": (b["cpu_s"] - a["cpu_s"]) / (b["done"] - a["done"]),
            "driver_cpu_s_per_trial_second_half": (c["cpu_s"] - b["cpu_s"]) / (c["done"] - b["done"])}


def figures(planned: int, samples: list[dict[str, Any]], out: DriverOutput, rc: int | None, wall: float,
            leaks: dict[str, Any], disk: dict[str, Any], end: dict[str, Any] | None, session_bytes: int | None,
            workdir: Path) -> dict[str, Any]:
    """Every figure of the run, and the goals judged on them (`goals`)."""
    running = search_samples(samples, end)
    store = [s["store_used"] for s in samples if s.get("store_used") is not None]
    groups = [s["placement_groups"] for s in samples if s.get("placement_groups") is not None]
    search_s = (out.trial_done_at[out.done] - out.first_start_at) if out.first_start_at and out.done else None
    fig = {"trials": planned, "trials_done": out.done, "exit_code": rc, "wall_s": wall, "search_s": search_s,
           "samples": len(samples), **memory_figures(running, planned, end and {**end, "done": out.done}),
           **cpu_figures(running, planned),
           "rss_peak_mb": max((s["rss"] for s in samples), default=0) / MB,
           "fds_max": max((s["fds"] for s in samples), default=None),
           "procs_max": max((s["procs"] for s in samples), default=None),
           "object_store_max_mb": max(store) / MB if store else None,
           "object_store_end_mb": (end or {}).get("object_store_used_bytes", 0) / MB if end else None,
           "object_store_objects_max": max((s.get("store_objects") or 0 for s in samples), default=None),
           "placement_groups_max": max(groups) if groups else None,
           "placement_groups_at_end": end and {k: v for k, v in end["placement_groups"].items() if k != "REMOVED"},
           "actors_at_end": end and {k: v for k, v in end["actors"].items() if k != "DEAD"},
           "disk_end_mb": disk["total"] / MB, "disk_per_trial_mb": disk["total"] / MB / max(1, disk["trials"]),
           "disk_peak_mb": max((s["disk"] for s in samples), default=0) / MB,
           "kept_checkpoints_mb": disk["checkpoints_bytes"] / MB,
           "checkpoint_mean_mb": disk["checkpoint_mean_bytes"] / MB,
           "rest_per_trial_kb": disk["rest_per_trial_bytes"] / 1024, "ray_session_dir_mb": (session_bytes or 0) / MB,
           "ray_session_dir_per_trial_kb": (session_bytes or 0) / 1024 / max(1, disk["trials"]),
           "leaked_processes": len(leaks["leaked"]), "leaked": leaks["leaked"],
           "seconds_to_clean_exit": leaks["seconds_to_clean_exit"], "ray_core_left": leaks["ray_core_left"],
           "processes_seen": leaks["processes_seen"], "disk": disk, "workdir": str(workdir)}
    fig["goals"] = goals(fig, disk)
    fig["ray_at_end"] = end
    return fig


def goals(fig: dict[str, Any], disk: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 13 with what was measured and MET or MISSED."""
    growth = fig.get("rss_growth_over_200_trials_mb")
    rest = disk["rest_per_trial_bytes"]
    one = disk["trials_with_one_checkpoint"] == disk["trials"] > 0
    pgs = fig["placement_groups_at_end"]
    return [
        {"goal": f"driver memory growth < {MEMORY_GOAL_MB:g} MB over {GOAL_TRIALS} trials",
         "measured": None if growth is None else f"{growth:+.1f} MB per {GOAL_TRIALS} trials "
                                                  f"({fig['rss_growth_mb']:+.1f} MB over {fig['rss_growth_trials']}"
                                                  + (", too few to judge: the start-up's growth weighs in)"
                                                     if fig["rss_growth_trials"] < GOAL_TRIALS / 2 else ")"),
         "met": growth is not None and growth < MEMORY_GOAL_MB},
        {"goal": f"disk bounded: one kept checkpoint per trial, the rest <= {DISK_SLACK_PER_TRIAL // 1024} KB "
                 f"per trial",
         "measured": f"{disk['trials_with_one_checkpoint']} of {disk['trials']} trials keep one checkpoint; "
                     f"rest {rest / 1024:.0f} KB per trial",
         "met": one and rest <= DISK_SLACK_PER_TRIAL},
        {"goal": "no leaked process (exit code 0)",
         "measured": f"{fig['leaked_processes']} left of {fig['processes_seen']} seen; exit code {fig['exit_code']}",
         "met": fig["leaked_processes"] == 0 and fig["exit_code"] == 0},
        {"goal": "no placement group left; no GCS or raylet of the search after its exit",
         "measured": f"before Ray's stop: {pgs if pgs is not None else 'not noted'} not removed; "
                     f"after: {len(fig['ray_core_left'])} GCS/raylet",
         "met": pgs == {} and not fig["ray_core_left"]},
    ]


# --- output -----------------------------------------------------------------------------------------


def plot(samples: list[dict[str, Any]], fig: dict[str, Any], png: Path) -> None:
    """The curves against trials done (samples while the search ran), and trials done over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = fig.get("ray_at_end")
    run = [s for s in search_samples(samples, end) if s["done"] >= 1]
    if end and "rss" in end and run:  # the driver's own note, just before it stopped Ray
        run.append({**run[-1], "done": fig["trials_done"], "rss": end["rss"], "fds": end["fds"]})
    x = [s["done"] for s in run]
    panels = [("driver RSS (MB)", [s["rss"] / MB for s in run]), ("driver open fds", [s["fds"] for s in run]),
              ("processes (driver + descendants)", [s["procs"] for s in run]),
              ("results folder on disk (MB)", [s["disk"] / MB for s in run]),
              ("object store in use (KB); placement groups", [(s.get("store_used") or 0) / 1024 for s in run])]
    f, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, y) in zip(axes.flat, panels):
        ax.plot(x, y, ".-", ms=3, lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("trials done")
        ax.grid(alpha=0.3)
        if not title.startswith("driver RSS"):  # counts from 0; RSS zoomed in, to show its growth
            ax.set_ylim(bottom=0, top=max(y, default=0) * 1.15 + 1)
    disk_ax, store_ax = axes.flat[3], axes.flat[4]
    ckpt = fig["checkpoint_mean_mb"]
    disk_ax.plot(x, [d * ckpt for d in x], "--", lw=0.8, label="kept checkpoints alone (trials done x mean)")
    disk_ax.plot(x, [(s.get("session_disk") or 0) / MB for s in run], lw=0.8, label="Ray's session folder (/tmp/ray)")
    disk_ax.legend(fontsize=8)
    pg = store_ax.twinx()
    pg.plot(x, [s.get("placement_groups") or 0 for s in run], "r.", ms=2)
    pg.set_ylim(bottom=0, top=max([s.get("placement_groups") or 0 for s in run], default=0) + 1)
    pg.set_ylabel("live placement groups", color="r")
    ax = axes.flat[5]
    ax.plot([s["t"] / 60 for s in samples], [s["done"] for s in samples], lw=0.8, label="trials done")
    ax.set_xlabel("minutes since the driver's start")
    ax.set_title("trials done; driver CPU seconds", fontsize=10)
    cpu = ax.twinx()
    cpu.plot([s["t"] / 60 for s in samples], [s["cpu_s"] for s in samples], "g", lw=0.8)
    cpu.set_ylabel("driver CPU s", color="g")
    f.suptitle(f"soak: {fig['trials']} trials on the demo data, {fig['wall_s'] / 60:.1f} min; "
               f"driver RSS {fig.get('rss_growth_mb', float('nan')):+.1f} MB after the first trial")
    f.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    f.savefig(png, dpi=90)
    plt.close(f)


def report(fig: dict[str, Any]) -> str:
    """The figures and the goals, as printed."""
    def v(key: str, fmt: str = "{:.1f}") -> str:
        return "?" if fig.get(key) is None else fmt.format(fig[key])

    lines = [
        f"trials: {fig['trials_done']} of {fig['trials']} done ({fig['disk']['trial_states']}); exit code "
        f"{fig['exit_code']}; wall {v('wall_s')} s (trials {v('search_s')} s)",
        f"driver RSS: {v('rss_after_first_trial_mb')} MB after the first trial, {v('rss_end_mb')} MB at the end of "
        f"the search: {v('rss_growth_mb', '{:+.1f}')} MB ({v('rss_growth_per_100_trials_mb', '{:+.1f}')} MB per 100 "
        f"trials; second half's slope {v('rss_slope_second_half_mb_per_100_trials', '{:+.1f}')} MB per 100); "
        f"peak {v('rss_peak_mb')} MB (with the reports)",
        f"driver fds: {v('fds_after_first_trial', '{}')} after the first trial, {v('fds_end', '{}')} at the end, "
        f"max {v('fds_max', '{}')} (growth {v('fd_growth', '{:+d}')})",
        f"driver CPU per trial: {v('driver_cpu_s_per_trial_first_half', '{:.2f}')} s (first half), "
        f"{v('driver_cpu_s_per_trial_second_half', '{:.2f}')} s (second half)",
        f"processes: max {v('procs_max', '{}')}; {fig['processes_seen']} seen in all; {fig['leaked_processes']} left "
        f"after the exit"
        + (f" ({fig['leaked']})" if fig["leaked"] else f" (all gone {v('seconds_to_clean_exit')} s after it)"),
        f"Ray: object store max {v('object_store_max_mb', '{:.3f}')} MB ({v('object_store_objects_max', '{}')} "
        f"objects), {v('object_store_end_mb', '{:.3f}')} MB before Ray's stop; placement groups max "
        f"{v('placement_groups_max', '{}')}, not removed before Ray's stop: {fig['placement_groups_at_end']}; "
        f"live actors then: {fig['actors_at_end']}",
        f"disk: {v('disk_end_mb')} MB at the end ({v('disk_per_trial_mb', '{:.2f}')} MB per trial; peak "
        f"{v('disk_peak_mb')} MB): kept checkpoints {v('kept_checkpoints_mb')} MB ({fig['disk']['checkpoints']}, "
        f"{v('checkpoint_mean_mb', '{:.2f}')} MB each), best_model {fig['disk']['best_model_bytes'] / MB:.1f} MB, "
        f"the rest {v('rest_per_trial_kb', '{:.0f}')} KB per trial; Ray's session folder (outside it, left by "
        f"Ray) {v('ray_session_dir_mb')} MB ({v('ray_session_dir_per_trial_kb', '{:.0f}')} KB per trial)",
        "",
    ]
    lines += [f"{g['goal']}: {g['measured']}: {'MET' if g['met'] else 'MISSED'}" for g in fig["goals"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the figures and the goals, draw the curves, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--num_samples", type=int, help=f"trials (default {FULL_TRIALS}; {QUICK_TRIALS} with --quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_TRIALS} trials (about a minute on 2 CPU cores)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples (default 2)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures and the samples to this JSON file")
    p.add_argument("--png", type=Path, help="the curves (default: benchmarks/results/soak.png for the full run; "
                                            "else beside --json OUT, as OUT.png; none without either)")
    p.add_argument("--workdir", type=Path, help="where the space, the results and the driver's output go "
                                                "(default: a temporary folder, removed at the end)")
    args = p.parse_args(argv)
    n = args.num_samples or (QUICK_TRIALS if args.quick else FULL_TRIALS)
    info = bu.machine()
    print(f"soak: {n} trials of {PARAMS['max_steps']} updates on the demo data; samples every {args.interval:g} s "
          f"(load {info['load_average_1min_at_start']})", flush=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        fig = run_soak(n, workdir, args.interval)
    full = n == FULL_TRIALS and not args.quick
    png = args.png or (DEFAULT_PNG if full else args.json and args.json.with_suffix(".png"))
    if png:
        plot(fig["series"], fig, png)
    print(report(fig))
    print(f"curves: {png}" if png else "curves: none (--png PATH draws them)")
    bu.write_json(args.json, {"benchmark": "soak", "quick": args.quick, "machine": info, **fig})
    return 0


if __name__ == "__main__":
    sys.exit(main())
