"""Child processes of the core benchmark: one role per process, run by bench_core.py.

Usage (bench_core.py does this; by hand only for debugging)::

    python benchmarks/bench_peers.py ROLE '{"count": 1000, ...}'

Roles come in pairs, a listening *server* and a dialling *client*; each pair
exists twice, once over yotonnet and once over raw Twisted
(``Int32StringReceiver``) as the baseline:

=============  ==============  ===========================================
server         client          measures
=============  ==============  ===========================================
``yot-sub``    ``yot-pub``     pub/sub throughput, at the subscriber
``raw-recv``   ``raw-send``    the same over Int32StringReceiver
``yot-rep``    ``yot-req``     req/rep round trip, at the caller
``raw-echo``   ``raw-ping``    the same over Int32StringReceiver
=============  ==============  ===========================================

A server prints ``PORT <n>`` once it listens (on 127.0.0.1, port 0); every
role prints one ``RESULT <json>`` line when done and exits. Both senders use
the same :class:`Pump` (a batch per reactor turn, paused by the transport's
backpressure) and both callers the same sequential ``await`` loop, so the two
sides of each comparison differ only in the messaging layer.

The option ``profile`` (a file name) runs the reactor under cProfile and dumps
the stats there; ``yotonnet_path`` puts that directory first on ``sys.path``
(the benchmark passes the repository root, or a scratch copy to try a change);
``cpu`` pins the process to that CPU; ``eager_writes`` (default true) is the
yotonnet contexts' ``ContextConfig.eager_writes``, ``retention_bytes`` (if given)
their ``ContextConfig.retention_bytes``.
"""

from __future__ import annotations

import json
import os
import sys
import time

OPTS: dict = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
sys.path.insert(0, OPTS.get("yotonnet_path") or os.path.dirname(os.path.dirname(__file__)))
if OPTS.get("cpu") is not None:
    os.sched_setaffinity(0, {OPTS["cpu"]})

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver  # noqa: E402

import yotonnet  # noqa: E402

CHANNEL = "bench"
HOST = "127.0.0.1"
#: a receiver that sees no message for this long gives up and reports what it got
STALL_TIMEOUT = 20.0


def context(name: str, opts: dict) -> yotonnet.Context:
    """A context with the benchmark's settings (``eager_writes``: default on, as yotonnet's;
    ``retention_bytes`` and ``reply_poll``: yotonnet's defaults unless given, 0 turning
    repair or the reply poll off)."""
    config = yotonnet.ContextConfig(eager_writes=opts.get("eager_writes", True))
    if "reply_poll" in opts:
        config.reply_poll = float(opts["reply_poll"])
    if "retention_bytes" in opts:
        config.retention_bytes = int(opts["retention_bytes"])
    return yotonnet.Context(name, config=config)


def emit(tag: str, value: object) -> None:
    print(tag, json.dumps(value) if not isinstance(value, int) else value, flush=True)


def finish(result: dict) -> None:
    """Report and stop; a second call (e.g. a late timeout) is ignored."""
    if finish.done:  # type: ignore[attr-defined]
        return
    finish.done = True  # type: ignore[attr-defined]
    result.setdefault("yotonnet", os.path.dirname(yotonnet.__file__))
    emit("RESULT", result)
    # Let the line and any closing frames go out before the reactor stops.
    reactor.callLater(0.05, reactor.stop)


finish.done = False  # type: ignore[attr-defined]


def fail(failure) -> None:
    finish({"error": failure.getErrorMessage(), "traceback": failure.getTraceback()})


# --- throughput: the receiving side


class Counter:
    """Counts messages; times the first to the last and the CPU used meanwhile."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.t0 = self.cpu0 = 0.0
        self.watchdog = reactor.callLater(60 + STALL_TIMEOUT, self.stalled)
        self.last_seen = 0

    def __call__(self, _message: object) -> None:
        self.seen += 1
        if self.seen == 1:
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()
        elif self.seen == self.count:
            elapsed = time.perf_counter() - self.t0
            cpu = time.process_time() - self.cpu0
            self.watchdog.cancel()
            finish(
                {
                    "messages": self.count,
                    "seconds": elapsed,
                    # n messages span n - 1 intervals between first and last.
                    "rate": (self.count - 1) / elapsed,
                    "cpu": cpu,
                }
            )

    def stalled(self) -> None:
        if self.seen != self.last_seen:  # still moving: look again later
            self.last_seen = self.seen
            self.watchdog = reactor.callLater(STALL_TIMEOUT, self.stalled)
            return
        finish({"error": f"stalled after {self.seen} of {self.count} messages"})


async def yot_sub(opts: dict) -> None:
    ctx = context("bench-sub", opts)
    sub = yotonnet.SubChannel(ctx, CHANNEL, yotonnet.BINARY)
    sub.subscribe(Counter(opts["count"]))
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    emit("PORT", port.getHost().port)


class RawReceiver(Int32StringReceiver):
    # The default of 99,999 bytes silently drops the connection on 64 KiB+ messages.
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # yotonnet links do the same

    def stringReceived(self, data: bytes) -> None:
        self.factory.on_message(data)


async def raw_recv(opts: dict) -> None:
    factory = Factory.forProtocol(RawReceiver)
    factory.on_message = Counter(opts["count"])
    port = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(factory)
    emit("PORT", port.getHost().port)


# --- throughput: the sending side


class Pump:
    """Send ``count`` messages, ``batch`` per reactor turn, pausing on backpressure.

    It is a streaming producer on a consumer: for the raw baseline the
    transport (Twisted pauses it once the user-space send buffer passes 64 KiB
    and resumes it when that buffer has drained into the kernel), for
    yotonnet the PubChannel (paused when the subscriber's credit runs out).
    Without it a sender faster than its receiver would buffer every message in
    memory (gigabytes at 64 KiB each).
    """

    def __init__(self, transport, send_one, message: bytes, count: int, batch: int) -> None:
        self.transport = transport
        self.send_one = send_one
        self.message = message
        self.left = count
        self.batch = batch
        self.paused = False
        self.scheduled = False
        self.done: defer.Deferred[dict] = defer.Deferred()
        self.t0 = self.cpu0 = 0.0
        transport.registerProducer(self, True)

    def start(self) -> defer.Deferred[dict]:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if not self.scheduled and not self.paused and self.left:
            self.scheduled = True
            reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self.scheduled = False
        n = min(self.batch, self.left)
        self.left -= n
        send, message = self.send_one, self.message
        for _ in range(n):
            send(message)
        if self.left:
            self._schedule()
        else:
            self.transport.unregisterProducer()
            self.done.callback(
                {
                    "send_seconds": time.perf_counter() - self.t0,
                    "send_cpu": time.process_time() - self.cpu0,
                }
            )

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.left = 0


async def yot_pub(opts: dict) -> None:
    ctx = context("bench-pub", opts)
    lost: defer.Deferred[None] = defer.Deferred()
    ctx.watch_links(lambda e: e.status == "closed" and not lost.called and lost.callback(None))
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    pub = yotonnet.PubChannel(ctx, CHANNEL, yotonnet.BINARY)
    await pub.wait_for_subscribers()
    message = b"x" * opts["size"]
    # The publisher is the consumer: it pauses the pump when credit runs out.
    pump = Pump(pub, pub.send, message, opts["count"], opts["batch"])
    stats = await pump.start()
    # Stay until the subscriber has everything and hangs up (or the parent gives up).
    await lost
    await ctx.close()
    finish(stats)


class RawSender(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


async def raw_send(opts: dict) -> None:
    proto = await TCP4ClientEndpoint(reactor, HOST, opts["port"]).connect(
        Factory.forProtocol(RawSender)
    )
    message = b"x" * opts["size"]
    pump = Pump(proto.transport, proto.sendString, message, opts["count"], opts["batch"])
    stats = await pump.start()
    await proto.lost
    finish(stats)


# --- round-trip latency


async def time_calls(call, payload: bytes, warmup: int, count: int) -> dict:
    """The same sequential loop for both sides: ``await call(payload)`` count times."""
    for _ in range(warmup):
        await call(payload)
    samples = []
    clock = time.perf_counter
    cpu0 = time.process_time()
    for _ in range(count):
        t0 = clock()
        reply = await call(payload)
        samples.append(clock() - t0)
    cpu = time.process_time() - cpu0
    if reply != payload:
        raise AssertionError("echo returned something else")
    samples.sort()
    return {
        "calls": count,
        "median": samples[len(samples) // 2],
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "mean": sum(samples) / len(samples),
        "min": samples[0],
        "cpu": cpu,
    }


class Echo(yotonnet.RepChannel):
    def echo(self, data: bytes) -> bytes:
        return data


def server_cpu(cpu0: float, calls: int) -> dict:
    """A server's CPU time from its first connection to the caller hanging up."""
    return {"cpu": time.process_time() - cpu0, "served": calls}


async def yot_rep(opts: dict) -> None:
    ctx = context("bench-rep", opts)
    rep = Echo(ctx, CHANNEL)
    cpu0 = [0.0]

    def watch(event) -> None:
        if event.status == "up":
            cpu0[0] = time.process_time()
        elif event.status == "closed":
            # The caller hangs up when done; then this server is finished too.
            finish(server_cpu(cpu0[0], rep.served))

    ctx.watch_links(watch)
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    emit("PORT", port.getHost().port)


async def yot_req(opts: dict) -> None:
    ctx = context("bench-req", opts)
    await ctx.connect(f"tcp:{HOST}:{opts['port']}")
    req = yotonnet.ReqChannel(ctx, CHANNEL)
    await ctx.wait_for_interest(req.channel_id, "rep")
    result = await time_calls(
        lambda p: req.call("echo", p), b"x" * opts["size"], opts["warmup"], opts["count"]
    )
    await ctx.close()
    finish(result)


class RawEcho(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.cpu0 = time.process_time()
        self.served = 0

    def stringReceived(self, data: bytes) -> None:
        self.served += 1
        self.sendString(data)

    def connectionLost(self, reason=None) -> None:
        finish(server_cpu(self.cpu0, self.served))


async def raw_echo(opts: dict) -> None:
    port = await TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(
        Factory.forProtocol(RawEcho)
    )
    emit("PORT", port.getHost().port)


class RawPing(Int32StringReceiver):
    MAX_LENGTH = 2**31 - 1

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.waiting: defer.Deferred[bytes] | None = None

    def call(self, data: bytes) -> defer.Deferred[bytes]:
        self.waiting = d = defer.Deferred()
        self.sendString(data)
        return d

    def stringReceived(self, data: bytes) -> None:
        d, self.waiting = self.waiting, None
        d.callback(data)


async def raw_ping(opts: dict) -> None:
    proto = await TCP4ClientEndpoint(reactor, HOST, opts["port"]).connect(
        Factory.forProtocol(RawPing)
    )
    result = await time_calls(proto.call, b"x" * opts["size"], opts["warmup"], opts["count"])
    proto.transport.loseConnection()
    finish(result)


ROLES = {
    "yot-sub": yot_sub,
    "yot-pub": yot_pub,
    "raw-recv": raw_recv,
    "raw-send": raw_send,
    "yot-rep": yot_rep,
    "yot-req": yot_req,
    "raw-echo": raw_echo,
    "raw-ping": raw_ping,
}


def main() -> None:
    role = ROLES[sys.argv[1]]
    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(role(OPTS)).addErrback(fail)
    )
    if OPTS.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        profiler.dump_stats(OPTS["profile"])
    else:
        reactor.run()


if __name__ == "__main__":
    main()
