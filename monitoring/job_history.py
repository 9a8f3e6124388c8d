"""``JobHistory``: every update job event (``ota.update_events``), as rows of the ``jobs`` table.

It subscribes to the manager's ``UpdateEvents``: one row per QUEUED, IN_PROGRESS step,
SUCCEEDED, FAILED or REJECTED, with the reason, the origin and the model version.
"""

from __future__ import annotations

from typing import Any, Protocol

from monitoring.metrics_store import MetricsStore

COLUMNS: dict[str, Any] = {
    "id": int,
    "ts": float,
    "job_id": str,
    "status": str,
    "step": str,
    "detail": str,
    "reason": str,
    "origin": str,
    "phase": str,
    "model": str,
    "version": int,
}
FIELDS = [c for c in COLUMNS if c != "id"]


class JobEventLike(Protocol):
    """What a row is made of (``ota.update_events.JobEvent``; monitoring does not import ota)."""

    def to_json(self) -> dict[str, Any]: ...


class JobHistory:
    def __init__(self, store: MetricsStore) -> None:
        self.store = store
        store.ensure_table("jobs", COLUMNS)
        with store._locked("upgrading the jobs table"):
            table = store.db.table("jobs")
            have = table.columns_dict
            for name, kind in COLUMNS.items():
                if name not in have:  # a metrics.db written by an older agent
                    table.add_column(name, kind)

    def __call__(self, event: JobEventLike) -> None:
        """The ``UpdateEvents`` subscription: one row per event."""
        data = event.to_json()
        row = tuple(data.get(f) for f in FIELDS)
        with self.store._locked("writing the job history") as conn, conn:
            conn.execute(
                f"INSERT INTO jobs ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})", row
            )

    def recent(self, job_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` rows (of ``job_id``, if given), oldest first."""
        where, args = ("WHERE job_id = ?", [job_id]) if job_id else ("", [])
        with self.store._locked("reading the job history") as conn:
            cur = conn.execute(
                f"SELECT {', '.join(FIELDS)} FROM jobs {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            )
            rows = [dict(zip(FIELDS, r, strict=True)) for r in cur.fetchall()]
        return rows[::-1]
