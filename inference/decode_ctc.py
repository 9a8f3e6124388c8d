"""The ``ctc_text`` decoder: a CTC text recogniser's per-step class scores -> one line of text.

Made for PaddleOCR (PP-OCR) recognisers: one output (1, T, C) (or (T, C); T may be dynamic),
softmax already applied by the export. Greedy CTC: the best class per step, repeats collapsed,
the blank dropped (a character repeated in the text needs a blank between its steps).

The class table is PaddleOCR's: index ``blank`` (0) is the CTC blank, the ``characters`` follow
in order, then ``' '`` when ``use_space_char``; C must equal len(characters) + 1 (+ 1 with the
space). A ``blank`` other than 0 is inserted at that index instead.

Parameters: ``characters`` (required: the character table without the blank, one entry per line
of PaddleOCR's dict file or its ONNX metadata ``character``); ``blank`` 0; ``use_space_char``
true; ``softmax`` "auto" (apply it per step unless the rows already are probability vectors) |
true | false; ``score_threshold`` 0.0 (a line scoring under it gives no text).

The result is ``kind="text"`` with at most one ``TextLine``; its ``score`` (and the result's
``confidence``) is the mean over the kept characters of their step's top-1 probability, 0 with
no text; its ``margin`` and ``entropy`` are the means over the same steps of top-1 minus top-2
probability and of the step's entropy (nats). An output holding NaN or Inf gives no text.
The manifest's labels are not used: a bundle with labels is a ``BundleError`` (the character
table belongs in ``characters``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, one_output
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Result, TextLine
from inference.runtime import TensorInfo


class CtcTextDecoder:
    name = "ctc_text"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        characters = p.strings("characters")
        self.blank = p.integer("blank", 0, lo=0)
        self.use_space_char = p.boolean("use_space_char", True)
        self.softmax = p.choice("softmax", "auto", ("auto", "true", "false"))
        self.score_threshold = p.number("score_threshold", 0.0, lo=0.0, hi=1.0)
        p.finish()
        if not characters:
            raise BundleError(
                "decoder 'ctc_text' needs its character table: set decoder parameter 'characters' to "
                "the list of characters of the model's dict file (without the blank), e.g. PaddleOCR's "
                "ppocr_keys_v1.txt or the ONNX metadata 'character'"
            )
        if labels:
            raise BundleError(
                f"decoder 'ctc_text' does not use labels, but the manifest has {len(labels)}: put the "
                "character table in decoder parameter 'characters' and remove the labels"
            )
        table: list[str | None] = [*characters, *([" "] if self.use_space_char else [])]
        if self.blank > len(table):
            raise BundleError(
                f"decoder 'ctc_text': parameter 'blank' is {self.blank} but the table has "
                f"{len(table) + 1} classes (blank included); set 'blank' to 0 or the last index"
            )
        table.insert(self.blank, None)
        self.table = table
        self.characters = len(characters)

    @property
    def width(self) -> int:
        """The output width (classes per step) the character table needs."""
        return len(self.table)

    def _width_error(self, name: str, c: int) -> BundleError:
        space = " + 1 space" if self.use_space_char else ""
        hint = ""
        if c == self.width - 1 and self.use_space_char:
            hint = " (set use_space_char to false: the width is one less)"
        elif c == self.width + 1 and not self.use_space_char:
            hint = " (set use_space_char to true: the width is one more)"
        return BundleError(
            f"decoder 'ctc_text': output {name!r} has {c} classes per step but the character table "
            f"gives {self.width} ({self.characters} characters + 1 blank{space}): the character table "
            f"does not fit the output width; use the model's own dict file for 'characters'"
            f" or set use_space_char{hint}"
        )

    def check(self, outputs: list[TensorInfo]) -> None:
        fix = "Use decoder 'raw' or export with batch size 1"
        shape = one_output(self.name, outputs, 2, "(1, T, C) or (T, C)", fix)
        c = shape[-1]
        if c is not None and c != self.width:
            raise self._width_error(outputs[0].name, c)

    def __call__(self, outputs: list[npt.NDArray[Any]], t: Transform) -> Result:
        x = np.asarray(outputs[0], dtype=np.float64)
        if x.ndim == 3:
            x = x[0]
        if x.ndim != 2:
            raise BundleError(f"decoder 'ctc_text': output of shape {outputs[0].shape} is not (1, T, C)")
        if x.shape[1] != self.width:
            raise self._width_error("output 0", int(x.shape[1]))
        if x.shape[0] == 0 or not np.isfinite(x).all():  # NaN / Inf: no text (LoadedModel flags it)
            return Result(kind="text", confidence=0.0)
        if self.softmax == "true" or (self.softmax == "auto" and not _rows_are_probabilities(x)):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        best = np.argmax(x, axis=1)
        keep = best != self.blank
        keep[1:] &= best[1:] != best[:-1]
        steps = np.flatnonzero(keep)
        if not len(steps):
            return Result(kind="text", confidence=0.0)
        p = x[steps]
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # the table has >= 2 classes
        score = float(top2[:, 1].mean())
        if score < self.score_threshold:
            return Result(kind="text", confidence=0.0)
        margin = float((top2[:, 1] - top2[:, 0]).mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = float(-np.where(p > 0, p * np.log(p), 0.0).sum(axis=1).mean())
        text = "".join(self.table[i] or "" for i in best[steps]).strip()  # padding reads as spaces
        if not text:
            return Result(kind="text", confidence=0.0)
        line = TextLine(text, score, margin, entropy)
        return Result(kind="text", confidence=score, texts=[line])


def _rows_are_probabilities(x: npt.NDArray[np.float64]) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0 and np.all(np.abs(x.sum(axis=1) - 1.0) <= 1e-3))
