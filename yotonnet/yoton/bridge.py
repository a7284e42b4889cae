"""The public face of Yoton compatibility: a bridge between a context and Yoton peers.

::

    bridge = YotonBridge(ctx, [
        YotonChannel("hello"),                                   # pub/sub, TEXT
        YotonChannel("settings", "state", "OBJECT"),
        YotonChannel("math", "reqrep", serve=True),              # Yoton serves it
    ])
    port = await bridge.listen("tcp:0:interface=127.0.0.1")   # Yoton: ctx.connect(...)
    link = await bridge.connect("tcp:127.0.0.1:12345")         # Yoton: ctx.bind(...)

Each Yoton context that links up appears in ``ctx.topology()`` as a node of
its own (its Yoton id as node id) with a link to ``ctx``; ``ctx.watch_links``
reports its link like any other. A bridge listens for any number of Yoton
peers on one endpoint (a Yoton ``bind`` accepts one), and its outgoing links
redial with the context's backoff, as ``ctx.connect`` does, and are listed in
``ctx.dialers``; ``ctx.close()`` ends them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger

from .link import YotonLink, YotonLinkFactory
from .slots import SlotMap, YotonChannel

if TYPE_CHECKING:
    from ..mesh.context import Context

log = Logger(namespace="yotonnet.yoton")


class YotonBridge:
    """Carries ``channels`` between ``context`` and the Yoton contexts it links to."""

    def __init__(self, context: Context, channels: Iterable[YotonChannel]) -> None:
        self.context = context
        self.slots = SlotMap(channels)
        # It speaks for the Yoton contexts it links: that takes a node of the mesh.
        context.become_node("it bridges Yoton contexts")

    @property
    def links(self) -> list[YotonLink]:
        """The Yoton links of the context that are up (or busy)."""
        return [
            link for link in self.context.links.values()
            if isinstance(link, YotonLink) and link.slots is self.slots
        ]

    def listen(self, endpoint: str) -> defer.Deferred[Any]:
        """Accept any number of Yoton contexts (they ``connect()``) on a server endpoint."""
        ctx = self.context
        ctx.check_open()
        try:
            ep = ctx.guard.server_endpoint(endpoint)  # unix sockets private to this user
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad Yoton listen endpoint {endpoint!r}: {e}"))
        factory = YotonLinkFactory(ctx, self.slots, outgoing=False, endpoint_text=endpoint)

        def listening(port: Any) -> Any:
            ctx.ports.append(port)
            log.info("{node} listening for Yoton peers on {where}", node=ctx.name, where=endpoint)
            return port

        return ep.listen(factory).addCallback(listening)

    def connect(self, endpoint: str) -> defer.Deferred[YotonLink]:
        """Dial a Yoton context that ``bind()``\\ s; fires with the link after the handshake.

        The link redials with backoff when lost (a Yoton host stops listening once a
        peer connects, so it answers again only if it binds again); a peer that is
        not Yoton fails the Deferred and stops dialling.
        """
        ctx = self.context
        ctx.check_open()
        try:
            dialer = ctx.dialer(
                endpoint, clientFromString(ctx.reactor, endpoint),
                YotonLinkFactory(ctx, self.slots, outgoing=True, endpoint_text=endpoint),
                protocol="yoton",
            )
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad Yoton connect endpoint {endpoint!r}: {e}"))
        dialer.start()
        return dialer.first

    def describe(self) -> list[dict]:
        """The carried channels with their Yoton slot hashes."""
        return self.slots.describe()
