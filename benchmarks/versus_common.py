"""What every child process of bench_versus.py shares: options, report lines, markers.

No Twisted here: the pyzmq, NATS and Yoton peers import this module only, so that each
system's process loads nothing of the others.

The line protocol (stdout, one line each, read by bench_versus.py):

``PORT <n or json>``
    a listening process is ready for its peers;
``READY``
    a receiving process is subscribed (or connected) and waits for messages;
``RESULT <json>``
    the measurement of this process, printed once before it exits.

Publishers read two lines on stdin: ``go`` (every receiver is ready: start sending) and
``done`` (every receiver has every message: stop the CPU clock and report). So a
publisher's CPU time per message covers all the work it does for the messages, also
what an I/O thread or a buffered transport does after the send loop has returned.

Instruction counting (option ``instr``): a caller or replier calls :func:`mark_start`
at the start of its measured window and :func:`mark_end` at its end; bench_versus.py
runs it under ``valgrind --tool=callgrind --zero-before=getloadavg*
--dump-before=getpriority*``, so callgrind's first dump holds exactly that window
(Python calls neither libc function otherwise).
"""

from __future__ import annotations

import json
import os
import sys
import time

OPTS: dict = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
HOST = "127.0.0.1"
#: a receiver that sees no message for this long reports what it got
STALL_TIMEOUT = 20.0
CHANNEL = "bench"


def emit(tag: str, value: object = None) -> None:
    if value is None:
        print(tag, flush=True)
    else:
        print(tag, value if isinstance(value, int) else json.dumps(value), flush=True)


def cpu() -> float:
    """User + system CPU seconds of this process, all its threads (an I/O thread too)."""
    return time.process_time()


def now() -> float:
    """CLOCK_MONOTONIC: the same clock in every process, so stamps compare across them."""
    return time.monotonic()


def mark_start() -> None:
    """Callgrind zeroes its counters here (``--zero-before=getloadavg*``)."""
    os.getloadavg()


def mark_end() -> None:
    """Callgrind dumps its counters here (``--dump-before=getpriority*``)."""
    os.getpriority(os.PRIO_PROCESS, 0)


def stdin_line() -> str:
    """The next command from bench_versus.py (blocking); "" once it has hung up."""
    return sys.stdin.readline().strip()


def summary(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {
        "calls": len(samples),
        "median": samples[len(samples) // 2],
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "mean": sum(samples) / len(samples),
        "min": samples[0],
    }


class Tally:
    """A receiver's count: stamps of its first and last message and the CPU between."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.first = self.cpu0 = 0.0

    def result(self, last: float, cpu1: float) -> dict:
        return {
            "messages": self.count,
            "first": self.first,
            "last": last,
            "seconds": last - self.first,
            # n messages span n - 1 intervals between the first and the last.
            "rate": (self.count - 1) / max(last - self.first, 1e-9),
            "cpu": cpu1 - self.cpu0,
        }


async def timed_calls(call, payload: bytes, opts: dict) -> dict:
    """``warmup`` calls, ``count`` timed ones, then one more for the replier's window."""
    for _ in range(opts["warmup"]):
        await call(payload)
    samples = []
    clock = time.perf_counter
    if opts.get("instr"):
        mark_start()
    cpu0 = cpu()
    for _ in range(opts["count"]):
        t0 = clock()
        reply = await call(payload)
        samples.append(clock() - t0)
    spent = cpu() - cpu0
    if opts.get("instr"):
        mark_end()
    await call(payload)
    if reply != payload:
        raise AssertionError("echo returned something else")
    return {**summary(samples), "cpu": spent}
