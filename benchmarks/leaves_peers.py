"""Child processes of the leaf benchmark (bench_leaves.py): many leaves, a publisher, a hub.

Usage (bench_leaves.py does this; by hand only for debugging)::

    python benchmarks/leaves_peers.py ROLE '{"count": 1000, ...}'

Roles (every process prints tagged lines on stdout and reads commands, one per
line, on stdin; times are ``time.monotonic()``, one clock for every process
of the host):

``leaves``
    ``count`` leaf contexts, each dialling one of ``ports`` on 127.0.0.1 in
    turn (at most ``concurrency`` handshakes at once) and, unless ``idle``,
    subscribing to ``channel`` (BINARY) with a counter. Prints ``READY <json>``
    once all are linked (and subscribed). With ``messages`` it expects that
    many messages on every leaf and prints ``RESULT <json>`` when the last one
    arrives: the times of the first and last delivery, its CPU time, and the
    fewest and most messages a leaf got. Command ``more N`` links N more
    (idle) leaves and prints ``READY`` again; ``quit`` stops.
``pub``
    one leaf publisher dialling ``port``: waits until ``subscribers``
    subscribers are known, then sends ``messages`` BINARY messages of ``size``
    bytes through bench_peers.py's ``Pump`` (``batch`` per reactor turn,
    paused while the channel is not writable), waits until its node took
    everything (``Context.flushed``) and prints ``RESULT`` with the time of
    the first send; stays linked until ``quit``.
``hub``
    a node (it listens, so it is one) with ``tracemalloc`` tracing from the
    start; prints ``PORT <n>``. Command ``measure N`` waits until N leaves are
    attached and nothing changed for a moment, collects garbage and prints
    ``MEM <json>`` (bytes traced now, RSS).
``raw-server``
    the raw Twisted baseline's sender: once ``connections`` clients are
    connected, writes ``messages`` length-prefixed messages of ``size`` bytes
    to each (``Int32StringReceiver.sendString``, one ``Pump`` per connection,
    paused by that transport's backpressure); prints ``RESULT`` with the time
    of the first write when the clients hang up.
``raw-clients``
    ``connections`` TCP connections to ``port``, each counting its messages;
    prints ``RESULT`` (first and last delivery, CPU) once every connection
    has ``messages``.

Options of bench_peers.py apply (``yotonnet_path`` first on ``sys.path``).
Leaves and clients raise their soft limit of open files when it is too low.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_peers  # noqa: E402  (parses OPTS and sets sys.path before yotonnet loads)
from bench_peers import HOST, Pump, emit, finish  # noqa: E402
from twisted.internet import defer, reactor, stdio  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver, LineReceiver  # noqa: E402

import yotonnet  # noqa: E402

#: a receiver that sees no message for this long reports what it got and stops
STALL_TIMEOUT = 30.0


def raise_nofile(needed: int) -> dict:
    """Raise the soft limit of open files to ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return {"nofile": soft}


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Commands(LineReceiver):
    """Commands from the parent on stdin: ``name args...`` -> ``handlers[name](*args)``."""

    delimiter = b"\n"

    def __init__(self, handlers: dict) -> None:
        self.handlers = handlers

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        words = line.decode().split()
        if not words:
            return
        handler = self.handlers.get(words[0])
        if handler is None:
            emit("ERROR", {"error": f"unknown command {words[0]!r}"})
            return
        defer.maybeDeferred(handler, *words[1:]).addErrback(bench_peers.fail)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        # The parent went away: so does this process.
        if reactor.running:
            reactor.stop()


def quit_now() -> None:
    reactor.callLater(0.05, reactor.stop)


def listen_commands(handlers: dict) -> None:
    stdio.StandardIO(Commands({"quit": quit_now, **handlers}))


class Delivered:
    """Counts the messages of every leaf (or connection); times the first and the last."""

    def __init__(self, ends: int, expected: int) -> None:
        self.counts = [0] * ends
        self.expected = expected
        self.total = 0
        self.t0 = self.t1 = self.cpu0 = 0.0
        self.last_seen = 0
        self.last_change = time.monotonic()
        self.watch = LoopingCall(self._look)

    def counter(self, i: int):
        counts = self.counts

        def got(_message: object) -> None:
            counts[i] += 1
            self.total += 1
            if self.total == 1:
                self.t0, self.cpu0 = time.monotonic(), time.process_time()
                self.watch.start(1.0, now=False)
            if self.total == self.expected:
                self.t1 = time.monotonic()
                self.report()

        return got

    def _look(self) -> None:
        if self.total != self.last_seen:
            self.last_seen = self.total
            self.last_change = time.monotonic()
        elif time.monotonic() - self.last_change > STALL_TIMEOUT:
            self.report(f"stalled after {self.total} of {self.expected} messages")

    def report(self, error: str | None = None) -> None:
        if self.watch.running:
            self.watch.stop()
        result = {
            "delivered": self.total,
            "first": self.t0,
            "last": self.t1,
            "cpu": time.process_time() - self.cpu0,
            "fewest": min(self.counts),
            "most": max(self.counts),
        }
        if error:
            result["error"] = error
        finish(result)


# --- yotonnet


async def link_all(make, count: int, concurrency: int) -> list:
    """``make(i)`` for i in range(count), at most ``concurrency`` at a time."""
    sem = defer.DeferredSemaphore(concurrency)
    return await defer.gatherResults(
        [sem.run(lambda i=i: defer.ensureDeferred(make(i))) for i in range(count)],
        consumeErrors=True,
    )


async def leaves(opts: dict) -> None:
    count = opts["count"]
    limits = raise_nofile(count * 2 + 200)
    ports = opts["ports"]
    idle = opts.get("idle", False)
    delivered = Delivered(count, count * opts.get("messages", 0))
    contexts: list[yotonnet.Context] = []
    subs: list = []

    async def one(i: int) -> None:
        ctx = yotonnet.Context(f"leaf{i}")  # it only dials: a leaf of the node it dials
        contexts.append(ctx)
        await ctx.connect(f"tcp:{HOST}:{ports[i % len(ports)]}")
        if ctx.role != "leaf":
            raise RuntimeError(f"{ctx.name} joined as {ctx.role!r}, not as a leaf")
        if not idle:
            sub = yotonnet.SubChannel(ctx, opts["channel"], yotonnet.BINARY)
            sub.subscribe(delivered.counter(i))
            subs.append(sub)

    async def link(n: int, start: int) -> None:
        t0 = time.monotonic()
        await link_all(lambda i: one(start + i), n, opts.get("concurrency", 50))
        emit("READY", {"leaves": len(contexts), "seconds": time.monotonic() - t0, **limits})

    async def more(n: str) -> None:
        await link(int(n), len(contexts))

    listen_commands({"more": more})
    await link(count, 0)


async def pub(opts: dict) -> None:
    ctx = yotonnet.Context("fan-publisher")
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    channel = yotonnet.PubChannel(ctx, opts["channel"], yotonnet.BINARY)
    listen_commands({})
    t_wait = time.monotonic()
    wait = channel.wait_for_subscribers(opts["subscribers"])
    timeout = reactor.callLater(opts.get("wait_timeout", 60.0), wait.cancel)
    try:
        await wait
    except defer.CancelledError:
        emit("RESULT", {"error": f"saw {channel.subscribers} of {opts['subscribers']} "
                        "subscribers in time"})
        return
    timeout.cancel()
    emit("SUBSCRIBED", {"subscribers": channel.subscribers,
                        "seconds": time.monotonic() - t_wait})
    pump = Pump(channel, channel.send, b"x" * opts["size"], opts["messages"], opts["batch"])
    first = time.monotonic()
    stats = await pump.start()
    flushed = await ctx.flushed(120.0)
    emit("RESULT", {**stats, "first": first, "flushed": flushed,
                    "pauses": ctx.counters["producer_pauses"]})


async def hub(opts: dict) -> None:
    import tracemalloc

    tracemalloc.start()
    ctx = yotonnet.Context("leaf-hub")
    port = await ctx.listen(f"tcp:0:interface={HOST}")

    async def measure(n: str) -> None:
        want = int(n)
        deadline = time.monotonic() + 60.0
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = len(ctx.leaf_links)
            if now != seen:
                seen, since = now, time.monotonic()
            elif now == want and time.monotonic() - since > 0.5:
                break
            await deferLater(reactor, 0.1, lambda: None)
        gc.collect()
        emit("MEM", {"leaves": len(ctx.leaf_links), "traced": tracemalloc.get_traced_memory()[0],
                     "rss": rss()})

    listen_commands({"measure": measure})
    emit("PORT", port.getHost().port)


# --- the raw Twisted baseline


class RawFanOut(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.setTcpNoDelay(True)  # yotonnet links do the same
        self.factory.arrived(self)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.factory.left(self)


class FanOutFactory(Factory):
    protocol = RawFanOut

    def __init__(self, opts: dict) -> None:
        self.opts = opts
        self.protos: list[RawFanOut] = []
        self.gone = 0
        self.first = 0.0
        self.stats: dict = {}

    def arrived(self, proto: RawFanOut) -> None:
        self.protos.append(proto)
        if len(self.protos) == self.opts["connections"]:
            defer.ensureDeferred(self.send_all()).addErrback(bench_peers.fail)

    async def send_all(self) -> None:
        opts = self.opts
        message = b"x" * opts["size"]
        self.first = time.monotonic()
        cpu0 = time.process_time()
        pumps = [Pump(p.transport, p.sendString, message, opts["messages"], opts["batch"])
                 for p in self.protos]
        await defer.gatherResults([p.start() for p in pumps])
        self.stats = {"first": self.first, "send_seconds": time.monotonic() - self.first,
                      "send_cpu": time.process_time() - cpu0}

    def left(self, _proto: RawFanOut) -> None:
        self.gone += 1
        if self.gone == len(self.protos):
            finish(self.stats or {"error": "the clients hung up before everything was sent"})


async def raw_server(opts: dict) -> None:
    raise_nofile(opts["connections"] + 200)
    port = await TCP4ServerEndpoint(reactor, 0, interface=HOST, backlog=1024).listen(
        FanOutFactory(opts))
    emit("PORT", port.getHost().port)


class RawCounter(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.setTcpNoDelay(True)

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        self.got(data)


class CountingFactory(Factory):
    def __init__(self, got) -> None:
        self.got = got

    def buildProtocol(self, addr) -> RawCounter:  # noqa: N802
        proto = RawCounter()
        proto.factory = self
        proto.got = self.got  # set before any byte can arrive
        return proto


async def raw_clients(opts: dict) -> None:
    n = opts["connections"]
    limits = raise_nofile(n + 200)
    delivered = Delivered(n, n * opts["messages"])
    protos: list[RawCounter] = []
    endpoint = TCP4ClientEndpoint(reactor, HOST, opts["port"])

    async def one(i: int) -> None:
        protos.append(await endpoint.connect(CountingFactory(delivered.counter(i))))

    t0 = time.monotonic()
    await link_all(one, n, opts.get("concurrency", 50))
    emit("READY", {"connections": len(protos), "seconds": time.monotonic() - t0, **limits})
    listen_commands({})


bench_peers.ROLES.update({
    "leaves": leaves,
    "pub": pub,
    "hub": hub,
    "raw-server": raw_server,
    "raw-clients": raw_clients,
})

if __name__ == "__main__":
    bench_peers.main()
