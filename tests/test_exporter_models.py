"""Acceptance: real exports from the package index run bare, configured from their own metadata.

``edge-agent run --model FILE --source … --max-frames 20 --results -`` and nothing else, for an
Ultralytics detector (dynamic input: ``imgsz`` decides; and a static 640 one), a PaddleOCR
recogniser, and a TFLite classifier with TFLite metadata. The models come from wheels (and one
source archive) on the package index, pinned by sha256 (inference/zoo.py). The Ultralytics
classifier and the TFLite_Detection_PostProcess detector ship in no package: their acceptance
runs on models built with the exporters' exact metadata (tests/test_exporter_config.py,
tests/test_tflite_detection_postprocess.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inference import zoo
from inference.model import load_model
from tests.fixtures.agent import NotifySocket, run_agent
from tests.fixtures.agent import notify_socket as notify_socket
from tests.fixtures.models import _zoo_or_skip

pytestmark = pytest.mark.models

WORDS = ("OPEN 24H", "edge agent", "EXIT 12")


def _asset_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in names:
        shutil.copy(_zoo_or_skip(zoo.asset, name), folder / name)
    return folder


def _text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "lines"
    folder.mkdir()
    for i, word in enumerate(WORDS):
        img = np.full((64, 420, 3), 255, np.uint8)
        cv2.putText(img, word, (8, 46), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


def _run_bare(model: Path, source: Path, tmp_path: Path) -> tuple[list[dict[str, Any]], str]:
    """The acceptance command, with only a state folder of the test's own and --loop for a short folder."""
    res = run_agent(
        ["run", "--model", str(model), "--source", str(source), "--loop", "--max-frames", "20",
         "--results", "-", "--state-dir", str(tmp_path / "state")], tmp_path, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 20 and [r["frame"] for r in lines] == list(range(20))
    return lines, res.stderr


def test_an_ultralytics_detector_with_dynamic_dims_runs_bare(
    tmp_path: Path, zoo_model: Callable[[str], Path]
) -> None:
    model = zoo_model("yolo-det")  # nudenet's YOLOv8n: [batch, 3, height, width], imgsz [320, 320]
    lines, log = _run_bare(model, _asset_folder(tmp_path, "astronaut.png"), tmp_path)
    assert "configured from its ultralytics metadata" in log and "input [1, 3, 320, 320] letterbox" in log
    faces = [d for d in lines[0]["detections"] if d["label"] == "FACE_FEMALE"]
    assert faces and faces[0]["score"] > 0.5
    x1, y1, x2, y2 = faces[0]["box"]  # the face in the 512x512 photo (source pixels)
    assert 150 < x1 < x2 < 300 and 60 < y1 < y2 < 200


def test_an_ultralytics_detector_with_a_static_input_runs_bare(
    tmp_path: Path, zoo_model: Callable[[str], Path]
) -> None:
    model = zoo_model("yolo-det-640")  # a fall detector: [1, 3, 640, 640], names Normal / Fall
    lines, _ = _run_bare(model, _asset_folder(tmp_path, "astronaut.png"), tmp_path)
    labels = {d["label"] for r in lines for d in r["detections"]}
    assert "Normal" in labels and labels <= {"Normal", "Fall"}


def test_a_paddleocr_recogniser_runs_bare_and_reads_the_text(
    tmp_path: Path, zoo_model: Callable[[str], Path]
) -> None:
    model = zoo_model("ppocr-rec")  # PP-OCRv4 rec, its 6623-character table in the metadata
    lines, log = _run_bare(model, _text_folder(tmp_path), tmp_path)
    assert "ctc_text" in log and "6623 characters" in log
    read = [r["texts"][0]["text"] if r["texts"] else "" for r in lines[: len(WORDS)]]
    assert read == list(WORDS), read
    assert all(r["confidence"] > 0.8 for r in lines[: len(WORDS)])


def test_a_tflite_classifier_with_metadata_runs_bare_with_its_labels(
    tmp_path: Path, zoo_model: Callable[[str], Path]
) -> None:
    model = zoo_model("tflite-meta")  # EfficientNet-Lite0 uint8, 1000 labels, mean 127 / std 128
    lines, log = _run_bare(model, _asset_folder(tmp_path, "chelsea.png", "coffee.png"), tmp_path)
    assert "1000 labels" in log and "(pixel - 127.0) / 128.0 from the metadata" in log
    cat, coffee = lines[0]["classes"][0], lines[1]["classes"][0]
    assert cat["label"] in {"Egyptian cat", "tabby", "tiger cat"} and cat["score"] > 0.5
    assert coffee["label"] == "espresso" and coffee["score"] > 0.5


def test_a_real_recogniser_without_its_metadata_fails_before_ready_and_runs_with_input_size(
    tmp_path: Path, zoo_model: Callable[[str], Path], notify_socket: NotifySocket
) -> None:
    """The issue's case: a text recogniser cannot run at the default 640 x 640."""
    import onnx

    m = onnx.load(str(zoo_model("ppocr-rec")))
    del m.metadata_props[:]
    bare = tmp_path / "rec-no-metadata.onnx"
    bare.write_bytes(m.SerializeToString())
    args = ["run", "--model", str(bare), "--source", str(_text_folder(tmp_path)), "--max-frames", "3",
            "--results", "-", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    res = run_agent(args, tmp_path, timeout=300, NOTIFY_SOCKET=str(notify_socket.path))
    assert res.returncode != 0 and res.stdout == ""
    assert "cannot run at input shape [1, 3, 640, 640]" in res.stderr and "--input-size HxW" in res.stderr
    assert "input 'x' is [?, 3, ?, ?]" in res.stderr
    assert "READY=1" not in notify_socket.fields()
    ok = run_agent([*args, "--input-size", "48x320"], tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert [json.loads(x)["outputs"][0]["shape"] for x in ok.stdout.splitlines()] == [[1, 40, 6625]] * 3


def test_a_paddle_detector_keeping_class_names_under_character_runs_raw(
    zoo_model: Callable[[str], Path],
) -> None:
    model = load_model(zoo_model("ppocr-layout"))  # PP-PicoDet layout: 8 outputs, not a recogniser
    try:
        assert model.bundle.manifest.decoder == "raw"
    finally:
        model.close()
