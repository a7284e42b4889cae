"""Which Yoton slots a bridge carries, and how their payloads translate.

Sans-IO. A Yoton channel lives at a *slot*: its base name, its message type's
extension (``txt``, ``bin``, ``obj``) and a pattern word, lowercased and
hashed (see :func:`yotonnet.yoton.wire.slot_hash`). Each side of a pattern
sends on its own slot: a PubChannel on ``pub-sub`` and its SubChannels answer
(sync mode ``full``/``ok``) on ``sub-pub``; a ReqChannel on ``req-rep`` and a
RepChannel on ``rep-req``; a StateChannel on ``state``. A slot hash cannot be
turned back into a name, so a bridge is told which channels to carry:
:class:`YotonChannel` names one, and :class:`SlotMap` indexes them both ways
(Yoton slot hash -> channel, yotonnet channel id -> channel).

TEXT and BINARY payloads are the same bytes on both sides; OBJECT payloads are
decoded from one encoding and written in the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.codec import decode_object, encode_object
from ..core.messages import message_type
from ..core.names import PATTERNS, channel_id, validate_channel_name
from ..core.routing import REP, STATE, SUB, Interest
from . import objects
from .wire import TYPE_EXTENSIONS, slot_hash, slot_name

#: what a package on a carried slot is, seen from the Yoton side
PUB, FLOW, STATE_SLOT, REQ, REPL = "pub", "flow", "state", "req", "rep"


@dataclass(frozen=True)
class YotonChannel:
    """One channel carried between Yoton and the mesh.

    ``name`` is the yotonnet channel name; ``yoton_name`` the Yoton slot base
    name when it differs (Yoton allows any string). ``pattern`` is
    ``"pubsub"``, ``"reqrep"`` or ``"state"``; ``message_type`` is TEXT,
    BINARY or OBJECT (request/reply is always OBJECT, as in Yoton).
    ``subscribe``: the Yoton side has subscribers (pubsub), so the mesh sends
    it the channel's messages. ``serve``: the Yoton side has a RepChannel
    (reqrep), so the mesh may send it requests. Yoton announces neither, which
    is why they are stated here.
    """

    name: str
    pattern: str = "pubsub"
    message_type: str = "TEXT"
    yoton_name: str | None = None
    subscribe: bool = True
    serve: bool = False

    def __post_init__(self) -> None:
        validate_channel_name(self.name)
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"YotonChannel {self.name!r}: pattern must be one of {', '.join(PATTERNS)}, "
                f"not {self.pattern!r}"
            )
        mtype = self.message_type
        if not isinstance(mtype, str):
            mtype = getattr(mtype, "name", mtype)
            object.__setattr__(self, "message_type", mtype)
        if self.pattern == "reqrep" and mtype != "OBJECT":
            object.__setattr__(self, "message_type", "OBJECT")
        if self.message_type not in TYPE_EXTENSIONS:
            raise ValueError(
                f"YotonChannel {self.name!r}: Yoton carries TEXT, BINARY or OBJECT, "
                f"not {self.message_type!r}"
            )
        if self.yoton_name is not None and (
            not isinstance(self.yoton_name, str) or not self.yoton_name.strip()
        ):
            raise ValueError(f"YotonChannel {self.name!r}: yoton_name must be a non-empty str")


@dataclass
class Carried:
    """A :class:`YotonChannel` with its ids, slots and translation worked out."""

    spec: YotonChannel
    channel: int
    tag: int
    type_name: str
    slots: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    def to_mesh(self, data: bytes) -> bytes:
        """A Yoton payload as a yotonnet payload of the same type."""
        if self.type_name == "OBJECT":
            return encode_object(objects.decode(data))
        if self.type_name == "TEXT":
            data.decode("utf-8")  # refuse what a yotonnet TEXT end could not decode
        return data

    def to_yoton(self, payload: bytes) -> bytes:
        """A yotonnet payload as a Yoton payload of the same type."""
        if self.type_name == "OBJECT":
            return objects.encode(decode_object(payload))
        return payload


class SlotMap:
    """The carried channels, indexed by Yoton slot hash and by yotonnet channel id."""

    def __init__(self, channels: Iterable[YotonChannel]) -> None:
        self.carried: list[Carried] = []
        #: Yoton slot hash -> (what arrives there, the channel)
        self.by_slot: dict[int, tuple[str, Carried]] = {}
        #: yotonnet channel id -> the channel
        self.by_channel: dict[int, Carried] = {}
        for spec in channels:
            if not isinstance(spec, YotonChannel):
                raise TypeError(f"expected YotonChannel entries, got {type(spec).__name__}")
            self._add(spec)

    def _add(self, spec: YotonChannel) -> None:
        mtype = message_type(spec.message_type)
        carried = Carried(spec, channel_id(spec.pattern, spec.name), mtype.tag, mtype.name)
        if carried.channel in self.by_channel:
            raise ValueError(f"channel {spec.name!r} ({spec.pattern}) is listed twice")
        base = spec.yoton_name if spec.yoton_name is not None else spec.name
        words = {
            "pubsub": {PUB: "pub-sub", FLOW: "sub-pub"},
            "reqrep": {REQ: "req-rep", REPL: "rep-req"},
            "state": {STATE_SLOT: "state"},
        }[spec.pattern]
        for kind, word in words.items():
            name = slot_name(base, mtype.name, word)
            h = slot_hash(name)
            if h in self.by_slot:
                raise ValueError(f"Yoton slot {name!r} is carried twice")
            carried.slots[kind] = h
            self.by_slot[h] = (kind, carried)
        self.carried.append(carried)
        self.by_channel[carried.channel] = carried

    def interests(self) -> dict[int, Interest]:
        """What a Yoton peer holds, for its node record (see YotonChannel)."""
        out: dict[int, Interest] = {}
        for c in self.carried:
            spec = c.spec
            if spec.pattern == "pubsub" and spec.subscribe:
                out[c.channel] = Interest(SUB, c.type_name, 1)
            elif spec.pattern == "reqrep" and spec.serve:
                out[c.channel] = Interest(REP, c.type_name, 1)
            elif spec.pattern == "state":
                out[c.channel] = Interest(STATE, c.type_name, 1)
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "pattern": c.pattern,
                "type": c.type_name,
                "slots": {k: f"{h:016x}" for k, h in c.slots.items()},
            }
            for c in self.carried
        ]
