"""Yoton 2.2's wire format: the handshake line, the package header, the slot hash.

Sans-IO: nothing here imports Twisted. Facts from Yoton 2.2 (``pyzo/yoton``):

* Handshake: the dialling side sends ``YOTON!<id as 16 hex digits>.<pid>\\r\\n``;
  the listening side answers with the same line carrying its own id (or a line
  starting ``ERROR:`` when the caller is not Yoton). Each side waits up to 2 s.
* Then packages, each a 56-byte little-endian header of seven u64 -- magic
  (``b"YOTON   "``), slot hash, source id, source seq, dest id, dest seq,
  payload length -- followed by the payload.
* A package with no payload on slot 1 is a signal: source seq 0 is a heartbeat
  (sent after 0.25 s of quiet), 1 means "closing" (the other end closes).
* Slot 2 carries context messages (UTF-8 text such as ``NEW_CONNECTION``, after
  which every Yoton context re-sends its state channels).
* Each context drops a package whose source seq is not above the last one it saw
  from that source id, and floods everything else to its other connections.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ..errors import ProtocolError

HEADER = struct.Struct("<7Q")
HEADER_SIZE = HEADER.size  # 56
(MAGIC,) = struct.unpack("<Q", b"YOTON   ")
SLOT_DUMMY = 1
SLOT_CONTEXT = 2
#: source seq of an empty SLOT_DUMMY package: heartbeat or close
SIGNAL_HEARTBEAT, SIGNAL_CLOSE = 0, 1
#: the longest handshake line accepted (a hex id, a dot, a pid, CRLF: ~40 bytes)
MAX_HANDSHAKE_LINE = 256
DEFAULT_MAX_PACKAGE = 16 * 1024 * 1024
MAX_U64 = 2**64 - 1

_HANDSHAKE = re.compile(r"YOTON!([0-9a-fA-F]{1,16})\.([0-9]{1,10})\Z")


class Package(NamedTuple):
    slot: int
    source_id: int
    source_seq: int
    dest_id: int
    dest_seq: int
    data: bytes


def encode_package(
    slot: int, data: bytes, source_id: int, source_seq: int, dest_id: int = 0, dest_seq: int = 0
) -> bytes:
    """One Yoton package (header and payload)."""
    return HEADER.pack(MAGIC, slot, source_id, source_seq, dest_id, dest_seq, len(data)) + data


HEARTBEAT = HEADER.pack(MAGIC, SLOT_DUMMY, 0, SIGNAL_HEARTBEAT, 0, 0, 0)
CLOSE = HEADER.pack(MAGIC, SLOT_DUMMY, 0, SIGNAL_CLOSE, 0, 0, 0)


def handshake_line(yoton_id: int, pid: int) -> bytes:
    """The line a Yoton context sends to introduce itself."""
    if not 0 < yoton_id <= MAX_U64:
        raise ValueError(f"a Yoton id is a 64-bit unsigned integer above 0, not {yoton_id}")
    return f"YOTON!{yoton_id:016x}.{pid}\r\n".encode("ascii")


def parse_handshake(line: bytes) -> tuple[int, int]:
    """``(id, pid)`` from a peer's handshake line (without its CRLF).

    Raises ProtocolError saying what arrived when it is not a Yoton line.
    """
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("ERROR:"):
        raise ProtocolError(f"Yoton peer refused the handshake: {text[6:].strip()}")
    match = _HANDSHAKE.match(text)
    if match is None:
        raise ProtocolError(
            f"expected a Yoton handshake 'YOTON!<16 hex digits>.<pid>', got {text[:60]!r}; "
            "check that the endpoint points at a Yoton 2.2 context"
        )
    yoton_id, pid = int(match.group(1), 16), int(match.group(2))
    if yoton_id == 0:
        raise ProtocolError("Yoton handshake carries id 0")
    return yoton_id, pid


class HandshakeReader:
    """Collects the handshake line; ``feed()`` returns ``(line, rest)`` once it is whole."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        buf = self._buf + data
        head = buf[:6]
        if not (b"YOTON!".startswith(head) or b"ERROR:".startswith(head)):
            # Fail at once rather than wait for a line that will never come.
            if buf.startswith(b"YOTONN"):
                raise ProtocolError(
                    "the peer is a yotonnet node, not a Yoton context: link to it with "
                    "Context.connect()/listen(), not through a YotonBridge"
                )
            raise ProtocolError(
                f"the peer is not a Yoton context (it sent {bytes(buf[:16])!r}, expected "
                "'YOTON!<id>.<pid>'); check the endpoint"
            )
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_HANDSHAKE_LINE:
                raise ProtocolError(
                    f"no Yoton handshake line within {MAX_HANDSHAKE_LINE} bytes; "
                    "is the peer a Yoton context?"
                )
            self._buf = buf
            return None
        self._buf = b""
        return buf[:end], buf[end + 2 :]


class PackageDecoder:
    """Incremental decoder of Yoton packages.

    ``feed()`` returns the complete packages; heartbeats are counted and left
    out, a close signal sets ``closed``. A wrong magic or a payload over
    ``max_package`` bytes raises ProtocolError (Yoton calls the first "lost
    track of the stream") before anything past the header is buffered.
    """

    def __init__(self, max_package: int = DEFAULT_MAX_PACKAGE) -> None:
        self.max_package = max_package
        self._buf = b""
        self.heartbeats = 0
        self.closed = False

    def feed(self, data: bytes) -> list[Package]:
        buf = self._buf + data if self._buf else bytes(data)
        pos, n = 0, len(buf)
        out: list[Package] = []
        unpack = HEADER.unpack_from
        while n - pos >= HEADER_SIZE and not self.closed:
            magic, slot, source_id, source_seq, dest_id, dest_seq, length = unpack(buf, pos)
            if magic != MAGIC:
                raise ProtocolError(
                    "lost track of the Yoton stream: a package header without the YOTON magic"
                )
            if length > self.max_package:
                raise ProtocolError(
                    f"Yoton package of {length} bytes exceeds the limit of {self.max_package}"
                )
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            if length == 0:
                # Empty packages are signals (any other empty package Yoton discards too).
                if slot == SLOT_DUMMY and source_seq == SIGNAL_CLOSE:
                    self.closed = True
                elif slot == SLOT_DUMMY and source_seq == SIGNAL_HEARTBEAT:
                    self.heartbeats += 1
            else:
                body = buf[pos + HEADER_SIZE : end]
                out.append(Package(slot, source_id, source_seq, dest_id, dest_seq, body))
            pos = end
        self._buf = buf[pos:]
        return out


def slot_hash(name: str) -> int:
    """Yoton's 64-bit hash of a full slot name (8 .. 2**64-1; 0-7 are reserved).

    The running value is an unbounded int, as in Yoton: its high bits flow
    back down through the shift, so it must not be truncated on the way.
    """
    fac = 0xD2D84A61
    val = 0
    for c in name:
        val += (val >> 3) + (ord(c) * fac)
    val += (val >> 3) + (len(name) * fac)
    return 8 + val % (2**64 - 8)


#: the slot name extension of each Yoton message type
TYPE_EXTENSIONS = {"TEXT": "txt", "BINARY": "bin", "OBJECT": "obj"}


def slot_name(base: str, type_name: str, pattern: str) -> str:
    """A full Yoton slot name: base, type extension and pattern, stripped and lowercased."""
    ext = TYPE_EXTENSIONS.get(type_name)
    if ext is None:
        raise ValueError(
            f"Yoton knows the message types TEXT, BINARY and OBJECT, not {type_name!r}"
        )
    return f"{base}.{ext}.{pattern}".strip().lower()
