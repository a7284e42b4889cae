"""The context: one node of the mesh, as an application and its links see it.

A :class:`Context` is a facade over the sans-IO :class:`~yotonnet.core.node.Node`,
which decides what happens to every frame. The context gives it what needs
Twisted: endpoints to listen on and dial (with the security layer's
:class:`~yotonnet.security.guard.Guard`), the links themselves
(:class:`~yotonnet.mesh.link.Link`, reporting here as an
:class:`~yotonnet.mesh.interfaces.ILinkOwner`), timers (record expiry, request
deadlines), Deferreds for what applications wait on, and watchers of link
and route changes. Channels open on it as their
:class:`~yotonnet.mesh.interfaces.IChannelHost`.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..core.config import ContextConfig
from ..core.costs import check_cost
from ..core.node import Node
from ..security.guard import Guard
from ..security.settings import Security, SecurityError
from .dialer import Dialer, endpoint_cost
from .interfaces import IChannelHost, ILinkOwner
from .link import BUSY, CLOSED, UP, Link, LinkFactory
from .writer import Batch

__all__ = ["Context", "ContextConfig", "LinkEvent", "Dialer"]

log = Logger(namespace="yotonnet.context")


class LinkEvent(NamedTuple):
    peer_name: str
    peer_id: int
    status: str
    reason: str | None
    link: Link


@implementer(ILinkOwner, IChannelHost)
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
        #: the sans-IO core: every decision about frames is its
        self.node = Node(self.node_id, self.name, self.config, reactor.seconds, log,
                         self._arm_deadline)
        #: the routing table and the counters (introspection)
        self.routing = self.node.routing
        self.counters = self.node.counters
        #: neighbour node id -> the link to it (up or busy)
        self.links: dict[int, Link] = self.node.topology.peers  # type: ignore[assignment]
        #: the dispatch in progress, shared by this context's links (see mesh.writer)
        self.batch = Batch(self.node.end_dispatch, self.node.begin_dispatch)
        self.dialers: list[Dialer] = []
        self.ports: list[Any] = []
        self.closed = False
        self._watchers: list[Callable[[LinkEvent], None]] = []
        self._interest_waiters: list[tuple[Any, str, int, defer.Deferred]] = []
        self.node.watch_routes(self._check_interest_waiters)
        self._housekeeping = LoopingCall(self.node.expire_records)
        self._housekeeping.clock = reactor
        self._deadline_timer: Any = None
        #: TLS, authentication, authorization, identities and limits (security.guard)
        self.security = security if security is not None else Security()
        self.guard = Guard(self, self.security)

    def __repr__(self) -> str:
        return f"<Context {self.name} {self.node_id:016x}>"

    # --- public API

    def listen(self, endpoint: str, *, cost: int | None = None) -> defer.Deferred[Any]:
        """Accept any number of peers on a Twisted server endpoint string.

        ``cost`` is the routing cost of the links accepted here (see :meth:`connect`).
        """
        self.check_open()
        if cost is not None:
            check_cost(cost)  # a wrong argument is the caller's bug: raised at once
        try:
            endpoint, cost = endpoint_cost(endpoint, cost)
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
            log.info("{node} listening on {where}", node=self.name, where=port_text(port))
            self.guard.listening(port_text(port))
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
        self.check_open()
        if cost is not None:
            check_cost(cost)  # a wrong argument is the caller's bug: raised at once
        try:
            endpoint, cost = endpoint_cost(endpoint, cost)
            dialer = self.dialer(
                endpoint, self.guard.client_endpoint(endpoint),
                LinkFactory(self, outgoing=True, endpoint_text=endpoint, cost=cost),
            )
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad connect endpoint {endpoint!r}: {e}"))
        dialer.start()
        return dialer.first

    def dialer(
        self, endpoint_text: str, endpoint: Any, factory: Any, protocol: str = "yotonnet"
    ) -> Dialer:
        """A new (not yet started) dialer of this context: ``factory``'s protocol on
        ``endpoint``, retried with this context's backoff, stopped when it closes."""
        self.check_open()
        cfg = self.config
        dialer = Dialer(self.reactor, endpoint_text, endpoint, factory, cfg.reconnect_initial,
                        cfg.reconnect_max, protocol)
        self.dialers.append(dialer)
        return dialer

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
        self.node.close("context closed")
        if self._deadline_timer is not None and self._deadline_timer.active():
            self._deadline_timer.cancel()
        self._deadline_timer = None
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def queued(self, channel: int | None = None) -> int:
        """Bytes of pub/sub data waiting for flow-control credit on any link (of one
        channel id, or of all)."""
        return self.node.pubsub.queued(channel)

    def flushed(self, timeout: float, channel: int | None = None) -> defer.Deferred[bool]:
        """Fire True once nothing waits for credit (see :meth:`queued`), or False when
        ``timeout`` seconds pass first or the context closes."""
        if not self.queued(channel):
            return defer.succeed(True)
        d: defer.Deferred[bool] = defer.Deferred()
        watchers = self.node.pubsub.drain_watchers

        def drained() -> bool:
            if d.called:
                return True
            if self.closed or not self.queued(channel):
                timer.cancel()
                d.callback(not self.closed)
                return True
            return False

        def too_late() -> None:
            if drained in watchers:
                watchers.remove(drained)
            if not d.called:
                d.callback(False)

        timer = self.reactor.callLater(max(0.0, timeout), too_late)
        watchers.append(drained)
        return d

    def watch_links(self, callback: Callable[[LinkEvent], None]) -> Callable[[], None]:
        """Call ``callback(LinkEvent)`` on every link status change; returns an unwatch function."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def watch_routes(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of the mesh's picture (links, records,
        interests); returns an unwatch function."""
        return self.node.watch_routes(callback)

    def topology(self) -> dict:
        """Nodes, links, routes and channels as plain data."""
        snap = self.routing.snapshot()
        snap["name"] = self.name
        snap["links"] = [link.info() for link in self.links.values()]
        snap["dialers"] = [d.info() for d in self.dialers]
        channels: dict[str, dict] = {}
        for end in self.node.local_ends():
            entry = channels.setdefault(f"{end.channel_id:016x}", {
                "name": end.name, "pattern": end.pattern, "local": 0,
            })
            entry["local"] += 1
        snap["channels"] = channels
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
        return self.node.topology.interest_count(channel, role)

    def state_clock(self, channel: int) -> int:
        """The highest clock of any version of state channel ``channel`` seen here."""
        return self.node.state.clock(channel)

    @property
    def current_caller(self) -> int:
        """Inside a request handler: the node id whose request it serves."""
        return self.node.requests.current_caller

    def request(
        self,
        channel: int,
        channel_name: str,
        tag: int,
        method: bytes,
        payload: bytes,
        timeout: float | None,
    ) -> defer.Deferred[Any]:
        """Send a call on ``channel``; a Deferred of its reply (cancel it to drop it)."""
        requests = self.node.requests
        req_id = 0
        d: defer.Deferred[Any] = defer.Deferred(lambda _: requests.cancel(req_id))
        req_id = requests.request(channel, channel_name, tag, method, payload, timeout, d)
        return d

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

    def _arm_deadline(self, when: float) -> None:
        """The core's request deadlines: fire its expiry at ``when`` (earlier than any
        time asked before)."""
        delay = max(0.0, when - self.reactor.seconds())
        timer = self._deadline_timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._deadline_timer = self.reactor.callLater(delay, self._deadline)

    def _deadline(self) -> None:
        self._deadline_timer = None
        self.node.requests.expire(self.reactor.seconds())

    def check_open(self) -> None:
        """Raise RuntimeError if the context is closed."""
        if self.closed:
            raise RuntimeError("context is closed")

    # --- ILinkOwner: what links report

    def accepting(self) -> str | None:
        return "context is closed" if self.closed else None

    def admit(self, link: Link) -> str | None:
        """Decide whether a link that finished its HELLO may join."""
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

    def dispatch_for(self, link: Link) -> tuple[dict[int, Any], Any]:
        """The handlers of an admitted link's frames: the core's, through the link's gate
        when its peer is a client (see yotonnet.security.guard.LinkGate)."""
        node = self.node
        if link.gate is not None:
            return link.gate.filtered(node.handlers, node.on_frames)
        return dict(node.handlers), node.on_frames

    def link_up(self, link: Link) -> None:
        log.info("{node}: link up to {peer}", node=self.name, peer=link.describe())
        self.node.peer_up(link)
        if not self._housekeeping.running:
            self._housekeeping.start(self.config.heartbeat, now=False)
        self.link_event(link, UP, None)

    def link_down(self, link: Link) -> None:
        if self.links.get(link.peer_id) is link:
            log.info("{node}: link down to {peer}: {reason}", node=self.name,
                     peer=link.describe(), reason=link.reason)
        self.node.peer_down(link)

    def link_status(self, link: Link, status: str, reason: str | None) -> None:
        if status is BUSY:
            self.node.peer_busy(link)
        else:
            self.node.peer_back(link)
        self.link_event(link, status, reason)

    def link_event(self, link: Link, status: str, reason: str | None) -> None:
        event = LinkEvent(link.peer_name, link.peer_id, status, reason, link)
        for watcher in list(self._watchers):
            try:
                watcher(event)
            except Exception:  # noqa: BLE001 - one bad watcher must not break the link
                log.failure("link watcher failed")


def port_text(port: Any) -> str:
    """``host:port`` of a listening TCP port, the path of a unix one."""
    try:
        host = port.getHost()
    except Exception:  # noqa: BLE001
        return repr(port)
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    name = getattr(host, "name", host)
    return name.decode() if isinstance(name, bytes) else str(name)
