"""Per-frame statistics for drift monitoring: image metrics on a thumbnail, result metrics from a Result.

Image metrics are computed on a small thumbnail (``cv2.resize`` with ``INTER_AREA`` to ``thumb_width``
pixels wide, aspect kept), so their cost barely depends on the camera resolution. INTER_AREA reads
every pixel and is the bulk of the cost (about 200 µs for a full 640x480 frame on a desktop core), so
it is given a view of only two rows per thumbnail row (every fifth row of a 640x480 frame): horizontally
each thumbnail pixel averages its whole block, vertically two rows of it. Mean and spread statistics
do not care; the Laplacian sees a little vertical aliasing, which only makes it more sensitive to blur.
On a 64-pixel thumbnail the sharpness sees blur wider than about a hundredth of the frame width, and it
also falls with contrast (the Laplacian scales with it).

- brightness: mean luma (0..255); contrast: std of luma; sharpness: variance of the Laplacian of luma;
  dark_fraction / bright_fraction: share of luma <= 16 / >= 239; saturation: mean S of HSV (0..255).
- confidence: ``Result.confidence`` (every kind; a detector's is 0 when it finds no box, which is why
  its decay is judged over the samples with a box, ``Window.detected_confidence``); margin: top-1
  minus top-2 class score and entropy: Shannon entropy in nats of the class scores normalised to sum
  1 (classifiers); detections: the number of boxes (detectors). Text recognisers: margin and
  entropy are the means over the read characters' steps of top-1 minus top-2 probability and of the
  step's entropy (``TextLine``; 0 with no text), chars the number of characters read. Non-finite
  values are left out of ``Sample.values``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from inference.result import Result, text_measures

IMAGE_METRICS = ("brightness", "contrast", "sharpness", "dark_fraction", "bright_fraction", "saturation")
RESULT_METRICS = ("confidence", "margin", "entropy", "detections", "chars")
METRICS = IMAGE_METRICS + RESULT_METRICS

DARK_LUMA = 16  # luma at or below: clipped dark
BRIGHT_LUMA = 239  # luma at or above: clipped bright
ROWS_PER_THUMB_ROW = 2  # rows of the frame averaged into each thumbnail row (the others are skipped)


@dataclass(frozen=True, slots=True)
class Sample:
    """One subsampled frame: what drift is computed from."""

    ts: float  # wall clock, Unix s
    frame: int  # frame index
    values: dict[str, float]  # metric -> value, for every metric that applies (see the module docstring)
    labels: tuple[tuple[str, float], ...]  # (label, score) per detection, the classifier's top-1, or ()
    latency_ms: float  # the model's own time (Result.inference_ms)


class FrameStats:
    """Computes the image and result metrics of a frame (stateless apart from the thumbnail width)."""

    def __init__(self, thumb_width: int = 64) -> None:
        if thumb_width < 8:
            raise ValueError(f"thumb_width must be at least 8 pixels, got {thumb_width}")
        self.thumb_width = thumb_width

    def thumbnail(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """``image`` shrunk to ``thumb_width`` pixels wide (never enlarged), aspect kept."""
        h, w = image.shape[:2]
        if w <= self.thumb_width:
            return image
        tw = self.thumb_width
        th = max(1, round(h * tw / w))
        step = max(1, h // (ROWS_PER_THUMB_ROW * th))  # a view of every step-th row: no copy
        view = image[::step] if step > 1 else image
        return np.asarray(cv2.resize(view, (tw, th), interpolation=cv2.INTER_AREA), np.uint8)

    def image(self, image_bgr: npt.NDArray[np.uint8]) -> dict[str, float]:
        """The image metrics of a BGR (or single-channel grey) uint8 frame."""
        if image_bgr.ndim not in (2, 3) or image_bgr.size == 0:
            raise ValueError(f"expected an HxW or HxWxC image, got shape {image_bgr.shape}")
        thumb = self.thumbnail(image_bgr)
        channels = 1 if thumb.ndim == 2 else thumb.shape[2]
        luma: npt.NDArray[np.uint8]
        if channels == 1:
            luma = thumb.reshape(thumb.shape[:2])
            saturation = 0.0
        else:
            bgr = thumb if channels == 3 else cv2.cvtColor(thumb, cv2.COLOR_BGRA2BGR)
            luma = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), np.uint8)
            saturation = float(cv2.mean(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))[1])
        mean, std = cv2.meanStdDev(luma)
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_32F))
        size = luma.size
        return {
            "brightness": float(mean[0, 0]),
            "contrast": float(std[0, 0]),
            "sharpness": float(lap_std[0, 0]) ** 2,
            "dark_fraction": int(np.count_nonzero(luma <= DARK_LUMA)) / size,
            "bright_fraction": int(np.count_nonzero(luma >= BRIGHT_LUMA)) / size,
            "saturation": saturation,
        }

    @staticmethod
    def result(result: Result) -> tuple[dict[str, float], tuple[tuple[str, float], ...]]:
        """The result metrics of ``result`` and its labels ((label, score) per box, or the top-1 class)."""
        values: dict[str, float] = {"confidence": float(result.confidence)}
        labels: tuple[tuple[str, float], ...] = ()
        if result.kind == "classes":
            scores = sorted((float(c.score) for c in result.classes), reverse=True)
            values["margin"] = scores[0] - scores[1] if len(scores) > 1 else (scores[0] if scores else 0.0)
            values["entropy"] = _entropy(scores)
            if result.classes:
                top = max(result.classes, key=lambda c: c.score)
                labels = ((top.label, float(top.score)),)
        elif result.kind == "detections":
            values["detections"] = float(len(result.detections))
            labels = tuple((d.label, float(d.score)) for d in result.detections)
        elif result.kind == "text":
            values["margin"], values["entropy"] = text_measures(result.texts)
            values["chars"] = float(sum(len(x.text) for x in result.texts))
        return values, labels

    def sample(self, frame_index: int, ts: float, image_bgr: npt.NDArray[np.uint8], result: Result) -> Sample:
        """The ``Sample`` of one frame: image and result metrics (non-finite values left out)."""
        values = self.image(image_bgr)
        result_values, labels = self.result(result)
        values.update(result_values)
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        labels = tuple((label, score) for label, score in labels if math.isfinite(score))
        return Sample(ts=ts, frame=frame_index, values=finite, labels=labels, latency_ms=result.inference_ms)


def _entropy(scores: list[float]) -> float:
    """Shannon entropy (nats) of non-negative ``scores`` normalised to sum 1 (0 for none)."""
    positive = [s for s in scores if s > 0 and math.isfinite(s)]
    total = sum(positive)
    if total <= 0:
        return 0.0
    return -sum((s / total) * math.log(s / total) for s in positive)
