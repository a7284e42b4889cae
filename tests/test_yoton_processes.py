"""Ring 3: unmodified Yoton 2.2 contexts, each in its own process, on the mesh.

Each Yoton context runs in a child (``tests/yoton_peer.py``, the real Yoton
from the installed ``pyzo`` package, no Qt) and talks Yoton's own handshake
and packages over loopback TCP to a :class:`~yotonnet.yoton.YotonBridge`.
Covered, both directions each time:

* hello world pub/sub (TEXT, BINARY, OBJECT with Yoton's own object tags);
  the Yoton context is a node in ``topology()``;
* state for a late joiner (Yoton late, then yotonnet late);
* req/rep with Yoton's pre-request negotiation (``req?``/``req!``/``req-``),
  a handler error, and yotonnet calling a Yoton RepChannel;
* two Yoton contexts talking (pub/sub, state, req/rep) through a 3-node
  yotonnet mesh, with Yoton's sync mode (``full``/``ok``) holding a flood
  back across it;
* heartbeats keep the link up while idle; a stopped (SIGSTOP) Yoton process
  is reported busy, then up again; this side's close package closes Yoton's
  connection ("Closed from other end."), a Yoton ``close()`` closes the link,
  and a killed Yoton process is reported ``closed`` like any link.

Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import procs
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase
from waits import bounded, until

import yotonnet
from yotonnet import OBJECT, Context, ContextConfig
from yotonnet.core.routing import REP, STATE, SUB
from yotonnet.yoton import YotonBridge, YotonChannel, YotonLink

PEER = os.path.join(procs.REPO_ROOT, "tests", "yoton_peer.py")
WAIT = 20.0


def _pyzo_installed() -> bool:
    done = subprocess.run(
        [sys.executable, PEER, "--check"], capture_output=True, text=True, timeout=60
    )
    return done.returncode == 0


PYZO = _pyzo_installed()






class YotonPeer:
    """A Yoton context in a child process (see tests/yoton_peer.py)."""

    def __init__(self, testcase: TestCase, label: str) -> None:
        self.proc = procs.spawn_peer(testcase, label=label, script=PEER)
        self.label = label

    async def start(self) -> YotonPeer:
        ready = await self.proc.wait_for("")
        if ready != "ready":
            raise AssertionError(f"{self.label} did not start:\n{self.proc.describe_output()}")
        self.id = int((await self.cmd("id", "id")).split()[1], 16)
        return self

    async def cmd(self, line: str, answer: str, timeout: float = WAIT) -> str:
        """Send one command and return its answer (each command prints exactly one line);
        any other answer, e.g. ``error ...``, fails the test with the child's output."""
        self.begin(line)
        return await self.answer(line, answer, timeout)

    def begin(self, line: str) -> None:
        """Send a command whose answer is awaited later (see answer())."""
        self.proc.transport.write(line.encode() + b"\n")

    async def answer(self, line: str, answer: str, timeout: float = WAIT) -> str:
        got = await self.proc.wait_for("", timeout)
        if not got.startswith(answer):
            raise AssertionError(
                f"{self.label}: {line!r} answered {got!r}, not {answer!r}\n"
                f"{self.proc.describe_output()}"
            )
        return got

    async def ok(self, line: str) -> None:
        await self.cmd(line, "ok")

    async def bind(self) -> int:
        return int((await self.cmd("bind localhost:0", "bound")).split()[1])


def value_of(line: str) -> Any:
    return json.loads(line.split(" ", 1)[1])


class YotonTestCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not PYZO:
            raise SkipTest(
                "needs Yoton 2.2 from the pyzo package: pip install --no-deps pyzo"
            )

    def context(self, name: str, **config: Any) -> Context:
        cfg = ContextConfig(**{"heartbeat": 0.2, "busy_timeout": 3.0, **config})
        ctx = Context(name, reactor, config=cfg)
        self.addCleanup(ctx.close)
        return ctx

    async def peer(self, label: str) -> YotonPeer:
        return await YotonPeer(self, label).start()

    async def listen(self, bridge: YotonBridge) -> int:
        port = await bridge.listen("tcp:0:interface=127.0.0.1")
        return port.getHost().port

    async def yoton_link(self, ctx: Context, peer: YotonPeer) -> YotonLink:
        await until(lambda: peer.id in ctx.links, f"{peer.label}'s link")
        link = ctx.links[peer.id]
        self.assertIsInstance(link, YotonLink)
        return link


class HelloWorld(YotonTestCase):
    async def test_pubsub_both_ways_and_topology(self) -> None:
        ctx = self.context("hub")
        bridge = YotonBridge(
            ctx,
            [
                YotonChannel("hello"),
                YotonChannel("blobs", message_type="BINARY"),
                YotonChannel("things", message_type="OBJECT"),
                YotonChannel("back"),
            ],
        )
        port = await self.listen(bridge)
        yo = await self.peer("yoton")
        for line in ("pub hello TEXT", "pub blobs BINARY", "pub things OBJECT", "sub back TEXT"):
            await yo.ok(line)
        hello = yotonnet.SubChannel(ctx, "hello")
        blobs = yotonnet.SubChannel(ctx, "blobs", yotonnet.BINARY)
        things = yotonnet.SubChannel(ctx, "things", OBJECT)
        await yo.cmd(f"connect localhost:{port}", "connected")
        link = await self.yoton_link(ctx, yo)

        # Yoton -> yotonnet, each message type (OBJECT through both tag formats).
        await yo.cmd('send hello "hello world"', "sent")
        self.assertEqual(await bounded(hello.recv(), "TEXT"), "hello world")
        await yo.cmd('send blobs "\\u0000\\u00ff raw"', "sent")
        self.assertEqual(await bounded(blobs.recv(), "BINARY"), b"\x00\xff raw")
        value = {"a": [1, 2.5, None, True], "b": "\u00e9t\u00e9", "n": -(2**62)}
        await yo.cmd("send things " + json.dumps(value), "sent")
        self.assertEqual(await bounded(things.recv(), "OBJECT"), value)

        # yotonnet -> Yoton: the virtual node announced the Yoton side's subscription.
        pub = yotonnet.PubChannel(ctx, "back")
        await bounded(pub.wait_for_subscribers(), "the Yoton subscriber")
        pub.send("hi yoton")
        self.assertEqual(value_of(await yo.cmd("recv back 10", "got")), "hi yoton")

        # The Yoton context is a node of the mesh, linked to this one.
        topo = ctx.topology()
        node = next(n for n in topo["nodes"] if int(n["id"], 16) == yo.id)
        self.assertTrue(node["reachable"])
        self.assertEqual(node["distance"], 1)
        self.assertIn(f"{ctx.node_id:016x}", node["links"])
        self.assertEqual(
            {i["role"] for i in node["interests"].values()}, {SUB}
        )
        info = next(x for x in topo["links"] if x["peer"] == f"{yo.id:016x}")
        self.assertEqual(info["protocol"], "yoton")
        self.assertEqual(info["status"], "up")
        self.assertGreater(link.counters["packages_in"], 2)

    async def test_bridge_dials_a_yoton_host(self) -> None:
        ctx = self.context("dialler")
        bridge = YotonBridge(ctx, [YotonChannel("hello")])
        yo = await self.peer("yoton-host")
        await yo.ok("sub hello TEXT")
        port = await yo.bind()
        link = await bounded(bridge.connect(f"tcp:127.0.0.1:{port}"), "the Yoton handshake")
        self.assertEqual(link.peer_id, yo.id)
        self.assertTrue(ctx.dialers[-1].info()["connected"])
        pub = yotonnet.PubChannel(ctx, "hello")
        await bounded(pub.wait_for_subscribers(), "the Yoton subscriber")
        pub.send("dialled")
        self.assertEqual(value_of(await yo.cmd("recv hello 10", "got")), "dialled")


class State(YotonTestCase):
    async def test_yoton_late_joiner_gets_the_mesh_value(self) -> None:
        ctx = self.context("hub")
        bridge = YotonBridge(ctx, [YotonChannel("settings", "state", "OBJECT")])
        port = await self.listen(bridge)
        settings = yotonnet.StateChannel(ctx, "settings")
        settings.send({"theme": "dark", "size": 12})
        yo = await self.peer("yoton-late")
        await yo.ok("state settings OBJECT")
        await yo.cmd(f"connect localhost:{port}", "connected")
        got = await yo.cmd('waitstate settings {"theme": "dark", "size": 12} 15', "state")
        self.assertEqual(value_of(got), {"theme": "dark", "size": 12})
        # A Yoton write reaches the mesh holder.
        await yo.cmd('set settings {"theme": "light"}', "set")
        await until(lambda: settings.recv() == {"theme": "light"}, "the Yoton write")

    async def test_yotonnet_late_joiner_gets_the_yoton_value(self) -> None:
        ctx = self.context("hub")
        bridge = YotonBridge(ctx, [YotonChannel("mode", "state", "TEXT")])
        port = await self.listen(bridge)
        yo = await self.peer("yoton-early")
        await yo.ok("state mode TEXT")
        await yo.cmd('set mode "expert"', "set")  # before anything is linked
        await yo.cmd(f"connect localhost:{port}", "connected")
        await self.yoton_link(ctx, yo)
        await task.deferLater(reactor, 0.3, lambda: None)
        late = yotonnet.StateChannel(ctx, "mode", yotonnet.TEXT)  # joins afterwards
        await until(lambda: late.recv() == "expert", "the Yoton value at the late joiner")


class ReqRep(YotonTestCase):
    async def test_yoton_calls_yotonnet_with_pre_request_negotiation(self) -> None:
        ctx = self.context("server")

        class Math(yotonnet.RepChannel):
            def add(self, a, b):
                return a + b

            def boom(self, text):
                raise KeyError(text)

            def shape(self, **kw):
                return {"kw": kw, "t": (1, "x")}

        Math(ctx, "math")
        bridge = YotonBridge(ctx, [YotonChannel("math", "reqrep")])
        port = await self.listen(bridge)
        yo = await self.peer("yoton-req")
        await yo.ok("req math")
        await yo.cmd(f"connect localhost:{port}", "connected")
        link = await self.yoton_link(ctx, yo)
        self.assertEqual(value_of(await yo.cmd("call math add [2, 3] 15", "result")), 5)
        self.assertEqual(
            value_of(await yo.cmd('call math add ["a", "b"] 15', "result")), "ab"
        )
        err = await yo.cmd('call math boom ["nope"] 15', "error")
        self.assertIn("KeyError", err)
        self.assertIn("nope", err)
        missing = await yo.cmd("call math nosuch [] 15", "error")
        self.assertIn("nosuch", missing)
        self.assertEqual(link.counters["untranslatable"], 0)

    async def test_yotonnet_calls_a_yoton_replier(self) -> None:
        ctx = self.context("client")
        bridge = YotonBridge(ctx, [YotonChannel("calc", "reqrep", serve=True)])
        port = await self.listen(bridge)
        yo = await self.peer("yoton-rep")
        await yo.cmd("rep calc", "ok")
        await yo.cmd(f"connect localhost:{port}", "connected")
        req = yotonnet.ReqChannel(ctx, "calc", timeout=15)
        await bounded(req.wait_for_responders(), "the Yoton replier")
        self.assertEqual(await bounded(req.add(20, 22), "add"), 42)
        self.assertEqual(await bounded(req.whoami(), "whoami"), f"yoton-{yo.proc.transport.pid}")
        results = await bounded(
            defer.gatherResults([req.add(i, i) for i in range(10)]), "ten calls"
        )
        self.assertEqual(results, [2 * i for i in range(10)])
        with self.assertRaises(yotonnet.RemoteError) as caught:
            await bounded(req.fail("bad input"), "a failing call")
        self.assertIn("bad input", str(caught.exception))
        # Yoton's OBJECT has no bytes: refused here, saying so, without asking Yoton.
        with self.assertRaises(yotonnet.RemoteError) as caught:
            await bounded(req.add(b"x", b"y"), "an untranslatable call")
        self.assertIn("not expressible", str(caught.exception))

    async def test_a_yoton_request_waits_for_a_replier_to_appear(self) -> None:
        ctx = self.context("server")
        bridge = YotonBridge(ctx, [YotonChannel("later", "reqrep")])
        port = await self.listen(bridge)
        yo = await self.peer("yoton-early-caller")
        await yo.ok("req later")
        await yo.cmd(f"connect localhost:{port}", "connected")
        await self.yoton_link(ctx, yo)
        call = "call later add [20, 22] 15"
        yo.begin(call)  # nobody serves "later" yet: Yoton repeats its req? every 0.5 s
        await task.deferLater(reactor, 1.0, lambda: None)
        rep = yotonnet.RepChannel(ctx, "later")
        rep.register("add", lambda a, b: a + b)
        self.assertEqual(value_of(await yo.answer(call, "result")), 42)


class ThroughTheMesh(YotonTestCase):
    """Yoton A -- node a -- node b -- node c -- Yoton C, over loopback TCP throughout."""

    common = [
        YotonChannel("chat"), YotonChannel("status", "state", "OBJECT"), YotonChannel("stream")
    ]
    #: Yoton A calls, Yoton C serves
    channels_a = [*common, YotonChannel("calc", "reqrep")]
    channels_c = [*common, YotonChannel("calc", "reqrep", serve=True)]

    async def mesh(self, **config: Any) -> tuple[list[Context], list[YotonBridge], list[int]]:
        a, b, c = (self.context(n, **config) for n in "abc")
        pb = await b.listen("tcp:0:interface=127.0.0.1")
        await a.connect(f"tcp:127.0.0.1:{pb.getHost().port}")
        pc = await c.listen("tcp:0:interface=127.0.0.1")
        await b.connect(f"tcp:127.0.0.1:{pc.getHost().port}")
        bridges = [YotonBridge(a, self.channels_a), YotonBridge(c, self.channels_c)]
        ports = [await self.listen(bridges[0]), await self.listen(bridges[1])]
        return [a, b, c], bridges, ports

    async def test_two_yoton_contexts_talk_across_three_nodes(self) -> None:
        (a, b, c), _, (port_a, port_c) = await self.mesh()
        ya, yc = await self.peer("yoton-A"), await self.peer("yoton-C")
        for yo in (ya, yc):
            await yo.ok("pub chat TEXT")
            await yo.ok("sub chat TEXT")
            await yo.ok("state status OBJECT")
        await yc.ok("rep calc")
        await ya.ok("req calc")
        await ya.cmd(f"connect localhost:{port_a}", "connected")
        await yc.cmd(f"connect localhost:{port_c}", "connected")
        # b sees both Yoton contexts as nodes two hops away.
        await until(
            lambda: b.routing.distance(ya.id) == 2 and b.routing.distance(yc.id) == 2,
            "both Yoton nodes in b's routes",
        )
        await until(lambda: a.routing.distance(yc.id) == 3, "Yoton C three links from a")
        await until(
            lambda: ya.id in b.routing.holders(_chan("pubsub", "chat"), SUB)
            and yc.id in b.routing.holders(_chan("pubsub", "chat"), SUB),
            "both Yoton subscribers",
        )

        await ya.cmd('send chat "from A"', "sent")
        self.assertEqual(value_of(await yc.cmd("recv chat 10", "got")), "from A")
        await yc.cmd('send chat "from C"', "sent")
        self.assertEqual(value_of(await ya.cmd("recv chat 10", "got")), "from C")

        # State: C writes, A (on the far side) sees it; then A writes back.
        await until(
            lambda: ya.id in a.routing.holders(_chan("state", "status"), STATE)
            and ya.id in c.routing.holders(_chan("state", "status"), STATE),
            "both Yoton state holders",
        )
        await yc.cmd('set status {"step": 1}', "set")
        self.assertEqual(
            value_of(await ya.cmd('waitstate status {"step": 1} 15', "state")), {"step": 1}
        )
        await ya.cmd('set status {"step": 2}', "set")
        self.assertEqual(
            value_of(await yc.cmd('waitstate status {"step": 2} 15', "state")), {"step": 2}
        )

        # Req/rep: Yoton A's request, negotiated at a, served by Yoton C behind c.
        await until(lambda: a.routing.holders(_chan("reqrep", "calc"), REP) == [yc.id],
                    "Yoton C as the replier")
        self.assertEqual(value_of(await ya.cmd("call calc add [40, 2] 20", "result")), 42)
        who = value_of(await ya.cmd("call calc whoami [] 20", "result"))
        self.assertEqual(who, f"yoton-{yc.proc.transport.pid}")

    async def test_sync_mode_holds_a_flood_back_across_the_mesh(self) -> None:
        # Small windows, so that a few hundred short messages fill them.
        (a, b, c), _, (port_a, port_c) = await self.mesh(flow_window=4096)
        ya, yc = await self.peer("yoton-pub"), await self.peer("yoton-sub")
        await ya.ok("pub stream TEXT")
        await yc.ok("sub stream TEXT")
        await yc.ok("sync stream")
        await yc.ok("loop")
        await ya.ok("loop")
        await ya.cmd(f"connect localhost:{port_a}", "connected")
        await yc.cmd(f"connect localhost:{port_c}", "connected")
        await until(
            lambda: yc.id in a.routing.holders(_chan("pubsub", "stream"), SUB),
            "the Yoton subscriber",
        )
        # The subscriber reads nothing while the publisher floods: its queue passes
        # Yoton's high-water mark and it says "full".
        n = 2000
        flood = f"flood stream {n}"
        ya.begin(flood)
        link_c, link_a = c.links[yc.id], a.links[ya.id]
        await until(lambda: link_c.counters["full_in"] > 0, "Yoton's full at c")
        # Held back hop by hop to a, which told the Yoton publisher "full" in turn
        # (from then on each of its sends waits for "ok", up to 1 s, as Yoton does).
        await until(lambda: link_a.counters["full_out"] > 0, "full told to the publisher")
        self.assertGreater(link_a.counters["full_out"], 0)
        # Now the subscriber reads: "ok" flows back, and every message arrives in order.
        counted = await yc.cmd(f"count stream {n} 60", "count", timeout=90)
        got, last = counted.split(" ", 2)[1:]
        self.assertEqual((int(got), json.loads(last)), (n, str(n - 1)))
        await ya.answer(flood, "flooded", timeout=30)
        self.assertEqual(link_a.counters["dropped_backlog"], 0)


def _chan(pattern: str, name: str) -> int:
    from yotonnet.core.names import channel_id

    return channel_id(pattern, name)


class Liveness(YotonTestCase):
    async def test_heartbeats_close_package_and_a_killed_peer(self) -> None:
        ctx = self.context("watcher")
        events: list[tuple[int, str, str | None]] = []
        ctx.watch_links(lambda e: events.append((e.peer_id, e.status, e.reason)))
        bridge = YotonBridge(ctx, [YotonChannel("hello")])
        port = await self.listen(bridge)

        # Idle for longer than the busy timeout: Yoton's heartbeats keep the link up.
        quiet = await self.peer("yoton-quiet")
        await quiet.cmd(f"connect localhost:{port}", "connected")
        link = await self.yoton_link(ctx, quiet)
        await task.deferLater(reactor, ctx.config.busy_timeout + 1.0, lambda: None)
        self.assertEqual(link.status, "up")
        self.assertGreater(link.counters["heartbeats_in"], 4)
        self.assertNotIn((quiet.id, "busy"), [(p, s) for p, s, _ in events])

        # This side closes: Yoton reads the close package ("Closed from other end").
        link.close("test is done with it")
        await until(lambda: quiet.id not in ctx.links, "the link to go")
        for _ in range(100):
            state = await quiet.cmd("linkstate", "linkstate")
            if state.startswith("linkstate closed"):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(state, "linkstate closed Closed from other end.")
        await until(lambda: quiet.id not in ctx.routing.reachable(), "the node to go")

        # Yoton closes (Yoton 2.2's close() never sends its own close package, as its
        # status is already "closing" when it checks; the socket just closes).
        other = await self.peer("yoton-closing")
        await other.cmd(f"connect localhost:{port}", "connected")
        await self.yoton_link(ctx, other)
        await other.cmd("close", "closed")
        await until(lambda: (other.id, "closed") in [(p, s) for p, s, _ in events],
                    "the closed event")

        # A killed Yoton process: reported closed like any link, its node unreachable.
        doomed = await self.peer("yoton-doomed")
        await doomed.cmd(f"connect localhost:{port}", "connected")
        await self.yoton_link(ctx, doomed)
        await doomed.proc.kill()
        await until(lambda: (doomed.id, "closed") in [(p, s) for p, s, _ in events],
                    "the closed event of the killed peer")
        self.assertNotIn(doomed.id, ctx.links)
        self.assertNotIn(doomed.id, ctx.routing.reachable())

    async def test_a_stopped_yoton_process_is_busy_then_back(self) -> None:
        ctx = self.context("watcher", busy_timeout=1.0)
        statuses: list[str] = []
        ctx.watch_links(lambda e: statuses.append(e.status))
        bridge = YotonBridge(ctx, [YotonChannel("hello")])
        port = await self.listen(bridge)
        yo = await self.peer("yoton-stopped")
        await yo.ok("sub hello TEXT")
        await yo.cmd(f"connect localhost:{port}", "connected")
        link = await self.yoton_link(ctx, yo)
        pid = yo.proc.transport.pid
        os.kill(pid, signal.SIGSTOP)  # as a Yoton process stuck in C code: no heartbeats
        try:
            await until(lambda: link.status == "busy", "busy")
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: link.status == "up", "up again")
        self.assertEqual(statuses, ["up", "busy", "up"])
        pub = yotonnet.PubChannel(ctx, "hello")
        pub.send("you are back")
        self.assertEqual(value_of(await yo.cmd("recv hello 10", "got")), "you are back")
