"""The search on the libraries' public APIs (tune/internals.py): the supported ranges, and each of the
few private Ray symbols left switched off with its public fallback (quick tier, plus one real search)."""

from __future__ import annotations

import re
import subprocess
import sys

import optuna
import pytest
import ray

from conftest import ROOT
from tune import internals


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("name", ["ray", "optuna"])
def test_pyproject_states_a_range_from_the_oldest_tested_release(name):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    spec = re.search(rf'"{name}(\[[^\]]*\])?>=([\d.]+),<(\d+)"', text)
    assert spec, f"no {name} range in pyproject.toml"
    low, high = _version(spec.group(2)), int(spec.group(3))
    assert low <= _version(internals.OLDEST[name])  # .ci/run tests OLDEST: the range starts there or before
    installed = _version({"ray": ray, "optuna": optuna}[name].__version__)
    assert low <= installed and installed[0] < high


def test_ci_tests_the_oldest_releases():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for name, version in internals.OLDEST.items():
        assert re.search(rf'"{name}(\[[^\]]*\])?=={re.escape(version)}"', ci), name


def test_the_table_lists_at_most_three_private_symbols_each_with_a_fallback():
    table = internals.__doc__.split("|---|---|---|---|")[1].split("\n\n")[0]
    rows = [r for r in table.strip().splitlines() if r.startswith("| `")]
    assert 1 <= len(rows) <= 3 and all(r.count("|") == 5 and r.split("|")[4].strip() for r in rows)


def test_without_the_train_cleaner_trials_use_rays_plain_torch_trainer(monkeypatch):
    from ray.train.torch import TorchTrainer

    monkeypatch.setenv(internals.WITHOUT, "train_cleaner")
    assert internals.torch_trainer() is TorchTrainer
    monkeypatch.delenv(internals.WITHOUT)
    # and where Ray has no such cleaner (before 2.5x) or its module moved, the same
    monkeypatch.setitem(sys.modules, "ray.train.v2._internal.callbacks.placement_group_callback", None)
    assert internals.torch_trainer() is TorchTrainer


def test_without_the_token_notice_logger_nothing_is_touched(monkeypatch):
    import logging

    logger = logging.getLogger(internals.TOKEN_AUTH_LOGGER)
    logger.setLevel(logging.NOTSET)
    monkeypatch.setenv(internals.WITHOUT, "token_notice")
    internals.quiet_token_auth_notice()
    assert logger.level == logging.NOTSET
    monkeypatch.delenv(internals.WITHOUT)
    internals.quiet_token_auth_notice()
    assert logger.level == logging.ERROR


def test_the_loopback_check_refuses_any_other_address(monkeypatch):
    monkeypatch.setattr(internals, "listening_addresses", lambda pids: {"127.0.0.1", "::ffff:127.0.0.1", "::1"})
    internals.check_loopback()
    monkeypatch.setattr(internals, "listening_addresses", lambda pids: {"127.0.0.1", "::"})
    with pytest.raises(RuntimeError, match="not on loopback only"):
        internals.check_loopback()


@pytest.mark.slow
def test_without_the_loopback_switch_a_local_search_refuses_before_any_trial(tmp_path):
    """The switch removed (as if Ray stopped reading it): on a machine with a network address, Ray
    listens on it, and the search must stop with a clear error, having run nothing; where the machine
    has no other address Ray stays on loopback and the search may run."""
    import os

    env = {**os.environ, internals.WITHOUT: "loopback_switch"}
    env.pop(internals.LOOPBACK_SWITCH, None)
    space = tmp_path / "space.yaml"
    space.write_text((ROOT / "tune" / "spaces" / "demo.yaml").read_text(encoding="utf-8").replace(
        "num_samples: 8", "num_samples: 1").replace("max_evals: 6", "max_evals: 1").replace(
        "grace_period: 2", "grace_period: 1"), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "tune" / "search.py"), "--space", str(space), "--name", "x",
                           "--results_dir", str(tmp_path), "--max_steps", "5", "--eval_steps", "5",
                           "--max_train_samples", "200", "--tiny_hidden_size", "32", "--tiny_num_layers", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    exposed = "not on loopback only" in proc.stderr
    if exposed:
        assert proc.returncode == 2 and not list((tmp_path / "x").glob("trial_*")), proc.stderr[-2000:]
    else:  # no address but loopback here: the search ran, on loopback
        assert proc.returncode == 0, proc.stderr[-2000:]
