"""Crash tests, table-driven over every persisted update state (DESIGN §3, after Mender).

For each state the agent (a real ``edge-agent run`` process with a model store) is driven
into it by a drop into ``incoming/``, SIGKILLed right after that state reached the disk
(``EDGE_AGENT_CRASH_AT``), restarted, and must end serving a verified version with a
consistent state file.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.bundle import open_bundle
from tests.fixtures.agent import drop_bundle, result_lines, start_agent, stop_agent, wait_for

Make = Callable[..., Path]

# (state to crash in, candidate kind, version serving after the restart settles)
CASES = [
    ("FETCHING", "good", 1),
    ("VERIFYING", "good", 1),
    ("STAGED", "good", 1),
    ("VALIDATING", "good", 1),
    ("ACTIVATING", "good", 2),  # resumed: the swap is redone, probation passes, committed
    ("ACTIVATING", "collapse", 1),  # resumed, and its probation still fails against v1's figures
    ("PROBATION", "good", 2),
    ("PROBATION", "collapse", 1),  # the resumed probation still compares with v1's figures
    ("COMMITTED", "good", 2),
    ("ROLLING_BACK", "collapse", 1),
    ("FAILED", "tampered", 1),
    ("IDLE", "good", 2),  # killed right after the commit reached IDLE
]


def _state(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "update-state.json").read_text()))


def _run_args(store: Path, seed: Path, results: Path, config: Path) -> list[str]:
    return [
        "run",
        "--config", str(config),
        "--models-dir", str(store),
        "--state-dir", str(store),
        "--model", str(seed),
        "--source", "synthetic:16x16@100,live",
        "--results", str(results),
        "--log-level", "info",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("state", "kind", "expect"), CASES, ids=[f"{s}-{k}" for s, k, _ in CASES])
def test_sigkill_in_every_state_then_restart(
    state: str, kind: str, expect: int, tmp_path: Path, classifier_bundle: Make
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
    proc = start_agent(_run_args(store, seed, first, config), tmp_path, EDGE_AGENT_CRASH_AT=state)
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
