"""An ONNX model's ``metadata_props`` (the key/value strings its exporter wrote), read from the file.

Ultralytics writes ``task``, ``names``, ``imgsz``, ``stride``, ...; PaddleOCR exports carry the
CTC character table as ``character``. Read without the ``onnx`` package (a device does not
install it) and without a session: only the top level of the ``ModelProto`` is walked
(``metadata_props`` is field 14, each a ``StringStringEntryProto`` of key 1 and value 2); the
graph is skipped unread, the file is memory-mapped. Bounded: at most ``MAX_ENTRIES`` entries
of at most ``MAX_VALUE_BYTES`` each; beyond that, or on malformed bytes, ``BundleError``.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from inference.errors import BundleError
from inference.protobuf_wire import Buffer, Malformed, fields, text

METADATA_PROPS = 14
MAX_ENTRIES = 256
MAX_VALUE_BYTES = 1 << 20


def parse_onnx_metadata(buf: Buffer, origin: str) -> dict[str, str]:
    """The ``metadata_props`` of a serialised ``ModelProto``; ``origin`` is named in errors."""
    out: dict[str, str] = {}
    try:
        for num, wire, a, b in fields(buf, [(0, len(buf))]):
            if num != METADATA_PROPS or wire != 2:
                continue
            if len(out) >= MAX_ENTRIES:
                raise BundleError(
                    f"{origin}: more than {MAX_ENTRIES} metadata entries; this is not an exporter's "
                    "metadata: strip it from the model"
                )
            key = value = ""
            for n2, w2, a2, b2 in fields(buf, [(a, b)]):
                if w2 != 2:
                    continue
                if b2 - a2 > MAX_VALUE_BYTES:
                    raise BundleError(
                        f"{origin}: a metadata entry of {b2 - a2} bytes is over the {MAX_VALUE_BYTES}-byte "
                        "limit: strip it from the model"
                    )
                if n2 == 1:
                    key = text(buf, a2, b2)
                elif n2 == 2:
                    value = text(buf, a2, b2)
            if key:
                out[key] = value
    except Malformed as exc:
        raise BundleError(
            f"{origin}: the ONNX file is malformed ({exc.detail} at byte {exc.pos}); it is corrupt "
            "or truncated: export the model again"
        ) from None
    return out


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """``parse_onnx_metadata`` of a model file, memory-mapped."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return {}
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return parse_onnx_metadata(mm, str(path))
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the model file ({exc}): check the path and permissions"
        ) from exc
