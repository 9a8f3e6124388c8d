"""``UpdateJob``: one update, whatever its origin, as it is persisted and reported.

A job is created by whoever asks for a version (the drop-folder watcher, the control API,
and next the MQTT job channel), persisted in ``update-state.json`` with status ``QUEUED``
before anyone is told it was accepted, and run by the ``ModelManager`` through the
``UpdateMachine``. Its fields are what a status report needs, whatever the origin:

    job_id    unique; MQTT jobs bring their own, local ones are ``<origin>-<time>-<random>``
    action    deploy (a bundle from ``source``) | activate (a stored ``version``) | rollback
    origin    drop-folder | control | mqtt | restart
    source    the candidate's path (a drop) or, for MQTT, the manifest URL
    version   the stored version an ``activate`` names
    force     a manual override of the pin / downgrade / release-counter rules (logged)
    manifest_sha256   a remote deploy: the sha256 of the manifest at ``source`` (signed job)
    expires_at        a signed job's expiry (Unix seconds): a job still queued then is refused
    release_counter   a remote deploy: the manifest's release counter the job announced
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ACTIONS = ("deploy", "activate", "rollback")
ORIGIN_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")  # drop-folder | control | mqtt | restart | ...


def typed(data: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    if key not in data:
        raise ValueError(f"missing field {key!r}")
    value = data[key]
    if kind is int:
        return as_int(value, key)
    if not isinstance(value, kind):
        raise ValueError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class VersionRef:
    """A model version as the state file names it."""

    name: str
    version: int
    sha256: str
    path: str = ""
    release_counter: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "path": self.path,
            "release_counter": self.release_counter,
        }

    @classmethod
    def from_json(cls, data: Any) -> VersionRef | None:
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object or null, got {type(data).__name__}")
        rc = data.get("release_counter")
        return cls(
            name=typed(data, "name", str),
            version=typed(data, "version", int),
            sha256=typed(data, "sha256", str),
            path=str(data.get("path", "")),
            release_counter=None if rc is None else as_int(rc, "release_counter"),
        )


def new_job_id(origin: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{origin}-{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class UpdateJob:
    job_id: str
    action: str
    origin: str
    created_at: float
    source: str | None = None
    version: VersionRef | None = None
    force: bool = False
    manifest_sha256: str | None = None
    release_counter: int | None = None
    expires_at: float | None = None

    @property
    def remote(self) -> bool:
        """A deploy whose bundle is downloaded from ``source`` (a URL), not read from a path."""
        return self.action == "deploy" and self.manifest_sha256 is not None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"job action {self.action!r}: use one of {', '.join(ACTIONS)}")
        if not ORIGIN_RE.fullmatch(self.origin):
            raise ValueError(f"job origin {self.origin!r}: use a short lower-case name such as drop-folder")
        if self.action == "deploy" and not self.source:
            raise ValueError("a deploy job needs a source")
        if self.action == "activate" and self.version is None:
            raise ValueError("an activate job needs a version")

    def describe(self) -> str:
        what = {
            "deploy": f"deploy {self.source}",
            "activate": f"activate v{self.version.version if self.version else '?'}",
            "rollback": "rollback",
        }[self.action]
        return f"{what} ({self.origin}{', forced' if self.force else ''})"

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "action": self.action,
            "origin": self.origin,
            "created_at": self.created_at,
            "source": self.source,
            "version": None if self.version is None else self.version.to_json(),
            "force": self.force,
            "manifest_sha256": self.manifest_sha256,
            "release_counter": self.release_counter,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> UpdateJob:
        """Parse a persisted job; ``ValueError`` names the field when it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("job: expected an object")
        job_id, action, origin = data.get("job_id"), data.get("action"), data.get("origin")
        for key, value in (("job_id", job_id), ("action", action), ("origin", origin)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"job.{key}: expected a non-empty string, got {value!r}")
        created = data.get("created_at", 0.0)
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise ValueError(f"job.created_at: expected a number, got {created!r}")
        source = data.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"job.source: expected a string or null, got {source!r}")
        force = data.get("force", False)
        if not isinstance(force, bool):
            raise ValueError(f"job.force: expected true or false, got {force!r}")
        msha = data.get("manifest_sha256")
        if msha is not None and not (isinstance(msha, str) and re.fullmatch(r"[0-9a-f]{64}", msha)):
            raise ValueError(f"job.manifest_sha256: expected 64 hex digits or null, got {msha!r}")
        rc = data.get("release_counter")
        exp = data.get("expires_at")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
            raise ValueError(f"job.expires_at: expected a number or null, got {exp!r}")
        return cls(
            job_id=str(job_id),
            action=str(action),
            origin=str(origin),
            created_at=float(created),
            source=source,
            version=VersionRef.from_json(data.get("version")),
            force=force,
            manifest_sha256=msha,
            release_counter=None if rc is None else as_int(rc, "job.release_counter"),
            expires_at=None if exp is None else float(exp),
        )


__all__ = ["ACTIONS", "ORIGIN_RE", "UpdateJob", "VersionRef", "as_int", "new_job_id", "typed"]
