"""Ring 3: the ``yotonnet`` command as a user runs it, against real node processes.

A node runs as ``python -m yotonnet.cli node`` (a second one as
``python -m yotonnet.node``, the ``make run`` entry point, with JSON logs) on
a unix socket and TCP port 0; each client subcommand runs as its own process
and its exit status, stdout and stderr are checked:

* ``pub``/``sub`` across two nodes (messages on argv, a subscriber on the
  other node), ``pub`` of JSON lines from stdin to an in-test subscriber, quiet
  when stderr is a pipe, progress when it is a terminal (a pty);
* ``call`` against an in-test replier: result, keyword arguments, a remote
  exception, a timeout, no replier (exit 1 with a message each);
* ``state set`` then ``state get`` from another process, a value held only by
  an in-test context, a channel nobody holds;
* ``status --json`` and the text form, ``status --node`` for the other node;
* ``bench`` (figures present, nothing timed here);
* usage errors exit 2 with a message, an unreachable ``--connect`` exits 1
  naming the endpoint, every subcommand has ``--help``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import procs
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet
from yotonnet import cli

REPO_ROOT = procs.REPO_ROOT
#: bound on a single client command; only a hang should reach it
RUN_TIMEOUT = 30.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT  # this checkout's yotonnet, whatever is installed
    return env


class _Run(ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback(reason.value.exitCode)


async def run_command(
    argv: list[str], stdin: bytes | None = None, child_fds: dict | None = None,
    cwd: str = REPO_ROOT,
) -> tuple[int, str, str]:
    """Run ``argv`` to its end: (exit status, stdout, stderr); killed after RUN_TIMEOUT."""
    proto = _Run(stdin)
    reactor.spawnProcess(proto, argv[0], argv, env=child_env(), path=cwd, childFDs=child_fds)
    killer = reactor.callLater(RUN_TIMEOUT, proto.transport.signalProcess, "KILL")
    code = await proto.done
    if killer.active():
        killer.cancel()
    else:
        raise AssertionError(f"{argv} hung and was killed after {RUN_TIMEOUT:g} s; "
                             f"stderr: {proto.err.decode(errors='replace')}")
    return code, proto.out.decode("utf-8", "replace"), proto.err.decode("utf-8", "replace")


#: seconds a subscriber waits for a publisher to say where its stream starts (default 10)
QUICK_REPAIR_WAIT = 1.0


def run_cli(*args: str, stdin: bytes | None = None) -> defer.Deferred:
    """``python -m yotonnet.cli ARGS`` as a Deferred of (exit status, stdout, stderr)."""
    return defer.ensureDeferred(
        run_command([sys.executable, "-m", "yotonnet.cli", *args], stdin=stdin)
    )


class NodeProcess(procs.PeerProcess):
    """A node's output: ``wait_for`` matches a substring anywhere in a line (log lines
    start with a timestamp)."""

    anywhere = True


def spawn_node(testcase: Any, argv: list[str], label: str, cwd: str = REPO_ROOT) -> NodeProcess:
    proto = NodeProcess(reactor, label)
    reactor.spawnProcess(proto, argv[0], argv, env=child_env(), path=cwd)
    testcase.addCleanup(proto.kill)
    return proto


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replier(yotonnet.RepChannel):
    def add(self, a, b):
        return a + b

    def echo(self, value=None, **kwargs):
        return {"value": value, "kwargs": kwargs}

    def boom(self, message):
        raise ValueError(message)

    def hang(self):
        return defer.Deferred()


class CliTestCase(TestCase):
    timeout = 60

    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="yotonnet-cli-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    async def start_node(self, name: str, *extra: str, module: str = "yotonnet.cli node",
                         log_format: str = "text") -> dict:
        """A node on a unix socket and TCP port 0; its endpoints once it is ready."""
        sock = os.path.join(self.tempdir(), f"{name}.sock")
        argv = [sys.executable, "-u", "-m", *module.split(), "--name", name,
                "--listen", f"unix:{sock}", "--listen", "tcp:0:interface=127.0.0.1",
                "--log-format", log_format, *extra]
        node = spawn_node(self, argv, f"node {name}")
        line = await node.wait_for("ready on")
        if log_format == "json":
            where = json.loads(line)["where"]
        else:
            where = re.search(r"ready on (.*); control channel", line).group(1)
        port = re.search(r"127\.0\.0\.1:(\d+)", where).group(1)
        return {"process": node, "unix": f"unix:{sock}", "tcp": f"tcp:127.0.0.1:{port}"}

    async def linked_context(self, name: str, endpoint: str) -> yotonnet.Context:
        # repair_wait: see quick_start_config
        ctx = yotonnet.Context(f"test-{name}", reactor,
                               config=yotonnet.ContextConfig(repair_wait=QUICK_REPAIR_WAIT))
        self.addCleanup(ctx.close)
        await ctx.connect(endpoint)
        return ctx

    def quick_start_config(self) -> str:
        """A config file for a ``yotonnet sub`` that a ``yotonnet pub`` feeds.

        The pub command ends right after sending, often before its context has answered
        the subscriber's question of where its stream starts (yotonnet.core.repair): the
        subscriber then holds the messages until repair_wait passes unanswered. The same
        path with a 1 s wait instead of the default 10 s."""
        config = os.path.join(self.tempdir(), "sub.toml")
        with open(config, "w") as f:
            f.write(f"[context]\nrepair_wait = {QUICK_REPAIR_WAIT}\n")
        return config

    def assertExit(self, result: tuple[int, str, str], code: int) -> tuple[str, str]:
        got, out, err = result
        self.assertEqual(got, code, f"exit {got}, expected {code}\nstdout: {out}\nstderr: {err}")
        return out, err


def start_node_blocking(name: str, directory: str) -> tuple[subprocess.Popen, dict]:
    """A node process started without the reactor (for setUpClass), and its endpoints."""
    sock = os.path.join(directory, f"{name}.sock")
    log_path = os.path.join(directory, f"{name}.log")
    argv = [sys.executable, "-u", "-m", "yotonnet.cli", "node", "--name", name,
            "--listen", f"unix:{sock}", "--listen", "tcp:0:interface=127.0.0.1"]
    with open(log_path, "wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                 cwd=REPO_ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log_path) as f:
            found = re.search(r"ready on (.*); control channel", f.read())
        if found:
            port = re.search(r"127\.0\.0\.1:(\d+)", found.group(1)).group(1)
            return child, {"unix": f"unix:{sock}", "tcp": f"tcp:127.0.0.1:{port}",
                           "log": log_path}
        if child.poll() is not None:
            break
        time.sleep(0.02)
    child.kill()
    child.wait()
    with open(log_path) as f:
        raise AssertionError(f"node {name} did not get ready:\n{f.read()}")


class NodeTests(CliTestCase):
    """Client subcommands against one running node (shared by the tests of this class:
    each test uses its own channel names)."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.directory = tempfile.mkdtemp(prefix="yotonnet-cli-")
        cls.child, cls.node = start_node_blocking("clinode", cls.directory)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.child.kill()
        cls.child.wait()
        shutil.rmtree(cls.directory, True)

    def test_pub_sub_across_two_nodes(self) -> defer.Deferred:
        async def run() -> None:
            # The second node is the `make run` entry point, with JSON log lines.
            other = await self.start_node("othernode", "--peer", self.node["tcp"],
                                          module="yotonnet node", log_format="json")
            sub = run_cli("sub", "news", "--count", "3", "--json",
                          "--config", self.quick_start_config(), "--connect", other["unix"])
            pub = await run_cli("pub", "news", "one", "two", "three", "--wait", "1",
                                "--connect", self.node["unix"])
            _, err = self.assertExit(pub, 0)
            self.assertEqual(err, "")  # a subscriber existed, stderr is a pipe: nothing to say
            out, _ = self.assertExit(await sub, 0)
            self.assertEqual([json.loads(line) for line in out.splitlines()],
                             ["one", "two", "three"])
            # `status --node` asks the other node through this one.
            out, _ = self.assertExit(await run_cli(
                "status", "--json", "--node", "othernode", "--connect", self.node["tcp"]), 0)
            report = json.loads(out)
            self.assertEqual(report["node"]["name"], "othernode")
            self.assertIn("clinode", [link["peer_name"] for link in report["node"]["links"]])

        return defer.ensureDeferred(run())

    def test_pub_json_lines_from_stdin_quietly_when_piped(self) -> defer.Deferred:
        async def run() -> None:
            ctx = await self.linked_context("sub", self.node["tcp"])
            sub = yotonnet.SubChannel(ctx, "objects", yotonnet.OBJECT)
            got: list = []
            sub.subscribe(got.append)
            lines = b'{"a": 1}\n[1, 2, 3]\n\n"text"\nnull\n' + b"".join(
                b"%d\n" % i for i in range(2000))
            result = await run_cli("pub", "objects", "--type", "object", "--wait", "1",
                                   "--connect", self.node["unix"], stdin=lines)
            out, err = self.assertExit(result, 0)
            self.assertEqual((out, err), ("", ""))  # no progress, no note: stderr is a pipe
            # pub returns once the node passed every message on; they are on their way here.
            await procs_until(lambda: len(got) >= 2004, "the published lines")
            self.assertEqual(got[:4], [{"a": 1}, [1, 2, 3], "text", None])  # blank line skipped
            self.assertEqual(got[4:], list(range(2000)))

        return defer.ensureDeferred(run())

    def test_pub_shows_progress_on_a_terminal(self) -> defer.Deferred:
        async def run() -> None:
            ctx = await self.linked_context("sub", self.node["tcp"])
            sub = yotonnet.SubChannel(ctx, "lines")
            got: list = []
            sub.subscribe(got.append)
            master, slave = pty.openpty()
            self.addCleanup(os.close, master)
            argv = [sys.executable, "-m", "yotonnet.cli", "pub", "lines", "--wait", "1",
                    "--connect", self.node["unix"]]
            try:
                running = defer.ensureDeferred(run_command(
                    argv, stdin=b"".join(b"line %d\n" % i for i in range(3000)),
                    child_fds={0: "w", 1: "r", 2: slave}))
            finally:
                os.close(slave)
            code, out, _ = await running
            self.assertEqual(code, 0)
            terminal = b""
            with contextlib.suppress(OSError):  # EIO once the child's side is closed
                while chunk := os.read(master, 65536):
                    terminal += chunk
            self.assertIn(b"\r\x1b[K", terminal)  # the progress line, redrawn in place
            self.assertIn(b"published", terminal)
            await procs_until(lambda: len(got) >= 3000, "the published lines")
            self.assertEqual(got[-1], "line 2999")

        return defer.ensureDeferred(run())

    def test_sub_prints_ints_of_any_size_and_reaches_count(self) -> defer.Deferred:
        # 5,000 digits: more than Python converts to decimal by default (4,300); 1 MiB:
        # 2.5 million digits, whose decimal conversion is quadratic. Hex is linear.
        five_thousand = 10**4999 + 12345
        widest_decimal = -(10**4300 - 1)
        mebibyte = (1 << (8 * 2**20)) - 3

        async def run() -> None:
            sub = run_cli("sub", "bigints", "--type", "object", "--count", "4",
                          "--config", self.quick_start_config(), "--connect", self.node["unix"])
            lines = [json.dumps({"$bigint": hex(five_thousand)}), str(widest_decimal),
                     json.dumps({"$bigint": hex(mebibyte)}), "[7, {\"k\": -1}]"]
            pub = await run_cli("pub", "bigints", "--type", "object", "--wait", "1",
                                "--connect", self.node["tcp"],
                                stdin="\n".join(lines).encode() + b"\n")
            self.assertExit(pub, 0)
            out, err = self.assertExit(await sub, 0)
            self.assertNotIn("Traceback", err)
            printed = out.splitlines()
            self.assertEqual(printed[0], f'{{"$bigint": "{hex(five_thousand)}"}}')
            self.assertEqual(printed[1], str(widest_decimal))  # still decimal: 4,300 digits
            self.assertEqual(json.loads(printed[2]), {"$bigint": hex(mebibyte)})
            self.assertEqual(json.loads(printed[3]), [7, {"k": -1}])
            self.assertEqual(len(printed), 4)

        return defer.ensureDeferred(run())

    def test_pub_explains_a_decimal_int_too_long_to_read(self) -> defer.Deferred:
        async def run() -> None:
            _, err = self.assertExit(await run_cli(
                "pub", "bigints", "--type", "object", "--connect", self.node["unix"],
                stdin=b"1\n" + b"9" * 5000 + b"\n"), 2)
            self.assertIn("stdin line 2 is not valid JSON (an int of 5000 decimal digits; "
                          'write ints of more than 4300 digits in hex, as {"$bigint": "0x..."})',
                          err)
            self.assertNotIn("Traceback", err)

        return defer.ensureDeferred(run())

    def test_call(self) -> defer.Deferred:
        async def run() -> None:
            ctx = await self.linked_context("rep", self.node["tcp"])
            Replier(ctx, "calc")
            connect = ("--connect", self.node["unix"])
            kw, boom, hang, nobody = await defer.gatherResults([
                # options after the positional arguments are fine too
                run_cli("call", "calc", "echo", "--kwargs", '{"k": true}', '[[1, "x"]]',
                        *connect),
                run_cli("call", "calc", "boom", '["it broke"]', *connect),
                run_cli("call", "calc", "hang", "--timeout", "1", *connect),
                run_cli("call", "nobody.here", "add", "[1, 2]", *connect),
            ])
            out, _ = self.assertExit(kw, 0)
            self.assertEqual(json.loads(out), {"value": [1, "x"], "kwargs": {"k": True}})
            _, err = self.assertExit(boom, 1)
            self.assertIn("raised ValueError: it broke", err)
            _, err = self.assertExit(hang, 1)
            self.assertIn("no reply within 1 s", err)
            _, err = self.assertExit(nobody, 1)
            self.assertIn("no replier for channel 'nobody.here'", err)

        return defer.ensureDeferred(run())

    def test_state_set_then_get(self) -> defer.Deferred:
        async def run() -> None:
            value = {"theme": "dark", "sizes": [1, 2.5], "on": True}
            ctx = await self.linked_context("holder", self.node["tcp"])
            yotonnet.StateChannel(ctx, "held.here").send([1, 2, 3])
            for result in await defer.gatherResults([
                run_cli("state", "set", "settings", json.dumps(value),
                        "--connect", self.node["unix"]),
                run_cli("state", "set", "motd", "--type", "text", "hello",
                        "--connect", self.node["unix"]),
            ]):
                self.assertExit(result, 0)
            # Other processes, another endpoint: the node kept the values.
            obj, text, held, nobody, mismatch = await defer.gatherResults([
                run_cli("state", "get", "settings", "--connect", self.node["tcp"]),
                run_cli("state", "get", "motd", "--type", "text", "--connect", self.node["tcp"]),
                # held only by a context elsewhere (here): its holder pushes the value
                run_cli("state", "get", "held.here", "--connect", self.node["unix"]),
                run_cli("state", "get", "nobody.holds", "--connect", self.node["unix"]),
                run_cli("state", "get", "motd", "--connect", self.node["unix"]),
            ])
            out, _ = self.assertExit(obj, 0)
            self.assertEqual(json.loads(out), value)
            out, _ = self.assertExit(text, 0)
            self.assertEqual(out, "hello\n")
            out, _ = self.assertExit(held, 0)
            self.assertEqual(json.loads(out), [1, 2, 3])
            _, err = self.assertExit(nobody, 1)
            self.assertIn("no node holds state channel 'nobody.holds'", err)
            _, err = self.assertExit(mismatch, 1)  # an OBJECT reader of a TEXT value
            self.assertIn("--type", err)

        return defer.ensureDeferred(run())

    def test_status(self) -> defer.Deferred:
        async def run() -> None:
            ctx = await self.linked_context("watcher", self.node["tcp"])
            yotonnet.SubChannel(ctx, "watched")
            as_json, as_text = await defer.gatherResults([
                run_cli("status", "--json", "--connect", self.node["unix"]),
                run_cli("status", "--connect", self.node["tcp"]),
            ])
            out, _ = self.assertExit(as_json, 0)
            report = json.loads(out)
            node = report["node"]
            self.assertEqual(node["name"], "clinode")
            for key in ("links", "routes", "channels", "counters"):
                self.assertIn(key, node)
            self.assertIn("test-watcher", [link["peer_name"] for link in node["links"]])
            self.assertIn("forwarded", node["counters"])
            # The watcher is a leaf of the node: named there, counted in its record, and no
            # node of the mesh; its subscription is in the node's record.
            self.assertIn("test-watcher", [leaf["name"] for leaf in node["leaves"]])
            self.assertEqual(report["mesh"]["seen_by"], "clinode")
            mesh = {n["name"]: n for n in report["mesh"]["nodes"]}
            self.assertNotIn("test-watcher", mesh)
            self.assertTrue(mesh["clinode"]["reachable"])
            self.assertGreaterEqual(mesh["clinode"]["leaves"], 2)  # the watcher, this command
            self.assertTrue(mesh["clinode"]["interests"])
            out, _ = self.assertExit(as_text, 0)
            self.assertIn("node clinode", out)
            self.assertIn("test-watcher", out)
            self.assertIn("counters:", out)

        return defer.ensureDeferred(run())

    def test_bench(self) -> defer.Deferred:
        async def run() -> None:
            out, err = self.assertExit(await run_cli(
                "bench", "--messages", "2000", "--calls", "50", "--json",
                "--connect", self.node["unix"]), 0)
            figures = json.loads(out)
            self.assertEqual(figures["pubsub"]["messages"], 2000)
            self.assertGreater(figures["pubsub"]["msg_per_s"], 0)
            self.assertEqual(figures["reqrep"]["calls"], 50)
            self.assertGreater(figures["reqrep"]["median_us"], 0)
            self.assertLessEqual(figures["reqrep"]["median_us"], figures["reqrep"]["p99_us"])
            self.assertEqual(err, "")  # no progress when stderr is a pipe

        return defer.ensureDeferred(run())

    def test_sub_ends_cleanly_on_sigterm(self) -> defer.Deferred:
        async def run() -> None:
            argv = [sys.executable, "-u", "-m", "yotonnet.cli", "sub", "forever",
                    "--connect", self.node["unix"]]
            sub = spawn_node(self, argv, "sub forever")
            ctx = await self.linked_context("pub", self.node["tcp"])
            pub = yotonnet.PubChannel(ctx, "forever")
            await pub.wait_for_subscribers()
            pub.send("first")
            await sub.wait_for("first")
            sub.transport.signalProcess(signal.SIGTERM)
            await sub.ended
            self.assertEqual(sub.exit_reason.value.exitCode, 0)

        return defer.ensureDeferred(run())


async def procs_until(predicate: Any, what: str, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"gave up after {seconds:g} s waiting for {what}")


USAGE_ERRORS = [
    (["pub"], "the following arguments are required: CHANNEL"),
    (["call", "calc", "add", "[1, 2"], "ARGS is not valid JSON"),
    (["call", "calc", "add", '{"a": 1}'], "ARGS must be a JSON list"),
    (["call", "calc", "add", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
    (["state", "set", "s", "not json"], "VALUE is not valid JSON"),
    (["state", "set", "s"], "required: VALUE"),
    (["pub", "bad name!", "x"], "invalid channel name 'bad name!'"),
    (["pub", "objects", "--type", "object", "{oops"], "MESSAGE is not valid JSON"),
    (["sub", "news", "--count", "0"], "--count must be >= 1"),
    (["status", "--timeout", "0"], "--timeout must be > 0"),
    (["status", "--connect", "nope:1"], "'nope:1' is not a Twisted client endpoint"),
    (["node", "--listen", "tcp:x"], "'tcp:x' is not a Twisted server endpoint"),
    (["status", "--config", "/nonexistent.toml"], "cannot read config file"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["sub", "news", "--cuont", "1"], "unrecognized arguments: --cuont"),
    (["bench", "--messages", "0"], "--messages must be >= 1"),
]


class ErrorTests(CliTestCase):
    """Usage errors and unreachable nodes, with no node running."""

    def test_usage_errors_exit_2_with_a_message(self) -> defer.Deferred:
        # Every case is checked in-process (ParserTests); these go through main() too.
        cases = [USAGE_ERRORS[1], USAGE_ERRORS[10], USAGE_ERRORS[13]]

        async def run() -> None:
            results = await defer.gatherResults([run_cli(*argv) for argv, _ in cases])
            for (argv, expected), result in zip(cases, results):
                out, err = self.assertExit(result, 2)
                self.assertIn(expected, err, argv)
                self.assertIn("usage: yotonnet", err, argv)
                self.assertEqual(out, "", argv)

        return defer.ensureDeferred(run())

    def test_bad_config_file_exits_2_naming_key_and_file(self) -> defer.Deferred:
        path = os.path.join(self.tempdir(), "client.toml")
        with open(path, "w") as f:
            f.write('[client]\nconect = "tcp:127.0.0.1:1"\n')

        async def run() -> None:
            _, err = self.assertExit(await run_cli("status", "--config", path), 2)
            self.assertIn(f"{path}: unknown key 'client.conect'; did you mean 'connect'?", err)

        return defer.ensureDeferred(run())

    def test_config_file_connect_is_used_and_flags_win(self) -> defer.Deferred:
        port = free_port()
        path = os.path.join(self.tempdir(), "client.toml")
        with open(path, "w") as f:
            f.write(f'[client]\nconnect = "tcp:127.0.0.1:{port}"\ntimeout = 5\n')

        async def run() -> None:
            from_file, from_flag = await defer.gatherResults([
                run_cli("status", "--config", path),
                run_cli("status", "--config", path, "--connect", "unix:/nonexistent/y.sock"),
            ])
            _, err = self.assertExit(from_file, 1)
            self.assertIn(f"tcp:127.0.0.1:{port}", err)
            _, err = self.assertExit(from_flag, 1)
            self.assertIn("unix:/nonexistent/y.sock", err)

        return defer.ensureDeferred(run())

    def test_unreachable_node_exits_1_naming_the_endpoint(self) -> defer.Deferred:
        port = free_port()

        async def run() -> None:
            results = await defer.gatherResults([
                run_cli("status", "--connect", f"tcp:127.0.0.1:{port}"),
                run_cli("pub", "news", "x", "--connect", "unix:/nonexistent/yotonnet.sock"),
                run_cli("sub", "news", "--connect", f"tcp:127.0.0.1:{port}"),
            ])
            for result, endpoint in zip(results, [
                f"tcp:127.0.0.1:{port}", "unix:/nonexistent/yotonnet.sock",
                f"tcp:127.0.0.1:{port}",
            ]):
                out, err = self.assertExit(result, 1)
                self.assertIn(f"cannot reach a yotonnet node at {endpoint}", err)
                self.assertIn("yotonnet node", err)  # what to do about it
                self.assertIn("--connect", err)
                self.assertEqual(out, "")

        return defer.ensureDeferred(run())

    def test_silent_peer_is_reported(self) -> defer.Deferred:
        # Something listens but never speaks the protocol.
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = f"tcp:127.0.0.1:{port.getHost().port}"

        async def run() -> None:
            _, err = self.assertExit(
                await run_cli("status", "--timeout", "1", "--connect", endpoint), 1)
            self.assertIn(endpoint, err)
            self.assertIn("handshake", err)

        return defer.ensureDeferred(run())


class ParserTests(SynchronousTestCase):
    """In-process: --help everywhere, and the JSON the subcommands print."""

    def test_every_subcommand_has_help(self) -> None:
        for argv in (["node"], ["pub"], ["sub"], ["call"], ["state"], ["state", "get"],
                     ["state", "set"], ["status"], ["bench"], []):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as caught:
                cli.build_parser().parse_args([*argv, "--help"])
            self.assertEqual(caught.exception.code, 0, argv)
            self.assertIn(f"usage: yotonnet {' '.join(argv)}".rstrip(), out.getvalue(), argv)

    def test_usage_errors_exit_2_with_a_message(self) -> None:
        for argv, expected in USAGE_ERRORS:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as caught:
                cli.parse(argv)
            self.assertEqual(caught.exception.code, 2, argv)
            self.assertIn(expected, err.getvalue(), argv)
            self.assertIn("usage: yotonnet", err.getvalue(), argv)

    def test_client_subcommands_share_the_connection_options(self) -> None:
        for argv in (["pub", "c"], ["sub", "c"], ["call", "c", "m"], ["state", "get", "c"],
                     ["state", "set", "c", "1"], ["status"], ["bench"]):
            args, settings = cli.parse([*argv, "--connect", "unix:/tmp/x.sock",
                                        "--timeout", "2.5"])
            self.assertEqual(settings.client.connect, "unix:/tmp/x.sock", argv)
            self.assertEqual(settings.client.timeout, 2.5, argv)
        _, settings = cli.parse(["status"])
        self.assertEqual(settings.client.connect, "tcp:127.0.0.1:7117")

    def test_node_options_match_the_twistd_plugin(self) -> None:
        from yotonnet.service.tap import Options

        argv = ["--name", "n", "--listen", "tcp:1", "--listen", "unix:/tmp/n.sock",
                "--peer", "tcp:h:1", "--status", "tcp:8080", "--status-host", "A.example",
                "--status-host", "10.0.0.5", "--status-token"]
        _, from_cli = cli.parse(["node", *argv])
        options = Options()
        options.parseOptions(argv)
        self.assertEqual(from_cli.node, options["settings"].node)
        self.assertEqual(from_cli.node.status_hosts, ["a.example", "10.0.0.5"])
        self.assertIs(from_cli.node.status_token, True)
        _, plain = cli.parse(["node"])  # absent flags leave the defaults (or the file's)
        self.assertEqual((plain.node.status_hosts, plain.node.status_token), ([], False))

    def test_to_json(self) -> None:
        value = {"b": b"\x00\xff", "t": (1, [2, (3,)]), 4: None}
        self.assertEqual(json.loads(cli.dumps(value)),
                         {"b": {"$base64": "AP8="}, "t": [1, [2, [3]]], "4": None})
