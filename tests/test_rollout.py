"""``Rollout.next_action`` as tables: waves, gates, rate, abort rule, rollback on abort, restart.

A scenario is a plan and a script of steps ``(now, status changes, expected send, expected
rollback, expected outcome)``; the driver publishes nothing, it marks what the action said to
send or roll back, as ``FleetClient.run_rollout`` does after a publish. Time is only ``now``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ota.errors import ConfigError
from ota.rollout import DeviceJobStatus, Rollout, RolloutAction, RolloutPlan, parse_waves, wave_sizes
from ota.update_events import JobStatus

QUEUED = DeviceJobStatus(JobStatus.QUEUED)
DOWNLOADING = DeviceJobStatus(JobStatus.IN_PROGRESS, step="downloading")
ACTIVATING = DeviceJobStatus(JobStatus.IN_PROGRESS, step="activating")
PROBATION = DeviceJobStatus(JobStatus.IN_PROGRESS, step="probation")
OK = DeviceJobStatus(JobStatus.SUCCEEDED)
FAIL = DeviceJobStatus(JobStatus.FAILED, detail="rolled_back")
REJECTED = DeviceJobStatus(JobStatus.REJECTED, reason="downgrade: lower release counter")

FIVE = [f"d{i}" for i in range(5)]

# --------------------------------------------------------------------------- waves


@pytest.mark.parametrize(
    ("n", "waves", "sizes"),
    [
        (5, [1, "50%", "100%"], [1, 3, 5]),
        (100, [1, "10%", "50%", "100%"], [1, 10, 50, 100]),
        (10, [1, "10%", "50%", "100%"], [1, 5, 10]),  # 10% of 10 is the first wave again: merged
        (7, ["33%"], [3, 7]),  # rounded up; a last wave of everyone is implied
        (10, ["30%"], [3, 10]),  # 30% of 10 is exactly 3, not 4 (float noise)
        (5, [2], [2, 5]),
        (5, [10], [5]),  # clipped to the fleet
        (3, None, [3]),  # no waves: everyone at once
        (1, [1, "50%", "100%"], [1]),
        (200, ["0.5%", "100%"], [1, 200]),
        (0, [1], []),
    ],
)
def test_wave_sizes(n: int, waves: list[int | str] | None, sizes: list[int]) -> None:
    assert wave_sizes(n, waves) == sizes


@pytest.mark.parametrize(
    ("text", "waves"),
    [
        ("1,10%,50%,100%", [1, "10%", "50%", "100%"]),
        (" 2 , 25% ", [2, "25%"]),
        ("12.5%,100%", ["12.5%", "100%"]),
        ("3", [3]),
    ],
)
def test_parse_waves(text: str, waves: list[int | str]) -> None:
    assert parse_waves(text) == waves


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cumulative sizes"),
        ("1,,5", "cumulative sizes"),
        ("abc", "neither a device count"),
        ("10 %", "neither a device count"),
        ("-1", "neither a device count"),
        ("0", "at least 1"),
        ("0%", "outside"),
        ("150%", "outside"),
        ("1.5", "whole number"),
        ("5,2", "goes backwards"),
        ("50%,10%", "goes backwards"),
    ],
)
def test_parse_waves_refuses_nonsense(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_waves(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": []}, "at least one device"),
        ({"rate_per_min": 0}, "rate"),
        ({"rate_per_min": float("nan")}, "rate"),
        ({"success_threshold_pct": 101}, "success threshold"),
        ({"abort_failed_pct": 0}, "abort threshold"),
        ({"min_executed": 0}, "min executed"),
        ({"wave_timeout_s": 0}, "wave timeout"),
        ({"waves": [3, 1]}, "backwards"),
        ({"waves": []}, "at least one wave"),
    ],
)
def test_plan_refuses_bad_rules(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RolloutPlan(**{"devices": FIVE, **kwargs})


def test_plan_sorts_and_deduplicates_devices() -> None:
    plan = RolloutPlan(["d3", "d1", "d4", "d1", "d0", "d2"], waves=[1, "50%"])
    assert plan.devices == ("d0", "d1", "d2", "d3", "d4")
    assert plan.wave_devices() == [("d0",), ("d1", "d2"), ("d3", "d4")]


# --------------------------------------------------------------------------- scenarios

# A step: (now, status changes, send, rollback, outcome); outcome is "running", "complete" or
# "aborted: <reason substring>"; "+finished" when nothing more will happen.
Step = tuple[float, dict[str, DeviceJobStatus], tuple[str, ...], tuple[str, ...], str]

SCENARIOS: list[tuple[str, dict[str, Any], list[Step]]] = [
    (
        "waves: each wave waits for the previous one to succeed",
        {"waves": [1, "50%", "100%"]},
        [
            (0, {}, ("d0",), (), "running"),
            (1, {"d0": DOWNLOADING}, (), (), "running"),
            (2, {"d0": OK}, ("d1", "d2"), (), "running"),
            (3, {"d1": OK, "d2": PROBATION}, (), (), "running"),
            (4, {"d2": OK}, ("d3", "d4"), (), "running"),
            (5, {"d3": OK}, (), (), "running"),
            (6, {"d4": OK}, (), (), "complete+finished"),
        ],
    ),
    (
        "no waves: everyone at once",
        {},
        [
            (0, {}, tuple(FIVE), (), "running"),
            (1, dict.fromkeys(FIVE, OK), (), (), "complete+finished"),
        ],
    ),
    (
        "threshold 50%: the next wave starts with half the wave done",
        {"waves": [1, "50%"], "success_threshold_pct": 50},
        [
            (0, {}, ("d0",), (), "running"),
            (1, {"d0": OK}, ("d1", "d2"), (), "running"),
            (2, {"d1": OK}, ("d3", "d4"), (), "running"),
            (3, {"d2": FAIL, "d3": OK, "d4": OK}, (), (), "complete+finished"),  # tolerated, counted
        ],
    ),
    (
        "threshold 100%: a failure in a wave that gates another aborts",
        {"waves": [1, "50%"]},
        [
            (0, {}, ("d0",), (), "running"),
            (1, {"d0": OK}, ("d1", "d2"), (), "running"),
            (2, {"d1": FAIL}, (), (), "aborted: wave 2 of 3: 0 of 2 devices succeeded+finished"),
            (3, {"d2": OK}, (), (), "aborted: wave 2 of 3+finished"),  # the abort is latched
        ],
    ),
    (
        "threshold 100%: a failure in the last wave completes, with the failure counted",
        {"waves": [1]},
        [
            (0, {}, ("d0",), (), "running"),
            (1, {"d0": OK}, ("d1", "d2", "d3", "d4"), (), "running"),
            (2, {"d1": OK, "d2": OK, "d3": FAIL}, (), (), "running"),
            (3, {"d4": OK}, (), (), "complete+finished"),
        ],
    ),
    (
        "abort rule waits for min_executed; REJECTED counts as failed",
        {"abort_failed_pct": 50, "min_executed": 3},
        [
            (0, {}, tuple(FIVE), (), "running"),
            (1, {"d0": REJECTED}, (), (), "running"),  # 1 of 1 failed, but only 1 executed
            (2, {"d1": OK}, (), (), "running"),  # 1 of 2
            (3, {"d2": REJECTED}, (), (), "aborted: 2 of 3 executed devices failed (67% >= 50%)+finished"),
        ],
    ),
    (
        "abort rule: just under the threshold carries on",
        {"abort_failed_pct": 34, "min_executed": 3},
        [
            (0, {}, tuple(FIVE), (), "running"),
            (1, {"d0": FAIL, "d1": OK, "d2": OK}, (), (), "running"),  # 33% < 34%
            (2, {"d3": OK, "d4": OK}, (), (), "complete+finished"),  # 20%
        ],
    ),
    (
        "abort rule: the last failure turns a complete rollout into an aborted one",
        {"abort_failed_pct": 20, "min_executed": 5},
        [
            (0, {}, tuple(FIVE), (), "running"),
            (1, {"d0": OK, "d1": OK, "d2": OK, "d3": OK, "d4": FAIL}, (), (), "aborted: 1 of 5+finished"),
        ],
    ),
    (
        "abort rule across waves stops the next wave",
        {"waves": [2], "success_threshold_pct": 50, "abort_failed_pct": 50, "min_executed": 2},
        [
            (0, {}, ("d0", "d1"), (), "running"),
            (1, {"d0": FAIL}, (), (), "running"),
            (2, {"d1": FAIL}, (), (), "aborted: 2 of 2 executed+finished"),
        ],
    ),
    (
        "rollback on abort: updated devices, and those that get there later",
        {"abort_failed_pct": 40, "min_executed": 2, "rollback_on_abort": True},
        [
            (0, {}, tuple(FIVE), (), "running"),
            (1, {"d0": OK, "d2": PROBATION, "d3": DOWNLOADING, "d4": QUEUED}, (), (), "running"),
            (2, {"d1": FAIL}, (), ("d0", "d2"), "aborted: 1 of 2 executed"),
            (3, {"d3": ACTIVATING}, (), ("d3",), "aborted"),
            (4, {"d2": OK, "d3": OK}, (), (), "aborted"),  # already rolled back: not twice
            (5, {"d4": FAIL}, (), (), "aborted+finished"),
        ],
    ),
    (
        "rollback on abort: a failed wave gate rolls back the waves before it",
        {"waves": [1, "50%"], "rollback_on_abort": True},
        [
            (0, {}, ("d0",), (), "running"),
            (1, {"d0": OK}, ("d1", "d2"), (), "running"),
            (2, {"d1": OK, "d2": REJECTED}, (), ("d0", "d1"), "aborted: wave 2 of 3"),
            (3, {}, (), (), "aborted+finished"),
        ],
    ),
    (
        "rate: consecutive sends 30 s apart",
        {"rate_per_min": 2},
        [
            (0, {}, ("d0",), (), "running@30"),
            (10, {"d0": OK}, (), (), "running@30"),
            (30, {}, ("d1",), (), "running@60"),
            (75, {}, ("d2",), (), "running@105"),  # late: no burst to catch up
            (105, {}, ("d3",), (), "running@135"),
            (140, {}, ("d4",), (), "running"),
            (141, {d: OK for d in FIVE[1:]}, (), (), "complete+finished"),
        ],
    ),
    (
        "rate and waves: a wave's devices are paced too",
        {"waves": [1, "50%"], "rate_per_min": 60},
        [
            (0, {}, ("d0",), (), "running"),
            (0.5, {"d0": OK}, (), (), "running@1"),
            (1, {}, ("d1",), (), "running@2"),
            (2, {}, ("d2",), (), "running"),
            (9, {"d1": OK, "d2": OK}, ("d3",), (), "running@10"),
        ],
    ),
    (
        "wave timeout: a wave that does not pass in time aborts",
        {"waves": [1, "50%"], "wave_timeout_s": 100},
        [
            (0, {}, ("d0",), (), "running"),  # the timer starts when the send is marked
            (50, {"d0": DOWNLOADING}, (), (), "running@100"),
            (100, {}, (), (), "aborted: wave 1 of 3: timed out after 100 s with 0 of 1+finished"),
        ],
    ),
    (
        "wave timeout counts from the wave's last send",
        {"waves": [1, "50%"], "wave_timeout_s": 100},
        [
            (0, {}, ("d0",), (), "running"),
            (60, {"d0": OK}, ("d1", "d2"), (), "running"),
            (61, {"d1": OK}, (), (), "running@160"),
            (159, {"d2": OK}, ("d3", "d4"), (), "running"),
        ],
    ),
    (
        "statuses of other devices are ignored",
        {"waves": [1]},
        [
            (0, {"zz": OK, "d9": FAIL}, ("d0",), (), "running"),
        ],
    ),
]


def check(action: RolloutAction, send: tuple[str, ...], rollback: tuple[str, ...], outcome: str) -> None:
    assert action.send == send
    assert action.rollback == rollback
    state, _, flags = outcome.partition("+")
    state, _, at = state.partition("@")
    kind, _, reason = state.partition(": ")
    assert action.complete is (kind == "complete")
    assert action.aborted is (kind == "aborted")
    if reason:
        assert action.reason is not None and reason in action.reason
    assert action.finished is (flags == "finished")
    if at:
        assert action.next_check_at == pytest.approx(float(at))


@pytest.mark.parametrize(("plan_kwargs", "script"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario(plan_kwargs: dict[str, Any], script: list[Step]) -> None:
    rollout = Rollout(RolloutPlan(FIVE, **plan_kwargs))
    statuses: dict[str, DeviceJobStatus] = {}
    for now, changes, send, rollback, outcome in script:
        statuses.update(changes)
        action = rollout.next_action(statuses, now)
        check(action, send, rollback, outcome)
        rollout.mark_sent(action.send, now)
        rollout.mark_rolled_back(action.rollback, now)


def test_next_action_is_a_query_until_marked() -> None:
    """An action not carried out (the broker was away) is handed out again, whole."""
    rollout = Rollout(RolloutPlan(FIVE, waves=[2]))
    assert rollout.next_action({}, 0).send == ("d0", "d1")
    assert rollout.next_action({}, 1).send == ("d0", "d1")
    rollout.mark_sent(["d0"], 1)
    assert rollout.next_action({}, 2).send == ("d1",)


def test_wave_and_counts_are_reported() -> None:
    rollout = Rollout(RolloutPlan(FIVE, waves=[1, "50%"]))
    rollout.mark_sent(["d0"], 0)
    a = rollout.next_action({"d0": OK}, 1)
    assert (a.wave, a.waves, a.send) == (2, 3, ("d1", "d2"))
    rollout.mark_sent(a.send, 1)
    c = rollout.next_action({"d0": OK, "d1": FAIL}, 2).counts
    assert (c.total, c.started, c.succeeded, c.failed, c.in_progress, c.executed) == (5, 3, 1, 1, 1, 2)


# --------------------------------------------------------------------------- restart

RESTARTS: list[
    tuple[str, dict[str, Any], dict[str, DeviceJobStatus], dict[str, float], tuple[str, ...], str]
] = [
    (
        "devices with a status are not sent again",
        {"waves": [1, "50%"]},
        {"d0": OK, "d1": DOWNLOADING},
        {},
        ("d2",),
        "running",
    ),
    (
        "a passed wave is recomputed from the statuses",
        {"waves": [1, "50%"]},
        {"d0": OK, "d1": OK, "d2": OK},
        {},
        ("d3", "d4"),
        "running",
    ),
    (
        "devices sent but not heard of (from a journal) are not sent again",
        {},
        {"d0": OK},
        {"d1": 5.0, "d2": 5.0},
        ("d3", "d4"),
        "running",
    ),
    (
        "an abort is recomputed from the statuses",
        {"abort_failed_pct": 50, "min_executed": 2, "rollback_on_abort": True},
        {"d0": OK, "d1": FAIL, "d2": QUEUED},
        {},
        (),
        "aborted: 1 of 2",
    ),
    (
        "a complete rollout stays complete",
        {"waves": [1, "50%"]},
        dict.fromkeys(FIVE, OK),
        {},
        (),
        "complete+finished",
    ),
]


@pytest.mark.parametrize(
    ("plan_kwargs", "statuses", "sent", "send", "outcome"),
    [r[1:] for r in RESTARTS],
    ids=[r[0] for r in RESTARTS],
)
def test_restart_recomputes_from_statuses(
    plan_kwargs: dict[str, Any],
    statuses: dict[str, DeviceJobStatus],
    sent: dict[str, float],
    send: tuple[str, ...],
    outcome: str,
) -> None:
    # the devices come in another order: the waves are the same
    rollout = Rollout(RolloutPlan(list(reversed(FIVE)), **plan_kwargs), sent=sent)
    action = rollout.next_action(statuses, 100.0)
    rollback = ("d0",) if plan_kwargs.get("rollback_on_abort") else ()
    check(action, send, rollback, outcome)


def test_restart_with_rolled_back_devices_does_not_roll_back_twice() -> None:
    plan = RolloutPlan(FIVE, abort_failed_pct=50, min_executed=2, rollback_on_abort=True)
    rollout = Rollout(plan, sent=dict.fromkeys(FIVE, 0.0), rolled_back=["d0"])
    action = rollout.next_action({"d0": OK, "d1": FAIL, "d2": OK, "d3": FAIL, "d4": FAIL}, 10)
    assert action.aborted and action.rollback == ("d2",)


def test_rate_after_restart_paces_from_the_last_send() -> None:
    rollout = Rollout(RolloutPlan(FIVE, rate_per_min=6), sent={"d0": 100.0})
    a = rollout.next_action({}, 105)
    assert a.send == () and a.next_check_at == pytest.approx(110)
    assert rollout.next_action({}, 110).send == ("d1",)
