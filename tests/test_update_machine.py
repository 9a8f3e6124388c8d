"""UpdateMachine: the transition table as expected state chains, persistence, resume rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from inference.errors import TransientError
from inference.fsio import FsOps
from ota.update_machine import (
    BUSY,
    PRE_ACTIVATION,
    TRANSITIONS,
    Action,
    Event,
    IllegalTransition,
    Outcome,
    State,
    UpdateMachine,
    UpdateRecord,
    VersionRef,
    abandon_event,
    next_state,
    resume_action,
)

S, E = State, Event
NEW = VersionRef("det", 2, "b" * 64, "models/det/2-bbbbbbbbbbbb", release_counter=7)
OLD = VersionRef("det", 1, "a" * 64, "models/det/1-aaaaaaaaaaaa", release_counter=3)

HAPPY = [
    (E.START, S.FETCHING),
    (E.FETCHED, S.VERIFYING),
    (E.VERIFIED, S.STAGED),
    (E.STORED, S.VALIDATING),
    (E.VALIDATED, S.ACTIVATING),
    (E.ACTIVATED, S.PROBATION),
    (E.PROBATION_PASSED, S.COMMITTED),
    (E.FINISHED, S.IDLE),
]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def machine(tmp_path: Path, **kw: object) -> UpdateMachine:
    return UpdateMachine(tmp_path / "update-state.json", clock=FakeClock(), **kw)  # type: ignore[arg-type]


def drive(m: UpdateMachine, events: list[Event], previous: VersionRef | None = OLD) -> list[State]:
    chain = []
    for ev in events:
        if ev in (E.START, E.SELECT, E.ROLLBACK):
            chain.append(m.advance(ev, job_id="job-1", target=NEW, previous=previous))
        else:
            chain.append(m.advance(ev, reason="boom" if ev is E.ERROR else None))
    return chain


# -- the pure table ---------------------------------------------------------------------------


def test_happy_chain(tmp_path: Path) -> None:
    m = machine(tmp_path)
    assert drive(m, [ev for ev, _ in HAPPY]) == [st for _, st in HAPPY]
    rec = m.record
    assert rec.phase is S.IDLE
    assert rec.counters.last_version == {"det": 2}
    assert rec.counters.max_release_counter == 7
    assert [t.event for t in rec.history] == [ev for ev, _ in HAPPY]


# Error at each step: (events before the error, chain after ERROR with a previous, without one).
ERROR_CASES = [
    ([E.START], [S.FAILED, S.IDLE], [S.FAILED, S.IDLE], Outcome.NO_STATE_CHANGE, Outcome.NO_STATE_CHANGE),
    ([E.START, E.FETCHED], [S.FAILED, S.IDLE], [S.FAILED, S.IDLE], "nsc", "nsc"),
    ([E.START, E.FETCHED, E.VERIFIED], [S.FAILED, S.IDLE], [S.FAILED, S.IDLE], "nsc", "nsc"),
    ([E.START, E.FETCHED, E.VERIFIED, E.STORED], [S.FAILED, S.IDLE], [S.FAILED, S.IDLE], "nsc", "nsc"),
    (
        [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED],
        [S.ROLLING_BACK, S.FAILED, S.IDLE],
        [S.FAILED, S.IDLE],
        "rb",
        "utrb",
    ),
    (
        [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ACTIVATED],
        [S.ROLLING_BACK, S.FAILED, S.IDLE],
        [S.FAILED, S.IDLE],
        "rb",
        "utrb",
    ),
    (
        [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ACTIVATED, E.PROBATION_PASSED],
        [S.ROLLING_BACK, S.FAILED, S.IDLE],
        [S.FAILED, S.IDLE],
        "rb",
        "utrb",
    ),
]
OUTCOMES = {
    "nsc": Outcome.NO_STATE_CHANGE,
    "rb": Outcome.ROLLED_BACK,
    "utrb": Outcome.UNABLE_TO_ROLL_BACK,
    Outcome.NO_STATE_CHANGE: Outcome.NO_STATE_CHANGE,
}


@pytest.mark.parametrize("with_previous", [True, False])
@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: "error_after_" + c[0][-1].value)
def test_error_at_each_step(tmp_path: Path, case: tuple, with_previous: bool) -> None:  # type: ignore[type-arg]
    before, chain_prev, chain_none, out_prev, out_none = case
    m = machine(tmp_path)
    drive(m, before, previous=OLD if with_previous else None)
    expected = chain_prev if with_previous else chain_none
    got = [m.advance(E.ERROR, reason="step failed")]
    while got[-1] is not S.IDLE:
        if got[-1] is S.ROLLING_BACK:
            got.append(m.advance(E.ROLLED_BACK))
        else:
            assert m.record.outcome is OUTCOMES[out_prev if with_previous else out_none]
            assert m.record.reason == "step failed"
            got.append(m.advance(E.RESET))
    assert got == expected
    # Counters only move on commit.
    assert m.record.counters.last_version == {}


def test_error_during_rollback_is_unable_to_roll_back(tmp_path: Path) -> None:
    m = machine(tmp_path)
    drive(m, [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ACTIVATED, E.ERROR])
    assert m.state is S.ROLLING_BACK
    assert m.advance(E.ERROR, reason="previous will not load") is S.FAILED
    assert m.record.outcome is Outcome.UNABLE_TO_ROLL_BACK


def test_select_and_manual_rollback_routes(tmp_path: Path) -> None:
    m = machine(tmp_path)
    assert drive(m, [E.SELECT, E.STORED, E.VALIDATED]) == [S.STAGED, S.VALIDATING, S.ACTIVATING]
    m2 = machine(tmp_path / "b")
    assert drive(m2, [E.ROLLBACK, E.ROLLED_BACK, E.RESET]) == [S.ROLLING_BACK, S.FAILED, S.IDLE]
    m3 = machine(tmp_path / "c")
    assert drive(m3, [E.ROLLBACK], previous=None) == [S.FAILED]


def test_every_pair_outside_the_table_raises() -> None:
    legal = 0
    for st in State:
        for ev in Event:
            if (st, ev) in TRANSITIONS:
                legal += 1
                assert next_state(st, ev) is TRANSITIONS[(st, ev)]
            else:
                with pytest.raises(IllegalTransition, match=f"{ev.value} is not allowed in state {st.value}"):
                    next_state(st, ev)
    assert legal == len(TRANSITIONS)


def test_every_busy_state_accepts_error_and_every_state_can_reach_idle() -> None:
    for st in BUSY - {S.FAILED}:
        assert (st, E.ERROR) in TRANSITIONS
    # Reachability of IDLE from every state through the table.
    for st in State:
        seen, todo = {st}, [st]
        while todo:
            cur = todo.pop()
            for (src, _), dst in TRANSITIONS.items():
                if src is cur and dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
        assert S.IDLE in seen, st


def test_illegal_advance_leaves_file_untouched(tmp_path: Path) -> None:
    m = machine(tmp_path)
    drive(m, [E.START])
    before = m.path.read_bytes()
    with pytest.raises(IllegalTransition):
        m.advance(E.PROBATION_PASSED)
    assert m.path.read_bytes() == before
    assert m.state is S.FETCHING


def test_start_needs_a_job_id(tmp_path: Path) -> None:
    with pytest.raises(IllegalTransition, match="job_id"):
        machine(tmp_path).advance(E.START)


# -- persistence ------------------------------------------------------------------------------


def test_next_state_is_on_disk_before_the_step_runs(tmp_path: Path) -> None:
    m = machine(tmp_path)
    seen: list[str] = []

    def step() -> None:  # a fake step that reads what a crash right now would leave
        seen.append(json.loads(m.path.read_text())["phase"])

    for ev, st in HAPPY:
        if ev is E.START:
            m.advance(ev, job_id="j", target=NEW, previous=OLD)
        else:
            m.advance(ev)
        step()
        assert seen[-1] == st.value
    assert seen == [st.value for _, st in HAPPY]


def test_failed_persist_keeps_old_state(tmp_path: Path) -> None:
    class Failing(FsOps):
        fail = False

        def rename(self, src: Path, dst: Path) -> None:
            if self.fail:
                raise OSError(28, "No space left on device")
            super().rename(src, dst)

    fs = Failing()
    m = UpdateMachine(tmp_path / "update-state.json", fs=fs)
    m.advance(E.START, job_id="j", target=NEW)
    fs.fail = True
    with pytest.raises(TransientError, match="cannot persist the update state"):
        m.advance(E.FETCHED)
    assert m.state is S.FETCHING
    assert json.loads(m.path.read_text())["phase"] == "FETCHING"
    assert [p.name for p in tmp_path.iterdir()] == ["update-state.json"]  # no temp file left


def test_record_round_trips(tmp_path: Path) -> None:
    m = machine(tmp_path)
    drive(m, [ev for ev, _ in HAPPY] + [E.START, E.FETCHED])
    again = UpdateMachine(m.path)
    assert again.record == m.record
    assert again.record.target == NEW
    assert UpdateRecord.from_json(json.loads(json.dumps(m.record.to_json()))) == m.record


def test_history_is_bounded(tmp_path: Path) -> None:
    m = machine(tmp_path, history=5)
    for _ in range(3):
        drive(m, [ev for ev, _ in HAPPY])
    assert len(m.record.history) == 5
    assert m.record.history[-1].event is E.FINISHED


def test_counters_never_go_down(tmp_path: Path) -> None:
    m = machine(tmp_path)
    drive(m, [ev for ev, _ in HAPPY])
    m.advance(E.SELECT, job_id="j2", target=OLD, previous=NEW)
    for ev in (E.STORED, E.VALIDATED, E.ACTIVATED, E.PROBATION_PASSED):
        m.advance(ev)
    assert m.last_version("det") == 2
    assert m.max_release_counter == 7
    m.record_counters("other", 5, release_counter=9)
    assert m.last_version("other") == 5 and m.max_release_counter == 9


def test_missing_file_is_idle(tmp_path: Path) -> None:
    m = UpdateMachine(tmp_path / "update-state.json")
    assert m.state is S.IDLE
    assert m.resume() is Action.NOTHING
    assert m.record.counters.boots == 1


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"schema": 1}',
        b'{"schema": 1, "phase": "DANCING"}',
        b'{"schema": 99, "phase": "IDLE"}',
        b'{"schema": 1, "phase": "IDLE", "attempts": "many"}',
        b'{"schema": 1, "phase": "IDLE", "target": {"name": "x"}}',
        b"\xff\xfe",
    ],
)
def test_corrupt_file_is_kept_aside(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "update-state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        m = UpdateMachine(path)
    assert m.state is S.IDLE
    assert "corrupt" in caplog.text
    assert (tmp_path / "update-state.json.corrupt").read_bytes() == content
    assert not path.exists()
    assert m.resume() is Action.NOTHING
    assert json.loads(path.read_text())["phase"] == "IDLE"


# -- resume on start --------------------------------------------------------------------------

# (persisted phase, action on the first restart)
RESUME_TABLE = [
    (S.IDLE, Action.NOTHING),
    (S.FETCHING, Action.DISCARD_STAGING),
    (S.VERIFYING, Action.DISCARD_STAGING),
    (S.STAGED, Action.DISCARD_STAGING),
    (S.VALIDATING, Action.DISCARD_STAGING),
    (S.ACTIVATING, Action.RESUME_ACTIVATION),
    (S.PROBATION, Action.RESUME_PROBATION),
    (S.COMMITTED, Action.FINISH_COMMIT),
    (S.ROLLING_BACK, Action.FINISH_ROLLBACK),
    (S.FAILED, Action.FINISH_FAILURE),
]
PATH_TO = {
    S.IDLE: [],
    S.FETCHING: [E.START],
    S.VERIFYING: [E.START, E.FETCHED],
    S.STAGED: [E.START, E.FETCHED, E.VERIFIED],
    S.VALIDATING: [E.START, E.FETCHED, E.VERIFIED, E.STORED],
    S.ACTIVATING: [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED],
    S.PROBATION: [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ACTIVATED],
    S.COMMITTED: [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ACTIVATED, E.PROBATION_PASSED],
    S.ROLLING_BACK: [E.START, E.FETCHED, E.VERIFIED, E.STORED, E.VALIDATED, E.ERROR],
    S.FAILED: [E.START, E.ERROR],
}


def test_resume_table_covers_every_state() -> None:
    assert {st for st, _ in RESUME_TABLE} == set(State)


@pytest.mark.parametrize(("phase", "action"), RESUME_TABLE, ids=lambda x: x.value)
def test_resume_action_after_a_crash_in_each_state(tmp_path: Path, phase: State, action: Action) -> None:
    m = machine(tmp_path)
    drive(m, PATH_TO[phase])
    assert m.state is phase
    # "Crash": a new machine reads the file the old one left.
    again = machine(tmp_path)
    assert again.state is phase
    assert again.resume() is action
    assert again.record.counters.boots == 1
    assert json.loads(again.path.read_text())["counters"]["boots"] == 1


@pytest.mark.parametrize(("phase", "action"), RESUME_TABLE, ids=lambda x: x.value)
def test_owner_following_the_action_reaches_idle(tmp_path: Path, phase: State, action: Action) -> None:
    """Apply each action as the ModelManager will; the chain ends IDLE with the right outcome."""
    m = machine(tmp_path)
    drive(m, PATH_TO[phase])
    m = machine(tmp_path)
    act = m.resume()
    if act is Action.DISCARD_STAGING:
        m.advance(E.ERROR, reason="interrupted by a restart")
        assert m.record.outcome is Outcome.NO_STATE_CHANGE
        m.advance(E.RESET)
    elif act is Action.RESUME_ACTIVATION:
        m.advance(E.ACTIVATED)
        m.advance(E.PROBATION_PASSED)
        m.advance(E.FINISHED)
    elif act is Action.RESUME_PROBATION:
        m.advance(E.PROBATION_PASSED)
        m.advance(E.FINISHED)
    elif act is Action.FINISH_COMMIT:
        m.advance(E.FINISHED)
    elif act is Action.FINISH_ROLLBACK:
        m.advance(E.ROLLED_BACK)
        assert m.record.outcome is Outcome.ROLLED_BACK
        m.advance(E.RESET)
    elif act is Action.FINISH_FAILURE:
        m.advance(E.RESET)
    assert m.state is S.IDLE


@pytest.mark.parametrize("phase", [S.ACTIVATING, S.PROBATION])
def test_attempts_then_rollback_past_max_attempts(tmp_path: Path, phase: State) -> None:
    m = machine(tmp_path, max_attempts=2, max_resumes=10)
    drive(m, PATH_TO[phase])
    actions = []
    for _ in range(3):
        m = machine(tmp_path, max_attempts=2, max_resumes=10)
        actions.append(m.resume())
    resumed = Action.RESUME_ACTIVATION if phase is S.ACTIVATING else Action.RESUME_PROBATION
    assert actions == [resumed, resumed, Action.ROLL_BACK]
    assert m.record.attempts == 3
    assert m.advance(E.ERROR, reason="too many attempts") is S.ROLLING_BACK


def test_attempts_carry_from_activating_into_probation_and_reset_per_job(tmp_path: Path) -> None:
    m = machine(tmp_path)
    drive(m, PATH_TO[S.ACTIVATING])
    m = machine(tmp_path)
    assert m.resume() is Action.RESUME_ACTIVATION
    m.advance(E.ACTIVATED)
    assert m.record.attempts == 1
    m.advance(E.PROBATION_PASSED)
    m.advance(E.FINISHED)
    drive(m, PATH_TO[S.PROBATION])
    assert m.record.attempts == 0 and m.record.resumes == 0


def test_loop_breaker_ends_a_crashing_rollback(tmp_path: Path) -> None:
    kw = {"max_attempts": 1, "max_resumes": 3}
    m = machine(tmp_path, **kw)
    drive(m, PATH_TO[S.PROBATION])
    actions = []
    for _ in range(20):  # every start crashes inside the step it was told to run
        m = machine(tmp_path, **kw)
        act = m.resume()
        actions.append(act)
        if act is Action.ROLL_BACK:
            m.advance(E.ERROR, reason="max attempts")  # -> ROLLING_BACK; then "crash"
        elif act is Action.ABANDON:
            m.advance(abandon_event(m.state), reason="loop breaker")
            if m.state is S.FAILED:
                m.advance(E.RESET)
        if m.state is S.IDLE:
            break
    assert actions == [
        Action.RESUME_PROBATION,
        Action.ROLL_BACK,
        Action.FINISH_ROLLBACK,
        Action.ABANDON,
    ]
    assert m.state is S.IDLE
    assert m.record.outcome is Outcome.UNABLE_TO_ROLL_BACK
    assert m.record.history[-2].target is S.FAILED


def test_abandon_event_per_state() -> None:
    assert abandon_event(S.FAILED) is E.RESET
    assert abandon_event(S.COMMITTED) is E.FINISHED
    for st in PRE_ACTIVATION | {S.ACTIVATING, S.PROBATION, S.ROLLING_BACK}:
        assert abandon_event(st) is E.ERROR
        assert (st, abandon_event(st)) in TRANSITIONS
    with pytest.raises(IllegalTransition):
        abandon_event(S.IDLE)


def test_resume_action_is_pure() -> None:
    rec = UpdateRecord(phase=S.PROBATION, attempts=4, resumes=1)
    assert resume_action(rec, max_attempts=3) is Action.ROLL_BACK
    assert resume_action(rec, max_attempts=4) is Action.RESUME_PROBATION
    assert resume_action(UpdateRecord(phase=S.STAGED, resumes=6), max_resumes=5) is Action.ABANDON
    assert rec == UpdateRecord(phase=S.PROBATION, attempts=4, resumes=1)
