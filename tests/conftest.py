"""Shared test configuration. Area fixtures live in tests/fixtures/<area>.py."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.fixtures.agent",
    "tests.fixtures.ota",
    "tests.fixtures.models",
    "tests.fixtures.hot_swap",
    "tests.fixtures.bundle_server",
    "tests.fixtures.mosquitto",
    "tests.fixtures.fleet",
    "tests.fixtures.upload",
]
