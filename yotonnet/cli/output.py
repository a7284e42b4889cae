"""What the client subcommands print: JSON of values, message lines, progress, notes.

Data goes to stdout; progress (only when stderr is a terminal) and remarks go
to stderr.

Values and texts come from other nodes, so what is printed is made safe for a
terminal without losing anything a program reading the output needs:

* JSON output escapes every non-printable character as ``\\uXXXX`` (JSON already
  does so for C0 controls; this covers C1 controls, bidi overrides, line
  separators), which a JSON reader decodes back to the same value;
* an int of more than :data:`MAX_DECIMAL_DIGITS` decimal digits is printed as
  ``{"$bigint": "0x..."}`` (or ``"-0x..."``): converting an int to decimal takes
  time quadratic in its size (a 16 MiB frame holds one of 40 million digits),
  and Python refuses to convert or parse ints longer than 4300 digits by
  default (``sys.set_int_max_str_digits``); hex is linear and always allowed;
* JSON input (:func:`loads`: ``pub --type object``, ``call``, ``state set``) takes
  ``{"$bigint": "0x..."}`` back, so that what ``sub`` prints can be published again;
* notes on stderr escape control characters (:func:`note`), and peer text
  inside them goes through :func:`peer_text`, so that it cannot start a line.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import sys
import time
from typing import Any

from ..core.messages import OBJECT, MessageType
from ..core.names import printable

#: ints with more decimal digits than this print as {"$bigint": "0x..."}; the default of
#: sys.get_int_max_str_digits(), so any Python program can read what is printed
MAX_DECIMAL_DIGITS = 4300
#: the key of the JSON object a too-long int becomes
BIGINT_KEY = "$bigint"


@functools.lru_cache(maxsize=4)
def _decimal_bound(digits: int) -> int:
    return 10**digits


def _decimal_digits_allowed() -> int:
    limit = sys.get_int_max_str_digits()  # 0 means no limit; the environment may lower it
    return MAX_DECIMAL_DIGITS if limit == 0 else min(limit, MAX_DECIMAL_DIGITS)


def int_to_json(value: int) -> int | dict[str, str]:
    """``value`` itself if it has at most :data:`MAX_DECIMAL_DIGITS` decimal digits (no
    more than this interpreter may convert), else ``{"$bigint": "0x..."}``.

    Only comparisons and a hex conversion: both take time linear in the int's size."""
    bound = _decimal_bound(_decimal_digits_allowed())
    if -bound < value < bound:
        return value
    return {BIGINT_KEY: hex(value)}


def to_json(value: Any) -> Any:
    """A JSON-encodable copy of an OBJECT value: tuples become lists, bytes
    ``{"$base64": ...}``, ints too long for decimal ``{"$bigint": "0x..."}``, dict keys
    that are not str the JSON text of the key (as ``json.dumps`` would make them)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int_to_json(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else json.dumps(to_json(k)): to_json(v)
            for k, v in value.items()
        }
    return value


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > _decimal_digits_allowed():
        raise ValueError(
            f"an int of {digits} decimal digits; write ints of more than "
            f"{_decimal_digits_allowed()} digits in hex, as {{\"{BIGINT_KEY}\": \"0x...\"}}"
        )
    return int(text)


_HEX_INT = re.compile(r"-?0[xX][0-9a-fA-F]+\Z")


def _bigint_hook(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == BIGINT_KEY:
        text = pairs[0][1]
        if not isinstance(text, str) or not _HEX_INT.match(text):
            raise ValueError(f'{{"{BIGINT_KEY}": ...}} must hold a hex string such as "0x1f" '
                             f"or \"-0x1f\", not {printable(repr(text), 60)}")
        return int(text, 16)  # linear, and never limited: 16 is a power of two
    return dict(pairs)


def loads(text: str | bytes) -> Any:
    """JSON text as an OBJECT value: ``json.loads``, with ``{"$bigint": "0x..."}`` as an
    int, and a clear ValueError for a decimal int too long for this interpreter."""
    return json.loads(text, parse_int=_parse_int, object_pairs_hook=_bigint_hook)


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
