"""One process of the lossless-across-failures tests on real hosts (tests/test_repair_hosts.py,
benchmarks/bench_outage.py): a mesh node, or a leaf client, in one network namespace.

Run as ``python repair_peer.py '{"name": "a", ...}'``; the options (JSON):

``name``, ``node_id``
    the context's name (also its certificate's name in ``certs``) and node id;
``certs``
    a directory of ``yotonnet certs``-style files (``ca.pem``, ``NAME.pem``,
    ``NAME.key``): every link is mutual TLS with them; ``nodes`` lists the
    users (certificate common names) that are mesh nodes;
``listen``, ``peers``
    ``HOST:PORT`` to listen on with TLS, and nodes to dial (a node) once told
    ``dial`` (so that a mesh's nodes all listen before any dials);
``hubs``
    ``[HOST:PORT, ...]``: dial these as one leaf connection (each attempt
    tries them in turn: a leaf whose node dies joins the next one);
``pub``
    publish ``[seq, time.time()]`` (OBJECT) on channel ``stream``, seq 1, 2,
    ... once ``subs`` subscribers are known (and, with ``wait_start``, once told
    ``start``): ``rate`` a second, or (``rate`` 0)
    as fast as flow control lets it, from a streaming producer registered on
    the ``PubChannel`` (nothing paces it but ``pauseProducing`` /
    ``resumeProducing``);
``sub``
    a lossless ``SubChannel`` on ``stream`` taking ``pace`` messages a second
    (0: as they come), checking their order.

Every process prints ``READY`` once it has listened (or dialled), then
``STAT <json>`` every ``stat`` seconds: wall time, VmRSS (kB), the context's
counters and repair gauges, its links (peer name -> [status, which is
``quiet`` while routed around; an id of the connection]), its next hop to
every other node by name (a leaf: its hub), and every node's links with the
costs their records announce. A publisher adds ``sent``; a subscriber its
figures (``count``, ``first``, ``last``, ``dups``, ``skipped``: numbers jumped
over, ``missed`` and ``gaps`` as the ``SubChannel`` reports them,
``backlog``, ``stall``: the longest time between two deliveries so far). Its
log goes to stderr.

Commands on stdin, one a line:

``dial``
    dial ``peers``;
``start``
    (publisher with ``wait_start``) start once the subscribers are known;
``stop``
    (publisher) stop publishing; prints ``STOPPED {"sent": N, ...}``;
``after T``
    (subscriber) print ``AFTER {"seq", "published", "received"}`` for the first
    message published after wall time ``T`` once it is delivered;
``drain N``
    (subscriber) stop pacing and print ``DRAINED <figures>`` once message ``N``
    has been delivered;
``quit``
    end the process (as does the end of stdin).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from twisted.internet import defer, reactor, stdio, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

import yotonnet
from yotonnet import OBJECT, ContextConfig
from yotonnet.security.settings import Security

CHANNEL = "stream"
COUNTERS = (
    "forwarded", "producer_pauses", "repair_asked", "repair_answered", "repair_resent",
    "repair_lost", "repair_discarded", "repair_reorder_dropped",
)


def emit(tag: str, body: Any = None) -> None:
    sys.stdout.write(f"{tag} {json.dumps(body)}\n" if body is not None else f"{tag}\n")
    sys.stdout.flush()


def rss() -> int:
    """VmRSS of this process in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def security(opts: dict) -> Security:
    d = opts["certs"]
    name = opts["name"]
    return Security(
        tls_ca=os.path.join(d, "ca.pem"),
        tls_cert=os.path.join(d, f"{name}.pem"),
        tls_key=os.path.join(d, f"{name}.key"),
        nodes=list(opts.get("nodes", [])),
        # this node's local secret in the test's own directory, not the user's home
        secret_file=os.path.join(d, f"{name}.secret"),
    )


class Subscriber:
    """A lossless subscriber: every message's number checked against the last one."""

    def __init__(self, ctx: yotonnet.Context, pace: float) -> None:
        self.sub = yotonnet.SubChannel(ctx, CHANNEL, OBJECT)
        self.pace = pace
        self.t0 = 0.0
        self.k = 0
        self.count = 0
        self.first = 0
        self.last = 0
        self.dups = 0
        self.skipped = 0
        self.last_at = 0.0
        self.stall = 0.0
        self.stall_at = 0.0
        self.afters: list[float] = []
        self.drain_to: int | None = None
        self.sub.subscribe(self.on_message)

    def on_message(self, value: list) -> defer.Deferred | None:
        seq, published = value
        now = time.time()
        self.count += 1
        if not self.first:
            self.first = seq
            self.t0 = time.monotonic()
        elif seq <= self.last:
            self.dups += 1
        elif seq != self.last + 1:
            self.skipped += seq - self.last - 1
        self.last = max(self.last, seq)
        if self.last_at and now - self.last_at > self.stall:
            self.stall, self.stall_at = now - self.last_at, self.last_at
        self.last_at = now
        if self.afters and published > self.afters[0]:
            for t in [t for t in self.afters if published > t]:
                self.afters.remove(t)
                emit("AFTER", {"cut": t, "seq": seq, "published": published, "received": now})
        if self.drain_to is not None:
            if self.last >= self.drain_to:
                self.drain_to = None
                emit("DRAINED", self.figures())
            return None
        if self.pace:
            self.k += 1
            delay = self.t0 + self.k / self.pace - time.monotonic()
            if delay > 0:
                return task.deferLater(reactor, delay, lambda: None)
        return None

    def drain(self, last: int) -> None:
        self.pace = 0
        self.drain_to = last
        if self.last >= last:
            self.drain_to = None
            emit("DRAINED", self.figures())

    def figures(self) -> dict:
        return {
            "count": self.count, "first": self.first, "last": self.last, "dups": self.dups,
            "skipped": self.skipped, "missed": self.sub.missed,
            "gaps": [list(g) for g in self.sub.gaps], "backlog": self.sub.backlog,
            "stall": round(self.stall, 3), "stall_at": self.stall_at,
        }


@implementer(IPushProducer)
class Flood:
    """``while True: send([seq, time.time()])``, paced by flow control only: a streaming
    producer on the PubChannel sends up to ``batch`` messages per reactor turn while not
    paused."""

    def __init__(self, pub: yotonnet.PubChannel, batch: int = 100) -> None:
        self.pub = pub
        self.batch = batch
        self.seq = 0
        self.paused = False
        self.stopped = False
        self.resumes = 0
        self.error: str | None = None
        self._scheduled = False

    def start(self) -> None:
        self.pub.registerProducer(self, True)
        self._schedule()

    def stop(self) -> None:
        self.stopped = True
        self.pub.unregisterProducer()

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.resumes += 1
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True

    def _schedule(self) -> None:
        if not self._scheduled and not self.paused and not self.stopped:
            self._scheduled = True
            reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        try:
            for _ in range(self.batch):
                if self.paused or self.stopped:
                    return
                self.pub.send([self.seq + 1, time.time()])
                self.seq += 1
        except Exception as e:  # noqa: BLE001 - e.g. FlowControlError: reported, not hidden
            self.error = f"{type(e).__name__}: {e}"
            self.stopped = True
            return
        self._schedule()


class Paced:
    """``rate`` messages a second from a timer (the publisher of an ordinary stream)."""

    def __init__(self, pub: yotonnet.PubChannel, rate: float) -> None:
        self.pub = pub
        self.rate = rate
        self.seq = 0
        self.error: str | None = None
        self.t0 = 0.0
        self.loop = task.LoopingCall(self._tick)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.loop.start(1.0 / self.rate)

    def _tick(self) -> None:
        # On schedule even when a turn comes late: as many as are due.
        due = int((time.monotonic() - self.t0) * self.rate) + 1
        try:
            while self.seq < due:
                self.pub.send([self.seq + 1, time.time()])
                self.seq += 1
        except Exception as e:  # noqa: BLE001 - reported in STOPPED, not hidden
            self.error = f"{type(e).__name__}: {e}"
            self.stop()

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, handlers: dict) -> None:
        self.handlers = handlers

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        words = line.decode().split()
        if not words:
            return
        if words[0] == "quit":
            stop()
        elif words[0] in self.handlers:
            self.handlers[words[0]](*words[1:])

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        stop()


def stop() -> None:
    if reactor.running:
        reactor.stop()


def describe(ctx: yotonnet.Context) -> dict:
    """Links and next hops by name, for the test to find the path in use."""
    topo = ctx.topology()
    names = {n["id"]: n["name"] for n in topo["nodes"]}
    links = {}
    for link in ctx.links.values():
        status = link.status
        if status == "up" and getattr(link, "quiet", False):
            status = "quiet"
        # (which connection: the same one before and after a silent cut, a new one after
        # a reset or a re-dial)
        links[link.peer_name] = [status, id(link)]
    routes = {names.get(dest, dest): names.get(hop, hop) for dest, hop in topo["routes"].items()}
    # each node's links with the costs its record announces, as this node knows them
    graph = {n["name"]: {names.get(peer, peer): cost for peer, cost in n["links"].items()}
             for n in topo["nodes"]}
    hub = ctx.hub
    return {"links": links, "routes": routes, "graph": graph,
            "hub": hub.peer_name if hub is not None else None}


async def run(opts: dict) -> None:
    config = ContextConfig()  # default timings: heartbeat 1 s, busy_timeout 5 s
    if opts.get("window"):
        config.flow_window = int(opts["window"])
    leaf = bool(opts.get("hubs"))
    ctx = yotonnet.Context(opts["name"], reactor, config=config, node_id=opts.get("node_id"),
                           security=security(opts), role="leaf" if leaf else "node")
    handlers: dict = {}
    extra: dict = {}
    if opts.get("sub"):
        sub = Subscriber(ctx, float(opts.get("pace", 0)))
        handlers["after"] = lambda t: sub.afters.append(float(t))
        handlers["drain"] = lambda n: sub.drain(int(n))
        extra["sub"] = sub.figures
    if opts.get("listen"):
        await ctx.listen(f"tls:{opts['listen'].rsplit(':', 1)[1]}"
                         f":interface={opts['listen'].rsplit(':', 1)[0]}")

    def dial() -> None:
        for peer in opts.get("peers", []):
            ctx.connect(f"tls:{peer}")

    handlers["dial"] = dial
    if leaf:
        await ctx.connect([f"tls:{hub}" for hub in opts["hubs"]])
    stdio.StandardIO(Commands(handlers))

    def report() -> None:
        body = {"t": time.time(), "rss": rss(), **describe(ctx),
                "counters": {k: ctx.counters.get(k, 0) for k in COUNTERS},
                "repair": ctx.node.pubsub.repair.stats()}
        for key, figures in extra.items():
            body[key] = figures()
        emit("STAT", body)

    task.LoopingCall(report).start(float(opts.get("stat", 0.25)))
    emit("READY")
    if opts.get("pub"):
        pub = yotonnet.PubChannel(ctx, CHANNEL, OBJECT)
        if opts.get("wait_start"):
            go: defer.Deferred[None] = defer.Deferred()
            handlers["start"] = lambda: go.called or go.callback(None)
            await go
        await pub.wait_for_subscribers(int(opts.get("subs", 1)))
        rate = float(opts.get("rate", 0))
        source: Any = Paced(pub, rate) if rate else Flood(pub)
        extra["sent"] = lambda: source.seq

        def stopped() -> None:
            source.stop()
            emit("STOPPED", {"sent": source.seq, "error": source.error, "t": time.time(),
                             "resumes": getattr(source, "resumes", 0),
                             "pauses": ctx.counters.get("producer_pauses", 0)})

        handlers["stop"] = stopped
        source.start()
        emit("PUBLISHING", {"t": time.time()})


def main() -> None:
    opts = json.loads(sys.argv[1])
    # the node's log (links up, quiet, busy, down; gaps) on stderr, for failure messages
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)

    def crashed(failure: Any) -> None:
        emit("ERROR", failure.getTraceback())
        stop()

    def start() -> None:
        try:
            d = defer.ensureDeferred(run(opts))
        except Exception:  # noqa: BLE001 - reported like an asynchronous failure
            emit("ERROR", traceback.format_exc())
            stop()
            return
        d.addErrback(crashed)

    reactor.callWhenRunning(start)
    reactor.run()


if __name__ == "__main__":
    main()
