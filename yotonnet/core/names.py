"""Channel names and channel ids.

Sans-IO. A channel is named by a dotted name (``kernel.stdout``) and a pattern
(``pubsub``, ``reqrep``, ``state``); its id on the wire is a 64-bit hash of
both, so every node derives the same id without negotiation and a forwarding
node routes on it without knowing the name.
"""

from __future__ import annotations

import hashlib
import re

#: "latest" is the pub/sub flow to ``latest`` subscribers, apart from the lossless one
PATTERNS = ("pubsub", "latest", "reqrep", "state")
MAX_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*\Z")


def validate_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid dotted channel name, else raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"channel name must be a str, not {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"channel name is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    if not _NAME.match(name):
        raise ValueError(
            f"invalid channel name {name!r}: use dotted words of letters, digits, '_' or '-', "
            "each starting with a letter or '_' (for example 'kernel.stdout')"
        )
    return name


def channel_id(pattern: str, name: str) -> int:
    """The 64-bit wire id of channel ``name`` with ``pattern``; never 0."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown channel pattern {pattern!r}")
    digest = hashlib.blake2b(f"{pattern}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


#: the longest node name a peer may announce (HELLO, routing records)
MAX_NODE_NAME = 100


def check_peer_name(name: object, what: str = "node name") -> str:
    """Return ``name`` if a peer may announce it (a str of printable characters, at most
    :data:`MAX_NODE_NAME` long), else raise ValueError saying what is wrong.

    Names travel to terminals, logs and web pages, so control characters (terminal
    escapes, newlines that fake log lines) are refused at the door."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a str, not {type(name).__name__}")
    if len(name) > MAX_NODE_NAME:
        raise ValueError(f"{what} is {len(name)} characters long; at most {MAX_NODE_NAME}")
    if not name.isprintable():
        raise ValueError(f"{what} {printable(name)} has non-printable characters")
    return name


def printable(text: object, limit: int = 200) -> str:
    """``text`` made safe for a terminal or a log line: non-printable characters as
    escapes (``\\x1b``), cut to ``limit`` characters with an ellipsis."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text
