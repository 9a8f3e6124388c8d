"""Resumable, verified HTTP downloads (DESIGN §2, §6): the ``Downloader``.

``Downloader.fetch(url, dest, max_bytes=..., expected_size=..., sha256=...)`` streams the body
into ``<dest>.part`` next to a sidecar ``<dest>.part.json`` = ``{url, sha256, size, etag,
last_modified}``, hashing while it writes. A later fetch of the same url + sha256 (after a
retry, or after a process restart) continues the part with ``Range: bytes=N-`` and ``If-Range``
(the strong ETag, else Last-Modified); a part with a sidecar for another url or sha256, or
without a sidecar, is discarded. The server decides what happens next:

    206  the rest of the file: appended (``Content-Range`` must start at N)
    200  no range support, or the file changed: the part is truncated and the body taken whole
    416  the part may already be complete: it is verified, else the download starts over

On completion: size check, sha256 check, fsync, rename to ``dest``, fsync the folder, sidecar
removed. Without a sha256 and without a validator (ETag / Last-Modified) a part is never
continued: nothing could tell two versions of the file apart.

Errors (every httpx error and OSError is translated here; nothing else escapes):

    BundleError          HTTP 4xx other than 408/429 (404, 403, 401, ...), another unexpected
                         status, an unsupported or invalid URL, too many redirects: not retried
    └ VerificationError  more bytes than ``expected_size`` / ``max_bytes`` arrive or are announced,
                         a wrong final size or sha256: the part is deleted, not retried
    TransientError       retries exhausted (connect errors, timeouts, broken connections, HTTP
                         5xx, 408, 429), a stop asked during a wait, a disk error (ENOSPC, EIO):
                         the part is kept for a resume

Retries: ``policy.retries`` attempts after the first, with exponential back-off and full
jitter (``rand() * min(backoff_max_s, backoff_min_s * 2**n)``), or the server's
``Retry-After`` (seconds or an HTTP date, capped at ``max_retry_after_s``) when it sends one.
Every wait goes through the injected ``wait(seconds) -> bool`` (e.g. ``threading.Event.wait``):
``True`` means stop, and the download raises ``TransientError("download interrupted by a stop
...")``. Bytes are taken raw (``Accept-Encoding: identity``), so sizes and hashes are those of
the stored file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import httpx

from inference.fsio import DEFAULT_FS, FsOps, atomic_write_json
from inference.http_headers import parse_retry_after
from ota.errors import BundleError, TransientError, VerificationError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
PROGRESS_EVERY_S = 0.2
MAX_RESTARTS = 3  # starting over (changed file, bad part) without counting a failed attempt
RETRY_STATUSES = frozenset({408, 429})
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d+)\s*$")


def _agent_version() -> str:
    try:
        return importlib.metadata.version("edge-agent")
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"edge-agent/{_agent_version()}"


def _sleep(seconds: float) -> bool:
    """The default ``wait``: sleep, never asked to stop."""
    time.sleep(seconds)
    return False


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts, retries and back-off of a ``Downloader``."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    retries: int = 5  # attempts after the first
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 300.0
    start_jitter_s: float = 0.0  # a random delay in [0, this] before a job's first request

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DownloadPolicy.{name} must be > 0")
        for name in ("retries", "backoff_min_s", "max_retry_after_s", "start_jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"DownloadPolicy.{name} must be >= 0")


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: ``transferred`` counts the bytes received by this call (a resume
    receives fewer than ``size``); ``resumed`` says some bytes came from an earlier attempt."""

    path: Path
    size: int
    sha256: str
    transferred: int
    resumed: bool


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes START-END/TOTAL`` → (start, end, total or None for ``*``); None when malformed."""
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.match(value.strip())
    if m is None:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def _content_length(resp: httpx.Response) -> int | None:
    raw = resp.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class _Retry(Exception):
    """An attempt failed in a way worth retrying (internal)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class _Restart(Exception):
    """What is stored cannot be continued: start over from byte 0 (internal)."""


class _MemorySink:
    """Bytes kept in memory (``fetch_bytes``)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.hasher = hashlib.sha256()

    @property
    def size(self) -> int:
        return len(self.buf)

    def write(self, data: bytes) -> None:
        self.buf += data
        self.hasher.update(data)

    def reset(self) -> None:
        self.buf.clear()
        self.hasher = hashlib.sha256()

    def remember(self, etag: str | None, last_modified: str | None) -> None:
        pass


class _FileSink:
    """The ``.part`` file, open for the whole fetch, and its sidecar."""

    def __init__(self, part: Path, side: Path, meta: dict[str, Any], fs: FsOps) -> None:
        self.part = part
        self.side = side
        self.meta = meta
        self.fs = fs
        self.hasher = hashlib.sha256()
        self.size = 0
        self.fh: BinaryIO | None = None

    def open(self, keep: bool) -> None:
        """Open the part: continue it (hashing what is there) or create it empty."""
        with _disk_errors(self.part):
            if not keep:
                self.part.unlink(missing_ok=True)
                atomic_write_json(self.side, self.meta, self.fs)  # the sidecar exists before any byte
            self.fh = open(self.part, "r+b" if keep else "w+b")  # noqa: SIM115 - closed by close()
            while buf := self.fh.read(1 << 20):
                self.hasher.update(buf)
                self.size += len(buf)

    def _file(self) -> BinaryIO:
        if self.fh is None:
            raise RuntimeError("the part file is not open")
        return self.fh

    def write(self, data: bytes) -> None:
        with _disk_errors(self.part):
            self._file().write(data)
        self.size += len(data)
        self.hasher.update(data)

    def reset(self) -> None:
        with _disk_errors(self.part):
            fh = self._file()
            fh.seek(0)
            fh.truncate()
        self.size = 0
        self.hasher = hashlib.sha256()

    def remember(self, etag: str | None, last_modified: str | None) -> None:
        """Store the validators of the representation being written (for ``If-Range``)."""
        if (etag, last_modified) == (self.meta.get("etag"), self.meta.get("last_modified")):
            return
        self.meta = {**self.meta, "etag": etag, "last_modified": last_modified}
        with _disk_errors(self.side):
            atomic_write_json(self.side, self.meta, self.fs)

    def sync(self) -> None:
        with _disk_errors(self.part):
            fh = self._file()
            fh.flush()
            self.fs.fsync(fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            fh, self.fh = self.fh, None
            with _disk_errors(self.part):
                fh.close()

    def discard(self) -> None:
        """Delete the part and its sidecar (bad content); errors are logged, not raised."""
        self.fh, fh = None, self.fh
        for p in (self.part, self.side):
            try:
                if fh is not None and p == self.part:
                    fh.close()
                p.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot delete %s: %s", p, exc)


class _disk_errors:
    """``with _disk_errors(path):`` turns an OSError into a TransientError naming the path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            raise TransientError(
                f"disk error on {self.path}: {exc.strerror or exc} (free space or check the disk; "
                "the download resumes from what is stored)"
            ) from exc


_Sink = _MemorySink | _FileSink


@dataclass
class _Job:
    """One ``fetch`` / ``fetch_bytes`` call in progress."""

    url: str
    what: str
    sink: _Sink
    limit: int
    limit_desc: str
    expected_size: int | None
    sha256: str | None
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    transferred: int = 0
    resumed: bool = False
    last_report: float = field(default=-1e18)
    last_shown: tuple[int, int | None] | None = None

    def validator(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else Last-Modified."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def restart(self) -> None:
        self.sink.reset()
        self.resumed = False


class Downloader:
    """Resumable, verified HTTP downloads with retries (see the module docstring).

    ``transport`` is an httpx transport (tests: ``httpx.MockTransport``; default: httpx's own,
    honouring proxy variables); ``wait(seconds) -> bool`` waits and returns True when asked to
    stop; ``rand()`` gives the jitter in [0, 1); ``progress(url, done, total)`` is called as
    bytes arrive (at most every 0.2 s, and once at the end); ``now`` (wall clock, for
    Retry-After dates) and ``clock`` (monotonic, for the progress throttle) are injectable too.
    """

    def __init__(
        self,
        policy: DownloadPolicy = DownloadPolicy(),  # frozen: shared safely
        *,
        transport: httpx.BaseTransport | None = None,
        wait: Callable[[float], bool] = _sleep,
        rand: Callable[[], float] = random.random,
        progress: Callable[[str, int, int | None], None] | None = None,
        user_agent: str = USER_AGENT,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        fs: FsOps = DEFAULT_FS,
    ) -> None:
        self.policy = policy
        self._transport = transport
        self._wait = wait
        self._rand = rand
        self._progress = progress
        self.user_agent = user_agent
        self._now = now
        self._clock = clock
        self._fs = fs

    # -- public API -------------------------------------------------------------------------

    def start_delay(self) -> None:
        """Wait a random ``[0, start_jitter_s]`` before a job's first request (fleet-wide jitter).

        Raises TransientError when the wait is asked to stop."""
        if self.policy.start_jitter_s <= 0:
            return
        delay = self._rand() * self.policy.start_jitter_s
        log.debug("waiting %.2f s before the first request (start jitter)", delay)
        if self._wait(delay):
            raise TransientError("download interrupted by a stop (during the start delay)")

    def fetch(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int,
        expected_size: int | None = None,
        sha256: str | None = None,
        what: str = "the download",
    ) -> DownloadResult:
        """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename into place.

        ``what`` names the download in error messages (e.g. "the job's manifest_url")."""
        sha = _check_args(url, max_bytes, expected_size, sha256, what)
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        side = dest.with_name(dest.name + ".part.json")
        meta: dict[str, Any] = {
            "url": url,
            "sha256": sha,
            "size": expected_size,
            "etag": None,
            "last_modified": None,
        }
        limit, desc = _limit(max_bytes, expected_size)
        with _disk_errors(dest.parent):
            dest.parent.mkdir(parents=True, exist_ok=True)
        old = self._read_sidecar(side)
        with _disk_errors(part):
            there = part.is_file()
            stale = not there and side.exists()
        keep = False
        if old is not None and there and old.get("url") == url and old.get("sha256") == sha:
            etag, modified = _str_or_none(old.get("etag")), _str_or_none(old.get("last_modified"))
            meta.update(etag=etag, last_modified=modified)
            keep = sha is not None or bool(etag or modified)
        if not keep and (there or stale):
            log.info("discarding %s: it belongs to another download, or cannot be checked", part)
        sink = _FileSink(part, side, meta, self._fs)
        try:
            sink.open(keep)
            job = _Job(url, what, sink, limit, desc, expected_size, sha)
            job.etag, job.last_modified = meta["etag"], meta["last_modified"]
            if sink.size > limit:
                log.info("discarding %s: %d bytes, over the %s of %d", part, sink.size, desc, limit)
                job.restart()
            if sink.size:
                log.info("resuming %s from byte %d (%s)", url, sink.size, part)
            if not self._complete_on_disk(job):
                self._run(job)
            digest = self._verify(job)
            sink.sync()
            sink.close()
            with _disk_errors(dest):
                self._fs.rename(part, dest)
                self._fs.fsync_dir(dest.parent)
                side.unlink(missing_ok=True)
        except VerificationError:
            sink.discard()
            raise
        finally:
            sink.close()
        return DownloadResult(dest, job.sink.size, digest, job.transferred, job.resumed)

    def fetch_bytes(
        self,
        url: str,
        *,
        max_bytes: int,
        sha256: str | None = None,
        what: str = "the download",
    ) -> bytes:
        """Download a small thing (manifest, signature) into memory: same retries and limits."""
        sha = _check_args(url, max_bytes, None, sha256, what)
        limit, desc = _limit(max_bytes, None)
        sink = _MemorySink()
        job = _Job(url, what, sink, limit, desc, None, sha)
        self._run(job)
        self._verify(job)
        return bytes(sink.buf)

    # -- one download -------------------------------------------------------------------------

    @staticmethod
    def _read_sidecar(side: Path) -> dict[str, Any] | None:
        try:
            obj = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.info("ignoring unreadable %s: %s", side, exc)
            return None
        return obj if isinstance(obj, dict) else None

    def _complete_on_disk(self, job: _Job) -> bool:
        """A part already holding the whole file (a crash before the rename) needs no request."""
        if job.sha256 is None or job.expected_size is None or job.sink.size != job.expected_size:
            return False
        if job.sink.hasher.hexdigest() == job.sha256:
            log.info("%s is already complete on disk", job.url)
            self._report(job, final=True)
            return True
        job.restart()
        return False

    def _verify(self, job: _Job) -> str:
        size, digest = job.sink.size, job.sink.hasher.hexdigest()
        if job.expected_size is not None and size != job.expected_size:
            raise VerificationError(
                f"{job.what} {job.url} is {size} bytes, but {job.expected_size} were declared"
            )
        if job.sha256 is not None and digest != job.sha256:
            raise VerificationError(
                f"{job.what} {job.url} has sha256 {digest}, but {job.sha256} was declared: "
                "the server serves other bytes than the manifest describes"
            )
        self._report(job, final=True)
        return digest

    def _client(self) -> httpx.Client:
        p = self.policy
        timeout = httpx.Timeout(
            connect=p.connect_timeout_s,
            read=p.read_timeout_s,
            write=p.read_timeout_s,
            pool=p.connect_timeout_s,
        )
        return httpx.Client(
            transport=self._transport,
            timeout=timeout,
            follow_redirects=True,
            headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"},
        )

    def _run(self, job: _Job) -> None:
        """Attempts with back-off until the body is complete."""
        client = self._client()
        failures = restarts = 0
        try:
            while True:
                try:
                    self._attempt(client, job)
                    return
                except _Restart as exc:
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        raise TransientError(
                            f"{job.what} {job.url} had to start over {restarts} times (last: {exc}); "
                            "is the file changing on the server?"
                        ) from None
                    log.info("%s: starting over from byte 0 (%s)", job.url, exc)
                    job.restart()
                except _Retry as exc:
                    failures += 1
                    if failures > self.policy.retries:
                        raise _exhausted(job, failures, exc.message) from None
                    delay = self._delay(failures - 1, exc.retry_after)
                    log.warning(
                        "%s: %s; retry %d/%d in %.1f s from byte %d",
                        job.url,
                        exc.message,
                        failures,
                        self.policy.retries,
                        delay,
                        job.sink.size,
                    )
                    if self._wait(delay):
                        raise TransientError(
                            f"download interrupted by a stop ({job.url}; {job.sink.size} bytes kept "
                            "for a resume)"
                        ) from None
        finally:
            if self._transport is None:  # an injected transport belongs to the caller
                client.close()

    def _delay(self, n: int, retry_after: float | None) -> float:
        p = self.policy
        if retry_after is not None:
            return min(retry_after, p.max_retry_after_s)
        cap: float = p.backoff_max_s
        if n < 64:
            cap = min(cap, p.backoff_min_s * 2**n)
        return self._rand() * cap

    def _attempt(self, client: httpx.Client, job: _Job) -> None:
        """One request; returns when the body is complete, raises _Retry / _Restart / errors."""
        headers: dict[str, str] = {}
        if job.sink.size and job.sha256 is None and job.validator() is None:
            job.restart()  # nothing could tell a changed file from the same one
        offset = job.sink.size
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = job.validator()
            if validator is not None:
                headers["If-Range"] = validator
        try:
            with client.stream("GET", job.url, headers=headers) as resp:
                self._consume(resp, job, offset)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timed out ({type(exc).__name__}: {exc or 'no data'})") from None
        except httpx.UnsupportedProtocol as exc:
            raise BundleError(
                f"{job.what} {job.url} cannot be fetched: {exc} (use http:// or https://)"
            ) from exc
        except httpx.LocalProtocolError as exc:
            raise BundleError(f"{job.what} {job.url}: the request cannot be sent: {exc}") from exc
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc or 'connection failed'}") from None
        except httpx.TooManyRedirects as exc:
            raise BundleError(f"{job.what} {job.url}: {exc} (check the URL)") from exc
        except httpx.DecodingError as exc:
            raise VerificationError(f"{job.what} {job.url}: the body cannot be decoded: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise BundleError(f"{job.what} {job.url} is not a valid URL: {exc}") from exc

    def _consume(self, resp: httpx.Response, job: _Job, offset: int) -> None:
        status = resp.status_code
        if status == 206:
            cr = parse_content_range(resp.headers.get("content-range"))
            if cr is None or cr[0] != offset:
                raise _Restart(
                    f"asked for bytes from {offset}, got Content-Range {resp.headers.get('content-range')!r}"
                )
            etag = resp.headers.get("etag")
            if etag is not None and job.etag is not None and etag != job.etag:
                raise _Restart(f"the ETag changed from {job.etag} to {etag}")
            if etag is not None and job.etag is None:
                job.etag = etag
                job.sink.remember(job.etag, job.last_modified)
            total = cr[2]
            self._check_announced(job, total, "Content-Range")
            job.resumed = offset > 0
        elif status == 200:
            if offset:
                log.info("%s: answered 200 to a range request: starting over from byte 0", job.url)
                job.restart()
            job.etag, job.last_modified = resp.headers.get("etag"), resp.headers.get("last-modified")
            job.sink.remember(job.etag, job.last_modified)
            total = _content_length(resp)
            self._check_announced(job, total, "Content-Length")
        elif status == 416 and offset:
            self._on_416(resp, job)
            return
        elif status in RETRY_STATUSES or 500 <= status < 600:
            after = parse_retry_after(resp.headers.get("retry-after"), self._now())
            raise _Retry(f"HTTP {status} {resp.reason_phrase}".rstrip(), after)
        else:
            raise BundleError(
                f"{job.what} {job.url} returned HTTP {status} {resp.reason_phrase}".rstrip()
                + " (not retried: check the URL and the server)"
            )
        job.total = total if total is not None else job.expected_size
        self._report(job)
        for chunk in resp.iter_raw(CHUNK):
            if job.sink.size + len(chunk) > job.limit:
                raise VerificationError(
                    f"{job.what} {job.url} sent more than the {job.limit_desc} of {job.limit} bytes: "
                    f"aborted at {job.sink.size + len(chunk)} bytes"
                )
            job.sink.write(chunk)
            job.transferred += len(chunk)
            self._report(job)
        want = total if total is not None else job.expected_size
        if want is not None and job.sink.size < want:
            raise _Retry(f"the connection closed after {job.sink.size} of {want} bytes")

    def _check_announced(self, job: _Job, total: int | None, header: str) -> None:
        """Refuse before reading the body when the server announces the wrong size."""
        if total is None:
            return
        if job.expected_size is not None and total != job.expected_size:
            raise VerificationError(
                f"{job.what} {job.url} announces {total} bytes ({header}), but {job.expected_size} "
                "were declared: not downloaded"
            )
        if total > job.limit:
            raise VerificationError(
                f"{job.what} {job.url} announces {total} bytes ({header}), more than the "
                f"{job.limit_desc} of {job.limit} bytes: not downloaded"
            )

    def _on_416(self, resp: httpx.Response, job: _Job) -> None:
        m = _UNSATISFIED_RANGE_RE.match(resp.headers.get("content-range", "").strip())
        total = int(m.group(1)) if m else None
        size = job.expected_size if job.expected_size is not None else total
        complete = size is not None and job.sink.size == size
        if complete and (job.sha256 is None or job.sink.hasher.hexdigest() == job.sha256):
            log.info("%s: the stored part is already complete (HTTP 416)", job.url)
            return
        raise _Restart(f"HTTP 416 for a part of {job.sink.size} bytes (file size {total})")

    def _report(self, job: _Job, final: bool = False) -> None:
        if self._progress is None:
            return
        t = self._clock()
        if not final and t - job.last_report < PROGRESS_EVERY_S:
            return
        shown = (job.sink.size, job.sink.size if final else job.total)
        if shown == job.last_shown:
            return
        job.last_report, job.last_shown = t, shown
        self._progress(job.url, *shown)


def _check_args(
    url: str, max_bytes: int, expected_size: int | None, sha256: str | None, what: str
) -> str | None:
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, not {max_bytes}")
    if expected_size is not None and expected_size < 0:
        raise ValueError(f"expected_size must be >= 0, not {expected_size}")
    if sha256 is not None and not SHA256_RE.fullmatch(sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, not {sha256!r}")
    if not url.lower().startswith(("http://", "https://")):
        raise BundleError(f"{what} {url!r} is not an http:// or https:// URL")
    if expected_size is not None and expected_size > max_bytes:
        raise VerificationError(
            f"{what} {url} is declared as {expected_size} bytes, more than the limit of {max_bytes} bytes"
        )
    return None if sha256 is None else sha256.lower()


def _exhausted(job: _Job, failures: int, last: str) -> TransientError:
    attempts = f"{failures} attempt{'s' if failures > 1 else ''}"
    return TransientError(
        f"{job.what} {job.url} failed after {attempts}; last error: {last} "
        f"({job.sink.size} bytes kept for a resume)"
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _limit(max_bytes: int, expected_size: int | None) -> tuple[int, str]:
    if expected_size is not None:
        return expected_size, "declared size"
    return max_bytes, "limit"


class TerminalProgress:
    """A ``progress`` callback drawing one live line on a terminal (nothing on a pipe or file),
    e.g. ``model.onnx  [##########..........]  48%  4.8 MB / 10.0 MB  2.1 MB/s``.
    """

    CLEAR = "\r\x1b[K"

    def __init__(
        self, stream: TextIO, *, width: int = 24, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.width = width
        self.enabled = bool(stream.isatty())
        self._clock = clock
        self._start: dict[str, tuple[float, int]] = {}
        self.shown = False

    def __call__(self, url: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = self._clock()
        t0, d0 = self._start.setdefault(url, (now, done))
        name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or url
        parts = [name]
        if total:
            frac = min(1.0, done / total)
            fill = int(frac * self.width)
            parts.append("[" + "#" * fill + "." * (self.width - fill) + "]")
            parts.append(f"{frac * 100:3.0f}%")
            parts.append(f"{_human(done)} / {_human(total)}")
        else:
            parts.append(_human(done))
        if now > t0 and done > d0:
            parts.append(f"{_human((done - d0) / (now - t0))}/s")
        self.stream.write(self.CLEAR + "  ".join(parts))
        self.stream.flush()
        self.shown = True
        if total is not None and done >= total:
            self.finish()
            self._start.pop(url, None)

    def finish(self) -> None:
        """End the live line (call when a download stops before its end)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


__all__ = [
    "DownloadPolicy",
    "DownloadResult",
    "Downloader",
    "TerminalProgress",
    "parse_content_range",
    "parse_retry_after",
]
