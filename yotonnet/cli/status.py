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
            if session.ctx.role == "leaf":
                # A leaf sees only its node: the node's picture says who else there is.
                topology = _as_topology(await session.node_call("status"))
            target = _find_node(topology, args.node, session)
            control = ReqChannel(session.ctx, control_channel_name(int(target["id"], 16)),
                                 timeout=session.timeout)
            await session.view_settled()
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
    if session.ctx.role == "leaf" and isinstance(status, dict) and "nodes" in status:
        # This command joined as a leaf: the mesh is as its node sees it.
        topology = _as_topology(status)
        seen_by = status.get("name")
    else:
        seen_by = None
    mesh = {
        "nodes": [
            {k: n.get(k) for k in ("id", "name", "reachable", "distance", "links", "interests",
                                   "leaves")}
            for n in topology["nodes"] if n["id"] != me
        ],
        "routes": {d: h for d, h in topology["routes"].items()},
        "seen_by": seen_by,
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


def _as_topology(status: dict) -> dict:
    """A node's status reply in the shape of ``Context.topology()`` (nodes and routes)."""
    try:
        nodes = [
            {"id": n["id"], "name": n["name"], "reachable": n["reachable"],
             "distance": n["distance"], "links": dict.fromkeys(n["neighbours"], 1),
             "interests": n["interests"], "leaves": n.get("leaves", 0)}
            for n in status["nodes"]
        ]
        routes = {r["dest"]: r["next_hop"] for r in status.get("routes", [])}
    except (TypeError, KeyError, AttributeError) as e:
        raise CliError(f"the status reply of the node is not in the form this version of "
                       f"yotonnet reads ({type(e).__name__}: {peer_text(e)})") from None
    return {"nodes": nodes, "routes": routes}


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
