"""The ``ssd_anchors`` decoder: BlazeFace-style SSD heads with MediaPipe's anchors.

Outputs: regressors (1, N, K >= 4) and scores (1, N, C) in either order, N = number of
anchors. The math follows MediaPipe's ``SsdAnchorsCalculator`` (anchor generation) and
``TensorsToDetectionsCalculator`` (box decoding, score sigmoid with clipping), then
``NonMaxSuppressionCalculator`` (weighted NMS, IoU), as the BlazeFace graphs configure them.

Anchors: for each run of layers with the same stride, ``len(aspect_ratios)`` anchors per
layer (+1 when ``interpolated_scale_aspect_ratio`` > 0) on a ceil(size / stride) grid,
centres at ``(cell + anchor_offset) / grid``; ``fixed_anchor_size`` makes them 1×1.
BlazeFace front (128×128, strides 8, 16, 16, 16) and back (256×256, strides 16, 32, 32, 32)
have 896 anchors; full range (192×192, stride 4, no interpolated anchor) has 2304.

Parameters (defaults): ``input_size`` (the model input size; int or [w, h]; default: the
model's, from the frame's transform); ``strides`` (by input size: 128 -> [8, 16, 16, 16],
256 -> [16, 32, 32, 32], 192 -> [4]; else [8, 16, 16, 16]); ``num_layers`` (len(strides));
``anchor_offset`` 0.5 (or [x, y]); ``aspect_ratios`` [1.0];
``interpolated_scale_aspect_ratio`` 1.0 (0.0 for 192 when strides are not given);
``fixed_anchor_size`` true; ``min_scale`` 0.1484375; ``max_scale`` 0.75;
``reduce_boxes_in_lowest_layer`` false; ``x_scale``/``y_scale``/``w_scale``/``h_scale``
(default the input size); ``reverse_output_order`` true (x before y);
``apply_exponential_on_box_size`` false; ``sigmoid`` true; ``score_clipping_thresh`` 100;
``score_threshold`` 0.5 (MediaPipe's min_score_thresh; kept when >=); ``num_anchors``
(optional: the anchor count the layout must give for ``input_size`` or 128, checked at
construction); ``iou_threshold`` 0.3; ``nms`` weighted|plain; ``max_detections`` 100.
Labels default to ["face"].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, fmt_shapes, to_detections
from inference.errors import BundleError
from inference.geometry import Transform
from inference.nms import nms, weighted_nms
from inference.result import Result
from inference.runtime import TensorInfo

F32 = npt.NDArray[np.float32]

# BlazeFace layouts by (square) input size: strides and interpolated_scale_aspect_ratio,
# from MediaPipe's face_detection_{front,back,full_range} graphs.
PRESETS: dict[int, tuple[list[int], float]] = {
    128: ([8, 16, 16, 16], 1.0),
    256: ([16, 32, 32, 32], 1.0),
    192: ([4], 0.0),
}
DEFAULT_SIZE = 128


@dataclass(frozen=True)
class AnchorSpec:
    strides: list[int] | None  # None: by input size (PRESETS)
    interpolated: float | None  # None: by input size (PRESETS), else 1.0
    offset: tuple[float, float]
    aspect_ratios: list[float]
    fixed_size: bool
    min_scale: float
    max_scale: float
    reduce_lowest: bool


def generate_anchors(spec: AnchorSpec, input_w: int, input_h: int) -> F32:
    """Anchors as rows ``x_center, y_center, w, h`` (normalised), MediaPipe's order."""
    preset = PRESETS.get(input_w) if input_w == input_h else None
    strides = spec.strides if spec.strides is not None else (preset or PRESETS[DEFAULT_SIZE])[0]
    interp = spec.interpolated if spec.interpolated is not None else (preset[1] if preset else 1.0)
    n = len(strides)

    def scale(i: int) -> float:
        if n == 1:
            return (spec.min_scale + spec.max_scale) * 0.5
        return spec.min_scale + (spec.max_scale - spec.min_scale) * i / (n - 1)

    parts: list[F32] = []
    layer = 0
    while layer < n:
        ws: list[float] = []
        hs: list[float] = []
        last = layer
        while last < n and strides[last] == strides[layer]:
            sc = scale(last)
            if last == 0 and spec.reduce_lowest:
                ars, scs = [1.0, 2.0, 0.5], [0.1, sc, sc]
            else:
                ars = list(spec.aspect_ratios)
                scs = [sc] * len(ars)
                if interp > 0.0:
                    nxt = 1.0 if last == n - 1 else scale(last + 1)
                    scs.append(math.sqrt(sc * nxt))
                    ars.append(interp)
            for ar, s in zip(ars, scs, strict=True):
                r = math.sqrt(ar)
                hs.append(s / r)
                ws.append(s * r)
            last += 1
        fh = math.ceil(input_h / strides[layer])
        fw = math.ceil(input_w / strides[layer])
        k = len(ws)
        ys, xs = np.meshgrid(np.arange(fh, dtype=np.float64), np.arange(fw, dtype=np.float64), indexing="ij")
        xc = np.repeat(((xs + spec.offset[0]) / fw).reshape(-1), k)
        yc = np.repeat(((ys + spec.offset[1]) / fh).reshape(-1), k)
        if spec.fixed_size:
            aw = np.ones(fh * fw * k)
            ah = np.ones(fh * fw * k)
        else:
            aw = np.tile(np.asarray(ws), fh * fw)
            ah = np.tile(np.asarray(hs), fh * fw)
        parts.append(np.stack([xc, yc, aw, ah], axis=1).astype(np.float32))
        layer = last
    return np.concatenate(parts) if parts else np.zeros((0, 4), dtype=np.float32)


class SsdAnchorsDecoder:
    name = "ssd_anchors"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        size = p.pair("input_size", (0.0, 0.0), lo=1)
        self.input_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size[0] else None
        strides = p.integers("strides", None, lo=1)
        num_layers = p.optional_integer("num_layers", lo=1)
        if num_layers is not None and strides is not None and num_layers != len(strides):
            raise BundleError(
                f"decoder 'ssd_anchors': num_layers is {num_layers} but strides has {len(strides)} "
                "entries; give one stride per layer"
            )
        if num_layers is not None and strides is None:
            raise BundleError(
                "decoder 'ssd_anchors': num_layers needs strides (one per layer); add 'strides'"
            )
        interp = p.optional_number("interpolated_scale_aspect_ratio", lo=0.0)
        self.spec = AnchorSpec(
            strides=strides,
            interpolated=interp if interp is not None else (1.0 if strides is not None else None),
            offset=p.pair("anchor_offset", (0.5, 0.5)),
            aspect_ratios=p.numbers("aspect_ratios", [1.0], lo=1e-6),
            fixed_size=p.boolean("fixed_anchor_size", True),
            min_scale=p.number("min_scale", 0.1484375, lo=0.0),
            max_scale=p.number("max_scale", 0.75, lo=0.0),
            reduce_lowest=p.boolean("reduce_boxes_in_lowest_layer", False),
        )
        self.scales = tuple(
            p.optional_number(k, lo=1e-9) for k in ("x_scale", "y_scale", "w_scale", "h_scale")
        )
        self.reverse = p.boolean("reverse_output_order", True)
        self.exp_size = p.boolean("apply_exponential_on_box_size", False)
        self.sigmoid = p.boolean("sigmoid", True)
        self.clip = p.number("score_clipping_thresh", 100.0, lo=0.0)
        self.score_threshold = p.number("score_threshold", 0.5, lo=0.0, hi=1.0)
        self.num_anchors = p.optional_integer("num_anchors", lo=1)
        self.iou_threshold = p.number("iou_threshold", 0.3, lo=0.0, hi=1.0)
        self.weighted = p.choice("nms", "weighted", ("weighted", "plain")) == "weighted"
        self.max_detections = p.integer("max_detections", 100, lo=1)
        p.finish()
        self.labels = list(labels) or ["face"]
        self._anchors: dict[tuple[int, int], F32] = {}
        size = self.input_size or (DEFAULT_SIZE, DEFAULT_SIZE)
        count = len(self.anchors(*size))  # pre-computed once
        if self.num_anchors is not None and count != self.num_anchors:
            raise BundleError(
                f"decoder 'ssd_anchors': parameter num_anchors is {self.num_anchors} but the anchor layout "
                f"gives {count} anchors for input {size[0]}x{size[1]}; fix 'num_anchors', 'input_size' or "
                "'strides'"
            )

    def anchors(self, input_w: int, input_h: int) -> F32:
        """The anchors for a model input of ``input_w``×``input_h`` (cached)."""
        key = self.input_size or (input_w, input_h)
        a = self._anchors.get(key)
        if a is None:
            a = self._anchors[key] = generate_anchors(self.spec, *key)
        return a

    def _split(self, shapes: list[tuple[int | None, ...]]) -> tuple[int, int]:
        """Indices of (regressors, scores): scores are the one with the smaller last axis."""
        lr, ls = shapes[0][-1], shapes[1][-1]
        if ls is not None and ((lr is not None and lr < ls) or (lr is None and ls >= 4)):
            return 1, 0
        return 0, 1

    def check(self, outputs: list[TensorInfo]) -> None:
        shapes = [o.shape for o in outputs]
        if len(outputs) != 2 or any(len(sh) != 3 or sh[0] not in (1, None) for sh in shapes):
            raise BundleError(
                "decoder 'ssd_anchors' needs two 3-D outputs, regressors (1, N, >=4) and scores (1, N, C); "
                f"the model has {len(outputs)}: {fmt_shapes(outputs)}. Use another decoder or 'raw'"
            )
        r, s = self._split(shapes)
        reg, sco = shapes[r], shapes[s]
        if (reg[2] is not None and reg[2] < 4) or (
            reg[1] is not None and sco[1] is not None and reg[1] != sco[1]
        ):
            raise BundleError(
                "decoder 'ssd_anchors' needs regressors (1, N, >=4) and scores (1, N, C) with the same N; "
                f"got {fmt_shapes(outputs)}. Use another decoder or 'raw'"
            )
        n = reg[1] if reg[1] is not None else sco[1]
        if n is None:
            return
        sizes = [self.input_size] if self.input_size else [(k, k) for k in (DEFAULT_SIZE, *PRESETS)]
        counts = {size: len(self.anchors(*size)) for size in sizes}
        if n not in counts.values():
            raise BundleError(
                f"decoder 'ssd_anchors': the model predicts {n} boxes but the anchor layout gives "
                + ", ".join(f"{c} for input {w}x{h}" for (w, h), c in counts.items())
                + "; set the decoder parameters 'input_size' and 'strides' (and "
                "'interpolated_scale_aspect_ratio', 'aspect_ratios') to the model's anchor layout"
            )

    def __call__(self, outputs: list[npt.NDArray[Any]], t: Transform) -> Result:
        r, s = self._split([tuple(int(d) for d in o.shape) for o in outputs])
        raw = outputs[r].reshape(outputs[r].shape[-2], outputs[r].shape[-1])
        logits = outputs[s].reshape(outputs[s].shape[-2], outputs[s].shape[-1]).astype(np.float64)
        w, h = self.input_size or (t.input_w, t.input_h)
        anchors = self.anchors(w, h)
        if len(anchors) != len(raw) or len(logits) != len(raw):
            raise BundleError(
                f"decoder 'ssd_anchors': the model predicts {len(raw)} boxes and {len(logits)} scores "
                f"but the anchor layout for input {w}x{h} has {len(anchors)} anchors; set the decoder "
                "parameters 'input_size' and 'strides' to the model's anchor layout"
            )
        if self.sigmoid:
            logits = np.clip(logits, -self.clip, self.clip)
            logits = 1.0 / (1.0 + np.exp(-logits))
        cls = np.argmax(logits, axis=1) if logits.shape[1] > 1 else np.zeros(len(logits), dtype=np.intp)
        score = logits[np.arange(len(logits)), cls]
        idx = np.flatnonzero(score >= self.score_threshold)
        if not len(idx):
            return Result(kind="detections", confidence=0.0)
        reg = raw[idx, :4].astype(np.float64)
        a = anchors[idx].astype(np.float64)
        if self.reverse:
            x, y, bw, bh = reg[:, 0], reg[:, 1], reg[:, 2], reg[:, 3]
        else:
            y, x, bh, bw = reg[:, 0], reg[:, 1], reg[:, 2], reg[:, 3]
        sx, sy, sw, sh = (v if v is not None else d for v, d in zip(self.scales, (w, h, w, h), strict=True))
        xc = x / sx * a[:, 2] + a[:, 0]
        yc = y / sy * a[:, 3] + a[:, 1]
        if self.exp_size:
            bw = np.exp(bw / sw) * a[:, 2]
            bh = np.exp(bh / sh) * a[:, 3]
        else:
            bw = bw / sw * a[:, 2]
            bh = bh / sh * a[:, 3]
        boxes = np.stack([(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h], axis=1)
        valid = (bw > 0) & (bh > 0)
        boxes, score, cls = boxes[valid], score[idx][valid], cls[idx][valid]
        if self.weighted:
            boxes, keep = weighted_nms(boxes, score, self.iou_threshold, self.max_detections)
        else:
            keep = nms(boxes, score, self.iou_threshold, self.max_detections)
            boxes = boxes[keep]
        dets = to_detections(boxes, score[keep], cls[keep], self.labels, t)
        return Result(kind="detections", confidence=dets[0].score if dets else 0.0, detections=dets)
