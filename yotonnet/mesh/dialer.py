"""Dialling a peer: an outgoing link that comes back by itself.

A :class:`Dialer` wraps Twisted's ``ClientService`` (exponential backoff with
jitter) around one endpoint: it counts attempts, keeps the last error, tells
watchers of every attempt and of the link coming up or failing
(:meth:`Dialer.watch`), and stops for good on a refusal that retrying cannot
fix (wrong protocol, version, credentials). It knows links only by their
``handshake_done`` Deferred, so a foreign protocol (Yoton's) uses it too.

A leaf may be given several nodes to dial (:class:`FirstOf`): each attempt
tries them in turn, from the one that last answered, so a leaf whose node
goes away joins another on its next attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ..core.costs import split_cost

__all__ = ["Dialer", "DialerEvent", "FirstOf", "endpoint_cost"]

log = Logger(namespace="yotonnet.dialer")


class DialerEvent(NamedTuple):
    """What a dialer just did: ``kind`` is "retry" (``delay`` seconds until the next
    attempt, after ``error``), "up" or "failed" (for good)."""

    endpoint: str
    kind: str
    attempt: int
    delay: float
    error: str | None


def endpoint_cost(endpoint: str, cost: int | None) -> tuple[str, int]:
    """The endpoint without a ``cost=`` option, and the link cost (1 unless given)."""
    text, written = split_cost(endpoint)
    if cost is not None:
        if written is not None and written != cost:
            raise ValueError(f"endpoint {endpoint!r} says cost={written} but cost={cost} is given")
    return text, cost if cost is not None else written if written is not None else 1


@implementer(IStreamClientEndpoint)
class FirstOf:
    """Several client endpoints as one: a connection attempt tries each in turn,
    starting from the one that last connected, and fails only when all do."""

    def __init__(self, endpoints: list[Any], texts: list[str]) -> None:
        if not endpoints:
            raise ValueError("no endpoint to dial")
        self.endpoints = endpoints
        self.texts = texts
        #: the index of the endpoint that connected last (tried first)
        self.current = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        order = [(self.current + i) % len(self.endpoints) for i in range(len(self.endpoints))]
        errors: list[str] = []
        result: defer.Deferred[Any] = defer.Deferred()

        def attempt(left: list[int]) -> None:
            if not left:
                result.errback(ConnectionError("; ".join(errors)))
                return
            i = left[0]
            d = self.endpoints[i].connect(factory)

            def connected(protocol: Any) -> None:
                self.current = i
                result.callback(protocol)

            def failed(failure: Any) -> None:
                errors.append(f"{self.texts[i]}: {failure.getErrorMessage()}")
                attempt(left[1:])

            d.addCallbacks(connected, failed)

        attempt(order)
        return result


class Dialer:
    """An outgoing link that reconnects with exponential backoff and jitter.

    Inspect ``attempts``, ``last_delay`` and ``link``; ``stop()`` ends it.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint_text: str,
        endpoint: Any,
        factory: Any,
        initial: float,
        maximum: float,
        protocol: str = "yotonnet",
    ) -> None:
        self.endpoint_text = endpoint_text
        #: what builds each connection's protocol
        self.factory = factory
        #: what info() calls the link's protocol
        self.protocol = protocol
        self.attempts = 0
        self.last_delay = 0.0
        self.link: Any = None
        self.stopped = False
        self.last_error: str | None = None
        self.handshake_failures = 0
        self._watchers: list[Callable[[DialerEvent], None]] = []
        policy = backoffPolicy(initial, maximum, 2.0, random.random)

        def retry_policy(failures: int) -> float:
            # ClientService resets its count when TCP connects; failed handshakes count too.
            failures = max(failures, self.handshake_failures)
            self.attempts = failures
            self.last_delay = policy(failures)
            self._tell("retry")
            return self.last_delay

        self.service = ClientService(
            endpoint, factory, retryPolicy=retry_policy, clock=reactor,
            prepareConnection=self._prepare,
        )
        #: fires with the first link up, or fails on a refusal that retrying cannot fix
        self.first: defer.Deferred[Any] = defer.Deferred()

    def watch(self, callback: Callable[[DialerEvent], None]) -> Callable[[], None]:
        """Call ``callback(DialerEvent)`` on every attempt and outcome; returns an unwatch."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _tell(self, kind: str) -> None:
        event = DialerEvent(self.endpoint_text, kind, self.attempts, self.last_delay,
                            self.last_error)
        for watcher in list(self._watchers):
            try:
                watcher(event)
            except Exception:  # noqa: BLE001 - one bad watcher must not stop dialling
                log.failure("dialer watcher failed")

    def _prepare(self, link: Any) -> None:
        # Not returned to ClientService: a handshake failing means the connection is lost,
        # and ClientService has no transition for a loss while prepareConnection is pending.
        d = link.handshake_done
        assert d is not None

        def up(link: Any) -> None:
            self.link = link
            self.last_error = None
            self.handshake_failures = 0
            if not self.first.called:
                self.first.callback(link)
            self._tell("up")

        def failed(failure: Any) -> None:
            self.last_error = failure.getErrorMessage()
            self.handshake_failures += 1
            if getattr(failure.value, "fatal", False) and not self.first.called:
                self.stop()
                self.first.errback(failure)
                self._tell("failed")

        d.addCallbacks(up, failed)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        if not self.service.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self.service.stopService)

    def info(self) -> dict:
        return {
            "endpoint": self.endpoint_text,
            "protocol": self.protocol,
            "connected": self.link is not None and self.link.status in ("up", "busy"),
            "attempts": self.attempts,
            "last_delay": self.last_delay,
            "last_error": self.last_error,
            "stopped": self.stopped,
        }
