"""``UpdateEvents``: one event per step and outcome of an update job, to every subscriber.

The ``ModelManager`` emits; the log, the ``jobs`` table (monitoring/job_history.py) and,
next, the MQTT outbox subscribe. The statuses are DESIGN §6's:

    QUEUED        the job is persisted and waits for the running one
    IN_PROGRESS   with ``step``: downloading | verifying | validating | activating | probation
    SUCCEEDED     only after the commit
    FAILED        with ``detail``: no_state_change | rolled_back | unable_to_roll_back
    REJECTED      refused by a rule before anything changed (``reason`` says which)

``status_for(state)`` maps a persisted state of the update machine to the event its entry
means, so the runner cannot announce a step it has not persisted.

A subscriber that fails with an ``EdgeAgentError`` (a full disk under the jobs table) is
logged and the others still hear the event; any other exception is a bug and propagates.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from inference.errors import EdgeAgentError
from ota.update_machine import Outcome, State

log = logging.getLogger(__name__)


class JobStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


#: The step a state's entry starts (DESIGN §6 names).
STEPS: dict[State, str] = {
    State.FETCHING: "downloading",
    State.VERIFYING: "verifying",
    State.VALIDATING: "validating",
    State.ACTIVATING: "activating",
    State.PROBATION: "probation",
    State.ROLLING_BACK: "rolling_back",
}


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    status: JobStatus
    ts: float
    phase: str  # the update machine's state after the step this event reports
    step: str | None = None
    detail: str | None = None  # FAILED: the outcome
    reason: str | None = None
    origin: str | None = None
    model: str | None = None
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out


def status_for(
    state: State, outcome: Outcome | None, *, rejected: bool
) -> tuple[JobStatus, str | None] | None:
    """(status, step or detail) that entering ``state`` reports, or None for a silent state."""
    if state in STEPS:
        return JobStatus.IN_PROGRESS, STEPS[state]
    if state is State.COMMITTED:
        return JobStatus.SUCCEEDED, None
    if state is State.FAILED:
        if rejected and outcome is Outcome.NO_STATE_CHANGE:
            return JobStatus.REJECTED, None
        return JobStatus.FAILED, outcome.value if outcome else None
    return None


Subscriber = Callable[[JobEvent], None]


class UpdateEvents:
    """A plain fan-out; ``emit`` calls every subscriber on the emitting thread, in order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def emit(self, event: JobEvent) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except EdgeAgentError as err:
                log.warning(
                    "job %s: a subscriber could not take %s: %s", event.job_id, event.status.value, err
                )


def log_event(event: JobEvent) -> None:
    """The log's subscription: one line per event."""
    what = event.step or event.detail or ""
    level = logging.WARNING if event.status in (JobStatus.FAILED, JobStatus.REJECTED) else logging.INFO
    log.log(
        level,
        "job %s %s%s%s",
        event.job_id,
        event.status.value,
        f" {what}" if what else "",
        f": {event.reason}" if event.reason and event.status is not JobStatus.IN_PROGRESS else "",
    )


__all__ = ["STEPS", "JobEvent", "JobStatus", "UpdateEvents", "log_event", "status_for"]
