"""Ring 4: lossless across failures (issue 16) on real hosts: network namespaces, mutual TLS.

One process per host (``tests/repair_peer.py``), every link mutual TLS with
certificates from one CA (node certificates valid for each host's address; the
leaf client of scenario c dials with a user certificate), default timings
(heartbeat 1 s, busy_timeout 5 s, and whatever else ``ContextConfig`` gives),
so that the resume times printed are those a user gets. A publisher sends
``[seq, time.time()]``, seq 1, 2, ...; the lossless subscriber checks every
number against the last. At the end the publisher stops and says how many it
sent, the subscriber drains, and each test checks that it got exactly 1 to
that number, each once, in order, and that its ``SubChannel`` reports no
missed message and no gap.

* ``RingCuts``: 4 hosts in a ring, publisher on a at 100 msg/s, subscriber on
  c. The link in use on the publisher's side is cut silently
  (``TestHosts.silence``: packets between the two hosts vanish, both
  connections stay open and no process is told), then restored; then the link
  in use on the subscriber's side, then restored. Checked besides: the cut
  links' connections are the same before and after (nothing noticed the cut
  but the silence), and messages were really lost on the way and sent again.
* ``KilledForwarder``: 4 hosts in a square, publisher a, subscriber d; the
  node forwarding between them is killed (SIGKILL) mid-stream, after being
  stopped for half a second so that it dies holding messages (at 100 msg/s a
  plain kill seldom catches one on the way).
* ``LeafRedials``: a subscriber that is a leaf client of node b, dialling
  ``[b, c]``; b is killed (SIGKILL) and the leaf joins c by itself.
* ``FlowAcrossACut``: a publisher sending as fast as flow control lets it to a
  subscriber taking 1,000 msg/s two hops away (a ring of 4: the other half is
  the detour); the middle link of the path is cut silently, then restored.
  Checked besides: the publisher was paced, and no node's memory grew by more
  than 50 MB.
* ``FirstMessagesOvertaken``: a publisher's first messages held up on the
  first path (its forwarder stopped) while later ones take the detour are
  still delivered, first (a new subscriber asks where its stream starts).

Publishers start once every node reaches every other and a second has passed,
so that no route changes as the first messages go (see ``FirstMessagesOvertaken``).
In every test, messages were lost on the way and sent again (else it tested nothing).

For each outage the resume time is printed (``pytest -s``) and put in any
failure message: from the cut (or kill) until the subscriber gets the first
message published after it. Nothing is asserted on time (see
``benchmarks/bench_outage.py``); every wait is bounded only so that a stall fails.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile
import time
from typing import Any

from netns import UNAVAILABLE, TestHosts
from procs import REPO_ROOT, PeerProcess, spawn_peer
from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from yotonnet import ContextConfig
from yotonnet.security import certs

PEER = os.path.join(REPO_ROOT, "tests", "repair_peer.py")
PORT = 7300
#: node names, host by host (node i is on host i, address 10.77.0.<i+1>)
NODES = ("a", "b", "c", "d")
#: the leaf client's user certificate
LEAF_USER = "s"
#: bound on each wait; only a stall comes near it
WAIT = 40.0
MB = 1024  # VmRSS is in kB
#: seconds the forwarder is stopped before it is killed
STOPPED_FOR = 0.5

_certs: str | None = None


def cert_dir() -> str:
    """A CA, a node certificate for each of NODES (valid for its host's address) and a
    user certificate for the leaf; made once per run."""
    global _certs
    if _certs is None:
        d = tempfile.mkdtemp(prefix="yotonnet-hosts-")
        atexit.register(shutil.rmtree, d, True)
        certs.write_bundle(d, {name: [f"10.77.0.{i + 1}"] for i, name in enumerate(NODES)},
                           [LEAF_USER])
        _certs = d
    return _certs


def body(line: str) -> Any:
    return json.loads(line.split(" ", 1)[1])


def last_stat(proc: PeerProcess) -> dict | None:
    for line in reversed(proc.lines):
        if line.startswith("STAT "):
            return body(line)
    return None


class HostsTestCase(TestCase):
    timeout = 120

    if UNAVAILABLE:
        skip = UNAVAILABLE

    def setUp(self) -> None:
        self.hosts = TestHosts(4)
        self.hosts.create()
        self.addCleanup(self.hosts.destroy)
        self.procs: dict[str, PeerProcess] = {}
        #: what happened, for the printed report and failure messages
        self.story: list[str] = []

    def tell(self, text: str) -> None:
        self.story.append(text)
        print(f"[{self.id().rsplit('.', 1)[-1]}] {text}", flush=True)

    def where(self, name: str) -> str:
        return f"{self.hosts.address(NODES.index(name))}:{PORT}"

    def start(self, name: str, host: int, **opts: Any) -> PeerProcess:
        opts = {"name": name, "certs": cert_dir(), "nodes": list(NODES), "stat": 0.25, **opts}
        if name in NODES:
            opts.setdefault("node_id", NODES.index(name) + 1)
            opts.setdefault("listen", self.where(name))
        proc = spawn_peer(self, json.dumps(opts), label=name, script=PEER,
                          prefix=self.hosts.exec_prefix(host))
        self.procs[name] = proc
        return proc

    async def mesh(self, links: list[tuple[str, str]], start: bool = True,
                   **roles: dict) -> None:
        """Start a node per name in ``links`` (with ``roles[name]``'s options), wait until
        all listen, then have each dial its side of ``links`` and wait until every node
        reaches every other; then (``start``) a second later, once routes have settled,
        tell the publisher to start (once it knows of its subscriber)."""
        config = ContextConfig()  # what every process runs with (repair_peer.py)
        self.tell(f"default timings: heartbeat {config.heartbeat} s, reroute_after "
                  f"{getattr(config, 'reroute_after', '-')} s, busy_timeout "
                  f"{config.busy_timeout} s")
        names = {name for link in links for name in link}
        for name in sorted(names):
            peers = [self.where(b) for a, b in links if a == name]
            role = roles.get(name, {})
            if role.get("pub"):
                role = {"wait_start": True, **role}
            self.start(name, NODES.index(name), peers=peers, **role)
        for proc in list(self.procs.values()):
            await proc.wait_for("READY", WAIT)
        for proc in list(self.procs.values()):
            proc.transport.write(b"dial\n")
        for name in names:
            await self.until(name, lambda s, name=name: set(s["routes"]) >= names - {name},
                             "every node reachable")
        await task.deferLater(reactor, 1.0, lambda: None)
        if start:
            self.start_publishing()

    def start_publishing(self) -> None:
        for name in self.procs:
            self.command(name, "start")  # (only a publisher takes it)

    async def until(self, name: str, predicate: Any, what: str, timeout: float = WAIT,
                    since: float = 0.0) -> dict:
        """The newest STAT of ``name``, made at ``since`` or later, once one satisfies
        ``predicate``."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stat = last_stat(proc)
            if stat is not None and stat["t"] >= since and predicate(stat):
                return stat
            if not proc.running:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{name}: gave up waiting for {what}\n{self.report()}\n"
                  f"{proc.describe_output()}")

    def command(self, name: str, line: str) -> None:
        self.procs[name].transport.write(line.encode() + b"\n")

    async def resumed(self, sub: str, since: float, what: str, asked: bool = False) -> float:
        """Seconds from ``since`` until ``sub`` got the first message published after it
        (``asked``: the subscriber was told to watch for it already)."""
        if not asked:
            self.command(sub, f"after {since!r}")
        proc = self.procs[sub]
        deadline = time.monotonic() + WAIT
        while True:
            found = [body(line) for line in proc.lines if line.startswith("AFTER ")]
            found = [after for after in found if after["cut"] == since]
            if found:
                break
            if time.monotonic() > deadline or not proc.running:
                self.fail(f"{sub} got nothing published after {what}\n{self.report()}\n"
                          f"{proc.describe_output()}")
            await task.deferLater(reactor, 0.02, lambda: None)
        seconds = found[0]["received"] - since
        self.tell(f"{what}: resumed after {seconds:.2f} s")
        return seconds

    async def finish(self, pub: str, sub: str) -> tuple[dict, dict]:
        """Stop the publisher, let the subscriber drain, and check it got everything."""
        self.command(pub, "stop")
        stopped = body(await self.procs[pub].wait_for("STOPPED", WAIT))
        self.assertIsNone(stopped["error"], f"the publisher failed\n{self.report()}")
        sent = stopped["sent"]
        self.command(sub, f"drain {sent}")
        drained = body(await self.procs[sub].wait_for("DRAINED", WAIT))
        # (a little longer: a duplicate or a gap report coming late would show)
        await task.deferLater(reactor, 0.5, lambda: None)
        final = last_stat(self.procs[sub])["sub"]
        self.tell(f"sent {sent}; received {final['count']} (first {final['first']}, last "
                  f"{final['last']}, {final['dups']} out of order or twice, {final['skipped']} "
                  f"skipped, missed {final['missed']}, gaps {final['gaps']}); longest wait "
                  f"between two deliveries {final['stall']:.2f} s")
        got = {k: final[k] for k in ("count", "first", "last", "dups", "skipped", "missed",
                                     "gaps")}
        self.assertEqual(got, {"count": sent, "first": 1, "last": sent, "dups": 0,
                               "skipped": 0, "missed": 0, "gaps": []},
                         f"not every message once and in order\n{self.report()}")
        self.assertEqual(drained["last"], sent)
        return stopped, final

    def counter(self, key: str) -> int:
        """``key`` summed over every node's last STAT."""
        return sum((last_stat(p) or {}).get("counters", {}).get(key, 0)
                   for p in self.procs.values())

    def assert_repaired(self) -> None:
        """Messages were lost on the way and sent again (else the test tested nothing)."""
        resent = self.counter("repair_resent")
        self.tell(f"repair: {self.counter('repair_asked')} requests, {resent} messages sent "
                  f"again, {self.counter('repair_discarded')} duplicates dropped")
        self.assertGreater(resent, 0, f"nothing was lost on the way: no test\n{self.report()}")

    def report(self) -> str:
        return "what happened:\n  " + "\n  ".join(self.story)

    async def fresh(self, *names: str) -> None:
        """Wait until each of ``names`` has reported a STAT made from now on."""
        now = time.time()
        for name in names:
            await self.until(name, lambda s: True, "a new STAT", since=now)

    async def path(self, pub: str, sub: str) -> list[str]:
        """The nodes a message from ``pub`` to ``sub`` goes through now, by the routes."""
        await self.fresh(*[n for n in self.procs if n in NODES])
        hops = [pub]
        while hops[-1] != sub and len(hops) <= len(NODES):
            hops.append(last_stat(self.procs[hops[-1]])["routes"][sub])
        return hops

    async def in_use(self, pub: str, sub: str) -> list[str]:
        """The path from ``pub`` to ``sub`` by the routes, once steady for half a second
        with its forwarder seen forwarding (at least 20 frames)."""
        for _ in range(5):
            hops = await self.path(pub, sub)
            before = last_stat(self.procs[hops[1]])["counters"]["forwarded"]
            await task.deferLater(reactor, 0.5, lambda: None)
            if (await self.path(pub, sub) == hops
                    and last_stat(self.procs[hops[1]])["counters"]["forwarded"] >= before + 20):
                return hops
        self.fail(f"no steady path from {pub} to {sub}\n{self.report()}")

    def link(self, a: str, b: str) -> list:
        """[status, connection id] of ``a``'s link to ``b`` in its last STAT."""
        return last_stat(self.procs[a])["links"].get(b, ["absent", None])

    async def cut_silently(self, a: str, b: str, pub: str, sub: str, what: str) -> float:
        """Silence the link a-b until the stream resumes around it, then restore it and
        wait until both ends hear each other again on the same connections."""
        before = (self.link(a, b), self.link(b, a))
        self.assertEqual([before[0][0], before[1][0]], ["up", "up"])
        i, j = NODES.index(a), NODES.index(b)
        self.hosts.silence(i, j)
        self.addCleanup(self._unsilence, i, j)
        cut = time.time()
        self.tell(f"{what}: link {a}-{b} cut silently")
        seconds = await self.resumed(sub, cut, what)
        # Silent: neither end was told; each still holds the link it had (quiet or busy).
        now_path = await self.path(pub, sub)
        during = (self.link(a, b), self.link(b, a))
        self.tell(f"{what}: while cut, {a} sees {b} {during[0][0]}, {b} sees {a} "
                  f"{during[1][0]}; path now {'-'.join(now_path)}")
        self.assertEqual((during[0][1], during[1][1]), (before[0][1], before[1][1]),
                         f"the silent cut closed a connection\n{self.report()}")
        await task.deferLater(reactor, 1.0, lambda: None)  # the detour carries the stream
        self._unsilence(i, j)
        restored = time.time()
        for x, y, old in ((a, b, before[0]), (b, a, before[1])):
            await self.until(x, lambda s, y=y: s["links"].get(y, [""])[0] == "up",
                             f"its link to {y} to be up again after the cut", since=restored)
            self.assertEqual(self.link(x, y)[1], old[1],
                             f"{x}'s connection to {y} was replaced\n{self.report()}")
        self.tell(f"{what}: restored; the same connections carry traffic again "
                  f"{time.time() - restored:.1f} s later")
        return seconds

    def _unsilence(self, i: int, j: int) -> None:
        try:
            self.hosts.unsilence(i, j)
        except Exception:  # noqa: BLE001 - already restored (or the hosts are gone)
            pass


class RingCuts(HostsTestCase):
    async def test_silent_cuts_of_the_link_in_use_on_each_side_lose_nothing(self) -> None:
        await self.mesh([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")],
                        a={"pub": True, "rate": 100}, c={"sub": True})
        await self.procs["a"].wait_for("PUBLISHING", WAIT)
        await self.until("c", lambda s: s["sub"]["count"] >= 100, "the stream to flow")
        first = await self.in_use("a", "c")
        self.tell(f"path {'-'.join(first)}")
        await self.cut_silently("a", first[1], "a", "c", "cut 1 (publisher's side)")
        await task.deferLater(reactor, 1.0, lambda: None)  # routes settle on the restored link
        second = await self.in_use("a", "c")
        self.tell(f"path {'-'.join(second)}")
        await self.cut_silently(second[1], "c", "a", "c", "cut 2 (subscriber's side)")
        await self.finish("a", "c")
        self.assert_repaired()


class KilledForwarder(HostsTestCase):
    async def test_the_forwarding_node_killed_mid_stream_loses_nothing(self) -> None:
        await self.mesh([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
                        a={"pub": True, "rate": 100}, d={"sub": True})
        await self.procs["a"].wait_for("PUBLISHING", WAIT)
        await self.until("d", lambda s: s["sub"]["count"] >= 100, "the stream to flow")
        path = await self.in_use("a", "d")
        self.tell(f"path {'-'.join(path)}")
        forwarder = path[1]
        # At 100 msg/s a forwarder is seldom caught holding a message: stop it for a
        # moment first (SIGSTOP), so that it dies with what a sent it meanwhile unread.
        proc = self.procs.pop(forwarder)
        os.kill(proc.transport.pid, signal.SIGSTOP)
        stopped = time.time()
        self.command("d", f"after {stopped!r}")
        await task.deferLater(reactor, STOPPED_FOR, lambda: None)
        await proc.kill()
        killed = time.time()
        self.command("d", f"after {killed!r}")
        self.tell(f"{forwarder} stopped (SIGSTOP), {STOPPED_FOR} s later killed (SIGKILL)")
        await self.resumed("d", killed, "forwarder killed", asked=True)
        await self.resumed("d", stopped, "counted from the SIGSTOP", asked=True)
        self.tell(f"path now {'-'.join(await self.path('a', 'd'))}")
        await task.deferLater(reactor, 1.0, lambda: None)
        await self.finish("a", "d")
        self.assert_repaired()


class LeafRedials(HostsTestCase):
    async def test_a_leaf_subscriber_whose_node_is_killed_dials_another_and_loses_nothing(
        self,
    ) -> None:
        # a publishes; b and c are nodes linked to a; the leaf (host 3) dials [b, c].
        await self.mesh([("b", "a"), ("c", "a")], a={"pub": True, "rate": 100})
        self.start(LEAF_USER, 3, sub=True, hubs=[self.where("b"), self.where("c")])
        await self.procs[LEAF_USER].wait_for("READY", WAIT)
        await self.until(LEAF_USER, lambda s: s["sub"]["count"] >= 100, "the stream to flow")
        self.assertEqual(last_stat(self.procs[LEAF_USER])["hub"], "b")
        await self.procs.pop("b").kill()
        killed = time.time()
        self.tell("b, the leaf's node, killed (SIGKILL)")
        await self.resumed(LEAF_USER, killed, "hub killed")
        hub = (await self.until(LEAF_USER, lambda s: s["hub"] is not None, "a hub"))["hub"]
        self.tell(f"the leaf's node is now {hub}")
        self.assertEqual(hub, "c")
        await task.deferLater(reactor, 1.0, lambda: None)
        await self.finish("a", LEAF_USER)
        self.assert_repaired()


class FlowAcrossACut(HostsTestCase):
    async def test_a_flood_paced_by_a_slow_subscriber_two_hops_away_loses_nothing(
        self,
    ) -> None:
        # A 64 KiB window per link (as in the flow scenario): the windows fill in the
        # first second, so the publisher is paced by the subscriber throughout.
        window = {"window": 64 * 1024}
        await self.mesh([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")],
                        a={"pub": True, "rate": 0, **window},
                        b=window, c={"sub": True, "pace": 1000, **window}, d=window)
        start = {name: last_stat(p)["rss"] for name, p in self.procs.items()}
        await self.procs["a"].wait_for("PUBLISHING", WAIT)
        await self.until("c", lambda s: s["sub"]["count"] >= 2000, "the stream to flow")
        path = await self.in_use("a", "c")
        self.tell(f"path {'-'.join(path)}")
        await self.cut_silently(path[1], "c", "a", "c", "cut (middle of the path)")
        await task.deferLater(reactor, 2.0, lambda: None)
        stopped, final = await self.finish("a", "c")
        self.assert_repaired()
        self.tell(f"publisher paused {stopped['pauses']} times by flow control")
        self.assertGreater(stopped["pauses"], 0, "the publisher was never paced")
        # Bounded memory: what the nodes hold is bounded by windows and the retention.
        for name, proc in self.procs.items():
            stats = [body(line) for line in proc.lines if line.startswith("STAT ")]
            peak = max(s["rss"] for s in stats)
            repair = max(s["repair"]["retained_bytes"] for s in stats)
            reorder = max(s["repair"]["reorder_bytes"] for s in stats)
            self.tell(f"{name}: RSS {start[name] // MB} MB at the start, peak "
                      f"{peak // MB} MB; retained up to {repair // 1024} KiB, held past a "
                      f"gap up to {reorder // 1024} KiB")
            self.assertLess(peak - start[name], 50 * MB,
                            f"{name}'s RSS grew by {peak - start[name]} kB\n{self.report()}")


class FirstMessagesOvertaken(HostsTestCase):
    """A publisher's first messages overtaken by later ones on another path."""

    async def test_first_messages_that_arrive_late_are_delivered(self) -> None:
        # The first window (64 KiB: 979 messages) goes into the a-X link while X is
        # stopped; past reroute_after the stream goes around X and reaches c first; then
        # X goes on and hands c messages 1 to 979.
        window = {"window": 64 * 1024}
        await self.mesh([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")], start=False,
                        a={"pub": True, "rate": 0, **window},
                        b=window, c={"sub": True, "pace": 1000, **window}, d=window)
        hop = (await self.path("a", "c"))[1]
        os.kill(self.procs[hop].transport.pid, signal.SIGSTOP)
        self.tell(f"{hop} (a's next hop towards c) stopped (SIGSTOP)")
        self.start_publishing()
        await self.until("c", lambda s: s["sub"]["count"] >= 500, "the stream to go around")
        os.kill(self.procs[hop].transport.pid, signal.SIGCONT)
        self.tell(f"{hop} continued (SIGCONT); path {'-'.join(await self.path('a', 'c'))}")
        await task.deferLater(reactor, 2.0, lambda: None)
        await self.finish("a", "c")
