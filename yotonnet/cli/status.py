"""``yotonnet status``: a node's links, routes, channels and counters, and the mesh.

Asks the connected node (or ``--node NAME``) through its control channel; the
text form is :func:`yotonnet.cli.status_text.format_status`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import errors
from ..channels import ReqChannel
from ..service.config import Settings
from ..service.node import control_channel_name
from .exits import EXIT_OK, CliError
from .output import peer_text, to_json
from .session import Session
from .status_text import format_status


async def cmd_status(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "status")
    try:
        await session.join()
        topology = session.ctx.topology()
        if args.node:
            target = _find_node(topology, args.node, session)
            control = ReqChannel(session.ctx, control_channel_name(int(target["id"], 16)),
                                 timeout=session.timeout)
            if not control.responders:
                raise CliError(f"node {args.node!r} serves no control channel (a plain context, "
                               "not a node service), so it cannot report its status")
            status = await control.call("status")
        else:
            status = await session.node_call("status")
    except errors.RemoteError as e:
        raise CliError(f"the node failed to report: {peer_text(e.remote_type)}: "
                       f"{peer_text(e.remote_message)}") from None
    except (errors.TimeoutError, errors.NoResponders, errors.ConnectionLost) as e:
        raise CliError(f"no status from the node: {type(e).__name__}: {peer_text(e)}") from None
    finally:
        await session.close()
    me = f"{session.ctx.node_id:016x}"
    mesh = {
        "nodes": [
            {k: n[k] for k in ("id", "name", "reachable", "distance", "links", "interests")}
            for n in topology["nodes"] if n["id"] != me
        ],
        "routes": {d: h for d, h in topology["routes"].items()},
    }
    report = {
        "endpoint": session.endpoint,
        "client": {"id": me, "name": session.ctx.name},
        "node": status,
        "mesh": mesh,
    }
    if args.json:
        # to_json: the reply is another node's data (its keys sortable, its ints printable);
        # ensure_ascii escapes every character a terminal could act on.
        sys.stdout.write(json.dumps(to_json(report), indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    try:
        text = format_status(report)
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        raise CliError(
            f"the status reply of the node is not in the form this version of yotonnet shows "
            f"({type(e).__name__}: {peer_text(e)}); `yotonnet status --json` prints it as is"
        ) from None
    sys.stdout.write(text)
    return EXIT_OK


def _find_node(topology: dict, name: str, session: Session) -> dict:
    found = [n for n in topology["nodes"] if n["name"] == name and n["reachable"]]
    if not found:
        names = sorted({peer_text(n["name"]) for n in topology["nodes"] if n["reachable"]})
        raise CliError(f"no reachable node named {name!r} through {session.endpoint}; "
                       f"known: {', '.join(names) or 'none'}")
    if len(found) > 1:
        ids = ", ".join(n["id"] for n in found)
        raise CliError(f"{len(found)} reachable nodes are named {name!r} ({ids})")
    return found[0]
