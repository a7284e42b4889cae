"""Authorization: per-user and per-role permissions on channel-name patterns.

Rules are checked where a message enters the mesh (the client's first node).
A denied operation fails with ``yotonnet.PermissionDenied`` naming channel and
operation, the denied messages never reach anyone, and everything else the
same users do keeps working.
"""

from __future__ import annotations

from certs_fixture import LogCapture, bundle, path, wait_until
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

import yotonnet as y
from yotonnet.security.auth import Identity
from yotonnet.security.authz import OPERATIONS, Policy, Rule
from yotonnet.security.settings import Security
from yotonnet.service.config import ConfigError, parse

WAIT = 15.0

RULES = [
    Rule(("role:admin",), ("*",), OPERATIONS),
    Rule(("alice",), ("news.*", "math"), ("publish", "subscribe", "call")),
    Rule(("*",), ("news.*",), ("subscribe",)),
    Rule(("*",), ("board",), ("subscribe",)),
]


class PolicyRules(SynchronousTestCase):
    def test_who_channels_operations(self):
        policy = Policy(RULES)
        alice = Identity("alice")
        bob = Identity("bob")
        root = Identity("root", frozenset({"admin"}))
        self.assertTrue(policy.allows(alice, "publish", "news.today"))
        self.assertTrue(policy.allows(alice, "publish", "news.a.b"))  # * crosses dots
        self.assertFalse(policy.allows(alice, "serve", "math"))
        self.assertFalse(policy.allows(alice, "publish", "newsroom"))
        self.assertTrue(policy.allows(bob, "subscribe", "news.today"))
        self.assertFalse(policy.allows(bob, "publish", "news.today"))
        self.assertTrue(policy.allows(root, "set-state", "anything.at.all"))
        text = policy.denial(bob, "publish", "news.today")
        self.assertIn("'bob'", text)
        self.assertIn("publish", text)
        self.assertIn("'news.today'", text)

    def test_no_rules_allow_everything(self):
        self.assertTrue(Policy().allows(Identity("x"), "serve", "kernel.exec"))

    def test_bad_rules_are_refused(self):
        with self.assertRaises(ValueError) as caught:
            Rule(("*",), ("*",), ("pubish",))
        self.assertIn("unknown operation 'pubish'", str(caught.exception))

    def test_rules_from_the_config_file(self):
        settings = parse(
            '[security]\ntokens = "t.txt"\n[security.roles]\nroot = ["admin"]\n'
            '[[security.permissions]]\nwho = "role:admin"\nchannels = ["*"]\n'
            'operations = ["publish", "serve"]\n'
        )
        sec = settings.security
        self.assertEqual(sec.roles, {"root": ["admin"]})
        self.assertEqual(sec.permissions, [Rule(("role:admin",), ("*",), ("publish", "serve"))])
        with self.assertRaises(ConfigError) as caught:
            parse('[security]\n[[security.permissions]]\nwho = "x"\nchannels = ["*"]\n'
                  'operations = ["eat"]\n', "f.toml")
        self.assertIn("f.toml: security.permissions[0]", str(caught.exception))


class Enforcement(TestCase):
    """Node ``hub`` with rules; alice and bob are clients of it; root is an admin."""

    async def mesh(self):
        bundle()
        self.hub = y.Context("hub", reactor, security=Security(
            tokens=path("tokens.txt"), permissions=RULES, roles={"alice": []},
        ))
        self.addCleanup(self.hub.close)
        port = await self.hub.listen("tcp:0:interface=127.0.0.1")
        ep = f"tcp:127.0.0.1:{port.getHost().port}"
        users = {}
        for user in ("alice", "bob"):
            ctx = y.Context(user, reactor, security=Security(token_file=path(f"{user}.token")))
            self.addCleanup(ctx.close)
            await ctx.connect(ep).addTimeout(WAIT, reactor)
            users[user] = ctx
        return users["alice"], users["bob"]

    async def denied(self, channel) -> y.PermissionDenied:
        await wait_until(lambda: getattr(channel, "denied", None) is not None, WAIT, "a denial")
        return channel.denied

    def test_publish_denied_allowed_traffic_unaffected(self):
        async def go():
            alice, bob = await self.mesh()
            log = LogCapture(self)
            sub = y.SubChannel(bob, "news.today")        # allowed to everyone
            good = y.PubChannel(alice, "news.today")
            bad = y.PubChannel(bob, "news.today")        # bob may not publish
            error = await self.denied(bad)
            self.assertIn("'bob' may not publish on channel 'news.today'", str(error))
            with self.assertRaises(y.PermissionDenied):
                bad.send("forged news")
            await good.wait_for_subscribers().addTimeout(WAIT, reactor)
            good.send("real news")
            self.assertEqual(await sub.recv().addTimeout(WAIT, reactor), "real news")
            self.assertEqual(sub.pending, 0)
            self.assertTrue(log.matching("'bob' may not publish"))

        return defer.ensureDeferred(go())

    def test_subscribe_denied_gets_nothing(self):
        async def go():
            alice, bob = await self.mesh()
            secret = y.SubChannel(bob, "math.secret")
            waiting = secret.recv()
            error = await self.denied(secret)
            self.assertIn("subscribe", str(error))
            self.assertIn("'math.secret'", str(error))
            self.failureResultOf(waiting, y.PermissionDenied)
            self.failureResultOf(secret.recv(), y.PermissionDenied)
            # The hub never learnt of bob's interest, so nothing is routed to him.
            self.assertEqual(y.PubChannel(self.hub, "math.secret").subscribers, 0)

        return defer.ensureDeferred(go())

    def test_call_denied_at_once(self):
        async def go():
            alice, bob = await self.mesh()

            class Math(y.RepChannel):
                def add(self, a, b):
                    return a + b

            Math(self.hub, "math")
            req_alice = y.ReqChannel(alice, "math", timeout=WAIT)
            req_bob = y.ReqChannel(bob, "math", timeout=WAIT)
            await req_bob.wait_for_responders().addTimeout(WAIT, reactor)
            error = await self.assertFailure(req_bob.add(2, 3), y.PermissionDenied)
            self.assertIn("may not call on channel 'math'", str(error))
            self.assertEqual(await req_alice.add(2, 3), 5)

        return defer.ensureDeferred(go())

    def test_serve_denied_takes_no_requests(self):
        async def go():
            alice, bob = await self.mesh()
            rep = y.RepChannel(alice, "math")        # alice may call math, not serve it
            rep.register("add", lambda a, b: a + b)
            error = await self.denied(rep)
            self.assertIn("'alice' may not serve on channel 'math'", str(error))
            req = y.ReqChannel(self.hub, "math", timeout=WAIT)
            await self.assertFailure(req.add(1, 2), y.NoResponders)

        return defer.ensureDeferred(go())

    def test_set_state_denied_reading_allowed(self):
        async def go():
            alice, bob = await self.mesh()
            board = y.StateChannel(self.hub, "board")
            board.send({"v": 1})
            mine = y.StateChannel(bob, "board")
            error = await self.denied(mine)
            self.assertIn("set-state", str(error))
            with self.assertRaises(y.PermissionDenied):
                mine.send({"v": 666})
            await wait_until(lambda: mine.recv() == {"v": 1}, WAIT, "the board's value")
            self.assertEqual(board.recv(), {"v": 1})

        return defer.ensureDeferred(go())

    def test_node_control_sets_state_only_for_permitted_callers(self):
        """The node's control channel writes state on a caller's behalf: the caller's own
        permission decides (``yotonnet state set`` goes this way)."""
        async def go():
            alice, bob = await self.mesh()
            from yotonnet.service.node import NodeControl, control_channel_name

            NodeControl(self.hub)
            name = control_channel_name(self.hub.node_id)
            self.hub.guard.policy.rules += (Rule(("bob",), (name,), ("call",)),)
            req = y.ReqChannel(bob, name, timeout=WAIT)
            await req.wait_for_responders().addTimeout(WAIT, reactor)
            error = await self.assertFailure(req.state_set("board", 1), y.RemoteError)
            self.assertEqual(error.remote_type, "PermissionDenied")
            self.assertIn("'bob' may not set-state on channel 'board'", str(error))

        return defer.ensureDeferred(go())

    def test_grants_are_claimed_again_after_a_reconnect(self):
        async def go():
            alice, bob = await self.mesh()
            sub = y.SubChannel(bob, "news.today")
            pub = y.PubChannel(alice, "news.today")
            await pub.wait_for_subscribers().addTimeout(WAIT, reactor)
            pub.send("before")
            self.assertEqual(await sub.recv().addTimeout(WAIT, reactor), "before")
            # The hub drops alice; her dialler links again and claims her channels anew.
            old = self.hub.links[alice.node_id]
            old.transport.loseConnection()
            await wait_until(
                lambda: alice.node_id in self.hub.links and self.hub.links[alice.node_id]
                is not old and pub.subscribers == 1, WAIT, "alice's new link",
            )
            pub.send("after")
            self.assertEqual(await sub.recv().addTimeout(WAIT, reactor), "after")
            self.assertIsNone(getattr(pub, "denied", None))

        return defer.ensureDeferred(go())
