"""TLS links: ``tls:`` endpoint strings, certificate options and peer verification.

A context listens on ``tls:PORT[:interface=HOST][:backlog=N]`` and dials
``tls:HOST:PORT[:timeout=S][:hostname=NAME]``; the CA, certificate and key
come from the context's :class:`~yotonnet.security.Security` settings and may
be overridden per endpoint with ``ca=``, ``cert=``, ``key=`` (a listener also
takes ``client_cert=required|optional``). Colons in values are escaped as
``\\:``, as in Twisted's own endpoint strings.

Listening uses Twisted's ``SSL4ServerEndpoint`` with ``CertificateOptions``
that verify client certificates against the CA (mutual TLS). Dialling wraps a
``HostnameEndpoint`` with ``wrapClientTLS`` and a connection creator of our
own: it checks the chain against the CA (OpenSSL) and then the peer's
identity with service_identity, like Twisted's ``optionsForClientTLS``, with
one difference that matters. Twisted 26 only catches service_identity's
``VerificationError``; a certificate WITHOUT subjectAltName makes
service_identity raise ``CertificateError`` instead, which escapes Twisted's
callback, and the connection then proceeds as if the name had matched (any
hostname is accepted). Here every failure of the identity check, that one
included, aborts the handshake with :class:`PeerVerificationError`.

A node trusts the peer it dials as a node, so the peer must also show a
certificate meant for a TLS server: its leaf certificate's extendedKeyUsage
must list serverAuth (:func:`server_auth_problem`). A user certificate
(clientAuth only, see :mod:`yotonnet.security.certs`) is refused even when it names the
dialled host. OpenSSL's own purpose check (the ``ssl_server`` purpose a client
verifies with) already refuses an extendedKeyUsage without serverAuth, but
calls it "certificate verify failed"; the connection's verify callback keeps
that verdict and only words the reason (:class:`PeerVerificationError`).

A certificate with NO extendedKeyUsage extension is refused too, unlike
OpenSSL and browsers, which read an absent extension as "any purpose". The
reason: a CA that leaves the extension out makes every certificate it issues,
its users' included, usable as a server certificate, which is the hole this
check closes. ``yotonnet certs`` always sets the extension; public CAs must
put serverAuth in TLS server certificates (CA/Browser Forum Baseline
Requirements), and private-PKI tools do so for server profiles. A
certificate from a PKI that omits it is refused with a message saying to
issue it with serverAuth.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure
from zope.interface import implementer

TLS_PREFIX = "tls:"
#: X509_V_ERR_INVALID_PURPOSE (OpenSSL's x509_vfy.h): a certificate's purpose does not fit
_INVALID_PURPOSE = 26
#: what to do about a peer certificate that is not a node certificate
_NODE_CERT_HINT = (
    "a node's certificate must have extendedKeyUsage serverAuth (and clientAuth); "
    "`yotonnet certs DIR --name NODE [--san HOST]` makes node certificates, "
    "`--user NAME` makes user certificates, which only log a client in"
)
_SERVER_KEYS = ("interface", "backlog", "ca", "cert", "key", "client_cert")
_CLIENT_KEYS = ("timeout", "ca", "cert", "key", "hostname", "bindAddress")


class PeerVerificationError(Exception):
    """The TLS peer's certificate does not prove the identity we dialled, or is not a
    server (node) certificate."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a node's TLS identity: the CA it trusts, its certificate and key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    #: a listener refuses clients without a certificate signed by ``ca``
    require_client_cert: bool = True


def is_tls(endpoint: str) -> bool:
    return endpoint.startswith(TLS_PREFIX)


def split_endpoint(text: str) -> tuple[list[str], dict[str, str]]:
    """``tls:a:b:k=v`` -> (["a", "b"], {"k": "v"}); ``\\:`` is a literal colon."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text[len(TLS_PREFIX):] if is_tls(text) else text)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    return args, kwargs


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the TLS {what} file {path}: {e.strerror or e}") from None


def _files(files: TLSFiles, kwargs: dict[str, str]) -> TLSFiles:
    require = files.require_client_cert
    if "client_cert" in kwargs:
        value = kwargs["client_cert"]
        if value not in ("required", "optional"):
            raise ValueError(f"client_cert must be 'required' or 'optional', not {value!r}")
        require = value == "required"
    return TLSFiles(
        kwargs.get("ca", files.ca), kwargs.get("cert", files.cert),
        kwargs.get("key", files.key), require,
    )


def _private_certificate(files: TLSFiles) -> Any:
    from twisted.internet import ssl

    assert files.cert is not None
    cert_pem = _read(files.cert, "certificate")
    key_pem = _read(files.key, "key") if files.key else cert_pem
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:  # noqa: BLE001 - OpenSSL's errors are opaque lists
        raise ValueError(
            f"cannot load the TLS certificate {files.cert} with key {files.key or files.cert}: "
            f"{e}; they must be PEM and belong together (yotonnet certs makes a matching pair)"
        ) from None


def _ca(files: TLSFiles) -> Any:
    from twisted.internet import ssl

    if not files.ca:
        return None
    try:
        return ssl.Certificate.loadPEM(_read(files.ca, "CA"))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot load the TLS CA certificate {files.ca}: {e}") from None


def server_options(files: TLSFiles) -> Any:
    """``CertificateOptions`` for a listener: our certificate, client certificates checked
    against the CA (mutual TLS) when a CA is given."""
    from twisted.internet import ssl

    if not files.cert:
        raise ValueError(
            "a tls: listener needs a certificate and key: set tls_cert and tls_key in the "
            "[security] table (or --tls-cert/--tls-key), or cert=/key= in the endpoint; "
            "`yotonnet certs DIR --name NODE` makes development ones"
        )
    priv = _private_certificate(files)
    ca = _ca(files)
    return ssl.CertificateOptions(
        privateKey=_key_of(priv),
        certificate=_cert_of(priv),
        verify=ca is not None,
        caCerts=[_cert_of(ca)] if ca is not None else None,
        requireCertificate=ca is not None and files.require_client_cert,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def check_endpoint(endpoint: str, server: bool) -> None:
    """Syntax only (no files read): raise ValueError saying what a tls: endpoint looks like."""
    args, kwargs = split_endpoint(endpoint)
    keys, count = (_SERVER_KEYS, 1) if server else (_CLIENT_KEYS, 2)
    unknown = set(kwargs) - set(keys)
    if len(args) != count or unknown or not args[-1]:
        form = (
            "tls:PORT[:interface=HOST][:backlog=N][:ca=FILE][:cert=FILE][:key=FILE]"
            "[:client_cert=required|optional]" if server else
            "tls:HOST:PORT[:timeout=S][:hostname=NAME][:ca=FILE][:cert=FILE][:key=FILE]"
        )
        raise ValueError(
            f"a tls: {'listen' if server else 'connect'} endpoint is {form}"
            + (f"; unknown option {sorted(unknown)[0]!r}" if unknown else "")
        )
    _port(args[-1])


def server_endpoint(reactor: Any, endpoint: str, files: TLSFiles) -> Any:
    """The Twisted server endpoint for ``tls:PORT[:interface=..][:backlog=..]``."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    check_endpoint(endpoint, server=True)
    args, kwargs = split_endpoint(endpoint)
    port = _port(args[0])
    options = server_options(_files(files, kwargs))
    return SSL4ServerEndpoint(
        reactor, port, options, backlog=int(kwargs.get("backlog", 50)),
        interface=kwargs.get("interface", ""),
    )


def client_endpoint(reactor: Any, endpoint: str, files: TLSFiles) -> Any:
    """The Twisted client endpoint for ``tls:HOST:PORT[:timeout=..][:hostname=..]``."""
    from twisted.internet import ssl
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    check_endpoint(endpoint, server=False)
    args, kwargs = split_endpoint(endpoint)
    host, port = args[0], _port(args[1])
    files = _files(files, kwargs)
    ca = _ca(files)
    kw: dict[str, Any] = {
        "trustRoot": ca if ca is not None else ssl.platformTrust(),
        "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
    }
    if files.cert:
        priv = _private_certificate(files)
        kw["privateKey"] = _key_of(priv)
        kw["certificate"] = _cert_of(priv)
    creator = VerifyingCreator(kwargs.get("hostname", host), ssl.CertificateOptions(**kw))
    timeout = float(kwargs.get("timeout", 30))
    return wrapClientTLS(creator, HostnameEndpoint(reactor, host, port, timeout=timeout))


def _cert_of(cert: Any) -> Any:
    # pyOpenSSL objects, as Twisted 26's CertificateOptions needs (pyOpenSSL 25+ warns
    # that it deprecates them; Twisted refuses cryptography objects here)
    return cert.original


def _key_of(priv: Any) -> Any:
    return priv.privateKey.original


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"TLS port must be a number from 0 to 65535, not {text!r}")
    return port


def _ip(text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _creator_interface() -> Any:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    return IOpenSSLClientConnectionCreator


@implementer(_creator_interface())
class VerifyingCreator:
    """Makes client TLS connections that verify the chain and the peer's identity.

    Any exception of the identity check (service_identity's VerificationError,
    its CertificateError for a certificate without subjectAltName, anything
    else) fails the handshake: it never leaves the connection half-verified.
    """

    def __init__(self, hostname: str, options: Any) -> None:
        self.hostname = hostname
        self._ip = _ip(hostname)
        self._options = options

    def clientConnectionForTLS(self, tls_protocol: Any) -> Any:  # noqa: N802 - interface name
        from OpenSSL import SSL

        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tls_protocol)
        if self._ip is None:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        # A dialler always verifies the server's chain; the callback only words refusals.
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_callback
        )
        connection.set_info_callback(self._info)
        return connection

    def _verify_callback(
        self, connection: Any, cert: Any, errno: int, depth: int, ok: int
    ) -> bool:
        # OpenSSL's verdict stands (``ok`` is returned unchanged). When it refuses a
        # certificate's purpose, say so: the TLS transport would otherwise report
        # "certificate verify failed", which reads like a CA problem.
        if not ok and errno == _INVALID_PURPOSE:
            try:
                text = _purpose_refusal(cert.to_cryptography(), depth)
            except Exception:  # noqa: BLE001 - a reason we cannot word is still a refusal
                text = "OpenSSL refused the certificate's purpose; " + _NODE_CERT_HINT
            connection.get_app_data().failVerification(
                Failure(PeerVerificationError(
                    f"TLS peer certificate rejected for {self.hostname!r}: {text}"
                ))
            )
        return bool(ok)

    def _info(self, connection: Any, where: int, ret: int) -> None:
        from OpenSSL import SSL

        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        try:
            self.verify(connection)
        except Exception as e:  # noqa: BLE001 - whatever it is, the peer is not verified
            text = _explain(e, self.hostname, connection)
            connection.get_app_data().failVerification(Failure(PeerVerificationError(text)))

    def verify(self, connection: Any) -> None:
        """Raise unless the peer's certificate is a server certificate for our hostname."""
        from service_identity import pyopenssl

        # Here as well as in OpenSSL's purpose check: that one passes a certificate
        # without extendedKeyUsage, and runs only when a handshake carries certificates.
        cert = connection.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise PeerVerificationError("the peer presented no certificate")
        problem = server_auth_problem(cert)
        if problem is not None:
            raise PeerVerificationError(problem)
        if self._ip is not None:
            pyopenssl.verify_ip_address(connection, str(self._ip))
        else:
            pyopenssl.verify_hostname(connection, self.hostname)


def server_auth_problem(cert: Any) -> str | None:
    """Why ``cert`` (a ``cryptography`` certificate) cannot be a dialled node's certificate,
    or None when its extendedKeyUsage lists serverAuth."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    who = _common_name(cert)
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return (
            f"the peer's certificate ({who}) has no extendedKeyUsage, so it does not say "
            f"it is a server certificate (yotonnet refuses such certificates); "
            + _NODE_CERT_HINT
        )
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return None
    if usages == [ExtendedKeyUsageOID.CLIENT_AUTH]:
        return (
            f"the peer's certificate ({who}) is a user certificate (clientAuth only), "
            f"not a node certificate; " + _NODE_CERT_HINT
        )
    names = ", ".join(_usage_name(oid) for oid in usages)
    return (
        f"the peer's certificate ({who}) has extendedKeyUsage {names}, without serverAuth, "
        f"so it is not a node certificate; " + _NODE_CERT_HINT
    )


def _usage_name(oid: Any) -> str:
    from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

    known = {
        EKU.SERVER_AUTH: "serverAuth", EKU.CLIENT_AUTH: "clientAuth",
        EKU.CODE_SIGNING: "codeSigning", EKU.EMAIL_PROTECTION: "emailProtection",
        EKU.TIME_STAMPING: "timeStamping", EKU.OCSP_SIGNING: "OCSPSigning",
        EKU.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
    }
    return known.get(oid, oid.dotted_string)


def _purpose_refusal(cert: Any, depth: int) -> str:
    if depth > 0:
        return (
            f"the CA certificate {_common_name(cert)} in the peer's chain does not allow "
            "TLS servers (its extendedKeyUsage or keyUsage); the peer needs a certificate "
            "from a CA that may sign server certificates"
        )
    problem = server_auth_problem(cert)
    if problem is not None:
        return problem
    return (
        f"OpenSSL refused the peer's certificate ({_common_name(cert)}) as a TLS server "
        "certificate: its keyUsage or nsCertType does not allow one; " + _NODE_CERT_HINT
    )


def _common_name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"common name {str(names[0].value)!r}" if names else "no common name"


def _explain(error: Exception, hostname: str, connection: Any) -> str:
    from service_identity.exceptions import CertificateError, VerificationError

    if isinstance(error, PeerVerificationError):
        return f"TLS peer certificate rejected for {hostname!r}: {error}"
    if isinstance(error, CertificateError):
        return (
            f"TLS peer certificate rejected for {hostname!r}: {error} A certificate must "
            "name its hosts in subjectAltName (`yotonnet certs` makes such certificates)"
        )
    if isinstance(error, VerificationError):
        names = _peer_sans(connection)
        return (
            f"TLS peer certificate does not match {hostname!r}: it is for "
            f"{', '.join(names) or 'no names'}; dial tls:HOST:PORT:hostname=NAME with one "
            "of those, or give the peer a node certificate that lists this name "
            f"(`yotonnet certs DIR --name NODE --san HOST`) ({error})"
        )
    return f"TLS peer certificate rejected for {hostname!r}: {error!r}"


def _peer_sans(connection: Any) -> list[str]:
    from cryptography import x509

    from .certs import describe_san

    try:
        cert = connection.get_peer_certificate(as_cryptography=True)
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except Exception:  # noqa: BLE001 - only wording: no names to show
        return []
    return [describe_san(name) for name in ext.value]


def is_verification_failure(failure: Failure | None) -> bool:
    """True when a connection was lost because the peer's certificate was refused
    (our identity check, or OpenSSL's chain check): retrying cannot help."""
    if failure is None:
        return False
    if failure.check(PeerVerificationError):
        return True
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS not installed, so no TLS links
        return False
    if failure.check(SSL.Error):
        text = str(failure.value).lower()
        # certificate verify failed, certificate required, alert unknown ca, bad certificate
        return any(word in text for word in ("certificate", "verify", "unknown ca", "alert"))
    return False


_HINTS = (
    ("certificate required", "the peer requires a TLS client certificate: give this node "
     "one (tls_cert/tls_key, --tls-cert/--tls-key), or have the peer set tls_client_cert = "
     "\"optional\" and log in with a token or password"),
    ("unknown ca", "the peer does not trust the CA that signed this node's certificate"),
    ("certificate verify failed", "the peer's certificate is not signed by the CA this node "
     "trusts (tls_ca, --tls-ca)"),
)


def explain_failure(failure: Failure) -> str:
    """A refused TLS handshake, said so that the reader knows what to change."""
    text = failure.getErrorMessage()
    if failure.check(PeerVerificationError):
        return text
    lower = text.lower()
    for needle, hint in _HINTS:
        if needle in lower:
            return f"TLS handshake refused: {hint} ({text})"
    return f"TLS handshake refused: {text}"


def peer_certificate_name(transport: Any) -> str | None:
    """The common name of a TLS peer's verified certificate, or None."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except Exception:  # noqa: BLE001 - not a TLS transport after all
        return None
    if cert is None:
        return None
    from cryptography.x509.oid import NameOID

    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
