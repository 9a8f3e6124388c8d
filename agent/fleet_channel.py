"""``FleetChannel``: one agent's MQTT side (DESIGN §6), a service beside the pipeline.

    MqttLink      the broker connection: client id = device id, persistent session, TLS,
                  last will ``{"online": false}`` retained on ``{p}/{device}/state``
    MqttJobs      signed jobs from ``{p}/{device}/jobs/notify`` and the group's topic
    Outbox        statuses and telemetry, persisted, drained in order (``OutboxPump``)
    state         retained on every (re)connect and on every job event
    telemetry     once per drift window (``attach_monitor``): fps, latency, confidence, drift
                  scores against their thresholds; without monitoring every ``telemetry_s``
    alerts        drift and decay (``retrain_suggested``) alerts, raised and cleared, through
                  the outbox
    events        detections, QoS 0, at most ``events_per_min`` (off by default)

The broker being away is normal: the agent serves, jobs already queued run, and what the
fleet must hear waits in the outbox. Only settings that can never work (a certificate file
that is missing, a bad URL) fail the start.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import MqttConfig
from agent.manager import ModelManager
from agent.pipeline import Pipeline, PipelineStats
from agent.source import Frame
from inference.errors import ConfigError, EdgeAgentError
from inference.result import Result
from monitoring.drift import Alert
from monitoring.drift_monitor import DriftMonitor, WindowReport
from ota.mqtt_jobs import MqttJobs, SamplingControl, StatusPublisher
from ota.mqtt_link import MqttLink, MqttSettings
from ota.outbox import Outbox, OutboxPump
from ota.protocol import (
    ID_RE,
    OFFLINE_STATE,
    Topics,
    alert_payload,
    event_payload,
    state_payload,
    telemetry_payload,
)
from ota.trust import TrustStore
from ota.update_events import JobEvent, UpdateEvents

log = logging.getLogger(__name__)


def default_device_id() -> str:
    """The host name, as a topic-safe id."""
    name = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-._")[:64]
    if not cleaned or not ID_RE.fullmatch(cleaned) or cleaned == "group":
        raise ConfigError(
            f"host name {name!r} is not a usable device id: set [mqtt] device_id or --device-id"
        )
    return cleaned


def status_outbox(cfg: MqttConfig, state_dir: Path, events: UpdateEvents) -> Outbox:
    """The outbox in ``<state>/outbox/``, with every job event going into it as a status."""
    device_id = cfg.device_id or default_device_id()
    outbox = Outbox(state_dir / "outbox" / "outbox.db")
    events.subscribe(StatusPublisher(outbox, Topics(cfg.prefix), device_id, lambda: None))
    return outbox


class FleetChannel:
    """See the module docstring; ``start``/``stop`` as a daemon service, ``write`` as a sink."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        state_dir: Path,
        manager: ModelManager,
        pipeline: Pipeline,
        trust: TrustStore,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.time,
        link_factory: Callable[[MqttSettings], MqttLink] = MqttLink,
    ) -> None:
        """``outbox``: one that already takes the job statuses (``status_outbox``, subscribed
        before the manager's boot, so what a restart finishes is reported too)."""
        assert cfg.url is not None
        self.cfg = cfg
        self.device_id = cfg.device_id or default_device_id()
        self.group = cfg.group
        self.topics = Topics(cfg.prefix)
        self.manager = manager
        self.pipeline = pipeline
        self.clock = clock
        settings = MqttSettings(
            url=cfg.url,
            client_id=self.device_id,
            ca=cfg.ca,
            cert=cfg.cert,
            key=cfg.key,
            username=cfg.username,
            password_file=cfg.password_file,
            will_topic=self.topics.state(self.device_id),
            will_payload=OFFLINE_STATE,
        )
        self.link = link_factory(settings)
        if outbox is None:
            outbox = status_outbox(cfg, state_dir, manager.events)
        self.outbox = outbox
        self.pump = OutboxPump(self.outbox, self.link)
        self.jobs = MqttJobs(
            device_id=self.device_id, group=self.group, topics=self.topics, trust=trust, target=manager
        )
        for topic_filter in self.jobs.filters():
            self.link.subscribe(topic_filter, self.jobs.on_message, qos=1)
        manager.events.subscribe(self._on_event)  # a rejection changes no phase but is news
        manager.phase_listeners.append(self._on_phase)
        self.link.on_connect(self.publish_state)
        self._stop = threading.Event()
        self._telemetry: threading.Thread | None = None
        self._last: tuple[float, int, int, int] | None = None  # (t, frames, dropped, errors)
        self._last_lock = threading.Lock()
        self._monitor: DriftMonitor | None = None
        self._spool_counters: Callable[[], dict[str, int]] | None = None
        self._event_tokens = 0.0
        self._event_t = time.monotonic()
        self.events_sent = 0

    # ------------------------------------------------------------------ service

    def start(self) -> None:
        self.pump.start()
        self.link.start()
        # with drift monitoring, telemetry goes out per window, and from here only when no window
        # closed for telemetry_s (a dead camera)
        self._telemetry = threading.Thread(target=self._telemetry_loop, name="fleet-telemetry", daemon=True)
        self._telemetry.start()
        log.info(
            "fleet channel: device %s%s on %s (prefix %s)",
            self.device_id,
            f" in group {self.group}" if self.group else "",
            self.cfg.url,
            self.cfg.prefix,
        )

    def stop(self) -> None:
        self._stop.set()
        if self.link.connected:  # the last will is only for an unclean end
            try:
                self.link.publish(self.topics.state(self.device_id), OFFLINE_STATE, retain=True).wait(2.0)
            except EdgeAgentError as err:
                log.info("offline state not sent: %s", err)
        self.pump.stop()
        self.link.stop()
        if self._telemetry is not None:
            self._telemetry.join(timeout=5)
        self.outbox.close()

    # ------------------------------------------------------------------ state

    def _on_event(self, _event: JobEvent) -> None:
        self.publish_state()

    def _on_phase(self, _state: Any) -> None:
        self.publish_state()

    def state(self) -> bytes:
        handle = self.manager.handle
        model = handle.current if handle is not None else None
        stats = self.pipeline.stats()
        return state_payload(
            device=self.device_id,
            group=self.group,
            phase=self.manager.machine.state,
            model=model.name if model is not None else None,
            version=model.version if model is not None else None,
            sha256=model.sha256 if model is not None else None,
            fps=stats.fps,
            uptime_s=stats.uptime_s,
            agent_version=__version__,
            hold=self.manager.machine.record.hold,
            window=None if self.manager.window is None else str(self.manager.window),
            ts=self.clock(),
        )

    def publish_state(self) -> None:
        """Retained state now, when connected (a reconnect publishes it again)."""
        if not self.link.connected:
            return
        try:
            self.link.publish(self.topics.state(self.device_id), self.state(), retain=True)
        except EdgeAgentError as err:  # dropped meanwhile: on_connect sends it again
            log.debug("state not sent: %s", err)

    # ------------------------------------------------------------------ telemetry

    def _telemetry_loop(self) -> None:
        """Every ``telemetry_s``. With drift monitoring the windows carry telemetry, and this
        speaks only while the pipeline produces no frames (a dead camera: no samples, no windows)."""
        while not self._stop.wait(self.cfg.telemetry_s):
            if self._monitor is not None and self.pipeline.frames != (self._last or (0.0, 0))[1]:
                continue
            try:
                self.put_telemetry()
            except EdgeAgentError as err:  # the outbox cannot be written (disk): next period
                log.warning("telemetry not queued: %s", err)
            except Exception:  # a bug: logged whole; the loop goes on
                log.exception("telemetry failed")

    def _since_last(self) -> tuple[PipelineStats, float, int, int, int]:
        """The pipeline's counters now, and (seconds, frames, dropped, errors) since the last telemetry."""
        with self._last_lock:  # the telemetry thread and the monitor's
            s = self.pipeline.stats()
            now = time.monotonic()
            last = self._last or (now - s.uptime_s, 0, 0, 0)
            self._last = (now, s.frames, s.dropped, s.errors)
        return (
            s,
            max(0.0, now - last[0]),
            max(0, s.frames - last[1]),
            max(0, s.dropped - last[2]),
            max(0, s.errors - last[3]),
        )

    def _send_telemetry(self, payload: bytes) -> None:
        self.outbox.put(self.topics.telemetry(self.device_id), payload, "telemetry")
        self.pump.kick()

    def put_telemetry(self) -> None:
        s, period, frames, dropped, errors = self._since_last()
        payload = telemetry_payload(
            ts=self.clock(),
            period_s=period,
            frames=frames,
            fps=s.fps,
            latency_p50_ms=s.latency_p50_ms,
            latency_p95_ms=s.latency_p95_ms,
            dropped=dropped,
            errors=errors,
            model=s.model,
            version=s.version,
            spool=self._spool(),
        )
        self._send_telemetry(payload)

    def attach_spool_counters(self, counters: Callable[[], dict[str, int]] | None) -> None:
        """The frame collection's counters, carried by every telemetry message (``spool``)."""
        self._spool_counters = counters

    def _spool(self) -> dict[str, int] | None:
        counters = self._spool_counters
        if counters is None:
            return None
        try:
            return counters()
        except EdgeAgentError as err:  # the spool's database cannot be read now: sent without
            log.warning("telemetry without the spool counters: %s", err)
            return None

    def attach_sampling(self, control: SamplingControl | None) -> None:
        """The collector behind the fleet's ``sampling`` and ``capture`` jobs (None: sampling off,
        those jobs are REJECTED ``unsupported_action``)."""
        self.jobs.sampling = control

    def attach_monitor(self, monitor: DriftMonitor) -> None:
        """Telemetry per drift window and the drift and decay alerts, through the outbox."""
        self._monitor = monitor
        monitor.on_window.append(self.put_window)
        monitor.on_alert.append(self.put_alert)

    def put_window(self, report: WindowReport) -> None:
        """One telemetry message for a finished drift window (on the monitor's thread); the
        builder keeps the scores nearest their thresholds when there are too many."""
        _s, _period, _frames, dropped, errors = self._since_last()
        w, verdict = report.summary, report.verdict
        payload = telemetry_payload(
            ts=self.clock(),
            period_s=max(0.0, w.end_ts - w.start_ts),
            frames=w.frames,
            fps=w.fps,
            latency_p50_ms=w.latency_p50_ms,
            latency_p95_ms=w.latency_p95_ms,
            dropped=dropped,
            errors=errors,
            model=report.model,
            version=report.version,
            window={"index": w.index, "start_ts": w.start_ts, "end_ts": w.end_ts, "samples": w.samples},
            confidence=w.means.get("confidence"),
            drift=None
            if verdict is None
            else {f"{sc.metric}:{sc.score}": [sc.value, sc.threshold] for sc in verdict.scores},
            drifted=list(verdict.drifted) if verdict is not None else None,
            reference=report.reference,
            spool=self._spool(),
        )
        self._send_telemetry(payload)

    def put_alert(self, alert: Alert) -> None:
        """A drift or decay alert (raised or cleared), kept in the outbox until the broker has it."""
        payload = alert_payload(
            ts=self.clock(),
            kind=alert.kind,
            message=alert.message(),
            model=alert.model,
            version=alert.version,
            metric=alert.metric,
            score=alert.score,
            value=alert.value,
            threshold=alert.threshold,
            state=alert.state,
            windows=list(alert.windows),
            start_ts=alert.start_ts,
            end_ts=alert.end_ts,
            frames=list(alert.frames),
            reference=alert.reference,
        )
        self.outbox.put(self.topics.alerts(self.device_id), payload, "alert")
        self.pump.kick()

    # ------------------------------------------------------------------ detection events (a sink)

    def write(self, frame: Frame, result: Result, model: Any) -> None:
        rate = self.cfg.events_per_min
        if rate <= 0 or not result.detections or not self.link.connected:
            return
        now = time.monotonic()
        self._event_tokens = min(rate / 60.0 * 10, self._event_tokens + (now - self._event_t) * rate / 60.0)
        self._event_t = now
        if self._event_tokens < 1.0:
            return
        self._event_tokens -= 1.0
        payload = event_payload(
            ts=self.clock(),
            frame=frame.index,
            kind=result.kind,
            detections=result.detections,
            model=getattr(model, "name", None),
            version=getattr(model, "version", None),
        )
        try:
            self.link.publish(self.topics.events(self.device_id), payload, qos=0)
            self.events_sent += 1
        except EdgeAgentError as err:
            log.debug("event not sent: %s", err)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "group": self.group,
            "broker": self.cfg.url,
            "connected": self.link.connected,
            "outbox_pending": self.outbox.pending(),
            "outbox_dropped": self.outbox.dropped,
            "jobs_received": self.jobs.received,
            "jobs_rejected": self.jobs.rejected,
        }


__all__ = ["FleetChannel", "default_device_id"]
