"""The ``yotonnet`` command: run a node, or join the mesh briefly to use it.

``yotonnet node`` runs a node in the foreground (the same node, options and
TOML file as ``twistd yotonnet``). Every other subcommand (``pub``, ``sub``,
``call``, ``state``, ``status``, ``bench``) is a client: it starts a
short-lived :class:`~yotonnet.Context`, links it to one node (``--connect``,
default the local node on 127.0.0.1:7117), waits until the mesh's records
have arrived, does its work and leaves.

Waiting for the records matters: a message published before the client knows
of any subscriber reaches nobody, and a call before it knows of a replier
fails with NoResponders. The client waits until the node's record lists the
link to it (the node sends every record it holds before that one), then makes
one round trip to the node's control channel (see
:class:`yotonnet.service.NodeControl`): frames on one link arrive in order,
so after that reply the node has seen everything the client sent, and the
client has what the node had for it.

Exit status: 0 success, 1 a runtime failure (unreachable node, no replier,
timeout, remote error), 2 a usage error (bad flag, bad JSON, bad config
file). Progress goes to stderr only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
)

from . import __version__, errors
from .channels import PubChannel, RepChannel, ReqChannel, StateChannel, SubChannel
from .config import (
    DEFAULT_CONNECT,
    DEFAULT_LISTEN,
    DEFAULT_TIMEOUT,
    LOG_FORMATS,
    ConfigError,
    Settings,
    resolve,
)
from .context import Context, ContextConfig
from .link import HandshakeError
from .messages import BINARY, OBJECT, TEXT, MessageType
from .names import validate_channel_name
from .routing import STATE
from .security import SecurityError
from .security_cli import flags as security_flags
from .service import ListenError, control_channel_name, make_service

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

TYPES = {"text": TEXT, "object": OBJECT, "binary": BINARY}


class CliError(Exception):
    """Ends a subcommand with a message on stderr and an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- the parser


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
    (see :mod:`yotonnet.security_cli`)."""
    from .security_cli import add_options

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

    from .kernel.cli import add_kernel_parsers  # kernel, console: run themselves (args.run)

    add_kernel_parsers(sub, _client_options, add_security_options)
    from .security_cli import add_commands  # certs, passwd: run themselves (args.run)

    add_commands(sub)
    return parser


# --- argument checks done before any network activity


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    args.parser.error(message)  # prints usage and the message, exits 2
    raise AssertionError("unreachable")


def _parse_json(args: argparse.Namespace, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        _usage(args, f"{what} is not valid JSON ({e}): {text!r}")


def _value_of_type(args: argparse.Namespace, text: str, what: str) -> Any:
    if args.type == "object":
        return _parse_json(args, text, what)
    if args.type == "binary":
        return text.encode("utf-8", "surrogateescape")
    return text


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) found before connecting: names, JSON, counts."""
    if getattr(args, "channel", None) is not None:
        try:
            validate_channel_name(args.channel)
        except ValueError as e:
            _usage(args, str(e))
    command = args.command
    if command == "pub":
        args.values = [_value_of_type(args, m, "MESSAGE") for m in args.messages]
        if args.wait < 0:
            _usage(args, "--wait must be >= 0")
    elif command == "sub":
        if args.count is not None and args.count < 1:
            _usage(args, "--count must be >= 1")
    elif command == "call":
        call_args = _parse_json(args, args.args, "ARGS")
        if not isinstance(call_args, list):
            _usage(args, f"ARGS must be a JSON list of arguments, like '[2, 3]', not {args.args!r}")
        args.call_args = call_args
        kwargs = {} if args.kwargs is None else _parse_json(args, args.kwargs, "--kwargs")
        if not isinstance(kwargs, dict):
            _usage(args, f"--kwargs must be a JSON object like '{{\"x\": 1}}', "
                         f"not {args.kwargs!r}")
        args.call_kwargs = kwargs
    elif command == "state" and args.action == "set":
        args.state_value = _value_of_type(args, args.value, "VALUE")
    elif command == "bench":
        for flag in ("messages", "size", "calls"):
            if getattr(args, flag) < 1:
                _usage(args, f"--{flag} must be >= 1")


def _settings(args: argparse.Namespace) -> Settings:
    try:
        if args.command == "node":
            return resolve(
                args.config, name=args.name, listen=args.listen, peers=args.peer,
                status=args.status, log_format=args.log_format, security=security_flags(args),
            )
        if args.command == "kernel":  # a client, and a node too when it listens or dials
            return resolve(
                args.config, name=args.node_name, listen=args.listen, peers=args.peer,
                connect=args.connect, timeout=args.timeout, security=security_flags(args),
            )
        return resolve(
            args.config, connect=args.connect, timeout=args.timeout,
            security=security_flags(args),
        )
    except ConfigError as e:
        _usage(args, str(e))


# --- output helpers


def to_json(value: Any) -> Any:
    """A JSON-encodable copy of an OBJECT value: tuples become lists, bytes {"$base64": ...}."""
    if isinstance(value, (bytes, bytearray)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {
            k if isinstance(k, (str, int, float, bool)) or k is None else json.dumps(to_json(k)):
            to_json(v)
            for k, v in value.items()
        }
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json(value), ensure_ascii=False)


def _render(value: Any, mtype: MessageType, as_json: bool) -> bytes:
    """One output line for a message or a state value."""
    if as_json or mtype is OBJECT:
        return dumps(value).encode("utf-8") + b"\n"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) + b"\n"
    return str(value).encode("utf-8", "surrogateescape") + b"\n"


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, stream: Any = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _isatty(self.stream)
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self._shown = True
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _note(text: str) -> None:
    """A remark on stderr (never on stdout, which carries the data)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _wait(reactor: Any, d: defer.Deferred, seconds: float, on_timeout: Callable[[], str]) -> Any:
    """``d``, failing with CliError(on_timeout()) after ``seconds``."""
    result: defer.Deferred = defer.Deferred()

    def fire(value: Any) -> None:
        if not result.called:
            if timer.active():
                timer.cancel()
            result.callback(value)

    def fail(failure: Any) -> None:
        if not result.called:
            if timer.active():
                timer.cancel()
            result.errback(failure)

    def expired() -> None:
        if not result.called:
            result.errback(CliError(on_timeout()))
            d.cancel()  # stops what it waited for (a poll, a dial)

    timer = reactor.callLater(seconds, expired)
    d.addCallbacks(fire, fail)
    return result


# --- a short-lived client context


class Session:
    """One client context linked to one node, with the mesh's records in."""

    def __init__(self, reactor: Any, settings: Settings, label: str) -> None:
        self.reactor = reactor
        self.endpoint = settings.client.connect
        self.timeout = settings.client.timeout
        config = ContextConfig(**{
            **vars(settings.context),
            # under the overall bound, so a silent peer is reported as such
            "handshake_timeout": min(settings.context.handshake_timeout, 0.8 * self.timeout),
            "request_timeout": self.timeout,
        })
        try:
            self.ctx = Context(
                f"yotonnet-cli-{label}-{os.getpid()}", reactor, config=config,
                security=settings.security,
            )
        except SecurityError as e:  # e.g. a credentials file that cannot be read
            raise CliError(str(e), EXIT_USAGE) from None
        self.link: Any = None
        #: the node's control channel, None when the peer is a plain context
        self.control: ReqChannel | None = None

    async def join(self) -> None:
        self.link = await self._connect()
        await self._settle()

    async def _connect(self) -> Any:
        d = self.ctx.connect(self.endpoint)
        if d.called and not self.ctx.dialers:
            try:
                await d  # a bad endpoint string fails at once
            except ValueError as e:
                raise CliError(f"--connect: {e}", EXIT_USAGE) from None
        dialer = self.ctx.dialers[-1]
        outcome: defer.Deferred = defer.Deferred()

        def up(link: Any) -> None:
            if not outcome.called:
                outcome.callback(link)

        def refused(failure: Any) -> None:
            if not outcome.called:
                outcome.errback(failure)

        d.addCallbacks(up, refused)

        # A client fails fast: the first failed attempt ends it (the dialer would retry).
        def check() -> None:
            if dialer.attempts >= 1 and not outcome.called:
                outcome.errback(_Unreachable(dialer.last_error))

        poll = task.LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.01, now=False)
        try:
            return await _wait(
                self.reactor, outcome, self.timeout,
                lambda: f"no yotonnet node answered at {self.endpoint} within "
                        f"{self.timeout:g} s (--timeout); is the address right and reachable?",
            )
        except _Unreachable as e:
            reason = e.reason or await self._probe()
            raise CliError(
                f"cannot reach a yotonnet node at {self.endpoint}: {reason}\n"
                f"  Is a node running there? Start one with `yotonnet node` (it listens on "
                f"{DEFAULT_LISTEN}),\n  or pass --connect ENDPOINT to use another node."
            ) from None
        except HandshakeError as e:
            raise CliError(f"{self.endpoint} refused the link: {e}") from None
        finally:
            poll.stop()

    async def _probe(self) -> str:
        """Why a TCP/unix connection to the endpoint fails (the dialer keeps no reason)."""
        endpoint = clientFromString(self.reactor, self.endpoint)
        try:
            proto = await _wait(
                self.reactor, endpoint.connect(Factory.forProtocol(Protocol)),
                min(self.timeout, 5.0), lambda: "connection attempt timed out",
            )
        except CliError as e:
            return e.message
        except Exception as e:  # noqa: BLE001 - any connect failure is the answer wanted
            return str(e) or type(e).__name__
        proto.transport.loseConnection()
        return "the connection was made but the link failed"

    async def _settle(self) -> None:
        """Wait for the node's records, then (on a node service) make one round trip."""
        peer = self.link.peer_id
        me = self.ctx.node_id
        routing = self.ctx.routing
        control_id = None
        control = ReqChannel(self.ctx, control_channel_name(peer), timeout=self.timeout)

        def settled() -> bool:
            state = routing.nodes.get(peer)
            # The node sends every record it holds before its own new one, which lists us.
            return state is not None and me in state.links

        await _wait(
            self.reactor, _until(self.reactor, settled), self.timeout,
            lambda: f"{self.endpoint} linked but sent no routing records within "
                    f"{self.timeout:g} s",
        )
        control_id = control.channel_id
        if control_id in routing.nodes[peer].interests:
            await _wait(
                self.reactor, control.wait_for_responders(), self.timeout,
                lambda: f"the control channel of {self.endpoint} is not reachable",
            )
            self.control = control
            await self.barrier()
        else:
            control.close()  # a plain context (not a node service): records suffice

    async def barrier(self) -> None:
        """One round trip to the node: everything sent before has reached it."""
        if self.control is not None:
            try:
                await self.control.call("ping")
            except errors.YotonnetError as e:
                raise CliError(f"the node at {self.endpoint} did not answer: {e}") from None

    async def node_call(self, method: str, *args: Any) -> Any:
        """Call the node's control channel (see yotonnet.service.NodeControl)."""
        if self.control is None:
            raise CliError(
                f"the peer at {self.endpoint} is a plain yotonnet context, not a node service; "
                "this needs a node run by `yotonnet node` or `twistd yotonnet`"
            )
        return await self.control.call(method, *args)

    async def close(self) -> None:
        if not self.ctx.closed:
            await self.ctx.close()


class _Unreachable(Exception):
    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _until(reactor: Any, predicate: Callable[[], bool], every: float = 0.005) -> defer.Deferred:
    """Fires once ``predicate()`` is true (routing records have no arrival callback)."""
    d: defer.Deferred = defer.Deferred()

    def check() -> None:
        if predicate() and not d.called:
            loop.stop()
            d.callback(None)

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(every, now=True)
    d.addErrback(lambda f: (loop.running and loop.stop(), f)[1])
    return d


async def _drained(pub: PubChannel) -> None:
    """Wait until no message of ``pub`` waits in this process for flow-control credit.

    With a lossless subscriber lagging, sends past the credit window queue
    here; ``ready()`` fires once every target can take more (nothing queued),
    so a following barrier really follows every message.
    """
    if not getattr(pub, "writable", True):
        await pub.ready()


# --- subcommands


async def cmd_pub(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "pub")
    await session.join()
    mtype = TYPES[args.type]
    pub = PubChannel(session.ctx, args.channel, mtype)
    if args.wait:
        await _wait(
            reactor, pub.wait_for_subscribers(args.wait), session.timeout,
            lambda: f"only {pub.subscribers} of {args.wait} subscribers of {args.channel!r} "
                    f"were reachable within {session.timeout:g} s (--timeout)",
        )
    progress = Progress()
    sent = 0
    # The most subscribers known while publishing (one may leave as soon as it has all).
    reached = pub.subscribers
    if args.messages:
        for value in args.values:
            await _drained(pub)
            pub.send(value)
            sent += 1
    else:
        reader = _StdinLines(reactor)
        line_no = 0
        async for lines in reader:
            reached = max(reached, pub.subscribers)
            for raw in lines:
                line_no += 1
                if args.type == "object":
                    if not raw.strip():
                        continue
                    try:
                        value = json.loads(raw)
                    except ValueError as e:
                        progress.clear()
                        raise CliError(f"stdin line {line_no} is not valid JSON ({e}); "
                                       f"{sent} messages were published", EXIT_USAGE) from None
                elif args.type == "binary":
                    value = raw
                else:
                    value = raw.decode("utf-8", "replace")
                await _drained(pub)
                pub.send(value)
                sent += 1
            progress.show(f"published {sent:,} messages to {args.channel}")
            # A round trip per chunk read: the node keeps up before more is read.
            await session.barrier()
    await _drained(pub)
    await session.barrier()
    if session.control is not None and sent:
        progress.show(f"published {sent:,} messages to {args.channel}; waiting for the node "
                      "to pass them on", force=True)
        await session.control.call("drain", args.channel, session.timeout)
    progress.clear()
    subscribers = max(reached, pub.subscribers)
    await session.close()
    if sent and not subscribers:
        _note(f"yotonnet pub: warning: nobody subscribes to {args.channel!r}; "
              f"{sent} message(s) reached nobody (--wait N waits for subscribers)")
    elif progress.enabled:
        _note(f"published {sent:,} message(s) to {args.channel} "
              f"({subscribers} subscriber(s))")
    return EXIT_OK


class _StdinLines:
    """Lines of stdin in chunks, read by a daemon thread so the reactor never blocks.

    ``os.read`` returns what is there (a line typed at a terminal, 64 KiB of a
    pipe), so interactive input goes out at once and bulk input in chunks; a
    semaphore keeps the thread at most two chunks ahead of the publisher.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.room = threading.Semaphore(2)
        self.partial = b""
        threading.Thread(target=self._read, args=(fd,), daemon=True).start()

    def _read(self, fd: int) -> None:
        while True:
            self.room.acquire()
            try:
                data = os.read(fd, 65536)
            except OSError as e:
                self.reactor.callFromThread(self.queue.put, e)
                return
            self.reactor.callFromThread(self.queue.put, data)
            if not data:
                return

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> list[bytes]:
        while True:
            data = await self.queue.get()
            self.room.release()
            if isinstance(data, OSError):
                raise CliError(f"cannot read stdin: {data}")
            if not data:
                if self.partial:
                    last, self.partial = self.partial, b""
                    return [last.rstrip(b"\r")]
                raise StopAsyncIteration
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            if lines:
                return [line.rstrip(b"\r") for line in lines]


async def cmd_sub(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    session = Session(reactor, settings, "sub")
    mtype = TYPES[args.type]
    # Subscribed before linking, so the first record the node gets already lists it.
    sub = SubChannel(session.ctx, args.channel, mtype)
    await session.join()
    out = sys.stdout.buffer
    done: defer.Deferred = defer.Deferred()
    received = 0

    def got(value: Any) -> None:
        nonlocal received
        if done.called:
            return
        try:
            out.write(_render(value, mtype, args.json))
            out.flush()
        except BrokenPipeError:  # e.g. `| head -1`: the reader has all it wants
            done.callback(None)
            return
        received += 1
        if args.count is not None and received >= args.count:
            done.callback(None)

    def link_event(event: Any) -> None:
        if session.ctx.closed or done.called:
            return  # our own leaving
        if event.peer_id == session.link.peer_id and event.status in ("closed", "up"):
            what = "lost" if event.status == "closed" else "back"
            _note(f"yotonnet sub: link to {session.endpoint} {what}"
                  + (f" ({event.reason}); reconnecting" if event.reason else ""))

    session.ctx.watch_links(link_event)
    if _isatty(sys.stderr):
        _note(f"subscribed to {args.channel} via {session.endpoint}; Ctrl-C to stop")
    sub.subscribe(got)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(session.close())
    )
    await done
    await session.close()
    return EXIT_OK


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
        detail = f"\n{e.remote_traceback.rstrip()}" if args.verbose and e.remote_traceback else ""
        raise CliError(f"{args.channel} {args.method} raised {e.remote_type}: "
                       f"{e.remote_message}{detail}") from None
    except errors.MessageTypeError as e:
        raise CliError(f"cannot send these arguments: {e}", EXIT_USAGE) from None
    finally:
        await session.close()
    sys.stdout.write(dumps(result) + "\n")
    return EXIT_OK


async def cmd_state(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    mtype = TYPES[args.type]
    if args.action == "set":
        session = Session(reactor, settings, "state")
        await session.join()
        try:
            await session.node_call("state_set", args.channel, args.state_value, mtype.name)
        except errors.RemoteError as e:
            raise CliError(f"the node refused: {e.remote_type}: {e.remote_message}") from None
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
        raise CliError(f"the node failed to report: {e.remote_type}: {e.remote_message}") from None
    except (errors.TimeoutError, errors.NoResponders, errors.ConnectionLost) as e:
        raise CliError(f"no status from the node: {type(e).__name__}: {e}") from None
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
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_status(report))
    return EXIT_OK


def _find_node(topology: dict, name: str, session: Session) -> dict:
    found = [n for n in topology["nodes"] if n["name"] == name and n["reachable"]]
    if not found:
        names = sorted({n["name"] for n in topology["nodes"] if n["reachable"]})
        raise CliError(f"no reachable node named {name!r} through {session.endpoint}; "
                       f"known: {', '.join(names) or 'none'}")
    if len(found) > 1:
        ids = ", ".join(n["id"] for n in found)
        raise CliError(f"{len(found)} reachable nodes are named {name!r} ({ids})")
    return found[0]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_status(report: dict) -> str:
    """The human-readable form of ``yotonnet status``."""
    st = report["node"]
    client = report["client"]["id"]
    lines = [
        f"node {st.get('name')}  id {st.get('id')}  up {st.get('uptime', 0):.1f} s  "
        f"(via {report['endpoint']})",
        f"listening: {', '.join(st.get('listening', [])) or '-'}",
    ]
    links = st.get("links", [])
    lines.append(f"links ({len(links)}):")
    for link in links:
        who = link.get("peer_name") or "?"
        if link.get("peer") == client:
            who += " (this command)"
        lines.append(
            f"  {who:<32} {link.get('status', '?'):<6} {link.get('direction', ''):<3}  "
            f"frames {link.get('frames_in', 0)}/{link.get('frames_out', 0)} in/out  "
            f"bytes {_size(link.get('bytes_in', 0))}/{_size(link.get('bytes_out', 0))}"
        )
    routes = st.get("routes", [])
    lines.append(f"routes ({len(routes)}):")
    for r in routes:
        lines.append(f"  {r.get('dest_name') or r.get('dest')} via "
                     f"{r.get('next_hop_name') or r.get('next_hop')}  distance {r.get('distance')}")
    chans = st.get("channels", [])
    lines.append(f"channels ({len(chans)}):")
    for c in chans:
        roles = ",".join(c.get("roles", [])) or "pub"
        lines.append(
            f"  {c.get('name') or c.get('id'):<32} {c.get('pattern') or '?':<7} {roles:<9} "
            f"published {c.get('published', 0)}  received {c.get('received', 0)}  "
            f"served {c.get('served', 0)}  remote holders {c.get('remote_holders', 0)}"
        )
    counters = st.get("counters", {})
    lines.append("counters: " + ("  ".join(f"{k} {v}" for k, v in sorted(counters.items()))
                                 or "-"))
    nodes = report["mesh"]["nodes"]
    lines.append(f"mesh, as this command sees it ({len(nodes)} other nodes):")
    names = {n["id"]: n["name"] for n in nodes}
    for n in sorted(nodes, key=lambda n: (not n["reachable"], n["name"])):
        peers = ", ".join(
            names.get(p, "this command" if p == client else p) for p in sorted(n["links"])
        )
        where = f"distance {n['distance']}" if n["reachable"] else "unreachable"
        lines.append(f"  {n['name']:<32} {where:<12} links: {peers or '-'}")
    return "\n".join(lines) + "\n"


async def cmd_bench(reactor: Any, args: argparse.Namespace, settings: Settings) -> int:
    a = Session(reactor, settings, "bench-a")
    b = Session(reactor, settings, "bench-b")
    channel = f"yotonnet.bench.r{secrets.token_hex(6)}"
    progress = Progress()
    try:
        sub = SubChannel(b.ctx, channel, BINARY)
        rep = RepChannel(b.ctx, channel)
        rep.register("echo", lambda value: value)
        await b.join()
        await a.join()
        pub = PubChannel(a.ctx, channel, BINARY)
        await _wait(reactor, pub.wait_for_subscribers(), a.timeout,
                    lambda: "the benchmark subscriber never became reachable through the node")

        # pub/sub throughput: a -> node -> b
        total = args.messages
        got = 0
        finished: defer.Deferred = defer.Deferred()

        def on_message(_value: Any) -> None:
            nonlocal got
            got += 1
            if got == total and not finished.called:
                finished.callback(time.perf_counter())

        sub.subscribe(on_message)
        payload = b"x" * args.size
        start = time.perf_counter()
        for i in range(total):
            await _drained(pub)
            pub.send(payload)
            if i % 1000 == 999:
                progress.show(f"pub/sub: sent {i + 1:,}/{total:,}, received {got:,}")
                await task.deferLater(reactor, 0, lambda: None)  # let the reactor write
        try:
            end = await _wait(reactor, finished, a.timeout + total / 10000,
                              lambda: f"only {got} of {total} messages arrived")
        except CliError:
            progress.clear()
            raise
        rate = total / (end - start)

        # req/rep latency, sequential calls: a -> node -> b -> node -> a
        req = ReqChannel(a.ctx, channel, timeout=a.timeout)
        latencies = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            await req.call("echo", i)
            latencies.append((time.perf_counter() - t0) * 1e6)
            if i % 200 == 199:
                progress.show(f"req/rep: {i + 1:,}/{args.calls:,} calls")
        progress.clear()
    finally:
        await a.close()
        await b.close()
    latencies.sort()
    result = {
        "endpoint": a.endpoint,
        "pubsub": {"messages": total, "size": args.size, "seconds": round(end - start, 6),
                   "msg_per_s": round(rate, 1)},
        "reqrep": {"calls": args.calls,
                   "median_us": round(statistics.median(latencies), 1),
                   "p99_us": round(latencies[min(len(latencies) - 1,
                                                 int(len(latencies) * 0.99))], 1)},
    }
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        ps, rr = result["pubsub"], result["reqrep"]
        sys.stdout.write(
            f"pub/sub {ps['size']} B through {a.endpoint}: {ps['msg_per_s']:,.0f} msg/s "
            f"({ps['messages']:,} messages in {ps['seconds']:.3f} s)\n"
            f"req/rep round trip: median {rr['median_us']:,.0f} us, p99 {rr['p99_us']:,.0f} us "
            f"({rr['calls']:,} sequential calls)\n"
        )
    return EXIT_OK


COMMANDS = {
    "pub": cmd_pub,
    "sub": cmd_sub,
    "call": cmd_call,
    "state": cmd_state,
    "status": cmd_status,
    "bench": cmd_bench,
}


# --- running


def _begin_client_logging(verbose: bool) -> None:
    """Warnings (and with -v, info) of the client context on stderr, without timestamps."""

    def fmt(event: dict) -> str | None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        return f"yotonnet: {text}\n" if text else None

    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        FileLogObserver(sys.stderr, fmt), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def _client_main(reactor: Any, args: argparse.Namespace, settings: Settings) -> None:
    name = args.command + (f" {args.action}" if args.command == "state" else "")
    try:
        code = await COMMANDS[args.command](reactor, args, settings)
    except CliError as e:
        _note(f"yotonnet {name}: error: {e.message}")
        raise SystemExit(e.code) from None
    except errors.ConnectionLost as e:
        _note(f"yotonnet {name}: error: the link to {settings.client.connect} was lost: {e}")
        raise SystemExit(EXIT_FAILURE) from None
    raise SystemExit(code)


async def _node_main(reactor: Any, settings: Settings) -> None:
    top = make_service(settings, reactor)
    try:
        top.startService()
        await top.when_ready()
    except (ListenError, ImportError, OSError, SecurityError) as e:
        await defer.maybeDeferred(top.stopService)
        _note(f"yotonnet node: error: {e}")
        raise SystemExit(EXIT_FAILURE) from None
    # Stopping is part of shutting down: the reactor waits for the links to close.
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    await defer.Deferred()  # until SIGINT/SIGTERM stops the reactor


def parse(argv: list[str]) -> tuple[argparse.Namespace, Settings]:
    """Arguments and settings of a command line; usage errors exit 2 (SystemExit)."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    return args, _settings(args)


def main(argv: list[str] | None = None) -> NoReturn:
    args, settings = parse(sys.argv[1:] if argv is None else argv)
    if hasattr(args, "run"):  # subcommands registered by other modules (yotonnet.kernel.cli)
        args.run(args, settings)
    if args.command == "node":
        from .logs import start_logging

        start_logging(settings.node.log_format, sys.stdout)
        task.react(lambda reactor: defer.ensureDeferred(_node_main(reactor, settings)))
    else:
        _begin_client_logging(args.verbose)
        task.react(lambda reactor: defer.ensureDeferred(_client_main(reactor, args, settings)))
    raise AssertionError("task.react exits")


if __name__ == "__main__":
    main()
