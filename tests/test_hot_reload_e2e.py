"""End to end: a real ``edge-agent run`` with a model store, a drop into ``incoming/``, and the
real ``edge-agent status`` / ``models`` commands over the control API (a unix socket)."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import drop_bundle, result_lines, run_agent, start_agent, stop_agent, wait_for

Make = Callable[..., Path]


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

    def serving(version: int) -> bool:
        s = status()
        return s.get("version") == version and s.get("phase") == "IDLE"

    seed = classifier_bundle(1)
    proc = start_agent(
        ["run", "--config", str(config), "--state-dir", str(store), "--model", str(seed),
         "--source", "synthetic:16x16@30", "--results", str(results)],
        tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: status().get("version") == 1, 60, "the agent to serve v1")
        drop_bundle(classifier_bundle(2, strength=25.0), store / "incoming")
        wait_for(lambda: serving(2), 60, "v2 committed")
        s = status()
        assert s["last_job"]["phase"] == "IDLE" and s["previous"]["version"] == 1 and s["outcome"] is None

        # the switch falls between two consecutive frames, and no frame index was skipped
        rows = [(r["frame"], r["version"]) for r in result_lines(results)]
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
        drop_bundle(bad, store / "incoming")
        wait_for(lambda: "sha256" in str(status().get("reason")), 60, "the tampered bundle to be rejected")
        s = status()
        assert s["version"] == 2 and s["outcome"] == "no_state_change"

        listed = cli("models", "list", *ctl)
        assert listed.returncode == 0 and "current" in listed.stdout and "previous" in listed.stdout
        assert cli("models", "rollback", *ctl).returncode == 0
        wait_for(lambda: serving(1), 60, "the rollback")
        assert cli("models", "activate", "2", *ctl).returncode == 0
        wait_for(lambda: serving(2), 60, "the activation")
        missing = cli("models", "activate", "9", *ctl)
        assert missing.returncode == 1 and "no version 9" in missing.stderr
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    rows = [r["frame"] for r in result_lines(results)]
    assert rows == list(range(len(rows)))
