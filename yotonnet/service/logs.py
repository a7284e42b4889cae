"""Log output for nodes and tools: human text lines or JSON lines.

yotonnet logs through :mod:`twisted.logger` with keyword fields (``node``,
``peer``, ``reason``...). :func:`start_logging` sends those events to a
stream, as text (``textFileLogObserver``) or as one JSON object per line
(``jsonFileLogObserver``): every field of the event is kept, and a
``log_text`` field holds the formatted message (with the traceback for a
failure, which the JSON of the failure object itself does not carry), so
``jq -r .log_text`` reads it as a person would.

Under ``twistd``, ``--logger yotonnet.logs.json_observer`` gives the same
JSON lines on stdout.

Log fields often hold text from other nodes (names, reasons, error messages).
Call sites escape it (:func:`yotonnet.core.names.printable`); as a safety net, the
text lines and ``log_text`` go through :func:`visible`, so that nothing in a
log line can move the cursor, clear the screen or write the clipboard of
whoever reads it. (Twisted already indents the continuation lines of a
multi-line message with a tab, so a newline cannot fake a line of its own.)
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogBeginner,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogBeginner,
    jsonFileLogObserver,
)
from zope.interface import implementer

__all__ = [
    "FORMATS", "start_logging", "make_observer", "json_observer", "text_observer", "visible",
]

FORMATS = ("text", "json")


def visible(text: str) -> str:
    """``text`` with every control character but line breaks and tabs as an escape
    (``\\x1b``, ``\\r``): what a log line may hold, whatever got into its fields."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _text_line(event: dict[str, Any]) -> str | None:
    """What ``textFileLogObserver`` writes for ``event``, made :func:`visible`."""
    text = formatEventAsClassicLogText(event)
    if text is None:
        return None
    return text if text[:-1].isprintable() else visible(text)


@implementer(ILogObserver)
class _WithText:
    """Adds ``log_text`` to a copy of each event before the JSON observer writes it."""

    def __init__(self, observer: FileLogObserver) -> None:
        self.observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_text" not in event:
            event = dict(event)
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                try:
                    text = f"{text}\n{failure.getTraceback()}"
                except Exception:  # noqa: BLE001 - a broken failure still gets its line
                    pass
            event["log_text"] = visible(text)  # `jq -r .log_text` prints it raw
        self.observer(event)


def make_observer(fmt: str, stream: IO[Any]) -> Any:
    """An observer writing events to ``stream`` as ``"text"`` or ``"json"`` lines."""
    if fmt == "text":
        return FileLogObserver(stream, _text_line)
    if fmt == "json":
        # An empty record separator: plain JSON lines rather than RFC 7464 sequences.
        return _WithText(jsonFileLogObserver(stream, recordSeparator=""))
    raise ValueError(f"unknown log format {fmt!r}; use one of: {', '.join(FORMATS)}")


def start_logging(fmt: str, stream: IO[Any], *, beginner: LogBeginner | None = None) -> None:
    """Send all log events (including those buffered so far) to ``stream`` in ``fmt``.

    ``fmt`` is ``"text"`` (the default of the tools) or ``"json"``; anything
    else raises ``ValueError`` before logging is touched.
    """
    observer = make_observer(fmt, stream)
    (beginner or globalLogBeginner).beginLoggingTo([observer], redirectStandardIO=False)


def json_observer() -> Any:
    """JSON lines on stdout; for ``twistd --logger yotonnet.logs.json_observer``."""
    return make_observer("json", sys.stdout)


def text_observer() -> Any:
    """Text lines on stdout; for ``twistd --logger yotonnet.logs.text_observer``."""
    return make_observer("text", sys.stdout)
