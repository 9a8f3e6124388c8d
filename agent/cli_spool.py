"""``edge-agent spool status|flush|purge``: the frames kept for upload.

With a running agent each asks it through the control API (``GET /spool``, ``POST
/spool/flush``, ``POST /spool/purge``), so nothing touches the spool behind its back. When no
agent answers:

- ``status`` reads ``<state>/spool/spool.db`` read-only;
- ``flush`` uploads in the foreground with the config's ``[upload]`` (``--config``, or
  ``--upload URL``), until the spool is empty, the target refuses, or ``--timeout``;
- ``purge`` deletes every spooled frame itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli_control import AgentNotRunning, Target, _add_control_flag
from agent.config import Config, apply_overrides, load_config
from agent.paths import default_config_path
from inference.errors import EdgeAgentError

STOP_STATES = ("credentials_rejected", "target_refused")


def _mb(n: Any) -> str:
    n = float(n or 0)
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB"


def format_status(data: dict[str, Any]) -> str:
    """The answer of ``GET /spool`` (or the offline reading) as lines for a person."""
    s = data.get("spool") or {}
    lines = []
    if data.get("message"):
        lines.append(str(data["message"]))
    quota = f" (quota {_mb(s['max_bytes'])}, {s.get('max_items')} items)" if s.get("max_bytes") else ""
    lines.append(
        f"spool     {s.get('pending', 0)} waiting, {s.get('items', 0)} items, {_mb(s.get('bytes'))}{quota}"
    )
    for name, entry in (s.get("by_strategy") or {}).items():
        lines.append(f"  {name or '(none)':<12} {entry.get('items', 0):>6} items  {_mb(entry.get('bytes'))}")
    if s.get("parked"):
        lines.append(f"parked    {s['parked']} ({_mb(s.get('parked_bytes'))}): the server refused them")
    lines.append(
        f"counted   dropped over the quota {s.get('dropped', 0)}, refused {s.get('refused', 0)}, "
        f"quarantined {s.get('quarantined', 0)}"
    )
    up = data.get("upload")
    if up:
        line = (
            f"upload    {up.get('target')}: {up.get('state')}, {up.get('uploaded', 0)} uploaded "
            f"({_mb(up.get('uploaded_bytes'))})"
        )
        if up.get("schedule") and up.get("schedule") != "always":
            line += f", schedule {up['schedule']}"
        lines.append(line)
        if up.get("last_error"):
            lines.append(f"          last error: {up['last_error']}")
    elif "upload" not in data and data.get("sampling") is not None:
        lines.append("upload    off (no [upload] url): frames stay in the spool")
    smp = data.get("sampling")
    if smp:
        lines.append(
            f"sampling  policy from {smp.get('policy')}: {', '.join(smp.get('strategies', []))}; "
            f"kept {smp.get('kept', 0)}, duplicates {smp.get('duplicates', 0)}, "
            f"queue drops {smp.get('queue_dropped', 0)}"
        )
    if data.get("offline"):
        lines.append(f"(agent not running: read from {data['offline']})")
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> Config:
    path = Path(args.config) if args.config else default_config_path()
    base = load_config(path) if (args.config or path.exists()) else Config()
    return apply_overrides(base, {"upload": args.upload})


def _spool_dir(target: Target) -> Path:
    from agent.collection import spool_dir

    return spool_dir(target.state_dir)


def _offline_status(args: argparse.Namespace, target: Target, err: AgentNotRunning) -> int:
    from monitoring.spool import read_status

    root = _spool_dir(target)
    try:
        status = read_status(root)
    except EdgeAgentError as exc:
        print(f"edge-agent: {err}; and {exc}", file=sys.stderr)
        return 1
    data = {"spool": status, "offline": str(root)}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return 0


def _offline_purge(args: argparse.Namespace, target: Target, err: AgentNotRunning) -> int:
    from monitoring.spool import Spool

    cfg = _config(args)
    root = _spool_dir(target)
    if not (root / "spool.db").exists():
        print(f"edge-agent: {err}; and there is no spool at {root}", file=sys.stderr)
        return 1
    with Spool(root, max_bytes=cfg.spool.max_bytes, max_items=cfg.spool.max_items) as spool:
        n = spool.purge()
        status = spool.status()
    print(
        json.dumps({"purged": n, "spool": status}, indent=2) if args.json else f"{n} spooled frame(s) deleted"
    )
    return 0


def _offline_flush(args: argparse.Namespace, target: Target, err: AgentNotRunning) -> int:
    from agent.collection import make_uploader, open_spool
    from agent.fleet_channel import default_device_id

    cfg = _config(args)
    if cfg.upload.url is None:
        print(
            f"edge-agent: {err}; to upload without it give the target: --config FILE with [upload] url, "
            "or --upload URL",
            file=sys.stderr,
        )
        return 1
    print(f"edge-agent: no agent answers: uploading {_spool_dir(target)} myself", file=sys.stderr)
    spool = open_spool(cfg, target.state_dir)
    spool.unpark()  # the target may have been fixed since the server refused them
    uploader = make_uploader(cfg, spool, cfg.mqtt.device_id or default_device_id())
    deadline = time.monotonic() + args.timeout
    try:
        uploader.start()
        uploader.flush()
        done = False
        while not done and time.monotonic() < deadline:
            done = uploader.drain(min(1.0, max(0.0, deadline - time.monotonic())))
            if uploader.status()["state"] in STOP_STATES:
                break
    finally:
        uploader.stop()
        status = {"spool": spool.status(), "upload": uploader.status()}
        spool.close()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    left = status["spool"]["pending"]
    if left:
        print(f"edge-agent: {left} frame(s) still wait for upload", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``spool status|flush|purge``."""
    spool = sub.add_parser("spool", help="the frames kept for labelling, waiting for upload")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="status|flush|purge", required=True)

    p = spool_sub.add_parser("status", help="items and bytes waiting, by strategy; the uploader's state")
    _add_control_flag(p)
    p.set_defaults(control_call=lambda a: ("GET", "/spool", None), offline=_offline_status)
    p.set_defaults(format_answer=format_status)

    p = spool_sub.add_parser("flush", help="upload now, ignoring the schedule and any back-off")
    _add_control_flag(p)
    p.add_argument("--config", default=None, metavar="FILE", help="the agent's config, when no agent runs")
    p.add_argument("--upload", default=None, metavar="URL", help="the target, when no agent runs")
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (no agent)"
    )
    p.set_defaults(control_call=lambda a: ("POST", "/spool/flush", {}), offline=_offline_flush)
    p.set_defaults(format_answer=format_status)

    p = spool_sub.add_parser("purge", help="delete every spooled frame (parked ones too)")
    _add_control_flag(p)
    p.add_argument("--config", default=None, metavar="FILE", help="the agent's config, when no agent runs")
    p.add_argument("--upload", default=None, metavar="URL", help=argparse.SUPPRESS)
    p.set_defaults(control_call=lambda a: ("POST", "/spool/purge", {}), offline=_offline_purge)
    p.set_defaults(format_answer=format_status)
