"""What one inference returns: a ``Result`` with classes, detections or raw outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 5), "box": [round(v, 2) for v in self.box]}


@dataclass(frozen=True)
class ClassScore:
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 5)}


@dataclass
class Result:
    """Decoded output of one frame.

    ``confidence`` is what monitoring and sampling read: the top class score for a
    classifier, the best box score for a detector (0 with no box), and for ``raw`` the
    largest value of the first output when it lies in [0, 1], else 0.
    ``kind`` says which of ``classes`` / ``detections`` / ``outputs`` is filled.
    """

    kind: Literal["classes", "detections", "outputs"]
    confidence: float
    classes: list[ClassScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0  # frame in to result out, queue waits included (set by infer / the pipeline)
    inference_ms: float = 0.0  # the model's own time: preprocess + run + decode, no queue waits
    finite: bool = True  # False when a model output held NaN or Inf (set by LoadedModel.infer)

    def payload(self) -> dict[str, Any]:
        """The kind-specific part of a results line (``classes``, ``detections`` or ``outputs``)."""
        if self.kind == "classes":
            return {"classes": [c.to_json() for c in self.classes]}
        if self.kind == "detections":
            return {"detections": [d.to_json() for d in self.detections]}
        return {"outputs": self.outputs}
