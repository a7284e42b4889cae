"""Leaf contexts: the many short-lived clients of the mesh, at O(1) cost each.

Sans-IO. A *leaf* (a context that only dials: a CLI command, a console, a
script with the blocking API) joins the mesh through one node, its *hub*,
and is never part of the mesh's topology. It floods no routing record and
holds no table. Instead:

* the leaf tells its hub which channels it uses, in one ``leaf`` message
  (sent again when that changes)::

      ["leaf", [[channel, role, type name, count], ...], number]

  with roles ``sub``, ``rep`` and ``state`` for what it holds (as in a
  routing record) and ``pub`` and ``req`` for channels it publishes on or
  calls, whose holders it needs to know of;

* the hub counts what its leaves hold into its own routing record (per
  channel, so a thousand subscribers on one node are one entry, and a join
  re-floods one record of the hub's size, whatever the number of leaves),
  sends its leaves' messages on as its own, and delivers to them;

* the hub tells each leaf, in a ``view`` message, the nodes holding the
  channels the leaf publishes on, calls or holds state of::

      ["view", hop limit, [[node, name, [[channel, role, type name, count], ...]], ...],
       number of the last leaf message taken]

  A leaf sends the state values it writes to its hub whatever its view says:
  the hub holds them for its leaves. The leaf draws that as a star around its hub
  (:meth:`~.routing.RoutingTable.set_view`): every question it asks of its
  table (are there subscribers, which replier, who holds this state) is
  answered as on a node. Views are sent again only for leaves whose channels'
  holders changed.

:class:`Leaves` is the hub's side: the leaves attached, what they hold (with
the totals the hub's record carries), their views, and the calls the hub
passed to a leaf replier (a reply from a leaf is taken only for a request
the hub sent it, and goes on in the hub's name, which is the node the caller
asked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .routing import REP, ROLES, STATE, SUB, Interest, NodeState, interest_from_item
from .wire import ProtocolError

if TYPE_CHECKING:
    from .interfaces import IPeer
    from .routing import RoutingTable

__all__ = ["Leaves", "LeafEntry", "PUB", "REQ", "LEAF", "HUB", "NODE", "LEAF_CAPABILITY",
           "parse_leaf", "parse_view", "star"]

#: roles a leaf lists for channels it only uses (their holders go into its view)
PUB = "pub"
REQ = "req"
_USES = (PUB, REQ)
_ROLE = {role: role for role in (*ROLES, *_USES)}
#: in the HELLO of a context that dials as a leaf
LEAF_CAPABILITY = "leaf-1"
#: what a link's peer is to this node (IPeer.role)
NODE = "node"
LEAF = "leaf"
HUB = "hub"
#: the holders a leaf needs of a channel it lists under each role
_NEEDS = {PUB: SUB, REQ: REP, STATE: STATE}
#: interests one leaf may list (its hub bounds what a client makes it carry)
MAX_LEAF_ITEMS = 16_384


class LeafEntry:
    """One leaf on its hub: what it holds and uses, and the calls it serves."""

    __slots__ = ("peer", "holds", "uses", "view", "in_flight", "serving", "told")

    def __init__(self, peer: IPeer) -> None:
        self.peer = peer
        #: channel -> what the leaf holds of it (sub, rep, state)
        self.holds: dict[int, Interest] = {}
        #: channel -> the role whose holders the leaf needs to know (sub, rep, state)
        self.uses: dict[int, str] = {}
        #: the last view sent (None: none yet)
        self.view: list | None = None
        #: calls passed to this leaf and not answered yet
        self.in_flight = 0
        #: (caller, request id) -> channel, for each call passed to this leaf
        self.serving: dict[tuple[int, int], int] = {}
        #: the number of the last leaf message taken (echoed in views)
        self.told = 0


def parse_leaf(message: list) -> tuple[list[tuple[int, Interest]], int]:
    """The items (channel and what is held or used there) and number of a ``leaf``
    message; ProtocolError says what is wrong."""
    try:
        _, items, number = message
        if not (isinstance(number, int) and 0 <= number < 1 << 63):
            raise ValueError(f"message number {number!r}")
        if len(items) > MAX_LEAF_ITEMS:
            raise ValueError(f"{len(items)} channels, more than {MAX_LEAF_ITEMS}")
        parsed = []
        for item in items:
            channel, role, type_name, count = item[:4]
            if _ROLE.get(role) is None:
                raise ValueError(f"unknown role {role!r}")
            if not (isinstance(channel, int) and 0 <= channel < 1 << 64
                    and isinstance(count, int) and 0 < count < 1 << 32
                    and isinstance(type_name, str) and len(type_name) <= 64):
                raise ValueError(f"bad item {[channel, role, type_name, count]!r}")
            parsed.append(interest_from_item(item, _ROLE[role]))
    except (TypeError, ValueError, IndexError) as e:
        raise ProtocolError(f"malformed leaf message: {e}") from None
    return parsed, number


def parse_view(message: list) -> tuple[int, list[tuple[int, str, dict[int, Interest]]], int]:
    """The hop limit, holders and answered leaf message number of a ``view`` message;
    ProtocolError if malformed."""
    try:
        _, hops, nodes, number = message
        if not (isinstance(number, int) and 0 <= number < 1 << 63):
            raise ValueError(f"message number {number!r}")
        if not (isinstance(hops, int) and 0 < hops < 256):
            raise ValueError(f"hop limit {hops!r}")
        parsed = []
        for node, name, items in nodes:
            if not (isinstance(node, int) and 0 < node < 1 << 64 and isinstance(name, str)):
                raise ValueError(f"bad node {node!r}")
            interests = {}
            for item in items:
                channel, role = item[:2]
                if role not in ROLES or not isinstance(channel, int):
                    raise ValueError(f"bad interest {[channel, role]!r}")
                chan, interest = interest_from_item(item, _ROLE[role])
                interests[chan] = interest
            parsed.append((node, name, interests))
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"malformed view message: {e}") from None
    return hops, parsed, number


def star(hub: int, hub_name: str, me: int, version: int,
         holders: list[tuple[int, str, dict[int, Interest]]]) -> list[NodeState]:
    """A view as records: the hub linked to this leaf and to every holder it named."""
    states = [NodeState(n, name, version, {hub: 1}, interests)
              for n, name, interests in holders if n not in (hub, me)]
    hub_interests: dict[int, Interest] = {}
    for n, _name, interests in holders:
        if n == hub:
            hub_interests = interests
    links = {me: 1, **{s.node_id: 1 for s in states}}
    return [NodeState(hub, hub_name, version, links, hub_interests), *states]


class Leaves:
    """The leaves attached to this node (the hub's side; see the module doc)."""

    def __init__(self, node_id: int, routing: RoutingTable, hop_limit: Callable[[], int],
                 send_control: Callable[[IPeer, list], None]) -> None:
        self.node_id = node_id
        self.routing = routing
        self.hop_limit = hop_limit
        self.send_control = send_control
        #: leaf node id -> its entry
        self.entries: dict[int, LeafEntry] = {}
        # (channel, role) -> leaf id -> the leaf's link: the leaves holding a channel
        self._holding: dict[tuple[int, str], dict[int, IPeer]] = {}
        # channel -> [role, type name, count] over every leaf (what the hub's record adds)
        self._totals: dict[int, list] = {}
        # channel -> leaves that need its holders (their views show it)
        self._users: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def peer(self, leaf: int) -> IPeer | None:
        entry = self.entries.get(leaf)
        return entry.peer if entry is not None else None

    # --- joining and leaving

    def add(self, peer: IPeer) -> LeafEntry:
        old = self.entries.get(peer.peer_id)
        if old is not None:
            self.remove(old.peer)
        entry = self.entries[peer.peer_id] = LeafEntry(peer)
        return entry

    def remove(self, peer: IPeer) -> LeafEntry | None:
        """``peer`` left; its entry (None if it was not the current one)."""
        entry = self.entries.get(peer.peer_id)
        if entry is None or entry.peer is not peer:
            return None
        del self.entries[peer.peer_id]
        self._set(entry, {}, {})
        return entry

    # --- what leaves hold and use

    def take(self, peer: IPeer, items: Iterable[tuple[int, Interest]], number: int,
             may_hold: Callable[[int, str], bool] | None = None) -> bool:
        """A ``leaf`` message from ``peer``; True if the totals the hub carries changed.
        ``may_hold(channel, role)`` filters what a client was not granted."""
        entry = self.entries.get(peer.peer_id)
        if entry is None or entry.peer is not peer:
            return False
        entry.told = number
        holds: dict[int, Interest] = {}
        uses: dict[int, str] = {}
        for channel, interest in items:
            role = interest.role
            if may_hold is not None and not may_hold(channel, role):
                continue
            if role in _USES:
                uses.setdefault(channel, _NEEDS[role])
            else:
                holds[channel] = interest
                if role == STATE:
                    uses[channel] = STATE
        return self._set(entry, holds, uses)

    def _set(self, entry: LeafEntry, holds: dict[int, Interest], uses: dict[int, str]) -> bool:
        leaf = entry.peer.peer_id
        changed = False
        totals = self._totals
        for channel, old in entry.holds.items():
            new = holds.get(channel)
            if new == old:
                continue
            changed = True
            total = totals[channel]
            total[2] -= old.count
            if total[2] <= 0:
                del totals[channel]
            holding = self._holding.get((channel, old.role))
            if holding is not None:
                holding.pop(leaf, None)
                if not holding:
                    del self._holding[(channel, old.role)]
        for channel, new in holds.items():
            old = entry.holds.get(channel)
            if new == old:
                continue
            changed = True
            total = totals.get(channel)
            if total is None:
                totals[channel] = [new.role, new.type_name, new.count]
            else:
                total[2] += new.count
            self._holding.setdefault((channel, new.role), {})[leaf] = entry.peer
        for channel in entry.uses:
            if channel not in uses:
                users = self._users.get(channel)
                if users is not None:
                    users.discard(leaf)
                    if not users:
                        del self._users[channel]
        for channel in uses:
            self._users.setdefault(channel, set()).add(leaf)
        entry.holds = holds
        entry.uses = uses
        return changed

    def totals(self) -> dict[int, Interest]:
        """What the leaves hold, per channel (summed counts; of a REP channel, the
        methods every leaf serving it declared idempotent), for the hub's record."""
        totals = {}
        for chan, (role, type_name, count) in self._totals.items():
            methods: frozenset[str] = frozenset()
            if role == REP:
                entries = self.entries
                sets = [entries[leaf].holds[chan].idempotent
                        for leaf in self._holding.get((chan, REP), ())]
                methods = frozenset.intersection(*sets) if sets else frozenset()
            totals[chan] = Interest(role, type_name, count, methods)
        return totals

    def holding(self, channel: int, role: str = SUB) -> Iterable[IPeer]:
        """The links of the leaves holding ``channel`` in ``role``."""
        holding = self._holding.get((channel, role))
        return holding.values() if holding else ()

    # --- views

    def view(self, entry: LeafEntry) -> list:
        """The ``view`` message for ``entry``: the reachable holders of what it uses."""
        routing = self.routing
        me = self.node_id
        nodes: dict[int, list] = {}
        for channel, role in sorted(entry.uses.items()):
            for node in routing.holders(channel, role):
                interest = routing.interest_of(node, channel)
                if interest is None:
                    continue
                count = interest.count
                if node == me:
                    # Its own part is not someone else's.
                    own = entry.holds.get(channel)
                    if own is not None and own.role == role:
                        count -= own.count
                if count > 0:
                    nodes.setdefault(node, []).append(
                        Interest(interest.role, interest.type_name, count,
                                 interest.idempotent).to_item(channel))
        names = routing.nodes
        return ["view", min(255, self.hop_limit() + 1),
                [[n, names[n].name, items] for n, items in sorted(nodes.items())], entry.told]

    def send_view(self, entry: LeafEntry) -> None:
        view = self.view(entry)
        if view != entry.view:
            entry.view = view
            self.send_control(entry.peer, view)

    def refresh(self, changed: set[int], everything: bool) -> None:
        """The hub's picture changed: send new views to the leaves that use ``changed``
        channels (to every leaf when ``everything``: who is reachable may have changed)."""
        if not self.entries:
            return
        if everything:
            leaves: Iterable[int] = list(self.entries)
        else:
            users = self._users
            found: set[int] = set()
            for channel in changed:
                got = users.get(channel)
                if got:
                    found |= got
            leaves = found
        for leaf in leaves:
            entry = self.entries.get(leaf)
            if entry is not None and not entry.peer.closing:
                self.send_view(entry)

    # --- calls passed to leaf repliers

    def pick_replier(self, channel: int) -> LeafEntry | None:
        """The least busy leaf serving ``channel`` (None: no leaf serves it)."""
        holding = self._holding.get((channel, REP))
        if not holding:
            return None
        return min((self.entries[leaf] for leaf in holding), key=lambda e: e.in_flight)

    def passed(self, entry: LeafEntry, caller: int, req_id: int, channel: int) -> None:
        entry.serving[(caller, req_id)] = channel
        entry.in_flight += 1

    def answered(self, peer: IPeer, caller: int, req_id: int, channel: int) -> bool:
        """A reply from leaf ``peer``: True (and forgotten) if the hub passed it that call."""
        entry = self.entries.get(peer.peer_id)
        if entry is None or entry.peer is not peer:
            return False
        if entry.serving.get((caller, req_id)) != channel:
            return False
        del entry.serving[(caller, req_id)]
        entry.in_flight -= 1
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"id": f"{leaf:016x}", "name": getattr(e.peer, "peer_name", ""),
             "holds": len(e.holds), "uses": len(e.uses), "serving": e.in_flight}
            for leaf, e in sorted(self.entries.items())
        ]
