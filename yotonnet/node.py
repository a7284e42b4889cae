"""``python -m yotonnet.node``: run one mesh node in the foreground.

With no arguments it listens on 127.0.0.1:7117 under an embedded default
configuration, so ``make run`` needs no config file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from .service import DEFAULT_LISTEN, NodeService


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yotonnet.node", description="Run a yotonnet mesh node."
    )
    parser.add_argument("--name", help="node name shown to peers (default: host-based)")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ENDPOINT",
        help=f"Twisted server endpoint to accept peers on (repeatable; default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="Twisted client endpoint of a peer to link to (repeatable)",
    )
    return parser.parse_args(argv)


async def _serve(reactor: Any, args: argparse.Namespace) -> None:
    service = NodeService(args.name, args.listen or [DEFAULT_LISTEN], args.peer, reactor=reactor)
    service.startService()
    try:
        await service.ready
    except Exception as e:  # noqa: BLE001 - any listen failure ends the node with its reason
        await service.stopService()
        raise SystemExit(f"yotonnet node: cannot listen: {e}") from None
    done: defer.Deferred[None] = defer.Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: done.callback(None))
    await done
    await service.stopService()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    task.react(lambda reactor: defer.ensureDeferred(_serve(reactor, args)))


if __name__ == "__main__":
    main()
