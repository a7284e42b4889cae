"""What every channel end has: a validated name, a pattern, a message type, a wire id,
its place in the node core, and the denials the mesh sent it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..core.messages import MessageType, message_type
from ..core.names import channel_id, validate_channel_name
from ..errors import PermissionDenied

if TYPE_CHECKING:
    from ..mesh.interfaces import IChannelHost


class Channel:
    #: the kind of channel: its wire id is a hash of pattern and name
    pattern: str
    #: this end's role in the node core (yotonnet.core.node: "sub", "pub", "rep", "state")
    role: ClassVar[str | None] = None
    #: the operations this end claims with nodes that authorize: (operation, pattern)
    operations: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(
        self, context: IChannelHost, name: str, message_type_: MessageType | str
    ) -> None:
        self.context = context
        self.name = validate_channel_name(name)
        self.message_type = message_type(message_type_)
        self.channel_id = channel_id(self.pattern, name)
        self.closed = False
        #: the last denial a node sent for this channel (None: nothing was denied)
        self.denied: PermissionDenied | None = None
        self._denials: dict[str, PermissionDenied] = {}
        # Claims this channel with nodes that authorize (security.guard), before any interest.
        context.guard.channel_opened(self)
        if self.role is not None:
            context.node.register(self.role, self.channel_id, self)

    def close(self) -> None:
        """Leave the channel; the mesh stops routing its messages here."""
        if not self.closed:
            self.closed = True
            if self.role is not None:
                self.context.node.unregister(self.role, self.channel_id, self)

    def deny(self, operation: str, error: PermissionDenied) -> None:
        """A node refused ``operation`` on this channel: it fails with ``error`` from now on."""
        self._denials[operation] = error
        self.denied = error

    def denial(self, operation: str) -> PermissionDenied | None:
        """The error ``operation`` fails with, if a node denied it."""
        return self._denials.get(operation) if self.denied is not None else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.message_type.name}>"
