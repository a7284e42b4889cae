"""The IOPub messages of a Jupyter frontend process, in order, kept for a frontend that comes back.

ZMQ's PUB socket gives a subscriber what is published while it is connected
and nothing else: a frontend that reconnects (a new client on the same
connection file, a frontend that closed its sockets and opened them again)
has lost whatever went out meanwhile, and whatever sat unread in its old
socket. :class:`IOPubLog` keeps the last messages, sent or not, with a
cursor at the next one to send:

* while no frontend listens, the cursor stays where it is: what is published
  waits, and goes out once one subscribes again (up to the bounds, after
  which the oldest waiting ones are counted as lost);
* a frontend that names the last message it saw (its ``msg_id``) moves the
  cursor back to just after it (:meth:`rewind_after`), so its next
  subscription gets everything it missed, in order, the same messages with
  the same ids, before anything new.

No sockets here: the frontend process sends what :meth:`to_send` gives and says
so with :meth:`advance`.
"""

from __future__ import annotations

from collections import deque

#: messages kept (sent and waiting)
KEEP_MESSAGES = 10_000
#: bytes kept (sent and waiting); the newest message is kept whatever its size
KEEP_BYTES = 64 * 1024 * 1024


class IOPubLog:
    """IOPub messages (their frames, serialized) in publication order, and a send cursor."""

    def __init__(self, keep_messages: int = KEEP_MESSAGES, keep_bytes: int = KEEP_BYTES) -> None:
        if keep_messages < 1 or keep_bytes < 1:
            raise ValueError("an IOPub log keeps at least one message and one byte")
        self.keep_messages = keep_messages
        self.keep_bytes = keep_bytes
        self._entries: deque[tuple[str | None, list[bytes], int]] = deque()
        #: number (from the start) of the oldest message kept
        self.base = 0
        #: number of the next message to send
        self.cursor = 0
        self.bytes = 0
        #: messages that were dropped from the log before they were sent
        self.lost = 0
        self._numbers: dict[str, int] = {}

    @property
    def end(self) -> int:
        """The number the next message appended will have."""
        return self.base + len(self._entries)

    def waiting(self) -> int:
        """Messages appended and not sent yet."""
        return self.end - self.cursor

    def append(self, msg_id: str | None, frames: list[bytes]) -> None:
        """Keep a new message (to be sent after those waiting)."""
        size = sum(len(f) for f in frames)
        if msg_id is not None:
            self._numbers[msg_id] = self.end
        self._entries.append((msg_id, frames, size))
        self.bytes += size
        while len(self._entries) > 1 and (len(self._entries) > self.keep_messages
                                          or self.bytes > self.keep_bytes):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        msg_id, _, size = self._entries.popleft()
        self.bytes -= size
        if msg_id is not None and self._numbers.get(msg_id) == self.base:
            del self._numbers[msg_id]
        if self.cursor <= self.base:
            self.lost += 1
            self.cursor = self.base + 1
        self.base += 1

    def to_send(self) -> list[bytes] | None:
        """The frames of the next message to send, or None when all went."""
        if self.cursor >= self.end:
            return None
        return self._entries[self.cursor - self.base][1]

    def advance(self) -> None:
        """The message :meth:`to_send` gave was sent."""
        if self.cursor < self.end:
            self.cursor += 1

    def holds(self, msg_id: str) -> bool:
        """Whether the message ``msg_id`` is still kept."""
        number = self._numbers.get(msg_id)
        return number is not None and number >= self.base

    def rewind_after(self, msg_id: str) -> tuple[int, int] | None:
        """Send again everything after the message ``msg_id`` (the last one a frontend
        saw). Returns (how many will be sent again, how many waited anyway), or None
        when no kept message has that id (too old, or never published here): the
        cursor then stays."""
        number = self._numbers.get(msg_id)
        if number is None or number < self.base:
            return None
        start = number + 1
        again = max(0, self.cursor - start)
        waited = self.end - max(start, self.cursor)
        self.cursor = min(self.cursor, start)
        return again, waited

    def oldest_id(self) -> str | None:
        """The id of the oldest kept message that has one."""
        for msg_id, _, _ in self._entries:
            if msg_id is not None:
                return msg_id
        return None
