"""benchmarks/crash_trials.py in a few trials: the runner's reliability benchmark works."""

from __future__ import annotations

import pytest

from benchmarks import crash_trials


@pytest.mark.slow
def test_three_random_kills_leave_consistent_states() -> None:
    res = crash_trials.run(trials=4)  # two random kills, two at fault points (FETCHING, VERIFYING)
    assert res["trials"] == 4
    assert res["inconsistent"] == 0, res["problems"]
    assert sum(res["phase_at_kill"].values()) == 4
    assert [r.get("target") for r in res["rows"]] == [None, "FETCHING", None, "VERIFYING"]
    assert not any("note" in r for r in res["rows"]), res["rows"]
    assert res["targets"][0]["ok"] is True
