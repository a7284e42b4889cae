"""The reply poll (yotonnet.mesh.replypoll): a caller watches the link a call went out
on, before its reactor sleeps, until the link is readable or the limit passes.

Ring 2: a ``ReplyPoller`` on a deterministic clock, over real socket pairs (a
readable socket is the only thing it looks at), and contexts linked in memory,
which have no socket to poll. The real round trips, across processes, are in
``test_processes.ReplyPollTests``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from yotonnet import ContextConfig, RepChannel, ReqChannel
from yotonnet.mesh.replypoll import MAX_POLLED_FDS, MAX_SKIP, ReplyPoller, pollable_socket
from yotonnet.testing import MeshTestCase


class FakeLink:
    """What the poller reads of a link: its socket and whether it is closing."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.poll_socket = sock
        self.closing = False


class Ticks:
    """A clock that moves 10 us each time it is read: a poll's limit is a count of
    looks, whatever the machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 10e-6
        return self.now


@implementer(IReactorFDSet)
class ReadingClock(Clock):
    """A Clock that says it reads ``readers`` (anything with a fileno), as a reactor's
    getReaders() does; the rest of IReactorFDSet is not used by the poller."""

    def __init__(self, readers: list[Any]) -> None:
        super().__init__()
        self.readers = readers

    def getReaders(self) -> list[Any]:  # noqa: N802 - Twisted's name
        return list(self.readers)


class ReplyPollerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Clock()
        self.ticks = Ticks()
        self.counters: dict[str, int] = {}
        self.poller = ReplyPoller(self.reactor, 100e-6, self.counters, self.ticks)

    def pair(self) -> tuple[FakeLink, socket.socket]:
        """A link whose socket the test can make readable through the other end."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return FakeLink(ours), theirs

    def counts(self) -> tuple[int, int, int]:
        c = self.counters
        return c["reply_polls"], c["reply_polls_caught"], c["reply_polls_skipped"]

    def test_a_readable_link_ends_the_poll_at_once(self) -> None:
        link, other = self.pair()
        other.send(b"the reply")
        self.poller.expect(link)
        self.assertEqual(self.counts(), (0, 0, 0))  # (it waits for the next turn)
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (1, 1, 0))
        self.assertLessEqual(self.ticks.reads, 1)  # (the first look saw it)

    def test_a_poll_lasts_its_limit_when_nothing_comes(self) -> None:
        link, _ = self.pair()
        self.poller.expect(link)
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (1, 0, 0))
        self.assertEqual(self.ticks.reads, 11)  # (100 us in 10 us looks, from the start)

    def test_calls_of_one_turn_share_one_poll(self) -> None:
        a, _ = self.pair()
        b, to_b = self.pair()
        for link in (a, b, a):
            self.poller.expect(link)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        to_b.send(b"x")
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (1, 1, 0))

    def test_a_link_that_keeps_running_out_is_polled_ever_more_rarely(self) -> None:
        link, other = self.pair()
        polled = []
        for call in range(200):
            before = self.counters.get("reply_polls", 0)
            self.poller.expect(link)
            self.reactor.advance(0)
            if self.counters["reply_polls"] > before:
                polled.append(call)
        # Skips of 1, 3, 7, ... after each poll that ran out, up to MAX_SKIP.
        self.assertEqual(polled, [0, 2, 6, 14, 30, 62, 126, 190])
        self.assertEqual(MAX_SKIP, 63)
        self.assertEqual(self.counts(), (8, 0, 192))
        # A poll that sees the link readable clears its backoff: the next call is polled.
        other.send(b"at last")  # (never read here: the link stays readable)
        for _ in range(MAX_SKIP + 1):  # (what is left of the skip, then a poll)
            self.poller.expect(link)
            self.reactor.advance(0)
            if self.counters["reply_polls"] == 9:
                break
        self.assertEqual(self.counts()[:2], (9, 1))
        self.poller.expect(link)
        self.reactor.advance(0)
        self.assertEqual(self.counts()[:2], (10, 2))

    def test_anything_else_the_reactor_reads_ends_the_poll(self) -> None:
        link, _ = self.pair()
        other_link, other = self.pair()
        reactor = ReadingClock([other_link.poll_socket])
        poller = ReplyPoller(reactor, 100e-6, self.counters, self.ticks)
        other.send(b"a request for a replier here")
        poller.expect(link)
        reactor.advance(0)
        c = self.counters
        self.assertEqual((c["reply_polls"], c["reply_polls_caught"], c["reply_polls_other"]),
                         (1, 0, 1))
        self.assertLessEqual(self.ticks.reads, 1)
        # It did not run out: the link's next call is polled as before.
        other_link.poll_socket.recv(100)  # (read: nothing else waits now)
        poller.expect(link)
        reactor.advance(0)
        self.assertEqual((c["reply_polls"], c["reply_polls_skipped"]), (2, 0))

    def test_no_poll_where_the_reactor_reads_many_descriptors(self) -> None:
        link, other = self.pair()
        other.send(b"x")
        readers = []
        for _ in range(MAX_POLLED_FDS + 1):  # (quiet connections)
            a, b = socket.socketpair()
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            readers.append(a)
        reactor = ReadingClock(readers)
        poller = ReplyPoller(reactor, 100e-6, self.counters, self.ticks)
        poller.expect(link)
        reactor.advance(0)
        self.assertEqual(self.counters["reply_polls"], 0)
        reactor.readers = readers[1:]
        poller.expect(link)
        reactor.advance(0)
        self.assertEqual(self.counters["reply_polls_caught"], 1)

    def test_links_without_a_socket_or_closing_are_not_polled(self) -> None:
        self.poller.expect(FakeLink(None))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        link, other = self.pair()
        other.send(b"x")
        self.poller.expect(link)
        link.closing = True
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (0, 0, 0))
        link.closing = False
        link.poll_socket.close()  # (fileno -1: closed meanwhile)
        self.poller.expect(link)
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (0, 0, 0))

    def test_stop_leaves_nothing_on_the_reactor(self) -> None:
        link, _ = self.pair()
        self.poller.expect(link)
        self.poller.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(0)
        self.assertEqual(self.counts(), (0, 0, 0))

    def test_the_socket_under_a_transport(self) -> None:
        sock, other = socket.socketpair()
        self.addCleanup(sock.close)
        self.addCleanup(other.close)

        class Transport:
            def __init__(self, handle: Any, under: Any = None) -> None:
                self.handle = handle
                if under is not None:
                    self.transport = under

            def getHandle(self) -> Any:  # noqa: N802 - Twisted's name
                return self.handle

        tcp = Transport(sock)
        self.assertIs(pollable_socket(tcp), sock)
        # TLS over TCP: the TLS layer's handle is its OpenSSL connection, not a socket.
        self.assertIs(pollable_socket(Transport(object(), tcp)), sock)
        self.assertIsNone(pollable_socket(Transport(object())))
        self.assertIsNone(pollable_socket(object()))


class ContextPollTests(MeshTestCase):
    def test_memory_links_have_no_socket_to_poll(self) -> None:
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")

        class Echo(RepChannel):
            def echo(self, value: Any) -> Any:
                return value

        Echo(mesh["b"], "svc")
        mesh.settle()
        req = ReqChannel(mesh["a"], "svc")
        results: list = []
        req.call("echo", 5).addCallback(results.append)
        mesh.settle()
        self.assertEqual(results, [5])
        self.assertIsNotNone(mesh["a"].reply_poller)
        self.assertEqual(mesh["a"].counters["reply_polls"], 0)
        self.assertEqual(mesh["a"].counters["reply_polls_skipped"], 0)

    def test_reply_poll_zero_turns_it_off(self) -> None:
        mesh = self.make_mesh(names=["a"], config=ContextConfig(reply_poll=0))
        self.assertIsNone(mesh["a"].reply_poller)
        self.assertNotIn("reply_polls", mesh["a"].counters)
