"""Ring 3: Jupyter kernels hosted as shared kernels, driven through two hops.

Each test starts a real Jupyter kernel with jupyter_client (ipykernel's
``python3`` kernelspec, or bash_kernel's ``bash``: ``make`` installs both) on a
broker node, and yotonnet's own kernel clients drive it through a relay
node: three nodes in a line, real sockets on loopback, every client logged in
with its token.

* execute: ``1+1`` gives ``2`` as the result and as a result record whose
  MIME bundle is Jupyter's, intact; a display of HTML keeps its text/html; an
  exception gives its type, message and traceback; 10,000 printed lines reach
  both clients complete and in order; complete and inspect answer;
* ``input()`` and ``getpass()`` reach only the user who ran the code; a client
  without an input handler gets EOFError in the kernel;
* ``while True: pass`` is interrupted (the kernelspec's interrupt mode);
* the three signals: a stopped kernel (SIGSTOP) is very-busy (its heartbeat
  is silent, its process alive), then idle again; ``kill -9`` shows dead
  with signal 9 within a poll; restart brings idle with a new process and a
  fresh namespace, and a restart of a live kernel works too;
* lossless paced output: a console that stops reading makes the broker stop
  draining IOPub (the mesh's producer pauses) while the kernel sends thousands
  of messages; they wait in the kernel (its IOPub set not to drop) and the
  console gets every line, in order, once it reads again;
* bash_kernel hosted the same way (over tcp on 127.0.0.1 this time) runs
  ``echo hello`` through the mesh;
* the command: ``yotonnet kernel K --jupyter python3`` serves ``yotonnet
  console -c``; an unknown kernelspec is an error naming the installed ones;
  the kernel ends when its broker is killed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import stat
import sys
import tempfile

import procs
from certs_fixture import path
from kernel_support import StalledConsole, attach, relay_to, start_broker
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from waits import bounded, sleep, until

from yotonnet.kernel import protocol as p
from yotonnet.kernel.jupyter import JupyterBackend, kernelspec_names


def needs_kernelspec(name: str) -> None:
    if name not in kernelspec_names():
        raise AssertionError(f"no Jupyter kernelspec {name!r} (installed: {kernelspec_names()});"
                             " `make` installs ipykernel and bash_kernel's kernelspec")


async def line_of_three(testcase: TestCase, spec: str = "python3", transport: str = "ipc",
                        **config):
    """A broker node hosting kernelspec ``spec`` as kernel ``j`` and a relay node linked
    to it: (broker, its backend, the relay's endpoint). Clients that attach at the relay
    are two hops from the kernel (client, relay, broker)."""
    needs_kernelspec(spec)
    backend = JupyterBackend(spec, transport=transport)
    _, broker, ep = await start_broker(testcase, "j", backend=backend, **config)
    return broker, backend, await relay_to(testcase, ep)


class HostedIPythonTests(TestCase):
    timeout = 120

    async def test_execute_output_complete_inspect(self) -> None:
        broker, backend, ep = await line_of_three(self)
        _, alice, rec_a = await attach(self, ep, "j", "alice")
        _, bob, rec_b = await attach(self, ep, "j", "bob")
        # ZMQ only on this host: unix sockets and a 0600 connection file in a private dir.
        info = backend.describe()
        self.assertEqual((info["type"], info["kernelspec"], info["transport"]),
                         ("jupyter", "python3", "ipc"))
        conn = backend.connection_file
        with open(conn) as f:
            connection = json.load(f)
        self.assertEqual(connection["transport"], "ipc")
        self.assertTrue(connection["ip"].startswith(os.path.dirname(conn) + os.sep))
        self.assertEqual(stat.S_IMODE(os.stat(conn).st_mode), 0o600)
        # (jupyter_client adds the sticky bit to the directory it writes in)
        self.assertEqual(os.stat(os.path.dirname(conn)).st_mode & 0o777, 0o700)
        status = alice.status()
        self.assertEqual((status["state"], status["process"]["language"]), (p.IDLE, "python"))

        r = await bounded(alice.execute("1+1"), "1+1")
        self.assertEqual((r.ok, r.value), (True, "2"))
        (result,) = [m for m in rec_a.kinds(p.RESULT) if m["exec"] == r.id]
        self.assertEqual((result["text"], result["data"], result["user"]),
                         ("2\n", {"text/plain": "2"}, "alice"))

        r = await bounded(bob.execute(
            "from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))"), "display")
        (shown,) = [m for m in rec_b.kinds(p.DISPLAY) if m["exec"] == r.id]
        self.assertEqual(shown["data"]["text/html"], "<b>hi</b>")
        self.assertEqual(shown["user"], "bob")

        r = await bounded(alice.execute("def f():\n    return 1 / 0\nf()"), "an exception")
        self.assertEqual((r.ok, r.error_type, r.message),
                         (False, "ZeroDivisionError", "division by zero"))
        self.assertIn("return 1 / 0", r.traceback)
        (error,) = [m for m in rec_a.kinds(p.ERROR) if m["exec"] == r.id]
        self.assertEqual(error["error"]["ename"], "ZeroDivisionError")

        lines = 10_000
        r = await bounded(alice.execute(f"for i in range({lines}): print(i)"), "the loop", 60)
        self.assertTrue(r.ok, r)
        await bounded(bob.wait_for_seq(r.last_seq), "bob's copy")
        expected = "".join(f"{i}\n" for i in range(lines))
        for rec in (rec_a, rec_b):
            self.assertEqual("".join(m["text"] for m in rec.kinds(p.STDOUT)
                                     if m["exec"] == r.id), expected)
            seqs = rec.seqs()
            self.assertEqual(seqs, list(range(seqs[0], seqs[-1] + 1)))
        # Both saw both users' code, tagged with who ran it.
        ran = [(m["user"], m["exec"]) for m in rec_b.kinds(p.EXECUTE)]
        self.assertEqual([u for u, _ in ran], ["alice", "bob", "alice", "alice"])

        await bounded(alice.execute("import os\nxyz_value = 1"), "names to complete")
        self.assertIn("xyz_value", await bounded(bob.complete("xyz_"), "complete"))
        self.assertIn("os.path", await bounded(bob.complete("os.pa"), "complete a dotted name"))
        found = await bounded(bob.inspect("len"), "inspect")
        self.assertTrue(found["found"])
        self.assertIn("Return the number of items", found["text"])
        self.assertIn("text/plain", found["data"])
        self.assertFalse((await bounded(bob.inspect("no_such_name_here"), "inspect"))["found"])
        await until(lambda: alice.status()["state"] == p.IDLE, "idle")

    async def test_input_reaches_only_the_requester(self) -> None:
        _, _, ep = await line_of_three(self)
        asked: dict[str, list] = {"alice": [], "bob": []}

        def answer(user: str):
            def on_input(prompt: str, password: bool) -> defer.Deferred:
                asked[user].append((prompt, password))
                return task.deferLater(reactor, 0.01, lambda: f"{user}-says")
            return on_input

        _, alice, rec_a = await attach(self, ep, "j", "alice", on_input=answer("alice"))
        _, bob, rec_b = await attach(self, ep, "j", "bob", on_input=answer("bob"))
        r = await bounded(alice.execute("a = input('name? ')\na"), "alice's input")
        self.assertEqual(r.value, "'alice-says'")
        self.assertEqual(asked, {"alice": [("name? ", False)], "bob": []})
        r = await bounded(bob.execute("import getpass\ngetpass.getpass('pw: ')"), "bob's input")
        self.assertEqual(r.value, "'bob-says'")
        self.assertEqual(asked, {"alice": [("name? ", False)], "bob": [("pw: ", True)]})
        await bounded(alice.wait_for_seq(r.last_seq), "alice's copy")
        echoes = [m["text"] for m in rec_a.kinds(p.STDIN)]
        self.assertEqual(echoes, ["name? alice-says\n", "pw: \n"])  # never a password
        self.assertEqual([m["text"] for m in rec_b.kinds(p.STDIN)], echoes)
        _, carol, _ = await attach(self, ep, "j", "carol")
        r = await bounded(carol.execute("input()"), "carol's input")
        self.assertEqual(r.error_type, "EOFError")

    async def test_interrupt_stops_a_busy_loop(self) -> None:
        broker, _, ep = await line_of_three(self)
        _, alice, rec = await attach(self, ep, "j", "alice")
        running = alice.execute("n = 0\nwhile True:\n    n += 1")
        await until(lambda: broker.state == p.BUSY and alice.status()["state"] == p.BUSY,
                    "the kernel to be busy")
        self.assertTrue(await bounded(alice.interrupt(), "interrupt"))
        r = await bounded(running, "the interrupted execution")
        self.assertEqual(r.error_type, "KeyboardInterrupt")
        r = await bounded(alice.execute("n > 0"), "code after the interrupt")
        self.assertEqual(r.value, "True")
        self.assertFalse(await bounded(alice.interrupt(), "interrupt when idle"))
        # A loop that floods the output (paced through the mesh) is interrupted too.
        running = alice.execute("import time\nwhile True:\n    print(time.time())")
        await until(lambda: sum(m["text"].count("\n") for m in rec.kinds(p.STDOUT)) > 1000,
                    "a thousand printed lines")
        self.assertTrue(await bounded(alice.interrupt(), "interrupt of the printing loop"))
        r = await bounded(running, "the interrupted printing loop")
        self.assertEqual(r.error_type, "KeyboardInterrupt")
        printed = [float(x) for x in "".join(m["text"] for m in rec.kinds(p.STDOUT)
                                             if m["exec"] == r.id).split()]
        self.assertEqual(printed, sorted(printed))  # in order, none garbled
        await until(lambda: alice.status()["state"] == p.IDLE, "idle")

    async def test_three_signals_stop_kill_9_and_restart(self) -> None:
        broker, backend, ep = await line_of_three(self)
        _, alice, rec = await attach(self, ep, "j", "alice")
        seen: list[dict] = []
        alice.watch_status(seen.append)
        await bounded(alice.execute("x = 1"), "execute")
        pid = alice.status()["process"]["pid"]
        self.assertEqual(pid, backend.pid)
        # A stopped kernel: the process lives, its heartbeat is silent: very-busy.
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: alice.status()["state"] == p.VERY_BUSY, "very-busy")
            status = alice.status()
            self.assertEqual((status["interpreter"], status["process"]["alive"], status["link"]),
                             ("unresponsive", True, "up"))
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: alice.status()["state"] == p.IDLE, "idle again")
        self.assertNotIn(p.DEAD, [s["state"] for s in seen])
        # kill -9: dead, with the signal; what ran fails.
        code = "import time\nwhile True: time.sleep(0.01)"
        running = alice.execute(code)
        await until(lambda: alice.status()["state"] == p.BUSY, "running")
        os.kill(pid, signal.SIGKILL)
        await until(lambda: alice.status()["state"] == p.DEAD, "dead", 10)
        status = alice.status()
        self.assertEqual((status["process"]["signal"], status["process"]["alive"]),
                         (signal.SIGKILL, False))
        r = await bounded(running, "the execution the kill ended")
        self.assertEqual(r.error_type, "KernelGone")
        self.assertFalse(os.path.exists(backend.connection_file))  # cleaned up
        # Restart: a new process, idle, a fresh namespace.
        status = await bounded(alice.restart(), "restart")
        self.assertEqual(status["state"], p.IDLE)
        await until(lambda: alice.status()["state"] == p.IDLE, "idle after the restart")
        self.assertNotEqual(alice.status()["process"]["pid"], pid)
        r = await bounded(alice.execute("x"), "execute after restart")
        self.assertEqual(r.error_type, "NameError")
        # Restarting a live kernel: a shutdown_request, then a new process.
        live = backend.pid
        await bounded(alice.restart(), "restart of a live kernel")
        self.assertNotEqual(backend.pid, live)
        self.assertEqual(broker.generation, 3)
        r = await bounded(alice.execute("2 * 21"), "execute in the third kernel")
        self.assertEqual(r.value, "42")
        self.assertTrue(any("kernel died (signal 9)" in m["text"] for m in rec.kinds(p.SYSTEM)))

    async def test_a_stalled_console_holds_the_kernel_back_losslessly(self) -> None:
        # One IOPub message per line (flush=True), big lines: megabytes, thousands of
        # messages, far past the mesh's window and ZMQ's queues at both ends (1,000 each).
        lines, width = 5_000, 1_000
        broker, backend, ep = await line_of_three(self)
        ctx = broker.context
        stalled = StalledConsole(p.STDOUT)  # stops reading at the first line
        gate, got = stalled.gate, stalled.got
        _, alice, _ = await attach(self, ep, "j", "alice", on_output=stalled)
        self.assertTrue(alice.status()["process"]["iopub_nodrop"])
        running = alice.execute(f"for i in range({lines}): print(i, 'x' * {width}, flush=True)")
        await until(lambda: backend.output_paused, "the broker to stop draining IOPub")
        await sleep(1.0)  # the kernel runs on meanwhile: what it sends must wait, not drop
        self.assertTrue(backend.output_paused)
        self.assertFalse(running.called)
        gate.callback(None)
        r = await bounded(running, "the held-back loop", 90)
        self.assertTrue(r.ok, r)
        text = "".join(m["text"] for m in got if m["kind"] == p.STDOUT and m["exec"] == r.id)
        self.assertEqual(text.count("\n"), lines)
        self.assertEqual(text, "".join(f"{i} {'x' * width}\n" for i in range(lines)))
        self.assertGreater(ctx.counters["producer_pauses"], 0)


class LateStdinTests(TestCase):
    timeout = 60

    async def test_input_right_after_the_start_of_a_kernel_whose_stdin_listens_late(
            self) -> None:
        # A kernelspec of tests/late_stdin_kernel.py: its stdin socket binds 2 s after the
        # others, so ours connects long after the kernel answered on shell. The first
        # input() must still reach its user (an input_request to an unconnected peer is
        # dropped by the kernel's ROUTER, and input() would wait forever).
        where = tempfile.mkdtemp(prefix="yotonnet-kernelspecs-")
        self.addCleanup(shutil.rmtree, where, True)
        spec = os.path.join(where, "kernels", "late-stdin")
        os.makedirs(spec)
        with open(os.path.join(spec, "kernel.json"), "w") as f:
            json.dump({"argv": [sys.executable, os.path.join(procs.REPO_ROOT, "tests",
                                                              "late_stdin_kernel.py"),
                                "-f", "{connection_file}"],
                       "display_name": "late stdin", "language": "python"}, f)
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = where
        self.addCleanup(lambda: os.environ.__setitem__("JUPYTER_PATH", old) if old is not None
                        else os.environ.pop("JUPYTER_PATH", None))
        _, backend, ep = await line_of_three(self, "late-stdin", transport="tcp")
        _, alice, _ = await attach(self, ep, "j", "alice",
                                   on_input=lambda prompt, password: "alice-says")
        r = await bounded(alice.execute("input('name? ')"), "the first input()", 20)
        self.assertEqual(r.value, "'alice-says'")


class HostedBashTests(TestCase):
    timeout = 120

    async def test_a_stalled_console_loses_nothing_of_a_kernel_that_would_drop(self) -> None:
        # bash_kernel's IOPub is a PUB that drops past 1,000 waiting messages (no Python
        # runs in it to make it wait): the broker reads on into a bounded buffer instead.
        lines = 6_000
        broker, backend, ep = await line_of_three(self, "bash")
        stalled = StalledConsole(p.STDOUT)  # stops reading at the first line
        gate, got = stalled.gate, stalled.got
        _, alice, _ = await attach(self, ep, "j", "alice", on_output=stalled)
        self.assertFalse(alice.status()["process"]["iopub_nodrop"])
        # one line at a time, each its own IOPub message, about 1 ms apart: `read -t` on a
        # FIFO nobody writes is bash's own 1 ms pause (`sleep 0.001` forks and execs a
        # process per line, 3 to 5 ms each on a loaded 2-core machine: 6,000 of them were
        # most of this test's time)
        pad = "y" * 1000  # (past the mesh's window: megabytes)
        running = alice.execute(
            'f=$(mktemp -u) && mkfifo "$f" && exec 7<>"$f" && rm "$f"; '
            f"for i in $(seq 1 {lines}); do echo $i {pad}; read -t 0.001 -u 7; done; "
            "exec 7<&-")
        await until(lambda: backend.output_paused, "the broker to stop passing output on")
        await until(lambda: backend.iopub_held > 2_100,
                    "more than two ZMQ queues of messages to wait", 60)
        self.assertFalse(running.called)
        gate.callback(None)
        r = await bounded(running, "the held-back loop", 90)
        self.assertTrue(r.ok, r)
        text = "".join(m["text"] for m in got if m["kind"] == p.STDOUT and m["exec"] == r.id)
        self.assertEqual(text, "".join(f"{i} {pad}\n" for i in range(1, lines + 1)))
        self.assertNotIn("dropped", "".join(m["text"] for m in got if m["kind"] == p.SYSTEM))
        self.assertEqual(backend.iopub_held, 0)

    async def test_bash_kernel_echo_through_two_hops(self) -> None:
        broker, backend, ep = await line_of_three(self, "bash", transport="tcp")
        with open(backend.connection_file) as f:
            connection = json.load(f)
        self.assertEqual((connection["transport"], connection["ip"]), ("tcp", "127.0.0.1"))
        _, alice, rec = await attach(self, ep, "j", "alice")
        _, bob, rec_b = await attach(self, ep, "j", "bob")
        self.assertEqual(alice.status()["process"]["language"], "bash")
        r = await bounded(alice.execute("echo hello"), "echo")
        self.assertTrue(r.ok, r)
        await bounded(bob.wait_for_seq(r.last_seq), "bob's copy")
        for got in (rec, rec_b):
            self.assertEqual([m["text"] for m in got.kinds(p.STDOUT) if m["exec"] == r.id],
                             ["hello\n"])
        r = await bounded(alice.execute("false"), "a failing command")
        self.assertFalse(r.ok)
        self.assertIn("echo", await bounded(bob.complete("ech"), "complete"))


class JupyterKernelCommandTests(TestCase):
    timeout = 120

    async def test_kernel_jupyter_command(self) -> None:
        needs_kernelspec("python3")
        before = set(glob.glob(os.path.join(tempfile.gettempdir(), "yotonnet-jupyter-*")))
        proc = procs.spawn_peer(self, "yotonnet.cli", "kernel", "jk", "--jupyter", "python3",
                                "--listen", "tcp:0:interface=127.0.0.1", "--owner", "alice",
                                "--tokens", path("tokens.txt"), "--default-role",
                                "collaborator", label="yotonnet kernel", script="-m")
        line = await proc.wait_for("yotonnet kernel jk: listening on ")
        ready = await proc.wait_for("yotonnet kernel jk: ready")
        self.assertIn("Jupyter kernel python3", ready)
        ep = "tcp:" + line.rsplit(" ", 1)[1]
        out, err, code = await procs.yotonnet_command(
            "console", "jk", "--connect", ep, "--token-file", path("bob.token"), "-c",
            "print(6 * 7)", module="yotonnet.cli")
        self.assertEqual((out, code), ("42\n", 0), err)
        out, err, code = await procs.yotonnet_command(
            "console", "jk", "--connect", ep, "--token-file", path("bob.token"), "-c",
            "{'a': 1}", module="yotonnet.cli")
        self.assertEqual((out, code), ("{'a': 1}\n", 0), err)
        out, err, code = await procs.yotonnet_command(
            "console", "jk", "--connect", ep, "--token-file", path("bob.token"), "-c",
            "1/0", module="yotonnet.cli")
        self.assertEqual(code, 1)
        self.assertIn("ZeroDivisionError: division by zero", err)  # no colours in a pipe
        out, err, code = await procs.yotonnet_command(
            "console", "jk", "--connect", ep, "--token-file", path("bob.token"), "-c",
            "%inspect len", module="yotonnet.cli")
        self.assertEqual(code, 0, err)
        self.assertIn("Return the number of items", out)
        # The kernel process goes when its broker is killed (ipykernel watches its parent).
        _, client, _ = await attach(self, ep, "jk", "alice")
        pid = client.status()["process"]["pid"]
        await client.detach()
        await proc.kill()
        await until(lambda: not _running(pid), "the orphaned kernel to exit", 15)
        # A killed broker cleans nothing up: remove its private directory.
        for leftover in set(glob.glob(os.path.join(tempfile.gettempdir(),
                                                   "yotonnet-jupyter-*"))) - before:
            shutil.rmtree(leftover, ignore_errors=True)

    async def test_unknown_kernelspec(self) -> None:
        out, err, code = await procs.yotonnet_command(
            "kernel", "jk", "--jupyter", "no-such-spec", "--listen",
            "tcp:0:interface=127.0.0.1", module="yotonnet.cli")
        self.assertEqual(code, 1, (out, err))
        self.assertIn("no Jupyter kernelspec 'no-such-spec'", err)
        self.assertIn("python3", err)  # the installed ones are named
        out, err, code = await procs.yotonnet_command(
            "kernel", "jk", "--jupyter", "python3", "--python", "/usr/bin/python3",
            module="yotonnet.cli")
        self.assertEqual(code, 2)
        self.assertIn("--python is for yotonnet's Python kernel", err)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
