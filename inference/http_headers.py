"""HTTP header values the agent's clients read (the downloader, the upload targets)."""

from __future__ import annotations

import email.utils
from datetime import timezone


def parse_retry_after(value: str | None, now: float, cap: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date, against
    ``now`` in Unix seconds), at most ``cap``; None when absent or malformed."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # older Pythons return None for some malformed dates
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, when.timestamp() - now)
    return seconds if cap is None else min(seconds, cap)
