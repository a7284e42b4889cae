"""Security settings of a context: TLS files, credentials, users, permissions, limits.

A :class:`Security` is plain data handed to ``Context(security=...)`` (or read
from the ``[security]`` table of the TOML config, see :func:`parse_table`).
What it means at run time is :mod:`yotonnet.security.guard`'s job; TLS endpoints are
:mod:`yotonnet.security.tls`'s, checkers :mod:`yotonnet.security.auth`'s, rules
:mod:`yotonnet.security.authz`'s.

Closed by default, loopback included: every listener admits peers that
prove this OS user's local secret (:mod:`yotonnet.security.localsecret`: the user's
own processes, found with no configuration) and those that log in with a
configured token, password or TLS client certificate; nobody else.
``allow_anonymous`` is the explicit, loudly logged opt-out: peers that prove
nothing are admitted too (as clients, or as nodes in an anonymous mesh, one
whose nodes configure no logins at all).

The ``[security]`` table::

    [security]
    tokens = "tokens.txt"        # USER TOKEN lines: peers may log in with a token
    passwords = "passwords.txt"  # USER:scram-scrypt$... lines (`yotonnet passwd USER`)
    cert_auth = true             # a TLS client certificate's common name is its user
    tls_ca = "certs/ca.pem"      # tls: endpoints: CA, certificate and key
    tls_cert = "certs/a.pem"
    tls_key = "certs/a.key"
    tls_client_cert = "required" # or "optional" (then peers log in with a token)
    nodes = ["b", "c"]           # users that are mesh nodes (relay, identities trusted)
    token_file = "my.token"      # credentials this node dials with
    user = "a"                   # with password_file, or alone on a TLS link
    password_file = "my.password"
    secret_file = "/run/yotonnet/secret"  # the local secret's file, if not the default
    max_links = 1024
    max_channels_per_link = 1000
    max_pending_per_link = 1000
    max_denied_per_link = 1000

    [security.roles]             # user -> roles
    alice = ["admin"]

    [[security.permissions]]     # none: every authenticated user may do everything
    who = ["role:admin"]
    channels = ["*"]
    operations = ["publish", "subscribe", "call", "serve", "set-state"]
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from .authz import OPERATIONS, Policy, Rule
from .tls import TLSFiles

__all__ = ["Security", "SecurityError", "parse_table", "OPERATIONS"]


class SecurityError(ValueError):
    """A security setting is wrong; the message names it."""


class DialCredentials(NamedTuple):
    """What a context proves when it dials: a token, or a user and password (or neither)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None


@dataclass
class Security:
    # --- who may link here (listener side)
    tokens: str | None = None
    passwords: str | None = None
    cert_auth: bool = True
    allow_anonymous: bool = False
    roles: dict[str, list[str]] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    permissions: list[Rule] = field(default_factory=list)
    # --- TLS
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_cert: str = "required"
    # --- credentials this context dials with
    token: str | None = None
    token_file: str | None = None
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    #: the local secret's file (default: see yotonnet.localsecret.secret_path)
    secret_file: str | None = None
    # --- limits
    max_links: int = 1024
    max_channels_per_link: int = 1000
    max_pending_per_link: int = 1000
    #: claims a client may be denied before its link is cut (each is an error for it)
    max_denied_per_link: int = 1000

    def tls_files(self) -> TLSFiles:
        return TLSFiles(
            self.tls_ca, self.tls_cert, self.tls_key, self.tls_client_cert != "optional"
        )

    @property
    def checks_logins(self) -> bool:
        """Whether listeners take configured logins (tokens, passwords, certificates)."""
        return bool(self.tokens or self.passwords or (self.cert_auth and self.tls_ca))

    @property
    def authenticates(self) -> bool:
        """Whether every peer must prove who it is (no anonymous peers)."""
        return not self.allow_anonymous

    @property
    def anonymous_mesh(self) -> bool:
        """Anonymous peers are nodes here: anonymous peers are allowed and this node
        neither checks logins nor logs in anywhere itself."""
        return self.allow_anonymous and not self.checks_logins and not self.has_credentials

    @property
    def has_credentials(self) -> bool:
        return bool(self.token or self.token_file or self.user)

    def policy(self) -> Policy:
        return Policy(self.permissions)

    def dial_credentials(self) -> DialCredentials:
        """The credentials this context proves when it dials (read from their files)."""
        token = self.token or (_read_secret(self.token_file, "token") if self.token_file else None)
        if token:
            return DialCredentials(token=token)
        if self.user:
            password = self.password or (
                _read_secret(self.password_file, "password") if self.password_file else None
            )
            if password is not None:
                return DialCredentials(user=self.user, password=password)
        return DialCredentials()


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SecurityError(f"cannot read the {what} file {path}: {e}") from None
    if not value:
        raise SecurityError(f"the {what} file {path} is empty")
    return value


_STRINGS = {
    "tokens", "passwords", "tls_ca", "tls_cert", "tls_key", "token_file", "user",
    "password_file", "secret_file",
}
_BOOLS = {"cert_auth", "allow_anonymous"}
_INTS = {"max_links", "max_channels_per_link", "max_pending_per_link", "max_denied_per_link"}
#: keys the config file may set (secrets themselves only through files)
KNOWN_KEYS = (
    sorted(_STRINGS | _BOOLS | _INTS) + ["tls_client_cert", "nodes", "roles", "permissions"]
)


def parse_table(table: dict[str, Any], where: str) -> Security:
    """A :class:`Security` from the ``[security]`` table of a TOML file."""
    sec = Security()
    for key, value in table.items():
        def wrong(expected: str, key: str = key, value: Any = value) -> SecurityError:
            return SecurityError(
                f"{where}: security.{key} must be {expected}, not {type(value).__name__} "
                f"{value!r}"
            )

        if key in _STRINGS:
            if not isinstance(value, str) or not value:
                raise wrong("a non-empty string")
            setattr(sec, key, value)
        elif key in _BOOLS:
            if not isinstance(value, bool):
                raise wrong("true or false")
            setattr(sec, key, value)
        elif key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise wrong("a positive integer")
            setattr(sec, key, value)
        elif key == "tls_client_cert":
            if value not in ("required", "optional"):
                raise wrong("'required' or 'optional'")
            sec.tls_client_cert = value
        elif key == "nodes":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise wrong("a list of user names")
            sec.nodes = list(value)
        elif key == "roles":
            if not isinstance(value, dict) or not all(
                isinstance(r, list) and all(isinstance(x, str) for x in r)
                for r in value.values()
            ):
                raise wrong("a table of user = [role, ...]")
            sec.roles = {user: list(r) for user, r in value.items()}
        elif key == "permissions":
            if not isinstance(value, list):
                raise wrong("an array of tables ([[security.permissions]])")
            sec.permissions = [_rule(item, i, where) for i, item in enumerate(value)]
        else:
            import difflib

            hint = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            raise SecurityError(f"{where}: unknown key 'security.{key}'{also}")
    return sec


def _rule(item: Any, index: int, where: str) -> Rule:
    name = f"{where}: security.permissions[{index}]"
    if not isinstance(item, dict):
        raise SecurityError(f"{name} must be a table with who, channels and operations")
    unknown = set(item) - {"who", "channels", "operations"}
    if unknown:
        raise SecurityError(f"{name}: unknown key {sorted(unknown)[0]!r}")
    values = []
    for key in ("who", "channels", "operations"):
        value = item.get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value
        ):
            raise SecurityError(f"{name}.{key} must be a non-empty list of strings")
        values.append(tuple(value))
    try:
        return Rule(*values)
    except ValueError as e:
        raise SecurityError(f"{name}: {e}") from None


def merge(base: Security, **overrides: Any) -> Security:
    """``base`` with every override that is not None (command-line flags over the file)."""
    names = {f.name for f in fields(Security)}
    values = {f.name: getattr(base, f.name) for f in fields(Security)}
    for key, value in overrides.items():
        if key not in names:
            raise TypeError(f"unknown security setting {key!r}")
        if value is not None:
            values[key] = value
    return Security(**values)
