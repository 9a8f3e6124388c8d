"""benchmarks/collection.py in its quick form: it runs every variant and writes every figure (the
figures themselves are measured by the benchmark, not asserted here: shared, noisy machines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import collection


@pytest.mark.slow
@pytest.mark.models
def test_the_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collection.main(["--quick", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("collection-*.json")
    assert str(path) in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert len(doc["rounds"]) == doc["rounds_count"] == collection.QUICK_ROUNDS
    for r in doc["rounds"]:
        assert set(r) == set(collection.VARIANTS)
        assert r["off"]["fps"] > 0
        for v in ("on", "busy", "on_1worker"):
            counts = r[v]
            assert counts["ratio"] > 0 and counts["frames"] == doc["frames"]
            assert counts["uploaded"] == counts["kept"] and counts["pending"] == 0  # drained
            assert counts["upload_failures"] == 0
        busy = r["busy"]
        assert busy["kept"] > 0 or busy["queue_dropped"] > 0
        assert busy["kept"] + busy["duplicates"] + busy["queue_dropped"] <= doc["frames"]
    for key in (
        "ratio",
        "ratio_range",
        "ratio_busy",
        "ratio_busy_range",
        "ratio_on_1worker",
        "targets",
        "notes",
    ):
        assert key in doc
    for name in ("detector_5_boxes", "classifier_1000_classes_margin"):
        sel = doc["selection"][name]
        assert sel["collector_write"]["median_us"] > 0 and sel["sampler_select"]["median_us"] > 0
    for size in ("640x480", "1920x1080"):
        w = doc["worker"][size]
        for stage in ("shrink_ms", "phash_ms", "jpeg_ms", "spool_put_ms", "total_ms"):
            assert w[stage] > 0
    assert doc["worker"]["upload_ms"] > 0
    assert set(doc["idle_uploader"]) == {"1_workers", "2_workers"}
