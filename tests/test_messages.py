"""Ring 1: sans-IO unit and property tests for message types (``yotonnet.core.messages``).

Covers the OBJECT encoding round trip with exact types, its robustness against
random and mutated payloads (only ``DecodeError`` may escape), the nesting and
allocation limits, the TEXT and BINARY type checks, and the registry of
custom message types.
"""

from __future__ import annotations

import enum
import math
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import yotonnet
from yotonnet.core import messages
from yotonnet.core.codec import MAX_DEPTH, decode_values, encode_values
from yotonnet.core.messages import (
    BINARY,
    OBJECT,
    TEXT,
    DecodeError,
    MessageTypeError,
    decode_object,
    encode_object,
    message_type,
    register_message_type,
)

PROPS = settings(max_examples=200, deadline=None)

# The OBJECT encoder uses "surrogatepass", so lone surrogates are legal in str values.
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
ints = st.one_of(
    st.integers(),
    st.integers(-(2**300), 2**300),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, -(2**64), 0, -1]),
)
hashable_scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False), any_text, st.binary(max_size=20)
)
# NaN is no dict key: NaN != NaN, so the decoded dict could never compare equal.
hashables = st.recursive(
    hashable_scalars, lambda c: st.lists(c, max_size=3).map(tuple), max_leaves=6
)
scalars = st.one_of(hashable_scalars, st.floats())
values = st.recursive(
    scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=4),
        st.lists(c, max_size=4).map(tuple),
        st.dictionaries(hashables, c, max_size=4),
    ),
    max_leaves=25,
)


def same(a: object, b: object) -> bool:
    """Equality that also demands equal types, keeps -0.0 apart and matches NaN to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


def nest(levels: int, leaf: object) -> object:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def decode_or_decode_error(payload: bytes) -> None:
    """Decode; DecodeError is fine, any other exception propagates and fails the test."""
    try:
        decode_object(payload)
    except DecodeError as e:
        assert str(e), "DecodeError without a message"


class ObjectRoundTripTests(SynchronousTestCase):
    @PROPS
    @given(values)
    def test_round_trip_keeps_types(self, value):
        data = encode_object(value)
        back = decode_object(data)
        self.assertTrue(same(value, back), (value, back))
        # The encoding is canonical: decoding then encoding gives the same bytes.
        self.assertEqual(encode_object(back), data)

    @PROPS
    @given(st.lists(values, max_size=5))
    def test_values_round_trip(self, items):
        # Request arguments travel as values back to back, their count in the header.
        data = encode_values(items)
        back = decode_values(data, len(items))
        self.assertTrue(same(items, back), (items, back))
        self.assertEqual(data, b"".join(encode_object(v) for v in items))

    def test_values_count_must_match(self):
        data = encode_values([1, "two", b"3"])
        for count in (2, 4, 100):
            self.assertRaises(DecodeError, decode_values, data, count)
        self.assertRaises(DecodeError, decode_values, data[:-1], 3)
        self.assertRaises(DecodeError, decode_values, b"", 1)
        self.assertEqual(decode_values(b"", 0), [])

    def test_single_bytes_fast_path_checks_its_length(self):
        data = encode_object(b"abc")
        self.assertEqual(decode_object(data), b"abc")
        self.assertRaises(DecodeError, decode_object, data + b"x")
        self.assertRaises(DecodeError, decode_object, data[:-1])

    def test_exact_types(self):
        value = {(1, "a"): [True, 1, 1.0, (False,), None], b"k": ("", b"", [], (), {})}
        back = decode_object(encode_object(value))
        self.assertTrue(same(value, back), back)
        self.assertIs(type(back[(1, "a")][0]), bool)
        self.assertIs(type(back[b"k"][3]), tuple)

    def test_special_floats(self):
        for f in (float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308):
            self.assertTrue(same(decode_object(encode_object(f)), f), f)
        self.assertTrue(math.isnan(decode_object(encode_object(float("nan")))))

    def test_lone_surrogates_in_str(self):
        for s in ("\ud800", "a\udfffb", "\udc80\ud800"):
            self.assertEqual(decode_object(encode_object(s)), s)

    def test_bytearray_arrives_as_bytes(self):
        self.assertTrue(same(decode_object(encode_object(bytearray(b"ab"))), b"ab"))

    def test_unsupported_types(self):
        class Color(enum.IntEnum):
            RED = 1

        for value in ({1}, object(), 1j, Color.RED, memoryview(b"x"), [1, {2}], {"a": frozenset()}):
            e = self.assertRaises(MessageTypeError, encode_object, value)
            self.assertIn("OBJECT channels cannot send", str(e))
        e = self.assertRaises(MessageTypeError, encode_object, {1})
        self.assertIn("set", str(e))

    def test_object_type_is_registered_pair(self):
        self.assertIs(OBJECT.encode, encode_object)
        self.assertIs(OBJECT.decode, decode_object)


class ObjectRobustnessTests(SynchronousTestCase):
    @PROPS
    @given(st.binary(max_size=300))
    def test_random_payloads(self, payload):
        decode_or_decode_error(payload)

    @PROPS
    @given(
        st.lists(
            st.one_of(
                st.sampled_from([bytes([t]) for t in b"NTFiIdsblta"]),
                st.integers(0, 6).map(lambda n: struct.pack("<I", n)),
                st.binary(min_size=1, max_size=9),
            ),
            max_size=30,
        )
    )
    def test_structured_garbage(self, parts):
        # Built from real tag bytes and small counts so that decoding gets deep.
        decode_or_decode_error(b"".join(parts))

    @PROPS
    @given(
        values,
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "insert", "delete", "truncate"]),
                st.integers(0, 10**6),
                st.integers(0, 255),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def test_mutated_payloads(self, value, mutations):
        buf = bytearray(encode_object(value))
        for op, index, arg in mutations:
            i = index % (len(buf) + 1)
            if op == "flip" and buf:
                buf[i % len(buf)] ^= arg or 1
            elif op == "insert":
                buf[i:i] = bytes([arg])
            elif op == "delete":
                del buf[i : i + 1]
            else:
                del buf[i:]
        decode_or_decode_error(bytes(buf))

    def test_specific_errors(self):
        cases = [
            (b"", "truncated"),
            (b"i\x01", "truncated"),
            (b"s\x05\x00\x00\x00ab", "truncated"),
            (b"s\x02\x00\x00\x00\xff\xfe", "UTF-8"),
            (b"NN", "trailing"),
            (b"?", "unknown tag"),
            (b"a\x01\x00\x00\x00l\x00\x00\x00\x00N", "dict key of type list"),
            (b"a\x01\x00\x00\x00t\x01\x00\x00\x00a\x00\x00\x00\x00N", "dict key of type tuple"),
        ]
        for payload, fragment in cases:
            e = self.assertRaises(DecodeError, decode_object, payload)
            self.assertIn(fragment, str(e), payload)

    def test_depth_limit_same_on_both_sides(self):
        # Whatever the encoder accepts the decoder accepts, and the reverse.
        for levels in range(MAX_DEPTH - 2, MAX_DEPTH + 3):
            for leaf in (None, []):
                value = nest(levels, leaf)
                payload = b"l\x01\x00\x00\x00" * levels + encode_object(leaf)
                try:
                    data = encode_object(value)
                except MessageTypeError as e:
                    self.assertIn(f"at most {MAX_DEPTH} levels", str(e))
                    e = self.assertRaises(DecodeError, decode_object, payload)
                    self.assertIn(f"deeper than {MAX_DEPTH}", str(e))
                else:
                    self.assertEqual(data, payload)
                    self.assertTrue(same(decode_object(payload), value))
        self.assertEqual(decode_object(encode_object(nest(MAX_DEPTH, None))), nest(MAX_DEPTH, None))
        self.assertRaises(MessageTypeError, encode_object, nest(MAX_DEPTH + 1, None))

    def test_very_deep_payload_is_decode_error(self):
        # Far past the interpreter's recursion limit: must stop at MAX_DEPTH.
        self.assertRaises(DecodeError, decode_object, b"l\x01\x00\x00\x00" * 100_000 + b"N")
        self.assertRaises(DecodeError, decode_object, b"a\x01\x00\x00\x00N" * 100_000 + b"NN")

    def test_count_bombs_do_not_allocate(self):
        bombs = [tag + struct.pack("<I", 2**31) + b"NNN" for tag in (b"l", b"t", b"a")]
        bombs += [tag + struct.pack("<I", 2**31) + b"xyz" for tag in (b"s", b"b", b"I")]
        # Inside a container, too.
        bombs.append(b"l\x02\x00\x00\x00N" + bombs[0])
        tracemalloc.start()
        try:
            for payload in bombs:
                tracemalloc.reset_peak()
                e = self.assertRaises(DecodeError, decode_object, payload)
                _, peak = tracemalloc.get_traced_memory()
                self.assertLess(peak, 1_000_000, (payload, peak))
                self.assertTrue("count" in str(e) or "truncated" in str(e), str(e))
        finally:
            tracemalloc.stop()


class TextBinaryTests(SynchronousTestCase):
    @PROPS
    @given(st.text())
    def test_text_round_trip(self, s):
        self.assertEqual(TEXT.decode(TEXT.encode(s)), s)

    @PROPS
    @given(st.binary())
    def test_binary_round_trip(self, b):
        self.assertEqual(BINARY.decode(BINARY.encode(b)), b)
        self.assertEqual(BINARY.encode(bytearray(b)), b)
        self.assertEqual(BINARY.encode(memoryview(b)), b)

    def test_text_type_check(self):
        for value, name in ((b"x", "bytes"), (1, "int"), (None, "NoneType"), (["a"], "list")):
            e = self.assertRaises(MessageTypeError, TEXT.encode, value)
            self.assertEqual(str(e), f"TEXT channels send str, not {name}")

    def test_binary_type_check(self):
        for value, name in (("x", "str"), (1, "int"), (None, "NoneType"), ([1], "list")):
            e = self.assertRaises(MessageTypeError, BINARY.encode, value)
            self.assertEqual(str(e), f"BINARY channels send bytes, not {name}")

    def test_text_not_utf8(self):
        e = self.assertRaises(DecodeError, TEXT.decode, b"ok\xff")
        self.assertIn("not UTF-8", str(e))

    def test_text_lone_surrogate(self):
        # A str that UTF-8 cannot carry does not fit TEXT: report it as the
        # message type error the channel API documents, not a bare UnicodeEncodeError.
        e = self.assertRaises(MessageTypeError, TEXT.encode, "bad \ud800")
        self.assertIn("TEXT", str(e))

    def test_errors_exported_and_classified(self):
        self.assertIs(yotonnet.MessageTypeError, MessageTypeError)
        self.assertIs(yotonnet.DecodeError, DecodeError)
        self.assertTrue(issubclass(MessageTypeError, TypeError))
        self.assertTrue(issubclass(DecodeError, ValueError))


# Module-level functions so that registering twice with "the same functions" is meaningful.
def _enc_a(v):
    return repr(v).encode()


def _dec_a(b):
    return b.decode()


def _enc_b(v):
    return b"b"


def _dec_b(b):
    return "b"


class RegistryTests(SynchronousTestCase):
    def register(self, name, enc, dec):
        mtype = register_message_type(name, enc, dec)
        # The registry is process-global: leave it as this test found it.
        self.addCleanup(messages._REGISTRY.pop, name, None)
        self.addCleanup(messages._BY_TAG.pop, mtype.tag, None)
        return mtype

    def test_register_and_look_up(self):
        mtype = self.register("test_messages.custom", _enc_a, _dec_a)
        self.assertIs(message_type("test_messages.custom"), mtype)
        self.assertIs(message_type(mtype), mtype)
        self.assertEqual(mtype.tag, yotonnet.core.wire.type_tag("test_messages.custom"))
        self.assertEqual(messages.type_name_for_tag(mtype.tag), "test_messages.custom")
        self.assertEqual(mtype.decode(mtype.encode(5)), "5")
        self.assertIn("test_messages.custom", repr(mtype))

    def test_same_name_same_functions_is_idempotent(self):
        first = self.register("test_messages.again", _enc_a, _dec_a)
        second = self.register("test_messages.again", _enc_a, _dec_a)
        self.assertEqual(first.tag, second.tag)
        self.assertIs(message_type("test_messages.again").encode, _enc_a)

    def test_same_name_other_functions_refused(self):
        self.register("test_messages.clash", _enc_a, _dec_a)
        for enc, dec in ((_enc_b, _dec_a), (_enc_a, _dec_b), (_enc_b, _dec_b)):
            e = self.assertRaises(
                ValueError, register_message_type, "test_messages.clash", enc, dec
            )
            self.assertIn("already registered", str(e))
        self.assertIs(message_type("test_messages.clash").encode, _enc_a)

    def test_builtin_names_protected(self):
        for name in ("TEXT", "BINARY", "OBJECT"):
            self.assertRaises(ValueError, register_message_type, name, _enc_a, _dec_a)
        self.assertIs(message_type("TEXT"), TEXT)

    def test_tag_collision_refused(self):
        # These two names have the same CRC-32, hence the same frame tag.
        a, b = "test.collide.29685295", "test.collide.32060020"
        self.assertEqual(yotonnet.core.wire.type_tag(a), yotonnet.core.wire.type_tag(b))
        self.register(a, _enc_a, _dec_a)
        e = self.assertRaises(ValueError, register_message_type, b, _enc_a, _dec_a)
        self.assertIn("same tag", str(e))
        self.assertRaises(ValueError, message_type, b)

    def test_bad_names(self):
        for name in ("", None, 3, b"TEXT"):
            self.assertRaises(ValueError, register_message_type, name, _enc_a, _dec_a)

    def test_unknown_type(self):
        e = self.assertRaises(ValueError, message_type, "NOPE")
        self.assertIn("'NOPE'", str(e))
        self.assertIn("register_message_type", str(e))
        self.assertRaises(ValueError, message_type, ["TEXT"])
        self.assertRaises(ValueError, message_type, None)

    def test_unknown_tag_name(self):
        self.assertIn("unknown type", messages.type_name_for_tag(0))


class ErrorHierarchyTests(SynchronousTestCase):
    def test_every_error_an_application_sees_is_a_yotonnet_error(self) -> None:
        import yotonnet
        from yotonnet import errors

        for name in errors.__all__:
            self.assertTrue(issubclass(getattr(errors, name), yotonnet.YotonnetError), name)
        # and still the built-in kind that callers of older code catch
        self.assertTrue(issubclass(yotonnet.MessageTypeError, TypeError))
        self.assertTrue(issubclass(yotonnet.DecodeError, ValueError))
