"""Local control API: HTTP on 127.0.0.1 (default port 8470) or a unix socket.

    GET  /healthz            200 {"ok": true} while the inference loop's heartbeat is fresh, else 503
    GET  /status             model, version, sha256, phase, frames, dropped, fps, uptime_s, previous, …
    GET  /models             the versions in the store, with which is current / previous / pinned
    POST /models/activate    {"version": N[, "name": S]}  explicit activation (may go down a version)
    POST /models/rollback    back to the previous version
    POST /models/pin         {"version": N} or {} for the current one: never replaced automatically
    POST /models/unpin

Bodies are JSON, at most 64 KiB. Errors answer ``{"error": "..."}`` with 400 (bad request),
404 (unknown version), 409 (not possible now) or 500.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from inference.errors import ConfigError, EdgeAgentError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8470
MAX_BODY = 64 * 1024


class Controller(Protocol):
    """What the control API drives (the daemon's ModelManager and Pipeline behind one face)."""

    def healthy(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def activate(self, version: int, name: str | None = None) -> dict[str, Any]: ...

    def rollback(self) -> dict[str, Any]: ...

    def pin(self, version: int | None) -> dict[str, Any]: ...

    def unpin(self) -> dict[str, Any]: ...


class RequestError(EdgeAgentError):
    """A control request that cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_address(spec: str) -> tuple[str, int] | Path:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``unix:/path/to.sock``."""
    spec = spec.strip()
    if spec.startswith("unix:"):
        return Path(spec[5:])
    host, _, port = spec.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(
            f"control address {spec!r}: use HOST:PORT (e.g. 127.0.0.1:8470) or unix:/path"
        ) from None
    if not 0 <= port_n <= 65535:
        raise ConfigError(f"control address {spec!r}: port must be 0-65535")
    return (host or "127.0.0.1", port_n)


def _int_field(body: dict[str, Any], key: str, required: bool) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(f'missing "{key}": send {{"{key}": N}}')
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f'"{key}" must be an integer, got {value!r}')
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _send(self, status: int, obj: Any) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 413:  # the body was not read: this connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if length > MAX_BODY:
            raise RequestError(f"body too large ({length} bytes, at most {MAX_BODY})", 413)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RequestError(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        ctl = self.server.controller
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET" and path == "/healthz":
                ok = ctl.healthy()
                self._send(200 if ok else 503, {"ok": ok})
            elif method == "GET" and path == "/status":
                self._send(200, ctl.status())
            elif method == "GET" and path == "/models":
                self._send(200, {"models": ctl.models()})
            elif method == "POST" and path == "/models/activate":
                body = self._body()
                version = _int_field(body, "version", True)
                assert version is not None
                name = body.get("name")
                if name is not None and not isinstance(name, str):
                    raise RequestError('"name" must be a string')
                self._send(200, ctl.activate(version, name))
            elif method == "POST" and path == "/models/rollback":
                self._body()
                self._send(200, ctl.rollback())
            elif method == "POST" and path == "/models/pin":
                self._send(200, ctl.pin(_int_field(self._body(), "version", False)))
            elif method == "POST" and path == "/models/unpin":
                self._body()
                self._send(200, ctl.unpin())
            elif path in {
                "/healthz",
                "/status",
                "/models",
                "/models/activate",
                "/models/rollback",
                "/models/pin",
                "/models/unpin",
            }:
                self._send(405, {"error": f"{method} is not allowed on {path}"})
            else:
                self._send(404, {"error": f"no such endpoint {path}: see /status, /models, /healthz"})
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)})
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

    def __init__(self, address: tuple[str, int], controller: Controller) -> None:
        self.controller = controller
        super().__init__(address, _Handler)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, controller: Controller) -> None:
        self.controller = controller
        super().__init__(str(path), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, _ = super().get_request()
        return sock, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


class ControlServer:
    """Serves the control API from a background thread until ``close``."""

    def __init__(self, address: str | tuple[str, int] | Path, controller: Controller) -> None:
        addr = parse_address(address) if isinstance(address, str) else address
        try:
            if isinstance(addr, Path):
                addr.unlink(missing_ok=True)
                self._server: _Server | _UnixServer = _UnixServer(addr, controller)
                os.chmod(addr, 0o660)
            else:
                self._server = _Server(addr, controller)
        except OSError as exc:
            raise ConfigError(
                f"control API cannot listen on {address}: {exc.strerror or exc}; "
                "pick another port with --control HOST:PORT"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    @property
    def address(self) -> str:
        if isinstance(self._server, _UnixServer):
            return f"unix:{self._server.server_address!s}"
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> ControlServer:
        self._thread.start()
        log.info("control API on %s", self.address)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
