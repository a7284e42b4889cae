"""State: one current value per channel, last writer wins, late joiners catch up.

The order is a Lamport clock with the writer's node id as tie-break: a write
that saw a value always beats it, and concurrent writes resolve the same way
on every node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from ..core.interfaces import IStateEnd
from ..core.messages import OBJECT, MessageType, MessageTypeError, type_name_for_tag
from ..core.routing import STATE
from ..security.authz import SET_STATE, SUBSCRIBE
from .base import Channel

if TYPE_CHECKING:
    from ..mesh.interfaces import IChannelHost

log = Logger(namespace="yotonnet.state")


@implementer(IStateEnd)
class StateChannel(Channel):
    pattern = "state"
    role = STATE
    operations = ((SUBSCRIBE, "state"), (SET_STATE, "state"))

    def __init__(
        self, context: IChannelHost, name: str, message_type: MessageType | str = OBJECT
    ) -> None:
        self._callbacks: list[Callable[[Any], object]] = []
        self.errors: list[Exception] = []
        super().__init__(context, name, message_type)

    def send(self, value: Any) -> None:
        """Set the channel's value everywhere."""
        if self.closed:
            raise RuntimeError(f"state channel {self.name!r} is closed")
        denial = self.denial(SET_STATE)
        if denial is not None:
            raise denial
        mtype = self.message_type
        self.context.node.state.set(self.channel_id, mtype.tag, mtype.encode(value))

    def recv(self) -> Any:
        """The current value (None if nobody has set one yet)."""
        denial = self.denial(SUBSCRIBE)
        if denial is not None:
            raise denial
        current = self.context.node.state.current(self.channel_id)
        if current is None:
            return None
        _version, tag, payload = current
        if tag != self.message_type.tag:
            raise self.mismatch(tag)
        return self.message_type.decode(payload)

    @property
    def version(self) -> tuple[int, int] | None:
        current = self.context.node.state.current(self.channel_id)
        return current[0] if current else None

    def subscribe(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(value)`` on every change."""
        self._callbacks.append(callback)

    def mismatch(self, tag: int) -> Exception:
        """The error for a value of another message type (``tag``) on this channel."""
        return MessageTypeError(
            f"state channel {self.name!r} holds a {type_name_for_tag(tag)} value but this end "
            f"expects {self.message_type.name}"
        )

    def changed(self, tag: int, payload: bytes) -> None:
        """IStateEnd: the channel's value changed."""
        if not self._callbacks:
            return
        if tag != self.message_type.tag:
            self.errors.append(self.mismatch(tag))
            return
        value = self.message_type.decode(payload)
        for callback in self._callbacks:
            try:
                callback(value)
            except Exception:  # noqa: BLE001
                log.failure("state callback on {name} failed", name=self.name)
