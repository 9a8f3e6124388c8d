"""``Uploader``: worker threads that empty the spool into an upload target.

``concurrency`` threads (``upload-1`` …) each claim the oldest pending item no other worker
holds, read its JPEG and sidecar and make one ``target.put``. The outcome decides what next:

    success                          ``spool.mark_uploaded``; counters; the back-off is reset
    UploadUnavailable, spool I/O     every worker pauses: the server's ``retry_after`` when given,
                                     else ``retry_min_s`` doubling to ``retry_max_s`` with equal
                                     jitter (half fixed, half from ``rng``); the item stays pending
    CredentialsRejected, or the      every worker pauses until the credentials/token file changes
    credentials file unreadable      (its ``(mtime_ns, size)``, looked at every ``check_s``) or for
                                     ``retry_max_s``
    UploadRefused, whole target      every worker pauses ``retry_max_s``; the item is untouched
    UploadRefused                    the item is parked (``HTTP <status> <excerpt>``); others go on
    FatalError (digest), a file      the item is quarantined
    missing or unreadable
    anything else                    a bug: logged with its traceback, counted in
                                     ``failures["error"]``; that worker backs off and goes on

Failures that happen together (several workers in flight when the server goes down) double the
back-off once. A ``schedule`` (``ota.update_window.UpdateWindow`` fits) holds every worker until
it opens; ``flush()`` skips the current back-off and ignores the schedule until the spool has been
emptied (back-offs after it are honoured; a credentials or whole-target failure ends it). All waiting is on
one ``Condition``: back-off and the schedule are timed by the injected ``clock`` / ``local_now``
(a test moves them and calls ``wake()``), ``drain`` and ``stop`` by the caller's real timeout.
An upload in flight at ``stop`` is left to finish on its own and its item stays pending: keys
are content-derived, so after a restart it is uploaded again over itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from inference.errors import ConfigError, FatalError, TransientError
from monitoring.spool import Spool, SpoolItem
from monitoring.upload_target import (
    CredentialsRejected,
    HttpTarget,
    S3Target,
    UploadRefused,
    UploadTarget,
    UploadUnavailable,
)

log = logging.getLogger(__name__)

FAILURE_KINDS = ("unavailable", "credentials", "refused", "corrupt", "spool", "error")
IDLE_RECHECK_S = 30.0  # an idle worker looks at the spool this often even without wake()
SCHEDULE_RECHECK_S = 60.0  # the local clock may be set while waiting for the window
LOG_EVERY_S = 60.0  # repeated unavailability: at most one log line a minute
SLACK_S = 1e-3  # a wait this close to its end is over (no spinning on a rounding error)


class Schedule(Protocol):
    def seconds_until_open(self, now: datetime) -> float: ...


class _Corrupt(Exception):
    """The spooled item cannot be read or trusted (internal: turned into a quarantine)."""


def describe_target(target: UploadTarget) -> str:
    """The target for ``/status``: no credentials, tokens, user info or query strings."""
    if isinstance(target, S3Target):
        where = f"s3://{target.bucket}/{target.prefix}".rstrip("/")
        return f"{where} ({target.object_url('').rstrip('/')}, region {target.region})"
    if isinstance(target, HttpTarget):
        parts = urlsplit(target.template)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"{target.method} {urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"
    return type(target).__name__


def credentials_file(target: UploadTarget) -> Path | None:
    """The file whose change may cure a credentials failure (None when there is none)."""
    if isinstance(target, S3Target):
        return target.credentials.path
    if isinstance(target, HttpTarget) and target.token is not None:
        return target.token.path
    return None


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Uploader:
    """See the module docstring. Plain attributes for ``/metrics``: ``uploaded``,
    ``uploaded_bytes``, ``attempts``, ``parked``, ``quarantined`` and ``failures`` (by kind)."""

    def __init__(
        self,
        spool: Spool,
        target: UploadTarget,
        *,
        device: str,
        schedule: Schedule | None = None,
        concurrency: int = 2,
        retry_min_s: float = 1.0,
        retry_max_s: float = 120.0,
        check_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        local_now: Callable[[], datetime] = datetime.now,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"[upload] concurrency must be at least 1, got {concurrency}")
        if not 0 < retry_min_s <= retry_max_s:
            raise ConfigError(
                "[upload] retry delays: need 0 < retry_min_s <= retry_max_s, "
                f"got {retry_min_s} and {retry_max_s}"
            )
        if check_s <= 0:
            raise ConfigError(f"[upload] check_s must be positive, got {check_s}")
        self.spool = spool
        self.target = target
        self.device = device
        self.schedule = schedule
        self.concurrency = concurrency
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.check_s = check_s
        self._clock = clock
        self._local_now = local_now
        self._rng = rng if rng is not None else random.Random()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the workers wait on this
        self._drained = threading.Condition(lock)  # drain() waits on this: an idle worker wakes it alone
        self._threads: list[threading.Thread] = []
        self._in_flight: set[str] = set()
        self._running = False
        self._stopping = False
        self._generation = 0  # bumped by start(): a worker left in flight by stop() then ends
        self._flushing = False
        # the shared pause: until when, why, and (credentials) the file to watch
        self._pause_until: float | None = None
        self._pause_kind: str | None = None
        self._watch: Path | None = None
        self._watch_stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._epoch = 0  # bumped by every pause: failures of attempts begun before it count once
        self._backoff_n = 0  # consecutive paused failures (the exponent)
        self._unlogged = 0  # unavailable failures since the last log line
        self._failing_since_log: float | None = None
        self._failed_total = 0  # failures since the last success (for "uploads resumed")
        self.uploaded = 0
        self.uploaded_bytes = 0
        self.uploaded_stale = 0  # sent, but dropped or purged from the spool meanwhile (not counted above)
        self.attempts = 0
        self.parked = 0
        self.quarantined = 0
        self.failures: dict[str, int] = dict.fromkeys(FAILURE_KINDS, 0)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_upload_at: float | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> Uploader:
        """Start the worker threads (``upload-1`` …); returns self."""
        with self._cond:
            if self._running:
                return self
            self._running, self._stopping = True, False
            self._generation += 1
            self._threads = [
                threading.Thread(
                    target=self._run, args=(self._generation,), name=f"upload-{i + 1}", daemon=True
                )
                for i in range(self.concurrency)
            ]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers; one still in ``put`` after ``timeout`` is left (its item stays pending)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._drained.notify_all()
        deadline = time.monotonic() + timeout
        left = 0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            left += t.is_alive()
        with self._cond:
            self._running = False
            self._threads = []
        if left:
            log.warning("uploader stopped with %d upload(s) still in flight; their items stay spooled", left)

    def wake(self) -> None:
        """Something changed (a new item, the clock): the workers look again. Cheap."""
        with self._cond:
            self._cond.notify_all()

    def flush(self) -> None:
        """Upload now: skip the current back-off and ignore the schedule until the spool is empty."""
        with self._cond:
            self._flushing = True
            self._clear_pause()
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending nor in flight (True), or ``timeout`` real seconds (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if not self._in_flight and not self._pending(1):
                    self._flushing = False  # the spool has been emptied: a flush is over
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)

    # ------------------------------------------------------------------ status

    def _state(self, now: float) -> str:
        if not self._running or self._stopping:
            return "stopped"
        paused = self._pause_until is not None and now < self._pause_until
        if paused and self._pause_kind == "credentials":
            return "credentials_rejected"
        if paused and self._pause_kind == "refused":
            return "target_refused"
        if paused:
            return "backing_off"
        if self._in_flight:
            return "uploading"
        if self._schedule_wait() > 0:
            return "outside_schedule"
        return "idle"

    def status(self) -> dict[str, Any]:
        with self._cond:
            now = self._clock()
            state = self._state(now)
            next_in: float | None = None
            if self._pause_until is not None:
                next_in = max(0.0, self._pause_until - now)
            elif state == "outside_schedule":
                next_in = self._schedule_wait()
            return {
                "state": state,
                "uploaded": self.uploaded,
                "uploaded_bytes": self.uploaded_bytes,
                "uploaded_stale": self.uploaded_stale,
                "attempts": self.attempts,
                "failures": dict(self.failures),
                "parked": self.parked,
                "quarantined": self.quarantined,
                "in_flight": len(self._in_flight),
                "next_attempt_in_s": next_in,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "last_upload_at": self.last_upload_at,
                "schedule": str(self.schedule) if self.schedule is not None else "always",
                "target": describe_target(self.target),
            }

    # ------------------------------------------------------------------ waiting (with _cond held)

    def _wall(self) -> float:
        return self._local_now().timestamp()

    def _schedule_wait(self) -> float:
        if self.schedule is None or self._flushing:
            return 0.0
        return max(0.0, float(self.schedule.seconds_until_open(self._local_now())))

    def _clear_pause(self) -> None:
        self._pause_until = self._pause_kind = self._watch = self._watch_stamp = None

    def _blocked(self, now: float, not_before: float) -> float:
        """0 when this worker may claim an item now, else the seconds to wait."""
        if self._pause_until is not None:
            if (
                self._pause_kind == "credentials"
                and self._watch is not None
                and now + SLACK_S >= self._next_check
            ):
                if _stamp(self._watch) != self._watch_stamp:
                    log.info("uploads: %s changed; trying again", self._watch)
                    self._clear_pause()
                else:
                    self._next_check = now + self.check_s
            if self._pause_until is not None:
                if now + SLACK_S >= self._pause_until:
                    self._clear_pause()
                else:
                    wait = self._pause_until - now
                    if self._pause_kind == "credentials" and self._watch is not None:
                        wait = min(wait, self._next_check - now)
                    return wait
        if now + SLACK_S < not_before:
            return not_before - now
        until_open = self._schedule_wait()
        if until_open > SLACK_S:
            return min(until_open, SCHEDULE_RECHECK_S)
        return 0.0

    def _pending(self, limit: int) -> list[SpoolItem]:
        return self.spool.pending(limit)

    def _claim(self) -> SpoolItem | None:
        for item in self._pending(len(self._in_flight) + 1):
            if item.sha256 not in self._in_flight:
                self._in_flight.add(item.sha256)
                return item
        return None

    def _backoff(self, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        delay = min(self.retry_max_s, self.retry_min_s * 2.0 ** max(0, self._backoff_n - 1))
        return delay / 2 + self._rng.uniform(0.0, delay / 2)

    def _pause(
        self,
        epoch: int,
        kind: str,
        retry_after: float | None = None,
        stamp: tuple[int, int] | None = None,
    ) -> None:
        """Pause every worker (``kind``: unavailable | spool | credentials | refused); ``stamp``:
        the credentials file as the failed attempt found it (a change since then ends the pause)."""
        now = self._clock()
        if epoch == self._epoch:  # the first failure of this round counts towards the back-off
            self._epoch += 1
            self._backoff_n += 1
        delay = self.retry_max_s if kind in ("credentials", "refused") else self._backoff(retry_after)
        until = now + delay
        if self._pause_until is None or until > self._pause_until or kind != self._pause_kind:
            self._pause_until = until
        self._pause_kind = kind
        if kind in ("credentials", "refused"):
            self._flushing = False  # no use in ignoring the schedule: a person must act first
        if kind == "credentials":
            self._watch = credentials_file(self.target)
            self._watch_stamp = stamp
            self._next_check = now + self.check_s
        self._cond.notify_all()

    def _error(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        self._failed_total += 1
        self.last_error = message
        self.last_error_at = self._wall()

    # ------------------------------------------------------------------ the worker

    def _over(self, generation: int) -> bool:
        return self._stopping or generation != self._generation

    def _bug_delay(self, bugs: int) -> float:
        return min(self.retry_max_s, self.retry_min_s * 2.0 ** (bugs - 1))

    def _run(self, generation: int) -> None:
        not_before = 0.0  # this worker's own back-off after a bug
        bugs = 0
        while True:
            with self._cond:
                item: SpoolItem | None = None
                epoch = self._epoch
                while not self._over(generation):
                    now = self._clock()
                    wait = self._blocked(now, not_before)
                    if wait == 0.0:
                        epoch = self._epoch
                        try:
                            item = self._claim()
                        except TransientError as err:  # the spool's disk or index
                            self._error("spool", str(err))
                            log.warning("uploads: cannot read the spool: %s", err)
                            self._pause(epoch, "spool")
                            continue
                        except Exception:
                            log.exception("uploads: a bug while listing the spool; this worker backs off")
                            self._error("error", "internal error while listing the spool (see the log)")
                            bugs += 1
                            not_before = self._clock() + self._bug_delay(bugs)
                            continue
                        if item is not None:
                            break
                        if self._flushing and not self._in_flight:  # the spool was emptied
                            self._flushing = False
                        # drain() waits for this; notifying the workers' condition here made two
                        # idle workers wake each other in a loop (thousands of spool queries a second)
                        self._drained.notify_all()
                        wait = IDLE_RECHECK_S
                    self._cond.wait(wait)
                if self._over(generation) or item is None:
                    return
            try:
                self._attempt(item, epoch)
                bugs = 0
            except Exception:
                log.exception("uploads: a bug while uploading item %s; this worker backs off", item.sha256)
                with self._cond:
                    self._error("error", f"internal error while uploading {item.sha256} (see the log)")
                    bugs += 1
                    not_before = self._clock() + self._bug_delay(bugs)
            finally:
                with self._cond:
                    self._in_flight.discard(item.sha256)
                    self._cond.notify_all()
                    self._drained.notify_all()

    def _read(self, item: SpoolItem) -> tuple[bytes, dict[str, Any]]:
        try:
            jpeg = item.jpeg_path.read_bytes()
            meta = json.loads(item.meta_path.read_bytes())
        except OSError as exc:
            raise _Corrupt(f"cannot read {exc.filename or item.jpeg_path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise _Corrupt(f"its sidecar {item.meta_path} is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise _Corrupt(f"its sidecar {item.meta_path} is not a JSON object")
        return jpeg, meta

    def _attempt(self, item: SpoolItem, epoch: int) -> None:
        sha = item.sha256
        stamp: tuple[int, int] | None = None
        try:
            jpeg, meta = self._read(item)
            ts = meta.get("ts", item.spooled_at)
            if not isinstance(ts, int | float) or isinstance(ts, bool):
                ts = item.spooled_at
            with self._cond:
                if self._stopping:
                    return
                self.attempts += 1
            stamp = _stamp(credentials_file(self.target))  # before the credentials are read
            self.target.put(sha, jpeg, meta, self.device, ts=float(ts))
        except _Corrupt as exc:
            self._corrupt(item, str(exc))
            return
        except UploadUnavailable as err:
            self._unavailable(epoch, "unavailable", str(err), err.retry_after)
            return
        except CredentialsRejected as err:
            self._credentials(epoch, str(err), stamp)
            return
        except UploadRefused as err:
            self._refused(item, epoch, err)
            return
        except FatalError as err:  # the JPEG does not hash to its name
            self._corrupt(item, str(err))
            return
        except (TransientError, ConfigError) as err:  # reading the credentials or token file
            self._credentials(epoch, str(err), stamp)
            return
        with self._cond:
            if self._stopping:
                return  # left pending: the spool may already be closed
        try:
            removed = self.spool.mark_uploaded(sha)
        except TransientError as err:  # uploaded again later, over itself (content-keyed)
            self._unavailable(epoch, "spool", f"uploaded {sha} but could not remove it: {err}", None)
            return
        with self._cond:
            if not removed:  # dropped over the quota or purged while in flight: counted there
                self.uploaded_stale += 1
                return
            self.uploaded += 1
            self.uploaded_bytes += item.bytes
            self.last_upload_at = self._wall()
            self._backoff_n = 0
            if self._failed_total:
                log.info("uploads resumed after %d failed attempt(s)", self._failed_total)
            self._failed_total = self._unlogged = 0
            self._failing_since_log = None

    def _unavailable(self, epoch: int, kind: str, message: str, retry_after: float | None) -> None:
        with self._cond:
            self._error(kind, message)
            self._pause(epoch, kind, retry_after)
            now = self._clock()
            self._unlogged += 1
            if self._failing_since_log is None or now - self._failing_since_log >= LOG_EVERY_S:
                wait = max(0.0, (self._pause_until or now) - now)
                if self._failing_since_log is None:
                    log.warning("uploads paused %.1f s: %s", wait, message)
                else:
                    log.warning(
                        "uploads still failing: %d failure(s) in the last minute; last: %s",
                        self._unlogged,
                        message,
                    )
                self._failing_since_log, self._unlogged = now, 0

    def _credentials(self, epoch: int, message: str, stamp: tuple[int, int] | None) -> None:
        with self._cond:
            first = self._pause_kind != "credentials"
            self._error("credentials", message)
            self._pause(epoch, "credentials", stamp=stamp)
        if first:
            log.error("uploads wait for new credentials: %s", message)

    def _refused(self, item: SpoolItem, epoch: int, err: UploadRefused) -> None:
        if err.whole_target:
            with self._cond:
                first = self._pause_kind != "refused"
                self._error("refused", str(err))
                self._pause(epoch, "refused")
            if first:
                log.error("uploads paused: the target refuses every item: %s", err)
            return
        reason = f"HTTP {err.status} {err.excerpt}".strip()
        try:
            done = self.spool.park(item.sha256, reason)
        except TransientError as exc:
            self._unavailable(epoch, "spool", f"cannot park {item.sha256}: {exc}", None)
            return
        with self._cond:
            self._error("refused", str(err))
            self.parked += done
        if done:
            log.warning("uploads: item %s refused and parked: %s", item.sha256, err)

    def _corrupt(self, item: SpoolItem, why: str) -> None:
        try:
            done = self.spool.quarantine(item.sha256, why)
        except TransientError as exc:
            self._unavailable(self._epoch, "spool", f"cannot quarantine {item.sha256}: {exc}", None)
            return
        if not done:  # dropped or purged while it was being read: nothing is wrong with it
            return
        with self._cond:
            self._error("corrupt", f"item {item.sha256}: {why}")
            self.quarantined += 1


__all__ = ["FAILURE_KINDS", "Schedule", "Uploader", "credentials_file", "describe_target"]
