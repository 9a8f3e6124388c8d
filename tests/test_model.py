"""LoadedModel / load_model: bare files and bundles, dynamic and quantised models, real models."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inference.bundle import open_bundle
from inference.bundle_builder import create_bundle
from inference.errors import BundleError, VerificationError
from inference.model import LoadedModel, load_model
from inference.runtime import RuntimeOptions


def _frame(h: int = 48, w: int = 64, bgr: tuple[int, int, int] = (10, 20, 200)) -> Any:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    return img


def test_bare_onnx_runs_with_raw_decoder(tiny_models: dict[str, Path]) -> None:
    m = load_model(tiny_models["classifier"])
    assert isinstance(m, LoadedModel) and (m.name, m.version) == ("classifier", 0) and m.bundle.bare
    assert m.sha256 == hashlib.sha256(tiny_models["classifier"].read_bytes()).hexdigest()
    assert m.spec.shape == (1, 3, 8, 8) and m.spec.color == "RGB"
    r = m.infer(_frame())
    assert r.kind == "outputs" and r.latency_ms > 0
    out = r.outputs[0]
    assert out["shape"] == [1, 3] and 0 < out["max"] <= 1 and r.confidence == pytest.approx(out["max"])
    m.close()
    m.close()  # idempotent


def test_bundle_with_classification_decoder(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    b = create_bundle(
        tiny_models["classifier"], tmp_path / "b", name="colour", version=5, decoder="classification",
        labels=["red", "green", "blue"], task="classification",
    )  # fmt: skip
    m = load_model(b.root, RuntimeOptions(threads=1))
    assert (m.name, m.version, m.sha256) == ("colour", 5, b.manifest.sha256)
    # RGB order: a red BGR frame (0, 0, 255) puts its largest mean in channel 0 = "red"
    r = m.infer(_frame(bgr=(0, 0, 255)))
    assert r.kind == "classes" and r.classes[0].label == "red" and r.confidence == r.classes[0].score
    assert m.infer(_frame(bgr=(255, 0, 0))).classes[0].label == "blue"
    m.close()


def test_load_from_an_opened_bundle_and_runtime_override(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    b = open_bundle(tiny_models["classifier"])
    assert load_model(b).bundle is b
    with pytest.raises(BundleError):  # an ONNX file through LiteRT
        load_model(b, runtime="tflite")


def test_dynamic_model_defaults_and_manifest_shape(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    m = load_model(tiny_models["dynamic"])
    assert m.spec.shape == (1, 3, 640, 640)
    r = m.infer(_frame(bgr=(0, 0, 255)))
    assert r.outputs[0]["shape"] == [1, 3]
    b = create_bundle(
        tiny_models["dynamic"], tmp_path / "d", name="d", version=1,
        input_spec={"shape": [1, 3, 32, 96], "color": "BGR", "scale": 1.0},
        golden_images=[_frame()],
    )  # fmt: skip
    m2 = load_model(b.root)
    assert m2.spec.shape == (1, 3, 32, 96)
    out = m2.run_outputs(_frame(bgr=(10, 20, 200)))[0]
    np.testing.assert_allclose(out, [[10, 20, 200]], atol=1e-4)


def test_quantised_outputs_are_dequantised_for_the_decoder(tiny_models: dict[str, Path]) -> None:
    m = load_model(tiny_models["quant_u8"])
    assert m.preprocessor.passthrough  # uint8 input fed raw pixels
    frame = _frame(bgr=(53, 53, 53))
    (raw,) = m.run_outputs(frame)
    assert raw.dtype == np.uint8 and raw.tolist() == [[105, 105, 105]]
    r = m.infer(frame)
    # (105 - 5) * 0.01 = 1.0: the decoder saw floats; raw reports the model's own dtype
    assert r.outputs[0]["dtype"] == "uint8" and r.outputs[0]["max"] == pytest.approx(1.0, abs=1e-6)
    m8 = load_model(tiny_models["int8_io"])
    (raw8,) = m8.run_outputs(_frame(bgr=(128, 128, 128)))
    assert raw8.dtype == np.int8
    r8 = m8.infer(_frame(bgr=(128, 128, 128)))  # q = pixel - 128 = 0 -> x = (0 + 4) * 0.05 = 0.2
    assert r8.outputs[0]["max"] == pytest.approx(0.2, abs=0.02)


def test_nan_model_serves_but_reports_no_confidence(tiny_models: dict[str, Path]) -> None:
    r = load_model(tiny_models["nan"]).infer(_frame())
    assert r.confidence == 0.0 and r.outputs[0]["max"] is None


def test_two_input_model_is_refused(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="2 inputs"):
        load_model(tiny_models["two_inputs"])


def _hand_bundle(folder: Path, data: bytes, **extra: Any) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(data)
    m = {"schema": 1, "name": "h", "version": 1, "format": "onnx", "file": "model.onnx",
         "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **extra}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_load_time_checks_name_the_manifest(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    data = tiny_models["classifier"].read_bytes()
    root = _hand_bundle(tmp_path / "shape", data, input={"shape": [1, 3, 224, 224]})
    with pytest.raises(BundleError, match="contradicts") as err:
        load_model(root)
    assert str(root / "manifest.json") in str(err.value)
    root = _hand_bundle(tmp_path / "dec", data, decoder="ssd_anchors")
    with pytest.raises(BundleError, match="ssd_anchors") as err:
        load_model(root)
    assert str(root / "manifest.json") in str(err.value)
    root = _hand_bundle(tmp_path / "labels", data, decoder="classification", labels=["a", "b"])
    with pytest.raises(BundleError, match="labels"):
        load_model(root)


def test_corrupt_model_in_a_bundle(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    root = _hand_bundle(tmp_path / "c", b"\x08\x01garbage, not a protobuf" * 20)
    with pytest.raises(BundleError, match="onnxruntime cannot load") as err:
        load_model(root)
    assert str(root / "model.onnx") in str(err.value)
    good = _hand_bundle(tmp_path / "g", tiny_models["classifier"].read_bytes())
    (good / "model.onnx").write_bytes(b"x" * (good / "model.onnx").stat().st_size)
    with pytest.raises(VerificationError):
        load_model(good)


def test_infer_is_safe_from_several_threads(tiny_models: dict[str, Path]) -> None:
    m = load_model(tiny_models["dynamic"])
    frames = [_frame(40 + i, 50 + 2 * i, (i, 2 * i, 3 * i)) for i in range(8)]
    want = [m.run_outputs(f)[0] for f in frames]
    got: dict[tuple[int, int], Any] = {}

    def work(k: int) -> None:
        for _ in range(5):
            for i, f in enumerate(frames):
                got[(k, i)] = m.run_outputs(f)[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, i), v in got.items():
        np.testing.assert_allclose(v, want[i], rtol=1e-6)


# -- real models -----------------------------------------------------------------------------


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# The astronaut's face, checked by eye once on the image (x1, y1, x2, y2 in source pixels).
ASTRONAUT_FACE = (179.0, 81.0, 272.0, 174.0)


@pytest.mark.models
@pytest.mark.parametrize("name", ["blazeface", "blazeface-back"])
def test_blazeface_finds_the_astronaut(
    name: str, zoo_bundle: Callable[[str], Path], zoo_image: Callable[[str], Any]
) -> None:
    m = load_model(zoo_bundle(name))
    img = zoo_image("astronaut.png")
    r = m.infer(img)
    assert r.kind == "detections" and len(r.detections) == 1
    face = r.detections[0]
    assert face.label == "face" and face.score > 0.8 and _iou(face.box, ASTRONAUT_FACE) > 0.7
    # letterbox: the same face in a wider frame (padded on the right) lands in the same place
    wide = cv2.copyMakeBorder(img, 0, 0, 0, 256, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    r2 = m.infer(wide)
    assert len(r2.detections) >= 1 and _iou(r2.detections[0].box, ASTRONAUT_FACE) > 0.6
    assert m.infer(np.zeros((480, 640, 3), np.uint8)).confidence == 0.0


@pytest.mark.models
def test_ppocr_det_finds_text_lines(
    zoo_bundle: Callable[[str], Path], zoo_image: Callable[[str], Any]
) -> None:
    m = load_model(zoo_bundle("ppocr-det"), RuntimeOptions(threads=2))
    assert m.runtime.inputs[0].is_dynamic and m.spec.shape == (1, 3, 480, 640)
    page = zoo_image("page.png")
    r = m.infer(page)
    assert r.kind == "detections" and len(r.detections) >= 4 and r.confidence > 0.5
    h, w = page.shape[:2]
    for d in r.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and x2 - x1 > y2 - y1  # lines are wide
    assert m.infer(np.full((480, 640, 3), 255, np.uint8)).detections == []


@pytest.mark.models
def test_ppocr_cls_tells_upright_from_upside_down(
    zoo_bundle: Callable[[str], Path], zoo_image: Callable[[str], Any]
) -> None:
    m = load_model(zoo_bundle("ppocr-cls"))
    img = zoo_image("text.png")
    assert m.infer(img).classes[0].label == "0"
    assert m.infer(cv2.rotate(img, cv2.ROTATE_180)).classes[0].label == "180"


def test_tflite_quantised_and_dynamic_models_serve(tmp_path: Path, tiny_tflite: dict[str, Path]) -> None:
    m = load_model(tiny_tflite["uint8"])
    assert m.runtime.kind == "tflite" and m.preprocessor.passthrough and m.spec.layout == "NHWC"
    r = m.infer(_frame(bgr=(53, 53, 53)))  # q_in = 53 -> 1.0 -> q_out = 105 -> dequantised 1.0
    assert r.outputs[0]["dtype"] == "uint8" and r.outputs[0]["max"] == pytest.approx(1.0, abs=1e-6)
    dyn = load_model(tiny_tflite["float_dynamic"])
    assert dyn.spec.shape == (1, 640, 640, 3)
    assert dyn.infer(_frame()).outputs[0]["shape"] == [1, 3]
    b = create_bundle(
        tiny_tflite["uint8_dynamic"], tmp_path / "q", name="q", version=1,
        input_spec={"shape": [1, 24, 32, 3]}, golden_images=[_frame()],
    )  # fmt: skip
    assert b.manifest.format == "tflite" and b.model_path.name == "model.tflite"
    m2 = load_model(b.root)
    assert m2.spec.shape == (1, 24, 32, 3)
    np.testing.assert_array_equal(
        m2.run_outputs(_frame())[0], np.load(b.root / b.manifest.golden[0]["outputs"][0])
    )
