"""Decoders: yolo on built outputs with known boxes; ssd_anchors, db_text and classification on
the real BlazeFace and PP-OCR models against pinned golden files (tests/golden/).

Regenerate the golden files with ``EDGE_AGENT_REGEN_GOLDEN=1`` (then look at the boxes:
``EDGE_AGENT_DRAW=DIR`` saves each image with its boxes drawn into DIR).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inference import zoo
from inference.decode_ssd import AnchorSpec, generate_anchors
from inference.decoders import DECODERS, Decoder, make_decoder
from inference.errors import BundleError, TransientError
from inference.fsio import atomic_write_bytes
from inference.geometry import Transform
from inference.nms import nms, weighted_nms
from inference.result import Detection, Result
from inference.runtime import TensorInfo
from tests.fixtures.need import need_module, unavailable

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("EDGE_AGENT_REGEN_GOLDEN") == "1"
DRAW = os.environ.get("EDGE_AGENT_DRAW")
BOX_TOL = 2.0  # px, source pixels
SCORE_TOL = 1e-3

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


def info(shape: tuple[int | None, ...], name: str = "out") -> TensorInfo:
    return TensorInfo(name, shape, np.dtype(np.float32))


# ---------------------------------------------------------------- golden helpers


def dets_json(result: Result) -> list[dict[str, Any]]:
    return [
        {"label": d.label, "score": round(d.score, 5), "box": [round(v, 2) for v in d.box]}
        for d in result.detections
    ]


def check_golden(name: str, got: dict[str, Any]) -> None:
    """Compare ``got`` (case -> detections or classes) with tests/golden/<name>.json, or write it."""
    path = GOLDEN / f"{name}.json"
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(
                f"{path} is missing: run with EDGE_AGENT_REGEN_GOLDEN=1, check the boxes by eye, commit"
            )
        GOLDEN.mkdir(exist_ok=True)
        cases = [
            f"  {json.dumps(case)}: [\n" + ",\n".join(f"    {json.dumps(item)}" for item in items) + "\n  ]"
            for case, items in sorted(got.items())
        ]
        atomic_write_bytes(path, ("{\n" + ",\n".join(cases) + "\n}\n").encode())
        return
    want = json.loads(path.read_text())
    assert sorted(want) == sorted(got), f"{path}: cases differ"
    for case, items in want.items():
        have = got[case]
        assert len(have) == len(items), f"{name}/{case}: {len(have)} items, golden has {len(items)}: {have}"
        unused = list(range(len(have)))
        for w in items:
            if "box" in w:  # detections: match by box
                j = min(
                    unused,
                    key=lambda k: max(abs(a - b) for a, b in zip(have[k]["box"], w["box"], strict=True)),
                )
                err = max(abs(a - b) for a, b in zip(have[j]["box"], w["box"], strict=True))
                assert err <= BOX_TOL, f"{name}/{case}: box {have[j]['box']} vs golden {w['box']}"
            else:  # classes: match by label
                j = next(k for k in unused if have[k]["label"] == w["label"])
            unused.remove(j)
            assert have[j]["label"] == w["label"], f"{name}/{case}: {have[j]} vs golden {w}"
            assert abs(have[j]["score"] - w["score"]) <= SCORE_TOL, f"{name}/{case}: {have[j]} vs golden {w}"


def draw(name: str, image: U8, result: Result) -> None:
    if not DRAW:
        return
    out = image.copy()
    for d in result.detections:
        x1, y1, x2, y2 = (round(v) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), 2)
        cv2.putText(
            out, f"{d.score:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1
        )
    Path(DRAW).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(Path(DRAW) / f"{name}.png"), out)


def zoo_or_skip(kind: str, name: str) -> Path:
    try:
        return zoo.model_file(name) if kind == "model" else zoo.asset(name)
    except TransientError as exc:  # offline and nothing cached
        unavailable(f"zoo {kind} {name} unavailable: {exc}")


def read_image(name: str) -> U8:
    img = cv2.imread(str(zoo_or_skip("asset", name)), cv2.IMREAD_COLOR)
    assert img is not None
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------- registry and params


REQUIRED_PARAMS: dict[str, dict[str, Any]] = {"ctc_text": {"characters": ["a"]}}


def test_registry_names() -> None:
    assert sorted(DECODERS) == [
        "classification",
        "ctc_text",
        "db_text",
        "detection_postprocess",
        "raw",
        "ssd_anchors",
        "yolo",
    ]
    for name in DECODERS:
        assert isinstance(make_decoder(name, REQUIRED_PARAMS.get(name, {}), []), Decoder)


def test_unknown_decoder() -> None:
    with pytest.raises(BundleError, match=r"unknown decoder 'yoloo'.*classification"):
        make_decoder("yoloo", {}, [])


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_unknown_param_names_param_and_decoder(name: str) -> None:
    with pytest.raises(BundleError, match=f"decoder '{name}': unknown parameter 'bogus'"):
        make_decoder(name, {"bogus": 1}, [])


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("yolo", {"score_threshold": "high"}, "'score_threshold' must be a finite number"),
        ("yolo", {"score_threshold": 1.5}, "'score_threshold' must be a number in"),
        ("yolo", {"version": "v7"}, "'version' must be one of"),
        ("yolo", {"max_detections": 2.5}, "'max_detections' must be an integer"),
        ("yolo", {"normalized": "yes"}, "'normalized' must be true or false"),
        ("yolo", {"iou_threshold": float("nan")}, "'iou_threshold' must be a finite number"),
        ("classification", {"softmax": "maybe"}, "'softmax' must be one of"),
        ("classification", {"top_k": 0}, "'top_k' must be an integer in"),
        ("classification", {"top_k": True}, "'top_k' must be an integer"),
        ("ssd_anchors", {"strides": [8, "16"]}, "'strides' must be a list"),
        ("ssd_anchors", {"strides": [8, 16], "num_layers": 4}, "num_layers is 4 but strides has 2"),
        ("ssd_anchors", {"num_anchors": 900}, "num_anchors is 900 but the anchor layout gives 896"),
        ("ssd_anchors", {"anchor_offset": [0.5]}, "'anchor_offset' must be a number or a"),
        ("ssd_anchors", {"nms": "soft"}, "'nms' must be one of"),
        ("db_text", {"unclip_ratio": -1}, "'unclip_ratio' must be a number in"),
        ("db_text", {"score_mode": "medium"}, "'score_mode' must be one of"),
    ],
)
def test_bad_params(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        make_decoder(name, params, [])


def test_params_not_an_object_and_bad_labels() -> None:
    with pytest.raises(BundleError, match="parameters must be a JSON object"):
        make_decoder("yolo", [1, 2], [])  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="labels must be a list of strings"):
        make_decoder("yolo", {}, [1, 2])  # type: ignore[list-item]


def test_json_booleans_for_softmax() -> None:
    make_decoder("classification", {"softmax": True}, [])
    make_decoder("classification", {"softmax": False}, [])


# ---------------------------------------------------------------- check(): output shapes


@pytest.mark.parametrize(
    ("name", "labels", "shapes", "match"),
    [
        ("yolo", [], [(1, 25200, 85), (1, 25200, 85)], "exactly one output"),
        ("yolo", [], [(1, 85)], "one 3-D output"),
        ("yolo", [], [(2, 25200, 85)], "one 3-D output"),
        ("yolo", ["a", "b"], [(1, 100, 9)], "fits neither"),
        ("yolo", ["a", "b", "c"], [(1, 100, 10)], "fits neither"),
        ("ssd_anchors", [], [(1, 896, 16)], "two 3-D outputs"),
        ("ssd_anchors", [], [(1, 896, 16), (1, 895, 1)], "same N"),
        ("ssd_anchors", [], [(1, 896, 2), (1, 896, 1)], "regressors"),
        ("ssd_anchors", [], [(1, 1000, 16), (1, 1000, 1)], "predicts 1000 boxes"),
        ("db_text", [], [(1, 2, 64, 64)], r"\(1, 1, H, W\)"),
        ("db_text", [], [(1, 64, 64)], r"\(1, 1, H, W\)"),
        ("classification", [], [(1, 10), (1, 4)], "exactly one output"),
        ("classification", [], [(4, 10)], r"\(1, C\) or \(C,\)"),
        ("classification", ["a", "b"], [(1, 3)], "2 labels but output 'out0' has 3 classes"),
    ],
)
def test_check_rejects_shapes(
    name: str, labels: list[str], shapes: list[tuple[int, ...]], match: str
) -> None:
    dec = make_decoder(name, {}, labels)
    with pytest.raises(BundleError, match=match):
        dec.check([info(s, f"out{i}") for i, s in enumerate(shapes)])


def test_check_yolo_explicit_version_label_count() -> None:
    with pytest.raises(BundleError, match="has 4 classes but the manifest has 3 labels"):
        make_decoder("yolo", {"version": "v5"}, ["a", "b", "c"]).check([info((1, 100, 9))])
    with pytest.raises(BundleError, match="has 5 values per box, needs at least 6"):
        make_decoder("yolo", {"version": "v5"}, []).check([info((1, 100, 5))])


@pytest.mark.parametrize(
    ("name", "labels", "shapes"),
    [
        ("yolo", [], [(1, 25200, 85)]),
        ("yolo", [], [(1, 84, 8400)]),
        ("yolo", [], [(None, None, None)]),
        ("yolo", [str(i) for i in range(80)], [(1, 84, None)]),
        ("ssd_anchors", [], [(1, 896, 16), (1, 896, 1)]),
        ("ssd_anchors", [], [(1, 896, 1), (1, 896, 16)]),
        ("ssd_anchors", [], [(1, 2304, 16), (1, 2304, 1)]),  # full range, 192x192
        ("ssd_anchors", [], [(None, None, 16), (None, None, 1)]),
        ("db_text", [], [(None, 1, None, None)]),
        ("classification", ["0", "180"], [(None, 2)]),
        ("classification", [], [(1000,)]),
        ("raw", [], [(1, 2, 3), (7,)]),
    ],
)
def test_check_accepts_shapes(name: str, labels: list[str], shapes: list[tuple[int | None, ...]]) -> None:
    make_decoder(name, {}, labels).check([info(s, f"out{i}") for i, s in enumerate(shapes)])


# ---------------------------------------------------------------- NMS


def test_nms_class_aware_and_max_out() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [0, 3]
    assert nms(boxes, scores, 0.5, 10, np.array([0, 0, 1, 1])).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, 1).tolist() == [0]
    assert nms(boxes, scores, 0.99, 10).tolist() == [0, 1, 3]  # IoU(0,2) = 1 > 0.99
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, 10).tolist() == []


def naive_nms(
    boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], thr: float, cls: Any
) -> list[int]:
    def iou(a: Any, b: Any) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(cls[i] != cls[k] or iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (300, 2))], axis=1)
    scores = rng.permutation(300) / 300.0  # distinct scores: one right order
    cls = rng.integers(0, 3, 300)
    for thr in (0.2, 0.5):
        assert nms(boxes, scores, thr, 1000).tolist() == naive_nms(boxes, scores, thr, np.zeros(300))
        assert nms(boxes, scores, thr, 1000, cls).tolist() == naive_nms(boxes, scores, thr, cls)


def test_weighted_nms_merges_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [40, 40, 50, 50], [0, 0, 0, 0]], dtype=np.float64)
    scores = np.array([0.75, 0.25, 0.6, 0.55])
    merged, tops = weighted_nms(boxes, scores, 0.3, 10)
    assert tops.tolist() == [0, 2, 3]  # a zero-area box still leaves the queue
    np.testing.assert_allclose(merged[0], [0.5, 0.5, 10.5, 10.5])
    np.testing.assert_allclose(merged[1], [40, 40, 50, 50])


# ---------------------------------------------------------------- yolo on built outputs

# source 640x480 letterboxed into 320x320: scale 0.5, pad_y 40
T_LB = Transform.letterbox(640, 480, 320, 320)
LABELS = ["person", "car"]
# (source box, class, score)
KNOWN = [
    ((100.0, 100.0, 200.0, 220.0), 0, 0.9),
    ((104.0, 102.0, 204.0, 226.0), 0, 0.8),  # duplicate of the first: suppressed
    ((110.0, 104.0, 206.0, 216.0), 1, 0.7),  # same place, other class: kept (class-aware)
    ((400.0, 300.0, 600.0, 460.0), 1, 0.6),
    ((300.0, 10.0, 340.0, 50.0), 0, 0.1),  # below the score threshold
]


def to_model_cxcywh(box: tuple[float, float, float, float], t: Transform) -> list[float]:
    x1, y1, x2, y2 = box
    mx1, my1 = x1 * t.scale_x + t.pad_x, y1 * t.scale_y + t.pad_y
    mx2, my2 = x2 * t.scale_x + t.pad_x, y2 * t.scale_y + t.pad_y
    return [(mx1 + mx2) / 2, (my1 + my2) / 2, mx2 - mx1, my2 - my1]


def yolo_rows(n_noise: int = 60, version: str = "v5", normalized: bool = False) -> F32:
    """(N, 5+C) rows for v5 or (N, 4+C) for v8, known boxes shuffled among low-score noise."""
    rng = np.random.default_rng(7)
    c = len(LABELS)
    rows = []
    for box, cls, score in KNOWN:
        geo = to_model_cxcywh(box, T_LB)
        probs = [0.0] * c
        if version == "v5":
            probs[cls] = 1.0
            rows.append([*geo, score, *probs])
        else:
            probs[cls] = score
            rows.append([*geo, *probs])
    for _ in range(n_noise):
        geo = [*rng.uniform(20, 300, 2), *rng.uniform(5, 40, 2)]
        if version == "v5":
            rows.append([*geo, rng.uniform(0, 0.05), *rng.uniform(0, 1, c)])
        else:
            rows.append([*geo, *rng.uniform(0, 0.05, c)])
    arr = np.array(rows, dtype=np.float32)
    if normalized:
        arr[:, :4] /= 320.0
    return arr[rng.permutation(len(arr))]


def assert_known(result: Result, expected: list[int]) -> None:
    assert result.kind == "detections"
    got = [(d.label, round(d.score, 4), d.box) for d in result.detections]
    assert len(got) == len(expected), got
    for det, k in zip(result.detections, expected, strict=True):
        box, cls, score = KNOWN[k]
        assert det.label == LABELS[cls]
        assert det.score == pytest.approx(score, abs=1e-6)
        assert det.box == pytest.approx(box, abs=1e-3)
    assert result.confidence == pytest.approx(max(KNOWN[k][2] for k in expected))


@pytest.mark.parametrize("version_param", ["auto", "v5"])
def test_yolo_v5_layout(version_param: str) -> None:
    out = yolo_rows()[None]  # (1, N, 7)
    dec = make_decoder("yolo", {"version": version_param}, LABELS)
    dec.check([info(out.shape)])
    assert_known(dec([out], T_LB), [0, 2, 3])


@pytest.mark.parametrize("version_param", ["auto", "v8"])
def test_yolo_v8_layout(version_param: str) -> None:
    out = yolo_rows(version="v8").T[None]  # (1, 6, N)
    dec = make_decoder("yolo", {"version": version_param}, LABELS)
    dec.check([info(out.shape)])
    assert_known(dec([out], T_LB), [0, 2, 3])


def test_yolo_layout_auto_without_labels() -> None:
    """Without labels the shorter axis holds the attributes; labels fall back to indices."""
    v8 = yolo_rows(n_noise=200, version="v8").T[None]
    r = make_decoder("yolo", {}, [])([v8], T_LB)
    assert [d.label for d in r.detections] == ["0", "1", "1"]
    v5 = yolo_rows(n_noise=200)[None]
    r = make_decoder("yolo", {}, [])([v5], T_LB)
    assert [d.label for d in r.detections] == ["0", "1", "1"]


def test_yolo_v8_transposed_export() -> None:
    out = yolo_rows(version="v8")[None]  # (1, N, 6)
    assert_known(make_decoder("yolo", {"version": "v8"}, LABELS)([out], T_LB), [0, 2, 3])
    assert_known(make_decoder("yolo", {}, LABELS)([out], T_LB), [0, 2, 3])  # 4+C on the last axis


def test_yolo_normalized_coordinates() -> None:
    out = yolo_rows(normalized=True)[None]
    assert_known(make_decoder("yolo", {"normalized": True}, LABELS)([out], T_LB), [0, 2, 3])


def test_yolo_class_agnostic_threshold_and_max() -> None:
    out = yolo_rows()[None]
    assert_known(make_decoder("yolo", {"class_agnostic": True}, LABELS)([out], T_LB), [0, 3])
    assert_known(make_decoder("yolo", {"score_threshold": 0.65}, LABELS)([out], T_LB), [0, 2])
    assert_known(make_decoder("yolo", {"max_detections": 1}, LABELS)([out], T_LB), [0])
    assert_known(make_decoder("yolo", {"score_threshold": 0.08}, LABELS)([out], T_LB), [0, 2, 3, 4])
    assert_known(make_decoder("yolo", {"iou_threshold": 0.95}, LABELS)([out], T_LB), [0, 1, 2, 3])
    assert_known(make_decoder("yolo", {"max_candidates": 1}, LABELS)([out], T_LB), [0])


def test_yolo_no_detection_confidence_zero() -> None:
    out = np.zeros((1, 100, 7), dtype=np.float32)
    r = make_decoder("yolo", {}, LABELS)([out], T_LB)
    assert r.detections == [] and r.confidence == 0.0


def test_yolo_box_clipped_to_source() -> None:
    # a box hanging over the letterbox padding is clipped to the source image
    row = np.array([[160.0, 40.0, 100.0, 60.0, 0.9, 1.0, 0.0]], dtype=np.float32)
    r = make_decoder("yolo", {}, LABELS)([row[None]], T_LB)
    assert r.detections[0].box == pytest.approx((220.0, 0.0, 420.0, 60.0))


# ---------------------------------------------------------------- classification and raw


def test_classification_softmax_auto_topk_labels() -> None:
    logits = np.array([[1.0, 3.0, 0.5, 2.0]], dtype=np.float32)
    r = make_decoder("classification", {"top_k": 2}, ["a", "b", "c", "d"])([logits], T_LB)
    e = np.exp(logits[0] - 3.0)
    p = e / e.sum()
    assert [c.label for c in r.classes] == ["b", "d"]
    assert [c.score for c in r.classes] == pytest.approx([p[1], p[3]])
    assert r.confidence == pytest.approx(p[1])
    probs = np.array([0.1, 0.6, 0.3], dtype=np.float32)  # already probabilities: untouched
    r = make_decoder("classification", {}, [])([probs], T_LB)
    assert [(c.label, round(c.score, 4)) for c in r.classes] == [("1", 0.6), ("2", 0.3), ("0", 0.1)]
    r = make_decoder("classification", {"softmax": "true"}, [])([probs], T_LB)
    assert r.confidence == pytest.approx(float(np.exp(0.6) / np.exp(probs).sum()), rel=1e-5)
    r = make_decoder("classification", {"softmax": False}, [])([logits], T_LB)
    assert r.confidence == pytest.approx(3.0)
    assert r.payload() == {"classes": [c.to_json() for c in r.classes]}


def test_raw_summary_and_confidence() -> None:
    dec = make_decoder("raw", {}, [])
    dec.check([info((1, 3), "probs"), info((2, 2), "feat")])
    a = np.array([[0.2, 0.7, 0.1]], dtype=np.float32)
    b = np.array([[-5.0, 5.0], [np.nan, 1.0]], dtype=np.float32)
    r = dec([a, b], T_LB)
    assert r.kind == "outputs" and r.confidence == pytest.approx(0.7)
    assert r.outputs[0] == {
        "name": "probs", "shape": [1, 3], "dtype": "float32",
        "min": pytest.approx(0.1), "max": pytest.approx(0.7), "mean": pytest.approx(1 / 3),
    }  # fmt: skip
    assert (
        r.outputs[1]["name"] == "feat"
        and r.outputs[1]["min"] == -5.0
        and r.outputs[1]["mean"] == pytest.approx(1 / 3)
    )
    assert make_decoder("raw", {}, [])([b * 10], T_LB).confidence == 0.0
    json.dumps(r.payload(), allow_nan=False)  # no NaN leaks into the results line


# ---------------------------------------------------------------- ssd anchors


def spec(**kw: Any) -> AnchorSpec:
    base: dict[str, Any] = dict(
        strides=None, interpolated=None, offset=(0.5, 0.5), aspect_ratios=[1.0], fixed_size=True,
        min_scale=0.1484375, max_scale=0.75, reduce_lowest=False,
    )  # fmt: skip
    base.update(kw)
    return AnchorSpec(**base)


def test_anchor_counts_and_layout() -> None:
    front = generate_anchors(spec(), 128, 128)
    assert front.shape == (896, 4)
    np.testing.assert_allclose(front[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(front[1], front[0])  # 2 anchors per cell at stride 8
    np.testing.assert_allclose(front[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(front[512:518, :2], [[0.5 / 8, 0.5 / 8]] * 6)  # 6 per cell at stride 16
    np.testing.assert_allclose(front[-1], [7.5 / 8, 7.5 / 8, 1, 1])
    assert generate_anchors(spec(), 256, 256).shape == (896, 4)  # back: strides 16, 32, 32, 32
    assert generate_anchors(spec(), 192, 192).shape == (2304, 4)  # full range: stride 4, 1 per cell
    assert generate_anchors(spec(strides=[8, 16, 16, 16], interpolated=0.0), 128, 128).shape == (448, 4)
    sized = generate_anchors(spec(strides=[8, 16], interpolated=1.0, fixed_size=False), 64, 64)
    assert sized.shape == (8 * 8 * 2 + 4 * 4 * 2, 4)
    np.testing.assert_allclose(sized[0, 2:], [0.1484375, 0.1484375])
    np.testing.assert_allclose(sized[1, 2:], [math.sqrt(0.1484375 * 0.75)] * 2)


def test_ssd_decode_built_outputs() -> None:
    """One strong anchor with a known offset; its neighbours merge into it (weighted NMS)."""
    anchors = generate_anchors(spec(), 128, 128)
    reg = np.zeros((896, 16), dtype=np.float32)
    logits = np.full((896, 1), -100.0, dtype=np.float32)
    i = 512 + 6 * (3 * 8 + 4)  # stride-16 grid, cell (x=4, y=3)
    ax, ay = anchors[i, :2] * 128
    reg[i, :4] = [2.0, -1.0, 32.0, 24.0]  # dx, dy (pixels), w, h
    logits[i] = 3.0
    reg[i + 1, :4] = [2.0, -1.0, 32.0, 24.0]
    logits[i + 1] = 1.0
    logits[0] = 500.0  # clipped to 100 before the sigmoid; box of zero size is dropped
    t = Transform.stretch(256, 256, 128, 128)
    r = make_decoder("ssd_anchors", {}, [])([reg[None], logits[None]], t)
    assert [d.label for d in r.detections] == ["face"]
    d = r.detections[0]
    assert d.score == pytest.approx(1 / (1 + math.exp(-3.0)))
    cx, cy = ax + 2.0, ay - 1.0
    assert d.box == pytest.approx(((cx - 16) * 2, (cy - 12) * 2, (cx + 16) * 2, (cy + 12) * 2), abs=1e-3)
    # outputs in the other order decode the same
    r2 = make_decoder("ssd_anchors", {"nms": "plain"}, [])([logits[None], reg[None]], t)
    assert len(r2.detections) == 1 and r2.detections[0].score == d.score
    assert r2.detections[0].box == pytest.approx(d.box, abs=1e-6)


@pytest.fixture(scope="module")
def litert() -> Any:
    interpreter = need_module("ai_edge_litert.interpreter")
    return interpreter.Interpreter


def run_blazeface(
    litert: Any, model: str, image: U8, size: int, letterbox: bool
) -> tuple[list[F32], Transform]:
    h, w = image.shape[:2]
    t = (Transform.letterbox if letterbox else Transform.stretch)(w, h, size, size)
    nw, nh = round(w * t.scale_x), round(h * t.scale_y)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = round(t.pad_y), round(t.pad_x)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    canvas[top : top + nh, left : left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    x = (canvas.astype(np.float32) / 127.5 - 1.0)[None]
    it = litert(model_path=str(zoo_or_skip("model", model)), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    outputs = [np.asarray(it.get_tensor(d["index"]), dtype=np.float32) for d in it.get_output_details()]
    return outputs, t


@pytest.mark.models
def test_ssd_anchors_real_blazeface(litert: Any) -> None:
    astronaut = read_image("astronaut.png")
    crop = astronaut[20:404]  # 512x384: letterboxed with padding above and below
    cases: dict[str, tuple[str, U8, int, bool, dict[str, Any]]] = {
        "front_stretch": ("blazeface", astronaut, 128, False, {}),
        "front_letterbox_crop": (
            "blazeface",
            crop,
            128,
            True,
            {"input_size": 128, "strides": [8, 16, 16, 16]},
        ),
        "back": ("blazeface-back", astronaut, 256, False, {"input_size": 256, "num_anchors": 896}),
    }
    got: dict[str, Any] = {}
    for case, (model, img, size, lb, params) in cases.items():
        outputs, t = run_blazeface(litert, model, img, size, lb)
        dec = make_decoder("ssd_anchors", params, ["face"])
        dec.check([info(o.shape, f"o{i}") for i, o in enumerate(outputs)])
        r = dec(outputs, t)
        draw(f"blazeface_{case}", img, r)
        # one face, around the astronaut's face (about x 175-275, y 75-178 in the full image)
        assert len(r.detections) == 1 and r.detections[0].label == "face"
        x1, y1, x2, y2 = r.detections[0].box
        oy = 20 if img is crop else 0
        assert 160 < x1 < 190 and 260 < x2 < 290 and 60 < y1 + oy < 95 and 160 < y2 + oy < 190
        assert r.confidence == r.detections[0].score > 0.8
        got[case] = dets_json(r)
    check_golden("decoders_blazeface", got)


# ---------------------------------------------------------------- db_text on PP-OCR det


@pytest.fixture(scope="module")
def ort_session() -> Iterator[Any]:
    import onnxruntime as ort

    def make(model: str) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        return ort.InferenceSession(
            str(zoo_or_skip("model", model)), opts, providers=["CPUExecutionProvider"]
        )

    yield make


def ppocr_input(image: U8, w: int, h: int) -> F32:
    """RapidOCR's det/cls normalisation: BGR, (x / 255 - 0.5) / 0.5, NCHW."""
    x = (cv2.resize(image, (w, h)).astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def rendered_text() -> tuple[U8, list[tuple[int, int, int, int]]]:
    """Three text lines drawn on a smooth colour gradient with noise; their pixel extents."""
    h, w = 256, 480
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bg = np.stack([80 + 120 * xx / w, 200 - 100 * yy / h, 150 + 60 * np.sin(xx / 40.0)], axis=2)
    img = np.clip(bg + np.random.default_rng(0).normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
    extents = []
    for text, org, scale, col in [
        ("EDGE AGENT 2024", (20, 60), 1.2, (10, 10, 10)),
        ("hot swap, rollback", (40, 130), 1.0, (250, 250, 250)),
        ("drift 0.25", (200, 200), 0.9, (20, 20, 120)),
    ]:
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, col, 2, cv2.LINE_AA)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        extents.append((org[0], org[1] - th, org[0] + tw, org[1] + base))
    return img, extents


@pytest.mark.models
def test_db_text_real_ppocr_det(ort_session: Any) -> None:
    sess = ort_session("ppocr-det")
    dec_params = {"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6, "max_candidates": 1000}
    got: dict[str, Any] = {}

    img, extents = rendered_text()
    outputs = sess.run(None, {"x": ppocr_input(img, 480, 256)})
    dec = make_decoder("db_text", dec_params, [])
    dec.check([info((None, 1, None, None))])
    r = dec(outputs, Transform.stretch(480, 256, 480, 256))
    draw("ppocr_rendered", img, r)
    assert len(r.detections) == 3 and {d.label for d in r.detections} == {"text"}
    for ext in extents:  # each text line has a box hugging it
        box = min(r.detections, key=lambda d: max(abs(a - b) for a, b in zip(d.box, ext, strict=True))).box
        assert max(abs(a - b) for a, b in zip(box, ext, strict=True)) < 8, (box, ext)
    assert r.confidence == max(d.score for d in r.detections) > 0.8
    got["rendered"] = dets_json(r)

    page = read_image("page.png")  # 384x191 photo of a printed page, lines slightly curved
    outputs = sess.run(None, {"x": ppocr_input(page, 768, 384)})
    t = Transform.stretch(384, 191, 768, 384)
    slow = make_decoder("db_text", {**dec_params, "score_mode": "slow"}, [])(outputs, t)
    draw("ppocr_page_slow", page, slow)
    assert len(slow.detections) == 7  # every text line (the ">>>" prompt is too small)
    tops = sorted(d.box[1] for d in slow.detections)
    assert all(b - a > 10 for a, b in itertools.pairwise(tops))  # one box per line
    fast = make_decoder("db_text", dec_params, [])(outputs, t)
    draw("ppocr_page_fast", page, fast)
    # a straight rectangle scores a curved line lower: fast mode may drop the most curved line
    assert 5 <= len(fast.detections) <= 7
    got["page_slow"] = dets_json(slow)
    got["page_fast"] = dets_json(fast)
    check_golden("decoders_ppocr_det", got)


# ---------------------------------------------------------------- classification on PP-OCR cls

# clean single-line word crops of page.png (x, y, w, h)
CLS_CROPS = [(6, 11, 100, 23), (106, 11, 100, 23), (104, 46, 100, 21), (204, 46, 100, 21), (103, 63, 100, 23)]


def cls_input(crop: U8) -> tuple[F32, Transform]:
    """RapidOCR's cls input: height 48, width by aspect ratio up to 192, right-padded with 0."""
    h, w = crop.shape[:2]
    rw = min(192, math.ceil(48 * w / h))
    x = np.zeros((1, 3, 48, 192), dtype=np.float32)
    x[0, :, :, :rw] = ppocr_input(crop, rw, 48)[0]
    return x, Transform(w, h, 192, 48, rw / w, 48 / h)


@pytest.mark.models
def test_classification_real_ppocr_cls(ort_session: Any) -> None:
    sess = ort_session("ppocr-cls")
    page = read_image("page.png")
    dec = make_decoder("classification", {}, ["0", "180"])
    shapes = [tuple(None if isinstance(d, str) else d for d in o.shape) for o in sess.get_outputs()]
    dec.check([info(shape) for shape in shapes])
    got: dict[str, Any] = {}
    for x0, y0, w, h in CLS_CROPS:
        crop = page[y0 : y0 + h, x0 : x0 + w]
        for angle, image in (("0", crop), ("180", cv2.rotate(crop, cv2.ROTATE_180))):
            inp, t = cls_input(np.ascontiguousarray(image))
            r = dec(sess.run(None, {"x": inp}), t)
            assert r.kind == "classes" and r.classes[0].label == angle, (x0, y0, angle, r.classes)
            assert r.confidence == r.classes[0].score > 0.9
            assert sum(c.score for c in r.classes) == pytest.approx(1.0, abs=1e-4)
            got[f"{x0}_{y0}_{angle}"] = [c.to_json() for c in r.classes]
    check_golden("decoders_ppocr_cls", got)


def test_detection_json_round_trip() -> None:
    d = Detection("face", 0.123456789, (1.0, 2.0, 3.0, 4.0))
    assert d.to_json() == {"label": "face", "score": 0.12346, "box": [1.0, 2.0, 3.0, 4.0]}
