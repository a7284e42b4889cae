"""The blocking API (yotonnet.blocking), each scenario in a child process.

``yotonnet.blocking`` runs the global Twisted reactor in a background
thread. Doing that inside this pytest process would break trial, which runs
the same global reactor in the main thread for every other test case (a
reactor cannot run in two threads, nor run again once stopped). So every
test here starts ``tests/blocking_peer.py SCENARIO`` with ``subprocess.run``
(no reactor involved on this side), the child drives the blocking API like a
user's script and prints ``RESULT <json>``, and the test asserts on what it
observed. A child that hangs is killed after ``CHILD_TIMEOUT`` seconds and
the test fails with its output.

Covered: pub/sub across two blocking contexts over loopback TCP (TEXT and
OBJECT, recv and iteration); 4 threads x 10,000 messages on one context,
none lost, each thread's order kept; calls with results, RemoteError,
TimeoutError, NoResponders, serial and parallel workers, a handler using the
API itself; state for a late joiner and wait_for_change; recv timeouts;
close (sent messages still delivered, blocked receivers wake, later use
raises); calls from the reactor thread raise instead of deadlocking; the
program's own reactor (in a thread, in the main thread, already stopped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from procs import REPO_ROOT
from twisted.trial.unittest import SynchronousTestCase

SCRIPT = os.path.join(REPO_ROOT, "tests", "blocking_peer.py")
#: bound on one child; only a hang should come near it
CHILD_TIMEOUT = 60.0
#: scenario -> its RESULT, so tests that look at one run from different angles share it
_results: dict[str, dict] = {}


class BlockingScenarioMixin:
    def run_scenario(self, name: str) -> dict:
        if name not in _results:
            _results[name] = self._run_child(name)
        return _results[name]

    def _run_child(self, name: str) -> dict:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        try:
            proc = subprocess.run(
                [sys.executable, "-u", SCRIPT, name],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT,
            )
        except subprocess.TimeoutExpired as e:
            self.fail(
                f"scenario {name} hung for {CHILD_TIMEOUT:g} s\n"
                f"--- stdout ---\n{e.stdout}\n--- stderr ---\n{e.stderr}"
            )
        results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not results:
            self.fail(
                f"scenario {name} exited with {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
            )
        return json.loads(results[-1][len("RESULT ") :])

    def assertRaised(self, outcome: dict, error: str, *fragments: str) -> None:
        self.assertEqual(outcome.get("error"), error, outcome)
        for fragment in fragments:
            self.assertIn(fragment, outcome["message"])


class PubSubTests(BlockingScenarioMixin, SynchronousTestCase):
    def test_across_two_contexts_over_tcp(self) -> None:
        r = self.run_scenario("pubsub")
        self.assertEqual(r["received"], [100, 50])
        self.assertTrue(r["texts_ok"], "TEXT messages lost, altered or reordered")
        self.assertTrue(r["values_ok"], "OBJECT messages lost, altered or reordered")
        self.assertEqual(r["links_up"], ["up"])
        self.assertEqual(r["peer_names"], ["b"])
        self.assertEqual(r["subscribers"], 1)
        self.assertEqual(r["pending_after"], 0)
        # A bad value fails in the sending thread, with the channel type named.
        self.assertRaised(r["wrong_type"], "MessageTypeError", "TEXT", "int")

    def test_slow_receiver_blocks_the_sender_and_loses_nothing(self) -> None:
        r = self.run_scenario("paced")
        self.assertTrue(r["in_order"], "messages lost or reordered")
        self.assertTrue(r["sender_done"])
        self.assertTrue(r["still_stalled"], "the sender went on while nobody received")
        self.assertLessEqual(r["pending_while_stalled"], 100)
        # What the sender got rid of: the receiver's 100, a 16 KiB window of ~115-byte
        # frames (about 140) and the sender's own outbox of 10,000, not all 30,000.
        self.assertLess(r["sent_while_stalled"], 100 + 200 + 10_000 + 10)

    def test_four_threads_ten_thousand_each_none_lost(self) -> None:
        r = self.run_scenario("threads")
        self.assertEqual(r["send_errors"], [])
        self.assertIsNone(r["timed_out_after"], "the subscriber stopped receiving")
        self.assertEqual(r["per_thread"], [10_000] * 4)
        self.assertEqual(r["last_index"], [9_999] * 4)
        self.assertEqual(r["out_of_order"], 0)
        self.assertRaised(r["extra"], "TimeoutError")  # nothing duplicated either
        # The senders never touched the Twisted context: every publish ran in the reactor.
        self.assertTrue(r["published_in_reactor_thread_only"])

    def test_recv_timeout(self) -> None:
        r = self.run_scenario("recv_timeout")
        self.assertRaised(r["first"], "TimeoutError", "'quiet'", "0.3 s")
        self.assertTrue(r["first"]["is_yotonnet_error"])
        self.assertRaised(r["zero"], "TimeoutError")
        self.assertEqual(r["after"], {"value": "late"})


class ReqRepTests(BlockingScenarioMixin, SynchronousTestCase):
    def test_calls(self) -> None:
        r = self.run_scenario("reqrep")
        self.assertEqual(r["add"], {"value": 5})
        self.assertEqual(r["add_attr"], {"value": [1, 2]})
        self.assertEqual(r["add_kwargs"], {"value": "ab"})
        self.assertRaised(r["remote_error"], "RemoteError", "boom on purpose")
        self.assertEqual(r["remote_error"]["remote_type"], "ValueError")
        self.assertTrue(r["remote_error"]["has_traceback"])
        self.assertEqual(r["no_method"]["remote_type"], "AttributeError")
        self.assertRaised(r["timeout"], "TimeoutError", "'math'", "0.3 s")
        self.assertEqual(r["after_timeout"], {"value": 2})
        self.assertRaised(r["no_responders"], "NoResponders", "nobody.here")
        self.assertEqual(r["concurrent_ok"], True)
        self.assertRaised(r["after_close"], "ClosedError", "closed")

    def test_handlers_run_in_worker_threads(self) -> None:
        r = self.run_scenario("reqrep")
        # Default workers=1: never two at once, and never in the reactor thread.
        self.assertEqual(r["serial_max_active"], 1)
        self.assertTrue(r["handler_threads"])
        self.assertNotIn("yotonnet-reactor", r["handler_threads"])
        # workers=3: three handlers met at a barrier, so they ran at once.
        self.assertEqual(r["parallel"], [{"value": True}] * 3)
        # A handler may call another channel through the blocking API.
        self.assertEqual(r["nested"], {"value": 42})


class StateTests(BlockingScenarioMixin, SynchronousTestCase):
    def test_late_joiner_and_changes(self) -> None:
        r = self.run_scenario("state")
        self.assertIsNone(r["before"])
        self.assertEqual(r["own_value"], {"theme": "dark"})
        self.assertEqual(r["late_wait"], {"value": {"theme": "dark"}})
        self.assertEqual(r["late_recv"], {"theme": "dark"})
        self.assertRaised(r["late_no_change"], "TimeoutError", "'settings'")
        self.assertEqual(r["back"], {"value": {"theme": "light"}})
        self.assertTrue(r["versions_agree"])
        self.assertEqual(r["missed_nothing"], {"value": {"theme": "blue"}})


class CloseTests(BlockingScenarioMixin, SynchronousTestCase):
    def test_close(self) -> None:
        r = self.run_scenario("close")
        self.assertTrue(r["delivered_before_close"], "messages sent before close() were lost")
        self.assertRaised(r["send_after_close"], "ClosedError", "closed")
        self.assertRaised(r["connect_after_close"], "ClosedError", "connect()", "closed")
        self.assertRaised(r["channel_after_close"], "ClosedError", "closed")
        self.assertEqual(r["close_again"], {"value": None})
        self.assertEqual(len(r["blocked_recv"]), 1, "a blocked recv() did not wake")
        self.assertRaised(r["blocked_recv"][0], "ClosedError")
        self.assertEqual(r["iteration_ended"], [[]])
        self.assertRaised(r["recv_after_close"], "ClosedError")
        self.assertRaised(r["channel_closed"], "ClosedError", "'mine'")
        self.assertTrue(r["context_open"])
        self.assertTrue(r["with_closed"], "the with block did not close the context")
        self.assertRaised(r["with_after"], "ClosedError", "topology()")
        self.assertRaised(r["connect_timeout"], "TimeoutError", "tcp:127.0.0.1:1", "0.5 s")
        self.assertEqual(r["dialers_after"], [True], "dialling went on after the timeout")
        self.assertRaised(r["bad_endpoint"], "ValueError", "nonsense")


class ReactorThreadTests(BlockingScenarioMixin, SynchronousTestCase):
    def test_calls_from_the_reactor_thread_raise(self) -> None:
        r = self.run_scenario("reactor_thread")
        for key in ("topology", "send", "recv", "new_context", "close"):
            self.assertRaised(r[key], "ReactorThreadError", "reactor thread", "deadlock")
        self.assertTrue(r["still_open"])
        self.assertEqual(r["handler"]["remote_type"], "ReactorThreadError")
        self.assertEqual(r["fast_handler"], {"value": "pong"})
        # Three contexts share one daemon reactor thread.
        self.assertEqual(r["reactor_threads"], [{"name": "yotonnet-reactor", "daemon": True}])
        self.assertTrue(r["same_thread"])

    def test_program_runs_the_reactor_in_its_own_thread(self) -> None:
        r = self.run_scenario("own_reactor_thread")
        self.assertEqual(r["message"], "through your reactor")
        self.assertTrue(r["runs_in_program_thread"])
        self.assertEqual(r["reactor_threads"], [], "a second reactor thread was started")
        self.assertRaised(r["from_program_thread"], "ReactorThreadError", "deadlock")

    def test_program_runs_the_reactor_in_the_main_thread(self) -> None:
        r = self.run_scenario("main_reactor")
        self.assertNotIn("worker_error", r)
        self.assertRaised(r["in_reactor"], "ReactorThreadError", "Context()", "deadlock")
        self.assertEqual(r["message"], "from a worker")
        self.assertEqual(r["call"], 42)
        self.assertEqual(r["reactor_threads"], [])
        self.assertRaised(r["after_stop"], "ReactorUnavailable", "stopped")

    def test_stopped_reactor(self) -> None:
        r = self.run_scenario("stopped_reactor")
        self.assertRaised(r["context"], "ReactorUnavailable", "cannot be restarted")
