"""Ring 2: leaf contexts in memory: clients that join through one node and cost the mesh O(1).

A ring of nodes listens on ``memory:`` endpoints; leaves are contexts that only
dial (as every CLI command, console and script does). Each test checks what a
user sees (messages, replies, state, errors) and what the mesh pays for it
(records held, control frames sent), on one fake clock, so every run is the same.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from yotonnet import (
    ConnectionLost,
    Context,
    ContextConfig,
    NoResponders,
    PubChannel,
    RemoteError,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
    TimeoutError,
)
from yotonnet.core.routing import REP, SUB
from yotonnet.testing import MemoryMesh, MeshTestCase

CONFIG = ContextConfig(
    heartbeat=1.0, busy_timeout=2.0, dead_timeout=4.0, reconnect_initial=1.0,
    reconnect_max=4.0, request_timeout=30.0,
)


class LeafMesh:
    """A ring of nodes, each listening on ``memory:NAME``, and the leaves dialled to them."""

    def __init__(self, test: MeshTestCase, nodes: int = 10, seed: int = 0) -> None:
        self.test = test
        self.mesh: MemoryMesh = test.make_mesh(names=[f"n{i}" for i in range(nodes)], seed=seed)
        self.nodes = list(self.mesh)
        for i, node in enumerate(self.nodes):
            test.successResultOf(node.listen(f"memory:{node.name}"))
            if nodes > 1 and (nodes > 2 or i == 0):
                self.mesh.link(node, self.nodes[(i + 1) % nodes], settle=False)
        self.mesh.settle()
        self.leaves: list[Context] = []

    def leaf(self, hub: int | Context, name: str | None = None) -> Context:
        """A new context dialling node ``hub`` (an index or a node); linked once settled."""
        hub_ctx = self.nodes[hub] if isinstance(hub, int) else hub
        ctx = self.mesh.add(name or f"leaf{len(self.leaves)}")
        ctx.connect(f"memory:{hub_ctx.name}")
        self.leaves.append(ctx)
        return ctx

    def settle(self) -> None:
        self.mesh.settle()

    def control_frames(self) -> int:
        """CONTROL frames sent so far by every context of the mesh."""
        return sum(ctx.counters["control_out"] for ctx in self.mesh)


class Joining(MeshTestCase):
    mesh_config = CONFIG

    def test_a_leaf_floods_no_record_and_its_hub_carries_its_interest(self) -> None:
        m = LeafMesh(self, nodes=4)
        hub, far = m.nodes[0], m.nodes[2]
        leaves = [m.leaf(0) for _ in range(3)]
        subs = [SubChannel(leaf, "news") for leaf in leaves]
        m.settle()
        for leaf in leaves:
            self.assertEqual(leaf.role, "leaf")
            self.assertIs(leaf.hub, leaf.links[hub.node_id])
            for node in m.nodes:
                self.assertNotIn(leaf.node_id, node.routing.nodes, "a leaf is no mesh node")
            self.assertIn(leaf.node_id, hub.leaf_links)
            # a leaf's picture is its hub's view, not the mesh's table
            self.assertEqual(set(leaf.routing.nodes), {leaf.node_id, hub.node_id})
        record = far.routing.nodes[hub.node_id]
        self.assertEqual(record.leaves, 3)
        (interest,) = [i for c, i in record.interests.items() if c == subs[0].channel_id]
        self.assertEqual((interest.role, interest.count), (SUB, 3), "one entry, counted")
        self.assertEqual(far.interest_count(subs[0].channel_id, SUB), 3)
        snap = hub.topology()
        self.assertEqual(sorted(e["name"] for e in snap["leaves"]), ["leaf0", "leaf1", "leaf2"])
        far_view = {n["name"]: n for n in far.topology()["nodes"]}
        self.assertEqual(far_view["n0"]["leaves"], 3)

    def test_the_cost_of_a_join_does_not_grow_with_the_leaves(self) -> None:
        m = LeafMesh(self, nodes=10)
        channels = [f"room{i}" for i in range(5)]

        def join(count: int) -> float:
            before = m.control_frames()
            for _ in range(count):
                leaf = m.leaf(len(m.leaves) % len(m.nodes))
                SubChannel(leaf, channels[len(m.leaves) % len(channels)])
                m.settle()
            return (m.control_frames() - before) / count

        join(20)
        early = join(10)
        join(180)
        late = join(10)
        self.assertLessEqual(late, early * 1.5, f"{early} frames per join at 20, {late} at 200")
        # what the mesh holds: ten records, whatever the leaves
        self.assertEqual({len(n.routing.nodes) for n in m.nodes}, {10})


class AThousandLeaves(MeshTestCase):
    mesh_config = CONFIG

    def test_every_kind_of_leaf_at_once_on_ten_nodes(self) -> None:
        m = LeafMesh(self, nodes=10)
        at = iter(range(10**6))
        # 400 subscribers, 100 publishers, 100 repliers, 300 callers, 100 state holders
        logs: list[list[tuple[int, int]]] = []
        for _ in range(400):
            log: list[tuple[int, int]] = []
            SubChannel(m.leaf(next(at) % 10), "all", "OBJECT").subscribe(log.append)
            logs.append(log)
        pubs = [PubChannel(m.leaf(next(at) % 10), "all", "OBJECT") for _ in range(100)]
        for i in range(100):
            rep = RepChannel(m.leaf(next(at) % 10), "work")
            rep.register("double", lambda x, i=i: (i, 2 * x))
        callers = [ReqChannel(m.leaf(next(at) % 10), "work") for _ in range(300)]
        holders = [StateChannel(m.leaf(next(at) % 10), "shared") for _ in range(100)]
        m.settle()
        self.assertEqual(len(m.leaves), 1000)
        self.assertEqual({len(n.routing.nodes) for n in m.nodes}, {10}, "no leaf in a table")
        self.assertEqual({p.subscribers for p in pubs}, {400})
        self.assertEqual({c.responders for c in callers}, {100})
        for k in range(3):
            for i, pub in enumerate(pubs):
                pub.send((i, k))
        calls = [c.call("double", j) for j, c in enumerate(callers)]
        holders[7].send({"round": 1})
        m.settle()
        expected = sorted((i, k) for i in range(100) for k in range(3))
        for log in logs:
            self.assertEqual(sorted(map(tuple, log)), expected)
            for i in range(100):
                self.assert_increasing([k for p, k in log if p == i], f"publisher {i}")
        served = set()
        for j, d in enumerate(calls):
            who, doubled = self.successResultOf(d)
            self.assertEqual(doubled, 2 * j)
            served.add(who)
        self.assertGreater(len(served), 50, "the calls were spread over the repliers")
        self.assertEqual({repr(h.recv()) for h in holders}, {repr({"round": 1})})
        late = StateChannel(m.leaf(3), "shared")
        m.settle()
        self.assertEqual(late.recv(), {"round": 1})


class PubSubOfLeaves(MeshTestCase):
    mesh_config = CONFIG

    def test_a_leaf_publisher_reaches_leaf_and_node_subscribers_once_and_in_order(self) -> None:
        m = LeafMesh(self, nodes=4)
        publisher = m.leaf(1)
        near, far = m.leaf(1), m.leaf(3)
        got: dict[str, list[int]] = {"near": [], "far": [], "node": [], "self": []}
        SubChannel(near, "feed", "OBJECT").subscribe(got["near"].append)
        SubChannel(far, "feed", "OBJECT").subscribe(got["far"].append)
        SubChannel(m.nodes[2], "feed", "OBJECT").subscribe(got["node"].append)
        SubChannel(publisher, "feed", "OBJECT").subscribe(got["self"].append)
        pub = PubChannel(publisher, "feed", "OBJECT")
        m.settle()
        self.assertEqual(pub.subscribers, 4)
        for i in range(200):
            pub.send(i)
        m.settle()
        for who, values in got.items():
            self.assertEqual(values, list(range(200)), who)

    def test_a_node_publisher_reaches_a_thousand_leaves_on_ten_nodes(self) -> None:
        m = LeafMesh(self, nodes=10)
        got: list[list[str]] = []
        for i in range(1000):
            seen: list[str] = []
            SubChannel(m.leaf(i % 10), "wide").subscribe(seen.append)
            got.append(seen)
        pub = PubChannel(m.nodes[4], "wide")
        m.settle()
        self.assertEqual(pub.subscribers, 1000)
        for i in range(5):
            pub.send(f"m{i}")
        m.settle()
        self.assertEqual({tuple(seen) for seen in got}, {("m0", "m1", "m2", "m3", "m4")})
        # each node carries its hundred subscribers as one counted entry
        for node in m.nodes:
            self.assertEqual(node.routing.local.leaves, 100)

    def test_a_leaf_that_stops_reading_does_not_stall_its_siblings_for_ever(self) -> None:
        m = LeafMesh(self, nodes=2)
        slow, quick = m.leaf(1), m.leaf(1)
        got: dict[str, list[int]] = {"slow": [], "quick": []}
        SubChannel(slow, "flow", "OBJECT").subscribe(got["slow"].append)
        SubChannel(quick, "flow", "OBJECT").subscribe(got["quick"].append)
        pub = PubChannel(m.nodes[0], "flow", "OBJECT")
        m.settle()
        m.mesh.connection(slow, m.nodes[1]).hold(m.nodes[1])  # nothing reaches it
        sent = 0
        for _ in range(100):
            while pub.writable:
                pub.send(sent)
                sent += 1
            m.settle()
            if not pub.writable:
                break
        self.assertFalse(pub.writable, "a lossless subscriber that lags pauses the publisher")
        self.assertEqual(got["quick"], list(range(sent)), "what was sent reached the sibling")
        m.mesh.advance(CONFIG.busy_timeout + CONFIG.heartbeat * 2)
        m.settle()
        # The silent leaf is dropped from what waits: the publisher resumes, and its
        # sibling gets everything.
        self.assertTrue(pub.writable)
        self.assertGreater(m.nodes[1].counters["flow_dropped"], 0)
        for i in range(sent, sent + 100):
            pub.send(i)
        m.settle()
        self.assertEqual(got["quick"], list(range(sent + 100)))

    def test_a_leaf_gets_the_latest_flow_too(self) -> None:
        m = LeafMesh(self, nodes=3)
        watcher = m.leaf(2)
        got: list[int] = []
        SubChannel(watcher, "ticks", "OBJECT", policy="latest").subscribe(got.append)
        pub = PubChannel(m.leaf(0), "ticks", "OBJECT")
        m.settle()
        self.assertEqual(pub.subscribers, 1)
        pub.send(1)
        m.settle()
        self.assertEqual(got, [1])


class CallsOfLeaves(MeshTestCase):
    mesh_config = CONFIG

    def serve(self, ctx: Context, name: str = "math") -> RepChannel:
        rep = RepChannel(ctx, name)
        rep.register("add", lambda x, y: x + y)
        rep.register("who", lambda: ctx.name)
        rep.register("fail", lambda: 1 / 0)
        rep.register("hang", lambda: defer.Deferred())
        return rep

    def test_a_leaf_calls_leaf_repliers_anywhere_and_the_load_is_spread(self) -> None:
        m = LeafMesh(self, nodes=4)
        for hub in (0, 0, 2):
            self.serve(m.leaf(hub))
        caller = ReqChannel(m.leaf(3), "math")
        m.settle()
        self.assertEqual(caller.responders, 3)
        self.assertEqual(self.successResultOf(self._settled(m, caller.call("add", 2, 3))), 5)
        calls = [caller.call("who") for _ in range(30)]
        m.settle()
        names = [self.successResultOf(d) for d in calls]
        self.assertEqual(set(names), {"leaf0", "leaf1", "leaf2"}, "every replier served")

    def _settled(self, m: LeafMesh, d: defer.Deferred) -> defer.Deferred:
        m.settle()
        return d

    def test_errors_timeouts_and_cancel_reach_a_leaf_caller(self) -> None:
        m = LeafMesh(self, nodes=3)
        self.serve(m.leaf(1))
        caller = ReqChannel(m.leaf(2), "math", timeout=5.0)
        m.settle()
        failure = self.failureResultOf(self._settled(m, caller.call("fail")), RemoteError)
        self.assertIn("ZeroDivisionError", str(failure.value))
        hang = caller.call("hang")
        m.settle()
        self.assertNoResult(hang)
        m.mesh.advance(5.0)
        self.failureResultOf(hang, TimeoutError)
        cancelled = caller.call("hang")
        cancelled.cancel()
        self.failureResultOf(cancelled, defer.CancelledError)
        self.assertEqual(self.successResultOf(self._settled(m, caller.call("add", 1, 1))), 2)

    def test_no_replier_then_one_appears_on_another_node(self) -> None:
        m = LeafMesh(self, nodes=3)
        caller = ReqChannel(m.leaf(0), "math")
        m.settle()
        self.failureResultOf(caller.call("add", 1, 2), NoResponders)
        waiting = caller.wait_for_responders()
        self.assertNoResult(waiting)
        self.serve(m.leaf(2))
        m.settle()
        self.successResultOf(waiting)
        self.assertEqual(self.successResultOf(self._settled(m, caller.call("add", 1, 2))), 3)

    def test_a_replier_that_leaves_fails_the_calls_it_held_at_once(self) -> None:
        m = LeafMesh(self, nodes=3)
        replier = m.leaf(1)
        self.serve(replier)
        caller = ReqChannel(m.leaf(2), "math", timeout=None)
        m.settle()
        pending = caller.call("hang")
        m.settle()
        self.assertNoResult(pending)
        replier.close()
        m.settle()
        failure = self.failureResultOf(pending, NoResponders)
        self.assertIn("left before answering", str(failure.value))
        self.assertEqual(m.nodes[2].interest_count(caller.channel_id, REP), 0)
        self.assertEqual(m.nodes[0].routing.nodes[m.nodes[1].node_id].leaves, 0, "no ghost")

    def test_a_leaf_cut_from_its_hub_fails_its_own_calls(self) -> None:
        m = LeafMesh(self, nodes=3)
        self.serve(m.leaf(1))
        leaf = m.leaf(2)
        caller = ReqChannel(leaf, "math", timeout=None)
        m.settle()
        pending = caller.call("hang")
        m.settle()
        m.mesh.cut(leaf, m.nodes[2])
        m.settle()
        self.failureResultOf(pending, ConnectionLost)

    def test_a_leaf_repliers_idempotent_methods_ride_in_its_hubs_record(self) -> None:
        m = LeafMesh(self, nodes=3)
        runs: Counter = Counter()

        def double(x: int) -> int:
            runs[x] += 1
            return 2 * x

        first = self.serve(m.leaf(1))
        first.register("double", double, idempotent=True)
        caller = ReqChannel(m.nodes[0], "math")
        m.settle()
        hub = m.nodes[1]
        interest = m.nodes[0].routing.interest_of(hub.node_id, caller.channel_id)
        self.assertEqual(interest.idempotent, frozenset({"double"}))
        # The request is lost with the link it waits on; the copy takes the detour and
        # the hub passes it to the leaf, which runs it once.
        d = caller.call("double", 21)
        m.mesh.cut(m.nodes[0], hub)
        self.assertEqual(self.successResultOf(self._settled(m, d)), 42)
        self.assertEqual(runs, Counter({21: 1}))
        self.assertEqual(m.nodes[0].counters["requests_resent"], 1)
        # A second leaf replier on the hub that does not declare it: a copy may reach
        # either, so the hub no longer announces it.
        self.serve(m.leaf(1)).register("double", double)
        m.settle()
        interest = m.nodes[2].routing.interest_of(hub.node_id, caller.channel_id)
        self.assertEqual(interest.idempotent, frozenset())

    def counting_replier(self, ctx: Context, runs: Counter) -> RepChannel:
        """``double`` (declared idempotent) and ``add``, counting their runs."""
        rep = RepChannel(ctx, "math")

        def double(x: int) -> int:
            runs["double"] += 1
            return 2 * x

        def add(x: int, y: int) -> int:
            runs["add"] += 1
            return x + y

        rep.register("double", double, idempotent=True)
        rep.register("add", add)
        return rep

    def test_a_hub_sends_its_leafs_idempotent_call_again_when_the_path_breaks(self) -> None:
        m = LeafMesh(self, nodes=4)  # a ring: two paths from n0 to n2
        runs: Counter = Counter()
        self.counting_replier(m.nodes[2], runs)
        caller = ReqChannel(m.leaf(0), "math")
        m.settle()
        hub, far = m.nodes[0], m.nodes[2]
        via = next(n for n in m.nodes if n.node_id == hub.routing.next_hop(far.node_id))
        conn = m.mesh.connection(via, far)
        conn.hold(via)
        again, plain = caller.call("double", 4), caller.call("add", 1, 2)
        m.settle()
        self.assertEqual(runs, Counter())  # both wait on the held link...
        m.mesh.cut(via, far)  # ...and go with it
        m.settle()
        self.assertEqual(self.successResultOf(again), 8)
        self.assertEqual(runs, Counter(double=1))
        self.assertEqual(hub.counters["requests_resent"], 1)
        self.assertEqual(hub.node.requests.relayed, {}, "answered: no longer watched")
        # A leaf sees no path, and its hub watches only idempotent calls: this one
        # waits for its timeout.
        self.assertNoResult(plain)
        m.mesh.advance(CONFIG.request_timeout)
        self.failureResultOf(plain, TimeoutError)

    def test_a_leaf_whose_hub_link_drops_sends_its_idempotent_call_after_dialling(
        self,
    ) -> None:
        m = LeafMesh(self, nodes=3)
        runs: Counter = Counter()
        self.counting_replier(m.nodes[2], runs)
        leaf = m.leaf(1)
        caller = ReqChannel(leaf, "math", timeout=30)
        m.settle()
        again, plain = caller.call("double", 5), caller.call("add", 2, 2)
        m.mesh.cut(leaf, m.nodes[1])  # before the leaf's frames are written
        m.settle()
        self.failureResultOf(plain, ConnectionLost)
        self.assertNoResult(again)
        m.mesh.advance(CONFIG.reconnect_max + 1.0)
        m.settle()
        self.assertEqual(self.successResultOf(again), 10)
        self.assertEqual(runs, Counter(double=1))
        self.assertEqual(leaf.counters["requests_resent"], 1)

    def test_a_node_calls_a_leaf_replier_and_a_leaf_of_its_own(self) -> None:
        m = LeafMesh(self, nodes=3)
        self.serve(m.leaf(1))
        for node in (m.nodes[1], m.nodes[0]):
            caller = ReqChannel(node, "math")
            m.settle()
            self.assertEqual(self.successResultOf(self._settled(m, caller.call("who"))), "leaf0")


class StateOfLeaves(MeshTestCase):
    mesh_config = CONFIG

    def test_a_leaf_write_reaches_every_holder_and_late_leaves_catch_up(self) -> None:
        m = LeafMesh(self, nodes=4)
        writer = StateChannel(m.leaf(0), "settings")
        sibling = StateChannel(m.leaf(0), "settings")
        far = StateChannel(m.leaf(2), "settings")
        on_node = StateChannel(m.nodes[3], "settings")
        m.settle()
        writer.send({"theme": "dark"})
        m.settle()
        for holder in (sibling, far, on_node):
            self.assertEqual(holder.recv(), {"theme": "dark"})
        late_same_hub = StateChannel(m.leaf(0), "settings")
        late_elsewhere = StateChannel(m.leaf(1), "settings")
        m.settle()
        self.assertEqual(late_same_hub.recv(), {"theme": "dark"})
        self.assertEqual(late_elsewhere.recv(), {"theme": "dark"})
        far.send({"theme": "light"})
        m.settle()
        for holder in (writer, sibling, on_node, late_same_hub, late_elsewhere):
            self.assertEqual(holder.recv(), {"theme": "light"})

    def test_a_lone_leaf_holder_keeps_its_value_for_the_next_one(self) -> None:
        m = LeafMesh(self, nodes=2)
        first = m.leaf(0)
        StateChannel(first, "note").send("remember me")
        m.settle()
        first.close()
        m.settle()
        later = StateChannel(m.leaf(1), "note")
        m.settle()
        # The hub held the value for its leaf, but no holder is left: like a node, the
        # mesh keeps state only where some holder is.
        self.assertIsNone(later.version)


class LeavesMoving(MeshTestCase):
    mesh_config = CONFIG

    def test_leaves_of_a_node_that_goes_away_join_the_next_node_of_their_list(self) -> None:
        m = LeafMesh(self, nodes=3)
        doomed, spare = m.nodes[1], m.nodes[2]
        leaves, logs = [], []
        for i in range(20):
            ctx = m.mesh.add(f"mover{i}")
            ctx.connect([f"memory:{doomed.name}", f"memory:{spare.name}"])
            log: list[str] = []
            SubChannel(ctx, "feed").subscribe(log.append)
            leaves.append(ctx)
            logs.append(log)
        replier = m.mesh.add("replier")
        replier.connect([f"memory:{doomed.name}", f"memory:{spare.name}"])
        RepChannel(replier, "math").register("add", lambda x, y: x + y)
        pub = PubChannel(m.nodes[0], "feed")
        req = ReqChannel(m.nodes[0], "math")
        m.settle()
        self.assertEqual({leaf.hub.peer_id for leaf in leaves}, {doomed.node_id})
        pub.send("before")
        m.settle()
        doomed.close()
        m.settle()
        self.assertEqual(pub.subscribers, 0)
        m.mesh.advance(CONFIG.reconnect_max + 1.0)
        m.settle()
        self.assertEqual({leaf.hub.peer_id for leaf in leaves}, {spare.node_id})
        self.assertEqual(pub.subscribers, 20)
        self.assertEqual(spare.routing.local.leaves, 21)
        pub.send("after")
        call = req.call("add", 2, 2)
        m.settle()
        self.assertEqual({tuple(log) for log in logs}, {("before", "after")})
        self.assertEqual(self.successResultOf(call), 4)

    def test_a_leaf_cut_from_its_hub_dials_again_and_its_interest_moves_with_it(self) -> None:
        m = LeafMesh(self, nodes=3)
        leaf = m.leaf(1)
        got: list[str] = []
        SubChannel(leaf, "feed").subscribe(got.append)
        pub = PubChannel(m.nodes[0], "feed")
        m.settle()
        pub.send("before")
        m.settle()
        m.mesh.cut(leaf, m.nodes[1])
        m.settle()
        self.assertEqual(pub.subscribers, 0, "its interest left with it")
        self.assertEqual(m.nodes[0].routing.nodes[m.nodes[1].node_id].leaves, 0)
        m.mesh.advance(CONFIG.reconnect_max + 1.0)
        m.settle()
        self.assertIsNotNone(leaf.hub)
        self.assertEqual(pub.subscribers, 1)
        pub.send("after")
        m.settle()
        self.assertEqual(got, ["before", "after"])


@st.composite
def leaf_scenarios(draw: st.DrawFn) -> dict:
    n = draw(st.integers(2, 5))
    node = st.integers(0, n - 1)
    actions = st.one_of(
        st.tuples(st.just("subscriber"), node),
        st.tuples(st.just("publisher"), node),
        st.tuples(st.just("publish"), st.integers(0, 10**6), st.integers(1, 5)),
        st.tuples(st.just("leave"), st.integers(0, 10**6)),
        st.tuples(st.just("cut leaf"), st.integers(0, 10**6)),
        st.tuples(st.just("cut node"), st.integers(0, 10**6)),
        st.tuples(st.just("heal")),
        st.tuples(st.just("pump")),
        st.tuples(st.just("settle")),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 5.0])),
    )
    return {
        "n": n,
        "ring": draw(st.booleans()),
        "first": [draw(node), draw(node)],
        "actions": draw(st.lists(actions, min_size=5, max_size=30)),
        "seed": draw(st.integers(0, 2**16)),
    }


class LeafProperty(MeshTestCase):
    """Leaves joining, leaving and moving while nodes' links break: per publisher, never a
    duplicate nor a reordering; once all is linked again, everyone gets everything new."""

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(leaf_scenarios())
    def test_joins_leaves_and_cuts(self, sc: dict) -> None:
        mesh = MemoryMesh(sc["n"], seed=sc["seed"], config=CONFIG)
        try:
            self.run_scenario(mesh, sc)
        finally:
            mesh.close()

    def run_scenario(self, mesh: MemoryMesh, sc: dict) -> None:
        nodes = list(mesh)
        for node in nodes:
            self.successResultOf(node.listen(f"memory:{node.name}"))
        pairs = list(itertools.pairwise(range(sc["n"])))
        if sc["ring"] and sc["n"] > 2:
            pairs.append((sc["n"] - 1, 0))
        links = {pair: mesh.link(nodes[pair[0]], nodes[pair[1]], settle=False)
                 for pair in pairs}
        subs: list[tuple[Context, list[tuple[str, int]]]] = []
        pubs: list[tuple[str, Context, PubChannel]] = []
        sent: Counter[str] = Counter()

        def subscriber(at: int) -> None:
            ctx = mesh.add(f"s{len(subs)}")
            ctx.connect(f"memory:{nodes[at].name}")
            log: list[tuple[str, int]] = []
            SubChannel(ctx, "prop", "OBJECT").subscribe(lambda m, log=log: log.append(tuple(m)))
            subs.append((ctx, log))

        def publisher(at: int) -> None:
            ctx = mesh.add(f"p{len(pubs)}")
            ctx.connect(f"memory:{nodes[at].name}")
            pubs.append((ctx.name, ctx, PubChannel(ctx, "prop", "OBJECT")))

        def live(ctxs: list[Context]) -> list[Context]:
            return [c for c in ctxs if not c.closed]

        def check_order() -> None:
            for ctx, log in subs:
                for name, _, _ in pubs:
                    seen = [k for who, k in log if who == name]
                    self.assert_increasing(seen, f"{name} -> {ctx.name}")
                    self.assertTrue(all(1 <= k <= sent[name] for k in seen))

        subscriber(sc["first"][0])
        publisher(sc["first"][1])
        mesh.settle()
        for action in sc["actions"]:
            kind = action[0]
            if kind == "subscriber":
                subscriber(action[1])
            elif kind == "publisher":
                publisher(action[1])
            elif kind == "publish":
                name, ctx, pub = pubs[action[1] % len(pubs)]
                if not ctx.closed:
                    for _ in range(action[2]):
                        sent[name] += 1
                        pub.send((name, sent[name]))
            elif kind == "leave":
                every = [c for c, _ in subs] + [c for _, c, _ in pubs]
                ctx = every[action[1] % len(every)]
                if len(live(every)) > 2:
                    ctx.close()
            elif kind == "cut leaf":
                every = live([c for c, _ in subs] + [c for _, c, _ in pubs])
                ctx = every[action[1] % len(every)]
                if ctx.hub is not None:
                    mesh.cut(ctx, nodes[[n.node_id for n in nodes].index(ctx.hub.peer_id)])
            elif kind == "cut node":
                pair = pairs[action[1] % len(pairs)]
                if not links[pair].closed:
                    links[pair].cut()
            elif kind == "heal":
                for pair in pairs:
                    if links[pair].closed:
                        links[pair] = mesh.link(nodes[pair[0]], nodes[pair[1]], settle=False)
            elif kind == "pump":
                mesh.pump()
            elif kind == "settle":
                mesh.settle()
            else:
                mesh.advance(action[1])
            check_order()
        # Linked again and settled: every live subscriber gets one new message from each
        # live publisher.
        for pair in pairs:
            if links[pair].closed:
                links[pair] = mesh.link(nodes[pair[0]], nodes[pair[1]], settle=False)
        mesh.advance(CONFIG.reconnect_max + 1.0)
        mesh.settle()
        check_order()
        marks = [len(log) for _, log in subs]
        for name, ctx, pub in pubs:
            if not ctx.closed:
                sent[name] += 1
                pub.send((name, sent[name]))
        mesh.settle()
        expected = sorted((name, sent[name]) for name, ctx, _ in pubs if not ctx.closed)
        for (ctx, log), mark in zip(subs, marks):
            if not ctx.closed:
                # The newest of each, last (a subscriber whose stream from a publisher
                # starts only now is first sent what it was owed and had not got).
                newest = {}
                for name, k in log[mark:]:
                    newest[name] = k
                self.assertEqual(sorted(newest.items()), expected, ctx.name)
        check_order()
