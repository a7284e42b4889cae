"""yotonnet: a Twisted-native routed messaging mesh, successor to Yoton.

Contexts host channels (pub/sub, request/reply, state) and link to each other
over TCP, TLS or unix sockets into a mesh that routes each message only toward the
contexts that want it.
"""

from .channels import PubChannel, RepChannel, ReqChannel, StateChannel, SubChannel
from .context import Context, ContextConfig, LinkEvent
from .errors import (
    ConnectionLost,
    DecodeError,
    FlowControlError,
    MessageTypeError,
    NoResponders,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    TimeoutError,
    YotonnetError,
)
from .identity import IdentifiedSubChannel, Received, caller, sender_of
from .messages import BINARY, OBJECT, TEXT, MessageType, register_message_type
from .security import Security

__version__ = "0.1.0"

__all__ = [
    "Context",
    "ContextConfig",
    "LinkEvent",
    "PubChannel",
    "SubChannel",
    "ReqChannel",
    "RepChannel",
    "StateChannel",
    "TEXT",
    "BINARY",
    "OBJECT",
    "MessageType",
    "register_message_type",
    "Security",
    "IdentifiedSubChannel",
    "Received",
    "sender_of",
    "caller",
    "YotonnetError",
    "RemoteError",
    "TimeoutError",
    "NoResponders",
    "ConnectionLost",
    "PermissionDenied",
    "FlowControlError",
    "ProtocolError",
    "MessageTypeError",
    "DecodeError",
]
