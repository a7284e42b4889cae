"""Lossless repair: what a publisher keeps, what a subscriber is owed, and the frames between.

Sans-IO. Hop-by-hop credit (:mod:`.flow`) loses nothing while a path holds;
this module keeps the promise when one breaks (a link cut, a forwarding node
killed, a leaf re-dialling), from memory alone, end to end:

* The publisher's node keeps each lossless channel's recent messages
  (:class:`Retained`, at most ``retention_bytes``) and the acknowledgement of
  each subscriber that follows it (:class:`Follower`). What every live
  follower acknowledged is dropped past a quarter of the retention (the rest
  serves a subscriber whose first acknowledgement has not arrived yet).
  While a follower is live (heard from within ``repair_wait``), the channel
  is not ready once half the retention waits for its acknowledgement (beside
  the kept quarter), so a publisher that waits for ``ready()`` never runs
  ahead of what a subscriber can still be sent again; one that does not is
  refused (``send()`` raises FlowControlError, see :meth:`Repair.full`) once
  one more message would push out what a live follower still needs.
* A subscribing node keeps, per publisher and channel, the next sequence
  number it owes its subscribers (:class:`Reader`). Messages past a gap wait
  (all readers together within ``reorder_bytes``) while it asks the publisher
  (an ACK frame with :data:`~.wire.ACK_WANT`) to send again what follows the
  last it has. The answer (RESENT frames, then a TAIL) comes over whatever
  path is current, at most ``repair_batch`` bytes at a time.
* When repair is impossible (the retention no longer holds it, the publisher
  restarted, or nothing was heard within ``repair_wait``), the subscribers
  are told the exact range given up (``ISubscriberEnd.lost``): a gap is never
  silent.

Acknowledgements go every quarter of half the retention and on each
:meth:`Repair.tick` (the node's housekeeping, once per heartbeat), which also
retries a repair that got no answer and tells a follower that stopped
acknowledging where the channel is (a TAIL), so a loss at the end of a burst
is noticed too. A change of path (a lost link, a new hub) makes every reader
ask at once.

ACK frames are routed to the publisher's node, or to the hub of a publishing
leaf (the ``root`` its messages carry), which passes them on; RESENT and TAIL
frames go back the way the ACK came (:meth:`~.topology.Topology.learn`).

Where a subscriber's stream starts: its first messages may be overtaken by
later ones (a route changed while they were on the way), so the first one to
arrive says nothing of what came before. A new reader holds what arrives and
asks (ACK_START, naming the node whose interest brings it the messages: its
own, or its hub's); the publisher's node notes, for each node that holds the
channel, the first message it published after that node's interest last
grew (:attr:`Retained.starts`), and answers with it (TAIL_START). The
subscriber starts there (or at the first it got, if earlier), asks for what
it lacks, and delivers in order. A publisher that has gone cannot answer: a
node that cannot pass the question on answers that the start is not known,
and a reader whose publisher's node becomes unreachable starts at once, at
the first message it got.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import ContextConfig
from .interfaces import IPeer
from .routing import SUB
from .wire import (
    ACK_BYE,
    ACK_START,
    ACK_WANT,
    HEADER_SIZE,
    TAIL_ANSWER,
    TAIL_START,
    Frame,
    FrameKind,
    ack_extra,
    ack_frame,
    ack_publisher,
    reencode,
    resent_frame,
    tail_body,
    tail_frame,
)

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["Repair", "Retained", "Block", "Follower", "Reader", "Gap", "RETRY"]

#: seconds before a repair request without an answer is made again
RETRY = 1.0
#: batches' worth of bytes one subscriber may be sent again per RETRY seconds: more than
#: a subscriber asks for in a burst of route changes, and a bound on what a hostile one
#: can make a publisher send
ANSWER_BATCHES = 4
_DATA = int(FrameKind.DATA)
#: why a range was given up (Gap.reason)
RETENTION, RESTARTED, GONE = "retention", "publisher restarted", "publisher silent"


class Gap(NamedTuple):
    """Messages a subscriber will never get: ``first`` to ``last`` of ``source``."""

    source: int
    first: int
    last: int
    count: int
    reason: str


class Follower:
    """One subscriber of a channel published here, as its acknowledgements say."""

    __slots__ = ("acked", "heard", "mark", "answers", "answered_at")

    def __init__(self, acked: int, now: float) -> None:
        self.acked = acked
        self.heard = now
        #: ``acked`` at the last tick (unchanged while behind: it is told the tail)
        self.mark = acked
        #: bytes sent again to it since ``answered_at`` (see ANSWER_BATCHES)
        self.answers = 0
        self.answered_at = -RETRY


class Block:
    """Consecutive messages of one channel, kept together: one append per message, and
    what everyone has goes a block at a time."""

    __slots__ = ("first", "tag", "payloads", "size")

    def __init__(self, first: int, tag: int) -> None:
        #: the sequence number of payloads[0] (the rest follow one by one)
        self.first = first
        self.tag = tag
        self.payloads: list[bytes] = []
        #: bytes, headers counted
        self.size = 0

    @property
    def last(self) -> int:
        return self.first + len(self.payloads) - 1


class Retained:
    """The recent messages of one lossless channel published here, oldest first.

    The publish path appends to :attr:`current` and adds to :attr:`size` (see
    PubSub.publish); everything else happens once :attr:`size` reaches
    :attr:`check_at` (a full block, a pause, the bound), in :meth:`Repair.retain_more`.
    """

    __slots__ = ("blocks", "current", "tag", "size", "closed", "check_at", "followers",
                 "quiet_since", "starts", "counts")

    def __init__(self, first: int, tag: int, now: float) -> None:
        block = Block(first, tag)
        self.blocks: deque[Block] = deque([block])
        #: the newest block's payloads, and its tag
        self.current = block.payloads
        self.tag = tag
        #: bytes kept, and of them those in blocks before the newest (whose ``size`` is
        #: set when the next one starts)
        self.size = 0
        self.closed = 0
        self.check_at = 0
        #: subscriber id -> Follower
        self.followers: dict[int, Follower] = {}
        #: since when no follower is live (None: some are)
        self.quiet_since: float | None = now
        #: node holding the channel -> the first message published after its interest
        #: last grew (where a new subscriber there starts), and its subscriber count
        self.starts: dict[int, int] = {}
        self.counts: dict[int, int] = {}

    @property
    def last(self) -> int:
        """The last sequence number kept (the last published here)."""
        return self.blocks[-1].last

    @property
    def oldest(self) -> int:
        """The first sequence number that can still be sent again (only the newest block
        is ever empty, and it starts after the last kept)."""
        return self.blocks[0].first

    def after(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(seq, tag, payload) of every message kept past ``seq``, in order."""
        for block in self.blocks:
            if block.last <= seq:
                continue
            start = max(0, seq + 1 - block.first)
            for i, payload in enumerate(block.payloads[start:], block.first + start):
                yield i, block.tag, payload


class Reader:
    """What one publisher owes this node's subscribers of one channel."""

    __slots__ = ("source", "channel", "via", "next", "held", "held_size", "tail",
                 "asked_at", "asked_epoch", "acked", "acked_at", "unacked", "mark", "heard",
                 "starting", "holds")

    def __init__(self, source: int, channel: int, via: int, first: int, now: float) -> None:
        self.source = source
        self.channel = channel
        #: the root its messages carry: the hub of a publishing leaf, else 0
        self.via = via
        #: the next sequence number the subscribers here are owed
        self.next = first
        #: seq -> (tag, payload): arrived past a gap
        self.held: dict[int, tuple[int, bytes]] = {}
        self.held_size = 0
        #: the last sequence number the publisher said it sent (TAIL frames)
        self.tail = 0
        self.asked_at: float | None = None
        #: the picture of the mesh it last asked under (Repair.epoch)
        self.asked_epoch = -1
        self.acked = first - 1
        self.acked_at = now
        #: bytes taken since the last ACK
        self.unacked = 0
        self.mark = first
        self.heard = now
        #: while it waits to hear where its stream starts (ACK_START): the first sequence
        #: number seen so far (``next`` is 0 meanwhile); 0 once started
        self.starting = 0
        #: the credit of what came while starting (yotonnet.core.flow.Hold), kept until
        #: it starts, so the publisher is paced meanwhile as by any slow subscriber
        self.holds: list[Any] = []

    @property
    def root(self) -> int:
        """The node ACKs are routed to: the publisher, or the hub of a publishing leaf."""
        return self.via or self.source


class Repair:
    def __init__(
        self,
        node_id: int,
        config: ContextConfig,
        topology: Topology,
        counters: dict[str, int],
        clock: Callable[[], float],
        subscribers: dict[int, list[Any]],
        check_ready: Callable[[int], None],
        seq_base: int,
        last_published: Callable[[int], int | None],
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.topology = topology
        self.counters = counters
        self.clock = clock
        #: the local subscriber ends by channel (PubSub's table)
        self.subscribers = subscribers
        self.check_ready = check_ready
        #: where this process's sequence numbers begin (see PubSub)
        self.seq_base = seq_base
        self.last_published = last_published
        #: channel id -> Retained (channels published here)
        self.retained: dict[int, Retained] = {}
        #: (source, channel) -> Reader (channels subscribed here)
        self.readers: dict[tuple[int, int], Reader] = {}
        #: bytes held past gaps, all readers together
        self.held_size = 0
        limit = config.retention_bytes
        #: the retention is kept in blocks of about this many bytes (what is dropped or
        #: pushed out goes a block at a time)
        self.block_bytes = max(512, limit // 32)
        #: what is kept of what every follower acknowledged (see _trim)
        self.keep = limit // 4
        #: a channel is held back at this many retained bytes while a follower is live:
        #: the kept quarter plus half the retention not yet acknowledged
        self.pause_at = self.keep + limit // 2
        #: a reader acknowledges after this many bytes (a quarter of what may be unacked)
        self.ack_every = max(1, limit // 8)
        #: changes of the picture so far: a request made under an older one may have
        #: taken a path that no longer is, so a new gap asks again at once
        self.epoch = 0
        self._losses_seen = topology.routing.losses
        self._hub_seen: Any = topology.hub
        for name in ("repair_asked", "repair_answered", "repair_resent", "repair_lost",
                     "repair_discarded", "repair_reorder_dropped", "retention_evicted",
                     "repair_acks", "repair_followers_lost", "repair_untracked", "repair_refused"):
            counters.setdefault(name, 0)

    # --- the publisher's side

    def retain(self, channel: int, seq: int, tag: int, payload: bytes) -> bool:
        """Keep a message published here; True when the channel should pause (a live
        follower has not acknowledged half the retention)."""
        retained = self.retained.get(channel)
        if retained is None:
            if not self.config.retention_bytes:
                return False
            retained = self.retained[channel] = Retained(seq, tag, self.clock())
            self._check_at(retained)
            self._note_holders(channel, retained)
        if tag != retained.tag:
            self._new_block(retained, seq, tag)
        retained.current.append(payload)
        retained.size += HEADER_SIZE + len(payload)
        if retained.size < retained.check_at:
            return False
        return self.retain_more(channel, retained)

    def retain_more(self, channel: int, retained: Retained) -> bool:
        """``retained`` reached its :attr:`~Retained.check_at`: close a full block, push
        out the oldest past the bound; True while a live follower holds the channel back."""
        current = retained.current
        # (the newest message: the last of the current block, which may close now)
        newest = HEADER_SIZE + len(current[-1]) if current else 0
        if retained.size - retained.closed >= self.block_bytes:
            self._new_block(retained, retained.last + 1, retained.tag)
        if retained.size > self.config.retention_bytes:
            self._evict(retained, newest)
        self._check_at(retained)
        return bool(retained.followers) and retained.size >= self.pause_at

    def _new_block(self, retained: Retained, first: int, tag: int) -> None:
        newest = retained.blocks[-1]
        if newest.payloads:
            newest.size = retained.size - retained.closed
            retained.closed = retained.size
        else:
            retained.blocks.pop()
        block = Block(first, tag)
        retained.blocks.append(block)
        retained.current, retained.tag = block.payloads, tag
        self._check_at(retained)

    def _check_at(self, retained: Retained) -> None:
        """When the publish path must next call retain_more: the current block full, the
        pause point, or the bound.

        While a follower is live the pause point is armed even when the retention is
        already past it (a follower whose first ACK came late, or one still behind after
        a trim): the next message then pauses the channel, where arming nothing would
        leave it writable until the current block fills. Past the pause point every
        message comes here, but only from a publisher that ignores ``ready()``.
        """
        at = retained.closed + self.block_bytes
        if retained.followers:
            at = min(at, self.pause_at)
        retained.check_at = min(at, self.config.retention_bytes + 1)

    def _evict(self, retained: Retained, newest: int) -> None:
        """Push the oldest blocks out until the retention is within its bound.

        What a live follower has not acknowledged stays while the retention without its
        ``newest`` message (bytes) is within the bound: the publisher checked
        :meth:`full` before sending it (PubChannel.send does), so it loses no live
        follower anything, and the retention exceeds its bound by that one message at
        most until the follower acknowledges (the next send raises). A publisher that
        sends past :meth:`full` pushes out what it must, and the follower is told of
        the range as a gap (RETENTION).
        """
        limit = self.config.retention_bytes
        blocks = retained.blocks
        followers = retained.followers
        floor = min(f.acked for f in followers.values()) if followers else None
        while retained.size > limit and len(blocks) > 1:
            if (floor is not None and blocks[0].last > floor
                    and retained.size - newest <= limit):
                break  # a live follower still needs it
            block = blocks.popleft()
            retained.size -= block.size
            retained.closed -= block.size
            self.counters["retention_evicted"] += len(block.payloads)

    def holds_back(self, channel: int) -> bool:
        """Whether ``channel`` waits for a live follower's acknowledgement."""
        retained = self.retained.get(channel)
        return (retained is not None and bool(retained.followers)
                and retained.size >= self.pause_at)

    def full(self, channel: int) -> bool:
        """Whether one more message would push out one a live follower still needs: the
        retention is at its bound and its oldest block is not acknowledged by all."""
        retained = self.retained.get(channel)
        if (retained is None or not retained.followers
                or retained.size < self.config.retention_bytes):
            return False
        floor = min(f.acked for f in retained.followers.values())
        return retained.blocks[0].last > floor

    def on_ack(self, peer: IPeer, frame: Frame) -> None:
        """An ACK frame: for a publisher here, or passed on toward one."""
        _, hops, flags, channel, subscriber, dest, seq, payload, _ = frame
        publisher = ack_publisher(payload)
        extra = ack_extra(payload)
        topology = self.topology
        topology.learn(subscriber, peer)  # the way back for what is sent again
        if publisher != self.node_id:
            if not topology.onward(hops):
                return
            data = reencode(frame, hops - 1)
            if dest == self.node_id:
                leaf = topology.leaves.peer(publisher)  # a publishing leaf of this hub
                if leaf is not None:
                    leaf.send(data)
                    return
                self.counters["no_route"] += 1
            elif topology.unicast(dest, data):
                return
            if flags & ACK_START:
                # The publisher is gone: nobody will say where the stream starts, and the
                # subscriber would hold its messages for repair_wait. It starts where it is.
                self._tell_start_unknown(channel, subscriber, publisher)
            return
        self.take_ack(channel, subscriber, seq, flags, extra)

    def take_ack(self, channel: int, subscriber: int, seq: int, flags: int,
                 extra: int = 0) -> None:
        """``subscriber`` has every message of ``channel`` up to ``seq`` (with ACK_WANT, it
        asks for what follows, up to ``extra`` if set; with ACK_START, where it starts,
        ``extra`` naming the node holding the channel for it: see the module docstring)."""
        now = self.clock()
        retained = self.retained.get(channel)
        if retained is None:
            if flags & (ACK_WANT | ACK_START):
                # (a start not known: the subscriber starts where it is)
                self._tell_tail(channel, subscriber, None,
                                TAIL_START if flags & ACK_START else TAIL_ANSWER)
            return
        if flags & ACK_START:
            # Before what is kept, nothing can be sent again: a start there is unknown.
            start = max(retained.starts.get(extra, retained.last + 1), retained.oldest)
            seq = start - 1
        followers = retained.followers
        if flags & ACK_BYE:
            if followers.pop(subscriber, None) is not None:
                self._trim(channel, retained, now)
            return
        follower = followers.get(subscriber)
        if follower is None:
            if len(followers) >= self.config.max_repair_tracks:
                self.counters["repair_untracked"] += 1
                return
            follower = followers[subscriber] = Follower(seq, now)
            retained.quiet_since = None
        elif seq > follower.acked or flags & ACK_START:
            follower.acked = seq
        follower.heard = now
        self._trim(channel, retained, now)
        if flags & ACK_START:
            self._tell_tail(channel, subscriber, retained, TAIL_START, seq + 1)
        elif flags & ACK_WANT:
            self._answer(channel, retained, subscriber, follower, seq, now, extra)

    def _trim(self, channel: int, retained: Retained, now: float) -> None:
        """Drop what every live follower has; resume the channel if that made room."""
        followers = retained.followers
        if followers:
            floor = min(f.acked for f in followers.values())
            blocks = retained.blocks
            # A quarter of the retention keeps what everyone acknowledged: a subscriber
            # whose first ACK is still on its way (or was lost with a link) is in no
            # floor yet, and may need what the others have.
            keep = self.keep
            while (len(blocks) > 1 and blocks[0].last <= floor
                   and retained.size - blocks[0].size >= keep):
                block = blocks.popleft()
                retained.size -= block.size
                retained.closed -= block.size
            self._check_at(retained)
        elif retained.quiet_since is None:
            retained.quiet_since = now
        if retained.size < self.pause_at or not followers:
            self.check_ready(channel)

    def _answer(self, channel: int, retained: Retained, subscriber: int, follower: Follower,
                after: int, now: float, upto: int = 0) -> None:
        """Send ``subscriber`` again what follows ``after`` (up to ``upto`` if set: it has
        what comes after), a batch at most, then the tail."""
        if now - follower.answered_at >= RETRY:
            follower.answers, follower.answered_at = 0, now
        if follower.answers >= ANSWER_BATCHES * self.config.repair_batch:
            self.counters["repair_refused"] += 1
            return
        follower.answers += HEADER_SIZE + 16  # its TAIL
        self.counters["repair_answered"] += 1
        if after < retained.last:
            topology = self.topology
            hops = topology.hop_limit()
            budget = self.config.repair_batch
            me = self.node_id
            sent = 0
            for seq, tag, payload in retained.after(after):
                if upto and seq > upto:
                    break
                if not topology.unicast(subscriber, resent_frame(
                        hops, tag, channel, me, subscriber, seq, payload)):
                    return  # no way there now: it asks again
                sent += 1
                size = HEADER_SIZE + len(payload)
                budget -= size
                follower.answers += size
                if budget <= 0:
                    break
            self.counters["repair_resent"] += sent
        self._tell_tail(channel, subscriber, retained, TAIL_ANSWER)

    def _tell_tail(self, channel: int, subscriber: int, retained: Retained | None,
                   flags: int, start: int = 0) -> None:
        if retained is not None:
            last, oldest = retained.last, retained.oldest
        else:
            # Nothing kept: everything up to the last sent is beyond repair.
            last = self._last_published(channel)
            oldest = last + 1
        topology = self.topology
        topology.unicast(subscriber, tail_frame(topology.hop_limit(), flags, channel,
                                                self.node_id, subscriber, last, oldest,
                                                self.seq_base, start))

    def _tell_start_unknown(self, channel: int, subscriber: int, publisher: int) -> None:
        """Answer a subscriber's ACK_START for a publisher that cannot answer: its start is
        not known (TAIL_START with start 0), so it starts at the first message it got."""
        topology = self.topology
        topology.unicast(subscriber, tail_frame(topology.hop_limit(), TAIL_START, channel,
                                                publisher, subscriber, 0, 1, 0, 0))

    def _note_holders(self, channel: int, retained: Retained) -> None:
        """Note where a new subscriber of each node holding ``channel`` starts: the next
        message published, for a node whose subscribers grew in number."""
        routing = self.topology.routing
        counts = {}
        for node in routing.listed_holders(channel, SUB):
            interest = routing.interest_of(node, channel)
            if interest is not None:
                counts[node] = interest.count
        starts, before = retained.starts, retained.counts
        nxt = retained.last + 1
        for node, count in counts.items():
            if count > before.get(node, 0):
                starts[node] = nxt
        for node in [n for n in starts if n not in counts]:
            del starts[node]
        retained.counts = counts

    def _last_published(self, channel: int) -> int:
        last = self.last_published(channel)
        return self.seq_base if last is None else last

    # --- the subscriber's side

    def reader(self, source: int, channel: int, root: int, first: int) -> Reader | None:
        """Start following ``source`` on ``channel`` from ``first`` (None: too many)."""
        readers = self.readers
        if not self.config.retention_bytes:
            return None  # repair is off
        if len(readers) >= self.config.max_repair_tracks:
            self.counters["repair_untracked"] += 1
            return None
        reader = readers[(source, channel)] = Reader(source, channel, root, first, self.clock())
        # Where it starts is asked (see the module docstring); what comes meanwhile waits.
        reader.starting, reader.next = first, 0
        self._send_start(reader)
        return reader

    def _send_start(self, reader: Reader) -> None:
        hub = self.topology.hub
        holder = hub.peer_id if hub is not None else self.node_id
        self.counters["repair_acks"] += 1
        if self._send_ack(reader, ACK_START, 0, holder):
            reader.asked_at, reader.asked_epoch = self.clock(), self.epoch

    def _started(self, reader: Reader, start: int) -> bool:
        """The publisher said where ``reader``'s stream starts (0: it does not know):
        there, or at the first message that came if that is earlier. True if some
        messages before the first that came are owed."""
        first = reader.starting
        begin = min(start, first) if start else first
        reader.starting = 0
        reader.next = reader.mark = begin
        reader.acked = begin - 1
        reader.asked_at = None
        out: list[tuple[int, int, bytes]] = []
        self._drain(reader, out)
        if out:
            self._deliver(reader, out)
        self._let_go(reader)
        return begin < first or bool(reader.held)

    def arrived(self, reader: Reader, tag: int, items: Iterable[tuple[int, bytes]],
                root: int | None = None) -> bool:
        """Messages that are not simply the next ones (a gap, a duplicate, a repair):
        the ones now in order go to the subscribers, later ones wait. True while the
        reader waits to start: the caller then gives it their credit (:meth:`keep_credit`)."""
        if root is not None and root != reader.via:
            reader.via = root  # a publishing leaf moved to another hub
        limit = self.config.reorder_bytes
        if reader.starting:
            # Not started: everything waits (what does not fit comes again when asked).
            for seq, payload in items:
                if seq not in reader.held:
                    size = HEADER_SIZE + len(payload)
                    if self.held_size + size > limit:
                        self.counters["repair_reorder_dropped"] += 1
                    else:
                        reader.held[seq] = (tag, bytes(payload))
                        reader.held_size += size
                        self.held_size += size
                    if seq < reader.starting:
                        reader.starting = seq
            self._ask(reader, False)  # (again only if unanswered for RETRY, or routes moved)
            return True
        out: list[tuple[int, int, bytes]] = []
        for seq, payload in items:
            nxt = reader.next
            if seq == nxt:
                out.append((seq, tag, payload))
                reader.next = seq + 1
                if reader.held:
                    self._drain(reader, out)
            elif seq < nxt or seq in reader.held:
                self.counters["repair_discarded"] += 1
            else:
                size = HEADER_SIZE + len(payload)
                if self.held_size + size > limit:
                    self.counters["repair_reorder_dropped"] += 1  # it comes again
                else:
                    reader.held[seq] = (tag, bytes(payload))
                    reader.held_size += size
                    self.held_size += size
        if out:
            self._deliver(reader, out)
        if reader.held:
            self._ask(reader, False)
        elif reader.next > reader.tail:
            reader.asked_at = None  # nothing more is owed
        return False

    def keep_credit(self, reader: Reader, hold: Any) -> None:
        """Keep ``hold`` (the credit of messages ``reader`` took while starting) until it
        starts."""
        reader.holds.append(hold)

    def _let_go(self, reader: Reader) -> None:
        holds, reader.holds = reader.holds, []
        for hold in holds:
            hold.unref()

    def _drain(self, reader: Reader, out: list[tuple[int, int, bytes]]) -> None:
        held = reader.held
        while reader.next in held:
            seq = reader.next
            tag, payload = held.pop(seq)
            size = HEADER_SIZE + len(payload)
            reader.held_size -= size
            self.held_size -= size
            out.append((seq, tag, payload))
            reader.next = seq + 1

    def _deliver(self, reader: Reader, out: list[tuple[int, int, bytes]]) -> None:
        source, channel = reader.source, reader.channel
        reader.unacked += sum(HEADER_SIZE + len(p) for _, _, p in out)
        subs = self.subscribers.get(channel)
        if subs:
            # Runs of one tag (a channel's publisher uses one message type).
            start = 0
            while start < len(out):
                tag = out[start][1]
                end = start + 1
                while end < len(out) and out[end][1] == tag:
                    end += 1
                frames = [Frame(_DATA, 1, tag, channel, source, 0, seq, payload)
                          for seq, _, payload in out[start:end]]
                for sub in list(subs):
                    sub.deliver_run(frames, None, None)
                start = end
        if reader.unacked >= self.ack_every:
            self._ack(reader, 0)

    def on_resent(self, peer: IPeer, frame: Frame) -> None:
        """A message sent again: to a subscriber here, or on its way to one."""
        if frame[5] != self.node_id:
            self._forward(frame)
            return
        reader = self.readers.get((frame[4], frame[3]))
        if reader is None:
            return  # no longer followed here
        reader.heard = self.clock()
        self.arrived(reader, frame[2], ((frame[6], frame[7]),))

    def on_tail(self, peer: IPeer, frame: Frame) -> None:
        """Where a publisher's channel is: what was given up, whether more is owed."""
        if frame[5] != self.node_id:
            self._forward(frame)
            return
        _, _, flags, channel, source, _, last, payload, _ = frame
        oldest, base, start = tail_body(payload)
        reader = self.readers.get((source, channel))
        if reader is None:
            return
        if reader.starting:
            if flags & TAIL_START:
                # What follows the first message that came is on its way, in order:
                # only a hole before it is asked for.
                reader.heard = self.clock()
                reader.tail = max(reader.tail, last)
                if self._started(reader, start):
                    self._ask(reader, True)
            return  # (other TAILs wait until it knows where it starts)
        reader.heard = self.clock()
        if reader.next <= base:
            # What is owed was sent by an earlier run of the publisher's process: what
            # this node knew of is given up, and the count starts again.
            known = max([s for s in reader.held if s <= base]
                        + [reader.tail if reader.tail <= base else 0, reader.next - 1])
            self._give_up(reader, known + 1, RESTARTED)
            for seq in [s for s in reader.held if s <= base]:
                self._unhold(reader, seq)
            reader.next = base + 1
            reader.tail = 0
            # The subscribers' own count of each source's order jumps with it: nothing
            # between the runs was sent, so nothing is missed.
            for sub in list(self.subscribers.get(channel, ())):
                sub.restarted(source, base)
            # The new run's messages that came before this TAIL (held past what was the
            # gap) go now: left held, the first of them would stay there once the same
            # message came again, and every later one would take the slow path and ask.
            out: list[tuple[int, int, bytes]] = []
            self._drain(reader, out)
            if out:
                self._deliver(reader, out)
        if oldest > reader.next:
            self._give_up(reader, oldest, RETENTION)
        if last > reader.tail:
            reader.tail = last
        if reader.next <= last:
            # More is owed: ask for it when an answer ended (the next batch; what follows
            # a hole may be on its way, or may never have been sent anywhere: a publisher
            # that had no path sent nothing), or when the publisher says so while nothing
            # arrives.
            if flags & TAIL_ANSWER or reader.next == reader.mark:
                self._ask(reader, True)
        elif not reader.held:
            reader.asked_at = None
        if reader.next - 1 > reader.acked:
            self._ack(reader, 0)

    def _unhold(self, reader: Reader, seq: int) -> None:
        _, payload = reader.held.pop(seq)
        size = HEADER_SIZE + len(payload)
        reader.held_size -= size
        self.held_size -= size

    def _give_up(self, reader: Reader, upto: int, reason: str) -> None:
        """Nothing before ``upto`` will come any more: the held messages go to the
        subscribers, and each range between them is reported lost."""
        out: list[tuple[int, int, bytes]] = []
        for seq in sorted(s for s in reader.held if s < upto):
            if seq < reader.next:
                self._unhold(reader, seq)
                continue
            if seq > reader.next:
                self._lost(reader, reader.next, seq - 1, reason, out)
            tag, payload = reader.held[seq]
            self._unhold(reader, seq)
            out.append((seq, tag, payload))
            reader.next = seq + 1
        if reader.next < upto:
            self._lost(reader, reader.next, upto - 1, reason, out)
            reader.next = upto
        self._drain(reader, out)
        if out:
            self._deliver(reader, out)

    def _lost(self, reader: Reader, first: int, last: int, reason: str,
              out: list[tuple[int, int, bytes]]) -> None:
        """Report ``first..last`` lost, after delivering what comes before it."""
        if out:
            self._deliver(reader, out)
            out.clear()
        gap = Gap(reader.source, first, last, last - first + 1, reason)
        self.counters["repair_lost"] += gap.count
        for sub in list(self.subscribers.get(reader.channel, ())):
            sub.lost(gap)

    def _ask(self, reader: Reader, now_anyway: bool) -> None:
        """Ask the publisher to send again what follows ``reader.next - 1``."""
        now = self.clock()
        if (not now_anyway and reader.asked_at is not None and now - reader.asked_at < RETRY
                and reader.asked_epoch == self.epoch):
            return
        if reader.starting:
            self._send_start(reader)
            return
        self.counters["repair_asked"] += 1
        # Only the hole before what it holds: the rest is on its way, or asked later.
        upto = min(reader.held) - 1 if reader.held else 0
        if self._ack(reader, ACK_WANT, upto):
            reader.asked_at, reader.asked_epoch = now, self.epoch

    def acknowledge(self, reader: Reader) -> None:
        """Tell the publisher what ``reader`` has (its bytes since the last ACK add up)."""
        if not reader.starting:
            self._ack(reader, 0)

    def _ack(self, reader: Reader, flags: int, upto: int = 0) -> bool:
        """Acknowledge what ``reader`` has (asking for more with ACK_WANT, up to ``upto``
        if set); False when there is no way to the publisher now."""
        seq = reader.next - 1
        reader.acked = seq
        reader.acked_at = self.clock()
        reader.unacked = 0
        self.counters["repair_acks"] += 1
        return self._send_ack(reader, flags, seq, upto)

    def _send_ack(self, reader: Reader, flags: int, seq: int, extra: int = 0) -> bool:
        me = self.node_id
        topology = self.topology
        root = reader.root
        data = ack_frame(topology.hop_limit(), flags, reader.channel, me, root, seq,
                         reader.source, extra)
        if root == me:
            # The publisher is a leaf of this node.
            leaf = topology.leaves.peer(reader.source)
            if leaf is None:
                return False
            leaf.send(data)
            return True
        if topology.unicast(root, data):
            return True
        hub = topology.hub
        if hub is not None and not hub.closing:
            hub.send(data)
            return True
        return False

    def _forward(self, frame: Frame) -> None:
        topology = self.topology
        if topology.onward(frame[1]):
            topology.unicast(frame[5], reencode(frame, frame[1] - 1))

    def unsubscribed(self, channel: int) -> None:
        """The last local subscriber of ``channel`` left: its publishers stop waiting."""
        for key in [k for k in self.readers if k[1] == channel]:
            reader = self.readers.pop(key)
            for seq in list(reader.held):
                self._unhold(reader, seq)
            self._let_go(reader)
            self._send_ack(reader, ACK_BYE, max(0, reader.next - 1))

    # --- the picture changed, time passed

    def routes_changed(self) -> None:
        """A path was lost, or a leaf has a new hub: what was on the way may be lost, so
        every reader asks at once for what follows the last it has (a reader holding
        messages past a hole, for the hole only). What is still on its way on the new
        path comes again too, dropped as duplicates: waiting for evidence instead (the
        next message's gap, the publisher's TAIL) would leave a lost tail unrepaired
        for a heartbeat or two."""
        topology = self.topology
        self.epoch += 1
        for channel, retained in self.retained.items():
            self._note_holders(channel, retained)
        reachable = topology.routing.is_reachable
        for reader in list(self.readers.values()):
            if reader.starting:
                if reader.root != self.node_id and not reachable(reader.root):
                    # Its publisher's node went away: nobody is left to say where the
                    # stream starts. It starts at the first message it got.
                    self._started(reader, 0)
                    continue
                # Its question may have been lost with a path, or found none: a new
                # picture (a heal too) may carry it now.
                self._ask(reader, False)
        losses, hub = topology.routing.losses, topology.hub
        if losses == self._losses_seen and hub is self._hub_seen:
            return
        self._losses_seen, self._hub_seen = losses, hub
        for reader in list(self.readers.values()):
            self._ask(reader, True)

    def tick(self, now: float) -> None:
        """Once per heartbeat: acknowledge, retry, tell lagging followers the tail, and
        forget who has been silent longer than ``repair_wait``."""
        wait = self.config.repair_wait
        for reader in list(self.readers.values()):
            if reader.starting:
                if now - reader.heard > wait:
                    self._started(reader, 0)  # no answer: it starts where it is
                else:
                    self._ask(reader, False)  # asks again where it starts
                continue
            progressed = reader.next != reader.mark
            reader.mark = reader.next
            if progressed:
                reader.heard = now
            owed = reader.held or reader.tail >= reader.next
            if owed and not progressed:
                if now - reader.heard > wait:
                    # Nothing from the publisher for too long: what it said it sent and
                    # this node does not have is given up.
                    upto = max([reader.tail] + list(reader.held)) + 1
                    self._give_up(reader, upto, GONE)
                    reader.tail = 0
                    reader.asked_at = None
                    continue
                self._ask(reader, False)
            elif progressed or now - reader.acked_at >= wait / 4:
                self._ack(reader, 0)
        for channel, retained in list(self.retained.items()):
            followers = retained.followers
            gone = [s for s, f in followers.items() if now - f.heard > wait]
            for subscriber in gone:
                del followers[subscriber]
                self.counters["repair_followers_lost"] += 1
            if gone:
                self._trim(channel, retained, now)
            if not followers:
                if retained.quiet_since is not None and now - retained.quiet_since > wait:
                    del self.retained[channel]
                    self.check_ready(channel)
                continue
            for subscriber, follower in followers.items():
                if follower.acked < retained.last and follower.acked == follower.mark:
                    self._tell_tail(channel, subscriber, retained, 0)
                follower.mark = follower.acked

    # --- introspection

    def stats(self) -> dict[str, int]:
        """Bytes and entries the repair keeps now (status, /metrics)."""
        return {
            "retained_bytes": sum(r.size for r in self.retained.values()),
            "retained_channels": len(self.retained),
            "followers": sum(len(r.followers) for r in self.retained.values()),
            "reorder_bytes": self.held_size,
            "readers": len(self.readers),
            "repairs_pending": sum(1 for r in self.readers.values() if r.asked_at is not None),
        }
