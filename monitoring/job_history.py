"""``JobHistory``: every update transition, as rows of the ``jobs`` table in ``metrics.db``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from monitoring.metrics_store import MetricsStore

COLUMNS: dict[str, Any] = {
    "id": int,
    "ts": float,
    "job_id": str,
    "source": str,
    "event": str,
    "target": str,
    "reason": str,
    "model": str,
    "version": int,
}


class JobHistory:
    def __init__(self, store: MetricsStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.ensure_table("jobs", COLUMNS)

    def record(
        self,
        *,
        job_id: str,
        source: str,
        event: str,
        target: str,
        reason: str | None = None,
        model: str | None = None,
        version: int | None = None,
    ) -> None:
        with self.store._locked("writing the job history") as conn, conn:
            conn.execute(
                "INSERT INTO jobs (ts, job_id, source, event, target, reason, model, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.clock(), job_id, source, event, target, reason, model, version),
            )

    def recent(self, job_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` rows (of ``job_id``, if given), oldest first."""
        where, args = ("WHERE job_id = ?", [job_id]) if job_id else ("", [])
        cols = [c for c in COLUMNS if c != "id"]
        with self.store._locked("reading the job history") as conn:
            cur = conn.execute(
                f"SELECT {', '.join(cols)} FROM jobs {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            )
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return rows[::-1]
