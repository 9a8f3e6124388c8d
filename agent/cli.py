"""``edge-agent``: the command line.

    edge-agent run [--config PATH] [--model M] [--source SPEC] [--state-dir DIR] [--max-frames N]
                   [--results -|PATH] [--threads N] [--runtime auto|onnx|tflite] [--loop] [--log-level L]
    edge-agent config check PATH

Other modules add their subcommands with ``register(subparsers)``: agent/cli_models.py
(``bundle``, ``models fetch``), agent/cli_control.py (``status``, ``models list|activate|…``)
and agent/cli_bench.py (``bench``). A subcommand sets ``func(args) -> int`` with
``set_defaults``; modules sharing the ``models`` group get it from ``cli_models.models_group``.

Exit codes: 0 normal end (also after SIGTERM/SIGINT), 1 nothing can be served at start
(model will not load, source will not open), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import (
    __version__,
    cli_bench,
    cli_control,
    cli_fleet,
    cli_models,
    cli_report,
    cli_spool,
    cli_trust,
)
from agent.config import LOG_LEVELS, RUNTIMES, SWAP_POLICIES, Config, apply_overrides, load_config
from inference.errors import ConfigError, EdgeAgentError

# `run` flags that map onto Config keys (dest == key). Issue 3 adds --models-dir and --control here.
RUN_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--model",
        {
            "metavar": "M",
            "help": "bundle folder, bare .onnx/.tflite file, or zoo name (blazeface, ppocr-det, …)",
        },
    ),
    (
        "--source",
        {
            "metavar": "SPEC",
            "help": "/dev/video0, 0, rtsp://…, video file, image folder, synthetic:WxH@FPS, demo",
        },
    ),
    (
        "--state-dir",
        {"metavar": "DIR", "help": "state folder (default: $STATE_DIRECTORY or ~/.local/state/edge-agent)"},
    ),
    ("--max-frames", {"metavar": "N", "type": int, "help": "stop after N frames"}),
    ("--results", {"metavar": "-|PATH", "help": "write one JSON object per frame to stdout (-) or a file"}),
    ("--threads", {"metavar": "N", "type": int, "help": "runtime threads (default: the engine decides)"}),
    ("--runtime", {"choices": RUNTIMES, "help": "runtime (default: auto, by file type)"}),
    (
        "--input-size",
        {
            "metavar": "HxW",
            "help": "height x width for a model whose input size is dynamic, e.g. 48x320 (input_size)",
        },
    ),
    ("--loop", {"action": "store_const", "const": True, "help": "replay a file or folder source at its end"}),
    ("--log-level", {"choices": LOG_LEVELS, "type": str.lower, "help": "log level (default: info)"}),
    (
        "--models-dir",
        {
            "metavar": "DIR",
            "help": "model store root (versions, current/previous, update state); bundles dropped "
            "into DIR/incoming/ are validated and hot-swapped in; --model seeds an empty store",
        },
    ),
    (
        "--control",
        {
            "metavar": "HOST:PORT",
            "help": "serve the local control API (e.g. 127.0.0.1:8470 or unix:/run/x.sock)",
        },
    ),
    ("--swap-policy", {"choices": SWAP_POLICIES, "help": "availability (default) or memory"}),
    (
        "--allow-downgrade",
        {"action": "store_const", "const": True, "help": "let the drop folder install a lower version"},
    ),
    (
        "--mqtt",
        {"metavar": "URL", "help": "fleet broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] ([mqtt] url)"},
    ),
    ("--device-id", {"metavar": "ID", "help": "this device's id on the fleet broker (default: host name)"}),
    ("--group", {"metavar": "G", "help": "the fleet group this device belongs to (group jobs)"}),
    (
        "--window",
        {
            "metavar": "N|30s",
            "help": "drift window: N samples (1 a second by default) or a time like 5m ([monitoring] window)",
        },
    ),
    (
        "--metrics",
        {
            "metavar": "HOST:PORT",
            "help": "serve Prometheus /metrics on HOST:PORT, or PORT on loopback ([monitoring] metrics)",
        },
    ),
    (
        "--upload",
        {
            "metavar": "URL",
            "help": "upload the frames sampling keeps: s3://bucket/prefix or "
            "https://host/path/{sha256}.jpg ([upload] url; turns sampling on)",
        },
    ),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def cmd_run(args: argparse.Namespace) -> int:
    from agent import daemon

    overrides = {_dest(flag): getattr(args, _dest(flag)) for flag, _ in RUN_FLAGS}
    try:
        base = load_config(Path(args.config)) if args.config else Config()
        config = apply_overrides(base, overrides)
    except ConfigError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 2
    return daemon.run(config, config_path=Path(args.config) if args.config else None, overrides=overrides)


def cmd_config_check(args: argparse.Namespace) -> int:
    """What ``run --config PATH`` does with the file before it starts anything: the same parser,
    then the same completion (``daemon.demo_defaults``), so both reject alike (exit code 2)."""
    from agent import daemon

    try:
        config, _demo = daemon.demo_defaults(load_config(Path(args.path)))
    except ConfigError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.path}: ok")
    print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device ML agent: camera inference, hot model updates with rollback, monitoring.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the agent (without --model and --source: the demo)",
        description="Run the inference loop. Without --model and --source it runs the demo: "
        "the default model on generated scenes.",
    )
    run.add_argument("--config", metavar="PATH", help="TOML config file; flags override its keys")
    for flag, kwargs in RUN_FLAGS:
        run.add_argument(flag, dest=_dest(flag), default=None, **kwargs)
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = config_sub.add_parser("check", help="validate a config file and print the effective settings")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(func=cmd_config_check)

    for module in (cli_models, cli_control, cli_bench, cli_trust, cli_fleet, cli_report, cli_spool):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
    except ConfigError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 2
    except EdgeAgentError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
