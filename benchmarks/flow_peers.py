"""Child processes of the flow-control scenario: one mesh node per process.

Used by ``benchmarks/bench_flow.py`` and ``tests/test_flow_processes.py``
(one scenario, one implementation)::

    python benchmarks/flow_peers.py ROLE '{"window": 65536, ...}'

The mesh is ``P -> F -> S`` on loopback TCP (two links between the publisher
and the subscribers; ``fwd`` nodes can be chained for more), plus ``L``
dialling the forwarder next to P::

    P (pub) --> F (fwd) --> S (sub: lossless at 1,000 msg/s, latest keep=1, echo replier)
                  |
                  +-------> L (lat: latest keep=1 only)

Roles:

``sub``
    listens and prints ``PORT <n>``. Hosts on ``flow.stream`` (OBJECT
    ``[seq, time.time()]``) a lossless subscriber whose callback returns a
    Deferred due at ``t0 + k / rate`` for its k-th message (an absolute
    schedule, so it handles ``rate`` messages a second exactly, not 1 ms plus
    the reactor's overhead each), and checks the sequence (gaps, duplicates);
    a ``latest`` subscriber (keep=1) on the same channel, sampled every
    ``sample`` seconds; and the replier of ``flow.echo``.
``fwd``
    dials ``down``, then listens and prints ``PORT <n>``; it only forwards.
``lat``
    dials ``up``; a ``latest`` subscriber (keep=1) on ``flow.stream`` only,
    sampled like S's.
``pub``
    dials ``up``, waits for ``subs`` subscribers and the echo replier, then
    measures the echo round trip idle for ``idle`` seconds, prints
    ``FLOOD <json>``, publishes ``[seq, time.time()]`` as fast as flow control
    lets it for ``seconds`` seconds while probing the echo every ``probe``
    seconds, and prints ``END <json>`` (messages sent, round trips, counters).
    The publishing is a streaming producer registered on the ``PubChannel``:
    it sends up to ``batch`` messages per reactor turn while not paused, and
    nothing paces it but ``pauseProducing``/``resumeProducing`` (no sleep).

Every role prints ``STAT <json>`` every ``stat`` seconds: wall time, VmRSS and
VmHWM of this process (kB, from /proc/self/status), the context's counters
and its role's figures. Commands on stdin: ``drain <last>`` (S: stop pacing,
consume the backlog at once, print ``DRAINED <json>`` once message ``last``
has arrived), ``quit``; end of stdin ends the process too.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from typing import Any

from twisted.internet import defer, reactor, stdio, task
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

import yotonnet
from yotonnet import OBJECT, ContextConfig

HOST = "127.0.0.1"
STREAM = "flow.stream"
ECHO = "flow.echo"
COUNTERS = (
    "credit_in", "credit_out", "flow_queued", "flow_dropped", "producer_pauses", "forwarded",
)


def emit(tag: str, body: Any) -> None:
    sys.stdout.write(f"{tag} {json.dumps(body) if not isinstance(body, str | int) else body}\n")
    sys.stdout.flush()


def memory() -> dict:
    """VmRSS and VmHWM of this process in kB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key.lower()[2:]] = int(value.split()[0])
    return out


def make_context(name: str, opts: dict) -> yotonnet.Context:
    config = ContextConfig()
    if opts.get("window"):
        config.flow_window = int(opts["window"])
    return yotonnet.Context(name, config=config)


class Latest:
    """A ``latest`` subscriber (keep=1) sampled on a timer: how old is the newest value seen?"""

    def __init__(self, ctx: yotonnet.Context, sample: float) -> None:
        self.sub = yotonnet.SubChannel(ctx, STREAM, OBJECT, policy="latest", keep=1)
        self.newest_seq = 0
        self.newest_t = 0.0
        self.taken = 0
        self.stale: list[float] = []  # age of the newest value, per sample since the last STAT
        self.samples: list[tuple[float, int]] = []
        self.loop = task.LoopingCall(self._sample)
        self.loop.start(sample, now=False)

    def _sample(self) -> None:
        while self.sub.pending:
            d = self.sub.recv()  # fires at once: a message is queued
            d.addCallback(self._took)
        if self.newest_t:
            now = time.time()
            # (when, newest seq seen): the parent dates the next seq from P's turn log
            self.samples.append((round(now, 4), self.newest_seq))
            self.stale.append(round(now - self.newest_t, 4))

    def _took(self, value: list) -> None:
        self.taken += 1
        self.newest_seq, self.newest_t = value[0], value[1]

    def stat(self) -> dict:
        stale, self.stale = self.stale, []
        samples, self.samples = self.samples, []
        return {
            "latest_seq": self.newest_seq,
            "latest_taken": self.taken,
            "latest_dropped": self.sub.dropped,
            "latest_missed": self.sub.missed,
            "stale": stale,
            "samples": samples,
        }


class Lossless:
    """The slow lossless subscriber: ``rate`` messages a second, sequence checked."""

    def __init__(self, ctx: yotonnet.Context, rate: float) -> None:
        self.sub = yotonnet.SubChannel(ctx, STREAM, OBJECT)
        self.rate = rate
        self.t0 = 0.0
        self.k = 0
        self.received = 0
        self.first = 0
        self.last = 0
        self.gaps = 0  # missing messages, summed
        self.dups = 0  # a seq not above the last one
        self.drain_to: int | None = None
        self.sub.subscribe(self._on_message)

    def _on_message(self, value: list) -> defer.Deferred | None:
        seq = value[0]
        self.received += 1
        if not self.first:
            self.first = seq
            self.t0 = time.monotonic()
        elif seq <= self.last:
            self.dups += 1
        elif seq != self.last + 1:
            self.gaps += seq - self.last - 1
        self.last = max(self.last, seq)
        if self.drain_to is not None:
            if self.last >= self.drain_to:
                self._drained()
            return None
        self.k += 1
        delay = self.t0 + self.k / self.rate - time.monotonic()
        if delay > 0:
            return task.deferLater(reactor, delay, lambda: None)
        return None  # behind schedule (the reactor was busy): catch up

    def drain(self, last: int) -> None:
        self.drain_to = last
        if self.last >= last:
            self._drained()

    def _drained(self) -> None:
        if self.drain_to is not None and self.drain_to >= 0:
            self.drain_to = -1  # report once
            emit("DRAINED", self.stat())

    def stat(self) -> dict:
        return {
            "received": self.received,
            "first": self.first,
            "last": self.last,
            "gaps": self.gaps,
            "dups": self.dups,
            "backlog": self.sub.backlog,
            "missed": self.sub.missed,
            "discarded": self.sub.discarded,
        }


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, handlers: dict) -> None:
        self.handlers = handlers

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if not words:
            return
        if words[0] == "quit":
            stop()
        elif words[0] in self.handlers:
            self.handlers[words[0]](*words[1:])

    def connectionLost(self, reason: Any = None) -> None:
        stop()  # the parent went away


def stop() -> None:
    if reactor.running:
        reactor.stop()


def stat_loop(ctx: yotonnet.Context, interval: float, extra: Any) -> None:
    def report() -> None:
        counters = {k: ctx.counters.get(k, 0) for k in COUNTERS}
        emit("STAT", {"t": time.time(), **memory(), **counters, **extra()})

    task.LoopingCall(report).start(interval, now=True)


# --- roles


async def role_sub(opts: dict) -> None:
    ctx = make_context("flow-sub", opts)
    lossless = Lossless(ctx, opts.get("rate", 1000.0))
    latest = Latest(ctx, opts.get("sample", 0.02))
    rep = yotonnet.RepChannel(ctx, ECHO)
    rep.register("echo", lambda x: x)
    stdio.StandardIO(Commands({"drain": lambda last: lossless.drain(int(last))}))
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    stat_loop(ctx, opts.get("stat", 1.0), lambda: {**lossless.stat(), **latest.stat()})
    emit("PORT", port.getHost().port)


async def role_fwd(opts: dict) -> None:
    ctx = make_context("flow-fwd", opts)
    stdio.StandardIO(Commands({}))
    await ctx.connect(f"tcp:{HOST}:{opts['down']}")
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    stat_loop(ctx, opts.get("stat", 1.0), dict)
    emit("PORT", port.getHost().port)


async def role_lat(opts: dict) -> None:
    ctx = make_context("flow-lat", opts)
    latest = Latest(ctx, opts.get("sample", 0.02))
    stdio.StandardIO(Commands({}))
    await ctx.connect(f"tcp:{HOST}:{opts['up']}")
    stat_loop(ctx, opts.get("stat", 1.0), latest.stat)
    emit("READY", 1)


@implementer(IPushProducer)
class Flood:
    """Publishes ``[seq, time.time()]`` while not paused, ``batch`` per reactor turn."""

    def __init__(self, pub: yotonnet.PubChannel, batch: int) -> None:
        self.pub = pub
        self.batch = batch
        self.seq = 0
        self.paused = False
        self.stopped = False
        self.turns = 0
        self.resumes = 0
        self.error: str | None = None
        #: (time, first seq) of each turn: when each message was published, to a turn
        self.log: list[tuple[float, int]] = []
        self._scheduled = False

    def start(self) -> None:
        self.pub.registerProducer(self, True)  # paused at once if there is no credit
        self._schedule()

    def stop(self) -> None:
        self.stopped = True
        self.pub.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.resumes += 1
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True

    def _schedule(self) -> None:
        if not self._scheduled and not self.paused and not self.stopped:
            self._scheduled = True
            reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        self.turns += 1
        send = self.pub.send
        if not self.paused and not self.stopped:
            self.log.append((round(time.time(), 5), self.seq + 1))
        try:
            for _ in range(self.batch):
                if self.paused or self.stopped:
                    return
                send([self.seq + 1, time.time()])
                self.seq += 1
        except Exception as e:  # noqa: BLE001 - e.g. FlowControlError: reported, not hidden
            self.error = f"{type(e).__name__}: {e}"
            self.stopped = True
            return
        self._schedule()  # next batch after the reactor has had a turn


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
        "p99": s[min(len(s) - 1, int(0.99 * len(s)))],
        "max": s[-1],
    }


async def role_pub(opts: dict) -> None:
    ctx = make_context("flow-pub", opts)
    stdio.StandardIO(Commands({}))
    await ctx.connect(f"tcp:{HOST}:{opts['up']}")
    pub = yotonnet.PubChannel(ctx, STREAM, OBJECT)
    req = yotonnet.ReqChannel(ctx, ECHO, timeout=opts.get("call_timeout", 10.0))
    await pub.wait_for_subscribers(opts.get("subs", 2))
    await req.wait_for_responders()
    flood = Flood(pub, opts.get("batch", 100))
    probe = opts.get("probe", 0.01)
    rtts: dict[str, list[float]] = {"idle": [], "flood": []}
    failures: list[str] = []
    phase = ["idle"]
    t0 = [0.0]
    when: list[float] = []  # seconds into the flood of each flood round trip

    async def prober() -> None:
        n = 0
        while phase[0] != "done":
            n += 1
            t = time.perf_counter()
            try:
                answer = await req.echo(n)
                if answer != n:
                    failures.append(f"echo {n} answered {answer!r}")
            except Exception as e:  # noqa: BLE001 - every failure is a figure to report
                failures.append(f"{type(e).__name__}: {e}")
            else:
                if phase[0] in rtts:
                    rtts[phase[0]].append(time.perf_counter() - t)
                    if phase[0] == "flood":
                        when.append(round(t - t0[0], 3))
            await task.deferLater(reactor, probe, lambda: None)

    stat_loop(ctx, opts.get("stat", 1.0), lambda: {
        "sent": flood.seq, "paused": flood.paused, "writable": pub.writable,
        "calls": len(rtts["idle"]) + len(rtts["flood"]), "failures": len(failures),
    })
    probing = defer.ensureDeferred(prober())
    await task.deferLater(reactor, opts.get("idle", 2.0), lambda: None)
    phase[0] = "flood"
    emit("FLOOD", {"t": time.time(), **memory()})
    t0[0] = time.perf_counter()
    flood.start()
    await task.deferLater(reactor, opts.get("seconds", 30.0), lambda: None)
    flood.stop()
    seconds = time.perf_counter() - t0[0]
    phase[0] = "done"
    await probing
    emit("END", {
        "t": time.time(),
        **memory(),
        "sent": flood.seq,
        "seconds": seconds,
        "turns": flood.turns,
        "resumes": flood.resumes,
        "error": flood.error,
        "turn_log": flood.log,
        "idle_rtt": percentiles(rtts["idle"]),
        "flood_rtt": percentiles(rtts["flood"]),
        # the slowest round trips of the flood: (seconds, seconds into the flood)
        "worst_rtt": sorted(zip(rtts["flood"], when, strict=True), reverse=True)[:5],
        "calls": len(rtts["idle"]) + len(rtts["flood"]),
        "failures": failures[:10],
        "failed": len(failures),
        "counters": {k: ctx.counters.get(k, 0) for k in COUNTERS},
    })


ROLES = {"sub": role_sub, "fwd": role_fwd, "lat": role_lat, "pub": role_pub}


def main() -> None:
    role, opts = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")

    def crashed(failure: Any) -> None:
        emit("ERROR", json.dumps(failure.getTraceback()))
        sys.stderr.write(failure.getTraceback())
        stop()

    def start() -> None:
        try:
            d = defer.ensureDeferred(ROLES[role](opts))
        except Exception:  # noqa: BLE001 - reported like an asynchronous failure
            emit("ERROR", json.dumps(traceback.format_exc()))
            stop()
            return
        d.addErrback(crashed)

    reactor.callWhenRunning(start)
    reactor.run()


if __name__ == "__main__":
    main()
