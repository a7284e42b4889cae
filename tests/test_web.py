"""Ring 3: the HTTP status endpoint on a real loopback port, and its live page in a browser.

:func:`yotonnet.web.status_site` serves a context of an in-memory mesh
(deterministic numbers) from the test's real reactor. A Twisted HTTP client
checks ``/status`` (JSON that moves with the traffic), ``/metrics``
(Prometheus text, its content type) and the errors (404 with a useful body,
405). Headless Debian Chromium, spawned through the reactor so that the
in-process server keeps serving, loads ``/`` and dumps the DOM its script
built: the SVG must hold every node's name, the busy link marked, a hostile
node name as text (not markup), and a traffic rate computed from two polls.
"""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from typing import Any

from test_status import parse_prometheus, sample
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from yotonnet import ContextConfig, PubChannel, SubChannel
from yotonnet.testing import MemoryMesh
from yotonnet.web import status_site

CHROMIUM = "/usr/bin/chromium"
FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0)
EVIL = '<b id="x">evil</b>&"'  # a node name that is also markup


class WebTestCase(TestCase):
    """Serves a site on 127.0.0.1 and leaves the reactor clean afterwards."""

    async def serve(self, site: Site) -> str:
        tracked = WrappingFactory(site)
        port = reactor.listenTCP(0, tracked, interface="127.0.0.1")
        self.addCleanup(self._drain, tracked)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def _drain_async(self, tracked: WrappingFactory) -> None:
        # The client has closed; give the server side a moment to see it, then insist.
        for _ in range(200):
            if not tracked.protocols:
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        for proto in list(tracked.protocols):
            proto.transport.abortConnection()
        await task.deferLater(reactor, 0.05, lambda: None)

    def _drain(self, tracked: WrappingFactory) -> defer.Deferred:
        return defer.ensureDeferred(self._drain_async(tracked))

    async def get(self, url: str, method: bytes = b"GET") -> tuple[Any, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        response = await Agent(reactor, pool=pool).request(
            method, url.encode("ascii"), Headers({b"user-agent": [b"yotonnet-test"]})
        )
        body = _Body()
        response.deliverBody(body)
        return response, await body.done

    def make_mesh(self) -> MemoryMesh:
        """alpha - beta (held: busy), alpha - gamma - EVIL; a subscriber on EVIL."""
        mesh = MemoryMesh(names=["alpha", "beta", "gamma", EVIL], config=FAST)
        self.addCleanup(mesh.close)
        mesh.link("alpha", "beta")
        mesh.link("alpha", "gamma")
        mesh.link("gamma", EVIL)
        SubChannel(mesh[EVIL], "news")
        mesh.settle()
        mesh.connection("alpha", "beta").hold(mesh["beta"])
        mesh.advance(FAST.busy_timeout + 1)
        return mesh


class EndpointTests(WebTestCase):
    def test_status_json(self) -> defer.Deferred:
        return defer.ensureDeferred(self._status_json())

    async def _status_json(self) -> None:
        mesh = self.make_mesh()
        base = await self.serve(status_site(mesh["alpha"]))
        response, body = await self.get(base + "/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        first = json.loads(body)
        self.assertEqual(first["name"], "alpha")
        self.assertEqual({n["name"] for n in first["nodes"]}, {"alpha", "beta", "gamma", EVIL})
        links = {x["peer_name"]: x["status"] for x in first["links"]}
        self.assertEqual(links, {"beta": "busy", "gamma": "up"})
        # Traffic between two requests shows in the second.
        pub = PubChannel(mesh["alpha"], "news")
        for i in range(7):
            pub.send(f"m{i}")
        mesh.settle()
        _, body = await self.get(base + "/status?pretty=1")
        self.assertIn(b'\n  "name": "alpha"', body)  # indented
        second = json.loads(body)
        self.assertEqual(first["channels"], [])  # alpha holds no channel yet
        self.assertEqual(
            [(c["pattern"], c["published"]) for c in second["channels"]], [("pubsub", 7)]
        )
        gamma = {x["peer_name"]: x for x in second["links"]}["gamma"]
        gamma_before = {x["peer_name"]: x for x in first["links"]}["gamma"]
        self.assertGreater(gamma["bytes_out"], gamma_before["bytes_out"])

    def test_metrics(self) -> defer.Deferred:
        return defer.ensureDeferred(self._metrics())

    async def _metrics(self) -> None:
        mesh = self.make_mesh()
        base = await self.serve(status_site(mesh["alpha"]))
        response, body = await self.get(base + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        families = parse_prometheus(body.decode("utf-8"))
        self.assertEqual(sample(families, "yotonnet_link_busy", peer_name="beta"), 1)
        self.assertEqual(sample(families, "yotonnet_link_busy", peer_name="gamma"), 0)
        self.assertEqual(sample(families, "yotonnet_nodes_reachable"), 3)

    def test_errors(self) -> defer.Deferred:
        return defer.ensureDeferred(self._errors())

    async def _errors(self) -> None:
        mesh = self.make_mesh()
        base = await self.serve(status_site(mesh["alpha"]))
        for path in ("/nope", "/status/more", "/metrics/x/y"):
            response, body = await self.get(base + path)
            self.assertEqual(response.code, 404, path)
            text = body.decode("utf-8")
            self.assertIn(f"404 not found: {path}", text)
            for endpoint in ("/status", "/metrics", "live page"):
                self.assertIn(endpoint, text)
        response, body = await self.get(base + "/status", method=b"POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertIn(b"read-only", body)
        response, body = await self.get(base + "/metrics", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))
        # The page and its assets come from the node itself.
        for path, kind in (("/", b"text/html"), ("/app.js", b"text/javascript"),
                           ("/app.css", b"text/css")):
            response, body = await self.get(base + path)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(kind))
            self.assertNotIn(b"http://", body.replace(b"http://www.w3.org/2000/svg", b""))
            self.assertNotIn(b"https://", body)


class _Body(Protocol):
    """Collects a response body (readBody warns about the proxy transport Agent gives it)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # type: ignore[override]
        if reason is None or reason.check(ResponseDone):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(reason)


class _DOM(HTMLParser):
    """Collects what the test checks in Chromium's DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.node_names: list[str] = []
        self.edges: list[dict[str, str | None]] = []
        self.rates: list[str] = []
        self.body: dict[str, str | None] = {}
        self.tags_in_svg: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if any(t == "svg" for t, _ in self.stack):
            self.tags_in_svg.add(tag)
        if tag == "line" and "edge" in (a.get("class") or "").split():
            self.edges.append(a)
        self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.stack or self.stack[-1][0] != "text":
            return
        classes = [(a.get("class") or "").split() for _, a in self.stack]
        if ["rate"] in classes:
            self.rates.append(data)
        elif any("node" in c for c in classes):
            self.node_names.append(data)


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


class _Driving(Resource):
    """The status site, with the mesh moved on one second (and 10 messages) per /status poll.

    The in-memory mesh runs on a fake clock: this makes each poll see new
    traffic over a known time, so the page has rates to draw.
    """

    def __init__(self, inner: Resource, tick: Any) -> None:
        super().__init__()
        self.inner = inner
        self.tick = tick

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if path == b"status":
            self.tick()
        return self.inner.getChildWithDefault(path, request)


class BrowserTests(WebTestCase):
    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(f"{CHROMIUM} is absent (Debian package 'chromium'; `make sysdeps`)")

    def test_live_page_draws_the_mesh(self) -> defer.Deferred:
        return defer.ensureDeferred(self._live_page())

    async def _live_page(self) -> None:
        mesh = self.make_mesh()
        pub = PubChannel(mesh["alpha"], "news")

        def tick() -> None:
            for i in range(10):
                pub.send(f"tick {i}")
            mesh.advance(1.0)

        site = status_site(mesh["alpha"])
        base = await self.serve(Site(_Driving(site.resource, tick)))
        dom_text = await self.dump_dom(base + "/")
        dom = _DOM()
        dom.feed(dom_text)

        self.assertEqual(dom.body.get("data-state"), "ok", dom_text[-2000:])
        self.assertGreaterEqual(int(dom.body.get("data-polls") or 0), 2)
        self.assertEqual(sorted(dom.node_names), sorted(["alpha", "beta", "gamma", EVIL]))
        # The hostile name is text: no element the name spells was created in the SVG.
        self.assertNotIn("b", dom.tags_in_svg)
        pairs = {
            frozenset((e["data-a"], e["data-b"])): (e["class"] or "").split() for e in dom.edges
        }
        self.assertEqual(
            set(pairs),
            {frozenset(("alpha", "beta")), frozenset(("alpha", "gamma")),
             frozenset(("gamma", EVIL))},
        )
        self.assertIn("busy", pairs[frozenset(("alpha", "beta"))])
        self.assertNotIn("busy", pairs[frozenset(("alpha", "gamma"))])
        # A rate needs two polls and a moving counter: the page updates live.
        self.assertTrue(dom.rates, "no traffic rate drawn")
        self.assertTrue(all(r.endswith("frames/s") for r in dom.rates), dom.rates)
        self.assertIn("busy", dom_text[dom_text.index('id="links"'):])

    async def dump_dom(self, url: str) -> str:
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        self.addCleanup(shutil.rmtree, profile, True)
        args = [
            # timeout(1) signals Chromium's whole process group if it ever hangs.
            "timeout", "-k", "5", "90", CHROMIUM,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url,
        ]
        proto = _Collect()
        env = dict(os.environ, HOME=profile)
        reactor.spawnProcess(proto, shutil.which("timeout") or "/usr/bin/timeout", args, env)
        await proto.ended
        dom = proto.out.decode("utf-8", "replace")
        if "<svg" not in dom:
            self.fail(f"Chromium printed no page; stderr:\n{proto.err.decode(errors='replace')}")
        return dom
