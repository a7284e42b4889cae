"""The ``yotonnet`` argument parser: its subcommands and their option groups.

:func:`build_parser` builds it. The kernel and console subcommands register
through :func:`yotonnet.kernel.cli.add_kernel_parsers`, certs and passwd
through :func:`yotonnet.cli.security.add_commands`. Checks beyond argparse's
(names, JSON, counts) are in :mod:`yotonnet.cli.checks`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from ..core.messages import BINARY, OBJECT, TEXT
from ..service.config import DEFAULT_CONNECT, DEFAULT_LISTEN, DEFAULT_TIMEOUT, LOG_FORMATS

#: the names of --type, and the message types they stand for
TYPES = {"text": TEXT, "object": OBJECT, "binary": BINARY}


EPILOG = f"""\
exit status: 0 success, 1 runtime failure (node unreachable, no replier, timeout,
remote error), 2 usage error (bad flag, bad JSON, bad config file).

Client subcommands join the mesh through one node: --connect ENDPOINT (default
{DEFAULT_CONNECT}, where `yotonnet node` listens by default).

examples:
  yotonnet node --name a --listen tcp:7117:interface=127.0.0.1
  yotonnet node --name b --listen tcp:7118:interface=127.0.0.1 --peer tcp:127.0.0.1:7117
  yotonnet sub news --count 1 &
  yotonnet pub news "hello"
  yotonnet call math add '[2, 3]'
  yotonnet state set settings '{{"theme": "dark"}}' && yotonnet state get settings
  yotonnet status
"""


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """The TLS and credentials options, on ``node`` and on every client subcommand
    (see :mod:`yotonnet.cli.security`)."""
    from .security import add_options

    add_options(parser)


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="node name shown to peers (default: host-based)")
    parser.add_argument(
        "--listen", action="append", metavar="ENDPOINT",
        help=f"Twisted server endpoint to accept peers on; repeatable (default {DEFAULT_LISTEN}); "
        "a :cost=N option (1-255) weighs the links accepted there",
    )
    parser.add_argument(
        "--peer", action="append", metavar="ENDPOINT",
        help="Twisted client endpoint of a peer to link to; repeatable; a :cost=N option "
        "(1-255) makes the mesh prefer cheaper paths, e.g. tcp:far:7117:cost=10",
    )
    parser.add_argument(
        "--status", metavar="ENDPOINT",
        help="serve the HTTP status page (/status, /metrics) on this server endpoint, "
             "e.g. tcp:8080:interface=127.0.0.1",
    )
    parser.add_argument(
        "--status-host", action="append", metavar="NAME",
        help="a host name the status page answers to besides the address it listens on "
             "(its Host header is checked against DNS rebinding); repeatable",
    )
    parser.add_argument(
        "--status-token", action="store_true", default=None,
        help="every status request must carry this OS user's local secret "
             "(?token=SECRET or Authorization: Bearer SECRET)",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS,
        help="log lines on stdout as text (default) or JSON objects",
    )
    parser.add_argument(
        "--config", metavar="FILE",
        help="TOML file ([node], [context] tables); flags override it",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--connect", metavar="ENDPOINT",
        help=f"Twisted client endpoint of the node to join through (default {DEFAULT_CONNECT})",
    )
    group.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help=f"how long to wait for the node and for replies (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--config", metavar="FILE", help="TOML file ([client] table); flags override it"
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", help="log what the client context does (stderr)"
    )


def _type_option(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    parser.add_argument(
        "--type", choices=sorted(TYPES), default=default,
        help=f"message type of the channel (default {default}): {what}",
    )


class _Parser(argparse.ArgumentParser):
    """Lets options follow a variable number of positionals (``pub CHANNEL MSG... --wait 1``,
    ``call CHANNEL METHOD --kwargs {} [1]``), which argparse refuses by default."""

    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._parsing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._parsing = True  # parse_known_intermixed_args calls back in here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="yotonnet",
        description="Run a yotonnet mesh node, or use the mesh from the shell.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"yotonnet {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def sub(name: str, help_text: str, description: str = "") -> argparse.ArgumentParser:
        p = subs.add_parser(
            name, help=help_text, description=description or help_text, epilog=None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(parser=p)
        return p

    p = sub("node", "run a mesh node in the foreground",
            "Run a mesh node in the foreground until interrupted (SIGINT or SIGTERM).\n"
            "The same node as `twistd -n yotonnet`, with the same options.")
    _node_options(p)
    add_security_options(p)

    p = sub("pub", "publish messages on a channel",
            "Publish each MESSAGE, or each line of stdin when no MESSAGE is given.\n"
            "A message nobody subscribes to reaches nobody: --wait N waits for N subscribers.\n"
            "Returns once the node has forwarded every message.")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("messages", nargs="*", metavar="MESSAGE")
    _type_option(p, "text", "text sends each message as is, object parses it as JSON, "
                            "binary sends its UTF-8 bytes")
    p.add_argument("--wait", type=int, default=0, metavar="N",
                   help="first wait (up to --timeout) until N subscribers are reachable")
    _client_options(p)
    add_security_options(p)

    p = sub("sub", "print the messages of a channel",
            "Print each message of CHANNEL on stdout, one per line, until --count\n"
            "messages arrived or until interrupted.")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--json", action="store_true",
                   help="print each message as one JSON value (bytes as {\"$base64\": ...})")
    _type_option(p, "text", "text prints messages as is, object as JSON, binary as raw bytes")
    _client_options(p)
    add_security_options(p)

    p = sub("call", "call a method on a request/reply channel",
            "Call METHOD on one replier of CHANNEL and print the result as JSON.\n"
            "ARGS is a JSON list of positional arguments, e.g. '[2, 3]'.")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("args", nargs="?", default="[]", metavar="ARGS",
                   help="JSON list of positional arguments (default [])")
    p.add_argument("--kwargs", default=None, metavar="JSON",
                   help="JSON object of keyword arguments")
    _client_options(p)
    add_security_options(p)

    p = sub("state", "read or write a state channel",
            "Read or write the value of a state channel (one value, last writer wins).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = actions.add_parser(
        "get", help="print the current value",
        description="Print the current value of CHANNEL (null when it has none).")
    g.set_defaults(parser=g)
    g.add_argument("channel", metavar="CHANNEL")
    g.add_argument("--json", action="store_true", help="print the value as JSON whatever its type")
    _type_option(g, "object", "object prints JSON, text as is, binary as raw bytes")
    _client_options(g)
    add_security_options(g)
    s = actions.add_parser(
        "set", help="set the value everywhere",
        description="Set the value of CHANNEL everywhere. The node you connect through\n"
                    "holds the channel from then on, so the value outlives this command.")
    s.set_defaults(parser=s)
    s.add_argument("channel", metavar="CHANNEL")
    s.add_argument("value", metavar="VALUE", help="the value (JSON for --type object)")
    _type_option(s, "object", "object parses VALUE as JSON, text sends it as is, binary "
                              "sends its UTF-8 bytes")
    _client_options(s)
    add_security_options(s)

    p = sub("status", "show a node's links, routes, channels and counters, and the mesh",
            "Ask the node (or --node NAME, anywhere in the mesh) for its links, routes,\n"
            "channels and counters, and show the mesh's nodes as this client sees them.")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--node", metavar="NAME", help="ask this node instead of the one connected to")
    _client_options(p)
    add_security_options(p)

    p = sub("bench", "measure pub/sub throughput and req/rep latency through the node",
            "Two client contexts in this process, both linked to the node: one publishes\n"
            "to the other through it, then calls it through it. Prints msg/s and us.")
    p.add_argument("--messages", type=int, default=20000, metavar="N",
                   help="messages to publish (default 20000)")
    p.add_argument("--size", type=int, default=100, metavar="BYTES",
                   help="payload bytes per message (default 100)")
    p.add_argument("--calls", type=int, default=2000, metavar="N",
                   help="sequential calls to time (default 2000)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _client_options(p)
    add_security_options(p)

    from ..kernel.cli import add_kernel_parsers  # kernel, console: run themselves (args.run)

    add_kernel_parsers(sub, _client_options, add_security_options)
    from .security import add_commands  # certs, passwd: run themselves (args.run)

    add_commands(sub)
    return parser
