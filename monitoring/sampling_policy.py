"""``SamplingPolicy``: the ``[sampling]`` table, as the config and the fleet's ``sampling`` command give it.

One parser serves both (``parse_policy``), so a policy the fleet sends is checked exactly as
one in the config file. Keys::

    enabled       true when sampling runs (default: when strategies are given or an upload
                  target is set; the agent decides, see ``agent.config``)
    dedup_bits    frames within this Hamming distance of a recently kept one are the same (6)
    dedup_window  how long a kept frame's hash is remembered ("10m"; a time: "30s", "2h")
    jpeg_quality  1-100 (85)
    max_side      the longest side of a kept JPEG in pixels (1280; 0 keeps the frame's size)
    daily_bytes   JPEG bytes kept per UTC day, all strategies together ("200MB"; unset: no budget)
    queue         frames waiting for the encoder; more are dropped and counted (4)
    [[sampling.strategies]]   see ``monitoring.sampler`` (first match with quota left wins)

With no strategies, ``DEFAULT_STRATEGIES`` apply: uncertain frames (confidence 0.3-0.6, at
most 10 a minute, 100 an hour, 1000 a day) and a 0.1 % random audit share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.errors import ConfigError
from monitoring.sampler import Strategy, parse_strategies

DEFAULT_STRATEGIES: tuple[Strategy, ...] = (
    Strategy(name="unsure", kind="uncertain", low=0.3, high=0.6, per_minute=10, per_hour=100, per_day=1000),
    Strategy(name="audit", kind="random", share=0.001, per_hour=10),
)
MAX_SIDE_LIMIT = 8192
MAX_QUEUE = 64
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
KEYS = frozenset(
    {
        "enabled",
        "dedup_bits",
        "dedup_window",
        "jpeg_quality",
        "max_side",
        "daily_bytes",
        "queue",
        "strategies",
    }
)


def parse_size(value: Any, where: str) -> int:
    """Bytes from a whole number or a string such as ``"500MB"`` (SI) or ``"2GiB"`` (binary)."""
    if isinstance(value, bool):
        raise ConfigError(
            f'{where}: {value!r} is not a size; give bytes (500000000) or a string like "500MB"'
        )
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    else:
        raise ConfigError(
            f'{where}: {value!r} is not a size; give bytes (500000000) or a string like "500MB" or "2GiB"'
        )
    if n <= 0:
        raise ConfigError(f"{where}: {value!r}: a size must be over 0")
    return n


def parse_seconds(value: Any, where: str, *, maximum: float = 7 * 86400) -> float:
    """Seconds from a number or a string such as ``"10m"``, ``"30s"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ConfigError(f'{where}: {value!r} is not a time; give seconds (600) or a string like "10m"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _TIME.match(value)):
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]
    else:
        raise ConfigError(f'{where}: {value!r} is not a time; give seconds (600) or a string like "10m"')
    if not (math.isfinite(seconds) and 0 < seconds <= maximum):
        raise ConfigError(f"{where}: {value!r}: a time must be over 0 and at most {maximum:g} s")
    return seconds


def _whole(table: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}: must be a whole number in {lo}-{hi}, got {v!r}")
    return v


@dataclass(frozen=True)
class SamplingPolicy:
    """What to keep and how (see the module docstring)."""

    strategies: tuple[Strategy, ...] = DEFAULT_STRATEGIES
    enabled: bool | None = None  # None: the agent decides (on with strategies or an upload target)
    dedup_bits: int = 6
    dedup_window_s: float = 600.0
    jpeg_quality: int = 85
    max_side: int = 1280
    daily_bytes: int | None = None
    queue: int = 4
    explicit_strategies: bool = field(default=False, compare=False)  # given, not the defaults

    def to_dict(self) -> dict[str, Any]:
        """The policy as a ``[sampling]`` table (what ``parse_policy`` takes back)."""
        out: dict[str, Any] = {
            "dedup_bits": self.dedup_bits,
            "dedup_window": f"{self.dedup_window_s:g}s",
            "jpeg_quality": self.jpeg_quality,
            "max_side": self.max_side,
            "queue": self.queue,
            "strategies": [strategy_table(s) for s in self.strategies],
        }
        if self.enabled is not None:
            out["enabled"] = self.enabled
        if self.daily_bytes is not None:
            out["daily_bytes"] = self.daily_bytes
        return out


def strategy_table(s: Strategy) -> dict[str, Any]:
    """A strategy as its ``[[sampling.strategies]]`` table (unset keys left out)."""
    out: dict[str, Any] = {"name": s.name, "kind": s.kind}
    if s.kind == "uncertain":
        out.update(measure=s.measure, low=s.low, high=s.high)
    elif s.kind == "random":
        out["share"] = s.share
    elif s.kind == "classes":
        out["labels"] = sorted(s.labels)
    elif s.kind == "count":
        out.update(
            {k: v for k, v in (("min_count", s.min_count), ("max_count", s.max_count)) if v is not None}
        )
    for key in ("per_minute", "per_hour", "per_day"):
        if getattr(s, key) is not None:
            out[key] = getattr(s, key)
    return out


def parse_policy(table: Any, where: str) -> SamplingPolicy:
    """A ``SamplingPolicy`` from a ``[sampling]`` table (TOML or JSON); strict, ``ConfigError``
    naming ``where.key`` on anything unknown or out of range."""
    if isinstance(table, SamplingPolicy):
        return table
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table such as [sampling] dedup_bits = 6, got {table!r}")
    unknown = sorted(str(k) for k in table if k not in KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(KEYS))}")
    out: dict[str, Any] = {}
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise ConfigError(f"{where}.enabled: must be true or false, got {table['enabled']!r}")
        out["enabled"] = table["enabled"]
    for key, lo, hi in (("dedup_bits", 0, 32), ("jpeg_quality", 1, 100), ("max_side", 0, MAX_SIDE_LIMIT)):
        v = _whole(table, key, where, lo, hi)
        if v is not None:
            out[key] = v
    q = _whole(table, "queue", where, 1, MAX_QUEUE)
    if q is not None:
        out["queue"] = q
    if "max_side" in out and 0 < out["max_side"] < 32:
        raise ConfigError(f"{where}.max_side: {out['max_side']} is too small to label; give 0 or 32-8192")
    if "dedup_window" in table:
        out["dedup_window_s"] = parse_seconds(table["dedup_window"], f"{where}.dedup_window", maximum=86400)
    if "daily_bytes" in table:
        out["daily_bytes"] = parse_size(table["daily_bytes"], f"{where}.daily_bytes")
    if "strategies" in table:
        strategies = parse_strategies(table["strategies"], where)
        if not strategies:
            raise ConfigError(
                f"{where}: [[sampling.strategies]] is empty; give one or more, or leave it out (defaults)"
            )
        out["strategies"] = tuple(strategies)
        out["explicit_strategies"] = True
    return SamplingPolicy(**out)
