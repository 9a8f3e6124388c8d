"""MqttLink: against a real mosquitto (round trips, refusals, TLS, will, back-off, sessions), plus
unit tests of the connection-state logic with a scripted paho client."""

from __future__ import annotations

import itertools
import logging
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ota.errors import ConfigError, TransientError
from ota.mqtt_link import MqttLink, MqttSettings, backoff_delay, parse_mqtt_url
from tests.fixtures.mosquitto import CertAuthority, Mosquitto, Subscriber, mosquitto_pub, mosquitto_sub

REPO = Path(__file__).resolve().parents[1]
MakeLink = Callable[..., MqttLink]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def make_link() -> Iterator[MakeLink]:
    made: list[MqttLink] = []

    def make(url: str, client_id: str = "dev1", *, start: bool = True, **kw: Any) -> MqttLink:
        rand = kw.pop("rand", random.random)
        kw.setdefault("backoff_min_s", 0.05)
        kw.setdefault("backoff_max_s", 0.5)
        link = MqttLink(MqttSettings(url=url, client_id=client_id, **kw), rand=rand)
        made.append(link)
        if start:
            link.start()
        return link

    yield make
    for link in made:
        link.stop()


def settle(link: MqttLink) -> None:
    """A PUBACK on the link's connection: the broker has processed every earlier SUBSCRIBE too."""
    assert link.wait_connected(5), link.last_error
    assert link.publish("test/settle", b"", qos=1).wait(5)


class Inbox:
    """Collects handler calls."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.cv = threading.Condition()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self.cv:
            self.items.append((topic, payload))
            self.cv.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: len(self.items) >= n, timeout)


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", (False, "broker", 1883)),
        ("mqtts://broker", (True, "broker", 8883)),
        ("mqtt://10.0.0.2:1884", (False, "10.0.0.2", 1884)),
        ("mqtts://broker.example:9883/", (True, "broker.example", 9883)),
        ("mqtts://[::1]:8884", (True, "::1", 8884)),
    ],
)
def test_parse_mqtt_url(url: str, expected: tuple[bool, str, int]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://broker", "broker:1883", "tcp://broker", "mqtt://", "mqtt://broker:port", "mqtt://broker:0",
     "mqtt://u:p@broker", "mqtt://broker/topic", "mqtt://broker?x=1", "ws://broker"],
)  # fmt: skip
def test_parse_mqtt_url_refuses_with_the_fix(url: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt://|username"):
        parse_mqtt_url(url)


@pytest.mark.parametrize(
    ("attempt", "r", "expected"),
    [
        (0, 0.0, 0.5),  # never below the minimum
        (0, 1.0, 1.0),  # first retry: up to 2 x min
        (1, 1.0, 2.0),
        (3, 1.0, 8.0),
        (1, 0.5, 1.25),  # jitter: uniform between min and the ceiling
        (10, 1.0, 60.0),  # capped
        (10_000, 1.0, 60.0),  # no overflow
    ],
)
def test_backoff_delay(attempt: int, r: float, expected: float) -> None:
    assert backoff_delay(attempt, 0.5, 60.0, r) == pytest.approx(expected)


def test_settings_that_cannot_work_fail_at_construction(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\nignored\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    ca = CertAuthority(tmp_path / "pki")
    good = ca.make_client_cert("dev1")
    cases: list[tuple[MqttSettings, str]] = [
        (MqttSettings("mqtt://h", "dev1", username="u", password_file=tmp_path / "missing"), "password_file"),
        (MqttSettings("mqtt://h", "dev1", username="u", password_file=empty), "first line is empty"),
        (MqttSettings("mqtt://h", "dev1", password_file=pw), "username"),
        (MqttSettings("mqtt://h", "dev1", cert=good.cert, key=good.key), "mqtts://"),
        (MqttSettings("mqtts://h", "dev1", ca=tmp_path / "nope.pem"), "no such file"),
        (MqttSettings("mqtts://h", "dev1", cert=good.cert), "both cert and key"),
        (MqttSettings("mqtts://h", "dev1", ca=junk), "cannot be used"),
        (MqttSettings("mqtts://h", "dev1", ca=ca.ca_path, cert=good.cert, key=junk), "cannot be used"),
        (MqttSettings("mqtt://h", "dev1", will_topic="t"), "will"),
        (MqttSettings("mqtt://h", "dev1", will_topic="a/+", will_payload=b"x"), "will"),
        (MqttSettings("mqtt://h", "", backoff_min_s=1), "client_id"),
        (MqttSettings("mqtt://h", "dev1", backoff_min_s=5, backoff_max_s=1), "back-off"),
    ]
    for settings, fragment in cases:
        with pytest.raises(ConfigError, match=fragment):
            MqttLink(settings)
    MqttLink(MqttSettings("mqtt://h", "dev1", username="u", password_file=pw))  # the good one builds


# ---------------------------------------------------------------- state logic, scripted client

Action = Callable[["ScriptedClient"], MQTTErrorCode]


class ScriptedClient(mqtt.Client):
    """A paho client without a network: ``connect`` succeeds, ``loop`` runs queued actions."""

    def __init__(self, client_id: str) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self.connects = 0
        self.early_ack = False

    def connect(
        self,
        host: str,
        port: int = 1883,
        keepalive: int = 60,
        bind_address: str = "",
        bind_port: int = 0,
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties: Properties | None = None,
    ) -> MQTTErrorCode:
        self.connects += 1
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        try:
            action = self.actions.get(timeout=min(timeout, 0.02))
        except queue.Empty:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return action(self)

    def disconnect(
        self, reasoncode: ReasonCode | None = None, properties: Properties | None = None
    ) -> MQTTErrorCode:
        self.actions.put(lambda c: c.fire_disconnect(0))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(
        self,
        topic: str,
        payload: mqtt.PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        info = super().publish(topic, payload, qos, retain, properties)
        if self.early_ack:  # the PUBACK is handled before publish() returns to its caller
            self.fire_puback(info.mid, 0)
        return info

    def fire_connack(self, code: int) -> MQTTErrorCode:
        cb = cast(mqtt.CallbackOnConnect_v2, self.on_connect)
        props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
        cb(self, None, mqtt.ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, identifier=code), props)
        return MQTTErrorCode.MQTT_ERR_SUCCESS if code == 0 else MQTTErrorCode.MQTT_ERR_CONN_REFUSED

    def fire_disconnect(self, code: int) -> MQTTErrorCode:
        cb = cast(mqtt.CallbackOnDisconnect_v2, self.on_disconnect)
        cb(self, None, mqtt.DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT, identifier=code), None)
        return MQTTErrorCode.MQTT_ERR_CONN_LOST if code else MQTTErrorCode.MQTT_ERR_NO_CONN

    def fire_puback(self, mid: int, code: int) -> MQTTErrorCode:
        cb = cast(mqtt.CallbackOnPublish_v2, self.on_publish)
        props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
        cb(self, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=code), props)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


@pytest.fixture
def scripted() -> Iterator[tuple[MqttLink, ScriptedClient]]:
    clients: list[ScriptedClient] = []

    def factory(client_id: str) -> mqtt.Client:
        clients.append(ScriptedClient(client_id))
        return clients[-1]

    settings = MqttSettings("mqtt://broker", "dev1", backoff_min_s=0.001, backoff_max_s=0.002)
    link = MqttLink(settings, client_factory=factory, rand=lambda: 0.0)
    yield link, clients[0]
    link.stop()


def run_on_link(client: ScriptedClient, fn: Callable[[ScriptedClient], MQTTErrorCode]) -> MQTTErrorCode:
    """Run ``fn`` as one ``loop()`` step on the link thread and return its result."""
    done: queue.SimpleQueue[MQTTErrorCode] = queue.SimpleQueue()

    def action(c: ScriptedClient) -> MQTTErrorCode:
        rc = fn(c)
        done.put(rc)
        return rc

    client.actions.put(action)
    return done.get(timeout=5)


def test_refused_connack_never_marks_connected(scripted: tuple[MqttLink, ScriptedClient]) -> None:
    link, client = scripted
    calls: list[str] = []
    link.on_connect(lambda: calls.append("connect"))
    link.on_disconnect(lambda: calls.append("disconnect"))
    link.start()
    seen: list[bool] = []

    def refuse(c: ScriptedClient) -> MQTTErrorCode:
        rc = c.fire_connack(0x86)  # bad user name or password
        seen.append(link.connected)  # right after paho's on_connect: still not connected
        c.fire_disconnect(0x82)
        return rc

    run_on_link(client, refuse)
    assert wait_until(lambda: client.connects >= 2)  # it retried, with back-off
    assert seen == [False]
    assert not link.connected
    assert isinstance(link.last_error, ConfigError)
    assert "Bad user name or password" in str(link.last_error)
    assert link.failed_attempts >= 1
    with pytest.raises(TransientError):
        link.publish("t", b"x")

    run_on_link(client, lambda c: c.fire_connack(0))
    assert link.connected and link.last_error is None and link.failed_attempts == 0
    assert calls == ["connect"]
    run_on_link(client, lambda c: c.fire_disconnect(0x8B))  # server shutting down
    assert wait_until(lambda: not link.connected and calls == ["connect", "disconnect"])
    assert isinstance(link.last_error, TransientError)


def test_puback_before_publish_returns_is_not_lost(scripted: tuple[MqttLink, ScriptedClient]) -> None:
    link, client = scripted
    link.start()
    run_on_link(client, lambda c: c.fire_connack(0))
    client.early_ack = True
    pub = link.publish("edge/v1/dev1/telemetry", b"{}")
    assert pub.wait(5) and pub.ok and not pub.refused


def test_puback_failure_code_and_disconnect_fail_publications(
    scripted: tuple[MqttLink, ScriptedClient],
) -> None:
    link, client = scripted
    link.start()
    run_on_link(client, lambda c: c.fire_connack(0))
    refused = link.publish("edge/v1/other/state", b"{}")
    assert refused.mid is not None
    run_on_link(client, lambda c: c.fire_puback(cast(int, refused.mid), 0x87))
    assert not refused.wait(5) and refused.done and refused.refused
    assert "Not authorized" in (refused.reason or "")

    pending = [link.publish("edge/v1/dev1/telemetry", b"{}") for _ in range(3)]
    run_on_link(client, lambda c: c.fire_disconnect(0x8B))
    for pub in pending:
        assert not pub.wait(5) and pub.done and not pub.refused


def test_listener_errors_are_counted_and_the_link_stays_up(
    scripted: tuple[MqttLink, ScriptedClient],
) -> None:
    link, client = scripted

    def broken() -> None:
        raise RuntimeError("listener bug")

    link.on_connect(broken)
    link.start()
    run_on_link(client, lambda c: c.fire_connack(0))
    assert link.connected and link.handler_errors == 1


# ---------------------------------------------------------------- real broker


def test_round_trip(mosquitto: Mosquitto, make_link: MakeLink) -> None:
    inbox = Inbox()
    link = make_link(mosquitto.url, start=False)
    link.subscribe("edge/v1/dev1/jobs/notify", inbox)
    link.start()
    settle(link)

    mosquitto_pub(mosquitto, "edge/v1/dev1/jobs/notify", b'{"job_id": "j1"}')
    assert inbox.wait_for(1)
    assert inbox.items == [("edge/v1/dev1/jobs/notify", b'{"job_id": "j1"}')]

    sub = Subscriber(mosquitto, "edge/v1/dev1/#")
    try:
        pub = link.publish("edge/v1/dev1/state", b'{"online": true}', retain=True)
        assert pub.wait(5) and pub.ok
        assert sub.wait_for(lambda: b'{"online": true}' in sub.payloads("edge/v1/dev1/state"))
    finally:
        sub.close()
    # retained: a newcomer gets it
    assert mosquitto_sub(mosquitto, "edge/v1/dev1/state") == ['edge/v1/dev1/state {"online": true}']


def test_handler_exception_is_counted_and_the_link_stays_up(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    inbox = Inbox()

    def handler(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("handler bug")
        inbox(topic, payload)

    link = make_link(mosquitto.url, start=False)
    link.subscribe("edge/v1/dev1/jobs/notify", handler)
    link.start()
    settle(link)
    mosquitto_pub(mosquitto, "edge/v1/dev1/jobs/notify", b"boom")
    mosquitto_pub(mosquitto, "edge/v1/dev1/jobs/notify", b"fine")
    assert inbox.wait_for(1)
    assert inbox.items == [("edge/v1/dev1/jobs/notify", b"fine")]
    assert link.handler_errors == 1 and link.connected


def test_subscribe_while_connected(mosquitto: Mosquitto, make_link: MakeLink) -> None:
    link = make_link(mosquitto.url)
    settle(link)
    inbox = Inbox()
    link.subscribe("edge/v1/group/g1/jobs/notify", inbox)
    settle(link)
    mosquitto_pub(mosquitto, "edge/v1/group/g1/jobs/notify", b"x")
    assert inbox.wait_for(1)


def test_bad_password_is_refused_and_logged_once(
    tmp_path: Path, make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "broker", users={"dev1": "right"})
    broker.start()
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("wrong\n")
        right = tmp_path / "right"
        right.write_text("right\n")
        caplog.set_level(logging.INFO, logger="ota.mqtt_link")
        link = make_link(
            broker.url, username="dev1", password_file=wrong, backoff_min_s=0.01, backoff_max_s=0.02
        )
        assert wait_until(lambda: link.failed_attempts >= 3)
        assert not link.connected and not link.wait_connected(0)
        assert isinstance(link.last_error, ConfigError)
        assert "password" in str(link.last_error)
        errors = [r for r in caplog.records if r.name == "ota.mqtt_link" and r.levelno >= logging.WARNING]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # once per change, not per attempt

        good = make_link(broker.url, "dev2", username="dev1", password_file=right)
        settle(good)  # the same broker accepts the right password
    finally:
        broker.kill()


def test_mutual_tls(mosquitto_tls: Mosquitto, make_link: MakeLink) -> None:
    assert mosquitto_tls.ca is not None
    client = mosquitto_tls.ca.make_client_cert("dev1")
    link = make_link(mosquitto_tls.tls_url, ca=mosquitto_tls.ca.ca_path, cert=client.cert, key=client.key)
    sub = Subscriber(mosquitto_tls, "edge/v1/dev1/state", tls=mosquitto_tls.ca.make_client_cert("fleet"))
    try:
        settle(link)
        assert link.publish("edge/v1/dev1/state", b"tls").wait(5)
        assert sub.wait_for(lambda: b"tls" in sub.payloads())
    finally:
        sub.close()


def test_tls_without_client_certificate_is_refused(mosquitto_tls: Mosquitto, make_link: MakeLink) -> None:
    assert mosquitto_tls.ca is not None
    link = make_link(
        mosquitto_tls.tls_url, ca=mosquitto_tls.ca.ca_path, backoff_min_s=0.01, backoff_max_s=0.02
    )
    assert wait_until(lambda: link.failed_attempts >= 2)
    assert not link.connected
    assert isinstance(link.last_error, ConfigError)
    assert "client certificate" in str(link.last_error) and "set cert and key" in str(link.last_error)


def test_tls_untrusted_broker_certificate_is_refused(
    mosquitto_tls: Mosquitto, make_link: MakeLink, tmp_path: Path
) -> None:
    other = CertAuthority(tmp_path / "other-ca")
    client = other.make_client_cert("dev1")
    link = make_link(
        mosquitto_tls.tls_url, ca=other.ca_path, cert=client.cert, key=client.key, backoff_min_s=0.01
    )
    assert wait_until(lambda: link.failed_attempts >= 2)
    assert not link.connected
    assert isinstance(link.last_error, ConfigError)
    assert "not trusted" in str(link.last_error)


WILL_SCRIPT = """
import sys
from ota.mqtt_link import MqttLink, MqttSettings
settings = MqttSettings(sys.argv[1], "dev-will", will_topic="edge/v1/dev-will/state",
                        will_payload=b'{"online": false}', keepalive=5)
link = MqttLink(settings)
link.start()
assert link.wait_connected(10), link.last_error
assert link.publish("edge/v1/dev-will/state", b'{"online": true}', retain=True).wait(10)
print("up", flush=True)
sys.stdin.read()
"""


def test_last_will_is_retained_after_the_link_dies(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto, "edge/v1/dev-will/state")
    proc = subprocess.Popen(
        [sys.executable, "-c", WILL_SCRIPT, mosquitto.url],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        assert sub.wait_for(lambda: sub.payloads() == [b'{"online": true}'])
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        proc.wait(5)
        assert sub.wait_for(lambda: sub.payloads()[-1:] == [b'{"online": false}'])
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
        sub.close()
    late = Subscriber(mosquitto, "edge/v1/dev-will/state")
    try:
        assert late.wait_for(lambda: len(late.messages) == 1)
        assert late.messages[0].payload == b'{"online": false}' and late.messages[0].retain
    finally:
        late.close()


def test_clean_stop_sends_no_will(mosquitto: Mosquitto, make_link: MakeLink) -> None:
    sub = Subscriber(mosquitto, "edge/v1/dev1/#")
    try:
        link = make_link(mosquitto.url, will_topic="edge/v1/dev1/state", will_payload=b'{"online": false}')
        settle(link)
        link.stop()
        assert not link.connected
        # a marker published after the stop arrives; the will would have come before it
        mosquitto_pub(mosquitto, "edge/v1/dev1/marker", b"after-stop")
        assert sub.wait_for(lambda: b"after-stop" in sub.payloads())
        assert b'{"online": false}' not in sub.payloads()
    finally:
        sub.close()


def test_backoff_grows_with_jitter_while_the_broker_is_down(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    mosquitto.stop()
    draws = [1.0, 0.0, 1.0, 0.5, 1.0]
    calls: list[float] = []
    enough = threading.Event()

    def rand() -> float:
        calls.append(time.monotonic())
        if len(calls) > len(draws):
            enough.set()
        return draws[len(calls) - 1] if len(calls) <= len(draws) else 1.0

    link = make_link(mosquitto.url, rand=rand, backoff_min_s=0.04, backoff_max_s=0.3)
    assert enough.wait(10)
    expected = [backoff_delay(i, 0.04, 0.3, r) for i, r in enumerate(draws)]
    assert expected == pytest.approx([0.08, 0.04, 0.3, 0.17, 0.3])
    waited = [b - a for a, b in itertools.pairwise(calls[: len(draws) + 1])]
    for got, want in zip(waited, expected, strict=True):
        assert want <= got < want + 0.25, (waited, expected)
    assert isinstance(link.last_error, TransientError)
    assert "connection refused" in str(link.last_error)
    assert not link.connected

    mosquitto.start()  # same port: the link gets in by itself and forgets its failures
    assert link.wait_connected(5)
    assert link.failed_attempts == 0 and link.last_error is None


def test_persistent_session_gets_messages_sent_while_away(mosquitto: Mosquitto, make_link: MakeLink) -> None:
    topic = "edge/v1/dev7/jobs/notify"
    first = make_link(mosquitto.url, "dev7", start=False)
    first.subscribe(topic, Inbox())
    first.start()
    settle(first)
    first.stop()

    mosquitto_pub(mosquitto, topic, b"sent while away", qos=1)

    inbox = Inbox()
    again = make_link(mosquitto.url, "dev7", start=False)
    again.subscribe(topic, inbox)
    again.start()
    assert inbox.wait_for(1)
    assert inbox.items == [(topic, b"sent while away")]


def test_acl_refused_publish_is_reported_as_refused(tmp_path: Path, make_link: MakeLink) -> None:
    broker = Mosquitto(tmp_path / "broker", acl="pattern readwrite edge/v1/%c/#\n")
    broker.start()
    try:
        link = make_link(broker.url, "dev1")
        assert link.wait_connected(5)
        pub = link.publish("edge/v1/dev2/state", b"not mine")
        assert not pub.wait(5) and pub.refused
        assert link.publish("edge/v1/dev1/state", b"mine").wait(5)
    finally:
        broker.kill()
