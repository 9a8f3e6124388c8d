"""``DaemonController``: the control API's view of a running agent (pipeline + model manager)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.control import ControlServer, RequestError
from agent.handle import ModelHandle
from agent.manager import ModelManager
from agent.pipeline import Pipeline

log = logging.getLogger(__name__)

NO_COLLECTION = (
    "this agent keeps no frames: sampling is off (set [sampling] strategies or [upload] url, "
    "or run with --upload URL)"
)
NO_STORE = "this agent runs without a model store: start it with --state-dir to manage versions"


class DaemonController:
    """Implements ``agent.control.Controller`` over the pipeline and (when there is a store) the manager."""

    def __init__(
        self,
        pipeline: Pipeline,
        handle: ModelHandle,
        manager: ModelManager | None,
        *,
        stale_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.handle = handle
        self.manager = manager
        self.stale_after = stale_after
        self.clock = clock
        self.fleet: Any = None  # the FleetChannel, when the agent is on a broker
        self.monitor: Any = None  # the DriftMonitor, when monitoring is on
        self.collection: Any = None  # the agent.collection.Collection, when sampling is on

    def _manager(self) -> ModelManager:
        if self.manager is None:
            raise RequestError(NO_STORE, 409)
        return self.manager

    def healthy(self) -> bool:
        """The inference loop is alive and a loaded model serves."""
        if self.manager is not None and self.manager.healthy() is not None:
            return False
        return self.clock() - self.pipeline.heartbeat < self.stale_after

    def status(self) -> dict[str, Any]:
        s = self.pipeline.stats()
        model = self.handle.current
        runtime = getattr(model, "runtime", None)  # NoModel has none
        out: dict[str, Any] = {
            "model": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "runtime": getattr(runtime, "version", None),  # "onnxruntime 1.22.0" | "ai-edge-litert 1.3.0"
            "provider": getattr(runtime, "provider", None),  # CPUExecutionProvider, xnnpack, builtin, ...
            "phase": "IDLE",
            "frames": s.frames,
            "dropped": s.dropped,
            "errors": s.errors,
            "fps": round(s.fps, 2),
            "latency_p50_ms": round(s.latency_p50_ms, 3),
            "latency_p95_ms": round(s.latency_p95_ms, 3),
            "uptime_s": round(s.uptime_s, 1),
            "source": s.source_status,
            "previous": None,
            "healthy": self.healthy(),
        }
        if self.manager is not None:
            out.update(self.manager.status())
        if self.fleet is not None:
            out["fleet"] = self.fleet.status()
        if self.monitor is not None:
            out["drift"] = self.monitor.status()
        if self.collection is not None:
            out.update(self.collection.status())
        return out

    def models(self) -> list[dict[str, Any]]:
        if self.manager is None:
            m = self.handle.current
            return [{"name": m.name, "version": m.version, "sha256": m.sha256, "current": True}]
        return self.manager.models()

    def activate(self, version: int, name: str | None = None, force: bool = False) -> dict[str, Any]:
        return self._manager().activate(version, name, force=force)

    def rollback(self, force: bool = False) -> dict[str, Any]:
        return self._manager().rollback(force=force)

    def pin(self, version: int | None) -> dict[str, Any]:
        return self._manager().pin(version)

    def unpin(self) -> dict[str, Any]:
        return self._manager().unpin()

    def hold(self, hold: bool) -> dict[str, Any]:
        return self._manager().set_hold(hold)

    def spool(self, action: str) -> dict[str, Any]:
        """``status``, ``flush`` (upload now) or ``purge`` (delete every spooled frame)."""
        c = self.collection
        if c is None:
            raise RequestError(NO_COLLECTION, 409)
        if action == "flush":
            if c.uploader is None:
                raise RequestError("no [upload] url is set: the frames stay in the spool", 409)
            unparked = c.spool.unpark()
            c.uploader.flush()
            log.info("control: spool flush requested (%d parked item(s) offered again)", unparked)
            note = f"; {unparked} parked frame(s) offered again" if unparked else ""
            return {"message": f"uploading now, ignoring the schedule and any back-off{note}", **c.status()}
        if action == "purge":
            n = c.spool.purge()
            log.warning("control: spool purged: %d item(s) deleted", n)
            return {"message": f"{n} spooled frame(s) deleted", "purged": n, **c.status()}
        return dict(c.status())


class ControlService:
    """The control server as a daemon service. A configured API that cannot listen fails the
    start (before ``READY=1``, so systemd restarts with back-off): ``control = "off"`` is the
    way to run without one."""

    def __init__(self, address: str, controller: DaemonController, token: str | None = None) -> None:
        self.address = address
        self.controller = controller
        self.token = token
        self.server: ControlServer | None = None

    def start(self) -> None:
        self.server = ControlServer(self.address, self.controller, token=self.token).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
