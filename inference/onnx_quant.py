"""Quantisation parameters of an ONNX model's inputs and outputs, read without the ``onnx`` package.

A device installs numpy and onnxruntime, not ``onnx``, and onnxruntime does not report the scale
and zero point of a quantised (uint8/int8) input or output. They are read here from the model
file with a small reader of the protobuf wire format, restricted to what is needed::

    ModelProto.graph (7) -> GraphProto: node (1), initializer (5), input (11), output (12)
    NodeProto: input (1), output (2), name (3), op_type (4), attribute (5)
    AttributeProto: name (1), f (2), i (3), t (5)
    ValueInfoProto: name (1)
    TensorProto: dims (1), data_type (2), segment (3), float_data (4), int32_data (5),
                 int64_data (7), name (8), raw_data (9), double_data (10), uint64_data (11),
                 data_location (14)

(field numbers from onnx/onnx.proto). A graph input that feeds a ``DequantizeLinear`` node is
quantised with that node's scale and zero point; so is a graph output made by a
``QuantizeLinear`` node. Those two parameters must be constant per-tensor values held in the
model file (initializers or ``Constant`` nodes, scalars or one-element tensors, as raw bytes or
typed fields). A graph output made directly by a quantised operator (``QLinearConv``,
``QLinearMatMul``, ...: the QOperator format) takes the scale and zero point that operator
is given for its output; an unknown ``QLinear*`` operator is an error. When they are not
usable, or the file is malformed, the reader raises ``BundleError``
naming the file, the tensor and the fix: a model is never served with integers its decoder
would take for floats. A model with no such node (a float model, or a uint8 image input that the
graph casts itself) has no quantisation parameters: empty maps.

Bounds: the file is memory-mapped (no copy of the weights), at most ``MAX_MODEL_BYTES`` (the
protobuf limit; larger models keep their weights as external data, which is never read: a
needed scale or zero point stored externally is an error). There is no recursion: the nesting
is fixed (model, graph, node, attribute, tensor), subgraphs are skipped unread, and unknown
groups are skipped with an explicit stack. Every length is checked against its message's end.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import BundleError
from inference.protobuf_wire import Buffer
from inference.protobuf_wire import Malformed as _Malformed
from inference.protobuf_wire import fields as _fields
from inference.protobuf_wire import text as _text
from inference.protobuf_wire import varint as _varint

QuantMap = dict[str, tuple[float, int]]

MAX_MODEL_BYTES = 2**31  # a protobuf message cannot be larger
_Span = tuple[int, int]  # [start, end) of a length-delimited field's payload
_Item = tuple[int, int, int]  # one occurrence of a repeated numeric field: (wire type, a, b)

# TensorProto.DataType -> (name, little-endian numpy dtype of raw_data, field of typed values)
_TYPES: dict[int, tuple[str, str, int]] = {
    1: ("float32", "<f4", 4),
    2: ("uint8", "u1", 5),
    3: ("int8", "i1", 5),
    4: ("uint16", "<u2", 5),
    5: ("int16", "<i2", 5),
    6: ("int32", "<i4", 5),
    7: ("int64", "<i8", 7),
    10: ("float16", "<f2", 5),
    11: ("float64", "<f8", 10),
    12: ("uint32", "<u4", 11),
    13: ("uint64", "<u8", 11),
    16: ("bfloat16", "<u2", 5),
}
_BFLOAT16 = 16


class _Unusable(Exception):
    """A needed scale or zero point exists but cannot be used; ``str`` says why (internal)."""


@dataclass(frozen=True)
class OnnxQuant:
    """What the reader found: ``(scale, zero_point)`` by quantised graph input and output name,
    and the names of all graph inputs and outputs (for a cross-check with the runtime)."""

    inputs: QuantMap
    outputs: QuantMap
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _varints(buf: Buffer, items: list[_Item], limit: int) -> list[int]:
    """A repeated varint field, packed or not; stops after ``limit`` values."""
    out: list[int] = []
    for wire, a, b in items:
        if wire == 0:
            out.append(a)
        else:
            pos = a
            while pos < b and len(out) <= limit:
                v, pos = _varint(buf, pos, b)
                out.append(v)
        if len(out) > limit:
            break
    return out


def _fixed(buf: Buffer, items: list[_Item], size: int, limit: int) -> list[float]:
    """A repeated float (size 4) or double (size 8) field, packed or not; stops after ``limit``."""
    fmt = "<f" if size == 4 else "<d"
    out: list[float] = []
    for wire, a, b in items:
        if wire != 2:
            out.append(struct.unpack_from(fmt, buf, a)[0])
        else:
            if (b - a) % size:
                raise _Malformed(f"packed values of {b - a} bytes, not a multiple of {size}", a)
            n = min((b - a) // size, limit + 1 - len(out))
            out.extend(struct.unpack_from(f"<{n}{fmt[1]}", buf, a))
        if len(out) > limit:
            break
    return out


# -- tensors ------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str = ""
    dims: list[_Item] = field(default_factory=list)
    data_type: int = 0
    segment: bool = False
    external: bool = False
    raw: _Span | None = None
    typed: dict[int, list[_Item]] = field(default_factory=dict)
    at: int = 0


_TYPED_WIRES = {4: (2, 5), 5: (0, 2), 7: (0, 2), 10: (1, 2), 11: (0, 2)}


def _tensor(buf: Buffer, spans: list[_Span]) -> _Tensor:
    t = _Tensor(at=spans[0][0] if spans else 0)
    for num, wire, a, b in _fields(buf, spans):
        if num == 8 and wire == 2:
            t.name = _text(buf, a, b)
        elif num == 1 and wire in (0, 2):
            t.dims.append((wire, a, b))
        elif num == 2 and wire == 0:
            t.data_type = _signed(a, 32)
        elif num == 3 and wire == 2:
            t.segment = True
        elif num == 9 and wire == 2:
            t.raw = (a, b)
        elif num == 14 and wire == 0:
            t.external = a == 1  # DataLocation.EXTERNAL
        elif num in _TYPED_WIRES and wire in _TYPED_WIRES[num]:
            t.typed.setdefault(num, []).append((wire, a, b))
    return t


def _scalar(buf: Buffer, t: _Tensor) -> float | int:
    """The one value of a scalar or one-element tensor held in the file."""
    if t.external:
        raise _Unusable(
            "is stored as external data, which edge-agent does not read for quantisation parameters "
            "(keep small tensors inside the model file, e.g. onnx.save(..., size_threshold=1024))"
        )
    if t.segment:
        raise _Unusable("is a segment of a larger tensor, which edge-agent does not read")
    if t.data_type not in _TYPES:
        raise _Unusable(f"has data type {t.data_type}, not a number type edge-agent reads")
    name, raw_dtype, typed_field = _TYPES[t.data_type]
    dims = [_signed(d, 64) for d in _varints(buf, t.dims, 64)]
    if len(dims) > 64 or any(d < 0 for d in dims):
        raise _Malformed(f"tensor {t.name!r} with dims {dims[:64]}", t.at)
    count = math.prod(dims)
    if count != 1:
        raise _Unusable(
            f"has {count} values (shape {dims}), not one per-tensor value: per-axis quantisation "
            "of a model input or output is not supported"
        )
    itemsize = np.dtype(raw_dtype).itemsize
    arr: npt.NDArray[Any]
    if t.raw is not None:
        raw = buf[t.raw[0] : t.raw[1]]
        if len(raw) != itemsize:
            raise _Malformed(f"tensor {t.name!r}: raw_data of {len(raw)} bytes for one {name} value", t.at)
        arr = np.frombuffer(raw, dtype=raw_dtype)
    else:  # the typed field, read as onnx.numpy_helper.to_array reads it
        items = t.typed.get(typed_field, [])
        if typed_field == 4:
            arr = np.asarray(_fixed(buf, items, 4, 1), np.float32)
        elif typed_field == 10:
            arr = np.asarray(_fixed(buf, items, 8, 1), np.float64)
        elif typed_field == 5:  # int32 storage; 16-bit types keep their bits in the low half
            i32 = np.asarray([_signed(v, 32) for v in _varints(buf, items, 1)], np.int32)
            arr = (
                i32.view(np.uint32).astype(np.uint16).view(raw_dtype)
                if itemsize == 2
                else i32.astype(raw_dtype)
            )
        elif typed_field == 7:
            arr = np.asarray([_signed(v, 64) for v in _varints(buf, items, 1)], np.int64)
        else:
            arr = np.asarray(_varints(buf, items, 1), np.uint64).astype(raw_dtype)
        if arr.size != 1:
            raise _Malformed(f"tensor {t.name!r}: {arr.size} {name} values for shape {dims}", t.at)
    if t.data_type == _BFLOAT16:  # the upper half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    value: float | int = arr.reshape(-1)[0].item()
    return value


# -- the graph ----------------------------------------------------------------------------------


@dataclass
class _Node:
    index: int
    name: str
    inputs: list[str]
    outputs: list[str]


_Const = list[_Span] | float | int  # a tensor message (its spans) or a Constant's scalar attribute


def _constant_value(buf: Buffer, attrs: list[_Span]) -> _Const | None:
    """The value of a ``Constant`` node: its ``value`` tensor, ``value_float`` or ``value_int``."""
    value: _Const | None = None
    for span in attrs:
        name, t_spans, f, i = "", [], None, None
        for num, wire, a, b in _fields(buf, [span]):
            if num == 1 and wire == 2:
                name = _text(buf, a, b)
            elif num == 5 and wire == 2:
                t_spans.append((a, b))
            elif num == 2 and wire == 5:
                f = float(np.float32(struct.unpack_from("<f", buf, a)[0]))
            elif num == 3 and wire == 0:
                i = _signed(a, 64)
        if name == "value":
            value = t_spans
        elif name == "value_float" and f is not None:
            value = f
        elif name == "value_int" and i is not None:
            value = i
    return value


def _graph(buf: Buffer, spans: list[_Span]) -> tuple[
    list[str], list[str], dict[str, _Const], list[_Node], list[_Node]
]:  # fmt: skip
    inputs: list[str] = []
    outputs: list[str] = []
    inits: dict[str, _Const] = {}
    constants: list[tuple[str, _Const]] = []
    dq: list[_Node] = []
    q: list[_Node] = []
    index = 0
    for num, wire, a, b in _fields(buf, spans):
        if wire != 2:
            continue
        if num == 1:  # node
            op, name = "", ""
            ins: list[_Span] = []
            outs: list[_Span] = []
            attrs: list[_Span] = []
            for n, w, c, d in _fields(buf, [(a, b)]):
                if w != 2:
                    continue
                if n == 1:
                    ins.append((c, d))
                elif n == 2:
                    outs.append((c, d))
                elif n == 3:
                    name = _text(buf, c, d)
                elif n == 4:
                    op = _text(buf, c, d)
                elif n == 5:
                    attrs.append((c, d))
            if op in ("DequantizeLinear", "QuantizeLinear"):
                node = _Node(index, name, [_text(buf, *s) for s in ins], [_text(buf, *s) for s in outs])
                (dq if op == "DequantizeLinear" else q).append(node)
            elif op.startswith("QLinear") and outs:
                # a quantised operator (QOperator format): its output's scale and zero point are
                # two of its inputs; seen as a QuantizeLinear with (output, scale, zero point)
                ins_t = [_text(buf, *s) for s in ins]
                where = QLINEAR_OUTPUT_PARAMS.get(op)
                node_name = name or f"#{index}"
                if where is None:
                    q.append(_Node(index, f"{node_name} ({op}, unknown)", [], [_text(buf, *outs[0])]))
                else:
                    si, zi = where
                    params = [ins_t[si] if si < len(ins_t) else "", ins_t[zi] if zi < len(ins_t) else ""]
                    q.append(_Node(index, f"{node_name} ({op})", ["", *params], [_text(buf, *outs[0])]))
            elif op == "Constant" and outs:
                value = _constant_value(buf, attrs)
                if value is not None:
                    constants.append((_text(buf, *outs[0]), value))
            index += 1
        elif num == 5:  # initializer
            t = _tensor(buf, [(a, b)])
            inits[t.name] = [(a, b)]
        elif num in (11, 12):  # input, output: ValueInfoProto.name
            vname = ""
            for n, w, c, d in _fields(buf, [(a, b)]):
                if n == 1 and w == 2:
                    vname = _text(buf, c, d)
            (inputs if num == 11 else outputs).append(vname)
    consts = dict(inits)
    consts.update(constants)  # a Constant node's output shadows an initializer of that name
    return inputs, outputs, consts, dq, q


#: the input positions of the output's scale and zero point, per quantised operator
QLINEAR_OUTPUT_PARAMS: dict[str, tuple[int, int]] = {
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearConcat": (0, 1),
}


def _params(buf: Buffer, node: _Node, consts: dict[str, _Const]) -> tuple[float, int]:
    if len(node.inputs) < 2 or not node.inputs[1]:
        raise _Unusable("the node has no scale input")

    def value(what: str, tensor: str) -> float | int:
        const = consts.get(tensor)
        if const is None:
            raise _Unusable(
                f"its {what} {tensor!r} is computed in the graph, not an initializer or Constant node"
            )
        if not isinstance(const, list):
            return const
        try:
            return _scalar(buf, _tensor(buf, const))
        except _Unusable as exc:
            raise _Unusable(f"its {what} {tensor!r} {exc}") from None

    scale = float(value("scale", node.inputs[1]))
    zp = value("zero point", node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else 0
    if isinstance(zp, float) and not math.isfinite(zp):
        raise _Unusable(f"its zero point {node.inputs[2]!r} is {zp}")
    return scale, int(zp)


def _model_quant(buf: Buffer, origin: str) -> OnnxQuant:
    graph = [(a, b) for num, wire, a, b in _fields(buf, [(0, len(buf))]) if num == 7 and wire == 2]
    if not graph:
        raise BundleError(
            f"{origin}: no graph in this file, so it is not an ONNX model (or it is empty); "
            "rebuild the model or fetch it again"
        )
    inputs, outputs, consts, dq, q = _graph(buf, graph)
    qin: QuantMap = {}
    qout: QuantMap = {}
    in_set, out_set = set(inputs), set(outputs)
    for role, nodes, found, names in (("input", dq, qin, in_set), ("output", q, qout, out_set)):
        for node in nodes:
            tensor = (node.inputs if role == "input" else node.outputs)[:1]
            if not tensor or tensor[0] not in names:
                continue
            op = "DequantizeLinear" if role == "input" else "QuantizeLinear"
            what = f"node {node.name!r}" if node.name else f"node #{node.index}"
            try:
                p = _params(buf, node, consts)
            except _Unusable as exc:
                raise BundleError(
                    f"{origin}: model {role} {tensor[0]!r} is quantised ({op} {what}) but {exc}; "
                    "edge-agent needs its scale and zero point to "
                    + ("quantise frames for it" if role == "input" else "dequantise it for the decoder")
                    + ": export the model with constant per-tensor scale and zero point for its quantised "
                    "inputs and outputs (initializers or Constant nodes inside the model file), "
                    "or serve a float model"
                ) from None
            if found.get(tensor[0], p) != p:
                raise BundleError(
                    f"{origin}: model {role} {tensor[0]!r} is quantised twice with different parameters "
                    f"({found[tensor[0]]} and {p}, {op} {what}); edge-agent cannot tell which one holds: "
                    "export the model with one scale and zero point per quantised input and output"
                )
            found[tensor[0]] = p
    return OnnxQuant(qin, qout, tuple(inputs), tuple(outputs))


# -- entry points -------------------------------------------------------------------------------


def _too_big(origin: str, size: int) -> str:
    return (
        f"{origin}: {size} bytes is larger than an ONNX protobuf can be ({MAX_MODEL_BYTES} bytes); "
        "export the model with its weights as external data"
    )


def parse_onnx_quant(data: Buffer, origin: str) -> OnnxQuant:
    """The quantisation parameters of a serialised ``ModelProto``; ``origin`` (the file) is named
    in every error. Raises ``BundleError`` for malformed bytes and for a quantised input or output
    whose parameters cannot be read."""
    if len(data) > MAX_MODEL_BYTES:
        raise BundleError(_too_big(origin, len(data)))
    try:
        return _model_quant(data, origin)
    except _Malformed as exc:
        raise BundleError(
            f"{origin}: cannot read the model's quantisation parameters: the ONNX file is malformed "
            f"({exc.detail} at byte {exc.pos}); the file is corrupt or truncated: rebuild the model "
            "or fetch it again"
        ) from None


def read_onnx_quant(path: Path) -> OnnxQuant:
    """``parse_onnx_quant`` of a model file, memory-mapped (the weights are not copied)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:  # mmap cannot map an empty file
                return parse_onnx_quant(b"", str(path))
            if size > MAX_MODEL_BYTES:
                raise BundleError(_too_big(str(path), size))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return parse_onnx_quant(mm, str(path))
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the model file ({exc}): check the path and permissions"
        ) from exc
