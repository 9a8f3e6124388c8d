"""Crash-safe file operations: write to a temp file, fsync, rename, fsync the folder.

Every file the agent persists goes through here, so a power cut leaves either the old
or the new content, never a half-written file. ``FsOps`` is injectable so tests can
make the k-th fsync or rename fail.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FsOps:
    """The primitive operations, as methods so a test can wrap or fail them."""

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


DEFAULT_FS = FsOps()


def atomic_write_bytes(path: Path, data: bytes, fs: FsOps = DEFAULT_FS, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            fs.fsync(fh.fileno())
        os.chmod(tmp, mode)
        fs.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fs.fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, fs: FsOps = DEFAULT_FS) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), fs)


def atomic_symlink(target: str | Path, link: Path, fs: FsOps = DEFAULT_FS) -> None:
    """Point ``link`` at ``target`` by creating a temp symlink and renaming it over ``link``."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        fs.rename(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fs.fsync_dir(link.parent)


def copy_file_durably(
    src: Path,
    dst: Path,
    fs: FsOps = DEFAULT_FS,
    chunk: int = 1 << 20,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Copy ``src`` to ``dst`` (which must not be visible to readers yet) and fsync it."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            buf = fin.read(chunk)
            if not buf:
                break
            fout.write(buf)
            if on_chunk is not None:
                on_chunk(len(buf))
        fout.flush()
        fs.fsync(fout.fileno())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(chunk)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()
