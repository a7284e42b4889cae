"""Requests a replier node has lately taken, so that a copy sent again is served once.

Sans-IO. A caller sends an idempotent request again when the path it took
broke (:meth:`yotonnet.core.requests.Requests.routes_changed`); the first copy
may have arrived all the same, and either copy may come first. This node
remembers each idempotent request it took by (caller, request id): while it is
served, a copy is dropped (the reply will come); once answered, a copy gets
the same reply again, since the first may have been lost with the path.

Bounded: at most ``max_entries`` requests and ``max_reply_bytes`` of replies
kept, the oldest forgotten first. A copy of a request forgotten, or whose reply
was not kept, is served again: the method said that is harmless.
"""

from __future__ import annotations

__all__ = ["RecentRequests", "SERVING", "ANSWERED"]

#: the request is being served: its copy is dropped
SERVING = None
#: the request was answered but its reply not kept (too large for the budget)
ANSWERED = ()


class RecentRequests:
    """(caller, request id) -> SERVING, ANSWERED or the (status, payload) of its reply."""

    def __init__(self, max_entries: int, max_reply_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_reply_bytes = max_reply_bytes
        self.entries: dict[tuple[int, int], tuple | None] = {}
        self.reply_bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self.entries

    def get(self, key: tuple[int, int]) -> tuple | None:
        return self.entries.get(key)

    def taken(self, key: tuple[int, int]) -> None:
        """Request ``key`` is being served now."""
        entries = self.entries
        entries[key] = SERVING
        while len(entries) > self.max_entries:
            self._forget_oldest()

    def answered(self, key: tuple[int, int], status: int, payload: bytes) -> None:
        """Request ``key`` (if remembered) was answered: keep its reply, within budget."""
        entries = self.entries
        if entries.get(key, ANSWERED) is not SERVING:
            return  # not an idempotent request, forgotten, or answered already
        if len(payload) > self.max_reply_bytes:
            entries[key] = ANSWERED
            return
        entries[key] = (status, payload)
        self.reply_bytes += len(payload)
        while self.reply_bytes > self.max_reply_bytes:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        entries = self.entries
        reply = entries.pop(next(iter(entries)))
        if reply:
            self.reply_bytes -= len(reply[1])
