"""Helpers for the kernel tests: a broker with a real kernel process, clients that record.

Every wait is bounded (see ``waits.py``) so a hang fails the test instead of
blocking the run; nothing here measures time.
"""

from __future__ import annotations

from typing import Any

from certs_fixture import path
from twisted.internet import defer, reactor
from waits import WAIT, bounded

from yotonnet import Context, ContextConfig
from yotonnet.kernel import COLLABORATOR, BrokerConfig, KernelBroker, KernelClient, table_roles
from yotonnet.security.settings import Security

# (a 1 MiB flow window, not the 4 MiB default: the stalled-console tests fill every hop's
# window, and the kernel's queues behind them, with a few megabytes of output)
FAST = ContextConfig(heartbeat=0.2, busy_timeout=2.0, reconnect_initial=0.05,
                     reconnect_max=0.5, request_timeout=WAIT, flow_window=1 << 20)


class Recorder:
    """A client's output, in arrival order, with the lines of stdout counted."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.inputs: list[tuple[str, bool]] = []

    def __call__(self, message: dict) -> None:
        self.messages.append(message)

    def kinds(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["kind"] == kind]

    def stdout(self) -> str:
        return "".join(m["text"] for m in self.kinds("stdout"))

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if m["seq"] is not None]


async def start_broker(testcase: Any, name: str, **config: Any) -> tuple[Context, KernelBroker,
                                                                          str]:
    """A broker context listening on a loopback port, its kernel started and idle.

    Its node checks tokens, so that each client of :func:`attach` is the user it logs
    in as (roles go by login, never by claim)."""
    ctx = Context(f"broker-{name}", reactor, config=FAST,
                  security=Security(tokens=path("tokens.txt")))
    port = await ctx.listen("tcp:0:interface=127.0.0.1")
    testcase.addCleanup(ctx.close)
    owner = config.pop("owner", "alice")
    backend = config.pop("backend", None)  # default: yotonnet's Python kernel
    # Unless a test says otherwise, every logged-in user may run code (as with
    # `yotonnet kernel --default-role collaborator`); the default is owner only.
    role_of = config.pop("role_of", None) or table_roles(owner, {}, COLLABORATOR)
    broker = KernelBroker(ctx, name, owner=owner, role_of=role_of, backend=backend,
                          config=BrokerConfig(**{"unresponsive_after": 0.5,
                                                 "presence_check": 0.2, **config}))
    testcase.addCleanup(broker.close)
    await bounded(broker.start(), "the kernel to start")
    return ctx, broker, f"tcp:127.0.0.1:{port.getHost().port}"


async def attach(testcase: Any, endpoint: str, name: str, user: str,
                 **kwargs: Any) -> tuple[Context, KernelClient, Recorder]:
    """A client context linked to ``endpoint`` as ``user`` (with that user's token) and
    attached to kernel ``name``."""
    ctx = Context(f"client-{user}", reactor, config=FAST,
                  security=Security(token_file=path(f"{user}.token")))
    testcase.addCleanup(ctx.close)
    await bounded(ctx.connect(endpoint), f"{user} to link to {endpoint}")
    rec = Recorder()
    client = KernelClient(ctx, name, user=user, on_output=kwargs.pop("on_output", rec),
                          **kwargs)
    await bounded(client.attach(), f"{user} to attach")
    testcase.addCleanup(lambda: defer.ensureDeferred(client.detach()))
    return ctx, client, rec


async def relay_to(testcase: Any, endpoint: str) -> str:
    """A relay node (checking tokens) linked to ``endpoint``; the relay's endpoint, so that
    clients attached there are one hop further from the kernel."""
    relay = Context("relay", reactor, config=FAST, security=Security(tokens=path("tokens.txt")))
    testcase.addCleanup(relay.close)
    port = await relay.listen("tcp:0:interface=127.0.0.1")
    await bounded(relay.connect(endpoint), f"the relay to link to {endpoint}")
    return f"tcp:127.0.0.1:{port.getHost().port}"


class StalledConsole:
    """An ``on_output`` that stops taking records at the first line printed (its Deferred
    waits for :attr:`gate`) and keeps every record it was given in :attr:`got`."""

    def __init__(self, stdout_kind: str) -> None:
        self.stdout_kind = stdout_kind
        self.gate: defer.Deferred[None] = defer.Deferred()
        self.got: list[dict] = []

    def __call__(self, message: dict) -> defer.Deferred | None:
        self.got.append(message)
        if message["kind"] == self.stdout_kind and not self.gate.called:
            return self.gate
        return None
