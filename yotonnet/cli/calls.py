"""``yotonnet call``: call a method on a request/reply channel, print the result as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import errors
from ..channels import ReqChannel
from ..service.config import Settings
from .exits import EXIT_OK, EXIT_USAGE, CliError
from .output import dumps, peer_text
from .session import Session


async def cmd_call(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "call")
    await session.join()
    req = ReqChannel(session.ctx, args.channel, timeout=session.timeout)
    try:
        result = await req.call(args.method, *args.call_args, **args.call_kwargs)
    except errors.NoResponders:
        raise CliError(f"no replier for channel {args.channel!r} is reachable through "
                       f"{session.endpoint}") from None
    except errors.TimeoutError:
        raise CliError(f"{args.channel} {args.method}: no reply within {session.timeout:g} s "
                       "(--timeout)") from None
    except errors.RemoteError as e:
        detail = ""
        if args.verbose and e.remote_traceback:
            # The replier's traceback keeps its lines, each escaped.
            detail = "".join(f"\n{peer_text(line)}"
                             for line in e.remote_traceback.rstrip().split("\n"))
        raise CliError(f"{args.channel} {args.method} raised {peer_text(e.remote_type)}: "
                       f"{peer_text(e.remote_message)}{detail}") from None
    except errors.MessageTypeError as e:
        raise CliError(f"cannot send these arguments: {e}", EXIT_USAGE) from None
    finally:
        await session.close()
    sys.stdout.write(dumps(result) + "\n")
    return EXIT_OK
