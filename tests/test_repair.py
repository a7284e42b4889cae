"""Ring 2: lossless across failures (issue 16), in memory, on one fake clock.

A publisher streams while the path to a lossless subscriber breaks: a link cut
with a reset, a link gone silent, a forwarding node killed, the subscriber's own
link dropped and dialled again to another node. Each test checks what the
subscriber got (every message once, in order) and that the repair did the work
(messages really were lost on the way and sent again). Where repair is
impossible (an outage longer than ``repair_wait``), the subscriber is told the
exact range, and ``missed`` says the same.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from unittest import mock

from yotonnet import Context, ContextConfig, FlowControlError, PubChannel, SubChannel
from yotonnet.core.repair import GONE, RESTARTED, RETENTION
from yotonnet.core.wire import FrameDecoder, FrameKind, tail_frame
from yotonnet.testing import MemoryMesh, MeshTestCase

CONFIG = ContextConfig(
    heartbeat=1.0, busy_timeout=2.0, reconnect_initial=1.0, reconnect_max=2.0,
)


class Stream:
    """A publisher on ``src`` and a lossless subscriber on ``dst``, counting 0, 1, 2..."""

    def __init__(self, src, dst, name: str = "stream") -> None:
        self.pub = PubChannel(src, name)
        self.sub = SubChannel(dst, name)
        self.got: list[int] = []
        self.sub.subscribe(lambda m: self.got.append(int(m)))
        self.sent = 0

    def send(self, n: int, mesh: MemoryMesh, pump: bool = True) -> None:
        """Publish ``n`` more, moving frames one step after each (faults strike mid-flight)."""
        for _ in range(n):
            self.pub.send(str(self.sent))
            self.sent += 1
            if pump:
                mesh.pump()


def decode_all(data: bytes) -> list:
    return FrameDecoder(expect_preamble=False).feed(data)


def repaired(mesh: MemoryMesh) -> int:
    """Messages sent again by any node so far."""
    return sum(ctx.counters["repair_resent"] for ctx in mesh)


class Repair(MeshTestCase):
    mesh_config = CONFIG

    def ring(self, n: int = 4) -> MemoryMesh:
        mesh = self.make_mesh(n)
        ctxs = list(mesh)
        for a, b in zip(ctxs, ctxs[1:] + ctxs[:1]):
            mesh.link(a, b, settle=False)
        mesh.settle()
        return mesh

    def assert_everything(self, stream: Stream) -> None:
        self.assertEqual(stream.got, list(range(stream.sent)))
        self.assertEqual((stream.sub.missed, stream.sub.gaps), (0, []))

    def test_a_link_cut_with_a_reset_loses_nothing_on_the_detour(self) -> None:
        mesh = self.ring(4)
        s = Stream(mesh[0], mesh[2])
        mesh.settle()
        s.send(30, mesh)
        # The path n0-n1-n2 is cut while frames are on it: they go with the link.
        via = "n1" if mesh[0].routing.next_hop(mesh[2].node_id) == mesh[1].node_id else "n3"
        mesh.cut(mesh["n0"], mesh[via])
        s.send(30, mesh)
        mesh.settle()
        self.assertGreater(repaired(mesh), 0, "nothing was lost on the way: no test")
        self.assert_everything(s)

    def test_a_silent_link_loses_nothing_once_traffic_takes_the_detour(self) -> None:
        mesh = self.ring(4)
        s = Stream(mesh[0], mesh[2])
        mesh.settle()
        s.send(20, mesh)
        first = mesh[0].link_to(mesh[0].routing.next_hop(mesh[2].node_id))
        conn = mesh.connection(mesh[0], first.peer_name)
        conn.hold(conn.client)  # silent both ways, socket open: what a frozen host does
        conn.hold(conn.server)
        for _ in range(10):
            s.send(5, mesh)
            mesh.advance(0.5)
        # The held bytes are never delivered: the link dies.
        conn.cut()
        mesh.settle()
        mesh.advance(2.0)
        self.assertGreater(repaired(mesh), 0)
        self.assert_everything(s)

    def test_first_messages_overtaken_by_later_ones_are_delivered_first(self) -> None:
        # The first path freezes while it carries the first messages; the next ones take
        # the detour and arrive before them. The subscriber does not take the first to
        # arrive for the start of its stream: it asks the publisher where it starts, and
        # for the first ten, which come again by the detour.
        mesh = self.ring(4)
        s = Stream(mesh[0], mesh[2])
        mesh.settle()
        first = mesh[0].link_to(mesh[0].routing.next_hop(mesh[2].node_id))
        conn = mesh.connection(mesh[0], first.peer_name)
        conn.hold(conn.client)
        conn.hold(conn.server)
        s.send(10, mesh)  # into the frozen link
        mesh.advance(2.0)  # past reroute_after: the detour
        s.send(10, mesh)  # round it, arriving first
        mesh.settle()
        self.assertEqual(s.got, list(range(20)))
        self.assertGreaterEqual(repaired(mesh), 10)
        conn.release(conn.client)  # the first copies come too late: dropped
        conn.release(conn.server)
        mesh.settle()
        mesh.advance(3.0)
        mesh.settle()
        self.assert_everything(s)

    def test_a_forwarding_node_killed_mid_stream_loses_nothing(self) -> None:
        mesh = self.ring(4)  # a square: two paths from n0 to n2
        s = Stream(mesh[0], mesh[2])
        mesh.settle()
        s.send(25, mesh)
        forwarder = next(c for c in mesh if c.node_id == mesh[0].routing.next_hop(
            mesh[2].node_id))
        mesh.isolate(forwarder)  # every link of it gone at once, frames in flight too
        s.send(25, mesh)
        mesh.settle()
        self.assertGreater(repaired(mesh), 0)
        self.assert_everything(s)

    def test_routes_changing_under_load_lose_and_repeat_nothing(self) -> None:
        mesh = self.ring(6)
        s = Stream(mesh[0], mesh[3])
        mesh.settle()
        for k in range(6):
            s.send(15, mesh)
            a, b = mesh[k % 6], mesh[(k + 1) % 6]
            conn = mesh.cut(a, b)
            s.send(15, mesh)
            mesh.link(conn.client_context, conn.server_context, settle=False)
        mesh.settle()
        mesh.advance(2.0)
        self.assert_everything(s)

    def leaf_stream(self, *hubs: str) -> tuple[MemoryMesh, Any, Stream]:
        """Three listening nodes, a leaf dialling ``hubs``, n0 streaming 20 to it."""
        mesh = self.ring(3)
        for node in list(mesh):
            self.successResultOf(node.listen(f"memory:{node.name}"))
        leaf = mesh.add("leaf")
        leaf.connect([f"memory:{hub}" for hub in hubs])
        mesh.settle()
        s = Stream(mesh[0], leaf)
        mesh.settle()
        s.send(20, mesh)
        return mesh, leaf, s

    def test_a_leaf_subscriber_that_dials_another_node_loses_nothing(self) -> None:
        mesh, leaf, s = self.leaf_stream("n1", "n2")
        hub = leaf.hub.peer_id
        # Its hub dies: the leaf dials the next node of its list, the stream goes on.
        next(c for c in mesh if c.node_id == hub).close()
        s.send(20, mesh)
        mesh.advance(CONFIG.reconnect_max + 1.0)
        self.assertNotEqual(leaf.hub.peer_id, hub)
        s.send(10, mesh)
        mesh.settle()
        self.assertGreater(repaired(mesh), 0)
        self.assert_everything(s)

    def test_a_leaf_subscriber_cut_from_its_hub_dials_it_again_and_loses_nothing(self) -> None:
        mesh, leaf, s = self.leaf_stream("n1")
        mesh.cut(leaf, mesh["n1"])
        s.send(20, mesh)
        mesh.advance(CONFIG.reconnect_max + 1.0)
        s.send(5, mesh)
        mesh.settle()
        self.assertGreater(repaired(mesh), 0)
        self.assert_everything(s)


class Limits(MeshTestCase):
    """What cannot be repaired is told, exactly; and the publisher waits only so long."""

    mesh_config = ContextConfig(heartbeat=1.0, busy_timeout=2.0, retention_bytes=4096,
                                repair_wait=5.0)

    def cut_off(self) -> tuple[MemoryMesh, Stream]:
        mesh = self.make_mesh(2)
        mesh.link(mesh[0], mesh[1])
        s = Stream(mesh[0], mesh[1])
        mesh.settle()
        s.send(10, mesh)
        mesh.settle()
        mesh.cut(mesh[0], mesh[1])  # no detour
        mesh.settle()
        return mesh, s

    def test_a_publisher_pauses_for_a_cut_off_subscriber_then_stops_waiting(self) -> None:
        mesh, s = self.cut_off()
        # Half the retention unacknowledged (4096 / 2 bytes of 45-byte frames), beside the
        # quarter kept of what it had: paused.
        while s.pub.writable:
            s.send(1, mesh)
        self.assertLess(s.sent, 3 * 4096 // 4 // 45 + 2)
        self.assertTrue(mesh[0].node.pubsub.repair.holds_back(s.pub.channel_id))
        mesh.advance(self.mesh_config.repair_wait + 1.5)
        self.assertTrue(s.pub.writable, "a subscriber silent past repair_wait is not waited for")
        self.assertEqual(mesh[0].counters["repair_followers_lost"], 1)

    def test_an_outage_past_repair_wait_is_reported_with_its_exact_range(self) -> None:
        mesh, s = self.cut_off()
        pubsub = mesh[0].node.pubsub
        channel = s.pub.channel_id
        lost_from = pubsub.last_seq(channel) + 1
        s.send(5, mesh)
        lost_to = pubsub.last_seq(channel)
        # repair_wait until the publisher stops waiting, as long again until it drops what
        # it kept for nobody
        mesh.advance(2 * self.mesh_config.repair_wait + 2.0)
        mesh.link(mesh[0], mesh[1])
        mesh.settle()
        s.send(5, mesh)
        mesh.settle()
        self.assertEqual(s.got, list(range(10)) + list(range(15, 20)))
        (gap,) = s.sub.gaps
        self.assertEqual((gap.source, gap.first, gap.last, gap.count, gap.reason),
                         (mesh[0].node_id, lost_from, lost_to, 5, RETENTION))
        self.assertEqual(s.sub.missed, 5)
        self.assertEqual(mesh[1].counters["repair_lost"], 5)

    def test_messages_pushed_out_of_the_retention_are_reported(self) -> None:
        mesh, s = self.cut_off()
        seen = []
        s.sub.watch_gaps(seen.append)
        # Past repair_wait nobody is waited for: the retention keeps its newest 4096 bytes.
        mesh.advance(self.mesh_config.repair_wait + 1.5)
        self.assertTrue(s.pub.writable)
        s.send(200, mesh)
        mesh.link(mesh[0], mesh[1])
        mesh.settle()
        s.send(1, mesh)
        mesh.settle()
        (gap,) = seen
        self.assertEqual(gap.reason, RETENTION)
        got = set(s.got)
        self.assertEqual(len(got), len(s.got))
        self.assertEqual(got | set(range(10, 10 + gap.count)), set(range(s.sent)))
        self.assertFalse(got & set(range(10, 10 + gap.count)))
        self.assertGreater(gap.count, 100)  # most were pushed out...
        self.assertLess(gap.count, 200)     # ...but the newest ones came

    def test_a_publisher_silent_past_repair_wait_is_given_up_with_what_it_said_it_sent(
        self,
    ) -> None:
        mesh, s = self.cut_off()
        pubsub = mesh[0].node.pubsub
        channel = s.pub.channel_id
        s.send(3, mesh)  # into the void
        # What the publisher's tail would have told the subscriber before it fell silent
        # (its TAIL frame, as the link would hand it over):
        last = pubsub.last_seq(channel)
        tail = decode_all(tail_frame(4, 0, channel, mesh[0].node_id, mesh[1].node_id, last,
                                     last - 2, pubsub.repair.seq_base))
        mesh[1].node.handlers[FrameKind.TAIL](None, tail[0])
        mesh.advance(self.mesh_config.repair_wait + 2.0)
        self.assertEqual(s.got, list(range(10)))
        (gap,) = s.sub.gaps
        self.assertEqual((gap.first, gap.last, gap.count, gap.reason), (last - 2, last, 3, GONE))
        self.assertEqual(s.sub.missed, 3)

    def test_a_publisher_ignoring_ready_gets_flow_control_error_before_a_loss(self) -> None:
        mesh = self.make_mesh(2)
        mesh.link(mesh[0], mesh[1])
        s = Stream(mesh[0], mesh[1])
        mesh.settle()
        s.send(10, mesh)
        mesh.advance(1.0)  # a heartbeat: the subscriber acknowledges the 10
        repair = mesh[0].node.pubsub.repair
        retained = repair.retained[s.pub.channel_id]
        conn = mesh.connection(mesh[0], mesh[1])
        conn.hold(mesh[0])  # frozen both ways, sockets open: live, but no ACK comes
        conn.hold(mesh[1])
        paused = None
        with self.assertRaises(FlowControlError) as refused:
            for _ in range(1000):  # ready() ignored
                if paused is None and not s.pub.writable:
                    paused = s.sent
                s.send(1, mesh)
        self.assertIn("retention", str(refused.exception))  # says why, and what to do
        self.assertIn("wait for ready()", str(refused.exception))
        self.assertIsNotNone(paused, "not paused before send() refused")
        self.assertLess(paused, s.sent)
        self.assertEqual(mesh[0].node.pubsub.last_seq(s.pub.channel_id) - repair.seq_base,
                         s.sent, "the refused message was published")
        # Refused once one more would push out what the subscriber has not acknowledged:
        # nothing of it was, and the retention holds its bound plus one message at most.
        self.assertTrue(repair.full(s.pub.channel_id))
        self.assertEqual(mesh[0].counters["retention_evicted"], 0)
        limit = self.mesh_config.retention_bytes
        self.assertLessEqual(retained.size, limit + 48)
        # Everything in flight is lost with the link; a new one comes up within
        # repair_wait, and the subscriber gets it all again from the retention.
        conn.cut()
        mesh.link(mesh[0], mesh[1])
        mesh.advance(2.0)
        self.assertGreaterEqual(repaired(mesh), s.sent - 10)
        self.assertEqual(s.got, list(range(s.sent)))
        self.assertTrue(s.pub.writable)
        s.send(10, mesh)  # and the publisher goes on
        mesh.settle()
        self.assertEqual(s.got, list(range(s.sent)))
        self.assertEqual((s.sub.missed, s.sub.gaps), (0, []))

    def test_a_follower_whose_first_ack_comes_past_the_pause_point_pauses_at_once(
        self,
    ) -> None:
        mesh, s = self.cut_off()
        repair = mesh[0].node.pubsub.repair
        channel = s.pub.channel_id
        retained = repair.retained[channel]
        # Past repair_wait the cut-off subscriber is not waited for: the retention grows
        # past the pause point (not to its bound), the channel writable throughout.
        mesh.advance(self.mesh_config.repair_wait + 1.5)
        self.assertFalse(retained.followers)
        while retained.size < repair.pause_at + 200:
            s.send(1, mesh)
            self.assertTrue(s.pub.writable)
        self.assertIs(repair.retained[channel], retained)
        self.assertEqual(mesh[0].counters["retention_evicted"], 0)
        # Back: its next ACK makes it a follower again, owed all that.
        mesh.link(mesh[0], mesh[1])
        self.assertTrue(mesh.run_until(lambda: retained.followers, timeout=5.0, step=0.05))
        self.assertTrue(repair.holds_back(channel))
        s.send(1, mesh)  # the next message pauses it (not the end of the current block)
        self.assertFalse(s.pub.writable)
        self.assertFalse(mesh[0].node.pubsub.ready(channel))
        # The publisher tells it the tail, it asks, gets it all again, and the channel
        # resumes.
        self.assertTrue(mesh.run_until(lambda: s.pub.writable, timeout=5.0))
        s.send(1, mesh)
        mesh.settle()
        self.assertEqual(s.got, list(range(s.sent)))
        self.assertEqual((s.sub.missed, s.sub.gaps), (0, []))


class Restart(MeshTestCase):
    """A publisher's process restarted with the same node id: a new context whose numbering
    starts above the old one's (PubSub's base is the wall clock in ns)."""

    mesh_config = CONFIG

    def setUp(self) -> None:
        # n0 publishes to n2, directly; n1 is the other way round the triangle.
        self.mesh = mesh = self.make_mesh(3)
        for a, b in ((mesh[0], mesh[1]), (mesh[1], mesh[2]), (mesh[2], mesh[0])):
            mesh.link(a, b, settle=False)
        mesh.settle()
        self.s = s = Stream(mesh[0], mesh[2])
        mesh.settle()
        s.send(10, mesh)
        mesh.settle()
        self.assertEqual(s.got, list(range(10)))
        self.assertEqual(mesh[0].routing.next_hop(mesh[2].node_id), mesh[2].node_id)

    def restart(self, old: Context) -> tuple[Context, PubChannel]:
        """``old``'s process dies (every link at once) and a new one starts with its name
        and node id, a second later by the wall clock, links to the others and publishes
        on the stream again."""
        mesh = self.mesh
        base = old.node.pubsub.repair.seq_base
        mesh.isolate(old)
        old.close()
        with mock.patch.object(time, "time_ns", return_value=base + 10**9):
            new = Context(old.name, mesh.clock, config=dataclasses.replace(mesh.config),
                          node_id=old.node_id)
        mesh.contexts[mesh.contexts.index(old)] = new
        for other in mesh:
            if other is not new:
                mesh.link(new, other, settle=False)
        mesh.settle()
        self.assertGreater(new.node.pubsub.repair.seq_base, base + self.s.sent)
        return new, PubChannel(new, self.s.pub.name)

    def assert_nothing_left(self, ctx: Context) -> None:
        stats = ctx.node.pubsub.repair.stats()
        self.assertEqual((stats["reorder_bytes"], stats["repairs_pending"]), (0, 0))

    def test_a_restart_gives_up_what_the_subscriber_knew_was_sent_and_goes_on(self) -> None:
        mesh, s = self.mesh, self.s
        n0, n1, n2 = mesh
        base = n0.node.pubsub.repair.seq_base
        mesh.connection(n0, n1).hold(n1)  # n2's repair requests (ACKs) never reach n0
        direct = mesh.connection(n0, n2)
        direct.hold(n0)
        s.send(5, mesh)  # 10..14: lost with the direct link
        direct.cut()
        s.send(5, mesh)  # 15..19: round by n1, held past the gap while n2 asks in vain
        mesh.settle()
        self.assertEqual(s.got, list(range(10)))
        self.assertEqual(n2.node.pubsub.repair.stats()["repairs_pending"], 1)
        # n0 dies before it hears the request, and comes back within repair_wait.
        new, pub = self.restart(n0)
        for i in range(100, 105):
            pub.send(str(i))
            mesh.pump()
        mesh.settle()
        # What n2 knew was sent and never got (10..14, by the old numbering) is given up
        # as the restart's; then the held 15..19, then the new run, in order.
        (gap,) = s.sub.gaps
        self.assertEqual(gap, (n0.node_id, base + 11, base + 15, 5, RESTARTED))
        self.assertEqual(s.sub.missed, 5)
        self.assertEqual(s.got, list(range(10)) + list(range(15, 20)) + list(range(100, 105)))
        self.assertEqual(s.sub.discarded, 0)
        self.assert_nothing_left(n2)

    def test_a_restart_with_nothing_outstanding_is_no_gap(self) -> None:
        mesh, s = self.mesh, self.s
        new, pub = self.restart(mesh[0])
        for i in range(100, 110):
            pub.send(str(i))
            mesh.pump()
        mesh.settle()
        mesh.advance(2.0)
        self.assertEqual(s.got, list(range(10)) + list(range(100, 110)))
        self.assertEqual((s.sub.missed, s.sub.gaps), (0, []))
        self.assert_nothing_left(mesh[2])


class ClosingPublisher(MeshTestCase):
    """A publisher that closes right after sending: nobody is left to say where a new
    subscriber's stream starts, and its messages must not wait ``repair_wait`` for that."""

    mesh_config = CONFIG

    def sent_then_closed(self, how: str) -> tuple[MemoryMesh, list[str]]:
        """``how``: "leaf" of the node before the subscriber's, a "node" linked to that
        one, or a node linked "direct" to the subscriber's."""
        mesh = self.make_mesh(2)
        hub, b = mesh
        mesh.link(hub, b)
        src = mesh.add("pub")
        if how == "leaf":
            self.successResultOf(hub.listen(f"memory:{hub.name}"))
            src.connect(f"memory:{hub.name}")
        else:
            mesh.link(src, hub if how == "node" else b)
        got: list[str] = []
        SubChannel(b, "news").subscribe(got.append)
        mesh.settle()
        pub = PubChannel(src, "news")
        waiting = pub.wait_for_subscribers()
        mesh.settle()
        self.successResultOf(waiting)
        for i in range(5):
            pub.send(str(i))
        src.close()
        mesh.settle()
        mesh.advance(CONFIG.heartbeat * 2)  # a heartbeat or two: far less than repair_wait
        mesh.settle()
        return mesh, got

    def test_a_leaf_publisher(self) -> None:
        # (its messages are written before its link goes, and its hub answers for it)
        _, got = self.sent_then_closed("leaf")
        self.assertEqual(got, ["0", "1", "2", "3", "4"])

    def test_a_node_publisher_behind_another(self) -> None:
        _, got = self.sent_then_closed("node")
        self.assertEqual(got, ["0", "1", "2", "3", "4"])

    def test_a_node_publisher_next_to_the_subscriber(self) -> None:
        _, got = self.sent_then_closed("direct")
        self.assertEqual(got, ["0", "1", "2", "3", "4"])
