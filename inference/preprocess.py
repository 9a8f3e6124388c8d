"""Input preprocessing: a BGR uint8 frame -> the model's input tensor, plus the ``Transform``.

``InputSpec`` says what the model wants: the full input shape (batch included), dtype,
layout (NCHW | NHWC), colour order (RGB | BGR; a 1-channel input gets grey), the
normalisation ``x = (pixel * scale - mean) / std`` (mean and std per channel or one for
all), the resize mode (``stretch`` or ``letterbox`` with ``pad`` as the border pixel
value) . It comes from a manifest's ``input`` section, or from the model's ``TensorInfo``
alone for a bare model file (``resolve_input_spec``).

Quantised integer inputs: ``q = clip(round(x / s + zp))`` with the tensor's ``(s, zp)``
(``s = 1, zp = 0`` when the runtime reports none). A bare model's integer input gets the
TFLite convention by default: ``q = pixel`` for uint8 and ``q = pixel - 128`` for int8.

Speed: the normalisation (and quantisation, rounding, clipping) of a uint8 pixel is one
value of 256 per channel, so it is precomputed as a lookup table and applied with
``cv2.LUT``, which writes straight into the output tensor; NCHW is made by splitting
channels (the colour swap is free: it is the order of the split). Resize and colour
buffers are reused across frames, so one ``Preprocessor`` serves one thread at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import BundleError, SourceError
from inference.geometry import Transform
from inference.runtime import TensorInfo

LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
RESIZES = ("stretch", "letterbox")
DTYPES = ("float32", "float16", "uint8", "int8")
DEFAULT_HW = 640  # a dynamic height/width without a manifest value (a multiple of 32)

# The manifest's "input" keys and the JSON types each accepts.
INPUT_KEYS: dict[str, str] = {
    "shape": "list of positive ints",
    "dtype": f"one of {', '.join(DTYPES)}",
    "layout": f"one of {', '.join(LAYOUTS)}",
    "color": f"one of {', '.join(COLORS)}",
    "scale": "number",
    "mean": "number or list of numbers (one per channel)",
    "std": "number or list of non-zero numbers (one per channel)",
    "resize": f"one of {', '.join(RESIZES)}",
    "pad": "number 0..255 (letterbox border pixel value)",
}

U8 = npt.NDArray[Any]  # uint8 images (cv2's stubs type arrays loosely)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_input(d: Any, where: str) -> dict[str, Any]:
    """Check a manifest ``input`` section: known keys, right types. Returns a plain copy.

    Raises ``BundleError`` naming ``where`` (the file) and the key.
    """
    if not isinstance(d, Mapping):
        raise BundleError(f"{where}: 'input' must be an object with keys {', '.join(INPUT_KEYS)}")
    out: dict[str, Any] = {}
    for key, v in d.items():
        if key not in INPUT_KEYS:
            raise BundleError(
                f"{where}: unknown key 'input.{key}'; allowed keys are {', '.join(INPUT_KEYS)}: "
                "remove it or fix its spelling"
            )

        def bad(key: str = key, v: Any = v) -> BundleError:
            return BundleError(f"{where}: 'input.{key}' is {v!r}; it must be a {INPUT_KEYS[key]}")

        if key == "shape":
            if not (
                isinstance(v, list)
                and 3 <= len(v) <= 4
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            ):
                raise BundleError(
                    f"{where}: 'input.shape' is {v!r}; it must be a list of 3 or 4 positive ints, "
                    "e.g. [1, 3, 640, 640]"
                )
            out[key] = list(v)
        elif key in ("dtype", "layout", "color", "resize"):
            allowed = {"dtype": DTYPES, "layout": LAYOUTS, "color": COLORS, "resize": RESIZES}[key]
            if v not in allowed:
                raise bad()
            out[key] = v
        elif key == "scale":
            if not _is_num(v) or v == 0:
                raise bad()
            out[key] = float(v)
        elif key == "pad":
            if not _is_num(v) or not 0 <= v <= 255:
                raise bad()
            out[key] = float(v)
        else:  # mean, std
            vals = v if isinstance(v, list) else [v]
            if not vals or not all(_is_num(x) for x in vals) or (key == "std" and any(x == 0 for x in vals)):
                raise bad()
            out[key] = float(v) if not isinstance(v, list) else [float(x) for x in v]
    return out


@dataclass(frozen=True)
class InputSpec:
    """A concrete model input: ``shape`` has no dynamic dimension left."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    color: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "stretch"
    pad: float = 114.0

    def _axes(self) -> tuple[int, int, int]:
        """Indices of (C, H, W) in ``shape``."""
        off = len(self.shape) - 3
        return (off, off + 1, off + 2) if self.layout == "NCHW" else (off + 2, off, off + 1)

    @property
    def channels(self) -> int:
        return self.shape[self._axes()[0]]

    @property
    def height(self) -> int:
        return self.shape[self._axes()[1]]

    @property
    def width(self) -> int:
        return self.shape[self._axes()[2]]

    def per_channel(self, values: tuple[float, ...]) -> tuple[float, ...]:
        return values * self.channels if len(values) == 1 else values

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``input`` section."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["mean"] = self.mean[0] if len(self.mean) == 1 else list(self.mean)
        d["std"] = self.std[0] if len(self.std) == 1 else list(self.std)
        return d


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _guess_layout(shape: Sequence[int | None]) -> str:
    off = len(shape) - 3
    c_first, c_last = shape[off], shape[-1]
    if c_last in (1, 3) and c_first not in (1, 3):
        return "NHWC"
    if c_first in (1, 3):
        return "NCHW"
    if c_first is None and c_last is None:
        return "NCHW"
    return "NHWC" if c_first not in (1, 3, None) else "NCHW"


def resolve_input_spec(
    manifest_input: Mapping[str, Any] | None,
    tensor: TensorInfo,
    where: str,
    size: tuple[int, int] | None = None,
) -> InputSpec:
    """The concrete ``InputSpec`` for a model input, from the manifest's values (already checked
    by ``parse_input``) and the model's ``TensorInfo``; dynamic dims get the manifest's values or
    defaults (batch 1, channels 3, height/width 640). ``size`` (``--input-size HxW``) sets the
    height and width over the manifest's and the defaults.

    Raises ``BundleError`` when the manifest or ``size`` contradicts the model.
    """
    m = dict(manifest_input or {})
    model_shape = tensor.shape
    rank = len(model_shape)
    if rank not in (3, 4):
        raise BundleError(
            f"{where}: input {tensor.name!r} has shape {_fmt(model_shape)}; edge-agent feeds images, "
            "so it needs a rank-4 (N, C, H, W / N, H, W, C) or rank-3 input"
        )
    model_dtype = np.dtype(tensor.dtype).name
    if model_dtype not in DTYPES:
        raise BundleError(
            f"{where}: input {tensor.name!r} has dtype {model_dtype}; edge-agent feeds images as "
            f"{', '.join(DTYPES)}"
        )
    if "dtype" in m and m["dtype"] != model_dtype:
        raise BundleError(
            f"{where}: manifest 'input.dtype' is {m['dtype']} but the model's input {tensor.name!r} is "
            f"{model_dtype}; set 'input.dtype' to {model_dtype!r} or drop it"
        )
    if "shape" in m:
        want = list(m["shape"])
        if len(want) != rank or any(d is not None and d != w for d, w in zip(model_shape, want, strict=True)):
            raise BundleError(
                f"{where}: manifest 'input.shape' {want} contradicts the model's input {tensor.name!r} "
                f"shape {_fmt(model_shape)}; fix 'input.shape' (only '?' dims may be chosen)"
            )
        layout = m.get("layout") or _guess_layout(want)
        shape = tuple(int(x) for x in want)
    else:
        layout = m.get("layout") or _guess_layout(model_shape)
        off = rank - 3
        c_ax, h_ax, w_ax = (off, off + 1, off + 2) if layout == "NCHW" else (off + 2, off, off + 1)
        dims: list[int | None] = list(model_shape)
        if rank == 4 and dims[0] is None:
            dims[0] = 1
        if dims[c_ax] is None:
            dims[c_ax] = 3
        for ax in (h_ax, w_ax):
            if dims[ax] is None:
                dims[ax] = DEFAULT_HW
        shape = tuple(int(d) for d in dims if d is not None)
    if size is not None:
        shape = _with_size(shape, layout, model_shape, size, tensor.name, where)
    spec_probe = InputSpec(shape=shape, layout=layout)
    if spec_probe.channels not in (1, 3):
        raise BundleError(
            f"{where}: input {tensor.name!r} shape {_fmt(shape)} read as {layout} has "
            f"{spec_probe.channels} channels; images have 1 or 3: set 'input.layout' "
            "(NCHW or NHWC) in the manifest"
        )
    if rank == 4 and shape[0] != 1:
        raise BundleError(
            f"{where}: input {tensor.name!r} has batch size {shape[0]}; edge-agent feeds one frame at a "
            "time: export the model with batch 1 or a dynamic batch"
        )

    # Normalisation defaults: floats in [0, 1]; quantised ints as raw pixels (TFLite convention).
    if model_dtype in ("uint8", "int8") and not any(k in m for k in ("scale", "mean", "std")):
        s, zp = tensor.quant or (1.0, 0)
        shift = 128 if model_dtype == "int8" else 0
        scale = s
        mean: tuple[float, ...] = (float((zp + shift) * s),)
        std: tuple[float, ...] = (1.0,)
    else:
        scale = float(m.get("scale", 1 / 255 if model_dtype.startswith("float") else 1.0))
        mean = _tuple(m.get("mean", 0.0))
        std = _tuple(m.get("std", 1.0))
    spec = InputSpec(
        shape=shape,
        dtype=model_dtype,
        layout=layout,
        color=m.get("color", "RGB"),
        scale=scale,
        mean=mean,
        std=std,
        resize=m.get("resize", "stretch"),
        pad=float(m.get("pad", 114.0)),
    )
    for key, vals in (("mean", spec.mean), ("std", spec.std)):
        if len(vals) not in (1, spec.channels):
            raise BundleError(
                f"{where}: 'input.{key}' has {len(vals)} values but the input has {spec.channels} "
                "channels; give one value or one per channel"
            )
    return spec


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or one number for a square) -> ``(height, width)``; ``ValueError`` names the form."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or not all(0 < n <= 16384 for n in nums):
        raise ValueError(f"input size {text!r}: give HEIGHTxWIDTH in pixels, e.g. 48x320 or 640")
    return nums[0], nums[1]


def _with_size(
    shape: tuple[int, ...],
    layout: str,
    model_shape: Sequence[int | None],
    size: tuple[int, int],
    name: str,
    where: str,
) -> tuple[int, ...]:
    """``shape`` with its height and width set to ``size``; a fixed model dim that differs is an error."""
    off = len(shape) - 3
    h_ax, w_ax = (off + 1, off + 2) if layout == "NCHW" else (off, off + 1)
    out = list(shape)
    for ax, want, what in ((h_ax, size[0], "height"), (w_ax, size[1], "width")):
        fixed = model_shape[ax]
        if fixed is not None and fixed != want:
            raise BundleError(
                f"{where}: input size {size[0]}x{size[1]} asks for a {what} of {want}, but input "
                f"{name!r} has a fixed {what} of {fixed} ({_fmt(model_shape)}): only dynamic ('?') dims "
                "can be chosen; drop --input-size (input_size) or give the model's own size"
            )
        out[ax] = want
    return tuple(out)


def _tuple(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),)


class Preprocessor:
    """``__call__(image) -> (tensor, Transform)`` for one model input.

    ``image`` is a BGR uint8 HxWx3 frame (grey HxW and BGRA are converted). The returned
    tensor is a new array unless ``out`` is given (then it is filled and returned).
    """

    def __init__(self, spec: InputSpec, tensor: TensorInfo | None = None) -> None:
        self.spec = spec
        self.tensor = tensor
        self.w, self.h, self.c = spec.width, spec.height, spec.channels
        self.nchw = spec.layout == "NCHW"
        self.dtype = np.dtype(spec.dtype)
        self.letterbox = spec.resize == "letterbox"
        self._swap = self.c == 3 and spec.color == "RGB"  # frames are BGR
        self._lut, self.passthrough = self._build_lut()
        self._lut3 = (
            np.ascontiguousarray(np.stack(self._lut, axis=-1).reshape(256, 1, 3)) if self.c == 3 else None
        )
        # Work dtype for the LUT (cv2 has no float16 LUT: go through float32).
        self._work_dtype = np.dtype(np.float32) if self.dtype == np.float16 else self.dtype
        self._resized: U8 | None = None
        self._canvas: U8 | None = None
        self._geom: tuple[int, int, Transform, tuple[int, int, int, int]] | None = None
        self._color_buf: U8 | None = None
        self._chan_bufs: list[U8] = [np.empty((self.h, self.w), np.uint8) for _ in range(self.c)]
        self._work: npt.NDArray[Any] | None = None

    def _build_lut(self) -> tuple[list[npt.NDArray[Any]], bool]:
        """One 256-entry table per output channel (in model channel order, after the colour swap)."""
        spec = self.spec
        px = np.arange(256, dtype=np.float64)
        means, stds = spec.per_channel(spec.mean), spec.per_channel(spec.std)
        luts: list[npt.NDArray[Any]] = []
        for ch in range(self.c):
            x = (px * spec.scale - means[ch]) / stds[ch]
            if self.dtype.kind in "iu":
                s, zp = (self.tensor.quant if self.tensor is not None and self.tensor.quant else None) or (
                    1.0,
                    0,
                )
                info = np.iinfo(self.dtype)
                q = np.clip(np.rint(x / s + zp), info.min, info.max)
                luts.append(q.astype(self.dtype))
            else:
                luts.append(x.astype(np.float32))
        identity = self.dtype == np.uint8 and all(np.array_equal(t, px.astype(np.uint8)) for t in luts)
        return luts, identity

    def output_shape(self) -> tuple[int, ...]:
        return self.spec.shape

    def new_output(self) -> npt.NDArray[Any]:
        return np.empty(self.spec.shape, dtype=self.dtype)

    # -- geometry ------------------------------------------------------------------------

    def _fit(self, image: U8) -> tuple[U8, Transform]:
        """Resize (stretch or letterbox) into a reused uint8 buffer of the model's HxW."""
        sh, sw = image.shape[:2]
        w, h = self.w, self.h
        if not self.letterbox or (sw == w and sh == h):
            t = Transform.stretch(sw, sh, w, h)
            if sw == w and sh == h:
                return image, t
            if self._resized is None or self._resized.shape[:2] != (h, w):
                self._resized = np.empty((h, w, 3), np.uint8)
            cv2.resize(image, (w, h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
            return self._resized, t
        if self._geom is None or self._geom[:2] != (sw, sh):
            s = min(w / sw, h / sh)
            nw, nh = max(1, min(w, round(sw * s))), max(1, min(h, round(sh * s)))
            left, top = (w - nw) // 2, (h - nh) // 2
            t = Transform(sw, sh, w, h, nw / sw, nh / sh, float(left), float(top))
            self._geom = (sw, sh, t, (left, top, nw, nh))
            pad = round(self.spec.pad)
            self._canvas = np.full((h, w, 3), pad, np.uint8)
            self._resized = np.empty((nh, nw, 3), np.uint8)
        assert self._canvas is not None and self._resized is not None
        _, _, t, (left, top, nw, nh) = self._geom
        cv2.resize(image, (nw, nh), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        self._canvas[top : top + nh, left : left + nw] = self._resized
        return self._canvas, t

    # -- the call ------------------------------------------------------------------------

    def __call__(
        self, image: npt.NDArray[Any], out: npt.NDArray[Any] | None = None
    ) -> tuple[npt.NDArray[Any], Transform]:
        image = _as_bgr(image)
        fitted, t = self._fit(image)
        if out is None:
            out = np.empty(self.spec.shape, dtype=self.dtype)
        elif out.shape != self.spec.shape or out.dtype != self.dtype:
            raise ValueError(f"out must be {self.spec.shape} {self.dtype}, got {out.shape} {out.dtype}")
        dst = out.reshape(out.shape[-3:])  # drop the batch dim (a view)
        work = dst
        if self._work_dtype != self.dtype:  # float16: fill float32, cast at the end
            if self._work is None:
                self._work = np.empty(dst.shape, self._work_dtype)
            work = self._work

        if self.c == 1:
            if self._color_buf is None:
                self._color_buf = np.empty(fitted.shape[:2], np.uint8)
            grey = cv2.cvtColor(fitted, cv2.COLOR_BGR2GRAY, dst=self._color_buf)
            plane = work[0] if self.nchw else work[:, :, 0]
            if self.passthrough:
                plane[...] = grey
            else:
                cv2.LUT(grey, self._lut[0], dst=plane)
        elif self.nchw:
            # Split into channel planes in model order (the swap is the split order), then LUT.
            if self.passthrough:
                planes = [work[i] for i in range(3)]
                cv2.split(fitted, planes[::-1] if self._swap else planes)
            else:
                bufs = self._chan_bufs
                cv2.split(fitted, bufs)
                order = (2, 1, 0) if self._swap else (0, 1, 2)
                for ch in range(3):
                    cv2.LUT(bufs[order[ch]], self._lut[ch], dst=work[ch])
        else:
            src = fitted
            if self._swap:
                if self._color_buf is None or self._color_buf.shape != fitted.shape:
                    self._color_buf = np.empty(fitted.shape, np.uint8)
                src = cv2.cvtColor(fitted, cv2.COLOR_BGR2RGB, dst=self._color_buf)
            if self.passthrough:
                work[...] = src
            else:
                assert self._lut3 is not None
                cv2.LUT(src, self._lut3, dst=work)
        if work is not dst:
            dst[...] = work
        return out, t


def _as_bgr(image: npt.NDArray[Any]) -> U8:
    if image.dtype != np.uint8:
        raise SourceError(f"frames must be uint8 images; got dtype {image.dtype}: fix the source")
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise SourceError(f"frames must be HxWx3 BGR images; got shape {image.shape}: fix the source")
