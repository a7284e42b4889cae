"""Polling a link for the reply to a call before the reactor sleeps.

A sequential caller spends most of a round trip asleep: it writes the request,
returns to the reactor, and the reactor blocks in ``epoll_wait`` until the
reply arrives. Waking from that sleep costs more than the work around it: on
the 2-CPU VMs of the README's figures, the median round trip of sequential
calls between two processes over loopback TCP was 121 us with the reactor
sleeping and 68 us with it polling, in the same run
(``.venv/bin/python benchmarks/bench_versus.py``, rows ``yotonnet`` and
``yotonnet, reply_poll = 0``).

So after a dispatch wrote a call's request (``Requests.request`` reports it
through ``on_call_sent``), :class:`ReplyPoller` runs once more at the start of the
next reactor turn, before the reactor may sleep, and polls (``poll(2)`` with no
timeout) the sockets of the links those requests went out on, and everything
else the reactor reads, for up to ``ContextConfig.reply_poll`` seconds. It
returns as soon as one is readable, and the reactor finds it ready without
sleeping; it changes nothing about how anything is read. Other input (another
connection, a thread's ``callFromThread``) ends the poll as a reply does, so
only timers wait for it, which is why the limit is small (100 us by default; 0
turns polling off). A reactor reading more than :data:`MAX_POLLED_FDS`
descriptors (a server's) is never held: its other connections have work for it.

A replier that takes longer than the limit would have a caller burn the whole
limit for nothing on every call. Each link keeps a backoff: after a poll of it
runs out, its next call is not polled, after two such polls in a row its next
three, and so on doubling up to 63; a poll that sees the link readable clears
it. Links without a socket of their own (in memory, a process's pipes) are
never polled.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorFDSet

__all__ = ["ReplyPoller", "pollable_socket", "MAX_POLLED_FDS", "MAX_SKIP"]

#: the most calls a link's backoff skips after polls of it ran out
MAX_SKIP = 63
#: no poll where the reactor reads more descriptors than this (a server's, whose other
#: connections have work for it: building the poll would cost more than it saves)
MAX_POLLED_FDS = 64


def pollable_socket(transport: Any) -> socket.socket | None:
    """The socket under ``transport`` (through a TLS layer, say) whose readability says
    that bytes came in, or None where there is none (a memory transport, pipes)."""
    for _ in range(3):
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is not None:
            handle = get_handle()
            if isinstance(handle, socket.socket):
                return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return None


class ReplyPoller:
    """Polls the links calls just went out on, once per reactor turn (see the module
    docstring). Counts in ``counters``: ``reply_polls`` run, ``reply_polls_caught``
    (ended by a link a call went out on), ``reply_polls_other`` (ended by anything else
    the reactor reads) and ``reply_polls_skipped`` (for a link's backoff)."""

    def __init__(
        self,
        reactor: Any,
        limit: float,
        counters: dict[str, int],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.reactor = reactor
        #: seconds one poll may last
        self.limit = limit
        self.counters = counters
        for key in ("reply_polls", "reply_polls_caught", "reply_polls_other",
                    "reply_polls_skipped"):
            counters.setdefault(key, 0)
        self.clock = clock
        #: links a call went out on since the last poll -> their socket
        self._waiting: dict[Any, socket.socket] = {}
        #: link -> [polls that ran out in a row, calls still to skip]
        self._backoff: WeakKeyDictionary[Any, list[int]] = WeakKeyDictionary()
        self._call: Any = None
        #: the reactor's readers at the last poll, and their descriptors (they seldom
        #: change: a list compared by identity is cheaper than a fileno() each)
        self._readers: list[Any] = []
        self._reader_fds: list[int] = []

    def expect(self, link: Any) -> None:
        """A call's request went out on ``link``: poll it before the reactor sleeps."""
        sock = link.poll_socket
        if sock is None:
            return
        backoff = self._backoff.get(link)
        if backoff is not None and backoff[1]:
            backoff[1] -= 1
            self.counters["reply_polls_skipped"] += 1
            return
        self._waiting[link] = sock
        if self._call is None:
            self._call = self.reactor.callLater(0, self.poll)

    def poll(self) -> None:
        """Poll until a link a call went out on, or anything else the reactor reads, is
        readable, or the limit passes."""
        self._call = None
        waiting, self._waiting = self._waiting, {}
        links: dict[int, Any] = {}
        for link, sock in waiting.items():
            fd = sock.fileno()
            if fd >= 0 and not link.closing:  # (-1: closed meanwhile)
                links[fd] = link
        if not links:
            return
        others = self._other_fds()
        if others is None:
            return  # (a busy server's reactor: see MAX_POLLED_FDS)
        poller = select.poll()
        for fd in others:
            poller.register(fd, select.POLLIN)
        for fd in links:  # (a link the reactor reads is among the others already)
            poller.register(fd, select.POLLIN)
        self.counters["reply_polls"] += 1
        clock = self.clock
        end = clock() + self.limit
        while True:
            ready = poller.poll(0)
            if ready:
                caught = [links[fd] for fd, _ in ready if fd in links]
                if caught:
                    self.counters["reply_polls_caught"] += 1
                    for link in caught:
                        self._backoff.pop(link, None)
                else:  # something else came first: the reactor has it to read now
                    self.counters["reply_polls_other"] += 1
                return
            if clock() >= end:
                break
        for link in links.values():
            backoff = self._backoff.get(link)
            if backoff is None:
                self._backoff[link] = [1, 1]
            else:
                backoff[0] += 1
                backoff[1] = min(2 ** backoff[0] - 1, MAX_SKIP)

    def _other_fds(self) -> list[int] | None:
        """The descriptors the reactor reads (its waker, other connections), so that the
        poll ends for them too; None if there are more than MAX_POLLED_FDS."""
        if not IReactorFDSet.providedBy(self.reactor):
            return []  # (a test's Clock)
        readers = self.reactor.getReaders()
        if readers == self._readers:
            return self._reader_fds
        if len(readers) > MAX_POLLED_FDS:
            return None
        fds = []
        for reader in readers:
            try:
                fd = reader.fileno()
            except OSError:  # (closed meanwhile)
                continue
            if fd >= 0:
                fds.append(fd)
        self._readers, self._reader_fds = readers, fds
        return fds

    def stop(self) -> None:
        """The context is closing: no poll is left on the reactor."""
        self._waiting.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
