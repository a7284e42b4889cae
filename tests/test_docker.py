"""docker/: the compose file's commands are valid invocations, the Dockerfile is safe.

No Docker engine exists here, so nothing is built or run: the compose file is
read with a small strict parser of the YAML subset it is written in (PyYAML
is not available; anything outside the subset is an error, not a guess), and
every command in it, the Dockerfile's CMD and its HEALTHCHECK are run through
the real option parsers: ``twistd``'s ``ServerOptions`` (which finds the
installed yotonnet plugin and runs its options, config file included) and
``yotonnet.cli.parse``. The same services (the three-node triangle and the
kernel) run for real, each with its exact command in a network namespace of
its own, in tests/test_docker_mesh.py, which reuses this module's parsers.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from yotonnet import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(REPO_ROOT, "docker")

_PLAIN = re.compile(r"[A-Za-z0-9_./:-]+\Z")
_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
# Plain scalars YAML would read as something other than a string.
_NOT_STRINGS = re.compile(
    r"(?i)(true|false|yes|no|on|off|null|~|[-+]?[0-9][0-9_]*(\.[0-9]*)?([eE][-+]?[0-9]+)?"
    r"|0x[0-9a-f]+|[0-9]+(:[0-9]+)+)\Z"
)


class YamlSubsetError(ValueError):
    pass


def parse_yaml_subset(text: str) -> dict:
    """Block mappings and sequences indented by two spaces, full-line comments, and scalars
    that are JSON strings, JSON lists of strings or plain words; nothing else."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise YamlSubsetError(f"line {number}: tab")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if indent % 2:
            raise YamlSubsetError(f"line {number}: odd indentation")
        lines.append((indent, stripped, number))

    def scalar(text: str, number: int) -> object:
        if text.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise YamlSubsetError(f"line {number}: flow sequences hold JSON strings only")
            return value
        if text.startswith('"'):
            return json.loads(text)
        if " #" in text or not _PLAIN.match(text):
            raise YamlSubsetError(f"line {number}: quote this value: {text!r}")
        if _NOT_STRINGS.match(text):
            raise YamlSubsetError(f"line {number}: YAML reads {text!r} as a non-string; quote it")
        return text

    def block(i: int, indent: int) -> tuple[object, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                items.append(scalar(lines[i][1][2:].strip(), lines[i][2]))
                i += 1
            result: object = items
        else:
            mapping: dict[str, object] = {}
            while i < len(lines) and lines[i][0] == indent:
                _, content, number = lines[i]
                key, sep, rest = content.partition(":")
                if not sep or not _KEY.match(key) or (rest and not rest.startswith(" ")):
                    raise YamlSubsetError(f"line {number}: expected 'key: value'")
                if key in mapping:
                    raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
                rest = rest.strip()
                if rest:
                    mapping[key] = scalar(rest, number)
                    i += 1
                else:
                    if i + 1 >= len(lines) or lines[i + 1][0] <= indent:
                        raise YamlSubsetError(f"line {number}: {key!r} has no value")
                    mapping[key], i = block(i + 1, lines[i + 1][0])
            result = mapping
        if i < len(lines) and lines[i][0] > indent:
            raise YamlSubsetError(f"line {lines[i][2]}: unexpected indentation")
        return result, i

    if not lines:
        return {}
    if lines[0][0] != 0:
        raise YamlSubsetError("the document must start at column 0")
    document, end = block(0, 0)
    if end != len(lines) or not isinstance(document, dict):
        raise YamlSubsetError(f"line {lines[end][2]}: unexpected content")
    return document


def parse_twistd(argv: list[str]) -> ServerOptions:
    """Parse a ``twistd ...`` command line as twistd would (plugin options included)."""
    assert argv[0] == "twistd", argv
    options = ServerOptions()
    options.parseOptions(argv[1:])
    return options


def parse_yotonnet(argv: list[str]) -> object:
    assert argv[0] == "yotonnet", argv
    try:
        return cli.parse(argv[1:])
    except SystemExit as e:  # argparse's way of refusing a command line
        raise AssertionError(f"invalid yotonnet command {argv}: exit {e.code}") from None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


class YamlSubsetParserTests(SynchronousTestCase):
    """The parser refuses what it does not understand rather than misread it."""

    def test_reads_the_subset(self) -> None:
        doc = parse_yaml_subset(
            "# c\nname: x\nservices:\n  a:\n    command: [\"twistd\", \"-n\"]\n"
            "    ports:\n      - \"127.0.0.1:1:1\"\n"
        )
        self.assertEqual(doc, {"name": "x", "services": {"a": {
            "command": ["twistd", "-n"], "ports": ["127.0.0.1:1:1"]}}})

    def test_refuses_the_rest(self) -> None:
        for text in [
            "a: &anchor x\n",          # anchors
            "a: {b: c}\n",             # flow mappings
            "a: yes\n",                # a boolean in YAML 1.1
            "a: 8080:8080\n",          # a base-60 integer in YAML 1.1
            "a: x # comment\n",        # trailing comments
            "a:\n   b: c\n",           # odd indentation
            "a: 1\na: 2\n",            # duplicate keys
            "a:\n  - x\n  b: y\n",     # mixed block
            "a: [1, 2]\n",             # non-string list items
        ]:
            with self.assertRaises((YamlSubsetError, ValueError), msg=text):
                parse_yaml_subset(text)


class ComposeTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(os.path.join(DOCKER, "compose.yaml")) as f:
            self.compose = parse_yaml_subset(f.read())
        self.services: dict = self.compose["services"]

    def host_argv(self, name: str) -> list[str]:
        """The service's command, with paths of its mounted files mapped to this checkout."""
        service = self.services[name]
        argv = list(service["command"])
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            host_path = os.path.normpath(os.path.join(DOCKER, host))
            self.assertTrue(os.path.isfile(host_path), f"{name} mounts missing {host}")
            argv = [host_path if a == container else a for a in argv]
        return argv

    def test_every_service_builds_the_image_from_this_repository(self) -> None:
        for name, service in self.services.items():
            build = service["build"]
            context = os.path.normpath(os.path.join(DOCKER, build["context"]))
            self.assertEqual(context, REPO_ROOT, name)
            self.assertTrue(os.path.isfile(os.path.join(context, build["dockerfile"])), name)
            self.assertEqual(service["image"], "yotonnet:latest", name)

    def test_every_command_is_a_valid_invocation(self) -> None:
        self.assertGreaterEqual(len(self.services), 4)
        for name in self.services:
            argv = self.host_argv(name)
            if argv[0] == "twistd":
                options = parse_twistd(argv)
                self.assertEqual(options.subCommand, "yotonnet", name)
                self.assertTrue(options["nodaemon"], f"{name}: twistd must run with -n")
                self.assertEqual(options["pidfile"], "", f"{name}: pass --pidfile=")
                self.assertIsNotNone(options.subOptions["settings"], name)
            else:
                args, _settings = parse_yotonnet(argv)
                self.assertIn(args.command, ("node", "kernel"), name)

    def test_the_checker_refuses_bad_commands(self) -> None:
        # What makes the test above able to fail.
        with self.assertRaises(usage.UsageError):
            parse_twistd(["twistd", "-n", "--pidfile=", "yotonnet", "--listen", "tcp:nope"])
        with self.assertRaises(usage.UsageError):
            parse_twistd(["twistd", "-n", "yotonnet", "--lisen", "tcp:7117"])
        with self.assertRaises(AssertionError):
            parse_yotonnet(["yotonnet", "node", "--peer"])

    def node_settings(self) -> dict:
        out = {}
        for name in self.services:
            argv = self.host_argv(name)
            if argv[0] == "twistd":
                settings = parse_twistd(argv).subOptions["settings"]
            else:
                settings = parse_yotonnet(argv)[1]
            out[name] = settings.node
        return out

    def test_three_node_mesh_and_a_kernel(self) -> None:
        nodes = self.node_settings()
        self.assertEqual({"node-a", "node-b", "node-c", "kernel"}, set(nodes))
        # Each peer endpoint names a service of this file on the port that service listens on.
        listen_ports = {}
        for name, node in nodes.items():
            self.assertEqual(len(node.listen), 1, name)
            port = node.listen[0].split(":")[1]
            listen_ports[name] = port
            # inside the compose network: all interfaces, not the loopback default
            self.assertNotIn("interface=127.0.0.1", node.listen[0], name)
        edges = set()
        for name, node in nodes.items():
            for peer in node.peers:
                kind, host, port = peer.split(":")
                self.assertEqual(kind, "tcp", peer)
                self.assertIn(host, self.services, f"{name} peers unknown service {host}")
                self.assertEqual(port, listen_ports[host], peer)
                edges.add(frozenset((name, host)))
        triangle = {frozenset(p) for p in
                    (("node-a", "node-b"), ("node-b", "node-c"), ("node-a", "node-c"))}
        self.assertLessEqual(triangle, edges)
        self.assertTrue(any("kernel" in e for e in edges))
        kernel = parse_yotonnet(self.host_argv("kernel"))[0]
        self.assertEqual((kernel.command, kernel.kernel_name), ("kernel", "shared"))
        self.assertEqual(len({n.name for n in nodes.values()}), len(nodes), "names repeat")

    def test_only_the_status_page_is_published_on_loopback(self) -> None:
        for name, service in self.services.items():
            for mapping in service.get("ports", []):
                self.assertTrue(mapping.startswith("127.0.0.1:"), f"{name}: {mapping}")
                self.assertFalse(mapping.endswith(":7117"), f"{name} publishes the mesh port")


class DockerfileTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(os.path.join(DOCKER, "Dockerfile")) as f:
            self.instructions = dockerfile_instructions(f.read())

    def find(self, word: str) -> list[tuple[int, str]]:
        return [(i, args) for i, (w, args) in enumerate(self.instructions) if w == word]

    def test_slim_python_base(self) -> None:
        (_, base), = self.find("FROM")
        self.assertRegex(base, r"^python:3\.1[1-9][.0-9]*-slim")

    def test_runs_as_a_non_root_user(self) -> None:
        users = self.find("USER")
        self.assertTrue(users, "no USER instruction: the node would run as root")
        last_index, user = users[-1]
        self.assertNotIn(user.split(":")[0], ("root", "0"))
        # Nothing runs as root after the switch, and the node starts after it.
        self.assertFalse([i for i, _ in self.find("USER") if i > last_index])
        (cmd_index, _), = self.find("CMD")
        self.assertGreater(cmd_index, last_index)

    def test_installs_regularly_and_builds_the_plugin_cache_as_root(self) -> None:
        runs = self.find("RUN")
        (user_index, _) = self.find("USER")[-1]
        install = [i for i, args in runs if "pip install" in args]
        self.assertTrue(install)
        for i in install:
            self.assertNotRegex(self.instructions[i][1], r"pip install[^&]*(-e|--editable)\b")
        cache = [i for i, args in runs if "getPlugins(IPlugin)" in args]
        self.assertTrue(cache, "the plugin cache is not built at image build time")
        self.assertTrue(all(min(install) <= i < user_index for i in cache))

    def test_cmd_is_a_valid_twistd_invocation_without_pidfile(self) -> None:
        (_, cmd), = self.find("CMD")
        argv = json.loads(cmd)  # exec form: no shell between docker and twistd
        self.assertIn("--pidfile=", argv)
        options = parse_twistd(argv)
        self.assertEqual(options["pidfile"], "")
        self.assertTrue(options["nodaemon"])
        self.assertEqual(options.subCommand, "yotonnet")

    def test_healthcheck_is_a_valid_yotonnet_invocation(self) -> None:
        (_, health), = self.find("HEALTHCHECK")
        options, _, command = health.partition("CMD ")
        self.assertTrue(command, health)
        argv = json.loads(command) if command.startswith("[") else shlex.split(command)
        args, settings = parse_yotonnet(argv)
        self.assertEqual(args.command, "status")
        # the default --connect reaches the node's own listener inside the container
        self.assertEqual(settings.client.connect, "tcp:127.0.0.1:7117")

    def test_build_context_is_filtered(self) -> None:
        with open(os.path.join(DOCKER, "Dockerfile.dockerignore")) as f:
            rules = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        self.assertEqual(rules[0], "*")  # .venv and .git never reach the daemon
        let_in = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
        for _, args in self.find("COPY"):
            for source in args.split()[:-1]:
                self.assertIn(source.rstrip("/"), let_in,
                              f"{source} is copied but filtered out of the build context")
