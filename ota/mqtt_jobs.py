"""``MqttJobs``: the device's job channel (DESIGN §6): signed jobs in, job statuses out.

In: a message on ``{p}/{device}/jobs/notify`` or ``{p}/group/{group}/jobs/notify`` is
untrusted bytes. It is parsed strictly (``ota.protocol.parse_job``), its signature checked
against the keys in ``trust/`` (``TrustStore``), then the rules (``check_job_rules``:
replay, expiry against the later of the clock and the last trusted time, target, release
counter). Only then does it reach the update core:

    deploy     a persisted ``UpdateJob`` (origin ``mqtt``) with the job id, its nonce and
               issued_at recorded in the same write; the runner downloads, verifies,
               validates, swaps and proves it, reporting every step
    rollback   the manager's rollback (a job with this id, or the version on probation)
    pin        pins the serving version (or ``version``): SUCCEEDED or REJECTED at once
    sampling   ``SamplingControl.set_policy(table)``: SUCCEEDED, or REJECTED ``invalid_policy``
               naming the key (the same parser as the config's [sampling] table)
    capture    ``SamplingControl.capture(frames)``: SUCCEEDED, or REJECTED
               (both REJECTED ``unsupported_action`` while ``sampling`` is None: sampling off)

A second delivery of a job already accepted (same id and nonce, validly signed: QoS 1 is at
least once) is ignored; the same id with another nonce, or a nonce under another id, is a
replay. Refusals of messages whose signature did not verify are reported up to ``UNVERIFIED_PER_MIN``
a minute (a flood of junk must not fill the outbox), then counted and logged only.
Every other refusal is a ``REJECTED`` event with its reason code, so nothing is dropped silently:
a payload too broken to name its job is reported under ``malformed-<sha256[:12]>``.

Out: ``StatusPublisher`` subscribes to ``UpdateEvents`` and puts each event, as the status
payload of DESIGN §6, into the persistent ``Outbox`` (QoS 1, drained in order when the
broker is reachable), so the statuses of a job run while offline reach the fleet later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from inference.errors import ConfigError, EdgeAgentError
from ota.errors import Rejected
from ota.outbox import Outbox
from ota.protocol import ID_RE, JobMessage, Topics, parse_job, status_from_event
from ota.trust import JobContext, TrustStore, check_job_rules
from ota.update_events import JobEvent, JobStatus, UpdateEvents
from ota.update_job import UpdateJob
from ota.update_machine import UpdateMachine

log = logging.getLogger(__name__)

SAMPLING_OFF = "sampling is off on this device ([sampling] / [upload] in its config)"
UNVERIFIED_PER_MIN = 60  # reported refusals of unsigned or badly signed messages, per minute


class JobTarget(Protocol):
    """What the job channel needs of the update core (the agent's ``ModelManager``)."""

    events: UpdateEvents
    machine: UpdateMachine

    def submit_job(
        self, job: UpdateJob, *, marks: tuple[str, ...] = (), trusted_time: float | None = None
    ) -> str: ...

    def rollback(self, force: bool = False, *, job_id: str | None = None, origin: str = "control") -> Any: ...

    def pin(self, version: int | None) -> Any: ...


class SamplingControl(Protocol):
    """What the ``sampling`` and ``capture`` jobs need of the device's frame collector.

    Both return a short message for the SUCCEEDED status; ``ConfigError`` (a policy the
    config's checks refuse, naming the key) is REJECTED ``invalid_policy``, another
    ``EdgeAgentError`` REJECTED ``not_applicable``."""

    def set_policy(self, table: Mapping[str, Any], *, job_id: str) -> str: ...

    def capture(self, frames: int, *, job_id: str) -> str: ...


class MqttJobs:
    """See the module docstring. ``on_message`` is the link's handler for both notify topics.

    ``sampling``: the device's collector, settable after construction (None: sampling is off
    and the ``sampling`` and ``capture`` jobs are REJECTED ``unsupported_action``)."""

    def __init__(
        self,
        *,
        device_id: str,
        group: str | None,
        topics: Topics,
        trust: TrustStore,
        target: JobTarget,
        clock: Callable[[], float] = time.time,
        sampling: SamplingControl | None = None,
    ) -> None:
        self.device_id = device_id
        self.sampling = sampling
        self.group = group
        self.topics = topics
        self.trust = trust
        self.target = target
        self.clock = clock
        self.received = 0
        self.rejected = 0
        self.duplicates = 0
        self.suppressed = 0  # refusals of unverified messages past the budget: logged, not reported
        self._signed = False
        self._tokens = float(UNVERIFIED_PER_MIN)
        self._tokens_at = time.monotonic()

    def filters(self) -> list[str]:
        out = [self.topics.device_notify(self.device_id)]
        if self.group:
            out.append(self.topics.group_notify(self.group))
        return out

    def on_message(self, topic: str, payload: bytes) -> None:
        self.received += 1
        job_id = _guess_job_id(payload)
        self._signed = False
        try:
            job = parse_job(payload)
            job_id = job.job_id
            if self._verify(job):
                self._dispatch(job)
        except Rejected as err:
            self.rejected += 1
            if not self._signed and not self._unverified_budget():
                # a flood of junk must not fill the outbox (statuses are never dropped): past
                # the budget, refusals of unverified messages are counted and logged only
                self.suppressed += 1
                log.debug("job %s from %s rejected (%s), not reported: %s", job_id, topic, err.reason, err)
                return
            log.warning("job %s from %s rejected (%s): %s", job_id, topic, err.reason, err)
            self._report(job_id, JobStatus.REJECTED, reason=f"{err.reason}: {err}")

    def _unverified_budget(self) -> bool:
        """A token bucket: at most ``UNVERIFIED_PER_MIN`` reported refusals of unsigned or
        badly signed messages a minute (a burst of as many)."""
        now = time.monotonic()
        rate = UNVERIFIED_PER_MIN / 60.0
        self._tokens = min(float(UNVERIFIED_PER_MIN), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # ------------------------------------------------------------------ checks

    def _verify(self, job: JobMessage) -> bool:
        """Signature and rules; False for a second delivery of a job already accepted."""
        if self.trust.empty:
            self.trust.reload()
        if self.trust.empty:
            raise Rejected(
                "unknown_key",
                f"this device trusts no keys: copy the fleet's public key (.pub) into {self.trust.where}",
            )
        self.trust.verify_object({**job.body, "signature": job.signature})
        self._signed = True
        machine = self.target.machine
        if machine.has_seen(job.job_id) and machine.has_seen(f"nonce:{job.nonce}"):
            # the same signed job again (QoS 1 is at least once; a fleet re-publishes after a
            # lost acknowledgement): already accepted, so nothing to do and nothing to report
            self.duplicates += 1
            log.info("job %s delivered again: already accepted, ignored", job.job_id)
            return False
        rec = machine.record
        ctx = JobContext(
            device_id=self.device_id,
            group=self.group,
            seen=self.target.machine.has_seen,
            last_trusted_time=rec.counters.last_trusted_time,
            max_release_counter=rec.counters.max_release_counter,
        )
        check_job_rules(
            job_id=job.job_id,
            nonce=job.nonce,
            target=job.target,
            issued_at=job.issued_at,
            expires_at=job.expires_at,
            release_counter=job.release_counter,
            ctx=ctx,
            now=self.clock(),
        )
        return True

    # ------------------------------------------------------------------ actions

    def _dispatch(self, job: JobMessage) -> None:
        marks = (f"nonce:{job.nonce}",)
        if job.action == "deploy":
            assert job.manifest_url is not None and job.manifest_sha256 is not None
            update = UpdateJob(
                job.job_id,
                "deploy",
                "mqtt",
                self.clock(),
                source=job.manifest_url,
                manifest_sha256=job.manifest_sha256,
                release_counter=job.release_counter,
                expires_at=float(job.expires_at),
            )
            try:
                self.target.submit_job(update, marks=marks, trusted_time=float(job.issued_at))
            except EdgeAgentError as err:
                if getattr(err, "status", None) != 409:  # the state file cannot be written: say so
                    raise Rejected("not_applicable", f"the job could not be queued: {err}") from None
                raise Rejected("replay", str(err)) from None  # seen meanwhile
            return
        machine = self.target.machine
        if job.action == "rollback":
            # only the nonce first: a rollback of a committed version queues a job under this id,
            # which the machine would refuse as a replay if the id were marked seen already
            if not machine.mark_seen(marks, trusted_time=float(job.issued_at)):
                raise Rejected("replay", f"job {job.job_id}: its nonce was seen already")
            try:
                answer = self.target.rollback(job_id=job.job_id, origin="mqtt")
            except EdgeAgentError as err:
                machine.mark_seen((job.job_id,))
                raise Rejected("pinned" if "pinned" in str(err) else "not_applicable", str(err)) from None
            if not (isinstance(answer, dict) and answer.get("job_id")):  # the version on probation
                machine.mark_seen((job.job_id,))
                self._report(job.job_id, JobStatus.SUCCEEDED, reason=str(answer.get("message", "")))
            return
        if not machine.mark_seen((job.job_id, *marks), trusted_time=float(job.issued_at)):
            raise Rejected("replay", f"job {job.job_id} (or its nonce) was seen already")
        if job.action == "pin":
            try:
                answer = self.target.pin(job.version)
            except EdgeAgentError as err:
                raise Rejected("not_applicable", str(err)) from None
            self._report(job.job_id, JobStatus.SUCCEEDED, reason=str(answer.get("message", "")))
            return
        if job.action in ("sampling", "capture"):
            self._sampling(job)
            return
        raise Rejected("unsupported_action", f"action {job.action!r} is not known")  # pragma: no cover

    def _sampling(self, job: JobMessage) -> None:
        """A ``sampling`` or ``capture`` job, its id and nonce already marked seen."""
        control = self.sampling  # read once: the agent may attach or detach it meanwhile
        if control is None:
            raise Rejected("unsupported_action", SAMPLING_OFF)
        try:
            if job.action == "sampling":
                assert job.sampling is not None  # parse_job requires it
                message = control.set_policy(job.sampling, job_id=job.job_id)
            else:
                assert job.frames is not None  # parse_job requires it
                message = control.capture(job.frames, job_id=job.job_id)
        except ConfigError as err:
            raise Rejected("invalid_policy", str(err)) from None
        except Rejected:
            raise
        except EdgeAgentError as err:
            raise Rejected("not_applicable", str(err)) from None
        self._report(job.job_id, JobStatus.SUCCEEDED, reason=message)

    def _report(self, job_id: str, status: JobStatus, *, reason: str | None = None) -> None:
        machine = self.target.machine
        self.target.events.emit(
            JobEvent(
                job_id=job_id,
                status=status,
                ts=self.target.events.clock(),
                phase=machine.state.value,
                reason=reason,
                origin="mqtt",
            )
        )


def _guess_job_id(payload: bytes) -> str:
    """The job id a payload claims, when it is a usable one; else one made from its bytes."""
    try:
        data = json.loads(payload) if len(payload) <= 65536 else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    claimed = data.get("job_id") if isinstance(data, dict) else None
    if isinstance(claimed, str) and ID_RE.fullmatch(claimed):
        return claimed
    return "malformed-" + hashlib.sha256(payload).hexdigest()[:12]


class StatusPublisher:
    """An ``UpdateEvents`` subscriber: every job event into the outbox as a status message."""

    def __init__(self, outbox: Outbox, topics: Topics, device_id: str, wake: Callable[[], None]) -> None:
        self.outbox = outbox
        self.topics = topics
        self.device_id = device_id
        self.wake = wake

    def __call__(self, event: JobEvent) -> None:
        if not ID_RE.fullmatch(event.job_id):
            log.warning("job %r: not a usable topic level; its status is not published", event.job_id)
            return
        topic = self.topics.status(self.device_id, event.job_id)

        self.outbox.put(topic, lambda seq: status_from_event(event, seq=seq), "status")
        self.wake()


__all__ = ["SAMPLING_OFF", "JobTarget", "MqttJobs", "SamplingControl", "StatusPublisher"]
