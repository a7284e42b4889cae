"""Message types: how a channel turns Python values into payload bytes and back.

Sans-IO. Built-in types are ``TEXT`` (str), ``BINARY`` (bytes) and ``OBJECT``
(a safe tagged binary encoding of None, bool, int of any size, float, str,
bytes, list, tuple and dict; no pickle, no eval). Applications register their
own types by name with :func:`register_message_type`. Each type has a 32-bit
tag carried in every frame, so two ends that disagree on a channel's type get
a :class:`MessageTypeError` rather than garbage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .codec import DecodeError, MessageTypeError, decode_object, encode_object
from .wire import type_tag

__all__ = [
    "DecodeError",
    "MessageTypeError",
    "MessageType",
    "register_message_type",
    "message_type",
    "type_name_for_tag",
    "encode_object",
    "decode_object",
    "TEXT",
    "BINARY",
    "OBJECT",
]


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


def _decode_binary(data: bytes) -> bytes:
    return data


TEXT = register_message_type("TEXT", _encode_text, _decode_text)
BINARY = register_message_type("BINARY", _encode_binary, _decode_binary)
OBJECT = register_message_type("OBJECT", encode_object, decode_object)
