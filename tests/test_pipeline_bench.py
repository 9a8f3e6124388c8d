"""The estimator the pipeline and bench_vs_plain benchmarks share: paired, alternating rounds
summarised by the median of the per-round ratios with their spread."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from benchmarks.common import others_cpu, paired_ratio, paired_rounds


def test_paired_rounds_alternate_which_side_runs_first() -> None:
    calls: list[str] = []

    def side(name: str) -> object:
        def fn() -> str:
            calls.append(name)
            return f"{name}{len(calls)}"

        return fn

    pairs: list[tuple[object, object]] = paired_rounds(3, side("a"), side("b"))  # type: ignore[arg-type]
    assert calls == ["a", "b", "b", "a", "a", "b"]
    # each pair is (a's figure, b's figure) of the same round, whichever ran first
    assert pairs == [("a1", "b2"), ("a4", "b3"), ("a5", "b6")]


def test_paired_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_bests() -> None:
    # one side lost round 3 to a neighbour (both halves slow): paired, that round's ratio is fine
    pipeline = [90.0, 99.0, 50.0, 96.0, 97.0]
    bare = [100.0, 100.0, 51.0, 100.0, 100.0]
    r = paired_ratio(pipeline, bare)
    assert r.median == pytest.approx(0.97)
    assert r.low == pytest.approx(0.9) and r.high == pytest.approx(0.99)
    assert r.q1 == pytest.approx(0.96) and r.q3 == pytest.approx(50 / 51)
    assert r.rounds == pytest.approx((0.9, 0.99, 50 / 51, 0.96, 0.97))
    d = r.to_dict(3)
    assert d["median"] == 0.97 and d["range"] == [0.9, 0.99] and len(d["rounds"]) == 5
    assert r.text() == "0.970 (range 0.900-0.990, IQR 0.960-0.980, 5 rounds)"


def test_others_cpu_returns_the_value_and_a_share_of_cores() -> None:
    import time

    def spin() -> str:  # half a second: the figure has clock-tick (10 ms) resolution
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
        return "done"

    out, others = others_cpu(spin)
    assert out == "done"
    if Path("/proc/stat").exists():
        assert others is not None and 0.0 <= others <= (os.cpu_count() or 1) + 0.1
    else:
        assert others is None


@pytest.mark.parametrize("num, den", [([], []), ([1.0], [1.0, 2.0])])
def test_paired_ratio_needs_pairs(num: list[float], den: list[float]) -> None:
    with pytest.raises(ValueError, match="needs pairs"):
        paired_ratio(num, den)


def test_runner_only_runs_are_named_after_the_benchmark_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import benchmarks.__main__ as runner

    fake = types.ModuleType("fake")
    fake.run = lambda quick: {  # type: ignore[attr-defined]
        "targets": [
            {"what": "a ratio", "value": 0.98, "spread": [0.95, 1.01], "target": "≥ 0.97", "ok": True}
        ]
    }
    monkeypatch.setattr(runner, "discover", lambda: {"fake": fake})
    out = tmp_path / "results"
    for _ in range(3):
        assert runner.main(["--only", "fake", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert len(names) == 3 and all(n.startswith("fake-") for n in names)
    assert [n for n in names if n.endswith(("-2.json", "-3.json"))] and len(set(names)) == 3
    doc = json.loads((out / names[0]).read_text())
    assert doc["benchmarks"]["fake"]["targets"][0]["spread"] == [0.95, 1.01]
    assert "0.980 (range 0.950-1.010) (target ≥ 0.97) ok" in capsys.readouterr().err
    md = (out / names[0]).with_suffix(".md").read_text()
    assert "| fake | a ratio | 0.980 (range 0.950-1.010) | ≥ 0.97 | ✓ |" in md
