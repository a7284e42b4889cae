"""Exceptions that reach applications, all subclasses of :class:`YotonnetError`.

Imports nothing, so the sans-IO modules (wire, codec) can raise these too.
"""

from __future__ import annotations

__all__ = [
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


class YotonnetError(Exception):
    """Base class of yotonnet's own errors."""


class RemoteError(YotonnetError):
    """A request handler raised: carries the remote exception's type name and traceback."""

    def __init__(self, remote_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n--- remote traceback ---\n" + self.remote_traceback.rstrip()
        return text


class TimeoutError(YotonnetError):  # noqa: A001 - public name from the API contract
    """A request got no reply in time."""


class NoResponders(YotonnetError):
    """No replier for the channel is reachable."""


class ConnectionLost(YotonnetError):
    """The link a request travelled on went away before the reply came back."""


class PermissionDenied(YotonnetError):
    """The authenticated user may not do this operation on this channel."""


class FlowControlError(YotonnetError):
    """A publisher sent past its window and backlog: its slowest lossless subscriber lags.

    Wait for ``PubChannel.ready()`` or register a producer instead of sending
    in a loop; or subscribe with ``policy="latest"`` where losing old values
    is fine.
    """


class ProtocolError(YotonnetError):
    """The peer sent something this protocol does not allow."""


class MessageTypeError(YotonnetError, TypeError):
    """A value does not fit a channel's message type, or two ends disagree on it."""


class DecodeError(YotonnetError, ValueError):
    """A payload could not be decoded as its message type."""
