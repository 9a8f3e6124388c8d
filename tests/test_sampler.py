"""Sampler: selection table, quotas in fixed UTC windows on a fake clock, the byte budget, strict parsing."""

from __future__ import annotations

import math
import timeit
from typing import Any

import numpy as np
import pytest

from inference.errors import ConfigError
from inference.result import ClassScore, Detection, Result
from monitoring.frame_stats import FrameStats
from monitoring.sampler import Sampler, Strategy, parse_strategies, result_measure

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC: a whole hour, so minute/hour windows start here

# The tables of the "Config as users will write it", plus one of every other kind.
USER_TABLES: list[dict[str, Any]] = [
    {
        "name": "unsure", "kind": "uncertain", "measure": "confidence", "low": 0.3, "high": 0.6,
        "per_minute": 10, "per_hour": 100, "per_day": 1000,
    },
    {"name": "audit", "kind": "random", "share": 0.001},
]  # fmt: skip


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def det(*labels: str, score: float = 0.9) -> Result:
    dets = [Detection(label=x, score=score, box=(0.0, 0.0, 1.0, 1.0)) for x in labels]
    return Result(kind="detections", confidence=score if dets else 0.0, detections=dets)


def cls(*scores: tuple[str, float]) -> Result:
    classes = [ClassScore(label=x, score=s) for x, s in scores]
    return Result(kind="classes", confidence=max((s for _, s in scores), default=0.0), classes=classes)


def sampler(tables: list[dict[str, Any]], clock: FakeClock | None = None, **kw: Any) -> Sampler:
    return Sampler(
        parse_strategies(tables, "test.toml"), rng=np.random.default_rng(0), clock=clock or FakeClock(), **kw
    )


def test_user_config_parses() -> None:
    unsure, audit = parse_strategies(USER_TABLES, "agent.toml")
    assert unsure == Strategy(
        name="unsure", kind="uncertain", measure="confidence", low=0.3, high=0.6,
        per_minute=10, per_hour=100, per_day=1000,
    )  # fmt: skip
    assert audit == Strategy(name="audit", kind="random", share=0.001)
    assert unsure.limits() == ((60, 10), (3600, 100), (86400, 1000)) and audit.limits() == ()


TABLE = [
    {"name": "unsure", "kind": "uncertain", "low": 0.3, "high": 0.6},
    {"name": "close", "kind": "uncertain", "measure": "margin", "low": 0.0, "high": 0.1},
    {"name": "flat", "kind": "uncertain", "measure": "entropy", "low": 1.0, "high": 10.0},
    {"name": "people", "kind": "classes", "labels": ["person", "cat"]},
    {"name": "crowd", "kind": "count", "min_count": 1, "max_count": 3},
    {"name": "drifted", "kind": "drift"},
]

# (result, sample_values, drifted, the strategy expected to take the frame)
CASES: list[tuple[str, Result, dict[str, float] | None, bool, str | None]] = [
    ("confidence in the band", det("dog", score=0.45), None, False, "unsure"),
    ("band edges are inclusive", det("dog", score=0.6), None, False, "unsure"),
    ("confidence above the band", det("dog", score=0.9), None, False, None),
    ("no box: confidence 0, too few", det(), None, False, "crowd"),
    ("sample_values win over the result", det("dog", score=0.9), {"confidence": 0.5}, False, "unsure"),
    ("margin from the classes", cls(("a", 0.75), ("b", 0.7)), None, False, "close"),
    ("margin from sample_values", cls(("a", 0.9), ("b", 0.1)), {"margin": 0.05}, False, "close"),
    (
        "entropy from the classes",
        cls(("a", 0.25), ("b", 0.25), ("c", 0.25), ("d", 0.25)),
        {"margin": 0.5},
        False,
        "flat",
    ),
    ("a sure classifier", cls(("a", 0.9), ("b", 0.1)), None, False, None),
    ("a detection's label", det("dog", "cat"), None, False, "people"),
    ("a classifier's top-1 label", cls(("person", 0.9), ("a", 0.1)), None, False, "people"),
    ("not the top-1 label", cls(("a", 0.9), ("person", 0.1)), None, False, None),
    ("too many boxes", det("a", "a", "a", "a"), None, False, "crowd"),
    ("a count inside [min, max]", det("a", "a"), None, False, None),
    ("counts are for detectors only", Result(kind="outputs", confidence=0.9), None, False, None),
    ("a drifted window", det("a", "a"), None, True, "drifted"),
    ("a non-finite measure never matches", det("a", score=0.9), {"confidence": math.nan}, False, None),
    ("the first that matches wins", det("person", score=0.5), None, True, "unsure"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_selection_table(case: tuple[str, Result, dict[str, float] | None, bool, str | None]) -> None:
    _, result, values, drifted, expected = case
    assert sampler(TABLE).select(result, values, drifted=drifted) == expected


def test_result_measure() -> None:
    r = cls(("a", 0.5), ("b", 0.5))
    assert result_measure(r, "confidence") == 0.5
    assert result_measure(r, "margin") == 0.0
    assert result_measure(r, "entropy") == pytest.approx(math.log(2))
    assert result_measure(det("a"), "margin") is None  # a detector has no margin
    assert result_measure(det("a"), "margin", {"margin": 0.2}) == 0.2
    assert result_measure(cls(("a", 0.7)), "margin") == 0.7  # one class: its score, as FrameStats
    many = cls(*((str(i), s) for i, s in enumerate(np.random.default_rng(1).dirichlet(np.ones(50)))))
    stats = FrameStats.result(many)[0]
    assert result_measure(many, "margin") == pytest.approx(stats["margin"])
    assert result_measure(many, "entropy") == pytest.approx(stats["entropy"])


def test_random_share_uses_the_generator() -> None:
    tables = [{"name": "audit", "kind": "random", "share": 0.25}]
    s = sampler(tables)
    picks = [s.select(det()) for _ in range(4000)]
    assert 850 <= picks.count("audit") <= 1150
    again = sampler(tables)
    assert [again.select(det()) for _ in range(4000)] == picks  # the same seed, the same frames
    assert sampler([{"name": "all", "kind": "random", "share": 1.0}]).select(det()) == "all"


def test_quota_per_minute_fixed_window_then_next_strategy() -> None:
    clock = FakeClock(T0 + 30)
    s = sampler(
        [{"name": "d", "kind": "drift", "per_minute": 3}, {"name": "fallback", "kind": "drift"}], clock
    )
    assert [s.select(det(), drifted=True) for _ in range(5)] == ["d", "d", "d", "fallback", "fallback"]
    assert s.taken == {"d": 3, "fallback": 2} and s.over_quota["d"] == 2
    clock.t = T0 + 59.999
    assert s.select(det(), drifted=True) == "fallback"  # still the same calendar minute
    clock.t = T0 + 60  # the minute rolls over: a fixed window, not a sliding one
    assert s.select(det(), drifted=True) == "d"


def test_quotas_hour_and_day() -> None:
    clock = FakeClock()
    s = sampler([{"name": "d", "kind": "drift", "per_minute": 2, "per_hour": 3, "per_day": 4}], clock)
    got = []
    for minute in range(4):
        clock.t = T0 + 60 * minute
        got.append([s.select(det(), drifted=True) for _ in range(3)])
    assert got == [["d", "d", None], ["d", None, None], [None] * 3, [None] * 3]  # the hour's 3 are spent
    clock.t = T0 + 3600
    assert [s.select(det(), drifted=True) for _ in range(2)] == ["d", None]  # the day's 4 are spent
    clock.t = T0 - (T0 % 86400) + 86400  # midnight UTC
    assert s.select(det(), drifted=True) == "d"


def test_zero_quota_disables_and_release_gives_back() -> None:
    s = sampler(
        [{"name": "off", "kind": "drift", "per_day": 0}, {"name": "d", "kind": "drift", "per_hour": 1}]
    )
    assert s.select(det(), drifted=True) == "d"
    assert s.select(det(), drifted=True) is None
    s.release("d")  # the frame was a duplicate: its slot comes back
    assert s.select(det(), drifted=True) == "d"
    s.release("nobody")


def test_clock_step_back_restarts_windows() -> None:
    clock = FakeClock(T0 + 120)
    s = sampler([{"name": "d", "kind": "drift", "per_minute": 1}], clock)
    assert s.select(det(), drifted=True) == "d" and s.select(det(), drifted=True) is None
    clock.t = T0
    assert s.select(det(), drifted=True) == "d"


def test_daily_byte_budget() -> None:
    clock = FakeClock(T0)
    s = sampler([{"name": "d", "kind": "drift"}], clock, daily_bytes=1000)
    assert s.select(det(), drifted=True) == "d"
    s.charge(600)
    assert s.select(det(), drifted=True) == "d"
    s.charge(600)
    assert s.bytes_today == 1200
    assert s.select(det(), drifted=True) is None and s.over_budget == 1
    clock.t = T0 + 15 * 3600  # 23:00 UTC, the same day
    assert s.select(det(), drifted=True) is None
    clock.t = T0 + 16 * 3600  # 00:00 UTC: a new day
    assert s.select(det(), drifted=True) == "d" and s.bytes_today == 0
    assert sampler([{"name": "d", "kind": "drift"}], clock).select(det(), drifted=True) == "d"  # no budget
    with pytest.raises(ValueError):
        sampler([], clock, daily_bytes=-1)


PARSE_ERRORS: list[tuple[str, list[Any], str]] = [
    ("unknown key", [{"name": "a", "kind": "drift", "colour": 1}], "#1 colour"),
    ("key of another kind", [{"name": "a", "kind": "random", "share": 0.1, "labels": ["x"]}], "#1 labels"),
    ("unknown kind", [{"name": "a", "kind": "sometimes"}], "#1 kind"),
    ("missing kind", [{"name": "a"}], "#1 kind"),
    ("missing name", [{"kind": "drift"}], "#1 name"),
    ("name not a string", [{"name": 3, "kind": "drift"}], "#1 name"),
    ("low above high", [{"name": "a", "kind": "uncertain", "low": 0.7, "high": 0.6}], "#1 low"),
    ("low missing", [{"name": "a", "kind": "uncertain", "high": 0.6}], "#1 low"),
    ("low a string", [{"name": "a", "kind": "uncertain", "low": "0.3", "high": 0.6}], "#1 low"),
    ("high a bool", [{"name": "a", "kind": "uncertain", "low": 0.3, "high": True}], "#1 high"),
    ("high not finite", [{"name": "a", "kind": "uncertain", "low": 0.3, "high": math.inf}], "#1 high"),
    (
        "unknown measure",
        [{"name": "a", "kind": "uncertain", "measure": "vibes", "low": 0, "high": 1}],
        "#1 measure",
    ),
    ("share 0", [{"name": "a", "kind": "random", "share": 0}], "#1 share"),
    ("share above 1", [{"name": "a", "kind": "random", "share": 1.5}], "#1 share"),
    ("share missing", [{"name": "a", "kind": "random"}], "#1 share"),
    ("labels empty", [{"name": "a", "kind": "classes", "labels": []}], "#1 labels"),
    ("labels a string", [{"name": "a", "kind": "classes", "labels": "person"}], "#1 labels"),
    ("count without bounds", [{"name": "a", "kind": "count"}], "#1 min_count"),
    ("min above max", [{"name": "a", "kind": "count", "min_count": 5, "max_count": 2}], "#1 min_count"),
    ("count a float", [{"name": "a", "kind": "count", "max_count": 2.5}], "#1 max_count"),
    ("quota negative", [{"name": "a", "kind": "drift", "per_hour": -1}], "#1 per_hour"),
    ("quota a float", [{"name": "a", "kind": "drift", "per_minute": 1.5}], "#1 per_minute"),
    ("quota a bool", [{"name": "a", "kind": "drift", "per_day": True}], "#1 per_day"),
    ("duplicate name", [{"name": "a", "kind": "drift"}, {"name": "a", "kind": "drift"}], "#2 name"),
    ("not a table", [{"name": "a", "kind": "drift"}, "drift"], "#2 "),
]


@pytest.mark.parametrize("tables,key", [c[1:] for c in PARSE_ERRORS], ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors_name_the_key(tables: list[Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^agent\.toml: \[\[sampling\.strategies\]\] {key}"):
        parse_strategies(tables, "agent.toml")


def test_parse_not_a_list() -> None:
    with pytest.raises(ConfigError, match=r"sampling\.strategies"):
        parse_strategies({"name": "a"}, "agent.toml")  # type: ignore[arg-type]
    assert parse_strategies([], "agent.toml") == []


def test_select_cost_per_frame() -> None:
    """Not a benchmark: a bound far above the measured figure (about 1-3 µs), printed with -s."""
    s = Sampler(parse_strategies(USER_TABLES, "agent.toml"), rng=np.random.default_rng(0), clock=FakeClock())
    r = det("dog", "cat", score=0.9)
    n = 20000
    per_frame = min(timeit.repeat(lambda: s.select(r), number=n, repeat=3)) / n
    print(f"Sampler.select: {per_frame * 1e6:.2f} µs per frame (2 strategies, no match)")
    assert per_frame < 200e-6
