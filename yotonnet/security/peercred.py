"""Which OS user owns the other end of a local connection?

For peers that cannot prove anything themselves (Yoton contexts: their
protocol has no credentials), the kernel can still tell who they are when
they are on this host: a unix socket carries its peer's credentials
(``SO_PEERCRED``), and Linux lists the owner of every TCP socket in
``/proc/net/tcp`` and ``/proc/net/tcp6``, where the peer's end of a
loopback connection is the line whose local address is the peer's and
whose remote address is ours. Anything else (another host, another OS)
gives None: unknown, so not this user.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

__all__ = ["peer_uid", "is_loopback"]


def is_loopback(transport: Any) -> bool:
    """Whether ``transport`` reaches a peer on this host: a loopback IP address, a unix
    socket or an in-process transport (nothing there crosses a network)."""
    try:
        peer = transport.getPeer()
    except Exception:  # noqa: BLE001 - a transport without addresses is in-process
        return True
    host = getattr(peer, "host", None)
    if not isinstance(host, str) or getattr(peer, "type", None) not in ("TCP", "UDP"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def peer_uid(transport: Any) -> int | None:
    """The uid owning the peer's end of ``transport``, if it is on this host and known."""
    handle = _socket_of(transport)
    if handle is None:
        return None
    if handle.family == socket.AF_UNIX:
        try:
            raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        return struct.unpack("3i", raw)[1]
    try:
        ours = handle.getsockname()[:2]
        theirs = handle.getpeername()[:2]
    except OSError:
        return None
    if not ipaddress.ip_address(theirs[0].split("%")[0]).is_loopback:
        return None
    table = "/proc/net/tcp6" if handle.family == socket.AF_INET6 else "/proc/net/tcp"
    return _owner(table, theirs, ours, handle.family)


def _socket_of(transport: Any) -> socket.socket | None:
    get = getattr(transport, "getHandle", None)
    if get is None:
        return None
    try:
        handle = get()
    except Exception:  # noqa: BLE001 - not a socket transport
        return None
    return handle if isinstance(handle, socket.socket) else None


def _hex_address(address: tuple[str, int], family: int) -> str:
    """An address as /proc/net/tcp writes it: host in kernel byte order, then the port."""
    packed = socket.inet_pton(family, address[0].split("%")[0])
    words = [packed[i:i + 4] for i in range(0, len(packed), 4)]
    host = "".join(w[::-1].hex().upper() for w in words)
    return f"{host}:{address[1]:04X}"


def _owner(table: str, local: tuple[str, int], remote: tuple[str, int], family: int) -> int | None:
    want = (_hex_address(local, family), _hex_address(remote, family))
    try:
        with open(table, encoding="ascii") as f:
            next(f, None)  # the header line
            for line in f:
                fields = line.split()
                if len(fields) > 7 and (fields[1], fields[2]) == want:
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None
