"""The kernel broker: a mesh context that supervises one kernel process.

The kernel runs in its own process, so code stuck in C never stalls the
broker, which keeps answering, publishing status and telling "very busy"
from "dead". What kind of kernel it is, and how to speak to it, is the
broker's :class:`~yotonnet.kernel.backend.KernelBackend`: a plain Python
interpreter over pipes (:class:`~yotonnet.kernel.backend.PythonBackend`, the
default) or any Jupyter kernel (:class:`~yotonnet.kernel.jupyter.JupyterBackend`);
everything below is the same for both.

Channels (see :func:`yotonnet.kernel.protocol.channel_names`):

* ``kernel.NAME.output`` (pub/sub, OBJECT): every byte of stdout/stderr, the
  code each user ran, results, errors, input echoes, join/leave, in one
  sequence-numbered stream. The kernel's output is read only while the
  channel is writable: when a lossless subscriber lags, the backend stops
  reading (the pipes, or Jupyter's IOPub socket) and the kernel's own
  buffers hold the rest. A bounded history of the stream serves late joiners.
* ``kernel.NAME.status`` (state): the kernel's state and its process and
  interpreter signals (the third signal, the link, is each client's own).
* ``kernel.NAME.presence`` (state): who is attached, with their role.
* ``kernel.NAME.control`` (req/rep): attach, detach, history, execute,
  interrupt, restart, shutdown, complete, inspect, kernel_info (what the kernel
  says of itself, as Jupyter's ``kernel_info_reply``). Every call names its caller;
  :mod:`yotonnet.kernel.roles` decides what that caller may do.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from ..channels import PubChannel, RepChannel, ReqChannel, StateChannel
from ..core.messages import OBJECT
from ..core.names import channel_id, printable
from ..core.routing import REP
from ..identity import caller as authenticated_caller
from ..identity import caller_node as current_caller_node
from ..mesh.context import Context
from . import protocol as p
from .backend import InputAnswer, KernelBackend, KernelGone, PythonBackend
from .roles import Caller, RolePolicy, check, default_roles, default_user, unverified

log = Logger(namespace="yotonnet.kernel")


@dataclass
class Execution:
    id: int
    caller: Caller
    code: str
    #: the Jupyter header of the request that ran it (a frontend's; see protocol)
    parent: dict | None = None
    done: defer.Deferred = field(default_factory=defer.Deferred)
    started: bool = False


@dataclass
class BrokerConfig:
    """Tunables of a broker; times in seconds."""

    #: output messages kept for late joiners, and their total text size
    history: int = 10_000
    history_bytes: int = 8 << 20
    #: no heartbeat from the kernel's interpreter this long: very-busy
    unresponsive_after: float = 1.0
    #: how often presence is checked against the mesh (a vanished console leaves)
    presence_check: float = 1.0
    #: a console whose input channel the mesh never showed is dropped after this
    presence_grace: float = 10.0
    #: a polite end (SIGTERM, or Jupyter's shutdown_request), then SIGKILL after this,
    #: on restart and shutdown
    kill_after: float = 2.0
    #: text per history reply
    history_page: int = 1 << 20


@implementer(IPushProducer)
class _OutputPauser:
    """Pauses reading the kernel's output (never its control messages)."""

    def __init__(self, backend: KernelBackend) -> None:
        self.backend = backend
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.backend.pause_output()

    def resumeProducing(self) -> None:
        self.paused = False
        self.backend.resume_output()

    def stopProducing(self) -> None:
        self.paused = True


class KernelBroker:
    """Supervises kernel ``name`` on ``context`` and serves it to the mesh.

    ``owner`` is the user who started it (default ``user@host`` of this
    process); ``role_of`` maps a :class:`~yotonnet.kernel.roles.Caller` to a
    role (default: the owner is owner, everyone else collaborator). Where the
    mesh authenticates, a caller's user is the login of the node it called
    from, never what it claims, and a node that never logged in is refused;
    a client's secret id (which names its input channel) stays between it
    and the broker, and ``input()`` is asked only when the runner's node
    alone serves that channel.

    ``backend`` is the kind of kernel (a :class:`~yotonnet.kernel.backend.KernelBackend`);
    by default a Python interpreter ``python`` in ``cwd`` with ``env``
    (:class:`~yotonnet.kernel.backend.PythonBackend`).
    """

    def __init__(
        self,
        context: Context,
        name: str,
        *,
        owner: str | None = None,
        role_of: RolePolicy | None = None,
        python: str = sys.executable,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        config: BrokerConfig | None = None,
        backend: KernelBackend | None = None,
    ) -> None:
        self.context = context
        self.reactor = context.reactor
        self.name = p.validate_kernel_name(name)
        self.owner = owner or default_user()
        self.role_of = role_of or default_roles(self.owner)
        self.config = config or BrokerConfig()
        self.backend = backend or PythonBackend(python, cwd, env)
        self.backend.bind(self, self.reactor, unresponsive_after=self.config.unresponsive_after,
                          name=self.name)
        self.names = p.channel_names(name)
        self.history = p.OutputHistory(self.config.history, self.config.history_bytes)
        self.output = PubChannel(context, self.names["output"], OBJECT)
        self._pauser = _OutputPauser(self.backend)
        self.output.registerProducer(self._pauser, True)
        self.status_channel = StateChannel(context, self.names["status"])
        self.presence_channel = StateChannel(context, self.names["presence"])
        self.control = RepChannel(context, self.names["control"])
        for op in ("attach", "detach", "history", "execute", "interrupt", "restart",
                   "shutdown", "complete", "inspect", "kernel_info"):
            self.control.register(op, getattr(self, f"_op_{op}"))
        self.state = p.STARTING
        self.process_info: dict[str, Any] = {"alive": False, "pid": None}
        self.responsive: bool | None = None
        self.generation = 0
        self._ready = False
        self._next_id = 0
        self._queue: deque[Execution] = deque()
        self._current: Execution | None = None
        self._restart_waiters: list[defer.Deferred] = []
        self._restarting = False
        self._shutting_down = False
        self._kill_timer: Any = None
        self._clients: dict[str, dict[str, Any]] = {}
        self._input_channels: dict[str, ReqChannel] = {}
        self._last_status: dict | None = None
        #: the input() the running code waits for: {"user", "client", "exec", "prompt"}
        self.input_wait: dict[str, Any] | None = None
        #: fires once a shutdown was asked for and the kernel has ended
        self.stopped: defer.Deferred[None] = defer.Deferred()
        self._presence_loop = LoopingCall(self._check_presence)
        self._presence_loop.clock = self.reactor
        self.closed = False

    # --- life cycle

    def start(self) -> defer.Deferred[None]:
        """Start the kernel; fires once it is ready (idle)."""
        self._presence_loop.start(self.config.presence_check, now=False)
        d: defer.Deferred[None] = defer.Deferred()
        self._restart_waiters.append(d)
        self._spawn()
        return d

    def close(self) -> defer.Deferred[None]:
        """Stop the kernel (SIGKILL) and leave the mesh's kernel channels."""
        if self.closed:
            return defer.succeed(None)
        self.closed = True
        if self._presence_loop.running:
            self._presence_loop.stop()
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        d = self.backend.close()
        self._fail_all(KernelGone(f"kernel {self.name!r} broker closed"))
        for chan in (self.output, self.status_channel, self.presence_channel, self.control,
                     *self._input_channels.values()):
            chan.close()
        return d

    def _spawn(self) -> None:
        self.generation += 1
        self._ready = False
        self.responsive = None
        self.state = p.STARTING
        try:
            info = self.backend.start()
        except Exception as e:  # noqa: BLE001 - no such interpreter, kernelspec, directory
            self.process_info = {"alive": False, "pid": None, "error": str(e)}
            self.state = p.DEAD
            self._restarting = False
            why = str(e) if str(e).startswith("cannot start") else \
                f"cannot start the kernel: {e}"
            log.error("kernel {name}: {why}", name=self.name, why=why)
            self._publish(p.SYSTEM, why + "\n")
            self._fail_all(KernelGone(why))
            self._publish_status()
            return
        self.process_info = {"alive": True, "pid": info.get("pid")}
        self._publish_status()

    def _terminate(self) -> None:
        """End the kernel politely, and SIGKILL it if it is still there after kill_after."""
        self.backend.terminate()
        if self._kill_timer is None or not self._kill_timer.active():
            self._kill_timer = self.reactor.callLater(self.config.kill_after, self.backend.kill)

    def kernel_exited(self, info: dict[str, Any]) -> None:
        """The backend's kernel process ended (see :mod:`.backend`)."""
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        how = info.get("how") or "ended"
        self.process_info = {"alive": False, "pid": info.get("pid"),
                             "exit_code": info.get("exit_code"), "signal": info.get("signal")}
        self.responsive = None
        self._ready = False
        self.process_info["reason"] = (
            "shut down" if self._shutting_down else "restarted" if self._restarting else how
        )
        log.info("kernel {name}: process {pid} ended ({how})", name=self.name,
                 pid=info.get("pid"), how=how)
        if self.closed:
            return
        gone = KernelGone(f"the kernel process ended ({how})")
        self._fail_all(gone)
        if self._restarting:
            self._restarting = False
            self._publish(p.SYSTEM, f"kernel restarting (the old process ended: {how})\n")
            self._spawn()
            return
        self.state = p.DEAD
        self._publish(p.SYSTEM, f"kernel died ({how})\n" if not self._shutting_down
                      else "kernel shut down\n")
        self._publish_status()
        if self._shutting_down and not self.stopped.called:
            self.stopped.callback(None)

    def _fail_all(self, error: Exception) -> None:
        """The process is gone: every execution and waiter ends."""
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self.input_wait = None
        self._queue.clear()
        for ex in pending:
            if ex.started:
                self._publish(p.END, "", ex.id, ex.caller.user, {"status": "error"})
            reply = {"id": ex.id, "user": ex.caller.user, "status": "error",
                     "type": "KernelGone", "message": str(error), "traceback": "",
                     "value": None}
            if not ex.done.called:
                ex.done.callback(reply)
        if self.closed or not self._restarting:
            waiters, self._restart_waiters = self._restart_waiters, []
            for d in waiters:
                d.errback(Failure(error))

    # --- what the backend reports (see yotonnet.kernel.backend.KernelEvents)

    def kernel_ready(self, info: dict[str, Any]) -> None:
        """The kernel answers: it takes code from now on."""
        self._ready = True
        self.responsive = True
        self.process_info.update({k: v for k, v in info.items() if k != "pid"})
        self._publish(p.SYSTEM, f"kernel started (pid {info.get('pid')})\n")
        waiters, self._restart_waiters = self._restart_waiters, []
        self._update_state()
        for d in waiters:
            d.callback(None)
        self._run_next()

    def kernel_responsive(self, responsive: bool) -> None:
        """The kernel's heartbeat came back (True) or went quiet (False)."""
        if self.responsive is not responsive:
            self.responsive = responsive
            self._update_state()

    def kernel_busy(self, busy: bool) -> None:
        """The kernel's own busy/idle changed."""
        self._update_state()

    def kernel_output(self, kind: str, text: str, exec_id: int | None = None,
                      extra: dict[str, Any] | None = None) -> None:
        """An output record; tagged with its execution and user while that one runs."""
        ex = self._current
        if exec_id is not None and ex is not None and ex.started and ex.id == exec_id:
            self._publish(kind, text, ex.id, ex.caller.user, extra)
        else:
            self._publish(kind, text, None, None, extra)  # of no (current) execution

    def kernel_done(self, exec_id: int, reply: dict[str, Any]) -> None:
        """Execution ``exec_id`` ended and all its output was reported."""
        ex = self._current
        if ex is None or ex.id != exec_id or ex.done.called:
            return
        reply = dict(reply)
        reply["id"] = ex.id
        reply["user"] = ex.caller.user
        # Everyone learns it ended (Jupyter frontends say idle); its runner waits for this too.
        self._publish(p.END, "", ex.id, ex.caller.user, {"status": reply.get("status")})
        reply["last_seq"] = self.history.last_seq
        self._current = None
        self._input_done(ex.id)
        ex.done.callback(reply)
        self._run_next()

    # --- status

    def _update_state(self) -> None:
        if not self.backend.alive:
            return
        if self._restarting:
            state = p.RESTARTING
        elif not self._ready:
            state = p.STARTING
        elif self.responsive is False:
            state = p.VERY_BUSY
        elif self._current is not None or self.backend.busy:
            state = p.BUSY
        else:
            state = p.IDLE
        self.state = state
        self._publish_status()

    def status(self) -> dict[str, Any]:
        ex = self._current
        return {
            "kernel": self.name,
            "state": self.state,
            "process": dict(self.process_info),
            "interpreter": {None: "unknown", True: "responsive", False: "unresponsive"}[
                self.responsive
            ],
            "executing": None if ex is None else {"id": ex.id, "user": ex.caller.user},
            # whose answer the running code waits for (everyone sees who holds it up)
            "input": None if self.input_wait is None else dict(self.input_wait),
            "queued": len(self._queue),
            "generation": self.generation,
            "owner": self.owner,
            "broker": f"{self.context.node_id:016x}",
            "backend": self.backend.describe(),
        }

    def _publish_status(self) -> None:
        if self.closed:
            return
        status = self.status()
        if status != self._last_status:
            self._last_status = status
            self.status_channel.send(status)

    def _publish(self, kind: str, text: str, exec_id: int | None = None,
                 user: str | None = None, extra: dict[str, Any] | None = None) -> None:
        message = {"seq": self.history.last_seq + 1, "kind": kind, "text": text,
                   "exec": exec_id, "user": user}
        if extra:
            for key, value in extra.items():
                message.setdefault(key, value)
        self.history.append(message)
        if self.output.closed:
            return
        try:
            self.output.send(message)
        except errors.FlowControlError:
            # Far past the window (only broker notes can get here: the kernel's output
            # stops being read first). Kept in the history, which clients fill gaps from.
            log.warn("kernel {name}: output message {seq} only in history", name=self.name,
                     seq=message["seq"])

    # --- executions

    def _run_next(self) -> None:
        if self._current is not None or not self._queue or not self._ready:
            self._update_state()
            return
        ex = self._queue.popleft()
        self._current = ex
        ex.started = True
        extra: dict[str, Any] = {"client": p.public_client_id(ex.caller.client)}
        if ex.parent is not None:
            extra["parent"] = ex.parent
        self._publish(p.EXECUTE, ex.code, ex.id, ex.caller.user, extra)
        try:
            self.backend.execute(ex.id, ex.code)
        except KernelGone:
            return  # kernel_exited fails it
        self._update_state()

    def kernel_input(self, exec_id: int | None, prompt: str, password: bool,
                     answer: InputAnswer) -> None:
        """The running code asks for input: ask the user who ran it, and only them."""
        ex = self._current

        def got(value: Any) -> None:
            if not isinstance(value, str):
                error(Failure(TypeError(f"input answer must be a str, not {type(value)}")))
                return
            self._input_done(exec_id)
            if self._current is ex:
                shown = "" if password else value
                self._publish(p.STDIN, f"{prompt}{shown}\n", ex.id, ex.caller.user)
            answer(value)

        def error(failure: Failure) -> None:
            self._input_done(exec_id)
            answer(None, f"no input: {failure.getErrorMessage()}")

        if ex is None or exec_id is None or ex.id != exec_id:
            error(Failure(KernelGone("input() outside a known execution")))
            return
        impostors = self._other_input_holders(ex.caller)
        if impostors:
            # The prompt (maybe a password's) goes to the runner's node or nowhere.
            why = (f"the input channel of {printable(ex.caller.user)}'s client is also served by "
                   f"node(s) {', '.join(f'{n:016x}' for n in impostors)}; not asking anyone")
            log.warn("kernel {name}: {why}", name=self.name, why=why)
            error(Failure(errors.PermissionDenied(why)))
            return
        chan = self._input_channel(ex.caller.client)
        self.input_wait = {"user": ex.caller.user, "client": p.public_client_id(ex.caller.client),
                           "exec": ex.id, "prompt": prompt[:200]}
        self._publish_status()
        chan.call("input", prompt, password).addCallbacks(got, error)

    def _input_done(self, exec_id: int | None) -> None:
        """The input() of execution ``exec_id`` was answered, refused, or its code ended."""
        if self.input_wait is not None and self.input_wait["exec"] == exec_id:
            self.input_wait = None
            self._publish_status()

    def _other_input_holders(self, caller: Caller) -> list[int]:
        """Nodes other than the runner's that serve the runner's input channel (its own
        node when the runner is a leaf and another leaf of that node serves it too)."""
        if not caller.node:
            return []  # a client that did not say where it is: nothing to compare with
        chan = channel_id("reqrep", p.client_channel_name(self.name, caller.client))
        routing = self.context.routing
        home = self.context.guard.home_of(caller.node)
        others = [n for n in routing.holders(chan, REP) if n != home]
        mine = routing.interest_of(home, chan) if home is not None else None
        if mine is not None and mine.count > 1:
            others.append(home)  # (its one replier is the runner's; more are not)
        return others

    def _input_channel(self, client: str) -> ReqChannel:
        chan = self._input_channels.get(client)
        if chan is None:
            chan = ReqChannel(self.context, p.client_channel_name(self.name, client),
                              timeout=None)
            self._input_channels[client] = chan
        return chan

    # --- presence

    def _presence(self) -> list[dict[str, Any]]:
        return [
            {"user": c["user"], "client": p.public_client_id(cid), "role": c["role"]}
            for cid, c in sorted(self._clients.items(), key=lambda kv: kv[1]["since"])
        ]

    def _join(self, caller: Caller, role: str) -> None:
        if caller.client in self._clients:
            return
        self._clients[caller.client] = {
            "user": caller.user, "role": role, "since": self.reactor.seconds(), "seen": False,
            "chan": channel_id("reqrep", p.client_channel_name(self.name, caller.client)),
            "node": caller.node, "node_seen": False,
        }
        self._attach_check()
        self._publish(p.JOIN, f"{caller.user} joined as {role}\n", None, caller.user)
        self.presence_channel.send(self._presence())

    def _leave(self, client: str, why: str = "left") -> None:
        info = self._clients.pop(client, None)
        if info is None:
            return
        chan = self._input_channels.pop(client, None)
        if chan is not None:
            chan.close()
        self._publish(p.LEAVE, f"{info['user']} {why}\n", None, info["user"])
        self.presence_channel.send(self._presence())

    def _check_presence(self) -> None:
        """Clients that went without detaching leave: their node became unreachable, or
        their input channel left the mesh (once seen; or never seen within the grace)."""
        now = self.reactor.seconds()
        reachable = self.context.routing.reachable()
        home_of = self.context.guard.home_of
        for client, info in list(self._clients.items()):
            node = info["node"] and home_of(info["node"])
            if node and node in reachable:
                info["node_seen"] = True
            elif node and info["node_seen"]:
                self._leave(client, "vanished (its node is unreachable)")
                continue
            if self.context.interest_count(info["chan"], REP) > 0:
                info["seen"] = True
            elif info["seen"] or now - info["since"] > self.config.presence_grace:
                self._leave(client, "vanished (it no longer answers)")

    def _attach_check(self) -> None:
        """Right after an attach: note whether the new client's node and its input channel
        are known now (a client opens that channel before it attaches), so that its
        vanishing is seen at the next periodic check even if it happens before it, rather
        than only once presence_grace passes."""
        reachable = self.context.routing.reachable()
        home_of = self.context.guard.home_of
        for info in self._clients.values():
            if info["node"] and home_of(info["node"]) in reachable:
                info["node_seen"] = True
            if not info["seen"] and self.context.interest_count(info["chan"], REP) > 0:
                info["seen"] = True

    # --- control operations (req/rep handlers; the first argument is the caller)

    def _caller(self, who: Any, operation: str) -> tuple[Caller, str]:
        try:
            caller = Caller.from_wire(who)
        except ValueError as e:
            raise errors.PermissionDenied(str(e)) from None
        # Read before any await (see yotonnet.identity.caller): the node the request came
        # from, and the user the mesh authenticated it as.
        source = current_caller_node(self.control) or caller.node
        proven = self._authenticated_user()
        if source == self.context.node_id:
            # This process itself (the owner's): its claim is its own business.
            caller = Caller(caller.user, caller.client, verified=True, node=source)
        elif proven is not None:
            # The mesh's word, whatever the client claims.
            caller = Caller(proven, caller.client, verified=True, node=source)
        else:
            # Nobody vouches for that node (an anonymous peer): a claim names nobody.
            caller = Caller(unverified(caller.user), caller.client, node=source)
        known = self._clients.get(caller.client)
        if known is not None and (known["user"], known["node"]) != (caller.user, caller.node):
            # A client id is its attachment's: nobody else detaches it or runs code as it.
            raise errors.PermissionDenied(
                f"client id {caller.client!r} belongs to another attachment; "
                "use a client id of your own (KernelClient makes a random one)")
        return caller, check(self.role_of, caller, operation)

    def _authenticated_user(self) -> str | None:
        """The user the security layer authenticated the current request's node as."""
        return authenticated_caller(self.control)

    def _op_attach(self, who: Any) -> dict[str, Any]:
        caller, role = self._caller(who, "attach")
        self._join(caller, role)
        return {"role": role, "status": self.status(), "presence": self._presence(),
                "last_seq": self.history.last_seq, "user": caller.user,
                "verified": caller.verified, "client": p.public_client_id(caller.client)}

    def _op_detach(self, who: Any) -> bool:
        caller, _ = self._caller(who, "detach")
        self._leave(caller.client)
        return True

    def _op_history(self, who: Any, since: int | None = None,
                    last: int | None = None) -> dict[str, Any]:
        self._caller(who, "history")
        for value, what in ((since, "since"), (last, "last")):
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"history: {what} must be None or an int >= 0, not {value!r}")
        return self.history.since(since, self.config.history_page, last)

    def _op_execute(self, who: Any, code: Any, parent: Any = None) -> defer.Deferred[dict]:
        """Run ``code``; ``parent`` (optional) is the Jupyter header of the frontend request
        that ran it, published with the code so every frontend can tag its output."""
        caller, role = self._caller(who, "execute")
        if not isinstance(code, str):
            raise TypeError(f"execute: code must be a str, not {type(code).__name__}")
        parent = p.check_parent(parent)
        if self.state == p.DEAD:
            raise KernelGone(f"kernel {self.name!r} is dead; restart it first")
        self._join(caller, role)
        self._next_id += 1
        ex = Execution(self._next_id, caller, code, parent)
        self._queue.append(ex)
        self._run_next()
        return ex.done

    def _op_interrupt(self, who: Any) -> bool:
        self._caller(who, "interrupt")
        if self._current is None or not self.backend.alive:
            return False
        self.backend.interrupt()
        return True

    def _op_restart(self, who: Any) -> defer.Deferred[None]:
        caller, _ = self._caller(who, "restart")
        d: defer.Deferred[None] = defer.Deferred()
        self._restart_waiters.append(d)
        self._publish(p.SYSTEM, f"{caller.user} restarts the kernel\n", None, caller.user)
        self.restart()
        return d.addCallback(lambda _: self.status())

    def restart(self) -> None:
        """End the kernel (politely, then SIGKILL) and start a new one."""
        self._shutting_down = False
        if not self.backend.alive:
            self._spawn()
            return
        if not self._restarting:
            self._restarting = True
            self._update_state()
            self._terminate()

    def _op_shutdown(self, who: Any) -> bool:
        caller, _ = self._caller(who, "shutdown")
        self._publish(p.SYSTEM, f"{caller.user} shuts the kernel down\n", None, caller.user)
        self.shutdown()
        return True

    def shutdown(self) -> None:
        """End the kernel for good; ``stopped`` fires once it has ended."""
        self._shutting_down = True
        self._restarting = False
        if not self.backend.alive:
            if not self.stopped.called:
                self.stopped.callback(None)
            return
        self._terminate()

    def _op_complete(self, who: Any, text: Any) -> defer.Deferred[list[str]]:
        self._caller(who, "complete")
        if not isinstance(text, str):
            raise TypeError(f"complete: text must be a str, not {type(text).__name__}")
        if not self._ready or not self.backend.alive:
            return defer.succeed([])
        return self.backend.complete(text).addErrback(_when_gone, [])

    def _op_inspect(self, who: Any, code: Any, cursor_pos: Any = None,
                    detail: Any = 0) -> defer.Deferred[dict]:
        """What the kernel knows of the name at ``cursor_pos`` of ``code`` (default: its
        end): ``{"found", "text", "data", "metadata"}`` (``data``: a MIME bundle)."""
        self._caller(who, "inspect")
        if not isinstance(code, str):
            raise TypeError(f"inspect: code must be a str, not {type(code).__name__}")
        if cursor_pos is None:
            cursor_pos = len(code)
        if type(cursor_pos) is not int or not 0 <= cursor_pos <= len(code):
            raise ValueError(f"inspect: cursor_pos must be an int within the code, "
                             f"not {cursor_pos!r}")
        if detail not in (0, 1):
            raise ValueError(f"inspect: detail must be 0 or 1, not {detail!r}")
        nothing = {"found": False, "text": "", "data": {}, "metadata": {}}
        if not self._ready or not self.backend.alive:
            return defer.succeed(nothing)
        return self.backend.inspect(code, cursor_pos, detail).addErrback(_when_gone, nothing)

    def _op_kernel_info(self, who: Any) -> dict[str, Any]:
        """What the kernel says of itself, as the content of Jupyter's ``kernel_info_reply``
        (``language_info``, ``banner``, ``implementation``, ...)."""
        self._caller(who, "kernel_info")
        return self.backend.kernel_info()


def _when_gone(failure: Failure, value: Any) -> Any:
    """``value`` when the kernel ended before it answered (any other failure stays)."""
    failure.trap(KernelGone)
    return value


__all__ = ["KernelBroker", "BrokerConfig", "KernelGone"]
