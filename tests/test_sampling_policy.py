"""``[sampling]`` as users write it: the issue's own example parses; every bad value names its key."""

from __future__ import annotations

import sys

import pytest

from inference.errors import ConfigError
from monitoring.sampling_policy import (
    DEFAULT_STRATEGIES,
    SamplingPolicy,
    parse_policy,
    parse_seconds,
    parse_size,
)
from tests.test_config_collection import ISSUE_TOML

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE = ISSUE_TOML  # the issue's config as written; only its [sampling] table is read here


def test_the_documented_example_parses() -> None:
    policy = parse_policy(tomllib.loads(EXAMPLE)["sampling"], "agent.toml: [sampling]")
    assert policy.dedup_bits == 6 and policy.dedup_window_s == 600.0
    assert [s.name for s in policy.strategies] == ["unsure", "audit"]
    unsure = policy.strategies[0]
    assert (unsure.kind, unsure.measure, unsure.low, unsure.high) == ("uncertain", "confidence", 0.3, 0.6)
    assert (unsure.per_minute, unsure.per_hour, unsure.per_day) == (10, 100, 1000)
    assert policy.explicit_strategies


def test_round_trip_through_to_dict() -> None:
    policy = parse_policy(tomllib.loads(EXAMPLE)["sampling"], "x")
    again = parse_policy(policy.to_dict(), "y")
    assert again == policy


def test_defaults() -> None:
    policy = parse_policy({}, "x")
    assert policy == SamplingPolicy()
    assert policy.strategies == DEFAULT_STRATEGIES and not policy.explicit_strategies
    assert policy.enabled is None and policy.daily_bytes is None


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"dedup_bit": 6}, "'dedup_bit'"),
        ({"dedup_bits": 65}, "dedup_bits"),
        ({"dedup_bits": True}, "dedup_bits"),
        ({"dedup_window": "soon"}, "dedup_window"),
        ({"dedup_window": "3d"}, "dedup_window"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"max_side": 16}, "max_side"),
        ({"queue": 0}, "queue"),
        ({"daily_bytes": "lots"}, "daily_bytes"),
        ({"enabled": "yes"}, "enabled"),
        ({"strategies": []}, "is empty"),
        ({"strategies": [{"name": "a", "kind": "random", "share": 2}]}, "#1 share"),
        ({"strategies": [{"name": "a", "kind": "uncertain", "low": 0.3}]}, "#1 high"),
    ],
)
def test_bad_values_name_their_key(table: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(table, "agent.toml: [sampling]")
    assert named in str(info.value) and "agent.toml" in str(info.value)


def test_sizes_and_times() -> None:
    assert parse_size("500MB", "k") == 500_000_000
    assert parse_size("2GiB", "k") == 2 * 2**30
    assert parse_size("1.5 kb", "k") == 1500
    assert parse_size(4096, "k") == 4096
    for bad in ("0", 0, -1, "5 parsecs", True, 1.5):
        with pytest.raises(ConfigError, match="k"):
            parse_size(bad, "k")
    assert parse_seconds("10m", "w") == 600.0 and parse_seconds(30, "w") == 30.0
    assert parse_seconds("1d", "w") == 86400.0
    for bad in ("0s", "-1", "tomorrow", False):
        with pytest.raises(ConfigError, match="w"):
            parse_seconds(bad, "w")
