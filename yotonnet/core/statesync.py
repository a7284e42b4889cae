"""State channels in the core: one value per channel, the last writer wins everywhere.

Sans-IO. Every value carries a version ``(clock, writer)`` (see
:mod:`.stateclock`); holders keep the greatest. :class:`StateSync` stamps
writes made here with the channel's next clock, sends them along the tree to
every holder, applies what arrives (noting each channel's clock even for
frames only passing through, since a client's first node bounds its writes
by it), and tells holders it has not told yet (late joiners, the other side
of a healed partition) its current value, so that all settle on one winner
with no user action.

This is the one state store: the Yoton bridge's translation of Yoton state
slots writes and reads through it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors
from .interfaces import IPeer
from .leaves import LEAF
from .routing import STATE
from .stateclock import MAX_STATE_CLOCK, VERSION, state_version
from .wire import Frame, reencode, state_frame

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["StateSync"]

#: a value: (version, tag, encoded payload)
Value = tuple[tuple[int, int], int, bytes]


class StateSync:
    def __init__(self, node_id: int, topology: Topology) -> None:
        self.node_id = node_id
        self.topology = topology
        #: channel id -> local holder ends (IStateEnd)
        self.holders: dict[int, list[Any]] = {}
        # per state channel: the highest clock of any version seen here (each channel
        # has its own Lamport clock: a write on one cannot disturb the others)
        self._clocks: dict[int, int] = {}
        self._values: dict[int, Value] = {}
        self._told: dict[int, set[int]] = {}
        self._losses_seen = 0  # routing.losses when holders were last told

    def clock(self, channel: int) -> int:
        """The highest clock of any version of ``channel`` seen here."""
        return self._clocks.get(channel, 0)

    def current(self, channel: int) -> Value | None:
        """The value of ``channel`` held here: (version, tag, payload), or None."""
        return self._values.get(channel)

    def set(self, channel: int, tag: int, payload: bytes, writer: int | None = None) -> Value:
        """Write a new value of ``channel`` here (``writer``: a node this one speaks for,
        e.g. a Yoton context behind a bridge); every holder gets it. Returns it."""
        clock = self._clocks.get(channel, 0) + 1
        if clock >= MAX_STATE_CLOCK:
            raise errors.YotonnetError(
                f"state channel {channel:016x} has run out of versions (its clock is at "
                f"{clock - 1}); use another channel"
            )
        self._clocks[channel] = clock
        version = (clock, writer or self.node_id)
        self.apply(channel, version, tag, payload)
        data = self.frame(channel, version, tag, payload, dest=0, source=writer)
        for peer in self.topology.targets(writer or self.node_id, channel, STATE):
            peer.send(data)
        return version, tag, payload

    def frame(
        self, channel: int, version: tuple[int, int], tag: int, payload: bytes, dest: int,
        source: int | None = None,
    ) -> bytes:
        return state_frame(self.topology.hop_limit(), tag, channel, source or self.node_id,
                           dest, VERSION.pack(*version), payload)

    def on_state(self, peer: IPeer | None, frame: Frame) -> None:
        if peer is not None and peer.role == LEAF:
            self.from_leaf(peer, frame)
            return
        channel = frame[3]
        version = state_version(frame[7], channel)
        topology = self.topology
        dest = frame[5]
        if dest not in (0, self.node_id):
            if topology.onward(frame[1]):
                topology.unicast(dest, reencode(frame, frame[1] - 1))
            self._note_clock(channel, version[0])
            return
        if dest == 0:
            peers = topology.targets(frame[4], channel, STATE)
            if peers and topology.onward(frame[1]):
                data = reencode(frame, frame[1] - 1)
                topology.counters["forwarded"] += len(peers)
                for target in peers:
                    target.send(data)
        self._note_clock(channel, version[0])
        payload = frame[7][VERSION.size:]
        if self.apply(channel, version, frame[2], payload) and dest:
            # Told as a new holder: the leaves holding it here are told too.
            self._tell_leaves(channel, version, frame[2], payload)

    def from_leaf(self, peer: IPeer, frame: Frame) -> None:
        """A value from a leaf of ours (its write, or what it held before it came here):
        this node holds it for its leaves and sends it on as its own, its version kept."""
        channel = frame[3]
        version = state_version(frame[7], channel)
        self._note_clock(channel, version[0])
        tag, payload = frame[2], frame[7][VERSION.size:]
        if not self.apply(channel, version, tag, payload):
            return
        data = self.frame(channel, version, tag, payload, dest=0)
        for target in self.topology.targets(peer.peer_id, channel, STATE, self.node_id):
            target.send(data)

    def _tell_leaves(self, channel: int, version: tuple[int, int], tag: int,
                     payload: bytes) -> None:
        leaves = list(self.topology.leaves.holding(channel, STATE))
        if leaves:
            data = self.frame(channel, version, tag, payload, dest=0)
            for leaf in leaves:
                leaf.send(data)

    def _note_clock(self, channel: int, clock: int) -> None:
        if clock > self._clocks.get(channel, 0):
            self._clocks[channel] = clock

    def apply(self, channel: int, version: tuple[int, int], tag: int, payload: bytes) -> bool:
        """Keep ``payload`` if its version beats the one held; True if it did."""
        holders = self.holders.get(channel)
        if not holders and not self.topology.leaves.holding(channel, STATE):
            return False  # only passing through this node
        current = self._values.get(channel)
        if current is not None and current[0] >= version:
            return False
        self._values[channel] = (version, tag, payload)
        for holder in holders or ():
            holder.changed(tag, payload)
        return True

    def routes_changed(self) -> None:
        """Tell holders we have not told yet (late joiners, healed partitions) our value."""
        routing = self.topology.routing
        # A holder told before needs telling again only if it was cut off meanwhile (which
        # takes a loss) or stopped holding the channel; otherwise only holders never told
        # matter, and knowing there are none needs no route computation (records that
        # only add nodes cost none).
        lost = routing.losses != self._losses_seen
        self._losses_seen = routing.losses
        leaves = self.topology.leaves
        for channel, (version, tag, payload) in self._values.items():
            leaf_holders = {p.peer_id: p for p in leaves.holding(channel, STATE)}
            if channel not in self.holders and not leaf_holders:
                continue
            listed = routing.listed_holders(channel, STATE)
            listed.discard(self.node_id)
            listed.update(leaf_holders)
            hub = self.topology.hub
            if hub is not None:
                listed.add(hub.peer_id)  # a leaf's hub holds its values for its leaves
            # A node that stopped holding the channel missed what was written meanwhile:
            # once it holds it again, it is told anew.
            told = self._told.get(channel, set()) & listed
            if not lost and listed <= told:
                self._told[channel] = told
                continue
            reachable = set(routing.holders(channel, STATE))
            reachable.discard(self.node_id)
            reachable.update(leaf_holders)
            if hub is not None:
                reachable.add(hub.peer_id)
            for node in reachable - told:
                self.topology.unicast(node, self.frame(channel, version, tag, payload, node))
            self._told[channel] = reachable
