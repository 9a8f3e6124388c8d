"""The quantisation parameters of ONNX inputs and outputs, read without the ``onnx`` package
(inference/onnx_quant.py).

A device installs numpy and onnxruntime, not ``onnx``: the reader must give what the former
onnx-based logic gave (kept below as ``reference``) where that logic worked, raise
``BundleError`` naming the file, the tensor and the fix where a quantised input or output has
no readable parameters, and raise nothing but ``BundleError`` on malformed bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from inference.errors import BundleError
from inference.model import load_model
from inference.onnx_quant import parse_onnx_quant, read_onnx_quant
from inference.onnx_runtime import OnnxRuntime

ROOT = Path(__file__).resolve().parent.parent
QuantMap = dict[str, tuple[float, int]]
U8, I8 = TensorProto.UINT8, TensorProto.INT8


def f32(x: float) -> float:
    """A Python float as the float32 an ONNX scale holds."""
    return float(np.float32(x))


def reference(data: bytes) -> tuple[QuantMap, QuantMap]:
    """The former ``_onnx_quant`` (onnx package), on bytes instead of a path; names that are not
    UTF-8 come back from protobuf as bytes and are decoded as the reader decodes them."""
    model = onnx.ModelProto.FromString(data)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)

    def params(node: Any) -> tuple[float, int] | None:
        if len(node.input) < 2 or node.input[1] not in consts:
            return None
        scale = np.asarray(consts[node.input[1]]).reshape(-1)
        zp = np.asarray(consts[node.input[2]]).reshape(-1) if len(node.input) > 2 and node.input[2] else None
        if scale.size != 1 or (zp is not None and zp.size != 1):
            return None
        return float(scale[0]), int(zp[0]) if zp is not None else 0

    def text(name: Any) -> str:
        return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)

    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    qin: QuantMap = {}
    qout: QuantMap = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in inputs:
            p = params(node)
            if p is not None:
                qin[text(node.input[0])] = p
        elif node.op_type == "QuantizeLinear" and node.output and node.output[0] in outputs:
            p = params(node)
            if p is not None:
                qout[text(node.output[0])] = p
    return qin, qout


# -- model builders -----------------------------------------------------------------------------


def _const(name: str, dtype: int, value: float, dims: list[int], raw: bool, np_dtype: Any = None) -> Any:
    """A scalar or one-element tensor, in raw_data or in the typed field."""
    if raw:
        arr = np.array(value, dtype=np_dtype or helper.tensor_dtype_to_np_dtype(dtype)).reshape(dims)
        t = numpy_helper.from_array(arr, name)
        assert t.HasField("raw_data")
        return t
    t = helper.make_tensor(name, dtype, dims, [value])
    assert not t.HasField("raw_data")
    return t


def quant_model(
    qtype: int = U8,
    qin: tuple[float, int] = (0.02, 3),
    qout: tuple[float, int] = (0.01, 5),
    *,
    raw: bool = False,
    dims: list[int] | None = None,
    constants: bool = False,
    zero_points: bool = True,
    opset: int = 13,
    scale_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """uint8/int8 image [1, 8, 8, 3] -> DequantizeLinear -> mean over H, W -> QuantizeLinear -> [1, 3]."""
    dims = dims if dims is not None else []
    x = helper.make_tensor_value_info("image", qtype, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("q", qtype, [1, 3])
    tensors = [
        _const("s_in", scale_type, qin[0], dims, raw),
        _const("s_out", scale_type, qout[0], dims, raw),
    ]
    if zero_points:
        tensors += [_const("z_in", qtype, qin[1], dims, raw), _const("z_out", qtype, qout[1], dims, raw)]
    zin, zout = (["z_in"], ["z_out"]) if zero_points else ([], [])
    nodes = [
        helper.make_node("DequantizeLinear", ["image", "s_in", *zin], ["f"], name="dq"),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("QuantizeLinear", ["m", "s_out", *zout], ["q"], name="qo"),
    ]
    inits = tensors
    if constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + nodes
        inits = []
    graph = helper.make_graph(nodes, "quant", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, path: Path, check: bool = True) -> Path:
    if check:
        onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _frame(value: int) -> Any:
    return np.full((8, 8, 3), value, np.uint8)


CASES: dict[str, dict[str, Any]] = {
    "u8-typed-scalar": {},
    "u8-raw-scalar": {"raw": True},
    "u8-typed-one-element": {"dims": [1]},
    "u8-raw-one-element": {"raw": True, "dims": [1]},
    "i8-typed-scalar": {"qtype": I8, "qin": (0.05, -4), "qout": (0.02, 1)},
    "i8-raw-one-element": {"qtype": I8, "qin": (0.05, -4), "qout": (0.02, -7), "raw": True, "dims": [1]},
    "u8-constant-nodes": {"constants": True, "qout": (0.004, 17)},
    "i8-constant-nodes-raw": {
        "qtype": I8,
        "qin": (0.1, -100),
        "qout": (0.03, 9),
        "constants": True,
        "raw": True,
    },
    "u8-no-zero-points": {"zero_points": False, "qin": (0.5, 0), "qout": (0.25, 0)},
}


# -- same answers as the onnx package, through OnnxRuntime and LoadedModel ------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_matches_the_onnx_reference(tmp_path: Path, case: str) -> None:
    kw = CASES[case]
    model = quant_model(**kw)
    path = _save(model, tmp_path / f"{case}.onnx")
    data = path.read_bytes()
    qin, qout = reference(data)
    got = read_onnx_quant(path)
    assert (got.inputs, got.outputs) == (qin, qout)
    assert got.graph_inputs == ("image",) and got.graph_outputs == ("q",)
    expect_in, expect_out = kw.get("qin", (0.02, 3)), kw.get("qout", (0.01, 5))
    assert qin["image"][1] == expect_in[1] and qin["image"][0] == pytest.approx(expect_in[0], rel=1e-6)
    assert qout["q"][1] == expect_out[1] and qout["q"][0] == pytest.approx(expect_out[0], rel=1e-6)
    assert all(isinstance(s, float) and isinstance(z, int) for s, z in [*qin.values(), *qout.values()])

    rt = OnnxRuntime(path)
    assert rt.inputs[0].quant == qin["image"] and rt.outputs[0].quant == qout["q"]

    m = load_model(path)
    for pixel in (0, 53, 200):
        (raw,) = m.run_outputs(_frame(pixel))
        r = m.infer(_frame(pixel))
        scale, zp = qout["q"]
        want = (float(raw.max()) - zp) * scale  # what the decoder must see: dequantised floats
        assert r.outputs[0]["max"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    m.close()
    rt.close()


def test_tiny_fixture_models_match_the_reference(tiny_models: dict[str, Path]) -> None:
    for name in ("quant_u8", "int8_io", "classifier", "dynamic", "nan", "two_inputs"):
        data = tiny_models[name].read_bytes()
        got = parse_onnx_quant(data, name)
        assert (got.inputs, got.outputs) == reference(data), name
    assert parse_onnx_quant(tiny_models["quant_u8"].read_bytes(), "q").inputs == {"image": (f32(0.02), 3)}


def test_quantised_output_is_dequantised_for_the_decoder(tmp_path: Path) -> None:
    path = _save(quant_model(), tmp_path / "m.onnx")
    m = load_model(path)
    (raw,) = m.run_outputs(_frame(53))  # (53 - 3) * 0.02 = 1.0 -> q = 1.0 / 0.01 + 5 = 105
    assert raw.dtype == np.uint8 and raw.tolist() == [[105, 105, 105]]
    assert m.infer(_frame(53)).outputs[0]["max"] == pytest.approx(1.0, abs=1e-6)  # not 105
    m.close()


@pytest.mark.parametrize(
    ("scale_type", "qtype", "opset"),
    [
        (TensorProto.FLOAT16, U8, 19),
        (TensorProto.BFLOAT16, U8, 19),
        (TensorProto.FLOAT, TensorProto.INT32, 13),
        (TensorProto.FLOAT, TensorProto.UINT16, 21),
        (TensorProto.FLOAT, TensorProto.INT16, 21),
    ],
    ids=["float16-scale", "bfloat16-scale", "int32", "uint16", "int16"],
)
@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_other_scale_and_zero_point_types_match_the_reference(
    scale_type: int, qtype: int, opset: int, raw: bool
) -> None:
    zp_out = 5 if qtype in (U8, TensorProto.UINT16) else -300
    model = quant_model(qtype, (0.0625, 3), (0.125, zp_out), raw=raw, opset=opset, scale_type=scale_type)
    data = model.SerializeToString()
    got = parse_onnx_quant(data, "m.onnx")
    assert (got.inputs, got.outputs) == reference(data)
    assert got.inputs == {"image": (0.0625, 3)} and got.outputs == {"q": (0.125, zp_out)}


def test_float_model_has_no_quant_params(tiny_models: dict[str, Path]) -> None:
    got = read_onnx_quant(tiny_models["classifier"])
    assert (got.inputs, got.outputs) == ({}, {}) and got.graph_inputs == ("image",)
    assert [t.quant for t in OnnxRuntime(tiny_models["classifier"]).inputs] == [None]


def test_uint8_io_that_is_not_quantised_gets_none(tmp_path: Path) -> None:
    """A uint8 image the graph casts itself, a uint8 mask output: integers, not quantised."""
    a = helper.make_tensor_value_info("image", U8, [1, 8, 8, 3])
    b = helper.make_tensor_value_info("raw", U8, [1, 8, 8, 3])
    q = helper.make_tensor_value_info("q", U8, [1, 3])
    mask = helper.make_tensor_value_info("mask", U8, [1, 8, 8, 3])
    inits = [_const(n, TensorProto.FLOAT if n[0] == "s" else U8, v, [], False)
             for n, v in [("s_in", 0.02), ("z_in", 3), ("s_out", 0.01), ("z_out", 5)]]  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["image", "s_in", "z_in"], ["f"]),
        helper.make_node("Cast", ["raw"], ["g"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "g"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("QuantizeLinear", ["m", "s_out", "z_out"], ["q"]),
        helper.make_node("Identity", ["raw"], ["mask"]),
    ]
    graph = helper.make_graph(nodes, "mixed", [a, b], [q, mask], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = _save(model, tmp_path / "mixed.onnx")
    got = read_onnx_quant(path)
    assert (got.inputs, got.outputs) == reference(path.read_bytes())
    rt = OnnxRuntime(path)
    assert [t.quant for t in rt.inputs] == [got.inputs["image"], None]
    assert [t.quant for t in rt.outputs] == [got.outputs["q"], None]


def _constant_model(z_in: list[str]) -> onnx.ModelProto:
    """Scales as ``Constant(value_float=...)``; the input zero point as ``Constant(value_int=3)``
    (``z_in == ["z_i64"]``), as its Cast (``["z_in"]``: computed) or absent (``[]``)."""
    x = helper.make_tensor_value_info("image", U8, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("q", U8, [1, 3])
    nodes = [
        helper.make_node("Constant", [], ["s_in"], value_float=0.02),
        helper.make_node("Constant", [], ["s_out"], value_float=0.01),
        helper.make_node("Constant", [], ["z_i64"], value_int=3),
        helper.make_node("Cast", ["z_i64"], ["z_in"], to=U8),
        helper.make_node("DequantizeLinear", ["image", "s_in", *z_in], ["f"]),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("QuantizeLinear", ["m", "s_out"], ["q"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "c", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model


def test_value_float_and_value_int_constants_are_read(tmp_path: Path) -> None:
    """``Constant`` nodes with ``value_float`` / ``value_int``: the former logic missed them and
    served raw integers; a zero point computed from one (a Cast) is not a constant."""
    path = _save(_constant_model([]), tmp_path / "c.onnx")
    assert reference(path.read_bytes()) == ({}, {})  # what the former logic saw
    got = read_onnx_quant(path)
    assert (got.inputs, got.outputs) == ({"image": (f32(0.02), 0)}, {"q": (f32(0.01), 0)})
    assert OnnxRuntime(path).outputs[0].quant == (f32(0.01), 0)

    with pytest.raises(BundleError, match=r"zero point 'z_in' is computed in the graph"):
        read_onnx_quant(_save(_constant_model(["z_in"]), tmp_path / "z.onnx"))
    # an int64 zero point does not pass the checker for a uint8 input, but the reader reads it
    i64 = _save(_constant_model(["z_i64"]), tmp_path / "i.onnx", check=False)
    assert read_onnx_quant(i64).inputs == {"image": (f32(0.02), 3)}


# -- external data ------------------------------------------------------------------------------


def _big_weight_model(raw: bool = False) -> onnx.ModelProto:
    """The quant model with a 3 KB float weight added after DequantizeLinear."""
    model = quant_model(raw=raw)
    w = numpy_helper.from_array(np.full((1, 16, 16, 3), 0.5, np.float32), "w")
    model.graph.initializer.append(w)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 16
    model.graph.node[0].output[0] = "f0"
    model.graph.node.insert(1, helper.make_node("Add", ["f0", "w"], ["f"]))
    return model


def test_external_weights_with_inline_params_work(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(_big_weight_model(), str(path), save_as_external_data=True, location="ext.bin",
                    size_threshold=1024)  # fmt: skip
    assert (tmp_path / "ext.bin").stat().st_size >= 3072  # the weight really is external
    got = read_onnx_quant(path)
    assert got.inputs == {"image": (f32(0.02), 3)}
    assert got.outputs == {"q": (f32(0.01), 5)}
    m = load_model(path)
    (raw,) = m.run_outputs(np.full((16, 16, 3), 53, np.uint8))  # 1.0 + 0.5 -> 150 + 5
    assert raw.tolist() == [[155, 155, 155]]
    assert m.infer(np.full((16, 16, 3), 53, np.uint8)).outputs[0]["max"] == pytest.approx(1.5, abs=1e-6)
    m.close()


def test_external_scale_is_bundle_error(tmp_path: Path) -> None:
    path = tmp_path / "ext0.onnx"
    onnx.save_model(_big_weight_model(raw=True), str(path), save_as_external_data=True,
                    location="ext0.bin", size_threshold=0)  # fmt: skip
    scale = next(
        t for t in onnx.load(str(path), load_external_data=False).graph.initializer if t.name == "s_in"
    )
    assert scale.data_location == TensorProto.EXTERNAL
    import onnxruntime as ort

    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime runs it as it is
    with pytest.raises(BundleError) as err:
        OnnxRuntime(path)
    msg = str(err.value)
    assert str(path) in msg and "'image'" in msg and "'s_in'" in msg and "external data" in msg
    assert "size_threshold" in msg


# -- quantised, but the parameters cannot be used: BundleError naming file, tensor, fix -----------


def _computed_scale_model() -> onnx.ModelProto:
    model = quant_model()
    model.graph.initializer.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
    model.graph.node.insert(0, helper.make_node("Mul", ["s_in0", "half"], ["s_in"]))
    model.graph.initializer[0].name = "s_in0"
    return model


def _per_axis_model() -> onnx.ModelProto:
    model = quant_model()
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.array([0.02, 0.03, 0.04], np.float32), "s_in")
    )
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([3, 3, 3], np.uint8), "z_in"))
    model.graph.node[0].attribute.append(helper.make_attribute("axis", 3))
    return model


def _two_params_model() -> onnx.ModelProto:
    model = quant_model()
    model.graph.initializer.append(helper.make_tensor("s_b", TensorProto.FLOAT, [], [0.04]))
    model.graph.node[0].output[0] = "f0"
    model.graph.node.insert(
        1, helper.make_node("DequantizeLinear", ["image", "s_b", "z_in"], ["f1"], name="dq2")
    )
    model.graph.node.insert(2, helper.make_node("Add", ["f0", "f1"], ["f"]))
    return model


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (_computed_scale_model, ["input 'image'", "node 'dq'", "scale 's_in' is computed in the graph"]),
        (_per_axis_model, ["input 'image'", "scale 's_in' has 3 values", "per-axis"]),
        (_two_params_model, ["input 'image'", "quantised twice with different parameters", "node 'dq2'"]),
    ],
    ids=["computed-scale", "per-axis", "two-different-params"],
)
def test_quantised_input_without_usable_params_is_bundle_error(
    tmp_path: Path, build: Any, words: list[str]
) -> None:
    path = _save(build(), tmp_path / "bad.onnx")
    ref = reference(path.read_bytes())  # the former logic: silently nothing (or the last node's guess)
    assert "image" not in ref[0] or build is _two_params_model
    with pytest.raises(BundleError) as err:
        OnnxRuntime(path)  # onnxruntime runs the model; edge-agent must not serve it with raw ints
    msg = str(err.value)
    assert str(path) in msg and all(w in msg for w in words), msg
    assert "export the model" in msg


def test_quantised_output_with_computed_scale_is_bundle_error(tmp_path: Path) -> None:
    model = quant_model()
    model.graph.initializer.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    model.graph.node.insert(0, helper.make_node("Mul", ["s_out0", "two"], ["s_out"]))
    model.graph.initializer[1].name = "s_out0"
    path = _save(model, tmp_path / "out.onnx")
    with pytest.raises(BundleError, match=r"model output 'q' is quantised \(QuantizeLinear node 'qo'\)"):
        OnnxRuntime(path)


# -- malformed bytes ----------------------------------------------------------------------------


def test_truncated_file_is_bundle_error(tmp_path: Path) -> None:
    data = quant_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(BundleError) as err:
        read_onnx_quant(path)
    assert str(path) in str(err.value) and "malformed" in str(err.value)
    assert "rebuild the model or fetch it again" in str(err.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x08", b"\x3a\x05abc", b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
     b"\x0b" * 100_000, b"\x0c", b"\x0f\x00", b"not an onnx model at all"],
    ids=["empty", "field-0", "cut-varint", "cut-graph", "long-varint", "deep-groups", "stray-end-group",
         "wire-7", "text"],
)  # fmt: skip
def test_malformed_bytes_are_bundle_errors(data: bytes) -> None:
    with pytest.raises(BundleError) as err:
        parse_onnx_quant(data, "bad/model.onnx")
    assert str(err.value).startswith("bad/model.onnx: ")


def test_missing_file_is_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read the model file"):
        read_onnx_quant(tmp_path / "nope.onnx")


def test_graph_not_matching_the_runtime_is_bundle_error(tmp_path: Path) -> None:
    from inference.onnx_runtime import _onnx_quant

    path = _save(quant_model(), tmp_path / "m.onnx")
    assert _onnx_quant(path, ["image"], ["q"])[0] == {"image": (f32(0.02), 3)}
    with pytest.raises(BundleError, match=r"reports inputs/outputs \['other'\]"):
        _onnx_quant(path, ["other"], ["q"])


def test_unknown_fields_groups_and_merged_messages_are_read_as_protobuf_does() -> None:
    """Unknown fields of every wire type (groups included) are skipped; a graph given in two pieces
    (a message field that occurs twice) is merged, as protobuf merges it."""
    model = quant_model(raw=True)
    data = model.SerializeToString()
    unknown = b"\xf8\x07\x2a" + b"\xfb\x07\x08\x01\x13\x10\x02\x14\xfc\x07" + b"\xfd\x07\x00\x00\x80\x3f"
    first = onnx.GraphProto()
    first.CopyFrom(model.graph)
    first.ClearField("output")
    second = onnx.GraphProto()
    second.output.extend(model.graph.output)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    piece1 = first.SerializeToString() + unknown
    piece2 = second.SerializeToString()
    split = (
        head.SerializeToString()
        + b"\x3a" + _len(len(piece1)) + piece1
        + unknown
        + b"\x3a" + _len(len(piece2)) + piece2
    )  # fmt: skip
    parsed = onnx.ModelProto.FromString(split)
    assert [o.name for o in parsed.graph.output] == ["q"] and len(parsed.graph.node) == 3
    got = parse_onnx_quant(split, "split.onnx")
    assert got.graph_outputs == ("q",)
    assert (got.inputs, got.outputs) == reference(split) == reference(data)
    assert got.outputs == {"q": (f32(0.01), 5)}


def _len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [
    quant_model().SerializeToString(),
    quant_model(raw=True, dims=[1]).SerializeToString(),
    quant_model(I8, (0.05, -4), (0.02, 1), constants=True).SerializeToString(),
]


def _fuzz_check(data: bytes) -> None:
    """BundleError naming the file, or the former logic's answer whenever protobuf can parse the bytes."""
    try:
        got = parse_onnx_quant(data, "fuzz/model.onnx")
    except BundleError as err:
        assert str(err).startswith("fuzz/model.onnx: ")
        return
    try:
        want = reference(data)
    except Exception:  # protobuf or numpy_helper cannot read it: nothing to compare with
        return
    assert (got.inputs, got.outputs) == want


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _fuzz_check(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_truncated_models(seed: bytes, draw: st.DataObject) -> None:
    _fuzz_check(seed[: draw.draw(st.integers(0, len(seed)))])


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_mutated_models(seed: bytes, draw: st.DataObject) -> None:
    data = bytearray(seed)
    for _ in range(draw.draw(st.integers(1, 3))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    _fuzz_check(bytes(data))


# -- on a device: no onnx package ---------------------------------------------------------------

NO_ONNX = r"""
import json, sys
sys.modules["onnx"] = None  # as on a device: `import onnx` fails
try:
    import onnx  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("onnx is importable")
from pathlib import Path
import numpy as np
from inference.errors import BundleError
from inference.model import load_model
from inference.runtime import load_runtime

good, bad = Path(sys.argv[1]), Path(sys.argv[2])
rt = load_runtime(good)
m = load_model(good)
frame = np.full((8, 8, 3), 53, np.uint8)
(raw,) = m.run_outputs(frame)
out = {
    "in": rt.inputs[0].quant, "out": rt.outputs[0].quant, "raw": raw.tolist(),
    "max": m.infer(frame).outputs[0]["max"],
}
try:
    load_runtime(bad)
except BundleError as exc:
    out["bad"] = str(exc)
assert sys.modules.get("onnx") is None
print(json.dumps(out))
"""


def test_works_without_the_onnx_package(tmp_path: Path) -> None:
    good = _save(quant_model(), tmp_path / "good.onnx")
    bad = _save(_computed_scale_model(), tmp_path / "bad.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", NO_ONNX, str(good), str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["in"] == [pytest.approx(0.02), 3] and out["out"] == [pytest.approx(0.01), 5]
    assert out["raw"] == [[105, 105, 105]]
    assert out["max"] == pytest.approx(1.0, abs=1e-6)  # dequantised: (105 - 5) * 0.01, not 105
    assert str(bad) in out["bad"] and "'s_in' is computed in the graph" in out["bad"]


# -- real models: the reader sees the same graph as onnx ------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize("name", ["ppocr-det", "ppocr-cls"])
def test_real_models_read_the_same_graph_as_onnx(zoo_model: Any, name: str) -> None:
    path = zoo_model(name)
    if path.suffix != ".onnx":
        pytest.skip(f"{name} is not an ONNX model")
    data = path.read_bytes()
    model = onnx.ModelProto.FromString(data)
    got = read_onnx_quant(path)
    assert got.graph_inputs == tuple(i.name for i in model.graph.input)
    assert got.graph_outputs == tuple(o.name for o in model.graph.output)
    assert (got.inputs, got.outputs) == reference(data)


def test_output_made_by_a_qlinear_operator_takes_its_output_params(tmp_path: Path) -> None:
    """QOperator format: a uint8 graph output made by QLinearMatMul is dequantised with the
    y_scale / y_zero_point that operator is given, not served as raw integers."""
    from onnx import TensorProto, helper, numpy_helper

    from inference.onnx_quant import read_onnx_quant

    def u8(name: str, v: int) -> Any:
        return numpy_helper.from_array(np.array(v, np.uint8), name)

    def f32(name: str, v: float) -> Any:
        return numpy_helper.from_array(np.array(v, np.float32), name)

    w = numpy_helper.from_array(np.full((3, 2), 7, np.uint8), "w")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]),
        ],
        "qop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2])],
        initializer=[
            f32("xs", 0.1),
            u8("xz", 10),
            w,
            f32("ws", 0.05),
            u8("wz", 3),
            f32("ys", 0.25),
            u8("yz", 4),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "qop.onnx"
    path.write_bytes(model.SerializeToString())
    q = read_onnx_quant(path)
    assert q.outputs == {"y": (0.25, 4)}
    assert q.inputs == {}

    bad = helper.make_graph(
        [helper.make_node("QLinearSomethingNew", ["x"], ["y"], domain="com.example")],
        "qop2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 3])],
    )
    model2 = helper.make_model(bad, opset_imports=[helper.make_opsetid("", 13)])
    path2 = tmp_path / "qop2.onnx"
    path2.write_bytes(model2.SerializeToString())
    with pytest.raises(BundleError, match="QLinearSomethingNew"):
        read_onnx_quant(path2)
