"""What broker, kernel and clients agree on, as plain data and pure state machines.

No Twisted here: the channel names of a kernel, the status and output kinds,
the bounded output history (:class:`OutputHistory`), the splitter that finds
the kernel's end-of-execution markers in its stdout/stderr bytes
(:class:`MarkerSplitter`), and the client's merge of history and live output
into one stream with no gap and no duplicate (:class:`OutputMerger`).

Every output message is a dict ``{"seq", "kind", "text", "exec", "user"}``:
``seq`` counts up by one per message of a broker, so a client can tell a
message it has (drop it) from one it missed (fetch it from the history).
``text`` is always what a terminal shows. Results and displays may carry
more, as Jupyter sends them, intact (see :data:`RICH_FIELDS`): ``data`` (a
MIME bundle such as ``{"text/plain": ..., "image/png": ...}``), ``metadata``,
``transient`` (``display_id``), ``execution_count``, ``wait`` (of
clear_output) and ``error`` (``ename``, ``evalue``, ``traceback``). The
``execute`` record of an execution also names the client that ran it
(``client``: its public id) and, when that client gave one, ``parent``: the
Jupyter header of the request that ran the code (see :mod:`.frontend`); an
``end`` record closes every execution that started, with its ``status``.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, NamedTuple

from ..core.names import validate_channel_name

# --- status (the "state" field of the status channel)

STARTING = "starting"
IDLE = "idle"
BUSY = "busy"
#: the process is alive but its interpreter does not answer (e.g. C code holding the GIL)
VERY_BUSY = "very-busy"
DEAD = "dead"
RESTARTING = "restarting"
STATES = (STARTING, IDLE, BUSY, VERY_BUSY, DEAD, RESTARTING)

# --- output kinds

STDOUT = "stdout"
STDERR = "stderr"
#: code someone ran (text: the code; like Jupyter's execute_input)
EXECUTE = "execute"
#: the value of a final expression (text: its repr)
RESULT = "result"
#: an exception (text: the traceback)
ERROR = "error"
#: an answer typed to input() (text: prompt and answer; the answer hidden for passwords)
STDIN = "stdin"
JOIN = "join"
LEAVE = "leave"
#: the broker's own notes: kernel started, died, restarted
SYSTEM = "system"
#: Jupyter's display_data (text: its text/plain; data: the MIME bundle)
DISPLAY = "display"
#: Jupyter's update_display_data: new data for the display of transient.display_id
UPDATE_DISPLAY = "update_display"
#: Jupyter's clear_output (text empty; wait: clear when the next output comes)
CLEAR_OUTPUT = "clear_output"
#: an execution ended, all its output was published before (text empty; status: "ok" or
#: "error"): what tells everyone, not only its runner, that it is over (Jupyter's idle)
END = "end"
KINDS = (STDOUT, STDERR, EXECUTE, RESULT, ERROR, STDIN, JOIN, LEAVE, SYSTEM, DISPLAY,
         UPDATE_DISPLAY, CLEAR_OUTPUT, END)
#: the fields an output message may carry beside seq, kind, text, exec and user
RICH_FIELDS = ("data", "metadata", "transient", "execution_count", "wait", "error",
               "parent", "client", "status")
#: the most a request's ``parent`` (a Jupyter message header) may weigh
MAX_PARENT = 4096


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (Jupyter kernels colour their tracebacks)."""
    return _ANSI.sub("", text)


def channel_names(kernel: str) -> dict[str, str]:
    """The channels of kernel ``kernel``: output (pub/sub), status and presence (state),
    control (req/rep, served by the broker)."""
    validate_channel_name(kernel)
    base = f"kernel.{kernel}"
    return {
        "output": f"{base}.output",
        "status": f"{base}.status",
        "presence": f"{base}.presence",
        "control": f"{base}.control",
    }


def client_channel_name(kernel: str, client_id: str) -> str:
    """The req/rep channel a client serves, so the broker can ask that client (and only
    it) for the input() of code it ran. ``client_id`` is a secret between client and
    broker: whoever knew it could serve this channel too (see :func:`public_client_id`)."""
    return validate_channel_name(f"kernel.{kernel}.client.c{client_id}")


def public_client_id(client_id: str) -> str:
    """What others see of a client (presence): a digest of its id, not the id itself,
    which names its input channel and so must not be handed to every attached user."""
    return hashlib.sha256(b"yotonnet-kernel-client:" + client_id.encode()).hexdigest()[:16]


def check_parent(value: Any) -> dict[str, Any] | None:
    """``value`` if it may be an execution's ``parent``: None, or a Jupyter message header
    (a dict with a str ``msg_id``, plain JSON values, at most :data:`MAX_PARENT`)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("msg_id"), str):
        raise ValueError("execute: parent must be None or a Jupyter header (a dict with a "
                         "str 'msg_id')")
    if _weight(value, 0) > MAX_PARENT or not _plain(value, 0):
        raise ValueError(f"execute: parent must be plain JSON of at most {MAX_PARENT} bytes")
    return value


def _plain(value: Any, depth: int) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth > 4:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return False


def validate_kernel_name(name: str) -> str:
    """A kernel name is one dotted channel-name word or more (letters, digits, _ and -)."""
    try:
        channel_names(name)
    except ValueError as e:
        raise ValueError(f"bad kernel name {name!r}: {e}") from None
    return name


# --- the kernel's end-of-execution markers


def marker_prefix(token: str) -> bytes:
    """The start of an end marker: NUL, ESC, ``YTN``, the kernel's secret token, ``:``.

    The kernel writes ``prefix + execution id + NUL`` to stdout and stderr
    after each execution's output; the broker cuts it out, and so knows which
    execution each byte belongs to however the reads of the two pipes and the
    control pipe interleave. The token is random per kernel process, so user
    output cannot forge a marker by accident.
    """
    return b"\x00\x1bYTN" + token.encode("ascii") + b":"


class Frame(NamedTuple):
    """A record the kernel wrote in its output stream, in order with the text around it:
    ``prefix + b"D" + payload + NUL``, the payload JSON (which never holds a raw NUL),
    e.g. a ``display()`` and its MIME bundle."""

    payload: bytes


def frame(token: str, payload: bytes) -> bytes:
    """The bytes of a :class:`Frame` for a kernel with secret ``token``."""
    if b"\x00" in payload:
        raise ValueError("a frame's payload holds no NUL")
    return marker_prefix(token) + b"D" + payload + b"\x00"


class MarkerSplitter:
    """Splits a pipe's byte stream into output bytes, end markers and frames.

    ``feed(data)`` returns a list of items, each ``bytes`` (output), an
    ``int`` (the id of an execution whose output on this pipe is complete) or
    a :class:`Frame`. A marker or frame cut across two reads is held back
    until it is whole (a frame up to ``MAX_FRAME`` bytes).
    """

    MAX_ID_DIGITS = 20
    MAX_FRAME = 64 << 20

    def __init__(self, token: str) -> None:
        self.prefix = marker_prefix(token)
        self._held = b""

    def feed(self, data: bytes) -> list[bytes | int]:
        buf = self._held + data if self._held else data
        self._held = b""
        out: list[bytes | int] = []
        prefix = self.prefix
        start = 0
        while True:
            at = buf.find(prefix, start)
            if at < 0:
                break
            body = at + len(prefix)
            if buf[body:body + 1] == b"D":
                end = buf.find(b"\x00", body + 1)
                if end < 0:
                    if len(buf) - body > self.MAX_FRAME:
                        at += 1  # too long to be a frame: output after all
                        if at > start:
                            out.append(buf[start:at])
                        start = at
                        continue
                    if at > start:
                        out.append(buf[start:at])
                    self._held = buf[at:]
                    return out
                if at > start:
                    out.append(buf[start:at])
                out.append(Frame(bytes(buf[body + 1:end])))
                start = end + 1
                continue
            end = buf.find(b"\x00", at + len(prefix))
            if end < 0:
                if len(buf) - at - len(prefix) > self.MAX_ID_DIGITS:
                    # Not a marker after all: a NUL never came. Keep it as output.
                    at += 1
                    if at > start:
                        out.append(buf[start:at])
                    start = at
                    continue
                if at > start:
                    out.append(buf[start:at])
                self._held = buf[at:]
                return out
            digits = buf[at + len(prefix):end]
            if digits.isdigit():
                if at > start:
                    out.append(buf[start:at])
                out.append(int(digits))
                start = end + 1
            else:
                out.append(buf[start:at + 1])
                start = at + 1
        # Hold back a tail that might be the beginning of a marker.
        tail = buf[start:]
        keep = 0
        for n in range(min(len(prefix) - 1, len(tail)), 0, -1):
            if prefix.startswith(tail[-n:]):
                keep = n
                break
        if keep:
            self._held = tail[-keep:]
            tail = tail[:-keep]
        if tail:
            out.append(tail)
        return out

    def flush(self) -> bytes:
        """What is held back (the pipe closed: it was output after all)."""
        held, self._held = self._held, b""
        return held


# --- history on the broker


def message_size(message: dict[str, Any]) -> int:
    """What a message weighs in the history: its text and any rich data (strings and
    bytes counted by length, other values a few bytes each)."""
    size = len(message["text"])
    for key in RICH_FIELDS:
        value = message.get(key)
        if value is not None:
            size += _weight(value, 0)
    return size


def _weight(value: Any, depth: int) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if depth > 20:
        return 8
    if isinstance(value, dict):
        return sum(len(str(k)) + _weight(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_weight(v, depth + 1) for v in value) + len(value)
    return 8


class OutputHistory:
    """The recent output messages, bounded by count and by text size.

    ``since(seq)`` gives what a client that has everything up to ``seq`` is
    missing, oldest first, in pages of at most ``page_bytes`` of text.
    """

    def __init__(self, max_messages: int = 10_000, max_bytes: int = 8 << 20) -> None:
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"history must keep at least 1 message, not {max_messages!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"history bytes must be a positive integer, not {max_bytes!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[dict[str, Any]] = deque()
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self.last_seq = 0
        #: messages pushed out of the buffer by newer ones
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (last_seq + 1 when empty)."""
        return self._messages[0]["seq"] if self._messages else self.last_seq + 1

    def append(self, message: dict[str, Any]) -> None:
        seq = message["seq"]
        if seq != self.last_seq + 1:
            raise ValueError(f"history expects seq {self.last_seq + 1}, got {seq}")
        size = message_size(message)
        self._messages.append(message)
        self._sizes.append(size)
        self._bytes += size
        self.last_seq = seq
        while len(self._messages) > self.max_messages or (
            self._bytes > self.max_bytes and len(self._messages) > 1
        ):
            self._messages.popleft()
            self._bytes -= self._sizes.popleft()
            self.evicted += 1

    def since(self, seq: int | None, page_bytes: int = 1 << 20,
              last: int | None = None) -> dict[str, Any]:
        """Messages after ``seq`` (None: the newest ``last`` messages, or all held).

        Returns ``{"first", "last", "messages"}``: the oldest seq held, the
        newest seq published, and at most ``page_bytes`` of text and rich
        data (see :func:`message_size`; at least one message) starting right after ``seq``.
        """
        msgs = self._messages
        if seq is None:
            n = len(msgs) if last is None else max(0, min(last, len(msgs)))
            start = len(msgs) - n
        else:
            start = max(0, seq + 1 - self.first_seq)
        page: list[dict[str, Any]] = []
        size = 0
        for message, weight in islice(zip(msgs, self._sizes), start, None):
            size += weight
            if page and size > page_bytes:
                break
            page.append(message)
        return {"first": self.first_seq, "last": self.last_seq, "messages": page}


# --- merge of history and live output on a client


class OutputMerger:
    """One stream of output messages, in seq order, each once, from history and live.

    The client subscribes to the live channel first, then asks for the
    history. Live messages that arrive while a fetch is out, or after a gap
    (a message this client never got: it joined late, its link broke, the
    broker published before it knew of the subscriber), wait here; the
    history fills the gap; then the waiting ones follow, minus what the
    history already gave. ``fetch(since)`` is called whenever history is
    needed; its answer goes to ``on_history``. ``deliver(message)`` gets each
    message once; ``lost(count)`` reports messages that the bounded history
    no longer held.
    """

    def __init__(
        self,
        deliver: Callable[[dict[str, Any]], object],
        fetch: Callable[[int | None], object],
        lost: Callable[[int], object] | None = None,
    ) -> None:
        self._deliver = deliver
        self._fetch = fetch
        self._lost = lost
        #: the seq of the last message delivered (0: none yet)
        self.last = 0
        self.fetching = False
        self._waiting: dict[int, dict[str, Any]] = {}
        self.duplicates = 0
        self.lost_total = 0
        self.started = False
        self._initial = False

    def start(self, since: int | None = None) -> None:
        """Ask for the history: from after ``since``, or (None) all the broker holds."""
        self.started = True
        if since is not None:
            self.last = since
        self._initial = since is None
        self._ask(since)

    def _ask(self, since: int | None) -> None:
        self.fetching = True
        self._fetch(since)

    def on_live(self, message: dict[str, Any]) -> None:
        seq = message["seq"]
        if self.fetching or not self.started:
            self._waiting[seq] = message
            return
        if seq <= self.last:
            self.duplicates += 1
            return
        if seq == self.last + 1:
            self.last = seq
            self._deliver(message)
            return
        self._waiting[seq] = message  # a gap: fill it from the history first
        self._ask(self.last)

    def on_history(self, reply: dict[str, Any]) -> None:
        messages = reply["messages"]
        if self._initial:
            # The first answer to "the newest N": start right before what it holds.
            self._initial = False
            start = messages[0]["seq"] - 1 if messages else reply["last"]
            self.last = max(self.last, start)
        if messages:
            first = messages[0]["seq"]
            if self.last and first > self.last + 1:
                self._report_lost(first - self.last - 1)
            for message in messages:
                if message["seq"] > self.last:
                    self.last = message["seq"]
                    self._deliver(message)
        elif self.last < reply["last"] and reply["first"] > self.last + 1:
            # Everything we miss was evicted already.
            self._report_lost(reply["first"] - self.last - 1)
            self.last = reply["first"] - 1
        if self.last < reply["last"]:
            self._ask(self.last)  # another page
            return
        self.fetching = False
        self._drain()

    def want(self, seq: int) -> None:
        """Make sure every message up to ``seq`` comes (e.g. the end of an execution whose
        last messages were published before the broker knew of this subscriber)."""
        if self.started and not self.fetching and self.last < seq:
            self._ask(self.last)

    def on_fetch_failed(self) -> None:
        """The history call failed: try again on the next live message."""
        self.fetching = False

    def _drain(self) -> None:
        waiting = self._waiting
        while waiting:
            nxt = self.last + 1
            message = waiting.pop(nxt, None)
            if message is not None:
                self.last = nxt
                self._deliver(message)
                continue
            for seq in [s for s in waiting if s <= self.last]:
                del waiting[seq]
                self.duplicates += 1
            if waiting:
                self._ask(self.last)  # a gap among those waiting
            return

    def _report_lost(self, count: int) -> None:
        self.lost_total += count
        if self._lost is not None:
            self._lost(count)
