"""The seams between the mesh's parts: what a link asks of its context, what a channel
asks of its host.

The context implements both. A link (:mod:`.link`, and the Yoton bridge's) is
a protocol that reports to an :class:`ILinkOwner`; a channel end
(:mod:`yotonnet.channels`) opens on an :class:`IChannelHost`. Neither uses the
other's private names: what crosses is listed here. The core's own seams
(the peer a node sends to, the channel ends it delivers to) are in
:mod:`yotonnet.core.interfaces`.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["ILinkOwner", "IChannelHost"]


class ILinkOwner(Interface):
    """What a link needs of the node it belongs to."""

    node_id = Attribute("this node's id")
    name = Attribute("this node's name")
    capabilities = Attribute("the capabilities this node announces in its HELLO")
    config = Attribute("the node's ContextConfig")
    reactor = Attribute("the reactor: IReactorTime at least")
    guard = Attribute("the node's yotonnet.security.guard.Guard")
    node = Attribute("the sans-IO yotonnet.core.node.Node links hand frames to")
    batch = Attribute("the yotonnet.mesh.writer.Batch dispatches share")

    def accepting() -> str | None:  # noqa: N805
        """None if new incoming connections are welcome, else why not."""

    def admit(link) -> str | None:  # noqa: N805
        """A peer finished its HELLO: None to go on, else the refusal."""

    def dispatch_for(link):  # noqa: N805
        """(frame kind -> handler, DATA handler) for an admitted link's frames."""

    def link_up(link) -> None:  # noqa: N805
        """The link is admitted and up."""

    def link_down(link) -> None:  # noqa: N805
        """The connection of a link that was up is gone."""

    def link_status(link, status, reason) -> None:  # noqa: N805
        """The link's status changed (busy, up again)."""

    def link_quiet(link, reason) -> None:  # noqa: N805
        """``link.quiet`` changed: its peer fell silent past reroute_after (``reason``
        says how long), or spoke again (``reason`` None)."""

    def link_event(link, status, reason) -> None:  # noqa: N805
        """Tell the link watchers (the link closed, even before it was up)."""


class IChannelHost(Interface):
    """What a channel end needs of the context it opens on."""

    reactor = Attribute("the reactor")
    config = Attribute("the node's ContextConfig")
    guard = Attribute("the guard: claims and denials of channels")
    node = Attribute("the core: register ends, publish, call, set state (plain calls)")

    def wait_for_interest(channel, role, count):  # noqa: N805
        """A Deferred that fires once ``count`` holders of ``role`` are reachable."""

    def interest_count(channel, role) -> int:  # noqa: N805
        """Reachable holders of ``role`` (summed over several channel ids)."""
