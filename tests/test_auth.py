"""Authentication and identities on real loopback sockets.

Tokens and hashed passwords from files, TLS client certificates; a wrong or
missing credential gets a readable ERROR frame and a disconnect (and the
dialler stops); a node without authentication admits only local peers and
says so in its log. The first node stamps its clients' messages with their
user, subscribers and request handlers read it, and a client cannot forge it.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading

from certs_fixture import PASSWORDS, TOKENS, LogCapture, bundle, path, wait_until
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet import auth, wire
from yotonnet.identity import IdentifiedSubChannel, Received, caller, sender_of
from yotonnet.link import HandshakeError, Link
from yotonnet.messages import encode_object
from yotonnet.security import Security
from yotonnet.wire import FrameKind

WAIT = 15.0


def node_security(**kw) -> Security:
    bundle()
    return Security(tokens=path("tokens.txt"), passwords=path("passwords.txt"), **kw)


class Base(TestCase):
    def make(self, name: str, security: Security | None = None) -> y.Context:
        ctx = y.Context(name, reactor, security=security)
        self.addCleanup(ctx.close)
        return ctx

    async def node(self, name: str = "a", **kw) -> tuple[y.Context, str]:
        ctx = self.make(name, node_security(**kw))
        port = await ctx.listen("tcp:0:interface=127.0.0.1")
        return ctx, f"tcp:127.0.0.1:{port.getHost().port}"

    async def client(self, endpoint: str, name: str = "c", **kw) -> tuple[y.Context, Link]:
        ctx = self.make(name, Security(**kw))
        link = await ctx.connect(endpoint).addTimeout(WAIT, reactor)
        return ctx, link

    async def refused(self, endpoint: str, **kw) -> str:
        ctx = self.make("c", Security(**kw))
        try:
            await ctx.connect(endpoint).addTimeout(WAIT, reactor)
        except HandshakeError as e:
            self.assertTrue(ctx.dialers[0].stopped, "a refused dialler must stop")
            return str(e)
        self.fail("the link was admitted")


class Credentials(Base):
    def test_token(self):
        async def go():
            node, ep = await self.node()
            client, _ = await self.client(ep, token_file=path("alice.token"))
            link = node.links[client.node_id]
            self.assertEqual((link.identity.user, link.identity.method), ("alice", "token"))
            self.assertIsNotNone(link.gate, "an ordinary user's link is gated")

        return defer.ensureDeferred(go())

    def test_wrong_token_is_refused_with_a_clear_error(self):
        async def go():
            node, ep = await self.node()
            log = LogCapture(self)
            text = await self.refused(ep, token="not-a-token-of-anyone-at-all")
            self.assertIn("authentication failed: unknown token", text)
            self.assertEqual(node.links, {})
            self.assertTrue(log.matching("authentication failed"))
            self.assertEqual(node.guard.counters["auth_failed"], 1)

        return defer.ensureDeferred(go())

    def test_no_credentials_is_refused_naming_the_ways_in(self):
        async def go():
            _node, ep = await self.node()
            text = await self.refused(ep)
            self.assertIn("authentication required", text)
            self.assertIn("--token-file", text)

        return defer.ensureDeferred(go())

    def test_password(self):
        async def go():
            node, ep = await self.node()
            (user, password), = PASSWORDS.items()
            client, _ = await self.client(ep, user=user, password=password)
            self.assertEqual(node.links[client.node_id].identity.user, user)
            text = await self.refused(ep, user=user, password=password + "!")
            self.assertIn("wrong user or password", text)
            text = await self.refused(ep, user="nobody", password=password)
            self.assertIn("wrong user or password", text)

        return defer.ensureDeferred(go())

    def held_password_checks(self) -> tuple[list[str], threading.Event]:
        """Make every password check wait for the returned event; note its thread."""
        threads: list[str] = []
        release = threading.Event()
        real = auth.verify_password

        def slow(password: bytes, stored: str) -> bool:
            threads.append(threading.current_thread().name)
            release.wait(WAIT)
            return real(password, stored)

        self.patch(auth, "verify_password", slow)
        self.addCleanup(release.set)  # never leave a pool thread waiting
        return threads, release

    def test_a_password_check_does_not_stop_the_node(self):
        async def go():
            threads, release = self.held_password_checks()
            node, ep = await self.node()
            (user, password), = PASSWORDS.items()
            pending = self.client(ep, name="p", user=user, password=password)
            pending = defer.ensureDeferred(pending)
            await wait_until(lambda: threads, WAIT, "the password check to start")
            # While it runs, the node admits a token user and answers her calls.
            Echo(node, "svc")
            alice, _ = await self.client(ep, name="alice", token_file=path("alice.token"))
            req = y.ReqChannel(alice, "svc", timeout=WAIT)
            await req.wait_for_responders().addTimeout(WAIT, reactor)
            self.assertEqual(await req.echo("still serving"), "still serving")
            self.assertFalse(pending.called)
            release.set()
            client, _ = await pending
            self.assertEqual(node.links[client.node_id].identity.user, user)
            self.assertNotEqual(threads, [threading.current_thread().name])

        return defer.ensureDeferred(go())

    def test_a_peer_that_leaves_during_its_password_check_is_forgotten(self):
        async def go():
            threads, release = self.held_password_checks()
            node, ep = await self.node()
            raw = await raw_password_login(ep, "leaver")
            await wait_until(lambda: threads, WAIT, "the password check to start")
            raw.transport.loseConnection()
            await wait_until(lambda: node.guard.handshaking == 0, WAIT, "the close")
            release.set()
            await wait_until(lambda: node.guard.counters["auth_ok"] == 1, WAIT, "the check")
            self.assertEqual(node.links, {})

        return defer.ensureDeferred(go())

    def test_frames_sent_during_a_password_check_are_read_after_it(self):
        async def go():
            threads, release = self.held_password_checks()
            node, ep = await self.node()
            raw = await raw_password_login(ep, "eager")
            await wait_until(lambda: threads, WAIT, "the password check to start")
            raw.transport.write(wire.encode_frame(FrameKind.PING, seq=7))  # held meanwhile
            release.set()

            def pongs() -> list[int]:
                decoder = wire.FrameDecoder()
                return [f.seq for f in decoder.feed(raw.data) if f.kind == FrameKind.PONG]

            await wait_until(lambda: 7 in pongs(), WAIT, "the PONG")
            self.assertEqual(len(node.links), 1)
            raw.transport.loseConnection()

        return defer.ensureDeferred(go())

    def test_password_file_for_dialling(self):
        async def go():
            node, ep = await self.node()
            (user, password), = PASSWORDS.items()
            fd, secret = tempfile.mkstemp()
            os.write(fd, password.encode() + b"\n")
            os.close(fd)
            self.addCleanup(os.unlink, secret)
            client, _ = await self.client(ep, user=user, password_file=secret)
            self.assertEqual(node.links[client.node_id].identity.method, "password")

        return defer.ensureDeferred(go())

    def test_node_user_is_trusted_not_gated(self):
        async def go():
            node, ep = await self.node(nodes=["b"])
            client, _ = await self.client(ep, name="b", token_file=path("b.token"))
            link = node.links[client.node_id]
            self.assertTrue(link.identity.node)
            self.assertIsNone(link.gate)

        return defer.ensureDeferred(go())

    def test_tls_client_certificate_names_the_user(self):
        async def go():
            bundle()
            tls_files = dict(tls_ca=path("ca.pem"), tls_cert=path("a.pem"), tls_key=path("a.key"))
            node = self.make("a", Security(**tls_files))
            port = await node.listen("tls:0:interface=127.0.0.1")
            client, _ = await self.client(
                f"tls:127.0.0.1:{port.getHost().port}", tls_ca=path("ca.pem"),
                tls_cert=path("alice.pem"), tls_key=path("alice.key"),
            )
            link = node.links[client.node_id]
            self.assertEqual((link.identity.user, link.identity.method), ("alice", "certificate"))
            self.assertIsNotNone(link.gate)

        return defer.ensureDeferred(go())


class Unauthenticated(Base):
    def test_loopback_is_admitted_and_the_log_says_only_local_peers(self):
        async def go():
            log = LogCapture(self)
            node = self.make("open")
            port = await node.listen("tcp:0:interface=127.0.0.1")
            self.assertTrue(log.matching("only loopback and unix-socket peers are accepted"))
            client, link = await self.client(f"tcp:127.0.0.1:{port.getHost().port}")
            self.assertIsNone(node.links[client.node_id].gate)

        return defer.ensureDeferred(go())

    def test_unix_socket_is_admitted(self):
        async def go():
            node = self.make("open")
            sock = tempfile.mktemp(prefix="ytn-", suffix=".sock")
            await node.listen(f"unix:{sock}")
            client, _ = await self.client(f"unix:{sock}")
            self.assertIn(client.node_id, node.links)

        return defer.ensureDeferred(go())


class RemotePeerWithoutAuthentication(SynchronousTestCase):
    """A peer from a network address (StringTransport, no I/O) against an open node."""

    def handshake(self, security: Security | None) -> tuple[Link, StringTransport]:
        ctx = y.Context("open", Clock(), security=security)
        link = Link(ctx, outgoing=False)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        link.makeConnection(transport)
        hello = wire.encode_preamble() + wire.encode_hello(
            wire.Hello(random.getrandbits(63) + 1, "remote", (), 1 << 20, 1.0, {})
        )
        link.dataReceived(hello)
        return link, transport

    def test_network_peer_is_refused(self):
        link, transport = self.handshake(None)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"accepts links only from loopback and unix-socket peers", transport.value())
        self.assertIn(b"192.0.2.7", transport.value())

    def test_allow_anonymous_opens_it(self):
        link, transport = self.handshake(Security(allow_anonymous=True))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(link.status, "up")


class Checkers(SynchronousTestCase):
    def test_password_hashes_verify_and_differ_by_salt(self):
        a, b = auth.hash_password("secret-1"), auth.hash_password("secret-1")
        self.assertNotEqual(a, b)
        self.assertTrue(auth.verify_password(b"secret-1", a))
        self.assertFalse(auth.verify_password(b"secret-2", a))

    def test_bad_files_name_the_line(self):
        bad = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        bad.write("# comment\nalice short\n")
        bad.close()
        self.addCleanup(os.unlink, bad.name)
        with self.assertRaises(ValueError) as caught:
            auth.TokenFileChecker(bad.name)
        self.assertIn(f"{bad.name}:2", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            auth.PasswordFileChecker(bad.name)
        self.assertIn("yotonnet passwd", str(caught.exception))


class Identities(Base):
    async def two_nodes(self):
        """Node a (authenticates; b is a node user), node b dialled into it, alice on a."""
        a, ep = await self.node("a", nodes=["b"])
        b = self.make("b", Security(token_file=path("b.token")))
        await b.connect(ep).addTimeout(WAIT, reactor)
        alice, _ = await self.client(ep, name="alice", token_file=path("alice.token"))
        return a, b, alice

    def test_subscriber_two_hops_away_sees_the_publisher(self):
        async def go():
            a, b, alice = await self.two_nodes()
            sub = IdentifiedSubChannel(b, "news")
            pub = y.PubChannel(alice, "news")
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            pub.send("hi")
            got = await sub.recv().addTimeout(WAIT, reactor)
            self.assertEqual(got, Received("hi", "alice", alice.node_id))
            self.assertEqual(sender_of(b, alice.node_id), "alice")
            self.assertEqual(sender_of(b, b.node_id), "b")  # a bound b when it logged in

        return defer.ensureDeferred(go())

    def test_request_handler_sees_the_caller(self):
        async def go():
            a, b, alice = await self.two_nodes()

            class Who(y.RepChannel):
                def whoami(self):
                    return caller(self)

            Who(b, "who")
            req = y.ReqChannel(alice, "who", timeout=WAIT)
            await req.wait_for_responders().addTimeout(WAIT, reactor)
            self.assertEqual(await req.whoami(), "alice")

        return defer.ensureDeferred(go())

    def test_a_client_cannot_forge_identities_or_sources(self):
        async def go():
            a, b, alice = await self.two_nodes()
            sub = IdentifiedSubChannel(b, "news")
            pub = y.PubChannel(alice, "news")
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            port = int(a.ports[0].getHost().port)
            # bob logs in by hand, then claims to be alice's node and rebinds her to "admin"
            raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw())
            bob_id = random.getrandbits(63) + 1
            raw.transport.write(
                wire.encode_preamble()
                + wire.encode_hello(wire.Hello(
                    bob_id, "bob", (), 1 << 20, 1.0, {"auth": {"token": TOKENS["bob"]}}
                ))
                + wire.encode_frame(FrameKind.CONTROL, encode_object(
                    ["ident", [[alice.node_id, "admin", 2**62, 1]]]
                ))
                + wire.encode_frame(FrameKind.CONTROL, encode_object(
                    ["claim", "publish", "pubsub", "news"]
                ))
                + wire.encode_frame(
                    FrameKind.DATA, b"\x00forged", tag=pub.message_type.tag,
                    channel=pub.channel_id, source=alice.node_id, seq=2**62,
                )
            )
            await wait_until(lambda: a.guard.counters["denied_frames"] >= 1, WAIT, "the drop")
            pub.send("genuine")
            got = await sub.recv().addTimeout(WAIT, reactor)
            self.assertEqual((got.value, got.sender), ("genuine", "alice"))
            self.assertEqual(sender_of(a, alice.node_id), "alice")
            self.assertEqual(sender_of(b, alice.node_id), "alice")
            self.assertEqual(sender_of(a, bob_id), "bob")
            raw.transport.loseConnection()

        return defer.ensureDeferred(go())


def raw_peer(endpoint: str) -> defer.Deferred:
    """A bare TCP connection to a node's ``tcp:HOST:PORT`` endpoint."""
    port = int(endpoint.rsplit(":", 1)[1])
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw())


async def raw_password_login(endpoint: str, name: str) -> Raw:
    """A bare connection that sends the preamble and a HELLO with a good password."""
    (user, password), = PASSWORDS.items()
    raw = await raw_peer(endpoint)
    raw.transport.write(wire.encode_preamble() + wire.encode_hello(wire.Hello(
        random.getrandbits(63) + 1, name, (), 1 << 20, 1.0,
        {"auth": {"user": user, "password": password}},
    )))
    return raw


class Echo(y.RepChannel):
    def echo(self, value):
        return value


class Raw(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data


class PasswdCommand(SynchronousTestCase):
    def test_prints_a_line_the_checker_accepts(self):
        import contextlib
        import io
        import sys

        from yotonnet.cli import main

        out = io.StringIO()
        self.patch(sys, "stdin", io.StringIO("a long enough password\n"))
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            main(["passwd", "dora"])
        self.assertEqual(caught.exception.code, 0)
        line = out.getvalue().strip()
        self.assertTrue(line.startswith("dora:scrypt$"))
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(line + "\n")
        self.addCleanup(os.unlink, f.name)
        checker = auth.PasswordFileChecker(f.name)
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(
                UsernamePassword(b"dora", b"a long enough password")
            )),
            "dora",
        )
