"""The tunables of a node (``ContextConfig``): plain data, every time in seconds.

Read by the core (windows, hop limits, record limits, backlogs) and by the
Twisted layers (heartbeats, timeouts, reconnection); the TOML ``[context]``
table sets any field (:mod:`yotonnet.service.config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .flow import DEFAULT_WINDOW
from .routing import (
    DEFAULT_MAX_NODES,
    DEFAULT_MAX_NODES_PER_PEER,
    DEFAULT_MAX_RECORD_INTERESTS,
    DEFAULT_MAX_RECORD_LINKS,
    DEFAULT_MAX_ROUTING_ENTRIES,
    RoutingLimits,
)
from .wire import DEFAULT_MAX_CONTROL_FRAME, DEFAULT_MAX_FRAME, MAX_HOPS

__all__ = ["ContextConfig", "MAX_READ_SIZE", "MAX_REPLY_POLL", "MIN_READ_SIZE"]

#: bounds of ContextConfig.read_size: below a few KiB every frame takes several reads;
#: above some MiB each read allocates that much before it shrinks to what came
MIN_READ_SIZE = 4096
MAX_READ_SIZE = 16 << 20
#: the longest ContextConfig.reply_poll: every other link and timer waits meanwhile
MAX_REPLY_POLL = 0.01


@dataclass
class ContextConfig:
    """Tunables of a context; every time is in seconds."""

    max_frame: int = DEFAULT_MAX_FRAME
    heartbeat: float = 1.0
    busy_timeout: float = 5.0
    #: a node link whose peer has been silent this long costs as much as a busy one, so
    #: traffic takes any detour at once; nothing is reported for it (status stays "up"
    #: until busy_timeout). 0: only busy links are routed around. Keep it above the
    #: heartbeat of both ends: a peer says something at least once per heartbeat
    reroute_after: float = 1.5
    #: close a link whose peer stays silent this long (0: never; busy is reported meanwhile)
    dead_timeout: float = 0.0
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 10.0
    #: cap on the hop limit a frame starts with; below it, each frame gets the length of
    #: this node's longest shortest path plus a margin, so a loop while routes converge dies
    #: out within a few hops however large the mesh
    max_hops: int = MAX_HOPS
    #: forget a node's record after it has been unreachable this long
    stale_after: float = 60.0
    #: bytes per channel a neighbour may send this node before it releases them
    flow_window: int = DEFAULT_WINDOW
    #: bytes a publisher may queue past its window before send() raises FlowControlError
    publish_backlog: int = 4 << 20
    #: bytes of its recent messages a publisher's node keeps per lossless channel, to send
    #: again to a subscriber that missed some (see yotonnet.core.repair); the publisher
    #: pauses at half of it while a subscriber still owes acknowledgement; 0: no repair
    retention_bytes: int = 8 << 20
    #: bytes of messages that arrived out of order a node holds for its lossless
    #: subscribers, all sources together, until the gap before them is filled
    reorder_bytes: int = 4 << 20
    #: the most bytes one answer to a repair request sends again (then the next is asked)
    repair_batch: int = 1 << 20
    #: how long a publisher keeps waiting for a silent lossless subscriber, and a
    #: subscriber for a silent publisher, before the outage counts as beyond repair
    repair_wait: float = 10.0
    #: publishers and channels one node tracks for its lossless subscribers, and
    #: subscribers one published channel tracks (past these, no repair: gaps counted)
    max_repair_tracks: int = 65_536
    #: idempotent requests a replier node remembers (by caller and request id) so that
    #: a copy sent again after a reroute is served once, and bytes of their replies kept
    #: to answer such a copy (past either, the oldest are forgotten: served again)
    recent_requests: int = 16_384
    recent_reply_bytes: int = 4 << 20
    #: write small frames to a TCP socket at once when Twisted has nothing buffered for
    #: it, instead of in the next reactor turn (see yotonnet.mesh.writer); off: Twisted's
    eager_writes: bool = True
    #: seconds a context polls a link's socket for the reply to a call it just sent,
    #: before its reactor may sleep (see yotonnet.mesh.replypoll); a sequential caller's
    #: round trip then skips most of a wake-up. Up to 0.01; 0: never poll
    reply_poll: float = 100e-6
    #: the most bytes a link over TCP or a unix socket takes in one read (Twisted's own is
    #: 64 KiB): a busy link's reads each carry more frames, for one dispatch's fixed cost
    #: (a subscriber of 100-byte messages spends about a tenth less per message); a read
    #: holds only what arrived, so a quiet link costs nothing more
    read_size: int = 256 << 10
    #: bytes a link may still write (replies, control frames) while its peer reads nothing
    #: before it is cut as a slow consumer (flow-controlled data waits instead)
    max_link_buffer: int = 32 << 20
    #: CONTROL frames (routing records, identities, claims) larger than this many bytes
    #: are a protocol error that closes the link, refused before they are decoded
    max_control_frame: int = DEFAULT_MAX_CONTROL_FRAME
    #: Limits on routing records from neighbours (see yotonnet.core.routing.RoutingLimits);
    #: a record past one is dropped, logged once per neighbour and limit, and counted in
    #: counters["records_refused"]. Nodes the routing table holds:
    max_nodes: int = DEFAULT_MAX_NODES
    #: nodes one neighbour may introduce; 0: as many as max_nodes (a leaf, such as any
    #: client of a hub, learns the whole mesh from its one neighbour)
    max_nodes_per_peer: int = DEFAULT_MAX_NODES_PER_PEER
    #: links one node record may list
    max_record_links: int = DEFAULT_MAX_RECORD_LINKS
    #: channel interests one node record may list
    max_record_interests: int = DEFAULT_MAX_RECORD_INTERESTS
    #: links plus interests over every record the routing table holds
    max_routing_entries: int = DEFAULT_MAX_ROUTING_ENTRIES

    def check(self) -> None:
        """Raise ValueError for settings that contradict each other or are out of range."""
        if not MIN_READ_SIZE <= self.read_size <= MAX_READ_SIZE:
            raise ValueError(
                f"read_size = {self.read_size!r} must be from {MIN_READ_SIZE} to "
                f"{MAX_READ_SIZE} bytes (256 KiB by default)"
            )
        if not 0 <= self.reply_poll <= MAX_REPLY_POLL:
            raise ValueError(
                f"reply_poll = {self.reply_poll!r} must be from 0 (no polling) to "
                f"{MAX_REPLY_POLL} s: nothing else runs while it polls (100 us by default)"
            )
        if 0 < self.reroute_after <= self.heartbeat:
            raise ValueError(
                f"reroute_after = {self.reroute_after!r} must be longer than heartbeat = "
                f"{self.heartbeat!r} (a quiet peer speaks once per heartbeat, so every link "
                "would be routed around between two), or 0 to route around busy links only"
            )

    def routing_limits(self) -> RoutingLimits:
        """The routing record limits these settings give."""
        return RoutingLimits(
            max_nodes=self.max_nodes,
            max_nodes_per_peer=self.max_nodes_per_peer,
            max_record_links=self.max_record_links,
            max_record_interests=self.max_record_interests,
            max_routing_entries=self.max_routing_entries,
        )
