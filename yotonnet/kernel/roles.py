"""Who may do what on a shared kernel: roles as a pluggable function of the caller.

A :class:`Caller` is who a request comes from. The broker takes the user
from the mesh's authentication of the calling node (the local secret of an
OS user, a token, a password or a client certificate: :mod:`yotonnet.security.guard`),
never from what the client claims: a claim from a node nobody vouches for
(an anonymous peer) becomes ``NAME (unverified)``, which no rule names, so
it gets the default role. The broker's ``role_of`` argument is any
``Callable[[Caller], str]`` returning ``"owner"``, ``"collaborator"`` or
``"viewer"`` (e.g. :func:`table_roles`); every operation goes through
:func:`check`. With no rules only the owner may run code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import PermissionDenied

OWNER = "owner"
COLLABORATOR = "collaborator"
VIEWER = "viewer"
ROLES = (OWNER, COLLABORATOR, VIEWER)

#: operation -> the roles allowed to do it (input() answers go to the runner only)
PERMISSIONS: dict[str, frozenset[str]] = {
    "attach": frozenset(ROLES),
    "detach": frozenset(ROLES),
    "history": frozenset(ROLES),
    "complete": frozenset(ROLES),
    "inspect": frozenset(ROLES),
    "kernel_info": frozenset(ROLES),
    "execute": frozenset((OWNER, COLLABORATOR)),
    "interrupt": frozenset((OWNER, COLLABORATOR)),
    "restart": frozenset((OWNER,)),
    "shutdown": frozenset((OWNER,)),
}


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a user name and the id of their client (one console)."""

    user: str
    client: str
    #: True when the security layer proved the user (see KernelBroker), not just claimed
    verified: bool = False
    #: the client's node id (0: not given); the broker watches it to see a client vanish
    node: int = 0

    @classmethod
    def from_wire(cls, value: Any) -> Caller:
        if not isinstance(value, dict):
            raise ValueError(f"a caller is a dict with 'user' and 'client', not {value!r}")
        user, client = value.get("user"), value.get("client")
        if not isinstance(user, str) or not user or len(user) > 200:
            raise ValueError(f"caller 'user' must be a non-empty str (<= 200), not {user!r}")
        if not isinstance(client, str) or not client or len(client) > 100:
            raise ValueError(f"caller 'client' must be a non-empty str (<= 100), not {client!r}")
        node = value.get("node", 0)
        if type(node) is not int or not 0 <= node < 1 << 64:
            raise ValueError(f"caller 'node' must be a 64-bit node id, not {node!r}")
        return cls(user, client, node=node)

    def to_wire(self) -> dict[str, Any]:
        return {"user": self.user, "client": self.client, "node": self.node}


RolePolicy = Callable[[Caller], str]


UNVERIFIED = " (unverified)"


def default_user() -> str:
    """``user@host`` of this process: who the mesh knows this user's own processes as
    (they prove the user's local secret), so the default owner of a kernel."""
    from ..security.auth import local_identity

    return local_identity()


def unverified(claim: str) -> str:
    """The name a claim nobody vouched for is shown by (no rule can name it)."""
    return claim if claim.endswith(UNVERIFIED) else claim + UNVERIFIED


def default_roles(owner: str) -> RolePolicy:
    """The default policy: ``owner`` (the kernel's starter) is owner, anyone else a
    viewer: with no rules, only the owner runs code."""

    def role_of(caller: Caller) -> str:
        return OWNER if caller.user == owner and caller.verified else VIEWER

    return role_of


def table_roles(owner: str, roles: dict[str, str], default: str = VIEWER) -> RolePolicy:
    """A fixed table user -> role; others get ``default``; ``owner`` is always owner."""
    for user, role in roles.items():
        if role not in ROLES:
            raise ValueError(f"role of {user!r} must be one of {ROLES}, not {role!r}")
    if default not in ROLES:
        raise ValueError(f"default role must be one of {ROLES}, not {default!r}")

    def role_of(caller: Caller) -> str:
        if caller.user == owner and caller.verified:
            return OWNER
        return roles.get(caller.user, default) if caller.verified else default

    return role_of


def check(role_of: RolePolicy, caller: Caller, operation: str) -> str:
    """The caller's role if it may do ``operation``; else :class:`PermissionDenied`."""
    role = role_of(caller)
    if role not in ROLES:
        raise PermissionDenied(f"role policy returned {role!r} for {caller.user!r}; "
                               f"expected one of {ROLES}")
    allowed = PERMISSIONS.get(operation)
    if allowed is None:
        raise PermissionDenied(f"unknown kernel operation {operation!r}")
    if role not in allowed:
        raise PermissionDenied(
            f"{caller.user!r} is a {role} of this kernel and may not {operation}; "
            f"that needs one of: {', '.join(sorted(allowed))}"
        )
    return role
