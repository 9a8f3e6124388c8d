"""systemd/edge-agent.service: required settings, ``systemd-analyze verify`` and the security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.agent import ROOT

UNIT = ROOT / "systemd" / "edge-agent.service"
EXPOSURE_TARGET = 2.5  # DESIGN §9


def settings(path: Path = UNIT) -> dict[str, list[str]]:
    """``Section.Key -> [values]`` (systemd allows repeated keys), comments skipped."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_unit_has_the_required_settings() -> None:
    s = settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"] == "30"
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.StateDirectory"] == "edge-agent"
    assert one["Service.ConfigurationDirectory"] == "edge-agent"
    assert one["Service.CacheDirectory"] == "edge-agent"
    assert one["Service.User"] == "edge-agent" and "Service.DynamicUser" not in s
    assert "video" in one["Service.SupplementaryGroups"].split()
    assert (
        one["Service.ExecStart"]
        == "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"
    )
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Service.DevicePolicy"] == "closed" and "char-video4linux rw" in s["Service.DeviceAllow"]
    assert one["Service.CapabilityBoundingSet"] == ""
    assert one["Service.RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    hardening = ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                 "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups")  # fmt: skip
    for key in hardening:
        assert one[f"Service.{key}"] == "yes", key
    assert one["Service.ProtectSystem"] == "strict"
    assert "@system-service" in s["Service.SystemCallFilter"]
    assert "Service.MemoryDenyWriteExecute" not in s  # GPU execution providers JIT (see the unit's comment)
    assert one["Install.WantedBy"] == "multi-user.target"


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed here")
    return path


def _testable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists on this machine."""
    text = UNIT.read_text()
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={sys.executable} -m agent.cli", text)
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    res = subprocess.run([_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [
        line for line in (res.stdout + res.stderr).splitlines() if str(copy) in line or "edge-agent" in line
    ]
    assert res.returncode == 0, res.stderr
    assert complaints == []  # unknown keys and bad values are only warnings: none allowed


def test_security_exposure_is_within_target(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    res = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+(?:\.\d+)?)", res.stdout + res.stderr)
    if res.returncode != 0 and m is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {res.stderr.strip()[:200]}")
    assert m is not None, res.stdout
    assert float(m.group(1)) <= EXPOSURE_TARGET, res.stdout
