"""The ``detection_postprocess`` decoder: output order (explicit, names, shapes), count, labels, boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from inference.decoders import make_decoder
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Result
from inference.runtime import TensorInfo

F32 = npt.NDArray[np.float32]
N = 5
LABELS = ["???", "person", "bicycle", "car"]
STRETCH = Transform.stretch(300, 300, 300, 300)

# three boxes, [ymin, xmin, ymax, xmax] normalised; class ids as floats; two padding rows past count
BOXES = np.array(
    [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.6, 0.7], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32
)[None]
CLASSES = np.array([[0, 2, 1, 0, 0]], np.float32)
SCORES = np.array([[0.9, 0.2, 0.6, 0.95, 0.95]], np.float32)
COUNT = np.array([3], np.float32)

TF1 = ["boxes", "classes", "scores", "count"]
TF2 = ["scores", "boxes", "count", "classes"]


def arrays(order: list[str], count: F32 = COUNT) -> list[F32]:
    by_role = {"boxes": BOXES, "classes": CLASSES, "scores": SCORES, "count": count}
    return [by_role[r] for r in order]


def infos(order: list[str], names: list[str] | None = None) -> list[TensorInfo]:
    shapes = {"boxes": (1, N, 4), "classes": (1, N), "scores": (1, N), "count": (1,)}
    return [
        TensorInfo(names[i] if names else f"out{i}", shapes[r], np.dtype(np.float32))
        for i, r in enumerate(order)
    ]


def run(order: list[str], params: dict[str, Any] | None = None, **kw: Any) -> Result:
    dec = make_decoder("detection_postprocess", params or {}, kw.pop("labels", []))
    dec.check(kw.pop("infos", None) or infos(order))
    return dec(kw.pop("outputs", None) or arrays(order), kw.pop("t", STRETCH))


def summary(r: Result) -> list[tuple[str, float, list[float]]]:
    return [(d.label, round(d.score, 3), [round(v, 1) for v in d.box]) for d in r.detections]


EXPECTED = [("0", 0.9, [60.0, 30.0, 180.0, 150.0]), ("1", 0.6, [150.0, 150.0, 210.0, 180.0])]


def test_tf1_order_by_default() -> None:
    r = run(TF1)
    assert r.kind == "detections" and summary(r) == EXPECTED and r.confidence == pytest.approx(0.9)


def test_tf2_order_explicit() -> None:
    roles = {r: i for i, r in enumerate(TF2)}
    assert summary(run(TF2, {"outputs": roles})) == EXPECTED


def test_tf2_order_from_op_names() -> None:
    op = "StatefulPartitionedCall:TFLite_Detection_PostProcess"
    suffix = {"boxes": "", "classes": ":1", "scores": ":2", "count": ":3"}
    names = [op + suffix[r] for r in TF2]
    assert summary(run(TF2, infos=infos(TF2, names))) == EXPECTED


def test_tf2_order_from_descriptive_names() -> None:
    names = ["detection_scores", "detection_boxes", "num_detections", "detection_classes"]
    assert summary(run(TF2, infos=infos(TF2, names))) == EXPECTED


def test_shapes_alone_assume_classes_before_scores() -> None:
    # scores first without names: read as classes (TF1 order), the documented default
    order = ["boxes", "scores", "classes", "count"]
    r = run(order)
    assert summary(r) != EXPECTED and r.confidence == 2.0  # class ids read as scores
    roles = {r: i for i, r in enumerate(order)}
    assert summary(run(order, {"outputs": roles})) == EXPECTED


@pytest.mark.parametrize(
    ("count", "expected"),
    [(3.0, 2), (0.0, 0), (-4.0, 0), (1.0, 1), (99.0, 4), (np.nan, 0), (np.inf, 4), (-np.inf, 0), (2.7, 1)],
)
def test_count_clamped(count: float, expected: int) -> None:
    r = run(TF1, outputs=arrays(TF1, np.array([[count]], np.float32)))
    assert len(r.detections) == expected
    if expected == 0:
        assert r.confidence == 0.0


def test_label_offset_threshold_and_max() -> None:
    r = run(TF1, {"label_offset": 1}, labels=LABELS)
    assert [d.label for d in r.detections] == ["person", "bicycle"]
    assert [d.label for d in run(TF1, labels=LABELS).detections] == ["???", "person"]
    r = run(TF1, {"score_threshold": 0.1, "max_detections": 2, "label_offset": 1}, labels=LABELS)
    assert [(d.label, round(d.score, 3)) for d in r.detections] == [("person", 0.9), ("bicycle", 0.6)]
    assert [d.label for d in run(TF1, {"score_threshold": 0.1}).detections] == ["0", "1", "2"]


def test_boxes_through_letterbox() -> None:
    # a 640x480 source letterboxed into 300x300: scale 300/640, 37.5 px bands top and bottom;
    # the first box starts in the top band (y 30 < 37.5): clipped to the image
    t = Transform.letterbox(640, 480, 300, 300)
    r = run(TF1, t=t)
    s = 300 / 640
    x1, y1, x2, y2 = r.detections[0].box
    assert r.detections[1].box == pytest.approx(
        ((0.5 * 300) / s, (0.5 * 300 - 37.5) / s, (0.7 * 300) / s, (0.6 * 300 - 37.5) / s), rel=1e-5
    )
    assert (x1, y1, x2, y2) == pytest.approx(
        (0.2 * 300 / s, 0.0, 0.6 * 300 / s, (0.5 * 300 - 37.5) / s), rel=1e-5
    )


def test_non_finite_rows_dropped() -> None:
    scores = SCORES.copy()
    scores[0, 0] = np.nan
    boxes = BOXES.copy()
    boxes[0, 2, 1] = np.inf
    r = run(TF1, outputs=[boxes, CLASSES, scores, COUNT])
    assert r.detections == [] and r.confidence == 0.0


@pytest.mark.parametrize(
    ("params", "shapes", "match"),
    [
        ({}, [(1, N, 4), (1, N), (1, N)], "needs the four outputs"),
        ({}, [(1, N, 4), (1, N, 4), (1, N), (1,)], "which output holds the boxes"),
        ({}, [(1, N, 4), (1, N), (1, N), (1, N)], "which output holds the count"),
        ({"outputs": {"boxes": 0, "classes": 1, "scores": 2, "count": 7}}, None, "'count': 7"),
        ({"outputs": {"boxes": 1, "classes": 0, "scores": 2, "count": 3}}, None, "boxes 'out1' is not"),
        ({}, [(1, N, 4), (1, N + 1), (1, N), (1,)], "has 6 rows, boxes 5"),
    ],
)
def test_check_rejects(params: dict[str, Any], shapes: list[tuple[int, ...]] | None, match: str) -> None:
    dec = make_decoder("detection_postprocess", params, [])
    given = (
        infos(TF1)
        if shapes is None
        else [TensorInfo(f"out{i}", s, np.dtype(np.float32)) for i, s in enumerate(shapes)]
    )
    with pytest.raises(BundleError, match=match):
        dec.check(given)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"outputs": {"boxes": 0, "classes": 1, "scores": 2}}, "'outputs' must be an object"),
        ({"outputs": {"boxes": 0, "classes": 1, "scores": 1, "count": 3}}, "distinct index"),
        ({"outputs": [0, 1, 2, 3]}, "'outputs' must be an object"),
        ({"label_offset": 0.5}, "'label_offset' must be an integer"),
        ({"score_threshold": -1}, "'score_threshold' must be a number in"),
    ],
)
def test_bad_params(params: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        make_decoder("detection_postprocess", params, [])


def test_count_shape_1x1_accepted() -> None:
    dec = make_decoder("detection_postprocess", {}, [])
    shapes = [(1, N, 4), (1, N), (1, N), (1, 1)]
    dec.check([TensorInfo(f"o{i}", s, np.dtype(np.float32)) for i, s in enumerate(shapes)])


# ---------------------------------------------------------------- end to end: a bundle of a constant model


def constant_detector(outputs: list[tuple[str, F32]]) -> bytes:
    """float32 [1, 3, 32, 32] image -> the constant ``outputs`` (each plus 0 × the image mean)."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.fixtures.models import _model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((1,), np.float32), "zero")]
    ys = []
    for name, value in outputs:
        nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        inits.append(numpy_helper.from_array(value, f"{name}_c"))
        ys.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    return _model(nodes, [x], ys, inits)


def test_bundle_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from inference.bundle_builder import create_bundle
    from inference.model import load_model

    names = ["Identity", "Identity_1", "Identity_2", "Identity_3"]  # TF2 exports say nothing by name
    path = tmp_path / "det.onnx"
    path.write_bytes(constant_detector(list(zip(names, arrays(TF2), strict=True))))
    roles = {r: i for i, r in enumerate(TF2)}
    bundle = create_bundle(
        path, tmp_path / "b", name="det", version=1, decoder="detection_postprocess",
        decoder_params={"outputs": roles, "label_offset": 1}, labels=LABELS,
        input_spec={"resize": "stretch"},
    )  # fmt: skip
    model = load_model(bundle)
    r = model.infer(np.zeros((300, 300, 3), np.uint8))
    assert summary(r) == [
        ("person", 0.9, [60.0, 30.0, 180.0, 150.0]),
        ("bicycle", 0.6, [150.0, 150.0, 210.0, 180.0]),
    ]
