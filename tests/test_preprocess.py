"""Preprocessor against a plain numpy reference; InputSpec resolution from manifests and models."""

from __future__ import annotations

import itertools
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inference.errors import BundleError, SourceError
from inference.preprocess import InputSpec, Preprocessor, parse_input, resolve_input_spec
from inference.runtime import TensorInfo

Arr = npt.NDArray[Any]


def _frame(h: int = 48, w: int = 64, seed: int = 0) -> Arr:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference(img: Arr, spec: InputSpec, quant: tuple[float, int] | None) -> Arr:
    """The obvious, slow implementation of the spec."""
    H, W = spec.height, spec.width
    sh, sw = img.shape[:2]
    if spec.resize == "letterbox" and (sw, sh) != (W, H):
        s = min(W / sw, H / sh)
        nw, nh = max(1, min(W, round(sw * s))), max(1, min(H, round(sh * s)))
        canvas = np.full((H, W, 3), round(spec.pad), np.uint8)
        left, top = (W - nw) // 2, (H - nh) // 2
        canvas[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        img = canvas
    elif (sw, sh) != (W, H):
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
    if spec.channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif spec.color == "RGB":
        img = img[:, :, ::-1]
    mean = np.array(spec.per_channel(spec.mean))
    std = np.array(spec.per_channel(spec.std))
    x = (img.astype(np.float64) * spec.scale - mean) / std
    dt = np.dtype(spec.dtype)
    if dt.kind in "iu":
        s, zp = quant or (1.0, 0)
        info = np.iinfo(dt)
        x = np.clip(np.rint(x / s + zp), info.min, info.max)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    res: Arr = x[None].astype(dt) if len(spec.shape) == 4 else x.astype(dt)
    return res


CASES = list(
    itertools.product(
        ["NCHW", "NHWC"],
        ["RGB", "BGR"],
        ["stretch", "letterbox"],
        ["float32", "float16", "uint8", "int8"],
    )
)


@pytest.mark.parametrize(("layout", "color", "resize", "dtype"), CASES)
def test_matches_reference(layout: str, color: str, resize: str, dtype: str) -> None:
    shape = (1, 3, 40, 56) if layout == "NCHW" else (1, 40, 56, 3)
    quant = (0.02, 3) if dtype == "uint8" else (0.03, -5) if dtype == "int8" else None
    spec = InputSpec(
        shape=shape, dtype=dtype, layout=layout, color=color, scale=1 / 255,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=resize, pad=114,
    )  # fmt: skip
    pre = Preprocessor(spec, TensorInfo("x", shape, np.dtype(dtype), quant))
    for img in (_frame(), _frame(100, 30, 1), _frame(40, 56, 2)):  # wide, tall, exact size
        got, t = pre(img)
        want = _reference(img, spec, quant)
        assert got.shape == shape and got.dtype == np.dtype(dtype)
        if dtype.startswith("float"):
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), atol=2e-3 if dtype == "float16" else 1e-5
            )
        else:
            assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1  # rounding at .5 ties
        assert (t.src_w, t.src_h) == (img.shape[1], img.shape[0])
        assert (t.input_w, t.input_h) == (56, 40)


def test_letterbox_transform_maps_corners_back() -> None:
    spec = InputSpec(shape=(1, 64, 64, 3), layout="NHWC", resize="letterbox", pad=0)
    pre = Preprocessor(spec)
    img = np.full((50, 100, 3), 255, np.uint8)
    x, t = pre(img)
    # the image fills rows 16..48 of the 64x64 input; the rest is padding
    assert t.pad_y == 16 and t.pad_x == 0
    assert np.all(x[0, :16] == 0) and np.all(x[0, 16:48] == 1.0) and np.all(x[0, 48:] == 0)
    assert t.to_source((0.0, 16.0, 64.0, 48.0)) == pytest.approx((0.0, 0.0, 100.0, 50.0))


def test_uint8_identity_is_passthrough() -> None:
    spec = InputSpec(
        shape=(1, 3, 8, 8), dtype="uint8", layout="NCHW", color="RGB", scale=1.0, mean=(0.0,), std=(1.0,)
    )
    pre = Preprocessor(spec, TensorInfo("x", spec.shape, np.dtype(np.uint8)))
    assert pre.passthrough
    img = _frame(8, 8)
    x, _ = pre(img)
    np.testing.assert_array_equal(x[0], img[:, :, ::-1].transpose(2, 0, 1))


def test_out_buffer_is_filled_and_returned() -> None:
    spec = InputSpec(shape=(1, 3, 16, 16))
    pre = Preprocessor(spec)
    buf = pre.new_output()
    x, _ = pre(_frame(), out=buf)
    assert x is buf
    y, _ = pre(_frame())
    assert y is not buf and np.array_equal(x, y)
    with pytest.raises(ValueError):
        pre(_frame(), out=np.empty((1, 3, 8, 8), np.float32))


def test_grey_input_and_grey_frames() -> None:
    spec = InputSpec(shape=(1, 1, 12, 12), layout="NCHW", scale=1.0)
    pre = Preprocessor(spec)
    img = _frame(12, 12)
    x, _ = pre(img)
    np.testing.assert_array_equal(x[0, 0], cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32))
    x2, _ = Preprocessor(InputSpec(shape=(1, 3, 12, 12)))(img[:, :, 0])  # a grey frame becomes BGR
    assert x2.shape == (1, 3, 12, 12)
    with pytest.raises(SourceError):
        pre(img.astype(np.float32))


# -- resolving the spec --------------------------------------------------------------------


def _t(
    shape: tuple[int | None, ...], dtype: Any = np.float32, quant: tuple[float, int] | None = None
) -> TensorInfo:
    return TensorInfo("x", shape, np.dtype(dtype), quant)


def test_resolve_from_model_guesses_layout_and_fills_dynamic_dims() -> None:
    s = resolve_input_spec(None, _t((None, 3, None, None)), "m.onnx")
    assert s.shape == (1, 3, 640, 640) and s.layout == "NCHW" and s.scale == pytest.approx(1 / 255)
    s = resolve_input_spec(None, _t((1, 128, 128, 3)), "m.tflite")
    assert s.layout == "NHWC" and (s.height, s.width, s.channels) == (128, 128, 3)
    s = resolve_input_spec(None, _t((None, None, None, 3)), "m.tflite")
    assert s.shape == (1, 640, 640, 3)


def test_resolve_quantised_defaults_feed_raw_pixels() -> None:
    s = resolve_input_spec(None, _t((1, 8, 8, 3), np.uint8, (0.5, 10)), "q.tflite")
    pre = Preprocessor(s, _t((1, 8, 8, 3), np.uint8, (0.5, 10)))
    img = _frame(8, 8)
    x, _ = pre(img)
    np.testing.assert_array_equal(x[0], img[:, :, ::-1])  # q = pixel
    s = resolve_input_spec(None, _t((1, 8, 8, 3), np.int8, (0.25, -3)), "q.tflite")
    x, _ = Preprocessor(s, _t((1, 8, 8, 3), np.int8, (0.25, -3)))(img)
    np.testing.assert_array_equal(x[0].astype(np.int16), img[:, :, ::-1].astype(np.int16) - 128)


def test_resolve_with_manifest_values() -> None:
    m = parse_input(
        {"shape": [1, 3, 480, 640], "color": "BGR", "mean": 0.5, "std": [0.5, 0.5, 0.5]}, "b/manifest.json"
    )
    s = resolve_input_spec(m, _t((None, 3, None, None)), "b/manifest.json")
    assert s.shape == (1, 3, 480, 640) and s.color == "BGR" and s.mean == (0.5,) and s.std == (0.5, 0.5, 0.5)
    assert InputSpec(**{**s.__dict__}).to_json()["shape"] == [1, 3, 480, 640]


@pytest.mark.parametrize(
    ("manifest", "model", "match"),
    [
        ({"shape": [1, 3, 320, 320]}, (1, 3, 640, 640), "contradicts"),
        ({"shape": [1, 640, 640, 3]}, (1, 3, 640, 640), "contradicts"),
        ({"shape": [1, 3, 64]}, (1, 3, 64, 64), "contradicts"),
        ({"dtype": "uint8"}, (1, 3, 64, 64), "dtype"),
        ({"layout": "NHWC"}, (1, 3, 64, 64), "channels"),
        ({"mean": [0.1, 0.2]}, (1, 3, 64, 64), "mean"),
        ({}, (4, 3, 64, 64), "batch"),
        ({}, (1, 64), "rank-4"),
    ],
)
def test_resolve_rejects_contradictions(manifest: dict[str, Any], model: tuple[int, ...], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        resolve_input_spec(parse_input(manifest, "b/manifest.json"), _t(model), "b/manifest.json")


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"shap": [1, 3, 8, 8]}, "unknown key 'input.shap'"),
        ({"shape": [1, 3, "8", 8]}, "input.shape"),
        ({"shape": [1, 3, 0, 8]}, "input.shape"),
        ({"dtype": "float64"}, "input.dtype"),
        ({"layout": "nchw"}, "input.layout"),
        ({"scale": "1/255"}, "input.scale"),
        ({"scale": True}, "input.scale"),
        ({"std": [1.0, 0.0, 1.0]}, "input.std"),
        ({"mean": []}, "input.mean"),
        ({"resize": "crop"}, "input.resize"),
        ({"pad": 300}, "input.pad"),
        ([1, 2], "must be an object"),
    ],
)
def test_parse_input_rejects_bad_keys_and_types(d: Any, match: str) -> None:
    with pytest.raises(BundleError, match=match) as err:
        parse_input(d, "bundle/manifest.json")
    assert "bundle/manifest.json" in str(err.value)
