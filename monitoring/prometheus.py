"""``/metrics`` in the Prometheus text format, on a read-only listener of its own.

- ``LatencyHistogram``: fixed buckets in seconds (1 ms .. 10 s), ``observe_ms`` from the
  results thread, ``snapshot()`` from any thread (one lock, O(1) work under it).
- ``AgentMetrics``: everything ``/metrics`` shows, built by the agent's ``snapshot`` function
  when Prometheus scrapes, never pushed.
- ``AgentCollector``: a prometheus-client custom collector that turns one ``AgentMetrics`` into
  metric families (names below, base units: seconds, no ms).
- ``MetricsServer``: a listener the agent owns (``start()``/``stop()``) with its own
  ``CollectorRegistry`` (never the process-global default one): ``GET /metrics`` only, any
  other path 404, any other method 405, one request per connection. A scrape whose snapshot
  fails answers a generic 500 (the details go to the log only); the server stays up. A failure
  to bind is a ``ConfigError`` naming the address.

  It may listen on 0.0.0.0 of a small device, so what a client can hold is bounded: one thread
  accepts and reads request heads without blocking (a connection that sends nothing, or a byte
  at a time, holds a file descriptor and no thread, for 5 s in all from its accept; past 64 such
  connections the oldest is closed); a complete request is answered on a worker thread, at
  most 4 at once, each with 5 s to write its answer; one more is answered 503 with
  ``Retry-After: 1`` at once. A head over 8 KiB is a 431.

Metrics (``_total`` are counters since the agent started)::

    edge_agent_frames_total                     edge_agent_fps
    edge_agent_inference_errors_total           edge_agent_inference_latency_seconds (histogram)
    edge_agent_frames_dropped_total             edge_agent_confidence
    edge_agent_frames_captured_total            edge_agent_drift_score{metric,score}
    edge_agent_sink_errors_total                edge_agent_drift_threshold{metric,score}
    edge_agent_source_reconnects_total          edge_agent_alerts_active{kind,metric}
    edge_agent_updates_total{outcome}           edge_agent_model_info{model,version,sha256,runtime} 1
    edge_agent_drift_samples_total              edge_agent_uptime_seconds
    edge_agent_drift_samples_dropped_total
    edge_agent_drift_windows_total
    edge_agent_metrics_write_failures_total
    edge_agent_drift_failures_total{kind}       (store, listener, internal)

plus prometheus-client's ``process_*`` and ``python_info`` of this process.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import logging
import math
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from inference.errors import ConfigError

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the inference latency buckets: 1 ms to 10 s, densest where edge
#: models run (5-100 ms; 33 ms is one frame at 30 fps). ``+Inf`` is implied.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.033, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

PREFIX = "edge_agent_"
_POLL_S = 0.1  # how often the idle listener checks for stop(): what stop() waits at most
METRICS_PATH = "/metrics"


# ---------------------------------------------------------------------------- latency histogram


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out or not all(math.isfinite(b) and b > 0 for b in out):
        raise ValueError(f"histogram bounds {out!r}: must be finite positive numbers (seconds)")
    if any(a >= b for a, b in itertools.pairwise(out)):
        raise ValueError(f"histogram bounds {out!r}: must be strictly increasing")
    return out


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one instant, in Prometheus' shape."""

    bounds: tuple[float, ...]  # upper bounds in seconds; +Inf implied
    counts: tuple[int, ...]  # cumulative, len(bounds) + 1 (the last is the count)
    sum: float  # seconds

    def __post_init__(self) -> None:
        _check_bounds(self.bounds)
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"histogram: {len(self.counts)} counts for {len(self.bounds)} bounds (+Inf)")
        if any(c < 0 for c in self.counts) or any(a > b for a, b in itertools.pairwise(self.counts)):
            raise ValueError(f"histogram counts {self.counts!r}: must be cumulative (non-decreasing, >= 0)")

    @property
    def count(self) -> int:
        """Observations in all: the ``+Inf`` bucket."""
        return self.counts[-1]

    @classmethod
    def empty(cls, bounds: Sequence[float] = LATENCY_BOUNDS_S) -> HistogramSnapshot:
        """A histogram with no observations."""
        bounds = _check_bounds(bounds)
        return cls(bounds=bounds, counts=(0,) * (len(bounds) + 1), sum=0.0)


class LatencyHistogram:
    """Latencies in fixed buckets (seconds). ``observe_ms`` is O(1) (a bisect over the ~20
    bounds, then two additions under a lock); ``snapshot`` is consistent: its count and sum
    cover the same observations. NaN and infinities are ignored, a negative time counts as 0."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS_S) -> None:
        self.bounds = _check_bounds(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_ms(self, ms: float) -> None:
        """Count one latency given in milliseconds."""
        if not math.isfinite(ms):
            return
        seconds = max(0.0, ms / 1000.0)
        i = bisect.bisect_left(self.bounds, seconds)  # the first bound >= seconds ("le")
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative counts and the sum so far."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative: list[int] = []
        running = 0
        for c in counts:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(bounds=self.bounds, counts=tuple(cumulative), sum=total)


# ---------------------------------------------------------------------------- what /metrics shows


@dataclass(frozen=True)
class CollectionMetrics:
    """Frame collection (issue 10): sampling, the spool and the uploader, for ``/metrics``."""

    kept: dict[str, int]  # strategy -> frames spooled since the start
    duplicates: int
    queue_dropped: int
    spool_items: int
    spool_bytes: int
    spool_pending: int
    spool_parked: int
    spool_dropped: int  # over the quota, oldest first (kept across restarts)
    spool_refused: int
    spool_quarantined: int
    uploaded: int = 0
    uploaded_bytes: int = 0
    upload_failures: dict[str, int] = field(default_factory=dict)
    upload_paused: int = 0  # 1 while the uploader waits (back-off, credentials, schedule)


@dataclass(frozen=True)
class AgentMetrics:
    """What ``/metrics`` shows, pulled at scrape time. Counters count since the agent started."""

    model: str  # "" when nothing serves (no model_info sample then)
    version: int
    sha256: str
    runtime: str
    uptime_s: float
    frames: int
    errors: int
    dropped: int
    captured: int
    sink_errors: int
    reconnects: int
    fps: float
    latency: HistogramSnapshot
    confidence: float | None  # last window's mean confidence; None: no window yet (no sample)
    drift: dict[tuple[str, str], tuple[float, float]]  # (metric, score) -> (value, threshold)
    alerts_active: dict[tuple[str, str], int]  # (kind, metric) -> 1
    updates: dict[str, int]  # outcome -> count (SUCCEEDED, FAILED, REJECTED, ...)
    samples: int
    samples_dropped: int
    windows: int
    store_failures: int
    # drift monitoring failures by kind ("store", "listener", "internal"); a default, and last,
    # so a caller that does not know it still builds an AgentMetrics
    failures: dict[str, int] = field(default_factory=dict)
    collection: CollectionMetrics | None = None  # None: sampling is off (no such families)


#: (name without _total, help, AgentMetrics field) of the plain counters.
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("frames", "Frames the model ran on.", "frames"),
    ("inference_errors", "Frames whose inference failed.", "errors"),
    ("frames_dropped", "Frames dropped before inference (the queue was full).", "dropped"),
    ("frames_captured", "Frames read from the source.", "captured"),
    ("sink_errors", "Results a sink failed to write.", "sink_errors"),
    ("source_reconnects", "Times the frame source was reopened.", "reconnects"),
    ("drift_samples", "Frames sampled for drift statistics.", "samples"),
    ("drift_samples_dropped", "Drift samples dropped because the monitor was behind.", "samples_dropped"),
    ("drift_windows", "Drift windows judged.", "windows"),
    ("metrics_write_failures", "Writes to metrics.db that failed (counted, not retried).", "store_failures"),
)


def families(m: AgentMetrics) -> list[Metric]:
    """The metric families of one snapshot, in a stable order."""
    out: list[Metric] = []
    for name, doc, attr in _COUNTERS:
        out.append(CounterMetricFamily(PREFIX + name, doc, value=float(getattr(m, attr))))
    out.append(GaugeMetricFamily(PREFIX + "fps", "Frames per second, recent average.", value=m.fps))
    les = [*(floatToGoString(b) for b in m.latency.bounds), "+Inf"]  # type: ignore[no-untyped-call]
    buckets = [(le, float(c)) for le, c in zip(les, m.latency.counts, strict=True)]
    out.append(
        HistogramMetricFamily(
            PREFIX + "inference_latency_seconds",
            "The model's own inference time per frame.",
            buckets=buckets,
            sum_value=m.latency.sum,
        )
    )
    conf = GaugeMetricFamily(PREFIX + "confidence", "Mean top confidence over the last drift window.")
    if m.confidence is not None:
        conf.add_metric([], m.confidence)
    out.append(conf)
    score = GaugeMetricFamily(
        PREFIX + "drift_score",
        "Drift score of the last window, per metric and score.",
        labels=["metric", "score"],
    )
    threshold = GaugeMetricFamily(
        PREFIX + "drift_threshold",
        "Threshold of each drift score for the window's size (from the reference).",
        labels=["metric", "score"],
    )
    for (metric, kind), (value, limit) in sorted(m.drift.items()):
        score.add_metric([metric, kind], value)
        threshold.add_metric([metric, kind], limit)
    out += [score, threshold]
    alerts = GaugeMetricFamily(
        PREFIX + "alerts_active",
        "1 while an alert is raised, per kind and metric.",
        labels=["kind", "metric"],
    )
    for (kind, metric), active in sorted(m.alerts_active.items()):
        alerts.add_metric([kind, metric], float(active))
    out.append(alerts)
    info = InfoMetricFamily(
        PREFIX + "model", "The serving model.", labels=["model", "version", "sha256", "runtime"]
    )
    if m.model:
        info.add_metric([m.model, str(m.version), m.sha256, m.runtime], {})
    out.append(info)
    updates = CounterMetricFamily(PREFIX + "updates", "Update jobs ended, by outcome.", labels=["outcome"])
    for outcome, count in sorted(m.updates.items()):
        updates.add_metric([outcome], float(count))
    out.append(updates)
    failures = CounterMetricFamily(
        PREFIX + "drift_failures",
        "Drift monitoring failures, by kind (store: metrics.db writes; listener: a listener that "
        "raised; internal: the monitor's own).",
        labels=["kind"],
    )
    for kind, count in sorted(m.failures.items()):
        failures.add_metric([kind], float(count))
    out.append(failures)
    if m.collection is not None:
        out += _collection_families(m.collection)
    out.append(
        GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the agent started.", value=m.uptime_s)
    )
    return out


def _collection_families(c: CollectionMetrics) -> list[Metric]:
    kept = CounterMetricFamily(
        PREFIX + "frames_kept", "Frames kept for labelling (spooled), by strategy.", labels=["strategy"]
    )
    for strategy, n in sorted(c.kept.items()):
        kept.add_metric([strategy], float(n))
    failures = CounterMetricFamily(
        PREFIX + "upload_failures",
        "Upload attempts that failed, by kind (unavailable, credentials, refused, corrupt, spool, error).",
        labels=["kind"],
    )
    for kind, n in sorted(c.upload_failures.items()):
        failures.add_metric([kind], float(n))
    counters = (
        (
            "frames_duplicate",
            "Frames taken by a strategy but like one kept recently (not spooled).",
            c.duplicates,
        ),
        ("frames_kept_dropped", "Frames taken but dropped: the encoder's queue was full.", c.queue_dropped),
        (
            "spool_dropped",
            "Spooled frames deleted unsent to stay within the quota (oldest first).",
            c.spool_dropped,
        ),
        (
            "spool_refused",
            "Frames the spool could not take (full disk, I/O error, over the quota).",
            c.spool_refused,
        ),
        ("spool_quarantined", "Spooled frames found corrupt and moved to quarantine/.", c.spool_quarantined),
        ("uploads", "Frames uploaded (each with its sidecar).", c.uploaded),
        ("upload_bytes", "JPEG bytes uploaded.", c.uploaded_bytes),
    )
    gauges = (
        ("spool_items", "Frames in the spool (waiting or parked).", c.spool_items),
        ("spool_bytes", "Bytes in the spool (JPEGs and sidecars).", c.spool_bytes),
        ("spool_pending", "Frames waiting for upload.", c.spool_pending),
        ("spool_parked", "Frames the server refused (4xx), kept but not retried.", c.spool_parked),
        (
            "upload_paused",
            "1 while uploads wait: back-off, credentials, schedule or a refused target.",
            c.upload_paused,
        ),
    )
    out: list[Metric] = [kept, failures]
    out += [CounterMetricFamily(PREFIX + name, doc, value=float(v)) for name, doc, v in counters]
    out += [GaugeMetricFamily(PREFIX + name, doc, value=float(v)) for name, doc, v in gauges]
    return out


_EMPTY = AgentMetrics(
    model="", version=0, sha256="", runtime="", uptime_s=0.0, frames=0, errors=0, dropped=0, captured=0,
    sink_errors=0, reconnects=0, fps=0.0, latency=HistogramSnapshot.empty(), confidence=None, drift={},
    alerts_active={}, updates={}, samples=0, samples_dropped=0, windows=0, store_failures=0,
    collection=CollectionMetrics(
        kept={}, duplicates=0, queue_dropped=0, spool_items=0, spool_bytes=0, spool_pending=0, spool_parked=0,
        spool_dropped=0, spool_refused=0, spool_quarantined=0,
    ),
)  # fmt: skip


class AgentCollector:
    """A prometheus-client custom collector: ``collect()`` calls ``snapshot`` once per scrape
    (which must be thread-safe: scrapes may overlap) and yields its families."""

    def __init__(self, snapshot: Callable[[], AgentMetrics]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snapshot())

    def describe(self) -> Iterator[Metric]:
        """The families' names and types without calling ``snapshot`` (for the registry)."""
        yield from families(_EMPTY)


def make_registry(snapshot: Callable[[], AgentMetrics], *, process: bool = True) -> CollectorRegistry:
    """A registry of its own: the agent's collector, plus this process's CPU, memory and
    Python version when ``process``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


# ---------------------------------------------------------------------------- the listener

_WORKERS = 4  # requests answered at once; one more is a 503 at once
_PENDING = 64  # connections whose request head has not all arrived; one more closes the oldest
_HEAD_TIMEOUT_S = 5.0  # from accept to the end of the request head, in all (not per read)
_WRITE_TIMEOUT_S = 5.0  # to write one response, in all (sendall's timeout is a total)
_MAX_HEAD = 8192  # bytes of request line and headers (a Prometheus scrape sends ~300)
_BACKLOG = 64
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BUSY_LOG_S = 60.0  # at most one warning a minute about 503s


def _quick_response(code: int, reason: str, text: str, *extra: str) -> bytes:
    body = text.encode("utf-8")
    head = [
        f"HTTP/1.0 {code} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


_BUSY = _quick_response(503, "Service Unavailable", "busy: too many scrapes at once\n", "Retry-After: 1")
_TOO_LARGE = _quick_response(431, "Request Header Fields Too Large", "request head too large\n")


class _Handler(BaseHTTPRequestHandler):
    """One request whose head the listener has already read (``head``): parsed and answered on
    a worker thread, then the connection is closed (HTTP/1.0, no keep-alive)."""

    server_version = "edge-agent-metrics"
    sys_version = ""  # no Python version in the Server header

    def __init__(self, sock: socket.socket, head: bytes, client_address: Any, listener: _Server) -> None:
        # not BaseRequestHandler.__init__: the listener is no socketserver (nothing here uses .server)
        self.request = sock
        self.client_address = client_address
        self.listener = listener
        self._head = head
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.listener.write_timeout_s)
        self.rfile.close()
        self.rfile = io.BytesIO(self._head)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != METRICS_PATH:
            self._plain(404, f"not found: only GET {METRICS_PATH} is served\n")
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.listener.registry)
        except Exception as err:  # a snapshot that fails answers 500; the listener stays up
            self.listener.scrape_failed(err)
            self._plain(500, "snapshot failed; see the agent's log\n")  # the details are logged only
            return
        self.listener.scrape_ok()
        self._send(200, body, content_type)

    def _not_allowed(self) -> None:
        self._plain(405, f"method {self.command} not allowed: only GET {METRICS_PATH}\n", allow="GET")

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _plain(self, code: int, text: str, *, allow: str | None = None) -> None:
        self._send(code, text.encode("utf-8"), "text/plain; charset=utf-8", allow=allow)

    def _send(self, code: int, body: bytes, content_type: str, *, allow: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s: " + format, self.address_string(), *args)


@dataclass
class _Pending:
    address: Any
    deadline: float  # time.monotonic()
    head: bytearray


class _Server:
    """The listener: one thread (``serve``) accepts and reads request heads without blocking,
    so a connection that sends nothing, or a byte at a time, holds a file descriptor and no
    thread, and only for ``head_timeout_s`` in all; past ``pending`` such connections the
    oldest is closed. A complete request goes to a worker thread, at most ``workers`` at once;
    beyond that it is answered 503 with ``Retry-After: 1`` at once, without a thread."""

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        registry: CollectorRegistry,
        *,
        workers: int = _WORKERS,
        pending: int = _PENDING,
        head_timeout_s: float = _HEAD_TIMEOUT_S,
        write_timeout_s: float = _WRITE_TIMEOUT_S,
    ) -> None:
        if workers < 1 or pending < 1 or not head_timeout_s > 0 or not write_timeout_s > 0:
            raise ValueError("metrics listener: workers, pending and the timeouts must be positive")
        self.registry = registry
        self.workers = workers
        self.pending = pending
        self.head_timeout_s = head_timeout_s
        self.write_timeout_s = write_timeout_s
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if os.name == "posix":  # rebind at once after a restart (TIME_WAIT), as http.server does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.server_address: tuple[Any, ...] = sock.getsockname()
        self.busy = 0  # requests answered 503 (all workers busy)
        self.evicted = 0  # connections closed before their request arrived (too many, too slow)
        self._slots = threading.BoundedSemaphore(workers)
        self._pending: dict[socket.socket, _Pending] = {}  # in accept order: the oldest first
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._failing = False
        self._busy_logged = -math.inf
        self._lock = threading.Lock()

    # -- the listener thread

    def serve(self) -> None:
        """Accept, read heads and dispatch until ``shutdown()``; then close every socket."""
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                timeout = _POLL_S
                if self._pending:
                    oldest = next(iter(self._pending.values()))
                    timeout = min(timeout, max(0.0, oldest.deadline - time.monotonic()))
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._read(cast(socket.socket, key.fileobj))
                self._expire(time.monotonic())
        finally:
            for conn in list(self._pending):
                self._drop(conn)
            self._selector.close()
            self.socket.close()

    def shutdown(self) -> None:
        self._stop.set()

    def _accept(self) -> None:
        for _ in range(self.pending):  # then back to select: heads already in wait too
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and the like: free the oldest and go on later
                log.debug("metrics: accept failed: %s", err)
                if self._pending:
                    self._evict(next(iter(self._pending)))
                else:
                    self._stop.wait(_POLL_S)
                return
            conn.setblocking(False)
            if len(self._pending) >= self.pending:
                self._evict(next(iter(self._pending)))
            self._pending[conn] = _Pending(address, time.monotonic() + self.head_timeout_s, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        pending = self._pending.get(conn)
        if pending is None:  # closed earlier in this round
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the client went away before its request was complete
            self._drop(conn)
            return
        seen = len(pending.head)
        pending.head += data
        if _HEAD_END.search(pending.head, max(0, seen - 3)):  # only what is new: O(n) a connection
            self._release(conn)
            self._dispatch(conn, bytes(pending.head), pending.address)
        elif len(pending.head) > _MAX_HEAD:
            self._release(conn)
            self._answer_now(conn, _TOO_LARGE)

    def _expire(self, now: float) -> None:
        while self._pending:
            conn, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                return
            self._evict(conn)

    def _dispatch(self, conn: socket.socket, head: bytes, address: Any) -> None:
        if self._slots.acquire(blocking=False):
            try:
                threading.Thread(
                    target=self._work, args=(conn, head, address), name="metrics-scrape", daemon=True
                ).start()
                return
            except RuntimeError:  # no thread to be had
                self._slots.release()
        self.busy += 1
        now = time.monotonic()
        if now - self._busy_logged >= _BUSY_LOG_S:
            self._busy_logged = now
            log.warning(
                "metrics: %d scrapes at once already: answered 503 (%d so far)", self.workers, self.busy
            )
        self._answer_now(conn, _BUSY)

    def _answer_now(self, conn: socket.socket, response: bytes) -> None:
        """A short answer from the listener thread: what the socket takes without waiting."""
        with contextlib.suppress(OSError):
            conn.send(response)
        _close(conn)

    def _release(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._pending[conn]

    def _drop(self, conn: socket.socket) -> None:
        self._release(conn)
        conn.close()

    def _evict(self, conn: socket.socket) -> None:
        self.evicted += 1
        address = self._pending[conn].address
        log.debug("metrics: closed %s: no complete request in time, or too many waiting", address)
        self._drop(conn)

    # -- worker threads

    def _work(self, conn: socket.socket, head: bytes, address: Any) -> None:
        try:
            _Handler(conn, head, address, self)
        except OSError as err:  # the client went away or did not read its answer in time
            log.debug("metrics %s: %s", address, err)
        except Exception:
            log.exception("metrics %s: answering failed", address)
        finally:
            _close(conn)
            self._slots.release()

    def scrape_failed(self, err: Exception) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:  # the traceback once, then a line per failed scrape until one succeeds
            log.error("metrics scrape failed: %s: %s", type(err).__name__, err, exc_info=err)
        else:
            log.warning("metrics scrape failed again: %s: %s", type(err).__name__, err)

    def scrape_ok(self) -> None:
        with self._lock:
            if self._failing:
                log.info("metrics scrapes work again")
            self._failing = False


def _close(conn: socket.socket) -> None:
    """Close after the answer: FIN first, and what the client sent beyond the head read away, so
    the close is no reset that could discard the answer before the client reads it."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.setblocking(False)
        for _ in range(16):
            if not conn.recv(4096):
                break
    except OSError:
        pass
    conn.close()


class MetricsServer:
    """The agent's own read-only ``/metrics`` listener. Port 0 picks a free port; ``port`` and
    ``url`` give the bound one after ``start()``. Usable as a context manager."""

    def __init__(
        self,
        address: tuple[str, int],
        snapshot: Callable[[], AgentMetrics],
        *,
        process: bool = True,
        workers: int = _WORKERS,
        pending: int = _PENDING,
        head_timeout_s: float = _HEAD_TIMEOUT_S,
        write_timeout_s: float = _WRITE_TIMEOUT_S,
    ) -> None:
        self.host, self._port = address
        self.registry = make_registry(snapshot, process=process)
        self._workers, self._pending = workers, pending
        self._head_timeout_s, self._write_timeout_s = head_timeout_s, write_timeout_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (what port 0 became), else the configured one."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> None:
        """Bind and serve on a daemon thread; ``ConfigError`` when the address cannot be used."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        where = f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"
        fix = "give another HOST:PORT to --metrics (or [monitoring] metrics), or stop what holds it"
        try:
            infos = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_STREAM)
            server = _Server(
                (self.host, self._port),
                infos[0][0],
                self.registry,
                workers=self._workers,
                pending=self._pending,
                head_timeout_s=self._head_timeout_s,
                write_timeout_s=self._write_timeout_s,
            )
        except (OSError, OverflowError) as err:  # gaierror is an OSError; OverflowError: port > 65535
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ConfigError(f"cannot listen for {METRICS_PATH} on {where}: {reason}; {fix}") from None
        self._server = server
        self._thread = threading.Thread(target=server.serve, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics on %s", self.url)

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # the listener thread closes its sockets within _POLL_S
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "LATENCY_BOUNDS_S",
    "METRICS_PATH",
    "AgentCollector",
    "AgentMetrics",
    "HistogramSnapshot",
    "LatencyHistogram",
    "MetricsServer",
    "families",
    "make_registry",
]
