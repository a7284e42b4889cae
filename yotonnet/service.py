"""A mesh node as a Twisted service: one Context, its listeners and its peers.

``NodeService`` is an ``IService`` so it can run under ``twistd`` or inside
any Twisted application's service hierarchy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from .context import Context, ContextConfig

log = Logger(namespace="yotonnet.service")

DEFAULT_LISTEN = "tcp:7117:interface=127.0.0.1"


class NodeService(Service):
    """Runs a :class:`Context` that listens on ``listen`` and dials ``peers``."""

    def __init__(
        self,
        name: str | None = None,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        peers: Sequence[str] = (),
        config: ContextConfig | None = None,
        reactor: Any = None,
    ) -> None:
        self.node_name = name
        self.listen = list(listen)
        self.peers = list(peers)
        self.config = config
        self.reactor = reactor
        self.context: Context | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self.context = Context(self.node_name, self.reactor, config=self.config)
        listening = [self.context.listen(endpoint) for endpoint in self.listen]
        for endpoint in self.peers:
            self.context.connect(endpoint).addErrback(
                lambda f, ep=endpoint: log.error(
                    "peer {peer} refused the link: {why}", peer=ep, why=f.getErrorMessage()
                )
            )
        gathered = defer.gatherResults(listening, consumeErrors=True)
        gathered.addCallbacks(lambda _: self.ready.callback(None), self.ready.errback)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.context is not None:
            return self.context.close()
        return None
