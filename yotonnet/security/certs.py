"""Development certificates: a private CA, node certificates and user certificates.

Used by ``yotonnet certs`` and by the tests. There are two kinds of leaf
certificate, because a node trusts the peer it dials as a node, fully:

node certificate (:func:`make_node_cert`)
    extendedKeyUsage serverAuth and clientAuth, since a node both listens and
    dials (mutual TLS). Its common name is the node's name (the user a TLS
    listener knows it as); its subjectAltNames are the node's name, when that
    is a DNS name, and the extra DNS names and IP addresses given for it, and
    nothing else: ``localhost`` or ``127.0.0.1`` only when asked for.
user certificate (:func:`make_user_cert`)
    extendedKeyUsage clientAuth only and no subjectAltName; the common name is
    the user. It logs a client in to a node's TLS listener. A node that dials
    refuses it as the peer's certificate (:mod:`yotonnet.security.tls`), so a user
    cannot pose as a node, whatever names the certificate might carry.

:func:`issue` is the builder under both; the tests use it for certificates
``yotonnet certs`` never makes (no subjectAltName, no extendedKeyUsage).

For production use certificates from your own PKI; these are for development
and for meshes on a private network.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: extendedKeyUsage of a node certificate: it serves (listens) and is a client (dials)
NODE_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
#: extendedKeyUsage of a user certificate: a client only
USER_USAGES = (ExtendedKeyUsageOID.CLIENT_AUTH,)

#: file names the CA takes in a bundle directory; no certificate may be called so
CA_NAME = "ca"


class Issued(NamedTuple):
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


class Written(NamedTuple):
    """One certificate :func:`write_bundle` wrote: ``kind`` is "ca", "node" or "user"."""

    kind: str
    name: str
    path: str
    #: its subjectAltNames as text ("DNS:a", "IP:10.0.0.1"); empty for a CA or user
    sans: tuple[str, ...] = ()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, leaf: bool) -> x509.KeyUsage:
    # A leaf signs TLS handshakes (ECDSA); a CA signs certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=not leaf,
        crl_sign=not leaf, encipher_only=False, decipher_only=False,
    )


def is_hostname(name: str) -> bool:
    """True for a DNS name a certificate may list (ASCII labels; ``*.`` first is allowed)."""
    labels = name.removeprefix("*.").split(".")
    return all(
        0 < len(label) <= 63
        and label.isascii()
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    ) and len(name) <= 253


def general_name(san: str) -> x509.GeneralName:
    """``san`` as a subjectAltName entry: an IP address, else a DNS name (ValueError if
    it is neither)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if not is_hostname(san):
        raise ValueError(
            f"subjectAltName {san!r} is neither an IP address nor a DNS name "
            "(letters, digits and '-' in dot-separated labels)"
        )
    return x509.DNSName(san.lower())


def describe_san(name: x509.GeneralName) -> str:
    """``DNS:host`` or ``IP:addr``, as openssl prints them."""
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    return str(name.value)


def make_ca(name: str = "yotonnet development CA", days: int = 3650) -> Issued:
    """A self-signed CA certificate and key."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(leaf=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    name: str,
    usages: Sequence[x509.ObjectIdentifier] | None,
    sans: Sequence[str] = (),
    days: int = 825,
) -> Issued:
    """A leaf certificate with common name ``name``, signed by ``ca``.

    ``usages``: its extendedKeyUsage (None leaves the extension out);
    ``sans``: its subjectAltNames, DNS names or IP addresses, exactly these
    (none leaves the extension out). Prefer :func:`make_node_cert` and
    :func:`make_user_cert`, which choose both for the kind of certificate.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an elliptic-curve key (as make_ca makes)")
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(leaf=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        names = list(dict.fromkeys(general_name(san) for san in sans))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def node_sans(name: str, sans: Sequence[str] = ()) -> list[str]:
    """The subjectAltNames of node ``name``'s certificate: its name (when a DNS name),
    then ``sans``, without repeats."""
    # Never a wildcard from a name: "*.x" names one node, not every host in x.
    first = [name.lower()] if is_hostname(name) and not name.startswith("*") else []
    return list(dict.fromkeys([*first, *(san.lower() for san in sans)]))


def make_node_cert(ca: Issued, name: str, sans: Sequence[str] = (), days: int = 825) -> Issued:
    """A node certificate: serverAuth and clientAuth, common name ``name``, and the
    subjectAltNames :func:`node_sans` gives. ValueError if that leaves none (a node
    whose name is not a DNS name needs ``sans``), since every dialler would refuse it."""
    all_sans = _checked_node_sans(name, sans)
    return issue(ca, name, NODE_USAGES, all_sans, days)


def _checked_node_sans(name: str, sans: Sequence[str]) -> list[str]:
    all_sans = node_sans(name, sans)
    if not all_sans:
        raise ValueError(
            f"node name {name!r} is not a DNS name, so its certificate needs at least one "
            "subjectAltName (--san HOST_OR_IP) for the nodes that dial it to check"
        )
    for san in all_sans:
        general_name(san)  # raises for a SAN that is neither an IP address nor a DNS name
    return all_sans


def make_user_cert(ca: Issued, user: str, days: int = 825) -> Issued:
    """A user certificate: clientAuth only, no subjectAltName, common name ``user``."""
    return issue(ca, user, USER_USAGES, (), days)


def check_file_name(name: str) -> None:
    """ValueError unless ``name`` can name ``NAME.pem`` in a bundle directory."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.isprintable():
        raise ValueError(f"certificate name {name!r} must be a plain name (no '/', no leading '.')")
    if name == CA_NAME:
        raise ValueError(f"{CA_NAME!r} names the CA's files (ca.pem, ca.key); choose another name")


def load_or_make_ca(directory: str) -> tuple[Issued, Written | None]:
    """The CA in ``directory`` (``ca.pem``/``ca.key``), made and written if missing; the
    second item says what was written (None when the CA was kept)."""
    cert_path = os.path.join(directory, f"{CA_NAME}.pem")
    key_path = os.path.join(directory, f"{CA_NAME}.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f, open(key_path, "rb") as g:
            return Issued(f.read(), g.read()), None
    ca = make_ca()
    write_pair(directory, CA_NAME, ca)
    return ca, Written("ca", CA_NAME, cert_path)


def write_bundle(
    directory: str,
    nodes: Mapping[str, Sequence[str]] | Sequence[str] = (),
    users: Sequence[str] = (),
) -> list[Written]:
    """Write ``ca.pem``/``ca.key`` (made if missing, else kept) and ``NAME.pem``/``NAME.key``
    for each node and user into ``directory``; return what was written, in order.

    ``nodes`` maps each node's name to its extra subjectAltNames (a plain sequence
    of names: none extra). Names are checked before anything is written. Keys are
    written mode 0600, certificates 0644.
    """
    node_map = dict(nodes) if isinstance(nodes, Mapping) else {name: () for name in nodes}
    for name in [*node_map, *users]:
        check_file_name(name)
    both = sorted(set(node_map) & set(users))
    if both:
        raise ValueError(f"{both[0]!r} is asked for as both a node and a user; one file each")
    # Check every SAN before writing, so a typo leaves the directory as it was.
    planned = {name: _checked_node_sans(name, sans) for name, sans in node_map.items()}
    os.makedirs(directory, exist_ok=True)
    ca, made = load_or_make_ca(directory)
    written = [made] if made else []
    for name, all_sans in planned.items():
        path = write_pair(directory, name, make_node_cert(ca, name, all_sans))
        written.append(Written("node", name, path, tuple(_san_text(san) for san in all_sans)))
    for user in users:
        written.append(Written("user", user, write_pair(directory, user, make_user_cert(ca, user))))
    return written


def _san_text(san: str) -> str:
    return describe_san(general_name(san))


def write_pair(directory: str, name: str, issued: Issued) -> str:
    """Write ``NAME.pem`` (0644) and ``NAME.key`` (0600) into ``directory``; return the
    certificate's path."""
    cert_path = os.path.join(directory, f"{name}.pem")
    _write(cert_path, issued.cert_pem, 0o644)
    _write(os.path.join(directory, f"{name}.key"), issued.key_pem, 0o600)
    return cert_path


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    # Before writing: an existing file keeps its old (maybe readable) mode otherwise.
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
