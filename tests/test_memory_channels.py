"""Ring 2: pub/sub, request/reply and state channels on an in-memory mesh.

Every test builds a :class:`yotonnet.testing.MemoryMesh` (fake clock, memory
transports), so nothing here touches a socket or the real reactor and every
run is the same.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from yotonnet import (
    BINARY,
    OBJECT,
    TEXT,
    ConnectionLost,
    ContextConfig,
    MessageTypeError,
    NoResponders,
    PermissionDenied,
    PubChannel,
    RemoteError,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
    TimeoutError,
    register_message_type,
)
from yotonnet.core import wire
from yotonnet.testing import MemoryMesh, MeshTestCase


def _json_encode(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode("utf-8")


def _json_decode(data: bytes) -> object:
    return json.loads(data.decode("utf-8"))


# Registered once at import, as an application would; every "node" here shares the registry.
JSON = register_message_type("test.memory.json", _json_encode, _json_decode)


class PubSubTests(MeshTestCase):
    def linked_pub_sub(self, name: str) -> tuple[MemoryMesh, PubChannel, SubChannel]:
        """Two linked contexts: a publisher on the first, a subscriber on the second."""
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, name)
        pub = PubChannel(a, name)
        mesh.settle()
        return mesh, pub, sub

    def _two_by_two(self, seed: int, shuffle: bool) -> None:
        # A triangle: a cycle, so exactly-once depends on routing, not on the shape.
        mesh = self.make_mesh(3, seed=seed, shuffle=shuffle)
        a, b, c = mesh
        mesh.link(a, b)
        mesh.link(b, c)
        mesh.link(c, a)
        subs = [SubChannel(b, "news"), SubChannel(c, "news")]
        pubs = [PubChannel(a, "news"), PubChannel(b, "news")]
        waits = [pub.wait_for_subscribers(2) for pub in pubs]
        mesh.settle()  # subscriptions travel through the mesh
        for d in waits:
            self.successResultOf(d)
        sent = {a.node_id: [], b.node_id: []}
        for i in range(30):
            for pub in pubs:
                text = f"{pub.context.name}-{i}"
                pub.send(text)
                sent[pub.context.node_id].append(text)
            if i % 7 == 0:
                mesh.pump()  # interleave deliveries with sends
        mesh.settle()
        for sub in subs:
            got = [self.successResultOf(sub.recv()) for _ in range(sub.pending)]
            self.assertEqual(len(got), 60, f"{sub} received {len(got)} of 60")
            for node, texts in sent.items():
                prefix = node_name(mesh, node) + "-"
                mine = [m for m in got if m.startswith(prefix)]
                self.assertEqual(mine, texts)  # each publisher's order, each message once
            self.assertEqual(sub.discarded, 0)
            self.assertEqual(sub.errors, [])

    def test_two_publishers_two_subscribers_order_and_exactly_once(self) -> None:
        self._two_by_two(seed=0, shuffle=False)

    def test_two_by_two_under_shuffled_delivery(self) -> None:
        for seed in range(5):
            self._two_by_two(seed=seed, shuffle=True)

    def test_subscriber_in_publishers_own_context(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        local = SubChannel(a, "news")
        remote = SubChannel(b, "news")
        pub = PubChannel(a, "news")
        mesh.settle()
        self.assertEqual(pub.subscribers, 2)
        pub.send("one")
        # Local delivery needs no pumping.
        self.assertEqual(self.successResultOf(local.recv()), "one")
        self.assertEqual(remote.pending, 0)
        mesh.settle()
        self.assertEqual(self.successResultOf(remote.recv()), "one")
        self.assertEqual(local.pending, 0)

    def test_recv_queued_and_waiting(self) -> None:
        mesh, pub, sub = self.linked_pub_sub("q")
        pub.send("early")
        mesh.settle()
        self.assertEqual(sub.pending, 1)
        self.assertEqual(self.successResultOf(sub.recv()), "early")  # queued: fired already
        waiting = sub.recv()
        self.assertNoResult(waiting)
        pub.send("late")
        self.assertNoResult(waiting)  # not before the bytes move
        mesh.settle()
        self.assertEqual(self.successResultOf(waiting), "late")
        self.assertEqual(sub.pending, 0)

    def test_cancelled_recv_does_not_eat_a_message(self) -> None:
        mesh, pub, sub = self.linked_pub_sub("q")
        d = sub.recv()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        pub.send("kept")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), "kept")

    def test_subscribe_drains_the_queue_then_gets_new_messages(self) -> None:
        mesh, pub, sub = self.linked_pub_sub("q")
        pub.send("1")
        pub.send("2")
        mesh.settle()
        self.assertEqual(sub.pending, 2)
        got: list[str] = []
        sub.subscribe(got.append)
        self.assertEqual(got, ["1", "2"])
        self.assertEqual(sub.pending, 0)
        pub.send("3")
        mesh.settle()
        self.assertEqual(got, ["1", "2", "3"])
        self.assertEqual(sub.received, 3)

    def test_async_for(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, "stream")
        pub = PubChannel(a, "stream")
        mesh.settle()

        async def first_three() -> list[str]:
            got = []
            async for message in sub:
                got.append(message)
                if len(got) == 3:
                    break
            return got

        pub.send("a")  # one already queued before the loop starts
        mesh.settle()
        d = defer.ensureDeferred(first_three())
        self.assertNoResult(d)
        for text in ("b", "c", "d"):
            pub.send(text)
        mesh.settle()
        self.assertEqual(self.successResultOf(d), ["a", "b", "c"])
        self.assertEqual(self.successResultOf(sub.recv()), "d")

    def test_type_mismatch_across_nodes_is_an_error_not_garbage(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, "typed", BINARY)
        pub = PubChannel(a, "typed", TEXT)
        waiting = pub.wait_for_subscribers()
        mesh.settle()
        self.successResultOf(waiting)
        d = sub.recv()
        pub.send("text, not bytes")
        mesh.settle()
        failure = self.failureResultOf(d, MessageTypeError)
        self.assertIn("TEXT", str(failure.value))
        self.assertIn("BINARY", str(failure.value))
        self.assertEqual(sub.received, 0)
        self.assertEqual(sub.pending, 0)
        self.assertEqual(len(sub.errors), 1)

    def test_local_type_mismatch_is_refused(self) -> None:
        mesh = self.make_mesh(1)
        SubChannel(mesh[0], "typed", BINARY)
        self.assertRaises(MessageTypeError, SubChannel, mesh[0], "typed", TEXT)

    def test_custom_registered_type_round_trip(self) -> None:
        mesh = self.make_mesh(3)
        a, b, c = mesh
        mesh.link_chain()
        sub = SubChannel(c, "records", "test.memory.json")  # by registered name
        pub = PubChannel(a, "records", JSON)
        waiting = pub.wait_for_subscribers()
        self.assertNoResult(waiting)  # the subscription has not reached a yet
        mesh.settle()
        self.successResultOf(waiting)
        value = {"x": [1, 2.5, "three"], "nested": {"ok": True, "none": None}}
        pub.send(value)
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), value)
        self.assertIs(sub.message_type, JSON)

    def test_object_values_round_trip(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, "obj", OBJECT)
        pub = PubChannel(a, "obj", OBJECT)
        mesh.settle()
        value = {"big": 2**100, "t": (1, b"\x00\xff"), "l": [None, -1.5, "é"]}
        pub.send(value)
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), value)

    def test_a_closed_or_denied_binary_publisher_refuses_bytes(self) -> None:
        # (bytes on a BINARY channel take send()'s short way: it must see both)
        mesh, pub, sub = self.linked_pub_sub_binary("bin")
        pub.send(b"one")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), b"one")
        pub.deny("publish", PermissionDenied("not you"))
        self.assertRaises(PermissionDenied, pub.send, b"two")
        other = PubChannel(pub.context, "bin2", BINARY)
        other.close()
        self.assertRaisesRegex(RuntimeError, "closed", other.send, b"three")
        mesh.settle()
        self.assertEqual(sub.pending, 0)

    def linked_pub_sub_binary(self, name: str) -> tuple[MemoryMesh, PubChannel, SubChannel]:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        sub = SubChannel(b, name, BINARY)
        pub = PubChannel(a, name, BINARY)
        d = pub.wait_for_subscribers()
        mesh.settle()
        self.successResultOf(d)
        return mesh, pub, sub

    def test_nothing_sent_later_overtakes_published_messages(self) -> None:
        # Messages published in one turn wait in the node and go joined (PubSub.uncork):
        # a message on another channel, a call, or the end of the turn lets them out first.
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        seen: list[tuple[str, object]] = []
        SubChannel(b, "out").subscribe(lambda m: seen.append(("out", m)))
        SubChannel(b, "status").subscribe(lambda m: seen.append(("status", m)))
        RepChannel(b, "svc").register("ping", lambda m: seen.append(("call", m)))
        out, status = PubChannel(a, "out"), PubChannel(a, "status")
        req = ReqChannel(a, "svc")
        waits = [out.wait_for_subscribers(), status.wait_for_subscribers(),
                 req.wait_for_responders()]
        mesh.settle()
        for d in waits:
            self.successResultOf(d)
        # (a subscriber's first messages wait until it knows where its stream starts)
        out.send("o0")
        status.send("idle")
        mesh.settle()
        del seen[:]
        out.send("o1")
        out.send("o2")
        status.send("busy")
        out.send("o3")
        called = req.ping("p")
        out.send("o4")
        status.send("idle")
        mesh.settle()
        self.successResultOf(called)
        self.assertEqual(seen, [("out", "o1"), ("out", "o2"), ("status", "busy"),
                                ("out", "o3"), ("call", "p"), ("out", "o4"),
                                ("status", "idle")])

    def test_fan_out_to_leaves_and_nodes_with_little_credit(self) -> None:
        # One publisher to two nodes and three leaves, a window of 4 KiB: its messages
        # wait joined while every target has credit, and queue where one has none;
        # every subscriber gets every message once, in order.
        mesh = self.make_mesh(3, config=ContextConfig(flow_window=4096))
        hub, b, c = mesh
        self.successResultOf(hub.listen(f"memory:{hub.name}"))
        mesh.link(hub, b)
        mesh.link(hub, c)
        leaves = [mesh.add(f"leaf{i}") for i in range(3)]
        for leaf in leaves:
            leaf.connect(f"memory:{hub.name}")
        mesh.settle()
        got: list[list[bytes]] = []
        for ctx in [b, c, *leaves]:
            got.append([])
            SubChannel(ctx, "many", BINARY).subscribe(got[-1].append)
        pub = PubChannel(hub, "many", BINARY)
        d = pub.wait_for_subscribers(5)
        mesh.settle()
        self.successResultOf(d)
        sent = [b"%05d" % i + b"x" * (i % 300) for i in range(3000)]
        for i in range(0, len(sent), 250):
            for message in sent[i:i + 250]:
                pub.send(message)  # past the window: the rest queue
            mesh.pump()
        mesh.settle()
        for each in got:
            self.assertEqual(each, sent)
        self.assertGreater(hub.counters["flow_queued"], 0)

    def test_large_and_small_messages_mixed_keep_order_with_little_credit(self) -> None:
        # Large messages go as header and payload (send_pair) and wait for credit as that
        # pair; small ones wait joined in the outlet: one order all the same.
        mesh = self.make_mesh(2, config=ContextConfig(flow_window=4096))
        a, b = mesh
        mesh.link(a, b)
        got: list[bytes] = []
        SubChannel(b, "mixed", BINARY).subscribe(got.append)
        pub = PubChannel(a, "mixed", BINARY)
        d = pub.wait_for_subscribers()
        mesh.settle()
        self.successResultOf(d)
        sent = [bytes([i % 251]) * (70000 + i if i % 3 == 0 else 10 + i) for i in range(60)]
        for i in range(0, len(sent), 10):
            for message in sent[i:i + 10]:
                pub.send(message)
            mesh.pump()
        mesh.settle()
        self.assertEqual(got, sent)
        self.assertGreater(a.counters["flow_queued"], 0)

    def test_bad_channel_names_raise_value_error(self) -> None:
        mesh = self.make_mesh(1)
        ctx = mesh[0]
        bad = ["", "1abc", "a..b", "a.", ".a", "has space", "a/b", "x" * 201, None, 5, b"bytes"]
        for name in bad:
            for cls in (PubChannel, SubChannel, ReqChannel, RepChannel, StateChannel):
                with self.assertRaises(ValueError, msg=f"{cls.__name__}({name!r})"):
                    cls(ctx, name)
        # A refused name leaves no interest behind.
        self.assertEqual(ctx.topology()["channels"], {})
        # And these are fine.
        for name in ("a", "_x", "kernel.stdout", "a-b.c_d.E9"):
            SubChannel(ctx, name).close()


def node_name(mesh: MemoryMesh, node_id: int) -> str:
    for ctx in mesh:
        if ctx.node_id == node_id:
            return ctx.name
    raise KeyError(node_id)


class Calculator(RepChannel):
    def add(self, x: int, y: int) -> int:
        return x + y

    def boom(self) -> None:
        raise KeyError("nope")

    def greet(self, name: str, *, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"


class ReqRepTests(MeshTestCase):
    def setUp(self) -> None:
        self.mesh = self.make_mesh(3, config=ContextConfig(request_timeout=5.0))
        self.a, self.b, self.c = self.mesh

    def test_return_value_from_subclass_methods(self) -> None:
        self.mesh.link(self.a, self.b)
        Calculator(self.b, "calc")
        self.mesh.settle()
        req = ReqChannel(self.a, "calc")
        d1 = req.add(2, 3)
        d2 = req.call("greet", "ann", punctuation="?")
        self.assertNoResult(d1)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d1), 5)
        self.assertEqual(self.successResultOf(d2), "hello ann?")

    def test_register_plain_function(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "svc")
        rep.register("mul", lambda x, y: x * y)
        self.mesh.settle()
        d = ReqChannel(self.a, "svc").mul(6, 7)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(rep.served, 1)

    def test_deferred_returning_handler(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "slow")
        clock = self.mesh.clock
        rep.register("later", lambda v: task.deferLater(clock, 1.0, lambda: v * 2))
        self.mesh.settle()
        d = ReqChannel(self.a, "slow").later(21)
        self.mesh.advance(0.5)
        self.assertNoResult(d)
        self.assertEqual(rep.in_flight, 1)
        self.mesh.advance(0.5)
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(rep.in_flight, 0)

    def test_handler_in_the_callers_own_context(self) -> None:
        Calculator(self.a, "calc")
        d = ReqChannel(self.a, "calc").add(1, 1)
        self.assertEqual(self.successResultOf(d), 2)

    def test_remote_error_has_type_and_traceback(self) -> None:
        self.mesh.link(self.a, self.b)
        Calculator(self.b, "calc")
        self.mesh.settle()
        d = ReqChannel(self.a, "calc").boom()
        self.mesh.settle()
        err = self.failureResultOf(d, RemoteError).value
        self.assertEqual(err.remote_type, "KeyError")
        self.assertIn("nope", err.remote_message)
        self.assertIn("Traceback", err.remote_traceback)
        self.assertIn("boom", err.remote_traceback)  # the handler's frame is in it
        self.assertIn("KeyError", str(err))

    def test_unknown_method_is_a_remote_error(self) -> None:
        self.mesh.link(self.a, self.b)
        Calculator(self.b, "calc")
        self.mesh.settle()
        req = ReqChannel(self.a, "calc")
        results = [req.call("nosuch"), req.call("_private"), req.call("register", "x", None)]
        self.mesh.settle()
        for d in results:
            err = self.failureResultOf(d, RemoteError).value
            self.assertEqual(err.remote_type, "AttributeError")

    def test_unencodable_arguments_and_results(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "svc")
        rep.register("a_set", lambda: {1, 2})
        self.mesh.settle()
        req = ReqChannel(self.a, "svc")
        self.failureResultOf(req.call("a_set", {1}), MessageTypeError)  # refused before sending
        d = req.a_set()
        self.mesh.settle()
        err = self.failureResultOf(d, RemoteError).value
        self.assertEqual(err.remote_type, "MessageTypeError")
        self.assertIn("set", err.remote_message)

    def test_no_responders_at_once(self) -> None:
        self.mesh.link(self.a, self.b)
        RepChannel(self.b, "other.channel")
        self.mesh.settle()
        d = ReqChannel(self.a, "nobody.here").anything()
        self.failureResultOf(d, NoResponders)  # without pumping or waiting

    def test_wait_for_responders_fires_once_the_replier_is_known(self) -> None:
        req = ReqChannel(self.a, "late.math")
        waiting = req.wait_for_responders()
        Calculator(self.b, "late.math")
        self.assertNoResult(waiting)  # not linked yet: a knows of no replier
        self.assertEqual(req.responders, 0)
        self.mesh.link(self.a, self.b)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(req.responders, 1)

    def test_timeout_after_configured_time(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "stuck")
        rep.register("wait", lambda: defer.Deferred())  # never answers
        self.mesh.settle()
        explicit = ReqChannel(self.a, "stuck", timeout=2.0)
        default = ReqChannel(self.a, "stuck")
        self.assertEqual(default.timeout, 5.0)  # from ContextConfig.request_timeout
        d1, d2 = explicit.wait(), default.wait()
        self.mesh.advance(1.9)
        self.assertNoResult(d1)
        self.mesh.advance(0.1)
        self.failureResultOf(d1, TimeoutError)
        self.assertNoResult(d2)
        self.mesh.advance(3.0)
        self.failureResultOf(d2, TimeoutError)

    def test_cancel_removes_the_pending_call_and_ignores_late_reply(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "slow")
        held: list[defer.Deferred] = []

        def slow() -> defer.Deferred:
            held.append(defer.Deferred())
            return held[-1]

        rep.register("slow", slow)
        self.mesh.settle()
        req = ReqChannel(self.a, "slow", timeout=10.0)
        d = req.slow()
        self.mesh.settle()
        self.assertEqual(len(held), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        # white-box: nothing left to time out or match
        self.assertEqual(len(self.a.node.requests.calls), 0)
        held[0].callback("too late")
        self.mesh.settle()  # the late reply arrives and is dropped
        self.mesh.advance(20)  # and the cancelled call's timer is gone (no second errback)
        # The channel still works afterwards.
        d2 = req.slow()
        self.mesh.settle()
        held[1].callback("fine")
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d2), "fine")

    def test_two_repliers_share_slow_requests_idle_first(self) -> None:
        a, b, c = self.a, self.b, self.c
        self.mesh.link(a, b)
        self.mesh.link(a, c)
        held: dict[str, list[defer.Deferred]] = {"b": [], "c": []}
        reps = {}
        for ctx, key in ((b, "b"), (c, "c")):
            rep = RepChannel(ctx, "work")

            def job(key: str = key) -> defer.Deferred:
                held[key].append(defer.Deferred())
                return held[key][-1]

            rep.register("job", job)
            reps[key] = rep
        self.mesh.settle()
        req = ReqChannel(a, "work")
        d1, d2 = req.job(), req.job()
        self.mesh.settle()
        self.assertEqual((len(held["b"]), len(held["c"])), (1, 1))
        # Finish one; the next request goes to the replier that is idle now.
        first = "b"
        held[first][0].callback("done-b")
        self.mesh.settle()
        d3 = req.job()
        self.mesh.settle()
        self.assertEqual((len(held["b"]), len(held["c"])), (2, 1))
        held["c"][0].callback("done-c")
        held["b"][1].callback("done-b2")
        self.mesh.settle()
        results = sorted(self.successResultOf(d) for d in (d1, d2, d3))
        self.assertEqual(results, ["done-b", "done-b2", "done-c"])
        self.assertEqual(reps["b"].served + reps["c"].served, 3)

    def test_replier_node_going_away_fails_pending_calls(self) -> None:
        self.mesh.link(self.a, self.b)
        rep = RepChannel(self.b, "slow")
        rep.register("wait", lambda: defer.Deferred())
        self.mesh.settle()
        req = ReqChannel(self.a, "slow", timeout=None)
        d1, d2 = req.wait(), req.wait()
        self.mesh.settle()
        self.assertNoResult(d1)
        self.mesh.cut(self.a, self.b)
        self.failureResultOf(d1, ConnectionLost)
        self.failureResultOf(d2, ConnectionLost)
        # And with nobody left, new calls fail at once.
        self.failureResultOf(req.wait(), NoResponders)

    def test_a_call_made_as_soon_as_a_link_is_back_is_answered(self) -> None:
        # Each end drops the other from its own record when a link goes; the re-sync
        # on the new link must not send that version before the current one, or the
        # caller sees the replier cut off for a moment and fails the call in flight.
        self.mesh.link(self.a, self.b)
        Calculator(self.b, "calc")
        self.mesh.settle()
        req = ReqChannel(self.a, "calc")
        self.assertEqual(req.responders, 1)
        self.mesh.cut(self.a, self.b)
        self.mesh.settle()
        self.assertEqual(req.responders, 0)
        ready = req.wait_for_responders()
        self.mesh.link(self.a, self.b, settle=False)
        calls = []
        while self.mesh.pump():
            if ready.called and not calls:
                calls.append(req.add(len(calls), 1))  # the moment the replier is known
        self.mesh.settle()
        self.assertEqual([self.successResultOf(d) for d in calls], [1])

    def test_request_routed_through_an_intermediate_node(self) -> None:
        self.mesh.link_chain()
        Calculator(self.c, "calc")
        self.mesh.settle()
        d = ReqChannel(self.a, "calc").add(40, 2)
        self.mesh.settle()
        self.assertEqual(self.successResultOf(d), 42)


class StateTests(MeshTestCase):
    def test_recv_is_none_before_any_write(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        s1, s2 = StateChannel(a, "cfg"), StateChannel(b, "cfg")
        mesh.settle()
        self.assertIsNone(s1.recv())
        self.assertIsNone(s2.recv())
        self.assertIsNone(s1.version)

    def test_late_joiner_gets_current_value(self) -> None:
        mesh = self.make_mesh(3)
        a, b, c = mesh
        mesh.link(a, b)
        writer = StateChannel(a, "cfg")
        writer.send({"v": 1})
        writer.send({"v": 2})
        mesh.settle()
        joiner = StateChannel(b, "cfg")  # joins a live mesh after the writes
        mesh.settle()
        self.assertEqual(joiner.recv(), {"v": 2})
        mesh.link(b, c)
        far = StateChannel(c, "cfg")  # joins through b, which also holds the value
        mesh.settle()
        self.assertEqual(far.recv(), {"v": 2})

    def test_node_that_links_later_gets_current_value(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        StateChannel(a, "cfg").send("set before linking")
        holder = StateChannel(b, "cfg")
        mesh.link(a, b)
        self.assertEqual(holder.recv(), "set before linking")

    def test_subscribe_fires_on_change(self) -> None:
        mesh = self.make_mesh(2)
        a, b = mesh
        mesh.link(a, b)
        writer = StateChannel(a, "cfg")
        reader = StateChannel(b, "cfg")
        seen: list[object] = []
        reader.subscribe(seen.append)
        mesh.settle()
        writer.send(1)
        mesh.settle()
        writer.send([2, "two"])
        mesh.settle()
        self.assertEqual(seen, [1, [2, "two"]])
        self.assertEqual(reader.recv(), [2, "two"])

    def test_concurrent_writes_converge_on_both_nodes(self) -> None:
        for seed in range(4):
            mesh = self.make_mesh(2, seed=seed)
            a, b = mesh
            mesh.link(a, b)
            sa, sb = StateChannel(a, "cfg"), StateChannel(b, "cfg")
            mesh.settle()
            # Neither write sees the other: equal Lamport times, the larger node id wins.
            sa.send("from a")
            sb.send("from b")
            mesh.settle()
            expected = "from a" if a.node_id > b.node_id else "from b"
            self.assertEqual(sa.recv(), expected)
            self.assertEqual(sb.recv(), expected)
            self.assertEqual(sa.version, sb.version)
            # A write made after seeing the value beats it, whoever makes it.
            loser = sa if expected == "from b" else sb
            loser.send("after")
            mesh.settle()
            self.assertEqual((sa.recv(), sb.recv()), ("after", "after"))

    def test_partitioned_writes_converge_after_heal(self) -> None:
        mesh = self.make_mesh(3)
        a, b, c = mesh
        mesh.link(a, b)
        mesh.link(b, c)
        states = [StateChannel(ctx, "cfg") for ctx in mesh]
        mesh.settle()
        states[0].send("base")
        mesh.settle()
        mesh.cut(b, c)
        mesh.settle()
        states[0].send("left")
        states[2].send("right-1")
        states[2].send("right-2")  # a higher Lamport time on c's side
        mesh.settle()
        self.assertEqual(states[1].recv(), "left")
        self.assertEqual(states[2].recv(), "right-2")
        mesh.link(b, c)
        values = {s.recv() for s in states}
        self.assertEqual(values, {"right-2"})


class DeliveryLoopTests(MeshTestCase):
    """SubChannel.take, the one delivery loop: its written-out path for one callback on a
    BINARY channel hands over to the general one exactly where something changes."""

    def sub(self) -> SubChannel:
        (a,) = self.make_mesh(1)
        return SubChannel(a, "loop", BINARY)

    def test_out_of_order_messages_in_a_run(self):
        sub, got = self.sub(), []
        sub.subscribe(got.append)
        items = [(1, b"a"), (2, b"b"), (2, b"dup"), (5, b"e"), (3, b"late"), (6, b"f")]
        sub.take(7, BINARY.tag, items, None, None)
        self.assertEqual(got, [b"a", b"b", b"e", b"f"])
        self.assertEqual((sub.discarded, sub.missed, sub.received), (2, 2, 4))
        sub.take(7, BINARY.tag, [(7, b"g")], None, None)
        self.assertEqual(got[-1], b"g")

    def test_a_callback_that_subscribes_another_or_returns_a_deferred(self):
        sub, got, more = self.sub(), [], []
        busy: defer.Deferred[None] = defer.Deferred()

        def first(value: bytes) -> defer.Deferred[None] | None:
            got.append(value)
            if value == b"2":
                sub.subscribe(more.append)
            if value == b"4":
                return busy
            return None

        sub.subscribe(first)
        sub.take(7, BINARY.tag, [(i, str(i).encode()) for i in range(1, 7)], None, None)
        self.assertEqual(got, [b"1", b"2", b"3", b"4"])
        self.assertEqual(more, [b"3", b"4"])
        self.assertEqual(sub.pending, 2)  # 5 and 6 wait for the Deferred
        busy.callback(None)
        self.assertEqual(got, [b"1", b"2", b"3", b"4", b"5", b"6"])
        self.assertEqual((sub.received, sub.pending), (6, 0))

    def test_a_callback_that_raises_or_closes(self):
        sub, got = self.sub(), []

        def callback(value: bytes) -> None:
            got.append(value)
            if value == b"2":
                raise RuntimeError("bad callback")
            if value == b"4":
                sub.close()

        sub.subscribe(callback)
        sub.take(7, BINARY.tag, [(i, str(i).encode()) for i in range(1, 7)], None, None)
        self.assertEqual(got, [b"1", b"2", b"3", b"4"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Link:
    """What a subscriber looks at of the link its messages came by."""

    def __init__(self) -> None:
        self.closing = False


#: what a callback may do on a given message (see test_block_delivery_matches_take)
_ACTIONS = ("raise", "value", "defer", "close", "second", "swap", "link", "unsubscribe")


class BlockDeliveryTests(MeshTestCase):
    """SubChannel.deliver_block reads a run of one frame size flat for the commonest
    subscriber (its next messages in order, one callback on a BINARY channel): it must
    do exactly what the general loop, SubChannel.take, does with the same messages."""

    def run_script(self, runs: list[list[tuple[int, bytes]]], script: dict[int, str],
                   flat: bool) -> tuple[list, tuple, int]:
        (ctx,) = self.make_mesh(1)
        sub = SubChannel(ctx, "block", BINARY)
        link, got, waits = _Link(), [], []

        def swapped(value: bytes) -> None:
            got.append(("swapped", value, sub.received))

        def callback(value: bytes) -> object:
            got.append(("first", value, sub.received))
            action = script.get(int(value.split(b".")[0]))
            if action == "raise":
                raise RuntimeError("bad callback")
            if action == "value":
                return 1
            if action == "defer":
                waits.append(defer.Deferred())
                return waits[-1]
            if action == "close":
                sub.close()
            elif action == "second":
                sub.subscribe(lambda v: got.append(("second", v, sub.received)))
            elif action == "swap":
                sub.unsubscribe(callback)
                sub.subscribe(swapped)
            elif action == "link":
                link.closing = True
            elif action == "unsubscribe":
                sub.unsubscribe(callback)
            return None

        sub.subscribe(callback)
        for frames in runs:
            stream = b"".join(wire.data_frame(3, BINARY.tag, 11, 13, seq, payload)
                              for seq, payload in frames)
            for item in wire.FrameDecoder(expect_preamble=False, runs=True).feed(stream):
                if type(item) is not wire.Run:
                    sub.deliver(item)
                elif flat:
                    sub.deliver_block(item, link, None)
                else:
                    sub.take(13, item.tag, [(f.seq, f.payload) for f in item.frames()], link,
                             None)
        while waits:
            waits.pop(0).callback(None)
        counts = (sub.received, sub.discarded, sub.missed, sub.pending, sub.closed)
        return got, counts, len(self.flushLoggedErrors(RuntimeError))

    @settings(max_examples=80, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(1, 40), st.sampled_from([0, 0, 0, 1, -1, 3, -5])),
            min_size=1, max_size=4,
        ),
        st.dictionaries(st.integers(1, 150), st.sampled_from(_ACTIONS), max_size=3),
        st.integers(0, 40),
    )
    def test_block_delivery_matches_take(self, shape, script, size):
        # Runs one after another; each may start where the last ended, or skip ahead or
        # go back (a gap, or duplicates and stragglers); the callback acts on some.
        runs, seq = [], 0
        for count, jump in shape:
            seq = max(0, seq + jump)
            runs.append([(seq + i + 1, b"%d." % (seq + i + 1) + b"x" * size)
                         for i in range(count)])
            seq += count
        self.assertEqual(self.run_script(runs, script, True),
                         self.run_script(runs, script, False))

    def test_each_case_once(self):
        runs = [[(i, b"%d." % i) for i in range(1, 30)], [(i, b"%d." % i) for i in range(30, 60)]]
        for at in (1, 5, 29, 30, 45):
            for action in _ACTIONS:
                flat = self.run_script(runs, {at: action}, True)
                self.assertEqual(flat, self.run_script(runs, {at: action}, False),
                                 (at, action))
        # The flat path is the one taken: in order, received counted before each call.
        got, counts, errors = self.run_script(runs, {}, True)
        self.assertEqual([g[2] for g in got], list(range(1, 60)))
        self.assertEqual(counts, (59, 0, 0, 0, False))
