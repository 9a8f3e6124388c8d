"""What must reach the fleet, kept on disk until the broker acknowledges it.

``Outbox`` is a SQLite queue (WAL, ``synchronous=FULL``: a row that ``put`` returned survives a
power cut) of messages with an increasing ``seq``: statuses, telemetry, alerts, events. It is
bounded: past ``max_items`` the oldest telemetry goes first, then events, then alerts; statuses
are never dropped (the queue may then exceed the bound). Drops are counted per kind in the
database (``dropped``), and so are messages the broker refused (``rejected``).

A payload that must carry its own sequence number (the status payload's ``"seq"``) is given as a
function ``payload(seq) -> bytes``: ``put`` reserves the row, calls it, and stores the result in
one transaction, so the seq in the payload is the row's.

``OutboxPump`` drains it over an ``MqttLink``: one message in flight, removed on PUBACK, so the
order holds; after a drop it waits for the next connect and sends the same row again (the fleet
de-duplicates by ``seq``). A row the broker refuses (e.g. not authorised) is removed and counted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ota.errors import ConfigError, EdgeAgentError, TransientError
from ota.mqtt_link import Publication

log = logging.getLogger(__name__)

KINDS = ("status", "telemetry", "alert", "event")
#: Which kinds go first when the outbox is full; statuses are never dropped.
DROP_ORDER = ("telemetry", "event", "alert")
#: QoS used when ``put`` is not told (contract topic table: events are QoS 0).
DEFAULT_QOS = {"status": 1, "telemetry": 1, "alert": 1, "event": 0}
MAX_PAYLOAD_BYTES = 256 * 1024

PayloadSource = bytes | Callable[[int], bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('status', 'telemetry', 'alert', 'event')),
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_kind_seq ON messages (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class PayloadTooLarge(EdgeAgentError, ValueError):
    """A payload over ``MAX_PAYLOAD_BYTES``: it would never be accepted, so it is not queued."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    topic: str
    payload: bytes
    kind: str
    qos: int
    retain: bool
    ts: float


class Outbox:
    """The persistent, bounded queue; thread-safe (one connection under a lock)."""

    def __init__(
        self,
        path: Path,
        *,
        max_items: int = 10000,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.path = path
        self.max_items = max_items
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._conn: sqlite3.Connection | None = self._open(timeout)

    # ------------------------------------------------------------ opening

    def _open(self, timeout: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"outbox directory {self.path.parent}: {exc}; make it writable") from None
        try:
            return self._connect(timeout)
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"outbox {self.path}: cannot open it ({exc}); check the state directory"
            ) from None
        except sqlite3.DatabaseError as exc:  # not a database / malformed: keep it aside, start empty
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s): moved to %s, starting empty", self.path, exc, aside)
            try:
                self.path.replace(aside)
                for suffix in ("-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
                return self._connect(timeout)
            except (OSError, sqlite3.Error) as again:
                raise ConfigError(f"outbox {self.path}: cannot recreate it ({again})") from None

    def _connect(self, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------ writing

    def on_put(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every successful ``put`` (outside the outbox's lock)."""
        with self._lock:
            self._listeners = [*self._listeners, fn]

    def put(
        self,
        topic: str,
        payload: PayloadSource,
        kind: str,
        *,
        qos: int | None = None,
        retain: bool = False,
    ) -> int:
        """Queue one message durably and return its seq.

        ``payload`` is bytes, or ``payload(seq) -> bytes`` when the payload carries its seq.
        PayloadTooLarge over ``MAX_PAYLOAD_BYTES``; TransientError when SQLite fails (disk full...)."""
        if kind not in KINDS:
            raise ValueError(f"outbox kind {kind!r}: one of {KINDS}")
        qos = DEFAULT_QOS[kind] if qos is None else qos
        if qos not in (0, 1, 2):
            raise ValueError(f"outbox qos {qos}: 0, 1 or 2")
        if isinstance(payload, bytes):
            _check_size(topic, payload)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cur = conn.execute(
                        "INSERT INTO messages (topic, payload, kind, qos, retain, ts) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            topic,
                            payload if isinstance(payload, bytes) else b"",
                            kind,
                            qos,
                            int(retain),
                            self._clock(),
                        ),
                    )
                    seq = int(cur.lastrowid or 0)
                    if not isinstance(payload, bytes):
                        data = payload(seq)
                        _check_size(topic, data)
                        conn.execute("UPDATE messages SET payload = ? WHERE seq = ?", (data, seq))
                    self._enforce_bound(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise TransientError(f"outbox {self.path}: cannot queue a {kind} message ({exc})") from None
            listeners = self._listeners
        for fn in listeners:
            fn()
        return seq

    def _enforce_bound(self, conn: sqlite3.Connection) -> None:
        (count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        excess = int(count) - self.max_items
        for kind in DROP_ORDER:
            if excess <= 0:
                return
            rows = conn.execute(
                "SELECT seq FROM messages WHERE kind = ? ORDER BY seq LIMIT ?", (kind, excess)
            ).fetchall()
            if rows:
                conn.executemany("DELETE FROM messages WHERE seq = ?", rows)
                self._count(conn, f"dropped.{kind}", len(rows))
                log.warning(
                    "outbox full (%d items): dropped %d oldest %s message(s)", self.max_items, len(rows), kind
                )
                excess -= len(rows)

    @staticmethod
    def _count(conn: sqlite3.Connection, name: str, n: int) -> None:
        conn.execute(
            "INSERT INTO counters (name, count) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET count = count + excluded.count",
            (name, n),
        )

    def ack(self, seq: int) -> bool:
        """Remove a delivered row; False if it was not there (already acked or dropped)."""
        with self._lock:
            try:
                cur = self._connection().execute("DELETE FROM messages WHERE seq = ?", (seq,))
            except sqlite3.Error as exc:
                raise TransientError(f"outbox {self.path}: cannot remove message {seq} ({exc})") from None
            return cur.rowcount > 0

    def discard(self, seq: int, reason: str) -> bool:
        """Remove a row the broker refused, counted in ``rejected``; False if it was not there."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute("SELECT kind FROM messages WHERE seq = ?", (seq,)).fetchone()
                    if row is not None:
                        conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                        self._count(conn, f"rejected.{row[0]}", 1)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise TransientError(f"outbox {self.path}: cannot remove message {seq} ({exc})") from None
        if row is not None:
            log.error("outbox: message %d (%s) refused by the broker and removed: %s", seq, row[0], reason)
        return row is not None

    # ------------------------------------------------------------ reading

    def head(self) -> OutboxItem | None:
        """The oldest row, or None when empty."""
        row = self._query_one(
            "SELECT seq, topic, payload, kind, qos, retain, ts FROM messages ORDER BY seq LIMIT 1"
        )
        if row is None:
            return None
        seq, topic, payload, kind, qos, retain, ts = row
        return OutboxItem(int(seq), str(topic), bytes(payload), str(kind), int(qos), bool(retain), float(ts))

    def pending(self) -> int:
        """How many rows wait to be delivered."""
        row = self._query_one("SELECT COUNT(*) FROM messages")
        return int(row[0]) if row else 0

    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped because the outbox was full, by kind (persisted)."""
        return self._counters("dropped")

    @property
    def rejected(self) -> dict[str, int]:
        """Rows the broker refused, by kind (persisted)."""
        return self._counters("rejected")

    def _counters(self, prefix: str) -> dict[str, int]:
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute("SELECT name, count FROM counters WHERE name LIKE ?", (prefix + ".%",))
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise TransientError(f"outbox {self.path}: cannot read counters ({exc})") from None
        counts = dict.fromkeys(KINDS, 0)
        for name, count in rows:
            counts[str(name).split(".", 1)[1]] = int(count)
        return counts

    def _query_one(self, sql: str) -> tuple[Any, ...] | None:
        with self._lock:
            try:
                row: tuple[Any, ...] | None = self._connection().execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise TransientError(f"outbox {self.path}: cannot read ({exc})") from None
            return row

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise TransientError(f"outbox {self.path} is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _check_size(topic: str, payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"outbox: a {len(payload)}-byte payload for {topic} is over the {MAX_PAYLOAD_BYTES}-byte limit; "
            "send less (summaries, not raw data)"
        )


class Link(Protocol):
    """What the pump needs of ``ota.mqtt_link.MqttLink``."""

    @property
    def connected(self) -> bool: ...

    def on_connect(self, fn: Callable[[], None]) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Publication: ...


class OutboxPump:
    """Drains an ``Outbox`` over a link, one message in flight; ``start``, ``kick``, ``stop``."""

    def __init__(self, outbox: Outbox, link: Link, *, retry_s: float = 1.0) -> None:
        self._outbox = outbox
        self._link = link
        self._retry_s = retry_s
        self._cv = threading.Condition()
        self._stopping = False
        self._kicked = False
        self._connects = 0
        self._thread: threading.Thread | None = None
        self.delivered = 0
        link.on_connect(self._on_connect)
        outbox.on_put(self.kick)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("OutboxPump.start() called twice")
        self._thread = threading.Thread(target=self._run, name="outbox-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current step (an unacknowledged row stays queued)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def kick(self) -> None:
        """Something was put: look at the queue again."""
        with self._cv:
            self._kicked = True
            self._cv.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """True once the outbox is empty (every row acknowledged or dropped)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._outbox.pending() == 0, timeout)

    def _on_connect(self) -> None:
        with self._cv:
            self._connects += 1
            self._cv.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait for ``predicate`` or stop; False when stopping."""
        with self._cv:
            self._cv.wait_for(lambda: self._stopping or predicate(), timeout)
            return not self._stopping

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                self._kicked = False
                connects = self._connects
            if not self._link.connected:
                self._wait(lambda: self._connects != connects)  # noqa: B023 (this iteration's value)
                continue
            try:
                item = self._outbox.head()
            except TransientError as exc:
                log.warning("outbox pump: %s", exc)
                self._wait(lambda: False, self._retry_s)
                continue
            if item is None:
                with self._cv:
                    self._cv.notify_all()  # wait_drained
                self._wait(lambda: self._kicked or self._connects != connects)  # noqa: B023
                continue
            self._send(item, connects)
            with self._cv:
                self._cv.notify_all()  # wait_drained

    def _send(self, item: OutboxItem, connects: int) -> None:
        try:
            pub = self._link.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        except TransientError:
            self._wait(lambda: self._connects != connects)
            return
        pub.add_done_callback(lambda _p: self.kick())
        if not self._wait(lambda: pub.done):
            return
        try:
            if pub.ok:
                self._outbox.ack(item.seq)
                self.delivered += 1
            elif pub.refused:
                self._outbox.discard(item.seq, pub.reason or "refused")
            else:
                log.info(
                    "outbox: message %d not acknowledged (%s); resent after reconnect", item.seq, pub.reason
                )
                self._wait(lambda: self._connects != connects)
        except TransientError as exc:
            log.warning("outbox pump: %s", exc)
            self._wait(lambda: False, self._retry_s)
