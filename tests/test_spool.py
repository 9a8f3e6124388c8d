"""monitoring.spool: put/pending/mark/park/status/purge, the quota (oldest dropped and counted),
a SIGKILL at every fsync and rename of a put or a removal (a real one, in a child process)
followed by a fresh open, a failure at every step, a corrupt sidecar, a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inference.errors import ConfigError, TransientError
from inference.fsio import FsOps
from monitoring.spool import DB_NAME, QUARANTINE, Spool


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


class FaultFs(FsOps):
    """Raises ``OSError(err)`` on the ``fail_at``-th fsync or rename (1-based); 0 never."""

    def __init__(self, fail_at: int = 0, err: int = errno.EIO) -> None:
        self.fail_at = fail_at
        self.err = err
        self.calls = 0

    def _tick(self) -> None:
        self.calls += 1
        if self.fail_at and self.calls == self.fail_at:
            raise OSError(self.err, f"injected {errno.errorcode[self.err]} at #{self.calls}")

    def fsync(self, fd: int) -> None:
        self._tick()
        super().fsync(fd)

    def rename(self, src: Path, dst: Path) -> None:
        self._tick()
        super().rename(src, dst)


def jpeg(i: int, size: int = 100) -> bytes:
    return b"\xff\xd8" + i.to_bytes(4, "big") + b"x" * size


def open_spool(root: Path, **kw: object) -> Spool:
    args: dict[str, object] = {"max_bytes": 1 << 20, "max_items": 100, "clock": Clock()}
    args.update(kw)
    return Spool(root, **args)  # type: ignore[arg-type]


def consistent(root: Path) -> set[str]:
    """Open a fresh spool on ``root`` and check every row has both files and every file a row;
    returns the sha256s in the spool."""
    with open_spool(root, max_bytes=1 << 30, max_items=10**6) as spool:
        rows = {r[0] for r in spool.db.conn.execute("SELECT sha256 FROM items")}
        st = spool.status()
    names = {p.name for p in root.iterdir() if p.is_file()} - {
        DB_NAME,
        f"{DB_NAME}-wal",
        f"{DB_NAME}-shm",
        ".lock",
    }
    assert not [n for n in names if n.endswith(".tmp")]
    files = {n.split(".")[0] for n in names}
    assert {f"{s}.jpg" for s in files} | {f"{s}.json" for s in files} == names
    assert files == rows
    assert st["items"] == len(rows)
    return rows


def test_put_pending_mark_park_status_purge(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    a = spool.put(jpeg(1), {"strategy": "unsure", "model": "det"})
    b = spool.put(jpeg(2), {"strategy": "audit"})
    c = spool.put(jpeg(3), {"strategy": "unsure"})
    assert a and b and c
    assert a.sha256 == hashlib.sha256(jpeg(1)).hexdigest()
    assert a.jpeg_path.read_bytes() == jpeg(1)
    side = json.loads(a.meta_path.read_text())
    assert side["model"] == "det" and side["sha256"] == a.sha256 and side["strategy"] == "unsure"
    assert a.bytes == len(jpeg(1)) + a.meta_path.stat().st_size
    # the same bytes again: nothing new
    again = spool.put(jpeg(1), {"strategy": "other"})
    assert again == a
    assert [i.sha256 for i in spool.pending(10)] == [a.sha256, b.sha256, c.sha256]
    assert [i.sha256 for i in spool.pending(2)] == [a.sha256, b.sha256]

    assert spool.park(b.sha256, "HTTP 403")
    assert not spool.park("0" * 64, "nope")
    assert [i.sha256 for i in spool.pending(10)] == [a.sha256, c.sha256]
    parked = spool.get(b.sha256)
    assert parked and parked.parked and parked.reason == "HTTP 403"

    st = spool.status()
    assert st["items"] == 3 and st["pending"] == 2 and st["parked"] == 1
    assert st["bytes"] == a.bytes + b.bytes + c.bytes and st["parked_bytes"] == b.bytes
    assert st["by_strategy"] == {
        "audit": {"items": 1, "bytes": b.bytes},
        "unsure": {"items": 2, "bytes": a.bytes + c.bytes},
    }
    assert (st["dropped"], st["refused"], st["quarantined"]) == (0, 0, 0)

    assert spool.mark_uploaded(a.sha256)
    assert not a.jpeg_path.exists() and not a.meta_path.exists()
    assert not spool.mark_uploaded(a.sha256)
    assert [i.sha256 for i in spool.pending(10)] == [c.sha256]
    spool.close()
    assert consistent(tmp_path / "spool") == {b.sha256, c.sha256}

    spool = open_spool(tmp_path / "spool")
    assert spool.get(b.sha256) is not None and spool.get(b.sha256).parked  # type: ignore[union-attr]
    assert spool.purge() == 2
    assert spool.status()["items"] == 0
    spool.close()
    assert consistent(tmp_path / "spool") == set()


def test_bad_quota_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_items"):
        open_spool(tmp_path, max_items=0)
    with pytest.raises(ConfigError, match="max_bytes"):
        open_spool(tmp_path, max_bytes=0)


def test_quota_by_items_drops_the_oldest_not_parked_first_and_counts(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_items=3)
    items = [spool.put(jpeg(i), {"strategy": "s"}) for i in range(3)]
    assert all(items)
    spool.park(items[0].sha256, "HTTP 400")  # type: ignore[union-attr]
    d = spool.put(jpeg(3), {"strategy": "s"})
    assert d is not None
    shas = {i.sha256 for i in items if i}
    left = {i.sha256 for i in spool.pending(10)}
    assert left == {items[2].sha256, d.sha256}  # type: ignore[union-attr]
    assert not items[1].jpeg_path.exists()  # type: ignore[union-attr]
    assert spool.status()["dropped"] == 1
    # all parked: the oldest parked one goes
    spool.park(items[2].sha256, "HTTP 400")  # type: ignore[union-attr]
    spool.park(d.sha256, "HTTP 400")
    spool.put(jpeg(4), {"strategy": "s"})
    assert spool.get(items[2].sha256) is not None  # type: ignore[union-attr]
    assert spool.get(items[0].sha256) is None  # type: ignore[union-attr]
    assert spool.status()["dropped"] == 2 and spool.status()["items"] == 3
    spool.close()
    assert len(consistent(tmp_path) & shas) == 1
    # the counters survive a restart
    with open_spool(tmp_path, max_items=3) as again:
        assert again.status()["dropped"] == 2


def test_quota_by_bytes_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    probe = open_spool(tmp_path / "probe")
    size = probe.put(jpeg(0, 1000), {"strategy": "s"}).bytes  # type: ignore[union-attr]
    probe.close()
    spool = open_spool(tmp_path / "s", max_bytes=size * 3 + size // 2, max_items=100)
    items = [spool.put(jpeg(i, 1000), {"strategy": "s"}) for i in range(5)]
    assert all(items)
    assert [i.sha256 for i in spool.pending(10)] == [i.sha256 for i in items[2:]]  # type: ignore[union-attr]
    st = spool.status()
    assert st["dropped"] == 2 and st["items"] == 3 and st["bytes"] <= spool.max_bytes
    # a frame bigger than the whole quota is refused, nothing dropped for it
    assert spool.put(jpeg(99, size * 4), {"strategy": "s"}) is None
    st = spool.status()
    assert st["refused"] == 1 and st["items"] == 3 and st["dropped"] == 2
    spool.close()
    consistent(tmp_path / "s")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_failure_at_every_step_of_a_put_leaves_nothing(tmp_path: Path, err: int) -> None:
    probe = FaultFs()
    with open_spool(tmp_path / "probe", fs=probe) as s:
        before = probe.calls
        s.put(jpeg(1), {})
        steps = probe.calls - before
    assert steps >= 6  # fsync + rename + fsync dir, twice
    for k in range(1, steps + 1):
        root = tmp_path / f"{err}-{k}"
        fs = FaultFs(err=err)
        spool = open_spool(root, fs=fs)
        kept = spool.put(jpeg(0), {"strategy": "s"})
        assert kept is not None
        fs.fail_at = fs.calls + k
        with pytest.raises(TransientError) as info:
            spool.put(jpeg(1), {"strategy": "s"})
        assert str(root) in str(info.value)
        if err == errno.ENOSPC:
            assert "disk full" in str(info.value)
        sha = hashlib.sha256(jpeg(1)).hexdigest()
        assert not (root / f"{sha}.jpg").exists() and not (root / f"{sha}.json").exists()
        assert spool.get(sha) is None
        st = spool.status()
        assert st["refused"] == 1 and st["items"] == 1
        # the loop runs on: the next put works
        fs.fail_at = 0
        assert spool.put(jpeg(1), {"strategy": "s"}) is not None
        spool.close()
        assert consistent(root) == {kept.sha256, sha}


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from inference.fsio import FsOps
    from monitoring.spool import Spool

    root, kill_at, action = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    class KillFs(FsOps):
        calls = 0
        armed = False
        def _tick(self):
            if self.armed:
                self.calls += 1
                if self.calls == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        def fsync(self, fd):
            self._tick(); super().fsync(fd)
        def rename(self, src, dst):
            self._tick(); super().rename(src, dst)

    fs = KillFs()
    spool = Spool(root, max_bytes=10**6, max_items=2, fs=fs)
    if action == "put":
        fs.armed = True
        spool.put(b"new-frame" * 50, {"strategy": "s"})  # over max_items: drops the oldest first
    else:
        sha = spool.pending(1)[0].sha256
        fs.armed = True
        spool.mark_uploaded(sha)
    print("calls", fs.calls)
    """
)


def _run_child(root: Path, kill_at: int, action: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(kill_at), action],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("action", ["put", "mark_uploaded"])
def test_a_sigkill_at_every_step_leaves_a_consistent_spool(tmp_path: Path, action: str) -> None:
    def seeded(name: str) -> Path:
        root = tmp_path / name
        with open_spool(root, max_items=2) as s:
            s.put(jpeg(1), {"strategy": "s"})
            s.put(jpeg(2), {"strategy": "s"})
        return root

    done = _run_child(seeded("probe"), 0, action)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split()[-1])
    assert steps >= (7 if action == "put" else 1)  # put: a drop, then two writes
    for k in range(1, steps + 1):
        root = seeded(f"kill-{k}")
        killed = _run_child(root, k, action)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = consistent(root)
        assert len(left) <= 2


def test_leftover_temp_files_and_orphans_are_removed_and_a_lost_row_reindexed(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    a = spool.put(jpeg(1), {"strategy": "s"})
    b = spool.put(jpeg(2), {"strategy": "s"})
    c = spool.put(jpeg(3), {"strategy": "s"})
    assert a and b and c
    spool.db.conn.execute("DELETE FROM items WHERE sha256 = ?", (a.sha256,))  # a row lost to a power cut
    spool.db.conn.commit()
    spool.close()
    b.meta_path.unlink()  # a removal cut short after the sidecar
    (tmp_path / f".{'d' * 64}.jpg.abc.tmp").write_bytes(b"half")
    (tmp_path / f"{'e' * 64}.jpg").write_bytes(b"a put cut short before its sidecar")
    spool = open_spool(tmp_path)
    rep = spool.last_repair
    assert rep["temp_files"] == 1 and rep["reindexed"] == 1 and rep["rows_removed"] == 1
    assert rep["orphan_files"] == 2 and rep["quarantined"] == []
    assert [i.sha256 for i in spool.pending(10)] == [a.sha256, c.sha256]
    spool.close()
    assert consistent(tmp_path) == {a.sha256, c.sha256}


def test_a_corrupt_sidecar_is_quarantined_and_reported(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    a = spool.put(jpeg(1), {"strategy": "s"})
    b = spool.put(jpeg(2), {"strategy": "s"})
    assert a and b
    spool.close()
    a.meta_path.write_bytes(b'{"sha256": "trunc')
    # an orphan whose JPEG does not hash to its name
    fake = "f" * 64
    (tmp_path / f"{fake}.jpg").write_bytes(b"not these bytes")
    (tmp_path / f"{fake}.json").write_text(json.dumps({"sha256": fake, "spooled_at": 1.0}))
    spool = open_spool(tmp_path)
    assert spool.last_repair["quarantined"] == sorted([a.sha256, fake])
    q = tmp_path / QUARANTINE
    assert {p.name for p in q.iterdir()} == {
        f"{a.sha256}.jpg",
        f"{a.sha256}.json",
        f"{fake}.jpg",
        f"{fake}.json",
    }
    assert [i.sha256 for i in spool.pending(10)] == [b.sha256]
    assert spool.status()["quarantined"] == 2
    # the same content may be spooled again
    assert spool.put(jpeg(1), {"strategy": "s"}) is not None
    spool.close()
    assert consistent(tmp_path) == {a.sha256, b.sha256}


def test_quarantine_moves_the_files_drops_the_row_and_counts(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    a = spool.put(jpeg(1), {"strategy": "s"})
    b = spool.put(jpeg(2), {"strategy": "s"})
    assert a and b
    assert spool.quarantine(a.sha256, "digest mismatch")
    b.jpeg_path.unlink()  # a file lost: what is left goes to quarantine/
    assert spool.quarantine(b.sha256, "JPEG missing")
    assert not spool.quarantine(b.sha256, "again") and not spool.quarantine("0" * 64, "unknown")
    assert {p.name for p in (tmp_path / QUARANTINE).iterdir()} == {
        f"{a.sha256}.jpg",
        f"{a.sha256}.json",
        f"{b.sha256}.json",
    }
    assert spool.pending(10) == [] and spool.status()["quarantined"] == 2
    spool.close()
    spool = open_spool(tmp_path)  # counted across a restart, nothing to repair
    assert spool.status()["quarantined"] == 2 and spool.last_repair["quarantined"] == []
    assert spool.put(jpeg(1), {"strategy": "s"}) is not None  # the same content may come again
    spool.close()
    assert consistent(tmp_path) == {a.sha256}


def test_a_full_disk_in_sqlite_is_transient_and_leaves_no_files(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    assert spool.put(jpeg(1), {}) is not None
    page = spool.db.conn.execute("PRAGMA page_count").fetchone()[0]
    spool.db.conn.execute(f"PRAGMA max_page_count={page}")  # the database cannot grow: SQLITE_FULL
    with pytest.raises(TransientError):
        for i in range(2, 200):
            spool.put(jpeg(i, 2000), {"strategy": "x" * 500})
    names = {p.name for p in tmp_path.iterdir() if p.name.endswith((".jpg", ".json"))}
    assert len(names) == 2 * spool.status()["items"]
    assert spool.status()["refused"] >= 1
    spool.close()
    consistent(tmp_path)


def test_a_removal_whose_folder_fsync_fails_leaves_no_row_behind(tmp_path: Path) -> None:
    fs = FaultFs(err=errno.EIO)
    spool = open_spool(tmp_path, fs=fs, max_items=2)
    a = spool.put(jpeg(1), {"strategy": "s"})
    b = spool.put(jpeg(2), {"strategy": "s"})
    assert a and b
    fs.fail_at = fs.calls + 1  # the folder fsync after the uploaded files are unlinked
    with pytest.raises(TransientError, match="removing uploaded frame"):
        spool.mark_uploaded(a.sha256)
    assert spool.get(a.sha256) is None and not a.jpeg_path.exists()
    spool.put(jpeg(3), {"strategy": "s"})
    fs.fail_at = fs.calls + 1  # the folder fsync of the drop that makes room
    with pytest.raises(TransientError):
        spool.put(jpeg(4), {"strategy": "s"})
    assert spool.get(b.sha256) is None and not b.jpeg_path.exists()
    st = spool.status()
    assert st["dropped"] == 1 and st["refused"] == 1 and st["items"] == 1
    assert [i.jpeg_path.exists() for i in spool.pending(10)] == [True]
    spool.close()
    assert len(consistent(tmp_path)) == 1


def test_a_second_process_cannot_open_the_spool(tmp_path: Path) -> None:
    """Its repair would delete the first one's puts in progress: one holder at a time (flock)."""
    from monitoring.spool import SpoolBusy

    first = open_spool(tmp_path / "spool")
    with pytest.raises(SpoolBusy, match="in use by another process"):
        open_spool(tmp_path / "spool")
    first.close()
    open_spool(tmp_path / "spool").close()


def test_unpark_offers_parked_items_again(tmp_path: Path) -> None:
    with open_spool(tmp_path / "spool") as spool:
        a = spool.put(jpeg(1), {"strategy": "s"})
        assert a is not None and spool.park(a.sha256, "HTTP 404 not found")
        assert spool.pending() == []
        assert spool.unpark() == 1
        assert [i.sha256 for i in spool.pending()] == [a.sha256] and not spool.pending()[0].parked
