"""Ring 3: yotonnet across two real OS processes on loopback.

The test process runs a :class:`~yotonnet.Context` on the real reactor and
links to a child peer (``tests/peers/peer.py``, started by ``tests/procs.py``)
over real sockets: TCP on 127.0.0.1 (port 0, the child reports its port) and a
unix socket. Covered:

* pub/sub of 10,000 sequence-numbered messages each way (child publisher to an
  in-test subscriber, in-test publisher to a child subscriber), none lost,
  duplicated or reordered, over TCP and over a unix socket;
* req/rep against a child replier: results of many shapes, concurrent calls
  matched to their replies, a remote exception as ``RemoteError`` with type
  and traceback, ``TimeoutError`` on a handler that never answers (and the
  channel still works afterwards), ``NoResponders`` at once on an unserved
  channel;
* state: a late joiner gets the value the child set before anyone linked, and
  a value set here reaches the child;
* reconnect: SIGKILL the child, see ``watch_links`` report ``closed`` with a
  reason, restart it on the same port, and see the dialer bring the link back
  by itself and messages reach the *same* SubChannel again (subscriptions are
  re-announced), once with a fresh node id and once with the same node id
  (a restarted node that keeps its configured id).

Nothing here asserts on timing: every wait has a generous bound only so that
a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import zlib
from typing import Any

import procs
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from waits import bounded, until

import yotonnet
from yotonnet import OBJECT, Context, ContextConfig
from yotonnet.core.routing import REP

COUNT = 10_000
END = "END"
#: bound on any single wait in the test process; only a hang should ever reach it
WAIT = 20.0


def checksum(messages: list) -> int:
    """Same definition as tests/peers/peer.py: crc32 over ``seq:text;`` in arrival order."""
    crc = 0
    for seq, text in messages:
        crc = zlib.crc32(f"{seq}:{text};".encode(), crc)
    return crc


def free_port() -> int:
    """A TCP port that was free a moment ago (for a child that must rebind the same one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]






class LinkLog:
    """Records a context's link events; ``next(status)`` waits for the next one not yet taken."""

    def __init__(self, ctx: Context) -> None:
        self.events: list[yotonnet.LinkEvent] = []
        self._cursor: dict[str, int] = {}
        self._waiters: list[tuple[str, defer.Deferred]] = []
        ctx.watch_links(self._on_event)

    def _on_event(self, event: yotonnet.LinkEvent) -> None:
        self.events.append(event)
        still = []
        for status, d in self._waiters:
            found = self._take(status)
            if found is None:
                still.append((status, d))
            else:
                d.callback(found)
        self._waiters = still

    def _take(self, status: str) -> yotonnet.LinkEvent | None:
        for i in range(self._cursor.get(status, 0), len(self.events)):
            if self.events[i].status == status:
                self._cursor[status] = i + 1
                return self.events[i]
        self._cursor[status] = len(self.events)
        return None

    def next(self, status: str) -> defer.Deferred:
        found = self._take(status)
        if found is not None:
            return defer.succeed(found)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((status, d))
        return bounded(d, f"a link event {status!r}")


class Collector:
    """Subscribes to a SubChannel and splits what arrives into batches at each end marker."""

    def __init__(self, sub: yotonnet.SubChannel) -> None:
        self.messages: list = []
        self._batches: list[list] = []
        self._waiters: list[defer.Deferred] = []
        sub.subscribe(self._on_message)

    def _on_message(self, message: Any) -> None:
        if message[1] != END:
            self.messages.append(message)
            return
        batch, self.messages = self.messages, []
        if self._waiters:
            self._waiters.pop(0).callback(batch)
        else:
            self._batches.append(batch)

    def next_batch(self) -> defer.Deferred:
        """The messages up to the next end marker."""
        if self._batches:
            return defer.succeed(self._batches.pop(0))
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return bounded(d, f"the publisher's end marker ({len(self.messages)} messages so far)")


class ProcessTestCase(TestCase):
    """Shared set-up: contexts closed in cleanup, children killed and reaped in cleanup."""

    timeout = 60  # trial's own per-test bound, above every WAIT

    def make_context(self, name: str, **config: Any) -> Context:
        ctx = Context(f"test-{name}", reactor, config=ContextConfig(**config))
        self.addCleanup(ctx.close)
        return ctx

    async def start_peer(self, role: str, *args: str) -> tuple[procs.PeerProcess, Any]:
        """Spawn a peer (on 127.0.0.1 port 0 unless ``--listen`` is given); return it and
        the port or socket path it reported."""
        if "--listen" not in args:
            args = (*args, "--listen", "tcp:0:interface=127.0.0.1")
        child = procs.spawn_peer(self, role, *args, label=f"peer {role}")
        line = await child.wait_for("READY")
        return child, json.loads(line.split(" ", 1)[1])

    def expected(self, tag: str = "m", count: int = COUNT) -> list:
        return [[seq, f"{tag}-{seq}"] for seq in range(1, count + 1)]


class PubSubTests(ProcessTestCase):
    def test_child_publisher_to_test_subscriber(self) -> defer.Deferred:
        """10,000 messages from a child publisher arrive here complete and in order."""
        return defer.ensureDeferred(self._child_publisher("tcp"))

    def test_unix_socket(self) -> defer.Deferred:
        """The same over a unix socket endpoint."""
        return defer.ensureDeferred(self._child_publisher("unix"))

    async def _child_publisher(self, transport: str) -> None:
        ctx = self.make_context("sub")
        sub = yotonnet.SubChannel(ctx, "bulk", OBJECT)
        collector = Collector(sub)
        if transport == "unix":
            # A short path of our own: trial's temp dir can exceed the 108-byte socket limit.
            folder = tempfile.mkdtemp(prefix="ytn-", dir="/tmp")
            self.addCleanup(shutil.rmtree, folder, True)
            path = f"{folder}/peer.sock"
            child, reported = await self.start_peer(
                "pub", "--channel", "bulk", "--count", str(COUNT), "--listen", f"unix:{path}"
            )
            self.assertEqual(reported, path)
            endpoint = f"unix:{path}"
        else:
            child, port = await self.start_peer("pub", "--channel", "bulk", "--count", str(COUNT))
            endpoint = f"tcp:127.0.0.1:{port}"
        link = await bounded(ctx.connect(endpoint), "the link to the child")
        self.assertEqual(link.peer_name, "peer-pub")
        messages = await collector.next_batch()
        self.assertEqual(len(messages), COUNT)
        self.assertEqual(messages, self.expected())
        self.assertEqual((sub.received, sub.discarded, sub.errors), (COUNT + 1, 0, []))
        self.assertEqual(await child.wait_for("SENT"), f"SENT {COUNT}")

    def test_test_publisher_to_child_subscriber(self) -> defer.Deferred:
        """10,000 messages published here reach a child subscriber complete and in order."""
        return defer.ensureDeferred(self._test_publisher())

    async def _test_publisher(self) -> None:
        ctx = self.make_context("pub")
        child, port = await self.start_peer("sub", "--channel", "bulk")
        await bounded(ctx.connect(f"tcp:127.0.0.1:{port}"), "the link to the child")
        pub = yotonnet.PubChannel(ctx, "bulk", OBJECT)
        await bounded(pub.wait_for_subscribers(), "the child's subscription")
        self.assertEqual(pub.subscribers, 1)
        sent = self.expected()
        for message in sent:
            pub.send(message)
        pub.send([COUNT + 1, END])
        result = json.loads((await child.wait_for("RESULT")).split(" ", 1)[1])
        self.assertEqual(
            result,
            {
                "count": COUNT,
                "checksum": checksum(sent),
                "first_gap": None,
                "received": COUNT + 1,
                "discarded": 0,
            },
        )


class ReqRepTests(ProcessTestCase):
    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.ctx = self.make_context("req")
        self.child, port = await self.start_peer("rep", "--channel", "svc")
        await bounded(self.ctx.connect(f"tcp:127.0.0.1:{port}"), "the link to the child")
        self.req = yotonnet.ReqChannel(self.ctx, "svc")
        # connect() fires at the handshake, before the peer's routing records have arrived:
        # wait until the replier is known, or the first call could fail with NoResponders.
        await bounded(
            self.ctx.wait_for_interest(self.req.channel_id, REP), "the child's replier record"
        )

    def test_results(self) -> defer.Deferred:
        """Ints of any size, strings and nested structures come back as sent."""
        return defer.ensureDeferred(self._results())

    async def _results(self) -> None:
        self.assertEqual(await self.req.add(2, 3), 5)
        self.assertEqual(await self.req.call("add", a=-7, b=2**80), 2**80 - 7)
        self.assertEqual(await self.req.upper("grüße, ok"), "GRÜSSE, OK")
        nested = {
            "ints": [0, -1, 2**64, -(2**100)],
            "text": "línea\nzwei",
            "raw": b"\x00\xffbytes",
            "tuple": (1, ("a", None), [True, False]),
            "float": 1.5,
            "deep": {"a": [{"b": [[], {}]}]},
        }
        echoed = await self.req.echo(nested)
        self.assertEqual(echoed, nested)
        self.assertIsInstance(echoed["tuple"], tuple)
        self.assertIsInstance(echoed["raw"], bytes)
        self.assertEqual(await self.req.whoami(), self.child.transport.pid)

    def test_concurrent_calls(self) -> defer.Deferred:
        """Many calls in flight at once each get their own reply."""
        return defer.ensureDeferred(self._concurrent())

    async def _concurrent(self) -> None:
        calls = [self.req.add(i, 1000) for i in range(200)]
        results = await bounded(defer.gatherResults(calls), "200 replies")
        self.assertEqual(results, [i + 1000 for i in range(200)])

    def test_remote_error(self) -> defer.Deferred:
        """A handler's exception arrives as RemoteError with its type name and traceback."""
        return defer.ensureDeferred(self._remote_error())

    async def _remote_error(self) -> None:
        with self.assertRaises(yotonnet.RemoteError) as caught:
            await self.req.boom("it broke")
        error = caught.exception
        self.assertEqual(error.remote_type, "ValueError")
        self.assertIn("it broke", error.remote_message)
        self.assertIn("Traceback", error.remote_traceback)
        self.assertIn("in boom", error.remote_traceback)
        self.assertIn("peer.py", error.remote_traceback)
        self.assertIn("ValueError", str(error))
        # The failed call leaves the channel usable.
        self.assertEqual(await self.req.add(1, 1), 2)

    def test_timeout(self) -> defer.Deferred:
        """A handler that never answers fails the call with TimeoutError; later calls work."""
        return defer.ensureDeferred(self._timeout())

    async def _timeout(self) -> None:
        req = yotonnet.ReqChannel(self.ctx, "svc", timeout=0.3)
        self.assertEqual(req.timeout, 0.3)
        with self.assertRaises(yotonnet.TimeoutError):
            await bounded(req.hang(), "the request timeout")
        self.assertEqual(len(self.ctx.node.requests.calls), 0)  # no leaked request state
        self.assertEqual(await req.add(20, 22), 42)  # not wedged, unlike a ZeroMQ REQ socket

    def test_no_responders(self) -> defer.Deferred:
        """A call on a channel that nobody serves fails with NoResponders as soon as the
        node has said who serves it (a leaf asks its node), not after the call's timeout."""
        return defer.ensureDeferred(self._no_responders())

    async def _no_responders(self) -> None:
        self.assertEqual(self.ctx.role, "leaf")
        req = yotonnet.ReqChannel(self.ctx, "nobody-serves-this", timeout=3600)
        d = req.anything(1)
        with self.assertRaises(yotonnet.NoResponders):
            await d.addTimeout(10, reactor)  # an hour's timeout: the answer, not the clock
        # Once the node has answered, the next call fails at once.
        self.assertTrue(self.ctx.view_current)
        again = req.anything(2)
        self.assertTrue(again.called, "NoResponders at once once the view is known")
        with self.assertRaises(yotonnet.NoResponders):
            await again


class ReplyPollTests(ProcessTestCase):
    """The reply poll (yotonnet.mesh.replypoll) over real TCP: a replier in another
    process answers while the caller polls; one in the same process cannot, and the
    request it has to read ends the poll."""

    async def calls(self, caller: Context, endpoint: str, count: int) -> None:
        link = await bounded(caller.connect(endpoint), "the link to the replier")
        req = yotonnet.ReqChannel(caller, "svc")
        await bounded(caller.wait_for_interest(req.channel_id, REP), "the replier's record")
        self.assertIsNotNone(link.poll_socket)
        for i in range(count):  # one at a time, as a sequential caller makes them
            self.assertEqual(await bounded(req.add(i, 1), f"call {i}"), i + 1)

    def test_a_replier_in_another_process_answers_within_the_poll(self) -> defer.Deferred:
        return defer.ensureDeferred(self._other_process())

    async def _other_process(self) -> None:
        # (the longest limit: only a round trip slower than 10 ms would miss)
        ctx = self.make_context("req", reply_poll=0.01)
        _, port = await self.start_peer("rep", "--channel", "svc")
        await self.calls(ctx, f"tcp:127.0.0.1:{port}", 40)
        polls, caught, skipped = (ctx.counters[k] for k in (
            "reply_polls", "reply_polls_caught", "reply_polls_skipped"))
        self.assertEqual(polls + skipped, 40)  # (a poll per call, or its skip)
        self.assertGreaterEqual(caught, 20, ctx.counters)

    def test_a_replier_in_the_same_process_ends_each_poll_at_once(self) -> defer.Deferred:
        return defer.ensureDeferred(self._same_process())

    async def _same_process(self) -> None:
        # While the caller polls, nothing else in its process runs: the replier here
        # cannot answer. Its socket, readable with the request, ends every poll at once.
        caller, replier = self.make_context("req"), self.make_context("rep")

        class Adder(yotonnet.RepChannel):
            def add(self, a: int, b: int) -> int:
                return a + b

        Adder(replier, "svc")
        port = await replier.listen("tcp:0:interface=127.0.0.1")
        await self.calls(caller, f"tcp:127.0.0.1:{port.getHost().port}", 100)
        polls, caught, skipped = (caller.counters[k] for k in (
            "reply_polls", "reply_polls_caught", "reply_polls_skipped"))
        self.assertEqual((polls, skipped), (100, 0))
        self.assertLessEqual(caught, 2, caller.counters)  # (a heartbeat may end one)
        self.assertEqual(caller.counters["reply_polls_other"], polls - caught)


class StateTests(ProcessTestCase):
    def test_late_joiner(self) -> defer.Deferred:
        """A value the child set before anyone linked reaches a context that joins later."""
        return defer.ensureDeferred(self._late_joiner())

    async def _late_joiner(self) -> None:
        value = {"mode": "run", "n": [1, 2, 3]}
        child, port = await self.start_peer(
            "state", "--channel", "cfg", "--value", json.dumps(value)
        )
        ctx = self.make_context("state")
        state = yotonnet.StateChannel(ctx, "cfg")
        self.assertIsNone(state.recv())
        changed: defer.Deferred = defer.Deferred()
        state.subscribe(lambda v: None if changed.called else changed.callback(v))
        await bounded(ctx.connect(f"tcp:127.0.0.1:{port}"), "the link to the child")
        self.assertEqual(await bounded(changed, "the child's state value"), value)
        self.assertEqual(state.recv(), value)

        # And the other way: a newer value set here reaches the child.
        state.send({"mode": "stop"})
        line = await child.wait_for("STATE")
        self.assertEqual(json.loads(line.split(" ", 1)[1]), {"mode": "stop"})
        self.assertEqual(state.recv(), {"mode": "stop"})


class ReconnectTests(ProcessTestCase):
    def test_reconnect_after_kill(self) -> defer.Deferred:
        """The dialer relinks to a restarted child; the same SubChannel hears it again."""
        return defer.ensureDeferred(self._reconnect(same_node_id=False))

    def test_reconnect_same_node_id(self) -> defer.Deferred:
        """As above, with the child restarted under its fixed node id (a configured node)."""
        return defer.ensureDeferred(self._reconnect(same_node_id=True))

    async def _reconnect(self, same_node_id: bool) -> None:
        count = 100
        ctx = self.make_context("reconnect", reconnect_initial=0.1, reconnect_max=0.5)
        links = LinkLog(ctx)
        sub = yotonnet.SubChannel(ctx, "ticks", OBJECT)
        collector = Collector(sub)
        port = free_port()
        args = ["--channel", "ticks", "--count", str(count), "--listen",
                f"tcp:{port}:interface=127.0.0.1"]
        if same_node_id:
            args += ["--node-id", "424242"]

        first, _ = await self.start_peer("pub", *args, "--tag", "first")
        link = await bounded(ctx.connect(f"tcp:127.0.0.1:{port}"), "the first link")
        self.assertEqual((await links.next("up")).link, link)
        self.assertEqual(await collector.next_batch(), self.expected("first", count))

        await first.kill()
        closed = await links.next("closed")
        self.assertIs(closed.link, link)
        self.assertEqual(closed.peer_name, "peer-pub")
        self.assertIsInstance(closed.reason, str)
        self.assertIn("connection lost", closed.reason)  # e.g. "...: closed cleanly"
        self.assertFalse(ctx.dialers[0].info()["connected"])

        second, _ = await self.start_peer("pub", *args, "--tag", "second")
        relinked = await links.next("up")
        self.assertIsNot(relinked.link, link)
        self.assertEqual(relinked.peer_name, "peer-pub")
        if same_node_id:
            self.assertEqual(relinked.peer_id, 424242)
        # Once the child has sent, wait until every frame reached the SubChannel (delivered
        # or dropped as a duplicate): a dropped one fails here at once, not at a timeout.
        await second.wait_for("SENT")
        await until(
            lambda: sub.received + sub.discarded >= 2 * (count + 1), "the second batch's frames"
        )
        self.assertEqual(
            sub.discarded, 0,
            "the restarted publisher's messages were dropped as duplicates of the old ones",
        )
        self.assertEqual(await collector.next_batch(), self.expected("second", count))
        # The same dialer did it; nobody called connect() again.
        self.assertEqual(len(ctx.dialers), 1)
        self.assertIs(ctx.dialers[0].link, relinked.link)
        self.assertTrue(ctx.dialers[0].info()["connected"])
        self.assertGreaterEqual(ctx.dialers[0].info()["attempts"], 1)
