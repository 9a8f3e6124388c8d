"""Pieces shared by the decoders: strict parameter reading, labels, boxes to ``Detection``.

Every decoder reads its parameters through one ``ParamReader`` and calls ``finish()``
last: a parameter nobody asked for is an unknown parameter and a ``BundleError`` that
names it, the decoder and the parameters the decoder knows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Detection
from inference.runtime import TensorInfo


def label_for(labels: Sequence[str], index: int) -> str:
    """The label of class ``index``: from the manifest when it has one, else the index."""
    return labels[index] if 0 <= index < len(labels) else str(index)


def to_detections(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    classes: npt.NDArray[np.integer],
    labels: Sequence[str],
    t: Transform,
) -> list[Detection]:
    """Boxes in model-input pixels (K, 4) -> ``Detection``s in source pixels, best first."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    out: list[Detection] = []
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        out.append(
            Detection(label_for(labels, int(classes[i])), float(scores[i]), t.to_source((x1, y1, x2, y2)))
        )
    return out


def fmt_shapes(outputs: Sequence[TensorInfo]) -> str:
    """``name (1, 896, 16), ...`` with ``?`` for dynamic dimensions, for error messages."""
    return (
        ", ".join(f"{o.name} ({', '.join('?' if d is None else str(d) for d in o.shape)})" for o in outputs)
        or "none"
    )


def one_output(
    decoder: str, outputs: Sequence[TensorInfo], rank: int, want: str, fix: str
) -> tuple[int | None, ...]:
    """The shape of a decoder's single output, of ``rank`` dims or one more with a batch of 1
    (or dynamic) in front; ``BundleError`` naming ``want`` (e.g. "(1, C) or (C,)") and ``fix``."""
    if len(outputs) != 1:
        raise BundleError(
            f"decoder '{decoder}' needs exactly one output of shape {want}; the model has "
            f"{len(outputs)}: {fmt_shapes(outputs)}. Use decoder 'raw' or another decoder"
        )
    shape = outputs[0].shape
    if not (len(shape) == rank or (len(shape) == rank + 1 and shape[0] in (1, None))):
        raise BundleError(
            f"decoder '{decoder}' needs an output of shape {want}; output {fmt_shapes(outputs)} does not "
            f"fit. {fix}"
        )
    return shape


class ParamReader:
    def __init__(self, decoder: str, params: Mapping[str, Any] | None) -> None:
        if params is not None and not isinstance(params, Mapping):
            raise BundleError(
                f"decoder {decoder!r}: parameters must be a JSON object, got {type(params).__name__}; "
                "fix the manifest's decoder parameters"
            )
        self.decoder = decoder
        self._params: dict[str, Any] = dict(params or {})
        self._known: list[str] = []

    def _bad(self, key: str, want: str, value: object) -> BundleError:
        return BundleError(
            f"decoder {self.decoder!r}: parameter {key!r} must be {want}, got {value!r}; "
            "fix it in the manifest's decoder parameters"
        )

    def _get(self, key: str) -> tuple[bool, Any]:
        self._known.append(key)
        if key in self._params and self._params[key] is not None:
            return True, self._params[key]
        return False, None

    def has(self, key: str) -> bool:
        return key in self._params and self._params[key] is not None

    def number(self, key: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
        found, v = self._get(key)
        if not found:
            return default
        rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._bad(key, "a finite number" + rng, v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self._bad(key, "a number" + rng, v)
        return float(v)

    def optional_number(self, key: str, lo: float | None = None) -> float | None:
        if not self.has(key):
            self._known.append(key)
            return None
        return self.number(key, 0.0, lo=lo)

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        found, v = self._get(key)
        if not found:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self._bad(key, f"an integer in [{lo}, {hi if hi is not None else 'inf'}]", v)
        return v

    def optional_integer(self, key: str, lo: int | None = None) -> int | None:
        if not self.has(key):
            self._known.append(key)
            return None
        return self.integer(key, 0, lo=lo)

    def boolean(self, key: str, default: bool) -> bool:
        found, v = self._get(key)
        if not found:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        found, v = self._get(key)
        if not found:
            return default
        if isinstance(v, bool):  # JSON true/false for a tri-state like "auto|true|false"
            v = "true" if v else "false"
        if not isinstance(v, str) or v.lower() not in choices:
            raise self._bad(key, "one of " + ", ".join(repr(c) for c in choices), v)
        return v.lower()

    def numbers(
        self, key: str, default: Sequence[float], min_len: int = 1, lo: float | None = None
    ) -> list[float]:
        found, v = self._get(key)
        if not found:
            return [float(x) for x in default]
        if (
            not isinstance(v, (list, tuple))
            or len(v) < min_len
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)
            or (lo is not None and any(x < lo for x in v))
        ):
            low = f" >= {lo}" if lo is not None else ""
            raise self._bad(key, f"a list of at least {min_len} finite numbers{low}", v)
        return [float(x) for x in v]

    def integers(
        self, key: str, default: Sequence[int] | None, min_len: int = 1, lo: int = 1
    ) -> list[int] | None:
        found, v = self._get(key)
        if not found:
            return None if default is None else list(default)
        if (
            not isinstance(v, (list, tuple))
            or len(v) < min_len
            or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in v)
        ):
            raise self._bad(key, f"a list of at least {min_len} integers >= {lo}", v)
        return [int(x) for x in v]

    def pair(self, key: str, default: tuple[float, float], lo: float | None = None) -> tuple[float, float]:
        """A number used for both axes, or ``[x, y]``."""
        found, v = self._get(key)
        if not found:
            return default
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v, v]
        if (
            not isinstance(v, (list, tuple))
            or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)
            or (lo is not None and any(x < lo for x in v))
        ):
            low = f" >= {lo}" if lo is not None else ""
            raise self._bad(key, f"a number or a [x, y] pair of numbers{low}", v)
        return float(v[0]), float(v[1])

    def strings(self, key: str) -> list[str] | None:
        """A list of strings (None when absent)."""
        found, v = self._get(key)
        if not found:
            return None
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings", v if len(repr(v)) <= 80 else f"{repr(v)[:77]}...")
        return [str(x) for x in v]

    def index_map(self, key: str, names: Sequence[str]) -> dict[str, int] | None:
        """An object mapping exactly ``names`` to distinct integers >= 0 (None when absent)."""
        found, v = self._get(key)
        if not found:
            return None
        if (
            not isinstance(v, Mapping)
            or set(v) != set(names)
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v.values())
            or len(set(v.values())) != len(v)
        ):
            raise self._bad(key, "an object giving each of " + ", ".join(names) + " a distinct index >= 0", v)
        return {str(k): int(x) for k, x in v.items()}

    def finish(self) -> None:
        """Raise ``BundleError`` for any parameter that was not read."""
        unknown = sorted(set(self._params) - set(self._known))
        if unknown:
            raise BundleError(
                f"decoder {self.decoder!r}: unknown parameter {unknown[0]!r}"
                + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                + f"; known parameters: {', '.join(sorted(set(self._known)))}. "
                "Remove or rename it in the manifest's decoder parameters"
            )
