"""sd_notify against a real unix datagram socket: READY, STATUS, WATCHDOG from the heartbeat, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

from agent.handle import ModelHandle
from agent.notify import Notifier, Watchdog, watchdog_timeout
from agent.pipeline import Pipeline
from agent.source import Source
from tests.fixtures.agent import FakeModel, FakeSource, NotifySocket, run_agent, start_agent


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    assert n.sent == 0


def test_from_env_unsets_the_variable_for_children(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "s")}
    n = Notifier.from_env(env)
    assert n.socket_path == str(tmp_path / "s") and "NOTIFY_SOCKET" not in env


def test_messages_reach_a_real_socket(notify_socket: NotifySocket) -> None:
    n = Notifier(str(notify_socket.path))
    assert n.ready("serving m v1")
    assert n.status("line one\nline two")
    assert n.watchdog()
    assert n.stopping()
    assert notify_socket.wait_for("STOPPING=1")
    assert notify_socket.fields() == [
        "READY=1",
        "STATUS=serving m v1",
        "STATUS=line one line two",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    n.close()


def test_abstract_socket_names() -> None:
    name = f"edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_a_missing_socket_never_raises(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.watchdog() is False and n.failed == 1


def test_watchdog_timeout_from_env() -> None:
    assert watchdog_timeout({}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_timeout({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "2"}, pid=2) == 2.0


def test_watchdog_pings_only_while_the_heartbeat_is_fresh() -> None:
    sent: list[str] = []

    class Recorder(Notifier):
        def send(self, *fields: str) -> bool:
            sent.extend(fields)
            return True

    now = {"t": 100.0}
    beat = {"t": 100.0}
    wd = Watchdog(Recorder("x"), 10.0, lambda: beat["t"], clock=lambda: now["t"])
    assert wd.interval == 5.0 and wd.max_age == 10.0
    assert wd.check()
    now["t"] = 109.0
    assert wd.check()
    now["t"] = 111.0  # heartbeat 11 s old
    assert not wd.check() and not wd.check()
    beat["t"] = 111.0
    assert wd.check()
    assert sent.count("WATCHDOG=1") == 3
    assert sum(1 for f in sent if f.startswith("STATUS=inference loop stuck")) == 1


def test_a_stuck_inference_loop_stops_the_pings(notify_socket: NotifySocket) -> None:
    model = FakeModel(block_from=20)
    source = FakeSource(None, live=True, delay=0.005)
    source.open()
    pipe = Pipeline(cast(Source, source), ModelHandle(cast(Any, model)), [], idle_tick=0.02)
    notifier = Notifier(str(notify_socket.path))
    wd = Watchdog(notifier, 0.2, lambda: pipe.heartbeat).start()  # ping every 0.1 s
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    try:
        assert notify_socket.wait_for("WATCHDOG=1", count=3, timeout=10)
        assert model.blocked.wait(10)
        time.sleep(0.35)  # the heartbeat goes stale within 0.2 s
        stuck_at = notify_socket.count("WATCHDOG=1")
        time.sleep(0.5)
        assert notify_socket.count("WATCHDOG=1") == stuck_at  # no ping while stuck
        assert wd.withheld >= 3
        model.gate.set()  # the loop recovers: pings resume
        assert notify_socket.wait_for("WATCHDOG=1", count=stuck_at + 2, timeout=10)
    finally:
        model.gate.set()
        pipe.stop()
        thread.join(5)
        wd.stop()
        notifier.close()


def test_agent_process_speaks_sd_notify(
    tmp_path: Path, notify_socket: NotifySocket, tiny_bundle: Path
) -> None:
    proc = start_agent(
        ["run", "--model", str(tiny_bundle), "--source", "synthetic:64x48@30,live",
         "--state-dir", str(tmp_path / "state")],
        tmp_path,
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC="300000",
    )  # fmt: skip
    try:
        assert notify_socket.wait_for("READY=1", timeout=60), proc.stderr
        assert notify_socket.wait_for("WATCHDOG=1", count=notify_socket.count("WATCHDOG=1") + 4, timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    fields = notify_socket.fields()
    assert "STOPPING=1" in fields
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert any(f.startswith("STATUS=serving tiny v3 on synthetic") for f in fields)
    assert any(f.startswith("STATUS=opening the model store") for f in fields)  # --state-dir: a store


def test_no_ready_when_the_agent_cannot_start(
    tmp_path: Path, notify_socket: NotifySocket, tiny_bundle: Path
) -> None:
    res = run_agent(
        ["run", "--model", str(tiny_bundle), "--source", "/dev/video97", "--state-dir", str(tmp_path / "s")],
        tmp_path,
        NOTIFY_SOCKET=str(notify_socket.path),
    )
    assert res.returncode == 1
    assert notify_socket.wait_for("STOPPING=1", timeout=5)
    assert "READY=1" not in notify_socket.fields()
