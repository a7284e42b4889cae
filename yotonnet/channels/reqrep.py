"""Request/reply: call a method on exactly one replier somewhere in the mesh.

Arguments and results travel in the OBJECT encoding. A handler's exception
comes back as :class:`~yotonnet.errors.RemoteError`; a call with no replier
anywhere fails at once with :class:`~yotonnet.errors.NoResponders`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from .. import errors
from ..messages import OBJECT, DecodeError, decode_object, encode_object
from ..routing import REP
from .base import Channel

if TYPE_CHECKING:
    from ..context import Context

_UNSET: Any = object()


class ReqChannel(Channel):
    """The calling end: ``req.call("method", *args, **kwargs)`` or ``req.method(*args)``."""

    pattern = "reqrep"

    def __init__(self, context: Context, name: str, timeout: float | None = _UNSET) -> None:
        super().__init__(context, name, OBJECT)
        #: seconds before a call fails with TimeoutError (None: wait for ever)
        self.timeout: float | None = (
            context.config.request_timeout if timeout is _UNSET else timeout
        )

    @property
    def responders(self) -> int:
        """How many repliers the mesh currently knows of."""
        return self.context.interest_count(self.channel_id, REP)

    def wait_for_responders(self, count: int = 1) -> defer.Deferred[None]:
        """Fire once at least ``count`` repliers are reachable (e.g. right after connect())."""
        return self.context.wait_for_interest(self.channel_id, REP, count)

    def call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Call ``method`` on one replier; the Deferred fires with its result."""
        if self.closed:
            return defer.fail(RuntimeError(f"request channel {self.name!r} is closed"))
        try:
            payload = encode_object([method, list(args), kwargs])
        except errors.MessageTypeError as e:
            return defer.fail(e)
        return self.context._request(self.channel_id, self.name, payload, self.timeout)

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


class RepChannel(Channel):
    """The serving end. Subclass it (its public methods are callable) or ``register()``."""

    pattern = "reqrep"
    table = "_reps"

    def __init__(self, context: Context, name: str) -> None:
        self._handlers: dict[str, Callable[..., Any]] = {}
        self.in_flight = 0
        self.served = 0
        super().__init__(context, name, OBJECT)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Serve ``fn`` as method ``name``; it may return a value or a Deferred."""
        self._handlers[name] = fn

    def _lookup(self, method: str) -> Callable[..., Any]:
        fn = self._handlers.get(method)
        if fn is not None:
            return fn
        if (
            isinstance(method, str)
            and not method.startswith("_")
            and not hasattr(RepChannel, method)
        ):
            fn = getattr(self, method, None)
            if callable(fn):
                # Remember the bound method: the checks above cost more than the call.
                self._handlers[method] = fn
                return fn
        raise AttributeError(f"replier on channel {self.name!r} has no method {method!r}")

    def _handle(self, payload: bytes) -> Any:
        """Decode a request and run its handler.

        Returns a 1-tuple holding the result if the handler returned a plain
        value, a Failure if anything raised, or a Deferred if the handler
        returned one (or a coroutine): the common synchronous case costs no
        Deferred at all.
        """
        try:
            method, args, kwargs = decode_object(payload)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise DecodeError("request arguments must be a list and a dict")
            fn = self._lookup(method)
        except Exception:  # noqa: BLE001 - reported to the caller as RemoteError
            return Failure()
        try:
            result = fn(*args, **kwargs)
        except BaseException:  # as defer.maybeDeferred would
            self.served += 1
            return Failure()
        if isinstance(result, defer.Deferred) or type(result) is CoroutineType:
            self.in_flight += 1
            d = defer.maybeDeferred(lambda: result)

            def done(value: Any) -> Any:
                self.in_flight -= 1
                self.served += 1
                return value

            return d.addBoth(done)
        self.served += 1
        return result if isinstance(result, Failure) else (result,)
