"""Pub/sub in the core: publishing, forwarding, delivering, and the credit behind them.

Sans-IO. :class:`PubSub` takes a local publisher's message
(:meth:`PubSub.publish`), a neighbour's DATA run (:meth:`PubSub.on_run`) or
LATEST frame (:meth:`PubSub.on_latest`) and CREDIT (:meth:`PubSub.on_credit`),
and decides: which neighbours each message goes to (along the source's
shortest-path tree, only toward interest: :class:`~.topology.Topology`), what
waits for credit and what is dropped (:mod:`.flow`), which local subscribers
get it, and when the bytes are released to the neighbour that sent them.

Forwarding never decodes a payload: a run of DATA frames (one source, one
channel, as the link's decoder grouped them) goes on as the block of bytes
received, hop counts lowered in one step.

One place decides whether a channel published here can take more
(:meth:`PubSub.ready`): every target neighbour has credit and a writable
transport, and no local lossless subscriber holds a window's worth. The
publish path marks a channel not ready as soon as a send spends the last
credit, so a producer pauses before anything has to wait in memory.

A message every target has credit for may wait, its credit spent, in its channel's
:class:`Outlet` until the end of the reactor turn (:meth:`PubSub.uncork`): the
frames then go joined, once per target, and nothing written to a link before that
overtakes them. Large messages go as header and payload, never joined here.

What a path lost on the way is repaired end to end (:mod:`.repair`): a
message published here is also kept for its subscribers to ask again, and
received messages reach the local subscribers through their publisher's
:class:`~.repair.Reader`, in order, once each.

A leaf (:mod:`.leaves`) is in no picture, so its messages name the node
whose tree they follow, its hub, in their ``dest`` field (the *root*); they
keep their source, so subscribers know who published them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import ContextConfig
from .flow import CreditError, Hold
from .interfaces import ILog, IPeer
from .repair import Repair
from .routing import SUB
from .wire import (
    HEADER,
    HEADER_SIZE,
    SEQ_OFFSET,
    Frame,
    FrameKind,
    ProtocolError,
    Run,
    credit_frame,
    data_frame,
)
from .wire import reencode as _reencode

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["PubSub", "Lane", "MAX_CREDIT"]

#: the most credit one CREDIT frame may grant (a sanity bound on a peer's claim)
MAX_CREDIT = 1 << 40
#: a corked outlet's frames are written once they reach this many bytes (see
#: PubSub.uncork): one write per this many (the readers downstream, forwarders and
#: subscribers, then take as many frames per read, see ContextConfig.read_size), and
#: the receiver starts on them before the end of a long turn
CORK_BYTES = 245760
#: frames this large or larger are not corked but written alone, header and payload as
#: they are: joining them would copy each once more for nothing
CORK_FRAME_MAX = 61440
_DATA = int(FrameKind.DATA)
_pack = HEADER.pack
_LATEST = int(FrameKind.LATEST)
_BUSY = "busy"
_seq_at = struct.Struct("<Q").unpack_from
#: a DATA header with its middle fields packed already (see Outlet.middle)
_HEAD = struct.Struct(f"<I{SEQ_OFFSET - 4}sQ")
_head = _HEAD.pack


def _last_seq(run: Run) -> int:
    """The sequence number of a run's last frame."""
    stride = run[11]
    at = run[9] - stride if stride else run[12][-1]  # type: ignore[index]
    return _seq_at(run[7], at + SEQ_OFFSET)[0]


class Outlet:
    """A channel published here, as its every message needs it: its sequence number,
    and while the picture holds (see :attr:`PubSub.outlets_ready`), where it goes and
    the header its frames start with.

    The one target's flow and credit box (yotonnet.core.flow.Outbox) are kept beside
    it, so the usual case (one target with credit) costs no lookup at all.
    """

    __slots__ = ("seq", "peers", "hops", "peer", "flow", "box", "targets", "tag", "middle",
                 "cork", "pending", "room", "boxes", "retained", "left", "granted")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.peers: list[IPeer] = []
        self.hops = 1
        #: the one target, when there is exactly one (else None)
        self.peer: IPeer | None = None
        self.flow: Any = None
        self.box: Any = None
        #: (peer, its flow, its credit box) of every target, when there are several
        self.targets: list[tuple[IPeer, Any, Any]] = []
        #: the message type tag ``middle`` was made for
        self.tag = -1
        #: the header's fields between its length and its sequence number, packed once
        #: (kind, hops, tag, channel, source, root: the same in every frame of the channel
        #: while the picture holds); a frame is _HEAD.pack(length, middle, seq) + payload
        self.middle = b""
        #: its frames may wait in ``pending`` (see PubSub.uncork): the host flushes them,
        #: and every target is a link that lets them out before any other frame
        self.cork = False
        #: frames sent (their credit spent) to every target, not yet written
        self.pending: list[bytes] = []
        #: bytes ``pending`` may still take before it is written (CORK_BYTES when empty)
        self.room = CORK_BYTES
        #: the credit box of every target (one or several)
        self.boxes: list[Any] = []
        #: while it is the node's lane (see Lane): the channel's Retained; the bytes the
        #: lane's messages may take in all (``granted``, see Lane.open), and what is left
        #: of them after the messages that took the lane since (charged to credit, room
        #: and retention when the lane closes)
        self.retained: Any = None
        self.left = self.granted = 0


class Lane:
    """The corked outlet whose next messages may take the short way in
    :meth:`PubSub.publish`, if any: every target has credit, no local subscriber
    listens, and the channel is kept for repair.

    Those messages count their bytes against one budget (:attr:`Outlet.left`): the
    least of the credit any target had, the room left in the cork, and the bytes the
    retention takes before it must look at itself again (Retained.check_at). A message
    that would exhaust it goes the longer way, which does what that limit asks. The
    bytes spent are charged to the boxes, the cork's room and the retention once, when
    the lane closes (:meth:`clear`): at the uncork, when a read's dispatch begins (so
    that no frame handled sees them uncharged), before anything else reads or changes
    that credit, when a message needs the longer way, and when paths change (the
    topology empties it with the caches of paths).
    """

    __slots__ = ("channel", "outlet")

    def __init__(self) -> None:
        self.channel = -1
        self.outlet: Outlet | None = None

    def open(self, channel: int, outlet: Outlet, retained: Any, credit: int) -> None:
        """Let ``outlet``'s next messages take the lane, within the least of ``credit`` (what
        the poorest target has), the cork's room and what the retention takes before its
        next look; not at all when one of them is spent."""
        budget = min(credit, outlet.room, retained.check_at - retained.size)
        if budget > 0:
            outlet.retained = retained
            outlet.left = outlet.granted = budget
            self.channel = channel
            self.outlet = outlet

    def clear(self) -> None:
        """Close the lane: the boxes, the cork's room and the retention each count the
        bytes its messages took."""
        outlet = self.outlet
        if outlet is not None:
            self.outlet = None
            spent = outlet.granted - outlet.left
            if spent:
                for box in outlet.boxes:
                    box.credit -= spent
                outlet.room -= spent
                outlet.retained.size += spent
            outlet.retained = None


class PubSub:
    def __init__(
        self,
        node_id: int,
        config: ContextConfig,
        topology: Topology,
        counters: dict[str, int],
        log: ILog,
        clock: Callable[[], float] = time.monotonic,
        on_cork: Callable[[], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.topology = topology
        self.counters = counters
        self.log = log
        #: channel id -> local subscriber ends (ISubscriberEnd), latest flows included
        self.subscribers: dict[int, list[Any]] = {}
        #: channel id -> local publisher ends (IPublisherEnd)
        self.publishers: dict[int, list[Any]] = {}
        #: locally published channels that some target cannot take more of right now
        self.not_ready: set[int] = set()
        #: latest-flow ids known to have no subscriber anywhere (until the picture changes)
        self.latest_idle: set[int] = set()
        topology.dependent_caches.append(self.latest_idle)
        #: called after queued data left (credit, a drained transport, a drop); each
        #: returns True once it is done watching
        self.drain_watchers: list[Callable[[], bool]] = []
        # Sequence numbers start from the wall clock in ns, so a node restarted with a
        # fixed id continues above what subscribers last saw from it.
        self._seq_base = time.time_ns()
        #: latest-flow id -> its last sequence number (a lossless channel's is its outlet's)
        self._seq: dict[int, int] = {}
        #: channel id -> Outlet, of every channel published here
        self.outlets: dict[int, Outlet] = {}
        #: the outlets whose targets are current: emptied whenever paths change
        self.outlets_ready: dict[int, Outlet] = {}
        topology.dependent_caches.append(self.outlets_ready)
        #: retention, acknowledgement and reordering for lossless subscribers
        self.repair = Repair(node_id, config, topology, counters, clock, self.subscribers,
                             self.check_ready, self._seq_base, self.last_seq)
        #: channel id -> what is kept of it to send again (the repair's table)
        self.retained = self.repair.retained
        #: called when frames start waiting in an outlet (None: they never do): the host
        #: calls :meth:`uncork` at the end of the reactor turn at the latest
        self.on_cork = on_cork
        #: the outlet whose frames wait (at most one, so frames of two channels keep their
        #: order), and the same as a list, empty when none: links look at it before they
        #: write anything (yotonnet.mesh.writer.Batch)
        self.cork_outlet: Outlet | None = None
        self.corked: list[Outlet] = []
        #: the corked outlet, while its next messages may take the short way in
        #: :meth:`publish` (see Lane); emptied at the uncork, when paths change, when
        #: local ends come or go (:meth:`ends_changed`) and before credit is read
        self.lane = Lane()
        topology.dependent_caches.append(self.lane)
        #: (source, channel) -> what a publisher owes the subscribers here
        self.readers = self.repair.readers

    # --- a local publisher's messages

    def _outlet(self, channel: int, tag: int) -> Outlet:
        """``channel``'s outlet, its targets looked up again (the picture changed) and its
        header made for ``tag``."""
        outlet = self.outlets.get(channel)
        if outlet is None:
            outlet = self.outlets[channel] = Outlet(self._seq_base)
        elif outlet is self.cork_outlet:
            self.uncork()  # its frames go to the targets they were sent to
        topology = self.topology
        peers = outlet.peers = topology.targets(self.node_id, channel)
        outlet.hops = topology.hop_limit()
        if len(peers) == 1:
            peer = outlet.peer = peers[0]
            outlet.flow = peer.flow
            outlet.box = peer.flow.outbox(channel)
            outlet.targets = []
            outlet.boxes = [outlet.box]
        else:
            outlet.peer = outlet.flow = outlet.box = None
            outlet.targets = [(p, p.flow, p.flow.outbox(channel)) for p in peers]
            outlet.boxes = [box for _, _, box in outlet.targets]
        outlet.tag = tag
        outlet.middle = _pack(0, _DATA, outlet.hops, 0, tag, channel, self.node_id,
                              topology.root, 0)[4:SEQ_OFFSET]
        outlet.cork = self.on_cork is not None and all(
            getattr(p, "lets_cork_out", False) for p in peers)
        if topology.fanout.get((self.node_id, channel)) is peers:
            self.outlets_ready[channel] = outlet  # (a leaf's list before its view: not kept)
        return outlet

    def publish(self, channel: int, tag: int, payload: bytes) -> None:
        """Send a message published here to every subscriber of ``channel``."""
        # Every message's path: written out (data_frame's packing, PeerFlow.take's test
        # and PeerFlow.enqueue included), a call costs about as much as a line here.
        lane = self.lane
        outlet = lane.outlet
        if outlet is not None:
            # The lane (see Lane): what the longer way below would find is known as long
            # as the budget lasts (every target keeps credit, the cork has room, the
            # retention needs no look); the targets' queues and pauses cannot change
            # before the uncork (a link writes nothing before it). (``is``: the publisher
            # passes the same id each time; an equal one from elsewhere only goes the
            # longer way.)
            size = HEADER_SIZE + len(payload)
            left = outlet.left - size
            if left > 0 and lane.channel is channel and outlet.tag == tag:
                outlet.left = left
                seq = outlet.seq = outlet.seq + 1
                outlet.pending.append(_head(size - 4, outlet.middle, seq) + payload)
                outlet.retained.current.append(payload)  # kept for repair (see Lane)
                return
            lane.clear()  # (the longer way reads the credit, and may spend it)
        outlet = self.outlets_ready.get(channel)
        if outlet is None or outlet.tag != tag:
            outlet = self._outlet(channel, tag)
        seq = outlet.seq = outlet.seq + 1
        size = HEADER_SIZE + len(payload)
        box = outlet.box
        if box is not None:
            # (the length field counts what follows its own 4 bytes)
            head = _head(size - 4, outlet.middle, seq)
            if box.credit > 0 and not box.queue and not outlet.flow.paused:
                box.credit -= size
                if not outlet.cork:
                    outlet.peer.send(head + payload)  # type: ignore[union-attr]
                elif size < CORK_FRAME_MAX:
                    if self.cork_outlet is not outlet:
                        self._cork(outlet)
                    outlet.pending.append(head + payload)
                    outlet.room -= size
                    if outlet.room <= 0:
                        self.uncork()
                else:
                    # Alone (after what waits): header and payload as they are, no copy
                    # of the payload to join them.
                    outlet.peer.send_pair(head, payload)  # type: ignore[union-attr]
                # Spent (a send may overdraw once): not writable until credit
                # returns, so a producer pauses before anything has to wait in memory.
                if box.credit <= 0 and channel not in self.not_ready:
                    self._set_not_ready(channel)
            elif outlet.peer.status == _BUSY:  # type: ignore[union-attr]
                self.counters["flow_dropped"] += 1  # (see _hold_back)
            else:
                # (a large frame for a link waits as its header and payload, sent with send_pair)
                box.queue.append(((head, payload) if outlet.cork and size >= CORK_FRAME_MAX
                                  else head + payload, size, None))
                box.queued += size
                self.counters["flow_queued"] += 1
                if channel not in self.not_ready and channel in self.publishers:
                    self._set_not_ready(channel)
        elif outlet.targets:
            data = _head(size - 4, outlet.middle, seq) + payload
            targets = outlet.targets
            spent = False
            if outlet.cork:
                for _, flow, box in targets:
                    if box.credit <= 0 or box.queue or flow.paused:
                        break
                else:
                    # Every target takes it: its credit is spent now, the frame written
                    # once for all of them (see uncork).
                    for _, _, box in targets:
                        box.credit -= size
                        if box.credit <= 0:
                            spent = True
                    if self.cork_outlet is not outlet:
                        self._cork(outlet)
                    outlet.pending.append(data)
                    outlet.room -= size
                    if outlet.room <= 0:
                        self.uncork()
                    targets = []
                if targets and self.cork_outlet is outlet:
                    self.uncork()  # what every target took goes before what some queue
            for peer, flow, box in targets:
                if box.credit > 0 and not box.queue and not flow.paused:
                    box.credit -= size
                    peer.send(data)
                    spent = spent or box.credit <= 0
                else:
                    self._hold_back(peer, channel, data, size, None)
            if spent and channel not in self.not_ready:
                self._set_not_ready(channel)
        retained = self.retained.get(channel)
        if retained is not None and tag == retained.tag:
            # Kept for subscribers to ask again (Repair.retain, written out).
            retained.current.append(payload)
            retained.size += size
            if retained.size >= retained.check_at and self.repair.retain_more(
                    channel, retained) and channel not in self.not_ready:
                self._set_not_ready(channel)
        elif (outlet.peers or retained is not None) and self.repair.retain(
                channel, seq, tag, payload):
            self._set_not_ready(channel)
        if self.cork_outlet is outlet:  # (every target took it into the cork)
            self._open_lane(channel, outlet)
        subs = self.subscribers.get(channel)
        if subs:
            frame = Frame(_DATA, 1, tag, channel, self.node_id, 0, seq, payload)
            hold = Hold(None, channel, size, self.release)
            window = self.config.flow_window
            for sub in subs:
                sub.deliver(frame, hold)
                if sub.backlog >= window and channel not in self.not_ready:
                    self._set_not_ready(channel)
            hold.unref()

    def _open_lane(self, channel: int, outlet: Outlet) -> None:
        """Let the next messages of ``channel``, whose last one every target took into the
        cork, take the lane in :meth:`publish`, if every target has credit left and what
        it keeps for repair is ready for them (a local subscriber takes each message from
        the longer way)."""
        if channel in self.subscribers:
            return
        retained = self.retained.get(channel)
        if (retained is not None and retained.tag == outlet.tag
                and self.outlets_ready.get(channel) is outlet):  # (its targets are current)
            self.lane.open(channel, outlet, retained, min(box.credit for box in outlet.boxes))

    def ends_changed(self) -> None:
        """A local channel end opened or closed: subscribers may now be here, and the
        ``latest`` flows may have listeners."""
        self.latest_idle.clear()
        self.lane.clear()

    def _cork(self, outlet: Outlet) -> None:
        """Let ``outlet``'s frames wait (those of another outlet go first)."""
        if self.cork_outlet is not None:
            self.uncork()
        self.cork_outlet = outlet
        self.corked.append(outlet)
        self.on_cork()  # type: ignore[misc]

    def uncork(self) -> None:
        """Write the frames waiting in the corked outlet, joined, once to each target.

        A channel published message by message would otherwise cost a link's send (and
        on a leaf's link, its gate's look at every frame) per message and target. The
        credit of every waiting frame is spent already, so flow control, readiness and
        queues see exactly what they would have seen had each been written at once; and
        as every target is a link that calls this before it writes anything else
        (Outlet.cork), no frame of any kind overtakes them. The host calls it at the end
        of the reactor turn (``on_cork``) at the latest.
        """
        outlet = self.cork_outlet
        if outlet is None:
            return
        self.cork_outlet = None
        self.corked.clear()
        self.lane.clear()
        pending = outlet.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        outlet.pending = []
        outlet.room = CORK_BYTES
        if outlet.peer is not None:
            outlet.peer.send(data)
        else:
            for peer, _, _ in outlet.targets:
                peer.send(data)

    def publish_latest(self, channel: int, tag: int, payload: bytes) -> None:
        """Publish on the ``latest`` flow ``channel`` if anyone listens to it.

        Apart from the lossless flow so that no lossless subscriber's backlog
        holds it back; never pauses the publisher: where credit runs out, newer
        frames push out older ones (see :meth:`on_latest`).
        """
        me = self.node_id
        topology = self.topology
        peers = topology.fanout.get((me, channel))
        if peers is None:
            peers = topology.targets(me, channel)
        subs = self.subscribers.get(channel)
        if not peers and not subs:
            self.latest_idle.add(channel)  # until routes or local channels change
            return
        seq = self._seq.get(channel, self._seq_base) + 1
        self._seq[channel] = seq
        if peers:
            data = data_frame(topology.hops or topology.hop_limit(), tag, channel, me, seq,
                              payload, _LATEST, topology.root)
            self._send_newest(peers, channel, data)
        if subs:
            frame = Frame(_LATEST, 1, tag, channel, me, 0, seq, payload)
            for sub in subs:
                sub.deliver(frame, None)

    def published(self) -> dict[int, int]:
        """Channel id -> messages published here on it (since this node started)."""
        base = self._seq_base
        counts = {channel: seq - base for channel, seq in self._seq.items()}
        counts.update((channel, o.seq - base) for channel, o in self.outlets.items()
                      if o.seq != base)
        return counts

    def last_seq(self, channel: int) -> int | None:
        """The sequence number of the last message published here on ``channel``."""
        outlet = self.outlets.get(channel)
        if outlet is not None and outlet.seq != self._seq_base:
            return outlet.seq
        return self._seq.get(channel)

    def _send_newest(self, peers: list[IPeer], channel: int, data: bytes) -> None:
        size = len(data)
        for peer in peers:
            flow = peer.flow
            if flow.take(channel, size):
                peer.send(data)
            elif peer.status != _BUSY:
                dropped = flow.enqueue_newest(channel, data, size, flow.window)
                if dropped:
                    self.counters["latest_dropped"] += dropped

    # --- frames from neighbours

    def on_latest(self, peer: IPeer, frame: Frame) -> None:
        """A frame of a ``latest`` flow: credited at once (latest subscribers keep only
        their newest messages, so nothing here holds it), forwarded, delivered."""
        channel = frame[3]
        self.credit(peer, channel, HEADER_SIZE + len(frame[8]) + len(frame[7]))
        peers = self.topology.targets(frame[4], channel, SUB, frame[5])
        if peers and self.topology.onward(frame[1]):
            self.counters["forwarded"] += len(peers)
            self._send_newest(peers, channel, _reencode(frame, frame[1] - 1))
        subs = self.subscribers.get(channel)
        if subs:
            for sub in subs:
                sub.deliver(frame, None)

    def on_frames(self, peer: IPeer, frames: list[Any], i: int, n: int) -> int:
        """Handle frames[i] (a DATA frame or a Run) and the DATA frames after it from the
        same source and channel; return the index of the next frame to handle."""
        first = frames[i]
        if type(first) is Run:
            return self.on_run(peer, first, i)
        # DATA frames the decoder did not group (with an extension, or handed in by
        # another layer): the rare path, each frame encoded again to go on.
        channel, source, root = first[3], first[4], first[5]
        j = i + 1
        while j < n:
            f = frames[j]
            if (f[0] != _DATA or f[3] != channel or f[4] != source or f[5] != root
                    or type(f) is Run):
                break
            j += 1
        run = frames[i:j]
        size = sum(HEADER_SIZE + len(f[8]) + len(f[7]) for f in run)
        hold = None
        peers = self.topology.targets(source, channel, SUB, root)
        if peers:
            onward = self.topology.onward
            parts = [_reencode(f, f[1] - 1) for f in run if onward(f[1])]
            if parts:
                self.counters["forwarded"] += len(parts) * len(peers)
                hold = self._relay(peer, channel, size, b"".join(parts), peers)
        self._deliver(peer, channel, size, hold, run, False)
        return j

    def on_run(self, peer: IPeer, run: Run, i: int) -> int:
        """A :class:`~.wire.Run` the link's decoder grouped: frames sharing every header
        field but ``seq``, so one hop check covers them all and the bytes go on as
        received, hop counts patched in one step. Subscribers here read the payloads
        from the same buffer."""
        _, hops, _, channel, source, root, _, _, start, end, count, _, _ = run
        size = end - start
        hold = None
        topology = self.topology
        peers = topology.targets(source, channel, SUB, root)
        if peers and topology.onward(hops, count):
            self.counters["forwarded"] += count * len(peers)
            hold = self._relay(peer, channel, size, run.relayed(), peers)
        self._deliver(peer, channel, size, hold, run, True)
        return i + 1

    def _deliver(
        self, peer: IPeer, channel: int, size: int, hold: Hold | None, run: Any, block: bool
    ) -> None:
        """Give received frames (a Run when ``block``, else a list) to the local
        subscribers; ``peer``'s credit for their ``size`` bytes comes back once every
        relay and subscriber has let go of them."""
        subs = self.subscribers.get(channel)
        if subs:
            head = run if block else run[0]
            source, root, first = head[4], head[5], head[6]
            if block:
                count = run[10]
                last = first if count == 1 else _last_seq(run)
            else:
                count = len(run)
                last = run[-1][6]
            reader = self.readers.get((source, channel))
            if reader is None:
                reader = self.repair.reader(source, channel, root, first)
            if reader is not None:
                if (reader.next != first or last - first != count - 1 or reader.held
                        or reader.via != root):
                    # Not simply the next ones: a gap, a duplicate, a new path.
                    frames = run.frames() if block else run
                    if self.repair.arrived(reader, head[2], [(f[6], f[7]) for f in frames],
                                           root):
                        # Kept until the reader starts, with the credit that paces it.
                        self.repair.keep_credit(reader, hold or Hold(peer, channel, size,
                                                              self.release))
                        return
                    if hold is None:
                        self.credit(peer, channel, size)
                    else:
                        hold.unref()
                    return
                reader.next = last + 1
                reader.unacked += size
                if reader.unacked >= self.repair.ack_every:
                    self.repair.acknowledge(reader)
            if hold is None:
                hold = Hold(peer, channel, size, self.release)
            for sub in subs:
                if block:
                    sub.deliver_block(run, peer, hold)
                else:
                    sub.deliver_run(run, peer, hold)
        if hold is None:
            self.credit(peer, channel, size)
        else:
            hold.unref()

    def _relay(
        self, peer: IPeer, channel: int, size: int, blob: bytes, targets: list[IPeer]
    ) -> Hold | None:
        """Send ``blob`` (``size`` bytes received from ``peer``) on to ``targets``; the
        Hold that keeps ``peer``'s credit while some target queues it, else None."""
        hold = None
        out = len(blob)
        if self.lane.outlet is not None:
            self.lane.clear()  # (the credit of a channel published here too is read below)
        for target in targets:
            if target.flow.take(channel, out):
                target.send(blob)
            else:
                if hold is None:
                    hold = Hold(peer, channel, size, self.release)
                self._hold_back(target, channel, blob, out, hold)
        return hold

    # --- credit

    def _hold_back(
        self, peer: IPeer, channel: int, data: bytes, size: int, hold: Hold | None
    ) -> None:
        """``peer`` cannot take ``data`` now: queue it, or drop it if the peer is silent
        (busy), since a silent peer returns no credit."""
        if peer.status == _BUSY:
            self.counters["flow_dropped"] += 1
            return
        peer.flow.enqueue(channel, data, size, hold)
        self.counters["flow_queued"] += 1
        if channel in self.publishers and channel not in self.not_ready:
            self._set_not_ready(channel)

    def release(self, hold: Hold) -> None:
        """The last holder let go of received bytes: credit their sender (or, for a local
        publisher's, see whether its channel can take more)."""
        owner = hold.owner
        if owner is None:
            if hold.channel in self.not_ready:
                self.check_ready(hold.channel)
        else:
            self.credit(owner, hold.channel, hold.size)

    def credit(self, peer: IPeer, channel: int, size: int) -> None:
        """``size`` bytes ``peer`` sent on ``channel`` are released: credit them in
        quarter windows."""
        amount = peer.flow.owe(channel, size)
        if amount and not peer.closing:
            peer.send(credit_frame(channel, self.node_id, peer.peer_id, amount))
            self.counters["credit_out"] += 1

    def on_credit(self, peer: IPeer, frame: Frame) -> None:
        channel, amount = frame[3], frame[6]
        if not 0 < amount <= MAX_CREDIT:
            raise ProtocolError(f"CREDIT frame grants {amount} bytes")
        self.counters["credit_in"] += 1
        self.lane.clear()  # (the credit is checked and read below)
        try:
            # (a channel published here: its own queued frames come joined)
            ready = peer.flow.grant(channel, amount, channel in self.outlets)
        except CreditError as e:
            raise ProtocolError(str(e)) from None
        for data in ready:
            if type(data) is tuple:
                peer.send_pair(*data)  # type: ignore[attr-defined]
            else:
                peer.send(data)
        if channel in self.not_ready:
            self.check_ready(channel)
        if ready and self.drain_watchers:
            self._queues_shrank()

    def writable(self, peer: IPeer) -> None:
        """``peer``'s transport drained what it held: send what waited for that."""
        flow = peer.flow
        for channel, box in list(flow.outboxes.items()):
            if box.queue:
                for data in flow.ready(channel, channel in self.outlets):
                    if type(data) is tuple:  # (see on_credit)
                        peer.send_pair(*data)  # type: ignore[attr-defined]
                    else:
                        peer.send(data)
        self.recheck()
        if self.drain_watchers:
            self._queues_shrank()

    def drop(self, peer: IPeer) -> None:
        """``peer`` went silent or away: what waits for it goes (counted), so that the
        publishers behind it resume."""
        dropped = peer.flow.drop()
        if dropped:
            self.counters["flow_dropped"] += dropped
            self.log.warn(
                "dropped {count} queued blocks for {peer} ({status})",
                count=dropped, peer=peer.describe(), status=peer.status,
            )
        self.recheck()
        if self.drain_watchers:
            self._queues_shrank()

    # --- readiness of local publishers

    def ready(self, channel: int) -> bool:
        """Can ``channel`` (published here) take more now? The one place this is decided:
        every target has credit and a writable transport (a silent, busy one does not
        count: what waits for it is dropped), and no local lossless subscriber holds a
        window's worth."""
        for peer in self.topology.targets(self.node_id, channel):
            if peer.status != _BUSY and not peer.flow.can_send(channel):
                return False
        window = self.config.flow_window
        for sub in self.subscribers.get(channel, ()):
            if sub.backlog >= window:
                return False
        return not self.repair.holds_back(channel)

    def _set_not_ready(self, channel: int) -> None:
        self.not_ready.add(channel)
        for pub in self.publishers.get(channel, ()):
            pub.pause()

    def check_ready(self, channel: int) -> None:
        """Resume the local publishers of ``channel`` if it can take more."""
        if channel in self.not_ready and self.ready(channel):
            self.not_ready.discard(channel)
            for pub in list(self.publishers.get(channel, ())):
                pub.resume()

    def recheck(self) -> None:
        for channel in list(self.not_ready):
            self.check_ready(channel)

    def backlog_exceeded(self, channel: int) -> str | None:
        """Why ``channel`` may take no more now (None: it may): more than
        ``publish_backlog`` bytes wait for one target, or one more message would push out
        of the retention one a subscriber still needs."""
        self.lane.clear()  # (the retention's size)
        outlet = self.outlets_ready.get(channel)
        if outlet is not None:
            # Asked before each message while the channel is not ready: the outlet's boxes
            # are its targets' (the picture holds), so the usual answer costs no lookup.
            limit = self.config.publish_backlog
            box = outlet.box
            if (box.queued <= limit if box is not None
                    else all(b.queued <= limit for _, _, b in outlet.targets)):
                retained = self.retained.get(channel)
                if (retained is None or not retained.followers
                        or retained.size < self.config.retention_bytes):
                    return None
        if self.repair.full(channel):
            return (f"its retention ({self.config.retention_bytes} bytes) holds only messages "
                    "a lossless subscriber has not acknowledged yet")
        limit = self.config.publish_backlog
        for peer in self.topology.targets(self.node_id, channel):
            if peer.flow.queued(channel) > limit:
                return f"more than {limit} bytes wait for a lossless subscriber that lags"
        return None

    # --- what waits

    def queued(self, channel: int | None = None) -> int:
        """Bytes of pub/sub data waiting for credit on any link (of one channel, or all)."""
        total = 0
        for peer in self.topology.peers.values():
            flow = peer.flow
            if channel is None:
                total += sum(box.queued for box in flow.outboxes.values())
            else:
                total += flow.queued(channel)
        return total

    def _queues_shrank(self) -> None:
        watchers = self.drain_watchers
        watchers[:] = [watcher for watcher in list(watchers) if not watcher()]
