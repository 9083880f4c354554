"""Random-kill chaos (issue 13): a small search whose driver is SIGKILLed at 3 seeded random moments
and resumed after each, with trial workers killed at random moments too (benchmarks/chaos.py; its
full run kills 10 times)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos  # noqa: E402


@pytest.mark.slow
def test_a_search_killed_at_random_moments_ends_every_trial_once(tmp_path):
    res = chaos.run(tmp_path, **chaos.QUICK, seed=3)
    log = (tmp_path / "chaos.log").read_text(encoding="utf-8")[-4000:]
    assert res["rc"] == 0 and not res["reference_problems"], log
    assert res["driver_kills"] == chaos.QUICK["kills"], (res["segments"], log)
    assert res["worker_kills_done"] >= 1, res["segments"]
    # Every planned trial ended once; the study agrees with trials.csv; the best model predicts.
    assert res["lost"] == 0 and res["duplicated"] == 0 and res["problems"] == [], (res["problems"], log)
    # The same trials as the uninterrupted search, and the same value at every evaluation both ran.
    against = res["against_reference"]
    assert against["params_differ"] == [] and against["values_differ"] == [], against
    assert against["evaluations_compared"] >= chaos.QUICK["num_samples"]
