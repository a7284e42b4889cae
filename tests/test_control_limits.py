"""Ring 1: sans-IO tests for the limits on control traffic.

* ``decode_object(data, max_items)``: the bound on the values a payload may
  decode to, charged at each container's count before its items are built;
* ``wire.decode_control`` and ``FrameDecoder(max_control=...)``: the CONTROL
  frame size limit, checked from the header before the body is buffered, and
  the one function that turns a control payload into a message;
* routing records: node names checked as in a HELLO.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet import wire
from yotonnet.codec import DecodeError, ItemLimitError, decode_object, encode_object
from yotonnet.errors import ProtocolError
from yotonnet.names import MAX_NODE_NAME
from yotonnet.routing import SUB, NodeState
from yotonnet.wire import HEADER_SIZE, FrameDecoder, FrameKind, decode_control, encode_frame

PROPS = settings(max_examples=200, deadline=None)
MiB = 1024 * 1024

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


def count_values(value: object) -> int:
    """Values a decoder builds for ``value``: itself, and for containers their items
    (a dict's keys and values one each)."""
    if isinstance(value, list | tuple):
        return 1 + sum(count_values(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(count_values(k) + count_values(v) for k, v in value.items())
    return 1


def empty_lists(total: int) -> bytes:
    """An OBJECT list of empty lists filling ``total`` bytes: the amplification payload."""
    n = (total - 5) // 5
    return b"l" + struct.pack("<I", n) + b"l\0\0\0\0" * n


class BoundedDecodeTests(SynchronousTestCase):
    @PROPS
    @given(values)
    def test_exact_budget_decodes_one_less_is_refused(self, value):
        data = encode_object(value)
        needed = count_values(value)
        self.assertEqual(decode_object(data, needed), decode_object(data))
        e = self.assertRaises(ItemLimitError, decode_object, data, needed - 1)
        self.assertEqual(e.max_items, needed - 1)
        self.assertIsInstance(e, DecodeError)

    @PROPS
    @given(st.binary(max_size=200), st.integers(0, 50))
    def test_random_payloads_raise_only_decode_error(self, data, budget):
        try:
            decode_object(data, budget)
        except DecodeError as e:
            self.assertTrue(str(e))

    def test_dict_items_count_keys_and_values(self):
        data = encode_object({"a": 1, "b": 2})
        self.assertEqual(decode_object(data, 5), {"a": 1, "b": 2})
        self.assertRaises(ItemLimitError, decode_object, data, 4)

    def test_container_refused_at_its_count_before_building_items(self):
        payload = empty_lists(MiB)  # ~210,000 empty lists
        tracemalloc.start()
        try:
            e = self.assertRaises(ItemLimitError, decode_object, payload, 1000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIn("more than 1000 values", str(e))
        # Not one of the lists was built (each would take 56 bytes or more).
        self.assertLess(peak, 64 * 1024)

    def test_nested_containers_are_charged_as_they_come(self):
        # Many small lists, none over the budget alone: refused once their sum is.
        value = [[None] * 10 for _ in range(100)]  # 1 + 100 * 11 values
        data = encode_object(value)
        self.assertEqual(decode_object(data, 1101), value)
        self.assertRaises(ItemLimitError, decode_object, data, 1100)

    def test_unbounded_default_unchanged(self):
        # User payloads keep no item bound (only size and depth): a large list decodes.
        self.assertEqual(len(decode_object(empty_lists(64 * 1024))), (64 * 1024 - 5) // 5)


class DecodeControlTests(SynchronousTestCase):
    def test_oversized_refused_naming_size_limit_and_setting(self):
        payload = encode_object(["node", "x" * 2000])
        size = HEADER_SIZE + len(payload)
        e = self.assertRaises(ProtocolError, decode_control, payload, size - 1)
        text = str(e)
        self.assertIn(f"CONTROL frame of {size} bytes", text)
        self.assertIn(f"limit of {size - 1} bytes", text)
        self.assertIn("max_control_frame", text)
        self.assertEqual(decode_control(payload, size), ["node", "x" * 2000])

    def test_empty_list_flood_refused_by_the_value_bound(self):
        payload = empty_lists(MiB - HEADER_SIZE)
        e = self.assertRaises(ProtocolError, decode_control, payload, MiB)
        self.assertIn("control message refused", str(e))
        self.assertIn(f"more than {MiB // wire.CONTROL_BYTES_PER_ITEM} values", str(e))

    def test_not_a_control_message(self):
        for value in ([], [1, 2], {"node": 1}, "node", ("node", 1), None):
            e = self.assertRaises(ProtocolError, decode_control, encode_object(value), MiB)
            self.assertIn("malformed control message", str(e), value)
        e = self.assertRaises(ProtocolError, decode_control, b"l\x05\0\0\0", MiB)
        self.assertIn("malformed control message", str(e))


class DecoderControlLimitTests(SynchronousTestCase):
    def decoder(self, max_frame: int = 16 * MiB, max_control: int | None = 4096):
        return FrameDecoder(max_frame=max_frame, expect_preamble=False, max_control=max_control)

    def test_refused_from_the_header_before_the_body(self):
        big = encode_frame(FrameKind.CONTROL, b"l" + b"\0" * 10_000)
        for cut in (5, 20, HEADER_SIZE):  # kind known from the fifth byte on
            e = self.assertRaises(ProtocolError, self.decoder().feed, big[:cut])
            self.assertIn(f"CONTROL frame of {len(big)} bytes", str(e))
            self.assertIn("limit of 4096 bytes", str(e))

    def test_whole_frame_in_one_read_refused_too(self):
        big = encode_frame(FrameKind.CONTROL, b"x" * 5000)
        self.assertRaises(ProtocolError, self.decoder().feed, big)
        self.assertRaises(ProtocolError, self.decoder().feed, encode_frame(FrameKind.PING) + big)

    def test_other_kinds_and_control_frames_up_to_the_limit_pass(self):
        data = encode_frame(FrameKind.REQUEST, b"x" * 5000)
        small = encode_frame(FrameKind.CONTROL, b"y" * (4096 - HEADER_SIZE))
        frames = self.decoder().feed(data + small)
        self.assertEqual([(f.kind, len(f.payload)) for f in frames],
                         [(FrameKind.REQUEST, 5000), (FrameKind.CONTROL, 4096 - HEADER_SIZE)])
        self.assertEqual(len(self.decoder().feed(small)), 1)  # alone in a read: the fast path

    def test_without_a_control_limit_only_max_frame_applies(self):
        big = encode_frame(FrameKind.CONTROL, b"x" * 5000)
        self.assertEqual(len(self.decoder(max_control=None).feed(big)), 1)

    def test_over_max_frame_gets_the_max_frame_error(self):
        big = encode_frame(FrameKind.CONTROL, b"x" * 9000)
        e = self.assertRaises(ProtocolError, self.decoder(8192, 4096).feed, big[:HEADER_SIZE])
        self.assertIn("maximum frame size of 8192", str(e))

    def test_large_control_frame_refused_before_it_is_parked(self):
        # Past 64 KiB the decoder would park a partial frame until the rest arrives; a
        # CONTROL frame over the limit is refused from the first read instead.
        d = self.decoder(max_control=MiB)
        parked = encode_frame(FrameKind.DATA, b"z" * (2 * MiB))
        self.assertEqual(d.feed(parked[:65536]), [])
        self.assertEqual(d.buffered, 65536)
        big = encode_frame(FrameKind.CONTROL, b"x" * (2 * MiB))
        e = self.assertRaises(ProtocolError, self.decoder(max_control=MiB).feed, big[:65536])
        self.assertIn(f"CONTROL frame of {2 * MiB + HEADER_SIZE} bytes", str(e))

    @PROPS
    @given(st.lists(st.tuples(st.sampled_from([FrameKind.CONTROL, FrameKind.DATA]),
                              st.integers(0, 300)), min_size=1, max_size=6),
           st.integers(1, 50), st.data())
    def test_any_chunking(self, spec, chunk, data):
        limit = HEADER_SIZE + 200
        stream = b"".join(encode_frame(kind, b"p" * n) for kind, n in spec)
        first_bad = next(
            (i for i, (kind, n) in enumerate(spec)
             if kind == FrameKind.CONTROL and HEADER_SIZE + n > limit),
            None,
        )
        d = self.decoder(max_control=limit)
        got = []
        try:
            for i in range(0, len(stream), chunk):
                got += d.feed(stream[i:i + chunk])
        except ProtocolError as e:
            self.assertIsNotNone(first_bad)
            self.assertIn("max_control_frame", str(e))
            self.assertLessEqual(len(got), first_bad)
            return
        self.assertIsNone(first_bad)
        self.assertEqual(len(got), len(spec))


class RecordNameTests(SynchronousTestCase):
    def test_names_a_terminal_or_a_log_would_misread_are_refused(self):
        for name in ("evil\x1b[2J", "line\nfake log line", "\u202eabc", "x" * (MAX_NODE_NAME + 1),
                     5, None, b"bytes"):
            e = self.assertRaises(ValueError, NodeState.from_wire, [7, name, 1, [], []])
            text = str(e)
            self.assertIn("node name", text, name)
            self.assertIn(f"{7:016x}", text)
            self.assertNotIn("\x1b", text)

    def test_printable_names_up_to_the_limit_are_accepted(self):
        for name in ("a", "node a/β", "x" * MAX_NODE_NAME):
            self.assertEqual(NodeState.from_wire([7, name, 1, [], []]).name, name)

    def test_roles_are_shared_constants(self):
        wire_role = "".join(["s", "ub"])  # a str object other than the constant
        state = NodeState.from_wire([7, "n", 1, [], [[5, wire_role, "TEXT", 1]]])
        self.assertIs(state.interests[5].role, SUB)
