"""Ring 3: ``yotonnet kernel`` and ``yotonnet console`` as users run them, real processes.

* the broker runs as ``python -m yotonnet.cli kernel K --listen tcp:0``; two
  clients attach through a relay node (two hops), one runs a loop printing
  100,000 lines, and both get every line, in order, tagged with who ran it,
  and see each other in the presence list;
* ``console -c``: output on stdout, exit 0; an exception: traceback, exit 1;
  no kernel of that name: exit 1 with a message;
* the blocking client in a script of its own (``tests/kernel_blocking_peer.py``);
* a kernel whose broker is killed (SIGKILL) exits by itself: no orphans;
* the interactive console in tmux (send-keys, capture-pane): a statement, a
  multi-line block, input(), Ctrl-C interrupting a loop, ``%who``, an in-test
  client seeing the console user's code tagged with their name (and the
  console seeing theirs), kill -9 and the owner's restart shown as they happen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import procs
from certs_fixture import path
from kernel_support import attach, relay_to
from twisted.internet import utils
from twisted.trial.unittest import SkipTest, TestCase
from waits import WAIT, bounded, until

from yotonnet.kernel import protocol as p

LINES = 100_000
#: the broker's node checks tokens, so each console is the user it logs in as; alice
#: owns the kernel and every other logged-in user may run code
LOGINS = ("--owner", "alice", "--tokens", path("tokens.txt"), "--default-role", "collaborator")


class KernelCommandTests(TestCase):
    timeout = 180

    async def start_kernel(self, name: str = "shared") -> str:
        proc = procs.spawn_peer(self, "yotonnet.cli", "kernel", name, "--listen",
                                "tcp:0:interface=127.0.0.1", *LOGINS,
                                label="yotonnet kernel", script="-m")
        line = await proc.wait_for(f"yotonnet kernel {name}: listening on ")
        await proc.wait_for(f"yotonnet kernel {name}: ready")
        self.kernel_proc = proc
        return "tcp:" + line.rsplit(" ", 1)[1]

    async def cli(self, *args: str) -> tuple[str, str, int]:
        return await procs.yotonnet_command(*args, module="yotonnet.cli")

    async def test_two_consoles_through_two_hops(self) -> None:
        ep = await self.start_kernel()
        relay_ep = await relay_to(self, ep)
        _, alice, rec_a = await attach(self, relay_ep, "shared", "alice")
        _, bob, rec_b = await attach(self, relay_ep, "shared", "bob")
        self.assertEqual((alice.role, bob.role), ("owner", "collaborator"))
        await until(lambda: {w["user"] for w in alice.presence} == {"alice", "bob"},
                    "both in the presence list")
        r = await bounded(alice.execute(f"for i in range({LINES}): print(i)"), "the loop", 120)
        self.assertTrue(r.ok, r)
        await bounded(bob.wait_for_seq(r.last_seq), "bob's copy", 60)
        expected = "".join(f"{i}\n" for i in range(LINES))
        for rec in (rec_a, rec_b):
            self.assertEqual(rec.stdout(), expected)
            seqs = rec.seqs()
            self.assertEqual(seqs, list(range(seqs[0], seqs[-1] + 1)))
            (ran,) = [m for m in rec.kinds(p.EXECUTE) if m["exec"] == r.id]
            self.assertEqual(ran["user"], "alice")
            self.assertEqual({m["exec"] for m in rec.kinds(p.STDOUT)}, {r.id})
        self.assertTrue(any(m["text"] == "bob joined as collaborator\n"
                            for m in rec_a.kinds(p.JOIN)))

    async def test_console_c_and_exit_status(self) -> None:
        ep = await self.start_kernel()
        out, err, code = await self.cli("console", "shared", "--connect", ep,
                                        "--token-file", path("bob.token"), "-c", "print(6 * 7)")
        self.assertEqual((out, code), ("42\n", 0), err)
        # A console that never pauses the kernel still shows all of its own run.
        out, err, code = await self.cli("console", "shared", "--connect", ep,
                                        "--never-pause-kernel", "-c",
                                        "for i in range(3000): print(i)")
        self.assertEqual((out, code), ("".join(f"{i}\n" for i in range(3000)), 0), err)
        out, err, code = await self.cli("console", "shared", "--connect", ep, "-c",
                                        "def f():\n    raise KeyError('nope')\nf()")
        self.assertEqual(code, 1)
        self.assertIn("KeyError: 'nope'", err)
        self.assertIn("line 2, in f", err)
        out, err, code = await self.cli("console", "other", "--connect", ep, "--timeout", "1",
                                        "-c", "1")
        self.assertEqual(code, 1)
        self.assertIn("no broker of kernel 'other'", err)
        out, err, code = await self.cli("console", "bad name", "-c", "1")
        self.assertEqual(code, 2)
        self.assertIn("bad kernel name", err)
        # Only the owner may shut it down; the broker then exits by itself.
        out, err, code = await self.cli("console", "shared", "--connect", ep,
                                        "--token-file", path("bob.token"), "-c", "%shutdown")
        self.assertEqual(code, 1)
        self.assertIn("may not shutdown", err)
        out, err, code = await self.cli("console", "shared", "--connect", ep,
                                        "--token-file", path("alice.token"), "-c", "%shutdown")
        self.assertEqual(code, 0, err)
        await bounded(self.kernel_proc.ended, "the kernel command to exit")
        self.assertIn("yotonnet kernel shared: shut down", self.kernel_proc.lines)
        self.assertEqual(self.kernel_proc.exit_reason.value.exitCode, 0)

    async def test_kernel_ends_when_its_broker_is_killed(self) -> None:
        await self.start_kernel()
        ready = [line for line in self.kernel_proc.lines if " ready (pid " in line][0]
        pid = int(ready.split(" ready (pid ")[1].split(",")[0])
        self.assertTrue(_running(pid))
        await self.kernel_proc.kill()  # SIGKILL: the broker has no chance to clean up
        # The kernel's heartbeat and output writes fail on the broken pipes: it exits.
        await until(lambda: not _running(pid), "the orphaned kernel to exit")

    async def test_blocking_client_script(self) -> None:
        ep = await self.start_kernel()
        script = os.path.join(procs.REPO_ROOT, "tests", "kernel_blocking_peer.py")
        env = dict(os.environ, PYTHONPATH=procs.REPO_ROOT)
        out, err, code = await bounded(
            utils.getProcessOutputAndValue(sys.executable, [script, ep, "shared"], env=env),
            "the blocking client script")
        self.assertEqual(code, 0, err.decode())
        seen = json.loads(out)
        self.assertEqual(seen["value"], "42")
        self.assertEqual(seen["error"], ["ValueError", "bad"])
        self.assertEqual(seen["asked"], ["q? "])
        self.assertIn(["stdout", "from script\n"], seen["seen"])
        self.assertIn(["stdin", "q? typed\n"], seen["seen"])
        self.assertEqual(seen["seen"][-1][0], "error")
        self.assertEqual(seen["complete"], ["answer"])
        self.assertEqual((seen["state"], seen["link"], seen["role"]),
                         ("idle", "up", "collaborator"))


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class TmuxConsoleTests(TestCase):
    timeout = 120

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "console", "-S", "-300")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "console", *keys)

    async def shows(self, text: str, what: str, after: int = 0) -> None:
        """Wait until ``text`` appears on the screen (past ``after`` characters)."""
        try:
            await until(lambda: text in self.screen()[after:], what, WAIT)
        except AssertionError:
            raise AssertionError(f"{what}: {text!r} not on the console screen:\n"
                                 f"{self.screen()}") from None

    async def test_interactive_console_in_tmux(self) -> None:
        if shutil.which("tmux") is None:
            raise SkipTest("tmux is not installed (apt-get install tmux)")
        self.sock = f"yotonnet-test-{os.getpid()}"
        self.addCleanup(lambda: self.tmux("kill-server"))
        proc = procs.spawn_peer(self, "yotonnet.cli", "kernel", "tm", "--listen",
                                "tcp:0:interface=127.0.0.1", *LOGINS,
                                label="yotonnet kernel", script="-m")
        line = await proc.wait_for("yotonnet kernel tm: listening on ")
        await proc.wait_for("yotonnet kernel tm: ready")
        ep = "tcp:" + line.rsplit(" ", 1)[1]
        _, watcher, rec = await attach(self, ep, "tm", "alice")
        command = (f"env PYTHONPATH={procs.REPO_ROOT} {sys.executable} -m yotonnet.cli console "
                   f"tm --connect {ep} --token-file {path('tmuxer.token')}")
        self.tmux("new-session", "-d", "-s", "console", "-x", "150", "-y", "50", command)
        await self.shows(">>> ", "the prompt")
        self.assertIn("as tmuxer (collaborator)", self.screen())
        self.assertIn("also here: alice", self.screen())

        self.keys("x = 6 * 7", "Enter")
        self.keys("print('x is', x)", "Enter")
        await self.shows("x is 42", "a statement's output")
        self.keys("for i in range(3):", "Enter", "    print('row', i)", "Enter", "Enter")
        await self.shows("row 2", "a multi-line block")
        self.keys("name = input('name? ')", "Enter")
        await self.shows("name? ", "input()'s prompt")
        self.keys("zed", "Enter")
        self.keys("name.upper()", "Enter")
        await self.shows("'ZED'", "the answer reached the kernel")

        mark = len(self.screen())
        self.keys("while True: pass", "Enter")
        await until(lambda: watcher.status()["state"] == p.BUSY, "the loop to run")
        self.keys("C-c")
        await self.shows("KeyboardInterrupt", "Ctrl-C interrupting the loop", mark)
        self.keys("%who", "Enter")
        await self.shows("tmuxer  collaborator (you)", "%who")

        # The other attached user saw the console's code, tagged with its user (its
        # stream runs on its own: it may be a message or two behind the console's screen).
        await until(lambda: any(m["text"].rstrip("\n") == "name.upper()"
                                for m in rec.kinds(p.EXECUTE)),
                    "the other user to see the console's last statement")
        ran = [(m["user"], m["text"].rstrip("\n")) for m in rec.kinds(p.EXECUTE)]
        self.assertIn(("tmuxer", "x = 6 * 7"), ran)
        self.assertIn(("tmuxer", "for i in range(3):\n    print('row', i)"), ran)
        self.assertIn("name? zed\n", [m["text"] for m in rec.kinds(p.STDIN)])

        # And the console sees what the other user runs.
        await bounded(watcher.execute("print('hello from alice')"), "alice's execute")
        await self.shows("[alice] >>> print('hello from alice')", "alice's code shown")
        await self.shows("hello from alice", "alice's output shown")
        # Status changes reach the console: a kill -9, then a restart by the owner.
        os.kill(watcher.status()["process"]["pid"], signal.SIGKILL)
        await self.shows("* kernel dead (signal 9)", "the death on the console")
        self.keys("%restart", "Enter")
        await self.shows("may not restart", "a collaborator's restart refused")
        await bounded(watcher.restart(), "the owner's restart")
        await self.shows("* kernel idle", "the restarted kernel on the console")
        self.keys("x", "Enter")
        await self.shows("NameError: name 'x' is not defined", "a fresh namespace")
        self.keys("C-d")
        await until(lambda: any(m["text"].startswith("tmuxer left") for m in
                                rec.kinds(p.LEAVE)), "the console to leave")
