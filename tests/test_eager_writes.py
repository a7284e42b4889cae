"""Eager writes: a link writes small frames straight to its TCP socket when
Twisted has nothing buffered for it, and falls back to transport.write for
everything else (a full socket, an error, buffered data, large frames).

The decision logic runs against stub transports and sockets; the rest runs
over real loopback TCP, including a send buffer small enough that sends are
cut short and the rest must follow through Twisted's buffer, in order.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from yotonnet import BINARY, Context, ContextConfig, PubChannel, RepChannel, ReqChannel, SubChannel
from yotonnet.mesh.link import EAGER_MAX, Link


class StubTransport:
    """The parts of a Twisted TCP transport that Link._write_now looks at."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.connected = 1
        self._aborting = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class StubSocket:
    """Takes at most ``room`` bytes per send, or raises ``error``."""

    def __init__(self, room: int = 1 << 30, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = bytes(data[: self.room])
        self.sent.append(taken)
        return len(taken)


def eager_link(sock: StubSocket) -> tuple[Link, StubTransport]:
    link = Link(Context("stub", task.Clock()), outgoing=True)
    transport = StubTransport()
    link.transport = transport
    link._socket = sock
    return link, transport


class WriteNowTests(SynchronousTestCase):
    def test_an_empty_buffer_sends_straight_to_the_socket(self) -> None:
        sock = StubSocket()
        link, transport = eager_link(sock)
        link._write_now(b"frame")
        self.assertEqual(sock.sent, [b"frame"])
        self.assertEqual(transport.written, [])

    def test_what_the_socket_does_not_take_goes_to_twisted(self) -> None:
        sock = StubSocket(room=3)
        link, transport = eager_link(sock)
        link._write_now(b"abcdefgh")
        self.assertEqual(sock.sent, [b"abc"])
        self.assertEqual(transport.written, [b"defgh"])

    def test_a_full_or_broken_socket_leaves_everything_to_twisted(self) -> None:
        for error in (BlockingIOError(), ConnectionResetError(), BrokenPipeError()):
            link, transport = eager_link(StubSocket(error=error))
            link._write_now(b"frame")
            self.assertEqual(transport.written, [b"frame"], error)

    def test_buffered_bytes_keep_their_place(self) -> None:
        for attribute, value in (("dataBuffer", b"queued"), ("_tempDataLen", 6)):
            sock = StubSocket()
            link, transport = eager_link(sock)
            setattr(transport, attribute, value)
            link._write_now(b"frame")
            self.assertEqual(sock.sent, [], attribute)
            self.assertEqual(transport.written, [b"frame"], attribute)

    def test_a_disconnected_or_aborted_transport_or_a_large_frame_is_not_sent_directly(
        self,
    ) -> None:
        sock = StubSocket()
        link, transport = eager_link(sock)
        transport.connected = 0
        link._write_now(b"frame")
        transport.connected = 1
        transport._aborting = True  # abortConnection: Twisted's write sends nothing more
        link._write_now(b"after abort")
        transport._aborting = False
        big = b"x" * (EAGER_MAX + 1)
        link._write_now(big)
        self.assertEqual(sock.sent, [])
        self.assertEqual(transport.written, [b"frame", b"after abort", big])

    def test_only_plain_tcp_transports_are_written_to_directly(self) -> None:
        link, transport = eager_link(StubSocket())
        link._choose_write_path(eager=True)
        self.assertEqual(link._put, transport.write)  # not a twisted.internet.tcp transport


class CountingSocket:
    """Wraps a real socket, noting how much each send took."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.short_sends = 0
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        taken = self.sock.send(data)
        if taken < len(data):
            self.short_sends += 1
        return taken


class Echo(RepChannel):
    def echo(self, value: Any) -> Any:
        return value


def count_buffered_writes(link: Link) -> list[bytes]:
    """Record what goes through Twisted's buffered transport.write from now on."""
    seen: list[bytes] = []
    original = link.transport.write

    def write(data: bytes) -> None:
        seen.append(data)
        original(data)

    link.transport.write = write
    if link._put == original:
        link._put = write
    return seen


class RealTcpTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def pair(self, eager: bool) -> Any:
        server = Context("server", reactor, config=ContextConfig(eager_writes=eager))
        client = Context("client", reactor, config=ContextConfig(eager_writes=eager))
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        link = yield client.connect(f"tcp:127.0.0.1:{port.getHost().port}")
        return server, client, link, server.links[client.node_id]

    @defer.inlineCallbacks
    def calls_and_buffered_writes(self, eager: bool) -> Any:
        server, client, client_link, server_link = yield self.pair(eager)
        Echo(server, "svc")
        req = ReqChannel(client, "svc")
        yield req.wait_for_responders()
        yield req.echo(b"warm-up")
        replies = []
        client_buffered = count_buffered_writes(client_link)
        server_buffered = count_buffered_writes(server_link)
        for i in range(200):
            replies.append((yield req.echo([i, b"x" * i])))
        self.assertEqual(replies, [[i, b"x" * i] for i in range(200)])
        return len(client_buffered) + len(server_buffered)

    @defer.inlineCallbacks
    def test_requests_and_replies_bypass_twisteds_buffer(self) -> None:
        self.assertEqual((yield self.calls_and_buffered_writes(eager=True)), 0)

    @defer.inlineCallbacks
    def test_with_eager_writes_off_every_frame_is_buffered(self) -> None:
        # 200 requests from the client, 200 replies from the server
        self.assertEqual((yield self.calls_and_buffered_writes(eager=False)), 400)

    @defer.inlineCallbacks
    def test_short_sends_finish_through_twisted_in_order(self) -> None:
        server, client, client_link, _ = yield self.pair(eager=True)
        # A tiny send buffer: 60 KiB frames cannot fit, so the socket takes part of
        # each and the rest (and whatever follows it) must queue behind in Twisted.
        client_link._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        counting = client_link._socket = CountingSocket(client_link._socket)
        sub = SubChannel(server, "bulk", BINARY)
        got: list[bytes] = []
        sub.subscribe(got.append)
        pub = PubChannel(client, "bulk", BINARY)
        yield client.wait_for_interest(pub.channel_id, "sub")
        size = 60 * 1024
        messages = [bytes([i % 251]) * (size - i) for i in range(60)]
        for message in messages:
            pub.send(message)
            # One message per reactor turn: each is a flush of its own (not a batch).
            yield task.deferLater(reactor, 0, lambda: None)
        while len(got) < len(messages):
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(got, messages)
        self.assertGreater(counting.short_sends, 0)
