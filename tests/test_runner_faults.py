"""The job runner under faults of its own persistence and of operator timing.

- a state file that cannot be written (a full disk) pauses the worker with a back-off: it
  neither spins nor dies, and the job runs once the disk has room again;
- a failed probation verdict is on disk before the worker's rollback, so a restart in
  between rolls back instead of resuming the rejected candidate's probation;
- a pin asked for while an update runs is refused (it would name the candidate).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.control import RequestError
from agent.manager import ManagerPolicy
from inference.fsio import FsOps
from ota.update_events import JobEvent, JobStatus
from ota.update_machine import Action, Event, State, UpdateMachine, UpdateRecord, VersionRef, resume_action

Make = Callable[..., Path]
Start = Callable[..., Any]


class FullDisk(FsOps):
    """Every fsync fails with ENOSPC while ``full`` is set; counts the attempts."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.failed = 0

    def fsync(self, fd: int) -> None:
        if self.full.is_set():
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().fsync(fd)


def test_a_full_disk_pauses_the_worker_with_a_back_off(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=10, isolate_validation=False)
    )
    assert agent.sink.wait_frames(10)
    disk = FullDisk()
    agent.machine.fs = disk
    queued = threading.Event()

    def on_event(ev: JobEvent) -> None:
        if ev.status is JobStatus.QUEUED:  # the job is on disk: now the disk fills up
            disk.full.set()
            queued.set()

    agent.events.subscribe(on_event)
    t0 = time.monotonic()
    agent.manager.submit(classifier_bundle(2))
    assert queued.is_set()
    # the worker tries to write START and fails; wait until it has tried twice (one back-off)
    end = time.monotonic() + 20
    while disk.failed < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert disk.failed >= 2, "the worker did not retry"
    elapsed = time.monotonic() - t0
    assert disk.failed <= 2 * (elapsed + 2), f"{disk.failed} attempts in {elapsed:.1f} s: a tight loop"
    assert agent.manager._thread is not None and agent.manager._thread.is_alive()
    assert agent.machine.state is State.IDLE and [j.action for j in agent.machine.queue] == ["deploy"]
    disk.full.clear()  # room again: the queued job runs to its end
    assert agent.manager.wait_idle(60)
    assert agent.handle.current.version == 2 and agent.store.current().version == 2


def test_a_recorded_failed_verdict_rolls_back_on_restart() -> None:
    ref = VersionRef("cls", 2, "ab" * 32)
    rec = UpdateRecord(
        phase=State.PROBATION, job_id="j", target=ref, previous=VersionRef("cls", 1, "cd" * 32)
    )
    assert resume_action(rec) is Action.RESUME_PROBATION
    failed = UpdateRecord(**{**rec.__dict__, "verdict": "confidence collapsed"})
    assert resume_action(failed) is Action.ROLL_BACK
    assert UpdateRecord.from_json(failed.to_json()).verdict == "confidence collapsed"


def test_failed_verdict_is_persisted_before_the_worker_rolls_back(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    seen: list[str | None] = []
    holder: dict[str, Any] = {}

    def faults(point: str) -> None:
        if point == "after:ROLLING_BACK":  # the worker starts its part: the verdict is already on disk
            seen.append(UpdateMachine(holder["agent"].store.state_path).record.verdict)

    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=20, isolate_validation=False), faults=faults
    )
    holder["agent"] = agent
    assert agent.sink.wait_frames(60)
    agent.manager.submit(classifier_bundle(2, strength=0.0))
    assert agent.manager.wait_idle(60)
    assert seen and seen[0] is not None and "confidence collapsed" in seen[0]
    assert agent.machine.record.outcome is not None and agent.machine.record.outcome.value == "rolled_back"
    agent.machine.advance(Event.START, job_id="next", previous=agent.store.current().to_ref())
    assert agent.machine.record.verdict is None  # a new job starts with no verdict


def test_pin_during_an_update_is_refused(classifier_bundle: Make, in_process_agent: Start) -> None:
    answers: list[str] = []
    holder: dict[str, Any] = {}

    def faults(point: str) -> None:
        if point == "after:PROBATION":
            with pytest.raises(RequestError) as refused:
                holder["agent"].manager.pin(None)
            answers.append(f"{refused.value.status} {refused.value}")

    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=10, isolate_validation=False), faults=faults
    )
    holder["agent"] = agent
    agent.manager.submit(classifier_bundle(2))
    assert agent.manager.wait_idle(60)
    assert answers and answers[0].startswith("409") and "update is in progress" in answers[0]
    assert agent.machine.pin is None
    agent.manager.pin(None)  # once it has ended, the pin names what serves
    assert agent.machine.pin is not None and agent.machine.pin.version == 2


def test_the_same_drop_offered_twice_is_one_job(classifier_bundle: Make, in_process_agent: Start) -> None:
    """After a restart the watcher offers the drops of persisted jobs again: one job, not two."""
    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=10, isolate_validation=False)
    )
    path = classifier_bundle(2)
    first = agent.manager.submit(path)
    assert agent.manager.submit(path) == first  # queued or running: the same job
    assert agent.manager.wait_idle(60)
    assert [r["status"] for r in agent.history_rows()].count("QUEUED") == 1
    assert agent.handle.current.version == 2


def test_a_verdict_never_waits_for_the_job_lock(classifier_bundle: Make, in_process_agent: Start) -> None:
    """The results thread records a failed verdict and swaps back while another thread holds
    the manager's job lock (as a memory-policy swap does while it waits for the inference
    thread): verdicts have their own short lock, so neither can wait for the other."""
    holding, release, reverted = threading.Event(), threading.Event(), threading.Event()
    holder: dict[str, Any] = {}

    def hold_job_lock() -> None:
        with holder["agent"].manager._lock:
            holding.set()
            release.wait(30)

    def faults(point: str) -> None:
        if point == "after:PROBATION":
            threading.Thread(target=hold_job_lock, daemon=True).start()
            assert holding.wait(10)

    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=20, isolate_validation=False), faults=faults
    )
    holder["agent"] = agent
    assert agent.sink.wait_frames(60)
    agent.manager.submit(classifier_bundle(2, strength=0.0))  # collapses: a failed verdict
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not reverted.is_set():
            if agent.manager.last_decision_at is not None and agent.handle.current.version == 1:
                reverted.set()
            time.sleep(0.01)
        assert reverted.is_set(), "the verdict waited for the job lock"
    finally:
        release.set()
    assert agent.manager.wait_idle(60)
    assert agent.machine.record.outcome is not None and agent.machine.record.outcome.value == "rolled_back"


def test_a_job_whose_next_state_cannot_be_written_is_ended_not_left_running(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """The disk fills while a job validates: the worker pauses, and after the back-off it ends
    the job (FAILED, nothing changed) instead of leaving it IN_PROGRESS until a restart."""
    agent = in_process_agent(
        classifier_bundle(1), ManagerPolicy(probation_frames=10, isolate_validation=False)
    )
    assert agent.sink.wait_frames(10)
    disk = FullDisk()
    agent.machine.fs = disk
    events: list[JobEvent] = []
    ended = threading.Event()

    def on_event(ev: JobEvent) -> None:
        events.append(ev)
        if ev.status is JobStatus.IN_PROGRESS and ev.step == "validating":
            disk.full.set()  # VALIDATED will not reach the disk
        if ev.status in (JobStatus.FAILED, JobStatus.SUCCEEDED):
            ended.set()

    agent.events.subscribe(on_event)
    job = agent.manager.submit(classifier_bundle(2))
    end = time.monotonic() + 20
    while disk.failed < 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert disk.failed >= 1 and agent.machine.state is State.VALIDATING
    disk.full.clear()  # room again: the back-off ends and the worker settles the job
    assert ended.wait(30), [(e.status, e.step) for e in events]
    final = [e for e in events if e.job_id == job][-1]
    assert (final.status, final.detail) == (JobStatus.FAILED, "no_state_change")
    assert agent.manager.wait_idle(30) and agent.machine.state is State.IDLE
    assert agent.handle.current.version == 1
