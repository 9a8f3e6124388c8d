"""benchmarks/monitoring.py in its quick form: it runs every variant and writes its JSON (the
figures themselves are measured by the benchmark, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import monitoring


@pytest.mark.slow
@pytest.mark.models
def test_the_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert monitoring.main(["--quick", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("monitoring-*.json")
    assert str(path) in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert len(doc["rounds"]) == doc["rounds_count"] == monitoring.QUICK_ROUNDS
    for r in doc["rounds"]:
        assert set(r) == {"off", "on", "every_30th", "every_frame"}
        assert r["every_frame"]["samples"] == doc["frames"] and r["every_frame"]["samples_dropped"] == 0
        assert r["every_30th"]["samples"] == doc["frames"] // 30 and r["every_frame"]["windows"] >= 10
        for v in ("on", "every_30th", "every_frame"):
            assert r[v]["ratio"] > 0
    for key in ("ratio", "ratio_range", "ratio_every_30th", "ratio_every_frame", "targets", "notes"):
        assert key in doc
    assert doc["frame_stats"]["640x480"]["image_us_median"] > 0
    assert doc["drift"]["judge_60_sample_window_ms"] > 0
