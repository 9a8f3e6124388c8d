"""The ``yolo`` decoder: YOLOv5- and YOLOv8-style detection heads, then class-aware NMS.

Layouts of the one output (batch 1):

* v5: (1, N, 5 + C), rows ``cx, cy, w, h, objectness, class scores...``;
  a box's score is ``objectness × best class score``.
* v8: (1, 4 + C, N), columns ``cx, cy, w, h, class scores...`` (no objectness);
  the transposed export (1, N, 4 + C) is accepted too.

``version`` "auto" tells them apart by the label count when the manifest has labels
(5 + C on the last axis is v5, 4 + C on either axis v8), else by shape: the attribute
axis is the shorter one, and an attribute axis in the middle means v8, at the end v5.
Set ``version`` when a model is ambiguous (a transposed v8 export without labels).

Parameters: ``version`` auto|v5|v8; ``score_threshold`` 0.25 (kept when >=);
``iou_threshold`` 0.45; ``max_detections`` 100; ``max_candidates`` 3000 (best boxes kept
before NMS); ``normalized`` false (true: coordinates are 0..1 of the model input, not
pixels); ``class_agnostic`` false (true: one NMS across classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, fmt_shapes, to_detections
from inference.errors import BundleError
from inference.geometry import Transform
from inference.nms import nms
from inference.result import Result
from inference.runtime import TensorInfo


class YoloDecoder:
    name = "yolo"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        self.version = p.choice("version", "auto", ("auto", "v5", "v8"))
        self.score_threshold = p.number("score_threshold", 0.25, lo=0.0, hi=1.0)
        self.iou_threshold = p.number("iou_threshold", 0.45, lo=0.0, hi=1.0)
        self.max_detections = p.integer("max_detections", 100, lo=1)
        self.max_candidates = p.integer("max_candidates", 3000, lo=1)
        self.normalized = p.boolean("normalized", False)
        self.class_agnostic = p.boolean("class_agnostic", False)
        p.finish()
        self.labels = list(labels)

    def layout(self, shape: tuple[int | None, ...]) -> tuple[str, bool]:
        """``(version, attributes_last)`` for an output of ``shape``; ``BundleError`` if none fits."""
        if len(shape) != 3 or shape[0] not in (1, None):
            raise BundleError(
                f"decoder 'yolo' needs one 3-D output (1, N, 5+C) for v5 or (1, 4+C, N) for v8; "
                f"got shape {shape}. Use decoder 'raw' or export the model with batch size 1"
            )
        a, b = shape[1], shape[2]
        n = len(self.labels)
        if self.version == "v5":
            return "v5", True
        if n:
            if self.version == "auto" and b == 5 + n:
                return "v5", True
            if a == 4 + n:
                return "v8", False
            if b == 4 + n:
                return "v8", True
            if a is not None and b is not None:
                raise BundleError(
                    f"decoder 'yolo': output shape {shape} fits neither (1, N, 5+C) nor (1, 4+C, N) "
                    f"with the manifest's {n} labels; fix the labels or set decoder parameter 'version'"
                )
        if self.version == "v8":
            return "v8", a is not None and b is not None and a > b
        if a is not None and (b is None or a < b):
            return "v8", False
        return "v5", True

    def check(self, outputs: list[TensorInfo]) -> None:
        if len(outputs) != 1:
            raise BundleError(
                f"decoder 'yolo' needs exactly one output, (1, N, 5+C) or (1, 4+C, N); the model has "
                f"{len(outputs)}: {fmt_shapes(outputs)}. Export the model with the detection head "
                "concatenated (no built-in NMS) or use decoder 'raw'"
            )
        shape = outputs[0].shape
        version, last = self.layout(shape)
        attrs = shape[2] if last else shape[1]
        need = 6 if version == "v5" else 5
        if attrs is not None and attrs < need:
            raise BundleError(
                f"decoder 'yolo' ({version}): output {outputs[0].name!r} of shape {shape} has {attrs} "
                f"values per box, needs at least {need}; set decoder parameter 'version' or use 'raw'"
            )
        n = len(self.labels)
        if attrs is not None and n and attrs != n + need - 1:
            raise BundleError(
                f"decoder 'yolo' ({version}): output {outputs[0].name!r} of shape {shape} has "
                f"{attrs - need + 1} classes but the manifest has {n} labels; fix the labels file"
            )

    def __call__(self, outputs: list[npt.NDArray[Any]], t: Transform) -> Result:
        out = outputs[0]
        version, last = self.layout(tuple(int(d) for d in out.shape))
        x = out.reshape(out.shape[-2], out.shape[-1])
        if not last:
            x = x.T
        if version == "v5":
            obj = x[:, 4]
            cand = np.flatnonzero(obj >= self.score_threshold)
            cls = x[cand, 5:] * obj[cand, None]
            cid = np.argmax(cls, axis=1)
            score = cls[np.arange(len(cand)), cid]
        else:
            cls_all = x[:, 4:]
            cid_all = np.argmax(cls_all, axis=1)
            score_all = cls_all[np.arange(len(cls_all)), cid_all]
            cand = np.flatnonzero(score_all >= self.score_threshold)
            cid, score = cid_all[cand], score_all[cand]
        ok = score >= self.score_threshold
        cand, cid, score = cand[ok], cid[ok], score[ok]
        if len(cand) > self.max_candidates:
            best = np.argpartition(-score, self.max_candidates - 1)[: self.max_candidates]
            cand, cid, score = cand[best], cid[best], score[best]
        if not len(cand):
            return Result(kind="detections", confidence=0.0)
        xywh = x[cand, :4].astype(np.float64)
        if self.normalized:
            xywh = xywh * np.array([t.input_w, t.input_h, t.input_w, t.input_h], dtype=np.float64)
        half = xywh[:, 2:4] / 2.0
        boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
        keep = nms(
            boxes, score, self.iou_threshold, self.max_detections, None if self.class_agnostic else cid
        )
        dets = to_detections(boxes[keep], score[keep], cid[keep], self.labels, t)
        return Result(kind="detections", confidence=dets[0].score if dets else 0.0, detections=dets)
