"""The node core: what one mesh node does with every frame, without any I/O.

Sans-IO. A :class:`Node` is driven by plain calls: a neighbour came up or
went away (:meth:`Node.peer_up`, :meth:`Node.peer_down`, :meth:`Node.peer_busy`),
frames arrived from one (the :attr:`Node.handlers` table, by frame kind, and
:attr:`Node.on_frames` for DATA runs), a local channel opened or sends
something. It answers by sending on the :class:`~.interfaces.IPeer` objects
it was given and by calling the local channel ends
(:mod:`.interfaces`): no socket, no reactor, no Deferred. It is four small
protocols over one picture of the mesh:

* :class:`~.topology.Topology`: neighbours, routing records, paths, hop limits;
* :class:`~.pubsub.PubSub`: publishing, forwarding, delivery, credit, readiness,
  and the end-to-end repair of lossless channels (:mod:`.repair`);
* :class:`~.requests.Requests`: calls, serving, correlation, deadlines;
* :class:`~.statesync.StateSync`: state values, clocks, last writer wins.

A change of the picture is drawn once (:meth:`Node.routes_changed`): caches
dropped, paused publishers looked at again, calls to repliers now out of
reach failed, new state holders told, and the route watchers called
(:meth:`Node.watch_routes`). Control messages are decoded once and handed to
the handler registered for their kind (:meth:`Node.add_control_handler`):
``node`` records are the topology's; the security layer adds its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import errors
from .config import ContextConfig
from .interfaces import ILog, IPeer
from .leaves import LEAF, PUB, REQ
from .pubsub import PubSub
from .recent import RecentRequests
from .requests import Requests
from .routing import REP, STATE, SUB, Interest
from .statesync import StateSync
from .topology import Topology
from .wire import FrameKind, decode_control

__all__ = ["Node", "PUB", "SUB", "REP", "STATE", "REQ"]



class Node:
    def __init__(
        self,
        node_id: int,
        name: str,
        config: ContextConfig,
        clock: Callable[[], float],
        log: ILog,
        on_deadline: Callable[[float], None],
        on_cork: Callable[[], None] | None = None,
        batched: bool = False,
        on_call_sent: Callable[[IPeer], None] | None = None,
    ) -> None:
        self.node_id = node_id
        #: the host hands every frame over within begin_dispatch() and end_dispatch() (a
        #: context's links do), and calls begin_dispatch() only while published frames
        #: wait (see mesh.writer.Batch): records received always wait for end_dispatch()
        self.batched = batched
        self.name = name
        self.config = config
        self.clock = clock
        self.log = log
        self.counters: dict[str, int] = {
            "forwarded": 0,
            "no_route": 0,
            "hop_limit": 0,
            "control_in": 0,
            "control_out": 0,
            # routing records a limit refused (yotonnet.core.routing.RoutingLimits)
            "records_refused": 0,
            # times the node acted on routing changes (records are batched per dispatch)
            "routing_changes": 0,
            "credit_in": 0,
            "credit_out": 0,
            "flow_queued": 0,
            "flow_dropped": 0,
            "producer_pauses": 0,
            "latest_dropped": 0,
            "replies_dropped": 0,
            "slow_consumers": 0,
            "links_rerouted": 0,
            # idempotent calls sent again after their path broke, and copies of such
            # requests this node took only once (yotonnet.core.recent)
            "requests_resent": 0,
            "requests_duplicate": 0,
        }
        self.topology = Topology(node_id, name, config, self.counters, log, self.routes_changed,
                                 self.local_interests, self.leaf_items)
        # on_cork: the host lets published frames wait until the end of the reactor turn
        # (see PubSub.uncork)
        self.pubsub = PubSub(node_id, config, self.topology, self.counters, log, clock,
                             on_cork)
        self.requests = Requests(
            node_id, self.topology, self.counters, clock, on_deadline,
            RecentRequests(config.recent_requests, config.recent_reply_bytes),
            on_call_sent,
        )
        self.state = StateSync(node_id, self.topology)
        self.topology.dispatching = batched
        #: the routing table (yotonnet.core.routing), for introspection
        self.routing = self.topology.routing
        self.closed = False
        self._route_watchers: list[Callable[[], None]] = []
        self._control_handlers: dict[str, Callable[[IPeer, list], None]] = {
            "node": self.topology.on_record,
            "leaf": self.topology.on_leaf,
            "view": self.topology.on_view,
        }
        # channel id -> message type name of its local ends (two kinds on one id clash)
        self._channel_types: dict[int, str] = {}
        #: frame kind -> handler(peer, frame), for every kind a neighbour may send
        self.handlers: dict[int, Callable[[Any, Any], None]] = {
            FrameKind.REQUEST: self.requests.on_request,
            FrameKind.REPLY: self.requests.on_reply,
            FrameKind.STATE: self.state.on_state,
            FrameKind.CONTROL: self.on_control,
            FrameKind.CREDIT: self.pubsub.on_credit,
            FrameKind.LATEST: self.pubsub.on_latest,
            FrameKind.ACK: self.pubsub.repair.on_ack,
            FrameKind.RESENT: self.pubsub.repair.on_resent,
            FrameKind.TAIL: self.pubsub.repair.on_tail,
        }
        #: DATA frames and runs: handler(peer, frames, i, n) -> the next index
        self.on_frames = self.pubsub.on_frames

    # --- neighbours

    def peer_up(self, peer: IPeer) -> None:
        self.topology.peer_up(peer)

    def peer_down(self, peer: IPeer) -> None:
        if peer.role == LEAF:
            leaf = self.topology.leaves.entries.get(peer.peer_id)
            if leaf is not None and leaf.peer is peer:
                # Its callers hear why before the record that no longer lists it.
                self.requests.leaf_gone(leaf)
        if self.topology.peer_down(peer, closed=self.closed):
            self.pubsub.drop(peer)

    def peer_busy(self, peer: IPeer) -> None:
        """``peer`` went silent: a silent peer returns no credit, so what waits for it
        goes (the publishers resume; subscribers behind it see the gap, counted), and
        its link costs more."""
        self.pubsub.drop(peer)
        self.topology.peer_status(peer)

    def peer_back(self, peer: IPeer) -> None:
        self.topology.peer_status(peer)

    def peer_quiet(self, peer: IPeer) -> None:
        """``peer`` fell silent for a moment, or spoke again: only its link's cost
        changes. What waits for it stays: a busy peer's goes, a quiet one may be
        a link in a moment of congestion, and repair covers what a dead one took."""
        self.topology.peer_status(peer)

    def peer_writable(self, peer: IPeer) -> None:
        """``peer``'s transport drained: send what waited for that."""
        self.pubsub.writable(peer)

    # --- control messages

    def on_control(self, peer: IPeer, frame: Any) -> None:
        self.counters["control_in"] += 1
        # Size and value count bounded before anything is built (see wire.decode_control).
        message = decode_control(frame[7], self.config.max_control_frame)
        handler = self._control_handlers.get(message[0])
        if handler is not None:
            handler(peer, message)
        # Unknown control kinds are ignored, so newer nodes can add some.

    def add_control_handler(self, kind: str, handler: Callable[[IPeer, list], None]) -> None:
        """Have ``handler(peer, message)`` take control messages ``[kind, ...]``."""
        self._control_handlers[kind] = handler

    # --- the picture of the mesh changed

    def routes_changed(self) -> None:
        topology = self.topology
        topology.pending = False  # whatever records were waiting are covered now
        self.counters["routing_changes"] += 1
        topology.forget_paths()
        self.pubsub.recheck()
        self.requests.routes_changed()
        self.state.routes_changed()
        self.pubsub.repair.routes_changed()
        changed, links = topology.routing.take_changes()
        topology.leaves.refresh(changed, links)
        for watcher in list(self._route_watchers):
            watcher()

    def watch_routes(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of the picture; returns an unwatch."""
        self._route_watchers.append(callback)
        return lambda: self._route_watchers.remove(callback) if (
            callback in self._route_watchers) else None

    def settle(self) -> None:
        """Draw the consequences of records received in this dispatch (see Topology)."""
        if self.topology.pending:
            self.routes_changed()

    def begin_dispatch(self) -> None:
        """Frames received in one read are about to be handled: records among them
        change the picture at once, but its consequences wait for :meth:`end_dispatch`
        (or the next frame of another kind)."""
        self.topology.dispatching = True
        # Frames handled in it see what the publish lane spent (yotonnet.core.pubsub.Lane,
        # open only while published frames wait in the cork).
        lane = self.pubsub.lane
        if lane.outlet is not None:
            lane.clear()

    def end_dispatch(self) -> None:
        self.topology.dispatching = self.batched
        self.settle()

    def housekeeping(self) -> None:
        """Once per heartbeat: forget stale records; acknowledge, retry and give up
        what the repair of lossless channels waits for (yotonnet.core.repair)."""
        now = self.clock()
        # (what waits corked goes first: the repair may let go of a channel's retention)
        self.pubsub.uncork()
        self.topology.expire(now)
        self.pubsub.repair.tick(now)

    # --- local channel ends

    def _table(self, role: str) -> dict[int, list[Any]]:
        return {
            SUB: self.pubsub.subscribers,
            PUB: self.pubsub.publishers,
            REP: self.requests.repliers,
            STATE: self.state.holders,
            REQ: self.requests.callers,
        }[role]

    def register(self, role: str, channel: int, end: Any) -> None:
        """A local end of ``channel`` opened (``role``: SUB, PUB, REP, STATE or REQ)."""
        table = self._table(role)
        if role not in (PUB, REQ):
            self.pubsub.ends_changed()
            known = self._channel_types.get(channel)
            type_name = end.message_type.name
            if known is not None and table.get(channel) and known != type_name:
                raise errors.MessageTypeError(
                    f"channel {end.name!r} already has local {end.pattern} ends of type "
                    f"{known}; this one is {type_name}"
                )
            self._channel_types[channel] = type_name
        first = not table.get(channel)
        table.setdefault(channel, []).append(end)
        if role not in (PUB, REQ):
            self.topology.update_local(interests=self.local_interests())
        elif first:
            self.topology.tell_hub()  # a leaf's hub says who holds what it uses

    def unregister(self, role: str, channel: int, end: Any) -> None:
        table = self._table(role)
        ends = table.get(channel)
        if role != PUB:
            self.pubsub.ends_changed()
        if ends and end in ends:
            ends.remove(end)
            if not ends:
                del table[channel]
            if self.closed:
                return
            if role not in (PUB, REQ):
                self.topology.update_local(interests=self.local_interests())
                if role == SUB and not ends:
                    self.pubsub.repair.unsubscribed(channel)
            elif not ends:
                self.topology.tell_hub()

    def channel_type(self, channel: int) -> str | None:
        """The message type of the local ends of ``channel`` (None: no local end)."""
        return self._channel_types.get(channel)

    def local_interests(self) -> dict[int, Interest]:
        """What this node's record lists: its own ends, and what its leaves hold. The
        idempotent methods of its REP channels are also what its Requests serves once."""
        interests = self.topology.leaves.totals()
        for role, table in ((SUB, self.pubsub.subscribers), (REP, self.requests.repliers),
                            (STATE, self.state.holders)):
            for chan, ends in table.items():
                if ends:
                    count = len(ends)
                    # A method is idempotent here only if every replier a call may reach
                    # says so: any of them may get the copy sent again.
                    methods = (frozenset.intersection(*(end.idempotent for end in ends))
                               if role == REP else frozenset())
                    theirs = interests.get(chan)
                    if theirs is not None and theirs.role == role:
                        count += theirs.count
                        methods &= theirs.idempotent
                    interests[chan] = Interest(role, ends[0].message_type.name, count, methods)
        # Requests arrive with their method names in UTF-8.
        self.requests.idempotent_here = {
            chan: frozenset(name.encode("utf-8", "surrogatepass") for name in i.idempotent)
            for chan, i in interests.items() if i.idempotent
        }
        return interests

    def repliers_changed(self) -> None:
        """A local replier declared a method idempotent: the record says so."""
        if not self.closed:
            self.topology.update_local(interests=self.local_interests())

    def leaf_items(self) -> list:
        """What this node holds and uses, as a leaf tells its hub (yotonnet.core.leaves)."""
        items = [i.to_item(chan) for chan, i in sorted(self.routing.local.interests.items())]
        for role, table in ((PUB, self.pubsub.publishers), (REQ, self.requests.callers)):
            for chan, ends in sorted(table.items()):
                if ends:
                    items.append([chan, role, ends[0].message_type.name, len(ends)])
                    if role == PUB:
                        # its subscribers of the latest flow too
                        items.append([ends[0].latest_id, role, ends[0].message_type.name,
                                      len(ends)])
        return items

    def local_ends(self) -> list[Any]:
        """Every local end that holds interest (subscribers, repliers, state holders)."""
        return [end for table in (self.pubsub.subscribers, self.requests.repliers,
                                  self.state.holders)
                for ends in table.values() for end in ends]

    # --- closing

    def close(self, why: str) -> None:
        """The node is going: calls waiting for replies fail with ConnectionLost."""
        self.closed = True
        self.requests.fail_all(why)
