"""A 64-bit perceptual hash of a frame and a bounded memory of recently kept hashes (on-device de-dup).

``phash64`` is the DCT hash: the frame is shrunk to a 32x32 grey thumbnail (``cv2.resize`` with
``INTER_AREA`` on a strided view, so only about 64x64 pixels of a large frame are read), ``cv2.dct``
is taken, and each of the 64 lowest frequencies (the top-left 8x8) becomes one bit: set when above
the median of those 64 without the DC term. The DC bit is therefore almost always set; the other 63
carry the scene. Re-encoding, mild noise and small brightness changes move a few bits; another scene
moves about half of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt

Clock = Callable[[], float]

THUMB = 32  # side of the grey thumbnail the DCT is taken of
LOW = 8  # side of the block of low frequencies kept
_SAMPLES = 2 * THUMB  # the strided view keeps about this many rows and columns
MAX_KEPT = 4096  # RecentHashes keeps at most this many hashes (the oldest go first)


def phash64(image_bgr: npt.NDArray[np.uint8]) -> int:
    """The 64-bit DCT perceptual hash of a BGR (or grey) image, as a non-negative int."""
    if image_bgr.ndim not in (2, 3) or image_bgr.shape[0] == 0 or image_bgr.shape[1] == 0:
        raise ValueError(f"phash64: expected a non-empty HxW or HxWxC image, got shape {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    view = image_bgr[:: max(1, h // _SAMPLES), :: max(1, w // _SAMPLES)]
    thumb = cv2.resize(view, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    if thumb.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if thumb.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        thumb = cv2.cvtColor(thumb, code) if thumb.shape[2] in (3, 4) else thumb[:, :, 0]
    freq = cv2.dct(thumb.astype(np.float32))[:LOW, :LOW].reshape(-1)
    bits = freq > np.median(freq[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


class RecentHashes:
    """The hashes kept within the last ``window_s`` seconds, at most ``max_kept`` of them.

    ``seen(h)`` is True when a kept hash within ``bits`` (Hamming distance <= bits) was added in
    the last ``window_s`` seconds; ``add(h)`` keeps one. Times come from ``clock`` unless given. A
    hash added "in the future" (the clock stepped back) does not count and is forgotten, so a clock
    step weakens de-duplication for a moment instead of blocking frames for the size of the step.
    """

    def __init__(self, bits: int, window_s: float, clock: Clock = time.time, *, max_kept: int = MAX_KEPT):
        if bits < 0 or bits > 64:
            raise ValueError(f"RecentHashes: bits must be 0..64, got {bits}")
        if window_s <= 0 or max_kept < 1:
            raise ValueError("RecentHashes: window_s must be > 0 and max_kept >= 1")
        self.bits = bits
        self.window_s = float(window_s)
        self.clock = clock
        self.max_kept = max_kept
        self._hashes = np.zeros(max_kept, dtype=np.uint64)  # a ring: slot i % max_kept
        self._times = np.zeros(max_kept, dtype=np.float64)
        self._start = 0  # index (not wrapped) of the oldest kept hash
        self._end = 0  # index (not wrapped) one past the newest

    def __len__(self) -> int:
        return self._end - self._start

    def _expire(self, now: float) -> None:
        if len(self) and self._times[(self._end - 1) % self.max_kept] > now:  # the clock stepped back
            self._start = self._end
        while self._start < self._end and now - self._times[self._start % self.max_kept] > self.window_s:
            self._start += 1

    def _live(self) -> tuple[npt.NDArray[np.uint64], ...]:
        a, b = self._start % self.max_kept, self._end % self.max_kept
        if len(self) == 0:
            return ()
        if a < b:
            return (self._hashes[a:b],)
        return (self._hashes[a:], self._hashes[:b])

    def seen(self, h: int, now: float | None = None) -> bool:
        """True when a hash within ``bits`` of ``h`` was kept in the last ``window_s`` seconds."""
        self._expire(self.clock() if now is None else now)
        probe = np.uint64(h)
        return any(bool((np.bitwise_count(part ^ probe) <= self.bits).any()) for part in self._live())

    def add(self, h: int, now: float | None = None) -> None:
        """Keep ``h`` as seen at ``now``; past ``max_kept`` the oldest is forgotten."""
        t = self.clock() if now is None else now
        self._expire(t)
        slot = self._end % self.max_kept
        self._hashes[slot] = np.uint64(h)
        self._times[slot] = t
        self._end += 1
        if len(self) > self.max_kept:
            self._start = self._end - self.max_kept
