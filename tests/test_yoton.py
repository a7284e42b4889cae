"""Ring 1: the sans-IO half of Yoton compatibility (yotonnet.yoton.wire, objects, slots).

Expected bytes and hashes were produced by Yoton 2.2 itself (``pyzo/yoton``:
``misc.slot_hash``, ``ObjectMessageType.message_to_bytes``, ``Package.parts``),
so these tests pin the facts without importing Yoton here.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core.codec import decode_object, encode_object
from yotonnet.core.names import channel_id
from yotonnet.core.routing import REP, STATE, SUB
from yotonnet.errors import DecodeError, MessageTypeError, ProtocolError
from yotonnet.yoton import objects
from yotonnet.yoton import wire as ywire
from yotonnet.yoton.slots import FLOW, PUB, REPL, REQ, STATE_SLOT, SlotMap, YotonChannel

#: produced by Yoton 2.2's ObjectMessageType for the value in test_object_bytes_match_yoton
YOTON_OBJECT_HEX = (
    "64057301616c046901000000000000006600000000000004406e62017301627305c3a974c3a973017474026901"
    "00000000000000730178730362696773ff2c01000000000000" + "79" * 300 + "73016e69fbffffffffffffff"
)
#: Package(b"hi", slot 99, source 7, seq 8, dest 9, dest seq 10).parts(), joined
YOTON_PACKAGE_HEX = (
    "594f544f4e202020" "6300000000000000" "0700000000000000" "0800000000000000"
    "0900000000000000" "0a00000000000000" "0200000000000000" "6869"
)

yoton_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=5)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1), inner, max_size=5),
    max_leaves=30,
)


class SlotHash(SynchronousTestCase):
    def test_matches_yoton(self) -> None:
        for name, expected in [
            ("hello.txt.pub-sub", 20438627115249),
            ("math.obj.req-rep", 17258380970147),
            ("settings.obj.state", 24452880219845),
            ("", 8),
            ("a" * 300, 12179530906847317059),  # long enough for the int to pass 64 bits
            ("\u00dcn\u00efcode.bin.sub-pub", 33766869783223),
        ]:
            self.assertEqual(ywire.slot_hash(name), expected, name)

    def test_slot_name_is_base_type_pattern_lowercased(self) -> None:
        self.assertEqual(
            ywire.slot_name(" Kernel.Stdout", "TEXT", "pub-sub"), "kernel.stdout.txt.pub-sub"
        )
        with self.assertRaises(ValueError) as caught:
            ywire.slot_name("x", "JSON", "state")
        self.assertIn("TEXT, BINARY and OBJECT", str(caught.exception))

    @given(st.text(max_size=60))
    def test_reserved_slots_never_hit(self, name: str) -> None:
        self.assertTrue(8 <= ywire.slot_hash(name) < 2**64)


class Objects(SynchronousTestCase):
    def test_object_bytes_match_yoton(self) -> None:
        value = {"a": [1, 2.5, None, True], "b": "\u00e9t\u00e9", "t": (1, "x"), "big": "y" * 300,
                 "n": -5}
        self.assertEqual(objects.encode(value).hex(), YOTON_OBJECT_HEX)
        self.assertEqual(objects.decode(bytes.fromhex(YOTON_OBJECT_HEX)), value)

    @given(yoton_values)
    def test_round_trip_and_through_the_yotonnet_codec(self, value: object) -> None:
        data = objects.encode(value)
        self.assertEqual(objects.decode(data), value)
        # Yoton -> yotonnet -> Yoton gives the same bytes back.
        self.assertEqual(objects.encode(decode_object(encode_object(objects.decode(data)))), data)

    @settings(max_examples=300)
    @given(st.binary(max_size=64))
    def test_garbage_only_raises_decode_error(self, data: bytes) -> None:
        try:
            objects.decode(data)
        except DecodeError:
            pass

    def test_refusals_say_what(self) -> None:
        for value, words in [
            (b"raw", "not bytes"),
            (2**64, "64-bit"),
            (object(), "not object"),
        ]:
            with self.assertRaises(MessageTypeError) as caught:
                objects.encode(value)
            self.assertIn(words, str(caught.exception))
        with self.assertRaises(DecodeError) as caught:
            objects.decode(b"l\xff" + struct.pack("<Q", 2**40))
        self.assertIn("cannot hold", str(caught.exception))
        with self.assertRaises(DecodeError):
            objects.decode(b"l\x01" * 200 + b"n")  # nests too deep
        with self.assertRaises(DecodeError):
            objects.decode(b"nn")  # left over
        self.assertIsNone(objects.decode(b""))  # Yoton's empty message


class Packages(SynchronousTestCase):
    def test_package_bytes_match_yoton(self) -> None:
        data = ywire.encode_package(99, b"hi", 7, 8, 9, 10)
        self.assertEqual(data.hex(), YOTON_PACKAGE_HEX)
        self.assertEqual(
            ywire.PackageDecoder().feed(data), [ywire.Package(99, 7, 8, 9, 10, b"hi")]
        )

    def test_signals_byte_by_byte(self) -> None:
        stream = (
            ywire.HEARTBEAT
            + ywire.encode_package(12, b"one", 1, 1)
            + ywire.HEARTBEAT
            + ywire.encode_package(12, b"two", 1, 2)
            + ywire.CLOSE
            + ywire.encode_package(12, b"after close", 1, 3)
        )
        decoder = ywire.PackageDecoder()
        got = []
        for i in range(len(stream)):
            got += decoder.feed(stream[i : i + 1])
        self.assertEqual([p.data for p in got], [b"one", b"two"])
        self.assertEqual(decoder.heartbeats, 2)
        self.assertTrue(decoder.closed)

    def test_bad_streams(self) -> None:
        with self.assertRaises(ProtocolError) as caught:
            ywire.PackageDecoder().feed(b"GET / HTTP/1.1\r\n" * 4)
        self.assertIn("lost track", str(caught.exception))
        header = ywire.HEADER.pack(ywire.MAGIC, 12, 1, 1, 0, 0, 10_000)
        with self.assertRaises(ProtocolError) as caught:
            ywire.PackageDecoder(max_package=1000).feed(header)  # refused before the body
        self.assertIn("exceeds", str(caught.exception))

    @settings(max_examples=200)
    @given(st.binary(max_size=300), st.integers(0, 300))
    def test_mutated_streams_only_raise_protocol_error(self, junk: bytes, cut: int) -> None:
        good = ywire.encode_package(12, b"x" * 40, 1, 1) * 3
        stream = good[:cut] + junk + good[cut:]
        try:
            ywire.PackageDecoder(max_package=4096).feed(stream)
        except ProtocolError:
            pass


class Handshake(SynchronousTestCase):
    def test_line_and_parse(self) -> None:
        line = ywire.handshake_line(0x3392265844596B5E, 13519)
        self.assertEqual(line, b"YOTON!3392265844596b5e.13519\r\n")
        self.assertEqual(ywire.parse_handshake(line[:-2]), (0x3392265844596B5E, 13519))

    def test_refusals(self) -> None:
        for line, words in [
            (b"GET / HTTP/1.1", "expected a Yoton handshake"),
            (b"ERROR: this is Yoton.", "refused"),
            (b"YOTON!0000000000000000.1", "id 0"),
            (b"YOTON!zz.1", "expected a Yoton handshake"),
        ]:
            with self.assertRaises(ProtocolError) as caught:
                ywire.parse_handshake(line)
            self.assertIn(words, str(caught.exception))

    def test_reader(self) -> None:
        reader = ywire.HandshakeReader()
        self.assertIsNone(reader.feed(b"YOTON!ab"))
        self.assertEqual(reader.feed(b"c.1\r\nrest"), (b"YOTON!abc.1", b"rest"))
        with self.assertRaises(ProtocolError):
            ywire.HandshakeReader().feed(b"x" * (ywire.MAX_HANDSHAKE_LINE + 1))


class Slots(SynchronousTestCase):
    def test_map_both_ways(self) -> None:
        slots = SlotMap(
            [
                YotonChannel("hello"),
                YotonChannel("calc", "reqrep", serve=True),
                YotonChannel("settings", "state", "OBJECT"),
                YotonChannel("Py.Out", yoton_name="pyzo stdout", subscribe=False),
            ]
        )
        hello = slots.by_channel[channel_id("pubsub", "hello")]
        self.assertEqual(hello.slots[PUB], ywire.slot_hash("hello.txt.pub-sub"))
        self.assertEqual(hello.slots[FLOW], ywire.slot_hash("hello.txt.sub-pub"))
        calc = slots.by_channel[channel_id("reqrep", "calc")]
        self.assertEqual(calc.slots[REQ], ywire.slot_hash("calc.obj.req-rep"))
        self.assertEqual(calc.slots[REPL], ywire.slot_hash("calc.obj.rep-req"))
        state = slots.by_channel[channel_id("state", "settings")]
        self.assertEqual(state.slots[STATE_SLOT], ywire.slot_hash("settings.obj.state"))
        out = slots.by_channel[channel_id("pubsub", "Py.Out")]
        self.assertEqual(out.slots[PUB], ywire.slot_hash("pyzo stdout.txt.pub-sub"))
        self.assertEqual(slots.by_slot[calc.slots[REPL]], (REPL, calc))
        self.assertEqual(
            {ch: i.role for ch, i in slots.interests().items()},
            {hello.channel: SUB, calc.channel: REP, state.channel: STATE},
        )

    def test_translation(self) -> None:
        obj = SlotMap([YotonChannel("o", message_type="OBJECT")]).carried[0]
        value = {"k": (1, [2.0, None])}
        self.assertEqual(decode_object(obj.to_mesh(objects.encode(value))), value)
        self.assertEqual(objects.decode(obj.to_yoton(encode_object(value))), value)
        with self.assertRaises(MessageTypeError):
            obj.to_yoton(encode_object(b"bytes have no Yoton form"))
        text = SlotMap([YotonChannel("t")]).carried[0]
        self.assertEqual(text.to_mesh("\u00e9".encode()), "\u00e9".encode())
        with self.assertRaises(UnicodeDecodeError):
            text.to_mesh(b"\xff")

    def test_bad_specs_say_what(self) -> None:
        for make, words in [
            (lambda: YotonChannel("bad name!"), "invalid channel name"),
            (lambda: YotonChannel("x", "fanout"), "pattern must be one of"),
            (lambda: YotonChannel("x", message_type="JSON"), "TEXT, BINARY or OBJECT"),
            (lambda: SlotMap([YotonChannel("x"), YotonChannel("x")]), "listed twice"),
            (
                lambda: SlotMap([YotonChannel("x"), YotonChannel("y", yoton_name="X")]),
                "carried twice",
            ),
            (lambda: SlotMap(["hello"]), "YotonChannel"),
        ]:
            with self.assertRaises((ValueError, TypeError)) as caught:
                make()
            self.assertIn(words, str(caught.exception))

    def test_reqrep_is_always_object(self) -> None:
        self.assertEqual(YotonChannel("c", "reqrep", "TEXT").message_type, "OBJECT")
