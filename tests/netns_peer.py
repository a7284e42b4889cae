"""A mesh node for the multi-host tests: one process per network namespace.

Run as ``python netns_peer.py --name A --node-id 1 --listen HOST:PORT
[--peer HOST:PORT ...] [--publish CHANNEL | --subscribe CHANNEL]``. It prints
one JSON object per line on stdout: ``{"event": "ready"}`` once listening,
then for a subscriber a report every 100 ms: messages received, the last
sequence number, how many were missing (gaps) and how many arrived out of
order or twice (which the mesh promises never happens).
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet import defer, task

import yotonnet
from yotonnet.mesh.context import ContextConfig
from yotonnet.security.settings import Security


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def run(reactor, args) -> None:
    config = ContextConfig(
        heartbeat=0.2, busy_timeout=0.6, reconnect_initial=0.1, reconnect_max=0.5
    )
    # Namespaces on a private test bridge: links are unauthenticated and not loopback.
    open_mesh = Security(allow_anonymous=True)
    ctx = yotonnet.Context(
        args.name, reactor, config=config, node_id=args.node_id, security=open_mesh
    )
    host, port = args.listen.rsplit(":", 1)
    await ctx.listen(f"tcp:{port}:interface={host}")
    for peer in args.peer:
        phost, pport = peer.rsplit(":", 1)
        ctx.connect(f"tcp:{phost}:{pport}")
    emit(event="ready", name=args.name)

    if args.subscribe:
        sub = yotonnet.SubChannel(ctx, args.subscribe, yotonnet.OBJECT)
        seen = {"count": 0, "last": 0, "gaps": 0, "disorder": 0}

        def got(seq: int) -> None:
            if seq <= seen["last"]:
                seen["disorder"] += 1
            else:
                seen["gaps"] += seq - seen["last"] - 1 if seen["last"] else 0
                seen["last"] = seq
            seen["count"] += 1

        sub.subscribe(got)
        task.LoopingCall(lambda: emit(event="sub", **seen)).start(0.1)
    if args.publish:
        pub = yotonnet.PubChannel(ctx, args.publish, yotonnet.OBJECT)
        await pub.wait_for_subscribers()
        counter = {"seq": 0}

        def tick() -> None:
            counter["seq"] += 1
            pub.send(counter["seq"])

        task.LoopingCall(tick).start(0.005)
    task.LoopingCall(
        lambda: emit(
            event="topology",
            reachable=sorted(
                n["name"] for n in ctx.topology()["nodes"] if n["reachable"]
            ),
            links={link["peer_name"]: link["status"] for link in ctx.topology()["links"]},
        )
    ).start(0.25)
    await defer.Deferred()  # run until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--publish")
    parser.add_argument("--subscribe")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
