"""Who may drive the control API: the unix socket (0660, found from the state root), the bearer
token on TCP, the token file, socket takeover rules, and ``models list`` with no agent running.

Real sockets and the real CLI throughout; nothing of httpx is mocked."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent import cli
from agent.control import (
    SOCKET_NAME,
    TOKEN_NAME,
    ControlServer,
    default_address,
    ensure_token,
    read_token,
)
from agent.paths import default_state_dir
from inference.errors import ConfigError
from ota.store import ModelStore
from ota.update_machine import UpdateMachine
from tests.fixtures.ota import make_bundle
from tests.test_control import FakeController

STATE_ENV = ("STATE_DIRECTORY", "XDG_STATE_HOME")


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No state root leaks in from the environment running the tests."""
    for key in STATE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def unix_agent(tmp_path: Path) -> Iterator[tuple[Path, FakeController]]:
    """An 'agent' serving the default address of the state root tmp_path/state."""
    state = tmp_path / "state"
    state.mkdir()
    ctl = FakeController()
    srv = ControlServer(default_address(state), ctl).start()
    yield state, ctl
    srv.close()


@pytest.fixture
def tcp_agent(tmp_path: Path) -> Iterator[tuple[Path, str, FakeController]]:
    """An 'agent' asked for TCP: the token comes from tmp_path/state/control.token."""
    state = tmp_path / "state"
    state.mkdir()
    ctl = FakeController()
    srv = ControlServer("127.0.0.1:0", ctl, token=ensure_token(state)).start()
    yield state, srv.address, ctl
    srv.close()


# -- the token file ---------------------------------------------------------------------------


def test_token_created_0600_and_kept(tmp_path: Path) -> None:
    assert read_token(tmp_path) is None
    old = os.umask(0)  # the mode does not depend on the umask
    try:
        token = ensure_token(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / TOKEN_NAME
    assert _mode(path) == 0o600 and stat.S_ISREG(path.lstat().st_mode)
    assert len(token) >= 40 and path.read_text().strip() == token
    assert ensure_token(tmp_path) == token  # an existing good token is kept
    assert read_token(tmp_path) == token
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_NAME]  # no temp files left


def test_agents_starting_together_share_one_token(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: ensure_token(tmp_path), range(16)))
    assert tokens == {read_token(tmp_path)}  # the file never changed under a running agent
    assert [p.name for p in tmp_path.iterdir()] == [TOKEN_NAME]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=lambda m: f"{m:04o}")
def test_token_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / TOKEN_NAME
    path.write_text("a-token-that-leaked-0123456789\n")
    path.chmod(mode)
    with pytest.raises(ConfigError) as err:
        ensure_token(tmp_path)
    text = str(err.value)
    assert str(path) in text and f"{mode:04o}" in text and f"rm {path}" in text and "chmod 600" in text


def test_token_symlink_or_garbage_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text("x" * 43)
    real.chmod(0o600)
    (tmp_path / TOKEN_NAME).symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        ensure_token(tmp_path)
    (tmp_path / TOKEN_NAME).unlink()
    (tmp_path / TOKEN_NAME).write_text("")
    (tmp_path / TOKEN_NAME).chmod(0o600)
    with pytest.raises(ConfigError, match="usable token"):  # an empty token must never match
        ensure_token(tmp_path)


def test_tcp_server_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        ControlServer(("127.0.0.1", 0), FakeController())
    with pytest.raises(ConfigError, match="needs a token"):
        ControlServer("127.0.0.1:0", FakeController(), token="")


# -- TCP: the bearer token --------------------------------------------------------------------


def test_tcp_writes_need_the_token(tcp_agent: tuple[Path, str, FakeController]) -> None:
    state, address, ctl = tcp_agent
    token = (state / TOKEN_NAME).read_text().strip()
    base = f"http://{address}"
    # no token
    r = httpx.post(f"{base}/models/activate", json={"version": 3})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "no bearer token" in r.json()["error"] and TOKEN_NAME in r.json()["error"]
    # wrong token, wrong scheme
    r = httpx.post(f"{base}/models/activate", json={"version": 3}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "wrong bearer token" in r.json()["error"]
    r = httpx.post(
        f"{base}/models/activate", json={"version": 3}, headers={"Authorization": f"Basic {token}"}
    )
    assert r.status_code == 401
    for endpoint in ("/models/rollback", "/models/pin", "/models/unpin", "/nope"):
        assert httpx.post(f"{base}{endpoint}").status_code == 401
    assert ctl.calls == [] and ctl.pinned is None  # nothing got through
    # the right token
    r = httpx.post(
        f"{base}/models/activate", json={"version": 3}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200 and ctl.calls == [("activate", 3)]
    # reads stay open on loopback
    assert httpx.get(f"{base}/healthz").json() == {"ok": True}
    assert httpx.get(f"{base}/status").json()["model"] == "det"
    assert httpx.get(f"{base}/models").status_code == 200


def test_tcp_on_a_wider_address_guards_reads_too(tmp_path: Path) -> None:
    ctl = FakeController()
    token = ensure_token(tmp_path)
    srv = ControlServer("0.0.0.0:0", ctl, token=token).start()
    try:
        base = f"http://127.0.0.1:{srv.address.rpartition(':')[2]}"
        assert httpx.get(f"{base}/status").status_code == 401
        assert httpx.get(f"{base}/models").status_code == 401
        assert httpx.get(f"{base}/healthz").status_code == 200  # liveness stays open
        assert httpx.get(f"{base}/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        srv.close()


def test_cli_tcp_reads_the_token_from_the_state_dir(
    tcp_agent: tuple[Path, str, FakeController], capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    state, address, ctl = tcp_agent
    code, out, err = _main(
        ["models", "activate", "4", "--control", address, "--state-dir", str(state)], capsys
    )
    assert code == 0, err
    assert ctl.calls == [("activate", 4)]
    # without the state root there is no token: the agent refuses, and the CLI says what to do
    code, out, err = _main(["models", "activate", "5", "--control", address], capsys)
    assert code == 1 and ctl.calls == [("activate", 4)]
    assert "no bearer token" in err and "--state-dir DIR" in err and "--token-file FILE" in err
    # a wrong token file
    bad = state.parent / "bad.token"
    bad.write_text("not-the-right-token-0123456789")
    code, out, err = _main(["models", "unpin", "--control", address, "--token-file", str(bad)], capsys)
    assert code == 1 and "wrong bearer token" in err and str(bad) in err
    # reads need no token on loopback
    code, out, err = _main(["status", "--control", address], capsys)
    assert code == 0 and "det v2" in out


# -- the unix socket ----------------------------------------------------------------------------


def test_unix_socket_is_0660_whatever_the_umask(tmp_path: Path) -> None:
    sock = tmp_path / SOCKET_NAME
    old = os.umask(0)
    try:
        srv = ControlServer(f"unix:{sock}", FakeController()).start()
    finally:
        os.umask(old)
    try:
        assert stat.S_ISSOCK(sock.lstat().st_mode) and _mode(sock) == 0o660
        assert sorted(p.name for p in tmp_path.iterdir()) == [SOCKET_NAME]  # the private folder is gone
        assert srv.address == f"unix:{sock}"
    finally:
        srv.close()
    assert not sock.exists()


def test_cli_finds_the_socket_from_state_dir(
    unix_agent: tuple[Path, FakeController], capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    state, ctl = unix_agent
    code, out, err = _main(["status", "--state-dir", str(state)], capsys)
    assert code == 0, err
    assert "det v2" in out
    code, out, err = _main(["models", "activate", "7", "--force", "--state-dir", str(state)], capsys)
    assert code == 0, err
    assert ctl.calls == [("activate", 7, "force")]  # --force reaches the controller
    code, out, err = _main(["models", "list", "--json", "--state-dir", str(state)], capsys)
    assert code == 0 and json.loads(out)["models"][0]["current"] is True


def test_cli_finds_the_socket_from_STATE_DIRECTORY(
    unix_agent: tuple[Path, FakeController],
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, ctl = unix_agent
    monkeypatch.setenv("STATE_DIRECTORY", f"{state}:/somewhere/else")  # systemd may list several
    assert default_state_dir() == state
    code, out, err = _main(["models", "rollback"], capsys)
    assert code == 0 and out.strip() == "rolled back", err
    assert ctl.calls == [("rollback", None)]
    code, out, err = _main(["models", "rollback", "--force"], capsys)
    assert code == 0 and ctl.calls[-1] == ("rollback", True)
    # an explicit --control wins over the state root
    code, _, err = _main(["status", "--control", f"unix:{state / 'other.sock'}"], capsys)
    assert code == 1 and f"unix:{state / 'other.sock'}" in err and "--control" in err


def test_live_socket_is_not_stolen(unix_agent: tuple[Path, FakeController]) -> None:
    state, _ = unix_agent
    sock = state / SOCKET_NAME
    before = sock.lstat().st_ino
    with pytest.raises(ConfigError, match="another agent is serving the control API on unix:"):
        ControlServer(f"unix:{sock}", FakeController())
    assert sock.lstat().st_ino == before
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x")
    assert client.get("/status").json()["model"] == "det"  # the first agent still answers
    client.close()
    assert sorted(p.name for p in state.iterdir()) == [SOCKET_NAME]  # no private folder left


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / SOCKET_NAME
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))  # bound, never listening, then closed: what a killed agent leaves
    dead.close()
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    ctl = FakeController()
    srv = ControlServer(f"unix:{sock}", ctl).start()
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x")
        assert client.post("/models/unpin").status_code == 200
        client.close()
        assert _mode(sock) == 0o660
    finally:
        srv.close()


def test_a_file_in_the_sockets_place_is_not_removed(tmp_path: Path) -> None:
    sock = tmp_path / SOCKET_NAME
    sock.write_text("not a socket")
    with pytest.raises(ConfigError, match="is not a socket"):
        ControlServer(f"unix:{sock}", FakeController())
    assert sock.read_text() == "not a socket"


def test_close_leaves_a_newer_agents_socket(tmp_path: Path) -> None:
    sock = tmp_path / SOCKET_NAME
    first = ControlServer(f"unix:{sock}", FakeController()).start()
    sock.unlink()  # e.g. someone cleaned up; a second agent then took the path
    second = ControlServer(f"unix:{sock}", FakeController()).start()
    first.close()
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    second.close()
    assert not sock.exists()


# -- no agent running -------------------------------------------------------------------------


def _store(state: Path, tmp_path: Path) -> ModelStore:
    store = ModelStore(state)
    v1 = store.import_bundle(make_bundle(tmp_path / "src", "det", 1), "job-1")
    v2 = store.import_bundle(make_bundle(tmp_path / "src", "det", 2), "job-2")
    store.import_bundle(make_bundle(tmp_path / "src", "det", 3), "job-3")
    store.set_current(v1)
    store.set_current(v2)
    UpdateMachine(store.state_path).set_pin(v2.to_ref())  # the pin lives in the update record
    return store


def test_models_list_reads_the_store_when_no_agent_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    state = tmp_path / "state"
    store = _store(state, tmp_path)
    code, out, err = _main(["models", "list", "--state-dir", str(state)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["name", "version", "sha256", "flags"]
    assert [line.split()[:2] for line in lines[1:4]] == [["det", "1"], ["det", "2"], ["det", "3"]]
    assert lines[1].split()[-1] == "previous" and lines[2].split()[-1] == "current,pinned"
    assert len(lines[3].split()) == 3  # v3: no flags
    assert lines[-1] == f"(agent not running: read from {state})"

    code, out, err = _main(["models", "list", "--json", "--state-dir", str(state)], capsys)
    assert code == 0 and f"agent not running: read from {state}" in err
    rows = json.loads(out)["models"]  # the API's shape: ModelManager.models()
    cur = store.current()
    assert cur is not None
    assert rows[1] == {
        "name": "det",
        "version": 2,
        "sha256": cur.sha256,
        "path": str(cur.path),
        "current": True,
        "previous": False,
        "pinned": True,
    }
    assert [(r["version"], r["current"], r["previous"], r["pinned"]) for r in rows] == [
        (1, False, True, False),
        (2, True, False, True),
        (3, False, False, False),
    ]


def test_models_list_offline_from_STATE_DIRECTORY_and_models_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, store_root = tmp_path / "state", tmp_path / "store"
    state.mkdir()
    _store(store_root, tmp_path)
    monkeypatch.setenv("STATE_DIRECTORY", str(store_root))
    code, out, err = _main(["models", "list"], capsys)
    assert code == 0 and f"read from {store_root}" in out and err == ""
    monkeypatch.delenv("STATE_DIRECTORY")
    code, out, _ = _main(
        ["models", "list", "--state-dir", str(state), "--models-dir", str(store_root)], capsys
    )
    assert code == 0 and "current,pinned" in out and f"read from {store_root}" in out


def test_nothing_running_and_no_store_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sock = state / SOCKET_NAME
    code, out, err = _main(["models", "list", "--state-dir", str(state)], capsys)
    assert code == 1 and out == ""
    assert f"no agent answers on unix:{sock}" in err
    assert f"is `edge-agent run` running with --state-dir {state}?" in err
    assert "no model store under" in err
    assert not (state / "models").exists()  # reading does not create a store
    # the default state root (no flag, no STATE_DIRECTORY) points at the systemd one too
    code, out, err = _main(["status"], capsys)
    assert code == 1 and "--state-dir /var/lib/edge-agent" in err
    # a socket left by a dead agent: connection refused, same advice
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    code, out, err = _main(["models", "activate", "2", "--state-dir", str(state)], capsys)
    assert code == 1 and "connection refused" in err and f"--state-dir {state}" in err
