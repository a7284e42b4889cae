"""Authentication with twisted.cred: who is the peer of a link?

A dialling peer puts its credentials in its HELLO (``"auth": {"token": ...}``
or ``{"user": ..., "password": ...}``); a peer on a TLS link may instead be
known by its client certificate (its common name, the chain already checked
against the CA by OpenSSL). The listener asks a ``Portal`` with these
checkers:

* :class:`TokenFileChecker`: a file of ``USER TOKEN`` lines (shared tokens);
* :class:`PasswordFileChecker`: a file of ``USER:scrypt$...`` lines
  (:func:`hash_password` makes them; ``yotonnet passwd`` prints one);
* :class:`CertificateChecker`: the verified certificate's common name.

Every comparison of a secret is constant-time (``hmac.compare_digest`` over
digests of equal length, and an scrypt of a dummy hash for an unknown user),
so timing tells an attacker nothing about a near miss. The avatar is an
:class:`Identity`: the user, its roles, and whether it is a mesh node.

A password check costs one scrypt (tens of milliseconds, by design): on a
reactor with threads it runs in the reactor's thread pool, so logging in, or
a stream of wrong passwords, never stalls the node's other links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.cred import credentials as cred_credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from zope.interface import Attribute, Interface, implementer

#: scrypt cost: about 16 MiB and a few tens of milliseconds per check
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


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


class ITokenCredentials(Interface):
    token = Attribute("the shared token, bytes")


@implementer(ITokenCredentials)
@dataclass(frozen=True)
class TokenCredentials:
    token: bytes


class ICertificateCredentials(Interface):
    name = Attribute("the common name of a TLS peer certificate the CA has signed")


@implementer(ICertificateCredentials)
@dataclass(frozen=True)
class CertificateCredentials:
    name: str


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


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


@implementer(ICredentialsChecker)
class TokenFileChecker:
    """Shared tokens: a file of ``USER TOKEN`` lines (``#`` starts a comment)."""

    credentialInterfaces = (ITokenCredentials,)  # noqa: N815 - twisted.cred's name

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
            self._entries.append((user, _digest(token.encode("utf-8"))))

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        given = _digest(credentials.token)
        found = None
        for user, digest in self._entries:  # no early exit: every entry costs the same
            if hmac.compare_digest(given, digest) and found is None:
                found = user
        if found is None:
            return defer.fail(cred_error.UnauthorizedLogin("unknown token"))
        return defer.succeed(found)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The ``scrypt$N$r$p$SALT$HASH`` form a passwords file stores."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM, dklen=32,
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = text.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    n_, r_, p_ = int(n), int(r), int(p)
    if not (2 <= n_ <= 2**20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
        raise ValueError("scrypt parameters out of range")
    return n_, r_, p_, base64.b64decode(salt), base64.b64decode(digest)


def verify_password(password: bytes, stored: str) -> bool:
    n, r, p, salt, digest = _parse_hash(stored)
    computed = hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(digest)
    )
    return hmac.compare_digest(computed, digest)


_DUMMY_HASH = hash_password("not a password", salt=b"\0" * 16)


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """Hashed passwords: a file of ``USER:scrypt$N$r$p$SALT$HASH`` lines."""

    credentialInterfaces = (cred_credentials.IUsernamePassword,)  # noqa: N815

    def __init__(self, path: str, reactor: Any = None) -> None:
        self.path = path
        #: checks run in this reactor's thread pool (at once if it has none, e.g. a test clock)
        self.reactor = reactor
        self._hashes: dict[str, str] = {}
        for number, line in _lines(path, "passwords"):
            user, _, stored = line.partition(":")
            try:
                _parse_hash(stored)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{path}:{number}: a passwords line is 'USER:scrypt$...' as printed by "
                    f"`yotonnet passwd USER` ({e})"
                ) from None
            self._hashes[user] = stored

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # noqa: N802
        user = credentials.username
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        stored = self._hashes.get(user)
        reactor = self.reactor
        if reactor is not None and IReactorThreads.providedBy(reactor):
            d = threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), self._check, user, password, stored
            )
        else:
            d = defer.maybeDeferred(self._check, user, password, stored)
        return d

    @staticmethod
    def _check(user: str, password: bytes, stored: str | None) -> str:
        # An unknown user costs one scrypt too, so timing does not reveal who exists.
        ok = verify_password(password, stored or _DUMMY_HASH) and stored is not None
        if not ok:
            raise cred_error.UnauthorizedLogin("wrong user or password")
        return user


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
        identity = Identity(
            user, self.roles.get(user, frozenset()), user in self.nodes, method
        )
        return IIdentity, identity, lambda: None


@dataclass
class _Mind:
    method: str


def login(portal: Portal, credentials: Any, method: str) -> defer.Deferred[Identity | str]:
    """Log in: fires with the Identity, or with a refusal text for the peer (never fails).

    Tokens and certificates answer at once; a password check may take a thread."""
    d = portal.login(credentials, _Mind(method), IIdentity)
    return d.addCallbacks(lambda avatar: avatar[1], lambda failure: _refusal(failure, method))


def _refusal(failure: Any, method: str) -> str:
    if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
        return "authentication failed: " + {
            "token": "unknown token",
            "password": "wrong user or password",
            "certificate": "certificate user not accepted",
        }.get(method, "refused")
    return f"authentication error: {failure.getErrorMessage()}"
