"""How a link's frames reach its transport: batched per dispatch, and early when they can.

Three things that would otherwise cost per message, each with its reason,
kept here so the rest of the mesh needs to know none of Twisted's inside:

* **Batching** (:class:`Batch`, :class:`LinkWriter`). Twisted's ``write``
  costs about a microsecond of Python however small the frame. While a
  context dispatches what one read brought (a :class:`Batch` is open), the
  first frame a link sends is written at once (a request answered by one
  reply pays for no batching) and any further ones are joined and written
  when the dispatch ends; frames sent outside a dispatch wait for a
  zero-delay call. Either way they reach the socket no later than before:
  Twisted only sends from ``doWrite``, after the current turn.
* **Eager writes** (:meth:`LinkWriter.write_now`). Twisted's ``write`` only
  buffers: the bytes leave in the next reactor turn, after an ``epoll_ctl``,
  a poll and another ``epoll_ctl``. On a plain TCP transport with nothing
  buffered (nearly always, for requests and replies) a frame of up to 256 KiB
  goes to the socket at once; whatever the socket does not take goes to
  ``transport.write``, which keeps the order, the producer pausing and the
  error handling. This reads Twisted's private buffer fields (``dataBuffer``,
  ``_tempDataLen``, ``_aborting``) of the transport types it knows only.
* **Reads past forwarders** (:func:`read_directly`). A dialled link gets its
  bytes through two pure forwarders (the endpoint's wrapping protocol and
  ClientService's proxy, whose ``__getattr__`` raises and catches an
  AttributeError on every read). For those known types only, the outermost
  protocol's ``dataReceived`` is pointed at the link's.

The writer also keeps what a paused transport still takes within bounds
(:meth:`LinkWriter.pause`): past a window's worth, flow-controlled data
waits in the outboxes; past ``max_link_buffer`` the peer is a slow consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

__all__ = ["Batch", "LinkWriter", "eager_socket", "read_directly", "EAGER_MAX"]

log = Logger(namespace="yotonnet.writer")

#: larger writes go through Twisted's buffer: a partial send would copy the rest (a
#: corked outlet's frames, yotonnet.core.pubsub.CORK_BYTES, and a forwarder's blocks at
#: the default ContextConfig.read_size stay below it)
EAGER_MAX = 262144
#: frames this large are written alone: batching gains them nothing
ALONE = 16384
#: transports a link may write to the socket of directly
_EAGER_TRANSPORTS = (tcp.Server, tcp.Client)
#: Twisted protocol wrappers whose dataReceived only forwards (the attribute holding
#: the wrapped protocol)
_FORWARDERS = {
    "twisted.internet.endpoints._WrappingProtocol": "_wrappedProtocol",
    "twisted.application._client_service._ReconnectingProtocolProxy": "_protocol",
}


class Batch:
    """The dispatch of one read, shared by a context's links.

    ``on_begin`` runs when the outermost dispatch begins while published frames
    are held (the node counts what it spent on them before any frame is handled;
    it has nothing else to do then: see ``Node(batched=True)``), ``on_end`` when
    it ends, before the writes it queued go out (the node draws the consequences
    of routing records there).
    """

    __slots__ = ("active", "turn", "dirty", "on_begin", "on_end", "held", "release")

    def __init__(
        self, on_end: Callable[[], None], on_begin: Callable[[], None] = lambda: None,
        held: list[Any] | None = None, release: Callable[[], None] = lambda: None,
    ) -> None:
        self.active = False
        #: counts dispatches, so a writer can tell its first send in one
        self.turn = 0
        #: writers that queued frames during the current dispatch
        self.dirty: list[LinkWriter] = []
        self.on_end = on_end
        self.on_begin = on_begin
        #: not empty while published frames wait in the node (the core's
        #: PubSub.corked): ``release`` writes them, and every writer calls it before it
        #: writes anything, so nothing overtakes them; the dispatch's end releases them too
        self.held: list[Any] = held if held is not None else []
        self.release = release

    def begin(self) -> bool:
        """Open a dispatch; False if one is open already (an inner one: nothing to do)."""
        if self.active:
            return False
        self.active = True
        self.turn += 1
        if self.held:
            self.on_begin()
        return True

    def end(self) -> None:
        try:
            self.on_end()
        except Exception:  # noqa: BLE001 - the dispatch must end cleanly whatever happens
            log.failure("acting on the routing records of a dispatch failed")
        finally:
            if self.held:
                try:
                    self.release()  # written with the dispatch's other frames
                except Exception:  # noqa: BLE001 - as above
                    log.failure("writing the published frames of a dispatch failed")
            self.active = False
            if self.dirty:
                dirty, self.dirty = self.dirty, []
                for writer in dirty:
                    writer.flush()


class LinkWriter:
    """Puts one link's frames on its transport (see the module docstring)."""

    def __init__(
        self,
        transport: Any,
        batch: Batch,
        clock: Any,
        on_soft_limit: Callable[[], None],
        on_hard_limit: Callable[[int], None],
        socket: Any = None,
    ) -> None:
        self.transport = transport
        self.batch = batch
        self.clock = clock
        self.frames_out = self.bytes_out = 0
        #: called once what was written while paused passes the soft limit
        self.on_soft_limit = on_soft_limit
        #: called (with the bytes written while paused) once they pass the hard limit
        self.on_hard_limit = on_hard_limit
        self._out: list[bytes] = []
        self._flush_call: Any = None
        self._direct_turn = -1
        #: the socket frames may be written to at once (see eager_socket), or None
        self.socket = socket
        #: writes the socket took whole, took in part, or left to Twisted's buffer
        self.direct_writes = self.partial_writes = self.buffered_writes = 0
        self._put: Callable[[bytes], None] = transport.write
        if socket is not None:
            self._put = self.write_now
        # while the transport is paused: the write path to restore, and what was written
        self._unpaused: Callable[[bytes], None] | None = None
        self.written_while_paused = 0
        self._soft = self._hard = 0
        self._over_soft = False
        self.stopped = False

    # --- sending

    def send(self, data: bytes) -> None:
        """Send one or more encoded frames; small ones sent together are written together."""
        batch = self.batch
        if batch.held:
            batch.release()  # published frames waiting in the node go first
        out = self._out
        if out:
            if len(data) >= ALONE:
                self.flush()
                self.write(data)
            else:
                out.append(data)
            return
        if batch.active:
            if self._direct_turn != batch.turn:
                self._direct_turn = batch.turn
                # write() written out: every request and reply goes this way (counted
                # once written, which is sooner).
                self._put(data)
                self.frames_out += 1
                self.bytes_out += len(data)
                return
            out.append(data)
            batch.dirty.append(self)  # flushed when the current dispatch ends
        elif len(data) >= ALONE:
            self.write(data)
        elif not self.stopped:
            out.append(data)
            self._flush_call = self.clock.callLater(0, self.flush)

    def write(self, data: bytes) -> None:
        if self.batch.held:
            self.batch.release()
        self.frames_out += 1
        self.bytes_out += len(data)
        self._put(data)

    def send_pair(self, head: bytes, payload: bytes) -> None:
        """Send one large frame given as its header and its payload, after what waits.

        On the eager path they go to the socket together (``sendmsg``), so the payload
        is not copied to join them; what the socket does not take goes to Twisted's
        buffer (the rest of the payload copied once, as a partial write_now copies). A
        paused or buffered-only transport gets them joined, as from :meth:`send`.
        """
        if self.batch.held:
            self.batch.release()
        if self._out:
            self.flush()
        size = len(head) + len(payload)
        self.frames_out += 1
        self.bytes_out += size
        t = self.transport
        if (
            self.socket is None or self._unpaused is not None or self.stopped
            or t._tempDataLen or t.dataBuffer or not t.connected or t._aborting
        ):
            if self.socket is not None and self._unpaused is None and not self.stopped:
                # Twisted's buffer holds data already: both go after it, and Twisted
                # joins its buffer as it sends anyway.
                self.buffered_writes += 1
                t.write(head)
                t.write(payload)
            else:
                self._put(head + payload)
            return
        try:
            sent = self.socket.sendmsg((head, payload))
        except OSError:  # EAGAIN, or a broken socket that Twisted's write path will report
            sent = 0
        if self._took_all(sent, size):
            return
        if sent < len(head):
            t.write(head[sent:])
            t.write(payload)
        else:
            t.write(payload[sent - len(head):])

    def flush(self) -> None:
        if self.batch.held:
            self.batch.release()  # (a link flushes before it closes)
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

    def stop(self) -> None:
        """The connection is gone or going for good: nothing queued can be written."""
        self.stopped = True
        self._out = []
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def write_now(self, data: bytes) -> None:
        """Write to the socket at once when Twisted has nothing buffered for it (see the
        module docstring); after abortConnection nothing more is sent, as with Twisted's."""
        t = self.transport
        if (
            t._tempDataLen or t.dataBuffer or not t.connected or t._aborting
            or len(data) > EAGER_MAX
        ):
            self.buffered_writes += 1
            t.write(data)
            return
        try:
            sent = self.socket.send(data)
        except OSError:  # EAGAIN, or a broken socket that Twisted's write path will report
            sent = 0
        if sent == len(data):  # (_took_all's common case, written out: every reply)
            self.direct_writes += 1
        elif not self._took_all(sent, len(data)):
            t.write(data[sent:])

    def _took_all(self, sent: int, size: int) -> bool:
        """Count a direct write of ``size`` bytes of which the socket took ``sent``;
        whether it took them all."""
        if sent == size:
            self.direct_writes += 1
            return True
        if sent:
            self.partial_writes += 1
        else:
            self.buffered_writes += 1
        return False

    # --- a paused transport

    @property
    def paused(self) -> bool:
        return self._unpaused is not None

    def pause(self, soft: int, hard: int) -> None:
        """The transport holds more than it can send: count what is still written, and
        report once it passes ``soft`` bytes, then ``hard`` bytes."""
        if self._unpaused is not None:
            return
        self.written_while_paused = 0
        self._soft, self._hard, self._over_soft = soft, hard, False
        self._unpaused, self._put = self._put, self._write_while_paused

    def resume(self) -> None:
        if self._unpaused is not None:
            self._put, self._unpaused = self._unpaused, None

    def _write_while_paused(self, data: bytes) -> None:
        if self.stopped:
            return  # cut already: nothing more goes to a peer that does not read
        written = self.written_while_paused = self.written_while_paused + len(data)
        if written > self._soft and not self._over_soft:
            self._over_soft = True
            self.on_soft_limit()
        if written > self._hard:
            self.on_hard_limit(written)
            return
        self.transport.write(data)


def eager_socket(transport: Any) -> Any:
    """The socket a :class:`LinkWriter` may write ``transport``'s frames to at once: a
    plain TCP transport's (of the Twisted types whose buffer fields it knows), else None."""
    if (
        type(transport) in _EAGER_TRANSPORTS
        and not getattr(transport, "TLS", False)
        and all(hasattr(transport, a)
                for a in ("dataBuffer", "_tempDataLen", "connected", "_aborting"))
    ):
        return transport.getHandle()
    return None


def read_directly(protocol: Any) -> None:
    """Have ``protocol``'s transport hand reads straight to it, past the pure forwarders
    of a dialled connection (known types only, and only for dataReceived: connectionLost
    still goes through them, ClientService needs it to reconnect)."""
    outer = getattr(protocol.transport, "protocol", None)
    inner = outer
    for _ in range(len(_FORWARDERS) + 1):
        if inner is protocol:
            break
        kind = type(inner)
        attribute = _FORWARDERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if attribute is None:
            return  # something else is in between (e.g. TLS): leave it be
        inner = getattr(inner, attribute, None)
    else:
        return
    if outer is not protocol:
        outer.dataReceived = protocol.dataReceived
