"""Child processes of bench_versus.py for yotonnet and raw Twisted: one role per process.

Usage (bench_versus.py does this; by hand only for debugging)::

    python benchmarks/versus_twisted.py ROLE '{"count": 1000, ...}'

Pub/sub (a publisher listens, ``subscribers`` receivers dial it; see versus_common.py
for the ``go``/``done`` lines):

``yot-pub``
    a ``PubChannel`` (BINARY) that waits for ``subscribers`` subscriptions
    (``wait_for_subscribers``), then sends through bench_peers.py's ``Pump``: a
    streaming producer registered on the channel, ``batch`` sends per reactor turn,
    paused while the channel is not writable (lossless flow control);
``yot-sub``
    a context that dials (option ``port``) with a ``SubChannel.subscribe`` counter, a
    method (the default, lossless subscriber);
``yot-fwd``
    a bare node between the two (listens, dials ``port``): it only forwards;
``raw-pub``
    ``Int32StringReceiver``: one ``sendString`` per message to each connection, the
    same ``Pump`` paced by each transport; with option ``joined`` it writes the frames
    pre-joined, ``k`` frames per ``transport.write``, the receivers' ceiling;
``raw-sub``
    ``Int32StringReceiver`` counting ``stringReceived`` calls.

Req/rep (the replier listens and prints ``PORT``): ``yot-rep``/``yot-req`` (a
``RepChannel`` echo, ``ReqChannel.call``) and ``raw-rep``/``raw-req`` (an
``Int32StringReceiver`` echo and ping; with option ``eager``, each frame written to
the socket at once when Twisted holds nothing for it). The caller makes ``warmup``
calls, ``count`` timed calls, and one more that closes the replier's window; the
replier reports when the caller hangs up.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_peers  # noqa: E402  (parses the options and sets sys.path before yotonnet)
from bench_peers import Pump, RawReceiver, fail, finish  # noqa: E402
from eager_send import EagerSend  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver  # noqa: E402
from versus_common import (  # noqa: E402
    CHANNEL,
    HOST,
    OPTS,
    STALL_TIMEOUT,
    Tally,
    cpu,
    emit,
    mark_end,
    mark_start,
    now,
    timed_calls,
)

import yotonnet  # noqa: E402


def stdin_line() -> defer.Deferred[str]:
    """The next line from bench_versus.py, read in a thread of our own (idle meanwhile)."""
    d: defer.Deferred[str] = defer.Deferred()

    def read() -> None:
        line = sys.stdin.readline().strip()
        reactor.callFromThread(d.callback, line)

    threading.Thread(target=read, daemon=True).start()
    return d


async def expect_line(word: str) -> None:
    line = await stdin_line()
    if line != word:
        raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


# --- receivers


class Receiver(Tally):
    """Counts messages; reports at the last one, or what it has after a stall."""

    def __init__(self, count: int, describe=None) -> None:
        super().__init__(count)
        #: what to add to a stall report (e.g. the context's counters)
        self.describe = describe or dict
        self.last_seen = 0
        self.watchdog = reactor.callLater(60 + STALL_TIMEOUT, self.stalled)

    # A method, as a user's callback usually is (an instance's __call__ costs some 40 ns
    # more per message on CPython 3.11; NATS's counter is a function, pyzmq's inline).
    def on_message(self, _message: object) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = now()
            self.cpu0 = cpu()
        elif self.seen == self.count:
            result = self.result(now(), cpu())
            self.watchdog.cancel()
            finish(result)

    def stalled(self) -> None:
        if self.seen != self.last_seen:  # still moving: look again later
            self.last_seen = self.seen
            self.watchdog = reactor.callLater(STALL_TIMEOUT, self.stalled)
            return
        finish({"error": f"stalled after {self.seen} of {self.count} messages; "
                f"{self.describe()}"})


async def yot_sub(opts: dict) -> None:
    ctx = bench_peers.context("versus-sub", opts)
    sub = yotonnet.SubChannel(ctx, CHANNEL, yotonnet.BINARY)
    sub.subscribe(Receiver(opts["count"], lambda: {
        "pending": sub.pending, "counters": {k: v for k, v in ctx.counters.items() if v}},
    ).on_message)
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    emit("READY")


class RawSub(RawReceiver):
    def connectionMade(self) -> None:
        super().connectionMade()
        emit("READY")


async def raw_sub(opts: dict) -> None:
    factory = Factory.forProtocol(RawSub)
    factory.on_message = Receiver(opts["count"]).on_message
    await TCP4ClientEndpoint(reactor, HOST, opts["port"]).connect(factory)


async def yot_fwd(opts: dict) -> None:
    ctx = bench_peers.context("versus-fwd", opts)
    # Listening first makes it a node from the start (see mesh_peers.py).
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    emit("PORT", port.getHost().port)  # then forwards until bench_versus.py ends it


# --- publishers


async def yot_pub(opts: dict) -> None:
    ctx = bench_peers.context("versus-pub", opts)
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    pub = yotonnet.PubChannel(ctx, CHANNEL, yotonnet.BINARY)
    emit("PORT", port.getHost().port)
    await pub.wait_for_subscribers(opts.get("subscribers", 1))
    await expect_line("go")
    # The publisher is the consumer: it pauses the pump while some subscriber lacks credit.
    pump = Pump(pub, pub.send, b"x" * opts["size"], opts["count"], opts["batch"])
    stats = await pump.start()
    await expect_line("done")
    finish({**stats, "cpu": cpu() - pump.cpu0, "sent": opts["count"]})


class RawPubConn(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.factory.arrived(self)


class RawPubFactory(Factory):
    protocol = RawPubConn

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.conns: list[RawPubConn] = []
        self.all_here: defer.Deferred[None] = defer.Deferred()

    def arrived(self, conn: RawPubConn) -> None:
        self.conns.append(conn)
        if len(self.conns) == self.expected:
            self.all_here.callback(None)


async def raw_pub(opts: dict) -> None:
    factory = RawPubFactory(opts.get("subscribers", 1))
    port = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(factory)
    emit("PORT", port.getHost().port)
    await factory.all_here
    await expect_line("go")
    size, count = opts["size"], opts["count"]
    message = b"x" * size
    t0, cpu0 = time.perf_counter(), cpu()
    pumps = []
    for conn in factory.conns:
        if opts.get("joined"):
            # k whole frames in one bytes object, one transport.write each (count is a
            # multiple of k): what a receiver can take when the sender costs nothing.
            k = opts["k"]
            block = (struct.pack("!I", size) + message) * k
            pump = Pump(conn.transport, conn.transport.write, block, count // k, 1)
        else:
            pump = Pump(conn.transport, conn.sendString, message, count, opts["batch"])
        pumps.append(pump.start())
    await defer.gatherResults(pumps)
    stats = {"send_seconds": time.perf_counter() - t0, "send_cpu": cpu() - cpu0}
    await expect_line("done")
    finish({**stats, "cpu": cpu() - cpu0, "sent": count * len(factory.conns)})


# --- req/rep


class Served:
    """A replier's count of requests: CPU (and callgrind's window) from the first timed
    request to the caller's closing one; it reports when the caller hangs up."""

    def __init__(self, opts: dict) -> None:
        self.warmup = opts["warmup"]
        self.count = opts["count"]
        self.instr = opts.get("instr", False)
        self.served = 0
        self.cpu0 = 0.0
        self.result: dict | None = None

    def __call__(self) -> None:
        self.served += 1
        n = self.served - self.warmup
        if n == 1:
            self.cpu0 = cpu()
            if self.instr:
                mark_start()
        elif n == self.count + 1:
            if self.instr:
                mark_end()
            self.result = {"cpu": cpu() - self.cpu0, "served": self.count}

    def hung_up(self) -> None:
        finish(self.result or {"error": f"caller left after {self.served} requests"})


class Echo(yotonnet.RepChannel):
    bench_calls: Served

    def echo(self, data: bytes) -> bytes:
        self.bench_calls()
        return data


async def yot_rep(opts: dict) -> None:
    ctx = bench_peers.context("versus-rep", opts)
    rep = Echo(ctx, CHANNEL)
    rep.bench_calls = Served(opts)
    ctx.watch_links(lambda event: event.status == "closed" and rep.bench_calls.hung_up())
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    emit("PORT", port.getHost().port)


async def yot_req(opts: dict) -> None:
    ctx = bench_peers.context("versus-req", opts)
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    req = yotonnet.ReqChannel(ctx, CHANNEL)
    await ctx.wait_for_interest(req.channel_id, "rep")
    result = await timed_calls(lambda p: req.call("echo", p), b"x" * opts["size"], opts)
    await ctx.close()
    finish(result)


class RawEcho(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)

    def stringReceived(self, data: bytes) -> None:
        self.factory.served()
        self.sendString(data)

    def connectionLost(self, reason=None) -> None:
        self.factory.served.hung_up()


class EagerEcho(EagerSend, RawEcho):
    pass


class EagerPing(EagerSend, bench_peers.RawPing):
    pass


async def raw_rep(opts: dict) -> None:
    factory = Factory.forProtocol(EagerEcho if opts.get("eager") else RawEcho)
    factory.served = Served(opts)
    port = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(factory)
    emit("PORT", port.getHost().port)


async def raw_req(opts: dict) -> None:
    proto = await TCP4ClientEndpoint(reactor, HOST, opts["port"]).connect(
        Factory.forProtocol(EagerPing if opts.get("eager") else bench_peers.RawPing)
    )
    result = await timed_calls(proto.call, b"x" * opts["size"], opts)
    proto.transport.loseConnection()
    finish(result)


ROLES = {
    "yot-pub": yot_pub,
    "yot-sub": yot_sub,
    "yot-fwd": yot_fwd,
    "raw-pub": raw_pub,
    "raw-sub": raw_sub,
    "yot-rep": yot_rep,
    "yot-req": yot_req,
    "raw-rep": raw_rep,
    "raw-req": raw_req,
}


def main() -> None:
    role = ROLES[sys.argv[1]]
    reactor.callWhenRunning(lambda: defer.ensureDeferred(role(OPTS)).addErrback(fail))
    reactor.run()


if __name__ == "__main__":
    main()
