"""What a person sees while the agent runs: a live one-line display on a terminal, plain
log lines otherwise (journald, pipes), and periodic hooks (the systemd ``STATUS=`` line).

    blazeface v1 | 29.8 fps | p50 4.9 ms | frames 1234 | dropped 0 | detections 1

``ProgressLogHandler`` is a logging handler that clears the live line before a log record
is written, so log messages and the display never share a line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TextIO

from agent.periodic import Periodic
from agent.pipeline import PipelineStats

log = logging.getLogger("agent.progress")

CLEAR = "\r\x1b[K"


def format_line(s: PipelineStats) -> str:
    """The one-line summary of a stats snapshot."""
    parts = [
        f"{s.model} v{s.version}",
        f"{s.fps:.1f} fps",
        f"p50 {s.latency_p50_ms:.1f} ms",
        f"frames {s.frames}",
        f"dropped {s.dropped}",
        f"detections {s.detections}",
    ]
    if s.top:
        parts.append(s.top)
    if s.errors:
        parts.append(f"errors {s.errors}")
    if not s.source_ok:
        parts.append(s.source_status)
    return " | ".join(parts)


class LiveLine:
    """The state of the terminal line shared by the display and the log handler."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.shown = False

    def draw(self, text: str) -> None:
        with self.lock:
            self.stream.write(CLEAR + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Remove the live line (call with ``lock`` held)."""
        if self.shown:
            self.stream.write(CLEAR)
            self.shown = False

    def finish(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write("\n")
                self.stream.flush()
                self.shown = False


class ProgressLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler that clears the live line first (see ``LiveLine``)."""

    def __init__(self, line: LiveLine) -> None:
        super().__init__(line.stream)
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        with self.line.lock:
            self.line.clear()
            super().emit(record)


class Progress(Periodic):
    """Calls ``stats()`` periodically: draws the live line (``line`` given) or logs every
    ``log_every`` seconds, and passes each snapshot to the ``hooks``."""

    def __init__(
        self,
        stats: Callable[[], PipelineStats],
        *,
        line: LiveLine | None = None,
        interval: float = 0.25,
        log_every: float = 5.0,
        hooks: list[Callable[[PipelineStats], None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval if line is not None else min(interval, log_every))
        self.stats = stats
        self.line = line
        self.log_every = log_every
        self.hooks = hooks or []
        self._clock = clock
        self._next_log = clock() + log_every

    thread_name = "progress"

    def tick(self) -> None:
        s = self.stats()
        if self.line is not None:
            self.line.draw(format_line(s))
        elif self._clock() >= self._next_log:
            self._next_log = self._clock() + self.log_every
            log.info("%s", format_line(s))
        for hook in self.hooks:
            try:
                hook(s)
            except Exception:
                log.exception("progress hook failed")

    def stop(self) -> None:
        super().stop()
        if self.line is not None:
            self.line.draw(format_line(self.stats()))  # the final figures stay on screen
            self.line.finish()


class Every:
    """Wraps a hook so that it runs at most once every ``seconds``."""

    def __init__(
        self, seconds: float, fn: Callable[[PipelineStats], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.fn = fn
        self._clock = clock
        self._next = 0.0

    def __call__(self, s: PipelineStats) -> None:
        now = self._clock()
        if now >= self._next:
            self._next = now + self.seconds
            self.fn(s)
