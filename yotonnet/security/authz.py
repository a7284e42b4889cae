"""Authorization: which user may do which operation on which channel names.

Sans-IO, pure data. A :class:`Policy` is a list of :class:`Rule`\\ s, each
granting ``operations`` on channel-name patterns to users or roles::

    Rule(who=("role:admin",), channels=("*",), operations=OPERATIONS)
    Rule(who=("alice",), channels=("kernel.*",), operations=("call", "subscribe"))

``who`` entries are a user name, ``role:NAME`` or ``*`` (any authenticated
user). Channel patterns are shell-style (``fnmatch``): ``*`` matches any
characters, dots included, so ``kernel.*`` covers ``kernel.stdout`` and
``kernel.a.b``. A policy with no rules allows everything (authentication is
then the only gate); once there is a rule, whatever no rule grants is denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

PUBLISH, SUBSCRIBE, CALL, SERVE, SET_STATE = "publish", "subscribe", "call", "serve", "set-state"
OPERATIONS = (PUBLISH, SUBSCRIBE, CALL, SERVE, SET_STATE)


class _Who(Protocol):
    user: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Rule:
    who: tuple[str, ...]
    channels: tuple[str, ...]
    operations: tuple[str, ...]

    def __post_init__(self) -> None:
        for op in self.operations:
            if op not in OPERATIONS:
                raise ValueError(
                    f"unknown operation {op!r}; operations are {', '.join(OPERATIONS)}"
                )
        if not self.who or not self.channels or not self.operations:
            raise ValueError("a permission rule needs who, channels and operations (non-empty)")

    def matches(self, identity: _Who, operation: str, channel: str) -> bool:
        if operation not in self.operations:
            return False
        if not any(_is(identity, who) for who in self.who):
            return False
        return any(fnmatchcase(channel, pattern) for pattern in self.channels)


def _is(identity: _Who, who: str) -> bool:
    if who == "*":
        return True
    if who.startswith("role:"):
        return who[5:] in identity.roles
    return who == identity.user


class Policy:
    """The rules of one node; :meth:`allows` answers one question."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def allows(self, identity: _Who, operation: str, channel: str) -> bool:
        if not self.rules:
            return True
        return any(rule.matches(identity, operation, channel) for rule in self.rules)

    def denial(self, identity: _Who, operation: str, channel: str) -> str:
        return (
            f"permission denied: user {identity.user!r} may not {operation} on channel "
            f"{channel!r}"
        )
