"""The ``db_text`` decoder: a DB (Differentiable Binarization) text probability map -> boxes.

After PaddleOCR / RapidOCR's ``DBPostProcess``: binarise the map (1, 1, H, W) at
``thresh``, optionally dilate with a 2×2 kernel, take the contours of the binary map, fit
each with a minimum-area rectangle, score it by the mean probability inside the rectangle
(``score_mode`` "fast") or inside the contour itself ("slow": better on curved lines),
drop it below ``box_thresh``, then "unclip": grow it by ``area × unclip_ratio / perimeter``.
The reference grows the polygon with pyclipper (round joins) and fits a minimum-area
rectangle again; for a rectangle that is the same rectangle grown by the distance on every
side, which is what is done here with OpenCV alone. Boxes are reported axis-aligned, in
source pixels, with the label ``text``; ``confidence`` is the best box score.

Parameters: ``thresh`` 0.3; ``box_thresh`` 0.5; ``unclip_ratio`` 1.6; ``use_dilation``
true; ``min_size`` 3 (shorter side of the rectangle in map pixels, before unclip; after
unclip it must be at least ``min_size`` + 2); ``max_candidates`` 1000 (contours looked at);
``score_mode`` fast|slow.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.decode_common import ParamReader, fmt_shapes
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Detection, Result
from inference.runtime import TensorInfo

F32 = npt.NDArray[np.float32]


def polygon_score(prob: F32, pts: npt.NDArray[np.floating]) -> float:
    """Mean of ``prob`` inside the polygon ``pts`` (K, 2), computed over its bounding box only."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(pts[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(pts[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(pts[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(pts[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    local = (pts - np.array([xmin, ymin], dtype=pts.dtype)).astype(np.int32)
    cv2.fillPoly(mask, [local.reshape(-1, 1, 2)], (1,))
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


class DbTextDecoder:
    name = "db_text"

    def __init__(self, params: dict[str, Any], labels: list[str]) -> None:
        p = ParamReader(self.name, params)
        self.thresh = p.number("thresh", 0.3, lo=0.0, hi=1.0)
        self.box_thresh = p.number("box_thresh", 0.5, lo=0.0, hi=1.0)
        self.unclip_ratio = p.number("unclip_ratio", 1.6, lo=0.0)
        self.use_dilation = p.boolean("use_dilation", True)
        self.min_size = p.number("min_size", 3.0, lo=0.0)
        self.max_candidates = p.integer("max_candidates", 1000, lo=1)
        self.slow = p.choice("score_mode", "fast", ("fast", "slow")) == "slow"
        p.finish()
        self.label = labels[0] if labels else "text"
        self.kernel = np.ones((2, 2), dtype=np.uint8)

    def check(self, outputs: list[TensorInfo]) -> None:
        if (
            len(outputs) != 1
            or len(outputs[0].shape) != 4
            or any(d not in (1, None) for d in outputs[0].shape[:2])
        ):
            raise BundleError(
                "decoder 'db_text' needs one probability map output of shape (1, 1, H, W); "
                f"the model has {len(outputs)}: {fmt_shapes(outputs)}. Use another decoder or 'raw'"
            )

    def __call__(self, outputs: list[npt.NDArray[Any]], t: Transform) -> Result:
        out = outputs[0]
        prob = np.ascontiguousarray(out.reshape(out.shape[-2], out.shape[-1]), dtype=np.float32)
        mh, mw = prob.shape
        mask = (prob > self.thresh).astype(np.uint8)
        if self.use_dilation:
            mask = np.asarray(cv2.dilate(mask, self.kernel), dtype=np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        # model-input pixels per map pixel (the map usually has the input's size)
        sx, sy = t.input_w / mw, t.input_h / mh
        dets: list[Detection] = []
        for contour in contours[: self.max_candidates]:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
            if min(rw, rh) < self.min_size:
                continue
            if self.slow:
                score = polygon_score(prob, contour.reshape(-1, 2).astype(np.float32))
            else:
                rect = cv2.boxPoints(((cx, cy), (rw, rh), angle))
                score = polygon_score(prob, np.asarray(rect, dtype=np.float32))
            if score < self.box_thresh:
                continue
            d = rw * rh * self.unclip_ratio / (2.0 * (rw + rh))
            rw, rh = rw + 2.0 * d, rh + 2.0 * d
            if min(rw, rh) < self.min_size + 2:
                continue
            pts = cv2.boxPoints(((cx, cy), (rw, rh), angle))
            x1, y1 = np.clip(pts.min(axis=0), 0, (mw, mh))
            x2, y2 = np.clip(pts.max(axis=0), 0, (mw, mh))
            box = t.to_source((float(x1) * sx, float(y1) * sy, float(x2) * sx, float(y2) * sy))
            dets.append(Detection(self.label, score, box))
        dets.sort(key=lambda det: -det.score)
        return Result(kind="detections", confidence=dets[0].score if dets else 0.0, detections=dets)
