"""``Spool``: the frames waiting for upload, on disk within a quota, safe against a SIGKILL.

Layout under ``root`` (``<state>/spool/``)::

    <sha256>.jpg        the JPEG, named by the sha256 of its bytes
    <sha256>.json       the sidecar: the caller's ``meta`` plus ``sha256`` and ``spooled_at``
    spool.db            SQLite index (sqlite-utils, WAL): table ``items`` (one row per complete
                        item: sha256, spooled_at, bytes = JPEG + sidecar, strategy, parked,
                        reason, parked_at) and ``counters`` (dropped, refused, quarantined)
    quarantine/         entries that could not be trusted, kept for a person to look at

**Order of a put.** (0) the drops that make room, each a removal (below); (1) the JPEG: temp
file, fsync, rename to ``<sha>.jpg``, fsync the folder; (2) the sidecar the same way; (3) the
index row. The sidecar is the mark that the JPEG is complete, and it holds everything the row
does, so a SIGKILL between any two steps leaves a state ``repair`` turns into either
nothing or the whole item. Removal (upload done, drop, purge) goes the other way round:
sidecar, JPEG, fsync the folder, then the row.

**Repair rules** (``repair()``, run on open):

- a temp file (``.*.tmp``) is deleted: a write that never finished;
- a JPEG without its sidecar, or a sidecar without its JPEG, and no row: deleted (a put
  interrupted before its sidecar, or a removal interrupted after it);
- a row whose JPEG or sidecar is missing: the row and the file left over are deleted;
- both files and no row: re-indexed from the sidecar when it parses, names this sha256 and
  the JPEG's bytes hash to it (a put killed before its row, or a row lost to a power cut:
  ``synchronous=NORMAL``); otherwise quarantined;
- a sidecar that does not parse, or names another sha256: both files go to
  ``quarantine/``, the row is deleted, and the entry is counted and reported.

Every sidecar is parsed on open (one small read per item); JPEG bytes are hashed only when
an entry is re-indexed. Over the quota (``max_bytes``, ``max_items``), a put first drops
the oldest items not parked, then the oldest parked ones, counted in ``dropped``, never
silently. A put that cannot be taken (full disk, I/O error, a frame bigger than the whole
quota) is counted in ``refused``: an ``OSError`` becomes ``TransientError`` naming the
folder and leaves no file behind; ``sqlite3`` errors are translated by
``monitoring.metrics_store.translate``. One connection, shared by the threads behind a lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from inference.errors import ConfigError, EdgeAgentError, TransientError
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_bytes
from monitoring.metrics_store import translate

log = logging.getLogger(__name__)

DB_NAME = "spool.db"
LOCK_NAME = ".lock"  # flock'ed by the one process that has the spool open
QUARANTINE = "quarantine"
COUNTERS = ("dropped", "refused", "quarantined")
_NAME = re.compile(r"^([0-9a-f]{64})\.(jpg|json)$")
_COLUMNS = "sha256, spooled_at, bytes, strategy, parked, reason, parked_at"


class SpoolBusy(TransientError):
    """Another process has the spool open."""


@dataclass(frozen=True)
class SpoolItem:
    """One complete item: ``jpeg_path`` and ``meta_path`` exist while it is in the spool."""

    sha256: str
    spooled_at: float
    bytes: int
    strategy: str | None
    parked: bool
    reason: str | None
    jpeg_path: Path
    meta_path: Path


def _os_error(exc: OSError, root: Path, doing: str) -> TransientError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(
            f"disk full while {doing}: free space under {root} or lower [spool] max_bytes; "
            "new frames are refused until then"
        )
    return TransientError(f"I/O error while {doing} under {root}: {exc.strerror or exc}; check the disk")


class Spool:
    """See the module docstring. ``clock`` gives ``spooled_at`` (the order of drops and of
    ``pending``); ``fs`` is injectable so tests can fail or kill at any fsync or rename."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        max_items: int,
        clock: Callable[[], float] = time.time,
        fs: FsOps = DEFAULT_FS,
        busy_timeout: float = 5.0,
    ) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"[spool] max_bytes must be positive, got {max_bytes}")
        if max_items <= 0:
            raise ConfigError(f"[spool] max_items must be positive, got {max_items}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._clock = clock
        self.fs = fs
        self._lock = threading.Lock()
        self._unsaved_refused = 0  # refusals not yet written to ``counters`` (a full disk)
        db_path = self.root / DB_NAME
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _os_error(exc, self.root, "creating the spool folder") from None
        try:  # one process at a time: a second one's repair would delete the first one's puts
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolBusy(
                f"the spool {self.root} is in use by another process (a running agent?); ask it through "
                "its control API (edge-agent spool ... --state-dir), or stop it first"
            ) from None
        try:
            self._open(db_path, busy_timeout)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise

    def _open(self, db_path: Path, busy_timeout: float) -> None:
        try:
            conn = sqlite3.connect(str(db_path), check_same_thread=False, timeout=busy_timeout)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.table("items").create(
                {
                    "sha256": str,
                    "spooled_at": float,
                    "bytes": int,
                    "strategy": str,
                    "parked": int,
                    "reason": str,
                    "parked_at": float,
                },
                pk="sha256",
                if_not_exists=True,
            )
            self.db.table("items").create_index(["parked", "spooled_at"], if_not_exists=True)
            self.db.table("counters").create({"name": str, "value": int}, pk="name", if_not_exists=True)
            with conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(n,) for n in COUNTERS]
                )
        except sqlite3.Error as err:
            raise translate(err, db_path, "opening the spool index") from None
        self.db_path = db_path
        self.last_repair = self.repair()

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _sql(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection inside a transaction (committed on exit); sqlite3 errors translated."""
        conn = self.db.conn
        try:
            with conn:
                yield conn
        except sqlite3.Error as err:
            raise translate(err, self.db_path, doing) from None

    def _paths(self, sha: str) -> tuple[Path, Path]:
        return self.root / f"{sha}.jpg", self.root / f"{sha}.json"

    def _item(self, row: tuple[Any, ...]) -> SpoolItem:
        sha, spooled_at, size, strategy, parked, reason, _parked_at = row
        jpg, meta = self._paths(sha)
        return SpoolItem(sha, spooled_at, size, strategy, bool(parked), reason, jpg, meta)

    def _get(self, conn: sqlite3.Connection, sha: str) -> SpoolItem | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM items WHERE sha256 = ?", (sha,)).fetchone()
        return None if row is None else self._item(row)

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str, n: int) -> None:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    @staticmethod
    def _insert(conn: sqlite3.Connection, sha: str, ts: float, size: int, strategy: Any) -> None:
        conn.execute(
            "INSERT INTO items (sha256, spooled_at, bytes, strategy, parked) VALUES (?, ?, ?, ?, 0)",
            (sha, ts, size, None if strategy is None else str(strategy)),
        )

    def _remove_files(self, sha: str) -> None:
        """Sidecar first (the mark of a complete item), then the JPEG, then fsync the folder."""
        jpg, meta = self._paths(sha)
        meta.unlink(missing_ok=True)
        jpg.unlink(missing_ok=True)
        self.fs.fsync_dir(self.root)

    def _remove(self, conn: sqlite3.Connection, sha: str, counter: str | None = None) -> None:
        """Remove an item: files, then its row (committed). Once both files are unlinked the
        row goes even when the folder's fsync fails, so no row ever points at missing files."""
        try:
            self._remove_files(sha)
        finally:
            if not any(p.exists() for p in self._paths(sha)):
                conn.execute("DELETE FROM items WHERE sha256 = ?", (sha,))
                if counter is not None:
                    self._bump(conn, counter, 1)
                conn.commit()

    def _refuse(self, why: str) -> None:
        self._unsaved_refused += 1
        with contextlib.suppress(sqlite3.Error):  # a full disk may refuse this too: kept for later
            with self.db.conn as conn:
                self._bump(conn, "refused", self._unsaved_refused)
            self._unsaved_refused = 0
        log.warning("spool: a frame was refused: %s", why)

    def _make_room(self, conn: sqlite3.Connection, add_bytes: int, add_items: int) -> int:
        """Drop the oldest items (not parked first) until ``add_*`` more fit; returns how many."""
        items, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items").fetchone()
        dropped = 0
        while items + add_items > self.max_items or total + add_bytes > self.max_bytes:
            row = conn.execute(
                "SELECT sha256, bytes FROM items ORDER BY parked, spooled_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                break
            sha, size = row
            self._remove(conn, sha, "dropped")
            items, total, dropped = items - 1, total - size, dropped + 1
        if dropped:
            log.warning("spool over its quota: dropped the %d oldest item(s)", dropped)
        return dropped

    # ------------------------------------------------------------------ writing

    def put(self, jpeg: bytes, meta: dict[str, Any]) -> SpoolItem | None:
        """Spool a frame; returns its item (the existing one when these bytes are already
        spooled), or None when it is bigger than the whole quota (counted in ``refused``).
        Raises ``TransientError`` on a full disk or an I/O error (counted, nothing left)."""
        sha = hashlib.sha256(jpeg).hexdigest()
        jpg, meta_path = self._paths(sha)
        with self._lock:
            with self._sql("looking up a spooled frame") as conn:
                existing = self._get(conn, sha)
            if existing is not None:
                return existing
            now = self._clock()
            sidecar = dict(meta, sha256=sha, spooled_at=now)
            meta_bytes = (json.dumps(sidecar, sort_keys=True, default=str) + "\n").encode()
            size = len(jpeg) + len(meta_bytes)
            if size > self.max_bytes:
                self._refuse(
                    f"{size} bytes is more than the whole quota ([spool] max_bytes={self.max_bytes})"
                )
                return None
            try:
                with self._sql("making room in the spool") as conn:
                    self._make_room(conn, size, 1)
                atomic_write_bytes(jpg, jpeg, self.fs)
                atomic_write_bytes(meta_path, meta_bytes, self.fs)
                with self._sql("indexing a spooled frame") as conn:
                    self._insert(conn, sha, now, size, meta.get("strategy"))
            except OSError as exc:
                self._undo(sha)
                self._refuse(str(exc))
                raise _os_error(exc, self.root, f"spooling frame {sha[:12]}") from None
            except EdgeAgentError as err:  # sqlite3, translated
                self._undo(sha)
                self._refuse(str(err))
                raise
            with self._sql("reading a spooled frame") as conn:
                return self._get(conn, sha)

    def _undo(self, sha: str) -> None:
        """Take back the files of a put that failed before its row (best effort: what is
        left, ``repair`` removes on the next open)."""
        with contextlib.suppress(OSError):
            self._remove_files(sha)

    def mark_uploaded(self, sha: str) -> bool:
        """Remove an uploaded item (files, then row); False when it was not in the spool."""
        with self._lock:
            with self._sql("reading a spooled frame") as conn:
                if self._get(conn, sha) is None:
                    return False
            try:
                with self._sql("removing an uploaded frame") as conn:
                    self._remove(conn, sha)
            except OSError as exc:
                raise _os_error(exc, self.root, f"removing uploaded frame {sha[:12]}") from None
            return True

    def park(self, sha: str, reason: str) -> bool:
        """Keep an item but stop offering it for upload (the server refused it: 4xx);
        False when it was not in the spool."""
        with self._lock, self._sql("parking a spooled frame") as conn:
            cur = conn.execute(
                "UPDATE items SET parked = 1, reason = ?, parked_at = ? WHERE sha256 = ?",
                (reason, self._clock(), sha),
            )
            return cur.rowcount > 0

    def quarantine(self, sha: str, reason: str) -> bool:
        """Move an item that cannot be uploaded (corrupt, a file missing or unreadable) to
        ``quarantine/`` and drop its row, counted in ``quarantined``; False when not in the spool."""
        with self._lock:
            with self._sql("reading a spooled frame") as conn:
                if self._get(conn, sha) is None:
                    return False
            try:
                self._quarantine(sha)
            except OSError as exc:
                raise _os_error(exc, self.root, f"quarantining frame {sha[:12]}") from None
            with self._sql("removing a quarantined frame") as conn:
                conn.execute("DELETE FROM items WHERE sha256 = ?", (sha,))
                self._bump(conn, "quarantined", 1)
        log.warning("spool: item %s moved to %s: %s", sha, self.root / QUARANTINE, reason)
        return True

    def purge(self) -> int:
        """Remove every item, parked ones too (``quarantine/`` is left alone); returns how many.
        Every sidecar goes first, then every JPEG, one fsync of the folder, then the rows in one
        transaction: quick on an SD card, and a cut anywhere leaves what ``repair`` removes."""
        with self._lock:
            with self._sql("listing the spool") as conn:
                shas = [r[0] for r in conn.execute("SELECT sha256 FROM items")]
            try:
                for ext in ("json", "jpg"):
                    for sha in shas:
                        (self.root / f"{sha}.{ext}").unlink(missing_ok=True)
                self.fs.fsync_dir(self.root)
            except OSError as exc:
                raise _os_error(exc, self.root, "purging the spool") from None
            with self._sql("purging the spool") as conn:
                conn.executemany("DELETE FROM items WHERE sha256 = ?", [(sha,) for sha in shas])
            return len(shas)

    def unpark(self) -> int:
        """Offer every parked item for upload again (after the target was fixed); returns how many."""
        with self._lock, self._sql("unparking spooled frames") as conn:
            cur = conn.execute(
                "UPDATE items SET parked = 0, reason = NULL, parked_at = NULL WHERE parked = 1"
            )
            return cur.rowcount

    # ------------------------------------------------------------------ reading

    def get(self, sha: str) -> SpoolItem | None:
        with self._lock, self._sql("reading a spooled frame") as conn:
            return self._get(conn, sha)

    def pending(self, limit: int = 100) -> list[SpoolItem]:
        """Up to ``limit`` items waiting for upload, oldest first (parked ones left out)."""
        with self._lock, self._sql("listing the spool") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE parked = 0 ORDER BY spooled_at, rowid LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [self._item(r) for r in rows]

    def status(self) -> dict[str, Any]:
        """``items``, ``bytes``, ``pending``, ``parked``, ``parked_bytes``, ``by_strategy``
        ({name: {items, bytes}}, parked ones included; no strategy under ``""``), the quota,
        and the counters ``dropped``, ``refused``, ``quarantined`` (kept across restarts)."""
        with self._lock, self._sql("reading the spool status") as conn:
            out = _status(conn)
        out["refused"] += self._unsaved_refused
        return {**out, "max_bytes": self.max_bytes, "max_items": self.max_items}

    # ------------------------------------------------------------------ repair

    def _check_sidecar(self, sha: str, meta_path: Path) -> dict[str, Any] | None:
        try:
            obj = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(obj, dict) or obj.get("sha256") != sha:
            return None
        return obj

    def _quarantine(self, sha: str) -> None:
        qdir = self.root / QUARANTINE
        qdir.mkdir(exist_ok=True)
        for path in self._paths(sha):
            if path.exists():
                self.fs.rename(path, qdir / path.name)
        self.fs.fsync_dir(qdir)
        self.fs.fsync_dir(self.root)

    def repair(self) -> dict[str, Any]:
        """Make the files and the index agree (the rules are in the module docstring); returns
        ``temp_files``, ``orphan_files`` (deleted), ``rows_removed``, ``reindexed`` (counts) and
        ``quarantined`` (sha256s moved to ``quarantine/``)."""
        report: dict[str, Any] = {
            "temp_files": 0,
            "orphan_files": 0,
            "rows_removed": 0,
            "reindexed": 0,
            "quarantined": [],
        }
        with self._lock:
            try:
                self._repair(report)
            except OSError as exc:
                raise _os_error(exc, self.root, "repairing the spool") from None
        if report["quarantined"]:
            log.warning(
                "spool: %d corrupt item(s) moved to %s: %s",
                len(report["quarantined"]),
                self.root / QUARANTINE,
                ", ".join(report["quarantined"]),
            )
        if any(report[k] for k in ("temp_files", "orphan_files", "rows_removed", "reindexed")):
            log.info("spool repaired: %s", report)
        return report

    def _repair(self, report: dict[str, Any]) -> None:
        files: dict[str, set[str]] = {}
        changed = False
        with os.scandir(self.root) as it:
            for entry in it:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    os.unlink(entry.path)
                    report["temp_files"] += 1
                    changed = True
                    continue
                m = _NAME.match(entry.name)
                if m:
                    files.setdefault(m.group(1), set()).add(m.group(2))
        with self._sql("reading the spool index") as conn:
            rows = {r[0] for r in conn.execute("SELECT sha256 FROM items")}
        gone: list[str] = []
        quarantined: list[str] = []
        for sha in rows | set(files):
            kinds = files.get(sha, set())
            if kinds != {"jpg", "json"}:  # incomplete: a put or a removal cut short
                if kinds:
                    report["orphan_files"] += len(kinds)
                    changed = True
                    for kind in kinds:
                        (self.root / f"{sha}.{kind}").unlink(missing_ok=True)
                if sha in rows:
                    gone.append(sha)
                continue
            jpg, meta_path = self._paths(sha)
            sidecar = self._check_sidecar(sha, meta_path)
            if sidecar is None or (sha not in rows and not self._reindexable(sha, jpg, sidecar)):
                self._quarantine(sha)
                quarantined.append(sha)
                if sha in rows:
                    gone.append(sha)
                continue
            if sha not in rows:
                size = jpg.stat().st_size + meta_path.stat().st_size
                with self._sql("re-indexing a spooled frame") as conn:
                    self._insert(conn, sha, float(sidecar["spooled_at"]), size, sidecar.get("strategy"))
                report["reindexed"] += 1
        if changed:
            self.fs.fsync_dir(self.root)
        with self._sql("removing index rows without files") as conn:
            conn.executemany("DELETE FROM items WHERE sha256 = ?", [(s,) for s in gone])
            if quarantined:
                self._bump(conn, "quarantined", len(quarantined))
            self._make_room(conn, 0, 0)  # re-indexed items may have taken it over the quota
        report["rows_removed"] = len(gone) - sum(1 for s in quarantined if s in rows)
        report["quarantined"] = sorted(quarantined)

    @staticmethod
    def _reindexable(sha: str, jpg: Path, sidecar: dict[str, Any]) -> bool:
        if not isinstance(sidecar.get("spooled_at"), int | float):
            return False
        return hashlib.sha256(jpg.read_bytes()).hexdigest() == sha

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status(conn: sqlite3.Connection) -> dict[str, Any]:
    by: dict[str, dict[str, int]] = {}
    items = total = parked = parked_bytes = 0
    for strategy, p, n, b in conn.execute(
        "SELECT COALESCE(strategy, ''), parked, COUNT(*), SUM(bytes) FROM items GROUP BY 1, 2"
    ):
        entry = by.setdefault(strategy, {"items": 0, "bytes": 0})
        entry["items"] += n
        entry["bytes"] += b
        items, total = items + n, total + b
        if p:
            parked, parked_bytes = parked + n, parked_bytes + b
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return {
        "items": items,
        "bytes": total,
        "pending": items - parked,
        "parked": parked,
        "parked_bytes": parked_bytes,
        "by_strategy": dict(sorted(by.items())),
        **{name: counters.get(name, 0) for name in COUNTERS},
    }


def read_status(root: Path) -> dict[str, Any]:
    """``Spool.status()`` of a spool no process has open for writing, read-only: no repair,
    nothing created (``edge-agent spool status`` without a running agent). The quota is not
    known here. A missing spool reads as empty."""
    db_path = Path(root) / DB_NAME
    if not db_path.exists():
        return _status_empty()
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            return _status(conn)
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise translate(err, db_path, "reading the spool status") from None


def _status_empty() -> dict[str, Any]:
    return {
        "items": 0,
        "bytes": 0,
        "pending": 0,
        "parked": 0,
        "parked_bytes": 0,
        "by_strategy": {},
        **dict.fromkeys(COUNTERS, 0),
    }
