"""Ring 4: docker/compose.yaml run for real, one network namespace per service.

No Docker engine exists here, so each compose service gets what its container
would give it: a network namespace of its own (tests/netns.py), an address on
one bridge, and its own port space, so every node listens on ``tcp:7117`` as
in the image. Each service's ``command`` runs exactly as compose.yaml writes it
(with its ``environment``, if any, through ``env``), with three substitutions only:

* the compose host names (``node-a``, ``node-b``, ...) in endpoint strings
  become the namespaces' addresses (Docker's DNS does this in a compose network);
* a file or folder the service mounts (node-c's ``/etc/yotonnet/node.toml``)
  becomes a temporary copy, and its container path becomes the copy's path, in
  the command and inside mounted files, whose host names are substituted too;
* ``twistd`` and ``yotonnet`` become the ones installed in the venv the tests run
  from (the image's regular install; ``make test`` builds the venv the same way).

A service key this test does not reproduce (``user``, ``entrypoint``, ...) is an
error naming it, so the file cannot grow something the test silently ignores.

Then, with the mesh up:

* ``yotonnet status --json``, run in each service's namespace as
  ``docker compose exec SERVICE yotonnet status --json`` runs it, shows that
  every node has links up (across namespaces) to the peers compose.yaml gives
  it and routes to all four nodes (a, b, c and the kernel);
* node-a's published status page answers on its address (not just its
  loopback, which Docker's port publishing could not reach);
* ``yotonnet pub`` on node-a reaches ``yotonnet sub --count 1`` on the kernel
  (two hops away) and on node-c, each run inside its service's namespace with
  the default ``--connect``, as ``docker compose exec SERVICE yotonnet ...`` does;
* the Dockerfile's HEALTHCHECK succeeds in every service's namespace and exits 1
  (Docker's "unhealthy"; 2 is reserved) in one whose node was killed.

Not reproduced: the image's non-root user (processes run as the test's user),
and Docker's restart policy. Skipped, with the reason, where network namespaces
are unavailable (not root, no ``ip``), as tests/test_netns_mesh.py is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field

from netns import UNAVAILABLE, TestHosts
from test_cli import run_command, spawn_node
from test_docker import (
    DOCKER,
    dockerfile_instructions,
    parse_twistd,
    parse_yaml_subset,
    parse_yotonnet,
)
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

BIN = os.path.dirname(sys.executable)
#: commands of the image that come from the project's install
INSTALLED = ("twistd", "yotonnet")
#: bound on the mesh settling (links dial, routing records spread), on slow shared CPUs
SETTLE_TIMEOUT = 45.0


def load_compose() -> dict[str, dict]:
    """The services of docker/compose.yaml, in file order."""
    with open(os.path.join(DOCKER, "compose.yaml")) as f:
        return parse_yaml_subset(f.read())["services"]


def healthcheck_argv() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (exec form)."""
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        (health,) = [a for w, a in dockerfile_instructions(f.read()) if w == "HEALTHCHECK"]
    command = health.partition("CMD ")[2]
    if not command.startswith("["):
        raise AssertionError(f"HEALTHCHECK is not in exec form: {health}")
    return json.loads(command)


#: service keys this test reproduces; any other is an error, never silently ignored
KNOWN_KEYS = {"build", "image", "command", "ports", "volumes", "environment", "restart",
              "depends_on"}


def _alternation(words: object) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def rewrite_hosts(text: str, addresses: dict[str, str]) -> str:
    """Replace compose host names by addresses where they stand as an endpoint's host.

    A host follows ``:`` (``tcp:node-a:7117``) or ``host=`` and ends at ``:``, a
    quote or the end, so a node *name* that happens to equal a service name
    (``--name kernel``) is left alone.
    """
    if not addresses:
        return text
    pattern = re.compile(rf"(?<=[:=])({_alternation(addresses)})(?=[:\"']|\Z)", re.MULTILINE)
    return pattern.sub(lambda m: addresses[m.group(1)], text)


def rewrite_mounts(text: str, mounts: dict[str, str]) -> str:
    """Replace container paths of mounted files or folders by their copies.

    A path starts the text, a word, a quoted string or a ``--flag=`` value, and ends
    there or goes on below a mounted folder (``/etc/yotonnet/certs/ca.pem``).
    """
    if not mounts:
        return text
    pattern = re.compile(rf"(?<![^\s\"'=])({_alternation(mounts)})(?=[/\s\"',]|\Z)")
    return pattern.sub(lambda m: mounts[m.group(1)], text)


def _environment(service: dict) -> list[str]:
    env = service.get("environment", [])
    if isinstance(env, dict):
        return [f"{k}={v}" for k, v in env.items()]
    return list(env)


def _port(endpoint: str) -> str:
    found = re.search(r"(?:^|:)(?:port=)?([0-9]+)(?=:|$)", endpoint)
    if not found:
        raise AssertionError(f"no port in the listening endpoint {endpoint!r}")
    return found.group(1)


@dataclass
class PlannedService:
    """One compose service as it runs on a test host."""

    name: str
    host: int  # index into TestHosts
    address: str
    argv: list[str]  # the command, host names and mounted paths substituted
    node_name: str = ""
    port: str = ""  # the mesh port it listens on
    peers: list[str] = field(default_factory=list)  # services it dials


def plan_services(services: dict[str, dict], addresses: dict[str, str],
                  workdir: str) -> list[PlannedService]:
    """Rewrite each service's command for the test hosts, mounted files copied to ``workdir``.

    Every rewritten command still goes through the real parsers (twistd's options with
    the plugin, or ``yotonnet.cli.parse``), which also give its node's settings.
    """
    by_address = {a: n for n, a in addresses.items()}
    planned = []
    for index, (name, service) in enumerate(services.items()):
        unknown = set(service) - KNOWN_KEYS
        if unknown:
            raise AssertionError(f"{name}: this test does not reproduce {sorted(unknown)}; "
                                 "teach tests/test_docker_mesh.py what they do")
        # Mounted files and folders: copies under workdir, at the container's layout.
        mounts: dict[str, str] = {}
        sources: dict[str, str] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = os.path.join(workdir, name, target.lstrip("/"))
            sources[target] = os.path.normpath(os.path.join(DOCKER, source))
        for target, copy in mounts.items():
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            if os.path.isdir(sources[target]):
                shutil.copytree(sources[target], copy)
                continue
            with open(sources[target]) as f:
                text = rewrite_mounts(rewrite_hosts(f.read(), addresses), mounts)
            with open(copy, "w") as f:
                f.write(text)
        argv = [rewrite_mounts(rewrite_hosts(arg, addresses), mounts)
                for arg in service["command"]]
        if argv[0] == "twistd":
            settings = parse_twistd(argv).subOptions["settings"]
        else:
            settings = parse_yotonnet(argv)[1]
        node = settings.node
        if len(node.listen) != 1:
            raise AssertionError(f"{name}: expected one listening endpoint, got {node.listen}")
        peers = []
        for endpoint in node.peers:
            hosts = [part for part in re.split("[:=]", endpoint) if part in by_address]
            if len(hosts) != 1:
                raise AssertionError(f"{name} dials {endpoint}, whose host is not the address "
                                     f"of a compose service ({', '.join(by_address)})")
            peers.append(by_address[hosts[0]])
        env = _environment(service)
        planned.append(PlannedService(
            name=name, host=index, address=addresses[name],
            argv=["env", *env, *argv] if env else argv,
            node_name=node.name or "", port=_port(node.listen[0]), peers=peers,
        ))
    return planned


def installed(argv: list[str]) -> list[str]:
    """``argv`` with the image's ``twistd``/``yotonnet`` replaced by the venv's."""
    out = list(argv)
    i = 0
    if out[0] == "env":  # `env K=V ... COMMAND`: a service's environment
        i = 1
        while i < len(out) and "=" in out[i]:
            i += 1
    if out[i] in INSTALLED:
        out[i] = os.path.join(BIN, out[i])
    return out


def ended_within(proc: object, seconds: float) -> defer.Deferred:
    """Fires True once ``proc`` (a spawned PeerProcess) has ended, False after ``seconds``."""
    d: defer.Deferred = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: d.called or d.callback(False))

    def ended(result: object) -> object:
        if timer.active():
            timer.cancel()
        if not d.called:
            d.callback(True)
        return result  # the process's own waiters still get it

    proc.ended.addBoth(ended)
    return d


class ComposeRewriteTests(SynchronousTestCase):
    """The substitutions are exact: only endpoint hosts and mounted paths change."""

    addresses = {"node-a": "10.9.0.1", "node-b": "10.9.0.2",
                 "node-c": "10.9.0.3", "kernel": "10.9.0.4"}

    def test_rewrite_hosts(self) -> None:
        a = self.addresses
        self.assertEqual(rewrite_hosts("tcp:node-a:7117", a), "tcp:10.9.0.1:7117")
        self.assertEqual(rewrite_hosts("tcp:host=kernel:port=7117", a),
                         "tcp:host=10.9.0.4:port=7117")
        self.assertEqual(rewrite_hosts('peers = ["tcp:node-b:7117"]\n', a),
                         'peers = ["tcp:10.9.0.2:7117"]\n')
        for untouched in ("kernel", "node-a", "tcp:node-ab:7117", "tcp:7117", "x:kernels:1"):
            self.assertEqual(rewrite_hosts(untouched, a), untouched)

    def test_rewrite_mounts(self) -> None:
        mounts = {"/etc/yotonnet/node.toml": "/w/node.toml", "/etc/yotonnet/certs": "/w/certs"}
        for text, expected in [
            ("/etc/yotonnet/node.toml", "/w/node.toml"),
            ("--config=/etc/yotonnet/node.toml", "--config=/w/node.toml"),
            ('tls_ca = "/etc/yotonnet/certs/ca.pem"', 'tls_ca = "/w/certs/ca.pem"'),
            ("/etc/yotonnet/node.toml.bak", "/etc/yotonnet/node.toml.bak"),
            ("x/etc/yotonnet/node.toml", "x/etc/yotonnet/node.toml"),
            ("/etc/yotonnet/certsx/ca.pem", "/etc/yotonnet/certsx/ca.pem"),
        ]:
            self.assertEqual(rewrite_mounts(text, mounts), expected)

    def test_environment_and_unknown_keys(self) -> None:
        workdir = tempfile.mkdtemp(prefix="yotonnet-compose-")
        self.addCleanup(shutil.rmtree, workdir, True)
        service = {"command": ["yotonnet", "node", "--name", "x", "--listen", "tcp:7117"],
                   "environment": {"YOTONNET_X": "1"}}
        (p,) = plan_services({"x": service}, {"x": "10.9.0.9"}, workdir)
        self.assertEqual(p.argv[:2], ["env", "YOTONNET_X=1"])
        self.assertEqual(installed(p.argv)[2], os.path.join(BIN, "yotonnet"))
        self.assertEqual(p.port, "7117")
        with self.assertRaises(AssertionError) as caught:
            plan_services({"x": {**service, "user": "root"}}, {"x": "10.9.0.9"}, workdir)
        self.assertIn("does not reproduce ['user']", str(caught.exception))

    def test_every_service_is_planned_on_its_host(self) -> None:
        workdir = tempfile.mkdtemp(prefix="yotonnet-compose-")
        self.addCleanup(shutil.rmtree, workdir, True)
        services = load_compose()
        plan = plan_services(services, self.addresses, workdir)
        self.assertEqual([p.name for p in plan], list(services))
        for p in plan:
            self.assertNotRegex(" ".join(p.argv), r"[:=](node-[abc]|kernel):", p.name)
            self.assertFalse([a for a in p.argv if a.startswith("/etc/")], p.name)
            # the same argv otherwise
            self.assertEqual(len(p.argv), len(services[p.name]["command"]), p.name)
        byname = {p.name: p for p in plan}
        self.assertEqual(byname["kernel"].node_name, "kernel")  # a name, not a host
        self.assertEqual(byname["kernel"].peers, ["node-b", "node-c"])
        # node-c's peers come from the temporary copy of its mounted TOML file
        config = byname["node-c"].argv[-1]
        self.assertTrue(config.startswith(workdir), config)
        with open(config, "rb") as f:
            self.assertEqual(tomllib.load(f)["node"]["peers"],
                             ["tcp:10.9.0.1:7117", "tcp:10.9.0.2:7117"])
        self.assertEqual(byname["node-c"].peers, ["node-a", "node-b"])
        self.assertEqual(installed(byname["node-a"].argv)[0], os.path.join(BIN, "twistd"))


class ComposeMeshTests(TestCase):
    timeout = 120

    if UNAVAILABLE:
        skip = UNAVAILABLE

    def setUp(self) -> None:
        for command in INSTALLED:
            if not os.path.exists(os.path.join(BIN, command)):
                raise SkipTest(f"no {command} next to {sys.executable}: the tests are not "
                               "running from the venv that `make test` installs the project into")
        self.ip = shutil.which("ip") or "ip"
        self.services = load_compose()
        self.hosts = TestHosts(len(self.services))
        self.hosts.create()
        self.addCleanup(self.hosts.destroy)  # registered first: runs after the kills
        # The image's WORKDIR is /tmp: the nodes run in a scratch directory.
        self.workdir = tempfile.mkdtemp(prefix="yotonnet-compose-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        addresses = {name: self.hosts.address(i) for i, name in enumerate(self.services)}
        self.plan = {p.name: p for p in plan_services(self.services, addresses, self.workdir)}
        self.nodes: dict[str, object] = {}

    def in_host(self, service: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``service``'s namespace, with the venv's commands, and with
        a local secret of its own, as each container has its own filesystem."""
        secret = os.path.join(self.workdir, "secrets", service, "secret")
        return [self.ip, "netns", "exec", self.hosts.names[self.plan[service].host],
                "env", f"YOTONNET_SECRET_FILE={secret}", *installed(argv)]

    def another(self, service: str) -> str:
        """A service other than ``service``, to run a client from a different host."""
        names = list(self.plan)
        return names[(names.index(service) + 1) % len(names)]

    async def start_mesh(self) -> None:
        for name, p in self.plan.items():
            self.nodes[name] = spawn_node(self, self.in_host(name, p.argv), name, cwd=self.workdir)
        for name, node in self.nodes.items():
            # A node logs "... ready on ADDRESS"; a kernel broker "yotonnet kernel K: ready (".
            kernel = self.plan[name].argv[:2] == ["yotonnet", "kernel"]
            await node.wait_for(": ready (" if kernel else "ready on", timeout=40.0)

    async def run_in(self, service: str, argv: list[str]) -> tuple[int, str, str]:
        return await run_command(self.in_host(service, argv), cwd=self.workdir)

    async def status(self, service: str) -> dict:
        """``yotonnet status --json`` of ``service``'s node, as ``docker compose exec`` runs it.

        Inside the service's namespace, on its loopback: a node with no authentication
        configured refuses clients from other addresses (only its mesh peers come from
        there, and the compose file decides how they are let in).
        """
        p = self.plan[service]
        code, out, err = await self.run_in(service, [
            "yotonnet", "status", "--json", "--connect", f"tcp:127.0.0.1:{p.port}",
            "--timeout", "10"])
        self.assertEqual(code, 0, f"status of {service}: {err}")
        return json.loads(out)

    async def settled_status(self, service: str) -> dict:
        """Poll ``service``'s status until its links and its view of the mesh are complete."""
        p = self.plan[service]
        everyone = {q.node_name for q in self.plan.values()}
        neighbours = {self.plan[s].node_name for s in p.peers}
        neighbours |= {q.node_name for q in self.plan.values() if service in q.peers}
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while True:
            report = await self.status(service)
            node = report["node"]
            reachable = {n["name"] for n in node["nodes"] if n["reachable"]}
            up = {link["peer_name"] for link in node["links"] if link["status"] == "up"}
            if everyone <= reachable and neighbours <= up:
                return report
            if reactor.seconds() > deadline:
                self.fail(f"{service} did not settle within {SETTLE_TIMEOUT:g} s: reaches "
                          f"{sorted(reachable)}, links up to {sorted(up)}; expected all of "
                          f"{sorted(everyone)}, links to {sorted(neighbours)}\n"
                          + self.nodes[service].describe_output())
            await task.deferLater(reactor, 0.5, lambda: None)

    def test_every_node_sees_the_whole_mesh(self) -> defer.Deferred:
        return defer.ensureDeferred(self._whole_mesh())

    async def _whole_mesh(self) -> None:
        await self.start_mesh()
        everyone = {p.node_name for p in self.plan.values()}
        self.assertEqual(everyone, {"a", "b", "c", "kernel"})
        for name, p in self.plan.items():
            report = await self.settled_status(name)
            self.assertEqual(report["node"]["name"], p.node_name)
            self.assertIn(f"tcp:0.0.0.0:{p.port}", report["node"]["listening"], name)
            routes = {r["dest_name"] for r in report["node"]["routes"]}
            self.assertLessEqual(everyone - {p.node_name}, routes, name)
            # the client, one hop further, sees the whole mesh through this node as well
            seen = {n["name"] for n in report["mesh"]["nodes"] if n["reachable"]}
            self.assertLessEqual(everyone, seen, name)

        # A published port: Docker forwards to the container's address, not its loopback.
        published = [(name, mapping.rsplit(":", 1)[1])
                     for name, service in self.services.items()
                     for mapping in service.get("ports", [])]
        self.assertTrue(published, "compose.yaml publishes no status page")
        for name, port in published:
            url = f"http://{self.plan[name].address}:{port}/status"
            code, out, err = await self.run_in(self.another(name), [sys.executable, "-c", (
                "import sys, urllib.request\n"
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
            )])
            self.assertEqual(code, 0, f"GET {url}: {err}")
            page = json.loads(out)
            self.assertEqual(page["name"], self.plan[name].node_name)
            self.assertLessEqual(everyone, {n["name"] for n in page["nodes"] if n["reachable"]})

    def test_pub_on_one_node_reaches_sub_on_others(self) -> defer.Deferred:
        return defer.ensureDeferred(self._pub_sub())

    async def _pub_sub(self) -> None:
        await self.start_mesh()
        channel = "compose.hello"
        message = f"hello from node-a ({os.getpid()})"
        # Like `docker compose exec SERVICE yotonnet ...`: the default --connect, the
        # node's own listener inside its namespace. The kernel is two hops from node-a.
        subscribers = ["kernel", "node-c"]
        # The pub command ends right after sending, often before its context has answered
        # a sub's question of where its stream starts (yotonnet.core.repair): the sub then
        # holds the message until repair_wait passes unanswered. The same path with a 1 s
        # wait instead of the default 10 s (a [context] setting; --connect stays the default).
        config = os.path.join(self.workdir, "sub.toml")
        with open(config, "w") as f:
            f.write("[context]\nrepair_wait = 1.0\n")
        subs = {
            name: spawn_node(self, self.in_host(name, ["yotonnet", "sub", channel, "--count", "1",
                                                        "--timeout", "20", "--config", config]),
                             f"sub on {name}", cwd=self.workdir)
            for name in subscribers
        }
        code, out, err = await self.run_in("node-a", [
            "yotonnet", "pub", channel, message, "--wait", str(len(subs)), "--timeout", "20"])
        self.assertEqual(code, 0, f"pub on node-a: {err}")
        for name, sub in subs.items():
            line = await sub.wait_for(message, timeout=20.0)
            self.assertEqual(line, message, name)
            # --count 1: it exits by itself, successfully, after the message
            self.assertTrue(await ended_within(sub, 20.0),
                            f"sub on {name} did not exit after 1 message")
            self.assertEqual(sub.exit_reason.value.exitCode, 0, sub.describe_output())
            self.assertEqual(sub.lines, [message], name)

    def test_the_shared_kernel_runs_code_from_another_node(self) -> defer.Deferred:
        return defer.ensureDeferred(self._console())

    async def _console(self) -> None:
        await self.start_mesh()
        # `docker compose exec node-a yotonnet console shared -c ...`: through node-a,
        # across the mesh, to the kernel service's interpreter.
        code, out, err = await self.run_in("node-a", [
            "yotonnet", "console", "shared", "-c", "import os; print(6 * 7, os.getpid() > 1)",
            "--timeout", "20"])
        self.assertEqual(code, 0, f"console on node-a: {out}\n{err}")
        self.assertIn("42 True", out)

    def test_healthcheck(self) -> defer.Deferred:
        return defer.ensureDeferred(self._healthcheck())

    async def _healthcheck(self) -> None:
        argv = healthcheck_argv()
        await self.start_mesh()
        results = await defer.gatherResults([
            defer.ensureDeferred(self.run_in(name, argv)) for name in self.plan
        ])
        for (name, p), (code, out, err) in zip(self.plan.items(), results, strict=True):
            self.assertEqual(code, 0, f"HEALTHCHECK in {name}: {err}")
            self.assertIn(f"node {p.node_name} ", out, name)

        # A dead node makes its service unhealthy: exit 1 exactly (Docker reserves 2).
        await self.nodes["kernel"].kill()
        code, out, err = await self.run_in("kernel", argv)
        self.assertEqual(code, 1, f"HEALTHCHECK with the node dead: exit {code}\n{out}{err}")
        self.assertIn("cannot reach a yotonnet node at tcp:127.0.0.1:7117", err)
