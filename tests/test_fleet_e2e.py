"""The fleet end to end with the real parts: many ``edge-agent run --mqtt`` processes in one
group, ``edge-agent fleet deploy`` to the group and in waves that abort, mutual TLS, and a
broker ACL that confines each device to its own topics (the ACL docs/deploy.md shows)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.fixtures.agent import ROOT, stop_agent
from tests.fixtures.bundle_server import BundleServer
from tests.fixtures.fleet import (
    PREFIX,
    STEPS,
    Keys,
    StatusFeed,
    fleet_cli,
    publish_bundle,
    start_device,
    status_feed,
)
from tests.fixtures.mosquitto import HOST, Mosquitto, mosquitto_pub
from tests.fixtures.need import unavailable

Make = Callable[..., Path]
LIGHT = "synthetic:16x16@5,live"  # paced at 5 fps: twenty agents on two cores

# The ACL of docs/deploy.md ("Broker ACL"), byte for byte: the test checks the docs carry it.
ACL = """\
# Devices: the username is the device id (a password file entry, or the client
# certificate's CN with use_identity_as_username).
pattern write edge/v1/%u/state
pattern write edge/v1/%u/jobs/+/status
pattern write edge/v1/%u/telemetry
pattern write edge/v1/%u/alerts
pattern write edge/v1/%u/events
pattern read edge/v1/%u/jobs/notify
pattern read edge/v1/group/+/jobs/notify

# The fleet (edge-agent fleet, dashboards): send jobs, read everything.
user fleet
topic write edge/v1/+/jobs/notify
topic write edge/v1/group/+/jobs/notify
topic readwrite edge/v1/_fleet/#
topic read edge/v1/#
"""


@contextlib.contextmanager
def watching(broker: Mosquitto, tmp: Path, **kw: Any) -> Iterator[StatusFeed]:
    """``status_feed`` as a context manager."""
    yield from status_feed(broker, tmp, **kw)


def online(feed: StatusFeed, device: str, version: int | None = None) -> bool:
    s = feed.state(device)
    return bool(
        s and s.get("online") and s.get("phase") == "IDLE" and (version is None or s["version"] == version)
    )


def senders(feed: StatusFeed, job_id: str) -> set[str]:
    """The devices that published any status for ``job_id``."""
    with feed.cv:
        return {t.split("/")[2] for t, _ in feed.lines if t.endswith(f"/jobs/{job_id}/status")}


def finals(feed: StatusFeed, job_id: str) -> dict[str, str]:
    """device -> its last terminal status for ``job_id``."""
    out: dict[str, str] = {}
    with feed.cv:
        for t, d in feed.lines:
            if t.endswith(f"/jobs/{job_id}/status") and d["status"] in ("SUCCEEDED", "FAILED", "REJECTED"):
                out[t.split("/")[2]] = d["status"]
    return out


class Agents:
    """Agent processes started here; their output drained (a full pipe would stall them)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.output: dict[int, list[str]] = {}

    def add(self, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.procs.append(proc)
        lines = self.output.setdefault(proc.pid, [])
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                threading.Thread(target=lambda s=stream: lines.extend(s), daemon=True).start()
        return proc

    def stop(self) -> None:
        """``stop_agent`` on each, all at once."""
        threads = [threading.Thread(target=stop_agent, args=(p,)) for p in self.procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def paho_connect(port: int, *, ca: Path | None = None, timeout: float = 10.0, **login: str) -> bool:
    """Whether an MQTT 5 paho client is let in: True on a successful CONNACK, False when the
    broker refuses it or drops the connection first."""
    done = threading.Event()
    result: list[bool] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        result.append(not rc.is_failure)
        done.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, _rc: ReasonCode, _p: object) -> None:
        result.append(False)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-connect", protocol=mqtt.MQTTv5)
    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    if ca is not None:
        client.tls_set(str(ca))
    if login:
        client.username_pw_set(login["username"], login.get("password"))
    try:
        client.connect(HOST, port, keepalive=10)
    except OSError:
        return False  # refused during the handshake
    client.loop_start()
    try:
        assert done.wait(timeout), "neither a CONNACK nor a disconnect"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()


def capture_job(keys: Keys, job_id: str, device: str) -> bytes:
    """A signed job every device answers at once (REJECTED unsupported_action: these agents run
    with sampling off), changing nothing."""
    from ota.protocol import build_job, new_nonce
    from ota.trust import canonical_json, load_private_key, sign_object

    now = int(time.time())
    job = build_job(
        job_id=job_id,
        action="capture",
        nonce=new_nonce(),
        devices=[device],
        issued_at=now,
        expires_at=now + 600,
        frames=1,
    )
    return canonical_json(sign_object(job, load_private_key(keys.key)))


def deploy(tmp: Path, broker_url: str, url: str, keys: Keys, job_id: str, *more: str) -> str:
    """``edge-agent fleet deploy``; returns its output; the exit code is the caller's to check."""
    r = fleet_cli(
        tmp, "deploy", "--broker", broker_url, "--manifest-url", url, "--key", str(keys.key),
        "--job-id", job_id, "--journal", str(tmp / f"{job_id}.jsonl"), *more,
        timeout=300,
    )  # fmt: skip
    return f"exit {r.returncode}\n{r.stdout}{r.stderr}"


# --------------------------------------------------------------------------- a group of 20


@pytest.mark.slow
def test_group_deploy_to_20_agents_and_a_staged_rollout_that_aborts(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bundle_server: BundleServer,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """(a) One group job takes all 20 from v1 to v2. (b) v3 (passes validation, fails probation)
    in waves 1, 25 %, 100 %: the first device fails and returns to v2, the rollout aborts,
    and no other device ever hears of v3."""
    devices = [f"cam-{i:02d}" for i in range(20)]
    seed = classifier_bundle(1)
    v2_url, _ = publish_bundle(classifier_bundle(2, strength=25.0), bundle_server, "v2", keys.key)
    v3_url, _ = publish_bundle(classifier_bundle(3, strength=0.0), bundle_server, "v3", keys.key)
    with watching(mosquitto, tmp_path) as feed:
        agents = Agents()
        try:
            for d in devices:
                proc, _ = start_device(
                    tmp_path, mosquitto.url, d, seed, keys, group="store-1", source=LIGHT, probation_frames=10
                )
                agents.add(proc)
            feed.wait(lambda: all(online(feed, d, 1) for d in devices), 150, "20 agents online serving v1")

            # (a) one job to the group's topic
            out = deploy(
                tmp_path, mosquitto.url, v2_url, keys, "group-v2", "--group", "store-1", "--timeout", "240"
            )
            assert out.startswith("exit 0\n"), out
            assert "20 device(s) in 1 wave(s)" in out, out
            feed.wait(lambda: all(online(feed, d, 2) for d in devices), 60, "all 20 serving v2")
            assert finals(feed, "group-v2") == dict.fromkeys(devices, "SUCCEEDED")

            # (b) waves 1, 25 %, 100 % of a bundle that fails probation
            out = deploy(
                tmp_path, mosquitto.url, v3_url, keys, "staged-v3", "--group", "store-1",
                "--waves", "1,25%,100%", "--abort-failed-pct", "1", "--min-executed", "1",
                "--rollback-on-abort", "--timeout", "240",
            )  # fmt: skip
            assert not out.startswith("exit 0\n"), out
            assert "ABORTED" in out, out
            first, rest = devices[0], devices[1:]  # members are sorted; wave 1 is one device
            final = feed.wait_final("staged-v3", 30)
            assert (final["status"], final["detail"]) == ("FAILED", "rolled_back"), final
            assert ("IN_PROGRESS", "rolling_back") in feed.chain("staged-v3")
            feed.wait(lambda: online(feed, first, 2), 60, f"{first} back on v2")
            journal = [json.loads(line) for line in (tmp_path / "staged-v3.jsonl").read_text().splitlines()]
            assert {r["device"] for r in journal if r["event"] in ("signed", "sent")} == {first}, journal

            # A fence: a job each other device answers at once, on the topic the rollout would have
            # used. Delivery is in order, so once it is answered an earlier v3 job would have been too.
            for d in rest:
                mosquitto_pub(mosquitto, f"{PREFIX}/{d}/jobs/notify", capture_job(keys, f"fence-{d}", d))
            for d in rest:
                assert feed.wait_final(f"fence-{d}", 60)["reason"].startswith("unsupported_action"), d
            assert senders(feed, "staged-v3") == {first}
            assert all(online(feed, d, 2) for d in devices), {d: feed.state(d) for d in devices}
        finally:
            agents.stop()
    assert all(p.returncode == 0 for p in agents.procs), [p.returncode for p in agents.procs]


# --------------------------------------------------------------------------- mutual TLS


@pytest.mark.slow
def test_deploy_over_mutual_tls(
    tmp_path: Path,
    mosquitto_tls: Mosquitto,
    bundle_server: BundleServer,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """Device, fleet command and watcher each with their own client certificate on the TLS
    listener; a client without a certificate is refused."""
    broker = mosquitto_tls
    assert broker.ca is not None and broker.tls_port is not None
    device, fleet = broker.ca.make_client_cert("cam-1"), broker.ca.make_client_cert("fleet")
    url, _ = publish_bundle(classifier_bundle(2, strength=25.0), bundle_server, "v2", keys.key)
    mqtt_section = f'[mqtt]\nca = "{broker.ca.ca_path}"\ncert = "{device.cert}"\nkey = "{device.key}"\n'
    with watching(broker, tmp_path, tls=fleet) as feed:
        agents = Agents()
        try:
            proc, _ = start_device(
                tmp_path, broker.tls_url, "cam-1", classifier_bundle(1), keys, extra_config=mqtt_section
            )
            agents.add(proc)
            feed.wait(lambda: online(feed, "cam-1", 1), 90, "cam-1 online over TLS")
            out = deploy(
                tmp_path, broker.tls_url, url, keys, "tls-v2", "--device", "cam-1", "--timeout", "120",
                "--ca", str(broker.ca.ca_path), "--cert", str(fleet.cert), "--client-key", str(fleet.key),
            )  # fmt: skip
            assert out.startswith("exit 0\n"), out
            assert feed.wait_final("tls-v2", 30)["status"] == "SUCCEEDED"
            assert feed.chain("tls-v2") == STEPS
            feed.wait(lambda: online(feed, "cam-1", 2), 60, "cam-1 serving v2")

            # no client certificate: the TLS handshake fails, nothing is read
            tool = shutil.which("mosquitto_sub") or unavailable("mosquitto_sub is not installed")
            refused = subprocess.run(
                [tool, "-h", HOST, "-p", str(broker.tls_port), "--cafile", str(broker.ca.ca_path),
                 "-V", "mqttv5", "-t", f"{PREFIX}/+/state", "-C", "1", "-W", "10", "-v"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            assert refused.returncode != 0, refused
            assert refused.stdout == "", refused.stdout  # a retained state was there to read
            assert "error" in refused.stderr.lower(), refused.stderr
            # and with paho (MQTT 5, as the agent connects): no CONNACK, the connection drops
            assert paho_connect(broker.tls_port, ca=broker.ca.ca_path) is False
        finally:
            agents.stop()


# --------------------------------------------------------------------------- broker ACL


class Publisher:
    """A paho MQTT 5 client logged in with a password; ``publish`` returns the PUBACK's reason code."""

    def __init__(self, broker: Mosquitto, username: str, password: str, client_id: str) -> None:
        self._cv = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._connected: ReasonCode | None = None
        self.received: list[str] = []  # topics of the messages delivered to it
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(HOST, broker.port, keepalive=10)
        self.client.loop_start()
        with self._cv:
            assert self._cv.wait_for(lambda: self._connected is not None, 10), "no CONNACK"
        assert self._connected is not None and not self._connected.is_failure, self._connected

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self._cv:
            self._connected = rc
            self._cv.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._cv:
            self._acks[mid] = rc
            self._cv.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self._cv:
            self._acks[mid] = rcs[0]
            self._cv.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            self.received.append(msg.topic)
            self._cv.notify_all()

    def wait_received(self, topic: str, count: int = 1, timeout: float = 10.0) -> None:
        with self._cv:
            ok = self._cv.wait_for(lambda: self.received.count(topic) >= count, timeout)
            assert ok, f"{count} message(s) on {topic}: got {self.received}"

    def subscribe(self, topic: str) -> ReasonCode:
        """The SUBACK's reason code (mosquitto 2.0 grants any subscription; it checks read
        access when it delivers)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._cv:
            assert self._cv.wait_for(lambda: mid in self._acks, 10), f"no SUBACK for {topic}"
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cv:
            assert self._cv.wait_for(lambda: info.mid in self._acks, 10), f"no PUBACK for {topic}"
            return self._acks.pop(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 0x87


@pytest.mark.slow
def test_acl_confines_a_device_to_its_own_topics(
    tmp_path: Path, bundle_server: BundleServer, keys: Keys, classifier_bundle: Make
) -> None:
    """Under the documented ACL (password logins, the username is the device id) a real agent
    and a real fleet deploy work, and a device's credentials cannot send jobs (to itself, to
    another device, to a group) nor speak for another device."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f"```text\n{ACL}```" in docs, "docs/deploy.md does not show the ACL this test checks"
    users = {"cam-1": "pw-cam-1", "cam-2": "pw-cam-2", "fleet": "pw-fleet"}
    broker = Mosquitto(tmp_path / "broker", users=users, acl=ACL)
    broker.start()
    try:
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        for user, password in users.items():
            (secrets / user).write_text(password + "\n")
        url, _ = publish_bundle(classifier_bundle(2, strength=25.0), bundle_server, "v2", keys.key)
        login = f'[mqtt]\nusername = "cam-1"\npassword_file = "{secrets / "cam-1"}"\n'
        with watching(broker, tmp_path, login=("fleet", users["fleet"])) as feed:
            agents = Agents()
            probes: list[Publisher] = []
            try:
                assert paho_connect(broker.port, username="cam-1", password="wrong") is False
                proc, _ = start_device(
                    tmp_path,
                    broker.url,
                    "cam-1",
                    classifier_bundle(1),
                    keys,
                    group="store-1",
                    extra_config=login,
                )
                agents.add(proc)
                feed.wait(lambda: online(feed, "cam-1", 1), 90, "cam-1 online under the ACL")
                out = deploy(
                    tmp_path, broker.url, url, keys, "acl-v2", "--group", "store-1", "--timeout", "120",
                    "--username", "fleet", "--password-file", str(secrets / "fleet"),
                )  # fmt: skip
                assert out.startswith("exit 0\n"), out
                assert feed.chain("acl-v2") == STEPS
                feed.wait(lambda: online(feed, "cam-1", 2), 60, "cam-1 serving v2")

                job = capture_job(keys, "from-a-device", "cam-1")
                status = json.dumps({"job_id": "x", "status": "SUCCEEDED"}).encode()
                cam1 = Publisher(broker, "cam-1", users["cam-1"], "cam-1-probe")
                probes.append(cam1)
                # its own topics: accepted (Success, or 0x10 No matching subscribers: nobody reads telemetry)
                assert not cam1.publish(f"{PREFIX}/cam-1/telemetry", b"{}").is_failure
                denied = {
                    f"{PREFIX}/cam-1/jobs/notify": job,
                    f"{PREFIX}/cam-2/jobs/notify": job,
                    f"{PREFIX}/group/store-1/jobs/notify": job,
                    f"{PREFIX}/cam-2/jobs/x/status": status,
                    f"{PREFIX}/cam-2/state": b'{"online":false}',
                    f"{PREFIX}/_fleet/fleet-x/sync": b"1",
                }
                for topic, payload in denied.items():
                    assert cam1.publish(topic, payload).value == NOT_AUTHORIZED, topic
                # subscribing is granted; what the ACL does not let it read is never delivered (below)
                own = f"{PREFIX}/cam-1/jobs/notify"
                for topic in (
                    f"{PREFIX}/cam-2/jobs/notify",
                    f"{PREFIX}/+/jobs/+/status",
                    f"{PREFIX}/+/state",
                    own,
                ):
                    assert not cam1.subscribe(topic).is_failure, topic
                # the client id is whatever a client says; the rules go by the username the broker checked
                posing = Publisher(broker, "cam-1", users["cam-1"], "cam-2")
                probes.append(posing)
                assert (
                    posing.publish(f"{PREFIX}/cam-2/state", b'{"online":false}', retain=True).value
                    == NOT_AUTHORIZED
                )
                assert posing.publish(f"{PREFIX}/cam-2/jobs/x/status", status).value == NOT_AUTHORIZED
                # the fleet sends jobs but does not speak for devices
                fleet = Publisher(broker, "fleet", users["fleet"], "fleet-probe")
                probes.append(fleet)
                assert (
                    fleet.publish(f"{PREFIX}/cam-1/state", b'{"online":false}', retain=True).value
                    == NOT_AUTHORIZED
                )
                assert not fleet.publish(
                    f"{PREFIX}/cam-2/jobs/notify", capture_job(keys, "for-cam-2", "cam-2")
                ).is_failure
                assert not fleet.publish(own, job).is_failure
                assert feed.wait_final("from-a-device", 30)["reason"].startswith("unsupported_action")
                # a fence: delivered in order, so what cam-1 may not read (cam-2's job, cam-1's status,
                # cam-1's retained state) would have reached it before this
                assert not fleet.publish(own, capture_job(keys, "fence", "cam-1")).is_failure
                cam1.wait_received(own, 2)
                assert cam1.received == [own, own], cam1.received
                # nothing denied reached the fleet's view: cam-1 still online on v2, cam-2 never appeared
                assert online(feed, "cam-1", 2) and feed.state("cam-2") is None
                assert senders(feed, "x") == set()
                # the broker denied only the probes' publishes: none of the agent's, none of the fleet CLI's
                assert broker.log().count("Denied PUBLISH") == len(denied) + 3, broker.log()[-3000:]
            finally:
                for probe in probes:
                    probe.close()
                agents.stop()
    finally:
        broker.kill()
