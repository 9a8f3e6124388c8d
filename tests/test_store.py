"""ModelStore: imports, pointers, GC, pin, unsafe archives, and fault injection on every fsync/rename."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference.bundle import open_bundle
from inference.errors import BundleError, TransientError, VerificationError
from ota.store import ModelStore, StoredVersion
from tests.fixtures.ota import FaultFs, make_bundle, make_tar, manifest_for, tiny_onnx

BundleFactory = Callable[..., Path]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state")


def entries(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) if d.exists() else []


def version_folders(store: ModelStore) -> list[str]:
    return sorted(f"{n.name}/{k.name}" for n in store.models_dir.iterdir() for k in n.iterdir())


def assert_clean(store: ModelStore, expected: list[StoredVersion]) -> None:
    """Only complete, expected versions under models/, nothing in staging/, store reopens."""
    assert version_folders(store) == sorted(f"{v.name}/{v.key}" for v in expected)
    assert list(store.staging_dir.iterdir()) == []
    again = ModelStore(store.root)
    assert again.versions() == sorted(expected, key=lambda v: (v.name, v.version))
    for v in again.versions():
        open_bundle(v.path, verify=True)
    assert again.problems() == []


# -- import -------------------------------------------------------------------------------------


def test_import_folder(store: ModelStore, bundle_factory: BundleFactory) -> None:
    src = bundle_factory("det", 1)
    v = store.import_bundle(src, "job-1")
    assert (v.name, v.version) == ("det", 1)
    assert v.path == store.models_dir / "det" / v.key
    assert v.key == f"1-{v.sha256[:12]}"
    assert entries(v.path) == ["manifest.json", "model.onnx"]
    assert v.release_counter == 1
    assert v.to_ref().to_json() == {
        "name": "det",
        "version": 1,
        "sha256": v.sha256,
        "path": f"models/det/{v.key}",
        "release_counter": 1,
    }
    assert store.versions() == [v]
    assert store.get("det", 1) == v
    assert store.get("det", 2) is None
    assert_clean(store, [v])
    assert src.exists()  # the source is left alone; the caller decides


def test_import_real_bundle_with_golden_pairs(store: ModelStore, tmp_path: Path) -> None:
    from inference.bundle_builder import create_bundle

    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx("golden"))
    image = np.full((8, 8, 3), 128, np.uint8)
    b = create_bundle(model, tmp_path / "src" / "b", name="cls", version=3, golden_images=[image])
    v = store.import_bundle(b.root, "job-g")
    stored = open_bundle(v.path, verify=True)
    assert stored.golden_pairs() and all(p.is_file() for p in stored.golden_pairs()[0][1])
    assert_clean(store, [v])


@pytest.mark.parametrize("top", [True, False])
def test_import_tar_gz(store: ModelStore, bundle_factory: BundleFactory, tmp_path: Path, top: bool) -> None:
    src = make_tar(bundle_factory("det", 2), tmp_path / "det-2.tar.gz", top=top)
    v = store.import_bundle(src, "job-2")
    assert (v.name, v.version) == ("det", 2)
    assert entries(v.path) == ["manifest.json", "model.onnx"]
    assert_clean(store, [v])


def test_import_bare_model(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "Face Detector.onnx"
    src.write_bytes(tiny_onnx("bare"))
    v = store.import_bundle(src, "job-bare")
    assert (v.name, v.version) == ("Face-Detector", 0)
    b = open_bundle(v.path, verify=True)
    assert b.model_path.name == "Face Detector.onnx" and not b.bare
    assert_clean(store, [v])


def test_reimport_is_idempotent(store: ModelStore, bundle_factory: BundleFactory, tmp_path: Path) -> None:
    src = bundle_factory("det", 1)
    v1 = store.import_bundle(src, "a")
    mtime = v1.path.stat().st_mtime_ns
    v2 = store.import_bundle(src, "b")
    v3 = store.import_bundle(make_tar(src, tmp_path / "x.tar.gz"), "c")
    assert v1 == v2 == v3
    assert v1.path.stat().st_mtime_ns == mtime
    assert_clean(store, [v1])


@pytest.mark.parametrize("what", ["sha256", "size"])
def test_wrong_sha256_or_size_is_rejected_and_leaves_nothing(
    store: ModelStore, tmp_path: Path, what: str
) -> None:
    data = tiny_onnx("x")
    m = manifest_for("det", 1, data)
    m[what] = "0" * 64 if what == "sha256" else len(data) + 1
    src = make_bundle(tmp_path / "src", manifest=m, data=data)
    with pytest.raises(VerificationError, match="does not match the manifest"):
        store.import_bundle(src, "bad")
    assert_clean(store, [])
    assert list(store.models_dir.iterdir()) == []


def test_bundle_errors_are_clear(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        store.import_bundle(tmp_path / "nope", "j")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match="neither a bundle folder"):
        store.import_bundle(tmp_path / "notes.txt", "j")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        store.import_bundle(empty, "j")
    with pytest.raises(BundleError, match="not usable as a folder name"):
        store.import_bundle(empty, "../escape")
    assert_clean(store, [])


def test_folder_with_a_symlink_is_rejected(
    store: ModelStore, bundle_factory: BundleFactory, tmp_path: Path
) -> None:
    src = bundle_factory("det", 1)
    (tmp_path / "secret").write_text("s")
    (src / "labels.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(BundleError, match="symbolic link"):
        store.import_bundle(src, "j")
    assert_clean(store, [])


def test_hidden_and_temp_files_are_not_copied(store: ModelStore, bundle_factory: BundleFactory) -> None:
    src = bundle_factory("det", 1)
    (src / ".DS_Store").write_text("x")
    (src / "scratch.tmp").write_text("x")
    v = store.import_bundle(src, "j")
    assert entries(v.path) == ["manifest.json", "model.onnx"]


# -- unsafe archives ----------------------------------------------------------------------------


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _good_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    data = tiny_onnx("t")
    return [
        (tarfile.TarInfo("b/model.onnx"), data),
        (tarfile.TarInfo("b/manifest.json"), json.dumps(manifest_for("det", 1, data)).encode()),
    ]


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


Members = list[tuple[tarfile.TarInfo, bytes | None]]
UNSAFE: dict[str, tuple[Members, str]] = {
    "absolute": ([(_info("/etc/evil"), b"x")], "unsafe member path"),
    "dotdot": ([(_info("b/../../evil"), b"x")], "unsafe member path"),
    "backslash": ([(_info("b\\..\\evil"), b"x")], "unsafe member path"),
    "symlink": ([(_info("b/link", tarfile.SYMTYPE, "/etc/passwd"), None)], "is a link"),
    "hardlink": ([(_info("b/hard", tarfile.LNKTYPE, "b/model.onnx"), None)], "is a link"),
    "fifo": ([(_info("b/fifo", tarfile.FIFOTYPE), None)], "special file"),
    "device": ([(_info("b/dev", tarfile.CHRTYPE), None)], "special file"),
    "duplicate": ([(_info("b/model.onnx"), b"other")], "appears twice"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_tar_members_are_rejected(store: ModelStore, tmp_path: Path, case: str) -> None:
    extra, msg = UNSAFE[case]
    src = _tar_with(tmp_path / "evil.tar.gz", _good_members() + extra)
    with pytest.raises(BundleError, match=msg):
        store.import_bundle(src, "evil")
    assert_clean(store, [])
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_tar_limits(tmp_path: Path) -> None:
    many: Members = [(_info(f"b/golden/{i}.npy"), b"x") for i in range(20)]
    src = _tar_with(tmp_path / "many.tar.gz", _good_members() + many)
    small = ModelStore(tmp_path / "s1", max_members=10)
    with pytest.raises(BundleError, match="more than 10 entries"):
        small.import_bundle(src, "j")
    assert_clean(small, [])
    tiny = ModelStore(tmp_path / "s2", max_bundle_bytes=100)
    with pytest.raises(BundleError, match="more than 100 bytes"):
        tiny.import_bundle(src, "j")
    assert_clean(tiny, [])


def test_truncated_archive(store: ModelStore, bundle_factory: BundleFactory, tmp_path: Path) -> None:
    tar = make_tar(bundle_factory("det", 1), tmp_path / "t.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(BundleError, match="corrupt or truncated"):
        store.import_bundle(cut, "j")
    assert_clean(store, [])


# -- pointers -----------------------------------------------------------------------------------


def _three(store: ModelStore, bundle_factory: BundleFactory) -> list[StoredVersion]:
    return [store.import_bundle(bundle_factory("det", i), f"j{i}") for i in (1, 2, 3)]


def test_set_current_moves_previous(store: ModelStore, bundle_factory: BundleFactory) -> None:
    v1, v2, v3 = _three(store, bundle_factory)
    assert store.current() is None and store.previous() is None
    store.set_current(v1)
    assert (store.current(), store.previous()) == (v1, None)
    store.set_current(v2)
    assert (store.current(), store.previous()) == (v2, v1)
    store.set_current(v2)  # idempotent: previous is not clobbered
    assert (store.current(), store.previous()) == (v2, v1)
    store.set_current(v3)
    assert (store.current(), store.previous()) == (v3, v2)
    assert os.readlink(store.root / "current") == f"models/det/{v3.key}"  # relative target
    assert os.readlink(store.root / "previous") == f"models/det/{v2.key}"


def test_pointer_swap_order_previous_first(store: ModelStore, bundle_factory: BundleFactory) -> None:
    v1, v2, _ = _three(store, bundle_factory)
    store.set_current(v1)
    fs = FaultFs(kinds=("rename",))
    ModelStore(store.root, fs=fs).set_current(v2)
    assert fs.calls == ["rename", "rename"]
    # Fail the second rename (current): previous already names v1, current still v1.
    fs2 = FaultFs(fail_at=2, kinds=("rename",))
    store.set_current(v1)
    with pytest.raises(TransientError):
        ModelStore(store.root, fs=fs2).set_current(v2)
    assert (store.current(), store.previous()) == (v1, v1)


def test_set_current_refuses_unknown_version(store: ModelStore, bundle_factory: BundleFactory) -> None:
    v1 = store.import_bundle(bundle_factory("det", 1), "j")
    ghost = StoredVersion("det", 9, "f" * 64, store.models_dir / "det" / "9-ffffffffffff")
    with pytest.raises(BundleError, match="not a complete version"):
        store.set_current(ghost)
    assert store.current() is None
    store.set_current(v1)


def test_rollback_pointers(store: ModelStore, bundle_factory: BundleFactory) -> None:
    v1, v2, _ = _three(store, bundle_factory)
    with pytest.raises(BundleError, match="no previous version"):
        store.rollback_pointers()
    store.set_current(v1)
    store.set_current(v2)
    assert store.rollback_pointers() == v1
    assert (store.current(), store.previous()) == (v1, v1)
    assert store.rollback_pointers() == v1  # idempotent


def test_dangling_and_foreign_pointers_are_reported(
    store: ModelStore, bundle_factory: BundleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    v1, v2, _ = _three(store, bundle_factory)
    store.set_current(v1)
    store.set_current(v2)
    import shutil

    shutil.rmtree(v2.path)
    (store.root / "previous").unlink()
    os.symlink("/etc", store.root / "previous")
    with caplog.at_level(logging.WARNING):
        assert store.current() is None
        assert store.previous() is None
    assert "dangling" in caplog.text and "does not point into models/" in caplog.text
    problems = store.problems()
    assert any("pointer current" in p for p in problems)
    assert any("pointer previous" in p for p in problems)
    store.set_current(v1)  # recovers: a dangling current is not copied into previous
    assert store.current() == v1


def test_get_with_two_contents_for_one_version(store: ModelStore, tmp_path: Path) -> None:
    a = store.import_bundle(make_bundle(tmp_path / "a", "det", 1, data=tiny_onnx("A")), "a")
    b = store.import_bundle(make_bundle(tmp_path / "b", "det", 1, data=tiny_onnx("B")), "b")
    with pytest.raises(BundleError, match="stored 2 times"):
        store.get("det", 1)
    assert store.get("det", 1, a.sha256) == a
    assert store.get("det", 1, b.sha256) == b


# -- gc ---------------------------------------------------------------------------------


def test_gc_keeps_newest_and_protected(store: ModelStore, bundle_factory: BundleFactory) -> None:
    vs = [store.import_bundle(bundle_factory("det", i), f"j{i}") for i in range(1, 7)]
    other = store.import_bundle(bundle_factory("cls", 1), "jc")
    store.set_current(vs[1])  # v2
    store.set_current(vs[2])  # v3: current, v2: previous
    pinned = {(vs[0].name, vs[0].version, vs[0].sha256)}  # v1 pinned (the update record holds the pin)
    removed = store.gc(keep=2, protect=pinned)
    assert sorted(v.version for v in removed) == [4]
    assert [v.version for v in store.versions("det")] == [1, 2, 3, 5, 6]
    assert store.versions("cls") == [other]
    store.set_current(vs[5])  # current v6, previous v3
    assert sorted(v.version for v in store.gc(keep=1)) == [1, 2, 5]
    assert [v.version for v in store.versions("det")] == [3, 6]
    assert list(store.staging_dir.iterdir()) == []
    assert store.problems() == []


def test_discard_staging(store: ModelStore) -> None:
    (store.staging_dir / "job-a" / "x").mkdir(parents=True)
    (store.staging_dir / "job-b").mkdir()
    assert any("leftover" in p for p in store.problems())
    store.discard_staging("job-a")
    assert [p.name for p in store.staging_dir.iterdir()] == ["job-b"]
    store.discard_staging()
    assert list(store.staging_dir.iterdir()) == []


# -- fault injection: the k-th fsync or rename fails ------------------------------------------


def _seeded(root: Path, bundle_factory: BundleFactory, n: int) -> tuple[ModelStore, list[StoredVersion]]:
    store = ModelStore(root)
    vs = [store.import_bundle(bundle_factory("det", i), f"seed{i}") for i in range(1, n + 1)]
    if n >= 1:
        store.set_current(vs[0])
    if n >= 2:
        store.set_current(vs[1])
    return store, vs


def _count_ops(action: Callable[[ModelStore], object], root: Path) -> int:
    fs = FaultFs()
    action(ModelStore(root, fs=fs))
    return len(fs.calls)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
@pytest.mark.parametrize("source", ["folder", "tar", "bare"])
@pytest.mark.parametrize("seed", [0, 2])
def test_kth_fsync_or_rename_of_an_import_fails(
    tmp_path: Path, bundle_factory: BundleFactory, source: str, err: int, seed: int
) -> None:
    src = bundle_factory("det", 9)
    if source == "tar":
        src = make_tar(src, tmp_path / "det-9.tar.gz")
    elif source == "bare":
        bare = tmp_path / "det.onnx"
        bare.write_bytes(tiny_onnx("bare-9"))
        src = bare

    def do_import(s: ModelStore) -> object:
        return s.import_bundle(src, "job-9")

    _, _ = _seeded(tmp_path / "count", bundle_factory, seed)
    total = _count_ops(do_import, tmp_path / "count")
    assert total >= 4  # file fsyncs, folder fsyncs, the rename, the parent fsync
    for k in range(1, total + 1):
        root = tmp_path / f"k{k}"
        store, vs = _seeded(root, bundle_factory, seed)
        before = (store.current(), store.previous())
        fs = FaultFs(fail_at=k, err=err)
        with pytest.raises(TransientError) as info:
            ModelStore(root, fs=fs).import_bundle(src, "job-9")
        if err == errno.ENOSPC:
            assert f"disk full while importing {src}: free space under {root.absolute()}" in str(info.value)
        assert_clean(store, vs)
        assert (store.current(), store.previous()) == before
        v = ModelStore(root).import_bundle(src, "job-9")  # the next import succeeds
        assert_clean(store, [*vs, v])


def test_kth_fsync_or_rename_of_set_current_fails(tmp_path: Path, bundle_factory: BundleFactory) -> None:
    _seeded(tmp_path / "count", bundle_factory, 3)
    v3c = ModelStore(tmp_path / "count").versions()[2]
    total = _count_ops(lambda s: s.set_current(v3c), tmp_path / "count")
    assert total == 4  # rename + dir fsync, twice
    for k in range(1, total + 1):
        store, (v1, v2, v3) = _seeded(tmp_path / f"k{k}", bundle_factory, 3)
        assert (store.current(), store.previous()) == (v2, v1)
        with pytest.raises(TransientError):
            ModelStore(store.root, fs=FaultFs(fail_at=k)).set_current(v3)
        cur, prev = store.current(), store.previous()
        assert cur in (v2, v3) and cur is not None
        open_bundle(cur.path, verify=True)  # current always names a complete version
        assert prev in (v1, v2)
        if cur == v3:
            assert prev == v2
        assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []
        store.set_current(v3)  # redoing the swap completes it
        assert (store.current(), store.previous()) == (v3, v2)


def test_kth_fault_in_rollback(tmp_path: Path, bundle_factory: BundleFactory) -> None:
    for k in (1, 2):
        store, (v1, v2) = _seeded(tmp_path / f"r{k}", bundle_factory, 2)
        with pytest.raises(TransientError):
            ModelStore(store.root, fs=FaultFs(fail_at=k)).rollback_pointers()
        assert store.current() in (v1, v2)
        assert store.rollback_pointers() == v1


# -- SIGKILL at random points of imports, swaps and GC ----------------------------------------

_WORKER = r"""
import sys
from pathlib import Path
from ota.store import ModelStore
root, src = Path(sys.argv[1]), Path(sys.argv[2])
store = ModelStore(root)
print("ready", flush=True)
for i, b in enumerate(sorted(src.iterdir())):
    v = store.import_bundle(b, f"job{i}")
    store.set_current(v)
    store.gc(keep=2)
print("done", flush=True)
"""


def test_sigkill_during_imports_leaves_a_consistent_store(tmp_path: Path) -> None:
    import random
    import shutil
    import subprocess
    import sys
    import time

    src = tmp_path / "src"
    for i in range(1, 7):
        b = make_bundle(src, "big", i, folder=f"{i:02d}-big", data=os.urandom(3 << 20) + bytes([i]))
        if i % 2 == 0:
            make_tar(b, src / f"{i:02d}-big.tar.gz")
            shutil.rmtree(b)
    rng = random.Random(1234)
    root_dir = Path(__file__).resolve().parent.parent

    def start(root: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root), str(src)],
            cwd=root_dir,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    full = start(tmp_path / "full")
    t0 = time.monotonic()
    out, _ = full.communicate(timeout=60)
    assert out.strip() == "done"
    duration = time.monotonic() - t0
    for trial in range(16):
        root = tmp_path / f"t{trial}"
        proc = start(root)
        time.sleep(rng.uniform(0.0, duration))  # somewhere inside the run
        proc.kill()
        proc.communicate()
        store = ModelStore(root)
        for v in store.versions():
            open_bundle(v.path, verify=True)  # every visible version is complete
        for folder in store.models_dir.glob("*/*"):
            assert store._load_version(folder, quiet=True) is not None, folder
        for pointer in ("current", "previous"):  # a pointer that exists names a complete version
            if (root / pointer).is_symlink():
                assert store._read_pointer(pointer) is not None, pointer
        store.discard_staging()
        assert store.problems() == []
        nxt = store.import_bundle(sorted(src.iterdir())[-1], "after")
        store.set_current(nxt)
        assert store.current() == nxt
