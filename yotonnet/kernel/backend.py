"""What a broker runs: the kernel backends, and the events they report to the broker.

A :class:`~yotonnet.kernel.KernelBroker` does everything a shared kernel
needs that does not depend on the kind of kernel: the mesh channels, the
queue of executions, the output history, presence, roles, input() routing,
restarts and the status. What does depend on it sits behind
:class:`KernelBackend`:

* :class:`PythonBackend` (the default): a plain Python interpreter running
  ``driver.py``, spoken to over pipes (the kernel of ``yotonnet kernel NAME``);
* :class:`yotonnet.kernel.jupyter.JupyterBackend`: any Jupyter kernel (a
  kernelspec such as ``python3`` or ``bash``), started and spoken to with
  jupyter_client (``yotonnet kernel NAME --jupyter SPEC``).

A backend runs one kernel process at a time (:meth:`KernelBackend.start`
again after it ended starts the next), executes one piece of code at a time
(the broker queues the rest), and tells the broker what happens through
:class:`KernelEvents`, all in the reactor thread:

* ``kernel_ready(info)``: the kernel answers; ``info`` goes into the status;
* ``kernel_output(kind, text, exec_id, extra)``: an output record (a kind of
  :mod:`.protocol`), of execution ``exec_id`` (None: of no execution, e.g. a
  thread of earlier code), with ``extra`` fields such as a Jupyter MIME bundle;
* ``kernel_done(exec_id, reply)``: every output of that execution was
  reported, and ``reply`` says how it ended (``status`` "ok" or "error",
  ``value``, ``type``, ``message``, ``traceback``);
* ``kernel_input(exec_id, prompt, password, answer)``: the running code asks
  for input; ``answer(value)`` or ``answer(None, error)`` replies, once;
* ``kernel_responsive(flag)``: the kernel's heartbeat came back or went quiet;
* ``kernel_busy(flag)``: the kernel's own busy/idle, where it says so;
* ``kernel_exited(info)``: the process ended (``exit_code``, ``signal``, ``how``).

Output is paced by :meth:`KernelBackend.pause_output` and
:meth:`~KernelBackend.resume_output`, called when the mesh cannot take more:
the backend then stops reading the kernel's output, so the kernel's own
buffers fill and hold it back instead of this process's memory.
"""

from __future__ import annotations

import codecs
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import errors
from . import protocol as p

log = Logger(namespace="yotonnet.kernel")

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py")
STDOUT_FD, STDERR_FD, CMD_FD, REPLY_FD, HEARTBEAT_FD = 1, 2, 3, 4, 5
#: longest line the kernel may send on its reply pipe before the broker gives up on it
MAX_REPLY_LINE = 64 << 20

#: answer(value) or answer(None, error): the reply to one input() of the kernel
InputAnswer = Callable[..., None]


class KernelGone(errors.YotonnetError):
    """The kernel process ended (or was restarted) before this finished."""


class KernelEvents(Protocol):
    """What a backend tells its broker (see the module docstring)."""

    def kernel_ready(self, info: dict[str, Any]) -> None: ...

    def kernel_output(self, kind: str, text: str, exec_id: int | None = None,
                      extra: dict[str, Any] | None = None) -> None: ...

    def kernel_done(self, exec_id: int, reply: dict[str, Any]) -> None: ...

    def kernel_input(self, exec_id: int | None, prompt: str, password: bool,
                     answer: InputAnswer) -> None: ...

    def kernel_responsive(self, responsive: bool) -> None: ...

    def kernel_busy(self, busy: bool) -> None: ...

    def kernel_exited(self, info: dict[str, Any]) -> None: ...


class KernelBackend:
    """The kernel-specific half of a broker; subclasses implement the methods below.

    :meth:`bind` comes first (the broker calls it), then :meth:`start` for each
    kernel process. Every method runs in the reactor thread and returns at
    once: none waits for the kernel.
    """

    #: "python" or "jupyter": shown in the status
    kind = "?"

    def bind(self, events: KernelEvents, reactor: Any, *, unresponsive_after: float,
             name: str) -> None:
        self.events = events
        self.reactor = reactor
        self.unresponsive_after = unresponsive_after
        self.name = name

    def describe(self) -> dict[str, Any]:
        """What the status says about this kind of kernel (small: sent on every change)."""
        return {"type": self.kind}

    @property
    def alive(self) -> bool:
        """A kernel process exists and has not ended."""
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """The kernel itself says it is busy (beyond the broker's own execution)."""
        return False

    def start(self) -> dict[str, Any]:
        """Start a kernel process; returns ``{"pid": ...}``. Raises if it cannot start."""
        raise NotImplementedError

    def execute(self, exec_id: int, code: str) -> None:
        raise NotImplementedError

    def complete(self, text: str) -> defer.Deferred[list[str]]:
        """Completions of ``text``: each a whole replacement for ``text``."""
        raise NotImplementedError

    def inspect(self, code: str, cursor_pos: int, detail: int) -> defer.Deferred[dict]:
        """What the kernel knows of the name at ``cursor_pos``:
        ``{"found", "text", "data", "metadata"}``."""
        raise NotImplementedError

    def interrupt(self) -> None:
        raise NotImplementedError

    def kernel_info(self) -> dict[str, Any]:
        """What the kernel says of itself, as the content of Jupyter's ``kernel_info_reply``
        (``language_info``, ``banner``, ``implementation``...): answered at once, from
        what the kernel said when it started."""
        return {"status": "ok", "protocol_version": "5.3", "implementation": self.kind,
                "implementation_version": "", "language_info": {"name": "unknown"},
                "banner": "", "help_links": []}

    def terminate(self) -> None:
        """Ask the kernel to end (it may not: the broker kills it after a while)."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def pause_output(self) -> None:
        raise NotImplementedError

    def resume_output(self) -> None:
        raise NotImplementedError

    def close(self) -> defer.Deferred[None]:
        """Kill the kernel and release everything; fires once the process has ended."""
        raise NotImplementedError


def exit_info(exit_code: int | None, sig: int | None, pid: int | None) -> dict[str, Any]:
    """The ``kernel_exited`` info of a process that ended with ``exit_code`` or ``sig``."""
    how = f"signal {sig}" if sig is not None else f"exit code {exit_code}"
    return {"exit_code": exit_code, "signal": sig, "pid": pid, "how": how}


# --- the Python kernel: driver.py over pipes


class _Current:
    """The execution the driver runs now."""

    def __init__(self, exec_id: int) -> None:
        self.id = exec_id
        #: the pipes (1, 2) whose end marker for this execution has not come yet
        self.open_pipes = {STDOUT_FD, STDERR_FD}
        self.reply: dict | None = None
        #: the driver said it began (its "started"); an interrupt waits for that
        self.started = False
        self.interrupt_pending = False


class _KernelProcess(ProcessProtocol):
    def __init__(self, backend: PythonBackend, token: str) -> None:
        self.backend = backend
        self.splitters = {STDOUT_FD: p.MarkerSplitter(token), STDERR_FD: p.MarkerSplitter(token)}
        self.decoders = {
            fd: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for fd in (STDOUT_FD, STDERR_FD)
        }
        self._reply_buf = b""
        self.ended = False
        self.pid: int | None = None
        #: fired when the process has exited (close() waits for it)
        self.on_end: defer.Deferred[None] | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.closeChildFD(0)  # input() goes through the broker, not stdin

    def childDataReceived(self, fd: int, data: bytes) -> None:
        backend = self.backend
        if backend._proc is not self:
            return
        if fd == HEARTBEAT_FD:
            backend._on_heartbeat()
        elif fd == REPLY_FD:
            buf = self._reply_buf + data
            *lines, self._reply_buf = buf.split(b"\n")
            if len(self._reply_buf) > MAX_REPLY_LINE:
                log.error("kernel {name}: reply line too long; killing it", name=backend.name)
                self._reply_buf = b""
                backend._signal(signal.SIGKILL)
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("kernel {name}: unreadable reply {line!r}", name=backend.name,
                              line=line[:200])
                    continue
                backend._on_kernel_message(message)
        elif fd in (STDOUT_FD, STDERR_FD):
            for item in self.splitters[fd].feed(data):
                if isinstance(item, int):
                    backend._on_marker(fd, item)
                elif isinstance(item, p.Frame):
                    backend._on_frame(fd, item.payload)
                else:
                    text = self.decoders[fd].decode(item)
                    if text:
                        backend._on_output(fd, text)

    def childConnectionLost(self, fd: int) -> None:
        if fd in (STDOUT_FD, STDERR_FD) and self.backend._proc is self:
            rest = self.splitters[fd].flush()
            text = self.decoders[fd].decode(rest, final=True)
            if text:
                self.backend._on_output(fd, text)

    def processExited(self, reason: Failure) -> None:
        # processExited, not processEnded: the latter also waits for every pipe to close,
        # which a process the kernel started (and that inherited them) may delay for ever.
        self.ended = True
        if self.on_end is not None and not self.on_end.called:
            self.on_end.callback(None)
        backend = self.backend
        if backend._proc is self:
            backend._process_exited(self, reason)
        if backend._proc is not self or backend.closed:
            self.transport.loseConnection()  # late output of an old kernel is not wanted


class PythonBackend(KernelBackend):
    """A Python interpreter running ``driver.py`` (see that module for the pipes).

    ``python`` is the interpreter, ``cwd`` its working directory, ``env`` its
    environment (default: this process's). The driver writes a heartbeat from
    a thread, which cannot run while C code holds the GIL: silence while the
    process lives is "very-busy". Output is paced by not reading its
    stdout/stderr pipes: the kernel's ``print`` then blocks.
    """

    kind = "python"

    def __init__(self, python: str = sys.executable, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.python = python
        self.cwd = cwd
        self.env = env
        self._proc: _KernelProcess | None = None
        self._current: _Current | None = None
        self._pending: dict[int, defer.Deferred] = {}
        self._next_id = 0
        self._ready = False
        self._responsive: bool | None = None
        self._last_beat = 0.0
        self._paused = False
        self.closed = False
        self._heartbeat_check: LoopingCall | None = None
        #: the kernel interpreter's version, once it said (its "ready")
        self.version: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "python": self.python}

    def kernel_info(self) -> dict[str, Any]:
        from .. import __version__

        version = self.version or ""
        return {
            "status": "ok", "protocol_version": "5.3", "implementation": "yotonnet",
            "implementation_version": __version__,
            "language_info": {
                "name": "python", "version": version, "mimetype": "text/x-python",
                "file_extension": ".py", "pygments_lexer": "ipython3",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "nbconvert_exporter": "python",
            },
            "banner": f"Python {version} (yotonnet's shared Python kernel, {self.python})\n",
            "help_links": [],
        }

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._proc.ended

    def start(self) -> dict[str, Any]:
        if self._heartbeat_check is None:
            self._heartbeat_check = LoopingCall(self._check_heartbeat)
            self._heartbeat_check.clock = self.reactor
            self._heartbeat_check.start(max(0.02, self.unresponsive_after / 4), now=False)
        token = secrets.token_hex(8)
        env = dict(os.environ if self.env is None else self.env)
        env["YOTONNET_KERNEL_TOKEN"] = token
        env["PYTHONIOENCODING"] = "utf-8"
        env.pop("PYTHONSTARTUP", None)
        proc = _KernelProcess(self, token)
        self._proc = proc
        self._current = None
        self._ready = False
        self._responsive = None
        self._last_beat = self.reactor.seconds()
        try:
            self.reactor.spawnProcess(
                proc, self.python, [self.python, "-u", DRIVER], env=env, path=self.cwd,
                childFDs={0: "w", STDOUT_FD: "r", STDERR_FD: "r", CMD_FD: "w", REPLY_FD: "r",
                          HEARTBEAT_FD: "r"},
            )
        except OSError as e:  # no such interpreter or working directory
            proc.ended = True
            raise OSError(f"cannot start the kernel ({self.python!r}, cwd {self.cwd!r}): "
                          f"{e}") from None
        if self._paused:
            self._set_reading(False)
        return {"pid": proc.pid}

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        if self._heartbeat_check is not None and self._heartbeat_check.running:
            self._heartbeat_check.stop()
        self._fail_pending()
        proc = self._proc
        if proc is None or proc.ended:
            return defer.succeed(None)
        ended: defer.Deferred[None] = defer.Deferred()
        proc.on_end = ended
        self._signal(signal.SIGKILL)
        return ended

    # --- commands

    def _send(self, message: dict) -> None:
        proc = self._proc
        if proc is None or proc.ended:
            raise KernelGone("the kernel is not running")
        proc.transport.writeToChild(CMD_FD, json.dumps(message).encode() + b"\n")

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is None or proc.ended:
            return
        try:
            proc.transport.signalProcess(sig)
        except ProcessExitedAlready:
            pass

    def execute(self, exec_id: int, code: str) -> None:
        self._current = _Current(exec_id)
        self._send({"op": "execute", "id": exec_id, "code": code})

    def complete(self, text: str) -> defer.Deferred[list[str]]:
        return self._ask({"op": "complete", "text": text})

    def inspect(self, code: str, cursor_pos: int, detail: int) -> defer.Deferred[dict]:
        return self._ask({"op": "inspect", "code": code, "cursor_pos": cursor_pos,
                          "detail": detail})

    def _ask(self, message: dict) -> defer.Deferred:
        self._next_id += 1
        d: defer.Deferred = defer.Deferred()
        self._pending[self._next_id] = d
        try:
            self._send({**message, "id": self._next_id})
        except KernelGone:
            del self._pending[self._next_id]
            raise
        return d

    def interrupt(self) -> None:
        cur = self._current
        if cur is not None and not cur.started:
            # Still on its way to the driver, which would ignore a SIGINT before it began:
            # interrupt once it says it began.
            cur.interrupt_pending = True
            return
        self._signal(signal.SIGINT)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def pause_output(self) -> None:
        self._paused = True
        self._set_reading(False)

    def resume_output(self) -> None:
        self._paused = False
        self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        proc = self._proc
        if proc is None or proc.ended or proc.transport is None:
            return
        for fd in (STDOUT_FD, STDERR_FD):
            pipe = proc.transport.pipes.get(fd)
            if pipe is not None:
                if on:
                    pipe.startReading()
                else:
                    pipe.stopReading()

    # --- what the kernel says

    def _on_heartbeat(self) -> None:
        self._last_beat = self.reactor.seconds()
        if self._responsive is not True:
            self._responsive = True
            self.events.kernel_responsive(True)

    def _check_heartbeat(self) -> None:
        if not self.alive or not self._ready:
            return
        silent = self.reactor.seconds() - self._last_beat > self.unresponsive_after
        if silent and self._responsive is not False:
            self._responsive = False
            self.events.kernel_responsive(False)

    def _on_output(self, fd: int, text: str) -> None:
        cur = self._current
        kind = p.STDOUT if fd == STDOUT_FD else p.STDERR
        if cur is not None and fd in cur.open_pipes:
            self.events.kernel_output(kind, text, cur.id)
        else:
            self.events.kernel_output(kind, text)  # a thread of earlier code, between runs

    def _on_frame(self, fd: int, payload: bytes) -> None:
        """A display() of the kernel's code (see driver.py), in its place in the output."""
        try:
            record = json.loads(payload)
        except ValueError:
            log.warn("kernel {name}: unreadable display record", name=self.name)
            return
        kind = {"display": p.DISPLAY, "update_display": p.UPDATE_DISPLAY,
                "clear_output": p.CLEAR_OUTPUT}.get(record.get("kind")) \
            if isinstance(record, dict) else None
        if kind is None:
            return
        cur = self._current
        exec_id = cur.id if cur is not None and fd in cur.open_pipes else None
        if kind == p.CLEAR_OUTPUT:
            self.events.kernel_output(kind, "", exec_id, {"wait": bool(record.get("wait"))})
            return
        data = record.get("data")
        if not isinstance(data, dict):
            return
        extra: dict[str, Any] = {"data": data, "metadata": record.get("metadata") or {}}
        if isinstance(record.get("transient"), dict):
            extra["transient"] = record["transient"]
        plain = str(data.get("text/plain", ""))
        self.events.kernel_output(kind, plain + "\n" if plain else "", exec_id, extra)

    def _on_marker(self, fd: int, exec_id: int) -> None:
        cur = self._current
        if cur is not None and cur.id == exec_id:
            cur.open_pipes.discard(fd)
            self._maybe_finished(cur)

    def _maybe_finished(self, cur: _Current) -> None:
        if cur.reply is None or cur.open_pipes:
            return
        self._current = None
        reply = dict(cur.reply)
        reply.pop("op", None)
        # A rich value's bundle goes out in the result record (not again in the reply).
        data, metadata = reply.pop("data", None), reply.pop("metadata", None)
        if reply.get("status") == "ok":
            value = reply.get("value")
            if value is not None:
                self.events.kernel_output(p.RESULT, value + "\n", cur.id, {
                    "data": data if isinstance(data, dict) else {"text/plain": value},
                    "metadata": metadata if isinstance(metadata, dict) else {}})
        else:
            text = (reply.get("traceback") or
                    f"{reply.get('type')}: {reply.get('message')}\n")
            self.events.kernel_output(p.ERROR, text, cur.id, {"error": {
                "ename": str(reply.get("type") or "Error"),
                "evalue": str(reply.get("message") or ""),
                "traceback": text.rstrip("\n").split("\n"),
            }})
        self.events.kernel_done(cur.id, reply)

    def _on_kernel_message(self, message: dict) -> None:
        op = message.get("op")
        if op == "ready":
            self._ready = True
            self._responsive = True
            self._last_beat = self.reactor.seconds()
            self.version = str(message.get("python") or "") or None
            self.events.kernel_ready({"pid": message.get("pid"),
                                      "python": message.get("python")})
        elif op == "started":
            cur = self._current
            if cur is not None and cur.id == message.get("id") and not cur.started:
                cur.started = True
                if cur.interrupt_pending:
                    cur.interrupt_pending = False
                    self._signal(signal.SIGINT)
        elif op == "done":
            cur = self._current
            if cur is not None and cur.id == message.get("id"):
                cur.reply = message
                self._maybe_finished(cur)
        elif op == "completions":
            d = self._pending.pop(message.get("id"), None)
            if d is not None:
                d.callback(list(message.get("matches") or []))
        elif op == "inspection":
            d = self._pending.pop(message.get("id"), None)
            if d is not None:
                text = str(message.get("text") or "")
                d.callback({"found": bool(message.get("found")), "text": text,
                            "data": {"text/plain": text} if text else {}, "metadata": {}})
        elif op == "input":
            req = message.get("req")

            def answer(value: str | None, error: str | None = None) -> None:
                reply = {"op": "input_reply", "req": req}
                if error is not None:
                    reply["error"] = error
                else:
                    reply["value"] = value
                try:
                    self._send(reply)
                except KernelGone:
                    pass

            cur = self._current
            self.events.kernel_input(
                message.get("id") if cur is not None and cur.id == message.get("id") else None,
                str(message.get("prompt", "")), bool(message.get("password")), answer)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(KernelGone("the kernel process ended")))

    def _process_exited(self, proc: _KernelProcess, reason: Failure) -> None:
        value = reason.value
        exit_code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if isinstance(value, ProcessDone):
            exit_code = 0
        info = exit_info(exit_code, sig, proc.pid)
        if not isinstance(value, (ProcessDone, ProcessTerminated)):
            info["how"] = reason.getErrorMessage()
        self._ready = False
        self._current = None
        self._fail_pending()
        if not self.closed:
            self.events.kernel_exited(info)


__all__ = ["KernelBackend", "KernelEvents", "PythonBackend", "KernelGone", "exit_info"]
