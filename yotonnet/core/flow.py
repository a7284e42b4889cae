"""Flow control: per-(link, channel) byte credit, hop by hop.

Sans-IO: no Twisted import. Each node may send a neighbour at most a window
of bytes per channel that the neighbour has not yet released; the neighbour
releases bytes once every local holder let go of them (each downstream link
they were forwarded to has had them written, each lossless subscriber has
taken them) and tells the sender with a CREDIT frame. So a slow lossless
subscriber slows the node before it, which slows the node before that, back
to the publisher, while every node's memory stays within a window per
channel and upstream link, and other channels on the same links go on.

* :class:`Hold` ties received bytes to the upstream that must be credited
  when the last holder lets go.
* :class:`Outbox` is what one link may still send on one channel, and the
  frames waiting for more credit, in order.
* :class:`PeerFlow` is the flow state of one link: its outboxes (sending
  side) and the credit owed to it (receiving side).

Credit is the receiver's promise, not a licence: a peer may return only
bytes it was sent (:meth:`PeerFlow.grant` refuses more, as HTTP/2 and QUIC
treat over-granted credit as a protocol error), and a sender whose
transport cannot take more (``paused``) queues instead of writing, however
much credit it holds, so a receiver that never reads costs a bounded
amount of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFAULT_WINDOW", "MIN_WINDOW", "MAX_WINDOW", "Hold", "Outbox", "PeerFlow", "CreditError",
]

#: bytes per (link, channel) a sender may have unreleased at its neighbour
DEFAULT_WINDOW = 4 << 20
#: the range a node may announce in its HELLO
MIN_WINDOW, MAX_WINDOW = 4096, 1 << 30


class CreditError(ValueError):
    """A peer returned credit for more bytes than it was sent."""


class Hold:
    """Bytes received from ``owner`` on ``channel``, kept until every holder lets go.

    It starts with one reference, the receiver's own while it hands the bytes
    out; each holder adds one; ``on_release(hold)`` runs when the last goes.
    """

    __slots__ = ("owner", "channel", "size", "refs", "on_release")

    def __init__(
        self, owner: Any, channel: int, size: int, on_release: Callable[[Hold], None]
    ) -> None:
        #: the upstream to credit (a link), or None for a local publisher
        self.owner = owner
        self.channel = channel
        self.size = size
        self.refs = 1
        self.on_release = on_release

    def ref(self) -> None:
        self.refs += 1

    def unref(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.on_release(self)


class Outbox:
    """Sending side of one (link, channel)."""

    __slots__ = ("credit", "queue", "queued")

    def __init__(self, credit: int) -> None:
        #: bytes that may still be sent; a send may overdraw it once (a frame or run)
        self.credit = credit
        #: (data, size, hold) waiting for credit, in send order; data is encoded frames,
        #: or a (header, payload) pair of one large frame for a link with send_pair
        #: (IPeer.lets_cork_out), queued by a local publisher without joining them
        self.queue: deque[tuple[bytes, int, Hold | None]] = deque()
        self.queued = 0


class PeerFlow:
    """Flow state of one link.

    ``window`` is the peer's receive window (the credit each new outbox starts
    with); ``receive_window`` is this node's, which sets when credit goes back.
    """

    def __init__(self, window: int, receive_window: int) -> None:
        self.window = window
        self.receive_window = receive_window
        # Credit goes back in chunks of a quarter window: one CREDIT frame per
        # quarter instead of one per read, and the sender is not left idle
        # waiting for it (it still has the other three quarters).
        self.threshold = max(1, receive_window // 4)
        self.outboxes: dict[int, Outbox] = {}
        self.owed: dict[int, int] = {}
        #: the transport holds more than it can send now: queue rather than write
        self.paused = False

    def agree(self, peer_window: int) -> None:
        """The peer announced ``peer_window``: both ends use the smaller of the two, so a
        peer can never make this node buffer more than its own window, and the credit we
        return comes in quarters of the window the peer really uses."""
        agreed = min(peer_window, self.receive_window)
        self.window = agreed
        self.threshold = max(1, agreed // 4)

    # --- sending side

    def outbox(self, channel: int) -> Outbox:
        box = self.outboxes.get(channel)
        if box is None:
            box = self.outboxes[channel] = Outbox(self.window)
        return box

    def take(self, channel: int, size: int) -> bool:
        """Spend credit for ``size`` bytes now, if nothing waits before them (a send may
        overdraw it once). PubSub.publish writes this test out for its targets."""
        box = self.outboxes.get(channel)
        if box is None:
            box = self.outboxes[channel] = Outbox(self.window)
        if box.credit <= 0 or box.queue or self.paused:
            return False
        box.credit -= size
        return True

    def can_send(self, channel: int) -> bool:
        box = self.outboxes.get(channel)
        return not self.paused and (box is None or (box.credit > 0 and not box.queue))

    def enqueue(self, channel: int, data: bytes, size: int, hold: Hold | None) -> None:
        """Keep ``data`` until credit allows it; ``hold`` (if any) gains a reference."""
        box = self.outbox(channel)
        box.queue.append((data, size, hold))
        box.queued += size
        if hold is not None:
            hold.refs += 1

    def enqueue_newest(self, channel: int, data: bytes, size: int, limit: int) -> int:
        """Keep ``data`` for a ``latest`` flow: past ``limit`` queued bytes the oldest
        entries go (always keeping the newest); returns how many went."""
        box = self.outbox(channel)
        queue = box.queue
        queue.append((data, size, None))
        box.queued += size
        dropped = 0
        while box.queued > limit and len(queue) > 1:
            box.queued -= queue.popleft()[1]
            dropped += 1
        return dropped

    def grant(self, channel: int, amount: int, joined: bool = False) -> list[Any]:
        """Credit arrived: the queued data that may now go, in order (``joined``: see
        :meth:`ready`).

        Raises :class:`CreditError` when the peer returns more than it was sent
        (nothing on the channel, or more than the window's worth outstanding)."""
        box = self.outboxes.get(channel)
        if box is None or box.credit + amount > self.window:
            outstanding = 0 if box is None else self.window - box.credit
            raise CreditError(
                f"CREDIT of {amount} bytes on channel {channel:016x}, but only {outstanding} "
                "sent bytes wait for it: credit may only return bytes that were sent"
            )
        box.credit += amount
        return self.ready(channel, joined)

    def ready(self, channel: int, joined: bool = False) -> list[Any]:
        """The queued data of ``channel`` that credit and the transport allow now.

        With ``joined`` (a channel published on this node: its entries without a hold
        are its own frames, one source), consecutive such entries come as one block of
        bytes, so a link sends them once rather than frame by frame.
        """
        box = self.outboxes.get(channel)
        if box is None:
            return []
        ready: list[Any] = []
        queue = box.queue
        own: list[bytes] = []
        while queue and box.credit > 0 and not self.paused:
            data, size, hold = queue.popleft()
            box.queued -= size
            box.credit -= size
            if joined and hold is None and type(data) is bytes:
                own.append(data)
                continue
            if own:
                ready.append(own[0] if len(own) == 1 else b"".join(own))
                own = []
            ready.append(data)
            if hold is not None:
                hold.unref()
        if own:
            ready.append(own[0] if len(own) == 1 else b"".join(own))
        return ready

    def queued(self, channel: int) -> int:
        box = self.outboxes.get(channel)
        return box.queued if box is not None else 0

    def drop(self, channel: int | None = None) -> int:
        """Forget queued data (of one channel, or all); returns how many entries went."""
        channels = list(self.outboxes) if channel is None else [channel]
        dropped = 0
        for chan in channels:
            box = self.outboxes.get(chan)
            if box is None:
                continue
            while box.queue:
                _, size, hold = box.queue.popleft()
                box.queued -= size
                dropped += 1
                if hold is not None:
                    hold.unref()
        return dropped

    # --- receiving side

    def owe(self, channel: int, amount: int) -> int:
        """Bytes received on ``channel`` were released: how much credit to send now (0: wait)."""
        owed = self.owed.get(channel, 0) + amount
        if owed >= self.threshold:
            self.owed[channel] = 0
            return owed
        self.owed[channel] = owed
        return 0
