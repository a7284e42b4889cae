"""Registers ``memory:NAME`` endpoints with Twisted (installed as twisted/plugins/).

``serverFromString``/``clientFromString`` then accept ``memory:NAME`` on a
:class:`yotonnet.testing.MemoryMesh`'s clock, so ``Context.listen`` and
``Context.connect`` (its dialer, its backoff) run in memory. Kept import-cheap:
Twisted imports every module here when it looks for plugins, so the test
doubles are imported only when a ``memory:`` endpoint is parsed.
"""

from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MemoryServerParser:
    prefix = "memory"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from yotonnet.testing import memory_server_endpoint

        return memory_server_endpoint(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class MemoryClientParser:
    prefix = "memory"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from yotonnet.testing import memory_client_endpoint

        return memory_client_endpoint(reactor, *args, **kwargs)


yotonnet_memory_server = MemoryServerParser()
yotonnet_memory_client = MemoryClientParser()
