"""Message types: how a channel turns Python values into payload bytes and back.

Sans-IO. Built-in types are ``TEXT`` (str), ``BINARY`` (bytes) and ``OBJECT``
(a safe tagged binary encoding of None, bool, int of any size, float, str,
bytes, list, tuple and dict; no pickle, no eval). Applications register their
own types by name with :func:`register_message_type`. Each type has a 32-bit
tag carried in every frame, so two ends that disagree on a channel's type get
a :class:`MessageTypeError` rather than garbage.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .wire import type_tag


class MessageTypeError(TypeError):
    """A value does not fit a channel's message type, or two ends disagree on it."""


class DecodeError(ValueError):
    """A payload could not be decoded as its message type."""


class MessageType:
    """A named pair of functions: ``encode(value) -> bytes`` and ``decode(bytes) -> value``."""

    __slots__ = ("name", "tag", "encode", "decode")

    def __init__(
        self, name: str, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
    ) -> None:
        self.name = name
        self.tag = type_tag(name)
        self.encode = encode
        self.decode = decode

    def __repr__(self) -> str:
        return f"<MessageType {self.name}>"


_REGISTRY: dict[str, MessageType] = {}
_BY_TAG: dict[int, MessageType] = {}


def register_message_type(
    name: str, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> MessageType:
    """Register a custom message type; the same name must be registered on every node."""
    if not isinstance(name, str) or not name:
        raise ValueError("a message type needs a non-empty name")
    existing = _REGISTRY.get(name)
    if existing is not None and (existing.encode, existing.decode) != (encode, decode):
        raise ValueError(f"message type {name!r} is already registered with other functions")
    mtype = MessageType(name, encode, decode)
    other = _BY_TAG.get(mtype.tag)
    if other is not None and other.name != name:
        raise ValueError(f"message type {name!r} has the same tag as {other.name!r}; rename it")
    _REGISTRY[name] = mtype
    _BY_TAG[mtype.tag] = mtype
    return mtype


def message_type(spec: MessageType | str) -> MessageType:
    """Look up a message type by object or registered name."""
    if isinstance(spec, MessageType):
        return spec
    try:
        return _REGISTRY[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown message type {spec!r}; use TEXT, BINARY, OBJECT or register it "
            "with yotonnet.register_message_type"
        ) from None


def type_name_for_tag(tag: int) -> str:
    mtype = _BY_TAG.get(tag)
    return mtype.name if mtype else f"unknown type (tag {tag:#010x})"


def _encode_text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise MessageTypeError(f"TEXT channels send str, not {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MessageTypeError(f"TEXT message is not encodable as UTF-8: {e}") from None


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"TEXT payload is not UTF-8: {e}") from None


def _encode_binary(value: Any) -> bytes:
    if type(value) is bytes:
        return value  # the common case, without the isinstance on a union or a copy
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MessageTypeError(f"BINARY channels send bytes, not {type(value).__name__}")
    return bytes(value)


# OBJECT encoding: one tag byte, then a body. Containers give their item count.
_NONE, _TRUE, _FALSE, _INT, _BIGINT, _FLOAT, _STR, _BYTES, _LIST, _TUPLE, _DICT = b"NTFiIdsblta"
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
MAX_DEPTH = 100


def encode_object(value: Any) -> bytes:
    out = bytearray()
    _encode_into(value, out, 0)
    return bytes(out)


def _encode_into(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise MessageTypeError(f"OBJECT values may nest at most {MAX_DEPTH} levels")
    t = type(value)
    if value is None:
        out.append(_NONE)
    elif t is bool:
        out.append(_TRUE if value else _FALSE)
    elif t is int:
        if -(2**63) <= value < 2**63:
            out.append(_INT)
            out += _I64.pack(value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            out.append(_BIGINT)
            out += _U32.pack(len(raw))
            out += raw
    elif t is float:
        out.append(_FLOAT)
        out += _F64.pack(value)
    elif t is str:
        raw = value.encode("utf-8", "surrogatepass")
        out.append(_STR)
        out += _U32.pack(len(raw))
        out += raw
    elif t is bytes or t is bytearray:
        out.append(_BYTES)
        out += _U32.pack(len(value))
        out += value
    elif t is list or t is tuple:
        out.append(_LIST if t is list else _TUPLE)
        out += _U32.pack(len(value))
        for item in value:
            _encode_into(item, out, depth + 1)
    elif t is dict:
        out.append(_DICT)
        out += _U32.pack(len(value))
        for k, v in value.items():
            _encode_into(k, out, depth + 1)
            _encode_into(v, out, depth + 1)
    else:
        raise MessageTypeError(
            f"OBJECT channels cannot send {t.__name__}; use None, bool, int, float, str, "
            "bytes, list, tuple or dict, or register a custom message type"
        )


def decode_object(data: bytes) -> Any:
    view = memoryview(data)
    try:
        value, pos = _decode_at(view, 0, 0)
    except (struct.error, IndexError):
        raise DecodeError("OBJECT payload is truncated") from None
    if pos != len(view):
        raise DecodeError(f"OBJECT payload has {len(view) - pos} trailing bytes")
    return value


def _decode_at(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise DecodeError(f"OBJECT payload nests deeper than {MAX_DEPTH} levels")
    tag = view[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag == _TRUE:
        return True, pos
    if tag == _FALSE:
        return False, pos
    if tag == _INT:
        return _I64.unpack_from(view, pos)[0], pos + 8
    if tag == _FLOAT:
        return _F64.unpack_from(view, pos)[0], pos + 8
    if tag in (_BIGINT, _STR, _BYTES):
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        end = pos + n
        if end > len(view):
            raise DecodeError("OBJECT payload is truncated")
        raw = view[pos:end]
        if tag == _STR:
            try:
                return str(raw, "utf-8", "surrogatepass"), end
            except UnicodeDecodeError:
                raise DecodeError("OBJECT string is not UTF-8") from None
        if tag == _BYTES:
            return bytes(raw), end
        return int.from_bytes(raw, "little", signed=True), end
    if tag in (_LIST, _TUPLE, _DICT):
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        # Every item takes at least one byte: refuse counts the payload cannot hold
        # before allocating anything for them.
        if n > len(view) - pos:
            raise DecodeError("OBJECT container count exceeds the payload")
        if tag == _DICT:
            d: dict[Any, Any] = {}
            for _ in range(n):
                k, pos = _decode_at(view, pos, depth + 1)
                v, pos = _decode_at(view, pos, depth + 1)
                try:
                    d[k] = v
                except TypeError:
                    raise DecodeError(f"OBJECT dict key of type {type(k).__name__}") from None
            return d, pos
        items = []
        for _ in range(n):
            item, pos = _decode_at(view, pos, depth + 1)
            items.append(item)
        return (items if tag == _LIST else tuple(items)), pos
    raise DecodeError(f"OBJECT payload has unknown tag byte {tag:#04x}")


def _decode_binary(data: bytes) -> bytes:
    return data


TEXT = register_message_type("TEXT", _encode_text, _decode_text)
BINARY = register_message_type("BINARY", _encode_binary, _decode_binary)
OBJECT = register_message_type("OBJECT", encode_object, decode_object)
