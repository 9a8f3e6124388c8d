"""``[sampling]``, ``[spool]``, ``[upload]`` and ``--upload`` as users write them (issue 10's TOML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, apply_overrides, load_config, parse_config
from inference.errors import ConfigError

ISSUE_TOML = """
[sampling]
dedup_bits = 6                  # frames closer than this Hamming distance are the same
dedup_window = "10m"

[[sampling.strategies]]
name = "unsure"
kind = "uncertain"              # uncertain | random | classes | count | drift
measure = "confidence"          # confidence | margin | entropy
low = 0.3
high = 0.6
per_minute = 10
per_hour = 100
per_day = 1000

[[sampling.strategies]]
name = "audit"
kind = "random"
share = 0.001

[spool]
max_bytes = "500MB"
max_items = 20000

[upload]
url = "s3://bucket/prefix"      # or https://host/path/{device}/{sha256}.jpg with method = "PUT" | "POST"
endpoint = "https://s3.example"  # S3-compatible stores; omitted for AWS
region = "eu-west-1"
credentials_file = "/etc/edge-agent/s3-credentials.json"   # AWS credential_process JSON
token_file = "/etc/edge-agent/upload-token"              # https targets: sent as a bearer token
schedule = "always"             # or a daily window "01:00-05:00"
"""


def test_the_issue_config_works_as_written(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(ISSUE_TOML)
    cfg = load_config(path)
    assert [s.name for s in cfg.sampling.strategies] == ["unsure", "audit"]
    assert cfg.sampling.dedup_bits == 6 and cfg.sampling.dedup_window_s == 600
    assert (cfg.spool.max_bytes, cfg.spool.max_items) == (500_000_000, 20_000)
    u = cfg.upload
    assert (u.url, u.endpoint, u.region, u.schedule) == (
        "s3://bucket/prefix",
        "https://s3.example",
        "eu-west-1",
        "always",
    )
    assert u.credentials_file == Path("/etc/edge-agent/s3-credentials.json")
    assert cfg.collecting
    assert parse_config(cfg.to_dict(), "round trip") == cfg


def test_sampling_is_off_by_default_and_on_with_strategies_or_an_upload() -> None:
    assert not Config().collecting
    assert parse_config(
        {"sampling": {"strategies": [{"name": "a", "kind": "random", "share": 0.1}]}}, "x"
    ).collecting
    assert apply_overrides(Config(), {"upload": "https://h/f/{sha256}.jpg"}).collecting
    off = parse_config({"sampling": {"enabled": False}, "upload": {"url": "https://h/{sha256}.jpg"}}, "x")
    assert not off.collecting
    assert parse_config({"sampling": {"enabled": True}}, "x").collecting


def test_relative_credential_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[upload]\nurl = "s3://b/p"\ncredentials_file = "creds.json"\n')
    assert load_config(path).upload.credentials_file == tmp_path / "creds.json"


def test_upload_flag_is_checked_with_the_file_s_table() -> None:
    base = parse_config({"upload": {"credentials_file": "/c.json", "region": "eu-west-1"}}, "agent.toml")
    cfg = apply_overrides(base, {"upload": "s3://frames/dev"})
    assert cfg.upload.url == "s3://frames/dev" and cfg.upload.credentials_file == Path("/c.json")
    with pytest.raises(ConfigError, match=r"--upload.*credentials_file must be set"):
        apply_overrides(Config(), {"upload": "s3://frames/dev"})
    with pytest.raises(ConfigError, match=r"--upload: 'ftp://x'"):
        apply_overrides(Config(), {"upload": "ftp://x"})


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"spool": {"max_bytes": "lots"}}, "max_bytes"),
        ({"spool": {"max_items": 0}}, "max_items"),
        ({"spool": {"max_files": 3}}, "'max_files'"),
        ({"upload": {"url": "https://h/frames.jpg"}}, "{sha256}"),
        ({"upload": {"url": "https://h/{sha}.jpg"}}, "unknown placeholder"),
        ({"upload": {"url": "https://h/{sha256}.jpg", "method": "PATCH"}}, "method"),
        ({"upload": {"url": "https://h/{sha256}.jpg", "schedule": "nightly"}}, "schedule"),
        ({"upload": {"url": "https://h/{sha256}.jpg", "endpoint": "https://s3"}}, "endpoint"),
        ({"upload": {"url": "s3://b/p", "credentials_file": "/c", "endpoint": "s3.example"}}, "endpoint"),
        ({"upload": {"concurrency": 64}}, "concurrency"),
        ({"upload": {"retry_min_s": 10, "retry_max_s": 1}}, "retry_min_s"),
        ({"sampling": {"strategies": [{"name": "a", "kind": "counted"}]}}, "#1 kind"),
    ],
)
def test_bad_values_name_their_key(table: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(table, "agent.toml")
    assert named in str(info.value) and "agent.toml" in str(info.value)


def test_a_schedule_window_is_accepted() -> None:
    cfg = parse_config({"upload": {"url": "https://h/{sha256}.jpg", "schedule": "01:00-05:00"}}, "x")
    assert cfg.upload.schedule == "01:00-05:00"
