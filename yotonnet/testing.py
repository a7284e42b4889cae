"""Public test doubles: an in-memory mesh of contexts on one fake clock.

:class:`MemoryMesh` builds N :class:`~yotonnet.mesh.context.Context` objects that
share one :class:`~twisted.internet.testing.MemoryReactorClock` and joins them
with in-memory transports instead of sockets, in the manner of
``twisted.test.iosim`` (whose ``FakeTransport`` it extends) and of treq's
``treq.testing``. Nothing moves until the test says so:

* :meth:`MemoryMesh.pump` moves the bytes written so far, once;
* :meth:`MemoryMesh.settle` pumps until no byte moves (iosim's ``flush``);
* :meth:`MemoryMesh.advance` moves the clock forward from one timer to the
  next, settling after each, so a 1-second heartbeat over 3 seconds fires
  three times (``Clock.advance(3)`` alone would fire it once).

Links are real :class:`~yotonnet.mesh.link.Link` protocols built by
:class:`~yotonnet.mesh.link.LinkFactory`, so handshakes, heartbeats, routing and
channels run exactly as over TCP. :meth:`MemoryMesh.link` joins two contexts,
:meth:`MemoryMesh.cut` drops a link as a network failure would (both ends get
``connectionLost``), :meth:`MemoryConnection.vanish` drops it on one side only
(a crashed host: the other end is left half-open),
:meth:`MemoryConnection.hold` stalls one direction (a peer whose interpreter
is stuck) until :meth:`MemoryConnection.release`, and
:meth:`MemoryMesh.attach` joins a context to any other protocol, e.g. one that
sends hand-made bytes.

``memory:NAME`` endpoints put ``Context.listen``, ``Context.connect`` and the
dialer behind it (ClientService, its backoff, reconnection after a cut) in
memory too, exactly as over TCP. Twisted's ``serverFromString`` and
``clientFromString`` find them as plugins (``twisted/plugins/yotonnet_memory.py``)
for any context whose reactor is a mesh's clock (``mesh.add()`` makes those):
a listener holds NAME on that mesh's network (each mesh has its own), a dial to
a name nobody holds is refused (ConnectionRefusedError, so the dialer backs
off and tries again), and a connection is a :class:`MemoryConnection` like any
other: the mesh moves its bytes, and ``cut``, ``hold`` and ``vanish`` work on
it. :class:`MemoryServerEndpoint` and :class:`MemoryClientEndpoint` are the
same endpoints for code that takes an endpoint object.

:class:`MeshTestCase` is a trial test case whose ``make_mesh()`` builds a
mesh that is closed when the test ends.

Everything is deterministic: node ids come from ``random.Random(seed)``,
delivery follows connection order (or, with ``shuffle=True``, an order drawn
from the same seed, to explore interleavings while keeping each connection's
bytes in order), and time moves only through the fake clock. A hundred
contexts fit in one test.

Example::

    from twisted.trial.unittest import SynchronousTestCase
    from yotonnet import PubChannel, SubChannel
    from yotonnet.testing import MemoryMesh

    class NewsTests(SynchronousTestCase):
        def test_news(self):
            mesh = MemoryMesh(3, seed=1)
            self.addCleanup(mesh.close)
            a, b, c = mesh
            mesh.link(a, b)
            mesh.link(b, c)
            sub = SubChannel(c, "news")
            pub = PubChannel(a, "news")
            mesh.settle()                     # subscriptions travel to a
            pub.send("hello")
            mesh.settle()
            self.assertEqual(self.successResultOf(sub.recv()), "hello")
            mesh.cut(a, b)                    # both ends see connectionLost
            mesh.advance(10)                  # heartbeats, timeouts, housekeeping

The same through endpoint strings, where the dialer redials by itself::

    from yotonnet import ContextConfig
    from yotonnet.testing import MeshTestCase

    class HubTests(MeshTestCase):
        mesh_config = ContextConfig(reconnect_initial=1.0)

        def test_redial(self):
            mesh = self.make_mesh(names=["hub", "a"])
            hub, a = mesh
            self.successResultOf(hub.listen("memory:hub"))
            link = a.connect("memory:hub")    # a dialer, as for "tcp:host:7117"
            mesh.settle()
            self.assertIs(self.successResultOf(link), a.dialers[0].link)
            mesh.cut(a, hub)                  # the dialer backs off, then redials
            mesh.advance(a.dialers[0].info()["last_delay"])
            self.assertTrue(a.dialers[0].info()["connected"])
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet import defer, error
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from .core import wire
from .mesh.context import Context, ContextConfig
from .mesh.link import Link, LinkFactory
from .security.settings import Security

__all__ = [
    "MemoryAddress",
    "MemoryTransport",
    "MemoryConnection",
    "MemoryMesh",
    "MemoryPort",
    "MemoryServerEndpoint",
    "MemoryClientEndpoint",
    "memory_server_endpoint",
    "memory_client_endpoint",
    "mesh_of",
    "MeshTestCase",
]


@implementer(IAddress)
@dataclasses.dataclass(frozen=True)
class MemoryAddress:
    """The address of one end of an in-memory connection (``name`` like a unix path)."""

    name: str

    def __str__(self) -> str:
        return self.name


class MemoryTransport(FakeTransport):
    """An iosim ``FakeTransport`` that tells its connection when it has work to do."""

    def __init__(
        self,
        protocol: IProtocol,
        isServer: bool,
        connection: MemoryConnection,
        hostAddress: MemoryAddress,
        peerAddress: MemoryAddress,
    ) -> None:
        super().__init__(protocol, isServer, hostAddress, peerAddress)
        self.connection = connection

    def write(self, data: bytes) -> None:
        # As over TCP, bytes written after loseConnection() go nowhere.
        if self.disconnecting or self.disconnected:
            return
        self.stream.append(bytes(data))
        self.connection._wake()

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.connection._wake()

    def abortConnection(self) -> None:
        self.stream = []
        self.loseConnection()


class MemoryConnection:
    """One in-memory connection between two protocols (usually two links).

    ``client`` dialled, ``server`` accepted; ``client_context`` and
    ``server_context`` are their contexts (None for a foreign protocol).
    ``closed`` and ``reason`` tell whether and why it ended. On a connection
    made by :meth:`MemoryMesh.link` the mesh plays the dialler, so a dialling
    link's failed handshake lands in ``handshake_failure`` rather than in the
    log; on one dialled through a ``memory:`` endpoint the dialler (e.g. the
    context's) has that part, and ``client`` is whatever its factory built
    (ClientService's proxy around the link, for ``Context.connect``).
    With tracing on, ``frames`` lists ``(sender_name, Frame)`` for every frame
    delivered, preambles excluded.
    """

    def __init__(
        self,
        mesh: MemoryMesh,
        client: IProtocol,
        client_name: str,
        server: IProtocol,
        server_name: str,
        client_context: Context | None = None,
        server_context: Context | None = None,
        trace: bool = False,
    ) -> None:
        self.mesh = mesh
        self.client = client
        self.server = server
        self.client_name = client_name
        self.server_name = server_name
        self.client_context = client_context
        self.server_context = server_context
        self.client_transport = MemoryTransport(
            client, False, self, MemoryAddress(f"memory:{client_name}"),
            MemoryAddress(f"memory:{server_name}"),
        )
        self.server_transport = MemoryTransport(
            server, True, self, MemoryAddress(f"memory:{server_name}"),
            MemoryAddress(f"memory:{client_name}"),
        )
        self.closed = False
        self.reason: str | None = None
        #: why the dialling link's handshake failed (a Failure), if it did
        self.handshake_failure: Failure | None = None
        self.bytes_moved = 0
        # each end's Link, when it is one (see _note_links)
        self._links: dict[MemoryTransport, Link] = {}
        self._held: set[MemoryTransport] = set()
        self._gone: set[MemoryTransport] = set()  # ends already told connectionLost
        self._vanished: set[MemoryTransport] = set()  # ends that left without a word
        self.frames: list[tuple[str, wire.Frame]] | None = [] if trace else None
        self._decoders: dict[MemoryTransport, wire.FrameDecoder | None] = {
            t: wire.FrameDecoder(max_frame=2**32, expect_preamble=True)
            for t in (self.client_transport, self.server_transport)
        } if trace else {}

    def _handshake_failed(self, failure: Failure) -> None:
        self.handshake_failure = failure

    def _note_links(self) -> None:
        """Remember each end's Link once connected.

        A dialer's link reaches the transport wrapped in ClientService's proxy; the
        link registers itself as its transport's producer, which is how it is found.
        """
        for t in (self.client_transport, self.server_transport):
            for candidate in (t.protocol, t.producer):
                if isinstance(candidate, Link):
                    self._links[t] = candidate
                    break

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<MemoryConnection {self.client_name}->{self.server_name} {state}>"

    # --- which end is which

    def _transport_of(self, end: Any) -> MemoryTransport:
        """The transport that ``end`` (a context, a protocol or a name) writes into."""
        for transport, proto, ctx, name in (
            (self.client_transport, self.client, self.client_context, self.client_name),
            (self.server_transport, self.server, self.server_context, self.server_name),
        ):
            if (
                end is proto
                or end is self._links.get(transport)
                or (ctx is not None and end is ctx)
                or end == name
            ):
                return transport
        raise ValueError(f"{end!r} is not an end of {self!r}")

    def link_of(self, end: Context | str) -> Link:
        """The :class:`Link` protocol of the given context's end."""
        link = self._links.get(self._transport_of(end))
        if link is None:
            raise TypeError(f"{end!r}'s end of {self!r} is not a Link")
        return link

    def peer_of(self, end: Any) -> IProtocol:
        """The protocol at the other end from ``end``."""
        transport = self._transport_of(end)
        return self.server if transport is self.client_transport else self.client

    # --- faults

    def hold(self, sender: Any) -> None:
        """Stop delivering what ``sender`` writes (it is kept, in order, until released).

        The other end sees a silent peer whose socket is still open: what a
        node looks like when its interpreter is stuck.
        """
        self._held.add(self._transport_of(sender))

    def release(self, sender: Any) -> None:
        """Deliver what ``sender`` wrote while held, and everything after it."""
        self._held.discard(self._transport_of(sender))
        self._wake()

    def held(self, sender: Any) -> bool:
        return self._transport_of(sender) in self._held

    def cut(self, reason: str = "link cut by MemoryMesh") -> None:
        """Drop the connection at once, bytes in flight included, as a network failure would."""
        self._close(error.ConnectionLost(reason), first=self.client_transport)

    def vanish(self, end: Any, reason: str = "connection vanished (MemoryMesh)") -> None:
        """Lose the connection on ``end``'s side only, without telling the other end.

        What a host crash or an expired NAT entry does: ``end`` gets
        ``connectionLost`` now; the other end is left half-open, hears nothing
        more and writes into the void until it closes the connection itself
        (or :meth:`cut` ends it).
        """
        t = self._transport_of(end)
        if self.closed or t in self._gone:
            return
        self._gone.add(t)
        self._vanished.add(t)
        t.stream = []
        t.disconnecting = t.disconnected = True
        t.protocol.connectionLost(Failure(error.ConnectionLost(reason)))
        self._wake()

    # --- moving bytes

    def _wake(self) -> None:
        if not self.closed:
            self.mesh._dirty[self] = None

    def pump(self) -> bool:
        """Move what each end has written to the other once; True if anything happened."""
        if self.closed:
            return False
        moved = False
        for tx, rx in (
            (self.client_transport, self.server_transport),
            (self.server_transport, self.client_transport),
        ):
            if not tx.stream or tx in self._held or self.closed:
                continue
            data = b"".join(tx.stream)
            tx.stream = []
            if rx in self._gone:
                continue  # half-open: nobody is listening any more
            self.bytes_moved += len(data)
            if self.frames is not None:
                self._trace(tx, data)
            rx.protocol.dataReceived(data)
            moved = True
        if not self.closed:
            for t in (self.client_transport, self.server_transport):
                if not t.disconnecting or t in self._vanished:
                    continue
                if not t.stream:
                    # A clean close completes once the closing end's last bytes are delivered.
                    self._close(error.ConnectionDone(), first=t)
                    return True
                if t in self._held and t not in self._gone:
                    # As with a socket, the closer is done once its bytes are in the
                    # kernel; the peer gets them, and the close, when they move.
                    self._gone.add(t)
                    t.protocol.connectionLost(Failure(error.ConnectionDone()))
                    moved = True
        return moved

    def _trace(self, tx: MemoryTransport, data: bytes) -> None:
        decoder = self._decoders.get(tx)
        if decoder is None:
            return
        try:
            frames = decoder.feed(data)
        except wire.ProtocolError:
            self._decoders[tx] = None  # not yotonnet bytes (a foreign protocol): stop tracing
            return
        name = self.client_name if tx is self.client_transport else self.server_name
        assert self.frames is not None
        self.frames.extend((name, frame) for frame in frames)

    def count(self, kind: int, sender: Any = None) -> int:
        """Frames of ``kind`` delivered so far (from ``sender`` only, if given); needs tracing."""
        if self.frames is None:
            raise RuntimeError("frame tracing is off; link with trace=True")
        name = None
        if sender is not None:
            tx = self._transport_of(sender)
            name = self.client_name if tx is self.client_transport else self.server_name
        return sum(
            1 for who, frame in self.frames if frame.kind == kind and (name is None or who == name)
        )

    def _close(self, reason: Exception, first: MemoryTransport) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = str(reason)
        self.mesh._forget(self)
        order = [first, self.server_transport if first is self.client_transport
                 else self.client_transport]
        for t in order:
            t.stream = []
            t.disconnecting = True
            t.disconnected = True
        for t in order:
            if t not in self._gone:
                self._gone.add(t)
                t.protocol.connectionLost(Failure(reason))


def _due(call: DelayedCall) -> float:
    # The time the call was set for: a reset() that pushes it later only adds a delay
    # (DelayedCall.delayed_time), which advance() applies when that time comes.
    return call.time


class SortedClock(MemoryReactorClock):
    """A fake clock for meshes of thousands of contexts: its pending calls stay in order as
    they are added, where Twisted's Clock sorts them all again for every call added (each
    context keeps a few timers, so a mesh of a thousand leaves spent most of its time
    sorting). A call whose time moves (``reset``, ``delay``) has them sorted again."""

    def __init__(self) -> None:
        super().__init__()
        self.unsorted = False

    def moved(self, call: DelayedCall) -> None:
        self.unsorted = True

    def in_order(self) -> list[DelayedCall]:
        calls = self.calls
        if self.unsorted:
            calls.sort(key=_due)
            self.unsorted = False
        return calls

    def cancelled(self, call: DelayedCall) -> None:
        """Take a cancelled call out: found by its time, not by a scan of every call."""
        calls = self.in_order()
        i = bisect.bisect_left(calls, call.time, key=_due)
        while calls[i] is not call:
            i += 1
        del calls[i]

    def callLater(  # noqa: N802 - Twisted's name
        self, delay: float, callable: Any, *args: object, **kw: object  # noqa: A002
    ) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self.cancelled,
                           self.moved, self.seconds)
        bisect.insort(self.in_order(), call, key=_due)
        return call

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        now = self.rightNow
        while True:
            calls = self.in_order()
            if not calls or calls[0].time > now:
                return
            call = calls.pop(0)
            if call.delayed_time:
                # Pushed later by reset(): back in line at its new time (as the reactor does).
                call.activate_delay()
                bisect.insort(calls, call, key=_due)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)


class MemoryMesh:
    """N contexts on one fake clock, linked in memory.

    ``MemoryMesh(n, seed=0, config=None, names=None, shuffle=False, trace=False)``
    creates ``n`` contexts named ``n0``, ``n1``... (or ``names``) with node ids
    drawn from ``random.Random(seed)``; ``config`` (a
    :class:`~yotonnet.mesh.context.ContextConfig`, copied for each context) sets
    their tunables. Index, iterate or unpack the mesh to get the contexts;
    ``mesh.random`` is the seeded generator, for tests that need more chance.
    """

    def __init__(
        self,
        n: int = 0,
        *,
        seed: int = 0,
        config: ContextConfig | None = None,
        names: Iterable[str] | None = None,
        shuffle: bool = False,
        trace: bool = False,
        max_rounds: int = 100_000,
    ) -> None:
        self.clock = SortedClock()
        self.random = random.Random(seed)
        self.config = config or ContextConfig()
        self.shuffle = shuffle
        self.trace = trace
        self.max_rounds = max_rounds
        self.contexts: list[Context] = []
        self.connections: list[MemoryConnection] = []
        #: names listened on through ``memory:NAME`` endpoints on this mesh's clock
        self.listeners: dict[str, MemoryPort] = {}
        self._dirty: dict[MemoryConnection, None] = {}
        self._used_ids: set[int] = set()
        _meshes[id(self.clock)] = self
        name_list = list(names) if names is not None else []
        for i in range(max(n, len(name_list))):
            self.add(name_list[i] if i < len(name_list) else None)

    # --- contexts

    def add(
        self,
        name: str | None = None,
        config: ContextConfig | None = None,
        security: Security | None = None,
    ) -> Context:
        """Create one more context on the mesh's clock and return it (``security``: its
        logins, rules and credentials, as for ``Context``)."""
        node_id = 0
        while not node_id or node_id in self._used_ids:
            node_id = self.random.getrandbits(64)
        self._used_ids.add(node_id)
        ctx = Context(
            name or f"n{len(self.contexts)}",
            self.clock,
            config=dataclasses.replace(config or self.config),
            node_id=node_id,
            security=security,
        )
        self.contexts.append(ctx)
        return ctx

    def __len__(self) -> int:
        return len(self.contexts)

    def __iter__(self) -> Iterator[Context]:
        return iter(self.contexts)

    def __getitem__(self, key: int | str) -> Context:
        return self._context(key)

    def _context(self, key: Context | int | str) -> Context:
        if isinstance(key, Context):
            return key
        if isinstance(key, int):
            return self.contexts[key]
        for ctx in self.contexts:
            if ctx.name == key:
                return ctx
        raise KeyError(f"no context named {key!r} in this mesh")

    # --- links

    def link(
        self,
        a: Context | int | str,
        b: Context | int | str,
        *,
        settle: bool = True,
        trace: bool | None = None,
        cost: int = 1,
    ) -> MemoryConnection:
        """Join ``a`` (dialling) to ``b`` (accepting) with a fresh link.

        With ``settle`` (the default) the handshake and the routing exchange
        that follows it are done when this returns. ``cost`` is the dialling
        end's routing cost of the link (as ``Context.connect(..., cost=)``).
        """
        a, b = self._context(a), self._context(b)
        client = LinkFactory(
            a, outgoing=True, endpoint_text=f"memory:{b.name}", cost=cost
        ).buildProtocol(MemoryAddress(f"memory:{b.name}"))
        server = LinkFactory(b, outgoing=False, endpoint_text="memory").buildProtocol(
            MemoryAddress(f"memory:{a.name}")
        )
        if client is None or server is None:
            raise RuntimeError(f"{a.name} or {b.name} refuses new links (closed?)")
        return self._join(client, a.name, server, b.name, a, b, trace, settle)

    def attach(
        self,
        ctx: Context | int | str,
        protocol: IProtocol,
        *,
        outgoing: bool = False,
        name: str = "foreign",
        settle: bool = True,
        trace: bool | None = None,
    ) -> MemoryConnection:
        """Join ``ctx`` to any protocol (a scripted or misbehaving peer).

        The context's link is incoming unless ``outgoing``; the protocol's
        ``transport.write`` reaches the link.
        """
        ctx = self._context(ctx)
        link = LinkFactory(ctx, outgoing=outgoing, endpoint_text=f"memory:{name}").buildProtocol(
            MemoryAddress(f"memory:{name}")
        )
        if link is None:
            raise RuntimeError(f"{ctx.name} refuses new links (closed?)")
        if outgoing:
            return self._join(link, ctx.name, protocol, name, ctx, None, trace, settle)
        return self._join(protocol, name, link, ctx.name, None, ctx, trace, settle)

    def _join(
        self,
        client: IProtocol,
        client_name: str,
        server: IProtocol,
        server_name: str,
        client_ctx: Context | None,
        server_ctx: Context | None,
        trace: bool | None,
        settle: bool,
    ) -> MemoryConnection:
        conn = MemoryConnection(
            self, client, client_name, server, server_name, client_ctx, server_ctx,
            trace=self.trace if trace is None else trace,
        )
        if isinstance(client, Link) and client.handshake_done is not None:
            # The mesh dials, so it takes the dialler's part: it consumes the outcome.
            client.handshake_done.addErrback(conn._handshake_failed)
        self._open(conn)
        if settle:
            self.settle()
        return conn

    def _open(self, conn: MemoryConnection) -> None:
        self.connections.append(conn)
        conn.server.makeConnection(conn.server_transport)
        conn.client.makeConnection(conn.client_transport)
        conn._note_links()

    def connection(self, a: Context | int | str, b: Context | int | str) -> MemoryConnection:
        """The newest open connection between ``a`` and ``b`` (either direction)."""
        a, b = self._context(a), self._context(b)
        for conn in reversed(self.connections):
            if {id(conn.client_context), id(conn.server_context)} == {id(a), id(b)}:
                return conn
        raise KeyError(f"{a.name} and {b.name} are not linked")

    def cut(self, a: Context | int | str, b: Context | int | str) -> MemoryConnection:
        """Drop the link between ``a`` and ``b``: both ends get ``connectionLost`` now."""
        conn = self.connection(a, b)
        conn.cut()
        return conn

    def isolate(self, ctx: Context | int | str) -> list[MemoryConnection]:
        """Cut every link of ``ctx``."""
        ctx = self._context(ctx)
        cut = [c for c in self.connections if ctx in (c.client_context, c.server_context)]
        for conn in cut:
            conn.cut()
        return cut

    def link_chain(self, contexts: Iterable[Context] | None = None) -> list[MemoryConnection]:
        """Link the contexts (default: all) in a line, each to the next."""
        ctxs = list(self.contexts if contexts is None else contexts)
        conns = [self.link(x, y, settle=False) for x, y in zip(ctxs, ctxs[1:])]
        self.settle()
        return conns

    def link_random(self, extra: int = 0) -> list[MemoryConnection]:
        """Link all contexts into a random connected graph drawn from the seed.

        A random spanning tree, plus ``extra`` further links between unlinked
        pairs (cycles, so that routing has choices).
        """
        ctxs = list(self.contexts)
        order = ctxs[:]
        self.random.shuffle(order)
        pairs: list[tuple[Context, Context]] = []
        for i in range(1, len(order)):
            pairs.append((order[self.random.randrange(i)], order[i]))
        linked = {frozenset((id(x), id(y))) for x, y in pairs}
        for c in self.connections:
            linked.add(frozenset((id(c.client_context), id(c.server_context))))
        possible = len(ctxs) * (len(ctxs) - 1) // 2
        while extra > 0 and len(linked) < possible:
            x, y = self.random.sample(ctxs, 2)
            key = frozenset((id(x), id(y)))
            if key not in linked:
                linked.add(key)
                pairs.append((x, y))
                extra -= 1
        conns = [self.link(x, y, settle=False) for x, y in pairs]
        self.settle()
        return conns

    def _forget(self, conn: MemoryConnection) -> None:
        self._dirty.pop(conn, None)
        if conn in self.connections:
            self.connections.remove(conn)

    # --- moving bytes and time

    def pump(self) -> bool:
        """Run zero-delay calls, then move every connection's pending bytes once."""
        self.clock.advance(0)
        if not self._dirty:
            return False
        batch = list(self._dirty)
        self._dirty.clear()
        if self.shuffle:
            self.random.shuffle(batch)
        moved = False
        for conn in batch:
            if conn.pump():
                moved = True
        return moved

    def settle(self) -> int:
        """Pump until no byte moves; return the number of rounds it took."""
        rounds = 0
        while self._dirty or self._due_now():
            self.pump()
            rounds += 1
            if rounds > self.max_rounds:
                raise RuntimeError(
                    f"mesh did not settle in {self.max_rounds} rounds; are frames looping?"
                )
        return rounds

    flush = settle  # iosim's name for the same thing

    def _due_now(self) -> bool:
        calls = self.clock.in_order()  # the earliest first: one look, not a scan
        return bool(calls) and calls[0].time <= self.clock.seconds()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, stopping at every timer on the way.

        Settles before and after each timer, so every heartbeat, timeout and
        looping call fires as often as it would in real time.
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        clock = self.clock
        end = clock.seconds() + seconds
        self.settle()
        while True:
            due = [c.getTime() for c in clock.getDelayedCalls()]
            nxt = min(due) if due else None
            if nxt is None or nxt > end:
                break
            self._move_to(nxt)
            self.settle()
        self._move_to(end)
        self.settle()

    def _move_to(self, when: float) -> None:
        clock = self.clock
        now = clock.seconds()
        if when > now:
            clock.advance(when - now)
        else:
            clock.advance(0)  # a call due now (callLater(0)): run it
        if clock.seconds() < when:
            # Float rounding left us a hair short of a timer: land on it exactly.
            clock.rightNow = when
            clock.advance(0)

    def run_until(
        self, condition: Callable[[], bool], timeout: float = 60.0, step: float = 0.1
    ) -> bool:
        """Advance in ``step`` seconds until ``condition()`` holds (True) or ``timeout`` passes."""
        end = self.clock.seconds() + timeout
        self.settle()
        while not condition():
            if self.clock.seconds() >= end:
                return False
            self.advance(min(step, end - self.clock.seconds()))
        return True

    # --- the end

    def close(self) -> None:
        """Close every context and deliver the goodbyes; safe to call twice."""
        results = [ctx.close() for ctx in self.contexts]
        self.settle()
        for conn in list(self.connections):
            conn.cut("mesh closed")
        for d in results:
            d.addErrback(lambda _f: None)  # close() never fails in memory; don't log it


# --- memory: endpoints

#: id(clock) -> the mesh that owns that clock; weak, so a finished mesh is forgotten
_meshes: weakref.WeakValueDictionary[int, MemoryMesh] = weakref.WeakValueDictionary()


def mesh_of(reactor: Any) -> MemoryMesh:
    """The :class:`MemoryMesh` whose clock ``reactor`` is: the network of its ``memory:`` names.

    Raises ValueError for any other reactor: only a mesh moves in-memory bytes.
    """
    mesh = _meshes.get(id(reactor))
    if mesh is None or mesh.clock is not reactor:
        raise ValueError(
            "memory: endpoints work only on a MemoryMesh's clock (give the context "
            f"mesh.clock as its reactor, or create it with mesh.add()); not on {reactor!r}"
        )
    return mesh


def _endpoint_name(args: tuple[Any, ...], options: dict[str, Any]) -> str:
    if len(args) != 1 or not args[0]:
        raise ValueError("a memory endpoint is memory:NAME, one non-empty name")
    if options:
        raise ValueError(f"memory:NAME takes no options, not {', '.join(sorted(options))}")
    return str(args[0])


def memory_server_endpoint(reactor: Any, *args: Any, **options: Any) -> MemoryServerEndpoint:
    """What ``serverFromString(reactor, "memory:NAME")`` returns (the plugin calls this)."""
    return MemoryServerEndpoint(mesh_of(reactor), _endpoint_name(args, options))


def memory_client_endpoint(reactor: Any, *args: Any, **options: Any) -> MemoryClientEndpoint:
    """What ``clientFromString(reactor, "memory:NAME")`` returns (the plugin calls this)."""
    return MemoryClientEndpoint(mesh_of(reactor), _endpoint_name(args, options))


def _context_of(protocol: Any) -> Context | None:
    # A Link's context; ClientService's proxy forwards attribute reads to its link.
    ctx = getattr(protocol, "context", None)
    return ctx if isinstance(ctx, Context) else None


@implementer(IListeningPort)
class MemoryPort:
    """A name listened on in a mesh's memory network, as a TCP port is on an address.

    Stopping it frees the name; connections already made stay up, as over TCP.
    """

    def __init__(self, mesh: MemoryMesh, name: str, factory: IProtocolFactory) -> None:
        self.mesh = mesh
        self.name = name
        self.factory = factory
        self.listening = False

    def __repr__(self) -> str:
        return f"<MemoryPort memory:{self.name} {'open' if self.listening else 'closed'}>"

    def startListening(self) -> None:
        if self.listening:
            return
        if self.name in self.mesh.listeners:
            raise error.CannotListenError(
                "memory", self.name, "another listener has this name on this mesh"
            )
        self.mesh.listeners[self.name] = self
        self.listening = True
        self.factory.doStart()

    def stopListening(self) -> None:
        if not self.listening:
            return
        self.listening = False
        del self.mesh.listeners[self.name]
        self.factory.doStop()

    def getHost(self) -> MemoryAddress:
        return MemoryAddress(f"memory:{self.name}")


@implementer(IStreamServerEndpoint)
class MemoryServerEndpoint:
    """Listens on ``memory:NAME`` in ``mesh``'s memory network."""

    def __init__(self, mesh: MemoryMesh, name: str) -> None:
        self.mesh = mesh
        self.name = name

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[MemoryPort]:
        port = MemoryPort(self.mesh, self.name, protocolFactory)
        try:
            port.startListening()
        except error.CannotListenError:
            return defer.fail()
        return defer.succeed(port)


class _HangUp(Protocol):
    """Accepts for a listener whose factory built no protocol, and closes at once (TCP's way)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryClientEndpoint:
    """Dials ``memory:NAME`` in ``mesh``'s memory network.

    As over TCP, the outcome comes later (on the mesh's next pump): the
    connection, or ConnectionRefusedError when nobody listens on NAME.
    """

    def __init__(self, mesh: MemoryMesh, name: str) -> None:
        self.mesh = mesh
        self.name = name

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        pending: list[Any] = []

        def cancel(_d: defer.Deferred[IProtocol]) -> None:
            if pending and pending[0].active():
                pending[0].cancel()  # Deferred.cancel then fails it with CancelledError

        d: defer.Deferred[IProtocol] = defer.Deferred(cancel)

        def arrive() -> None:
            try:
                d.callback(self._arrive(protocolFactory))
            except Exception:  # noqa: BLE001 - the dialler gets every failure
                d.errback()

        pending.append(self.mesh.clock.callLater(0, arrive))
        return d

    def _arrive(self, factory: IProtocolFactory) -> IProtocol:
        mesh = self.mesh
        port = mesh.listeners.get(self.name)
        if port is None:
            raise error.ConnectionRefusedError(string=f"nobody listens on memory:{self.name}")
        client = factory.buildProtocol(MemoryAddress(f"memory:{self.name}"))
        if client is None:
            raise error.ConnectError(
                string=f"the factory dialling memory:{self.name} built no protocol"
            )
        client_ctx = _context_of(client)
        client_name = client_ctx.name if client_ctx is not None else "client"
        server = port.factory.buildProtocol(MemoryAddress(f"memory:{client_name}"))
        if server is None:
            server = _HangUp()
        conn = MemoryConnection(
            mesh, client, client_name, server, self.name, client_ctx, _context_of(server),
            trace=mesh.trace,
        )
        mesh._open(conn)
        return client


# --- one test case class for mesh tests


class MeshTestCase(SynchronousTestCase):
    """A trial test case whose meshes are closed when the test ends.

    :meth:`make_mesh` takes :class:`MemoryMesh`'s arguments; a subclass sets
    ``mesh_config`` to give its meshes a :class:`ContextConfig` by default.
    Being trial's, it runs under trial and under pytest alike.
    """

    #: the config of the meshes :meth:`make_mesh` builds, unless it is given one
    mesh_config: ContextConfig | None = None

    def make_mesh(self, n: int = 0, **kwargs: Any) -> MemoryMesh:
        """A :class:`MemoryMesh` of ``n`` contexts, closed after the test."""
        if self.mesh_config is not None:
            kwargs.setdefault("config", self.mesh_config)
        mesh = MemoryMesh(n, **kwargs)
        self.addCleanup(mesh.close)
        return mesh

    def assert_increasing(self, values: list[int], what: str) -> None:
        """No duplicate and no reordering: each value strictly above the one before
        (sequence numbers a subscriber saw, say); ``what`` names them in the failure."""
        for x, y in itertools.pairwise(values):
            self.assertLess(x, y, f"{what}: {y} after {x} in {values}")
