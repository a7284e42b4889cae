"""User-facing channels: pub/sub, request/reply and state."""

from .pubsub import PubChannel, SubChannel
from .reqrep import RepChannel, ReqChannel, idempotent
from .state import StateChannel

__all__ = ["PubChannel", "SubChannel", "ReqChannel", "RepChannel", "StateChannel",
           "idempotent"]
