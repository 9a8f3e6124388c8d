"""Control API over real HTTP on loopback and a real unix socket, driven by the real CLI client.

The authentication, the token file, the socket's permissions and takeover rules, and the offline
``models list`` are in tests/test_control_auth.py."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from agent import cli_control
from agent.control import ControlServer, RequestError, ensure_token, parse_address
from agent.controller import DaemonController
from agent.handle import ModelHandle
from agent.pipeline import PipelineStats
from agent.swapper import NoModel
from inference.errors import ConfigError, TransientError
from inference.runtime import RuntimeOptions


class FakeController:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pinned: int | None = None
        self.ok = True

    def healthy(self) -> bool:
        return self.ok

    def status(self) -> dict[str, Any]:
        return {
            "model": "det",
            "version": 2,
            "sha256": "ab" * 32,
            "runtime": "onnxruntime 1.22.0",
            "provider": "CPUExecutionProvider",
            "phase": "IDLE",
            "frames": 10,
            "dropped": 0,
            "fps": 29.5,
            "uptime_s": 3.0,
            "previous": {"version": 1},
            "pinned": self.pinned,
        }

    def models(self) -> list[dict[str, Any]]:
        return [{"name": "det", "version": 2, "sha256": "ab" * 32, "current": True}]

    def activate(self, version: int, name: str | None = None, force: bool = False) -> dict[str, Any]:
        self.calls.append(("activate", version) if not force else ("activate", version, "force"))
        if version == 99:
            raise RequestError("no version 99 in the store", 404)
        return {"message": f"activating v{version}"}

    def rollback(self, force: bool = False) -> dict[str, Any]:
        self.calls.append(("rollback", force or None))
        return {"message": "rolled back"}

    def pin(self, version: int | None) -> dict[str, Any]:
        self.pinned = version if version is not None else 2
        return {"message": f"pinned v{self.pinned}"}

    def unpin(self) -> dict[str, Any]:
        self.pinned = None
        return {"message": "unpinned"}


TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[tuple[ControlServer, FakeController]]:
    """TCP on loopback, as when the agent is asked for it: writes need TOKEN."""
    ctl = FakeController()
    srv = ControlServer(("127.0.0.1", 0), ctl, token=TOKEN).start()
    yield srv, ctl
    srv.close()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("unix:/run/x.sock") == Path("/run/x.sock")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address("localhost")
    with pytest.raises(ConfigError, match="no socket path"):
        parse_address("unix:")


def test_endpoints(server: tuple[ControlServer, FakeController]) -> None:
    srv, ctl = server
    base = f"http://{srv.address}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.get("/healthz").json() == {"ok": True}
        ctl.ok = False
        assert c.get("/healthz").status_code == 503
        assert c.get("/status").json()["version"] == 2
        assert c.get("/models").json()["models"][0]["current"] is True
        assert c.post("/models/activate", json={"version": 3}).status_code == 200
        assert ctl.calls[-1] == ("activate", 3)
        r = c.post("/models/activate", json={"version": 99})
        assert r.status_code == 404 and "99" in r.json()["error"]
        assert c.post("/models/activate", json={"version": "x"}).status_code == 400
        assert c.post("/models/activate", json={}).status_code == 400
        assert c.post("/models/activate", content=b"{not json").status_code == 400
        assert c.post("/models/activate", content=b"[1]").status_code == 400
        assert c.post("/models/activate", content=b"x" * (70 * 1024)).status_code == 413
        assert c.get("/models/activate").status_code == 405
        assert c.get("/nope").status_code == 404
        assert c.post("/models/pin", json={}).json()["message"] == "pinned v2"
        assert c.post("/models/unpin").status_code == 200
        assert c.post("/models/rollback").json()["message"] == "rolled back"
        assert c.post("/models/rollback", json={"force": True}).json()["message"] == "rolled back"
        assert c.post("/models/activate", json={"version": 5, "force": True}).status_code == 200
        assert ctl.calls[-1:] == [("activate", 5, "force")]
        assert c.post("/models/activate", json={"version": 5, "force": "yes"}).status_code == 400


def test_unknown_fields_are_refused(server: tuple[ControlServer, FakeController]) -> None:
    srv, ctl = server
    with httpx.Client(base_url=f"http://{srv.address}", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.post("/models/activate", json={"version": 3, "forse": True, "zz": 1})
        assert r.status_code == 400
        err = r.json()["error"]
        assert '"forse"' in err and '"zz"' in err and '"force"' in err  # names them, and what is taken
        r = c.post("/models/rollback", json={"version": 1})
        assert r.status_code == 400 and '"version"' in r.json()["error"] and '"force"' in r.json()["error"]
        assert c.post("/models/pin", json={"name": "det"}).status_code == 400
        assert c.post("/models/unpin", json={"x": 1}).status_code == 400
    assert ctl.calls == []  # nothing reached the controller


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_control.register(sub)
    return parser.parse_args(argv)


def test_cli_client(
    server: tuple[ControlServer, FakeController], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The CLI on a TCP address, with the token from --token-file."""
    srv, ctl = server
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ctl_flags = ["--control", srv.address, "--token-file", str(token_file)]
    args = _cli(["status", *ctl_flags])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "det v2" in out and "fps 29.5" in out
    assert "runtime   onnxruntime 1.22.0 on CPUExecutionProvider" in out
    args = _cli(["status", "--json", *ctl_flags])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "det"
    args = _cli(["models", "activate", "4", *ctl_flags])
    assert args.func(args) == 0 and ctl.calls[-1] == ("activate", 4)
    args = _cli(["models", "activate", "3", "--force", *ctl_flags])
    assert args.func(args) == 0 and ctl.calls[-1:] == [("activate", 3, "force")]
    args = _cli(["models", "activate", "99", *ctl_flags])
    assert args.func(args) == 1
    assert "no version 99" in capsys.readouterr().err
    args = _cli(["models", "pin", *ctl_flags])
    assert args.func(args) == 0 and ctl.pinned == 2
    args = _cli(["models", "list", *ctl_flags])
    assert args.func(args) == 0 and "current" in capsys.readouterr().out


def test_cli_agent_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["status", "--control", "127.0.0.1:1"])
    assert args.func(args) == 1
    assert "is `edge-agent run` running" in capsys.readouterr().err
    with pytest.raises(TransientError):
        cli_control.ControlClient("127.0.0.1:1").request("GET", "/status")


def test_unix_socket(tmp_path: Path) -> None:
    """On the unix socket no token is needed: its permissions are the guard."""
    ctl = FakeController()
    sock = tmp_path / "control.sock"
    srv = ControlServer(f"unix:{sock}", ctl).start()
    try:
        client = cli_control.ControlClient(f"unix:{sock}")
        assert client.request("GET", "/status")[1]["model"] == "det"
        assert client.request("POST", "/models/activate", {"version": 3})[0] == 200
        assert ctl.calls == [("activate", 3)]
        client.close()
    finally:
        srv.close()
    assert not sock.exists()  # the server removes its own socket


def test_port_in_use(server: tuple[ControlServer, FakeController]) -> None:
    srv, ctl = server
    with pytest.raises(ConfigError, match="cannot listen"):
        ControlServer(srv.address, ctl, token=TOKEN)


def test_token_from_ensure_token_opens_writes(tmp_path: Path) -> None:
    ctl = FakeController()
    token = ensure_token(tmp_path)
    srv = ControlServer("127.0.0.1:0", ctl, token=token).start()
    try:
        r = httpx.post(f"http://{srv.address}/models/unpin", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    finally:
        srv.close()


def _stats() -> PipelineStats:
    return PipelineStats(
        model="m", version=1, frames=3, errors=0, dropped=0, captured=3, sink_errors=0, reconnects=0,
        fps=10.0, latency_p50_ms=1.0, latency_p95_ms=2.0, detections=0, uptime_s=1.0, source_ok=True,
        source_status="ok",
    )  # fmt: skip


@pytest.mark.parametrize("model", ["onnx", "tflite"])
def test_status_says_which_runtime_and_provider_run_the_model(
    tiny_models: dict[str, Path], zoo_model: Callable[[str], Path], model: str
) -> None:
    from inference.model import load_model

    path = tiny_models["classifier"] if model == "onnx" else zoo_model("blazeface")
    loaded = load_model(path, RuntimeOptions(providers=("cpu",), threads=1))
    pipeline = SimpleNamespace(stats=_stats, heartbeat=0.0)
    try:
        status = DaemonController(cast(Any, pipeline), ModelHandle(loaded), None).status()
    finally:
        loaded.close()
    want = ("onnxruntime ", "CPUExecutionProvider") if model == "onnx" else ("ai-edge-litert", "xnnpack")
    assert str(status["runtime"]).startswith(want[0]) and status["provider"] == want[1]
    json.dumps(status)  # what /status serves


def test_status_without_a_model_has_no_provider() -> None:
    pipeline = SimpleNamespace(stats=_stats, heartbeat=0.0)
    status = DaemonController(cast(Any, pipeline), ModelHandle(NoModel("broken")), None).status()
    assert status["provider"] is None and status["runtime"] is None
