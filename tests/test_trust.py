"""Ring 2: what a node believes of its peers, deterministically (MemoryMesh, fake clock).

The attacks of tests/test_attacks.py, pinned down frame by frame:

* a REPLY with the right request id completes the call only when it comes
  from the node the request went to, on its channel; forgeries are counted;
* state versions: each channel has its own clock; a version out of range
  closes the link that sent it and disturbs nothing else; a client writes
  only as itself, and cannot jump a channel's clock to its end;
* credit: returning more than was sent closes the link; a peer's window is
  capped at ours; a paused transport makes data wait (not written, not
  lost), and a peer that reads nothing past ``max_link_buffer`` is cut;
* trust is per link: a client cannot bind identities or speak for other
  nodes, whatever its node relays.
"""

from __future__ import annotations

import struct

from certs_fixture import path
from twisted.internet import defer

from yotonnet import ContextConfig, PubChannel, RepChannel, ReqChannel, StateChannel, SubChannel
from yotonnet.core import wire
from yotonnet.core.messages import OBJECT, encode_object
from yotonnet.core.stateclock import MAX_STATE_CLOCK, STATE_CLOCK_JUMP
from yotonnet.core.wire import FrameKind
from yotonnet.security.settings import Security
from yotonnet.testing import MeshTestCase

FAST = ContextConfig(heartbeat=1.0, busy_timeout=5.0)


def state_frame(channel: int, source: int, clock: int, writer: int, value: object,
                dest: int = 0) -> bytes:
    body = struct.pack("<QQ", clock, writer) + encode_object(value)
    return wire.encode_frame(FrameKind.STATE, body, channel=channel, source=source, dest=dest,
                             hops=8, tag=OBJECT.tag)


class Base(MeshTestCase):
    mesh_config = FAST

    def hub_and_client(self, user: str = "eve"):
        """A hub that checks tokens and a client logged in as ``user`` (a gated link)."""
        mesh = self.make_mesh()
        hub = mesh.add("hub", security=Security(tokens=path("tokens.txt")))
        client = mesh.add(user, security=Security(token_file=path(f"{user}.token")))
        conn = mesh.link(client, hub)
        self.assertIsNotNone(conn.link_of(hub).gate, "a logged-in user's link is gated")
        return mesh, hub, client, conn


class Replies(Base):
    def test_only_the_replier_asked_completes_a_call(self) -> None:
        mesh = self.make_mesh(3)
        a, b, c = mesh
        ab = mesh.link(a, b)
        cb = mesh.link(c, b)
        answer: defer.Deferred = defer.Deferred()
        rep = RepChannel(b, "svc")
        rep.register("slow", lambda: answer)
        req = ReqChannel(a, "svc", timeout=30)
        mesh.settle()
        call = req.call("slow")
        mesh.settle()
        (pending,) = list(a.node.requests.calls)
        # c forges the reply: the right id and channel, its own (true) source.
        forged = wire.encode_frame(
            FrameKind.REPLY, encode_object("forged"), tag=wire.REPLY_OK,
            channel=req.channel_id, source=c.node_id, dest=a.node_id, seq=pending.req_id,
            hops=8)
        cb.link_of(c).send(forged)
        mesh.settle()
        self.assertNoResult(call)
        self.assertEqual(a.counters["replies_dropped"], 1)
        # Nor does the replier's own answer on another channel.
        wrong_channel = wire.encode_frame(
            FrameKind.REPLY, encode_object("wrong"), tag=wire.REPLY_OK, channel=12345,
            source=b.node_id, dest=a.node_id, seq=pending.req_id, hops=8)
        ab.link_of(b).send(wrong_channel)
        mesh.settle()
        self.assertNoResult(call)
        self.assertEqual(a.counters["replies_dropped"], 2)
        answer.callback("the real answer")
        mesh.settle()
        self.assertEqual(self.successResultOf(call), "the real answer")


class StateVersions(Base):
    def test_each_channel_has_its_own_clock(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        busy, quiet = StateChannel(a, "busy"), StateChannel(a, "quiet")
        StateChannel(b, "busy")
        mesh.settle()
        for i in range(5):
            busy.send(i)
        quiet.send("q")
        mesh.settle()
        self.assertEqual(a.state_clock(busy.channel_id), 5)
        self.assertEqual(a.state_clock(quiet.channel_id), 1)
        self.assertEqual(b.state_clock(busy.channel_id), 5)

    def test_an_out_of_range_version_closes_only_the_link_that_sent_it(self) -> None:
        mesh = self.make_mesh(3)
        a, b, c = mesh
        mesh.link(a, b)
        conn = mesh.link(c, b)
        settings = StateChannel(a, "settings")
        b_settings = StateChannel(b, "settings")
        mesh.settle()
        settings.send({"theme": "dark"})
        mesh.settle()
        top = 2**64 - 1
        conn.link_of(c).send(state_frame(settings.channel_id, c.node_id, top, top, "poison"))
        mesh.settle()
        self.assertTrue(conn.closed)
        self.assertIn("out of range", conn.link_of(b).reason)
        self.assertEqual(b_settings.recv(), {"theme": "dark"})
        settings.send({"theme": "light"})  # writes still work everywhere
        mesh.settle()
        self.assertEqual(b_settings.recv(), {"theme": "light"})
        self.assertLess(b.state_clock(settings.channel_id), MAX_STATE_CLOCK)

    def test_a_client_writes_only_as_itself_and_cannot_jump_the_clock(self) -> None:
        mesh, hub, eve, conn = self.hub_and_client()
        pad = StateChannel(eve, "scratch")
        held = StateChannel(hub, "scratch")
        mesh.settle()
        pad.send("mine")
        mesh.settle()
        self.assertEqual(held.recv(), "mine")
        link = conn.link_of(eve)
        # As another writer: dropped and counted, the link stays.
        link.send(state_frame(pad.channel_id, eve.node_id, 2, hub.node_id, "as the hub"))
        mesh.settle()
        self.assertEqual(held.recv(), "mine")
        self.assertEqual(hub.guard.counters["state_refused"], 1)
        self.assertFalse(conn.closed)
        # A clock far ahead of the channel's: the link is cut, saying why.
        ahead = STATE_CLOCK_JUMP + 10
        link.send(state_frame(pad.channel_id, eve.node_id, ahead, eve.node_id, "ahead"))
        mesh.settle()
        self.assertTrue(conn.closed)
        self.assertIn("a write advances a channel's clock by one", conn.link_of(hub).reason)
        self.assertEqual(held.recv(), "mine")


class Credit(Base):
    def test_credit_beyond_what_was_sent_closes_the_link(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        conn = mesh.link(a, b)
        pub = PubChannel(a, "news")
        SubChannel(b, "news")
        mesh.settle()
        pub.send("x" * 100)
        mesh.settle()
        sent = conn.link_of(a).flow.window - conn.link_of(a).flow.outboxes[pub.channel_id].credit
        self.assertGreater(sent, 0)
        grant = wire.HEADER.pack(wire.HEADER_TAIL, FrameKind.CREDIT, 1, 0, 0, pub.channel_id,
                                 b.node_id, a.node_id, sent + 1)
        conn.link_of(b).send(grant)
        mesh.settle()
        self.assertTrue(conn.closed)
        self.assertIn(f"only {sent} sent bytes", conn.link_of(a).reason)

    def test_a_peers_window_is_capped_at_ours(self) -> None:
        mesh = self.make_mesh()
        small = mesh.add("small", config=ContextConfig(flow_window=64 * 1024))
        large = mesh.add("large", config=ContextConfig(flow_window=1 << 30))
        conn = mesh.link(small, large)
        self.assertEqual(conn.link_of(small).flow.window, 64 * 1024)
        self.assertEqual(conn.link_of(large).flow.window, 64 * 1024)

    def test_a_paused_transport_holds_data_back_and_a_silent_reader_is_cut(self) -> None:
        mesh = self.make_mesh()
        a = mesh.add("a", config=ContextConfig(flow_window=4096, max_link_buffer=16384))
        b = mesh.add("b", config=ContextConfig(flow_window=1 << 20))
        conn = mesh.link(a, b)
        pub = PubChannel(a, "news")
        got: list[str] = []
        SubChannel(b, "news").subscribe(got.append)
        mesh.settle()
        link = conn.link_of(a)
        link.pauseProducing()  # what Twisted does when the transport holds 64 KiB
        for i in range(8):
            pub.send(f"{i} " + "x" * 998)
            mesh.settle()  # b reads and credits: only the transport's pause holds data
        # A window's worth more went to the paused transport; the rest waits, unwritten.
        self.assertEqual(got, [f"{i} " + "x" * 998 for i in range(len(got))])
        self.assertTrue(3 <= len(got) < 8, len(got))
        self.assertFalse(pub.writable)
        link.resumeProducing()
        mesh.settle()
        self.assertEqual(len(got), 8)
        self.assertTrue(pub.writable)
        # Paused again: what flow control cannot hold back (pings here) is counted.
        link.pauseProducing()
        for _ in range(200):
            link.send(wire.encode_frame(FrameKind.PING, b"p" * 100, seq=1))
            mesh.settle()
        self.assertTrue(conn.closed)
        self.assertIn("slow consumer", link.reason)
        self.assertEqual(a.counters["slow_consumers"], 1)


class Identities(Base):
    def test_a_client_cannot_bind_identities_or_speak_for_others(self) -> None:
        mesh, hub, eve, conn = self.hub_and_client()
        bystander = mesh.add("bystander")
        mesh.link(bystander, hub)
        link = conn.link_of(eve)
        link.send(wire.encode_frame(FrameKind.CONTROL, encode_object(
            ["ident", [[eve.node_id, "alice", 2**62, eve.node_id]]])))
        fake = [bystander.node_id, "bystander", 10**9, [[hub.node_id, 1]], []]
        link.send(wire.encode_frame(FrameKind.CONTROL, encode_object(["node", fake])))
        mesh.settle()
        self.assertEqual(hub.guard.identity_of(eve.node_id), "eve")
        self.assertEqual(bystander.guard.identity_of(eve.node_id), "eve")
        self.assertNotEqual(hub.routing.nodes[bystander.node_id].version, 10**9)
