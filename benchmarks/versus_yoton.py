"""Child processes of bench_versus.py for Yoton 2.2, the seed's own reference.

Usage (bench_versus.py does this; by hand only for debugging)::

    python benchmarks/versus_yoton.py ROLE '{"count": 1000, ...}'

Yoton ships inside the ``pyzo`` package and imports itself as top-level ``yoton``:
this script puts pyzo's folder on ``sys.path`` (as tests/yoton_peer.py does), or
reports ``{"error": "missing: ..."}``. A Yoton bind accepts one peer, so a publisher
binds once per subscriber.

``yoton-pub``
    binds ``subscribers`` times on ``localhost:0``, prints ``PORT [ports]``, waits
    until every connection is up and for ``go``, then ``PubChannel.send`` (BINARY)
    ``count`` times (Yoton paces it: a send blocks while 64 packages wait to go out).
``yoton-sub``
    a ``SubChannel`` made before it connects (so it misses nothing), read with
    blocking ``recv`` in the main thread.
``yoton-fwd``
    the chain's middle context: connects to ``port``, binds for the next one and
    forwards (Yoton floods every package to all other connections).
``yoton-rep`` / ``yoton-req``
    a ``RepChannel`` in thread mode with an ``echo`` method and a ``ReqChannel``
    waiting on each future (payloads are 100-character strings: Yoton's calls
    encode their arguments as text).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
    summary,
)


def import_yoton():
    spec = importlib.util.find_spec("pyzo")
    where = list(spec.submodule_search_locations)[0] if spec else None
    if where is None or not os.path.isdir(os.path.join(where, "yoton")):
        raise ImportError("missing: Yoton 2.2 ships in pyzo (pip install --no-deps pyzo)")
    sys.path.insert(0, where)
    import yoton

    return yoton


def expect_line(word: str) -> None:
    line = stdin_line()
    if line != word:
        raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


def wait_connected(ctx, want: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while ctx.connection_count < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ctx.connection_count} of {want} connections")
        time.sleep(0.01)


def pub(yoton, opts: dict) -> dict:
    ctx = yoton.Context()
    channel = yoton.PubChannel(ctx, CHANNEL, yoton.BINARY)
    want = opts.get("subscribers", 1)
    ports = [ctx.bind("localhost:0").port1 for _ in range(want)]
    emit("PORT", ports)
    wait_connected(ctx, want)
    expect_line("go")
    message = b"x" * opts["size"]
    send = channel.send
    t0, cpu0 = time.perf_counter(), cpu()
    for _ in range(opts["count"]):
        send(message)
    ctx.flush(60)
    stats = {"send_seconds": time.perf_counter() - t0, "send_cpu": cpu() - cpu0}
    expect_line("done")
    return {**stats, "cpu": cpu() - cpu0, "sent": opts["count"]}


def sub(yoton, opts: dict) -> dict:
    ctx = yoton.Context()
    channel = yoton.SubChannel(ctx, CHANNEL, yoton.BINARY)
    ctx.connect(f"localhost:{opts['port']}", timeout=10)
    emit("READY")
    count = opts["count"]
    tally = Tally(count)
    recv = channel.recv
    got = 0
    while got < count:
        # recv(seconds) gives b"" when nothing came in that time
        if not recv(60.0 if got == 0 else float(STALL_TIMEOUT)):
            return {"error": f"stalled after {got} of {count} messages (Yoton drops what "
                    "queues past 10,000)"}
        got += 1
        if got == 1:
            tally.first, tally.cpu0 = now(), cpu()
    return tally.result(now(), cpu())


def fwd(yoton, opts: dict) -> None:
    ctx = yoton.Context()
    ctx.connect(f"localhost:{opts['port']}", timeout=10)
    emit("PORT", [ctx.bind("localhost:0").port1])
    stdin_line()  # forwards until bench_versus.py ends this process
    os._exit(0)


def rep(yoton, opts: dict) -> dict:
    warmup, count, instr = opts["warmup"], opts["count"], opts.get("instr")
    state = {"served": 0, "cpu0": 0.0, "result": None}

    class Echo(yoton.RepChannel):
        def echo(self, data):
            state["served"] += 1
            n = state["served"] - warmup
            if n == 1:
                state["cpu0"] = cpu()
                if instr:
                    mark_start()
            elif n == count + 1:
                if instr:
                    mark_end()
                state["result"] = {"cpu": cpu() - state["cpu0"], "served": count}
            return data

    ctx = yoton.Context()
    channel = Echo(ctx, CHANNEL)
    channel.set_mode("thread")
    emit("PORT", ctx.bind("localhost:0").port1)
    deadline = time.monotonic() + 600
    while state["result"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # let the last reply go out
    return state["result"] or {"error": f"served {state['served']} requests only"}


def req(yoton, opts: dict) -> dict:
    ctx = yoton.Context()
    channel = yoton.ReqChannel(ctx, CHANNEL)
    ctx.connect(f"localhost:{opts['port']}", timeout=10)
    payload = "x" * opts["size"]

    def call(data):
        return channel.echo(data).result(10)

    for _ in range(opts["warmup"]):
        call(payload)
    samples = []
    clock = time.perf_counter
    if opts.get("instr"):
        mark_start()
    cpu0 = cpu()
    for _ in range(opts["count"]):
        t0 = clock()
        reply = call(payload)
        samples.append(clock() - t0)
    spent = cpu() - cpu0
    if opts.get("instr"):
        mark_end()
    call(payload)
    if reply != payload:
        raise AssertionError("echo returned something else")
    return {**summary(samples), "cpu": spent}


ROLES = {"yoton-pub": pub, "yoton-sub": sub, "yoton-fwd": fwd, "yoton-rep": rep,
         "yoton-req": req}


def main() -> int:
    try:
        yoton = import_yoton()
        result = ROLES[sys.argv[1]](yoton, OPTS)
    except Exception as e:  # reported to bench_versus.py, which counts the run as crashed
        import traceback

        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    emit("RESULT", result)
    # Yoton's I/O threads would keep the process alive: leave now, the line is out.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
