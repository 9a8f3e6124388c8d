"""The agent's frame collection (issue 10): ``[sampling]``, ``[spool]``, ``[upload]`` made into parts.

``Collection.build`` opens ``<state>/spool/`` (repairing it), picks the sampling policy (the
fleet's, saved in ``<state>/sampling-policy.json``, over the config's), and makes the
``Collector`` (a pipeline sink) and, with an ``[upload] url``, the ``Uploader``. The daemon
adds the collector to its sinks and ``services`` to its services; ``status`` is what
``/status`` and ``edge-agent spool status`` show of a running agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from inference.errors import ConfigError
from monitoring.collector import QUOTA_FILE, Collector, PolicyFile
from monitoring.prometheus import CollectionMetrics
from monitoring.spool import Spool
from monitoring.upload_target import make_target
from monitoring.uploader import Uploader, describe_target

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"


def spool_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SPOOL_DIR


def open_spool(config: Config, state_dir: Path) -> Spool:
    return Spool(spool_dir(state_dir), max_bytes=config.spool.max_bytes, max_items=config.spool.max_items)


def make_uploader(config: Config, spool: Spool, device: str) -> Uploader:
    """The uploader ``[upload]`` describes (``url`` must be set)."""
    u = config.upload
    assert u.url is not None
    target = make_target(
        u.url,
        method=u.method,
        endpoint=u.endpoint,
        region=u.region,
        credentials_file=u.credentials_file,
        token_file=u.token_file,
        timeout_s=u.timeout_s,
    )
    schedule = None
    if u.schedule != "always":
        from ota.update_window import UpdateWindow

        schedule = UpdateWindow.parse(u.schedule)
    return Uploader(
        spool,
        target,
        device=device,
        schedule=schedule,
        concurrency=u.concurrency,
        retry_min_s=u.retry_min_s,
        retry_max_s=u.retry_max_s,
    )


@dataclass
class Collection:
    spool: Spool
    collector: Collector
    uploader: Uploader | None
    target: str | None  # the upload target, without secrets

    @classmethod
    def build(
        cls,
        config: Config,
        state_dir: Path,
        *,
        device: str,
        lossless: bool,
        drifted: Callable[[], bool] | None = None,
    ) -> Collection:
        spool = open_spool(config, state_dir)
        pfile = PolicyFile(state_dir)
        policy, origin = config.sampling, "config"
        try:
            saved = pfile.load()
        except ConfigError as err:  # a bad file never stops the camera: set aside, the config's policy
            bad = pfile.path.with_name(pfile.path.name + ".bad")
            try:
                pfile.path.replace(bad)
            except OSError as exc:
                log.error("%s; and it could not be moved aside: %s", err, exc.strerror)
            else:
                log.error("%s; moved to %s, the config's [sampling] is in force", err, bad)
            saved = None
        if saved is not None:
            policy, job = saved
            origin = f"fleet job {job}"
            log.warning(
                "sampling policy from fleet job %s (%s) is in force over [sampling] in the config; "
                "delete %s to go back to the config",
                job,
                ", ".join(s.name for s in policy.strategies),
                pfile.path,
            )
        uploader = make_uploader(config, spool, device) if config.upload.url else None
        collector = Collector(
            policy,
            spool,
            device=device,
            lossless=lossless,
            drifted=drifted,
            on_spooled=uploader.wake if uploader is not None else None,
            policy_file=pfile,
            policy_origin=origin,
            quota_file=Path(state_dir) / QUOTA_FILE,
        )
        target = describe_target(uploader.target) if uploader is not None else None
        log.info(
            "collecting frames (%s) into %s%s",
            ", ".join(s.name for s in policy.strategies),
            spool.root,
            f", uploading to {target}" if target else "; no [upload] url: they stay in the spool",
        )
        return cls(spool, collector, uploader, target)

    @property
    def services(self) -> list[Any]:
        """Start order: the uploader, then the collector (stopped first: it spools what is queued)."""
        return [s for s in (self.uploader, self.collector) if s is not None]

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sampling": self.collector.status(), "spool": self.spool.status()}
        if self.uploader is not None:
            out["upload"] = self.uploader.status()
        return out

    def metrics(self) -> CollectionMetrics:
        """The figures of ``/metrics`` (one spool query)."""
        c, s = self.collector, self.spool.status()
        up = self.uploader
        return CollectionMetrics(
            kept=dict(c.kept_by),
            duplicates=c.duplicates,
            queue_dropped=c.queue_dropped,
            spool_items=s["items"],
            spool_bytes=s["bytes"],
            spool_pending=s["pending"],
            spool_parked=s["parked"],
            spool_dropped=s["dropped"],
            spool_refused=s["refused"],
            spool_quarantined=s["quarantined"],
            uploaded=up.uploaded if up is not None else 0,
            uploaded_bytes=up.uploaded_bytes if up is not None else 0,
            upload_failures=dict(up.failures) if up is not None else {},
            upload_paused=int(up is not None and up.status()["state"] not in ("idle", "uploading")),
        )

    def telemetry(self) -> dict[str, int]:
        """The counters a telemetry message carries (``spool`` in docs/protocol.md): the same
        figures as ``/metrics``."""
        m = self.metrics()
        return {
            "kept": sum(m.kept.values()),
            "duplicates": m.duplicates,
            "pending": m.spool_pending,
            "bytes": m.spool_bytes,
            "parked": m.spool_parked,
            "dropped": m.spool_dropped,
            "refused": m.spool_refused,
            "quarantined": m.spool_quarantined,
            "uploaded": m.uploaded,
        }

    def close(self) -> None:
        """After the services stopped: the upload target's connections, then the spool."""
        if self.uploader is not None:
            self.uploader.target.close()
        self.spool.close()
