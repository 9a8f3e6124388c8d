"""The fleet's signed ``sampling`` and ``capture`` jobs, end to end over a real mosquitto.

Fleet side: ``FleetClient.sampling`` / ``capture`` and ``edge-agent fleet sampling|capture``.
Device side: a real ``MqttLink`` feeding ``MqttJobs`` (real trust store, update machine and
outbox, drained by a real ``OutboxPump``) whose ``SamplingControl`` is a recording fake that
checks a policy with the same parser as the config (``parse_policy``). Statuses are read back
off the broker. Every wait is on a condition, never a sleep.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import cli
from inference.errors import ConfigError, TransientError
from monitoring.sampling_policy import parse_policy
from ota.fleet import FleetClient, make_job
from ota.mqtt_jobs import SAMPLING_OFF, MqttJobs, StatusPublisher
from ota.mqtt_link import MqttLink, MqttSettings
from ota.outbox import Outbox, OutboxPump
from ota.protocol import Topics, build_job, new_nonce, parse_job, parse_status, state_payload
from ota.trust import TrustStore, generate_keypair, load_private_key, load_public_key, sign_object
from ota.update_events import JobStatus
from tests.fixtures.mosquitto import Mosquitto, Subscriber, mosquitto_pub
from tests.test_mqtt_jobs import Channel, MiniTarget, reason_code

DEVICE = "cam-1"
GROUP = "lobby"
WAIT = 20.0
TOPICS = Topics()
POLICY: dict[str, Any] = {
    "dedup_bits": 6,
    "dedup_window": "10m",
    "strategies": [{"name": "unsure", "kind": "uncertain", "low": 0.3, "high": 0.6, "per_minute": 10}],
}


class RecordingControl:
    """A ``SamplingControl`` that records its calls; a policy is checked as the collector does."""

    def __init__(self) -> None:
        self.policies: list[tuple[dict[str, Any], str]] = []
        self.captures: list[tuple[int, str]] = []
        self.error: Exception | None = None

    def set_policy(self, table: Mapping[str, Any], *, job_id: str) -> str:
        self.policies.append((dict(table), job_id))
        if self.error is not None:
            raise self.error
        policy = parse_policy(table, "sampling job")
        return f"policy set: {len(policy.strategies)} strategies"

    def capture(self, frames: int, *, job_id: str) -> str:
        self.captures.append((frames, job_id))
        if self.error is not None:
            raise self.error
        return f"capturing the next {frames} frames"


@dataclass
class Keys:
    path: Path
    key: Ed25519PrivateKey
    pub: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key_path, pub = generate_keypair(tmp_path / "keys", "fleet")
    return Keys(key_path, load_private_key(key_path), pub)


class Device:
    """One device's job channel on a real link: trust, update machine, outbox, pump."""

    def __init__(self, broker: Mosquitto, state: Path, keys: Keys) -> None:
        (state / "trust").mkdir(parents=True)
        shutil.copy(keys.pub, state / "trust" / keys.pub.name)
        self.target = MiniTarget(state)
        self.control = RecordingControl()
        self.link = MqttLink(MqttSettings(url=broker.url, client_id=DEVICE, backoff_min_s=0.1))
        self.outbox = Outbox(state / "outbox" / "outbox.db")
        self.pump = OutboxPump(self.outbox, self.link, retry_s=0.1)
        self.target.events.subscribe(StatusPublisher(self.outbox, TOPICS, DEVICE, self.pump.kick))
        self.jobs = MqttJobs(
            device_id=DEVICE,
            group=GROUP,
            topics=TOPICS,
            trust=TrustStore(state / "trust"),
            target=self.target,
            sampling=self.control,
        )
        for topic_filter in self.jobs.filters():
            self.link.subscribe(topic_filter, self.jobs.on_message, qos=1)
        # sent after the SUBSCRIBE on the same connection: once it is seen, jobs reach the device
        self.link.on_connect(self._online)
        self.pump.start()
        self.link.start()

    def _online(self) -> None:
        payload = state_payload(
            device=DEVICE, group=GROUP, phase="IDLE", fps=0.0, uptime_s=0.0, agent_version="t", ts=0.0
        )
        self.link.publish(TOPICS.state(DEVICE), payload, retain=True)

    def close(self) -> None:
        self.pump.stop()
        self.link.stop()
        self.outbox.close()


class Statuses:
    """Every status on the broker (raw: a REJECTED after a SUCCEEDED of the same id too)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.sub = Subscriber(broker, [TOPICS.all_status(), TOPICS.state(DEVICE)])

    def of(self, job_id: str) -> list[dict[str, Any]]:
        topic = TOPICS.status(DEVICE, job_id)
        out = []
        for payload in self.sub.payloads(topic):
            parse_status(payload)  # well formed, by the fleet's parser
            out.append(json.loads(payload))
        return out

    def wait(self, job_id: str, count: int = 1) -> list[dict[str, Any]]:
        assert self.sub.wait_for(lambda: len(self.of(job_id)) >= count, WAIT), (job_id, self.of(job_id))
        return self.of(job_id)


@pytest.fixture
def device(mosquitto: Mosquitto, tmp_path: Path, keys: Keys) -> Iterator[tuple[Device, Statuses]]:
    statuses = Statuses(mosquitto)
    dev = Device(mosquitto, tmp_path / "device", keys)
    try:
        assert statuses.sub.wait_for(lambda: bool(statuses.sub.payloads(TOPICS.state(DEVICE))), WAIT)
        yield dev, statuses
    finally:
        dev.close()
        statuses.sub.close()


@pytest.fixture
def fleet(mosquitto: Mosquitto, keys: Keys) -> Iterator[FleetClient]:
    settings = MqttSettings(url=mosquitto.url, client_id="fleet-test", clean_start=True, session_expiry_s=0)
    with FleetClient(settings, key=keys.key) as client:
        client.watch()
        client.connect(WAIT)
        yield client


def signed(keys: Keys, job_id: str, action: str = "sampling", **fields: Any) -> dict[str, Any]:
    """A job signed by the fleet key, built without the fleet's own policy check."""
    now = int(fields.pop("now", None) or time.time())
    if action == "sampling":
        fields.setdefault("sampling", POLICY)
    job = build_job(
        job_id=job_id,
        action=action,
        devices=[DEVICE],
        issued_at=now - 5,
        expires_at=fields.pop("expires_at", now + 3600),
        nonce=fields.pop("nonce", None) or new_nonce(),
        **fields,
    )
    return sign_object(job, keys.key)


def publish(broker: Mosquitto, job: Mapping[str, Any]) -> None:
    mosquitto_pub(broker, TOPICS.device_notify(DEVICE), json.dumps(job))


# --------------------------------------------------------------------------- over the broker


def test_a_signed_sampling_job_sets_the_policy_once_and_succeeds(
    device: tuple[Device, Statuses], fleet: FleetClient
) -> None:
    dev, statuses = device
    job_id = fleet.sampling([DEVICE], policy=POLICY, job_id="sampling-1")
    got = fleet.wait_jobs(job_id, [DEVICE], WAIT)
    assert got[DEVICE].status is JobStatus.SUCCEEDED, got
    assert got[DEVICE].reason == "policy set: 1 strategies"
    assert dev.control.policies == [(POLICY, "sampling-1")] and dev.control.captures == []
    assert [(s["status"], s["reason"]) for s in statuses.wait(job_id)] == [
        ("SUCCEEDED", "policy set: 1 strategies")
    ]
    assert dev.target.machine.has_seen("sampling-1")


def test_a_group_capture_asks_for_the_next_n_frames(
    device: tuple[Device, Statuses], fleet: FleetClient
) -> None:
    dev, _ = device
    job_id = fleet.capture(group=GROUP, frames=7, job_id="capture-1")
    got = fleet.wait_jobs(job_id, fleet.members(GROUP), WAIT)
    assert fleet.members(GROUP) == [DEVICE]
    assert (got[DEVICE].status, got[DEVICE].reason) == (JobStatus.SUCCEEDED, "capturing the next 7 frames")
    assert dev.control.captures == [(7, "capture-1")] and dev.control.policies == []


def test_a_bad_policy_is_rejected_invalid_policy_naming_the_key(
    mosquitto: Mosquitto, device: tuple[Device, Statuses], keys: Keys
) -> None:
    dev, statuses = device
    publish(mosquitto, signed(keys, "sampling-bad", sampling={**POLICY, "dedup_bits": 99}))
    [status] = statuses.wait("sampling-bad")
    assert status["status"] == "REJECTED"
    assert status["reason"].startswith("invalid_policy: sampling job.dedup_bits: "), status
    assert len(dev.control.policies) == 1  # judged by the collector, once


def _unsigned(keys: Keys) -> dict[str, Any]:
    job = signed(keys, "job-x")
    return {k: v for k, v in job.items() if k not in ("signature", "key_id")}


def _tampered(keys: Keys) -> dict[str, Any]:
    return {**signed(keys, "job-x"), "sampling": {**POLICY, "dedup_bits": 0}}


def _expired(keys: Keys) -> dict[str, Any]:
    return signed(keys, "job-x", now=1_000_000, expires_at=1_000_100)


def _other_key(keys: Keys) -> dict[str, Any]:
    return sign_object({k: v for k, v in signed(keys, "job-x").items()}, Ed25519PrivateKey.generate())


def _capture_unsigned(keys: Keys) -> dict[str, Any]:
    job = signed(keys, "job-x", action="capture", frames=3)
    return {k: v for k, v in job.items() if k != "signature"}


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_unsigned, "unsigned"),
        (_tampered, "bad_signature"),
        (_other_key, "unknown_key"),
        (_expired, "expired"),
        (_capture_unsigned, "unsigned"),
    ],
)
def test_untrusted_jobs_are_rejected_and_never_reach_the_collector(
    mosquitto: Mosquitto,
    device: tuple[Device, Statuses],
    keys: Keys,
    make: Callable[[Keys], dict[str, Any]],
    code: str,
) -> None:
    dev, statuses = device
    publish(mosquitto, make(keys))
    [status] = statuses.wait("job-x")
    assert status["status"] == "REJECTED" and status["reason"].startswith(f"{code}: "), status
    assert dev.control.policies == [] and dev.control.captures == []


def test_a_replayed_sampling_job_is_rejected_and_the_policy_set_once(
    mosquitto: Mosquitto, device: tuple[Device, Statuses], keys: Keys
) -> None:
    dev, statuses = device
    first = signed(keys, "sampling-r")
    publish(mosquitto, first)
    publish(mosquitto, first)  # the same job again (QoS 1 is at least once): ignored
    publish(mosquitto, signed(keys, "sampling-r"))  # the same id, a new nonce: a replay
    publish(mosquitto, signed(keys, "sampling-s", nonce=first["nonce"]))  # the nonce again: a replay
    assert [s["status"] for s in statuses.wait("sampling-r", 2)] == ["SUCCEEDED", "REJECTED"]
    assert statuses.of("sampling-r")[1]["reason"].startswith("replay: ")
    [other] = statuses.wait("sampling-s")
    assert other["status"] == "REJECTED" and other["reason"].startswith("replay: ")
    assert dev.control.policies == [(POLICY, "sampling-r")]
    assert dev.jobs.duplicates == 1


def test_with_sampling_off_both_actions_are_unsupported(
    device: tuple[Device, Statuses], fleet: FleetClient
) -> None:
    dev, _ = device
    dev.jobs.sampling = None
    for job_id in (fleet.sampling([DEVICE], policy=POLICY), fleet.capture([DEVICE], frames=1)):
        got = fleet.wait_jobs(job_id, [DEVICE], WAIT)[DEVICE]
        assert got.status is JobStatus.REJECTED and got.reason == f"unsupported_action: {SAMPLING_OFF}"
    assert dev.control.policies == [] and dev.control.captures == []


# --------------------------------------------------------------------------- in process


@pytest.fixture
def channel(tmp_path: Path, keys: Keys) -> Iterator[Channel]:
    from tests.test_mqtt_jobs import EventLog, trust_for

    state = tmp_path / "inproc"
    target = MiniTarget(state)
    outbox = Outbox(state / "outbox" / "outbox.db")
    log = EventLog()
    target.events.subscribe(log)

    @dataclass
    class _Fleet:
        pub: Path

    jobs = MqttJobs(
        device_id=DEVICE,
        group=GROUP,
        topics=TOPICS,
        trust=trust_for(state, _Fleet(keys.pub)),  # type: ignore[arg-type]
        target=target,
        sampling=RecordingControl(),
    )
    yield Channel(jobs, target, log, outbox, TOPICS.device_notify(DEVICE))
    outbox.close()


def test_a_collector_that_cannot_apply_it_now_is_not_applicable(channel: Channel, keys: Keys) -> None:
    control = channel.jobs.sampling
    assert isinstance(control, RecordingControl)
    control.error = TransientError("the spool's disk is full")
    channel.send(json.dumps(signed(keys, "capture-1", action="capture", frames=2)).encode())
    [(_, event)] = channel.log.events
    assert event.status is JobStatus.REJECTED and reason_code(event) == "not_applicable"
    assert "disk is full" in (event.reason or "")


def test_a_bug_in_the_collector_is_not_swallowed_as_a_rejection(channel: Channel, keys: Keys) -> None:
    control = channel.jobs.sampling
    assert isinstance(control, RecordingControl)
    control.error = KeyError("a bug")
    with pytest.raises(KeyError):
        channel.send(json.dumps(signed(keys, "sampling-1")).encode())
    assert channel.log.events == [] and channel.jobs.rejected == 0


# --------------------------------------------------------------------------- the fleet's checks


def test_make_job_checks_the_policy_with_the_devices_parser(keys: Keys) -> None:
    with pytest.raises(ConfigError, match=r"^sampling\.dedup_bits: must be a whole number in 0-32"):
        make_job(keys.key, action="sampling", devices=["a"], sampling={"dedup_bits": 99}, now=1000.0)
    with pytest.raises(ConfigError, match="only a sampling job"):
        make_job(keys.key, action="sampling", devices=["a"], now=1000.0)
    with pytest.raises(ConfigError, match="only a capture job"):
        make_job(keys.key, action="rollback", devices=["a"], frames=3, now=1000.0)
    with pytest.raises(ConfigError, match=r"^frames: "):
        make_job(keys.key, action="capture", devices=["a"], frames=0, now=1000.0)
    job = parse_job(
        json.dumps(make_job(keys.key, action="sampling", group="g", sampling=POLICY, now=9.0)).encode()
    )
    assert (job.action, job.sampling, job.issued_at) == ("sampling", POLICY, 9)


def test_fleet_client_refuses_a_bad_policy_before_signing(mosquitto: Mosquitto, keys: Keys) -> None:
    settings = MqttSettings(url=mosquitto.url, client_id="fleet-unconnected")
    client = FleetClient(settings, key=keys.key)  # never connected: nothing could be sent
    with pytest.raises(ConfigError, match="strategies"):
        client.sampling(group=GROUP, policy={"strategies": [{"name": "x", "kind": "psychic"}]})


# --------------------------------------------------------------------------- the CLI


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sampling_cli_with_a_bad_policy_exits_2_naming_the_key_before_publishing(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[sampling]\ndedup_window = "10m"\n\n'
        '[[sampling.strategies]]\nname = "u"\nkind = "uncertain"\nlow = 0.7\nhigh = 0.2\n'
    )
    # a broker that is not there: reaching for it would fail (exit 1) instead of exit 2
    base = [
        "fleet",
        "sampling",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--device",
        DEVICE,
        "--key",
        str(keys.path),
    ]
    code, out, err = run([*base, "--policy", str(bad)], capsys)
    assert code == 2 and out == ""
    assert f"{bad} [sampling]" in err and "low" in err, err
    for text, needle in (
        ("[upload]\nurl = 's3://b/p'\n", "no [sampling] table"),
        ('{"dedup_bits": "six"}', "dedup_bits"),
        ("[sampling]\nno_such_key = 1\n", "no_such_key"),
        ("[sampling\n", "not TOML"),
    ):
        bad.write_text(text)
        code, _, err = run([*base, "--policy", str(bad)], capsys)
        assert code == 2 and needle in err, (text, err)
    code, _, err = run(["fleet", "capture", *base[2:], "--frames", "1001"], capsys)
    assert code == 2 and "--frames 1001" in err


@pytest.mark.parametrize("form", ["config.toml", "policy.json"])
def test_sampling_cli_sends_the_policy_and_waits_for_success(
    mosquitto: Mosquitto,
    device: tuple[Device, Statuses],
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    dev, _ = device
    path = tmp_path / form
    if form.endswith(".json"):
        path.write_text(json.dumps(POLICY))
    else:  # a whole agent config: only its [sampling] table is sent
        path.write_text(
            '[mqtt]\nurl = "mqtt://x"\n\n[sampling]\ndedup_bits = 6\ndedup_window = "10m"\n\n'
            '[[sampling.strategies]]\nname = "unsure"\nkind = "uncertain"\n'
            "low = 0.3\nhigh = 0.6\nper_minute = 10\n"
        )
    argv = ["fleet", "sampling", "--broker", mosquitto.url, "--group", GROUP, "--key", str(keys.path),
            "--policy", str(path), "--wait", str(WAIT), "--job-id", "sampling-cli"]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, (out, err)
    assert "sampling job sampling-cli sent to group lobby" in out
    assert re.search(r"^cam-1 +SUCCEEDED +policy set: 1 strategies$", out, re.M), out
    assert "every device SUCCEEDED" in out
    assert dev.control.policies == [(POLICY, "sampling-cli")]


def test_capture_cli_exits_1_when_a_device_refuses(
    mosquitto: Mosquitto,
    device: tuple[Device, Statuses],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dev, _ = device
    dev.jobs.sampling = None
    argv = ["fleet", "capture", "--broker", mosquitto.url, "--device", DEVICE, "--key", str(keys.path),
            "--frames", "5", "--wait", str(WAIT), "--job-id", "capture-cli"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "REJECTED" in out and "unsupported_action" in out and "not every device SUCCEEDED" in out


def test_job_cli_prints_a_signed_sampling_job(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(POLICY))
    base = ["fleet", "job", "--group", GROUP, "--key", str(keys.path)]
    code, out, err = run([*base, "--action", "sampling", "--policy", str(path)], capsys)
    assert code == 0 and "edge/v1/group/lobby/jobs/notify" in err
    job = parse_job(out.strip().encode())
    assert TrustStore.from_keys([load_public_key(keys.pub)]).verify_object(job.to_json())
    assert (job.action, job.sampling) == ("sampling", POLICY)
    code, out, _ = run([*base, "--action", "capture", "--frames", "4"], capsys)
    assert code == 0 and parse_job(out.strip().encode()).frames == 4
    for extra, needle in (
        (["--action", "sampling"], "--policy"),
        (["--action", "pin", "--frames", "2"], "--frames"),
    ):
        code, _, err = run([*base, *extra], capsys)
        assert code == 2 and needle in err
