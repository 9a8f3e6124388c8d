"""Downloader against a real HTTP server process (tests/fixtures/bundle_server.py), plus a few
edge cases with ``httpx.MockTransport``.

Nothing really sleeps: ``wait`` is a recorder returning at once (True = "stop asked")."""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from inference.fsio import FsOps
from ota.downloader import (
    Downloader,
    DownloadPolicy,
    TerminalProgress,
    parse_content_range,
    parse_retry_after,
)
from ota.errors import BundleError, TransientError, VerificationError
from tests.fixtures.bundle_server import BundleServer, start_bundle_server

MiB = 1 << 20
BLOB = random.Random(1).randbytes(MiB)
BLOB2 = random.Random(2).randbytes(MiB)
HALF = MiB // 2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BundleServer]:
    srv = start_bundle_server(tmp_path / "srv", tmp_path / "srv-run")
    try:
        yield srv
    finally:
        srv.stop()


class Waits:
    """A ``wait`` that records the delays and returns at once; ``stop`` = its answer."""

    def __init__(self, stop: bool = False) -> None:
        self.delays: list[float] = []
        self.stop = stop

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return self.stop


def downloader(waits: Waits | None = None, **policy: float) -> Downloader:
    kw: dict[str, float] = {"connect_timeout_s": 5.0, "read_timeout_s": 10.0}
    kw.update(policy)
    pol = DownloadPolicy(**kw)  # type: ignore[arg-type]
    return Downloader(pol, wait=waits if waits is not None else Waits(), rand=lambda: 0.5)


def parts(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


# -- plain downloads and checks -------------------------------------------------------------------


def test_plain_download(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("models/m.onnx", BLOB)
    dest = tmp_path / "dl" / "model.onnx"
    res = downloader().fetch(url, dest, max_bytes=10 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB
    assert (res.path, res.size, res.sha256, res.transferred, res.resumed) == (
        dest,
        MiB,
        sha(BLOB),
        MiB,
        False,
    )
    part, side = parts(dest)
    assert not part.exists() and not side.exists()
    st = server.stats("models/m.onnx")
    assert (st["requests"], st["bytes_served"], st["ranges"]) == (1, MiB, [None])


def test_download_without_declared_size_or_hash(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.bin", BLOB)
    res = downloader().fetch(url, tmp_path / "m.bin", max_bytes=2 * MiB)
    assert (res.size, res.sha256) == (MiB, sha(BLOB))


def test_wrong_sha_fails_and_deletes_the_part(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    waits = Waits()
    with pytest.raises(VerificationError, match=f"sha256 {sha(BLOB)}, but {sha(BLOB2)} was declared"):
        downloader(waits).fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB2))
    assert not any(p.exists() for p in (dest, *parts(dest)))
    assert server.stats("m.onnx")["requests"] == 1 and waits.delays == []  # not retried


@pytest.mark.parametrize("declared", [MiB - 1, MiB + 10])
def test_announced_size_differs_from_declared(server: BundleServer, tmp_path: Path, declared: int) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=f"announces {MiB} bytes.*but {declared} were declared"):
        downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=declared)
    assert not any(p.exists() for p in (dest, *parts(dest)))
    assert server.stats("m.onnx")["requests"] == 1


def test_over_max_bytes_is_refused_from_content_length(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    with pytest.raises(VerificationError, match=f"announces {MiB} bytes.*more than the limit of 1000 bytes"):
        downloader().fetch(url, tmp_path / "m.onnx", max_bytes=1000)


def test_declared_size_over_max_bytes_sends_no_request(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    with pytest.raises(VerificationError, match="declared as 1048576 bytes, more than the limit of 1000"):
        downloader().fetch(url, tmp_path / "m.onnx", max_bytes=1000, expected_size=MiB)
    assert server.stats("m.onnx")["requests"] == 0


# -- lying servers -------------------------------------------------------------------------------

LIE = 256 * MiB


def test_more_bytes_announced_than_declared_aborts_at_once(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", lie="more", lie_size=LIE)
    dest = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match=f"announces {LIE} bytes.*but {MiB} were declared"):
        downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert server.stats("m.onnx")["bytes_served"] < LIE // 10
    assert not any(p.exists() for p in (dest, *parts(dest)))


@pytest.mark.parametrize("declared", [True, False])
def test_more_bytes_than_declared_unannounced_aborts_early(
    server: BundleServer, tmp_path: Path, declared: bool
) -> None:
    """No Content-Length (read until close): the download stops once past the limit."""
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", lie="more", lie_size=LIE, lie_length=False)
    dest = tmp_path / "m.onnx"
    d = downloader()
    if declared:
        with pytest.raises(VerificationError, match=f"sent more than the declared size of {MiB} bytes"):
            d.fetch(url, dest, max_bytes=64 * MiB, expected_size=MiB, sha256=sha(BLOB))
    else:
        with pytest.raises(VerificationError, match=f"sent more than the limit of {2 * MiB} bytes"):
            d.fetch(url, dest, max_bytes=2 * MiB)
    served = server.stats("m.onnx")["bytes_served"]
    assert served < LIE // 10, f"{served} bytes served: the download did not abort early"
    assert not any(p.exists() for p in (dest, *parts(dest)))


def test_other_bytes_than_the_file_fail_verification(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", lie="other")
    dest = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="the server serves other bytes"):
        downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert not any(p.exists() for p in (dest, *parts(dest)))


# -- resume ----------------------------------------------------------------------------------------


def test_cut_half_way_resumes_with_range_in_one_fetch(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", cut_after=HALF)
    waits = Waits()
    dest = tmp_path / "m.onnx"
    res = downloader(waits).fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB
    assert res.resumed and res.transferred == MiB
    st = server.stats("m.onnx")
    assert st["ranges"] == [None, f"bytes={HALF}-"]
    assert st["if_ranges"][1] is not None  # the ETag of the first answer
    assert st["statuses"] == [200, 206]
    assert st["bytes_served"] == MiB  # not 1.5 MiB: nothing was downloaded twice
    assert len(waits.delays) == 1


def test_a_new_downloader_resumes_the_part_of_an_interrupted_one(
    server: BundleServer, tmp_path: Path
) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", cut_after=HALF)
    dest = tmp_path / "m.onnx"
    with pytest.raises(
        TransientError, match=r"m\.onnx failed after 1 attempt; last error: RemoteProtocolError"
    ):
        downloader(retries=0).fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    part, side = parts(dest)
    assert part.stat().st_size == HALF
    meta = json.loads(side.read_text())
    assert (meta["url"], meta["sha256"], meta["size"]) == (url, sha(BLOB), MiB) and meta["etag"]

    res = downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))  # "restart"
    assert dest.read_bytes() == BLOB and res.resumed and res.transferred == MiB - HALF
    st = server.stats("m.onnx")
    assert st["ranges"] == [None, f"bytes={HALF}-"] and st["if_ranges"][1] == meta["etag"]
    assert st["bytes_served"] == MiB
    assert not part.exists() and not side.exists()


def test_no_range_support_starts_over(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", cut_after=HALF, no_range=True)
    dest = tmp_path / "m.onnx"
    res = downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB and not res.resumed
    st = server.stats("m.onnx")
    assert st["ranges"] == [None, f"bytes={HALF}-"] and st["statuses"] == [200, 200]
    assert st["bytes_served"] == MiB + HALF


def test_changed_file_restarts_through_if_range(server: BundleServer, tmp_path: Path) -> None:
    """Without a sha256 the ETag guards the resume: a changed file answers 200, taken whole."""
    url = server.put("m.bin", BLOB)
    server.set_fault("m.bin", cut_after=HALF)
    dest = tmp_path / "m.bin"
    with pytest.raises(TransientError):
        downloader(retries=0).fetch(url, dest, max_bytes=2 * MiB)
    server.put("m.bin", BLOB2)
    res = downloader().fetch(url, dest, max_bytes=2 * MiB)
    assert dest.read_bytes() == BLOB2 and not res.resumed and res.sha256 == sha(BLOB2)
    st = server.stats("m.bin")
    assert st["ranges"][1] == f"bytes={HALF}-" and st["if_ranges"][1] is not None
    assert st["statuses"] == [200, 200]


def test_a_part_for_another_url_is_discarded(server: BundleServer, tmp_path: Path) -> None:
    url_a, url_b = server.put("a.onnx", BLOB), server.put("b.onnx", BLOB2)
    server.set_fault("a.onnx", cut_after=HALF)
    dest = tmp_path / "m.onnx"
    with pytest.raises(TransientError):
        downloader(retries=0).fetch(url_a, dest, max_bytes=2 * MiB, sha256=sha(BLOB))
    assert parts(dest)[0].stat().st_size == HALF
    res = downloader().fetch(url_b, dest, max_bytes=2 * MiB, sha256=sha(BLOB2))
    assert dest.read_bytes() == BLOB2 and not res.resumed
    assert server.stats("b.onnx")["ranges"] == [None]


def test_a_part_without_sidecar_is_discarded(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    parts(dest)[0].write_bytes(BLOB[:HALF])
    downloader().fetch(url, dest, max_bytes=2 * MiB, sha256=sha(BLOB))
    assert server.stats("m.onnx")["ranges"] == [None]


def test_complete_part_is_checked_with_416(server: BundleServer, tmp_path: Path) -> None:
    """A crash after the last byte, before the rename: the server says 416, the part is verified."""
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    part, side = parts(dest)
    part.write_bytes(BLOB)
    side.write_text(json.dumps({"url": url, "sha256": sha(BLOB), "size": None}))
    res = downloader().fetch(url, dest, max_bytes=2 * MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB and res.transferred == 0
    st = server.stats("m.onnx")
    assert (st["ranges"], st["statuses"], st["bytes_served"]) == ([f"bytes={MiB}-"], [416], 0)


def test_complete_part_with_declared_size_needs_no_request(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    part, side = parts(dest)
    part.write_bytes(BLOB)
    side.write_text(json.dumps({"url": url, "sha256": sha(BLOB), "size": MiB}))
    res = downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB and res.transferred == 0
    assert server.stats("m.onnx")["requests"] == 0


def test_corrupt_full_size_part_is_downloaded_again(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    part, side = parts(dest)
    part.write_bytes(BLOB2)
    side.write_text(json.dumps({"url": url, "sha256": sha(BLOB), "size": MiB}))
    res = downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB and res.transferred == MiB
    assert server.stats("m.onnx")["ranges"] == [None]


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429, 500, 408])
def test_retry_after_seconds_is_honoured(server: BundleServer, tmp_path: Path, status: int) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", status=status, status_times=2, retry_after="7")
    waits = Waits()
    dest = tmp_path / "m.onnx"
    downloader(waits).fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert waits.delays == [7.0, 7.0]
    st = server.stats("m.onnx")
    assert st["statuses"] == [status, status, 200] and dest.read_bytes() == BLOB


def test_retry_after_http_date_and_cap(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", status=503, retry_after=formatdate(time.time() + 120, usegmt=True))
    waits = Waits()
    downloader(waits).fetch(url, tmp_path / "m.onnx", max_bytes=2 * MiB)
    assert len(waits.delays) == 1 and 115 <= waits.delays[0] <= 121

    server.set_fault("m.onnx", status=503, retry_after="100000")
    waits = Waits()
    downloader(waits, max_retry_after_s=60).fetch(url, tmp_path / "m2.onnx", max_bytes=2 * MiB)
    assert waits.delays == [60.0]


def test_5xx_without_retry_after_backs_off_then_gives_up(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", status=502, status_times=None)
    waits = Waits()
    d = Downloader(
        DownloadPolicy(retries=4, backoff_min_s=0.5, backoff_max_s=3), wait=waits, rand=lambda: 1.0
    )
    with pytest.raises(TransientError, match=r"failed after 5 attempts; last error: HTTP 502 Bad Gateway"):
        d.fetch(url, tmp_path / "m.onnx", max_bytes=2 * MiB)
    assert waits.delays == [0.5, 1.0, 2.0, 3.0]
    assert server.stats("m.onnx")["requests"] == 5


@pytest.mark.parametrize("status", [404, 403, 401, 410])
def test_client_errors_are_not_retried(server: BundleServer, tmp_path: Path, status: int) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", status=status)
    waits = Waits()
    with pytest.raises(BundleError, match=f"the job's manifest_url {url} returned HTTP {status}") as info:
        downloader(waits).fetch(url, tmp_path / "m.onnx", max_bytes=2 * MiB, what="the job's manifest_url")
    assert not isinstance(info.value, VerificationError)
    assert waits.delays == [] and server.stats("m.onnx")["requests"] == 1


def test_missing_file_is_a_bundle_error(server: BundleServer, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="returned HTTP 404 Not Found"):
        downloader().fetch(server.url("nope.onnx"), tmp_path / "m.onnx", max_bytes=MiB)


def test_read_timeout_is_retried_then_transient(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("slow.onnx", b"x" * 1000)
    server.set_fault("slow.onnx", slow=1)  # one byte per second: longer than the read timeout
    waits = Waits()
    dest = tmp_path / "slow.onnx"
    with pytest.raises(TransientError, match=r"failed after 3 attempts; last error: timed out \(ReadTimeout"):
        downloader(waits, read_timeout_s=0.3, retries=2).fetch(url, dest, max_bytes=MiB)
    assert len(waits.delays) == 2
    assert server.stats("slow.onnx")["requests"] == 3
    assert parts(dest)[1].exists()  # kept for a later resume


def test_connection_refused_is_retried_then_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    waits = Waits()
    with pytest.raises(TransientError, match=r"failed after 3 attempts; last error: ConnectError"):
        downloader(waits, retries=2).fetch(f"http://127.0.0.1:{port}/m.onnx", tmp_path / "m", max_bytes=MiB)
    assert len(waits.delays) == 2


def test_stop_during_back_off_keeps_the_part(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    server.set_fault("m.onnx", cut_after=HALF)
    waits = Waits(stop=True)
    dest = tmp_path / "m.onnx"
    with pytest.raises(TransientError, match="download interrupted by a stop"):
        downloader(waits).fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert len(waits.delays) == 1
    part, side = parts(dest)
    assert part.stat().st_size == HALF and side.exists() and not dest.exists()
    downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert server.stats("m.onnx")["ranges"][-1] == f"bytes={HALF}-"


def test_start_delay_uses_rand_and_wait() -> None:
    waits = Waits()
    d = Downloader(DownloadPolicy(start_jitter_s=8.0), wait=waits, rand=lambda: 0.25)
    d.start_delay()
    assert waits.delays == [2.0]
    with pytest.raises(TransientError, match="interrupted by a stop"):
        Downloader(DownloadPolicy(start_jitter_s=8.0), wait=Waits(stop=True), rand=lambda: 0.25).start_delay()
    none = Waits()
    Downloader(DownloadPolicy(), wait=none).start_delay()
    assert none.delays == []


# -- disk errors -----------------------------------------------------------------------------------


class FullDisk(FsOps):
    def fsync(self, fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_transient(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    d = Downloader(DownloadPolicy(), fs=FullDisk(), wait=Waits())
    with pytest.raises(TransientError, match=r"disk error on .*m.onnx.*No space left on device"):
        d.fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert not dest.exists()
    # the sidecar could not be written (its fsync failed too): the next fetch starts afresh
    downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB


def test_fsync_error_at_the_end_keeps_a_complete_part(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    dest = tmp_path / "m.onnx"
    part = parts(dest)[0]

    class FailSecond(FsOps):
        """The part's fsync fails (EIO); the sidecar's and the folder's work."""

        def fsync(self, fd: int) -> None:
            if part.exists() and os.fstat(fd).st_ino == part.stat().st_ino:
                raise OSError(errno.EIO, "Input/output error")
            super().fsync(fd)

    with pytest.raises(TransientError, match=r"disk error on .*m.onnx.part: Input/output error"):
        Downloader(DownloadPolicy(), fs=FailSecond(), wait=Waits()).fetch(
            url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB)
        )
    assert parts(dest)[0].stat().st_size == MiB
    downloader().fetch(url, dest, max_bytes=2 * MiB, expected_size=MiB, sha256=sha(BLOB))
    assert dest.read_bytes() == BLOB
    assert server.stats("m.onnx")["requests"] == 1  # the complete part was verified, not fetched again


def test_unwritable_destination_is_transient(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TransientError, match=r"disk error on .*file"):
        downloader().fetch(url, tmp_path / "file" / "m.onnx", max_bytes=2 * MiB)


# -- fetch_bytes -------------------------------------------------------------------------------------


def test_fetch_bytes(server: BundleServer) -> None:
    manifest = json.dumps({"name": "m", "version": 3}).encode()
    url = server.put("manifest.json", manifest)
    d = downloader()
    assert d.fetch_bytes(url, max_bytes=16384, sha256=sha(manifest)) == manifest
    with pytest.raises(VerificationError, match="sha256"):
        d.fetch_bytes(url, max_bytes=16384, sha256=sha(b"other"))
    with pytest.raises(VerificationError, match="more than the limit of 10 bytes"):
        d.fetch_bytes(url, max_bytes=10)
    with pytest.raises(BundleError, match=r"the job's manifest_url .* returned HTTP 404"):
        d.fetch_bytes(server.url("gone.json"), max_bytes=16384, what="the job's manifest_url")


def test_fetch_bytes_resumes_after_a_cut(server: BundleServer) -> None:
    url = server.put("big.json", BLOB)
    server.set_fault("big.json", cut_after=HALF)
    assert downloader().fetch_bytes(url, max_bytes=2 * MiB, sha256=sha(BLOB)) == BLOB
    st = server.stats("big.json")
    assert st["ranges"] == [None, f"bytes={HALF}-"] and st["bytes_served"] == MiB


def test_fetch_bytes_retries_5xx(server: BundleServer) -> None:
    url = server.put("manifest.sig", b"{}")
    server.set_fault("manifest.sig", status=503, retry_after="1")
    waits = Waits()
    assert downloader(waits).fetch_bytes(url, max_bytes=100) == b"{}"
    assert waits.delays == [1.0]


# -- progress ------------------------------------------------------------------------------------------


def test_progress_is_reported_up_to_the_total(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    calls: list[tuple[str, int, int | None]] = []
    ticks = itertools.count()
    d = Downloader(
        DownloadPolicy(), wait=Waits(), progress=lambda *a: calls.append(a), clock=lambda: float(next(ticks))
    )
    d.fetch(url, tmp_path / "m.onnx", max_bytes=2 * MiB)
    done = [c[1] for c in calls]
    assert len(calls) > 2 and done == sorted(done)
    assert calls[-1] == (url, MiB, MiB) and {c[2] for c in calls} == {MiB}


def test_progress_is_throttled(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    calls: list[tuple[str, int, int | None]] = []
    Downloader(DownloadPolicy(), wait=Waits(), progress=lambda *a: calls.append(a), clock=lambda: 5.0).fetch(
        url, tmp_path / "m.onnx", max_bytes=2 * MiB
    )
    assert calls == [(url, 0, MiB), (url, MiB, MiB)]  # the first and the final report only


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_draws_one_line(server: BundleServer, tmp_path: Path) -> None:
    url = server.put("m.onnx", BLOB)
    out = Tty()
    ticks = itertools.count()
    clock: Callable[[], float] = lambda: float(next(ticks))  # noqa: E731
    bar = TerminalProgress(out, clock=clock)
    Downloader(DownloadPolicy(), wait=Waits(), progress=bar, clock=clock).fetch(
        url, tmp_path / "m.onnx", max_bytes=2 * MiB
    )
    text = out.getvalue()
    assert text.startswith(TerminalProgress.CLEAR + "m.onnx  [")
    assert "100%  1.0 MB / 1.0 MB" in text and text.endswith("\n") and text.count("\n") == 1

    piped = io.StringIO()
    TerminalProgress(piped)(url, 10, 100)
    assert piped.getvalue() == ""


# -- edge cases with a mock transport --------------------------------------------------------------


class Body(httpx.SyncByteStream):
    """A response body that is streamed (``content=`` would be read before the downloader sees it)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


def respond(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, headers={"Content-Length": str(len(data)), **(headers or {})}, stream=Body(data)
    )


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 10-19/20") == (10, 19, 20)
    assert parse_content_range("bytes 10-19/*") == (10, 19, None)
    for bad in ("bytes 10-19/15", "bytes 19-10/20", "items 0-1/2", "bytes */20", None):
        assert parse_content_range(bad) is None


def test_wrong_content_range_start_starts_over(tmp_path: Path) -> None:
    data = b"0123456789" * 100
    seen: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("range"))
        if "range" in req.headers:  # a broken server: answers a range that is not the one asked
            return respond(206, data[:10], {"Content-Range": f"bytes 0-9/{len(data)}"})
        return respond(200, data)

    dest = tmp_path / "m"
    part, side = parts(dest)
    part.write_bytes(data[:500])
    side.write_text(json.dumps({"url": "http://x/m", "sha256": sha(data), "size": len(data)}))
    d = Downloader(transport=httpx.MockTransport(handler), wait=Waits())
    res = d.fetch("http://x/m", dest, max_bytes=10_000, expected_size=len(data), sha256=sha(data))
    assert dest.read_bytes() == data and not res.resumed and seen == ["bytes=500-", None]


def test_unexpected_status_and_bad_urls_are_bundle_errors(tmp_path: Path) -> None:
    d = Downloader(transport=httpx.MockTransport(lambda r: httpx.Response(204)), wait=Waits())
    with pytest.raises(BundleError, match="returned HTTP 204"):
        d.fetch_bytes("http://x/m", max_bytes=10)
    with pytest.raises(BundleError, match="not an http:// or https:// URL"):
        d.fetch("ftp://x/m", tmp_path / "m", max_bytes=10)
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        d.fetch("http://x/m", tmp_path / "m", max_bytes=10, sha256="abc")


def test_redirects_are_followed(tmp_path: Path) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/old":
            return httpx.Response(302, headers={"Location": "http://x/new"})
        assert req.headers["user-agent"].startswith("edge-agent/")
        assert req.headers["accept-encoding"] == "identity"
        return respond(200, b"payload")

    d = Downloader(transport=httpx.MockTransport(handler), wait=Waits())
    assert d.fetch_bytes("http://x/old", max_bytes=100) == b"payload"
