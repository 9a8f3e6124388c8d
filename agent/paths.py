"""Where the agent keeps its state and looks for its config.

State (models, update state, metrics.db, spool, …):

- ``$STATE_DIRECTORY`` when systemd runs the unit with ``StateDirectory=edge-agent``
  (the first entry if systemd lists several, colon-separated);
- else ``$XDG_STATE_HOME/edge-agent``;
- else ``~/.local/state/edge-agent``.

Config: ``$CONFIGURATION_DIRECTORY/agent.toml`` under systemd, else
``$XDG_CONFIG_HOME/edge-agent/agent.toml`` or ``~/.config/edge-agent/agent.toml``.
Every function takes the environment as an argument so tests need no patching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "edge-agent"
CONFIG_NAME = "agent.toml"


def _first(value: str) -> str:
    return value.split(":")[0]


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The state root for this process (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(_first(env["STATE_DIRECTORY"]))
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / APP
    return _home(env) / ".local" / "state" / APP


def default_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder holding ``agent.toml`` (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("CONFIGURATION_DIRECTORY"):
        return Path(_first(env["CONFIGURATION_DIRECTORY"]))
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / APP
    return _home(env) / ".config" / APP


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    return default_config_dir(env) / CONFIG_NAME
