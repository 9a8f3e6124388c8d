"""Local control API: HTTP on a unix socket in the state root (default) or, when asked, on TCP.

    GET  /healthz            200 {"ok": true} while the inference loop's heartbeat is fresh, else 503
    GET  /status             model, version, sha256, runtime, provider, phase, frames, dropped, fps,
                             uptime_s, previous, …
    GET  /models             the versions in the store, with which is current / previous / pinned
    POST /models/activate    {"version": N[, "name": S][, "force": true]}  explicit activation; the
                             rules (pin, downgrade, release counter) apply unless "force" is true
    POST /models/rollback    {"force": true}? back to the previous version (refused while pinned
                             unless forced)
    POST /models/pin         {"version": N} or {} for the current one: never replaced automatically
    POST /models/unpin
    POST /updates/hold       pause installs: deploy jobs are still verified and queued, not run
    POST /updates/release    resume installs
    GET  /spool              the frames kept for upload: items, bytes, by strategy, counters, the
                             uploader's state (``edge-agent spool status``)
    POST /spool/flush        upload now, ignoring the schedule and any back-off
    POST /spool/purge        delete every spooled frame (parked ones too)

Who may call it:

- **unix socket** (``unix:<state>/control.sock``, the default): the socket is mode 0660, so
  the agent's user and group. It is bound inside a private 0700 folder and only then moved into
  place, so it is never reachable with wider permissions, whatever the process umask. A socket
  left by a dead agent is replaced; one where an agent still answers is never taken over.
- **TCP** (``HOST:PORT``, only when configured): every POST needs ``Authorization: Bearer
  <token>`` with the token from ``control.token`` in the state root (created 0600 by
  ``ensure_token``); GETs are open on a loopback address, and need the token too elsewhere
  (except ``/healthz``). A TCP server cannot be made without a token.

Bodies are JSON objects, at most 64 KiB; unknown fields are refused. Errors answer
``{"error": "..."}`` with 400 (bad request), 401 (no or wrong token), 404 (unknown version),
409 (not possible now) or 500.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import socketserver
import stat
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from inference.errors import ConfigError, EdgeAgentError
from inference.fsio import DEFAULT_FS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8470  # the conventional port when TCP is asked for (--control 127.0.0.1:8470)
MAX_BODY = 64 * 1024
SOCKET_NAME = "control.sock"
TOKEN_NAME = "control.token"
SOCKET_MODE = 0o660
TOKEN_MODE = 0o600
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")  # RFC 6750 token68, and not trivially short

# The fields each write endpoint accepts; anything else is a 400 naming it.
BODY_FIELDS: dict[str, frozenset[str]] = {
    "/models/activate": frozenset({"version", "name", "force"}),
    "/models/rollback": frozenset({"force"}),
    "/models/pin": frozenset({"version"}),
    "/models/unpin": frozenset(),
    "/updates/hold": frozenset(),
    "/updates/release": frozenset(),
    "/spool/flush": frozenset(),
    "/spool/purge": frozenset(),
}
GET_PATHS = frozenset({"/healthz", "/status", "/models", "/spool"})


class Controller(Protocol):
    """What the control API drives (the daemon's ModelManager and Pipeline behind one face)."""

    def healthy(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def activate(self, version: int, name: str | None = None, force: bool = False) -> dict[str, Any]: ...

    def rollback(self, force: bool = False) -> dict[str, Any]: ...

    def pin(self, version: int | None) -> dict[str, Any]: ...

    def unpin(self) -> dict[str, Any]: ...

    def hold(self, hold: bool) -> dict[str, Any]: ...

    def spool(self, action: str) -> dict[str, Any]: ...  # status | flush | purge


class RequestError(EdgeAgentError):
    """A control request that cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- where things are --------------------------------------------------------------------------


def socket_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / SOCKET_NAME


def token_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / TOKEN_NAME


def default_address(state_dir: Path | str) -> str:
    """The control address an agent with this state root serves by default."""
    return f"unix:{socket_path(state_dir)}"


def parse_address(spec: str) -> tuple[str, int] | Path:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``unix:/path/to.sock``: the config's one grammar
    (``agent.config.parse_control_address``), without ``off``."""
    from agent.config import parse_control_address

    addr = parse_control_address(spec)
    if addr is None:
        raise ConfigError(f"control address {spec!r}: 'off' is not an address to serve or reach")
    return addr


# -- the token ---------------------------------------------------------------------------------


def _check_token_text(text: str, path: Path) -> str:
    token = text.strip()
    if not TOKEN_RE.fullmatch(token):
        raise ConfigError(
            f"{path} does not hold a usable token (16-512 characters from A-Z a-z 0-9 . _ ~ + / = -): "
            f"delete it (`rm {path}`) and restart the agent to create a new one"
        )
    return token


def read_token_file(path: Path | str) -> str | None:
    """The token in ``path``; None when the file does not exist. For clients: no mode check."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(
            f"cannot read the control token {path}: permission denied; run this as the agent's "
            "user (e.g. with sudo) or give a readable copy with --token-file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the control token {path}: {exc}") from None
    return _check_token_text(text, path)


def read_token(state_dir: Path | str) -> str | None:
    """The token in ``<state_dir>/control.token``; None when there is none yet."""
    return read_token_file(token_path(state_dir))


def _read_own_token(path: Path) -> str | None:
    """The agent's side: the token file must be a regular file no one else can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link: the control token must be a plain file; "
                f"remove it (`rm {path}`) and restart the agent to create a new one"
            ) from None
        raise ConfigError(f"cannot read the control token {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file: remove it and restart the agent")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is open to group or others (mode {mode:04o}), so someone else may have read "
                f"the token that guards the control API: delete it (`rm {path}`) and restart the agent "
                f"to create a new one with mode 0600 (or `chmod 600 {path}` if you know nobody read it)"
            )
        data = fh.read(4096)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return _check_token_text(text, path)


def ensure_token(state_dir: Path | str) -> str:
    """Return the control token of ``state_dir``, creating ``control.token`` (mode 0600) if missing.

    An existing token is kept when it is a regular file with mode 0600 (or stricter); a token file
    open to group or others, or holding garbage, is refused with a ``ConfigError`` naming the fix.
    The new file is written to a private temp file, fsynced and hard-linked into place, so it
    appears complete, and two agents starting at once end up with the same token.
    """
    path = token_path(state_dir)
    existing = _read_own_token(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(32)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{TOKEN_NAME}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the control token in {path.parent}: {exc.strerror or exc}; "
            "check --state-dir and that folder's permissions"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), TOKEN_MODE)  # mkstemp made it 0600 already; say it anyway
            fh.write((token + "\n").encode("ascii"))
            fh.flush()
            DEFAULT_FS.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never replace a token in use
        except FileExistsError:
            again = _read_own_token(path)
            if again is None:  # pragma: no cover - created and removed between two calls
                raise ConfigError(f"{path} appeared and vanished while creating it: try again") from None
            return again
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK):
                raise
            DEFAULT_FS.rename(tmp, path)  # a file system without hard links
        DEFAULT_FS.fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write the control token {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the control token %s (mode 0600)", path)
    return token


# -- the HTTP side -----------------------------------------------------------------------------


def _int_field(body: dict[str, Any], key: str, required: bool) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(f'missing "{key}": send {{"{key}": N}}')
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f'"{key}" must be an integer, got {value!r}')
    return value


def _bool_field(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f'"{key}" must be true or false, got {value!r}')
    return value


def _check_fields(body: dict[str, Any], path: str) -> None:
    allowed = BODY_FIELDS[path]
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(f'"{k}"' for k in unknown)
        accepted = ", ".join(f'"{k}"' for k in sorted(allowed)) or "no fields"
        raise RequestError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {names} for {path}: it takes {accepted}"
        )


def _unauthorized_message(missing: bool) -> str:
    what = "no bearer token" if missing else "wrong bearer token"
    return (
        f"{what}: on TCP this request needs `Authorization: Bearer <token>` with the token from "
        f"{TOKEN_NAME} in the agent's state root (the CLI sends it when given --state-dir DIR or "
        "--token-file FILE)"
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server | _UnixServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _send(self, status: int, obj: Any, *, close: bool = False) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="edge-agent"')
        if close:  # the body was not read: this connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _body(self, path: str) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if length > MAX_BODY:
            raise RequestError(f"body too large ({length} bytes, at most {MAX_BODY})", 413)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RequestError(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object")
        _check_fields(body, path)
        return body

    def _authorized(self, method: str, path: str) -> bool:
        """True when the request may go on; else a 401 has been sent."""
        token = self.server.token
        if token is None:  # unix socket: its permissions are the guard
            return True
        if method == "GET" and (self.server.open_reads or path == "/healthz"):
            return True
        scheme, _, value = (self.headers.get("Authorization") or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            if hmac.compare_digest(value.encode("latin-1", "replace"), token):
                return True
            log.warning("control: %s %s refused: wrong bearer token", method, path)
            self._send(401, {"error": _unauthorized_message(False)}, close=True)
        else:
            log.warning("control: %s %s refused: no bearer token", method, path)
            self._send(401, {"error": _unauthorized_message(True)}, close=True)
        return False

    def _dispatch(self, method: str) -> None:
        ctl = self.server.controller
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if not self._authorized(method, path):
                return
            if method == "GET" and path == "/healthz":
                ok = ctl.healthy()
                self._send(200 if ok else 503, {"ok": ok})
            elif method == "GET" and path == "/status":
                self._send(200, ctl.status())
            elif method == "GET" and path == "/models":
                self._send(200, {"models": ctl.models()})
            elif method == "POST" and path == "/models/activate":
                body = self._body(path)
                version = _int_field(body, "version", True)
                assert version is not None
                name = body.get("name")
                if name is not None and not isinstance(name, str):
                    raise RequestError('"name" must be a string')
                if _bool_field(body, "force"):
                    log.warning(
                        "control: forced activation of version %d requested: rules overridden", version
                    )
                    self._send(200, ctl.activate(version, name, force=True))
                else:
                    self._send(200, ctl.activate(version, name))
            elif method == "POST" and path == "/models/rollback":
                if _bool_field(self._body(path), "force"):
                    log.warning("control: forced rollback requested: the pin is overridden")
                    self._send(200, ctl.rollback(force=True))
                else:
                    self._send(200, ctl.rollback())
            elif method == "POST" and path == "/models/pin":
                self._send(200, ctl.pin(_int_field(self._body(path), "version", False)))
            elif method == "POST" and path == "/models/unpin":
                self._body(path)
                self._send(200, ctl.unpin())
            elif method == "POST" and path in ("/updates/hold", "/updates/release"):
                self._body(path)
                self._send(200, ctl.hold(path == "/updates/hold"))
            elif method == "GET" and path == "/spool":
                self._send(200, ctl.spool("status"))
            elif method == "POST" and path in ("/spool/flush", "/spool/purge"):
                self._body(path)
                self._send(200, ctl.spool(path.rsplit("/", 1)[1]))
            elif path in GET_PATHS or path in BODY_FIELDS:
                self._send(405, {"error": f"{method} is not allowed on {path}"})
            else:
                self._send(404, {"error": f"no such endpoint {path}: see /status, /models, /healthz"})
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)}, close=exc.status == 413)
        except EdgeAgentError as exc:
            self._send(409, {"error": str(exc)})
        except Exception as exc:  # never let a request take the server thread down
            log.exception("control: %s %s failed", method, path)
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], controller: Controller, token: str) -> None:
        self.controller = controller
        self.token: bytes | None = token.encode("ascii")
        super().__init__(address, _Handler)
        self.open_reads = _is_loopback(str(self.server_address[0]))


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, controller: Controller) -> None:
        self.controller = controller
        self.token: bytes | None = None
        self.open_reads = True
        super().__init__(str(path), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, _ = super().get_request()
        return sock, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# -- the unix socket ---------------------------------------------------------------------------


def _someone_listens(path: Path) -> bool:
    """True when a process accepts connections on the socket ``path``; False for a stale one."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise ConfigError(
            f"cannot tell whether an agent still serves the control API on unix:{path} "
            f"({exc.strerror or exc}); stop that agent, or remove {path} if none runs"
        ) from None
    finally:
        probe.close()
    return True


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a dead agent; refuse a live one, or anything that is not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket: move it away so the control API can use it")
    if _someone_listens(path):
        raise ConfigError(
            f"another agent is serving the control API on unix:{path}: stop it first "
            "(e.g. systemctl stop edge-agent), or give this one another --state-dir or --control"
        )
    log.info("control: replacing the stale socket %s (its agent is gone)", path)
    path.unlink(missing_ok=True)


def _bind_unix(path: Path, controller: Controller) -> tuple[_UnixServer, tuple[int, int]]:
    """Bind in a private 0700 folder, chmod 0660, then hard-link into place (never over a live one)."""
    private = Path(tempfile.mkdtemp(prefix=".cs", dir=path.parent))
    try:
        tmp = private / "s"
        server = _UnixServer(tmp, controller)
        try:
            os.chmod(tmp, SOCKET_MODE)
            for _attempt in range(3):
                _clear_stale(path)
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:
                    continue  # another process put a socket there meanwhile: look at it again
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                        raise
                    os.replace(tmp, path)  # a file system without hard links
                    break
            else:
                raise ConfigError(
                    f"{path} keeps being re-created by someone else: is another agent starting?"
                )
            st = path.lstat()
        except BaseException:
            server.server_close()
            raise
        return server, (st.st_dev, st.st_ino)
    finally:
        shutil.rmtree(private, ignore_errors=True)


class ControlServer:
    """Serves the control API from a background thread until ``close``.

    ``address``: ``unix:/path`` (or a ``Path``), or ``HOST:PORT`` (or a tuple). On TCP ``token``
    is required (see ``ensure_token``); on a unix socket it is not used.
    """

    def __init__(
        self,
        address: str | tuple[str, int] | Path,
        controller: Controller,
        token: str | None = None,
    ) -> None:
        addr = parse_address(address) if isinstance(address, str) else address
        self._socket: Path | None = None
        self._socket_id: tuple[int, int] | None = None
        shown = f"unix:{addr}" if isinstance(addr, Path) else f"{addr[0]}:{addr[1]}"
        self._server: _Server | _UnixServer
        try:
            if isinstance(addr, Path):
                self._server, self._socket_id = _bind_unix(addr, controller)
                self._socket = addr
            else:
                if not token:
                    raise ConfigError(
                        f"the control API on TCP {shown} needs a token: every write must carry the one "
                        f"in {TOKEN_NAME} in the state root (agent.control.ensure_token); or serve it "
                        f"on the default unix socket (unix:<state>/{SOCKET_NAME})"
                    )
                if not TOKEN_RE.fullmatch(token):
                    raise ConfigError(
                        "the control token must be 16-512 characters from A-Z a-z 0-9 . _ ~ + / = -"
                    )
                self._server = _Server(addr, controller, token)
        except OSError as exc:
            fix = (
                "check that its folder exists and is writable (--state-dir), and that the path is "
                "shorter than 108 bytes"
                if isinstance(addr, Path)
                else "pick another port with --control HOST:PORT"
            )
            raise ConfigError(f"control API cannot listen on {shown}: {exc.strerror or exc}; {fix}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    @property
    def address(self) -> str:
        if self._socket is not None or not isinstance(self._server, _Server):
            return f"unix:{self._socket}"
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> ControlServer:
        self._thread.start()
        auth = "socket mode 0660" if self._socket is not None else "bearer token for writes"
        log.info("control API on %s (%s)", self.address, auth)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._socket is not None and self._socket_id is not None:
            with contextlib.suppress(OSError):  # only our own socket: a newer agent may own the path now
                st = self._socket.lstat()
                if (st.st_dev, st.st_ino) == self._socket_id:
                    self._socket.unlink()
            self._socket_id = None
