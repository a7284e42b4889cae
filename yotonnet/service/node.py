"""A mesh node as Twisted services: one Context, its listeners, its peers, its status page.

:func:`make_service` builds what ``twistd yotonnet`` and ``yotonnet node`` run:
a :class:`NodeMultiService` holding a :class:`NodeService` (the context) and,
when a status endpoint is configured, a :class:`StatusWebService` (the HTTP
status site of :mod:`yotonnet.service.web`). Both are ordinary ``IService``\\ s, so a
node also fits inside any Twisted application's service hierarchy.

Every node service hosts a control channel, :class:`NodeControl`, named
:func:`control_channel_name` of its node id: the ``yotonnet`` client commands
ask it for the node's status (counters are not in the link-state records) and
use it to keep a state value alive after the short-lived client has left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import errors
from ..channels import RepChannel, StateChannel
from ..core.names import channel_id, printable, validate_channel_name
from ..mesh.context import Context, ContextConfig, port_text
from ..security.settings import Security
from .config import DEFAULT_CONNECT, DEFAULT_LISTEN, Settings

if TYPE_CHECKING:
    from .web import StatusAccess

__all__ = [
    "DEFAULT_CONNECT",
    "DEFAULT_LISTEN",
    "ListenError",
    "NodeControl",
    "NodeMultiService",
    "NodeService",
    "StatusWebService",
    "control_channel_name",
    "make_service",
]

log = Logger(namespace="yotonnet.service")

CONTROL_PREFIX = "yotonnet.node"


def control_channel_name(node_id: int) -> str:
    """The request/reply channel a node service serves: ``yotonnet.node.n<16 hex digits>``.

    Named by id, not by node name: names may repeat in a mesh and need not be
    valid channel words, and a request goes to exactly one replier.
    """
    return f"{CONTROL_PREFIX}.n{node_id:016x}"


class ListenError(Exception):
    """A node could not listen on one of its endpoints."""


class NodeControl(RepChannel):
    """The node's own request/reply channel (see the module docstring)."""

    def __init__(self, context: Context) -> None:
        super().__init__(context, control_channel_name(context.node_id))
        self.held_states: dict[str, StateChannel] = {}

    def ping(self) -> dict:
        """Name and id; clients also use the round trip as a barrier after joining."""
        return {"name": self.context.name, "id": f"{self.context.node_id:016x}"}

    def status(self) -> dict:
        """Links, routes, channels and counters of this node (see yotonnet.status)."""
        from .status import node_status  # the observability module; imported when asked

        return node_status(self.context)

    def drain(self, channel: str, timeout: float = 10.0) -> defer.Deferred[bool]:
        """Fire True once no link of this node has pub/sub data of ``channel`` queued for
        flow-control credit (False if ``timeout`` passes first).

        ``yotonnet pub`` calls it before leaving: a node that learns a publisher
        has left drops that publisher's messages arriving later (it no longer
        has a route tree for the source), so the messages queued here must be
        on their way to the next node before the publisher's departure is.
        """
        chan = channel_id("pubsub", validate_channel_name(channel))
        return self.context.flushed(min(float(timeout), 300.0), chan)

    def state_set(self, channel: str, value: Any, type_name: str = "OBJECT") -> list:
        """Set state ``channel`` from this node, which holds the channel from now on.

        Returns the new version ``[lamport, node id]``. The node keeps the
        value for clients that leave right after setting it.
        """
        validate_channel_name(channel)
        # The node writes for the caller: the caller's own permission decides.
        denial = self.context.guard.check_caller(self.context.current_caller, "set-state", channel)
        if denial:
            raise errors.PermissionDenied(denial)
        holder = self.held_states.get(channel)
        if holder is None:
            holder = StateChannel(self.context, channel, type_name)
            self.held_states[channel] = holder
        elif holder.message_type.name != type_name:
            raise errors.MessageTypeError(
                f"this node holds state channel {channel!r} as {holder.message_type.name}, "
                f"not {type_name}"
            )
        holder.send(value)
        version = holder.version
        return list(version) if version else []


class NodeService(Service):
    """Runs a :class:`Context` that listens on ``listen`` and dials ``peers``.

    ``ready`` fires once every listener is up, or fails with
    :class:`ListenError`. With ``raise_on_listen_error`` a listener that fails
    synchronously (the usual case: address in use, bad permissions) makes
    ``startService`` raise, which is how ``twistd`` learns to exit instead of
    running a node nobody can reach.
    """

    def __init__(
        self,
        name: str | None = None,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        peers: Sequence[str] = (),
        config: ContextConfig | None = None,
        reactor: Any = None,
        *,
        node_id: int | None = None,
        raise_on_listen_error: bool = False,
        security: Security | None = None,
    ) -> None:
        self.node_name = name
        self.security = security
        self.listen = list(listen)
        self.peers = list(peers)
        self.config = config
        self.reactor = reactor
        self.node_id = node_id
        self.raise_on_listen_error = raise_on_listen_error
        self.context: Context | None = None
        self.control: NodeControl | None = None
        self.ports: list[Any] = []
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        ctx = self.context = Context(
            self.node_name, self.reactor, config=self.config, node_id=self.node_id,
            security=self.security, role="node",
        )
        self.control = NodeControl(ctx)
        failures: list[Failure] = []

        def failed(failure: Failure, endpoint: str) -> Failure:
            error = ListenError(f"cannot listen on {endpoint}: {failure.getErrorMessage()}")
            failures.append(Failure(error))
            return failures[-1]

        listening = [ctx.listen(ep).addErrback(failed, ep) for ep in self.listen]
        if failures and self.raise_on_listen_error:
            for d in listening:
                d.addErrback(lambda _: None)
            ctx.close()
            raise failures[0].value
        for endpoint in self.peers:
            ctx.connect(endpoint).addErrback(
                lambda f, ep=endpoint: log.error(
                    "peer {peer} refused the link: {why}", peer=ep,
                    why=printable(f.getErrorMessage(), 1000),  # the peer's words
                )
            )
        gathered = defer.gatherResults(listening, consumeErrors=True)
        gathered.addCallbacks(self._listening, lambda f: self.ready.errback(f.value.subFailure))

    def _listening(self, ports: list[Any]) -> None:
        self.ports = ports
        assert self.context is not None
        log.info(
            "node {node} ({node_id}) ready on {where}; control channel {control}",
            node=self.context.name,
            node_id=f"{self.context.node_id:016x}",
            where=", ".join(port_text(p) for p in ports),
            control=control_channel_name(self.context.node_id),
        )
        self.ready.callback(None)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.context is not None:
            return self.context.close()
        return None


class StatusWebService(Service):
    """Serves :func:`yotonnet.service.web.status_site` of a node's context on an endpoint.

    It must start after its :class:`NodeService` (a child added after it in
    the same MultiService does), since the site needs the running context.
    ``hosts`` are the extra names its Host header may carry; with ``token``
    every request must carry this OS user's local secret (see :mod:`yotonnet.service.web`).
    """

    def __init__(
        self, node: NodeService, endpoint: str, reactor: Any = None, *,
        hosts: Sequence[str] = (), token: bool = False,
    ) -> None:
        self.node = node
        self.endpoint = endpoint
        self.reactor = reactor
        self.hosts = tuple(hosts)
        self.token = token
        self.port: Any = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    def _access(self) -> StatusAccess:
        from ..security.localsecret import LocalSecretError, ensure_secret
        from .web import StatusAccess

        if not self.token:
            return StatusAccess(hosts=self.hosts)
        try:
            secret, path, created = ensure_secret()
        except LocalSecretError as e:
            raise ListenError(f"cannot serve the status page with --status-token: {e}") from None
        if created:
            log.info("made a new local secret in {path}", path=path)
        return StatusAccess(hosts=self.hosts, secret=secret, secret_path=path)

    def startService(self) -> None:
        super().startService()
        from .web import status_site  # the observability module; imported when used

        if self.node.context is None:
            raise RuntimeError("StatusWebService started before its NodeService")
        reactor = self.reactor or self.node.context.reactor
        try:
            access = self._access()
        except ListenError as e:
            self.ready.errback(e)
            if self.node.raise_on_listen_error:
                self.ready.addErrback(lambda _: None)
                raise
            return
        site = status_site(self.node.context, access)
        d = serverFromString(reactor, self.endpoint).listen(site)

        def listening(port: Any) -> None:
            self.port = port
            # The Host check needs the address listened on (a wildcard admits any IP).
            access.bound = port.getHost()
            where = _url_host(port)
            if access.secret is None:
                log.info("status page on http://{where}/ (JSON at /status, Prometheus text "
                         "at /metrics)", where=where)
            else:
                # No colon after the URL: scripts take the port from the last one.
                log.info("status page on http://{where}/?token=SECRET where SECRET is the "
                         "content of {path} (every request needs it, as ?token= or as a "
                         "Bearer token in an Authorization header)",
                         where=where, path=access.secret_path)
            self.ready.callback(None)

        def failed(failure: Failure) -> None:
            self.ready.errback(
                ListenError(
                    f"cannot serve the status page on {self.endpoint}: "
                    f"{failure.getErrorMessage()}"
                )
            )

        d.addCallbacks(listening, failed)
        if self.node.raise_on_listen_error and self.ready.called and self.port is None:
            error: list[Failure] = []
            self.ready.addErrback(error.append)
            error[0].raiseException()  # synchronously, so twistd exits (see NodeService)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        return None


class NodeMultiService(MultiService):
    """A node and its optional status site; ``node`` and ``web`` name the children."""

    def __init__(self, node: NodeService, web: StatusWebService | None) -> None:
        super().__init__()
        self.node = node
        self.web = web
        node.setServiceParent(self)
        if web is not None:
            web.setServiceParent(self)

    def when_ready(self) -> defer.Deferred[None]:
        """After startService: fires once everything listens, fails on the first error."""
        waits = [self.node.ready] + ([self.web.ready] if self.web is not None else [])
        d = defer.gatherResults(waits, consumeErrors=True)
        return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)


def make_service(
    settings: Settings, reactor: Any = None, *, raise_on_listen_error: bool = False
) -> NodeMultiService:
    """The node that ``settings`` (a :class:`yotonnet.service.config.Settings`) describe."""
    node = NodeService(
        settings.node.name,
        settings.node.listen,
        settings.node.peers,
        config=settings.context,
        reactor=reactor,
        raise_on_listen_error=raise_on_listen_error,
        security=settings.security,
    )
    web = None
    if settings.node.status:
        web = StatusWebService(node, settings.node.status, reactor,
                               hosts=settings.node.status_hosts,
                               token=settings.node.status_token)
    return NodeMultiService(node, web)


def _url_host(port: Any) -> str:
    """``host:port`` for a URL (an IPv6 literal in brackets), or a unix socket's path."""
    host = getattr(port.getHost(), "host", None)
    if host is not None and ":" in host:
        return f"[{host}]:{port.getHost().port}"
    return port_text(port)
