"""ModelStore: model versions on disk, the ``current`` / ``previous`` pointers, imports, GC.

Layout under the state root (DESIGN §4)::

    models/<name>/<version>-<sha256[:12]>/   one complete, verified bundle (never edited)
    current -> models/<name>/<key>           relative symlinks, replaced by rename
    previous -> models/<name>/<key>
    staging/<job>/                           imports in progress (wiped on failure / start)
    incoming/                                the drop folder
    update-state.json                        owned by ota.update_machine

Crash safety:

- **Import** = copy (or extract) into ``staging/<job>/`` → verify the copy (sha256, size,
  manifest) → fsync every file and folder → one ``rename`` into ``models/<name>/`` → fsync
  that folder. A version folder therefore either does not exist or is complete. When any step
  fails (a failing fsync or rename, ENOSPC, a bad bundle), the staging folder is removed, and
  a folder already renamed into place is renamed back out, so no version becomes visible.
- **set_current(v)** writes ``previous := old current`` first, then ``current := v``, each an
  atomic symlink swap. A crash between the two leaves both pointers naming the old version:
  ``current`` still names a complete version, nothing serves a version it should not, and
  repeating ``set_current(v)`` (as the update machine's RESUME_ACTIVATION does) completes the
  swap. The other order could leave ``previous`` naming a version older than the one being
  replaced, so a rollback would go to the wrong version.
- **rollback_pointers()** is one swap: ``current := previous``; ``previous`` stays, so both
  name the same version afterwards and the failed candidate is no longer protected from GC.
- **gc** renames a version folder out of ``models/`` (into ``staging/``) before deleting it.

Names from manifests and jobs are untrusted: they are checked against ``NAME_RE`` before they
become path components. Archives are extracted by hand: regular files and folders only, no
absolute paths, no ``..``, no links or devices, a byte limit and a member-count limit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tarfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from inference.bundle import Bundle, Manifest, open_bundle, parse_manifest
from inference.errors import BundleError, ConfigError, EdgeAgentError, TransientError
from inference.fsio import DEFAULT_FS, FsOps, atomic_symlink, copy_file_durably
from ota.update_machine import VersionRef

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
KEY_RE = re.compile(r"(0|[1-9][0-9]{0,17})-([0-9a-f]{12})")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MODEL_SUFFIXES = (".onnx", ".tflite")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IGNORED_SUFFIXES = (".tmp", ".part")
MANIFEST = "manifest.json"
POINTERS = ("current", "previous")


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise ``BundleError``."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise BundleError(
            f"{what} {value!r} is not usable as a folder name: use 1-100 characters from "
            "A-Z a-z 0-9 . _ + -, starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class StoredVersion:
    """One complete version in the store. ``path`` is the bundle folder."""

    name: str
    version: int
    sha256: str
    path: Path = field(compare=False)
    manifest: Manifest | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.version}-{self.sha256[:12]}"

    @property
    def ref(self) -> str:
        """The path relative to the store root, as the pointers hold it."""
        return f"models/{self.name}/{self.key}"

    @property
    def release_counter(self) -> int | None:
        return None if self.manifest is None else self.manifest.release_counter

    def to_ref(self) -> VersionRef:
        """This version as the update state file records it."""
        return VersionRef(self.name, self.version, self.sha256, self.ref, self.release_counter)

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.sha256[:12]})"


class ModelStore:
    """Versions on disk and the pointers to them. Thread-safe (one lock around every change)."""

    def __init__(
        self,
        root: Path,
        fs: FsOps = DEFAULT_FS,
        clock: Callable[[], float] = time.time,
        keep: int = 3,
        *,
        max_bundle_bytes: int = 2 << 30,
        max_members: int = 1000,
        configure_bare: Callable[[Bundle], Bundle] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        # a bare model file's manifest: what its exporter metadata says (inference.model.bare_manifest)
        self.configure_bare = configure_bare
        self.fs = fs
        self.clock = clock
        self.keep = keep
        self.max_bundle_bytes = max_bundle_bytes
        self.max_members = max_members
        self._lock = threading.RLock()
        try:
            for d in (self.models_dir, self.staging_dir, self.incoming_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the model store under {self.root}: {exc.strerror or exc}; "
                "check --models-dir and the permissions of that folder"
            ) from exc

    # -- layout ------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def incoming_dir(self) -> Path:
        return self.root / "incoming"

    @property
    def state_path(self) -> Path:
        return self.root / "update-state.json"

    # -- listing -----------------------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[StoredVersion]:
        """Every complete version, sorted by name then version then import time."""
        out: list[tuple[str, int, float, StoredVersion]] = []
        for folder in self._version_folders(name):
            v = self._load_version(folder, quiet=False)
            if v is not None:
                out.append((v.name, v.version, _mtime(folder), v))
        return [v for *_, v in sorted(out, key=lambda t: t[:3])]

    def get(self, name: str, version: int, sha256: str | None = None) -> StoredVersion | None:
        """The stored version ``version`` of ``name`` (``sha256`` to choose among several)."""
        found = [
            v for v in self.versions(name) if v.version == version and (sha256 is None or v.sha256 == sha256)
        ]
        if len(found) > 1:
            raise BundleError(
                f"{name} v{version} is stored {len(found)} times with different contents "
                f"({', '.join(v.key for v in found)}): name the sha256 to choose one"
            )
        return found[0] if found else None

    def current(self) -> StoredVersion | None:
        return self._read_pointer("current")

    def previous(self) -> StoredVersion | None:
        return self._read_pointer("previous")

    def problems(self) -> list[str]:
        """Things an operator should know: dangling pointers, broken folders, leftovers."""
        issues: list[str] = []
        for pointer in POINTERS:
            link = self.root / pointer
            if link.is_symlink() and self._read_pointer(pointer, quiet=True) is None:
                issues.append(f"pointer {pointer} -> {os.readlink(link)} does not name a complete version")
            elif link.exists() and not link.is_symlink():
                issues.append(f"{link} is not a symbolic link")
        for folder in self._version_folders(None):
            if self._load_version(folder, quiet=True) is None:
                issues.append(f"{folder} is not a complete version (manifest missing or inconsistent)")
        with contextlib.suppress(OSError):
            for leftover in sorted(self.staging_dir.iterdir()):
                issues.append(f"leftover in staging: {leftover.name}")
        return issues

    # -- import ------------------------------------------------------------------------------

    def import_bundle(
        self, src: Path, job_id: str, check: Callable[[Path], None] | None = None
    ) -> StoredVersion:
        """Copy ``src`` (bundle folder, .tar.gz, or bare .onnx/.tflite) into the store, verified.

        ``check`` is called with the staged bundle folder once its files are verified and
        before it becomes visible (the manifest signature); what it raises aborts the import.

        Idempotent: a version already stored with the same sha256 is returned as is. Raises
        ``BundleError``/``VerificationError`` for a bad bundle, ``TransientError`` for a full
        disk or a failing write; either way nothing new is visible under ``models/`` and the
        staging folder is gone.
        """
        job = check_name(job_id, "job id")
        src = Path(src)
        with self._lock:
            stage = self.staging_dir / job
            _rmtree(stage)
            placed: Path | None = None
            made_name_dir: Path | None = None
            try:
                stage.mkdir(parents=True)
                bundle_dir = self._stage(src, stage)
                bundle = open_bundle(bundle_dir, verify=True)
                if check is not None:
                    check(bundle_dir)
                m = bundle.manifest
                name = check_name(m.name, f"model name in {src}")
                version = m.version
                if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                    raise BundleError(f"{src}: manifest version {version!r} must be an integer >= 0")
                sha = str(m.sha256).lower()
                if not SHA256_RE.fullmatch(sha):
                    raise BundleError(f"{src}: manifest sha256 {m.sha256!r} is not 64 hex digits")
                if not _inside(Path(bundle.model_path), bundle_dir):
                    raise BundleError(f"{src}: the model file {m.file!r} lies outside the bundle folder")
                key = f"{version}-{sha[:12]}"
                name_dir = self.models_dir / name
                dest = name_dir / key
                if dest.exists() or dest.is_symlink():
                    existing = self._load_version(dest, quiet=True)
                    if existing is not None and existing.sha256 == sha:
                        log.info("import %s: %s is already stored", job, existing)
                        return existing
                    if existing is not None:
                        raise BundleError(
                            f"{src}: {name} v{version} collides with stored {existing.key} "
                            "(same sha256 prefix, different content); rebuild the bundle"
                        )
                    self._discard_folder(dest, why="broken version folder in the way of an import")
                self._fsync_dirs(bundle_dir)
                if not name_dir.is_dir():
                    name_dir.mkdir()
                    made_name_dir = name_dir
                    self.fs.fsync_dir(self.models_dir)
                self.fs.rename(bundle_dir, dest)
                placed = dest
                self.fs.fsync_dir(name_dir)
                placed = None
                stored = self._load_version(dest, quiet=False)
                if stored is None:  # pragma: no cover - we just verified it
                    raise BundleError(f"{dest}: imported but unreadable")
                log.info("import %s: stored %s at %s", job, stored, stored.ref)
                return stored
            except EdgeAgentError:
                self._undo_import(placed, made_name_dir, stage)
                raise
            except OSError as exc:
                self._undo_import(placed, made_name_dir, stage)
                raise self._translate(exc, src) from exc
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                self._undo_import(placed, made_name_dir, stage)
                raise BundleError(f"archive {src} is corrupt or truncated ({exc}); copy it again") from exc
            finally:
                _rmtree(stage)

    def discard_staging(self, job_id: str | None = None) -> None:
        """Remove ``staging/<job_id>`` or, without a job, everything in ``staging/``."""
        with self._lock:
            if job_id is not None:
                _rmtree(self.staging_dir / check_name(job_id, "job id"))
                return
            with contextlib.suppress(OSError):
                for entry in self.staging_dir.iterdir():
                    _rmtree(entry)

    # -- pointers ----------------------------------------------------------------------------

    def set_current(self, v: StoredVersion) -> StoredVersion:
        """``previous := current`` then ``current := v`` (see the module docstring for why).

        Idempotent: when ``current`` already names ``v`` nothing changes.
        """
        with self._lock:
            target = self._require(v)
            cur = self.current()
            if cur is not None and cur == target:
                return target
            try:
                if cur is not None and self.previous() != cur:
                    atomic_symlink(cur.ref, self.root / "previous", self.fs)
                atomic_symlink(target.ref, self.root / "current", self.fs)
            except OSError as exc:
                raise self._translate(exc, None, action=f"switching current to {target}") from exc
            log.info("current -> %s (previous: %s)", target, cur)
            return target

    def rollback_pointers(self) -> StoredVersion:
        """``current := previous`` in one swap; returns the version now current."""
        with self._lock:
            prev = self.previous()
            if prev is None:
                raise BundleError(
                    f"no previous version to roll back to under {self.root} "
                    "(the `previous` pointer is missing or dangling)"
                )
            if self.current() == prev:
                return prev
            try:
                atomic_symlink(prev.ref, self.root / "current", self.fs)
            except OSError as exc:
                raise self._translate(exc, None, action=f"rolling back to {prev}") from exc
            log.warning("rolled back: current -> %s", prev)
            return prev

    # -- garbage collection ------------------------------------------------------------------

    def gc(
        self,
        keep: int | None = None,
        protect: set[tuple[str, int, str]] | frozenset[tuple[str, int, str]] = frozenset(),
    ) -> list[StoredVersion]:
        """Delete all but the newest ``keep`` versions per name; never current, previous, or
        any (name, version, sha256) in ``protect`` (the pin, which the update record holds)."""
        keep = self.keep if keep is None else keep
        removed: list[StoredVersion] = []
        with self._lock:
            protected = {v for v in (self.current(), self.previous()) if v is not None}
            protected |= {v for v in self.versions() if (v.name, v.version, v.sha256) in protect}
            by_name: dict[str, list[StoredVersion]] = {}
            for v in self.versions():
                by_name.setdefault(v.name, []).append(v)
            for name, vs in by_name.items():
                for v in reversed(vs[: max(0, len(vs) - keep)]):
                    if v in protected:
                        continue
                    if self._discard_folder(v.path, why="garbage collection"):
                        removed.append(v)
                name_dir = self.models_dir / name
                with contextlib.suppress(OSError):
                    if not any(name_dir.iterdir()):
                        name_dir.rmdir()
        for v in removed:
            log.info("gc: removed %s", v)
        return removed

    # -- internals ---------------------------------------------------------------------------

    def _version_folders(self, name: str | None) -> Iterator[Path]:
        try:
            names = [self.models_dir / name] if name is not None else sorted(self.models_dir.iterdir())
        except OSError:
            return
        for name_dir in names:
            if not NAME_RE.fullmatch(name_dir.name) or not name_dir.is_dir():
                continue
            try:
                entries = sorted(name_dir.iterdir())
            except OSError:
                continue
            for folder in entries:
                if KEY_RE.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink():
                    yield folder

    def _load_version(self, folder: Path, *, quiet: bool) -> StoredVersion | None:
        """Read ``folder``'s manifest; None (with a warning unless quiet) when inconsistent."""
        m_key = KEY_RE.fullmatch(folder.name)
        name = folder.parent.name
        try:
            if m_key is None or folder.is_symlink() or not folder.is_dir():
                raise BundleError("not a version folder")
            manifest = parse_manifest((folder / MANIFEST).read_bytes(), str(folder / MANIFEST))
            sha = str(manifest.sha256).lower()
            if manifest.name != name or manifest.version != int(m_key.group(1)):
                raise BundleError(f"manifest says {manifest.name} v{manifest.version}")
            if sha[:12] != m_key.group(2):
                raise BundleError(f"manifest sha256 {sha[:12]}… does not match the folder name")
            if not (folder / manifest.file).is_file():
                raise BundleError(f"model file {manifest.file} is missing")
        except (OSError, EdgeAgentError, ValueError) as exc:
            if not quiet:
                log.warning("ignoring %s: %s", folder, exc)
            return None
        return StoredVersion(name, manifest.version, sha, folder, manifest)

    def _read_pointer(self, pointer: str, *, quiet: bool = False) -> StoredVersion | None:
        link = self.root / pointer
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError:
            if not quiet:
                log.warning("%s is not a symbolic link: ignoring it", link)
            return None
        parts = PurePosixPath(target).parts
        if len(parts) != 3 or parts[0] != "models" or not NAME_RE.fullmatch(parts[1]):
            if not quiet:
                log.warning("pointer %s -> %s does not point into models/: ignoring it", pointer, target)
            return None
        v = self._load_version(self.root / target, quiet=True)
        if v is None and not quiet:
            log.warning("pointer %s -> %s is dangling (no complete version there)", pointer, target)
        return v

    def _require(self, v: StoredVersion) -> StoredVersion:
        loaded = self._load_version(self.models_dir / v.name / v.key, quiet=False)
        if loaded is None or loaded.sha256 != v.sha256:
            raise BundleError(f"{v} is not a complete version in {self.models_dir}; import it first")
        return loaded

    def _stage(self, src: Path, stage: Path) -> Path:
        """Bring ``src`` into ``stage``; return the folder that holds manifest.json."""
        if src.is_symlink():
            raise BundleError(f"{src} is a symbolic link: drop the bundle itself")
        if not src.exists():
            raise BundleError(f"{src} does not exist")
        lower = src.name.lower()
        if src.is_dir():
            dest = stage / "bundle"
            dest.mkdir()
            self._copy_tree(src, dest, src, _Budget(self.max_bundle_bytes, self.max_members))
            return dest
        if src.is_file() and lower.endswith(ARCHIVE_SUFFIXES):
            unpacked = stage / "unpacked"
            self._extract_tar(src, unpacked)
            if (unpacked / MANIFEST).is_file():
                return unpacked
            subdirs = [p for p in unpacked.iterdir() if p.is_dir()]
            if len(subdirs) == 1 and (subdirs[0] / MANIFEST).is_file():
                return subdirs[0]
            raise BundleError(f"archive {src} holds no {MANIFEST} at its top level or in a single top folder")
        if src.is_file() and lower.endswith(MODEL_SUFFIXES):
            dest = stage / "bundle"
            dest.mkdir()
            copy_file_durably(src, dest / src.name, self.fs)
            bare = open_bundle(dest / src.name, verify=True)
            if self.configure_bare is not None:
                bare = self.configure_bare(bare)
            else:
                from inference.model import bare_manifest  # numpy, cv2: only when a bare file comes

                bare = bare_manifest(bare)
            data = bare.manifest.to_bytes()
            with open(dest / MANIFEST, "xb") as fh:
                fh.write(data)
                fh.flush()
                self.fs.fsync(fh.fileno())
            return dest
        raise BundleError(
            f"{src} is neither a bundle folder, a .tar.gz archive nor a .onnx/.tflite model file"
        )

    def _copy_tree(self, src: Path, dest: Path, top: Path, budget: _Budget) -> None:
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                raise BundleError(f"bundle {top} contains a symbolic link {path}: links are not accepted")
            if entry.is_dir():
                budget.take(0, top)
                (dest / entry.name).mkdir()
                self._copy_tree(path, dest / entry.name, top, budget)
            elif entry.is_file():
                budget.take(entry.stat().st_size, top)
                copy_file_durably(path, dest / entry.name, self.fs)
            else:
                raise BundleError(f"bundle {top} contains {path}, which is not a regular file")

    def _extract_tar(self, src: Path, dest: Path) -> None:
        dest.mkdir()
        budget = _Budget(self.max_bundle_bytes, self.max_members)
        seen: set[PurePosixPath] = set()
        with tarfile.open(src, "r:*") as tf:
            for member in tf:
                rel = _member_path(member.name, src)
                budget.take(0, src)
                if rel is None:
                    continue
                if member.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise BundleError(
                        f"archive {src}: member {member.name!r} is a {kind}; "
                        "only regular files and folders are accepted"
                    )
                if rel in seen:
                    raise BundleError(f"archive {src}: member {member.name!r} appears twice")
                seen.add(rel)
                budget.take(member.size, src)
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                fin = tf.extractfile(member)
                if fin is None:  # pragma: no cover - isreg() members always have data
                    raise BundleError(f"archive {src}: member {member.name!r} has no data")
                written = 0
                with fin, open(out, "xb") as fout:
                    while buf := fin.read(1 << 20):
                        written += len(buf)
                        if written > member.size:
                            raise BundleError(
                                f"archive {src}: member {member.name!r} is longer than declared"
                            )
                        fout.write(buf)
                    fout.flush()
                    self.fs.fsync(fout.fileno())
                if written != member.size:
                    raise BundleError(f"archive {src}: member {member.name!r} is truncated")

    def _fsync_dirs(self, top: Path) -> None:
        """fsync every folder under ``top`` (deepest first) and ``top`` itself."""
        dirs = [Path(d) for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            self.fs.fsync_dir(d)

    def _discard_folder(self, folder: Path, *, why: str) -> bool:
        """Make ``folder`` disappear atomically (rename into staging), then delete it."""
        trash = self.staging_dir / f".trash-{uuid.uuid4().hex[:12]}"
        try:
            self.fs.rename(folder, trash)
            self.fs.fsync_dir(folder.parent)
        except OSError as exc:
            log.warning("could not remove %s (%s): %s", folder, why, exc)
            if trash.exists():
                _rmtree(trash)
                return True
            return False
        _rmtree(trash)
        return True

    def _undo_import(self, placed: Path | None, made_name_dir: Path | None, stage: Path) -> None:
        if placed is not None:
            try:
                self.fs.rename(placed, stage / "undone")
            except OSError as exc:  # the folder is complete and fsynced: leaving it is safe
                log.warning("could not take back %s after a failed import: %s", placed, exc)
        if made_name_dir is not None:
            with contextlib.suppress(OSError):
                made_name_dir.rmdir()

    def _translate(self, exc: OSError, src: Path | None, action: str | None = None) -> EdgeAgentError:
        what = action or f"importing {src}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TransientError(f"disk full while {what}: free space under {self.root}")
        filename = getattr(exc, "filename", None)
        if src is not None and filename and _inside(Path(str(filename)), src):
            return BundleError(f"cannot read {filename} while {what}: {exc.strerror or exc}")
        return TransientError(
            f"I/O error while {what}: {exc.strerror or exc}; check the disk under {self.root} and retry"
        )


class _Budget:
    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.bytes_left = max_bytes
        self.members_left = max_members
        self.max_bytes = max_bytes
        self.max_members = max_members

    def take(self, size: int, where: Path) -> None:
        self.members_left -= 1
        self.bytes_left -= size
        if self.members_left < 0:
            raise BundleError(f"{where} has more than {self.max_members} entries: not a model bundle")
        if self.bytes_left < 0:
            raise BundleError(
                f"{where} holds more than {self.max_bytes} bytes: too large for a model bundle "
                "(raise max_bundle_bytes if this is intended)"
            )


def _member_path(name: str, src: Path) -> PurePosixPath | None:
    """The safe relative path of an archive member, None for the top folder itself."""
    bad = (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or re.match(r"[A-Za-z]:", name) is not None
    )
    parts = [p for p in PurePosixPath(name).parts if p != "."] if not bad else []
    if bad or ".." in parts or len(parts) > 16 or any(len(p) > 255 for p in parts):
        raise BundleError(
            f"archive {src}: unsafe member path {name!r} (absolute, '..', or too deep); rebuild it"
        )
    return PurePosixPath(*parts) if parts else None


def _inside(path: Path, top: Path) -> bool:
    try:
        path.resolve().relative_to(top.resolve())
    except ValueError:
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
