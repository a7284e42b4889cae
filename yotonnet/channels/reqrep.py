"""Request/reply: call a method on exactly one replier somewhere in the mesh.

Arguments and results travel in the OBJECT encoding: the method name rides
in the frame's extension and the arguments follow as values back to back (see
:mod:`yotonnet.core.wire`), so a call costs no nested list. A handler's exception
comes back as :class:`~yotonnet.errors.RemoteError`; a call with no replier
anywhere fails at once with :class:`~yotonnet.errors.NoResponders`.

A replier may declare methods idempotent (:func:`idempotent`, or
``register(..., idempotent=True)``): running one twice with the same
arguments does no harm. The declaration travels with the channel's interest,
and a call to such a method whose path breaks on the way is sent again over
the new path instead of failing (see :mod:`yotonnet.core.requests`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from ..core.codec import decode_object, decode_values, encode_object, encode_values
from ..core.interfaces import IReplierEnd
from ..core.leaves import REQ
from ..core.messages import OBJECT, DecodeError
from ..core.routing import REP
from ..core.wire import REQUEST_KWARGS, REQUEST_MAX_ARGS
from ..security.authz import CALL, SERVE
from .base import Channel

if TYPE_CHECKING:
    from ..mesh.interfaces import IChannelHost

_UNSET: Any = object()
#: the attribute :func:`idempotent` sets on a function
_IDEMPOTENT_MARK = "__yotonnet_idempotent__"


def idempotent(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Declare a replier's method idempotent (a decorator): calling it twice with the
    same arguments does no harm, so a call whose path broke may be sent again."""
    setattr(fn, _IDEMPOTENT_MARK, True)
    return fn

_PLAIN_RESULTS = frozenset((type(None), bool, int, float, str, bytes, list, tuple, dict))


class CallDeferred(defer.Deferred):
    """What :meth:`ReqChannel.call` returns: a Deferred that knows its request id, so
    that one canceller serves every call (no closure made per call)."""

    __slots__ = ("req_id",)


class ReqChannel(Channel):
    """The calling end: ``req.call("method", *args, **kwargs)`` or ``req.method(*args)``."""

    pattern = "reqrep"
    role = REQ
    operations = ((CALL, "reqrep"),)

    def __init__(
        self, context: IChannelHost, name: str, timeout: float | None = _UNSET
    ) -> None:
        super().__init__(context, name, OBJECT)
        #: seconds before a call fails with TimeoutError (None: wait for ever)
        self.timeout: float | None = (
            context.config.request_timeout if timeout is _UNSET else timeout
        )
        self._method_names: dict[str, bytes] = {}
        self._requests = context.node.requests

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
        if self.denied is not None:
            return defer.fail(self.denied)
        name = self._method_names.get(method)
        try:
            if name is None:
                name = self._method_name(method)
            n = len(args)
            if n == 1 and not kwargs:  # the commonest call: one value, no sequence around it
                payload = encode_object(args[0])
                tag = 1
            elif n > REQUEST_MAX_ARGS:
                raise errors.MessageTypeError(
                    f"a call takes at most {REQUEST_MAX_ARGS} positional arguments"
                )
            elif kwargs:
                payload = encode_values((*args, kwargs))
                tag = n | REQUEST_KWARGS
            else:
                payload = encode_values(args)
                tag = n
        except errors.MessageTypeError as e:
            return defer.fail(e)
        d = CallDeferred(self._forget)
        d.req_id = self._requests.request(self.channel_id, self.name, tag, name, payload,
                                          self.timeout, d)
        return d

    def _forget(self, d: CallDeferred) -> None:
        """A call's Deferred was cancelled: the call is forgotten, a late reply dropped."""
        self._requests.cancel(d.req_id)

    def _method_name(self, method: str) -> bytes:
        if not isinstance(method, str) or not method:
            raise errors.MessageTypeError(f"a method name is a non-empty str, not {method!r}")
        name = method.encode("utf-8", "surrogatepass")
        if len(name) > 1024:
            raise errors.MessageTypeError("a method name is at most 1024 bytes of UTF-8")
        if len(self._method_names) < 1000:  # a bounded cache, whatever callers do
            self._method_names[method] = name
        return name

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


@implementer(IReplierEnd)
class RepChannel(Channel):
    """The serving end. Subclass it (its public methods are callable) or ``register()``."""

    pattern = "reqrep"
    role = REP
    operations = ((SERVE, "reqrep"),)

    def __init__(self, context: IChannelHost, name: str) -> None:
        self._handlers: dict[str, Callable[..., Any]] = {}
        # method name as it arrives (UTF-8 bytes) -> handler, filled on first use
        self._by_wire_name: dict[bytes, Callable[..., Any]] = {}
        self.in_flight = 0
        self.served = 0
        #: IReplierEnd: the methods declared idempotent (announced with the interest)
        self.idempotent = frozenset(
            method for method in dir(type(self))
            if not method.startswith("_") and not hasattr(RepChannel, method)
            and getattr(getattr(type(self), method), _IDEMPOTENT_MARK, False)
        )
        super().__init__(context, name, OBJECT)

    def register(self, name: str, fn: Callable[..., Any], idempotent: bool = False) -> None:
        """Serve ``fn`` as method ``name``; it may return a value or a Deferred.
        ``idempotent``: calling it twice with the same arguments does no harm (as is
        ``fn`` marked with :func:`idempotent`), so a call whose path broke is sent
        again rather than failed."""
        self._handlers[name] = fn
        self._by_wire_name.clear()
        mark = idempotent or getattr(fn, _IDEMPOTENT_MARK, False)
        declared = self.idempotent | {name} if mark else self.idempotent - {name}
        if declared != self.idempotent:
            self.idempotent = declared
            self.context.node.repliers_changed()

    def handler_for(self, method: str) -> Callable[..., Any]:
        """The handler of ``method``: a registered one, else a public method of a
        subclass (none of RepChannel's own); AttributeError if there is none."""
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

    def handle_request(
        self, source: int, req_id: int, tag: int, name: bytes, payload: bytes
    ) -> tuple | None:
        """IReplierEnd: decode a request and run its handler.

        Returns a 1-tuple holding the result when the handler returned a plain
        value (the common synchronous case costs no Deferred at all); otherwise
        None, and the reply follows through the node when the handler's
        Deferred (or coroutine) fires, or at once for an error.
        """
        try:
            fn = self._by_wire_name.get(name)
            if fn is None:
                try:
                    method = name.decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    raise DecodeError("request method name is not UTF-8") from None
                fn = self.handler_for(method)
                if len(self._by_wire_name) < 1000:
                    self._by_wire_name[name] = fn
            if tag == 1:  # the commonest call: one value, no keywords
                args = None
                arg = decode_object(payload)
            elif tag & REQUEST_KWARGS:
                args = decode_values(payload, (tag & REQUEST_MAX_ARGS) + 1)
                kwargs = args.pop()
                if type(kwargs) is not dict:
                    raise DecodeError("request keyword arguments must be a dict")
            else:
                args = decode_values(payload, tag)
                kwargs = None
        except Exception:  # noqa: BLE001 - reported to the caller as RemoteError
            self._reply_failure(source, req_id, Failure())
            return None
        try:
            if args is None:
                result = fn(arg)
            else:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException:  # as defer.maybeDeferred would
            self.served += 1
            self._reply_failure(source, req_id, Failure())
            return None
        if type(result) in _PLAIN_RESULTS:
            # Checked first: isinstance() against Deferred (an Awaitable ABC) is slow.
            self.served += 1
            return (result,)
        if isinstance(result, defer.Deferred) or type(result) is CoroutineType:
            self.in_flight += 1
            requests = self.context.node.requests
            channel = self.channel_id

            def done(value: Any) -> None:
                self.in_flight -= 1
                self.served += 1
                if isinstance(value, Failure):
                    self._reply_failure(source, req_id, value)
                else:
                    requests.reply_ok(channel, source, req_id, value)

            defer.maybeDeferred(lambda: result).addBoth(done)
            return None
        self.served += 1
        if isinstance(result, Failure):
            self._reply_failure(source, req_id, result)
            return None
        return (result,)

    def _reply_failure(self, source: int, req_id: int, failure: Failure) -> None:
        self.context.node.requests.reply_error(
            self.channel_id, source, req_id,
            failure.type.__name__ if failure.type else "Exception",
            failure.getErrorMessage(), failure.getTraceback(),
        )
