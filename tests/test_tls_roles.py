"""A dialling node accepts only a node (serverAuth) certificate from the peer it dials.

The attack from the security review, over real TLS sockets on loopback: a
process presents a *user* certificate signed by the mesh's own CA and crafted
to carry subjectAltName ``DNS:hub.example``, so the chain and the hostname
both check out and only the extendedKeyUsage check can stop it. A node
dialling ``tls:127.0.0.1:PORT:hostname=hub.example`` must refuse it with a
message saying what is wrong and what to do, and stop dialling; the same node
then dials the real hub (a node certificate for hub.example) and links.

Also: a certificate without extendedKeyUsage is refused (yotonnet's choice,
see :mod:`yotonnet.security.tls`), and a CA that may not sign server certificates is
named as the problem.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from typing import Any

from certs_fixture import HUB, bundle, path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from procs import REPO_ROOT, spawn_peer
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet.mesh.link import UP, HandshakeError
from yotonnet.security import certs, tls
from yotonnet.security.settings import Security

WAIT = 15.0
TLS_SERVER = os.path.join(REPO_ROOT, "tests", "peers", "tls_server.py")


def load(name: str) -> x509.Certificate:
    with open(path(f"{name}.pem"), "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def node_security(name: str, ca: str = "ca.pem", **kw: Any) -> Security:
    return Security(tls_ca=path(ca), tls_cert=path(f"{name}.pem"), tls_key=path(f"{name}.key"),
                    **kw)


class Base(TestCase):
    def make(self, name: str, security: Security) -> y.Context:
        ctx = y.Context(name, reactor, security=security)
        self.addCleanup(ctx.close)
        return ctx

    async def listen(self, server: y.Context) -> int:
        port = await server.listen("tls:0:interface=127.0.0.1")
        return port.getHost().port

    async def refused(self, client: y.Context, endpoint: str) -> HandshakeError:
        try:
            await client.connect(endpoint).addTimeout(WAIT, reactor)
        except HandshakeError as e:
            return e
        self.fail(f"{endpoint} was accepted")


class UserCertificatePosingAsTheHub(Base):
    def test_refused_with_a_clear_error_and_the_real_hub_then_links(self):
        async def go():
            bundle()
            # The forgery is valid in every respect but its purpose: signed by our CA,
            # and naming the hub, so service_identity alone would accept it.
            forged = load("mallory")
            verify_certificate_hostname(forged, HUB)
            self.assertEqual(
                list(forged.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
                [ExtendedKeyUsageOID.CLIENT_AUTH],
            )
            attacker = spawn_peer(self, path("mallory.pem"), path("mallory.key"),
                                  script=TLS_SERVER, label="attacker")
            attacker_port = int((await attacker.wait_for("READY")).split()[1])

            node = self.make("b", node_security("b"))
            error = await self.refused(node, f"tls:127.0.0.1:{attacker_port}:hostname={HUB}")
            text = str(error)
            self.assertIn(f"rejected for {HUB!r}", text)
            self.assertIn("common name 'mallory'", text)
            self.assertIn("is a user certificate (clientAuth only), not a node certificate", text)
            self.assertIn("`yotonnet certs DIR --name NODE", text)
            self.assertTrue(error.fatal)
            self.assertTrue(node.dialers[0].stopped)
            self.assertEqual(node.dialers[0].info()["last_error"], text)
            self.assertEqual(node.links, {})
            # It was the attacker's handshake that failed, not an unreachable port.
            await attacker.wait_for("CONNECTED")
            await attacker.wait_for("LOST")

            hub = self.make("hub", node_security("hub", nodes=["b"]))
            hub_port = await self.listen(hub)
            link = await node.connect(f"tls:127.0.0.1:{hub_port}:hostname={HUB}").addTimeout(
                WAIT, reactor)
            self.assertEqual(link.peer_name, "hub")
            self.assertIs(link.status, UP)
            self.assertFalse(node.dialers[1].stopped)
            identity = hub.links[node.node_id].identity
            self.assertEqual((identity.user, identity.method, identity.node),
                             ("b", "certificate", True))

        return defer.ensureDeferred(go())


class OtherCertificatesThatAreNotNodes(Base):
    def test_certificate_without_extended_key_usage_is_refused(self):
        """OpenSSL would take it for any purpose; yotonnet's own check refuses it."""
        async def go():
            bundle()
            verify_certificate_hostname(load("noeku"), HUB)
            server = self.make("hub", node_security("noeku", nodes=["b"]))
            port = await self.listen(server)
            node = self.make("b", node_security("b"))
            error = await self.refused(node, f"tls:127.0.0.1:{port}:hostname={HUB}")
            self.assertIn("has no extendedKeyUsage", str(error))
            self.assertIn("`yotonnet certs DIR --name NODE", str(error))
            self.assertTrue(node.dialers[0].stopped)
            self.assertEqual(server.links, {})

        return defer.ensureDeferred(go())

    def test_user_certificate_still_logs_a_client_in(self):
        """The check is on the dialled side only: alice's certificate is for dialling."""
        async def go():
            bundle()
            server = self.make("a", node_security("a"))
            port = await self.listen(server)
            client = self.make("alice", node_security("alice"))
            await client.connect(f"tls:localhost:{port}").addTimeout(WAIT, reactor)
            identity = server.links[client.node_id].identity
            self.assertEqual((identity.user, identity.method, identity.node),
                             ("alice", "certificate", False))

        return defer.ensureDeferred(go())

    def test_a_ca_that_may_not_sign_servers_is_named(self):
        async def go():
            d = tempfile.mkdtemp(prefix="yotonnet-ca-test-")
            self.addCleanup(shutil.rmtree, d, True)
            ca = client_only_ca()
            certs.write_pair(d, "ca", ca)
            certs.write_pair(d, "hub", certs.make_node_cert(ca, "hub", [HUB]))
            server = self.make("hub", Security(
                tls_cert=os.path.join(d, "hub.pem"), tls_key=os.path.join(d, "hub.key"),
                tls_client_cert="optional", allow_anonymous=True,
            ))
            port = await self.listen(server)
            node = self.make("b", Security(tls_ca=os.path.join(d, "ca.pem")))
            error = await self.refused(node, f"tls:127.0.0.1:{port}:hostname={HUB}")
            self.assertIn("the CA certificate common name 'client-only CA'", str(error))
            self.assertIn("does not allow TLS servers", str(error))

        return defer.ensureDeferred(go())


def client_only_ca() -> certs.Issued:
    """A CA whose own extendedKeyUsage (clientAuth) forbids the server certificates it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-only CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certs.Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem)


class ServerAuthProblem(SynchronousTestCase):
    """:func:`yotonnet.security.tls.server_auth_problem` on certificates of each kind."""

    def setUp(self) -> None:
        self.ca = certs.make_ca()

    def problem(self, usages: Any) -> str | None:
        issued = certs.issue(self.ca, "peer", usages, [HUB])
        return tls.server_auth_problem(x509.load_pem_x509_certificate(issued.cert_pem))

    def test_node_certificate_passes(self):
        self.assertIsNone(self.problem(certs.NODE_USAGES))
        self.assertIsNone(self.problem([ExtendedKeyUsageOID.SERVER_AUTH]))

    def test_everything_without_server_auth_is_a_problem_said_plainly(self):
        eku = ExtendedKeyUsageOID
        for usages, needle in [
            (certs.USER_USAGES, "is a user certificate (clientAuth only)"),
            (None, "has no extendedKeyUsage"),
            ([eku.ANY_EXTENDED_KEY_USAGE], "has extendedKeyUsage anyExtendedKeyUsage, without "
                                           "serverAuth"),
            ([eku.CODE_SIGNING, eku.CLIENT_AUTH], "has extendedKeyUsage codeSigning, clientAuth"),
        ]:
            text = self.problem(usages)
            self.assertIsNotNone(text, usages)
            self.assertIn(needle, text)
            self.assertIn("common name 'peer'", text)
            self.assertIn("`yotonnet certs DIR --name NODE", text)
