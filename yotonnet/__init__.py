"""yotonnet: a Twisted-native routed messaging mesh, successor to Yoton.

Contexts host channels (pub/sub, request/reply, state) and link to each other
over TCP, TLS or unix sockets into a mesh that routes each message only toward the
contexts that want it.
"""

from .channels import (
    PubChannel,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
    idempotent,
)
from .core.messages import BINARY, OBJECT, TEXT, MessageType, register_message_type
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
from .mesh.context import Context, ContextConfig, LinkEvent
from .moved import install as _install_moved
from .security.settings import Security

_install_moved()  # old import paths (yotonnet.wire, yotonnet.context...) keep working

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
    "idempotent",
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
