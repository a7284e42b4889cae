"""Ring 3: a YotonLink against hand-written Yoton peers on real loopback sockets.

The raw peers speak Yoton's handshake and packages byte by byte (see
yotonnet.yoton.wire), so these tests can send what Yoton itself rarely does: a
close package, garbage, a wrong magic, an oversized package, an OBJECT
payload that does not decode, silence. Each bad peer loses its own link with
a reason that says what was wrong; a good Yoton link beside it goes on.
"""

from __future__ import annotations

import os
import re
from typing import Any

from asuser import run_as_stranger, stranger_unavailable
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase
from waits import until

import yotonnet
from yotonnet import Context, ContextConfig
from yotonnet.yoton import YotonBridge, YotonChannel, objects, slot_hash
from yotonnet.yoton import wire as ywire

WAIT = 10.0
HELLO = slot_hash("hello.txt.pub-sub")
THINGS = slot_hash("things.obj.pub-sub")




class RawYoton(Protocol):
    """A Yoton peer written by hand: records what it receives."""

    def __init__(self, yoton_id: int) -> None:
        self.yoton_id = yoton_id
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.seq = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def handshake(self) -> None:
        self.transport.write(ywire.handshake_line(self.yoton_id, os.getpid()))

    def package(self, slot: int, data: bytes) -> None:
        self.seq += 1
        self.transport.write(ywire.encode_package(slot, data, self.yoton_id, self.seq))

    def packages(self) -> list[ywire.Package]:
        line, _, rest = self.received.partition(b"\r\n")
        decoder = ywire.PackageDecoder()
        found = decoder.feed(rest)
        self.heartbeats = decoder.heartbeats
        self.closed_by_peer = decoder.closed
        return found


class LinkTests(TestCase):
    timeout = 60

    async def setup_bridge(self, **config: Any) -> tuple[Context, YotonBridge, int, list]:
        cfg = ContextConfig(heartbeat=0.1, busy_timeout=config.pop("busy_timeout", 5.0))
        ctx = Context("hub", reactor, config=cfg)
        self.addCleanup(ctx.close)
        events: list = []
        ctx.watch_links(events.append)
        bridge = YotonBridge(
            ctx, [YotonChannel("hello"), YotonChannel("things", message_type="OBJECT")]
        )
        port = (await bridge.listen("tcp:0:interface=127.0.0.1")).getHost().port
        return ctx, bridge, port, events

    async def raw(self, port: int, yoton_id: int, handshake: bool = True) -> RawYoton:
        proto = RawYoton(yoton_id)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
        self.addCleanup(lambda: proto.transport.loseConnection())
        if handshake:
            proto.handshake()
        return proto

    async def test_handshake_line_heartbeats_and_our_close(self) -> None:
        ctx, _, port, events = await self.setup_bridge()
        peer = await self.raw(port, 0x1234_5678_9ABC_DEF0)
        await until(lambda: 0x1234_5678_9ABC_DEF0 in ctx.links, "the link")
        line = peer.received.split(b"\r\n")[0].decode()
        self.assertRegex(line, rf"^YOTON!{ctx.node_id:016x}\.{os.getpid()}$")
        # Yoton's receive timeout is 0.5 s: idle, the link keeps it fed with heartbeats.
        await task.deferLater(reactor, 1.2, lambda: None)
        packages = peer.packages()
        self.assertGreaterEqual(peer.heartbeats, 3)
        # The context asked Yoton to re-send its state channels, as a Yoton client does.
        self.assertIn((ywire.SLOT_CONTEXT, b"NEW_CONNECTION"), [(p.slot, p.data) for p in packages])
        ctx.links[0x1234_5678_9ABC_DEF0].close("done")
        await peer.lost
        peer.packages()
        self.assertTrue(peer.closed_by_peer)  # Yoton's close package came first

    async def test_their_close_package(self) -> None:
        ctx, _, port, events = await self.setup_bridge()
        peer = await self.raw(port, 77)
        await until(lambda: 77 in ctx.links, "the link")
        peer.transport.write(ywire.CLOSE)
        await peer.lost
        await until(lambda: any(e.status == "closed" for e in events), "the closed event")
        closed = [e for e in events if e.status == "closed"]
        self.assertEqual([(e.peer_id, e.reason) for e in closed],
                         [(77, "Yoton peer closed the connection")])
        await until(lambda: 77 not in ctx.routing.reachable(), "the virtual node to go")

    async def test_bad_peers_lose_only_their_own_link(self) -> None:
        ctx, _, port, events = await self.setup_bridge()
        sub = yotonnet.SubChannel(ctx, "hello")
        good = await self.raw(port, 1000)
        await until(lambda: 1000 in ctx.links, "the good link")

        cases = [
            (b"GET / HTTP/1.0\r\n\r\n", False, "not a Yoton context"),
            (b"YOTONNET\x01\x00\x00\x00", False, "is a yotonnet node"),
            (b"YOTON!nothex.12\r\n", False, "expected a Yoton handshake"),
            (b"\x00" * 56, True, "lost track of the Yoton stream"),
            (ywire.HEADER.pack(ywire.MAGIC, HELLO, 5, 1, 0, 0, 2**40), True, "exceeds the limit"),
        ]
        def closed() -> list[str]:
            return [e.reason for e in events if e.status == "closed"]

        for i, (data, after_handshake, words) in enumerate(cases):
            before = len(closed())
            bad = await self.raw(port, 2000 + i, handshake=after_handshake)
            if after_handshake:
                await until(lambda i=i: 2000 + i in ctx.links, "the bad link up")
            bad.transport.write(data)
            await bad.lost
            if not after_handshake:
                self.assertTrue(bad.received.startswith(b"ERROR: "), bad.received)
            await until(lambda before=before: len(closed()) > before, "a closed event")
            self.assertIn(words, closed()[-1])

        # The good link carried on throughout.
        self.assertEqual(ctx.links[1000].status, "up")
        good.package(HELLO, b"still here")
        self.assertEqual(await sub.recv(), "still here")

    async def test_untranslatable_payload_costs_one_message(self) -> None:
        ctx, _, port, _ = await self.setup_bridge()
        things = yotonnet.SubChannel(ctx, "things", yotonnet.OBJECT)
        peer = await self.raw(port, 55)
        await until(lambda: 55 in ctx.links, "the link")
        peer.package(THINGS, b"l\xff\xff\xff\xff\xff\xff\xff\xff\xff")  # a count it cannot hold
        peer.package(THINGS, b"\x99")  # no such type byte
        peer.package(THINGS, objects.encode({"fine": [1, 2]}))
        self.assertEqual(await things.recv(), {"fine": [1, 2]})
        self.assertEqual(ctx.links[55].counters["untranslatable"], 2)
        self.assertEqual(ctx.links[55].status, "up")

    async def test_silence_is_busy_and_a_heartbeat_ends_it(self) -> None:
        ctx, _, port, events = await self.setup_bridge(busy_timeout=0.5)
        peer = await self.raw(port, 66)
        await until(lambda: 66 in ctx.links, "the link")
        await until(lambda: ctx.links[66].status == "busy", "busy")
        peer.transport.write(ywire.HEARTBEAT)
        await until(lambda: ctx.links[66].status == "up", "up again")
        self.assertEqual([e.status for e in events if e.peer_id == 66][:3], ["up", "busy", "up"])

    async def test_dialling_something_else_fails_and_stops(self) -> None:
        other = Context("plain", reactor)
        self.addCleanup(other.close)
        port = (await other.listen("tcp:0:interface=127.0.0.1")).getHost().port
        ctx = Context("dialler", reactor)
        self.addCleanup(ctx.close)
        bridge = YotonBridge(ctx, [YotonChannel("hello")])
        with self.assertRaises(Exception) as caught:
            await bridge.connect(f"tcp:127.0.0.1:{port}")
        self.assertTrue(re.search("is a yotonnet node", str(caught.exception)))
        self.assertTrue(ctx.dialers[-1].stopped)

    async def test_yoton_peers_of_another_os_user_are_refused(self) -> None:
        # A Yoton context cannot prove who it is; the bridge admits only those whose
        # socket belongs to this node's own OS user (another local user is a stranger).
        why = stranger_unavailable()
        if why:
            raise SkipTest(why)
        ctx, _, port, events = await self.setup_bridge()
        code, out, err = await run_as_stranger("attacker.py", "yoton", "127.0.0.1", str(port))
        self.assertEqual(code, 0, err)
        self.assertIn("refused: ERROR: authentication required", out)
        self.assertIn("runs as uid", out)
        self.assertEqual([e for e in events if e.status == "up"], [])
        # The legitimate user's own Yoton context, in the same test, is admitted.
        peer = await self.raw(port, 4242)
        await until(lambda: 4242 in ctx.links, "the owner's own Yoton link")
        self.assertFalse(peer.received.startswith(b"ERROR"))
