"""Limits on real loopback sockets: each breach is a clear error and a log line, never a crash.

Max links, handshake timeout, max frame size, channels claimed per client
link, requests pending per client link. After every breach the node still
serves the other links.
"""

from __future__ import annotations

from certs_fixture import LogCapture, bundle, path, wait_until
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

import yotonnet as y
from yotonnet.mesh.link import CLOSED, HandshakeError
from yotonnet.security.settings import Security

WAIT = 15.0


class Raw(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.lost.callback(None)


class Limits(TestCase):
    async def hub(self, config: y.ContextConfig | None = None, **kw) -> str:
        bundle()
        self.node = y.Context("hub", reactor, config=config, security=Security(
            tokens=path("tokens.txt"), **kw
        ))
        self.addCleanup(self.node.close)
        port = await self.node.listen("tcp:0:interface=127.0.0.1")
        self.port = port.getHost().port
        return f"tcp:127.0.0.1:{self.port}"

    async def client(self, ep: str, user: str = "alice") -> y.Context:
        ctx = y.Context(user, reactor, security=Security(token_file=path(f"{user}.token")))
        self.addCleanup(ctx.close)
        await ctx.connect(ep).addTimeout(WAIT, reactor)
        return ctx

    async def still_serves(self, ep: str) -> None:
        """A fresh client can still call the node: it is up and unharmed."""
        y.RepChannel(self.node, "echo").register("echo", lambda x: x)
        ctx = await self.client(ep, "bob")
        req = y.ReqChannel(ctx, "echo", timeout=WAIT)
        await req.wait_for_responders().addTimeout(WAIT, reactor)
        self.assertEqual(await req.echo("still here"), "still here")

    def test_max_links(self):
        async def go():
            ep = await self.hub(max_links=1)
            log = LogCapture(self)
            await self.client(ep)
            ctx = y.Context("carol", reactor, security=Security(token_file=path("bob.token")))
            self.addCleanup(ctx.close)
            error = await self.assertFailure(
                ctx.connect(ep).addTimeout(WAIT, reactor), HandshakeError
            )
            self.assertIn("max_links", str(error))
            self.assertTrue(log.matching("limit max_links"))
            self.assertEqual(len(self.node.links), 1)

        return defer.ensureDeferred(go())

    def test_handshake_timeout(self):
        async def go():
            ep = await self.hub(y.ContextConfig(handshake_timeout=0.3))
            log = LogCapture(self)
            raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Raw())
            await raw.lost.addTimeout(WAIT, reactor)  # silence: the node hangs up by itself
            self.assertIn(b"handshake not finished within 0.3 s", raw.data)
            self.assertTrue(log.matching("handshake not finished"))
            await self.still_serves(ep)

        return defer.ensureDeferred(go())

    def test_max_frame(self):
        async def go():
            ep = await self.hub(y.ContextConfig(max_frame=16384))
            log = LogCapture(self)
            bob = await self.client(ep, "bob")
            sub = y.SubChannel(bob, "news.big")
            alice = await self.client(ep)
            pub = y.PubChannel(alice, "news.big")
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            pub.send("x" * 20000)
            link = alice.dialers[0].link
            await wait_until(lambda: link.status == CLOSED, WAIT, "the oversized link to close")
            self.assertIn("exceeds the maximum frame size of 16384", link.reason)
            self.assertTrue(log.matching("exceeds the maximum frame size"))
            self.assertEqual(sub.pending, 0)
            await self.still_serves(ep)

        return defer.ensureDeferred(go())

    def test_max_channels_per_link(self):
        async def go():
            ep = await self.hub(max_channels_per_link=3)
            log = LogCapture(self)
            alice = await self.client(ep)
            y.PubChannel(alice, "news.a")   # two flows: lossless and latest
            ok = y.SubChannel(alice, "news.b")
            over = y.SubChannel(alice, "news.c")
            await wait_until(lambda: getattr(over, "denied", None) is not None, WAIT, "denial")
            self.assertIn("max_channels_per_link", str(over.denied))
            self.assertIn("'news.c'", str(over.denied))
            self.assertIsNone(getattr(ok, "denied", None))
            self.assertTrue(log.matching("limit max_channels_per_link"))
            await self.still_serves(ep)

        return defer.ensureDeferred(go())

    def test_max_pending_per_link(self):
        async def go():
            ep = await self.hub(max_pending_per_link=2)
            log = LogCapture(self)
            held: list[defer.Deferred] = []

            def slow():
                held.append(defer.Deferred())
                return held[-1]

            y.RepChannel(self.node, "slow").register("slow", slow)
            alice = await self.client(ep)
            req = y.ReqChannel(alice, "slow", timeout=WAIT)
            await req.wait_for_responders().addTimeout(WAIT, reactor)
            first, second = req.slow(), req.slow()
            error = await self.assertFailure(req.slow(), y.RemoteError)
            self.assertEqual(error.remote_type, "LimitExceeded")
            self.assertIn("max_pending_per_link", str(error))
            self.assertTrue(log.matching("limit max_pending_per_link"))
            for d in held:
                d.callback("done")
            self.assertEqual(await first, "done")
            self.assertEqual(await second, "done")
            third = req.slow()
            await wait_until(lambda: len(held) == 3, WAIT, "the third call")
            held[-1].callback("again")
            self.assertEqual(await third, "again")

        return defer.ensureDeferred(go())
