"""Frame sources: what the pipeline reads frames from.

``open_source(spec)`` turns a source spec into a ``Source`` (not yet opened):

- ``/dev/video0`` or ``0``             V4L2 camera (live)
- ``rtsp://…``, ``http(s)://…``        network stream (live)
- ``path/to/video.mp4``                video file (lossless; ``loop`` replays it)
- ``path/to/folder/``                  image folder, sorted by name (lossless; ``loop``)
- ``synthetic:WxH@FPS``                generated frames (lossless, as fast as they are read);
  ``synthetic:WxH@FPS,live`` paces them at FPS and makes the source live
- ``demo`` / ``demo:faces`` / ``demo:text``  real-looking scenes for the default models
  (agent/demo_source.py; paced and live like a camera)

Frames are BGR ``uint8`` arrays of shape (H, W, 3), C-contiguous (OpenCV's convention).

A source that dies (camera unplugged, stream cut) raises ``SourceError`` from ``read``;
``Reconnecting`` wraps any source so that ``read`` instead closes it, waits with exponential
back-off (injectable ``sleep``/``clock``) and reopens it, for as long as it takes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from inference.errors import SourceError

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
Sleep = Callable[[float], object]  # time.sleep, or threading.Event.wait (interruptible)
Clock = Callable[[], float]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
STREAM_TIMEOUT_MS = 10_000  # open and read time-outs for network streams
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.IGNORECASE)
_SYNTHETIC = re.compile(r"^synthetic:(\d+)x(\d+)(?:@(\d+(?:\.\d+)?))?(,live)?$")


@dataclass(frozen=True)
class Frame:
    index: int  # 0, 1, 2, … in capture order; a gap means frames were dropped
    ts: float  # wall-clock capture time (seconds since the epoch)
    image: npt.NDArray[np.uint8]


class Source(Protocol):
    """``live`` sources drop frames when the consumer is slow (latest wins); others never drop."""

    spec: str
    live: bool

    def open(self) -> None:
        """Open the device, stream or file. Raises ``SourceError`` with the reason and what to do."""

    def read(self) -> npt.NDArray[np.uint8] | None:
        """The next image, or ``None`` at the end of a finite source. Raises ``SourceError`` when it dies."""

    def close(self) -> None: ...


def as_bgr(image: npt.NDArray[Any]) -> Image:
    """An OpenCV image as BGR uint8 HxWx3, C-contiguous (gray and BGRA converted)."""
    import cv2

    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------- OpenCV capture


class CaptureSource:
    """A V4L2 camera, a network stream or a video file, read with ``cv2.VideoCapture``."""

    def __init__(self, spec: str, target: int | str, kind: str, loop: bool = False) -> None:
        self.spec = spec
        self.kind = kind  # "camera" | "stream" | "file"
        self.live = kind != "file"
        self.loop = loop
        self._target = target
        self._cap: Any = None

    def _api(self) -> int:
        import cv2

        return int(cv2.CAP_V4L2 if self.kind == "camera" else cv2.CAP_FFMPEG)

    def _why_not(self) -> str:
        """The most likely reason ``VideoCapture`` did not open, and what to do."""
        if self.kind == "camera":
            dev = self._target if isinstance(self._target, str) else f"/dev/video{self._target}"
            if not os.path.exists(dev):
                return "no such device; check the camera is connected (ls /dev/video*) and the index is right"
            if not os.access(dev, os.R_OK | os.W_OK):
                return (
                    "permission denied; add the service user to the 'video' group "
                    "(SupplementaryGroups=video under systemd, or: sudo usermod -aG video $USER)"
                )
            return "the device did not answer (busy in another program, or not a capture device?)"
        if self.kind == "file":
            path = Path(str(self._target))
            if not path.exists():
                return "no such file; check the path"
            if not os.access(path, os.R_OK):
                return "permission denied; make the file readable by the agent's user"
            return "OpenCV's FFmpeg cannot decode it; check it is a video file (mp4, mkv, avi, ...)"
        return "the stream did not answer; check the URL, the credentials and that the camera is reachable"

    def open(self) -> None:
        import cv2

        try:
            if self.kind == "stream":  # a stalled stream must fail (and be reopened), not block forever
                timeouts = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS,
                ]
                cap = cv2.VideoCapture(self._target, self._api(), timeouts)
            else:
                cap = cv2.VideoCapture(self._target, self._api())
            if cap.isOpened() and self.kind == "camera":
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the newest frame, not a backlog
        except cv2.error as err:
            raise SourceError(f"cannot open {self.spec}: OpenCV error {err}; {self._why_not()}") from None
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.spec}: {self._why_not()}")
        self._cap = cap

    def _grab(self) -> Image | None:
        import cv2

        try:
            ok, image = self._cap.read()
        except cv2.error as err:
            raise SourceError(f"{self.spec}: OpenCV error while reading: {err}") from None
        return as_bgr(image) if ok and image is not None else None

    def read(self) -> Image | None:
        if self._cap is None:
            raise SourceError(f"{self.spec}: read before open (a bug: call open() first)")
        image = self._grab()
        if image is not None:
            return image
        if self.live:
            raise SourceError(f"{self.spec}: the {self.kind} stopped delivering frames")
        if not self.loop:
            return None
        import cv2

        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        image = self._grab()
        if image is None:  # seeking failed or the file is empty: reopen once
            self.close()
            self.open()
            image = self._grab()
        return image

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# --------------------------------------------------------------------------- image folder


class FolderSource:
    """The images of a folder, sorted by file name; unreadable files are skipped with a warning."""

    live = False

    def __init__(self, spec: str, folder: Path, loop: bool = False) -> None:
        self.spec = spec
        self.folder = folder
        self.loop = loop
        self.skipped = 0
        self._files: list[Path] = []
        self._pos = 0
        self._read_this_pass = 0

    def _list(self) -> list[Path]:
        try:
            return sorted(
                p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        except OSError as err:
            raise SourceError(
                f"cannot list {self.spec}: {err.strerror}; check the folder's permissions"
            ) from None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"cannot open {self.spec}: no such folder; check the path")
        self._files = self._list()
        if not self._files:
            raise SourceError(
                f"cannot open {self.spec}: no images in the folder "
                f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._pos = 0
        self._read_this_pass = 0

    def read(self) -> Image | None:
        import cv2

        while True:
            if self._pos >= len(self._files):
                if not self.loop or self._read_this_pass == 0:
                    return None  # the end, or a loop over a folder with nothing readable
                self._files = self._list()
                self._pos = 0
                self._read_this_pass = 0
                continue
            path = self._files[self._pos]
            self._pos += 1
            try:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            except cv2.error:
                image = None
            if image is None:
                self.skipped += 1
                log.warning("%s: skipping %s: not a readable image", self.spec, path.name)
                continue
            self._read_this_pass += 1
            return as_bgr(image)

    def close(self) -> None:
        self._files = []


# --------------------------------------------------------------------------- synthetic


class SyntheticSource:
    """Deterministic generated frames: a scrolling colour gradient with moving shapes.

    Frame ``i`` is always the same image. Unpaced and lossless unless ``live``: then frames
    are paced at ``fps`` with ``sleep`` and the source counts as live (latest wins).
    """

    def __init__(
        self,
        spec: str,
        width: int,
        height: int,
        fps: float = 30.0,
        live: bool = False,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.spec = spec
        self.width = width
        self.height = height
        self.fps = fps
        self.live = live
        self._sleep = sleep
        self._clock = clock
        self._index = 0
        self._base: Image | None = None
        self._next_due = 0.0

    def open(self) -> None:
        w, h = self.width, self.height
        period = max(w // 2, 1)
        x = np.arange(w + period, dtype=np.float32)
        y = np.arange(h, dtype=np.float32)[:, None]
        phase = 2 * np.pi * x / period
        base = np.empty((h, w + period, 3), np.uint8)
        base[..., 0] = (127.5 + 127.5 * np.sin(phase))[None, :].astype(np.uint8)
        base[..., 1] = (255 * y / max(h - 1, 1)).astype(np.uint8).repeat(w + period, axis=1)
        base[..., 2] = (127.5 + 127.5 * np.cos(phase / 2))[None, :].astype(np.uint8)
        self._base = base
        self._index = 0
        self._next_due = self._clock()

    def frame(self, index: int) -> Image:
        """Frame number ``index`` (pure: the same index gives the same image)."""
        import cv2

        if self._base is None:
            self.open()
        assert self._base is not None
        w, h = self.width, self.height
        period = self._base.shape[1] - w
        off = (index * 4) % period if period else 0
        image = np.ascontiguousarray(self._base[:, off : off + w])
        cx = int((index * 7) % max(w, 1))
        cy = int(h / 2 + (h / 4) * np.sin(index / 15))
        r = max(min(w, h) // 10, 2)
        cv2.circle(image, (cx, cy), r, (255, 255, 255), -1)
        x0 = int((w - (index * 5) % max(w, 1)) % max(w, 1))
        cv2.rectangle(image, (x0, h // 5), (x0 + r * 2, h // 5 + r), (0, 0, 0), -1)
        return image

    def read(self) -> Image | None:
        if self.live:
            now = self._clock()
            if self._next_due > now:
                self._sleep(self._next_due - now)
            self._next_due = max(self._next_due + 1.0 / self.fps, self._clock() - 1.0 / self.fps)
        image = self.frame(self._index)
        self._index += 1
        return image

    def close(self) -> None:
        self._base = None


# --------------------------------------------------------------------------- reconnection


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``initial``, × ``factor`` each attempt, at most ``maximum`` seconds."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.maximum, self.initial * self.factor ** min(attempt, 64)))


class Reconnecting:
    """Wraps a source so that a death in ``read`` becomes close → back-off → reopen, forever.

    ``open`` is not retried: a source that cannot be opened at start is the caller's
    error to report. ``stopped()`` ends the waiting (``read`` then returns ``None``);
    ``sleep`` may be ``threading.Event.wait`` so a stop interrupts the back-off.
    ``on_status`` receives a one-line description of each outage and recovery.
    """

    def __init__(
        self,
        source: Source,
        backoff: Backoff | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        stopped: Callable[[], bool] = lambda: False,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = source
        self.spec = source.spec
        self.live = source.live
        self.backoff = backoff or Backoff()
        self.reconnects = 0  # successful reopenings
        self.failures = 0  # deaths and failed reopen attempts
        self.down_since: float | None = None
        self._sleep = sleep
        self._clock = clock
        self._stopped = stopped
        self._on_status = on_status

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def _status(self, text: str) -> None:
        if self._on_status is not None:
            self._on_status(text)

    def read(self) -> Image | None:
        while True:
            try:
                return self.inner.read()
            except SourceError as err:
                self.failures += 1
                self._status(f"source down: {err}")
                log.warning("%s", err)
            except Exception as err:  # an unexpected failure inside a source: treat it as a death
                self.failures += 1
                self._status(f"source down: {err!r}")
                log.exception("%s: reading failed unexpectedly", self.spec)
            if not self._reopen():
                return None

    def _reopen(self) -> bool:
        """Close, then reopen with back-off until it works (True) or a stop is asked (False)."""
        self.down_since = self._clock()
        try:
            self.inner.close()
        except Exception:  # closing a dead device may fail too; it is being replaced anyway
            log.debug("%s: close after failure raised", self.spec, exc_info=True)
        attempt = 0
        while not self._stopped():
            delay = self.backoff.delay(attempt)
            log.info("%s: reopening in %.1f s (attempt %d)", self.spec, delay, attempt + 1)
            self._sleep(delay)
            if self._stopped():
                break
            try:
                self.inner.open()
            except SourceError as err:
                self.failures += 1
                attempt += 1
                self._status(f"source down for {self._clock() - self.down_since:.0f} s: {err}")
                log.warning("%s", err)
                continue
            self.reconnects += 1
            log.info("%s: reopened after %.1f s", self.spec, self._clock() - self.down_since)
            self._status("source reopened")
            self.down_since = None
            return True
        return False


# --------------------------------------------------------------------------- specs


def open_source(
    spec: str,
    loop: bool = False,
    *,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    asset_root: Path | None = None,
) -> Source:
    """The ``Source`` for ``spec`` (see the module docstring), not yet opened.

    Raises ``SourceError`` for a spec that names nothing usable, saying what is accepted.
    """
    text = spec.strip()
    if not text:
        raise SourceError(
            "empty source spec: use /dev/video0, a URL, a file, a folder, synthetic:WxH@FPS or demo"
        )
    if text.startswith("synthetic"):
        m = _SYNTHETIC.match(text)
        if not m:
            raise SourceError(
                f"bad source spec {spec!r}: use synthetic:WIDTHxHEIGHT@FPS, e.g. synthetic:640x480@30 "
                "(add ,live to pace it like a camera)"
            )
        w, h = int(m.group(1)), int(m.group(2))
        fps = float(m.group(3) or 30)
        if not (1 <= w <= 16384 and 1 <= h <= 16384) or fps <= 0:
            raise SourceError(f"bad source spec {spec!r}: size must be 1..16384 and FPS > 0")
        return SyntheticSource(text, w, h, fps, live=bool(m.group(4)), sleep=sleep, clock=clock)
    if text == "demo" or text.startswith("demo:"):
        from agent.demo_source import parse_demo_spec

        return parse_demo_spec(text, sleep=sleep, clock=clock, asset_root=asset_root)
    if text.isdigit():
        return CaptureSource(text, int(text), "camera")
    if text.startswith("/dev/"):
        return CaptureSource(text, text, "camera")
    if _URL.match(text):
        return CaptureSource(text, text, "stream")
    if "://" in text:
        raise SourceError(
            f"bad source spec {spec!r}: unsupported URL scheme; use rtsp://, http:// or https://"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(text, path, loop=loop)
    if path.is_file():
        return CaptureSource(text, str(path), "file", loop=loop)
    raise SourceError(
        f"cannot open {spec}: no such file or folder; use /dev/videoN or a camera index, "
        "rtsp://… or http(s)://…, a video file, an image folder, synthetic:WxH@FPS or demo"
    )


def iter_images(source: Source, limit: int | None = None) -> Iterator[Image]:
    """Open ``source`` and yield its images (at most ``limit``), closing it afterwards."""
    source.open()
    try:
        n = 0
        while limit is None or n < limit:
            image = source.read()
            if image is None:
                return
            yield image
            n += 1
    finally:
        source.close()
