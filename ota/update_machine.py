"""The persisted update state machine (DESIGN §3, after Mender).

One transition table, ``TRANSITIONS: dict[(State, Event), State]``, and a pure
``next_state(state, event, has_previous=...)`` that raises on an illegal transition.
The happy chain is::

    IDLE -START-> FETCHING -FETCHED-> VERIFYING -VERIFIED-> STAGED -STORED-> VALIDATING
         -VALIDATED-> ACTIVATING -ACTIVATED-> PROBATION -PROBATION_PASSED-> COMMITTED -FINISHED-> IDLE

What each state's step is (the owner, ``agent.ModelManager``, runs it):

- FETCHING: bring the bundle into ``staging/<job>/`` (download, or copy from ``incoming/``).
- VERIFYING: signature, sha256, size, manifest checks, replay/downgrade rules.
- STAGED: import the verified bundle into the store (``ModelStore.import_bundle``).
- VALIDATING: the validation gate (golden pairs, NaN, shapes, latency, live frames).
- ACTIVATING: swap the pointers (``ModelStore.set_current``) and the live handle.
- PROBATION: watch the new version for N frames / T seconds.
- COMMITTED: publish SUCCEEDED, collect garbage; FINISHED then raises the counters.
- ROLLING_BACK: ``current`` := ``previous`` and serve it again.
- FAILED: report the failure (``outcome`` says which: no_state_change | rolled_back |
  unable_to_roll_back), then ``RESET`` to IDLE.

Side routes: ``SELECT`` starts from a version already in the store (IDLE -> STAGED, for an
explicit activate); ``ROLLBACK`` is a manual rollback from IDLE; ``ERROR`` is legal in every
busy state. An error before ACTIVATING leads to FAILED (nothing changed); from ACTIVATING on it
leads to ROLLING_BACK, or to FAILED when there is no previous version to go back to (the one
rule outside the table, applied by ``next_state``).

Persistence: ``UpdateMachine.advance`` computes the next state, writes the whole record to
``update-state.json`` with ``atomic_write_json`` (temp file, fsync, rename, fsync folder) and
only then returns, so the caller runs the step of a state that is already on disk. A crash at
any point therefore leaves the state whose step may have been interrupted, and
``resume_action`` (pure) tells the owner what to do about it on the next start:

========================================  ================================================
persisted phase                           action
========================================  ================================================
IDLE                                      NOTHING
FETCHING of a download                    RESUME_FETCH: run the job again from FETCHING; the
                                          download resumes from the bytes in staging/<job>/
FETCHING, VERIFYING, STAGED, VALIDATING   DISCARD_STAGING, then ERROR -> FAILED
                                          (no_state_change) -> RESET -> IDLE
ACTIVATING                                RESUME_ACTIVATION (redo the idempotent swap, then
                                          probation), or ROLL_BACK past ``max_attempts``
PROBATION                                 RESUME_PROBATION, or ROLL_BACK past ``max_attempts``
COMMITTED                                 FINISH_COMMIT (idempotent), then FINISHED
ROLLING_BACK                              FINISH_ROLLBACK (idempotent), then ROLLED_BACK
FAILED                                    FINISH_FAILURE (report again), then RESET
any busy phase resumed > ``max_resumes``  ABANDON: the loop breaker; skip the step and apply
                                          ``abandon_event(phase)`` (ERROR, FINISHED or RESET),
                                          then go on from the state it leads to
========================================  ================================================

``attempts`` counts the starts spent in ACTIVATING/PROBATION for this job; ``resumes`` counts
every start that found this job busy (the loop breaker); ``counters.boots`` counts every start.
A missing state file means IDLE; a corrupt one is kept aside as ``update-state.json.corrupt``
and the machine starts IDLE with a logged warning.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.errors import TransientError
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_json
from ota.errors import IllegalTransition
from ota.probation import Baseline
from ota.update_job import UpdateJob, VersionRef, as_int

log = logging.getLogger(__name__)

SCHEMA = 1
SEEN_KEEP = 512  # job ids remembered for replay protection
STATE_FILE = "update-state.json"


class State(str, enum.Enum):
    IDLE = "IDLE"
    FETCHING = "FETCHING"
    VERIFYING = "VERIFYING"
    STAGED = "STAGED"
    VALIDATING = "VALIDATING"
    ACTIVATING = "ACTIVATING"
    PROBATION = "PROBATION"
    COMMITTED = "COMMITTED"
    ROLLING_BACK = "ROLLING_BACK"
    FAILED = "FAILED"


class Event(str, enum.Enum):
    START = "START"  # a job was accepted: fetch its bundle
    SELECT = "SELECT"  # a version already in the store was chosen (explicit activate)
    FETCHED = "FETCHED"
    VERIFIED = "VERIFIED"
    STORED = "STORED"  # the bundle is in the store
    VALIDATED = "VALIDATED"
    ACTIVATED = "ACTIVATED"
    PROBATION_PASSED = "PROBATION_PASSED"
    FINISHED = "FINISHED"  # commit done and reported
    ERROR = "ERROR"
    ROLLBACK = "ROLLBACK"  # manual rollback request
    ROLLED_BACK = "ROLLED_BACK"
    RESET = "RESET"  # failure reported: back to IDLE


class Action(str, enum.Enum):
    """What the owner must do on start, given the persisted record (see module docstring)."""

    NOTHING = "NOTHING"
    DISCARD_STAGING = "DISCARD_STAGING"
    RESUME_FETCH = "RESUME_FETCH"
    RESUME_ACTIVATION = "RESUME_ACTIVATION"
    RESUME_PROBATION = "RESUME_PROBATION"
    ROLL_BACK = "ROLL_BACK"
    FINISH_ROLLBACK = "FINISH_ROLLBACK"
    FINISH_COMMIT = "FINISH_COMMIT"
    FINISH_FAILURE = "FINISH_FAILURE"
    ABANDON = "ABANDON"


class Outcome(str, enum.Enum):
    """Why a job ended in FAILED, as reported in the job status ``detail`` (DESIGN §6)."""

    NO_STATE_CHANGE = "no_state_change"
    ROLLED_BACK = "rolled_back"
    UNABLE_TO_ROLL_BACK = "unable_to_roll_back"


S, E = State, Event

#: States whose step has not touched the serving version yet.
PRE_ACTIVATION = frozenset({S.FETCHING, S.VERIFYING, S.STAGED, S.VALIDATING})
#: States in which the candidate may already be serving.
POST_ACTIVATION = frozenset({S.ACTIVATING, S.PROBATION, S.COMMITTED})
BUSY = frozenset(State) - {S.IDLE}

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.START): S.FETCHING,
    (S.IDLE, E.SELECT): S.STAGED,
    (S.IDLE, E.ROLLBACK): S.ROLLING_BACK,
    (S.FETCHING, E.FETCHED): S.VERIFYING,
    (S.FETCHING, E.ERROR): S.FAILED,
    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.VERIFYING, E.ERROR): S.FAILED,
    (S.STAGED, E.STORED): S.VALIDATING,
    (S.STAGED, E.ERROR): S.FAILED,
    (S.VALIDATING, E.VALIDATED): S.ACTIVATING,
    (S.VALIDATING, E.ERROR): S.FAILED,
    (S.ACTIVATING, E.ACTIVATED): S.PROBATION,
    (S.ACTIVATING, E.ERROR): S.ROLLING_BACK,
    (S.PROBATION, E.PROBATION_PASSED): S.COMMITTED,
    (S.PROBATION, E.ERROR): S.ROLLING_BACK,
    (S.COMMITTED, E.FINISHED): S.IDLE,
    (S.COMMITTED, E.ERROR): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.FAILED,
    (S.ROLLING_BACK, E.ERROR): S.FAILED,
    (S.FAILED, E.RESET): S.IDLE,
}


def next_state(state: State, event: Event, *, has_previous: bool = True) -> State:
    """The state after ``event`` in ``state``; raises ``IllegalTransition`` when not in the table.

    The one rule outside the table: a transition into ROLLING_BACK becomes FAILED when there
    is no previous version to roll back to.
    """
    try:
        target = TRANSITIONS[(State(state), Event(event))]
    except (KeyError, ValueError):
        raise IllegalTransition(
            f"update state machine: event {getattr(event, 'value', event)} is not allowed in state "
            f"{getattr(state, 'value', state)}; legal events there: "
            f"{', '.join(e.value for (s, e) in TRANSITIONS if s == state) or 'none'}"
        ) from None
    if target is S.ROLLING_BACK and not has_previous:
        return S.FAILED
    return target


def outcome_of(source: State, event: Event, target: State) -> Outcome | None:
    """The failure outcome recorded when ``source --event--> target`` ends in FAILED."""
    if target is not S.FAILED:
        return None
    if event is E.ROLLED_BACK:
        return Outcome.ROLLED_BACK
    if source in PRE_ACTIVATION:
        return Outcome.NO_STATE_CHANGE
    return Outcome.UNABLE_TO_ROLL_BACK


@dataclass(frozen=True)
class Counters:
    """Counters that survive jobs: downgrade / replay protection and the boot count."""

    last_version: Mapping[str, int] = field(default_factory=dict)  # per model name, committed
    max_release_counter: int = 0
    boots: int = 0
    last_trusted_time: float = 0.0  # the latest issued_at of a verified job (devices without an RTC)

    def to_json(self) -> dict[str, Any]:
        return {
            "last_version": dict(sorted(self.last_version.items())),
            "max_release_counter": self.max_release_counter,
            "boots": self.boots,
            "last_trusted_time": self.last_trusted_time,
        }

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        if not isinstance(data, Mapping):
            raise ValueError("counters: expected an object")
        lv = data.get("last_version", {})
        if not isinstance(lv, Mapping):
            raise ValueError("counters.last_version: expected an object")
        return cls(
            last_version={str(k): as_int(v, f"last_version.{k}") for k, v in lv.items()},
            max_release_counter=as_int(data.get("max_release_counter", 0), "max_release_counter"),
            boots=as_int(data.get("boots", 0), "boots"),
            last_trusted_time=_as_time(data.get("last_trusted_time", 0.0), "last_trusted_time"),
        )


def _as_time(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Transition:
    source: State
    event: Event
    target: State
    at: float
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source.value,
            "event": self.event.value,
            "to": self.target.value,
            "at": self.at,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> Transition:
        if not isinstance(data, Mapping):
            raise ValueError("history entry: expected an object")
        reason = data.get("reason")
        return cls(
            source=State(data["from"]),
            event=Event(data["event"]),
            target=State(data["to"]),
            at=float(data["at"]),
            reason=None if reason is None else str(reason),
        )


@dataclass(frozen=True)
class UpdateRecord:
    """Everything ``update-state.json`` holds."""

    phase: State = S.IDLE
    job_id: str | None = None
    target: VersionRef | None = None
    previous: VersionRef | None = None
    attempts: int = 0
    resumes: int = 0
    counters: Counters = field(default_factory=Counters)
    reason: str | None = None
    outcome: Outcome | None = None
    history: tuple[Transition, ...] = ()
    updated_at: float = 0.0
    job: UpdateJob | None = None  # the job being run (None for one from before jobs were recorded)
    queue: tuple[UpdateJob, ...] = ()  # accepted, waiting for the running job to end
    seen: tuple[str, ...] = ()  # ids of the jobs accepted lately (replay protection), newest last
    pin: VersionRef | None = None  # never replaced automatically while set
    baseline: Baseline = field(default_factory=Baseline)  # the previous version's figures (probation)
    verdict: str | None = None  # a failed probation verdict, on disk before the worker's rollback
    hold: bool = False  # installs paused on the device (`edge-agent updates hold`): jobs wait QUEUED

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "phase": self.phase.value,
            "job_id": self.job_id,
            "target": None if self.target is None else self.target.to_json(),
            "previous": None if self.previous is None else self.previous.to_json(),
            "attempts": self.attempts,
            "resumes": self.resumes,
            "counters": self.counters.to_json(),
            "reason": self.reason,
            "outcome": None if self.outcome is None else self.outcome.value,
            "history": [t.to_json() for t in self.history],
            "updated_at": self.updated_at,
            "job": None if self.job is None else self.job.to_json(),
            "queue": [j.to_json() for j in self.queue],
            "seen": list(self.seen),
            "pin": None if self.pin is None else self.pin.to_json(),
            "baseline": self.baseline.to_json(),
            "verdict": self.verdict,
            "hold": self.hold,
        }

    @classmethod
    def from_json(cls, data: Any) -> UpdateRecord:
        """Parse a record; raises ``ValueError`` (with the field) when it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA}")
        try:
            job_id = data.get("job_id")
            reason = data.get("reason")
            outcome = data.get("outcome")
            history = data.get("history", [])
            if not isinstance(history, list):
                raise ValueError("history: expected a list")
            queue = data.get("queue", [])
            if not isinstance(queue, list):
                raise ValueError("queue: expected a list")
            hold = data.get("hold", False)
            if not isinstance(hold, bool):
                raise ValueError("hold: expected true or false")
            seen = data.get("seen", [])
            if not isinstance(seen, list) or not all(isinstance(s, str) for s in seen):
                raise ValueError("seen: expected a list of job ids")
            job = data.get("job")
            return cls(
                phase=State(data["phase"]),
                job_id=None if job_id is None else str(job_id),
                target=VersionRef.from_json(data.get("target")),
                previous=VersionRef.from_json(data.get("previous")),
                attempts=as_int(data.get("attempts", 0), "attempts"),
                resumes=as_int(data.get("resumes", 0), "resumes"),
                counters=Counters.from_json(data.get("counters", {})),
                reason=None if reason is None else str(reason),
                outcome=None if outcome is None else Outcome(outcome),
                history=tuple(Transition.from_json(h) for h in history),
                updated_at=float(data.get("updated_at", 0.0)),
                job=None if job is None else UpdateJob.from_json(job),
                queue=tuple(UpdateJob.from_json(j) for j in queue),
                seen=tuple(seen),
                pin=VersionRef.from_json(data.get("pin")),
                baseline=Baseline.from_json(data.get("baseline")),
                verdict=None if data.get("verdict") is None else str(data.get("verdict")),
                hold=hold,
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None


def abandon_event(phase: State) -> Event:
    """The event the owner applies on ``Action.ABANDON``: the shortest legal way towards IDLE.

    The step of ``phase`` is skipped (it kept crashing). From ACTIVATING/PROBATION this still
    leads through ROLLING_BACK (the candidate never passed probation); COMMITTED is finished
    as is (the candidate did pass); ROLLING_BACK gives up (FAILED, unable_to_roll_back).
    """
    if phase is S.FAILED:
        return E.RESET
    if phase is S.COMMITTED:
        return E.FINISHED
    if phase is S.IDLE:
        raise IllegalTransition("update state machine: nothing to abandon in IDLE")
    return E.ERROR


def resume_action(record: UpdateRecord, *, max_attempts: int = 3, max_resumes: int = 5) -> Action:
    """What the owner must do on start about the persisted ``record`` (pure; see the table above).

    ``record`` is the one after ``UpdateMachine.resume`` counted this start, so ``attempts``
    and ``resumes`` already include it.
    """
    phase = record.phase
    if phase is S.IDLE:
        return Action.NOTHING
    if record.resumes > max_resumes:
        return Action.ABANDON
    if phase is S.FETCHING and record.job is not None and record.job.remote:
        return Action.RESUME_FETCH  # the download goes on from the bytes in staging/<job>/
    if phase in PRE_ACTIVATION:
        return Action.DISCARD_STAGING
    if phase in (S.ACTIVATING, S.PROBATION):
        if record.attempts > max_attempts or (phase is S.PROBATION and record.verdict is not None):
            return Action.ROLL_BACK
        return Action.RESUME_ACTIVATION if phase is S.ACTIVATING else Action.RESUME_PROBATION
    if phase is S.COMMITTED:
        return Action.FINISH_COMMIT
    if phase is S.ROLLING_BACK:
        return Action.FINISH_ROLLBACK
    return Action.FINISH_FAILURE  # FAILED


class UpdateMachine:
    """The table plus its persistence in ``<root>/update-state.json``.

    One owner (the ModelManager's worker) drives the transitions; ``enqueue`` may be called
    from any thread. Every read-modify-write of the record holds one lock, so a job queued
    while a transition is written is never lost.
    """

    def __init__(
        self,
        path: Path,
        *,
        fs: FsOps = DEFAULT_FS,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        max_resumes: int = 5,
        history: int = 20,
    ) -> None:
        self.path = Path(path)
        self.fs = fs
        self.clock = clock
        self.max_attempts = max_attempts
        self.max_resumes = max_resumes
        self.history_len = history
        self._lock = threading.RLock()
        self._record = self._load()

    # -- reading -----------------------------------------------------------------------------

    @property
    def record(self) -> UpdateRecord:
        return self._record

    @property
    def state(self) -> State:
        return self._record.phase

    def last_version(self, name: str) -> int | None:
        """The highest committed manifest version of ``name``, or None."""
        return self._record.counters.last_version.get(name)

    @property
    def max_release_counter(self) -> int:
        return self._record.counters.max_release_counter

    @property
    def pin(self) -> VersionRef | None:
        return self._record.pin

    @property
    def queue(self) -> tuple[UpdateJob, ...]:
        return self._record.queue

    def has_seen(self, job_id: str) -> bool:
        rec = self._record
        return job_id in rec.seen or any(j.job_id == job_id for j in rec.queue)

    def _load(self) -> UpdateRecord:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no %s yet: starting IDLE", self.path)
            return UpdateRecord()
        except OSError as exc:
            raise TransientError(
                f"cannot read the update state file {self.path}: {exc.strerror or exc}; "
                "check the permissions of the state root"
            ) from exc
        try:
            return UpdateRecord.from_json(json.loads(raw))
        except (ValueError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning(
                "update state file %s is corrupt (%s): kept aside as %s; starting IDLE "
                "(the serving version is whatever the `current` pointer names)",
                self.path,
                exc,
                aside,
            )
            try:
                self.fs.rename(self.path, aside)
            except OSError as exc2:
                log.warning("could not move %s aside: %s", self.path, exc2)
            return UpdateRecord()

    # -- writing -----------------------------------------------------------------------------

    def enqueue(
        self, job: UpdateJob, *, marks: tuple[str, ...] = (), trusted_time: float | None = None
    ) -> bool:
        """Persist ``job`` as queued; False (nothing written) when its id or a mark was seen.

        ``marks`` (e.g. ``nonce:<n>`` of a signed job) join the seen ids in the same write;
        ``trusted_time`` (a verified job's ``issued_at``) raises the last trusted time."""
        with self._lock:
            if self.has_seen(job.job_id) or any(m in self._record.seen for m in marks):
                return False
            rec = self._record
            counters = rec.counters
            if trusted_time is not None and trusted_time > counters.last_trusted_time:
                counters = replace(counters, last_trusted_time=float(trusted_time))
            self._persist(
                replace(
                    rec,
                    queue=(*rec.queue, job),
                    seen=(*rec.seen, *marks)[-SEEN_KEEP:] if marks else rec.seen,
                    counters=counters,
                    updated_at=self.clock(),
                )
            )
            return True

    def mark_seen(self, marks: tuple[str, ...], *, trusted_time: float | None = None) -> bool:
        """Remember ids of a verified request that is not queued (an immediate pin); False
        (nothing written) when one of them was seen already."""
        with self._lock:
            rec = self._record
            if any(self.has_seen(m) for m in marks):
                return False
            counters = rec.counters
            if trusted_time is not None and trusted_time > counters.last_trusted_time:
                counters = replace(counters, last_trusted_time=float(trusted_time))
            self._persist(
                replace(
                    rec, seen=(*rec.seen, *marks)[-SEEN_KEEP:], counters=counters, updated_at=self.clock()
                )
            )
            return True

    def set_hold(self, hold: bool) -> None:
        with self._lock:
            self._persist(replace(self._record, hold=hold, updated_at=self.clock()))

    def drop_queued(self, job_id: str) -> UpdateJob | None:
        """Remove a queued job that will not run (refused before it started); returns it."""
        with self._lock:
            rec = self._record
            found = next((j for j in rec.queue if j.job_id == job_id), None)
            if found is not None:
                self._persist(
                    replace(
                        rec,
                        queue=tuple(j for j in rec.queue if j.job_id != job_id),
                        seen=(*rec.seen, job_id)[-SEEN_KEEP:],
                        updated_at=self.clock(),
                    )
                )
            return found

    def set_pin(self, ref: VersionRef | None) -> None:
        with self._lock:
            self._persist(replace(self._record, pin=ref, updated_at=self.clock()))

    def record_verdict(self, reason: str) -> None:
        """A failed probation verdict, persisted before the worker rolls back (resume: ROLL_BACK)."""
        with self._lock:
            self._persist(replace(self._record, verdict=reason, updated_at=self.clock()))

    def set_baseline(self, baseline: Baseline) -> None:
        """The previous version's figures, on disk before ACTIVATING (a resumed probation needs them)."""
        with self._lock:
            self._persist(replace(self._record, baseline=baseline, updated_at=self.clock()))

    def _persist(self, record: UpdateRecord) -> None:
        try:
            atomic_write_json(self.path, record.to_json(), self.fs)
        except OSError as exc:
            raise TransientError(
                f"cannot persist the update state to {self.path}: {exc.strerror or exc}; "
                "free space or fix permissions under the state root"
            ) from exc
        self._record = record

    def resume(self) -> Action:
        """Count this start (boots, and attempts/resumes of a busy job), persist, and say what to do."""
        with self._lock:
            return self._resume()

    def _resume(self) -> Action:
        rec = self._record
        counters = replace(rec.counters, boots=rec.counters.boots + 1)
        attempts, resumes = rec.attempts, rec.resumes
        if rec.phase in BUSY:
            resumes += 1
            if rec.phase in (S.ACTIVATING, S.PROBATION):
                attempts += 1
        new = replace(rec, counters=counters, attempts=attempts, resumes=resumes, updated_at=self.clock())
        self._persist(new)
        action = resume_action(new, max_attempts=self.max_attempts, max_resumes=self.max_resumes)
        if action is not Action.NOTHING:
            log.warning(
                "resuming update job %s found in %s (attempt %d, resume %d): %s",
                new.job_id,
                new.phase.value,
                new.attempts,
                new.resumes,
                action.value,
            )
        return action

    def advance(
        self,
        event: Event,
        *,
        reason: str | None = None,
        job_id: str | None = None,
        target: VersionRef | None = None,
        previous: VersionRef | None = None,
        job: UpdateJob | None = None,
    ) -> State:
        """Apply ``event``, persist the new record, and return the new state.

        Persisting happens before this returns, so the caller runs the new state's step only
        once it is on disk. ``job_id``/``target``/``previous`` are taken on START, SELECT and
        ROLLBACK (a new job), and ``target``/``previous`` may be refined later (e.g. once the
        manifest is known in VERIFYING). ``reason`` is kept for ERROR and for the history.
        A starting event takes the ``job`` out of the queue in the same write.
        """
        with self._lock:
            return self._advance(event, reason, job_id, target, previous, job)

    def _advance(
        self,
        event: Event,
        reason: str | None,
        job_id: str | None,
        target: VersionRef | None,
        previous: VersionRef | None,
        job: UpdateJob | None,
    ) -> State:
        rec = self._record
        has_previous = (previous or rec.previous) is not None
        new_phase = next_state(rec.phase, event, has_previous=has_previous)
        now = self.clock()
        starting = event in (E.START, E.SELECT, E.ROLLBACK)
        if starting and not job_id:
            raise IllegalTransition(f"update state machine: {event.value} needs a job_id")
        changes: dict[str, Any] = {"phase": new_phase, "updated_at": now}
        if starting:
            changes.update(
                job_id=job_id,
                target=target,
                previous=previous,
                attempts=0,
                resumes=0,
                reason=reason,
                outcome=None,
                job=job,
                verdict=None,
                queue=tuple(j for j in rec.queue if j.job_id != job_id),
                seen=(*tuple(s for s in rec.seen if s != job_id), job_id)[-SEEN_KEEP:],
            )
        else:
            if target is not None:
                changes["target"] = target
            if previous is not None:
                changes["previous"] = previous
            if reason is not None:
                changes["reason"] = reason
        if new_phase in (S.ACTIVATING, S.PROBATION) and rec.phase not in (S.ACTIVATING, S.PROBATION):
            changes["attempts"] = 0
        outcome = outcome_of(rec.phase, event, new_phase)
        if outcome is not None:
            changes["outcome"] = outcome
        if rec.phase is S.COMMITTED and event is E.FINISHED:
            changes["counters"] = _commit_counters(rec.counters, changes.get("target", rec.target))
        entry = Transition(rec.phase, event, new_phase, now, reason)
        changes["history"] = (*rec.history, entry)[-self.history_len :]
        new = replace(rec, **changes)
        self._persist(new)
        log.info(
            "update %s: %s --%s--> %s%s",
            new.job_id,
            rec.phase.value,
            event.value,
            new_phase.value,
            f" ({reason})" if reason else "",
        )
        return new_phase

    def record_counters(self, name: str, version: int, release_counter: int | None = None) -> None:
        """Raise the downgrade/replay counters without a job (e.g. seeding the store)."""
        ref = VersionRef(name=name, version=version, sha256="", release_counter=release_counter)
        with self._lock:
            new = replace(self._record, counters=_commit_counters(self._record.counters, ref))
            self._persist(new)


def _commit_counters(counters: Counters, target: VersionRef | None) -> Counters:
    if target is None:
        return counters
    last = dict(counters.last_version)
    last[target.name] = max(last.get(target.name, target.version), target.version)
    rc = counters.max_release_counter
    if target.release_counter is not None:
        rc = max(rc, target.release_counter)
    return replace(counters, last_version=last, max_release_counter=rc)


__all__ = [
    "BUSY",
    "POST_ACTIVATION",
    "PRE_ACTIVATION",
    "STATE_FILE",
    "TRANSITIONS",
    "Action",
    "Counters",
    "Event",
    "IllegalTransition",
    "Outcome",
    "State",
    "Transition",
    "UpdateMachine",
    "UpdateRecord",
    "VersionRef",
    "abandon_event",
    "next_state",
    "outcome_of",
    "resume_action",
]
