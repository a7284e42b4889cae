"""Ring 2: a trusted peer flooding a node with routing records, on an in-memory mesh.

Three contexts: ``t`` (the target: it holds a state value, the case that made
every record cost a look at the whole table), ``p`` (a trusted neighbour whose
link the test writes hand-made CONTROL frames into, as a hostile mesh node
would) and ``q`` (a legitimate neighbour whose traffic must keep flowing).

Costs are asserted as counts, never times: how often ``t`` acted on routing
changes (``counters["routing_changes"]``) and ran the shortest-path
computation (``routing.route_computations``).
"""

from __future__ import annotations

import dataclasses

from certs_fixture import LogCapture
from twisted.internet import defer

from yotonnet import ConnectionLost, ContextConfig, RepChannel, ReqChannel, StateChannel, SubChannel
from yotonnet.core import wire
from yotonnet.core.messages import encode_object
from yotonnet.core.names import channel_id
from yotonnet.core.wire import FrameKind
from yotonnet.testing import MeshTestCase

FAKE_BASE = 1 << 62
#: limits high enough for any flood here to be taken whole (the batching is what is tested)
ROOMY = ContextConfig(max_nodes=100_000)


def control(message: list) -> bytes:
    return wire.encode_frame(FrameKind.CONTROL, encode_object(message))


class Echo(RepChannel):
    def echo(self, value):
        return value


class FloodTestCase(MeshTestCase):
    def make(self, config: ContextConfig = ROOMY):
        """The mesh; ``config`` is t's (p and q keep the defaults)."""
        mesh = self.make_mesh(seed=3)
        t, p, q = mesh.add("t", config), mesh.add("p"), mesh.add("q")
        self.conn = mesh.link(p, t)
        mesh.link(q, t)
        self.state = StateChannel(t, "settings")
        self.state.send({"volume": 3})
        Echo(t, "echo")
        mesh.settle()
        return mesh, t, p, q

    def fake_records(self, p, n: int, reachable: bool = True) -> list[bytes]:
        """``p``'s record listing ``n`` fake nodes, and theirs (each listing ``p`` back and
        subscribing to a channel of its own): all reachable from ``t`` through ``p``."""
        fakes = [FAKE_BASE + i for i in range(n)]
        frames = []
        if reachable:
            mine = p.routing.local
            links = [[peer, 1] for peer in mine.links] + [[f, 1] for f in fakes]
            frames.append(control(["node", [p.node_id, p.name, mine.version + 1000, links, []]]))
        for i, fake in enumerate(fakes):
            interests = [[channel_id("pubsub", f"fake{i}"), "sub", "OBJECT", 1]]
            links = [[p.node_id, 1]] if reachable else [[fake + 1, 1]]
            frames.append(control(["node", [fake, f"fake-{i}", 1, links, interests]]))
        return frames

    def send_from_p(self, p, data: bytes, chunk: int | None = None) -> int:
        """Write ``data`` on p's link to t as one read (or reads of ``chunk`` bytes, as
        TCP would deliver them); returns the number of reads."""
        transport = self.conn.link_of(p).transport
        reads = 0
        step = chunk or len(data)
        for i in range(0, len(data), step):
            transport.write(data[i:i + step])
            self.conn.pump()
            reads += 1
        return reads

    def check_legit_traffic(self, mesh, t, q) -> None:
        """q still calls through t, and sees t's state."""
        req = ReqChannel(q, "echo")
        mesh.settle()
        d = req.call("echo", "still here")
        mesh.settle()
        self.assertEqual(self.successResultOf(d), "still here")
        self.state.send({"volume": 4})
        mirror = StateChannel(q, "settings")
        mesh.settle()
        self.assertEqual(mirror.recv(), {"volume": 4})


class BatchedRecomputationTests(FloodTestCase):
    def test_thousands_of_records_in_one_read_cost_one_routing_change(self):
        mesh, t, p, q = self.make()
        frames = self.fake_records(p, 4000)
        changes = t.counters["routing_changes"]
        computations = t.routing.route_computations
        self.assertEqual(self.send_from_p(p, b"".join(frames)), 1)
        self.assertEqual(len(t.routing.nodes), 3 + 4000)
        self.assertEqual(t.routing.next_hop(FAKE_BASE + 3999), p.node_id)
        # Acted on once for the whole read, not once per record (that was 4001 here).
        self.assertEqual(t.counters["routing_changes"] - changes, 1)
        self.assertLessEqual(t.routing.route_computations - computations, 2)
        self.assertEqual(t.counters["records_refused"], 0)
        mesh.settle()
        # The records went on to q once each, and q's own costs are bounded the same way.
        self.assertEqual(len(q.routing.nodes), 3 + 4000)
        self.check_legit_traffic(mesh, t, q)

    def test_records_in_many_reads_cost_one_routing_change_per_read(self):
        mesh, t, p, q = self.make()
        data = b"".join(self.fake_records(p, 2000))
        changes = t.counters["routing_changes"]
        computations = t.routing.route_computations
        reads = self.send_from_p(p, data, chunk=65536)
        self.assertGreater(reads, 1)
        self.assertEqual(len(t.routing.nodes), 3 + 2000)
        self.assertLessEqual(t.counters["routing_changes"] - changes, reads)
        self.assertLessEqual(t.routing.route_computations - computations, 2 * reads)
        self.check_legit_traffic(mesh, t, q)

    def test_records_one_per_read_with_a_call_pending_cost_no_route_computation(self):
        # A node waiting for a reply checks, after routing changes, that the replier is
        # still reachable; records that only add nodes cannot cut it off, so each read
        # of a record (an attacker pacing them) must not cost a route computation.
        mesh, t, p, q = self.make()

        class Slow(RepChannel):
            def __init__(self, ctx, name):
                super().__init__(ctx, name)
                self.waiting = []

            def wait(self):
                self.waiting.append(defer.Deferred())
                return self.waiting[-1]

        slow = Slow(q, "slow")
        mesh.settle()
        call = ReqChannel(t, "slow", timeout=None).call("wait")
        mesh.settle()
        self.assertEqual(len(slow.waiting), 1)
        changes = t.counters["routing_changes"]
        computations = t.routing.route_computations
        frames = self.fake_records(p, 1000)
        for frame in frames:
            self.send_from_p(p, frame)
        self.assertEqual(t.counters["routing_changes"] - changes, len(frames))
        self.assertLessEqual(t.routing.route_computations - computations, 1)
        slow.waiting[0].callback("answered")
        mesh.settle()
        self.assertEqual(self.successResultOf(call), "answered")
        # Losing the replier still fails the call at once.
        call = ReqChannel(t, "slow", timeout=None).call("wait")
        mesh.settle()
        mesh.cut(q, t)
        self.failureResultOf(call, ConnectionLost)

    def test_records_one_per_read_with_a_state_channel_shared_cost_no_route_computation(self):
        # t holds a state value that q holds too: after each routing change t looks for
        # holders it has not told yet; records that only add nodes bring none, and
        # finding that out must not cost a route computation per read (it cost 4 ms
        # each at 4,000 nodes, 17 s for a paced flood).
        mesh, t, p, q = self.make()
        mirror = StateChannel(q, "settings")
        mesh.settle()
        self.assertEqual(mirror.recv(), {"volume": 3})
        computations = t.routing.route_computations
        frames = self.fake_records(p, 1000)
        for frame in frames:
            self.send_from_p(p, frame)
        self.assertLessEqual(t.routing.route_computations - computations, 1)
        # A new holder still hears the value, and one cut off and back again too.
        late = mesh.add("late")
        mesh.link(late, t)
        late_mirror = StateChannel(late, "settings")
        mesh.settle()
        self.assertEqual(late_mirror.recv(), {"volume": 3})

    def test_records_no_one_can_reach_cost_no_route_computation(self):
        mesh, t, p, q = self.make()
        computations = t.routing.route_computations
        self.send_from_p(p, b"".join(self.fake_records(p, 1000, reachable=False)))
        self.assertEqual(len(t.routing.nodes), 3 + 1000)
        self.assertLessEqual(t.routing.route_computations - computations, 1)
        self.assertEqual(t.routing.reachable(), {t.node_id, p.node_id, q.node_id})

    def test_a_record_acted_on_at_the_end_of_its_read_wakes_waiters(self):
        mesh, t, p, q = self.make()
        fake_channel = channel_id("pubsub", "fake7")
        d = t.wait_for_interest(fake_channel, "sub")
        self.assertNoResult(d)
        self.send_from_p(p, b"".join(self.fake_records(p, 10)))
        self.assertIsNone(self.successResultOf(d))

    def test_a_round_trip_after_a_record_sees_its_effects(self):
        # Clients use a call as a barrier: a holder's record then a call, in one read at
        # the node; the state value the record makes the node push must arrive before
        # the reply (as when each record was acted on at once), not at the dispatch's end.
        mesh = self.make_mesh(names=["n", "c"], seed=4)
        n, c = mesh
        StateChannel(n, "settings").send({"volume": 5})
        Echo(n, "echo")
        mesh.link(c, n)
        holder = StateChannel(c, "settings")
        seen = []
        d = ReqChannel(c, "echo").call("echo", 1)
        d.addCallback(lambda _: seen.append(holder.recv()))
        mesh.settle()
        self.assertEqual(seen, [{"volume": 5}])

    def test_local_changes_still_take_effect_at_once(self):
        # A subscriber opened while t dispatches a frame (in a state callback, for a value
        # q set) is acted on at once, not at the end of the dispatch as records are.
        mesh, t, p, q = self.make()
        seen = []

        def changed(value):
            before = t.counters["routing_changes"]
            seen.append(SubChannel(t, "late"))
            seen.append(t.counters["routing_changes"] - before)

        self.state.subscribe(changed)
        StateChannel(q, "settings").send({"volume": 9})
        mesh.settle()
        self.assertEqual(seen[1:], [1])
        self.assertEqual(q.interest_count(channel_id("pubsub", "late"), "sub"), 1)


class RecordLimitTests(FloodTestCase):
    def test_records_past_the_per_peer_limit_are_refused_counted_and_logged_once(self):
        log = LogCapture(self)
        mesh, t, p, q = self.make(dataclasses.replace(ROOMY, max_nodes_per_peer=50))
        self.assertEqual(t.routing.introduced_by(p.node_id), 1)  # p itself
        self.send_from_p(p, b"".join(self.fake_records(p, 200)))
        mesh.settle()
        self.assertEqual(t.counters["records_refused"], 151)
        self.assertEqual(t.routing.refused, {"max_nodes_per_peer": 151})
        self.assertEqual(t.routing.introduced_by(p.node_id), 50)
        lines = log.matching("t: routing record from p@memory:p refused by limit "
                             "max_nodes_per_peer")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("raise [context] max_nodes_per_peer", lines[0])
        # Refused records go no further; the link stays up and legit traffic flows.
        self.assertEqual(set(q.routing.nodes), set(t.routing.nodes))
        self.assertIn(p.node_id, t.links)
        self.check_legit_traffic(mesh, t, q)

    def test_the_table_limit_with_the_default_per_peer_limit(self):
        log = LogCapture(self)
        mesh, t, p, q = self.make(ContextConfig(max_nodes=500))
        self.send_from_p(p, b"".join(self.fake_records(p, 1000)))
        self.assertEqual(len(t.routing.nodes), 500)
        self.assertEqual(t.routing.refused, {"max_nodes": 503})
        lines = log.matching("t: routing record from p@memory:p refused by limit max_nodes:")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("holds 500 nodes", lines[0])
        self.check_legit_traffic(mesh, t, q)

    def test_defaults_take_a_flood_of_four_thousand_at_the_hub_and_its_leaves(self):
        # No per-neighbour limit by default: q, a leaf of t, learns every node from t, and
        # must not refuse legitimate records because t holds fake ones.
        mesh, t, p, q = self.make(ContextConfig())
        changes = t.counters["routing_changes"]
        self.send_from_p(p, b"".join(self.fake_records(p, 4000)))
        self.assertEqual(t.counters["routing_changes"] - changes, 1)
        mesh.settle()
        late = mesh.add("late")
        mesh.link(late, t)
        self.assertEqual(len(q.routing.nodes), 4 + 4000)
        self.assertIn(late.node_id, q.routing.nodes)
        self.assertEqual((t.counters["records_refused"], q.counters["records_refused"]), (0, 0))
        self.check_legit_traffic(mesh, t, q)

    def test_a_record_over_the_per_record_limits_is_refused(self):
        mesh, t, p, q = self.make(dataclasses.replace(ROOMY, max_record_interests=3))
        interests = [[ch, "sub", "OBJECT", 1] for ch in range(1, 5)]
        self.send_from_p(p, control(["node", [FAKE_BASE, "big", 1, [[p.node_id, 1]], interests]]))
        self.assertNotIn(FAKE_BASE, t.routing.nodes)
        self.assertEqual(t.routing.refused, {"max_record_interests": 1})
        self.assertIn(p.node_id, t.links)

    def test_a_bad_name_in_a_record_is_a_protocol_error(self):
        mesh, t, p, q = self.make()
        self.send_from_p(p, control(["node", [FAKE_BASE, "evil\x1b[2J", 1, [], []]]))
        mesh.settle()
        self.assertNotIn(p.node_id, t.links)
        self.assertIn("node name", self.conn.link_of(p).reason)
        self.assertIn(q.node_id, t.links)
        self.check_legit_traffic(mesh, t, q)

    def test_own_record_over_the_limits_is_reported(self):
        log = LogCapture(self)
        mesh = self.make_mesh(names=["big"], config=ContextConfig(max_record_interests=2))
        (big,) = mesh
        subs = [SubChannel(big, f"c{i}") for i in range(4)]
        mesh.settle()
        lines = log.matching("channel interests, more than max_record_interests (2)")
        self.assertEqual(len(lines), 1, lines)  # told once, not per channel opened
        self.assertIn("raise [context] max_record_interests on every node", lines[0])
        # Told again only once it was fixed and broken again.
        for sub in subs[1:]:
            sub.close()
        subs += [SubChannel(big, f"d{i}") for i in range(3)]
        self.assertEqual(len(log.matching("more than max_record_interests (2)")), 2)


class ControlFrameLimitTests(FloodTestCase):
    def flood_frame(self, size: int) -> bytes:
        n = (size - wire.HEADER_SIZE - 5) // 5
        payload = b"l" + n.to_bytes(4, "little") + b"l\0\0\0\0" * n
        return wire.encode_frame(FrameKind.CONTROL, payload)

    def check_closed_with_the_limit(self, mesh, t, p, q, frame: bytes) -> None:
        mesh.settle()
        link = self.conn.link_of(p)
        self.assertEqual(link.status, "closed")
        self.assertIn(f"CONTROL frame of {len(frame)} bytes", link.reason)
        self.assertIn("max_control_frame", link.reason)
        self.assertIn(q.node_id, t.links)
        self.check_legit_traffic(mesh, t, q)

    def test_oversized_frame_in_one_read_closes_only_that_link(self):
        mesh, t, p, q = self.make()
        frame = self.flood_frame(2 * 1024 * 1024)
        self.send_from_p(p, frame)
        self.check_closed_with_the_limit(mesh, t, p, q, frame)

    def test_oversized_frame_refused_from_its_first_read(self):
        mesh, t, p, q = self.make()
        frame = self.flood_frame(16 * 1024 * 1024 - 64)
        before = t.counters["control_in"]
        self.send_from_p(p, frame[:65536])
        mesh.settle()
        self.assertEqual(t.counters["control_in"], before)  # never decoded
        self.check_closed_with_the_limit(mesh, t, p, q, frame)

    def test_the_limit_is_configurable(self):
        mesh, t, p, q = self.make(dataclasses.replace(ROOMY, max_control_frame=4 * 1024 * 1024))
        frame = self.flood_frame(4 * 1024 * 1024)
        self.send_from_p(p, frame)
        mesh.settle()
        # Not refused for its size; its 840,000 empty lists are over the value bound.
        reason = self.conn.link_of(p).reason
        self.assertIn("holds more than 524288 values", reason)
        self.assertIn(q.node_id, t.links)
