"""``MetricsStore``: the agent's SQLite database (``<state>/metrics.db``), via sqlite-utils.

Tables (more are added by the monitoring and update code through ``ensure_table``):

    results         one row per frame (opt-in): frame, ts, model, version, latency_ms, confidence,
                    n_detections (NULL for classifiers and raw models), top_label
                    (written in batches; the oldest rows beyond ``max_result_rows`` are pruned)
    events          ts, kind, level, detail (JSON text): starts, stops, source outages, swaps, …
    windows         one row per drift window: model, version, reference ("bundle" | "learned" |
                    "learning"), start_ts, end_ts, samples, frames, fps, latency_p50_ms,
                    latency_p95_ms, confidence (the window's mean), drifted (0/1), summary (JSON:
                    ``WindowSummary.to_json()``)
    drift           one row per score of a window: window_id, ts (the window's end), model,
                    version, metric, score, value, threshold, drifted (0/1)
    alerts          ts, kind, metric, state ("raised" | "cleared"), model, version, score, value,
                    threshold, detail (JSON: ``Alert.to_json()``)
    model_versions  ts, model, version, sha256, reference: each time a version starts serving
    monitor_state   key (primary key), ts, state (JSON): drift detector and learning state
    rollups_windows period ("hour" | "day", UTC), start_ts, model, version (the key); windows,
                    samples, frames, fps (mean), latency_p50_ms and latency_p95_ms (means),
                    latency_p95_max_ms, confidence (mean of the windows' means), confidence_n
                    (windows with a confidence), drifted (drifted windows)
    rollups_drift   period, start_ts, model, version, metric, score (the key); n, mean, max,
                    threshold (mean), drifted (windows over threshold; share = drifted / n)
    rollup_marks    period, done_until: where the roll-ups have got to

A window or drift row belongs to the hour of its end. ``housekeeping(now)`` rolls up each
complete hour not yet rolled up (the days from the hours), then deletes rows older than
``max_age_days`` (windows, drift, results, events) or ``rollup_max_age_days`` (roll-ups,
alerts, model versions but the newest, jobs), then, while the database and its WAL take more
than ``max_bytes``, the oldest raw rows (windows, drift, results, events) in chunks. A new
database has ``auto_vacuum=INCREMENTAL`` so deleting rows gives the space back; one written by
an older agent keeps its size and reuses its free pages.

The database runs in WAL mode with ``synchronous=NORMAL``: readers (``sqlite3``, the
control API, ``MetricsReader`` for ``edge-agent report``) never block the writer, and a power
cut loses at most the last batch. One connection is shared by the threads of the process
behind a lock. ``sqlite3`` errors are translated by their SQLite result code:
``TransientError`` for a busy or locked database, a full disk, an I/O error or a file that
cannot be opened now (worth retrying later), ``FatalError`` for the rest: a corrupt file or
one that is not a SQLite database, a read-only one, a missing table. The store retries
nothing itself, and its errors do not say that anything will be retried: a caller that does
retry (``agent.sinks.SqliteSink``) says so. A method raises only when what it was asked to
write was not written; ``housekeeping`` raises when a step failed (what the steps before it
did stays done) and its caller logs it.
"""

from __future__ import annotations

import json
import logging
import math
import os
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

HOUR, DAY = 3_600.0, 86_400.0
PERIODS: dict[str, float] = {"hour": HOUR, "day": DAY}
WINDOW_COLUMNS: dict[str, Any] = {
    "id": int,
    "model": str,
    "version": int,
    "reference": str,
    "start_ts": float,
    "end_ts": float,
    "samples": int,
    "frames": int,
    "fps": float,
    "latency_p50_ms": float,
    "latency_p95_ms": float,
    "confidence": float,
    "drifted": int,
    "summary": str,
}
DRIFT_COLUMNS: dict[str, Any] = {
    "id": int,
    "window_id": int,
    "ts": float,
    "model": str,
    "version": int,
    "metric": str,
    "score": str,
    "value": float,
    "threshold": float,
    "drifted": int,
}
ALERT_COLUMNS: dict[str, Any] = {
    "id": int,
    "ts": float,
    "kind": str,
    "metric": str,
    "state": str,
    "model": str,
    "version": int,
    "score": str,
    "value": float,
    "threshold": float,
    "detail": str,
}
MODEL_VERSION_COLUMNS: dict[str, Any] = {
    "id": int,
    "ts": float,
    "model": str,
    "version": int,
    "sha256": str,
    "reference": str,
}
ROLLUP_WINDOW_COLUMNS: dict[str, Any] = {
    "period": str,
    "start_ts": float,
    "model": str,
    "version": int,
    "windows": int,
    "samples": int,
    "frames": int,
    "fps": float,
    "latency_p50_ms": float,
    "latency_p95_ms": float,
    "latency_p95_max_ms": float,
    "confidence": float,
    "confidence_n": int,
    "drifted": int,
}
ROLLUP_DRIFT_COLUMNS: dict[str, Any] = {
    "period": str,
    "start_ts": float,
    "model": str,
    "version": int,
    "metric": str,
    "score": str,
    "n": int,
    "mean": float,
    "max": float,
    "threshold": float,
    "drifted": int,
}
ROLLUP_WINDOW_FIELDS = ", ".join(ROLLUP_WINDOW_COLUMNS)
ROLLUP_DRIFT_FIELDS = ", ".join(ROLLUP_DRIFT_COLUMNS)
# (table, time column): raw rows, kept max_age_days and dropped first when the file is too big
RAW_TABLES = (("windows", "end_ts"), ("drift", "ts"), ("results", "ts"), ("events", "ts"))
# kept rollup_max_age_days (model_versions keeps its newest row whatever its age)
LONG_TABLES = (
    ("rollups_windows", "start_ts"),
    ("rollups_drift", "start_ts"),
    ("alerts", "ts"),
    ("model_versions", "ts"),
    ("jobs", "ts"),
)
_DELETE_CHUNK = 5_000  # rows per transaction: the lock is released between two chunks
_SHRINK_STEPS = 16  # size retention deletes the oldest 1/16 of the raw time span at a time
_WAL_LIMIT = 4 << 20  # bytes the WAL is truncated to after a checkpoint

_ROLLUP_HOURS_WINDOWS = f"""
INSERT OR REPLACE INTO rollups_windows ({ROLLUP_WINDOW_FIELDS})
SELECT 'hour', CAST(end_ts / 3600 AS INTEGER) * 3600.0, COALESCE(model, ''), COALESCE(version, 0),
       COUNT(*), SUM(samples), SUM(frames), AVG(fps), AVG(latency_p50_ms), AVG(latency_p95_ms),
       MAX(latency_p95_ms), AVG(confidence), COUNT(confidence), SUM(drifted)
FROM windows WHERE end_ts >= ? AND end_ts < ? GROUP BY 2, 3, 4
"""
_ROLLUP_HOURS_DRIFT = f"""
INSERT OR REPLACE INTO rollups_drift ({ROLLUP_DRIFT_FIELDS})
SELECT 'hour', CAST(ts / 3600 AS INTEGER) * 3600.0, COALESCE(model, ''), COALESCE(version, 0),
       metric, score, COUNT(value), AVG(value), MAX(value), AVG(threshold), SUM(drifted)
FROM drift WHERE ts >= ? AND ts < ? GROUP BY 2, 3, 4, 5, 6
"""
# The days from the hours: means weighted by what each hour counted.
_ROLLUP_DAYS_WINDOWS = f"""
INSERT OR REPLACE INTO rollups_windows ({ROLLUP_WINDOW_FIELDS})
SELECT 'day', CAST(start_ts / 86400 AS INTEGER) * 86400.0, model, version,
       SUM(windows), SUM(samples), SUM(frames), SUM(fps * windows) / SUM(windows),
       SUM(latency_p50_ms * windows) / SUM(windows), SUM(latency_p95_ms * windows) / SUM(windows),
       MAX(latency_p95_max_ms), SUM(confidence * confidence_n) / NULLIF(SUM(confidence_n), 0),
       SUM(confidence_n), SUM(drifted)
FROM rollups_windows WHERE period = 'hour' AND start_ts >= ? AND start_ts < ? GROUP BY 2, 3, 4
"""
_ROLLUP_DAYS_DRIFT = f"""
INSERT OR REPLACE INTO rollups_drift ({ROLLUP_DRIFT_FIELDS})
SELECT 'day', CAST(start_ts / 86400 AS INTEGER) * 86400.0, model, version, metric, score,
       SUM(n), SUM(mean * n) / NULLIF(SUM(n), 0), MAX(max), SUM(threshold * n) / NULLIF(SUM(n), 0),
       SUM(drifted)
FROM rollups_drift WHERE period = 'hour' AND start_ts >= ? AND start_ts < ? GROUP BY 2, 3, 4, 5, 6
"""


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


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _decode(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _floor(ts: float, period: float) -> float:
    return math.floor(ts / period) * period


class MetricsQueries:
    """The readers shared by ``MetricsStore`` (its one connection, behind its lock) and
    ``MetricsReader`` (a read-only connection of its own). Rows come back as dicts, oldest
    first; JSON columns (``summary``, ``detail``) decoded."""

    path: Path | str

    @contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _has(self, conn: sqlite3.Connection, table: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            is not None
        )

    def _select(self, table: str, sql: str, args: Sequence[Any], doing: str) -> list[dict[str, Any]]:
        with self._reading(doing) as conn:
            if not self._has(conn, table):  # a database written by an older agent
                return []
            return _dicts(conn.execute(sql, args))

    @staticmethod
    def _range(column: str, since: float, until: float | None) -> tuple[str, list[Any]]:
        if until is None:
            return f"{column} >= ?", [since]
        return f"{column} >= ? AND {column} < ?", [since, until]

    def windows(
        self, since: float, until: float | None = None, *, summary: bool = True
    ) -> list[dict[str, Any]]:
        """The windows that ended in ``[since, until)``; ``summary`` decoded (or left out)."""
        cols = [c for c in WINDOW_COLUMNS if summary or c != "summary"]
        where, args = self._range("end_ts", since, until)
        rows = self._select(
            "windows",
            f"SELECT {', '.join(cols)} FROM windows WHERE {where} ORDER BY end_ts, id",
            args,
            "reading windows",
        )
        if summary:
            for row in rows:
                row["summary"] = _decode(row["summary"])
        return rows

    def drift(
        self, since: float, metric: str | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """The drift scores of the windows that ended in ``[since, until)`` (of ``metric``, if given)."""
        where, args = self._range("ts", since, until)
        if metric is not None:
            where, args = f"metric = ? AND {where}", [metric, *args]
        return self._select(
            "drift",
            f"SELECT {', '.join(DRIFT_COLUMNS)} FROM drift WHERE {where} ORDER BY ts, id",
            args,
            "reading drift scores",
        )

    def drift_series(
        self, since: float, until: float | None = None
    ) -> dict[tuple[str, str], tuple[list[float], list[float | None], list[float | None]]]:
        """The drift scores of ``[since, until)`` by (metric, score): (times, values, thresholds).
        Lean (no dict per row) for plotting a week of windows."""
        where, args = self._range("ts", since, until)
        out: dict[tuple[str, str], tuple[list[float], list[float | None], list[float | None]]] = {}
        with self._reading("reading drift scores") as conn:
            if not self._has(conn, "drift"):
                return out
            cur = conn.execute(
                f"SELECT metric, score, ts, value, threshold FROM drift WHERE {where} ORDER BY ts, id", args
            )
            for metric, score, ts, value, threshold in cur:
                series = out.get((metric, score))
                if series is None:
                    series = out[(metric, score)] = ([], [], [])
                series[0].append(ts)
                series[1].append(value)
                series[2].append(threshold)
        return out

    def latest_drift(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The drift scores of the newest window of ``[since, until)`` that has any."""
        where, args = self._range("ts", since, until)
        return self._select(
            "drift",
            f"SELECT {', '.join(DRIFT_COLUMNS)} FROM drift WHERE window_id = "
            f"(SELECT window_id FROM drift WHERE {where} ORDER BY ts DESC, id DESC LIMIT 1) ORDER BY id",
            args,
            "reading drift scores",
        )

    def alerts(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The alerts raised or cleared in ``[since, until)``; ``detail`` decoded."""
        where, args = self._range("ts", since, until)
        rows = self._select(
            "alerts",
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE {where} ORDER BY ts, id",
            args,
            "reading alerts",
        )
        for row in rows:
            row["detail"] = _decode(row["detail"])
        return rows

    def model_versions(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The model versions that started serving in ``[since, until)``."""
        where, args = self._range("ts", since, until)
        return self._select(
            "model_versions",
            f"SELECT {', '.join(MODEL_VERSION_COLUMNS)} FROM model_versions WHERE {where} ORDER BY ts, id",
            args,
            "reading model versions",
        )

    def rollups_windows(self, period: str, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The ``period`` ("hour" | "day") roll-ups of windows starting in ``[since, until)``."""
        if period not in PERIODS:
            raise ValueError(f"period {period!r}: expected one of {sorted(PERIODS)}")
        where, args = self._range("start_ts", since, until)
        return self._select(
            "rollups_windows",
            f"SELECT {ROLLUP_WINDOW_FIELDS} FROM rollups_windows WHERE period = ? AND {where} "
            "ORDER BY start_ts, model, version",
            [period, *args],
            "reading window roll-ups",
        )

    def rollups_drift(
        self, period: str, since: float, until: float | None = None, metric: str | None = None
    ) -> list[dict[str, Any]]:
        """The ``period`` roll-ups of drift scores starting in ``[since, until)``; each row also
        carries ``share_drifted`` (drifted / n)."""
        if period not in PERIODS:
            raise ValueError(f"period {period!r}: expected one of {sorted(PERIODS)}")
        where, args = self._range("start_ts", since, until)
        if metric is not None:
            where, args = f"metric = ? AND {where}", [metric, *args]
        rows = self._select(
            "rollups_drift",
            f"SELECT {ROLLUP_DRIFT_FIELDS} FROM rollups_drift WHERE period = ? AND {where} "
            "ORDER BY start_ts, model, version, metric, score",
            [period, *args],
            "reading drift roll-ups",
        )
        for row in rows:
            row["share_drifted"] = (row["drifted"] or 0) / row["n"] if row["n"] else None
        return rows

    def load_state(self, key: str) -> dict[str, Any] | None:
        """The object ``save_state(key, …)`` stored, or None (never saved, or not a JSON object)."""
        rows = self._select(
            "monitor_state", "SELECT state FROM monitor_state WHERE key = ?", [key], "reading state"
        )
        if not rows:
            return None
        value = _decode(rows[0]["state"])
        if not isinstance(value, dict):
            log.warning("%s: the saved state %r is not a JSON object; ignored", self.path, key)
            return None
        return value

    def time_range(self, table: str = "windows") -> tuple[float, float] | None:
        """The oldest and newest time of ``table``'s rows (a raw or roll-up table), or None if empty."""
        column = dict(RAW_TABLES + LONG_TABLES)[table]
        rows = self._select(
            table, f"SELECT MIN({column}) AS lo, MAX({column}) AS hi FROM {table}", [], f"reading {table}"
        )
        if not rows or rows[0]["lo"] is None:
            return None
        return float(rows[0]["lo"]), float(rows[0]["hi"])


class MetricsReader(MetricsQueries):
    """A read-only view of a ``metrics.db`` (``file:…?mode=ro``): it neither writes nor
    checkpoints, so a running agent's writes go on while it reads. For ``edge-agent report``."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
            self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as err:
            raise translate(err, path, "opening the metrics database read-only") from None

    @contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        try:
            yield self.conn
        except sqlite3.Error as err:
            raise translate(err, self.path, doing) from None

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> MetricsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsStore(MetricsQueries):
    """See the module docstring. ``path`` may be ``":memory:"`` in tests. ``max_bytes=None``
    leaves the size alone."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_result_rows: int = 500_000,
        max_age_days: float = 30.0,
        rollup_max_age_days: float = 400.0,
        max_bytes: int | None = 256 << 20,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.max_result_rows = max_result_rows
        self.max_age_days = max_age_days
        self.rollup_max_age_days = rollup_max_age_days
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._since_prune = 0
        self._memory = str(path) == ":memory:"
        if not self._memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # a write waits up to busy_timeout s for another connection's lock, then fails
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout)
            self.db = sqlite_utils.Database(conn)
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file: deletes give space back
            if not self._memory:
                self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
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
        t = self.db.table
        t("windows").create(WINDOW_COLUMNS, pk="id", if_not_exists=True)
        t("windows").create_index(["end_ts"], if_not_exists=True)
        t("windows").create_index(["model", "version"], if_not_exists=True)
        t("drift").create(DRIFT_COLUMNS, pk="id", if_not_exists=True)
        t("drift").create_index(["ts"], if_not_exists=True)
        t("drift").create_index(["metric", "ts"], if_not_exists=True)
        t("drift").create_index(["window_id"], if_not_exists=True)
        t("alerts").create(ALERT_COLUMNS, pk="id", if_not_exists=True)
        t("alerts").create_index(["ts"], if_not_exists=True)
        t("alerts").create_index(["model", "version"], if_not_exists=True)
        t("model_versions").create(MODEL_VERSION_COLUMNS, pk="id", if_not_exists=True)
        t("model_versions").create_index(["ts"], if_not_exists=True)
        t("model_versions").create_index(["model", "version"], if_not_exists=True)
        t("monitor_state").create({"key": str, "ts": float, "state": str}, pk="key", if_not_exists=True)
        t("rollups_windows").create(
            ROLLUP_WINDOW_COLUMNS, pk=("period", "start_ts", "model", "version"), if_not_exists=True
        )
        t("rollups_drift").create(
            ROLLUP_DRIFT_COLUMNS,
            pk=("period", "start_ts", "model", "version", "metric", "score"),
            if_not_exists=True,
        )
        for name in ("rollups_windows", "rollups_drift"):  # for retention: the key starts with period
            t(name).create_index(["start_ts"], if_not_exists=True)
        t("rollup_marks").create({"period": str, "done_until": float}, pk="period", if_not_exists=True)

    @contextmanager
    def _locked(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self.db.conn
            except sqlite3.Error as err:
                raise translate(err, self.path, doing) from None

    _reading = _locked

    def ensure_table(self, name: str, columns: dict[str, Any], pk: str = "id") -> None:
        """Create table ``name`` if it does not exist (for the modules that add their own tables)."""
        with self._locked(f"creating table {name}"):
            self.db.table(name).create(columns, pk=pk, if_not_exists=True)

    # ------------------------------------------------------------------ per-frame rows, events

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

    # ------------------------------------------------------------------ drift monitoring

    @staticmethod
    def _fields(row: dict[str, Any], columns: dict[str, Any], what: str) -> dict[str, Any]:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"{what}: unknown columns {sorted(unknown)}; the table has {list(columns)}")
        return row

    def add_window(self, summary_row: dict[str, Any], scores: Sequence[dict[str, Any]]) -> int:
        """One window and its drift scores, in one transaction; returns the window's id.

        ``summary_row`` holds ``windows`` columns (``summary`` may be a dict: stored as JSON);
        each score holds ``metric``, ``score``, ``value``, ``threshold``, ``drifted``, and may
        hold ``ts``, ``model``, ``version`` (default: the window's end, model and version).
        Unknown keys are a ``ValueError``. Raises ``TransientError``/``FatalError`` only when
        nothing was written.
        """
        row = dict(self._fields(summary_row, WINDOW_COLUMNS, "add_window"))
        row.pop("id", None)
        if "summary" in row:
            row["summary"] = _json_text(row["summary"])
        drift_fields = [c for c in DRIFT_COLUMNS if c not in ("id", "window_id")]
        drift_rows = []
        for score in scores:
            s = self._fields(score, DRIFT_COLUMNS, "add_window score")
            base = {"ts": row.get("end_ts"), "model": row.get("model"), "version": row.get("version")}
            merged = {**base, **{k: v for k, v in s.items() if k not in ("id", "window_id")}}
            merged["drifted"] = int(bool(merged.get("drifted")))
            drift_rows.append(tuple(merged.get(c) for c in drift_fields))
        if "drifted" in row:
            row["drifted"] = int(bool(row["drifted"]))
        names = list(row)
        with self._locked(f"writing a window with {len(drift_rows)} drift scores") as conn, conn:
            cur = conn.execute(
                f"INSERT INTO windows ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [row[n] for n in names],
            )
            window_id = int(cur.lastrowid or 0)
            conn.executemany(
                f"INSERT INTO drift (window_id, {', '.join(drift_fields)}) "
                f"VALUES (?, {', '.join('?' * len(drift_fields))})",
                [(window_id, *r) for r in drift_rows],
            )
        return window_id

    def add_alert(self, row: dict[str, Any]) -> int:
        """One alert raised or cleared; returns its id. ``row`` holds ``alerts`` columns
        (``detail`` may be a dict: stored as JSON), or is ``Alert.to_json()`` itself: without a
        ``detail``, the whole row is the detail and its keys that are not columns are kept
        there only. ``ts`` defaults to the row's ``end_ts``, else now. Unknown keys beside a
        ``detail`` are a ``ValueError``."""
        data = dict(row)
        detail = data.pop("detail", None)
        if detail is None:
            detail = {k: v for k, v in row.items() if k != "id"}
        else:
            self._fields(row, ALERT_COLUMNS, "add_alert")
        values = {c: data.get(c) for c in ALERT_COLUMNS if c not in ("id", "detail")}
        if values["ts"] is None:
            end = data.get("end_ts")
            values["ts"] = self._clock() if end is None else end
        values["detail"] = _json_text(detail)
        names = list(values)
        with self._locked(f"writing a {values['kind']} alert") as conn, conn:
            cur = conn.execute(
                f"INSERT INTO alerts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [values[n] for n in names],
            )
            return int(cur.lastrowid or 0)

    def add_model_version(
        self, model: str, version: int, sha256: str = "", reference: str = "", ts: float | None = None
    ) -> int:
        """Record that ``model`` ``version`` started serving (with its reference origin); returns the id."""
        with self._locked("recording a model version") as conn, conn:
            cur = conn.execute(
                "INSERT INTO model_versions (ts, model, version, sha256, reference) VALUES (?, ?, ?, ?, ?)",
                (self._clock() if ts is None else ts, model, version, sha256, reference),
            )
            return int(cur.lastrowid or 0)

    def save_state(self, key: str, obj: Any, ts: float | None = None) -> None:
        """Store ``obj`` (JSON-able) under ``key``, replacing what was there."""
        text = json.dumps(obj, sort_keys=True)
        with self._locked(f"saving state {key}") as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO monitor_state (key, ts, state) VALUES (?, ?, ?)",
                (key, self._clock() if ts is None else ts, text),
            )

    # ------------------------------------------------------------------ housekeeping

    def housekeeping(self, now: float | None = None) -> dict[str, Any]:
        """Roll-ups, then retention by age, then by size (see the module docstring).

        Returns what it did: ``rollup_rows`` (roll-up rows written), ``deleted`` (rows per
        table), ``bytes`` (database + WAL on disk after), ``used_bytes`` (pages in use + WAL)
        and ``over_size`` (still above ``max_bytes`` with no raw rows left to delete, or the
        WAL held by a reader). Running it twice at the same ``now`` does nothing the second time.
        Raises ``TransientError``/``FatalError`` when a step failed; the steps before it stay done.
        """
        now = self._clock() if now is None else now
        rolled = self._rollup(now)
        deleted: dict[str, int] = {}
        raw_cut = now - self.max_age_days * DAY
        long_cut = now - self.rollup_max_age_days * DAY
        for table, column in RAW_TABLES:
            self._count(deleted, table, self._delete_before(table, column, raw_cut))
        for table, column in LONG_TABLES:
            keep_newest = "AND id < (SELECT MAX(id) FROM model_versions)" if table == "model_versions" else ""
            self._count(deleted, table, self._delete_before(table, column, long_cut, keep_newest))
        wal_busy = False
        if deleted:
            wal_busy = self._compact()
        over = False
        if self.max_bytes is not None:
            over, wal_busy = self._shrink(deleted, wal_busy)
        return {
            "rollup_rows": rolled,
            "deleted": deleted,
            "bytes": self.file_bytes(),
            "used_bytes": self.used_bytes(),
            "over_size": over,
            "wal_busy": wal_busy,
        }

    @staticmethod
    def _count(deleted: dict[str, int], table: str, n: int) -> None:
        if n:
            deleted[table] = deleted.get(table, 0) + n

    def _mark(self, conn: sqlite3.Connection, period: str) -> float | None:
        row = conn.execute("SELECT done_until FROM rollup_marks WHERE period = ?", (period,)).fetchone()
        return None if row is None else float(row[0])

    def _rollup(self, now: float) -> int:
        """Roll up each complete hour after the hourly mark (a day at a time), then each day
        the hours cover completely. Returns the roll-up rows written."""
        written = 0
        end = _floor(now, HOUR)
        while True:
            with self._locked("rolling up windows by the hour") as conn, conn:
                done = self._mark(conn, "hour")
                first = conn.execute(
                    "SELECT MIN(t) FROM (SELECT MIN(end_ts) AS t FROM windows WHERE end_ts >= ?1 "
                    "UNION ALL SELECT MIN(ts) FROM drift WHERE ts >= ?1)",
                    (-math.inf if done is None else done,),
                ).fetchone()[0]
                if first is None or first >= end:  # nothing (more) to roll up before `end`
                    if done is not None and done < end:
                        conn.execute("INSERT OR REPLACE INTO rollup_marks VALUES ('hour', ?)", (end,))
                    break
                start = max(_floor(first, HOUR), done if done is not None else -math.inf)
                stop = min(end, _floor(start, DAY) + DAY)
                for sql in (_ROLLUP_HOURS_WINDOWS, _ROLLUP_HOURS_DRIFT):
                    written += conn.execute(sql, (start, stop)).rowcount
                conn.execute("INSERT OR REPLACE INTO rollup_marks VALUES ('hour', ?)", (stop,))
        with self._locked("rolling up windows by the day") as conn, conn:
            hours_done = self._mark(conn, "hour")
            if hours_done is None:
                return written
            end_day = _floor(hours_done, DAY)
            done_day = self._mark(conn, "day")
            if done_day is None:
                first = conn.execute(
                    "SELECT MIN(start_ts) FROM rollups_windows WHERE period = 'hour'"
                ).fetchone()[0]
                first_d = conn.execute(
                    "SELECT MIN(start_ts) FROM rollups_drift WHERE period = 'hour'"
                ).fetchone()[0]
                firsts = [f for f in (first, first_d) if f is not None]
                if not firsts:
                    return written
                done_day = _floor(min(firsts), DAY)
            if done_day < end_day:
                for sql in (_ROLLUP_DAYS_WINDOWS, _ROLLUP_DAYS_DRIFT):
                    written += conn.execute(sql, (done_day, end_day)).rowcount
                conn.execute("INSERT OR REPLACE INTO rollup_marks VALUES ('day', ?)", (end_day,))
        return written

    def _tables(self) -> set[str]:
        with self._locked("listing tables") as conn:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _delete_before(self, table: str, column: str, cut: float, extra: str = "") -> int:
        """Delete ``table``'s rows with ``column < cut``, ``_DELETE_CHUNK`` rows per transaction."""
        if table not in self._tables():
            return 0
        total = 0
        sql = (
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? {extra} "
            f"ORDER BY {column} LIMIT {_DELETE_CHUNK})"
        )
        while True:
            with self._locked(f"deleting old rows of {table}") as conn, conn:
                n = conn.execute(sql, (cut,)).rowcount
            total += max(n, 0)
            if n < _DELETE_CHUNK:
                return total

    def _compact(self) -> bool:
        """Give freed pages back (``auto_vacuum=INCREMENTAL``) and truncate the WAL; returns
        True when a reader kept the WAL from being checkpointed in full."""
        with self._locked("compacting the metrics database") as conn:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # executescript steps the pragma to its end (execute frees one page only)
                conn.executescript("PRAGMA incremental_vacuum;")
            if self._memory:
                return False
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return bool(busy)

    def _wal_path(self) -> Path | None:
        return None if self._memory else Path(f"{self.path}-wal")

    def _wal_bytes(self) -> int:
        wal = self._wal_path()
        try:
            return 0 if wal is None else os.path.getsize(wal)
        except OSError:
            return 0

    def file_bytes(self) -> int:
        """The database file and its WAL on disk (pages for ``:memory:``)."""
        if self._memory:
            with self._locked("measuring the database") as conn:
                return int(
                    conn.execute("PRAGMA page_count").fetchone()[0]
                    * conn.execute("PRAGMA page_size").fetchone()[0]
                )
        try:
            main = os.path.getsize(self.path)
        except OSError:
            main = 0
        return main + self._wal_bytes()

    def used_bytes(self, *, wal: bool = True) -> int:
        """Pages in use (free pages left out: they are reused) plus the WAL."""
        with self._locked("measuring the database") as conn:
            pages = (
                conn.execute("PRAGMA page_count").fetchone()[0]
                - conn.execute("PRAGMA freelist_count").fetchone()[0]
            )
            size = int(pages * conn.execute("PRAGMA page_size").fetchone()[0])
        return size + (self._wal_bytes() if wal else 0)

    def _shrink(self, deleted: dict[str, int], wal_busy: bool) -> tuple[bool, bool]:
        """Delete the oldest raw rows, 1/16 of their time span at a time, until the pages in
        use (and the WAL, unless a reader holds it) fit ``max_bytes``. Returns (still over, WAL busy)."""
        assert self.max_bytes is not None
        limit = self.max_bytes

        def over() -> bool:
            return self.used_bytes(wal=not wal_busy) > limit

        if not over():
            return False, wal_busy
        tables = self._tables()
        spans = []
        with self._locked("measuring the raw rows") as conn:
            for table, column in RAW_TABLES:
                if table in tables:
                    spans.append(conn.execute(f"SELECT MIN({column}), MAX({column}) FROM {table}").fetchone())
        los = [lo for lo, _ in spans if lo is not None]
        his = [hi for _, hi in spans if hi is not None]
        if not los:
            return True, wal_busy
        lo, hi = min(los), max(his) + 1.0
        step = (hi - lo) / _SHRINK_STEPS
        for k in range(1, _SHRINK_STEPS + 1):
            cut = hi if k == _SHRINK_STEPS else lo + k * step
            for table, column in RAW_TABLES:
                self._count(deleted, table, self._delete_before(table, column, cut))
            wal_busy = self._compact()
            if not over():
                return False, wal_busy
        log.warning(
            "%s: %d bytes after deleting every raw row, above max_bytes %d (roll-ups, alerts, jobs)",
            self.path,
            self.used_bytes(),
            limit,
        )
        return True, wal_busy

    # ------------------------------------------------------------------ misc

    def count(self, table: str) -> int:
        with self._locked(f"counting {table}"):
            return int(self.db.table(table).count)

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self.db.conn.close()
