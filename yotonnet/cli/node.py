"""``yotonnet node``: run a mesh node in the foreground until SIGINT or SIGTERM.

The same service as ``twistd yotonnet`` (:func:`yotonnet.service.make_service`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from ..security.settings import SecurityError
from ..service.config import Settings
from ..service.node import ListenError, make_service
from .exits import EXIT_FAILURE
from .output import note


async def _node_main(reactor: Any, settings: Settings) -> None:
    top = make_service(settings, reactor)
    try:
        top.startService()
        await top.when_ready()
    except (ListenError, ImportError, OSError, SecurityError) as e:
        await defer.maybeDeferred(top.stopService)
        note(f"yotonnet node: error: {e}")
        raise SystemExit(EXIT_FAILURE) from None
    # Stopping is part of shutting down: the reactor waits for the links to close.
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    await defer.Deferred()  # until SIGINT/SIGTERM stops the reactor
