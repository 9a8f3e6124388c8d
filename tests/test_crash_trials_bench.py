"""benchmarks/crash_trials.py in a few trials: the runner's reliability benchmark works."""

from __future__ import annotations

import pytest

from benchmarks import crash_trials


@pytest.mark.slow
def test_three_random_kills_leave_consistent_states() -> None:
    res = crash_trials.run(trials=3)  # one of each candidate: good, collapse, tampered
    assert res["trials"] == 3
    assert res["inconsistent"] == 0, res["problems"]
    assert sum(res["phase_at_kill"].values()) == 3
    assert res["targets"][0]["ok"] is True
