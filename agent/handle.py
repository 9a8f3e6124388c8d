"""``ModelHandle``: the one reference to the model that serves the next frame.

The pipeline reads ``handle.current`` once at the start of each frame and uses that object
for the whole frame. A swap (``ModelManager``) is a plain assignment of a new reference
between frames, never a mutation of the model under a frame; assigning a reference is
atomic in CPython, so no lock is needed on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from inference.result import Result

if TYPE_CHECKING:
    from inference.model import LoadedModel


class ServingModel(Protocol):
    """What the pipeline and the sinks use of a model (``LoadedModel`` has all of it)."""

    name: str
    version: int
    sha256: str

    def infer(self, image: npt.NDArray[np.uint8]) -> Result: ...


class ModelHandle:
    """Holds ``current``; swapping is ``handle.current = new_model`` (see the module docstring)."""

    def __init__(self, model: LoadedModel) -> None:
        self.current: LoadedModel = model
        self.swaps = 0  # how many times ``swap`` replaced the model

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Serve ``model`` from the next frame on; returns the model it replaces (still loaded)."""
        old, self.current = self.current, model
        self.swaps += 1
        return old
