"""Request/reply in the core: choosing a replier, correlating, serving, answering.

Sans-IO. :class:`Requests` sends a local call to one replier (the least busy
reachable one, nearest on a tie), keeps it in a :class:`~.calls.CallTable`
until its reply, its deadline or the loss of its replier, serves requests
addressed to this node with a local :class:`~.interfaces.IReplierEnd`, and
forwards the others. A reply completes a call only when it comes from the
node the request went to, on its channel (:meth:`.calls.CallTable.answer`).

Deadlines share one timer: the core says when it must next fire
(``on_deadline(when)``, given by the layer that owns a clock) and expires
what is due when told (:meth:`Requests.expire`). Whatever waits for a call is
an :class:`~.interfaces.IWaiter` (a Deferred fits): the core calls its
``callback`` or ``errback`` and knows nothing more of it.

A node serves the calls addressed to it with its own repliers and those of
its leaves (:mod:`.leaves`), the least busy first: a call passed to a leaf
keeps its caller as source, and the leaf's reply is taken only for a call
the node passed it, and goes on in the node's name.

Across a reroute: when the routes move off the path a call took (as this
node's routes were when it was sent) because a link on it went, or fell
silent and is routed around, while the replier stays reachable, the request
or its reply may be lost or stuck. A method its repliers declared idempotent
(announced with their interest) is sent once more, flagged
:data:`~.wire.REQUEST_RESENT`, over the new path; the replier serves each
request id once (:mod:`.recent`) and answers a copy of one already answered
with the same reply. Any other call fails at once with ``ConnectionLost``,
which says it may have run, when a link of its path went; one on a silent
link waits, since the link may come back with it.

A leaf sees no paths (its hub routes for it), so its hub watches for it: the
idempotent requests it passes on for its leaves (:attr:`Requests.relayed`,
until their replies pass back) are sent again by the hub when their path
from it breaks. A leaf whose own hub link goes keeps its idempotent calls
and sends them again, to the same replier, once it is attached again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import errors
from .calls import Call, CallTable
from .codec import decode_object, encode_object
from .interfaces import IPeer, IWaiter
from .leaves import LEAF, LeafEntry
from .recent import ANSWERED, RecentRequests
from .routing import REP, path_in
from .topology import BUSY_LINK_COST
from .wire import (
    REPLY_DENIED,
    REPLY_ERROR,
    REPLY_NO_REPLIER,
    REPLY_OK,
    REQUEST_RESENT,
    Frame,
    FrameKind,
    reencode,
    reply_frame,
    request_frame,
)

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["Requests"]

_NEVER = float("inf")


class Requests:
    def __init__(
        self,
        node_id: int,
        topology: Topology,
        counters: dict[str, int],
        clock: Callable[[], float],
        on_deadline: Callable[[float], None],
        recent: RecentRequests | None = None,
        on_call_sent: Callable[[IPeer], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.topology = topology
        self.counters = counters
        self.clock = clock
        #: asked to call expire() at this time (earlier than any time asked before)
        self.on_deadline = on_deadline
        #: told the neighbour each call made here went out to (its reply comes back
        #: that way): the host may watch that link for it before it sleeps
        self.on_call_sent = on_call_sent
        self.calls = CallTable()
        #: channel id -> local replier ends (IReplierEnd)
        self.repliers: dict[int, list[Any]] = {}
        #: channel id -> local calling ends (a leaf's hub tells it who serves them)
        self.callers: dict[int, list[Any]] = {}
        # channel -> reachable repliers, nearest first; dropped when the picture changes
        self.holders: dict[int, list[int]] = {}
        topology.dependent_caches.append(self.holders)
        #: channel -> (its only replier, the neighbour toward it, the hop limit): what a
        #: call needs to be sent, dropped with the holders
        self.ways: dict[int, tuple[int, IPeer, int]] = {}
        topology.dependent_caches.append(self.ways)
        #: when the deadline timer fires (inf: not armed)
        self.deadline_at = _NEVER
        #: node id of the caller whose request a local replier is serving
        self.current_caller = 0
        #: a leaf's calls waiting for its hub's view to say who serves them:
        #: request id -> (channel, channel name, tag, method, payload)
        #: request id -> (channel, channel name, tag, method, payload, the replier a copy
        #: sent again goes back to if it still serves the channel, else 0)
        self.parked: dict[int, tuple[int, str, int, bytes, bytes, int]] = {}
        self._losses_seen = 0
        self._rises_seen = 0
        #: channel -> the method names (UTF-8) this node serves as idempotent, its
        #: leaves' included (set by Node.local_interests)
        self.idempotent_here: dict[int, frozenset[bytes]] = {}
        #: idempotent requests lately taken here, to serve each once
        self.recent = recent or RecentRequests(16_384, 4 << 20)
        # this node's route parents, kept with each call sent (None: ask the routing)
        self._routes: Any = None
        #: (leaf, request id) -> [replier, channel, tag, method, payload, route parents,
        #: copies]: idempotent requests passed on for a leaf and not yet answered, at
        #: most as many as recent_requests (the oldest forgotten first)
        self.relayed: dict[tuple[int, int], list] = {}

    # --- calls made here

    def request(
        self,
        channel: int,
        channel_name: str,
        tag: int,
        method: bytes,
        payload: bytes,
        timeout: float | None,
        waiter: IWaiter,
    ) -> int:
        """Send a call; ``waiter`` gets its outcome. Returns its request id (0: it failed
        at once, no replier being reachable)."""
        me = self.node_id
        route = self.ways.get(channel)
        if route is not None:
            dest, peer, hops = route
        else:
            holders = self.holders.get(channel)
            if holders is None:
                # A scan of the channel's holders: done once per routing change, not per
                # call.
                holders = self.holders[channel] = self.topology.routing.holders(channel, REP)
            if not holders:
                if self.topology.hub is None or self.topology.view_current:
                    waiter.errback(errors.NoResponders(
                        f"no replier for channel {channel_name!r} is reachable"))
                    return 0
                # A leaf whose hub has not yet said who serves this channel: the call
                # waits for its view (within its timeout).
                req_id = self._open(waiter, 0, channel_name, timeout, channel)
                self.parked[req_id] = (channel, channel_name, tag, method, payload, 0)
                return req_id
            # One replier (the usual case) needs no comparison of loads.
            dest = holders[0] if len(holders) == 1 else self.calls.pick(holders)
            if dest == me:
                req_id = self._open(waiter, dest, channel_name, timeout, channel, None)
                self.on_request(None, Frame(FrameKind.REQUEST, 0, tag, channel, me, me,
                                            req_id, payload, method))
                return req_id
            topology = self.topology
            peer = topology.hop_to(dest)
            if peer is None:
                waiter.errback(errors.NoResponders(f"replier for {channel_name!r} unreachable"))
                return 0
            hops = topology.hops or topology.hop_limit()
            if len(holders) == 1:
                self.ways[channel] = (dest, peer, hops)
        req_id = next(self.calls.ids)
        peer.send(request_frame(hops, tag, channel, me, dest, req_id, method, payload))
        # Recorded once the request is on its way, which is sooner: no reply can be read
        # before this returns to the reactor.
        routes = self._routes
        if routes is None:
            routes = self._routes = self.topology.routing.parents()
        # A leaf's picture of the replier goes with its hub link: whether a copy may be
        # sent after it dials again is known now (a node looks when its path breaks).
        idempotent = (None if self.topology.hub is None
                      else self._declared(dest, channel, method))
        self._open(waiter, dest, channel_name, timeout, channel,
                   (tag, method, payload, routes, 0, idempotent), req_id)
        if self.on_call_sent is not None:
            self.on_call_sent(peer)
        return req_id

    def _open(self, waiter: IWaiter, dest: int, channel_name: str, timeout: float | None,
              channel: int, request: Any = None, req_id: int = 0) -> int:
        req_id, _, _, _, _, deadline, _, _ = self.calls.open(
            waiter, dest, channel_name, timeout, self.clock(), channel, request, req_id
        )
        # Calls with the usual timeout expire after the one the timer waits for.
        if deadline is not None and deadline < self.deadline_at:
            self.deadline_at = deadline
            self.on_deadline(deadline)
        return req_id

    def _send_parked(self) -> None:
        """A leaf's view came: the calls that waited for it go, or fail."""
        parked, self.parked = self.parked, {}
        routing = self.topology.routing
        for req_id, (channel, name, tag, method, payload, before) in parked.items():
            if req_id not in self.calls:
                continue  # cancelled or timed out meanwhile
            holders = routing.holders(channel, REP)
            if not holders:
                self.finish(req_id, errors.NoResponders(
                    f"no replier for channel {name!r} is reachable"))
                continue
            # A copy goes back to the replier that may have the first, to be served once.
            dest = before if before in holders else self.calls.pick(holders)
            self.calls.retarget(req_id, dest)
            if dest != self.node_id:
                self.calls.update(req_id, (tag, method, payload, routing.parents(),
                                           1 if before else 0,
                                           self._declared(dest, channel, method)))
            if before:
                tag |= REQUEST_RESENT
                self.counters["requests_resent"] += 1
            topology = self.topology
            data = request_frame(topology.hop_limit(), tag, channel, self.node_id, dest,
                                 req_id, method, payload)
            if not topology.unicast(dest, data):
                self.finish(req_id, errors.NoResponders(f"replier for {name!r} unreachable"))

    def cancel(self, req_id: int) -> None:
        """Forget a call (its waiter was cancelled): a late reply is dropped."""
        self.calls.pop(req_id)
        self.parked.pop(req_id, None)

    def finish(self, req_id: int, result: Any) -> None:
        if self.parked:
            self.parked.pop(req_id, None)
        call: Call | None = self.calls.pop(req_id)
        if call is None:
            return
        if isinstance(result, BaseException):
            call.waiter.errback(result)
        else:
            call.waiter.callback(result)

    def expire(self, now: float) -> None:
        """The deadline timer fired: fail the calls whose time is up, and say when to fire
        next."""
        self.deadline_at = _NEVER
        calls = self.calls
        for call in calls.expired(now):
            self.finish(
                call.req_id,
                errors.TimeoutError(
                    f"no reply on channel {call.channel_name!r} within {call.timeout:g} s"
                ),
            )
        deadline = calls.next_deadline()
        if deadline is not None:
            self.deadline_at = deadline
            self.on_deadline(deadline)

    def fail_all(self, why: str) -> None:
        for call in self.calls:
            self.finish(call.req_id, errors.ConnectionLost(why))

    def routes_changed(self) -> None:
        """Fail the calls whose replier became unreachable, and send again (or fail)
        those whose path broke (see the module docstring). Only a lost link or record
        can do either, and the check needs the routes: none when the mesh only grew."""
        self._routes = None
        if self.parked and self.topology.view_current:
            self._send_parked()
        routing = self.topology.routing
        lost = routing.losses != self._losses_seen
        rose = routing.rises != self._rises_seen
        self._losses_seen, self._rises_seen = routing.losses, routing.rises
        if not (lost or rose):
            return  # more nodes, links or cheaper ones: no path a call took is worse
        if self.relayed:
            self._relayed_paths_changed()
        if not self.calls:
            return
        reachable = routing.reachable() if lost else None
        routes = None
        for call in self.calls:
            if call.req_id in self.parked:
                continue
            request = call.request
            if reachable is not None and call.dest not in reachable:
                if (request is not None and not request[4] and request[5]
                        and self.topology.hub is None and self.topology.leaf_told):
                    # A leaf whose hub link went: the call is sent again once it is
                    # attached again (within its timeout).
                    self.parked[call.req_id] = (call.channel, call.channel_name,
                                                request[0], request[1], request[2],
                                                call.dest)
                    continue
                self.finish(
                    call.req_id,
                    errors.ConnectionLost(
                        f"replier node {call.dest:016x} became unreachable before replying"
                    ),
                )
                continue
            if request is None:
                continue
            if routes is None:
                routes = routing.parents()
            if request[3] is not routes:
                broken = self._path_broken(call.dest, request[3], routes)
                if broken is not None:
                    self._path_lost(call, broken)

    def _path_broken(self, dest: int, then: Any, now: Any) -> bool | None:
        """Whether the path to ``dest`` in the routes ``then`` broke in the routes
        ``now``: True if a link of it went, False if traffic goes around a silent one,
        None if it still carries the call (or is not known, as a leaf's, whose hub
        does the routing)."""
        me = self.node_id
        path = path_in(then, me, dest)
        if path is None or path == path_in(now, me, dest):
            return None
        routing = self.topology.routing
        avoided = False
        for a, b in zip(path, path[1:]):
            cost = routing.link_cost(a, b)
            if cost is None:
                return True
            avoided = avoided or cost >= BUSY_LINK_COST
        return False if avoided else None

    def _declared(self, node: int, channel: int, method: bytes) -> bool:
        """Whether ``node``'s record says its repliers of ``channel`` declared
        ``method`` idempotent."""
        interest = self.topology.routing.interest_of(node, channel)
        return interest is not None and bool(interest.idempotent) and (
            method.decode("utf-8", "surrogatepass") in interest.idempotent)

    def _path_lost(self, call: Call, gone: bool) -> None:
        """``call``'s path broke (``gone``: a link of it went; else one is silent) with
        its replier still reachable: send it again over the new path if its method is
        idempotent there (once); else fail it if a link went."""
        tag, method, payload, _, copies, idempotent = call.request
        dest = call.dest
        name = method.decode("utf-8", "surrogatepass")
        if idempotent is None:
            idempotent = self._declared(dest, call.channel, method)
        if copies == 0 and idempotent:
            topology = self.topology
            self.calls.update(call.req_id, (tag, method, payload, topology.routing.parents(),
                                            1, idempotent))
            self.counters["requests_resent"] += 1
            data = request_frame(topology.hop_limit(), tag | REQUEST_RESENT, call.channel,
                                 self.node_id, dest, call.req_id, method, payload)
            if topology.unicast(dest, data):
                return
            why = "no path took it again"
        elif not gone:
            return  # the silent link may yet deliver it, and its reply come back
        elif copies:
            why = "it had been sent again once already"
        else:
            why = "its method is not declared idempotent, so it was not sent again"
        self.finish(call.req_id, errors.ConnectionLost(
            f"the path to replier node {dest:016x} broke while {name!r} on channel "
            f"{call.channel_name!r} was in flight: it may or may not have run, and {why}"
        ))

    # --- requests from neighbours, and replies to them

    def on_request(self, peer: IPeer | None, frame: Frame) -> None:
        """A request from neighbour ``peer`` (None: made here): passed on toward the node
        it is addressed to, else served here with a local replier, or passed to a
        leaf's (served in this method itself: one call less on every call's way)."""
        _, hops, tag, channel, source, dest, req_id, payload, method = frame
        topology = self.topology
        me = self.node_id
        # The way back to the caller; a caller whose reply goes back that way already
        # needs no learning.
        back = topology.hop_links.get(source)
        if peer is not None and back is not peer:
            topology.learn(source, peer)
        if dest != me:
            if topology.onward(hops):
                if peer is not None and peer.role == LEAF and self._declared(dest, channel,
                                                                             method):
                    self._relay(source, req_id, dest, channel, tag, method, payload)
                topology.unicast(dest, reencode(frame, hops - 1))
            return
        if tag & REQUEST_RESENT:
            tag ^= REQUEST_RESENT
        if self.idempotent_here and source != me:
            methods = self.idempotent_here.get(channel)
            if methods is not None and method in methods and self._copy(source, req_id,
                                                                         channel):
                return
        reps = self.repliers.get(channel)
        if reps and len(reps) == 1 and not reps[0].in_flight:
            rep = reps[0]  # an idle replier here: no leaf's is less busy
        else:
            leaves = topology.leaves
            if leaves.entries:
                leaf = leaves.pick_replier(channel)
                if leaf is not None and (
                    not reps or leaf.in_flight < min(r.in_flight for r in reps)
                ):
                    self.pass_to_leaf(leaf, channel, source, req_id, tag, method, payload)
                    return
            if not reps:
                self.reply(channel, source, req_id, REPLY_NO_REPLIER,
                           b"no replier here any more")
                return
            rep = reps[0] if len(reps) == 1 else min(reps, key=lambda r: r.in_flight)
        self.current_caller = source  # read by handlers (yotonnet.identity.caller)
        outcome = rep.handle_request(source, req_id, tag, method, payload)
        if outcome is None:
            return  # the replier answers later (reply_ok, reply_error)
        # A handler that returned a plain value is answered at once: reply_ok written
        # out, since this is every successful call's path.
        try:
            body = encode_object(outcome[0])
        except errors.MessageTypeError:
            self.reply_ok(channel, source, req_id, outcome[0])  # it reports what failed
            return
        if source == me:
            self.accept(channel, req_id, REPLY_OK, body)
            return
        data = reply_frame(topology.hops or topology.hop_limit(), REPLY_OK, channel, me,
                           source, req_id, body)
        if back is not None:
            back.send(data)
        else:
            topology.unicast(source, data)
        if self.recent.entries:  # (once the reply is written: a copy comes later)
            self.recent.answered((source, req_id), REPLY_OK, body)

    def _relay(self, leaf: int, req_id: int, dest: int, channel: int, tag: int,
               method: bytes, payload: bytes) -> None:
        """Watch the path of an idempotent request passed on for a leaf."""
        relayed = self.relayed
        key = (leaf, req_id)
        if key in relayed:
            return  # the leaf's own copy, sent again: already watched
        relayed[key] = [dest, channel, tag & ~REQUEST_RESENT, method, payload,
                        self.topology.routing.parents(), 0]
        if len(relayed) > self.recent.max_entries:
            del relayed[next(iter(relayed))]

    def _relayed_paths_changed(self) -> None:
        """Send again the leaves' idempotent requests whose path from here broke (once);
        forget those whose replier is gone (the leaf's view says so)."""
        routing = self.topology.routing
        routes = routing.parents()
        for key, entry in list(self.relayed.items()):
            dest, channel, tag, method, payload, then, copies = entry
            if dest not in routes:
                del self.relayed[key]
            elif then is not routes and self._path_broken(dest, then, routes) is not None:
                if copies:
                    del self.relayed[key]
                    continue
                entry[5], entry[6] = routes, 1
                self.counters["requests_resent"] += 1
                topology = self.topology
                topology.unicast(dest, request_frame(topology.hop_limit(), tag | REQUEST_RESENT,
                                                     channel, key[0], dest, key[1], method,
                                                     payload))

    def _copy(self, source: int, req_id: int, channel: int) -> bool:
        """Whether an idempotent request is a copy of one taken here: dropped while it
        is served, answered again once it was; else it is remembered as taken."""
        recent = self.recent
        key = (source, req_id)
        if key not in recent:
            recent.taken(key)
            return False
        reply = recent.get(key)
        if reply == ANSWERED:  # its reply not kept: serving it again is harmless
            recent.taken(key)
            return False
        self.counters["requests_duplicate"] += 1
        if reply is not None:
            status, payload = reply
            topology = self.topology
            topology.unicast(source, reply_frame(topology.hop_limit(), status, channel,
                                                 self.node_id, source, req_id, payload))
        return True

    def pass_to_leaf(self, leaf: LeafEntry, channel: int, source: int, req_id: int,
                     tag: int, method: bytes, payload: bytes) -> None:
        self.topology.leaves.passed(leaf, source, req_id, channel)
        leaf.peer.send(request_frame(self.topology.hop_limit(), tag, channel, source,
                                     leaf.peer.peer_id, req_id, method, payload))

    def leaf_gone(self, leaf: LeafEntry) -> None:
        """A leaf left: the calls passed to it fail at once."""
        for (caller, req_id), channel in list(leaf.serving.items()):
            self.reply(channel, caller, req_id, REPLY_NO_REPLIER,
                       b"the replier (a leaf of this node) left before answering")
        leaf.serving.clear()

    def reply_ok(self, channel: int, dest: int, req_id: int, value: Any) -> None:
        """Answer a request served here with ``value``."""
        try:
            payload = encode_object(value)
        except errors.MessageTypeError as e:
            self.reply(
                channel, dest, req_id, REPLY_ERROR,
                encode_object(["MessageTypeError", f"reply not encodable: {e}", ""]),
            )
            return
        self.reply(channel, dest, req_id, REPLY_OK, payload)

    def reply_error(
        self, channel: int, dest: int, req_id: int, kind: str, message: str, traceback: str
    ) -> None:
        """Answer a request served here with the error its handler raised."""
        body = [kind, message, traceback]
        try:
            payload = encode_object(body)
        except errors.MessageTypeError:  # e.g. a message with lone surrogates
            payload = encode_object([kind, repr(message), repr(traceback)])
        self.reply(channel, dest, req_id, REPLY_ERROR, payload)

    def reply(self, channel: int, dest: int, req_id: int, status: int, payload: bytes) -> None:
        me = self.node_id
        if dest == me:
            self.accept(channel, req_id, status, payload)
            return
        if self.recent.entries:
            self.recent.answered((dest, req_id), status, payload)
        topology = self.topology
        topology.unicast(
            dest, reply_frame(topology.hop_limit(), status, channel, me, dest, req_id, payload)
        )

    def on_reply(self, peer: IPeer | None, frame: Frame) -> None:
        """A reply from neighbour ``peer`` (None: made here): passed on toward the node
        it is addressed to, else it completes the call it answers."""
        _, hops, status, channel, source, dest, req_id, payload, _ = frame
        if peer is not None and peer.role == LEAF:
            # Only for a call this node passed that leaf; on in this node's name.
            if self.topology.leaves.answered(peer, dest, req_id, channel):
                self.reply(channel, dest, req_id, status, payload)
            else:
                self.counters["replies_dropped"] += 1
            return
        if dest != self.node_id:
            if self.relayed:
                self.relayed.pop((dest, req_id), None)
            if self.topology.onward(hops):
                self.topology.unicast(dest, reencode(frame, hops - 1))
            return
        # Only the node the request went to, on the channel it went out on, answers it.
        call = self.calls.answer(req_id, source, channel)
        if call is None:
            # Late (cancelled or timed out), or not from the replier we asked: dropped.
            self.counters["replies_dropped"] += 1
            return
        if status != REPLY_OK:
            self._fail(call, status, payload)
            return
        try:
            value = decode_object(payload)
        except Exception as e:  # noqa: BLE001 - a malformed reply fails only its call
            call.waiter.errback(errors.DecodeError(f"malformed reply: {e}"))
            return
        call.waiter.callback(value)

    def accept(self, channel: int, req_id: int, status: int, payload: bytes) -> None:
        """A reply made on this node to a call made here: taken as any reply is."""
        me = self.node_id
        self.on_reply(None, Frame(FrameKind.REPLY, 0, status, channel, me, me, req_id,
                                  payload, b""))

    def _fail(self, call: Call, status: int, payload: bytes) -> None:
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
