"""Many leaf contexts in one process, for the leaf tests on real nodes
(tests/test_leaves_processes.py).

Usage::

    python -u leaves_peer.py sub  --connect EP [--connect EP ...] --leaves N --channel NAME
    python -u leaves_peer.py call --connect EP [--connect EP ...] --leaves N --channel NAME
                                  --responders R --calls K

Leaf ``i`` is a context that only dials: it dials the ``i mod k``-th of the
``k`` endpoints given, so the leaves are spread over those nodes. Every output
line is ``WORD json``, so the test can wait for a prefix.

``sub``
    each leaf subscribes to NAME (OBJECT); once every leaf is linked and its
    node has taken its subscription, print ``JOINED {"leaves", "roles", "hubs"}``
    (``hubs``: node name -> leaves linked to it). The test then publishes
    ``[seq, text]`` messages and an end marker ``[seq, "END"]``; once every leaf
    has the end marker, print ``RESULT {"leaves", "exact", "messages", "bad"}``:
    ``exact`` counts the leaves that got the ``messages`` messages before the
    marker (the most any leaf got), once each and in order (seq 0, 1, ...);
    ``bad`` shows a few of the others.
``call``
    each leaf opens a ReqChannel on NAME and waits until R repliers are in its
    view (print ``JOINED`` as above), then makes K calls ``add(a, b)`` at once,
    which a replier answers with ``[its name, a + b]``. Once every call is
    answered, print ``RESULT {"calls", "correct", "by", "failed", "errors"}``:
    ``by`` counts the calls each replier answered; ``errors`` shows a few of the
    ``failed`` ones (wrong sums, errors).

The process raises its soft limit of open files to the hard one (a thousand
leaves are a thousand sockets) and stops by itself if its parent goes away.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections import Counter

from peer import watch_parent  # the peers' one parent check (this script's folder)
from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

import yotonnet

END = "END"


def emit(word: str, value: object) -> None:
    sys.stdout.write(f"{word} {json.dumps(value)}\n")
    sys.stdout.flush()


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def make_leaves(reactor, args) -> list[yotonnet.Context]:
    """The leaf contexts (not linked yet), closed when the reactor stops."""
    config = yotonnet.ContextConfig(reconnect_initial=0.1, reconnect_max=1.0)
    leaves = [yotonnet.Context(f"leaf-{i}", reactor, config=config) for i in range(args.leaves)]
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.DeferredList([c.close() for c in leaves])
    )
    return leaves


def joined(leaves: list[yotonnet.Context]) -> None:
    hubs = Counter(ctx.hub.peer_name if ctx.hub is not None else None for ctx in leaves)
    emit("JOINED", {
        "leaves": len(leaves),
        "roles": sorted({str(ctx.role) for ctx in leaves}),
        "hubs": {str(name): count for name, count in hubs.items()},
    })


async def run_sub(reactor, args) -> None:
    leaves = make_leaves(reactor, args)
    got: list[list[int]] = [[] for _ in leaves]
    ended: list[bool] = [False] * len(leaves)
    done = defer.Deferred()
    finished = 0

    def receiver(i: int):
        def on_message(message) -> None:
            nonlocal finished
            seq, text = message
            if text == END:
                if not ended[i]:
                    ended[i] = True
                    finished += 1
                    if finished == len(leaves):
                        done.callback(None)
            else:
                got[i].append(seq)
        return on_message

    for i, ctx in enumerate(leaves):
        yotonnet.SubChannel(ctx, args.channel, yotonnet.OBJECT).subscribe(receiver(i))
    await defer.gatherResults(
        [ctx.connect(args.connect[i % len(args.connect)]) for i, ctx in enumerate(leaves)]
    )
    await defer.gatherResults([ctx.view_settled() for ctx in leaves])
    joined(leaves)
    await done
    # every leaf's messages: seq 0, 1, ... n - 1 with n the count the longest one got
    expected = list(range(max(len(g) for g in got)))
    bad = [{"leaf": i, "count": len(g), "first": g[:5]}
           for i, g in enumerate(got) if g != expected]
    emit("RESULT", {"leaves": len(leaves), "exact": len(leaves) - len(bad),
                    "messages": len(expected), "bad": bad[:5]})


async def run_call(reactor, args) -> None:
    leaves = make_leaves(reactor, args)
    channels = [yotonnet.ReqChannel(ctx, args.channel) for ctx in leaves]
    await defer.gatherResults(
        [ctx.connect(args.connect[i % len(args.connect)]) for i, ctx in enumerate(leaves)]
    )
    await defer.gatherResults([req.wait_for_responders(args.responders) for req in channels])
    joined(leaves)
    by: Counter[str] = Counter()
    errors: list[str] = []
    correct = 0

    def check(result, a: int, b: int) -> None:
        nonlocal correct
        name, total = result
        by[name] += 1
        if total == a + b:
            correct += 1
        else:
            errors.append(f"add({a}, {b}) answered {total!r} by {name}")

    def failed(failure) -> None:
        errors.append(f"{failure.type.__name__}: {failure.getErrorMessage()}")

    calls = []
    for i, req in enumerate(channels):
        for k in range(args.calls):
            a, b = i, 1_000_000 * k
            calls.append(req.call("add", a, b).addCallbacks(check, failed, (a, b)))
    await defer.DeferredList(calls)
    emit("RESULT", {"calls": len(calls), "correct": correct, "by": dict(by),
                    "errors": errors[:5], "failed": len(errors)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["sub", "call"])
    parser.add_argument("--connect", action="append", required=True)
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--channel", default="fan")
    parser.add_argument("--responders", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1)
    args = parser.parse_args()
    raise_file_limit(args.leaves + 256)
    # Warnings and errors go to stderr, which the test shows when a wait fails (a thousand
    # leaves' link logs would only bury them).
    warnings = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)
    run = run_sub if args.role == "sub" else run_call

    def start(reactor):
        watch_parent(reactor)
        return defer.ensureDeferred(run(reactor, args)).addCallback(
            lambda _: defer.Deferred())  # serve until killed

    task.react(start)


if __name__ == "__main__":
    main()
