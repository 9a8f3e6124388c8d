"""A bare .tflite detector ending in ``TFLite_Detection_PostProcess``, with the TFLite Task Library
object-detector metadata, configures itself: the op's outputs from the graph, the labels from the
metadata's labels file, the input normalisation from its ``NormalizationOptions``.

No package on the index ships such a model (contracts11/models-report.md §5), so it is built here
with the exporter's output layout and metadata (tests/fixtures/tflite_detect.py) and run by LiteRT,
whose builtin op resolver has the custom op.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.errors import BundleError
from inference.model import load_model
from inference.result import Result
from tests.fixtures import tflite_detect
from tests.fixtures.agent import numbered, run_agent
from tests.fixtures.need import need_module
from tests.fixtures.tflite_detect import EXPECTED, TF1, TF2

FRAME = np.zeros((128, 128, 3), np.uint8)
# EXPECTED's two boxes above the decoder's 0.25 threshold on a 128 x 128 frame (64 x 64 input, stretched)
LABELLED = [("person", 0.9, [0.0, 0.0, 64.0, 64.0]), ("car", 0.8, [44.8, 80.0, 108.8, 112.0])]


@pytest.fixture(autouse=True)
def _litert() -> None:
    need_module("ai_edge_litert.interpreter")
    need_module("flatbuffers")


def _build(tmp_path: Path, name: str = "det.tflite", **kw: Any) -> Path:
    path: Path = tflite_detect.detection_postprocess_tflite(tmp_path / name, **kw)
    return path


def _summary(r: Result) -> list[tuple[str, float, list[float]]]:
    return [(d.label, round(d.score, 3), [round(v, 1) for v in d.box]) for d in r.detections]


def _infer(path: Path) -> tuple[Any, Result]:
    model = load_model(path)
    try:
        return model, model.infer(FRAME)
    finally:
        model.close()


@pytest.mark.parametrize("order", [TF2, TF1], ids=["tf2", "tf1"])
def test_litert_runs_the_op_and_gives_the_exporters_outputs(tmp_path: Path, order: tuple[str, ...]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(_build(tmp_path, order=order)))
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    assert list(inp["shape"]) == [1, 64, 64, 3]
    it.set_tensor(inp["index"], np.full((1, 64, 64, 3), 200.0, np.float32))
    it.invoke()
    out = {role: it.get_tensor(d["index"]) for role, d in zip(order, it.get_output_details(), strict=True)}
    assert out["boxes"].shape == (1, 10, 4) and out["classes"].shape == out["scores"].shape == (1, 10)
    assert out["count"].shape == (1,) and int(out["count"][0]) == len(EXPECTED)
    rows = zip(out["boxes"][0], out["classes"][0], out["scores"][0], strict=True)
    got = [(int(c), round(float(s), 3), [round(float(v), 3) for v in b]) for b, c, s in rows]
    assert got[: len(EXPECTED)] == EXPECTED


@pytest.mark.parametrize("order", [TF2, TF1], ids=["tf2", "tf1"])
def test_read_tflite_info_gives_the_ops_outputs_labels_and_normalisation(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    from inference.tflite_metadata import read_tflite_info

    info = read_tflite_info(_build(tmp_path, order=order))
    assert info.postprocess == {role: order.index(role) for role in ("boxes", "classes", "scores", "count")}
    assert info.has_metadata and info.model_name == "ObjectDetector"
    assert info.labels == {order.index("classes"): ["person", "car"]}
    (image,) = info.inputs
    assert (image.name, image.mean, image.std) == ("image", (127.5,), (127.5,))
    assert (image.min, image.max) == ((0.0,), (255.0,))
    names = {"boxes": "location", "classes": "category", "scores": "score", "count": "number of detections"}
    assert [o.name for o in info.outputs] == [names[r] for r in order]


def test_a_bare_model_configures_the_decoder_labels_and_normalisation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _build(tmp_path)
    with caplog.at_level("INFO", logger="inference.model"):
        model = load_model(path)
    try:
        m = model.bundle.manifest
        assert (m.decoder, m.task, model.bundle.labels()) == ("detection_postprocess", "object_detection",
                                                              ["person", "car"])  # fmt: skip
        assert m.decoder_params == {"outputs": {"scores": 0, "boxes": 1, "count": 2, "classes": 3}}
        s = model.spec
        assert (s.shape, s.layout, s.color, s.resize) == ((1, 64, 64, 3), "NHWC", "RGB", "stretch")
        assert (s.scale, s.mean, s.std) == (1.0, (127.5,), (127.5,))
        # (pixel - 127.5) / 127.5: 0 -> -1, 255 -> 1
        lo, _ = model.preprocessor(np.zeros((128, 128, 3), np.uint8))
        hi, _ = model.preprocessor(np.full((128, 128, 3), 255, np.uint8))
        assert lo.dtype == np.float32 and np.all(lo == -1.0) and np.all(hi == 1.0)
        assert _summary(model.infer(FRAME)) == LABELLED
    finally:
        model.close()
    assert "tflite-detection-postprocess metadata" in caplog.text and "2 labels (person, car)" in caplog.text
    assert "(pixel - 127.5) / 127.5 from the metadata" in caplog.text


def test_both_output_orders_decode_the_same(tmp_path: Path) -> None:
    _, tf2 = _infer(_build(tmp_path, "tf2.tflite", order=TF2))
    m1, tf1 = _infer(_build(tmp_path, "tf1.tflite", order=TF1))
    assert m1.bundle.manifest.decoder_params == {
        "outputs": {"boxes": 0, "classes": 1, "scores": 2, "count": 3}
    }
    assert _summary(tf1) == _summary(tf2) == LABELLED


def test_without_metadata_the_decoder_is_still_detection_postprocess(tmp_path: Path) -> None:
    model, result = _infer(_build(tmp_path, with_metadata=False))
    m = model.bundle.manifest
    assert m.decoder == "detection_postprocess" and model.bundle.labels() == []
    assert m.decoder_params == {"outputs": {"scores": 0, "boxes": 1, "count": 2, "classes": 3}}
    assert _summary(result) == [("0", 0.9, LABELLED[0][2]), ("1", 0.8, LABELLED[1][2])]
    # nothing says how to normalise: the default spec's pixel / 255
    assert (model.spec.scale, model.spec.mean, model.spec.std) == (1 / 255, (0.0,), (1.0,))


def test_a_labels_file_missing_from_the_archive_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _build(tmp_path, labels_file="labelmap.txt", archive_name="labels.txt")
    with pytest.raises(BundleError, match=r"labels file 'labelmap.txt'.*do not hold"):
        load_model(path)


def test_a_cut_archive_or_malformed_metadata_is_a_bundle_error(tmp_path: Path) -> None:
    from inference.tflite_metadata import parse_tflite, read_tflite_info

    data = _build(tmp_path).read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="malformed"):
        read_tflite_info(cut)
    with pytest.raises(BundleError, match="malformed"):
        parse_tflite(data[:64], "x")
    with pytest.raises(BundleError):  # LiteRT refuses it first
        load_model(cut)
    # the flatbuffer intact, the appended zip cut: the labels file cannot be read
    no_zip = tmp_path / "no_zip.tflite"
    no_zip.write_bytes(data[:-30])
    with pytest.raises(BundleError, match="no archive of associated files"):
        load_model(no_zip)
    # LiteRT loads a model whose metadata buffer is garbage; our reader says it is malformed
    ident = data.index(b"M001")
    bad = tmp_path / "bad_meta.tflite"
    bad.write_bytes(data[: ident - 4] + struct.pack("<I", 0x7FFFFFF0) + data[ident:])
    with pytest.raises(BundleError, match=r"bad_meta.tflite.*malformed"):
        load_model(bad)


def test_run_bare_model_prints_labelled_detections(tmp_path: Path) -> None:
    import cv2

    path = _build(tmp_path, "efficientdet_lite0.tflite")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(numbered(i, (128, 128))))
    res = run_agent(["run", "--model", str(path), "--source", str(folder), "--loop", "--max-frames", "20",
                     "--results", "-"], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 20
    for line in lines:
        got = [
            (d["label"], round(d["score"], 3), [round(v, 1) for v in d["box"]]) for d in line["detections"]
        ]
        assert got == LABELLED
    assert "configured from its tflite-detection-postprocess metadata" in res.stderr


def test_labels_that_do_not_fit_num_classes_are_a_load_error_and_a_tf1_label_map_shifts(
    tmp_path: Path,
) -> None:
    """The op says num_classes 2: one label (or four) is the wrong labels file; '???' first is a TF1 map."""
    from inference.errors import BundleError
    from inference.model import load_model

    for labels in (("person",), ("a", "b", "c", "d")):
        path = tflite_detect.detection_postprocess_tflite(
            tmp_path / f"bad{len(labels)}.tflite", labels=labels
        )
        with pytest.raises(BundleError, match=rf"{len(labels)} labels .* num_classes 2.*--labels"):
            load_model(path)
    tf1 = tflite_detect.detection_postprocess_tflite(
        tmp_path / "tf1map.tflite", labels=("???", "person", "car")
    )
    model = load_model(tf1)
    try:
        assert model.bundle.manifest.decoder_params["label_offset"] == 1
        got = [d.label for d in model.infer(np.zeros((128, 128, 3), np.uint8)).detections]
    finally:
        model.close()
    assert got == ["person", "car"]


def test_hostile_metadata_is_a_bundle_error_not_a_crash(tmp_path: Path) -> None:
    """A metadata buffer placed past the end of the file; a labels file whose bytes fail their CRC."""
    from inference import tflite_metadata as tm
    from inference.errors import BundleError

    with pytest.raises(tm._Bad, match="outside the file"):
        tm._FlatBuffer(b"\0" * 16, 8, 100)
    path = _build(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"person")  # the labels' bytes in the appended zip (stored uncompressed)
    assert at > 0
    data[at] ^= 0xFF
    bad = tmp_path / "crc.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(
        BundleError, match=r"cannot read labels file 'labelmap.txt'.*write the metadata again"
    ):
        tm.read_tflite_info(bad)
