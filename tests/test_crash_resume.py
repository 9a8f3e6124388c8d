"""Crash tests, table-driven over every persisted update state (DESIGN §3, after Mender).

For each state the agent (a real ``edge-agent run`` process with a model store) is driven
into it by a drop into ``incoming/``, SIGKILLed right after that state reached the disk
(``EDGE_AGENT_CRASH_AT``), restarted, and must end serving a verified version with a
consistent state file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.bundle import open_bundle
from tests.fixtures.agent import start_agent

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


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # the last line of a killed writer may be cut
            out.append(json.loads(line))
    return out


def _state(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "update-state.json").read_text()))


def _drop(bundle: Path, incoming: Path) -> None:
    tmp = incoming / f".{bundle.name}.tmp"
    shutil.copytree(bundle, tmp)
    tmp.rename(incoming / bundle.name)  # appears complete, by rename


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
        _wait(lambda: len(_lines(first)) > 10, 60, "the first run to serve v1")
        _drop(cand, store / "incoming")
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
        _wait(
            lambda: _state(store)["phase"] == "IDLE" and len(_lines(second)) > 30, 90, "the restart to settle"
        )
        time.sleep(0.3)
        rec = _state(store)
        assert rec["phase"] == "IDLE"
        current = (store / "current").resolve()
        bundle = open_bundle(current, verify=True)  # sha256 and size checked
        assert bundle.manifest.version == expect, (
            f"{state}: serving v{bundle.manifest.version}, expected v{expect}"
        )
        served = _lines(second)[-5:]
        assert {line["version"] for line in served} == {expect}
        assert not any((store / "staging").iterdir())
    finally:
        proc2.send_signal(signal.SIGTERM)
        try:
            proc2.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc2.kill()
            proc2.wait()
    assert proc2.returncode == 0, (proc2.stderr.read() if proc2.stderr else "")[-3000:]
