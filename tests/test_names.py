"""Ring 1: sans-IO tests for channel names and channel ids (``yotonnet.core.names``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core.names import MAX_NAME_LENGTH, PATTERNS, channel_id, validate_channel_name

PROPS = settings(max_examples=200, deadline=None)

_first = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_rest = _first + "0123456789-"
words = st.builds(lambda a, b: a + b, st.sampled_from(_first), st.text(_rest, max_size=12))
good_names = st.lists(words, min_size=1, max_size=6).map(".".join)
patterns = st.sampled_from(PATTERNS)


class ValidateTests(SynchronousTestCase):
    def test_good_examples(self):
        for name in ("kernel", "kernel.stdout", "_x", "a-b.c_d.E9", "A", "x" * MAX_NAME_LENGTH):
            self.assertEqual(validate_channel_name(name), name)

    @PROPS
    @given(good_names)
    def test_generated_good_names(self, name):
        self.assertEqual(validate_channel_name(name), name)

    def test_bad_examples(self):
        bad = [
            "",
            ".kernel",
            "kernel.",
            "kernel..stdout",
            "ker nel",
            " kernel",
            "kernel\n",
            "kernel\t",
            "1kernel",
            "kernel.2x",
            "-kernel",
            "kernel/stdout",
            "kernel:stdout",
            "kérnel",
            "kernel\x00",
            "*",
            "kernel.*",
        ]
        for name in bad:
            e = self.assertRaises(ValueError, validate_channel_name, name)
            self.assertIn(f"invalid channel name {name!r}", str(e))
            self.assertIn("for example", str(e))

    @PROPS
    @given(good_names, st.sampled_from(list(" \t\n/:*?#é\x00.@")), st.data())
    def test_inserted_bad_character(self, name, char, data):
        i = data.draw(st.integers(0, len(name)))
        bad = name[:i] + char + name[i:]
        if char == "." and 0 < i < len(name) and name[i - 1] != "." and name[i] in _first:
            # A dot that splits a word before a letter or '_' just adds a level.
            self.assertEqual(validate_channel_name(bad), bad)
        else:
            self.assertRaises(ValueError, validate_channel_name, bad)

    def test_too_long(self):
        name = "x" * (MAX_NAME_LENGTH + 1)
        e = self.assertRaises(ValueError, validate_channel_name, name)
        self.assertIn(f"{MAX_NAME_LENGTH + 1} characters long", str(e))
        self.assertIn(f"at most {MAX_NAME_LENGTH}", str(e))

    def test_non_str(self):
        for value, tname in ((None, "NoneType"), (b"kernel", "bytes"), (3, "int"), (["a"], "list")):
            e = self.assertRaises(ValueError, validate_channel_name, value)
            self.assertEqual(str(e), f"channel name must be a str, not {tname}")


class ChannelIdTests(SynchronousTestCase):
    def test_pinned_values(self):
        # Every node must derive the same ids, across versions: pin a few.
        self.assertEqual(channel_id("pubsub", "kernel.stdout"), 0x78260472544951A9)
        self.assertEqual(channel_id("reqrep", "kernel.stdout"), 0xFB76DF4F95649E13)
        self.assertEqual(channel_id("state", "kernel.stdout"), 0x869A5A37546B18C0)

    @PROPS
    @given(good_names, patterns)
    def test_stable_nonzero_u64(self, name, pattern):
        cid = channel_id(pattern, name)
        self.assertEqual(cid, channel_id(pattern, name))
        self.assertTrue(0 < cid < 2**64)

    @PROPS
    @given(good_names)
    def test_depends_on_pattern(self, name):
        ids = {channel_id(p, name) for p in PATTERNS}
        self.assertEqual(len(ids), len(PATTERNS))

    @PROPS
    @given(good_names, good_names, patterns)
    def test_depends_on_name(self, a, b, pattern):
        if a != b:
            self.assertNotEqual(channel_id(pattern, a), channel_id(pattern, b))

    def test_unknown_pattern(self):
        for pattern in ("pub", "", "PUBSUB", None):
            e = self.assertRaises(ValueError, channel_id, pattern, "kernel")
            self.assertIn("unknown channel pattern", str(e))
