"""End to end: a real ``edge-agent run`` with a model store, a drop into ``incoming/``, and the
real ``edge-agent status`` / ``models`` commands over the control API (a unix socket)."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import run_agent, start_agent

Make = Callable[..., Path]


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _drop(bundle: Path, incoming: Path) -> None:
    tmp = incoming / f".{bundle.name}.partial"
    shutil.copytree(bundle, tmp)
    tmp.rename(incoming / bundle.name)


@pytest.mark.slow
def test_drop_swap_commit_and_control(tmp_path: Path, classifier_bundle: Make) -> None:
    store, results, sock = tmp_path / "store", tmp_path / "results.jsonl", tmp_path / "control.sock"
    config = tmp_path / "agent.toml"
    config.write_text(f'models_dir = "{store}"\ncontrol = "unix:{sock}"\n[probation]\nframes = 50\n')
    ctl = ["--control", f"unix:{sock}"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_agent(list(args), tmp_path, timeout=60)

    def status() -> dict[str, Any]:
        r = cli("status", "--json", *ctl)
        return dict(json.loads(r.stdout)) if r.returncode == 0 else {}

    seed = classifier_bundle(1)
    proc = start_agent(
        ["run", "--config", str(config), "--state-dir", str(store), "--model", str(seed),
         "--source", "synthetic:16x16@30", "--results", str(results)],
        tmp_path,
    )  # fmt: skip
    try:
        _wait(lambda: status().get("version") == 1, 60, "the agent to serve v1")
        _drop(classifier_bundle(2, strength=25.0), store / "incoming")
        _wait(lambda: (s := status()).get("version") == 2 and s.get("phase") == "IDLE", 60, "v2 committed")
        s = status()
        assert s["last_job"]["phase"] == "IDLE" and s["previous"]["version"] == 1 and s["outcome"] is None

        # the switch falls between two consecutive frames, and no frame index was skipped
        rows = [(r["frame"], r["version"]) for r in _lines(results)]
        assert [f for f, _ in rows] == list(range(len(rows)))
        switches = [(a, b) for a, b in itertools.pairwise(rows) if a[1] != b[1]]
        assert len(switches) == 1
        (f1, v1), (f2, v2) = switches[0]
        assert (v1, v2) == (1, 2) and f2 == f1 + 1

        # a tampered bundle (same size, other bytes) is rejected; v2 keeps serving
        bad = classifier_bundle(3)
        data = bytearray((bad / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (bad / "model.onnx").write_bytes(bytes(data))
        _drop(bad, store / "incoming")
        _wait(lambda: "sha256" in str(status().get("reason")), 60, "the tampered bundle to be rejected")
        s = status()
        assert s["version"] == 2 and s["outcome"] == "no_state_change"

        listed = cli("models", "list", *ctl)
        assert listed.returncode == 0 and "current" in listed.stdout and "previous" in listed.stdout
        assert cli("models", "rollback", *ctl).returncode == 0
        _wait(lambda: (s := status()).get("version") == 1 and s.get("phase") == "IDLE", 60, "the rollback")
        assert cli("models", "activate", "2", *ctl).returncode == 0
        _wait(lambda: (s := status()).get("version") == 2 and s.get("phase") == "IDLE", 60, "the activation")
        missing = cli("models", "activate", "9", *ctl)
        assert missing.returncode == 1 and "no version 9" in missing.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    rows = [r["frame"] for r in _lines(results)]
    assert rows == list(range(len(rows)))
