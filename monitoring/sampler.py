"""Which frames to keep for labelling: strategies with their own quotas, a daily byte budget.

``Sampler.select`` runs on the inference thread, so it decides from the ``Result`` alone in O(1)
per strategy (no image work; only margin or entropy worked out from a classifier's classes, when
``sample_values`` lacks them, is one pass over the classes, once per frame): the strategies are
tried in order and the first that matches and still has quota left takes the frame (its name is
returned, and the frame counts against its quotas). Kinds:

- ``uncertain``: the ``measure`` (confidence | margin | entropy) lies in [low, high]. confidence is
  ``Result.confidence``; margin and entropy come from ``sample_values`` when given, else from the
  result's classes (``result_measure``). A result without the measure does not match.
- ``random``: a ``share`` of all frames reaching it, drawn from the injected numpy Generator.
- ``classes``: a detection's label, or a classifier's top-1 label, is in ``labels``.
- ``count``: a detector found fewer than ``min_count`` or more than ``max_count`` boxes.
- ``drift``: the frame comes from a window flagged as drifted (``drifted=True``).

Quotas (``per_minute``, ``per_hour``, ``per_day``) are fixed calendar windows in UTC of the
injected wall clock: a minute quota refills at hh:mm:00, an hour quota at hh:00:00, a day quota
at 00:00:00 UTC. Fixed windows are O(1) and predictable; they let through at most twice the
quota across a boundary, which for sampling is fine. The daily byte budget (``daily_bytes``) is
charged after the JPEG is made (``charge``); once spent, ``select`` returns None until the UTC
day rolls over. A frame that is taken but then not kept (a duplicate, a full queue) can give its
slot back with ``release``. A clock that steps back starts the windows afresh. ``select`` runs
on the results thread while ``release`` and ``charge`` come from the collector's worker: one
lock (uncontended: about 0.1 µs) keeps the counts exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from inference.errors import ConfigError
from inference.result import Result, text_measures

Clock = Callable[[], float]
Kind = Literal["uncertain", "random", "classes", "count", "drift"]
Measure = Literal["confidence", "margin", "entropy"]

KINDS: tuple[str, ...] = ("uncertain", "random", "classes", "count", "drift")
MEASURES: tuple[str, ...] = ("confidence", "margin", "entropy")
PERIODS: tuple[tuple[str, int], ...] = (("per_minute", 60), ("per_hour", 3600), ("per_day", 86400))
DAY_S = 86400

# The keys each kind accepts besides name, kind and the quotas.
_KIND_KEYS: dict[str, frozenset[str]] = {
    "uncertain": frozenset({"measure", "low", "high"}),
    "random": frozenset({"share"}),
    "classes": frozenset({"labels"}),
    "count": frozenset({"min_count", "max_count"}),
    "drift": frozenset(),
}
_COMMON_KEYS = frozenset({"name", "kind", "per_minute", "per_hour", "per_day"})
SECTION = "[[sampling.strategies]]"


@dataclass(frozen=True)
class Strategy:
    """One sampling strategy as configured (``None``: not set, no limit)."""

    name: str
    kind: Kind
    measure: Measure = "confidence"
    low: float | None = None
    high: float | None = None
    share: float | None = None
    labels: frozenset[str] = frozenset()
    min_count: int | None = None
    max_count: int | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def limits(self) -> tuple[tuple[int, int], ...]:
        """(period in seconds, quota) for each quota set."""
        out = []
        for key, seconds in PERIODS:
            quota = getattr(self, key)
            if quota is not None:
                out.append((seconds, int(quota)))
        return tuple(out)


def result_measure(
    result: Result, measure: str, sample_values: Mapping[str, float] | None = None
) -> float | None:
    """The uncertainty ``measure`` of a frame: from ``sample_values`` when there, else from ``result``.

    confidence is ``Result.confidence``; margin (top-1 minus top-2 score) and entropy (nats, scores
    normalised to sum 1, as ``FrameStats``) exist for classifiers, one pass over the classes, and
    for text (``text_measures``): None for other kinds and for non-finite values. Pass
    ``sample_values`` when the drift monitor has them already (a model with a thousand classes
    costs about 100 µs here otherwise).
    """
    value: float | None = None
    if sample_values is not None and measure in sample_values:
        value = float(sample_values[measure])
    elif measure == "confidence":
        value = float(result.confidence)
    elif result.kind == "text" and measure in ("margin", "entropy"):
        margin, entropy = text_measures(result.texts)
        value = margin if measure == "margin" else entropy
    elif result.kind == "classes" and result.classes:
        if measure == "margin":
            first = second = -math.inf
            for c in result.classes:
                if c.score > first:
                    first, second = c.score, first
                elif c.score > second:
                    second = c.score
            value = first - second if len(result.classes) > 1 else first
        elif measure == "entropy":
            positive = [c.score for c in result.classes if c.score > 0 and math.isfinite(c.score)]
            total = sum(positive)
            value = -sum((p / total) * math.log(p / total) for p in positive) if total > 0 else 0.0
    return value if value is not None and math.isfinite(value) else None


def _fail(where: str, i: int, key: str, why: str) -> ConfigError:
    return ConfigError(f"{where}: {SECTION} #{i} {key}: {why}")


def _number(table: Mapping[str, Any], key: str, where: str, i: int) -> float | None:
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(where, i, key, f"must be a finite number, got {v!r}")
    return float(v)


def _count(table: Mapping[str, Any], key: str, where: str, i: int) -> int | None:
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(where, i, key, f"must be a whole number >= 0, got {v!r}")
    return v


def _parse_one(table: Any, where: str, i: int) -> Strategy:
    if not isinstance(table, Mapping):
        raise _fail(where, i, "", f"must be a table, got {type(table).__name__}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, i, "name", f"must be a non-empty string, got {name!r}")
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _fail(where, i, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = _COMMON_KEYS | _KIND_KEYS[kind]
    for key in table:
        if key not in allowed:
            others = [k for k, keys in _KIND_KEYS.items() if key in keys]
            hint = f" (it belongs to kind {others[0]})" if others else ""
            allowed_list = ", ".join(sorted(allowed))
            raise _fail(where, i, str(key), f"unknown key for kind {kind!r}{hint}; allowed: {allowed_list}")
    fields: dict[str, Any] = {key: _count(table, key, where, i) for key, _ in PERIODS}
    if kind == "uncertain":
        measure = table.get("measure", "confidence")
        if not isinstance(measure, str) or measure not in MEASURES:
            raise _fail(where, i, "measure", f"must be one of {', '.join(MEASURES)}, got {measure!r}")
        low, high = _number(table, "low", where, i), _number(table, "high", where, i)
        if low is None or high is None:
            raise _fail(where, i, "low" if low is None else "high", "is required for kind 'uncertain'")
        if low > high:
            raise _fail(where, i, "low", f"{low} is above high {high}")
        fields.update(measure=measure, low=low, high=high)
    elif kind == "random":
        share = _number(table, "share", where, i)
        if share is None or not 0 < share <= 1:
            raise _fail(where, i, "share", f"must be a number in (0, 1], got {table.get('share')!r}")
        fields["share"] = share
    elif kind == "classes":
        labels = table.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise _fail(where, i, "labels", f"must be a non-empty list of label strings, got {labels!r}")
        fields["labels"] = frozenset(labels)
    elif kind == "count":
        lo, hi = _count(table, "min_count", where, i), _count(table, "max_count", where, i)
        if lo is None and hi is None:
            raise _fail(where, i, "min_count", "kind 'count' needs min_count, max_count or both")
        if lo is not None and hi is not None and lo > hi:
            raise _fail(where, i, "min_count", f"{lo} is above max_count {hi}")
        fields.update(min_count=lo, max_count=hi)
    return Strategy(name=name, kind=cast(Kind, kind), **fields)


def parse_strategies(tables: Sequence[Any], where: str) -> list[Strategy]:
    """Strategies from the ``[[sampling.strategies]]`` tables of a config (``where`` names the file).

    Strict: unknown or misplaced keys, wrong types, low > high, a share outside (0, 1], duplicate
    names and unknown kinds raise ConfigError naming ``[[sampling.strategies]] #i key`` (i from 1).
    """
    if not isinstance(tables, (list, tuple)):
        raise ConfigError(f"{where}: {SECTION} must be an array of tables, got {type(tables).__name__}")
    out: list[Strategy] = []
    names: set[str] = set()
    for i, table in enumerate(tables, start=1):
        strategy = _parse_one(table, where, i)
        if strategy.name in names:
            raise _fail(where, i, "name", f"{strategy.name!r} is already the name of an earlier strategy")
        names.add(strategy.name)
        out.append(strategy)
    return out


class _Quota:
    """The counts of one strategy in its current fixed windows."""

    __slots__ = ("counts", "limits", "windows")

    def __init__(self, limits: tuple[tuple[int, int], ...]) -> None:
        self.limits = limits
        self.windows = [-1] * len(limits)  # the window index each count belongs to
        self.counts = [0] * len(limits)

    def _roll(self, now: float) -> None:
        for j, (seconds, _) in enumerate(self.limits):
            w = int(now // seconds)
            if w != self.windows[j]:
                self.windows[j], self.counts[j] = w, 0

    def left(self, now: float) -> bool:
        self._roll(now)
        return all(c < quota for c, (_, quota) in zip(self.counts, self.limits, strict=True))

    def take(self) -> None:
        for j in range(len(self.counts)):
            self.counts[j] += 1

    def give_back(self) -> None:
        for j in range(len(self.counts)):
            self.counts[j] = max(0, self.counts[j] - 1)


class Sampler:
    """Picks the frames worth keeping: ``select`` names the strategy that takes a frame, or None."""

    def __init__(
        self,
        strategies: Sequence[Strategy],
        *,
        rng: np.random.Generator,
        clock: Clock = time.time,
        daily_bytes: int | None = None,
    ) -> None:
        if daily_bytes is not None and daily_bytes < 0:
            raise ValueError(f"Sampler: daily_bytes must be >= 0, got {daily_bytes}")
        self.strategies = tuple(strategies)
        self.rng = rng
        self.clock = clock
        self.daily_bytes = daily_bytes
        self._quotas = {s.name: _Quota(s.limits()) for s in self.strategies}
        self._day = -1
        self._spent = 0
        self.taken: dict[str, int] = {s.name: 0 for s in self.strategies}  # frames taken, since start
        self.over_quota: dict[str, int] = {s.name: 0 for s in self.strategies}  # matched, no quota left
        self.over_budget = 0  # frames not considered because the byte budget was spent
        self._lock = threading.Lock()

    @property
    def bytes_today(self) -> int:
        """Bytes charged in the current UTC day."""
        with self._lock:
            self._roll_day(self.clock())
            return self._spent

    def _roll_day(self, now: float) -> None:
        day = int(now // DAY_S)
        if day != self._day:
            self._day, self._spent = day, 0

    def _matches(self, s: Strategy, result: Result, values: dict[str, float | None], drifted: bool) -> bool:
        if s.kind == "uncertain":
            if s.measure not in values:  # each measure is worked out once per frame
                values[s.measure] = result_measure(result, s.measure)
            v = values[s.measure]
            return v is not None and cast(float, s.low) <= v <= cast(float, s.high)
        if s.kind == "random":
            return bool(self.rng.random() < cast(float, s.share))
        if s.kind == "classes":
            if result.kind == "detections":
                return any(d.label in s.labels for d in result.detections)
            if result.kind == "classes" and result.classes:
                return max(result.classes, key=lambda c: c.score).label in s.labels
            return False
        if s.kind == "count":
            if result.kind != "detections":
                return False
            n = len(result.detections)
            too_few = s.min_count is not None and n < s.min_count
            return too_few or (s.max_count is not None and n > s.max_count)
        return drifted  # drift

    def select(
        self, result: Result, sample_values: dict[str, float] | None = None, drifted: bool = False
    ) -> str | None:
        """The name of the first strategy that matches ``result`` and has quota left (counted), or None."""
        with self._lock:
            return self._select(result, sample_values, drifted)

    def _select(self, result: Result, sample_values: dict[str, float] | None, drifted: bool) -> str | None:
        now = self.clock()
        if self.daily_bytes is not None:
            self._roll_day(now)
            if self._spent >= self.daily_bytes:
                self.over_budget += 1
                return None
        values: dict[str, float | None] = dict(sample_values) if sample_values else {}
        for s in self.strategies:
            if not self._matches(s, result, values, drifted):
                continue
            quota = self._quotas[s.name]
            if not quota.left(now):
                self.over_quota[s.name] += 1
                continue
            quota.take()
            self.taken[s.name] += 1
            return s.name
        return None

    def release(self, name: str) -> None:
        """Give back the quota slot of a frame ``name`` took but that was not kept (a duplicate, a drop)."""
        quota = self._quotas.get(name)
        if quota is not None:
            with self._lock:
                quota.give_back()

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` (a JPEG just made) against today's byte budget."""
        with self._lock:
            self._roll_day(self.clock())
            self._spent += max(0, int(nbytes))

    # ------------------------------------------------------------------ across restarts

    def snapshot(self) -> dict[str, Any]:
        """The quota counts and today's bytes, as JSON (``restore`` takes it back after a restart)."""
        with self._lock:
            return {
                "day": self._day,
                "spent": self._spent,
                "quotas": {
                    name: {
                        "limits": [list(p) for p in q.limits],
                        "windows": list(q.windows),
                        "counts": list(q.counts),
                    }
                    for name, q in self._quotas.items()
                },
            }

    def restore(self, snap: Mapping[str, Any]) -> int:
        """Take back the counts of ``snapshot`` for every strategy whose name and quotas are
        unchanged (counts of windows that have passed are dropped at the next frame, as ever);
        returns how many strategies were restored. Malformed entries are ignored."""
        restored = 0
        with self._lock:
            day, spent = snap.get("day"), snap.get("spent")
            if isinstance(day, int) and isinstance(spent, int) and spent >= 0:
                self._day, self._spent = day, spent
            quotas = snap.get("quotas")
            for name, q in quotas.items() if isinstance(quotas, Mapping) else ():
                mine = self._quotas.get(name)
                if mine is None or not isinstance(q, Mapping):
                    continue
                windows, counts = q.get("windows"), q.get("counts")
                if [tuple(p) for p in q.get("limits") or ()] != list(mine.limits):
                    continue
                if not (isinstance(windows, list) and isinstance(counts, list)):
                    continue
                if len(windows) != len(mine.limits) or len(counts) != len(mine.limits):
                    continue
                if not all(isinstance(v, int) and v >= -1 for v in windows):
                    continue
                if not all(isinstance(v, int) and v >= 0 for v in counts):
                    continue
                mine.windows, mine.counts = list(windows), list(counts)
                restored += 1
        return restored
