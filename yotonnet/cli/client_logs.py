"""Log lines of the client subcommands: the client context's warnings (with -v, info) on stderr.

:mod:`yotonnet.kernel.cli` uses it too (``from yotonnet.cli import _begin_client_logging``).
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
)

from ..service.logs import visible


def client_log_line(event: dict) -> str | None:
    """One event as the client commands print it: ``yotonnet: MESSAGE``, no timestamp.

    Fields may hold peer text: control characters are escaped, and a line break in a
    message (or its traceback) starts an indented line, never one of its own."""
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    return "yotonnet: " + "\n\t".join(visible(text).split("\n")) + "\n"


def _begin_client_logging(verbose: bool) -> None:
    """Warnings (and with -v, info) of the client context on stderr, without timestamps."""
    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        FileLogObserver(sys.stderr, client_log_line),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
