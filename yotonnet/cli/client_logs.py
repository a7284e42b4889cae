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


def _begin_client_logging(verbose: bool) -> None:
    """Warnings (and with -v, info) of the client context on stderr, without timestamps."""

    def fmt(event: dict) -> str | None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        return f"yotonnet: {text}\n" if text else None

    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        FileLogObserver(sys.stderr, fmt), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
