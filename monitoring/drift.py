"""The drift detector: scores each closed window against the reference and raises and clears alerts.

Scores (``monitoring.scores``): per metric PSI (natural log), Jensen–Shannon divergence in bits (log
base 2), mean shift in reference standard deviations; L∞ between the window's class mix and the class
priors when the model has classes. A metric is drifted in a window when any of its scores is over
the reference's threshold for the window's size. Decay: one-sided drops (in reference stds) of the
mean confidence, of each tracked label's mean confidence and (detectors) of its detections per sample.
A detector's ``confidence`` decay is the mean confidence of the window's samples with at least one
box (0 would mean "no box", not "unsure": fewer objects in view is not decay); a window with fewer
than ``MIN_LABEL_COUNT`` such samples does not judge it. How many objects are in view is judged by
``rate:<label>`` and by the drift scores of ``detections`` (and of ``confidence``, over every sample).
Labels that are not ``label_ok`` (too long for the wire) are ignored, as the reference ignores them.

Alerts: ``drift`` for a metric after ``k`` consecutive drifted windows of it; ``retrain_suggested``
for a decay metric after ``k`` consecutive windows over its threshold. An alert clears after
``clear_k`` consecutive windows whose scores are all below ``hysteresis`` x their thresholds.
Consecutive means in time too: a judged window that starts more than ``GAP_FACTOR`` (1.5) window
durations (the longer of its own and the previous judged window's) after the previous judged
window ended (the agent was down, the camera dead) starts every run of drifted and of calm windows
afresh; active alerts stay. A window smaller than the reference's smallest size is not judged and
leaves the state alone; a metric a window lacks (a label too rare in it) leaves that metric's
state alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitoring import scores
from monitoring.reference import (
    CLASSES,
    DECAY_SCORE,
    MIN_LABEL_COUNT,
    ReferenceProfile,
    key,
    label_ok,
    shift_scale,
)
from monitoring.window import Window, WindowSummary

SCORES = ("psi", "js", "mean_shift", "linf")  # drift scores; js in bits (log base 2), mean_shift in ref. std
DECAY_SCORES = (DECAY_SCORE,)  # "drop": one-sided fall in reference stds
DRIFT = "drift"
RETRAIN = "retrain_suggested"
STATE_SCHEMA = 1  # "last_span" was added later: a state without it still resumes
GAP_FACTOR = 1.5  # a pause longer than this many window durations breaks a run of consecutive windows


@dataclass(frozen=True)
class Score:
    metric: str
    score: str
    value: float
    threshold: float
    drifted: bool  # value > threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "score": self.score,
            "value": self.value,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class Alert:
    kind: str  # "drift" | "retrain_suggested"
    metric: str  # e.g. "brightness", "classes", "confidence", "confidence:face", "rate:face"
    score: str
    value: float
    threshold: float
    state: str  # "raised" | "cleared"
    windows: tuple[int, ...]
    start_ts: float
    end_ts: float
    model: str
    version: int
    reference: str  # "bundle" | "learned"
    frames: tuple[str, ...] = ()  # ids of frames collected in those windows

    def message(self) -> str:
        span = (
            f"window {self.windows[0]}"
            if len(self.windows) == 1
            else f"windows {self.windows[0]}-{self.windows[-1]}"
            if self.windows
            else "no window"
        )
        who = f"{self.model} v{self.version}, {self.reference} reference"
        if self.kind == RETRAIN:
            if self.state == "cleared":
                return f"{self.metric} recovered ({span}; {who})"
            return (
                f"retrain suggested: {self.metric} dropped {self.value:.2f} reference std "
                f"(threshold {self.threshold:.2f}) for {span} ({who})"
            )
        if self.state == "cleared":
            return f"{self.metric} back within its reference ({span}; {who})"
        return (
            f"drift on {self.metric}: {self.score} {self.value:.3g} > {self.threshold:.3g} for {span} ({who})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "score": self.score,
            "value": self.value,
            "threshold": self.threshold,
            "state": self.state,
            "windows": list(self.windows),
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "model": self.model,
            "version": self.version,
            "reference": self.reference,
            "frames": list(self.frames),
            "message": self.message(),
        }

    @classmethod
    def from_json(cls, d: Any) -> Alert:
        """The inverse of ``to_json`` (for the detector's saved state); ValueError when it is not one."""
        if not isinstance(d, dict):
            raise ValueError("an alert must be an object")
        try:
            return cls(
                kind=_str(d["kind"]),
                metric=_str(d["metric"]),
                score=_str(d["score"]),
                value=_float(d["value"]),
                threshold=_float(d["threshold"]),
                state=_str(d["state"]),
                windows=tuple(_int(w) for w in _list(d["windows"])),
                start_ts=_float(d["start_ts"]),
                end_ts=_float(d["end_ts"]),
                model=_str(d["model"]),
                version=_int(d["version"]),
                reference=_str(d["reference"]),
                frames=tuple(_str(f) for f in _list(d.get("frames", []))),
            )
        except KeyError as exc:
            raise ValueError(f"an alert lacks {exc}") from None


@dataclass(frozen=True)
class Verdict:
    window: WindowSummary
    scores: tuple[Score, ...]
    drifted: tuple[str, ...]  # drift metrics with a score over its threshold in this window
    raised: tuple[Alert, ...]
    cleared: tuple[Alert, ...]
    active: tuple[Alert, ...]
    judged: bool  # False when the window is smaller than the smallest supported size
    decayed: tuple[str, ...] = ()  # decay metrics over their threshold in this window

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window.to_json(),
            "judged": self.judged,
            "scores": [s.to_json() for s in self.scores],
            "drifted": list(self.drifted),
            "decayed": list(self.decayed),
            "raised": [a.to_json() for a in self.raised],
            "cleared": [a.to_json() for a in self.cleared],
            "active": [a.to_json() for a in self.active],
        }


Span = tuple[int, float, float]  # window index, start_ts, end_ts


@dataclass
class _Track:
    """One metric's alert state: the current run of windows over threshold, of calm windows, the alert."""

    kind: str
    metric: str
    run: list[Span] = field(default_factory=list)
    calm: list[Span] = field(default_factory=list)
    active: Alert | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "run": [list(s) for s in self.run],
            "calm": [list(s) for s in self.calm],
            "active": self.active.to_json() if self.active else None,
        }

    @classmethod
    def from_json(cls, d: Any) -> _Track:
        if not isinstance(d, dict):
            raise ValueError("a track must be an object")
        active = d.get("active")
        kind = _str(d.get("kind"))
        if kind not in (DRIFT, RETRAIN):
            raise ValueError(f"unknown alert kind {kind!r}")
        return cls(
            kind=kind,
            metric=_str(d.get("metric")),
            run=[_span(s) for s in _list(d.get("run"))],
            calm=[_span(s) for s in _list(d.get("calm"))],
            active=Alert.from_json(active) if active is not None else None,
        )


class DriftDetector:
    """Judges closed windows against ``reference``; ``state()`` / ``state=`` carry it across restarts.

    A ``state`` saved for another model, version or reference profile, or one that cannot be read, is
    not resumed: the detector starts afresh and says why in ``state_note``.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        *,
        model: str,
        version: int,
        k: int = 3,
        clear_k: int | None = None,
        hysteresis: float = 0.8,
        state: dict[str, Any] | None = None,
    ) -> None:
        if k < 1 or (clear_k is not None and clear_k < 1) or not 0 < hysteresis <= 1:
            raise ValueError(
                f"need k >= 1, clear_k >= 1 and 0 < hysteresis <= 1, got {k}, {clear_k}, {hysteresis}"
            )
        self.reference = reference
        self.model = model
        self.version = version
        self.k = k
        self.clear_k = clear_k if clear_k is not None else k
        self.hysteresis = hysteresis
        self.fingerprint = fingerprint(reference)
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._judged = 0
        self._last_index: int | None = None
        self._last_span: Span | None = None  # the last judged window
        self.resumed = False
        self.state_note: str | None = None
        if state is not None:
            self._resume(state)

    # -------------------------------------------------------------------------------------- judging

    def judge(self, window: Window) -> Verdict:
        summary = window.summary()
        thresholds = self.reference.thresholds_for(window.n)
        if thresholds is None:
            return Verdict(summary, (), (), (), (), self._active(), judged=False)
        drift, decay = self._scores(window, thresholds)
        span: Span = (summary.index, summary.start_ts, summary.end_ts)
        if self._last_span is not None and _gap(self._last_span, span):
            self._break_runs()
        raised: list[Alert] = []
        cleared: list[Alert] = []
        for kind, groups in ((DRIFT, drift), (RETRAIN, decay)):
            for metric, group in groups.items():
                event = self._step(kind, metric, group, span)
                if event is not None:
                    (raised if event.state == "raised" else cleared).append(event)
        self._judged += 1
        self._last_index = summary.index
        self._last_span = span
        all_scores = tuple(s for groups in (drift, decay) for group in groups.values() for s in group)
        return Verdict(
            window=summary,
            scores=all_scores,
            drifted=tuple(m for m, group in drift.items() if any(s.drifted for s in group)),
            raised=tuple(raised),
            cleared=tuple(cleared),
            active=self._active(),
            judged=True,
            decayed=tuple(m for m, group in decay.items() if any(s.drifted for s in group)),
        )

    def _scores(
        self, window: Window, thresholds: dict[str, float]
    ) -> tuple[dict[str, list[Score]], dict[str, list[Score]]]:
        ref = self.reference
        n = window.n
        drift: dict[str, list[Score]] = {}
        decay: dict[str, list[Score]] = {}

        def put(
            out: dict[str, list[Score]], metric: str, score: str, value: float, t: dict[str, float]
        ) -> None:
            threshold = t.get(key(metric, score))
            if threshold is not None and math.isfinite(value):
                out.setdefault(metric, []).append(
                    Score(metric, score, value, threshold, scores.exceeds(value, threshold))
                )

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for metric, mref in ref.metrics.items():
                x = window.values(metric)
                t = thresholds if x.size == n else ref.thresholds_for(x.size)
                if x.size == 0 or t is None:
                    continue
                counts = mref.counts(x)
                p = np.asarray(mref.proportions, np.float64)
                mean = float(shift_scale(metric, x).mean())
                put(drift, metric, "psi", float(scores.psi(p, counts)), t)
                put(drift, metric, "js", float(scores.js_bits(p, counts)), t)
                put(drift, metric, "mean_shift", float(scores.mean_shift(mref.mean, mref.std, mean)), t)
                if metric == "confidence" and ref.kind != "detections":
                    put(decay, metric, DECAY_SCORE, float(scores.drop(mref.mean, mref.std, mean)), t)
            if ref.detected_conf is not None:  # a detector: over the samples with at least one box
                boxed = window.detected_confidence()
                if boxed.size >= MIN_LABEL_COUNT:
                    mu, sd = ref.detected_conf
                    put(
                        decay, "confidence", DECAY_SCORE, float(scores.drop(mu, sd, boxed.mean())), thresholds
                    )
            counts_by_label = {k: c for k, c in window.class_counts.items() if label_ok(k)}
            total = sum(counts_by_label.values())
            if ref.class_priors and total > 0:
                labels = list(ref.class_priors) + sorted(set(counts_by_label) - set(ref.class_priors))
                priors = np.array([ref.class_priors.get(label, 0.0) for label in labels])
                mix = np.array([counts_by_label.get(label, 0) for label in labels], np.float64) / total
                put(drift, CLASSES, "linf", float(scores.linf(priors, mix)), thresholds)
            conf = window.class_conf()
            for label, (mu, sd) in ref.class_conf.items():
                if counts_by_label.get(label, 0) >= MIN_LABEL_COUNT:
                    put(
                        decay,
                        f"confidence:{label}",
                        DECAY_SCORE,
                        float(scores.drop(mu, sd, conf[label])),
                        thresholds,
                    )
            for label, (mu, sd) in ref.class_rate.items():
                rate = counts_by_label.get(label, 0) / n
                put(decay, f"rate:{label}", DECAY_SCORE, float(scores.drop(mu, sd, rate)), thresholds)
        return drift, decay

    def _step(self, kind: str, metric: str, group: list[Score], span: Span) -> Alert | None:
        track = self._tracks.get((kind, metric))
        if track is None:
            track = self._tracks[(kind, metric)] = _Track(kind, metric)
        worst = max(group, key=_ratio)
        event: Alert | None = None
        if any(s.drifted for s in group):
            track.run = [*track.run, span][-self.k :]
            track.calm = []
            if track.active is None and len(track.run) >= self.k:
                event = track.active = self._alert(track, worst, "raised", track.run)
        else:
            track.run = []
            if track.active is not None and all(s.value < self.hysteresis * s.threshold for s in group):
                track.calm = [*track.calm, span][-self.clear_k :]
            else:
                track.calm = []  # in the hysteresis band (or nothing to clear)
            if track.active is not None and len(track.calm) >= self.clear_k:
                event = self._alert(track, worst, "cleared", track.calm)
                track.active = None
                track.calm = []
        if not track.run and not track.calm and track.active is None:
            del self._tracks[(kind, metric)]
        return event

    def _break_runs(self) -> None:
        """After a gap in time: no run of drifted or calm windows goes on over it (alerts stay)."""
        for k, track in list(self._tracks.items()):
            track.run, track.calm = [], []
            if track.active is None:
                del self._tracks[k]

    def _alert(self, track: _Track, worst: Score, state: str, spans: list[Span]) -> Alert:
        return Alert(
            kind=track.kind,
            metric=track.metric,
            score=worst.score,
            value=worst.value,
            threshold=worst.threshold,
            state=state,
            windows=tuple(s[0] for s in spans),
            start_ts=spans[0][1],
            end_ts=spans[-1][2],
            model=self.model,
            version=self.version,
            reference=self.reference.origin,
        )

    def _active(self) -> tuple[Alert, ...]:
        return tuple(t.active for _, t in sorted(self._tracks.items()) if t.active is not None)

    def active_alerts(self) -> tuple[Alert, ...]:
        """The alerts raised and not cleared, sorted by kind and metric."""
        return self._active()

    # ---------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """JSON-able state: ``DriftDetector(..., state=...)`` resumes exactly where this one is."""
        return {
            "schema": STATE_SCHEMA,
            "model": self.model,
            "version": self.version,
            "reference": self.reference.origin,
            "fingerprint": self.fingerprint,
            "judged": self._judged,
            "last_index": self._last_index,
            "last_span": list(self._last_span) if self._last_span is not None else None,
            "tracks": [t.to_json() for _, t in sorted(self._tracks.items())],
        }

    def _resume(self, state: Any) -> None:
        try:
            if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
                raise ValueError("not a drift detector state of this agent")
            for name, mine in (
                ("model", self.model),
                ("version", self.version),
                ("reference", self.reference.origin),
                ("fingerprint", self.fingerprint),
            ):
                if state.get(name) != mine:
                    self.state_note = (
                        f"saved state is for another {name} ({state.get(name)!r}): starting afresh"
                    )
                    return
            tracks = [_Track.from_json(t) for t in _list(state.get("tracks"))]
            judged = _int(state.get("judged"))
            last = state.get("last_index")
            last_index = None if last is None else _int(last)
            if "last_span" in state:
                raw = state["last_span"]
                last_span = None if raw is None else _span(raw)
            else:  # saved before last_span was kept: the latest window the tracks remember
                spans = [s for t in tracks for s in (*t.run, *t.calm)]
                last_span = max(spans, key=lambda s: s[2]) if spans else None
        except ValueError as exc:
            self.state_note = f"saved state could not be read ({exc}): starting afresh"
            return
        self._tracks = {(t.kind, t.metric): t for t in tracks}
        self._judged = judged
        self._last_index = last_index
        self._last_span = last_span
        self.resumed = True


def fingerprint(reference: ReferenceProfile) -> str:
    """A short hash of the profile's JSON: a state saved against another profile is not resumed."""
    text = json.dumps(reference.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _gap(last: Span, span: Span) -> bool:
    """Whether ``span`` starts more than GAP_FACTOR window durations after ``last`` ended."""
    duration = max(last[2] - last[1], span[2] - span[1], 0.0)
    return span[1] - last[2] > GAP_FACTOR * duration


def _ratio(s: Score) -> float:
    if s.threshold > 0:
        return s.value / s.threshold
    return math.inf if s.value > 0 else 0.0


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    return float(v)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return v


def _span(v: Any) -> Span:
    items = _list(v)
    if len(items) != 3:
        raise ValueError("a window span is [index, start_ts, end_ts]")
    return (_int(items[0]), _float(items[1]), _float(items[2]))
