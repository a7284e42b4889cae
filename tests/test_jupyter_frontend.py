"""Ring 3: Jupyter frontends attached to shared kernels through an installed kernelspec.

Each test starts a shared kernel with the real command (``yotonnet kernel j
--jupyter python3``, or yotonnet's own Python kernel) on a token-checking
node, installs the ``yotonnet-j`` kernelspec into a temporary prefix with
``yotonnet jupyter install``, and drives it with jupyter_client as any
frontend would: ``KernelManager(kernel_name="yotonnet-j")`` found through
``JUPYTER_PATH``, and its ``BlockingKernelClient`` (in a thread of its own: it
blocks), while a yotonnet kernel client uses the same kernel from this
process, as another user.

* hosted ipykernel: kernel_info describes the remote kernel (IPython's
  banner, language python) and names the user and role; each side sees the
  other's code and output, the Jupyter side with the original parent header
  of whoever ran it (a made-up one, naming the user, for the yotonnet
  client's code); ``input()`` reaches only the requester (the Jupyter
  frontend's stdin, or the client's handler); ``interrupt_request`` stops
  ``while True: pass``; a PNG display arrives byte for byte; completion,
  is_complete and history answer; a viewer's execute_request gets an error
  reply naming the role; a frontend that reads late gets every one of
  thousands of lines; a frontend's shutdown leaves the shared kernel running
  for the others;
* nbclient executes a small notebook against the kernelspec (hosted
  ipykernel): every cell's outputs land in the notebook, a PNG display's
  bytes intact, and a yotonnet client sees the notebook's code run;
* yotonnet's Python kernel: a frontend that starts after code ran gets that
  output first (late attach, from the broker's history); kernel_info says
  yotonnet and the kernel's Python version; display() of an object with
  _repr_html_ renders as HTML; errors carry ename and evalue;
  input and interrupt as above; the owner's restart from Jupyter restarts
  the shared kernel (a fresh namespace), and the frontend goes on;
* ``jupyter console --kernel yotonnet-j`` driven in tmux (keys in, the screen
  read): the banner names the user; a statement, ``input()`` answered at its
  prompt, another user's code and output shown as other output, Ctrl-C
  interrupting ``while True: pass`` with a traceback of the user's line only;
  leaving detaches;
* JupyterLab in headless Chromium (driven over the DevTools protocol): a
  notebook whose kernelspec is ``yotonnet-j`` opens with "j on the mesh" as
  its kernel, its cell runs in the shared kernel (another client sees the
  code) and its output is read from the page; a screenshot is saved in
  ``_trial_temp/screenshots/``;
* pacing: a frontend process whose frontend reads slowly (a SUB socket taking
  10 messages at a time) stops taking records (the Deferred a kernel client
  waits for) instead of dropping, and then sends every one, in order;
* ``yotonnet jupyter install``: the kernelspec's argv, absolute credential
  paths, display name, interrupt mode, and a missing token file refused.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Any

import procs
from certs_fixture import path
from kernel_support import attach, relay_to
from twisted.internet import defer, reactor, threads, utils
from twisted.internet.protocol import ProcessProtocol
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase
from waits import bounded, sleep, until

from yotonnet.kernel import protocol as p

WAIT = 30.0


def tiny_png() -> bytes:
    """A valid 2x1 PNG (red, blue pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"\x00\xff\x00\x00\x00\x00\xff"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class JupyterSide:
    """One Jupyter frontend of kernelspec ``yotonnet-j``: jupyter_client's KernelManager and
    BlockingKernelClient, every call in one thread of its own (they block, the reactor
    must not; zmq sockets stay in the thread that made them)."""

    def __init__(self, testcase: TestCase, kernel_dirs: list[str] | None = None) -> None:
        self.kernel_dirs = kernel_dirs
        self.km: Any = None
        self.kc: Any = None
        #: every IOPub message read, in order
        self.iopub: list[dict] = []
        self.stopped = False
        self.pool = ThreadPool(1, 1, name="jupyter-frontend")
        self.pool.start()
        testcase.addCleanup(self.stop)

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        return threads.deferToThreadPool(reactor, self.pool, fn, *args, **kwargs)

    def start(self, ready: bool = True) -> defer.Deferred:
        return bounded(self.run(self._start, ready), "the Jupyter frontend's kernel to start")

    def _start(self, ready: bool) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        ksm = (KernelSpecManager() if self.kernel_dirs is None
               else KernelSpecManager(kernel_dirs=self.kernel_dirs))
        self.km = KernelManager(kernel_name="yotonnet-j", kernel_spec_manager=ksm)
        self.km.start_kernel(env=dict(os.environ, PYTHONPATH=procs.REPO_ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        if ready:
            self.kc.wait_for_ready(timeout=WAIT)

    def stop(self) -> defer.Deferred:
        """The frontend shuts its kernel down (a shutdown_request: its process detaches)."""
        if self.stopped:
            return defer.succeed(None)
        self.stopped = True

        def stop() -> None:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km is not None and self.km.has_kernel:
                self.km.shutdown_kernel()

        d = self.run(stop)
        d.addBoth(lambda result: (self.pool.stop(), result)[1])
        return d

    # --- in the thread

    def read_until(self, predicate: Any, timeout: float = WAIT) -> dict:
        """Read IOPub until a message satisfies ``predicate`` (checked on new ones only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            self.iopub.append(msg)
            if predicate(msg):
                return msg
        raise AssertionError(f"no such IOPub message within {timeout:g} s; "
                             f"got {[(m['msg_type'], m['content']) for m in self.iopub[-8:]]}")

    def _execute(self, code: str, answer: str | None = None, wait: bool = True,
                 allow_stdin: bool = False) -> dict:
        msg_id = self.kc.execute(code, allow_stdin=allow_stdin or answer is not None)
        if not wait:
            return {"msg_id": msg_id}
        asked: list[dict] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if answer is not None and self.kc.stdin_channel.msg_ready():
                req = self.kc.get_stdin_msg(timeout=1)
                asked.append(req["content"])
                self.kc.input(answer)
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            self.iopub.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id):
                break
        else:
            raise AssertionError(f"no idle for {code!r}")
        reply = self.reply(msg_id)
        mine = [m for m in self.iopub if m["parent_header"].get("msg_id") == msg_id]
        return {"msg_id": msg_id, "reply": reply, "iopub": mine, "asked": asked}

    def reply(self, msg_id: str) -> dict:
        while True:
            reply = self.kc.get_shell_msg(timeout=WAIT)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def request(self, method: str, *args: Any, **kwargs: Any) -> dict:
        """A shell request (complete, inspect, is_complete, history, kernel_info): its reply."""
        msg_id = getattr(self.kc, method)(*args, **kwargs)
        return self.reply(msg_id)["content"]

    # --- from the reactor

    def execute(self, code: str, answer: str | None = None) -> defer.Deferred:
        return bounded(self.run(self._execute, code, answer), f"the frontend to run {code!r}")


def ended(code: str) -> Any:
    """A predicate for read_until: IOPub's idle for the execution of ``code``."""
    ids: set[str] = set()

    def check(m: dict) -> bool:
        msg_id = m["parent_header"].get("msg_id")
        if m["msg_type"] == "execute_input" and m["content"]["code"] == code:
            ids.add(msg_id)
        return (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                and msg_id in ids)

    return check


def outputs(run: dict, msg_type: str) -> list[dict]:
    return [m["content"] for m in run["iopub"] if m["msg_type"] == msg_type]


def stream_text(messages: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


async def shared_kernel(testcase: TestCase, *extra: str) -> str:
    """``yotonnet kernel j`` on a token-checking node (alice owns it, bob collaborates, eve
    views); its endpoint."""
    proc = procs.spawn_peer(
        testcase, "yotonnet.cli", "kernel", "j", *extra, "--listen",
        "tcp:0:interface=127.0.0.1", "--tokens", path("tokens.txt"), "--owner", "alice",
        "--role", "bob=collaborator", "--role", "eve=viewer", "--unresponsive", "5",
        label="yotonnet kernel", script="-m")

    async def stop() -> None:
        # Politely (SIGTERM): the broker then ends its kernel and removes the private
        # directory of a hosted Jupyter kernel, which a SIGKILL would leave behind.
        if proc.running:
            proc.transport.signalProcess("TERM")
            try:
                await bounded(proc.ended, "the broker to end", 10)
            except AssertionError:
                pass  # the SIGKILL of spawn_peer's cleanup follows

    testcase.addCleanup(lambda: defer.ensureDeferred(stop()))
    line = await proc.wait_for("yotonnet kernel j: listening on ", WAIT)
    await proc.wait_for("yotonnet kernel j: ready", WAIT)
    return "tcp:" + line.rsplit(" ", 1)[1]


async def install(testcase: TestCase, endpoint: str, user: str) -> str:
    """``yotonnet jupyter install j`` with ``user``'s token into a new prefix; the
    directory that holds its kernels."""
    prefix = tempfile.mkdtemp(prefix="yotonnet-kernelspec-")
    testcase.addCleanup(shutil.rmtree, prefix, True)
    out, err, code = await procs.yotonnet_command(
        "jupyter", "install", "j", "--prefix", prefix, "--connect", endpoint,
        "--token-file", path(f"{user}.token"), module="yotonnet.cli")
    testcase.assertEqual(code, 0, err)
    testcase.assertIn("installed kernelspec yotonnet-j", out)
    return os.path.join(prefix, "share", "jupyter", "kernels")


def set_env(testcase: TestCase, **values: str) -> None:
    """Set environment variables for this test (and the processes it starts)."""
    for name, value in values.items():
        old = os.environ.get(name)
        os.environ[name] = value
        if old is None:
            testcase.addCleanup(os.environ.pop, name, None)
        else:
            testcase.addCleanup(os.environ.__setitem__, name, old)


def use_jupyter_path(testcase: TestCase, kernels: str) -> None:
    """Let jupyter_client find the kernelspecs of ``kernels`` as a user's JUPYTER_PATH would."""
    set_env(testcase, JUPYTER_PATH=os.path.dirname(kernels))


class FrontendOnHostedIPythonTests(TestCase):
    timeout = 120

    async def test_a_jupyter_frontend_and_a_client_share_an_ipykernel(self) -> None:
        ep = await shared_kernel(self, "--jupyter", "python3")
        kernels = await install(self, ep, "bob")
        use_jupyter_path(self, kernels)
        asked: list[str] = []

        def alice_input(prompt: str, password: bool) -> str:
            asked.append(prompt)
            return "alice-typed"

        _, alice, rec = await attach(self, ep, "j", "alice", on_input=alice_input)
        bob = JupyterSide(self)
        await bob.start()

        info = await bob.run(bob.request, "kernel_info")
        self.assertEqual(info["status"], "ok")
        self.assertEqual(info["language_info"]["name"], "python")
        self.assertEqual(info["implementation"], "ipython")
        self.assertIn("IPython", info["banner"])
        self.assertIn("you are bob, collaborator", info["banner"])

        # Bob's code: his frontend's usual messages; alice sees it, with his header.
        run = await bob.execute("x = 6 * 7\nprint('bob says', x)")
        self.assertEqual(run["reply"]["content"]["status"], "ok")
        self.assertEqual(stream_text(run["iopub"]), "bob says 42\n")
        kinds = [m["msg_type"] for m in run["iopub"]]
        self.assertEqual((kinds[0], kinds[-1]), ("status", "status"))
        self.assertIn("execute_input", kinds)
        count = run["reply"]["content"]["execution_count"]
        (executed,) = [m for m in rec.kinds(p.EXECUTE) if m["exec"] == count]
        self.assertEqual((executed["user"], executed["parent"]["msg_id"]),
                         ("bob", run["msg_id"]))
        await until(lambda: "bob says 42\n" in rec.stdout(), "alice to see bob's output")

        # Alice's code: bob's frontend sees it all, under a header naming her.
        r = await bounded(alice.execute("print('alice says', x + 1)\nx + 1"), "alice's code")
        self.assertEqual(r.value, "43")

        def alice_done(m: dict) -> bool:
            return (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                    and m["parent_header"].get("msg_id", "").endswith(f"-exec-{r.id}"))

        await bounded(bob.run(bob.read_until, alice_done), "bob to see alice's code end")
        hers = [m for m in bob.iopub if m["parent_header"].get("username") == "alice"]
        self.assertEqual([m["msg_type"] for m in hers],
                         ["status", "execute_input", "stream", "execute_result", "status"])
        self.assertEqual(hers[1]["content"]["code"], "print('alice says', x + 1)\nx + 1")
        self.assertEqual(hers[2]["content"]["text"], "alice says 43\n")
        self.assertEqual(hers[3]["content"]["data"]["text/plain"], "43")
        self.assertEqual(len({m["parent_header"]["msg_id"] for m in hers}), 1)

        # input() goes to whoever ran the code, and only to them.
        run = await bob.execute("answer = input('who? ')\nanswer", answer="bob-typed")
        self.assertEqual(run["asked"], [{"prompt": "who? ", "password": False}])
        self.assertEqual(outputs(run, "execute_result")[0]["data"]["text/plain"], "'bob-typed'")
        r = await bounded(alice.execute("input('a? ')"), "alice's input")
        self.assertEqual((r.value, asked), ("'alice-typed'", ["a? "]))
        self.assertFalse(await bob.run(bob.kc.stdin_channel.msg_ready))

        # An interrupt_request stops a busy loop.
        started = await bob.run(bob._execute, "while True: pass", wait=False)

        def running(m: dict) -> bool:
            return (m["msg_type"] == "execute_input"
                    and m["parent_header"].get("msg_id") == started["msg_id"])

        await bounded(bob.run(bob.read_until, running), "the loop to start")
        await until(lambda: alice.status()["state"] == p.BUSY, "the kernel to be busy")
        await bounded(bob.run(bob.km.interrupt_kernel), "interrupt")
        reply = await bounded(bob.run(bob.reply, started["msg_id"]), "the interrupted reply")
        self.assertEqual((reply["content"]["status"], reply["content"]["ename"]),
                         ("error", "KeyboardInterrupt"))

        # Rich output, intact: a PNG's bytes.
        png = tiny_png()
        run = await bob.execute("from IPython.display import Image, display\nimport base64\n"
                                f"display(Image(data=base64.b64decode({base64.b64encode(png)!r})))")
        (shown,) = outputs(run, "display_data")
        self.assertEqual(base64.b64decode(shown["data"]["image/png"]), png)

        # Completion, is_complete, history.
        found = await bob.run(bob.request, "complete", "import o")
        self.assertIn("os", found["matches"])
        self.assertEqual(found["cursor_start"], len("import "))
        self.assertEqual((await bob.run(bob.request, "is_complete", "for i in x:"))["status"],
                         "incomplete")
        history = await bob.run(bob.request, "history", hist_access_type="tail", n=100)
        self.assertIn("print('alice says', x + 1)\nx + 1", [h[2] for h in history["history"]])

        # A viewer's frontend is refused, with the role named; the kernel is untouched.
        eve_kernels = await install(self, ep, "eve")
        eve = JupyterSide(self, [eve_kernels])
        await eve.start()
        run = await eve.execute("x = 0")
        content = run["reply"]["content"]
        self.assertEqual((content["status"], content["ename"]), ("error", "PermissionDenied"))
        self.assertIn("viewer", content["evalue"])
        self.assertEqual(outputs(run, "error")[0]["ename"], "PermissionDenied")

        await eve.stop()  # (a frontend that never reads would hold everyone back)

        # A frontend that reads late gets every line: megabytes, thousands of messages,
        # past ZMQ's queues at each end (1,000 messages; FrontendPacingTests: held back).
        lines, width = 3_000, 1_000
        code = f"for i in range({lines}): print(i, 'x' * {width}, flush=True)"
        running = alice.execute(code)
        await sleep(1.0)  # bob's frontend reads nothing meanwhile
        await bounded(bob.run(bob.read_until, ended(code), 60), "bob to read it all", 70)
        r = await bounded(running, "alice's loop")
        self.assertTrue(r.ok)
        loop = [m for m in bob.iopub if m["parent_header"].get("msg_id", "").endswith(
            f"-exec-{r.id}")]
        self.assertEqual(stream_text(loop), "".join(f"{i} {'x' * width}\n"
                                                    for i in range(lines)))

        # Bob closes his frontend: his process leaves, the shared kernel stays.
        await bounded(bob.run(bob.km.shutdown_kernel), "bob's frontend to shut down")
        r = await bounded(alice.execute("x"), "alice's code after bob left")
        self.assertEqual(r.value, "42")
        await until(lambda: [w["user"] for w in alice.presence] == ["alice"],
                    "bob and eve to leave the presence list")


class ReconnectThroughTwoHopsTests(TestCase):
    timeout = 180

    async def test_100000_lines_to_a_console_and_a_frontend_that_reconnects(self) -> None:
        ep = await shared_kernel(self, "--jupyter", "python3")
        # Two hops: the frontend process and the console link to a relay node, the
        # relay to the kernel's node.
        relay_ep = await relay_to(self, ep)
        use_jupyter_path(self, await install(self, relay_ep, "bob"))
        bob = JupyterSide(self)
        await bob.start()

        lines = 100_000
        code = (f"import sys\nfor i in range({lines}):\n    print(i)\n"
                "    if i % 20 == 19:\n        sys.stdout.flush()")
        expected = "".join(f"{i}\n" for i in range(lines))
        console = utils.getProcessOutputAndValue(
            sys.executable, ["-m", "yotonnet.cli", "console", "j", "--connect", relay_ep,
                             "--token-file", path("alice.token"), "-c", code],
            env=dict(os.environ, PYTHONPATH=procs.REPO_ROOT), path=procs.REPO_ROOT)
        done = ended(code)

        def reconnect_mid_stream() -> dict:
            """Read a third of it, then close every socket and come back as a new client
            that names the last IOPub message it saw before it subscribes again."""
            seen = 0
            bob.read_until(lambda m: m["msg_type"] == "stream" or done(m), 60)
            while seen < lines // 3:
                m = bob.read_until(lambda m: m["msg_type"] == "stream" or done(m), 60)
                self.assertFalse(done(m), "the loop ended before the reconnect")
                seen += m["content"]["text"].count("\n")
            last = bob.iopub[-1]["msg_id"]
            bob.kc.stop_channels()  # (what its socket held unread is gone with it)
            time.sleep(0.5)  # away while the loop goes on
            kc = bob.km.client()
            kc.start_channels(iopub=False)
            kc.shell_channel.send(kc.session.msg("yotonnet_replay_request", {"after": last}))
            reply = kc.get_shell_msg(timeout=WAIT)
            bob.kc = kc
            kc.iopub_channel.start()  # subscribes
            bob.read_until(done, 120)
            return reply

        reply = await bounded(bob.run(reconnect_mid_stream), "the frontend's reconnect", 150)
        self.assertEqual((reply["msg_type"], reply["content"]["status"]),
                         ("yotonnet_replay_reply", "ok"))
        out, err, status = await bounded(console, "the console's run", 150)
        self.assertEqual(status, 0, err[-2000:])
        self.assertEqual(out.decode(), expected)  # the console: every line, in order
        # The frontend: every line, in order, each message once, though it was away.
        (started,) = [m for m in bob.iopub if m["msg_type"] == "execute_input"
                      and m["content"]["code"] == code]
        run = [m for m in bob.iopub
               if m["parent_header"].get("msg_id") == started["parent_header"]["msg_id"]]
        self.assertEqual(run[0]["parent_header"]["username"], "alice")
        ids = [m["msg_id"] for m in run]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(stream_text(run), expected)


class NotebookTests(TestCase):
    timeout = 120

    async def test_nbclient_executes_a_notebook_on_the_kernelspec(self) -> None:
        import nbformat
        from nbclient import NotebookClient

        ep = await shared_kernel(self, "--jupyter", "python3")
        use_jupyter_path(self, await install(self, ep, "bob"))
        _, alice, rec = await attach(self, ep, "j", "alice")
        png = tiny_png()
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell("total = sum(range(10))\nprint('total', total)"),
            nbformat.v4.new_code_cell(
                "from IPython.display import Image, display\nimport base64\n"
                f"display(Image(data=base64.b64decode({base64.b64encode(png)!r})))\ntotal * 2"),
        ])
        client = NotebookClient(nb, kernel_name="yotonnet-j", timeout=WAIT)
        pool = ThreadPool(1, 1, name="nbclient")
        pool.start()
        self.addCleanup(pool.stop)
        await bounded(threads.deferToThreadPool(
            reactor, pool, client.execute, env=dict(os.environ, PYTHONPATH=procs.REPO_ROOT)),
            "nbclient to run the notebook", 60)
        first, second = nb.cells
        self.assertEqual([(o.output_type, o.text) for o in first.outputs],
                         [("stream", "total 45\n")])
        kinds = [o.output_type for o in second.outputs]
        self.assertEqual(kinds, ["display_data", "execute_result"])
        self.assertEqual(base64.b64decode(second.outputs[0].data["image/png"]), png)
        self.assertEqual(second.outputs[1].data["text/plain"], "90")
        self.assertEqual((first.execution_count, second.execution_count), (1, 2))
        # The notebook's code ran in the shared kernel, as bob, in alice's sight.
        self.assertEqual([(m["user"], m["text"]) for m in rec.kinds(p.EXECUTE)],
                         [("bob", first.source), ("bob", second.source)])
        r = await bounded(alice.execute("total"), "alice reads the notebook's variable")
        self.assertEqual(r.value, "45")


class FrontendOnPythonKernelTests(TestCase):
    timeout = 120

    async def test_late_attach_restart_and_input_on_yotonnets_kernel(self) -> None:
        ep = await shared_kernel(self)
        kernels = await install(self, ep, "alice")
        _, bob, rec = await attach(self, ep, "j", "bob")
        r = await bounded(bob.execute("y = 'early'\nprint('before the frontend')"), "bob's code")
        self.assertTrue(r.ok)

        # A frontend that starts now gets what ran before, with its header.
        alice = JupyterSide(self, [kernels])
        await alice.start(ready=False)

        def early(m: dict) -> bool:
            return m["msg_type"] == "stream" and m["content"]["text"] == "before the frontend\n"

        seen = await bounded(alice.run(alice.read_until, early), "the history")
        self.assertEqual(seen["parent_header"]["username"], "bob")
        await bounded(alice.run(alice.kc.wait_for_ready, timeout=WAIT), "ready")

        info = await alice.run(alice.request, "kernel_info")
        self.assertEqual((info["implementation"], info["language_info"]["name"]),
                         ("yotonnet", "python"))
        self.assertEqual(info["language_info"]["version"], sys.version.split()[0])
        self.assertIn("you are alice, owner", info["banner"])

        run = await alice.execute("print(y)")
        self.assertEqual(stream_text(run["iopub"]), "early\n")
        await until(lambda: "early\n" in rec.stdout(), "bob to see alice's output")

        run = await alice.execute("class H:\n    def _repr_html_(self):\n"
                                  "        return '<i>hi</i>'\ndisplay(H())\nH()")
        (shown,) = outputs(run, "display_data")
        self.assertEqual(shown["data"]["text/html"], "<i>hi</i>")
        self.assertEqual(outputs(run, "execute_result")[0]["data"]["text/html"], "<i>hi</i>")

        run = await alice.execute("1 / 0")
        content = run["reply"]["content"]
        self.assertEqual((content["status"], content["ename"], content["evalue"]),
                         ("error", "ZeroDivisionError", "division by zero"))
        (error,) = outputs(run, "error")
        self.assertEqual(error["ename"], "ZeroDivisionError")
        self.assertTrue(any("1 / 0" in line for line in error["traceback"]))

        run = await alice.execute("input('name? ') * 2", answer="ab")
        self.assertEqual(outputs(run, "execute_result")[0]["data"]["text/plain"], "'abab'")
        r = await bounded(bob.execute("input('q? ')"), "bob's input")
        self.assertEqual(r.error_type, "EOFError")  # bob's client takes no input: not asked
        self.assertFalse(await alice.run(alice.kc.stdin_channel.msg_ready))

        started = await alice.run(alice._execute, "while True: pass", wait=False)
        await until(lambda: bob.status()["state"] == p.BUSY, "the loop to run")
        await bounded(alice.run(alice.km.interrupt_kernel), "interrupt")
        reply = await bounded(alice.run(alice.reply, started["msg_id"]), "the interrupted reply")
        self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")

        # The owner restarts the shared kernel from Jupyter; the frontend goes on.
        pid = bob.status()["process"]["pid"]
        await bounded(alice.run(alice.km.restart_kernel), "restart")
        await until(lambda: bob.status()["process"]["pid"] != pid
                    and bob.status()["state"] == p.IDLE, "a new kernel process")
        await bounded(alice.run(alice.kc.wait_for_ready, timeout=WAIT), "ready again")
        run = await alice.execute("y")
        self.assertEqual(run["reply"]["content"]["ename"], "NameError")
        self.assertTrue(any("alice restarts the kernel" in m["text"]
                            for m in rec.kinds(p.SYSTEM)))


class JupyterConsoleTests(TestCase):
    timeout = 120

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "jc", "-S", "-300")

    async def shows(self, text: str, what: str, after: int = 0) -> None:
        try:
            await until(lambda: text in self.screen()[after:], what, WAIT)
        except AssertionError:
            raise AssertionError(f"{what}: {text!r} not on the screen:\n{self.screen()}") from None

    async def test_jupyter_console_in_tmux(self) -> None:
        if shutil.which("tmux") is None:
            raise SkipTest("tmux is not installed (apt-get install tmux)")
        ep = await shared_kernel(self)
        kernels = await install(self, ep, "bob")
        _, alice, rec = await attach(self, ep, "j", "alice")
        self.sock = f"yotonnet-jc-{os.getpid()}"
        self.addCleanup(lambda: self.tmux("kill-server"))
        command = (f"env JUPYTER_PATH={os.path.dirname(kernels)} PYTHONPATH={procs.REPO_ROOT} "
                   f"{sys.executable} -m jupyter_console --kernel yotonnet-j "
                   "--ZMQTerminalInteractiveShell.include_other_output=True "
                   "--no-confirm-exit")
        self.tmux("new-session", "-d", "-s", "jc", "-x", "150", "-y", "50", command)
        await self.shows("you are bob, collaborator", "the banner")
        await self.shows("In [", "the prompt")

        def keys(*typed: str) -> None:
            self.tmux("send-keys", "-t", "jc", *typed)

        keys("x = 6 * 7; print('x is', x)", "Enter")
        await self.shows("x is 42", "a statement's output")
        keys("name = input('name? ')", "Enter")
        await self.shows("name? ", "input()'s prompt")
        keys("zed", "Enter")
        keys("name.upper()", "Enter")
        await self.shows("'ZED'", "the answer reached the kernel")
        await until(lambda: ("bob", "name.upper()") in [
            (m["user"], m["text"]) for m in rec.kinds(p.EXECUTE)], "alice to see bob's code")

        await bounded(alice.execute("print('hello from alice')"), "alice's code")
        await self.shows("hello from alice", "alice's output on bob's screen")

        mark = len(self.screen())
        keys("while True: pass", "Enter")
        await until(lambda: alice.status()["state"] == p.BUSY, "the loop to run")
        keys("C-c")
        await self.shows("KeyboardInterrupt", "Ctrl-C interrupting the loop", mark)
        self.assertNotIn("driver.py", self.screen()[mark:])
        keys("x + 1", "Enter")
        await self.shows("43", "the kernel after the interrupt", mark)

        keys("C-d")  # (exit would run in the kernel: yotonnet's is a plain Python)
        await until(lambda: [w["user"] for w in alice.presence] == ["alice"],
                    "bob's frontend to leave")
        r = await bounded(alice.execute("x"), "the shared kernel after bob left")
        self.assertEqual(r.value, "42")


CHROMIUM = "/usr/bin/chromium"


class _Chromium(ProcessProtocol):
    """Headless Chromium: the DevTools URL it prints on stderr."""

    def __init__(self) -> None:
        self.err = b""
        self.devtools: defer.Deferred[str] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        found = re.search(rb"DevTools listening on (ws://\S+)", self.err)
        if found and not self.devtools.called:
            self.devtools.callback(found.group(1).decode())

    def processEnded(self, reason: Any) -> None:
        if not self.devtools.called:
            self.devtools.errback(AssertionError(f"Chromium ended: {self.err[-2000:]!r}"))
        self.ended.callback(None)


def drive_jupyterlab(devtools: str, url: str, screenshot: str) -> dict:
    """In a thread: open ``url`` in the page of the browser at ``devtools`` (the DevTools
    protocol over tornado's websocket client), run the notebook's cells, and return what
    the page shows: the kernel's name and the cells' output text."""
    import asyncio
    import urllib.request

    from tornado.websocket import websocket_connect

    async def drive() -> dict:
        base = devtools.split("/devtools")[0].replace("ws://", "http://")
        with urllib.request.urlopen(base + "/json", timeout=10) as f:
            pages = [t for t in json.load(f) if t["type"] == "page"]
        conn = await websocket_connect(pages[0]["webSocketDebuggerUrl"],
                                       max_message_size=64 << 20)
        ids = iter(range(1, 1 << 30))

        async def call(method: str, **params: Any) -> dict:
            n = next(ids)
            await conn.write_message(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await conn.read_message())
                if msg.get("id") == n:
                    if "error" in msg:
                        raise AssertionError(f"{method}: {msg['error']}")
                    return msg["result"]

        async def page(expression: str) -> Any:
            result = await call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                returnByValue=True)
            if "exceptionDetails" in result:
                raise AssertionError(f"{expression}: {result['exceptionDetails']}")
            return result["result"].get("value")

        async def until_page(expression: str, what: str) -> Any:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                value = await page(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)
            shot = await call("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            raise AssertionError(f"JupyterLab never showed {what} (screenshot: {screenshot})")

        try:
            await call("Page.navigate", url=url)
            await until_page("!!(window.jupyterapp && document.querySelector('.jp-Notebook'))",
                             "the notebook")
            panel = ("Array.from(jupyterapp.shell.widgets('main'))"
                     ".find(w => w.context && w.context.path === 'shared.ipynb')")
            kernel = await until_page(
                f"(() => {{ const p = {panel}; const s = p && p.sessionContext.session;"
                " return s && s.kernel && s.kernel.status === 'idle' && s.kernel.name; })()",
                "its kernel idle")
            shown = await page("document.querySelector('.jp-KernelName').innerText")
            # (the run is not awaited: the output tells when it is done; a headless
            # browser has no focus, so the notebook is made the current widget first)
            await page(f"(() => {{ jupyterapp.shell.activateById(({panel}).id); void "
                       "jupyterapp.commands.execute('notebook:run-all-cells'); return 1; })()")
            output = await until_page(
                "Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                ".map(e => e.innerText).join('')", "the output")
            shot = await call("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            return {"kernel": kernel, "shown": shown, "output": output}
        finally:
            conn.close()

    return asyncio.run(asyncio.wait_for(drive(), 80))


def in_thread(fn: Any, *args: Any) -> defer.Deferred:
    """``fn(*args)`` in a daemon thread of its own (nothing waits to join it)."""
    d: defer.Deferred = defer.Deferred()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the reactor
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    return d


class JupyterLabTests(TestCase):
    timeout = 120

    async def test_a_notebook_in_jupyterlab_runs_in_the_shared_kernel(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(f"{CHROMIUM} is absent (Debian package 'chromium'; `make sysdeps`)")
        import nbformat

        ep = await shared_kernel(self)
        use_jupyter_path(self, await install(self, ep, "bob"))
        _, alice, rec = await attach(self, ep, "j", "alice")
        root = tempfile.mkdtemp(prefix="yotonnet-lab-")
        self.addCleanup(shutil.rmtree, root, True)
        code = "print('from the lab', 6 * 7)"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "yotonnet-j", "display_name": "j on the mesh",
                                     "language": "python"}
        nbformat.write(nb, os.path.join(root, "shared.ipynb"))
        # JupyterLab's settings, workspaces and server files in the test's directory, not
        # in the home directory.
        home = os.path.join(root, ".home")
        set_env(self, JUPYTER_CONFIG_DIR=os.path.join(home, "config"),
                JUPYTER_RUNTIME_DIR=os.path.join(home, "runtime"),
                JUPYTERLAB_SETTINGS_DIR=os.path.join(home, "settings"),
                JUPYTERLAB_WORKSPACES_DIR=os.path.join(home, "workspaces"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs.spawn_peer(self, "jupyterlab", "--no-browser", "--allow-root",
                         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                         "--IdentityProvider.token=lab-token", f"--ServerApp.root_dir={root}",
                         "--LabApp.expose_app_in_browser=True", label="jupyter lab",
                         script="-m")

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        await until(listening, "JupyterLab to listen")
        profile = tempfile.mkdtemp(prefix="yotonnet-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        chromium = _Chromium()
        reactor.spawnProcess(chromium, CHROMIUM, [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--window-size=1200,800", "about:blank"], env=dict(os.environ, HOME=profile))

        async def stop_chromium() -> None:
            if not chromium.ended.called:
                chromium.transport.signalProcess("TERM")
                try:
                    await bounded(chromium.ended, "Chromium to end", 10)
                except AssertionError:
                    chromium.transport.signalProcess("KILL")
                    await chromium.ended

        self.addCleanup(lambda: defer.ensureDeferred(stop_chromium()))
        devtools = await bounded(chromium.devtools, "Chromium's DevTools")
        # The test's output directory (_trial_temp, as trial's, which git ignores).
        out_dir = os.path.abspath(os.path.join("_trial_temp", "screenshots"))
        os.makedirs(out_dir, exist_ok=True)
        screenshot = os.path.join(out_dir, "jupyterlab-notebook.png")
        shown = await bounded(in_thread(
            drive_jupyterlab, devtools,
            f"http://127.0.0.1:{port}/lab/tree/shared.ipynb?token=lab-token", screenshot),
            "JupyterLab to run the notebook", 90)
        self.assertEqual((shown["kernel"], shown["shown"]), ("yotonnet-j", "j on the mesh"))
        self.assertEqual(shown["output"], "from the lab 42\n")
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        await until(lambda: ("bob", code) in [(m["user"], m["text"])
                                              for m in rec.kinds(p.EXECUTE)],
                    "alice to see the notebook's code run as bob")


def local_frontend(testcase: TestCase) -> tuple[Any, dict[str, Any], Any]:
    """A frontend process's Jupyter side, in this process, on ipc sockets of a fresh
    connection (not attached to any kernel: a test hands it records itself); it, the
    connection, and a zmq context for the test's own frontend sockets."""
    import zmq

    from yotonnet.kernel.frontend import JupyterFrontend

    where = tempfile.mkdtemp(prefix="yotonnet-frontend-")
    testcase.addCleanup(shutil.rmtree, where, True)
    connection = {"transport": "ipc", "ip": os.path.join(where, "k"), "key": "secret",
                  "signature_scheme": "hmac-sha256",
                  **{f"{c}_port": n for n, c in enumerate(
                      ("shell", "iopub", "stdin", "control", "hb"), 1)}}
    frontend = JupyterFrontend(reactor, connection, "j")
    frontend.bind()
    testcase.addCleanup(frontend.close)
    ctx = zmq.Context()
    testcase.addCleanup(ctx.destroy, 0)
    return frontend, connection, ctx


class FrontendPacingTests(TestCase):
    timeout = 60

    async def test_a_slow_frontend_holds_the_records_back_and_loses_none(self) -> None:
        import zmq

        from yotonnet.kernel.frontend import socket_url

        frontend, connection, ctx = local_frontend(self)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 10)  # a frontend that takes little at a time
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(socket_url(connection, "iopub"))
        await until(lambda: frontend.subscribed, "the subscription")

        # The shared kernel's records, as a KernelClient hands them over: the next only
        # once the Deferred of the one before (if any) has fired.
        count = 3_000
        records = [{"seq": 1, "kind": p.EXECUTE, "text": "loop()", "exec": 1, "user": "bob",
                    "client": "x"}]
        records += [{"seq": n, "kind": p.STDOUT, "text": f"{n} {'y' * 1000}\n", "exec": 1,
                     "user": "bob"} for n in range(2, count + 2)]
        taken = 0
        held: defer.Deferred | None = None
        while taken < len(records) and held is None:
            held = frontend.on_record(records[taken])
            taken += 1
        self.assertIsNotNone(held)  # the frontend did not read: the records wait
        self.assertLess(taken, len(records))
        await sleep(0.3)
        self.assertFalse(held.called)

        async def feed() -> None:
            nonlocal taken
            pace: Any = held
            while taken < len(records):
                if pace is not None:
                    await pace
                pace = frontend.on_record(records[taken])
                taken += 1

        feeding = defer.ensureDeferred(feed())
        got: list[dict] = []

        def read() -> bool:
            while True:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return len(got) >= count + 3
                _, parts = frontend.session.feed_identities(frames)
                got.append(frontend.session.deserialize(parts))

        await until(read, "every message", 30)
        await bounded(feeding, "the last record")
        kinds = [m["msg_type"] for m in got]
        self.assertEqual(kinds[:3], ["status", "status", "execute_input"])  # starting, busy
        texts = [m["content"]["text"] for m in got if m["msg_type"] == "stream"]
        self.assertEqual(texts, [r["text"] for r in records[1:]])
        self.assertEqual({m["parent_header"]["username"] for m in got[1:]}, {"bob"})


class FrontendReconnectTests(TestCase):
    """A frontend that closes its IOPub socket mid-stream and subscribes again."""

    timeout = 60

    def setUp(self) -> None:
        self.frontend, self.connection, self.ctx = local_frontend(self)
        self.records = [{"seq": 1, "kind": p.EXECUTE, "text": "loop()", "exec": 1,
                         "user": "bob", "client": "x"}]
        self.records += [{"seq": n, "kind": p.STDOUT, "text": f"line {n}\n", "exec": 1,
                          "user": "bob"} for n in range(2, 402)]
        self.fed = 0

    def feed(self, n: int) -> None:
        for record in self.records[self.fed:self.fed + n]:
            self.assertIsNone(self.frontend.on_record(record))  # (nothing holds them)
        self.fed += n

    def subscribe(self) -> Any:
        import zmq

        from yotonnet.kernel.frontend import socket_url

        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(socket_url(self.connection, "iopub"))
        return sub

    def receive(self, sock: Any, limit: int | None = None) -> list[dict]:
        """What ``sock`` has now (at most ``limit`` messages), deserialized."""
        import zmq

        got: list[dict] = []
        session = self.frontend.session
        while limit is None or len(got) < limit:
            if not sock.poll(100):
                break
            _, parts = session.feed_identities(sock.recv_multipart(zmq.NOBLOCK))
            got.append(session.deserialize(parts))
        return got

    async def ask(self, msg_type: str, content: dict) -> dict:
        """A shell request from a frontend's DEALER socket: its reply's content."""
        import zmq

        from yotonnet.kernel.frontend import socket_url

        shell = self.ctx.socket(zmq.DEALER)
        shell.connect(socket_url(self.connection, "shell"))
        self.frontend.session.send(shell, msg_type, content)
        replies: list[dict] = []

        def answered() -> bool:
            if shell.poll(0):
                _, parts = self.frontend.session.feed_identities(shell.recv_multipart())
                replies.append(self.frontend.session.deserialize(parts))
            return bool(replies)

        await until(answered, f"the {msg_type}'s reply")
        shell.close(0)
        return replies[0]["content"]

    async def test_a_frontend_that_names_the_last_message_it_saw_gets_the_rest(
            self) -> None:
        frontend = self.frontend
        old = self.subscribe()
        await until(lambda: frontend.subscribed, "the subscription")
        self.feed(101)
        # The frontend reads part of it; the rest sits unread in its socket when it goes.
        seen = self.receive(old, 60)
        self.assertEqual(len(seen), 60)
        old.close(0)
        await until(lambda: not frontend.subscribed, "the unsubscription")
        self.feed(200)  # published while nobody listens: they wait
        self.assertEqual(frontend.log.waiting(), 200)
        bad = await self.ask("yotonnet_replay_request", {"after": "no-such-message"})
        self.assertEqual((bad["status"], bad["ename"]), ("error", "LookupError"))
        self.assertIn("no-such-message", bad["evalue"])
        reply = await self.ask("yotonnet_replay_request", {"after": seen[-1]["msg_id"]})
        self.assertEqual((reply["status"], reply["after"]), ("ok", seen[-1]["msg_id"]))
        self.feed(50)  # still before the new subscription
        new = self.subscribe()
        await until(lambda: frontend.subscribed, "the new subscription")
        later: list[dict] = []
        total = 3 + self.fed - 1  # starting, busy, execute_input, then a stream a record
        await until(lambda: (later.extend(self.receive(new, 50)), len(later))[1] >= total - 60,
                    "what it missed")
        whole = seen + later
        ids = [m["msg_id"] for m in whole]
        self.assertEqual(len(ids), len(set(ids)))  # each once
        texts = [m["content"]["text"] for m in whole if m["msg_type"] == "stream"]
        self.assertEqual(texts, [r["text"] for r in self.records[1:self.fed]])
        self.assertEqual([m["msg_type"] for m in whole[:3]],
                         ["status", "status", "execute_input"])  # starting, busy
        self.assertEqual(frontend.counters["iopub_replayed"], 3 + 100 - 60)

        # Without a request, what was published while nobody listened goes out.
        new.close(0)
        await until(lambda: not frontend.subscribed, "the unsubscription")
        self.feed(49)
        again = self.subscribe()
        await until(lambda: frontend.subscribed, "the third subscription")
        last: list[dict] = []
        await until(lambda: (last.extend(self.receive(again, 50)), len(last))[1] >= 49,
                    "what waited")
        self.assertEqual([m["content"]["text"] for m in last],
                         [r["text"] for r in self.records[self.fed - 49:self.fed]])

    async def test_past_the_bounds_the_loss_is_said(self) -> None:
        frontend = self.frontend
        frontend.log.keep_messages = 100
        self.feed(len(self.records))  # nobody ever listened: 403 messages, 100 kept
        sub = self.subscribe()
        got: list[dict] = []
        await until(lambda: (got.extend(self.receive(sub, 50)), len(got))[1] >= 101,
                    "what was kept, and the note")
        self.assertEqual([m["content"]["text"] for m in got[:100]],
                         [r["text"] for r in self.records[-100:]])
        self.assertEqual(got[100]["content"]["name"], "stderr")
        self.assertIn("303 IOPub messages published while no frontend listened are no "
                      "longer kept", got[100]["content"]["text"])

    async def test_someone_elses_input_is_said_once(self) -> None:
        frontend = self.frontend
        sub = self.subscribe()
        await until(lambda: frontend.subscribed, "the subscription")
        self.feed(1)
        frontend.public_id = "mine"
        waiting = {"user": "bob", "client": "x", "exec": 1, "prompt": "who? "}
        frontend.on_status({"state": p.BUSY, "input": waiting})
        frontend.on_status({"state": p.BUSY, "input": dict(waiting)})  # (the same input)
        frontend.on_status({"state": p.BUSY, "input": None})
        frontend.on_status({"state": p.BUSY, "input": dict(waiting, client="mine", exec=2)})
        got = self.receive(sub)
        notes = [m for m in got if m["msg_type"] == "stream"]
        self.assertEqual([m["content"]["text"] for m in notes],
                         ["[j: waiting for input from bob (who?)]\n"])
        self.assertEqual(notes[0]["parent_header"]["username"], "bob")


class FakeKernelClient:
    """What a frontend process needs of its KernelClient, for a test to run the kernel
    side by hand: ``execute`` returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.caller = type("Caller", (), {"user": "bob"})()
        self.role = "collaborator"
        self.public_id = "bob-client"
        self.runs: list[tuple[str, defer.Deferred]] = []

    def status(self) -> dict:
        return {"broker": "b0"}

    def watch_status(self, callback: Any) -> None:
        pass

    def execute(self, code: str, parent: dict | None = None) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.runs.append((code, d))
        return d


class FrontendStdinTests(TestCase):
    timeout = 30

    async def test_input_waits_for_a_stdin_socket_that_connects_late(self) -> None:
        import zmq

        from yotonnet.kernel.frontend import socket_url

        frontend, connection, ctx = local_frontend(self)
        client = FakeKernelClient()
        frontend.attached(client)
        session = frontend.session
        shell = ctx.socket(zmq.DEALER)
        shell.setsockopt(zmq.IDENTITY, b"frontend-1")
        shell.connect(socket_url(connection, "shell"))
        session.send(shell, "execute_request", {"code": "input('who? ')", "silent": False,
                                                "allow_stdin": True})
        await until(lambda: bool(client.runs), "the execution to reach the kernel side")
        answer = frontend.on_input("who? ", False)
        await sleep(0.3)  # the frontend's stdin is not there yet: the request waits
        self.assertFalse(answer.called)
        stdin = ctx.socket(zmq.DEALER)
        stdin.setsockopt(zmq.IDENTITY, b"frontend-1")  # (as jupyter_client: one identity)
        stdin.connect(socket_url(connection, "stdin"))
        asked: list[dict] = []

        def got_request() -> bool:
            if stdin.poll(0):
                _, parts = session.feed_identities(stdin.recv_multipart())
                asked.append(session.deserialize(parts))
            return bool(asked)

        await until(got_request, "the input_request")
        self.assertEqual((asked[0]["msg_type"], asked[0]["content"]["prompt"]),
                         ("input_request", "who? "))
        session.send(stdin, "input_reply", {"value": "bob-typed"}, parent=asked[0]["header"])
        self.assertEqual(await bounded(answer, "the answer"), "bob-typed")


class InstallCommandTests(TestCase):
    timeout = 60

    async def test_install_writes_the_kernelspec(self) -> None:
        prefix = tempfile.mkdtemp(prefix="yotonnet-kernelspec-")
        self.addCleanup(shutil.rmtree, prefix, True)
        token = os.path.relpath(path("bob.token"), procs.REPO_ROOT)
        out, err, code = await procs.yotonnet_command(
            "jupyter", "install", "Lab.K", "--prefix", prefix, "--connect", "tcp:hub:7200",
            "--token-file", token, "--display-name", "The lab kernel", "--history", "5",
            module="yotonnet.cli")
        self.assertEqual(code, 0, err)
        spec_dir = os.path.join(prefix, "share", "jupyter", "kernels", "yotonnet-lab.k")
        self.assertIn(spec_dir, out)
        with open(os.path.join(spec_dir, "kernel.json")) as f:
            spec = json.load(f)
        self.assertEqual(spec["argv"][:6], [sys.executable, "-m", "yotonnet.kernel.frontend",
                                            "-f", "{connection_file}", "Lab.K"])
        argv = spec["argv"][6:]
        self.assertEqual(argv[argv.index("--connect") + 1], "tcp:hub:7200")
        self.assertEqual(argv[argv.index("--token-file") + 1], path("bob.token"))  # absolute
        self.assertEqual(argv[argv.index("--history") + 1], "5")
        self.assertEqual(argv[argv.index("--shutdown") + 1], "detach")
        self.assertEqual((spec["display_name"], spec["interrupt_mode"], spec["language"]),
                         ("The lab kernel", "message", "python"))
        out, err, code = await procs.yotonnet_command(
            "jupyter", "install", "k", "--prefix", prefix, "--token-file", "/no/such.token",
            module="yotonnet.cli")
        self.assertEqual(code, 1)
        self.assertIn("/no/such.token: no such file", err)
