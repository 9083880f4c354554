"""The private Ray and Optuna symbols of tune/internals.py exist and behave as used (quick tier):
an upgrade that renames one fails here, not in a user's search."""

from __future__ import annotations

import inspect

import optuna
import pytest
import ray

from tune import internals


def test_installed_versions_are_the_tested_ones():
    for module in (ray, optuna):
        assert module.__version__.startswith(internals.TESTED[module.__name__] + "."), module.__version__


def test_optuna_search_keeps_its_trials_where_the_search_reads_them(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="m", mode="max",
                            study_name="s", storage=storage)
    searcher.suggest("a")
    trial = internals.optuna_trial(searcher, "a")
    assert isinstance(trial, optuna.Trial) and internals.optuna_trial(searcher, "b") is None
    assert not internals.is_closed(searcher, "a")
    optuna.load_study(study_name="s", storage=storage).tell(trial.number, state=optuna.trial.TrialState.PRUNED)
    internals.close(searcher, "a")
    assert internals.is_closed(searcher, "a")
    searcher.on_trial_complete("a", {"m": 1.0})  # Ray's own method: a closed trial is not told again
    assert optuna.load_study(study_name="s", storage=storage).trials[0].state == optuna.trial.TrialState.PRUNED
    assert internals.known_trials(searcher) == [trial]
    study = optuna.load_study(study_name="s", storage=storage)
    running = study.ask()
    frozen = study.trials[-1]
    internals.adopt(searcher, "c", optuna.Trial(study, internals.storage_trial_id(frozen)))
    assert internals.optuna_trial(searcher, "c").number == running.number == frozen.number


def test_ray_train_and_placement_group_symbols():
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.util.placement_group import PlacementGroup

    assert inspect.isclass(PlacementGroupCleanerCallback)
    assert callable(getattr(TorchTrainer, "_create_default_callbacks"))
    trainer = internals.torch_trainer_without_placement_group_cleaner()
    assert issubclass(trainer, TorchTrainer) and "_create_default_callbacks" in vars(trainer)
    group = PlacementGroup(ray.PlacementGroupID.from_hex("ab" * 18))
    assert group.id.hex() == "ab" * 18


def test_the_token_auth_notice_comes_from_the_logger_we_quiet():
    import importlib

    module = importlib.import_module(internals.TOKEN_AUTH_LOGGER)
    assert module.logger.name == internals.TOKEN_AUTH_LOGGER and "Token authentication is enabled" in \
        inspect.getsource(module._warn_token_auth_enabled)


def test_local_ray_switches_are_read_by_ray():
    from ray._private import ray_constants, worker

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == internals.LOOPBACK_SWITCH
    for kwarg in internals.local_ray_init_kwargs():
        assert f'kwargs.pop("{kwarg}"' in inspect.getsource(worker.init), kwarg


@pytest.mark.parametrize("name", ["ray", "optuna"])
def test_pyproject_pins_the_tested_range(name):
    from conftest import ROOT

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    major, minor = internals.TESTED[name].split(".")
    assert f">={major}.{minor},<{major}.{int(minor) + 1}" in text


def test_a_scheduler_reaches_the_controller_that_marks_trials_for_the_snapshot():
    """tune.scheduler stops PAUSED trials through the wrapper Ray gives schedulers; the controller
    behind it must still have the method that puts the trial's new status into Ray's snapshot."""
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    assert callable(getattr(TuneController, "_mark_trial_to_checkpoint"))
    assert callable(getattr(TuneController, "stop_trial"))
    marked, stopped = [], []
    controller = type("C", (), {"stop_trial": lambda self, t: stopped.append(t),
                                "_mark_trial_to_checkpoint": lambda self, t: marked.append(t),
                                "search_alg": None, "get_trials": None, "get_live_trials": None,
                                "_set_trial_status": None, "pause_trial": None, "_schedule_trial_save": None})()
    wrapper = TrialRunnerWrapper(controller, trial_executor=None,
                                 runner_whitelist_attr={"stop_trial", "get_trials", "get_live_trials", "search_alg"})
    internals.stop_paused_trial(wrapper, "t")
    assert stopped == ["t"] and marked == ["t"]


def test_the_wrapper_ray_gives_schedulers_refiles_a_trial_through_the_controller():
    """tune.scheduler re-files a retried trial that waited at a rung as PAUSED through the wrapper
    Ray builds for schedulers (TuneController._wrapped): its whitelist must still pass
    `_set_trial_status` on to the controller."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    filed = []
    controller = type("C", (), {"_set_trial_status": lambda self, t, status: filed.append((t, status)),
                                "search_alg": None, "get_trials": None, "get_live_trials": None, "stop_trial": None,
                                "pause_trial": None, "_schedule_trial_save": None, "_resource_updater": None})()
    internals.refile_paused(TuneController._wrapped(controller), "t")
    assert filed == [("t", Trial.PAUSED)]


def test_random_sampler_draws_what_tpes_start_up_trials_draw():
    """search.sampler: random (TrialSeededRandom, seeded through `seed_random`) suggests trial k as
    TPE's k-th seeded start-up trial, whatever was drawn before: random and TPE start alike."""
    from tune.searcher import TrialSeededRandom, TrialSeededTPE

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "w": optuna.distributions.FloatDistribution(1.0, 4.0), "c": optuna.distributions.CategoricalDistribution([0, 1])}

    def draws(sampler, numbers: list[int]) -> list[dict]:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=sampler, direction="maximize")
        out = []
        for _ in range(max(numbers) + 1):
            trial = study.ask(space)
            study.tell(trial, trial.params["w"])
            out.append(trial.params)
        return [out[n] for n in numbers]

    tpe = draws(TrialSeededTPE(seed=3, n_startup_trials=4, multivariate=True), [0, 1, 2, 3])
    assert draws(TrialSeededRandom(seed=3), [0, 1, 2, 3]) == tpe
    assert draws(TrialSeededRandom(seed=4), [0])[0] != tpe[0]
