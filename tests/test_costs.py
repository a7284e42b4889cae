"""Link costs written into endpoint strings (``tcp:host:7117:cost=10``): the
parser, Context.connect/listen over real TCP, and the configuration file."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from yotonnet import Context
from yotonnet.core.costs import MAX_LINK_COST, split_cost
from yotonnet.service import config as config_module


class SplitCostTests(SynchronousTestCase):
    def test_endpoints_without_a_cost_are_left_alone(self) -> None:
        for text in ("tcp:127.0.0.1:7117", "unix:/run/a.sock", "tcp:7117:interface=::1"):
            self.assertEqual(split_cost(text), (text, None))

    def test_the_option_is_taken_out_wherever_it_is(self) -> None:
        self.assertEqual(split_cost("tcp:far:7117:cost=10"), ("tcp:far:7117", 10))
        self.assertEqual(
            split_cost("tcp:far:7117:cost=1:timeout=5"), ("tcp:far:7117:timeout=5", 1)
        )
        self.assertEqual(split_cost(f"tcp:7117:cost={MAX_LINK_COST}"), ("tcp:7117", 255))
        # An escaped colon is part of an argument, not a separator.
        self.assertEqual(split_cost(r"unix:/tmp/a\:cost=2"), (r"unix:/tmp/a\:cost=2", None))
        # Only options count: the endpoint type itself is never read as one.
        self.assertEqual(split_cost("cost=3"), ("cost=3", None))

    def test_bad_costs_say_what_is_allowed(self) -> None:
        for text in ("tcp:h:1:cost=0", "tcp:h:1:cost=256", "tcp:h:1:cost=x", "tcp:h:1:cost="):
            e = self.assertRaises(ValueError, split_cost, text)
            self.assertIn("link cost must be an integer from 1 to 255", str(e))
        e = self.assertRaises(ValueError, split_cost, "tcp:h:1:cost=2:cost=3")
        self.assertIn("more than once", str(e))


class ConfigTests(SynchronousTestCase):
    def test_peers_and_listeners_may_carry_a_cost(self) -> None:
        settings = config_module.parse(
            '[node]\nlisten = ["tcp:7117:interface=127.0.0.1:cost=5"]\n'
            'peers = ["tcp:far:7117:cost=10"]\n'
            '[client]\nconnect = "tcp:127.0.0.1:7117:cost=2"\n'
        )
        config_module.validate(settings)
        self.assertEqual(settings.node.peers, ["tcp:far:7117:cost=10"])

    def test_a_bad_cost_names_the_key(self) -> None:
        e = self.assertRaises(
            config_module.ConfigError,
            config_module.parse, '[node]\npeers = ["tcp:far:7117:cost=0"]\n', "n.toml",
        )
        self.assertIn("n.toml: node.peers: 'tcp:far:7117:cost=0'", str(e))
        self.assertIn("from 1 to 255", str(e))

    def test_the_status_page_takes_no_cost(self) -> None:
        e = self.assertRaises(
            config_module.ConfigError, config_module.parse, '[node]\nstatus = "tcp:8080:cost=3"\n'
        )
        self.assertIn("node.status: cost= is an option of mesh links only", str(e))


class RealLinkTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_costs_from_endpoint_strings_reach_the_links_and_the_routes(self) -> None:
        server = Context("server", reactor)
        client = Context("client", reactor, role="node")  # link costs are the mesh's
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        port = yield server.listen("tcp:0:interface=127.0.0.1:cost=7")
        link = yield client.connect(f"tcp:127.0.0.1:{port.getHost().port}:cost=3")
        self.assertEqual(link.cost, 3)
        self.assertEqual(link.endpoint_text, f"tcp:127.0.0.1:{port.getHost().port}")
        self.assertEqual(server.links[client.node_id].cost, 7)
        # The mesh weighs the link by the higher of its ends' costs, once records meet.
        for _ in range(500):
            if client.routing.distance(server.node_id) == 7:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client.routing.distance(server.node_id), 7)
        self.assertEqual(server.routing.distance(client.node_id), 7)

    @defer.inlineCallbacks
    def test_a_cost_given_twice_differently_or_badly_fails_the_call(self) -> None:
        ctx = Context("c", reactor)
        self.addCleanup(ctx.close)
        with self.assertRaises(ValueError) as caught:
            yield ctx.connect("tcp:127.0.0.1:1:cost=3", cost=4)
        self.assertIn("says cost=3 but cost=4 is given", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            yield ctx.listen("tcp:0:interface=127.0.0.1:cost=999")
        self.assertIn("bad listen endpoint", str(caught.exception))
        self.assertIn("from 1 to 255", str(caught.exception))
        self.assertEqual(ctx.dialers, [])
