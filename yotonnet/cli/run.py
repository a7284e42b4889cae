"""Running a command line: :func:`main` parses it, then runs the node or a client subcommand.

The client subcommands are the ``cmd_*`` coroutines of :data:`COMMANDS`, run
under ``task.react``; a :class:`CliError` becomes a note on stderr and its exit
status. Subcommands registered by other modules (kernel, console, certs,
passwd) run themselves (``args.run``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from twisted.internet import defer, task

from .. import errors
from ..service.config import Settings
from .bench import cmd_bench
from .calls import cmd_call
from .checks import parse
from .client_logs import _begin_client_logging
from .exits import EXIT_FAILURE, CliError
from .node import _node_main
from .output import note, peer_text
from .pubsub import cmd_pub, cmd_sub
from .state import cmd_state
from .status import cmd_status

COMMANDS = {
    "pub": cmd_pub,
    "sub": cmd_sub,
    "call": cmd_call,
    "state": cmd_state,
    "status": cmd_status,
    "bench": cmd_bench,
}


async def _client_main(reactor: Any, args: argparse.Namespace, settings: Settings) -> None:
    name = args.command + (f" {args.action}" if args.command == "state" else "")
    try:
        code = await COMMANDS[args.command](reactor, args, settings)
    except CliError as e:
        note(f"yotonnet {name}: error: {e.message}")
        raise SystemExit(e.code) from None
    except errors.ConnectionLost as e:
        note(f"yotonnet {name}: error: the link to {settings.client.connect} was lost: "
             f"{peer_text(e)}")
        raise SystemExit(EXIT_FAILURE) from None
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    args, settings = parse(sys.argv[1:] if argv is None else argv)
    if hasattr(args, "run"):  # subcommands registered by other modules (yotonnet.kernel.cli)
        args.run(args, settings)
    if args.command == "node":
        from ..service.logs import start_logging

        start_logging(settings.node.log_format, sys.stdout)
        task.react(lambda reactor: defer.ensureDeferred(_node_main(reactor, settings)))
    else:
        _begin_client_logging(args.verbose)
        task.react(lambda reactor: defer.ensureDeferred(_client_main(reactor, args, settings)))
    raise AssertionError("task.react exits")
