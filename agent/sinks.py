"""Where results go: one ``Sink`` protocol, a JSON-lines sink and a SQLite sink.

A results line is one JSON object per frame::

    {"frame": 12, "ts": 1763771234.123456, "model": "blazeface", "version": 1,
     "latency_ms": 4.812, "confidence": 0.93412,
     "detections": [{"label": "face", "score": 0.93412, "box": [x1, y1, x2, y2]}]}

with ``classes`` (``[{label, score}]``) for classifiers, ``texts`` (``[{text, score}]``) for
text recognisers and ``outputs`` (shapes and a summary) for raw models instead of ``detections``.
The SQLite sink's ``top_label`` is the best box's label, the top class or the first text line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from agent.handle import ServingModel
from agent.source import Frame
from inference.errors import EdgeAgentError, FatalError, TransientError
from inference.result import Result
from monitoring.metrics_store import MetricsStore

log = logging.getLogger(__name__)


class SinkClosed(EdgeAgentError):
    """The reader of a sink went away for good (stdout closed by ``| head``): the run ends."""


class Sink(Protocol):
    def write(self, frame: Frame, result: Result, model: ServingModel) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def result_record(frame: Frame, result: Result, model: ServingModel) -> dict[str, Any]:
    """The JSON object of one results line (see the module docstring)."""
    record: dict[str, Any] = {
        "frame": frame.index,
        "ts": round(frame.ts, 6),
        "model": model.name,
        "version": model.version,
        "latency_ms": round(result.latency_ms, 3),
        "confidence": round(float(result.confidence), 5),
    }
    record.update(result.payload())
    return record


class JsonlSink:
    """One JSON object per line to stdout (``"-"``) or to a file (appended, line-buffered)."""

    def __init__(self, target: str | Path | TextIO = "-") -> None:
        self._own = False
        if isinstance(target, (str, Path)) and str(target) == "-":
            self.name = "stdout"
            self._out: TextIO = sys.stdout
            self._flush_each = True
        elif isinstance(target, (str, Path)):
            path = Path(target).expanduser()
            self.name = str(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as err:
                raise TransientError(
                    f"cannot open results file {path}: {err.strerror}; check the folder exists "
                    "and the agent's user may write to it"
                ) from None
            self._own = True
            self._flush_each = False  # line buffering already writes each line
        else:
            self.name = getattr(target, "name", "stream")
            self._out = target
            self._flush_each = True
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def write(self, frame: Frame, result: Result, model: ServingModel) -> None:
        line = self._dumps(result_record(frame, result, model)) + "\n"
        try:
            self._out.write(line)
            if self._flush_each:
                self._out.flush()
        except BrokenPipeError:
            self._detach()
            raise SinkClosed(f"results reader on {self.name} went away") from None
        except OSError as err:
            raise TransientError(f"cannot write results to {self.name}: {err.strerror}") from None

    def _detach(self) -> None:
        """After EPIPE on stdout, point it at /dev/null so the interpreter's exit flush stays quiet."""
        if self._out is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            self._detach()
        except (OSError, ValueError) as err:
            log.warning("cannot flush results to %s: %s", self.name, err)

    def close(self) -> None:
        self.flush()
        if self._own:
            self._out.close()


class SqliteSink:
    """Per-frame rows into ``MetricsStore.results``, in batches of ``batch`` or every ``max_delay`` s.

    A batch that cannot be written now (``TransientError``: the database is locked, the disk
    is full) is kept and written with the next one after a back-off (``retry_delay`` s,
    doubling up to ``max_retry_delay``); ``write`` raises the error, saying how many rows are
    kept. At most ``max_pending`` rows are kept: beyond that the oldest are dropped. Rows that
    cannot be written at all (``FatalError``), or are still unwritten at ``close``, are dropped
    too. Every dropped row is counted in ``dropped``, logged, said to be dropped in the error,
    and recorded as a ``results_dropped`` event once the database takes writes again.
    """

    def __init__(
        self,
        store: MetricsStore,
        batch: int = 64,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_pending: int = 10_000,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self.store = store
        self.batch = batch
        self.max_delay = max_delay
        self.max_pending = max(max_pending, batch)
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._clock = clock
        self._rows: list[tuple[Any, ...]] = []
        self._last_flush = clock()
        self.retry_at = 0.0  # no write attempt before this (clock time) after a failed one
        self.failures = 0  # failed write attempts in a row
        self.dropped = 0  # rows given up on, since the start
        self._unrecorded = 0  # dropped rows not yet in a results_dropped event
        self._bounded = False  # the bound was hit in this outage (logged once)

    @property
    def pending(self) -> int:
        """Rows written to the sink but not yet to the database."""
        return len(self._rows)

    def write(self, frame: Frame, result: Result, model: ServingModel) -> None:
        n: int | None = None
        top: str | None = None
        if result.kind == "detections":
            n = len(result.detections)
            if n:
                top = max(result.detections, key=lambda d: d.score).label
        elif result.kind == "classes" and result.classes:
            top = result.classes[0].label
        elif result.kind == "text" and result.texts:
            top = result.texts[0].text
        self._rows.append(
            (
                frame.index,
                frame.ts,
                model.name,
                model.version,
                result.latency_ms,
                float(result.confidence),
                n,
                top,
            )
        )
        now = self._clock()
        if now < self.retry_at:  # backing off after a failed write: keep (within the bound)
            self._bound()
        elif len(self._rows) >= self.batch or now - self._last_flush >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        """Write the kept rows, unless backing off after a failed attempt (``close`` always tries)."""
        if self._clock() >= self.retry_at:
            self._write(final=False)

    def close(self) -> None:
        """The last attempt: rows that still cannot be written are dropped, and the error says so."""
        self._write(final=True)

    def _write(self, *, final: bool) -> None:
        self._last_flush = self._clock()
        n = len(self._rows)
        if not n:
            return
        try:
            self.store.add_results(self._rows)
        except TransientError as err:
            self.failures += 1
            if final:
                self._drop(n)
                raise TransientError(f"{err}; {self._dropped_text(n)} at close") from None
            delay = min(self.max_retry_delay, self.retry_delay * 2 ** (self.failures - 1))
            self.retry_at = self._last_flush + delay
            self._bound()
            dropped = (
                f"; {self.dropped} dropped in all (at most {self.max_pending} kept)" if self.dropped else ""
            )
            raise TransientError(
                f"{err}; {len(self._rows)} result rows kept, retried in {delay:g} s{dropped}"
            ) from None
        except FatalError as err:  # retrying cannot help: give the batch up, and say so
            self.failures += 1
            self._drop(n)
            raise FatalError(f"{err}; {self._dropped_text(n)}") from None
        self._rows = []
        self.failures = 0
        self._bounded = False
        self.retry_at = 0.0
        if self._unrecorded:
            self._record_dropped()

    def _bound(self) -> None:
        """Drop the oldest kept rows beyond ``max_pending``."""
        excess = len(self._rows) - self.max_pending
        if excess > 0:
            self._drop(excess)
            if not self._bounded:  # once per outage; each failed attempt's error gives the count
                self._bounded = True
                log.warning(
                    "results database still cannot be written: %d result rows kept, dropping the "
                    "oldest beyond that (%d dropped in all)",
                    self.max_pending,
                    self.dropped,
                )

    def _drop(self, n: int) -> None:
        del self._rows[:n]
        self.dropped += n
        self._unrecorded += n

    def _dropped_text(self, n: int) -> str:
        return f"{n} result rows dropped ({self.dropped} dropped in all)"

    def _record_dropped(self) -> None:
        """A ``results_dropped`` event for the rows given up on since the last one (best effort:
        when it cannot be written either, the count waits for the next successful batch)."""
        try:
            self.store.add_event(
                "results_dropped", {"rows": self._unrecorded, "total": self.dropped}, level="warning"
            )
        except EdgeAgentError as err:
            log.warning("%s; the count of dropped result rows is recorded later", err)
            return
        self._unrecorded = 0


class ListSink:
    """Keeps every record in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.flushes = 0
        self.closed = False

    def write(self, frame: Frame, result: Result, model: ServingModel) -> None:
        self.records.append(result_record(frame, result, model))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True
