"""Ring 3: ``make bench-peers``'s harness (``benchmarks/bench_versus.py``) still runs.

The side-by-side benchmark is not part of ``make test``, so a change to the
channels' API or to the bench scripts could break it unseen until someone
measures. Here it runs for real (``--quick``: one short round, separate
processes on loopback TCP) with the systems a fresh machine has without the
bench-only extras (yotonnet, with and without its reply poll, raw Twisted, the
eager-send baseline), and what it
reports is checked for shape and for loss, never for speed: every run
delivered all it was asked to, the ratios are those of its own figures, and
the goals against pyzmq say ``n/a`` rather than inventing a ratio when pyzmq
did not run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import procs
from twisted.internet import utils
from twisted.trial.unittest import TestCase
from waits import bounded

BENCH = os.path.join(procs.REPO_ROOT, "benchmarks", "bench_versus.py")
#: the whole quick run takes 15-25 s on the 2-core VM; only a hang comes near this
RUN_WAIT = 240.0


async def bench_versus(*args: str) -> tuple[str, str, int]:
    """``bench_versus.py ARGS`` run to its end: (stdout, stderr, exit status)."""
    out, err, code = await bounded(
        utils.getProcessOutputAndValue(sys.executable, [BENCH, *args], env=dict(os.environ),
                                       path=procs.REPO_ROOT),
        f"bench_versus.py {' '.join(args)}", RUN_WAIT)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code


class QuickRunTests(TestCase):
    timeout = RUN_WAIT + 30

    async def test_every_metric_runs_without_loss_and_reports_its_goals(self) -> None:
        out, err, code = await bench_versus(
            "--quick", "--json", "--no-instr", "--systems", "yotonnet,nopoll,raw,eager")
        self.assertEqual(code, 0, err[-3000:])
        report = json.loads(out)
        self.assertEqual(report["errors"], [])
        plan, runs = report["plan"], report["runs"]
        self.assertEqual(sorted(runs), ["chain", "fanout", "pubsub-100", "pubsub-64k",
                                        "reqrep"])
        # Lossless everywhere: each stream delivered every message to every subscriber.
        for metric, each, passes in (("pubsub-100", 1, 1), ("pubsub-64k", 1, 1),
                                     ("chain", 1, 2), ("fanout", 10, 1)):
            for system in ("yotonnet", "raw") if metric != "chain" else ("yotonnet",):
                self.assertEqual(len(runs[metric][system]), passes, (metric, system))
                count = plan["pubsub-100" if metric == "chain" else metric]
                for run in runs[metric][system]:
                    self.assertEqual(run["delivered"], count * each, (metric, system))
                    self.assertGreater(run["rate"], 0, (metric, system))
        self.assertEqual(runs["chain"]["raw"], [])  # (raw Twisted has no forwarding node)
        self.assertEqual(runs["pubsub-100"]["nopoll"], [])  # (a req/rep row)
        self.assertEqual(set(runs["chain"]["yotonnet"][0]["cpu"]),
                         {"publisher", "forwarder", "subscriber"})
        # Req/rep: three passes a round for each system, every one timed.
        for system in ("yotonnet", "nopoll", "raw", "eager"):
            passes = runs["reqrep"][system]
            self.assertEqual(len(passes), 3, system)
            for p in passes:
                self.assertGreater(p["median"], 0, system)
                self.assertGreaterEqual(p["p99"], p["median"], system)
        goals = report["goals"]
        # The chain's ratio: the median of its pairs', each to the direct run beside it.
        chain = goals["chain >= 0.9x yotonnet direct"]
        pairs = runs["chain"]["yotonnet"]
        self.assertEqual(len(pairs), 2)
        self.assertAlmostEqual(
            chain["ratio"], statistics.median(p["rate"] / p["direct_rate"] for p in pairs))
        self.assertEqual(chain["verdict"], "PASS" if chain["ratio"] >= 0.9 else "MISS")
        # pyzmq did not run: its ratios are not made up.
        against_pyzmq = [g for name, g in goals.items() if "pyzmq" in name]
        self.assertEqual(len(against_pyzmq), 5)
        for g in against_pyzmq:
            self.assertEqual((g["ratio"], g["verdict"]), (None, "n/a"))
        self.assertIn("issue 17 goals (yotonnet)", err)

    async def test_a_bad_flag_names_the_choices(self) -> None:
        _, err, code = await bench_versus("--systems", "yotonnet,zeromq")
        self.assertEqual(code, 2)
        self.assertIn("unknown system(s) ['zeromq']", err)
        self.assertIn("'pyzmq'", err)
        _, err, code = await bench_versus("--only", "latency")
        self.assertEqual(code, 2)
        self.assertIn("unknown metric(s) ['latency']", err)
