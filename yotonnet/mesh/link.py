"""Links: one Twisted protocol per peer connection.

:class:`LinkBase` is the life every link of a node shares, whatever it
speaks: a status (``handshaking``, ``up``, ``busy`` when the peer has been
silent past ``busy_timeout`` (e.g. its interpreter is stuck in C code holding
the GIL), ``closed`` with a reason), heartbeats, counters, the way it fails or
closes, and what it reports to its owner
(:class:`~yotonnet.mesh.interfaces.ILinkOwner`). Silence gives three signals,
kept apart: past ``reroute_after`` a node link is ``quiet`` (traffic goes
around it at once, nothing is reported), past ``busy_timeout`` its peer is
busy, and past ``dead_timeout`` (if set) its link is closed. It is the core's
:class:`~yotonnet.core.interfaces.IPeer`.

:class:`Link` speaks yotonnet: the preamble and HELLO, the authentication
exchange (its part given by the guard, :mod:`yotonnet.security.linkauth`),
the frame size limits, and then hands every frame to the handler its owner
gave for that kind (the core's, through a client link's gate). Its bytes go
out through a :class:`~yotonnet.mesh.writer.LinkWriter`, and it is the
producer of its own transport: when the transport holds more than it can
send, flow-controlled data waits instead, and a peer that reads nothing while
``max_link_buffer`` bytes pile up is cut as a slow consumer.
The Yoton bridge's link (:mod:`yotonnet.yoton.link`) is the other kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core import wire
from ..core.flow import DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW, PeerFlow
from ..core.interfaces import IPeer
from ..core.leaves import HUB, LEAF, LEAF_CAPABILITY, NODE
from ..core.names import printable
from ..core.wire import FrameKind, ProtocolError
from ..security import tls
from .replypoll import pollable_socket
from .writer import LinkWriter, eager_socket, read_directly

if TYPE_CHECKING:
    from .interfaces import ILinkOwner

_DATA = int(FrameKind.DATA)
_CONTROL = int(FrameKind.CONTROL)
_HEADER_SIZE = wire.HEADER_SIZE
_unpack_header = wire.HEADER.unpack_from
_new = tuple.__new__
_Frame = wire.Frame
#: the most of a peer's ERROR or CLOSE text kept (escaped: it reaches logs and terminals)
PEER_TEXT_LIMIT = 2000
#: seconds a link failed for not reading gets to take its ERROR frame before the abort
ABORT_GRACE = 2.0
HANDSHAKING = "handshaking"
UP = "up"
BUSY = "busy"
CLOSED = "closed"
#: seconds a timer may fire early by float rounding, for the silence it was set for
_CLOCK_SLACK = 1e-6

log = Logger(namespace="yotonnet.link")


class HandshakeError(ProtocolError):
    """The handshake with a peer failed; ``fatal`` means retrying will not help."""

    def __init__(self, message: str, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


@implementer(IPeer)
class LinkBase(Protocol):
    """What every link of a node shares (see the module docstring)."""

    #: IPeer.lets_cork_out: whether every frame this link writes goes through a LinkWriter,
    #: which writes the node's waiting published frames first
    lets_cork_out = False
    #: IPeer.poll_socket: none here; a Link over a socket has one (see connectionMade)
    poll_socket: Any = None

    def __init__(
        self, context: ILinkOwner, outgoing: bool, endpoint_text: str = "", cost: int = 1
    ) -> None:
        self.context = context
        self.clock = context.reactor
        self.outgoing = outgoing
        self.endpoint_text = endpoint_text
        #: this end's routing cost of the link (the mesh uses the higher of both ends')
        self.cost = cost
        self.status = HANDSHAKING
        #: the peer has been silent past reroute_after: traffic goes around this link,
        #: though its status stays "up" (see the module docstring)
        self.quiet = False
        self.reason: str | None = None
        self.peer_id = 0
        self.peer_name = ""
        self.peer_capabilities: tuple[str, ...] = ()
        self.peer_address = ""
        #: what the peer is to this node: a node of the mesh, a leaf of ours, or our hub
        #: (yotonnet.core.leaves); decided by the handshake
        self.role = NODE
        self.handshake_done: defer.Deferred[Any] | None = defer.Deferred()
        if not outgoing:
            # Nobody waits on an incoming handshake; its failure is a link event.
            self.handshake_done.addErrback(lambda _: None)
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        self.last_seen = 0.0
        self._topology = context.node.topology
        self._batch = context.batch
        # frame kind -> handler(link, frame), and the handler of DATA frames and runs:
        # given by the owner once the link is up (see ILinkOwner.dispatch_for)
        self._handlers: dict[int, Callable[[Any, Any], None]] = {}
        self._on_frames: Callable[[Any, list, int, int], int] = _not_yet
        window = context.config.flow_window
        #: credit per channel both ways (the send window is the peer's, set at the handshake)
        self.flow = PeerFlow(window, window)
        #: who the peer authenticated as (yotonnet.security.auth.Identity), and the gate of
        #: a client link (yotonnet.security.guard.LinkGate); both None for trusted peers
        self.identity: Any = None
        self.gate: Any = None
        #: a leaf's link: the identities it is told (yotonnet.security.guard.IdentityFeed)
        self.feed: Any = None
        #: the peer proved it is a node: it may speak for others
        self.trusted = False
        #: the user a listener that authenticates said we are (outgoing links)
        self.authenticated_as: str | None = None
        #: counted among the guard's connections still shaking hands
        self.counted = False
        self.closing = False
        self._fatal = False
        self._timeout_call: Any = None
        self._heartbeat_call: Any = None
        self._abort_call: Any = None
        self._quiet_call: Any = None

    #: whether this kind of link can be routed around while its peer is quiet
    reroutes = False

    # --- what each kind of link says

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def _keepalive(self) -> None:
        """Tell a quiet peer this end is alive (every heartbeat)."""
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        """Periodic work of this kind of link, at every heartbeat."""

    def _heartbeat_interval(self) -> float:
        return self.context.config.heartbeat

    def sent_counts(self) -> tuple[int, int]:
        """(frames, bytes) sent so far."""
        return self.frames_out, self.bytes_out

    def _error_bytes(self, reason: str) -> bytes | None:
        """How the peer is told why its link fails (None: it cannot be told)."""
        return None

    def _close_bytes(self, reason: str) -> bytes | None:
        """How the peer is told this end closes the link (None: it is just closed)."""
        return None

    def _flush(self) -> None:
        """Write what waits to be batched (a link that batches)."""

    # --- connection life

    def connectionMade(self) -> None:
        self.last_seen = self.clock.seconds()
        peer = self.transport.getPeer()
        self.peer_address = str(getattr(peer, "host", "") or getattr(peer, "name", "") or peer)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # unix sockets and memory transports have no Nagle to turn off
        self._timeout_call = self.clock.callLater(
            self.context.config.handshake_timeout, self._handshake_timed_out
        )

    def _handshake_timed_out(self) -> None:
        self._timeout_call = None
        self.fail(
            f"handshake not finished within {self.context.config.handshake_timeout:g} s; "
            f"is the peer {self.expected_peer}?",
            fatal=False,
        )

    #: what the other end should be, for the handshake timeout's message
    expected_peer = "a yotonnet node"

    def _up(self) -> None:
        """The handshake is done: the link is up."""
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        self.status = UP
        self._heartbeat_call = self.clock.callLater(self._heartbeat_interval(), self._heartbeat)
        self._uncount()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.context.guard.handshaking -= 1

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._stop_timers()
        self._uncount()
        if not self.closing and tls.is_verification_failure(reason):
            # The peer's certificate was refused: dialling again cannot fix that.
            self._fatal = True
            self.reason = tls.explain_failure(reason)
        if self.reason is None:
            text = reason.getErrorMessage() if reason is not None else "connection closed"
            self.reason = f"connection lost: {text}"
        was = self.status
        self.closing = True
        self.status = CLOSED
        d, self.handshake_done = self.handshake_done, None
        if d is not None:
            d.errback(HandshakeError(self.reason, fatal=self._fatal))
        if was is not HANDSHAKING:
            self.context.link_down(self)
        self.context.link_event(self, CLOSED, self.reason)

    # --- handing frames to the node

    def _dispatch_frames(self, frames: list[Any]) -> None:
        """Hand decoded frames (and DATA runs) to their handlers.

        While frames are dispatched, sends are only queued; the writes happen once
        at the end, e.g. all replies to a read, or all frames forwarded from it.
        """
        handlers = self._handlers
        batch = self._batch
        outer = batch.begin()
        topology = self._topology
        try:
            on_frames = self._on_frames
            i, n = 0, len(frames)
            while i < n:
                frame = frames[i]
                if topology.pending and frame[0] != _CONTROL:
                    # Records act before any frame after them (a call is a barrier).
                    self.context.node.settle()
                if frame[0] == _DATA:
                    i = on_frames(self, frames, i, n)
                else:
                    handlers[frame[0]](self, frame)
                    i += 1
                if self.closing:
                    return
        except ProtocolError as e:
            self.fail(str(e))
        finally:
            if outer:
                batch.end()

    # --- failing and closing

    def fail(self, reason: str, fatal: bool = True, abort: bool = False) -> None:
        """Tell the peer what went wrong (where it can read it) and disconnect.

        ``abort``: the peer is not reading, so the connection is aborted (whatever the
        transport still holds is dropped) if it has not closed within a short grace."""
        if self.closing:
            return
        self.closing = True
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
            told = self._error_bytes(reason)
            if told:
                self.transport.write(told)
        except Exception:  # noqa: BLE001 - a broken transport must not stop the close
            pass
        self._lose_connection()
        if abort:
            self._abort_call = self.clock.callLater(ABORT_GRACE, self.transport.abortConnection)

    def close(self, reason: str = "closed by local node") -> None:
        if self.closing:
            return
        self.closing = True
        self.reason = reason
        self._flush()
        if self.status is not HANDSHAKING:
            told = self._close_bytes(reason)
            if told:
                self.transport.write(told)
        self._lose_connection()

    def _lose_connection(self) -> None:
        # A TLS transport does not shut down while a producer is registered.
        try:
            self.transport.unregisterProducer()
        except (AttributeError, RuntimeError):
            pass
        self.transport.loseConnection()

    # --- heartbeat and silence

    def _heartbeat(self) -> None:
        cfg = self.context.config
        now = self.clock.seconds()
        silent = now - self.last_seen
        if self.status is UP:
            if silent >= cfg.busy_timeout:
                self._set_status(BUSY, f"peer silent for {silent:.1f} s")
            elif cfg.reroute_after and not self.quiet and self.reroutes and self.role == NODE:
                self._watch_quiet(now, cfg.reroute_after)
        if cfg.dead_timeout and silent >= cfg.dead_timeout:
            self.fail(f"peer silent for {silent:.1f} s (dead_timeout)", fatal=False)
            return
        self._tick(now)
        self._keepalive()
        self._heartbeat_call = self.clock.callLater(self._heartbeat_interval(), self._heartbeat)

    def _watch_quiet(self, now: float, after: float) -> None:
        """Mark the link quiet once its peer has been silent ``after`` seconds: now, or
        at that moment if it comes before the next heartbeat (checking only at
        heartbeats would route around a silent link up to a heartbeat late)."""
        due = self.last_seen + after
        if now >= due - _CLOCK_SLACK:
            self._set_quiet(now - self.last_seen)
        elif due - now < self._heartbeat_interval() and self._quiet_call is None:
            self._quiet_call = self.clock.callLater(due - now, self._quiet_due)

    def _quiet_due(self) -> None:
        self._quiet_call = None
        if self.status is UP and not self.quiet:
            now = self.clock.seconds()
            if now - self.last_seen >= self.context.config.reroute_after - _CLOCK_SLACK:
                self._set_quiet(now - self.last_seen)

    def _set_quiet(self, silent: float) -> None:
        self.quiet = True
        self.context.link_quiet(self, f"peer silent for {silent:.1f} s")

    def _heard(self) -> None:
        """The peer said something: a quiet link carries traffic again, a busy one is
        up again (one report for both)."""
        was_quiet = self.quiet
        self.quiet = False
        if self.status is BUSY:
            self._set_status(UP)
        elif was_quiet:
            self.context.link_quiet(self, None)

    def _stop_timers(self) -> None:
        for call in (self._timeout_call, self._heartbeat_call, self._abort_call,
                     self._quiet_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._heartbeat_call = self._abort_call = self._quiet_call = None

    def _set_status(self, status: str, reason: str | None = None) -> None:
        self.status = status
        self.context.link_status(self, status, reason)

    # --- introspection

    def describe(self) -> str:
        who = self.peer_name or "?"
        return f"{who}@{self.peer_address or self.endpoint_text}"

    def info(self) -> dict:
        frames_out, bytes_out = self.sent_counts()
        return {
            "peer": f"{self.peer_id:016x}" if self.peer_id else None,
            "peer_name": self.peer_name,
            "address": self.peer_address,
            "endpoint": self.endpoint_text,
            "direction": "out" if self.outgoing else "in",
            # "node": a neighbour in the mesh; "leaf": a leaf of ours; "hub": our hub
            "role": self.role,
            # who the peer logged in as here (in), or who the peer says we are (out)
            "user": self.identity.user if self.identity is not None else self.authenticated_as,
            "status": self.status,
            "reason": self.reason,
            "frames_in": self.frames_in,
            "frames_out": frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": bytes_out,
        }


@implementer(IPushProducer)
class Link(LinkBase):
    """The connection to one yotonnet peer (see the module docstring)."""

    reroutes = True
    lets_cork_out = True

    def __init__(
        self, context: ILinkOwner, outgoing: bool, endpoint_text: str = "", cost: int = 1,
        leaf: bool = False,
    ) -> None:
        super().__init__(context, outgoing, endpoint_text, cost)
        #: this end dials as a leaf (its HELLO says so; the peer becomes its hub)
        self.leaf = leaf
        # runs: DATA frames come grouped as wire.Run records (see yotonnet.core.pubsub)
        self._decoder = wire.FrameDecoder(
            max_frame=wire.HANDSHAKE_MAX_FRAME, runs=True,
            max_control=context.config.max_control_frame,
        )
        # this side's part in authenticating the link (set in connectionMade)
        self._auth: Any = None
        self._hello_seen = False
        self._agreed_max_frame = wire.HANDSHAKE_MAX_FRAME
        self.writer: LinkWriter | None = None
        # True while a read may skip the decoder: the link is up and not closing, and the
        # decoder holds no partial frame (see dataReceived); cleared by every status change
        self._whole_reads = False

    # --- sending

    def send(self, data: bytes) -> None:  # replaced by the writer's in connectionMade
        raise ProtocolError("a link sends nothing before it is connected")

    def _send_to_client(self, data: bytes) -> None:
        """A client's link: its gate sees what goes to it (replies end its requests)."""
        self.gate.sending(data)
        self.writer.send(data)  # type: ignore[union-attr]

    def _send_to_leaf(self, data: bytes) -> None:
        """A leaf's link: the bindings of the nodes it hears from go first."""
        if self.gate is not None:
            self.gate.sending(data)
        writer = self.writer
        assert writer is not None
        feed = self.feed
        # (a reply, say, has no source to tell of: asked nothing)
        if feed is not None and data[4] in feed.kinds:
            told = feed.before(data)
            if told is not None:
                writer.send(told)
        writer.send(data)

    def send_pair(self, head: bytes, payload: bytes) -> None:
        """IPeer.send_pair: one frame given as its header and its payload, as
        ``send(head + payload)`` (a leaf's or client's link sees its header as it would
        the frame), but the writer joins them only if it must."""
        writer = self.writer
        if writer is None:
            raise ProtocolError("a link sends nothing before it is connected")
        if self.send != writer.send:
            if self.gate is not None:
                self.gate.sending(head)
            if self.role == LEAF and self.feed is not None:
                told = self.feed.before(head)
                if told is not None:
                    writer.send(told)
        writer.send_pair(head, payload)

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _keepalive(self) -> None:
        self.send(wire.encode_frame(FrameKind.PING, seq=int(self.clock.seconds() * 1000)))

    def _error_bytes(self, reason: str) -> bytes | None:
        return wire.encode_frame(FrameKind.ERROR, reason.encode("utf-8"))

    def _close_bytes(self, reason: str) -> bytes | None:
        return wire.encode_frame(FrameKind.CLOSE, reason.encode("utf-8"))

    def sent_counts(self) -> tuple[int, int]:
        writer = self.writer
        return (writer.frames_out, writer.bytes_out) if writer is not None else (0, 0)

    def write_handshake(self, data: bytes) -> None:
        """Send a frame of the authentication exchange (before the link is up)."""
        if not self.closing and self.writer is not None:
            self.writer.write(data)

    # --- connection life

    def connectionMade(self) -> None:
        super().connectionMade()
        cfg = self.context.config
        self.writer = LinkWriter(
            self.transport, self.context.batch, self.clock, self._hold_data,
            self._slow_consumer, eager_socket(self.transport) if cfg.eager_writes else None,
        )
        self.send = self.writer.send  # type: ignore[method-assign]
        if cfg.reply_poll:
            # (what a ReplyPoller watches for the replies to calls sent here)
            self.poll_socket = pollable_socket(self.transport)
        if isinstance(getattr(self.transport, "bufferSize", None), int):
            # (a TCP or unix connection: Twisted's doRead takes up to bufferSize bytes)
            self.transport.bufferSize = cfg.read_size
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
                    (*self.context.capabilities, LEAF_CAPABILITY) if self.leaf
                    else self.context.capabilities,
                    cfg.max_frame,
                    cfg.heartbeat,
                    {"window": cfg.flow_window, **self._auth.hello_extra()},
                )
            )
        )
        read_directly(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._whole_reads = False
        if self.writer is not None:
            self.writer.stop()
        super().connectionLost(reason)

    # --- IPushProducer: the transport tells us when it holds too much

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        # Twisted pauses at 64 KiB held, which at full speed happens all the time: data
        # goes on until a window's worth more is held (credit bounds it anyway).
        if self.writer is not None and not self.closing:
            cfg = self.context.config
            self.writer.pause(cfg.flow_window, cfg.max_link_buffer)

    def resumeProducing(self) -> None:  # noqa: N802
        if self.writer is None:
            return
        self.writer.resume()
        if self.flow.paused:
            self.flow.paused = False
            if self.status is UP or self.status is BUSY:
                self.context.node.peer_writable(self)

    def stopProducing(self) -> None:  # noqa: N802
        pass  # the connection is going; connectionLost does the rest

    def _hold_data(self) -> None:
        """A window's worth written to a paused transport: data waits in the outboxes."""
        self.flow.paused = True

    def _slow_consumer(self, written: int) -> None:
        self.context.counters["slow_consumers"] += 1
        self.writer.stop()  # type: ignore[union-attr]
        self.fail(
            f"slow consumer: the peer read nothing while {written} bytes waited for it "
            f"(max_link_buffer is {self.context.config.max_link_buffer}); cut so that its "
            "backlog cannot fill this node's memory",
            abort=True,
        )

    # --- reading

    def dataReceived(self, data: bytes) -> None:
        if self._whole_reads:
            # The commonest read on a quiet link is one whole frame (a request, a reply):
            # handled here without the decoder's buffers or the dispatch loop.
            n = len(data)
            if n >= _HEADER_SIZE:
                length, kind, hops, ext_len, tag, channel, source, dest, seq = _unpack_header(data)
                start = _HEADER_SIZE + ext_len
                if length + 4 == n and kind != _DATA and start <= n <= self._agreed_max_frame:
                    handler = self._handlers.get(kind)
                    if handler is not None:
                        # _dispatch_frames for one frame, written out: the time from here
                        # to the reply's or next request's write is a round trip's.
                        batch = self._batch
                        outer = batch.begin()
                        try:
                            if self._topology.pending and kind != _CONTROL:
                                self.context.node.settle()
                            handler(self, _new(_Frame, (
                                kind, hops, tag, channel, source, dest, seq, data[start:],
                                data[_HEADER_SIZE:start] if ext_len else b"",
                            )))
                        except ProtocolError as e:
                            self.fail(str(e))
                        finally:
                            if outer:
                                batch.end()
                        # Counted once the frame is handled (same turn): it need not wait.
                        self.bytes_in += n
                        self.frames_in += 1
                        self.last_seen = self.clock.seconds()
                        return
        elif self.closing:
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
                    self._whole_reads = False
                    self._heard()
                else:
                    frames = []
            elif self.quiet:
                self._heard()
            if frames:
                self._dispatch_frames(frames)
        self._whole_reads = (
            self.status is UP and not self.quiet and not self.closing
            and self._decoder.buffered == 0
        )

    # --- the handshake

    def _finish_handshake(self, frames: list[Any]) -> list[Any]:
        """Handle handshake frames (HELLO, then the authentication exchange) one at a
        time; once the link is up, return the frames that followed them."""
        while True:
            self._handshake(frames[0])
            if self.closing or self.status is not HANDSHAKING:
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
        if LEAF_CAPABILITY in hello.capabilities:
            if self.outgoing:
                self.fail("the peer is a leaf context: a leaf takes no links; dial a node")
                return
            self.role = LEAF
        elif self.leaf:
            self.role = HUB
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
        refusal = self.context.admit(self)
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

    def _complete(self) -> None:
        self._decoder.max_frame = self._agreed_max_frame
        handlers, self._on_frames = self.context.dispatch_for(self)
        # Kinds the link handles itself; the node (through a gate, for a client) the rest.
        handlers[FrameKind.PING] = Link._on_ping
        handlers[FrameKind.PONG] = Link._on_pong
        handlers[FrameKind.ERROR] = Link._peer_error
        handlers[FrameKind.CLOSE] = Link._on_close
        handlers[FrameKind.HELLO] = Link._on_second_hello
        self._handlers = handlers
        if self.role == LEAF:
            self.send = self._send_to_leaf  # type: ignore[method-assign]
        elif self.gate is not None:
            self.send = self._send_to_client  # type: ignore[method-assign]
        self._up()
        self.context.guard.link_up(self)  # identities, claims: before any record
        self.context.link_up(self)
        d, self.handshake_done = self.handshake_done, None
        if d is not None:
            d.callback(self)

    # --- frames the link handles itself

    def _on_ping(self, frame: wire.Frame) -> None:
        self.send(wire.encode_frame(FrameKind.PONG, seq=frame.seq))

    def _on_pong(self, frame: wire.Frame) -> None:
        pass  # receiving anything already refreshed last_seen

    def _peer_error(self, frame: wire.Frame) -> None:
        text = printable(frame.payload.decode("utf-8", "replace"), PEER_TEXT_LIMIT)
        self._whole_reads = False
        self.closing = self._fatal = True
        self.reason = f"peer refused: {text}"
        log.warn("link {link} refused by peer: {text}", link=self.describe(), text=text)
        self._lose_connection()

    def _on_close(self, frame: wire.Frame) -> None:
        self._whole_reads = False
        self.closing = True
        self.reason = "peer closed: " + printable(
            frame.payload.decode("utf-8", "replace"), PEER_TEXT_LIMIT
        )
        self._lose_connection()

    def _on_second_hello(self, frame: wire.Frame) -> None:
        raise ProtocolError("second HELLO on an established link")

    def fail(self, reason: str, fatal: bool = True, abort: bool = False) -> None:
        self._whole_reads = False
        super().fail(reason, fatal, abort)

    def close(self, reason: str = "closed by local node") -> None:
        self._whole_reads = False
        super().close(reason)

    def _set_status(self, status: str, reason: str | None = None) -> None:
        self._whole_reads = False  # a BUSY link's next read goes the long way, to come back UP
        super()._set_status(status, reason)

    def _set_quiet(self, silent: float) -> None:
        self._whole_reads = False  # likewise for a quiet one, to carry traffic again
        super()._set_quiet(silent)


def _not_yet(peer: Any, frames: list, i: int, n: int) -> int:
    raise ProtocolError("a DATA frame before the link is up")


class LinkFactory(Factory):
    """Builds links for a context; ``outgoing`` tells which side dialled."""

    def __init__(
        self, context: ILinkOwner, outgoing: bool, endpoint_text: str = "", cost: int = 1,
        leaf: bool = False,
    ) -> None:
        self.context = context
        self.outgoing = outgoing
        self.endpoint_text = endpoint_text
        self.cost = cost
        self.leaf = leaf

    def buildProtocol(self, addr: Any) -> Link | None:  # noqa: N802 - Twisted's name
        if not self.outgoing:
            refusal = self.context.accepting() or self.context.guard.refuse_connection()
            if refusal:
                log.warn("refusing connection from {addr}: {why}", addr=addr, why=refusal)
                return None
        link = Link(self.context, self.outgoing, self.endpoint_text, self.cost, self.leaf)
        if not self.outgoing:
            link.counted = True
            self.context.guard.handshaking += 1
        return link
