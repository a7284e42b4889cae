"""Ring 3: flow control end to end across real OS processes on loopback TCP.

The scenario of ``benchmarks/bench_flow.py``, run for the issue's 30 s of flood,
with the child nodes of ``benchmarks/flow_peers.py`` (one implementation of
the scenario for both)::

    P (pub) --> F (fwd) --> S (lossless at 1,000 msg/s, latest keep=1, echo replier)
                  |
                  +-------> L (latest keep=1)

P publishes ``[seq, time.time()]`` from a streaming producer registered on
its ``PubChannel``, as fast as flow control lets it (no sleep), while calling
``echo`` on S every 20 ms. Every node announces a 64 KiB window
(``ContextConfig.flow_window``) so the windows fill within the first second
and the in-flight bound is small. Checked:

* lossless: after the flood S stops pacing and drains; it then has every
  message P sent, from 1 to P's last, with no gap, no duplicate, nothing
  counted as missed or discarded by the ``SubChannel``;
* pacing: P sent more than the windows on its path can hold (so credit came
  back over both hops while it ran: it was paused and resumed), and at the
  end of the flood no more than S had taken plus what the windows allow
  (two links x (window + one read forwarded as a block) / frame size, plus a
  producer batch and one STAT interval of S's pace), against the hundreds of
  thousands an unpaced loop would have sent;
* memory: VmRSS of P and F grows by less than 50 MB over the flood;
* latest subscribers are not held back by the lossless one: on S, the latest
  subscriber's newest message is ahead of what the lossless one has taken;
  L gets P's last message while S's lossless subscriber is still behind it;
* the unrelated req/rep channel: every echo call during the flood succeeds.

No latency is asserted (the benchmark prints those). Every wait is bounded so
that a stall fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import procs
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from yotonnet import OBJECT
from yotonnet.core.wire import HEADER_SIZE

FLOW_PEERS = os.path.join(procs.REPO_ROOT, "benchmarks", "flow_peers.py")
WINDOW = 64 * 1024
#: what a sender may overdraw its credit by: one read forwarded as one block
READ_SIZE = 65536
LINKS = 2  # P -> F -> S
FLOOD = 30.0  # the figure: 30 s of flood
RATE = 1000.0
BATCH = 100
STAT = 0.25
MB = 1024  # VmRSS is in kB
#: bound on each wait for a child; only a stall should come near it
WAIT = 30.0


def stats(child: procs.PeerProcess) -> list[dict]:
    return [json.loads(line[5:]) for line in child.lines if line.startswith("STAT ")]


def body(line: str) -> Any:
    return json.loads(line.split(" ", 1)[1])


class FlowAcrossProcessesTests(TestCase):
    timeout = 150  # trial's bound on the whole test, above every WAIT

    def spawn(self, role: str, **opts: Any) -> procs.PeerProcess:
        opts = {"window": WINDOW, "stat": STAT, "sample": 0.02, **opts}
        return procs.spawn_peer(self, role, json.dumps(opts), label=f"flow {role}",
                                script=FLOW_PEERS)

    async def until_stat(self, child: procs.PeerProcess, predicate: Any, what: str) -> dict:
        for _ in range(int(WAIT / 0.05)):
            rows = stats(child)
            if rows and predicate(rows[-1]):
                return rows[-1]
            if not child.running:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"gave up waiting for {what}\n{child.describe_output()}")

    def test_slow_lossless_subscriber_paces_publisher_through_two_hops(self) -> defer.Deferred:
        return defer.ensureDeferred(self._scenario())

    async def _scenario(self) -> None:
        sub = self.spawn("sub", rate=RATE)
        port = body(await sub.wait_for("PORT", WAIT))
        fwd = self.spawn("fwd", down=port)
        port = body(await fwd.wait_for("PORT", WAIT))
        lat = self.spawn("lat", up=port)
        await lat.wait_for("READY", WAIT)
        pub = self.spawn("pub", up=port, subs=3, idle=0.5, seconds=FLOOD, batch=BATCH,
                         probe=0.02, call_timeout=10.0)
        flood = body(await pub.wait_for("FLOOD", WAIT))
        end = body(await pub.wait_for("END", FLOOD + WAIT))
        self.assertIsNone(end["error"], "the publisher's producer failed")
        sent = end["sent"]

        # L gets P's last message while S's lossless subscriber, at its slow pace,
        # is still behind it (S is told to drain only afterwards).
        seen = await self.until_stat(lat, lambda s: s["latest_seq"] >= sent,
                                     f"L's latest subscriber to see message {sent}")
        self.assertEqual(seen["latest_seq"], sent)
        after = [s for s in stats(sub) if s["t"] >= seen["t"]]
        if after:  # (S's first STAT from then on: it can only have progressed since)
            self.assertLess(after[0]["received"], sent,
                            "S's lossless subscriber was not behind L's latest one")

        sub.transport.write(f"drain {sent}\n".encode())
        drained = body(await sub.wait_for("DRAINED", WAIT))

        # Lossless: everything, once, in order.
        self.assertEqual(
            (drained["first"], drained["last"], drained["received"]), (1, sent, sent),
        )
        self.assertEqual((drained["gaps"], drained["dups"]), (0, 0))
        self.assertEqual((drained["missed"], drained["discarded"]), (0, 0))

        # Pacing: credit flowed back over both hops, and no more was sent than the
        # windows allow beyond what S had taken.
        frame = HEADER_SIZE + len(OBJECT.encode([sent, flood["t"]]))
        self.assertGreater(sent, LINKS * WINDOW // frame,
                           "the publisher never got past its first windows")
        self.assertGreaterEqual(end["counters"]["producer_pauses"], 1)
        self.assertGreaterEqual(end["resumes"], 1)
        taken = [s for s in stats(sub) if s["t"] <= end["t"]][-1]["received"]
        bound = LINKS * (WINDOW + READ_SIZE) // frame + BATCH + int(RATE * STAT)
        self.assertLessEqual(sent - taken, bound,
                             f"P sent {sent:,} while S had taken {taken:,}")

        # Memory: bounded on the publisher and the forwarder.
        for name, child, start in (("P", pub, flood["rss"]),
                                   ("F", fwd, self.rss_before(fwd, flood["t"]))):
            peak = max([s["rss"] for s in stats(child) if s["t"] >= flood["t"]]
                       + ([end["rss"]] if child is pub else []))
            self.assertLess(peak - start, 50 * MB, f"{name}'s RSS grew by {peak - start} kB")

        # The latest subscriber beside the lossless one on S runs ahead of it.
        during = [s for s in stats(sub) if flood["t"] + 1 <= s["t"] <= end["t"]]
        self.assertTrue(during)
        ahead = max(s["latest_seq"] - s["received"] for s in during)
        self.assertGreater(ahead, 0, "S's latest subscriber never got ahead of the lossless one")
        self.assertGreater(during[-1]["latest_dropped"], 0)

        # The unrelated channel kept working during the flood.
        self.assertEqual(end["failed"], 0, end["failures"])
        self.assertGreaterEqual(end["flood_rtt"]["n"], 10)

    @staticmethod
    def rss_before(child: procs.PeerProcess, t: float) -> int:
        rows = [s for s in stats(child) if s["t"] <= t] or stats(child)[:1]
        return rows[-1]["rss"]
