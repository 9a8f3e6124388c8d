"""The ModelManager as a job runner, in process: real models, the real pipeline, real store.

Defect 3: a probation without frames ends at its deadline (a camera that goes away during
probation no longer blocks every later update). Defect 2: a manual rollback and a probation
verdict are ordered by one lock, whichever thread asks first. Defect 4: probation judges the
model's own inference time, not the time a result waited behind slow sinks. And the chains
of job events each kind of job emits, and the persisted queue.

Interleavings are forced with the manager's hooks (``before_verdict``, ``faults``) and a
settable clock; every wait is on an event, a condition or that clock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.manager import ManagerPolicy
from agent.source import Frame
from inference.errors import SourceError
from inference.result import Result
from ota.probation import Decision, Verdict
from ota.store import ModelStore
from ota.update_events import JobEvent
from ota.update_machine import State, UpdateMachine
from tests.fixtures import hot_swap
from tests.fixtures.hot_swap import PacedFrames, make_bundle_from, slow_model

Start = Callable[..., Any]
Make = Callable[..., Path]

WAIT = 30.0  # seconds any single wait may take before the test fails


# --------------------------------------------------------------------------- helpers


class StepClock:
    """The manager's clock: time moves only when the test says so; reads are counted."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.reads = 0
        self.cond = threading.Condition()

    def __call__(self) -> float:
        with self.cond:
            self.reads += 1
            self.cond.notify_all()
            return self.now

    def advance(self, seconds: float) -> None:
        with self.cond:
            self.now += seconds

    def wait_read_after(self, mark: int, timeout: float = WAIT) -> bool:
        """Wait until the clock has been read after the ``mark``-th read."""
        with self.cond:
            return self.cond.wait_for(lambda: self.reads > mark, timeout)


class UnpluggableFrames(PacedFrames):
    """PacedFrames whose camera can go away: reads and reopens fail until it is plugged back."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.unplugged = threading.Event()
        self.gone = threading.Event()  # a read met the unplugged camera

    def unplug(self) -> None:
        self.unplugged.set()

    def replug(self) -> None:
        self.unplugged.clear()

    def open(self) -> None:
        if self.unplugged.is_set():
            raise SourceError(f"cannot open {self.spec}: unplugged")
        super().open()

    def read(self) -> npt.NDArray[np.uint8] | None:
        if self.unplugged.is_set():
            self.is_open = False
            self.gone.set()
            raise SourceError(f"{self.spec}: the camera stopped delivering frames")
        return super().read()


@pytest.fixture
def unpluggable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process agents of this test read from an ``UnpluggableFrames`` (``agent.source``)."""
    monkeypatch.setattr(hot_swap, "PacedFrames", UnpluggableFrames)


class Events:
    """A ``manager.events`` subscriber that keeps every job event."""

    def __init__(self) -> None:
        self.items: list[JobEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: JobEvent) -> None:
        with self.lock:
            self.items.append(event)

    def chain(self, job_id: str) -> list[tuple[str, str | None]]:
        """(status, step or detail) of every event of ``job_id``, in order."""
        with self.lock:
            return [(e.status.value, e.step or e.detail) for e in self.items if e.job_id == job_id]

    def outcomes(self, job_id: str) -> list[tuple[str, str | None]]:
        return [c for c in self.chain(job_id) if c[0] in ("SUCCEEDED", "FAILED", "REJECTED")]

    def statuses(self) -> list[str]:
        with self.lock:
            return [e.status.value for e in self.items]


def subscribe(agent: Any) -> Events:
    events = Events()
    agent.events.subscribe(events)
    return events


def chain(*hooks: Callable[[str], None]) -> Callable[[str], None]:
    """One ``faults`` hook that calls ``hooks`` in order."""

    def call(point: str) -> None:
        for hook in hooks:
            hook(point)

    return call


def call_in_thread(fn: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """``fn()`` on another thread; fails the test (instead of hanging it) if it does not return."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{what} did not return within {timeout} s (deadlock?)"
    if errors:
        raise errors[0]
    return out[0]


def settle(agent: Any, timeout: float = WAIT) -> None:
    assert agent.manager.wait_idle(timeout), f"manager still busy in {agent.machine.state}"


def wait_results(agent: Any, pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait, result by result (the recording sink's condition), until ``pred()`` holds."""
    with agent.sink.cond:
        assert agent.sink.cond.wait_for(pred, timeout), f"timed out waiting for {what}"


def identity(m: Any) -> tuple[str, int, str]:
    return (m.name, m.version, m.sha256)


def assert_serving(agent: Any, version: int) -> None:
    """The store's ``current`` and the model that serves agree, and are ``version``, with the
    update machine idle; the next frames are served by it."""
    settle(agent)
    cur = agent.store.current()
    assert cur is not None
    assert identity(agent.handle.current) == identity(cur), (
        f"store says {cur} but v{agent.handle.current.version} serves"
    )
    assert cur.version == version
    assert agent.machine.state is State.IDLE
    n = len(agent.sink.rows)
    assert agent.sink.wait_frames(n + 12)
    assert {v for _, v, _ in agent.sink.rows[n + 6 : n + 12]} == {version}  # past frames in flight


# --------------------------------------------------------------------------- defect 3


class TailSink:
    """A sink after the manager: once it has a frame, the manager has judged that frame."""

    def __init__(self) -> None:
        self.last = -1
        self.cond = threading.Condition()

    def write(self, frame: Frame, result: Result, model: Any) -> None:
        with self.cond:
            self.last = frame.index
            self.cond.notify_all()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def wait_index(self, index: int, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.last >= index, timeout)


def camera_gone_in_probation(
    classifier_bundle: Make, in_process_agent: Start, policy: ManagerPolicy
) -> tuple[Any, Events, StepClock, str]:
    """An agent on a fake clock whose camera goes away right after v2 is activated; returns
    once v2's probation has started and the last frame the camera gave has been judged, so
    from then on nothing but the clock can end the probation."""
    clock = StepClock()
    box: list[Any] = []
    in_probation = threading.Event()
    marks: list[int] = []

    def unplug_in_probation(point: str) -> None:
        if point == "after:PROBATION" and not in_probation.is_set():
            box[0].source.unplug()
            marks.append(clock.reads)
            in_probation.set()

    agent = in_process_agent(classifier_bundle(1), policy, clock=clock, faults=chain(unplug_in_probation))
    box.append(agent)
    events = subscribe(agent)
    tail = TailSink()
    agent.pipeline.call_between_results(lambda: agent.pipeline.sinks.append(tail))
    assert tail.wait_index(20)
    job = agent.manager.submit(classifier_bundle(2))
    assert in_probation.wait(WAIT)
    assert clock.wait_read_after(marks[0])  # the probation's start is taken
    assert agent.source.gone.wait(WAIT)  # the capture thread met the dead camera
    assert tail.wait_index(agent.source.served - 1)  # every frame in flight has been judged
    assert agent.machine.state is State.PROBATION
    p = agent.manager.status()["probation"]
    assert p is not None and p["verdict"] is None and p["frames"] < 50, p
    return agent, events, clock, str(job)


@pytest.mark.usefixtures("unpluggable")
def test_probation_without_frames_rolls_back_at_the_deadline_and_later_updates_run(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 3: the camera goes away right after activation; once the (fake) clock passes
    ``probation_max_seconds`` the candidate is rolled back for lack of evidence, and a
    later update is accepted and runs."""
    policy = ManagerPolicy(probation_frames=50, probation_max_seconds=60, isolate_validation=False)
    agent, events, clock, job = camera_gone_in_probation(classifier_bundle, in_process_agent, policy)
    clock.advance(61)
    settle(agent)
    assert agent.store.current().version == 1 and agent.handle.current.version == 1
    status = agent.manager.status()
    assert status["outcome"] == "rolled_back"
    assert "no evidence: " in status["reason"] and " frames in 61 s" in status["reason"], status
    assert events.chain(job)[-3:] == [
        ("IN_PROGRESS", "probation"),
        ("IN_PROGRESS", "rolling_back"),
        ("FAILED", "rolled_back"),
    ]

    # the camera comes back; a later update is not blocked by the ended probation
    agent.source.replug()
    later = agent.manager.submit(classifier_bundle(3))
    assert_serving(agent, 3)
    assert events.outcomes(later) == [("SUCCEEDED", None)]
    assert events.outcomes(job) == [("FAILED", "rolled_back")]


@pytest.mark.usefixtures("unpluggable")
def test_probation_without_frames_commits_when_configured(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 3, ``on_thin_evidence="commit"``: past the deadline the candidate is committed,
    and the reason says it was for lack of evidence, as configured."""
    policy = ManagerPolicy(
        probation_frames=50, probation_max_seconds=60, on_thin_evidence="commit", isolate_validation=False
    )
    agent, events, clock, job = camera_gone_in_probation(classifier_bundle, in_process_agent, policy)
    clock.advance(61)
    settle(agent)
    cur = agent.store.current()
    assert cur is not None and cur.version == 2
    assert identity(agent.handle.current) == identity(cur)
    assert agent.machine.last_version("cls") == 2
    reason = agent.manager.status()["reason"]
    assert "no evidence: " in reason and "committed as configured (on_thin_evidence)" in reason
    assert events.outcomes(job) == [("SUCCEEDED", None)]


# --------------------------------------------------------------------------- defect 2


def test_rollback_while_a_pass_verdict_is_being_recorded(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 2: the results thread has computed a passing verdict but not recorded it when a
    manual rollback comes in on another thread. The rollback is recorded first (one lock), so
    the pass is ignored: v1 serves and is current, the job ends rolled back, nothing commits."""
    computed, go = threading.Event(), threading.Event()
    held: list[tuple[str, Verdict]] = []

    def hold(verdict: Verdict) -> None:  # every thread that reaches a verdict waits for the test
        held.append((threading.current_thread().name, verdict))
        computed.set()
        go.wait(WAIT)

    agent = in_process_agent(classifier_bundle(1), before_verdict=hold)
    events = subscribe(agent)
    assert agent.sink.wait_frames(20)
    job = agent.manager.submit(classifier_bundle(2))
    try:
        assert computed.wait(WAIT)
        assert held[0][1].decision is Decision.PASS, held
        p = agent.manager._probation
        assert p is not None and p.verdict is None  # computed, not recorded
        # the results thread is inside check_probation now; rollback() must not wait for it
        answer = call_in_thread(agent.manager.rollback, "rollback() against a held verdict")
    finally:
        go.set()
    assert "on probation" in answer["message"] and "job_id" not in answer, answer
    assert_serving(agent, 1)  # by then the held pass has been handed on (later frames are written)
    assert p.verdict == Verdict(Decision.FAIL, "manual rollback requested")  # not overwritten
    assert events.outcomes(job) == [("FAILED", "rolled_back")]
    assert "SUCCEEDED" not in events.statuses()
    assert agent.manager.status()["reason"] == "manual rollback requested"
    assert agent.machine.last_version("cls") == 1  # never committed
    assert agent.machine.queue == ()


def test_a_pass_after_a_rollback_is_ignored(classifier_bundle: Make, in_process_agent: Start) -> None:
    """Defect 2, the other order: the rollback is recorded before any verdict; once the
    probation's time is up a passing verdict would be decided, but it is never recorded."""
    clock = StepClock()
    verdicts: list[Verdict] = []
    policy = ManagerPolicy(
        probation_frames=10, probation_seconds=30, probation_max_seconds=600, isolate_validation=False
    )
    agent = in_process_agent(classifier_bundle(1), policy, clock=clock, before_verdict=verdicts.append)
    events = subscribe(agent)
    assert agent.sink.wait_frames(20)
    job = agent.manager.submit(classifier_bundle(2))

    def frames_judged() -> int:
        p = agent.manager.status()["probation"]
        return 0 if p is None else int(p["frames"])

    wait_results(agent, lambda: frames_judged() >= 10, "10 frames of probation")
    p = agent.manager._probation
    assert p is not None and p.verdict is None  # only the 30 s are missing: time stands still
    answer = call_in_thread(agent.manager.rollback, "rollback() during probation")
    assert "on probation" in answer["message"], answer
    clock.advance(31)
    assert p.policy.decide(p.figures.snapshot(), clock.now).decision is Decision.PASS
    assert agent.manager.check_probation(p) is None  # a pass arriving now is ignored
    assert p.verdict is not None and p.verdict.decision is Decision.FAIL
    assert_serving(agent, 1)
    n = len(agent.sink.rows)
    assert agent.sink.wait_frames(n + 20)
    assert verdicts == []  # the results thread never even reached a verdict after the rollback
    assert events.outcomes(job) == [("FAILED", "rolled_back")]
    assert agent.manager.status()["reason"] == "manual rollback requested"


def test_rollback_after_the_pass_was_recorded_runs_as_a_job(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 2, the pass wins: the worker recorded the pass (COMMITTED is on disk) when the
    rollback comes in. The rollback is queued as a job; it runs after the commit and v1
    serves again. At no point after a job are the store and the serving model at odds."""
    committed, go = threading.Event(), threading.Event()

    def hold_commit(point: str) -> None:
        if point == "after:COMMITTED" and not committed.is_set():
            committed.set()
            go.wait(WAIT)

    agent = in_process_agent(classifier_bundle(1), faults=chain(hold_commit))
    events = subscribe(agent)
    assert agent.sink.wait_frames(20)
    job = agent.manager.submit(classifier_bundle(2))
    try:
        assert committed.wait(WAIT)
        assert agent.machine.state is State.COMMITTED
        answer = call_in_thread(agent.manager.rollback, "rollback() during the commit")
        assert "job_id" in answer, answer
        on_disk = json.loads(agent.store.state_path.read_text())
        assert [j["job_id"] for j in on_disk["queue"]] == [answer["job_id"]]
        assert agent.handle.current.version == 2  # nothing was reverted under the commit
    finally:
        go.set()
    assert_serving(agent, 1)
    assert events.outcomes(job) == [("SUCCEEDED", None)]
    assert events.chain(answer["job_id"]) == [
        ("QUEUED", None),
        ("IN_PROGRESS", "rolling_back"),
        ("SUCCEEDED", None),  # a rollback job that rolled back did what it was asked
    ]
    assert agent.manager.status()["reason"] == "manual rollback"


# --------------------------------------------------------------------------- defect 4

BUDGET_MS = 5.0  # far above the tiny classifier's own time, far below the queueing delay
SINK_DELAY_S = 0.02


class SlowSink:
    """A sink on a slow disk: every write takes ``SINK_DELAY_S``; keeps the latencies."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []  # (version, inference_ms, latency_ms)
        self.cond = threading.Condition()

    def write(self, frame: Frame, result: Result, model: Any) -> None:
        with self.cond:
            self.rows.append((model.version, result.inference_ms, result.latency_ms))
            self.cond.notify_all()
        threading.Event().wait(SINK_DELAY_S)  # the slow write itself

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def of(self, version: int) -> list[tuple[int, float, float]]:
        with self.cond:
            return [r for r in self.rows if r[0] == version]


def with_slow_sink(agent: Any) -> SlowSink:
    """Put a ``SlowSink`` first in the pipeline's sinks (before the manager), on the results
    thread between two results, and wait until it writes."""
    slow = SlowSink()
    agent.pipeline.call_between_results(lambda: agent.pipeline.sinks.insert(0, slow))
    with slow.cond:
        assert slow.cond.wait_for(lambda: len(slow.rows) >= 10, WAIT)
    return slow


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[round(0.95 * (len(s) - 1))]


def test_queueing_behind_a_slow_sink_does_not_fail_probation(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 4: results wait ~4 x 20 ms behind a slow sink, far over the budget, but the
    model's own time is well within it: the candidate commits."""
    policy = ManagerPolicy(probation_frames=30, latency_budget_ms=BUDGET_MS, isolate_validation=False)
    agent = in_process_agent(classifier_bundle(1), policy)
    events = subscribe(agent)
    slow = with_slow_sink(agent)
    job = agent.manager.submit(classifier_bundle(2))
    assert_serving(agent, 2)
    assert events.outcomes(job) == [("SUCCEEDED", None)]
    rows = slow.of(2)
    assert len(rows) >= 30
    assert all(inf < lat for _, inf, lat in rows), rows
    assert p95([inf for _, inf, _ in rows]) < BUDGET_MS
    assert p95([lat for _, _, lat in rows]) > BUDGET_MS  # the old check would have rolled it back
    queue_p95 = agent.pipeline.stats().queue_p95_ms
    assert queue_p95 > 0 and queue_p95 > BUDGET_MS


def test_slow_model_over_budget_still_rolls_back(
    tmp_path: Path, classifier_bundle: Make, in_process_agent: Start
) -> None:
    """Defect 4, the other side: a model whose own inference time is over the budget is rolled
    back, slow sink or not, and the reason names the p95 inference time."""
    policy = ManagerPolicy(probation_frames=30, latency_budget_ms=BUDGET_MS, isolate_validation=False)
    agent = in_process_agent(classifier_bundle(1), policy)
    events = subscribe(agent)
    slow = with_slow_sink(agent)
    bundle = make_bundle_from(slow_model(tmp_path / "slow.onnx", matmuls=48, size=512), tmp_path / "slow", 2)
    job = agent.manager.submit(bundle)
    assert_serving(agent, 1)
    assert events.outcomes(job) == [("FAILED", "rolled_back")]
    reason = agent.manager.status()["reason"]
    assert "p95 inference time" in reason and f"over the budget of {BUDGET_MS:g} ms" in reason, reason
    assert p95([inf for _, inf, _ in slow.of(2)]) > BUDGET_MS


# --------------------------------------------------------------------------- job event chains

STEPS_TO_PROBATION = [
    ("QUEUED", None),
    ("IN_PROGRESS", "downloading"),
    ("IN_PROGRESS", "verifying"),
    ("IN_PROGRESS", "validating"),
    ("IN_PROGRESS", "activating"),
    ("IN_PROGRESS", "probation"),
]


def _good(agent: Any, make: Make) -> str:
    return str(agent.manager.submit(make(2)))


def _tampered(agent: Any, make: Make) -> str:
    bad = make(2)
    model = bad / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    return str(agent.manager.submit(bad))


def _golden_mismatch(agent: Any, make: Make) -> str:
    bad = make(2)
    out = sorted((bad / "golden").glob("*out*.npy"))[0]
    np.save(out, np.load(out) + 0.5)
    return str(agent.manager.submit(bad))


def _confidence_collapse(agent: Any, make: Make) -> str:
    assert agent.sink.wait_frames(60)  # the baseline
    return str(agent.manager.submit(make(2, strength=0.0)))


def _downgrade(agent: Any, make: Make) -> str:
    return str(agent.manager.submit(make(2)))


def _manual_rollback(agent: Any, make: Make) -> str:
    agent.manager.submit(make(2))
    settle(agent)
    return str(agent.manager.rollback()["job_id"])


CHAINS: list[tuple[str, int, Callable[[Any, Make], str], list[tuple[str, str | None]], int]] = [
    # (id, seed version, what the test does -> the job id, its events, the version serving after)
    ("good deploy", 1, _good, [*STEPS_TO_PROBATION, ("SUCCEEDED", None)], 2),
    (
        "tampered bundle",
        1,
        _tampered,
        [("QUEUED", None), ("IN_PROGRESS", "downloading"), ("IN_PROGRESS", "verifying"), ("REJECTED", None)],
        1,
    ),
    (
        "validation failure",
        1,
        _golden_mismatch,
        [
            ("QUEUED", None),
            ("IN_PROGRESS", "downloading"),
            ("IN_PROGRESS", "verifying"),
            ("IN_PROGRESS", "validating"),
            ("FAILED", "no_state_change"),
        ],
        1,
    ),
    (
        "probation failure",
        1,
        _confidence_collapse,
        [*STEPS_TO_PROBATION, ("IN_PROGRESS", "rolling_back"), ("FAILED", "rolled_back")],
        1,
    ),
    (
        "downgrade",
        3,
        _downgrade,
        [("QUEUED", None), ("IN_PROGRESS", "downloading"), ("IN_PROGRESS", "verifying"), ("REJECTED", None)],
        3,
    ),
    (
        "manual rollback",
        1,
        _manual_rollback,
        [("QUEUED", None), ("IN_PROGRESS", "rolling_back"), ("SUCCEEDED", None)],
        1,
    ),
]


@pytest.mark.parametrize(
    ("seed", "act", "expected", "serving"), [c[1:] for c in CHAINS], ids=[c[0] for c in CHAINS]
)
def test_job_event_chain(
    classifier_bundle: Make,
    in_process_agent: Start,
    seed: int,
    act: Callable[[Any, Make], str],
    expected: list[tuple[str, str | None]],
    serving: int,
) -> None:
    agent = in_process_agent(classifier_bundle(seed))
    events = subscribe(agent)
    job_id = act(agent, classifier_bundle)
    assert_serving(agent, serving)
    assert events.chain(job_id) == expected
    # the jobs table heard the same events
    assert [(r["status"], r["step"] or r["detail"]) for r in agent.history.recent(job_id)] == expected


def test_a_job_queued_behind_a_running_one_is_persisted_and_survives_a_restart(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    clock = StepClock()  # never advanced: the first job's probation waits for its 30 s
    in_probation = threading.Event()

    def note_probation(point: str) -> None:
        if point == "after:PROBATION":
            in_probation.set()

    policy = ManagerPolicy(probation_frames=10, probation_seconds=30, isolate_validation=False)
    agent = in_process_agent(classifier_bundle(1), policy, clock=clock, faults=chain(note_probation))
    events = subscribe(agent)
    queued_on_disk: dict[str, list[str]] = {}  # job id -> the queue in the file when QUEUED was said

    def read_queue_when_queued(event: JobEvent) -> None:
        if event.status.value == "QUEUED":
            data = json.loads(agent.store.state_path.read_text())
            queued_on_disk[event.job_id] = [j["job_id"] for j in data["queue"]]

    agent.events.subscribe(read_queue_when_queued)
    first = agent.manager.submit(classifier_bundle(2))
    assert in_probation.wait(WAIT)
    v3 = classifier_bundle(3)
    second = agent.manager.submit(v3)
    assert events.chain(second) == [("QUEUED", None)]
    assert queued_on_disk == {first: [first], second: [second]}  # on disk before it was announced
    on_disk = json.loads(agent.store.state_path.read_text())
    assert on_disk["phase"] == "PROBATION" and on_disk["job_id"] == first
    assert [(j["job_id"], j["action"], j["source"]) for j in on_disk["queue"]] == [
        (second, "deploy", str(v3))
    ]
    reloaded = UpdateMachine(agent.store.state_path)
    assert [j.job_id for j in reloaded.queue] == [second]
    assert reloaded.state is State.PROBATION
    assert agent.manager.status()["queued"] == [second]

    # a restart in the middle of the first job: it resumes, then the queued job runs
    agent.close()
    again = in_process_agent(
        classifier_bundle(1),
        ManagerPolicy(probation_frames=10, isolate_validation=False),
        store=ModelStore(agent.store.root),
    )
    assert_serving(again, 3)
    assert [(r["status"], r["step"] or r["detail"]) for r in again.history.recent(second)] == [
        *STEPS_TO_PROBATION[1:],
        ("SUCCEEDED", None),
    ]
    assert again.machine.queue == () and again.machine.last_version("cls") == 3
