"""Child processes of the mesh benchmark: one node of the A -> B -> C chain per process.

Usage (bench_mesh.py does this; by hand only for debugging)::

    python benchmarks/mesh_peers.py ROLE '{"count": 1000, ...}'

It runs every role of bench_peers.py (the chain's ends are its ``yot-sub``
and ``yot-pub``, unchanged, so chain and direct runs differ only in the node
between them) plus one of its own:

``mesh-fwd``
    the middle node B: a bare context with no channel of its own that dials
    the subscriber C (option ``port``), then listens and prints ``PORT <n>``
    for the publisher A. It only forwards. It prints ``RESULT <json>`` when
    C hangs up: the messages it forwarded, and the wall and CPU time from the
    first forwarded message to the last one (read from
    ``Context.counters["forwarded"]`` every ``POLL`` seconds, so the window is
    exact to a few milliseconds and costs nothing per message).

Options are those of bench_peers.py (``profile``, ``yotonnet_path``, ``cpu``,
``eager_writes``);
importing it parses them from this process's own command line.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_peers  # noqa: E402  (parses OPTS and sets sys.path before yotonnet loads)
from bench_peers import HOST, STALL_TIMEOUT, emit, finish  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402

import yotonnet  # noqa: E402

#: seconds between two looks at the forwarding counter
POLL = 0.005


class ForwardWatch:
    """Times the forwarding window from the context's counter, without a per-message hook."""

    def __init__(self, ctx: yotonnet.Context, count: int) -> None:
        self.ctx = ctx
        self.count = count
        self.t0 = self.cpu0 = self.t1 = self.cpu1 = None
        self.last = 0
        self.last_change = time.monotonic()
        self.loop = LoopingCall(self._look)
        self.loop.start(POLL, now=False)

    def _look(self) -> None:
        seen = self.ctx.counters["forwarded"]
        if seen != self.last:
            self.last = seen
            self.last_change = time.monotonic()
        if self.t0 is None and seen:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        if self.t1 is None and seen >= self.count:
            self.t1, self.cpu1 = time.perf_counter(), time.process_time()
            self.loop.stop()
        elif seen and time.monotonic() - self.last_change > STALL_TIMEOUT:
            self.loop.stop()
            finish({"error": f"forwarder stalled after {seen} of {self.count} messages"})

    def result(self) -> dict:
        if self.t1 is None:
            return {"error": f"forwarded {self.ctx.counters['forwarded']} of {self.count} "
                    "messages before the subscriber hung up"}
        return {
            "forwarded": self.ctx.counters["forwarded"],
            "seconds": self.t1 - self.t0,
            "cpu": self.cpu1 - self.cpu0,
            "counters": dict(self.ctx.counters),
        }


async def mesh_fwd(opts: dict) -> None:
    ctx = bench_peers.context("bench-fwd", opts)
    watch = ForwardWatch(ctx, opts["count"])
    # Listening first makes it a node from the start: a context that dials first is a
    # leaf until it listens, and then dials again as a node (closing its first link).
    port = await ctx.listen(f"tcp:0:interface={HOST}")
    downstream = await ctx.connect(f"tcp:{HOST}:{opts['port']}")

    def on_link(event) -> None:
        # The subscriber hangs up once it has everything: then this node is done too.
        if event.status == "closed" and event.link is downstream:
            if watch.loop.running:
                watch.loop.stop()
            finish(watch.result())
            ctx.close()

    ctx.watch_links(on_link)
    emit("PORT", port.getHost().port)


bench_peers.ROLES["mesh-fwd"] = mesh_fwd

if __name__ == "__main__":
    bench_peers.main()
