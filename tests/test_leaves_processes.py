"""Ring 3: leaf contexts on real node processes, over TCP on loopback.

``yotonnet node`` processes make the mesh; leaves are contexts that only dial
(in this process, in ``tests/peers/leaves_peer.py`` holding a thousand of them,
CLI commands and kernel consoles). What a user sees is checked:

* a thousand subscribers, leaves of three nodes in a chain, all in one
  process: a publisher reaches every one, every message in order; each node's
  ``yotonnet status --json`` names its own leaves and none is a node of its
  routing table;
* a thousand callers against two repliers, leaves of two different nodes:
  every call answered right, both repliers serving;
* ``yotonnet sub``/``pub``/``call``/``status`` and two ``yotonnet console``
  attached to a shared kernel are leaves of the node they dial, not nodes of
  the mesh (the kernel's broker is one);
* a leaf dialling a list of two nodes joins the second when the first is
  killed (SIGKILL), and its subscription moves with it, with nothing done by
  its user.

Nothing here is timed: every wait is bounded only so that a hang fails.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
from typing import Any

import procs
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase
from waits import WAIT, bounded, until

import yotonnet
from yotonnet import OBJECT, Context, ContextConfig
from yotonnet.core.routing import SUB
from yotonnet.service.node import control_channel_name

LEAVES = 1000
MESSAGES = 20
END = "END"
LEAVES_PEER = os.path.join(procs.REPO_ROOT, "tests", "peers", "leaves_peer.py")
FAST = ContextConfig(reconnect_initial=0.1, reconnect_max=0.5)


class Lines(procs.PeerProcess):
    """A child's output where ``wait_for`` matches text anywhere in a line (a node's log
    lines start with a timestamp)."""

    anywhere = True


def payload(line: str) -> Any:
    """The JSON after the word of a ``WORD json`` line."""
    return json.loads(line.split(" ", 1)[1])


class Adder(yotonnet.RepChannel):
    """Answers ``add(a, b)`` with its context's name and the sum; counts its sums."""

    sums = 0

    def add(self, a: int, b: int) -> list:
        self.sums += 1
        return [self.context.name, a + b]


class LeavesTestCase(TestCase):
    timeout = 120  # trial's own bound, above every wait

    def spawn(self, label: str, *argv: str, stdin_open: bool = False) -> Lines:
        """``python -u ARGV`` (this checkout's yotonnet); killed and reaped in cleanup."""
        proto = Lines(reactor, label)
        env = dict(os.environ, PYTHONPATH=procs.REPO_ROOT)
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-u", *argv], env=env,
                             path=procs.REPO_ROOT)
        if not stdin_open:
            proto.transport.closeStdin()
        self.addCleanup(proto.kill)
        return proto

    async def start_node(self, name: str, *peers: str) -> tuple[Lines, str]:
        """``yotonnet node NAME`` on a free loopback port, linked to ``peers``; the process
        and its endpoint once it is ready."""
        argv = ["-m", "yotonnet", "node", "--name", name,
                "--listen", "tcp:0:interface=127.0.0.1"]
        for peer in peers:
            argv += ["--peer", peer]
        node = self.spawn(f"node {name}", *argv)
        line = await node.wait_for("ready on ", WAIT)
        port = re.search(r"ready on 127\.0\.0\.1:(\d+)", line).group(1)
        return node, f"tcp:127.0.0.1:{port}"

    async def chain(self, *names: str) -> list[str]:
        """Nodes started together, each linked to the one before; their endpoints."""
        first, endpoint = await self.start_node(names[0])
        endpoints = [endpoint]
        for name in names[1:]:
            _, endpoint = await self.start_node(name, endpoints[-1])
            endpoints.append(endpoint)
        return endpoints

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``python -m yotonnet ARGS`` to its end: (exit status, stdout, stderr)."""
        out, err, code = await procs.yotonnet_command(*args)
        return code, out, err

    async def status(self, endpoint: str) -> dict:
        """``yotonnet status --json`` of the node at ``endpoint``."""
        code, out, err = await self.cli("status", "--json", "--connect", endpoint)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def leaf(self, name: str, endpoint: str | list[str]) -> tuple[Context, defer.Deferred]:
        """A context of this process that only dials: a leaf of the node it joins."""
        ctx = Context(name, reactor, config=FAST)
        self.addCleanup(ctx.close)
        return ctx, bounded(ctx.connect(endpoint), f"{name} to link to {endpoint}")

    def leaves_peer(self, role: str, endpoints: list[str], *extra: str) -> Lines:
        argv = [LEAVES_PEER, role, "--leaves", str(LEAVES)]
        for endpoint in endpoints:
            argv += ["--connect", endpoint]
        return self.spawn(f"{LEAVES} leaves ({role})", *argv, *extra)


class AThousandLeaves(LeavesTestCase):
    def setUp(self) -> None:
        # The peer raises its soft limit of open files as far as the hard one allows.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < LEAVES + 256:
            raise SkipTest(f"{LEAVES} leaves in one process take {LEAVES + 256} open files; "
                           f"the hard limit (ulimit -Hn) is {hard}")

    async def test_a_publisher_reaches_a_thousand_leaves_of_three_nodes(self) -> None:
        endpoints = await self.chain("n1", "n2", "n3")
        peer = self.leaves_peer("sub", endpoints, "--channel", "fan")
        joined = payload(await peer.wait_for("JOINED", 60))
        self.assertEqual(joined["roles"], ["leaf"])
        hubs = joined["hubs"]
        self.assertEqual(hubs, {"n1": 334, "n2": 333, "n3": 333})

        # The publisher is a leaf of the first node: its messages cross the chain.
        ctx, linked = self.leaf("publisher", endpoints[0])
        await linked
        pub = yotonnet.PubChannel(ctx, "fan", OBJECT)
        await bounded(pub.wait_for_subscribers(LEAVES), "the publisher to see 1,000 subscribers")
        self.assertEqual(pub.subscribers, LEAVES)
        for seq in range(MESSAGES):
            if not pub.writable:
                await bounded(pub.ready(), "the subscribers to take more")
            pub.send([seq, f"m{seq}"])
        pub.send([MESSAGES, END])
        result = payload(await peer.wait_for("RESULT", 60))
        self.assertEqual(result, {"leaves": LEAVES, "exact": LEAVES, "messages": MESSAGES,
                                  "bad": []})

        # Each node names its own leaves; its routing table holds the three nodes only.
        reports = await defer.gatherResults(
            [defer.ensureDeferred(self.status(ep)) for ep in endpoints])
        node_ids = {r["node"]["id"] for r in reports}
        total = 0
        for name, report in zip(("n1", "n2", "n3"), reports):
            node = report["node"]
            self.assertEqual(node["name"], name)
            table = {n["id"]: n["name"] for n in node["nodes"]}
            self.assertEqual(table, {r["node"]["id"]: r["node"]["name"] for r in reports},
                             f"{name}'s routing table lists a leaf")
            leaf_names = [leaf["name"] for leaf in node["leaves"]]
            self.assertEqual(sum(n.startswith("leaf-") for n in leaf_names), hubs[name])
            self.assertEqual(len(leaf_names), len(set(leaf_names)))
            total += len(leaf_names)
            # the mesh as this node sees it: three nodes, each counting its leaves
            mesh = {n["id"]: n for n in report["mesh"]["nodes"]}
            self.assertEqual(set(mesh), node_ids)
            counts = {n["name"]: n["leaves"] for n in mesh.values()}
            for other, count in hubs.items():
                self.assertGreaterEqual(counts[other], count, f"as {name} sees {other}")
        self.assertIn("publisher", [leaf["name"] for leaf in reports[0]["node"]["leaves"]])
        # the 1,000, the publisher and the status commands
        self.assertGreaterEqual(total, LEAVES + 1)

    async def test_a_thousand_callers_two_repliers_on_two_nodes(self) -> None:
        endpoints = await self.chain("n1", "n2", "n3")
        repliers = []
        for name, endpoint in (("rep-a", endpoints[0]), ("rep-b", endpoints[2])):
            ctx, linked = self.leaf(name, endpoint)
            repliers.append(Adder(ctx, "math"))
            await linked
        peer = self.leaves_peer("call", endpoints, "--channel", "math", "--responders", "2",
                                "--calls", "2")
        joined = payload(await peer.wait_for("JOINED", 60))
        self.assertEqual(joined["roles"], ["leaf"])
        self.assertEqual(joined["hubs"], {"n1": 334, "n2": 333, "n3": 333})
        result = payload(await peer.wait_for("RESULT", 60))
        self.assertEqual((result["calls"], result["correct"], result["failed"], result["errors"]),
                         (2 * LEAVES, 2 * LEAVES, 0, []))
        by = result["by"]
        self.assertEqual(set(by), {"rep-a", "rep-b"}, "both repliers served")
        self.assertTrue(all(count > 0 for count in by.values()), by)
        self.assertEqual(by, {r.context.name: r.sums for r in repliers})
        for rep in repliers:
            self.assertEqual(rep.context.role, "leaf")


class ClientsAreLeaves(LeavesTestCase):
    async def test_cli_commands_and_consoles_are_leaves_of_their_node(self) -> None:
        hub_proc, hub = await self.start_node("hub")
        # The kernel's broker links to the hub as a node of the mesh.
        broker = self.spawn("yotonnet kernel", "-m", "yotonnet", "kernel", "shared",
                            "--name", "broker", "--peer", hub)
        await broker.wait_for("yotonnet kernel shared: ready", WAIT)
        await broker.wait_for("yotonnet kernel shared: linked to", WAIT)
        # Each pub command below ends right after sending, often before its context has
        # answered the sub's question of where its stream starts (yotonnet.core.repair):
        # the sub then holds the message until repair_wait passes unanswered. The same path
        # with a 1 s wait instead of the default 10 s.
        config = os.path.join(tempfile.mkdtemp(prefix="yotonnet-leaves-"), "sub.toml")
        self.addCleanup(shutil.rmtree, os.path.dirname(config), True)
        with open(config, "w") as f:
            f.write("[context]\nrepair_wait = 1.0\n")
        sub = self.spawn("yotonnet sub", "-m", "yotonnet", "sub", "fan", "--count", "2",
                         "--config", config, "--connect", hub)
        sub_name = f"yotonnet-cli-sub-{sub.transport.pid}"
        # Interactive consoles on a pipe: attached until their stdin ends.
        consoles = [self.spawn(f"console {i}", "-m", "yotonnet", "console", "shared",
                               "--connect", hub, stdin_open=True) for i in range(2)]
        for console in consoles:
            await console.wait_for("yotonnet console: kernel shared as ", WAIT)
        code, _, err = await self.cli("pub", "fan", "one", "--wait", "1", "--connect", hub)
        self.assertEqual(code, 0, err)
        self.assertEqual(await sub.wait_for("one"), "one")

        report = await self.status(hub)
        node = report["node"]
        self.assertEqual(node["name"], "hub")
        leaves = [leaf["name"] for leaf in node["leaves"]]
        # (the pub command that just ended may not have been seen leaving yet)
        staying = [n for n in leaves if not n.startswith("yotonnet-cli-pub-")]
        self.assertIn(sub_name, staying)
        self.assertEqual(len([n for n in staying if n.startswith("yotonnet-cli-status-")]), 1)
        console_leaves = [n for n in staying if not n.startswith("yotonnet-cli-")]
        self.assertEqual(len(console_leaves), 2, f"the two consoles among {leaves}")
        self.assertEqual(len(staying), 4, leaves)
        roles = {link["peer_name"]: link["role"] for link in node["links"]}
        self.assertEqual(roles, {**dict.fromkeys(leaves, "leaf"), "broker": "node"})
        # The mesh is the hub and the broker; the hub counts its leaves.
        mesh = {n["name"]: n for n in report["mesh"]["nodes"]}
        self.assertEqual(set(mesh), {"hub", "broker"})
        self.assertEqual(mesh["hub"]["leaves"], len(leaves))
        self.assertEqual(mesh["broker"]["leaves"], 0)
        self.assertEqual(report["mesh"]["seen_by"], "hub")

        # `yotonnet call` of the hub's own control channel: the call is a leaf too.
        code, out, err = await self.cli("call", control_channel_name(int(node["id"], 16)),
                                        "status", "--connect", hub)
        self.assertEqual(code, 0, err)
        seen = json.loads(out)
        callers = [leaf["name"] for leaf in seen["leaves"]
                   if leaf["name"].startswith("yotonnet-cli-call-")]
        self.assertEqual(len(callers), 1, seen["leaves"])
        self.assertNotIn(callers[0], [n["name"] for n in seen["nodes"]])

        # They end as users end them, and their node forgets them.
        code, _, err = await self.cli("pub", "fan", "two", "--wait", "1", "--connect", hub)
        self.assertEqual(code, 0, err)
        for console in consoles:
            console.transport.closeStdin()  # Ctrl-D
        for proc in (sub, *consoles):
            await bounded(proc.ended, f"{proc.label} to exit")
            self.assertEqual(proc.exit_reason.value.exitCode, 0, proc.describe_output())
        self.assertEqual(sub.lines, ["one", "two"])
        last: dict = {}

        async def only_the_status_command() -> bool:
            nonlocal last
            last = await self.status(hub)
            return len(last["node"]["leaves"]) == 1

        for _ in range(20):
            if await only_the_status_command():
                break
        self.assertEqual([leaf["name"] for leaf in last["node"]["leaves"]],
                         [last["client"]["name"]])
        self.assertTrue(hub_proc.running)


class LeafMovesOn(LeavesTestCase):
    async def test_a_leaf_joins_the_next_node_when_its_node_is_killed(self) -> None:
        n1_proc, ep1 = await self.start_node("n1")
        n2_proc, ep2 = await self.start_node("n2", ep1)
        leaf, linked = self.leaf("wanderer", [ep1, ep2])
        got: list = []
        sub = yotonnet.SubChannel(leaf, "fan", OBJECT)
        sub.subscribe(got.append)
        first = await linked
        self.assertEqual((leaf.role, first.peer_name, leaf.hub), ("leaf", "n1", first))

        publisher, linked = self.leaf("publisher", ep2)
        await linked
        pub = yotonnet.PubChannel(publisher, "fan", OBJECT)
        await bounded(pub.wait_for_subscribers(1), "the publisher to see the leaf through n1")
        pub.send([0, "via n1"])
        await until(lambda: got, "the message through n1")
        self.assertEqual(got, [[0, "via n1"]])

        os.kill(n1_proc.transport.pid, signal.SIGKILL)
        await bounded(n1_proc.ended, "n1 to die")
        await until(lambda: leaf.hub is not None and leaf.hub.peer_name == "n2",
                    "the leaf to join n2")
        n2_id = leaf.hub.peer_id
        # The publisher's picture: the subscription is held at n2 now.
        await until(lambda: publisher.routing.holders(pub.channel_id, SUB) == [n2_id],
                    "the publisher to see the subscription at n2")
        pub.send([1, "via n2"])
        await until(lambda: len(got) == 2, "the message through n2")
        self.assertEqual(got, [[0, "via n1"], [1, "via n2"]])
        self.assertEqual((sub.received, sub.errors), (2, []))
        # One connect() did it all; nobody dialled again.
        self.assertEqual(len(leaf.dialers), 1)
        self.assertTrue(leaf.dialers[0].info()["connected"])
        self.assertEqual(leaf.role, "leaf")

        report = await self.status(ep2)
        self.assertIn("wanderer", [x["name"] for x in report["node"]["leaves"]])
        self.assertEqual({n["name"] for n in report["node"]["nodes"]} - {"n1"}, {"n2"})
        self.assertNotIn("wanderer", [n["name"] for n in report["mesh"]["nodes"]])
        self.assertTrue(n2_proc.running)
