"""twistd support: the ``yotonnet`` plugin's options and service maker.

``twistd -n yotonnet --name NAME --listen ENDPOINT --peer ENDPOINT`` runs a
:class:`~yotonnet.service.NodeService`.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from .service import DEFAULT_LISTEN, NodeService


class Options(usage.Options):
    synopsis = "[--name NAME] [--listen ENDPOINT ...] [--peer ENDPOINT ...]"
    optParameters = [["name", None, None, "node name shown to peers (default: host-based)"]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["peer"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted server endpoint to accept peers on (repeatable)."""
        self["listen"].append(endpoint)

    def opt_peer(self, endpoint: str) -> None:
        """Twisted client endpoint of a peer to link to (repeatable)."""
        self["peer"].append(endpoint)


def make_service(options: Options) -> NodeService:
    return NodeService(options["name"], options["listen"] or [DEFAULT_LISTEN], options["peer"])


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "yotonnet"
    description = "A yotonnet mesh node."
    options = Options

    def makeService(self, options: Options) -> NodeService:
        return make_service(options)
