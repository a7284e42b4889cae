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
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .names import MAX_NODE_NAME, check_peer_name

SUB = "sub"
REP = "rep"
STATE = "state"
ROLES = (SUB, REP, STATE)
# The role constants by value: records share them instead of a string each per interest.
_ROLE = {role: role for role in ROLES}
_MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class Interest:
    role: str
    type_name: str
    count: int


@dataclass
class NodeState:
    """What one node says about itself; the unit of flooding."""

    node_id: int
    name: str
    version: int
    links: dict[int, int] = field(default_factory=dict)
    interests: dict[int, Interest] = field(default_factory=dict)

    def to_wire(self) -> list:
        return [
            self.node_id,
            self.name,
            self.version,
            [[n, c] for n, c in sorted(self.links.items())],
            [[ch, i.role, i.type_name, i.count] for ch, i in sorted(self.interests.items())],
        ]

    @classmethod
    def from_wire(cls, data: object) -> NodeState:
        """Parse a record; ValueError says what is wrong (the sender's fault).

        The node name must be one a peer may announce
        (:func:`yotonnet.names.check_peer_name`), as in a HELLO: names reach
        terminals, logs and web pages.
        """
        try:
            node_id, name, version, links, interests = data  # type: ignore[misc]
            state = cls(
                int(node_id),
                name,
                int(version),
                {int(n): int(c) for n, c in links},
                {
                    int(ch): Interest(_ROLE.get(role, role), str(tname), int(count))
                    for ch, role, tname, count in interests
                },
            )
        except (TypeError, ValueError, OverflowError) as e:
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


class RoutingTable:
    """The node's view of the mesh, and the routes computed from it."""

    def __init__(self, node_id: int, name: str) -> None:
        self.node_id = node_id
        self.nodes: dict[int, NodeState] = {node_id: NodeState(node_id, name, 1)}
        self._dist: dict[int, int] | None = None
        self._next_hop: dict[int, int] = {}
        self._deepest = 0
        self._trees: dict[int, dict[int, int]] = {}
        self._below: dict[tuple[int, int, int, str], bool] = {}
        self._unreachable_since: dict[int, float] = {}
        self.generation = 0

    # --- changing the picture

    @property
    def local(self) -> NodeState:
        return self.nodes[self.node_id]

    def set_local(
        self,
        links: Mapping[int, int] | None = None,
        interests: Mapping[int, Interest] | None = None,
    ) -> NodeState | None:
        """Change this node's own record; return it (to flood) if anything changed."""
        old = self.local
        new_links = dict(links) if links is not None else old.links
        new_interests = dict(interests) if interests is not None else old.interests
        if new_links == old.links and new_interests == old.interests:
            return None
        state = NodeState(old.node_id, old.name, old.version + 1, new_links, new_interests)
        self.nodes[self.node_id] = state
        self._invalidate()
        return state

    def update(self, state: NodeState) -> bool:
        """Take a record heard from a neighbour; True if it was news (flood it on)."""
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
                    mine.node_id, mine.name, state.version + 1, mine.links, mine.interests
                )
                return True
            return False
        held = self.nodes.get(state.node_id)
        if held is not None and held.version >= state.version:
            return False
        self.nodes[state.node_id] = state
        self._invalidate()
        return True

    def forget(self, node_ids: Iterable[int]) -> None:
        for node_id in node_ids:
            if node_id != self.node_id:
                self.nodes.pop(node_id, None)
        self._invalidate()

    def expire(self, now: float, max_age: float) -> list[int]:
        """Forget nodes unreachable for ``max_age`` or longer; return their ids."""
        reachable = self.reachable()
        gone = []
        for node_id in list(self.nodes):
            if node_id in reachable:
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
        self._dist = None
        self._trees.clear()
        self._below.clear()
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

    def _shortest_tree(self, root: int) -> tuple[dict[int, int], dict[int, int]]:
        """Dijkstra from ``root``: (distance, parent) per reachable node."""
        dist = {root: 0}
        parent: dict[int, int] = {}
        heap = [(0, root)]
        done: set[int] = set()
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            for nbr, cost in self._adjacent(node):
                nd = d + max(1, cost)
                old = dist.get(nbr)
                # Deterministic tie-break: equal distance prefers the lower parent id.
                if old is None or nd < old or (nd == old and node < parent.get(nbr, node + 1)):
                    dist[nbr] = nd
                    parent[nbr] = node
                    heapq.heappush(heap, (nd, nbr))
        return dist, parent

    def _ensure_routes(self) -> dict[int, int]:
        if self._dist is None:
            dist, parent = self._shortest_tree(self.node_id)
            next_hop: dict[int, int] = {}
            deepest = 0
            for node in dist:
                if node == self.node_id:
                    continue
                hop = node
                depth = 1
                while parent[hop] != self.node_id:
                    hop = parent[hop]
                    depth += 1
                next_hop[node] = hop
                deepest = max(deepest, depth)
            self._dist = dist
            self._next_hop = next_hop
            self._deepest = deepest
        return self._dist

    def max_hops(self) -> int:
        """Links on the longest of this node's shortest paths (0 when alone)."""
        self._ensure_routes()
        return self._deepest

    def reachable(self) -> set[int]:
        return set(self._ensure_routes())

    def distance(self, node_id: int) -> int | None:
        return self._ensure_routes().get(node_id)

    def next_hop(self, dest: int) -> int | None:
        """The neighbour to send a unicast frame for ``dest`` to (None if unreachable)."""
        self._ensure_routes()
        return self._next_hop.get(dest)

    # --- interest

    def holders(self, channel: int, role: str) -> list[int]:
        """Reachable nodes with ``role`` interest in ``channel``, nearest first."""
        dist = self._ensure_routes()
        found = [
            node_id
            for node_id, state in self.nodes.items()
            if node_id in dist
            and (i := state.interests.get(channel)) is not None
            and i.role == role
            and i.count > 0
        ]
        found.sort(key=lambda n: (dist[n], n))
        return found

    def interest_of(self, node_id: int, channel: int) -> Interest | None:
        state = self.nodes.get(node_id)
        return state.interests.get(channel) if state else None

    def multicast_targets(self, source: int, channel: int, role: str = SUB) -> list[int]:
        """Neighbours to forward a ``source``'s message on ``channel`` to.

        They are this node's children in the source's shortest-path tree that
        have a ``role`` holder in their subtree.
        """
        tree = self._trees.get(source)
        if tree is None:
            _, tree = self._shortest_tree(source)
            self._trees[source] = tree
        me = self.node_id
        if source != me and me not in tree:
            return []
        return [
            child
            for child, par in tree.items()
            if par == me and self._subtree_has(tree, source, child, channel, role)
        ]

    def _subtree_has(
        self, tree: dict[int, int], source: int, top: int, channel: int, role: str
    ) -> bool:
        key = (source, top, channel, role)
        cached = self._below.get(key)
        if cached is not None:
            return cached
        result = False
        for node_id in self.nodes:
            interest = self.nodes[node_id].interests.get(channel)
            if interest is None or interest.role != role or interest.count <= 0:
                continue
            # Walk up from the holder; does the path to the source pass through ``top``?
            hop = node_id
            while hop != source and hop in tree:
                if hop == top:
                    result = True
                    break
                hop = tree[hop]
            if result:
                break
        self._below[key] = result
        return result

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
