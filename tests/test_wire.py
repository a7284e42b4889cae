"""Ring 1: sans-IO unit and property tests for the wire format (``yotonnet.core.wire``).

Covers the frame round trip through the incremental decoder under arbitrary
chunking, the decoder's robustness against random and mutated input (only
``ProtocolError`` may escape), its memory bound, preamble checks, HELLO
encoding and validation, and the header sanity checks.
"""

from __future__ import annotations

import json
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core import wire
from yotonnet.core.names import MAX_NODE_NAME
from yotonnet.core.wire import (
    HEADER,
    HEADER_SIZE,
    HEADER_TAIL,
    MAGIC,
    MAX_U64,
    PREAMBLE,
    PREAMBLE_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    Hello,
    ProtocolError,
)

PROPS = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, MAX_U64)


@st.composite
def frames(draw, max_payload: int = 300, max_ext: int = 40) -> Frame:
    return Frame(
        kind=draw(st.sampled_from(FrameKind)),
        hops=draw(u8),
        tag=draw(u32),
        channel=draw(u64),
        source=draw(u64),
        dest=draw(u64),
        seq=draw(u64),
        payload=draw(st.binary(max_size=max_payload)),
        ext=draw(st.binary(max_size=max_ext)),
    )


def encode(frame: Frame) -> bytes:
    return wire.reencode(frame, frame.hops)


def draw_chunks(draw, data: bytes) -> list[bytes]:
    """Split ``data`` at random cut points (empty chunks included on purpose)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_all(decoder: FrameDecoder, chunks: list[bytes], bound: int) -> tuple[list[Frame], bool]:
    """Feed chunks until a ProtocolError; return (frames, errored).

    Any other exception propagates and fails the test. After each successful
    feed the decoder must hold at most ``bound`` bytes.
    """
    out: list[Frame] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
        except ProtocolError as e:
            assert str(e), "ProtocolError without a message"
            return out, True
        assert decoder.buffered <= bound, (decoder.buffered, bound)
        for f in got:
            assert f.kind in set(FrameKind), f
        out.extend(got)
    return out, False


class RoundTripTests(SynchronousTestCase):
    @PROPS
    @given(st.lists(frames(), max_size=8), st.data())
    def test_frames_survive_any_chunking(self, sent, data):
        stream = wire.encode_preamble() + b"".join(encode(f) for f in sent)
        decoder = FrameDecoder()
        got, errored = feed_all(decoder, draw_chunks(data.draw, stream), wire.DEFAULT_MAX_FRAME)
        self.assertFalse(errored)
        self.assertEqual(got, sent)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(decoder.peer_version, wire.PROTOCOL_VERSION)

    def test_byte_at_a_time(self):
        sent = [
            Frame(FrameKind.DATA, 7, 3, 1, 2, 3, 4, b"hello", b"ext"),
            Frame(FrameKind.PING, 0, 0, 0, 0, 0, 0, b""),
            Frame(FrameKind.CLOSE, 255, 2**32 - 1, MAX_U64, MAX_U64, MAX_U64, MAX_U64, b"x" * 70),
        ]
        stream = wire.encode_preamble() + b"".join(encode(f) for f in sent)
        decoder = FrameDecoder()
        got = []
        for i in range(len(stream)):
            got.extend(decoder.feed(stream[i : i + 1]))
        self.assertEqual(got, sent)

    @PROPS
    @given(st.lists(frames(), min_size=1, max_size=5))
    def test_without_preamble(self, sent):
        decoder = FrameDecoder(expect_preamble=False)
        self.assertEqual(decoder.feed(b"".join(encode(f) for f in sent)), sent)
        self.assertIsNone(decoder.peer_version)

    def test_header_layout(self):
        # The 44-byte header is a wire contract: pin the field order and sizes.
        data = wire.encode_frame(
            FrameKind.REQUEST, b"PP", tag=5, channel=6, source=7, dest=8, seq=9, hops=3, ext=b"E"
        )
        self.assertEqual(HEADER_SIZE, 44)
        self.assertEqual(PREAMBLE_SIZE, 12)
        self.assertEqual(
            HEADER.unpack_from(data), (HEADER_TAIL + 3, FrameKind.REQUEST, 3, 1, 5, 6, 7, 8, 9)
        )
        self.assertEqual(data[HEADER_SIZE:], b"EPP")
        self.assertEqual(wire.encode_preamble(), b"YOTONNET\x02\x00\x00\x00")

    @PROPS
    @given(frames(), u8)
    def test_reencode_changes_only_hops(self, frame, hops):
        (back,) = FrameDecoder(expect_preamble=False).feed(wire.reencode(frame, hops))
        self.assertEqual(back, frame._replace(hops=hops))

    @PROPS
    @given(st.text())
    def test_type_tag_is_stable_nonzero_u32(self, name):
        tag = wire.type_tag(name)
        self.assertEqual(tag, wire.type_tag(name))
        self.assertTrue(0 < tag < 2**32)


# --- robustness: only ProtocolError may escape


def _apply_mutations(data: bytes, mutations: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, index, arg in mutations:
        i = index % (len(buf) + 1)
        if op == "flip" and buf:
            buf[i % len(buf)] ^= arg or 1
        elif op == "insert":
            buf[i:i] = bytes([arg])
        elif op == "delete":
            del buf[i : i + 1 + arg % 8]
        elif op == "truncate":
            del buf[i:]
    return bytes(buf)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 10**6), u8),
    min_size=1,
    max_size=6,
)
max_frames = st.one_of(st.integers(HEADER_SIZE, 600), st.just(wire.DEFAULT_MAX_FRAME))


@st.composite
def large_frames(draw) -> Frame:
    # Above 64 KiB the decoder collects the body in parts and joins it once.
    size = draw(st.integers(60_000, 300_000))
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    return draw(frames(max_payload=0))._replace(payload=payload)


def draw_even_chunks(draw, data: bytes) -> list[bytes]:
    size = draw(st.integers(1_000, 100_000))
    return [data[i : i + size] for i in range(0, len(data), size)]


LARGE = settings(max_examples=40, deadline=None)


class LargeFrameTests(SynchronousTestCase):
    @LARGE
    @given(st.lists(st.one_of(frames(), large_frames()), min_size=1, max_size=5), st.data())
    def test_large_frames_survive_any_chunking(self, sent, data):
        encoded = [encode(f) for f in sent]
        stream = wire.encode_preamble() + b"".join(encoded)
        # The tightest limit that still admits every frame.
        max_frame = max(len(e) for e in encoded)
        chunker = data.draw(st.sampled_from([draw_chunks, draw_even_chunks]))
        decoder = FrameDecoder(max_frame)
        got, errored = feed_all(decoder, chunker(data.draw, stream), max_frame + PREAMBLE_SIZE)
        self.assertFalse(errored)
        self.assertEqual(got, sent)
        self.assertEqual(decoder.buffered, 0)

    @LARGE
    @given(st.lists(st.one_of(frames(), large_frames()), min_size=1, max_size=5), st.data())
    def test_large_frames_between_runs_survive_any_chunking(self, sent, data):
        # As a link decodes: DATA frames grouped into runs, a large frame's payload
        # joined from its pieces; every frame once, in order, and counted.
        stream = wire.encode_preamble() + b"".join(encode(f) for f in sent)
        chunker = data.draw(st.sampled_from([draw_chunks, draw_even_chunks]))
        decoder = FrameDecoder(wire.DEFAULT_MAX_FRAME, runs=True)
        got: list[Frame] = []
        counted = 0
        for chunk in chunker(data.draw, stream):
            out = decoder.feed(chunk)
            counted += decoder.decoded if out else 0
            for item in out:
                got.extend(item.frames() if type(item) is wire.Run else [item])
        self.assertEqual(got, sent)
        self.assertEqual(counted, len(sent))
        self.assertEqual(decoder.buffered, 0)

    @LARGE
    @given(large_frames(), frames(), st.data())
    def test_oversize_after_large_frame_refused_at_once(self, big, small, data):
        head = wire.encode_preamble() + encode(big) + encode(small)
        max_frame = len(encode(big))
        decoder = FrameDecoder(max_frame)
        got, errored = feed_all(decoder, draw_even_chunks(data.draw, head), max_frame + 12)
        self.assertFalse(errored)
        self.assertEqual(got, [big, small])
        # Only the length field of the next frame: refused without waiting for more.
        self.assertRaises(ProtocolError, decoder.feed, struct.pack("<I", max_frame))

    @LARGE
    @given(st.lists(st.one_of(frames(), large_frames()), min_size=1, max_size=3), st.data())
    def test_mutated_large_streams(self, sent, data):
        stream = wire.encode_preamble() + b"".join(encode(f) for f in sent)
        stream = _apply_mutations(stream, data.draw(mutations))
        max_frame = data.draw(st.sampled_from([400_000, wire.DEFAULT_MAX_FRAME]))
        chunker = data.draw(st.sampled_from([draw_chunks, draw_even_chunks]))
        decoder = FrameDecoder(max_frame)
        feed_all(decoder, chunker(data.draw, stream), max_frame + PREAMBLE_SIZE)


class LongRunTests(SynchronousTestCase):
    """A run of many frames of one size is checked a block at a time: a frame whose
    header differs anywhere before seq (or whose size differs) still ends its run
    exactly there, wherever it sits in a block."""

    @LARGE
    @given(
        st.integers(1, 600),
        st.lists(st.tuples(st.integers(0, 599), st.integers(0, wire.SEQ_OFFSET - 1),
                           st.integers(1, 255)), max_size=4),
        st.integers(0, 200),
        st.data(),
    )
    def test_a_differing_frame_ends_its_run_exactly(self, count, changes, size, data):
        frames = [
            bytearray(wire.data_frame(3, 7, 11, 13, i + 1, bytes([i % 251]) * size))
            for i in range(count)
        ]
        for at, byte, delta in changes:
            if at < count and byte >= 4:  # (the length field: see the resized frames)
                frames[at][byte] = (frames[at][byte] + delta) % 256
        if changes and changes[0][0] < count and changes[0][1] < 4:
            at = changes[0][0]
            frames[at] = bytearray(
                wire.data_frame(3, 7, 11, 13, at + 1, b"z" * (size + changes[0][2] % 7 + 1))
            )
        stream = b"".join(bytes(f) for f in frames)
        plain = FrameDecoder(wire.DEFAULT_MAX_FRAME, expect_preamble=False)
        try:
            expected = plain.feed(stream)
        except ProtocolError:
            expected = None
        chunker = data.draw(st.sampled_from([draw_chunks, draw_even_chunks, lambda d, s: [s]]))
        decoder = FrameDecoder(wire.DEFAULT_MAX_FRAME, expect_preamble=False, runs=True)
        got: list[Frame] = []
        try:
            for chunk in chunker(data.draw, stream):
                for item in decoder.feed(chunk):
                    got.extend(item.frames() if type(item) is wire.Run else [item])
        except ProtocolError:
            got = None
        if expected is None:
            self.assertIsNone(got)
        else:
            self.assertEqual(got, expected)


class RunPayloadTests(SynchronousTestCase):
    """A subscriber reads a run of one frame size flat: Run.payloads() cuts the payloads
    alone and Run.numbered() says whether the sequence numbers count up one by one
    from the first, without a tuple or a number per frame; both must agree with the
    frames the run holds, wherever the stream was cut and whatever the numbers are."""

    @LARGE
    @given(
        st.integers(1, 700),
        st.integers(0, 120),
        st.one_of(
            st.integers(0, 2**20),
            st.integers(0, 2**64 - 1),
            st.integers(0, 1200).map(lambda d: 2**64 - d),
            st.sampled_from([255, 256, 65535, 65536, 2**32 - 1, 2**56 - 3]).flatmap(
                lambda b: st.integers(b - 300, b + 2)
            ),
        ),
        st.lists(st.tuples(st.integers(0, 699), st.integers(0, 7), st.integers(1, 255)),
                 max_size=3),
        st.data(),
    )
    def test_flat_payloads_and_numbering_match_the_frames(
        self, count, size, first, changes, data
    ):
        first = max(first, 0)
        seqs = [(first + i) % 2**64 for i in range(count)]
        frames = [bytearray(wire.data_frame(3, 7, 11, 13, seq, bytes([i % 251]) * size))
                  for i, seq in enumerate(seqs)]
        for at, byte, delta in changes:  # a sequence number off anywhere, in any byte
            if at < count:
                frames[at][wire.SEQ_OFFSET + byte] = (frames[at][wire.SEQ_OFFSET + byte]
                                                      + delta) % 256
        stream = b"".join(bytes(f) for f in frames)
        chunker = data.draw(st.sampled_from([draw_chunks, draw_even_chunks, lambda d, s: [s]]))
        decoder = FrameDecoder(wire.DEFAULT_MAX_FRAME, expect_preamble=False, runs=True)
        runs = 0
        for chunk in chunker(data.draw, stream):
            for item in decoder.feed(chunk):
                if type(item) is not wire.Run or not item.stride:
                    continue
                runs += 1
                held = item.frames()
                self.assertEqual(list(item.payloads()), [f.payload for f in held])
                in_order = all(f.seq == item.seq + i for i, f in enumerate(held))
                self.assertEqual(item.numbered(), in_order)
        self.assertEqual(decoder.buffered, 0)
        if count > 1 and not changes:
            self.assertGreater(runs, 0)


    def test_numbering_off_in_any_byte_of_any_frame(self):
        for first in (1, 250, 2**32 - 5, 2**56 - 100, 2**64 - 600):
            for count in (2, 255, 256, 257, 600, 1300):
                if first + count > 2**64:
                    continue
                run_bytes = b"".join(wire.data_frame(3, 7, 11, 13, first + i, b"p" * 9)
                                     for i in range(count))
                (run,) = FrameDecoder(expect_preamble=False, runs=True).feed(run_bytes)
                self.assertTrue(run.numbered())
                self.assertEqual(list(run.payloads()), [b"p" * 9] * count)
                for at in {1, count // 2, count - 1}:
                    for byte in range(8):
                        bad = bytearray(run_bytes)
                        bad[at * run.stride + wire.SEQ_OFFSET + byte] ^= 0x10
                        (off,) = FrameDecoder(expect_preamble=False, runs=True).feed(bad)
                        self.assertFalse(off.numbered(), (first, count, at, byte))
        # The last number a run may end on, and one past it (the numbers wrap).
        top = b"".join(wire.data_frame(3, 7, 11, 13, (2**64 - 3 + i) % 2**64, b"")
                       for i in range(4))
        (run,) = FrameDecoder(expect_preamble=False, runs=True).feed(top[:-wire.HEADER_SIZE])
        self.assertTrue(run.numbered())
        (run,) = FrameDecoder(expect_preamble=False, runs=True).feed(top)
        self.assertFalse(run.numbered())


class RobustnessTests(SynchronousTestCase):
    @PROPS
    @given(
        st.one_of(
            st.binary(max_size=600), st.binary(max_size=600).map(wire.encode_preamble().__add__)
        ),
        st.booleans(),
        max_frames,
        st.data(),
    )
    def test_random_bytes(self, stream, expect_preamble, max_frame, data):
        decoder = FrameDecoder(max_frame, expect_preamble=expect_preamble)
        feed_all(decoder, draw_chunks(data.draw, stream), max_frame + PREAMBLE_SIZE)

    @PROPS
    @given(
        st.lists(frames(max_payload=80, max_ext=8), max_size=5), mutations, max_frames, st.data()
    )
    def test_mutated_valid_streams(self, sent, muts, max_frame, data):
        hello = wire.encode_hello(Hello(1, "n", ("a",), 1000, 1.0, {}))
        stream = wire.encode_preamble() + hello + b"".join(encode(f) for f in sent)
        stream = _apply_mutations(stream, muts)
        decoder = FrameDecoder(max_frame)
        got, errored = feed_all(decoder, draw_chunks(data.draw, stream), max_frame + PREAMBLE_SIZE)
        for frame in got:
            # Whatever comes out went through the header checks.
            self.assertLessEqual(len(frame.payload) + len(frame.ext) + HEADER_SIZE, max_frame)
        if got and got[0].kind == FrameKind.HELLO:
            try:
                wire.decode_hello(got[0])
            except ProtocolError:
                pass


# --- the size limit


class SizeLimitTests(SynchronousTestCase):
    def test_oversized_header_refused_before_body(self):
        decoder = FrameDecoder(max_frame=1000)
        self.assertEqual(decoder.feed(wire.encode_preamble()), [])
        # Only the length field has arrived; the body never will.
        e = self.assertRaises(ProtocolError, decoder.feed, struct.pack("<I", 1000))
        self.assertIn("exceeds the maximum frame size of 1000", str(e))

    def test_oversized_header_in_same_chunk_as_preamble(self):
        decoder = FrameDecoder(max_frame=HEADER_SIZE)
        self.assertRaises(
            ProtocolError, decoder.feed, wire.encode_preamble() + struct.pack("<I", 2**32 - 1)
        )

    def test_frame_of_exactly_max_frame_accepted(self):
        frame = wire.encode_frame(FrameKind.DATA, b"x" * 56)
        self.assertEqual(len(frame), 100)
        (got,) = FrameDecoder(100, expect_preamble=False).feed(frame)
        self.assertEqual(got.payload, b"x" * 56)
        self.assertRaises(ProtocolError, FrameDecoder(99, expect_preamble=False).feed, frame)

    @PROPS
    @given(st.integers(HEADER_SIZE, 10_000), st.integers(1, 2**32 - 1 - 4), st.integers(0, 3))
    def test_any_announced_oversize_is_refused(self, max_frame, excess, prefix_bytes):
        length = min(max_frame - 4 + excess, 2**32 - 1)
        decoder = FrameDecoder(max_frame, expect_preamble=False)
        header = struct.pack("<I", length)
        # The first bytes of the length field alone are not enough to judge.
        self.assertEqual(decoder.feed(header[:prefix_bytes]), [])
        self.assertRaises(ProtocolError, decoder.feed, header[prefix_bytes:])

    @PROPS
    @given(st.integers(HEADER_SIZE, 2000), st.binary(max_size=3000), st.data())
    def test_buffer_bounded_while_frame_incomplete(self, max_frame, body, data):
        # A legal frame header followed by an arbitrary, possibly partial, body.
        length = data.draw(st.integers(HEADER_TAIL, max_frame - 4))
        head = struct.pack("<I", length) + bytes([FrameKind.DATA]) + bytes(HEADER_TAIL - 1)
        stream = wire.encode_preamble() + head + body
        decoder = FrameDecoder(max_frame)
        feed_all(decoder, draw_chunks(data.draw, stream), max_frame + PREAMBLE_SIZE)


# --- preamble


class PreambleTests(SynchronousTestCase):
    def test_http_client_told_at_once(self):
        decoder = FrameDecoder()
        e = self.assertRaises(ProtocolError, decoder.feed, b"GET ")
        self.assertIn("not a yotonnet node", str(e))

    @PROPS
    @given(st.binary(min_size=1, max_size=PREAMBLE_SIZE))
    def test_wrong_magic_detected_from_first_bytes(self, head):
        decoder = FrameDecoder()
        if MAGIC.startswith(head[:8]) and len(head) < PREAMBLE_SIZE:
            # A correct prefix of the magic: wait for more.
            self.assertEqual(decoder.feed(head), [])
        elif not MAGIC.startswith(head[:8]):
            e = self.assertRaises(ProtocolError, decoder.feed, head)
            self.assertIn("not a yotonnet node", str(e))

    def test_magic_prefix_then_wrong_byte(self):
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b"YOTON"), [])
        e = self.assertRaises(ProtocolError, decoder.feed, b"X")
        self.assertIn("not a yotonnet node", str(e))

    @PROPS
    @given(st.integers(0, 2**16 - 1).filter(lambda v: v != wire.PROTOCOL_VERSION))
    def test_unknown_version_names_both(self, version):
        decoder = FrameDecoder()
        e = self.assertRaises(ProtocolError, decoder.feed, PREAMBLE.pack(MAGIC, version, 0))
        self.assertIn(f"version {version}", str(e))
        self.assertIn(f"version {wire.PROTOCOL_VERSION}", str(e))

    def test_reserved_field_ignored(self):
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(PREAMBLE.pack(MAGIC, wire.PROTOCOL_VERSION, 0xBEEF)), [])
        self.assertEqual(decoder.peer_version, wire.PROTOCOL_VERSION)


# --- header checks


class HeaderTests(SynchronousTestCase):
    @PROPS
    @given(u8.filter(lambda k: k not in set(FrameKind)))
    def test_unknown_kind(self, kind):
        data = HEADER.pack(HEADER_TAIL, kind, 0, 0, 0, 0, 0, 0, 0)
        e = self.assertRaises(ProtocolError, FrameDecoder(expect_preamble=False).feed, data)
        self.assertIn(f"unknown frame kind {kind}", str(e))

    @PROPS
    @given(st.integers(0, HEADER_TAIL - 1))
    def test_length_shorter_than_header(self, length):
        # Refused from the length field alone, without waiting for a header.
        data = struct.pack("<I", length)
        e = self.assertRaises(ProtocolError, FrameDecoder(expect_preamble=False).feed, data)
        self.assertIn("shorter than a frame header", str(e))

    def test_extension_longer_than_frame(self):
        data = HEADER.pack(HEADER_TAIL + 2, FrameKind.DATA, 0, 3, 0, 0, 0, 0, 0) + b"ab"
        e = self.assertRaises(ProtocolError, FrameDecoder(expect_preamble=False).feed, data)
        self.assertIn("extension", str(e))


# --- HELLO

RESERVED = {"protocol", "version", "node", "name", "capabilities", "max_frame", "heartbeat"}
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
# What str.isprintable() accepts: no control, format, surrogate, private, unassigned or
# separator characters, apart from the plain space.
printable_chars = st.characters(
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
) | st.just(" ")
node_names = st.text(printable_chars, max_size=MAX_NODE_NAME)
hellos = st.builds(
    Hello,
    node_id=st.integers(1, MAX_U64),
    name=node_names,
    capabilities=st.lists(st.text(max_size=10), max_size=4).map(tuple),
    max_frame=st.integers(HEADER_SIZE, 2**40),
    heartbeat=st.floats(min_value=1e-3, max_value=86399.0),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in RESERVED), json_values, max_size=3
    ),
)


def hello_frame(body: object) -> Frame:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Frame(FrameKind.HELLO, 0, 0, 0, 0, 0, 0, payload)


GOOD = {
    "protocol": "yotonnet",
    "version": 1,
    "node": "00000000000000ff",
    "name": "n",
    "capabilities": [],
    "max_frame": 65536,
    "heartbeat": 1.0,
}


class HelloTests(SynchronousTestCase):
    @PROPS
    @given(hellos, st.data())
    def test_round_trip_through_decoder(self, hello, data):
        stream = wire.encode_preamble() + wire.encode_hello(hello)
        decoder = FrameDecoder(wire.HANDSHAKE_MAX_FRAME)
        got, errored = feed_all(decoder, draw_chunks(data.draw, stream), wire.DEFAULT_MAX_FRAME)
        if errored:
            # Only a HELLO too big for the handshake limit may be refused.
            self.assertGreater(len(stream), wire.HANDSHAKE_MAX_FRAME)
            return
        (frame,) = got
        self.assertEqual(wire.decode_hello(frame), hello)

    def test_good_template_decodes(self):
        hello = wire.decode_hello(hello_frame(GOOD))
        self.assertEqual((hello.node_id, hello.max_frame, hello.extra), (255, 65536, {}))

    def assertHelloError(self, body, *fragments):
        e = self.assertRaises(ProtocolError, wire.decode_hello, hello_frame(body))
        self.assertIn("HELLO", str(e))
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_not_json(self):
        self.assertHelloError(b"{nope", "not JSON")
        self.assertHelloError(b"\xff\xfe", "not JSON")
        self.assertHelloError(b"", "not JSON")

    def test_not_an_object(self):
        self.assertHelloError([1, 2], "JSON object")
        self.assertHelloError("hi", "JSON object")

    def test_missing_fields(self):
        for field in ("node", "name", "max_frame"):
            body = {k: v for k, v in GOOD.items() if k != field}
            self.assertHelloError(body, field)

    def test_bad_types(self):
        for field, value in [
            ("node", 255),
            ("node", "zz"),
            ("node", None),
            ("node", "0"),
            ("node", "-1"),
            ("node", "1" + "0" * 16),
            ("name", 3),
            ("capabilities", "routing"),
            ("max_frame", "big"),
            ("max_frame", 10.5),
            ("max_frame", HEADER_SIZE - 1),
            ("max_frame", True),
            ("heartbeat", 0),
            ("heartbeat", -1),
            ("heartbeat", "1"),
            ("heartbeat", 10**9),
        ]:
            body = {**GOOD, field: value}
            self.assertHelloError(body)

    def test_names_a_terminal_or_a_log_would_misread_are_refused(self):
        # A clipboard write, a screen clear, a fake log line, a bidi override, too long.
        for name, fragment in [
            ("evil\x1b]52;c;aGk=\x07", "non-printable"),
            ("\x1b[2J\x1b[H", "non-printable"),
            ("n\n2026-01-01 [-] all links healthy", "non-printable"),
            ("abc\u202edcba", "non-printable"),
            ("x" * (MAX_NODE_NAME + 1), f"at most {MAX_NODE_NAME}"),
        ]:
            e = self.assertRaises(ProtocolError, wire.decode_hello,
                                  hello_frame({**GOOD, "name": name}))
            self.assertIn("HELLO refused: node name", str(e))
            self.assertIn(fragment, str(e))
            self.assertIn("--name", str(e))  # what the peer's operator can do about it
            # The refusal travels back in an ERROR frame and into logs: it is escaped itself.
            self.assertTrue(str(e).isprintable(), repr(str(e)))

    @PROPS
    @given(node_names)
    def test_printable_names_up_to_the_limit_are_accepted(self, name):
        self.assertEqual(wire.decode_hello(hello_frame({**GOOD, "name": name})).name, name)

    def test_wrong_protocol(self):
        self.assertHelloError({**GOOD, "protocol": "http"}, "another protocol")
        self.assertHelloError({k: v for k, v in GOOD.items() if k != "protocol"}, "protocol")

    def test_not_a_hello_frame(self):
        frame = Frame(FrameKind.DATA, 0, 0, 0, 0, 0, 0, json.dumps(GOOD).encode())
        e = self.assertRaises(ProtocolError, wire.decode_hello, frame)
        self.assertIn("expected a HELLO", str(e))

    def test_deeply_nested_json(self):
        # A 5 kB HELLO fits the handshake limit; json's recursion limit must not
        # escape as RecursionError (the link only turns ProtocolError into a refusal).
        self.assertHelloError(b"[" * 5000)
        self.assertHelloError(b'{"x": ' * 5000)

    @PROPS
    @given(st.dictionaries(st.sampled_from(sorted(RESERVED | {"x"})), json_values))
    def test_fuzzed_bodies(self, body):
        try:
            hello = wire.decode_hello(hello_frame({**GOOD, **body}))
        except ProtocolError as e:
            self.assertIn("HELLO", str(e))
        else:
            self.assertTrue(0 < hello.node_id <= MAX_U64)
            self.assertGreaterEqual(hello.max_frame, HEADER_SIZE)
            self.assertTrue(0 < hello.heartbeat < 86400)
