"""monitoring.prometheus: /metrics on a real listener, read back with prometheus-client's own
parsers (the Prometheus text format and OpenMetrics).

What these prove:
- every metric of the contract is there with its type, labels and value; counters end in
  ``_total`` once; the latency histogram is cumulative, in seconds, ``+Inf`` = count;
- only ``GET /metrics`` is served (404 elsewhere, 405 for other methods, no side effects);
- a snapshot that raises answers a generic 500 (the details only in the log), and the next
  scrape works;
- the listener holds no thread for a connection that sends nothing (or a byte at a time):
  a scrape behind 100 idle connections is answered at once, such connections are closed after
  the head timeout or when too many wait, and at most ``workers`` handler threads run (one
  more request is a 503 with ``Retry-After`` at once);
- ``edge_agent_drift_failures_total{kind}`` and ``AgentMetrics`` built without ``failures``;
- ``stop()`` frees the port; a port in use is a ``ConfigError`` naming the address;
- ``LatencyHistogram`` puts a value on a bound into that bucket (``le``), and its snapshots
  taken while threads observe are consistent (count and sum cover the same observations).
"""

from __future__ import annotations

import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from inference.errors import ConfigError
from monitoring.prometheus import (
    LATENCY_BOUNDS_S,
    AgentMetrics,
    HistogramSnapshot,
    LatencyHistogram,
    MetricsServer,
)

SHA = "ab" * 32
LATENCIES_MS = (0.4, 1.0, 3.0, 12.0, 12.0, 40.0, 33.0, 2_000.0, 20_000.0)


def populated(**over: object) -> AgentMetrics:
    hist = LatencyHistogram()
    for ms in LATENCIES_MS:
        hist.observe_ms(ms)
    args: dict[str, object] = {
        "model": "det",
        "version": 7,
        "sha256": SHA,
        "runtime": "onnx",
        "uptime_s": 3600.5,
        "frames": 1800,
        "errors": 2,
        "dropped": 3,
        "captured": 1805,
        "sink_errors": 4,
        "reconnects": 1,
        "fps": 29.9,
        "latency": hist.snapshot(),
        "confidence": 0.82,
        "drift": {("brightness", "psi"): (0.31, 0.2), ("classes", "linf"): (0.05, 0.12)},
        "alerts_active": {("drift", "brightness"): 1, ("retrain_suggested", "confidence:face"): 1},
        "updates": {"SUCCEEDED": 2, "FAILED": 1, "REJECTED": 5},
        "samples": 60,
        "samples_dropped": 6,
        "windows": 2,
        "store_failures": 7,
        "failures": {"store": 7, "listener": 1, "internal": 0},
    }
    args.update(over)
    return AgentMetrics(**args)  # type: ignore[arg-type]


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], AgentMetrics]], MetricsServer]]:
    started: list[MetricsServer] = []

    def start(snapshot: Callable[[], AgentMetrics]) -> MetricsServer:
        server = MetricsServer(("127.0.0.1", 0), snapshot)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def scrape(server: MetricsServer, **headers: str) -> dict[str, Metric]:
    response = httpx.get(server.url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert "_total_total" not in response.text
    return families


def values(family: Metric) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


COUNTERS = {
    "edge_agent_frames": 1800,
    "edge_agent_inference_errors": 2,
    "edge_agent_frames_dropped": 3,
    "edge_agent_frames_captured": 1805,
    "edge_agent_sink_errors": 4,
    "edge_agent_source_reconnects": 1,
    "edge_agent_drift_samples": 60,
    "edge_agent_drift_samples_dropped": 6,
    "edge_agent_drift_windows": 2,
    "edge_agent_metrics_write_failures": 7,
}


def test_metrics_carries_every_contract_metric(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    server = serve(populated)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
    fam = scrape(server)

    for name, value in COUNTERS.items():  # the parser names a counter family without _total
        assert fam[name].type == "counter", name
        assert values(fam[name]) == {(name + "_total", ()): value}, name
    assert values(fam["edge_agent_updates"]) == {
        ("edge_agent_updates_total", (("outcome", "FAILED"),)): 1,
        ("edge_agent_updates_total", (("outcome", "REJECTED"),)): 5,
        ("edge_agent_updates_total", (("outcome", "SUCCEEDED"),)): 2,
    }
    assert fam["edge_agent_updates"].type == "counter"

    gauges = {"edge_agent_fps": 29.9, "edge_agent_confidence": 0.82, "edge_agent_uptime_seconds": 3600.5}
    for name, gauge in gauges.items():
        assert fam[name].type == "gauge", name
        assert values(fam[name]) == {(name, ()): gauge}, name

    assert fam["edge_agent_drift_score"].type == fam["edge_agent_drift_threshold"].type == "gauge"
    assert values(fam["edge_agent_drift_score"]) == {
        ("edge_agent_drift_score", (("metric", "brightness"), ("score", "psi"))): 0.31,
        ("edge_agent_drift_score", (("metric", "classes"), ("score", "linf"))): 0.05,
    }
    assert values(fam["edge_agent_drift_threshold"]) == {
        ("edge_agent_drift_threshold", (("metric", "brightness"), ("score", "psi"))): 0.2,
        ("edge_agent_drift_threshold", (("metric", "classes"), ("score", "linf"))): 0.12,
    }
    assert fam["edge_agent_alerts_active"].type == "gauge"
    assert values(fam["edge_agent_alerts_active"]) == {
        ("edge_agent_alerts_active", (("kind", "drift"), ("metric", "brightness"))): 1,
        ("edge_agent_alerts_active", (("kind", "retrain_suggested"), ("metric", "confidence:face"))): 1,
    }
    info = fam["edge_agent_model_info"]
    assert info.type == "gauge"
    labels = (("model", "det"), ("runtime", "onnx"), ("sha256", SHA), ("version", "7"))
    assert values(info) == {("edge_agent_model_info", labels): 1}

    hist = fam["edge_agent_inference_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert [float(le) for le, _ in buckets] == [*LATENCY_BOUNDS_S, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)  # cumulative
    for le, count in buckets:  # each bucket counts the observations <= its bound
        assert count == sum(1 for ms in LATENCIES_MS if ms / 1000 <= float(le)), le
    assert buckets[-1] == ("+Inf", len(LATENCIES_MS))
    totals = {s.name: s.value for s in hist.samples if not s.name.endswith("_bucket")}
    assert totals["edge_agent_inference_latency_seconds_count"] == len(LATENCIES_MS)
    assert totals["edge_agent_inference_latency_seconds_sum"] == pytest.approx(sum(LATENCIES_MS) / 1000)

    assert "process_cpu_seconds" in fam or "python_info" in fam  # the registry's own process metrics


def test_openmetrics_for_a_prometheus_that_asks_for_it(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    server = serve(populated)
    response = httpx.get(server.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    # strict: refuses a doubled _total
    fam = {f.name: f for f in om_families(response.text)}  # type: ignore[no-untyped-call]
    for name, value in COUNTERS.items():
        assert fam[name].type == "counter" and fam[name].samples[0].value == value
    assert fam["edge_agent_model"].type == "info"
    assert fam["edge_agent_model"].samples[0].labels["version"] == "7"
    assert fam["edge_agent_inference_latency_seconds"].type == "histogram"


def test_nothing_to_say_yet(serve: Callable[[Callable[[], AgentMetrics]], MetricsServer]) -> None:
    """No window yet (confidence None), no model serving, no drift: the families are there
    without samples rather than made-up zeros."""
    server = serve(
        lambda: populated(
            model="",
            confidence=None,
            drift={},
            alerts_active={},
            updates={},
            latency=HistogramSnapshot.empty(),
        )
    )
    fam = scrape(server)
    for name in (
        "edge_agent_confidence",
        "edge_agent_model_info",
        "edge_agent_drift_score",
        "edge_agent_drift_threshold",
        "edge_agent_alerts_active",
    ):
        assert fam[name].samples == [], name
    assert fam["edge_agent_updates"].samples == []
    hist = {
        s.name: s.value for s in fam["edge_agent_inference_latency_seconds"].samples if "le" not in s.labels
    }
    assert hist == {
        "edge_agent_inference_latency_seconds_count": 0,
        "edge_agent_inference_latency_seconds_sum": 0,
    }


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/", "/metrics/x", "/favicon.ico", "/METRICS"])
def test_other_paths_are_404(serve: Callable[[Callable[[], AgentMetrics]], MetricsServer], path: str) -> None:
    server = serve(populated)
    response = httpx.get(f"http://127.0.0.1:{server.port}{path}")
    assert response.status_code == 404
    assert "GET /metrics" in response.text


def test_a_query_string_is_ignored(serve: Callable[[Callable[[], AgentMetrics]], MetricsServer]) -> None:
    server = serve(populated)
    assert httpx.get(server.url + "?name[]=x").status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_other_methods_are_405(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer], method: str
) -> None:
    calls: list[int] = []

    def snapshot() -> AgentMetrics:
        calls.append(1)
        return populated()

    server = serve(snapshot)
    response = httpx.request(
        method, server.url, content=b"x=1" if method in ("POST", "PUT", "PATCH") else None
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert calls == []  # nothing was collected
    assert httpx.get(server.url).status_code == 200


def test_a_failing_snapshot_is_a_500_and_the_server_stays_up(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer], caplog: pytest.LogCaptureFixture
) -> None:
    broken = [True]

    def snapshot() -> AgentMetrics:
        if broken[0]:
            raise RuntimeError("pipeline stats unavailable")
        return populated()

    server = serve(snapshot)
    with caplog.at_level(logging.WARNING, logger="monitoring.prometheus"):
        for _ in range(2):
            response = httpx.get(server.url)
            assert response.status_code == 500
            assert response.text == "snapshot failed; see the agent's log\n"  # nothing of the error
    failures = [r for r in caplog.records if "scrape failed" in r.getMessage()]
    assert len(failures) == 2
    assert all("RuntimeError: pipeline stats unavailable" in r.getMessage() for r in failures)
    assert failures[0].levelno == logging.ERROR and failures[0].exc_info is not None  # the traceback once
    assert failures[1].levelno == logging.WARNING and failures[1].exc_info is None
    broken[0] = False
    assert scrape(server)["edge_agent_frames"].samples[0].value == 1800


def test_stop_frees_the_port() -> None:
    server = MetricsServer(("127.0.0.1", 0), populated)
    server.start()
    port = server.port
    assert httpx.get(server.url).status_code == 200
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")
    with MetricsServer(("127.0.0.1", port), populated) as again:  # the same port, at once
        assert again.port == port
        assert httpx.get(again.url).status_code == 200
    server.start()  # a stopped server starts again
    try:
        assert httpx.get(server.url).status_code == 200
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = MetricsServer(("127.0.0.1", port), populated)
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}: .*--metrics"):
            server.start()
        assert server.port == port  # nothing bound, nothing to stop
        server.stop()


def test_an_address_not_on_this_machine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1:9464"):  # TEST-NET-1: never a local address
        MetricsServer(("192.0.2.1", 9464), populated).start()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    server = MetricsServer(("::1", 0), populated)
    try:
        server.start()
    except ConfigError:
        pytest.skip("::1 is not configured here")
    try:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        assert httpx.get(server.url).status_code == 200
    finally:
        server.stop()


# ---------------------------------------------------------------------------- drift failures


def test_drift_failures_by_kind(serve: Callable[[Callable[[], AgentMetrics]], MetricsServer]) -> None:
    fam = scrape(serve(populated))  # prometheus-client's text parser
    assert fam["edge_agent_drift_failures"].type == "counter"
    assert values(fam["edge_agent_drift_failures"]) == {
        ("edge_agent_drift_failures_total", (("kind", "internal"),)): 0,
        ("edge_agent_drift_failures_total", (("kind", "listener"),)): 1,
        ("edge_agent_drift_failures_total", (("kind", "store"),)): 7,
    }
    om = httpx.get(serve(populated).url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    strict = {f.name: f for f in om_families(om.text)}  # type: ignore[no-untyped-call]
    assert strict["edge_agent_drift_failures"].type == "counter"
    assert {s.labels["kind"]: s.value for s in strict["edge_agent_drift_failures"].samples} == {
        "internal": 0,
        "listener": 1,
        "store": 7,
    }


def test_agent_metrics_without_failures_still_builds(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    """A caller that does not know ``failures`` (built positionally or by keyword) still works:
    the family is there without samples."""
    full = populated()
    args = {k: v for k, v in vars(full).items() if k != "failures"}
    older = AgentMetrics(**args)
    assert older.failures == {} and older.failures is not AgentMetrics(**args).failures
    fam = scrape(serve(lambda: older))
    assert fam["edge_agent_drift_failures"].samples == []
    assert fam["edge_agent_frames"].samples[0].value == 1800


# ---------------------------------------------------------------------------- a listener under load


def scrape_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "metrics-scrape"]


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True when the other end closes ``sock`` within ``within_s`` (EOF or a reset)."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):  # BlockingIOError: within_s 0 and nothing yet
        return False


def test_idle_connections_hold_no_thread_and_do_not_delay_a_scrape(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    """100 connections that send nothing (more than the 64 the listener keeps): a scrape behind
    them is answered at once, no thread was started for them, and the oldest were closed."""
    server = serve(populated)
    baseline = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        started = time.monotonic()
        response = httpx.get(server.url, timeout=10.0)  # accepted after all of them: waits on them
        assert response.status_code == 200
        assert time.monotonic() - started < 2.0  # not the 5 s head timeout
        assert len(scrape_threads()) <= 4
        assert threading.active_count() <= baseline + 4
        # beyond 64 waiting, the oldest were closed (36 of them, and the scrape's own slot)
        assert all(closed_by_peer(sock, 2.0) for sock in idle[:36])
        assert not any(closed_by_peer(sock, 0.0) for sock in idle[-50:])  # the newest are still open
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_client_is_closed_after_the_head_timeout() -> None:
    """A client that sends its request a byte every 50 ms (slowloris) is closed when the head
    timeout runs out since it connected, not since its last byte."""
    with MetricsServer(("127.0.0.1", 0), populated, head_timeout_s=0.5) as server:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            started = time.monotonic()
            closed_after = None
            for byte in request:
                try:
                    sock.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - started
                    break
                readable, _, _ = select.select([sock], [], [], 0.05)  # the trickle's pace
                if readable and closed_by_peer(sock, 0.0):
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None, "the slow client was never closed"
            assert 0.4 <= closed_after < 1.5
        assert httpx.get(server.url).status_code == 200


def test_beyond_the_workers_a_request_is_a_quick_503() -> None:
    """4 scrapes held inside the snapshot: a 5th is answered 503 with Retry-After at once, no
    5th handler thread is started, and once they finish scrapes work again."""
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def snapshot() -> AgentMetrics:
        inside.release()
        gate.wait(10.0)
        return populated()

    with MetricsServer(("127.0.0.1", 0), snapshot, workers=4) as server:
        codes: list[int] = []

        def held() -> None:
            codes.append(httpx.get(server.url, timeout=15.0).status_code)

        clients = [threading.Thread(target=held) for _ in range(4)]
        try:
            for t in clients:
                t.start()
            for _ in range(4):
                assert inside.acquire(timeout=5.0)  # all 4 are inside the snapshot
            started = time.monotonic()
            busy = httpx.get(server.url, timeout=5.0)
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert time.monotonic() - started < 1.0
            assert len(scrape_threads()) == 4
        finally:
            gate.set()
            for t in clients:
                t.join(15.0)
        assert codes == [200] * 4
        assert httpx.get(server.url).status_code == 200


def test_an_oversized_request_head_is_refused(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    server = serve(populated)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 10_000)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 431 ")
    assert httpx.get(server.url).status_code == 200


def test_a_client_that_leaves_mid_request_does_no_harm(
    serve: Callable[[Callable[[], AgentMetrics]], MetricsServer],
) -> None:
    server = serve(populated)
    for partial in (b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(partial)
    assert httpx.get(server.url).status_code == 200


# ---------------------------------------------------------------------------- LatencyHistogram


def test_buckets_are_le_and_in_seconds() -> None:
    hist = LatencyHistogram(bounds=(0.001, 0.01, 0.1))
    for ms in (1.0, 1.0001, 10.0, 100.0, 100.5, -3.0, float("nan"), float("inf")):
        hist.observe_ms(ms)
    snap = hist.snapshot()
    # -3 -> 0 s and 1 ms land in le=0.001; 1.0001 and 10 in 0.01; 100 in 0.1; 100.5 in +Inf
    assert snap.counts == (2, 4, 5, 6)
    assert snap.count == 6  # NaN and inf are not counted
    assert snap.sum == pytest.approx((1.0 + 1.0001 + 10.0 + 100.0 + 100.5) / 1000)
    assert snap.bounds == (0.001, 0.01, 0.1)


def test_default_bounds_cover_1ms_to_10s() -> None:
    assert LATENCY_BOUNDS_S[0] == 0.001 and LATENCY_BOUNDS_S[-1] == 10.0
    assert list(LATENCY_BOUNDS_S) == sorted(set(LATENCY_BOUNDS_S))
    assert HistogramSnapshot.empty() == LatencyHistogram().snapshot()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bounds": (), "counts": (0,), "sum": 0.0},
        {"bounds": (0.1, 0.1), "counts": (0, 0, 0), "sum": 0.0},
        {"bounds": (0.2, 0.1), "counts": (0, 0, 0), "sum": 0.0},
        {"bounds": (-1.0,), "counts": (0, 0), "sum": 0.0},
        {"bounds": (math.inf,), "counts": (0, 0), "sum": 0.0},
        {"bounds": (0.1,), "counts": (0,), "sum": 0.0},
        {"bounds": (0.1,), "counts": (2, 1), "sum": 0.0},
        {"bounds": (0.1,), "counts": (-1, 0), "sum": 0.0},
    ],
)
def test_a_snapshot_that_is_not_a_histogram_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HistogramSnapshot(**kwargs)  # type: ignore[arg-type]


def test_observe_and_snapshot_from_many_threads() -> None:
    """8 threads observe while another snapshots: every snapshot is a valid histogram whose
    sum and count describe the same observations, counts never go back, none are lost."""
    step_ms = 1000 * 2**-7  # 7.8125 ms: exactly 2**-7 s, so sums are exact
    threads_n, each = 8, 5_000
    hist = LatencyHistogram()
    start = threading.Barrier(threads_n + 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def observe() -> None:
        start.wait()
        for _ in range(each):
            hist.observe_ms(step_ms)

    def watch() -> None:
        try:
            start.wait()
            last = 0
            while True:
                finished = done.is_set()
                snap = hist.snapshot()  # validates cumulative counts itself
                assert snap.sum == snap.count * 2**-7
                assert snap.count >= last
                last = snap.count
                if finished:
                    return
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=observe) for _ in range(threads_n)]
    watcher = threading.Thread(target=watch)
    for t in (*workers, watcher):
        t.start()
    for t in workers:
        t.join()
    done.set()
    watcher.join()
    assert errors == []
    snap = hist.snapshot()
    assert snap.count == threads_n * each
    assert snap.sum == threads_n * each * 2**-7
    i = LATENCY_BOUNDS_S.index(0.0075)
    assert snap.counts[i] == 0 and snap.counts[i + 1] == threads_n * each  # all in le=0.01
