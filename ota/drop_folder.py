"""DropFolderWatcher: say "this bundle is wanted" when a complete one lands in ``incoming/``.

What counts as a candidate (top-level entries of the folder only):

- a folder whose ``manifest.json`` is present and parses, and where every file it lists is
  present (the model file with the manifest's ``size``, the golden files). A folder moved in
  by rename passes at once; one copied file by file passes once its last file is complete.
  The sha256 is not checked here: ``ModelStore.import_bundle`` verifies the copy it keeps.
- a bare ``.onnx`` / ``.tflite`` file, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive.

Every candidate must also be stable: its signature (size and mtime of every file) is the same
at two checks ``debounce`` seconds apart. Each signature is reported once; a bundle dropped
again with other content (or after being removed) is reported again. Hidden and temporary
entries (``.*``, ``*.tmp``, ``*.part``) are ignored.

Events come from a watchdog ``Observer`` (inotify on Linux; ``PollingObserver`` when inotify
is unavailable); a full rescan every ``rescan`` seconds is the safety net for missed events
and for filesystems without notifications, and the first scan at start finds what was
already there. ``on_candidate(path)`` runs on the watcher's worker thread; its exceptions are
logged and never stop the watcher.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from inference.errors import SourceError, TransientError

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".onnx", ".tflite")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
MANIFEST = "manifest.json"
MAX_FILES = 2000

Signature = tuple[tuple[str, int, int], ...]


def ignored(name: str) -> bool:
    """Hidden and temporary names are never candidates."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DropFolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher._notify(os.fsdecode(event.src_path))
        dest = getattr(event, "dest_path", "")
        if dest:
            self.watcher._notify(os.fsdecode(dest))


class DropFolderWatcher:
    """Watch ``folder`` and call ``on_candidate(path)`` once per complete, stable candidate."""

    def __init__(
        self,
        folder: Path,
        on_candidate: Callable[[Path], None],
        *,
        debounce: float = 1.0,
        rescan: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        polling: bool | None = None,
        poll_interval: float = 1.0,
        use_events: bool = True,
    ) -> None:
        """``polling=None`` tries inotify first and falls back to polling; True forces polling.

        ``use_events=False`` relies on the periodic rescan alone (tests, exotic filesystems).
        """
        self.folder = Path(folder).absolute()
        self.on_candidate = on_candidate
        self.debounce = debounce
        self.rescan = rescan
        self.clock = clock
        self.polling = polling
        self.poll_interval = poll_interval
        self.use_events = use_events
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, tuple[Signature, float]] = {}
        self._reported: dict[str, Signature] = {}
        self._waiting_logged: dict[str, str] = {}
        self._next_rescan = 0.0
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self.observer_kind = "none"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(
                f"cannot create the drop folder {self.folder}: {exc.strerror or exc}; "
                "check --models-dir and its permissions"
            ) from exc
        self._stop.clear()
        if self.use_events:
            self._observer = self._start_observer()
        self._next_rescan = self.clock()  # the first pass is a full scan
        self._thread = threading.Thread(target=self._run, name="drop-folder-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> DropFolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_observer(self) -> BaseObserver:
        handler = _Handler(self)
        if not self.polling:
            try:
                obs: BaseObserver = Observer()
                obs.schedule(handler, str(self.folder), recursive=True)
                obs.start()
                self.observer_kind = type(obs).__name__
                return obs
            except OSError as exc:
                log.warning(
                    "inotify is unavailable for %s (%s): polling every %.1f s instead",
                    self.folder,
                    exc,
                    self.poll_interval,
                )
        obs = PollingObserver(timeout=self.poll_interval)
        obs.schedule(handler, str(self.folder), recursive=True)
        obs.start()
        self.observer_kind = "PollingObserver"
        return obs

    # -- event intake ------------------------------------------------------------------------

    def _notify(self, path: str) -> None:
        """Mark the top-level entry of ``path`` for a look (called from the observer thread)."""
        try:
            rel = Path(path).relative_to(self.folder)
        except ValueError:
            return
        if not rel.parts:
            return
        with self._lock:
            self._dirty.add(rel.parts[0])
        self._wake.set()

    def rescan_now(self) -> None:
        """Mark every entry for the next ``tick`` (the periodic rescan; tests drive it)."""
        self._mark_all()

    def _mark_all(self) -> None:
        try:
            names = [e.name for e in os.scandir(self.folder)]
        except OSError as exc:
            log.warning("cannot list the drop folder %s: %s", self.folder, exc)
            return
        with self._lock:
            self._dirty.update(names)
            self._dirty.update(self._reported)  # notice removals too
            self._dirty.update(self._pending)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            if now >= self._next_rescan:
                self._mark_all()
                self._next_rescan = now + self.rescan
            try:
                self.tick(now)
            except Exception:  # never let a surprise kill the watcher
                log.exception("drop folder watcher: unexpected error; carrying on")
            wait = self._next_rescan - self.clock()
            if self._pending:
                first_due = min(t for _, t in self._pending.values()) + self.debounce
                wait = min(wait, first_due - self.clock())
            self._wake.wait(max(0.01, wait))
            self._wake.clear()

    def tick(self, now: float) -> list[Path]:
        """Process marked entries and due candidates; report and return what became ready."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for name in dirty:
            if ignored(name):
                continue
            sig = self._signature(name)
            if sig is None:
                self._pending.pop(name, None)
                if not (self.folder / name).exists():
                    self._reported.pop(name, None)
                    self._waiting_logged.pop(name, None)
                continue
            if self._reported.get(name) == sig:
                continue
            held = self._pending.get(name)
            if held is None or held[0] != sig:
                self._pending[name] = (sig, now)
        ready: list[Path] = []
        for name, (sig, since) in list(self._pending.items()):
            if now - since < self.debounce:
                continue
            again = self._signature(name)
            if again is None:
                del self._pending[name]
            elif again != sig:
                self._pending[name] = (again, now)
            else:
                del self._pending[name]
                self._reported[name] = sig
                ready.append(self.folder / name)
        for path in ready:
            log.info("drop folder: candidate %s", path)
            try:
                self.on_candidate(path)
            except TransientError as exc:  # not taken (e.g. the state file cannot be written)
                self._reported.pop(path.name, None)
                log.warning("drop folder: %s not taken (%s); offered again at the next rescan", path, exc)
            except Exception:  # a bug in the callback: logged with its traceback, the watcher goes on
                log.exception("drop folder: handling %s failed; the watcher carries on", path)
        return ready

    def _signature(self, name: str) -> Signature | None:
        """Size+mtime of everything in a complete candidate, None when not (yet) one."""
        path = self.folder / name
        try:
            if path.is_symlink():
                return None
            if path.is_dir():
                sig = _tree_signature(path)
                problem = _incomplete(path, sig)
                if problem is not None:
                    if self._waiting_logged.get(name) != problem:
                        self._waiting_logged[name] = problem
                        log.info("drop folder: waiting for %s: %s", path, problem)
                    return None
                self._waiting_logged.pop(name, None)
                return sig
            lower = name.lower()
            if path.is_file() and lower.endswith(MODEL_SUFFIXES + ARCHIVE_SUFFIXES):
                st = path.stat()
                if st.st_size == 0:
                    return None
                return (("", st.st_size, st.st_mtime_ns),)
        except OSError:
            return None
        return None


def _tree_signature(top: Path) -> Signature:
    out: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not ignored(d))
        for fname in sorted(filenames):
            if ignored(fname):
                continue
            full = Path(dirpath) / fname
            st = full.lstat()
            out.append((full.relative_to(top).as_posix(), st.st_size, st.st_mtime_ns))
            if len(out) > MAX_FILES:
                return tuple(sorted(out))
    return tuple(sorted(out))


def _incomplete(folder: Path, sig: Signature) -> str | None:
    """Why ``folder`` is not a complete bundle yet, or None when it is."""
    sizes = {rel: size for rel, size, _ in sig}
    if MANIFEST not in sizes:
        return f"no {MANIFEST} yet"
    try:
        data: Any = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} does not parse yet ({exc})"
    if not isinstance(data, dict):
        return f"{MANIFEST} is not a JSON object"
    listed: list[tuple[str, int | None]] = []
    model = data.get("file")
    size = data.get("size")
    if isinstance(model, str):
        listed.append((model, size if isinstance(size, int) and not isinstance(size, bool) else None))
    validation = data.get("validation")
    golden = validation.get("golden", []) if isinstance(validation, dict) else []
    if isinstance(golden, list):
        for pair in golden:
            if not isinstance(pair, dict):
                continue
            names = [pair.get("input"), *(pair.get("outputs") or [])]
            listed.extend((n, None) for n in names if isinstance(n, str))
    for rel, want in listed:
        key = PurePosixPath(rel).as_posix()
        have = sizes.get(key)
        if have is None:
            return f"{rel} is not there yet"
        if want is not None and have != want:
            return f"{rel} has {have} of {want} bytes"
    return None
