"""CLI client of the local control API: ``edge-agent status`` and ``edge-agent models …``.

Which agent it talks to, first match wins:

1. ``--control ADDR`` (``unix:/path`` or ``HOST:PORT``);
2. ``unix:<state>/control.sock``, where the state root is ``--state-dir DIR``, else
   ``$STATE_DIRECTORY``, else ``agent.paths.default_state_dir`` (as ``edge-agent run`` picks it).

On a TCP address it sends the bearer token from ``--token-file FILE``, else from
``<state>/control.token``. ``models list`` reads the store on disk when no agent answers.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.cli_models import models_group
from agent.control import default_address, parse_address, read_token_file, token_path
from agent.paths import default_state_dir
from inference.errors import ConfigError, EdgeAgentError, TransientError

SYSTEMD_STATE_DIR = Path("/var/lib/edge-agent")  # StateDirectory=edge-agent in systemd/edge-agent.service


class AgentNotRunning(TransientError):
    """Nothing listens at the control address: no socket file, or the connection was refused."""


@dataclass(frozen=True)
class Target:
    """Where the CLI sends its requests, and what to tell the user when that goes wrong."""

    address: str
    state_dir: Path
    token: str | None = None
    token_note: str = ""  # for a 401: which token was sent, or why none was
    hint: str = ""  # for "no agent answers": what to check


def resolve_target(
    control: str | None = None,
    state_dir: str | Path | None = None,
    token_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Target:
    """The address, state root and token for ``--control`` / ``--state-dir`` / ``--token-file``."""
    env = os.environ if env is None else env
    state = Path(state_dir) if state_dir else default_state_dir(env)
    address = control.strip() if control else default_address(state)
    if control:
        hint = f"is `edge-agent run` running with --control {address}?"
    else:
        hint = f"is `edge-agent run` running with --state-dir {state}?"
        if not state_dir and not env.get("STATE_DIRECTORY") and state != SYSTEMD_STATE_DIR:
            hint += (
                f" (the systemd service keeps its state in {SYSTEMD_STATE_DIR}: "
                f"add --state-dir {SYSTEMD_STATE_DIR})"
            )
    if isinstance(parse_address(address), Path):
        return Target(address, state, hint=hint)
    if token_file:
        path = Path(token_file)
        token = read_token_file(path)
        if token is None:
            raise ConfigError(f"--token-file {path} does not exist: give the agent's control.token")
        return Target(address, state, token, f"this command sent the token from {path}", hint)
    path = token_path(state)
    try:
        token = read_token_file(path)
    except ConfigError as exc:  # reads may not need it: say why only if the agent asks for one
        return Target(address, state, None, f"no token was sent: {exc}", hint)
    if token is None:
        note = (
            f"no token was sent: there is no {path}; give the agent's state root with --state-dir DIR "
            "or the token with --token-file FILE"
        )
        return Target(address, state, None, note, hint)
    return Target(address, state, token, f"this command sent the token from {path}", hint)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError under an httpx error (httpx wraps it in its own exceptions)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class ControlClient:
    """Talks to a running agent's control API. ``transport`` is injectable for tests."""

    def __init__(
        self,
        address: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        *,
        token: str | None = None,
        hint: str = "is `edge-agent run` running, and with this --control address?",
    ) -> None:
        addr = parse_address(address)
        if isinstance(addr, Path):
            transport = transport or httpx.HTTPTransport(uds=str(addr))
            base = "http://edge-agent"
        else:
            base = f"http://{addr[0]}:{addr[1]}"
        self.address = address if not isinstance(addr, Path) else f"unix:{addr}"
        self.hint = hint
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client = httpx.Client(base_url=base, timeout=timeout, transport=transport, headers=headers)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            resp = self._client.request(method, path, json=body if method == "POST" else None)
        except httpx.HTTPError as exc:
            os_err = _os_error(exc)
            code = os_err.errno if os_err is not None else None
            if code in (errno.ENOENT, errno.ECONNREFUSED):
                why = "no socket there" if code == errno.ENOENT else "connection refused"
                raise AgentNotRunning(f"no agent answers on {self.address} ({why}): {self.hint}") from None
            if code in (errno.EACCES, errno.EPERM):
                raise TransientError(
                    f"permission denied on {self.address}: the socket is open to the agent's user "
                    "and group only (mode 0660); run this as that user, add yourself to its group, "
                    "or use sudo"
                ) from None
            raise TransientError(
                f"cannot reach the agent's control API at {self.address} ({exc}); {self.hint}"
            ) from None
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {"error": resp.text.strip()}

    def close(self) -> None:
        self._client.close()


# -- the store on disk, when no agent runs -----------------------------------------------------


def _read_pin(path: Path) -> tuple[Any, str | None]:
    """The pin in the update state file, read only (no recovery, nothing moved aside)."""
    from ota.update_machine import UpdateRecord

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"pinned version unknown: cannot read {path} ({exc.strerror or exc})"
    try:
        return UpdateRecord.from_json(json.loads(raw)).pin, None
    except (ValueError, TypeError) as exc:
        return None, f"pinned version unknown: {path} is unreadable ({exc})"


def offline_models(root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of ``GET /models`` read from the store under ``root``, and a warning if any."""
    if not (root / "models").is_dir():
        raise ConfigError(f"there is no model store under {root} (no models/ folder) to read instead")
    from agent.manager import store_models  # the same rows as the running agent's
    from ota.store import ModelStore

    store = ModelStore(root)
    pin, warning = _read_pin(store.state_path)
    return store_models(store, pin), warning


def _list_offline(args: argparse.Namespace, target: Target, err: AgentNotRunning) -> int:
    root = Path(args.models_dir) if getattr(args, "models_dir", None) else target.state_dir
    try:
        models, warning = offline_models(root)
    except (EdgeAgentError, OSError) as exc:
        print(f"edge-agent: {err}; and {exc}", file=sys.stderr)
        return 1
    note = f"(agent not running: read from {root})"
    if warning:
        print(f"edge-agent: {warning}", file=sys.stderr)
    if args.json:
        print(note, file=sys.stderr)  # stdout stays the API's JSON
        print(json.dumps({"models": models}, indent=2))
    else:
        print(_fmt_models(models))
        print(note)
    return 0


# -- output -------------------------------------------------------------------------------------


def _fmt_status(s: dict[str, Any]) -> str:
    prev = s.get("previous") or {}
    lines = [
        f"model     {s.get('model')} v{s.get('version')} ({str(s.get('sha256') or '')[:12]})",
        f"phase     {s.get('phase')}" + (f"  ({s['reason']})" if s.get("reason") else ""),
        *([f"runtime   {s.get('runtime')} on {s['provider']}"] if s.get("provider") else []),
        f"frames    {s.get('frames')}  dropped {s.get('dropped')}  fps {s.get('fps', 0):.1f}",
        f"uptime    {s.get('uptime_s', 0):.0f} s",
        f"previous  {('v' + str(prev.get('version'))) if prev else '-'}",
    ]
    if s.get("pinned") is not None:
        lines.append(f"pinned    v{s['pinned']}")
    if s.get("queued"):
        lines.append(f"queued    {', '.join(s['queued'])}")
    if s.get("held"):
        lines.append(f"updates   waiting: {s['held']}")
    elif s.get("window"):
        lines.append(f"updates   window {s['window']}")
    drift = s.get("drift")
    if drift:
        lines.append(f"drift     {drift_line(drift)}")
    fleet = s.get("fleet")
    if fleet:
        lines.append(
            f"fleet     {fleet.get('device_id')}"
            + (f" (group {fleet['group']})" if fleet.get("group") else "")
            + f" on {fleet.get('broker')}: {'connected' if fleet.get('connected') else 'offline'}"
            + f", outbox {fleet.get('outbox_pending')}"
        )
    return "\n".join(lines)


def drift_line(d: dict[str, Any]) -> str:
    """One line of drift state: the reference, the last window, the active alerts."""
    ref = d.get("reference") or "-"
    if ref == "learning":
        learning = d.get("learning") or {}
        head = f"learning a reference ({learning.get('samples', 0)} of {learning.get('of', '?')} samples)"
    else:
        head = f"reference {ref}"
    last = d.get("last")
    if last:
        state = (
            "not judged"
            if not last.get("judged")
            else ("drifted: " + ", ".join(last.get("drifted") or []) if last.get("drifted") else "ok")
        )
        head += f", window {last.get('index')} ({last.get('samples')} samples) {state}"
    else:
        head += f", first window ({d.get('window')}) not done yet"
    alerts = d.get("alerts") or []
    if alerts:
        head += "; ALERTS " + ", ".join(
            f"{a.get('kind')} {a.get('metric')} "
            f"({a.get('score')} {a.get('value', 0):.3g} > {a.get('threshold', 0):.3g})"
            for a in alerts
        )
    else:
        head += "; no alerts"
    if d.get("store_failures"):
        head += f"; {d['store_failures']} metrics.db writes failed"
    return head


def _fmt_models(models: list[dict[str, Any]]) -> str:
    rows = ["name                 version  sha256        flags"]
    for m in models:
        flags = ",".join(f for f in ("current", "previous", "pinned") if m.get(f))
        rows.append(
            f"{m.get('name', ''):<20} {m.get('version', ''):>7}  {str(m.get('sha256', ''))[:12]:<12}  {flags}"
        )
    return "\n".join(rows)


def _run(args: argparse.Namespace) -> int:
    try:
        target = resolve_target(args.control, args.state_dir, args.token_file)
        client = ControlClient(target.address, token=target.token, hint=target.hint)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    try:
        method, path, body = args.control_call(args)
        status, data = client.request(method, path, body)
    except AgentNotRunning as exc:
        offline = getattr(args, "offline", None)
        if offline is not None:
            return int(offline(args, target, exc))
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, TransientError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if status >= 400:
        error = data.get("error", data) if isinstance(data, dict) else data
        if status == 401 and target.token_note:
            error = f"{error}\nedge-agent: {target.token_note}"
        print(f"edge-agent: {error}", file=sys.stderr)
        return 1
    fmt = getattr(args, "format_answer", None)
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif fmt is not None:
        print(fmt(data))
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
        default=None,
        metavar="ADDR",
        help="the agent's control API: unix:/path/to.sock or HOST:PORT "
        "(default: unix:<state-dir>/control.sock)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="the agent's state root, where its control.sock and control.token are "
        "(default: $STATE_DIRECTORY, else ~/.local/state/edge-agent; "
        "the systemd service's: /var/lib/edge-agent)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="the bearer token for a TCP --control address (default: <state-dir>/control.token)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(func=_run)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the top level and ``list|activate|rollback|pin|unpin`` under ``models``."""
    models_sub = models_group(sub)
    p = sub.add_parser("status", help="show what a running agent serves")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("GET", "/status", None))

    p = models_sub.add_parser(
        "list", help="the versions in the agent's store (read from disk when no agent runs)"
    )
    _add_control_flag(p)
    p.add_argument(
        "--models-dir",
        default=None,
        metavar="DIR",
        help="the store to read when no agent answers, if not the state root (the agent's --models-dir)",
    )
    p.set_defaults(control_call=lambda a: ("GET", "/models", None), offline=_list_offline)

    p = models_sub.add_parser(
        "activate",
        help="serve VERSION now (validated, then probation); pin, downgrade and release-counter rules apply",
    )
    p.add_argument("version", type=int)
    p.add_argument("--name", help="model name, when the store holds several")
    p.add_argument(
        "--force",
        action="store_true",
        help="override the pin, downgrade and release-counter rules (logged, and recorded in the job)",
    )
    _add_control_flag(p)
    p.set_defaults(
        control_call=lambda a: (
            "POST",
            "/models/activate",
            {
                "version": a.version,
                **({"name": a.name} if a.name else {}),
                **({"force": True} if a.force else {}),
            },
        )
    )

    p = models_sub.add_parser("rollback", help="go back to the previous version")
    p.add_argument("--force", action="store_true", help="roll back even while a version is pinned (logged)")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/models/rollback", {"force": True} if a.force else {}))

    p = models_sub.add_parser("pin", help="never replace VERSION (default: the current one) automatically")
    p.add_argument("version", type=int, nargs="?")
    _add_control_flag(p)
    p.set_defaults(
        control_call=lambda a: ("POST", "/models/pin", {} if a.version is None else {"version": a.version})
    )

    p = models_sub.add_parser("unpin", help="let automatic updates replace the model again")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/models/unpin", {}))

    updates = sub.add_parser("updates", help="when a running agent installs updates")
    updates_sub = updates.add_subparsers(dest="updates_command", metavar="COMMAND", required=True)
    p = updates_sub.add_parser(
        "hold", help="pause installs: jobs are still verified and queued, and run after `updates release`"
    )
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/updates/hold", {}))
    p = updates_sub.add_parser("release", help="resume installs (queued jobs run, within the update window)")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("POST", "/updates/release", {}))
