"""CLI client of the local control API: ``edge-agent status`` and ``edge-agent models …``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from agent.cli_models import models_group
from agent.control import DEFAULT_PORT, parse_address
from inference.errors import ConfigError, TransientError

DEFAULT_CONTROL = os.environ.get("EDGE_AGENT_CONTROL", f"127.0.0.1:{DEFAULT_PORT}")


class ControlClient:
    """Talks to a running agent's control API. ``transport`` is injectable for tests."""

    def __init__(
        self,
        address: str = DEFAULT_CONTROL,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        addr = parse_address(address)
        if isinstance(addr, Path):
            transport = transport or httpx.HTTPTransport(uds=str(addr))
            base = "http://edge-agent"
        else:
            base = f"http://{addr[0]}:{addr[1]}"
        self.address = address
        self._client = httpx.Client(base_url=base, timeout=timeout, transport=transport)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            resp = self._client.request(method, path, json=body if method == "POST" else None)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"cannot reach the agent's control API at {self.address} ({exc}); "
                "is `edge-agent run` running, and with this --control address?"
            ) from None
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {"error": resp.text.strip()}

    def close(self) -> None:
        self._client.close()


def _fmt_status(s: dict[str, Any]) -> str:
    prev = s.get("previous") or {}
    lines = [
        f"model     {s.get('model')} v{s.get('version')} ({str(s.get('sha256') or '')[:12]})",
        f"phase     {s.get('phase')}" + (f"  ({s['reason']})" if s.get("reason") else ""),
        f"frames    {s.get('frames')}  dropped {s.get('dropped')}  fps {s.get('fps', 0):.1f}",
        f"uptime    {s.get('uptime_s', 0):.0f} s",
        f"previous  {('v' + str(prev.get('version'))) if prev else '-'}",
    ]
    if s.get("pinned") is not None:
        lines.append(f"pinned    v{s['pinned']}")
    return "\n".join(lines)


def _fmt_models(models: list[dict[str, Any]]) -> str:
    rows = ["name                 version  sha256        flags"]
    for m in models:
        flags = ",".join(f for f in ("current", "previous", "pinned") if m.get(f))
        rows.append(
            f"{m.get('name', ''):<20} {m.get('version', ''):>7}  {str(m.get('sha256', ''))[:12]:<12}  {flags}"
        )
    return "\n".join(rows)


def _run(args: argparse.Namespace) -> int:
    client = ControlClient(args.control)
    try:
        method, path, body = args.control_call(args)
        status, data = client.request(method, path, body)
    except (ConfigError, TransientError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if status >= 400:
        print(f"edge-agent: {data.get('error', data)}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif path == "/status":
        print(_fmt_status(data))
    elif path == "/models":
        print(_fmt_models(data.get("models", [])))
    else:
        print(data.get("message") or json.dumps(data))
    return 0


def _add_control_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control",
        default=DEFAULT_CONTROL,
        metavar="HOST:PORT",
        help=f"the agent's control API (default {DEFAULT_CONTROL}; or unix:/path)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(func=_run)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the top level and ``list|activate|rollback|pin|unpin`` under ``models``."""
    models_sub = models_group(sub)
    p = sub.add_parser("status", help="show what a running agent serves")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("GET", "/status", None))

    p = models_sub.add_parser("list", help="the versions in a running agent's store")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("GET", "/models", None))

    p = models_sub.add_parser("activate", help="serve VERSION now (validated, then probation)")
    p.add_argument("version", type=int)
    p.add_argument("--name", help="model name, when the store holds several")
    _add_control_flag(p)
    p.set_defaults(
        control_call=lambda a: (
            "POST",
            "/models/activate",
            {"version": a.version, **({"name": a.name} if a.name else {})},
        )
    )

    p = models_sub.add_parser("rollback", help="go back to the previous version")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/models/rollback", {}))

    p = models_sub.add_parser("pin", help="never replace VERSION (default: the current one) automatically")
    p.add_argument("version", type=int, nargs="?")
    _add_control_flag(p)
    p.set_defaults(
        control_call=lambda a: ("POST", "/models/pin", {} if a.version is None else {"version": a.version})
    )

    p = models_sub.add_parser("unpin", help="let automatic updates replace the model again")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/models/unpin", {}))
