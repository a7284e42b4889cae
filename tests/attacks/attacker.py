"""An attacker with the standard library and yotonnet's documentation, nothing else.

Run by the attack tests (tests/test_attacks.py) in a process of its own, as
the OS user ``nobody`` where the attack is a local user's (tests/asuser.py),
writing frames by hand where a yotonnet client would refuse to. It prints
what happened, one ``KEY: value`` line per finding, and exits 0 however the
attack went: the test judges.

    link ADDRESS [AUTH [NAME_JSON]]     handshake as a node (AUTH: none, secret, token:T)
    yoton HOST PORT                     introduce itself as a Yoton context
    secret PATH                         try to read another user's local secret
    impostor PORT SECONDS [CONNECTIONS] hold a port a node left free; print what it is sent
                                        (until SECONDS pass, or CONNECTIONS have ended)
    storm ADDRESS COUNT USER            COUNT password logins with a wrong proof, hanging up
    call ADDRESS AUTH CHANNEL METHOD ARGS_JSON [IDENT_USER]
                                        call a replier (after forging an identity binding)
    spray ADDRESS AUTH CHANNEL COUNT    REPLY frames with guessed request ids at every node
    poison ADDRESS AUTH CHANNEL         one STATE frame with version (2**64-1, 2**64-1)
    credit ADDRESS AUTH CHANNEL SECONDS subscribe, grant itself 2**40 bytes, never read
    credit-paced ADDRESS AUTH CHANNEL SECONDS   ... granting only a quarter window at a time
    claims ADDRESS AUTH COUNT           COUNT claims the node will deny

ADDRESS is HOST:PORT or a unix socket path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rawwire  # noqa: E402


def channel_id(pattern: str, name: str) -> int:
    digest = hashlib.blake2b(f"{pattern}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def address(text: str):
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host, int(port)


def dialler(auth: str, extra: dict | None = None, name: str = "attacker") -> rawwire.Dialler:
    token = None
    method = auth
    if auth.startswith("token:"):
        method, token = "token", auth[len("token:"):]
    return rawwire.Dialler(random.getrandbits(63) | 1, name, method, token=token, extra=extra)


class Session:
    """A logged-in raw peer: what it learns of the mesh, and frames written by hand."""

    def __init__(self, target: str, auth: str, extra: dict | None = None) -> None:
        self.peer = rawwire.SocketPeer(address(target), dialler(auth, extra))
        self.peer.handshake()
        self.me = self.peer.dialler.node_id
        self.hub = self.peer.dialler.peer_id
        self.records: dict[int, list] = {}
        #: node ids the mesh bound to users: clients too, leaves of their nodes included
        self.bound: set[int] = set()
        self.frames: list[tuple] = []

    def listen(self, seconds: float) -> list[tuple]:
        got = self.peer.read_for(seconds)
        for f in got:
            if f[0] == rawwire.CONTROL:
                try:
                    message = rawwire.decode(f[7])
                except Exception:  # noqa: BLE001
                    continue
                if message and message[0] == "node":
                    self.records[message[1][0]] = message[1]
                elif message and message[0] == "ident":
                    self.bound.update(b[0] for b in message[1] if b[1])
        self.frames.extend(got)
        return got

    def send(self, data: bytes) -> None:
        self.peer.send(data)

    def announce(self, interests: list | None = None) -> None:
        """This peer's own routing record: its link to the hub (so replies find it)."""
        self.send(rawwire.control(["node", [self.me, "attacker", 1, [[self.hub, 1]],
                                            interests or []]]))

    def holders(self, channel: int) -> list[int]:
        return [n for n, r in self.records.items() if any(i[0] == channel for i in r[4])]

    def errors(self) -> list[str]:
        return [f[7].decode("utf-8", "replace") for f in self.frames if f[0] == rawwire.ERROR]


def report(key: str, value) -> None:
    print(f"{key}: {value}", flush=True)


# --- the attacks

def link(target: str, auth: str = "none", name_json: str = '"attacker"') -> None:
    try:
        peer = rawwire.SocketPeer(address(target), dialler(auth, name=json.loads(name_json)))
    except OSError as e:
        report("refused", f"cannot connect: {e}")
        return
    try:
        peer.handshake()
    except rawwire.Refused as e:
        report("refused", e)
        return
    except OSError as e:
        report("refused", f"connection error: {e}")
        return
    report("up", peer.dialler.welcome)
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
    report("refused" if line.startswith("ERROR") or not line else "up", line)


def secret(path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read()
        report("secret", "READ")
    except OSError as e:
        report("secret", f"none readable ({e.strerror})")


def impostor(port: str, seconds: str, connections: str = "0") -> None:
    """Hold 127.0.0.1:PORT while the node is down, play its part, keep what arrives; stop
    after ``seconds``, or once ``connections`` (if not 0) have come and gone."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(port)))
    server.listen(8)
    server.settimeout(float(seconds))
    report("listening", port)
    received = b""
    end = time.monotonic() + float(seconds)
    served = 0
    while time.monotonic() < end and not (int(connections) and served >= int(connections)):
        try:
            conn, _ = server.accept()
        except TimeoutError:
            break
        conn.settimeout(1.0)
        node_id = random.getrandbits(63) | 1
        conn.sendall(rawwire.preamble() + rawwire.hello(node_id, "local", {
            "nonce": os.urandom(16).hex(), "accepts": ["secret", "token", "password"]}))
        reader = rawwire.Frames()
        try:
            while time.monotonic() < end:
                data = conn.recv(65536)
                if not data:
                    break
                received += data
                for f in reader.feed(data):
                    if f[0] != rawwire.CONTROL:
                        continue
                    message = rawwire.decode(f[7])
                    report("message", json.dumps(message, default=repr))
                    if message[:2] == ["auth", "password"]:
                        conn.sendall(rawwire.control(
                            ["challenge", "c2FsdHNhbHRzYWx0c2FsdA==", 16384, 8, 1]))
                    elif message[0] == "auth":
                        # Accept whatever it proved, with a proof of our own we cannot make.
                        conn.sendall(rawwire.control(["welcome", "root", "0" * 64]))
        except OSError:
            pass
        conn.close()
        served += 1
    report("received", received.hex())


def storm(target: str, count: str, user: str) -> None:
    done = 0
    for _ in range(int(count)):
        d = rawwire.Dialler(random.getrandbits(63) | 1, "storm", "wrong-password-blind",
                            user=user)
        try:
            s = socket.create_connection(address(target), timeout=5)
            s.sendall(d.greeting() + rawwire.control(["auth", "password", user])
                      + rawwire.control(["auth", "password-proof", os.urandom(32).hex()]))
            time.sleep(0.005)
            s.close()
            done += 1
        except OSError:
            pass
    report("stormed", done)


def call(target: str, auth: str, channel: str, method: str, args_json: str,
         ident_user: str = "") -> None:
    session = Session(target, auth)
    session.listen(0.5)
    if ident_user:
        session.send(rawwire.control(["ident", [[session.me, ident_user, 2**62, session.me]]]))
    cid = channel_id("reqrep", channel)
    session.send(rawwire.control(["claim", "call", "reqrep", channel]))
    session.announce()
    session.listen(0.5)
    holders = session.holders(cid)
    if not holders:
        report("error", f"no replier of {channel} known")
        return
    args = json.loads(args_json)
    req_id = random.getrandbits(62)
    session.send(rawwire.frame(rawwire.REQUEST, b"".join(rawwire.encode(a) for a in args),
                               ext=method.encode(), tag=len(args), channel=cid,
                               source=session.me, dest=holders[0], seq=req_id))
    end = time.monotonic() + 20
    while time.monotonic() < end:
        for f in session.listen(0.2):
            if f[0] == rawwire.REPLY and f[6] == req_id:
                status = f[2]
                body = rawwire.decode(f[7]) if status in (0, 1) else f[7].decode()
                report("reply", json.dumps([status, body], default=repr))
                return
    report("reply", "none")


def spray(target: str, auth: str, channel: str, count: str) -> None:
    session = Session(target, auth)
    cid = channel_id("reqrep", channel)
    session.send(rawwire.control(["claim", "serve", "reqrep", channel]))
    session.announce([[cid, "rep", "OBJECT", 1]])
    session.listen(1.0)
    # Every node, and every context bound to a user (leaves are in no record).
    targets = [n for n in {*session.records, *session.bound} if n != session.me]
    sent = 0
    rounds = 0
    end = time.monotonic() + float(os.environ.get("SPRAY_SECONDS", "3"))
    while time.monotonic() < end:
        rounds += 1
        for node in targets:
            ids = list(range(1, int(count) + 1)) + [random.getrandbits(62) for _ in range(8)]
            for req_id in ids:
                session.send(rawwire.frame(rawwire.REPLY, rawwire.encode("attacker's answer"),
                                           tag=0, channel=cid, source=session.me, dest=node,
                                           seq=req_id))
                sent += 1
        session.listen(0.05)
    report("sprayed", f"{sent} replies at {len(targets)} nodes in {rounds} rounds")
    report("errors", session.errors())


def poison(target: str, auth: str, channel: str) -> None:
    session = Session(target, auth)
    cid = channel_id("state", channel)
    session.send(rawwire.control(["claim", "set-state", "state", channel]))
    session.announce([[cid, "state", "OBJECT", 1]])
    session.listen(0.5)
    top = 2**64 - 1
    body = struct.pack("<QQ", top, top) + rawwire.encode("poisoned")
    # One frame: the node answers it with an ERROR and closes the link, so a second
    # write could meet a closed socket.
    session.send(rawwire.frame(rawwire.STATE, body, tag=0, channel=cid, source=session.me,
                               dest=0))
    session.listen(1.0)
    report("errors", session.errors())


def credit(target: str, auth: str, channel: str, seconds: str, paced: bool = False) -> None:
    session = Session(target, auth, {"window": 1 << 30})
    cid = channel_id("pubsub", channel)
    session.send(rawwire.control(["claim", "subscribe", "pubsub", channel]))
    session.announce([[cid, "sub", "TEXT", 1]])
    if not paced:
        session.send(rawwire.frame(rawwire.CREDIT, channel=cid, source=session.me,
                                   dest=session.hub, seq=1 << 40))
    end = time.monotonic() + float(seconds)
    grants = 0
    while time.monotonic() < end:
        # Never reading: only writing what a greedy subscriber would.
        if paced:
            try:
                session.send(rawwire.frame(rawwire.CREDIT, channel=cid, source=session.me,
                                           dest=session.hub, seq=1 << 18))
                grants += 1
            except OSError:
                break
        time.sleep(0.01)
    report("grants", grants)
    try:
        session.peer.sock.settimeout(0.5)
        session.listen(3.0)
    except OSError as e:
        report("read", f"error {e}")
    report("errors", session.errors())


def claims(target: str, auth: str, count: str) -> None:
    session = Session(target, auth)
    sent = 0
    try:
        for i in range(int(count)):
            session.send(rawwire.control(["claim", "publish", "pubsub", f"forbidden.c{i}"]))
            sent += 1
    except OSError as e:
        report("send", f"stopped: {e}")
    report("claims", sent)
    try:
        session.listen(3.0)
    except OSError as e:
        report("read", f"error {e}")
    report("errors", session.errors())


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    commands = {
        "link": link, "yoton": yoton, "secret": secret, "impostor": impostor, "storm": storm,
        "call": call, "spray": spray, "poison": poison, "credit": credit,
        "credit-paced": lambda *a: credit(*a, paced=True), "claims": claims,
    }
    try:
        commands[command](*rest)
    except rawwire.Refused as e:
        report("refused", e)
