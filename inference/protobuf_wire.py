"""The protobuf wire format, read without the ``protobuf`` package: just what the ONNX readers need.

``fields(buf, spans)`` walks one message's fields (``(number, wire type, a, b)``); groups are
skipped with an explicit stack (no recursion) and every length is checked against its message's
end, so malformed or hostile bytes raise ``Malformed`` (with the byte position), never read past
the buffer. Used by inference/onnx_quant.py and inference/onnx_metadata.py.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

Buffer = bytes | mmap.mmap
_Span = tuple[int, int]  # [start, end) of a length-delimited field's payload
U64 = (1 << 64) - 1


class Malformed(Exception):
    """The bytes are not a valid protobuf encoding (internal; becomes a ``BundleError``)."""

    def __init__(self, detail: str, pos: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.pos = pos


def varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """One base-128 varint at ``pos`` (at most 10 bytes, kept to 64 bits): ``(value, next pos)``."""
    if pos < end:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
    result = 0
    shift = 0
    start = pos
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & U64, pos
        shift += 7
        if shift >= 70:
            raise Malformed("a varint longer than 10 bytes", start)
    raise Malformed("a varint cut short", start)


def skip_group(buf: Buffer, pos: int, end: int, number: int) -> int:
    """Skip a (deprecated) group up to its matching end-group tag, with a stack, not recursion."""
    stack = [number]
    while stack:
        key, pos = varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = varint(buf, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            n, pos = varint(buf, pos, end)
            pos += n
        elif wire == 3:
            stack.append(num)
        elif wire == 4:
            if stack.pop() != num:
                raise Malformed(f"an end-group tag for field {num} inside another group", pos)
        else:
            raise Malformed(f"wire type {wire}", pos)
        if pos > end:
            raise Malformed("a group running past the end of its message", pos)
    return pos


def fields(buf: Buffer, spans: list[_Span]) -> Iterator[tuple[int, int, int, int]]:
    """The fields of one message, possibly given as several spans (a message field that occurs
    more than once is merged, which is parsing the spans in order): ``(number, wire type, a, b)``
    with ``a`` the value for a varint, else ``[a, b)`` the payload. Groups are skipped."""
    for start, end in spans:
        pos = start
        while pos < end:
            tag_at = pos
            key, pos = varint(buf, pos, end)
            num, wire = key >> 3, key & 7
            if num == 0 or key > 0xFFFFFFFF:
                raise Malformed(f"an invalid field tag {key}", tag_at)
            if wire == 0:
                value, pos = varint(buf, pos, end)
                yield num, 0, value, pos
            elif wire == 2:
                n, p = varint(buf, pos, end)
                if n > end - p:
                    raise Malformed(f"field {num} of {n} bytes running past the end of its message", tag_at)
                pos = p + n
                yield num, 2, p, pos
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if size > end - pos:
                    raise Malformed(f"field {num} cut short", tag_at)
                yield num, wire, pos, pos + size
                pos += size
            elif wire == 3:
                pos = skip_group(buf, pos, end, num)
            else:
                raise Malformed(f"wire type {wire} (field {num})", tag_at)


def text(buf: Buffer, a: int, b: int) -> str:
    return buf[a:b].decode("utf-8", "surrogateescape")
