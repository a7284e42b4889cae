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

A context is a *node* of the mesh or a *leaf* of one node (see
:mod:`yotonnet.core.leaves`): ``role="node"`` or ``role="leaf"`` says which;
by default a context that has listened is a node, and one that dials
without listening (every client: CLI commands, consoles, scripts) joins as a
leaf of the node it dials.
"""

from __future__ import annotations

import random
import select
import socket
from collections.abc import Callable, Sequence
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
from .dialer import Dialer, FirstOf, endpoint_cost
from .interfaces import IChannelHost, ILinkOwner
from .link import BUSY, CLOSED, UP, Link, LinkFactory
from .replypoll import ReplyPoller
from .writer import Batch

__all__ = ["Context", "ContextConfig", "LinkEvent", "Dialer", "NODE", "LEAF"]

#: Context roles (see the module docstring)
NODE = "node"
LEAF = "leaf"

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
        role: str | None = None,
    ) -> None:
        if role not in (None, NODE, LEAF):
            raise ValueError(f"role must be {NODE!r}, {LEAF!r} or None (decided by use), "
                             f"not {role!r}")
        #: "node", "leaf", or None until decided (a context that listens is a node)
        self.role = role
        self._role_given = role is not None
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not IReactorTime.providedBy(reactor):
            raise TypeError("reactor must provide IReactorTime")
        self.reactor = reactor
        self.config = config or ContextConfig()
        self.config.check()
        self.node_id = node_id or random.getrandbits(64) or 1
        self.name = name or f"{socket.gethostname()}-{id(self) & 0xFFFF:04x}"
        self.capabilities: tuple[str, ...] = ("routing-1", "state-1", "reqrep-1")
        #: the sans-IO core: every decision about frames is its
        #: the call that writes published frames waiting in the node (see _corked)
        self._uncork_call: Any = None
        polls = self.config.reply_poll > 0 and hasattr(select, "poll")  # (not on Windows)
        self.node = Node(self.node_id, self.name, self.config, reactor.seconds, log,
                         self._arm_deadline, self._corked, batched=True,
                         on_call_sent=self._call_sent if polls else None)
        #: the routing table and the counters (introspection)
        self.routing = self.node.routing
        self.counters = self.node.counters
        #: watches the links calls went out on for their replies (None: reply_poll is 0)
        self.reply_poller = (ReplyPoller(reactor, self.config.reply_poll, self.counters)
                             if polls else None)
        #: neighbour node id -> the link to it (up or busy): the mesh's links, and a
        #: leaf's link to its hub (see links for every link, leaves' too)
        self.neighbours: dict[int, Link] = self.node.topology.peers  # type: ignore[assignment]
        #: the dispatch in progress, shared by this context's links (see mesh.writer)
        self.batch = Batch(self.node.end_dispatch, self.node.begin_dispatch,
                           self.node.pubsub.corked, self.node.pubsub.uncork)
        self.dialers: list[Dialer] = []
        self.ports: list[Any] = []
        self.closed = False
        self._watchers: list[Callable[[LinkEvent], None]] = []
        self._interest_waiters: list[tuple[Any, str, int, defer.Deferred]] = []
        self.node.watch_routes(self._check_interest_waiters)
        self._housekeeping = LoopingCall(self.node.housekeeping)
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
            self.become_node("it listens")
        except ValueError as e:
            return defer.fail(e)
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

    def connect(
        self, endpoint: str | Sequence[str], *, cost: int | None = None
    ) -> defer.Deferred[Link]:
        """Dial a peer; the Deferred fires with the link once the handshake is done.

        ``endpoint`` may be a list of endpoints (of several nodes of one mesh): each
        attempt tries them in turn, from the one that answered last, so a leaf whose
        node goes away joins the next one by itself.

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
        if self.role is None:
            self.role = LEAF
        leaf = self.role == LEAF
        if leaf and any(d.protocol == "yotonnet" and not d.stopped for d in self.dialers):
            return defer.fail(ValueError(
                f"{self.name} is a leaf context: it joins the mesh through one node and "
                "already dials one; make it a node to link to several: "
                "Context(..., role='node')"
            ))
        try:
            texts, costs = [], set()
            for one in [endpoint] if isinstance(endpoint, str) else list(endpoint):
                text, one_cost = endpoint_cost(one, cost)
                texts.append(text)
                costs.add(one_cost)
            if not texts:
                raise ValueError("no endpoint given")
            if len(costs) > 1:
                raise ValueError(f"the endpoints give different costs ({sorted(costs)}); "
                                 "give one with cost=")
            ends = [self.guard.client_endpoint(text) for text in texts]
            text = " | ".join(texts)
            dialer = self.dialer(
                text, ends[0] if len(ends) == 1 else FirstOf(ends, texts),
                LinkFactory(self, outgoing=True, endpoint_text=text, cost=costs.pop(),
                            leaf=leaf),
            )
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ValueError(f"bad connect endpoint {endpoint!r}: {e}"))
        dialer.start()
        return dialer.first

    def become_node(self, why: str) -> None:
        """Make this context a node of the mesh (``why``: for the log), as listening does:
        a context that joined as a leaf by default dials its node again as a node. A
        context made a leaf (``role="leaf"``) cannot: ValueError."""
        if self.role == NODE:
            return
        if self.role == LEAF and self._role_given:
            raise ValueError(
                f"{self.name} was made a leaf context (role='leaf') but {why}, which takes a "
                "node: make it one, Context(..., role='node')"
            )
        was_leaf = self.role == LEAF
        self.role = NODE
        if not was_leaf:
            return
        log.info("{node}: {why}, so it is a node of the mesh, no longer a leaf",
                 node=self.name, why=why)
        for dialer in self.dialers:
            if isinstance(dialer.factory, LinkFactory) and dialer.factory.leaf:
                dialer.factory.leaf = False
                if dialer.link is not None and not dialer.link.closing:
                    dialer.link.close("this context listens now: dialling again as a node")

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

    def _corked(self) -> None:
        """Published frames wait in the node (yotonnet.core.pubsub.PubSub.uncork): a link
        writes them before anything else, a dispatch as it ends, and this call at the end
        of the reactor turn at the latest (as a LinkWriter's own flush)."""
        if self._uncork_call is None and not self.closed:
            # (closed: its links are going and write nothing more, so no call is left
            # behind on the reactor; at most CORK_BYTES wait, dropped with the outlet)
            self._uncork_call = self.reactor.callLater(0, self._uncork)

    def _uncork(self) -> None:
        self._uncork_call = None
        self.node.pubsub.uncork()

    def _call_sent(self, link: Any) -> None:
        """A call made here went out on ``link`` (Requests.on_call_sent)."""
        if self.reply_poller is not None and not self.closed:
            self.reply_poller.expect(link)

    def close(self) -> defer.Deferred[None]:
        """Stop dialling and listening, close every link, fail pending requests."""
        if self.closed:
            return defer.succeed(None)
        self.closed = True
        self.node.pubsub.uncork()  # (the links would, as they close)
        if self._uncork_call is not None and self._uncork_call.active():
            self._uncork_call.cancel()
        self._uncork_call = None
        if self.reply_poller is not None:
            self.reply_poller.stop()
        if self._housekeeping.running:
            self._housekeeping.stop()
        # Links first: each writes what it holds before it goes. A dialler stopped first
        # drops its connection with the frames a link had not written yet.
        for link in list(self.links.values()):
            link.close("context closed")
        waits: list[defer.Deferred] = [d.stop() for d in self.dialers]
        waits += [defer.maybeDeferred(p.stopListening) for p in self.ports]
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

    @property
    def links(self) -> dict[int, Link]:
        """Peer node id -> the link to it, for every link up or busy: to neighbours, and to
        the leaves of this node (a copy: see :attr:`neighbours` and :attr:`leaf_links`)."""
        links = dict(self.neighbours)
        if self.node.topology.leaves.entries:
            links.update(self.leaf_links)
        return links

    def link_to(self, peer_id: int) -> Link | None:
        """The link to ``peer_id`` (a neighbour or a leaf of this node), or None."""
        link = self.neighbours.get(peer_id)
        if link is None:
            link = self.node.topology.leaves.peer(peer_id)  # type: ignore[assignment]
        return link

    @property
    def leaf_links(self) -> dict[int, Link]:
        """Leaf node id -> the link to that leaf (this node is its hub)."""
        return {leaf: e.peer for leaf, e in  # type: ignore[misc]
                self.node.topology.leaves.entries.items()}

    @property
    def hub(self) -> Link | None:
        """A leaf's link to its node (None: not a leaf, or not linked now)."""
        return self.node.topology.hub  # type: ignore[return-value]

    @property
    def view_current(self) -> bool:
        """On a leaf: whether its hub has answered what it last said it uses (channels
        opened or closed), so that interest counts and repliers are up to date. Always
        True on a node, whose picture is its own."""
        return self.node.topology.view_current

    def view_settled(self) -> defer.Deferred[None]:
        """Fire once :attr:`view_current` holds (at once on a node)."""
        d: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            if not d.called and (self.view_current or self.closed):
                unwatch()
                d.callback(None)

        unwatch = self.node.watch_routes(check)
        check()
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
        snap["role"] = self.role or NODE
        snap["links"] = [link.info() for link in self.links.values()]
        snap["leaves"] = self.node.topology.leaves.snapshot()
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
        existing = self.link_to(link.peer_id)
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
        if self.link_to(link.peer_id) is link:
            log.info("{node}: link down to {peer}: {reason}", node=self.name,
                     peer=link.describe(), reason=link.reason)
        self.guard.link_down(link)
        self.node.peer_down(link)

    def link_status(self, link: Link, status: str, reason: str | None) -> None:
        if status is BUSY:
            self.node.peer_busy(link)
        else:
            self.node.peer_back(link)
        self.link_event(link, status, reason)

    def link_quiet(self, link: Link, reason: str | None) -> None:
        if reason is not None:
            self.counters["links_rerouted"] += 1
            log.info("{node}: routing around the link to {peer}: {reason}", node=self.name,
                     peer=link.describe(), reason=reason)
        else:
            log.info("{node}: the link to {peer} carries traffic again", node=self.name,
                     peer=link.describe())
        self.node.peer_quiet(link)

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
