"""``MqttJobs`` (the device's job channel) and ``StatusPublisher``, in process.

Table tests run the channel against a real ``UpdateMachine`` + ``UpdateEvents`` behind a small
target; the fuzz test and the hold/window tests run it against an in-process agent (real
``ModelManager``, store, pipeline). Every status put into the real ``Outbox`` is checked against
``load_schema("status")``. Every wait is on a condition or an event, never a sleep.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent.control import RequestError
from agent.manager import ManagerPolicy
from ota.mqtt_jobs import MqttJobs, StatusPublisher
from ota.outbox import Outbox
from ota.protocol import JOB_FIELDS, MAX_JOB_BYTES, Topics, build_job, load_schema, new_nonce, parse_status
from ota.store import ModelStore
from ota.trust import TrustStore, generate_keypair, load_private_key, sign_object
from ota.update_events import JobEvent, JobStatus, UpdateEvents
from ota.update_job import UpdateJob
from ota.update_machine import UpdateMachine
from ota.update_window import UpdateWindow
from tests.fixtures.hot_swap import InProcessAgent

Start = Callable[..., Any]
Make = Callable[..., Path]

DEVICE = "cam-1"
WAIT = 30.0
STEPS = [
    ("QUEUED", None),
    ("IN_PROGRESS", "downloading"),
    ("IN_PROGRESS", "verifying"),
    ("IN_PROGRESS", "validating"),
    ("IN_PROGRESS", "activating"),
    ("IN_PROGRESS", "probation"),
    ("SUCCEEDED", None),
]
STATUS_SCHEMA = Draft202012Validator(load_schema("status"))


# --------------------------------------------------------------------------- helpers


class EventLog:
    """An ``UpdateEvents`` subscriber: every event with the thread that emitted it."""

    def __init__(self) -> None:
        self.events: list[tuple[int, JobEvent]] = []
        self.cond = threading.Condition()

    def __call__(self, event: JobEvent) -> None:
        with self.cond:
            self.events.append((threading.get_ident(), event))
            self.cond.notify_all()

    def of(self, job_id: str) -> list[JobEvent]:
        with self.cond:
            return [e for _, e in self.events if e.job_id == job_id]

    def chain(self, job_id: str) -> list[tuple[str, str | None]]:
        return [(e.status.value, e.step or e.detail) for e in self.of(job_id)]

    def final(self, job_id: str) -> JobEvent | None:
        ends = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED)
        return next((e for e in reversed(self.of(job_id)) if e.status in ends), None)

    def wait_final(self, job_id: str, timeout: float = WAIT) -> JobEvent:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.final(job_id) is not None, timeout)
        assert ok, f"job {job_id} did not end: {self.chain(job_id)}"
        final = self.final(job_id)
        assert final is not None
        return final


@dataclass
class Fleet:
    key: Any  # Ed25519PrivateKey
    pub: Path

    def job(self, job_id: str, *, action: str = "deploy", nonce: str | None = None, **fields: Any) -> bytes:
        return json.dumps(self.job_obj(job_id, action=action, nonce=nonce, **fields)).encode()

    def job_obj(
        self, job_id: str, *, action: str = "deploy", nonce: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        fields.setdefault("issued_at", now - 5)
        fields.setdefault("expires_at", now + 3600)
        fields.setdefault("devices", [DEVICE])
        if action == "deploy":
            fields.setdefault("manifest_url", f"http://bundles.test/{job_id}/manifest.json")
            fields.setdefault("manifest_sha256", "0" * 64)
        job = build_job(job_id=job_id, action=action, nonce=nonce or new_nonce(), **fields)
        return sign_object(job, self.key)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    key, pub = generate_keypair(tmp_path / "keys")
    return Fleet(load_private_key(key), pub)


def trust_for(state: Path, fleet: Fleet | None) -> TrustStore:
    (state / "trust").mkdir(parents=True, exist_ok=True)
    if fleet is not None:
        shutil.copy(fleet.pub, state / "trust" / fleet.pub.name)
    return TrustStore(state / "trust")


def outbox_statuses(outbox: Outbox) -> list[dict[str, Any]]:
    """Every row of the outbox (drained), each checked against the status schema and parser."""
    out: list[dict[str, Any]] = []
    while (item := outbox.head()) is not None:
        assert item.kind == "status"
        obj = json.loads(item.payload)
        errors = [e.message for e in STATUS_SCHEMA.iter_errors(obj)]
        assert not errors, (obj, errors)
        parsed = parse_status(item.payload)
        assert parsed.seq == item.seq == obj["seq"]
        assert item.topic == Topics().status(DEVICE, obj["job_id"])
        out.append(obj)
        outbox.ack(item.seq)
    return out


class MiniTarget:
    """What ``MqttJobs`` needs of the manager, over a real machine and real events."""

    def __init__(self, root: Path) -> None:
        self.events = UpdateEvents()
        self.machine = UpdateMachine(root / "update-state.json")
        self.rollbacks: list[tuple[str | None, str]] = []
        self.pins: list[int | None] = []
        self.rollback_answer: dict[str, Any] | Exception = {"message": "rolling back cls v2 (on probation)"}
        self.pin_answer: dict[str, Any] | Exception = {"message": "pinned"}

    def submit_job(
        self, job: UpdateJob, *, marks: tuple[str, ...] = (), trusted_time: float | None = None
    ) -> str:
        if not self.machine.enqueue(job, marks=marks, trusted_time=trusted_time):
            raise RequestError(f"job {job.job_id} was seen already (replay)", 409)
        self._emit(job.job_id, JobStatus.QUEUED)
        return job.job_id

    def rollback(self, force: bool = False, *, job_id: str | None = None, origin: str = "control") -> Any:
        self.rollbacks.append((job_id, origin))
        if isinstance(self.rollback_answer, Exception):
            raise self.rollback_answer
        if "job_id" in self.rollback_answer:  # not on probation: queued as a job, as the manager does
            assert job_id is not None
            self.submit_job(UpdateJob(job_id, "rollback", origin, time.time()))
        return self.rollback_answer

    def pin(self, version: int | None) -> Any:
        self.pins.append(version)
        if isinstance(self.pin_answer, Exception):
            raise self.pin_answer
        return self.pin_answer

    def _emit(self, job_id: str, status: JobStatus) -> None:
        self.events.emit(
            JobEvent(job_id, status, ts=self.events.clock(), phase=self.machine.state.value, origin="mqtt")
        )


@dataclass
class Channel:
    jobs: MqttJobs
    target: MiniTarget
    log: EventLog
    outbox: Outbox
    topic: str

    def send(self, payload: bytes) -> None:
        self.jobs.on_message(self.topic, payload)


@pytest.fixture
def channel(tmp_path: Path, fleet: Fleet) -> Iterator[Callable[..., Channel]]:
    made: list[Outbox] = []

    def make(*, trusted: bool = True) -> Channel:
        state = tmp_path / f"state{len(made)}"
        target = MiniTarget(state)
        topics = Topics()
        outbox = Outbox(state / "outbox" / "outbox.db")
        made.append(outbox)
        target.events.subscribe(StatusPublisher(outbox, topics, DEVICE, lambda: None))
        log = EventLog()
        target.events.subscribe(log)
        jobs = MqttJobs(
            device_id=DEVICE,
            group="north",
            topics=topics,
            trust=trust_for(state, fleet if trusted else None),
            target=target,
        )
        return Channel(jobs, target, log, outbox, topics.device_notify(DEVICE))

    yield make
    for o in made:
        o.close()


def reason_code(event: JobEvent) -> str:
    assert event.reason is not None
    return event.reason.split(":", 1)[0]


# --------------------------------------------------------------------------- table tests


def test_valid_deploy_is_queued_persisted_with_its_nonce_and_trusted_time(
    channel: Callable[..., Channel], fleet: Fleet
) -> None:
    ch = channel()
    issued = int(time.time()) - 30
    obj = fleet.job_obj("deploy-1", issued_at=issued, release_counter=4)
    ch.send(json.dumps(obj).encode())
    assert [(e.status, e.job_id) for e in ch.log.of("deploy-1")] == [(JobStatus.QUEUED, "deploy-1")]
    # what is on disk, read back by a fresh machine (a restart)
    again = UpdateMachine(ch.target.machine.path)
    [queued] = again.queue
    assert (queued.job_id, queued.action, queued.origin) == ("deploy-1", "deploy", "mqtt")
    assert queued.source == obj["manifest_url"] and queued.manifest_sha256 == obj["manifest_sha256"]
    assert queued.release_counter == 4
    assert f"nonce:{obj['nonce']}" in again.record.seen
    assert again.record.counters.last_trusted_time == float(issued)
    [status] = outbox_statuses(ch.outbox)
    assert (status["job_id"], status["status"]) == ("deploy-1", "QUEUED")


def test_second_delivery_of_the_same_job_is_ignored_without_a_status(
    channel: Callable[..., Channel], fleet: Fleet
) -> None:
    ch = channel()
    payload = fleet.job("deploy-1")
    ch.send(payload)
    ch.send(payload)
    ch.send(payload)
    assert [e.status for _, e in ch.log.events] == [JobStatus.QUEUED]
    assert ch.jobs.duplicates == 2 and ch.jobs.rejected == 0
    assert [j.job_id for j in ch.target.machine.queue] == ["deploy-1"]
    assert [s["status"] for s in outbox_statuses(ch.outbox)] == ["QUEUED"]


def _same_id_new_nonce(fleet: Fleet) -> list[bytes]:
    return [fleet.job("job-a"), fleet.job("job-a")]


def _nonce_under_another_id(fleet: Fleet) -> list[bytes]:
    nonce = new_nonce()
    return [fleet.job("job-a", nonce=nonce), fleet.job("job-b", nonce=nonce)]


def _rollback_then_deploy_same_id(fleet: Fleet) -> list[bytes]:
    return [fleet.job("job-a", action="rollback"), fleet.job("job-a")]


def _pin_replayed_with_new_nonce(fleet: Fleet) -> list[bytes]:
    return [fleet.job("job-a", action="pin", version=1), fleet.job("job-a", action="pin", version=1)]


@pytest.mark.parametrize(
    "make",
    [
        _same_id_new_nonce,
        _nonce_under_another_id,
        _rollback_then_deploy_same_id,
        _pin_replayed_with_new_nonce,
    ],
)
def test_replays_are_rejected(
    channel: Callable[..., Channel], fleet: Fleet, make: Callable[[Fleet], list[bytes]]
) -> None:
    ch = channel()
    first, second = make(fleet)
    ch.send(first)
    before = len(ch.log.events)
    assert before == 1 and ch.log.events[0][1].status is not JobStatus.REJECTED
    queue = ch.target.machine.queue
    ch.send(second)
    [(_, event)] = ch.log.events[before:]
    assert event.status is JobStatus.REJECTED and reason_code(event) == "replay", event
    assert ch.target.machine.queue == queue  # nothing queued by the replay
    statuses = outbox_statuses(ch.outbox)
    assert statuses[-1]["status"] == "REJECTED" and statuses[-1]["reason"].startswith("replay: ")


def test_no_trusted_keys_rejects_unknown_key(channel: Callable[..., Channel], fleet: Fleet) -> None:
    ch = channel(trusted=False)
    ch.send(fleet.job("deploy-1"))
    [(_, event)] = ch.log.events
    assert (event.job_id, event.status, reason_code(event)) == ("deploy-1", JobStatus.REJECTED, "unknown_key")
    assert ch.target.machine.queue == () and not ch.target.machine.has_seen("deploy-1")
    [status] = outbox_statuses(ch.outbox)
    assert status["reason"].startswith("unknown_key: ")


@dataclass(frozen=True)
class Case:
    name: str
    action: str
    fields: dict[str, Any]
    rollback: dict[str, Any] | Exception | None
    pin: dict[str, Any] | Exception | None
    expect: tuple[str, str | None] | None  # (status, reason code) reported, None: nothing
    rollbacks: int
    pins: list[int | None]


CASES = [
    Case(
        "rollback-on-probation", "rollback", {}, {"message": "rolling back"}, None, ("SUCCEEDED", None), 1, []
    ),
    Case(
        "rollback-as-job", "rollback", {}, {"message": "queued", "job_id": "x"}, None, ("QUEUED", None), 1, []
    ),
    Case(
        "rollback-nothing",
        "rollback",
        {},
        RequestError("no previous version to roll back to", 409),
        None,
        ("REJECTED", "not_applicable"),
        1,
        [],
    ),
    Case(
        "rollback-pinned",
        "rollback",
        {},
        RequestError("cls v1 is pinned: unpin it", 409),
        None,
        ("REJECTED", "pinned"),
        1,
        [],
    ),
    Case("pin-current", "pin", {}, None, {"message": "pinned cls v1"}, ("SUCCEEDED", None), 0, [None]),
    Case(
        "pin-version", "pin", {"version": 3}, None, {"message": "pinned cls v3"}, ("SUCCEEDED", None), 0, [3]
    ),
    Case(
        "pin-missing",
        "pin",
        {"version": 9},
        None,
        RequestError("no version 9 in the store", 404),
        ("REJECTED", "not_applicable"),
        0,
        [9],
    ),
    Case(
        "sampling-off",
        "sampling",
        {"sampling": {"dedup_bits": 6}},
        None,
        None,
        ("REJECTED", "unsupported_action"),
        0,
        [],
    ),
    Case("capture-off", "capture", {"frames": 3}, None, None, ("REJECTED", "unsupported_action"), 0, []),
    Case(
        "expired", "deploy", {"issued_at": 100, "expires_at": 200}, None, None, ("REJECTED", "expired"), 0, []
    ),
    Case(
        "other-device",
        "deploy",
        {"devices": ["cam-2"]},
        None,
        None,
        ("REJECTED", "not_for_this_device"),
        0,
        [],
    ),
    Case("my-group", "deploy", {"devices": None, "group": "north"}, None, None, ("QUEUED", None), 0, []),
    Case(
        "other-group",
        "deploy",
        {"devices": None, "group": "south"},
        None,
        None,
        ("REJECTED", "not_for_this_device"),
        0,
        [],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dispatch(channel: Callable[..., Channel], fleet: Fleet, case: Case) -> None:
    ch = channel()
    if case.rollback is not None:
        ch.target.rollback_answer = case.rollback
    if case.pin is not None:
        ch.target.pin_answer = case.pin
    obj = fleet.job_obj("job-1", action=case.action, **case.fields)
    ch.send(json.dumps(obj).encode())
    got = [
        (e.status.value, reason_code(e) if e.status is JobStatus.REJECTED else None) for _, e in ch.log.events
    ]
    assert got == ([case.expect] if case.expect else [])
    assert ch.target.rollbacks == [("job-1", "mqtt")] * case.rollbacks
    assert ch.target.pins == case.pins
    # a rollback or pin marks its id and nonce seen before it is carried out; a queued deploy too
    marked = case.action in ("rollback", "pin", "sampling", "capture") or case.expect == ("QUEUED", None)
    assert ch.target.machine.has_seen("job-1") is marked
    assert ch.target.machine.has_seen(f"nonce:{obj['nonce']}") is marked
    statuses = outbox_statuses(ch.outbox)
    assert [s["status"] for s in statuses] == [e.status.value for _, e in ch.log.events]


def test_broken_payloads_are_reported_under_a_made_up_id(channel: Callable[..., Channel]) -> None:
    ch = channel()
    for payload in (b"", b"\xff\xfe", b"[]", b'{"job_id": "../x"}', b"{" * 10000, b" " * (MAX_JOB_BYTES + 1)):
        ch.send(payload)
    events = [e for _, e in ch.log.events]
    assert len(events) == 6 and all(e.status is JobStatus.REJECTED for e in events)
    assert all(e.job_id.startswith("malformed-") for e in events)
    assert reason_code(events[-1]) == "too_large"
    assert len(outbox_statuses(ch.outbox)) == 6


def test_a_flood_of_junk_is_reported_only_up_to_the_budget(
    channel: Callable[..., Channel], fleet: Fleet
) -> None:
    """Statuses are never dropped from the outbox, so refusals of unverified messages are
    reported up to UNVERIFIED_PER_MIN a minute, then only counted; a signed job still is."""
    from ota.mqtt_jobs import UNVERIFIED_PER_MIN

    ch = channel()
    for i in range(UNVERIFIED_PER_MIN * 3):
        ch.send(b'{"junk": %d}' % i)
    assert len(outbox_statuses(ch.outbox)) == UNVERIFIED_PER_MIN
    assert ch.jobs.suppressed == UNVERIFIED_PER_MIN * 2
    ch.send(fleet.job("other-device", devices=["cam-99"]))  # signed: its refusal is always reported
    assert reason_code(ch.log.events[-1][1]) == "not_for_this_device"
    assert [s["job_id"] for s in outbox_statuses(ch.outbox)] == ["other-device"]


def test_rollback_and_pin_through_the_real_manager(
    classifier_bundle: Make, in_process_agent: Start, fleet: Fleet, tmp_path: Path
) -> None:
    agent = in_process_agent(classifier_bundle(1))
    log = EventLog()
    agent.events.subscribe(log)
    jobs = MqttJobs(
        device_id=DEVICE,
        group=None,
        topics=Topics(),
        trust=trust_for(tmp_path / "s", fleet),
        target=agent.manager,
    )
    jobs.on_message("t", fleet.job("rb-1", action="rollback"))
    assert [(e.status, reason_code(e)) for e in log.of("rb-1")] == [(JobStatus.REJECTED, "not_applicable")]
    jobs.on_message("t", fleet.job("pin-1", action="pin"))
    assert [e.status for e in log.of("pin-1")] == [JobStatus.SUCCEEDED]
    assert agent.machine.pin is not None and agent.machine.pin.version == 1
    jobs.on_message("t", fleet.job("pin-2", action="pin", version=7))
    assert [(e.status, reason_code(e)) for e in log.of("pin-2")] == [(JobStatus.REJECTED, "not_applicable")]


# --------------------------------------------------------------------------- fuzz

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
JOB_KEYS: tuple[str, ...] = JOB_FIELDS


@st.composite
def payloads(draw: st.DrawFn, fleet: Fleet, counter: list[int]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "mutate", "delete", "add", "oversized", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    counter[0] += 1
    obj = fleet.job_obj(f"fuzz-{counter[0]}", release_counter=draw(st.integers(0, 5)))
    if kind == "mutate":
        obj[draw(st.sampled_from(JOB_KEYS))] = draw(JSON_VALUES)
    elif kind == "delete":
        obj.pop(draw(st.sampled_from(sorted(obj))))
    elif kind == "add":
        obj[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
    elif kind == "oversized":
        obj["pad"] = "x" * draw(st.integers(MAX_JOB_BYTES, 3 * MAX_JOB_BYTES))
    return json.dumps(obj).encode()


def test_fuzzed_payloads_never_escape_and_the_pipeline_keeps_serving(
    classifier_bundle: Make, in_process_agent: Start, fleet: Fleet, tmp_path: Path
) -> None:
    agent = in_process_agent(classifier_bundle(1))
    agent.manager.set_hold(True)  # a deploy that happens to be valid stays QUEUED (nothing to download)
    log = EventLog()
    agent.events.subscribe(log)
    outbox = Outbox(tmp_path / "outbox.db")
    agent.events.subscribe(StatusPublisher(outbox, Topics(), DEVICE, lambda: None))
    jobs = MqttJobs(
        device_id=DEVICE,
        group=None,
        topics=Topics(),
        trust=trust_for(tmp_path / "s", fleet),
        target=agent.manager,
    )
    me = threading.get_ident()
    frames_before = agent.pipeline.stats().frames
    seen = {"n": 0, "queued": 0}

    @settings(
        max_examples=2500,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(payload=payloads(fleet, [0]))
    def one(payload: bytes) -> None:
        start = len(log.events)
        jobs.on_message(Topics().device_notify(DEVICE), payload)  # nothing may escape
        mine = [e for tid, e in log.events[start:] if tid == me]
        assert len(mine) <= 1, mine
        if mine:
            assert mine[0].status in (JobStatus.REJECTED, JobStatus.QUEUED), mine[0]
            seen["queued"] += mine[0].status is JobStatus.QUEUED
        seen["n"] += 1

    try:
        one()
        assert seen["n"] >= 1000
        assert jobs.received == seen["n"]
        # the pipeline kept producing results through and after the fuzz
        assert agent.sink.wait_frames(len(agent.sink.rows) + 50, timeout=WAIT)
        assert agent.pipeline.stats().frames > frames_before
        assert agent.handle.current.version == 1
        statuses = outbox_statuses(outbox)
        assert len(statuses) == sum(1 for tid, _ in log.events if tid == me)
        assert {s["status"] for s in statuses} <= {"REJECTED", "QUEUED"}
        assert sum(s["status"] == "QUEUED" for s in statuses) == seen["queued"] == len(agent.machine.queue)
    finally:
        outbox.close()


# --------------------------------------------------------------------------- window and hold


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("02:00-05:00", 120, 300),
        (" 2:00 - 5:30 ", 120, 330),
        ("22:00-04:00", 1320, 240),
        ("23:15-24:00", 1395, 0),
        ("00:00-23:59", 0, 1439),
    ],
)
def test_window_parse_good(text: str, start: int, end: int) -> None:
    w = UpdateWindow.parse(text)
    assert (w.start_min, w.end_min) == (start, end)
    assert UpdateWindow.parse(str(w)) == w


@pytest.mark.parametrize(
    "text",
    ["", "2-5", "02:00", "25:00-03:00", "02:60-03:00", "02:00-24:30", "03:00-03:00", "00:00-24:00", "a-b"],
)
def test_window_parse_bad(text: str) -> None:
    from inference.errors import ConfigError

    with pytest.raises(ConfigError, match="update window"):
        UpdateWindow.parse(text)


@pytest.mark.parametrize(
    ("text", "at", "seconds"),
    [
        ("02:00-05:00", (1, 0), 3600.0),
        ("02:00-05:00", (2, 0), 0.0),
        ("02:00-05:00", (4, 59), 0.0),
        ("02:00-05:00", (5, 0), 21 * 3600.0),
        ("22:00-04:00", (23, 0), 0.0),
        ("22:00-04:00", (3, 59), 0.0),
        ("22:00-04:00", (4, 0), 18 * 3600.0),
        ("22:00-04:00", (21, 30), 1800.0),
    ],
)
def test_window_seconds_until_open(text: str, at: tuple[int, int], seconds: float) -> None:
    w = UpdateWindow.parse(text)
    now = datetime(2026, 3, 1, *at)
    assert w.seconds_until_open(now) == pytest.approx(seconds)
    assert w.contains(now) == (seconds == 0.0)
    assert w.contains(w.next_open(now))


class CopyFetcher:
    """The manager's ``fetcher``: the bundle registered under the job's manifest URL, copied."""

    def __init__(self) -> None:
        self.bundles: dict[str, Path] = {}

    def add(self, bundle: Path) -> tuple[str, str]:
        url = f"http://bundles.test/{bundle.name}/manifest.json"
        self.bundles[url] = bundle
        return url, hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()

    def __call__(self, job: UpdateJob, dest: Path, wait: Callable[[float], bool]) -> Path:
        assert job.source is not None
        shutil.copytree(self.bundles[job.source], dest, dirs_exist_ok=True)
        return dest


class LocalClock:
    """The injected ``local_now``: settable; counts the reads of the manager's worker thread."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.worker_reads = 0
        self.cond = threading.Condition()

    def __call__(self) -> datetime:
        with self.cond:
            if threading.current_thread().name == "model-manager":
                self.worker_reads += 1
                self.cond.notify_all()
            return self.now

    def wait_worker_reads(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.worker_reads >= n, WAIT), "the worker never looked"


class HeldSpy:
    """Wraps ``manager.held``: the worker's answers, recorded."""

    def __init__(self, manager: Any) -> None:
        self.real = manager.held
        self.answers: list[str | None] = []
        self.cond = threading.Condition()
        manager.held = self

    def __call__(self) -> str | None:
        answer: str | None = self.real()
        if threading.current_thread().name == "model-manager":
            with self.cond:
                self.answers.append(answer)
                self.cond.notify_all()
        return answer

    def wait_answer(self, pred: Callable[[str | None], bool]) -> str | None:
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(a) for a in self.answers), WAIT), self.answers
            return next(a for a in self.answers if pred(a))


def wire(agent: Any, fleet: Fleet, state: Path) -> tuple[MqttJobs, EventLog]:
    log = EventLog()
    agent.events.subscribe(log)
    jobs = MqttJobs(
        device_id=DEVICE, group=None, topics=Topics(), trust=trust_for(state, fleet), target=agent.manager
    )
    return jobs, log


def test_deploy_waits_outside_the_window_then_runs_inside_it(
    classifier_bundle: Make, in_process_agent: Start, fleet: Fleet, tmp_path: Path
) -> None:
    clock = LocalClock(datetime(2026, 3, 1, 12, 0))
    fetcher = CopyFetcher()
    agent = in_process_agent(
        classifier_bundle(1), fetcher=fetcher, window=UpdateWindow.parse("02:00-03:00"), local_now=clock
    )
    jobs, log = wire(agent, fleet, tmp_path / "s")
    url, sha = fetcher.add(classifier_bundle(2, strength=25.0))
    reads = clock.worker_reads
    assert reads == 0  # the worker reads the clock only when a deploy job is queued
    jobs.on_message("t", fleet.job("win-2", manifest_url=url, manifest_sha256=sha))
    # held() and seconds_until_open() on the worker: it looked at the job and chose to wait
    clock.wait_worker_reads(reads + 2)
    assert agent.manager.held() == "outside the update window 02:00-03:00"
    assert [j.job_id for j in UpdateMachine(agent.store.state_path).queue] == ["win-2"]
    assert log.chain("win-2") == [("QUEUED", None)]
    assert log.of("win-2")[0].reason == "outside the update window 02:00-03:00"
    assert agent.handle.current.version == 1
    clock.now = datetime(2026, 3, 2, 2, 30)
    with agent.manager._cond:
        agent.manager._cond.notify_all()
    assert log.wait_final("win-2").status is JobStatus.SUCCEEDED
    assert log.chain("win-2") == STEPS
    assert agent.handle.current.version == 2 and agent.machine.queue == ()


def test_hold_keeps_a_deploy_queued_while_a_rollback_runs(
    classifier_bundle: Make, in_process_agent: Start, fleet: Fleet, tmp_path: Path
) -> None:
    fetcher = CopyFetcher()
    agent = in_process_agent(classifier_bundle(1), fetcher=fetcher)
    jobs, log = wire(agent, fleet, tmp_path / "s")
    url2, sha2 = fetcher.add(classifier_bundle(2, strength=25.0))
    url3, sha3 = fetcher.add(classifier_bundle(3, strength=20.0))
    jobs.on_message("t", fleet.job("d-2", manifest_url=url2, manifest_sha256=sha2))
    assert log.wait_final("d-2").status is JobStatus.SUCCEEDED
    assert agent.manager.set_hold(True)["hold"] is True
    jobs.on_message("t", fleet.job("d-3", manifest_url=url3, manifest_sha256=sha3))
    assert "on hold" in str(log.of("d-3")[0].reason)
    rollback = fleet.job("rb-1", action="rollback")
    jobs.on_message("t", rollback)
    # the rollback, queued behind the held deploy, runs: the worker passed over d-3 to reach it
    assert log.wait_final("rb-1").status is JobStatus.SUCCEEDED
    assert log.chain("rb-1") == [("QUEUED", None), ("IN_PROGRESS", "rolling_back"), ("SUCCEEDED", None)]
    jobs.on_message("t", rollback)  # delivered again: ignored
    assert jobs.duplicates == 1 and len(log.of("rb-1")) == 3
    jobs.on_message("t", fleet.job("rb-1", action="rollback"))  # the same id, a new nonce: a replay
    assert (log.of("rb-1")[-1].status, reason_code(log.of("rb-1")[-1])) == (JobStatus.REJECTED, "replay")
    assert agent.handle.current.version == 1
    assert [j.job_id for j in agent.machine.queue] == ["d-3"]
    assert log.chain("d-3") == [("QUEUED", None)]
    agent.manager.set_hold(False)
    assert log.wait_final("d-3").status is JobStatus.SUCCEEDED
    assert log.chain("d-3") == STEPS
    assert agent.handle.current.version == 3 and agent.machine.queue == ()


def test_hold_survives_a_restart(classifier_bundle: Make, fleet: Fleet, tmp_path: Path) -> None:
    fetcher = CopyFetcher()
    seed = classifier_bundle(1)
    url, sha = fetcher.add(classifier_bundle(2, strength=25.0))
    policy = ManagerPolicy(probation_frames=30, isolate_validation=False)
    first = InProcessAgent(tmp_path / "agent", seed, policy, fetcher=fetcher)
    try:
        first.manager.set_hold(True)
        jobs, log = wire(first, fleet, tmp_path / "s")
        jobs.on_message("t", fleet.job("h-2", manifest_url=url, manifest_sha256=sha))
        assert log.chain("h-2") == [("QUEUED", None)]
    finally:
        first.close()
    on_disk = json.loads(first.store.state_path.read_text())
    assert on_disk["hold"] is True and [j["job_id"] for j in on_disk["queue"]] == ["h-2"]

    second = InProcessAgent(
        tmp_path / "agent", seed, policy, store=ModelStore(first.store.root), fetcher=fetcher
    )
    try:
        jobs, log = wire(second, fleet, tmp_path / "s")
        spy = HeldSpy(second.manager)
        with second.manager._cond:
            second.manager._cond.notify_all()
        answer = spy.wait_answer(lambda a: a is not None)  # the worker looked and saw the hold
        assert answer is not None and "on hold" in answer
        assert [j.job_id for j in second.machine.queue] == ["h-2"] and log.of("h-2") == []
        assert second.handle.current.version == 1
        second.manager.set_hold(False)
        assert log.wait_final("h-2").status is JobStatus.SUCCEEDED
        assert log.chain("h-2") == STEPS[1:]  # QUEUED was reported before the restart
        assert second.handle.current.version == 2 and second.machine.record.hold is False
    finally:
        second.close()


def test_a_job_that_expires_while_held_is_refused_when_released(
    classifier_bundle: Make, in_process_agent: Start, fleet: Fleet, tmp_path: Path
) -> None:
    """The expiry a signed job carries is kept with it: held past it, it never runs."""
    fetcher = CopyFetcher()
    agent = in_process_agent(classifier_bundle(1), fetcher=fetcher)
    jobs, log = wire(agent, fleet, tmp_path / "s")
    url, sha = fetcher.add(classifier_bundle(2, strength=25.0))
    agent.manager.set_hold(True)
    expires = int(time.time()) + 2
    jobs.on_message("t", fleet.job("late", manifest_url=url, manifest_sha256=sha, expires_at=expires))
    assert log.chain("late") == [("QUEUED", None)]
    assert agent.machine.queue[0].expires_at == expires  # persisted with the job
    end = time.monotonic() + 10
    while time.time() <= expires and time.monotonic() < end:  # the job's own deadline passes
        time.sleep(0.05)
    agent.manager.set_hold(False)
    final = log.wait_final("late")
    assert (final.status, reason_code(final)) == (JobStatus.REJECTED, "expired")
    assert agent.handle.current.version == 1 and agent.machine.queue == ()
