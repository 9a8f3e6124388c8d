"""DropFolderWatcher: real watchdog on a temp folder, plus the debounce logic on a fake clock."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ota.drop_folder import DropFolderWatcher
from tests.fixtures.ota import make_bundle, manifest_for, tiny_onnx

DEBOUNCE = 0.2


class Collector:
    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.sizes: list[int] = []
        self.cond = threading.Condition()

    def __call__(self, path: Path) -> None:
        with self.cond:
            self.paths.append(path)
            self.sizes.append(path.stat().st_size if path.is_file() else -1)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.paths) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.paths)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    d = tmp_path / "incoming"
    d.mkdir()
    return d


@pytest.fixture
def watch(incoming: Path) -> Iterator[tuple[DropFolderWatcher, Collector]]:
    got = Collector()
    w = DropFolderWatcher(incoming, got, debounce=DEBOUNCE, rescan=30.0)
    w.start()
    try:
        yield w, got
    finally:
        w.stop()


def driven(incoming: Path, got: Collector) -> tuple[DropFolderWatcher, Callable[[float], list[Path]]]:
    """A watcher with no thread: the test rescans and ticks it at the ``now`` it chooses, so
    "nothing reported yet" is a fact about the watcher's rules, not about how fast a machine is."""
    w = DropFolderWatcher(incoming, got, debounce=DEBOUNCE, use_events=False)

    def at(now: float) -> list[Path]:
        w.rescan_now()
        return w.tick(now)

    return w, at


def test_bundle_copied_file_by_file_manifest_last(incoming: Path) -> None:
    got = Collector()
    _, at = driven(incoming, got)
    data = tiny_onnx("a")
    b = incoming / "det-v1"
    b.mkdir()
    with open(b / "model.onnx", "wb") as fh:
        fh.write(data[:10])
        fh.flush()
        assert at(0.0) == [] and at(10.0) == []  # long past the debounce: still no manifest
        fh.write(data[10:])
    (b / "golden").mkdir()
    (b / "golden" / "0_in.npy").write_bytes(b"x" * 10)
    assert at(20.0) == [] and at(30.0) == []  # no manifest yet
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 1, data)))
    assert at(40.0) == []  # complete, but not yet stable for the debounce
    assert at(41.0) == [b]
    assert at(50.0) == [] and at(60.0) == []  # reported once
    assert got.paths == [b]


def test_half_written_model_is_not_reported_until_complete(incoming: Path) -> None:
    got = Collector()
    _, at = driven(incoming, got)
    data = tiny_onnx("b")
    b = incoming / "det-v2"
    b.mkdir()
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 2, data)))  # manifest first
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    assert at(0.0) == [] and at(10.0) == [] and at(20.0) == []
    with open(b / "model.onnx", "ab") as fh:
        fh.write(data[len(data) // 2 :])
    assert at(30.0) == [] and at(31.0) == [b]


def test_missing_golden_file_holds_the_bundle_back(incoming: Path) -> None:
    got = Collector()
    _, at = driven(incoming, got)
    data = tiny_onnx("g")
    golden = {"golden": [{"input": "golden/0_in.npy", "outputs": ["golden/0_out0.npy"]}]}
    b = make_bundle(incoming, "det", 3, data=data, manifest=manifest_for("det", 3, data, validation=golden))
    assert at(0.0) == [] and at(10.0) == []
    (b / "golden").mkdir()
    (b / "golden" / "0_in.npy").write_bytes(b"in")
    (b / "golden" / "0_out0.npy").write_bytes(b"out")
    assert at(20.0) == [] and at(21.0) == [b]


def test_a_candidate_the_manager_could_not_queue_is_offered_again(incoming: Path) -> None:
    """A full disk under update-state.json: the candidate is not lost, the next rescan retries."""
    from inference.errors import TransientError

    offered: list[Path] = []

    def on_candidate(path: Path) -> None:
        offered.append(path)
        if len(offered) == 1:
            raise TransientError("cannot persist the update state: disk full (injected)")

    w = DropFolderWatcher(incoming, on_candidate, debounce=DEBOUNCE, use_events=False)
    b = make_bundle(incoming, "det", 5)
    w.rescan_now()
    w.tick(0.0)
    w.rescan_now()
    assert w.tick(1.0) == [b] and offered == [b]  # refused: not kept as reported
    w.rescan_now()
    w.tick(2.0)
    w.rescan_now()
    assert w.tick(3.0) == [b] and offered == [b, b]
    w.rescan_now()
    assert w.tick(10.0) == [] and offered == [b, b]  # accepted the second time: once


def test_folder_moved_in_by_rename(watch: tuple[DropFolderWatcher, Collector], tmp_path: Path) -> None:
    _, got = watch
    b = make_bundle(tmp_path / "outside", "det", 4)
    os.rename(b, tmp_path / "incoming" / "det-v4")
    assert got.wait_for(1) == [tmp_path / "incoming" / "det-v4"]


def test_bare_model_reported_only_once_its_size_is_stable(
    watch: tuple[DropFolderWatcher, Collector], incoming: Path
) -> None:
    _, got = watch
    data = tiny_onnx("c") * 4
    f = incoming / "plain.onnx"
    step = len(data) // 8
    with open(f, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(DEBOUNCE / 5)
    assert got.wait_for(1) == [f]
    assert got.sizes == [len(data)]


def test_tar_gz_reported(watch: tuple[DropFolderWatcher, Collector], incoming: Path) -> None:
    _, got = watch
    (incoming / "bundle.tar.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)
    assert got.wait_for(1) == [incoming / "bundle.tar.gz"]


def test_rescan_finds_what_was_there_before_start(incoming: Path) -> None:
    b = make_bundle(incoming, "det", 5)
    got = Collector()
    with DropFolderWatcher(incoming, got, debounce=DEBOUNCE, rescan=30.0):
        assert got.wait_for(1) == [b]


def test_periodic_rescan_without_events(incoming: Path) -> None:
    got = Collector()
    with DropFolderWatcher(incoming, got, debounce=DEBOUNCE, rescan=0.2, use_events=False) as w:
        assert w.observer_kind == "none"
        time.sleep(0.1)
        b = make_bundle(incoming, "det", 6)
        assert got.wait_for(1) == [b]


def test_polling_observer(incoming: Path) -> None:
    got = Collector()
    with DropFolderWatcher(
        incoming, got, debounce=DEBOUNCE, rescan=30.0, polling=True, poll_interval=0.1
    ) as w:
        assert w.observer_kind == "PollingObserver"
        b = make_bundle(incoming, "det", 7)
        assert got.wait_for(1) == [b]


def test_changed_bundle_is_reported_again(incoming: Path) -> None:
    got = Collector()
    _, at = driven(incoming, got)
    b = make_bundle(incoming, "det", 8)
    assert at(0.0) == [] and at(1.0) == [b]
    assert at(10.0) == [] and at(20.0) == []  # unchanged: not again
    data = tiny_onnx("changed") + b"\x00" * 7
    (b / "model.onnx").write_bytes(data)
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 8, data)))
    assert at(30.0) == [] and at(31.0) == [b]
    assert got.paths == [b, b]


def test_hidden_and_temp_files_are_ignored(incoming: Path) -> None:
    got = Collector()
    _, at = driven(incoming, got)
    data = tiny_onnx("h")
    (incoming / ".hidden.onnx").write_bytes(data)
    (incoming / "x.onnx.part").write_bytes(data)
    (incoming / "y.tmp").write_bytes(data)
    make_bundle(incoming, "det", 9, folder=".staging-bundle")
    (incoming / "notes.txt").write_text("hello")
    assert at(0.0) == [] and at(10.0) == [] and at(20.0) == []
    os.rename(incoming / "x.onnx.part", incoming / "x.onnx")  # the usual "rename when done"
    assert at(30.0) == [] and at(31.0) == [incoming / "x.onnx"]


def test_callback_errors_do_not_kill_the_watcher(incoming: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Path] = []

    def cb(path: Path) -> None:
        seen.append(path)
        if len(seen) == 1:
            raise RuntimeError("consumer blew up")

    with caplog.at_level(logging.ERROR), DropFolderWatcher(incoming, cb, debounce=DEBOUNCE, rescan=30.0):
        make_bundle(incoming, "det", 10)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        make_bundle(incoming, "det", 11)
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert sorted(p.name for p in seen) == ["det-v10", "det-v11"]
    assert "consumer blew up" in caplog.text


def test_stop_is_clean_and_idempotent(incoming: Path) -> None:
    w = DropFolderWatcher(incoming, lambda p: None, debounce=DEBOUNCE)
    w.start()
    w.start()
    t0 = time.monotonic()
    w.stop()
    w.stop()
    assert time.monotonic() - t0 < 2
    assert not any(t.name == "drop-folder-watcher" for t in threading.enumerate())


# -- the debounce logic, deterministic (no threads, fake clock) -------------------------------


def test_debounce_on_a_fake_clock(incoming: Path) -> None:
    got: list[Path] = []
    w = DropFolderWatcher(incoming, got.append, debounce=1.0)
    f = incoming / "m.tflite"
    f.write_bytes(b"a" * 10)
    w._mark_all()
    assert w.tick(0.0) == []
    assert w.tick(0.5) == []
    with open(f, "ab") as fh:  # still growing at the debounce deadline
        fh.write(b"b" * 10)
    assert w.tick(1.0) == []  # changed: the clock restarts
    assert w.tick(1.9) == []
    assert w.tick(2.0) == [f]
    w._mark_all()
    assert w.tick(5.0) == []  # reported once
    f.unlink()
    w._mark_all()
    assert w.tick(6.0) == []
    f.write_bytes(b"a" * 10)  # dropped again after removal: reported again
    w._mark_all()
    assert w.tick(7.0) == []
    assert w.tick(8.0) == [f]
    assert got == [f, f]


def test_empty_file_and_symlink_are_not_candidates(incoming: Path, tmp_path: Path) -> None:
    w = DropFolderWatcher(incoming, lambda p: None, debounce=0.0)
    (incoming / "empty.onnx").write_bytes(b"")
    (tmp_path / "real.onnx").write_bytes(b"x")
    (incoming / "link.onnx").symlink_to(tmp_path / "real.onnx")
    w._mark_all()
    assert w.tick(0.0) == []
    assert w.tick(1.0) == []


def test_watcher_feeds_the_store(tmp_path: Path) -> None:
    """Drop folder -> ModelStore: a bad sha256 is rejected, a half-copied bundle waits, then imports."""
    from inference.errors import EdgeAgentError
    from ota.store import ModelStore

    store = ModelStore(tmp_path / "state")
    outcomes: list[str] = []
    done = threading.Event()

    def on_candidate(path: Path) -> None:
        try:
            v = store.import_bundle(path, f"drop-{path.name}")
            outcomes.append(f"ok {v.name} v{v.version}")
        except EdgeAgentError as exc:
            outcomes.append(f"rejected {type(exc).__name__}")
        if len(outcomes) == 2:
            done.set()

    data = tiny_onnx("w")
    bad = manifest_for("det", 1, data)
    bad["sha256"] = "0" * 64
    make_bundle(tmp_path / "out", "det", 1, data=data, manifest=bad)
    with DropFolderWatcher(store.incoming_dir, on_candidate, debounce=DEBOUNCE, rescan=30.0):
        os.rename(tmp_path / "out" / "det-v1", store.incoming_dir / "det-v1")
        good = store.incoming_dir / "det-v2"
        good.mkdir()
        data2 = tiny_onnx("w2")
        (good / "manifest.json").write_text(json.dumps(manifest_for("det", 2, data2)))
        (good / "model.onnx").write_bytes(data2[:20])
        time.sleep(DEBOUNCE * 3)  # a pause mid-write: the half model must not be taken
        with open(good / "model.onnx", "ab") as fh:
            fh.write(data2[20:])
        assert done.wait(5)
    assert sorted(outcomes) == ["ok det v2", "rejected VerificationError"]
    assert [v.version for v in store.versions()] == [2]
    assert list(store.staging_dir.iterdir()) == []
