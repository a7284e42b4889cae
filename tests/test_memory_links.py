"""Ring 2: link life on an in-memory mesh, and the mesh double itself.

Link status events (up, busy, closed), heartbeats, the handshake and
dead-peer timeouts, protocol errors from a scripted peer, re-announcing
interest after a cut, and :class:`yotonnet.testing.MemoryMesh`'s own promises:
the same seed gives the same run, and a hundred contexts fit in a test.
"""

from __future__ import annotations

import rawwire
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from yotonnet import ContextConfig, LinkEvent, PubChannel, StateChannel, SubChannel
from yotonnet.core import wire
from yotonnet.core.wire import FrameKind
from yotonnet.testing import MemoryMesh, MeshTestCase

FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0, handshake_timeout=5.0)


class Recorder:
    """Collects a context's LinkEvents."""

    def __init__(self, ctx) -> None:
        self.events: list[LinkEvent] = []
        ctx.watch_links(self.events.append)

    def statuses(self) -> list[tuple[str, str]]:
        return [(e.peer_name, e.status) for e in self.events]


class ForeignPeer(Protocol):
    """A scripted peer: records what it receives and writes what the test tells it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.lost = reason

    def frames(self) -> list[wire.Frame]:
        return wire.FrameDecoder().feed(self.received)


class AuthenticatingPeer(ForeignPeer):
    """A scripted peer that proves the local secret by hand (tests/rawwire.py), then
    writes what the test tells it."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.dialler = rawwire.Dialler(node_id, "foreign")

    def connectionMade(self) -> None:
        self.transport.write(self.dialler.greeting())

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        answer = self.dialler.feed(data)
        if answer:
            self.transport.write(answer)


def hello(node_id: int, name: str = "foreign") -> bytes:
    return wire.encode_hello(wire.Hello(node_id, name, (), wire.DEFAULT_MAX_FRAME, 1.0, {}))


class LinkStatusTests(MeshTestCase):
    mesh_config = FAST

    def check_handshake_failed(self, d: object, fatal: bool) -> None:
        """An accepting link's handshake Deferred must not leave an unhandled failure.

        Nobody waits on it (the failure is reported as a link event), so the core
        consumes it; ``fatal`` documents which kind of failure the caller caused.
        """
        if d is None or not d.called:
            return
        self.assertIsNone(self.successResultOf(d))

    def test_up_on_handshake(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        ra, rb = Recorder(a), Recorder(b)
        conn = mesh.link(a, b, settle=False)
        self.assertEqual(conn.link_of(a).status, "handshaking")
        self.assertEqual(ra.events, [])
        mesh.settle()
        self.assertEqual(ra.statuses(), [("n1", "up")])
        self.assertEqual(rb.statuses(), [("n0", "up")])
        self.assertEqual(ra.events[0].peer_id, b.node_id)
        self.assertIs(ra.events[0].link, a.links[b.node_id])
        self.assertIsNone(ra.events[0].reason)
        self.assertEqual(a.links[b.node_id].info()["direction"], "out")
        self.assertEqual(b.links[a.node_id].info()["direction"], "in")
        self.assertEqual(a.links[b.node_id].peer_address, "memory:n1")

    def test_busy_when_peer_is_silent_and_up_when_it_speaks_again(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        conn = mesh.link(a, b)
        ra, rb = Recorder(a), Recorder(b)
        conn.hold(b)  # b's interpreter is "stuck": nothing it writes gets out
        mesh.advance(2.5)
        self.assertEqual(ra.events, [])  # silent for less than busy_timeout
        mesh.advance(1.0)
        self.assertEqual(ra.statuses(), [("n1", "busy")])
        self.assertIn("silent", ra.events[0].reason)
        self.assertEqual(a.links[b.node_id].status, "busy")
        self.assertEqual(rb.events, [])  # b still hears a's heartbeats
        # A busy link stays a link: it is still in the table and the routes.
        self.assertIn(b.node_id, a.links)
        conn.release(b)
        mesh.settle()
        self.assertEqual(ra.statuses(), [("n1", "busy"), ("n1", "up")])
        self.assertEqual(a.links[b.node_id].status, "up")
        mesh.advance(10)
        self.assertEqual(len(ra.events), 2)  # no flapping once traffic flows

    def test_closed_with_reason_on_cut(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        ra, rb = Recorder(a), Recorder(b)
        conn = mesh.cut(a, b)
        self.assertTrue(conn.closed)
        for rec, peer in ((ra, "n1"), (rb, "n0")):
            self.assertEqual(rec.statuses(), [(peer, "closed")])
            self.assertIn("link cut", rec.events[0].reason)
        self.assertEqual(a.links, {})
        self.assertEqual(b.links, {})
        self.assertNotIn(b.node_id, a.routing.reachable())

    def test_second_link_to_the_same_peer_is_refused(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        first = mesh.link(a, b)
        rb = Recorder(b)
        second = mesh.link(b, a, settle=False)  # b dials a although they are linked already
        accepted = second.server.handshake_done  # a's end; consumed here (see the report)
        mesh.settle()
        self.assertTrue(second.closed)
        self.assertIsNotNone(second.handshake_failure)
        self.assertIn("already linked", second.handshake_failure.getErrorMessage())
        self.assertTrue(second.handshake_failure.value.fatal)  # a dialler stops retrying
        self.check_handshake_failed(accepted, fatal=True)
        self.assertFalse(first.closed)
        self.assertEqual(a.links[b.node_id].status, "up")
        self.assertEqual(b.links[a.node_id].status, "up")
        # The refused link never went up, and its close did not take the good link along.
        self.assertEqual([e.status for e in rb.events], ["closed"])

    def test_clean_close_by_one_context(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        rb = Recorder(b)
        a.close()
        mesh.settle()
        self.assertEqual(rb.statuses(), [("n0", "closed")])
        self.assertIn("peer closed", rb.events[0].reason)
        self.assertEqual(b.links, {})

    def test_dead_timeout_closes_a_silent_link(self) -> None:
        config = ContextConfig(heartbeat=1.0, busy_timeout=2.0, dead_timeout=4.0)
        mesh = self.make_mesh(2, config=config)
        a, b = mesh
        conn = mesh.link(a, b)
        ra, rb = Recorder(a), Recorder(b)
        conn.hold(b)
        mesh.advance(3.5)
        self.assertEqual(ra.statuses(), [("n1", "busy")])
        mesh.advance(1.0)
        self.assertEqual(ra.statuses(), [("n1", "busy"), ("n1", "closed")])
        self.assertIn("dead_timeout", ra.events[-1].reason)
        self.assertTrue(conn.closed)
        self.assertEqual(a.links, {})
        # b is told why before the link goes.
        self.assertEqual(rb.statuses(), [("n0", "closed")])
        self.assertIn("dead_timeout", rb.events[0].reason)

    def test_half_open_link_is_closed_by_dead_timeout(self) -> None:
        config = ContextConfig(heartbeat=1.0, busy_timeout=2.0, dead_timeout=4.0)
        mesh = self.make_mesh(2, config=config)
        a, b = mesh
        conn = mesh.link(a, b)
        ra, rb = Recorder(a), Recorder(b)
        conn.vanish(b)  # b's host forgot the connection; a is not told
        self.assertEqual(rb.statuses(), [("n0", "closed")])
        self.assertEqual(b.links, {})
        self.assertEqual(a.links[b.node_id].status, "up")
        mesh.advance(4.5)
        self.assertEqual(ra.statuses(), [("n1", "busy"), ("n1", "closed")])
        self.assertIn("dead_timeout", ra.events[-1].reason)
        self.assertTrue(conn.closed)
        self.assertEqual(a.links, {})

    def test_partition_closed_by_one_side_reaches_the_other_when_it_heals(self) -> None:
        mesh = self.make_mesh(0)
        a = mesh.add("a", ContextConfig(heartbeat=1.0, busy_timeout=2.0, dead_timeout=4.0))
        b = mesh.add("b")  # FAST: busy after 3 s, never closes on silence
        conn = mesh.link(a, b)
        ra, rb = Recorder(a), Recorder(b)
        conn.hold(a)
        conn.hold(b)  # a partition: nothing gets through either way
        mesh.advance(4.5)
        self.assertEqual(ra.statuses(), [("b", "busy"), ("b", "closed")])
        self.assertEqual(a.links, {})
        self.assertEqual(rb.statuses(), [("a", "busy")])  # b cannot know yet
        self.assertFalse(conn.closed)
        conn.release(a)
        conn.release(b)  # the partition heals: b reads a's last words
        mesh.settle()
        self.assertTrue(conn.closed)
        # (b hears from a again, so it may show "up" for a moment before the close.)
        self.assertEqual(rb.statuses()[0], ("a", "busy"))
        self.assertEqual(rb.statuses()[-1], ("a", "closed"))
        self.assertIn("dead_timeout", rb.events[-1].reason)
        self.assertEqual(b.links, {})
        mesh.link(b, a)  # and the two can link again
        self.assertEqual(a.links[b.node_id].status, "up")
        self.assertEqual(b.links[a.node_id].status, "up")

    def test_busy_link_is_replaced_by_a_new_link_from_the_same_node(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        old = mesh.link(a, b)
        old_link = old.link_of(a)
        ra = Recorder(a)
        sub = SubChannel(a, "news")
        mesh.settle()
        old.vanish(b)  # b lost the connection and will dial again; a's side is half-open
        mesh.advance(3.5)  # past busy_timeout
        self.assertEqual(old_link.status, "busy")
        new = mesh.link(b, a)
        self.assertIsNone(new.handshake_failure)
        self.assertFalse(new.closed)
        self.assertIs(a.links[b.node_id], new.link_of(a))
        self.assertEqual(a.links[b.node_id].status, "up")
        self.assertTrue(old.closed)
        self.assertIn("replaced", old_link.reason)
        closed = [e for e in ra.events if e.status == "closed"]
        self.assertEqual([e.link for e in closed], [old_link])
        # And the new link carries traffic both ways: b learns of a's subscriber again.
        pub = PubChannel(b, "news")
        mesh.settle()
        pub.send("via the new link")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), "via the new link")

    def test_no_dead_timeout_by_default(self) -> None:
        mesh = self.make_mesh(2)  # dead_timeout=0: busy for ever, never closed
        a, b = mesh
        conn = mesh.link(a, b)
        ra = Recorder(a)
        conn.hold(b)
        mesh.advance(60)
        self.assertEqual(ra.statuses(), [("n1", "busy")])
        self.assertFalse(conn.closed)

    def test_heartbeat_pings_when_idle(self) -> None:
        mesh = self.make_mesh(2, trace=True)
        a, b = mesh
        conn = mesh.link(a, b)
        mesh.advance(0.9)
        self.assertEqual(conn.count(FrameKind.PING), 0)
        mesh.advance(4.1)  # t = 5: heartbeats at 1, 2, 3, 4, 5 on each side
        self.assertEqual(conn.count(FrameKind.PING, a), 5)
        self.assertEqual(conn.count(FrameKind.PING, b), 5)
        self.assertEqual(conn.count(FrameKind.PONG, a), 5)
        self.assertEqual(conn.count(FrameKind.PONG, b), 5)
        self.assertEqual(a.links[b.node_id].status, "up")

    def test_handshake_timeout_closes_a_peer_that_never_says_hello(self) -> None:
        mesh = self.make_mesh(1)
        a = mesh[0]
        ra = Recorder(a)
        peer = ForeignPeer()
        conn = mesh.attach(a, peer)
        link = conn.link_of(a)
        # Nobody in the core consumes an incoming link's handshake_done (see the report);
        # the test does, and checks it fails the right way.
        handshake = link.handshake_done
        mesh.advance(4.9)
        self.assertEqual(link.status, "handshaking")
        self.assertIsNone(peer.lost)
        mesh.advance(0.1)
        self.assertTrue(conn.closed)
        self.assertEqual(link.status, "closed")
        self.assertEqual([e.status for e in ra.events], ["closed"])  # never "up"
        self.assertIn("handshake not finished", ra.events[0].reason)
        self.check_handshake_failed(handshake, fatal=False)  # a dialler would retry this one
        self.assertIsNotNone(peer.lost)
        kinds = [f.kind for f in peer.frames()]
        self.assertEqual(kinds, [FrameKind.HELLO, FrameKind.ERROR])
        self.assertEqual(a.links, {})

    def _second_hello(self, together: bool) -> None:
        mesh = self.make_mesh(1)
        a = mesh[0]
        ra = Recorder(a)
        if together:
            peer = ForeignPeer()
            conn = mesh.attach(a, peer)
            first = rawwire.hello(0xF00D, "foreign", {"nonce": "00" * 16})
            peer.transport.write(rawwire.preamble() + first + first)
        else:
            peer = AuthenticatingPeer(0xF00D)
            conn = mesh.attach(a, peer)
            mesh.settle()
            self.assertEqual(ra.statuses(), [("foreign", "up")])
            peer.transport.write(hello(0xF00D))
        mesh.settle()
        self.assertTrue(conn.closed)
        expected = [("foreign", "up")] * (not together) + [("foreign", "closed")]
        self.assertEqual(ra.statuses(), expected)
        self.assertIn("second HELLO", ra.events[-1].reason)
        errors = [f for f in peer.frames() if f.kind == FrameKind.ERROR]
        self.assertEqual(len(errors), 1)
        self.assertIn(b"second HELLO", errors[0].payload)
        self.assertNotIn(0xF00D, a.links)

    def test_second_hello_is_a_protocol_error(self) -> None:
        self._second_hello(together=False)

    def test_second_hello_in_the_same_write_is_a_protocol_error(self) -> None:
        self._second_hello(together=True)

    def test_garbage_instead_of_preamble_closes_only_that_link(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        peer = ForeignPeer()
        conn = mesh.attach(a, peer)
        handshake = conn.link_of(a).handshake_done
        peer.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        mesh.settle()
        self.assertTrue(conn.closed)
        self.check_handshake_failed(handshake, fatal=True)
        errors = [f for f in wire.FrameDecoder().feed(peer.received) if f.kind == FrameKind.ERROR]
        self.assertEqual(len(errors), 1)
        self.assertIn(b"not a yotonnet node", errors[0].payload)
        self.assertEqual(a.links[b.node_id].status, "up")  # the good link is untouched


class ReannounceTests(MeshTestCase):
    mesh_config = FAST

    def test_subscription_survives_cut_and_relink(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, "news")
        pub = PubChannel(a, "news")
        mesh.settle()
        self.assertEqual(pub.subscribers, 1)
        mesh.cut(a, b)
        mesh.settle()
        self.assertEqual(pub.subscribers, 0)
        pub.send("lost while cut")  # nobody reachable: not queued anywhere
        mesh.link(a, b)
        self.assertEqual(pub.subscribers, 1)
        pub.send("after relink")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), "after relink")
        self.assertEqual(sub.pending, 0)

    def test_subscription_behind_a_healed_detour(self) -> None:
        # a - b - c and a - c: cutting a-c leaves the path through b.
        mesh = self.make_mesh(3)
        a, b, c = mesh
        mesh.link(a, b)
        mesh.link(b, c)
        mesh.link(a, c)
        sub = SubChannel(c, "news")
        pub = PubChannel(a, "news")
        mesh.settle()
        mesh.cut(a, c)
        mesh.settle()
        self.assertEqual(pub.subscribers, 1)
        for i in range(5):
            pub.send(str(i))
        mesh.settle()
        self.assertEqual([self.successResultOf(sub.recv()) for _ in range(5)], list("01234"))
        self.assertEqual(sub.discarded, 0)


class MemoryMeshTests(MeshTestCase):
    mesh_config = FAST

    def _scenario(self, seed: int) -> tuple[list[int], list[tuple[str, int, int]], list[object]]:
        mesh = self.make_mesh(6, seed=seed, shuffle=True, trace=True)
        mesh.link_random(extra=3)
        states = [StateChannel(ctx, "s") for ctx in mesh]
        mesh.settle()
        for i, st in enumerate(states):
            st.send(i)
        mesh.advance(3)
        trace = [
            (who, frame.kind, frame.source)
            for conn in mesh.connections
            for who, frame in conn.frames or []
        ]
        return [ctx.node_id for ctx in mesh], trace, [st.recv() for st in states]

    def test_same_seed_same_run(self) -> None:
        ids1, trace1, values1 = self._scenario(seed=7)
        ids2, trace2, values2 = self._scenario(seed=7)
        self.assertEqual(ids1, ids2)
        self.assertEqual(trace1, trace2)
        self.assertEqual(values1, values2)
        self.assertEqual(len(set(values1)), 1)  # and the state converged
        ids3, _, _ = self._scenario(seed=8)
        self.assertNotEqual(ids1, ids3)

    def test_advance_fires_every_heartbeat(self) -> None:
        # Clock.advance(3) alone would run a 1-second timer once.
        mesh = self.make_mesh(2, trace=True)
        conn = mesh.link(0, 1)
        mesh.advance(3)
        self.assertEqual(conn.count(FrameKind.PING, mesh[0]), 3)

    def test_hold_keeps_bytes_until_release_in_order(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        conn = mesh.link(a, b)
        sub = SubChannel(b, "q")
        pub = PubChannel(a, "q")
        mesh.settle()
        conn.hold(a)
        self.assertTrue(conn.held(a))
        for i in range(5):
            pub.send(str(i))
        mesh.settle()
        self.assertEqual(sub.pending, 0)
        conn.release(a)
        mesh.settle()
        self.assertEqual([self.successResultOf(sub.recv()) for _ in range(5)], list("01234"))

    def test_run_until(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        conn = mesh.link(a, b)
        conn.hold(b)
        link = a.links[b.node_id]
        self.assertTrue(mesh.run_until(lambda: link.status == "busy", timeout=10))
        self.assertAlmostEqual(mesh.clock.seconds(), 3.0, places=6)  # busy_timeout
        self.assertFalse(mesh.run_until(lambda: link.status == "up", timeout=5))
        self.assertAlmostEqual(mesh.clock.seconds(), 8.0, places=6)

    def test_close_leaves_no_timers_and_no_links(self) -> None:
        mesh = self.make_mesh(4)
        mesh.link_chain()
        mesh.advance(2)
        mesh.close()
        self.assertEqual(mesh.connections, [])
        self.assertEqual(mesh.clock.getDelayedCalls(), [])
        for ctx in mesh:
            self.assertTrue(ctx.closed)
            self.assertEqual(ctx.links, {})

    def test_hundred_contexts_one_publisher_every_subscriber_once(self) -> None:
        mesh = self.make_mesh(100, seed=3)
        mesh.link_random(extra=40)
        subs = [SubChannel(ctx, "wide") for ctx in mesh.contexts[1:]]
        pub = PubChannel(mesh[0], "wide")
        waiting = pub.wait_for_subscribers(99)
        mesh.settle()
        self.successResultOf(waiting)
        for i in range(10):
            pub.send(str(i))
        mesh.settle()
        expected = [str(i) for i in range(10)]
        for sub in subs:
            self.assertEqual([self.successResultOf(sub.recv()) for _ in range(sub.pending)],
                             expected)
            self.assertEqual(sub.discarded, 0)
        # Cut links that leave the mesh connected; everyone still gets everything once.
        cut = 0
        for conn in list(mesh.connections):
            if cut == 10:
                break
            if _connected_without(mesh, conn):
                conn.cut()
                cut += 1
        self.assertEqual(cut, 10)
        mesh.advance(2)
        pub.send("after cuts")
        mesh.settle()
        for sub in subs:
            self.assertEqual(self.successResultOf(sub.recv()), "after cuts")
            self.assertEqual(sub.pending, 0)


def _connected_without(mesh: MemoryMesh, skip: object) -> bool:
    adjacent: dict[int, set[int]] = {id(ctx): set() for ctx in mesh}
    for conn in mesh.connections:
        if conn is skip:
            continue
        x, y = id(conn.client_context), id(conn.server_context)
        adjacent[x].add(y)
        adjacent[y].add(x)
    start = id(mesh[0])
    seen = {start}
    todo = [start]
    while todo:
        for nxt in adjacent[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return len(seen) == len(mesh)


class LinkCostTests(MeshTestCase):
    """A square n0-n1-n3 / n0-n2-n3 where n0-n1 costs 10: traffic takes n2 while it can."""

    def setUp(self) -> None:
        self.mesh = mesh = self.make_mesh(4, seed=3)
        self.costly = mesh.link("n0", "n1", cost=10)
        mesh.link("n1", "n3")
        self.cheap = mesh.link("n0", "n2")
        mesh.link("n2", "n3")
        self.sub = SubChannel(mesh["n3"], "costs")
        self.pub = PubChannel(mesh["n0"], "costs")
        mesh.settle()

    def send(self, count: int) -> None:
        for i in range(count):
            self.pub.send(str(i))
        self.mesh.settle()

    def forwarded(self, name: str) -> int:
        return self.mesh[name].counters["forwarded"]

    def test_the_cheaper_path_carries_the_traffic(self) -> None:
        # Both paths are two hops; by hop count n1 would win the tie (lower id).
        self.send(20)
        self.assertEqual(self.forwarded("n1"), 0)
        self.assertEqual(self.forwarded("n2"), 20)
        # Both ends agree on the cost, whichever end set it: the direct link (10) is
        # dearer than the three hops round the square, seen from either end.
        n0, n1 = self.mesh["n0"], self.mesh["n1"]
        self.assertEqual(n0.routing.distance(n1.node_id), 3)
        self.assertEqual(n1.routing.distance(n0.node_id), 3)

    def test_the_costly_link_carries_it_when_nothing_cheaper_connects(self) -> None:
        self.mesh.cut(self.mesh["n0"], self.mesh["n2"])
        self.mesh.settle()
        self.send(20)
        self.assertEqual(self.forwarded("n1"), 20)
        self.assertEqual(self.sub.pending, 20)
        self.assertEqual(self.sub.missed, 0)

    def test_bad_costs_are_refused(self) -> None:
        ctx = self.mesh["n0"]
        for bad in (0, 256, 1.5, "3", True):
            e = self.assertRaises(ValueError, ctx.connect, "tcp:127.0.0.1:1", cost=bad)
            self.assertIn("link cost must be an integer from 1 to 255", str(e))
            self.assertRaises(ValueError, ctx.listen, "tcp:0", cost=bad)
