"""A tumbling window of samples: raw values per metric, Welford moments, class counts, fps and latency.

A window holds at most a few thousand samples (it is judged and dropped when it closes), so it keeps
the raw value of every metric; ``count_frame`` is called for every frame (sampled or not) and keeps
the frame count and a bounded reservoir of latencies for the percentiles.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from monitoring.frame_stats import Sample

LATENCY_RESERVOIR = 4096  # latencies kept for the percentiles (uniform reservoir beyond that)


@dataclass
class _Welford:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0


@dataclass(frozen=True)
class WindowSummary:
    """What is kept of a window once it is closed (JSON-able through ``to_json``)."""

    index: int
    start_ts: float
    end_ts: float
    samples: int
    frames: int
    fps: float
    latency_p50_ms: float
    latency_p95_ms: float
    means: dict[str, float]  # Welford, per metric present
    stds: dict[str, float]  # population std (ddof 0)
    class_counts: dict[str, int]  # labels seen: top-1 per sample (classifiers) or one per box (detectors)
    class_conf: dict[str, float]  # mean score per label
    latency_ms: float = 0.0  # mean model time of the samples (Sample.latency_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "samples": self.samples,
            "frames": self.frames,
            "fps": round(self.fps, 3),
            "latency_p50_ms": round(self.latency_p50_ms, 3),
            "latency_p95_ms": round(self.latency_p95_ms, 3),
            "latency_ms": round(self.latency_ms, 3),
            "means": {k: _round(v) for k, v in self.means.items()},
            "stds": {k: _round(v) for k, v in self.stds.items()},
            "class_counts": dict(self.class_counts),
            "class_conf": {k: _round(v) for k, v in self.class_conf.items()},
        }


def _round(v: float) -> float:
    return float(f"{v:.6g}")


@dataclass
class Window:
    """A tumbling window being filled; the caller decides when it closes (N samples or T seconds)."""

    index: int
    start_ts: float
    end_ts: float = field(init=False)
    n: int = field(default=0, init=False)  # samples
    frames: int = field(default=0, init=False)  # every frame counted by count_frame
    _values: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)
    _moments: dict[str, _Welford] = field(default_factory=dict, init=False, repr=False)
    _class_counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _class_score_sums: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _detected_conf: list[float] = field(default_factory=list, init=False, repr=False)
    _latencies: list[float] = field(default_factory=list, init=False, repr=False)
    _sample_latency: _Welford = field(default_factory=_Welford, init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.end_ts = self.start_ts
        self._rng = random.Random(self.index)  # reservoir sampling: deterministic per window

    def add(self, sample: Sample) -> None:
        """Add one sampled frame (O(1) amortised)."""
        self.n += 1
        self.end_ts = max(self.end_ts, sample.ts)
        for metric, value in sample.values.items():
            if not math.isfinite(value):
                continue
            self._values.setdefault(metric, []).append(value)
            moments = self._moments.get(metric)
            if moments is None:
                moments = self._moments[metric] = _Welford()
            moments.add(value)
        boxes, conf = sample.values.get("detections", 0.0), sample.values.get("confidence", math.nan)
        if math.isfinite(boxes) and boxes >= 1 and math.isfinite(conf):  # a detector's, with a box
            self._detected_conf.append(conf)
        for label, score in sample.labels:
            self._class_counts[label] = self._class_counts.get(label, 0) + 1
            self._class_score_sums[label] = self._class_score_sums.get(label, 0.0) + score
        if math.isfinite(sample.latency_ms):
            self._sample_latency.add(sample.latency_ms)

    def count_frame(self, latency_ms: float, ts: float | None = None) -> None:
        """Count one frame (every frame, not only samples) for fps and latency; ``ts`` extends the window."""
        self.frames += 1
        if ts is not None:
            self.end_ts = max(self.end_ts, ts)
        if not math.isfinite(latency_ms):
            return
        if len(self._latencies) < LATENCY_RESERVOIR:
            self._latencies.append(latency_ms)
        else:
            slot = self._rng.randrange(self.frames)
            if slot < LATENCY_RESERVOIR:
                self._latencies[slot] = latency_ms

    def values(self, metric: str) -> npt.NDArray[np.float64]:
        """The raw values of ``metric`` in sample order (empty when the metric never appeared)."""
        return np.asarray(self._values.get(metric, ()), np.float64)

    def detected_confidence(self) -> npt.NDArray[np.float64]:
        """The confidence of each sample with at least one box (detectors: its decay is judged on these,
        since a detector's confidence is 0 when it sees nothing)."""
        return np.asarray(self._detected_conf, np.float64)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics that appeared in the window."""
        return tuple(self._values)

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(self._class_counts)

    def class_conf(self) -> dict[str, float]:
        """Mean score per label."""
        return {k: self._class_score_sums[k] / c for k, c in self._class_counts.items()}

    def summary(self) -> WindowSummary:
        duration = self.end_ts - self.start_ts
        if self._latencies:
            p50, p95 = (float(v) for v in np.percentile(self._latencies, (50, 95)))
        else:
            p50 = p95 = 0.0
        return WindowSummary(
            index=self.index,
            start_ts=self.start_ts,
            end_ts=self.end_ts,
            samples=self.n,
            frames=self.frames,
            fps=self.frames / duration if duration > 0 else 0.0,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            means={k: m.mean for k, m in self._moments.items()},
            stds={k: m.std for k, m in self._moments.items()},
            class_counts=dict(self._class_counts),
            class_conf=self.class_conf(),
            latency_ms=self._sample_latency.mean,
        )
