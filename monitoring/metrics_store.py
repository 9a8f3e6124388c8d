"""``MetricsStore``: the agent's SQLite database (``<state>/metrics.db``), via sqlite-utils.

Tables (more are added by the monitoring and update code through ``ensure_table``):

    results  one row per frame: frame, ts, model, version, latency_ms, confidence,
             n_detections (NULL for classifiers and raw models), top_label
             (written in batches; the oldest rows beyond ``max_result_rows`` are pruned)
    events   ts, kind, level, detail (JSON text): starts, stops, source outages, swaps, …

The database runs in WAL mode with ``synchronous=NORMAL``: readers (``sqlite3``, the
control API) never block the writer, and a power cut loses at most the last batch.
One connection is shared by the threads of the process behind a lock. ``sqlite3`` errors
are translated: ``TransientError`` for a locked or full database or an I/O error (worth
retrying), ``FatalError`` for a file that is not a SQLite database.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlite_utils

from inference.errors import FatalError, TransientError

RESULT_COLUMNS = ("frame", "ts", "model", "version", "latency_ms", "confidence", "n_detections", "top_label")
ResultRow = tuple[int, float, str, int, float, float, "int | None", "str | None"]

_INSERT_RESULTS = (
    f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) VALUES ({', '.join('?' * len(RESULT_COLUMNS))})"
)
_PRUNE_EVERY = 10_000  # rows inserted between two prunings


def translate(err: sqlite3.Error, path: Path | str, doing: str) -> TransientError | FatalError:
    """The edge-agent error for a ``sqlite3`` error raised while ``doing`` something on ``path``."""
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) or "locked" in text or "full" in text or "I/O" in text:
        hint = "free some disk space" if "full" in text else "it will be retried"
        return TransientError(f"{path}: SQLite error while {doing}: {text}; {hint}")
    return FatalError(
        f"{path}: SQLite error while {doing}: {text}; if the file is corrupt, move it aside "
        "and restart: the agent creates a new one"
    )


class MetricsStore:
    """See the module docstring. ``path`` may be ``":memory:"`` in tests."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_result_rows: int = 500_000,
        clock: Callable[[], float] = time.time,
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
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=5.0)
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
        """Insert per-frame rows (``RESULT_COLUMNS`` order) in one transaction."""
        if not rows:
            return
        sql = _INSERT_RESULTS
        with self._locked("writing results") as conn:
            with conn:
                conn.executemany(sql, rows)
            self._since_prune += len(rows)
            if self._since_prune >= _PRUNE_EVERY:
                self._since_prune = 0
                with conn:
                    conn.execute(
                        "DELETE FROM results WHERE id <= (SELECT MAX(id) FROM results) - ?",
                        (self.max_result_rows,),
                    )

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
