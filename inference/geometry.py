"""Mapping between source-image pixels and model-input pixels (stretch or letterbox)."""

from __future__ import annotations

from dataclasses import dataclass

from inference.result import Box


@dataclass(frozen=True)
class Transform:
    """How a source image of ``src_w``×``src_h`` became the model input of ``input_w``×``input_h``.

    model_x = src_x * scale_x + pad_x (likewise y). Decoders produce boxes in model-input
    pixels and call ``to_source`` to report them in source pixels, clipped to the image.
    """

    src_w: int
    src_h: int
    input_w: int
    input_h: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    @classmethod
    def stretch(cls, src_w: int, src_h: int, input_w: int, input_h: int) -> Transform:
        return cls(src_w, src_h, input_w, input_h, input_w / src_w, input_h / src_h)

    @classmethod
    def letterbox(cls, src_w: int, src_h: int, input_w: int, input_h: int) -> Transform:
        s = min(input_w / src_w, input_h / src_h)
        return cls(src_w, src_h, input_w, input_h, s, s, (input_w - src_w * s) / 2, (input_h - src_h * s) / 2)

    def to_source(self, box: Box) -> Box:
        x1, y1, x2, y2 = box
        sx, sy = self.scale_x, self.scale_y
        return (
            min(max((x1 - self.pad_x) / sx, 0.0), float(self.src_w)),
            min(max((y1 - self.pad_y) / sy, 0.0), float(self.src_h)),
            min(max((x2 - self.pad_x) / sx, 0.0), float(self.src_w)),
            min(max((y2 - self.pad_y) / sy, 0.0), float(self.src_h)),
        )
