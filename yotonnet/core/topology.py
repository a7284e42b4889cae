"""The node's picture of the mesh, and the paths it takes from it.

Sans-IO. :class:`Topology` holds the neighbours (as :class:`~.interfaces.IPeer`),
the routing table (:mod:`.routing`) and this node's own record; it floods the
record when links or interests change, takes records from neighbours (within
their limits), and answers the two questions every frame asks: which
neighbours does a message of this source and channel go to
(:meth:`Topology.targets`), and which is the first hop to a node
(:meth:`Topology.unicast`). Both answers are cached until the picture
changes. How many hops a new frame may take is decided here too
(:meth:`Topology.hop_limit`), and whether a received frame may go one more
(:meth:`Topology.onward`: the single hop check, which always counts what it
stops).

Leaves (:mod:`.leaves`) are neighbours outside the picture: a hub keeps
them in :attr:`Topology.leaves` (their holdings counted into its own record,
its frames to them chosen here beside the mesh's), and a leaf keeps its hub
as its only neighbour, the picture it has being the hub's ``view``. Replies
to a caller that is no node of the picture (a leaf of another hub) go back
the way its request came (:meth:`Topology.learn`).

Records from neighbours change the picture at once (the caches are
dropped), but what follows from a change (waiters, requests, state holders,
paused publishers: each a look at the whole table) runs once per run of
records: :meth:`Topology.settle` is called before the next frame of another
kind and at the end of a dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import ContextConfig
from .interfaces import ILog, IPeer
from .leaves import HUB, LEAF, Leaves, parse_leaf, parse_view, star
from .messages import encode_object
from .routing import STATE, SUB, Interest, NodeState, RecordRefused, RoutingTable
from .wire import FrameKind, ProtocolError, encode_frame

__all__ = ["Topology", "BUSY_LINK_COST", "HOP_MARGIN", "control_frame"]

#: the cost of a link whose peer is silent: usable, but any live detour is preferred
BUSY_LINK_COST = 1000
#: hops a frame may take beyond the longest shortest path (routes may still be settling)
HOP_MARGIN = 4
_BUSY = "busy"
_CONTROL = int(FrameKind.CONTROL)
#: return paths learned for callers outside the picture (see Topology.learn)
MAX_LEARNED = 65_536


def control_frame(body: list) -> bytes:
    """A CONTROL frame holding an OBJECT-encoded control message."""
    return encode_frame(_CONTROL, encode_object(body))


class Topology:
    def __init__(
        self,
        node_id: int,
        name: str,
        config: ContextConfig,
        counters: dict[str, int],
        log: ILog,
        on_change: Callable[[], None],
        interests: Callable[[], dict[int, Interest]] = dict,
        leaf_items: Callable[[], list] = list,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.config = config
        self.counters = counters
        self.log = log
        #: called when the picture changed and its consequences must be drawn
        self.on_change = on_change
        self.routing = RoutingTable(node_id, name, config.routing_limits())
        #: neighbour node id -> the link to it
        self.peers: dict[int, IPeer] = {}
        #: records changed the table during the current dispatch (see settle)
        self.pending = False
        #: set while a link dispatches received frames
        self.dispatching = False
        # (source, channel, or ~channel for other roles) -> neighbours it goes to
        self.fanout: dict[tuple[int, int], list[IPeer]] = {}
        #: destination node -> neighbour of the first hop
        self.hop_links: dict[int, IPeer] = {}
        # the hop limit new frames start with (0: work it out again)
        self.hops = 0
        #: caches of other parts, dropped with this one's (see forget_paths)
        self.dependent_caches: list[Any] = []
        # (neighbour, limit) pairs whose refused records were logged (then only counted)
        self._refusals_told: set[tuple[int, str]] = set()
        # the limit this node's own record breaks, once told (None: within them)
        self._own_record_problem: str | None = None
        #: the leaves attached here (this node is their hub)
        self.leaves = Leaves(node_id, self.routing, self.hop_limit, self.send_control)
        #: this node's hub when it is a leaf (its only neighbour), else None
        self.hub: IPeer | None = None
        #: what this node's record lists: its own ends and its leaves'
        self.interests = interests
        #: what this node holds and uses, as a leaf tells its hub
        self.leaf_items = leaf_items
        # a leaf: the hop limit its hub asked for; views drawn so far
        self._view_hops = 0
        self._views = 0
        #: a leaf: the number of its last leaf message, and of the last its hub answered
        self.leaf_told = 0
        self.leaf_answered = -1
        #: a leaf: the node whose tree its messages follow (its hub), else 0
        self.root = 0
        #: caller node id -> the neighbour its request came from (callers not in the
        #: picture: leaves of other hubs)
        self.learned: dict[int, IPeer] = {}

    # --- neighbours

    def peer_up(self, peer: IPeer) -> None:
        """A link is up: send our record (listing it) and every record we hold (a leaf's
        link: nothing until it says what it uses; our hub's: what we use)."""
        if peer.role == LEAF:
            self.forget_paths()
            self.leaves.add(peer)
            self.update_local(leaves=len(self.leaves))
            return
        if peer.role == HUB:
            self.peers[peer.peer_id] = peer
            self.hub = peer
            self.root = peer.peer_id
            self.forget_paths()
            self.routing.set_local(links=self.link_costs())
            self.tell_hub()
            self.on_change()
            return
        self.peers[peer.peer_id] = peer
        self.forget_paths()  # a replaced link may leave the routes unchanged
        if self._refusals_told:
            # A new link of this peer: tell again if its records are still refused.
            self._refusals_told = {k for k in self._refusals_told if k[0] != peer.peer_id}
        # Our own record first, listing the new link. Sent in the re-sync in the version
        # written when the previous link went down, it would tell the neighbour for a
        # moment that we are cut off from it, failing whatever it had just asked us.
        flooded = self.update_local(links=self.link_costs())
        for state in list(self.routing.nodes.values()):
            if flooded and state.node_id == self.node_id:
                continue  # just sent
            peer.send(control_frame(["node", state.to_wire()]))
            self.counters["control_out"] += 1

    def peer_down(self, peer: IPeer, closed: bool) -> bool:
        """A link went down; False if it was not the current link to that peer."""
        if peer.role == LEAF:
            if self.leaves.remove(peer) is None:
                return False
            self.forget_paths()
            if not closed:
                self.update_local(interests=self.interests(), leaves=len(self.leaves))
            return True
        if self.peers.get(peer.peer_id) is not peer:
            return False
        del self.peers[peer.peer_id]
        self.forget_paths()
        if self.learned:
            self.learned = {n: p for n, p in self.learned.items() if p is not peer}
        if peer is self.hub:
            self.hub = None
            self.root = 0
            self.routing.set_view(peer.peer_id, [])
        if not closed:
            self.update_local(links=self.link_costs())
        return True

    def peer_status(self, peer: IPeer) -> None:
        """A link turned quiet or busy, or came back: its cost changes."""
        if self.peers.get(peer.peer_id) is peer:
            self.update_local(links=self.link_costs())

    def link_costs(self) -> dict[int, int]:
        # A quiet or busy link stays usable, but any live detour is preferred to it.
        return {
            node: BUSY_LINK_COST if peer.quiet or peer.status == _BUSY else peer.cost
            for node, peer in self.peers.items()
        }

    # --- this node's record

    def update_local(
        self, links: dict[int, int] | None = None, interests: dict[int, Interest] | None = None,
        leaves: int | None = None,
    ) -> bool:
        """Change this node's own record; True if it changed (and went to every neighbour,
        or, on a leaf, what it uses to its hub)."""
        state = self.routing.set_local(links=links, interests=interests, leaves=leaves)
        if state is None:
            return False
        if self.hub is not None:
            self.tell_hub()
        else:
            self.flood(state, exclude=None)
        self.on_change()
        return True

    def tell_hub(self) -> None:
        """A leaf: say what it holds and uses (again) to its hub."""
        hub = self.hub
        if hub is not None and not hub.closing:
            self.leaf_told += 1
            self.send_control(hub, ["leaf", self.leaf_items(), self.leaf_told])

    def send_control(self, peer: IPeer, body: list) -> None:
        peer.send(control_frame(body))
        self.counters["control_out"] += 1

    # --- leaves and hubs

    def on_leaf(self, peer: IPeer, message: list,
                may_hold: Callable[[int, str], bool] | None = None) -> None:
        """``["leaf", items]`` from a leaf of ours: what it holds joins our record, and it
        is told what it needs to know (``may_hold`` filters what a client was granted)."""
        if peer.role != LEAF:
            return  # only a leaf speaks of itself this way
        items, number = parse_leaf(message)
        entry = self.leaves.entries.get(peer.peer_id)
        if entry is None:
            return
        if self.leaves.take(peer, items, number, may_hold):
            self.forget_paths()
            self.update_local(interests=self.interests())
        self.leaves.send_view(entry)

    def on_view(self, peer: IPeer, message: list) -> None:
        """``["view", hops, holders]`` from our hub: the leaf's whole picture."""
        if peer is not self.hub:
            return
        hops, holders, number = parse_view(message)
        self.leaf_answered = number
        self._views += 1
        self._view_hops = hops
        name = getattr(peer, "peer_name", "") or f"{peer.peer_id:016x}"
        self.routing.set_view(peer.peer_id, star(peer.peer_id, name, self.node_id,
                                                 self._views, holders))
        self.forget_paths()
        self.on_change()

    @property
    def view_current(self) -> bool:
        """Whether this node's picture answers what it last said it uses: always on a
        node; on a leaf, once its hub's view answers its last leaf message."""
        if self.hub is None:
            return not self.leaf_told
        return self.leaf_answered == self.leaf_told

    def learn(self, caller: int, peer: IPeer) -> None:
        """A request from ``caller`` came from ``peer``: if the caller is no node of the
        picture (a leaf of another hub), its reply goes back that way."""
        if (caller in self.routing.nodes or caller in self.leaves.entries
                or self.hub is not None):
            return
        learned = self.learned
        if learned.get(caller) is not peer:
            if len(learned) >= MAX_LEARNED:
                del learned[next(iter(learned))]
            learned[caller] = peer

    def flood(self, state: NodeState, exclude: IPeer | None) -> None:
        frame = control_frame(["node", state.to_wire()])
        if state.node_id == self.node_id:
            self._check_own_record(state, len(frame))
        for peer in self.peers.values():
            if peer is not exclude and not peer.closing:
                peer.send(frame)
                self.counters["control_out"] += 1

    def _check_own_record(self, state: NodeState, size: int) -> None:
        """Warn (once, until it is fixed) when peers with this node's limits would refuse
        its own record: they would close the link, or not route to this node."""
        cfg = self.config
        if size > cfg.max_control_frame:
            limit, text = "max_control_frame", (
                f"its routing record is {size} bytes, more than max_control_frame "
                f"({cfg.max_control_frame}): peers with that limit close the link"
            )
        elif len(state.interests) > cfg.max_record_interests:
            limit, text = "max_record_interests", (
                f"its routing record lists {len(state.interests)} channel interests, more "
                f"than max_record_interests ({cfg.max_record_interests}): peers with that "
                "limit refuse it"
            )
        elif len(state.links) > cfg.max_record_links:
            limit, text = "max_record_links", (
                f"its routing record lists {len(state.links)} links, more than "
                f"max_record_links ({cfg.max_record_links}): peers with that limit refuse it"
            )
        else:
            self._own_record_problem = None
            return
        if limit != self._own_record_problem:
            self._own_record_problem = limit
            self.log.warn(
                "{node}: {text}; raise [context] {limit} on every node of the mesh, or "
                "open fewer channels or links on this one",
                node=self.name, text=text, limit=limit,
            )

    # --- records from neighbours

    def on_record(self, peer: IPeer, message: list) -> None:
        """A ``["node", record]`` control message from ``peer``."""
        if peer.role == LEAF or self.hub is not None:
            return  # a leaf says what it uses otherwise; a leaf's picture is its hub's view
        if len(message) < 2:
            raise ProtocolError("malformed control message: a node message, no record")
        try:
            state = NodeState.from_wire(message[1])
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        try:
            news = self.routing.update(state, via=peer.peer_id)
        except RecordRefused as refusal:
            self._record_refused(peer, refusal)
            return
        if not news:
            return
        if state.node_id == self.node_id:
            self.flood(self.routing.local, exclude=None)
        else:
            self.flood(state, exclude=peer)
        if self.dispatching:
            # Paths are dropped at once (later frames of this dispatch route on the new
            # picture); the rest waits for settle(), once for a run of records.
            self.forget_paths()
            self.pending = True
        else:
            self.on_change()

    def speak_for(self, state: NodeState, via: IPeer) -> bool:
        """Take a record this node writes for a node only it can speak for (a Yoton
        context behind ``via``), send it to every other neighbour and draw the
        consequences; False if it changed nothing."""
        if not self.routing.update(state):
            return False
        self.flood(state, exclude=via)
        self.on_change()
        return True

    def _record_refused(self, peer: IPeer, refusal: RecordRefused) -> None:
        """Count a refused record; log it the first time for this neighbour and limit (a
        flood of refusals must not flood the log too)."""
        self.counters["records_refused"] += 1
        key = (peer.peer_id, refusal.limit)
        if key in self._refusals_told:
            return
        self._refusals_told.add(key)
        self.log.warn(
            "{node}: routing record from {peer} refused by limit {limit}: {why}. If the "
            "mesh is legitimately this large, raise [context] {limit} on this node; further "
            "records from this neighbour refused by this limit are only counted "
            "(counters: records_refused)",
            node=self.name, peer=peer.describe(), limit=refusal.limit, why=str(refusal),
        )

    def settle(self) -> None:
        """Draw the consequences of records taken during this dispatch (before a frame of
        another kind, and when the dispatch ends)."""
        if self.pending:
            self.on_change()

    def expire(self, now: float) -> None:
        """Forget records of nodes unreachable for ``stale_after``."""
        if self.routing.expire(now, self.config.stale_after):
            self.on_change()

    # --- paths

    def forget_paths(self) -> None:
        self.hops = 0
        self.fanout.clear()
        self.hop_links.clear()
        for cache in self.dependent_caches:
            cache.clear()

    def hop_limit(self) -> int:
        """The hop limit a frame this node makes starts with."""
        hops = self.hops
        if not hops:
            hops = self.hops = max(
                1, self._view_hops,
                min(self.config.max_hops, self.routing.max_hops() + HOP_MARGIN),
            )
        return hops

    def onward(self, hops: int, count: int = 1) -> bool:
        """May a frame that arrived with ``hops`` left go one hop further? (A loop while
        routes converge ends here; ``count`` frames are counted as stopped.)"""
        if hops > 1:
            return True
        self.counters["hop_limit"] += count
        return False

    def targets(self, source: int, channel: int, role: str = SUB, root: int = 0) -> list[IPeer]:
        """The neighbours a ``source``'s frame of ``channel`` goes to (cached): along the
        tree of ``root``, the hub of a source that is a leaf, else of the source itself;
        and to the leaves of this node that hold the channel (but the source)."""
        if self.hub is not None and source == self.node_id and (
            role == STATE or not self.view_current
        ):
            # A leaf's state values go to its hub, which holds them for its leaves; and
            # while its hub has not answered what it uses, the hub decides.
            return [self.hub]
        key = (source, channel) if role is SUB else (source, ~channel)
        if root:
            key = (*key, root)
        peers = self.fanout.get(key)
        if peers is None:
            peers = []
            known = self.peers
            leaves = self.leaves
            for node in self.routing.multicast_targets(root or source, channel, role):
                peer = known.get(node)
                if peer is not None:
                    peers.append(peer)
            if leaves.entries:
                peers.extend(p for p in leaves.holding(channel, role) if p.peer_id != source)
            self.fanout[key] = peers
        return peers

    def unicast(self, dest: int, data: bytes) -> bool:
        """Send ``data`` toward node ``dest``; False (counted) when it is unreachable."""
        peer = self.hop_links.get(dest)  # (hop_to's common case, without its call)
        if peer is None:
            peer = self.hop_to(dest)
            if peer is None:
                return False
        peer.send(data)
        return True

    def hop_to(self, dest: int) -> IPeer | None:
        """The neighbour toward node ``dest`` (kept until the paths change); None, counted,
        when it is unreachable."""
        peer = self.hop_links.get(dest)
        if peer is None:
            peer = self.first_hop(dest)
            if peer is None:
                self.counters["no_route"] += 1
                return None
            self.hop_links[dest] = peer
        return peer

    def first_hop(self, dest: int) -> IPeer | None:
        """The neighbour toward ``dest``: a leaf of ours, the next hop of the picture, the
        way a caller's request came, or (on a leaf) the hub; None if there is none."""
        peer = self.leaves.peer(dest)
        if peer is not None:
            return peer
        hop = self.routing.next_hop(dest)
        if hop is not None:
            return self.peers.get(hop)
        if self.hub is not None:
            return self.hub
        peer = self.learned.get(dest)
        if peer is not None and (peer.closing or self.peers.get(peer.peer_id) is not peer):
            del self.learned[dest]
            return None
        return peer

    # --- interest

    def interest_count(self, channel: int | tuple[int, ...], role: str) -> int:
        """Reachable ``role`` holders of ``channel`` (or of several channel ids, summed)."""
        total = 0
        routing = self.routing
        for chan in channel if isinstance(channel, tuple) else (channel,):
            for node in routing.holders(chan, role):
                interest = routing.interest_of(node, chan)
                if interest is not None:
                    total += interest.count
        return total
