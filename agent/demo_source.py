"""The ``demo`` source: real-looking scenes for the default models, generated on the fly.

- ``demo:faces`` (BlazeFace): the face of scikit-image's public-domain ``astronaut`` photo,
  cut out with a soft oval mask, moved, scaled and re-lit over varied backgrounds; some
  scenes show a second, mirrored face.
- ``demo:text`` (PP-OCR): lines of text drawn with ``cv2.putText`` in several fonts, sizes
  and colours over varied backgrounds, drifting slowly; every fourth scene is upside down
  (for the 0/180 direction classifier).

Spec: ``demo[:faces|:text][:WxH][@FPS]`` (default ``demo:faces:640x480@30``). The source is
paced at FPS and live, like a camera; ``@0`` makes it unpaced and lossless (tests,
benchmarks). Frame ``i`` of a given spec is always the same image.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inference.errors import EdgeAgentError, SourceError

Image = npt.NDArray[np.uint8]

_SPEC = re.compile(r"^demo(?::(faces|text))?(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")

# Which demo suits which zoo model (agent.cli picks the demo for the model it runs).
DEMO_FOR_MODEL: dict[str, str] = {
    "blazeface": "demo:faces",
    "blazeface-back": "demo:faces",
    "ppocr-det": "demo:text",
    "ppocr-cls": "demo:text",
}

SCENE_FRAMES = 90  # a new background (and text) every 3 s at 30 fps

_PHRASES = (
    "EDGE AGENT", "Platform 4 -> Exit", "OPEN 9:00 - 17:30", "Invoice No. 48213",
    "KEEP CLEAR", "Batch 2026-11-03", "Speed limit 30", "Loading dock B",
    "Fragile: handle with care", "Serial SN-7730-QX", "Welcome", "No parking",
    "Total: 128.40 EUR", "Gate 12", "Model v3 deployed", "Camera 7 / North",
)  # fmt: skip
_FONTS = (0, 1, 2, 3, 4, 6, 7)  # the cv2.FONT_HERSHEY_* faces that render latin text


def _backgrounds(w: int, h: int, rng: np.random.Generator) -> list[Image]:
    """Varied backgrounds: gradients, soft noise, stripes, a vignette and flat paper."""
    import cv2

    out: list[Image] = []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c0, c1 in (
        ((40, 60, 90), (200, 210, 230)),
        ((30, 90, 40), (180, 220, 160)),
        ((90, 40, 30), (240, 200, 170)),
    ):
        t = (xx / max(w - 1, 1) * 0.6 + yy / max(h - 1, 1) * 0.4)[..., None]
        out.append((np.array(c0, np.float32) * (1 - t) + np.array(c1, np.float32) * t).astype(np.uint8))
    for sigma, tint in ((25, (1.0, 0.9, 0.8)), (8, (0.7, 0.8, 1.0))):
        raw = rng.normal(128, 60, (h, w)).astype(np.float32)
        noise = np.asarray(cv2.GaussianBlur(raw, (0, 0), sigma), np.float32)[..., None]
        noise = (noise - noise.mean()) / (noise.std() + 1e-6) * 45 + 130
        out.append(np.clip(noise * np.array(tint, np.float32), 0, 255).astype(np.uint8))
    stripes = ((np.sin(xx / 9 + yy / 23) > 0) * 50 + 110).astype(np.uint8)
    out.append(cv2.merge([stripes, (stripes * 0.9).astype(np.uint8), (stripes * 0.7).astype(np.uint8)]))
    r = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.75 * max(w, h))
    vignette = np.clip(230 - 200 * r, 20, 255).astype(np.uint8)
    out.append(cv2.merge([vignette, vignette, (vignette * 0.95).astype(np.uint8)]))
    out.append(np.full((h, w, 3), (228, 236, 240), np.uint8))
    return [np.ascontiguousarray(b) for b in out]


class DemoSource:
    """Generated scenes for the default models (see the module docstring)."""

    def __init__(
        self,
        spec: str,
        kind: str = "faces",
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        asset_root: Path | None = None,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.width = width
        self.height = height
        self.fps = fps
        self.live = fps > 0
        self._sleep = sleep
        self._clock = clock
        self._asset_root = asset_root
        self._index = 0
        self._next_due = 0.0
        self._backgrounds: list[Image] = []
        self._face: Image | None = None
        self._mask: npt.NDArray[np.float32] | None = None

    def open(self) -> None:
        rng = np.random.default_rng(20261122)
        self._backgrounds = _backgrounds(self.width, self.height, rng)
        if self.kind == "faces":
            self._load_face()
        self._index = 0
        self._next_due = self._clock()

    def _load_face(self) -> None:
        import cv2

        from inference import zoo

        try:
            photo = zoo.read_asset("astronaut.png", self._asset_root)
        except EdgeAgentError as err:
            raise SourceError(
                f"cannot open {self.spec}: the demo needs scikit-image's astronaut photo ({err}); "
                "run `edge-agent models fetch` once while online"
            ) from None
        face = np.ascontiguousarray(photo[0:300, 95:355])  # head and shoulders, 260x300
        h, w = face.shape[:2]
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (w // 2, int(h * 0.42)), (int(w * 0.42), int(h * 0.46)), 0, 0, 360, 1.0, -1)
        self._mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), 9), np.float32)
        self._face = face

    def read(self) -> Image | None:
        if self.live:
            now = self._clock()
            if self._next_due > now:
                self._sleep(self._next_due - now)
            self._next_due = max(self._next_due + 1.0 / self.fps, self._clock())
        image = self.frame(self._index)
        self._index += 1
        return image

    def frame(self, index: int) -> Image:
        """Frame number ``index`` (pure: the same index gives the same image)."""
        if not self._backgrounds:
            self.open()
        scene = index // SCENE_FRAMES
        background = self._backgrounds[scene % len(self._backgrounds)]
        if self.kind == "faces":
            return self._faces(background, index, scene)
        return self._text(background, index, scene)

    def _paste(self, canvas: Image, cx: float, cy: float, height: float, light: float, mirror: bool) -> None:
        import cv2

        assert self._face is not None and self._mask is not None
        fh, fw = self._face.shape[:2]
        s = height / fh
        w, h = max(int(fw * s), 8), max(int(fh * s), 8)
        face = cv2.resize(self._face, (w, h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(self._mask, (w, h), interpolation=cv2.INTER_LINEAR)
        if mirror:
            face, mask = face[:, ::-1], mask[:, ::-1]
        x0, y0 = int(cx - w / 2), int(cy - h / 2)
        H, W = canvas.shape[:2]
        ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if ax1 <= ax0 or ay1 <= ay0:
            return
        f = face[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0].astype(np.float32) * light
        m = mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, None]
        region = canvas[ay0:ay1, ax0:ax1].astype(np.float32)
        canvas[ay0:ay1, ax0:ax1] = np.clip(region * (1 - m) + f * m, 0, 255).astype(np.uint8)

    def _faces(self, background: Image, index: int, scene: int) -> Image:
        W, H = self.width, self.height
        canvas: Image = background.copy()
        t = index / 30.0
        height = H * (0.8 + 0.2 * np.sin(t * 0.7 + scene))  # head and shoulders: 60-100 % of the height
        cx = W / 2 + (W / 2 - height * 0.45) * 0.8 * np.sin(t * 0.9 + scene * 1.3)
        cy = H / 2 + (H / 2 - height * 0.5) * 0.6 * np.sin(t * 1.3 + scene)
        light = 0.55 + 0.5 * (0.5 + 0.5 * np.sin(t * 0.5 + scene * 2.1))  # dim to bright
        if scene % 3 == 2:  # two people
            small = H * 0.62
            self._paste(canvas, W * 0.28, H * 0.5 + 0.1 * H * np.sin(t), small, light, False)
            self._paste(canvas, W * 0.72, H * 0.5 - 0.1 * H * np.sin(t), small, light * 0.9, True)
        else:
            self._paste(canvas, cx, cy, height, light, scene % 2 == 1)
        return canvas

    def _text(self, background: Image, index: int, scene: int) -> Image:
        import cv2

        W, H = self.width, self.height
        canvas: Image = background.copy()
        rng = np.random.default_rng(scene)  # the layout is fixed within a scene
        lines = int(rng.integers(3, 7))
        dx = int(12 * np.sin(index / 25.0))
        dy = int(8 * np.cos(index / 31.0))
        dark_bg = float(background.mean()) < 120
        y = int(rng.integers(40, 90))
        for _ in range(lines):
            text = _PHRASES[int(rng.integers(len(_PHRASES)))]
            font = _FONTS[int(rng.integers(len(_FONTS)))]
            scale = float(rng.uniform(0.8, 1.8)) * W / 640
            thick = max(int(scale * 2), 1)
            (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
            x = int(rng.integers(10, max(W - tw - 10, 11)))
            base = 230 if dark_bg else 25
            color = tuple(int(np.clip(base + v, 0, 255)) for v in rng.integers(-20, 21, 3))
            cv2.putText(canvas, text, (x + dx, y + dy), font, scale, color, thick, cv2.LINE_AA)
            y += th + int(rng.integers(25, 60))
            if y > H - 20:
                break
        if scene % 4 == 3:
            return np.ascontiguousarray(canvas[::-1, ::-1])
        return canvas

    def close(self) -> None:
        self._backgrounds = []
        self._face = None
        self._mask = None


def parse_demo_spec(
    spec: str,
    *,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    asset_root: Path | None = None,
) -> DemoSource:
    """A ``DemoSource`` for ``demo[:faces|:text][:WxH][@FPS]``; ``SourceError`` for anything else."""
    m = _SPEC.match(spec)
    if not m:
        raise SourceError(
            f"bad source spec {spec!r}: use demo, demo:faces or demo:text, optionally :WxH and @FPS "
            "(e.g. demo:text:1280x720@15; @0 for unpaced)"
        )
    kind = m.group(1) or "faces"
    w, h = int(m.group(2) or 640), int(m.group(3) or 480)
    fps = float(m.group(4) if m.group(4) is not None else 30)
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise SourceError(f"bad source spec {spec!r}: the demo size must be 64..8192 pixels a side")
    return DemoSource(spec, kind, w, h, fps, sleep=sleep, clock=clock, asset_root=asset_root)


def demo_for_model(name: str) -> str:
    """The demo spec that suits zoo model ``name`` (faces for anything unknown)."""
    return DEMO_FOR_MODEL.get(name, "demo:faces")
