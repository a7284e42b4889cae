"""``yotonnet kernel NAME``, ``yotonnet console NAME``, ``yotonnet jupyter install NAME``.

``kernel`` runs a broker (:class:`~yotonnet.kernel.KernelBroker`) in the
foreground: it listens (``--listen``) and/or links to a node (``--connect``;
by default the local node, like the client subcommands), starts the kernel
process and serves it until SIGINT/SIGTERM or a ``shutdown`` from its owner.
``--peer`` (repeatable) links to more nodes, as ``yotonnet node`` does. It
prints ``listening on HOST:PORT``, ``linked to ENDPOINT`` and ``ready`` lines
on stdout. ``--jupyter SPEC`` runs the Jupyter kernel of kernelspec SPEC
instead of yotonnet's Python kernel (:mod:`yotonnet.kernel.jupyter`).

``console`` attaches an interactive terminal: ``>>>`` prompts (``...`` for
continuation lines), everyone's output as it comes, code others run shown as
``[user] >>> code``, Ctrl-C interrupts the running code, Ctrl-D leaves, tab
completes names from the kernel. Lines starting with ``%`` are console
commands (``%help``). ``-c CODE`` runs CODE and exits (status 1 if it raised).

``jupyter install NAME`` installs the Jupyter kernelspec ``yotonnet-NAME``,
whose kernel process (:mod:`yotonnet.kernel.frontend`) attaches any Jupyter
frontend to shared kernel NAME.

All register in ``yotonnet.cli.build_parser`` through :func:`add_kernel_parsers`
and run themselves (``args.run``): the console needs the main thread for the
terminal, so the reactor runs in the background (:mod:`yotonnet.blocking`).
"""

from __future__ import annotations

import argparse
import codeop
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet import defer, task

from ..service.config import DEFAULT_CONNECT
from . import protocol as p
from .roles import ROLES, VIEWER, default_roles, default_user, table_roles

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_kernel_parsers(
    sub: Callable[..., argparse.ArgumentParser],
    client_options: Callable[[argparse.ArgumentParser], None],
    security_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``kernel`` and ``console`` with ``sub(name, help, description)`` of the main
    parser; ``client_options`` adds --connect/--timeout/--config/-v."""
    k = sub("kernel", "run a shared kernel (Python, or any Jupyter kernel) on the mesh",
            "Start a Python kernel process (or, with --jupyter SPEC, the Jupyter kernel of\n"
            "kernelspec SPEC) and serve it to the mesh as NAME, until interrupted or\n"
            "shut down by its owner. Consoles attach with `yotonnet console NAME` from\n"
            "any node of the mesh.\n"
            f"Without --listen or --peer it links to --connect (default {DEFAULT_CONNECT}).")
    k.add_argument("kernel_name", metavar="NAME", help="kernel name (dotted words)")
    k.add_argument("--name", dest="node_name", metavar="NODE",
                   help="the broker's node name in the mesh (default kernel-NAME)")
    k.add_argument("--listen", action="append", metavar="ENDPOINT",
                   help="also accept peers on this server endpoint; repeatable")
    k.add_argument("--peer", action="append", metavar="ENDPOINT",
                   help="link to this peer (like `yotonnet node --peer`); repeatable")
    k.add_argument("--owner", metavar="USER",
                   help=f"the kernel's owner (default this user, {default_user()})")
    k.add_argument("--role", action="append", metavar="USER=ROLE", default=[],
                   help=f"give USER a role ({', '.join(ROLES)}); repeatable")
    k.add_argument("--default-role", choices=ROLES, default=None,
                   help="role of users not named by --role (default viewer: only the "
                   "owner and users given a role may run code)")
    k.add_argument("--python", metavar="EXE", default=None,
                   help="interpreter of the kernel (default: this one)")
    k.add_argument("--jupyter", metavar="KERNELSPEC",
                   help="run the Jupyter kernel of this kernelspec (python3, bash, any "
                   "installed one: `jupyter kernelspec list`) instead of yotonnet's "
                   "Python kernel; needs the jupyter extra (pip install 'yotonnet[jupyter]')")
    k.add_argument("--jupyter-transport", choices=("ipc", "tcp"), default="ipc",
                   help="how the broker reaches the Jupyter kernel on this host: unix "
                   "sockets in a private directory (ipc, default) or 127.0.0.1 (tcp, for "
                   "kernels without ipc)")
    k.add_argument("--cwd", metavar="DIR", help="working directory of the kernel")
    k.add_argument("--history", type=int, default=10_000, metavar="N",
                   help="output messages kept for late joiners (default 10000)")
    k.add_argument("--unresponsive", type=float, default=1.0, metavar="SECONDS",
                   help="heartbeat silence that makes the kernel very-busy (default 1)")
    client_options(k)
    security_options(k)
    k.set_defaults(run=run_kernel)

    c = sub("console", "attach an interactive console to a shared kernel",
            "Attach to kernel NAME: type Python at the prompt; see everyone's output.\n"
            "Ctrl-C interrupts the running code, Ctrl-D leaves, %help lists commands.")
    c.add_argument("kernel_name", metavar="NAME", help="kernel name")
    c.add_argument("--user", metavar="USER", help="a name to show when the mesh cannot vouch "
                   "for you (then it is marked unverified and grants nothing); otherwise your "
                   f"login is your name (your OS user, {default_user()}, on this host)")
    c.add_argument("--history", type=int, default=None, metavar="N",
                   help="past output messages to show on attach (default 1000; 0 with -c)")
    c.add_argument("-c", dest="code", metavar="CODE",
                   help="run CODE, print its output and exit (1 if it raised)")
    c.add_argument("--never-pause-kernel", action="store_true",
                   help="never slow the kernel down, e.g. on a slow link: while this console "
                   "lags, it catches up from the broker's history instead")
    client_options(c)
    security_options(c)
    c.set_defaults(run=run_console)

    j = sub("jupyter", "let Jupyter frontends (JupyterLab, Notebook, VS Code...) use a shared "
            "kernel", "Jupyter and the shared kernels: `yotonnet jupyter install NAME` installs "
            "a kernelspec\nthat Jupyter frontends start like any kernel.")
    actions = j.add_subparsers(dest="action", metavar="ACTION", required=True)
    i = actions.add_parser(
        "install", help="install the kernelspec yotonnet-NAME: shared kernel NAME on the mesh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Install a Jupyter kernelspec yotonnet-NAME (in your user's Jupyter "
        "directory by\ndefault) whose kernel process is a client of shared kernel NAME: "
        "a frontend that\npicks it (\"NAME on the mesh\") executes in the shared kernel "
        "and sees everyone's\ncode and output. The connection and credential options given "
        "here are those the\nprocess uses (file paths are made absolute; secrets stay in "
        "their files).\n\nexample:\n  yotonnet jupyter install shared --connect "
        "tcp:hub:7200 --token-file ~/.yotonnet/bob.token\n  jupyter console --kernel "
        "yotonnet-shared")
    i.set_defaults(parser=i, run=run_jupyter_install)
    i.add_argument("kernel_name", metavar="NAME", help="the shared kernel's name")
    i.add_argument("--display-name", metavar="TEXT",
                   help="what frontends show (default \"NAME on the mesh\")")
    i.add_argument("--language", default="python", metavar="LANG",
                   help="the kernel's language, for the frontends' menus (default python)")
    where = i.add_mutually_exclusive_group()
    where.add_argument("--user", dest="where", action="store_const", const="user",
                       help="install for this user (default)")
    where.add_argument("--sys-prefix", dest="where", action="store_const",
                       const="sys-prefix", help=f"install into this Python's prefix "
                       f"({sys.prefix})")
    where.add_argument("--prefix", metavar="DIR",
                       help="install into DIR/share/jupyter/kernels (then JUPYTER_PATH="
                       "DIR/share/jupyter finds it)")
    i.add_argument("--history", type=int, default=200, metavar="N",
                   help="past output records a frontend gets when it starts (default 200)")
    i.add_argument("--shutdown", choices=("detach", "kernel"), default="detach",
                   help="what a frontend's shutdown does: its own process leaves (detach, "
                   "default) or the shared kernel ends too (kernel; as the owner's role "
                   "allows)")
    i.add_argument("--never-pause-kernel", action="store_true",
                   help="never slow the kernel down for these frontends (they may miss "
                   "output when they fall far behind)")
    client_options(i)
    security_options(i)


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    args.parser.error(message)
    raise AssertionError("unreachable")


def _check(args: argparse.Namespace) -> None:
    try:
        p.validate_kernel_name(args.kernel_name)
    except ValueError as e:
        _usage(args, str(e))
    if args.history is not None and args.history < (1 if args.command == "kernel" else 0):
        _usage(args, f"--history must be >= {1 if args.command == 'kernel' else 0}")


def _security(settings: Any) -> dict[str, Any]:
    """``security=`` for a Context, when the settings carry the security work's options."""
    security = getattr(settings, "security", None)
    return {} if security is None else {"security": security}


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- yotonnet kernel


def run_kernel(args: argparse.Namespace, settings: Any) -> NoReturn:
    _check(args)
    roles: dict[str, str] = {}
    for item in args.role:
        user, sep, role = item.rpartition("=")
        if not sep or not user or role not in ROLES:
            _usage(args, f"--role takes USER=ROLE with ROLE one of {', '.join(ROLES)}, "
                         f"not {item!r}")
        roles[user] = role
    if args.unresponsive <= 0:
        _usage(args, "--unresponsive must be > 0")
    if args.jupyter is not None and args.python is not None:
        _usage(args, "--python is for yotonnet's Python kernel; a Jupyter kernel's "
                     "interpreter is its kernelspec's")
    from ..cli import _begin_client_logging

    _begin_client_logging(args.verbose)
    task.react(lambda reactor: defer.ensureDeferred(_kernel_main(reactor, args, settings,
                                                                 roles)))
    raise AssertionError("task.react exits")


async def _kernel_main(reactor: Any, args: argparse.Namespace, settings: Any,
                       roles: dict[str, str]) -> None:
    from ..mesh.context import Context, ContextConfig
    from .broker import BrokerConfig, KernelBroker

    name = args.kernel_name
    owner = args.owner or default_user()
    if roles or args.default_role:
        role_of = table_roles(owner, roles, args.default_role or VIEWER)
    else:
        role_of = default_roles(owner)
    # A broker is a node of the mesh, even when it only dials: callers reach it by its
    # own record, and it reads its clients' identities from the mesh's bindings.
    ctx = Context(args.node_name or f"kernel-{name}", reactor,
                  config=ContextConfig(**vars(settings.context)), role="node",
                  **_security(settings))
    if args.listen:
        # A broker that accepts peers is a node of the mesh: it answers `yotonnet status`
        # (and so health checks) like one.
        from ..service.node import NodeControl

        NodeControl(ctx)
    for endpoint in args.listen or []:
        try:
            port = await ctx.listen(endpoint)
        except Exception as e:  # noqa: BLE001 - any listen failure ends the command
            _note(f"yotonnet kernel: error: cannot listen on {endpoint}: {e}")
            raise SystemExit(EXIT_FAILURE) from None
        host = port.getHost()
        where = f"{host.host}:{host.port}" if hasattr(host, "port") else str(host.name)
        print(f"yotonnet kernel {name}: listening on {where}", flush=True)
    peers = list(args.peer or [])
    if args.connect is not None or not (args.listen or peers):
        peers.insert(0, settings.client.connect)
    for endpoint in peers:
        try:
            d = ctx.connect(endpoint)  # keeps retrying with backoff until the peer is up
        except RuntimeError as e:
            _note(f"yotonnet kernel: error: {endpoint}: {e}")
            raise SystemExit(EXIT_FAILURE) from None
        d.addCallback(lambda _, ep=endpoint: print(f"yotonnet kernel {name}: linked to {ep}",
                                                   flush=True))
        d.addErrback(lambda f, ep=endpoint: _note(f"yotonnet kernel: error: {ep}: "
                                                  f"{f.getErrorMessage()}"))
    backend = None
    if args.jupyter is not None:
        try:
            from .jupyter import JupyterBackend
        except ImportError as e:
            _note(f"yotonnet kernel: error: {e}")
            await ctx.close()
            raise SystemExit(EXIT_FAILURE) from None
        backend = JupyterBackend(args.jupyter, transport=args.jupyter_transport, cwd=args.cwd)
    broker = KernelBroker(
        ctx, name, owner=owner, role_of=role_of, python=args.python or sys.executable,
        cwd=args.cwd, backend=backend,
        config=BrokerConfig(history=args.history, unresponsive_after=args.unresponsive),
    )
    try:
        await broker.start()
    except Exception as e:  # noqa: BLE001 - the kernel process would not start
        _note(f"yotonnet kernel: error: the kernel process did not start: {e}")
        await broker.close()
        await ctx.close()
        raise SystemExit(EXIT_FAILURE) from None
    what = f"Jupyter kernel {args.jupyter}, " if args.jupyter is not None else ""
    print(f"yotonnet kernel {name}: ready ({what}pid {broker.process_info.get('pid')}, "
          f"owner {owner})", flush=True)

    async def stop() -> None:
        await broker.close()
        await ctx.close()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(stop()))
    await broker.stopped
    print(f"yotonnet kernel {name}: shut down", flush=True)
    # Let the shutdown reply and the last status leave before the links close.
    await task.deferLater(reactor, 0.2, lambda: None)


# --- yotonnet console


class Console:
    """The terminal side: renders output, runs the prompt loop."""

    def __init__(self, args: argparse.Namespace, settings: Any, out: Any = None,
                 err: Any = None) -> None:
        self.args = args
        self.settings = settings
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lock = threading.Lock()
        self.user = args.user or default_user()
        self.pending_code: str | None = None
        self.last_state: str | None = None
        self.last_link: str | None = None
        self.last_input: int | None = None
        self.client: Any = None
        self._completions: tuple[str, list[str]] = ("", [])

    # --- output (reactor thread)

    def write(self, text: str, stream: Any = None) -> None:
        with self.lock:
            stream = stream or self.out
            stream.write(text)
            stream.flush()

    def on_output(self, m: dict) -> None:
        kind, text, user = m["kind"], m["text"], m.get("user")
        if self.args.code is not None and kind not in (p.STDOUT, p.STDERR, p.RESULT, p.ERROR,
                                                       p.DISPLAY, p.UPDATE_DISPLAY):
            return  # -c: only the output, as a script's
        if kind in (p.STDOUT, p.RESULT, p.DISPLAY, p.UPDATE_DISPLAY):
            self.write(text)
            others = [t for t in (m.get("data") or {}) if t != "text/plain"]
            if others:  # a terminal shows text/plain; say what else a frontend would show
                self.write(f"[also sent as {', '.join(sorted(others))}]\n")
        elif kind in (p.CLEAR_OUTPUT, p.END):
            pass  # a terminal's output stays; the end of an execution shows as the prompt
        elif kind in (p.STDERR, p.ERROR):
            if kind == p.ERROR and not _isatty(self.err):
                text = p.strip_ansi(text)  # a Jupyter kernel's colours, for a terminal only
            self.write(text, self.err)
        elif kind == p.EXECUTE:
            if user == self.user and text == self.pending_code:
                self.pending_code = None  # our own: already on the screen
                return
            lines = text.splitlines() or [""]
            shown = "\n".join([f"[{user}] >>> {lines[0]}"] + [f"[{user}] ... {x}"
                                                               for x in lines[1:]])
            self.write(shown + "\n")
        elif kind == p.STDIN:
            if user != self.user:
                self.write(f"[{user}] {text}")
        else:  # join, leave, system
            self.write(f"* {text}")

    def on_status(self, status: dict) -> None:
        if self.args.code is not None:
            return  # -c: only the code's output
        state, link = status.get("state"), status.get("link")
        waiting = status.get("input") or {}
        if waiting.get("exec") != self.last_input and waiting:
            mine = self.client is not None and waiting.get("client") == self.client.public_id
            if not mine:  # (this console shows the prompt itself)
                prompt = str(waiting.get("prompt") or "").strip()
                self.write(f"* waiting for input from {waiting.get('user')}"
                           + (f" ({prompt})" if prompt else "") + "\n")
        self.last_input = waiting.get("exec")
        if link != self.last_link and self.last_link is not None:
            self.write(f"* link to the kernel {'restored' if link == 'up' else 'lost'}\n")
        self.last_link = link
        if state != self.last_state and state not in (p.BUSY, p.IDLE, None):
            extra = ""
            proc = status.get("process") or {}
            if state == p.DEAD:
                extra = f" ({proc.get('reason')}); %restart starts a new one"
            self.write(f"* kernel {state}{extra}\n")
        elif state in (p.IDLE, p.BUSY) and self.last_state in (p.VERY_BUSY, p.STARTING,
                                                               p.RESTARTING):
            self.write(f"* kernel {state}\n")
        self.last_state = state

    def ask(self, prompt: str, password: bool) -> str:
        if password:
            import getpass

            return getpass.getpass(prompt)
        return input(prompt)

    # --- the loop (main thread)

    def run(self) -> int:
        from .blocking import BlockingKernelClient

        try:
            self.client = BlockingKernelClient(
                self.args.kernel_name, connect=self.settings.client.connect, user=self.user,
                security=_security(self.settings).get("security"),
                on_output=self.on_output, on_input=self.ask, history=self.history(),
                timeout=self.settings.client.timeout,
                lossless=not self.args.never_pause_kernel,
            )
        except Exception as e:  # noqa: BLE001 - unreachable node
            _note(f"yotonnet console: error: cannot reach {self.settings.client.connect}: {e}")
            return EXIT_FAILURE
        try:
            try:
                info = self.client.attach()
            except Exception as e:  # noqa: BLE001 - no broker, refused
                _note(f"yotonnet console: error: {e}")
                return EXIT_FAILURE
            self.user = self.client.caller.user  # the broker's (authenticated) view
            self.last_state = info["status"].get("state")
            self.client.watch_status(self.on_status)
            try:  # the recent output first, then the banner and the prompt
                self.client.wait_for_seq(info["last_seq"])
            except Exception:  # noqa: BLE001 - a slow history is no reason to stop
                pass
            if self.args.code is not None:
                code = self.args.code
                if code.strip().startswith("%"):
                    ok = self.command(code.strip()[1:]) != "error"
                else:
                    ok = self.execute(code)
                return EXIT_OK if ok else EXIT_FAILURE
            others = [w["user"] for w in info["presence"] if w["client"] !=
                      self.client.public_id]
            self.write(
                f"yotonnet console: kernel {self.args.kernel_name} as {self.user} "
                f"({info['role']}), state {self.last_state}"
                + (f"; also here: {', '.join(others)}" if others else "")
                + ".\nCtrl-C interrupts, Ctrl-D leaves, %help lists commands.\n"
            )
            self.setup_readline()
            self.loop()
            return EXIT_OK
        finally:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - leaving anyway
                pass

    def history(self) -> int:
        if self.args.history is not None:
            return self.args.history
        return 0 if self.args.code is not None else 1000

    def setup_readline(self) -> None:
        try:
            import readline
        except ImportError:
            return
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t\n()[]{},:;=+-*/%<>!&|^~'\"")
        readline.parse_and_bind("tab: complete")

    def complete(self, text: str, state: int) -> str | None:
        if state == 0 or self._completions[0] != text:
            try:
                matches = self.client.complete(text) if text else []
            except Exception:  # noqa: BLE001 - no completion rather than a crash
                matches = []
            self._completions = (text, matches)
        matches = self._completions[1]
        return matches[state] if state < len(matches) else None

    def loop(self) -> None:
        lines: list[str] = []
        while True:
            try:
                line = input("... " if lines else ">>> ")
            except EOFError:
                self.write("\n")
                return
            except KeyboardInterrupt:
                self.write("\nKeyboardInterrupt\n")
                lines = []
                continue
            if not lines and line.strip().startswith("%"):
                if self.command(line.strip()[1:]) == "quit":
                    return
                continue
            lines.append(line)
            source = "\n".join(lines)
            try:
                complete = codeop.compile_command(source, "<console>", "exec")
            except (SyntaxError, ValueError, OverflowError):
                complete = True  # the kernel reports the error
            if complete is None and line.strip():
                continue
            lines = []
            if source.strip():
                self.execute(source)

    def execute(self, code: str) -> bool:
        self.pending_code = code
        future = self.client.submit(code)
        while True:
            try:
                result = future.result(0.1)
                break
            except KeyboardInterrupt:
                self.write("\n* interrupting\n")
                try:
                    self.client.interrupt()
                except Exception as e:  # noqa: BLE001
                    self.write(f"* interrupt failed: {e}\n", self.err)
            except TimeoutError:
                continue
            except Exception as e:  # noqa: BLE001 - the call failed (link, permission)
                self.write(f"* {type(e).__name__}: {e}\n", self.err)
                return False
        return result.ok

    def command(self, text: str) -> str | None:
        word, _, rest = text.partition(" ")
        client = self.client
        try:
            if word in ("quit", "exit"):
                return "quit"
            if word == "interrupt":
                client.interrupt()
            elif word == "restart":
                client.restart()
            elif word == "shutdown":
                client.shutdown()
            elif word == "who":
                for w in client.presence():
                    me = " (you)" if w["client"] == client.public_id else ""
                    self.write(f"  {w['user']}  {w['role']}{me}\n")
            elif word == "status":
                status = client.status()
                self.write(f"  state {status.get('state')}, link {status.get('link')}, "
                           f"process {status.get('process')}, "
                           f"interpreter {status.get('interpreter')}\n")
            elif word == "complete":
                self.write("  " + "  ".join(client.complete(rest.strip())) + "\n")
            elif word == "inspect":
                found = client.inspect(rest.strip())
                text = found.get("text") if found.get("found") else None
                self.write((text.rstrip("\n") if text else f"  nothing known of {rest.strip()!r}")
                           + "\n")
            else:
                self.write("  %interrupt  %restart  %shutdown  %who  %status  "
                           "%complete PREFIX  %inspect NAME  %quit\n")
        except Exception as e:  # noqa: BLE001 - e.g. PermissionDenied from the broker
            self.write(f"* {word}: {e}\n", self.err)
            return "error"
        return None


# --- yotonnet jupyter install

#: options passed on to the frontend process as given: (flag, dest, a file path)
_PASSED = (("--connect", "connect", False), ("--timeout", "timeout", False),
           ("--config", "config", True), ("--token-file", "token_file", True),
           ("--login", "login", False), ("--password-file", "password_file", True),
           ("--tls-ca", "tls_ca", True), ("--tls-cert", "tls_cert", True),
           ("--tls-key", "tls_key", True))


def jupyter_kernelspec(args: argparse.Namespace) -> dict[str, Any]:
    """The kernel.json of ``yotonnet jupyter install`` (see :mod:`.frontend`)."""
    import os

    argv = [sys.executable, "-m", "yotonnet.kernel.frontend", "-f", "{connection_file}",
            args.kernel_name]
    for flag, dest, is_file in _PASSED:
        value = getattr(args, dest, None)
        if value is None:
            continue
        value = str(value)
        if is_file:
            value = os.path.abspath(os.path.expanduser(value))
            if not os.path.isfile(value):
                raise ValueError(f"{flag} {value}: no such file")
        argv += [flag, value]
    argv += ["--history", str(args.history), "--shutdown", args.shutdown]
    if args.never_pause_kernel:
        argv.append("--never-pause-kernel")
    return {
        "argv": argv,
        "display_name": args.display_name or f"{args.kernel_name} on the mesh",
        "language": args.language,
        # interrupt_request on the control socket: a signal would reach this process only
        "interrupt_mode": "message",
        "env": {},
        "metadata": {"debugger": False,
                     "yotonnet": {"kernel": args.kernel_name, "connect": args.connect}},
    }


def run_jupyter_install(args: argparse.Namespace, settings: Any) -> NoReturn:
    import json
    import os
    import tempfile

    try:
        p.validate_kernel_name(args.kernel_name)
    except ValueError as e:
        _usage(args, str(e))
    if args.history < 0:
        _usage(args, "--history must be >= 0")
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as e:
        _note(f"yotonnet jupyter: error: installing a kernelspec needs jupyter_client ({e}); "
              "install it with: pip install 'yotonnet[jupyter]'")
        raise SystemExit(EXIT_FAILURE) from None
    try:
        spec = jupyter_kernelspec(args)
    except ValueError as e:
        _note(f"yotonnet jupyter install: error: {e}")
        raise SystemExit(EXIT_FAILURE) from None
    name = f"yotonnet-{args.kernel_name}".lower()
    prefix = args.prefix if args.prefix else sys.prefix if args.where == "sys-prefix" else None
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, name)
        os.mkdir(source)
        with open(os.path.join(source, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        try:
            where = KernelSpecManager().install_kernel_spec(
                source, name, user=prefix is None, prefix=prefix)
        except (OSError, ValueError) as e:
            _note(f"yotonnet jupyter install: error: {e}")
            raise SystemExit(EXIT_FAILURE) from None
    print(f"installed kernelspec {name} ({spec['display_name']}) in {where}")
    print(f"Jupyter frontends list it as {spec['display_name']!r}; in a terminal: "
          f"jupyter console --kernel {name}")
    raise SystemExit(EXIT_OK)


def run_console(args: argparse.Namespace, settings: Any) -> NoReturn:
    _check(args)
    from ..cli import _begin_client_logging

    _begin_client_logging(args.verbose)
    code = Console(args, settings).run()
    sys.stdout.flush()
    raise SystemExit(code)
