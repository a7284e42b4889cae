"""Blocking API: yotonnet for programs without a Twisted reactor of their own.

Scripts, Qt IDEs and kernel processes (what Yoton users had) call
synchronous methods from any thread; the mesh itself runs on the Twisted
reactor in one background daemon thread, started on first use and shared by
every blocking context in the process. Nothing here touches a Twisted object
from the caller's thread: work goes to the reactor with
``reactor.callFromThread`` and results come back through thread-safe queues,
events and conditions.

* If the program already runs the reactor (in the main thread or another
  one), that reactor is used and no thread is started; calls from the
  reactor's own thread raise :class:`ReactorThreadError` (they would
  deadlock), so a Twisted program may use this API only from other threads.
* A reactor that has run and stopped cannot be restarted (Twisted's rule):
  :class:`ReactorUnavailable` says so.

``PubChannel.send`` encodes in the caller's thread (a later change to a
mutable value cannot race with the reactor, and a bad value raises in the
caller), then appends to the context's outbox under a lock: one total order
over all sending threads, each thread's order kept, nothing lost. The
reactor drains the outbox in batches, and stops draining while the
publisher waits for flow-control credit. The outbox is bounded, so a sender
faster than the reactor, or than the slowest lossless subscriber, blocks
instead of filling memory. A ``SubChannel`` keeps at most ``max_pending``
messages for ``recv()``; past that it takes no more, which slows the
publishers in turn. ``Context.close()`` first publishes what was sent and
waits (within its timeout) for it to leave the node.

``RepChannel`` handlers run in worker threads by default (``workers=1``:
one at a time, in arrival order): blocking-API users write blocking code,
and a handler that sleeps, does I/O or calls another channel must not stall
the reactor, which carries every other message of the process.
``workers=0`` runs them in the reactor thread: fastest, but a handler must
not block or use this API.
"""

from __future__ import annotations

import atexit
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from . import channels
from .core.messages import OBJECT, TEXT, MessageType
from .core.messages import message_type as message_type_of
from .errors import TimeoutError, YotonnetError
from .mesh import context as _context
from .mesh.link import CLOSED

__all__ = [
    "Context",
    "PubChannel",
    "SubChannel",
    "ReqChannel",
    "RepChannel",
    "StateChannel",
    "ClosedError",
    "ReactorThreadError",
    "ReactorUnavailable",
    "call_in_reactor",
]

log = Logger(namespace="yotonnet.blocking")

_UNSET: Any = object()
#: how long a blocked caller sleeps between checks that the reactor still runs
_SLICE = 1.0
#: sends queued for the reactor before send() blocks (per context)
OUTBOX_MESSAGES = 10_000
OUTBOX_BYTES = 8 * 1024 * 1024


class ClosedError(YotonnetError, RuntimeError):
    """The blocking context or channel was closed."""


class ReactorThreadError(YotonnetError, RuntimeError):
    """A blocking call was made in the reactor thread, where it would deadlock."""


class ReactorUnavailable(YotonnetError, RuntimeError):
    """The Twisted reactor cannot run (it has stopped, or would not start)."""


# --- the reactor thread


class _Runner:
    """The reactor and the thread it runs in; one per process."""

    def __init__(self, reactor: Any, thread_id: int | None, thread: threading.Thread | None):
        self.reactor = reactor
        self.thread_id = thread_id
        #: the thread this module started, or None when the program runs the reactor
        self.thread = thread

    def alive(self) -> bool:
        if self.thread is not None and not self.thread.is_alive():
            return False
        return bool(self.reactor.running)

    def check_thread(self, what: str) -> None:
        if threading.get_ident() == self.thread_id:
            raise ReactorThreadError(
                f"yotonnet.blocking: {what} was called in the Twisted reactor thread, where it "
                "would deadlock (it waits for the reactor, and the reactor would be waiting for "
                "it). In reactor code (callbacks, RepChannel handlers with workers=0) use the "
                "Twisted API (a blocking Context's .context is its yotonnet.Context), or call "
                "the blocking API from another thread."
            )

    def check_alive(self) -> None:
        if not self.alive():
            raise ReactorUnavailable(
                "yotonnet.blocking: the Twisted reactor has stopped; the blocking API cannot "
                "work without it (a stopped reactor cannot be restarted in the same process)"
            )

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.reactor.callFromThread(fn, *args)

    def wait(
        self,
        start: Callable[[], Any],
        what: str,
        timeout: float | None = None,
        on_timeout: Callable[[Any], BaseException | None] | None = None,
    ) -> Any:
        """Run ``start()`` in the reactor; return its (Deferred's) result or raise its error.

        After ``timeout`` seconds the reactor thread decides: a result that
        arrived meanwhile wins; otherwise ``on_timeout(deferred)`` runs there
        (default: cancel it) and its exception, or a TimeoutError, is raised.
        """
        self.check_thread(what)
        self.check_alive()
        done = threading.Event()
        box: list[Any] = []
        state: dict[str, Any] = {}

        def finish(result: Any) -> None:
            if not state.get("expired"):
                box.append(result)
                done.set()
            # returns None: a Failure is consumed here and raised in the caller

        def run() -> None:
            d = defer.maybeDeferred(start)
            state["d"] = d
            d.addBoth(finish)

        def expire() -> None:
            if box:
                return  # the result won the race
            state["expired"] = True
            error: BaseException | None = None
            d = state.get("d")
            try:
                if on_timeout is not None:
                    error = on_timeout(d)
                elif d is not None:
                    d.cancel()
            except Exception:  # noqa: BLE001 - the timeout is still reported
                log.failure("clean-up after a timeout of {what} failed", what=what)
            box.append(_Expired(error or TimeoutError(f"{what} timed out after {timeout:g} s")))
            done.set()

        self.post(run)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if done.wait(max(left, 0.0)):
                break
            self.check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                self.post(expire)
                while not done.wait(_SLICE):
                    self.check_alive()
                break
        result = box[0]
        if isinstance(result, _Expired):
            raise result.error
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.wait(lambda: fn(*args, **kwargs), what)


class _Expired:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_runner_lock = threading.Lock()
_runner: _Runner | None = None


def reactor_runner(what: str) -> _Runner:
    """The process's reactor runner, starting the reactor thread on first use."""
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.check_alive()
            return _runner
        from twisted.internet import reactor

        if reactor.running:
            # The program runs the reactor itself: use it from the other threads.
            runner = _Runner(reactor, threadable.ioThread, None)
            runner.check_thread(what)
        elif getattr(reactor, "_startedBefore", False):
            raise ReactorUnavailable(
                "yotonnet.blocking: the Twisted reactor of this process has already run and "
                "stopped, and a reactor cannot be restarted; use the blocking API before "
                "stopping the reactor, or in a fresh process"
            )
        else:
            runner = _start_reactor_thread(reactor)
        _runner = runner
        atexit.register(_at_exit)
        return runner


def _start_reactor_thread(reactor: Any) -> _Runner:
    ready = threading.Event()
    failed: list[BaseException] = []
    # Safe from this thread: nothing runs the reactor yet.
    reactor.callWhenRunning(ready.set)

    def run() -> None:
        try:
            # No signal handlers: only the main thread may install them, and the
            # program owns its signals.
            reactor.run(installSignalHandlers=False)
        except BaseException as e:  # noqa: BLE001 - reported to the thread that waits
            failed.append(e)
            ready.set()

    thread = threading.Thread(target=run, name="yotonnet-reactor", daemon=True)
    thread.start()
    if not ready.wait(30.0) or failed:
        reason = f"{type(failed[0]).__name__}: {failed[0]}" if failed else "no start in 30 s"
        raise ReactorUnavailable(
            f"yotonnet.blocking: could not run the Twisted reactor in a background thread "
            f"({reason}); if the program runs the reactor itself, start it before using the "
            "blocking API"
        )
    return _Runner(reactor, thread.ident, thread)


def call_in_reactor(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the reactor thread and return its result.

    If it returns a Deferred (or a coroutine), wait for it. The escape hatch
    to the Twisted API (e.g. ``ctx.context.watch_links``) from any other thread.
    """
    runner = reactor_runner("call_in_reactor()")
    return runner.call(f"call_in_reactor({getattr(fn, '__name__', fn)})", fn, *args, **kwargs)


_open_contexts: set[Context] = set()
_open_lock = threading.Lock()


def _at_exit() -> None:
    """Close the contexts still open, so what they sent is written and peers see a clean end.

    Runs after the program's non-daemon threads have ended, while the daemon
    reactor thread still runs; bounded so a stuck peer cannot hold up the exit.
    """
    runner = _runner
    if runner is None or not runner.alive() or threading.get_ident() == runner.thread_id:
        return
    with _open_lock:
        open_now = list(_open_contexts)
    for ctx in open_now:
        try:
            ctx.close(timeout=2.0)
        except Exception:  # noqa: BLE001 - nothing useful to do at exit
            pass
    if runner.thread is not None and runner.alive():
        runner.post(runner.reactor.stop)
        runner.thread.join(2.0)


# --- the context


class _Outbox:
    """Sends from any thread, queued in one order and drained by the reactor in batches."""

    def __init__(self, runner: _Runner, name: str) -> None:
        self._runner = runner
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._items: list[tuple[channels.PubChannel, bytes]] = []
        self._scheduled = False
        self._count = 0  # queued or being published, not yet handed to the links
        self._bytes = 0
        self.closed = False

    def put(self, pub: channels.PubChannel, payload: bytes) -> None:
        size = len(payload)
        with self._cond:
            # The bound: a sender faster than the reactor, or than the slowest lossless
            # subscriber (the drain stops while the publisher waits for credit), waits here.
            while (
                self._count
                and (self._count >= OUTBOX_MESSAGES or self._bytes + size > OUTBOX_BYTES)
                and not self.closed
            ):
                if not self._cond.wait(_SLICE):
                    self._runner.check_alive()
            if self.closed:
                raise ClosedError(f"yotonnet.blocking: context {self._name!r} is closed")
            self._items.append((pub, payload))
            self._count += 1
            self._bytes += size
            if not self._scheduled:
                self._scheduled = True
                self._runner.post(self._drain)

    def _drain(self) -> None:
        """Reactor thread: publish what is queued, in order, while credit lasts.

        A publisher that is not writable stops the drain: the rest stays queued
        (so senders block once the outbox is full) until its ``ready()`` fires.
        """
        with self._cond:
            items, self._items = self._items, []
        size = done = 0
        waiting: channels.PubChannel | None = None
        for pub, payload in items:
            if not (pub.closed or pub.context.closed):
                if not pub.writable:
                    waiting = pub
                    break
                try:
                    # PubChannel.send minus the encoding, done in the caller's thread.
                    pub.send_encoded(payload)
                except Exception:  # noqa: BLE001 - one bad publish must not stop the rest
                    log.failure("publishing on {name} failed", name=pub.name)
            size += len(payload)
            done += 1
        with self._cond:
            if waiting is not None:
                self._items[:0] = items[done:]
            elif self._items:
                self._runner.post(self._drain)  # sent meanwhile, while still scheduled
            else:
                self._scheduled = False
            self._count -= done
            self._bytes -= size
            self._cond.notify_all()
        if waiting is not None:
            # Still scheduled: put() posts no other drain meanwhile, keeping the order.
            waiting.ready().addBoth(lambda _: self._drain())

    def pending(self) -> int:
        """Messages queued or being published."""
        with self._cond:
            return self._count

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Context:
    """A mesh node driven from any thread: ``listen``, ``connect``, ``close``, ``topology``.

    ``role`` is as for :class:`yotonnet.Context`: by default a context that only dials
    joins as a leaf of the node it dials. ``context`` is the underlying
    :class:`yotonnet.Context`: use it only in the reactor thread (e.g. through
    :func:`call_in_reactor`).
    """

    def __init__(
        self,
        name: str | None = None,
        config: _context.ContextConfig | None = None,
        *,
        node_id: int | None = None,
        security: Any = None,
        role: str | None = None,
    ) -> None:
        self._runner = runner = reactor_runner("Context()")
        self._lock = threading.Lock()
        self._closed = False
        self._channels: list[_BlockingChannel] = []
        self.context: _context.Context = runner.call(
            "Context()",
            lambda: _context.Context(
                name, runner.reactor, config=config, node_id=node_id, security=security,
                role=role,
            ),
        )
        # Plain copies, so the caller's thread never reads the Twisted object.
        self.name: str = self.context.name
        self.node_id: int = self.context.node_id
        self.request_timeout: float = self.context.config.request_timeout
        self._outbox = _Outbox(runner, self.name)
        with _open_lock:
            _open_contexts.add(self)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<blocking.Context {self.name} {self.node_id:016x}{state}>"

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(
                f"yotonnet.blocking: {what} on context {self.name!r}, which is closed"
            )

    def listen(self, endpoint: str) -> Any:
        """Accept peers on a Twisted server endpoint string; returns the bound address.

        For ``tcp:0`` the address's ``.port`` is the port the system chose.
        """
        self._check_open("listen()")
        ctx = self.context
        return self._runner.wait(
            lambda: ctx.listen(endpoint).addCallback(lambda port: port.getHost()),
            f"listen({endpoint!r})",
        )

    def connect(self, endpoint: str, timeout: float | None = 10.0) -> dict:
        """Dial a peer and wait for the link; returns the link's info (plain data).

        Once up, the link reconnects by itself until the context closes. If it
        is not up within ``timeout`` seconds (None: wait for ever), dialling
        stops and :class:`yotonnet.TimeoutError` says why.
        """
        self._check_open("connect()")
        ctx = self.context
        dialer: list[Any] = []

        def start() -> defer.Deferred:
            known = len(ctx.dialers)
            d = ctx.connect(endpoint)
            dialer.extend(ctx.dialers[known:])  # none if the endpoint was refused at once
            return d.addCallback(lambda link: link.info())

        def give_up(d: Any) -> BaseException:
            last = None
            if dialer:
                last = dialer[0].last_error
                dialer[0].stop()
            if d is not None:
                d.cancel()
            why = f" (last error: {last})" if last else ""
            return TimeoutError(f"could not link to {endpoint!r} within {timeout:g} s{why}")

        return self._runner.wait(start, f"connect({endpoint!r})", timeout, give_up)

    def topology(self) -> dict:
        """Nodes, links, routes, dialers and channels as plain data."""
        self._check_open("topology()")
        return self._runner.call("topology()", self.context.topology)

    def close(self, timeout: float = 5.0) -> None:
        """Close every channel and link; wait (at most ``timeout`` s) for the links to end.

        Messages sent before close() are published first and written out as
        the links close. Idempotent.
        """
        self._runner.check_thread("Context.close()")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _open_lock:
            _open_contexts.discard(self)
        self._outbox.close()
        ctx = self.context
        reactor = self._runner.reactor

        outbox = self._outbox

        def shutdown() -> defer.Deferred:
            deadline = reactor.seconds() + timeout

            def outbox_published(_: Any = None) -> Any:
                # What the program sent is published (the drain may wait for credit) ...
                if outbox.pending() and reactor.seconds() < deadline:
                    return task.deferLater(reactor, 0.01, outbox_published)
                # ... and has left this node (no link holds it back for credit).
                return ctx.flushed(deadline - reactor.seconds())

            def close(_: Any) -> Any:
                links = list(ctx.links.values())

                def links_closed(_: Any) -> Any:
                    if all(link.status is CLOSED for link in links) or (
                        reactor.seconds() > deadline
                    ):
                        return None
                    return task.deferLater(reactor, 0.01, links_closed, None)

                return ctx.close().addCallback(links_closed)

            return defer.maybeDeferred(outbox_published).addCallback(close)

        try:
            if self._runner.alive():
                self._runner.call("close()", shutdown)
        finally:
            for channel in list(self._channels):
                channel._closed_by_context()

    def _add_channel(self, channel: _BlockingChannel) -> None:
        with self._lock:
            self._check_open(f"creating {type(channel).__name__}")
            self._channels.append(channel)


# --- channels


class _BlockingChannel:
    _inner: Any

    def __init__(self, ctx: Context, name: str) -> None:
        if not isinstance(ctx, Context):
            raise TypeError(
                f"a blocking channel needs a yotonnet.blocking.Context, not {type(ctx).__name__}"
            )
        ctx._check_open(f"creating {type(self).__name__}")
        self.context = ctx
        self.name = name
        self._runner = ctx._runner
        self._closed = False

    def _create(self, factory: Callable[[], Any]) -> None:
        self._inner = self._runner.call(f"{type(self).__name__}({self.name!r})", factory)
        self.context._add_channel(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(
                f"yotonnet.blocking: {what} on {type(self).__name__} {self.name!r}, which is "
                + ("closed" if not self.context.closed else "on a closed context")
            )

    def close(self) -> None:
        """Leave the channel; the mesh stops routing its messages here."""
        if self._closed:
            return
        self._runner.check_thread(f"{type(self).__name__}.close()")
        self._closed = True
        if not self.context.closed and self._runner.alive():
            self._runner.call("close()", self._inner.close)
        self._wake_on_close()

    def _closed_by_context(self) -> None:
        self._closed = True
        self._wake_on_close()

    def _wake_on_close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<blocking.{type(self).__name__} {self.name!r}>"


class PubChannel(_BlockingChannel):
    """The sending end of a pub/sub channel: ``send(message)`` from any thread."""

    def __init__(self, ctx: Context, name: str, message_type: MessageType | str = TEXT) -> None:
        super().__init__(ctx, name)
        self.message_type = mtype = message_type_of(message_type)
        self._encode = mtype.encode
        self._create(lambda: channels.PubChannel(ctx.context, name, mtype))

    def send(self, message: Any) -> None:
        """Publish one message; returns once it is queued, in order, for the reactor.

        Blocks while the context's outbox is full (the reactor is behind).
        """
        if self._closed:
            self._check_open("send()")
        self._runner.check_thread("PubChannel.send()")
        self.context._outbox.put(self._inner, self._encode(message))

    @property
    def subscribers(self) -> int:
        """How many subscribers the mesh currently knows of."""
        self._check_open("subscribers")
        return self._runner.call("subscribers", lambda: self._inner.subscribers)

    def wait_for_subscribers(self, count: int = 1, timeout: float | None = 10.0) -> None:
        """Return once ``count`` subscribers are reachable (confirmed end to end)."""
        self._check_open("wait_for_subscribers()")
        inner = self._inner
        self._runner.wait(
            lambda: inner.wait_for_subscribers(count),
            f"waiting for {count} subscriber(s) on {self.name!r}",
            timeout,
        )


class _Signal:
    """A queue entry that is not a message: an error to raise in recv()."""

    __slots__ = ("error", "final")

    def __init__(self, error: BaseException, final: bool) -> None:
        self.error = error
        self.final = final


class _InnerSub(channels.SubChannel):
    """The Twisted subscriber behind a blocking one: errors go to the blocking queue too."""

    def __init__(self, ctx: Any, name: str, mtype: MessageType, put: Callable) -> None:
        self._put = put
        super().__init__(ctx, name, mtype)
        self.subscribe(put)

    def bad_message(self, error: Exception) -> None:
        super().bad_message(error)
        self._put(_Signal(error, final=False))


class SubChannel(_BlockingChannel):
    """The receiving end: ``recv(timeout=None)`` or ``for message in sub``.

    Messages queue here from the moment the channel exists. At most
    ``max_pending`` wait for ``recv()``; past that the subscriber takes no more
    until the program catches up, so (lossless flow control) the publishers
    slow down instead of this queue growing.
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        message_type: MessageType | str = TEXT,
        max_pending: int = 10_000,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending!r}")
        super().__init__(ctx, name)
        self.message_type = mtype = message_type_of(message_type)
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._count_lock = threading.Lock()
        self._untaken = 0
        self._gate: defer.Deferred[None] | None = None
        self._create(lambda: _InnerSub(ctx.context, name, mtype, self._put))

    def _put(self, message: Any) -> defer.Deferred[None] | None:
        """Reactor thread: hand one message over; a Deferred (paused) once the queue is full."""
        self._queue.put(message)
        if type(message) is _Signal:
            return None
        with self._count_lock:
            self._untaken += 1
            if self._untaken >= self.max_pending:
                self._gate = defer.Deferred()
                return self._gate
        return None

    def _taken(self) -> None:
        """Any thread: one message left the queue; reopen the gate at half full."""
        with self._count_lock:
            self._untaken -= 1
            gate = self._gate
            if gate is None or self._untaken > self.max_pending // 2:
                return
            self._gate = None
        self._runner.post(gate.callback, None)

    def recv(self, timeout: float | None = None) -> Any:
        """The next message; waits at most ``timeout`` seconds (None: for ever).

        Raises :class:`yotonnet.TimeoutError` when none came in time,
        :class:`ClosedError` once the channel or its context is closed, and
        :class:`yotonnet.MessageTypeError` or :class:`yotonnet.DecodeError`
        for a message this end cannot read.
        """
        if self._closed:
            self._check_open("recv()")
        self._runner.check_thread("SubChannel.recv()")
        q = self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            try:
                item = q.get(timeout=max(left, 0.0))
                break
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"no message on channel {self.name!r} within {timeout:g} s"
                    ) from None
                self._runner.check_alive()
        if type(item) is _Signal:
            if item.final:
                q.put(item)  # wake every other thread waiting here too
            raise item.error
        self._taken()
        return item

    @property
    def pending(self) -> int:
        """Messages received and not yet taken by ``recv()``."""
        return self._queue.qsize()

    def __iter__(self) -> SubChannel:
        return self

    def __next__(self) -> Any:
        """The next message; iteration ends when the channel or its context closes."""
        try:
            return self.recv()
        except ClosedError:
            raise StopIteration from None

    def _wake_on_close(self) -> None:
        self._queue.put(
            _Signal(ClosedError(f"yotonnet.blocking: channel {self.name!r} is closed"), True)
        )


class ReqChannel(_BlockingChannel):
    """The calling end: ``req.call("method", *args, **kwargs)`` or ``req.method(*args)``.

    ``timeout`` (seconds, None: for ever) defaults to the context's
    ``request_timeout``; ``call(..., timeout=...)`` overrides it per call
    (so a remote keyword argument named ``timeout`` cannot be passed).
    """

    def __init__(self, ctx: Context, name: str, timeout: float | None = _UNSET) -> None:
        super().__init__(ctx, name)
        self.timeout: float | None = ctx.request_timeout if timeout is _UNSET else timeout
        self._create(lambda: channels.ReqChannel(ctx.context, name, self.timeout))

    def call(self, method: str, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Call ``method`` on one replier and return its result.

        Raises what the Twisted API fails with: :class:`yotonnet.RemoteError`
        (the handler raised), :class:`yotonnet.TimeoutError`,
        :class:`yotonnet.NoResponders`, :class:`yotonnet.ConnectionLost`.
        """
        if self._closed:
            self._check_open("call()")
        limit = self.timeout if timeout is _UNSET else timeout
        inner = self._inner

        def start() -> defer.Deferred:
            # The timeout is read synchronously by call(): set it for this call only.
            inner.timeout = limit
            return inner.call(method, *args, **kwargs)

        # The reactor side enforces the timeout, and its expiry cleans the call table.
        return self._runner.wait(start, f"call {self.name!r}.{method}()")

    @property
    def responders(self) -> int:
        """How many repliers the mesh currently knows of."""
        self._check_open("responders")
        return self._runner.call("responders", lambda: self._inner.responders)

    def wait_for_responders(self, count: int = 1, timeout: float | None = 10.0) -> None:
        """Return once ``count`` repliers are reachable (e.g. right after connect())."""
        self._check_open("wait_for_responders()")
        inner = self._inner
        self._runner.wait(
            lambda: inner.wait_for_responders(count),
            f"waiting for {count} replier(s) on {self.name!r}",
            timeout,
        )

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self.call, method)


class _InnerRep(channels.RepChannel):
    """The Twisted replier behind a blocking one: looks handlers up on the blocking end."""

    def __init__(self, ctx: Any, name: str, outer: RepChannel) -> None:
        self._outer = outer
        super().__init__(ctx, name)

    def handler_for(self, method: str) -> Callable[..., Any]:
        self._outer._find(method)  # raises AttributeError, reported to the caller
        # Resolved again at each call, so register() takes effect without a cache flush.
        return functools.partial(self._outer._dispatch, method)


class RepChannel(_BlockingChannel):
    """The serving end: subclass it (public methods are callable) or ``register(name, fn)``.

    ``workers`` (default 1): handlers run in that many worker threads of the
    reactor's thread pool at most, calls beyond that waiting in arrival
    order; with 1 a handler needs no locking against itself. They may block
    and use this API (a handler calling its own channel needs workers >= 2).
    ``workers=0`` runs handlers in the reactor thread: fastest, but they must
    not block, may return Deferreds, and must use the Twisted API.
    """

    _pool_lock = threading.Lock()
    _workers_total = 0

    def __init__(self, ctx: Context, name: str, *, workers: int = 1) -> None:
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers is an int >= 0, not {workers!r}")
        super().__init__(ctx, name)
        self.workers = workers
        self._handlers: dict[str, Callable[..., Any]] = {}
        reactor = self._runner.reactor
        self._limit = defer.DeferredSemaphore(workers) if workers else None
        with RepChannel._pool_lock:
            needed = RepChannel._workers_total + workers + 5  # spare threads: name lookups

        def create() -> _InnerRep:
            if workers:
                # Enough pool threads for every worker asked for, so handlers of one
                # channel never wait for another channel's blocked handlers.
                pool = reactor.getThreadPool()
                if pool.max < needed:
                    pool.adjustPoolsize(maxthreads=needed)
            return _InnerRep(ctx.context, name, self)

        self._create(create)
        with RepChannel._pool_lock:
            RepChannel._workers_total += workers

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Serve ``fn`` as method ``name``."""
        self._handlers[name] = fn  # a dict store is atomic; read at each call

    def _find(self, method: str) -> Callable[..., Any]:
        fn = self._handlers.get(method)
        if fn is not None:
            return fn
        if isinstance(method, str) and not method.startswith("_") and not hasattr(
            RepChannel, method
        ):
            fn = getattr(self, method, None)
            if callable(fn):
                return fn
        raise AttributeError(f"replier on channel {self.name!r} has no method {method!r}")

    def _dispatch(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Reactor thread: run one handler where this channel's handlers run."""
        if self._limit is None:
            return self._find(method)(*args, **kwargs)
        reactor = self._runner.reactor
        return self._limit.run(
            threads.deferToThreadPool,
            reactor,
            reactor.getThreadPool(),
            lambda: self._find(method)(*args, **kwargs),
        )

    def close(self) -> None:
        was_open = not self._closed
        super().close()
        if was_open:
            self._release_workers()

    def _closed_by_context(self) -> None:
        if not self._closed:
            self._release_workers()
        super()._closed_by_context()

    def _release_workers(self) -> None:
        with RepChannel._pool_lock:
            RepChannel._workers_total -= self.workers


class _InnerState(channels.StateChannel):
    """The Twisted state end behind a blocking one: tells it of every change."""

    def __init__(self, ctx: Any, name: str, mtype: MessageType, outer: StateChannel) -> None:
        self._outer = outer
        super().__init__(ctx, name, mtype)

    def changed(self, tag: int, payload: bytes) -> None:
        super().changed(tag, payload)
        self._outer._set_latest(self.version, tag, payload)


class StateChannel(_BlockingChannel):
    """One value per channel, last writer wins: ``send(value)``, ``recv()``,
    ``wait_for_change(timeout)``; a late joiner gets the current value."""

    def __init__(self, ctx: Context, name: str, message_type: MessageType | str = OBJECT) -> None:
        super().__init__(ctx, name)
        self.message_type = mtype = message_type_of(message_type)
        self._cond = threading.Condition()
        # (version, tag, payload) of the newest value, set in the reactor thread
        self._latest: tuple[Any, int, bytes] | None = None
        self._seen: Any = None  # version last returned to the user

        def create() -> _InnerState:
            inner = _InnerState(ctx.context, name, mtype, self)
            current = ctx.context.node.state.current(inner.channel_id)
            if current is not None:  # another local end already holds a value
                self._set_latest(*current)
            return inner

        self._create(create)

    def _set_latest(self, version: Any, tag: int, payload: bytes) -> None:
        with self._cond:
            self._latest = (version, tag, payload)
            self._cond.notify_all()

    def send(self, value: Any) -> None:
        """Set the channel's value everywhere; returns once it is set here."""
        self._check_open("send()")
        self._runner.call(f"StateChannel({self.name!r}).send()", self._inner.send, value)

    def recv(self) -> Any:
        """The current value, at once (None before anyone set one)."""
        self._check_open("recv()")
        inner = self._inner
        version, value = self._runner.call(
            f"StateChannel({self.name!r}).recv()", lambda: (inner.version, inner.recv())
        )
        with self._cond:
            self._seen = version
        return value

    @property
    def version(self) -> tuple[int, int] | None:
        """(Lamport time, writer node id) of the current value, None before any."""
        with self._cond:
            return self._latest[0] if self._latest else None

    def wait_for_change(self, timeout: float | None = None) -> Any:
        """The value, once it differs from the one this end last returned.

        Returns at once if the channel holds a value this end has not returned
        yet (so a late joiner calls this to wait for the current value). Any
        change counts, this end's own send() too. Raises
        :class:`yotonnet.TimeoutError` after ``timeout`` seconds.
        """
        self._check_open("wait_for_change()")
        self._runner.check_thread("StateChannel.wait_for_change()")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (
                self._latest is None or self._latest[0] == self._seen
            ) and not self._closed:
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(
                        f"state channel {self.name!r} did not change within {timeout:g} s"
                    )
                if not self._cond.wait(left):
                    self._runner.check_alive()
            self._check_open("wait_for_change()")
            assert self._latest is not None
            version, tag, payload = self._latest
            self._seen = version
        mtype = self.message_type
        if tag != mtype.tag:
            raise self._inner.mismatch(tag)  # builds the message only: no Twisted state
        return mtype.decode(payload)

    def _wake_on_close(self) -> None:
        with self._cond:
            self._cond.notify_all()
