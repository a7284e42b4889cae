"""Publish/subscribe: N publishers to M subscribers, each publisher's order kept.

Delivery is lossless by default: a subscriber that does not keep up holds
back credit (see :mod:`yotonnet.core.flow`), which slows every node on the way
back to the publisher. ``PubChannel`` is a Twisted ``IConsumer``: a push
producer registered on it is paused when credit runs out and resumed when it
returns, and ``ready()`` gives a Deferred for the same moment. A subscriber
with ``policy="latest"`` never slows anyone: it keeps the newest ``keep``
messages and counts the ones it drops.

A subscriber is the core's :class:`~yotonnet.core.interfaces.ISubscriberEnd`:
whichever way messages arrive (one frame, a run of decoded frames, a block
still in the received buffer), they become ``(sequence, payload)`` items for
one delivery loop (:meth:`SubChannel.take`), which checks each publisher's
order, decodes and hands over.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain
from operator import length_hint
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from ..core.interfaces import IPublisherEnd, ISubscriberEnd
from ..core.messages import (
    BINARY,
    TEXT,
    DecodeError,
    MessageType,
    MessageTypeError,
    type_name_for_tag,
)
from ..core.names import channel_id, validate_channel_name
from ..core.node import PUB
from ..core.routing import SUB
from ..core.wire import HEADER_SIZE, SEQ_OFFSET, cached_layouts
from ..security.authz import PUBLISH, SUBSCRIBE
from .base import Channel

if TYPE_CHECKING:
    from ..core.flow import Hold
    from ..core.repair import Gap
    from ..core.wire import Frame, Run
    from ..mesh.interfaces import IChannelHost

log = Logger(namespace="yotonnet.pubsub")

_SEQ = struct.Struct("<Q")
_DECODE_BINARY = BINARY.decode
_ENCODE_BINARY = BINARY.encode
#: the layout of one frame of that size: (seq, payload), the rest skipped
_layout = cached_layouts(lambda stride, _: f"<{SEQ_OFFSET}xQ{stride - HEADER_SIZE}s")


class _Open:
    """Stands for the link of messages that came by none (never closing)."""

    closing = False


_OPEN = _Open()

LOSSLESS = "lossless"
LATEST = "latest"
POLICIES = (LOSSLESS, LATEST)


@implementer(IConsumer, IPublisherEnd)
class PubChannel(Channel):
    """The sending end of a pub/sub channel.

    ``send()`` never blocks. While some lossless subscriber lags, messages
    wait in this node's queues; once more than ``publish_backlog`` bytes wait
    for one neighbour (``ContextConfig``), ``send()`` raises
    :class:`~yotonnet.errors.FlowControlError` and sends nothing until the
    backlog drains. To stay under it, send when ``ready()`` fires or register
    a producer.
    """

    pattern = "pubsub"
    role = PUB
    operations = ((PUBLISH, "pubsub"),)

    def __init__(
        self, context: IChannelHost, name: str, message_type: MessageType | str = TEXT
    ) -> None:
        self._producer: IProducer | None = None
        self._streaming = True
        #: a pull producer is registered (each send asks it for the next write)
        self._pulled = False
        self._paused = False
        self._pull_scheduled = False
        self._ready_waiters: list[defer.Deferred[None]] = []
        # (set again once the end is registered; a denial may come before that)
        self._binary = self._plain = False
        #: the channel can take more (see pause and resume)
        self._ready = True
        #: the id of this channel's flow to ``latest`` subscribers (known before the end
        #: registers: a leaf tells its hub of both flows)
        self.latest_id = channel_id("latest", validate_channel_name(name))
        super().__init__(context, name, message_type)
        self._encode = self.message_type.encode
        #: BINARY: bytes go as they are (what its encoder returns for them)
        self._binary = self._encode is _ENCODE_BINARY
        self._tag = self.message_type.tag
        pubsub = context.node.pubsub
        self._pubsub = pubsub
        self._publish = pubsub.publish
        self._publish_latest = pubsub.publish_latest
        self._latest_idle = pubsub.latest_idle
        self._not_ready = pubsub.not_ready
        self._ready = self.channel_id not in self._not_ready
        #: send() may take its short way (see _update_plain)
        self._update_plain()

    def send(self, message: Any) -> None:
        """Publish one message to every current subscriber."""
        if self._plain and type(message) is bytes:
            # The commonest case, written out: bytes on an open BINARY channel that can
            # take more, no pull producer (the general way below, without its tests and
            # the encoder call).
            self._publish(self.channel_id, self._tag, message)
            if self.latest_id not in self._latest_idle:
                self._publish_latest(self.latest_id, self._tag, message)
            return
        if self.closed:
            raise RuntimeError(f"publisher on {self.name!r} is closed")
        if self.denied is not None:
            raise self.denied
        channel = self.channel_id
        if channel in self._not_ready:
            self._check_backlog(channel)
        payload = message if type(message) is bytes and self._binary else self._encode(message)
        self._publish(channel, self._tag, payload)
        if self.latest_id not in self._latest_idle:  # (most channels have no latest subscriber)
            self._publish_latest(self.latest_id, self._tag, payload)
        if self._pulled:
            self._schedule_pull()

    def _check_backlog(self, channel: int) -> None:
        why = self._pubsub.backlog_exceeded(channel)
        if why is not None:
            raise errors.FlowControlError(
                f"channel {self.name!r}: {why}; wait for ready() or register a producer"
            )

    def _update_plain(self) -> None:
        """See whether ``send`` may take its short way (see there)."""
        self._plain = (self._binary and not self.closed and self.denied is None
                       and not self._pulled and self._ready)

    def deny(self, operation: str, error: errors.PermissionDenied) -> None:
        super().deny(operation, error)
        self._update_plain()

    def send_encoded(self, payload: bytes) -> None:
        """Publish an encoded message on both flows: lossless, and latest if anyone listens."""
        self._publish(self.channel_id, self._tag, payload)
        if self.latest_id not in self._latest_idle:  # (most channels have no latest subscriber)
            self._publish_latest(self.latest_id, self._tag, payload)

    #: IConsumer.write: a producer's output is published message by message
    write = send

    @property
    def writable(self) -> bool:
        """True when every target can take more now (sending is always possible up to
        the backlog bound, but beyond this point messages wait in memory)."""
        return self.channel_id not in self._not_ready

    def ready(self) -> defer.Deferred[None]:
        """A Deferred that fires once every target can take more messages."""
        if self.closed:
            return defer.fail(RuntimeError(f"publisher on {self.name!r} is closed"))
        if self.writable:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._ready_waiters.remove)
        self._ready_waiters.append(d)
        return d

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        """Pace ``producer`` to the slowest lossless subscriber.

        A streaming (push) producer gets ``pauseProducing()`` when credit runs
        out and ``resumeProducing()`` when it returns; a pull producer gets
        ``resumeProducing()`` whenever it may write once more.
        """
        if self._producer is not None:
            raise RuntimeError(f"publisher on {self.name!r} already has a producer")
        if self.closed:
            raise RuntimeError(f"publisher on {self.name!r} is closed")
        self._producer = producer
        self._streaming = bool(streaming)
        self._pulled = not self._streaming
        self._update_plain()
        self._paused = False
        if self._streaming:
            if not self.writable:
                self.pause()
        else:
            self._schedule_pull()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None
        self._pulled = False
        self._paused = False
        self._update_plain()

    def pause(self) -> None:
        """IPublisherEnd: some target's credit ran out."""
        self._ready = False
        self._update_plain()
        producer = self._producer
        if producer is not None and self._streaming and not self._paused:
            self._paused = True
            self.context.counters["producer_pauses"] += 1
            producer.pauseProducing()

    def resume(self) -> None:
        """IPublisherEnd: every target can take more again."""
        self._ready = True
        self._update_plain()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)
        producer = self._producer
        if producer is None:
            return
        if self._streaming:
            if self._paused:
                self._paused = False
                producer.resumeProducing()
        else:
            self._schedule_pull()

    def _schedule_pull(self) -> None:
        if not self._pull_scheduled and self.writable:
            self._pull_scheduled = True
            node = self.context.node
            # Nobody subscribes: ask again later rather than spin the reactor sending to
            # nobody at full speed.
            idle = not node.pubsub.subscribers.get(self.channel_id) and not (
                node.topology.targets(node.node_id, self.channel_id))
            self.context.reactor.callLater(self.IDLE_PULL_DELAY if idle else 0, self._pull)

    #: seconds between calls to a pull producer while the channel has no subscriber
    IDLE_PULL_DELAY = 0.1

    def _pull(self) -> None:
        self._pull_scheduled = False
        if self._producer is not None and not self._streaming and self.writable:
            self._producer.resumeProducing()

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        producer, self._producer = self._producer, None
        self._pulled = False
        self._update_plain()
        if producer is not None:
            producer.stopProducing()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(RuntimeError(f"publisher on {self.name!r} closed"))

    @property
    def subscribers(self) -> int:
        """How many subscribers (lossless and latest) the mesh currently knows of."""
        return self.context.interest_count((self.channel_id, self.latest_id), SUB)

    def wait_for_subscribers(self, count: int = 1) -> defer.Deferred[None]:
        """Fire once at least ``count`` subscribers are reachable (subscriptions are confirmed
        end to end, so nothing sent after this fires is missed by them)."""
        return self.context.wait_for_interest((self.channel_id, self.latest_id), SUB, count)


@implementer(ISubscriberEnd)
class SubChannel(Channel):
    """The receiving end: ``recv()``, ``subscribe(callback)`` or ``async for``.

    ``policy="lossless"`` (default): every message is kept until taken, and a
    subscriber that lags slows its publishers. A callback that returns a
    Deferred gets the next message only once that Deferred fires.
    ``policy="latest"``: only the newest ``keep`` untaken messages are kept;
    ``dropped`` counts the others.

    A lossless subscriber gets every message of each publisher once and in order,
    across cut links and re-dials, while the publisher's node can still send
    again what went missing (see yotonnet.core.repair). A range it never will
    is reported, never skipped silently: ``missed`` counts such messages,
    ``gaps`` keeps the last :data:`MAX_GAPS` of them (each a
    :class:`~yotonnet.core.repair.Gap`: source, first, last, count, reason), and
    callbacks given to :meth:`watch_gaps` are called with each.
    """

    #: how many recent gaps ``gaps`` keeps
    MAX_GAPS = 100

    pattern = "pubsub"
    role = SUB

    def __init__(
        self,
        context: IChannelHost,
        name: str,
        message_type: MessageType | str = TEXT,
        *,
        policy: str = LOSSLESS,
        keep: int = 1000,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, not {keep!r}")
        self.policy = policy
        self.keep = keep
        self._lossless = policy == LOSSLESS
        if not self._lossless:
            # Latest subscribers get their own flow, so no lossless backlog delays them.
            self.pattern = "latest"
        self.operations = ((SUBSCRIBE, self.pattern),)
        # (value, bytes, hold) not yet taken; a latest subscriber's is bounded
        self._queue: deque[tuple[Any, int, Hold | None]] = deque(
            maxlen=None if self._lossless else keep
        )
        self._waiters: deque[defer.Deferred[Any]] = deque()
        self._callbacks: list[Callable[[Any], object]] = []
        self._busy: defer.Deferred[Any] | None = None
        self._last_seq: dict[int, int] = {}
        #: the node the messages being taken come from (see IdentifiedSubChannel)
        self.source = 0
        self.received = 0
        self.discarded = 0
        self.dropped = 0
        self.missed = 0
        #: the most recent ranges given up (yotonnet.core.repair.Gap), oldest first
        self.gaps: list[Gap] = []
        self._gap_watchers: list[Callable[[Gap], object]] = []
        #: bytes of lossless messages received but not yet taken
        self.backlog = 0
        self.errors: list[Exception] = []
        #: the one callback while the commonest case holds (see _settle), else None
        self._one: Callable[[Any], object] | None = None
        super().__init__(context, name, message_type)
        self._decode = self.make_decoder()
        self._tag = self.message_type.tag
        self._settle()

    def _settle(self) -> None:
        """Note whether the commonest subscriber applies now: open, BINARY payloads (handed
        over as they are), one callback, none busy, nothing queued. Called wherever one of
        these may have changed; :meth:`_take_numbered` checks only this after each call."""
        callbacks = self._callbacks
        self._one = (
            callbacks[0]
            if len(callbacks) == 1 and self._busy is None and not self._queue
            and not self.closed and self._decode is _DECODE_BINARY
            else None
        )

    def make_decoder(self) -> Callable[[bytes], Any]:
        """How a payload becomes the value handed over (while it is taken, ``source`` is
        the node it came from); a subclass may wrap the message type's decoder."""
        return self.message_type.decode

    # --- ISubscriberEnd: messages arrive

    def deliver(self, frame: Frame, hold: Hold | None = None) -> None:
        """One message (a local publisher's, or a frame no run holds)."""
        self.take(frame[4], frame[2], ((frame[6], frame[7]),), None, hold)

    def deliver_run(self, frames: list[Frame], peer: Any, hold: Hold | None = None) -> None:
        """Frames of one source and channel, as decoded."""
        first = frames[0]
        self.take(first[4], first[2], [(f[6], f[7]) for f in frames], peer, hold)

    def deliver_block(self, run: Run, peer: Any, hold: Hold | None = None) -> None:
        """A :class:`~yotonnet.core.wire.Run`: each payload is cut from the received buffer
        here, the only place that needs it (a forwarder never does). Frames of one size
        are split in C: for the commonest subscriber, when they are the next ones of
        their source in order, as payloads alone (:meth:`_take_numbered`); else
        ``struct.iter_unpack`` gives each frame's seq and payload."""
        _, _, tag, _, source, _, first, buf, start, end, _, stride, offsets = run
        items: Iterable[tuple[int, bytes]]
        if stride:
            one = self._one
            if (
                one is not None
                and tag == self._tag
                and first == self._last_seq.get(source, 0) + 1
                and (peer is None or not peer.closing)
                and run.numbered()
            ):
                self._take_numbered(one, source, first, run.payloads(), peer, hold)
                return
            items = _layout(stride, 1).iter_unpack(memoryview(buf)[start:end])
        else:
            assert offsets is not None
            seq_at = _SEQ.unpack_from
            items = [
                (seq_at(buf, a + SEQ_OFFSET)[0], buf[a + HEADER_SIZE : b])
                for a, b in zip(offsets, [*offsets[1:], end], strict=True)
            ]
        self.take(source, tag, items, peer, hold)

    def _take_numbered(
        self, one: Callable[[Any], object], source: int, first: int,
        payloads: tuple[bytes, ...] | list[bytes], peer: Any, hold: Hold | None,
    ) -> None:
        """:meth:`take` for the commonest subscriber (``one``, its callback, see
        :meth:`_settle`) given ``source``'s next messages in order, numbered ``first``,
        ``first + 1``, ...: per message only the count, the call and a look at what may
        have changed meanwhile (what the callback returned, the subscriber, the link).
        The last sequence number is noted once, after the last call. Anything else (a
        Deferred, this end or the link closing, callbacks changing) goes on in
        :meth:`take` from the next message, as there."""
        self.source = source
        link = peer if peer is not None else _OPEN
        it = iter(payloads)
        try:
            while True:
                for payload in it:
                    self.received += 1
                    try:
                        result = one(payload)
                    except Exception:  # noqa: BLE001 - a bad callback must not stop delivery
                        log.failure("subscriber callback on {name} failed", name=self.name)
                        result = None
                    if result is not None or self._one is not one or link.closing:
                        break
                else:
                    return
                # (None first: isinstance() against Deferred, an Awaitable ABC, is slow)
                if result is not None and isinstance(result, defer.Deferred):
                    self._wait_for(result)
                elif self._one is one and not link.closing:
                    continue  # it returned something else: go on
                break
        finally:
            done = len(payloads) - length_hint(it)
            if done:
                self._last_seq[source] = first + done - 1
        if done < len(payloads):
            self.take(source, self._tag, zip(range(first + done, first + len(payloads)),
                                             payloads[done:]), peer, hold)

    def take(
        self, source: int, tag: int, items: Iterable[tuple[int, bytes]], peer: Any,
        hold: Hold | None,
    ) -> None:
        """The one delivery loop: ``(sequence, payload)`` items of one ``source``, each
        checked against that publisher's order (a duplicate or a straggler of an older
        route is discarded, a gap counted), decoded and handed over. Stops, as per-frame
        dispatch would, once this end closes or ``peer``'s link starts closing (both can
        happen in a callback)."""
        if tag != self._tag:
            self.bad_message(MessageTypeError(
                f"channel {self.name!r}: node {source:016x} publishes "
                f"{type_name_for_tag(tag)} messages but this subscriber expects "
                f"{self.message_type.name}; use the same message type on both ends"
            ))
            return
        self.source = source
        decode = self._decode
        same = decode is _DECODE_BINARY  # BINARY payloads are handed over as they are
        callbacks = self._callbacks
        last_seq = self._last_seq
        last = last_seq.get(source, 0)
        items = iter(items)
        if same and len(callbacks) == 1 and self._busy is None and not self._queue:
            # The commonest subscriber written out: BINARY payloads in order, one
            # callback. Anything else (a message out of order, this end or the link
            # closing, a callback that returns a Deferred or subscribes another) goes on
            # in the general loop below, from the message it concerns.
            for seq, payload in items:
                if seq != last + 1 or self.closed or (peer is not None and peer.closing):
                    items = chain(((seq, payload),), items)
                    break
                last = last_seq[source] = seq
                self.received += 1
                try:
                    result = callbacks[0](payload)
                except Exception:  # noqa: BLE001 - a bad callback must not stop delivery
                    log.failure("subscriber callback on {name} failed", name=self.name)
                    result = None
                # (None first: isinstance() against Deferred, an Awaitable ABC, is slow)
                if result is not None and isinstance(result, defer.Deferred):
                    self._wait_for(result)
                    break
                if len(callbacks) != 1 or self._busy is not None:
                    break
            else:
                return
        for seq, payload in items:
            if self.closed or (peer is not None and peer.closing):
                return
            if seq != last + 1:
                if seq <= last:
                    self.discarded += 1  # a duplicate or a straggler from an older route
                    continue
                if last:
                    if self._lossless:
                        self.missed += seq - last - 1
                    else:  # the latest flow gave older messages up for newer ones
                        self.dropped += seq - last - 1
            last = last_seq[source] = seq
            if same:
                value = payload
            else:
                try:
                    value = decode(payload)
                except (DecodeError, ValueError) as e:
                    self.bad_message(DecodeError(f"channel {self.name!r}: {e}"))
                    continue
            if len(callbacks) == 1 and self._busy is None and not self._queue:
                # hand_over written out for the commonest subscriber: one callback.
                self.received += 1
                try:
                    result = callbacks[0](value)
                except Exception:  # noqa: BLE001 - a bad callback must not stop delivery
                    log.failure("subscriber callback on {name} failed", name=self.name)
                    continue
                # (None first: isinstance() against Deferred, an Awaitable ABC, is slow)
                if result is not None and isinstance(result, defer.Deferred):
                    self._wait_for(result)
            else:
                self._hand_over(value, HEADER_SIZE + len(payload), hold)

    def _hand_over(self, value: Any, size: int, hold: Hold | None) -> None:
        """Give a decoded message to the callbacks, a waiting recv(), or the queue."""
        self.received += 1
        if self._callbacks and self._busy is None and not self._queue:
            self._call_back(value)
        elif self._waiters:
            self._waiters.popleft().callback(value)
        elif self._lossless:
            self._queue.append((value, size, hold))
            self.backlog += size
            if hold is not None:
                hold.refs += 1
        else:
            if len(self._queue) == self.keep:
                self.dropped += 1
            self._queue.append((value, 0, None))

    def _call_back(self, value: Any) -> None:
        waits = []
        for callback in self._callbacks:
            try:
                result = callback(value)
            except Exception:  # noqa: BLE001 - a bad callback must not stop delivery
                log.failure("subscriber callback on {name} failed", name=self.name)
                continue
            if result is not None and isinstance(result, defer.Deferred):
                waits.append(result)
        if waits:
            busy = waits[0] if len(waits) == 1 else defer.DeferredList(waits)
            self._wait_for(busy)

    def _wait_for(self, busy: defer.Deferred[Any]) -> None:
        """A callback returned ``busy``: nothing more is handed over until it fires."""
        self._busy = busy
        self._one = None
        busy.addBoth(self._callback_done)

    def _callback_done(self, result: Any) -> None:
        if isinstance(result, Failure):
            log.failure("subscriber callback on {name} failed", result, name=self.name)
        self._busy = None
        # Messages that arrived meanwhile, in order, until a callback is busy again.
        while self._queue and self._callbacks and self._busy is None and not self.closed:
            value, size, hold = self._queue.popleft()
            self._taken(size, hold)
            self._call_back(value)
        self._settle()

    def _taken(self, size: int, hold: Hold | None) -> None:
        if size:
            self.backlog -= size
            if hold is not None:
                hold.unref()

    def lost(self, gap: Gap) -> None:
        """ISubscriberEnd: messages ``gap.first`` to ``gap.last`` of ``gap.source`` will
        never come: counted in ``missed``, kept in ``gaps``, logged and told to watchers."""
        if self.closed:
            return
        self.missed += gap.count
        self.gaps.append(gap)
        del self.gaps[:-self.MAX_GAPS]
        if self._last_seq.get(gap.source, 0) < gap.last:
            self._last_seq[gap.source] = gap.last  # what follows the gap is in order
        log.warn(
            "channel {name}: {count} messages of node {source:016x} (sequence {first} to "
            "{last}) are lost ({reason})", name=self.name, count=gap.count, source=gap.source,
            first=gap.first, last=gap.last, reason=gap.reason,
        )
        for watcher in list(self._gap_watchers):
            try:
                watcher(gap)
            except Exception:  # noqa: BLE001 - a bad watcher must not stop delivery
                log.failure("gap watcher on {name} failed", name=self.name)

    def restarted(self, source: int, last: int) -> None:
        """ISubscriberEnd: ``source`` restarted and numbers its messages anew after
        ``last``; the jump is not a gap (see yotonnet.core.repair)."""
        self._last_seq[source] = last

    def watch_gaps(self, callback: Callable[[Gap], object]) -> Callable[[], None]:
        """Call ``callback(gap)`` for each range of messages that will never come; returns
        a function that stops it."""
        self._gap_watchers.append(callback)
        return lambda: self._gap_watchers.remove(callback) if (
            callback in self._gap_watchers) else None

    def bad_message(self, error: Exception) -> None:
        """A message could not be taken (wrong type, undecodable): keep the error, log it
        and give it to the next waiter."""
        self.errors.append(error)
        del self.errors[:-10]
        log.error("{error}", error=str(error))
        if self._waiters:
            self._waiters.popleft().errback(error)

    # --- taking messages

    def recv(self) -> defer.Deferred[Any]:
        """A Deferred for the next message."""
        if self.denied is not None:
            return defer.fail(self.denied)
        if self._queue:
            value, size, hold = self._queue.popleft()
            self._taken(size, hold)
            self._settle()
            return defer.succeed(value)
        d: defer.Deferred[Any] = defer.Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def deny(self, operation: str, error: errors.PermissionDenied) -> None:
        super().deny(operation, error)
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(error)

    def subscribe(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(message)`` for every message, starting with any queued ones.

        If it returns a Deferred, the next message waits until that fires (a
        lossless subscriber then slows its publishers to its own pace).
        """
        self._callbacks.append(callback)
        self._settle()
        while self._queue and self._busy is None and not self.closed:
            value, size, hold = self._queue.popleft()
            self._taken(size, hold)
            self._call_back(value)
        self._settle()

    def unsubscribe(self, callback: Callable[[Any], object]) -> None:
        self._callbacks.remove(callback)
        self._settle()

    @property
    def pending(self) -> int:
        """Messages received but not yet taken by ``recv()``."""
        return len(self._queue)

    def close(self) -> None:
        """Leave the channel. Messages already here stay readable with ``recv()``, but no
        longer hold back their publishers."""
        if self.closed:
            return
        super().close()
        kept = deque()
        while self._queue:
            value, size, hold = self._queue.popleft()
            self._taken(size, hold)
            kept.append((value, 0, None))
        self._queue = kept
        self._settle()

    def __aiter__(self) -> SubChannel:
        return self

    async def __anext__(self) -> Any:
        return await self.recv()
