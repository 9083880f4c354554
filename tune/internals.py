"""Every private Ray symbol the search still uses, in one place, each an optional improvement with a
public fallback that keeps the search correct without it.

The search is built on what Ray and Optuna promise to keep: Ray Tune's `Searcher` and
`TrialScheduler` interfaces, `Tuner.can_restore`/`Tuner.restore`, Ray Train's `UserCallback`, and
Optuna's ask-and-tell API with its storage's public methods (tune/searcher.py, tune/scheduler.py).
pyproject.toml states the supported ranges; .ci/run tests the newest releases and the oldest
(`OLDEST` below) in a second environment. Each symbol below can be switched off, in the driver and
in the trials it starts, by naming it in the environment variable `AFQMC_TUNE_WITHOUT`
(comma-separated: `loopback_switch`, `train_cleaner`, `token_notice`): tests/test_internals.py
and tests/test_scaling.py run real searches that way, as if the symbol had gone.

| symbol | library | what it improves | the public fallback |
|---|---|---|---|
| `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (environment, read at import) | Ray | a local Ray on Linux binds its node to 127.0.0.1, as on macOS, not to every interface | `check_loopback` after the start: a local Ray that listens on any other address is shut down and the search stops with a clear error, before any trial runs |
| `TorchTrainer._create_default_callbacks`, `ray.train.v2._internal.callbacks.placement_group_callback.PlacementGroupCleanerCallback` (Ray >= 2.5x) | Ray Train V2 | a multi-worker trial without Train's placement-group cleaner, a detached actor that asks the state API (served by the dashboard, which the local Ray does not run) whether the run is alive: it warns every second and never exits | Ray's plain TorchTrainer: the trials run the same; each Train run leaves that 0-CPU actor and its warnings in logs/ray.log until the search's Ray stops (the search itself removes a stopped trial's workers, tune/callbacks.py) |
| the logger `ray._private.authentication.authentication_token_setup` (Ray >= 2.5x) | Ray | its notice that token authentication is on (Ray's default for a local cluster) at every start stays off the terminal unless `--verbose` | the notice is printed |
"""

from __future__ import annotations

import logging
import os

OLDEST = {"ray": "2.50.1", "optuna": "4.5.0"}  # the oldest supported releases (pyproject.toml; .ci/run tests them)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
LOOPBACK = ("127.", "::1", "::ffff:127.")


WITHOUT = "AFQMC_TUNE_WITHOUT"  # the private symbols to do without (their names in the table's order, above)


def disabled(name: str) -> bool:
    """Whether the environment switches this private symbol off (`AFQMC_TUNE_WITHOUT`)."""
    return name in os.environ.get(WITHOUT, "").replace(" ", "").split(",")


def loopback_environment() -> None:
    """Before Ray is imported: a local Ray binds to loopback (the switch above), unless switched off."""
    if not disabled("loopback_switch"):
        os.environ.setdefault(LOOPBACK_SWITCH, "0")


def quiet_token_auth_notice() -> None:
    """Ray's notice that token authentication is on (its default) at every start: not on the terminal.
    A logger of that name that no module uses any more changes nothing."""
    if not disabled("token_notice"):
        logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)


def torch_trainer():
    """Ray Train's TorchTrainer without its placement-group cleaner (see the table above), or the plain
    TorchTrainer where Ray has no such cleaner or the method that adds it is gone."""
    from ray.train.torch import TorchTrainer

    if disabled("train_cleaner"):
        return TorchTrainer
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return TorchTrainer
    if not callable(getattr(TorchTrainer, "_create_default_callbacks", None)):
        return TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def listening_addresses(pids: list[int]) -> set[str]:
    """The addresses on which these processes accept connections (TCP listen sockets)."""
    import psutil

    out = set()
    for pid in pids:
        try:
            out |= {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def ray_processes() -> list[int]:
    """This driver and the processes of the local Ray it started (its children, all the way down)."""
    import psutil

    me = psutil.Process(os.getpid())
    return [me.pid] + [p.pid for p in me.children(recursive=True)]


def check_loopback() -> None:
    """Raise RuntimeError if the local Ray this driver started listens on an address that is not
    loopback (the switch above was not honoured)."""
    exposed = sorted(a for a in listening_addresses(ray_processes()) if not a.startswith(LOOPBACK))
    if exposed:
        raise RuntimeError(f"the local Ray listens on {', '.join(exposed)}, not on loopback only: this Ray "
                           f"release ignores {LOOPBACK_SWITCH}=0. Start a cluster bound as you wish "
                           f"(ray start --head --node-ip-address ...) and attach with --address")
