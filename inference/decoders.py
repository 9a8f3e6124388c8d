"""Output decoding: model outputs -> ``Result``.

A ``Decoder`` is built once per model from the manifest's ``decoder`` name, its parameters
and the labels (``make_decoder``). ``check`` compares it with the model's outputs when the
model loads (``BundleError`` when they cannot fit); ``__call__`` runs on every frame with
the outputs as float32 arrays (already dequantised) and the ``Transform`` that maps
model-input pixels back to the source image.

Decoders (parameters with their defaults):

``classification``  outputs (1, C) or (C,).
    ``softmax``: "auto" (apply it unless the output already is a probability vector) |
    true | false; ``top_k``: 5. Labels from the manifest, else "0", "1", ...
``yolo``  (inference/decode_yolo.py) one output (1, N, 5+C) for v5 or (1, 4+C, N) for v8.
``ssd_anchors``  (inference/decode_ssd.py) BlazeFace-style regressors + scores.
``db_text``  (inference/decode_db.py) PP-OCR DB probability map (1, 1, H, W).
``ctc_text``  (inference/decode_ctc.py) CTC text recogniser (1, T, C), e.g. PaddleOCR's, greedy
    decoding with parameter ``characters`` (the dict file): ``text`` results.
``detection_postprocess``  (inference/decode_detection_postprocess.py) the four outputs of TFLite's
    ``TFLite_Detection_PostProcess`` op (boxes, classes, scores, count), order from ``outputs``.
``raw``  any outputs: per output name, shape, dtype, min, max, mean.

Every ``Result`` carries ``confidence`` as ``Result`` documents it. Unknown decoder names and
unknown or ill-typed parameters are ``BundleError``s naming the decoder and the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, label_for, one_output
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import ClassScore, Result
from inference.runtime import TensorInfo

Array = npt.NDArray[Any]


@runtime_checkable
class Decoder(Protocol):
    """Turns one frame's model outputs into a ``Result`` (with ``latency_ms`` left at 0)."""

    name: str

    def check(self, outputs: list[TensorInfo]) -> None:
        """Raise ``BundleError`` when the model's outputs cannot fit this decoder.

        Dynamic dimensions (``None``) pass.
        """
        ...

    def __call__(self, outputs: list[Array], t: Transform) -> Result: ...


DecoderFactory = Callable[[dict[str, Any], list[str]], Decoder]


class ClassificationDecoder:
    name = "classification"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        self.softmax = p.choice("softmax", "auto", ("auto", "true", "false"))
        self.top_k = p.integer("top_k", 5, lo=1)
        p.finish()
        self.labels = list(labels)

    def check(self, outputs: list[TensorInfo]) -> None:
        shape = one_output(self.name, outputs, 1, "(1, C) or (C,)", "Use decoder 'raw' or another decoder")
        c = shape[-1]
        if c is not None and self.labels and len(self.labels) != c:
            raise BundleError(
                f"decoder 'classification': the manifest has {len(self.labels)} labels but output "
                f"{outputs[0].name!r} has {c} classes; fix the labels file"
            )

    def __call__(self, outputs: list[Array], t: Transform) -> Result:
        x = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        if x.size == 0:
            return Result(kind="classes", confidence=0.0)
        if self.softmax == "true" or (self.softmax == "auto" and not _is_probability(x)):
            e = np.exp(x - x.max())
            x = e / e.sum()
        k = min(self.top_k, x.size)
        top = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        top = top[np.argsort(-x[top], kind="stable")]
        classes = [ClassScore(label_for(self.labels, int(i)), float(x[i])) for i in top]
        conf = classes[0].score if math.isfinite(classes[0].score) else 0.0
        return Result(kind="classes", confidence=conf, classes=classes)


def _is_probability(x: npt.NDArray[np.float64]) -> bool:
    return bool(x.min() >= 0.0 and x.max() <= 1.0 and abs(float(x.sum()) - 1.0) <= 1e-3)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class RawDecoder:
    """Summarises every output; ``confidence`` is the first output's largest value when it
    lies in [0, 1], else 0."""

    name = "raw"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        ParamReader(self.name, params).finish()
        self.infos: list[TensorInfo] = []

    def check(self, outputs: list[TensorInfo]) -> None:
        self.infos = list(outputs)

    def __call__(self, outputs: list[Array], t: Transform) -> Result:
        summary: list[dict[str, Any]] = []
        conf = 0.0
        for i, out in enumerate(outputs):
            a = np.asarray(out)
            info = self.infos[i] if i < len(self.infos) else None
            finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
            if finite.size:
                lo, hi, mean = float(finite.min()), float(finite.max()), float(finite.mean(dtype=np.float64))
            else:
                lo = hi = mean = math.nan
            summary.append(
                {
                    "name": info.name if info else f"output{i}",
                    "shape": [int(d) for d in a.shape],
                    "dtype": str(info.dtype if info else a.dtype),
                    "min": _finite(lo),
                    "max": _finite(hi),
                    "mean": _finite(mean),
                }
            )
            if i == 0 and a.size and math.isfinite(hi) and 0.0 <= hi <= 1.0:
                conf = hi
        return Result(kind="outputs", confidence=conf, outputs=summary)


def _yolo(params: dict[str, Any], labels: list[str]) -> Decoder:
    from inference.decode_yolo import YoloDecoder

    return YoloDecoder(params, labels)


def _ssd(params: dict[str, Any], labels: list[str]) -> Decoder:
    from inference.decode_ssd import SsdAnchorsDecoder

    return SsdAnchorsDecoder(params, labels)


def _db(params: dict[str, Any], labels: list[str]) -> Decoder:
    from inference.decode_db import DbTextDecoder

    return DbTextDecoder(params, labels)


def _ctc(params: dict[str, Any], labels: list[str]) -> Decoder:
    from inference.decode_ctc import CtcTextDecoder

    return CtcTextDecoder(params, labels)


def _postprocess(params: dict[str, Any], labels: list[str]) -> Decoder:
    from inference.decode_detection_postprocess import DetectionPostprocessDecoder

    return DetectionPostprocessDecoder(params, labels)


DECODERS: dict[str, DecoderFactory] = {
    "classification": ClassificationDecoder,
    "yolo": _yolo,
    "ssd_anchors": _ssd,
    "db_text": _db,
    "ctc_text": _ctc,
    "detection_postprocess": _postprocess,
    "raw": RawDecoder,
}


def make_decoder(
    name: str, params: Mapping[str, Any] | None = None, labels: Sequence[str] | None = None
) -> Decoder:
    """The decoder ``name`` with ``params`` and ``labels``; ``BundleError`` on an unknown name
    or unknown / ill-typed parameters."""
    try:
        factory = DECODERS[name]
    except (KeyError, TypeError):
        raise BundleError(
            f"unknown decoder {name!r}: use one of {', '.join(sorted(DECODERS))} in the manifest's 'decoder'"
        ) from None
    if params is not None and not isinstance(params, Mapping):
        raise BundleError(
            f"decoder {name!r}: parameters must be a JSON object, got {type(params).__name__}; "
            "fix the manifest's decoder parameters"
        )
    if labels is not None and (isinstance(labels, str) or not all(isinstance(x, str) for x in labels)):
        raise BundleError(f"decoder {name!r}: labels must be a list of strings; fix the manifest's labels")
    return factory(dict(params or {}), list(labels or []))
