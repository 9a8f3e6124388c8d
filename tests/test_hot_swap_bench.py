"""benchmarks/hot_swap.py: a --quick run for both policies (one fresh process each) on the
--optimize bundles and the availability policy on the plain ones, its JSON keys, and no frame
dropped on the lossless source. Timing targets are not asserted here: the
figures of a shared test machine say little; the benchmark records them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import hot_swap


def test_window_helpers() -> None:
    rows = [(0, 1, 0.000), (1, 1, 0.033), (2, 1, 0.066), (3, 2, 0.150), (4, 2, 0.183)]
    assert hot_swap._gaps_ms(rows) == pytest.approx([33.0, 33.0, 84.0, 33.0])
    w = hot_swap._window_gaps(rows, 0.1, 0.2, median_ms=33.0)
    assert w["longest_gap_ms"] == pytest.approx(84.0)
    assert w["longest_gap_before_frame"] == 3
    assert w["gaps_over_1_5"] == 1
    switch = hot_swap._switch(rows, 1, 2)
    assert switch is not None and switch[0] == 3 and switch[1] == pytest.approx(84.0)
    assert hot_swap._switch(rows, 2, 1) is None
    changes = [(0.0, "IDLE"), (0.1, "VALIDATING"), (0.2, "PROBATION"), (0.3, "IDLE")]
    assert hot_swap._phase_at(changes, 0.15) == "VALIDATING"
    assert hot_swap._phase_span(changes, "PROBATION", 0.0, 1.0) == (0.2, 0.3)


def test_the_runner_finds_it() -> None:
    from benchmarks.__main__ import discover

    assert "hot_swap" in discover()


@pytest.mark.slow
def test_quick_run_both_policies() -> None:
    res: dict[str, Any] = hot_swap.run(quick=True)
    json.dumps(res)  # plain JSON for the runner's writer
    fp = res["footprint"]
    assert fp["footprint_mb"] > 30.0, fp  # the 40 MB weight shows
    assert fp["load_peak_mb"] >= fp["footprint_mb"] * 0.9
    assert set(res["policies"]) == {"availability", "memory"}
    for policy, r in res["policies"].items():
        assert r["dropped"] == 0 and r["pipeline_dropped"] == 0 and r["errors"] == 0, (policy, r)
        assert r["median_gap_ms"] > 0
        swap, rb, rss = r["swap"], r["rollback"], r["rss_mb"]
        assert swap["committed"] and swap["switch_at_frame"] is not None, swap
        assert swap["longest_gap_ratio"] >= 1.0
        assert rb["outcome"] == "rolled_back" and "confidence collapsed" in rb["reason"], rb
        assert rb["decision_to_previous_ms"] > 0 and rb["decision_to_previous_intervals"] > 0
        for key in ("steady_before", "peak_during_swap", "steady_after", "during_probation"):
            assert rss[key] > 0, (key, rss)
        assert rss["peak_during_swap"] >= rss["steady_before"]
        assert rss["added_over_footprint"] is not None
        assert "_gaps" not in r and "_timeline" not in r
    avail = res["policies"]["availability"]["rss_mb"]
    assert avail["during_probation"] - avail["steady_before"] > 0.5 * fp["footprint_mb"]  # two models
    assert res["policies"]["memory"]["swap"]["memory_gap_ms"] > 0
    whats = [t["what"] for t in res["targets"]]
    assert any("frames dropped" in w for w in whats) and any("footprint" in w for w in whats)
    assert all(set(t) == {"what", "value", "target", "ok"} for t in res["targets"])
    assert res["latency_ms"]["availability: result gaps, swap window"]
    # the targets are judged on the --optimize bundles; the plain ones are measured beside them
    assert (
        fp["loaded_from"] in ("model.ort", "model.onnx")
        and res["plain"]["footprint"]["loaded_from"] == "model.onnx"
    )
    plain = res["plain"]["availability"]
    assert plain["dropped"] == 0 and plain["swap"]["committed"] and plain["loaded_from"] == "model.onnx"
    assert plain["rss_mb"]["added_over_footprint"] is not None and "_gaps" not in plain
    assert any(t["target"] == "model.ort" for t in res["targets"])
