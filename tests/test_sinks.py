"""agent.sinks.SqliteSink: a batch that cannot be written now is kept and retried (with
back-off, within a bound); what is given up is dropped, counted and said to be dropped.
The fault is real: a second sqlite3 connection holding the database's write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.sinks import SqliteSink
from agent.source import Frame
from inference.errors import FatalError, TransientError
from inference.result import ClassScore, Result
from monitoring.metrics_store import MetricsStore

IMAGE = np.zeros((2, 2, 3), np.uint8)


class Model:
    name = "m"
    version = 1
    sha256 = "0" * 64

    def infer(self, image: Any) -> Result:  # pragma: no cover - not called by sinks
        raise AssertionError


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Locker:
    """A second connection to the same database that takes and releases the write lock."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None)

    def lock(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def unlock(self) -> None:
        self.conn.execute("ROLLBACK")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore(tmp_path / "metrics.db", busy_timeout=0.05)
    yield s
    s.close()


@pytest.fixture
def locker(store: MetricsStore) -> Iterator[Locker]:
    assert isinstance(store.path, Path)
    lk = Locker(store.path)
    yield lk
    lk.conn.close()


def write(sink: SqliteSink, i: int) -> TransientError | FatalError | None:
    result = Result(kind="classes", confidence=0.5, classes=[ClassScore("c0", 0.5)])
    try:
        sink.write(Frame(i, 1000.0 + i, IMAGE), result, Model())
    except (TransientError, FatalError) as err:
        return err
    return None


def frames(store: MetricsStore) -> list[int]:
    return [r["frame"] for r in store.results(limit=10_000)]


def test_a_locked_database_keeps_the_batch_and_retries_it(store: MetricsStore, locker: Locker) -> None:
    clock = Clock()
    sink = SqliteSink(store, batch=4, clock=clock, retry_delay=1.0)
    locker.lock()
    errors = [write(sink, i) for i in range(4)]
    assert errors[:3] == [None, None, None]
    err = errors[3]
    assert isinstance(err, TransientError) and "locked" in str(err)
    assert "4 result rows kept" in str(err) and "retried in 1 s" in str(err)
    assert frames(store) == [] and sink.dropped == 0
    assert write(sink, 4) is None  # backing off: kept, no second attempt yet
    locker.unlock()
    clock.t = 1.0
    assert write(sink, 5) is None  # back-off over, the lock gone: everything kept goes in
    assert frames(store) == [0, 1, 2, 3, 4, 5] and sink.dropped == 0 and sink.pending == 0


def test_back_off_grows_while_the_lock_is_held(store: MetricsStore, locker: Locker) -> None:
    clock = Clock()
    sink = SqliteSink(store, batch=1, clock=clock, retry_delay=1.0, max_retry_delay=4.0)
    locker.lock()
    delays = []
    for i in range(5):
        err = write(sink, i)
        assert isinstance(err, TransientError)
        delays.append(sink.retry_at - clock.t)
        clock.t = sink.retry_at
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    locker.unlock()
    assert write(sink, 5) is None and frames(store) == list(range(6))


def test_rows_beyond_the_bound_are_dropped_counted_and_reported(
    store: MetricsStore, locker: Locker, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    sink = SqliteSink(store, batch=2, clock=clock, retry_delay=1.0, max_pending=5)
    locker.lock()
    for i in range(8):  # 8 rows, at most 5 kept: the 3 oldest are dropped
        write(sink, i)
    assert sink.dropped == 3 and sink.pending == 5
    warnings = [r.getMessage() for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(warnings) == 1 and "5 result rows kept" in warnings[0]  # once per outage, not per row
    clock.t = 10.0
    err = write(sink, 8)  # one more while still locked: a 4th is dropped, and the error says so
    assert isinstance(err, TransientError)
    assert "5 result rows kept" in str(err) and "4 dropped" in str(err)
    locker.unlock()
    clock.t = 100.0
    assert write(sink, 9) is None
    assert frames(store) == [4, 5, 6, 7, 8, 9] and sink.dropped == 4
    events = store.events(kind="results_dropped")
    assert [e["detail"]["rows"] for e in events] == [4] and events[0]["level"] == "warning"


def test_close_while_locked_drops_the_rest_and_says_so(store: MetricsStore, locker: Locker) -> None:
    sink = SqliteSink(store, batch=100, clock=Clock())
    for i in range(3):
        write(sink, i)
    locker.lock()
    with pytest.raises(TransientError, match=r"3 result rows dropped"):
        sink.close()
    assert sink.dropped == 3 and sink.pending == 0
    locker.unlock()
    assert frames(store) == []


def test_a_fatal_error_drops_the_batch_and_says_so(store: MetricsStore) -> None:
    sink = SqliteSink(store, batch=2, clock=Clock())
    store.db.conn.execute("DROP TABLE results")
    assert write(sink, 0) is None
    err = write(sink, 1)
    assert isinstance(err, FatalError) and "no such table" in str(err)
    assert "2 result rows dropped" in str(err) and "kept" not in str(err)
    assert sink.dropped == 2 and sink.pending == 0


def test_a_healthy_database_writes_each_batch_once(store: MetricsStore) -> None:
    sink = SqliteSink(store, batch=3, clock=Clock())
    for i in range(7):
        assert write(sink, i) is None
    sink.close()
    assert frames(store) == list(range(7)) and sink.dropped == 0
