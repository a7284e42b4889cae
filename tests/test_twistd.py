"""Ring 3: the twistd plugin as the README installs it (a regular ``pip install .``).

``twistd`` and the ``yotonnet`` console script are taken from the venv the
test runs in (``make test`` builds it with the Makefile's regular install,
which is what makes ``plugins/`` visible to twistd as ``twisted/plugins/``):

* ``twistd --help`` lists the plugin, found in site-packages (not in this
  checkout) and identical to ``plugins/yotonnet_plugin.py``, and the console
  script runs;
* ``twistd -n --pidfile= yotonnet --config FILE --name NAME`` runs a node
  (the flag overrides the file's name): an in-test context links to it and
  asks its control channel for its status, the HTTP status page answers, and
  SIGTERM shuts it down cleanly, leaving no pid file;
* a node that cannot listen, and a bad option, make twistd exit 1 with a
  message saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile

from test_cli import REPO_ROOT, run_command, spawn_node
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent

import yotonnet
from yotonnet.service.node import control_channel_name

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
CONSOLE_SCRIPT = os.path.join(BIN, "yotonnet")


class _Body(Protocol):
    """Collects an HTTP response body; ``done`` fires with it."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.data)


class TwistdTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if not os.path.exists(TWISTD):
            raise SkipTest(f"no twistd next to {sys.executable}: the tests are not running "
                           "from the venv that `make test` installs the project into")
        self.directory = tempfile.mkdtemp(prefix="yotonnet-twistd-")
        self.addCleanup(shutil.rmtree, self.directory, True)


class PluginInstallTests(TwistdTestCase):
    def test_installed_twistd_lists_the_plugin(self) -> defer.Deferred:
        async def run() -> None:
            # From a directory outside the checkout, as an installed program runs.
            code, out, err = await run_command([TWISTD, "--help"], cwd=self.directory)
            self.assertEqual(code, 0, err)
            self.assertIn("yotonnet", out)
            self.assertIn("A yotonnet mesh node", out)
            code, out, err = await run_command([sys.executable, "-c", (
                "import sys\n"
                "from twisted.application.service import IServiceMaker\n"
                "from twisted.plugin import getPlugins\n"
                "print([p.tapname for p in getPlugins(IServiceMaker)].count('yotonnet'))\n"
                "print(sys.modules['twisted.plugins.yotonnet_plugin'].__file__)\n"
            )], cwd=self.directory)
            self.assertEqual(code, 0, err)
            count, path = out.split()
            self.assertEqual(count, "1")
            site = os.path.realpath(sysconfig.get_paths()["purelib"])
            self.assertEqual(os.path.dirname(os.path.realpath(path)),
                             os.path.join(site, "twisted", "plugins"))
            with open(path) as installed, open(
                    os.path.join(REPO_ROOT, "plugins", "yotonnet_plugin.py")) as source:
                self.assertEqual(installed.read(), source.read(),
                                 "stale install: run `make .venv/.installed`")
            # plugins/ is mapped onto the twisted.plugins namespace: no package of its own
            self.assertFalse(os.path.exists(os.path.join(REPO_ROOT, "plugins", "__init__.py")))

        return defer.ensureDeferred(run())

    def test_console_script_is_installed(self) -> defer.Deferred:
        async def run() -> None:
            self.assertTrue(os.path.exists(CONSOLE_SCRIPT),
                            "no yotonnet console script: run `make .venv/.installed`")
            code, out, err = await run_command([CONSOLE_SCRIPT, "--version"],
                                               cwd=self.directory)
            self.assertEqual(code, 0, err)
            self.assertEqual(out.strip(), f"yotonnet {yotonnet.__version__}")

        return defer.ensureDeferred(run())


class TwistdNodeTests(TwistdTestCase):
    def test_runs_a_node_from_config_and_flags(self) -> defer.Deferred:
        sock = os.path.join(self.directory, "tw.sock")
        config = os.path.join(self.directory, "node.toml")
        with open(config, "w") as f:
            f.write(f'[node]\nname = "fromfile"\nlisten = ["unix:{sock}"]\n'
                    'status = "tcp:0:interface=127.0.0.1"\n\n[context]\nheartbeat = 0.5\n')

        async def run() -> None:
            node = spawn_node(self, [TWISTD, "-n", "--pidfile=", "yotonnet",
                                     "--config", config, "--name", "tw"],
                              "twistd yotonnet", cwd=self.directory)
            line = await node.wait_for("status page on http://")
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            await node.wait_for("ready on")

            ctx = yotonnet.Context("test-twistd", reactor)
            self.addCleanup(ctx.close)
            link = await ctx.connect(f"unix:{sock}")
            self.assertEqual(link.peer_name, "tw")  # the flag overrides the file
            control = yotonnet.ReqChannel(ctx, control_channel_name(link.peer_id), timeout=10)
            await control.wait_for_responders()
            status = await control.call("status")
            self.assertEqual(status["name"], "tw")
            self.assertIn("test-twistd", [entry["peer_name"] for entry in status["links"]])

            response = await Agent(reactor).request(
                b"GET", f"http://127.0.0.1:{port}/status".encode())
            self.assertEqual(response.code, 200)
            body = _Body()
            response.deliverBody(body)
            page = json.loads(await body.done)
            self.assertEqual(page["name"], "tw")

            await ctx.close()
            node.transport.signalProcess(signal.SIGTERM)
            await node.ended
            # twistd shuts down cleanly, then ends by the same signal, as a shell expects
            ended = node.exit_reason.value
            self.assertIn(ended.signal if ended.exitCode is None else ended.exitCode,
                          (0, signal.SIGTERM), node.describe_output())
            self.assertIn("Server Shut Down.", "\n".join(node.lines))
            self.assertEqual(os.listdir(self.directory).count("twistd.pid"), 0)

        return defer.ensureDeferred(run())

    def test_exits_1_when_it_cannot_listen(self) -> defer.Deferred:
        async def run() -> None:
            code, out, err = await run_command(
                [TWISTD, "-n", "--pidfile=", "yotonnet", "--listen",
                 "unix:/nonexistent-dir/yotonnet.sock"], cwd=self.directory)
            self.assertEqual(code, 1, out + err)
            self.assertIn("cannot listen on unix:/nonexistent-dir/yotonnet.sock", out + err)

        return defer.ensureDeferred(run())

    def test_bad_option_is_a_usage_error(self) -> defer.Deferred:
        async def run() -> None:
            code, out, err = await run_command(
                [TWISTD, "-n", "--pidfile=", "yotonnet", "--peer", "tcp:nohost"],
                cwd=self.directory)
            self.assertEqual(code, 1, out + err)
            self.assertIn("--peer: 'tcp:nohost' is not a Twisted client endpoint", out + err)

        return defer.ensureDeferred(run())
