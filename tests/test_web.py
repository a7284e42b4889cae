"""Ring 3: the HTTP status endpoint on a real loopback port, and its live page in a browser.

:func:`yotonnet.service.web.status_site` serves a context of an in-memory mesh
(deterministic numbers) from the test's real reactor. A Twisted HTTP client
checks ``/status`` (JSON that moves with the traffic), ``/metrics``
(Prometheus text, its content type) and the errors (404 with a useful body,
405). Headless Debian Chromium, spawned through the reactor so that the
in-process server keeps serving, loads ``/`` and dumps the DOM its script
built: the SVG must hold every node's name, the busy link marked, a hostile
node name as text (not markup), and a traffic rate computed from two polls.

Who may read it: a Host header naming another site (DNS rebinding) is
refused while the site's own names are served, in one test over HTTP and
for every kind of listening address in :class:`AccessTests`; with a secret,
a missing or wrong token is refused, the right one served (query or Bearer
header), the access log never shows it, and the live page opened with
``?token=`` works in Chromium. The node service builds all this from its
settings and this user's local secret file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from html.parser import HTMLParser
from typing import Any

from test_status import parse_prometheus, sample
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from yotonnet import ContextConfig, PubChannel, SubChannel
from yotonnet.service import config
from yotonnet.service.node import ListenError, make_service
from yotonnet.service.web import PAGE_JS, StatusAccess, status_site
from yotonnet.testing import MemoryMesh, MeshTestCase

CHROMIUM = "/usr/bin/chromium"
#: a local secret, as localsecret.ensure_secret returns it (64 hex characters)
SECRET = b"0123456789abcdef" * 4
FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0)
EVIL = '<b id="x">evil</b>&"'  # a node name that is also markup


class WebTestCase(MeshTestCase, TestCase):
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

    async def get(
        self, url: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None
    ) -> tuple[Any, bytes]:
        """(response, body); ``headers`` may set Host (Agent then keeps it)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        sent = Headers({b"user-agent": [b"yotonnet-test"]})
        for name, value in (headers or {}).items():
            sent.setRawHeaders(name, [value])
        response = await Agent(reactor, pool=pool).request(method, url.encode("ascii"), sent)
        body = _Body()
        response.deliverBody(body)
        return response, await body.done

    def sample_mesh(self) -> MemoryMesh:
        """alpha - beta (held: busy), alpha - gamma - EVIL; a subscriber on EVIL."""
        mesh = self.make_mesh(names=["alpha", "beta", "gamma", EVIL], config=FAST)
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
        mesh = self.sample_mesh()
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
        mesh = self.sample_mesh()
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
        mesh = self.sample_mesh()
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


class HostTests(WebTestCase):
    """The Host header must name the site (DNS rebinding: a page of another site that
    points its own name at 127.0.0.1 sends that name)."""

    def test_a_rebinding_host_is_refused_and_the_sites_own_names_served(self) -> defer.Deferred:
        return defer.ensureDeferred(self._hosts())

    async def _hosts(self) -> None:
        mesh = self.sample_mesh()
        site = status_site(mesh["alpha"], StatusAccess(hosts=("Node-A.example",)))
        base = await self.serve(site)
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "127.0.0.1",
                     "node-a.example:8080"):
            response, body = await self.get(base + "/status", headers={b"host": host.encode()})
            self.assertEqual(response.code, 200, host)
            self.assertEqual(json.loads(body)["name"], "alpha")
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io",
                     "node-a.example.attacker.example", "10.0.0.5", "[::1]:80", "a b"):
            response, body = await self.get(base + "/status", headers={b"host": host.encode()})
            self.assertEqual(response.code, 403, host)
            text = body.decode()
            self.assertIn(f"does not answer to Host '{host}'", text)
            self.assertIn("(127.0.0.1, localhost, node-a.example)", text)  # what it answers to
            self.assertIn("--status-host NAME", text)  # and how to add a name
            self.assertNotIn("alpha", text)
        # Every path is guarded: the page, its script, the metrics, a 404.
        for path in ("/", "/app.js", "/metrics", "/nope"):
            response, _ = await self.get(base + path, headers={b"host": b"attacker.example"})
            self.assertEqual(response.code, 403, path)


class _Request:
    """What StatusAccess reads of a request: its headers, local address and arguments."""

    def __init__(self, host: str | None, local: Any, token: bytes | None = None,
                 bearer: bytes | None = None) -> None:
        self.headers = {b"host": None if host is None else host.encode("latin-1"),
                        b"authorization": None if bearer is None else b"Bearer " + bearer}
        self.local = local
        self.args = {} if token is None else {b"token": [token]}

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    def getHost(self) -> Any:
        return self.local

    def isSecure(self) -> bool:
        return False


class AccessTests(SynchronousTestCase):
    """Which Host headers each kind of listening address answers to, and the token."""

    def assertHosts(self, access: StatusAccess, local: Any, good: list, bad: list) -> None:
        for host in good:
            self.assertIsNone(access.host_refusal(_Request(host, local)), (host, local))
        for host in bad:
            refusal = access.host_refusal(_Request(host, local))
            self.assertIsNotNone(refusal, (host, local))
            self.assertIn("403 forbidden", refusal)

    def test_loopback(self) -> None:
        local = IPv4Address("TCP", "127.0.0.1", 8080)
        self.assertHosts(StatusAccess(), local,
                         ["127.0.0.1", "127.0.0.1:9", "localhost:8080", "[::ffff:127.0.0.1]",
                          None],  # no Host at all (HTTP/1.0): not a browser's request
                         ["127.0.0.2", "10.0.0.1", "evil.example", "localhost.evil.example",
                          "[::1]", "", ":8080", "127.0.0.1:80:80", "2130706433"])

    def test_a_specific_interface(self) -> None:
        self.assertHosts(StatusAccess(), IPv4Address("TCP", "10.0.0.5", 8080),
                         ["10.0.0.5:8080"], ["localhost", "127.0.0.1", "10.0.0.6"])

    def test_wildcards_answer_to_any_ip_literal_and_localhost(self) -> None:
        for wildcard in (IPv4Address("TCP", "0.0.0.0", 8080), IPv6Address("TCP", "::", 8080)):
            self.assertHosts(StatusAccess(), wildcard,
                             ["10.1.2.3:8080", "[fe80::1]", "localhost", "127.0.0.1"],
                             ["evil.example", "host.docker.internal", "0.0.0.0.evil.example"])

    def test_ipv6_loopback(self) -> None:
        self.assertHosts(StatusAccess(), IPv6Address("TCP", "::1", 8080),
                         ["[::1]:8080", "[::1]", "localhost"], ["::1", "127.0.0.1", "[::2]"])

    def test_unix_socket(self) -> None:
        self.assertHosts(StatusAccess(hosts=("proxy.example",)), UNIXAddress("/run/y.sock"),
                         ["localhost", "proxy.example"], ["127.0.0.1", "evil.example"])

    def test_the_listening_address_beats_the_connections(self) -> None:
        # Bound to a wildcard, a connection arrives on 127.0.0.1: any IP literal goes.
        access = StatusAccess(bound=IPv4Address("TCP", "0.0.0.0", 8080))
        self.assertHosts(access, IPv4Address("TCP", "127.0.0.1", 8080), ["192.168.1.9"], [])

    def test_extra_names_and_addresses(self) -> None:
        access = StatusAccess(hosts=("Node-A.Example", "[2001:db8::1]", "10.9.8.7"))
        self.assertEqual(access.hosts, ("node-a.example", "2001:db8::1", "10.9.8.7"))
        self.assertHosts(access, IPv4Address("TCP", "127.0.0.1", 8080),
                         ["node-a.example:8080", "NODE-A.EXAMPLE", "10.9.8.7:1",
                          "[2001:db8::1]:8080"],
                         ["a.node-a.example", "10.9.8.8"])
        e = self.assertRaises(ValueError, StatusAccess, hosts=("http://x.example/",))
        self.assertIn("without scheme, port or path", str(e))

    def test_the_refused_host_is_escaped(self) -> None:
        refusal = StatusAccess().host_refusal(
            _Request("evil\x1b[2J.example", IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIn("Host 'evil\\x1b[2J.example'", refusal)
        self.assertNotIn("\x1b", refusal)

    def test_token(self) -> None:
        access = StatusAccess(secret=SECRET, secret_path="/run/user/1000/yotonnet/secret")
        local = IPv4Address("TCP", "127.0.0.1", 8080)
        self.assertIsNone(access.token_refusal(_Request("localhost", local, token=SECRET)))
        self.assertIsNone(access.token_refusal(_Request("localhost", local, bearer=SECRET)))
        code, text = access.token_refusal(_Request("localhost:8080", local))
        self.assertEqual(code, 401)
        self.assertIn("needs the node's local secret", text)
        self.assertIn("http://localhost:8080/?token=SECRET", text)
        self.assertIn("Authorization: Bearer SECRET", text)
        self.assertIn("cat /run/user/1000/yotonnet/secret", text)
        for wrong in (dict(token=b"nope"), dict(bearer=SECRET[:-1]), dict(token=SECRET + b"0"),
                      dict(bearer=b"nope", token=SECRET)):  # a wrong header is not saved
            code, text = access.token_refusal(_Request("localhost", local, **wrong))
            self.assertEqual(code, 403, wrong)
            self.assertIn("not the node's local secret", text)
        # Without a secret, nothing is asked for.
        self.assertIsNone(StatusAccess().token_refusal(_Request("localhost", local)))

    def test_the_page_puts_peer_text_in_the_dom_as_text_only(self) -> None:
        # Names, addresses and reasons come from other nodes: no HTML parsing of data.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function", "DOMParser", "createContextualFragment"):
            self.assertNotIn(sink, PAGE_JS)
        self.assertIn(".textContent = String(text)", PAGE_JS)


class TokenTests(WebTestCase):
    """With a secret configured, every request needs it; the log never shows it."""

    def test_missing_and_wrong_tokens_are_refused_the_right_one_served(self) -> defer.Deferred:
        return defer.ensureDeferred(self._tokens())

    async def _tokens(self) -> None:
        mesh = self.sample_mesh()
        logged: list[str] = []
        observer = lambda event: logged.append(str(event.get("message") or event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        access = StatusAccess(secret=SECRET, secret_path="/home/u/.local/share/yotonnet/secret")
        base = await self.serve(status_site(mesh["alpha"], access))
        secret = SECRET.decode()
        for path in ("/status", "/metrics", "/", "/app.js", "/nope"):
            response, body = await self.get(base + path)
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="yotonnet status"'])
            self.assertIn(b"cat /home/u/.local/share/yotonnet/secret", body)
            response, body = await self.get(base + path + "?token=0000")
            self.assertEqual(response.code, 403, path)
            response, body = await self.get(
                base + path, headers={b"authorization": b"Bearer " + SECRET[::-1]})
            self.assertEqual(response.code, 403, path)
        response, body = await self.get(base + "/status?token=" + secret)
        self.assertEqual((response.code, json.loads(body)["name"]), (200, "alpha"))
        response, body = await self.get(
            base + "/metrics", headers={b"authorization": b"Bearer " + SECRET})
        self.assertEqual(response.code, 200)
        self.assertEqual(sample(parse_prometheus(body.decode()), "yotonnet_nodes_reachable"), 3)
        # The page opened with the token passes it on to its script and style sheet.
        response, body = await self.get(base + "/?token=" + secret)
        self.assertEqual(response.code, 200)
        self.assertIn(f'src="app.js?token={secret}"'.encode(), body)
        self.assertIn(f'href="app.css?token={secret}"'.encode(), body)
        self.assertEqual(response.headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        # A right token does not make a wrong Host right.
        response, body = await self.get(base + "/status?token=" + secret,
                                        headers={b"host": b"attacker.example"})
        self.assertEqual(response.code, 403)
        self.assertIn(b"attacker.example", body)
        # The access log saw every request, and no token.
        requests = [line for line in logged if '"GET /' in line]
        self.assertGreaterEqual(len(requests), 15, logged)
        self.assertIn("/status?token=<hidden>", "\n".join(requests))
        self.assertFalse([line for line in logged if secret in line])


class ServiceTests(WebTestCase):
    """The node service wires the settings: names, the token from this user's secret file."""

    def use_secret_file(self, mode: int) -> str:
        directory = tempfile.mkdtemp(prefix="yotonnet-web-")  # not trial's mktemp: under
        self.addCleanup(shutil.rmtree, directory, True)      # pytest it litters the cwd
        os.chmod(directory, mode)
        before = os.environ.get("YOTONNET_SECRET_FILE")
        os.environ["YOTONNET_SECRET_FILE"] = path = os.path.join(directory, "secret")

        def restore() -> None:
            if before is None:
                del os.environ["YOTONNET_SECRET_FILE"]
            else:
                os.environ["YOTONNET_SECRET_FILE"] = before

        self.addCleanup(restore)
        return path

    async def start_node(self, **status: Any) -> Any:
        settings = config.resolve(None, name="webnode", listen=["tcp:0:interface=127.0.0.1"],
                                  status="tcp:0:interface=127.0.0.1", **status)
        top = make_service(settings, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        await top.when_ready()
        return top

    def test_the_status_page_needs_the_secret_of_this_user(self) -> defer.Deferred:
        return defer.ensureDeferred(self._secret())

    async def _secret(self) -> None:
        path = self.use_secret_file(0o700)
        logged: list[str] = []
        observer = lambda event: logged.append(formatEvent(event) or "")  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        top = await self.start_node(status_hosts=["node.example"], status_token=True)
        with open(path, "rb") as f:
            secret = f.read().strip()
        port = top.web.port.getHost().port
        base = f"http://127.0.0.1:{port}"
        self.assertTrue(any(f"peers prove the local secret in {path} (made now" in line
                            for line in logged), logged)
        url = [line for line in logged if line.startswith("status page on ")]
        self.assertEqual(url, [f"status page on http://127.0.0.1:{port}/?token=SECRET where "
                               f"SECRET is the content of {path} (every request needs it, as "
                               "?token= or as a Bearer token in an Authorization header)"])
        response, body = await self.get(base + "/status")
        self.assertEqual(response.code, 401)
        self.assertIn(f"cat {path}".encode(), body)
        response, body = await self.get(base + "/status?token=" + secret.decode(),
                                        headers={b"host": b"node.example:8080"})
        self.assertEqual((response.code, json.loads(body)["name"]), (200, "webnode"))
        response, _ = await self.get(base + "/status?token=" + secret.decode(),
                                     headers={b"host": b"other.example"})
        self.assertEqual(response.code, 403)

    def test_a_secret_file_others_could_read_stops_the_node(self) -> defer.Deferred:
        return defer.ensureDeferred(self._unsafe_secret())

    async def _unsafe_secret(self) -> None:
        self.use_secret_file(0o755)
        with self.assertRaises(ListenError) as caught:
            await self.start_node(status_token=True)
        # The node's own listener needs the secret first: it refuses to start, saying how.
        self.assertIn("the local secret directory", str(caught.exception))
        self.assertIn("chmod 700", str(caught.exception))


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
        mesh = self.sample_mesh()
        pub = PubChannel(mesh["alpha"], "news")
        # a leaf of gamma: counted on gamma, no node of the drawing
        self.successResultOf(mesh["gamma"].listen("memory:gamma"))
        mesh.add("a-leaf").connect("memory:gamma")
        mesh.settle()

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
        # the leaf is no node of the drawing: gamma carries it
        self.assertEqual(sorted(dom.node_names), sorted(["alpha", "beta", "gamma +1", EVIL]))
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

    def test_live_page_opened_with_the_token(self) -> defer.Deferred:
        return defer.ensureDeferred(self._with_token())

    async def _with_token(self) -> None:
        mesh = self.sample_mesh()
        access = StatusAccess(secret=SECRET, secret_path="/run/user/0/yotonnet/secret")
        base = await self.serve(status_site(mesh["alpha"], access))
        # Every request needs the token: the script and style sheet get it from the page's
        # links, each poll of /status from the script (in its Authorization header).
        dom_text = await self.dump_dom(base + "/?token=" + SECRET.decode())
        dom = _DOM()
        dom.feed(dom_text)
        self.assertEqual(dom.body.get("data-state"), "ok", dom_text[-2000:])
        self.assertGreaterEqual(int(dom.body.get("data-polls") or 0), 2)
        self.assertEqual(sorted(dom.node_names), sorted(["alpha", "beta", "gamma", EVIL]))

    async def dump_dom(self, url: str) -> str:
        profile = tempfile.mkdtemp(prefix="yotonnet-chromium-")
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
