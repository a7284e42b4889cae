"""Attach any Jupyter frontend to a shared kernel: the process of a ``yotonnet-NAME`` kernelspec.

``yotonnet jupyter install NAME`` installs a kernelspec whose argv runs this
module (``python -m yotonnet.kernel.frontend -f {connection_file} NAME
...``). A Jupyter frontend (JupyterLab, Notebook, VS Code, ``jupyter
console``, nbclient) starts it like any kernel: this process binds the five
sockets of the connection file and speaks Jupyter's wire protocol on them,
every message signed and checked with that file's key by jupyter_client's
:class:`~jupyter_client.session.Session`; on the other side it is a
:class:`~yotonnet.kernel.KernelClient` of shared kernel NAME on the mesh,
logged in with the credentials the kernelspec names. Each frontend that
starts the kernelspec gets a process of its own, so each Jupyter user is a
client of the shared kernel like a ``yotonnet console``, under their login
and role.

**Sockets under Twisted.** Shell, control and stdin are ROUTER sockets, IOPub
an XPUB (a PUB that also reports subscriptions), the heartbeat a ROUTER that
echoes; each is read by the reactor with
:class:`yotonnet.kernel.jupyter.SocketReader`, as the broker reads a hosted
kernel's sockets. The heartbeat is answered by the reactor, which never runs
user code here (the kernel is elsewhere), so it means "this process is alive".

**How Jupyter's messages map to the mesh.**

* ``execute_request`` -> the shared kernel's ``execute``, with the request's
  header as ``parent``: the broker publishes it with the code, so every
  frontend process tags the execution's output with the header of the
  request that ran it, whoever's it was (Jupyter's multi-client semantics).
  This process runs its own frontend's requests one at a time, in order, as
  a kernel does (the broker queues them behind other users' code); a failed
  one with ``stop_on_error`` aborts those still queued here. The reply is
  ``execute_reply`` on shell once every output record of the execution went
  out on IOPub, then ``status: idle``. A refused request (a viewer's, a dead
  kernel's) gets an error reply and an ``error`` on IOPub naming the reason
  (e.g. the role). Execution counts are the broker's execution ids, shared by
  everyone and increasing across restarts.
* The output stream (``kernel.NAME.output``) -> IOPub, each record once, in
  order: ``execute`` -> ``status: busy`` (for code others ran) and
  ``execute_input``; ``stdout``/``stderr`` -> ``stream``; ``result`` ->
  ``execute_result``; ``display``, ``update_display``, ``clear_output`` and
  ``error`` -> the messages of those names, MIME bundles and metadata as the
  kernel sent them; ``end`` -> ``status: idle`` (for code others ran);
  broker notes (kernel died, restarted) -> ``stream`` on stderr with no
  parent. The parent header is the original one of the request, or, for
  code run by a yotonnet console, one made up naming that user
  (``username``) with a ``msg_id`` of its own. A parent that claims the
  session of one of this process's own frontends but is not theirs is
  replaced the same way, so nobody can make their output appear in another
  user's cells. IOPub messages take ``BROKER-SEQ`` as ``msg_id``: every
  frontend sees the same id for the same record.
* ``input_request`` goes on stdin to the frontend whose request runs the code,
  and only when the broker asks this client (it asks only the runner's); the
  ``input_reply`` answers it. A request with ``allow_stdin`` false gets
  EOFError in the kernel.
* ``interrupt_request`` (control; the kernelspec's interrupt mode is
  ``message``, and SIGINT does the same) -> ``interrupt``;
  ``shutdown_request`` with ``restart`` -> ``restart`` of the shared kernel;
  without -> this frontend leaves (``--shutdown detach``, the default:
  closing one notebook must not end everyone's kernel) or, with
  ``--shutdown kernel``, ``shutdown`` of the shared kernel. The broker checks
  the user's role for each; a refusal is an error reply naming the role.
  This process ends after a shutdown_request in any case, as a kernel does.
* ``kernel_info_request`` -> the kernel's own ``kernel_info`` (language_info,
  banner, implementation) with a line added to the banner: the kernel's
  name on the mesh, and this user's login and role. ``complete_request`` ->
  ``complete`` (whole replacements of the code before the cursor, turned
  into Jupyter's matches and cursor range); ``inspect_request`` ->
  ``inspect``; ``is_complete_request``: Python's own compiler for a Python
  kernel, ``unknown`` for others; ``history_request``: the code run on this
  kernel (by everyone) that this process has seen; ``comm_info_request``:
  no comms; ``comm_open``: closed at once (no comm targets here).
* Late attach: this process fetches the newest ``--history`` records from the
  broker when it attaches and holds IOPub until its frontend subscribes, so
  what ran before (by anyone) reaches it first, with the original headers;
  a frontend that restarts its kernel process gets them again. The mesh
  side refills any gap after a reconnect from the broker's history.
* Reconnect: IOPub's messages are kept (:class:`~yotonnet.kernel.iopub_log.IOPubLog`,
  the last 10,000). While no frontend listens (its sockets closed), new ones
  wait and go out at its next subscription. A frontend that reconnects and
  wants exactly what it missed (including what sat unread in its old
  socket) sends, before it subscribes again, a ``yotonnet_replay_request``
  on shell naming the ``msg_id`` of the last IOPub message it saw
  (``{"after": ID}``); its next subscription then gets every message after
  that one, the same messages with the same ids, in order, then the new ones.
  (Another frontend subscribed to the same process at that moment gets them
  twice: PUB cannot tell subscribers apart.)
* ``input()`` asked of another user: a ``stream`` on stderr, "waiting for
  input from USER", in that execution's output, once per pending input.

**Paced, not dropped.** IOPub is sent without blocking and with
``XPUB_NODROP``: when a frontend reads slower than the kernel writes, the
messages wait here, this client stops taking records, and the broker slows
the kernel down (lossless, as a console does); ``--never-pause-kernel`` makes
this client catch up from the history instead and IOPub drop at its queue's
limit, as a Jupyter kernel's does.
"""

from __future__ import annotations

import argparse
import codeop
import fnmatch
import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import errors
from . import protocol as p
from .iopub_log import IOPubLog
from .jupyter import Session, SocketReader, zmq

log = Logger(namespace="yotonnet.kernel.frontend")

#: the Jupyter messaging protocol version this process speaks
PROTOCOL_VERSION = "5.3"
#: the code of executions kept for history_request
MAX_INPUTS = 1000
#: executions whose parent header is remembered (their output is still coming)
MAX_PARENTS = 1000
SHUTDOWN_MODES = ("detach", "kernel")
#: seconds between looks at every socket, for a readable edge the reactor missed
LOOK_AGAIN = 0.25
#: tries, 50 ms apart, to reach a frontend's stdin socket that has not connected yet
INPUT_CONNECT_TRIES = 100


@dataclass
class Request:
    """An execute_request of one of this process's frontends."""

    idents: list[bytes]
    msg: dict[str, Any]
    exec_id: int | None = None
    input: defer.Deferred | None = None
    traceback: list[str] | None = None
    aborted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def header(self) -> dict[str, Any]:
        return self.msg["header"]

    @property
    def content(self) -> dict[str, Any]:
        return self.msg.get("content") or {}


def socket_url(connection: dict[str, Any], channel: str) -> str:
    """Where the connection file says the ``channel`` socket is (shell, iopub, ...)."""
    transport = connection.get("transport", "tcp")
    ip = connection.get("ip", "127.0.0.1")
    port = connection[f"{channel}_port"]
    return f"{transport}://{ip}:{port}" if transport == "tcp" else f"{transport}://{ip}-{port}"


class JupyterFrontend:
    """The Jupyter side of one frontend process (see the module docstring).

    ``connection`` is the frontend's connection file (its ports, transport and
    key); :meth:`bind` opens the sockets, :meth:`attached` starts serving
    requests through ``client`` (an attached :class:`~yotonnet.kernel.KernelClient`
    whose ``on_output`` is :meth:`on_record` and ``on_input`` :meth:`on_input`).
    ``finished`` fires when the frontend asked this process to end.
    """

    def __init__(self, reactor: Any, connection: dict[str, Any], kernel: str, *,
                 shutdown: str = "detach", lossless: bool = True) -> None:
        if shutdown not in SHUTDOWN_MODES:
            raise ValueError(f"shutdown must be one of {SHUTDOWN_MODES}, not {shutdown!r}")
        self.reactor = reactor
        self.connection = connection
        self.kernel = p.validate_kernel_name(kernel)
        self.name = f"{kernel} (Jupyter frontend)"
        self.shutdown_mode = shutdown
        self.lossless = lossless
        key = str(connection.get("key", "")).encode()
        self.session = Session(key=key, username="yotonnet",
                               signature_scheme=connection.get("signature_scheme",
                                                               "hmac-sha256"))
        self.client: Any = None
        self.user = "?"
        self.role = "?"
        self.public_id = ""
        self.language = ""
        self.finished: defer.Deferred[None] = defer.Deferred()
        self._zmq: Any = None
        self._readers: dict[str, SocketReader] = {}
        self._early: list[tuple[str, list[bytes], dict]] = []
        self._queue: deque[Request] = deque()
        self._running: Request | None = None
        #: exec id -> the parent header its output goes out with
        self._parents: dict[int, dict[str, Any]] = {}
        #: sessions of this process's own frontends (a foreign parent may not claim them)
        self._sessions: set[str] = set()
        self._inputs: deque[tuple[int, str]] = deque(maxlen=MAX_INPUTS)
        self.execution_count = 0
        #: IOPub's messages: those waiting, and those sent, kept for a frontend that
        #: reconnects and names the last one it saw (yotonnet_replay_request)
        self.log = IOPubLog()
        self._subscribers = 0
        #: the msg_id after which the next subscriber is to get everything again
        self._replay_after: str | None = None
        self._lost_noted = 0
        self._input_shown: Any = None
        self._retry: Any = None
        self._look: Any = None
        self._pace: defer.Deferred | None = None
        self._broker = "?"
        self._ending = False
        self.closed = False
        self.counters = {"iopub_sent": 0, "iopub_replayed": 0}

    @property
    def subscribed(self) -> bool:
        """Whether any frontend listens on IOPub now."""
        return self._subscribers > 0

    # --- sockets

    def bind(self) -> None:
        """Open the connection file's five sockets and read them with the reactor."""
        self._zmq = ctx = zmq.Context()
        socks: dict[str, Any] = {}
        try:
            for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER),
                                  ("stdin", zmq.ROUTER), ("iopub", zmq.XPUB),
                                  ("hb", zmq.ROUTER)):
                sock = socks[channel] = ctx.socket(kind)
                sock.linger = 1000
                if channel == "stdin":
                    # an input_request to a frontend whose stdin is not connected yet
                    # fails (and is tried again) instead of vanishing
                    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                if channel == "iopub":
                    # every subscribe and unsubscribe, so that a frontend that comes
                    # back is seen even while its old socket still counts
                    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
                    if self.lossless:
                        sock.setsockopt(zmq.XPUB_NODROP, 1)
                sock.bind(socket_url(self.connection, channel))
        except Exception:
            ctx.destroy(linger=0)  # (a port taken, a bad address)
            self._zmq = None
            raise
        self._readers = {
            "shell": SocketReader(self, socks["shell"], "shell", self._on_shell, idents=True),
            "control": SocketReader(self, socks["control"], "control", self._on_control,
                                    idents=True),
            "stdin": SocketReader(self, socks["stdin"], "stdin", self._on_stdin, idents=True),
            "iopub": SocketReader(self, socks["iopub"], "iopub", self._on_subscription,
                                  raw=True),
            "hb": SocketReader(self, socks["hb"], "hb", self._on_ping, raw=True),
        }
        for reader in self._readers.values():
            reader.register(self.reactor)
        # An edge the reactor missed (see _flush) is found within this long at worst.
        self._look = task.LoopingCall(self._look_again)
        self._look.clock = self.reactor
        self._look.start(LOOK_AGAIN, now=False)
        self._publish("status", {"execution_state": "starting"}, {})

    def _look_again(self) -> None:
        for reader in list(self._readers.values()):
            reader.kick()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._look is not None and self._look.running:
            self._look.stop()
        self._flush()
        for reader in self._readers.values():
            reader.unregister(self.reactor)
            reader.closed = True
            if reader.again is not None and reader.again.active():
                reader.again.cancel()
        self._readers = {}
        if self._zmq is not None:
            self._zmq.destroy(linger=1000)  # the last replies still leave (1 s at most)
            self._zmq = None

    def _on_ping(self, frames: list[bytes]) -> None:
        try:
            self._readers["hb"].sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _on_subscription(self, frames: list[bytes]) -> None:
        kind = frames[0][:1] if frames else b""
        if kind == b"\x00":
            self._subscribers = max(0, self._subscribers - 1)
        elif kind == b"\x01":
            # A frontend listens (again): what waited, or what it asked for, goes out now.
            self._subscribers += 1
            after, self._replay_after = self._replay_after, None
            if after is not None:
                self._rewind(after)
            self._flush()
            self._note_lost()  # (after what was kept: the note takes a place in the log)

    def _rewind(self, after: str) -> None:
        replay = self.log.rewind_after(after)
        if replay is None:
            self._publish("stream", {"name": "stderr", "text": (
                f"[{self.kernel}: cannot send again what followed message {after}: it is no "
                f"longer among the last {self.log.keep_messages} IOPub messages kept]\n")}, {})
            return
        self.counters["iopub_replayed"] += replay[0]

    def _note_lost(self) -> None:
        lost = self.log.lost - self._lost_noted
        if lost > 0:
            self._lost_noted = self.log.lost
            self._publish("stream", {"name": "stderr", "text": (
                f"[{self.kernel}: {lost} IOPub messages published while no frontend listened "
                f"are no longer kept (the last {self.log.keep_messages} are)]\n")}, {})

    # --- sending

    def _reply(self, channel: str, idents: list[bytes], parent: dict, msg_type: str,
               content: dict[str, Any]) -> None:
        reader = self._readers.get(channel)
        if reader is None:
            return
        self.session.send(reader.sock, msg_type, content, parent=parent, ident=idents)
        reader.kick()

    def _publish(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None,
                 msg_id: str | None = None) -> None:
        header = self.session.msg_header(msg_type)
        if msg_id is not None:
            header["msg_id"] = msg_id
        msg = self.session.msg(msg_type, content, parent=parent or {}, header=header)
        self.log.append(header["msg_id"], self.session.serialize(msg))
        self._flush()

    def _flush(self) -> None:
        """Send what waits for IOPub, without blocking; what the socket will not take
        yet (a slow frontend, with XPUB_NODROP) waits here and holds the records back."""
        reader = self._readers.get("iopub")
        kept = self.log
        if reader is None or not self.subscribed:
            return  # (nobody listens: the messages wait in the log, within its bounds)
        sock = reader.sock
        if kept.to_send() is not None:
            # A send may take the socket's readable edge with it (ZMQ's descriptor is
            # edge-triggered): look for (un)subscriptions next turn, or a frontend that
            # leaves and comes back goes unseen while we send into the void.
            reader.kick()
        while (frames := kept.to_send()) is not None:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                if self._retry is None or not self._retry.active():
                    self._retry = self.reactor.callLater(0.01, self._flush)
                return
            except zmq.ZMQError as e:
                log.warn("{name}: IOPub send failed: {e}", name=self.name, e=e)
            kept.advance()
            self.counters["iopub_sent"] += 1
        pace, self._pace = self._pace, None
        if pace is not None:
            pace.callback(None)

    def _held_back(self) -> defer.Deferred | None:
        """A Deferred while IOPub messages wait (the client then holds the next records)."""
        if not self.log.waiting() or not self.subscribed or not self.lossless:
            return None
        if self._pace is None:
            self._pace = defer.Deferred()
        return self._pace

    def _status(self, state: str, parent: dict[str, Any], msg_id: str | None = None) -> None:
        self._publish("status", {"execution_state": state}, parent, msg_id)

    # --- requests

    def attached(self, client: Any, kernel_info: dict[str, Any] | None = None) -> None:
        """Serve the frontend through ``client`` from now on."""
        self.client = client
        self.user = client.caller.user
        self.role = client.role or "?"
        self.public_id = client.public_id
        self._broker = str(client.status().get("broker") or "?")
        language = ((kernel_info or {}).get("language_info") or {}).get("name")
        self.language = str(language or "")
        early, self._early = self._early, []
        for channel, idents, msg in early:
            self._dispatch(channel, idents, msg)
        client.watch_status(self.on_status)

    def on_status(self, status: dict[str, Any]) -> None:
        """The shared kernel's status: while someone else's ``input()`` is pending, say
        whose, once, in that execution's output (as ``yotonnet console`` does); a Jupyter
        frontend would otherwise only see the kernel busy."""
        waiting = status.get("input") or {}
        exec_id = waiting.get("exec")
        if exec_id == self._input_shown:
            return
        self._input_shown = exec_id
        if not waiting or waiting.get("client") == self.public_id:
            return  # (this frontend's own input_request asks its user already)
        prompt = str(waiting.get("prompt") or "").strip()
        user = str(waiting.get("user") or "?")
        parent = (self._parents.get(exec_id) if isinstance(exec_id, int) else None) \
            or self._made_up(exec_id, user)
        self._publish("stream", {"name": "stderr", "text": (
            f"[{self.kernel}: waiting for input from {user}"
            + (f" ({prompt})" if prompt else "") + "]\n")}, parent)

    def _on_shell(self, idents: list[bytes], msg: dict) -> None:
        self._arrived("shell", idents, msg)

    def _on_control(self, idents: list[bytes], msg: dict) -> None:
        self._arrived("control", idents, msg)

    def _arrived(self, channel: str, idents: list[bytes], msg: dict) -> None:
        session = (msg.get("header") or {}).get("session")
        if isinstance(session, str) and session:
            self._sessions.add(session)
        if self.client is None and msg.get("msg_type") != "yotonnet_replay_request":
            self._early.append((channel, idents, msg))  # served once attached
            return
        self._dispatch(channel, idents, msg)

    def _dispatch(self, channel: str, idents: list[bytes], msg: dict) -> None:
        msg_type = msg["msg_type"]
        if self._ending and msg_type.endswith("_request"):
            return  # shutting down: no more answers
        if msg_type == "execute_request" and channel == "shell":
            self._queue.append(Request(idents, msg))
            self._run_next()
            return
        handler = self.HANDLERS.get(msg_type)
        if handler is None:
            log.info("{name}: ignored a {type} on {channel}", name=self.name, type=msg_type,
                     channel=channel)
            return
        quiet = msg_type in ("comm_open", "comm_msg", "comm_close", "shutdown_request",
                             "interrupt_request", "yotonnet_replay_request")
        if not quiet:
            self._status("busy", msg["header"])
        d = defer.maybeDeferred(handler, self, msg.get("content") or {}, msg)

        def answer(content: dict[str, Any] | None) -> None:
            if content is not None:
                self._reply(channel, idents, msg, msg_type.replace("_request", "_reply"),
                            content)

        def failed(failure: Failure) -> dict[str, Any]:
            log.warn("{name}: {type}: {why}", name=self.name, type=msg_type,
                     why=failure.getErrorMessage())
            return _error_content(failure.value)

        d.addErrback(failed).addCallback(answer)
        if not quiet:
            d.addBoth(lambda _: self._status("idle", msg["header"]))
        d.addErrback(lambda f: log.failure("{name}: answering {type}", f, name=self.name,
                                           type=msg_type))

    async def _kernel_info(self, content: dict, msg: dict) -> dict[str, Any]:
        info = dict(await self.client.kernel_info())
        language = (info.get("language_info") or {}).get("name")
        if language:
            self.language = str(language)
        banner = str(info.get("banner") or "").rstrip("\n")
        note = (f"[{self.kernel}: a shared kernel on the yotonnet mesh; you are {self.user}, "
                f"{self.role}]")
        info.update(status="ok", protocol_version=PROTOCOL_VERSION,
                    banner=f"{banner}\n{note}\n" if banner else note + "\n")
        info.setdefault("help_links", [])
        info.setdefault("implementation", "unknown")
        info.setdefault("implementation_version", "")
        info.setdefault("debugger", False)
        info["debugger"] = False  # no debug_request through the mesh
        return info

    async def _complete(self, content: dict, msg: dict) -> dict[str, Any]:
        code = str(content.get("code", ""))
        cursor = _cursor(content, code)
        text = code[:cursor]
        wholes = await self.client.complete(text)
        start = cursor
        for whole in wholes:
            start = min(start, _common_prefix(whole, text))
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            start -= 1  # from the start of the name typed, as frontends filter by it
        return {"status": "ok", "matches": [w[start:] for w in wholes], "cursor_start": start,
                "cursor_end": cursor, "metadata": {}}

    async def _inspect(self, content: dict, msg: dict) -> dict[str, Any]:
        code = str(content.get("code", ""))
        detail = 1 if content.get("detail_level") == 1 else 0
        found = await self.client.inspect(code, _cursor(content, code), detail)
        return {"status": "ok", "found": bool(found.get("found")),
                "data": found.get("data") or {}, "metadata": found.get("metadata") or {}}

    def _is_complete(self, content: dict, msg: dict) -> dict[str, Any]:
        if self.language != "python":
            return {"status": "unknown"}
        code = str(content.get("code", ""))
        try:
            compiled = codeop.compile_command(code, "<cell>", "exec")
        except (SyntaxError, ValueError, OverflowError):
            return {"status": "invalid"}
        if compiled is None and code.strip():
            last = code.rstrip("\n").split("\n")[-1]
            indent = last[:len(last) - len(last.lstrip())]
            if last.rstrip().endswith(":"):
                indent += "    "
            return {"status": "incomplete", "indent": indent}
        return {"status": "complete"}

    def _history(self, content: dict, msg: dict) -> dict[str, Any]:
        entries = [(0, n, code) for n, code in self._inputs]
        how = content.get("hist_access_type")
        if how == "search":
            pattern = str(content.get("pattern") or "*")
            entries = [e for e in entries if fnmatch.fnmatch(e[2], pattern)]
        n = content.get("n")
        if how in ("tail", "search") and isinstance(n, int) and n >= 0:
            entries = entries[-n:] if n else []
        if content.get("output"):
            entries = [(s, n, (code, None)) for s, n, code in entries]
        return {"status": "ok", "history": entries}

    def _comm_info(self, content: dict, msg: dict) -> dict[str, Any]:
        return {"status": "ok", "comms": {}}

    def _comm_open(self, content: dict, msg: dict) -> None:
        # No comm target lives here: close it at once, as the protocol asks.
        self._publish("comm_close", {"comm_id": content.get("comm_id"), "data": {}},
                      msg["header"])

    def _ignore(self, content: dict, msg: dict) -> None:
        return None

    def _replay(self, content: dict, msg: dict) -> dict[str, Any]:
        """A frontend about to subscribe again names the last IOPub message it saw: its
        next subscription gets everything after it, in order, before anything new."""
        after = content.get("after")
        if not isinstance(after, str) or not after:
            raise ValueError("yotonnet_replay_request needs 'after': the msg_id of the last "
                             "IOPub message this frontend saw")
        if not self.log.holds(after):
            raise LookupError(
                f"message {after} is not among the last {self.log.keep_messages} IOPub "
                f"messages kept here (the oldest is {self.log.oldest_id()}); what it missed "
                "is in the shared kernel's history (yotonnet console --history)")
        self._replay_after = after
        return {"status": "ok", "after": after,
                "when": "at this frontend's next IOPub subscription"}

    async def _interrupt(self, content: dict, msg: dict) -> dict[str, Any]:
        await self.client.interrupt()
        return {"status": "ok"}

    async def _shutdown(self, content: dict, msg: dict) -> dict[str, Any]:
        restart = bool(content.get("restart"))
        self._ending = True
        reply: dict[str, Any] = {"status": "ok", "restart": restart}
        try:
            if restart:
                # jupyter_client starts a new process of ours once this one ended.
                await self.client.restart()
            elif self.shutdown_mode == "kernel":
                await self.client.shutdown()
        except Exception as e:  # noqa: BLE001 - refused (a role), gone: say so, end anyway
            reply = dict(_error_content(e), restart=restart)
            text = (f"[{self.kernel}: {'restart' if restart else 'shutdown'} of the shared "
                    f"kernel refused: {reply['evalue']}]\n")
            log.warn("{name}: {text}", name=self.name, text=text.strip())
            self._publish("stream", {"name": "stderr", "text": text}, msg["header"])
        self.reactor.callLater(0, self.end)
        return reply

    HANDLERS: dict[str, Any] = {
        "kernel_info_request": _kernel_info,
        "complete_request": _complete,
        "inspect_request": _inspect,
        "is_complete_request": _is_complete,
        "history_request": _history,
        "comm_info_request": _comm_info,
        "comm_open": _comm_open,
        "comm_msg": _ignore,
        "comm_close": _ignore,
        "yotonnet_replay_request": _replay,
        "interrupt_request": _interrupt,
        "shutdown_request": _shutdown,
    }

    def end(self) -> None:
        """Leave: fires :attr:`finished` (the program detaches and exits)."""
        self._ending = True
        if not self.finished.called:
            self.finished.callback(None)

    def interrupt(self) -> None:
        """SIGINT (a frontend in signal mode): interrupt the shared kernel."""
        if self.client is not None:
            self.client.interrupt().addErrback(
                lambda f: log.warn("{name}: interrupt: {why}", name=self.name,
                                   why=f.getErrorMessage()))

    # --- executions

    def _run_next(self) -> None:
        if self._running is not None or not self._queue:
            return
        req = self._running = self._queue.popleft()
        self._status("busy", req.header)
        code = str(req.content.get("code", ""))
        try:
            d = self.client.execute(code, parent=_plain_header(req.header))
        except Exception as e:  # noqa: BLE001 - not attached any more
            d = defer.fail(e)
        d.addCallbacks(self._executed, self._refused, callbackArgs=(req,), errbackArgs=(req,))
        d.addErrback(lambda f: log.failure("{name}: execute_reply", f, name=self.name))
        d.addBoth(lambda _: self._finished(req))

    def _executed(self, result: Any, req: Request) -> None:
        count = req.exec_id or result.id or self.execution_count
        if result.ok:
            content: dict[str, Any] = {"status": "ok", "execution_count": count,
                                       "user_expressions": {}, "payload": []}
        else:
            content = {"status": "error", "execution_count": count,
                       "ename": result.error_type or "Error", "evalue": result.message or "",
                       "traceback": req.traceback or (result.traceback or "").splitlines()}
        self._reply("shell", req.idents, req.msg, "execute_reply", content)
        self._status("idle", req.header)
        if not result.ok:
            self._abort_queue(req)

    def _refused(self, failure: Failure, req: Request) -> None:
        """The broker did not run it (a viewer, a dead kernel, a lost link)."""
        content = _error_content(failure.value)
        log.warn("{name}: execute: {why}", name=self.name, why=content["evalue"])
        if req.exec_id is None:
            # Nothing of it reached the stream: the frontend's cell shows why here.
            self._publish("error", {k: content[k] for k in ("ename", "evalue", "traceback")},
                          req.header)
        content["execution_count"] = req.exec_id or self.execution_count
        self._reply("shell", req.idents, req.msg, "execute_reply", content)
        self._status("idle", req.header)
        self._abort_queue(req)

    def _abort_queue(self, failed: Request) -> None:
        """A failed execution with stop_on_error: those queued behind it are not run."""
        if not failed.content.get("stop_on_error", True):
            return
        aborted, self._queue = list(self._queue), deque()
        for req in aborted:
            self._status("busy", req.header)
            self._reply("shell", req.idents, req.msg, "execute_reply",
                        {"status": "aborted", "execution_count": self.execution_count})
            self._status("idle", req.header)

    def _finished(self, req: Request) -> None:
        if req.input is not None and not req.input.called:
            req.input.errback(Failure(EOFError("the execution ended")))
        if self._running is req:
            self._running = None
        self._run_next()

    def on_input(self, prompt: str, password: bool) -> defer.Deferred[str]:
        """The shared kernel asks this client for input(): ask the frontend whose request
        runs (the broker asks only the client that ran the code)."""
        req = self._running
        if req is None or not req.content.get("allow_stdin", True):
            raise EOFError("this frontend's request does not allow input (allow_stdin)")
        if req.input is not None and not req.input.called:
            req.input.errback(Failure(EOFError("a new input() was asked")))
        req.input = defer.Deferred()
        self._ask_input(req, req.input, {"prompt": prompt, "password": password},
                        INPUT_CONNECT_TRIES)
        return req.input

    def _ask_input(self, req: Request, asked: defer.Deferred, content: dict[str, Any],
                   tries: int) -> None:
        """Send the input_request; a frontend whose stdin socket has not connected yet
        (it may connect after its shell) is tried again for a while, not skipped."""
        reader = self._readers.get("stdin")
        if asked.called or reader is None:
            return
        try:
            self.session.send(reader.sock, "input_request", content, parent=req.msg,
                              ident=req.idents)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH and tries > 0:
                self.reactor.callLater(0.05, self._ask_input, req, asked, content, tries - 1)
            else:
                asked.errback(Failure(EOFError(f"the frontend's stdin socket: {e}")))
            return
        reader.kick()

    def _on_stdin(self, idents: list[bytes], msg: dict) -> None:
        if msg["msg_type"] != "input_reply":
            return
        req = self._running
        if req is None or req.input is None or req.input.called:
            return
        value = (msg.get("content") or {}).get("value", "")
        req.input.callback(value if isinstance(value, str) else str(value))

    # --- the shared kernel's output stream -> IOPub

    def on_record(self, m: dict[str, Any]) -> defer.Deferred | None:
        """One output record, each once and in order (KernelClient's ``on_output``)."""
        try:
            self._relay(m)
        except Exception:  # noqa: BLE001 - one odd record must not stop the stream
            log.failure("{name}: relaying record {seq}", name=self.name, seq=m.get("seq"))
        return self._held_back()

    def _relay(self, m: dict[str, Any]) -> None:
        kind = m["kind"]
        exec_id = m.get("exec")
        seq = m.get("seq")
        msg_id = f"{self._broker}-{seq}" if seq is not None else None
        if kind == p.EXECUTE and isinstance(exec_id, int):
            self.execution_count = max(self.execution_count, exec_id)
            self._inputs.append((exec_id, m["text"]))
            req = self._own(m)
            if req is not None:
                req.exec_id = exec_id
                parent = req.header
            else:
                parent = self._foreign_parent(m)
                self._status("busy", parent, f"{msg_id}-busy")
            self._parents[exec_id] = parent
            while len(self._parents) > MAX_PARENTS:
                del self._parents[next(iter(self._parents))]
            if req is None or not req.content.get("silent"):
                self._publish("execute_input", {"code": m["text"], "execution_count": exec_id},
                              parent, msg_id)
            return
        mine = self._running if (self._running is not None and exec_id is not None
                                 and self._running.exec_id == exec_id) else None
        if mine is not None and mine.content.get("silent") and kind != p.END:
            return
        if exec_id is None:
            parent: dict[str, Any] = {}
        else:
            parent = self._parents.get(exec_id) or self._made_up(exec_id, m.get("user"))
        if kind in (p.STDOUT, p.STDERR):
            self._publish("stream", {"name": kind, "text": m["text"]}, parent, msg_id)
        elif kind == p.RESULT:
            data = m.get("data") or {"text/plain": m["text"].rstrip("\n")}
            self._publish("execute_result", {
                "execution_count": exec_id or self.execution_count, "data": data,
                "metadata": m.get("metadata") or {}}, parent, msg_id)
        elif kind in (p.DISPLAY, p.UPDATE_DISPLAY):
            data = m.get("data") or {"text/plain": m["text"].rstrip("\n")}
            self._publish("display_data" if kind == p.DISPLAY else "update_display_data", {
                "data": data, "metadata": m.get("metadata") or {},
                "transient": m.get("transient") or {}}, parent, msg_id)
        elif kind == p.CLEAR_OUTPUT:
            self._publish("clear_output", {"wait": bool(m.get("wait"))}, parent, msg_id)
        elif kind == p.ERROR:
            error = m.get("error") or {}
            tb = error.get("traceback")
            if not isinstance(tb, list):
                tb = m["text"].rstrip("\n").split("\n")
            content = {"ename": str(error.get("ename") or "Error"),
                       "evalue": str(error.get("evalue") or ""), "traceback": tb}
            if mine is not None:
                mine.traceback = tb
            self._publish("error", content, parent, msg_id)
        elif kind == p.END:
            if exec_id is not None:
                self._parents.pop(exec_id, None)
            if mine is None and exec_id is not None:
                self._status("idle", parent, f"{msg_id}-idle")
        elif kind == p.SYSTEM:
            self._publish("stream", {"name": "stderr", "text": f"[{self.kernel}] {m['text']}"},
                          {}, msg_id)
        # join, leave: presence, not output; stdin: the runner's frontend shows its answer

    def _own(self, m: dict[str, Any]) -> Request | None:
        """The request of ours that this execute record is, if any."""
        req = self._running
        if req is None or req.exec_id is not None or m.get("client") != self.public_id:
            return None
        parent = m.get("parent")
        if isinstance(parent, dict) and parent.get("msg_id") == req.header.get("msg_id"):
            return req
        return None

    def _foreign_parent(self, m: dict[str, Any]) -> dict[str, Any]:
        parent = m.get("parent")
        if (isinstance(parent, dict) and isinstance(parent.get("msg_id"), str)
                and parent.get("session") not in self._sessions):
            return parent
        return self._made_up(m["exec"], m.get("user"))

    def _made_up(self, exec_id: int, user: Any) -> dict[str, Any]:
        """The parent header of code run without one (a yotonnet console's)."""
        return {"msg_id": f"yotonnet-{self._broker}-exec-{exec_id}",
                "msg_type": "execute_request", "username": str(user or ""),
                "session": f"yotonnet-{self._broker}", "version": PROTOCOL_VERSION,
                "date": datetime.now(UTC).isoformat()}


def _cursor(content: dict[str, Any], code: str) -> int:
    cursor = content.get("cursor_pos")
    return cursor if isinstance(cursor, int) and 0 <= cursor <= len(code) else len(code)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _plain_header(header: dict[str, Any]) -> dict[str, Any]:
    """A header as plain JSON (its date a string), for the mesh."""
    out = {}
    for key, value in header.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        if value is None or isinstance(value, str | int | float | bool):
            out[str(key)] = value
    return out


def _error_content(error: BaseException) -> dict[str, Any]:
    """A Jupyter error reply's content for ``error`` (a broker's refusal keeps its type)."""
    if isinstance(error, errors.RemoteError):
        ename, evalue = error.remote_type, error.remote_message
    else:
        ename, evalue = type(error).__name__, str(error)
    return {"status": "error", "ename": ename, "evalue": evalue,
            "traceback": [f"{ename}: {evalue}"]}


# --- the program


def build_parser() -> argparse.ArgumentParser:
    from ..cli.parser import _client_options, add_security_options

    parser = argparse.ArgumentParser(
        prog="python -m yotonnet.kernel.frontend",
        description="The kernel process of a yotonnet-NAME Jupyter kernelspec (see "
                    "`yotonnet jupyter install`): Jupyter's protocol on the connection "
                    "file's sockets, shared kernel NAME on the mesh.")
    parser.add_argument("-f", dest="connection_file", required=True, metavar="FILE",
                        help="the connection file the frontend wrote")
    parser.add_argument("kernel_name", metavar="NAME", help="the shared kernel")
    parser.add_argument("--history", type=int, default=200, metavar="N",
                        help="past output records sent to the frontend first (default 200)")
    parser.add_argument("--shutdown", choices=SHUTDOWN_MODES, default="detach",
                        help="what the frontend's shutdown does: this frontend leaves "
                             "(detach, default) or the shared kernel ends (kernel; owner)")
    parser.add_argument("--never-pause-kernel", action="store_true",
                        help="never slow the kernel down for this frontend")
    _client_options(parser)
    add_security_options(parser)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    from ..cli import _begin_client_logging
    from ..cli.security import flags as security_flags
    from ..service.config import ConfigError, resolve

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        p.validate_kernel_name(args.kernel_name)
        settings = resolve(args.config, connect=args.connect, timeout=args.timeout,
                           security=security_flags(args))
    except (ValueError, ConfigError) as e:
        parser.error(str(e))
    if args.history < 0:
        parser.error("--history must be >= 0")
    try:
        with open(args.connection_file) as f:
            connection = json.load(f)
    except (OSError, ValueError) as e:
        _note(f"cannot read the connection file {args.connection_file}: {e}")
        raise SystemExit(1) from None
    _begin_client_logging(args.verbose)
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, args, settings,
                                                          connection)))
    raise AssertionError("task.react exits")


def _note(text: str) -> None:
    sys.stderr.write(f"yotonnet jupyter frontend: {text}\n")
    sys.stderr.flush()


async def _main(reactor: Any, args: argparse.Namespace, settings: Any,
                connection: dict[str, Any]) -> None:
    from ..mesh.context import Context
    from .cli import _security
    from .client import KernelClient

    name = args.kernel_name
    frontend = JupyterFrontend(reactor, connection, name, shutdown=args.shutdown,
                               lossless=not args.never_pause_kernel)
    try:
        frontend.bind()
    except zmq.ZMQError as e:
        _note(f"cannot bind the connection file's sockets: {e}")
        frontend.close()
        raise SystemExit(1) from None
    timeout = settings.client.timeout
    endpoint = settings.client.connect
    ctx = Context(None, reactor, **_security(settings))

    async def fail(text: str) -> NoReturn:
        _note(text)
        frontend.close()
        await ctx.close()
        raise SystemExit(1)

    try:
        d = ctx.connect(endpoint)
        await d.addTimeout(timeout, reactor)
    except Exception as e:  # noqa: BLE001 - unreachable, refused, timed out
        await fail(f"cannot link to {endpoint}: {e or type(e).__name__}")
    client = KernelClient(ctx, name, on_output=frontend.on_record, on_input=frontend.on_input,
                          history=args.history, timeout=timeout,
                          lossless=not args.never_pause_kernel)
    try:
        await client.attach()
        info = await client.kernel_info()
    except Exception as e:  # noqa: BLE001 - no broker, refused
        await fail(f"cannot attach to kernel {name!r} through {endpoint}: {e}")
    frontend.attached(client, info)
    log.info("{name}: attached as {user} ({role})", name=frontend.name, user=frontend.user,
             role=frontend.role)

    def on_sigint(signum: int, frame: Any) -> None:
        reactor.callFromThread(frontend.interrupt)

    signal.signal(signal.SIGINT, on_sigint)
    reactor.addSystemEventTrigger("before", "shutdown", frontend.end)
    watch = _watch_parent(reactor, frontend)
    await frontend.finished
    if watch is not None and watch.running:
        watch.stop()
    try:
        await defer.ensureDeferred(client.detach()).addTimeout(2.0, reactor)
    except Exception:  # noqa: BLE001, S110 - leaving anyway
        pass
    frontend.close()
    await ctx.close()


def _watch_parent(reactor: Any, frontend: JupyterFrontend) -> Any:
    """End when the frontend that started this process is gone (as ipykernel does)."""
    parent = os.getppid()
    if parent <= 1 or not os.environ.get("JPY_PARENT_PID"):
        return None

    def check() -> None:
        if os.getppid() != parent:
            log.info("{name}: the frontend's process ended; leaving", name=frontend.name)
            frontend.end()

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(1.0, now=False)
    return loop


if __name__ == "__main__":
    main()
