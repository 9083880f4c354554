"""The Ray Tune trainable: one trial is one call of `afqmc.train.train` with sampled hyperparameters.

Everything here runs in a trial's process (or its Ray Train workers), never in the driver: the
driver's searcher is tune/searcher.py, its callbacks tune/callbacks.py. It lives in its own module
(not in search.py, which runs as `__main__`) so Ray pickles it by reference and the workers import
it, like any library function.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import ray
import torch
from ray import tune

from afqmc.config import TrainConfig, from_dict
from afqmc.train import TaskData, TrainingError, train, train_with_oom_retry
from tune import internals
from tune.folder import TRAIN_GROUP, failure_report
from tune.scratch import scratch_dir
from tune.space import trial_config


class SharedData:
    """The search's TaskData in Ray's object store, read once per trial process: a process that Tune
    reuses for its next trial (reuse_actors) keeps what it read, tokenizer included, instead of
    deserializing the data again for every trial.

    Made in the driver (`SharedData(ray.put(data))`); `tune.with_parameters` hands every trial this
    small handle, whose `get()` fetches the data at the first call in a process.
    """

    _cache: dict[str, TaskData] = {}  # per process: the object's id -> the data (one search's, at most)

    def __init__(self, ref: "ray.ObjectRef"):
        self.ref = ref

    def get(self) -> TaskData:
        key = self.ref.hex()
        if key not in SharedData._cache:
            SharedData._cache.clear()  # another search's data (a process is never reused across searches)
            SharedData._cache[key] = ray.get(self.ref)
        return SharedData._cache[key]


def run_trial(config: dict[str, Any], data: TaskData | SharedData, base: dict[str, Any], workers: int = 1,
              worker_resources: dict[str, float] | None = None, train_storage: str | None = None,
              log_dir: str | None = None) -> None:
    """Train with `base` (the search's fixed fields, tune.space.search_base) updated by `config` (the
    sampled ones): tune.space.trial_config.

    `data` arrives through Ray's object store (`tune.with_parameters`, as a SharedData handle or
    itself): the driver tokenized it once, so a trial never reads or tokenizes the data files. With `workers` > 1 the trial is a
    Ray Train `TorchTrainer` of that many workers (`_run_workers`); this function then only drives
    it, and reports to Tune exactly what a one-process trial reports; `worker_resources` are each
    worker's ({"CPU": n, "GPU": g}) and `train_storage` a folder every node can reach (the
    experiment's) for Train's copy of the checkpoints. With `log_dir`, what the trial prints goes to
    `log_dir/trial_<id>.log` instead of Ray's forwarding to the driver's terminal.
    """
    trial_id = tune.get_context().get_trial_id()
    data = data.get() if isinstance(data, SharedData) else data
    _freeze_long_lived()
    with trial_output(log_dir, f"trial_{trial_id}"):
        _run_trial(config, data, base, workers, worker_resources, train_storage, trial_id, log_dir)


_frozen: list[bool] = []  # set once this process has frozen its long-lived objects


def _freeze_long_lived() -> None:
    """Once per trial process, before its first training: move what is alive now (the imported
    libraries, the search's data) out of the garbage collector's reach (gc.freeze). Accelerate's
    find_executable_batch_size (train_with_oom_retry) runs a full gc.collect() before every
    attempt, which would otherwise walk those half a million objects at every trial (0.5 s). Only
    once: what a trial leaves behind is collected as usual, never frozen."""
    if not _frozen:
        gc.freeze()
        _frozen.append(True)


@contextlib.contextmanager
def trial_output(log_dir: str | None, name: str) -> Iterator[None]:
    """The output of a trial process into `log_dir/name.log` (appended: a resumed trial continues it)."""
    if log_dir is None:
        yield
        return
    with open(Path(log_dir) / f"{name}.log", "a", encoding="utf-8", buffering=1) as fh, \
            contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield


def _run_trial(config: dict[str, Any], data: TaskData, base: dict[str, Any], workers: int,
               worker_resources: dict[str, float] | None, train_storage: str | None, trial_id: str,
               log_dir: str | None) -> None:
    cfg = trial_config(from_dict(base, source=f"trial {trial_id}"), config, source=f"trial {trial_id}")
    logging.getLogger("ray").setLevel(logging.WARNING)  # not one "Checkpoint successfully created" per eval
    # `node_id` says which Ray node ran the trial (on a cluster). train() reports its own schedule
    # (planned_evals), which tells a trial that ran its course from one that ASHA stopped.
    extra = {"node_id": ray.get_runtime_context().get_node_id()}
    checkpoint = tune.get_checkpoint()  # set when Ray resumes or retries this trial
    if workers > 1:
        _run_workers(cfg, data, workers, worker_resources or {"CPU": 1}, extra, checkpoint, train_storage, trial_id,
                     log_dir)
        return
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # one trial per core(s) it was given, not every core

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        # Ray copies the checkpoint directory into the trial's storage before returning, so
        # train() may overwrite it at the next evaluation.
        tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    # train_with_oom_retry: trials that share a GPU halve their batch (and double the accumulation)
    # rather than fail when the card runs out of memory.
    _train_or_fail(cfg, data, checkpoint, report, lambda failure: tune.report({**failure, **extra}),
                   train_with_oom_retry, prefix=trial_id)


def _train_or_fail(cfg: TrainConfig, data: TaskData, checkpoint, report, report_failure, train_fn,
                   prefix: str) -> None:
    """Run `train_fn` (from `checkpoint` if given) in a scratch output folder; a TrainingError ends
    in `report_failure(metrics)` instead of an exception.

    A NaN/inf loss, or out of memory even at batch 1: running it again cannot help. The trial ends
    normally with a last report that says why, so that Ray does not retry it (its retries,
    FailureConfig, are for workers that died); the table shows it as failed and the searcher records
    it as FAIL in the study. ASHA and the searcher need their metrics in every report: NaN, which
    neither counts.
    """
    last: dict[str, Any] = {}

    def report_and_note(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        last.update(metrics)
        report(metrics, checkpoint_dir)

    # A local scratch directory, outside the trial's working directory: Ray copies every reported
    # checkpoint into the experiment, and would also sync anything left in the working directory.
    with scratch_dir(prefix) as work_dir:
        try:
            run_cfg = cfg.replace(output_dir=work_dir)
            if checkpoint is None:
                train_fn(run_cfg, report_and_note, data=data, progress=False)
            else:
                with checkpoint.as_directory() as resume_dir:
                    train_fn(run_cfg, report_and_note, data=data, resume_from=resume_dir, progress=False)
        except TrainingError as exc:
            report_failure(failure_report(str(exc), last))


# --- a trial across several workers (Ray Train) ------------------------------------------------


def _run_workers(cfg: TrainConfig, data: TaskData, workers: int, per_worker: dict[str, float],
                 extra: dict[str, Any], checkpoint, train_storage: str | None, trial_id: str,
                 log_dir: str | None = None) -> None:
    """The trial as a Ray Train `TorchTrainer` of `workers` workers, each running `train()` under
    Accelerate (which joins the process group Ray set up: gloo on CPU, NCCL on GPUs).

    The workers' reports (the main worker's checkpoint) reach this driver through a forwarding
    callback and a queue; it reports each to Tune with its checkpoint, so ASHA, the searcher, the
    trial's checkpoints, resume and the results tables are those of a one-process trial. A worker
    that dies fails the Train run and so this trial, which Tune retries from its last checkpoint
    (Train itself does not retry: one place decides).
    """
    from ray import train as ray_train
    from ray.util.queue import Queue

    per_worker = {k: v for k, v in per_worker.items() if v}
    queue, ack = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    run_name = f"{trial_id}-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as scratch:  # Train's storage, unless given: a scratch folder
        storage = train_storage or scratch.enter_context(scratch_dir("train"))
        trainer = internals.torch_trainer()(
            _worker_loop,
            # The Tune checkpoint to go on from (a retried trial, or one that waited at an ASHA rung) goes
            # in the loop's config: Train V2 refuses `resume_from_checkpoint`.
            train_loop_config={"cfg": cfg.to_dict(), "data": ray.put(data), "extra": extra, "trial_id": trial_id,
                               "threads": max(1, int(per_worker.get("CPU", 1))), "log_dir": log_dir,
                               "resume": None if checkpoint is None else (checkpoint.path, checkpoint.filesystem)},
            scaling_config=ray_train.ScalingConfig(num_workers=workers, use_gpu=bool(per_worker.get("GPU")),
                                                   resources_per_worker=per_worker),
            run_config=ray_train.RunConfig(
                name=run_name, storage_path=storage, callbacks=[_forward_reports_callback(queue, ack)],
                failure_config=ray_train.FailureConfig(max_failures=0),
                checkpoint_config=ray_train.CheckpointConfig(num_to_keep=None),  # this driver deletes each once copied
            ),
        )
        outcome: dict[str, BaseException] = {}

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the trial's thread below
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
        thread.start()
        try:
            _forward_reports(thread, queue, ack)
        finally:
            shutil.rmtree(Path(storage) / run_name, ignore_errors=True)
    if "error" in outcome:
        raise outcome["error"]


def _forward_reports(thread: threading.Thread, queue, ack) -> None:
    """While the Train run's thread lives: each report from the queue to Tune (with its checkpoint,
    deleted once Tune has its copy), then an acknowledgement that lets the Train run go on."""
    from ray.util.queue import Empty

    while thread.is_alive() or not queue.empty():
        try:
            metrics, path = queue.get(timeout=0.5)
        except Empty:
            continue
        try:
            tune.report(metrics, checkpoint=None if path is None else tune.Checkpoint.from_directory(path))
        finally:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)  # Tune has its copy now
            ack.put(True)
    thread.join()


def _forward_reports_callback(queue, ack):
    """A Ray Train `UserCallback` (public with Train V2, which search.py switches on for Ray releases
    before 2.51; defined here, not at import, so that importing this module needs no Train V2) that
    runs in the Train controller: it sends each report (the workers' metrics, the checkpoint's path)
    to the trial's driver and waits until it has copied the checkpoint."""

    class ForwardReports(ray.train.UserCallback):
        def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
            queue.put((dict(metrics[0]), None if checkpoint is None else checkpoint.path))
            ack.get(timeout=3600)

    return ForwardReports()


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: `train()` on its shard; every worker reports (Train's report is a
    barrier), the main one with the checkpoint."""
    from ray import train as ray_train

    ctx = ray_train.get_context()
    for name in ("ray", "accelerate"):  # not a line per checkpoint and report from every worker
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = from_dict(config["cfg"], source=f"trial {config['trial_id']} worker {ctx.get_world_rank()}")
    extra = config["extra"]
    torch.set_num_threads(config["threads"])

    # The workers' placement group, named in every report: if Tune stops this trial (ASHA), it ends
    # its driver at once, and the search removes the group (ReleaseTrainWorkers) - Ray Train's own
    # cleaner needs the state API of the dashboard, which the search does not run.
    group = ray.util.get_current_placement_group()
    extra = {**extra, "workers": ctx.get_world_size(), TRAIN_GROUP: group.id.hex() if group else None}

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ray_train.report({**metrics, **extra},
                         checkpoint=None if checkpoint_dir is None else ray_train.Checkpoint.from_directory(checkpoint_dir))

    with trial_output(config.get("log_dir"), f"trial_{config['trial_id']}-worker{ctx.get_world_rank()}"):
        # A restart of this Train run goes on from its own latest report; its first start from the trial's.
        checkpoint = ray_train.get_checkpoint()
        if checkpoint is None and config.get("resume"):
            checkpoint = ray_train.Checkpoint(*config["resume"])
        _train_or_fail(cfg, ray.get(config["data"]), checkpoint, report,
                       lambda failure: ray_train.report({**failure, **extra}), train,
                       prefix=f"{config['trial_id']}-{ctx.get_world_rank()}")
