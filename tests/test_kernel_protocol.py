"""Ring 1: the kernel's pure parts: end markers, bounded history, history/live merge, roles.

* ``MarkerSplitter`` finds every end marker however the pipe's bytes are cut
  into reads (random cuts, one byte at a time), and keeps look-alikes that
  are not markers as output;
* ``OutputHistory`` stays within its bounds (rich data, such as a Jupyter
  MIME bundle, counted) and pages from any ``since``; a Jupyter header passes
  as an execution's ``parent``, anything else or bigger does not;
* ``OutputMerger`` delivers every message exactly once and in order for
  random interleavings of live messages (with some lost on the way) and
  history answers, and reports what the bounded history no longer held;
* roles: the default policy, a table policy, and ``check`` on every operation.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.errors import PermissionDenied
from yotonnet.kernel import protocol as p
from yotonnet.kernel.roles import (
    COLLABORATOR,
    OWNER,
    PERMISSIONS,
    VIEWER,
    Caller,
    check,
    default_roles,
    table_roles,
    unverified,
)

TOKEN = "0123456789abcdef"


def split_all(chunks: list[bytes]) -> list[bytes | int]:
    """Feed chunks; join adjacent output bytes so results compare independent of cuts."""
    s = p.MarkerSplitter(TOKEN)
    items: list[bytes | int] = []
    for chunk in chunks:
        items.extend(s.feed(chunk))
    rest = s.flush()
    if rest:
        items.append(rest)
    merged: list[bytes | int] = []
    for item in items:
        if isinstance(item, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += item
        else:
            merged.append(item)
    return merged


def cut(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, 12)
        chunks.append(data[i:i + n])
        i += n
    return chunks


class MarkerSplitterTests(SynchronousTestCase):
    def marker(self, n: int) -> bytes:
        return p.marker_prefix(TOKEN) + str(n).encode() + b"\x00"

    def test_markers_found_whatever_the_cuts(self) -> None:
        data = b"hello\n" + self.marker(1) + b"x\x00y" + self.marker(22) + b"tail\x00\x1bYT"
        expected = [b"hello\n", 1, b"x\x00y", 22, b"tail\x00\x1bYT"]
        self.assertEqual(split_all([data]), expected)
        self.assertEqual(split_all([bytes([b]) for b in data]), expected)
        rng = random.Random(7)
        for _ in range(200):
            self.assertEqual(split_all(cut(data, rng)), expected)

    def test_look_alikes_stay_output(self) -> None:
        prefix = p.marker_prefix(TOKEN)
        for fake in (prefix + b"12x\x00", prefix + b"\x00", prefix + b"9" * 40,
                     p.marker_prefix("ffffffffffffffff") + b"1\x00"):
            with self.subTest(fake=fake):
                self.assertEqual(split_all([b"a", fake, b"b"]), [b"a" + fake + b"b"])

    def test_frames_keep_their_place_in_the_text(self) -> None:
        framed = p.frame(TOKEN, b'{"kind": "display", "data": {"text/html": "<b>x</b>"}}')
        data = b"before\n" + framed + b"after\n" + self.marker(3)
        expected = [b"before\n", p.Frame(b'{"kind": "display", "data": {"text/html": '
                                            b'"<b>x</b>"}}'), b"after\n", 3]
        self.assertEqual(split_all([data]), expected)
        self.assertEqual(split_all([bytes([b]) for b in data]), expected)
        self.assertRaises(ValueError, p.frame, TOKEN, b"a\x00b")
        # A frame that never ends within MAX_FRAME is output after all.
        splitter = p.MarkerSplitter(TOKEN)
        splitter.MAX_FRAME = 10
        items = splitter.feed(p.marker_prefix(TOKEN) + b"D" + b"x" * 20)
        self.assertEqual(b"".join(i for i in items if isinstance(i, bytes)) + splitter.flush(),
                         p.marker_prefix(TOKEN) + b"D" + b"x" * 20)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=30), st.integers(0, 10**6),
                              st.builds(p.Frame, st.binary(max_size=30).map(
                                  lambda b: b.replace(b"\x00", b"")))), max_size=20),
           st.randoms(use_true_random=False))
    def test_round_trip(self, items: list, rng: random.Random) -> None:
        data = b"".join(self.marker(i) if isinstance(i, int) else
                        p.frame(TOKEN, i.payload) if isinstance(i, p.Frame) else i
                        for i in items)
        expected: list = []
        for item in items:
            if isinstance(item, int | p.Frame):
                expected.append(item)
            elif item:
                if expected and type(expected[-1]) is bytes:
                    expected[-1] += item
                else:
                    expected.append(item)
        # Random output bytes can contain no marker prefix (it holds ESC + token) except
        # by construction, which the strategy cannot produce.
        self.assertEqual(split_all(cut(data, rng)), expected)


def msg(seq: int, text: str = "x") -> dict:
    return {"seq": seq, "kind": p.STDOUT, "text": text, "exec": None, "user": None}


class OutputHistoryTests(SynchronousTestCase):
    def test_bounded_by_count_and_bytes(self) -> None:
        h = p.OutputHistory(max_messages=5, max_bytes=100)
        for i in range(1, 21):
            h.append(msg(i))
        self.assertEqual((len(h), h.first_seq, h.last_seq, h.evicted), (5, 16, 20, 15))
        h = p.OutputHistory(max_messages=100, max_bytes=10)
        for i in range(1, 6):
            h.append(msg(i, "abcd"))
        self.assertEqual(len(h), 2)  # 8 bytes held, a third would pass 10

    def test_since_pages(self) -> None:
        h = p.OutputHistory()
        for i in range(1, 11):
            h.append(msg(i, "abc"))
        self.assertEqual([m["seq"] for m in h.since(None)["messages"]], list(range(1, 11)))
        self.assertEqual([m["seq"] for m in h.since(None, last=3)["messages"]], [8, 9, 10])
        self.assertEqual([m["seq"] for m in h.since(6)["messages"]], [7, 8, 9, 10])
        page = h.since(2, page_bytes=7)
        self.assertEqual([m["seq"] for m in page["messages"]], [3, 4])
        self.assertEqual((page["first"], page["last"]), (1, 10))
        self.assertEqual(h.since(10)["messages"], [])
        self.assertEqual(len(h.since(0, page_bytes=1)["messages"]), 1)  # at least one

    def test_rich_data_counts_toward_the_bytes(self) -> None:
        # A Jupyter display: a short text, a big MIME bundle. Its bundle is what weighs.
        image = {"seq": 1, "kind": p.DISPLAY, "text": "<Figure>\n", "exec": 1, "user": "a",
                 "data": {"text/plain": "<Figure>", "image/png": "A" * 1000},
                 "metadata": {"image/png": {"width": 10}}}
        self.assertGreater(p.message_size(image), 1000)
        h = p.OutputHistory(max_messages=100, max_bytes=1500)
        h.append(image)
        h.append(msg(2, "x"))
        h.append(dict(image, seq=3))
        self.assertEqual([m["seq"] for m in h.since(None)["messages"]], [2, 3])
        self.assertEqual([m["seq"] for m in h.since(1, page_bytes=10)["messages"]], [2])
        self.assertEqual(p.strip_ansi("\x1b[31mZeroDivisionError\x1b[39m: x"),
                         "ZeroDivisionError: x")

    def test_parent_headers(self) -> None:
        # What a Jupyter frontend's execute_request header may carry through the broker.
        header = {"msg_id": "abc", "session": "s", "username": "bob", "msg_type":
                  "execute_request", "version": "5.3", "date": "2026-01-01T00:00:00+00:00"}
        self.assertEqual(p.check_parent(header), header)
        self.assertIsNone(p.check_parent(None))
        for bad in ({"session": "s"}, {"msg_id": 1}, "abc", {"msg_id": "a", "x": b"bytes"},
                    {"msg_id": "a", "x": "y" * p.MAX_PARENT}, {"msg_id": "a", "x": object()}):
            self.assertRaises(ValueError, p.check_parent, bad)
        self.assertIn(p.END, p.KINDS)

    def test_bad_input(self) -> None:
        self.assertRaises(ValueError, p.OutputHistory, 0)
        h = p.OutputHistory()
        h.append(msg(1))
        self.assertRaises(ValueError, h.append, msg(3))


class MergeHarness:
    """A broker's history and a client's merger, with fetches answered on demand."""

    def __init__(self, history: p.OutputHistory, page: int = 1 << 20) -> None:
        self.history = history
        self.page = page
        self.got: list[int] = []
        self.lost = 0
        self.asks: list[int | None] = []
        self.merger = p.OutputMerger(lambda m: self.got.append(m["seq"]), self.asks.append,
                                     self.on_lost)

    def on_lost(self, n: int) -> None:
        self.lost += n

    def answer(self) -> None:
        since = self.asks.pop(0)
        self.merger.on_history(self.history.since(since, self.page))


class OutputMergerTests(SynchronousTestCase):
    def test_late_joiner_gets_history_then_live(self) -> None:
        h = p.OutputHistory()
        for i in range(1, 6):
            h.append(msg(i))
        t = MergeHarness(h)
        t.merger.start()
        h.append(msg(6))
        t.merger.on_live(msg(6))  # arrives before the history answer: waits
        t.answer()
        for i in range(7, 9):
            h.append(msg(i))
            t.merger.on_live(msg(i))
        self.assertEqual(t.got, list(range(1, 9)))

    def test_gap_is_filled_and_duplicates_dropped(self) -> None:
        h = p.OutputHistory()
        t = MergeHarness(h)
        t.merger.start()
        t.answer()
        for i in range(1, 11):
            h.append(msg(i))
        t.merger.on_live(msg(1))
        t.merger.on_live(msg(5))  # 2-4 were lost: fetch
        self.assertEqual(t.asks, [1])
        t.merger.on_live(msg(6))
        t.answer()
        t.merger.on_live(msg(6))
        self.assertEqual(t.got, list(range(1, 11)))
        self.assertEqual(t.merger.duplicates, 3)  # 5 and 6 waited, 6 came again

    def test_evicted_messages_reported_lost(self) -> None:
        h = p.OutputHistory(max_messages=3)
        t = MergeHarness(h)
        h.append(msg(1))
        t.merger.start()
        t.answer()
        for i in range(2, 11):
            h.append(msg(i))
        t.merger.on_live(msg(10))
        t.answer()
        self.assertEqual(t.got, [1, 8, 9, 10])
        self.assertEqual(t.lost, 6)

    def test_random_interleavings(self) -> None:
        for seed in range(300):
            rng = random.Random(seed)
            h = p.OutputHistory()
            t = MergeHarness(h, page=rng.choice([1, 3, 1 << 20]))
            n = rng.randint(0, 60)
            for i in range(1, rng.randint(1, 10)):
                h.append(msg(i))
            t.merger.start()
            live: list[dict] = []
            while h.last_seq < n or live or t.asks:
                r = rng.random()
                if r < 0.4 and h.last_seq < n:
                    m = msg(h.last_seq + 1)
                    h.append(m)
                    if rng.random() > 0.2:  # some are lost on the way
                        live.append(m)
                elif r < 0.7 and live:
                    t.merger.on_live(live.pop(0))
                elif t.asks:
                    t.answer()
                elif live:
                    t.merger.on_live(live.pop(0))
            if t.merger.last < h.last_seq:
                t.merger.want(h.last_seq)
                while t.asks:
                    t.answer()
            self.assertEqual(t.got, list(range(1, h.last_seq + 1)), f"seed {seed}")


class RolesTests(SynchronousTestCase):
    def test_default_policy_lets_only_the_verified_owner_run_code(self) -> None:
        role_of = default_roles("alice")
        alice, bob = Caller("alice", "c1", verified=True), Caller("bob", "c2", verified=True)
        self.assertEqual(check(role_of, alice, "restart"), OWNER)
        self.assertEqual(check(role_of, bob, "attach"), VIEWER)
        for op in ("execute", "interrupt", "shutdown"):
            with self.assertRaises(PermissionDenied) as e:
                check(role_of, bob, op)
            self.assertIn("viewer", str(e.exception))
        # A claim of the owner's name that nobody vouched for grants nothing.
        with self.assertRaises(PermissionDenied):
            check(role_of, Caller("alice", "c3"), "execute")
        claimed = Caller(unverified("alice"), "c3")
        self.assertEqual(claimed.user, "alice (unverified)")
        self.assertEqual(role_of(claimed), VIEWER)

    def test_table_policy_and_viewers(self) -> None:
        role_of = table_roles("alice", {"bob": COLLABORATOR})
        carol = Caller("carol", "c3", verified=True)
        self.assertEqual(role_of(carol), VIEWER)
        self.assertEqual(role_of(Caller("bob", "c2", verified=True)), COLLABORATOR)
        self.assertEqual(role_of(Caller("bob", "c2")), VIEWER, "an unverified claim")
        for op, allowed in PERMISSIONS.items():
            if VIEWER in allowed:
                check(role_of, carol, op)
            else:
                self.assertRaises(PermissionDenied, check, role_of, carol, op)
        self.assertRaises(ValueError, table_roles, "alice", {"bob": "admin"})

    def test_bad_policy_and_caller(self) -> None:
        self.assertRaises(PermissionDenied, check, lambda c: "boss", Caller("a", "b"), "attach")
        self.assertRaises(PermissionDenied, check, lambda c: OWNER, Caller("a", "b"), "fly")
        self.assertRaises(ValueError, Caller.from_wire, {"user": "", "client": "x"})
        self.assertRaises(ValueError, Caller.from_wire, "alice")
        self.assertEqual(Caller.from_wire({"user": "a", "client": "b"}), Caller("a", "b"))

    def test_kernel_names(self) -> None:
        self.assertEqual(p.channel_names("k1")["output"], "kernel.k1.output")
        self.assertRaises(ValueError, p.validate_kernel_name, "bad name")
