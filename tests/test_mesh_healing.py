"""Ring 2: the routed mesh heals itself (cuts, silent failures, partitions, heals).

Everything runs on :class:`yotonnet.testing.MemoryMesh` (fake clock, memory
transports), through the public channels only:

* a Hypothesis property: on random graphs with cycles, a live stream mixed
  with random cuts and heals never gives a subscriber a duplicate or an
  out-of-order message, a settled component delivers every message once to
  every subscriber in it, and so does the whole mesh once every cut is healed;
* 100-node ring, grid and random graph: traffic reroutes around cuts on its
  path, a partition loses only the subscribers cut off, and re-linking restores
  subscriptions and the original shortest-path tree with no user action;
* the reroute time after a silent link failure, measured on the fake clock in
  units of the busy timeout (the "heartbeat timeout" of the issue);
* request/reply and state across reroutes and partitions;
* DATA frames only go down branches with a subscriber for their channel.

Routing itself, sans IO, is in ``test_routing.py``; link status events and
re-announcing after a single cut in ``test_memory_links.py``.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from yotonnet import (
    OBJECT,
    ConnectionLost,
    ContextConfig,
    NoResponders,
    PubChannel,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
    idempotent,
)
from yotonnet.core.wire import FrameKind
from yotonnet.testing import MemoryConnection, MemoryMesh, MeshTestCase

DATA = int(FrameKind.DATA)
REQUEST = int(FrameKind.REQUEST)

Edge = frozenset  # of two context names


# --- graph helpers on context names (independent of yotonnet's routing)


def edge(a: str, b: str) -> Edge:
    return frozenset((a, b))


def open_edges(mesh: MemoryMesh) -> set[Edge]:
    """The links of the mesh that are open now, as edges between context names."""
    return {edge(c.client_name, c.server_name) for c in mesh.connections if not c.closed}


def neighbours(edges: Iterable[Edge]) -> dict[str, set[str]]:
    adj: dict[str, set[str]] = {}
    for e in edges:
        a, b = tuple(e)
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    return adj


def component(edges: Iterable[Edge], start: str) -> set[str]:
    adj = neighbours(edges)
    seen = {start}
    todo = [start]
    while todo:
        for nxt in adj.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def bfs_path(edges: Iterable[Edge], start: str, goal: str) -> list[str]:
    """A shortest path of names from ``start`` to ``goal`` (ties by name, so deterministic)."""
    adj = neighbours(edges)
    parent = {start: start}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        if node == goal:
            break
        for nxt in sorted(adj.get(node, ())):
            if nxt not in parent:
                parent[nxt] = node
                todo.append(nxt)
    if goal not in parent:
        raise AssertionError(f"{goal} is not reachable from {start}")
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


def hop_distances(edges: Iterable[Edge], start: str) -> dict[str, int]:
    adj = neighbours(edges)
    dist = {start: 0}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for nxt in adj.get(node, ()):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                todo.append(nxt)
    return dist


def data_edges(mesh: MemoryMesh, channel: int, action: Callable[[], object]) -> Counter[Edge]:
    """Run ``action``; count the DATA frames of ``channel`` each link carried meanwhile.

    Needs a tracing mesh; links cut during ``action`` are not counted.
    """
    before = {id(conn): len(conn.frames or ()) for conn in mesh.connections}
    action()
    carried: Counter[Edge] = Counter()
    for conn in mesh.connections:
        frames = (conn.frames or [])[before.get(id(conn), 0):]
        n = sum(1 for _, f in frames if f.kind == DATA and f.channel == channel)
        if n:
            carried[edge(conn.client_name, conn.server_name)] += n
    return carried


def channel_frames(conn: MemoryConnection, kind: int, channel: int) -> int:
    return sum(1 for _, f in conn.frames or () if f.kind == kind and f.channel == channel)


# --- 1. the property: random graphs, live stream, random cuts and heals


@st.composite
def healing_scenarios(draw: st.DrawFn) -> dict:
    n = draw(st.integers(5, 12))
    tree = [(draw(st.integers(0, i - 1)), i) for i in range(1, n)]
    others = [p for p in itertools.combinations(range(n), 2) if p not in tree]
    # At least one link beyond the spanning tree: a cycle, so reroutes have somewhere to go.
    extra = draw(st.lists(st.sampled_from(others), min_size=1, max_size=n, unique=True))
    ends = st.tuples(st.integers(0, n - 1), st.integers(0, 1))  # (node, channel)
    actions = st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 2), st.integers(1, 4)),
        st.tuples(st.just("cut"), st.integers(0, 10**6)),
        st.tuples(st.just("heal"), st.integers(0, 10**6)),
        st.tuples(st.just("hold"), st.integers(0, 10**6)),
        st.tuples(st.just("release"), st.integers(0, 10**6)),
        st.tuples(st.just("pump"), st.integers(1, 3)),
        st.tuples(st.just("settle")),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 5.0, 30.0])),
        st.tuples(st.just("probe")),
        # one end of a link gone without a word to the other (a host crash, a NAT entry)
        st.tuples(st.just("vanish"), st.integers(0, 10**6)),
        # a node loses every link at once (a forwarding node killed)
        st.tuples(st.just("isolate"), st.integers(0, 10**6)),
    )
    return {
        "n": n,
        "links": tree + extra,
        "pubs": draw(st.lists(ends, min_size=1, max_size=3)),
        "subs": draw(st.lists(ends, min_size=1, max_size=4)),
        "actions": draw(st.lists(actions, min_size=8, max_size=30)),
        "seed": draw(st.integers(0, 2**16)),
        "shuffle": draw(st.booleans()),
    }


class HealingProperty(MeshTestCase):
    """Issues 3 and 16 on any graph: never a duplicate or a reordering, even mid-reroute;
    and nothing lost: from its first message, a subscriber gets every later one of each
    publisher, or is told exactly which it never will (only when an outage outlasts
    ``repair_wait``)."""

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(healing_scenarios())
    def test_stream_through_random_cuts_and_heals(self, sc: dict) -> None:
        mesh = MemoryMesh(sc["n"], seed=sc["seed"], shuffle=sc["shuffle"])
        try:
            self.run_scenario(mesh, sc)
        finally:
            mesh.close()

    def run_scenario(self, mesh: MemoryMesh, sc: dict) -> None:
        ctxs = list(mesh)
        for a, b in sc["links"]:
            mesh.link(ctxs[a], ctxs[b], settle=False)
        chans = ("healing.c0", "healing.c1")
        subs: list[tuple[str, int]] = []  # (node name, channel index)
        logs: list[list[tuple[str, int]]] = []
        ends: list[SubChannel] = []
        for node, ch in sc["subs"]:
            sub = SubChannel(ctxs[node], chans[ch], OBJECT)
            log: list[tuple[str, int]] = []
            sub.subscribe(lambda m, log=log: log.append(tuple(m)))
            subs.append((ctxs[node].name, ch))
            logs.append(log)
            ends.append(sub)
        pubs = [
            (f"p{i}", ctxs[node].name, ch, PubChannel(ctxs[node], chans[ch], OBJECT))
            for i, (node, ch) in enumerate(sc["pubs"])
        ]
        sent = Counter[str]()
        # (publisher's node id, channel index) -> sequence number -> (publisher, count)
        numbered: dict[tuple[int, int], dict[int, tuple[str, int]]] = {}
        cut: list[tuple[int, int]] = []
        held: list[MemoryConnection] = []  # stalled both ways: silent, still open
        mesh.settle()

        def open_connection(a: int, b: int) -> MemoryConnection | None:
            try:
                conn = mesh.connection(ctxs[a], ctxs[b])
            except KeyError:
                return None
            return None if conn.closed else conn

        def publish(i: int) -> None:
            name, where, ch, pub = pubs[i]
            sent[name] += 1
            pub.send((name, sent[name]))
            ctx = mesh[where]
            seq = ctx.node.pubsub.last_seq(pub.channel_id)
            numbered.setdefault((ctx.node_id, ch), {})[seq] = (name, sent[name])

        def check_order() -> None:
            for (node, ch), log in zip(subs, logs):
                for name, _, pch, _ in pubs:
                    counters = [k for who, k in log if who == name]
                    if pch != ch:
                        self.assertEqual(counters, [], f"{name} leaked onto another channel")
                    self.assert_increasing(counters, f"{name} -> subscriber on {node}")
                    self.assertTrue(all(1 <= k <= sent[name] for k in counters))

        def release_all() -> None:
            # What a stalled link held arrives late, behind newer messages by the detour.
            while held:
                conn = held.pop()
                conn.release(conn.client)
                conn.release(conn.server)

        def probe() -> None:
            # Settled: every subscriber gets one new message from each publisher of its
            # channel in its own component, and nothing from anyone else.
            release_all()
            check_order()
            mesh.settle()
            edges = open_edges(mesh)
            marks = [len(log) for log in logs]
            for i in range(len(pubs)):
                publish(i)
            mesh.settle()
            newest = {(name, sent[name]) for name, _, _, _ in pubs}
            for (node, ch), log, mark in zip(subs, logs, marks):
                here = component(edges, node)
                expected = sorted(
                    (name, sent[name]) for name, where, pch, _ in pubs
                    if pch == ch and where in here
                )
                # (older messages sent again by a repair may come too)
                got = sorted(m for m in log[mark:] if m in newest)
                self.assertEqual(got, expected, f"subscriber on {node}")

        def check_lossless() -> None:
            wait = ctxs[0].config.repair_wait
            for (node, ch), log, sub in zip(subs, logs, ends):
                for name, where, pch, _ in pubs:
                    if pch != ch:
                        continue
                    got = [k for who, k in log if who == name]
                    self.assertTrue(got, f"{name} -> subscriber on {node}: nothing at all")
                    source = mesh[where].node_id
                    lost = {
                        numbered[(source, ch)][seq][1]
                        for gap in sub.gaps if gap.source == source
                        for seq in range(gap.first, gap.last + 1)
                        if seq in numbered[(source, ch)]
                        and numbered[(source, ch)][seq][0] == name
                    }
                    what = f"{name} -> subscriber on {node} (lost {sorted(lost)})"
                    self.assertEqual(len(got), len(set(got)), what)
                    self.assertFalse(lost & set(got), what)
                    self.assertEqual(set(got) | lost, set(range(got[0], sent[name] + 1)), what)
                    if elapsed < wait:
                        self.assertFalse(lost, f"{what}: no outage outlasted {wait} s")

        elapsed = 0.0

        for action in sc["actions"]:
            kind = action[0]
            if kind == "publish":
                for _ in range(action[2]):
                    publish(action[1] % len(pubs))
            elif kind == "cut":
                a, b = sc["links"][action[1] % len(sc["links"])]
                if (a, b) not in cut:
                    # (None: the mesh closed it already, a handshake held past its timeout)
                    conn = open_connection(a, b)
                    if conn is not None:
                        conn.cut()
                    cut.append((a, b))
                    if conn in held:
                        held.remove(conn)
            elif kind == "heal" and cut:
                a, b = cut.pop(action[1] % len(cut))
                mesh.link(ctxs[a], ctxs[b], settle=False)
            elif kind == "hold":
                a, b = sc["links"][action[1] % len(sc["links"])]
                conn = open_connection(a, b)
                if conn is not None and conn not in held:
                    conn.hold(conn.client)
                    conn.hold(conn.server)
                    held.append(conn)
            elif kind == "release" and held:
                conn = held.pop(action[1] % len(held))
                conn.release(conn.client)
                conn.release(conn.server)
            elif kind == "pump":
                for _ in range(action[1]):
                    mesh.pump()  # stop mid-flood: publishes race the reroute
            elif kind == "settle":
                mesh.settle()
            elif kind == "advance":
                mesh.advance(action[1])  # held links go busy; 60 s forgets lost records
                elapsed += action[1]
            elif kind == "vanish":
                a, b = sc["links"][action[1] % len(sc["links"])]
                if (a, b) not in cut:
                    conn = open_connection(a, b)
                    if conn is not None:
                        conn.vanish(conn.client)  # the server end is left half-open
                        mesh.pump()
                        conn.cut()  # (its keepalive would find out; no need to wait)
                    cut.append((a, b))
            elif kind == "isolate":
                victim = ctxs[action[1] % len(ctxs)]
                for conn in mesh.isolate(victim):
                    pair = (sc["links"].index(p) for p in sc["links"]
                            if {ctxs[p[0]].name, ctxs[p[1]].name}
                            == {conn.client_name, conn.server_name})
                    at = next(pair, None)
                    if at is not None and sc["links"][at] not in cut:
                        cut.append(sc["links"][at])
            elif kind == "probe":
                probe()
            # The stream never stops: one message from each publisher after every step,
            # moved one hop before the next step, so faults strike with frames in flight.
            for i in range(len(pubs)):
                publish(i)
            mesh.pump()
            check_order()
        # Heal everything: after convergence the whole mesh is one component again.
        release_all()
        mesh.settle()
        # (a link held mid-handshake was closed by its handshake timeout: linked again too)
        now_open = open_edges(mesh)
        for a, b in sc["links"]:
            if edge(ctxs[a].name, ctxs[b].name) not in now_open:
                mesh.link(ctxs[a], ctxs[b], settle=False)
        mesh.settle()
        self.assertEqual(component(open_edges(mesh), ctxs[0].name), {c.name for c in ctxs})
        probe()
        check_order()
        # Repairs that wait for a retry or a tail go on for a few heartbeats.
        mesh.advance(3.0)
        elapsed += 3.0
        probe()
        check_order()
        check_lossless()


# --- 2. a hundred nodes: ring, grid, random graph


class HundredNodeRerouteTests(MeshTestCase):
    """One publisher, far subscribers; cut the path, check the reroute, heal, check again."""

    def setup_stream(self, mesh: MemoryMesh, pub_name: str, sub_names: list[str]) -> None:
        self.mesh = mesh
        self.pub = PubChannel(mesh[pub_name], "wide.news", OBJECT)
        self.logs: dict[str, list[int]] = {}
        for name in sub_names:
            log: list[int] = []
            SubChannel(mesh[name], "wide.news", OBJECT).subscribe(log.append)
            self.logs[name] = log
        self.counter = 0
        mesh.settle()
        self.assertEqual(self.pub.subscribers, len(sub_names))

    def send(self, n: int) -> list[int]:
        batch = list(range(self.counter + 1, self.counter + 1 + n))
        for k in batch:
            self.pub.send(k)
        self.counter += n
        return batch

    def batch_reaches(self, reached: Iterable[str], n: int = 10) -> Counter[Edge]:
        """Publish ``n`` messages once the mesh has settled; exactly ``reached`` get each once,
        in order. Returns the DATA frames per link: each link carries each message once."""
        self.mesh.settle()
        reached = set(reached)
        marks = {name: len(log) for name, log in self.logs.items()}
        batch: list[int] = []
        carried = data_edges(
            self.mesh, self.pub.channel_id,
            lambda: (batch.extend(self.send(n)), self.mesh.settle()),
        )
        for name, log in self.logs.items():
            self.assertEqual(log[marks[name]:], batch if name in reached else [], name)
        self.assertEqual(set(carried.values()), {n}, "a link carried a message twice")
        return carried

    def cut_during_stream(self, cuts: list[Edge]) -> None:
        """Cut while messages are in flight: losses are allowed, duplicates and reorders not."""
        self.send(5)
        self.mesh.pump()
        for e in cuts:
            self.mesh.cut(*sorted(e))
            self.send(2)
            self.mesh.pump()
        self.send(5)
        self.mesh.settle()
        for name, log in self.logs.items():
            self.assert_increasing(log, name)

    def heal(self, cuts: list[tuple[str, str]]) -> None:
        for a, b in cuts:
            self.mesh.link(a, b, settle=False)  # in the original direction: the same graph
        self.mesh.settle()

    def reroute_and_heal(self, cut_count: int, far: str) -> None:
        """Cut ``cut_count`` links on the path to ``far`` that keep the mesh connected."""
        mesh = self.mesh
        graph = open_edges(mesh)
        everyone = set(self.logs)
        tree = self.batch_reaches(everyone)
        path = bfs_path(tree, self.pub.context.name, far)
        cuts: list[Edge] = []
        # From the middle of the path outward, so the cuts are far from both ends.
        order = sorted(range(len(path) - 1), key=lambda i: abs(i - len(path) // 2))
        for i in order:
            e = edge(path[i], path[i + 1])
            if len(cuts) < cut_count and len(component(graph - {e, *cuts}, far)) == len(mesh):
                cuts.append(e)
        self.assertEqual(len(cuts), cut_count)
        directed = [self._direction(e) for e in cuts]
        self.cut_during_stream(cuts)
        rerouted = self.batch_reaches(everyone)
        self.assertFalse(set(cuts) & set(rerouted))
        self.assertNotEqual(set(rerouted), set(tree))
        self.heal(directed)
        self.assertEqual(self.pub.subscribers, len(self.logs))
        # Same graph, same node ids: the same shortest-path tree as before the cut.
        self.assertEqual(self.batch_reaches(everyone), tree)

    def _direction(self, e: Edge) -> tuple[str, str]:
        a, b = sorted(e)
        conn = self.mesh.connection(a, b)
        return conn.client_name, conn.server_name

    def test_ring(self) -> None:
        # Once cut, the ring is a line of 100: allow frames more hops than the default
        # 32 (see test_default_hop_limit_below for that default on this ring).
        mesh = self.make_mesh(100, seed=21, trace=True, config=ContextConfig(max_hops=255))
        for i in range(100):
            mesh.link(mesh[i], mesh[(i + 1) % 100], settle=False)
        self.setup_stream(mesh, "n0", ["n25", "n50", "n75"])
        self.reroute_and_heal(1, "n50")  # one cut: the ring is a line, everyone reachable
        # Two cuts split the ring: only the publisher's side still gets the stream.
        everyone = set(self.logs)
        tree = self.batch_reaches(everyone)
        path = bfs_path(tree, "n0", "n50")
        cuts = [edge(path[10], path[11]), edge(path[-5], path[-4])]
        directed = [self._direction(e) for e in cuts]
        self.cut_during_stream(cuts)
        near = component(open_edges(mesh), "n0") & everyone
        self.assertTrue(near and near != everyone, near)
        self.assertEqual(self.pub.subscribers, len(near))
        self.batch_reaches(near)
        self.heal(directed)
        self.assertEqual(self.pub.subscribers, 3)
        self.assertEqual(self.batch_reaches(everyone), tree)

    def test_default_hop_limit_below(self) -> None:
        # With the default config, a subscriber 50 hops away on a 100-node ring: the mesh
        # counts it and wait_for_subscribers fires, so what is sent next must reach it.
        mesh = self.make_mesh(100, seed=21)
        for i in range(100):
            mesh.link(mesh[i], mesh[(i + 1) % 100], settle=False)
        subs = {name: SubChannel(mesh[name], "wide.news") for name in ("n25", "n50", "n75")}
        pub = PubChannel(mesh["n0"], "wide.news")
        waiting = pub.wait_for_subscribers(3)
        mesh.settle()
        self.successResultOf(waiting)
        self.assertEqual(mesh["n0"].routing.distance(mesh["n50"].node_id), 50)
        pub.send("far")
        mesh.settle()
        dropped = sum(ctx.counters["hop_limit"] for ctx in mesh)
        for name, sub in subs.items():
            self.assertEqual(
                sub.pending, 1,
                f"{name} counted as a subscriber but got nothing; {dropped} frame(s) dropped "
                f"at the hop limit (ContextConfig.max_hops={mesh[0].config.max_hops})",
            )

    def test_grid(self) -> None:
        names = [f"r{r}c{c}" for r in range(10) for c in range(10)]
        mesh = self.make_mesh(names=names, seed=22, trace=True)
        for r in range(10):
            for c in range(10):
                if c < 9:
                    mesh.link(f"r{r}c{c}", f"r{r}c{c + 1}", settle=False)
                if r < 9:
                    mesh.link(f"r{r}c{c}", f"r{r + 1}c{c}", settle=False)
        self.setup_stream(mesh, "r0c0", ["r9c9", "r0c9", "r9c0", "r5c5"])
        self.reroute_and_heal(2, "r9c9")

    def test_random_graph(self) -> None:
        mesh = self.make_mesh(100, seed=23, trace=True)
        mesh.link_random(extra=30)
        dist = hop_distances(open_edges(mesh), "n0")
        self.assertEqual(len(dist), 100)
        far = sorted(dist, key=lambda name: (-dist[name], name))
        self.setup_stream(mesh, "n0", far[:3] + [far[50]])
        self.reroute_and_heal(3, far[0])


# --- 3. reroute time after a silent failure


class RerouteTimeTests(MeshTestCase):
    """How long a silently failed link keeps eating traffic.

    A link sends a PING every ``heartbeat`` seconds. Once nothing has come from
    the peer for ``reroute_after`` (1.5 s), the link is ``quiet``: it costs
    ``BUSY_LINK_COST`` (1000) instead of 1, so traffic takes any live detour,
    while its status stays "up". Past ``busy_timeout`` (5 s) the peer is
    reported busy; ``dead_timeout`` (0 by default: never) would close the link.
    Three signals, kept apart: a peer stuck in C code holding the GIL is routed
    around early, reported busy later, and never declared dead.
    """

    STEP = 1 / 16  # a power of two: the fake clock lands exactly on every heartbeat

    def square(self, config: ContextConfig, phase: float):
        """A-B-C-D-A, a publisher on A, a subscriber on C: two paths of two hops."""
        mesh = self.make_mesh(names="ABCD", seed=31, config=config, trace=True)
        a, b, c, d = mesh
        for x, y in ((a, b), (b, c), (c, d), (d, a)):
            mesh.link(x, y)
        got: list[int] = []
        SubChannel(c, "square", OBJECT).subscribe(got.append)
        pub = PubChannel(a, "square", OBJECT)
        mesh.settle()
        mesh.advance(phase)  # where in the heartbeat period the failure strikes
        pub.send(0)
        mesh.settle()
        self.assertEqual(got, [0])
        via = b if mesh.connection(a, b).count(DATA) else d
        other = d if via is b else b
        return mesh, pub, got, via, other

    def measure(self, mesh: MemoryMesh, pub: PubChannel, got: list[int], limit: float) -> float:
        """Publish every STEP; the fake time from now until a message arrives as it is sent."""
        start = mesh.clock.seconds()
        k = 0
        while mesh.clock.seconds() - start <= limit:
            k += 1
            pub.send(k)
            mesh.settle()
            if got[-1] == k:
                return mesh.clock.seconds() - start
            mesh.advance(self.STEP)
        return float("inf")

    def test_silent_failure_reroutes_within_three_seconds_and_declares_nothing(self) -> None:
        # With the defaults (heartbeat 1 s, reroute_after 1.5 s, busy_timeout 5 s) the
        # detour carries the stream 0.5 to 1.5 s after the failure: the link turns quiet
        # reroute_after after the last byte heard, which came up to one heartbeat before
        # the failure (before reroute_after existed this took 4 to 5 s). Issue 16 asks
        # for 3 s.
        config = ContextConfig()
        limit = 3.0
        worst = 0.0
        for hop in ("first", "last"):
            for phase in (0.0, 0.25, 0.5, 0.75):
                mesh, pub, got, via, other = self.square(config, phase)
                a, c = mesh["A"], mesh["C"]
                conn = mesh.connection(*((a, via) if hop == "first" else (via, c)))
                conn.hold(conn.client_context)  # both directions: a partition of one link,
                conn.hold(conn.server_context)  # no connectionLost on either end
                took = self.measure(mesh, pub, got, limit)
                self.assertLessEqual(took, limit, f"{hop} hop, phase {phase}")
                worst = max(worst, took)
                # Routed around, and nothing declared: both ends still say "up".
                ends = [x.link_to(y.node_id) for x, y in ((conn.client_context,
                        conn.server_context), (conn.server_context, conn.client_context))]
                self.assertEqual([(e.status, e.quiet) for e in ends], [("up", True)] * 2)
                # The stream now goes round by the other side...
                before = mesh.connection(a, other).count(DATA)
                pub.send(-1)
                mesh.settle()
                self.assertEqual(mesh.connection(a, other).count(DATA), before + 1)
                # ...and when the stalled link gives up what it held, nothing repeats.
                conn.release(conn.client_context)
                conn.release(conn.server_context)
                mesh.advance(2)
                self.assert_increasing(got[:-1], f"{hop} hop, phase {phase}")
                mesh.close()
        self.assertLessEqual(worst, config.reroute_after + self.STEP)

    def test_a_peer_stuck_holding_the_gil_is_routed_around_then_busy_never_dead(self) -> None:
        # B's interpreter stops (C code holding the GIL): none of its links says anything,
        # though their sockets stay open. Its neighbours route around it at reroute_after,
        # report it busy at busy_timeout and never close a link for it.
        config = ContextConfig()
        mesh, pub, got, via, other = self.square(config, 0.5)
        held = [conn for conn in mesh.connections if via in (conn.client_context,
                                                             conn.server_context)]
        for conn in held:
            conn.hold(via)
        neighbours = [c for c in mesh if c is not via and via.node_id in c.links]

        def seen() -> set:
            return {(c.links[via.node_id].status, c.links[via.node_id].quiet)
                    for c in neighbours}

        took = self.measure(mesh, pub, got, 3.0)
        self.assertLessEqual(took, config.reroute_after)
        self.assertEqual(seen(), {("up", True)})
        mesh.advance(config.busy_timeout)
        self.assertEqual(seen(), {("busy", True)})
        mesh.advance(60)
        self.assertEqual(seen(), {("busy", True)}, "a link was closed for a busy peer")
        for conn in held:
            conn.release(via)
        mesh.advance(config.heartbeat * 2)
        self.assertEqual(seen(), {("up", False)})
        self.assert_increasing(got[:-1], "stuck peer")
        # The shortest path is back through the woken node (lower id wins ties).
        mesh.settle()
        self.assertEqual(mesh["A"].routing.next_hop(mesh["C"].node_id), via.node_id)

    def test_half_open_link_reroutes_at_once(self) -> None:
        # One end loses the connection (a crash, an expired NAT entry): it drops the
        # link from its record at once, and a link only counts when both ends list it.
        config = ContextConfig()
        for hop in ("first", "last"):
            for vanishing in (0, 1):
                mesh, pub, got, via, _ = self.square(config, 0.5)
                a, c = mesh["A"], mesh["C"]
                conn = mesh.connection(*((a, via) if hop == "first" else (via, c)))
                conn.vanish((conn.client_context, conn.server_context)[vanishing])
                mesh.settle()
                took = self.measure(mesh, pub, got, 3 * config.busy_timeout)
                self.assertEqual(took, 0.0, f"{hop} hop, end {vanishing} vanished")
                self.assert_increasing(got, "half-open")
                mesh.close()

    def test_link_silent_in_one_direction_is_avoided_in_that_direction(self) -> None:
        # A's frames to its next hop stop arriving, while the next hop's still reach A:
        # the next hop finds A quiet after reroute_after; A hears pings and keeps the
        # link as it was. The stream from A must still move to the detour within 3 s,
        # since a path is only as good as its worse direction.
        config = ContextConfig()
        mesh, pub, got, via, other = self.square(config, 0.0)
        a = mesh["A"]
        conn = mesh.connection(a, via)
        conn.hold(a)
        took = self.measure(mesh, pub, got, 3.0)
        self.assertEqual((via.links[a.node_id].status, via.links[a.node_id].quiet),
                         ("up", True))
        self.assertEqual((a.links[via.node_id].status, a.links[via.node_id].quiet),
                         ("up", False))
        self.assertLessEqual(
            took, 3.0,
            f"the stream from A still goes into the link {via.name} finds quiet "
            f"(A sees it {a.links[via.node_id].status})",
        )


# --- 4. request/reply across a reroute


class Calculator(RepChannel):
    def __init__(self, context, name: str) -> None:
        self.runs: Counter = Counter()  # method -> times its handler ran
        super().__init__(context, name)

    def add(self, a: int, b: int) -> int:
        self.runs["add"] += 1
        return a + b

    @idempotent
    def double(self, a: int) -> int:
        self.runs["double"] += 1
        return 2 * a


class ReqRepRerouteTests(MeshTestCase):
    """A ring of six: the caller on n0, the replier opposite on n3."""

    def setUp(self) -> None:
        self.mesh = self.make_mesh(6, seed=41, trace=True)
        ctxs = list(self.mesh)
        for i in range(6):
            self.mesh.link(ctxs[i], ctxs[(i + 1) % 6], settle=False)
        self.caller, self.far = ctxs[0], ctxs[3]
        self.rep = Calculator(self.far, "calc")
        self.pending: list[defer.Deferred] = []
        self.rep.register("slow", self.slow)
        self.rep.register("slow_idempotent", self.slow, idempotent=True)
        self.req = ReqChannel(self.caller, "calc", timeout=20)
        self.mesh.settle()

    def slow(self) -> defer.Deferred:
        """A handler that answers when the test fires its Deferred."""
        self.pending.append(defer.Deferred())
        return self.pending[-1]

    def counter(self, name: str) -> int:
        return sum(ctx.counters[name] for ctx in self.mesh)

    def path(self) -> list[str]:
        """The hops a request takes now, from the routing tables (next hop at each node)."""
        names = [self.caller.name]
        node = self.caller
        while node is not self.far:
            node = self.mesh[self._name_of(node.routing.next_hop(self.far.node_id))]
            names.append(node.name)
        return names

    def _name_of(self, node_id: int | None) -> str:
        return next(c.name for c in self.mesh if c.node_id == node_id)

    def requests_over(self, a: str, b: str) -> int:
        return channel_frames(self.mesh.connection(a, b), REQUEST, self.req.channel_id)

    def test_calls_after_a_cut_take_the_detour(self) -> None:
        d = self.req.add(40, 2)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 42)
        path = self.path()
        self.assertEqual(len(path), 4)
        self.mesh.cut(path[1], path[2])  # the middle of the path: the caller is told by flooding
        self.mesh.settle()
        detour = self.path()
        self.assertEqual(len(detour), 4)
        self.assertNotEqual(detour[1], path[1])
        before = self.requests_over(detour[1], detour[2])
        results = [self.req.add(i, i) for i in range(5)]
        self.mesh.settle()
        self.assertEqual([self.successResultOf(r) for r in results], [0, 2, 4, 6, 8])
        self.assertEqual(self.requests_over(detour[1], detour[2]), before + 5)

    def test_reply_in_flight_takes_the_detour(self) -> None:
        # Idempotent: the copy sent over the detour finds the call being served and is
        # dropped; the one reply takes the detour.
        d = self.req.slow_idempotent()
        self.mesh.settle()
        self.assertEqual(len(self.pending), 1)
        path = self.path()
        self.mesh.cut(path[2], path[3])  # the reply's first hop, while the handler works
        self.mesh.settle()
        self.assertEqual((self.counter("requests_resent"), self.counter("requests_duplicate")),
                         (1, 1))
        self.assertEqual(len(self.pending), 1, "the copy was served again")
        self.pending[0].callback("late but routed")
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), "late but routed")

    def test_a_call_whose_path_breaks_fails_at_once_unless_idempotent(self) -> None:
        d = self.req.slow()
        self.mesh.settle()
        path = self.path()
        self.mesh.cut(path[2], path[3])
        self.mesh.settle()
        failure = self.failureResultOf(d, ConnectionLost)
        self.assertIn("may or may not have run", str(failure.value))
        self.assertIn("not declared idempotent", str(failure.value))
        self.assertEqual(self.counter("requests_resent"), 0)

    def test_idempotence_is_announced_with_the_interest(self) -> None:
        interest = self.caller.routing.interest_of(self.far.node_id, self.req.channel_id)
        self.assertEqual(interest.idempotent, frozenset({"double", "slow_idempotent"}))
        # Another replier of the channel that does not declare it: no longer idempotent
        # for the node, since a copy may reach either.
        Calculator(self.far, "calc").register("slow_idempotent", self.slow)
        self.mesh.settle()
        interest = self.caller.routing.interest_of(self.far.node_id, self.req.channel_id)
        self.assertEqual(interest.idempotent, frozenset({"double"}))

    def test_a_lost_idempotent_request_is_sent_again_and_runs_once(self) -> None:
        d = self.req.double(21)
        hop = self.path()[1]
        self.mesh.cut(self.caller.name, hop)  # before n0's queued frames are written
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(self.rep.runs["double"], 1)
        self.assertEqual(self.counter("requests_resent"), 1)

    def test_a_lost_reply_is_answered_again_without_running_twice(self) -> None:
        d = self.req.double(5)
        path = self.path()
        # The request reaches the replier, which answers at once; its reply is lost
        # with the link it was on.
        far = self.mesh.connection(path[2], path[3])
        far.hold(self.far)
        self.mesh.settle()
        self.assertEqual(self.rep.runs["double"], 1)
        self.assertNoResult(d)
        far.cut()
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 10)
        self.assertEqual(self.rep.runs["double"], 1, "the copy ran the handler again")
        self.assertEqual(self.counter("requests_duplicate"), 1)

    def test_a_call_on_a_silent_link_is_sent_round_it_if_idempotent_else_waits(self) -> None:
        # The path's middle link falls silent: traffic goes round it after reroute_after.
        plain, again = self.req.add(1, 1), self.req.double(4)
        path = self.path()
        middle = self.mesh.connection(path[1], path[2])
        middle.hold(middle.client_context)
        middle.hold(middle.server_context)
        self.mesh.advance(self.mesh[0].config.reroute_after + 1)
        self.assertEqual(self.successResultOf(again), 8)
        self.assertNoResult(plain)  # it may still come: the link is silent, not gone
        middle.release(middle.client_context)
        middle.release(middle.server_context)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(plain), 2)
        self.assertEqual(self.rep.runs, Counter(add=1, double=1))

    def test_call_in_flight_fails_with_connection_lost_when_the_replier_is_cut_off(
        self,
    ) -> None:
        served = self.req.slow()  # being served on n3
        self.mesh.settle()
        travelling = self.req.slow()  # still in n0's send queue
        # Split the ring into {n0, n1, n5} and {n2, n3, n4}: no link of n0 goes down.
        self.mesh.cut("n1", "n2")
        self.mesh.cut("n4", "n5")
        self.mesh.settle()
        self.failureResultOf(served, ConnectionLost)
        self.failureResultOf(travelling, ConnectionLost)
        self.failureResultOf(self.req.add(1, 1), NoResponders)
        self.mesh.link("n1", "n2")  # healed: the replier is known again, no user action
        d = self.req.add(1, 1)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 2)

    def test_request_lost_on_a_cut_link_fails_at_once(self) -> None:
        # The replier stays reachable, but the request went with the link it was queued
        # on: a method not declared idempotent is not sent again, and the call fails
        # at once rather than wait out its timeout.
        d = self.req.add(1, 2)
        hop = self.path()[1]
        self.mesh.cut(self.caller.name, hop)  # before n0's queued frames are written
        self.mesh.settle()
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(self.rep.runs["add"], 0)
        d2 = self.req.add(2, 3)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d2), 5)


# --- 5. state across a partition that heals


class StatePartitionTests(MeshTestCase):
    """A ring of eight split in two halves that both write, then healed.

    Holders everywhere but on n1 and n5, which only relay. The order is the
    documented one (``Context._state_apply``): the higher Lamport time wins, then
    the higher writer node id.
    """

    HALVES = ({"n0", "n1", "n2", "n3"}, {"n4", "n5", "n6", "n7"})
    SPLIT = (("n3", "n4"), ("n7", "n0"))

    def run_partition(self, seed: int, right_writes: int) -> str:
        """Split, write on both sides, heal; return the value every holder ends with."""
        mesh = self.make_mesh(8, seed=seed)
        for i in range(8):
            mesh.link(mesh[i], mesh[(i + 1) % 8], settle=False)
        relays = {"n1", "n5"}
        holders = {ctx.name: StateChannel(ctx, "cfg") for ctx in mesh if ctx.name not in relays}
        seen: dict[str, list[object]] = {name: [] for name in holders}
        for name, holder in holders.items():
            holder.subscribe(seen[name].append)
        mesh.settle()
        holders["n0"].send("base")  # everyone now at Lamport time 1
        mesh.settle()
        self.assertEqual({h.recv() for h in holders.values()}, {"base"})
        for a, b in self.SPLIT:
            mesh.cut(a, b)
        mesh.settle()
        holders["n2"].send("left")
        for i in range(right_writes):
            holders["n6"].send(f"right-{i}")
        mesh.settle()
        right = f"right-{right_writes - 1}"
        left_version = (2, mesh["n2"].node_id)
        right_version = (1 + right_writes, mesh["n6"].node_id)
        for name, holder in holders.items():
            mine = name in self.HALVES[0]
            self.assertEqual(holder.recv(), "left" if mine else right, name)
            self.assertEqual(holder.version, left_version if mine else right_version, name)
        expected = "left" if left_version > right_version else right
        for a, b in self.SPLIT:
            mesh.link(a, b, settle=False)
        mesh.settle()
        for name, holder in holders.items():
            self.assertEqual(holder.recv(), expected, name)
            self.assertEqual(holder.version, max(left_version, right_version), name)
            self.assertEqual(seen[name][-1], expected, name)  # subscribers were told
        # A write made after the heal has seen the winner, so it beats it on every node.
        holders["n7"].send("after heal")
        mesh.settle()
        self.assertEqual({h.recv() for h in holders.values()}, {"after heal"})
        return expected

    def test_equal_lamport_times_the_higher_node_id_wins_everywhere(self) -> None:
        winners = {self.run_partition(seed, right_writes=1) for seed in range(6)}
        self.assertEqual(winners, {"left", "right-0"}, "both sides must win for some seed")

    def test_higher_lamport_time_wins_whatever_the_node_ids(self) -> None:
        for seed in range(4):
            self.assertEqual(self.run_partition(seed, right_writes=3), "right-2")


# --- 6. traffic only toward interest


class InterestOnlyTrafficTests(MeshTestCase):
    """A tree; DATA frames of a channel go down a branch only if someone there wants them.

    ::

        n0 (publishers) - n1 - n2 - n3
                           \\
                            n4 - n5 - n6
    """

    def test_branches_without_subscribers_get_no_data(self) -> None:
        mesh = self.make_mesh(7, seed=51, trace=True)
        for a, b in (("n0", "n1"), ("n1", "n2"), ("n2", "n3"), ("n1", "n4"),
                     ("n4", "n5"), ("n5", "n6")):
            mesh.link(a, b, settle=False)
        news_sub = SubChannel(mesh["n3"], "tree.news")
        SubChannel(mesh["n6"], "tree.other")
        news = PubChannel(mesh["n0"], "tree.news")
        other = PubChannel(mesh["n0"], "tree.other")
        mesh.settle()

        def burst() -> tuple[Counter[Edge], Counter[Edge]]:
            counts: list[Counter[Edge]] = []
            for pub in (news, other):
                def send(pub: PubChannel = pub) -> None:
                    for i in range(20):
                        pub.send(str(i))
                    mesh.settle()
                counts.append(data_edges(mesh, pub.channel_id, send))
            return counts[0], counts[1]

        def path(*names: str) -> Counter[Edge]:
            return Counter({edge(a, b): 20 for a, b in itertools.pairwise(names)})

        got_news, got_other = burst()
        self.assertEqual(got_news, path("n0", "n1", "n2", "n3"))
        self.assertEqual(got_other, path("n0", "n1", "n4", "n5", "n6"))
        self.assertEqual(news_sub.pending, 20)
        # A news subscriber appears half-way down the quiet branch: news goes that far.
        late_sub = SubChannel(mesh["n5"], "tree.news")
        mesh.settle()
        got_news, got_other = burst()
        self.assertEqual(got_news, path("n0", "n1", "n2", "n3") + path("n1", "n4", "n5"))
        self.assertEqual(got_other, path("n0", "n1", "n4", "n5", "n6"))
        # The first news subscriber leaves: its branch goes quiet again.
        news_sub.close()
        mesh.settle()
        got_news, _ = burst()
        self.assertEqual(got_news, path("n0", "n1", "n4", "n5"))
        # Nobody anywhere: nothing leaves the publisher's node.
        late_sub.close()
        mesh.settle()
        got_news, _ = burst()
        self.assertEqual(got_news, Counter())
        self.assertEqual(late_sub.pending, 40)  # what it got while subscribed, nothing after
