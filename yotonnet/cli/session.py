"""A short-lived client context: joining the mesh through one node, and bounded waits.

:class:`Session` links a client context to the ``--connect`` node and waits
until the mesh's records are in (see :mod:`yotonnet.cli` for why);
:func:`_wait` bounds a wait by a timeout, failing with :class:`CliError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol

from .. import errors
from ..channels import PubChannel, ReqChannel
from ..mesh.context import Context, ContextConfig
from ..mesh.dialer import DialerEvent
from ..mesh.link import HandshakeError
from ..security.settings import SecurityError
from ..service.config import DEFAULT_LISTEN, Settings
from ..service.node import control_channel_name
from .exits import EXIT_USAGE, CliError
from .output import peer_text


def _wait(reactor: Any, d: defer.Deferred, seconds: float, on_timeout: Callable[[], str]) -> Any:
    """``d``, failing with CliError(on_timeout()) after ``seconds``."""
    result: defer.Deferred = defer.Deferred()

    def fire(value: Any) -> None:
        if not result.called:
            if timer.active():
                timer.cancel()
            result.callback(value)

    def fail(failure: Any) -> None:
        if not result.called:
            if timer.active():
                timer.cancel()
            result.errback(failure)

    def expired() -> None:
        if not result.called:
            result.errback(CliError(on_timeout()))
            d.cancel()  # stops what it waited for (a poll, a dial)

    timer = reactor.callLater(seconds, expired)
    d.addCallbacks(fire, fail)
    return result


class Session:
    """One client context linked to one node, with the mesh's records in."""

    def __init__(self, reactor: Any, settings: Settings, label: str) -> None:
        self.reactor = reactor
        self.endpoint = settings.client.connect
        self.timeout = settings.client.timeout
        config = ContextConfig(**{
            **vars(settings.context),
            # under the overall bound, so a silent peer is reported as such
            "handshake_timeout": min(settings.context.handshake_timeout, 0.8 * self.timeout),
            "request_timeout": self.timeout,
        })
        try:
            self.ctx = Context(
                f"yotonnet-cli-{label}-{os.getpid()}", reactor, config=config,
                security=settings.security,
            )
        except SecurityError as e:  # e.g. a credentials file that cannot be read
            raise CliError(str(e), EXIT_USAGE) from None
        self.link: Any = None
        #: the node's control channel, None when the peer is a plain context
        self.control: ReqChannel | None = None

    async def join(self) -> None:
        self.link = await self._connect()
        await self._settle()

    async def _connect(self) -> Any:
        d = self.ctx.connect(self.endpoint)
        if d.called and not self.ctx.dialers:
            try:
                await d  # a bad endpoint string fails at once
            except ValueError as e:
                raise CliError(f"--connect: {e}", EXIT_USAGE) from None
        dialer = self.ctx.dialers[-1]
        outcome: defer.Deferred = defer.Deferred()

        def up(link: Any) -> None:
            if not outcome.called:
                outcome.callback(link)

        def refused(failure: Any) -> None:
            if not outcome.called:
                outcome.errback(failure)

        d.addCallbacks(up, refused)

        # A client fails fast: the first failed attempt ends it (the dialer would retry).
        def attempt(event: DialerEvent) -> None:
            if event.kind == "retry" and event.attempt >= 1 and not outcome.called:
                outcome.errback(_Unreachable(event.error))

        unwatch = dialer.watch(attempt)
        try:
            return await _wait(
                self.reactor, outcome, self.timeout,
                lambda: f"no yotonnet node answered at {self.endpoint} within "
                        f"{self.timeout:g} s (--timeout); is the address right and reachable?",
            )
        except _Unreachable as e:
            reason = peer_text(e.reason) if e.reason else await self._probe()
            raise CliError(
                f"cannot reach a yotonnet node at {self.endpoint}: {reason}\n"
                f"  Is a node running there? Start one with `yotonnet node` (it listens on "
                f"{DEFAULT_LISTEN}),\n  or pass --connect ENDPOINT to use another node."
            ) from None
        except HandshakeError as e:
            raise CliError(f"{self.endpoint} refused the link: {peer_text(e)}") from None
        finally:
            unwatch()

    async def _probe(self) -> str:
        """Why a TCP/unix connection to the endpoint fails (the dialer keeps no reason)."""
        endpoint = clientFromString(self.reactor, self.endpoint)
        try:
            proto = await _wait(
                self.reactor, endpoint.connect(Factory.forProtocol(Protocol)),
                min(self.timeout, 5.0), lambda: "connection attempt timed out",
            )
        except CliError as e:
            return e.message
        except Exception as e:  # noqa: BLE001 - any connect failure is the answer wanted
            return str(e) or type(e).__name__
        proto.transport.loseConnection()
        return "the connection was made but the link failed"

    async def _settle(self) -> None:
        """Wait for the node's records, then (on a node service) make one round trip."""
        peer = self.link.peer_id
        me = self.ctx.node_id
        routing = self.ctx.routing
        control_id = None
        control = ReqChannel(self.ctx, control_channel_name(peer), timeout=self.timeout)

        def settled() -> bool:
            state = routing.nodes.get(peer)
            # A node sends every record it holds before its own new one, which lists us; to
            # a leaf, the view that answers what it uses (the control channel included).
            return state is not None and me in state.links and self.ctx.view_current

        await _wait(
            self.reactor, _until(self.ctx, settled), self.timeout,
            lambda: f"{self.endpoint} linked but sent no routing records within "
                    f"{self.timeout:g} s",
        )
        control_id = control.channel_id
        if control_id in routing.nodes[peer].interests:
            await _wait(
                self.reactor, control.wait_for_responders(), self.timeout,
                lambda: f"the control channel of {self.endpoint} is not reachable",
            )
            self.control = control
            await self.barrier()
        else:
            control.close()  # a plain context (not a node service): records suffice

    async def barrier(self) -> None:
        """One round trip to the node: everything sent before has reached it."""
        if self.control is not None:
            try:
                await self.control.call("ping")
            except errors.YotonnetError as e:
                raise CliError(
                    f"the node at {self.endpoint} did not answer: {peer_text(e)}"
                ) from None

    async def view_settled(self) -> None:
        """Wait until the node has answered what this command uses (see
        Context.view_current): channels just opened count in what it knows."""
        await _wait(self.reactor, self.ctx.view_settled(), self.timeout,
                    lambda: f"the node at {self.endpoint} did not say who holds the channels "
                            f"this command uses within {self.timeout:g} s")

    async def node_call(self, method: str, *args: Any) -> Any:
        """Call the node's control channel (see yotonnet.service.NodeControl)."""
        if self.control is None:
            raise CliError(
                f"the peer at {self.endpoint} is a plain yotonnet context, not a node service; "
                "this needs a node run by `yotonnet node` or `twistd yotonnet`"
            )
        return await self.control.call(method, *args)

    async def close(self) -> None:
        if not self.ctx.closed:
            await self.ctx.close()


class _Unreachable(Exception):
    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _until(ctx: Context, predicate: Callable[[], bool]) -> defer.Deferred:
    """Fires once ``predicate()`` is true, asked again at every change of the mesh's
    picture (a record, a link)."""
    d: defer.Deferred = defer.Deferred()

    def check() -> None:
        if not d.called and predicate():
            d.callback(None)

    unwatch = ctx.watch_routes(check)
    d.addBoth(lambda result: (unwatch(), result)[1])
    check()
    return d


async def _drained(pub: PubChannel) -> None:
    """Wait until no message of ``pub`` waits in this process for flow-control credit.

    With a lossless subscriber lagging, sends past the credit window queue
    here; ``ready()`` fires once every target can take more (nothing queued),
    so a following barrier really follows every message.
    """
    if not getattr(pub, "writable", True):
        await pub.ready()
