"""The TOML configuration (yotonnet.config): what a file may hold, how flags override it,
and that every mistake is an error naming the key and the file.

Sans-IO apart from temporary files; no reactor.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from yotonnet.mesh.context import ContextConfig
from yotonnet.service import config
from yotonnet.service.config import ConfigError

FULL = """
[node]
name = "a"
listen = ["tcp:7117:interface=127.0.0.1", "unix:/tmp/yotonnet-a.sock"]
peers = ["tcp:otherhost:7117"]
status = "tcp:8080:interface=127.0.0.1"
log_format = "json"

[client]
connect = "unix:/tmp/yotonnet-a.sock"
timeout = 3

[context]
heartbeat = 0.5
busy_timeout = 2.5
max_hops = 16
"""


class ConfigFileTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.remove, path)
        return path

    def error(self, text: str) -> str:
        path = self.write(text)
        with self.assertRaises(ConfigError) as caught:
            config.load(path)
        message = str(caught.exception)
        self.assertIn(path, message)  # every file error names the file
        return message

    def test_every_table(self) -> None:
        s = config.load(self.write(FULL))
        self.assertEqual(s.node.name, "a")
        self.assertEqual(s.node.listen, ["tcp:7117:interface=127.0.0.1",
                                         "unix:/tmp/yotonnet-a.sock"])
        self.assertEqual(s.node.peers, ["tcp:otherhost:7117"])
        self.assertEqual(s.node.status, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(s.node.log_format, "json")
        self.assertEqual(s.client.connect, "unix:/tmp/yotonnet-a.sock")
        self.assertEqual(s.client.timeout, 3.0)
        self.assertIsInstance(s.client.timeout, float)
        self.assertEqual((s.context.heartbeat, s.context.busy_timeout, s.context.max_hops),
                         (0.5, 2.5, 16))
        # untouched tunables keep ContextConfig's defaults
        self.assertEqual(s.context.request_timeout, ContextConfig().request_timeout)

    def test_defaults_without_a_file(self) -> None:
        s = config.resolve(None)
        self.assertEqual(s.node.listen, [config.DEFAULT_LISTEN])
        self.assertEqual(s.node.peers, [])
        self.assertIsNone(s.node.status)
        self.assertEqual(s.client.connect, config.DEFAULT_CONNECT)
        self.assertEqual(s.context, ContextConfig())

    def test_every_context_tunable_is_a_key(self) -> None:
        # The [context] table follows ContextConfig, including fields added later.
        lines = ["[context]"]
        for f in dataclasses.fields(ContextConfig):
            value = getattr(ContextConfig(), f.name)
            toml = str(value).lower() if isinstance(value, bool) else repr(value)
            lines.append(f"{f.name} = {toml}")
        s = config.parse("\n".join(lines), "all.toml")
        self.assertEqual(s.context, ContextConfig())

    def test_eager_writes_can_be_turned_off(self) -> None:
        self.assertIs(config.parse("[context]\neager_writes = false\n").context.eager_writes, False)

    def test_flags_override_the_file(self) -> None:
        path = self.write(FULL)
        s = config.resolve(path, name="b", listen=["tcp:9000"], connect="tcp:127.0.0.1:9000",
                           timeout=7.0)
        self.assertEqual(s.node.name, "b")
        self.assertEqual(s.node.listen, ["tcp:9000"])  # a list flag replaces the file's list
        self.assertEqual(s.node.peers, ["tcp:otherhost:7117"])  # not given: the file's
        self.assertEqual(s.client.connect, "tcp:127.0.0.1:9000")
        self.assertEqual(s.client.timeout, 7.0)
        self.assertEqual(s.context.heartbeat, 0.5)

    def test_unknown_key_names_it_and_suggests(self) -> None:
        message = self.error('[node]\nlisen = ["tcp:7117"]\n')
        self.assertIn("'node.lisen'", message)
        self.assertIn("did you mean 'listen'", message)

    def test_unknown_table(self) -> None:
        message = self.error("[secrets]\ncert = 'x.pem'\n")  # ([security] is a table now)
        self.assertIn("unknown key 'secrets'", message)

    def test_top_level_value_is_not_a_table(self) -> None:
        self.assertIn("'node' must be a table", self.error('node = "a"\n'))

    def test_wrong_types(self) -> None:
        cases = [
            ('[node]\nlisten = "tcp:7117"\n', "node.listen must be a list of non-empty strings"),
            ("[node]\npeers = [1, 2]\n", "node.peers must be a list of non-empty strings"),
            ("[node]\nname = 5\n", "node.name must be a string"),
            ('[node]\nlog_format = "xml"\n', "node.log_format must be 'text' or 'json'"),
            ('[client]\ntimeout = "soon"\n', "client.timeout must be a number"),
            ("[client]\nconnect = 7117\n", "client.connect must be a non-empty string"),
            ("[context]\nheartbeat = true\n", "context.heartbeat must be a number"),
            ("[context]\nmax_hops = 2.5\n", "context.max_hops must be an integer"),
            ('[context]\neager_writes = "yes"\n', "context.eager_writes must be true or false"),
            ("[context]\nbusy_timeout = -1\n", "context.busy_timeout must be a finite number"),
        ]
        for text, expected in cases:
            self.assertIn(expected, self.error(text), text)

    def test_out_of_range(self) -> None:
        self.assertIn("context.max_hops = 300 is out of range", self.error(
            "[context]\nmax_hops = 300\n"))
        self.assertIn("context.heartbeat = 0.0 is out of range", self.error(
            "[context]\nheartbeat = 0\n"))
        self.assertIn("client.timeout must be > 0", self.error("[client]\ntimeout = 0\n"))
        self.assertIn("node.listen is empty", self.error("[node]\nlisten = []\n"))

    def test_read_size_is_bounded(self) -> None:
        self.assertIn("context.read_size = 100 must be from 4096 to 16777216 bytes",
                      self.error("[context]\nread_size = 100\n"))
        with self.assertRaisesRegex(ValueError, "read_size = 1073741824 must be from"):
            ContextConfig(read_size=1 << 30).check()
        path = self.write("[context]\nread_size = 1048576\n")
        self.assertEqual(config.load(path).context.read_size, 1 << 20)

    def test_reply_poll_is_bounded(self) -> None:
        self.assertIn("context.reply_poll = 0.5 must be from 0 (no polling) to 0.01 s",
                      self.error("[context]\nreply_poll = 0.5\n"))
        with self.assertRaisesRegex(ValueError, "reply_poll = -1e-06 must be from 0"):
            ContextConfig(reply_poll=-1e-6).check()
        self.assertEqual(config.parse("[context]\nreply_poll = 0\n").context.reply_poll, 0)
        self.assertEqual(ContextConfig().reply_poll, 100e-6)

    def test_reroute_after_must_outlast_a_heartbeat(self) -> None:
        message = self.error("[context]\nheartbeat = 2.0\nreroute_after = 1.5\n")
        self.assertIn("context.reroute_after = 1.5 must be longer than heartbeat = 2.0", message)
        with self.assertRaisesRegex(ValueError, "reroute_after = 1.0 must be longer"):
            ContextConfig(reroute_after=1.0).check()
        # 0 turns early rerouting off; any value above the heartbeat is taken.
        path = self.write("[context]\nheartbeat = 2.0\nreroute_after = 0\n")
        self.assertEqual(config.load(path).context.reroute_after, 0)
        ContextConfig(heartbeat=0.2, reroute_after=0.3).check()

    def test_bad_endpoints_name_the_key(self) -> None:
        message = self.error('[node]\nlisten = ["tcp:notaport"]\n')
        self.assertIn("node.listen: 'tcp:notaport' is not a Twisted server endpoint", message)
        message = self.error('[node]\npeers = ["bogus:x"]\n')
        self.assertIn("node.peers: 'bogus:x' is not a Twisted client endpoint", message)
        message = self.error('[client]\nconnect = "tcp:hostonly"\n')
        self.assertIn("client.connect", message)
        message = self.error('[node]\nstatus = "tcp:8080:bogus=1"\n')
        self.assertIn("node.status", message)

    def test_bad_flags_name_the_flag(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.resolve(None, listen=["tcp:x"])
        self.assertIn("--listen: 'tcp:x'", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            config.resolve(None, peers=["nope"])
        self.assertIn("--peer: 'nope'", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            config.resolve(None, timeout=0)
        self.assertIn("--timeout must be > 0", str(caught.exception))

    def test_node_names_peers_would_refuse(self) -> None:
        # A HELLO with such a name is refused, so the node would start and link to nobody.
        message = self.error('[node]\nname = "a\\u001b[2J"\n')
        self.assertIn("node.name: node name a\\x1b[2J has non-printable characters", message)
        self.assertIn("at most 100 printable characters", message)
        self.assertIn("node.name: node name is 101 characters long",
                      self.error(f'[node]\nname = "{"n" * 101}"\n'))
        with self.assertRaises(ConfigError) as caught:
            config.resolve(None, name="b\nfake line")
        self.assertIn("--name: node name b\\nfake line has non-printable", str(caught.exception))
        self.assertEqual(config.resolve(None, name="node b (é)").node.name, "node b (é)")

    def test_status_hosts_and_token(self) -> None:
        path = self.write('[node]\nstatus = "tcp:8080"\nstatus_hosts = ["Node-A.Example", '
                          '"[::1]", "10.0.0.5"]\nstatus_token = true\n')
        s = config.load(path)
        self.assertEqual(s.node.status_hosts, ["node-a.example", "::1", "10.0.0.5"])
        self.assertIs(s.node.status_token, True)
        defaults = config.resolve(None)
        self.assertEqual((defaults.node.status_hosts, defaults.node.status_token), ([], False))
        # Flags replace the file's list, as every list flag does.
        s = config.resolve(path, status_hosts=["B.example"], status_token=None)
        self.assertEqual((s.node.status_hosts, s.node.status_token), (["b.example"], True))
        for bad in ("http://x.example/", "x.example:8080", "*", "two words"):
            message = self.error(f'[node]\nstatus_hosts = ["{bad}"]\n')
            self.assertIn(f"node.status_hosts: {bad!r} is not a host name or an IP address",
                          message)
            self.assertIn("without scheme, port or path", message)
            with self.assertRaises(ConfigError) as caught:
                config.resolve(None, status_hosts=[bad])
            self.assertIn(f"--status-host: {bad!r}", str(caught.exception))
        self.assertIn("node.status_token must be true or false",
                      self.error('[node]\nstatus_token = "yes"\n'))

    def test_not_toml(self) -> None:
        self.assertIn("not valid TOML", self.error("[node\nname = 'a'\n"))

    def test_missing_file(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.load("/nonexistent/yotonnet.toml")
        self.assertIn("cannot read config file /nonexistent/yotonnet.toml", str(caught.exception))

    def test_empty_string_means_unset(self) -> None:
        s = config.load(self.write('[node]\nname = ""\nstatus = ""\n'))
        self.assertIsNone(s.node.name)
        self.assertIsNone(s.node.status)
