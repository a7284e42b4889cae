"""``yotonnet pub`` and ``yotonnet sub``: publish messages on a channel, print its messages.

``pub`` reads its messages from the command line or, line by line, from stdin
(:class:`_StdinLines`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

from twisted.internet import defer

from ..channels import PubChannel, SubChannel
from ..service.config import Settings
from .exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .output import Progress, _isatty, _render, loads, note, peer_text
from .parser import TYPES
from .session import Session, _drained, _wait


async def cmd_pub(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "pub")
    await session.join()
    mtype = TYPES[args.type]
    pub = PubChannel(session.ctx, args.channel, mtype)
    if args.wait:
        await _wait(
            reactor, pub.wait_for_subscribers(args.wait), session.timeout,
            lambda: f"only {pub.subscribers} of {args.wait} subscribers of {args.channel!r} "
                    f"were reachable within {session.timeout:g} s (--timeout)",
        )
    progress = Progress()
    sent = 0
    # The most subscribers known while publishing (one may leave as soon as it has all).
    reached = pub.subscribers
    if args.messages:
        for value in args.values:
            await _drained(pub)
            pub.send(value)
            sent += 1
    else:
        reader = _StdinLines(reactor)
        line_no = 0
        async for lines in reader:
            reached = max(reached, pub.subscribers)
            for raw in lines:
                line_no += 1
                if args.type == "object":
                    if not raw.strip():
                        continue
                    try:
                        value = loads(raw)
                    except ValueError as e:
                        progress.clear()
                        raise CliError(f"stdin line {line_no} is not valid JSON ({e}); "
                                       f"{sent} messages were published", EXIT_USAGE) from None
                elif args.type == "binary":
                    value = raw
                else:
                    value = raw.decode("utf-8", "replace")
                await _drained(pub)
                pub.send(value)
                sent += 1
            progress.show(f"published {sent:,} messages to {args.channel}")
            # A round trip per chunk read: the node keeps up before more is read.
            await session.barrier()
    await _drained(pub)
    await session.barrier()
    if session.control is not None and sent:
        progress.show(f"published {sent:,} messages to {args.channel}; waiting for the node "
                      "to pass them on", force=True)
        await session.control.call("drain", args.channel, session.timeout)
    progress.clear()
    subscribers = max(reached, pub.subscribers)
    await session.close()
    if sent and not subscribers:
        note(f"yotonnet pub: warning: nobody subscribes to {args.channel!r}; "
             f"{sent} message(s) reached nobody (--wait N waits for subscribers)")
    elif progress.enabled:
        note(f"published {sent:,} message(s) to {args.channel} "
             f"({subscribers} subscriber(s))")
    return EXIT_OK


class _StdinLines:
    """Lines of stdin in chunks, read by a daemon thread so the reactor never blocks.

    ``os.read`` returns what is there (a line typed at a terminal, 64 KiB of a
    pipe), so interactive input goes out at once and bulk input in chunks; a
    semaphore keeps the thread at most two chunks ahead of the publisher.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.room = threading.Semaphore(2)
        self.partial = b""
        threading.Thread(target=self._read, args=(fd,), daemon=True).start()

    def _read(self, fd: int) -> None:
        while True:
            self.room.acquire()
            try:
                data = os.read(fd, 65536)
            except OSError as e:
                self.reactor.callFromThread(self.queue.put, e)
                return
            self.reactor.callFromThread(self.queue.put, data)
            if not data:
                return

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> list[bytes]:
        while True:
            data = await self.queue.get()
            self.room.release()
            if isinstance(data, OSError):
                raise CliError(f"cannot read stdin: {data}")
            if not data:
                if self.partial:
                    last, self.partial = self.partial, b""
                    return [last.rstrip(b"\r")]
                raise StopAsyncIteration
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            if lines:
                return [line.rstrip(b"\r") for line in lines]


async def cmd_sub(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "sub")
    mtype = TYPES[args.type]
    # Subscribed before linking, so the first record the node gets already lists it.
    sub = SubChannel(session.ctx, args.channel, mtype)
    await session.join()
    out = sys.stdout.buffer
    done: defer.Deferred = defer.Deferred()
    received = 0
    unprintable = 0

    def got(value: Any) -> None:
        nonlocal received, unprintable
        if done.called:
            return
        try:
            line = _render(value, mtype, args.json)
        except Exception as e:  # noqa: BLE001 - one odd message must not end the stream
            # Every valid value prints (see yotonnet.cli.output); should one not, say so,
            # count it, and go on, so that --count is still reached.
            unprintable += 1
            note(f"yotonnet sub: cannot print message {received + 1} of {args.channel}: "
                 f"{type(e).__name__}: {peer_text(e, 200)}")
        else:
            try:
                out.write(line)
                out.flush()
            except BrokenPipeError:  # e.g. `| head -1`: the reader has all it wants
                done.callback(None)
                return
        received += 1
        if args.count is not None and received >= args.count:
            done.callback(None)

    def link_event(event: Any) -> None:
        if session.ctx.closed or done.called:
            return  # our own leaving
        if event.peer_id == session.link.peer_id and event.status in ("closed", "up"):
            what = "lost" if event.status == "closed" else "back"
            note(f"yotonnet sub: link to {session.endpoint} {what}"
                 + (f" ({peer_text(event.reason)}); reconnecting" if event.reason else ""))

    session.ctx.watch_links(link_event)
    if _isatty(sys.stderr):
        note(f"subscribed to {args.channel} via {session.endpoint}; Ctrl-C to stop")
    sub.subscribe(got)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(session.close())
    )
    await done
    await session.close()
    if unprintable:
        note(f"yotonnet sub: {unprintable} of {received} message(s) could not be printed")
        return EXIT_FAILURE
    return EXIT_OK
