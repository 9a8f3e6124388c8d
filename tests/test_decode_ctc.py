"""The ``ctc_text`` decoder: greedy CTC on hand-built outputs, the table check, and one bundle end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from inference.decoders import make_decoder
from inference.errors import BundleError
from inference.geometry import Transform
from inference.result import Result, TextLine
from inference.runtime import TensorInfo

CHARS = ["a", "b", "c"]  # table: 0 blank, 1 a, 2 b, 3 c, 4 space
T = Transform.stretch(320, 48, 320, 48)


def info(shape: tuple[int | None, ...], name: str = "softmax_0.tmp_0") -> TensorInfo:
    return TensorInfo(name, shape, np.dtype(np.float32))


def steps(ids: list[int], width: int = 5, p: float = 0.9) -> npt.NDArray[np.float32]:
    """(T, width) probability rows: class ``ids[t]`` has ``p``, the rest share 1 - p."""
    x = np.full((len(ids), width), (1 - p) / (width - 1), np.float32)
    x[np.arange(len(ids)), ids] = p
    return x


def decode(x: npt.NDArray[Any], **params: Any) -> Result:
    dec = make_decoder("ctc_text", {"characters": CHARS, **params}, [])
    dec.check([info(tuple(x.shape))])
    return dec([x], T)


def test_greedy_collapse_and_repeat_separated_by_blank() -> None:
    # a a _ a b b _ _ c space c: repeats collapse, a blank between two a's keeps both
    r = decode(steps([1, 1, 0, 1, 2, 2, 0, 0, 3, 4, 3])[None])
    assert r.kind == "text" and [x.text for x in r.texts] == ["aabc c"]
    assert r.texts[0].score == pytest.approx(0.9) and r.confidence == pytest.approx(0.9)
    assert r.payload() == {"texts": [{"text": "aabc c", "score": 0.9}]}


def test_score_is_the_mean_of_the_kept_characters() -> None:
    x = steps([1, 0, 2])
    x[2] = [0.0, 0.1, 0.5, 0.3, 0.1]  # b at 0.5, runner-up 0.3
    r = decode(x)
    assert r.texts[0].text == "ab" and r.confidence == pytest.approx((0.9 + 0.5) / 2)
    assert r.texts[0].margin == pytest.approx(((0.9 - 0.025) + (0.5 - 0.3)) / 2)
    assert r.texts[0].entropy > 0


def test_blank_only_gives_no_text() -> None:
    r = decode(steps([0, 0, 0])[None])
    assert r.kind == "text" and r.texts == [] and r.confidence == 0.0
    assert r.payload() == {"texts": []}
    assert decode(np.zeros((1, 0, 5), np.float32)).texts == []


def test_score_threshold_drops_a_weak_line() -> None:
    x = steps([1, 2], p=0.4)
    assert decode(x, score_threshold=0.5).texts == [] and decode(x, score_threshold=0.5).confidence == 0
    assert decode(x, score_threshold=0.3).texts[0].text == "ab"


def test_softmax_auto_applied_to_logits_only() -> None:
    logits = np.log(steps([1, 0, 3])) * 2.0 + 5.0  # not probabilities; same argmax
    r = decode(logits)
    assert r.texts[0].text == "ac"
    e = np.exp(logits[0] - logits[0].max())
    assert r.confidence == pytest.approx(float((e / e.sum())[1]), rel=1e-5)
    probs = steps([1, 0, 3])
    assert decode(probs).confidence == pytest.approx(0.9)  # already softmaxed: left alone
    assert decode(probs, softmax=True).confidence < 0.5  # forced: softmax of probabilities flattens


def test_shapes_t_c_and_dynamic_t() -> None:
    x = steps([2, 0, 2])
    assert decode(x).texts[0].text == "bb"
    assert decode(x[None]).texts[0].text == "bb"
    dec = make_decoder("ctc_text", {"characters": CHARS}, [])
    dec.check([info((1, None, 5))])
    dec.check([info((None, None, 5))])
    dec.check([info((None, None, None))])
    assert dec([x[None]], T).texts == dec([x], T).texts
    assert isinstance(dec([x], T).texts[0], TextLine)


def test_no_space_char_and_other_blank_index() -> None:
    assert decode(steps([1, 3, 2], width=4), use_space_char=False).texts[0].text == "acb"
    # blank last (index 4): a b c space -> 0 1 2 3
    r = decode(steps([0, 4, 0, 3, 2]), blank=4)
    assert r.texts[0].text == "aa c"


def test_width_mismatch_names_both_numbers_and_the_fix() -> None:
    dec = make_decoder("ctc_text", {"characters": CHARS}, [])
    with pytest.raises(BundleError) as err:
        dec.check([info((1, 40, 97))])
    msg = str(err.value)
    assert "97 classes per step" in msg and "gives 5 (3 characters + 1 blank + 1 space)" in msg
    assert "does not fit the output width" in msg and "dict file" in msg and "use_space_char" in msg
    with pytest.raises(BundleError, match="set use_space_char to false"):
        dec.check([info((1, 40, 4))])
    no_space = make_decoder("ctc_text", {"characters": CHARS, "use_space_char": False}, [])
    with pytest.raises(BundleError, match="set use_space_char to true"):
        no_space.check([info((1, 40, 5))])
    dec.check([info((1, 40, None))])  # dynamic width: checked on the frame
    with pytest.raises(BundleError, match="6 classes per step"):
        dec([np.zeros((1, 3, 6), np.float32)], T)


@pytest.mark.parametrize(
    ("params", "labels", "match"),
    [
        ({}, [], "needs its character table"),
        ({"characters": []}, [], "needs its character table"),
        ({"characters": "abc"}, [], "'characters' must be a list of strings"),
        ({"characters": ["a", 1]}, [], "'characters' must be a list of strings"),
        ({"characters": CHARS}, ["x"], "does not use labels.*'characters'"),
        ({"characters": CHARS, "blank": 9}, [], "'blank' is 9"),
        ({"characters": CHARS, "score_threshold": 2}, [], "'score_threshold' must be a number in"),
    ],
)
def test_bad_configuration(params: dict[str, Any], labels: list[str], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        make_decoder("ctc_text", params, labels)


def test_check_output_count_and_rank() -> None:
    dec = make_decoder("ctc_text", {"characters": CHARS}, [])
    with pytest.raises(BundleError, match="exactly one output"):
        dec.check([info((1, 40, 5)), info((1, 40, 5), "b")])
    with pytest.raises(BundleError, match=r"\(1, T, C\) or \(T, C\)"):
        dec.check([info((2, 40, 5))])


def test_nan_output_gives_zero_confidence() -> None:
    x = steps([1, 2, 3])
    x[1, 2] = np.nan  # the step of "b"
    r = decode(x)
    assert r.confidence == 0.0 and r.texts == []


# ---------------------------------------------------------------- end to end: a bundle of a constant model


def constant_recogniser(out: npt.NDArray[np.float32]) -> bytes:
    """float32 [1, 3, 48, 64] image -> the constant ``out`` (1, T, C) plus 0 × the image mean."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.fixtures.models import _model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 64])
    y = helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, list(out.shape))
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["table", "z"], ["softmax_0.tmp_0"]),
    ]
    inits = [
        numpy_helper.from_array(out, "table"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
    ]
    return _model(nodes, [x], [y], inits)


def test_bundle_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from inference.bundle_builder import create_bundle
    from inference.model import load_model

    table = ["h", "e", "l", "o"]  # 0 blank, 1 h, 2 e, 3 l, 4 o, 5 space
    out = steps([1, 2, 3, 0, 3, 4, 5, 0], width=6, p=0.8)[None]
    path = tmp_path / "rec.onnx"
    path.write_bytes(constant_recogniser(out))
    bundle = create_bundle(
        path, tmp_path / "b", name="rec", version=1, decoder="ctc_text", decoder_params={"characters": table}
    )
    model = load_model(bundle)
    r = model.infer(np.full((32, 200, 3), 128, np.uint8))
    assert r.kind == "text" and [x.text for x in r.texts] == ["hello"]
    assert r.confidence == pytest.approx(0.8, rel=1e-5)
    with pytest.raises(BundleError, match="does not fit the output width"):
        create_bundle(
            path, tmp_path / "bad", name="rec", version=1, decoder="ctc_text",
            decoder_params={"characters": table[:3]},
        )  # fmt: skip


# ---------------------------------------------------------------- text results through the consumers


class FakeModel:
    name = "rec"
    version = 2
    sha256 = "0" * 64

    def infer(self, image: Any) -> Result:  # pragma: no cover - not called by sinks
        raise AssertionError


def text_result() -> Result:
    return decode(steps([1, 0, 2, 3])[None])  # "abc" at 0.9 a character


def test_sinks_write_text_lines(tmp_path: Path) -> None:
    from agent.sinks import SqliteSink, result_record
    from agent.source import Frame
    from monitoring.metrics_store import MetricsStore

    frame = Frame(7, 1000.0, np.zeros((2, 2, 3), np.uint8))
    record = result_record(frame, text_result(), FakeModel())
    assert record["texts"] == [{"text": "abc", "score": 0.9}] and record["confidence"] == 0.9
    assert "detections" not in record and "classes" not in record
    store = MetricsStore(tmp_path / "m.db")
    sink = SqliteSink(store, batch=1)
    sink.write(frame, text_result(), FakeModel())
    sink.write(frame, decode(steps([0, 0])), FakeModel())
    sink.close()
    rows = store.results()
    assert sorted(str(r["top_label"]) for r in rows) == ["None", "abc"]
    assert all(r["n_detections"] is None for r in rows)
    store.close()


def test_monitoring_measures_of_a_text_result() -> None:
    from monitoring.collector import prelabels
    from monitoring.frame_stats import FrameStats
    from monitoring.sampler import result_measure

    r = text_result()
    values, labels = FrameStats.result(r)
    line = r.texts[0]
    assert values == {
        "confidence": r.confidence,
        "margin": line.margin,
        "entropy": line.entropy,
        "chars": 3.0,
    }
    assert labels == () and line.margin == pytest.approx(0.9 - 0.025)
    assert result_measure(r, "margin") == line.margin and result_measure(r, "entropy") == line.entropy
    empty = decode(steps([0, 0]))
    assert FrameStats.result(empty)[0] == {"confidence": 0.0, "margin": 0.0, "entropy": 0.0, "chars": 0.0}
    assert prelabels(r, 0.5) == {"texts": [{"text": "abc", "score": 0.9}]}


def test_reference_of_a_text_model() -> None:
    from monitoring.frame_stats import IMAGE_METRICS, Sample
    from monitoring.reference import build_reference, parse_reference

    rng = np.random.default_rng(3)
    samples = []
    for i in range(120):
        values = {m: float(rng.uniform(10, 100)) for m in IMAGE_METRICS}
        values.update(
            confidence=float(rng.uniform(0.6, 1.0)),
            margin=float(rng.uniform(0.3, 0.9)),
            entropy=float(rng.uniform(0.1, 1.0)),
            chars=float(rng.integers(3, 9)),
        )
        samples.append(Sample(ts=float(i), frame=i, values=values, labels=(), latency_ms=1.0))
    profile = build_reference(samples, window_sizes=(30,), replicates=200, alpha=0.01)
    assert profile.kind == "text" and {"confidence", "margin", "entropy", "chars"} <= set(profile.metrics)
    assert profile.decay_ready
    again = parse_reference(profile.to_json(), kind="text")
    assert again.kind == "text"
    with pytest.raises(BundleError, match="made for a model whose results are text"):
        parse_reference(profile.to_json(), kind="classes")
