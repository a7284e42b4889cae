"""Scenarios for the blocking API, each run in a child process by tests/test_blocking.py.

Usage::

    python -u blocking_peer.py SCENARIO

The blocking API runs the Twisted reactor in a background thread, which must
never happen in the pytest process (trial runs the same global reactor in the
main thread). So each scenario runs here, in a fresh interpreter, like a
user's script: it drives ``yotonnet.blocking`` from plain threads and prints
one line ``RESULT <json>`` with what it observed; the test asserts on it. An
unexpected exception ends the child with a traceback on stderr and a nonzero
exit status, which the test reports.

Contexts in one scenario link to each other over real loopback TCP. Some
scenarios leave contexts open on purpose: the at-exit clean-up must still
let the process end.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import yotonnet
from yotonnet import OBJECT, blocking

#: a bound on every wait, only so that a hang fails instead of blocking
WAIT = 15.0


def emit(result: dict) -> None:
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def outcome(fn: Callable[[], Any]) -> dict:
    """What calling ``fn`` did: its value, or its exception's type, message and extras."""
    try:
        return {"value": fn()}
    except Exception as e:  # noqa: BLE001 - reported to the test
        out = {"error": type(e).__name__, "message": str(e)}
        out["is_yotonnet_error"] = isinstance(e, yotonnet.YotonnetError)
        if isinstance(e, yotonnet.RemoteError):
            out["remote_type"] = e.remote_type
            out["remote_message"] = e.remote_message
            out["has_traceback"] = "Traceback" in e.remote_traceback
        return out


def linked_pair(
    config: yotonnet.ContextConfig | None = None,
) -> tuple[blocking.Context, blocking.Context]:
    """Two blocking contexts, ``b`` dialling ``a`` over loopback TCP."""
    a = blocking.Context("a", config)
    b = blocking.Context("b", config)
    address = a.listen("tcp:0:interface=127.0.0.1")
    b.connect(f"tcp:127.0.0.1:{address.port}", timeout=WAIT)
    return a, b


def reactor_threads() -> list[dict]:
    return [
        {"name": t.name, "daemon": t.daemon}
        for t in threading.enumerate()
        if t.name == "yotonnet-reactor"
    ]


# --- scenarios


def pubsub() -> dict:
    """Pub/sub both ways across two blocking contexts, TEXT and OBJECT, recv and iteration."""
    a, b = linked_pair()
    news = blocking.SubChannel(a, "news")
    objects = blocking.SubChannel(b, "objects", OBJECT)
    pub_news = blocking.PubChannel(b, "news")
    pub_objects = blocking.PubChannel(a, "objects", message_type=OBJECT)
    pub_news.wait_for_subscribers(timeout=WAIT)
    pub_objects.wait_for_subscribers(timeout=WAIT)
    texts = [f"hello {i}" for i in range(100)]
    for text in texts:
        pub_news.send(text)
    values = [{"i": i, "list": [i, "x", None], "bytes": b"\x00\xff"} for i in range(50)]
    for value in values:
        pub_objects.send(value)
    got_texts = [news.recv(timeout=WAIT) for _ in texts[:60]]
    got_texts += [text for _, text in zip(range(40), news, strict=False)]
    got_values = [objects.recv(timeout=WAIT) for _ in values]
    topology = a.topology()
    wrong_type = outcome(lambda: pub_news.send(42))
    # Left open: the at-exit clean-up closes them and the process still ends.
    return {
        "texts_ok": got_texts == texts,
        "values_ok": got_values == values,
        "received": [len(got_texts), len(got_values)],
        "links_up": [link["status"] for link in topology["links"]],
        "peer_names": [link["peer_name"] for link in topology["links"]],
        "subscribers": pub_news.subscribers,
        "wrong_type": wrong_type,
        "pending_after": news.pending,
    }


def paced() -> dict:
    """A sender far faster than a subscriber that keeps ``max_pending`` small: the
    sender blocks (flow control through the outbox) and nothing is lost."""
    a, b = linked_pair(yotonnet.ContextConfig(flow_window=16 * 1024))
    sub = blocking.SubChannel(a, "paced", OBJECT, max_pending=100)
    pub = blocking.PubChannel(b, "paced", message_type=OBJECT)
    pub.wait_for_subscribers(timeout=WAIT)
    total = 30_000
    sent = [0]

    def send_all() -> None:
        for i in range(total):
            pub.send([i, "p" * 100])
            sent[0] += 1

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    time.sleep(1.0)  # nobody receives: the sender must be stuck well short of the end
    sent_while_stalled = sent[0]
    pending_while_stalled = sub.pending
    time.sleep(0.5)
    still_stalled = sent[0] == sent_while_stalled
    got = [sub.recv(timeout=WAIT)[0] for _ in range(total)]
    sender.join(WAIT)
    return {
        "in_order": got == list(range(total)),
        "sent_while_stalled": sent_while_stalled,
        "pending_while_stalled": pending_while_stalled,
        "still_stalled": still_stalled,
        "sender_done": not sender.is_alive(),
    }


def threads() -> dict:
    """4 threads x 10,000 messages on one publisher of one context, to a linked subscriber."""
    senders, count = 4, 10_000
    a, b = linked_pair()
    # Record which threads publish into the Twisted context: only the reactor's may.
    publishers: set[int] = set()

    def record_publishing_threads() -> None:
        original = a.context.node.pubsub.publish

        def recording(*args: Any) -> None:
            publishers.add(threading.get_ident())
            original(*args)

        a.context.node.pubsub.publish = recording

    blocking.call_in_reactor(record_publishing_threads)
    sub = blocking.SubChannel(b, "load")
    pub = blocking.PubChannel(a, "load")
    pub.wait_for_subscribers(timeout=WAIT)
    errors: list[str] = []
    start = threading.Barrier(senders)

    def send(thread: int) -> None:
        try:
            start.wait(WAIT)  # all at once, so their sends interleave
            for i in range(count):
                pub.send(f"{thread}:{i}")
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors.append(repr(e))

    workers = [threading.Thread(target=send, args=(t,)) for t in range(senders)]
    for w in workers:
        w.start()
    per_thread = [0] * senders
    out_of_order = 0
    last = [-1] * senders
    timed_out = None
    for n in range(senders * count):
        try:
            thread, i = map(int, sub.recv(timeout=WAIT).split(":"))
        except yotonnet.TimeoutError:
            timed_out = n
            break
        per_thread[thread] += 1
        if i != last[thread] + 1:
            out_of_order += 1
        last[thread] = i
    for w in workers:
        w.join(WAIT)
    extra = outcome(lambda: sub.recv(timeout=0.2))
    reactor_ident = blocking.call_in_reactor(threading.get_ident)
    a.close()
    b.close()
    return {
        "per_thread": per_thread,
        "out_of_order": out_of_order,
        "last_index": last,
        "timed_out_after": timed_out,
        "send_errors": errors,
        "extra": extra,
        "published_in_reactor_thread_only": publishers == {reactor_ident},
    }


class Math(blocking.RepChannel):
    """Served with the default worker thread: handlers may block."""

    def __init__(self, ctx: blocking.Context, name: str, **kw: Any) -> None:
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        super().__init__(ctx, name, **kw)

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def boom(self) -> None:
        raise ValueError("boom on purpose")

    def nap(self, seconds: float) -> str:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
        time.sleep(seconds)  # blocking is fine here: this is a worker thread
        with self.lock:
            self.active -= 1
        return "rested"


def reqrep() -> dict:
    """Results, remote errors, timeouts, no responders, handler threads and workers."""
    a, b = linked_pair()
    math = Math(a, "math")
    req = blocking.ReqChannel(b, "math")
    req.wait_for_responders(timeout=WAIT)
    result: dict[str, Any] = {
        "add": outcome(lambda: req.call("add", 2, 3)),
        "add_attr": outcome(lambda: req.add([1], [2])),
        "add_kwargs": outcome(lambda: req.call("add", "a", b="b")),
        "remote_error": outcome(lambda: req.boom()),
        "no_method": outcome(lambda: req.call("missing")),
        "timeout": outcome(lambda: req.call("nap", 1.0, timeout=0.3)),
    }
    # The timed-out handler still occupies the single worker for a while; the
    # next call waits its turn and succeeds.
    result["after_timeout"] = outcome(lambda: req.call("add", 1, 1, timeout=WAIT))
    nobody = blocking.ReqChannel(b, "nobody.here")
    result["no_responders"] = outcome(lambda: nobody.call("anything"))

    # Default workers=1: concurrent calls run one at a time, off the reactor thread.
    math.max_active = 0
    callers = [threading.Thread(target=req.call, args=("nap", 0.05)) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(WAIT)
    result["serial_max_active"] = math.max_active
    result["handler_threads"] = sorted(math.threads)

    # workers=3: three calls must run at once to pass the barrier.
    barrier = threading.Barrier(3)
    wide = blocking.RepChannel(a, "wide", workers=3)
    wide.register("meet", lambda: barrier.wait(WAIT) >= 0)
    wide_req = blocking.ReqChannel(b, "wide")
    wide_req.wait_for_responders(timeout=WAIT)
    met: list[Any] = []
    callers = [
        threading.Thread(target=lambda: met.append(outcome(lambda: wide_req.meet())))
        for _ in range(3)
    ]
    for t in callers:
        t.start()
    for t in callers:
        t.join(WAIT)
    result["parallel"] = met

    # A handler in a worker thread may itself use the blocking API.
    relay = blocking.RepChannel(b, "relay")
    relay.register("sum_via_math", lambda x, y: req.call("add", x, y))
    relay_req = blocking.ReqChannel(a, "relay")
    relay_req.wait_for_responders(timeout=WAIT)
    result["nested"] = outcome(lambda: relay_req.sum_via_math(20, 22))

    # Many threads calling at once each get their own answer.
    answers: dict[int, Any] = {}

    def many(k: int) -> None:
        answers[k] = [req.add(k, j) for j in range(50)]

    callers = [threading.Thread(target=many, args=(k,)) for k in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(WAIT)
    result["concurrent_ok"] = all(answers.get(k) == [k + j for j in range(50)] for k in range(8))
    a.close()
    b.close()
    result["after_close"] = outcome(lambda: req.add(1, 2))
    return result


def state() -> dict:
    """A late joiner gets the current value; changes flow both ways; wait timeouts."""
    a = blocking.Context("a")
    address = a.listen("tcp:0:interface=127.0.0.1")
    settings = blocking.StateChannel(a, "settings")
    before = settings.recv()
    settings.send({"theme": "dark"})  # set before anyone links
    b = blocking.Context("b")
    b.connect(f"tcp:127.0.0.1:{address.port}", timeout=WAIT)
    late = blocking.StateChannel(b, "settings")
    result: dict[str, Any] = {
        "before": before,
        "own_value": settings.recv(),
        "late_wait": outcome(lambda: late.wait_for_change(timeout=WAIT)),
        "late_recv": late.recv(),
        "late_no_change": outcome(lambda: late.wait_for_change(timeout=0.2)),
    }
    late.send({"theme": "light"})
    result["back"] = outcome(lambda: settings.wait_for_change(timeout=WAIT))
    result["versions_agree"] = settings.version == late.version and settings.version is not None
    # A change made between two waits is not missed.
    settings.send({"theme": "blue"})
    time.sleep(0.1)
    result["missed_nothing"] = outcome(lambda: late.wait_for_change(timeout=WAIT))
    a.close()
    b.close()
    return result


def recv_timeout() -> dict:
    """recv(timeout) raises a clear TimeoutError and loses nothing afterwards."""
    a, b = linked_pair()
    sub = blocking.SubChannel(a, "quiet")
    pub = blocking.PubChannel(b, "quiet")
    pub.wait_for_subscribers(timeout=WAIT)
    first = outcome(lambda: sub.recv(timeout=0.3))
    zero = outcome(lambda: sub.recv(timeout=0))
    pub.send("late")
    after = outcome(lambda: sub.recv(timeout=WAIT))
    a.close()
    b.close()
    return {"first": first, "zero": zero, "after": after}


def close() -> dict:
    """Closing: sent messages still arrive, blocked receivers wake, later use raises."""
    # b closes right after sending, often before it has answered a's new lossless reader
    # asking where its stream starts (yotonnet.core.repair): a holds the messages until
    # repair_wait has passed with no answer, then starts at the first it got. The same
    # wait, 1 s instead of the default 10 s.
    a, b = linked_pair(yotonnet.ContextConfig(repair_wait=1.0))
    sub = blocking.SubChannel(a, "closing")
    pub = blocking.PubChannel(b, "closing")
    pub.wait_for_subscribers(timeout=WAIT)
    for i in range(2000):
        pub.send(str(i))
    b.close()  # at once: everything sent before must still be delivered
    got = [sub.recv(timeout=WAIT) for _ in range(2000)]
    result: dict[str, Any] = {
        "delivered_before_close": got == [str(i) for i in range(2000)],
        "send_after_close": outcome(lambda: pub.send("x")),
        "connect_after_close": outcome(lambda: b.connect("tcp:127.0.0.1:1")),
        "channel_after_close": outcome(lambda: blocking.SubChannel(b, "x")),
        "close_again": outcome(lambda: b.close()),
    }
    # A thread blocked in recv() and one iterating both wake when the context closes.
    woke: list[Any] = []
    iterated: list[Any] = []
    blocked = threading.Thread(target=lambda: woke.append(outcome(lambda: sub.recv())))
    iterating = threading.Thread(target=lambda: iterated.append(list(sub)))
    blocked.start()
    iterating.start()
    time.sleep(0.2)
    a.close()
    blocked.join(WAIT)
    iterating.join(WAIT)
    result["blocked_recv"] = woke
    result["iteration_ended"] = iterated
    result["recv_after_close"] = outcome(lambda: sub.recv(timeout=1))
    # A channel closed on its own, its context still open.
    with blocking.Context("c") as c:
        own = blocking.SubChannel(c, "mine")
        own.close()
        result["channel_closed"] = outcome(lambda: own.recv(timeout=1))
        result["context_open"] = not c.closed
    result["with_closed"] = c.closed
    result["with_after"] = outcome(lambda: c.topology())
    # Connecting nowhere: a clear timeout, and dialling stops.
    d = blocking.Context("d")
    result["connect_timeout"] = outcome(lambda: d.connect("tcp:127.0.0.1:1", timeout=0.5))
    result["dialers_after"] = [x["stopped"] for x in d.topology()["dialers"]]
    result["bad_endpoint"] = outcome(lambda: d.connect("nonsense:1", timeout=1))
    d.close()
    return result


def reactor_thread() -> dict:
    """Calls from inside the reactor thread raise; one shared daemon reactor thread."""
    a, b = linked_pair()
    c = blocking.Context("c")
    sub = blocking.SubChannel(a, "x")
    pub = blocking.PubChannel(a, "x")
    req = blocking.ReqChannel(b, "inside")

    def in_reactor(fn: Callable[[], Any]) -> dict:
        # The exception is caught in the reactor thread, then reported here.
        return blocking.call_in_reactor(lambda: outcome(fn))

    result: dict[str, Any] = {
        "topology": in_reactor(lambda: a.topology()),
        "send": in_reactor(lambda: pub.send("x")),
        "recv": in_reactor(lambda: sub.recv(timeout=1)),
        "new_context": in_reactor(lambda: blocking.Context("e")),
        "close": in_reactor(lambda: a.close()),
        "still_open": not a.closed,
    }
    # A handler in the reactor thread (workers=0) that tries the blocking API.
    inside = blocking.RepChannel(a, "inside", workers=0)
    inside.register("peek", lambda: a.topology())
    inside.register("ping", lambda: "pong")
    req.wait_for_responders(timeout=WAIT)
    result["handler"] = outcome(lambda: req.peek())
    result["fast_handler"] = outcome(lambda: req.ping())
    result["reactor_threads"] = reactor_threads()
    result["same_thread"] = blocking.call_in_reactor(threading.get_ident) == next(
        t.ident for t in threading.enumerate() if t.name == "yotonnet-reactor"
    )
    for ctx in (a, b, c):
        ctx.close()
    return result


def own_reactor_thread() -> dict:
    """The program runs the reactor in a thread of its own: the blocking API uses it."""
    from twisted.internet import reactor

    mine = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True, name="mine"
    )
    mine.start()
    for _ in range(500):
        if reactor.running:
            break
        time.sleep(0.01)
    a, b = linked_pair()
    sub = blocking.SubChannel(a, "x")
    pub = blocking.PubChannel(b, "x")
    pub.wait_for_subscribers(timeout=WAIT)
    pub.send("through your reactor")
    result = {
        "message": sub.recv(timeout=WAIT),
        "runs_in_program_thread": blocking.call_in_reactor(threading.get_ident) == mine.ident,
        "reactor_threads": reactor_threads(),
        "from_program_thread": blocking.call_in_reactor(
            lambda: outcome(lambda: blocking.Context("z"))
        ),
    }
    a.close()
    b.close()
    reactor.callFromThread(reactor.stop)
    mine.join(WAIT)
    return result


def main_reactor() -> dict:
    """A Twisted program running the reactor in the main thread uses the API from threads."""
    from twisted.internet import reactor
    from twisted.internet import threads as twisted_threads

    result: dict[str, Any] = {}

    def worker() -> None:
        a, b = linked_pair()
        sub = blocking.SubChannel(a, "x")
        pub = blocking.PubChannel(b, "x")
        pub.wait_for_subscribers(timeout=WAIT)
        pub.send("from a worker")
        result["message"] = sub.recv(timeout=WAIT)
        rep = blocking.RepChannel(a, "m")
        rep.register("twice", lambda x: 2 * x)
        req = blocking.ReqChannel(b, "m")
        req.wait_for_responders(timeout=WAIT)
        result["call"] = req.twice(21)
        a.close()
        b.close()

    def start() -> None:
        result["in_reactor"] = outcome(lambda: blocking.Context("main"))
        d = twisted_threads.deferToThread(worker)
        d.addErrback(lambda f: result.setdefault("worker_error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    result["reactor_threads"] = reactor_threads()
    result["after_stop"] = outcome(lambda: blocking.Context("late"))
    return result


def stopped_reactor() -> dict:
    """A reactor that has already run and stopped: a clear error, no hang."""
    from twisted.internet import reactor

    reactor.callWhenRunning(reactor.stop)
    reactor.run()
    return {"context": outcome(lambda: blocking.Context("x"))}


SCENARIOS = {
    f.__name__: f
    for f in (
        pubsub,
        paced,
        threads,
        reqrep,
        state,
        recv_timeout,
        close,
        reactor_thread,
        own_reactor_thread,
        main_reactor,
        stopped_reactor,
    )
}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: blocking_peer.py {{{','.join(SCENARIOS)}}}")
    emit(SCENARIOS[sys.argv[1]]())


if __name__ == "__main__":
    main()
