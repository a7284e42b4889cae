"""A link to an unmodified Yoton 2.2 context, translating both ways.

:class:`YotonLink` is a :class:`~yotonnet.mesh.link.LinkBase` whose wire is
Yoton's (see :mod:`yotonnet.yoton.wire`). To its node it looks like any link:
it sits in ``context.links`` under the Yoton context's id, takes yotonnet
frames in ``send()`` and hands the frames it makes of packages to the node's
handlers, as a yotonnet link hands those it decodes. The
Yoton context becomes a *virtual node* of that id (Yoton ids and node ids are
both random 64-bit numbers, so the id is used as it is): the link floods a
node record for it -- one link, to this context, and the interests its
:class:`~yotonnet.yoton.slots.YotonChannel` list declares -- so the mesh routes
to it like to any node and ``topology()`` shows it.

Translation, per pattern:

* pub/sub: a Yoton package on a ``pub-sub`` slot becomes a DATA frame from the
  virtual node; a DATA frame for it becomes a package whose source id is the
  publishing node. Flow control: the link releases (credits) the bytes of each
  DATA frame once written, except while a Yoton SubChannel in sync mode has
  said ``full`` (until ``ok``, or 10 s without a repeat, as Yoton's PubChannel
  does); the other way, when more than 3/4 of the flow window it injected is
  unreleased, it tells the Yoton publishers ``full``, and ``ok`` below 1/2.
  Past ``publish_backlog`` unreleased bytes it drops (counted) what a Yoton
  publisher sends regardless (Yoton's PubChannel blocks at most 1 s per send).
* state: a package on a ``state`` slot is a write by the virtual node, made
  through the node's one state store (:class:`~yotonnet.core.statesync.StateSync`)
  with a Lamport version like any. The Yoton side's hold on the channel is a
  local holder of that store (:class:`YotonStateHolder`): the store keeps the
  value, tells late joiners and passes each newer value on, so the Yoton side
  only ever gets newer versions.
* request/reply: Yoton asks who will serve (``req?``, dest seq = request id +
  2**63) before sending a request. The link answers ``req!`` in the name of
  the nearest replier the mesh knows, then turns the request into a REQUEST
  frame to it; the REPLY comes back as Yoton's reply package (an error as
  Yoton's ``(ERROR_OBJECT, text)``). A REQUEST frame for the Yoton side goes
  through the same negotiation the other way: ``req?`` to the Yoton context,
  the request once its RepChannel says ``req!``, ``req-`` to the others.
* heartbeats: a Yoton heartbeat package every 0.25 s (Yoton's receive timeout
  is 0.5 s); silence past ``busy_timeout`` marks the link busy, as any link.
  Closing sends Yoton's close package; one received closes the link.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core import wire
from ..core.codec import decode_object, decode_values, encode_object, encode_values
from ..core.interfaces import IStateEnd
from ..core.messages import message_type
from ..core.names import printable
from ..core.routing import REP, STATE, NodeState
from ..core.wire import HEADER_SIZE, FrameKind
from ..errors import DecodeError, MessageTypeError, ProtocolError, YotonnetError
from ..mesh.link import HANDSHAKING, UP, HandshakeError, LinkBase
from . import objects
from . import wire as ywire
from .slots import FLOW, PUB, REPL, REQ, STATE_SLOT, Carried, SlotMap

if TYPE_CHECKING:
    from ..mesh.interfaces import ILinkOwner

log = Logger(namespace="yotonnet.yoton")

#: seconds between heartbeats: half of Yoton's minimum receive timeout (0.5 s)
HEARTBEAT = 0.25
#: Yoton's request ids for pre-requests are offset by this
REQREP_SEQ_REF = 2**63
#: the reply Yoton's RepChannel sends when a handler raised: (ERROR_OBJECT, text)
ERROR_OBJECT = "yoton_ERROR_HANDLING_REQUEST"
#: seconds between repeats of an unanswered pre-request (as Yoton's ReqChannel)
PRE_REQUEST_REPEAT = 0.5
#: a Yoton SubChannel repeats "full" every 4 s; a PubChannel lets it lapse after 10 s
FULL_REPEAT, FULL_LAPSE = 4.0, 10.0
#: requests in negotiation with the Yoton side at once, and requesters remembered
MAX_PENDING = 10000
#: distinct Yoton subscribers per channel whose "full" is tracked (a bound, not a need)
MAX_FULL_SOURCES = 1024

_DATA = int(FrameKind.DATA)
_REQUEST = int(FrameKind.REQUEST)
_REPLY = int(FrameKind.REPLY)
_CREDIT = int(FrameKind.CREDIT)
_ACK = int(FrameKind.ACK)
_TAIL = int(FrameKind.TAIL)


@dataclass
class _Outgoing:
    """A request from the mesh, in negotiation with the Yoton side."""

    carried: Carried
    source: int
    req_id: int
    request: bytes
    deadline: float
    next_ask: float
    replier: int = 0


class YotonLink(LinkBase):
    """The connection to one Yoton context (see the module docstring)."""

    expected_peer = "a Yoton context"

    def __init__(
        self, context: ILinkOwner, outgoing: bool, endpoint_text: str, slots: SlotMap
    ) -> None:
        super().__init__(context, outgoing, endpoint_text)
        self.slots = slots
        self.yoton_pid = 0
        self.peer_capabilities = ("yoton-2.2",)
        self._reader: ywire.HandshakeReader | None = ywire.HandshakeReader()
        self._packages = ywire.PackageDecoder(context.config.max_frame)
        # Frames the node sends are read back out of send()'s bytes.
        self._sent = wire.FrameDecoder(wire.MAX_U64, expect_preamble=False)
        # Yoton drops a package whose source seq is not above the last from that source:
        # one rising counter for everything this link sends, from the clock, so a new
        # link to the same context continues above the last.
        self._out_seq = time.time_ns()
        self._in_seq = time.time_ns()
        self._record_version = time.time_ns() // 1000
        self._wrote = False
        # pub/sub flow: bytes written to Yoton and not yet credited; channels held by
        # a Yoton SubChannel's "full" (channel -> {yoton source: lapse time})
        self._owed: dict[int, int] = {}
        self._full_from: dict[int, dict[int, float]] = {}
        self._grant_call: Any = None
        # bytes injected and not yet credited by the node; channels told "full"
        self._unreleased: dict[int, int] = {}
        self._told_full: dict[int, float] = {}
        # state: the Yoton side's hold on each carried state channel, registered with the
        # node once the link is up (the node's one state store keeps the values)
        self._holders: list[YotonStateHolder] = []
        # req/rep: requests from the mesh in negotiation, by Yoton request id
        self._outgoing: dict[int, _Outgoing] = {}
        self._next_request = 0
        # requests from Yoton contexts behind the peer: (channel, request id) -> their id
        self._requesters: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.counters = {
            "packages_in": 0,
            "packages_out": 0,
            "heartbeats_in": 0,
            "untranslatable": 0,
            "unknown_slot": 0,
            "dropped_backlog": 0,
            "full_in": 0,
            "full_out": 0,
        }

    # --- connection life

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.outgoing:
            # The dialling side speaks first; a Yoton host answers with its own line.
            self.transport.write(self._hello_line())

    def _hello_line(self) -> bytes:
        return ywire.handshake_line(self.context.node_id, os.getpid())

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.bytes_in += len(data)
        self.last_seen = self.clock.seconds()
        try:
            if self._reader is not None:
                got = self._reader.feed(data)
                if got is None:
                    return
                line, data = got
                self._reader = None
                self._yoton_handshake(line)
                if self.status is not UP or not data:
                    return
            packages = self._packages.feed(data)
        except ProtocolError as e:
            if self.status is HANDSHAKING and not self.outgoing:
                # Where a Yoton client (or a person with telnet) reads it.
                self.transport.write(
                    b"ERROR: this is a yotonnet node expecting a Yoton 2.2 handshake "
                    b"(YOTON!<id>.<pid>)\r\n"
                )
            self.fail(str(e))
            return
        self._heard()
        self.counters["heartbeats_in"] = self._packages.heartbeats
        if packages:
            self.frames_in += len(packages)
            self.counters["packages_in"] += len(packages)
            self._from_yoton(packages)
        if self._packages.closed and not self.closing:
            self.closing = True
            self.reason = "Yoton peer closed the connection"
            self.transport.loseConnection()

    def _yoton_handshake(self, line: bytes) -> None:
        yoton_id, pid = ywire.parse_handshake(line)  # ProtocolError: see dataReceived
        if yoton_id == self.context.node_id:
            self.fail("Yoton handshake: connected to itself (same id); check the endpoint")
            return
        self.peer_id = yoton_id
        self.yoton_pid = pid
        self.peer_name = f"yoton-{pid}-{yoton_id & 0xFFFF:04x}"
        ctx = self.context
        # Yoton has no credentials: only links we dialled, or peers of our own OS user.
        refusal = ctx.admit(self) or ctx.guard.admit_unauthenticated(self)
        if refusal:
            if not self.outgoing:
                # Instead of our line: the Yoton client reports a failed handshake.
                self.transport.write(f"ERROR: {refusal}\r\n".encode("utf-8", "replace"))
            self.fail(refusal)
            return
        if not self.outgoing:
            self.transport.write(self._hello_line())
        self._handlers, self._on_frames = ctx.dispatch_for(self)
        self._up()
        ctx.guard.link_up(self)
        # The virtual node's record first, so that its link is confirmed from both ends
        # as soon as the context lists it.
        self._announce(self.slots.interests(), {ctx.node_id: 1})
        ctx.link_up(self)
        self._hold_state()
        # As a Yoton client does after connecting: every Yoton context that hears this
        # re-sends its state channels' values, which the mesh then learns.
        self._write(
            ywire.encode_package(ywire.SLOT_CONTEXT, b"NEW_CONNECTION", ctx.node_id, self._seq())
        )
        d, self.handshake_done = self.handshake_done, None
        if d is not None:
            d.callback(self)

    def _announce(self, interests: dict, links: dict[int, int]) -> None:
        """Flood the virtual node's record (a newer version each time)."""
        self._record_version += 1
        state = NodeState(self.peer_id, self.peer_name, self._record_version, links, interests)
        self._topology.speak_for(state, self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        was = self.status
        super().connectionLost(reason)
        self._outgoing.clear()
        self._release_state()
        if was is not HANDSHAKING and self.context.accepting() is None \
                and self._topology.peers.get(self.peer_id) is None:
            # Nothing routes to the virtual node any more: say so at once instead of
            # leaving its interests to age out.
            self._announce({}, {})

    def _stop_timers(self) -> None:
        super()._stop_timers()
        if self._grant_call is not None and self._grant_call.active():
            self._grant_call.cancel()
        self._grant_call = None

    def fail(self, reason: str, fatal: bool = True, abort: bool = False) -> None:
        # The reason may quote the peer (a refused handshake line, a bad package).
        super().fail(printable(reason, 1000), fatal, abort)

    def _error_bytes(self, reason: str) -> bytes | None:
        return ywire.CLOSE if self.status is not HANDSHAKING else None

    def _close_bytes(self, reason: str) -> bytes | None:
        return ywire.CLOSE

    # --- heartbeat and timers

    def _heartbeat_interval(self) -> float:
        return HEARTBEAT

    def _keepalive(self) -> None:
        if not self._wrote:
            self.transport.write(ywire.HEARTBEAT)
        self._wrote = False

    def _tick(self, now: float) -> None:
        """Repeat pre-requests and "full", lapse stale holds, and give the state to
        holders that appeared."""
        for rid, item in list(self._outgoing.items()):
            if now >= item.deadline:
                del self._outgoing[rid]
                self._send_pre_request(item, rid, b"req-")
            elif not item.replier and now >= item.next_ask:
                item.next_ask = now + PRE_REQUEST_REPEAT
                self._send_pre_request(item, rid, b"req?")
        for channel, since in list(self._told_full.items()):
            if now - since >= FULL_REPEAT:
                self._told_full[channel] = now
                self._flow_message(channel, b"full")
        for channel, sources in list(self._full_from.items()):
            for source, lapse in list(sources.items()):
                if now >= lapse:
                    del sources[source]
            if not sources:
                del self._full_from[channel]
                self._schedule_grant()

    # --- writing Yoton packages

    def _seq(self) -> int:
        self._out_seq += 1
        return self._out_seq

    def _write(self, data: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(data)
        self._wrote = True
        self.transport.write(data)

    def _package(
        self, slot: int, data: bytes, source: int, dest: int = 0, dest_seq: int = 0
    ) -> bytes:
        self.counters["packages_out"] += 1
        return ywire.encode_package(slot, data, source, self._seq(), dest, dest_seq)

    def send(self, data: bytes) -> None:
        """Frames from the node: translate each into Yoton packages (or act on it)."""
        if self.closing or self.transport is None:
            return
        try:
            frames = self._sent.feed(data)
        except ProtocolError as e:  # our own context's bytes: a bug, not the peer's fault
            log.error("Yoton link could not read a frame sent to it: {e}", e=e)
            self._sent = wire.FrameDecoder(wire.MAX_U64, expect_preamble=False)
            return
        out: list[bytes] = []
        for frame in frames:
            kind = frame[0]
            if kind == _DATA:
                self._data_to_yoton(frame, out)
            elif kind == _CREDIT:
                self._credit_in(frame[3], frame[6])
            elif kind == _REQUEST:
                self._request_to_yoton(frame, out)
            elif kind == _REPLY:
                self._reply_to_yoton(frame, out)
            elif kind == _ACK and frame[2] & wire.ACK_START:
                self._no_start_known(frame)
            # ACK otherwise: a Yoton context keeps nothing to send again (its subscribers
            # are told of gaps after repair_wait, see yotonnet.core.repair).
            # STATE: the node's state store tells this link's holders (YotonStateHolder).
            # CONTROL (records), PING/PONG, CLOSE, ERROR: nothing for a Yoton context.
        if out:
            self._write(b"".join(out) if len(out) > 1 else out[0])

    # --- pub/sub

    def _no_start_known(self, ack: wire.Frame) -> None:
        """A subscriber asks where the Yoton side's stream starts: nobody knows (Yoton
        numbers nothing per subscriber), so it starts at the first message it got."""
        handler = self._handlers.get(_TAIL)
        if handler is None:
            return
        data = wire.tail_frame(self._hops(), wire.TAIL_START, ack[3], self.peer_id, ack[4],
                               0, 0, 0, 0)
        handler(self, wire.Frame(_TAIL, self._hops(), wire.TAIL_START, ack[3], self.peer_id,
                                 ack[4], 0, data[HEADER_SIZE:], b""))

    def _data_to_yoton(self, frame: wire.Frame, out: list[bytes]) -> None:
        channel = frame[3]
        self._owe(channel, HEADER_SIZE + len(frame[8]) + len(frame[7]))
        carried = self.slots.by_channel.get(channel)
        if carried is None or carried.pattern != "pubsub" or frame[2] != carried.tag:
            self.counters["untranslatable"] += 1
            return
        try:
            payload = carried.to_yoton(frame[7])
        except (DecodeError, MessageTypeError):
            self.counters["untranslatable"] += 1
            return
        out.append(self._package(carried.slots[PUB], payload, frame[4]))

    def _owe(self, channel: int, size: int) -> None:
        """``size`` bytes of ``channel`` are written: credit them (unless held)."""
        self._owed[channel] = self._owed.get(channel, 0) + size
        if channel not in self._full_from:
            self._schedule_grant()

    def _schedule_grant(self) -> None:
        if self._grant_call is None and not self.closing:
            # Credited after this turn, in one CREDIT per channel rather than per frame.
            self._grant_call = self.clock.callLater(0, self._grant)

    def _grant(self) -> None:
        self._grant_call = None
        if self.closing:
            return
        ctx = self.context
        for channel in list(self._owed):
            if channel in self._full_from:
                continue
            amount = self._owed.pop(channel)
            if amount > 0:
                ctx.node.pubsub.on_credit(
                    self,
                    wire.Frame(_CREDIT, 1, 0, channel, self.peer_id, ctx.node_id, amount, b""),
                )

    def _credit_in(self, channel: int, amount: int) -> None:
        """The context released ``amount`` bytes this link injected on ``channel``."""
        left = self._unreleased.get(channel, 0) - amount
        self._unreleased[channel] = max(0, left)
        if channel in self._told_full and left < self.context.config.flow_window // 2:
            del self._told_full[channel]
            self._flow_message(channel, b"ok")

    def _flow_message(self, channel: int, word: bytes) -> None:
        """Tell the Yoton PubChannels of ``channel`` to block (``full``) or go on (``ok``)."""
        carried = self.slots.by_channel.get(channel)
        if carried is None or self.closing:
            return
        if word == b"full":
            self.counters["full_out"] += 1
        self._write(self._package(carried.slots[FLOW], word, self.context.node_id))

    def _flow_from_yoton(self, carried: Carried, package: ywire.Package) -> None:
        """A Yoton SubChannel in sync mode says its queue is ``full`` or ``ok``."""
        channel = carried.channel
        if package.data == b"full":
            self.counters["full_in"] += 1
            sources = self._full_from.setdefault(channel, {})
            if len(sources) < MAX_FULL_SOURCES or package.source_id in sources:
                sources[package.source_id] = self.clock.seconds() + FULL_LAPSE
        elif package.data == b"ok":
            sources = self._full_from.get(channel)
            if sources is not None:
                sources.pop(package.source_id, None)
                if not sources:
                    del self._full_from[channel]
                    self._schedule_grant()

    # --- from Yoton to the mesh

    def _from_yoton(self, packages: list[ywire.Package]) -> None:
        frames: list[wire.Frame] = []
        by_slot = self.slots.by_slot
        for package in packages:
            slot = package.slot
            entry = by_slot.get(slot)
            if entry is None:
                if slot != ywire.SLOT_CONTEXT:
                    self.counters["unknown_slot"] += 1
                continue  # context messages need no answer from a bridge
            kind, carried = entry
            try:
                if kind == PUB:
                    self._pub_from_yoton(carried, package, frames)
                elif kind == FLOW:
                    self._flow_from_yoton(carried, package)
                elif kind == STATE_SLOT:
                    if frames:  # what came before the write goes first
                        self._dispatch_frames(frames)
                        frames = []
                    self._state_from_yoton(carried, package)
                elif kind == REQ:
                    self._req_from_yoton(carried, package, frames)
                elif kind == REPL:
                    self._rep_from_yoton(carried, package, frames)
            except (DecodeError, MessageTypeError, UnicodeDecodeError, ValueError) as e:
                # One bad payload costs its message, not the link.
                self.counters["untranslatable"] += 1
                log.info(
                    "Yoton link {link}: dropped a package on {name}: {e}",
                    link=self.describe(), name=printable(carried.name), e=printable(e, 1000),
                )
        if frames:
            self._dispatch_frames(frames)

    def _hops(self) -> int:
        # As if received: the node takes one hop off what it forwards.
        return min(wire.MAX_HOPS, self._topology.hop_limit() + 1)

    def _pub_from_yoton(self, carried: Carried, package: ywire.Package, frames: list) -> None:
        payload = carried.to_mesh(package.data)
        channel = carried.channel
        size = HEADER_SIZE + len(payload)
        unreleased = self._unreleased.get(channel, 0)
        cfg = self.context.config
        if unreleased > cfg.publish_backlog:
            self.counters["dropped_backlog"] += 1
            return
        unreleased += size
        self._unreleased[channel] = unreleased
        if unreleased > cfg.flow_window * 3 // 4 and channel not in self._told_full:
            self._told_full[channel] = self.clock.seconds()
            self._flow_message(channel, b"full")
        self._in_seq += 1
        frames.append(
            wire.Frame(_DATA, self._hops(), carried.tag, channel, self.peer_id, 0,
                       self._in_seq, payload, b"")
        )

    # --- state

    def _state_from_yoton(self, carried: Carried, package: ywire.Package) -> None:
        """A Yoton context set a state channel: a write by the virtual node."""
        payload = carried.to_mesh(package.data)
        try:
            self.context.node.state.set(carried.channel, carried.tag, payload,
                                        writer=self.peer_id)
        except YotonnetError as e:  # the channel's clock ran out
            raise ValueError(str(e)) from None

    def state_changed(self, carried: Carried, tag: int, payload: bytes) -> None:
        """The node holds a newer value of a state channel this link carries: give it to
        the Yoton side (Yoton has no versions: it only ever gets newer values)."""
        if self.closing or self.status is HANDSHAKING:
            return
        current = self.context.node.state.current(carried.channel)
        writer = current[0][1] if current is not None else self.context.node_id
        if writer == self.peer_id:
            return  # its own write, back from the store
        if tag != carried.tag:
            self.counters["untranslatable"] += 1
            return
        try:
            data = carried.to_yoton(payload)
        except (DecodeError, MessageTypeError):
            self.counters["untranslatable"] += 1
            return
        self._write(self._package(carried.slots[STATE_SLOT], data, writer))

    def _hold_state(self) -> None:
        """Hold each carried state channel in the node's state store, for the Yoton side;
        give it the value already held."""
        node = self.context.node
        for carried in self.slots.carried:
            if carried.pattern != "state":
                continue
            holder = YotonStateHolder(self, carried)
            try:
                node.register(STATE, carried.channel, holder)
            except MessageTypeError as e:
                self.counters["untranslatable"] += 1
                log.warn("Yoton link {link}: state channel {name} not carried: {e}",
                         link=self.describe(), name=printable(carried.name), e=str(e))
                continue
            self._holders.append(holder)
            current = node.state.current(carried.channel)
            if current is not None:
                self.state_changed(carried, current[1], current[2])

    def _release_state(self) -> None:
        holders, self._holders = self._holders, []
        for holder in holders:
            self.context.node.unregister(STATE, holder.channel_id, holder)

    # --- request/reply: Yoton requesters, mesh repliers

    def _req_from_yoton(self, carried: Carried, package: ywire.Package, frames: list) -> None:
        """A Yoton ReqChannel's package: a pre-request (``req?``/``req-``) or a request."""
        dest_seq = package.dest_seq
        if dest_seq > REQREP_SEQ_REF:
            if package.data != b"req?":
                return  # "req-": we hold nothing for a pre-request we answered
            replier = self._nearest_replier(carried.channel)
            if replier is not None:
                # Say "I will" in the name of the replier: the request comes back
                # addressed to it.
                self._write(
                    self._package(
                        carried.slots[REPL], b"req!", replier, package.source_id, dest_seq
                    )
                )
            return
        dest = package.dest_id
        if dest == 0 or dest == self.peer_id or self._topology.routing.distance(dest) is None:
            return  # between Yoton contexts behind the peer, or for a node gone since
        request = objects.decode(package.data)
        if not (
            isinstance(request, tuple | list)
            and len(request) == 3
            and isinstance(request[0], str)
            and isinstance(request[1], tuple | list)
            and isinstance(request[2], dict)
        ):
            raise DecodeError("a Yoton request is (method name, args, kwargs)")
        name, args, kwargs = request
        method = name.encode("utf-8")
        if kwargs:
            payload = encode_values((*args, kwargs))
            tag = len(args) | wire.REQUEST_KWARGS
        else:
            payload = encode_values(tuple(args))
            tag = len(args)
        if package.source_id != self.peer_id:
            self._remember_requester(carried.channel, dest_seq, package.source_id)
        frames.append(
            wire.Frame(_REQUEST, self._hops(), tag, carried.channel, self.peer_id, dest,
                       dest_seq, payload, method)
        )

    def _remember_requester(self, channel: int, req_id: int, requester: int) -> None:
        requesters = self._requesters
        requesters[(channel, req_id)] = requester
        while len(requesters) > MAX_PENDING:
            requesters.popitem(last=False)

    def _nearest_replier(self, channel: int) -> int | None:
        for node in self._topology.routing.holders(channel, REP):
            if node != self.peer_id:
                return node
        return None

    def _reply_to_yoton(self, frame: wire.Frame, out: list[bytes]) -> None:
        _, _, status, channel, source, dest, req_id, payload, _ = frame
        carried = self.slots.by_channel.get(channel)
        if carried is None or dest != self.peer_id:
            return
        requester = self._requesters.pop((channel, req_id), self.peer_id)
        try:
            if status == wire.REPLY_OK:
                data = objects.encode(decode_object(payload))
            elif status == wire.REPLY_ERROR:
                remote_type, message, traceback = decode_object(payload)
                text = f"{remote_type}: {message}"
                if traceback:
                    text += "\n" + traceback
                data = objects.encode((ERROR_OBJECT, text))
            else:
                data = objects.encode(
                    (ERROR_OBJECT, "NoResponders: " + payload.decode("utf-8", "replace"))
                )
        except (DecodeError, MessageTypeError, ValueError, TypeError) as e:
            data = objects.encode((ERROR_OBJECT, f"reply not expressible in Yoton OBJECT: {e}"))
        out.append(self._package(carried.slots[REPL], data, source, requester, req_id))

    # --- request/reply: mesh requesters, Yoton repliers

    def _request_to_yoton(self, frame: wire.Frame, out: list[bytes]) -> None:
        _, _, tag, channel, source, dest, req_id, payload, method = frame
        carried = self.slots.by_channel.get(channel)
        if dest != self.peer_id:
            return
        if carried is None or carried.pattern != "reqrep":
            self._reply_error(channel, source, req_id, "channel not carried to this Yoton peer")
            return
        try:
            name = method.decode("utf-8")
            if tag & wire.REQUEST_KWARGS:
                args = decode_values(payload, (tag & wire.REQUEST_MAX_ARGS) + 1)
                kwargs = args.pop()
            else:
                args = decode_values(payload, tag)
                kwargs = {}
            request = objects.encode((name, tuple(args), kwargs))
        except (DecodeError, MessageTypeError, UnicodeDecodeError) as e:
            self._reply_error(channel, source, req_id, f"request not expressible for Yoton: {e}")
            return
        if len(self._outgoing) >= MAX_PENDING:
            self._reply_error(channel, source, req_id, "too many requests waiting for Yoton")
            return
        self._next_request += 1
        rid = self._next_request
        now = self.clock.seconds()
        timeout = self.context.config.request_timeout
        item = _Outgoing(carried, source, req_id, request, now + timeout, now + PRE_REQUEST_REPEAT)
        self._outgoing[rid] = item
        out.append(
            self._package(carried.slots[REQ], b"req?", source, 0, rid + REQREP_SEQ_REF)
        )

    def _send_pre_request(self, item: _Outgoing, rid: int, word: bytes) -> None:
        if not self.closing:
            self._write(
                self._package(item.carried.slots[REQ], word, item.source, 0, rid + REQREP_SEQ_REF)
            )

    def _rep_from_yoton(self, carried: Carried, package: ywire.Package, frames: list) -> None:
        """A Yoton RepChannel's package: ``req!`` to a pre-request, or a reply."""
        dest_seq = package.dest_seq
        if dest_seq > REQREP_SEQ_REF:
            rid = dest_seq - REQREP_SEQ_REF
            item = self._outgoing.get(rid)
            if item is None or item.replier or package.data != b"req!":
                return
            item.replier = package.source_id
            self._write(
                self._package(
                    carried.slots[REQ], item.request, item.source, package.source_id, rid
                )
                + self._package(carried.slots[REQ], b"req-", item.source, 0, dest_seq)
            )
            return
        item = self._outgoing.get(dest_seq)
        if item is None or package.source_id != item.replier:
            return
        del self._outgoing[dest_seq]
        reply = objects.decode(package.data)
        if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == ERROR_OBJECT:
            text = str(reply[1])
            message, _, where = text.partition("\n")
            status = wire.REPLY_ERROR
            body = encode_object(["YotonError", message, where])
        else:
            status = wire.REPLY_OK
            body = encode_object(reply)
        frames.append(self._reply_frame(carried.channel, item.source, item.req_id, status, body))

    def _reply_frame(
        self, channel: int, dest: int, req_id: int, status: int, body: bytes
    ) -> wire.Frame:
        return wire.Frame(_REPLY, self._hops(), status, channel, self.peer_id, dest, req_id,
                          body, b"")

    def _reply_error(self, channel: int, dest: int, req_id: int, text: str) -> None:
        """Fail a request from the mesh at once (dispatched after the current send)."""
        frame = self._reply_frame(
            channel, dest, req_id, wire.REPLY_ERROR,
            encode_object(["YotonBridgeError", text, ""]),
        )
        self.clock.callLater(0, lambda: None if self.closing else self._dispatch_frames([frame]))

    # --- introspection

    def info(self) -> dict:
        info = super().info()
        info["protocol"] = "yoton"
        info["yoton_pid"] = self.yoton_pid
        info["yoton"] = dict(self.counters)
        return info


@implementer(IStateEnd)
class YotonStateHolder:
    """A Yoton context's hold on a state channel, as a local holder of the node's state
    store: the store orders writes, keeps the value and tells late joiners, as for any
    holder; this end passes each newer value to the Yoton side."""

    pattern = "state"

    def __init__(self, link: YotonLink, carried: Carried) -> None:
        self.link = link
        self.carried = carried
        self.channel_id = carried.channel
        self.name = carried.name
        self.message_type = message_type(carried.type_name)

    def changed(self, tag: int, payload: bytes) -> None:
        self.link.state_changed(self.carried, tag, payload)


class YotonLinkFactory(Factory):
    """Builds :class:`YotonLink` protocols for a bridge's channels."""

    def __init__(
        self,
        context: ILinkOwner,
        slots: SlotMap,
        outgoing: bool,
        endpoint_text: str = "",
        on_link: Callable[[YotonLink], None] | None = None,
    ) -> None:
        self.context = context
        self.slots = slots
        self.outgoing = outgoing
        self.endpoint_text = endpoint_text
        self.on_link = on_link

    def buildProtocol(self, addr: Any) -> YotonLink | None:
        ctx = self.context
        guard = ctx.guard
        if not self.outgoing:
            refusal = ctx.accepting() or guard.refuse_connection()
            if refusal:
                log.warn("refusing Yoton connection from {addr}: {why}", addr=addr, why=refusal)
                return None
        link = YotonLink(ctx, self.outgoing, self.endpoint_text, self.slots)
        link.factory = self
        if not self.outgoing:
            link.counted = True  # released when it is up or gone, as LinkFactory's links
            guard.handshaking += 1
        if self.on_link is not None:
            self.on_link(link)
        return link


__all__ = ["YotonLink", "YotonLinkFactory", "HandshakeError", "HEARTBEAT"]
