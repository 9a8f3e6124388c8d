"""What a ``.tflite`` file says about itself: TFLite metadata and a detection post-processing op.

Read without TensorFlow or ``tflite-support``, with a small bounds-checked FlatBuffers reader:

- the ``TFLITE_METADATA`` buffer (schema ``metadata_schema.fbs``, identifier ``M001``): per input
  tensor its ``NormalizationOptions`` (``(x - mean) / std`` on pixel values) and ``Stats``
  (min/max of the input range); per output tensor the labels file it names
  (``TENSOR_AXIS_LABELS`` / ``TENSOR_VALUE_LABELS``), read from the zip archive that the
  metadata writer appends to the model file;
- the custom op ``TFLite_Detection_PostProcess`` (TF Object Detection API, EfficientDet-Lite):
  which graph outputs are its boxes, classes, scores and count.

Field numbers are those of tensorflow/lite/schema/schema.fbs (Model, SubGraph, Operator,
OperatorCode, Buffer, Metadata) and tflite_support's metadata_schema.fbs (ModelMetadata,
SubGraphMetadata, TensorMetadata, ProcessUnit, NormalizationOptions, Stats, AssociatedFile).
Every offset is checked against the buffer; malformed bytes raise ``BundleError``.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from inference.errors import BundleError

Buffer = bytes | mmap.mmap

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
METADATA_NAME = "TFLITE_METADATA"
MAX_LABELS_BYTES = 1 << 20
MAX_VECTOR = 1 << 20
# the metadata's own lists: a crafted file must not multiply them into gigabytes
MAX_TENSORS, MAX_UNITS, MAX_CHANNELS = 64, 16, 4
# metadata_schema.fbs enums
_NORMALIZATION_OPTIONS = 1
_AXIS_LABELS, _VALUE_LABELS = 2, 3


class _Bad(Exception):
    pass


class _FlatBuffer:
    """Bounds-checked access to FlatBuffers tables, vectors and strings in ``buf``."""

    def __init__(self, buf: Buffer, base: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.base = base
        self.end = len(buf) if end is None else end
        if not 0 <= self.base <= self.end <= len(buf):
            raise _Bad(f"a buffer [{self.base}, {self.end}) outside the file's {len(buf)} bytes")

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < self.base or pos + size > self.end:
            raise _Bad(f"offset {pos} outside the buffer")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def root(self) -> int:
        return self.base + self._u("<I", self.base)

    def _field(self, table: int, index: int) -> int:
        """The position of field ``index`` of ``table``, or 0 when it is absent."""
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return 0
        off = self._u("<H", vtable + slot)
        return table + off if off else 0

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self._field(table, index)
        return self._u(fmt, pos) if pos else default

    def _ref(self, table: int, index: int) -> int:
        pos = self._field(table, index)
        return pos + self._u("<I", pos) if pos else 0

    def table(self, table: int, index: int) -> int:
        return self._ref(table, index)

    def vector(self, table: int, index: int, limit: int = MAX_VECTOR) -> tuple[int, int]:
        """``(start of the elements, count)``; ``(0, 0)`` when absent; over ``limit`` is malformed."""
        pos = self._ref(table, index)
        if not pos:
            return 0, 0
        n = self._u("<I", pos)
        if n > limit:
            raise _Bad(f"a vector of {n} elements where at most {limit} make sense")
        return pos + 4, n

    def tables(self, table: int, index: int, limit: int = MAX_VECTOR) -> list[int]:
        start, n = self.vector(table, index, limit)
        return [start + 4 * i + self._u("<I", start + 4 * i) for i in range(n)]

    def ints(self, table: int, index: int, fmt: str = "<i") -> list[int]:
        start, n = self.vector(table, index)
        size = struct.calcsize(fmt)
        return [self._u(fmt, start + size * i) for i in range(n)]

    def floats(self, table: int, index: int, limit: int = MAX_VECTOR) -> list[float]:
        start, n = self.vector(table, index, limit)
        if n and start + 4 * n > self.end:
            raise _Bad("a float vector running past the end")
        return [float(x) for x in struct.unpack_from(f"<{n}f", self.buf, start)] if n else []

    def string(self, table: int, index: int) -> str:
        start, n = self.vector(table, index)
        if not start:
            return ""
        if start + n > self.end:
            raise _Bad("a string running past the end")
        return bytes(self.buf[start : start + n]).decode("utf-8", "replace")

    def bytes_at(self, start: int, n: int) -> bytes:
        if start < self.base or start + n > self.end:
            raise _Bad("bytes outside the buffer")
        return bytes(self.buf[start : start + n])


@dataclass(frozen=True)
class TensorMeta:
    """What the metadata says of one tensor."""

    name: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    min: tuple[float, ...] = ()
    max: tuple[float, ...] = ()
    labels_file: str = ""


@dataclass(frozen=True)
class TfliteInfo:
    """``inputs`` / ``outputs`` metadata in graph order (empty without metadata); ``labels`` by output
    index; ``postprocess`` the graph output index of each of boxes, classes, scores and count."""

    has_metadata: bool = False
    model_name: str = ""
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    labels: dict[int, list[str]] = field(default_factory=dict)
    postprocess: dict[str, int] | None = None
    num_classes: int | None = None  # the post-processing op's own option, when it says


def _tensor_meta(fb: _FlatBuffer, t: int) -> TensorMeta:
    mean: list[float] = []
    std: list[float] = []
    for unit in fb.tables(t, 4, MAX_UNITS):  # process_units
        if fb.scalar(unit, 0, "<B") == _NORMALIZATION_OPTIONS:
            opts = fb.table(unit, 1)
            if opts:
                mean, std = fb.floats(opts, 0, MAX_CHANNELS), fb.floats(opts, 1, MAX_CHANNELS)
    stats = fb.table(t, 5)
    lo = fb.floats(stats, 1, MAX_CHANNELS) if stats else []
    hi = fb.floats(stats, 0, MAX_CHANNELS) if stats else []
    labels = ""
    for f in fb.tables(t, 6, MAX_UNITS):  # associated_files
        if fb.scalar(f, 2, "<B") in (_AXIS_LABELS, _VALUE_LABELS) and not labels:
            labels = fb.string(f, 0)
    return TensorMeta(fb.string(t, 0), tuple(mean), tuple(std), tuple(lo), tuple(hi), labels)


def _metadata(fb: _FlatBuffer, model: int) -> tuple[int, int] | None:
    """The ``[start, end)`` of the TFLITE_METADATA buffer's bytes, if the model has one."""
    buffers = fb.tables(model, 4)
    for md in fb.tables(model, 6):
        if fb.string(md, 0) != METADATA_NAME:
            continue
        idx = fb.scalar(md, 1, "<I")
        if idx >= len(buffers):
            raise _Bad(f"metadata buffer {idx} of {len(buffers)}")
        buf = buffers[idx]
        start, n = fb.vector(buf, 0)
        if n:
            return start, start + n
        offset = fb.scalar(buf, 1, "<Q")  # models over 2 GB keep buffers after the flatbuffer
        size = fb.scalar(buf, 2, "<Q")
        if offset and size:
            return offset, offset + size
    return None


def _num_classes(options: bytes, origin: str) -> int | None:
    """``num_classes`` from the op's custom options (a FlexBuffers map), when it can be read."""
    try:
        from flatbuffers import flexbuffers  # LiteRT's own dependency
    except ImportError:  # pragma: no cover - tflite-runtime devices without the package
        return None
    if not options:
        return None
    try:  # one lazy key lookup: Loads would build the whole (untrusted, maybe recursive) value
        ref = flexbuffers.GetRoot(options).AsMap["num_classes"]
        value = ref.AsInt if ref.IsInt else None
    except KeyError:
        return None
    except (
        ValueError,
        IndexError,
        TypeError,
        AttributeError,
        struct.error,
        UnicodeDecodeError,
        RecursionError,
    ):
        raise BundleError(
            f"{origin}: the {POSTPROCESS_OP} op's options are malformed; convert the model again"
        ) from None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 100_000:
        return value
    return None


def _postprocess(
    fb: _FlatBuffer, model: int, graph: int, origin: str
) -> tuple[dict[str, int] | None, int | None]:
    """The graph output index of the op's boxes, classes, scores and count, and its ``num_classes``."""
    codes = fb.tables(model, 1)
    outputs = fb.ints(graph, 2)
    for op in fb.tables(graph, 3):
        idx = fb.scalar(op, 0, "<I")
        if idx >= len(codes) or fb.string(codes[idx], 1) != POSTPROCESS_OP:
            continue
        outs = fb.ints(op, 2)
        if len(outs) != 4 or not all(o in outputs for o in outs):
            return None, None
        names = ("boxes", "classes", "scores", "count")
        mapping = {k: outputs.index(o) for k, o in zip(names, outs, strict=True)}
        start, n = fb.vector(op, 5)  # custom_options
        return mapping, _num_classes(fb.bytes_at(start, n) if n else b"", origin)
    return None, None


def _labels(data: Buffer, names: dict[int, str], origin: str, path: Path | None) -> dict[int, list[str]]:
    """The labels files the metadata names, from the zip archive appended to the model (read from
    ``path`` when given: zipfile seeks, which an mmap cannot do on every Python)."""
    if not names:
        return {}
    try:
        zf = zipfile.ZipFile(path if path is not None else io.BytesIO(bytes(data)))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise BundleError(
            f"{origin}: the TFLite metadata names labels file(s) {sorted(set(names.values()))} but the model "
            "has no archive of associated files: write the metadata again with its labels file"
        ) from None
    out: dict[int, list[str]] = {}
    with zf:
        for index, name in names.items():
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise BundleError(
                    f"{origin}: the TFLite metadata names labels file {name!r}, which the model's "
                    "associated files do not hold: write the metadata again with that file"
                ) from None
            if info.file_size > MAX_LABELS_BYTES:
                raise BundleError(f"{origin}: labels file {name!r} is over {MAX_LABELS_BYTES} bytes")
            try:
                text = zf.read(info).decode("utf-8", "replace")
            except (
                zipfile.BadZipFile,
                NotImplementedError,
                RuntimeError,
                EOFError,
                zlib.error,
                OSError,
            ) as exc:
                raise BundleError(
                    f"{origin}: cannot read labels file {name!r} from the model's associated files "
                    f"({type(exc).__name__}: {exc}): write the metadata again"
                ) from None
            out[index] = [line.strip() for line in text.splitlines() if line.strip()]
    return out


def parse_tflite(data: Buffer, origin: str, path: Path | None = None) -> TfliteInfo:
    """What ``data`` (a whole .tflite file, read from ``path`` if given) says about itself;
    ``BundleError`` on malformed bytes."""
    try:
        fb = _FlatBuffer(data)
        model = fb.root()
        graphs = fb.tables(model, 2)
        if not graphs:
            raise _Bad("no subgraph")
        post, num_classes = _postprocess(fb, model, graphs[0], origin)
        span = _metadata(fb, model)
        if span is None:
            return TfliteInfo(postprocess=post, num_classes=num_classes)
        mfb = _FlatBuffer(data, span[0], span[1])
        meta = mfb.root()
        sub = mfb.tables(meta, 3)
        ins = tuple(_tensor_meta(mfb, t) for t in mfb.tables(sub[0], 2, MAX_TENSORS)) if sub else ()
        outs = tuple(_tensor_meta(mfb, t) for t in mfb.tables(sub[0], 3, MAX_TENSORS)) if sub else ()
        name = mfb.string(meta, 0)
    except _Bad as exc:
        raise BundleError(
            f"{origin}: the .tflite file is malformed ({exc}); it is corrupt or truncated: "
            "convert the model again"
        ) from None
    labels = _labels(data, {i: o.labels_file for i, o in enumerate(outs) if o.labels_file}, origin, path)
    return TfliteInfo(True, name, ins, outs, labels, post, num_classes)


def read_tflite_info(path: Path) -> TfliteInfo:
    """``parse_tflite`` of a model file, memory-mapped."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 8:
                raise BundleError(f"{path}: too short to be a .tflite model: convert the model again")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return parse_tflite(mm, str(path), Path(path))
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the model file ({exc}): check the path and permissions"
        ) from exc
