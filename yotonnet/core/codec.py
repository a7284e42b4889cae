"""The OBJECT encoding: a safe, tagged binary form of plain Python values.

Sans-IO. One tag byte, then a body; containers give their item count first.
No pickle and no eval: decoding builds only None, bool, int, float, str,
bytes, list, tuple and dict, refuses nesting deeper than :data:`MAX_DEPTH`
and refuses item counts the payload cannot hold before allocating anything.

Both directions go through tables indexed by type (encoding) or tag byte
(decoding) rather than a chain of tests, because this codec sits on the
request/reply hot path: a call costs one encode and one decode each way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..errors import DecodeError, MessageTypeError

__all__ = [
    "MAX_DEPTH",
    "DecodeError",
    "ItemLimitError",
    "MessageTypeError",
    "encode_object",
    "decode_object",
    "encode_values",
    "decode_values",
]

#: containers may nest at most this deep, in either direction
MAX_DEPTH = 100


class ItemLimitError(DecodeError):
    """A payload holds more values than the ``max_items`` its decoder was given."""

    def __init__(self, max_items: int) -> None:
        super().__init__(f"OBJECT payload holds more than {max_items} values")
        self.max_items = max_items


_NONE, _TRUE, _FALSE, _INT, _BIGINT, _FLOAT, _STR, _BYTES, _LIST, _TUPLE, _DICT = b"NTFiIdsblta"
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_TAG_U32 = struct.Struct("<BI")
_TAG_I64 = struct.Struct("<Bq")
_TAG_F64 = struct.Struct("<Bd")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

Encoder = Callable[[Any, bytearray, int], None]


def encode_object(value: Any) -> bytes:
    """Encode ``value``; raises :class:`MessageTypeError` for anything not plain data."""
    t = type(value)
    if t is bytes:
        # The commonest payload, without a bytearray round trip.
        return _TAG_U32.pack(_BYTES, len(value)) + value
    out = bytearray()
    encoder = _ENCODERS.get(t)
    if encoder is None:
        _refuse(value)
    encoder(value, out, 0)
    return bytes(out)


def _refuse(value: Any) -> None:
    raise MessageTypeError(
        f"OBJECT channels cannot send {type(value).__name__}; use None, bool, int, float, "
        "str, bytes, list, tuple or dict, or register a custom message type"
    )


def _enc_none(value: Any, out: bytearray, depth: int) -> None:
    out.append(_NONE)


def _enc_bool(value: bool, out: bytearray, depth: int) -> None:
    out.append(_TRUE if value else _FALSE)


def _enc_int(value: int, out: bytearray, depth: int) -> None:
    if _INT_MIN <= value <= _INT_MAX:
        out += _TAG_I64.pack(_INT, value)
    else:
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        out += _TAG_U32.pack(_BIGINT, len(raw))
        out += raw


def _enc_float(value: float, out: bytearray, depth: int) -> None:
    out += _TAG_F64.pack(_FLOAT, value)


def _enc_str(value: str, out: bytearray, depth: int) -> None:
    raw = value.encode("utf-8", "surrogatepass")
    out += _TAG_U32.pack(_STR, len(raw))
    out += raw


def _enc_bytes(value: bytes | bytearray, out: bytearray, depth: int) -> None:
    out += _TAG_U32.pack(_BYTES, len(value))
    out += value


def _enc_sequence(value: list | tuple, out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise MessageTypeError(f"OBJECT values may nest at most {MAX_DEPTH} levels")
    out += _TAG_U32.pack(_LIST if type(value) is list else _TUPLE, len(value))
    encoders = _ENCODERS
    depth += 1
    for item in value:
        encoder = encoders.get(type(item))
        if encoder is None:
            _refuse(item)
        encoder(item, out, depth)


def _enc_dict(value: dict, out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise MessageTypeError(f"OBJECT values may nest at most {MAX_DEPTH} levels")
    out += _TAG_U32.pack(_DICT, len(value))
    encoders = _ENCODERS
    depth += 1
    for k, v in value.items():
        encoder = encoders.get(type(k))
        if encoder is None:
            _refuse(k)
        encoder(k, out, depth)
        encoder = encoders.get(type(v))
        if encoder is None:
            _refuse(v)
        encoder(v, out, depth)


# Exact types only: a subclass (an IntEnum, a namedtuple...) would not come back as itself.
_ENCODERS: dict[type, Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    list: _enc_sequence,
    tuple: _enc_sequence,
    dict: _enc_dict,
}


def decode_object(data: bytes, max_items: int | None = None) -> Any:
    """Decode a whole payload; raises :class:`DecodeError` if it is not exactly one value.

    With ``max_items``, at most that many values are built, containers and the
    top value included (a dict's keys and values count one each); a payload
    holding more raises :class:`ItemLimitError`, and since containers give
    their counts first, it is refused before their items are built. Without
    it, the only bounds are the payload's size and :data:`MAX_DEPTH`.
    """
    if max_items is not None:
        return _decode_bounded(data, max_items)
    n = len(data)
    if n >= 5 and data[0] == _BYTES:
        # The commonest payload: a single bytes value, sliced without a memoryview.
        if _U32.unpack_from(data, 1)[0] == n - 5:
            return data[5:]
    view = memoryview(data)
    try:
        decoder = _DECODERS[view[0]]
        value, pos = decoder(view, 1, 0)
    except (struct.error, IndexError):
        raise DecodeError("OBJECT payload is truncated") from None
    if pos != n:
        raise DecodeError(f"OBJECT payload has {n - pos} trailing bytes")
    return value


def _decode_bounded(data: bytes, max_items: int) -> Any:
    """:func:`decode_object` with an item budget (kept apart: the hot path pays nothing)."""
    view = memoryview(data)
    n = len(data)
    left = max_items - 1  # the top value
    if left < 0:
        raise ItemLimitError(max_items)
    decoders = _DECODERS

    def take(pos: int, depth: int, per_item: int) -> int:
        # Charged at the container's count, before any of its items is built.
        nonlocal left
        count = _count(view, pos, depth)
        left -= count * per_item
        if left < 0:
            raise ItemLimitError(max_items)
        return count

    def value(pos: int, depth: int) -> tuple[Any, int]:
        tag = view[pos]
        if tag == _LIST or tag == _TUPLE:
            count = take(pos + 1, depth, 1)
            pos += 5
            items = []
            for _ in range(count):
                item, pos = value(pos, depth + 1)
                items.append(item)
            return (items if tag == _LIST else tuple(items)), pos
        if tag == _DICT:
            count = take(pos + 1, depth, 2)
            pos += 5
            d: dict[Any, Any] = {}
            for _ in range(count):
                k, pos = value(pos, depth + 1)
                v, pos = value(pos, depth + 1)
                try:
                    d[k] = v
                except TypeError:
                    raise DecodeError(f"OBJECT dict key of type {type(k).__name__}") from None
            return d, pos
        return decoders[tag](view, pos + 1, depth)

    try:
        result, pos = value(0, 0)
    except (struct.error, IndexError):
        raise DecodeError("OBJECT payload is truncated") from None
    if pos != n:
        raise DecodeError(f"OBJECT payload has {n - pos} trailing bytes")
    return result


def _dec_unknown(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    raise DecodeError(f"OBJECT payload has unknown tag byte {view[pos - 1]:#04x}")


def _dec_none(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    return None, pos


def _dec_true(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    return True, pos


def _dec_false(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    return False, pos


def _dec_int(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    return _I64.unpack_from(view, pos)[0], pos + 8


def _dec_float(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    return _F64.unpack_from(view, pos)[0], pos + 8


def _sized(view: memoryview, pos: int) -> tuple[memoryview, int]:
    (n,) = _U32.unpack_from(view, pos)
    pos += 4
    end = pos + n
    if end > len(view):
        raise DecodeError("OBJECT payload is truncated")
    return view[pos:end], end


def _dec_bigint(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    raw, end = _sized(view, pos)
    return int.from_bytes(raw, "little", signed=True), end


def _dec_str(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    raw, end = _sized(view, pos)
    try:
        return str(raw, "utf-8", "surrogatepass"), end
    except UnicodeDecodeError:
        raise DecodeError("OBJECT string is not UTF-8") from None


def _dec_bytes(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    raw, end = _sized(view, pos)
    return bytes(raw), end


def _count(view: memoryview, pos: int, depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise DecodeError(f"OBJECT payload nests deeper than {MAX_DEPTH} levels")
    (n,) = _U32.unpack_from(view, pos)
    # Every item takes at least one byte: refuse counts the payload cannot hold
    # before allocating anything for them.
    if n > len(view) - pos - 4:
        raise DecodeError("OBJECT container count exceeds the payload")
    return n


def _dec_list(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    n = _count(view, pos, depth)
    pos += 4
    depth += 1
    decoders = _DECODERS
    items = []
    append = items.append
    for _ in range(n):
        item, pos = decoders[view[pos]](view, pos + 1, depth)
        append(item)
    return items, pos


def _dec_tuple(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    items, pos = _dec_list(view, pos, depth)
    return tuple(items), pos


def _dec_dict(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    n = _count(view, pos, depth)
    pos += 4
    depth += 1
    decoders = _DECODERS
    d: dict[Any, Any] = {}
    for _ in range(n):
        k, pos = decoders[view[pos]](view, pos + 1, depth)
        v, pos = decoders[view[pos]](view, pos + 1, depth)
        try:
            d[k] = v
        except TypeError:
            raise DecodeError(f"OBJECT dict key of type {type(k).__name__}") from None
    return d, pos


_DECODERS: list[Callable[[memoryview, int, int], tuple[Any, int]]] = [_dec_unknown] * 256
for _tag, _fn in (
    (_NONE, _dec_none), (_TRUE, _dec_true), (_FALSE, _dec_false), (_INT, _dec_int),
    (_BIGINT, _dec_bigint), (_FLOAT, _dec_float), (_STR, _dec_str), (_BYTES, _dec_bytes),
    (_LIST, _dec_list), (_TUPLE, _dec_tuple), (_DICT, _dec_dict),
):
    _DECODERS[_tag] = _fn
del _tag, _fn


def encode_values(values: list | tuple) -> bytes:
    """Encode a sequence as its items back to back, without a count (see decode_values)."""
    if len(values) == 1:
        return encode_object(values[0])
    out = bytearray()
    encoders = _ENCODERS
    for item in values:
        encoder = encoders.get(type(item))
        if encoder is None:
            _refuse(item)
        encoder(item, out, 0)
    return bytes(out)


def decode_values(data: bytes, count: int) -> list:
    """Decode exactly ``count`` values written by :func:`encode_values`."""
    if count == 1:
        return [decode_object(data)]
    n = len(data)
    if count > n:
        raise DecodeError(f"OBJECT payload cannot hold {count} values")
    view = memoryview(data)
    decoders = _DECODERS
    items = []
    pos = 0
    try:
        for _ in range(count):
            item, pos = decoders[view[pos]](view, pos + 1, 0)
            items.append(item)
    except (struct.error, IndexError):
        raise DecodeError("OBJECT payload is truncated") from None
    if pos != n:
        raise DecodeError(f"OBJECT payload has {n - pos} trailing bytes")
    return items
