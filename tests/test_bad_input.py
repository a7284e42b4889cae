"""Ring 3: hostile and confused peers on real loopback TCP.

A listening context carries a live pub/sub stream and a req/rep service for a
*good* peer while raw TCP clients (plain Twisted protocols writing bytes)
attack it: garbage, oversized frames before and after the handshake, a wrong
protocol version, silence and half preambles, malformed CONTROL frames,
unknown frame kinds and a second HELLO. Each attacker must get a readable
ERROR frame naming the problem (or a handshake timeout) and be disconnected,
while the good link stays up and its numbered stream arrives complete and in
order. The dialling side is covered too: ``connect()`` to a server that
answers garbage, a foreign protocol version or an ERROR fails with a
``HandshakeError`` and stops dialling; malformed endpoint strings give a
``ValueError`` naming the endpoint.

The last class feeds a ``Link`` by hand (StringTransport, Clock) to pin down
how frames that arrive in the same read as the HELLO are size-checked.
"""

from __future__ import annotations

import random
import struct

import rawwire
from automat import NoTransition
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet.core import wire
from yotonnet.core.messages import encode_object
from yotonnet.core.routing import Interest, NodeState
from yotonnet.core.wire import HEADER, HEADER_TAIL, FrameDecoder, FrameKind
from yotonnet.mesh.link import CLOSED, UP, HandshakeError, Link

#: the listener's negotiated frame limit, deliberately below the 64 KiB handshake limit
MAX_FRAME = 16 * 1024
HANDSHAKE_TIMEOUT = 1.0  # long enough for a raw peer on a loaded machine (0.3 s failed once in CI)
#: messages of the good stream published before, during and after each attack
BATCH = 25


def hello_bytes(node_id: int | None = None, max_frame: int = wire.DEFAULT_MAX_FRAME) -> bytes:
    """A well-formed preamble + HELLO, as a raw client would send it."""
    node_id = node_id or random.getrandbits(63) + 1
    return wire.encode_preamble() + wire.encode_hello(
        wire.Hello(node_id, "raw-attacker", (), max_frame, 1.0, {"nonce": "00" * 16})
    )


def header_only(length: int, kind: int = FrameKind.DATA) -> bytes:
    """A frame header announcing ``length`` bytes after its length field, with no body."""
    return HEADER.pack(length, kind, 8, 0, 0, 0, 0, 0, 0)


def decode_stream(data: bytes) -> list[wire.Frame]:
    """Decode what a yotonnet node wrote to us: preamble, then frames."""
    return FrameDecoder(max_frame=wire.DEFAULT_MAX_FRAME, expect_preamble=True).feed(bytes(data))


class RawPeer(Protocol):
    """A raw TCP peer: records every byte, lets a test wait for a frame kind or the close."""

    def __init__(self, greeting: bytes = b"", hang_up: bool = False,
                 dialler: rawwire.Dialler | None = None) -> None:
        #: answers the authentication exchange (proving the local secret) when given
        self.dialler = dialler
        self.greeting = dialler.greeting() if dialler is not None else greeting
        self.hang_up = hang_up
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.closed = False
        self._kind_waiters: list[tuple[int, defer.Deferred[wire.Frame]]] = []

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)
        if self.hang_up:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.dialler is not None and self.dialler.state == "handshaking":
            answer = self.dialler.feed(data)
            if answer:
                self.transport.write(answer)
        self._check_waiters()

    def connectionLost(self, reason: object = None) -> None:
        self.closed = True
        waiters, self._kind_waiters = self._kind_waiters, []
        for _kind, d in waiters:
            d.errback(AssertionError(f"connection closed; got {self.frames()!r}"))
        self.lost.callback(None)

    def frames(self) -> list[wire.Frame]:
        return decode_stream(self.received)

    def errors(self) -> list[str]:
        return [f.payload.decode("utf-8") for f in self.frames() if f.kind == FrameKind.ERROR]

    def wait_for_kind(self, kind: int) -> defer.Deferred[wire.Frame]:
        """Fire with the first frame of ``kind`` the node sends us."""
        d: defer.Deferred[wire.Frame] = defer.Deferred()
        self._kind_waiters.append((kind, d))
        self._check_waiters()
        return d

    def _check_waiters(self) -> None:
        if not self._kind_waiters:
            return
        kinds = {}
        for frame in self.frames():
            kinds.setdefault(frame.kind, frame)
        ready = [(kinds[k], d) for k, d in self._kind_waiters if k in kinds]
        # Settle the list before firing: a callback may resume a test that waits again.
        self._kind_waiters = [(k, d) for k, d in self._kind_waiters if k not in kinds]
        for frame, d in ready:
            d.callback(frame)

    def send(self, data: bytes) -> None:
        self.transport.write(data)


class RawServerFactory(Factory):
    """A raw TCP server that greets every connection with canned bytes (or hangs up)."""

    def __init__(self, greeting: bytes, hang_up: bool = False) -> None:
        self.greeting = greeting
        self.hang_up = hang_up
        self.peers: list[RawPeer] = []
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def buildProtocol(self, addr: object) -> RawPeer:
        peer = RawPeer(self.greeting, hang_up=self.hang_up)
        self.peers.append(peer)
        ready = [d for n, d in self._waiters if len(self.peers) >= n]
        self._waiters = [(n, d) for n, d in self._waiters if len(self.peers) < n]
        for d in ready:
            d.callback(None)
        return peer

    def wait_for_connections(self, count: int) -> defer.Deferred[None]:
        if len(self.peers) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, d))
        return d


class LogCapture:
    """Collects formatted yotonnet log lines for the duration of a test."""

    def __init__(self, test: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if str(event.get("log_namespace", "")).startswith("yotonnet"):
            fmt = event.get("log_format") or ""
            try:
                self.lines.append(fmt.format(**event))
            except Exception:  # noqa: BLE001 - a log line we cannot format is just skipped
                self.lines.append(fmt)


class UnderAttack(TestCase):
    """A listener with a good peer streaming to it, attacked by raw TCP clients."""

    timeout = 20

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.logs = LogCapture(self)
        self.server = y.Context(
            "server",
            config=y.ContextConfig(max_frame=MAX_FRAME, handshake_timeout=HANDSHAKE_TIMEOUT),
        )
        self.good = y.Context("good")
        self.events: list[y.LinkEvent] = []
        self._closed_waiters: list[tuple[int, defer.Deferred[None]]] = []
        self.server.watch_links(self._on_server_event)
        self.good_events: list[y.LinkEvent] = []
        self.good.watch_links(self.good_events.append)
        self.addCleanup(self._tear_down)

        self.port = await self.server.listen("tcp:0:interface=127.0.0.1")
        self.port_number = self.port.getHost().port

        self.got: list[str] = []
        self.sub = y.SubChannel(self.server, "stream")
        self.sub.subscribe(self.got.append)
        rep = y.RepChannel(self.server, "svc")
        rep.register("echo", lambda x: x)

        self.good_link = await self.good.connect(f"tcp:127.0.0.1:{self.port_number}")
        self.pub = y.PubChannel(self.good, "stream")
        self.req = y.ReqChannel(self.good, "svc", timeout=10)
        await self.pub.wait_for_subscribers()
        await self.good.wait_for_interest(self.req.channel_id, "rep")
        self.server_good_link = self.server.links[self.good.node_id]
        self.sent: list[str] = []
        self.raw_peers: list[RawPeer] = []
        self.calls: list[defer.Deferred] = []

    async def _tear_down(self) -> None:
        for call in self.calls:
            call.addErrback(lambda _: None)  # left pending only when the test already failed
        for peer in self.raw_peers:
            if not peer.closed:
                peer.transport.loseConnection()
            await peer.lost
        # Wait until the server has seen every attacker's connection close (dirty reactor).
        await self.server_closed(len(self.raw_peers))
        server_link_gone = self._wait_closed(self.server_good_link)
        await self.good.close()
        await server_link_gone
        await self.server.close()

    # --- helpers

    def _on_server_event(self, event: y.LinkEvent) -> None:
        self.events.append(event)
        self._check_closed_waiters()

    def _attacker_closes(self) -> list[y.LinkEvent]:
        return [
            e for e in self.events if e.status == CLOSED and e.link is not self.server_good_link
        ]

    def _check_closed_waiters(self) -> None:
        n = len(self._attacker_closes())
        still = []
        for count, d in self._closed_waiters:
            if n >= count:
                d.callback(None)
            else:
                still.append((count, d))
        self._closed_waiters = still

    def server_closed(self, count: int) -> defer.Deferred[None]:
        """Fire once the server has reported ``count`` attacker links closed."""
        d: defer.Deferred[None] = defer.Deferred()
        self._closed_waiters.append((count, d))
        self._check_closed_waiters()
        return d

    def _wait_closed(self, link: Link) -> defer.Deferred[None]:
        if link.status == CLOSED:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()

        def watch(event: y.LinkEvent) -> None:
            if event.link is link and event.status == CLOSED and not d.called:
                d.callback(None)

        self.server.watch_links(watch)
        return d

    async def raw_connect(self, dialler: rawwire.Dialler | None = None) -> RawPeer:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
        peer = await connectProtocol(endpoint, RawPeer(dialler=dialler))
        self.raw_peers.append(peer)
        return peer

    async def raw_handshake(self) -> RawPeer:
        """A raw client that completes a valid handshake (the server's link is up)."""
        peer = await self.raw_connect(rawwire.Dialler(random.getrandbits(63) + 1, "raw-attacker"))
        # The server's welcome: its link is up on its side once it has sent it.
        await peer.wait_for_kind(FrameKind.CONTROL)
        return peer

    def flush_unhandled_handshake_errors(self) -> list:
        # Known core bug (see test_failed_incoming_handshake_leaves_no_unhandled_error):
        # an incoming link errbacks its handshake_done Deferred that nobody listens to,
        # so "Unhandled error in Deferred" is logged. Flushed here so the other
        # assertions of each attack still run; the dedicated test keeps the bug red.
        return self.flushLoggedErrors(HandshakeError)

    def publish(self) -> None:
        """Publish the next BATCH numbered messages of the good stream."""
        for _ in range(BATCH):
            msg = f"m{len(self.sent)}"
            self.sent.append(msg)
            self.pub.send(msg)

    async def refused(self, peer: RawPeer, flush: bool = True) -> str:
        """Wait for the node to drop ``peer``; return the one ERROR text it was sent."""
        await peer.lost
        await self.server_closed(len(self.raw_peers))
        if flush:
            self.flush_unhandled_handshake_errors()
        frames = peer.frames()
        self.assertEqual(frames[0].kind, FrameKind.HELLO, "the node greets with its HELLO")
        texts = peer.errors()
        self.assertEqual(len(texts), 1, f"expected one ERROR frame, got {frames!r}")
        self.assertEqual(frames[-1].kind, FrameKind.ERROR, "the ERROR is the last frame")
        return texts[0]

    async def attack(self, run) -> str:
        """Publish before/during/after ``run(during)`` and return the attacker's ERROR text.

        ``run`` is an async function doing the attack; it calls ``during()`` once
        its hostile bytes are written, so good traffic is in flight meanwhile.
        """
        self.publish()
        calls = self.calls

        def during() -> None:
            self.publish()
            calls.append(self.req.call("echo", "during"))

        text = await run(during)
        self.assertEqual(len(calls), 1, "the attack must call during()")
        self.publish()
        self.assertEqual(await calls[0], "during")
        await self.assert_good_traffic_intact()
        return text

    async def assert_good_traffic_intact(self) -> None:
        # The reply travels behind every DATA frame on the same link, so once it is
        # back the server has processed all of the stream sent before the call.
        self.assertEqual(await self.req.call("echo", len(self.sent)), len(self.sent))
        self.assertEqual(self.got, self.sent)
        self.assertEqual(self.sub.discarded, 0)
        self.assertEqual(self.sub.errors, [])
        self.assertEqual(len(self.sent), 3 * BATCH)
        # Same link objects as before the attack, still up: no drop, no reconnect.
        self.assertIs(self.server.links[self.good.node_id], self.server_good_link)
        self.assertIs(self.good.links[self.server.node_id], self.good_link)
        self.assertEqual(self.server_good_link.status, UP)
        self.assertEqual(self.good_link.status, UP)
        self.assertEqual([e.status for e in self.good_events], [UP])
        good_events = [e.status for e in self.events if e.link is self.server_good_link]
        self.assertEqual(good_events, [UP])
        self.assertEqual(self.good.dialers[0].info()["attempts"], 0)

    # --- 1. garbage

    def test_http_request_is_told_it_is_not_a_yotonnet_node(self):
        async def run(during):
            peer = await self.raw_connect()
            peer.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("not a yotonnet node", text)
            self.assertIn("GET / HT", text)
            self.assertTrue(any("not a yotonnet node" in line for line in self.logs.lines))

        return defer.ensureDeferred(go())

    def test_short_garbage_is_refused_before_a_full_preamble(self):
        # Fewer than 12 bytes: the wrong magic is reported at once, not after a timeout.
        async def run(during):
            peer = await self.raw_connect()
            peer.send(b"hi\n")
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("not a yotonnet node", text)
            self.assertNotIn("handshake not finished", text)

        return defer.ensureDeferred(go())

    # --- 2. oversized frames

    def test_oversized_frame_after_handshake_names_size_and_limit(self):
        size = MAX_FRAME + 100

        async def run(during):
            peer = await self.raw_handshake()
            # Only the header: the node must refuse on the announced length alone.
            peer.send(header_only(size - 4))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn(f"{size} bytes", text)
            self.assertIn(f"maximum frame size of {MAX_FRAME} bytes", text)

        return defer.ensureDeferred(go())

    def test_oversized_length_field_alone_is_refused(self):
        # Four bytes announcing a 4 GiB frame: no need to wait for the rest of the header.
        async def run(during):
            peer = await self.raw_handshake()
            peer.send(struct.pack("<I", 2**32 - 1))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn(f"{2**32 - 1 + 4} bytes", text)
            self.assertIn(str(MAX_FRAME), text)

        return defer.ensureDeferred(go())

    def test_oversized_frame_before_hello_hits_the_handshake_limit(self):
        size = 100 * 1024

        async def run(during):
            peer = await self.raw_connect()
            peer.send(wire.encode_preamble() + header_only(size - 4))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn(f"{size} bytes", text)
            self.assertIn(f"maximum frame size of {wire.HANDSHAKE_MAX_FRAME} bytes", text)

        return defer.ensureDeferred(go())

    def test_oversized_hello_is_refused(self):
        # A HELLO frame itself past the 64 KiB handshake limit.
        async def run(during):
            peer = await self.raw_connect()
            payload = b'{"pad": "' + b"x" * (wire.HANDSHAKE_MAX_FRAME) + b'"}'
            peer.send(wire.encode_preamble() + wire.encode_frame(FrameKind.HELLO, payload))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn(f"maximum frame size of {wire.HANDSHAKE_MAX_FRAME} bytes", text)

        return defer.ensureDeferred(go())

    # --- 3. protocol version

    def test_unknown_protocol_version_names_both_versions(self):
        async def run(during):
            peer = await self.raw_connect()
            peer.send(
                wire.encode_preamble(version=7)
                + wire.encode_hello(wire.Hello(12345, "future", (), MAX_FRAME, 1.0, {}))
            )
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("version 7", text)
            self.assertIn(f"version {wire.PROTOCOL_VERSION}", text)

        return defer.ensureDeferred(go())

    # --- 4. silence

    async def _silent(self, data: bytes) -> None:
        async def run(during):
            peer = await self.raw_connect()
            if data:
                peer.send(data)
            during()
            return await self.refused(peer)

        text = await self.attack(run)
        self.assertIn(f"handshake not finished within {HANDSHAKE_TIMEOUT:g} s", text)
        (event,) = self._attacker_closes()
        self.assertEqual(event.status, CLOSED)
        self.assertEqual(event.peer_id, 0)
        self.assertIn("handshake not finished", event.reason)
        self.assertEqual(event.link.status, CLOSED)

    def test_silent_client_is_dropped_after_handshake_timeout(self):
        return defer.ensureDeferred(self._silent(b""))

    def test_half_preamble_is_dropped_after_handshake_timeout(self):
        return defer.ensureDeferred(self._silent(wire.MAGIC[:5]))

    def test_preamble_without_hello_is_dropped_after_handshake_timeout(self):
        return defer.ensureDeferred(self._silent(wire.encode_preamble()))

    # --- 5. bad frames on an established link

    async def _after_handshake(self, bad: bytes) -> str:
        async def run(during):
            peer = await self.raw_handshake()
            peer.send(bad)
            during()
            return await self.refused(peer)

        text = await self.attack(run)
        statuses = [e.status for e in self.events if e.link is not self.server_good_link]
        self.assertEqual(statuses, [UP, CLOSED])
        self.assertTrue(any(text in line for line in self.logs.lines), self.logs.lines)
        return text

    def test_control_frame_with_undecodable_payload(self):
        async def go():
            text = await self._after_handshake(
                wire.encode_frame(FrameKind.CONTROL, b"\xfe\xff not an object")
            )
            self.assertIn("malformed control message", text)

        return defer.ensureDeferred(go())

    def test_control_frame_that_is_not_a_list(self):
        async def go():
            text = await self._after_handshake(
                wire.encode_frame(FrameKind.CONTROL, encode_object(42))
            )
            self.assertIn("malformed control message", text)

        return defer.ensureDeferred(go())

    def test_control_frame_with_malformed_node_record(self):
        async def go():
            bad = encode_object(["node", [1, "x", 1, [[1, 2, 3]], []]])
            text = await self._after_handshake(wire.encode_frame(FrameKind.CONTROL, bad))
            self.assertIn("malformed node state record", text)

        return defer.ensureDeferred(go())

    def test_unknown_frame_kind(self):
        async def go():
            text = await self._after_handshake(header_only(HEADER_TAIL, kind=200))
            self.assertIn("unknown frame kind 200", text)

        return defer.ensureDeferred(go())

    def test_second_hello(self):
        async def go():
            again = wire.encode_hello(wire.Hello(777, "again", (), MAX_FRAME, 1.0, {}))
            text = await self._after_handshake(again)
            self.assertIn("second HELLO", text)

        return defer.ensureDeferred(go())

    def test_frame_with_extension_longer_than_frame(self):
        async def go():
            bad = HEADER.pack(HEADER_TAIL + 4, FrameKind.DATA, 8, 100, 0, 0, 0, 0, 0) + b"abcd"
            text = await self._after_handshake(bad)
            self.assertIn("extension is longer than the frame", text)

        return defer.ensureDeferred(go())

    # --- handshake identity abuse

    def test_hello_claiming_the_good_peers_node_id_is_refused(self):
        async def run(during):
            peer = await self.raw_connect()
            peer.send(hello_bytes(node_id=self.good.node_id))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("already linked", text)

        return defer.ensureDeferred(go())

    def test_hello_claiming_the_listeners_own_node_id_is_refused(self):
        async def run(during):
            peer = await self.raw_connect()
            peer.send(hello_bytes(node_id=self.server.node_id))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("connected to itself", text)

        return defer.ensureDeferred(go())

    def test_hello_that_is_not_json(self):
        async def run(during):
            peer = await self.raw_connect()
            peer.send(wire.encode_preamble() + wire.encode_frame(FrameKind.HELLO, b"{nope"))
            during()
            return await self.refused(peer)

        async def go():
            text = await self.attack(run)
            self.assertIn("HELLO payload is not JSON", text)

        return defer.ensureDeferred(go())

    def test_several_attackers_at_once(self):
        # One of each kind, all connected together; the good stream still flows.
        async def run(during):
            peers = [await self.raw_connect() for _ in range(3)]
            peers[0].send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 32)  # TLS
            peers[1].send(wire.encode_preamble(version=0))
            silent = peers[2]
            during()
            texts = []
            for peer in peers:
                await peer.lost
            await self.server_closed(3)
            self.flush_unhandled_handshake_errors()
            for peer in peers:
                (text,) = peer.errors()
                texts.append(text)
            self.assertIn("handshake not finished", texts[2])
            self.assertTrue(silent.closed)
            return "\n".join(texts)

        async def go():
            text = await self.attack(run)
            self.assertIn("not a yotonnet node", text)
            self.assertIn("version 0", text)

        return defer.ensureDeferred(go())

    # --- node records that decode but are out of the protocol's range

    async def _poisoned_record(self, bad_id: int) -> str:
        # Both ends hold a state value, so a reachable foreign state holder makes each
        # of them address a STATE frame to it (the path that packs the node id).
        server_state = y.StateChannel(self.server, "cfg")
        server_state.send({"v": 1})
        y.StateChannel(self.good, "cfg")

        async def run(during):
            raw_id = 987654321
            peer = await self.raw_connect(rawwire.Dialler(raw_id, "raw"))
            await peer.wait_for_kind(FrameKind.CONTROL)
            holder = Interest("state", "OBJECT", 1)
            records = [
                NodeState(raw_id, "raw", 50, {self.server.node_id: 1, bad_id: 1}, {}),
                NodeState(bad_id, "phantom", 50, {raw_id: 1}, {server_state.channel_id: holder}),
            ]
            peer.send(
                b"".join(
                    wire.encode_frame(FrameKind.CONTROL, encode_object(["node", r.to_wire()]))
                    for r in records
                )
                # A PING behind the records: a PONG back means they were accepted.
                + wire.encode_frame(FrameKind.PING, seq=1)
            )
            during()
            try:
                await peer.wait_for_kind(FrameKind.PONG)
            except AssertionError:
                pass  # closed before answering: refused (or crashed, checked below)
            else:
                self.fail(f"node record with node id {bad_id} was accepted")
            return await self.refused(peer)

        text = await self.attack(run)
        self.assertIn("node id", text)
        self.assertNotIn(bad_id, self.server.routing.nodes)
        self.assertNotIn(bad_id, self.good.routing.nodes)
        return text

    def test_node_record_with_node_id_beyond_u64_is_refused(self):
        # Today this id reaches HEADER.pack as a STATE frame's dest: struct.error escapes
        # dataReceived on the listener AND, after flooding, on the good peer, whose link
        # drops (and the record is re-sent on every reconnect).
        return defer.ensureDeferred(self._poisoned_record(2**64))

    def test_node_record_with_node_id_zero_is_refused(self):
        # Node id 0 means "routed by interest" in a frame's dest field; HELLO refuses it,
        # node records must too.
        return defer.ensureDeferred(self._poisoned_record(0))

    def test_failed_incoming_handshake_leaves_no_unhandled_error(self):
        # A port scanner must not make the listener log "Unhandled error in Deferred".
        async def go():
            peer = await self.raw_connect()
            peer.send(b"GET / HTTP/1.1\r\n\r\n")
            text = await self.refused(peer, flush=False)
            self.assertIn("not a yotonnet node", text)
            logged = self.flush_unhandled_handshake_errors()
            self.assertEqual(
                [f.getErrorMessage() for f in logged],
                [],
                "incoming Link errbacks handshake_done though nobody waits on it",
            )

        return defer.ensureDeferred(go())


class DialingABadServer(TestCase):
    """``connect()`` to something that is not a compatible yotonnet node fails clearly."""

    timeout = 20

    def setUp(self) -> None:
        self.ctx = y.Context("dialer", config=y.ContextConfig(reconnect_initial=0.05))
        self.addCleanup(self.ctx.close)

    async def raw_server(
        self, greeting: bytes, hang_up: bool = False
    ) -> tuple[RawServerFactory, int]:
        factory = RawServerFactory(greeting, hang_up)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

        async def stop() -> None:
            for peer in factory.peers:
                if not peer.closed:
                    peer.transport.loseConnection()
                await peer.lost
            await port.stopListening()

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return factory, port.getHost().port

    def flush_client_service_noise(self) -> list:
        # Known core bug (see test_refused_dial_leaves_no_unhandled_error): the Dialer's
        # prepareConnection Deferred fails from inside connectionLost, and ClientService
        # then gets a disconnect it has no transition for. Flushed here so the other
        # assertions run; the dedicated test keeps the bug red.
        return self.flushLoggedErrors(NoTransition)

    async def refused_dial(
        self, greeting: bytes, told: bool = True, flush: bool = True
    ) -> HandshakeError:
        factory, port = await self.raw_server(greeting)
        d = self.ctx.connect(f"tcp:127.0.0.1:{port}")
        err = await self.assertFailure(d, y.ProtocolError)
        self.assertIsInstance(err, HandshakeError)
        self.assertTrue(err.fatal)
        (dialer,) = self.ctx.dialers
        info = dialer.info()
        self.assertTrue(info["stopped"])
        self.assertFalse(info["connected"])
        self.assertEqual(info["last_error"], str(err))
        self.assertFalse(dialer.service.running)
        self.assertEqual(len(factory.peers), 1, "a fatal refusal must not be retried")
        self.assertEqual(self.ctx.links, {})
        peer = factory.peers[0]
        await peer.lost
        if flush:
            self.flush_client_service_noise()
        if told:
            # The dialler also told the server, in an ERROR frame of its own, what is wrong.
            self.assertTrue(peer.received.endswith(str(err).encode()), peer.received[-200:])
        return err

    def test_server_answering_garbage(self):
        async def go():
            err = await self.refused_dial(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            self.assertIn("not a yotonnet node", str(err))
            self.assertIn("HTTP/1.1", str(err))

        return defer.ensureDeferred(go())

    def test_server_of_another_protocol_version(self):
        async def go():
            hello = wire.encode_hello(wire.Hello(4242, "v7-node", (), MAX_FRAME, 1.0, {}))
            err = await self.refused_dial(wire.encode_preamble(version=7) + hello)
            self.assertIn("version 7", str(err))
            self.assertIn(f"version {wire.PROTOCOL_VERSION}", str(err))

        return defer.ensureDeferred(go())

    def test_server_refusing_with_an_error_frame(self):
        async def go():
            refusal = wire.encode_frame(FrameKind.ERROR, b"no room for you")
            # A refusal is not answered with another ERROR.
            err = await self.refused_dial(wire.encode_preamble() + refusal, told=False)
            self.assertIn("peer refused: no room for you", str(err))

        return defer.ensureDeferred(go())

    def test_refused_dial_leaves_no_unhandled_error(self):
        async def go():
            await self.refused_dial(b"SSH-2.0-OpenSSH_9.6\r\n", flush=False)
            logged = self.flushLoggedErrors()
            self.assertEqual(
                [f.getErrorMessage() for f in logged],
                [],
                "Dialer: ClientService got a disconnect while its prepareConnection was "
                "pending/failed (NoTransition)",
            )

        return defer.ensureDeferred(go())

    def test_server_hanging_up_is_retried_not_fatal(self):
        # Closing during the handshake may be transient (a node restarting): keep dialling.
        async def go():
            factory, port = await self.raw_server(b"", hang_up=True)
            d = self.ctx.connect(f"tcp:127.0.0.1:{port}")
            await factory.wait_for_connections(3)
            self.assertFalse(d.called)
            info = self.ctx.dialers[0].info()
            self.assertFalse(info["stopped"])
            self.assertGreaterEqual(info["attempts"], 2)
            self.assertIn("connection lost", info["last_error"])
            await self.ctx.close()
            # close() leaves a pending connect() Deferred unfired (reported); cancel it.
            if not d.called:
                d.cancel()
            d.addErrback(lambda _: None)
            for peer in factory.peers:
                await peer.lost
            self.flush_client_service_noise()

        return defer.ensureDeferred(go())


class BadEndpoints(TestCase):
    """Malformed endpoint strings are reported as ValueError naming the endpoint."""

    def setUp(self) -> None:
        self.ctx = y.Context("endpoints")
        self.addCleanup(self.ctx.close)

    def test_listen(self):
        async def go():
            for text in ("tcp:notaport", "nosuchtransport:1234", "tcp:0:bogus=1", ""):
                err = await self.assertFailure(self.ctx.listen(text), ValueError)
                self.assertIn(repr(text), str(err))
                self.assertIn("listen", str(err))
            self.assertEqual(self.ctx.ports, [])

        return defer.ensureDeferred(go())

    def test_connect(self):
        async def go():
            for text in ("tcp:localhost", "nosuchtransport:1234", "tcp:host=h:port=x", ""):
                err = await self.assertFailure(self.ctx.connect(text), ValueError)
                self.assertIn(repr(text), str(err))
                self.assertIn("connect", str(err))
            self.assertEqual(self.ctx.dialers, [])

        return defer.ensureDeferred(go())


class HelloAndFrameInOneRead(SynchronousTestCase):
    """Frames that arrive in the same read as the peer's HELLO (deterministic, no I/O).

    A peer may write its first frames right behind its HELLO, and TCP may
    deliver them together. Those frames must be checked against the limit
    negotiated by that HELLO, exactly as if they had come in a later read.
    """

    def link(self, max_frame: int) -> tuple[Link, StringTransport]:
        ctx = y.Context("solo", Clock(), config=y.ContextConfig(max_frame=max_frame))
        link = Link(ctx, outgoing=False)
        # a loopback peer: a node without authentication admits only local peers
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 54321))
        link.makeConnection(transport)
        return link, transport

    @staticmethod
    def greeting(transport: StringTransport) -> bytes:
        """A dialler's HELLO and its proof of the local secret, written as one would that
        has already read the listener's HELLO (so all of it may come in one read)."""
        dialler = rawwire.Dialler(random.getrandbits(63) + 1, "raw")
        greeting = dialler.greeting()
        return greeting + dialler.feed(transport.value())

    def test_frame_over_negotiated_limit_is_refused(self):
        link, transport = self.link(MAX_FRAME)
        big = wire.encode_frame(FrameKind.DATA, b"x" * (MAX_FRAME + 100))
        link.dataReceived(self.greeting(transport) + big)
        self.assertTrue(
            transport.disconnecting,
            f"a {len(big)}-byte frame passed a link whose negotiated limit is {MAX_FRAME}",
        )
        self.assertIn(b"maximum frame size of %d" % MAX_FRAME, transport.value())

    def test_large_frame_under_negotiated_limit_is_accepted(self):
        # Negotiated limit 16 MiB: a 100 KiB frame right behind the HELLO is legal.
        link, transport = self.link(wire.DEFAULT_MAX_FRAME)
        big = wire.encode_frame(FrameKind.DATA, b"x" * (100 * 1024))
        link.dataReceived(self.greeting(transport) + big)
        self.assertFalse(
            transport.disconnecting,
            f"legal frame refused: {transport.value()[-200:]!r}",
        )
        self.assertEqual(link.status, UP)
