"""Ring 3: the attacks that once worked against live nodes, run again as an attacker would.

Each test starts real node processes (``yotonnet node``, ``yotonnet kernel``)
as the README deploys them, runs the attacker in a process of its own
(``tests/attacks/attacker.py``: the standard library and hand-written frames,
as the OS user ``nobody`` where the attacker is another local user), and
checks both that the attack failed and that the legitimate user's work in
the same test succeeded:

1. another local user cannot link to a shared kernel (TCP on loopback or its
   unix socket) nor read the owner's secret; the owner's console works;
2. a local user cannot link to a relay's default listener, and a logged-in
   viewer who forges an identity binding and claims to be the owner is still
   the viewer; the owner runs code;
3. REPLY frames sprayed with guessed request ids complete nobody's call:
   ``input()`` and ``6 * 7`` come back right, the forgeries are counted;
4. one STATE frame with version (2**64-1, 2**64-1) is refused and breaks no
   state: state set/get and the kernel's presence still work;
5. a subscriber that grants itself credit and never reads is cut, the node's
   memory stays bounded, and a real subscriber gets every message;
6. after 600 wrong-password logins that hang up, a right one gets in;
8. a local user holding the port of a node that is down learns no token,
   secret or password from the clients that dial it;
10. a flood of claims the rules deny is cut, and logs a bounded number of lines;
11. a peer whose name is a terminal escape is refused, and ``yotonnet status``
    prints no control byte; the status site refuses a rebinding Host and a
    request without the secret, and answers one with it;
12. the kernel permission rules the README recommends work, input() included.

Figures (time to log in after the storm, memory growth) are printed, never
asserted as times. Tests that need a second OS user skip, saying why, where
there is none (not root, no runuser); CI runs as root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time

import procs
from asuser import run_as_stranger, spawn_as_stranger, stranger_unavailable
from certs_fixture import PASSWORDS, TOKENS, path
from kernel_support import FAST, Recorder
from nodeproc import rss
from twisted.internet import defer, reactor, threads, utils
from twisted.trial.unittest import SkipTest, TestCase
from waits import bounded, sleep, until

from yotonnet import Context, PubChannel, SubChannel
from yotonnet.errors import RemoteError
from yotonnet.kernel import KernelClient
from yotonnet.security.auth import local_identity, os_user
from yotonnet.security.localsecret import secret_path
from yotonnet.security.settings import Security

README = os.path.join(procs.REPO_ROOT, "README.md")
MiB = 1024 * 1024


def findings(out: str) -> dict[str, list[str]]:
    """The attacker's ``KEY: value`` lines, by key."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            found.setdefault(key, []).append(value)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AttackTestCase(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="yotonnet-attacks-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def need_stranger(self) -> None:
        why = stranger_unavailable()
        if why:
            raise SkipTest(why)

    def file(self, name: str, text: str | None = None) -> str:
        where = os.path.join(self.dir, name)
        if text is not None:
            with open(where, "w") as f:
                f.write(text)
        return where

    async def node(self, name: str, *args: str, config: str = "") -> tuple[procs.PeerProcess,
                                                                            str]:
        """``yotonnet node`` on a loopback port (tokens of certs_fixture checked); returns
        the process and its endpoint."""
        extra = ["--config", self.file(f"{name}.toml", config)] if config else []
        proc = procs.spawn_peer(
            self, "yotonnet.cli", "node", "--name", name, "--listen",
            "tcp:0:interface=127.0.0.1", "--tokens", path("tokens.txt"), *extra, *args,
            label=f"node {name}", script="-m")
        line = await self._line(proc, "ready on ")
        port = re.search(r"ready on \S*?:(\d+)", line)
        self.assertIsNotNone(port, line)
        return proc, f"tcp:127.0.0.1:{port.group(1)}"

    async def _line(self, proc: procs.PeerProcess, text: str, timeout: float = 30) -> str:
        await until(lambda: any(text in x for x in proc.lines), f"a line with {text!r}",
                    timeout)
        return next(x for x in proc.lines if text in x)

    async def kernel(self, *args: str) -> procs.PeerProcess:
        proc = procs.spawn_peer(self, "yotonnet.cli", "kernel", "shared", *args,
                                label="yotonnet kernel", script="-m")
        await proc.wait_for("yotonnet kernel shared: ready", 60)
        return proc

    async def attack(self, *args: str, stranger: bool = True, **env: str) -> dict:
        """Run the attacker to its end; its findings by key."""
        if stranger:
            self.need_stranger()
            code, out, err = await bounded(
                run_as_stranger("attacker.py", *args, env=env), f"the attack {args[0]}", 120)
        else:
            script = os.path.join(procs.REPO_ROOT, "tests", "attacks", "attacker.py")
            out_b, err_b, code = await bounded(utils.getProcessOutputAndValue(
                sys.executable, [script, *args], env={**os.environ, **env}), "the attack", 120)
            out, err = out_b.decode(), err_b.decode()
        self.assertEqual(code, 0, f"the attacker itself failed:\n{out}\n{err}")
        print(f"attack {args[0]}: {out.strip()[-600:]}")
        return findings(out)

    async def cli(self, *args: str, timeout: float = 60) -> tuple[str, str, int]:
        env = dict(os.environ, PYTHONPATH=procs.REPO_ROOT)
        out, err, code = await bounded(
            utils.getProcessOutputAndValue(sys.executable, ["-m", "yotonnet.cli", *args],
                                           env=env, path=procs.REPO_ROOT),
            f"yotonnet {' '.join(args[:2])}", timeout)
        return out.decode(), err.decode(), code

    async def client(self, endpoint: str, user: str, **kw) -> Context:
        ctx = Context(f"client-{user}", reactor, config=FAST,
                      security=Security(token_file=path(f"{user}.token"), **kw))
        self.addCleanup(ctx.close)
        await bounded(ctx.connect(endpoint), f"{user} to log in")
        return ctx


class LocalUser(AttackTestCase):
    async def test_another_local_user_cannot_link_to_a_shared_kernel(self) -> None:
        self.need_stranger()
        sockets = tempfile.mkdtemp(prefix="yotonnet-sock-")
        self.addCleanup(shutil.rmtree, sockets, True)
        os.chmod(sockets, 0o755)  # only the socket's own mode may keep others out
        unix = os.path.join(sockets, "kernel.sock")
        kernel = procs.spawn_peer(
            self, "yotonnet.cli", "kernel", "shared", "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", f"unix:{unix}", label="yotonnet kernel", script="-m")
        line = await kernel.wait_for("yotonnet kernel shared: listening on ", 60)
        await kernel.wait_for("yotonnet kernel shared: ready", 60)
        where = line.rsplit(" ", 1)[1]
        self.assertEqual(stat.S_IMODE(os.stat(unix).st_mode), 0o600)

        for auth in ("none", "secret"):
            found = await self.attack("link", where, auth)
            self.assertNotIn("up", found)
            (refusal,) = found["refused"]
            self.assertIn("authentication required", refusal)
            self.assertIn(f"local secret of OS user {os_user()}", refusal)
            self.assertIn("--token-file", refusal)  # what another user can do instead
        found = await self.attack("link", unix)
        self.assertIn("Permission denied", found["refused"][0])
        found = await self.attack("secret", secret_path())
        self.assertIn("none readable", found["secret"][0])

        # The owner, with no flags at all, runs code, by TCP and by the unix socket.
        for endpoint in (f"tcp:{where}", f"unix:{unix}"):
            out, err, code = await self.cli("console", "shared", "--connect", endpoint,
                                            "--user", "somebody-else", "-c", "print(6 * 7)")
            self.assertEqual((out, code), ("42\n", 0), err)
        out, err, code = await self.cli("console", "shared", "--connect", f"tcp:{where}",
                                        "-c", "%who")
        self.assertIn(f"{local_identity()}  owner (you)", out, err)


class ForgedIdentity(AttackTestCase):
    async def test_a_relay_admits_no_stranger_and_forged_identities_name_nobody(self) -> None:
        self.need_stranger()
        hub, hub_ep = await self.node("hub", config='[security]\nnodes = ["b"]\n')
        await self.kernel("--connect", hub_ep, "--token-file", path("carol.token"),
                          "--owner", "alice", "--role", "bob=collaborator")
        relay, relay_ep = await self.node("relay", "--peer", hub_ep, "--token-file",
                                          path("b.token"))
        await self._line(relay, "link up to hub")
        where = relay_ep[len("tcp:"):]
        # Another local user at the relay's default listener, as the attack did it.
        for auth in ("none", "secret"):
            found = await self.attack("link", where, auth)
            self.assertNotIn("up", found)
            self.assertIn("authentication required", found["refused"][0])
        # eve, logged in with few rights, binds her node to "alice" and calls as alice.
        caller = {"user": "alice", "client": "0123456789abcdef", "node": 0}
        found = await self.attack(
            "call", hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}", "kernel.shared.control",
            "execute", json.dumps([caller, "print(open('/etc/hostname').read())"]), "alice")
        status, body = json.loads(found["reply"][0])
        self.assertEqual((status, body[0]), (1, "PermissionDenied"))
        self.assertIn("'eve' is a viewer of this kernel and may not execute", body[1])
        # alice, logged in for real, owns the kernel and runs code.
        ctx = await self.client(hub_ep, "alice")
        alice = KernelClient(ctx, "shared", on_output=Recorder())
        self.addCleanup(lambda: defer.ensureDeferred(alice.detach()))
        await bounded(alice.attach(), "alice's attach")
        self.assertEqual((alice.caller.user, alice.role), ("alice", "owner"))
        result = await bounded(alice.execute("6 * 7"), "alice's execute")
        self.assertEqual(result.value, "42")


class ForgedReplies(AttackTestCase):
    async def test_sprayed_replies_complete_nobodys_call(self) -> None:
        _hub, hub_ep = await self.node("hub")
        await self.kernel("--connect", hub_ep, "--token-file", path("carol.token"),
                          "--owner", "alice")
        ctx = await self.client(hub_ep, "alice")
        rec = Recorder()
        alice = KernelClient(ctx, "shared", on_output=rec,
                             on_input=lambda prompt, password: "NL00 ALICE 0001")
        self.addCleanup(lambda: defer.ensureDeferred(alice.detach()))
        await bounded(alice.attach(), "alice's attach")
        spray = defer.ensureDeferred(self.attack(
            "spray", hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}", "kernel.shared.client.evil",
            "32", stranger=not stranger_unavailable(), SPRAY_SECONDS="6"))
        await until(lambda: ctx.counters["replies_dropped"] > 0, "the spray to reach alice")
        answers, products = [], []
        while not spray.called:
            r = await bounded(alice.execute(
                "print('to', input('Transfer 1000 EUR to account: '))"), "alice's input()")
            answers.append(r.ok)
            products.append((await bounded(alice.execute("6 * 7"), "alice's 6 * 7")).value)
        found = await spray
        self.assertIn("sprayed", found)
        self.assertTrue(answers and all(answers))
        self.assertEqual(set(products), {"42"})
        self.assertEqual(rec.stdout(), "to NL00 ALICE 0001\n" * len(answers))
        self.assertNotIn("attacker", rec.stdout())
        print(f"alice's node dropped {ctx.counters['replies_dropped']} forged replies while "
              f"{len(answers)} input()s and {len(products)} calls came back right")


class PoisonedState(AttackTestCase):
    RULES = """[security]
[[security.permissions]]
who = ["alice", "carol", "bob"]
channels = ["*"]
operations = ["publish", "subscribe", "call", "serve", "set-state"]
[[security.permissions]]
who = ["eve"]
channels = ["scratch.*"]
operations = ["subscribe", "set-state"]
"""

    async def test_one_poisoned_state_frame_breaks_nothing(self) -> None:
        _hub, hub_ep = await self.node("hub", config=self.RULES)
        await self.kernel("--connect", hub_ep, "--token-file", path("carol.token"),
                          "--owner", "alice")
        found = await self.attack("poison", hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}",
                                  "scratch.pad", stranger=not stranger_unavailable())
        self.assertTrue(any("out of range" in e for e in found["errors"]), found)
        alice = ("--connect", hub_ep, "--token-file", path("alice.token"))
        for channel in ("settings", "scratch.pad"):
            out, err, code = await self.cli("state", "set", channel, '{"theme": "dark"}',
                                            *alice)
            self.assertEqual(code, 0, err)
            out, err, code = await self.cli("state", "get", channel, *alice)
            self.assertEqual((json.loads(out), code), ({"theme": "dark"}, 0), err)
        # The broker still publishes presence: alice attaches.
        ctx = await self.client(hub_ep, "alice")
        client = KernelClient(ctx, "shared", on_output=Recorder())
        self.addCleanup(lambda: defer.ensureDeferred(client.detach()))
        await bounded(client.attach(), "alice's attach")
        await until(lambda: [w["user"] for w in client.presence] == ["alice"], "presence")


class GreedySubscriber(AttackTestCase):
    async def test_self_granted_credit_is_cut_and_memory_stays_bounded(self) -> None:
        hub, hub_ep = await self.node("hub")
        pub_ctx = await self.client(hub_ep, "alice")
        sub_ctx = await self.client(hub_ep, "bob")
        got: list[str] = []
        SubChannel(sub_ctx, "feed").subscribe(got.append)
        pub = PubChannel(pub_ctx, "feed")
        await bounded(pub.wait_for_subscribers(), "bob's subscription")
        before = rss(hub.transport.pid)
        sent = 0
        payload = "x" * 4000
        for variant in ("credit", "credit-paced"):
            attack = defer.ensureDeferred(self.attack(
                variant, hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}", "feed", "4",
                stranger=not stranger_unavailable()))
            while not attack.called:
                if pub.writable:
                    for _ in range(50):
                        pub.send(f"{sent} {payload}")
                        sent += 1
                else:
                    await bounded(pub.ready(), "credit for the publisher")
                await sleep(0)
            found = await attack
            errors = " ".join(found.get("errors", []))
            self.assertTrue("CREDIT of" in errors or "slow consumer" in errors
                            or "read" in found, found)
        growth = rss(hub.transport.pid) - before
        print(f"published {sent} messages of 4 KB; hub RSS growth {growth / MiB:.1f} MiB")
        self.assertLess(growth, 64 * MiB)
        await until(lambda: len(got) == sent, "bob's copy of every message", 60)
        self.assertEqual([int(m.split()[0]) for m in got], list(range(sent)))


class PasswordStorm(AttackTestCase):
    async def test_a_right_login_gets_in_after_a_storm_of_wrong_ones(self) -> None:
        self.need_stranger()
        hub, hub_ep = await self.node("hub", "--passwords", path("passwords.txt"))
        found = await self.attack("storm", hub_ep[len("tcp:"):], "600", "carol")
        self.assertEqual(found["stormed"], ["600"])
        (user, password), = PASSWORDS.items()
        ctx = Context("carol", reactor, config=FAST,
                      security=Security(user=user, password=password))
        self.addCleanup(ctx.close)
        started = time.monotonic()
        link = await bounded(ctx.connect(hub_ep), "carol's login", 10)
        print(f"right login {time.monotonic() - started:.3f} s after 600 wrong ones")
        self.assertEqual(link.authenticated_as, user)
        self.assertNotIn("Traceback", "\n".join(hub.lines))


class Impostor(AttackTestCase):
    async def test_a_port_holder_learns_no_credential(self) -> None:
        self.need_stranger()
        port = free_port()
        secret_file = self.file("password", PASSWORDS["carol"] + "\n")
        endpoint = f"tcp:127.0.0.1:{port}"
        ways = {
            "token": ("--token-file", path("alice.token")),
            "password": ("--login", "carol", "--password-file", secret_file),
            "secret": (),
        }
        # It gives up once each way's client has dialled it and gone (or after 12 s).
        impostor = spawn_as_stranger(self, "attacker.py", "impostor", str(port), "12",
                                     str(len(ways)))
        await impostor.wait_for("listening: ", 30)
        for how, flags in ways.items():
            out, err, code = await self.cli("pub", "news", "hello", "--connect", endpoint,
                                            "--timeout", "5", *flags)
            self.assertEqual(code, 1, f"{how}: {out}{err}")
            self.assertIn("could not prove it knows", err, how)
        await bounded(impostor.ended, "the impostor to give up", 30)
        received = bytes.fromhex(impostor.lines[-1].split(": ", 1)[1])
        with open(secret_path(), "rb") as f:
            secret = f.read().strip()
        for leaked in (TOKENS["alice"].encode(), PASSWORDS["carol"].encode(), secret):
            self.assertNotIn(leaked, received)
        self.assertGreater(len(received), 100, "the clients did dial the impostor")
        # The real node on that port: the same commands work.
        node = procs.spawn_peer(self, "yotonnet.cli", "node", "--name", "real", "--listen",
                                f"tcp:{port}:interface=127.0.0.1", "--tokens",
                                path("tokens.txt"), "--passwords", path("passwords.txt"),
                                label="node real", script="-m")
        await self._line(node, "ready on ")
        for how, flags in ways.items():
            out, err, code = await self.cli("pub", "news", "hello", "--connect", endpoint,
                                            *flags)
            self.assertEqual(code, 0, f"{how}: {err}")


class DeniedClaims(AttackTestCase):
    RULES = """[security]
[[security.permissions]]
who = ["alice", "bob"]
channels = ["*"]
operations = ["publish", "subscribe", "call", "serve", "set-state"]
"""

    async def test_a_flood_of_denied_claims_is_cut_and_barely_logged(self) -> None:
        hub, hub_ep = await self.node("hub", config=self.RULES)
        pub_ctx = await self.client(hub_ep, "alice")
        sub_ctx = await self.client(hub_ep, "bob")
        sub = SubChannel(sub_ctx, "news")
        pub = PubChannel(pub_ctx, "news")
        await bounded(pub.wait_for_subscribers(), "bob's subscription")
        before = rss(hub.transport.pid)
        found = await self.attack("claims", hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}",
                                  "150000", stranger=not stranger_unavailable())
        # Cut: the attacker read the reason, or the node reset it while it still wrote.
        self.assertLess(int(found["claims"][0]), 150000, found)
        self.assertTrue(any("max_denied_per_link" in line for line in hub.lines))
        growth = rss(hub.transport.pid) - before
        denials = [line for line in hub.lines if "forbidden.c" in line]
        print(f"hub: {len(denials)} log lines for the flood, RSS growth {growth / MiB:.1f} MiB")
        self.assertLess(len(denials), 200)
        self.assertLess(growth, 32 * MiB)
        pub.send("still news")
        self.assertEqual(await bounded(sub.recv(), "bob's message"), "still news")


class UntrustedNames(AttackTestCase):
    async def test_a_name_with_terminal_escapes_is_refused_and_status_stays_clean(self) -> None:
        hub, hub_ep = await self.node("hub")
        await self.client(hub_ep, "bob")
        hostile = json.dumps("\x1b]52;c;aGVsbG8=\x07\x1b[2J all links healthy\n")
        found = await self.attack("link", hub_ep[len("tcp:"):], f"token:{TOKENS['eve']}",
                                  hostile, stranger=not stranger_unavailable())
        self.assertNotIn("up", found)
        self.assertIn("non-printable", found["refused"][0])
        self.assertNotIn("\x1b", found["refused"][0])
        out, err, code = await self.cli("status", "--connect", hub_ep, "--token-file",
                                        path("alice.token"))
        self.assertEqual(code, 0, err)
        self.assertIn("client-bob", out)
        self.assertFalse([c for c in out if not (c.isprintable() or c == "\n")], out)
        self.assertFalse([line for line in hub.lines if "\x1b" in line])


class StatusSite(AttackTestCase):
    async def test_a_rebinding_host_and_a_missing_token_are_refused(self) -> None:
        port = free_port()
        _node, _ = await self.node("web", "--status", f"tcp:{port}:interface=127.0.0.1",
                                   "--status-token")
        with open(secret_path(), "rb") as f:
            secret = f.read().strip().decode()

        def get(host: str, query: str = "") -> tuple[int, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET /status{query} HTTP/1.1\r\nHost: {host}\r\n"
                          "Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return int(data.split(b" ", 2)[1]), data

        await until(lambda: _port_open(port), "the status site")
        code, body = await threads.deferToThread(get, "attacker.example:8080",
                                                 f"?token={secret}")
        self.assertEqual(code, 403, body)
        self.assertIn(b"attacker.example", body)
        code, body = await threads.deferToThread(
            get, f"127.0.0.1:{port}")
        self.assertEqual(code, 401, body)
        code, body = await threads.deferToThread(
            get, f"127.0.0.1:{port}", f"?token={secret}")
        self.assertEqual(code, 200, body)
        self.assertIn(b'"name": "web"', body)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class ReadmeKernelRules(AttackTestCase):
    @staticmethod
    def rules() -> str:
        with open(README, encoding="utf-8") as f:
            text = f.read()
        block = text.split("<!-- kernel-rules: begin -->", 1)[1]
        block = block.split("<!-- kernel-rules: end -->", 1)[0]
        return block.split("```toml", 1)[1].split("```", 1)[0]

    async def test_the_readme_rules_work_input_included(self) -> None:
        _hub, hub_ep = await self.node("hub", config=self.rules())
        await self.kernel("--connect", hub_ep, "--token-file", path("kernel.token"),
                          "--owner", "alice", "--role", "bob=collaborator")
        clients = {}
        for user in ("alice", "bob", "eve"):
            ctx = await self.client(hub_ep, user)
            rec = Recorder()
            client = KernelClient(ctx, "shared", on_output=rec,
                                  on_input=lambda prompt, password, who=user: f"{who} typed")
            self.addCleanup(lambda c=client: defer.ensureDeferred(c.detach()))
            await bounded(client.attach(), f"{user}'s attach")
            clients[user] = (ctx, client, rec)
        _, bob, bob_rec = clients["bob"]
        r = await bounded(bob.execute("print('answer:', input('? '))"), "bob's input()")
        self.assertTrue(r.ok, r)
        self.assertIn("answer: bob typed\n", bob_rec.stdout())
        eve_ctx, eve, eve_rec = clients["eve"]
        await bounded(eve.wait_for_seq(r.last_seq), "eve watching")
        self.assertIn("answer: bob typed\n", eve_rec.stdout())
        with self.assertRaises(RemoteError) as caught:
            await bounded(eve.execute("1"), "eve's refusal")
        self.assertIn("'eve' is a viewer", str(caught.exception))
        # eve cannot pose as the broker: the hub refuses her claim to serve its channel.
        from yotonnet import RepChannel

        fake = RepChannel(eve_ctx, "kernel.shared.control")
        await until(lambda: getattr(fake, "denied", None) is not None, "eve's claim denied")
        self.assertIn("serve", str(fake.denied))
