"""State versions: per-channel Lamport clocks, and the bounds that keep them honest.

Sans-IO. Every value of a state channel carries a version ``(clock,
writer)``; holders keep the greatest (last writer wins, the writer's node id
breaking ties). Each channel has its own clock, so a write on one channel
never moves another's. A version is refused when its clock nears 64 bits
(:data:`MAX_STATE_CLOCK`: no clock can overflow its field, whatever a peer
sends) or its writer is node 0; a client's first node also refuses a clock
more than :data:`STATE_CLOCK_JUMP` past what it has seen of that channel, so
one client cannot push a channel's clock to its end.
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError

__all__ = ["VERSION", "MAX_STATE_CLOCK", "STATE_CLOCK_JUMP", "state_version"]

#: a STATE frame's payload starts with its version: clock, writer node id
VERSION = struct.Struct("<QQ")
#: clocks stay below this
MAX_STATE_CLOCK = 1 << 62
#: how far past the channel's clock known at its first node a client's write may go
#: (more than one, so that a client's clock survives its node restarting)
STATE_CLOCK_JUMP = 1 << 20


def state_version(payload: bytes, channel: int) -> tuple[int, int]:
    """The (clock, writer) version at the start of a STATE payload; ProtocolError if it
    has none or it is out of range."""
    if len(payload) < VERSION.size:
        raise ProtocolError("STATE frame too short for its version")
    clock, writer = VERSION.unpack_from(payload)
    if not 0 < clock < MAX_STATE_CLOCK or writer == 0:
        raise ProtocolError(
            f"STATE version ({clock}, {writer:016x}) on channel {channel:016x} is out of "
            f"range: clocks run from 1 to {MAX_STATE_CLOCK - 1}, writers are node ids"
        )
    return clock, writer
