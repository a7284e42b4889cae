"""Publish/subscribe: N publishers to M subscribers, each publisher's order kept."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from ..messages import TEXT, DecodeError, MessageType, MessageTypeError, type_name_for_tag
from ..routing import SUB
from .base import Channel

if TYPE_CHECKING:
    from ..context import Context
    from ..wire import Frame

log = Logger(namespace="yotonnet.pubsub")


class PubChannel(Channel):
    """The sending end of a pub/sub channel."""

    pattern = "pubsub"

    def __init__(
        self, context: Context, name: str, message_type: MessageType | str = TEXT
    ) -> None:
        super().__init__(context, name, message_type)
        self._encode = self.message_type.encode
        self._tag = self.message_type.tag
        self._publish = context._publish

    def send(self, message: Any) -> None:
        """Publish one message to every current subscriber."""
        if self.closed:
            raise RuntimeError(f"publisher on {self.name!r} is closed")
        self._publish(self.channel_id, self._tag, self._encode(message))

    @property
    def subscribers(self) -> int:
        """How many subscribers the mesh currently knows of."""
        return self.context.interest_count(self.channel_id, SUB)

    def wait_for_subscribers(self, count: int = 1) -> defer.Deferred[None]:
        """Fire once at least ``count`` subscribers are reachable (subscriptions are confirmed
        end to end, so nothing sent after this fires is missed by them)."""
        return self.context.wait_for_interest(self.channel_id, SUB, count)


class SubChannel(Channel):
    """The receiving end: ``recv()``, ``subscribe(callback)`` or ``async for``."""

    pattern = "pubsub"
    table = "_subs"

    def __init__(
        self, context: Context, name: str, message_type: MessageType | str = TEXT
    ) -> None:
        self._queue: deque[Any] = deque()
        self._waiters: deque[defer.Deferred[Any]] = deque()
        self._callbacks: list[Callable[[Any], object]] = []
        self._last_seq: dict[int, int] = {}
        self.received = 0
        self.discarded = 0
        self.errors: list[Exception] = []
        super().__init__(context, name, message_type)
        self._decode = self.message_type.decode
        self._tag = self.message_type.tag

    def _deliver(self, frame: Frame) -> None:
        if frame.tag != self._tag:
            self._fail(
                MessageTypeError(
                    f"channel {self.name!r}: node {frame.source:016x} publishes "
                    f"{type_name_for_tag(frame.tag)} messages but this subscriber expects "
                    f"{self.message_type.name}; use the same message type on both ends"
                )
            )
            return
        last = self._last_seq.get(frame.source, 0)
        if frame.seq <= last:
            self.discarded += 1  # a duplicate or a straggler from an older route
            return
        self._last_seq[frame.source] = frame.seq
        try:
            value = self._decode(frame.payload)
        except (DecodeError, ValueError) as e:
            self._fail(DecodeError(f"channel {self.name!r}: {e}"))
            return
        self._hand_over(value)

    def _hand_over(self, value: Any) -> None:
        """Give a decoded message to the callbacks, a waiting recv(), or the queue."""
        self.received += 1
        if self._callbacks:
            for callback in self._callbacks:
                try:
                    callback(value)
                except Exception:  # noqa: BLE001 - a bad callback must not stop delivery
                    log.failure("subscriber callback on {name} failed", name=self.name)
        elif self._waiters:
            self._waiters.popleft().callback(value)
        else:
            self._queue.append(value)

    def _deliver_run(self, frames: list[Frame], link: Any) -> None:
        """_deliver for consecutive frames of one source: locals bound once per run.

        Stops, as per-frame dispatch would, once this end is closed or the link
        they came on starts closing (both can happen in a callback).
        """
        if len(frames) == 1:
            self._deliver(frames[0])
            return
        my_tag = self._tag
        decode = self._decode
        hand_over = self._hand_over
        source = frames[0][4]
        last_seq = self._last_seq
        for frame in frames:
            if self.closed or link._closing:
                return
            _, _, tag, _, _, _, seq, payload, _ = frame
            if tag != my_tag or seq <= last_seq.get(source, 0):
                self._deliver(frame)  # the rare paths: type mismatch, duplicate
                continue
            last_seq[source] = seq
            try:
                value = decode(payload)
            except (DecodeError, ValueError) as e:
                self._fail(DecodeError(f"channel {self.name!r}: {e}"))
                continue
            hand_over(value)

    def _fail(self, error: Exception) -> None:
        self.errors.append(error)
        del self.errors[:-10]
        log.error("{error}", error=str(error))
        if self._waiters:
            self._waiters.popleft().errback(error)

    def recv(self) -> defer.Deferred[Any]:
        """A Deferred for the next message."""
        if self._queue:
            return defer.succeed(self._queue.popleft())
        d: defer.Deferred[Any] = defer.Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def subscribe(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(message)`` for every message, starting with any queued ones."""
        self._callbacks.append(callback)
        while self._queue:
            callback(self._queue.popleft())

    def unsubscribe(self, callback: Callable[[Any], object]) -> None:
        self._callbacks.remove(callback)

    @property
    def pending(self) -> int:
        """Messages received but not yet taken by ``recv()``."""
        return len(self._queue)

    def __aiter__(self) -> SubChannel:
        return self

    async def __anext__(self) -> Any:
        return await self.recv()
