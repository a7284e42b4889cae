"""How much a link over real TCP takes in one read (ContextConfig.read_size).

A busy link's reads should carry as many frames as arrived, up to read_size,
rather than Twisted's 64 KiB: the test holds a subscriber's link from reading
while a publisher sends, then lets it read once and sees how much it took.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from yotonnet import BINARY, Context, ContextConfig, PubChannel, SubChannel


def waiting_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` to read."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class ReadSizeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def one_read_after_a_burst(self, read_size: int) -> Any:
        """How many bytes the subscriber's link took in its first read once more than
        ``read_size`` piled up in its socket."""
        config = ContextConfig(read_size=read_size)
        server = Context("server", reactor, config=config)
        client = Context("client", reactor, config=config)
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        yield client.connect(f"tcp:127.0.0.1:{port.getHost().port}")
        got: list[bytes] = []
        SubChannel(server, "bulk", BINARY).subscribe(got.append)
        pub = PubChannel(client, "bulk", BINARY)
        yield client.wait_for_interest(pub.channel_id, "sub")
        link = server.links[client.node_id]
        transport = link.transport
        self.assertEqual(transport.bufferSize, read_size)
        # Room for more than read_size to wait: the most a default Linux lets a socket
        # ask for (net.core.rmem_max, 208 KiB; the kernel doubles it).
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 212992)
        transport.stopReading()
        messages = [bytes([i % 251]) * 1000 for i in range(1024)]
        for message in messages:
            pub.send(message)
        for _ in range(500):
            if waiting_bytes(transport.socket) > read_size + 16384:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail(f"only {waiting_bytes(transport.socket)} bytes reached the socket")
        before = link.bytes_in
        transport.doRead()  # one read, as the reactor would make it
        taken = link.bytes_in - before
        transport.startReading()
        while len(got) < len(messages):
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(got, messages)  # (nothing lost or reordered by the pause)
        return taken

    @defer.inlineCallbacks
    def test_a_read_takes_up_to_read_size(self) -> None:
        # (more than Twisted's 64 KiB; less than the default 256 KiB, which a socket with
        # a default rmem_max cannot hold waiting)
        self.assertEqual((yield self.one_read_after_a_burst(160 << 10)), 160 << 10)

    @defer.inlineCallbacks
    def test_a_smaller_read_size_reads_less(self) -> None:
        self.assertEqual((yield self.one_read_after_a_burst(16 << 10)), 16 << 10)
