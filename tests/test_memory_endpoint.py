"""Ring 2: ``memory:NAME`` endpoints: ``Context.listen``/``connect`` and the dialer in memory.

The endpoint strings go through Twisted's plugin seam (``serverFromString``,
``clientFromString``) exactly as ``tcp:`` ones do, so the context's guard, its
dialer (ClientService) and the dialer's backoff all run; the bytes move on a
:class:`yotonnet.testing.MemoryMesh` and time on its clock, so every run is the same.
"""

from __future__ import annotations

from certs_fixture import LogCapture, path
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from yotonnet import (
    Context,
    ContextConfig,
    PubChannel,
    RepChannel,
    ReqChannel,
    SubChannel,
)
from yotonnet.mesh.link import HandshakeError, Link
from yotonnet.security.settings import Security
from yotonnet.testing import (
    MemoryAddress,
    MemoryClientEndpoint,
    MemoryMesh,
    MemoryServerEndpoint,
    MeshTestCase,
)

#: quick heartbeats; a first retry after 2 to 3 s, then 4 to 5, 8 to 9, 16 to 17, 30 to 31:
#: backoff doubles from 1 s, plus up to 1 s of jitter, so each delay is longer than the last
CONFIG = ContextConfig(
    heartbeat=1.0, busy_timeout=2.0, dead_timeout=4.0, reconnect_initial=1.0, reconnect_max=30.0
)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Recorder(Protocol):
    """A foreign client: keeps what it receives and why its connection ended."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.lost = reason


class Nobody(Factory):
    """A listener's factory that builds no protocol (as one refusing a peer does)."""

    def buildProtocol(self, addr: object) -> None:
        return None


class EndpointTests(MeshTestCase):
    """The endpoints themselves, with plain protocols."""

    def test_endpoint_strings_give_memory_endpoints(self) -> None:
        mesh = self.make_mesh()
        self.assertIsInstance(serverFromString(mesh.clock, "memory:hub"), MemoryServerEndpoint)
        self.assertIsInstance(clientFromString(mesh.clock, "memory:hub"), MemoryClientEndpoint)

    def test_a_listener_holds_its_name_until_it_stops(self) -> None:
        mesh = self.make_mesh()
        endpoint = serverFromString(mesh.clock, "memory:hub")
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Echo)))
        self.assertEqual(port.getHost(), MemoryAddress("memory:hub"))
        self.assertIs(mesh.listeners["hub"], port)
        failure = self.failureResultOf(
            endpoint.listen(Factory.forProtocol(Echo)), error.CannotListenError
        )
        self.assertIn("memory:hub", str(failure.value))
        port.stopListening()
        self.assertEqual(mesh.listeners, {})
        self.successResultOf(endpoint.listen(Factory.forProtocol(Echo)))

    def test_bytes_move_when_the_mesh_moves_them(self) -> None:
        mesh = self.make_mesh()
        self.successResultOf(
            serverFromString(mesh.clock, "memory:echo").listen(Factory.forProtocol(Echo))
        )
        d = clientFromString(mesh.clock, "memory:echo").connect(Factory.forProtocol(Recorder))
        self.assertNoResult(d)  # as over TCP, connecting takes a turn of the reactor
        mesh.pump()
        client = self.successResultOf(d)
        self.assertEqual(client.transport.getPeer(), MemoryAddress("memory:echo"))
        client.transport.write(b"ping")
        self.assertEqual(client.received, b"")
        mesh.settle()
        self.assertEqual(client.received, b"ping")
        (conn,) = mesh.connections
        conn.hold(conn.server)
        client.transport.write(b"again")
        mesh.settle()
        self.assertEqual(client.received, b"ping")
        conn.release(conn.server)
        mesh.settle()
        self.assertEqual(client.received, b"pingagain")
        conn.cut()
        self.assertIsNotNone(client.lost)
        client.lost.trap(error.ConnectionLost)

    def test_a_name_nobody_listens_on_refuses_the_connection(self) -> None:
        mesh = self.make_mesh()
        d = clientFromString(mesh.clock, "memory:nobody").connect(Factory.forProtocol(Recorder))
        mesh.settle()
        failure = self.failureResultOf(d, error.ConnectionRefusedError)
        self.assertIn("nobody listens on memory:nobody", str(failure.value))
        self.assertEqual(mesh.connections, [])

    def test_a_stopped_listener_refuses_new_connections_and_keeps_old_ones(self) -> None:
        mesh = self.make_mesh()
        port = self.successResultOf(
            serverFromString(mesh.clock, "memory:echo").listen(Factory.forProtocol(Echo))
        )
        endpoint = clientFromString(mesh.clock, "memory:echo")
        d = endpoint.connect(Factory.forProtocol(Recorder))
        mesh.settle()
        client = self.successResultOf(d)
        port.stopListening()
        d = endpoint.connect(Factory.forProtocol(Recorder))
        mesh.settle()
        self.failureResultOf(d, error.ConnectionRefusedError)
        client.transport.write(b"still here")
        mesh.settle()
        self.assertEqual(client.received, b"still here")

    def test_meshes_do_not_see_each_others_names(self) -> None:
        one, other = self.make_mesh(), self.make_mesh()
        self.successResultOf(
            serverFromString(one.clock, "memory:hub").listen(Factory.forProtocol(Echo))
        )
        d = clientFromString(other.clock, "memory:hub").connect(Factory.forProtocol(Recorder))
        other.settle()
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_a_listener_that_builds_no_protocol_hangs_up(self) -> None:
        mesh = self.make_mesh()
        self.successResultOf(serverFromString(mesh.clock, "memory:shut").listen(Nobody()))
        d = clientFromString(mesh.clock, "memory:shut").connect(Factory.forProtocol(Recorder))
        mesh.settle()
        client = self.successResultOf(d)  # accepted, then closed: what TCP does
        self.assertIsNotNone(client.lost)
        client.lost.trap(error.ConnectionDone)

    def test_a_cancelled_dial_connects_nothing(self) -> None:
        mesh = self.make_mesh()
        self.successResultOf(
            serverFromString(mesh.clock, "memory:echo").listen(Factory.forProtocol(Echo))
        )
        d = clientFromString(mesh.clock, "memory:echo").connect(Factory.forProtocol(Recorder))
        d.cancel()
        mesh.settle()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(mesh.connections, [])

    def test_another_reactor_is_refused_saying_why(self) -> None:
        with self.assertRaises(ValueError) as caught:
            serverFromString(Clock(), "memory:hub")
        self.assertIn("MemoryMesh", str(caught.exception))
        ctx = Context("alone", Clock())
        self.addCleanup(ctx.close)
        failure = self.failureResultOf(ctx.listen("memory:hub"), ValueError)
        self.assertIn("bad listen endpoint 'memory:hub'", str(failure.value))
        self.assertIn("MemoryMesh", str(failure.value))

    def test_malformed_strings_are_refused_saying_why(self) -> None:
        mesh = self.make_mesh()
        for text, why in (
            ("memory:", "one non-empty name"),
            ("memory:a:b", "one non-empty name"),
            ("memory:a:colour=red", "takes no options, not colour"),
        ):
            with self.assertRaises(ValueError, msg=text) as caught:
                clientFromString(mesh.clock, text)
            self.assertIn(why, str(caught.exception), text)


class ContextTests(MeshTestCase):
    """``Context.listen("memory:NAME")`` and ``Context.connect("memory:NAME")``."""

    mesh_config = CONFIG

    def hub_and_spokes(self, *spokes: str) -> tuple[MemoryMesh, Context, list[Context]]:
        """A mesh where ``hub`` listens on memory:hub and each spoke has dialled it."""
        mesh = self.make_mesh(names=["hub", *spokes])
        hub, *others = mesh
        port = self.successResultOf(hub.listen("memory:hub"))
        self.assertEqual(hub.ports, [port])
        dials = [ctx.connect("memory:hub") for ctx in others]
        mesh.settle()
        for ctx, d in zip(others, dials):
            link = self.successResultOf(d)
            self.assertIsInstance(link, Link)
            self.assertIs(link, ctx.dialers[0].link)
            self.assertIn(ctx.node_id, hub.leaf_links)  # a context that only dials is a leaf
            self.assertEqual((ctx.role, link.role), ("leaf", "hub"))
        return mesh, hub, others

    def test_pubsub_and_reqrep_run_over_dialled_links(self) -> None:
        mesh, hub, (a, b) = self.hub_and_spokes("a", "b")
        sub = SubChannel(b, "news")
        pub = PubChannel(a, "news")
        rep = RepChannel(b, "math")
        rep.register("add", lambda x, y: x + y)
        req = ReqChannel(a, "math")
        mesh.settle()
        pub.send("through the hub")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), "through the hub")
        call = req.call("add", 2, 3)
        mesh.settle()
        self.assertEqual(self.successResultOf(call), 5)

    def test_the_mesh_knows_dialled_connections_by_their_contexts(self) -> None:
        mesh, hub, (a,) = self.hub_and_spokes("a")
        conn = mesh.connection(a, hub)
        self.assertEqual((conn.client_context, conn.server_context), (a, hub))
        self.assertIs(conn.link_of(a), a.dialers[0].link)
        self.assertIs(conn.link_of(hub), hub.leaf_links[a.node_id])
        self.assertIs(conn.link_of(a.dialers[0].link), a.dialers[0].link)

    def test_a_cut_link_is_dialled_again_after_the_backoff_delay(self) -> None:
        mesh, hub, (a, b) = self.hub_and_spokes("a", "b")
        sub = SubChannel(b, "news")
        pub = PubChannel(a, "news")
        mesh.settle()
        dialer = a.dialers[0]
        before = dialer.link
        mesh.cut(a, hub)
        info = dialer.info()
        self.assertFalse(info["connected"])
        self.assertEqual(info["attempts"], 1)
        delay = info["last_delay"]
        self.assertGreaterEqual(delay, 2.0)  # reconnect_initial 1 s, doubled for attempt 1
        self.assertLess(delay, 3.0)  # plus under 1 s of jitter
        mesh.advance(delay - 0.01)
        self.assertFalse(dialer.info()["connected"], "dialled again before the backoff delay")
        self.assertRaises(KeyError, mesh.connection, a, hub)
        mesh.advance(0.02)
        self.assertTrue(dialer.info()["connected"])
        self.assertIsNot(dialer.link, before)
        self.assertIs(mesh.connection(a, hub).link_of(a), dialer.link)
        self.assertIn(a.node_id, hub.leaf_links)
        pub.send("after the cut")
        mesh.settle()
        self.assertEqual(self.successResultOf(sub.recv()), "after the cut")

    def test_a_dial_to_nobody_backs_off_until_someone_listens(self) -> None:
        mesh = self.make_mesh(names=["a", "late"])
        a, late = mesh
        first = a.connect("memory:late")
        dialer = a.dialers[0]
        mesh.settle()
        delays = []
        for attempt in range(1, 5):
            info = dialer.info()
            self.assertEqual(info["attempts"], attempt)
            self.assertFalse(info["connected"])
            delays.append(info["last_delay"])
            mesh.advance(info["last_delay"])  # to the retry, which is refused again
        self.assertEqual(delays, sorted(set(delays)), "each delay is longer than the last")
        self.assertNoResult(first)
        self.successResultOf(late.listen("memory:late"))
        mesh.advance(dialer.info()["last_delay"])
        link = self.successResultOf(first)
        self.assertIs(link, dialer.link)
        self.assertIn(a.node_id, late.leaf_links)
        self.assertTrue(dialer.info()["connected"])

    def test_wrong_credentials_stop_the_dialer(self) -> None:
        log = LogCapture(self)
        mesh = self.make_mesh()
        hub = mesh.add("hub", security=Security(tokens=path("tokens.txt")))
        eve = mesh.add("eve", security=Security(token="not-a-token-of-anyone-at-all"))
        self.successResultOf(hub.listen("memory:hub"))
        d = eve.connect("memory:hub")
        mesh.settle()
        failure = self.failureResultOf(d, HandshakeError)
        self.assertIn("authentication failed: unknown token", str(failure.value))
        dialer = eve.dialers[0]
        self.assertTrue(dialer.stopped, "a refused dialler must stop")
        mesh.advance(120.0)  # far past any backoff delay: no second try
        self.assertEqual(hub.guard.counters["auth_failed"], 1)
        self.assertEqual(mesh.connections, [])
        self.assertEqual(hub.leaf_links, {})
        self.assertFalse(dialer.info()["connected"])
        self.assertTrue(log.matching("authentication failed"))

    def test_a_silent_hub_is_dropped_and_dialled_again(self) -> None:
        mesh, hub, (a,) = self.hub_and_spokes("a")
        dialer = a.dialers[0]
        before = dialer.link
        held = mesh.connection(a, hub)
        held.hold(hub)  # the hub's bytes stop: a hears nothing, its link goes busy, then dead
        mesh.advance(CONFIG.busy_timeout + 0.5)
        self.assertEqual(before.status, "busy")
        self.assertTrue(mesh.run_until(lambda: held.closed, timeout=CONFIG.dead_timeout))
        self.assertTrue(mesh.run_until(lambda: dialer.info()["connected"], timeout=5.0))
        self.assertIsNot(dialer.link, before)
        self.assertFalse(mesh.connection(a, hub).held(hub))

    def test_a_vanished_connection_is_dialled_again(self) -> None:
        mesh, hub, (a,) = self.hub_and_spokes("a")
        dialer = a.dialers[0]
        before = dialer.link
        mesh.connection(a, hub).vanish(a)  # a's host lost it; the hub is left half-open
        self.assertFalse(dialer.info()["connected"])
        self.assertTrue(mesh.run_until(lambda: dialer.info()["connected"], timeout=5.0))
        self.assertIsNot(dialer.link, before)
        self.assertIs(hub.leaf_links[a.node_id], mesh.connection(a, hub).link_of(hub))

    def test_closing_the_mesh_stops_dialers_and_frees_names(self) -> None:
        mesh = MemoryMesh(names=["hub", "a", "b"], config=CONFIG)
        hub, a, b = mesh
        self.successResultOf(hub.listen("memory:hub"))
        a.connect("memory:hub")
        b.connect("memory:nobody")  # backing off when the mesh closes
        mesh.settle()
        mesh.close()
        self.assertEqual(mesh.listeners, {})
        self.assertEqual(mesh.connections, [])
        self.assertTrue(all(d.stopped for ctx in mesh for d in ctx.dialers))
        self.assertEqual(mesh.clock.getDelayedCalls(), [])
