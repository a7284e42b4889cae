"""Yoton 2.2's OBJECT encoding, written and read without trusting the input.

Sans-IO. A value is one type byte and a body: ``n`` None, ``b`` bool (one
byte), ``i`` int (i64), ``f`` float (f64), ``s`` str (a count, then UTF-8),
``l`` list, ``t`` tuple (a count, then the items), ``d`` dict (a count, then
key and value pairs). A count is one byte below 255, else 255 and a u64. All
little-endian. Yoton has no bytes type and no ints beyond 64 bits: such values
raise :class:`~yotonnet.errors.MessageTypeError`. Decoding refuses nesting
deeper than :data:`MAX_DEPTH` and counts the payload cannot hold.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import DecodeError, MessageTypeError

MAX_DEPTH = 100
_B = struct.Struct("<B")
_Q = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def encode(value: Any) -> bytes:
    """Yoton OBJECT bytes of ``value``."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _count(n: int, out: bytearray) -> None:
    if n < 255:
        out.append(n)
    else:
        out.append(255)
        out += _Q.pack(n)


def _encode(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise MessageTypeError(f"value nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(ord("n"))
    elif isinstance(value, bool):
        out.append(ord("b"))
        out.append(1 if value else 0)
    elif isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise MessageTypeError(f"Yoton OBJECT ints are 64-bit; {value} does not fit")
        out.append(ord("i"))
        out += _I64.pack(value)
    elif isinstance(value, float):
        out.append(ord("f"))
        out += _F64.pack(value)
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise MessageTypeError(f"string is not encodable as UTF-8: {e}") from None
        out.append(ord("s"))
        _count(len(raw), out)
        out += raw
    elif isinstance(value, list | tuple):
        out.append(ord("l") if isinstance(value, list) else ord("t"))
        _count(len(value), out)
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out.append(ord("d"))
        _count(len(value), out)
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise MessageTypeError(
            f"Yoton OBJECT channels carry None, bool, int, float, str, list, tuple and dict, "
            f"not {type(value).__name__}"
        )


def decode(data: bytes) -> Any:
    """The value of Yoton OBJECT bytes (an empty payload is None, as in Yoton)."""
    if not data:
        return None
    view = memoryview(data)
    try:
        value, pos = _decode(view, 0, 0)
    except (IndexError, struct.error):
        raise DecodeError("Yoton OBJECT payload is truncated") from None
    if pos != len(view):
        raise DecodeError(f"{len(view) - pos} bytes left over after a Yoton OBJECT value")
    return value


def _read_count(view: memoryview, pos: int) -> tuple[int, int]:
    n = view[pos]
    pos += 1
    if n == 255:
        (n,) = _Q.unpack_from(view, pos)
        pos += 8
    return n, pos


def _decode(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise DecodeError(f"Yoton OBJECT value nests deeper than {MAX_DEPTH} levels")
    tag = view[pos]
    pos += 1
    if tag == 0x6E:  # n
        return None, pos
    if tag == 0x62:  # b
        return bool(view[pos]), pos + 1
    if tag == 0x69:  # i
        return _I64.unpack_from(view, pos)[0], pos + 8
    if tag == 0x66:  # f
        return _F64.unpack_from(view, pos)[0], pos + 8
    if tag == 0x73:  # s
        n, pos = _read_count(view, pos)
        if pos + n > len(view):
            raise DecodeError("Yoton OBJECT string is longer than its payload")
        try:
            return bytes(view[pos : pos + n]).decode("utf-8"), pos + n
        except UnicodeDecodeError as e:
            raise DecodeError(f"Yoton OBJECT string is not UTF-8: {e}") from None
    if tag in (0x6C, 0x74, 0x64):  # l t d
        n, pos = _read_count(view, pos)
        # Every item takes at least one byte: refuse a count the rest cannot hold.
        if n * (2 if tag == 0x64 else 1) > len(view) - pos:
            raise DecodeError(f"Yoton OBJECT container claims {n} items its payload cannot hold")
        if tag == 0x64:
            result: dict = {}
            for _ in range(n):
                key, pos = _decode(view, pos, depth + 1)
                try:
                    result[key], pos = _decode(view, pos, depth + 1)
                except TypeError:
                    raise DecodeError("Yoton OBJECT dict key is not hashable") from None
            return result, pos
        items = []
        for _ in range(n):
            item, pos = _decode(view, pos, depth + 1)
            items.append(item)
        return (items if tag == 0x6C else tuple(items)), pos
    raise DecodeError(f"unknown Yoton OBJECT type byte {tag:#04x}")
