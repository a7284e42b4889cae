"""The seams of the node core: what it sends to, and what it delivers to.

The core (:mod:`yotonnet.core.node`) decides what happens to every frame; it
reaches the world only through these interfaces, which the Twisted layers
implement (a test can implement them with a few lines, see tests/test_core.py):

* :class:`IPeer`: one neighbour the core sends to (a link);
* :class:`ISubscriberEnd`, :class:`IPublisherEnd`, :class:`IReplierEnd`,
  :class:`IStateEnd`: the local ends of channels it delivers to;
* :class:`IWaiter`: whatever waits for a request's outcome (a Deferred fits);
* :class:`ILog`: where it reports (a ``twisted.logger.Logger`` fits).

zope.interface is Twisted's way of naming such seams; it is not Twisted, so
the core stays free of it.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IPeer",
    "ISubscriberEnd",
    "IPublisherEnd",
    "IReplierEnd",
    "IStateEnd",
    "IWaiter",
    "ILog",
]


class IPeer(Interface):
    """A neighbour: one link, as the core sees it."""

    peer_id = Attribute("the neighbour's node id")
    cost = Attribute("this end's routing cost of the link (1 to 255)")
    status = Attribute('"up", or "busy" while the neighbour is silent')
    quiet = Attribute(
        "True while the neighbour has been silent past reroute_after: routed around, "
        "nothing declared"
    )
    closing = Attribute("True once the link is going: nothing more should be sent")
    flow = Attribute("its yotonnet.core.flow.PeerFlow: credit both ways, queued data")
    role = Attribute(
        'what the neighbour is to this node (yotonnet.core.leaves): "node" (of the mesh), '
        '"leaf" (a leaf of this node) or "hub" (this node is its leaf)'
    )
    lets_cork_out = Attribute(
        "optional, False if absent: True when the link calls its node's PubSub.uncork "
        "before it writes any frame, so published frames may wait there for the end of "
        "the reactor turn (yotonnet.core.pubsub.PubSub.uncork); such a link also has "
        "send_pair(head, payload), which sends one frame given as its header and its "
        "payload, as send(head + payload) would"
    )
    poll_socket = Attribute(
        "the socket the host may poll for the reply to a call sent on this link before "
        "it sleeps (yotonnet.mesh.replypoll), or None"
    )

    def send(data: bytes) -> None:  # noqa: N805 - zope interfaces have no self
        """Send one or more encoded frames (a link may batch them)."""

    def describe() -> str:  # noqa: N805
        """A short text naming the neighbour, for logs."""


class ISubscriberEnd(Interface):
    """A local subscriber of a pub/sub channel (lossless or latest)."""

    message_type = Attribute("its yotonnet.core.messages.MessageType")
    backlog = Attribute("bytes of lossless messages received and not yet taken")

    def deliver(frame, hold) -> None:  # noqa: N805
        """One message (a wire.Frame); ``hold`` (or None) keeps its upstream credit."""

    def lost(gap) -> None:  # noqa: N805
        """A range of a publisher's messages that will never come (a
        yotonnet.core.repair.Gap: source, first, last, count, reason)."""

    def restarted(source, last) -> None:  # noqa: N805
        """``source`` restarted: its messages are numbered anew after ``last``, and
        nothing was sent between (what was lost came first, as a gap)."""

    def deliver_run(frames, peer, hold) -> None:  # noqa: N805
        """Consecutive frames of one source, as decoded; stop if ``peer.closing``."""

    def deliver_block(run, peer, hold) -> None:  # noqa: N805
        """A wire.Run: frames of one source and size, still in the received buffer."""


class IPublisherEnd(Interface):
    """A local publisher: paused while some target cannot take more."""

    channel_id = Attribute("the id of its channel's lossless flow")
    latest_id = Attribute("the id of its channel's flow to latest subscribers")
    message_type = Attribute("its yotonnet.core.messages.MessageType")

    def pause() -> None:  # noqa: N805
        """Some target's credit ran out."""

    def resume() -> None:  # noqa: N805
        """Every target can take more again."""


class IReplierEnd(Interface):
    """A local replier of a request/reply channel."""

    in_flight = Attribute("requests it is serving now (the least busy one is chosen)")
    idempotent = Attribute(
        "frozenset of the method names it declared idempotent: a call to one whose path "
        "broke is sent again, and this node serves a copy it already has only once"
    )

    def handle_request(source, req_id, tag, method, payload):  # noqa: N805
        """Serve a request from node ``source``: return ``(value,)`` for a result known
        at once, or None and answer later through ``Node.reply_ok``/``reply_error``."""


class IStateEnd(Interface):
    """A local holder of a state channel."""

    message_type = Attribute("its yotonnet.core.messages.MessageType")

    def changed(tag, payload) -> None:  # noqa: N805
        """The channel's value changed (``payload`` encoded, ``tag`` its type)."""


class IWaiter(Interface):
    """Whatever waits for a request's outcome."""

    def callback(result) -> None:  # noqa: N805
        """The reply's value."""

    def errback(error) -> None:  # noqa: N805
        """The error (an exception) the call ended with."""


class ILog(Interface):
    """Where the core reports: format strings with named fields, as twisted.logger."""

    def info(format, **fields) -> None:  # noqa: N805, A002
        pass

    def warn(format, **fields) -> None:  # noqa: N805, A002
        pass

    def error(format, **fields) -> None:  # noqa: N805, A002
        pass
