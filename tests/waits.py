"""Bounded waits for the tests on real sockets and processes.

A peer that hangs fails its test with a message saying what was awaited,
instead of blocking the run. Nothing here measures time: a timeout only
turns a hang into a failure.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

#: seconds a test waits for anything before failing; generous for slow CI machines
WAIT = 30.0


def bounded(d: Any, what: str, seconds: float = WAIT) -> defer.Deferred:
    """Fail with a readable error if ``d`` (a Deferred or coroutine) has not fired in time."""
    d = defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else d

    def on_timeout(result: Any, timeout: float) -> Any:
        raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")

    return d.addTimeout(seconds, reactor, onTimeoutCancel=on_timeout)


async def until(predicate: Any, what: str, seconds: float = WAIT) -> None:
    """Poll ``predicate`` every 10 ms; fail if it is still false after ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"gave up after {seconds:g} s waiting for {what}")


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
