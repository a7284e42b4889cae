"""Ring 3: kernel roles from real authenticated identities (issue 7, item 4).

A ``yotonnet node`` process requires tokens (users alice, bob, eve and
``kernel``, the broker's own login); ``yotonnet kernel shared`` joins it as
an ordinary client of that node (it serves channels, it relays nothing, so
it needs no ``nodes`` trust) with roles given by user: alice owner, bob
collaborator, eve viewer. Consoles and clients log in with their own token
files over TCP on loopback, as users would:

* bob executes; eve is refused (PermissionDenied naming her role) and still
  sees bob's output;
* a client that claims to be alice while logged in as eve is eve: viewer
  role, eve in the presence list, refused;
* the presence list names the authenticated users;
* ``input()`` in code bob ran asks bob, even when eve serves the input
  channel named by what presence shows of bob (a digest), and asks nobody
  (bob's ``input()`` fails saying why) when she serves his real one; nor can
  she detach or attach in the name of his client id;
* a client behind a trusted node, claiming to be alice, is who that node
  says it is (its OS user, for a process that proved the local secret);
* ``yotonnet console`` with ``--token-file``: ``-c`` code of bob runs (exit
  0), eve's is refused (exit 1, the reason on stderr) even with ``--user
  alice``; the interactive console greets bob by his login and knows his own
  code when it comes back; without ``--user`` a console is its login
  (``%who``); a wrong token gets in nowhere.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

import procs
from kernel_support import FAST, Recorder
from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase
from waits import bounded, until

from yotonnet import Context, RepChannel, ReqChannel
from yotonnet.errors import RemoteError
from yotonnet.kernel import KernelClient
from yotonnet.kernel import protocol as p
from yotonnet.security.auth import local_identity
from yotonnet.security.settings import Security

USERS = ("alice", "bob", "eve", "kernel", "relay")


def _credentials(directory: str) -> None:
    """tokens.txt for the node and USER.token for each user, in ``directory``."""
    with open(os.path.join(directory, "tokens.txt"), "w") as f:
        for user in USERS:
            token = f"{user}-token-{os.urandom(12).hex()}"
            f.write(f"{user} {token}\n")
            with open(os.path.join(directory, f"{user}.token"), "w") as t:
                t.write(token + "\n")


class _Collect(ProcessProtocol):
    """A command's stdout, stderr and exit code, with ``stdin`` written to it first."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin, self.out, self.err = stdin, b"", b""
        self.code: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.code = getattr(reason.value, "exitCode", None)
        self.code = -1 if self.code is None else self.code
        self.ended.callback(None)


class AuthenticatedKernelTests(TestCase):
    timeout = 120

    async def start_mesh(self) -> str:
        """The token-checking node and the broker linked to it; returns the node endpoint."""
        self.dir = tempfile.mkdtemp(prefix="yotonnet-kernel-auth-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        _credentials(self.dir)
        with open(self.file("hub.toml"), "w") as f:
            f.write('[security]\nnodes = ["relay"]\n')  # a mesh node: it relays for others
        node = procs.spawn_peer(
            self, "yotonnet.cli", "node", "--name", "hub", "--listen",
            "tcp:0:interface=127.0.0.1", "--tokens", self.file("tokens.txt"),
            "--config", self.file("hub.toml"),
            label="yotonnet node", script="-m")
        line = await self.wait_line(node, "ready on ")
        port = re.search(r"ready on \S*?:(\d+)", line)
        self.assertIsNotNone(port, line)
        endpoint = f"tcp:127.0.0.1:{port.group(1)}"
        kernel = procs.spawn_peer(
            self, "yotonnet.cli", "kernel", "shared", "--connect", endpoint,
            "--token-file", self.file("kernel.token"), "--owner", "alice",
            "--role", "bob=collaborator", "--role", "eve=viewer", "--default-role", "viewer",
            label="yotonnet kernel", script="-m")
        await kernel.wait_for("yotonnet kernel shared: ready", 60)
        self.node, self.kernel = node, kernel
        return endpoint

    async def wait_line(self, proc: procs.PeerProcess, text: str) -> str:
        await until(lambda: any(text in x for x in proc.lines), f"a line with {text!r}")
        return next(x for x in proc.lines if text in x)

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    async def login(self, endpoint: str, token_user: str, *, claim: str | None = None,
                    **kwargs: object) -> tuple[Context, KernelClient, Recorder]:
        """A client context logged in with ``token_user``'s token, attached as ``claim``."""
        ctx = Context(f"client-{token_user}", reactor, config=FAST,
                      security=Security(token_file=self.file(f"{token_user}.token")))
        self.addCleanup(ctx.close)
        await bounded(ctx.connect(endpoint), f"{token_user} to log in")
        rec = Recorder()
        client = KernelClient(ctx, "shared", user=claim, on_output=rec, **kwargs)
        await bounded(client.attach(), f"{token_user} to attach")
        self.addCleanup(lambda: defer.ensureDeferred(client.detach()))
        return ctx, client, rec

    async def cli(self, *args: str, stdin: str = "") -> tuple[str, str, int]:
        env = dict(os.environ, PYTHONPATH=procs.REPO_ROOT)
        proto = _Collect(stdin.encode())
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-m", "yotonnet.cli",
                                                     *args], env=env, path=procs.REPO_ROOT)
        try:
            await bounded(proto.ended, f"yotonnet {' '.join(args)}", 60)
        finally:
            if proto.code is None:
                proto.transport.signalProcess("KILL")
        return proto.out.decode(), proto.err.decode(), proto.code

    async def test_roles_come_from_logins_not_claims(self) -> None:
        ep = await self.start_mesh()
        _, bob, bob_rec = await self.login(ep, "bob")
        _, eve, eve_rec = await self.login(ep, "eve")
        _, fake, _ = await self.login(ep, "eve", claim="alice")
        self.assertEqual((bob.role, eve.role, fake.role),
                         ("collaborator", "viewer", "viewer"))
        # The clients learn who the broker knows them as.
        self.assertEqual((bob.caller.user, eve.caller.user, fake.caller.user),
                         ("bob", "eve", "eve"))
        await until(lambda: sorted(w["user"] for w in bob.presence) == ["bob", "eve", "eve"],
                    "the authenticated users in the presence list")
        self.assertEqual({w["user"]: w["role"] for w in bob.presence},
                         {"bob": "collaborator", "eve": "viewer"})

        r = await bounded(bob.execute("print('from bob', 6 * 7)"), "bob's execution")
        self.assertTrue(r.ok, r)
        self.assertEqual(r.user, "bob")
        await bounded(eve.wait_for_seq(r.last_seq), "eve to see bob's output")
        for rec in (bob_rec, eve_rec):
            self.assertIn("from bob 42\n", rec.stdout())
            (ran,) = [m for m in rec.kinds(p.EXECUTE) if m["exec"] == r.id]
            self.assertEqual(ran["user"], "bob")

        for client in (eve, fake):
            with self.assertRaises(RemoteError) as caught:
                await bounded(client.execute("print('eve was here')"), "eve's refusal")
            self.assertEqual(caught.exception.remote_type, "PermissionDenied")
            self.assertIn("'eve' is a viewer of this kernel and may not execute",
                          str(caught.exception))
            with self.assertRaises(RemoteError):
                await bounded(client.interrupt(), "eve's interrupt refused")
        self.assertNotIn("eve was here", bob_rec.stdout())
        # Nobody's claim reached the presence list or the output tags.
        self.assertNotIn("alice", {m["user"] for m in bob_rec.messages})

    async def test_a_claim_behind_a_relay_names_nobody(self) -> None:
        # A mesh node (it logs in as a `nodes` user) relays a client of its own listener
        # that claims to be alice, the owner. The relay vouches for who that client is
        # (here its OS user: it proved the local secret), and the broker goes by that.
        ep = await self.start_mesh()
        relay = Context("relay", reactor, config=FAST,
                        security=Security(token_file=self.file("relay.token")))
        self.addCleanup(relay.close)
        port = await relay.listen("tcp:0:interface=127.0.0.1")
        await bounded(relay.connect(ep), "the relay to log in to the hub")
        local = Context("local", reactor, config=FAST)
        self.addCleanup(local.close)
        await bounded(local.connect(f"tcp:127.0.0.1:{port.getHost().port}"), "local's link")
        client = KernelClient(local, "shared", user="alice")
        self.addCleanup(lambda: defer.ensureDeferred(client.detach()))
        await bounded(client.attach(), "the attach")
        self.assertEqual((client.caller.user, client.role), (local_identity(), "viewer"))
        with self.assertRaises(RemoteError) as caught:
            await bounded(client.execute("print('as alice?')"), "the refusal")
        self.assertIn(f"{local_identity()!r} is a viewer", str(caught.exception))
        # alice, logged in at the hub, is the owner.
        _, alice, _ = await self.login(ep, "alice")
        self.assertEqual((alice.role, alice.caller.user), ("owner", "alice"))

    async def test_input_goes_to_the_authenticated_runner(self) -> None:
        ep = await self.start_mesh()
        prompts: dict[str, list[str]] = {"bob": [], "eve": []}

        def answer(who: str):
            def on_input(prompt: str, password: bool) -> str:
                prompts[who].append(prompt)
                return f"{who}'s answer"

            return on_input

        _, bob, bob_rec = await self.login(ep, "bob", on_input=answer("bob"))
        eve_ctx, eve, _ = await self.login(ep, "eve", on_input=answer("eve"))
        # eve serves the input channel of the client id the presence list shows for bob,
        # and attaches once more claiming to be bob.
        shown = next(w["client"] for w in eve.presence if w["user"] == "bob")
        self.assertEqual(shown, bob.public_id)
        self.spy(eve_ctx, shown, prompts)
        _, fake_bob, _ = await self.login(ep, "eve", claim="bob", on_input=answer("eve"))

        r = await bounded(bob.execute("print('got', input('secret? '))"), "bob's input()")
        self.assertTrue(r.ok, r)
        self.assertEqual(prompts, {"bob": ["secret? "], "eve": []})
        self.assertIn("got bob's answer\n", bob_rec.stdout())
        with self.assertRaises(RemoteError) as caught:
            await bounded(fake_bob.execute("input('x')"), "the fake bob refused")
        self.assertIn("'eve' is a viewer", str(caught.exception))

        # Had bob's secret client id leaked, eve serving his input channel gets nothing
        # either: the broker asks nobody, and bob's input() fails saying why.
        self.spy(eve_ctx, bob.caller.client, prompts)
        chan = p.client_channel_name("shared", bob.caller.client)
        # (bob is a leaf: asking who serves the channel has his node tell him)
        watch = ReqChannel(bob.context, chan)
        self.addCleanup(watch.close)
        await until(lambda: watch.responders == 2, "eve's copy known")
        r = await bounded(bob.execute("input('pin? ')"), "bob's refused input()")
        self.assertFalse(r.ok)
        self.assertIn("also served by", r.message)
        self.assertEqual(prompts, {"bob": ["secret? "], "eve": []})
        # Nor may she act as that client: detach it, or attach in its name.
        leaked = {**fake_bob.caller.to_wire(), "client": bob.caller.client}
        for op in ("detach", "attach"):
            with self.assertRaises(RemoteError) as caught:
                await bounded(fake_bob.control.call(op, leaked), f"a leaked-id {op}")
            self.assertIn("belongs to another attachment", str(caught.exception))
        self.assertIn(bob.public_id, [w["client"] for w in eve.presence])

    def spy(self, ctx: Context, client_id: str, prompts: dict) -> None:
        spy = RepChannel(ctx, p.client_channel_name("shared", client_id))
        spy.register("input", lambda prompt, password: prompts["eve"].append(prompt) or "x")
        self.addCleanup(spy.close)


    async def test_consoles_log_in_with_their_own_tokens(self) -> None:
        ep = await self.start_mesh()
        out, err, code = await self.cli(
            "console", "shared", "--connect", ep, "--token-file", self.file("bob.token"),
            "-c", "print(6 * 7)")
        self.assertEqual((out, code), ("42\n", 0), err)
        out, err, code = await self.cli(
            "console", "shared", "--connect", ep, "--token-file", self.file("eve.token"),
            "--user", "alice", "-c", "print('eve was here')")
        self.assertEqual(code, 1, out + err)
        self.assertNotIn("eve was here", out)
        self.assertIn("'eve' is a viewer of this kernel and may not execute", err)
        # The interactive console (lines from a pipe here) greets bob by his login and
        # knows his own code when it comes back (shown once, not again as "[bob] >>>").
        out, err, code = await self.cli(
            "console", "shared", "--connect", ep, "--token-file", self.file("bob.token"),
            "--user", "alice", stdin="x = 6 * 7\nprint('x is', x)\n")
        self.assertEqual(code, 0, err)
        self.assertIn("kernel shared as bob (collaborator)", out)
        self.assertIn("x is 42\n", out)
        self.assertNotIn("[bob] >>> x = 6 * 7", out)
        self.assertNotIn("[bob] >>> print('x is', x)", out)
        # Without --user, a console is its login (in %who, as the broker sees it).
        out, err, code = await self.cli(
            "console", "shared", "--connect", ep, "--token-file", self.file("eve.token"),
            "-c", "%who")
        self.assertEqual(code, 0, err)
        self.assertIn("eve  viewer (you)", out)
        # A wrong token gets in nowhere, with a message saying why.
        with open(self.file("wrong.token"), "w") as f:
            f.write("not-a-token\n")
        out, err, code = await self.cli(
            "console", "shared", "--connect", ep, "--token-file", self.file("wrong.token"),
            "--timeout", "5", "-c", "print(1)")
        self.assertEqual(code, 1, out + err)
        self.assertIn("token", err.lower())
