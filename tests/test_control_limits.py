"""Ring 1: sans-IO tests for the limits on control traffic.

* ``decode_object(data, max_items)``: the bound on the values a payload may
  decode to, charged at each container's count before its items are built;
* ``wire.decode_control`` and ``FrameDecoder(max_control=...)``: the CONTROL
  frame size limit, checked from the header before the body is buffered, and
  the one function that turns a control payload into a message;
* routing records: node names checked as in a HELLO, and the
  :class:`~yotonnet.core.routing.RoutingLimits` a :class:`RoutingTable` holds
  records from neighbours to (per record, per neighbour, per table);
* the routing table's interest index and linear next-hop pass, checked
  against a brute-force reference on random tables.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core import wire
from yotonnet.core.codec import DecodeError, ItemLimitError, decode_object, encode_object
from yotonnet.core.names import MAX_NODE_NAME
from yotonnet.core.routing import (
    DEFAULT_MAX_RECORD_INTERESTS,
    DEFAULT_MAX_RECORD_LINKS,
    REP,
    STATE,
    SUB,
    Interest,
    NodeState,
    RecordRefused,
    RoutingLimits,
    RoutingTable,
)
from yotonnet.core.wire import HEADER_SIZE, FrameDecoder, FrameKind, decode_control, encode_frame
from yotonnet.errors import ProtocolError

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

    def test_record_at_the_routing_limits_fits_the_default_limits(self):
        # The largest record a neighbour may send under the default RoutingLimits (with
        # the built-in type name of the longest length) passes the default frame limit
        # and value bound: the defaults do not contradict each other.
        links = [[n, 255] for n in range(2**63, 2**63 + DEFAULT_MAX_RECORD_LINKS)]
        interests = [
            [2**64 - 1 - ch, "state", "OBJECT", 2**31]
            for ch in range(DEFAULT_MAX_RECORD_INTERESTS)
        ]
        record = [2**64 - 1, "n" * MAX_NODE_NAME, 2**63 - 1, links, interests]
        payload = encode_object(["node", record])
        self.assertLess(HEADER_SIZE + len(payload), wire.DEFAULT_MAX_CONTROL_FRAME)
        message = decode_control(payload, wire.DEFAULT_MAX_CONTROL_FRAME)
        state = NodeState.from_wire(message[1])
        self.assertEqual(len(state.links), DEFAULT_MAX_RECORD_LINKS)
        self.assertEqual(len(state.interests), DEFAULT_MAX_RECORD_INTERESTS)


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


def record(node_id: int, version: int = 1, links=(), interests=None, name=None) -> NodeState:
    return NodeState(
        node_id, name or f"n{node_id}", version, {n: 1 for n in links}, dict(interests or {})
    )


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


class TableLimitTests(SynchronousTestCase):
    def table(self, **limits: int) -> RoutingTable:
        t = RoutingTable(1, "me", RoutingLimits(**limits))
        t.set_local(links={2: 1, 3: 1})
        return t

    def assertRefused(self, t: RoutingTable, state: NodeState, via: int, limit: str) -> str:
        before = (dict(t.nodes), t.entries, t.generation)
        e = self.assertRaises(RecordRefused, t.update, state, via)
        self.assertEqual(e.limit, limit)
        self.assertIn(limit, str(e))
        self.assertEqual((dict(t.nodes), t.entries, t.generation), before, "table changed")
        return str(e)

    def test_links_and_interests_per_record(self):
        t = self.table(max_record_links=3, max_record_interests=2)
        self.assertTrue(t.update(record(2, links=[1, 4, 5]), via=2))
        text = self.assertRefused(t, record(4, links=[1, 2, 5, 6]), 2, "max_record_links")
        self.assertIn("lists 4 links", text)
        many = {ch: Interest(SUB, "TEXT", 1) for ch in (10, 11, 12)}
        self.assertRefused(t, record(2, 2, interests=many), 2, "max_record_interests")
        self.assertEqual(t.refused, {"max_record_links": 1, "max_record_interests": 1})
        # Records this node writes itself (no via) are not bounded.
        self.assertTrue(t.update(record(4, links=[1, 2, 5, 6], interests=many)))

    def test_nodes_in_the_table(self):
        t = self.table(max_nodes=3)
        self.assertTrue(t.update(record(2, links=[1]), via=2))
        self.assertTrue(t.update(record(3, links=[1]), via=3))
        text = self.assertRefused(t, record(4), 2, "max_nodes")
        self.assertIn("holds 3 nodes", text)
        # Known nodes are still updated.
        self.assertTrue(t.update(record(2, 2, links=[1, 3]), via=2))
        t.forget([3])
        self.assertTrue(t.update(record(4), via=2))

    def test_nodes_per_neighbour(self):
        t = self.table(max_nodes_per_peer=2)
        self.assertTrue(t.update(record(2, links=[1]), via=2))
        self.assertTrue(t.update(record(10), via=2))
        self.assertEqual(t.introduced_by(2), 2)
        text = self.assertRefused(t, record(11), 2, "max_nodes_per_peer")
        self.assertIn(f"{2:016x} introduced 2 nodes", text)
        # Another neighbour has its own quota; records already held are not counted again.
        self.assertTrue(t.update(record(11), via=3))
        self.assertTrue(t.update(record(10, 2), via=3))
        self.assertEqual((t.introduced_by(2), t.introduced_by(3)), (2, 1))
        t.forget([10])
        self.assertEqual(t.introduced_by(2), 1)
        self.assertTrue(t.update(record(12), via=2))

    def test_entries_in_the_table(self):
        t = self.table(max_routing_entries=6)  # our record holds 2
        self.assertTrue(t.update(record(2, links=[1, 3]), via=2))
        self.assertEqual(t.entries, 4)
        self.assertRefused(t, record(4, links=[1, 2, 3]), 2, "max_routing_entries")
        self.assertTrue(t.update(record(4, links=[1, 2]), via=2))
        # A record that grows past the limit is refused; one that shrinks is taken.
        self.assertRefused(t, record(2, 2, links=[1, 3, 4]), 2, "max_routing_entries")
        self.assertTrue(t.update(record(2, 3, links=[1]), via=2))
        self.assertEqual(t.entries, 5)

    def test_no_per_neighbour_limit_by_default(self):
        t = self.table(max_nodes=5)
        for node in (2, 10, 11, 12):
            self.assertTrue(t.update(record(node), via=2))
        self.assertEqual(t.introduced_by(2), 4)
        self.assertRefused(t, record(13), 2, "max_nodes")

    def test_own_record_coming_back_is_never_refused(self):
        t = self.table(max_nodes=1, max_record_links=1)
        self.assertTrue(t.update(record(1, 9, links=[2, 3, 4]), via=2))
        self.assertEqual(t.local.version, 10)


# --- the index and the linear next-hop pass against a brute-force reference

def reference_holders(t: RoutingTable, channel: int, role: str) -> list[int]:
    """What holders() said before the index: a scan of every record."""
    dist = confirmed_distances(t, t.node_id)
    found = [
        n for n, s in t.nodes.items()
        if n in dist and (i := s.interests.get(channel)) and i.role == role and i.count > 0
    ]
    return sorted(found, key=lambda n: (dist[n], n))


def confirmed_distances(t: RoutingTable, source: int) -> dict[int, int]:
    """Shortest distances from ``source`` over links both ends list (at the higher of
    their costs, at least 1), computed here independently of the table."""
    dist = {source: 0}
    todo = {source}
    while todo:
        node = min(todo, key=lambda n: dist[n])
        todo.discard(node)
        for nbr, cost in t.nodes[node].links.items():
            back = t.nodes[nbr].links.get(node) if nbr in t.nodes else None
            if back is None:
                continue
            d = dist[node] + max(1, cost, back)
            if d < dist.get(nbr, d + 1):
                dist[nbr] = d
                todo.add(nbr)
    return dist


def check_next_hop(case: SynchronousTestCase, t: RoutingTable, dest: int) -> None:
    """``next_hop(dest)`` is a neighbour on a shortest path to ``dest`` (None if none)."""
    mine = confirmed_distances(t, t.node_id)
    hop = t.next_hop(dest)
    if dest not in mine:
        case.assertIsNone(hop)
        return
    case.assertIsNotNone(hop)
    cost = max(1, t.local.links[hop], t.nodes[hop].links[t.node_id])
    case.assertEqual(cost + confirmed_distances(t, hop)[dest], mine[dest])


ops = st.lists(
    st.tuples(
        st.sampled_from(["update", "forget", "local"]),
        st.integers(1, 8),
        st.lists(st.integers(1, 8), max_size=4),
        st.dictionaries(st.sampled_from([100, 101]),
                        st.builds(Interest, st.sampled_from([SUB, REP, STATE]), st.just("T"),
                                  st.integers(0, 2)), max_size=2),
    ),
    max_size=30,
)


class IndexTests(SynchronousTestCase):
    @PROPS
    @given(ops)
    def test_index_matches_a_scan_of_every_record(self, steps):
        t = RoutingTable(1, "me")
        versions: dict[int, int] = {}
        for op, node, links, interests in steps:
            if op == "local":
                t.set_local(links=dict.fromkeys(links, 1), interests=interests)
            elif op == "forget":
                t.forget([node])
                versions.pop(node, None)
            elif node != 1:
                versions[node] = versions.get(node, 0) + 1
                t.update(record(node, versions[node], links, interests), via=node)
            expected_entries = sum(len(s.links) + len(s.interests) for s in t.nodes.values())
            self.assertEqual(t.entries, expected_entries)
            for channel in (100, 101):
                for role in (SUB, REP, STATE):
                    self.assertEqual(t.holders(channel, role), reference_holders(t, channel, role))
            for dest in range(2, 9):
                check_next_hop(self, t, dest)

    def test_long_chain_next_hops_and_depth(self):
        n = 3000
        t = RoutingTable(1, "me")
        t.set_local(links={2: 1})
        for node in range(2, n + 1):
            t.update(record(node, links=[node - 1, node + 1] if node < n else [node - 1]))
        self.assertEqual(t.max_hops(), n - 1)
        self.assertEqual(t.next_hop(n), 2)
        self.assertEqual(t.distance(n), n - 1)

    def test_routes_computed_once_per_change(self):
        t = RoutingTable(1, "me")
        t.set_local(links={2: 1, 3: 1}, interests={100: Interest(SUB, "T", 1)})
        t.update(record(2, links=[1, 3], interests={100: Interest(SUB, "T", 1)}), via=2)
        t.update(record(3, links=[1, 2]), via=3)
        before = t.route_computations
        for _ in range(3):
            t.next_hop(2)
            t.holders(100, SUB)
            t.max_hops()
            t.is_reachable(3)
            t.multicast_targets(1, 100)  # our own tree is our routes' tree
        self.assertEqual(t.route_computations, before + 1)
        t.multicast_targets(2, 100)
        t.multicast_targets(2, 101)
        self.assertEqual(t.route_computations, before + 2)
        t.update(record(3, 2, links=[1]), via=3)
        t.next_hop(2)
        self.assertEqual(t.route_computations, before + 3)

    def test_losses_count_only_changes_that_can_cut_nodes_off(self):
        t = RoutingTable(1, "me")
        t.set_local(links={2: 1, 3: 1})
        t.update(record(2, links=[1, 3]), via=2)
        t.update(record(3, links=[1, 2]), via=3)
        t.update(record(4), via=2)
        t.set_local(links={2: 5, 3: 1, 4: 1})  # a cost changed, a link added
        t.update(record(2, 2, links=[1, 3, 4]), via=2)
        self.assertEqual(t.losses, 0)
        t.update(record(2, 3, links=[1]), via=2)  # 2 dropped its links to 3 and 4
        self.assertEqual(t.losses, 1)
        t.set_local(links={2: 1})
        self.assertEqual(t.losses, 2)
        t.forget([4, 99])
        self.assertEqual(t.losses, 3)

    def test_a_channel_only_this_node_holds_needs_no_routes(self):
        # A node holding a state value asks for its holders after every routing change.
        t = RoutingTable(1, "me")
        t.set_local(links={2: 1}, interests={100: Interest(STATE, "T", 1)})
        t.update(record(2, links=[1], interests={101: Interest(STATE, "T", 1)}), via=2)
        before = t.route_computations
        self.assertEqual(t.holders(100, STATE), [1])
        self.assertEqual(t.holders(100, SUB), [])
        self.assertEqual(t.route_computations, before)
        self.assertEqual(t.holders(101, STATE), [2])
        self.assertEqual(t.route_computations, before + 1)
