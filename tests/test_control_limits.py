"""Ring 1: sans-IO tests for the limits on control traffic.

* ``decode_object(data, max_items)``: the bound on the values a payload may
  decode to, charged at each container's count before its items are built.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.codec import DecodeError, ItemLimitError, decode_object, encode_object

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
