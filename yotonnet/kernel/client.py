"""KernelClient: use a shared kernel from a Twisted program (an IDE, a script, a console).

::

    client = KernelClient(ctx, "k1", on_output=show)
    await client.attach()                 # history first, then live output
    result = await client.execute("1 + 1")
    result.value                          # '2'

Output arrives through ``on_output(message)`` (see
:mod:`yotonnet.kernel.protocol` for the message fields) exactly once each,
in order, whether it came live or from the broker's history: the client
subscribes first, then fetches the history, and fetches again whenever a
sequence number is skipped (a reconnect, a late subscription). When
``execute()`` fires, every message of that execution has been delivered.
If ``on_output`` returns a Deferred, the next message waits for it, which
slows the kernel down to this client's pace (lossless flow control).

A client made with ``lossless=False`` never slows the kernel (or the other
consoles) down, however far behind it falls, e.g. a viewer on a slow link or
one whose program stopped reading: while it lags, only the newest ``keep``
live messages wait for it, and once it catches up the messages in between
come from the broker's history, still each once and in order (those the
bounded history no longer holds are reported as lost).

``status()`` combines the three signals: the kernel ``state`` and its
``process`` and ``interpreter`` parts from the broker, and ``link``: whether
the broker is reachable from here right now ("up"/"down"; while it is down,
the rest is the last thing the broker said).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import errors
from ..channels import RepChannel, ReqChannel, StateChannel, SubChannel
from ..channels.pubsub import LATEST, LOSSLESS
from ..core.messages import OBJECT
from ..core.names import printable
from ..core.routing import REP
from ..mesh.context import Context
from . import protocol as p
from .roles import Caller, default_user

log = Logger(namespace="yotonnet.kernel.client")

InputHandler = Callable[[str, bool], Any]


class KernelExecutionError(errors.YotonnetError):
    """Code run in the kernel raised; ``result`` holds type, message and traceback."""

    def __init__(self, result: ExecuteResult) -> None:
        super().__init__(f"{result.error_type}: {result.message}")
        self.result = result


@dataclass(frozen=True)
class ExecuteResult:
    """What one execution ended with."""

    id: int
    user: str
    status: str  # "ok" or "error"
    #: repr of the value of a final expression, or None
    value: str | None = None
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    last_seq: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_error(self) -> ExecuteResult:
        if not self.ok:
            raise KernelExecutionError(self)
        return self

    @classmethod
    def from_reply(cls, reply: dict) -> ExecuteResult:
        return cls(
            id=reply.get("id", 0), user=reply.get("user", ""), status=reply.get("status", "error"),
            value=reply.get("value"), error_type=reply.get("type"),
            message=reply.get("message"), traceback=reply.get("traceback"),
            last_seq=reply.get("last_seq") or 0,
        )


#: seconds before a failed history fetch that someone waits for is tried again
FETCH_RETRY = 0.5


def login_of(context: Context) -> str | None:
    """The user a node we dialled says we logged in as (None: not authenticated)."""
    for link in list(context.links.values()):
        user = getattr(link, "authenticated_as", None)
        if user:
            return user
    return None


def _no_input(prompt: str, password: bool) -> str:
    raise EOFError("this client takes no input (give KernelClient an on_input handler)")


class KernelClient:
    """One attachment to kernel ``name`` through ``context``.

    ``user`` is who this client says it is (default: the user its link
    logged in as, else ``user@host``). Where the mesh authenticates, the
    broker goes by the login, whatever is claimed, and :meth:`attach` sets
    ``caller.user`` to the name the broker knows this client by.
    ``on_input(prompt, password)`` answers ``input()`` of code this client
    ran (a str, or a Deferred of one). ``history`` bounds how many past
    messages to fetch on attach (None: all the broker holds). ``lossless``
    (default True) lets this client's pace slow the kernel down; False makes
    it catch up from the history instead (see the module docstring), keeping
    at most ``keep`` live messages while it lags.
    """

    def __init__(
        self,
        context: Context,
        name: str,
        *,
        user: str | None = None,
        on_output: Callable[[dict], Any] | None = None,
        on_input: InputHandler | None = None,
        history: int | None = None,
        timeout: float = 30.0,
        link_check: float = 0.25,
        lossless: bool = True,
        keep: int = 1000,
    ) -> None:
        self.context = context
        self.reactor = context.reactor
        self.name = p.validate_kernel_name(name)
        self.caller = Caller(user or login_of(context) or default_user(),
                             secrets.token_hex(8), node=context.node_id)
        self.on_output = on_output
        self.on_input: InputHandler = on_input or _no_input
        self.history_limit = history
        self.lossless = lossless
        self.keep = keep
        self.timeout = timeout
        self.names = p.channel_names(name)
        self.role: str | None = None
        self.attached = False
        self.link = "down"
        self._status_watchers: list[Callable[[dict], Any]] = []
        self._presence_watchers: list[Callable[[list], Any]] = []
        self._seq_waiters: list[tuple[int, defer.Deferred]] = []
        self._fetch_retry: Any = None
        # the Deferred of the message on_output is busy with, and what waits behind it
        self._pace: defer.Deferred | None = None
        self._backlog: deque[dict] = deque()
        #: the seq of the last output message given to on_output
        self.shown = 0
        self.merger = p.OutputMerger(self._deliver, self._fetch, self._lost)
        self._link_check = link_check
        self._link_loop: LoopingCall | None = None
        self._channels: list[Any] = []
        self.output: SubChannel | None = None

    # --- attach / detach

    async def attach(self) -> dict[str, Any]:
        """Join: subscribe, announce ourselves, fetch the history. Returns the broker's
        answer (``role``, ``status``, ``presence``)."""
        ctx = self.context
        if self.output is None:
            self.output = SubChannel(
                ctx, self.names["output"], OBJECT,
                policy=LOSSLESS if self.lossless else LATEST, keep=self.keep,
            )
            self.output.subscribe(self._on_live)
            self.status_channel = StateChannel(ctx, self.names["status"])
            self.status_channel.subscribe(self._on_status)
            self.presence_channel = StateChannel(ctx, self.names["presence"])
            self.presence_channel.subscribe(self._on_presence)
            self.input_channel = RepChannel(
                ctx, p.client_channel_name(self.name, self.caller.client)
            )
            self.input_channel.register("input", self._answer_input)
            self.control = ReqChannel(ctx, self.names["control"], timeout=self.timeout)
            # executions and restarts may take any time: no deadline, but they fail when
            # the broker becomes unreachable
            self.long_control = ReqChannel(ctx, self.names["control"], timeout=None)
            self._channels = [self.output, self.status_channel, self.presence_channel,
                              self.input_channel, self.control, self.long_control]
        d = self.control.wait_for_responders()
        d.addTimeout(self.timeout, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            raise errors.TimeoutError(
                f"no broker of kernel {self.name!r} is reachable within {self.timeout:g} s; "
                f"is `yotonnet kernel {self.name}` running on the mesh?"
            ) from None
        info = await self.control.call("attach", self.caller.to_wire())
        self.role = info["role"]
        user = info.get("user")
        if isinstance(user, str) and user and user != self.caller.user:
            # Who the broker knows us as (its authenticated view beats our claim).
            self.caller = replace(self.caller, user=user)
        self.attached = True
        self.link = "up"
        if not self.merger.started:
            self.merger.start(None)
        if self._link_loop is None:
            self._link_loop = LoopingCall(self._check_link)
            self._link_loop.clock = self.reactor
            self._link_loop.start(self._link_check, now=False)
        return info

    async def detach(self) -> None:
        """Leave: the others see us go; our channels close."""
        if self._link_loop is not None and self._link_loop.running:
            self._link_loop.stop()
        if self._fetch_retry is not None and self._fetch_retry.active():
            self._fetch_retry.cancel()
        if self.attached and self.link == "up" and not self.context.closed:
            try:
                await self.control.call("detach", self.caller.to_wire())
            except errors.YotonnetError:
                pass
        self.attached = False
        for chan in self._channels:
            chan.close()
        for _, d in self._seq_waiters:
            d.errback(errors.ConnectionLost("kernel client detached"))
        self._seq_waiters = []

    # --- operations

    def execute(self, code: str, parent: dict | None = None) -> defer.Deferred[ExecuteResult]:
        """Run ``code``; fires with its :class:`ExecuteResult` once every message of it
        has been delivered to ``on_output``. ``parent`` (a Jupyter message header, see
        :mod:`yotonnet.kernel.frontend`) goes out with the code's ``execute`` record."""
        self._check_attached()
        args = (self.caller.to_wire(), code) if parent is None else \
            (self.caller.to_wire(), code, parent)
        d = self.long_control.call("execute", *args)

        def done(reply: dict) -> Any:
            result = ExecuteResult.from_reply(reply)
            return self.wait_for_seq(result.last_seq).addCallback(lambda _: result)

        return d.addCallback(done)

    def interrupt(self) -> defer.Deferred[bool]:
        """SIGINT to the running code (KeyboardInterrupt); True if something ran."""
        self._check_attached()
        return self.control.call("interrupt", self.caller.to_wire())

    def restart(self) -> defer.Deferred[dict]:
        """Kill and restart the kernel (a fresh namespace); fires with the status once
        idle. Owner only by default."""
        self._check_attached()
        return self.long_control.call("restart", self.caller.to_wire())

    def shutdown(self) -> defer.Deferred[bool]:
        """End the kernel and its broker's service. Owner only by default."""
        self._check_attached()
        return self.control.call("shutdown", self.caller.to_wire())

    def complete(self, text: str) -> defer.Deferred[list[str]]:
        """Names in the kernel's namespace that start with ``text`` (``os.pa`` works)."""
        self._check_attached()
        return self.control.call("complete", self.caller.to_wire(), text)

    def inspect(self, code: str, cursor_pos: int | None = None,
                detail: int = 0) -> defer.Deferred[dict]:
        """What the kernel knows of the name at ``cursor_pos`` of ``code`` (default: the
        end), as Jupyter's inspect: ``{"found", "text", "data", "metadata"}``, with
        ``text`` for a terminal and ``data`` the kernel's MIME bundle; ``detail=1`` asks
        for more (e.g. the source)."""
        self._check_attached()
        return self.control.call("inspect", self.caller.to_wire(), code, cursor_pos, detail)

    def kernel_info(self) -> defer.Deferred[dict]:
        """What the kernel says of itself: the content of a Jupyter ``kernel_info_reply``
        (``language_info``, ``banner``, ``implementation``...), for any kind of kernel."""
        self._check_attached()
        return self.control.call("kernel_info", self.caller.to_wire())

    def status(self) -> dict[str, Any]:
        """The broker's last status plus this client's ``link`` ("up"/"down")."""
        status = dict(self.status_channel.recv() or {"state": "unknown"}) if self.output else {}
        status["link"] = self.link
        return status

    @property
    def public_id(self) -> str:
        """This client's ``client`` field in the presence list."""
        return p.public_client_id(self.caller.client)

    @property
    def presence(self) -> list[dict[str, Any]]:
        """Who is attached: ``[{"user", "client", "role"}, ...]`` in joining order
        (``client`` is each client's :attr:`public_id`, never its secret id)."""
        return list(self.presence_channel.recv() or []) if self.output else []

    def watch_status(self, callback: Callable[[dict], Any]) -> None:
        """``callback(status())`` on every change of the broker's status or of the link."""
        self._status_watchers.append(callback)

    def watch_presence(self, callback: Callable[[list], Any]) -> None:
        self._presence_watchers.append(callback)

    def wait_for_seq(self, seq: int) -> defer.Deferred[None]:
        """Fires once every output message up to ``seq`` was delivered."""
        if self._done_up_to() >= seq:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._seq_waiters.append((seq, d))
        self.merger.want(seq)
        return d

    # --- internals

    def _check_attached(self) -> None:
        if not self.attached:
            raise RuntimeError(f"kernel client of {self.name!r} is not attached; "
                               "await attach() first")

    def _on_live(self, message: Any) -> Any:
        self.merger.on_live(message)
        # While the program is busy with a message, the live channel holds the next ones
        # (lossless: that slows the kernel; latest: only the newest `keep` wait).
        return self._pace

    def _deliver(self, message: dict) -> None:
        """The merger's next message (live or from the history), in order."""
        if self._pace is not None:
            self._backlog.append(message)  # after the one the program is still busy with
        else:
            self._show(message)

    def _show(self, message: dict) -> None:
        if self.on_output is not None:
            try:
                result = self.on_output(message)
            except Exception:  # noqa: BLE001 - a bad callback must not stop the stream
                log.failure("on_output callback failed")
                result = None
            if isinstance(result, defer.Deferred) and not result.called:
                self._pace = result
                result.addBoth(self._paced)
        seq = message["seq"]
        if seq is not None:
            self.shown = seq
        if self._seq_waiters and seq is not None:
            self._fire_waiters(seq)

    def _paced(self, result: Any) -> Any:
        """The program is done with a message: show what waited meanwhile."""
        self._pace = None
        while self._backlog and self._pace is None:
            self._show(self._backlog.popleft())
        return result

    def _fetch(self, since: int | None) -> None:
        last = self.history_limit if since is None else None
        d = self.control.call("history", self.caller.to_wire(), since, last)

        def got(reply: dict) -> None:
            self.merger.on_history(reply)
            if not self.merger.fetching:
                self._release_waiters()

        def failed(failure: Failure) -> None:
            log.warn("kernel {name}: history fetch failed: {why}", name=self.name,
                     why=printable(failure.getErrorMessage(), 1000))  # the broker's words
            self.merger.on_fetch_failed()
            retry = self._fetch_retry
            if self._seq_waiters and self.attached and not (retry and retry.active()):
                # Someone waits for what it would have brought, and no live message may
                # come to try again (the kernel may be done): try again shortly.
                self._fetch_retry = self.reactor.callLater(FETCH_RETRY, self._retry_fetch)

        d.addCallbacks(got, failed)

    def _retry_fetch(self) -> None:
        if self.attached and self.link == "up" and not self.context.closed:
            self._release_waiters()

    def _done_up_to(self) -> int:
        """The seq up to which every message was delivered or is not wanted (before the
        history this client asked for, e.g. ``history=0``): while nothing waits behind a
        busy ``on_output``, everything up to the merger's position."""
        if self._backlog or self._pace is not None:
            return self.shown
        return max(self.shown, self.merger.last)

    def _release_waiters(self) -> None:
        # With an empty history and nothing live, waiters for seq <= last fire here
        # (those for messages still waiting behind a busy on_output fire as they show).
        for want, _ in self._fire_waiters(self._done_up_to()):
            self.merger.want(want)

    def _fire_waiters(self, shown: int) -> list[tuple[int, defer.Deferred]]:
        """Fire the waiters for messages up to ``shown``; the others stay (returned). The
        list is taken first: what a fired waiter runs may show more, or wait again."""
        waiters, self._seq_waiters = self._seq_waiters, []
        still = [(want, d) for want, d in waiters if want > shown]
        self._seq_waiters[:0] = still
        for want, d in waiters:
            if want <= shown and not d.called:
                d.callback(None)
        return still

    def _lost(self, count: int) -> None:
        if self.on_output is not None:
            self._deliver({
                "seq": None, "kind": p.SYSTEM, "exec": None, "user": None,
                "text": f"[{count} output messages were lost: older than the kernel's "
                        "history buffer]\n",
            })

    def _answer_input(self, prompt: str, password: bool) -> Any:
        return defer.maybeDeferred(self.on_input, prompt, password)

    def _on_status(self, _value: Any) -> None:
        self._notify_status()

    def _on_presence(self, value: Any) -> None:
        for watcher in list(self._presence_watchers):
            try:
                watcher(list(value or []))
            except Exception:  # noqa: BLE001
                log.failure("presence watcher failed")

    def _notify_status(self) -> None:
        status = self.status()
        for watcher in list(self._status_watchers):
            try:
                watcher(status)
            except Exception:  # noqa: BLE001
                log.failure("status watcher failed")

    def _check_link(self) -> None:
        up = self.context.interest_count(self.control.channel_id, REP) > 0
        link = "up" if up else "down"
        if link == self.link:
            return
        self.link = link
        self._notify_status()
        if up and self.attached:
            # Back after a cut: the broker may have seen us leave; announce us again and
            # fill whatever we missed meanwhile.
            self.control.call("attach", self.caller.to_wire()).addErrback(
                lambda f: log.warn("re-attach failed: {why}",
                                   why=printable(f.getErrorMessage(), 1000))
            )
            self.merger.want(self.merger.last + 1)
