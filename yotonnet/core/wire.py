"""Wire format: the handshake preamble, the frame header and an incremental decoder.

Sans-IO: nothing here imports Twisted. A connection carries, in each direction,

1. a 12-byte *preamble*: ``b"YOTONNET"``, protocol version (u16), reserved (u16);
2. a HELLO frame whose payload is a small JSON object (node id, node name,
   capabilities, max frame size, heartbeat interval);
3. any number of frames.

Every frame starts with a fixed 44-byte little-endian header that a forwarding
node can route on without touching the payload::

    length   u32  bytes after this field (rest of header + extension + payload)
    kind     u8   FrameKind
    hops     u8   remaining hop limit, decremented by each forwarding node
    ext_len  u16  bytes of extension data between header and payload
    tag      u32  message-type tag of the payload (0 for control frames)
    channel  u64  channel id (a hash of the channel's pattern and name)
    source   u64  node id of the origin
    dest     u64  node id of the destination (0: routed by interest)
    seq      u64  per-(source, channel) sequence number, or a request id

REQUEST and REPLY frames reuse the header: a REQUEST carries the method name
(UTF-8) as its extension, the number of positional arguments in the low 16
bits of ``tag`` (plus :data:`REQUEST_KWARGS` when a keyword dict follows) and
the arguments as OBJECT values back to back; a REPLY's ``tag`` is its status
(:data:`REPLY_OK`: one OBJECT value; :data:`REPLY_ERROR`: an OBJECT list of
type name, message and traceback; :data:`REPLY_NO_REPLIER`: UTF-8 text).

The decoder enforces the maximum frame size while parsing: it reads the length
field first and refuses before buffering anything beyond the limit. CONTROL
frames (routing records, identities, claims, the authentication exchange) have
their own, smaller limit, checked the same way from the header and again by
:func:`decode_control`, the one function that turns a control payload into a
message: it also bounds the values the payload may decode to.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple

from ..errors import ProtocolError
from .codec import DecodeError, ItemLimitError, decode_object
from .names import MAX_NODE_NAME, check_peer_name

PROTOCOL_NAME = "yotonnet"
PROTOCOL_VERSION = 2
MAGIC = b"YOTONNET"
PREAMBLE = struct.Struct("<8sHH")
PREAMBLE_SIZE = PREAMBLE.size

HEADER = struct.Struct("<IBBHIQQQQ")
HEADER_SIZE = HEADER.size
#: bytes of header counted by the length field (everything after it)
HEADER_TAIL = HEADER_SIZE - 4
_LENGTH = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
#: where the sequence number sits in a header (a run's frames differ only there)
SEQ_OFFSET = HEADER_SIZE - 8
#: where the hop count sits in a header
HOPS_OFFSET = 5

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: CONTROL frames above this size are refused (ContextConfig.max_control_frame): the
#: largest legitimate one, a node record at the routing limits, is well under it
DEFAULT_MAX_CONTROL_FRAME = 1024 * 1024
#: a control message may decode to one value per this many bytes of the control frame
#: limit: legitimate ones take 7 bytes or more per value (an int alone takes 9), while a
#: flood of empty lists takes 5, each costing a Python object
CONTROL_BYTES_PER_ITEM = 8
#: the largest frame accepted before the handshake has agreed on a limit
HANDSHAKE_MAX_FRAME = 64 * 1024
DEFAULT_HOPS = 32
#: the hop field is one byte
MAX_HOPS = 255
MAX_U64 = 2**64 - 1


class FrameKind(IntEnum):
    HELLO = 1
    ERROR = 2
    PING = 3
    PONG = 4
    CONTROL = 5
    DATA = 6
    REQUEST = 7
    REPLY = 8
    STATE = 9
    CLOSE = 10
    CREDIT = 11
    #: pub/sub data for ``latest`` subscribers: credited on arrival, and when credit
    #: runs out the oldest waiting frames give way to newer ones
    LATEST = 12
    #: a lossless subscriber to a publisher (see yotonnet.core.repair): every message up to
    #: ``seq`` arrived; ``tag`` holds ACK_* flags, the payload the publisher's node id
    ACK = 13
    #: a message sent again to one subscriber (``dest``): DATA's layout
    RESENT = 14
    #: a publisher to one subscriber: its last sequence number on the channel (``seq``),
    #: and in the payload the oldest it still holds and where its numbering began
    TAIL = 15


_KINDS = frozenset(int(k) for k in FrameKind)
_DATA = int(FrameKind.DATA)
_CONTROL = int(FrameKind.CONTROL)

#: REQUEST tag: positional argument count in the low 16 bits, this bit for kwargs
REQUEST_KWARGS = 0x8000_0000
REQUEST_MAX_ARGS = 0xFFFF
#: REQUEST tag: a copy of an idempotent request sent again after its path broke (the
#: replier serves a request id it already has only once; see yotonnet.core.recent)
REQUEST_RESENT = 0x4000_0000
#: ACK flags: send again what follows ``seq`` (up to the payload's second number, if
#: any); the subscriber leaves the channel; a new subscriber asks where its stream starts
#: (its payload then also names the node whose interest brings it the messages: its own,
#: or its hub's)
ACK_WANT, ACK_BYE, ACK_START = 1, 2, 4
#: TAIL flags: the last frame of an answer to ACK_WANT; the answer to ACK_START (its
#: body then also gives the first message the subscriber is owed)
TAIL_ANSWER, TAIL_START = 1, 2
_U64 = struct.Struct("<Q")
_U64_PAIR = struct.Struct("<QQ")
_TAIL_BODY = struct.Struct("<QQ")
_TAIL_START_BODY = struct.Struct("<QQQ")

#: REPLY tag values (REPLY_DENIED: UTF-8 text of a PermissionDenied from the first node)
REPLY_OK, REPLY_ERROR, REPLY_NO_REPLIER, REPLY_DENIED = 0, 1, 2, 3


class Frame(NamedTuple):
    kind: int
    hops: int
    tag: int
    channel: int
    source: int
    dest: int
    seq: int
    payload: bytes
    ext: bytes = b""


class Run(NamedTuple):
    """Consecutive DATA frames whose headers differ only in ``seq``, as one record.

    A :class:`FrameDecoder` made with ``runs=True`` returns these instead of one
    :class:`Frame` per DATA frame: same length (or see ``offsets``), kind, hops,
    tag, channel, source and destination, no extension. The first seven fields
    mirror :class:`Frame` (``seq`` is the first frame's), so code that routes
    on ``[0]``, ``[3]`` and ``[4]`` treats a run like a frame. Nothing is
    copied: the frames stay in ``buf[start:end]``. A forwarding node sends
    :meth:`relayed` on (one copy, hop counts patched in one step) and a
    subscriber reads payloads from the buffer only where it needs them.
    """

    kind: int
    hops: int
    tag: int
    channel: int
    source: int
    dest: int
    seq: int
    buf: bytes
    start: int
    end: int
    #: how many frames
    count: int
    #: the size of each frame when all are the same size, else 0 (see ``offsets``)
    stride: int
    #: where each frame starts in ``buf`` when sizes vary, else None
    offsets: list[int] | None = None

    def starts(self) -> range | list[int]:
        """Where each frame of the run starts in :attr:`buf`."""
        if self.stride:
            return range(self.start, self.end, self.stride)
        assert self.offsets is not None
        return self.offsets

    def frames(self) -> list[Frame]:
        """The run as :class:`Frame` tuples (for the rare paths: gaps, wrong types)."""
        buf, starts = self.buf, list(self.starts())
        ends = starts[1:] + [self.end]
        head = (self.kind, self.hops, self.tag, self.channel, self.source, self.dest)
        return [
            Frame(*head, _SEQ.unpack_from(buf, a + SEQ_OFFSET)[0], buf[a + HEADER_SIZE : b])
            for a, b in zip(starts, ends, strict=True)
        ]

    def payloads(self) -> tuple[bytes, ...] | list[bytes]:
        """Each frame's payload, in order, cut from :attr:`buf` in C (a run of one frame
        size: see :attr:`stride`) without a tuple per frame."""
        stride, count, start = self.stride, self.count, self.start
        assert stride
        if count <= _PAYLOAD_CHUNK:
            return _payload_layout(stride, count).unpack_from(self.buf, start)
        whole, rest = divmod(count, _PAYLOAD_CHUNK)
        unpack, buf = _payload_layout(stride, _PAYLOAD_CHUNK).unpack_from, self.buf
        step = _PAYLOAD_CHUNK * stride
        out: list[bytes] = []
        for at in range(start, start + whole * step, step):
            out += unpack(buf, at)
        if rest:
            out += _payload_layout(stride, rest).unpack_from(buf, start + whole * step)
        return out

    def numbered(self) -> bool:
        """Whether the frames are numbered ``seq``, ``seq + 1``, ... in order (a run of
        one frame size). Checked a byte of the sequence numbers at a time, that byte
        of every frame in one strided slice (no number made per frame): the lowest
        must count up from ``seq``'s, wrapping at 256; the seven above it must be
        ``seq``'s up to the first frame where the lowest wraps, one more up to the
        next, and so on."""
        stride, count, first = self.stride, self.count, self.seq
        assert stride
        if first + count - 1 > MAX_U64:
            return False
        buf = self.buf
        at = self.start + SEQ_OFFSET
        low = first & 255
        ramp = _RAMP if count <= _RAMP_SPAN else _RAMP[:256] * (count // 256 + 2)
        if buf[at : at + count * stride : stride] != ramp[low : low + count]:
            return False
        high, i, j = first >> 8, 0, 256 - low
        while i < count:
            if j > count:
                j = count
            top, n, p = at + j * stride, j - i, at + i * stride
            above = high.to_bytes(7, "little")
            for k in range(7):
                if buf[p + k + 1 : top : stride] != above[k : k + 1] * n:
                    return False
            i, j, high = j, j + 256, high + 1
        return True

    def relayed(self) -> bytes:
        """The run's bytes with every hop count one less (``hops`` must be above 1)."""
        start, hops = self.start, self.hops - 1
        if self.count == 1:
            # One frame (a large message, say): one copy, joined around the hop byte.
            view = memoryview(self.buf)
            return b"".join(
                (view[start : start + HOPS_OFFSET], bytes((hops,)),
                 view[start + HOPS_OFFSET + 1 : self.end])
            )
        block = bytearray(memoryview(self.buf)[start : self.end])
        if self.stride:
            # Equally spaced headers: one slice assignment patches them all.
            block[HOPS_OFFSET :: self.stride] = bytes((hops,)) * self.count
        else:
            for at in self.starts():
                block[at - start + HOPS_OFFSET] = hops
        return bytes(block)


#: a run's payloads are cut this many frames at a time (a layout per frame size)
_PAYLOAD_CHUNK = 128
def cached_layouts(format_of: Callable[[int, int], str]) -> Callable[[int, int], struct.Struct]:
    """``layout(stride, count)``: the struct layout ``format_of`` gives for ``count``
    frames of ``stride`` bytes each, made once and kept (at most 256: a peer sending many
    sizes costs rebuilds, not memory)."""
    layouts: dict[tuple[int, int], struct.Struct] = {}

    def layout(stride: int, count: int) -> struct.Struct:
        found = layouts.get((stride, count))
        if found is None:
            if len(layouts) >= 256:
                layouts.clear()  # many sizes seen: start over rather than grow
            found = layouts[stride, count] = struct.Struct(format_of(stride, count))
        return found

    return layout


#: the layout of that many frames of that size: each payload
_payload_layout = cached_layouts(
    lambda stride, count: "<" + f"{HEADER_SIZE}x{stride - HEADER_SIZE}s" * count)
#: the low bytes of consecutive sequence numbers, from any starting byte
_RAMP_SPAN = 1024
_RAMP = bytes(range(256)) * (_RAMP_SPAN // 256 + 1)


def count_frames(items: list[Frame | Run], i: int = 0, j: int | None = None) -> int:
    """How many frames ``items[i:j]`` hold (a :class:`Run` holds ``count``)."""
    return sum(it[10] if type(it) is Run else 1 for it in items[i:j])


def encode_frame(
    kind: int,
    payload: bytes = b"",
    *,
    tag: int = 0,
    channel: int = 0,
    source: int = 0,
    dest: int = 0,
    seq: int = 0,
    hops: int = DEFAULT_HOPS,
    ext: bytes = b"",
) -> bytes:
    """Return one encoded frame."""
    ext_len = len(ext)
    return (
        HEADER.pack(
            HEADER_TAIL + ext_len + len(payload),
            kind,
            hops,
            ext_len,
            tag,
            channel,
            source,
            dest,
            seq,
        )
        + ext
        + payload
    )


# --- the frames a node makes (every header this project writes is packed here)

_pack = HEADER.pack
_KIND_DATA, _KIND_LATEST = int(FrameKind.DATA), int(FrameKind.LATEST)
_KIND_REQUEST, _KIND_REPLY = int(FrameKind.REQUEST), int(FrameKind.REPLY)
_KIND_STATE, _KIND_CREDIT = int(FrameKind.STATE), int(FrameKind.CREDIT)


def data_frame(
    hops: int, tag: int, channel: int, source: int, seq: int, payload: bytes,
    kind: int = _KIND_DATA, root: int = 0,
) -> bytes:
    """A publisher's message (``kind`` LATEST for the flow to latest subscribers).

    ``root`` (in the ``dest`` field, unused by multicast otherwise) is the node whose
    tree the message follows when its source is a leaf of that node (see
    yotonnet.core.leaves); 0: the source's own tree."""
    return _pack(HEADER_TAIL + len(payload), kind, hops, 0, tag, channel, source, root,
                 seq) + payload


def request_frame(
    hops: int, tag: int, channel: int, source: int, dest: int, req_id: int, method: bytes,
    payload: bytes,
) -> bytes:
    """A request: the method name as the extension, the arguments as the payload."""
    return b"".join((
        _pack(HEADER_TAIL + len(method) + len(payload), _KIND_REQUEST, hops, len(method), tag,
              channel, source, dest, req_id),
        method,
        payload,
    ))


def reply_frame(
    hops: int, status: int, channel: int, source: int, dest: int, req_id: int, payload: bytes
) -> bytes:
    """A reply: its status (REPLY_OK...) in the tag."""
    return _pack(HEADER_TAIL + len(payload), _KIND_REPLY, hops, 0, status, channel, source,
                 dest, req_id) + payload


def credit_frame(channel: int, source: int, dest: int, amount: int) -> bytes:
    """``amount`` bytes of ``channel`` released to the neighbour that sent them."""
    return _pack(HEADER_TAIL, _KIND_CREDIT, 1, 0, 0, channel, source, dest, amount)


def state_frame(
    hops: int, tag: int, channel: int, source: int, dest: int, version: bytes, payload: bytes
) -> bytes:
    """A state value, its packed version first (see yotonnet.core.stateclock)."""
    size = len(version) + len(payload)
    return b"".join((
        _pack(HEADER_TAIL + size, _KIND_STATE, hops, 0, tag, channel, source, dest, 0),
        version,
        payload,
    ))


_KIND_ACK, _KIND_RESENT, _KIND_TAIL = int(FrameKind.ACK), int(FrameKind.RESENT), int(FrameKind.TAIL)


def ack_frame(
    hops: int, flags: int, channel: int, source: int, dest: int, seq: int, publisher: int,
    extra: int = 0,
) -> bytes:
    """A subscriber's acknowledgement: every message of ``publisher`` up to ``seq`` arrived
    (``dest``: the node it is routed to, the publisher or the hub of a publishing leaf).
    ``extra``: with ACK_START, the node whose interest brings it the messages; with
    ACK_WANT, the last it asks for (0: all there are; it has what comes after)."""
    if extra or flags & ACK_START:
        return _pack(HEADER_TAIL + 16, _KIND_ACK, hops, 0, flags, channel, source, dest,
                     seq) + _U64_PAIR.pack(publisher, extra)
    return _pack(HEADER_TAIL + 8, _KIND_ACK, hops, 0, flags, channel, source, dest,
                 seq) + _U64.pack(publisher)


def ack_publisher(payload: bytes) -> int:
    """The publisher an ACK frame is for."""
    if len(payload) == 8:
        return _U64.unpack(payload)[0]
    if len(payload) == 16:
        return _U64_PAIR.unpack(payload)[0]
    raise ProtocolError(f"ACK frame with a {len(payload)}-byte payload (8 or 16 expected)")


def ack_extra(payload: bytes) -> int:
    """An ACK's second number (see :func:`ack_frame`; 0 when it has none)."""
    return _U64_PAIR.unpack(payload)[1] if len(payload) == 16 else 0


def resent_frame(
    hops: int, tag: int, channel: int, source: int, dest: int, seq: int, payload: bytes
) -> bytes:
    """A retained message sent again to the subscriber ``dest``."""
    return _pack(HEADER_TAIL + len(payload), _KIND_RESENT, hops, 0, tag, channel, source,
                 dest, seq) + payload


def tail_frame(
    hops: int, flags: int, channel: int, source: int, dest: int, last: int, oldest: int,
    base: int, start: int = 0,
) -> bytes:
    """A publisher's tail: ``last`` sent, ``oldest`` the first it can still send again,
    ``base`` the number its sequence began after (in this process); with TAIL_START,
    ``start`` the first message the subscriber is owed (0: not known)."""
    if flags & TAIL_START:
        return _pack(HEADER_TAIL + 24, _KIND_TAIL, hops, 0, flags, channel, source, dest,
                     last) + _TAIL_START_BODY.pack(oldest, base, start)
    return _pack(HEADER_TAIL + 16, _KIND_TAIL, hops, 0, flags, channel, source, dest,
                 last) + _TAIL_BODY.pack(oldest, base)


def tail_body(payload: bytes) -> tuple[int, int, int]:
    """``(oldest, base, start)`` of a TAIL frame (start 0 unless TAIL_START)."""
    if len(payload) == _TAIL_BODY.size:
        return (*_TAIL_BODY.unpack(payload), 0)
    if len(payload) == _TAIL_START_BODY.size:
        return _TAIL_START_BODY.unpack(payload)
    raise ProtocolError(f"TAIL frame with a {len(payload)}-byte payload (16 or 24 expected)")


def reencode(frame: Frame, hops: int) -> bytes:
    """Encode ``frame`` again with a new hop count (used when forwarding)."""
    return encode_frame(
        frame.kind,
        frame.payload,
        tag=frame.tag,
        channel=frame.channel,
        source=frame.source,
        dest=frame.dest,
        seq=frame.seq,
        hops=hops,
        ext=frame.ext,
    )


def encode_preamble(version: int = PROTOCOL_VERSION) -> bytes:
    return PREAMBLE.pack(MAGIC, version, 0)


def check_preamble(data: bytes) -> int:
    """Validate a 12-byte preamble and return the peer's protocol version."""
    magic, version, _reserved = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"peer is not a {PROTOCOL_NAME} node (first bytes {bytes(data[:8])!r}, "
            f"expected {MAGIC!r}); check that the endpoint points at a {PROTOCOL_NAME} listener"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"peer speaks {PROTOCOL_NAME} protocol version {version}, this node speaks "
            f"version {PROTOCOL_VERSION}; upgrade the older node"
        )
    return version


class Hello(NamedTuple):
    node_id: int
    name: str
    capabilities: tuple[str, ...]
    max_frame: int
    heartbeat: float
    extra: dict[str, Any]


def encode_hello(hello: Hello) -> bytes:
    body = {
        "protocol": PROTOCOL_NAME,
        "version": PROTOCOL_VERSION,
        "node": f"{hello.node_id:016x}",
        "name": hello.name,
        "capabilities": list(hello.capabilities),
        "max_frame": hello.max_frame,
        "heartbeat": hello.heartbeat,
        **hello.extra,
    }
    return encode_frame(FrameKind.HELLO, json.dumps(body).encode("utf-8"))


def decode_hello(frame: Frame) -> Hello:
    """Parse a HELLO frame, raising ProtocolError naming what is wrong."""
    if frame.kind != FrameKind.HELLO:
        raise ProtocolError(f"expected a HELLO frame first, got frame kind {frame.kind}")
    try:
        body = json.loads(frame.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"HELLO payload is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError("HELLO payload must be a JSON object")
    try:
        node_id = int(body.pop("node"), 16)
        name = body.pop("name")
        caps = body.pop("capabilities", [])
        max_frame = body.pop("max_frame")
        heartbeat = body.pop("heartbeat", 5.0)
    except (KeyError, ValueError, TypeError) as e:
        raise ProtocolError(f"HELLO is missing or has a bad field: {e}") from None
    if body.pop("protocol", None) != PROTOCOL_NAME:
        raise ProtocolError("HELLO names another protocol")
    body.pop("version", None)
    if not isinstance(name, str) or not isinstance(caps, list):
        raise ProtocolError("HELLO name must be a string and capabilities a list")
    try:
        # The name goes to terminals, logs and web pages: control characters (terminal
        # escapes, fake log lines) are refused here rather than escaped everywhere later.
        check_peer_name(name)
    except ValueError as e:
        raise ProtocolError(
            f"HELLO refused: {e}; a node name must be at most {MAX_NODE_NAME} printable "
            "characters (set it with --name or [node] name)"
        ) from None
    if not 0 < node_id <= MAX_U64:
        raise ProtocolError("HELLO node id out of range")
    if not isinstance(max_frame, int) or max_frame < HEADER_SIZE:
        raise ProtocolError(f"HELLO max_frame must be an integer >= {HEADER_SIZE}")
    if not isinstance(heartbeat, int | float) or not 0 < heartbeat < 86400:
        raise ProtocolError("HELLO heartbeat must be a positive number of seconds")
    return Hello(node_id, name, tuple(str(c) for c in caps), max_frame, float(heartbeat), body)


def control_too_large(size: int, limit: int) -> ProtocolError:
    """The error for a CONTROL frame of ``size`` bytes over the ``limit``."""
    return ProtocolError(
        f"CONTROL frame of {size} bytes exceeds the control frame limit of {limit} bytes "
        "(max_control_frame); a routing record or other control message this large is "
        "refused: raise [context] max_control_frame on this node if a legitimate peer needs it"
    )


def decode_control(payload: bytes, max_size: int, max_items: int | None = None) -> list:
    """The control message a CONTROL frame's payload holds, within limits.

    Refuses, with a :class:`ProtocolError` saying why, a frame (header plus
    payload) over ``max_size`` bytes before decoding anything; a payload that
    decodes to more than ``max_items`` values (default: one per
    :data:`CONTROL_BYTES_PER_ITEM` bytes of ``max_size``) before building
    them; and anything but a list whose first item is a str, its kind.
    """
    size = HEADER_SIZE + len(payload)
    if size > max_size:
        raise control_too_large(size, max_size)
    if max_items is None:
        max_items = max(1024, max_size // CONTROL_BYTES_PER_ITEM)
    try:
        message = decode_object(payload, max_items)
    except ItemLimitError:
        raise ProtocolError(
            f"control message refused: it holds more than {max_items} values (one per "
            f"{CONTROL_BYTES_PER_ITEM} bytes of max_control_frame, {max_size} bytes)"
        ) from None
    except DecodeError as e:
        raise ProtocolError(f"malformed control message: {e}") from None
    if type(message) is not list or not message or type(message[0]) is not str:
        raise ProtocolError("malformed control message: not a list starting with its kind")
    return message


#: a run with at least this many more frames of one size is checked a block at a time
#: (a power of two)
_BULK_RUN = 8
#: the layout that cuts out each frame's header up to seq
_key_layout = cached_layouts(
    lambda stride, count: "<" + f"{SEQ_OFFSET}s{stride - SEQ_OFFSET}x" * count)


class FrameDecoder:
    """Incremental decoder: feed it bytes, get back complete frames.

    With ``runs=True``, DATA frames without extension come back grouped as
    :class:`Run` records (a run per stretch of frames with the same header
    apart from ``seq``): the per-frame work is then one C-level comparison of
    the header bytes, with no tuple and no payload copy.

    ``max_control`` is a lower limit for CONTROL frames (None: only ``max_frame``);
    like ``max_frame`` it is checked as soon as a frame's header arrives.

    Raises :class:`ProtocolError` for anything malformed; after that the
    decoder is unusable and the connection should be closed.
    """

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        expect_preamble: bool = True,
        runs: bool = False,
        max_control: int | None = None,
    ):
        self.max_frame = max_frame
        #: the limit of CONTROL frames when below max_frame (None: max_frame applies)
        self.max_control = max_control
        #: return consecutive DATA frames of one channel and source as :class:`Run` records
        #: (never while ``feed`` is given a ``limit``)
        self.runs = runs
        #: how many frames the last feed() decoded (a run counts each of its frames)
        self.decoded = 0
        self._buf = b""
        # A large frame arriving in many chunks is collected here and joined once,
        # so that it costs one copy instead of one per chunk.
        self._parts: list[bytes] = []
        self._have = 0
        self._missing = 0
        self._need_preamble = expect_preamble
        self.peer_version: int | None = None
        #: the bytes the frames of the last feed() were cut from, and where each began:
        #: a forwarding node writes runs of frames on from here instead of encoding each
        self.buffer = b""
        self.offsets: list[int] = []

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._have

    def _check_length(self, length: int, kind: int = 0) -> None:
        limit = self.max_control
        if kind == _CONTROL and limit is not None and limit < length + 4 <= self.max_frame:
            raise control_too_large(length + 4, limit)
        if length + 4 > self.max_frame:
            raise ProtocolError(
                f"frame of {length + 4} bytes exceeds the maximum frame size of "
                f"{self.max_frame} bytes; send smaller messages or raise max_frame on both nodes"
            )
        if length < HEADER_TAIL:
            raise ProtocolError(f"frame length {length} is shorter than a frame header")

    def _finish_parked(self, data: bytes, limit: int | None) -> list[Frame | Run]:
        """The last piece of a large frame arrived (``data``, maybe with more after it).

        The payload is joined straight from the pieces, one copy, rather than
        joining the whole frame and then slicing the payload out of it. The
        frame is not in :attr:`buffer` (it is empty after such a read), so a
        forwarding node encodes it again.
        """
        parts = self._parts
        extra = self._have - self._missing  # bytes of `data` after this frame
        self._parts, self._have, self._missing = [], 0, 0
        first = parts[0]  # from the frame's start: its header was complete when parked
        length, kind, hops, ext_len, tag, channel, source, dest, seq = HEADER.unpack_from(first)
        if kind not in _KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        start = HEADER_SIZE + ext_len
        if start > length + 4:
            raise ProtocolError("frame extension is longer than the frame")
        need = len(data) - extra
        if start > len(first):  # an extension cut across pieces: join it whole first
            whole = b"".join([*parts[:-1], memoryview(data)[:need]])
            ext, payload = whole[HEADER_SIZE:start], whole[start:]
        else:
            ext = bytes(first[HEADER_SIZE:start]) if ext_len else b""
            payload = b"".join([first[start:], *parts[1:-1], memoryview(data)[:need]])
        frame = tuple.__new__(Frame, (kind, hops, tag, channel, source, dest, seq, payload, ext))
        frames: list[Frame | Run] = [frame]
        self.decoded = 1
        if extra:
            rest = data[need:]
            if limit is not None:
                self._buf = rest  # decoded by a later feed(), as the general path would
            else:
                frames += self.feed(rest)
                self.decoded += 1
        self.buffer = b""
        self.offsets = []
        return frames

    def feed(self, data: bytes, limit: int | None = None) -> list[Frame | Run]:
        if not self._buf and not self._missing and not self._need_preamble and type(data) is bytes:
            # The commonest read on a quiet link: exactly one whole frame.
            n = len(data)
            if n >= HEADER_SIZE:
                length, kind, hops, ext_len, tag, channel, source, dest, seq = (
                    HEADER.unpack_from(data)
                )
                start = HEADER_SIZE + ext_len
                if (
                    length + 4 == n
                    and n <= self.max_frame
                    and start <= n
                    and kind in _KINDS
                    and (kind != _CONTROL or self.max_control is None or n <= self.max_control)
                ):
                    self.buffer = data
                    self.offsets = [0]
                    self.decoded = 1
                    return [
                        tuple.__new__(
                            Frame,
                            (
                                kind, hops, tag, channel, source, dest, seq, data[start:],
                                data[HEADER_SIZE:start] if ext_len else b"",
                            ),
                        )
                    ]
        if self._missing:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._missing:
                return []
            return self._finish_parked(data, limit)
        # Kept as bytes, not bytearray: slicing bytes gives each payload in one copy.
        buf = self._buf + data if self._buf else bytes(data)
        pos = 0
        if self._need_preamble:
            if len(buf) < PREAMBLE_SIZE:
                # Fail early on a wrong magic so that e.g. an HTTP client is told at once.
                if not MAGIC.startswith(buf[:8]):
                    check_preamble(buf[:8].ljust(PREAMBLE_SIZE, b"\0"))
                self._buf = buf
                return []
            self.peer_version = check_preamble(buf[:PREAMBLE_SIZE])
            self._need_preamble = False
            pos = PREAMBLE_SIZE
        frames: list[Frame | Run] = []
        append = frames.append
        offsets: list[int] = []
        self.buffer = buf
        self.offsets = offsets
        mark = offsets.append
        n = len(buf)
        max_frame = self.max_frame
        max_control = self.max_control if self.max_control is not None else max_frame
        unpack = HEADER.unpack_from
        kinds = _KINDS
        make = tuple.__new__
        coalesce = self.runs and limit is None
        startswith = buf.startswith
        unpack_length = _LENGTH.unpack_from
        extra = 0  # frames inside runs beyond one per run
        while True:
            if limit is not None and len(frames) >= limit:
                break
            if n - pos < HEADER_SIZE:
                # Refuse an oversized frame as soon as its length field (and, for the
                # CONTROL limit, its kind) arrives.
                if n - pos >= 4:
                    self._check_length(
                        _LENGTH.unpack_from(buf, pos)[0], buf[pos + 4] if n - pos > 4 else 0
                    )
                break
            length, kind, hops, ext_len, tag, channel, source, dest, seq = unpack(buf, pos)
            if (
                length + 4 > max_frame
                or length < HEADER_TAIL
                or (kind == _CONTROL and length + 4 > max_control)
            ):
                self._check_length(length, kind)
            end = pos + 4 + length
            if end > n:
                if length > 65536:
                    # Park the partial frame among the parts (a view, no copy): it is
                    # then joined once with the rest, instead of copied to _buf, then
                    # joined, then concatenated again.
                    self._parts = [memoryview(buf)[pos:]]
                    self._have = n - pos
                    self._missing = end - pos
                    self._buf = b""
                    self.decoded = len(frames) + extra
                    return frames
                break
            if kind not in kinds:
                raise ProtocolError(f"unknown frame kind {kind}")
            if coalesce and kind == _DATA and not ext_len:
                # Extend the run while the next whole frame has this one's header bytes
                # up to seq (length included: the commonest case, messages of one size).
                stride = end - pos
                key = buf[pos:SEQ_OFFSET + pos]
                p = end
                whole = (n - p) // stride  # frames of this size that may follow
                if whole >= _BULK_RUN and startswith(key, p):
                    # Many: the header bytes up to seq of a block of them cut out in C
                    # (one flat tuple of bytes) and compared at once; blocks double
                    # while every frame matches (the commonest case), and the block
                    # that does not, and the last few frames, go frame by frame below
                    # (so a run that ends early costs at most about twice its length).
                    step = _BULK_RUN
                    while whole >= _BULK_RUN:
                        while step > whole:
                            step >>= 1
                        if _key_layout(stride, step).unpack_from(buf, p).count(key) != step:
                            break
                        p += step * stride
                        whole -= step
                        step += step
                while p + stride <= n and startswith(key, p):
                    p += stride
                offsets_run = None
                tail = key[4:]
                while p + HEADER_SIZE <= n and startswith(tail, p + 4):
                    # Sizes vary: go on frame by frame, noting where each starts.
                    size = unpack_length(buf, p)[0]
                    if size + 4 > max_frame or size < HEADER_TAIL or p + 4 + size > n:
                        break  # the general path refuses it, or waits for the rest
                    if offsets_run is None:
                        offsets_run = list(range(pos, p, stride))
                        note = offsets_run.append
                    note(p)
                    p += 4 + size
                if offsets_run is None:
                    count = (p - pos) // stride
                else:
                    count = len(offsets_run)
                    stride = 0
                append(
                    make(
                        Run,
                        (
                            kind, hops, tag, channel, source, dest, seq, buf, pos, p, count,
                            stride, offsets_run,
                        ),
                    )
                )
                extra += count - 1
                mark(pos)
                pos = p
                continue
            start = pos + HEADER_SIZE
            if ext_len:
                if start + ext_len > end:
                    raise ProtocolError("frame extension is longer than the frame")
                ext = buf[start : start + ext_len]
                start += ext_len
            else:
                ext = b""
            append(
                make(Frame, (kind, hops, tag, channel, source, dest, seq, buf[start:end], ext))
            )
            mark(pos)
            pos = end
        self._buf = buf[pos:] if pos else buf
        self.decoded = len(frames) + extra
        return frames


def type_tag(name: str) -> int:
    """The 32-bit tag carried by frames of message type ``name``."""
    return zlib.crc32(name.encode("utf-8")) or 1
