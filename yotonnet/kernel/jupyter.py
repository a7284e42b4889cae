"""Any Jupyter kernel as a shared kernel: the broker's backend that speaks jupyter_client.

``yotonnet kernel NAME --jupyter SPEC`` (or ``KernelBroker(...,
backend=JupyterBackend("python3"))``) starts the kernel of kernelspec SPEC
(``python3`` for ipykernel, ``bash``, any installed one) with
:class:`jupyter_client.KernelManager` and serves it on the mesh under
``kernel.NAME.*`` like yotonnet's own kernel: consoles and clients work
unchanged. jupyter_client does everything Jupyter-specific: the kernelspec
(argv, env, interrupt mode), the launch (a process group of its own), the
connection file (written 0600), the sockets, and the wire protocol (signing,
checking and (de)serialising every message with :class:`~jupyter_client.session.Session`).

**ZMQ stays on this host.** Each kernel process gets a new KernelManager
with a fresh random HMAC key, and its connection file lives in a private
directory (mode 0700) made for this backend; by default the transport is
``ipc`` (unix sockets in that directory, which no other OS user can even
open), or ``tcp`` on 127.0.0.1 for kernels that do not support ipc (then
the key is what keeps other local users out). Nothing listens beyond the
loopback: the mesh is the only way in from elsewhere.

**How it runs under Twisted.** jupyter_client's managers and clients are
written for asyncio (the blocking ones run an asyncio loop per call), and
its sockets are pyzmq's. This backend uses three of its parts, each in the
way that never blocks the reactor and needs no thread:

* The **sockets**: shell, stdin, IOPub and heartbeat sockets made by
  ``KernelManager.connect_*`` (plain ``zmq.Socket``), each registered with
  the reactor as an :class:`~twisted.internet.interfaces.IReadDescriptor` on
  its ``zmq.FD``. That descriptor is edge-triggered (it says "the socket's
  state may have changed", not "a message is waiting"), so a read checks
  ``zmq.EVENTS`` and receives until nothing is left, at most a batch per
  reactor turn; after each send it looks again, and a timer looks every
  0.1 s in case an edge was missed. Messages go through ``Session.send`` and
  ``Session.recv`` (non-blocking): signatures, duplicates and the message
  format are jupyter_client's business. The asyncio reactor would also
  work, but it would force every yotonnet process (and test) onto one
  reactor; threads calling a blocking client would share sockets across
  threads, which zmq forbids, and need locks to hand output back.
* The **manager**'s calls that return at once (``start_kernel``,
  ``interrupt_kernel``, ``request_shutdown``, ``signal_kernel``,
  ``is_alive``, ``cleanup_resources``): they run in the reactor thread
  (jupyter_client runs each one's coroutine to completion on a private
  asyncio loop; none of them waits for the kernel). Its calls that do wait
  (``shutdown_kernel`` without ``now``, ``restart_kernel``) are not used: the
  broker asks the kernel to end (``request_shutdown``), watches it with
  ``is_alive`` every 0.1 s, and kills it (``signal_kernel(SIGKILL)``, the
  whole process group) after ``kill_after``; a restart starts a new manager.
* libzmq's own I/O thread (in C) moves the bytes, as in any pyzmq program.

**Status from three signals**: the *process* as the manager sees it
(``is_alive``: a ``kill -9`` shows dead within 0.1 s, with the signal), the
*kernel*'s own word (``status`` busy/idle on IOPub, and its heartbeat
channel: no echo within ``unresponsive_after`` is very-busy; ipykernel
answers the heartbeat from a C thread, so for it this means frozen, not
merely busy in C), and the *mesh link* (each client's own).

**Output is paced, not dropped.** IOPub is drained only while the mesh takes
more: when the slowest lossless console lags, the broker pauses its
producer and this backend stops reading IOPub, so what waits is in ZMQ's
queues (1,000 messages at each end: this process's memory stays bounded)
and then in the kernel. An execution ends only when its ``execute_reply``
came and IOPub said ``idle`` for it, so all its output is in the stream
first. The kernel's IOPub is a ZMQ PUB socket, which drops what is beyond
its queue rather than wait; so once an ipykernel answers, the backend runs
one silent line in it (:data:`IPYKERNEL_NODROP`) that sets ``XPUB_NODROP``
on that socket: from then on the kernel's IOPub thread waits, and a
``print(..., flush=True)`` waits with it, instead of dropping (the status
says ``iopub_nodrop``; ipykernel's plain prints are batched every 0.2 s in
its own memory meanwhile). Other kernels cannot be made to wait: for them
the backend reads on while paused and holds what it reads, in order
(:data:`HOLD_MESSAGES`, :data:`HOLD_BYTES`), and hands it on at the resume;
only past that bound does it stop reading, and such a kernel may then drop
what its own queue cannot take; should that drop an execution's final
``idle``, a fence (a ``kernel_info_request`` sent a
second after the reply: IOPub is one ordered stream) ends the execution
anyway, with a note in the output saying it may be incomplete.

Records keep Jupyter's content: ``execute_result``, ``display_data``,
``update_display_data``, ``clear_output`` and ``error`` carry their MIME
bundle (``data``, ``metadata``, ``transient``) or error fields intact next
to the text a terminal shows (see :mod:`yotonnet.kernel.protocol`).
``input()`` arrives as an ``input_request`` on the stdin socket, tied by its
parent to the execution that asked, and goes to that execution's user only.

Needs the ``jupyter`` extra (``pip install yotonnet[jupyter]``), which brings
jupyter_client and pyzmq; the kernels themselves (ipykernel, bash_kernel,
...) are installed as usual and found by their kernelspecs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import protocol as p
from .backend import KernelBackend, KernelGone, exit_info

try:
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager
    from jupyter_client.session import Session
    from zmq.utils.monitor import parse_monitor_message
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        f"hosting a Jupyter kernel needs jupyter_client ({e}); "
        "install it with: pip install 'yotonnet[jupyter]'"
    ) from None

log = Logger(namespace="yotonnet.kernel.jupyter")

#: messages read from one socket per reactor turn before letting others run
READ_BATCH = 200
#: how long a kernel that answers waits for its stdin socket's handshake before it is
#: served anyway
STDIN_HANDSHAKE_WAIT = 10.0
#: stream text longer than this goes out as several output records
CHUNK = 64 * 1024
#: IOPub messages of a kernel that would drop (not made to wait) read on and held here
#: while the mesh is paused; past either bound the reading stops and the kernel's own
#: queue takes the rest (and drops past its 1,000)
HOLD_MESSAGES = 50_000
HOLD_BYTES = 64 * 1024 * 1024
#: what ipykernel takes as "no input" (it raises EOFError), as a terminal's Ctrl-D
EOF_ANSWER = "\x04"
#: Run silently in an ipykernel once it answers: its IOPub socket (a ZMQ XPUB) then
#: waits, instead of dropping, when our end stops draining it (set in the thread that
#: sends on it, before anything the users run is sent). Binds no name in the kernel.
IPYKERNEL_NODROP = (
    "(lambda zmq, thread: thread.io_loop.add_callback(lambda: thread.socket.setsockopt("
    "zmq.XPUB_NODROP, 1)))(__import__('zmq'), get_ipython().kernel.iopub_thread)"
)


def kernelspec_names() -> list[str]:
    """The installed kernelspecs' names."""
    return sorted(KernelSpecManager().find_kernel_specs())


@implementer(IReadDescriptor)
class SocketReader:
    """One zmq socket as a reactor reader (see the module docstring).

    ``owner`` has the ``session`` (a jupyter_client ``Session``) that reads and
    checks the messages, the ``reactor`` and a ``name`` for the logs: this
    module's backend, or :class:`yotonnet.kernel.frontend.JupyterFrontend`.
    ``handle(message)`` gets each message (``raw``: its frames, unchecked;
    ``idents``: ``handle(identities, message)``, as a ROUTER socket needs to
    answer).
    """

    def __init__(self, owner: Any, sock: Any, name: str, handle: Callable[..., None],
                 raw: bool = False, idents: bool = False) -> None:
        self.backend = owner
        self.sock = sock
        self.name = name
        self.handle = handle
        self.raw = raw
        self.idents = idents
        self.fd = sock.getsockopt(zmq.FD)
        self.paused = False
        self.closed = False
        self.registered = False
        self.again: Any = None

    def fileno(self) -> int:
        return -1 if self.closed else self.fd

    def logPrefix(self) -> str:
        return f"jupyter-{self.name}"

    def connectionLost(self, reason: Failure) -> None:
        pass

    def doRead(self) -> None:
        self.drain()

    def register(self, reactor: Any) -> None:
        if not self.registered and not self.closed:
            self.registered = True
            reactor.addReader(self)

    def unregister(self, reactor: Any) -> None:
        if self.registered:
            self.registered = False
            reactor.removeReader(self)

    def drain(self) -> None:
        """Receive and handle what is waiting, up to a batch; then come back later."""
        if self.again is not None and self.again.active():
            self.again.cancel()
        self.again = None
        for _ in range(READ_BATCH):
            if self.paused or self.closed:
                return
            try:
                if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                if self.raw:
                    message = self.sock.recv_multipart(zmq.NOBLOCK)
                else:
                    idents, message = self.backend.session.recv(self.sock, mode=zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                log.warn("kernel {name}: {sock} socket: {e}", name=self.backend.name,
                         sock=self.name, e=e)
                return
            except Exception as e:  # noqa: BLE001 - a bad signature, an unreadable message
                log.warn("kernel {name}: dropped an unreadable {sock} message: {e}",
                         name=self.backend.name, sock=self.name, e=e)
                continue
            if message is None:
                return
            try:
                if self.idents and not self.raw:
                    self.handle(idents, message)
                else:
                    self.handle(message)
            except Exception:  # noqa: BLE001 - one odd message must not stop the kernel
                log.failure("kernel {name}: handling a {sock} message", name=self.backend.name,
                            sock=self.name)
        # More may wait: the descriptor will not say so again, so come back next turn.
        self.again = self.backend.reactor.callLater(0, self.drain)

    def kick(self) -> None:
        """Look at the socket on the next reactor turn (after a send, or a resume)."""
        if not self.closed and (self.again is None or not self.again.active()):
            self.again = self.backend.reactor.callLater(0, self.drain)

    def drain_all(self, handle: Callable[[dict], None] | None = None) -> None:
        """Everything still queued, paused or not (the kernel has ended), to ``handle``
        (by default the reader's)."""
        handle = handle or self.handle
        for _ in range(100_000):
            try:
                _, message = self.backend.session.recv(self.sock, mode=zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            except Exception:  # noqa: BLE001 - unreadable: skip it
                continue
            if message is None:
                return
            try:
                handle(message)
            except Exception:  # noqa: BLE001
                log.failure("kernel {name}: handling a {sock} message", name=self.backend.name,
                            sock=self.name)

    def close(self, reactor: Any) -> None:
        self.unregister(reactor)
        self.closed = True
        if self.again is not None and self.again.active():
            self.again.cancel()
        self.sock.close(linger=0)


class _Run:
    """The execution the kernel runs now."""

    def __init__(self, exec_id: int, msg_id: str) -> None:
        self.id = exec_id
        self.msg_id = msg_id
        self.reply: dict | None = None
        self.idle = False
        self.value: str | None = None
        self.error_published = False
        #: when its execute_reply came without IOPub's idle, and the fence sent since
        self.replied_at: float | None = None
        self.fence: str | None = None
        #: the kernel began running it (its execute_input, or output, came); an interrupt
        #: asked before then waits for it (a kernel ignores SIGINT between executions)
        self.started = False
        self.interrupt_pending = False
        self.busy_timer: Any = None
        self.idle_at: float | None = None


class JupyterBackend(KernelBackend):
    """The kernel of Jupyter kernelspec ``kernel_name``, run with jupyter_client.

    ``transport`` is ``"ipc"`` (default) or ``"tcp"`` (127.0.0.1); ``cwd``
    and ``env`` are the kernel's working directory and environment (default:
    this process's); ``startup_timeout`` bounds how long a kernel may take to
    answer its first ``kernel_info_request`` before it is killed;
    ``poll_interval`` is how often the process and the sockets are checked.
    """

    kind = "jupyter"

    def __init__(self, kernel_name: str = "python3", *, transport: str = "ipc",
                 cwd: str | None = None, env: dict[str, str] | None = None,
                 startup_timeout: float = 60.0, poll_interval: float = 0.1) -> None:
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"transport must be 'ipc' or 'tcp', not {transport!r}")
        self.kernel_name = kernel_name
        self.transport = transport
        self.cwd = cwd
        self.env = env
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.km: Any = None
        self.session: Any = None
        self.closed = False
        self._zmq: Any = None
        self._dir: str | None = None
        self._spec: Any = None
        self._gen = 0
        self._readers: dict[str, SocketReader] = {}
        self._run: _Run | None = None
        self._requests: dict[str, tuple[str, defer.Deferred]] = {}
        self._monitor: LoopingCall | None = None
        self._alive = False
        self._ready = False
        self._busy = False
        self._paused = False
        self._stdin_connected = False
        #: IOPub messages read while paused (a kernel whose IOPub would drop), and their size
        self._held: deque[dict] = deque()
        self._held_bytes = 0
        self._started_at = 0.0
        self._info_reply: dict | None = None
        #: our kernel_info requests while starting, and whether IOPub said idle after one
        self._info_ids: set[str] = set()
        self._iopub_seen = False
        #: the silent set-up execution of an ipykernel (see IPYKERNEL_NODROP)
        self._setup: _Run | None = None
        #: the kernel's IOPub waits rather than drops when we stop draining it
        self.nodrop = False
        self._last_info_request = 0.0
        self._responsive: bool | None = None
        self._hb_sent: float | None = None
        self._hb_last = 0.0
        self._exit_note: str | None = None
        self._closing: defer.Deferred[None] | None = None
        self._close_loop: LoopingCall | None = None
        self._close_deadline = 0.0
        self.pid: int | None = None
        self.connection_file: str | None = None

    # --- what the broker sees

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "kernelspec": self.kernel_name,
                               "transport": self.transport}
        if self._spec is not None:
            out.update(display_name=self._spec.display_name, language=self._spec.language,
                       interrupt_mode=self._spec.interrupt_mode)
        return out

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def busy(self) -> bool:
        return self._busy

    def kernel_info(self) -> dict[str, Any]:
        """The kernel's own ``kernel_info_reply`` content, as it answered at its start."""
        if self._info_reply is not None:
            return dict(self._info_reply)
        info = super().kernel_info()
        if self._spec is not None:
            info["language_info"] = {"name": self._spec.language}
            info["banner"] = f"{self._spec.display_name} (starting)\n"
        return info

    @property
    def output_paused(self) -> bool:
        """IOPub is not being drained now (the mesh cannot take more)."""
        return self._paused

    # --- life cycle

    def start(self) -> dict[str, Any]:
        if self.closed:
            raise KernelGone("the backend is closed")
        if self._zmq is None:
            self._zmq = zmq.Context()
            self._dir = tempfile.mkdtemp(prefix="yotonnet-jupyter-")  # mode 0700
        self._gen += 1
        gen = self._gen
        session = Session(key=secrets.token_hex(32).encode("ascii"),
                          signature_scheme="hmac-sha256", username="yotonnet")
        assert self._dir is not None
        km = KernelManager(
            kernel_name=self.kernel_name, context=self._zmq, session=session,
            transport=self.transport,
            ip=os.path.join(self._dir, f"k{gen}") if self.transport == "ipc" else "127.0.0.1",
            connection_file=os.path.join(self._dir, f"kernel-{gen}.json"),
        )
        try:
            self._spec = km.kernel_spec
        except NoSuchKernel:
            raise RuntimeError(
                f"cannot start the kernel: no Jupyter kernelspec {self.kernel_name!r} "
                f"(installed: {', '.join(kernelspec_names()) or 'none'})"
            ) from None
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's warning on 3.11+
        try:
            km.start_kernel(cwd=self.cwd, env=env, stdout=subprocess.DEVNULL)
        except Exception as e:
            try:
                km.cleanup_resources()
            except Exception:  # noqa: BLE001, S110 - the start already failed
                pass
            raise RuntimeError(f"cannot start the kernel of kernelspec {self.kernel_name!r} "
                               f"({' '.join(self._spec.argv)}): {e}") from None
        self.km = km
        self.session = session
        self.connection_file = km.connection_file
        self.pid = getattr(km.provisioner, "pid", None)
        self._alive = True
        self._ready = False
        self._busy = False
        self._run = None
        self._responsive = None
        self._info_reply = None
        self._info_ids = set()
        self._iopub_seen = False
        self._setup = None
        self.nodrop = False
        self._exit_note = None
        self._hb_sent = None
        now = self.reactor.seconds()
        self._started_at = self._hb_last = now
        identity = session.bsession
        stdin = km.connect_stdin(identity=identity)
        # The kernel's stdin ROUTER silently drops an input_request to a peer it does not
        # know yet (ours may still be reconnecting: we connect before the kernel binds),
        # and input() then waits forever: the kernel is ready only once that socket's
        # handshake is done (shell and IOPub prove themselves by answering).
        self._stdin_connected = False
        monitor = stdin.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._readers = {
            "shell": SocketReader(self, km.connect_shell(identity=identity), "shell",
                                   self._on_shell),
            "iopub": SocketReader(self, km.connect_iopub(), "iopub", self._iopub_arrived),
            "stdin": SocketReader(self, stdin, "stdin", self._on_stdin),
            "stdin-monitor": SocketReader(self, monitor, "stdin-monitor",
                                          self._on_stdin_monitor, raw=True),
            "hb": SocketReader(self, km.connect_hb(), "hb", self._on_hb, raw=True),
        }
        for name, reader in self._readers.items():
            if name == "iopub" and self._paused:
                reader.paused = True
                continue
            reader.register(self.reactor)
        self._ask_info()
        if self._monitor is None:
            self._monitor = LoopingCall(self._tick)
            self._monitor.clock = self.reactor
            self._monitor.start(self.poll_interval, now=False)
        return {"pid": self.pid, "connection_file": self.connection_file}

    def close(self) -> defer.Deferred[None]:
        if self._closing is not None:
            return self._closing
        self.closed = True
        if self._monitor is not None and self._monitor.running:
            self._monitor.stop()
        self._fail_requests()
        self._closing = defer.Deferred()
        if not self._alive:
            self._release()
            return self._closing
        self._signal(signal.SIGKILL)
        self._close_deadline = self.reactor.seconds() + 5.0
        self._close_loop = LoopingCall(self._check_closed)
        self._close_loop.clock = self.reactor
        self._close_loop.start(0.02, now=True)
        return self._closing

    def _check_closed(self) -> None:
        if self._process_alive() and self.reactor.seconds() < self._close_deadline:
            return
        if self._close_loop is not None and self._close_loop.running:
            self._close_loop.stop()
        self._alive = False
        self._release()

    def _release(self) -> None:
        """Everything of the last kernel and of this backend: sockets, files, the context."""
        self._drop_kernel()
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._closing is not None and not self._closing.called:
            self._closing.callback(None)

    def _drop_kernel(self) -> None:
        """The kernel process has ended: close its sockets, remove its files."""
        for reader in self._readers.values():
            reader.close(self.reactor)
        self._readers = {}
        km, self.km = self.km, None
        if km is not None:
            try:
                km.cleanup_resources()  # connection file, ipc files, its control socket
            except Exception:  # noqa: BLE001
                log.failure("kernel {name}: cleaning up after the kernel", name=self.name)

    # --- the process and the heartbeat (every poll_interval)

    def _process_alive(self) -> bool:
        km = self.km
        if km is None:
            return False
        try:
            return bool(km.is_alive())
        except Exception:  # noqa: BLE001
            return False

    def _tick(self) -> None:
        if not self._alive:
            return
        if not self._process_alive():
            self._exited()
            return
        for reader in list(self._readers.values()):
            if not reader.paused and not reader.closed:
                reader.drain()  # an edge the reactor may have missed
        now = self.reactor.seconds()
        if not self._ready:
            if (not self._stdin_connected
                    and now - self._started_at > STDIN_HANDSHAKE_WAIT):
                # (a kernel that answers but never accepts our stdin: serve it anyway)
                log.warn("kernel {name}: its stdin socket did not connect within {s:g} s; "
                         "input() may not reach anyone", name=self.name,
                         s=STDIN_HANDSHAKE_WAIT)
                self._stdin_connected = True
                self._maybe_ready()
            if now - self._started_at > self.startup_timeout:
                self._exit_note = (f"it did not answer within {self.startup_timeout:g} s "
                                   "of its start")
                log.error("kernel {name}: {why}; killing it", name=self.name,
                          why=self._exit_note)
                self._signal(signal.SIGKILL)
            elif self._setup is None and now - self._last_info_request > 0.25:
                self._ask_info()
        self._heartbeat(now)
        run = self._run
        if (run is not None and run.reply is None and run.idle_at is not None
                and now - run.idle_at > 0.5):
            # Idle for it and no reply: the kernel gave up on the request before the code
            # ran. ipykernel does so when a SIGINT lands between its execute_input and the
            # code (it logs "KeyboardInterrupt caught in kernel"): interrupted, then.
            log.info("kernel {name}: execution {id} ended without a reply", name=self.name,
                     id=run.id)
            run.reply = {"status": "error", "ename": "KeyboardInterrupt",
                         "evalue": "interrupted before the code ran (the kernel sent no "
                                   "execute_reply)", "traceback": []}
            self._maybe_done(run)
            run = self._run
        if (run is not None and run.replied_at is not None and not run.idle
                and run.fence is None and not self._paused and now - run.replied_at > 1.0):
            # The reply came a while ago, IOPub is drained, and its idle has not come: the
            # kernel may have dropped it. A request sent now is a fence: IOPub is one
            # ordered stream, so once its status arrives, all of this run's has come.
            try:
                msg = self._send("shell", "kernel_info_request", {})
            except KernelGone:
                return
            run.fence = msg["header"]["msg_id"]
            self._requests[run.fence] = ("fence", defer.Deferred())

    def _heartbeat(self, now: float) -> None:
        hb = self._readers.get("hb")
        if hb is None:
            return
        if self._hb_sent is None:
            if now - self._hb_last >= max(self.poll_interval, self.unresponsive_after / 4):
                try:
                    hb.sock.send(b"ping", zmq.NOBLOCK)
                except zmq.ZMQError:
                    return
                self._hb_sent = now
                hb.kick()
        elif now - self._hb_sent > self.unresponsive_after and self._ready:
            self._set_responsive(False)

    def _on_hb(self, _echo: list[bytes]) -> None:
        self._hb_sent = None
        self._hb_last = self.reactor.seconds()
        if self._ready:
            self._set_responsive(True)

    def _set_responsive(self, responsive: bool) -> None:
        if self._responsive is not responsive:
            self._responsive = responsive
            self.events.kernel_responsive(responsive)

    def _exited(self) -> None:
        km = self.km
        process = getattr(km.provisioner, "process", None) if km is not None else None
        code = getattr(process, "returncode", None)
        # What the kernel said before it ended is still queued here: all of it goes out
        # (past the window it stays in the history, where clients fill gaps from).
        held, self._held, self._held_bytes = self._held, deque(), 0
        for msg in held:
            self._on_iopub(msg)
        for name, reader in self._readers.items():
            if name in ("shell", "iopub"):
                reader.drain_all(self._on_iopub if name == "iopub" else None)
        self._alive = False
        self._ready = False
        self._busy = False
        if self._run is not None and self._run.busy_timer is not None \
                and self._run.busy_timer.active():
            self._run.busy_timer.cancel()
        self._run = None
        self._drop_kernel()
        self._fail_requests()
        info = exit_info(code if code is None or code >= 0 else None,
                         -code if code is not None and code < 0 else None, self.pid)
        if self._exit_note:
            info["how"] = f"{info['how']}: {self._exit_note}"
        if not self.closed:
            self.events.kernel_exited(info)

    def _fail_requests(self) -> None:
        requests, self._requests = self._requests, {}
        for _, d in requests.values():
            d.errback(Failure(KernelGone("the kernel process ended")))

    # --- sending

    def _send(self, channel: str, msg_type: str, content: dict,
              parent: dict | None = None) -> dict:
        reader = self._readers.get(channel)
        if not self._alive or reader is None:
            raise KernelGone("the kernel is not running")
        msg = self.session.send(reader.sock, msg_type, content, parent=parent)
        reader.kick()  # a send may change the socket's state without waking its descriptor
        return msg

    def _ask_info(self) -> None:
        self._last_info_request = self.reactor.seconds()
        try:
            msg = self._send("shell", "kernel_info_request", {})
        except KernelGone:
            return
        self._requests[msg["header"]["msg_id"]] = ("kernel_info", defer.Deferred())
        self._info_ids.add(msg["header"]["msg_id"])

    def _request(self, msg_type: str, content: dict) -> defer.Deferred:
        msg = self._send("shell", msg_type, content)
        d: defer.Deferred = defer.Deferred()
        self._requests[msg["header"]["msg_id"]] = (msg_type, d)
        return d

    def _signal(self, signum: int) -> None:
        km = self.km
        if km is None or not self._alive:
            return
        try:
            km.signal_kernel(signum)  # the kernel's whole process group
        except Exception as e:  # noqa: BLE001 - it ended meanwhile
            log.debug("kernel {name}: signal {sig}: {e}", name=self.name, sig=signum, e=e)

    # --- commands from the broker

    def execute(self, exec_id: int, code: str) -> None:
        msg = self._send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": True, "stop_on_error": False,
        })
        self._run = _Run(exec_id, msg["header"]["msg_id"])

    def complete(self, text: str) -> defer.Deferred[list[str]]:
        def matches(content: dict) -> list[str]:
            if content.get("status") != "ok":
                return []
            start = content.get("cursor_start")
            end = content.get("cursor_end")
            start = start if isinstance(start, int) and 0 <= start <= len(text) else len(text)
            end = end if isinstance(end, int) and start <= end <= len(text) else len(text)
            out: list[str] = []
            for match in content.get("matches") or []:
                if isinstance(match, str):
                    whole = text[:start] + match + text[end:]
                    if whole not in out:
                        out.append(whole)
            return out

        return self._request("complete_request", {"code": text, "cursor_pos": len(text)}
                             ).addCallback(matches)

    def inspect(self, code: str, cursor_pos: int, detail: int) -> defer.Deferred[dict]:
        def found(content: dict) -> dict:
            ok = content.get("status") == "ok" and bool(content.get("found"))
            data = (content.get("data") or {}) if ok else {}
            return {"found": ok, "text": p.strip_ansi(str(data.get("text/plain", ""))),
                    "data": data, "metadata": content.get("metadata") or {}}

        return self._request("inspect_request", {
            "code": code, "cursor_pos": cursor_pos, "detail_level": detail,
        }).addCallback(found)

    def interrupt(self) -> None:
        run = self._run
        if run is not None and not run.started:
            # The kernel has not begun this code yet: interrupting now would hit it between
            # executions, where it ignores SIGINT. Interrupt once it has begun.
            run.interrupt_pending = True
            return
        self._interrupt_now()

    def _run_started(self, run: _Run) -> None:
        if run.busy_timer is not None and run.busy_timer.active():
            run.busy_timer.cancel()
        if run.started:
            return
        run.started = True
        if run.interrupt_pending and self._run is run:
            run.interrupt_pending = False
            self._interrupt_now()

    def _interrupt_now(self) -> None:
        km = self.km
        if km is None or not self._alive:
            return
        try:
            km.interrupt_kernel()  # a signal or an interrupt_request, as the kernelspec says
        except Exception as e:  # noqa: BLE001 - it ended meanwhile
            log.warn("kernel {name}: interrupt failed: {e}", name=self.name, e=e)

    def terminate(self) -> None:
        km = self.km
        if km is None or not self._alive:
            return
        try:
            km.request_shutdown()  # shutdown_request on the control channel
        except Exception as e:  # noqa: BLE001
            log.warn("kernel {name}: shutdown request failed: {e}; terminating it",
                     name=self.name, e=e)
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    @property
    def iopub_held(self) -> int:
        """IOPub messages read and held while the output is paused."""
        return len(self._held)

    def pause_output(self) -> None:
        self._paused = True
        if self.nodrop:
            self._stop_reading_iopub()  # it waits in the kernel, losing nothing
        # otherwise: read on into the hold (see _iopub_arrived), within its bounds

    def _stop_reading_iopub(self) -> None:
        reader = self._readers.get("iopub")
        if reader is not None:
            reader.paused = True
            reader.unregister(self.reactor)

    def resume_output(self) -> None:
        self._paused = False
        held = self._held
        while held and not self._paused:
            msg = held.popleft()
            self._held_bytes -= _size(msg)
            self._on_iopub(msg)  # (which may pause the output again)
        if self._paused and not self.nodrop and not self._hold_full():
            return  # still reading on into the hold
        reader = self._readers.get("iopub")
        if reader is not None and not reader.closed and not self._paused:
            reader.paused = False
            reader.register(self.reactor)
            reader.kick()

    def _hold_full(self) -> bool:
        return len(self._held) >= HOLD_MESSAGES or self._held_bytes >= HOLD_BYTES

    def _iopub_arrived(self, msg: dict) -> None:
        if not self._held and not self._paused:
            self._on_iopub(msg)
            return
        self._held.append(msg)  # (after those held: the order stays)
        self._held_bytes += _size(msg)
        if self._hold_full():
            log.warn("kernel {name}: {n} output messages wait for the slowest console; "
                     "reading no more of them (the kernel may drop what follows)",
                     name=self.name, n=len(self._held))
            self._stop_reading_iopub()

    # --- what the kernel says

    def _on_shell(self, msg: dict) -> None:
        parent = (msg.get("parent_header") or {}).get("msg_id")
        content = msg.get("content") or {}
        run = self._run
        if run is not None and parent == run.msg_id:
            if msg["msg_type"] == "execute_reply":
                run.reply = content
                run.replied_at = self.reactor.seconds()
                self._maybe_done(run)
            return
        setup = self._setup
        if setup is not None and parent == setup.msg_id:
            if msg["msg_type"] == "execute_reply":
                setup.reply = content
                self._maybe_ready()
            return
        request = self._requests.pop(parent, None)
        if request is None:
            return
        kind, d = request
        if kind == "kernel_info":
            if msg["msg_type"] == "kernel_info_reply" and self._info_reply is None:
                self._info_reply = content
                self._maybe_ready()
        else:
            d.callback(content)

    def _on_stdin_monitor(self, frames: list[bytes]) -> None:
        if parse_monitor_message(frames)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        self._stdin_connected = True
        stdin, monitor = self._readers.get("stdin"), self._readers.pop("stdin-monitor", None)
        if stdin is not None and not stdin.closed:
            stdin.sock.disable_monitor()
        if monitor is not None:
            self.reactor.callLater(0, monitor.close, self.reactor)  # (not while reading it)
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if (self._ready or self._info_reply is None or not self._iopub_seen
                or not self._stdin_connected):
            return
        info = self._info_reply
        if info.get("implementation") == "ipython":
            setup = self._setup
            if setup is None:
                msg = self._send("shell", "execute_request", {
                    "code": IPYKERNEL_NODROP, "silent": True, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": False,
                })
                self._setup = _Run(0, msg["header"]["msg_id"])
                return
            if setup.reply is None or not setup.idle:
                return
            self.nodrop = setup.reply.get("status") == "ok"
            if not self.nodrop:
                log.warn("kernel {name}: could not make ipykernel's IOPub wait instead of "
                         "drop ({error}); a console that stalls for long may miss output",
                         name=self.name, error=setup.reply.get("evalue"))
        self._ready = True
        self._info_ids = set()
        self._responsive = True
        self._hb_last = self.reactor.seconds()
        # Later kernel_info replies (of requests sent while waiting) are not wanted.
        for msg_id in [m for m, (kind, _) in self._requests.items() if kind == "kernel_info"]:
            del self._requests[msg_id]
        language = info.get("language_info") or {}
        self.events.kernel_ready({
            "pid": self.pid, "language": language.get("name"),
            "language_version": language.get("version"),
            "implementation": info.get("implementation"),
            "implementation_version": info.get("implementation_version"),
            "protocol_version": info.get("protocol_version"),
            "iopub_nodrop": self.nodrop,
        })

    def _on_stdin(self, msg: dict) -> None:
        if msg["msg_type"] != "input_request":
            return
        run = self._run
        parent = (msg.get("parent_header") or {}).get("msg_id")
        content = msg.get("content") or {}
        reader = self._readers.get("stdin")
        asked = self._gen

        def answer(value: str | None, error: str | None = None) -> None:
            if asked != self._gen or not self._alive or self._readers.get("stdin") is not reader:
                return  # that kernel is gone
            if error is not None:
                log.info("kernel {name}: input(): {error}", name=self.name, error=error)
                value = EOF_ANSWER
            try:
                self._send("stdin", "input_reply", {"value": value}, parent=msg)
            except KernelGone:
                pass

        self.events.kernel_input(run.id if run is not None and parent == run.msg_id else None,
                                 str(content.get("prompt", "")),
                                 bool(content.get("password")), answer)

    def _on_iopub(self, msg: dict) -> None:
        msg_type = msg["msg_type"]
        content = msg.get("content") or {}
        parent = (msg.get("parent_header") or {}).get("msg_id")
        run = self._run
        exec_id = run.id if run is not None and parent == run.msg_id else None
        out = self.events.kernel_output
        if run is not None and run.fence is not None and parent == run.fence and not run.idle:
            log.warn("kernel {name}: IOPub never said idle for execution {id}; the kernel "
                     "dropped messages", name=self.name, id=run.id)
            out(p.SYSTEM, "[the kernel dropped some of its output messages (its IOPub "
                          "queue was full): this execution's output may be incomplete]\n",
                run.id)
            run.idle = True
            self._maybe_done(run)
            run = self._run
            exec_id = None
        if exec_id is not None and run is not None and not run.started:
            if msg_type == "status" and content.get("execution_state") == "busy":
                # A kernel that sends no execute_input: begun a moment after its busy.
                if run.busy_timer is None:
                    run.busy_timer = self.reactor.callLater(0.2, self._run_started, run)
            elif msg_type != "status":
                self._run_started(run)  # execute_input (sent as it begins) or output
        if msg_type == "status":
            state = content.get("execution_state")
            busy = state == "busy"
            if busy != self._busy:
                self._busy = busy
                if self._ready:
                    self.events.kernel_busy(busy)
            if exec_id is not None and state == "idle":
                assert run is not None
                run.idle = True
                run.idle_at = self.reactor.seconds()
                self._maybe_done(run)
            elif not self._ready and state == "idle" and parent in self._info_ids:
                # Started: IOPub reaches us (we are subscribed) and the kernel is idle.
                self._iopub_seen = True
                self._maybe_ready()
            elif (not self._ready and state == "idle" and self._setup is not None
                  and parent == self._setup.msg_id):
                self._setup.idle = True
                self._maybe_ready()
        elif msg_type == "stream":
            kind = p.STDERR if content.get("name") == "stderr" else p.STDOUT
            text = str(content.get("text", ""))
            for at in range(0, len(text), CHUNK):
                out(kind, text[at:at + CHUNK], exec_id)
        elif msg_type in ("execute_result", "display_data", "update_display_data"):
            data = content.get("data") or {}
            plain = str(data.get("text/plain", ""))
            extra = {"data": data, "metadata": content.get("metadata") or {}}
            if content.get("transient"):
                extra["transient"] = content["transient"]
            if msg_type == "execute_result":
                extra["execution_count"] = content.get("execution_count")
                if run is not None and exec_id is not None:
                    run.value = plain
                out(p.RESULT, plain + "\n", exec_id, extra)
            else:
                kind = p.DISPLAY if msg_type == "display_data" else p.UPDATE_DISPLAY
                out(kind, plain + "\n" if plain else "", exec_id, extra)
        elif msg_type == "clear_output":
            out(p.CLEAR_OUTPUT, "", exec_id, {"wait": bool(content.get("wait"))})
        elif msg_type == "error":
            if run is not None and exec_id is not None:
                run.error_published = True
            out(p.ERROR, _traceback_text(content), exec_id, {"error": {
                "ename": content.get("ename"), "evalue": content.get("evalue"),
                "traceback": list(content.get("traceback") or []),
            }})
        # execute_input: the broker published the code already; comm messages: not yet

    def _maybe_done(self, run: _Run) -> None:
        if run.reply is None or not run.idle or self._run is not run:
            return
        self._run = None
        if run.busy_timer is not None and run.busy_timer.active():
            run.busy_timer.cancel()
        content = run.reply
        status = content.get("status")
        if status == "ok":
            reply = {"status": "ok", "value": run.value}
        else:
            if status == "aborted":
                ename, evalue, tb = "Aborted", "the kernel aborted this execution", []
            else:
                ename = str(content.get("ename") or "Error")
                evalue = str(content.get("evalue") or "")
                tb = list(content.get("traceback") or [])
            text = _traceback_text({"ename": ename, "evalue": evalue, "traceback": tb})
            if not run.error_published:
                self.events.kernel_output(p.ERROR, text, run.id, {"error": {
                    "ename": ename, "evalue": evalue, "traceback": tb}})
            reply = {"status": "error", "value": None, "type": ename, "message": evalue,
                     "traceback": p.strip_ansi(text)}
        self.events.kernel_done(run.id, reply)


def _size(msg: dict) -> int:
    """About how much memory a held IOPub message takes (its text and data)."""
    content = msg.get("content") or {}
    size = 200 + len(str(content.get("text") or ""))
    data = content.get("data")
    if isinstance(data, dict):
        size += sum(len(v) if isinstance(v, str) else 100 for v in data.values())
    return size


def _traceback_text(content: dict) -> str:
    """What a terminal shows of a Jupyter error: its traceback lines (with the kernel's
    colours), or ``ename: evalue``."""
    tb = content.get("traceback") or []
    if tb:
        return "\n".join(str(line) for line in tb) + "\n"
    return f"{content.get('ename') or 'Error'}: {content.get('evalue')}\n"


__all__ = ["JupyterBackend", "SocketReader", "kernelspec_names"]
