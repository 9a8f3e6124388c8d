"""The ``detection_postprocess`` decoder: models ending in TFLite's ``TFLite_Detection_PostProcess``.

The op (TF Object Detection API SSD exports, EfficientDet-Lite, ...) has done the anchors and
the NMS already; its four outputs are boxes (1, N, 4) as ``[ymin, xmin, ymax, xmax]`` normalised
0..1 of the model input, classes (1, N) (class ids as floats), scores (1, N) and the count of
valid rows (1,) or (1, 1). Boxes are mapped back to source pixels through the ``Transform``.

The order of the outputs varies between exporters (TF1: boxes, classes, scores, count; TF2 and
EfficientDet-Lite often scores, boxes, count, classes). Parameter ``outputs``
(``{"boxes": i, "classes": j, "scores": k, "count": l}``, indices into the model's outputs)
says it; without it ``check`` works it out: from the op's own output names when the model has
them (``TFLite_Detection_PostProcess`` and ``:1`` ``:2`` ``:3`` are boxes, classes, scores,
count), else boxes are the (1, N, 4) output and count the one with one value, and of the two
(1, N) ones a name containing "class" or "score" decides, else the TF1 order (classes first).
Whoever reads the graph (the TFLite metadata reader) should pass ``outputs`` explicitly.

Parameters: ``outputs`` (see above); ``score_threshold`` 0.25 (kept when >=); ``max_detections``
100; ``label_offset`` 0 (the label of class id k is ``labels[k + label_offset]``: 1 for a labels
file that starts with a background entry such as "???"). A count that is not a finite number is
taken as 0, and any count is clamped to [0, N].
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, fmt_shapes, to_detections
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Result
from inference.runtime import TensorInfo

ROLES = ("boxes", "classes", "scores", "count")
_OP_NAME = re.compile(r"^(.*TFLite_Detection_PostProcess)(?::(\d+))?$")


def _numel_one(shape: tuple[int | None, ...]) -> bool:
    return len(shape) <= 2 and all(d == 1 for d in shape)


def _from_op_names(outputs: list[TensorInfo]) -> dict[str, int] | None:
    """The roles from the op's output names (``…PostProcess``, ``…:1``, ``:2``, ``:3``), if they say."""
    found: dict[int, int] = {}
    bases: set[str] = set()
    for i, o in enumerate(outputs):
        m = _OP_NAME.match(o.name)
        if m is None:
            return None
        bases.add(m.group(1))
        found[int(m.group(2) or 0)] = i
    if len(bases) != 1 or sorted(found) != [0, 1, 2, 3]:
        return None
    return {role: found[k] for k, role in enumerate(ROLES)}


def _from_shapes(outputs: list[TensorInfo]) -> dict[str, int]:
    rank3 = [i for i, o in enumerate(outputs) if len(o.shape) == 3]
    if len(rank3) != 1:
        raise BundleError(
            f"decoder 'detection_postprocess' cannot tell which output holds the boxes (1, N, 4) in "
            f"{fmt_shapes(outputs)}; set decoder parameter 'outputs' to "
            '{"boxes": i, "classes": j, "scores": k, "count": l}'
        )
    boxes = rank3[0]
    rest = [i for i in range(len(outputs)) if i != boxes]
    ones = [i for i in rest if _numel_one(outputs[i].shape)]
    # with N == 1 the classes and scores have one value too: the count is then the smallest-rank one
    ones.sort(key=lambda i: len(outputs[i].shape))
    if not ones:
        raise BundleError(
            f"decoder 'detection_postprocess' cannot tell which output holds the count (1,) in "
            f"{fmt_shapes(outputs)}; set decoder parameter 'outputs' to "
            '{"boxes": i, "classes": j, "scores": k, "count": l}'
        )
    count = ones[0]
    a, b = (i for i in rest if i != count)
    names = (outputs[a].name.lower(), outputs[b].name.lower())
    if "score" in names[0] or "class" in names[1]:
        a, b = b, a
    return {"boxes": boxes, "classes": a, "scores": b, "count": count}


class DetectionPostprocessDecoder:
    name = "detection_postprocess"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        self.roles = p.index_map("outputs", ROLES)
        self.score_threshold = p.number("score_threshold", 0.25, lo=0.0, hi=1.0)
        self.max_detections = p.integer("max_detections", 100, lo=1)
        self.label_offset = p.integer("label_offset", 0)
        p.finish()
        self.labels = list(labels)

    def check(self, outputs: list[TensorInfo]) -> None:
        if len(outputs) != 4:
            raise BundleError(
                f"decoder 'detection_postprocess' needs the four outputs of TFLite_Detection_PostProcess "
                f"(boxes, classes, scores, count); the model has {len(outputs)}: {fmt_shapes(outputs)}. "
                "Use decoder 'raw' or another decoder"
            )
        if self.roles is not None:
            bad = {r: i for r, i in self.roles.items() if i >= len(outputs)}
            if bad:
                raise BundleError(
                    f"decoder 'detection_postprocess': parameter 'outputs' gives {bad} but the model has "
                    f"4 outputs (0..3): {fmt_shapes(outputs)}; fix the indices"
                )
            roles = self.roles
        else:
            roles = _from_op_names(outputs) or _from_shapes(outputs)
        boxes = outputs[roles["boxes"]].shape
        n = boxes[1] if len(boxes) == 3 else None
        problems = []
        if len(boxes) != 3 or boxes[0] not in (1, None) or boxes[2] not in (4, None):
            problems.append(f"boxes {outputs[roles['boxes']].name!r} is not (1, N, 4)")
        for role in ("classes", "scores"):
            s = outputs[roles[role]].shape
            if len(s) not in (1, 2) or (len(s) == 2 and s[0] not in (1, None)):
                problems.append(f"{role} {outputs[roles[role]].name!r} is not (1, N)")
            elif n is not None and s[-1] not in (n, None):
                problems.append(f"{role} {outputs[roles[role]].name!r} has {s[-1]} rows, boxes {n}")
        c = outputs[roles["count"]].shape
        if len(c) > 2 or any(d not in (1, None) for d in c):
            problems.append(f"count {outputs[roles['count']].name!r} is not (1,) or (1, 1)")
        if problems:
            raise BundleError(
                f"decoder 'detection_postprocess' with outputs {roles}: {'; '.join(problems)} "
                f"({fmt_shapes(outputs)}); set decoder parameter 'outputs' to the right indices"
            )
        self.roles = roles

    def __call__(self, outputs: list[npt.NDArray[Any]], t: Transform) -> Result:
        roles = self.roles or {role: i for i, role in enumerate(ROLES)}  # check() always sets it
        boxes = np.asarray(outputs[roles["boxes"]], dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(outputs[roles["classes"]], dtype=np.float64).reshape(-1)
        scores = np.asarray(outputs[roles["scores"]], dtype=np.float64).reshape(-1)
        n = min(len(boxes), len(classes), len(scores))
        raw = np.asarray(outputs[roles["count"]], dtype=np.float64).reshape(-1)
        count = float(raw[0]) if raw.size else 0.0
        k = 0 if math.isnan(count) else int(min(max(count, 0.0), float(n)))
        boxes, classes, scores = boxes[:k], classes[:k], scores[:k]
        ok = (
            np.isfinite(scores)
            & (scores >= self.score_threshold)
            & np.isfinite(classes)
            & np.isfinite(boxes).all(axis=1)
        )
        idx = np.flatnonzero(ok)
        if not len(idx):
            return Result(kind="detections", confidence=0.0)
        idx = idx[np.argsort(-scores[idx], kind="stable")[: self.max_detections]]
        scale = np.array([t.input_h, t.input_w, t.input_h, t.input_w], dtype=np.float64)
        yx = boxes[idx] * scale
        xyxy = np.stack(
            [
                np.minimum(yx[:, 1], yx[:, 3]),
                np.minimum(yx[:, 0], yx[:, 2]),
                np.maximum(yx[:, 1], yx[:, 3]),
                np.maximum(yx[:, 0], yx[:, 2]),
            ],
            axis=1,
        )
        cid = np.rint(np.clip(classes[idx], -(2.0**31), 2.0**31)).astype(np.int64) + self.label_offset
        dets = to_detections(xyxy, scores[idx], cid, self.labels, t)
        return Result(kind="detections", confidence=dets[0].score, detections=dets)
