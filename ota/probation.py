"""``ProbationPolicy``: is the version on probation good enough to keep? (pure, no threads)

After TF Serving's ``AspiredVersionPolicy``: a snapshot of figures and ``now`` go in, one
``Verdict`` comes out, and the policy holds no state of its own, so every rule is a row of
a table test (tests/test_probation.py).

    evidence  = ProbationFigures (updated by the runner, one result at a time) .snapshot()
    verdict   = policy.decide(evidence, now)     ->  CONTINUE | PASS | FAIL(reason)

The rules, in the order they are applied:

1. NaN or Inf in any output: fail at once.
2. Inference errors: fail when the error rate over at least 5 frames is above
   ``max_error_rate``, or when the first 5 frames all failed.
3. Not enough evidence yet (fewer than ``min_frames`` frames or less than ``min_seconds``
   since the start): CONTINUE, until ``max_seconds``. Past that deadline the outcome is the
   configured ``on_thin_evidence``: ``rollback`` (the default; reason
   ``no evidence: N frames in T s``) or ``commit``.
4. With enough evidence: fail when the p95 of the model's own inference time (preprocess,
   run and decode; never the time a result waited behind the sinks) is over
   ``latency_budget_ms``, when the mean confidence fell below ``min_confidence_ratio`` of
   the previous version's, or when the share of frames with a detection did; else PASS.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.errors import ConfigError

ON_THIN_EVIDENCE = ("rollback", "commit")
MIN_ERROR_SAMPLE = 5  # frames before an error rate means anything
LATENCY_KEEP = 1024  # inference times kept for the p95


class Decision(str, enum.Enum):
    CONTINUE = "continue"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str = ""

    @property
    def final(self) -> bool:
        return self.decision is not Decision.CONTINUE


CONTINUE = Verdict(Decision.CONTINUE)


@dataclass(frozen=True)
class Baseline:
    """The previous version's recent figures: what the candidate is compared with."""

    confidence: float | None = None
    detection_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "detection_rate": self.detection_rate}

    @classmethod
    def from_json(cls, data: Any) -> Baseline:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("baseline: expected an object")

        def num(key: str) -> float | None:
            v = data.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"baseline.{key}: expected a number or null, got {v!r}")
            return float(v)

        return cls(num("confidence"), num("detection_rate"))


@dataclass(frozen=True)
class Evidence:
    """A snapshot of the candidate's figures on live frames."""

    started: float
    frames: int = 0  # results decoded
    errors: int = 0  # frames whose inference raised
    nonfinite_frame: int | None = None  # the first frame whose outputs held NaN/Inf
    confidence_mean: float | None = None
    detector_frames: int = 0  # frames decoded as detections
    detection_frames: int = 0  # of those, with at least one detection
    inference_p95_ms: float | None = None  # the model's own time, p95


@dataclass(frozen=True)
class ProbationPolicy:
    min_frames: int = 100
    min_seconds: float = 0.0
    max_seconds: float = 600.0
    on_thin_evidence: str = "rollback"
    max_error_rate: float = 0.05
    min_confidence_ratio: float = 0.5
    latency_budget_ms: float | None = None
    baseline: Baseline = field(default_factory=Baseline)

    def __post_init__(self) -> None:
        if self.on_thin_evidence not in ON_THIN_EVIDENCE:
            raise ConfigError(
                f"probation on_thin_evidence {self.on_thin_evidence!r}: "
                f"use one of {', '.join(ON_THIN_EVIDENCE)}"
            )
        if self.max_seconds < self.min_seconds:
            raise ConfigError(
                f"probation max_seconds ({self.max_seconds:g}) is below min seconds "
                f"({self.min_seconds:g}): the deadline would fall before the evidence could"
            )

    def decide(self, ev: Evidence, now: float) -> Verdict:
        """The verdict on ``ev`` at ``now`` (see the module docstring for the rules)."""
        if ev.nonfinite_frame is not None:
            return fail(f"NaN or Inf in the outputs of frame {ev.nonfinite_frame}")
        seen = ev.frames + ev.errors
        if ev.errors and seen >= MIN_ERROR_SAMPLE and ev.errors / seen > self.max_error_rate:
            return fail(
                f"inference errors on {ev.errors} of {seen} frames (max rate {self.max_error_rate:g})"
            )
        elapsed = now - ev.started
        if ev.frames < self.min_frames or elapsed < self.min_seconds:
            if elapsed < self.max_seconds:
                return CONTINUE
            thin = (
                f"no evidence: {ev.frames} frames in {elapsed:.0f} s (probation needs "
                f"{self.min_frames} frames and {self.min_seconds:g} s within {self.max_seconds:g} s)"
            )
            if self.on_thin_evidence == "commit":
                return Verdict(Decision.PASS, thin + "; committed as configured (on_thin_evidence)")
            return fail(thin)
        if ev.frames == 0:  # min_frames = 0 and nothing seen: nothing to judge on
            return Verdict(Decision.PASS, f"no frames in {elapsed:.0f} s; nothing to judge on")
        budget = self.latency_budget_ms
        if budget is not None and ev.inference_p95_ms is not None and ev.inference_p95_ms > budget:
            return fail(
                f"p95 inference time {ev.inference_p95_ms:.1f} ms is over the budget of {budget:g} ms"
            )
        conf, prev_conf = ev.confidence_mean, self.baseline.confidence
        collapsed = conf is not None and prev_conf is not None and prev_conf > 0.05
        if collapsed and conf < self.min_confidence_ratio * prev_conf:  # type: ignore[operator]
            return fail(
                f"confidence collapsed: mean {conf:.3f} against {prev_conf:.3f} for the "
                f"previous version (min ratio {self.min_confidence_ratio:g})"
            )
        prev_rate = self.baseline.detection_rate
        if ev.detector_frames and prev_rate is not None and prev_rate > 0.2:
            rate = ev.detection_frames / ev.detector_frames
            if rate < self.min_confidence_ratio * prev_rate:
                return fail(
                    f"detection rate collapsed: {rate:.2f} of frames against {prev_rate:.2f} "
                    f"for the previous version (min ratio {self.min_confidence_ratio:g})"
                )
        return Verdict(Decision.PASS, f"{ev.frames} frames in {elapsed:.1f} s")


def fail(reason: str) -> Verdict:
    return Verdict(Decision.FAIL, reason)


class ProbationFigures:
    """The candidate's running figures (one writer: the results thread; ``snapshot`` for anyone)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.frames = 0
        self.errors = 0
        self.nonfinite_frame: int | None = None
        self.confidence_sum = 0.0
        self.detector_frames = 0
        self.detection_frames = 0
        self.inference_ms: list[float] = []

    def add_result(
        self, *, frame: int, confidence: float, finite: bool, inference_ms: float, detections: int | None
    ) -> None:
        """One decoded result; ``detections`` is None for a model that is not a detector."""
        self.frames += 1
        self.confidence_sum += confidence
        if not finite and self.nonfinite_frame is None:
            self.nonfinite_frame = frame
        if detections is not None:
            self.detector_frames += 1
            self.detection_frames += 1 if detections else 0
        if len(self.inference_ms) >= LATENCY_KEEP:
            del self.inference_ms[: LATENCY_KEEP // 2]
        self.inference_ms.append(inference_ms)

    def add_error(self) -> None:
        self.errors += 1

    def snapshot(self, *, latency: bool = True) -> Evidence:
        """The figures now; ``latency=False`` skips the p95 (a sort) while it cannot matter yet."""
        lat = sorted(self.inference_ms) if latency else []
        return Evidence(
            started=self.started,
            frames=self.frames,
            errors=self.errors,
            nonfinite_frame=self.nonfinite_frame,
            confidence_mean=(self.confidence_sum / self.frames) if self.frames else None,
            detector_frames=self.detector_frames,
            detection_frames=self.detection_frames,
            inference_p95_ms=lat[round(0.95 * (len(lat) - 1))] if lat else None,
        )


__all__ = [
    "CONTINUE",
    "ON_THIN_EVIDENCE",
    "Baseline",
    "Decision",
    "Evidence",
    "ProbationFigures",
    "ProbationPolicy",
    "Verdict",
    "fail",
]
