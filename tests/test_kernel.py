"""Ring 3: a broker in the test process supervising a real kernel process; clients over TCP.

* execute: a value, an exception with its traceback, output tagged with the
  execution and its user, completion, inspection;
* input() goes to the user who ran the code, and only to them; a password is
  not echoed to the others;
* while input() waits, everyone's status (and console) says for whom;
* display() (and update_display, clear_output) of objects with _repr_*_ methods
  gives display records with their MIME bundle, in their place among the
  printed lines; a rich final value's result record carries its bundle;
* interrupt stops a running loop, and the kernel takes code again; the
  traceback of an interrupt or of input() shows the user's frames only, never
  the driver's own (write, on_sigint, ask);
* a kernel holding the GIL in C code shows very-busy, not dead, then idle;
* kill -9 of the kernel shows dead (signal 9), even while a process it started
  still holds its pipes, and restart brings idle with a fresh namespace; the
  execution that was running gets an error;
* the three signals: with the path to the broker cut, the client's link
  signal says down while the broker's last word (idle, alive) stays;
* a kernel that cannot start (no such interpreter) is dead, not hanging;
* roles: a viewer may watch but not execute; only the owner restarts; a user
  proven by the security layer replaces the one a client claims;
* presence: join, leave, and a client whose node vanishes is seen leaving;
* a slow client paces the kernel (the pipes stop being read) and still gets
  every line, in order;
* a client whose link breaks mid-stream and comes back misses nothing.
"""

from __future__ import annotations

import base64
import os
import signal

from certs_fixture import path
from kernel_support import FAST, attach, start_broker
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from waits import WAIT, bounded, sleep, until

from yotonnet import Context
from yotonnet.errors import RemoteError
from yotonnet.kernel import VIEWER, KernelBroker, KernelGone, table_roles
from yotonnet.kernel import protocol as p
from yotonnet.security.settings import Security


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class KernelTests(TestCase):
    timeout = 120

    async def test_execute_result_error_and_complete(self) -> None:
        _, broker, ep = await start_broker(self, "k")
        _, alice, rec = await attach(self, ep, "k", "alice")
        r = await bounded(alice.execute("x = 21\nprint('half', x)"), "execute")
        self.assertTrue(r.ok)
        self.assertIsNone(r.value)
        r = await bounded(alice.execute("x * 2"), "execute")
        self.assertEqual(r.value, "42")
        r = await bounded(alice.execute("def f():\n    return 1 / 0\nf()"), "execute")
        self.assertFalse(r.ok)
        self.assertEqual(r.error_type, "ZeroDivisionError")
        self.assertIn("return 1 / 0", r.traceback)  # the source line of the kernel's code
        self.assertIn("line 2, in f", r.traceback)
        self.assertNotIn("driver.py", r.traceback)
        # The output stream: who ran what, and each byte tagged with its execution.
        execs = rec.kinds(p.EXECUTE)
        self.assertEqual([m["user"] for m in execs], ["alice"] * 3)
        out = rec.kinds(p.STDOUT)
        self.assertEqual(out[0]["text"], "half 21\n")
        self.assertEqual(out[0]["exec"], execs[0]["exec"])
        self.assertEqual(rec.kinds(p.RESULT)[0]["text"], "42\n")
        self.assertIn("ZeroDivisionError", rec.kinds(p.ERROR)[0]["text"])
        self.assertEqual(rec.seqs(), list(range(rec.seqs()[0], rec.seqs()[-1] + 1)))
        matches = await bounded(alice.complete("x"), "complete")
        self.assertIn("x", matches)
        self.assertIn("os.path", await bounded(
            alice.execute("import os").addCallback(lambda _: alice.complete("os.pa")),
            "complete"))
        found = await bounded(alice.inspect("print(os.path.join", 8), "inspect")
        self.assertTrue(found["found"])
        self.assertIn("signature: os.path.join(a, *p)", found["text"])
        found = await bounded(alice.inspect("x"), "inspect a value")
        self.assertIn("value: 21", found["text"])
        self.assertFalse((await bounded(alice.inspect("nothing_here"), "inspect"))["found"])
        self.assertEqual(broker.state, p.IDLE)
        self.assertEqual(alice.status()["link"], "up")

    async def test_input_goes_to_the_runner_only(self) -> None:
        _, _, ep = await start_broker(self, "k")
        asked: dict[str, list] = {"alice": [], "bob": []}

        def answer(user: str):
            def on_input(prompt: str, password: bool) -> defer.Deferred:
                asked[user].append((prompt, password))
                return task.deferLater(reactor, 0.01, lambda: f"{user}-says")
            return on_input

        _, alice, rec_a = await attach(self, ep, "k", "alice", on_input=answer("alice"))
        _, bob, rec_b = await attach(self, ep, "k", "bob", on_input=answer("bob"))
        r = await bounded(alice.execute("a = input('name? ')\na"), "alice's input")
        self.assertEqual(r.value, "'alice-says'")
        self.assertEqual(asked, {"alice": [("name? ", False)], "bob": []})
        r = await bounded(bob.execute("import getpass\ngetpass.getpass('pw: ')"), "bob's input")
        self.assertEqual(r.value, "'bob-says'")
        self.assertEqual(asked["bob"], [("pw: ", True)])
        await bounded(alice.wait_for_seq(r.last_seq), "alice's copy")
        # Everyone sees the question and answer, but never a password.
        echoes = [m["text"] for m in rec_a.kinds(p.STDIN)]
        self.assertEqual(echoes, ["name? alice-says\n", "pw: \n"])
        self.assertEqual([m["text"] for m in rec_b.kinds(p.STDIN)], echoes)
        # A client without an input handler: the kernel's input() raises EOFError.
        _, carol, _ = await attach(self, ep, "k", "carol")
        r = await bounded(carol.execute("input()"), "carol's input")
        self.assertEqual(r.error_type, "EOFError")

    async def test_display_and_rich_results(self) -> None:
        _, _, ep = await start_broker(self, "k")
        _, alice, rec = await attach(self, ep, "k", "alice")
        png = b"\x89PNG\r\n\x1a\n-not-really-a-png\x00\xff"
        await bounded(alice.execute(
            "class Shape:\n"
            "    def _repr_html_(self):\n        return '<b>shape</b>'\n"
            f"    def _repr_png_(self):\n        return {png!r}\n"
            "    def __repr__(self):\n        return 'Shape()'\n"), "a class")
        r = await bounded(alice.execute(
            "print('before')\ndisplay(Shape(), 'plain')\nprint('after')\nShape()"),
            "display")
        self.assertEqual(r.value, "Shape()")
        mine = [m for m in rec.messages if m["exec"] == r.id and m["kind"] != p.END]
        self.assertEqual([(m["kind"], m["text"]) for m in mine[1:]], [
            (p.STDOUT, "before\n"), (p.DISPLAY, "Shape()\n"), (p.DISPLAY, "'plain'\n"),
            (p.STDOUT, "after\n"), (p.RESULT, "Shape()\n")])
        shape = mine[2]["data"]
        self.assertEqual(shape["text/html"], "<b>shape</b>")
        self.assertEqual(base64.b64decode(shape["image/png"]), png)
        self.assertEqual(mine[3]["data"], {"text/plain": "'plain'"})
        self.assertEqual(mine[5]["data"]["text/html"], "<b>shape</b>")  # the result's bundle
        r = await bounded(alice.execute(
            "display('one', display_id='d')\nupdate_display('two', display_id='d')\n"
            "clear_output(wait=True)"), "display updates")
        mine = [m for m in rec.messages if m["exec"] == r.id]
        self.assertEqual([m["kind"] for m in mine], [p.EXECUTE, p.DISPLAY, p.UPDATE_DISPLAY,
                                                     p.CLEAR_OUTPUT, p.END])
        self.assertEqual(mine[1]["transient"], {"display_id": "d"})
        self.assertEqual((mine[2]["data"]["text/plain"], mine[2]["transient"]),
                         ("'two'", {"display_id": "d"}))
        self.assertTrue(mine[3]["wait"])

    async def test_everyone_sees_whose_input_the_kernel_waits_for(self) -> None:
        import argparse
        import io

        from yotonnet.kernel.cli import Console

        _, _, ep = await start_broker(self, "k")
        gate: defer.Deferred[str] = defer.Deferred()
        _, eve, _ = await attach(self, ep, "k", "eve", on_input=lambda prompt, pw: gate)
        _, bob, _ = await attach(self, ep, "k", "bob")
        seen: list[dict] = []
        bob.watch_status(seen.append)
        running = eve.execute("input('your name? ')")
        await until(lambda: (bob.status().get("input") or {}).get("user") == "eve",
                    "bob to see the kernel wait for eve")
        waiting = bob.status()["input"]
        self.assertEqual((waiting["prompt"], waiting["client"]), ("your name? ", eve.public_id))
        # A console shows it once (but not the console asked: it shows the prompt).
        out = io.StringIO()
        console = Console(argparse.Namespace(code=None, user="bob"), None, out=out)
        for status in (bob.status(), bob.status()):
            console.on_status(status)
        self.assertEqual(out.getvalue(), "* waiting for input from eve (your name?)\n")
        gate.callback("Eve")
        r = await bounded(running, "eve's answer")
        self.assertEqual(r.value, "'Eve'")
        await until(lambda: bob.status().get("input") is None, "the wait to end")
        self.assertTrue(any(s.get("input") for s in seen))

    async def test_interrupt_stops_a_loop(self) -> None:
        _, broker, ep = await start_broker(self, "k")
        _, alice, rec = await attach(self, ep, "k", "alice")
        running = alice.execute("n = 0\nwhile True:\n    n += 1")
        await until(lambda: broker.state == p.BUSY and alice.status()["state"] == p.BUSY,
                    "the kernel to be busy")
        self.assertTrue(await bounded(alice.interrupt(), "interrupt"))
        r = await bounded(running, "the interrupted execution")
        self.assertEqual(r.error_type, "KeyboardInterrupt")
        r = await bounded(alice.execute("n > 0"), "code after the interrupt")
        self.assertEqual(r.value, "True")
        self.assertFalse(await bounded(alice.interrupt(), "interrupt when idle"))
        await until(lambda: alice.status()["state"] == p.IDLE, "idle")

    async def test_an_interrupt_shows_the_users_frames_only(self) -> None:
        # A Ctrl-C while the code prints lands in the driver's write as often as in the
        # code: either way the traceback shows the user's lines, never the driver's.
        _, broker, ep = await start_broker(self, "k")
        _, alice, rec = await attach(self, ep, "k", "alice")
        for attempt in range(3):
            code = f"while True:\n    print('tick{attempt}', flush=True)"
            running = alice.execute(code)
            await until(lambda tick=f"tick{attempt}": tick in rec.stdout(), "the loop to print")
            self.assertTrue(await bounded(alice.interrupt(), "interrupt"))
            r = await bounded(running, "the interrupted execution")
            self.assertEqual(r.error_type, "KeyboardInterrupt")
            self.assertNotIn("driver.py", r.traceback)
            self.assertIn(f"print('tick{attempt}', flush=True)", r.traceback)
            self.assertTrue(r.traceback.startswith("Traceback (most recent call last):\n"))
        # Interrupted as soon as it is asked for: before the kernel even began the code.
        running = alice.execute("import time\ntime.sleep(60)")
        self.assertTrue(await bounded(alice.interrupt(), "an early interrupt"))
        r = await bounded(running, "the code interrupted early")
        self.assertEqual(r.error_type, "KeyboardInterrupt")
        r = await bounded(alice.execute("def f():\n    input()\nf()"), "input without handler")
        self.assertEqual(r.error_type, "EOFError")
        self.assertNotIn("driver.py", r.traceback)
        self.assertIn("line 2, in f", r.traceback)

    async def test_gil_held_in_c_is_very_busy_not_dead(self) -> None:
        _, broker, ep = await start_broker(self, "k")
        _, alice, _ = await attach(self, ep, "k", "alice")
        seen: list[dict] = []
        alice.watch_status(seen.append)
        # PyDLL calls keep the GIL: the kernel's heartbeat thread cannot run for 3 s.
        running = alice.execute("import ctypes\nctypes.PyDLL(None).sleep(3)")
        await until(lambda: alice.status()["state"] == p.VERY_BUSY, "very-busy")
        status = alice.status()
        self.assertEqual(status["interpreter"], "unresponsive")
        self.assertTrue(status["process"]["alive"])
        self.assertEqual(status["link"], "up")
        r = await bounded(running, "the C call to return")
        self.assertTrue(r.ok, r)
        await until(lambda: alice.status()["state"] == p.IDLE, "idle again")
        self.assertNotIn(p.DEAD, [s["state"] for s in seen])
        self.assertEqual(broker.generation, 1)

    async def test_kill_9_is_dead_and_restart_brings_idle(self) -> None:
        _, broker, ep = await start_broker(self, "k")
        _, alice, rec = await attach(self, ep, "k", "alice")
        await bounded(alice.execute("x = 1"), "execute")
        pid = alice.status()["process"]["pid"]
        # A process the kernel started holds its stdout/stderr pipes open after it dies:
        # death must not wait for those to close.
        r = await bounded(alice.execute(
            "import subprocess\nsubprocess.Popen(['sleep', '60']).pid"), "a child process")
        self.addCleanup(_kill_quietly, int(r.value))
        code = "import time\nwhile True: time.sleep(0.01)"
        running = alice.execute(code)
        await until(lambda: any(m["text"] == code for m in rec.kinds(p.EXECUTE)), "running")
        os.kill(pid, signal.SIGKILL)
        await until(lambda: alice.status()["state"] == p.DEAD, "dead", 10)
        status = alice.status()
        self.assertEqual(status["process"]["signal"], signal.SIGKILL)
        self.assertFalse(status["process"]["alive"])
        r = await bounded(running, "the execution the kill ended")
        self.assertEqual(r.error_type, "KernelGone")
        with self.assertRaises(RemoteError) as e:
            await alice.execute("1")
        self.assertIn("restart", str(e.exception))
        status = await bounded(alice.restart(), "restart")
        self.assertEqual(status["state"], p.IDLE)
        await until(lambda: alice.status()["state"] == p.IDLE, "idle")
        self.assertNotEqual(alice.status()["process"]["pid"], pid)
        r = await bounded(alice.execute("x"), "execute after restart")
        self.assertEqual(r.error_type, "NameError")  # a fresh namespace
        # Restarting a live kernel works too (SIGTERM, then a new process).
        await bounded(alice.restart(), "restart of a live kernel")
        self.assertEqual(broker.generation, 3)
        self.assertTrue(any("kernel died (signal 9)" in m["text"] for m in rec.kinds(p.SYSTEM)))

    async def test_roles(self) -> None:
        _, _, ep = await start_broker(
            self, "k", owner="alice", role_of=table_roles("alice", {"bob": "collaborator"}))
        _, alice, _ = await attach(self, ep, "k", "alice")
        _, bob, _ = await attach(self, ep, "k", "bob")
        _, eve, rec_e = await attach(self, ep, "k", "eve")
        self.assertEqual((alice.role, bob.role, eve.role), ("owner", "collaborator", VIEWER))
        with self.assertRaises(RemoteError) as e:
            await eve.execute("print('no')")
        self.assertEqual(e.exception.remote_type, "PermissionDenied")
        self.assertIn("viewer", str(e.exception))
        with self.assertRaises(RemoteError) as e:
            await bob.restart()
        self.assertEqual(e.exception.remote_type, "PermissionDenied")
        r = await bounded(bob.execute("print('bob was here')"), "bob's execute")
        await bounded(eve.wait_for_seq(r.last_seq), "eve's copy")
        self.assertIn("bob was here", rec_e.stdout())  # a viewer sees everything
        # the status message follows the reply; it may still be on its way
        await until(lambda: alice.status()["state"] == p.IDLE, "the kernel idle again")

    async def test_a_proven_identity_beats_the_claimed_one(self) -> None:
        # The seam for the security work: when the mesh authenticated the calling node,
        # the broker uses that user, whatever the client claims.
        _, broker, ep = await start_broker(
            self, "k", owner="alice", role_of=table_roles("alice", {}, VIEWER))
        broker._authenticated_user = lambda: "eve"
        _, fake_alice, _ = await attach(self, ep, "k", "alice")
        self.assertEqual(fake_alice.role, VIEWER)
        await until(lambda: [w["user"] for w in fake_alice.presence] == ["eve"], "eve")
        with self.assertRaises(RemoteError) as e:
            await fake_alice.execute("1")
        self.assertIn("'eve' is a viewer", str(e.exception))

    async def test_presence_join_leave_and_vanish(self) -> None:
        # Bob vanishes a few ms after attaching, before the broker's first presence check.
        # His input channel, opened before he attached, was seen at the attach: he is
        # dropped at the next check (each second), as "vanished (it no longer answers)",
        # not once presence_grace passes (longer here than any wait of the test).
        _, broker, ep = await start_broker(self, "k", presence_grace=600.0)
        _, alice, rec = await attach(self, ep, "k", "alice")
        bob_ctx, bob, _ = await attach(self, ep, "k", "bob")
        _, carol, _ = await attach(self, ep, "k", "carol")
        await until(lambda: [w["user"] for w in alice.presence] == ["alice", "bob", "carol"],
                    "presence of three")
        await bounded(carol.detach(), "carol leaves")
        await bob_ctx.close()  # bob's node vanishes without a word
        await until(lambda: [w["user"] for w in alice.presence] == ["alice"], "bob gone")
        await until(lambda: len(rec.kinds(p.LEAVE)) == 2, "two leave events")
        texts = [m["text"] for m in rec.kinds(p.JOIN) + rec.kinds(p.LEAVE)]
        self.assertIn("bob joined as collaborator\n", texts)
        self.assertIn("carol left\n", texts)
        self.assertTrue(any(t.startswith("bob vanished") for t in texts), texts)

    async def test_slow_client_paces_the_kernel(self) -> None:
        lines = 20_000
        ctx, broker, ep = await start_broker(self, "k")
        count = [0]

        def slow(message: dict) -> defer.Deferred | None:
            rec.append(message)
            count[0] += 1
            if message["kind"] == p.STDOUT:
                return task.deferLater(reactor, 0.002, lambda: None)
            return None

        rec: list[dict] = []
        _, alice, _ = await attach(self, ep, "k", "alice", on_output=slow)
        # Big lines, so the output far exceeds the flow-control window.
        code = f"for i in range({lines}): print(i, 'x' * 200)"
        running = alice.execute(code)
        peak = [0]

        def sample() -> None:
            peak[0] = max(peak[0], ctx.queued())

        sampler = task.LoopingCall(sample)
        sampler.start(0.01)
        try:
            r = await bounded(running, "the paced loop", 90)
        finally:
            sampler.stop()
        self.assertTrue(r.ok, r)
        text = "".join(m["text"] for m in rec if m["kind"] == p.STDOUT)
        self.assertEqual(text, "".join(f"{i} {'x' * 200}\n" for i in range(lines)))
        self.assertGreater(ctx.counters["producer_pauses"], 0)
        # What waits in the broker stays within a few windows, whatever the kernel prints.
        self.assertLess(peak[0], 4 * ctx.config.flow_window)

    async def test_a_stalled_lossy_viewer_neither_stops_the_kernel_nor_misses_output(
        self,
    ) -> None:
        lines = 5_000
        ctx, broker, ep = await start_broker(self, "k")
        _, alice, rec_a = await attach(self, ep, "k", "alice")
        stalled: defer.Deferred[None] = defer.Deferred()
        seen: list[dict] = []

        def stuck(message: dict) -> defer.Deferred[None] | None:
            seen.append(message)
            # The viewer's program stops reading after its first output message.
            return stalled if len(seen) == 1 else None

        _, bob, _ = await attach(self, ep, "k", "bob", on_output=stuck, lossless=False,
                                 keep=10)
        code = f"for i in range({lines}): print(i, 'x' * 200)"
        # Over a megabyte, well past the window: a lossless bob would pause the kernel here.
        r = await bounded(alice.execute(code), "alice's loop while bob is stalled", 60)
        self.assertTrue(r.ok, r)
        expected = "".join(f"{i} {'x' * 200}\n" for i in range(lines))
        self.assertEqual(rec_a.stdout(), expected)
        self.assertEqual(ctx.counters["producer_pauses"], 0)
        self.assertEqual(len(seen), 1)
        stalled.callback(None)  # bob reads again: the gap comes from the history
        await bounded(bob.wait_for_seq(r.last_seq), "bob to catch up", 60)
        text = "".join(m["text"] for m in seen if m["kind"] == p.STDOUT)
        self.assertEqual(text, expected)
        seqs = [m["seq"] for m in seen if m["seq"] is not None]
        self.assertEqual(seqs, list(range(seqs[0], seqs[-1] + 1)))
        self.assertGreater(bob.output.dropped, 0)  # it did fall behind live

    async def test_reconnect_mid_stream_misses_nothing(self) -> None:
        lines = 100_000
        _, broker, ep = await start_broker(self, "k")
        _, alice, rec_a = await attach(self, ep, "k", "alice")
        bob_ctx, bob, rec_b = await attach(self, ep, "k", "bob")
        running = alice.execute(f"for i in range({lines}): print(i)")
        await until(lambda: rec_b.stdout().count("\n") > 1000, "bob's first lines")
        links = list(bob_ctx.links.values())
        self.assertEqual(len(links), 1)
        links[0].transport.abortConnection()  # the dialer brings it back by itself
        await until(lambda: bob.link == "down" or bob_ctx.links.get(links[0].peer_id)
                    is not links[0], "bob's link to drop")
        r = await bounded(running, "alice's loop", WAIT * 2)
        self.assertTrue(r.ok, r)
        await bounded(bob.wait_for_seq(r.last_seq), "bob to catch up", WAIT * 2)
        expected = "".join(f"{i}\n" for i in range(lines))
        self.assertEqual(rec_a.stdout(), expected)
        self.assertEqual(rec_b.stdout(), expected)
        self.assertEqual(rec_b.seqs(), list(range(rec_b.seqs()[0], rec_b.seqs()[-1] + 1)))
        await sleep(0)

    async def test_three_signals_link_is_the_clients_own(self) -> None:
        _, broker, ep = await start_broker(self, "k")
        relay = Context("relay", reactor, config=FAST, security=Security(tokens=path("tokens.txt")))
        self.addCleanup(relay.close)
        port = await relay.listen("tcp:0:interface=127.0.0.1")
        await bounded(relay.connect(ep), "the relay to link")
        _, alice, _ = await attach(self, f"tcp:127.0.0.1:{port.getHost().port}", "k", "alice")
        seen: list[dict] = []
        alice.watch_status(seen.append)
        await relay.close()  # the path to the broker is gone; the kernel is fine
        await until(lambda: alice.status()["link"] == "down", "the link signal")
        status = alice.status()
        # The last word of the broker stays, marked as not current by the link signal.
        self.assertEqual((status["state"], status["process"]["alive"], status["interpreter"]),
                         (p.IDLE, True, "responsive"))
        self.assertEqual(seen[-1]["link"], "down")
        self.assertEqual(broker.state, p.IDLE)

    async def test_a_kernel_that_cannot_start_is_dead(self) -> None:
        ctx = Context("broker", reactor, config=FAST)
        self.addCleanup(ctx.close)
        broker = KernelBroker(ctx, "k", python="/nonexistent/python")
        self.addCleanup(broker.close)
        with self.assertRaises(KernelGone):
            await bounded(broker.start(), "the failed start")
        self.assertEqual(broker.state, p.DEAD)
        self.assertFalse(broker.status()["process"]["alive"])
