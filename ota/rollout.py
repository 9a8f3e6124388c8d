"""Staged rollout: a pure policy saying which devices get a job now (after AWS IoT Jobs and hawkBit).

    rollout = Rollout(RolloutPlan(devices, waves=parse_waves("1,10%,50%,100%"), abort_failed_pct=20))
    action = rollout.next_action(statuses, now)   # statuses: device -> DeviceJobStatus of this job
    publish the job to action.send, then rollout.mark_sent(action.send, now)
    publish a rollback to action.rollback, then rollout.mark_rolled_back(action.rollback, now)

The rules, in the order ``next_action`` applies them:

- Devices are sorted and de-duplicated, so a restarted command computes the same waves. ``waves``
  are cumulative sizes (``n`` devices or ``p%`` of them, rounded up, at least 1); a last wave of
  every device is implied. ``waves=None`` is one wave: every device at once.
- A device is *started* once it has a status for this job or was marked sent: it is never sent
  the job again (a device refuses a job id it has seen: ``replay``). A restarted rollout that
  knows the statuses (and, from a journal, what was sent) picks up where it was.
- Abort: once ``executed`` (devices in a terminal status: SUCCEEDED, FAILED, REJECTED) reaches
  ``min_executed`` and ``failed`` (FAILED + REJECTED) is at least ``abort_failed_pct`` % of it.
- Wave k+1 starts once every device of wave k is started and at least ``success_threshold_pct`` %
  of wave k's devices SUCCEEDED. When that can no longer happen (too many of them ended without
  success), or ``wave_timeout_s`` passed since the wave's last device was sent, the rollout aborts.
- ``rate_per_min``: consecutive sends at least ``60 / rate_per_min`` s apart.
- Complete: every device started and in a terminal status (failures the abort rule tolerated are
  listed, not hidden).
- After an abort with ``rollback_on_abort``: a rollback goes, once, to every started device that
  SUCCEEDED or is IN_PROGRESS at ``activating``/``probation``, including those that get there
  later (a device already downloading when the rollout aborted carries on); the action is
  ``finished`` when no started device can still end up on the new version un-rolled-back.

Time enters only as ``now``; wave timers start when ``mark_sent`` (or the first status of a
device nobody marked) is seen, so a restart restarts the current wave's timer, never shortens it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ota.errors import ConfigError
from ota.update_events import JobStatus

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED})
FAILED = frozenset({JobStatus.FAILED, JobStatus.REJECTED})
#: IN_PROGRESS steps after which the device serves (or is about to serve) the new version.
PAST_ACTIVATING = frozenset({"activating", "probation"})

_WAVE_RE = re.compile(r"(\d+(?:\.\d+)?)(%?)")


@dataclass(frozen=True)
class DeviceJobStatus:
    """The latest status one device reported for one job."""

    status: JobStatus
    step: str | None = None
    detail: str | None = None
    reason: str | None = None
    seq: int | None = None
    ts: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


Wave = int | str


def parse_waves(text: str) -> list[Wave]:
    """``"1,10%,50%,100%"`` -> ``[1, "10%", "50%", "100%"]``; ConfigError on anything else."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ConfigError(f"--waves {text!r}: give cumulative sizes separated by commas, e.g. 1,10%,50%,100%")
    waves: list[Wave] = []
    for part in parts:
        m = _WAVE_RE.fullmatch(part)
        if m is None:
            raise ConfigError(f"--waves: {part!r} is neither a device count (5) nor a percentage (10%)")
        waves.append(part if m.group(2) else _count(part))
    check_waves(waves)
    return waves


def _count(part: str) -> int:
    if "." in part:
        raise ConfigError(f"--waves: {part!r}: a device count is a whole number")
    return int(part)


def check_waves(waves: Sequence[Wave]) -> None:
    """ConfigError unless every wave is an int >= 1 or ``"p%"`` with 0 < p <= 100, non-decreasing."""
    if not waves:
        raise ConfigError("waves: give at least one wave (or none at all: every device at once)")
    last_n, last_pct = 0, 0.0
    for w in waves:
        if isinstance(w, bool) or not isinstance(w, (int, str)):
            raise ConfigError(f"waves: {w!r} is neither a device count nor a percentage")
        if isinstance(w, int):
            if w < 1:
                raise ConfigError(f"waves: {w} devices; a wave has at least 1")
            if w < last_n:
                raise ConfigError(f"waves are cumulative: {w} after {last_n} goes backwards")
            last_n = w
            continue
        m = _WAVE_RE.fullmatch(w)
        if m is None or not m.group(2):
            raise ConfigError(f"waves: {w!r} is neither a device count nor a percentage like 10%")
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ConfigError(f"waves: {w} is outside (0%, 100%]")
        if pct < last_pct:
            raise ConfigError(f"waves are cumulative: {w} after {last_pct:g}% goes backwards")
        last_pct = pct


def wave_sizes(n_devices: int, waves: Sequence[Wave] | None) -> list[int]:
    """Cumulative device counts per wave: rounded up, clipped to ``n_devices``, strictly increasing,
    the last one ``n_devices``."""
    if n_devices == 0:
        return []
    if waves is None:
        return [n_devices]
    out: list[int] = []
    for w in waves:
        n = min(_wave_count(w, n_devices), n_devices)
        if not out or n > out[-1]:
            out.append(n)
    if out[-1] < n_devices:
        out.append(n_devices)
    return out


def _wave_count(w: Wave, n_devices: int) -> int:
    if isinstance(w, str):
        return max(1, math.ceil(float(w.rstrip("%")) * n_devices / 100 - 1e-9))
    return w


@dataclass(frozen=True)
class RolloutPlan:
    """What to roll out to whom, and the rules. ``devices`` is sorted and de-duplicated."""

    devices: Sequence[str]
    waves: Sequence[Wave] | None = None
    rate_per_min: float | None = None
    success_threshold_pct: float = 100.0
    abort_failed_pct: float | None = None
    min_executed: int = 1
    rollback_on_abort: bool = False
    wave_timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(sorted(set(self.devices))))
        if not self.devices:
            raise ConfigError("a rollout needs at least one device")
        if self.waves is not None:
            check_waves(self.waves)
            object.__setattr__(self, "waves", tuple(self.waves))
        if self.rate_per_min is not None and not (math.isfinite(self.rate_per_min) and self.rate_per_min > 0):
            raise ConfigError(f"rate: {self.rate_per_min} per minute; give a number > 0")
        if not 0 <= self.success_threshold_pct <= 100:
            raise ConfigError(f"success threshold {self.success_threshold_pct}% is outside [0, 100]")
        if self.abort_failed_pct is not None and not 0 < self.abort_failed_pct <= 100:
            raise ConfigError(f"abort threshold {self.abort_failed_pct}% is outside (0, 100]")
        if isinstance(self.min_executed, bool) or self.min_executed < 1:
            raise ConfigError(f"min executed {self.min_executed}: give at least 1")
        if self.wave_timeout_s is not None and not self.wave_timeout_s > 0:
            raise ConfigError(f"wave timeout {self.wave_timeout_s} s: give a number > 0")

    def wave_devices(self) -> list[tuple[str, ...]]:
        """The devices of each wave (not cumulative), in order."""
        sizes = wave_sizes(len(self.devices), self.waves)
        starts = [0, *sizes[:-1]]
        return [tuple(self.devices[a:b]) for a, b in zip(starts, sizes, strict=True)]


@dataclass(frozen=True)
class Counts:
    """How the rollout's devices stand."""

    total: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0  # FAILED + REJECTED
    in_progress: int = 0  # started, not terminal (QUEUED, IN_PROGRESS, or sent and not heard of)

    @property
    def executed(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class RolloutAction:
    """What to do now. ``send``/``rollback``: publish to these devices (then mark them)."""

    send: tuple[str, ...] = ()
    rollback: tuple[str, ...] = ()
    complete: bool = False
    aborted: bool = False
    reason: str | None = None
    finished: bool = False  # nothing more will happen: stop driving the rollout
    wave: int = 0  # 1-based number of the wave under way (0: none)
    waves: int = 0
    next_check_at: float | None = None  # call again by then even if no status changes
    counts: Counts = field(default_factory=Counts)


class Rollout:
    """The policy's state: the plan, what was marked sent or rolled back, and the abort latch."""

    def __init__(
        self,
        plan: RolloutPlan,
        *,
        sent: Mapping[str, float] | None = None,
        rolled_back: Iterable[str] = (),
    ) -> None:
        self.plan = plan
        self._waves = plan.wave_devices()
        self._members = frozenset(plan.devices)
        self._sent_at: dict[str, float] = {d: t for d, t in (sent or {}).items() if d in self._members}
        self._last_send: float | None = max(self._sent_at.values(), default=None)
        self._rolled_back: set[str] = {d for d in rolled_back if d in self._members}
        self._gate = 0  # waves before this index passed their gate (a latch: never re-closes)
        self._abort_reason: str | None = None

    @property
    def aborted(self) -> str | None:
        return self._abort_reason

    @property
    def rolled_back(self) -> frozenset[str]:
        return frozenset(self._rolled_back)

    def mark_sent(self, devices: Iterable[str], now: float) -> None:
        """The job was published to ``devices`` at ``now``."""
        for d in devices:
            if d in self._members:
                self._sent_at.setdefault(d, now)
                self._last_send = now if self._last_send is None else max(self._last_send, now)

    def mark_rolled_back(self, devices: Iterable[str], now: float) -> None:
        """A rollback was published to ``devices``."""
        self._rolled_back.update(d for d in devices if d in self._members)

    def next_action(self, statuses: Mapping[str, DeviceJobStatus], now: float) -> RolloutAction:
        """What to do now, given the latest status of each device for this job."""
        st = {d: s for d, s in statuses.items() if d in self._members}
        for d in st:
            self._sent_at.setdefault(d, now)  # started by someone earlier: its timer starts now
        counts = self._counts(st)
        if self._abort_reason is None:
            self._abort_reason = self._failure_rule(counts)
        if self._abort_reason is not None:
            return self._after_abort(st, counts)

        current = self._gate
        while True:
            wave = self._waves[current]
            unsent = [d for d in wave if d not in self._sent_at]
            if unsent or current == len(self._waves) - 1:
                break
            gate = self._gate_state(wave, st, now)
            if gate is True:
                current += 1
                self._gate = current
                continue
            if isinstance(gate, str):
                self._abort_reason = f"wave {current + 1} of {len(self._waves)}: {gate}"
                return self._after_abort(st, counts)
            deadline = gate
            return self._action(current, counts, next_check_at=deadline)

        send, next_check = self._pace(unsent, now)
        if not send and not unsent and all(d in st and st[d].terminal for d in self.plan.devices):
            return self._action(current, counts, complete=True, finished=True)
        return self._action(current, counts, send=send, next_check_at=next_check)

    # -- the rules ---------------------------------------------------------------------------

    def _counts(self, st: Mapping[str, DeviceJobStatus]) -> Counts:
        succeeded = sum(1 for s in st.values() if s.status is JobStatus.SUCCEEDED)
        failed = sum(1 for s in st.values() if s.status in FAILED)
        started = len(self._sent_at)
        return Counts(len(self.plan.devices), started, succeeded, failed, started - succeeded - failed)

    def _failure_rule(self, c: Counts) -> str | None:
        pct = self.plan.abort_failed_pct
        if pct is None or c.executed < self.plan.min_executed or c.executed == 0:
            return None
        if c.failed * 100 >= pct * c.executed:
            return (
                f"{c.failed} of {c.executed} executed devices failed "
                f"({100 * c.failed / c.executed:.0f}% >= {pct:g}%)"
            )
        return None

    def _gate_state(
        self, wave: Sequence[str], st: Mapping[str, DeviceJobStatus], now: float
    ) -> bool | str | float | None:
        """True: passed; str: can never pass (why); else the wave's deadline (float) or None."""
        need = self.plan.success_threshold_pct * len(wave)
        ok = sum(1 for d in wave if d in st and st[d].status is JobStatus.SUCCEEDED)
        if ok * 100 >= need:
            return True
        open_ = sum(1 for d in wave if not (d in st and st[d].terminal))
        if (ok + open_) * 100 < need:
            return (
                f"{ok} of {len(wave)} devices succeeded; the next wave needs "
                f"{self.plan.success_threshold_pct:g}%"
            )
        if self.plan.wave_timeout_s is None:
            return None
        deadline = max(self._sent_at[d] for d in wave) + self.plan.wave_timeout_s
        if now >= deadline:
            return (
                f"timed out after {self.plan.wave_timeout_s:g} s with {ok} of {len(wave)} devices "
                f"succeeded (the next wave needs {self.plan.success_threshold_pct:g}%)"
            )
        return deadline

    def _pace(self, unsent: Sequence[str], now: float) -> tuple[tuple[str, ...], float | None]:
        if not unsent:
            return (), None
        rate = self.plan.rate_per_min
        if rate is None:
            return tuple(unsent), None
        interval = 60.0 / rate
        if self._last_send is not None and now < self._last_send + interval:
            return (), self._last_send + interval
        return (unsent[0],), (now + interval if len(unsent) > 1 else None)

    def _after_abort(self, st: Mapping[str, DeviceJobStatus], counts: Counts) -> RolloutAction:
        if not self.plan.rollback_on_abort:
            return self._action(self._gate, counts, finished=True)
        rollback: list[str] = []
        pending = False
        for d in self.plan.devices:
            if d not in self._sent_at or d in self._rolled_back:
                continue
            s = st.get(d)
            if s is not None and (
                s.status is JobStatus.SUCCEEDED
                or (s.status is JobStatus.IN_PROGRESS and s.step in PAST_ACTIVATING)
            ):
                rollback.append(d)
            elif s is None or not s.terminal:
                pending = True  # may still reach the new version: watch it
        return self._action(
            self._gate, counts, rollback=tuple(rollback), finished=not rollback and not pending
        )

    def _action(
        self,
        current: int,
        counts: Counts,
        *,
        send: tuple[str, ...] = (),
        rollback: tuple[str, ...] = (),
        complete: bool = False,
        finished: bool = False,
        next_check_at: float | None = None,
    ) -> RolloutAction:
        return RolloutAction(
            send=send,
            rollback=rollback,
            complete=complete,
            aborted=self._abort_reason is not None,
            reason=self._abort_reason,
            finished=finished,
            wave=current + 1,
            waves=len(self._waves),
            next_check_at=next_check_at,
            counts=counts,
        )


__all__ = [
    "FAILED",
    "PAST_ACTIVATING",
    "TERMINAL",
    "Counts",
    "DeviceJobStatus",
    "Rollout",
    "RolloutAction",
    "RolloutPlan",
    "Wave",
    "check_waves",
    "parse_waves",
    "wave_sizes",
]
