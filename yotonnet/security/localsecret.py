"""The local secret: what a peer proves to show it runs as this node's OS user.

Loopback and unix sockets are not a trust boundary: on a shared host any OS
user can connect to 127.0.0.1. So a node that has no other authentication
configured does not admit a peer for being local; it admits a peer that
proves it can read a secret only this OS user can read, the way Jupyter
protects a local kernel with the key in a 0600 connection file.

The secret is 32 random bytes, written as 64 hex characters to a file of mode
0600 in a directory of mode 0700:

* ``$YOTONNET_SECRET_FILE`` when set (a service with an unusual home);
* else ``$XDG_RUNTIME_DIR/yotonnet/secret`` when that runtime directory exists
  and belongs to this user;
* else ``$XDG_DATA_HOME/yotonnet/secret`` (``~/.local/share/yotonnet/secret``).

One secret per OS user and host, shared by all of that user's nodes, so any
context of the same user (another node, the CLI, a script) finds it without
being told where. It never travels: peers prove they know it with an HMAC
over fresh nonces (:mod:`yotonnet.core.handshake`). A file or directory that other
users could read or write is refused with an error saying how to fix it,
never silently used.
"""

from __future__ import annotations

import os
import secrets
import stat

__all__ = ["LocalSecretError", "secret_path", "read_secret", "ensure_secret"]

ENV_FILE = "YOTONNET_SECRET_FILE"
#: bytes of randomness in a new secret (written as twice as many hex characters)
SECRET_BYTES = 32


class LocalSecretError(Exception):
    """The secret file exists but cannot be used safely; the message says how to fix it."""


def secret_path() -> str:
    """Where this OS user's secret lives (it may not exist yet)."""
    explicit = os.environ.get(ENV_FILE)
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _owned_dir(runtime):
        return os.path.join(runtime, "yotonnet", "secret")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data, "yotonnet", "secret")


def _owned_dir(path: str) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _check_private(path: str, info: os.stat_result, what: str, fix: str) -> None:
    if info.st_uid != os.getuid():
        raise LocalSecretError(
            f"the local secret {what} {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}); remove it, or set {ENV_FILE} to a file of your own"
        )
    if info.st_mode & 0o077:
        raise LocalSecretError(
            f"the local secret {what} {path} has mode {stat.S_IMODE(info.st_mode):04o}, so "
            f"other users could use it; run `{fix}` (it must be private to its owner)"
        )


def read_secret(path: str | None = None) -> bytes | None:
    """This user's secret, or None when there is none (or it cannot be read).

    Raises :class:`LocalSecretError` when the file exists but is not private."""
    path = path or secret_path()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        _check_private(path, info, "file", f"chmod 600 {path}")
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < 32:
        raise LocalSecretError(
            f"the local secret file {path} is too short ({len(data)} bytes); remove it and a "
            "node makes a new one when it starts"
        )
    return data


def ensure_secret(path: str | None = None) -> tuple[bytes, str, bool]:
    """This user's secret, made first if there is none: (secret, path, created)."""
    path = path or secret_path()
    found = read_secret(path)
    if found is not None:
        return found, path, False
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dir_info = os.stat(directory)
    except OSError as e:
        raise LocalSecretError(
            f"cannot make the directory {directory} for the local secret: {e.strerror or e}; "
            f"set {ENV_FILE} to a path this user may write"
        ) from None
    _check_private(directory, dir_info, "directory", f"chmod 700 {directory}")
    value = secrets.token_hex(SECRET_BYTES).encode("ascii")
    # Written under a temporary name, then linked into place: two nodes starting at
    # once both end up with the same secret (the loser reads the winner's).
    temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value + b"\n")
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise LocalSecretError(f"cannot write the local secret {path}: {e.strerror or e}") from None
    finally:
        os.unlink(temp)
    if not created:
        found = read_secret(path)
        if found is None:
            raise LocalSecretError(f"the local secret {path} vanished while it was being made")
        return found, path, False
    return value, path, True
