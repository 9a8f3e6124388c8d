"""Frame sources: what the pipeline reads frames from.

``open_source(spec)`` turns a source spec into a ``Source``:

- ``/dev/video0`` or ``0``             V4L2 camera (live)
- ``rtsp://…``, ``http(s)://…``        network stream (live)
- ``path/to/video.mp4``                video file (lossless; ``loop`` replays it)
- ``path/to/folder/``                  image folder, sorted by name (lossless; ``loop``)
- ``synthetic:WxH@FPS``                generated frames (lossless unless FPS pacing is asked)
- ``demo`` / ``demo:faces`` / ``demo:text``  real-looking scenes for the default models

Frames are BGR ``uint8`` arrays of shape (H, W, 3), C-contiguous (OpenCV's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


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
