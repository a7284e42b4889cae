"""The request/reply hot path: the call table, the one deadline timer, the local
and remote fast paths, and the dialled link that reads without Twisted's forwarders.

The call table is sans-IO and tested directly; the rest runs on a MemoryMesh,
except the forwarder bypass, which only exists on a real dialled TCP link.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from yotonnet import Context, RemoteError, RepChannel, ReqChannel, TimeoutError
from yotonnet.core.calls import Call, CallTable
from yotonnet.testing import MeshTestCase


class CallTableTests(SynchronousTestCase):
    def test_open_pop_and_load(self) -> None:
        table = CallTable()
        first = table.open("w1", 7, "svc", 5.0, now=100.0)
        second = table.open("w2", 7, "svc", None, now=100.0)
        self.assertIsInstance(first, Call)
        self.assertEqual((first.waiter, first.dest), ("w1", 7))
        self.assertEqual(second.req_id, first.req_id + 1)
        self.assertEqual(first.deadline, 105.0)
        self.assertIsNone(second.deadline)
        self.assertEqual(table.load(7), 2)
        self.assertEqual(len(table), 2)
        self.assertIs(table.pop(first.req_id), first)
        self.assertIsNone(table.pop(first.req_id))  # a second pop finds nothing
        self.assertEqual(table.load(7), 1)
        table.pop(second.req_id)
        self.assertEqual(table.load(7), 0)
        self.assertEqual(len(table), 0)

    def test_request_ids_cannot_be_guessed(self) -> None:
        # Counted up from a random point: a table's first id is not 1, nor another's.
        firsts = {CallTable().open("w", 7, "svc", None, now=0.0).req_id for _ in range(8)}
        self.assertEqual(len(firsts), 8)
        self.assertNotIn(1, firsts)

    def test_a_reply_completes_a_call_only_from_the_node_and_channel_asked(self) -> None:
        table = CallTable()
        call = table.open("w", 7, "svc", 5.0, now=0.0, channel=0xC0FFEE)
        self.assertIsNone(table.answer(call.req_id, 8, 0xC0FFEE), "another node")
        self.assertIsNone(table.answer(call.req_id, 7, 0xBAD), "another channel")
        self.assertIsNone(table.answer(call.req_id + 1, 7, 0xC0FFEE), "another id")
        self.assertEqual(len(table), 1, "a refused reply leaves the call open")
        self.assertIs(table.answer(call.req_id, 7, 0xC0FFEE), call)
        self.assertEqual((len(table), table.load(7)), (0, 0))

    def test_pick_prefers_the_least_loaded_then_the_nearest(self) -> None:
        table = CallTable()
        self.assertEqual(table.pick([3]), 3)
        table.open("w", 3, "svc", None, now=0.0)
        self.assertEqual(table.pick([3, 4, 5]), 4)  # 3 is busy; 4 comes before 5
        table.open("w", 4, "svc", None, now=0.0)
        self.assertEqual(table.pick([3, 4, 5]), 5)

    def test_emptied_groups_neither_expire_nor_leak(self) -> None:
        table = CallTable()
        for i in range(3):
            call = table.open("w", 1, "svc", float(i + 1), now=0.0)
            table.pop(call.req_id)
        # Answered calls leave empty groups behind until the next scan...
        self.assertEqual(table.expired(now=100.0), [])
        self.assertIsNone(table.next_deadline())
        # ...which drops them.
        self.assertEqual(table._groups, {})
        live = table.open("w", 1, "svc", 2.0, now=10.0)
        self.assertEqual(table.next_deadline(), 12.0)
        self.assertEqual(table.expired(now=11.0), [])
        self.assertEqual(table.expired(now=12.0), [live])

    def test_groups_keep_deadline_order(self) -> None:
        table = CallTable()
        a = table.open("w", 1, "svc", 5.0, now=0.0)
        b = table.open("w", 1, "svc", 1.0, now=0.5)
        c = table.open("w", 1, "svc", 5.0, now=1.0)
        self.assertEqual(table.next_deadline(), 1.5)
        self.assertEqual(table.expired(now=5.5), [a, b])
        table.pop(a.req_id)
        table.pop(b.req_id)
        self.assertEqual(table.next_deadline(), 6.0)
        self.assertEqual(table.expired(now=6.0), [c])


class Echo(RepChannel):
    def echo(self, value: object) -> object:
        return value

    def add(self, x: int, y: int = 0) -> int:
        return x + y

    def fail(self, text: str) -> None:
        raise ValueError(text)

    def later(self, value: object) -> defer.Deferred:
        return defer.succeed(value)


class MeshPathTests(MeshTestCase):
    def setUp(self) -> None:
        self.mesh = self.make_mesh(2, seed=5)
        self.a, self.b = self.mesh

    def test_every_argument_shape_on_the_remote_path(self) -> None:
        self.mesh.link(self.a, self.b)
        Echo(self.b, "svc")
        self.mesh.settle()
        req = ReqChannel(self.a, "svc")
        calls = {
            "one bytes value": req.echo(b"x" * 100),
            "one list": req.echo([1, "two", None]),
            "positional": req.add(2, 3),
            "keywords": req.add(2, y=5),
            "deferred result": req.later({"k": (1, 2)}),
            "no argument": req.call("echo"),
        }
        self.mesh.settle()
        self.assertEqual(self.successResultOf(calls["one bytes value"]), b"x" * 100)
        self.assertEqual(self.successResultOf(calls["one list"]), [1, "two", None])
        self.assertEqual(self.successResultOf(calls["positional"]), 5)
        self.assertEqual(self.successResultOf(calls["keywords"]), 7)
        self.assertEqual(self.successResultOf(calls["deferred result"]), {"k": (1, 2)})
        err = self.failureResultOf(calls["no argument"], RemoteError).value
        self.assertEqual(err.remote_type, "TypeError")  # echo() needs its argument
        self.assertEqual(len(self.a.node.requests.calls), 0)

    def test_local_replier_is_served_without_a_link(self) -> None:
        Echo(self.a, "svc")
        req = ReqChannel(self.a, "svc")
        self.assertEqual(self.successResultOf(req.echo(b"here")), b"here")
        self.assertEqual(self.successResultOf(req.add(1, y=2)), 3)
        err = self.failureResultOf(req.fail("no"), RemoteError).value
        self.assertEqual((err.remote_type, err.remote_message), ("ValueError", "no"))
        self.assertEqual(len(self.a.node.requests.calls), 0)

    def test_a_shorter_timeout_rearms_the_shared_timer(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "stuck")
        rep.register("wait", lambda: defer.Deferred())  # never answers
        self.mesh.settle()
        slow = ReqChannel(self.a, "stuck", timeout=10.0).wait()
        quick = ReqChannel(self.a, "stuck", timeout=1.0).wait()
        self.mesh.advance(1.0)
        self.failureResultOf(quick, TimeoutError)
        self.assertNoResult(slow)
        self.mesh.advance(9.0)
        self.failureResultOf(slow, TimeoutError)
        # Nothing open: the timer is gone, and a new call arms it again.
        self.assertIsNone(self.a._deadline_timer)
        again = ReqChannel(self.a, "stuck", timeout=2.0).wait()
        self.mesh.advance(2.0)
        self.failureResultOf(again, TimeoutError)


class DialledLinkTests(TestCase):
    """A link dialled over real TCP reads without Twisted's forwarding wrappers,
    and still reconnects (connectionLost must still reach ClientService)."""

    timeout = 30

    @defer.inlineCallbacks
    def test_reads_skip_the_forwarders_and_reconnect_still_works(self) -> None:
        server = Context("server", reactor)
        client = Context("client", reactor)
        client.config.reconnect_initial = 0.05
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        Echo(server, "svc")
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        link = yield client.connect(f"tcp:127.0.0.1:{port.getHost().port}")
        outer = link.transport.protocol
        self.assertIsNot(outer, link)  # the endpoint wrapped the link...
        self.assertEqual(outer.dataReceived, link.dataReceived)  # ...but reads skip it
        req = ReqChannel(client, "svc")
        yield req.wait_for_responders()
        self.assertEqual((yield req.echo(b"ping")), b"ping")

        # The server drops the connection: the dialler must notice and dial again.
        ups: list[object] = []
        again: defer.Deferred[None] = defer.Deferred()

        def watch(event: object) -> None:
            if event.status == "up" and event.link is not link:  # type: ignore[attr-defined]
                ups.append(event)
                if not again.called:
                    again.callback(None)

        client.watch_links(watch)
        server.links[client.node_id].transport.loseConnection()
        yield again
        # Called as soon as the replier is known again: no settling time needed.
        yield req.wait_for_responders()
        self.assertEqual((yield req.echo(b"pong")), b"pong")
        self.assertEqual(len(ups), 1)
