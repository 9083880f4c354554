"""The soak (issue 13) at 40 trials: a long search on the demo data leaves nothing behind.

Runs `benchmarks/soak.py`'s own `run_soak` (the product's search in its own process, sampled from
here), not a copy: every trial ends, the driver's memory does not grow like a leak, the results
folder holds the kept checkpoints and little else, and no process or placement group is left.
About 55 s on this project's 2 cores at load 3-5 (Ray's start and the trial processes' imports are
~25 s of it; the 40 trials ~20 s).
"""

from __future__ import annotations

import csv
import sys

import pytest

from conftest import ROOT
from tune.folder import DONE_STATES

sys.path.insert(0, str(ROOT / "benchmarks"))
import soak  # noqa: E402

TRIALS = 40
# The driver's RSS from the end of the first trial to the end of the search (~38 trials). Measured
# +13 to +14 MB (0.35 MB per trial: Ray Tune's record of each trial, kept to the end; see the soak
# in benchmarks/README.md), with a few MB of allocator noise from run to run. 30 MB is 0.75 MB per
# trial, 1.5x the goal's rate (100 MB per 200 trials): a leak of a checkpoint's worth per trial
# (1.5 MB: weights and optimizer state) adds ~57 MB and breaks it, one of the model's weights (0.4 MB)
# reaches it; smaller leaks pass here and show in the full run's curve (benchmarks/soak.py).
RSS_BOUND_MB = 30.0


@pytest.mark.slow
@pytest.mark.full
def test_soak_40_trials_ends_every_trial_and_leaves_nothing_behind(tmp_path):
    fig = soak.run_soak(TRIALS, tmp_path / "soak", interval=0.5, timeout_s=600)
    assert fig["exit_code"] == 0, (tmp_path / "soak" / "driver.err").read_text()[-3000:]

    with open(tmp_path / "soak" / "results" / "soak" / "trials.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == TRIALS and all(r["state"] in DONE_STATES for r in rows)
    assert fig["trials_done"] == TRIALS

    # Memory: growth well under a leak's, from the first trial's end to the search's end.
    assert fig["rss_growth_trials"] >= TRIALS - 5  # the first sample after trial 1 came early enough
    assert fig["rss_growth_mb"] < RSS_BOUND_MB, fig["rss_growth_mb"]
    assert fig["fd_growth"] <= 10 and fig["fds_max"] < 200  # a handle per trial left open would pass 40

    # Disk: one kept checkpoint per trial; besides them and best_model/ only small files (slack
    # per trial, soak.DISK_SLACK_PER_TRIAL), so a checkpoint not deleted (1.5 MB) breaks it.
    disk = fig["disk"]
    assert disk["trials"] == TRIALS and disk["trials_with_one_checkpoint"] == TRIALS
    assert disk["rest_per_trial_bytes"] <= soak.DISK_SLACK_PER_TRIAL
    assert disk["total"] <= disk["checkpoints_bytes"] + disk["best_model_bytes"] + TRIALS * soak.DISK_SLACK_PER_TRIAL

    # Nothing left: no process of the search's session, no placement group or actor before Ray's
    # stop (noted inside the driver), no GCS or raylet after; the object store holds the data only.
    assert fig["leaked_processes"] == 0, fig["leaked"]
    assert fig["placement_groups_at_end"] == {} and fig["actors_at_end"] == {} and fig["ray_core_left"] == []
    assert fig["placement_groups_max"] is not None and fig["placement_groups_max"] <= 4  # trials at once, + staged
    assert fig["object_store_max_mb"] < 1.0
    # The goals but memory's, which is judged over 200 trials (benchmarks/README.md); here the bound above.
    assert all(g["met"] for g in fig["goals"][1:]), fig["goals"]
