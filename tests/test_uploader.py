"""monitoring.uploader: unit tests against scripted fake targets (or a real ``HttpTarget`` over
an httpx mock transport) with an injected clock and local time; the waits are on the uploader's
own condition, on events and barriers. Integration against real servers is at the end."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.errors import TransientError
from monitoring.spool import QUARANTINE, Spool, SpoolItem
from monitoring.upload_target import HttpTarget, UploadRefused, UploadUnavailable
from monitoring.uploader import Uploader, describe_target
from ota.update_window import UpdateWindow
from tests.fixtures.upload import Moto, MotoLate, write_creds
from tests.fixtures.upload_server import UploadServer

WAIT_S = 10.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SpoolClock:
    """Strictly increasing ``spooled_at`` so the order of items is the order of puts."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


class LocalNow:
    """The injected local time; records which upload workers have looked at it."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.cond = threading.Condition()
        self.seen: set[str] = set()

    def __call__(self) -> datetime:
        with self.cond:
            self.seen.add(threading.current_thread().name)
            self.cond.notify_all()
            return self.now

    def wait_seen(self, names: set[str]) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: names <= self.seen, WAIT_S)


class FakeTarget:
    """Scripted outcomes: ``script`` (in call order) then ``by_sha`` (per item); ``hook`` runs
    inside ``put`` before the outcome."""

    def __init__(
        self,
        script: Sequence[BaseException | None] | None = None,
        by_sha: dict[str, BaseException] | None = None,
        hook: Callable[[str], object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.script = list(script or [])
        self.by_sha = dict(by_sha or {})
        self.hook = hook
        self.clock = clock
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float, float | None]] = []  # sha, ts, clock at the call
        self.stored: list[str] = []

    def put(self, sha256: str, jpeg: bytes, meta: Mapping[str, Any], device: str, ts: float) -> None:
        assert device == "cam-1"
        with self.lock:
            self.calls.append((sha256, ts, self.clock() if self.clock else None))
            outcome = self.script.pop(0) if self.script else self.by_sha.get(sha256)
        if self.hook is not None:
            self.hook(sha256)
        if outcome is not None:
            raise outcome
        with self.lock:
            self.stored.append(sha256)

    def close(self) -> None:
        pass


def frame(i: int) -> bytes:
    return b"\xff\xd8" + i.to_bytes(4, "big") + b"frame" * 20 + b"\xff\xd9"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", max_bytes=1 << 24, max_items=1000, clock=SpoolClock())
    yield s
    s.close()


def fill(spool: Spool, n: int, start: int = 0) -> list[str]:
    shas = []
    for i in range(start, start + n):
        item = spool.put(frame(i), {"strategy": "unsure", "ts": 1_700_000_000.0 + i})
        assert item is not None
        shas.append(item.sha256)
    return shas


def settle(up: Uploader, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Wait on the uploader's own condition (notified after every attempt and pause) until
    ``pred(status)`` holds; returns that status."""
    got: dict[str, Any] = {}

    def check() -> bool:
        got.update(up.status())
        return pred(got)

    with up._cond:
        assert up._cond.wait_for(check, WAIT_S), got
    return got


def done(n: int) -> Callable[[dict[str, Any]], bool]:
    """``n`` attempts made and handled (nothing in flight)."""
    return lambda st: st["attempts"] == n and st["in_flight"] == 0


@pytest.fixture
def stopper() -> Iterator[list[Uploader]]:
    ups: list[Uploader] = []
    yield ups
    for up in ups:
        up.stop(timeout=5)


def make(spool: Spool, target: Any, stopper: list[Uploader], **kw: Any) -> Uploader:
    kw.setdefault("clock", Clock())
    up = Uploader(spool, target, device="cam-1", **kw)
    stopper.append(up)
    return up


# --- unit --------------------------------------------------------------------------------------


def test_uploads_oldest_first_and_counts(spool: Spool, stopper: list[Uploader]) -> None:
    shas = fill(spool, 3)
    sizes = sum(i.bytes for i in spool.pending(10))
    target = FakeTarget()
    up = make(spool, target, stopper, concurrency=1).start()
    assert {t.name for t in threading.enumerate()} >= {"upload-1"}
    assert up.drain(WAIT_S)
    assert [c[0] for c in target.calls] == shas
    assert [c[1] for c in target.calls] == [1_700_000_000.0 + i for i in range(3)]  # ts from the sidecar
    st = up.status()
    assert (st["state"], st["uploaded"], st["uploaded_bytes"], st["attempts"]) == ("idle", 3, sizes, 3)
    assert (up.uploaded, up.uploaded_bytes, up.attempts) == (3, sizes, 3)
    assert st["last_upload_at"] is not None and st["last_error"] is None and st["schedule"] == "always"
    assert spool.status()["items"] == 0
    assert set(st) == {
        "state", "uploaded", "uploaded_bytes", "uploaded_stale", "attempts", "failures", "parked",
        "quarantined",
        "in_flight", "next_attempt_in_s", "last_error", "last_error_at", "last_upload_at",
        "schedule", "target",
    }  # fmt: skip
    assert set(st["failures"]) >= {"unavailable", "credentials", "refused", "corrupt", "error"}
    up.stop()
    assert up.status()["state"] == "stopped"


def test_backoff_doubles_with_equal_jitter_and_honours_retry_after(
    spool: Spool, stopper: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "monitoring.uploader")
    (sha,) = fill(spool, 1)
    clock = Clock(0.0)
    down = [UploadUnavailable("HTTP 503") for _ in range(3)]
    target = FakeTarget([*down, UploadUnavailable("HTTP 429", retry_after=42.0)], clock=clock)
    kw: dict[str, Any] = {"retry_min_s": 1.0, "retry_max_s": 3.0, "clock": clock, "rng": random.Random(7)}
    up = make(spool, target, stopper, concurrency=1, **kw).start()
    twin = random.Random(7)
    expected = []
    for n, delay in enumerate((1.0, 2.0, 3.0), start=1):  # 1, 2, then capped at retry_max_s
        st = settle(up, done(n))
        want = delay / 2 + twin.uniform(0.0, delay / 2)
        assert st["state"] == "backing_off" and st["next_attempt_in_s"] == pytest.approx(want)
        assert delay / 2 <= want <= delay
        expected.append(want)
        clock.now += want
        up.wake()
    st = settle(up, done(4))
    assert st["next_attempt_in_s"] == 42.0 and "HTTP 429" in st["last_error"]
    clock.now += 41.0
    up.wake()
    clock.now += 1.0
    up.wake()
    assert up.drain(WAIT_S)
    starts = [0.0, expected[0], sum(expected[:2]), sum(expected)]
    assert [c[2] for c in target.calls] == pytest.approx([*starts, sum(expected) + 42.0])
    assert target.stored == [sha]
    assert up.failures["unavailable"] == 4 and up.status()["state"] == "idle"
    text = caplog.text
    assert text.count("uploads paused") == 1  # rate-limited: the first failure, then once a minute
    assert "uploads resumed after 4 failed attempt(s)" in text


def test_unavailability_is_logged_once_a_minute_with_the_count(
    spool: Spool, stopper: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "monitoring.uploader")
    fill(spool, 1)
    clock = Clock(0.0)
    target = FakeTarget([UploadUnavailable(f"HTTP 503 #{i}", retry_after=25.0) for i in range(4)])
    up = make(spool, target, stopper, concurrency=1, clock=clock).start()
    for n in range(1, 5):  # failures at 0, 25, 50, 75 s
        settle(up, done(n))
        clock.now += 25.0
        up.wake()
    assert up.drain(WAIT_S)
    lines = [r.getMessage() for r in caplog.records if r.name == "monitoring.uploader"]
    assert lines == [
        "uploads paused 25.0 s: HTTP 503 #0",
        "uploads still failing: 3 failure(s) in the last minute; last: HTTP 503 #3",
        "uploads resumed after 4 failed attempt(s)",
    ]


def test_failures_together_double_the_backoff_once(spool: Spool, stopper: list[Uploader]) -> None:
    fill(spool, 3)
    barrier = threading.Barrier(2, timeout=WAIT_S)
    clock = Clock(0.0)
    target = FakeTarget(
        [UploadUnavailable("down"), UploadUnavailable("down")], hook=lambda _: barrier.wait(), clock=clock
    )
    kw: dict[str, Any] = {"retry_min_s": 1.0, "retry_max_s": 8.0, "clock": clock, "rng": random.Random(3)}
    up = make(spool, target, stopper, concurrency=2, **kw).start()
    twin = random.Random(3)
    st = settle(up, done(2))
    first = 0.5 + twin.uniform(0, 0.5)
    second = 0.5 + twin.uniform(0, 0.5)  # the second failure of the same round: same exponent
    assert st["next_attempt_in_s"] == pytest.approx(max(first, second))
    target.hook = None
    clock.now += 1.0
    up.wake()
    assert up.drain(WAIT_S) and up.uploaded == 3


def test_a_refused_item_is_parked_and_the_others_go_on(spool: Spool, stopper: list[Uploader]) -> None:
    a, b, c = fill(spool, 3)
    refusal = UploadRefused("PUT x: refused, HTTP 400 bad frame", 400, "bad frame")
    target = FakeTarget(by_sha={b: refusal})
    up = make(spool, target, stopper).start()
    assert up.drain(WAIT_S)
    assert sorted(target.stored) == sorted([a, c])
    item = spool.get(b)
    assert item is not None and item.parked and item.reason == "HTTP 400 bad frame"
    st = up.status()
    assert (st["state"], st["parked"], st["failures"]["refused"], st["uploaded"]) == ("idle", 1, 1, 2)
    assert "HTTP 400 bad frame" in st["last_error"]


def test_a_whole_target_refusal_pauses_every_worker(spool: Spool, stopper: list[Uploader]) -> None:
    shas = fill(spool, 3)
    barrier = threading.Barrier(2, timeout=WAIT_S)
    nobucket = [
        UploadRefused("the bucket 'x' does not exist", 404, "", code="NoSuchBucket", whole_target=True)
        for _ in range(2)
    ]
    clock = Clock()
    target = FakeTarget(nobucket, hook=lambda _: barrier.wait(), clock=clock)
    up = make(spool, target, stopper, concurrency=2, retry_max_s=30.0, clock=clock).start()
    st = settle(up, done(2))
    assert st["state"] == "target_refused" and st["next_attempt_in_s"] == 30.0
    assert "does not exist" in st["last_error"] and st["parked"] == 0
    assert [i.sha256 for i in spool.pending(10)] == shas  # untouched
    target.hook = None
    clock.now += 30.0
    up.wake()
    assert up.drain(WAIT_S) and sorted(target.stored) == sorted(shas)
    assert [c[2] for c in target.calls[2:]] == [clock.now] * 3  # none before the pause ended


def _token_target(tmp_path: Path, seen: list[str]) -> HttpTarget:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != "Bearer good-token":
            return httpx.Response(401, text="bad token")
        return httpx.Response(201)

    return HttpTarget(
        "http://uploads.example/f/{sha256}.jpg",
        token_file=tmp_path / "upload-token",
        transport=httpx.MockTransport(answer),
    )


def test_credentials_wait_for_the_file_to_change(
    tmp_path: Path, spool: Spool, stopper: list[Uploader]
) -> None:
    fill(spool, 2)
    seen: list[str] = []
    target = _token_target(tmp_path, seen)
    token = tmp_path / "upload-token"
    clock = Clock()
    up = make(spool, target, stopper, concurrency=1, check_s=5.0, retry_max_s=60.0, clock=clock).start()
    # no token file yet: reading it fails (TransientError), nothing is sent
    st = settle(up, done(1))
    assert st["state"] == "credentials_rejected" and "upload-token cannot be read" in st["last_error"]
    assert seen == []
    token.write_text("bad\n")  # the file appears: looked for within check_s
    clock.now += 5.0
    up.wake()
    st = settle(up, done(2))
    assert st["state"] == "credentials_rejected" and st["failures"]["credentials"] == 2
    assert "HTTP 401 bad token" in st["last_error"] and "upload-token" in st["last_error"]
    # unchanged file: looked at every check_s but not retried until retry_max_s
    for _ in range(3):
        clock.now += 5.0
        up.wake()
    assert up.status()["attempts"] == 2
    clock.now += 45.0
    up.wake()
    st = settle(up, done(3))
    assert st["state"] == "credentials_rejected" and seen == ["Bearer bad", "Bearer bad"]
    token.write_text("good-token\n")  # rotated
    clock.now += 5.0
    up.wake()
    assert up.drain(WAIT_S) and up.uploaded == 2
    assert up.status()["state"] == "idle"
    target.close()


def test_a_rejection_answered_after_the_rotation_does_not_hide_it(
    tmp_path: Path, spool: Spool, stopper: list[Uploader]
) -> None:
    """Two uploads carry the old token; one answer comes after the file was rotated: the change is
    still seen (the file is compared with what the failed attempt read, not with the file now)."""
    fill(spool, 3)
    token = tmp_path / "upload-token"
    token.write_text("bad\n")
    both = threading.Barrier(2, timeout=WAIT_S)
    rotated = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer good-token":
            return httpx.Response(201)
        if both.wait() == 0:
            assert rotated.wait(WAIT_S)
        return httpx.Response(401, text="bad token")

    target = HttpTarget(
        "http://up.example/f/{sha256}.jpg", token_file=token, transport=httpx.MockTransport(answer)
    )
    clock = Clock()
    up = make(spool, target, stopper, concurrency=2, check_s=5.0, retry_max_s=600.0, clock=clock).start()
    settle(up, lambda st: st["failures"]["credentials"] == 1)
    token.write_text("good-token\n")
    rotated.set()
    settle(up, lambda st: st["failures"]["credentials"] == 2 and st["in_flight"] == 0)
    clock.now += 5.0
    up.wake()
    assert up.drain(WAIT_S) and up.uploaded == 3
    target.close()


def test_outside_the_schedule_workers_wait_and_flush_overrides(spool: Spool, stopper: list[Uploader]) -> None:
    fill(spool, 2)
    local = LocalNow(datetime(2026, 11, 23, 12, 0))
    window = UpdateWindow.parse("01:00-05:00")
    target = FakeTarget()
    up = make(spool, target, stopper, concurrency=2, schedule=window, local_now=local).start()
    local.wait_seen({"upload-1", "upload-2"})  # both workers have looked at the schedule
    st = up.status()
    assert st["state"] == "outside_schedule" and st["schedule"] == "01:00-05:00"
    assert st["next_attempt_in_s"] == 13 * 3600.0
    local.seen.clear()
    up.wake()  # a new item does not open the window
    local.wait_seen({"upload-1", "upload-2"})
    assert target.calls == []
    up.flush()
    assert up.drain(WAIT_S) and up.uploaded == 2
    # the flush is over once the spool was empty: the schedule holds again
    (late,) = fill(spool, 1, start=10)
    local.seen.clear()
    up.wake()
    local.wait_seen({"upload-1", "upload-2"})
    assert up.status()["state"] == "outside_schedule" and len(target.calls) == 2
    local.now = datetime(2026, 11, 24, 1, 30)
    up.wake()
    assert up.drain(WAIT_S) and target.stored[-1] == late


def test_a_flush_goes_on_through_transient_failures(spool: Spool, stopper: list[Uploader]) -> None:
    fill(spool, 2)
    local = LocalNow(datetime(2026, 11, 23, 12, 0))
    clock = Clock()
    target = FakeTarget([UploadUnavailable("down")], clock=clock)
    window = UpdateWindow.parse("01:00-05:00")
    kw: dict[str, Any] = {"schedule": window, "local_now": local, "clock": clock, "retry_min_s": 2.0}
    up = make(spool, target, stopper, concurrency=1, **kw).start()
    up.flush()
    st = settle(up, done(1))
    assert st["state"] == "backing_off"  # the back-off after the flush is honoured …
    clock.now += 2.0
    up.wake()
    assert up.drain(WAIT_S) and up.uploaded == 2  # … and the window still ignored until empty
    assert up.status()["state"] == "outside_schedule"


def test_corrupt_items_are_quarantined(tmp_path: Path, spool: Spool, stopper: list[Uploader]) -> None:
    a, b, c = fill(spool, 3)
    (tmp_path / "upload-token").write_text("good-token\n")
    seen: list[str] = []
    target = _token_target(tmp_path, seen)
    root = spool.root
    (root / f"{a}.jpg").write_bytes(b"other bytes")  # digest mismatch: the target refuses to send
    (root / f"{b}.json").unlink()  # a sidecar lost
    up = make(spool, target, stopper, concurrency=1).start()
    assert up.drain(WAIT_S)
    st = up.status()
    assert (st["uploaded"], st["quarantined"], st["failures"]["corrupt"]) == (1, 2, 2)
    assert spool.status()["quarantined"] == 2 and spool.status()["items"] == 0
    assert {p.name for p in (root / QUARANTINE).iterdir()} == {f"{a}.jpg", f"{a}.json", f"{b}.jpg"}
    assert len(seen) == 2 and spool.get(c) is None  # only c was sent (its JPEG and its sidecar)
    target.close()


def test_a_bug_is_counted_and_the_worker_survives(
    spool: Spool, stopper: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    (sha,) = fill(spool, 1)
    clock = Clock()
    target = FakeTarget([RuntimeError("boom")], clock=clock)
    up = make(spool, target, stopper, concurrency=1, retry_min_s=2.0, clock=clock).start()
    st = settle(up, done(1))
    assert st["failures"]["error"] == 1 and "internal error" in st["last_error"]
    assert "boom" in caplog.text and "Traceback" in caplog.text
    clock.now += 2.0
    up.wake()
    assert up.drain(WAIT_S) and target.stored == [sha]
    assert [c[2] for c in target.calls] == [1000.0, 1002.0]


def test_stop_leaves_an_upload_in_flight_pending_and_a_restart_uploads_it(
    spool: Spool, stopper: list[Uploader]
) -> None:
    (sha,) = fill(spool, 1)
    entered, release = threading.Event(), threading.Event()

    def block(_: str) -> None:
        entered.set()
        assert release.wait(WAIT_S)

    target = FakeTarget(hook=block)
    up = make(spool, target, stopper, concurrency=1).start()
    worker = next(t for t in threading.enumerate() if t.name == "upload-1")
    assert entered.wait(WAIT_S)
    up.stop(timeout=0.1)  # the put is still blocked
    assert up.status()["state"] == "stopped" and worker.is_alive()
    release.set()
    worker.join(WAIT_S)
    assert not worker.is_alive()
    assert [i.sha256 for i in spool.pending(10)] == [sha] and up.uploaded == 0
    # restart: whatever the spool holds is uploaded again (the key is the content's)
    again = make(spool, FakeTarget(), stopper).start()
    assert again.drain(WAIT_S) and again.uploaded == 1 and spool.status()["items"] == 0


def test_at_most_concurrency_uploads_at_once(spool: Spool, stopper: list[Uploader]) -> None:
    shas = fill(spool, 9)
    barrier = threading.Barrier(3, timeout=WAIT_S)
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def hook(_: str) -> None:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        barrier.wait()  # three at once: the limit is reached
        with lock:
            active[0] -= 1

    target = FakeTarget(hook=hook)
    up = make(spool, target, stopper, concurrency=3).start()
    assert up.drain(WAIT_S)
    assert active[1] == 3 and sorted(target.stored) == sorted(shas)
    assert len(target.calls) == 9  # no item was taken by two workers


class FlakySpool(Spool):
    """A spool whose listing fails ``fail`` times (a disk error, as the spool translates it)."""

    fail = 0
    bug = 0

    def pending(self, limit: int = 100) -> list[SpoolItem]:
        if self.bug:
            self.bug -= 1
            raise RuntimeError("a bug in the listing")
        if self.fail:
            self.fail -= 1
            raise TransientError(f"I/O error while listing the spool under {self.root}: EIO; check the disk")
        return super().pending(limit)


def test_a_spool_error_backs_off_like_unavailable(tmp_path: Path, stopper: list[Uploader]) -> None:
    flaky = FlakySpool(tmp_path / "spool", max_bytes=1 << 20, max_items=100, clock=SpoolClock())
    (sha,) = fill(flaky, 1)
    flaky.fail = 1
    clock = Clock()
    target = FakeTarget(clock=clock)
    up = make(flaky, target, stopper, concurrency=1, retry_min_s=4.0, clock=clock, rng=random.Random(1))
    up.start()
    st = settle(up, lambda st: st["failures"]["spool"] == 1)
    assert st["state"] == "backing_off" and 2.0 <= st["next_attempt_in_s"] <= 4.0
    assert "I/O error" in st["last_error"] and target.calls == []
    clock.now += st["next_attempt_in_s"]
    up.wake()
    assert up.drain(WAIT_S) and target.stored == [sha]
    up.stop()
    flaky.close()


def test_a_bug_while_listing_the_spool_is_counted_and_the_worker_survives(
    tmp_path: Path, stopper: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakySpool(tmp_path / "spool", max_bytes=1 << 20, max_items=100, clock=SpoolClock())
    (sha,) = fill(flaky, 1)
    flaky.bug = 1
    clock = Clock()
    target = FakeTarget()
    up = make(flaky, target, stopper, concurrency=1, retry_min_s=3.0, clock=clock).start()
    st = settle(up, lambda st: st["failures"]["error"] == 1)
    assert "listing the spool" in st["last_error"] and "a bug in the listing" in caplog.text
    clock.now += 3.0
    up.wake()
    assert up.drain(WAIT_S) and target.stored == [sha]
    up.stop()
    flaky.close()


def test_the_target_is_described_without_secrets(tmp_path: Path, spool: Spool) -> None:
    http = HttpTarget("https://user:pw@up.example:8443/f/{sha256}.jpg?sig=SECRET", method="PUT")
    assert describe_target(http) == "PUT https://up.example:8443/f/{sha256}.jpg"
    up = Uploader(spool, http, device="cam-1")
    assert up.status()["target"] == "PUT https://up.example:8443/f/{sha256}.jpg"
    http.close()
    assert json.dumps(up.status())  # JSON-able as it is


# --- integration: real servers, down for the first half, then flaky ------------------------------

HALF = 20


def _down_then_flaky(spool: Spool, up: Uploader, bring_up: Callable[[], object]) -> list[str]:
    """Spool HALF items while the server is down (and see the uploader fail), bring it up, spool
    HALF more; returns every sha spooled."""
    up.start()
    shas = []
    for i in range(HALF):
        shas += fill(spool, 1, start=i)
        up.wake()
    settle(up, lambda st: st["failures"]["unavailable"] >= 2)
    assert up.uploaded == 0 and spool.status()["pending"] == HALF
    bring_up()
    for i in range(HALF, 2 * HALF):
        shas += fill(spool, 1, start=i)
        up.wake()
    assert up.drain(60.0), up.status()
    return shas


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_http_server_down_then_flaky_every_item_once(
    tmp_path: Path, spool: Spool, stopper: list[Uploader], upload_server: UploadServer, method: str
) -> None:
    token = tmp_path / "upload-token"
    token.write_text("s3cret\n")
    upload_server.stop()
    upload_server.configure(fail_rate=0.3, seed=11, token="s3cret")
    template = "/frames/{device}/{sha256}.jpg" if method == "PUT" else "/upload/{device}"
    target = HttpTarget(upload_server.url + template, method=method, token_file=token, io_timeout_s=10.0)
    up = Uploader(spool, target, device="cam-1", concurrency=2, retry_min_s=0.05, retry_max_s=0.5)
    stopper.append(up)
    shas = _down_then_flaky(spool, up, upload_server.start)
    stats = upload_server.stats()
    assert sorted(stats["stored_keys"]) == sorted(shas)  # every item, each under its own key
    assert spool.status()["items"] == 0
    assert up.uploaded == len(stats["stored_keys"]) == 2 * HALF
    injected = stats["statuses"].get("503", 0)
    assert injected > 0 and up.failures["unavailable"] >= injected + 2  # + the refused connections
    stored = upload_server.stored()
    for i, sha in enumerate(shas):
        parts = stored[sha]
        if method == "PUT":
            assert parts[f"/frames/cam-1/{sha}.jpg"] == frame(i)
            meta = json.loads(parts[f"/frames/cam-1/{sha}.json"])
            assert (meta["sha256"], meta["ts"]) == (sha, 1_700_000_000.0 + i)
        else:
            assert list(parts) == ["/upload/cam-1"] and frame(i) in parts["/upload/cam-1"]
    up.stop()
    target.close()


class FlakyLink(httpx.BaseTransport):
    """The network between the device and the store: ``rate`` of the requests get a 503 SlowDown,
    half of them before the store saw the request and half after it stored it (the answer lost)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            fail = self.rng.random() < self.rate
            after = self.rng.random() < 0.5
            self.injected += fail
        slow = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        if fail and not after:
            return httpx.Response(503, text=slow)
        resp = self.inner.handle_request(request)
        if fail:
            resp.read()
            resp.close()
            return httpx.Response(503, text=slow)
        return resp

    def close(self) -> None:
        self.inner.close()


def test_s3_server_down_then_flaky_every_item_once(
    spool: Spool, stopper: list[Uploader], moto_late: MotoLate
) -> None:
    link = FlakyLink(0.3, seed=5)
    target = moto_late.target(transport=link)
    up = Uploader(spool, target, device="cam-1", concurrency=2, retry_min_s=0.05, retry_max_s=0.5)
    stopper.append(up)
    shas = _down_then_flaky(spool, up, moto_late.start)
    keys = moto_late.object_keys()
    want = {f"fleet-a/cam-1/2023-11-14/{sha}.{ext}" for sha in shas for ext in ("jpg", "json")}
    assert sorted(keys) == sorted(want)  # every item once (a listing has no duplicates; nothing else)
    assert spool.status()["items"] == 0
    assert up.uploaded == sum(k.endswith(".jpg") for k in keys) == 2 * HALF
    assert link.injected > 0 and up.failures["unavailable"] >= link.injected
    reader = moto_late.reader()
    for i in (0, HALF, 2 * HALF - 1):
        assert reader.get_object(f"fleet-a/cam-1/2023-11-14/{shas[i]}.jpg") == frame(i)
    up.stop()


def test_http_resets_slow_answers_and_retry_after(
    spool: Spool, stopper: list[Uploader], upload_server: UploadServer
) -> None:
    target = HttpTarget(upload_server.url + "/f/{sha256}.jpg", io_timeout_s=0.5)
    up = Uploader(spool, target, device="cam-1", concurrency=2, retry_min_s=0.05, retry_max_s=0.5)
    stopper.append(up)
    up.start()
    upload_server.configure(reset_rate=0.3, seed=2)  # connections closed without an answer
    shas = fill(spool, 10)
    up.wake()
    assert up.drain(60.0), up.status()
    resets = up.failures["unavailable"]
    assert resets > 0 and up.uploaded == 10

    upload_server.configure(delay_s=1.5)  # slower than the client's read timeout
    shas += fill(spool, 1, start=10)
    up.wake()
    st = settle(up, lambda st: st["failures"]["unavailable"] > resets)
    assert "timed out" in st["last_error"]
    upload_server.configure()
    assert up.drain(60.0)

    upload_server.configure(status=503, retry_after="30")
    shas += fill(spool, 1, start=11)
    up.wake()
    st = settle(up, lambda st: "Retry-After 30 s" in (st["last_error"] or ""))
    assert st["state"] == "backing_off" and 29.0 < st["next_attempt_in_s"] <= 30.0
    upload_server.configure()
    up.flush()  # no need to wait the 30 s
    assert up.drain(60.0)
    stats = upload_server.stats()
    assert sorted(stats["stored_keys"]) == sorted(shas) and up.uploaded == len(shas)
    assert spool.status()["items"] == 0
    up.stop()
    target.close()


def test_s3_rotated_credentials_resume_the_uploads(
    spool: Spool, stopper: list[Uploader], moto_s3: Moto
) -> None:
    write_creds(moto_s3.creds_path, moto_s3.access_key, "not-the-secret")
    target = moto_s3.target()
    up = Uploader(spool, target, device="cam-1", retry_min_s=0.05, retry_max_s=600.0, check_s=0.05)
    stopper.append(up)
    shas = fill(spool, 3)
    up.start()
    st = settle(up, lambda st: st["state"] == "credentials_rejected")
    assert "SignatureDoesNotMatch" in st["last_error"] and "s3-credentials.json" in st["last_error"]
    assert st["next_attempt_in_s"] > 500  # not before retry_max_s ... unless the file changes
    assert spool.status()["pending"] == 3
    write_creds(moto_s3.creds_path, moto_s3.access_key, moto_s3.secret)  # the fleet rotates it
    assert up.drain(30.0), up.status()
    assert sorted(k for k in moto_s3.object_keys() if k.endswith(".jpg")) == sorted(
        f"fleet-a/cam-1/2023-11-14/{sha}.jpg" for sha in shas
    )
    up.stop()


CHILD = """
import sys
from pathlib import Path
from monitoring.spool import Spool
from monitoring.upload_target import HttpTarget
from monitoring.uploader import Uploader

spool = Spool(Path(sys.argv[1]), max_bytes=1 << 24, max_items=1000)
target = HttpTarget(sys.argv[2] + "/f/{sha256}.jpg")
Uploader(spool, target, device="cam-1", concurrency=2, retry_min_s=0.05, retry_max_s=0.5).start().drain(120)
"""


def test_a_sigkill_during_uploads_then_a_restart_loses_and_duplicates_nothing(
    tmp_path: Path, upload_server: UploadServer
) -> None:
    root = tmp_path / "spool"
    with Spool(root, max_bytes=1 << 24, max_items=1000, clock=SpoolClock()) as spool:
        shas = fill(spool, 40)
    upload_server.configure(delay_s=0.05)  # uploads are in flight when the kill comes
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), upload_server.url], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(upload_server.stats()["stored_keys"]) < 8:  # a bounded wait for progress
            assert child.poll() is None and time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    upload_server.configure()
    with Spool(root, max_bytes=1 << 24, max_items=1000) as spool:
        assert spool.last_repair["quarantined"] == []
        left = spool.status()["items"]
        assert 0 < left < 40  # killed half-way
        target = HttpTarget(upload_server.url + "/f/{sha256}.jpg")
        up = Uploader(spool, target, device="cam-1", retry_min_s=0.05, retry_max_s=0.5).start()
        try:
            assert up.drain(60.0), up.status()
        finally:
            up.stop()
            target.close()
        assert spool.status()["items"] == 0 and up.uploaded == left
    stored = upload_server.stored()
    assert sorted(stored) == sorted(shas)  # nothing lost, no key that was not spooled
    for i, sha in enumerate(shas):  # each item once: its JPEG and its sidecar, nothing else
        assert stored[sha] == {f"/f/{sha}.jpg": frame(i), f"/f/{sha}.json": stored[sha][f"/f/{sha}.json"]}
        assert json.loads(stored[sha][f"/f/{sha}.json"])["sha256"] == sha


def test_idle_workers_wait_instead_of_waking_each_other(spool: Spool, stopper: list[Uploader]) -> None:
    """Two idle workers once woke each other in a loop (27 000 spool queries a second,
    benchmarks/collection.py): an idle worker now wakes drain() alone. With that defect the
    storm below is reached in milliseconds on any machine."""
    calls: list[int] = []
    looked, storm = threading.Event(), threading.Event()
    real = spool.pending

    def counting(limit: int = 100) -> list[Any]:
        calls.append(limit)
        if len(calls) >= 2:
            looked.set()
        if len(calls) >= 50:
            storm.set()
        return real(limit)

    spool.pending = counting  # type: ignore[method-assign]
    up = make(spool, FakeTarget(), stopper, concurrency=2).start()
    assert looked.wait(WAIT_S)  # both workers looked once and found nothing
    assert up.drain(WAIT_S)  # drain() is still woken
    assert not storm.wait(1.0), f"{len(calls)} spool queries from two idle workers"
