"""Ring 1: sans-IO tests for link-state routing (``yotonnet.core.routing``).

One ``RoutingTable`` per node of a hand-built or random graph; a small
pure-Python flooding helper (``Mesh``) exchanges ``NodeState`` records between
them the way ``Context`` does, through the real wire form, until nothing is
news. On the converged tables we check unicast next hops against an
independent all-pairs shortest-path computation and simulate multicast
forwarding with ``multicast_targets`` at every node.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core.messages import decode_object, encode_object
from yotonnet.core.names import channel_id
from yotonnet.core.routing import REP, ROLES, STATE, SUB, Interest, NodeState, RoutingTable

MAX_U64 = 2**64 - 1
NEWS = channel_id("pubsub", "news")
OTHER = channel_id("pubsub", "other")
INF = float("inf")


class Mesh:
    """Routing tables for a graph, and a flooding simulation between them.

    ``edges`` maps (a, b) to a cost and are real, two-sided links that also
    carry the flooding. ``phantoms`` are links that only one end lists: the
    routing must ignore them.
    """

    def __init__(
        self,
        ids: list[int],
        edges: dict[tuple[int, int], int],
        interests: dict[int, dict[int, Interest]] | None = None,
        phantoms: list[tuple[int, int]] = (),
    ) -> None:
        self.ids = list(ids)
        self.adj: dict[int, dict[int, int]] = {i: {} for i in ids}
        for (a, b), cost in edges.items():
            self.adj[a][b] = cost
            self.adj[b][a] = cost
        self.tables = {i: RoutingTable(i, f"n{i:x}") for i in ids}
        self.queue: deque[tuple[int, int, list]] = deque()
        self.messages = 0
        self._dist: dict[int, dict[int, float]] | None = None
        for i in ids:
            listed = dict(self.adj[i])
            for a, b in phantoms:
                if a == i:
                    listed[b] = 1
            state = self.tables[i].set_local(links=listed, interests=(interests or {}).get(i, {}))
            assert state is not None
            self._send_all(i, state, exclude=None)

    def _send_all(self, frm: int, state: NodeState, exclude: int | None) -> None:
        for nbr in self.adj[frm]:
            if nbr != exclude:
                self.queue.append((nbr, frm, state.to_wire()))

    def flood(self, rng: random.Random | None = None, limit: int | None = None) -> None:
        """Deliver queued records (FIFO, or in ``rng``'s random order) until none is left."""
        if limit is None:
            limit = 20 * len(self.ids) * (1 + sum(len(a) for a in self.adj.values()))
        while self.queue:
            self.messages += 1
            assert self.messages <= limit, f"flooding did not settle after {limit} messages"
            if rng is None:
                to, frm, record = self.queue.popleft()
            else:
                # Pick a random link, but keep each link first-in first-out, like TCP.
                link = self.queue[rng.randrange(len(self.queue))][:2]
                j = next(j for j, m in enumerate(self.queue) if m[:2] == link)
                to, frm, record = self.queue[j]
                del self.queue[j]
            # Through the real wire form, as the CONTROL frame carries it.
            state = NodeState.from_wire(decode_object(encode_object(record)))
            table = self.tables[to]
            if table.update(state):
                # Same policy as Context._on_control.
                if state.node_id == to:
                    self._send_all(to, table.local, exclude=None)
                else:
                    self._send_all(to, state, exclude=frm)

    def assert_converged(self) -> None:
        pictures = {
            i: {n: (s.version, s.links, s.interests) for n, s in t.nodes.items()}
            for i, t in self.tables.items()
        }
        first = pictures[self.ids[0]]
        for i, picture in pictures.items():
            assert picture == first, f"node {i:x} disagrees"
        assert set(first) == set(self.ids)

    def distances(self) -> dict[int, dict[int, float]]:
        """Floyd-Warshall over the two-sided links only (independent of the code under test)."""
        if self._dist is not None:
            return self._dist
        self._dist = dist = {a: {b: (0 if a == b else INF) for b in self.ids} for a in self.ids}
        for a, nbrs in self.adj.items():
            for b, cost in nbrs.items():
                dist[a][b] = min(dist[a][b], max(1, cost))
        for k, a, b in itertools.product(self.ids, self.ids, self.ids):
            if dist[a][k] + dist[k][b] < dist[a][b]:
                dist[a][b] = dist[a][k] + dist[k][b]
        return dist

    def holders(self, channel: int, role: str) -> set[int]:
        found = set()
        for i in self.ids:
            interest = self.tables[i].local.interests.get(channel)
            if interest is not None and interest.role == role and interest.count > 0:
                found.add(i)
        return found


def check_unicast(case: SynchronousTestCase, mesh: Mesh) -> None:
    dist = mesh.distances()
    for src, dst in itertools.product(mesh.ids, mesh.ids):
        table = mesh.tables[src]
        if src == dst:
            case.assertIsNone(table.next_hop(dst))
            continue
        case.assertEqual(table.distance(dst), dist[src][dst])
        # Follow the hops, each node deciding with its own table.
        node, cost, seen = src, 0, {src}
        while node != dst:
            hop = mesh.tables[node].next_hop(dst)
            case.assertIn(hop, mesh.adj[node], f"{node:x} -> {hop} is no link")
            cost += max(1, mesh.adj[node][hop])
            case.assertNotIn(hop, seen, "routing loop")
            seen.add(hop)
            node = hop
        case.assertEqual(cost, dist[src][dst], f"{src:x} -> {dst:x} not shortest")


def check_multicast(
    case: SynchronousTestCase, mesh: Mesh, source: int, channel: int, role: str
) -> None:
    holders = mesh.holders(channel, role)
    dist = mesh.distances()
    received: Counter[int] = Counter()
    children: dict[int, list[int]] = {}
    cost_to = {source: 0}
    frontier = [source]
    while frontier:
        node = frontier.pop()
        targets = mesh.tables[node].multicast_targets(source, channel, role)
        children[node] = targets
        for target in targets:
            case.assertIn(target, mesh.adj[node], "forwarded over a link that is not two-sided")
            received[target] += 1
            if received[target] == 1:
                cost_to[target] = cost_to[node] + max(1, mesh.adj[node][target])
                frontier.append(target)
    case.assertNotIn(source, received, "message came back to its source")
    for node, count in received.items():
        case.assertEqual(count, 1, f"node {node:x} received {count} copies")
    case.assertTrue((holders - {source}) <= set(received), "a holder was missed")

    def has_holder_below(node: int) -> bool:
        return node in holders or any(has_holder_below(c) for c in children.get(node, ()))

    for node in received:
        case.assertTrue(has_holder_below(node), f"{node:x} got a message nobody below wants")
        # The delivery tree is a shortest-path tree from the source.
        case.assertEqual(cost_to[node], dist[source][node])
    # Every table agrees on who the holders are, nearest first.
    for i, table in mesh.tables.items():
        expected = sorted(holders, key=lambda n, i=i: (dist[i][n], n))
        case.assertEqual(table.holders(channel, role), expected)


def check_all_multicast(case: SynchronousTestCase, mesh: Mesh) -> None:
    # As in Context, each channel is routed for one role (ids differ per pattern);
    # interests of the other roles on it must be ignored. Several roles on one
    # channel id are covered by TableTests.test_multicast_targets_per_role.
    for source in mesh.ids:
        check_multicast(case, mesh, source, NEWS, SUB)
        check_multicast(case, mesh, source, OTHER, STATE)


# --- hand-built graphs


def ids_for(n: int, seed: int) -> list[int]:
    # Ids in no particular order, so that the id tie-break is exercised.
    rng = random.Random(seed)
    return rng.sample(range(1, 2**20), n)


def chain(n: int) -> tuple[list[int], dict]:
    ids = ids_for(n, 1)
    return ids, {(ids[i], ids[i + 1]): 1 for i in range(n - 1)}


def ring(n: int) -> tuple[list[int], dict]:
    ids = ids_for(n, 2)
    return ids, {(ids[i], ids[(i + 1) % n]): 1 for i in range(n)}


def grid(w: int, h: int) -> tuple[list[int], dict]:
    ids = ids_for(w * h, 3)
    edges = {}
    for x, y in itertools.product(range(w), range(h)):
        here = ids[y * w + x]
        if x + 1 < w:
            edges[(here, ids[y * w + x + 1])] = 1
        if y + 1 < h:
            edges[(here, ids[(y + 1) * w + x])] = 1
    return ids, edges


def full_mesh(n: int) -> tuple[list[int], dict]:
    ids = ids_for(n, 4)
    return ids, {(a, b): 1 for a, b in itertools.combinations(ids, 2)}


def sub(count: int = 1) -> Interest:
    return Interest(SUB, "TEXT", count)


class HandBuiltGraphTests(SynchronousTestCase):
    def build(self, ids, edges, holder_indexes=(), **kw) -> Mesh:
        interests = {ids[i]: {NEWS: sub()} for i in holder_indexes}
        mesh = Mesh(ids, edges, interests, **kw)
        mesh.flood()
        mesh.assert_converged()
        return mesh

    def test_chain(self):
        ids, edges = chain(5)
        mesh = self.build(ids, edges, holder_indexes=(0, 3))
        check_unicast(self, mesh)
        self.assertEqual(mesh.tables[ids[0]].next_hop(ids[4]), ids[1])
        self.assertEqual(mesh.tables[ids[0]].distance(ids[4]), 4)
        # Holders are ids[0] and ids[3]: copies go only towards them, never on to ids[4].
        self.assertEqual(
            sorted(mesh.tables[ids[2]].multicast_targets(ids[2], NEWS)), sorted([ids[1], ids[3]])
        )
        self.assertEqual(mesh.tables[ids[4]].multicast_targets(ids[4], NEWS), [ids[3]])
        self.assertEqual(mesh.tables[ids[3]].multicast_targets(ids[4], NEWS), [ids[2]])
        self.assertEqual(mesh.tables[ids[0]].multicast_targets(ids[0], NEWS), [ids[1]])
        self.assertEqual(mesh.tables[ids[3]].multicast_targets(ids[0], NEWS), [])
        check_all_multicast(self, mesh)

    def test_ring(self):
        ids, edges = ring(6)
        mesh = self.build(ids, edges, holder_indexes=(1, 3, 4))
        check_unicast(self, mesh)
        self.assertEqual(mesh.tables[ids[0]].distance(ids[3]), 3)
        self.assertIn(mesh.tables[ids[0]].next_hop(ids[3]), (ids[1], ids[5]))
        check_all_multicast(self, mesh)

    def test_grid(self):
        ids, edges = grid(4, 3)
        mesh = self.build(ids, edges, holder_indexes=(0, 5, 11))
        check_unicast(self, mesh)
        for a, b in itertools.product(range(12), range(12)):
            manhattan = abs(a % 4 - b % 4) + abs(a // 4 - b // 4)
            self.assertEqual(mesh.tables[ids[a]].distance(ids[b]), manhattan)
        check_all_multicast(self, mesh)

    def test_full_mesh(self):
        ids, edges = full_mesh(6)
        mesh = self.build(ids, edges, holder_indexes=(2, 4, 5))
        check_unicast(self, mesh)
        for a, b in itertools.permutations(ids, 2):
            self.assertEqual(mesh.tables[a].next_hop(b), b)
        # Every holder is a direct child of the source in a full mesh.
        self.assertEqual(
            sorted(mesh.tables[ids[0]].multicast_targets(ids[0], NEWS)),
            sorted([ids[2], ids[4], ids[5]]),
        )
        check_all_multicast(self, mesh)

    def test_costs_steer_routes(self):
        # a-b-c costs 1+1, a-c costs 5: a reaches c through b.
        a, b, c = 30, 20, 10
        mesh = self.build([a, b, c], {(a, b): 1, (b, c): 1, (a, c): 5}, holder_indexes=(2,))
        self.assertEqual(mesh.tables[a].next_hop(c), b)
        self.assertEqual(mesh.tables[a].multicast_targets(a, NEWS), [b])
        check_unicast(self, mesh)
        check_all_multicast(self, mesh)

    def test_phantom_links_ignored(self):
        ids, edges = chain(4)
        # ids[0] claims a direct link to ids[3] that ids[3] never lists.
        mesh = self.build(ids, edges, holder_indexes=(3,), phantoms=[(ids[0], ids[3])])
        self.assertIn(ids[3], mesh.tables[ids[1]].nodes[ids[0]].links)
        self.assertEqual(mesh.tables[ids[0]].next_hop(ids[3]), ids[1])
        self.assertEqual(mesh.tables[ids[0]].multicast_targets(ids[0], NEWS), [ids[1]])
        check_unicast(self, mesh)
        check_all_multicast(self, mesh)

    def test_disconnected_parts(self):
        a, b, c, d = 1, 2, 3, 4
        mesh = Mesh([a, b, c, d], {(a, b): 1, (c, d): 1}, {d: {NEWS: sub()}})
        mesh.flood()
        self.assertIsNone(mesh.tables[a].next_hop(c))
        self.assertIsNone(mesh.tables[a].distance(d))
        self.assertEqual(mesh.tables[a].reachable(), {a, b})
        self.assertEqual(mesh.tables[a].holders(NEWS, SUB), [])
        self.assertEqual(mesh.tables[c].holders(NEWS, SUB), [d])
        self.assertEqual(mesh.tables[c].multicast_targets(c, NEWS), [d])
        self.assertEqual(mesh.tables[b].multicast_targets(a, NEWS), [])


# --- one table, by hand


def state(node_id, version, links=(), interests=None, name="n") -> NodeState:
    return NodeState(node_id, name, version, {n: 1 for n in links}, interests or {})


class TableTests(SynchronousTestCase):
    def setUp(self):
        self.t = RoutingTable(1, "me")

    def test_initial(self):
        self.assertEqual(self.t.local, NodeState(1, "me", 1))
        self.assertEqual(self.t.reachable(), {1})
        self.assertEqual(self.t.distance(1), 0)
        self.assertIsNone(self.t.next_hop(2))

    def test_set_local_bumps_only_on_change(self):
        generation = self.t.generation
        new = self.t.set_local(links={2: 1})
        self.assertEqual((new.version, new.links), (2, {2: 1}))
        self.assertIs(self.t.local, new)
        self.assertGreater(self.t.generation, generation)
        self.assertIsNone(self.t.set_local(links={2: 1}))
        self.assertIsNone(self.t.set_local())
        again = self.t.set_local(interests={NEWS: sub()})
        self.assertEqual((again.version, again.links), (3, {2: 1}))

    def test_update_rejects_stale_versions(self):
        self.assertTrue(self.t.update(state(2, 5, links=[1])))
        for version in (1, 4, 5):
            self.assertFalse(self.t.update(state(2, version, links=[], name="stale")))
        self.assertEqual(self.t.nodes[2].version, 5)
        self.assertEqual(self.t.nodes[2].links, {1: 1})
        self.assertTrue(self.t.update(state(2, 6, links=[])))
        self.assertEqual(self.t.nodes[2].links, {})

    def test_update_invalidates_routes(self):
        self.t.set_local(links={2: 1})
        self.assertIsNone(self.t.next_hop(2))
        self.t.update(state(2, 2, links=[1]))
        self.assertEqual(self.t.next_hop(2), 2)
        self.t.update(state(2, 3, links=[]))
        self.assertIsNone(self.t.next_hop(2))

    def test_own_record_from_previous_incarnation(self):
        self.t.set_local(links={2: 1})
        # A neighbour still holds our record from before a restart, at a higher version.
        self.assertTrue(self.t.update(state(1, 9, links=[7, 8], name="old")))
        self.assertEqual(self.t.local.version, 10)
        self.assertEqual(self.t.local.links, {2: 1})
        self.assertEqual(self.t.local.name, "me")

    def test_own_current_record_echoed_is_not_news(self):
        # Flooding can bring our own current record back over a cycle. It says
        # nothing new; treating it as news bumps our version and re-floods it.
        mine = self.t.set_local(links={2: 1}, interests={NEWS: sub()})
        echo = NodeState.from_wire(mine.to_wire())
        self.assertFalse(self.t.update(echo))
        self.assertEqual(self.t.local.version, mine.version)

    def test_one_sided_link_does_not_count(self):
        self.t.set_local(links={2: 1, 3: 1})
        self.t.update(state(2, 2, links=[1], interests={NEWS: sub()}))
        self.t.update(state(3, 2, links=[], interests={NEWS: sub()}))
        self.t.update(state(4, 2, links=[1], interests={NEWS: sub()}))
        # 3 does not list us, we do not list 4: only 2 is a neighbour.
        self.assertEqual(self.t.reachable(), {1, 2})
        self.assertIsNone(self.t.next_hop(3))
        self.assertIsNone(self.t.next_hop(4))
        self.assertEqual(self.t.holders(NEWS, SUB), [2])
        self.assertEqual(self.t.multicast_targets(1, NEWS), [2])
        # Once 3 lists us back, it counts.
        self.t.update(state(3, 3, links=[1], interests={NEWS: sub()}))
        self.assertEqual(self.t.next_hop(3), 3)
        self.assertEqual(self.t.holders(NEWS, SUB), [2, 3])
        self.assertEqual(sorted(self.t.multicast_targets(1, NEWS)), [2, 3])

    def test_holders_filter_role_and_count(self):
        self.t.set_local(links={2: 1, 3: 1, 4: 1, 5: 1})
        self.t.update(state(2, 2, [1], {NEWS: Interest(SUB, "TEXT", 2)}))
        self.t.update(state(3, 2, [1], {NEWS: Interest(SUB, "TEXT", 0)}))
        self.t.update(state(4, 2, [1], {NEWS: Interest(REP, "OBJECT", 1)}))
        self.t.update(state(5, 2, [1], {NEWS: Interest(STATE, "OBJECT", 1)}))
        self.assertEqual(self.t.holders(NEWS, SUB), [2])
        self.assertEqual(self.t.holders(NEWS, REP), [4])
        self.assertEqual(self.t.holders(NEWS, STATE), [5])
        self.assertEqual(self.t.holders(OTHER, SUB), [])
        self.assertEqual(self.t.interest_of(2, NEWS), Interest(SUB, "TEXT", 2))
        self.assertIsNone(self.t.interest_of(9, NEWS))

    def test_multicast_targets_per_role(self):
        # The same channel id asked about for different roles must give each
        # role's own answer (a peer's STATE frame may carry any channel id).
        self.t.set_local(links={2: 1, 4: 1, 5: 1})
        self.t.update(state(2, 2, [1], {NEWS: Interest(SUB, "TEXT", 1)}))
        self.t.update(state(4, 2, [1], {NEWS: Interest(REP, "OBJECT", 1)}))
        self.t.update(state(5, 2, [1]))
        answers = {role: self.t.multicast_targets(1, NEWS, role) for role in (SUB, REP, STATE)}
        self.assertEqual(answers, {SUB: [2], REP: [4], STATE: []})

    def test_holders_nearest_first(self):
        self.t.set_local(links={5: 1})
        self.t.update(state(5, 2, [1, 2], {NEWS: sub()}))
        self.t.update(state(2, 2, [5], {NEWS: sub()}))
        self.t.set_local(interests={NEWS: sub()})
        self.assertEqual(self.t.holders(NEWS, SUB), [1, 5, 2])

    def test_forget(self):
        self.t.set_local(links={2: 1})
        self.t.update(state(2, 2, [1]))
        self.t.forget([2, 1])
        self.assertEqual(set(self.t.nodes), {1})
        self.assertIsNone(self.t.next_hop(2))
        # Forgotten records are accepted again at any version.
        self.assertTrue(self.t.update(state(2, 1, [1])))

    def test_snapshot(self):
        self.t.set_local(links={2: 1}, interests={NEWS: sub()})
        self.t.update(state(2, 2, [1]))
        snap = self.t.snapshot()
        self.assertEqual(snap["node"], f"{1:016x}")
        self.assertEqual(snap["routes"], {f"{2:016x}": f"{2:016x}"})
        by_id = {n["id"]: n for n in snap["nodes"]}
        self.assertEqual(by_id[f"{2:016x}"]["distance"], 1)
        self.assertEqual(by_id[f"{1:016x}"]["interests"][f"{NEWS:016x}"]["role"], SUB)


# --- NodeState wire form

node_ids = st.integers(1, MAX_U64)
interests_st = st.builds(
    Interest, st.sampled_from(ROLES), st.text(max_size=10), st.integers(0, 2**31),
    st.frozensets(st.text(min_size=1, max_size=8), max_size=3),
)
states = st.builds(
    NodeState,
    node_id=node_ids,
    # Any name a peer may announce (yotonnet.names.check_peer_name): printable characters.
    name=st.text(
        st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
        | st.just(" "),
        max_size=10,
    ),
    version=st.integers(1, 2**63),
    links=st.dictionaries(node_ids, st.integers(0, 1000), max_size=5),
    interests=st.dictionaries(node_ids, interests_st, max_size=4),
)
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda c: st.lists(c, max_size=5),
    max_leaves=20,
)


class NodeStateWireTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(states)
    def test_round_trip(self, s):
        self.assertEqual(NodeState.from_wire(s.to_wire()), s)
        self.assertEqual(NodeState.from_wire(decode_object(encode_object(s.to_wire()))), s)

    def test_malformed(self):
        good = [1, "n", 1, [[2, 1]], [[NEWS, SUB, "TEXT", 1]]]
        self.assertEqual(NodeState.from_wire(good).links, {2: 1})
        self.assertEqual(NodeState.from_wire([*good, 7]).leaves, 7)
        bad = [
            None,
            5,
            "abc",
            [],
            good[:4],
            [*good, 0, 0],
            [*good, -1],
            [*good, "many"],
            {"node_id": 1},
            ["x", "n", 1, [], []],
            [1, "n", "v", [], []],
            [1, "n", 1, 5, []],
            [1, "n", 1, [[2]], []],
            [1, "n", 1, [[2, 1, 0]], []],
            [1, "n", 1, [[2, None]], []],
            [1, "n", 1, [], None],
            [1, "n", 1, [], [[]]],  # an interest too short to hold a role (was IndexError)
            [1, "n", 1, [], [[NEWS]]],
            [1, "n", 1, [], [[NEWS, SUB, "TEXT"]]],
            [1, "n", 1, [], [[NEWS, SUB, "TEXT", "many"]]],
            [float("nan"), "n", 1, [], []],
            # idempotent methods: a list of non-empty names, bounded
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, "add"]]],
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, [""]]]],
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, [7]]]],
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, ["x" * 1025]]]],
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, [f"m{i}" for i in range(257)]]]],
            [1, "n", 1, [], [[NEWS, REP, "OBJECT", 1, ["add"], "more"]]],
        ]
        for record in bad:
            e = self.assertRaises(ValueError, NodeState.from_wire, record)
            self.assertIn("malformed node state record", str(e), record)

    def test_idempotent_methods_ride_with_the_interest_only_when_declared(self):
        plain = NodeState(1, "n", 1, interests={NEWS: Interest(REP, "OBJECT", 1)})
        self.assertEqual(plain.to_wire()[4], [[NEWS, REP, "OBJECT", 1]])  # as before
        declared = NodeState(1, "n", 1, interests={
            NEWS: Interest(REP, "OBJECT", 2, frozenset({"get", "add"}))})
        self.assertEqual(declared.to_wire()[4], [[NEWS, REP, "OBJECT", 2, ["add", "get"]]])
        self.assertEqual(NodeState.from_wire(declared.to_wire()), declared)

    def test_unknown_role(self):
        e = self.assertRaises(
            ValueError, NodeState.from_wire, [1, "n", 1, [], [[NEWS, "boss", "TEXT", 1]]]
        )
        self.assertIn("unknown interest role 'boss'", str(e))

    def test_infinite_numbers_are_malformed(self):
        # OBJECT carries floats, so a peer can send inf where an int belongs.
        for record in (
            [INF, "n", 1, [], []],
            [1, "n", -INF, [], []],
            [1, "n", 1, [[2, INF]], []],
            [1, "n", 1, [], [[NEWS, SUB, "TEXT", INF]]],
        ):
            self.assertRaises(ValueError, NodeState.from_wire, record)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(junk, st.lists(junk, min_size=5, max_size=5)))
    def test_fuzz_raises_only_value_error(self, record):
        try:
            NodeState.from_wire(record)
        except ValueError as e:
            self.assertTrue(str(e))


# --- random connected graphs


@st.composite
def graphs(draw) -> tuple:
    """(ids, edges, interests, phantoms) of a random connected graph of 2..12 nodes."""
    n = draw(st.integers(2, 12))
    ids = draw(st.lists(node_ids, min_size=n, max_size=n, unique=True))
    cost = st.integers(1, 4) if draw(st.booleans()) else st.just(1)
    edges = {}
    # A random spanning tree keeps the graph connected; extra edges add cycles.
    for i in range(1, n):
        edges[(ids[draw(st.integers(0, i - 1))], ids[i])] = draw(cost)
    for a, b in draw(
        st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=2 * n)
    ):
        if a != b and (b, a) not in edges:
            edges[(a, b)] = draw(cost)
    linked = {frozenset(e) for e in edges}
    seen: set[tuple[int, int]] = set()  # one side only: never both (a, b) and (b, a)
    phantoms = [
        (a, b)
        for a, b in draw(
            st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=3)
        )
        if a != b
        and frozenset((a, b)) not in linked
        and (b, a) not in seen
        and not seen.add((a, b))
    ]
    choice = st.sampled_from(
        [
            None,
            Interest(SUB, "TEXT", 1),
            Interest(SUB, "TEXT", 3),
            Interest(SUB, "TEXT", 0),
            Interest(REP, "OBJECT", 1),
            Interest(STATE, "OBJECT", 1),
        ]
    )
    interests = {}
    for i in ids:
        mine = {ch: draw(choice) for ch in (NEWS, OTHER)}
        interests[i] = {ch: v for ch, v in mine.items() if v is not None}
    return ids, edges, interests, phantoms


GRAPHS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RandomGraphTests(SynchronousTestCase):
    @GRAPHS
    @given(graphs())
    def test_converged_routes_are_shortest(self, graph):
        mesh = Mesh(*graph)
        mesh.flood()
        mesh.assert_converged()
        check_unicast(self, mesh)

    @GRAPHS
    @given(graphs())
    def test_multicast_exactly_once_to_holders(self, graph):
        mesh = Mesh(*graph)
        mesh.flood()
        mesh.assert_converged()
        check_all_multicast(self, mesh)

    @GRAPHS
    @given(graphs(), st.randoms(use_true_random=False))
    def test_flooding_in_any_order(self, graph, rng):
        mesh = Mesh(*graph)
        # Links deliver in order, but different paths race: any interleaving
        # must settle on the same picture, and with nobody changing their
        # links or interests, nobody's version may move past the first flood.
        mesh.flood(rng)
        mesh.assert_converged()
        for i, table in mesh.tables.items():
            self.assertEqual(table.nodes[i].version, 2, f"node {i:x} re-versioned its record")
        check_unicast(self, mesh)
