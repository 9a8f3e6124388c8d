"""benchmarks/ota.py in one trial: the MQTT job → serving benchmark runs and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import ota
from tests.fixtures.mosquitto import MOSQUITTO
from tests.fixtures.need import unavailable


@pytest.mark.slow
def test_one_trial_writes_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path(MOSQUITTO).exists():
        unavailable(f"mosquitto is not installed ({MOSQUITTO})")
    assert ota.main(["--trials", "1", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("ota-*.json")
    assert str(path) in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert doc["trials"] == 1 and len(doc["rows"]) == 1
    for key in ("machine", "git", "date", "command", "targets", "notes", "latency_ms"):
        assert key in doc
    row = doc["rows"][0]
    assert row["version"] == 2
    steps = ("queue", "download", "verify", "validate", "swap")
    for name in steps:
        assert row[f"{name}_ms"] >= 0
        assert set(doc["summary"][f"{name}_ms"]) == {"median", "max"}
    for name in (
        "total_ms",
        "total_minus_validation_ms",
        "publish_to_queued_ms",
        "publish_to_probation_status_ms",
    ):
        assert set(doc["summary"][name]) == {"median", "max"}
    assert row["total_minus_validation_ms"] == pytest.approx(row["total_ms"] - row["validate_ms"], abs=0.02)
    assert row["total_ms"] >= row["validate_ms"] + row["swap_ms"]
    assert [t["ok"] in (True, False) for t in doc["targets"]] == [True, True]
