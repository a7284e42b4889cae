"""Authentication with twisted.cred: who is the peer of a link?

The dialler proves a credential during the handshake (:mod:`yotonnet.core.handshake`
has the proofs); the listener asks a ``Portal`` with these checkers:

* :class:`LocalSecretChecker`: this OS user's local secret
  (:mod:`yotonnet.security.localsecret`); the peer is the node's own user;
* :class:`TokenFileChecker`: a file of ``USER TOKEN`` lines (shared tokens);
* :class:`PasswordFileChecker`: a file of ``USER:scram-scrypt$...`` lines
  (:func:`hash_password` makes them; ``yotonnet passwd`` prints one);
* :class:`CertificateChecker`: a TLS client certificate's common name (the
  chain already checked against the CA by OpenSSL).

Secrets never cross the wire, so every check is a few HMACs on the reactor
thread: a listener spends no more on a wrong password than on any other bad
proof (the scrypt of a password is the dialler's work), which bounds what
unauthenticated peers can make a node do. Every comparison is
constant-time, an unknown token costs as much as a known one, and an
unknown user gets a challenge as plausible as a real one. The avatar is an
:class:`Identity`: the user, its roles, and whether it is a mesh node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from ..core import handshake
from ..core.handshake import Challenge, PasswordVerifier, Transcript

#: scrypt cost a dialler pays per password login: about 16 MiB and tens of milliseconds
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_PREFIX = "scram-scrypt"
_LEGACY_PREFIX = "scrypt"


class IIdentity(Interface):
    """The avatar interface: an authenticated peer."""

    user = Attribute("the user name")


@dataclass(frozen=True)
class Identity:
    """An authenticated peer: ``node`` peers may relay others' messages and identities."""

    user: str
    roles: frozenset[str] = field(default_factory=frozenset)
    node: bool = False
    method: str = "token"


def os_user() -> str:
    """The name of the OS user this process runs as."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def local_identity() -> str:
    """``user@host``: who a peer that proves this host's local secret is. The host is part
    of it: root on one machine is not root on another."""
    return f"{os_user()}@{socket.gethostname()}"


# --- credentials: what the dialler proved, with the transcript it proved it over


class ISecretProof(Interface):
    """A proof of this OS user's local secret."""


class ITokenProof(Interface):
    """A proof of a shared token."""


class IPasswordProof(Interface):
    """A proof of a user's password."""


class ICertificateCredentials(Interface):
    name = Attribute("the common name of a TLS peer certificate the CA has signed")


class KeyProof:
    """The dialler's proof of a key (local secret or token digest); once a checker found
    the key it matches, :meth:`listener_proof` answers it."""

    def __init__(self, transcript: Transcript, proof: str) -> None:
        self.transcript = transcript
        self.proof = proof
        self._key: bytes | None = None

    def matches(self, key: bytes) -> bool:
        expected = handshake.key_proof(key, self.transcript, "dialler")
        if handshake.same(expected, self.proof):
            self._key = key
            return True
        return False

    def listener_proof(self) -> str:
        if self._key is None:
            raise ValueError("no key matched this proof")
        return handshake.key_proof(self._key, self.transcript, "listener")


@implementer(ISecretProof)
class SecretProof(KeyProof):
    pass


@implementer(ITokenProof)
class TokenProof(KeyProof):
    pass


@implementer(IPasswordProof)
class PasswordProof:
    def __init__(self, user: str, transcript: Transcript, proof: str) -> None:
        self.user = user
        self.transcript = transcript
        self.proof = proof
        self.answer = ""  # the listener's proof, set by the checker on success

    def listener_proof(self) -> str:
        return self.answer


@implementer(ICertificateCredentials)
@dataclass(frozen=True)
class CertificateCredentials:
    name: str

    def listener_proof(self) -> str:
        return ""  # the TLS handshake proved the listener's certificate


# --- checkers


def _lines(path: str, what: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the {what} file {path}: {e}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _refused(why: str) -> defer.Deferred[Any]:
    return defer.fail(cred_error.UnauthorizedLogin(why))


@implementer(ICredentialsChecker)
class LocalSecretChecker:
    """Peers that prove this OS user's local secret are this user's own processes."""

    credentialInterfaces = (ISecretProof,)  # noqa: N815 - twisted.cred's name

    def __init__(self, secret: bytes, user: str) -> None:
        self._secret = secret
        self.user = user

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        if credentials.matches(self._secret):
            return defer.succeed(self.user)
        return _refused("local secret does not match")


def token_key(token: str) -> bytes:
    """The key a token's proofs are made with (what a tokens file's checker keeps)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@implementer(ICredentialsChecker)
class TokenFileChecker:
    """Shared tokens: a file of ``USER TOKEN`` lines (``#`` starts a comment)."""

    credentialInterfaces = (ITokenProof,)  # noqa: N815 - twisted.cred's name

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: list[tuple[str, bytes]] = []
        for number, line in _lines(path, "tokens"):
            user, _, token = line.partition(" ")
            token = token.strip()
            if not user or len(token) < 16:
                raise ValueError(
                    f"{path}:{number}: a tokens line is 'USER TOKEN' with a token of at least "
                    "16 characters (e.g. from `python -c 'import secrets; "
                    "print(secrets.token_urlsafe())'`)"
                )
            self._entries.append((user, token_key(token)))

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        found = None
        for user, key in self._entries:  # no early exit: every entry costs the same
            if credentials.matches(key) and found is None:
                found = user
        if found is None:
            return _refused("unknown token")
        return defer.succeed(found)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The ``scram-scrypt$N$r$p$SALT$STOREDKEY$SERVERKEY`` line a passwords file keeps.

    It lets a node check a login and prove itself to the user, but not log in as
    the user (the password's salted hash is not in it)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = handshake.salted_password(
        password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P
    )
    v = PasswordVerifier.from_salted(salted, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return "$".join((
        _PREFIX, str(v.n), str(v.r), str(v.p), b64(v.salt).decode(),
        b64(v.stored_key).decode(), b64(v.server_key).decode(),
    ))


def parse_password_line(text: str) -> PasswordVerifier:
    """A passwords file's hash (this format, or the older ``scrypt$`` salted hash)."""
    parts = text.split("$")
    if parts[0] == _PREFIX and len(parts) == 7:
        _, n, r, p, salt, stored, server = parts
        keys = (base64.b64decode(stored), base64.b64decode(server))
        if any(len(k) != 32 for k in keys):
            raise ValueError("stored and server keys must be 32 bytes")
    elif parts[0] == _LEGACY_PREFIX and len(parts) == 6:
        _, n, r, p, salt, salted = parts
        keys = None
    else:
        raise ValueError(f"unknown password hash scheme {parts[0]!r}")
    params = {"n": int(n), "r": int(r), "p": int(p)}
    for name, value in params.items():
        low, high = handshake.SCRYPT_LIMITS[name]
        if not low <= value <= high:
            raise ValueError(f"scrypt {name}={value} out of range")
    salt_bytes = base64.b64decode(salt)
    if keys is None:
        return PasswordVerifier.from_salted(base64.b64decode(salted), salt_bytes, **params)
    return PasswordVerifier(params["n"], params["r"], params["p"], salt_bytes, *keys)


def check_password(password: str, line: str) -> bool:
    """Whether ``password`` is the one a passwords-file line was made from (slow: scrypt)."""
    v = parse_password_line(line)
    salted = handshake.salted_password(password.encode("utf-8"), v.salt, v.n, v.r, v.p)
    return hmac.compare_digest(
        PasswordVerifier.from_salted(salted, v.salt, v.n, v.r, v.p).stored_key, v.stored_key
    )


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """Passwords: a file of ``USER:scram-scrypt$...`` lines (see :func:`hash_password`)."""

    credentialInterfaces = (IPasswordProof,)  # noqa: N815

    def __init__(self, path: str) -> None:
        self.path = path
        self._verifiers: dict[str, PasswordVerifier] = {}
        for number, line in _lines(path, "passwords"):
            user, _, stored = line.partition(":")
            try:
                self._verifiers[user] = parse_password_line(stored)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{path}:{number}: a passwords line is 'USER:scram-scrypt$...' as printed "
                    f"by `yotonnet passwd USER` ({e})"
                ) from None
        # Unknown users get a challenge as plausible as a real one (salt fixed per user,
        # so asking twice tells nothing) and a proof that can never match.
        self._decoy_key = os.urandom(32)

    def _verifier(self, user: str) -> PasswordVerifier:
        found = self._verifiers.get(user)
        if found is not None:
            return found
        salt = hmac.new(self._decoy_key, user.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()[:16]
        return PasswordVerifier(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, os.urandom(32),
                                os.urandom(32))

    def challenge(self, user: str) -> Challenge:
        v = self._verifier(user)
        return Challenge(v.salt, v.n, v.r, v.p)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        user = credentials.user
        verifier = self._verifier(user)
        if user in self._verifiers and verifier.check(
            credentials.transcript, user, credentials.proof
        ):
            credentials.answer = verifier.server_proof(credentials.transcript, user)
            return defer.succeed(user)
        return _refused("wrong user or password")


@implementer(ICredentialsChecker)
class CertificateChecker:
    """A TLS client certificate (chain checked by OpenSSL against the CA) names the user."""

    credentialInterfaces = (ICertificateCredentials,)  # noqa: N815

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        return defer.succeed(credentials.name)


@implementer(IRealm)
class Realm:
    """Turns an authenticated user name into an :class:`Identity` with its roles."""

    def __init__(self, roles: Mapping[str, Iterable[str]], nodes: Iterable[str]) -> None:
        self.roles = {user: frozenset(r) for user, r in roles.items()}
        self.nodes = frozenset(nodes)

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802
        if IIdentity not in interfaces:
            raise NotImplementedError("yotonnet's realm only gives IIdentity avatars")
        user = avatar_id.decode("utf-8") if isinstance(avatar_id, bytes) else str(avatar_id)
        method = getattr(mind, "method", "token") if mind is not None else "token"
        # A local-secret peer is this node's own OS user: trusted like a mesh node.
        node = method == handshake.SECRET or user in self.nodes
        identity = Identity(user, self.roles.get(user, frozenset()), node, method)
        return IIdentity, identity, lambda: None


@dataclass
class _Mind:
    method: str


def login(portal: Portal, credentials: Any, method: str) -> Identity | str:
    """Log in: the Identity, or a refusal text for the peer.

    Every checker here answers at once (no secret needs slow work on this side),
    so the result is returned rather than a Deferred."""
    outcome: list[Any] = []
    portal.login(credentials, _Mind(method), IIdentity).addCallbacks(
        lambda avatar: outcome.append(avatar[1]),
        lambda failure: outcome.append(_refusal(failure, method)),
    )
    if not outcome:  # a checker that does answer later: not one of ours
        raise RuntimeError("a yotonnet checker must answer at once")
    return outcome[0]


_REFUSALS = {
    handshake.SECRET: "the local secret does not match (this node runs as another OS user, "
    "whose secret you cannot read); ask the node's operator for a token (--token-file) or a "
    "password (--login, --password-file)",
    handshake.TOKEN: "unknown token",
    handshake.PASSWORD: "wrong user or password",
    handshake.CERTIFICATE: "certificate user not accepted",
}


def _refusal(failure: Any, method: str) -> str:
    if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
        return "authentication failed: " + _REFUSALS.get(method, "refused")
    return f"authentication error: {failure.getErrorMessage()}"
