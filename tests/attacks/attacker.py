"""A local attacker: another OS user with the standard library and yotonnet's docs.

Run as ``nobody`` by tests/asuser.py; prints one line per finding, ``up ...`` or
``refused: ...``, and exits 0 however the attack went (the test judges).

    attacker.py link ADDRESS [METHOD]   handshake as a yotonnet node (secret/none/token:T)
    attacker.py yoton HOST PORT         introduce itself as a Yoton context
    attacker.py secret PATH             try to read the node owner's local secret

ADDRESS is HOST:PORT or a unix socket path.
"""

from __future__ import annotations

import os
import random
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rawwire  # noqa: E402


def address(text: str):
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host, int(port)


def link(target: str, method: str = "none") -> None:
    token = None
    if method.startswith("token:"):
        method, token = "token", method[len("token:"):]
    dialler = rawwire.Dialler(random.getrandbits(63) | 1, "attacker", method, token=token)
    try:
        peer = rawwire.SocketPeer(address(target), dialler)
    except OSError as e:
        print(f"refused: cannot connect: {e}")
        return
    try:
        peer.handshake()
    except rawwire.Refused as e:
        print(f"refused: {e}")
        return
    except OSError as e:
        print(f"refused: connection error: {e}")
        return
    print(f"up as {dialler.welcome!r}")
    peer.close()


def yoton(host: str, port: str) -> None:
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(f"YOTON!{random.getrandbits(63) | 1:016x}.{os.getpid()}\r\n".encode())
    data = b""
    try:
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    line = data.split(b"\n")[0].decode("utf-8", "replace").strip()
    print(("refused: " if line.startswith("ERROR") or not line else "up ") + line)


def secret(path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read()
        print("secret: READ")
    except OSError as e:
        print(f"secret: none readable ({e.strerror})")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"link": link, "yoton": yoton, "secret": secret}[command](*rest)
