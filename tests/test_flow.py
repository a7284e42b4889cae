"""Flow control: the sans-IO credit bookkeeping, then lossless and latest delivery on meshes.

Rings 1 and 2: :mod:`yotonnet.core.flow` on its own (with a Hypothesis model), and
:class:`yotonnet.testing.MemoryMesh` meshes where a subscriber that takes
messages slowly must slow its publisher through every hop, lose nothing and
keep every node's queues within a window.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from yotonnet import BINARY, OBJECT, ContextConfig, FlowControlError, PubChannel, SubChannel
from yotonnet.core.flow import CreditError, Hold, PeerFlow
from yotonnet.core.wire import HEADER, HEADER_TAIL, FrameKind
from yotonnet.testing import MemoryMesh, MeshTestCase

WINDOW = 16 * 1024
SMALL = ContextConfig(flow_window=WINDOW, publish_backlog=4 * WINDOW)
MESSAGE = b"m" * 1000  # about 1 KiB on the wire: a window holds 15 of them


class Released:
    def __init__(self) -> None:
        self.holds: list[Hold] = []

    def __call__(self, hold: Hold) -> None:
        self.holds.append(hold)


class PeerFlowTests(SynchronousTestCase):
    def test_take_until_the_window_is_spent_then_queue_in_order(self) -> None:
        flow = PeerFlow(window=100, receive_window=100)
        self.assertTrue(flow.take(7, 60))
        self.assertTrue(flow.take(7, 60))  # one send may overdraw what is left
        self.assertFalse(flow.take(7, 1))
        self.assertTrue(flow.take(8, 60))  # another channel has its own window
        flow.enqueue(7, b"a", 30, None)
        flow.enqueue(7, b"b", 30, None)
        self.assertEqual(flow.queued(7), 60)
        self.assertEqual(flow.grant(7, 40), [b"a"])  # -20 + 40 = 20 > 0: one goes, overdrawing
        self.assertEqual(flow.queued(7), 30)
        self.assertFalse(flow.can_send(7))

    def test_grant_releases_in_order_while_credit_lasts(self) -> None:
        flow = PeerFlow(window=10, receive_window=10)
        self.assertTrue(flow.take(1, 10))
        for name in (b"a", b"b", b"c"):
            flow.enqueue(1, name, 10, None)
        self.assertEqual(flow.grant(1, 5), [b"a"])  # 0 -> 5 -> -5
        self.assertEqual(flow.grant(1, 5), [])
        self.assertEqual(flow.grant(1, 1), [b"b"])  # 1 -> -9
        self.assertEqual(flow.grant(1, 10), [b"c"])
        self.assertFalse(flow.can_send(1))  # credit -9
        self.assertEqual(flow.grant(1, 10), [])
        self.assertTrue(flow.can_send(1))

    def test_a_local_publishers_frames_come_joined_relayed_ones_apart(self) -> None:
        # ready(joined=True): entries without a hold are the local publisher's frames
        # (one source) and go as one block; a relayed entry (with its Hold) or a
        # (header, payload) pair stays apart, in its place.
        flow = PeerFlow(window=1000, receive_window=1000)
        self.assertTrue(flow.take(1, 1000))
        released = Released()
        relayed = Hold(None, 1, 10, released)
        entries = [(b"a", None), (b"b", None), (b"R", relayed), (b"c", None),
                   ((b"H", b"P"), None), (b"d", None), (b"e", None)]
        for data, hold in entries:
            flow.enqueue(1, data, 10, hold)
        relayed.unref()  # the receiver's own reference: the queue holds the last
        self.assertEqual(flow.grant(1, 1000, joined=True),
                         [b"ab", b"R", b"c", (b"H", b"P"), b"de"])
        self.assertEqual(released.holds, [relayed])
        self.assertEqual(flow.queued(1), 0)
        # without joined, one entry each, as before
        self.assertTrue(flow.take(2, 1000))
        for data in (b"x", b"y"):
            flow.enqueue(2, data, 10, None)
        self.assertEqual(flow.grant(2, 1000), [b"x", b"y"])

    def test_credit_for_bytes_never_sent_is_refused(self) -> None:
        flow = PeerFlow(window=100, receive_window=100)
        with self.assertRaises(CreditError) as caught:
            flow.grant(1, 1)  # nothing was ever sent on channel 1
        self.assertIn("only 0 sent bytes", str(caught.exception))
        self.assertTrue(flow.take(1, 30))
        self.assertEqual(flow.grant(1, 20), [])
        with self.assertRaises(CreditError):
            flow.grant(1, 11)  # 10 bytes still outstanding
        self.assertEqual(flow.grant(1, 10), [])
        self.assertTrue(flow.take(1, 100))

    def test_a_paused_transport_queues_whatever_the_credit(self) -> None:
        flow = PeerFlow(window=100, receive_window=100)
        flow.paused = True
        self.assertFalse(flow.take(1, 10))
        self.assertFalse(flow.can_send(1))
        flow.enqueue(1, b"a", 10, None)
        self.assertEqual(flow.ready(1), [])
        flow.paused = False
        self.assertEqual(flow.ready(1), [b"a"])

    def test_holds_release_once_every_holder_let_go(self) -> None:
        released = Released()
        flow_a = PeerFlow(window=10, receive_window=10)
        flow_b = PeerFlow(window=10, receive_window=10)
        for flow in (flow_a, flow_b):
            self.assertTrue(flow.take(1, 10))
        hold = Hold("upstream", 1, 12, released)
        flow_a.enqueue(1, b"x", 12, hold)
        flow_b.enqueue(1, b"x", 12, hold)
        hold.unref()  # the receiver is done handing it out
        self.assertEqual(released.holds, [])
        flow_a.grant(1, 10)  # all it was sent: x (12) goes and frees its hold
        self.assertEqual(released.holds, [])
        self.assertEqual(flow_b.drop(), 1)  # e.g. the link died
        self.assertEqual(released.holds, [hold])

    def test_owe_sends_credit_in_quarter_windows(self) -> None:
        flow = PeerFlow(window=1000, receive_window=400)
        self.assertEqual(flow.owe(5, 60), 0)
        self.assertEqual(flow.owe(5, 39), 0)
        self.assertEqual(flow.owe(5, 1), 100)
        self.assertEqual(flow.owe(5, 99), 0)
        self.assertEqual(flow.owe(6, 500), 500)  # per channel

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("send"), st.integers(1, 50)),
                st.tuples(st.just("deliver"), st.integers(1, 5)),
            ),
            max_size=80,
        )
    )
    def test_model_sender_never_exceeds_window_and_keeps_order(self, steps) -> None:
        # A sender and a receiver joined by a perfect pipe: the receiver takes
        # frames in order and releases them; in flight + queued at the receiver
        # never exceeds the window plus one frame, and order is kept.
        window = 100
        sender = PeerFlow(window=window, receive_window=window)
        receiver = PeerFlow(window=window, receive_window=window)
        pipe: list[tuple[int, int]] = []  # (number, size) written, not yet taken
        delivered: list[int] = []
        sent = 0

        def write(number: int, size: int) -> None:
            pipe.append((number, size))

        for action, amount in steps:
            if action == "send":
                sent += 1
                if sender.take(1, amount):
                    write(sent, amount)
                else:
                    sender.enqueue(1, (sent, amount), amount, None)  # type: ignore[arg-type]
            else:
                for _ in range(min(amount, len(pipe))):
                    number, size = pipe.pop(0)
                    delivered.append(number)
                    credit = receiver.owe(1, size)
                    if credit:
                        for number_size in sender.grant(1, credit):
                            write(*number_size)  # type: ignore[misc]
            unreleased = sum(size for _, size in pipe)
            self.assertLessEqual(unreleased, window + 50)
        self.assertEqual(delivered, sorted(delivered))
        self.assertEqual(len(set(delivered)), len(delivered))


@implementer(IPushProducer)
class PushProducer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = self.resumes = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


class FlowMeshTestCase(MeshTestCase):
    """Meshes for flow control: chains, a publisher run until it pauses, queued bytes."""

    def chain(self, n: int = 3, config: ContextConfig = SMALL) -> MemoryMesh:
        """``n`` contexts in a line, n0 - n1 - ... (the publisher goes on n0)."""
        mesh = self.make_mesh(n, config=config)
        mesh.link_chain()
        return mesh

    def publish_until_paused(
        self, mesh: MemoryMesh, pub: PubChannel, limit: int = 10_000, message: object = None
    ) -> int:
        """Send numbered messages (or ``message``) until the publisher is not writable;
        the count sent."""
        sent = 0
        while pub.writable and sent < limit:
            pub.send(sent if message is None else message)
            sent += 1
            if sent % 10 == 0:
                mesh.settle()
        mesh.settle()
        return sent

    def queued_bytes(self, mesh: MemoryMesh) -> int:
        """Bytes waiting in every outbox of every node."""
        return max(
            (
                box.queued
                for ctx in mesh
                for link in ctx.links.values()
                for box in link.flow.outboxes.values()
            ),
            default=0,
        )


class LosslessTests(FlowMeshTestCase):
    def test_slow_subscriber_two_hops_away_pauses_the_producer_and_loses_nothing(self) -> None:
        mesh = self.chain(3)
        sub = SubChannel(mesh["n2"], "flow.slow", OBJECT)
        pub = PubChannel(mesh["n0"], "flow.slow", OBJECT)
        mesh.settle()
        producer = PushProducer()
        pub.registerProducer(producer, True)
        sent = 0
        got: list[int] = []
        for _ in range(40):
            while not producer.paused:
                pub.send([sent, "x" * 900])
                sent += 1
                mesh.settle()
            # Paused: what is in the mesh is bounded by the windows of two links and the
            # subscriber's own window, whatever the publisher wanted to send.
            self.assertLessEqual(sub.backlog, WINDOW + 1100)
            self.assertLessEqual(self.queued_bytes(mesh), 2 * WINDOW)
            self.assertLess(sent - len(got), 3 * WINDOW // 900 + 10)
            for _ in range(5):  # the application takes five messages
                got.append(self.successResultOf(sub.recv())[0])
                mesh.settle()
        while sub.pending:
            got.append(self.successResultOf(sub.recv())[0])
            mesh.settle()
        self.assertEqual(got, list(range(len(got))))
        self.assertGreater(producer.pauses, 10)
        self.assertEqual(producer.resumes, producer.pauses)
        self.assertEqual(sub.missed, 0)
        self.assertEqual(sum(ctx.counters["flow_dropped"] for ctx in mesh), 0)
        self.assertGreater(mesh["n1"].counters["credit_in"], 0)  # credit came back both hops
        self.assertGreater(mesh["n1"].counters["credit_out"], 0)

    def test_ready_fires_when_credit_returns(self) -> None:
        mesh = self.chain(2)
        sub = SubChannel(mesh["n1"], "flow.ready", OBJECT)
        pub = PubChannel(mesh["n0"], "flow.ready", OBJECT)
        mesh.settle()
        self.successResultOf(pub.ready())
        sent = self.publish_until_paused(mesh, pub)
        ready = pub.ready()
        self.assertNoResult(ready)
        for _ in range(sent):
            self.successResultOf(sub.recv())
        mesh.settle()
        self.successResultOf(ready)
        self.assertTrue(pub.writable)

    def test_send_past_the_backlog_raises_and_sends_nothing(self) -> None:
        mesh = self.chain(2)
        sub = SubChannel(mesh["n1"], "flow.backlog", BINARY)
        pub = PubChannel(mesh["n0"], "flow.backlog", BINARY)
        mesh.settle()
        sent = 0
        with self.assertRaises(FlowControlError) as caught:
            for _ in range(1000):
                pub.send(MESSAGE)
                sent += 1
        self.assertIn("flow.backlog", str(caught.exception))
        self.assertIn("ready()", str(caught.exception))
        # Bounded: the link's window, then the backlog (and one message over it).
        link = mesh["n0"].links[mesh["n1"].node_id]
        self.assertLessEqual(link.flow.queued(pub.channel_id), SMALL.publish_backlog + 1100)
        mesh.settle()
        got = 0
        while sub.pending:
            self.successResultOf(sub.recv())
            got += 1
            mesh.settle()
        self.assertEqual(got, sent)  # everything accepted arrived; the refused one did not

    def test_pull_producer_is_called_while_writable(self) -> None:
        mesh = self.chain(2)
        sub = SubChannel(mesh["n1"], "flow.pull", BINARY)
        pub = PubChannel(mesh["n0"], "flow.pull", BINARY)
        mesh.settle()

        @implementer(IPullProducer)
        class Pull:
            calls = 0

            def resumeProducing(self) -> None:
                Pull.calls += 1
                pub.write(MESSAGE)

            def stopProducing(self) -> None:
                pass

        pub.registerProducer(Pull(), False)
        mesh.advance(0.5)
        self.assertGreater(Pull.calls, 5)
        self.assertFalse(pub.writable)  # it stopped being asked when credit ran out
        calls = Pull.calls
        mesh.advance(0.5)
        self.assertEqual(Pull.calls, calls)
        while sub.pending:
            self.successResultOf(sub.recv())
        mesh.advance(0.1)
        self.assertGreater(Pull.calls, calls)

    def test_callback_returning_deferred_paces_delivery(self) -> None:
        mesh = self.chain(3)
        sub = SubChannel(mesh["n2"], "flow.cb", OBJECT)
        pending: list[defer.Deferred[None]] = []
        seen: list[int] = []

        def slow(message: list) -> defer.Deferred[None]:
            seen.append(message[0])
            pending.append(defer.Deferred())
            return pending[-1]

        sub.subscribe(slow)
        pub = PubChannel(mesh["n0"], "flow.cb", OBJECT)
        mesh.settle()
        for i in range(60):
            pub.send([i, "y" * 900])
        mesh.settle()
        self.assertEqual(seen, [0])  # the next waits for the first Deferred
        self.assertFalse(pub.writable)
        while pending:
            pending.pop().callback(None)
            mesh.settle()
        self.assertEqual(seen, list(range(60)))
        self.assertTrue(pub.writable)


class IsolationTests(FlowMeshTestCase):
    def test_stalled_channel_does_not_block_another_on_the_same_links(self) -> None:
        mesh = self.chain(3)
        stalled = SubChannel(mesh["n2"], "flow.stalled", BINARY)
        lively = SubChannel(mesh["n2"], "flow.lively", OBJECT)
        pub_stalled = PubChannel(mesh["n0"], "flow.stalled", BINARY)
        pub_lively = PubChannel(mesh["n0"], "flow.lively", OBJECT)
        mesh.settle()
        self.publish_until_paused(mesh, pub_stalled, message=MESSAGE)
        self.assertFalse(pub_stalled.writable)
        # Far more than a window goes through on the same two links while the other
        # channel stays stalled.
        for i in range(5 * WINDOW // 100):
            pub_lively.send([i, "y" * 90])
            received = lively.recv()
            mesh.settle()
            self.assertEqual(self.successResultOf(received)[0], i)
            self.assertTrue(pub_lively.writable)
        self.assertFalse(pub_stalled.writable)
        self.assertGreater(stalled.pending, 0)

    def test_latest_subscriber_keeps_the_newest_and_counts_drops(self) -> None:
        mesh = self.chain(3)
        latest = SubChannel(mesh["n2"], "flow.latest", OBJECT, policy="latest", keep=3)
        pub = PubChannel(mesh["n0"], "flow.latest", OBJECT)
        mesh.settle()
        for i in range(1000):
            pub.send([i, "z" * 900])  # far past any window: nobody holds credit back
            if i % 20 == 0:
                mesh.settle()
        mesh.settle()
        self.assertTrue(pub.writable)
        got = [self.successResultOf(latest.recv())[0] for _ in range(latest.pending)]
        self.assertEqual(got, [997, 998, 999])
        self.assertEqual(latest.dropped, 997)
        self.assertEqual(latest.missed, 0)

    def test_latest_subscriber_beside_a_slow_lossless_one_sees_new_values(self) -> None:
        mesh = self.chain(3)
        slow = SubChannel(mesh["n2"], "flow.mixed", OBJECT)
        latest = SubChannel(mesh["n1"], "flow.mixed", OBJECT, policy="latest", keep=1)
        pub = PubChannel(mesh["n0"], "flow.mixed", OBJECT)
        mesh.settle()
        sent = self.publish_until_paused(mesh, pub)
        # The publisher stopped when credit ran out, so nothing waits at n0: the latest
        # subscriber has the newest value sent, though the slow one is far behind.
        self.assertEqual(self.successResultOf(latest.recv()), sent - 1)
        self.assertLess(slow.pending, sent)
        for expected in range(sent):
            received = slow.recv()
            mesh.settle()
            self.assertEqual(self.successResultOf(received), expected)
        self.assertTrue(pub.writable)
        more = self.publish_until_paused(mesh, pub)
        self.assertGreater(more, 10)
        self.assertEqual(self.successResultOf(latest.recv()), more - 1)
        self.assertEqual(latest.dropped, sent - 1 + more - 1)
        self.assertEqual(slow.missed, 0)

    def test_latest_subscriber_on_the_slow_lossless_ones_node_is_not_held_back(self) -> None:
        mesh = self.chain(3)
        slow = SubChannel(mesh["n2"], "flow.beside", OBJECT)
        latest = SubChannel(mesh["n2"], "flow.beside", OBJECT, policy="latest", keep=1)
        pub = PubChannel(mesh["n0"], "flow.beside", OBJECT)
        mesh.settle()
        self.assertEqual(pub.subscribers, 2)
        for round_ in range(3):  # the slow one stays full; the publisher goes on when ready
            sent = self.publish_until_paused(mesh, pub)
            self.assertFalse(pub.writable)
            # The lossless flow is windows behind; the latest flow is not behind it.
            self.assertEqual(self.successResultOf(latest.recv()), sent - 1)
            if round_ == 0:
                self.assertLess(slow.pending, sent)
            for _ in range(slow.pending):
                self.successResultOf(slow.recv())
            mesh.settle()
        self.assertEqual(slow.missed, 0)
        self.assertEqual(latest.missed, 0)

    def test_latest_flow_gives_old_frames_up_when_credit_runs_out(self) -> None:
        mesh = self.chain(2)
        latest = SubChannel(mesh["n1"], "flow.newest", BINARY, policy="latest", keep=1)
        pub = PubChannel(mesh["n0"], "flow.newest", BINARY)
        mesh.settle()
        conn = mesh.connection(mesh["n0"], mesh["n1"])
        conn.hold(mesh["n0"])  # nothing reaches n1, so no credit comes back
        count = 10 * WINDOW // len(MESSAGE)
        for i in range(count):
            pub.send(MESSAGE[:-8] + i.to_bytes(8, "big"))
        self.assertTrue(pub.writable)  # latest subscribers never pause a publisher
        dropped = mesh["n0"].counters["latest_dropped"]
        self.assertGreater(dropped, count // 2)
        box = mesh["n0"].links[mesh["n1"].node_id].flow.outboxes[pub.latest_id]
        self.assertLessEqual(box.queued, WINDOW)  # bounded, whatever the publisher does
        conn.release(mesh["n0"])
        mesh.settle()
        newest = self.successResultOf(latest.recv())
        self.assertEqual(int.from_bytes(newest[-8:], "big"), count - 1)
        # Each message was either taken (the newest) or counted as dropped: given up on
        # the way (a gap in the sequence) or pushed out of the subscriber's keep=1.
        self.assertEqual((latest.pending, latest.dropped), (0, count - 1))

    def test_invalid_policy_and_keep(self) -> None:
        mesh = self.chain(1)
        e = self.assertRaises(ValueError, SubChannel, mesh["n0"], "x", policy="newest")
        self.assertIn("lossless", str(e))
        self.assertRaises(ValueError, SubChannel, mesh["n0"], "x", policy="latest", keep=0)


class ReleaseTests(FlowMeshTestCase):
    def paused_chain(self) -> tuple[MemoryMesh, PubChannel, SubChannel, PushProducer]:
        mesh = self.chain(3)
        sub = SubChannel(mesh["n2"], "flow.release", OBJECT)
        pub = PubChannel(mesh["n0"], "flow.release", OBJECT)
        mesh.settle()
        producer = PushProducer()
        pub.registerProducer(producer, True)
        self.publish_until_paused(mesh, pub)
        self.assertTrue(producer.paused)
        return mesh, pub, sub, producer

    def test_subscriber_leaving_releases_its_credit(self) -> None:
        mesh, pub, sub, producer = self.paused_chain()
        sub.close()
        mesh.settle()
        self.assertFalse(producer.paused)
        self.assertTrue(pub.writable)
        self.assertGreater(sub.pending, 0)  # what had arrived can still be read

    def test_link_cut_releases_credit(self) -> None:
        mesh, pub, sub, producer = self.paused_chain()
        mesh.cut(mesh["n1"], mesh["n2"])
        mesh.settle()
        self.assertFalse(producer.paused)
        self.assertGreater(mesh["n1"].counters["flow_dropped"], 0)

    def test_silent_link_releases_credit_within_the_busy_timeout(self) -> None:
        mesh, pub, sub, producer = self.paused_chain()
        conn = mesh.connection(mesh["n1"], mesh["n2"])
        conn.hold(mesh["n2"])  # n2 stops speaking to n1: no credit, no heartbeats
        busy_timeout = mesh["n1"].config.busy_timeout
        heartbeat = mesh["n1"].config.heartbeat
        mesh.advance(busy_timeout + heartbeat)
        self.assertFalse(producer.paused)
        self.assertTrue(pub.writable)
        self.assertGreater(mesh["n1"].counters["flow_dropped"], 0)


class CreditFrameTests(FlowMeshTestCase):
    def credit(self, channel: int, amount: int) -> bytes:
        return HEADER.pack(HEADER_TAIL, FrameKind.CREDIT, 1, 0, 0, channel, 1, 0, amount)

    def test_zero_credit_is_a_protocol_error_that_closes_only_that_link(self) -> None:
        mesh = self.chain(3)
        n1 = mesh["n1"]
        link = n1.links[mesh["n0"].node_id]
        link.dataReceived(self.credit(123, 0))
        mesh.settle()
        self.assertIn("CREDIT frame grants 0 bytes", link.reason)
        self.assertIn(mesh["n2"].node_id, n1.links)

    def test_credit_for_a_channel_never_sent_on_is_ignored(self) -> None:
        mesh = self.chain(2)
        link = mesh["n1"].links[mesh["n0"].node_id]
        link.dataReceived(self.credit(987654321, 1 << 20))
        self.assertEqual(link.flow.outboxes, {})
        self.assertEqual(link.status, "up")

    def test_hello_window_out_of_range_is_refused(self) -> None:
        small = ContextConfig(flow_window=100)  # below the protocol's minimum of 4096
        mesh = self.make_mesh(2, config=small)
        conn = mesh.link(mesh["n0"], mesh["n1"])
        self.assertTrue(conn.closed)
        self.assertIn("window must be an integer from 4096", conn.link_of("n0").reason)
