"""ModelManager in process: real store, update machine, validation, pipeline and models.

Every bad candidate is rejected or rolled back, the serving version stays, and the reason
is in the log, the job history and ``status()``.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.control import RequestError
from agent.manager import ManagerPolicy
from inference.fsio import sha256_file
from ota.store import ModelStore
from ota.update_machine import State
from ota.validation import ValidationPolicy, validate, validate_isolated
from tests.fixtures.hot_swap import (
    frame_image,
    hanging_model,
    make_bundle_from,
    slow_model,
    unchecked_bundle,
)
from tests.fixtures.ota import FaultFs
from tests.test_runner import STEPS_TO_PROBATION

Start = Callable[..., Any]
Make = Callable[..., Path]


def _settle(agent: Any, timeout: float = 30.0) -> None:
    assert agent.manager.wait_idle(timeout), f"manager still busy in {agent.machine.state}"


def _contiguous(rows: list[tuple[int, int, float]]) -> None:
    idx = [r[0] for r in rows]
    assert idx == list(range(idx[0], idx[0] + len(idx))), "a frame index was skipped"


def _switches(rows: list[tuple[int, int, float]]) -> list[tuple[int, int, int]]:
    """(frame index, from version, to version) at every change of version."""
    return [(b[0], a[1], b[1]) for a, b in itertools.pairwise(rows) if a[1] != b[1]]


def _assert_rejected(agent: Any, words: str, serving: int = 1) -> None:
    _settle(agent)
    n = len(agent.sink.rows)
    assert agent.sink.wait_frames(n + 5)
    assert agent.handle.current.version == serving
    assert agent.store.current() is not None and agent.store.current().version == serving
    assert agent.machine.state is State.IDLE
    status = agent.manager.status()
    assert words in (status["reason"] or ""), status
    assert status["outcome"] in ("no_state_change", "rolled_back")
    reasons = " ".join(str(r["reason"]) for r in agent.history_rows())
    assert words in reasons
    assert any(words in line for line in agent.logs), agent.logs
    assert set(agent.sink.versions()) == {serving} or status["outcome"] == "rolled_back"


def _wait_closed(model: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not model._closed and time.monotonic() < end:
        time.sleep(0.02)
    assert model._closed, f"{model} was not unloaded"


def test_hot_swap_between_two_frames_then_commit(classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    assert agent.sink.wait_frames(20)
    v1_model = agent.handle.current
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    _wait_closed(v1_model)  # unloaded after the commit, once no frame can still use it
    assert agent.sink.wait_frames(len(agent.sink.rows) + 5)
    rows = list(agent.sink.rows)
    _contiguous(rows)
    switches = _switches(rows)
    assert len(switches) == 1 and switches[0][1:] == (1, 2)
    assert agent.machine.state is State.IDLE
    assert agent.store.current().version == 2 and agent.store.previous().version == 1
    events = [(r["status"], r["step"]) for r in agent.history_rows()]
    assert events == [*STEPS_TO_PROBATION, ("SUCCEEDED", None)]
    assert {r["job_id"] for r in agent.history_rows()} == {agent.machine.record.job_id}
    assert agent.machine.last_version("cls") == 2
    status = agent.manager.status()
    assert status["phase"] == "IDLE" and status["previous"]["version"] == 1


def test_confidence_collapse_rolls_back(classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    assert agent.sink.wait_frames(60)
    agent.manager.submit(classifier_bundle(2, strength=0.0))  # golden pairs pass; live confidence 0.25
    _settle(agent)
    _wait_closed(agent.sink.models[2])  # the rejected candidate is unloaded
    assert agent.sink.wait_frames(len(agent.sink.rows) + 5)
    rows = list(agent.sink.rows)
    _contiguous(rows)
    assert [s[1:] for s in _switches(rows)] == [(1, 2), (2, 1)]
    assert agent.handle.current.version == 1 and agent.store.current().version == 1
    status = agent.manager.status()
    assert status["outcome"] == "rolled_back"
    assert "confidence collapsed" in status["reason"]
    assert agent.manager.last_rollback_ms is not None and agent.manager.last_rollback_ms < 50


def test_memory_policy_swaps_without_dropping(classifier_bundle: Make, in_process_agent: Start) -> None:
    policy = ManagerPolicy(swap_policy="memory", probation_frames=20, isolate_validation=False)
    agent = in_process_agent(classifier_bundle(1), policy)
    assert agent.sink.wait_frames(20)
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    rows = list(agent.sink.rows)
    _contiguous(rows)
    assert [s[1:] for s in _switches(rows)] == [(1, 2)]
    assert agent.manager.last_gap_ms is not None and agent.manager.last_gap_ms > 0
    assert agent.manager.status()["last_gap_ms"] == agent.manager.last_gap_ms


def test_memory_policy_rollback(classifier_bundle: Make, in_process_agent: Start) -> None:
    policy = ManagerPolicy(swap_policy="memory", probation_frames=20, isolate_validation=False)
    agent = in_process_agent(classifier_bundle(1), policy)
    assert agent.sink.wait_frames(60)
    agent.manager.submit(classifier_bundle(2, strength=0.0))
    _settle(agent)
    assert agent.sink.wait_frames(len(agent.sink.rows) + 5)
    _contiguous(list(agent.sink.rows))
    assert agent.handle.current.version == 1
    assert agent.manager.status()["outcome"] == "rolled_back"


def test_wrong_sha256_is_rejected(classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    bad = classifier_bundle(2)
    model = bad / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    agent.manager.submit(bad)
    _assert_rejected(agent, "sha256")


def test_model_that_fails_to_load(classifier_bundle: Make, in_process_agent: Start, tmp_path: Path) -> None:
    import hashlib
    import json

    agent = in_process_agent(classifier_bundle(1))
    bad = classifier_bundle(2)
    garbage = b"this is not an onnx model" * 10
    (bad / "model.onnx").write_bytes(garbage)
    m = json.loads((bad / "manifest.json").read_text())
    m["sha256"], m["size"] = hashlib.sha256(garbage).hexdigest(), len(garbage)
    (bad / "manifest.json").write_text(json.dumps(m))
    agent.manager.submit(bad)
    _assert_rejected(agent, "does not load")


def test_wrong_input_shape(classifier_bundle: Make, in_process_agent: Start) -> None:
    import json

    agent = in_process_agent(classifier_bundle(1))
    bad = classifier_bundle(2)
    m = json.loads((bad / "manifest.json").read_text())
    m["input"]["shape"] = [1, 3, 32, 32]  # the model takes 16x16
    (bad / "manifest.json").write_text(json.dumps(m))
    agent.manager.submit(bad)
    _assert_rejected(agent, "does not load")


def test_nan_outputs(tmp_path: Path, classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    agent.manager.submit(classifier_bundle(2, nan=True, golden=False))
    _assert_rejected(agent, "NaN")


def test_ten_times_over_latency_budget(
    tmp_path: Path, classifier_bundle: Make, in_process_agent: Start
) -> None:
    agent = in_process_agent(classifier_bundle(1))
    slow = make_bundle_from(
        slow_model(tmp_path / "slow.onnx"), tmp_path / "slow", 2, validation={"max_latency_ms": 0.5}
    )
    agent.manager.submit(slow)
    _assert_rejected(agent, "over the budget")


def test_lower_version_refused_unless_forced(classifier_bundle: Make, in_process_agent: Start) -> None:
    """Defect 5: a manual activation obeys the downgrade and pin rules; --force overrides,
    and the job records that it was forced."""
    agent = in_process_agent(classifier_bundle(3))
    agent.manager.submit(classifier_bundle(2))
    _assert_rejected(agent, "downgrade refused", serving=3)
    assert [r["status"] for r in agent.history_rows()][-1] == "REJECTED"
    assert len(agent.store.versions()) == 2  # kept in the store: it can be activated with --force
    with pytest.raises(RequestError, match="downgrade refused") as refused:
        agent.manager.activate(2)
    assert refused.value.status == 409 and "--force" in str(refused.value)
    agent.manager.pin(None)
    with pytest.raises(RequestError, match="pinned"):
        agent.manager.activate(2)
    agent.manager.activate(2, force=True)
    _settle(agent)
    assert agent.handle.current.version == 2 and agent.store.current().version == 2
    assert agent.manager.last_job["force"] is True
    assert agent.machine.record.job is not None and agent.machine.record.job.force


def test_pinned_version_is_not_replaced(classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    agent.manager.pin(None)
    agent.manager.submit(classifier_bundle(2))
    _assert_rejected(agent, "pinned")
    agent.manager.unpin()
    agent.manager.submit(classifier_bundle(3))
    _settle(agent)
    assert agent.handle.current.version == 3


def test_manual_rollback_after_commit(classifier_bundle: Make, in_process_agent: Start) -> None:
    agent = in_process_agent(classifier_bundle(1))
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    assert agent.handle.current.version == 2
    agent.manager.rollback()
    _settle(agent)
    assert agent.sink.wait_frames(len(agent.sink.rows) + 5)
    assert agent.handle.current.version == 1 and agent.store.current().version == 1
    assert agent.manager.status()["reason"] == "manual rollback"
    _contiguous(list(agent.sink.rows))


def test_disk_full_during_import(classifier_bundle: Make, in_process_agent: Start, tmp_path: Path) -> None:
    fs = FaultFs()
    store = ModelStore(tmp_path / "full", fs=fs)
    agent = in_process_agent(classifier_bundle(1), store=store)
    fs.calls.clear()
    fs.fail_at, fs.err, fs.kinds = 3, errno.ENOSPC, ("fsync",)
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    fs.fail_at = 0
    _assert_rejected(agent, "disk full")
    assert not any((store.root / "staging").iterdir())


def test_model_that_hangs_the_runtime_is_cut_off(tmp_path: Path, classifier_bundle: Make) -> None:
    bundle = unchecked_bundle(hanging_model(tmp_path / "hang.onnx"), tmp_path / "hang", 2)
    t0 = time.monotonic()
    report = validate_isolated(bundle, [frame_image(9)], ValidationPolicy(timeout_s=4.0))
    assert not report.ok and "hung" in report.reason
    assert time.monotonic() - t0 < 15


def test_model_that_crashes_the_runtime(tmp_path: Path, classifier_bundle: Make) -> None:
    # The child process dies by a signal, as a segfaulting runtime would.
    crasher = tmp_path / "crash.py"
    crasher.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    wrapper = tmp_path / "python-that-crashes"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {crasher}\n")
    os.chmod(wrapper, 0o755)
    report = validate_isolated(classifier_bundle(2), [frame_image(9)], python=str(wrapper))
    assert not report.ok and "crashed" in report.reason and "signal 11" in report.reason


def test_isolated_validation_passes_a_good_bundle(classifier_bundle: Make) -> None:
    bundle = classifier_bundle(2)
    report = validate_isolated(bundle, [frame_image(9), frame_image(99)])
    assert report.ok, report.reason
    assert [c["check"] for c in report.checks] == ["load", "golden", "live", "latency"]
    assert validate(bundle, [frame_image(1)]).ok


def test_golden_mismatch(classifier_bundle: Make) -> None:
    import numpy as np

    bundle = classifier_bundle(2)
    out = sorted((bundle / "golden").glob("*out*.npy"))[0]
    arr = np.load(out)
    np.save(out, arr + 0.5)
    report = validate(bundle)
    assert not report.ok and "differs from the expected output" in report.reason


def _left_in_probation(
    classifier_bundle: Make, in_process_agent: Start, crashed_starts: int = 0
) -> ModelStore:
    """A store whose state file says PROBATION of v2 (v1 before it), as a crash leaves it,
    after ``crashed_starts`` more starts that each died during probation."""
    from ota.update_machine import Event, UpdateMachine

    agent = in_process_agent(classifier_bundle(1))
    v2 = agent.store.import_bundle(classifier_bundle(2), "job")
    agent.close()
    machine = UpdateMachine(agent.store.state_path)
    machine.advance(Event.START, job_id="j1", previous=agent.store.current().to_ref())
    for ev in (Event.FETCHED, Event.VERIFIED, Event.STORED, Event.VALIDATED):
        machine.advance(ev, target=v2.to_ref() if ev is Event.VERIFIED else None)
    agent.store.set_current(v2)
    machine.advance(Event.ACTIVATED)
    assert machine.state is State.PROBATION
    for _ in range(crashed_starts):
        machine.resume()
    return ModelStore(agent.store.root)


def test_restart_resumes_probation_then_commits(classifier_bundle: Make, in_process_agent: Start) -> None:
    """A manager started on a store whose state file says PROBATION resumes and commits."""
    store = _left_in_probation(classifier_bundle, in_process_agent)
    again = in_process_agent(classifier_bundle(1), store=store)
    _settle(again)
    assert again.handle.current.version == 2
    assert again.machine.state is State.IDLE and again.store.current().version == 2
    assert sha256_file(again.store.current().path / "model.onnx") == again.store.current().sha256


def test_handled_drops_leave_incoming(classifier_bundle: Make, in_process_agent: Start) -> None:
    import shutil

    agent = in_process_agent(classifier_bundle(1))
    incoming = agent.store.incoming_dir
    good = shutil.copytree(classifier_bundle(2), incoming / "good")
    agent.manager.submit(good)
    _settle(agent)
    assert not good.exists() and agent.handle.current.version == 2
    bad = shutil.copytree(classifier_bundle(3), incoming / "bad")
    (bad / "model.onnx").write_bytes(b"tampered")
    agent.manager.submit(bad)
    _settle(agent)
    assert not bad.exists()
    assert [p.name.split(".")[0] for p in (incoming / ".rejected").iterdir()] == ["bad"]
    assert agent.handle.current.version == 2


def test_crash_loop_in_probation_rolls_back(classifier_bundle: Make, in_process_agent: Start) -> None:
    """Past max_attempts restarts in PROBATION, the next start rolls back instead of resuming."""
    store = _left_in_probation(classifier_bundle, in_process_agent, crashed_starts=3)  # max_attempts
    again = in_process_agent(classifier_bundle(1), store=store)
    _settle(again)
    assert again.handle.current.version == 1 and again.store.current().version == 1
    rec = again.machine.record
    assert rec.phase is State.IDLE and rec.outcome is not None and rec.outcome.value == "rolled_back"
    assert "restarted" in (rec.reason or "")
