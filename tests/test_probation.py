"""``ProbationPolicy.decide`` as a table, after TF Serving's AspiredVersionPolicy tests.

Each row is (policy kwargs, evidence, seconds since the start) -> (decision, a substring of
the reason); the policy is pure, so a row is the whole test. Plus the figures the runner
feeds it (``ProbationFigures.snapshot``), the baseline's parsing and the config checks.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from inference.errors import ConfigError
from ota.probation import (
    CONTINUE,
    LATENCY_KEEP,
    Baseline,
    Decision,
    Evidence,
    ProbationFigures,
    ProbationPolicy,
    Verdict,
)

T0 = 1000.0  # the probation's start: elapsed time is ``now - started``, never ``now``

C, P, F = Decision.CONTINUE, Decision.PASS, Decision.FAIL


def ev(**kw: Any) -> Evidence:
    return Evidence(started=T0, **kw)


GOOD = {"frames": 100, "confidence_mean": 0.9, "inference_p95_ms": 2.0}

# (id, policy kwargs, evidence, elapsed seconds, decision, reason substring)
TABLE: list[tuple[str, dict[str, Any], Evidence, float, Decision, str]] = [
    # 1. NaN or Inf: at once, whatever else is known
    ("nan frame", {}, ev(frames=3, nonfinite_frame=2), 1.0, F, "NaN or Inf in the outputs of frame 2"),
    (
        "nan beats good figures",
        {},
        ev(**GOOD, nonfinite_frame=57),
        10.0,
        F,
        "NaN or Inf in the outputs of frame 57",
    ),
    (
        "nan past the deadline is still nan",
        {"max_seconds": 60},
        ev(frames=1, nonfinite_frame=0),
        600.0,
        F,
        "NaN or Inf",
    ),
    # 2. inference errors: a rate over at least 5 frames
    ("errors over max, 5 seen", {}, ev(frames=3, errors=2), 1.0, F, "inference errors on 2 of 5 frames"),
    ("first 5 frames all failed", {}, ev(errors=5), 1.0, F, "inference errors on 5 of 5 frames"),
    (
        "errors over a custom max",
        {"max_error_rate": 0.2},
        ev(frames=7, errors=3),
        1.0,
        F,
        "(max rate 0.2)",
    ),
    ("errors under 5 seen continue", {}, ev(frames=2, errors=2), 1.0, C, ""),
    ("4 errors of 4 seen continue", {}, ev(errors=4), 1.0, C, ""),
    ("error rate within max", {}, ev(**GOOD, errors=1), 5.0, P, "100 frames in 5.0 s"),
    ("error rate exactly at max", {"max_error_rate": 0.5}, ev(frames=5, errors=5), 1.0, C, ""),
    # 3. thin evidence before the deadline: continue
    ("not enough frames", {}, ev(frames=50, confidence_mean=0.9), 10.0, C, ""),
    ("no frames at all", {}, ev(), 599.9, C, ""),
    (
        "not enough seconds",
        {"min_frames": 10, "min_seconds": 60},
        ev(frames=200, confidence_mean=0.9),
        30.0,
        C,
        "",
    ),
    # 3. thin evidence at/after the deadline: the configured outcome
    (
        "past max_seconds, thin: rollback",
        {"max_seconds": 60},
        ev(frames=7),
        61.0,
        F,
        "no evidence: 7 frames in 61 s",
    ),
    (
        "at max_seconds, no frames: rollback",
        {},
        ev(),
        600.0,
        F,
        "no evidence: 0 frames in 600 s (probation needs 100 frames and 0 s within 600 s)",
    ),
    (
        "min_seconds equal to max_seconds: continue until then",
        {"min_frames": 1, "min_seconds": 120, "max_seconds": 120},
        ev(frames=500),
        119.0,
        C,
        "",
    ),
    (
        "past max_seconds, thin: commit",
        {"max_seconds": 60, "on_thin_evidence": "commit"},
        ev(frames=7),
        61.0,
        P,
        "no evidence: 7 frames in 61 s",
    ),
    (
        "commit says it was configured",
        {"max_seconds": 60, "on_thin_evidence": "commit"},
        ev(),
        90.0,
        P,
        "committed as configured (on_thin_evidence)",
    ),
    (
        "commit on thin evidence still fails on errors",
        {"max_seconds": 60, "on_thin_evidence": "commit"},
        ev(frames=1, errors=9),
        90.0,
        F,
        "inference errors on 9 of 10 frames",
    ),
    ("min_frames 0, nothing seen", {"min_frames": 0}, ev(), 1.0, P, "no frames in 1 s; nothing to judge on"),
    # 4. enough evidence: latency (the model's own p95), confidence, detection rate
    (
        "p95 inference over budget",
        {"latency_budget_ms": 10},
        ev(**{**GOOD, "inference_p95_ms": 12.5}),
        5.0,
        F,
        "p95 inference time 12.5 ms is over the budget of 10 ms",
    ),
    (
        "p95 inference at the budget",
        {"latency_budget_ms": 10},
        ev(**{**GOOD, "inference_p95_ms": 10.0}),
        5.0,
        P,
        "100 frames",
    ),
    (
        "p95 unknown: no latency verdict",
        {"latency_budget_ms": 10},
        ev(**{**GOOD, "inference_p95_ms": None}),
        5.0,
        P,
        "100 frames",
    ),
    ("no budget: any p95", {}, ev(**{**GOOD, "inference_p95_ms": 1e6}), 5.0, P, "100 frames"),
    (
        "confidence collapse vs baseline",
        {"baseline": Baseline(confidence=0.9)},
        ev(**{**GOOD, "confidence_mean": 0.3}),
        5.0,
        F,
        "confidence collapsed: mean 0.300 against 0.900 for the previous version (min ratio 0.5)",
    ),
    (
        "confidence collapse, custom ratio",
        {"baseline": Baseline(confidence=0.9), "min_confidence_ratio": 0.9},
        ev(**{**GOOD, "confidence_mean": 0.8}),
        5.0,
        F,
        "(min ratio 0.9)",
    ),
    (
        "confidence at the ratio",
        {"baseline": Baseline(confidence=0.8)},
        ev(**{**GOOD, "confidence_mean": 0.4}),
        5.0,
        P,
        "100 frames",
    ),
    (
        "baseline confidence tiny (0.05) is ignored",
        {"baseline": Baseline(confidence=0.05)},
        ev(**{**GOOD, "confidence_mean": 0.001}),
        5.0,
        P,
        "100 frames",
    ),
    (
        "baseline confidence 0 is ignored",
        {"baseline": Baseline(confidence=0.0)},
        ev(**{**GOOD, "confidence_mean": 0.0}),
        5.0,
        P,
        "100 frames",
    ),
    (
        "detection-rate collapse",
        {"baseline": Baseline(detection_rate=0.8)},
        ev(**GOOD, detector_frames=100, detection_frames=30),
        5.0,
        F,
        "detection rate collapsed: 0.30 of frames against 0.80 for the previous version",
    ),
    (
        "detection rate at the ratio",
        {"baseline": Baseline(detection_rate=0.8)},
        ev(**GOOD, detector_frames=100, detection_frames=40),
        5.0,
        P,
        "100 frames",
    ),
    (
        "baseline detection rate 0.2 is ignored",
        {"baseline": Baseline(detection_rate=0.2)},
        ev(**GOOD, detector_frames=100, detection_frames=0),
        5.0,
        P,
        "100 frames",
    ),
    (
        "not a detector: no detection-rate verdict",
        {"baseline": Baseline(detection_rate=0.9)},
        ev(**GOOD),
        5.0,
        P,
        "100 frames",
    ),
    (
        "latency is judged before confidence",
        {"latency_budget_ms": 1, "baseline": Baseline(confidence=0.9)},
        ev(**{**GOOD, "confidence_mean": 0.1}),
        5.0,
        F,
        "p95 inference time",
    ),
    (
        "all good",
        {"latency_budget_ms": 10, "baseline": Baseline(confidence=0.9, detection_rate=0.8)},
        ev(**GOOD, detector_frames=100, detection_frames=80),
        5.0,
        P,
        "100 frames in 5.0 s",
    ),
    (
        "all good after min_seconds",
        {"min_frames": 10, "min_seconds": 60},
        ev(frames=10, confidence_mean=0.5),
        60.0,
        P,
        "10 frames in 60.0 s",
    ),
]


@pytest.mark.parametrize(
    ("policy", "evidence", "elapsed", "decision", "reason"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decide(
    policy: dict[str, Any], evidence: Evidence, elapsed: float, decision: Decision, reason: str
) -> None:
    verdict = ProbationPolicy(**policy).decide(evidence, T0 + elapsed)
    assert verdict.decision is decision, verdict
    assert reason in verdict.reason, verdict
    assert verdict.final is (decision is not Decision.CONTINUE)
    if decision is Decision.CONTINUE:
        assert verdict == CONTINUE


def test_decide_holds_no_state() -> None:
    """The same snapshot and time give the same verdict, whatever was decided before."""
    policy = ProbationPolicy(min_frames=10, max_seconds=60)
    thin, good = ev(frames=3), ev(frames=10, confidence_mean=0.5)
    first = [policy.decide(e, T0 + t) for e, t in ((thin, 1), (thin, 61), (good, 5))]
    again = [policy.decide(e, T0 + t) for e, t in ((good, 5), (thin, 61), (thin, 1))][::-1]
    assert first == again
    assert [v.decision for v in first] == [C, F, P]


def test_verdict_final() -> None:
    assert not CONTINUE.final
    assert Verdict(Decision.PASS).final and Verdict(Decision.FAIL, "x").final


# --------------------------------------------------------------------------- figures


def test_snapshot_figures() -> None:
    figures = ProbationFigures(started=T0)
    empty = figures.snapshot()
    assert empty == Evidence(started=T0)
    assert empty.confidence_mean is None and empty.inference_p95_ms is None
    for i in range(100):  # inference times 100, 99, ..., 1 ms (order must not matter)
        figures.add_result(
            frame=i,
            confidence=0.5 if i % 2 else 1.0,
            finite=i not in (5, 9),
            inference_ms=float(100 - i),
            detections=(i % 4) if i < 40 else None,
        )
    figures.add_error()
    figures.add_error()
    snap = figures.snapshot()
    assert snap.started == T0
    assert snap.frames == 100 and snap.errors == 2
    assert snap.nonfinite_frame == 5  # the first non-finite frame is kept, not the last
    assert snap.confidence_mean == pytest.approx(0.75)
    assert snap.detector_frames == 40 and snap.detection_frames == 30  # 3 of every 4 had detections
    assert snap.inference_p95_ms == 95.0  # sorted 1..100, index round(0.95 * 99) = 94
    assert figures.snapshot(latency=False).inference_p95_ms is None
    assert figures.snapshot(latency=False).frames == 100


def test_snapshot_p95_small_samples() -> None:
    figures = ProbationFigures(started=0.0)
    figures.add_result(frame=0, confidence=1.0, finite=True, inference_ms=7.0, detections=None)
    assert figures.snapshot().inference_p95_ms == 7.0
    figures.add_result(frame=1, confidence=1.0, finite=True, inference_ms=3.0, detections=None)
    assert figures.snapshot().inference_p95_ms == 7.0  # round(0.95 * 1) = 1: the larger of two


def test_snapshot_keeps_recent_latencies_only() -> None:
    """Past ``LATENCY_KEEP`` times the oldest half is dropped: the p95 follows the recent frames."""
    figures = ProbationFigures(started=0.0)
    for i in range(LATENCY_KEEP):
        figures.add_result(frame=i, confidence=1.0, finite=True, inference_ms=1000.0, detections=None)
    for i in range(LATENCY_KEEP):
        figures.add_result(
            frame=LATENCY_KEEP + i, confidence=1.0, finite=True, inference_ms=1.0, detections=None
        )
    assert len(figures.inference_ms) <= LATENCY_KEEP
    snap = figures.snapshot()
    assert snap.frames == 2 * LATENCY_KEEP  # the counts are not trimmed, only the times
    assert snap.inference_p95_ms == 1.0


def test_snapshot_is_a_copy() -> None:
    figures = ProbationFigures(started=0.0)
    figures.add_result(frame=0, confidence=1.0, finite=True, inference_ms=1.0, detections=1)
    snap = figures.snapshot()
    figures.add_result(frame=1, confidence=0.0, finite=False, inference_ms=9.0, detections=0)
    assert snap.frames == 1 and snap.nonfinite_frame is None and snap.confidence_mean == 1.0


# --------------------------------------------------------------------------- baseline


def test_baseline_round_trip() -> None:
    b = Baseline(confidence=0.75, detection_rate=0.5)
    assert Baseline.from_json(b.to_json()) == b
    assert Baseline.from_json(None) == Baseline()
    assert Baseline.from_json({}) == Baseline()
    assert Baseline.from_json({"confidence": None, "detection_rate": None}) == Baseline()
    assert Baseline.from_json({"confidence": 1, "detection_rate": 0}) == Baseline(1.0, 0.0)
    assert isinstance(Baseline.from_json({"confidence": 1}).confidence, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([0.5, 0.5], "baseline: expected an object"),
        ("0.5", "baseline: expected an object"),
        (0.5, "baseline: expected an object"),
        ({"confidence": True}, "baseline.confidence: expected a number or null, got True"),
        ({"confidence": "0.5"}, "baseline.confidence: expected a number or null, got '0.5'"),
        ({"detection_rate": [1]}, "baseline.detection_rate: expected a number or null"),
        ({"confidence": math.nan}, "baseline.confidence: expected a number or null, got nan"),
        ({"detection_rate": math.inf}, "baseline.detection_rate: expected a number or null, got inf"),
    ],
)
def test_baseline_from_json_errors(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Baseline.from_json(data)


# --------------------------------------------------------------------------- config


def test_max_seconds_below_min_seconds() -> None:
    with pytest.raises(ConfigError, match=r"max_seconds \(30\) is below min seconds \(60\)"):
        ProbationPolicy(min_seconds=60, max_seconds=30)
    ProbationPolicy(min_seconds=60, max_seconds=60)  # equal is fine


@pytest.mark.parametrize("value", ["ignore", "", "Rollback", "pass"])
def test_bad_on_thin_evidence(value: str) -> None:
    with pytest.raises(ConfigError, match=r"on_thin_evidence .*use one of rollback, commit"):
        ProbationPolicy(on_thin_evidence=value)


def test_config_error_is_an_edge_agent_error() -> None:
    from inference.errors import EdgeAgentError

    with pytest.raises(EdgeAgentError):
        ProbationPolicy(on_thin_evidence="maybe")
