"""An attacker that floods a node with control traffic, in its own process.

Standard library and tests/rawwire.py only: the frames are written by hand.
Prints one line per finding and exits 0 however the attack went (the test
judges)::

    control_flood.py big HOST:PORT TOKEN SIZE...
        log in with TOKEN; per SIZE (bytes), on a fresh connection, send a CONTROL
        frame of that size made of empty lists, in 64 KiB pieces, reading between
        them; print "closed SIZE <the node's ERROR text>" or "open SIZE"
    control_flood.py announce HOST:PORT TOKEN COUNT
        log in with TOKEN (a trusted node user), announce COUNT fake nodes in one
        go (a record of our own listing them, each listing us back, each with a
        channel), print "sent COUNT BYTES", then hold the link, answering pings,
        until stdin closes; print "closed <ERROR text>" if the node hangs up
"""

from __future__ import annotations

import os
import random
import select
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rawwire  # noqa: E402

PIECE = 65536


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def login(target: str, token: str, name: str) -> rawwire.SocketPeer:
    dialler = rawwire.Dialler(random.getrandbits(62) + 1, name, "token", token=token)
    peer = rawwire.SocketPeer(address(target), dialler)
    peer.handshake()
    return peer


def error_text(frames: list[tuple]) -> str | None:
    for f in frames:
        if f[0] == rawwire.ERROR:
            return f[7].decode("utf-8", "replace")
    return None


def empty_lists_frame(size: int) -> bytes:
    """A CONTROL frame of ``size`` bytes: one list of empty lists (5 bytes each)."""
    n = (size - rawwire.HEADER.size - 5) // 5
    payload = b"l" + struct.pack("<I", n) + b"l\0\0\0\0" * n
    return rawwire.frame(rawwire.CONTROL, payload)


def big(target: str, token: str, *sizes: str) -> None:
    for text in sizes:
        size = int(text)
        peer = login(target, token, "flooder")
        data = empty_lists_frame(size)
        seen: list[tuple] = []
        try:
            for at in range(0, len(data), PIECE):
                peer.send(data[at:at + PIECE])
                seen += peer.read_for(0.05)
                if error_text(seen) is not None:
                    break
            seen += peer.read_for(1.0)
        except OSError as e:
            print(f"closed {len(data)} connection error: {e}", flush=True)
            continue
        finally:
            peer.close()
        why = error_text(seen)
        print(f"closed {len(data)} {why}" if why is not None else f"open {len(data)}",
              flush=True)


def announce(target: str, token: str, count: str) -> None:
    n = int(count)
    peer = login(target, token, "announcer")
    me, node = peer.dialler.node_id, peer.dialler.peer_id
    peer.read_for(0.3)  # the node's records and identities
    base = random.getrandbits(60) << 2
    fakes = [base + i + 1 for i in range(n)]
    frames = [rawwire.control(["node", [me, "announcer", 10**9,
                                        [[node, 1]] + [[f, 1] for f in fakes], []]])]
    for i, fake in enumerate(fakes):
        interests = [[random.getrandbits(63) + 1, "sub", "OBJECT", 1]]
        frames.append(rawwire.control(["node", [fake, f"fake-{i}", 1, [[me, 1]], interests]]))
    data = b"".join(frames)
    peer.send(data)
    print(f"sent {n} {len(data)}", flush=True)
    # Hold the link (the fake nodes stay reachable through it) until stdin closes.
    while True:
        why = error_text(peer.read_for(0.2))
        if why is not None:
            print(f"closed {why}", flush=True)
            break
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break
    peer.close()


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    try:
        {"big": big, "announce": announce}[command](*rest)
    except rawwire.Refused as e:
        print(f"refused: {e}", flush=True)
