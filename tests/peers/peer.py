"""A standalone yotonnet peer for the two-process tests (tests/test_processes.py).

Usage::

    python -u peer.py ROLE --listen ENDPOINT [--channel NAME] [--count N]
                      [--tag TEXT] [--value JSON] [--node-id N]

The peer listens on ENDPOINT (``tcp:0:interface=127.0.0.1`` or ``unix:/path``)
and prints ``READY <port or path, as JSON>`` once it does; the test process
dials it.
Every output line is ``WORD [json]`` so the test can wait for a prefix.

Roles (all OBJECT channels):

``pub``
    wait for a subscriber, print ``SUBSCRIBED``, publish ``[seq, "<tag>-<seq>"]``
    for seq 1..N, then the end marker ``[N + 1, "END"]``, print ``SENT N``.
``sub``
    subscribe; on the end marker print ``RESULT {"count", "checksum",
    "first_gap", "received", "discarded"}`` where ``first_gap`` is the first
    expected seq that did not arrive in order (null if none).
``rep``
    serve ``echo``, ``add``, ``upper``, ``boom`` (raises ValueError),
    ``hang`` (never answers) and ``whoami``.
``state``
    set the state value from ``--value`` before anyone links, then print every
    later change as ``STATE <json>``.

The peer stops by itself if its parent goes away, so a crashed test run
leaves no orphans.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

import yotonnet

END = "END"


def emit(word: str, value: object = None) -> None:
    sys.stdout.write(word if value is None else f"{word} {json.dumps(value)}")
    sys.stdout.write("\n")
    sys.stdout.flush()


def checksum(messages: list) -> int:
    """The checksum both ends compute over ``[seq, text]`` messages in arrival order."""
    crc = 0
    for seq, text in messages:
        crc = zlib.crc32(f"{seq}:{text};".encode(), crc)
    return crc


class Replier(yotonnet.RepChannel):
    def echo(self, value):
        return value

    def add(self, a, b):
        return a + b

    def upper(self, text):
        return text.upper()

    def boom(self, message):
        raise ValueError(message)

    def hang(self):
        return defer.Deferred()  # never fires: the caller's timeout must handle it

    def whoami(self):
        return os.getpid()


async def run(reactor, args) -> None:
    ctx = yotonnet.Context(f"peer-{args.role}", reactor, node_id=args.node_id)
    channel = args.channel

    if args.role == "sub":
        sub = yotonnet.SubChannel(ctx, channel, yotonnet.OBJECT)
        got: list = []

        def on_message(message) -> None:
            if message[1] == END:
                expected = 1
                first_gap = None
                for seq, _text in got:
                    if seq != expected:
                        first_gap = expected
                        break
                    expected += 1
                emit("RESULT", {
                    "count": len(got), "checksum": checksum(got), "first_gap": first_gap,
                    "received": sub.received, "discarded": sub.discarded,
                })
            else:
                got.append(message)

        sub.subscribe(on_message)
    elif args.role == "rep":
        Replier(ctx, channel)
    elif args.role == "state":
        state = yotonnet.StateChannel(ctx, channel)
        state.send(json.loads(args.value))
        state.subscribe(lambda value: emit("STATE", value))

    port = await ctx.listen(args.listen)
    host = port.getHost()
    emit("READY", getattr(host, "port", None) or os.fsdecode(host.name))

    if args.role == "pub":
        pub = yotonnet.PubChannel(ctx, channel, yotonnet.OBJECT)
        await pub.wait_for_subscribers()
        emit("SUBSCRIBED")
        for seq in range(1, args.count + 1):
            pub.send([seq, f"{args.tag}-{seq}"])
        pub.send([args.count + 1, END])
        emit("SENT", args.count)

    await defer.Deferred()  # serve until killed


def watch_parent(reactor) -> None:
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            reactor.stop()

    task.LoopingCall(check).start(0.5, now=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["pub", "sub", "rep", "state"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--channel", default="test")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--tag", default="m")
    parser.add_argument("--value", default="null")
    parser.add_argument("--node-id", type=int, default=None)
    args = parser.parse_args()
    # Logs go to stderr, which the test shows when a wait fails.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    def start(reactor):
        watch_parent(reactor)
        return defer.ensureDeferred(run(reactor, args))

    task.react(start)


if __name__ == "__main__":
    main()
