"""tune/scratch.py: a trial's scratch folder is removed when it ends, and one left by a killed
process (which cannot remove it) is removed by the next trial on the machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import ROOT
from tune import scratch

OWNER = """
import os, signal, sys
from tune.scratch import scratch_dir
with scratch_dir(sys.argv[1]) as path:
    print(path, flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does: no cleanup runs
    sys.stdin.read()  # lives until the test closes its stdin
"""


def _owner(tmp_path, name: str, how: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, name, how], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    return proc, proc.stdout.readline().strip()


def test_a_killed_processs_scratch_folder_is_swept_and_a_living_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    dead, dead_dir = _owner(tmp_path, "dead", "die")
    assert dead.wait(timeout=60) == -signal.SIGKILL
    alive, alive_dir = _owner(tmp_path, "alive", "live")
    assert os.path.isdir(dead_dir) and os.path.isdir(alive_dir)  # the killed one could not clean up
    unrelated = tmp_path / "afqmc-someone-else"  # of this prefix but no lock: not ours to judge
    unrelated.mkdir()

    assert scratch.sweep_scratch() == []  # both younger than the grace period: never swept
    assert [str(p) for p in scratch.sweep_scratch(grace_s=0)] == [dead_dir]
    assert not os.path.exists(dead_dir) and os.path.isdir(alive_dir) and unrelated.is_dir()

    with scratch.scratch_dir("next", grace_s=0) as mine:  # a new trial sweeps too, and keeps its own
        assert os.path.isdir(mine) and os.path.isdir(alive_dir)
        assert scratch.sweep_scratch(grace_s=0) == []  # its own lock is held
    assert not os.path.exists(mine)

    alive.stdin.close()  # ends normally: removes its folder itself
    assert alive.wait(timeout=60) == 0 and not os.path.exists(alive_dir)
