"""Eager writes: a link writes small frames straight to its TCP socket when
Twisted has nothing buffered for it, and falls back to transport.write for
everything else (a full socket, an error, buffered data, large frames).

The writer (yotonnet.mesh.writer) is tested on its own against stub transports
and sockets: eager writes, batching per dispatch, a paused transport's limits.
The rest runs
over real loopback TCP, including a send buffer small enough that sends are
cut short and the rest must follow through Twisted's buffer, in order.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from yotonnet import BINARY, Context, ContextConfig, PubChannel, RepChannel, ReqChannel, SubChannel
from yotonnet.mesh.writer import EAGER_MAX, Batch, LinkWriter, eager_socket


class StubTransport:
    """The parts of a Twisted TCP transport that LinkWriter.write_now looks at."""

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

    def sendmsg(self, buffers: Any) -> int:
        return self.send(b"".join(buffers))


def eager_writer(sock: StubSocket) -> tuple[LinkWriter, StubTransport]:
    transport = StubTransport()
    writer = LinkWriter(transport, Batch(lambda: None), task.Clock(), lambda: None,
                        lambda written: None, socket=sock)
    return writer, transport


class WriteNowTests(SynchronousTestCase):
    def test_an_empty_buffer_sends_straight_to_the_socket(self) -> None:
        sock = StubSocket()
        writer, transport = eager_writer(sock)
        writer.write_now(b"frame")
        self.assertEqual(sock.sent, [b"frame"])
        self.assertEqual(transport.written, [])
        self.assertEqual((writer.direct_writes, writer.buffered_writes), (1, 0))

    def test_what_the_socket_does_not_take_goes_to_twisted(self) -> None:
        sock = StubSocket(room=3)
        writer, transport = eager_writer(sock)
        writer.write_now(b"abcdefgh")
        self.assertEqual(sock.sent, [b"abc"])
        self.assertEqual(transport.written, [b"defgh"])
        self.assertEqual(writer.partial_writes, 1)

    def test_a_full_or_broken_socket_leaves_everything_to_twisted(self) -> None:
        for error in (BlockingIOError(), ConnectionResetError(), BrokenPipeError()):
            writer, transport = eager_writer(StubSocket(error=error))
            writer.write_now(b"frame")
            self.assertEqual(transport.written, [b"frame"], error)

    def test_buffered_bytes_keep_their_place(self) -> None:
        for attribute, value in (("dataBuffer", b"queued"), ("_tempDataLen", 6)):
            sock = StubSocket()
            writer, transport = eager_writer(sock)
            setattr(transport, attribute, value)
            writer.write_now(b"frame")
            self.assertEqual(sock.sent, [], attribute)
            self.assertEqual(transport.written, [b"frame"], attribute)

    def test_a_disconnected_or_aborted_transport_or_a_large_frame_is_not_sent_directly(
        self,
    ) -> None:
        sock = StubSocket()
        writer, transport = eager_writer(sock)
        transport.connected = 0
        writer.write_now(b"frame")
        transport.connected = 1
        transport._aborting = True  # abortConnection: Twisted's write sends nothing more
        writer.write_now(b"after abort")
        transport._aborting = False
        big = b"x" * (EAGER_MAX + 1)
        writer.write_now(big)
        self.assertEqual(sock.sent, [])
        self.assertEqual(transport.written, [b"frame", b"after abort", big])
        self.assertEqual(writer.buffered_writes, 3)

    def test_a_frame_in_two_parts_goes_whole_after_what_waits(self) -> None:
        # send_pair: a large published frame as header and payload, never joined on the
        # eager path; what the socket leaves goes to Twisted's buffer, in order.
        head, payload = b"H" * 44, b"p" * 70000
        frame = head + payload
        for room, to_socket, to_twisted in (
            (1 << 30, [b"small", frame], []),
            (10, [b"small", frame[:10]], [head[10:], payload]),
            (50, [b"small", frame[:50]], [payload[6:]]),
            (0, [b"", b""], [b"small", head, payload]),
        ):
            sock = StubSocket(room=room)
            writer, transport = eager_writer(sock)
            writer.send(b"small")  # waits for the turn's flush: it goes first
            writer.send_pair(head, payload)
            self.assertEqual(sock.sent, to_socket, room)
            self.assertEqual(transport.written, to_twisted, room)
            self.assertEqual(writer.frames_out, 2)
            self.assertEqual(writer.bytes_out, 5 + len(frame))

    def test_a_frame_in_two_parts_after_buffered_bytes_or_while_paused(self) -> None:
        head, payload = b"H" * 44, b"p" * 70000
        sock = StubSocket()
        writer, transport = eager_writer(sock)
        transport.dataBuffer = b"queued"
        writer.send_pair(head, payload)
        self.assertEqual(transport.written, [head, payload])
        transport.dataBuffer = b""
        transport.written.clear()
        writer.pause(1 << 20, 1 << 21)
        writer.send_pair(head, payload)
        self.assertEqual(transport.written, [head + payload])
        self.assertEqual(writer.written_while_paused, len(head) + len(payload))
        self.assertEqual(sock.sent, [])

    def test_only_plain_tcp_transports_are_written_to_directly(self) -> None:
        self.assertIsNone(eager_socket(StubTransport()))  # not a twisted.internet.tcp one

    def test_sends_in_one_dispatch_after_the_first_wait_for_its_end(self) -> None:
        transport = StubTransport()
        batch = Batch(lambda: None)
        writer = LinkWriter(transport, batch, task.Clock(), lambda: None, lambda n: None)
        self.assertTrue(batch.begin())
        writer.send(b"first")
        writer.send(b"second")
        writer.send(b"third")
        self.assertEqual(transport.written, [b"first"])
        batch.end()
        self.assertEqual(transport.written, [b"first", b"secondthird"])
        self.assertEqual((writer.frames_out, writer.bytes_out), (3, 16))

    def test_a_dispatch_calls_the_node_at_its_start_only_while_frames_are_held(self) -> None:
        # The node's begin hook closes the publish lane, which is open only while
        # published frames wait (see CorkedPublishTests): any other dispatch skips it.
        held: list = []
        begun: list = []
        batch = Batch(lambda: None, lambda: begun.append(len(held)), held)
        self.assertTrue(batch.begin())
        batch.end()
        self.assertEqual(begun, [])
        held.append("an outlet")
        self.assertTrue(batch.begin())
        self.assertFalse(batch.begin())  # an inner dispatch: nothing more
        self.assertEqual(begun, [1])
        held.clear()  # (what release() would do)
        batch.end()
        self.assertEqual(batch.turn, 2)

    def test_sends_outside_a_dispatch_are_joined_until_the_next_turn(self) -> None:
        transport = StubTransport()
        clock = task.Clock()
        writer = LinkWriter(transport, Batch(lambda: None), clock, lambda: None,
                            lambda n: None)
        writer.send(b"a")
        writer.send(b"b")
        self.assertEqual(transport.written, [])
        clock.advance(0)
        self.assertEqual(transport.written, [b"ab"])

    def test_a_paused_transport_reports_its_soft_then_hard_limit(self) -> None:
        transport = StubTransport()
        soft: list[bool] = []
        hard: list[int] = []
        writer = LinkWriter(transport, Batch(lambda: None), task.Clock(),
                            lambda: soft.append(True), hard.append)
        writer.pause(10, 20)
        writer.write(b"x" * 8)
        self.assertEqual((soft, hard), ([], []))
        writer.write(b"x" * 8)
        self.assertEqual((soft, hard), ([True], []))
        writer.write(b"x" * 8)
        self.assertEqual(hard, [24])
        self.assertEqual(len(transport.written), 2)  # the write past the hard limit is not
        writer.resume()
        writer.write(b"y")
        self.assertEqual(transport.written[-1], b"y")


class Echo(RepChannel):
    def echo(self, value: Any) -> Any:
        return value


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
        writers = (client_link.writer, server_link.writer)
        before = [(w.direct_writes, w.partial_writes, w.buffered_writes) for w in writers]
        for i in range(200):
            replies.append((yield req.echo([i, b"x" * i])))
        self.assertEqual(replies, [[i, b"x" * i] for i in range(200)])
        # (whole, partial, buffered) writes of each end during the 200 calls
        return [
            tuple(now - then for now, then in zip(
                (w.direct_writes, w.partial_writes, w.buffered_writes), was))
            for w, was in zip(writers, before)
        ]

    @defer.inlineCallbacks
    def test_requests_and_replies_bypass_twisteds_buffer(self) -> None:
        # 200 requests from the client, 200 replies from the server: each written whole
        self.assertEqual((yield self.calls_and_buffered_writes(eager=True)),
                         [(200, 0, 0), (200, 0, 0)])

    @defer.inlineCallbacks
    def test_with_eager_writes_off_nothing_is_written_directly(self) -> None:
        self.assertEqual((yield self.calls_and_buffered_writes(eager=False)),
                         [(0, 0, 0), (0, 0, 0)])

    @defer.inlineCallbacks
    def test_short_sends_finish_through_twisted_in_order(self) -> None:
        server, client, client_link, _ = yield self.pair(eager=True)
        # A tiny send buffer: 60 KiB frames cannot fit, so the socket takes part of
        # each and the rest (and whatever follows it) must queue behind in Twisted.
        client_link.writer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
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
        self.assertGreater(client_link.writer.partial_writes, 0)
