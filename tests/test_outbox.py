"""Outbox (SQLite queue: order, bounds, durability) and OutboxPump over a real mosquitto."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ota.errors import EdgeAgentError, TransientError
from ota.mqtt_link import MqttLink, MqttSettings
from ota.outbox import MAX_PAYLOAD_BYTES, Outbox, OutboxPump, PayloadTooLarge
from tests.fixtures.mosquitto import Mosquitto, Subscriber


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox" / "outbox.db")
    yield box
    box.close()


def status(seq: int) -> bytes:
    return json.dumps({"job_id": "j1", "status": "IN_PROGRESS", "seq": seq}).encode()


# ---------------------------------------------------------------- Outbox


def test_put_head_ack_in_order(outbox: Outbox) -> None:
    assert outbox.head() is None and outbox.pending() == 0
    a = outbox.put("edge/v1/d/telemetry", b"t1", "telemetry")
    b = outbox.put("edge/v1/d/jobs/j1/status", status, "status")
    c = outbox.put("edge/v1/d/events", b"e1", "event")
    assert a < b < c and outbox.pending() == 3
    head = outbox.head()
    assert head is not None and (head.seq, head.payload, head.kind, head.qos) == (a, b"t1", "telemetry", 1)
    assert outbox.ack(a) and not outbox.ack(a)
    head = outbox.head()
    assert head is not None and json.loads(head.payload)["seq"] == b == head.seq  # the seq is in the payload
    outbox.ack(b)
    head = outbox.head()
    assert head is not None and head.kind == "event" and head.qos == 0  # events are QoS 0 by default
    outbox.ack(c)
    assert outbox.head() is None and outbox.pending() == 0


def test_rows_and_seq_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, clock=lambda: 1234.5) as box:
        first = box.put("t/a", b"a", "status", retain=True)
        second = box.put("t/b", b"b", "alert")
    with Outbox(path) as box:
        head = box.head()
        assert head is not None
        assert (head.seq, head.topic, head.payload, head.retain, head.ts) == (
            first,
            "t/a",
            b"a",
            True,
            1234.5,
        )
        assert box.pending() == 2
        box.ack(first)
        box.ack(second)
        assert box.put("t/c", b"c", "status") > second  # seqs never go back, even once emptied


def test_bound_drops_oldest_telemetry_then_events_then_alerts_never_statuses(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_items=4) as box:
        s1 = box.put("s", b"s1", "status")
        box.put("t", b"t1", "telemetry")
        box.put("e", b"e1", "event")
        box.put("a", b"a1", "alert")
        box.put("t", b"t2", "telemetry")  # full: t1 goes
        assert box.dropped == {"status": 0, "telemetry": 1, "alert": 0, "event": 0}
        for i in range(2, 7):
            box.put("s", f"s{i}".encode(), "status")
        # t2, then e1, then a1 went; then nothing may go: statuses stay beyond the bound
        assert box.dropped == {"status": 0, "telemetry": 2, "alert": 1, "event": 1}
        assert box.pending() == 6
    with Outbox(path, max_items=4) as box:
        assert box.dropped == {"status": 0, "telemetry": 2, "alert": 1, "event": 1}  # persisted
        kinds = []
        while (head := box.head()) is not None:
            kinds.append(head.payload)
            box.ack(head.seq)
        assert kinds == [b"s1", b"s2", b"s3", b"s4", b"s5", b"s6"]
        assert s1 == 1


def test_payload_size_cap(outbox: Outbox) -> None:
    with pytest.raises(PayloadTooLarge) as err:
        outbox.put("t", b"x" * (MAX_PAYLOAD_BYTES + 1), "telemetry")
    assert isinstance(err.value, EdgeAgentError) and isinstance(err.value, ValueError)
    with pytest.raises(PayloadTooLarge):
        outbox.put("t", lambda seq: b"x" * (MAX_PAYLOAD_BYTES + 1), "status")
    assert outbox.pending() == 0
    outbox.put("t", b"x" * MAX_PAYLOAD_BYTES, "telemetry")
    assert outbox.pending() == 1


def test_payload_function_failure_leaves_nothing(outbox: Outbox) -> None:
    def broken(seq: int) -> bytes:
        raise RuntimeError("builder bug")

    with pytest.raises(RuntimeError):
        outbox.put("t", broken, "status")
    assert outbox.pending() == 0
    outbox.put("t", b"ok", "status")
    assert outbox.pending() == 1


def test_bad_kind_or_qos_is_a_caller_bug(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="kind"):
        outbox.put("t", b"x", "metrics")
    with pytest.raises(ValueError, match="qos"):
        outbox.put("t", b"x", "status", qos=3)


def test_sqlite_errors_become_transient(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        with pytest.raises(TransientError, match="cannot queue"):
            box.put("t", b"x", "status")
        other.execute("ROLLBACK")
        box.put("t", b"x", "status")
    finally:
        other.close()
    box.close()
    with pytest.raises(TransientError, match="closed"):
        box.put("t", b"x", "status")


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with Outbox(path) as box:
        assert box.pending() == 0
        box.put("t", b"x", "status")
    assert len(list(tmp_path.glob("outbox.db.corrupt-*"))) == 1


def test_on_put_listeners(outbox: Outbox) -> None:
    calls: list[int] = []
    outbox.on_put(lambda: calls.append(outbox.pending()))  # called outside the outbox's lock
    outbox.put("t", b"x", "status")
    assert calls == [1]


# ---------------------------------------------------------------- OutboxPump over a real broker


@pytest.fixture
def make_link() -> Iterator[Callable[..., MqttLink]]:
    made: list[MqttLink] = []

    def make(url: str, client_id: str = "dev1", **kw: Any) -> MqttLink:
        kw.setdefault("backoff_min_s", 0.05)
        kw.setdefault("backoff_max_s", 0.2)
        link = MqttLink(MqttSettings(url=url, client_id=client_id, **kw), rand=random.random)
        made.append(link)
        return link

    yield make
    for link in made:
        link.stop()


def seqs_of(sub: Subscriber) -> list[int]:
    return [int(json.loads(p)["seq"]) for p in sub.payloads()]


def first_deliveries(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def test_pump_drains_in_order_once_connected(
    mosquitto: Mosquitto, outbox: Outbox, make_link: Callable[..., MqttLink]
) -> None:
    sub = Subscriber(mosquitto, "edge/v1/dev1/#")
    link = make_link(mosquitto.url)
    pump = OutboxPump(outbox, link)
    try:
        pump.start()
        put = [outbox.put("edge/v1/dev1/jobs/j1/status", status, "status") for _ in range(20)]  # offline
        link.start()
        assert pump.wait_drained(10)
        assert sub.wait_for(lambda: len(sub.messages) >= 20)
        assert seqs_of(sub) == put
        assert all(m.qos == 1 for m in sub.messages)
        more = outbox.put("edge/v1/dev1/jobs/j1/status", status, "status")  # put wakes the pump
        assert sub.wait_for(lambda: seqs_of(sub)[-1:] == [more])
        assert pump.wait_drained(5) and pump.delivered == 21
    finally:
        pump.stop()
        sub.close()


def test_pump_delivers_everything_in_order_across_a_broker_restart(
    mosquitto: Mosquitto, outbox: Outbox, make_link: Callable[..., MqttLink]
) -> None:
    topic = "edge/v1/dev1/jobs/j1/status"
    fleet = Subscriber(mosquitto, "edge/v1/+/jobs/+/status", client_id="fleet", session=True)
    link = make_link(mosquitto.url)
    pump = OutboxPump(outbox, link)
    try:
        link.start()
        pump.start()
        put = [outbox.put(topic, status, "status") for _ in range(150)]
        assert fleet.wait_for(lambda: len(fleet.messages) >= 30, 10)
        mosquitto.restart()  # SIGTERM: sessions and queued messages are saved; same port
        put += [outbox.put(topic, status, "status") for _ in range(150)]
        assert fleet.wait_for(lambda: set(seqs_of(fleet)) >= set(put), 20), (len(put), len(fleet.messages))
        assert first_deliveries(seqs_of(fleet)) == put  # none lost, first deliveries in order
        assert pump.wait_drained(5)
        assert fleet.connects >= 2 and link.connected
    finally:
        pump.stop()
        fleet.close()


def test_pump_discards_what_the_broker_refuses(
    tmp_path: Path, outbox: Outbox, make_link: Callable[..., MqttLink]
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl="topic read edge/v1/#\npattern readwrite edge/v1/%c/#\n")
    broker.start()
    sub = Subscriber(broker, "edge/v1/dev1/#", client_id="dev1-watcher")
    link = make_link(broker.url)
    pump = OutboxPump(outbox, link)
    try:
        outbox.put("edge/v1/dev2/state", b"not mine", "status")
        ok = outbox.put("edge/v1/dev1/jobs/j1/status", status, "status")
        link.start()
        pump.start()
        assert pump.wait_drained(10)
        assert outbox.rejected["status"] == 1
        assert sub.wait_for(lambda: seqs_of(sub) == [ok])
    finally:
        pump.stop()
        sub.close()
        broker.kill()
