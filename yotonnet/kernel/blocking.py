"""BlockingKernelClient: a shared kernel from code without a reactor (scripts, Qt IDEs).

Built on :mod:`yotonnet.blocking`: the :class:`~yotonnet.kernel.KernelClient`
lives in the reactor thread and every method here waits for it. Output
either goes to ``on_output`` (called in the reactor thread: keep it short)
or, by default, into a buffer read with :meth:`recv_output`; once the buffer
holds ``max_pending`` messages, the client stops taking more, which slows the
kernel down (lossless flow control), until the program reads; with
``lossless=False`` it never slows the kernel and catches up from the broker's
history instead (see :mod:`yotonnet.kernel.client`). ``on_input`` runs in a
thread of its own, so it may block (e.g. on the terminal).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from .. import blocking
from ..errors import TimeoutError
from ..mesh.context import Context
from .client import ExecuteResult, KernelClient


class BlockingKernelClient:
    """Attach to kernel ``name``: through ``context`` (a :class:`yotonnet.blocking.Context`,
    or a :class:`yotonnet.Context` running on the reactor of :mod:`yotonnet.blocking`) or
    through a new context of its own linked to ``connect`` (an endpoint string), with
    ``security`` (a :class:`yotonnet.security.Security`, when the mesh needs credentials)."""

    def __init__(
        self,
        name: str,
        *,
        connect: str | None = None,
        context: blocking.Context | Context | None = None,
        security: Any = None,
        user: str | None = None,
        on_output: Callable[[dict], Any] | None = None,
        on_input: Callable[[str, bool], str] | None = None,
        history: int | None = None,
        timeout: float = 30.0,
        max_pending: int = 10_000,
        lossless: bool = True,
    ) -> None:
        if (connect is None) == (context is None):
            raise ValueError("give exactly one of connect= (an endpoint) or context=")
        self._runner = runner = blocking.reactor_runner("BlockingKernelClient()")
        self._own: Context | None = None
        if isinstance(context, blocking.Context):
            tctx = context.context
        elif context is not None:
            tctx = context
        else:
            tctx = self._own = self._open(runner, connect, security, timeout)
        self.context = tctx
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: deque[dict] = deque()
        self._cond = threading.Condition()
        self._pace: defer.Deferred | None = None
        self._user_output = on_output
        self._user_input = on_input
        self.client: KernelClient = runner.call(
            "KernelClient()",
            lambda: KernelClient(
                tctx, name, user=user, on_output=self._on_output,
                on_input=self._on_input, history=history, timeout=timeout,
                lossless=lossless,
            ),
        )

    @property
    def caller(self) -> Any:
        """Who this client is (its user is the broker's view once attached)."""
        return self.client.caller

    @property
    def public_id(self) -> str:
        """This client's ``client`` field in the presence list."""
        return self.client.public_id
    @staticmethod
    def _open(runner: Any, endpoint: str, security: Any, timeout: float) -> Context:
        """A context of our own in the reactor thread, linked to ``endpoint``."""
        extra = {} if security is None else {"security": security}
        ctx: Context = runner.call("Context()", lambda: Context(None, runner.reactor, **extra))

        def give_up(d: Any) -> BaseException:
            last = ctx.dialers[0].last_error if ctx.dialers else None
            if d is not None:
                d.cancel()
            ctx.close()
            why = f" (last error: {last})" if last else ""
            return TimeoutError(f"could not link to {endpoint!r} within {timeout:g} s{why}")

        try:
            runner.wait(lambda: ctx.connect(endpoint), f"connect({endpoint!r})", timeout,
                        give_up)
        except BaseException:
            if not ctx.closed:
                runner.call("close()", ctx.close)
            raise
        return ctx

    def __enter__(self) -> BlockingKernelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the reactor side

    def _on_output(self, message: dict) -> Any:
        if self._user_output is not None:
            return self._user_output(message)
        with self._cond:
            self._pending.append(message)
            self._cond.notify_all()
            if len(self._pending) >= self.max_pending and self._pace is None:
                self._pace = defer.Deferred()
                return self._pace
        return None

    def _on_input(self, prompt: str, password: bool) -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        handler = self._user_input
        post = self._runner.post

        def ask() -> None:
            try:
                if handler is None:
                    raise EOFError("this client takes no input (on_input not given)")
                value = handler(prompt, password)
            except BaseException as e:  # noqa: BLE001 - goes back to the kernel as EOFError
                post(d.errback, e)
                return
            post(d.callback, value)

        threading.Thread(target=ask, name="yotonnet-kernel-input", daemon=True).start()
        return d

    # --- API

    def attach(self) -> dict[str, Any]:
        """Join the kernel (see :meth:`KernelClient.attach`)."""
        return self._runner.wait(
            lambda: defer.ensureDeferred(self.client.attach()), "attach()", self.timeout + 1
        )

    def submit(self, code: str) -> concurrent.futures.Future[ExecuteResult]:
        """Start ``code``; the future gets its :class:`ExecuteResult` (or the call's error)."""
        future: concurrent.futures.Future[ExecuteResult] = concurrent.futures.Future()

        def start() -> None:
            try:
                d = self.client.execute(code)
            except Exception as e:  # noqa: BLE001 - not attached
                future.set_exception(e)
                return
            d.addCallbacks(future.set_result, lambda f: future.set_exception(f.value))

        self._runner.check_alive()
        self._runner.post(start)
        return future

    def execute(self, code: str, timeout: float | None = None) -> ExecuteResult:
        """Run ``code`` and wait for its result (all its output delivered first)."""
        try:
            return self.submit(code).result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"execution did not finish within {timeout:g} s") from None

    def _call(self, what: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._runner.wait(fn, what, self.timeout if timeout is None else timeout)

    def interrupt(self) -> bool:
        return self._call("interrupt()", self.client.interrupt)

    def restart(self, timeout: float = 60.0) -> dict:
        return self._call("restart()", self.client.restart, timeout)

    def shutdown(self) -> bool:
        return self._call("shutdown()", self.client.shutdown)

    def complete(self, text: str) -> list[str]:
        return self._call("complete()", lambda: self.client.complete(text))

    def inspect(self, code: str, cursor_pos: int | None = None, detail: int = 0) -> dict:
        return self._call("inspect()", lambda: self.client.inspect(code, cursor_pos, detail))

    def status(self) -> dict[str, Any]:
        return self._runner.call("status()", self.client.status)

    def presence(self) -> list[dict[str, Any]]:
        return self._runner.call("presence", lambda: self.client.presence)

    def watch_status(self, callback: Callable[[dict], Any]) -> None:
        """``callback(status)`` on each change, in the reactor thread."""
        self._runner.call("watch_status()", self.client.watch_status, callback)

    def wait_for_state(self, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the kernel's state is one of ``states``; returns the status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.get("state") in states:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernel state stayed {status.get('state')!r}, not one of "
                                   f"{states}, for {timeout:g} s")
            time.sleep(0.02)

    def wait_for_seq(self, seq: int, timeout: float | None = None) -> None:
        """Wait until every output message up to ``seq`` was delivered (e.g. the history,
        with ``seq`` the ``last_seq`` that attach() returned)."""
        self._call("wait_for_seq()", lambda: self.client.wait_for_seq(seq), timeout)

    def recv_output(self, timeout: float | None = None) -> dict | None:
        """The next output message, or None when ``timeout`` passes first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending, timeout):
                return None
            message = self._pending.popleft()
            pace = self._pace
            if pace is not None and len(self._pending) <= self.max_pending // 2:
                self._pace = None
                self._runner.post(pace.callback, None)
        return message

    def detach(self) -> None:
        self._runner.wait(lambda: defer.ensureDeferred(self.client.detach()), "detach()",
                          self.timeout)

    def close(self) -> None:
        """Detach and, if this client made its context, close it."""
        try:
            if self._runner.alive():
                self.detach()
        finally:
            own, self._own = self._own, None
            if own is not None and self._runner.alive():
                self._runner.wait(own.close, "close()", 5.0)
