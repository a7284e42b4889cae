"""Ring 1: the sans-IO node core (``yotonnet.core.node`` and its four protocols), by plain calls.

No reactor, no link, no ``MemoryMesh``: a :class:`~yotonnet.core.node.Node` is
given fake neighbours (:class:`FakePeer`, an ``IPeer`` that keeps the bytes it is
sent), fake channel ends and waiters, a float clock and a recording log: the seams
of ``yotonnet/core/interfaces.py``, each a few lines. Frames go in through
``node.handlers`` and ``node.on_frames``, built with the real encoders of
``yotonnet.core.wire``; what the node sends is decoded again with
``wire.FrameDecoder`` and checked field by field.

* topology: our record on a new link, records flooded on but never back, route
  watchers, unicast and the one hop check (with its counters), one routing change
  per dispatch however many records it holds;
* pub/sub: fan-out only toward interest, local delivery, credit running out (queue,
  pause), CREDIT releasing the queue in order (resume, drain watchers), a silent
  peer's queue dropped, forwarding with the hop count lowered, credit returned
  upstream only once every holder let the bytes go;
* requests: the REQUEST frame, replies matched on id, replier and channel,
  deadlines, calls failed when their replier drops out of reach, a local replier
  answering a neighbour, requests for other nodes passed on;
* state: writes sent to holders, the last writer winning on (clock, writer), late
  holders told, frames for other nodes passed on with their clock noted.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from yotonnet import errors
from yotonnet.core.codec import decode_object, encode_object, encode_values
from yotonnet.core.config import ContextConfig
from yotonnet.core.flow import DEFAULT_WINDOW, PeerFlow
from yotonnet.core.interfaces import (
    ILog,
    IPeer,
    IPublisherEnd,
    IReplierEnd,
    IStateEnd,
    ISubscriberEnd,
    IWaiter,
)
from yotonnet.core.messages import BINARY, OBJECT, TEXT
from yotonnet.core.names import channel_id
from yotonnet.core.node import PUB, REP, STATE, SUB, Node
from yotonnet.core.pubsub import CORK_BYTES
from yotonnet.core.routing import Interest, NodeState
from yotonnet.core.stateclock import VERSION
from yotonnet.core.topology import HOP_MARGIN
from yotonnet.core.wire import (
    ACK_START,
    HEADER_SIZE,
    REPLY_ERROR,
    REPLY_OK,
    TAIL_START,
    Frame,
    FrameDecoder,
    FrameKind,
    Run,
    ack_extra,
    credit_frame,
    data_frame,
    decode_control,
    encode_frame,
    reply_frame,
    request_frame,
    state_frame,
    tail_frame,
)

ME, A, B, R = 1, 2, 3, 9  # this node, two neighbours, a node behind A
NEWS = channel_id("pubsub", "news")
OTHER = channel_id("pubsub", "other")
SERVICE = channel_id("reqrep", "service")
LOCAL_SERVICE = channel_id("reqrep", "local")
VALUE = channel_id("state", "value")
TAG = BINARY.tag
CONTROL_LIMIT = 1 << 20


def decode_all(data: bytes, runs: bool = False) -> list:
    """Every frame in ``data`` (whole frames only: a leftover fails the test)."""
    decoder = FrameDecoder(expect_preamble=False, runs=runs)
    frames = decoder.feed(data)
    assert decoder.buffered == 0, f"{decoder.buffered} bytes of a partial frame"
    return frames


def one_frame(data: bytes) -> Frame:
    (frame,) = decode_all(data)
    return frame


def record_of(frame: Frame) -> NodeState:
    """The routing record a CONTROL frame carries."""
    message = decode_control(frame.payload, CONTROL_LIMIT)
    assert message[0] == "node", message
    return NodeState.from_wire(message[1])


# --- the seams, faked


@implementer(IPeer)
class FakePeer:
    """A neighbour: keeps what the node sends it."""

    def __init__(
        self, peer_id: int, window: int = DEFAULT_WINDOW, receive_window: int | None = None,
        cost: int = 1,
    ) -> None:
        self.peer_id = peer_id
        self.cost = cost
        self.role = "node"
        self.status = "up"
        self.quiet = False
        self.closing = False
        self.lets_cork_out = False
        self.poll_socket = None
        self.flow = PeerFlow(window, window if receive_window is None else receive_window)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def describe(self) -> str:
        return f"peer {self.peer_id}"

    def take(self, kind: int | None = None) -> list[Frame]:
        """The frames sent so far (of one kind, or all), forgetting them all."""
        frames = decode_all(b"".join(self.sent))
        self.sent.clear()
        return [f for f in frames if kind is None or f.kind == kind]


@implementer(ISubscriberEnd)
class FakeSubscriber:
    """Takes every message; keeps the hold of each while ``keep`` is set."""

    message_type = BINARY
    name = "news"
    pattern = "pubsub"

    def __init__(self, keep: bool = False) -> None:
        self.backlog = 0
        self.keep = keep
        self.got: list[tuple] = []
        self.holds: list = []

    def _hold(self, hold) -> None:
        if self.keep and hold is not None:
            hold.ref()
            self.holds.append(hold)

    def deliver(self, frame, hold) -> None:
        self.got.append(("frame", frame))
        self._hold(hold)

    def deliver_run(self, frames, peer, hold) -> None:
        self.got.append(("run", list(frames), peer))
        self._hold(hold)

    def deliver_block(self, run, peer, hold) -> None:
        self.got.append(("block", run, peer))
        self._hold(hold)

    def lost(self, gap) -> None:
        self.got.append(("lost", gap))

    def restarted(self, source, last) -> None:
        self.got.append(("restarted", source, last))

    def release(self) -> None:
        holds, self.holds = self.holds, []
        for hold in holds:
            hold.unref()


@implementer(IPublisherEnd)
class FakePublisher:
    def __init__(self, channel: int = 0) -> None:
        self.events: list[str] = []
        self.channel_id = channel
        self.latest_id = channel ^ 1
        self.message_type = TEXT

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append("resume")


@implementer(IReplierEnd)
class FakeReplier:
    """Answers every request with ``outcome`` (None: later)."""

    message_type = OBJECT
    name = "service"
    pattern = "reqrep"
    idempotent: frozenset[str] = frozenset()

    def __init__(self, outcome: tuple | None = ("ok",)) -> None:
        self.in_flight = 0
        self.outcome = outcome
        self.requests: list[tuple] = []

    def handle_request(self, source, req_id, tag, method, payload):
        self.requests.append((source, req_id, tag, method, payload))
        return self.outcome


@implementer(IStateEnd)
class FakeStateEnd:
    message_type = OBJECT
    name = "value"
    pattern = "state"

    def __init__(self) -> None:
        self.changes: list[tuple[int, bytes]] = []

    def changed(self, tag, payload) -> None:
        self.changes.append((tag, payload))


@implementer(IWaiter)
class FakeWaiter:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, object]] = []

    def callback(self, result) -> None:
        self.outcomes.append(("callback", result))

    def errback(self, error) -> None:
        self.outcomes.append(("errback", error))


@implementer(ILog)
class FakeLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def info(self, format, **fields) -> None:
        self.events.append(("info", format, fields))

    def warn(self, format, **fields) -> None:
        self.events.append(("warn", format, fields))

    def error(self, format, **fields) -> None:
        self.events.append(("error", format, fields))

    def debug(self, format, **fields) -> None:
        self.events.append(("debug", format, fields))


class FakeClock:
    """A float that only moves when told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CoreCase(SynchronousTestCase):
    """A node with id ME on a fake clock, and helpers to give it neighbours."""

    config = ContextConfig()

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.log = FakeLog()
        self.deadlines: list[float] = []
        self.node = Node(ME, "me", self.config, self.clock, self.log, self.deadlines.append)
        self.peers: list[FakePeer] = []

    def link(
        self, peer_id: int, links: dict[int, int] | None = None,
        interests: dict[int, Interest] | None = None, **flow,
    ) -> FakePeer:
        """A neighbour comes up and sends its record (listing its link to us)."""
        peer = FakePeer(peer_id, **flow)
        self.peers.append(peer)
        self.node.peer_up(peer)
        self.announce(peer, peer_id, {ME: 1, **(links or {})}, interests)
        return peer

    def announce(
        self, via: FakePeer, node_id: int, links: dict[int, int],
        interests: dict[int, Interest] | None = None, version: int = 1,
        node: Node | None = None,
    ) -> None:
        """``via`` sends the record of ``node_id``, as a CONTROL frame, to ``node`` (by
        default the case's own)."""
        state = NodeState(node_id, f"n{node_id}", version, dict(links), dict(interests or {}))
        data = encode_frame(FrameKind.CONTROL, encode_object(["node", state.to_wire()]))
        (node or self.node).handlers[FrameKind.CONTROL](via, one_frame(data))

    def quiet(self) -> None:
        """Forget what every neighbour was sent so far."""
        for peer in self.peers:
            peer.sent.clear()


class FakesAreTheInterfaces(SynchronousTestCase):
    def test_each_fake_provides_its_interface(self):
        for iface, obj in [
            (IPeer, FakePeer(A)), (ISubscriberEnd, FakeSubscriber()),
            (IPublisherEnd, FakePublisher()), (IReplierEnd, FakeReplier()),
            (IStateEnd, FakeStateEnd()), (IWaiter, FakeWaiter()), (ILog, FakeLog()),
        ]:
            self.assertTrue(verifyObject(iface, obj), iface.__name__)


# --- topology


class TopologyTests(CoreCase):
    def test_peer_up_sends_our_record_listing_the_new_link(self):
        a = FakePeer(A, cost=3)
        self.node.peer_up(a)
        (frame,) = a.take()
        self.assertEqual(frame.kind, FrameKind.CONTROL)
        record = record_of(frame)
        self.assertEqual((record.node_id, record.name, record.links), (ME, "me", {A: 3}))
        self.assertEqual(self.node.counters["control_out"], 1)

    def test_a_new_peer_gets_every_record_held_and_old_peers_our_new_record(self):
        a = self.link(A)
        self.quiet()
        b = FakePeer(B)
        self.node.peer_up(b)
        records = [record_of(f) for f in b.take()]
        self.assertEqual([r.node_id for r in records], [ME, A])
        self.assertEqual(records[0].links, {A: 1, B: 1})
        self.assertEqual(records[1].links, {ME: 1})
        # A learns of the new link from our new record only.
        (mine,) = [record_of(f) for f in a.take()]
        self.assertEqual((mine.node_id, mine.links), (ME, {A: 1, B: 1}))

    def test_a_record_is_flooded_to_the_other_peers_but_not_back(self):
        a, b, c = self.link(A), self.link(B), self.link(4)
        self.quiet()
        self.announce(a, R, {A: 1}, {NEWS: Interest(SUB, "BINARY", 1)})
        self.assertEqual(a.sent, [])
        for peer in (b, c):
            (record,) = [record_of(f) for f in peer.take()]
            self.assertEqual((record.node_id, record.version, record.links), (R, 1, {A: 1}))
            self.assertEqual(record.interests, {NEWS: Interest(SUB, "BINARY", 1)})
        # The same version again is no news: nobody hears of it.
        self.announce(b, R, {A: 1}, version=1)
        self.assertEqual([p.sent for p in (a, b, c)], [[], [], []])
        # A newer one through B goes to A and C, not back to B.
        self.announce(b, R, {A: 1, B: 1}, version=2)
        self.assertEqual(b.sent, [])
        for peer in (a, c):
            self.assertEqual([record_of(f).version for f in peer.take()], [2])

    def test_route_watchers_fire_on_each_change_until_unwatched(self):
        a = self.link(A)
        seen = []
        unwatch = self.node.watch_routes(lambda: seen.append(self.node.routing.is_reachable(R)))
        self.announce(a, R, {A: 1})
        self.assertEqual(seen, [False])  # A does not list R yet: no path
        self.announce(a, A, {ME: 1, R: 1}, version=2)
        self.assertEqual(seen, [False, True])
        self.announce(a, A, {ME: 1, R: 1}, version=2)  # not news
        self.assertEqual(len(seen), 2)
        unwatch()
        self.announce(a, R, {A: 1}, version=2)
        self.assertEqual(len(seen), 2)
        unwatch()  # twice is harmless

    def test_unicast_goes_by_the_first_hop_or_counts_no_route(self):
        a, b = self.link(A, links={R: 1}), self.link(B)
        self.announce(a, R, {A: 1})
        self.quiet()
        data = reply_frame(5, REPLY_OK, SERVICE, ME, R, 1, b"x")
        self.assertTrue(self.node.topology.unicast(R, data))
        self.assertEqual(a.sent, [data])
        self.assertEqual(b.sent, [])
        self.assertFalse(self.node.topology.unicast(77, data))
        self.assertEqual(self.node.counters["no_route"], 1)
        self.assertEqual((a.sent, b.sent), ([data], []))

    def test_onward_stops_at_one_hop_left_and_counts_what_it_stops(self):
        topology, counters = self.node.topology, self.node.counters
        self.assertTrue(topology.onward(2))
        self.assertTrue(topology.onward(255, count=9))
        self.assertEqual(counters["hop_limit"], 0)
        self.assertFalse(topology.onward(1))
        self.assertEqual(counters["hop_limit"], 1)
        self.assertFalse(topology.onward(0))
        self.assertEqual(counters["hop_limit"], 2)
        self.assertFalse(topology.onward(1, count=5))
        self.assertEqual(counters["hop_limit"], 7)

    def test_hop_limit_is_the_longest_path_plus_a_margin(self):
        a = self.link(A, links={R: 1})
        self.assertEqual(self.node.topology.hop_limit(), 1 + HOP_MARGIN)
        self.announce(a, R, {A: 1})  # now two hops away
        self.assertEqual(self.node.topology.hop_limit(), 2 + HOP_MARGIN)

    def test_a_malformed_record_is_a_protocol_error_and_unknown_kinds_are_ignored(self):
        a = self.link(A)
        self.quiet()
        bad = one_frame(encode_frame(FrameKind.CONTROL, encode_object(["node", [1, 2]])))
        self.assertRaises(errors.ProtocolError, self.node.handlers[FrameKind.CONTROL], a, bad)
        later = one_frame(encode_frame(FrameKind.CONTROL, encode_object(["future", 1])))
        self.node.handlers[FrameKind.CONTROL](a, later)
        self.assertEqual(a.sent, [])


class DispatchTests(CoreCase):
    def test_records_in_one_dispatch_change_the_routes_once(self):
        a, b = self.link(A, links={100 + i: 1 for i in range(10)}), self.link(B)
        self.quiet()
        changes = self.node.counters["routing_changes"]
        watched = []
        self.node.watch_routes(lambda: watched.append(1))
        self.node.begin_dispatch()
        for i in range(10):
            self.announce(a, 100 + i, {A: 1})
        # Flooded on at once, paths dropped at once (a node just heard of is routed to)...
        self.assertEqual(len(b.take(FrameKind.CONTROL)), 10)
        self.assertTrue(self.node.topology.unicast(105, data_frame(3, TAG, NEWS, ME, 1, b"")))
        self.assertEqual(len(a.take(FrameKind.DATA)), 1)
        # ...but the consequences wait for the end of the dispatch.
        self.assertEqual(self.node.counters["routing_changes"], changes)
        self.assertEqual(watched, [])
        self.node.end_dispatch()
        self.assertEqual(self.node.counters["routing_changes"], changes + 1)
        self.assertEqual(watched, [1])
        self.node.end_dispatch()  # nothing pending: nothing more
        self.assertEqual(self.node.counters["routing_changes"], changes + 1)

    def test_a_batched_node_keeps_records_for_the_dispatch_end_unasked(self):
        # A context's node: every frame comes within a dispatch, but its start is told
        # only while published frames wait (mesh.writer.Batch).
        self.node = Node(ME, "me", self.config, self.clock, self.log, self.deadlines.append,
                         batched=True)
        a = self.link(A)
        self.assertTrue(self.node.topology.pending)  # A's record waits too
        self.node.end_dispatch()
        self.assertFalse(self.node.topology.pending)
        for n, node_id in enumerate((100, 101)):
            changes = self.node.counters["routing_changes"]
            self.announce(a, node_id, {A: 1})
            self.assertEqual(self.node.counters["routing_changes"], changes, n)
            self.node.end_dispatch()
            self.assertEqual(self.node.counters["routing_changes"], changes + 1, n)

    def test_outside_a_dispatch_each_record_is_a_change(self):
        a = self.link(A)
        changes = self.node.counters["routing_changes"]
        for i in range(3):
            self.announce(a, 100 + i, {A: 1})
        self.assertEqual(self.node.counters["routing_changes"], changes + 3)


# --- pub/sub


class PublishTests(CoreCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = self.link(A, interests={NEWS: Interest(SUB, "BINARY", 1)}, window=256)
        self.b = self.link(B)
        self.quiet()

    def test_a_message_goes_only_toward_interest(self):
        pubsub = self.node.pubsub
        pubsub.publish(NEWS, TAG, b"hello")
        pubsub.publish(NEWS, TAG, b"again")
        first, second = self.a.take()
        self.assertEqual(self.b.sent, [])
        self.assertEqual(
            first[:6], (FrameKind.DATA, 1 + HOP_MARGIN, TAG, NEWS, ME, 0)
        )
        self.assertEqual((first.payload, second.payload), (b"hello", b"again"))
        self.assertEqual(second.seq, first.seq + 1)
        self.assertEqual(pubsub.last_seq(NEWS), second.seq)
        pubsub.publish(OTHER, TAG, b"nobody listens")
        self.assertEqual((self.a.sent, self.b.sent), ([], []))
        self.assertEqual(pubsub.published(), {NEWS: 2, OTHER: 1})

    def test_a_local_subscriber_gets_the_message_and_its_interest_is_announced(self):
        sub = FakeSubscriber()
        self.node.register(SUB, OTHER, sub)
        for peer in (self.a, self.b):
            (record,) = [record_of(f) for f in peer.take()]
            self.assertEqual(record.interests[OTHER], Interest(SUB, "BINARY", 1))
        self.node.pubsub.publish(OTHER, TAG, b"here")
        ((how, frame),) = sub.got
        self.assertEqual(how, "frame")
        self.assertEqual(
            (frame.kind, frame.channel, frame.source, frame.payload),
            (FrameKind.DATA, OTHER, ME, b"here"),
        )
        self.assertEqual((self.a.sent, self.b.sent), ([], []))

    def credit(self, peer: FakePeer, amount: int, channel: int = NEWS) -> None:
        frame = one_frame(credit_frame(channel, peer.peer_id, ME, amount))
        self.node.handlers[FrameKind.CREDIT](peer, frame)

    def test_credit_runs_out_data_queues_the_publisher_pauses_credit_resumes_it(self):
        pub = FakePublisher()
        self.node.register(PUB, NEWS, pub)
        pubsub, a = self.node.pubsub, self.a
        payload = bytes(100)
        size = HEADER_SIZE + len(payload)  # 144: the 256-byte window takes one, overdraws once
        pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(pub.events, [])
        pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(pub.events, ["pause"])  # the last credit was spent
        self.assertFalse(pubsub.ready(NEWS))
        sent = a.take()
        self.assertEqual(len(sent), 2)
        pubsub.publish(NEWS, TAG, payload)
        pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(a.sent, [])
        self.assertEqual(pubsub.queued(NEWS), 2 * size)
        self.assertEqual(pubsub.queued(), 2 * size)
        self.assertEqual(pubsub.queued(OTHER), 0)
        self.assertEqual(self.node.counters["flow_queued"], 2)
        self.assertEqual(pub.events, ["pause"])
        seen = []

        def watcher():
            seen.append(pubsub.queued())
            return pubsub.queued() == 0

        pubsub.drain_watchers.append(watcher)
        self.credit(a, size)
        (third,) = a.take()
        self.assertEqual(third.seq, sent[1].seq + 1)
        self.assertEqual((pubsub.queued(), seen), (size, [size]))
        self.credit(a, size)
        (fourth,) = a.take()
        self.assertEqual(fourth.seq, third.seq + 1)
        self.assertEqual(seen, [size, 0])
        self.assertEqual(pubsub.drain_watchers, [])  # done watching
        self.assertEqual(pub.events, ["pause"])  # the last send overdrew again
        idle = []
        pubsub.drain_watchers.append(lambda: idle.append(1))  # never done
        self.credit(a, 2 * size)  # everything outstanding returned: 256 bytes of credit
        self.assertEqual(a.sent, [])
        self.assertEqual(idle, [])  # nothing left a queue: watchers are not called
        self.assertEqual(pub.events, ["pause", "resume"])
        self.assertTrue(pubsub.ready(NEWS))
        self.assertEqual(self.node.counters["credit_in"], 3)
        self.assertEqual(pubsub.published(), {NEWS: 4})

    def test_spending_exactly_the_window_pauses(self):
        pub = FakePublisher()
        self.node.register(PUB, NEWS, pub)
        payload = bytes(128 - HEADER_SIZE)  # two frames are the 256-byte window
        self.node.pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(pub.events, [])
        self.node.pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(pub.events, ["pause"])
        self.assertEqual((len(self.a.take()), self.node.pubsub.queued()), (2, 0))
        self.credit(self.a, 128)
        self.assertEqual(pub.events, ["pause", "resume"])

    def test_credit_for_bytes_never_sent_is_a_protocol_error(self):
        self.node.pubsub.publish(NEWS, TAG, bytes(10))
        self.assertRaises(errors.ProtocolError, self.credit, self.a, 55)  # 54 outstanding
        self.assertRaises(errors.ProtocolError, self.credit, self.a, 1, OTHER)
        self.assertRaises(errors.ProtocolError, self.credit, self.a, 0)

    def test_a_silent_peer_loses_what_waits_for_it_and_the_publisher_resumes(self):
        pub = FakePublisher()
        self.node.register(PUB, NEWS, pub)
        for _ in range(4):
            self.node.pubsub.publish(NEWS, TAG, bytes(100))
        self.assertEqual(self.node.pubsub.queued(), 2 * 144)
        self.a.status = "busy"
        self.node.peer_busy(self.a)
        self.assertEqual(self.node.pubsub.queued(), 0)
        self.assertEqual(self.node.counters["flow_dropped"], 2)
        self.assertEqual(pub.events, ["pause", "resume"])
        self.assertEqual([e[0] for e in self.log.events], ["warn"])
        # Its link is now costly: our record says so.
        (record,) = [record_of(f) for f in self.b.take(FrameKind.CONTROL)]
        self.assertEqual(record.links[A], 1000)

    def test_a_lossless_subscriber_with_a_window_of_backlog_pauses_the_publisher(self):
        pub, sub = FakePublisher(), FakeSubscriber(keep=True)
        self.node.register(PUB, OTHER, pub)
        self.node.register(SUB, OTHER, sub)
        sub.backlog = self.config.flow_window
        self.node.pubsub.publish(OTHER, TAG, b"m")
        self.assertEqual(pub.events, ["pause"])
        sub.backlog = 0
        sub.release()  # the subscriber took it: the hold goes, readiness is looked at
        self.assertEqual(pub.events, ["pause", "resume"])


class CorkedPublishTests(CoreCase):
    """A node whose host lets published frames wait until the end of the turn
    (``on_cork``), and neighbours that let them out first: the frames of one turn go
    joined, and most messages take the short way in PubSub.publish (its lane)."""

    # small retention blocks (512 bytes), so a few messages cross several
    config = ContextConfig(retention_bytes=16384)

    def setUp(self) -> None:
        super().setUp()
        self.corks = 0
        self.node = Node(ME, "me", self.config, self.clock, self.log, self.deadlines.append,
                         self.on_cork)
        self.a = self.link(A, interests={NEWS: Interest(SUB, "BINARY", 1)}, window=4096)
        self.a.lets_cork_out = True
        self.b = self.link(B)
        self.b.lets_cork_out = True
        self.pubsub = self.node.pubsub
        # A first turn: what repair keeps of the channel exists from then on, and with it
        # the lane.
        self.pubsub.publish(NEWS, TAG, b"first")
        self.pubsub.uncork()
        self.credit(self.a, HEADER_SIZE + 5)
        self.quiet()

    def credit(self, peer: FakePeer, amount: int, channel: int = NEWS) -> None:
        frame = one_frame(credit_frame(channel, peer.peer_id, ME, amount))
        self.node.handlers[FrameKind.CREDIT](peer, frame)

    def publish_on_the_lane(self, payload: bytes) -> None:
        self.pubsub.publish(NEWS, TAG, payload)
        self.assertIs(self.pubsub.lane.outlet, self.pubsub.outlets[NEWS])

    def on_cork(self) -> None:
        self.corks += 1

    def payloads(self, peer: FakePeer) -> list[bytes]:
        return [f.payload for f in peer.take(FrameKind.DATA)]

    def test_one_turn_goes_joined_numbered_credited_and_kept_in_order(self):
        pub = FakePublisher(NEWS)
        self.node.register(PUB, NEWS, pub)
        sent = [b"m%03d" % i + bytes(i) for i in range(40)]
        for message in sent:
            self.publish_on_the_lane(message)
        self.assertEqual(self.a.sent, [])  # waiting for the end of the turn
        self.assertEqual(self.corks, 2)
        self.pubsub.uncork()
        self.assertEqual(len(self.a.sent), 1)  # one write
        frames = self.a.take()
        self.assertEqual([f.payload for f in frames], sent)
        seqs = [f.seq for f in frames]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 40)))
        size = sum(HEADER_SIZE + len(m) for m in sent)
        self.assertEqual(self.a.flow.outbox(NEWS).credit, 4096 - size)
        self.assertEqual(pub.events, [])
        # Kept for repair in blocks of about 512 bytes: every one, each under its number.
        retained = self.pubsub.retained[NEWS]
        self.assertGreater(len(retained.blocks), 2)
        kept: list[bytes] = []
        for block in retained.blocks:  # (the first turn's message too)
            self.assertEqual(block.first, seqs[0] - 1 + len(kept))
            kept.extend(block.payloads)
        self.assertEqual(kept, [b"first", *sent])
        self.assertEqual(retained.size, HEADER_SIZE + 5 + size)

    def test_the_last_credit_spent_pauses_the_publisher_and_the_rest_queue(self):
        pub = FakePublisher(NEWS)
        self.node.register(PUB, NEWS, pub)
        payload = bytes(1000 - HEADER_SIZE)
        for _ in range(4):  # the fourth spends the last of 4096 bytes
            self.publish_on_the_lane(payload)
        self.assertEqual(pub.events, [])
        self.pubsub.publish(NEWS, TAG, payload)  # overdraws once
        self.assertEqual(pub.events, ["pause"])
        self.pubsub.publish(NEWS, TAG, payload)
        self.assertEqual(self.pubsub.queued(NEWS), 1000)
        self.pubsub.uncork()
        self.assertEqual(len(self.payloads(self.a)), 5)

    def test_credit_returned_in_the_turn_counts_what_the_lane_spent(self):
        self.node.begin_dispatch()  # (as from a callback, before the next frame of the read)
        for _ in range(10):
            self.publish_on_the_lane(bytes(100 - HEADER_SIZE))
        self.credit(self.a, 900)  # 1,000 bytes are outstanding: fine
        self.assertEqual(self.a.flow.outbox(NEWS).credit, 4096 - 1000 + 900)
        self.assertRaises(errors.ProtocolError, self.credit, self.a, 101)
        self.node.end_dispatch()
        self.pubsub.uncork()
        self.assertEqual(len(self.payloads(self.a)), 10)

    def test_frames_relayed_in_the_turn_leave_the_lane_its_true_credit(self):
        pub = FakePublisher(NEWS)
        self.node.register(PUB, NEWS, pub)
        self.node.begin_dispatch()
        self.publish_on_the_lane(bytes(100 - HEADER_SIZE))
        # Ten frames from b's side for a: 3,950 bytes of a's credit, 46 left.
        data = b"".join(data_frame(5, TAG, NEWS, B, seq, bytes(395 - HEADER_SIZE))
                        for seq in range(1, 11))
        frames = decode_all(data, runs=True)
        i = 0
        while i < len(frames):
            i = self.node.on_frames(self.b, frames, i, len(frames))
        self.assertEqual(pub.events, [])
        self.pubsub.publish(NEWS, TAG, bytes(100 - HEADER_SIZE))  # overdraws once
        self.assertEqual(pub.events, ["pause"])
        self.node.end_dispatch()
        self.pubsub.uncork()
        self.assertEqual(self.a.flow.outbox(NEWS).credit, 4096 - 3950 - 200)

    def test_what_the_lane_keeps_after_the_retention_was_let_go_is_kept(self):
        # No follower for repair_wait: the housekeeping lets the channel's retention go.
        self.publish_on_the_lane(b"one")
        self.clock.advance(self.config.repair_wait + 1)
        self.node.housekeeping()
        self.assertNotIn(NEWS, self.pubsub.retained)
        self.pubsub.publish(NEWS, TAG, b"two")
        self.pubsub.publish(NEWS, TAG, b"three")
        (block,) = self.pubsub.retained[NEWS].blocks
        self.assertEqual(block.payloads, [b"two", b"three"])
        self.pubsub.uncork()
        self.assertEqual(self.payloads(self.a), [b"one", b"two", b"three"])

    def test_fan_out_takes_the_lane_and_charges_every_target(self):
        self.announce(self.b, B, {ME: 1}, {NEWS: Interest(SUB, "BINARY", 1)}, version=2)
        self.quiet()
        sent = [b"%03d" % i for i in range(20)]
        for message in sent:
            self.publish_on_the_lane(message)
        self.assertEqual((self.a.sent, self.b.sent), ([], []))
        self.pubsub.uncork()
        size = sum(HEADER_SIZE + len(m) for m in sent)
        for peer, before in ((self.a, 4096), (self.b, DEFAULT_WINDOW)):
            self.assertEqual(len(peer.sent), 1)
            self.assertEqual(self.payloads(peer), sent)
            self.assertEqual(peer.flow.outbox(NEWS).credit, before - size)

    def test_fan_out_pauses_at_the_least_credit(self):
        self.announce(self.b, B, {ME: 1}, {NEWS: Interest(SUB, "BINARY", 1)}, version=2)
        pub = FakePublisher(NEWS)
        self.node.register(PUB, NEWS, pub)
        payload = bytes(1000 - HEADER_SIZE)
        for _ in range(4):  # a's 4,096 bytes of credit take four, b's window far more
            self.publish_on_the_lane(payload)
        self.assertEqual(pub.events, [])
        self.pubsub.publish(NEWS, TAG, payload)  # overdraws a once
        self.assertEqual(pub.events, ["pause"])
        self.pubsub.uncork()
        self.assertEqual(len(self.payloads(self.a)), 5)
        self.assertEqual(len(self.payloads(self.b)), 5)

    def test_a_local_subscriber_opened_in_the_turn_gets_the_next_message(self):
        # (in a dispatch, as from a callback: the picture changes only at its end)
        self.node.begin_dispatch()
        self.publish_on_the_lane(b"before")
        self.publish_on_the_lane(b"before too")
        sub = FakeSubscriber()
        self.node.register(SUB, NEWS, sub)
        self.pubsub.publish(NEWS, TAG, b"after")
        self.assertEqual([frame.payload for _, frame in sub.got], [b"after"])
        self.node.end_dispatch()
        self.pubsub.uncork()
        self.assertEqual(self.payloads(self.a), [b"before", b"before too", b"after"])

    def test_a_local_subscriber_gets_every_message_of_a_turn(self):
        sub = FakeSubscriber()
        self.node.register(SUB, NEWS, sub)
        sent = [b"%d" % i for i in range(5)]
        for message in sent:
            self.pubsub.publish(NEWS, TAG, message)
        self.assertIsNone(self.pubsub.lane.outlet)
        self.assertEqual([frame.payload for _, frame in sub.got], sent)
        self.pubsub.uncork()
        self.assertEqual(self.payloads(self.a), sent)

    def test_a_new_path_in_the_turn_takes_the_next_message(self):
        self.publish_on_the_lane(b"to a")
        self.announce(self.b, B, {ME: 1}, {NEWS: Interest(SUB, "BINARY", 1)}, version=2)
        self.pubsub.publish(NEWS, TAG, b"to both")
        self.pubsub.uncork()
        self.assertEqual(self.payloads(self.a), [b"to a", b"to both"])
        self.assertEqual(self.payloads(self.b), [b"to both"])

    def test_a_read_sees_what_the_lane_spent_and_kept(self):
        for _ in range(3):
            self.publish_on_the_lane(bytes(100 - HEADER_SIZE))
        # (the lane is open only while frames wait in the cork: a context's dispatch
        # calls begin_dispatch only then, see mesh.writer.Batch)
        self.assertIsNotNone(self.pubsub.lane.outlet)
        self.assertTrue(self.pubsub.corked)
        # A read's dispatch begins: whatever its frames do (an acknowledgement trims the
        # retention by its size), they see the three messages counted.
        self.node.begin_dispatch()
        self.assertIsNone(self.pubsub.lane.outlet)
        self.assertEqual(self.pubsub.retained[NEWS].size, HEADER_SIZE + 5 + 300)
        self.assertEqual(self.a.flow.outbox(NEWS).credit, 4096 - 300)
        self.node.end_dispatch()

    def test_the_lane_leaves_what_the_longer_way_leaves(self):
        # The same messages, through the lane and (a local subscriber present) the longer
        # way: the same frames in the same writes, credit, retention blocks and checks,
        # whichever of the lane's limits binds.
        sizes = [7 + (i * 37) % 600 for i in range(1800)]  # 2.5 corks' room with headers
        self.assertGreater(sum(HEADER_SIZE + n for n in sizes), 2.5 * CORK_BYTES)
        for name, config, window in [
            # retention blocks of 512 bytes: they close all the time
            ("retention", self.config, DEFAULT_WINDOW),
            # blocks larger than the cork: its room (CORK_BYTES) binds
            ("room", ContextConfig(), DEFAULT_WINDOW),
            # credit for 400,000 bytes: the rest waits, the publisher paused
            ("credit", ContextConfig(), 400_000),
        ]:
            lane, laned = self.publish_and_describe(sizes, config, window, local=False)
            longer, _ = self.publish_and_describe(sizes, config, window, local=True)
            self.assertGreater(laned, 400, name)  # (many took the lane)
            self.assertGreater(len(lane[0]), 1, name)  # (writes)
            self.assertEqual(lane, longer, name)

    @staticmethod
    def first_seq(pubsub) -> int:
        return pubsub.retained[NEWS].blocks[0].first

    def publish_and_describe(self, sizes: list[int], config: ContextConfig, window: int,
                             local: bool) -> tuple:
        node = Node(ME, "me", config, self.clock, self.log, self.deadlines.append,
                    self.on_cork)
        peer = FakePeer(A, window=window)
        peer.lets_cork_out = True
        node.peer_up(peer)
        self.announce(peer, A, {ME: 1}, {NEWS: Interest(SUB, "BINARY", 1)}, node=node)
        if local:
            node.register(SUB, NEWS, FakeSubscriber())
        pubsub = node.pubsub
        laned = 0
        for i, size in enumerate(sizes):
            laned += pubsub.lane.outlet is not None
            pubsub.publish(NEWS, TAG, bytes([i % 251]) * size)
            if pubsub.lane.outlet is not None:  # (only a corked outlet takes the lane)
                self.assertIs(pubsub.lane.outlet, pubsub.cork_outlet)
        pubsub.uncork()
        # (the local subscriber's record goes to A too: DATA frames only, write by write)
        writes = [[(f.seq - self.first_seq(pubsub), f.payload) for f in frames]
                  for frames in (decode_all(data) for data in peer.sent)
                  if frames[0].kind == FrameKind.DATA]
        retained = pubsub.retained[NEWS]
        blocks = [(b.first - retained.blocks[0].first, b.payloads, b.size)
                  for b in retained.blocks]
        return (writes, blocks, retained.size, retained.closed, retained.check_at,
                peer.flow.outbox(NEWS).credit, pubsub.queued(NEWS),
                NEWS in pubsub.not_ready), laned

    def test_another_channel_lets_the_waiting_frames_out_first(self):
        self.announce(self.a, A, {ME: 1}, {NEWS: Interest(SUB, "BINARY", 1),
                                           OTHER: Interest(SUB, "BINARY", 1)}, version=2)
        self.quiet()
        self.pubsub.publish(NEWS, TAG, b"n1")
        self.pubsub.publish(OTHER, TAG, b"o1")
        self.pubsub.publish(NEWS, TAG, b"n2")
        self.pubsub.uncork()
        self.assertEqual(self.payloads(self.a), [b"n1", b"o1", b"n2"])


class ForwardingTests(CoreCase):
    """DATA from A (node 2) for a subscriber behind B (node 3)."""

    PAYLOAD = bytes(20)
    SIZE = HEADER_SIZE + 20  # 64: a quarter of A's 256-byte receive window

    def setUp(self) -> None:
        super().setUp()
        self.a = self.link(A, receive_window=256)
        self.b = self.link(B, interests={NEWS: Interest(SUB, "BINARY", 1)})
        self.quiet()

    def frames(self, hops: int = 5, seqs=(7,), runs: bool = False) -> list:
        data = b"".join(data_frame(hops, TAG, NEWS, A, s, self.PAYLOAD) for s in seqs)
        return decode_all(data, runs=runs)

    def receive(self, frames: list) -> None:
        i, n = 0, len(frames)
        while i < n:
            nxt = self.node.on_frames(self.a, frames, i, n)
            self.assertGreater(nxt, i)
            i = nxt

    def assert_credit(self, amount: int) -> None:
        (credit,) = self.a.take()
        self.assertEqual(
            (credit.kind, credit.channel, credit.source, credit.dest, credit.seq),
            (FrameKind.CREDIT, NEWS, ME, A, amount),
        )

    def test_a_frame_goes_on_with_one_hop_less_then_its_sender_is_credited(self):
        self.receive(self.frames(hops=5))
        (out,) = self.b.take()
        self.assertEqual(
            out, Frame(FrameKind.DATA, 4, TAG, NEWS, A, 0, 7, self.PAYLOAD)
        )
        self.assertEqual(self.node.counters["forwarded"], 1)
        self.assert_credit(self.SIZE)
        self.assertEqual(self.node.counters["credit_out"], 1)

    def test_a_run_goes_on_as_received_with_hop_counts_lowered(self):
        frames = self.frames(hops=5, seqs=(7, 8, 9), runs=True)
        self.assertEqual([type(f) for f in frames], [Run])
        self.assertEqual(self.node.on_frames(self.a, frames, 0, 1), 1)
        out = self.b.take()
        self.assertEqual([(f.hops, f.seq, f.source, f.payload) for f in out],
                         [(4, s, A, self.PAYLOAD) for s in (7, 8, 9)])
        self.assertEqual(self.node.counters["forwarded"], 3)
        self.assert_credit(3 * self.SIZE)

    def test_credit_is_returned_in_quarter_windows(self):
        self.receive(self.frames(seqs=(7,)))
        self.assert_credit(self.SIZE)
        self.receive(decode_all(data_frame(5, TAG, NEWS, A, 8, bytes(10))))
        # 54 bytes: under the 64-byte threshold, owed
        self.assertEqual(self.a.sent, [])
        self.receive(self.frames(seqs=(9,)))
        self.assert_credit(54 + self.SIZE)

    def test_one_hop_left_is_not_forwarded_but_counted_and_still_credited(self):
        self.receive(self.frames(hops=1))
        self.assertEqual(self.b.sent, [])
        self.assertEqual(self.node.counters["hop_limit"], 1)
        self.assertEqual(self.node.counters["forwarded"], 0)
        self.assert_credit(self.SIZE)
        self.receive(self.frames(hops=1, seqs=(8, 9, 10), runs=True))
        self.assertEqual(self.b.sent, [])
        self.assertEqual(self.node.counters["hop_limit"], 4)
        self.assert_credit(3 * self.SIZE)

    def test_upstream_credit_waits_while_the_frame_waits_for_downstream_credit(self):
        self.b.flow = PeerFlow(self.SIZE, DEFAULT_WINDOW)  # B takes one frame, then waits
        self.receive(self.frames(seqs=(7,)))
        self.assertEqual([f.seq for f in self.b.take()], [7])
        self.assert_credit(self.SIZE)
        self.receive(self.frames(seqs=(8,)))
        self.assertEqual((self.b.sent, self.a.sent), ([], []))  # queued for B: A waits too
        self.assertEqual(self.node.pubsub.queued(NEWS), self.SIZE)
        self.node.handlers[FrameKind.CREDIT](
            self.b, one_frame(credit_frame(NEWS, B, ME, self.SIZE))
        )
        (out,) = self.b.take()
        self.assertEqual((out.seq, out.hops), (8, 4))
        self.assert_credit(self.SIZE)

    def test_a_local_subscriber_keeps_the_credit_until_it_lets_go(self):
        sub = FakeSubscriber(keep=True)
        self.node.register(SUB, NEWS, sub)
        self.quiet()
        self.receive(self.frames(hops=1, seqs=(7, 8)))  # delivered here even at one hop
        self.assertEqual(self.b.sent, [])
        # A new follower of the publisher asks where its stream starts
        # (yotonnet.core.repair): what came waits, and so does its credit.
        ((ack),) = self.a.take()
        self.assertEqual((ack.kind, ack.tag, ack.seq, ack.dest), (FrameKind.ACK, ACK_START,
                                                                   0, A))
        self.assertEqual(ack_extra(ack.payload), ME)
        self.assertEqual(sub.got, [])
        self.assertEqual(self.a.sent, [])
        # At 7, says the publisher: both go, and their credit with them.
        self.node.handlers[FrameKind.TAIL](self.a, one_frame(tail_frame(
            4, TAIL_START, NEWS, A, ME, 8, 1, 0, 7)))
        ((how, frames, peer),) = sub.got
        self.assertEqual((how, [f.seq for f in frames]), ("run", [7, 8]))
        self.assert_credit(2 * self.SIZE)
        sub.release()
        # A run from the decoder reaches the subscriber as a block, forwarded meanwhile.
        self.receive(self.frames(hops=5, seqs=(9, 10), runs=True))
        ((how, run, peer),) = sub.got[1:]
        self.assertEqual((how, run.count, run.seq, peer), ("block", 2, 9, self.a))
        self.assertEqual([f.seq for f in self.b.take()], [9, 10])
        self.assertEqual(self.a.sent, [])  # B wrote them, but the subscriber still holds
        sub.release()
        self.assert_credit(2 * self.SIZE)

    def test_frames_of_another_channel_end_the_run(self):
        data = data_frame(5, TAG, NEWS, A, 7, self.PAYLOAD) + data_frame(
            5, TAG, OTHER, A, 1, self.PAYLOAD
        )
        frames = decode_all(data)
        self.assertEqual(self.node.on_frames(self.a, frames, 0, 2), 1)
        self.assertEqual(self.node.on_frames(self.a, frames, 1, 2), 2)
        self.assertEqual([f.channel for f in self.b.take()], [NEWS])


# --- requests


class RequestTests(CoreCase):
    """A replier of SERVICE on node R, behind A; B on the side."""

    def setUp(self) -> None:
        super().setUp()
        self.a = self.link(A, links={R: 1})
        self.b = self.link(B)
        self.announce(self.a, R, {A: 1}, {SERVICE: Interest(REP, "OBJECT", 1)})
        self.quiet()
        self.waiter = FakeWaiter()

    def call(self, timeout: float | None = 5.0, channel: int = SERVICE) -> int:
        return self.node.requests.request(
            channel, "service", 1, b"echo", encode_values(["hi"]), timeout, self.waiter
        )

    def reply(self, req_id: int, value=None, source: int = R, channel: int = SERVICE,
              status: int = REPLY_OK, payload: bytes | None = None) -> None:
        body = encode_object(value) if payload is None else payload
        frame = one_frame(reply_frame(5, status, channel, source, ME, req_id, body))
        self.node.handlers[FrameKind.REPLY](self.a, frame)

    def test_a_call_goes_to_the_replier_by_its_first_hop_and_its_reply_completes_it(self):
        req_id = self.call()
        self.assertNotEqual(req_id, 0)
        (frame,) = self.a.take()
        self.assertEqual(self.b.sent, [])
        self.assertEqual(
            frame,
            Frame(FrameKind.REQUEST, 2 + HOP_MARGIN, 1, SERVICE, ME, R, req_id,
                  encode_values(["hi"]), b"echo"),
        )
        self.assertEqual(self.deadlines, [self.clock.now + 5.0])
        self.reply(req_id, "pong")
        self.assertEqual(self.waiter.outcomes, [("callback", "pong")])
        self.reply(req_id, "again")  # the call is closed: a second reply is dropped
        self.assertEqual(len(self.waiter.outcomes), 1)
        self.assertEqual(self.node.counters["replies_dropped"], 1)

    def test_replies_from_another_node_on_another_channel_or_unknown_ids_are_dropped(self):
        req_id = self.call()
        self.reply(req_id, "forged", source=A)
        self.reply(req_id, "forged", channel=LOCAL_SERVICE)
        self.reply(req_id + 1, "unknown")
        self.assertEqual(self.waiter.outcomes, [])
        self.assertEqual(self.node.counters["replies_dropped"], 3)
        self.reply(req_id, "real")
        self.assertEqual(self.waiter.outcomes, [("callback", "real")])

    def test_an_error_reply_fails_the_call_with_the_remote_error(self):
        req_id = self.call()
        self.reply(req_id, status=REPLY_ERROR,
                   payload=encode_object(["ValueError", "bad input", "tb"]))
        ((how, error),) = self.waiter.outcomes
        self.assertEqual(how, "errback")
        self.assertIsInstance(error, errors.RemoteError)
        self.assertEqual((error.remote_type, error.remote_message), ("ValueError", "bad input"))

    def test_a_malformed_reply_fails_only_its_call(self):
        first, second = self.call(), self.call()
        self.reply(first, payload=b"\xff not an OBJECT")
        ((how, error),) = self.waiter.outcomes
        self.assertIsInstance(error, errors.DecodeError)
        self.reply(second, "fine")
        self.assertEqual(self.waiter.outcomes[1], ("callback", "fine"))

    def test_a_replier_on_this_node_is_nearest_and_served_without_a_frame(self):
        rep = FakeReplier(outcome=("here",))
        self.node.register(REP, SERVICE, rep)
        self.quiet()
        req_id = self.call()
        self.assertEqual(rep.requests, [(ME, req_id, 1, b"echo", encode_values(["hi"]))])
        self.assertEqual(self.waiter.outcomes, [("callback", "here")])
        self.assertEqual((self.a.sent, self.b.sent), ([], []))

    def test_closing_the_node_fails_every_open_call(self):
        self.call()
        self.call(timeout=None)
        self.node.close("shutting down")
        self.assertEqual([type(e) for _, e in self.waiter.outcomes], [errors.ConnectionLost] * 2)

    def test_a_call_times_out_at_its_deadline_not_before(self):
        start = self.clock.now
        req_id = self.call(timeout=5.0)
        self.clock.advance(4.9)
        self.node.requests.expire(self.clock())
        self.assertEqual(self.waiter.outcomes, [])
        self.assertEqual(self.deadlines, [start + 5.0, start + 5.0])  # asked again
        self.clock.advance(0.1)
        self.node.requests.expire(self.clock())
        ((how, error),) = self.waiter.outcomes
        self.assertEqual(how, "errback")
        self.assertIsInstance(error, errors.TimeoutError)
        self.assertEqual(len(self.deadlines), 2)  # nothing left to time
        self.reply(req_id, "late")
        self.assertEqual(len(self.waiter.outcomes), 1)
        self.assertEqual(self.node.counters["replies_dropped"], 1)

    def test_a_call_without_timeout_has_no_deadline(self):
        self.call(timeout=None)
        self.assertEqual(self.deadlines, [])
        self.node.requests.expire(self.clock.now + 1e6)
        self.assertEqual(self.waiter.outcomes, [])

    def test_a_call_fails_when_its_replier_drops_out_of_reach(self):
        self.call()
        self.announce(self.b, 50, {B: 1})  # the mesh grows: nothing to fail
        self.assertEqual(self.waiter.outcomes, [])
        self.announce(self.a, A, {ME: 1}, version=2)  # A no longer links to R
        ((how, error),) = self.waiter.outcomes
        self.assertEqual(how, "errback")
        self.assertIsInstance(error, errors.ConnectionLost)

    def test_a_call_fails_when_the_link_toward_its_replier_goes(self):
        self.call()
        self.node.peer_down(self.a)
        ((how, error),) = self.waiter.outcomes
        self.assertIsInstance(error, errors.ConnectionLost)

    def test_no_reachable_replier_fails_the_call_at_once(self):
        self.assertEqual(self.call(channel=LOCAL_SERVICE), 0)
        ((how, error),) = self.waiter.outcomes
        self.assertIsInstance(error, errors.NoResponders)
        self.assertEqual((self.a.sent, self.b.sent), ([], []))

    def request_from_a(self, req_id: int, dest: int = ME, hops: int = 4) -> None:
        data = request_frame(hops, 1, LOCAL_SERVICE, A, dest, req_id, b"m", encode_object(3))
        self.node.handlers[FrameKind.REQUEST](self.a, one_frame(data))

    def test_a_local_replier_answers_a_neighbour(self):
        rep = FakeReplier(outcome=("ok",))
        self.node.register(REP, LOCAL_SERVICE, rep)
        self.quiet()
        self.request_from_a(77)
        self.assertEqual(rep.requests, [(A, 77, 1, b"m", encode_object(3))])
        self.assertEqual(self.node.requests.current_caller, A)
        (frame,) = self.a.take()
        self.assertEqual(frame[:7], (FrameKind.REPLY, 2 + HOP_MARGIN, REPLY_OK, LOCAL_SERVICE,
                                     ME, A, 77))
        self.assertEqual(decode_object(frame.payload), "ok")
        self.assertEqual(self.b.sent, [])

    def test_a_local_replier_answers_later_or_with_an_error(self):
        rep = FakeReplier(outcome=None)
        self.node.register(REP, LOCAL_SERVICE, rep)
        self.quiet()
        self.request_from_a(78)
        self.request_from_a(79)
        self.assertEqual(self.a.sent, [])
        self.node.requests.reply_ok(LOCAL_SERVICE, A, 78, [1, "two"])
        self.node.requests.reply_error(LOCAL_SERVICE, A, 79, "KeyError", "k", "tb")
        ok, failed = self.a.take()
        self.assertEqual((ok.tag, ok.seq, ok.dest), (REPLY_OK, 78, A))
        self.assertEqual(decode_object(ok.payload), [1, "two"])
        self.assertEqual((failed.tag, failed.seq, failed.dest), (REPLY_ERROR, 79, A))
        self.assertEqual(decode_object(failed.payload), ["KeyError", "k", "tb"])

    def test_a_request_for_another_node_goes_on_with_one_hop_less(self):
        self.announce(self.b, 60, {B: 1})
        self.announce(self.b, B, {ME: 1, 60: 1}, version=2)
        self.quiet()
        self.request_from_a(5, dest=60, hops=4)
        (out,) = self.b.take()
        self.assertEqual((out.kind, out.hops, out.dest, out.seq, out.ext), (
            FrameKind.REQUEST, 3, 60, 5, b"m"))
        self.request_from_a(6, dest=60, hops=1)
        self.assertEqual(self.b.sent, [])
        self.assertEqual(self.node.counters["hop_limit"], 1)


# --- state


class StateTests(CoreCase):
    """A local holder of VALUE, and one on A."""

    def setUp(self) -> None:
        super().setUp()
        self.end = FakeStateEnd()
        self.node.register(STATE, VALUE, self.end)
        self.a = self.link(A, interests={VALUE: Interest(STATE, "OBJECT", 1)})
        self.b = self.link(B)
        self.quiet()

    def state_from_a(self, clock: int, writer: int, payload: bytes, dest: int = 0) -> None:
        data = state_frame(5, OBJECT.tag, VALUE, A, dest, VERSION.pack(clock, writer), payload)
        self.node.handlers[FrameKind.STATE](self.a, one_frame(data))

    def test_a_write_goes_to_the_holders_and_the_local_end(self):
        state = self.node.state
        self.assertEqual(state.set(VALUE, OBJECT.tag, b"v1"), ((1, ME), OBJECT.tag, b"v1"))
        self.assertEqual(self.end.changes, [(OBJECT.tag, b"v1")])
        (frame,) = self.a.take()
        self.assertEqual(frame[:6], (FrameKind.STATE, 1 + HOP_MARGIN, OBJECT.tag, VALUE, ME, 0))
        self.assertEqual(frame.payload, VERSION.pack(1, ME) + b"v1")
        self.assertEqual(self.b.sent, [])
        state.set(VALUE, OBJECT.tag, b"v2")
        self.assertEqual(state.current(VALUE), ((2, ME), OBJECT.tag, b"v2"))
        self.assertEqual([f.payload[:VERSION.size] for f in self.a.take()],
                         [VERSION.pack(2, ME)])

    def test_an_older_version_is_ignored_and_a_newer_one_applied(self):
        state = self.node.state
        state.set(VALUE, OBJECT.tag, b"v1")
        state.set(VALUE, OBJECT.tag, b"v2")
        self.quiet()
        self.state_from_a(1, A, b"old")
        self.assertEqual(state.current(VALUE), ((2, ME), OBJECT.tag, b"v2"))
        self.assertEqual(len(self.end.changes), 2)
        self.state_from_a(3, A, b"new")
        self.assertEqual(state.current(VALUE), ((3, A), OBJECT.tag, b"new"))
        self.assertEqual(self.end.changes[-1], (OBJECT.tag, b"new"))
        self.assertEqual(state.clock(VALUE), 3)
        self.assertEqual((self.a.sent, self.b.sent), ([], []))  # not echoed, B holds none
        self.assertEqual(state.set(VALUE, OBJECT.tag, b"v4")[0], (4, ME))  # Lamport

    def test_equal_clocks_are_ordered_by_writer_id(self):
        state = self.node.state
        self.state_from_a(5, 7, b"seven")
        self.state_from_a(5, 3, b"three")  # lower writer: loses
        self.assertEqual(state.current(VALUE), ((5, 7), OBJECT.tag, b"seven"))
        self.state_from_a(5, 8, b"eight")  # higher writer: wins
        self.assertEqual(state.current(VALUE), ((5, 8), OBJECT.tag, b"eight"))
        self.state_from_a(5, 8, b"same version")  # not newer
        self.assertEqual(self.end.changes, [(OBJECT.tag, b"seven"), (OBJECT.tag, b"eight")])

    def test_a_version_out_of_range_is_a_protocol_error(self):
        self.assertRaises(errors.ProtocolError, self.state_from_a, 1, 0, b"no writer")
        self.assertRaises(errors.ProtocolError, self.state_from_a, 0, A, b"no clock")
        self.assertIsNone(self.node.state.current(VALUE))

    def test_a_late_holder_is_told_the_current_value(self):
        self.node.state.set(VALUE, OBJECT.tag, b"v1")
        c = self.link(4, interests={VALUE: Interest(STATE, "OBJECT", 1)})
        (told,) = c.take(FrameKind.STATE)
        self.assertEqual((told.source, told.dest, told.payload),
                         (ME, 4, VERSION.pack(1, ME) + b"v1"))

    def test_a_holder_that_closes_and_reopens_is_told_what_it_missed(self):
        state = self.node.state
        state.set(VALUE, OBJECT.tag, b"v1")
        self.announce(self.b, B, {ME: 1}, version=2)  # any change: A is told v1 (again)
        self.announce(self.a, A, {ME: 1}, version=2)  # A's last holder closed
        state.set(VALUE, OBJECT.tag, b"v2")  # A holds none: not sent to it
        self.quiet()
        self.announce(self.a, A, {ME: 1}, {VALUE: Interest(STATE, "OBJECT", 1)}, version=3)
        (told,) = self.a.take(FrameKind.STATE)
        self.assertEqual((told.dest, told.payload), (A, VERSION.pack(2, ME) + b"v2"))

    def test_a_value_for_another_node_goes_on_and_its_clock_is_noted(self):
        self.state_from_a(9, A, b"for B", dest=B)
        (out,) = self.b.take()
        self.assertEqual((out.kind, out.hops, out.dest), (FrameKind.STATE, 4, B))
        self.assertIsNone(self.node.state.current(VALUE))
        self.assertEqual(self.end.changes, [])
        self.assertEqual(self.node.state.clock(VALUE), 9)
