"""Every private Ray and Optuna symbol the search uses, in one place, each with the reason.

An upgrade of Ray or Optuna may rename or remove any of these without notice. pyproject.toml pins
both to the tested range (TESTED below), and tests/test_internals.py imports and checks each one
in the quick test tier, so that an upgrade fails loudly in CI rather than in a user's search.

| symbol | library | why there is no public way |
|---|---|---|
| `OptunaSearch._ot_trials` | Ray Tune | the Optuna trial of a Ray trial: to report each evaluation as an intermediate value, tell PRUNED when ASHA stopped it, and note why a trial failed |
| `OptunaSearch._ot_trials` (written) | Ray Tune | after the driver was killed, a trial the study holds as RUNNING that Ray's last snapshot never saw is handed to the next Ray trial (`adopt`), so that it is not left RUNNING forever nor sampled twice |
| `TPESampler._rng`, `TPESampler._random_sampler._rng` | Optuna | seeding the sampler per trial (with the search's seed and the trial's number), so that a trial's parameters do not depend on how many were drawn before a driver's kill and resume; `reseed_rng()` (public) only reseeds at random |
| `RandomSampler._rng` | Optuna | the same per-trial seeding for `search.sampler: random` (`seed_random`) |
| `FrozenTrial._trial_id` | Optuna | the storage id that `optuna.Trial(study, trial_id)` (public) takes, to continue a RUNNING trial of the study |
| `OptunaSearch._completed_trials` | Ray Tune | the trials the searcher has closed: a PRUNED one is closed here, not by `OptunaSearch.on_trial_complete` (which would tell COMPLETE) |
| `TorchTrainer._create_default_callbacks` | Ray Train V2 | the only place where Train adds its placement-group cleaner (next row) |
| `ray.train.v2._internal.callbacks.placement_group_callback.PlacementGroupCleanerCallback` | Ray Train V2 | its detached actor asks Ray's state API (served by the dashboard, which the local Ray does not run) whether the run is alive, warns every second, never exits |
| `ray.util.placement_group.PlacementGroup(PlacementGroupID.from_hex(...))` | Ray | rebuilding a handle from the id a Train worker reported, to remove that group when Tune stops the trial |
| `ray.init(_node_ip_address=...)` | Ray | the only way to make a local node take 127.0.0.1 as its address (with the switch below) |
| `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (environment) | Ray | read at import: makes Ray on Linux bind its node to 127.0.0.1 as it does on macOS, not to every interface |
| `experiment_state-*.json` (file names) | Ray Tune | Ray's snapshots of an experiment: whether a search got as far as Ray's first save (`ray_saved_state`), besides `Tuner.can_restore` which only sees `tuner.pkl` |
| `Trial.experiment_tag` (its format) | Ray Tune | its head `3_...` is Ray's counter of the suggestions (from 1), the only order Ray keeps of the trials it created; the search's trial number is the study's, which counts the same suggestions from 0 (`suggestion_index`) |
| `TuneController._mark_trial_to_checkpoint` (through the scheduler's `TrialRunnerWrapper._tune_controller`) | Ray Tune | `stop_trial` of a PAUSED trial (tune/scheduler.py stops those its rungs have no place for) returns before marking the trial for Ray's snapshot, which then keeps it PAUSED: the results would show it unfinished and a resume would run it again |
| `TuneController._set_trial_status` (whitelisted for schedulers by `TuneController._wrapped`) | Ray Tune | a trial whose worker died while it waited at an ASHA rung is filed by Ray as PENDING before `on_trial_add` (`_requeue_trial`); to make it wait again the scheduler must re-file it as PAUSED: `Trial.set_status` alone leaves Ray's status sets stale and Ray's next step asserts (`refile_paused`) |
| the logger `ray._private.authentication.authentication_token_setup` | Ray | it prints a notice that token authentication is on (Ray's default for a local cluster) at every start, on the console whatever the handlers; raised to ERROR unless `--verbose` |

The Optuna study itself is reached through its public API: the search passes its storage in and
loads the study by name (`StudySearch.study`), never through `OptunaSearch._ot_study`.
"""

from __future__ import annotations

from typing import Any

TESTED = {"ray": "2.60", "optuna": "5.0"}  # major.minor of the versions these were checked with
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Ray Tune's snapshots of the experiment, in its folder


def ray_saved_state(experiment_dir) -> bool:
    """Whether Ray saved a search's state (its Tuner and a snapshot of the experiment) to restore from."""
    from pathlib import Path

    from ray import tune

    return tune.Tuner.can_restore(str(experiment_dir)) and any(Path(experiment_dir).glob(EXPERIMENT_STATE_GLOB))


def suggestion_index(trial) -> int:
    """0, 1, ... in the order the searcher suggested the Ray trials (their ids are random): Ray's
    counter, which heads the experiment tag (`3_class_weights=2.31,...`) and counts from 1."""
    return int(trial.experiment_tag.split("_", 1)[0]) - 1


TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_token_auth_notice() -> None:
    """Ray's notice that token authentication is on (its default) at every start: not on the terminal."""
    import logging

    logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)


def local_ray_init_kwargs() -> dict[str, Any]:
    """What `ray.init` needs so that a private local Ray listens on 127.0.0.1 only."""
    return {"_node_ip_address": "127.0.0.1"}


def optuna_trial(searcher, trial_id: str):
    """The Optuna trial (`optuna.Trial`) behind a Ray trial of an OptunaSearch, or None."""
    return searcher._ot_trials.get(trial_id)


def known_trials(searcher) -> list:
    """The Optuna trials (`optuna.Trial`) the searcher has handed to Ray trials."""
    return list(searcher._ot_trials.values())


def adopt(searcher, trial_id: str, optuna_trial) -> None:
    """Hand an existing Optuna trial to a Ray trial: OptunaSearch then reports and tells it."""
    searcher._ot_trials[trial_id] = optuna_trial


def seed_tpe(sampler, seed: list[int]) -> None:
    """Seed a TPESampler's two random streams (its own, and its RandomSampler's for the start-up trials)."""
    sampler._rng.rng.seed(seed)
    sampler._random_sampler._rng.rng.seed(seed)


def seed_random(sampler, seed: list[int]) -> None:
    """Seed a RandomSampler's stream (the one seed_tpe seeds in TPE's start-up sampler)."""
    sampler._rng.rng.seed(seed)


def storage_trial_id(frozen) -> int:
    """The storage's id of a FrozenTrial, which `optuna.Trial(study, id)` takes (its number is not it)."""
    return frozen._trial_id


def is_closed(searcher, trial_id: str) -> bool:
    return trial_id in searcher._completed_trials


def close(searcher, trial_id: str) -> None:
    """Mark a Ray trial as done for the searcher (its Optuna trial was told by the caller)."""
    searcher._completed_trials.add(trial_id)


def torch_trainer_without_placement_group_cleaner():
    """Ray Train's TorchTrainer without its placement-group cleaner (see the table above). The search
    removes a stopped trial's worker group itself (tune.callbacks.ReleaseTrainWorkers); a run that ends
    normally removes it as usual."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def remove_placement_group(hex_id: str) -> None:
    """Remove the placement group whose id a worker reported (as `group.id.hex()`)."""
    import ray
    from ray.util.placement_group import PlacementGroup

    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(hex_id)))


def stop_paused_trial(tune_controller, trial) -> None:
    """Ray's `stop_trial` of a PAUSED trial, and the trial's new status in Ray's next snapshot of the
    experiment (see the table above). `tune_controller` is what a scheduler is given."""
    tune_controller.stop_trial(trial)
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:  # not in tune.scheduler.replay's stand-in controller
        mark(trial)


def refile_paused(tune_controller, trial) -> None:
    """Make a trial Ray has filed as PENDING (a retried one) PAUSED, in Ray's status sets too (see the
    table above). `tune_controller` is what a scheduler is given."""
    from ray.tune.experiment import Trial

    tune_controller._set_trial_status(trial, Trial.PAUSED)
