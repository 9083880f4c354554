"""A search attached with `--address` to a Ray cluster the user started (`ray start --head`), with the
Ray that this interpreter imports: run it once in each environment to check both ends of the
supported range (issue 27).

    python benchmarks/attach.py [--json OUT]                   # the installed (newest) Ray
    OLD/bin/python benchmarks/attach.py [--json OUT]           # a virtual environment with the oldest

The head binds to 127.0.0.1 with one CPU (`--node-ip-address 127.0.0.1`), in a temporary folder of
its own; the search runs 3 trials of the demo space cut to 10 updates under ASHA, then every process
of the cluster is killed (not `ray stop`, which would stop every Ray of this user). Prints the Ray
and Optuna versions, the search's exit code and wall time, the trials' states and where they ran.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _benchutil as bu


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(workdir: Path) -> dict:
    import optuna
    import psutil
    import ray
    import yaml

    spec = yaml.safe_load((bu.REPO / "search_spaces" / "demo.yaml").read_text(encoding="utf-8"))
    spec["search"].update(num_samples=3, n_startup_trials=3, max_evals=2, grace_period=1, reduction_factor=2)
    spec["params"].update(train_file=str(bu.REPO / "afqmc" / "demo_data" / "train.jsonl"), max_train_samples=400,
                          per_device_batch_size=32, max_steps=10, eval_steps=5, tiny_hidden_size=32, tiny_num_layers=1)
    space = workdir / "space.yaml"
    space.write_text("# attach benchmark\n" + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    temp_dir = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    if not Path(ray_cli).exists():
        ray_cli = shutil.which("ray") or "ray"
    out = {"ray": ray.__version__, "optuna": optuna.__version__}
    try:
        head = subprocess.run([sys.executable, ray_cli, "start", "--head", "--port", str(port), "--node-ip-address",
                               "127.0.0.1", "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir", temp_dir,
                               "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        out["head_started"] = head.returncode == 0
        if head.returncode != 0:
            out["head_error"] = (head.stdout + head.stderr)[-2000:]
            return out
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "tune/search.py", "--space", str(space), "--name", "attached",
                               "--results_dir", str(workdir / "results"), "--address", f"127.0.0.1:{port}"],
                              cwd=bu.REPO, env=env, capture_output=True, text=True, timeout=900)
        out.update(search_exit=proc.returncode, search_wall_s=round(time.perf_counter() - started, 1),
                   attached=f"at 127.0.0.1:{port}" in proc.stdout)
        if proc.returncode != 0:
            out["search_error"] = (proc.stdout + proc.stderr)[-3000:]
        rows_file = workdir / "results" / "attached" / "trials.csv"
        if rows_file.is_file():
            with open(rows_file, encoding="utf-8") as fh:
                out["states"] = [r["state"] for r in csv.DictReader(fh)]
    finally:
        for p in psutil.process_iter(["cmdline"]):
            if temp_dir in " ".join(p.info["cmdline"] or []):
                try:
                    p.kill()
                except psutil.Error:
                    pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = bu.parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(Path(args.workdir or tmp))
    print(json.dumps(res, indent=1))
    bu.write_json(args.json, {"machine": bu.machine(), **res})
    return 0 if res.get("search_exit") == 0 and res.get("states") and len(res["states"]) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
