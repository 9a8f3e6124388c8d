"""Where results go: one ``Sink`` protocol, a JSON-lines sink and a SQLite sink.

A results line is one JSON object per frame::

    {"frame": 12, "ts": 1763771234.123456, "model": "blazeface", "version": 1,
     "latency_ms": 4.812, "confidence": 0.93412,
     "detections": [{"label": "face", "score": 0.93412, "box": [x1, y1, x2, y2]}]}

with ``classes`` (``[{label, score}]``) for classifiers and ``outputs`` (shapes and a
summary) for raw models instead of ``detections``.
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
from inference.errors import EdgeAgentError, TransientError
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
    """Per-frame rows into ``MetricsStore.results``, in batches of ``batch`` or every ``max_delay`` s."""

    def __init__(
        self,
        store: MetricsStore,
        batch: int = 64,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.batch = batch
        self.max_delay = max_delay
        self._clock = clock
        self._rows: list[tuple[Any, ...]] = []
        self._last_flush = clock()

    def write(self, frame: Frame, result: Result, model: ServingModel) -> None:
        n: int | None = None
        top: str | None = None
        if result.kind == "detections":
            n = len(result.detections)
            if n:
                top = max(result.detections, key=lambda d: d.score).label
        elif result.kind == "classes" and result.classes:
            top = result.classes[0].label
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
        if len(self._rows) >= self.batch or self._clock() - self._last_flush >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        self._last_flush = self._clock()
        if rows:
            self.store.add_results(rows)  # TransientError: the batch is lost, the count says so

    def close(self) -> None:
        self.flush()


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
