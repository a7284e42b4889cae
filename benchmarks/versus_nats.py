"""Child processes of bench_versus.py for NATS (nats-py on asyncio): one role per process.

Usage (bench_versus.py does this, with a ``nats-server`` it started; by hand only for
debugging)::

    python benchmarks/versus_nats.py ROLE '{"url": "nats://127.0.0.1:4222", ...}'

``nats-sub``
    subscribes to ``bench`` with a callback and pending limits off
    (``pending_msgs_limit=0, pending_bytes_limit=0``: the client queues whatever the
    server sends rather than drop it as a slow consumer), flushes (the server has the
    subscription once the PONG is back), prints ``READY``, times ``count`` messages.
``nats-pub``
    waits for ``go``, then ``await publish`` ``count`` times and a final ``flush``.
``nats-rep`` / ``nats-req``
    a replier on ``bench.rep`` that answers with ``msg.respond``, and a caller making
    sequential ``request`` calls (both through the server, which forwards each way).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nats  # noqa: E402
from versus_common import (  # noqa: E402
    CHANNEL,
    OPTS,
    STALL_TIMEOUT,
    Tally,
    cpu,
    emit,
    mark_end,
    mark_start,
    now,
    stdin_line,
    timed_calls,
)

REP_SUBJECT = CHANNEL + ".rep"


async def connect(opts: dict):
    # No reconnect: a lost connection is a failed run, not something to hide.
    return await nats.connect(opts["url"], allow_reconnect=False, max_reconnect_attempts=0)


async def read_line(word: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, stdin_line)
    if line != word:
        raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


async def sub(opts: dict) -> dict:
    nc = await connect(opts)
    count = opts["count"]
    tally = Tally(count)
    done = asyncio.get_running_loop().create_future()

    async def got(_msg) -> None:
        tally.seen += 1
        if tally.seen == 1:
            tally.first, tally.cpu0 = now(), cpu()
        elif tally.seen == count:
            done.set_result(tally.result(now(), cpu()))

    await nc.subscribe(CHANNEL, cb=got, pending_msgs_limit=0, pending_bytes_limit=0)
    await nc.flush()
    emit("READY")
    last = -1
    while not done.done():
        await asyncio.wait([done], timeout=60 if last < 0 else STALL_TIMEOUT)
        if not done.done() and tally.seen == last:
            await nc.close()
            return {"error": f"stalled after {tally.seen} of {count} messages"}
        last = tally.seen
    await nc.close()
    return done.result()


async def pub(opts: dict) -> dict:
    nc = await connect(opts)
    await read_line("go")
    message = b"x" * opts["size"]
    publish = nc.publish
    t0, cpu0 = time.perf_counter(), cpu()
    for _ in range(opts["count"]):
        await publish(CHANNEL, message)
    await nc.flush()
    stats = {"send_seconds": time.perf_counter() - t0, "send_cpu": cpu() - cpu0}
    await read_line("done")
    result = {**stats, "cpu": cpu() - cpu0, "sent": opts["count"]}
    await nc.close()
    return result


async def rep(opts: dict) -> dict:
    nc = await connect(opts)
    warmup, count, instr = opts["warmup"], opts["count"], opts.get("instr")
    state = {"served": 0, "cpu0": 0.0}
    done = asyncio.get_running_loop().create_future()

    async def answer(msg) -> None:
        state["served"] += 1
        n = state["served"] - warmup
        if n == 1:
            state["cpu0"] = cpu()
            if instr:
                mark_start()
        elif n == count + 1:
            if instr:
                mark_end()
            done.set_result({"cpu": cpu() - state["cpu0"], "served": count})
        await msg.respond(msg.data)

    await nc.subscribe(REP_SUBJECT, cb=answer)
    await nc.flush()
    emit("READY")
    result = await done
    await nc.flush()
    await nc.close()
    return result


async def req(opts: dict) -> dict:
    nc = await connect(opts)

    async def call(data: bytes) -> bytes:
        return (await nc.request(REP_SUBJECT, data, timeout=10)).data

    result = await timed_calls(call, b"x" * opts["size"], opts)
    await nc.close()
    return result


ROLES = {"nats-pub": pub, "nats-sub": sub, "nats-rep": rep, "nats-req": req}


def main() -> int:
    try:
        result = asyncio.run(ROLES[sys.argv[1]](OPTS))
    except Exception as e:  # reported to bench_versus.py, which counts the run as crashed
        import traceback

        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    emit("RESULT", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
