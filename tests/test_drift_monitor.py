"""DriftMonitor: the sink on the results thread, its own thread, the reference a version is
judged against (bundle, learned, learning), state across restarts, model swaps, and a
metrics.db that cannot be written."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.errors import EdgeAgentError
from inference.result import Result
from monitoring.drift import Alert
from monitoring.drift_monitor import DriftMonitor, MonitorSettings, Span, WindowReport
from monitoring.frame_stats import Sample
from monitoring.metrics_store import MetricsStore
from monitoring.reference import build_reference
from tests.fixtures.drift_streams import synthetic

WINDOW = 30
K = 3


@dataclass
class FakeManifest:
    reference: Any = None


@dataclass
class FakeBundle:
    manifest: FakeManifest = field(default_factory=FakeManifest)
    names: tuple[str, ...] = ("face", "person")

    def labels(self) -> list[str]:
        return list(self.names)


class Model:
    def __init__(
        self, version: int = 1, reference: Any = None, labels: tuple[str, ...] = ("face", "person")
    ) -> None:
        self.name = "det"
        self.version = version
        self.sha256 = f"{version:064x}"
        self.bundle = FakeBundle(FakeManifest(reference), labels)


@dataclass
class Frame:
    index: int
    ts: float
    image: Any = None


class Stream:
    """Stands in for FrameStats: sample ``i`` of the monitor is ``samples[i]`` (by frame index)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.gate: threading.Event | None = None

    def thumbnail(self, image: Any) -> Any:
        return image

    def sample(self, index: int, ts: float, image: Any, result: Result) -> Sample:
        if self.gate is not None:
            self.gate.wait(30)
        s = self.samples[index]
        return Sample(ts=ts, frame=index, values=s.values, labels=s.labels, latency_ms=s.latency_ms)


def darkened(samples: list[Sample]) -> list[Sample]:
    out = []
    for s in samples:
        v = dict(s.values)
        v["brightness"] *= 0.4
        v["contrast"] *= 0.4
        v["sharpness"] *= 0.05
        out.append(Sample(ts=s.ts, frame=s.frame, values=v, labels=s.labels, latency_ms=s.latency_ms))
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return build_reference(synthetic(rng, 3000, phi=0.3), rng=np.random.default_rng(8)).to_json()


def settings(**kw: Any) -> MonitorSettings:
    base: dict[str, Any] = {
        "sample_every": Span(count=1),
        "window": Span(count=WINDOW),
        "alert_after": K,
        "clear_after": K,
        "learn": Span(count=300),
    }
    base.update(kw)
    return MonitorSettings(**base)


def feed(monitor: DriftMonitor, model: Model, first: int, count: int) -> None:
    """``count`` frames from index ``first``, through the sink, then wait until they are processed."""
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    for i in range(first, first + count):
        monitor.write(Frame(i, 1000.0 + i), result, model)
        if i % 8 == 7:  # the sink never waits: pace the frames so that no sample is dropped
            assert monitor.drain(30), "the monitor did not process the queued samples"
    assert monitor.drain(30), "the monitor did not process the queued samples"
    assert monitor.samples_dropped == 0


def make(store: MetricsStore | None, samples: list[Sample], **kw: Any) -> DriftMonitor:
    monitor = DriftMonitor(store, settings(**kw), frame_stats=Stream(samples))  # type: ignore[arg-type]
    monitor.start()
    return monitor


def test_windows_are_judged_against_the_bundle_reference_and_a_change_raises_alerts_within_k(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    rng = np.random.default_rng(11)
    calm = synthetic(rng, 10 * WINDOW, phi=0.3)
    samples = calm + darkened(synthetic(rng, 6 * WINDOW, phi=0.3))
    store = MetricsStore(tmp_path / "metrics.db")
    monitor = make(store, samples)
    reports: list[WindowReport] = []
    alerts: list[Alert] = []
    monitor.on_window.append(reports.append)
    monitor.on_alert.append(alerts.append)
    model = Model(reference=reference)
    feed(monitor, model, 0, len(samples))
    monitor.stop()

    assert [r.summary.index for r in reports] == list(range(16))
    assert all(r.reference == "bundle" and r.verdict is not None and r.verdict.judged for r in reports)
    raised = {a.metric: a for a in alerts if a.state == "raised" and a.kind == "drift"}
    assert {"brightness", "contrast", "sharpness"} <= set(raised)
    for a in alerts:
        assert min(a.windows) >= 10, f"an alert before the change: {a.message()}"
    for metric in ("brightness", "contrast", "sharpness"):
        assert max(raised[metric].windows) == 10 + K - 1  # the K-th changed window
    rows = store.windows(0)
    assert len(rows) == 16 and {r["reference"] for r in rows} == {"bundle"}
    assert sum(r["drifted"] for r in rows[:10]) == 0 and all(r["drifted"] for r in rows[10:])
    assert {a["metric"] for a in store.alerts(0)} >= {"brightness", "contrast", "sharpness"}
    assert store.model_versions(0)[0]["reference"] == "bundle"
    assert monitor.status()["alerts"] and monitor.drift_scores()
    assert monitor.frames == len(samples) and sum(r.summary.frames for r in reports) == 16 * WINDOW


def test_detector_state_survives_a_restart(tmp_path: Path, reference: dict[str, Any]) -> None:
    """K-1 drifted windows, a restart, one more: the alert is raised then (the count was kept)."""
    rng = np.random.default_rng(12)
    samples = synthetic(rng, 4 * WINDOW, phi=0.3) + darkened(synthetic(rng, 4 * WINDOW, phi=0.3))
    store = MetricsStore(tmp_path / "metrics.db")
    model = Model(reference=reference)
    first = make(store, samples)
    alerts: list[Alert] = []
    first.on_alert.append(alerts.append)
    feed(first, model, 0, (4 + K - 1) * WINDOW)
    first.stop()
    assert not [a for a in alerts if a.state == "raised"]

    second = make(store, samples)
    second.on_alert.append(alerts.append)
    feed(second, model, (4 + K - 1) * WINDOW, WINDOW)
    second.stop()
    assert {"brightness", "contrast", "sharpness"} <= {a.metric for a in alerts if a.state == "raised"}


def test_without_a_reference_it_learns_one_and_a_restart_resumes_the_learning(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    samples = synthetic(rng, 20 * WINDOW, phi=0.3)
    store = MetricsStore(tmp_path / "metrics.db")
    model = Model(reference=None)
    first = make(store, samples, learn=Span(count=10 * WINDOW))
    feed(first, model, 0, 6 * WINDOW)
    assert first.status()["reference"] == "learning"
    assert first.status()["learning"]["samples"] == 6 * WINDOW
    first.stop()

    second = make(store, samples, learn=Span(count=10 * WINDOW))
    reports: list[WindowReport] = []
    second.on_window.append(reports.append)
    feed(second, model, 6 * WINDOW, 8 * WINDOW)
    second.stop()
    # 6 windows learned before the restart + 4 after = the 10 asked for: judged from the 5th on
    assert [r.reference for r in reports] == ["learning"] * 3 + ["learned"] * 5
    assert all(r.verdict is not None and r.verdict.judged for r in reports[4:])
    assert store.load_state(f"reference:{model.name}/v1/{model.sha256[:12]}") is not None


def test_a_reference_that_does_not_fit_the_model_falls_back_to_learning(
    tmp_path: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = dict(reference, class_priors={"zebra": 1.0})
    monitor = make(MetricsStore(tmp_path / "metrics.db"), synthetic(np.random.default_rng(1), 60))
    with caplog.at_level(logging.WARNING, "monitoring.drift_monitor"):
        feed(monitor, Model(reference=bad), 0, 30)
    monitor.stop()
    assert monitor.status()["reference"] == "learning"
    assert any("learning a reference from live data instead" in r.getMessage() for r in caplog.records)
    assert any("zebra" in r.getMessage() for r in caplog.records)


def test_a_model_swap_closes_the_window_and_starts_afresh_against_the_new_reference(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    rng = np.random.default_rng(14)
    samples = synthetic(rng, 6 * WINDOW, phi=0.3)
    store = MetricsStore(tmp_path / "metrics.db")
    monitor = make(store, samples)
    reports: list[WindowReport] = []
    monitor.on_window.append(reports.append)
    feed(monitor, Model(1, reference), 0, WINDOW + 10)  # one window and 10 samples of the next
    feed(monitor, Model(2, None), WINDOW + 10, WINDOW)
    monitor.stop()
    assert [(r.version, r.summary.samples, r.reference) for r in reports] == [
        (1, WINDOW, "bundle"),
        (1, 10, "bundle"),  # closed by the swap, too small to judge
        (2, WINDOW, "learning"),
    ]
    assert reports[1].verdict is not None and not reports[1].verdict.judged
    assert [(m["version"], m["reference"]) for m in store.model_versions(0)] == [
        (1, "bundle"),
        (2, "learning"),
    ]


def test_the_sink_never_waits_for_the_monitor_a_full_queue_drops_and_counts(
    reference: dict[str, Any],
) -> None:
    samples = synthetic(np.random.default_rng(15), 200, phi=0.3)
    stream = Stream(samples)
    stream.gate = threading.Event()  # the monitor thread blocks on its first sample
    monitor = DriftMonitor(None, settings(queue=4), frame_stats=stream)  # type: ignore[arg-type]
    monitor.start()
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    model = Model(reference=reference)
    for i in range(100):  # returns although the monitor thread is stuck
        monitor.write(Frame(i, 1000.0 + i), result, model)
    assert monitor.frames == 100
    assert monitor.samples_dropped >= 100 - 4 - 2  # the queue holds 4, one is being processed
    stream.gate.set()
    assert monitor.drain(30)
    monitor.stop()
    assert monitor.samples + monitor.samples_dropped == 100


@pytest.mark.parametrize(
    ("pragma", "why"), [("PRAGMA max_page_count = 1", "full"), ("PRAGMA query_only = ON", "read-only")]
)
def test_a_metrics_db_that_cannot_be_written_is_counted_and_monitoring_goes_on(
    tmp_path: Path, reference: dict[str, Any], pragma: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's own errors: a full database (max_page_count: SQLITE_FULL, as on a full disk) and a
    read-only one (SQLITE_READONLY)."""
    rng = np.random.default_rng(16)
    samples = synthetic(rng, 4 * WINDOW, phi=0.3) + darkened(synthetic(rng, 4 * WINDOW, phi=0.3))
    store = MetricsStore(tmp_path / "metrics.db")
    with store._locked("test"):
        store.db.conn.execute(pragma)
    with pytest.raises(EdgeAgentError):  # fill what free pages are left: then nothing fits
        for i in range(10_000):
            store.save_state(f"filler{i}", {"x": "y" * 2000})
    windows_before = store.count("windows")
    monitor = make(store, samples)
    alerts: list[Alert] = []
    monitor.on_alert.append(alerts.append)
    with caplog.at_level(logging.WARNING, "monitoring.drift_monitor"):
        feed(monitor, Model(reference=reference), 0, len(samples))
    monitor.stop()
    assert monitor.windows == 8 and monitor.samples == len(samples)  # judged all the same
    assert {"brightness", "contrast", "sharpness"} <= {a.metric for a in alerts}  # the fleet still hears
    # every window is written or counted as not written: none is silently lost
    assert store.count("windows") - windows_before + monitor.store_failed["writing a window"] == 8
    assert monitor.store_failures >= monitor.store_failed["writing a window"] >= 1
    assert any("the camera loop goes on" in r.getMessage() for r in caplog.records)


def test_sample_every_seconds_takes_one_frame_a_second(reference: dict[str, Any]) -> None:
    samples = synthetic(np.random.default_rng(17), 400, phi=0.3)
    monitor = make(None, samples, sample_every=Span(seconds=1.0))
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    model = Model(reference=reference)
    for i in range(300):  # 10 s at 30 fps
        monitor.write(Frame(i, 1000.0 + i / 30), result, model)
    assert monitor.drain(30)
    monitor.stop()
    assert monitor.samples == 10 and monitor.frames == 300


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [("60", 60, None), ("30s", None, 30.0), ("5m", None, 300.0), ("1h", None, 3600.0), (" 2.5s ", None, 2.5)],
)
def test_span_parse(text: str, count: int | None, seconds: float | None) -> None:
    span = Span.parse(text, "--window")
    assert (span.count, span.seconds) == (count, seconds)


@pytest.mark.parametrize("text", ["", "0", "-3", "1.5", "3d", "abc", "0s", "8000000s", True])
def test_span_parse_rejects(text: Any) -> None:
    from inference.errors import ConfigError

    with pytest.raises(ConfigError, match="--window"):
        Span.parse(text, "--window")


def test_a_listener_that_fails_loses_no_alert_of_the_others_and_a_refused_alert_is_handed_again(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    """A listener with a bug (ValueError) is logged and counted, the window's other alerts and the
    other listeners still get through; one that cannot take an alert now (EdgeAgentError: the
    outbox's disk) gets it again at the next window."""
    from inference.errors import TransientError

    rng = np.random.default_rng(18)
    samples = synthetic(rng, 4 * WINDOW, phi=0.3) + darkened(synthetic(rng, 6 * WINDOW, phi=0.3))
    store = MetricsStore(tmp_path / "metrics.db")
    monitor = make(store, samples)
    good: list[Alert] = []
    full_once: list[Alert] = []
    refused: list[Alert] = []

    def buggy(alert: Alert) -> None:
        raise ValueError("a bug in a listener")

    def disk_full_once(alert: Alert) -> None:
        if not refused:
            refused.append(alert)
            raise TransientError("outbox: disk full")
        full_once.append(alert)

    monitor.on_alert.extend([buggy, disk_full_once, good.append])
    feed(monitor, Model(reference=reference), 0, len(samples))
    monitor.stop()
    raised = {a.metric for a in good if a.state == "raised"}
    assert {"brightness", "contrast", "sharpness"} <= raised
    assert {a["metric"] for a in store.alerts(0)} >= raised  # every alert stored
    assert refused and refused[0] in full_once  # handed again, at the next window
    assert {a.metric for a in full_once} >= raised
    assert monitor.listener_failures == len(good) + 1 and monitor.failures == 0


def test_window_numbers_go_on_after_a_restart(tmp_path: Path, reference: dict[str, Any]) -> None:
    samples = synthetic(np.random.default_rng(19), 5 * WINDOW, phi=0.3)
    store = MetricsStore(tmp_path / "metrics.db")
    reports: list[WindowReport] = []
    first = make(store, samples)
    first.on_window.append(reports.append)
    feed(first, Model(reference=reference), 0, 2 * WINDOW)
    first.stop()
    second = make(store, samples)
    second.on_window.append(reports.append)
    feed(second, Model(reference=reference), 2 * WINDOW, 2 * WINDOW)
    second.stop()
    assert [r.summary.index for r in reports] == [0, 1, 2, 3]


def test_a_swap_to_a_version_that_learns_ends_the_old_versions_alerts(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    rng = np.random.default_rng(20)
    samples = darkened(synthetic(rng, 5 * WINDOW, phi=0.3)) + synthetic(rng, 2 * WINDOW, phi=0.3)
    monitor = make(MetricsStore(tmp_path / "metrics.db"), samples)
    feed(monitor, Model(1, reference), 0, 4 * WINDOW)
    assert monitor.status()["alerts"]
    feed(monitor, Model(2, None), 4 * WINDOW, WINDOW)
    monitor.stop()
    assert monitor.status()["reference"] == "learning" and monitor.status()["alerts"] == []


def test_with_a_lossless_source_the_sink_waits_for_room_and_stop_releases_it(
    reference: dict[str, Any],
) -> None:
    samples = synthetic(np.random.default_rng(21), 100, phi=0.3)
    stream = Stream(samples)
    stream.gate = threading.Event()
    monitor = DriftMonitor(None, settings(queue=2), frame_stats=stream, lossless=True)  # type: ignore[arg-type]
    monitor.start()
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    model = Model(reference=reference)
    wrote = threading.Event()

    def writer() -> None:
        for i in range(10):
            monitor.write(Frame(i, 1000.0 + i), result, model)
        wrote.set()

    t = threading.Thread(target=writer)
    t.start()
    # the monitor is stuck on its first sample and the queue holds 2: the writer must wait
    with monitor._cond:
        assert monitor._cond.wait_for(lambda: len(monitor._queue) >= 2, 10), "the queue never filled"
    assert not wrote.is_set()
    stream.gate.set()  # released: every sample goes through, none dropped
    t.join(30)
    assert wrote.is_set() and monitor.drain(30)
    monitor.stop()
    assert monitor.samples == 10 and monitor.samples_dropped == 0

    stuck_stream = Stream(samples)
    stuck_stream.gate = threading.Event()
    stuck = DriftMonitor(None, settings(queue=1), frame_stats=stuck_stream, lossless=True)  # type: ignore[arg-type]
    stuck.start()
    done = threading.Event()

    def blocked_writer() -> None:
        for i in range(5):
            stuck.write(Frame(i, 1000.0 + i), result, model)
        done.set()

    t = threading.Thread(target=blocked_writer)
    t.start()
    with stuck._cond:  # the writer is waiting for room: the thread holds one sample, the queue one
        assert stuck._cond.wait_for(lambda: len(stuck._queue) >= 1 and stuck._busy, 10)
    assert not done.is_set()
    stopper = threading.Thread(target=stuck.stop)
    stopper.start()  # stop() releases the waiting writer (it drops what it cannot queue, counted)
    t.join(30)
    assert done.is_set() and stuck.samples_dropped >= 1
    stuck_stream.gate.set()
    stopper.join(30)


def test_a_time_to_learn_counts_only_the_time_seen_not_a_gap(tmp_path: Path) -> None:
    """5 minutes learned, a 2-hour gap (powered off), then samples: a 10-minute learn is not done
    by the gap; it is after 5 more minutes of samples."""
    samples = synthetic(np.random.default_rng(22), 1200, phi=0.3)
    monitor = make(MetricsStore(tmp_path / "metrics.db"), samples, learn=Span(seconds=600.0))
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    model = Model(reference=None)
    for i in range(300):
        monitor.write(Frame(i, 1000.0 + i), result, model)
        if i % 8 == 7:
            assert monitor.drain(30)
    for i in range(300, 600):
        monitor.write(Frame(i, 1000.0 + 7200 + i), result, model)
        if i == 310:
            assert monitor.drain(30)
            assert monitor.status()["reference"] == "learning"
        if i % 8 == 7:
            assert monitor.drain(30)
    assert monitor.drain(30)
    monitor.stop()
    assert monitor.status()["reference"] == "learned"


def test_a_reference_of_another_kind_of_result_falls_back_to_learning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A classifier's reference shipped with a model that gives detections."""
    rng = np.random.default_rng(23)
    classes = build_reference(synthetic(rng, 1000, kind="classes"), rng=np.random.default_rng(3)).to_json()
    monitor = make(MetricsStore(tmp_path / "metrics.db"), synthetic(rng, 60, phi=0.3))
    with caplog.at_level(logging.WARNING, "monitoring.drift_monitor"):
        feed(monitor, Model(reference=classes, labels=("cat", "dog", "fox")), 0, 30)  # detections results
    monitor.stop()
    assert monitor.status()["reference"] == "learning"
    assert any(
        "results are classes, but this model's are detections" in r.getMessage() for r in caplog.records
    )


def test_alerts_a_listener_could_not_take_survive_a_restart_and_keep_their_order(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    """The outbox's disk is full when the alerts are raised; the agent stops; after the restart
    the listener takes them, in order, before any later one."""
    from inference.errors import TransientError

    rng = np.random.default_rng(24)
    samples = synthetic(rng, 4 * WINDOW, phi=0.3) + darkened(synthetic(rng, 5 * WINDOW, phi=0.3))
    store = MetricsStore(tmp_path / "metrics.db")
    model = Model(reference=reference)

    def full(alert: Alert) -> None:
        raise TransientError("outbox: disk full")

    first = make(store, samples)
    first.on_alert.append(full)
    feed(first, model, 0, (4 + K) * WINDOW)
    assert first.status()["unsent_alerts"] >= 3 and first.status()["alerts"]
    first.stop()

    got: list[Alert] = []
    second = make(store, samples)
    second.on_alert.append(got.append)
    feed(second, model, (4 + K) * WINDOW, WINDOW)  # the next window hands them over
    second.stop()
    raised = [a.metric for a in got if a.state == "raised"]
    assert {"brightness", "contrast", "sharpness"} <= set(raised[:3] + raised)
    assert got[0].windows[-1] == 4 + K - 1  # the old ones first
    assert second.status()["unsent_alerts"] == 0 and second.alerts_lost == 0


def test_alerts_waiting_at_a_swap_go_on_to_the_new_version_and_not_back_on_a_rollback(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    from inference.errors import TransientError

    rng = np.random.default_rng(25)
    samples = darkened(synthetic(rng, 4 * WINDOW, phi=0.3)) + synthetic(rng, 4 * WINDOW, phi=0.3)
    store = MetricsStore(tmp_path / "metrics.db")
    monitor = make(store, samples)
    got: list[Alert] = []
    disk_full = [True]

    def outbox(alert: Alert) -> None:
        if disk_full[0]:
            raise TransientError("outbox: disk full")
        got.append(alert)

    monitor.on_alert.append(outbox)
    feed(monitor, Model(1, reference), 0, K * WINDOW)
    waiting = monitor.status()["unsent_alerts"]
    assert waiting >= 3
    disk_full[0] = False
    feed(monitor, Model(2, reference), K * WINDOW, WINDOW)  # the swap, then a window of v2
    assert len([a for a in got if a.version == 1]) == waiting  # v1's alerts, carried over
    feed(monitor, Model(1, reference), 4 * WINDOW, WINDOW)  # back to v1: nothing of v1's again
    monitor.stop()
    assert len([a for a in got if a.version == 1 and a.state == "raised"]) == waiting
    assert monitor.alerts_lost == 0


def test_a_window_open_when_the_clock_steps_back_is_dropped(reference: dict[str, Any]) -> None:
    samples = synthetic(np.random.default_rng(26), 200, phi=0.3)
    monitor = make(None, samples)
    reports: list[WindowReport] = []
    monitor.on_window.append(reports.append)
    result = Result(kind="detections", confidence=0.8, inference_ms=5.0)
    model = Model(reference=reference)
    for i in range(WINDOW + 10):
        monitor.write(Frame(i, 1000.0 + i), result, model)
        if i % 8 == 7:
            assert monitor.drain(30)
    for i in range(WINDOW + 10, 3 * WINDOW + 10):  # the clock went back an hour
        monitor.write(Frame(i, 1000.0 - 3600 + i), result, model)
        if i % 8 == 7:
            assert monitor.drain(30)
    assert monitor.drain(30)
    monitor.stop()
    assert [r.summary.samples for r in reports] == [WINDOW, WINDOW, WINDOW]
    assert all(r.summary.end_ts >= r.summary.start_ts for r in reports)


def test_without_a_store_a_learned_reference_serves_and_its_samples_are_let_go() -> None:
    samples = synthetic(np.random.default_rng(27), 400, phi=0.3)
    monitor = make(None, samples, learn=Span(count=120))
    feed(monitor, Model(reference=None), 0, 150)
    monitor.stop()
    assert monitor.status()["reference"] == "learned"
    assert monitor._current is not None and monitor._current.learning == []
