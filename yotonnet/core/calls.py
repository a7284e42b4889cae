"""Outstanding requests: correlation ids, deadlines and the load on each replier.

Sans-IO: no Twisted import. A reply is matched on its request id AND on the
node and channel the request went to (:meth:`CallTable.answer`): anyone may
address a REPLY frame to us, but only the replier we asked can complete the
call. Ids start at a random point, so they cannot be guessed either.

The context keeps one timer for all requests and asks this table when it
must next fire (:meth:`CallTable.next_deadline`) and which calls have run
out of time (:meth:`CallTable.expired`). One timer instead of one
``callLater`` per request keeps the request/reply hot path free of
timer-heap work.

Calls that share a timeout are kept in one insertion-ordered group, so their
deadlines are in order and finding the expired ones never scans live calls.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = ["Call", "CallTable"]

_new = tuple.__new__

# Deadlines are sums of floats: a timer set for one may fire a hair before it.
_SLACK = 1e-9


class Call(NamedTuple):
    """One request waiting for its reply (a tuple: built without a Python call)."""

    req_id: int
    #: whatever the caller waits on (the context keeps a Deferred here)
    waiter: Any
    #: node id of the replier the request went to
    dest: int
    channel_name: str
    timeout: float | None
    deadline: float | None
    #: id of the channel the request went out on
    channel: int = 0
    #: what a copy sent again needs: (tag, method, payload, the caller's route parents
    #: when it was sent (yotonnet.core.routing.RoutingTable.parents), copies sent again)
    request: Any = None


class CallTable:
    """Open calls by request id, with deadline groups and per-replier counts."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        # timeout value -> {req_id: call} in the order the calls were opened
        self._groups: dict[float, dict[int, Call]] = {}
        self._load: dict[int, int] = {}
        #: the request ids, from a random point below 2**62: 3 * 2**62 calls are needed
        #: to pass 2**64 (next(ids) is a C call, cheaper than a method)
        self.ids = itertools.count(secrets.randbits(62) + 1)

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, req_id: int) -> bool:
        return req_id in self._calls

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    def load(self, dest: int) -> int:
        """How many calls to node ``dest`` are waiting for their reply."""
        return self._load.get(dest, 0)

    def pick(self, holders: list[int]) -> int:
        """The replier for the next call: the least loaded, nearest first on a tie."""
        if len(holders) == 1:
            return holders[0]
        load = self._load
        best, best_load = holders[0], load.get(holders[0], 0)
        for node in holders[1:]:
            n = load.get(node, 0)
            if n < best_load:
                best, best_load = node, n
        return best

    def open(
        self, waiter: Any, dest: int, channel_name: str, timeout: float | None, now: float,
        channel: int = 0, request: Any = None, req_id: int = 0,
    ) -> Call:
        """Record a new call: with id ``req_id`` if given (taken from :attr:`ids` before
        its request was sent), else the next one."""
        if not req_id:
            req_id = next(self.ids)
        if timeout:
            call = _new(
                Call,
                (req_id, waiter, dest, channel_name, timeout, now + timeout, channel, request),
            )
            group = self._groups.get(timeout)
            if group is None:
                group = self._groups[timeout] = {}
            group[req_id] = call
        else:
            call = _new(
                Call, (req_id, waiter, dest, channel_name, timeout, None, channel, request)
            )
        self._calls[req_id] = call
        load = self._load
        load[dest] = load.get(dest, 0) + 1
        return call

    def retarget(self, req_id: int, dest: int) -> None:
        """Send open call ``req_id`` to node ``dest`` (it waited before being sent)."""
        call = self._calls[req_id]
        load = self._load
        left = load[call[2]] - 1
        if left:
            load[call[2]] = left
        else:
            del load[call[2]]
        load[dest] = load.get(dest, 0) + 1
        call = _new(Call, (call[0], call[1], dest, *call[3:]))
        self._calls[req_id] = call
        if call[5] is not None:
            self._groups[call[4]][req_id] = call

    def update(self, req_id: int, request: Any) -> None:
        """Replace what open call ``req_id`` keeps to be sent again."""
        call = self._calls[req_id]
        call = _new(Call, (*call[:7], request))
        self._calls[req_id] = call
        if call[5] is not None:
            self._groups[call[4]][req_id] = call

    def answer(self, req_id: int, source: int = -1, channel: int = -1) -> Call | None:
        """The call a reply from node ``source`` on ``channel`` completes (now closed), or
        None when it matches none: unknown id (late, or guessed), or another sender.
        Without ``source``, the call ``req_id`` whoever answers (see :meth:`pop`)."""
        call = self._calls.get(req_id)
        if call is None or source >= 0 and (call[2] != source or call[6] != channel):
            return None
        del self._calls[req_id]
        if call[5] is not None:
            # An emptied group stays until the next expiry scan: a caller making one
            # call at a time would otherwise create and drop a dict per call.
            del self._groups[call[4]][req_id]
        load = self._load
        dest = call[2]
        left = load[dest] - 1
        if left:
            load[dest] = left
        else:
            del load[dest]
        return call

    def pop(self, req_id: int) -> Call | None:
        """Forget a call (failed or cancelled); None if it is not open."""
        return self.answer(req_id)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any open call, or None if none has one."""
        earliest = None
        groups = self._groups
        for timeout in [t for t, group in groups.items() if not group]:
            del groups[timeout]  # emptied since the last scan (see pop)
        for group in groups.values():
            deadline = next(iter(group.values())).deadline
            if earliest is None or deadline < earliest:  # type: ignore[operator]
                earliest = deadline
        return earliest

    def expired(self, now: float) -> list[Call]:
        """The open calls whose deadline has passed, oldest first in each group.

        They stay open: the caller pops each as it fails it. A clock that goes
        backwards only delays expiry until the calls opened before the step
        are due, since each group is assumed to be in deadline order.
        """
        due: list[Call] = []
        for group in self._groups.values():
            for call in group.values():
                if call.deadline > now + _SLACK:  # type: ignore[operator]
                    break
                due.append(call)
        return due
