"""Housekeeping: metrics.db's roll-ups and retention at start and every interval; a failure is
logged and counted and the next tick tries again."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from agent.housekeeping import Housekeeping
from inference.errors import TransientError
from monitoring.metrics_store import MetricsStore


class Store:
    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: list[float] = []
        self.ticked = threading.Event()

    def housekeeping(self, now: float) -> dict[str, Any]:
        self.calls.append(now)
        if len(self.calls) >= 2:
            self.ticked.set()
        if len(self.calls) <= self.fail:
            raise TransientError("metrics.db: database or disk is full")
        return {}


def test_a_failed_tick_is_counted_and_the_next_one_runs() -> None:
    store = Store(fail=1)
    hk = Housekeeping(store, interval=0.01, clock=lambda: 123.0)  # type: ignore[arg-type]
    hk.start()
    try:
        assert store.ticked.wait(10), "the second tick did not run"
    finally:
        hk.stop()
    assert hk.failures == 1 and store.calls[:2] == [123.0, 123.0]


def test_it_runs_the_real_stores_housekeeping_at_start(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics.db", max_age_days=1)
    store.add_event("old", {}, ts=1000.0)
    store.add_event("new", {}, ts=1_000_000.0)
    hk = Housekeeping(store, interval=3600, clock=lambda: 1_000_000.0)
    hk.tick()
    assert [e["kind"] for e in store.events()] == ["new"] and hk.failures == 0
