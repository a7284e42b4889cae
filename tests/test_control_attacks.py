"""Control-traffic attacks against a LIVE node process, from an attacker process.

A ``yotonnet node`` runs with token authentication; user ``b`` is listed in
``[security] nodes``, so it may announce other nodes' records. A legitimate
client (``alice``) has it hold a state value first: with a state value held,
every routing record used to cost the node a look at the whole table. The
attacker is tests/attacks/control_flood.py, in its own process, writing frames
by hand with tests/rawwire.py:

* a logged-in client sends CONTROL frames of 2 MiB and 16 MiB made of empty
  lists (decoding one such 16 MiB frame cost 2.2 s of CPU and 230 MiB): its
  link must be closed with an ERROR naming the size and ``max_control_frame``,
  before the frame is decoded;
* the trusted node user announces 4,000 fake nodes in one go: the node
  acts on them in a bounded number of routing changes (it was one per record,
  each a look at the whole table: 15.8 s of CPU for 4,000); with
  ``max_nodes_per_peer`` set in the node's ``[context]``, records past it are
  refused, counted and logged once.

Meanwhile a legitimate client's request/reply through the node (``yotonnet
bench``) must succeed. The CPU time the node process used for each attack is
read from /proc/PID/stat and printed, never asserted.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from certs_fixture import TOKENS, path
from nodeproc import LoggedNode
from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKER = os.path.join(REPO_ROOT, "tests", "attacks", "control_flood.py")
MiB = 1024 * 1024
ENV = dict(os.environ, PYTHONPATH=REPO_ROOT)


class LiveNode(LoggedNode):
    """``yotonnet node`` on a loopback port with token logins; user b is a mesh node."""

    def __init__(self, context: str = "") -> None:
        """``context``: lines of the config file's [context] table."""
        super().__init__(f'[context]\n{context}\n[security]\nnodes = ["b"]\n')

    def idle_cpu(self, timeout: float = 60.0) -> float:
        """The CPU figure once the node has stopped working (two quiet samples)."""
        deadline = time.monotonic() + timeout
        last, quiet = self.cpu(), 0
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.cpu()
            quiet = quiet + 1 if now - last <= 0.02 else 0
            last = now
        return last

    def cli(self, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from yotonnet.cli import main; main()", *args,
             "--connect", f"tcp:{self.address}", "--token-file", path(f"{user}.token"),
             "--timeout", "30"],
            capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO_ROOT,
        )

    def counters(self) -> dict:
        result = self.cli("status", "--json")
        if result.returncode != 0:
            raise AssertionError(f"status failed: {result.stderr}")
        return json.loads(result.stdout)["node"]["counters"]


def read_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The attacker's next output line (fails rather than hang)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"the attacker printed nothing in {timeout} s")
    return proc.stdout.readline().strip()


class ControlAttackTests(SynchronousTestCase):
    def start(self, context: str = "") -> None:
        self.node = LiveNode(context)
        self.addCleanup(self.node.stop)
        held = self.node.cli("state", "set", "settings", '{"volume": 3}')
        self.assertEqual(held.returncode, 0, held.stderr)

    def check_legit_client(self) -> None:
        """Request/reply (and pub/sub) through the node, as a logged-in client."""
        result = self.node.cli("bench", "--messages", "200", "--calls", "50", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["reqrep"]["calls"], 50)

    def check_node_healthy(self) -> None:
        self.assertIsNone(self.node.proc.poll(), "the node process died")
        log = self.node.text()
        self.assertNotIn("Traceback", log, log[-4000:])
        self.assertNotIn("Unhandled", log, log[-4000:])

    def test_big_control_frames_from_a_client_close_only_its_link(self):
        self.start()
        rss, cpu = self.node.rss(), self.node.idle_cpu()
        sizes = [2 * MiB, 16 * MiB]
        attack = subprocess.run(
            [sys.executable, ATTACKER, "big", self.node.address, TOKENS["alice"],
             *map(str, sizes)],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )
        used = self.node.idle_cpu() - cpu
        lines = attack.stdout.splitlines()
        self.assertEqual(len(lines), 2, attack.stdout + attack.stderr)
        for line, size in zip(lines, sizes, strict=True):
            word, sent, _ = line.split(" ", 2)
            self.assertEqual(word, "closed", line)
            self.assertLess(size - int(sent), 5)  # a whole number of empty lists
            self.assertIn(f"CONTROL frame of {sent} bytes exceeds the control frame limit of "
                          f"{MiB} bytes (max_control_frame)", line)
        self.assertEqual(len([li for li in self.node.text().splitlines()
                              if "closing link flooder@" in li and "max_control_frame" in li]),
                         2)
        self.check_legit_client()
        self.check_node_healthy()
        growth = self.node.rss() - rss
        print(f"\nCONTROL frames of 2 MiB and 16 MiB of empty lists from a client: node CPU "
              f"{used:.2f} s, RSS growth {growth / 1e6:.1f} MB (decoding one such 16 MiB "
              f"frame costs about 2.2 s and 230 MB)")

    def announce(self, count: int) -> tuple[subprocess.Popen, dict, dict, float]:
        """The trusted node user announces ``count`` fake nodes while a legitimate client
        calls through the node; returns the attacker (its link still up), the node's
        counters before and after, and the CPU seconds the node used meanwhile."""
        before = self.node.counters()
        cpu = self.node.idle_cpu()
        attacker = subprocess.Popen(
            [sys.executable, ATTACKER, "announce", self.node.address, TOKENS["b"], str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO_ROOT,
        )
        self.addCleanup(attacker.wait, 30)
        self.addCleanup(attacker.stdin.close)
        self.assertTrue(read_line(attacker).startswith(f"sent {count} "))
        self.check_legit_client()  # while the node works through the records
        used = self.node.idle_cpu() - cpu
        after = self.node.counters()
        self.check_legit_client()  # and with them held
        self.check_node_healthy()
        self.assertIsNone(attacker.poll(), "the node closed the announcer's link")
        return attacker, before, after, used

    def test_trusted_node_announcing_four_thousand_nodes(self):
        self.start()
        _, before, after, used = self.announce(4000)
        self.assertEqual(after["records_refused"], before["records_refused"])
        # Unbatched, each of the 4,000 records was one routing change; batched, there is
        # one per read of the flood, plus a few for the clients' own links.
        changes = after["routing_changes"] - before["routing_changes"]
        self.assertLess(changes, 400)
        print(f"\n4,000 nodes announced by a trusted node: node CPU {used:.2f} s (a client's "
              f"bench and status included), routing changes {changes}")

    def test_records_past_a_configured_limit_are_refused(self):
        self.start("max_nodes_per_peer = 1000")
        _, before, after, used = self.announce(4000)
        # The announcer counts itself among the nodes it introduced.
        self.assertEqual(after["records_refused"] - before["records_refused"], 4001 - 1000)
        lines = [li for li in self.node.text().splitlines()
                 if "routing record from announcer@" in li]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("refused by limit max_nodes_per_peer", lines[0])
        self.assertIn("raise [context] max_nodes_per_peer", lines[0])
        print(f"\n4,000 nodes announced, 1,000 per neighbour allowed: node CPU {used:.2f} s, "
              f"records refused {after['records_refused'] - before['records_refused']}")
