"""monitoring.metrics_store: sqlite3 errors translated by what they are, and a batch is
reported failed only when its rows were not written. Real faults: a second connection
holding the write lock, a trigger that refuses deletes, a dropped table, a file that is
not a database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import monitoring.metrics_store as metrics_store
from inference.errors import FatalError, TransientError
from monitoring.metrics_store import MetricsStore


def rows(first: int, n: int) -> list[tuple[object, ...]]:
    return [(i, 1000.0 + i, "m", 1, 2.5, 0.5, None, "c0") for i in range(first, first + n)]


@contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection holding the database's write lock (as a sqlite3 shell in a
    transaction, or a second agent on the same state folder, would)."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore(tmp_path / "metrics.db", busy_timeout=0.05)
    yield s
    s.close()


def test_a_locked_database_is_transient_and_promises_nothing(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    with write_locked(store.path), pytest.raises(TransientError) as err:
        store.add_results(rows(0, 3))
    text = str(err.value)
    assert "database is locked" in text and "writing 3 result rows" in text
    assert "retried" not in text  # nothing in the store retries: a caller that does says so
    assert store.count("results") == 0
    store.add_results(rows(0, 3))  # the lock is gone: the same rows go in once
    assert [r["frame"] for r in store.results()] == [0, 1, 2]


def test_an_event_while_locked_is_not_said_to_be_retried(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    with write_locked(store.path), pytest.raises(TransientError) as err:
        store.add_event("start", {"model": "m"})
    assert "locked" in str(err.value) and "retried" not in str(err.value)


def test_a_failing_prune_does_not_fail_a_batch_that_was_written(
    store: MetricsStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics_store, "_PRUNE_EVERY", 4)
    store.max_result_rows = 2
    store.db.conn.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON results BEGIN SELECT RAISE(ABORT, 'pruning refused'); END"
    )
    store.add_results(rows(0, 5))  # written; the prune after it fails: not an error of the batch
    assert store.count("results") == 5
    assert "pruning refused" in caplog.text and "were written" in caplog.text
    store.db.conn.execute("DROP TRIGGER no_delete")
    store.add_results(rows(5, 1))  # the prune is tried again after the next batch
    assert [r["frame"] for r in store.results()] == [4, 5]


def test_a_missing_table_is_fatal_not_transient(store: MetricsStore) -> None:
    store.db.conn.execute("DROP TABLE results")
    with pytest.raises(FatalError, match="no such table"):
        store.add_results(rows(0, 1))


def test_a_file_that_is_not_a_database_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    with pytest.raises(FatalError, match="move it aside"):
        MetricsStore(path)


@pytest.mark.parametrize(
    (
        "code",
        "kind",
    ),  # SQLite result codes: BUSY, LOCKED, FULL, IOERR_WRITE, CORRUPT, NOTADB, ERROR, READONLY
    [
        (5, TransientError),
        (6, TransientError),
        (13, TransientError),
        (778, TransientError),  # SQLITE_IOERR_WRITE: an extended code, its primary is IOERR
        (11, FatalError),
        (26, FatalError),
        (1, FatalError),  # "no such table", SQL errors: retrying cannot help
        (8, FatalError),
    ],
)
def test_translate_goes_by_the_error_code(code: int, kind: type[Exception]) -> None:
    err = sqlite3.OperationalError("some text")
    err.sqlite_errorcode = code  # type: ignore[attr-defined]
    out = metrics_store.translate(err, "m.db", "writing results")
    assert type(out) is kind and "retried" not in str(out)
    if code == metrics_store.SQLITE_FULL:
        assert "free some disk space" in str(out)
