"""The agent's ``/metrics``: an ``AgentMetrics`` snapshot of the running daemon, served by
``monitoring.prometheus.MetricsServer`` on its own read-only listener (``--metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import parse_metrics_address
from monitoring.prometheus import AgentMetrics, HistogramSnapshot, MetricsServer

if TYPE_CHECKING:
    from agent.daemon import Daemon


def snapshot(daemon: Daemon) -> AgentMetrics:
    """The figures of ``daemon`` now (called at each scrape, on the listener's thread)."""
    assert daemon.pipeline is not None and daemon.handle is not None
    s = daemon.pipeline.stats()
    model = daemon.handle.current
    monitor = daemon.monitor
    last = monitor.last if monitor is not None else None
    return AgentMetrics(
        model=model.name,
        version=model.version,
        sha256=model.sha256,
        runtime=str(getattr(getattr(model, "runtime", None), "kind", "")),
        uptime_s=s.uptime_s,
        frames=s.frames,
        errors=s.errors,
        dropped=s.dropped,
        captured=s.captured,
        sink_errors=s.sink_errors,
        reconnects=s.reconnects,
        fps=s.fps,
        latency=monitor.latency.snapshot() if monitor is not None else HistogramSnapshot.empty(),
        confidence=None if last is None else last.summary.means.get("confidence"),
        drift=monitor.drift_scores() if monitor is not None else {},
        alerts_active={key: 1 for key in monitor.active} if monitor is not None else {},
        updates=dict(daemon.update_outcomes),
        samples=monitor.samples if monitor is not None else 0,
        samples_dropped=monitor.samples_dropped if monitor is not None else 0,
        windows=monitor.windows if monitor is not None else 0,
        store_failures=monitor.store_failures if monitor is not None else 0,
        failures=(
            {
                "store": monitor.store_failures,
                "listener": monitor.listener_failures,
                "internal": monitor.failures,
            }
            if monitor is not None
            else {}
        ),
        collection=daemon.collection.metrics() if daemon.collection is not None else None,
    )


def metrics_server(daemon: Daemon) -> MetricsServer:
    assert daemon.config.monitoring.metrics is not None
    address = parse_metrics_address(daemon.config.monitoring.metrics, "[monitoring] metrics")
    return MetricsServer(address, lambda: snapshot(daemon))
