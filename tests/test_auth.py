"""Authentication and identities on real loopback sockets.

Tokens and hashed passwords from files, TLS client certificates, and the
local secret of the node's OS user (its own processes, with no
configuration); a wrong or missing credential gets a readable ERROR frame
and a disconnect (and the dialler stops); a peer that proves nothing is
refused from loopback as from afar unless anonymous peers are allowed; a
password login costs the node no scrypt. The first node stamps its clients' messages with their
user, subscribers and request handlers read it, and a client cannot forge it.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import tempfile

import rawwire
from certs_fixture import PASSWORDS, TOKENS, LogCapture, bundle, path, wait_until
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet.core import handshake, wire
from yotonnet.core.messages import encode_object
from yotonnet.core.wire import FrameKind
from yotonnet.identity import IdentifiedSubChannel, Received, caller, sender_of
from yotonnet.mesh.link import HandshakeError, Link
from yotonnet.security import auth
from yotonnet.security.localsecret import ensure_secret
from yotonnet.security.settings import Security

WAIT = 15.0


def node_security(**kw) -> Security:
    bundle()
    return Security(tokens=path("tokens.txt"), passwords=path("passwords.txt"), **kw)


class Base(TestCase):
    def make(self, name: str, security: Security | None = None,
             role: str | None = None) -> y.Context:
        ctx = y.Context(name, reactor, security=security, role=role)
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
            # A process of another OS user: it cannot read this user's local secret.
            text = await self.refused(ep, secret_file=os.path.join(tempfile.mkdtemp(), "none"))
            self.assertIn("authentication required", text)
            self.assertIn("--token-file", text)
            self.assertIn(f"the local secret of OS user {auth.os_user()}", text)

        return defer.ensureDeferred(go())

    def test_another_users_secret_is_refused(self):
        async def go():
            _node, ep = await self.node()
            other = os.path.join(tempfile.mkdtemp(), "secret")
            ensure_secret(other)
            text = await self.refused(ep, secret_file=other)
            self.assertIn("the local secret does not match", text)
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

    def test_a_password_login_costs_the_node_no_scrypt(self):
        # The salted hash is the dialler's work: a node checks a password proof with two
        # HMACs, so a storm of password logins cannot queue slow work on it.
        async def go():
            node, ep = await self.node()
            (user, password), = PASSWORDS.items()
            real_scrypt = hashlib.scrypt
            used: list[str] = []

            def counting(*args, **kwargs):
                used.append("scrypt")
                return real_scrypt(*args, **kwargs)

            self.patch(hashlib, "scrypt", counting)
            client, _ = await self.client(ep, name="p", user=user, password=password)
            self.assertEqual(node.links[client.node_id].identity.user, user)
            self.assertEqual(used, ["scrypt"], "one scrypt in all: the dialler's")

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


class LocalSecret(Base):
    def test_own_processes_are_admitted_and_the_log_says_how(self):
        async def go():
            log = LogCapture(self)
            node = self.make("open")
            port = await node.listen("tcp:0:interface=127.0.0.1")
            self.assertTrue(log.matching("peers prove the local secret in"))
            self.assertTrue(log.matching(f"processes of OS user {auth.os_user()}"))
            client, link = await self.client(f"tcp:127.0.0.1:{port.getHost().port}")
            theirs = node.links[client.node_id]
            self.assertIsNone(theirs.gate)
            self.assertTrue(theirs.trusted and link.trusted)
            self.assertEqual((theirs.identity.user, theirs.identity.method),
                             (auth.local_identity(), "secret"))
            self.assertEqual(link.authenticated_as, auth.local_identity())

        return defer.ensureDeferred(go())

    def test_unix_socket_is_admitted_and_private(self):
        async def go():
            node = self.make("open")
            sock = tempfile.mktemp(prefix="ytn-", suffix=".sock")
            await node.listen(f"unix:{sock}")
            self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
            client, _ = await self.client(f"unix:{sock}")
            self.assertIn(client.node_id, node.links)

        return defer.ensureDeferred(go())


class PeerWithoutProof(SynchronousTestCase):
    """A peer that proves nothing (StringTransport, no I/O), from loopback or afar."""

    def handshake(self, security: Security | None, host: str = "192.0.2.7"
                  ) -> tuple[Link, StringTransport]:
        ctx = y.Context("open", Clock(), security=security)
        link = Link(ctx, outgoing=False)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        link.makeConnection(transport)
        dialler = rawwire.Dialler(random.getrandbits(63) + 1, "remote", "none")
        link.dataReceived(dialler.greeting() + dialler.feed(transport.value()))
        return link, transport

    def test_refused_from_loopback_as_from_afar(self):
        for host in ("127.0.0.1", "192.0.2.7"):
            link, transport = self.handshake(None, host)
            self.assertTrue(transport.disconnecting)
            self.assertIn(b"authentication required: this node accepts the local secret",
                          transport.value())
            self.assertNotEqual(link.status, "up")

    def test_allow_anonymous_opens_it_to_a_client(self):
        link, transport = self.handshake(Security(allow_anonymous=True))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(link.status, "up")
        # An anonymous mesh's peers are its nodes; a node that checks logins gates them.
        self.assertTrue(link.trusted)
        link, transport = self.handshake(
            Security(allow_anonymous=True, tokens=node_security().tokens))
        self.assertEqual(link.status, "up")
        self.assertFalse(link.trusted)
        self.assertIsNotNone(link.gate)


class PlainLogins(SynchronousTestCase):
    """A login over plain TCP to another host is said loudly (StringTransport, no I/O)."""

    def dial(self, host: str) -> LogCapture:
        log = LogCapture(self)
        ctx = y.Context("dialler", Clock(), security=Security(token=TOKENS["alice"]))
        link = Link(ctx, outgoing=True, endpoint_text=f"tcp:{host}:7117")
        link.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 7117)))
        listener = wire.encode_preamble() + wire.encode_hello(wire.Hello(
            random.getrandbits(63) + 1, "far", (), 1 << 20, 1.0,
            {"nonce": "ab" * 16, "accepts": ["token"]}))
        link.dataReceived(listener)
        self.assertEqual(link.status, "handshaking")  # its proof is on the way
        return log

    def test_a_token_login_to_another_host_over_plain_tcp_is_warned_of(self):
        log = self.dial("192.0.2.7")
        (line,) = log.matching("over PLAIN TCP")
        self.assertIn("tcp:192.0.2.7:7117", line)
        self.assertIn("use a tls: endpoint", line)

    def test_not_on_loopback(self):
        self.assertEqual(self.dial("127.0.0.1").matching("PLAIN TCP"), [])


class Checkers(SynchronousTestCase):
    def test_password_hashes_verify_and_differ_by_salt(self):
        a, b = auth.hash_password("secret-1"), auth.hash_password("secret-1")
        self.assertNotEqual(a, b)
        self.assertTrue(auth.check_password("secret-1", a))
        self.assertFalse(auth.check_password("secret-2", a))

    def test_the_older_salted_hash_lines_still_verify(self):
        import base64

        salt = b"s" * 16
        salted = hashlib.scrypt(b"pw", salt=salt, n=2**14, r=8, p=1, maxmem=1 << 26, dklen=32)
        line = "$".join(("scrypt", "16384", "8", "1", base64.b64encode(salt).decode(),
                         base64.b64encode(salted).decode()))
        self.assertTrue(auth.check_password("pw", line))
        self.assertFalse(auth.check_password("pW", line))

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
        b = self.make("b", Security(token_file=path("b.token")), role="node")
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

    def test_leaves_learn_the_identities_of_what_reaches_them(self):
        async def go():
            a, ep = await self.node("a")
            alice, _ = await self.client(ep, name="alice", token_file=path("alice.token"))
            bob, _ = await self.client(ep, name="bob", token_file=path("bob.token"))
            self.assertEqual((alice.role, bob.role), ("leaf", "leaf"))
            sub = IdentifiedSubChannel(bob, "news")

            class Who(y.RepChannel):
                def whoami(self):
                    return caller(self)

            Who(bob, "who")
            pub = y.PubChannel(alice, "news")
            req = y.ReqChannel(alice, "who", timeout=WAIT)
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            pub.send("hi")
            got = await sub.recv().addTimeout(WAIT, reactor)
            # bob's node told bob who alice is, once, before her first message reached him
            self.assertEqual(got, Received("hi", "alice", alice.node_id))
            self.assertEqual(await req.whoami(), "alice")
            self.assertEqual(sender_of(alice, bob.node_id), None, "told only what reaches it")

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
            bob_id = random.getrandbits(63) + 1
            raw = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                Raw(rawwire.Dialler(bob_id, "bob", "token", token=TOKENS["bob"])),
            )
            await wait_until(lambda: raw.dialler.state == "up", WAIT, "bob's login")
            raw.transport.write(
                wire.encode_frame(FrameKind.CONTROL, encode_object(
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


class Echo(y.RepChannel):
    def echo(self, value):
        return value


class Raw(Protocol):
    """A hand-written peer that logs in with its Dialler (tests/rawwire.py)."""

    def __init__(self, dialler: rawwire.Dialler) -> None:
        self.data = b""
        self.dialler = dialler

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.dialler.greeting())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        answer = self.dialler.feed(data)
        if answer:
            self.transport.write(answer)


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
        self.assertTrue(line.startswith("dora:scram-scrypt$"))
        self.assertNotIn("a long enough password", line)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(line + "\n")
        self.addCleanup(os.unlink, f.name)
        checker = auth.PasswordFileChecker(f.name)
        # A proof made by the hand-written dialler (tests/rawwire.py) is accepted.
        t = handshake.Transcript("password", "d" * 32, "l" * 32, 7, 9)
        challenge = handshake.challenge_message(checker.challenge("dora"))
        proof = rawwire.password_proof("a long enough password", "dora", challenge,
                                       "d" * 32, "l" * 32, 7, 9)
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(auth.PasswordProof("dora", t, proof))),
            "dora",
        )
        wrong = rawwire.password_proof("not it", "dora", challenge, "d" * 32, "l" * 32, 7, 9)
        self.failureResultOf(checker.requestAvatarId(auth.PasswordProof("dora", t, wrong)))
