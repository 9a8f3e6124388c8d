"""``edge-agent report``: drift, confidence and latency plots and an ``index.html`` (monitoring/report.py).

    edge-agent report [--state-dir DIR] [--db FILE] --out DIR [--since 24h]

Reads ``<state>/metrics.db`` read-only (a running agent is not disturbed). Prints the path of
``index.html`` and a one-line summary; exits 1 with the reason when there is nothing to
report, no database, or no matplotlib (``pip install 'edge-agent[report]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inference.errors import EdgeAgentError

SubParsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]


def _since(text: str) -> float:
    from monitoring.report import parse_since

    try:
        return parse_since(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_report(args: argparse.Namespace) -> int:
    from agent.paths import default_state_dir
    from monitoring.report import build_report

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    db = Path(args.db) if args.db else state_dir / "metrics.db"
    try:
        summary = build_report(db, Path(args.out), args.since, state_dir=state_dir if not args.db else None)
    except EdgeAgentError as err:
        print(f"edge-agent report: error: {err}", file=sys.stderr)
        return 1
    print(summary.index)
    print(summary.line())
    return 0


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "report",
        help="plots of drift, confidence and latency, and an index.html, from metrics.db",
        description="Build PNG plots (drift scores against their thresholds, confidence, latency and fps, "
        "with alerts and model versions marked) and an index.html summary from the agent's metrics.db. "
        "The database is read read-only: the agent may be running.",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state folder (default: $STATE_DIRECTORY or ~/.local/state/edge-agent)",
    )
    p.add_argument("--db", metavar="FILE", help="the metrics database (default: STATE_DIR/metrics.db)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for index.html and the PNGs")
    p.add_argument(
        "--since",
        metavar="T",
        type=_since,
        default="24h",
        help="how far back: 30m, 24h, 7d, or seconds (default: 24h)",
    )
    p.set_defaults(func=cmd_report)
