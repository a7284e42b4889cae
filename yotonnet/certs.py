"""Development certificates: a private CA and node certificates with subjectAltNames.

Used by ``yotonnet certs`` and by the tests. Each node certificate names its
node in the subject's common name (the identity a TLS listener authenticates
it as) and lists subjectAltNames (DNS names and IP addresses) for the
hostname check a dialling node makes with service_identity. Certificates are
valid both as TLS server and TLS client certificates, so one file serves a
node that listens and dials (mutual TLS).

For production use certificates from your own PKI; these are for development
and for meshes on a private network.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: subjectAltNames every development certificate gets, so loopback tests work
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")


class Issued(NamedTuple):
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_cert(
    ca: Issued,
    name: str,
    sans: Sequence[str] = DEFAULT_SANS,
    days: int = 825,
    *,
    with_sans: bool = True,
) -> Issued:
    """A certificate for node or user ``name`` (its common name) signed by ``ca``.

    ``sans``: DNS names and IP addresses a dialling peer may use for it (the
    node name is added as a DNS name when it is a valid hostname).
    ``with_sans=False`` leaves the extension out entirely: such a certificate
    must be REJECTED by a dialling node (a regression test uses it).
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
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
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), False
        )
    )
    if with_sans:
        all_sans = list(dict.fromkeys([*([name] if _is_hostname(name) else []), *sans]))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(all_sans)), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return all(
        0 < len(label) <= 63
        and label.replace("-", "").isalnum()
        and label.isascii()
        and not label.startswith("-")
        for label in labels
    )


def write_bundle(
    directory: str, names: Sequence[str], sans: Sequence[str] = DEFAULT_SANS
) -> dict[str, str]:
    """Write ``ca.pem``/``ca.key`` (made if missing) and ``NAME.pem``/``NAME.key`` for each
    name into ``directory``; return {what: path}. Keys are written mode 0600."""
    os.makedirs(directory, exist_ok=True)
    ca_cert_path = os.path.join(directory, "ca.pem")
    ca_key_path = os.path.join(directory, "ca.key")
    written: dict[str, str] = {}
    if os.path.exists(ca_cert_path) and os.path.exists(ca_key_path):
        with open(ca_cert_path, "rb") as f, open(ca_key_path, "rb") as g:
            ca = Issued(f.read(), g.read())
    else:
        ca = make_ca()
        _write(ca_cert_path, ca.cert_pem, 0o644)
        _write(ca_key_path, ca.key_pem, 0o600)
        written["ca"] = ca_cert_path
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"certificate name {name!r} must be a plain name (no '/')")
        issued = make_cert(ca, name, sans)
        cert_path = os.path.join(directory, f"{name}.pem")
        _write(cert_path, issued.cert_pem, 0o644)
        _write(os.path.join(directory, f"{name}.key"), issued.key_pem, 0o600)
        written[name] = cert_path
    return written


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
