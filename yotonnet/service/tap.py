"""twistd support: the ``yotonnet`` plugin's options and service maker.

``twistd -n yotonnet --name NAME --listen ENDPOINT [--listen ...] --peer
ENDPOINT [--peer ...] [--config FILE] [--status ENDPOINT [--status-host NAME ...]
[--status-token]]`` runs the
:class:`~yotonnet.service.NodeMultiService` that :func:`yotonnet.service.make_service`
builds: the same node as ``yotonnet node`` with the same options and TOML file
(flags override the file). twistd does its own logging (``--logfile``,
``--logger``), so the file's ``node.log_format`` does not apply here.
The plugin module itself is ``plugins/yotonnet_plugin.py``, installed as
``twisted/plugins/``.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from ..security.settings import SecurityError
from .config import DEFAULT_LISTEN, ConfigError, resolve
from .node import ListenError, make_service


class Options(usage.Options):
    synopsis = (
        "[--name NAME] [--listen ENDPOINT ...] [--peer ENDPOINT ...] [--config FILE] "
        "[--status ENDPOINT]"
    )
    longdesc = (
        "Run a yotonnet mesh node. Endpoints are Twisted endpoint strings "
        f"(default listen: {DEFAULT_LISTEN}). Options given here override the TOML file."
    )
    optParameters = [
        ["name", None, None, "node name shown to peers (default: host-based)"],
        ["config", None, None, "TOML configuration file ([node], [context] tables)"],
        ["status", None, None, "serve the HTTP status page (/status, /metrics) on this "
                               "server endpoint, e.g. tcp:8080:interface=127.0.0.1"],
        # security (the [security] table of --config; see yotonnet.security)
        ["tls-ca", None, None, "CA certificate that signs peers (PEM)"],
        ["tls-cert", None, None, "this node's certificate for tls: endpoints (PEM)"],
        ["tls-key", None, None, "the certificate's private key (PEM)"],
        ["token-file", None, None, "log in to peers with the token in this file"],
        ["login", None, None, "log in to peers as this user (with --password-file)"],
        ["password-file", None, None, "the password for --login"],
        ["tokens", None, None, "accept peers presenting a token from this file"],
        ["passwords", None, None, "accept peers with a password from this file"],
    ]
    optFlags = [
        ["status-token", None, "every status request must carry this OS user's local secret "
                               "(?token=SECRET or Authorization: Bearer SECRET)"],
        ["allow-anonymous", None, "with no authentication, accept peers from any address "
                                  "(unsafe; default: loopback and unix sockets only)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["peer"] = []
        self["status-host"] = []
        self["settings"] = None

    def opt_listen(self, endpoint: str) -> None:
        """Twisted server endpoint to accept peers on (repeatable)."""
        self["listen"].append(endpoint)

    def opt_peer(self, endpoint: str) -> None:
        """Twisted client endpoint of a peer to link to (repeatable; :cost=N weighs it)."""
        self["peer"].append(endpoint)

    def opt_status_host(self, name: str) -> None:
        """A host name the status page answers to besides its address (repeatable)."""
        self["status-host"].append(name)

    def postOptions(self) -> None:
        try:
            self["settings"] = resolve(
                self["config"],
                name=self["name"],
                listen=self["listen"] or None,
                peers=self["peer"] or None,
                status=self["status"],
                status_hosts=self["status-host"] or None,
                status_token=True if self["status-token"] else None,
                security={
                    "tls_ca": self["tls-ca"], "tls_cert": self["tls-cert"],
                    "tls_key": self["tls-key"], "token_file": self["token-file"],
                    "user": self["login"], "password_file": self["password-file"],
                    "tokens": self["tokens"], "passwords": self["passwords"],
                    "allow_anonymous": True if self["allow-anonymous"] else None,
                },
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class _ExitOnListenError(MultiService):
    """Turns a node's synchronous ListenError into a one-line exit of twistd (status 1)."""

    def startService(self) -> None:
        try:
            super().startService()
        except (ListenError, SecurityError) as e:
            raise SystemExit(f"yotonnet: {e}") from None


def make_twistd_service(options: Options) -> MultiService:
    # A node that cannot listen makes startService raise, so twistd exits at once
    # instead of running a node nobody can reach.
    top = _ExitOnListenError()
    make_service(options["settings"], raise_on_listen_error=True).setServiceParent(top)
    return top


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "yotonnet"
    description = "A yotonnet mesh node (routed pub/sub, request/reply and state)."
    options = Options

    def makeService(self, options: Options) -> MultiService:
        return make_twistd_service(options)
