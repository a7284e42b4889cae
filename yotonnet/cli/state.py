"""``yotonnet state get`` and ``yotonnet state set``: read or write a state channel."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer

from .. import errors
from ..channels import StateChannel
from ..core.routing import STATE
from ..service.config import Settings
from .exits import EXIT_OK, CliError
from .output import _render, peer_text
from .parser import TYPES
from .session import Session, _wait


async def cmd_state(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    mtype = TYPES[args.type]
    if args.action == "set":
        session = Session(reactor, settings, "state")
        await session.join()
        try:
            await session.node_call("state_set", args.channel, args.state_value, mtype.name)
        except errors.RemoteError as e:
            raise CliError(f"the node refused: {peer_text(e.remote_type)}: "
                           f"{peer_text(e.remote_message)}") from None
        finally:
            await session.close()
        return EXIT_OK

    session = Session(reactor, settings, "state")
    # A holder before linking: whoever holds the channel pushes its value to new holders.
    holder = StateChannel(session.ctx, args.channel, mtype)
    changed: defer.Deferred = defer.Deferred()
    holder.subscribe(lambda _value: changed.called or changed.callback(None))
    try:
        await session.join()
        # After the barrier, a value held by the node itself has arrived.
        others = [n for n in session.ctx.routing.holders(holder.channel_id, STATE)
                  if n != session.ctx.node_id]
        if holder.version is None:
            if not others:
                raise CliError(f"no node holds state channel {args.channel!r} "
                               f"(set it with `yotonnet state set {args.channel} VALUE`)")
            if session.link.peer_id not in others:
                # Held elsewhere only: its holders push to us as they learn of us.
                try:
                    await _wait(reactor, changed, session.timeout, lambda: "no value")
                except CliError:
                    pass  # holders without a value: the value is None
        try:
            value = holder.recv()
        except errors.MessageTypeError as e:
            raise CliError(f"{e}; pass the matching --type") from None
    finally:
        await session.close()
    sys.stdout.buffer.write(_render(value, mtype, args.json))
    sys.stdout.flush()
    return EXIT_OK
