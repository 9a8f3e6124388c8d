"""``MetricsStore``: the agent's SQLite database (``<state>/metrics.db``), via sqlite-utils.

Tables (more are added by the monitoring and update code through ``ensure_table``):

    results  one row per frame: frame, ts, model, version, latency_ms, confidence,
             n_detections (NULL for classifiers and raw models), top_label
             (written in batches; the oldest rows beyond ``max_result_rows`` are pruned)
    events   ts, kind, level, detail (JSON text): starts, stops, source outages, swaps, …

The database runs in WAL mode with ``synchronous=NORMAL``: readers (``sqlite3``, the
control API) never block the writer, and a power cut loses at most the last batch.
One connection is shared by the threads of the process behind a lock. ``sqlite3`` errors
are translated by their SQLite result code: ``TransientError`` for a busy or locked
database, a full disk, an I/O error or a file that cannot be opened now (worth retrying
later), ``FatalError`` for the rest: a corrupt file or one that is not a SQLite database, a
read-only one, a missing table. The store retries nothing itself, and its errors do not say
that anything will be retried: a caller that does retry (``agent.sinks.SqliteSink``) says
so. A method raises only when what it was asked to write was not written.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlite_utils

from inference.errors import EdgeAgentError, FatalError, TransientError

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("frame", "ts", "model", "version", "latency_ms", "confidence", "n_detections", "top_label")
ResultRow = tuple[int, float, str, int, float, float, "int | None", "str | None"]

_INSERT_RESULTS = (
    f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) VALUES ({', '.join('?' * len(RESULT_COLUMNS))})"
)
_PRUNE_EVERY = 10_000  # rows inserted between two prunings


# Primary SQLite result codes (https://sqlite.org/rescode.html; stable numbers, and the
# sqlite3 module names them only from Python 3.11). Extended codes (SQLITE_IOERR_WRITE, ...)
# keep the primary code in their low byte.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM = 5, 6, 7
SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL = 10, 13, 14, 15
_LOCK_HINT = "another process holds its write lock (a sqlite3 shell, a second agent?)"
# The codes worth trying again later, with what to tell the operator.
_TRANSIENT_HINTS: dict[int, str] = {
    SQLITE_BUSY: _LOCK_HINT,
    SQLITE_LOCKED: _LOCK_HINT,
    SQLITE_PROTOCOL: _LOCK_HINT,
    SQLITE_NOMEM: "the device is out of memory",
    SQLITE_IOERR: "check the disk (dmesg) and the free space",
    SQLITE_FULL: "free some disk space",
    SQLITE_CANTOPEN: "check the state folder exists and the agent's user may write to it",
}
# Python < 3.11 has no sqlite_errorcode: the message of each transient code instead.
_TRANSIENT_TEXT = (
    ("locked", SQLITE_BUSY),
    ("out of memory", SQLITE_NOMEM),
    ("disk I/O error", SQLITE_IOERR),
    ("is full", SQLITE_FULL),
    ("unable to open", SQLITE_CANTOPEN),
)


def _primary_code(err: sqlite3.Error) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(err)
    return next((c for words, c in _TRANSIENT_TEXT if words in text), None)


def translate(err: sqlite3.Error, path: Path | str, doing: str) -> TransientError | FatalError:
    """The edge-agent error for a ``sqlite3`` error raised while ``doing`` something on ``path``:
    ``TransientError`` when trying again later may work, else ``FatalError``. Neither says
    what the caller will do about it."""
    text = str(err)
    hint = _TRANSIENT_HINTS.get(_primary_code(err) or -1)
    if hint is not None:
        return TransientError(f"{path}: SQLite error while {doing}: {text}; {hint}")
    return FatalError(
        f"{path}: SQLite error while {doing}: {text}; if the file is corrupt or not a SQLite "
        "database, move it aside and restart: the agent creates a new one"
    )


class MetricsStore:
    """See the module docstring. ``path`` may be ``":memory:"`` in tests."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_result_rows: int = 500_000,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.max_result_rows = max_result_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._since_prune = 0
        memory = str(path) == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # a write waits up to busy_timeout s for another connection's lock, then fails
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout)
            self.db = sqlite_utils.Database(conn)
            if not memory:
                self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._create()
        except sqlite3.Error as err:
            raise translate(err, path, "opening the metrics database") from None

    def _create(self) -> None:
        self.db.table("results").create(
            {
                "id": int,
                "frame": int,
                "ts": float,
                "model": str,
                "version": int,
                "latency_ms": float,
                "confidence": float,
                "n_detections": int,
                "top_label": str,
            },
            pk="id",
            if_not_exists=True,
        )
        self.db.table("results").create_index(["ts"], if_not_exists=True)
        self.db.table("events").create(
            {"id": int, "ts": float, "kind": str, "level": str, "detail": str},
            pk="id",
            if_not_exists=True,
        )
        self.db.table("events").create_index(["ts"], if_not_exists=True)

    @contextmanager
    def _locked(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self.db.conn
            except sqlite3.Error as err:
                raise translate(err, self.path, doing) from None

    def ensure_table(self, name: str, columns: dict[str, Any], pk: str = "id") -> None:
        """Create table ``name`` if it does not exist (for the modules that add their own tables)."""
        with self._locked(f"creating table {name}"):
            self.db.table(name).create(columns, pk=pk, if_not_exists=True)

    def add_results(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert per-frame rows (``RESULT_COLUMNS`` order) in one transaction.

        Raises (``TransientError`` / ``FatalError``) only when the rows were not written: then
        none of them were. Pruning the oldest rows afterwards is housekeeping: when it fails,
        it is logged and tried again after the next batch, and the batch still counts as written.
        """
        if not rows:
            return
        with self._locked(f"writing {len(rows)} result rows") as conn:
            with conn:
                conn.executemany(_INSERT_RESULTS, rows)
            self._since_prune += len(rows)
        if self._since_prune >= _PRUNE_EVERY:
            self._prune()

    def _prune(self) -> None:
        try:
            with self._locked("pruning old results") as conn:
                with conn:
                    conn.execute(
                        "DELETE FROM results WHERE id <= (SELECT MAX(id) FROM results) - ?",
                        (self.max_result_rows,),
                    )
                self._since_prune = 0
        except EdgeAgentError as err:
            log.warning("%s; the results were written, pruning is tried again after the next batch", err)

    def add_event(
        self, kind: str, detail: dict[str, Any] | str = "", level: str = "info", ts: float | None = None
    ) -> None:
        """Record one event; ``detail`` is stored as JSON text."""
        text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True, default=str)
        with self._locked("writing an event") as conn, conn:
            conn.execute(
                "INSERT INTO events (ts, kind, level, detail) VALUES (?, ?, ?, ?)",
                (self._clock() if ts is None else ts, kind, level, text),
            )

    def results(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` result rows, oldest first."""
        with self._locked("reading results") as conn:
            cur = conn.execute(
                f"SELECT {', '.join(RESULT_COLUMNS)} FROM results ORDER BY id DESC LIMIT ?", (limit,)
            )
            rows = [dict(zip(RESULT_COLUMNS, r, strict=False)) for r in cur.fetchall()]
        return rows[::-1]

    def events(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` events (of ``kind``, if given), oldest first; ``detail`` decoded when JSON."""
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        with self._locked("reading events") as conn:
            cur = conn.execute(
                f"SELECT ts, kind, level, detail FROM events {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            )
            out = []
            for ts, k, level, detail in cur.fetchall():
                try:
                    value: Any = json.loads(detail) if detail else ""
                except ValueError:
                    value = detail
                out.append({"ts": ts, "kind": k, "level": level, "detail": value})
        return out[::-1]

    def count(self, table: str) -> int:
        with self._locked(f"counting {table}"):
            return int(self.db.table(table).count)

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self.db.conn.close()
