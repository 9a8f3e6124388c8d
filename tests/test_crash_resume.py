"""Crash tests, table-driven over every persisted update state (DESIGN §3, after Mender).

For each state the agent (a real ``edge-agent run`` process with a model store) is driven
into it by a drop into ``incoming/``, SIGKILLed at a fault point (tests/fixtures/crash_agent.py
injects it through the manager's ``faults`` hook): right after the state reached the disk, or
some time into its step, or inside a swapper step (loading, warming the candidate); then
restarted, and it must end serving a verified version with a consistent state file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.bundle import open_bundle
from tests.fixtures.agent import ROOT, agent_env, drop_bundle, result_lines, start_agent, stop_agent, wait_for

Make = Callable[..., Path]

# (fault point, delay after it in s, candidate kind, phase on disk at the kill, version serving
# after the restart settles)
CASES = [
    ("after:FETCHING", 0.0, "good", "FETCHING", 1),
    ("after:VERIFYING", 0.0, "good", "VERIFYING", 1),
    ("after:STAGED", 0.0, "good", "STAGED", 1),
    ("after:VALIDATING", 0.0, "good", "VALIDATING", 1),
    ("after:VALIDATING", 0.15, "good", "VALIDATING", 1),  # inside the validation child's run
    ("after:ACTIVATING", 0.0, "good", "ACTIVATING", 2),  # resumed: swap redone, probation passes
    ("after:ACTIVATING", 0.0, "collapse", "ACTIVATING", 1),  # resumed; still fails against v1
    ("load", 0.0, "good", "ACTIVATING", 2),  # inside ACTIVATING: loading the candidate
    ("warm", 0.0, "collapse", "ACTIVATING", 1),  # inside ACTIVATING: warming the candidate up
    ("after:PROBATION", 0.0, "good", "PROBATION", 2),
    ("after:PROBATION", 0.0, "collapse", "PROBATION", 1),  # resumed; compares with v1's figures
    ("after:PROBATION", 0.05, "good", "PROBATION", 2),  # some frames into probation
    ("after:COMMITTED", 0.0, "good", "COMMITTED", 2),
    ("after:ROLLING_BACK", 0.0, "collapse", "ROLLING_BACK", 1),
    ("after:FAILED", 0.0, "tampered", "FAILED", 1),
    ("after:IDLE", 0.0, "good", "IDLE", 2),  # killed right after the commit reached IDLE
]


def _state(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "update-state.json").read_text()))


def _run_args(store: Path, seed: Path, results: Path, config: Path) -> list[str]:
    return [
        "run",
        "--config", str(config),
        "--state-dir", str(store),
        "--model", str(seed),
        "--source", "synthetic:16x16@100,live",
        "--results", str(results),
        "--log-level", "info",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "delay", "kind", "state", "expect"), CASES, ids=[f"{p}+{d:g}s-{k}" for p, d, k, _, _ in CASES]
)
def test_sigkill_in_every_state_then_restart(
    point: str, delay: float, kind: str, state: str, expect: int, tmp_path: Path, classifier_bundle: Make
) -> None:
    store = tmp_path / "store"
    config = tmp_path / "agent.toml"
    config.write_text("[probation]\nframes = 20\n")
    seed = classifier_bundle(1)
    cand = classifier_bundle(2, strength=0.0 if kind == "collapse" else 25.0)
    if kind == "tampered":  # same size (so the watcher sees it complete), other bytes
        data = bytearray((cand / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (cand / "model.onnx").write_bytes(bytes(data))

    first = tmp_path / "first.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.crash_agent", point, str(delay), "--",
         *_run_args(store, seed, first, config)],
        cwd=ROOT, env=agent_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(result_lines(first)) > 10, 60, "the first run to serve v1")
        drop_bundle(cand, store / "incoming")
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL in {state}: rc {proc.returncode}\n{err[-3000:]}"
    )
    assert _state(store)["phase"] == state

    second = tmp_path / "second.jsonl"
    proc2 = start_agent(_run_args(store, seed, second, config), tmp_path)
    try:
        wait_for(
            lambda: _state(store)["phase"] == "IDLE" and len(result_lines(second)) > 30,
            90,
            "the restart to settle",
        )
        time.sleep(0.3)
        rec = _state(store)
        assert rec["phase"] == "IDLE"
        current = (store / "current").resolve()
        bundle = open_bundle(current, verify=True)  # sha256 and size checked
        assert bundle.manifest.version == expect, (
            f"{state}: serving v{bundle.manifest.version}, expected v{expect}"
        )
        served = result_lines(second)[-5:]
        assert {line["version"] for line in served} == {expect}
        assert not any((store / "staging").iterdir())
    finally:
        stop_agent(proc2)
    assert proc2.returncode == 0, (proc2.stderr.read() if proc2.stderr else "")[-3000:]
