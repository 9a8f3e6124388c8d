"""What one inference returns: a ``Result`` with classes, detections, text lines or raw outputs."""

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


@dataclass(frozen=True)
class TextLine:
    """One line of text read by a recogniser (``ctc_text``).

    ``score``: the mean over the line's characters of their step's top-1 probability. ``margin``
    and ``entropy`` (means over the same steps of top-1 minus top-2 probability, and of the
    step's Shannon entropy in nats) are for monitoring only: not in ``to_json``.
    """

    text: str
    score: float
    margin: float = 0.0
    entropy: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 5)}


@dataclass
class Result:
    """Decoded output of one frame.

    ``confidence`` is what monitoring and sampling read: the top class score for a
    classifier, the best box score for a detector (0 with no box), and for ``raw`` the
    largest value of the first output when it lies in [0, 1], else 0; for text the best line's
    score (0 with no text).
    ``kind`` says which of ``classes`` / ``detections`` / ``texts`` / ``outputs`` is filled.
    """

    kind: Literal["classes", "detections", "text", "outputs"]
    confidence: float
    classes: list[ClassScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    texts: list[TextLine] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0  # frame in to result out, queue waits included (set by infer / the pipeline)
    inference_ms: float = 0.0  # the model's own time: preprocess + run + decode, no queue waits
    finite: bool = True  # False when a model output held NaN or Inf (set by LoadedModel.infer)

    def payload(self) -> dict[str, Any]:
        """The kind-specific part of a results line: ``classes``, ``detections``, ``texts`` or ``outputs``."""
        if self.kind == "classes":
            return {"classes": [c.to_json() for c in self.classes]}
        if self.kind == "detections":
            return {"detections": [d.to_json() for d in self.detections]}
        if self.kind == "text":
            return {"texts": [x.to_json() for x in self.texts]}
        return {"outputs": self.outputs}


def text_measures(texts: list[TextLine]) -> tuple[float, float]:
    """(margin, entropy) of a text result: its lines' means (0, 0 with no line)."""
    if not texts:
        return 0.0, 0.0
    return sum(x.margin for x in texts) / len(texts), sum(x.entropy for x in texts) / len(texts)
