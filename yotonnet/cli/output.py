"""What the client subcommands print: JSON of values, message lines, progress, notes.

Data goes to stdout; progress (only when stderr is a terminal) and remarks go
to stderr.

Values and texts come from other nodes, so what is printed is made safe for a
terminal without losing anything a program reading the output needs:

* JSON output escapes every non-printable character as ``\\uXXXX`` (JSON already
  does so for C0 controls; this covers C1 controls, bidi overrides, line
  separators), which a JSON reader decodes back to the same value;
* notes on stderr escape control characters (:func:`note`), and peer text
  inside them goes through :func:`peer_text`, so that it cannot start a line.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

from ..messages import OBJECT, MessageType
from ..names import printable


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


class _JSONEscapes(dict):
    """A ``str.translate`` table, filled as characters are met: printable ones (and the
    newlines of indented output) stay, others become JSON ``\\u`` escapes."""

    def __missing__(self, code: int) -> str | int:
        char = chr(code)
        if char.isprintable() or char == "\n":
            out: str | int = code
        elif code > 0xFFFF:  # a surrogate pair, as JSON spells characters beyond the BMP
            code -= 0x10000
            out = f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
        else:
            out = f"\\u{code:04x}"
        self[code] = out
        return out


_JSON_ESCAPES = _JSONEscapes()


def terminal_safe_json(text: str) -> str:
    """JSON text with every non-printable character (they can only be inside strings)
    escaped: the same JSON value, and nothing a terminal would act on."""
    return text if text.isprintable() else text.translate(_JSON_ESCAPES)


def dumps(value: Any) -> str:
    """One line of JSON for an OBJECT value (see :func:`to_json`), safe for a terminal."""
    return terminal_safe_json(json.dumps(to_json(value), ensure_ascii=False))


def peer_text(value: Any, limit: int = 2000) -> str:
    """Text from another node (a name, a reason, an error message) for a note on a
    terminal: control characters escaped, so it cannot fake or clear lines."""
    return printable(value, limit)


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


def note(text: str) -> None:
    """A remark on stderr (never on stdout, which carries the data).

    Its own line breaks stay; any other control character is escaped, in case peer
    text got into ``text`` without :func:`peer_text`."""
    if not text.isprintable():
        text = "\n".join(printable(line, len(line) * 10 + 1) for line in text.split("\n"))
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
