"""The context: one node of the mesh.

A :class:`Context` owns its links (incoming and outgoing), its local channels
and a :class:`~yotonnet.core.routing.RoutingTable`. It floods its own node record
when its links or interests change, asks the routing table where each frame
goes, and caches those answers so the per-message path is a dict lookup and a
write per target. It never decodes a payload it only forwards.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import errors
from ..core import stateclock, wire
from ..core.calls import Call, CallTable
from ..core.costs import check_cost, split_cost
from ..core.flow import DEFAULT_WINDOW, CreditError, Hold
from ..core.messages import decode_object, encode_object
from ..core.routing import (
    DEFAULT_MAX_NODES,
    DEFAULT_MAX_NODES_PER_PEER,
    DEFAULT_MAX_RECORD_INTERESTS,
    DEFAULT_MAX_RECORD_LINKS,
    DEFAULT_MAX_ROUTING_ENTRIES,
    REP,
    STATE,
    SUB,
    Interest,
    NodeState,
    RecordRefused,
    RoutingLimits,
    RoutingTable,
)
from ..core.wire import (
    HEADER,
    HEADER_SIZE,
    HEADER_TAIL,
    REPLY_DENIED,
    REPLY_ERROR,
    REPLY_NO_REPLIER,
    REPLY_OK,
    FrameKind,
    Run,
)
from ..security.guard import Guard
from ..security.settings import Security, SecurityError
from .link import BUSY, CLOSED, UP, HandshakeError, Link, LinkFactory

if TYPE_CHECKING:
    from ..channels.pubsub import PubChannel, SubChannel
    from ..channels.reqrep import RepChannel
    from ..channels.state import StateChannel

log = Logger(namespace="yotonnet.context")

_STATE_VERSION = stateclock.VERSION
BUSY_LINK_COST = 1000
_DATA = int(FrameKind.DATA)
_LATEST = int(FrameKind.LATEST)
_REQUEST = int(FrameKind.REQUEST)
_REPLY = int(FrameKind.REPLY)
_STATE = int(FrameKind.STATE)
_CREDIT = int(FrameKind.CREDIT)
#: hops a frame may take beyond the longest shortest path (routes may still be settling)
HOP_MARGIN = 4
#: the most credit one CREDIT frame may grant (a sanity bound on a peer's claim)
MAX_CREDIT = 1 << 40
_NEVER = float("inf")


@dataclass
class ContextConfig:
    """Tunables of a context; every time is in seconds."""

    max_frame: int = wire.DEFAULT_MAX_FRAME
    heartbeat: float = 1.0
    busy_timeout: float = 5.0
    #: close a link whose peer stays silent this long (0: never; busy is reported meanwhile)
    dead_timeout: float = 0.0
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 10.0
    #: cap on the hop limit a frame starts with; below it, each frame gets the length of
    #: this node's longest shortest path plus a margin, so a loop while routes converge dies
    #: out within a few hops however large the mesh
    max_hops: int = wire.MAX_HOPS
    #: forget a node's record after it has been unreachable this long
    stale_after: float = 60.0
    #: bytes per channel a neighbour may send this node before it releases them
    flow_window: int = DEFAULT_WINDOW
    #: bytes a publisher may queue past its window before send() raises FlowControlError
    publish_backlog: int = 4 << 20
    #: write small frames to a TCP socket at once when Twisted has nothing buffered for
    #: it, instead of in the next reactor turn (see Link._write_now); off: Twisted's path
    eager_writes: bool = True
    #: bytes a link may still write (replies, control frames) while its peer reads nothing
    #: before it is cut as a slow consumer (flow-controlled data waits instead)
    max_link_buffer: int = 32 << 20
    #: CONTROL frames (routing records, identities, claims) larger than this many bytes
    #: are a protocol error that closes the link, refused before they are decoded
    max_control_frame: int = wire.DEFAULT_MAX_CONTROL_FRAME
    #: Limits on routing records from neighbours (see yotonnet.routing.RoutingLimits); a
    #: record past one is dropped, logged once per neighbour and limit, and counted in
    #: counters["records_refused"]. Nodes the routing table holds:
    max_nodes: int = DEFAULT_MAX_NODES
    #: nodes one neighbour may introduce; 0: as many as max_nodes (a leaf, such as any
    #: client of a hub, learns the whole mesh from its one neighbour)
    max_nodes_per_peer: int = DEFAULT_MAX_NODES_PER_PEER
    #: links one node record may list
    max_record_links: int = DEFAULT_MAX_RECORD_LINKS
    #: channel interests one node record may list
    max_record_interests: int = DEFAULT_MAX_RECORD_INTERESTS
    #: links plus interests over every record the routing table holds
    max_routing_entries: int = DEFAULT_MAX_ROUTING_ENTRIES

    def routing_limits(self) -> RoutingLimits:
        """The routing record limits these settings give."""
        return RoutingLimits(
            max_nodes=self.max_nodes,
            max_nodes_per_peer=self.max_nodes_per_peer,
            max_record_links=self.max_record_links,
            max_record_interests=self.max_record_interests,
            max_routing_entries=self.max_routing_entries,
        )


class LinkEvent(NamedTuple):
    peer_name: str
    peer_id: int
    status: str
    reason: str | None
    link: Link


def _endpoint_cost(endpoint: str, cost: int | None) -> tuple[str, int]:
    """The endpoint without a ``cost=`` option, and the link cost (1 unless given)."""
    text, written = split_cost(endpoint)
    if cost is not None:
        if written is not None and written != cost:
            raise ValueError(f"endpoint {endpoint!r} says cost={written} but cost={cost} is given")
    return text, cost if cost is not None else written if written is not None else 1


class Dialer:
    """An outgoing link that reconnects with exponential backoff and jitter.

    Inspect ``attempts``, ``last_delay`` and ``link``; ``stop()`` ends it.
    """

    #: what info() calls the link's protocol
    protocol = "yotonnet"

    def __init__(
        self,
        context: Context,
        endpoint_text: str,
        cost: int = 1,
        *,
        factory: Any = None,
        endpoint: Any = None,
    ) -> None:
        """``factory`` and ``endpoint`` default to yotonnet links through the context's
        guard (TLS, credentials); a foreign protocol (e.g. Yoton's) passes its own."""
        self.endpoint_text = endpoint_text
        self.attempts = 0
        self.last_delay = 0.0
        self.link: Link | None = None
        self.stopped = False
        self.last_error: str | None = None
        cfg = context.config
        policy = backoffPolicy(cfg.reconnect_initial, cfg.reconnect_max, 2.0, random.random)

        self.handshake_failures = 0

        def retry_policy(failures: int) -> float:
            # ClientService resets its count when TCP connects; failed handshakes count too.
            failures = max(failures, self.handshake_failures)
            self.attempts = failures
            self.last_delay = policy(failures)
            return self.last_delay

        if endpoint is None:
            endpoint = context.guard.client_endpoint(endpoint_text)
        if factory is None:
            factory = LinkFactory(context, outgoing=True, endpoint_text=endpoint_text, cost=cost)
        self.service = ClientService(
            endpoint,
            factory,
            retryPolicy=retry_policy,
            clock=context.reactor,
            prepareConnection=self._prepare,
        )

        #: fires with the first link up, or fails on a refusal that retrying cannot fix
        self.first: defer.Deferred[Link] = defer.Deferred()

    def _prepare(self, link: Link) -> None:
        # Not returned to ClientService: a handshake failing means the connection is lost,
        # and ClientService has no transition for a loss while prepareConnection is pending.
        d = link.handshake_done
        assert d is not None

        def up(link: Link) -> None:
            self.link = link
            self.last_error = None
            self.handshake_failures = 0
            if not self.first.called:
                self.first.callback(link)

        def failed(failure: Any) -> None:
            self.last_error = failure.getErrorMessage()
            self.handshake_failures += 1
            if failure.check(HandshakeError) and failure.value.fatal and not self.first.called:
                self.stop()
                self.first.errback(failure)

        d.addCallbacks(up, failed)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        if not self.service.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self.service.stopService)

    def info(self) -> dict:
        return {
            "endpoint": self.endpoint_text,
            "protocol": self.protocol,
            "connected": self.link is not None and self.link.status in (UP, BUSY),
            "attempts": self.attempts,
            "last_delay": self.last_delay,
            "last_error": self.last_error,
            "stopped": self.stopped,
        }


class Context:
    """A node: hosts channels and links to other nodes."""

    def __init__(
        self,
        name: str | None = None,
        reactor: Any = None,
        *,
        config: ContextConfig | None = None,
        node_id: int | None = None,
        security: Security | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not IReactorTime.providedBy(reactor):
            raise TypeError("reactor must provide IReactorTime")
        self.reactor = reactor
        self.config = config or ContextConfig()
        self.node_id = node_id or random.getrandbits(64) or 1
        self.name = name or f"{socket.gethostname()}-{id(self) & 0xFFFF:04x}"
        self.capabilities: tuple[str, ...] = ("routing-1", "state-1", "reqrep-1")
        self.routing = RoutingTable(self.node_id, self.name, self.config.routing_limits())
        # Records received in the current dispatch changed the routing table: act on it
        # once when the dispatch ends (_settle_routing), not once per record.
        self._routing_pending = False
        # routing.losses when pending requests were last checked for lost repliers
        self._losses_seen = 0
        # (neighbour, limit) pairs whose refused records were logged (then only counted)
        self._refusals_told: set[tuple[int, str]] = set()
        # the limit this node's own record breaks, once told (None: it is within them)
        self._own_record_problem: str | None = None
        self.links: dict[int, Link] = {}
        self.dialers: list[Dialer] = []
        self.ports: list[Any] = []
        self.closed = False
        self._subs: dict[int, list[SubChannel]] = {}
        self._pubs: dict[int, list[PubChannel]] = {}
        # locally published channels that some target cannot take more of right now
        self._not_ready: set[int] = set()
        self._reps: dict[int, list[RepChannel]] = {}
        self._states: dict[int, list[StateChannel]] = {}
        self._channel_types: dict[int, str] = {}
        # Sequence numbers start from the wall clock in ns, so a node restarted with a
        # fixed id continues above what subscribers last saw from it.
        self._seq_base = time.time_ns()
        self._seq: dict[int, int] = {}
        self._fanout: dict[tuple[int, int], list[Link]] = {}
        # latest-flow ids known to have no subscriber anywhere; cleared with _fanout
        self._latest_idle: set[int] = set()
        # channel -> reachable repliers, nearest first; cleared with _fanout
        self._rep_holders: dict[int, list[int]] = {}
        # destination node -> link of the first hop; cleared with _fanout
        self._hop_links: dict[int, Link] = {}
        # the hop limit new frames start with (0: work it out again, see _hop_limit)
        self._hops = 0
        self._calls = CallTable()
        # one timer for every request's deadline (see yotonnet.calls)
        self._deadline_timer: Any = None
        self._deadline_at = _NEVER  # when that timer fires
        # per state channel: the highest clock of any version seen here (each channel
        # has its own Lamport clock: a write on one cannot disturb the others)
        self._state_clocks: dict[int, int] = {}
        self._state_values: dict[int, tuple[tuple[int, int], int, bytes]] = {}
        self._state_losses_seen = 0  # routing.losses when state holders were last told
        self._state_told: dict[int, set[int]] = {}
        self._watchers: list[Callable[[LinkEvent], None]] = []
        self._interest_waiters: list[tuple[int, str, int, defer.Deferred]] = []
        self.counters = {
            "forwarded": 0,
            "no_route": 0,
            "hop_limit": 0,
            "control_in": 0,
            "control_out": 0,
            # routing records a limit refused (yotonnet.routing.RoutingLimits)
            "records_refused": 0,
            # times the context acted on routing changes (records are batched per dispatch)
            "routing_changes": 0,
            "credit_in": 0,
            "credit_out": 0,
            "flow_queued": 0,
            "flow_dropped": 0,
            "producer_pauses": 0,
            "latest_dropped": 0,
            "replies_dropped": 0,
            "slow_consumers": 0,
        }
        # Set while a link dispatches frames; links that queued sends meanwhile.
        self._dispatching = False
        self._turn = 0  # counts dispatches, so a link can tell its first send in one
        self._dirty: list[Link] = []
        self._housekeeping = LoopingCall(self._expire_records)
        self._housekeeping.clock = reactor
        # Dispatch table handed to every link: frame kind -> handler(link, frame).
        self._frame_handlers: dict[int, Callable[[Link, wire.Frame], None]] = {
            FrameKind.DATA: self._on_data,
            FrameKind.REQUEST: self._on_request,
            FrameKind.REPLY: self._on_reply,
            FrameKind.STATE: self._on_state,
            FrameKind.CONTROL: self._on_control,
            FrameKind.CREDIT: self._on_credit,
            FrameKind.LATEST: self._on_latest,
        }
        #: node id of the caller whose request a RepChannel handler is running for
        self.current_caller = 0
        #: TLS, authentication, authorization, identities and limits (yotonnet.guard)
        self.security = security if security is not None else Security()
        self.guard = Guard(self, self.security)

    def __repr__(self) -> str:
        return f"<Context {self.name} {self.node_id:016x}>"

    # --- public API

    def listen(self, endpoint: str, *, cost: int | None = None) -> defer.Deferred[Any]:
        """Accept any number of peers on a Twisted server endpoint string.

        ``cost`` is the routing cost of the links accepted here (see :meth:`connect`).
        """
        self._check_open()
        if cost is not None:
            check_cost(cost)  # a wrong argument is the caller's bug: raised at once
        try:
            endpoint, cost = _endpoint_cost(endpoint, cost)
            ep = self.guard.server_endpoint(endpoint)
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad listen endpoint {endpoint!r}: {e}"))
        try:
            self.guard.prepare_listener()
        except SecurityError as e:
            return defer.fail(e)
        d = ep.listen(LinkFactory(self, outgoing=False, endpoint_text=endpoint, cost=cost))

        def listening(port: Any) -> Any:
            self.ports.append(port)
            log.info("{node} listening on {where}", node=self.name, where=_port_text(port))
            self.guard.listening(_port_text(port))
            return port

        return d.addCallback(listening)

    def connect(self, endpoint: str, *, cost: int | None = None) -> defer.Deferred[Link]:
        """Dial a peer; the Deferred fires with the link once the handshake is done.

        The link reconnects by itself with exponential backoff until the
        context closes. A handshake the peer refuses outright (wrong protocol,
        version, credentials) fails the Deferred and stops dialling.

        ``cost`` (1 to 255) weighs the link in path choice: traffic takes the
        path of least total cost, so a slow or metered link can be given, say,
        10 to be used only when nothing cheaper connects. Each end may set a
        cost; the mesh uses the higher. The endpoint string may carry it
        instead, as an option: ``tcp:host:7117:cost=10`` (default 1).
        """
        self._check_open()
        if cost is not None:
            check_cost(cost)  # a wrong argument is the caller's bug: raised at once
        try:
            endpoint, cost = _endpoint_cost(endpoint, cost)
            dialer = Dialer(self, endpoint, cost)
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad connect endpoint {endpoint!r}: {e}"))
        self.dialers.append(dialer)
        dialer.start()
        return dialer.first

    def close(self) -> defer.Deferred[None]:
        """Stop dialling and listening, close every link, fail pending requests."""
        if self.closed:
            return defer.succeed(None)
        self.closed = True
        if self._housekeeping.running:
            self._housekeeping.stop()
        waits: list[defer.Deferred] = [d.stop() for d in self.dialers]
        waits += [defer.maybeDeferred(p.stopListening) for p in self.ports]
        for link in list(self.links.values()):
            link.close("context closed")
        for call in self._calls:
            self._finish_request(call.req_id, errors.ConnectionLost("context closed"))
        if self._deadline_timer is not None and self._deadline_timer.active():
            self._deadline_timer.cancel()
        self._deadline_timer = None
        self._deadline_at = _NEVER
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def queued(self, channel: int | None = None) -> int:
        """Bytes of pub/sub data waiting for flow-control credit on any link (of one
        channel id, or of all)."""
        total = 0
        for link in self.links.values():
            flow = link.flow
            if channel is None:
                total += sum(box.queued for box in flow.outboxes.values())
            else:
                total += flow.queued(channel)
        return total

    def flushed(self, timeout: float, channel: int | None = None) -> defer.Deferred[bool]:
        """Fire True once nothing waits for credit (see :meth:`queued`), or False when
        ``timeout`` seconds pass first or the context closes."""
        reactor = self.reactor
        deadline = reactor.seconds() + max(0.0, timeout)
        d: defer.Deferred[bool] = defer.Deferred()

        def check() -> None:
            if not self.queued(channel):
                d.callback(True)
            elif self.closed or reactor.seconds() >= deadline:
                d.callback(False)
            else:
                reactor.callLater(0.01, check)  # credit comes back in its own time

        check()
        return d

    def watch_links(self, callback: Callable[[LinkEvent], None]) -> Callable[[], None]:
        """Call ``callback(LinkEvent)`` on every link status change; returns an unwatch function."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def topology(self) -> dict:
        """Nodes, links, routes and channels as plain data."""
        snap = self.routing.snapshot()
        snap["name"] = self.name
        snap["links"] = [link.info() for link in self.links.values()]
        snap["dialers"] = [d.info() for d in self.dialers]
        snap["channels"] = {
            f"{chan:016x}": {
                "name": chans[0].name,
                "pattern": chans[0].pattern,
                "local": len(chans),
            }
            for table in (self._subs, self._reps, self._states)
            for chan, chans in table.items()
            if chans
        }
        snap["counters"] = dict(self.counters)
        return snap

    def wait_for_interest(
        self, channel: int | tuple[int, ...], role: str, count: int = 1
    ) -> defer.Deferred[None]:
        """Fire once ``count`` ``role`` holders of ``channel`` are reachable."""
        d: defer.Deferred[None] = defer.Deferred()
        self._interest_waiters.append((channel, role, count, d))
        self._check_interest_waiters()
        return d

    def interest_count(self, channel: int | tuple[int, ...], role: str) -> int:
        """Reachable ``role`` holders of ``channel`` (or of several channel ids, summed)."""
        total = 0
        for chan in channel if isinstance(channel, tuple) else (channel,):
            for node_id in self.routing.holders(chan, role):
                interest = self.routing.interest_of(node_id, chan)
                if interest is not None:
                    total += interest.count
        return total

    # --- links

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("context is closed")

    def _refuse_incoming(self) -> str | None:
        if self.closed:
            return "context is closed"
        return None

    def _admit(self, link: Link) -> str | None:
        """Decide whether a link that finished its handshake may join."""
        if self.closed:
            return "context is closed"
        existing = self.links.get(link.peer_id)
        if existing is not None and existing is not link and existing.status != CLOSED:
            if existing.status is BUSY:
                # The peer is evidently alive on the new link: the silent one is stale.
                existing.close("replaced by a newer link from the same node")
                return None
            return f"already linked to node {link.peer_name} ({link.peer_id:016x})"
        return None

    def _link_up(self, link: Link) -> None:
        self.links[link.peer_id] = link
        self._forget_paths()  # a replaced link may leave the routes unchanged
        if self._refusals_told:
            # A new link of this peer: tell again if its records are still refused.
            self._refusals_told = {k for k in self._refusals_told if k[0] != link.peer_id}
        log.info("{node}: link up to {peer}", node=self.name, peer=link.describe())
        # Our own record first, listing the new link. Sent in the re-sync in the version
        # written when the previous link went down, it would tell the neighbour for a
        # moment that we are cut off from it, failing whatever it had just asked us.
        flooded = self._update_local(links=self._link_costs())
        # Full re-sync: the new neighbour gets every record we hold.
        for state in list(self.routing.nodes.values()):
            if flooded and state.node_id == self.node_id:
                continue  # just sent
            link.send(_control_frame(["node", state.to_wire()]))
            self.counters["control_out"] += 1
        if not self._housekeeping.running:
            self._housekeeping.start(self.config.heartbeat, now=False)
        self._emit_link_event(link, UP, None)

    def _link_down(self, link: Link) -> None:
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            self._forget_paths()
            log.info(
                "{node}: link down to {peer}: {reason}",
                node=self.name,
                peer=link.describe(),
                reason=link.reason,
            )
            self._drop_flow(link)
            if not self.closed:
                self._update_local(links=self._link_costs())

    def _link_costs(self) -> dict[int, int]:
        # A busy link stays usable, but any live detour is preferred to it.
        return {
            peer: BUSY_LINK_COST if link.status is BUSY else link.cost
            for peer, link in self.links.items()
        }

    def _link_status_changed(self, link: Link, status: str, reason: str | None) -> None:
        if status is BUSY:
            # A silent peer returns no credit: what waits for it goes, so that the
            # publisher resumes (the subscribers behind it see the gap, counted).
            self._drop_flow(link)
        if self.links.get(link.peer_id) is link and not self.closed:
            self._update_local(links=self._link_costs())
        self._emit_link_event(link, status, reason)

    def _expire_records(self) -> None:
        if self.routing.expire(self.reactor.seconds(), self.config.stale_after):
            self._routing_changed()

    def _emit_link_event(self, link: Link, status: str, reason: str | None) -> None:
        event = LinkEvent(link.peer_name, link.peer_id, status, reason, link)
        for watcher in list(self._watchers):
            try:
                watcher(event)
            except Exception:  # noqa: BLE001 - one bad watcher must not break the link
                log.failure("link watcher failed")

    # --- routing

    def _update_local(
        self, links: dict[int, int] | None = None, interests: dict[int, Interest] | None = None
    ) -> bool:
        """Change this node's own record; True if it changed (and went to every neighbour)."""
        state = self.routing.set_local(links=links, interests=interests)
        if state is None:
            return False
        self._flood(state, exclude=None)
        self._routing_changed()
        return True

    def _flood(self, state: NodeState, exclude: Link | None) -> None:
        frame = _control_frame(["node", state.to_wire()])
        if state.node_id == self.node_id:
            self._check_own_record(state, len(frame))
        for link in self.links.values():
            if link is not exclude and link.status in (UP, BUSY):
                link.send(frame)
                self.counters["control_out"] += 1

    def _check_own_record(self, state: NodeState, size: int) -> None:
        """Warn (once, until it is fixed) when peers with this node's limits would refuse
        its own record: they would close the link, or not route to this node."""
        cfg = self.config
        if size > cfg.max_control_frame:
            limit, text = "max_control_frame", (
                f"its routing record is {size} bytes, more than max_control_frame "
                f"({cfg.max_control_frame}): peers with that limit close the link"
            )
        elif len(state.interests) > cfg.max_record_interests:
            limit, text = "max_record_interests", (
                f"its routing record lists {len(state.interests)} channel interests, more "
                f"than max_record_interests ({cfg.max_record_interests}): peers with that "
                "limit refuse it"
            )
        elif len(state.links) > cfg.max_record_links:
            limit, text = "max_record_links", (
                f"its routing record lists {len(state.links)} links, more than "
                f"max_record_links ({cfg.max_record_links}): peers with that limit refuse it"
            )
        else:
            self._own_record_problem = None
            return
        if limit != self._own_record_problem:
            self._own_record_problem = limit
            log.warn(
                "{node}: {text}; raise [context] {limit} on every node of the mesh, or "
                "open fewer channels or links on this one",
                node=self.name, text=text, limit=limit,
            )

    def _on_control(self, link: Link, frame: wire.Frame) -> None:
        self.counters["control_in"] += 1
        # Size and value count bounded before anything is built (see wire.decode_control).
        message = wire.decode_control(frame.payload, self.config.max_control_frame)
        if message[0] == "node":
            if len(message) < 2:
                raise wire.ProtocolError("malformed control message: a node message, no record")
            try:
                state = NodeState.from_wire(message[1])
            except ValueError as e:
                raise wire.ProtocolError(str(e)) from None
            try:
                news = self.routing.update(state, via=link.peer_id)
            except RecordRefused as refusal:
                self._record_refused(link, refusal)
                return
            if news:
                if state.node_id == self.node_id:
                    self._flood(self.routing.local, exclude=None)
                else:
                    self._flood(state, exclude=link)
                self._remote_routing_change()
        # Unknown control kinds are ignored, so newer nodes can add some.

    def _record_refused(self, link: Link, refusal: RecordRefused) -> None:
        """A limit refused a record from ``link``: count it, and log it the first time for
        this neighbour and limit (a flood of refusals must not flood the log too)."""
        self.counters["records_refused"] += 1
        key = (link.peer_id, refusal.limit)
        if key in self._refusals_told:
            return
        self._refusals_told.add(key)
        log.warn(
            "{node}: routing record from {peer} refused by limit {limit}: {why}. If the "
            "mesh is legitimately this large, raise [context] {limit} on this node; further "
            "records from this neighbour refused by this limit are only counted "
            "(counters: records_refused)",
            node=self.name, peer=link.describe(), limit=refusal.limit, why=str(refusal),
        )

    def _remote_routing_change(self) -> None:
        """A record from a neighbour changed the routing table.

        Cached paths are forgotten at once (frames later in the same dispatch
        are routed on the new picture, computed when first needed); the rest of
        :meth:`_routing_changed` (waiters, requests, state holders, paused
        publishers: each a look at the whole table) runs once for a run of
        consecutive control frames: the link calls :meth:`_settle_routing`
        before the next frame of another kind, or at the end of the dispatch.
        So a peer's call after its records still finds them acted on (clients
        use a call as a barrier), and a read of thousands of records costs one.
        """
        if self._dispatching:
            self._forget_paths()
            self._routing_pending = True
        else:
            self._routing_changed()

    def _settle_routing(self) -> None:
        """Called by a link when records changed the routing table during its dispatch:
        before the first frame of another kind after them, or at the end of the dispatch
        (before it writes what the dispatch queued)."""
        if not self._routing_pending:
            return
        try:
            self._routing_changed()
        except Exception:  # noqa: BLE001 - the dispatch must end cleanly whatever happens
            log.failure("{node}: acting on a routing change failed", node=self.name)

    def _forget_paths(self) -> None:
        self._hops = 0
        self._fanout.clear()
        self._latest_idle.clear()
        self._rep_holders.clear()
        self._hop_links.clear()

    def _hop_limit(self) -> int:
        hops = self._hops
        if not hops:
            hops = self._hops = max(
                1, min(self.config.max_hops, self.routing.max_hops() + HOP_MARGIN)
            )
        return hops

    def _routing_changed(self) -> None:
        self._routing_pending = False  # whatever records were waiting are covered now
        self.counters["routing_changes"] += 1
        self._forget_paths()
        for channel in list(self._not_ready):
            self._check_ready(channel)
        self._check_interest_waiters()
        if self.routing.losses != self._losses_seen:
            # Only a lost link or record can cut a request off from its replier, and the
            # check needs the routes: not worth a computation when the mesh only grew.
            self._losses_seen = self.routing.losses
            self._fail_unreachable_requests()
        self._push_state_to_new_holders()

    def _local_interests(self) -> dict[int, Interest]:
        interests: dict[int, Interest] = {}
        for role, table in ((SUB, self._subs), (REP, self._reps), (STATE, self._states)):
            for chan, chans in table.items():
                if chans:
                    interests[chan] = Interest(role, chans[0].message_type.name, len(chans))
        return interests

    def _targets(self, source: int, channel: int, role: str = SUB) -> list[Link]:
        key = (source, channel) if role is SUB else (source, ~channel)
        links = self._fanout.get(key)
        if links is None:
            links = []
            for peer in self.routing.multicast_targets(source, channel, role):
                link = self.links.get(peer)
                if link is not None:
                    links.append(link)
            self._fanout[key] = links
        return links

    def _flush_dirty(self) -> None:
        """A dispatch ended: write what links queued during it, a batch per link."""
        dirty, self._dirty = self._dirty, []
        for link in dirty:
            link._flush()

    def _unicast(self, dest: int, data: bytes) -> bool:
        link = self._hop_links.get(dest)
        if link is None:
            hop = self.routing.next_hop(dest)
            link = self.links.get(hop) if hop is not None else None
            if link is None:
                self.counters["no_route"] += 1
                return False
            self._hop_links[dest] = link
        link.send(data)
        return True

    def _check_interest_waiters(self) -> None:
        if not self._interest_waiters:
            return
        still = []
        for chan, role, count, d in self._interest_waiters:
            if d.called:
                continue
            if self.interest_count(chan, role) >= count:
                d.callback(None)
            else:
                still.append((chan, role, count, d))
        self._interest_waiters = still

    # --- channel registry (called by channels)

    def _register(self, table_name: str, channel: Any) -> None:
        self._latest_idle.clear()
        table = getattr(self, table_name)
        chan = channel.channel_id
        known = self._channel_types.get(chan)
        if known is not None and table.get(chan) and known != channel.message_type.name:
            raise errors.MessageTypeError(
                f"channel {channel.name!r} already has local {channel.pattern} ends of type "
                f"{known}; this one is {channel.message_type.name}"
            )
        self._channel_types[chan] = channel.message_type.name
        table.setdefault(chan, []).append(channel)
        self._update_local(interests=self._local_interests())

    def _unregister(self, table_name: str, channel: Any) -> None:
        self._latest_idle.clear()
        chans = getattr(self, table_name).get(channel.channel_id)
        if chans and channel in chans:
            chans.remove(channel)
            if not chans:
                del getattr(self, table_name)[channel.channel_id]
            if not self.closed:
                self._update_local(interests=self._local_interests())

    # --- pub/sub

    def _publish(self, channel: int, tag: int, payload: bytes) -> None:
        seq = self._seq.get(channel, self._seq_base) + 1
        self._seq[channel] = seq
        me = self.node_id
        links = self._fanout.get((me, channel))
        if links is None:
            links = self._targets(me, channel)
        if links:
            data = (
                HEADER.pack(
                    HEADER_TAIL + len(payload), _DATA, self._hops or self._hop_limit(), 0, tag,
                    channel, me, 0, seq,
                )
                + payload
            )
            size = len(data)
            for link in links:
                flow = link.flow
                if flow.take(channel, size):
                    link.send(data)
                    # Spent (a send may overdraw once): not writable until credit returns,
                    # so a producer pauses before anything has to wait in memory.
                    if flow.outboxes[channel].credit <= 0 and channel not in self._not_ready:
                        self._set_not_ready(channel)
                else:
                    self._hold_back(link, channel, data, size, None)
        subs = self._subs.get(channel)
        if subs:
            frame = wire.Frame(_DATA, 1, tag, channel, me, 0, seq, payload)
            hold = Hold(None, channel, HEADER_SIZE + len(payload), self._release_hold)
            window = self.config.flow_window
            for sub in subs:
                sub._deliver(frame, hold)
                if sub.backlog >= window and channel not in self._not_ready:
                    self._set_not_ready(channel)
            hold.unref()

    def _publish_latest(self, channel: int, tag: int, payload: bytes) -> None:
        """Publish on the ``latest`` flow ``channel`` if anyone listens to it.

        Apart from the lossless flow so that no lossless subscriber's backlog
        holds it back; never pauses the publisher: where credit runs out, newer
        frames push out older ones (see :meth:`_on_latest`).
        """
        me = self.node_id
        links = self._fanout.get((me, channel))
        if links is None:
            links = self._targets(me, channel)
        subs = self._subs.get(channel)
        if not links and not subs:
            self._latest_idle.add(channel)  # until routes or local channels change
            return
        seq = self._seq.get(channel, self._seq_base) + 1
        self._seq[channel] = seq
        if links:
            data = (
                HEADER.pack(
                    HEADER_TAIL + len(payload), _LATEST, self._hops or self._hop_limit(), 0,
                    tag, channel, me, 0, seq,
                )
                + payload
            )
            self._send_newest(links, channel, data)
        if subs:
            frame = wire.Frame(_LATEST, 1, tag, channel, me, 0, seq, payload)
            for sub in subs:
                sub._deliver(frame, None)

    def _send_newest(self, links: list[Link], channel: int, data: bytes) -> None:
        size = len(data)
        for link in links:
            flow = link.flow
            if flow.take(channel, size):
                link.send(data)
            elif link.status is not BUSY:
                dropped = flow.enqueue_newest(channel, data, size, flow.window)
                if dropped:
                    self.counters["latest_dropped"] += dropped

    def _on_latest(self, link: Link, frame: wire.Frame) -> None:
        """A frame of a ``latest`` flow: credited at once (latest subscribers keep only
        their newest messages, so nothing here holds it), forwarded, delivered."""
        channel = frame[3]
        self._credit(link, channel, HEADER_SIZE + len(frame[8]) + len(frame[7]))
        links = self._targets(frame[4], channel)
        if links:
            if frame.hops <= 1:
                self.counters["hop_limit"] += 1
            else:
                self.counters["forwarded"] += len(links)
                self._send_newest(links, channel, wire.reencode(frame, frame.hops - 1))
        subs = self._subs.get(channel)
        if subs:
            for sub in subs:
                sub._deliver(frame, None)

    def _on_data(self, link: Link, frame: wire.Frame) -> None:
        # Frames that did not come through a link's decoder (no offsets to forward from).
        self._on_data_run(link, [frame], 0, 1)

    def _on_data_run(self, link: Link, frames: list[wire.Frame], i: int, n: int) -> int:
        """Handle frames[i] and the DATA frames after it from the same source and channel.

        One lookup of targets and subscribers per run instead of per frame, and
        the run is forwarded as one block of the bytes received, with only the
        hop counts patched. The bytes are released to the sending neighbour
        (credited) once every target link has taken them and every lossless
        subscriber here has consumed them. Returns the next index.
        """
        first = frames[i]
        if type(first) is Run:
            return self._on_run_record(link, first, i)
        channel, source = first[3], first[4]
        j = i + 1
        while j < n:
            f = frames[j]
            if f[0] != _DATA or f[3] != channel or f[4] != source or type(f) is Run:
                break
            j += 1
        decoder = link._decoder
        offsets = decoder.offsets
        if len(offsets) == n and decoder.buffer:
            start = offsets[i]
            last = frames[j - 1]
            end = offsets[j - 1] + HEADER_SIZE + len(last[8]) + len(last[7])
            buf = decoder.buffer
        else:
            buf, start, end = None, 0, sum(HEADER_SIZE + len(f[8]) + len(f[7]) for f in frames[i:j])
        size = end - start
        hold = None
        links = self._targets(source, channel)
        if links:
            blob = self._forward_block(frames, i, j, buf, offsets, start, end)
            if blob:
                self.counters["forwarded"] += (j - i) * len(links)
                hold = self._relay(link, channel, size, blob, links)
        subs = self._subs.get(channel)
        if subs:
            if hold is None:
                hold = Hold(link, channel, size, self._release_hold)
            run = frames if (i == 0 and j == n) else frames[i:j]
            for sub in subs:
                sub._deliver_run(run, link, hold)
        if hold is None:
            self._credit(link, channel, size)
        else:
            hold.unref()
        return j

    def _relay(
        self, link: Link, channel: int, size: int, blob: bytes, targets: list[Link]
    ) -> Hold | None:
        """Send ``blob`` (``size`` bytes received from ``link``) on to ``targets``; the Hold
        that keeps ``link``'s credit while some target queues it for credit, else None."""
        hold = None
        out = len(blob)
        for target in targets:
            if target.flow.take(channel, out):
                target.send(blob)
            else:
                if hold is None:
                    hold = Hold(link, channel, size, self._release_hold)
                self._hold_back(target, channel, blob, out, hold)
        return hold

    def _on_run_record(self, link: Link, run: Run, i: int) -> int:
        """_on_data_run for a :class:`~yotonnet.core.wire.Run` the link's decoder grouped.

        The run's frames share every header field but ``seq``, so one hop check
        covers them all and the bytes go on as received, hop counts patched in
        one step. Subscribers here read the payloads from the same buffer.
        """
        _, hops, _, channel, source, _, _, _, start, end, count, _, _ = run
        size = end - start
        hold = None
        links = self._targets(source, channel)
        if links:
            if hops <= 1:
                # At its hop limit: a loop while routes converge. Credited below.
                self.counters["hop_limit"] += count
            else:
                self.counters["forwarded"] += count * len(links)
                hold = self._relay(link, channel, size, run.relayed(), links)
        subs = self._subs.get(channel)
        if subs:
            if hold is None:
                hold = Hold(link, channel, size, self._release_hold)
            for sub in subs:
                sub._deliver_block(run, link, hold)
        if hold is None:
            self._credit(link, channel, size)
        else:
            hold.unref()
        return i + 1

    def _forward_block(
        self,
        frames: list[wire.Frame],
        i: int,
        j: int,
        buf: bytes | None,
        offsets: list[int],
        start: int,
        end: int,
    ) -> bytes:
        """frames[i:j] as bytes to forward, each hop count one less (b"": none may go on)."""
        if buf is not None:
            block = bytearray(memoryview(buf)[start:end])
            for k in range(i, j):
                hops = frames[k][1]
                if hops <= 1:
                    break
                block[offsets[k] - start + 5] = hops - 1  # the header's hops byte
            else:
                return bytes(block)
        # A frame at its hop limit (a loop while routes converge) or no offsets:
        # encode the others one by one.
        parts = []
        for k in range(i, j):
            frame = frames[k]
            if frame.hops <= 1:
                self.counters["hop_limit"] += 1
            else:
                parts.append(wire.reencode(frame, frame.hops - 1))
        return b"".join(parts)

    def _forward(self, frame: wire.Frame, links: list[Link]) -> None:
        """Forward one frame outside flow control (state frames: latest value wins)."""
        if frame.hops <= 1:
            self.counters["hop_limit"] += 1
            return
        data = wire.reencode(frame, frame.hops - 1)
        self.counters["forwarded"] += len(links)
        for link in links:
            link.send(data)

    # --- flow control (see yotonnet.flow)

    def _hold_back(
        self, link: Link, channel: int, data: bytes, size: int, hold: Hold | None
    ) -> None:
        """``link`` has no credit left on ``channel``: queue ``data`` for it, or drop it if
        the link is silent (busy), since a silent peer returns no credit."""
        if link.status is BUSY:
            self.counters["flow_dropped"] += 1
            return
        link.flow.enqueue(channel, data, size, hold)
        self.counters["flow_queued"] += 1
        if channel in self._pubs and channel not in self._not_ready:
            self._set_not_ready(channel)

    def _set_not_ready(self, channel: int) -> None:
        self._not_ready.add(channel)
        for pub in self._pubs.get(channel, ()):
            pub._pause()

    def _check_ready(self, channel: int) -> None:
        """Resume the local publishers of ``channel`` if every target can take more."""
        if channel not in self._not_ready:
            return
        for link in self._targets(self.node_id, channel):
            if link.status is not BUSY and not link.flow.can_send(channel):
                return
        window = self.config.flow_window
        for sub in self._subs.get(channel, ()):
            if sub.backlog >= window:
                return
        self._not_ready.discard(channel)
        for pub in list(self._pubs.get(channel, ())):
            pub._resume()

    def _backlog_exceeded(self, channel: int) -> bool:
        limit = self.config.publish_backlog
        for link in self._targets(self.node_id, channel):
            if link.flow.queued(channel) > limit:
                return True
        return False

    def _release_hold(self, hold: Hold) -> None:
        owner = hold.owner
        if owner is None:
            if hold.channel in self._not_ready:
                self._check_ready(hold.channel)
        else:
            self._credit(owner, hold.channel, hold.size)

    def _credit(self, link: Link, channel: int, size: int) -> None:
        """``size`` bytes ``link`` sent on ``channel`` are released: credit them in chunks."""
        amount = link.flow.owe(channel, size)
        if amount and not link._closing:
            link.send(
                HEADER.pack(
                    HEADER_TAIL, _CREDIT, 1, 0, 0, channel, self.node_id, link.peer_id, amount
                )
            )
            self.counters["credit_out"] += 1

    def _on_credit(self, link: Link, frame: wire.Frame) -> None:
        channel, amount = frame[3], frame[6]
        if not 0 < amount <= MAX_CREDIT:
            raise wire.ProtocolError(f"CREDIT frame grants {amount} bytes")
        self.counters["credit_in"] += 1
        try:
            ready = link.flow.grant(channel, amount)
        except CreditError as e:
            raise wire.ProtocolError(str(e)) from None
        for data in ready:
            link.send(data)
        if channel in self._not_ready:
            self._check_ready(channel)

    def link_writable(self, link: Link) -> None:
        """``link``'s transport drained what it held: send what waited for that."""
        flow = link.flow
        for channel, box in list(flow.outboxes.items()):
            if box.queue:
                for data in flow.ready(channel):
                    link.send(data)
        for channel in list(self._not_ready):
            self._check_ready(channel)

    def _drop_flow(self, link: Link) -> None:
        dropped = link.flow.drop()
        if dropped:
            self.counters["flow_dropped"] += dropped
            log.warn(
                "{node}: dropped {count} queued blocks for {peer} ({status})",
                node=self.name, count=dropped, peer=link.describe(), status=link.status,
            )
        for channel in list(self._not_ready):
            self._check_ready(channel)

    # --- request/reply

    def _request(
        self,
        channel: int,
        channel_name: str,
        tag: int,
        method: bytes,
        payload: bytes,
        timeout: float | None,
    ) -> defer.Deferred[Any]:
        holders = self._rep_holders.get(channel)
        if holders is None:
            # A scan of every node record: done once per routing change, not per call.
            holders = self._rep_holders[channel] = self.routing.holders(channel, REP)
        if not holders:
            return defer.fail(
                errors.NoResponders(f"no replier for channel {channel_name!r} is reachable")
            )
        calls = self._calls
        # One replier (the usual case) needs no comparison of loads.
        dest = holders[0] if len(holders) == 1 else calls.pick(holders)

        def cancel(d: defer.Deferred) -> None:
            calls.pop(req_id)

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        req_id, _, _, _, _, deadline, _ = calls.open(
            d, dest, channel_name, timeout, self.reactor.seconds(), channel
        )
        # Calls with the usual timeout expire after the one the timer waits for.
        if deadline is not None and deadline < self._deadline_at:
            self._arm_deadline_timer(deadline)
        me = self.node_id
        if dest == me:
            self._serve_request(channel, me, req_id, tag, method, payload)
            return d
        data = b"".join((
            HEADER.pack(
                HEADER_TAIL + len(method) + len(payload), _REQUEST,
                self._hops or self._hop_limit(),
                len(method), tag, channel, me, dest, req_id,
            ),
            method,
            payload,
        ))
        link = self._hop_links.get(dest)
        if link is not None:
            link.send(data)  # _unicast's common case written out
        elif not self._unicast(dest, data):
            self._finish_request(
                req_id, errors.NoResponders(f"replier for {channel_name!r} unreachable")
            )
        return d

    def _arm_deadline_timer(self, deadline: float) -> None:
        timer = self._deadline_timer
        delay = max(0.0, deadline - self.reactor.seconds())
        if timer is None:
            self._deadline_timer = self.reactor.callLater(delay, self._expire_calls)
        elif deadline < self._deadline_at:
            timer.reset(delay)
        else:
            return
        # Kept beside the timer: reading it back with getTime() costs a call per request.
        self._deadline_at = deadline

    def _expire_calls(self) -> None:
        self._deadline_timer = None
        self._deadline_at = _NEVER
        for call in self._calls.expired(self.reactor.seconds()):
            self._finish_request(
                call.req_id,
                errors.TimeoutError(
                    f"no reply on channel {call.channel_name!r} within {call.timeout:g} s"
                ),
            )
        deadline = self._calls.next_deadline()
        if deadline is not None:
            self._arm_deadline_timer(deadline)

    def _finish_request(self, req_id: int, result: Any) -> None:
        call: Call | None = self._calls.pop(req_id)
        if call is None:
            return
        if isinstance(result, BaseException):
            call.waiter.errback(result)
        else:
            call.waiter.callback(result)

    def _fail_unreachable_requests(self) -> None:
        if not self._calls:
            return
        reachable = self.routing.reachable()
        for call in self._calls:
            if call.dest not in reachable:
                self._finish_request(
                    call.req_id,
                    errors.ConnectionLost(
                        f"replier node {call.dest:016x} became unreachable before replying"
                    ),
                )

    def _on_request(self, link: Link | None, frame: wire.Frame) -> None:
        _, hops, tag, channel, source, dest, req_id, payload, method = frame
        if dest != self.node_id:
            if hops > 1:
                self._unicast(dest, wire.reencode(frame, hops - 1))
            return
        # Served here rather than through _serve_request: one call less per request.
        reps = self._reps.get(channel)
        if not reps:
            self._send_reply(
                channel, source, req_id, REPLY_NO_REPLIER, b"no replier here any more"
            )
            return
        rep = reps[0] if len(reps) == 1 else min(reps, key=lambda r: r.in_flight)
        self.current_caller = source  # read by handlers (yotonnet.identity.caller)
        outcome = rep._handle(tag, method, payload)
        if type(outcome) is not tuple:
            if isinstance(outcome, Failure):
                self._reply_failure(channel, source, req_id, outcome)
            else:
                outcome.addCallbacks(
                    lambda value: self._reply_ok(channel, source, req_id, value),
                    lambda failure: self._reply_failure(channel, source, req_id, failure),
                )
            return
        # A handler that returned a plain value is answered at once, without Deferreds:
        # _reply_ok written out, since this is every successful call's path.
        try:
            reply = encode_object(outcome[0])
        except errors.MessageTypeError:
            self._reply_ok(channel, source, req_id, outcome[0])  # it reports what failed
            return
        me = self.node_id
        if source == me:
            self._accept_reply(req_id, REPLY_OK, reply)
            return
        data = (
            HEADER.pack(
                HEADER_TAIL + len(reply), _REPLY, self._hops or self._hop_limit(), 0, REPLY_OK,
                channel, me, source, req_id,
            )
            + reply
        )
        out = self._hop_links.get(source)
        if out is not None:
            out.send(data)
        else:
            self._unicast(source, data)

    def _serve_request(
        self, channel: int, source: int, req_id: int, tag: int, method: bytes, payload: bytes
    ) -> None:
        """Serve a request made on this node (or handed over by another layer)."""
        me = self.node_id
        self._on_request(
            None, wire.Frame(_REQUEST, 1, tag, channel, source, me, req_id, payload, method)
        )

    def _reply_ok(self, channel: int, dest: int, req_id: int, value: Any) -> None:
        try:
            payload = encode_object(value)
        except errors.MessageTypeError as e:
            self._send_reply(
                channel, dest, req_id, REPLY_ERROR,
                encode_object(["MessageTypeError", f"reply not encodable: {e}", ""]),
            )
            return
        me = self.node_id
        if dest == me:
            self._accept_reply(req_id, REPLY_OK, payload)
            return
        # _send_reply written out: this is every successful call's path.
        self._unicast(
            dest,
            HEADER.pack(
                HEADER_TAIL + len(payload), _REPLY, self._hops or self._hop_limit(), 0,
                REPLY_OK,
                channel, me, dest, req_id,
            )
            + payload,
        )

    def _reply_failure(self, channel: int, dest: int, req_id: int, failure: Failure) -> None:
        body = [
            failure.type.__name__ if failure.type else "Exception",
            failure.getErrorMessage(),
            failure.getTraceback(),
        ]
        try:
            payload = encode_object(body)
        except errors.MessageTypeError:  # e.g. a message with lone surrogates
            payload = encode_object([body[0], repr(body[1]), repr(body[2])])
        self._send_reply(channel, dest, req_id, REPLY_ERROR, payload)

    def _send_reply(
        self, channel: int, dest: int, req_id: int, status: int, payload: bytes
    ) -> None:
        me = self.node_id
        if dest == me:
            self._accept_reply(req_id, status, payload)
            return
        self._unicast(
            dest,
            HEADER.pack(
                HEADER_TAIL + len(payload), _REPLY, self._hop_limit(), 0, status,
                channel, me, dest, req_id,
            )
            + payload,
        )

    def _on_reply(self, link: Link, frame: wire.Frame) -> None:
        _, hops, status, channel, source, dest, req_id, payload, _ = frame
        if dest != self.node_id:
            if hops > 1:
                self._unicast(dest, wire.reencode(frame, hops - 1))
            return
        # Only the node the request went to, on the channel it went out on, answers it.
        call = self._calls.answer(req_id, source, channel)
        if call is None:
            # Late (cancelled or timed out), or not from the replier we asked: dropped.
            self.counters["replies_dropped"] += 1
            return
        if status != REPLY_OK:
            self._fail_call(call, status, payload)
            return
        try:
            value = decode_object(payload)
        except Exception as e:  # noqa: BLE001 - a malformed reply fails only its call
            call[1].errback(errors.DecodeError(f"malformed reply: {e}"))
            return
        call[1].callback(value)  # the waiter

    def _accept_reply(self, req_id: int, status: int, payload: bytes) -> None:
        """A reply made on this node to a request made on this node."""
        call = self._calls.pop(req_id)
        if call is None:
            return  # cancelled or timed out: the late reply is dropped
        if status != REPLY_OK:
            self._fail_call(call, status, payload)
            return
        try:
            value = decode_object(payload)
        except Exception as e:  # noqa: BLE001 - a malformed reply fails only its call
            call.waiter.errback(errors.DecodeError(f"malformed reply: {e}"))
            return
        call.waiter.callback(value)

    def _fail_call(self, call: Call, status: int, payload: bytes) -> None:
        """Fail a call (already closed) with the error a non-OK reply carries."""
        result: Exception
        try:
            if status == REPLY_ERROR:
                remote_type, message, traceback = decode_object(payload)
                result = errors.RemoteError(remote_type, message, traceback)
            elif status == REPLY_NO_REPLIER:
                result = errors.NoResponders(payload.decode("utf-8", "replace"))
            elif status == REPLY_DENIED:
                result = errors.PermissionDenied(payload.decode("utf-8", "replace"))
            else:
                result = errors.DecodeError(f"reply with unknown status {status}")
        except Exception as e:  # noqa: BLE001 - a malformed reply fails only its call
            result = errors.DecodeError(f"malformed reply: {e}")
        call.waiter.errback(result)

    # --- state

    def state_clock(self, channel: int) -> int:
        """The highest clock of any version of state channel ``channel`` seen here."""
        return self._state_clocks.get(channel, 0)

    def _state_set(self, channel: int, tag: int, payload: bytes) -> None:
        clock = self._state_clocks.get(channel, 0) + 1
        if clock >= stateclock.MAX_STATE_CLOCK:
            raise errors.YotonnetError(
                f"state channel {channel:016x} has run out of versions (its clock is at "
                f"{clock - 1}); use another channel"
            )
        self._state_clocks[channel] = clock
        version = (clock, self.node_id)
        self._state_apply(channel, version, tag, payload)
        data = self._state_frame(channel, version, tag, payload, dest=0)
        for link in self._targets(self.node_id, channel, STATE):
            link.send(data)

    def _state_frame(
        self, channel: int, version: tuple[int, int], tag: int, payload: bytes, dest: int
    ) -> bytes:
        return wire.encode_frame(
            _STATE,
            _STATE_VERSION.pack(*version) + payload,
            tag=tag,
            channel=channel,
            source=self.node_id,
            dest=dest,
            hops=self._hop_limit(),
        )

    def _on_state(self, link: Link, frame: wire.Frame) -> None:
        channel = frame.channel
        version = stateclock.state_version(frame.payload, channel)
        if frame.dest not in (0, self.node_id):
            if frame.hops > 1:
                self._unicast(frame.dest, wire.reencode(frame, frame.hops - 1))
            self._note_state_clock(channel, version[0])
            return
        if frame.dest == 0:
            links = self._targets(frame.source, channel, STATE)
            if links:
                self._forward(frame, links)
        self._note_state_clock(channel, version[0])
        self._state_apply(channel, version, frame.tag, frame.payload[_STATE_VERSION.size :])

    def _note_state_clock(self, channel: int, clock: int) -> None:
        # Even for frames only passing through: a client's first node bounds its writes
        # by what it has seen of the channel (see LinkGate.on_state).
        if clock > self._state_clocks.get(channel, 0):
            self._state_clocks[channel] = clock

    def _state_apply(
        self, channel: int, version: tuple[int, int], tag: int, payload: bytes
    ) -> None:
        holders = self._states.get(channel)
        if not holders:
            return  # only passing through this node
        current = self._state_values.get(channel)
        if current is not None and current[0] >= version:
            return
        self._state_values[channel] = (version, tag, payload)
        for holder in holders:
            holder._changed(tag, payload)

    def _state_current(self, channel: int) -> tuple[tuple[int, int], int, bytes] | None:
        return self._state_values.get(channel)

    def _push_state_to_new_holders(self) -> None:
        """Tell holders we have not told yet (late joiners, healed partitions) our value."""
        routing = self.routing
        # A holder told before can need telling again only if it was cut off meanwhile,
        # which takes a loss; otherwise only holders never told matter, and knowing there
        # are none needs no route computation (records that only add nodes cost none).
        lost = routing.losses != self._state_losses_seen
        self._state_losses_seen = routing.losses
        for channel, (version, tag, payload) in self._state_values.items():
            if channel not in self._states:
                continue
            told = self._state_told.get(channel, set())
            if not lost:
                listed = routing.listed_holders(channel, STATE)
                listed.discard(self.node_id)
                if listed <= told:
                    continue
            holders = set(routing.holders(channel, STATE))
            holders.discard(self.node_id)
            for node in holders - told:
                self._unicast(node, self._state_frame(channel, version, tag, payload, dest=node))
            self._state_told[channel] = holders


def _control_frame(body: list) -> bytes:
    return wire.encode_frame(FrameKind.CONTROL, encode_object(body))


def _port_text(port: Any) -> str:
    try:
        host = port.getHost()
    except Exception:  # noqa: BLE001
        return repr(port)
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))
