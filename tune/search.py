"""Hyperparameter search: Ray Tune runs `afqmc.train.train` as trials, Optuna TPE picks the
hyperparameters, ASHA stops weak trials early, all on val F1-macro.

    python tune/search.py [--space search_spaces/demo.yaml] [--name NAME] [--num_samples N]
        [--scheduler asha|fifo] [--address auto|HOST:PORT] [--field_name value ...]
    python tune/search.py --resume results/NAME [--num_samples N]    # continue; or grow it to N trials
    python tune/search.py --warm_start results/OLD [results/OLD2 ...] [--space ...]  # a new search from old ones

The data is loaded and tokenized once, here in the driver, and reaches the trials through Ray's
object store. Everything lands in results/NAME/: the Ray experiment (one folder per trial with its
best checkpoint), the Optuna study (optuna.db), trials.csv, best_config.yaml and best_model/.
Ctrl-C stops the search cleanly; `--resume results/NAME` continues it, and with `--num_samples N`
adds trials to it (same study, folder and settings; nothing retrained). `--warm_start` tries the
earlier searches' best configurations first and, on the same task, lets their trials inform TPE
(tune/warmstart.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is tune/ itself; make the repository's packages importable instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import datetime
import gc
import logging
import os
import shutil
import time
from dataclasses import asdict
from typing import Any

# Nothing here imports Ray at import time: main() sets the environment Ray reads when it is
# imported (ray_environment) first. The functions that use Ray import it.
from afqmc.config import ConfigError, TrainConfig, fields_help, parse_overrides
from afqmc.data import DataError
from afqmc.train import TaskData, prepare_data
from tune import internals, warmstart
from tune.ensemble import ensemble_lines
from tune.reports import confirmation_lines, extension_lines, test_lines, write_reports
from tune.results import best_trial, collect_trials, searcher_metric
from tune.space import SearchSpace, folder_space, load_space, search_base
from tune.warmstart import task_record
from tune.folder import (BEST_CONFIG, BEST_MODEL, DONE_STATES, LOGS, PLOTS, SPACE_COPY, STUDY_DB, TRAIN_RUNS,
                         TRIALS_CSV, TRIALS_MD, TRIAL_PREFIX, NotASearchError, SearchState, TrialState, lock_search,
                         refuse_if_running, trial_dirname)

RESULTS_DIR = "results"
SPACES_DIR = Path(__file__).resolve().parent / "spaces"  # the shipped spaces (package data; search_spaces/ links here)
DEFAULT_SPACE = SPACES_DIR / "demo.yaml"
DRIVER_MEMORY = 256 * 2**20  # bytes reserved for the driver of a multi-worker trial


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parse_args(argv)
    ray_environment(args.address)
    try:
        exp_dir, state, space = _start_or_resume(args, overrides)
        base = search_base(space, state.cwd)  # each trial's config is tune.space.trial_config(base, sampled)
        print(_describe(space, state.scheduler, exp_dir, resuming=bool(args.resume)))
        # The only tokenization of the whole search; it also reads a labelled test_file (or splits
        # off test_ratio), so that bad test data stops the search before it trains.
        data = prepare_data(base)
        state.task = state.task or task_record(base, space.settings, data.info)
        if args.warm_start:
            # At most num_samples - 1 enqueued (the baseline goes first): none is left waiting in the study.
            top_k = min(space.settings.warm_start_top_k, space.settings.num_samples - 1)
            state.warm_start = warmstart.plan(args.warm_start, space, state.task, top_k)
            for line in warmstart.describe(state.warm_start):
                print(line)
    except (ConfigError, DataError, OSError) as exc:  # OSError: e.g. a hub model without internet
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The tokenized data (hundreds of thousands of lists at 32,000 pairs) lives as long as the search:
    # out of the collector's reach, each of the driver's collections walks only what is new.
    gc.collect()
    gc.freeze()
    try:
        return _search(args, exp_dir, state, space, base, data)
    finally:
        gc.unfreeze()  # a caller that runs searches in its own process gets them back


def _search(args: argparse.Namespace, exp_dir: Path, state: SearchState, space: SearchSpace, base: TrainConfig,
            data: TaskData) -> int:
    """The search itself, once its data is ready: the experiment folder, Ray and the Tuner, the reports."""
    try:
        # The lock is held while this driver lives: a second search of this name refuses at once.
        lock = lock_search(exp_dir) if args.resume else _create_experiment(exp_dir, Path(args.space), state)
        if args.resume:
            state.save(exp_dir)  # an extension's new target and record, a task record an older search lacked
            _set_target(exp_dir, state.num_samples)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import tune

    try:
        _init_ray(args.address, exp_dir, args.verbose)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        resources = _trial_resources(space)
        trainable = _trainable(data, base, resources, space.settings.workers_per_trial, exp_dir,
                               log_dir=None if args.verbose else str(exp_dir / LOGS))
        counts = _study_counts(exp_dir)
        unfinished = bool(args.resume) and counts["running"] > 0
        restored = unfinished and ray_can_restore(exp_dir)
        if restored:
            print(f"resuming {_rel(exp_dir)}: finished trials are kept, unfinished ones continue from "
                  f"their last checkpoint")
            for note in restore_missing_checkpoints(exp_dir):
                print(f"  {note}")
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False)
        else:
            if unfinished or (args.resume and not counts["own"]):  # killed before Ray's first snapshot
                print(f"resuming {_rel(exp_dir)}: it was stopped before Ray saved its state; it starts "
                      f"again with its study")
            elif args.resume:  # every trial it holds has ended: a new Ray run adds the ones it lacks
                print(f"resuming {_rel(exp_dir)}: its trials have all ended and are kept (ASHA's peers at "
                      f"their rungs); a new Ray run over its study adds the rest")
            tuner = _new_tuner(space, state, exp_dir, trainable, resources)
        started = time.time()
        if _fit(tuner) and restored:
            # Ray's restored run ends where its own saved state said (its samples were all made), which
            # can be short of a target raised since: a new Ray run over the study adds the rest.
            counts = _study_counts(exp_dir)
            if not counts["running"] and counts["own"] < state.num_samples:
                _fit(_new_tuner(space, state, exp_dir, trainable, resources))
        elapsed = time.time() - started
    finally:
        ray.shutdown()
    code = _finish(exp_dir, space, elapsed, data.test, data.val_pairs)
    lock.close()
    return code


def _fit(tuner) -> bool:
    """Run the Tuner; False when it was interrupted (Ctrl-C, SIGUSR1). Ray's handler takes SIGINT for
    the run and gives the one it found back only when a signal stopped the run: that is how an
    interrupt is told from a run that ended."""
    import signal

    def ours(signum, frame):
        raise KeyboardInterrupt

    import threading

    if threading.current_thread() is not threading.main_thread():  # no signals here, and Ray takes none
        tuner.fit()
        return True
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, ours)
    try:
        tuner.fit()  # the first Ctrl-C makes Ray stop the trials and save the experiment state
        return signal.getsignal(signal.SIGINT) is not ours
    except KeyboardInterrupt:  # a second Ctrl-C: Ray skipped its last save; what is on disk remains
        print("interrupted again: the last experiment state Ray saved is kept", file=sys.stderr)
        return False
    finally:
        signal.signal(signal.SIGINT, previous)


# --- building the search -------------------------------------------------------------------------


def ray_environment(address: str | None) -> None:
    """What Ray reads from the environment when it is imported: set before the first import."""
    # No usage-stats prompt or upload; and no warning each time Ray snapshots the experiment state,
    # which it does after every kept checkpoint (that is what makes resume exact).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own progress output (a configuration box, a TensorBoard hint into a temporary folder) stays
    # off: LiveView prints the search (Tune's older reporter respects verbose=0, the new one does not).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Multi-worker trials run a Ray Train V2 TorchTrainer (tune/trial.py): the default from Ray 2.51, the
    # documented switch before it.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if (address or "127.0.0.1").split(":")[0] in ("127.0.0.1", "localhost"):
        # The local Ray binds every process to loopback only. On Linux Ray would take the machine's
        # network address as the node's (even when given 127.0.0.1) and listen on all interfaces;
        # this switch, read when Ray is imported, makes it use 127.0.0.1 as it does on macOS. The
        # same holds to attach to a loopback-only cluster (--address 127.0.0.1:PORT). Checked after the
        # start (internals.check_loopback).
        internals.loopback_environment()


def ray_can_restore(exp_dir: Path) -> bool:
    """Whether Ray saved its Tuner and a snapshot of the experiment to restore from (Ray's public
    `Tuner.can_restore` sees only the Tuner; `ExperimentAnalysis` raises ValueError without a
    snapshot). A Tuner restored without a snapshot makes Ray restart the experiment with the wrong
    number of samples (seen under chaos); a new Tuner over the study loses nothing instead."""
    from ray import tune

    if not tune.Tuner.can_restore(str(exp_dir)):
        return False
    try:
        tune.ExperimentAnalysis(str(exp_dir))
    except ValueError:
        return False
    return True


def restore_missing_checkpoints(exp_dir: Path) -> list[str]:
    """Give back each unfinished trial the checkpoint Ray's snapshot names as its last, when Ray has
    deleted it: with `num_to_keep=1` Ray deletes a trial's previous latest checkpoint as soon as it
    saves a newer one, and a driver killed before Ray's next snapshot leaves the snapshot naming the
    deleted one. Restoring that trial would fail ("Could not recover from checkpoint as it does not
    exist on storage anymore") and lose it. The named folder gets a copy of the trial's newest
    checkpoint on disk (saved after the snapshot), so the trial goes on from there: its own state in
    the checkpoint says which evaluation it reached. Public APIs only: ExperimentAnalysis and its
    get_last_checkpoint; which trials are unfinished is the study's word. Returns a note per repair."""
    from ray import tune

    from tune.folder import RAY_TRIAL_ID
    from tune.results import load_study

    study = load_study(exp_dir)
    running = {t.user_attrs.get(RAY_TRIAL_ID) for t in study.get_trials(deepcopy=False)
               if t.state.name == "RUNNING"} if study is not None else set()
    analysis = tune.ExperimentAnalysis(str(exp_dir))
    notes = []
    for trial in analysis.trials:
        if trial.trial_id not in running:
            continue
        last = analysis.get_last_checkpoint(trial)
        if last is None or Path(last.path).exists():
            continue
        on_disk = sorted(p for p in Path(last.path).parent.glob("checkpoint_*") if p.name[11:].isdigit())
        if not on_disk:
            continue
        partial = Path(f"{last.path}.partial")  # copied aside, then renamed: a kill leaves no half checkpoint
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(on_disk[-1], partial)
        partial.rename(last.path)
        notes.append(f"trial {trial.trial_id}: Ray's snapshot named {Path(last.path).name}, deleted when "
                     f"{on_disk[-1].name} was saved after it; it goes on from {on_disk[-1].name}")
    return notes


def _start_or_resume(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Path, SearchState, SearchSpace]:
    """The experiment folder, its SearchState and the space: checked, nothing written yet."""
    if args.resume:
        exp_dir = Path(args.resume).resolve()
        state = _load_state(exp_dir)
        refuse_if_running(exp_dir)
        if (exp_dir / STUDY_DB).exists() or any(exp_dir.glob(f"{TRIAL_PREFIX}*")):  # else: killed before either
            _check_study(exp_dir)
        _note_space_file(exp_dir, state)
        if args.num_samples is not None and args.num_samples != state.num_samples:
            _extend(exp_dir, state, args.num_samples)
        space = folder_space(exp_dir, state)
        space.settings.workers_per_trial = state.workers_per_trial
        return exp_dir, state, space
    space = load_space(args.space, overrides, args.num_samples)
    if args.workers_per_trial:
        space.settings.workers_per_trial = args.workers_per_trial
    name = args.name or f"{Path(args.space).stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    exp_dir = (Path(args.results_dir) / name).resolve()
    _check_results_dir(Path(args.results_dir), explicit=args.results_dir != RESULTS_DIR)
    if exp_dir.exists():
        refuse_if_running(exp_dir)
        raise ConfigError(f"{exp_dir} already exists: continue it with --resume {_rel(exp_dir)}, "
                          f"or choose another --name")
    state = SearchState(space=str(args.space), overrides=overrides, num_samples=space.settings.num_samples,
                        scheduler=args.scheduler, baseline=space.baseline(),
                        workers_per_trial=space.settings.workers_per_trial,
                        settings=asdict(space.settings), cwd=os.getcwd(),  # relative paths resolve from here
                        started=datetime.datetime.now().isoformat(timespec="seconds"),
                        tracking_uri=args.tracking_uri)
    return exp_dir, state, space


def _extend(exp_dir: Path, state: SearchState, num_samples: int) -> None:
    """`--resume NAME --num_samples N`: the search is to hold N trials (written once its lock is held)."""
    held = _study_counts(exp_dir)["own"]
    if num_samples < state.num_samples:
        raise ConfigError(f"--num_samples {num_samples}: {_rel(exp_dir)} was started with {state.num_samples} trials "
                          f"and holds {held}; a search can grow, not shrink")
    state.extensions.append({"from": state.num_samples, "to": num_samples,
                             "started": datetime.datetime.now().isoformat(timespec="seconds"),
                             "before": _standing(exp_dir)})
    state.num_samples = num_samples
    state.settings["num_samples"] = num_samples
    print(f"extending {_rel(exp_dir)} from {held} trials (of {state.extensions[-1]['from']}) to {num_samples}: "
          f"the same study, folder and settings; earlier trials are kept, not retrained")


def _note_space_file(exp_dir: Path, state: SearchState) -> None:
    """A resumed search runs on the copy of its space file it started with; say so when the file has
    changed on disk since (or is gone)."""
    given = Path(state.space)
    given = given if given.is_absolute() else Path(state.cwd) / given
    copy = exp_dir / SPACE_COPY
    try:
        same = given.read_bytes() == copy.read_bytes()
    except OSError:
        same = False
    if not same and copy.is_file():
        print(f"note: {given} has changed since the search started (or is gone); the search goes on with the "
              f"space it started with, {_rel(copy)}")


def _study_counts(exp_dir: Path) -> dict[str, int]:
    """How many trials the study holds of the search's own (asked for; not an informing one, not a
    confirmation run), and how many trials are RUNNING (unfinished: running, waiting at a rung, or
    interrupted; stage runs included)."""
    from tune.confirm import own_search_trials
    from tune.results import load_study
    from tune.searcher import own_trials

    study = load_study(exp_dir)
    if study is None:
        return {"own": 0, "running": 0}
    return {"own": len(own_search_trials(study)), "running": sum(t.state.name == "RUNNING" for t in own_trials(study))}


def _set_target(exp_dir: Path, num_samples: int) -> None:
    """The study's record of how many trials the search is to hold (StudySearch.target), when the
    study exists (a new one takes it from the searcher)."""
    from tune.folder import TARGET_ATTR
    from tune.results import load_study

    study = load_study(exp_dir)
    if study is not None and study.user_attrs.get(TARGET_ATTR) != num_samples:
        study.set_user_attr(TARGET_ATTR, num_samples)


def _standing(exp_dir: Path) -> dict[str, Any]:
    """The search's best val value and the optimizer updates its trials spent, before an extension
    (as tune/reports.py's summary counts them after it)."""
    trials = collect_trials(exp_dir)
    best = best_trial(trials)
    return {"best": None if best is None else best.best_value, "best_trial": None if best is None else best.number,
            "updates": int(sum(t.steps for t in trials)), "trials": len(trials)}


def _new_tuner(space: SearchSpace, state: SearchState, exp_dir: Path, trainable, resources):
    """The Tuner of a new search: StudySearch (TPE) on search.metric, ASHA (or FIFO), the callbacks."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune.callbacks import KeepBestCheckpoint, ReleaseTrainWorkers
    from tune.terminal import LiveView

    settings, scheduler_name = space.settings, state.scheduler
    # Trials that ended in an earlier Ray run over the study (this Tuner never sees them).
    earlier = [t.steps for t in collect_trials(exp_dir) if t.state in DONE_STATES]
    callbacks = [LiveView(settings.max_evals, settings.metric, settings.asha_metric, num_samples=settings.num_samples,
                          earlier_steps=earlier),
                 KeepBestCheckpoint(settings.metric), ReleaseTrainWorkers()]
    if "mlflow" in settings.loggers:
        from tune.tracking import MLflowTrials, default_tracking_uri

        callbacks.append(MLflowTrials(state.tracking_uri or default_tracking_uri(exp_dir), exp_dir.name,
                                      settings.max_evals))
    from tune.scheduler import PauseAwareLimiter, PromotionASHA

    concurrent = _max_concurrent(settings, resources)
    # Ray's ConcurrencyLimiter, except that trials paused at a rung leave their slot to a new trial.
    searcher = PauseAwareLimiter(_searcher(space, state, exp_dir), max_concurrent=concurrent)
    if scheduler_name == "asha":
        # ASHA compares trials at its rungs by asha_metric at that evaluation; too few peers: the trial
        # waits. Its rungs are kept in the study (StudySearch.save_asha).
        scheduler = PromotionASHA(time_attr="evals", metric=settings.asha_metric, mode="max", max_t=settings.max_evals,
                                  grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
                                  max_concurrent=concurrent)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # Unlimited for Ray: the study says how many trials the search holds (StudySearch.target).
            search_alg=searcher, scheduler=scheduler, num_samples=-1,
            trial_dirname_creator=trial_dirname,
            # A new trial reuses a finished trial's worker: no torch import per trial. Not with Train
            # workers: a stopped trial's actor must go, and its Train run with it.
            reuse_actors=space.settings.workers_per_trial == 1,
        ),
        run_config=tune.RunConfig(
            name=exp_dir.name, storage_path=str(exp_dir.parent),
            stop={"evals": settings.max_evals},  # the budget; FIFO runs every trial to it
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=settings.metric,
                                                    checkpoint_score_order="max"),
            # A trial whose worker died is retried from its last checkpoint; one that fails on
            # its own (NaN loss) ends as failed without a retry (run_trial); the search goes on.
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=callbacks,
            verbose=0,  # LiveView prints the trials
        ),
    )


def _searcher(space: SearchSpace, state: SearchState, exp_dir: Path):
    """StudySearch with the space's sampler (TPE unless search.sampler: random) on the study in the
    experiment folder (optuna.db). Every search contains the baseline it must beat: it is enqueued
    as the study's first trial when the study is created."""
    from tune.searcher import StudySearch

    from tune.results import load_study

    settings = space.settings
    # The study lives in the experiment folder; the driver is its only writer (SQLite is fine). It
    # keeps its name when the folder was renamed or copied (a resume must not start a second study).
    existing = load_study(exp_dir)
    return StudySearch(
        space.distributions(), metric=searcher_metric(settings.metric),
        study_name=existing.study_name if existing is not None else exp_dir.name,
        storage_url=f"sqlite:///{exp_dir / STUDY_DB}", eval_metric=settings.metric, max_evals=settings.max_evals,
        sampler=settings.sampler, seed=settings.seed, n_startup_trials=settings.n_startup_trials,
        baseline=state.baseline, num_samples=settings.num_samples, warm_start=state.warm_start,
        confirm=settings.confirm, search_seed=space.base.seed,
    )


def _trainable(data: TaskData, base: TrainConfig, resources: dict[str, float], workers: int, exp_dir: Path,
               log_dir: str | None = None):
    from ray import tune

    import ray

    from tune.trial import SharedData, run_trial

    # `data` goes into the object store once; every trial reads that one copy, once per trial process
    # (SharedData: a reused process keeps it). The held-out test pairs stay in this driver: no trial
    # can read their labels.
    data = SharedData(ray.put(dataclasses.replace(data, test=None, val_pairs=None)))
    trainable = tune.with_parameters(run_trial, data=data, base=base.to_dict(), workers=workers,
                                     worker_resources={"CPU": resources["cpu"], "GPU": resources["gpu"]},
                                     train_storage=str(exp_dir / TRAIN_RUNS), log_dir=log_dir)
    # A trial of several workers is only their driver: it takes no CPU itself (its Train workers
    # take theirs), so that two workers fit on two cores; Ray needs some resource in its bundle.
    return tune.with_resources(trainable, resources if workers == 1 else {"cpu": 0, "memory": DRIVER_MEMORY})


def _trial_resources(space: SearchSpace) -> dict[str, float]:
    """CPUs and GPUs of one trial's process, or of each of its workers."""
    import ray

    settings = space.settings
    gpus = settings.gpus_per_trial
    if gpus and not ray.cluster_resources().get("GPU"):
        print(f"note: no GPU in this Ray cluster; trials run on CPU (gpus_per_trial {gpus} ignored)")
        gpus = 0
    return {"cpu": settings.cpus_per_trial, "gpu": gpus}


def _max_concurrent(settings, resources: dict[str, float]) -> int:
    """As many trials as the cluster's CPUs and GPUs hold at once (all workers of each), unless the
    space says fewer. With Train workers this also keeps trials from waiting on each other's CPUs."""
    import ray

    if settings.max_concurrent_trials:
        return settings.max_concurrent_trials
    total = ray.cluster_resources()
    workers = settings.workers_per_trial
    fits = [int(total.get("CPU", 1) // (resources["cpu"] * workers))]
    if resources["gpu"]:
        fits.append(int(total.get("GPU", 0) / (resources["gpu"] * workers) + 1e-9))
    return max(1, min(fits))


def _init_ray(address: str | None, exp_dir: Path, verbose: bool) -> None:
    """Start (or attach to) Ray. Unless `verbose`, Ray's own messages go to logs/ray.log in the
    results folder and the trials' output to logs/trial_<id>.log (run_trial), not to the terminal:
    there, the live view's lines stay readable."""
    import optuna
    import ray

    logs = exp_dir / LOGS
    logs.mkdir(exist_ok=True)
    handler = None
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in RDB ..."
        handler = logging.FileHandler(logs / "ray.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        internals.quiet_token_auth_notice()
    quiet = {"configure_logging": verbose, "log_to_driver": verbose}
    if address:
        ray.init(address=address, logging_level="warning", **quiet)
    else:
        # A private local Ray for this run: no dashboard, everything bound to loopback.
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 logging_level="warning", **quiet)
        try:
            internals.check_loopback()  # the switch set in ray_environment, checked
        except RuntimeError as exc:
            ray.shutdown()
            raise ConfigError(str(exc)) from None
    if handler is not None:  # after init: Ray sets up its logger's console handler during it
        ray_logger = logging.getLogger("ray")
        ray_logger.handlers = [handler]
        ray_logger.propagate = False
    print(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs"
          f"{' at ' + address if address else ' (local, loopback only)'}")


# --- after the search ----------------------------------------------------------------------------


def _finish(exp_dir: Path, space: SearchSpace, elapsed: float, test_pairs=None, val_pairs=None) -> int:
    from tune.terminal import print_leaderboard

    trials = collect_trials(exp_dir)
    done = [t for t in trials if t.state in DONE_STATES and t.confirm_of is None]
    print_leaderboard(trials, list(space.params), max_rows=10, metric=space.settings.metric)
    # trials.csv, trials.md, summary.json, best_config.yaml, best_model/ and plots/ (also after an
    # interrupt), and the held-out test scores of the best and the baseline trial;
    # `python tune/compare.py --regenerate results/NAME` rebuilds them from the folder alone.
    reports = write_reports(exp_dir, trials, test_pairs=test_pairs, val_pairs=val_pairs)
    best, metric = reports.best, space.settings.metric
    counts = {s: sum(t.state == s for t in trials if t.confirm_of is None) for s in DONE_STATES}
    print(f"{len(done)} of {space.settings.num_samples} trials done ({elapsed / 60:.1f} min in this run): "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    baseline = next((t for t in trials if t.is_baseline), None)
    if baseline and baseline.best_value is not None:
        print(f"baseline trial {baseline.number}: {metric} {baseline.best_value:.4f}")
    elif baseline:
        print(f"baseline trial {baseline.number}: {baseline.state}{': ' + baseline.error if baseline.error else ''}")
    if best is not None:
        print(f"best trial {best.number}: {metric} {best.best_value:.4f} (val chose it: optimistic); model in "
              f"{_rel(exp_dir / BEST_MODEL)}, config in {_rel(exp_dir / BEST_CONFIG)}")
    for line in test_lines(reports.summary.get("test")) + ensemble_lines(reports.summary.get("ensemble")):
        print(line)
    for line in confirmation_lines(reports.summary.get("confirmation"), metric):
        print(line)
    for line in extension_lines(reports.summary.get("extensions") or [], metric):
        print(line)
    print(f"Optuna study: optuna-dashboard sqlite:///{_rel(exp_dir / STUDY_DB)}")
    print(f"tables: {_rel(exp_dir / TRIALS_MD)}, {_rel(exp_dir / TRIALS_CSV)}; plots: {_rel(exp_dir / PLOTS)}/")
    failed = [t for t in trials if t.state == TrialState.FAILED]
    if failed:
        print(f"{len(failed)} failed trial(s):" + "".join(f"\n  trial {t.number}: {t.reason}" for t in failed))
    confirmation = reports.summary.get("confirmation")
    if len(done) < space.settings.num_samples:
        print(f"\nsearch interrupted: {len(done)} of {space.settings.num_samples} trials done. Resume with:\n"
              f"  python tune/search.py --resume {_rel(exp_dir)}")
        return 130
    if space.settings.confirm and not (confirmation or {}).get("complete"):
        ended = (confirmation or {}).get("runs_ended", 0)
        print(f"\nsearch interrupted in its confirmation stage ({ended} runs ended). Resume with:\n"
              f"  python tune/search.py --resume {_rel(exp_dir)}")
        return 130
    if len(failed) == len(trials):
        print(f"error: every trial failed ({len(failed)} of {len(trials)}): no model was trained; see the reasons "
              f"above (a learning rate that diverges, out of memory at batch 1, a worker that kept dying)",
              file=sys.stderr)
        return 1
    return 0


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description="Search TrainConfig hyperparameters with Ray Tune, Optuna TPE and ASHA. Fixed "
                    "TrainConfig fields can be overridden with --field_name value (a searched one is then "
                    "fixed).", allow_abbrev=False, epilog=fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", help="search space: a YAML file, or the name of a shipped one ("
                                        + ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
                                        + "; default: demo)")
    parser.add_argument("--name", help="experiment name: results go to results/NAME (default: space name + time)")
    parser.add_argument("--num_samples", type=int, help="number of trials (default: the space's)")
    parser.add_argument("--scheduler", choices=("asha", "fifo"),
                        help="asha (default) stops weak trials early; fifo runs every trial to max_evals")
    parser.add_argument("--resume", metavar="results/NAME",
                        help="continue an interrupted search; with --num_samples N, grow a search to N trials")
    parser.add_argument("--warm_start", nargs="+", metavar="results/OLD",
                        help="start a new search from earlier ones: their best configurations first "
                             "(search.warm_start_top_k), and on the same task their trials inform TPE")
    parser.add_argument("--address", help="attach to a running Ray cluster (auto or HOST:PORT) "
                                          "instead of starting a local one")
    parser.add_argument("--results_dir", default=RESULTS_DIR, help="where NAME/ is created (default: results)")
    parser.add_argument("--tracking_uri", help="with search.loggers: [mlflow], the MLflow tracking store (default: "
                                               "sqlite:///results/NAME/mlflow.db)")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's own messages and the trials' output on the terminal too (by default they go to "
                             "results/NAME/logs/)")
    parser.add_argument("--workers_per_trial", type=int,
                        help="run each trial as a Ray Train TorchTrainer of N data-parallel workers (default: the "
                             "space's search.workers_per_trial, 1); cpus_per_trial/gpus_per_trial are then per worker")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.resume:
        given = [f"--{k}" for k in ("space", "name", "scheduler", "workers_per_trial", "tracking_uri", "warm_start")
                 if getattr(args, k) is not None]
        given += [f"--{k}" for k in overrides]
        if given:
            parser.error(f"--resume continues the search with its own settings (only --num_samples may grow it); "
                         f"drop {', '.join(given)}")
    else:
        args.space = _rel(resolve_space(args.space)) if args.space else _rel(DEFAULT_SPACE)
        args.scheduler = args.scheduler or "asha"
    for key in ("num_samples", "workers_per_trial"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1")
    return args, overrides


def _check_results_dir(results_dir: Path, explicit: bool) -> None:
    """A --results_dir that was given must exist, or at least its parent (a mistyped or unmounted path
    must not silently become a new local tree), and be writable; the default is created."""
    folder = results_dir.resolve()
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if not nearest.is_dir():
        raise ConfigError(f"--results_dir {folder}: {nearest} is not a folder")
    if explicit and nearest not in (folder, folder.parent):
        raise ConfigError(f"--results_dir {folder} does not exist, nor does {folder.parent} (create it; on a "
                          f"cluster, check that the shared file system is mounted)")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"--results_dir {results_dir.resolve()}: {nearest} is not writable")


def _create_experiment(exp_dir: Path, space_file: Path, state: SearchState):
    """The experiment folder, its lock (returned, held), the space's copy and search.json, made
    beside it and renamed into place: on any error (a full disk, a read-only folder) or a kill, no
    half-made folder takes the name, and the error names the path."""
    tmp = exp_dir.with_name(f".{exp_dir.name}.creating-{os.getpid()}")
    for stale in exp_dir.parent.glob(f".{exp_dir.name}.creating-*"):  # left by a driver killed while creating
        try:
            refuse_if_running(stale)
        except ConfigError:  # being created right now
            continue
        shutil.rmtree(stale, ignore_errors=True)
    lock = None
    try:
        tmp.mkdir(parents=True)
        lock = lock_search(tmp)  # the lock file's inode moves with the folder: held from the first moment
        shutil.copyfile(space_file, tmp / SPACE_COPY)
        state.save(tmp)
        tmp.rename(exp_dir)
        return lock
    except OSError as exc:
        if lock is not None:
            lock.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if exp_dir.exists():  # another search of this name won the race
            raise ConfigError(f"{exp_dir} already exists: another search of this name started at the same "
                              f"time") from None
        raise ConfigError(f"cannot write the results folder {exp_dir}: {exc.strerror or exc}; nothing was "
                          f"trained") from None


def _check_study(exp_dir: Path) -> None:
    """On --resume: the Optuna study must be readable and writable before anything runs."""
    import sqlite3

    db = exp_dir / STUDY_DB
    if not db.is_file():
        raise ConfigError(f"{db}: the search's Optuna study is missing; it cannot be resumed")
    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=2)
        try:
            con.execute("BEGIN IMMEDIATE")  # fails at once when another process holds a write lock
            con.execute("SELECT count(*) FROM studies").fetchone()
            con.rollback()
        finally:
            con.close()
        import optuna

        names = optuna.get_all_study_names(optuna.storages.RDBStorage(f"sqlite:///{db}"))
    except Exception as exc:  # sqlite3.DatabaseError, OperationalError, Optuna's errors
        raise ConfigError(f"{db}: cannot use the search's Optuna study ({type(exc).__name__}: {exc}); it is "
                          f"left as it is") from None
    # A database without the study: killed before the searcher asked for the first trial (every trial
    # is asked of the study first); the resumed search creates the study, as a new one would. Trial
    # folders beside it would belong to a study that is lost.
    if not names and any(exp_dir.glob(f"{TRIAL_PREFIX}*")):
        raise ConfigError(f"{db}: holds no Optuna study, but the folder holds trials; it cannot be resumed")


def resolve_space(given: str) -> Path:
    """A space file as given, else a shipped space by name (`afqmc_cpu` or `afqmc_cpu.yaml`) from the
    repository's search_spaces/, wherever the command runs from (also as the afqmc-search script).
    A name that is neither is left as given: loading it says the file does not exist."""
    path = Path(given)
    if path.is_file():
        return path
    shipped = SPACES_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if path.parent == Path(".") and shipped.is_file() else path


def _load_state(exp_dir: Path) -> SearchState:
    try:
        return SearchState.load(exp_dir)
    except NotASearchError as exc:
        raise ConfigError(str(exc)) from None


def _describe(space: SearchSpace, scheduler: str, exp_dir: Path, resuming: bool) -> str:
    s = space.settings
    lines = [f"search {_rel(exp_dir)}{' (resuming)' if resuming else ''}: {s.num_samples} trials, "
             f"up to {s.max_evals} evaluations each, "
             + (f"ASHA (grace {s.grace_period}, reduction factor {s.reduction_factor:g})" if scheduler == "asha"
                else "FIFO (no early stopping)")
             + f", TPE seed {s.seed}"
             + (f", {s.workers_per_trial} Ray Train workers per trial" if s.workers_per_trial > 1 else "")]
    for name, p in space.params.items():
        lines.append(f"  {name:<24} {p.describe():<34} baseline {p.baseline!r}")
    for name in space.fixed_by_command_line:
        lines.append(f"  {name:<24} fixed by the command line to {getattr(space.base, name)!r}")
    return "\n".join(lines)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
