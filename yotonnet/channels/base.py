"""What every channel has: a validated name, a pattern, a message type, a wire id."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..core.messages import MessageType, message_type
from ..core.names import channel_id, validate_channel_name

if TYPE_CHECKING:
    from ..mesh.context import Context


class Channel:
    #: the kind of channel: its wire id is a hash of pattern and name
    pattern: str
    #: the context table this end registers in (None: it holds no interest)
    table: ClassVar[str | None] = None

    def __init__(self, context: Context, name: str, message_type_: MessageType | str) -> None:
        self.context = context
        self.name = validate_channel_name(name)
        self.message_type = message_type(message_type_)
        self.channel_id = channel_id(self.pattern, name)
        self.closed = False
        # Claims this channel with nodes that authorize (yotonnet.guard), before any interest.
        context.guard.channel_opened(self)
        if self.table is not None:
            context._register(self.table, self)

    def close(self) -> None:
        """Leave the channel; the mesh stops routing its messages here."""
        if not self.closed:
            self.closed = True
            if self.table is not None:
                self.context._unregister(self.table, self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.message_type.name}>"
