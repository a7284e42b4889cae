"""What the client subcommands print: JSON of values, message lines, progress, notes.

Data goes to stdout; progress (only when stderr is a terminal) and remarks go
to stderr.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

from ..messages import OBJECT, MessageType


def to_json(value: Any) -> Any:
    """A JSON-encodable copy of an OBJECT value: tuples become lists, bytes {"$base64": ...}."""
    if isinstance(value, (bytes, bytearray)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {
            k if isinstance(k, (str, int, float, bool)) or k is None else json.dumps(to_json(k)):
            to_json(v)
            for k, v in value.items()
        }
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json(value), ensure_ascii=False)


def _render(value: Any, mtype: MessageType, as_json: bool) -> bytes:
    """One output line for a message or a state value."""
    if as_json or mtype is OBJECT:
        return dumps(value).encode("utf-8") + b"\n"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) + b"\n"
    return str(value).encode("utf-8", "surrogateescape") + b"\n"


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, stream: Any = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream)
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self._shown = True
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _note(text: str) -> None:
    """A remark on stderr (never on stdout, which carries the data)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
