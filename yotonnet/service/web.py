"""The HTTP status endpoint of a node (twisted.web).

:func:`status_site` serves, for one context:

- ``/status``: :func:`yotonnet.service.status.node_status` as JSON (``?pretty=1`` indents it);
- ``/metrics``: :func:`yotonnet.service.status.prometheus_text`, for a Prometheus scraper;
- ``/``: a live page (HTML and plain JavaScript, no external assets: nodes run
  on machines without internet access) that polls ``status`` every second and
  draws the mesh as this node sees it (nodes in rings by hop count, busy links
  dashed in red, traffic rates on this node's links) with tables of links,
  channels, counters and routes.

Every endpoint only reads the context. Peer and channel names come from
other nodes and are untrusted: the page puts them in the DOM as text only,
and a strict Content-Security-Policy allows no inline script.

Who may read it is :class:`StatusAccess`'s decision, made before any
endpoint is reached:

- the ``Host`` header must name the address the site listens on: an IP
  literal equal to its interface (any IP literal for a wildcard bind),
  ``localhost`` when it listens on loopback or a wildcard, or one of the
  extra names configured (``[node] status_hosts``, ``--status-host``). This
  defeats DNS rebinding: a web page on another site cannot read the status by
  pointing its own name at this address, since its requests carry its name.
  A request without a ``Host`` header (HTTP/1.0) is not one a browser makes,
  and is served.
- with ``[node] status_token`` (``--status-token``) every request must carry
  this OS user's local secret (:mod:`yotonnet.security.localsecret`), as ``?token=``
  or ``Authorization: Bearer``; the page opened with ``?token=`` passes it on
  to its assets and its polls. The access log shows ``token=<hidden>``.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..core.names import printable
from ..mesh.context import Context
from .config import check_status_host
from .status import PROMETHEUS_CONTENT_TYPE, mark_started, node_status, prometheus_text

__all__ = ["StatusAccess", "StatusSite", "status_site"]

_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_ENDPOINTS = (
    "/         live page: mesh topology and traffic\n"
    "/status   node status as JSON (?pretty=1 to indent)\n"
    "/metrics  Prometheus text format\n"
)

# A Host header: a bracketed IPv6 literal or a name/IPv4 literal, then maybe a port.
_HOST_HEADER = re.compile(r"(?:\[([0-9a-f:.%]+)\]|([^\[\]:]+))(?::[0-9]*)?\Z")
_TOKEN_IN_URL = re.compile(rb"([?&]token=)[^&#]*", re.IGNORECASE)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 one as its IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass
class StatusAccess:
    """Who may read a status site (see the module docstring)."""

    #: extra names (or IP literals) the Host header may carry, as check_status_host gives them
    hosts: tuple[str, ...] = ()
    #: the local secret every request must carry; None: no token needed
    secret: bytes | None = None
    #: where the secret is, for the refusal text
    secret_path: str | None = None
    #: the address the site listens on (set once it does); None: each connection's own
    bound: Any = None
    _extra_ips: set[Any] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.hosts = tuple(check_status_host(h) for h in self.hosts)
        self._extra_ips = {_ip(h) for h in self.hosts} - {None}

    def _accepted(self, request: Any) -> tuple[bool, set[Any], list[str]]:
        """(whether any IP literal goes, the IP literals that go, the names that go)."""
        bound = self.bound if self.bound is not None else request.getHost()
        ips, names = set(self._extra_ips), list(self.hosts)
        if not isinstance(bound, (IPv4Address, IPv6Address)):
            return False, ips, ["localhost", *names]  # a unix socket: curl sends localhost
        ip = _ip(bound.host)
        if ip is not None and ip.is_unspecified:
            return True, ips, ["localhost", *names]
        if ip is not None:
            ips.add(ip)
            if ip.is_loopback:
                names.insert(0, "localhost")
        return False, ips, names

    def host_refusal(self, request: Any) -> str | None:
        """Why the request's Host header is refused, or None."""
        raw = request.getHeader(b"host")
        if raw is None:
            return None  # HTTP/1.0: not a browser's request, so no rebinding to fear
        text = raw.decode("latin-1")
        any_ip, ips, names = self._accepted(request)
        found = _HOST_HEADER.match(text.strip().lower())
        if found:
            host = found.group(1) or found.group(2)
            ip = _ip(host)
            if (ip is not None and (any_ip or ip in ips)) or (ip is None and host in names):
                return None
        accepted = ["any IP address"] if any_ip else sorted(str(ip) for ip in ips)
        accepted = list(dict.fromkeys(accepted + names))
        return (
            f"403 forbidden: this yotonnet status page does not answer to Host "
            f"'{printable(text, 200)}'.\n\n"
            f"It answers to the address it listens on and to the names it is given "
            f"({', '.join(accepted) or 'none'}), so that a web page of another site cannot "
            "read it by pointing its own name at this address (DNS rebinding).\n"
            "To use another name, give it to the node: --status-host NAME, or "
            'status_hosts = ["NAME"] in the [node] table of its config file.\n'
        )

    def token_refusal(self, request: Any) -> tuple[int, str] | None:
        """(status code, text) when the request lacks the right secret, or None."""
        if self.secret is None:
            return None
        given = _given_token(request)
        if given is not None and hmac.compare_digest(given, self.secret):
            return None
        where = self.secret_path or "the node's local secret file"
        host = request.getHeader(b"host")  # the Host check has passed: a name of this site
        scheme = "https" if request.isSecure() else "http"
        page = f"{scheme}://{printable(host.decode('latin-1'), 200)}/" if host else "/"
        how = (
            f"Open {page}?token=SECRET, or send the header 'Authorization: Bearer SECRET', where "
            f"SECRET is the content of {where} (readable only by the OS user who runs the "
            f"node: `cat {where}`).\n"
        )
        if given is None:
            return 401, (
                "401 unauthorized: this yotonnet status page needs the node's local secret "
                "(the node runs with --status-token, or status_token = true).\n" + how
            )
        return 403, "403 forbidden: that token is not the node's local secret.\n" + how

    def page_token(self, request: Any) -> str | None:
        """The ``?token=`` the page was opened with, if it is the secret (passed on)."""
        if self.secret is None:
            return None
        given = request.args.get(b"token", [None])[0]
        if given is not None and hmac.compare_digest(given, self.secret):
            return given.decode("ascii", "replace")
        return None


def _given_token(request: Any) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header, else of ``?token=``, else None."""
    header = request.getHeader(b"authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            return value.strip()
    return request.args.get(b"token", [None])[0]


def _common_headers(request: Any, content_type: str) -> None:
    request.setHeader(b"content-type", content_type.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    # A page opened with ?token= must not hand its URL to anyone in a Referer.
    request.setHeader(b"referrer-policy", b"no-referrer")


def _not_found(request: Any) -> bytes:
    request.setResponseCode(404)
    _common_headers(request, "text/plain; charset=utf-8")
    path = printable(request.path.decode("utf-8", "replace"), 300)  # read with curl too
    return f"404 not found: {path}\n\nThis yotonnet node serves:\n{_ENDPOINTS}".encode()


def _only_get(request: Any) -> bytes | None:
    """A 405 body for anything but GET and HEAD (None: go on)."""
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setResponseCode(405)
    request.setHeader(b"allow", b"GET, HEAD")
    _common_headers(request, "text/plain; charset=utf-8")
    method = request.method.decode("ascii", "replace")
    return f"405 method not allowed: {method}; this status endpoint is read-only\n".encode()


class _Leaf(Resource):
    """An endpoint with no children: anything below it is a 404."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        refusal = _only_get(request)
        return refusal if refusal is not None else super().render(request)

    def render_GET(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return _not_found(request)
        return self.body(request)

    def body(self, request: Any) -> bytes:
        raise NotImplementedError


class _Static(_Leaf):
    def __init__(self, content: str, content_type: str, csp: str | None = None) -> None:
        super().__init__()
        self.content = content.encode("utf-8")
        self.content_type = content_type
        self.csp = csp

    def body(self, request: Any) -> bytes:
        _common_headers(request, self.content_type)
        if self.csp:
            request.setHeader(b"content-security-policy", self.csp.encode("ascii"))
        return self.content


class _Page(_Static):
    """The live page; opened with the right ``?token=``, it passes the token on to its
    script and style sheet (its script sends it with each poll, see PAGE_JS)."""

    def __init__(self, access: StatusAccess) -> None:
        super().__init__(PAGE_HTML, "text/html; charset=utf-8", _PAGE_CSP)
        self.access = access

    def body(self, request: Any) -> bytes:
        content = super().body(request)
        token = self.access.page_token(request)
        if token is None:
            return content
        query = html.escape("?token=" + quote(token, safe=""), quote=True).encode("ascii")
        return (content.replace(b'href="app.css"', b'href="app.css' + query + b'"')
                .replace(b'src="app.js"', b'src="app.js' + query + b'"'))


class _Refused(Resource):
    """A refusal of any request (any method, any path below): a code and a text."""

    isLeaf = True

    def __init__(self, code: int, text: str, bearer: bool = False) -> None:
        super().__init__()
        self.code = code
        self.text = text
        self.bearer = bearer

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        _common_headers(request, "text/plain; charset=utf-8")
        if self.bearer:
            request.setHeader(b"www-authenticate", b'Bearer realm="yotonnet status"')
        return self.text.encode("utf-8")


class _Guard(Resource):
    """Checks every request against a :class:`StatusAccess` before the site sees it."""

    def __init__(self, inner: Resource, access: StatusAccess) -> None:
        super().__init__()
        self.inner = inner
        self.access = access

    def refusal(self, request: Any) -> Resource | None:
        host = self.access.host_refusal(request)
        if host is not None:
            return _Refused(403, host)
        token = self.access.token_refusal(request)
        if token is not None:
            code, text = token
            return _Refused(code, text, bearer=code == 401)
        return None

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return self.inner.getChildWithDefault(path, request)

    def render(self, request: Any) -> bytes:
        refused = self.refusal(request)
        return (refused or self.inner).render(request)


class _Redacted:
    """A request as the access log sees it: a token in its URL or Referer is hidden."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def uri(self) -> bytes:
        return _TOKEN_IN_URL.sub(rb"\1<hidden>", self._request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            value = _TOKEN_IN_URL.sub(rb"\1<hidden>", value)
        return value


def _access_log_line(timestamp: str, request: Any) -> str:
    return combinedLogFormatter(timestamp, _Redacted(request))


class StatusSite(Site):
    """The status site of :func:`status_site`; ``access`` decides who may read it (set
    ``access.bound`` to the listening address once the site listens)."""

    def __init__(self, resource: Resource, access: StatusAccess) -> None:
        super().__init__(_Guard(resource, access), logFormatter=_access_log_line)
        self.access = access
        self.noisy = False  # the page polls every second; no "starting factory" chatter


class _StatusJSON(_Leaf):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.context = context

    def body(self, request: Any) -> bytes:
        pretty = request.args.get(b"pretty", [b""])[0] not in (b"", b"0")
        _common_headers(request, "application/json; charset=utf-8")
        data = node_status(self.context)
        return (json.dumps(data, indent=2 if pretty else None) + "\n").encode("utf-8")


class _Metrics(_Leaf):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.context = context

    def body(self, request: Any) -> bytes:
        _common_headers(request, PROMETHEUS_CONTENT_TYPE)
        return prometheus_text(self.context).encode("utf-8")


class _Missing(_Leaf):
    def render_GET(self, request: Any) -> bytes:
        return _not_found(request)


class _Root(Resource):
    def __init__(self, context: Context, access: StatusAccess) -> None:
        super().__init__()
        self.putChild(b"", _Page(access))
        self.putChild(b"app.js", _Static(PAGE_JS, "text/javascript; charset=utf-8"))
        self.putChild(b"app.css", _Static(PAGE_CSS, "text/css; charset=utf-8"))
        self.putChild(b"status", _StatusJSON(context))
        self.putChild(b"metrics", _Metrics(context))
        self._missing = _Missing()

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self._missing

    def render(self, request: Any) -> bytes:
        refusal = _only_get(request)
        return refusal if refusal is not None else super().render(request)

    def render_GET(self, request: Any) -> bytes:
        return _not_found(request)  # reached only for odd paths such as "//"


def status_site(context: Context, access: StatusAccess | None = None) -> StatusSite:
    """A twisted.web Site serving ``/``, ``/status`` and ``/metrics`` for ``context``, to
    the requests ``access`` admits (by default: a Host naming the address listened on,
    no token)."""
    mark_started(context)
    access = access if access is not None else StatusAccess()
    return StatusSite(_Root(context, access), access)


PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>yotonnet node</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="app.css">
</head>
<body data-state="loading" data-polls="0">
<header>
  <h1>yotonnet <span id="node-name">&hellip;</span></h1>
  <span id="node-id" class="mono"></span>
  <span id="uptime"></span>
  <span id="conn" class="conn">connecting&hellip;</span>
</header>
<main>
  <section class="wide">
    <h2>Mesh</h2>
    <svg id="mesh" viewBox="0 0 640 420" role="img" aria-label="mesh topology"></svg>
    <p class="legend"><span class="key local"></span> this node
      <span class="key other"></span> reachable
      <span class="key gone"></span> unreachable
      <span class="key-line ok"></span> link
      <span class="key-line busy"></span> busy link
      <span class="key-line half"></span> half-announced</p>
  </section>
  <section>
    <h2>Traffic</h2>
    <table id="traffic"></table>
  </section>
  <section>
    <h2>Counters</h2>
    <table id="counters"></table>
  </section>
  <section class="wide">
    <h2>Links</h2>
    <table id="links"></table>
  </section>
  <section class="wide">
    <h2>Channels</h2>
    <table id="channels"></table>
  </section>
  <section class="wide">
    <h2>Routes</h2>
    <table id="routes"></table>
  </section>
</main>
<noscript>This page needs JavaScript; the same data is at <a href="status">status</a>.</noscript>
<script src="app.js"></script>
</body>
</html>
"""

PAGE_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #222; }
header { display: flex; gap: 1.2em; align-items: baseline; flex-wrap: wrap;
         padding: .6em 1.2em; background: #1f2a44; color: #fff; }
header h1 { font-size: 1.3em; margin: 0; }
.mono, td.mono { font-family: ui-monospace, monospace; font-size: .9em; }
.conn { margin-left: auto; padding: .1em .6em; border-radius: 1em; background: #556; }
.conn.ok { background: #2e7d32; }
.conn.error { background: #c62828; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(22em, 1fr));
       gap: 1em; padding: 1em; }
section { background: #fff; border-radius: 6px; padding: .5em 1em 1em;
          box-shadow: 0 1px 2px rgba(0,0,0,.1); overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 1.05em; margin: .4em 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .15em .5em; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
svg#mesh { width: 100%; max-height: 60vh; background: #fbfcfe; border: 1px solid #e3e6ec; }
.edge { stroke: #6b7a99; stroke-width: 2; }
.edge.busy { stroke: #d32f2f; stroke-dasharray: 6 4; }
.edge.half { stroke: #aaa; stroke-dasharray: 2 4; }
.edge.local { stroke: #1f5fbf; }
.edge.local.busy { stroke: #d32f2f; }
.rate { font-size: 11px; fill: #1f5fbf; }
.node circle { fill: #8fb3e8; stroke: #1f2a44; stroke-width: 1.5; }
.node.local circle { fill: #ffb74d; stroke-width: 2.5; }
.node.unreachable circle { fill: #ddd; stroke: #999; }
.node text { font-size: 12px; text-anchor: middle; fill: #111; }
.nodes.small .node text { font-size: 8px; }
.status-busy { color: #c62828; font-weight: 600; }
.status-up { color: #2e7d32; }
.legend { font-size: .85em; color: #555; }
.key { display: inline-block; width: .8em; height: .8em; border-radius: 50%;
       border: 1px solid #1f2a44; margin-left: .8em; vertical-align: middle; }
.key.local { background: #ffb74d; } .key.other { background: #8fb3e8; }
.key.gone { background: #ddd; border-color: #999; }
.key-line { display: inline-block; width: 1.6em; border-top: 2px solid #6b7a99;
            margin-left: .8em; vertical-align: middle; }
.key-line.busy { border-top: 2px dashed #d32f2f; }
.key-line.half { border-top: 2px dotted #aaa; }
"""

PAGE_JS = r"""
"use strict";
// Polls ./status and redraws. Names come from other nodes: text nodes only, never HTML.
const SVG_NS = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
// A node that requires its local secret was opened as /?token=SECRET: each poll sends it
// in a header (not in the URL, which servers log).
const TOKEN = new URLSearchParams(location.search).get("token");
let last = null;  // previous status, for rates
let polls = 0;

function h(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function s(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function num(n) { return typeof n === "number" ? n.toLocaleString("en") : String(n); }

function duration(sec) {
  sec = Math.floor(sec);
  const d = Math.floor(sec / 86400), hr = Math.floor(sec % 86400 / 3600);
  const m = Math.floor(sec % 3600 / 60), ss = sec % 60;
  return (d ? d + "d " : "") + (d || hr ? hr + "h " : "") +
         (d || hr || m ? m + "m " : "") + ss + "s";
}

// Per-second rate of a counter between the previous poll and this one (node clock).
function rate(now, prev, dt) {
  if (prev === undefined || dt <= 0 || typeof now !== "number") return null;
  return Math.max(0, (now - prev) / dt);
}

function fmtRate(r, unit) {
  if (r === null) return "\u2013";
  if (unit === "B") return bytes(Math.round(r)) + "/s";
  return (r < 10 ? r.toFixed(1) : num(Math.round(r))) + (unit ? " " + unit : "") + "/s";
}

function table(id, head, rows) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const tr = h("tr");
  for (const col of head) tr.appendChild(h("th", col.num ? {class: "num"} : {}, col.label));
  t.appendChild(tr);
  if (!rows.length) {
    const r = h("tr");
    r.appendChild(h("td", {colspan: head.length}, "none"));
    t.appendChild(r);
  }
  for (const row of rows) {
    const r = h("tr", row.cls ? {class: row.cls} : {});
    row.cells.forEach((v, i) => {
      const c = head[i];
      r.appendChild(h("td", c.num ? {class: "num"} : (c.mono ? {class: "mono"} : {}), v));
    });
    t.appendChild(r);
  }
}

// Hop counts from this node over announced links (busy ones included).
function hops(st) {
  const adj = new Map();
  for (const n of st.nodes) adj.set(n.id, []);
  for (const e of st.edges) {
    if (!adj.has(e.a)) adj.set(e.a, []);
    if (!adj.has(e.b)) adj.set(e.b, []);
    adj.get(e.a).push(e.b); adj.get(e.b).push(e.a);
  }
  const dist = new Map([[st.id, 0]]);
  const queue = [st.id];
  while (queue.length) {
    const x = queue.shift();
    for (const y of adj.get(x) || []) {
      if (!dist.has(y)) { dist.set(y, dist.get(x) + 1); queue.push(y); }
    }
  }
  return dist;
}

// Start positions: rings around this node, one per hop count, unreachable nodes outermost.
function rings(st, W, H) {
  const dist = hops(st);
  const byRing = new Map();
  let maxRing = 0;
  for (const n of st.nodes) {
    const d = n.local ? 0 : (n.reachable && dist.has(n.id) ? dist.get(n.id) : -1);
    if (d > maxRing) maxRing = d;
    if (!byRing.has(d)) byRing.set(d, []);
    byRing.get(d).push(n);
  }
  if (byRing.has(-1)) { byRing.set(maxRing + 1, byRing.get(-1)); byRing.delete(-1); }
  const count = Math.max(...byRing.keys(), 1);
  const R = Math.min(W, H) / 2;
  const pos = new Map();
  for (const [d, ns] of byRing) {
    ns.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : (a.id < b.id ? -1 : 1)));
    ns.forEach((n, i) => {
      const a = -Math.PI / 2 + 2 * Math.PI * (i + (d % 2) * 0.5) / ns.length;
      const r = R * d / count;
      pos.set(n.id, {x: W / 2 + r * Math.cos(a), y: H / 2 + r * Math.sin(a)});
    });
  }
  return pos;
}

// A deterministic force-directed layout (springs on links, repulsion between nodes),
// started from the previous drawing so that the picture stays put between polls.
let layoutKey = "";
let layoutPos = new Map();
function layout(st, W, H) {
  const key = st.nodes.map(n => n.id).sort().join() + "|" +
              st.edges.map(e => e.a + e.b).sort().join();
  if (key === layoutKey) return layoutPos;
  const start = rings(st, W, H);
  const ids = st.nodes.map(n => n.id);
  const p = ids.map(id => Object.assign({}, layoutPos.get(id) || start.get(id)));
  const index = new Map(ids.map((id, i) => [id, i]));
  const springs = st.edges.filter(e => index.has(e.a) && index.has(e.b))
                          .map(e => [index.get(e.a), index.get(e.b)]);
  const n = ids.length, k = Math.sqrt(W * H / Math.max(n, 1)) * 0.55;
  const iters = layoutPos.size ? 60 : 300;
  for (let it = 0; it < iters; it++) {
    const temp = (W / 8) * (1 - it / iters) + 1;
    const dx = new Float64Array(n), dy = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        let x = p[i].x - p[j].x, y = p[i].y - p[j].y;
        if (x === 0 && y === 0) { x = (i - j) * 0.1; y = 0.1; }
        const d2 = x * x + y * y, f = k * k / d2;
        dx[i] += x * f; dy[i] += y * f; dx[j] -= x * f; dy[j] -= y * f;
      }
    }
    for (const [a, b] of springs) {
      const x = p[a].x - p[b].x, y = p[a].y - p[b].y;
      const d = Math.sqrt(x * x + y * y) || 0.01, f = d / k;
      dx[a] -= x * f; dy[a] -= y * f; dx[b] += x * f; dy[b] += y * f;
    }
    for (let i = 0; i < n; i++) {
      // Gravity towards the middle keeps separate parts of the mesh in view.
      dx[i] += (W / 2 - p[i].x) * 0.02 * k / 10; dy[i] += (H / 2 - p[i].y) * 0.02 * k / 10;
      const m = Math.sqrt(dx[i] * dx[i] + dy[i] * dy[i]) || 1, step = Math.min(m, temp);
      p[i].x += dx[i] / m * step; p[i].y += dy[i] / m * step;
    }
  }
  // Fit the drawing into the view, keeping its proportions.
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const q of p) { x0 = Math.min(x0, q.x); y0 = Math.min(y0, q.y);
                       x1 = Math.max(x1, q.x); y1 = Math.max(y1, q.y); }
  const pad = 40, sc = Math.min((W - 2 * pad) / ((x1 - x0) || 1), (H - 2 * pad) / ((y1 - y0) || 1));
  layoutPos = new Map();
  ids.forEach((id, i) => layoutPos.set(id, {
    x: n === 1 ? W / 2 : W / 2 + (p[i].x - (x0 + x1) / 2) * sc,
    y: n === 1 ? H / 2 : H / 2 + (p[i].y - (y0 + y1) / 2) * sc}));
  layoutKey = key;
  return layoutPos;
}

function drawMesh(st, dt) {
  const svg = document.getElementById("mesh");
  const W = 640, H = 420;
  const pos = layout(st, W, H);
  const linkBy = new Map(st.links.map(l => [l.peer, l]));
  const prevBy = new Map(last ? last.links.map(l => [l.peer, l]) : []);
  svg.replaceChildren();
  const edges = s("g", {class: "edges"});
  const labels = s("g", {class: "rates"});
  for (const e of st.edges) {
    const a = pos.get(e.a), b = pos.get(e.b);
    if (!a || !b) continue;
    const mine = e.a === st.id || e.b === st.id;
    const cls = ["edge"];
    if (e.busy) cls.push("busy");
    if (!e.confirmed) cls.push("half");
    if (mine) cls.push("local");
    const line = s("line", {class: cls.join(" "), x1: a.x, y1: a.y, x2: b.x, y2: b.y,
                            "data-a": e.a_name || e.a, "data-b": e.b_name || e.b});
    line.appendChild(s("title", {}, (e.a_name || e.a) + " \u2013 " + (e.b_name || e.b) +
                       ": cost " + e.cost + (e.busy ? " (busy)" : "") +
                       (e.confirmed ? "" : " (announced by one end only)")));
    if (mine) {
      const link = linkBy.get(e.a === st.id ? e.b : e.a);
      const prev = link && prevBy.get(link.peer);
      const r = link && prev ? rate(link.frames_in + link.frames_out,
                                    prev.frames_in + prev.frames_out, dt) : null;
      if (r !== null) {
        line.setAttribute("stroke-width", String(2 + Math.min(6, Math.log10(1 + r))));
        labels.appendChild(s("text", {class: "rate", x: (a.x + b.x) / 2 + 4,
                                      y: (a.y + b.y) / 2 - 4}, fmtRate(r, "frames")));
      }
    }
    edges.appendChild(line);
  }
  svg.appendChild(edges);
  svg.appendChild(labels);
  // Smaller marks for big meshes, so that a hundred nodes stay readable.
  const size = st.nodes.length > 40 ? 5 : st.nodes.length > 15 ? 8 : 10;
  const nodes = s("g", {class: "nodes" + (size < 10 ? " small" : "")});
  for (const n of st.nodes) {
    const p = pos.get(n.id);
    const cls = ["node"];
    if (n.local) cls.push("local");
    if (!n.reachable) cls.push("unreachable");
    const g = s("g", {class: cls.join(" "), "data-id": n.id, "data-name": n.name});
    const r = n.local ? size + 4 : size;
    g.appendChild(s("circle", {cx: p.x, cy: p.y, r: r}));
    // Leaves are no nodes of the mesh: each node shows how many it carries.
    g.appendChild(s("text", {x: p.x, y: p.y + r + (size < 10 ? 9 : 13)},
                    n.name + (n.leaves ? " +" + n.leaves : "")));
    g.appendChild(s("title", {}, n.name + " (" + n.id + ")" +
                    (n.reachable ? ", distance " + n.distance : ", unreachable") +
                    ", " + n.interests + " channel(s), " + (n.leaves || 0) + " leaves"));
    nodes.appendChild(g);
  }
  svg.appendChild(nodes);
}

function render(st) {
  const dt = last ? st.time - last.time : 0;
  document.title = "yotonnet " + st.name;
  document.getElementById("node-name").textContent = st.name;
  document.getElementById("node-id").textContent = st.id;
  document.getElementById("uptime").textContent = "up " + duration(st.uptime) +
    (st.closed ? " (closed)" : "");
  drawMesh(st, dt);

  const t = st.traffic, pt = last ? last.traffic : {};
  table("traffic", [{label: ""}, {label: "total", num: 1}, {label: "rate", num: 1}],
    [["frames in", num(t.frames_in), fmtRate(rate(t.frames_in, pt.frames_in, dt))],
     ["frames out", num(t.frames_out), fmtRate(rate(t.frames_out, pt.frames_out, dt))],
     ["bytes in", bytes(t.bytes_in), fmtRate(rate(t.bytes_in, pt.bytes_in, dt), "B")],
     ["bytes out", bytes(t.bytes_out), fmtRate(rate(t.bytes_out, pt.bytes_out, dt), "B")],
     ["links up", st.links_up, ""], ["links busy", st.links_busy, ""],
     ["calls pending", st.calls_pending, ""]].map(c => ({cells: c})));

  const pc = last ? last.counters : {};
  table("counters", [{label: "counter"}, {label: "value", num: 1}, {label: "rate", num: 1}],
    Object.keys(st.counters).sort().map(k => ({cells: [k, num(st.counters[k]),
      fmtRate(rate(st.counters[k], pc[k], dt))]})));

  table("links", [{label: "peer"}, {label: "id", mono: 1}, {label: "dir"}, {label: "address"},
                  {label: "status"}, {label: "silent", num: 1}, {label: "frames in", num: 1},
                  {label: "frames out", num: 1}, {label: "bytes in", num: 1},
                  {label: "bytes out", num: 1}],
    st.links.map(l => ({cls: "status-" + l.status, cells: [l.peer_name, l.peer,
      l.direction + (l.role && l.role !== "node" ? " (" + l.role + ")" : ""),
      l.address || l.endpoint, l.status + (l.quiet && !l.busy ? " (quiet: routed around)" : ""),
      l.silent_for.toFixed(1) + " s", num(l.frames_in),
      num(l.frames_out), bytes(l.bytes_in), bytes(l.bytes_out)]})));

  table("channels", [{label: "name"}, {label: "id", mono: 1}, {label: "pattern"},
                     {label: "type"}, {label: "local ends"}, {label: "remote holders", num: 1},
                     {label: "published", num: 1}, {label: "received", num: 1},
                     {label: "discarded", num: 1}, {label: "dropped", num: 1},
                     {label: "missed", num: 1}, {label: "served", num: 1},
                     {label: "pending", num: 1}],
    st.channels.map(c => ({cells: [c.name === null ? "(unnamed)" : c.name, c.id, c.pattern,
      c.type || "", [c.publishers ? c.publishers + " pub" : "",
                     c.subscribers ? c.subscribers + " sub" : "",
                     c.repliers ? c.repliers + " rep" : "",
                     c.states ? c.states + " state" : ""].filter(x => x).join(", "),
      num(c.remote_holders), num(c.published), num(c.received), num(c.discarded),
      num(c.dropped) + (c.policies.length ? " (" + c.policies.join(", ") + ")" : ""),
      num(c.missed), num(c.served), num(c.pending)]})));

  table("routes", [{label: "to"}, {label: "via"}, {label: "distance", num: 1}],
    st.routes.map(r => ({cells: [r.dest_name || r.dest, r.next_hop_name || r.next_hop,
      r.distance === null ? "" : r.distance]})));
}

function setConn(state, text) {
  const c = document.getElementById("conn");
  c.className = "conn " + state;
  c.textContent = text;
  document.body.dataset.state = state;
}

async function poll() {
  try {
    const headers = TOKEN ? {Authorization: "Bearer " + TOKEN} : {};
    const resp = await fetch("status", {cache: "no-store", headers: headers});
    if (!resp.ok) {
      // The node's refusal says what to do (a token, a host name): show its first line.
      const why = (await resp.text()).split("\n")[0];
      throw new Error("HTTP " + resp.status + (why ? ": " + why : ""));
    }
    const st = await resp.json();
    render(st);
    last = st;
    polls += 1;
    document.body.dataset.polls = String(polls);
    setConn("ok", "live");
  } catch (err) {
    setConn("error", "status unreachable: " + err.message + " (retrying)");
  }
  setTimeout(poll, POLL_MS);
}

poll();
"""
