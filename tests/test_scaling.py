"""Scaling out (issue 7): a trial across two Ray Train workers, and a search on a two-node Ray
cluster started with `ray start` on 127.0.0.1, the way a user starts one (tests/test_distributed.py
covers `accelerate launch` with two processes).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tune import internals
from tune.folder import DONE_STATES

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = "val/f1_macro"


def _space(tmp_path: Path, num_samples: int, max_steps: int = 20) -> Path:
    """The demo space on the first 1000 demo pairs (200 val pairs), `max_steps` updates per trial,
    an evaluation every 5."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text(encoding="utf-8"))
    spec["search"].update(num_samples=num_samples, n_startup_trials=num_samples, max_evals=max_steps // 5,
                          grace_period=1, reduction_factor=3, cpus_per_trial=1)
    spec["params"].update(train_file=str(ROOT / "afqmc/demo_data/train.jsonl"), max_train_samples=1000,
                          per_device_batch_size=16, max_steps=max_steps, eval_steps=5, eval_batch_size=256)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _trials(exp_dir: Path) -> list[dict]:
    with open(exp_dir / "trials.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _rows(exp_dir: Path) -> dict[str, list[dict]]:
    return {d.name: [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
            for d in sorted(exp_dir.glob("trial_*"))}


def _assert_complete(exp_dir: Path, num_samples: int) -> None:
    """Every trial once and done, one best checkpoint each, the tables, plots, best model and study."""
    trials = _trials(exp_dir)
    assert len(trials) == num_samples and all(t["state"] in DONE_STATES for t in trials), trials
    for name in ("trials.md", "summary.json", "best_config.yaml", "best_model/model.safetensors", "optuna.db"):
        assert (exp_dir / name).is_file(), name
    assert list((exp_dir / "plots").glob("*.png"))
    for d in exp_dir.glob("trial_*"):
        assert len(list(d.glob("checkpoint_*"))) == 1, d

    import optuna

    study = optuna.load_study(study_name=exp_dir.name, storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    assert len(study.trials) == num_samples
    ended = {"finished": optuna.trial.TrialState.COMPLETE, "stopped early": optuna.trial.TrialState.PRUNED}
    assert sorted(t.state for t in study.trials) == sorted(ended[t["state"]] for t in trials)


@pytest.mark.slow
@pytest.mark.full
@pytest.mark.parametrize("without", ["", "train_cleaner,token_notice"])
def test_a_search_whose_trials_each_span_two_ray_train_workers(tmp_path, without):
    """Also as if Ray Train's private default-callback hook and Ray's token-notice logger were gone
    (tune/internals.py): Ray's plain TorchTrainer, cleaner included, runs the same trials. (The
    third private symbol, the loopback switch, is removed in tests/test_internals.py.)"""
    env = {**os.environ, internals.WITHOUT: without}
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(_space(tmp_path, 2, max_steps=10)), "--name", "w2",
                           "--results_dir", str(tmp_path / "results"), "--workers_per_trial", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "2 Ray Train workers per trial" in proc.stdout
    exp_dir = tmp_path / "results" / "w2"
    _assert_complete(exp_dir, 2)
    for trial, rows in _rows(exp_dir).items():
        assert [r["evals"] for r in rows] == list(range(1, len(rows) + 1)), trial
        for r in rows:
            assert r["workers"] == 2  # the report came from a Train run of two workers...
            assert r["val/num_samples"] == 200  # ... that evaluated the whole val split once between them
            assert r["checkpoint_dir_name"]  # and Tune got a checkpoint with every report
    # Ray Train's own copies are gone, and so is every worker: the second trial could start only
    # because the first one's workers released their CPUs (two workers fill both).
    assert not (exp_dir / "train_runs").exists()
    best = json.loads((exp_dir / "summary.json").read_text())
    assert best["best"]["value"] == pytest.approx(max(float(t[PRIMARY]) for t in _trials(exp_dir)))


# --- a two-node cluster on 127.0.0.1 ------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    """`ray start --head` and `ray start --address` on 127.0.0.1, one CPU each, in a temp dir of their
    own; every process of the cluster is killed at the end (not `ray stop`, which would stop every
    Ray of this user)."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    # RAY_AUTH_MODE=token: a Ray 2.60 cluster requires its token from every node and driver that joins.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    # Without the loopback switch, which a search's main() (called in this process by other tests)
    # sets: it makes Ray refuse a node that joins a cluster. The search started below sets it itself.
    env.pop(internals.LOOPBACK_SWITCH, None)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
                     ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run(["ray", "start", *args, *common], env=env, capture_output=True, text=True,
                                     timeout=180)
            assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=3)  # then SIGKILL: nothing of theirs is read after
        for p in alive:
            p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.full
def test_a_search_on_a_two_node_cluster_on_loopback(tmp_path, two_node_cluster):
    deadline = time.time() + 120
    while True:  # `ray status` lists a node that joined a few seconds later
        status = subprocess.run(["ray", "status", "--address", two_node_cluster["address"]],
                                env=two_node_cluster["env"], capture_output=True, text=True, timeout=120)
        nodes = {line.split()[1] for line in status.stdout.splitlines() if line.strip().startswith("1 node_")}
        if len(nodes) == 2 or time.time() > deadline:
            break
        time.sleep(2)
    assert len(nodes) == 2, status.stdout + status.stderr

    # Two trials at once, one CPU each: one on each node, since each node has one CPU.
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(_space(tmp_path, 2)), "--name", "cluster",
                           "--results_dir", str(tmp_path / "results"), "--address", two_node_cluster["address"],
                           "--scheduler", "fifo"],  # both trials at once, one per node (ASHA would pause the first)
                          cwd=ROOT, env=two_node_cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"at {two_node_cluster['address']}" in proc.stdout and "2 CPUs" in proc.stdout
    exp_dir = tmp_path / "results" / "cluster"
    _assert_complete(exp_dir, 2)
    seen = {trial: {r["node_id"] for r in rows} for trial, rows in _rows(exp_dir).items()}
    used = set().union(*seen.values())
    print(f"node ids per trial: {seen}")
    assert all(len(ids) == 1 for ids in seen.values())  # a trial stays on its node
    assert len(used) == 2 and {f"node_{n}" for n in used} == nodes  # the trials ran on both nodes
