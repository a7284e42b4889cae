"""yotonnet's wire, written by hand with the standard library only.

Attack tests run their attacker as another OS user (``runuser -u nobody --
python3 ...``) that cannot import the project, and hostile-input tests write
frames no yotonnet node would. Both use this module: an independent
implementation of the preamble, HELLO, frame header, the OBJECT encoding of
control messages and the dialler's side of the authentication exchange. That
it interoperates with the real nodes is itself a check of the protocol as
documented.

:class:`Dialler` is sans-IO (bytes in, bytes out); :class:`SocketPeer` drives
one over a blocking socket for scripts; in-process Twisted tests feed a
Dialler from their own protocol.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time

MAGIC = b"YOTONNET"
VERSION = 2
PREAMBLE = struct.Struct("<8sHH")
HEADER = struct.Struct("<IBBHIQQQQ")
HEADER_TAIL = HEADER.size - 4
HELLO, ERROR, PING, PONG, CONTROL, DATA, REQUEST, REPLY, STATE, CLOSE, CREDIT, LATEST = range(1, 13)


def frame(kind: int, payload: bytes = b"", *, hops: int = 16, ext: bytes = b"", tag: int = 0,
          channel: int = 0, source: int = 0, dest: int = 0, seq: int = 0) -> bytes:
    head = HEADER.pack(HEADER_TAIL + len(ext) + len(payload), kind, hops, len(ext), tag,
                       channel, source, dest, seq)
    return head + ext + payload


def hello(node_id: int, name: str, extra: dict | None = None, max_frame: int = 16 << 20) -> bytes:
    body = {"protocol": "yotonnet", "version": VERSION, "node": f"{node_id:016x}", "name": name,
            "capabilities": ["routing-1", "state-1", "reqrep-1", "authz-1"],
            "max_frame": max_frame, "heartbeat": 1.0, "window": 1 << 20, **(extra or {})}
    return frame(HELLO, json.dumps(body).encode())


def preamble() -> bytes:
    return PREAMBLE.pack(MAGIC, VERSION, 0)


# --- the OBJECT encoding (the subset control messages use)

def encode(value) -> bytes:
    if value is None:
        return b"N"
    if value is True:
        return b"T"
    if value is False:
        return b"F"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return b"i" + struct.pack("<q", value)
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"I" + struct.pack("<I", len(raw)) + raw
    if isinstance(value, float):
        return b"d" + struct.pack("<d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return b"s" + struct.pack("<I", len(raw)) + raw
    if isinstance(value, bytes):
        return b"b" + struct.pack("<I", len(value)) + value
    if isinstance(value, list):
        return b"l" + struct.pack("<I", len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        return b"a" + struct.pack("<I", len(value)) + b"".join(
            encode(k) + encode(v) for k, v in value.items())
    raise TypeError(type(value))


def decode(data: bytes):
    value, pos = _decode(data, 0)
    if pos != len(data):
        raise ValueError("trailing bytes")
    return value


def _decode(data: bytes, pos: int):
    tag = data[pos:pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag in (b"T", b"F"):
        return tag == b"T", pos
    if tag == b"i":
        return struct.unpack_from("<q", data, pos)[0], pos + 8
    if tag == b"d":
        return struct.unpack_from("<d", data, pos)[0], pos + 8
    (n,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if tag == b"I":
        return int.from_bytes(data[pos:pos + n], "little", signed=True), pos + n
    if tag == b"s":
        return data[pos:pos + n].decode("utf-8", "surrogatepass"), pos + n
    if tag == b"b":
        return data[pos:pos + n], pos + n
    if tag in (b"l", b"t"):
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos
    if tag == b"a":
        out = {}
        for _ in range(n):
            k, pos = _decode(data, pos)
            out[k], pos = _decode(data, pos)
        return out, pos
    raise ValueError(f"unknown tag {tag!r}")


def control(body) -> bytes:
    return frame(CONTROL, encode(body))


class Frames:
    """Cuts a byte stream (after the preamble) into (kind, header fields, ext, payload)."""

    def __init__(self, preamble_expected: bool = True) -> None:
        self.buf = b""
        self.need_preamble = preamble_expected

    def feed(self, data: bytes) -> list[tuple]:
        self.buf += data
        out = []
        if self.need_preamble:
            if len(self.buf) < PREAMBLE.size:
                return out
            self.buf = self.buf[PREAMBLE.size:]
            self.need_preamble = False
        while len(self.buf) >= HEADER.size:
            length, kind, hops, ext_len, tag, channel, source, dest, seq = HEADER.unpack_from(
                self.buf)
            end = 4 + length
            if len(self.buf) < end:
                break
            ext = self.buf[HEADER.size:HEADER.size + ext_len]
            payload = self.buf[HEADER.size + ext_len:end]
            out.append((kind, hops, tag, channel, source, dest, seq, payload, ext))
            self.buf = self.buf[end:]
        return out


# --- the local secret, found as a node of this OS user would find it

def secret_path() -> str:
    explicit = os.environ.get("YOTONNET_SECRET_FILE")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.getuid():
        return os.path.join(runtime, "yotonnet", "secret")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(data, "yotonnet", "secret")


def read_secret() -> bytes | None:
    try:
        with open(secret_path(), "rb") as f:
            return f.read().strip()
    except OSError:
        return None


# --- proofs

def _transcript(role: str, method: str, dn: str, ln: str, did: int, lid: int, extra: str = ""):
    return f"yotonnet-auth-2|{role}|{method}|{dn}|{ln}|{did:016x}|{lid:016x}|{extra}".encode()


def key_proof(key: bytes, role: str, method: str, dn: str, ln: str, did: int, lid: int) -> str:
    return hmac.new(key, _transcript(role, method, dn, ln, did, lid), hashlib.sha256).hexdigest()


def password_proof(password: str, user: str, challenge: list, dn: str, ln: str, did: int,
                   lid: int) -> str:
    _, salt_b64, n, r, p = challenge
    salt = base64.b64decode(salt_b64)
    salted = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=1 << 28, dklen=32)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    bound = _transcript("password", "password", dn, ln, did, lid,
                        f"{user}|{salt.hex()}|{n}|{r}|{p}")
    signature = hmac.new(stored, bound, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, signature)).hex()


class Refused(Exception):
    """The node refused us; the text is its ERROR frame's."""


class Dialler:
    """The dialling side of a handshake, sans-IO.

    ``method``: "secret" (this OS user's local secret, if readable), "token",
    "password", "none", or "wrong-password-blind" (sends a password proof without
    waiting to check anything: what a storm of bad logins looks like). After
    :meth:`feed` reports ``up``, :attr:`frames` collects the frames that follow.
    """

    def __init__(self, node_id: int, name: str = "raw", method: str = "secret", *,
                 token: str | None = None, user: str | None = None,
                 password: str | None = None, secret: bytes | None = None,
                 extra: dict | None = None) -> None:
        self.node_id = node_id
        self.name = name
        self.method = method
        self.token = token
        self.user = user
        self.password = password
        self.secret = secret if secret is not None else (
            read_secret() if method == "secret" else None)
        self.nonce = os.urandom(16).hex()
        self.extra = extra or {}
        self.reader = Frames()
        self.state = "handshaking"
        self.error = ""
        self.peer_id = 0
        self.peer_nonce = ""
        self.accepts: list[str] = []
        self.welcome: list | None = None
        self.frames: list[tuple] = []

    def greeting(self) -> bytes:
        return preamble() + hello(self.node_id, self.name, {"nonce": self.nonce, **self.extra})

    def feed(self, data: bytes) -> bytes:
        """Bytes received; returns the bytes to send in answer."""
        out = b""
        for f in self.reader.feed(data):
            kind, payload = f[0], f[7]
            if self.state != "handshaking":
                self.frames.append(f)
                continue
            if kind == ERROR:
                self.state, self.error = "refused", payload.decode("utf-8", "replace")
            elif kind == HELLO:
                body = json.loads(payload)
                self.peer_id = int(body["node"], 16)
                self.peer_nonce = body.get("nonce", "")
                self.accepts = body.get("accepts", [])
                out += self._auth()
            elif kind == CONTROL:
                message = decode(payload)
                if message[0] == "challenge":
                    proof = password_proof(self.password or "", self.user or "", message,
                                           self.nonce, self.peer_nonce, self.node_id, self.peer_id)
                    out += control(["auth", "password-proof", proof])
                elif message[0] == "welcome":
                    self.welcome = message
                    self.state = "up"
        return out

    def _args(self, method: str) -> tuple:
        return method, self.nonce, self.peer_nonce, self.node_id, self.peer_id

    def _auth(self) -> bytes:
        m = self.method
        if m == "secret" and self.secret is not None:
            return control(["auth", "secret", key_proof(self.secret, "dialler", *self._args(m))])
        if m == "token":
            key = hashlib.sha256((self.token or "").encode()).digest()
            return control(["auth", "token", key_proof(key, "dialler", *self._args(m))])
        if m == "password":
            return control(["auth", "password", self.user or ""])
        if m == "wrong-password-blind":
            return control(["auth", "password", self.user or ""]) + control(
                ["auth", "password-proof", os.urandom(32).hex()])
        return control(["auth", "none"])


class SocketPeer:
    """A Dialler over a blocking socket: ``tcp`` (host, port) or a unix path."""

    def __init__(self, address, dialler: Dialler, timeout: float = 10.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.dialler = dialler
        self.sock.sendall(dialler.greeting())

    def handshake(self, deadline: float = 10.0) -> Dialler:
        end = time.monotonic() + deadline
        while self.dialler.state == "handshaking" and time.monotonic() < end:
            data = self.sock.recv(65536)
            if not data:
                self.dialler.state = "refused"
                self.dialler.error = self.dialler.error or "connection closed"
                break
            answer = self.dialler.feed(data)
            if answer:
                self.sock.sendall(answer)
        if self.dialler.state != "up":
            raise Refused(self.dialler.error or "handshake did not finish")
        return self.dialler

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_for(self, seconds: float) -> list[tuple]:
        """Read whatever arrives for ``seconds`` (answering pings); the frames seen."""
        end = time.monotonic() + seconds
        seen = []
        self.sock.settimeout(0.1)
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            self.dialler.feed(data)
            new, self.dialler.frames = self.dialler.frames, []
            for f in new:
                if f[0] == PING:
                    self.sock.sendall(frame(PONG, seq=f[6]))
            seen.extend(new)
        return seen

    def close(self) -> None:
        self.sock.close()
