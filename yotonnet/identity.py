"""Who sent this? Authenticated identities for applications.

Every frame carries its origin node id in the header; the first node of a
client guarantees that id (a client may only send its own frames) and binds
it to the user the client authenticated as (see :mod:`yotonnet.security.guard`). So:

* :func:`sender_of` (``ctx, node_id``) gives the user bound to a node;
* :func:`caller` gives, inside a :class:`~yotonnet.RepChannel` handler, the
  user whose request it is serving (read it before the first ``await``);
* :class:`IdentifiedSubChannel` is a SubChannel whose messages arrive as
  :class:`Received` ``(value, sender, node)`` tuples.

``None`` means unauthenticated: a node without authentication configured, or
a peer that linked before any node knew who it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .channels.pubsub import SubChannel

if TYPE_CHECKING:
    from .mesh.context import Context

__all__ = ["Received", "IdentifiedSubChannel", "sender_of", "caller", "caller_node"]


class Received(NamedTuple):
    value: Any
    #: the authenticated user who published it (None: unauthenticated)
    sender: str | None
    #: the node id it came from
    node: int


def sender_of(context: Context, node_id: int) -> str | None:
    """The user the mesh authenticated node ``node_id`` as, or None."""
    return context.guard.identity_of(node_id)


def caller(channel_or_context: Any) -> str | None:
    """Inside a request handler: the user who made the call being served."""
    ctx = getattr(channel_or_context, "context", channel_or_context)
    node = ctx.current_caller
    return ctx.guard.identity_of(node) if node else None


def caller_node(channel_or_context: Any) -> int:
    """Inside a request handler: the node id the call being served came from (0: none)."""
    return getattr(channel_or_context, "context", channel_or_context).current_caller


class IdentifiedSubChannel(SubChannel):
    """A SubChannel that hands out :class:`Received` tuples: value, sender, node."""

    def make_decoder(self) -> Callable[[bytes], Received]:
        decode = self.message_type.decode
        identity_of = self.context.guard.identity_of

        def decode_with_sender(payload: bytes) -> Received:
            source = self.source
            return Received(decode(payload), identity_of(source), source)

        return decode_with_sender
