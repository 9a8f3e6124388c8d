"""monitoring.metrics_store: sqlite3 errors translated by what they are, and a batch is
reported failed only when its rows were not written. Real faults: a second connection
holding the write lock, a trigger that refuses deletes, a dropped table, a file that is
not a database."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import monitoring.metrics_store as metrics_store
from inference.errors import FatalError, TransientError
from monitoring.metrics_store import MetricsReader, MetricsStore


def rows(first: int, n: int) -> list[tuple[object, ...]]:
    return [(i, 1000.0 + i, "m", 1, 2.5, 0.5, None, "c0") for i in range(first, first + n)]


@contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection holding the database's write lock (as a sqlite3 shell in a
    transaction, or a second agent on the same state folder, would)."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore(tmp_path / "metrics.db", busy_timeout=0.05)
    yield s
    s.close()


def test_a_locked_database_is_transient_and_promises_nothing(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    with write_locked(store.path), pytest.raises(TransientError) as err:
        store.add_results(rows(0, 3))
    text = str(err.value)
    assert "database is locked" in text and "writing 3 result rows" in text
    assert "retried" not in text  # nothing in the store retries: a caller that does says so
    assert store.count("results") == 0
    store.add_results(rows(0, 3))  # the lock is gone: the same rows go in once
    assert [r["frame"] for r in store.results()] == [0, 1, 2]


def test_an_event_while_locked_is_not_said_to_be_retried(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    with write_locked(store.path), pytest.raises(TransientError) as err:
        store.add_event("start", {"model": "m"})
    assert "locked" in str(err.value) and "retried" not in str(err.value)


def test_a_failing_prune_does_not_fail_a_batch_that_was_written(
    store: MetricsStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics_store, "_PRUNE_EVERY", 4)
    store.max_result_rows = 2
    store.db.conn.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON results BEGIN SELECT RAISE(ABORT, 'pruning refused'); END"
    )
    store.add_results(rows(0, 5))  # written; the prune after it fails: not an error of the batch
    assert store.count("results") == 5
    assert "pruning refused" in caplog.text and "were written" in caplog.text
    store.db.conn.execute("DROP TRIGGER no_delete")
    store.add_results(rows(5, 1))  # the prune is tried again after the next batch
    assert [r["frame"] for r in store.results()] == [4, 5]


def test_a_missing_table_is_fatal_not_transient(store: MetricsStore) -> None:
    store.db.conn.execute("DROP TABLE results")
    with pytest.raises(FatalError, match="no such table"):
        store.add_results(rows(0, 1))


def test_a_file_that_is_not_a_database_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    with pytest.raises(FatalError, match="move it aside"):
        MetricsStore(path)


@pytest.mark.parametrize(
    (
        "code",
        "kind",
    ),  # SQLite result codes: BUSY, LOCKED, FULL, IOERR_WRITE, CORRUPT, NOTADB, ERROR, READONLY
    [
        (5, TransientError),
        (6, TransientError),
        (13, TransientError),
        (778, TransientError),  # SQLITE_IOERR_WRITE: an extended code, its primary is IOERR
        (11, FatalError),
        (26, FatalError),
        (1, FatalError),  # "no such table", SQL errors: retrying cannot help
        (8, FatalError),
    ],
)
def test_translate_goes_by_the_error_code(code: int, kind: type[Exception]) -> None:
    err = sqlite3.OperationalError("some text")
    err.sqlite_errorcode = code  # type: ignore[attr-defined]
    out = metrics_store.translate(err, "m.db", "writing results")
    assert type(out) is kind and "retried" not in str(out)
    if code == metrics_store.SQLITE_FULL:
        assert "free some disk space" in str(out)


# -- drift monitoring tables ------------------------------------------------------------------
# Times are built on D, a UTC midnight, so the hours and days of the roll-ups are known.

D = 1_699_920_000.0  # 2023-11-14 00:00:00 UTC
H = 3_600.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def window(
    end: float,
    *,
    model: str = "m",
    version: int = 1,
    fps: float = 30.0,
    p50: float = 10.0,
    p95: float = 20.0,
    conf: float | None = 0.8,
    drifted: bool = False,
    frames: int = 1800,
    length: float = 60.0,
    reference: str = "bundle",
    summary: object = None,
) -> dict[str, object]:
    return {
        "model": model,
        "version": version,
        "reference": reference,
        "start_ts": end - length,
        "end_ts": end,
        "samples": 60,
        "frames": frames,
        "fps": fps,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "confidence": conf,
        "drifted": drifted,
        "summary": {"index": int(end)} if summary is None else summary,
    }


def score(metric: str, value: float, threshold: float = 1.0, name: str = "psi") -> dict[str, object]:
    return {
        "metric": metric,
        "score": name,
        "value": value,
        "threshold": threshold,
        "drifted": value > threshold,
    }


def table_names(store: MetricsStore) -> set[str]:
    return {r[0] for r in store.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def dump(store: MetricsStore, table: str) -> list[tuple[object, ...]]:
    return sorted(store.db.conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_a_new_database_has_the_drift_tables_indexes_wal_and_incremental_vacuum(store: MetricsStore) -> None:
    assert {
        "windows",
        "drift",
        "alerts",
        "model_versions",
        "monitor_state",
        "rollups_windows",
        "rollups_drift",
        "rollup_marks",
        "results",
        "events",
    } <= table_names(store)
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    indexes = {
        (table, tuple(c.name for c in store.db.table(table).xindexes[i].columns if c.name))
        for table in ("windows", "drift", "alerts", "model_versions")
        for i in range(len(store.db.table(table).xindexes))
    }
    assert {("windows", ("end_ts",)), ("drift", ("ts",)), ("drift", ("metric", "ts"))} <= indexes
    assert {("alerts", ("ts",)), ("model_versions", ("model", "version"))} <= indexes
    plan = " ".join(
        str(r[-1])
        for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM drift WHERE metric = 'x' AND ts >= 0")
    )
    assert "USING INDEX" in plan


def test_an_older_database_gains_the_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    old = sqlite3.connect(str(path))
    old.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts FLOAT, kind TEXT, level TEXT, detail TEXT)")
    old.execute("INSERT INTO events (ts, kind, level, detail) VALUES (1.0, 'start', 'info', '{}')")
    old.commit()
    old.close()
    s = MetricsStore(path)
    try:
        assert "windows" in table_names(s) and [e["kind"] for e in s.events()] == ["start"]
        assert s.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # left as it was
        s.add_window(window(D + 60), [score("brightness", 0.5)])
        assert s.housekeeping(D + 2 * H)["rollup_rows"] == 2
    finally:
        s.close()


def test_a_window_and_its_scores_round_trip(store: MetricsStore) -> None:
    wid = store.add_window(
        window(D + 60, summary={"means": {"brightness": 101.5}, "class_counts": {"cat": 3}}),
        [score("brightness", 0.4), score("classes", 0.3, 0.2, "linf"), {**score("x", 1), "ts": D + 30}],
    )
    store.add_window(window(D + 120, version=2, drifted=True), [score("brightness", 2.0)])
    [w1, w2] = store.windows(D)
    assert w1["id"] == wid and w1["summary"] == {"means": {"brightness": 101.5}, "class_counts": {"cat": 3}}
    assert (w1["drifted"], w2["drifted"], w2["version"], w1["confidence"]) == (0, 1, 2, 0.8)
    assert [w["end_ts"] for w in store.windows(D + 61)] == [D + 120]
    assert [w["end_ts"] for w in store.windows(D, D + 120)] == [D + 60]
    assert "summary" not in store.windows(D, summary=False)[0]
    rows = store.drift(D)
    assert [(r["metric"], r["ts"], r["window_id"], r["version"]) for r in rows] == [
        ("x", D + 30, wid, 1),  # a score's own ts is kept
        ("brightness", D + 60, wid, 1),  # else: the window's end, model and version
        ("classes", D + 60, wid, 1),
        ("brightness", D + 120, wid + 1, 2),
    ]
    assert rows[2] == {
        "id": rows[2]["id"],
        "window_id": wid,
        "ts": D + 60,
        "model": "m",
        "version": 1,
        "metric": "classes",
        "score": "linf",
        "value": 0.3,
        "threshold": 0.2,
        "drifted": 1,
    }
    assert [r["value"] for r in store.drift(D, metric="brightness")] == [0.4, 2.0]
    series = store.drift_series(D)
    assert series[("brightness", "psi")] == ([D + 60, D + 120], [0.4, 2.0], [1.0, 1.0])
    assert series[("classes", "linf")] == ([D + 60], [0.3], [0.2])
    assert [(r["window_id"], r["metric"]) for r in store.latest_drift(D)] == [(wid + 1, "brightness")]
    assert [r["metric"] for r in store.latest_drift(D, until=D + 120)] == ["brightness", "classes", "x"]
    assert store.time_range("windows") == (D + 60, D + 120)


def test_a_window_is_written_whole_or_not_at_all(store: MetricsStore) -> None:
    store.db.conn.execute(
        "CREATE TRIGGER no_psi BEFORE INSERT ON drift WHEN NEW.metric = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'drift row refused'); END"
    )
    with pytest.raises(FatalError, match="drift row refused"):
        store.add_window(window(D + 60), [score("brightness", 0.1), score("bad", 0.1)])
    assert store.count("windows") == 0 and store.count("drift") == 0
    with pytest.raises(ValueError, match="unknown columns"):
        store.add_window({**window(D + 60), "fsp": 3.0}, [])
    with pytest.raises(ValueError, match="unknown columns"):
        store.add_window(window(D + 60), [{**score("brightness", 0.1), "vlaue": 1}])


def test_a_locked_database_writes_no_window_and_says_transient(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    with write_locked(store.path), pytest.raises(TransientError, match="writing a window"):
        store.add_window(window(D + 60), [score("brightness", 0.1)])
    assert store.count("windows") == 0 and store.count("drift") == 0
    with write_locked(store.path), pytest.raises(TransientError, match="locked"):
        store.housekeeping(D + 5 * H)


def test_alerts_model_versions_and_state_round_trip(store: MetricsStore) -> None:
    alert_json = {  # Alert.to_json() as it is: no detail, extra keys
        "kind": "drift",
        "metric": "brightness",
        "score": "psi",
        "value": 0.9,
        "threshold": 0.3,
        "state": "raised",
        "windows": [4, 5, 6],
        "start_ts": D,
        "end_ts": D + 180,
        "model": "m",
        "version": 2,
        "reference": "learned",
        "frames": ["f1"],
    }
    store.add_alert(alert_json)
    store.add_alert(
        {
            "ts": D + 600,
            "kind": "drift",
            "metric": "brightness",
            "state": "cleared",
            "model": "m",
            "version": 2,
            "score": "psi",
            "value": 0.1,
            "threshold": 0.3,
            "detail": {"windows": [9]},
        }
    )
    with pytest.raises(ValueError, match="unknown columns"):
        store.add_alert({"ts": 1.0, "kind": "drift", "detail": {}, "windows": [1]})
    [raised, cleared] = store.alerts(D)
    assert raised["ts"] == D + 180 and raised["detail"] == alert_json and raised["version"] == 2
    assert (cleared["state"], cleared["detail"]) == ("cleared", {"windows": [9]})
    assert [a["state"] for a in store.alerts(D + 181)] == ["cleared"]

    store.add_model_version("m", 1, "a" * 64, "bundle", ts=D)
    store.add_model_version(model="m", version=2, sha256="b" * 64, reference="learning", ts=D + 100)
    assert [(v["version"], v["reference"]) for v in store.model_versions(D)] == [
        (1, "bundle"),
        (2, "learning"),
    ]
    assert [v["version"] for v in store.model_versions(D + 1)] == [2]

    assert store.load_state("detector:m:1") is None
    store.save_state("detector:m:1", {"run": 2, "active": ["brightness"]})
    store.save_state("detector:m:1", {"run": 3, "active": []})
    assert store.load_state("detector:m:1") == {"run": 3, "active": []}
    assert store.count("monitor_state") == 1


def rollup_data(store: MetricsStore) -> None:
    """Hour 0: three v1 windows; hour 1: one v2 window; hour 2: one v1 window; hour 24 (the
    next day): one v1 window; hour 25: one v1 window (the hour still running at D + 25.5 h)."""
    for end, kw, v in (
        (D + 600, {"fps": 30.0, "p95": 20.0, "conf": 0.8, "frames": 100}, 0.5),
        (D + 1200, {"fps": 20.0, "p95": 40.0, "conf": None, "frames": 200, "drifted": True}, 1.5),
        (D + 1800, {"fps": 25.0, "p95": 30.0, "conf": 0.6, "frames": 300}, 1.0),
        (
            D + H + 60,
            {"version": 2, "fps": 40.0, "p95": 10.0, "conf": 0.9, "frames": 1000, "drifted": True},
            2.0,
        ),
        (D + 2 * H + 60, {"fps": 45.0, "p95": 50.0, "conf": 1.0, "frames": 400}, 3.0),
        (D + 24 * H + 60, {"frames": 7}, 0.2),
        (D + 25 * H + 60, {"frames": 11}, 0.2),
    ):
        store.add_window(window(end, **kw), [score("brightness", v), score("classes", v / 10, 0.2, "linf")])  # type: ignore[arg-type]


def test_rollups_are_exact_complete_periods_only_and_idempotent(tmp_path: Path) -> None:
    s = MetricsStore(tmp_path / "metrics.db", clock=Clock(D + 25.5 * H))
    try:
        rollup_data(s)
        done = s.housekeeping()  # at D + 25.5 h: hours 0, 1, 2, 24 complete; day D complete
        hours = {(r["start_ts"], r["version"]): r for r in s.rollups_windows("hour", 0)}
        assert sorted(hours) == [(D, 1), (D + H, 2), (D + 2 * H, 1), (D + 24 * H, 1)]
        h0 = hours[(D, 1)]
        assert (h0["windows"], h0["samples"], h0["frames"]) == (3, 180, 600)
        assert (h0["drifted"], h0["confidence_n"]) == (1, 2)
        assert h0["fps"] == pytest.approx(25.0) and h0["latency_p95_ms"] == pytest.approx(30.0)
        assert h0["latency_p95_max_ms"] == 40.0 and h0["confidence"] == pytest.approx(0.7)
        [day1, day2] = s.rollups_windows("day", 0)
        assert (day1["start_ts"], day1["version"], day2["version"]) == (D, 1, 2)
        assert (day1["windows"], day1["frames"], day1["drifted"], day1["confidence_n"]) == (4, 1000, 1, 3)
        assert day1["fps"] == pytest.approx(30.0)  # (30 + 20 + 25 + 45) / 4: weighted by the hours' windows
        assert day1["latency_p95_ms"] == pytest.approx(35.0) and day1["latency_p95_max_ms"] == 50.0
        assert day1["confidence"] == pytest.approx(0.8)  # (0.8 + 0.6 + 1.0) / 3: windows with a confidence
        drift_h0 = s.rollups_drift("hour", D, D + 1, metric="brightness")
        assert [(r["n"], r["mean"], r["max"], r["threshold"], r["drifted"]) for r in drift_h0] == [
            (3, pytest.approx(1.0), 1.5, 1.0, 1)
        ]
        assert drift_h0[0]["share_drifted"] == pytest.approx(1 / 3)
        [d1] = s.rollups_drift("day", 0, metric="brightness", until=D + 1)[:1]
        assert (d1["version"], d1["n"], d1["max"], d1["drifted"]) == (1, 4, 3.0, 2)
        assert d1["mean"] == pytest.approx(1.5)
        assert d1["share_drifted"] == pytest.approx(0.5)
        # rows: hourly windows, daily windows, hourly drift, daily drift
        assert done["rollup_rows"] == 4 + 2 + 8 + 4

        before = {t: dump(s, t) for t in ("rollups_windows", "rollups_drift", "rollup_marks")}
        assert s.housekeeping()["rollup_rows"] == 0  # the same now: nothing new
        assert {t: dump(s, t) for t in before} == before

        assert s.housekeeping(D + 26.5 * H)["rollup_rows"] == 1 + 2  # hour 25 is over: its window, 2 metrics
        assert [r["start_ts"] for r in s.rollups_windows("hour", D + 24 * H)] == [D + 24 * H, D + 25 * H]
        assert len(s.rollups_windows("day", 0)) == 2  # day D + 1 is not over
        s.housekeeping(D + 48 * H + 1)
        day = s.rollups_windows("day", D + 24 * H)
        assert [(r["start_ts"], r["windows"], r["frames"]) for r in day] == [(D + 24 * H, 2, 18)]
    finally:
        s.close()


class JobEvent:
    def __init__(self, ts: float) -> None:
        self.ts = ts

    def to_json(self) -> dict[str, object]:
        return {"ts": self.ts, "job_id": "j", "status": "SUCCEEDED", "model": "m", "version": 1}


def test_retention_by_age_keeps_rollups_alerts_and_the_newest_version_longer(tmp_path: Path) -> None:
    from monitoring.job_history import JobHistory

    now = D + 600 * 86400.0
    day = 86400.0
    s = MetricsStore(tmp_path / "metrics.db", max_age_days=30, rollup_max_age_days=400, clock=Clock(now))
    try:
        jobs = JobHistory(s)
        for age in (500, 40, 1):
            s.add_window(window(now - age * day), [score("brightness", 0.5)])
            s.add_results([(age, now - age * day, "m", 1, 2.5, 0.5, None, "c0")])
            s.add_event("start", {"age": age}, ts=now - age * day)
            s.add_alert({"ts": now - age * day, "kind": "drift", "metric": "brightness", "state": "raised"})
            jobs(JobEvent(now - age * day))
        s.add_model_version("m", 1, ts=now - 550 * day)
        s.add_model_version("m", 2, ts=now - 500 * day)  # the newest: kept whatever its age
        done = s.housekeeping()
        assert done["deleted"] == {
            "windows": 2,
            "drift": 2,
            "results": 2,
            "events": 2,
            "rollups_windows": 2,  # the hour and the day of the window 500 days old
            "rollups_drift": 2,
            "alerts": 1,
            "model_versions": 1,
            "jobs": 1,
        }
        assert [w["end_ts"] for w in s.windows(0)] == [now - day]
        assert [r["ts"] for r in s.results()] == [now - day]
        assert [r["start_ts"] for r in s.rollups_windows("hour", 0)] == [
            math.floor((now - 40 * day) / H) * H,
            math.floor((now - day) / H) * H,
        ]
        assert [a["ts"] for a in s.alerts(0)] == [now - 40 * day, now - day]
        assert [v["version"] for v in s.model_versions(0)] == [2]
        assert [j["ts"] for j in jobs.recent()] == [now - 40 * day, now - day]
        assert s.housekeeping()["deleted"] == {}
    finally:
        s.close()


def test_retention_by_size_deletes_the_oldest_raw_rows_until_the_file_fits(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    clock = Clock(D + 3000 * 60.0 + 1)
    s = MetricsStore(path, max_bytes=None, clock=clock)
    try:
        pad = "x" * 1500  # a window's summary, as big as a busy detector's
        for i in range(3000):
            s.add_window(window(D + (i + 1) * 60.0, summary={"pad": pad}), [score("brightness", 0.5)])
        s.housekeeping()
        assert s.file_bytes() > 4_000_000
        s.max_bytes = 1_000_000
        done = s.housekeeping()
        assert not done["over_size"] and 0 < done["deleted"]["windows"] < 3000
        wal = Path(f"{path}-wal")
        on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        assert on_disk <= 1_000_000 and done["bytes"] == on_disk
        kept = s.windows(0, summary=False)
        assert kept[-1]["end_ts"] == D + 3000 * 60.0  # the newest stay, the oldest went
        assert len(kept) == 3000 - done["deleted"]["windows"] and kept[0]["end_ts"] > D + 60.0
        assert sum(r["windows"] for r in s.rollups_windows("hour", 0)) == 3000 - 1  # rolled up first (all
        # complete hours: the last window ends on the hour, in the hour still running)
        assert s.housekeeping()["deleted"] == {}  # under the limit: nothing more
    finally:
        s.close()


def test_a_read_only_database_file_is_fatal(tmp_path: Path) -> None:
    src = tmp_path / "metrics.db"
    s = MetricsStore(src)
    s.add_window(window(D + 60), [score("brightness", 0.5)])
    s.close()
    # A real read-only database: SQLite's own query_only switch (SQLITE_READONLY), as root too.
    s = MetricsStore(src)
    s.db.conn.execute("PRAGMA query_only = ON")
    with pytest.raises(FatalError, match="readonly"):
        s.add_window(window(D + 120), [score("brightness", 0.5)])
    with pytest.raises(FatalError, match="readonly"):
        s.save_state("k", {})
    s.close()
    # A copy whose file mode forbids writing. Root writes to it anyway, so as root the check
    # runs in a child process as the unprivileged user "nobody" (never skipped).
    if os.geteuid() != 0:
        copy = tmp_path / "copy" / "metrics.db"
        copy.parent.mkdir()
        shutil.copy(src, copy)
        copy.chmod(0o444)
        s = MetricsStore(copy)
        try:
            with pytest.raises(FatalError, match="readonly"):
                s.add_window(window(D + 120), [score("brightness", 0.5)])
        finally:
            s.close()
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ro-metrics-"))
    try:
        folder.chmod(0o755)
        copy = folder / "metrics.db"
        shutil.copy(src, copy)
        copy.chmod(0o444)
        # a forked child keeps this interpreter and its modules, so it needs no file of root's
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, try to write, report through the pipe
            code = 1
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    MetricsStore(copy).save_state("k", {})
                    os.write(write_end, b"written")
                except FatalError as err:  # refused at open (WAL needs writing) or at the write
                    os.write(write_end, f"refused: {err}".encode())
                    code = 0
                except BaseException as err:
                    os.write(write_end, repr(err).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, said
        assert said.startswith("refused:") and "readonly" in said
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_reader_reads_while_the_writer_holds_its_lock_and_never_writes(store: MetricsStore) -> None:
    assert isinstance(store.path, Path)
    store.add_window(window(D + 60), [score("brightness", 0.5)])
    store.add_model_version("m", 1, ts=D)
    store.save_state("k", {"a": 1})
    with write_locked(store.path), MetricsReader(store.path, busy_timeout=0.05) as reader:
        assert [w["end_ts"] for w in reader.windows(0)] == [D + 60]
        assert [r["metric"] for r in reader.drift(0)] == ["brightness"]
        assert reader.load_state("k") == {"a": 1} and reader.model_versions(0)[0]["version"] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("DELETE FROM windows")


def test_a_reader_of_an_older_database_finds_no_windows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    old = sqlite3.connect(str(path))
    old.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts FLOAT)")
    old.commit()
    old.close()
    with MetricsReader(path) as reader:
        assert reader.windows(0) == [] and reader.alerts(0) == [] and reader.time_range("windows") is None
        assert reader.rollups_windows("hour", 0) == [] and reader.load_state("k") is None
