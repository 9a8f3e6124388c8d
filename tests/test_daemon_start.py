"""Defect 8: a configured component that cannot start fails the start before ``READY=1``.

Real ``edge-agent run`` processes with a real sd_notify socket: systemd must see a failed
start (and restart with back-off), not a READY agent that runs without its control API.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.fixtures.agent import NotifySocket, run_agent


def test_control_api_that_cannot_listen_fails_before_ready(
    tmp_path: Path, notify_socket: NotifySocket, tiny_bundle: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # another agent holds the socket
    other.bind(str(state / "control.sock"))
    other.listen(1)
    try:
        proc = run_agent(
            ["run", "--model", str(tiny_bundle), "--source", "synthetic:16x16@30",
             "--state-dir", str(state), "--max-frames", "5"],
            tmp_path,
            NOTIFY_SOCKET=str(notify_socket.path),
        )  # fmt: skip
    finally:
        other.close()
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "another agent is serving the control API" in proc.stderr
    assert "READY=1" not in notify_socket.fields()


def test_control_off_runs_without_the_api(
    tmp_path: Path, notify_socket: NotifySocket, tiny_bundle: Path
) -> None:
    """``control = "off"`` is the explicit way to run without it: READY, frames, exit 0."""
    state = tmp_path / "state"
    proc = run_agent(
        ["run", "--model", str(tiny_bundle), "--source", "synthetic:16x16@30",
         "--state-dir", str(state), "--max-frames", "5", "--control", "off"],
        tmp_path,
        NOTIFY_SOCKET=str(notify_socket.path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "READY=1" in notify_socket.fields()
    assert not (state / "control.sock").exists()
