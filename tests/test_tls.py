"""TLS links on real loopback sockets: mutual TLS, hostname checks, refused certificates.

Node certificates against user certificates (the serverAuth check) are in
tests/test_tls_roles.py, certificate generation in tests/test_certs.py.

Includes the regression test for Twisted 26's hole: a server certificate
WITHOUT subjectAltName passes ``optionsForClientTLS``'s hostname check for any
name (service_identity raises CertificateError, which Twisted's callback does
not catch). yotonnet's own connection creator must refuse it.
"""

from __future__ import annotations

import socket
from typing import Any

from certs_fixture import bundle, path
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet.mesh.link import HandshakeError
from yotonnet.security import tls
from yotonnet.security.settings import Security

WAIT = 15.0


def node_security(name: str, **kw: Any) -> Security:
    bundle()
    base = dict(tls_ca=path("ca.pem"), tls_cert=path(f"{name}.pem"), tls_key=path(f"{name}.key"))
    base.update(kw)
    return Security(**base)


class TLSLinks(TestCase):
    def make(self, name: str, security: Security) -> y.Context:
        ctx = y.Context(name, reactor, security=security)
        self.addCleanup(ctx.close)
        return ctx

    async def listen(self, server_cert: str = "a", **kw: Any) -> tuple[y.Context, int]:
        server = self.make("a", node_security(server_cert, nodes=["b"], **kw))
        port = await server.listen("tls:0:interface=127.0.0.1")
        return server, port.getHost().port

    async def connect(self, client: y.Context, endpoint: str) -> Any:
        return await client.connect(endpoint).addTimeout(WAIT, reactor)

    async def refused(self, client: y.Context, endpoint: str) -> str:
        try:
            await self.connect(client, endpoint)
        except HandshakeError as e:
            return str(e)
        self.fail(f"{endpoint} was accepted")

    def test_mutual_tls_carries_messages(self):
        async def go():
            server, port = await self.listen()
            sub = y.SubChannel(server, "news")
            client = self.make("b", node_security("b"))
            link = await self.connect(client, f"tls:127.0.0.1:{port}")
            self.assertEqual(link.peer_name, "a")
            # The listener knows the dialler by its client certificate: user "b", a node.
            server_link = server.links[client.node_id]
            self.assertEqual(server_link.identity.user, "b")
            self.assertEqual(server_link.identity.method, "certificate")
            self.assertTrue(server_link.identity.node)
            # The reply poll sees through the TLS layer to the TCP socket under it.
            for end in (link, server_link):
                self.assertIsInstance(end.poll_socket, socket.socket)
                self.assertEqual(end.poll_socket.type, socket.SOCK_STREAM)
            pub = y.PubChannel(client, "news")
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            pub.send("over TLS")
            self.assertEqual(await sub.recv().addTimeout(WAIT, reactor), "over TLS")

        return defer.ensureDeferred(go())

    def test_dns_name_from_subject_alt_name(self):
        async def go():
            _server, port = await self.listen()
            client = self.make("b", node_security("b"))
            link = await self.connect(client, f"tls:localhost:{port}")
            self.assertEqual(link.peer_name, "a")

        return defer.ensureDeferred(go())

    def test_wrong_hostname_is_refused_and_not_retried(self):
        async def go():
            _server, port = await self.listen()
            client = self.make("b", node_security("b"))
            text = await self.refused(client, f"tls:127.0.0.1:{port}:hostname=other.example")
            self.assertIn("does not match 'other.example'", text)
            # It says which names the certificate is for, and how to dial by one.
            self.assertIn("it is for DNS:a, DNS:localhost, IP:127.0.0.1, IP:::1;", text)
            self.assertIn("hostname=NAME", text)
            self.assertTrue(client.dialers[0].stopped)

        return defer.ensureDeferred(go())

    def test_certificate_without_subject_alt_name_is_refused(self):
        """Regression: Twisted 26 would accept this certificate for ANY hostname."""
        async def go():
            _server, port = await self.listen(server_cert="nosan")
            for host in ("localhost", "127.0.0.1"):
                client = self.make("b", node_security("b"))
                text = await self.refused(client, f"tls:{host}:{port}")
                self.assertIn("subjectAltName", text)
                self.assertEqual(client.links, {})

        return defer.ensureDeferred(go())

    def test_client_without_certificate_is_refused(self):
        async def go():
            _server, port = await self.listen()
            client = self.make("b", Security(tls_ca=path("ca.pem")))
            await self.refused(client, f"tls:127.0.0.1:{port}")

        return defer.ensureDeferred(go())

    def test_client_certificate_from_another_ca_is_refused(self):
        async def go():
            server, port = await self.listen()
            client = self.make("b", node_security("stranger"))
            await self.refused(client, f"tls:127.0.0.1:{port}")
            self.assertEqual(server.links, {})

        return defer.ensureDeferred(go())

    def test_server_certificate_from_another_ca_is_refused(self):
        async def go():
            _server, port = await self.listen(server_cert="stranger")
            client = self.make("b", node_security("b"))
            await self.refused(client, f"tls:127.0.0.1:{port}")

        return defer.ensureDeferred(go())


class Endpoints(SynchronousTestCase):
    def test_bad_tls_endpoints_say_what_is_expected(self):
        files = Security(tls_cert=path("a.pem"), tls_key=path("a.key")).tls_files()
        for text in ("tls:", "tls:1:2", "tls:0:colour=red", "tls:99999"):
            with self.assertRaises(ValueError) as caught:
                tls.server_endpoint(reactor, text, files)
            self.assertIn("tls:", str(caught.exception) + text)
        with self.assertRaises(ValueError) as caught:
            tls.client_endpoint(reactor, "tls:onlyhost", files)
        self.assertIn("tls:HOST:PORT", str(caught.exception))

    def test_listener_without_certificate_is_a_clear_error(self):
        ctx = y.Context("x", reactor)
        self.addCleanup(ctx.close)
        failure = self.failureResultOf(ctx.listen("tls:0"), ValueError)
        self.assertIn("tls_cert", str(failure.value))
        self.assertIn("yotonnet certs", str(failure.value))

    def test_escaped_colons(self):
        self.assertEqual(
            tls.split_endpoint(r"tls:h:1:cert=C\:\\x.pem"), (["h", "1"], {"cert": "C:\\x.pem"})
        )


class TokenOverTLS(TestCase):
    def test_optional_client_certificate_then_a_token_logs_in(self):
        async def go():
            server = y.Context("a", reactor, security=node_security(
                "a", tls_client_cert="optional", tokens=path("tokens.txt"),
            ))
            self.addCleanup(server.close)
            port = (await server.listen("tls:0:interface=127.0.0.1")).getHost().port
            client = y.Context("c", reactor, security=Security(
                tls_ca=path("ca.pem"), token_file=path("alice.token"),
            ))
            self.addCleanup(client.close)
            link = await client.connect(f"tls:localhost:{port}").addTimeout(WAIT, reactor)
            self.assertEqual(link.authenticated_as, "alice")
            identity = server.links[client.node_id].identity
            self.assertEqual((identity.user, identity.method), ("alice", "token"))

        return defer.ensureDeferred(go())
