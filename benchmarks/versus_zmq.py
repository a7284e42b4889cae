"""Child processes of bench_versus.py for pyzmq: one role per process, no event loop.

Usage (bench_versus.py does this; by hand only for debugging)::

    python benchmarks/versus_zmq.py ROLE '{"count": 1000, ...}'

``zmq-pub``
    a PUB socket (``SNDHWM`` 0: it never drops) that binds, or connects to a proxy
    (option ``connect``), and a PULL socket on which each subscriber says it is
    ready. It prints ``PORT {"pub": n, "ready": n}``, sends ``b"h"`` every 10 ms
    until all ``subscribers`` have said so (a new subscription takes a moment to
    reach a publisher, and PUB drops what nobody has subscribed to yet), waits for
    ``go``, sends ``b"s"`` and then ``count`` messages, one ``send`` each.
``zmq-sub``
    a SUB socket (``RCVHWM`` 0) subscribed to everything: at the first ``b"h"`` it
    pushes ``ready``, skips up to ``b"s"``, then times ``count`` messages.
``zmq-proxy``
    the forwarding node of the chain: XSUB and XPUB sockets (HWM 0) joined by
    ``zmq.proxy``; prints ``PORT {"xsub": n, "xpub": n}`` and runs until ended.
``zmq-rep`` / ``zmq-req``
    REP echo and REQ caller (blocking ``send`` then ``recv`` per call).
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zmq  # noqa: E402
from versus_common import (  # noqa: E402
    HOST,
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

HELLO, START = b"h", b"s"


def port_of(sock: zmq.Socket) -> int:
    return int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])


def expect_line(word: str) -> None:
    line = stdin_line()
    if line != word:
        raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


def pub(opts: dict) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    ready = ctx.socket(zmq.PULL)
    ready.bind(f"tcp://{HOST}:0")
    if opts.get("connect"):
        sock.connect(opts["connect"])
        pub_port = 0
    else:
        sock.bind(f"tcp://{HOST}:0")
        pub_port = port_of(sock)
    emit("PORT", {"pub": pub_port, "ready": port_of(ready)})
    want, got = opts.get("subscribers", 1), 0
    deadline = time.monotonic() + 60
    while got < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {got} of {want} subscribers ready")
        sock.send(HELLO)
        if ready.poll(10):
            while ready.poll(0):
                ready.recv()
                got += 1
    expect_line("go")
    sock.send(START)
    message = b"x" * opts["size"]
    send = sock.send
    t0, cpu0 = time.perf_counter(), cpu()
    for _ in range(opts["count"]):
        send(message)
    stats = {"send_seconds": time.perf_counter() - t0, "send_cpu": cpu() - cpu0}
    expect_line("done")
    result = {**stats, "cpu": cpu() - cpu0, "sent": opts["count"]}
    sock.close(linger=0)
    ready.close(linger=0)
    ctx.term()
    return result


def sub(opts: dict) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(opts["connect"])
    ready = ctx.socket(zmq.PUSH)
    ready.connect(f"tcp://{HOST}:{opts['ready']}")
    if not sock.poll(60_000):
        raise RuntimeError("no hello from the publisher")
    sock.recv()
    ready.send(b"ready")
    emit("READY")
    while sock.recv() != START:
        pass
    count = opts["count"]
    tally = Tally(count)
    recv = sock.recv
    # A blocking recv that gives up after the stall timeout (zmq.Again): what it has.
    sock.setsockopt(zmq.RCVTIMEO, int(STALL_TIMEOUT * 1000))
    got = 0
    try:
        recv()
        got = 1
        tally.first, tally.cpu0 = now(), cpu()
        for _ in range(count - 1):
            recv()
            got += 1
    except zmq.Again:
        return {"error": f"stalled after {got} of {count} messages"}
    result = tally.result(now(), cpu())
    sock.close(linger=0)
    ready.close(linger=0)
    ctx.term()
    return result


def proxy(opts: dict) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(f"tcp://{HOST}:0")
    emit("PORT", {"xsub": port_of(xsub), "xpub": port_of(xpub)})
    # Runs until bench_versus.py ends this process (after reading its CPU time).
    threading.Thread(target=zmq.proxy, args=(xsub, xpub), daemon=True).start()
    stdin_line()
    os._exit(0)


def rep(opts: dict) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"tcp://{HOST}:0")
    emit("PORT", port_of(sock))
    recv, send = sock.recv, sock.send
    for _ in range(opts["warmup"]):
        send(recv())
    instr = opts.get("instr")
    data = recv()
    if instr:
        mark_start()
    cpu0 = cpu()
    send(data)
    for _ in range(opts["count"] - 1):
        send(recv())
    data = recv()  # the caller's closing call
    spent = cpu() - cpu0
    if instr:
        mark_end()
    send(data)
    sock.close(linger=1000)
    ctx.term()
    return {"cpu": spent, "served": opts["count"]}


def req(opts: dict) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://{HOST}:{opts['port']}")
    payload = b"x" * opts["size"]
    recv, send = sock.recv, sock.send
    for _ in range(opts["warmup"]):
        send(payload)
        recv()
    samples = []
    clock = time.perf_counter
    instr = opts.get("instr")
    if instr:
        mark_start()
    cpu0 = cpu()
    for _ in range(opts["count"]):
        t0 = clock()
        send(payload)
        reply = recv()
        samples.append(clock() - t0)
    spent = cpu() - cpu0
    if instr:
        mark_end()
    send(payload)
    recv()
    if reply != payload:
        raise AssertionError("echo returned something else")
    sock.close(linger=0)
    ctx.term()
    return {**summary(samples), "cpu": spent}


ROLES = {"zmq-pub": pub, "zmq-sub": sub, "zmq-proxy": proxy, "zmq-rep": rep, "zmq-req": req}


def main() -> int:
    try:
        result = ROLES[sys.argv[1]](OPTS)
    except Exception as e:  # reported to bench_versus.py, which counts the run as crashed
        import traceback

        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    emit("RESULT", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
