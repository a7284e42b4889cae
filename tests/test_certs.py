"""``yotonnet certs`` and :mod:`yotonnet.security.certs`: node certificates and user certificates.

A node certificate has extendedKeyUsage serverAuth and clientAuth and the
subjectAltNames given for that node (its name and each ``--san``, nothing
else); a user certificate has clientAuth only and no subjectAltName. Keys are
private (0600). The command runs as a user runs it: ``python -m yotonnet.cli
certs`` in a child process, its exit status, stdout and stderr checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import procs
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.security import certs

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def load(pem_or_path: bytes | str) -> x509.Certificate:
    if isinstance(pem_or_path, str):
        with open(pem_or_path, "rb") as f:
            pem_or_path = f.read()
    return x509.load_pem_x509_certificate(pem_or_path)


def usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses as text) of the certificate's subjectAltName."""
    value = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (value.get_values_for_type(x509.DNSName),
            [str(ip) for ip in value.get_values_for_type(x509.IPAddress)])


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


class Certificates(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = certs.make_ca()
        self.ca_cert = load(self.ca.cert_pem)

    def test_node_certificate_serves_and_dials_for_its_own_names_only(self):
        cert = load(certs.make_node_cert(self.ca, "hub", ["Hub.Example", "10.0.0.1"]).cert_pem)
        self.assertEqual(usages(cert), [SERVER, CLIENT])
        self.assertEqual(sans(cert), (["hub", "hub.example"], ["10.0.0.1"]))
        self.assertEqual(common_name(cert), "hub")
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(key_usage.digital_signature)
        self.assertFalse(key_usage.key_cert_sign)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        cert.verify_directly_issued_by(self.ca_cert)

    def test_node_certificate_has_no_loopback_names_unless_given(self):
        dns, ips = sans(load(certs.make_node_cert(self.ca, "a").cert_pem))
        self.assertEqual((dns, ips), (["a"], []))

    def test_user_certificate_is_client_only_and_names_no_host(self):
        cert = load(certs.make_user_cert(self.ca, "alice").cert_pem)
        self.assertEqual(usages(cert), [CLIENT])
        self.assertEqual(common_name(cert), "alice")
        with self.assertRaises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        cert.verify_directly_issued_by(self.ca_cert)

    def test_node_whose_name_is_not_a_dns_name_needs_a_san(self):
        with self.assertRaises(ValueError) as caught:
            certs.make_node_cert(self.ca, "node_1")
        self.assertIn("--san", str(caught.exception))
        cert = load(certs.make_node_cert(self.ca, "node_1", ["n1.example"]).cert_pem)
        self.assertEqual(sans(cert), (["n1.example"], []))
        # A name that reads as a wildcard is not made one.
        self.assertEqual(certs.node_sans("*.example", ["n.example"]), ["n.example"])

    def test_a_san_that_is_no_host_name_is_refused(self):
        for bad in ("two words", "-lead.example", "h\u00e9.example", ""):
            with self.assertRaises(ValueError, msg=bad):
                certs.make_node_cert(self.ca, "a", [bad])


class WriteBundle(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="yotonnet-certs-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_writes_both_kinds_and_reports_them(self):
        written = certs.write_bundle(self.dir, {"hub": ["10.1.2.3"]}, ["alice"])
        self.assertEqual([(w.kind, w.name) for w in written],
                         [("ca", "ca"), ("node", "hub"), ("user", "alice")])
        self.assertEqual(written[1].sans, ("DNS:hub", "IP:10.1.2.3"))
        self.assertEqual(usages(load(written[1].path)), [SERVER, CLIENT])
        self.assertEqual(usages(load(written[2].path)), [CLIENT])

    def test_a_bad_request_writes_nothing(self):
        target = os.path.join(self.dir, "new")
        for nodes, users in [({"a": ["bad name"]}, []), ({"a": []}, ["a"]),
                             ({"ca": []}, []), ({}, ["../x"]), ({"node_1": []}, [])]:
            with self.assertRaises(ValueError, msg=(nodes, users)):
                certs.write_bundle(target, nodes, users)
            self.assertFalse(os.path.exists(target), (nodes, users))

    def test_a_key_file_that_was_readable_becomes_private(self):
        loose = os.path.join(self.dir, "a.key")
        with open(loose, "w") as f:
            f.write("old")
        os.chmod(loose, 0o644)
        certs.write_bundle(self.dir, ["a"])
        self.assertEqual(mode(loose), 0o600)


def run_certs(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = procs.REPO_ROOT  # this checkout's yotonnet, whatever is installed
    return subprocess.run(
        [sys.executable, "-m", "yotonnet.cli", "certs", *args],
        capture_output=True, text=True, env=env, cwd=procs.REPO_ROOT, timeout=60,
    )


class CertsCommand(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="yotonnet-certs-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def test_makes_node_and_user_certificates_with_private_keys(self):
        done = run_certs(self.dir, "--name", "hub", "--san", "hub.example", "--san", "10.0.0.1",
                         "--user", "alice", "--user", "bob")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(sorted(os.listdir(self.dir)), [
            "alice.key", "alice.pem", "bob.key", "bob.pem", "ca.key", "ca.pem",
            "hub.key", "hub.pem",
        ])
        for name in ("ca", "hub", "alice", "bob"):
            self.assertEqual(mode(self.path(f"{name}.key")), 0o600, name)
            self.assertEqual(mode(self.path(f"{name}.pem")), 0o644, name)
        ca = load(self.path("ca.pem"))
        hub = load(self.path("hub.pem"))
        self.assertEqual(usages(hub), [SERVER, CLIENT])
        self.assertEqual(sans(hub), (["hub", "hub.example"], ["10.0.0.1"]))
        for user in ("alice", "bob"):
            cert = load(self.path(f"{user}.pem"))
            self.assertEqual((usages(cert), common_name(cert)), ([CLIENT], user))
            with self.assertRaises(x509.ExtensionNotFound):
                cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            cert.verify_directly_issued_by(ca)
        self.assertIn("node hub: ", done.stdout)
        self.assertIn("subjectAltName DNS:hub, DNS:hub.example, IP:10.0.0.1", done.stdout)
        self.assertIn("user alice: ", done.stdout)
        self.assertIn("clientAuth only", done.stdout)

    def test_later_runs_keep_the_ca(self):
        self.assertEqual(run_certs(self.dir, "--name", "a").returncode, 0)
        with open(self.path("ca.pem"), "rb") as f:
            ca_before = f.read()
        done = run_certs(self.dir, "--name", "b", "--san", "b.example", "--user", "carol")
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(self.path("ca.pem"), "rb") as f:
            self.assertEqual(f.read(), ca_before)
        self.assertNotIn("CA:", done.stdout)
        for name in ("a", "b", "carol"):
            load(self.path(f"{name}.pem")).verify_directly_issued_by(load(ca_before))
        # --san went to b only: a keeps its own name alone.
        self.assertEqual(sans(load(self.path("a.pem"))), (["a"], []))

    def test_san_for_several_nodes_is_a_usage_error(self):
        done = run_certs(self.path("new"), "--name", "a", "--name", "b", "--san", "x.example")
        self.assertEqual(done.returncode, 2)
        self.assertIn("exactly one --name", done.stderr)
        self.assertFalse(os.path.exists(self.path("new")))

    def test_nothing_to_make_is_a_usage_error(self):
        done = run_certs(self.path("new"))
        self.assertEqual(done.returncode, 2)
        self.assertIn("--name NODE", done.stderr)
        self.assertIn("--user USER", done.stderr)

    def test_bad_names_are_errors_that_say_why(self):
        for args, needle in [(["--name", "node_1"], "--san"), (["--user", "ca"], "CA's files"),
                             (["--name", "a", "--user", "a"], "both a node and a user")]:
            done = run_certs(self.path("new"), *args)
            self.assertEqual(done.returncode, 1, args)
            self.assertIn(needle, done.stderr)
            self.assertFalse(os.path.exists(self.path("new")), args)
