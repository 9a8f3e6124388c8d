"""``UpdateWindow``: the daily local-time window in which a device installs updates.

``[updates] window = "02:00-05:00"`` keeps deploy jobs ``QUEUED`` outside those hours (a
window may wrap midnight: ``"22:00-04:00"``). Pure: every function takes the local time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from inference.errors import ConfigError

_RE = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]|24):([0-5]\d)\s*$")
DAY_MIN = 24 * 60


@dataclass(frozen=True)
class UpdateWindow:
    start_min: int  # minutes after local midnight
    end_min: int  # exclusive; may be <= start_min for a window that wraps midnight

    @classmethod
    def parse(cls, text: str) -> UpdateWindow:
        m = _RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(
                f'update window {text!r}: write it as HH:MM-HH:MM in local time, e.g. "02:00-05:00"'
            )
        start = int(m[1]) * 60 + int(m[2])
        end = int(m[3]) * 60 + int(m[4])
        if end > DAY_MIN:
            raise ConfigError(f"update window {text!r}: the end is past 24:00")
        if start == end % DAY_MIN:
            raise ConfigError(f"update window {text!r}: it is empty; leave the key out to install any time")
        return cls(start, end % DAY_MIN)

    def __str__(self) -> str:
        (a, b), (c, d) = divmod(self.start_min, 60), divmod(self.end_min, 60)
        return f"{a:02d}:{b:02d}-{c:02d}:{d:02d}"

    def _minute(self, now: datetime) -> float:
        return now.hour * 60 + now.minute + now.second / 60 + now.microsecond / 60e6

    def contains(self, now: datetime) -> bool:
        t = self._minute(now)
        if self.start_min < self.end_min:
            return self.start_min <= t < self.end_min
        return t >= self.start_min or t < self.end_min

    def seconds_until_open(self, now: datetime) -> float:
        """0 inside the window, else the seconds until it opens next."""
        if self.contains(now):
            return 0.0
        t = self._minute(now)
        return ((self.start_min - t) % DAY_MIN) * 60.0

    def next_open(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds_until_open(now))


__all__ = ["UpdateWindow"]
