"""DropFolderWatcher: real watchdog on a temp folder, plus the debounce logic on a fake clock."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
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


def settle() -> None:
    time.sleep(DEBOUNCE * 3)


def test_bundle_copied_file_by_file_manifest_last(
    watch: tuple[DropFolderWatcher, Collector], incoming: Path
) -> None:
    _, got = watch
    data = tiny_onnx("a")
    b = incoming / "det-v1"
    b.mkdir()
    with open(b / "model.onnx", "wb") as fh:
        fh.write(data[:10])
        fh.flush()
        settle()
        fh.write(data[10:])
    (b / "golden").mkdir()
    (b / "golden" / "0_in.npy").write_bytes(b"x" * 10)
    settle()
    assert got.paths == []  # no manifest yet
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 1, data)))
    assert got.wait_for(1) == [b]
    settle()
    assert got.paths == [b]  # once


def test_half_written_model_is_not_reported_until_complete(
    watch: tuple[DropFolderWatcher, Collector], incoming: Path
) -> None:
    _, got = watch
    data = tiny_onnx("b")
    b = incoming / "det-v2"
    b.mkdir()
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 2, data)))  # manifest first
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    settle()
    settle()
    assert got.paths == []
    with open(b / "model.onnx", "ab") as fh:
        fh.write(data[len(data) // 2 :])
    assert got.wait_for(1) == [b]


def test_missing_golden_file_holds_the_bundle_back(
    watch: tuple[DropFolderWatcher, Collector], incoming: Path
) -> None:
    _, got = watch
    data = tiny_onnx("g")
    golden = {"golden": [{"input": "golden/0_in.npy", "outputs": ["golden/0_out0.npy"]}]}
    b = make_bundle(incoming, "det", 3, data=data, manifest=manifest_for("det", 3, data, validation=golden))
    settle()
    assert got.paths == []
    (b / "golden").mkdir()
    (b / "golden" / "0_in.npy").write_bytes(b"in")
    (b / "golden" / "0_out0.npy").write_bytes(b"out")
    assert got.wait_for(1) == [b]


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


def test_changed_bundle_is_reported_again(watch: tuple[DropFolderWatcher, Collector], incoming: Path) -> None:
    _, got = watch
    b = make_bundle(incoming, "det", 8)
    assert got.wait_for(1) == [b]
    settle()
    assert len(got.paths) == 1
    data = tiny_onnx("changed") + b"\x00" * 7
    (b / "model.onnx").write_bytes(data)
    (b / "manifest.json").write_text(json.dumps(manifest_for("det", 8, data)))
    assert got.wait_for(2) == [b, b]


def test_hidden_and_temp_files_are_ignored(
    watch: tuple[DropFolderWatcher, Collector], incoming: Path
) -> None:
    _, got = watch
    data = tiny_onnx("h")
    (incoming / ".hidden.onnx").write_bytes(data)
    (incoming / "x.onnx.part").write_bytes(data)
    (incoming / "y.tmp").write_bytes(data)
    make_bundle(incoming, "det", 9, folder=".staging-bundle")
    (incoming / "notes.txt").write_text("hello")
    settle()
    settle()
    assert got.paths == []
    os.rename(incoming / "x.onnx.part", incoming / "x.onnx")  # the usual "rename when done"
    assert got.wait_for(1) == [incoming / "x.onnx"]


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
        settle()
        with open(good / "model.onnx", "ab") as fh:
            fh.write(data2[20:])
        assert done.wait(5)
    assert sorted(outcomes) == ["ok det v2", "rejected VerificationError"]
    assert [v.version for v in store.versions()] == [2]
    assert list(store.staging_dir.iterdir()) == []
