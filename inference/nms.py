"""Non-maximum suppression on numpy arrays (boxes as ``x1, y1, x2, y2`` rows).

The loops run once per *kept* box, each step vectorised over the remaining ones, so the
cost is O(kept × candidates) numpy work and no Python loop over candidates.
A box is suppressed when its IoU with a kept box is strictly greater than the threshold
(MediaPipe and torchvision agree on this).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]


def iou_one_to_many(box: npt.NDArray[np.floating], boxes: npt.NDArray[np.floating]) -> F64:
    """IoU of ``box`` (4,) with each row of ``boxes`` (K, 4); 0 where the union is empty."""
    b = box.astype(np.float64)
    bs = boxes.astype(np.float64)
    iw = np.clip(np.minimum(b[2], bs[:, 2]) - np.maximum(b[0], bs[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(b[3], bs[:, 3]) - np.maximum(b[1], bs[:, 1]), 0.0, None)
    inter = iw * ih
    area = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    areas = np.clip(bs[:, 2] - bs[:, 0], 0.0, None) * np.clip(bs[:, 3] - bs[:, 1], 0.0, None)
    union = area + areas - inter
    out = np.zeros(len(bs), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def nms(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    iou_threshold: float,
    max_out: int,
    classes: npt.NDArray[np.integer] | None = None,
) -> Ints:
    """Greedy NMS; indices of the kept boxes, best score first.

    With ``classes``, boxes of different classes never suppress each other (class-aware):
    each class is shifted to its own region of the plane, the usual batched-NMS trick.
    """
    if len(boxes) == 0 or max_out <= 0:
        return np.zeros(0, dtype=np.intp)
    work = boxes.astype(np.float64)
    if classes is not None:
        span = float(np.abs(work).max()) + 1.0
        work = work + (classes.astype(np.float64) * 2.0 * span)[:, None]
    x1, y1, x2, y2 = (np.ascontiguousarray(work[:, k]) for k in range(4))
    areas = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    order: Ints = np.argsort(-scores.astype(np.float64), kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
        union = areas[i] + areas[rest] - inter
        # IoU <= t  <=>  inter <= t * union (union > 0); an empty union means IoU 0: kept
        order = rest[(inter <= iou_threshold * union) | (union <= 0.0)]
    return np.asarray(keep, dtype=np.intp)


def weighted_nms(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    iou_threshold: float,
    max_out: int,
) -> tuple[F64, Ints]:
    """MediaPipe's weighted NMS (``NonMaxSuppressionCalculator``, algorithm WEIGHTED).

    Take the best remaining box; every remaining box whose IoU with it exceeds the
    threshold (itself included) is merged into one box, the score-weighted mean of their
    coordinates, and removed. The merged box keeps the best box's score. Returns the merged
    boxes (M, 4) and the index of the best box of each group (for its score and class).
    """
    if len(boxes) == 0 or max_out <= 0:
        return np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.intp)
    b = boxes.astype(np.float64)
    s = scores.astype(np.float64)
    order: Ints = np.argsort(-s, kind="stable")
    merged: list[F64] = []
    tops: list[int] = []
    while order.size and len(tops) < max_out:
        top = int(order[0])
        group = iou_one_to_many(b[top], b[order]) > iou_threshold
        group[0] = True  # a degenerate (zero-area) best box still leaves the queue
        members = order[group]
        w = s[members]
        total = float(w.sum())
        if total > 0:
            merged.append((b[members] * w[:, None]).sum(axis=0) / total)
        else:
            merged.append(b[top])
        tops.append(top)
        order = order[~group]
    return np.stack(merged), np.asarray(tops, dtype=np.intp)
