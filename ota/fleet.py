"""``FleetClient``: the fleet side of the MQTT protocol (DESIGN §6): sign and publish jobs, watch the
devices, drive a staged rollout.

    fleet = FleetClient(MqttSettings(url, client_id="fleet-ops"), key=load_private_key(path))
    fleet.watch(); fleet.connect()              # retained states + job statuses -> fleet.views()
    job_id = fleet.deploy(devices=[...], manifest_url=..., manifest_sha256=...)
    job_id = fleet.sampling(group="lobby", policy={"dedup_bits": 6, "strategies": [...]})
    job_id = fleet.capture(devices=["cam-1"], frames=20)
    result = fleet.run_rollout(plan, DeployJob(job_id, url, sha256), on_update=print, journal=path)

Jobs go to a device's notify topic, one signed job per device (``target: {"devices": [d]}``: a
copy stays small whatever the fleet's size, and a device re-reading it finds only itself), or
once to a group's notify topic (every member at once). QoS 1; a publish counts once the broker
acknowledged it.

The view of the fleet: a device's retained ``state`` (online, group, model, version, phase) and
the statuses it publishes for jobs. Statuses are de-duplicated by the device's ``seq``: a
duplicate or late message never moves a job's status backwards, and a terminal status is never
replaced by a non-terminal one. Group membership is what the devices' retained states say
(``"group": G``); a device offline since before the fleet connected shows only ``{"online": false}``
and must be named with ``devices=``.

A rollout's state is what the devices reported plus, with a ``journal`` (JSON lines), what was
signed, sent and rolled back: a restarted ``run_rollout`` with the same job id and journal sends
nothing twice (a device refuses a job id it has seen: ``replay``), re-publishing a job whose
acknowledgement was lost byte for byte (the same nonce), so a device sees a duplicate, not a
replay. The fleet's MQTT session is persistent (``clean_start=False``): statuses published
while the command was down arrive when it reconnects with the same client id.

Errors: ``ConfigError`` (bad arguments, a journal of another job), ``TransientError`` (the
broker is unreachable or did not acknowledge), ``Rejected`` never leaves this module (a job
this module would build that a device would refuse is a ``ConfigError``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitoring.sampling_policy import parse_policy
from ota.errors import ConfigError, EdgeAgentError, Rejected, TransientError
from ota.mqtt_link import MqttLink, MqttSettings
from ota.protocol import DEFAULT_PREFIX, Topics, build_job, new_nonce, parse_job, parse_state, parse_status
from ota.rollout import DeviceJobStatus, Rollout, RolloutAction, RolloutPlan
from ota.trust import canonical_json, sign_object
from ota.update_events import JobStatus

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_S = 86400
JOB_ACTIONS = ("deploy", "rollback", "pin", "sampling", "capture")
MAX_ID = 64


def new_job_id(action: str, now: float) -> str:
    """``<action>-<UTC yyyymmddThhmmss>-<6 hex>``: unique, sortable, valid as a topic level."""
    return f"{action}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"


def rollback_job_id(job_id: str) -> str:
    """The id of the rollback a rollout sends on abort (derived: the same after a restart)."""
    return f"{job_id[: MAX_ID - 9]}-rollback"


# --------------------------------------------------------------------------- jobs


def make_job(
    key: Ed25519PrivateKey,
    *,
    action: str = "deploy",
    job_id: str | None = None,
    devices: Sequence[str] | None = None,
    group: str | None = None,
    manifest_url: str | None = None,
    manifest_sha256: str | None = None,
    release_counter: int | None = None,
    version: int | None = None,
    sampling: Mapping[str, Any] | None = None,
    frames: int | None = None,
    expires_in_s: float = DEFAULT_EXPIRES_S,
    now: float,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A signed job (a dict ready for ``canonical_json``); ConfigError when a device would refuse it.

    ``sampling`` (a ``[sampling]`` table) is checked by the devices' own parser
    (``monitoring.sampling_policy.parse_policy``) before anything is signed: its ConfigError
    names the key (``sampling.strategies #1 ...``)."""
    if action not in JOB_ACTIONS:
        raise ConfigError(f"action {action!r}: one of {', '.join(JOB_ACTIONS)}")
    if (devices is None) == (group is None):
        raise ConfigError("a job targets either devices or a group (exactly one)")
    if devices is not None and not devices:
        raise ConfigError("a job needs at least one device")
    if action == "deploy" and (manifest_url is None or manifest_sha256 is None):
        raise ConfigError("a deploy job needs the manifest URL and its sha256")
    if action != "deploy" and (manifest_url or manifest_sha256 or release_counter is not None):
        raise ConfigError(f"a {action} job takes no manifest")
    if action != "pin" and version is not None:
        raise ConfigError("only a pin job names a version")
    if (action == "sampling") != (sampling is not None):
        raise ConfigError("a sampling job, and only a sampling job, carries a policy")
    if (action == "capture") != (frames is not None):
        raise ConfigError("a capture job, and only a capture job, gives a number of frames")
    if sampling is not None:
        parse_policy(sampling, "sampling")
    if not expires_in_s > 0:
        raise ConfigError(f"expires in {expires_in_s} s: give a positive duration")
    issued = int(now)
    try:
        body = build_job(
            job_id=job_id or new_job_id(action, now),
            action=action,
            devices=None if devices is None else list(dict.fromkeys(devices)),
            group=group,
            issued_at=issued,
            expires_at=issued + max(1, int(expires_in_s)),
            nonce=nonce or new_nonce(),
            manifest_url=manifest_url,
            manifest_sha256=manifest_sha256,
            release_counter=release_counter,
            version=version,
            sampling=sampling,
            frames=frames,
        )
        signed = sign_object(body, key)
        parse_job(canonical_json(signed))  # what a device will check first: fail here, not there
    except Rejected as err:
        raise ConfigError(f"a device would refuse this job ({err.reason}): {err}") from err
    return signed


@dataclass(frozen=True)
class DeployJob:
    """What a rollout deploys; each device gets its own signed copy when its wave comes."""

    job_id: str
    manifest_url: str
    manifest_sha256: str
    release_counter: int | None = None
    expires_in_s: float = DEFAULT_EXPIRES_S


# --------------------------------------------------------------------------- the view


@dataclass(frozen=True)
class DeviceView:
    """One device as the fleet sees it: its retained state and the latest job status it sent."""

    device: str
    online: bool | None = None  # None: no retained state seen
    group: str | None = None
    model: str | None = None
    version: int | None = None
    phase: str | None = None
    job_id: str | None = None
    status: JobStatus | None = None
    step: str | None = None
    detail: str | None = None
    reason: str | None = None
    last_seen: float | None = None  # the device's own ``ts`` of its newest state or status
    seq: int | None = None  # of the status shown

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "online": self.online,
            "group": self.group,
            "model": self.model,
            "version": self.version,
            "phase": self.phase,
            "job_id": self.job_id,
            "status": None if self.status is None else self.status.value,
            "step": self.step,
            "detail": self.detail,
            "reason": self.reason,
            "last_seen": self.last_seen,
        }


def newer_status(old: DeviceJobStatus | None, new: DeviceJobStatus) -> bool:
    """Whether ``new`` replaces ``old`` for the same device and job: never backwards.

    Ignored: a lower or equal ``seq`` (a QoS 1 duplicate or a late message), anything after a
    terminal status (a job ends once), and ``REJECTED`` after the device accepted the job: that
    refusal is about another message claiming the job's id (a replay, or a forged copy whose
    signature failed), not about the job the device runs."""
    if old is None:
        return True
    if old.seq is not None and new.seq is not None and new.seq <= old.seq:
        return False
    if old.terminal:
        return False
    return not (new.status is JobStatus.REJECTED and old.status is not JobStatus.REJECTED)


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


# --------------------------------------------------------------------------- the journal


@dataclass
class JournalState:
    """What a rollout journal says happened."""

    header: dict[str, Any] | None = None
    signed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, device) -> job
    sent: dict[str, float] = field(default_factory=dict)
    rolled_back: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, DeviceJobStatus] = field(default_factory=dict)


class RolloutJournal:
    """One rollout as JSON lines, appended and fsynced: ``start``, ``signed``, ``sent``, ``status``.

    A torn last line (a crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> JournalState:
        state = JournalState()
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return state
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the rollout journal ({exc.strerror or exc})"
            ) from exc
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                self._apply(state, rec)
            except (ValueError, KeyError, TypeError) as exc:
                if i == len(lines) - 1:
                    log.warning("%s: ignoring a torn last line (%s)", self.path, exc)
                    continue
                raise ConfigError(f"{self.path}:{i + 1}: not a rollout journal line ({exc})") from exc
        return state

    @staticmethod
    def _apply(state: JournalState, rec: dict[str, Any]) -> None:
        event = rec["event"]
        if event == "start":
            state.header = rec
        elif event == "signed":
            state.signed[(str(rec["kind"]), str(rec["device"]))] = dict(rec["job"])
        elif event == "sent" and rec["kind"] == "deploy":
            state.sent[str(rec["device"])] = float(rec["ts"])
        elif event == "sent" and rec["kind"] == "rollback":
            state.rolled_back[str(rec["device"])] = float(rec["ts"])
        elif event == "status":
            state.statuses[str(rec["device"])] = DeviceJobStatus(
                JobStatus(rec["status"]),
                step=rec.get("step"),
                detail=rec.get("detail"),
                reason=rec.get("reason"),
                seq=rec.get("seq"),
                ts=rec.get("ts"),
            )
        else:
            raise ValueError(f"unknown event {event!r}")

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, sort_keys=True, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise TransientError(
                f"{self.path}: cannot write the rollout journal ({exc.strerror or exc})"
            ) from exc


def _status_fields(s: DeviceJobStatus) -> dict[str, Any]:
    return {"status": s.status.value, "step": s.step, "detail": s.detail, "reason": s.reason, "seq": s.seq}


# --------------------------------------------------------------------------- rollout result


@dataclass(frozen=True)
class RolloutResult:
    """How a rollout ended."""

    job_id: str
    devices: tuple[str, ...]
    statuses: Mapping[str, DeviceJobStatus]
    complete: bool
    aborted: bool
    timed_out: bool
    reason: str | None
    rolled_back: tuple[str, ...]

    @property
    def succeeded(self) -> bool:
        """Every device SUCCEEDED."""
        return self.complete and all(
            d in self.statuses and self.statuses[d].status is JobStatus.SUCCEEDED for d in self.devices
        )


OnUpdate = Callable[[RolloutAction, Mapping[str, DeviceJobStatus]], None]
LinkFactory = Callable[[MqttSettings], MqttLink]


# --------------------------------------------------------------------------- the client


class FleetClient:
    """Sign and publish jobs; watch states and statuses; drive rollouts (see the module docstring).

    Handlers run on the link's thread and only update the table under a lock; every other
    method runs on the caller's thread."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        prefix: str = DEFAULT_PREFIX,
        key: Ed25519PrivateKey | None = None,
        clock: Callable[[], float] = time.time,
        link_factory: LinkFactory = MqttLink,
        nonce_factory: Callable[[], str] = new_nonce,
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topics = Topics(prefix)
        self.key = key
        self.clock = clock
        self._nonce = nonce_factory
        self._publish_timeout = publish_timeout_s
        self._link = link_factory(settings)
        self._cond = threading.Condition(threading.RLock())
        self._devices: dict[str, DeviceView] = {}
        self._jobs: dict[str, dict[str, DeviceJobStatus]] = {}
        self._changes = 0
        self._watching = False
        # ``_fleet`` is no device id (ids start with a letter or digit); client ids are unique
        self._sync_topic = f"{prefix}/_fleet/{re.sub(r'[^A-Za-z0-9._-]', '_', settings.client_id)}/sync"
        self._sync_seen: set[bytes] = set()
        self._sync_count = 0
        self.bad_messages = 0  # payloads that did not parse (logged)
        self.duplicates = 0  # statuses ignored as duplicates or late

    # -- connection ------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Connect (TransientError when the broker does not answer in time); when watching,
        return once the retained states have arrived (see ``sync``)."""
        self._link.start()
        if not self._link.wait_connected(timeout):
            self._link.stop()
            raise TransientError(f"cannot reach the MQTT broker at {self.settings.url} within {timeout:g} s")
        if self._watching and not self.sync(timeout):
            log.warning("fleet: the broker did not echo the sync marker; the device table may be incomplete")

    def close(self) -> None:
        self._link.stop()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._link.connected

    def watch(self) -> None:
        """Follow ``{p}/+/state`` (retained) and ``{p}/+/jobs/+/status``; idempotent."""
        if self._watching:
            return
        self._watching = True
        self._link.subscribe(self.topics.all_state(), self._on_state, qos=1)
        self._link.subscribe(self.topics.all_status(), self._on_status, qos=1)
        self._link.subscribe(self._sync_topic, self._on_sync, qos=1)
        if self._link.connected:
            self.sync()

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until a marker published now comes back: the broker has then delivered what it
        held for the subscriptions made before (the retained states). False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self._sync_count += 1
            token = str(self._sync_count).encode()
            with contextlib.suppress(TransientError):  # not connected (yet): try again
                self._link.publish(self._sync_topic, token, qos=1)
            left = deadline - time.monotonic()
            if left <= 0:
                return False

            def arrived(t: bytes = token) -> bool:
                return t in self._sync_seen

            with self._cond:
                if self._cond.wait_for(arrived, min(left, 0.5)):
                    self._sync_seen.clear()
                    return True

    def _on_sync(self, _topic: str, payload: bytes) -> None:
        with self._cond:
            self._sync_seen.add(bytes(payload))
            self._cond.notify_all()

    # -- the table -------------------------------------------------------------------------

    def _on_state(self, topic: str, payload: bytes) -> None:
        device = self.topics.parse_state_topic(topic)
        if device is None:
            return
        if not payload:  # the retained state was cleared: the device is forgotten
            with self._cond:
                if device in self._devices:
                    self._devices[device] = DeviceView(device, **_job_part(self._devices[device]))
                    self._changed()
            return
        try:
            st = parse_state(payload)
        except EdgeAgentError as err:
            self._bad(topic, err)
            return
        if st.online and st.device != device:
            self._bad(topic, f"the state names device {st.device}")
            return
        with self._cond:
            old = self._devices.get(device) or DeviceView(device)
            if not st.online:
                new = replace(old, online=False)
            else:
                new = replace(
                    old,
                    online=True,
                    group=st.group,
                    model=st.model,
                    version=st.version,
                    phase=st.phase,
                    last_seen=_later(old.last_seen, st.ts),
                )
            self._devices[device] = new
            self._changed()

    def _on_status(self, topic: str, payload: bytes) -> None:
        where = self.topics.parse_status_topic(topic)
        if where is None:
            return
        device, job_id = where
        try:
            msg = parse_status(payload)
        except EdgeAgentError as err:
            self._bad(topic, err)
            return
        if msg.job_id != job_id:
            self._bad(topic, f"the payload names job {msg.job_id}")
            return
        new = DeviceJobStatus(
            JobStatus(msg.status),
            step=msg.step,
            detail=msg.detail,
            reason=msg.reason,
            seq=msg.seq,
            ts=msg.ts,
        )
        with self._cond:
            jobs = self._jobs.setdefault(job_id, {})
            if not newer_status(jobs.get(device), new):
                self.duplicates += 1
                self._cond.notify_all()
                return
            jobs[device] = new
            old = self._devices.get(device) or DeviceView(device)
            shows_newer_job = old.job_id != job_id and (
                old.seq is not None and new.seq is not None and new.seq < old.seq
            )
            view = replace(old, last_seen=_later(old.last_seen, msg.ts))
            if not shows_newer_job:
                view = replace(
                    view,
                    job_id=job_id,
                    status=new.status,
                    step=new.step,
                    detail=new.detail,
                    reason=new.reason,
                    seq=new.seq,
                )
                if new.status is JobStatus.SUCCEEDED and msg.model is not None:
                    view = replace(view, model=msg.model, version=msg.version)
            self._devices[device] = view
            self._changed()

    def _bad(self, topic: str, err: object) -> None:
        with self._cond:
            self.bad_messages += 1
            self._cond.notify_all()
        log.warning("fleet: ignoring a message on %s: %s", topic, err)

    def _changed(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    @property
    def changes(self) -> int:
        """A counter of table changes (to wait for the next one with ``wait_for``)."""
        with self._cond:
            return self._changes

    def views(self) -> dict[str, DeviceView]:
        """Every device seen, by id."""
        with self._cond:
            return dict(self._devices)

    def view(self, device: str) -> DeviceView | None:
        with self._cond:
            return self._devices.get(device)

    def job_statuses(self, job_id: str) -> dict[str, DeviceJobStatus]:
        """The latest status of each device that reported on ``job_id``."""
        with self._cond:
            return dict(self._jobs.get(job_id, {}))

    def members(self, group: str) -> list[str]:
        """The devices whose retained state names ``group`` (sorted)."""
        with self._cond:
            return sorted(d for d, v in self._devices.items() if v.group == group)

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (evaluated under the table's lock, after each change) is true."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # -- jobs ------------------------------------------------------------------------------

    def _key(self) -> Ed25519PrivateKey:
        if self.key is None:
            raise ConfigError("signing a job needs the fleet's private key (--key)")
        return self.key

    def make_job(self, **kwargs: Any) -> dict[str, Any]:
        """``make_job`` with this client's key, clock and nonces."""
        kwargs.setdefault("now", self.clock())
        kwargs.setdefault("nonce", self._nonce())
        return make_job(self._key(), **kwargs)

    def _publish(self, topic: str, payload: bytes) -> None:
        pub = self._link.publish(topic, payload, qos=1)
        if pub.wait(self._publish_timeout):
            return
        if pub.refused:
            raise ConfigError(
                f"the broker refused the job on {topic}: {pub.reason}; check its ACL for this client"
            )
        why = pub.reason or f"no acknowledgement in {self._publish_timeout:g} s"
        raise TransientError(f"the job on {topic} was not acknowledged: {why}")

    def _send(
        self, action: str, job_id: str | None, devices: Iterable[str] | None, group: str | None, **fields: Any
    ) -> str:
        job_id = job_id or new_job_id(action, self.clock())
        if (devices is None) == (group is None):
            raise ConfigError("give devices or a group (exactly one)")
        if group is not None:
            job = self.make_job(action=action, job_id=job_id, group=group, **fields)
            self._publish(self.topics.group_notify(group), canonical_json(job))
            return job_id
        targets = sorted(set(devices or ()))
        if not targets:
            raise ConfigError("give at least one device")
        for d in targets:
            job = self.make_job(action=action, job_id=job_id, devices=[d], **fields)
            self._publish(self.topics.device_notify(d), canonical_json(job))
        return job_id

    def deploy(
        self,
        job_id: str | None = None,
        *,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        manifest_url: str,
        manifest_sha256: str,
        release_counter: int | None = None,
        expires_in_s: float = DEFAULT_EXPIRES_S,
    ) -> str:
        """Publish a deploy job to each device (its own signed copy) or to a group; the job id."""
        return self._send(
            "deploy",
            job_id,
            devices,
            group,
            manifest_url=manifest_url,
            manifest_sha256=manifest_sha256,
            release_counter=release_counter,
            expires_in_s=expires_in_s,
        )

    def rollback(
        self,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        *,
        job_id: str | None = None,
        expires_in_s: float = DEFAULT_EXPIRES_S,
    ) -> str:
        """Ask devices (or a group) to go back to their previous version; the job id."""
        return self._send("rollback", job_id, devices, group, expires_in_s=expires_in_s)

    def pin(
        self,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        *,
        version: int | None = None,
        job_id: str | None = None,
        expires_in_s: float = DEFAULT_EXPIRES_S,
    ) -> str:
        """Pin devices (or a group) to ``version`` (default: the one serving); the job id."""
        return self._send("pin", job_id, devices, group, version=version, expires_in_s=expires_in_s)

    def sampling(
        self,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        *,
        policy: Mapping[str, Any],
        job_id: str | None = None,
        expires_in_s: float = DEFAULT_EXPIRES_S,
    ) -> str:
        """Set the sampling policy of devices (or a group) to ``policy``, a ``[sampling]`` table;
        the job id. ConfigError naming the key, before anything is signed, when the devices'
        parser would refuse it."""
        parse_policy(policy, "sampling")
        return self._send("sampling", job_id, devices, group, sampling=policy, expires_in_s=expires_in_s)

    def capture(
        self,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        *,
        frames: int,
        job_id: str | None = None,
        expires_in_s: float = DEFAULT_EXPIRES_S,
    ) -> str:
        """Ask devices (or a group) to keep their next ``frames`` frames (1-1000); the job id."""
        return self._send("capture", job_id, devices, group, frames=frames, expires_in_s=expires_in_s)

    def wait_jobs(self, job_id: str, devices: Sequence[str], timeout: float) -> dict[str, DeviceJobStatus]:
        """Wait up to ``timeout`` s until each of ``devices`` reported a terminal status on
        ``job_id`` (with none named, the whole ``timeout``); every status heard by then. Call
        ``watch()`` before the job is sent: statuses are not retained."""
        expected = set(devices)

        def done() -> bool:
            got = self._jobs.get(job_id, {})
            return bool(expected) and all(d in got and got[d].terminal for d in expected)

        self.wait_for(done, timeout)
        return self.job_statuses(job_id)

    # -- rollout ---------------------------------------------------------------------------

    def run_rollout(
        self,
        plan: RolloutPlan,
        job: DeployJob,
        *,
        on_update: OnUpdate | None = None,
        timeout: float | None = None,
        journal: Path | None = None,
        group: str | None = None,
    ) -> RolloutResult:
        """Drive ``Rollout(plan)`` on status changes and its timers until it is finished (or
        ``timeout`` seconds passed); rollbacks go out on abort when the plan asks for them.

        ``group``: the plan's devices are that group's members and the plan sends to all at
        once: one job goes to the group's topic (members offline with a persistent session get
        it when they return) instead of one per device."""
        self._key()
        if group is not None and (plan.waves is not None or plan.rate_per_min is not None):
            raise ConfigError("a rollout in waves or at a rate sends to each device, not to the group")
        self.watch()
        book = RolloutJournal(journal) if journal is not None else None
        past = book.load() if book is not None else JournalState()
        self._check_header(past.header, job, book)
        if book is not None and past.header is None:
            book.record(
                "start",
                job_id=job.job_id,
                manifest_url=job.manifest_url,
                manifest_sha256=job.manifest_sha256,
                release_counter=job.release_counter,
                devices=list(plan.devices),
                ts=self.clock(),
            )
        rollout = Rollout(plan, sent=past.sent, rolled_back=past.rolled_back)
        known = dict(past.statuses)
        signed = dict(past.signed)
        deadline = None if timeout is None else self.clock() + timeout
        last_report: tuple[RolloutAction, dict[str, DeviceJobStatus]] | None = None
        while True:
            with self._cond:
                seen = self._changes
                live = dict(self._jobs.get(job.job_id, {}))
            for d, s in sorted(live.items()):
                if d in rollout.plan.devices and newer_status(known.get(d), s):
                    known[d] = s
                    if book is not None:
                        book.record("status", device=d, ts=s.ts, **_status_fields(s))
            now = self.clock()
            action = rollout.next_action(known, now)
            if on_update is not None and (last_report is None or last_report != (action, known)):
                on_update(action, dict(known))
                last_report = (action, dict(known))
            try:
                if action.send and group is not None:
                    self._send_one("group", group, job, signed, book)
                    rollout.mark_sent(action.send, self.clock())
                    if book is not None:
                        for d in action.send:
                            book.record("sent", kind="deploy", device=d, ts=self.clock())
                for d in () if group is not None else action.send:
                    self._send_one("deploy", d, job, signed, book)
                    rollout.mark_sent([d], self.clock())
                for d in action.rollback:
                    self._send_one("rollback", d, job, signed, book)
                    rollout.mark_rolled_back([d], self.clock())
            except TransientError as err:
                log.warning("rollout %s: %s; trying again once the broker answers", job.job_id, err)
                self._link.wait_connected(5.0)
                continue
            if action.finished:
                return self._result(rollout, job, known, action, timed_out=False)
            if action.send or action.rollback:
                continue  # evaluate again at once: the next wave may be open already
            wake = min((t for t in (action.next_check_at, deadline) if t is not None), default=None)
            if deadline is not None and self.clock() >= deadline:
                return self._result(rollout, job, known, action, timed_out=True)

            def changed(n: int = seen) -> bool:
                return self._changes != n

            with self._cond:
                self._cond.wait_for(changed, None if wake is None else max(0.0, wake - self.clock()))

    @staticmethod
    def _check_header(header: Mapping[str, Any] | None, job: DeployJob, book: RolloutJournal | None) -> None:
        if header is None or book is None:
            return
        for k in ("job_id", "manifest_url", "manifest_sha256"):
            if header.get(k) != getattr(job, k):
                raise ConfigError(
                    f"{book.path} records job {header.get('job_id')} with {k} {header.get(k)!r}, "
                    f"not {getattr(job, k)!r}: give another --job-id (or --journal) for a new rollout"
                )

    def _send_one(
        self,
        kind: str,
        to: str,
        job: DeployJob,
        signed: dict[tuple[str, str], dict[str, Any]],
        book: RolloutJournal | None,
    ) -> None:
        """Publish ``kind`` (deploy | rollback to a device, or group: the deploy to a group);
        the same signed bytes if it was signed before (a lost acknowledgement), unless that
        copy is about to expire."""
        now = self.clock()
        payload = signed.get((kind, to))
        if payload is None or payload.get("expires_at", 0) <= now + 60:
            target: dict[str, Any] = {"group": to} if kind == "group" else {"devices": [to]}
            if kind == "rollback":
                payload = self.make_job(action="rollback", job_id=rollback_job_id(job.job_id), **target)
            else:
                payload = self.make_job(
                    action="deploy",
                    job_id=job.job_id,
                    manifest_url=job.manifest_url,
                    manifest_sha256=job.manifest_sha256,
                    release_counter=job.release_counter,
                    expires_in_s=job.expires_in_s,
                    **target,
                )
            signed[(kind, to)] = payload
            if book is not None:
                book.record("signed", kind=kind, device=to, job=payload)
        topic = self.topics.group_notify(to) if kind == "group" else self.topics.device_notify(to)
        self._publish(topic, canonical_json(payload))
        if book is not None and kind != "group":
            book.record("sent", kind=kind, device=to, ts=self.clock())

    def _result(
        self,
        rollout: Rollout,
        job: DeployJob,
        known: Mapping[str, DeviceJobStatus],
        action: RolloutAction,
        *,
        timed_out: bool,
    ) -> RolloutResult:
        reason = action.reason
        if timed_out and reason is None:
            c = action.counts
            reason = (
                f"timed out in wave {action.wave} of {action.waves}: {c.succeeded} succeeded, "
                f"{c.failed} failed, {c.in_progress} in progress, {c.total - c.started} not started"
            )
        return RolloutResult(
            job_id=job.job_id,
            devices=tuple(rollout.plan.devices),
            statuses=dict(known),
            complete=action.complete,
            aborted=action.aborted,
            timed_out=timed_out,
            reason=reason,
            rolled_back=tuple(sorted(rollout.rolled_back)),
        )


def _job_part(v: DeviceView) -> dict[str, Any]:
    return {
        "job_id": v.job_id,
        "status": v.status,
        "step": v.step,
        "detail": v.detail,
        "reason": v.reason,
        "seq": v.seq,
        "last_seen": v.last_seen,
    }


__all__ = [
    "DEFAULT_EXPIRES_S",
    "DEFAULT_PREFIX",
    "JOB_ACTIONS",
    "DeployJob",
    "DeviceView",
    "FleetClient",
    "JournalState",
    "RolloutJournal",
    "RolloutResult",
    "make_job",
    "new_job_id",
    "newer_status",
    "rollback_job_id",
]
