"""Scratch folders for the trials, which outlive no process.

A trial trains in a scratch folder of the temporary directory (its checkpoints go from there to the
experiment through Ray) and removes it when it ends. A process killed with SIGKILL (a worker killed
by the OOM killer or by a node going away, a search's driver killed) cannot remove its folder,
which holds the trial's last checkpoints: gigabytes for MacBERT with its optimizer state. So each
folder holds a lock (flock) that the kernel releases when its process dies, and each new scratch
folder first removes the folders of this kind whose lock nobody holds. Folders are local to a
machine, and so is the sweep; without flock (not POSIX) nothing is swept.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator


SCRATCH_PREFIX = "afqmc-"
SCRATCH_LOCK = ".owner.lock"  # held (flock) by the process that uses the folder, for as long as it lives
SCRATCH_GRACE_S = 60.0  # a folder younger than this is never swept: its owner may not hold its lock yet


@contextlib.contextmanager
def scratch_dir(prefix: str, grace_s: float = SCRATCH_GRACE_S) -> Iterator[str]:
    """A fresh folder in the temporary directory, locked for this process and removed on exit; the
    folders of dead processes are swept first (the module docstring says why)."""
    sweep_scratch(grace_s)
    path = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{prefix}-")
    lock = _hold_lock(Path(path) / SCRATCH_LOCK)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if lock is not None:
            lock.close()


def sweep_scratch(grace_s: float = SCRATCH_GRACE_S) -> list[Path]:
    """Remove the scratch folders (of `scratch_dir`, in the temporary directory) whose process died:
    their lock is free and older than `grace_s`. Returns the folders removed."""
    removed = []
    for lock_path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*/{SCRATCH_LOCK}"):
        try:
            if time.time() - lock_path.stat().st_mtime < grace_s:
                continue
            lock = _hold_lock(lock_path, create=False)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        if lock is None:  # held: its process lives
            continue
        try:
            shutil.rmtree(lock_path.parent, ignore_errors=True)
            removed.append(lock_path.parent)
        finally:
            lock.close()
    return removed


def _hold_lock(path: Path, create: bool = True):
    """The open file at `path` under an exclusive flock, or None if another process holds it (or the
    platform has no flock: then nothing is swept)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fh = open(path, "a" if create else "r+b")  # noqa: SIM115 -- held open for the folder's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh
