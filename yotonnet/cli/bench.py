"""``yotonnet bench``: pub/sub throughput and req/rep latency through the node.

Two client contexts in this process, both linked to the node.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from typing import Any

from twisted.internet import defer, task

from ..channels import PubChannel, RepChannel, ReqChannel, SubChannel
from ..core.messages import BINARY
from ..service.config import Settings
from .exits import EXIT_OK, CliError
from .output import Progress
from .session import Session, _drained, _wait


async def cmd_bench(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    a = Session(reactor, settings, "bench-a")
    b = Session(reactor, settings, "bench-b")
    channel = f"yotonnet.bench.r{secrets.token_hex(6)}"
    progress = Progress()
    try:
        sub = SubChannel(b.ctx, channel, BINARY)
        rep = RepChannel(b.ctx, channel)
        rep.register("echo", lambda value: value)
        await b.join()
        await a.join()
        pub = PubChannel(a.ctx, channel, BINARY)
        await _wait(reactor, pub.wait_for_subscribers(), a.timeout,
                    lambda: "the benchmark subscriber never became reachable through the node")

        # pub/sub throughput: a -> node -> b
        total = args.messages
        got = 0
        finished: defer.Deferred = defer.Deferred()

        def on_message(_value: Any) -> None:
            nonlocal got
            got += 1
            if got == total and not finished.called:
                finished.callback(time.perf_counter())

        sub.subscribe(on_message)
        payload = b"x" * args.size
        start = time.perf_counter()
        for i in range(total):
            await _drained(pub)
            pub.send(payload)
            if i % 1000 == 999:
                progress.show(f"pub/sub: sent {i + 1:,}/{total:,}, received {got:,}")
                await task.deferLater(reactor, 0, lambda: None)  # let the reactor write
        try:
            end = await _wait(reactor, finished, a.timeout + total / 10000,
                              lambda: f"only {got} of {total} messages arrived")
        except CliError:
            progress.clear()
            raise
        rate = total / (end - start)

        # req/rep latency, sequential calls: a -> node -> b -> node -> a
        req = ReqChannel(a.ctx, channel, timeout=a.timeout)
        latencies = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            await req.call("echo", i)
            latencies.append((time.perf_counter() - t0) * 1e6)
            if i % 200 == 199:
                progress.show(f"req/rep: {i + 1:,}/{args.calls:,} calls")
        progress.clear()
    finally:
        await a.close()
        await b.close()
    latencies.sort()
    result = {
        "endpoint": a.endpoint,
        "pubsub": {"messages": total, "size": args.size, "seconds": round(end - start, 6),
                   "msg_per_s": round(rate, 1)},
        "reqrep": {"calls": args.calls,
                   "median_us": round(statistics.median(latencies), 1),
                   "p99_us": round(latencies[min(len(latencies) - 1,
                                                 int(len(latencies) * 0.99))], 1)},
    }
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        ps, rr = result["pubsub"], result["reqrep"]
        sys.stdout.write(
            f"pub/sub {ps['size']} B through {a.endpoint}: {ps['msg_per_s']:,.0f} msg/s "
            f"({ps['messages']:,} messages in {ps['seconds']:.3f} s)\n"
            f"req/rep round trip: median {rr['median_us']:,.0f} us, p99 {rr['p99_us']:,.0f} us "
            f"({rr['calls']:,} sequential calls)\n"
        )
    return EXIT_OK
