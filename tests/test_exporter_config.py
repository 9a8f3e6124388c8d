"""Bare exports configure themselves from their exporter's metadata; dynamic shapes fail fast.

The models are built here with the exporters' exact metadata keys and output layouts
(tests/fixtures/exporters.py); the real exports from the package index are run in
tests/test_exporter_models.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.config import parse_config
from inference.bundle import open_bundle
from inference.bundle_builder import create_bundle
from inference.errors import BundleError, ConfigError
from inference.exporter_config import ExporterConfig, read_exporter_config
from inference.model import load_model
from inference.onnx_metadata import parse_onnx_metadata, read_onnx_metadata
from inference.preprocess import parse_size
from ota.store import ModelStore
from tests.fixtures import exporters as ex
from tests.fixtures.agent import NotifySocket, numbered, run_agent
from tests.fixtures.agent import notify_socket as notify_socket

FRAME = np.full((640, 640, 3), 128, np.uint8)


# --------------------------------------------------------------------------- Ultralytics


def test_an_ultralytics_detector_runs_bare_with_its_labels_letterboxed_at_imgsz(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = ex.ultralytics_detector(tmp_path / "yolo11n.onnx")
    with caplog.at_level(logging.INFO, logger="inference.model"):
        model = load_model(path)
    try:
        m = model.bundle.manifest
        assert (m.decoder, m.task, model.bundle.labels()) == ("yolo", "object_detection", ["person", "car"])
        assert model.spec.shape == (1, 3, 320, 320) and model.spec.resize == "letterbox"
        assert model.spec.pad == 114 and model.spec.color == "RGB"
        result = model.infer(FRAME)
    finally:
        model.close()
    assert "ultralytics metadata" in caplog.text and "2 labels (person, car)" in caplog.text
    # 640x640 frame -> 320x320 input: x2. box 0 is (160, 160, 64, 64) cx cy w h in the input.
    got = {d.label: (round(d.score, 2), [round(v) for v in d.box]) for d in result.detections}
    assert got == {"person": (0.9, [256, 256, 384, 384]), "car": (0.8, [128, 128, 192, 192])}


def test_a_static_input_that_contradicts_imgsz_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = ex.ultralytics_detector(tmp_path / "m.onnx", imgsz=(640, 640), input_hw=(320, 320))
    with pytest.raises(BundleError, match=r"640x640 \('imgsz'\).*fixed height of 320.*--input-size 320x320"):
        load_model(path)
    model = load_model(path, input_size=(320, 320))  # the flag wins
    assert model.spec.shape == (1, 3, 320, 320)
    model.close()


def test_more_names_than_classes_is_a_load_error_naming_the_metadata(tmp_path: Path) -> None:
    path = ex.ultralytics_detector(tmp_path / "m.onnx", names={0: "a", 1: "b", 2: "c"})
    with pytest.raises(BundleError, match=r"3 labels.*ultralytics metadata.*export it again"):
        load_model(path)


def test_an_imgsz_the_model_cannot_run_at_fails_before_serving(tmp_path: Path) -> None:
    path = ex.ultralytics_detector(tmp_path / "m.onnx", imgsz=(320, 320), runs_at=(256, 256))
    with pytest.raises(BundleError) as err:
        load_model(path)
    msg = str(err.value)
    assert "[1, 3, 320, 320] (the ultralytics metadata)" in msg and "--input-size HxW" in msg
    model = load_model(path, input_size=(256, 256))
    assert model.infer(FRAME).kind == "detections"
    model.close()


@pytest.mark.parametrize(
    "names, why",
    [
        ("__import__('os').system('true')", "not a Python literal"),
        ("{1: 'a', 2: 'b'}", "class ids 0..N-1"),
        ("{0: 1, 1: 2}", "strings"),
        ("[" * 100_000, "not a Python literal"),
        ("{0: '" + "x" * 300_000 + "'}", "over the"),
    ],
)
def test_bad_names_metadata_is_a_clear_error(tmp_path: Path, names: str, why: str) -> None:
    path = ex.ultralytics_detector(tmp_path / "m.onnx")
    meta = {**ex.ultralytics_metadata("detect", ex.NAMES, (320, 320)), "names": names}
    path = _with_metadata(path, meta)
    with pytest.raises(BundleError, match=why):
        load_model(path)


def test_a_bad_imgsz_is_a_clear_error(tmp_path: Path) -> None:
    path = _with_metadata(
        ex.ultralytics_detector(tmp_path / "m.onnx"),
        {**ex.ultralytics_metadata("detect", ex.NAMES, (320, 320)), "imgsz": "[-1, 'a']"},
    )
    with pytest.raises(BundleError, match=r"'imgsz'.*--input-size"):
        load_model(path)


def test_an_ultralytics_classifier_runs_bare_with_its_labels(tmp_path: Path) -> None:
    model = load_model(ex.ultralytics_classifier(tmp_path / "yolo11n-cls.onnx"))
    try:
        assert model.bundle.manifest.decoder == "classification" and model.spec.shape == (1, 3, 224, 224)
        result = model.infer(FRAME)
    finally:
        model.close()
    assert result.classes[0].label == "dog" and result.confidence == pytest.approx(0.7)


def test_other_ultralytics_tasks_run_raw_and_say_so(tmp_path: Path) -> None:
    path = _with_metadata(
        ex.ultralytics_detector(tmp_path / "m.onnx"), ex.ultralytics_metadata("pose", ex.NAMES, (320, 320))
    )
    cfg = _config(path)
    assert cfg is not None and cfg.decoder == "raw" and "'pose' is not decoded" in cfg.describe()


# --------------------------------------------------------------------------- PaddleOCR


def test_a_paddleocr_recogniser_reads_text_at_the_family_height(tmp_path: Path) -> None:
    model = load_model(ex.paddleocr_recogniser(tmp_path / "rec.onnx"))
    try:
        assert model.bundle.manifest.decoder == "ctc_text" and model.spec.shape == (1, 3, 48, 320)
        assert model.spec.color == "BGR" and model.spec.mean == (0.5,) and model.spec.std == (0.5,)
        result = model.infer(FRAME)
    finally:
        model.close()
    assert result.kind == "text" and [t.text for t in result.texts] == ["ab 1"]


def test_a_character_table_that_does_not_fit_the_output_is_a_load_error(tmp_path: Path) -> None:
    path = ex.paddleocr_recogniser(tmp_path / "rec.onnx", width=9)
    with pytest.raises(BundleError, match=r"paddleocr metadata"):
        load_model(path)


# --------------------------------------------------------------------------- dynamic shapes, --input-size


def test_a_dynamic_input_the_default_cannot_run_fails_at_load_naming_the_fix(tmp_path: Path) -> None:
    path = ex.needs_size(tmp_path / "m.onnx", runs_at=(48, 96))
    with pytest.raises(BundleError) as err:
        load_model(path)
    msg = str(err.value)
    for part in ("input 'x'", "[1, 3, ?, ?]", "[1, 3, 640, 640]", "the default 640", "--input-size HxW",
                 "input.shape"):  # fmt: skip
        assert part in msg, msg
    model = load_model(path, input_size=(48, 96))
    assert model.spec.shape == (1, 3, 48, 96) and model.infer(FRAME).confidence == pytest.approx(0.5)
    model.close()


def test_input_size_cannot_change_a_fixed_dim(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"fixed height of 224.*only dynamic"):
        load_model(ex.ultralytics_classifier(tmp_path / "c.onnx"), input_size=(100, 100))


def test_a_model_failing_at_its_own_static_shape_is_called_broken(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [1, 7])  # 192 elements cannot be 1x7
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("ReduceMean", ["r"], ["y"])]
    path = ex._save(nodes, x, y, [shape], {}, tmp_path / "broken.onnx")
    with pytest.raises(BundleError, match=r"fails on a blank input of its own shape.*broken"):
        load_model(path)


@pytest.mark.parametrize("text, want", [("48x320", (48, 320)), ("640", (640, 640)), ("32X64", (32, 64))])
def test_parse_size(text: str, want: tuple[int, int]) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "x", "48x", "0x10", "1x2x3", "axb", "99999x1"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size(text)


def test_config_input_size() -> None:
    assert parse_config({"input_size": "48x320"}, "c").input_size == (48, 320)
    assert parse_config({"input_size": [48, 320]}, "c").input_size == (48, 320)
    with pytest.raises(ConfigError, match="input_size"):
        parse_config({"input_size": "big"}, "c")


# --------------------------------------------------------------------------- bundle create, the store


def test_bundle_create_infers_and_given_values_win_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = ex.ultralytics_detector(tmp_path / "yolo.onnx")
    b = create_bundle(path, tmp_path / "b1", name="yolo", version=1, golden_images=[FRAME])
    m = b.manifest
    assert (m.decoder, b.labels(), m.input["shape"], m.input["resize"]) == (
        "yolo", ["person", "car"], [1, 3, 320, 320], "letterbox",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="inference.bundle_builder"):
        b2 = create_bundle(
            path, tmp_path / "b2", name="yolo", version=2, labels=["walker", "auto"],
            decoder_params={"score_threshold": 0.85},
        )  # fmt: skip
    assert b2.labels() == ["walker", "auto"] and b2.manifest.decoder_params == {"score_threshold": 0.85}
    assert "2 labels instead of the metadata's 2 (given, so it wins)" in caplog.text
    model = load_model(b2)
    assert [d.label for d in model.infer(FRAME).detections] == ["walker"]
    model.close()


def test_the_store_imports_a_bare_export_configured(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "state")
    stored = store.import_bundle(ex.paddleocr_recogniser(tmp_path / "rec.onnx"), "seed")
    manifest = json.loads((stored.path / "manifest.json").read_text())
    assert manifest["decoder"] == "ctc_text" and manifest["decoder_params"]["characters"] == ex.CHARS
    assert open_bundle(stored.path).manifest.input["shape"] == [1, 3, 48, 320]


def test_no_metadata_means_no_inferred_config(tmp_path: Path) -> None:
    assert _config(ex.needs_size(tmp_path / "m.onnx")) is None


def test_the_metadata_reader_is_bounded_and_translates_garbage(tmp_path: Path) -> None:
    assert parse_onnx_metadata(b"", "x") == {}
    with pytest.raises(BundleError, match="malformed"):
        parse_onnx_metadata(b"\x72\xff\xff\xff\xff\x0f", "x")  # field 14, a length past the end
    path = ex.paddleocr_recogniser(tmp_path / "rec.onnx")
    assert read_onnx_metadata(path)["character"].splitlines() == ex.CHARS


# --------------------------------------------------------------------------- the CLI, end to end


def _folder(tmp_path: Path, n: int = 4) -> Path:
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(numbered(i, (64, 64))))
    return folder


def test_run_bare_ultralytics_export_prints_labelled_detections(tmp_path: Path) -> None:
    path = ex.ultralytics_detector(tmp_path / "yolo11n.onnx")
    res = run_agent(
        ["run", "--model", str(path), "--source", str(_folder(tmp_path)), "--loop", "--max-frames", "20",
         "--results", "-", "--state-dir", str(tmp_path / "state")], tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 20 and {d["label"] for d in lines[0]["detections"]} == {"person", "car"}
    assert "configured from its ultralytics metadata" in res.stderr


def test_run_fails_before_ready_on_a_shape_the_model_cannot_run_and_runs_with_input_size(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    path = ex.needs_size(tmp_path / "m.onnx", runs_at=(48, 96))
    args = ["run", "--model", str(path), "--source", str(_folder(tmp_path)), "--max-frames", "4",
            "--results", "-", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    res = run_agent(args, tmp_path, NOTIFY_SOCKET=str(notify_socket.path))
    assert res.returncode != 0 and res.stdout == ""
    assert "cannot run at input shape [1, 3, 640, 640]" in res.stderr and "--input-size HxW" in res.stderr
    assert "READY=1" not in notify_socket.fields()
    ok = run_agent([*args, "--input-size", "48x96"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 4


# --------------------------------------------------------------------------- helpers


def _config(path: Path) -> ExporterConfig | None:
    from inference.runtime import load_runtime

    rt = load_runtime(path)
    try:
        return read_exporter_config(path, "onnx", rt.inputs, rt.outputs)
    finally:
        rt.close()


def _with_metadata(path: Path, meta: dict[str, str]) -> Path:
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    path.write_bytes(model.SerializeToString())
    return path


def test_bench_takes_the_exporters_size_and_input_size(tmp_path: Path) -> None:
    yolo = ex.ultralytics_detector(tmp_path / "yolo.onnx")  # dynamic H, W; imgsz 320
    res = run_agent(["bench", str(yolo), "--runs", "3", "--warmup", "0", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["input_shapes"] == [[1, 3, 320, 320]]
    odd = ex.needs_size(tmp_path / "m.onnx", runs_at=(48, 96))
    res = run_agent(["bench", str(odd), "--runs", "3", "--warmup", "0", "--input-size", "48x96", "--json"],
                    tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["input_shapes"] == [[1, 3, 48, 96]]
    bad = run_agent(["bench", str(odd), "--input-size", "tall"], tmp_path)
    assert bad.returncode == 2 and "--input-size" in bad.stderr


def test_a_character_table_splits_on_newlines_only(tmp_path: Path) -> None:
    chars = ["a", "\x0b", "b", "\u2028"]  # characters str.splitlines() would take for line ends
    model = load_model(ex.paddleocr_recogniser(tmp_path / "rec.onnx", chars=chars))
    try:
        assert model.bundle.manifest.decoder_params["characters"] == chars
    finally:
        model.close()


def test_tflite_labels_that_do_not_fit_the_classifier_are_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import tflite_metadata as tm
    from inference.runtime import TensorInfo

    info = tm.TfliteInfo(True, "m", (tm.TensorMeta(),), (tm.TensorMeta(labels_file="labels.txt"),),
                         {0: [f"c{i}" for i in range(1000)]})  # fmt: skip
    monkeypatch.setattr(tm, "read_tflite_info", lambda path: info)
    image = TensorInfo("image", (1, 224, 224, 3), np.dtype(np.float32))

    def config(classes: int) -> ExporterConfig | None:
        out = TensorInfo("probs", (1, classes), np.dtype(np.float32))
        return read_exporter_config(tmp_path / "m.tflite", "tflite", [image], [out])

    cfg = config(1000)
    assert cfg is not None and cfg.decoder == "classification"
    cfg = config(1001)  # a background class the labels file leaves out
    assert cfg is not None and "background" in cfg.describe()
    with pytest.raises(BundleError, match=r"1000 labels but output 'probs' has 999 classes.*--labels"):
        config(999)
