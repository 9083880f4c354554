"""Helpers shared by the benchmarks: paths, the tiny-on-AFQMC config, tables, JSON output.

Not a benchmark itself. The leading underscore keeps the name clear of any installed package
(each benchmark runs as a script, so benchmarks/ is first on sys.path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a fresh clone without `pip install -e .` still finds afqmc/ and tune/
    sys.path.insert(1, str(REPO))
# ... and so do the processes started from here: Ray's trial workers (which see the driver's script
# folder and working directory, neither of them the repository) and the peer's worker process.
if str(REPO) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)

DEFAULT_DATA = REPO.parent / "shared" / "data"  # never copied into the repository


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="a small run (about a minute on 2 CPU cores)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"the shared data folder holding afqmc/train.jsonl and vocab/ (default: {DEFAULT_DATA})")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures to this JSON file")
    p.add_argument("--workdir", type=Path, help="scratch folder for run outputs (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: what a search trial with cpus_per_trial 1 uses; and on a "
                        "shared machine 2 threads against other busy processes ran 8x slower, not faster)")
    return p


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def shared_paths(data_dir: Path) -> dict[str, str]:
    train = Path(data_dir) / "afqmc" / "train.jsonl"
    vocab = Path(data_dir) / "vocab" / "bert-base-chinese-vocab.txt"
    for path in (train, vocab):
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass --data with the shared data folder "
                     f"(holding afqmc/train.jsonl and vocab/bert-base-chinese-vocab.txt)")
    return {"train_file": str(train.resolve()), "vocab_file": str(vocab.resolve())}


def tiny_afqmc(data_dir: Path, **changes: Any):
    """The tiny preset (2 layers, hidden 128) on the shared AFQMC data with the MacBERT vocabulary."""
    from afqmc.config import from_dict

    values = dict(model_name_or_path="tiny", tiny_hidden_size=128, tiny_num_layers=2, tiny_num_heads=2,
                  **shared_paths(data_dir), val_ratio=0.1, max_length=64, learning_rate=5e-4,
                  per_device_batch_size=32, class_weights="balanced", warmup_ratio=0.1, patience=0,
                  mixed_precision="no", seed=42, save_best_model=False)
    values.update(changes)
    return from_dict(values, source="benchmark")


def machine() -> dict[str, Any]:
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "load_average_1min_at_start": load,
    }


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> str:
    """A plain fixed-width table; floats get 4 significant decimals."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, float):
            if v != 0 and abs(v) < 0.01:
                return f"{v:.3g}"
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.extend("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    return "\n".join(lines)


def verdict(name: str, value: float, goal: str, met: bool) -> str:
    return f"{name}: {value:.3f} (goal {goal}): {'MET' if met else 'MISSED'}"


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"figures written to {path}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class DualClock:
    """Stands in for the `time` module of afqmc.train: `perf_counter()` returns this process's CPU
    time, so train()'s own `train/samples_per_second` counts CPU seconds, and every call also notes
    the wall time, so the wall-clock figure of the same span can be read back (`wall_between`).

    Why: on a machine shared with other work, wall time swings with their load (per-pair ratios of
    0.90 to 1.26 were seen for identical work), while a 1-thread process's CPU time measures the
    work itself; on an otherwise idle machine the two agree.
    """

    def __init__(self):
        import time as _time

        self._time = _time
        self.calls: list[tuple[float, float]] = []  # (cpu, wall) at each perf_counter() call

    def perf_counter(self) -> float:
        cpu, wall = self._time.process_time(), self._time.perf_counter()
        self.calls.append((cpu, wall))
        return cpu

    def __getattr__(self, name: str):
        return getattr(self._time, name)

    def spans(self) -> tuple[float, float]:
        """CPU and wall seconds summed over the timed spans. train() alternates `started = clock()` and
        `train_seconds += clock() - started`, so the spans are calls (0, 1), (2, 3), ...; a last
        unpaired call (the restart after the final evaluation) times nothing."""
        cpu = sum(self.calls[i + 1][0] - self.calls[i][0] for i in range(0, len(self.calls) - 1, 2))
        wall = sum(self.calls[i + 1][1] - self.calls[i][1] for i in range(0, len(self.calls) - 1, 2))
        return cpu, wall


class Span:
    """CPU and wall seconds of a block: `with Span() as s: ...; s.cpu, s.wall`."""

    def __enter__(self):
        import time as _time

        self._t = _time
        self._cpu, self._wall = _time.process_time(), _time.perf_counter()
        return self

    def stop(self) -> "Span":
        self.cpu = self._t.process_time() - self._cpu
        self.wall = self._t.perf_counter() - self._wall
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
