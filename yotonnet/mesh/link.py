"""Links: one Twisted protocol per peer connection.

A :class:`Link` does the handshake (preamble and HELLO), enforces the frame
size and the handshake timeout, sends heartbeats when idle and watches the
peer's silence, and hands every complete frame to its context through a
dispatch table indexed by frame kind. It knows nothing of channels.

Link status is one of ``handshaking``, ``up``, ``busy`` (the socket is alive
but the peer has been silent past the timeout, e.g. its interpreter is stuck
in C code holding the GIL) and ``closed`` (with a reason).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core import wire
from ..core.flow import DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW, PeerFlow
from ..core.names import printable
from ..core.wire import FrameKind, ProtocolError
from ..security import tls

if TYPE_CHECKING:
    from .context import Context

_DATA = int(FrameKind.DATA)
_CONTROL = int(FrameKind.CONTROL)
_HEADER_SIZE = wire.HEADER_SIZE
_unpack_header = wire.HEADER.unpack_from
_new = tuple.__new__
_Frame = wire.Frame
#: Twisted protocol wrappers whose dataReceived only forwards (the attribute
#: holding the wrapped protocol); see Link._skip_forwarders
_FORWARDERS = {
    "twisted.internet.endpoints._WrappingProtocol": "_wrappedProtocol",
    "twisted.application._client_service._ReconnectingProtocolProxy": "_protocol",
}
#: transports a link may write to the socket of directly (see Link._write_now)
_EAGER_TRANSPORTS = (tcp.Server, tcp.Client)
#: larger writes go through Twisted's buffer: a partial send would copy the rest
EAGER_MAX = 65536
#: the most of a peer's ERROR or CLOSE text kept (escaped: it reaches logs and terminals)
PEER_TEXT_LIMIT = 2000
#: seconds a link failed for not reading gets to take its ERROR frame before the abort
ABORT_GRACE = 2.0
HANDSHAKING = "handshaking"
UP = "up"
BUSY = "busy"
CLOSED = "closed"

log = Logger(namespace="yotonnet.link")


class HandshakeError(ProtocolError):
    """The handshake with a peer failed; ``fatal`` means retrying will not help."""

    def __init__(self, message: str, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


@implementer(IPushProducer)
class Link(Protocol):
    """The connection to one peer node.

    It is the producer of its own transport: when the transport holds more
    than it can send (the peer reads slowly, or not at all), Twisted pauses
    the link, which then queues flow-controlled data instead of writing it
    (see :class:`~yotonnet.core.flow.PeerFlow`) and cuts the peer as a slow
    consumer if what it must still write meanwhile passes ``max_link_buffer``.
    """

    def __init__(
        self, context: Context, outgoing: bool, endpoint_text: str = "", cost: int = 1
    ) -> None:
        self.context = context
        self.clock = context.reactor
        self.outgoing = outgoing
        self.endpoint_text = endpoint_text
        #: this end's routing cost of the link (the mesh uses the higher of both ends')
        self.cost = cost
        self.status = HANDSHAKING
        self.reason: str | None = None
        self.peer_id = 0
        self.peer_name = ""
        self.peer_capabilities: tuple[str, ...] = ()
        self.peer_address = ""
        self.handshake_done: defer.Deferred[Link] = defer.Deferred()
        if not outgoing:
            # Nobody waits on an incoming handshake; its failure is a link event.
            self.handshake_done.addErrback(lambda _: None)
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.last_seen = self.last_sent = 0.0
        # runs: DATA frames come grouped as wire.Run records (see Context._on_run_record)
        self._decoder = wire.FrameDecoder(
            max_frame=wire.HANDSHAKE_MAX_FRAME, runs=True,
            max_control=context.config.max_control_frame,
        )
        window = context.config.flow_window
        #: credit per channel both ways (the send window is the peer's, set at the handshake)
        self.flow = PeerFlow(window, window)
        self._handlers: dict[int, Callable[[Link, wire.Frame], None]] = {}
        self._timeout_call: Any = None
        self._heartbeat_call: Any = None
        self._abort_call: Any = None
        #: who the peer authenticated as (yotonnet.auth.Identity), and the gate of a
        #: client link (yotonnet.guard.LinkGate); both None for trusted or unauthenticated
        self.identity: Any = None
        self.gate: Any = None
        #: the peer proved it is a node: it may speak for others (see yotonnet.linkauth)
        self.trusted = False
        # this side's part in authenticating the link (set in connectionMade)
        self._auth: Any = None
        self._hello_seen = False
        self._agreed_max_frame = wire.HANDSHAKE_MAX_FRAME
        # the handler of DATA runs: the context's, or a client link's gate
        self._on_run: Any = context._on_data_run
        self._counted = False  # counted in the guard's handshaking connections
        #: the user a listener that authenticates said we are (outgoing links)
        self.authenticated_as: str | None = None
        self._closing = False
        self._fatal = False
        # Frames queued by send() in this reactor turn, written together by _flush().
        self._out: list[bytes] = []
        self._flush_call: Any = None
        # the context's dispatch turn in which this link last wrote a frame directly
        self._direct_turn = -1
        # True while a read may skip the decoder: the link is up and not closing, and the
        # decoder holds no partial frame (see dataReceived); cleared by every status change
        self._whole_reads = False
        # How bytes reach the transport: Twisted's write, or _write_now (connectionMade)
        self._put: Callable[[bytes], None] = self._write_later
        self._socket: Any = None
        # while the transport is paused: the write path to restore, and what was written
        self._unpaused_put: Callable[[bytes], None] | None = None
        self._written_while_paused = 0

    # --- connection life

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self.last_seen = self.last_sent = now
        peer = self.transport.getPeer()
        self.peer_address = str(getattr(peer, "host", "") or getattr(peer, "name", "") or peer)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # unix sockets and memory transports have no Nagle to turn off
        cfg = self.context.config
        self._choose_write_path(cfg.eager_writes)
        try:
            self.transport.registerProducer(self, True)
        except (AttributeError, RuntimeError):
            pass  # a transport without producers (or with one already): never paused
        self._auth = self.context.guard.authenticator(self)
        self.transport.write(wire.encode_preamble())
        self.transport.write(
            wire.encode_hello(
                wire.Hello(
                    self.context.node_id,
                    self.context.name,
                    self.context.capabilities,
                    cfg.max_frame,
                    cfg.heartbeat,
                    {"window": cfg.flow_window, **self._auth.hello_extra()},
                )
            )
        )
        self._timeout_call = self.clock.callLater(cfg.handshake_timeout, self._handshake_timed_out)
        self._skip_forwarders()

    def _choose_write_path(self, eager: bool) -> None:
        t = self.transport
        if (
            eager
            and type(t) in _EAGER_TRANSPORTS
            and not getattr(t, "TLS", False)
            and all(
                hasattr(t, a) for a in ("dataBuffer", "_tempDataLen", "connected", "_aborting")
            )
        ):
            self._socket = t.getHandle()
            self._put = self._write_now
        else:
            self._put = t.write

    def _write_later(self, data: bytes) -> None:
        self.transport.write(data)

    def _write_now(self, data: bytes) -> None:
        """Write to the socket at once when Twisted has nothing buffered for it.

        Twisted's transport.write only buffers: the bytes leave in the next
        reactor turn, after an epoll_ctl to watch for writability, a poll, and
        another epoll_ctl to stop watching. A request or reply that finds the
        buffer empty (nearly always) is sent here instead, saving that turn on
        both ends of every round trip. Anything the socket does not take (a full
        buffer, an error) goes to transport.write, which keeps the order, the
        producer pausing and the error handling of Twisted's own path; after
        abortConnection nothing more is sent, as with Twisted's write.
        """
        t = self.transport
        if (
            t._tempDataLen or t.dataBuffer or not t.connected or t._aborting
            or len(data) > EAGER_MAX
        ):
            t.write(data)
            return
        try:
            sent = self._socket.send(data)
        except OSError:  # EAGAIN, or a broken socket that Twisted's write path will report
            sent = 0
        if sent < len(data):
            t.write(data[sent:])

    # --- IPushProducer: the transport tells us when it holds too much

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        # Twisted pauses at 64 KiB held, which at full speed happens all the time: data
        # goes on until a window's worth more is held (credit bounds it anyway), then
        # waits in the outboxes (see _write_while_paused).
        if self._unpaused_put is not None or self._closing:
            return
        self._written_while_paused = 0
        self._unpaused_put, self._put = self._put, self._write_while_paused

    def resumeProducing(self) -> None:  # noqa: N802
        if self._unpaused_put is None:
            return
        self._put, self._unpaused_put = self._unpaused_put, None
        if self.flow.paused:
            self.flow.paused = False
            if self.status is UP or self.status is BUSY:
                self.context.link_writable(self)

    def stopProducing(self) -> None:  # noqa: N802
        pass  # the connection is going; connectionLost does the rest

    def _write_while_paused(self, data: bytes) -> None:
        """Past a window's worth held, flow-controlled data queues instead of coming
        here; what still comes (control frames, replies, pings) is bounded: a peer that
        leaves too much of it unread is cut."""
        if self._closing:
            return  # cut already: nothing more goes to a peer that does not read
        written = self._written_while_paused = self._written_while_paused + len(data)
        cfg = self.context.config
        if written > cfg.flow_window and not self.flow.paused:
            self.flow.paused = True
        if written > cfg.max_link_buffer:
            self.context.counters["slow_consumers"] += 1
            self.fail(
                f"slow consumer: the peer read nothing while {written} bytes waited for it "
                f"(max_link_buffer is {cfg.max_link_buffer}); cut so that its backlog cannot "
                "fill this node's memory",
                abort=True,
            )
            return
        self.transport.write(data)

    def _skip_forwarders(self) -> None:
        """Have the transport hand reads straight to this link.

        A dialled link gets its bytes through two pure forwarders: the endpoint's
        wrapping protocol and ClientService's proxy, whose ``__getattr__`` raises and
        catches an AttributeError on every read (some 7,000 CPU instructions per
        request/reply round trip, measured with callgrind). Only those known types
        are bypassed, and only for dataReceived: connectionLost still goes through
        them, ClientService needs it to reconnect.
        """
        outer = getattr(self.transport, "protocol", None)
        proto = outer
        for _ in range(len(_FORWARDERS) + 1):
            if proto is self:
                break
            kind = type(proto)
            inner = _FORWARDERS.get(f"{kind.__module__}.{kind.__qualname__}")
            if inner is None:
                return  # something else is in between (e.g. TLS): leave it be
            proto = getattr(proto, inner, None)
        else:
            return
        if outer is not self:
            outer.dataReceived = self.dataReceived

    def _handshake_timed_out(self) -> None:
        self._timeout_call = None
        self.fail(
            f"handshake not finished within {self.context.config.handshake_timeout:g} s; "
            "is the peer a yotonnet node?",
            fatal=False,
        )

    def dataReceived(self, data: bytes) -> None:
        if self._whole_reads:
            # The commonest read on a quiet link is one whole frame (a request, a reply):
            # handled here without the decoder's buffers or the dispatch loop.
            n = len(data)
            if n >= _HEADER_SIZE:
                length, kind, hops, ext_len, tag, channel, source, dest, seq = _unpack_header(data)
                start = _HEADER_SIZE + ext_len
                if length + 4 == n and kind != _DATA and start <= n <= self._decoder.max_frame:
                    handler = self._handlers.get(kind)
                    if handler is not None:
                        self.bytes_in += n
                        self.frames_in += 1
                        self.last_seen = self.clock.seconds()
                        self._dispatch_one(
                            handler,
                            _new(_Frame, (
                                kind, hops, tag, channel, source, dest, seq, data[start:],
                                data[_HEADER_SIZE:start] if ext_len else b"",
                            )),
                        )
                        return
        elif self._closing:
            return
        self.bytes_in += len(data)
        self.last_seen = self.clock.seconds()
        handshaking = self.status is HANDSHAKING
        try:
            frames = self._decoder.feed(data, limit=1 if handshaking else None)
        except ProtocolError as e:
            self.fail(str(e))
            return
        if frames:
            self.frames_in += self._decoder.decoded
            if self.status is not UP:
                if handshaking:
                    frames = self._finish_handshake(frames)
                elif self.status is BUSY:
                    self._set_status(UP)
                else:
                    frames = []
            if frames:
                self._dispatch_frames(frames)
        self._whole_reads = (
            self.status is UP and not self._closing and self._decoder.buffered == 0
        )

    def _finish_handshake(self, frames: list[Any]) -> list[Any]:
        """Handle handshake frames (HELLO, then the authentication exchange) one at a
        time; once the link is up, return the frames that followed them."""
        while True:
            self._handshake(frames[0])
            if self._closing or self.status is not HANDSHAKING:
                break
            try:
                frames = self._decoder.feed(b"", limit=1)
            except ProtocolError as e:
                self.fail(str(e))
                return []
            if not frames:
                return []
            self.frames_in += 1
        if self.status is not UP:
            return []
        # Whatever followed is checked against the negotiated limit.
        try:
            frames = self._decoder.feed(b"")
        except ProtocolError as e:
            self.fail(str(e))
            return []
        self.frames_in += self._decoder.decoded
        return frames

    def _dispatch_one(self, handler: Callable[[Link, wire.Frame], None], frame: Any) -> None:
        """_dispatch_frames for a single frame that is not DATA."""
        ctx = self.context
        outer = not ctx._dispatching
        if outer:
            ctx._dispatching = True
            ctx._turn += 1
        try:
            handler(self, frame)
        except ProtocolError as e:
            self.fail(str(e))
        finally:
            if outer:
                if ctx._routing_pending:  # records received: act on them once per dispatch
                    ctx._settle_routing()
                ctx._dispatching = False
                if ctx._dirty:
                    ctx._flush_dirty()

    def _dispatch_frames(self, frames: list[Any]) -> None:
        """Hand decoded frames (and DATA runs) to their handlers.

        While frames are dispatched, sends are only queued; the writes happen once
        at the end, e.g. all replies to a read, or all frames forwarded from it.
        """
        handlers = self._handlers
        ctx = self.context
        outer = not ctx._dispatching
        if outer:
            ctx._dispatching = True
            ctx._turn += 1
        try:
            # Runs of DATA frames go to the context in one call (see Context._on_data_run).
            on_run = self._on_run
            i, n = 0, len(frames)
            while i < n:
                frame = frames[i]
                if ctx._routing_pending and frame[0] != _CONTROL:
                    # Records act before any frame after them (a call is a barrier).
                    ctx._settle_routing()
                if frame[0] == _DATA:
                    i = on_run(self, frames, i, n)
                else:
                    handlers[frame[0]](self, frame)
                    i += 1
                if self._closing:
                    return
        except ProtocolError as e:
            self.fail(str(e))
        finally:
            if outer:
                if ctx._routing_pending:  # records received: act on them once per dispatch
                    ctx._settle_routing()
                ctx._dispatching = False
                if ctx._dirty:
                    ctx._flush_dirty()

    def _handshake(self, frame: wire.Frame) -> None:
        if frame.kind == FrameKind.ERROR:
            self._peer_error(frame)
            return
        if self._hello_seen:
            if frame.kind == FrameKind.HELLO:
                self.fail("second HELLO on a link (the handshake had begun)")
            else:
                self._outcome(self._auth.on_frame(frame))
            return
        try:
            hello = wire.decode_hello(frame)
        except ProtocolError as e:
            self.fail(str(e))
            return
        self._hello_seen = True
        if hello.node_id == self.context.node_id:
            self.fail("connected to itself (same node id); check the endpoint")
            return
        self.peer_id = hello.node_id
        self.peer_name = hello.name
        self.peer_capabilities = hello.capabilities
        # Applied once the peer is admitted: until then frames stay within the handshake's
        # own small limit, whatever the peer announces.
        self._agreed_max_frame = min(self.context.config.max_frame, hello.max_frame)
        window = hello.extra.get("window", DEFAULT_WINDOW)
        if type(window) is not int or not MIN_WINDOW <= window <= MAX_WINDOW:
            self.fail(
                f"HELLO window must be an integer from {MIN_WINDOW} to {MAX_WINDOW} bytes, "
                f"not {window!r}"
            )
            return
        # Both ends use the smaller window (never more than ours, whatever the peer says).
        self.flow.agree(window)
        refusal = self.context._admit(self)
        if not refusal and not self.outgoing:
            refusal = self.context.guard.check_capacity(self)
        self._outcome(refusal or self._auth.on_hello(hello))

    def _outcome(self, outcome: Any) -> None:
        """What the authentication exchange said about the last handshake frame."""
        if outcome is None:
            return  # wait for the peer's next word
        if isinstance(outcome, str):
            self.fail(outcome)
            return
        self.context.guard.admitted(self, outcome)
        self._complete()

    def write_handshake(self, data: bytes) -> None:
        """Send a frame of the authentication exchange (before the link is up)."""
        if not self._closing:
            self.frames_out += 1
            self.bytes_out += len(data)
            self.transport.write(data)

    def _complete(self) -> None:
        self._decoder.max_frame = self._agreed_max_frame
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        self._handlers = self.context._frame_handlers
        self._handlers_kind_check()
        self.status = UP
        self._start_heartbeat()
        self._uncount()
        self.context.guard.link_up(self)  # gates, identities, claims: before any record
        self.context._link_up(self)
        d, self.handshake_done = self.handshake_done, None
        if d is not None:
            d.callback(self)

    def _handlers_kind_check(self) -> None:
        # Control kinds the link handles itself; the context handles the rest.
        handlers = dict(self._handlers)
        handlers[FrameKind.PING] = Link._on_ping
        handlers[FrameKind.PONG] = Link._on_pong
        handlers[FrameKind.ERROR] = Link._peer_error
        handlers[FrameKind.CLOSE] = Link._on_close
        handlers[FrameKind.HELLO] = Link._on_second_hello
        self._handlers = handlers

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.context.guard.handshaking -= 1

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._stop_timers()
        self._uncount()
        if not self._closing and tls.is_verification_failure(reason):
            # The peer's certificate was refused: dialling again cannot fix that.
            self._fatal = True
            self.reason = tls.explain_failure(reason)
        if self.reason is None:
            text = reason.getErrorMessage() if reason is not None else "connection closed"
            self.reason = f"connection lost: {text}"
        was = self.status
        self._whole_reads = False
        self.status = CLOSED
        d, self.handshake_done = self.handshake_done, None
        if d is not None:
            d.errback(HandshakeError(self.reason, fatal=self._fatal))
        if was is not HANDSHAKING:
            self.context._link_down(self)
        self.context._emit_link_event(self, CLOSED, self.reason)

    # --- sending

    def send(self, data: bytes) -> None:
        """Send one or more encoded frames; small ones sent together are written together.

        One transport.write per batch instead of one per frame: Twisted's write
        costs about a microsecond of Python (producer check, addWriter) however
        small the frame. While a link dispatches received frames, the first
        frame a link sends is written at once (a request answered by one reply
        pays for no batching) and any further ones are queued and written when
        that dispatch ends; frames sent outside a dispatch are written by a
        zero-delay call. Either way they reach the socket no later than
        before: Twisted only sends from doWrite, after the current turn.
        """
        out = self._out
        if out:
            if len(data) >= 16384:
                self._flush()
                self._write(data)
            else:
                out.append(data)
            return
        ctx = self.context
        if ctx._dispatching:
            if self._direct_turn != ctx._turn:
                self._direct_turn = ctx._turn
                # _write() written out: every request and reply goes this way.
                self.frames_out += 1
                self.bytes_out += len(data)
                self._put(data)
                return
            out.append(data)
            ctx._dirty.append(self)  # flushed when the current dispatch ends
        elif len(data) >= 16384:
            # Large frames gain nothing from batching.
            self._write(data)
        else:
            out.append(data)
            self._flush_call = self.clock.callLater(0, self._flush)

    def _write(self, data: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(data)
        self._put(data)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        out = self._out
        if not out:
            return
        self._out = []
        data = out[0] if len(out) == 1 else b"".join(out)
        self.frames_out += len(out)
        self.bytes_out += len(data)
        self._put(data)

    def fail(self, reason: str, fatal: bool = True, abort: bool = False) -> None:
        """Tell the peer what went wrong (where it can read it) and disconnect.

        ``abort``: the peer is not reading, so the connection is aborted (whatever the
        transport still holds is dropped) if it has not closed within a short grace."""
        if self._closing:
            return
        self._whole_reads = False
        self._closing = True
        self._fatal = fatal
        self.reason = reason
        level = "warn" if fatal else "info"
        if self.status is HANDSHAKING and not self.outgoing:
            # Anyone can cause these by the thousand: within the guard's log budget.
            self.context.guard.log_limited("refused", level, "closing link {link}: {reason}",
                                           link=self.describe(), reason=reason)
        else:
            getattr(log, level)("closing link {link}: {reason}", link=self.describe(),
                                reason=reason)
        try:
            if not abort:
                self._flush()
            self.transport.write(wire.encode_frame(FrameKind.ERROR, reason.encode("utf-8")))
        except Exception:  # noqa: BLE001 - a broken transport must not stop the close
            pass
        self._lose_connection()
        if abort:
            self._out = []
            self._abort_call = self.clock.callLater(ABORT_GRACE, self.transport.abortConnection)

    def _lose_connection(self) -> None:
        # A TLS transport does not shut down while a producer is registered.
        try:
            self.transport.unregisterProducer()
        except (AttributeError, RuntimeError):
            pass
        self.transport.loseConnection()

    def close(self, reason: str = "closed by local node") -> None:
        if self._closing:
            return
        self._whole_reads = False
        self._closing = True
        self.reason = reason
        self._flush()
        if self.status is not HANDSHAKING:
            self.transport.write(wire.encode_frame(FrameKind.CLOSE, reason.encode("utf-8")))
        self._lose_connection()

    # --- control frames

    def _on_ping(self, frame: wire.Frame) -> None:
        self.send(wire.encode_frame(FrameKind.PONG, seq=frame.seq))

    def _on_pong(self, frame: wire.Frame) -> None:
        pass  # receiving anything already refreshed last_seen

    def _peer_error(self, frame: wire.Frame) -> None:
        text = printable(frame.payload.decode("utf-8", "replace"), PEER_TEXT_LIMIT)
        self._whole_reads = False
        self._closing = self._fatal = True
        self.reason = f"peer refused: {text}"
        log.warn("link {link} refused by peer: {text}", link=self.describe(), text=text)
        self._lose_connection()

    def _on_close(self, frame: wire.Frame) -> None:
        self._whole_reads = False
        self._closing = True
        self.reason = "peer closed: " + printable(
            frame.payload.decode("utf-8", "replace"), PEER_TEXT_LIMIT
        )
        self._lose_connection()

    def _on_second_hello(self, frame: wire.Frame) -> None:
        raise ProtocolError("second HELLO on an established link")

    # --- heartbeat

    def _start_heartbeat(self) -> None:
        interval = self.context.config.heartbeat
        self._heartbeat_call = self.clock.callLater(interval, self._heartbeat)

    def _heartbeat(self) -> None:
        cfg = self.context.config
        now = self.clock.seconds()
        silent = now - self.last_seen
        if silent >= cfg.busy_timeout and self.status is UP:
            self._set_status(BUSY, f"peer silent for {silent:.1f} s")
        if cfg.dead_timeout and silent >= cfg.dead_timeout:
            self.fail(f"peer silent for {silent:.1f} s (dead_timeout)", fatal=False)
            return
        self.send(wire.encode_frame(FrameKind.PING, seq=int(now * 1000)))
        self._heartbeat_call = self.clock.callLater(cfg.heartbeat, self._heartbeat)

    def _stop_timers(self) -> None:
        self._out = []  # the connection is gone: nothing queued can be written any more
        for call in (self._timeout_call, self._heartbeat_call, self._flush_call,
                     self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._heartbeat_call = self._flush_call = self._abort_call = None

    def _set_status(self, status: str, reason: str | None = None) -> None:
        self._whole_reads = False  # a BUSY link's next read goes the long way, to come back UP
        self.status = status
        self.context._link_status_changed(self, status, reason)

    # --- introspection

    def describe(self) -> str:
        who = self.peer_name or "?"
        return f"{who}@{self.peer_address or self.endpoint_text}"

    def info(self) -> dict:
        return {
            "peer": f"{self.peer_id:016x}" if self.peer_id else None,
            "peer_name": self.peer_name,
            "address": self.peer_address,
            "endpoint": self.endpoint_text,
            "direction": "out" if self.outgoing else "in",
            # who the peer logged in as here (in), or who the peer says we are (out)
            "user": self.identity.user if self.identity is not None else self.authenticated_as,
            "status": self.status,
            "reason": self.reason,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class LinkFactory(Factory):
    """Builds links for a context; ``outgoing`` tells which side dialled."""

    def __init__(
        self, context: Context, outgoing: bool, endpoint_text: str = "", cost: int = 1
    ) -> None:
        self.context = context
        self.outgoing = outgoing
        self.endpoint_text = endpoint_text
        self.cost = cost

    def buildProtocol(self, addr: Any) -> Link | None:
        if not self.outgoing:
            refusal = self.context._refuse_incoming() or self.context.guard.refuse_connection()
            if refusal:
                log.warn("refusing connection from {addr}: {why}", addr=addr, why=refusal)
                return None
        link = Link(self.context, self.outgoing, self.endpoint_text, self.cost)
        if not self.outgoing:
            link._counted = True
            self.context.guard.handshaking += 1
        return link
