"""Routing: topology and interest tables, and the decisions made from them.

Sans-IO: pure data in, decisions out. Each node describes itself in a
:class:`NodeState` record (its links with their costs, and its interest: which
channels it has subscribers, repliers or state holders for), stamped with a
version that only grows. Records spread by flooding (a node forwards a record
only when it is newer than the one it holds) and are all re-sent when a link
comes up, so every node converges on the same picture of the mesh.

From that picture each node computes, by Dijkstra with a deterministic
tie-break on node id:

* for a unicast destination, the next hop;
* for a message multicast from a source, the neighbours that are its children
  in the source's shortest-path tree and have interest somewhere below them.

Because every node computes the same tree for a source, each interested node
receives each message exactly once in steady state, over any graph, cycles
included. A link is used only when both ends list it.

Records from neighbours are bounded (:class:`RoutingLimits`): links and
interests per record, nodes per neighbour that introduced them, nodes and
entries in the table. A record past a limit is refused with
:class:`RecordRefused`, naming the limit; the table is left as it was.
Routes are computed lazily, at most once per change of the table however many
questions follow (:attr:`RoutingTable.route_computations` counts the runs), and
interest is indexed by channel, so that answering who holds a channel costs
the holders, not the whole table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import MAX_NODE_NAME, check_peer_name

SUB = "sub"
REP = "rep"
STATE = "state"
ROLES = (SUB, REP, STATE)
# The role constants by value: records share them instead of a string each per interest.
_ROLE = {role: role for role in ROLES}
_MAX_U64 = 2**64 - 1

#: Defaults of :class:`RoutingLimits` (and of the ContextConfig settings of the same
#: names). A legitimate mesh of a hundred nodes, some with thousands of channels, is far
#: inside them; a node record at the per-record limits (about 0.9 MB) still fits in a
#: CONTROL frame of the default size (yotonnet.wire.DEFAULT_MAX_CONTROL_FRAME).
DEFAULT_MAX_NODES = 10_000
#: 0: as many as max_nodes. A node with one neighbour (every client of a hub) learns the
#: whole mesh from it, so a lower default would have every leaf refuse records as soon as
#: its hub held more nodes than that, fake ones included; lower it on a hub whose
#: neighbours each bring a known number of nodes.
DEFAULT_MAX_NODES_PER_PEER = 0
DEFAULT_MAX_RECORD_LINKS = 4_096
DEFAULT_MAX_RECORD_INTERESTS = 16_384
DEFAULT_MAX_ROUTING_ENTRIES = 1_000_000


@dataclass(frozen=True)
class RoutingLimits:
    """Bounds on what records heard from neighbours may add to a :class:`RoutingTable`.

    Records this node writes itself (its own, those of Yoton peers it speaks
    for) are not bounded: the limits protect it from its neighbours.
    """

    #: nodes the table holds; records of further nodes are refused
    max_nodes: int = DEFAULT_MAX_NODES
    #: nodes one neighbour may introduce (nodes whose record reached us first through
    #: it); 0: as many as max_nodes
    max_nodes_per_peer: int = DEFAULT_MAX_NODES_PER_PEER
    #: links one record may list
    max_record_links: int = DEFAULT_MAX_RECORD_LINKS
    #: channel interests one record may list
    max_record_interests: int = DEFAULT_MAX_RECORD_INTERESTS
    #: links plus interests over every record the table holds
    max_routing_entries: int = DEFAULT_MAX_ROUTING_ENTRIES


class RecordRefused(Exception):
    """A well-formed record from a neighbour that a :class:`RoutingLimits` bound refuses.

    ``limit`` names the bound (a :class:`RoutingLimits` field, which is also the
    ContextConfig setting); the message says what the record wanted and what to do.
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Interest:
    role: str
    type_name: str
    count: int
    #: of a REP interest: methods every replier behind it declared idempotent (a call
    #: to one whose path broke is sent again, see yotonnet.core.requests)
    idempotent: frozenset[str] = frozenset()

    def to_item(self, channel: int) -> list:
        """``[channel, role, type, count]``, plus the idempotent methods if any."""
        item: list = [channel, self.role, self.type_name, self.count]
        if self.idempotent:
            item.append(sorted(self.idempotent))
        return item


#: the most idempotent method names one interest may list, and the longest name
MAX_IDEMPOTENT = 256
MAX_METHOD_NAME = 1024


def interest_from_item(item: Any, role: str) -> tuple[int, Interest]:
    """``(channel, Interest)`` from ``[channel, role, type, count(, methods)]``; ValueError
    or TypeError says what is wrong (``role`` is the item's, already checked)."""
    channel, _, type_name, count, *more = item
    if len(more) > 1:
        raise ValueError(f"interest of {4 + len(more)} fields, at most 5")
    methods: frozenset[str] = frozenset()
    if more:
        names = more[0]
        if not isinstance(names, list) or len(names) > MAX_IDEMPOTENT or not all(
            isinstance(n, str) and 0 < len(n) <= MAX_METHOD_NAME for n in names
        ):
            raise ValueError(
                f"idempotent methods must be a list of at most {MAX_IDEMPOTENT} names of "
                f"1 to {MAX_METHOD_NAME} characters"
            )
        methods = frozenset(names)
    return int(channel), Interest(role, str(type_name), int(count), methods)


@dataclass
class NodeState:
    """What one node says about itself; the unit of flooding."""

    node_id: int
    name: str
    version: int
    links: dict[int, int] = field(default_factory=dict)
    interests: dict[int, Interest] = field(default_factory=dict)
    #: leaf contexts attached to this node (yotonnet.core.leaves); they are not nodes
    leaves: int = 0

    def to_wire(self) -> list:
        record = [
            self.node_id,
            self.name,
            self.version,
            [[n, c] for n, c in sorted(self.links.items())],
            [i.to_item(ch) for ch, i in sorted(self.interests.items())],
        ]
        if self.leaves:
            record.append(self.leaves)
        return record

    @classmethod
    def from_wire(cls, data: object) -> NodeState:
        """Parse a record; ValueError says what is wrong (the sender's fault).

        The node name must be one a peer may announce
        (:func:`yotonnet.core.names.check_peer_name`), as in a HELLO: names reach
        terminals, logs and web pages.
        """
        try:
            node_id, name, version, links, interests, *more = data  # type: ignore[misc]
            if len(more) > 1:
                raise ValueError(f"{5 + len(more)} fields, at most 6")
            leaves = int(more[0]) if more else 0
            if not 0 <= leaves <= _MAX_U64:
                raise ValueError(f"leaf count {leaves} out of range")
            state = cls(
                int(node_id),
                name,
                int(version),
                {int(n): int(c) for n, c in links},
                dict(interest_from_item(item, _ROLE.get(item[1], item[1]))
                     for item in interests),
                leaves,
            )
        except (TypeError, ValueError, OverflowError, LookupError) as e:
            # (LookupError: an interest item too short to hold a role, say [[]])
            raise ValueError(f"malformed node state record: {e}") from None
        for node in (state.node_id, *state.links):
            if not 0 < node <= _MAX_U64:
                raise ValueError(f"node id {node} out of range")
        try:
            check_peer_name(name)
        except ValueError as e:
            raise ValueError(
                f"record of node {state.node_id:016x} refused: {e}; a node name must be at "
                f"most {MAX_NODE_NAME} printable characters"
            ) from None
        for chan in state.interests:
            if not 0 <= chan <= _MAX_U64:
                raise ValueError(f"channel id {chan} out of range")
        for interest in state.interests.values():
            if interest.role not in _ROLE:
                raise ValueError(f"unknown interest role {interest.role!r}")
        return state


def path_in(parents: Mapping[int, int], source: int, dest: int) -> list[int] | None:
    """The nodes from ``source`` to ``dest`` in a :meth:`RoutingTable.parents` mapping
    of ``source``'s routes (None if ``dest`` was not reachable in it)."""
    path = [dest]
    node = dest
    while node != source:
        node = parents.get(node)  # type: ignore[assignment]
        if node is None or len(path) > len(parents):
            return None
        path.append(node)
    path.reverse()
    return path


class RoutingTable:
    """The node's view of the mesh, and the routes computed from it."""

    def __init__(self, node_id: int, name: str, limits: RoutingLimits | None = None) -> None:
        self.node_id = node_id
        #: bounds on records heard from neighbours (see :meth:`update`)
        self.limits = limits if limits is not None else RoutingLimits()
        self.nodes: dict[int, NodeState] = {node_id: NodeState(node_id, name, 1)}
        self._dist: dict[int, int] | None = None
        self._parent: dict[int, int] = {}
        self._next_hop: dict[int, int] = {}
        self._deepest = 0
        # source -> (parent of each node in its shortest-path tree, this node's children)
        self._trees: dict[int, tuple[dict[int, int], list[int]]] = {}
        self._unreachable_since: dict[int, float] = {}
        # channel -> node -> that node's interest in it: who holds a channel, without
        # scanning every record
        self._by_channel: dict[int, dict[int, Interest]] = {}
        # node -> the neighbour whose record of it was the first we took; and per
        # neighbour, how many of the nodes held it introduced (max_nodes_per_peer)
        self._introduced_by: dict[int, int] = {}
        self._introduced: dict[int, int] = {}
        #: links plus interests over every record held (max_routing_entries)
        self.entries = 0
        #: bumped by every change of the picture
        self.generation = 0
        #: bumped by every change that may have cut nodes off (a link dropped from a record,
        #: a record forgotten); adding records or links never makes a node unreachable
        self.losses = 0
        #: bumped by every rise of a link's cost in a record (a silent link is routed
        #: around so): with losses, what may move a route off a path it took
        self.rises = 0
        #: runs of the shortest-path computation (own routes and multicast trees)
        self.route_computations = 0
        #: records refused, per limit name
        self.refused: dict[str, int] = {}
        #: channels whose holders changed since the last :meth:`take_changes`, and whether
        #: some record's links changed (which may change who is reachable)
        self.changed_channels: set[int] = set()
        self.links_changed = False

    # --- changing the picture

    @property
    def local(self) -> NodeState:
        return self.nodes[self.node_id]

    def set_local(
        self,
        links: Mapping[int, int] | None = None,
        interests: Mapping[int, Interest] | None = None,
        leaves: int | None = None,
    ) -> NodeState | None:
        """Change this node's own record; return it (to flood) if anything changed."""
        old = self.local
        new_links = dict(links) if links is not None else old.links
        new_interests = dict(interests) if interests is not None else old.interests
        new_leaves = leaves if leaves is not None else old.leaves
        if (new_links == old.links and new_interests == old.interests
                and new_leaves == old.leaves):
            return None
        state = NodeState(old.node_id, old.name, old.version + 1, new_links, new_interests,
                          new_leaves)
        self._store(state)
        self._invalidate()
        return state

    def update(self, state: NodeState, via: int | None = None) -> bool:
        """Take a record heard from a neighbour; True if it was news (flood it on).

        ``via`` is the neighbour it came from: the record is then held to
        :attr:`limits`, and one past a limit raises :class:`RecordRefused`,
        leaving the table as it was. Without ``via`` (a record this node
        writes for a peer it speaks for) nothing is bounded.
        """
        if state.node_id == self.node_id:
            # Our own record came back, maybe from before a restart: jump past it.
            mine = self.local
            # Only a record from before a restart (newer, or same version with other
            # content) is news; our current record echoed back over a cycle is not.
            stale = state.version > mine.version or (
                state.version == mine.version
                and (state.links != mine.links or state.interests != mine.interests)
            )
            if stale:
                self.nodes[self.node_id] = NodeState(
                    mine.node_id, mine.name, state.version + 1, mine.links, mine.interests,
                    mine.leaves,
                )
                return True
            return False
        held = self.nodes.get(state.node_id)
        if held is not None and held.version >= state.version:
            return False
        if via is not None:
            self._admit(state, held, via)
            if held is None:
                self._introduced_by[state.node_id] = via
                self._introduced[via] = self._introduced.get(via, 0) + 1
        self._store(state)
        self._invalidate()
        return True

    def _admit(self, state: NodeState, held: NodeState | None, via: int) -> None:
        """Raise RecordRefused if ``state`` (from neighbour ``via``) breaks a limit."""
        limits = self.limits
        who = f"node {state.node_id:016x} ({state.name})"
        links, interests = len(state.links), len(state.interests)
        if links > limits.max_record_links:
            self._refuse(
                "max_record_links",
                f"the record of {who} lists {links} links, more than max_record_links "
                f"({limits.max_record_links})",
            )
        if interests > limits.max_record_interests:
            self._refuse(
                "max_record_interests",
                f"the record of {who} lists {interests} channel interests, more than "
                f"max_record_interests ({limits.max_record_interests})",
            )
        entries = self.entries + links + interests
        if held is not None:
            entries -= len(held.links) + len(held.interests)
        if entries > limits.max_routing_entries and (held is None or entries > self.entries):
            self._refuse(
                "max_routing_entries",
                f"the routing table holds {self.entries} links and interests; the record of "
                f"{who} would take it past max_routing_entries ({limits.max_routing_entries})",
            )
        if held is not None:
            return
        if len(self.nodes) >= limits.max_nodes:
            self._refuse(
                "max_nodes",
                f"the routing table holds {len(self.nodes)} nodes, the limit max_nodes; "
                f"the record of {who} is not taken",
            )
        introduced = self._introduced.get(via, 0)
        if limits.max_nodes_per_peer and introduced >= limits.max_nodes_per_peer:
            self._refuse(
                "max_nodes_per_peer",
                f"the neighbour {via:016x} introduced {introduced} nodes, the limit "
                f"max_nodes_per_peer; the record of {who} is not taken",
            )

    def _refuse(self, limit: str, text: str) -> None:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        raise RecordRefused(text, limit)

    def _store(self, state: NodeState) -> None:
        """Hold ``state`` in place of its node's previous record, keeping the indexes."""
        node_id = state.node_id
        old = self.nodes.get(node_id)
        by_channel = self._by_channel
        changed = self.changed_channels
        if old is None:
            self.links_changed = True
            changed.update(state.interests)
        else:
            self.entries -= len(old.links) + len(old.interests)
            if old.links is not state.links and old.links != state.links:
                self.links_changed = True
                new_links = state.links
                if any(n not in new_links for n in old.links):
                    self.losses += 1
                if any(new_links.get(n, c) > c for n, c in old.links.items()):
                    self.rises += 1
            if old.interests is not state.interests:
                for chan, interest in old.interests.items():
                    if state.interests.get(chan) != interest:
                        changed.add(chan)
                for chan in state.interests:
                    if chan not in old.interests:
                        changed.add(chan)
                for chan in old.interests:
                    holders = by_channel.get(chan)
                    if holders is not None:
                        holders.pop(node_id, None)
                        if not holders:
                            del by_channel[chan]
        self.nodes[node_id] = state
        self.entries += len(state.links) + len(state.interests)
        if old is None or old.interests is not state.interests:
            for chan, interest in state.interests.items():
                holders = by_channel.get(chan)
                if holders is None:
                    holders = by_channel[chan] = {}
                holders[node_id] = interest

    def forget(self, node_ids: Iterable[int]) -> None:
        by_channel = self._by_channel
        for node_id in node_ids:
            if node_id == self.node_id:
                continue
            state = self.nodes.pop(node_id, None)
            if state is None:
                continue
            self.losses += 1
            self.links_changed = True
            self.changed_channels.update(state.interests)
            self.entries -= len(state.links) + len(state.interests)
            for chan in state.interests:
                holders = by_channel.get(chan)
                if holders is not None:
                    holders.pop(node_id, None)
                    if not holders:
                        del by_channel[chan]
            via = self._introduced_by.pop(node_id, None)
            if via is not None:
                left = self._introduced[via] - 1
                if left:
                    self._introduced[via] = left
                else:
                    del self._introduced[via]
        self._invalidate()

    def take_changes(self) -> tuple[set[int], bool]:
        """The channels whose holders changed, and whether links changed, since the last
        call (the leaves' views are redrawn from these: yotonnet.core.leaves)."""
        changed, links = self.changed_channels, self.links_changed
        self.changed_channels = set()
        self.links_changed = False
        return changed, links

    def set_view(self, hub: int, states: list[NodeState]) -> None:
        """A leaf's whole picture of the mesh: its hub, and the nodes its hub says hold
        the channels it uses, each drawn as a neighbour of the hub. Replaces every record
        but this node's own (a leaf floods none of them)."""
        me = self.node_id
        before = set(self.nodes)
        star = {s.node_id: s for s in states if s.node_id != me}
        gone = [n for n in self.nodes if n != me and n not in star]
        if gone:
            self.forget(gone)
        for state in star.values():
            self._store(state)
        if before - set(self.nodes):
            self.losses += 1
        self._invalidate()

    def introduced_by(self, peer: int) -> int:
        """How many of the nodes held were introduced by neighbour ``peer``."""
        return self._introduced.get(peer, 0)

    def expire(self, now: float, max_age: float) -> list[int]:
        """Forget nodes unreachable for ``max_age`` or longer; return their ids."""
        dist = self._ensure_routes()
        gone = []
        for node_id in list(self.nodes):
            if node_id in dist:
                self._unreachable_since.pop(node_id, None)
                continue
            since = self._unreachable_since.setdefault(node_id, now)
            if now - since >= max_age:
                gone.append(node_id)
                del self._unreachable_since[node_id]
        if gone:
            self.forget(gone)
        return gone

    def _invalidate(self) -> None:
        # Only dropped here; recomputed when next asked (see _ensure_routes).
        self._dist = None
        self._trees.clear()
        self.generation += 1

    # --- graph

    def _adjacent(self, a: int) -> Iterable[tuple[int, int]]:
        """Links of ``a`` that the other end confirms, each at the higher of the costs
        its two ends announce (a link one end finds silent is costly both ways, since a
        path is only as good as its worse direction)."""
        state = self.nodes.get(a)
        if state is None:
            return ()
        nodes = self.nodes
        adjacent = []
        for b, cost in state.links.items():
            other = nodes.get(b)
            if other is not None:
                back = other.links.get(a)
                if back is not None:
                    adjacent.append((b, cost if cost >= back else back))
        return adjacent

    def _shortest_tree(self, root: int) -> tuple[dict[int, int], dict[int, int], list[int]]:
        """Dijkstra from ``root``: (distance, parent) per reachable node, and the nodes
        in the order they were settled (each after its parent)."""
        self.route_computations += 1
        dist = {root: 0}
        parent: dict[int, int] = {}
        heap = [(0, root)]
        done: set[int] = set()
        order: list[int] = []
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            order.append(node)
            for nbr, cost in self._adjacent(node):
                nd = d + max(1, cost)
                old = dist.get(nbr)
                # Deterministic tie-break: equal distance prefers the lower parent id.
                if old is None or nd < old or (nd == old and node < parent.get(nbr, node + 1)):
                    dist[nbr] = nd
                    parent[nbr] = node
                    heapq.heappush(heap, (nd, nbr))
        return dist, parent, order

    def _ensure_routes(self) -> dict[int, int]:
        if self._dist is None:
            me = self.node_id
            dist, parent, order = self._shortest_tree(me)
            # Every node is settled after its parent (costs are at least 1), so one pass in
            # that order gives each its first hop and depth from its parent's: linear, where
            # walking each node's path up to the root would be quadratic on a long chain.
            next_hop: dict[int, int] = {}
            depth: dict[int, int] = {me: 0}
            for node in order[1:]:
                up = parent[node]
                next_hop[node] = node if up == me else next_hop[up]
                depth[node] = depth[up] + 1
            self._dist = dist
            self._parent = parent
            self._next_hop = next_hop
            self._deepest = max(depth.values())
        return self._dist

    def max_hops(self) -> int:
        """Links on the longest of this node's shortest paths (0 when alone)."""
        self._ensure_routes()
        return self._deepest

    def reachable(self) -> set[int]:
        return set(self._ensure_routes())

    def is_reachable(self, node_id: int) -> bool:
        """Whether ``node_id`` is reachable (without building the whole set)."""
        return node_id in self._ensure_routes()

    def distance(self, node_id: int) -> int | None:
        return self._ensure_routes().get(node_id)

    def next_hop(self, dest: int) -> int | None:
        """The neighbour to send a unicast frame for ``dest`` to (None if unreachable)."""
        self._ensure_routes()
        return self._next_hop.get(dest)

    def parents(self) -> Mapping[int, int]:
        """Each reachable node's predecessor on this node's shortest path to it. A new
        mapping each time the routes are computed, never changed after: holding it
        keeps the paths of that moment (see :func:`path_in`)."""
        self._ensure_routes()
        return self._parent

    def link_cost(self, a: int, b: int) -> int | None:
        """The cost of the link a-b as routes count it (the higher of what its ends
        announce), or None if it is not in the graph now."""
        one, other = self.nodes.get(a), self.nodes.get(b)
        if one is None or other is None:
            return None
        there, back = one.links.get(b), other.links.get(a)
        if there is None or back is None:
            return None
        return there if there >= back else back

    # --- interest

    def holders(self, channel: int, role: str) -> list[int]:
        """Reachable nodes with ``role`` interest in ``channel``, nearest first."""
        interested = self._by_channel.get(channel)
        if not interested:
            return []
        found = [n for n, i in interested.items() if i.role == role and i.count > 0]
        if not found or found == [self.node_id]:
            # No one else holds it: no routes needed (a node holding a state value asks
            # this after every routing change, which must not cost a route computation).
            return found
        dist = self._ensure_routes()
        found = [n for n in found if n in dist]
        found.sort(key=lambda n: (dist[n], n))
        return found

    def listed_holders(self, channel: int, role: str) -> set[int]:
        """Nodes whose records list ``role`` interest in ``channel``, reachable or not (no
        route computation)."""
        interested = self._by_channel.get(channel)
        if not interested:
            return set()
        return {n for n, i in interested.items() if i.role == role and i.count > 0}

    def interest_of(self, node_id: int, channel: int) -> Interest | None:
        state = self.nodes.get(node_id)
        return state.interests.get(channel) if state else None

    def multicast_targets(self, source: int, channel: int, role: str = SUB) -> list[int]:
        """Neighbours to forward a ``source``'s message on ``channel`` to.

        They are this node's children in the source's shortest-path tree that
        have a ``role`` holder in their subtree.
        """
        me = self.node_id
        cached = self._trees.get(source)
        if cached is None:
            if source == me:
                self._ensure_routes()  # the same tree as our own routes: computed once
                tree = self._parent
            else:
                _, tree, _ = self._shortest_tree(source)
            cached = self._trees[source] = (tree, [c for c, p in tree.items() if p == me])
        tree, children = cached
        if not children or (source != me and me not in tree):
            return []
        interested = self._by_channel.get(channel)
        if not interested:
            return []
        below: set[int] = set()
        for node_id, interest in interested.items():
            if interest.role != role or interest.count <= 0:
                continue
            # Walk up from the holder: the child of ours its path to the source passes
            # through, if any, has it below.
            hop = node_id
            while hop != source:
                up = tree.get(hop)
                if up is None:
                    break
                if up == me:
                    below.add(hop)
                    break
                hop = up
            if len(below) == len(children):
                break
        return [child for child in children if child in below]

    # --- introspection

    def snapshot(self) -> dict:
        dist = self._ensure_routes()
        return {
            "node": f"{self.node_id:016x}",
            "nodes": [
                {
                    "id": f"{s.node_id:016x}",
                    "name": s.name,
                    "version": s.version,
                    "reachable": s.node_id in dist,
                    "distance": dist.get(s.node_id),
                    "links": {f"{n:016x}": c for n, c in s.links.items()},
                    "leaves": s.leaves,
                    "interests": {
                        f"{ch:016x}": {"role": i.role, "type": i.type_name, "count": i.count}
                        for ch, i in s.interests.items()
                    },
                }
                for s in self.nodes.values()
            ],
            "routes": {
                f"{dest:016x}": f"{hop:016x}" for dest, hop in sorted(self._next_hop.items())
            },
        }
