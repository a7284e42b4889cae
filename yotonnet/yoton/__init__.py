"""Wire compatibility with Yoton 2.2: unmodified Yoton contexts join the mesh.

A :class:`YotonBridge` links a context to Yoton contexts over Yoton's own
handshake and package format and carries the :class:`YotonChannel`\\ s it is
given (pub/sub, state, request/reply) between Yoton slots and yotonnet
channels. Each Yoton context appears in the mesh as a node of its own.

Modules: :mod:`.wire` (handshake, header, slot hash; sans-IO), :mod:`.objects`
(Yoton's OBJECT encoding; sans-IO), :mod:`.slots` (the channel map and payload
translation; sans-IO), :mod:`.link` (the Twisted protocol), :mod:`.bridge`
(listen/connect).
"""

from .bridge import YotonBridge
from .link import YotonLink
from .slots import SlotMap, YotonChannel
from .wire import slot_hash, slot_name

__all__ = [
    "YotonBridge",
    "YotonChannel",
    "YotonLink",
    "SlotMap",
    "slot_hash",
    "slot_name",
]
