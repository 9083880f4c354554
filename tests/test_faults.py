"""Faults in a single run: out of memory, a save that is interrupted or hits a full disk, and the
security defaults. (Faults of a search are tested with the search.)"""

import errno
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

import afqmc.checkpoint as ckpt_mod
import afqmc.modeling as modeling
import afqmc.train as train_mod
from afqmc.checkpoint import CheckpointError, atomic_directory, resolve_directory
from afqmc.config import ConfigError, TrainConfig, from_dict, load_config
from afqmc.predict import load_saved_model
from afqmc.train import TrainingError, train, train_with_oom_retry


def oom_above(monkeypatch, max_batch: int) -> list[int]:
    """Make the model's forward raise the CUDA out-of-memory error for batches above `max_batch`."""
    seen = []
    original = train_mod.load_model

    def load(cfg, tokenizer):
        model = original(cfg, tokenizer)
        forward = model.forward

        def limited(*args, **kwargs):
            n = kwargs["input_ids"].shape[0]
            if model.training:
                seen.append(n)
                if n > max_batch:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (simulated)")
            return forward(*args, **kwargs)

        model.forward = limited
        return model

    monkeypatch.setattr(train_mod, "load_model", load)
    return seen


@pytest.mark.slow  # trains
def test_out_of_memory_retries_with_half_batch_and_same_effective_batch(tiny_cfg, monkeypatch):
    seen = oom_above(monkeypatch, max_batch=8)
    summary = train_with_oom_retry(tiny_cfg(per_device_batch_size=32, gradient_accumulation_steps=1,
                                            max_steps=3, eval_steps=3), progress=False)
    assert seen[:3] == [32, 16, 8]  # 32 and 16 failed at once, 8 fits
    assert (summary["per_device_batch_size"], summary["gradient_accumulation_steps"]) == (8, 4)
    assert summary["steps"] == 3 and set(seen[2:]) == {8}
    assert len(seen[2:]) == 3 * 4  # 3 updates of 4 micro-batches: the effective batch stayed 32


@pytest.mark.slow  # trains
def test_out_of_memory_at_batch_one_fails_with_the_reason(tiny_cfg, monkeypatch):
    oom_above(monkeypatch, max_batch=0)
    with pytest.raises(TrainingError, match="out of memory even with per_device_batch_size 1"):
        train_with_oom_retry(tiny_cfg(per_device_batch_size=4, max_steps=2), progress=False)


@pytest.mark.slow  # trains
def test_other_errors_are_not_retried(tiny_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, report, **kw: calls.append(cfg) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train_with_oom_retry(tiny_cfg(), progress=False)
    assert len(calls) == 1


@pytest.mark.slow  # trains
def test_interrupted_save_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(max_steps=4, eval_steps=2)
    original = ckpt_mod.save_model_dir
    saves = []

    def dying_save(path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # the 2nd evaluation's checkpoint: killed half-way through
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{")  # a torn file
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(train_mod, "save_model_dir", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    checkpoint = tmp_path / "run" / "checkpoint"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 2  # the previous checkpoint, complete
    assert not list((tmp_path / "run").glob("checkpoint.tmp-*"))  # the torn copy is gone
    model, _, saved_cfg = load_saved_model(checkpoint)
    assert saved_cfg.max_steps == 4
    monkeypatch.setattr(train_mod, "save_model_dir", original)
    summary = train(cfg, resume_from=str(checkpoint), progress=False)
    assert summary["steps"] == 4 and summary["evals"] == 2


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    target.rename(tmp_path / "checkpoint.old")  # what a crash after the first rename leaves
    assert (resolve_directory(target) / "a").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
    assert (resolve_directory(target) / "a").read_text() == "2" and not (tmp_path / "checkpoint.old").exists()


@pytest.mark.slow  # trains
def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_previous(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(max_steps=4, eval_steps=2)
    original = ckpt_mod.save_model_dir
    calls = []

    def full_disk(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(train_mod, "save_model_dir", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint \(No space left on device\); "
                                              r"the previous version is intact"):
        train(cfg, progress=False)
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    load_saved_model(tmp_path / "run" / "best_model")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("learning_rate: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_trust_remote_code_is_off_unless_asked(tmp_path, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained", fake)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    for asked in (False, True):
        with pytest.raises(Stop):
            modeling.load_tokenizer(from_dict({"model_name_or_path": str(tmp_path / "m"), "trust_remote_code": asked}))
        assert seen["trust_remote_code"] is asked
    assert TrainConfig().trust_remote_code is False


@pytest.mark.slow  # trains
def test_saved_weights_are_safetensors_only(tiny_cfg, tmp_path):
    train(tiny_cfg(max_steps=2, eval_steps=2), progress=False)
    files = {p.name for p in (tmp_path / "run" / "best_model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)


@pytest.mark.parametrize("path, message", [
    ("does/not/exist/model", "does not exist"),
    (".", "is not a model directory"),
])
def test_bad_model_paths(path, message):
    with pytest.raises(ConfigError, match=f"model_name_or_path.*{message}"):
        modeling.load_tokenizer(from_dict({"model_name_or_path": path}))


# Starts Ray as `python tune/search.py` does (local, no --address), runs a task so that a worker process
# exists too, then lists every listening socket of this process and its descendants.
LISTENERS = """
import json, sys
import tune.search as search
search.ray_environment(None)  # as main() does: the loopback switch before Ray is imported
import psutil, ray
import tempfile, pathlib
search._init_ray(None, pathlib.Path(tempfile.mkdtemp()), verbose=False)
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()
listening = []
for p in [me, *me.children(recursive=True)]:
    try:
        listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
print(json.dumps(listening))
ray.shutdown()
"""


@pytest.mark.slow
def test_the_local_ray_of_a_search_listens_on_loopback_only():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", LISTENERS], cwd=root, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listening = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {name for name, _, _ in listening} >= {"gcs_server", "raylet"}  # Ray's own servers were seen
    for name, ip, port in listening:
        addr = ipaddress.ip_address(ip)
        addr = getattr(addr, "ipv4_mapped", None) or addr
        assert addr.is_loopback, f"{name} listens on {ip}:{port}"
    assert "dashboard" not in " ".join(name for name, _, _ in listening).lower()
