"""Ring 2: what a node reports about itself, on deterministic in-memory meshes.

:func:`yotonnet.service.status.node_status` (links, routes, mesh, channels, counters;
plain JSON data that moves with the traffic), :func:`yotonnet.service.status.prometheus_text`
checked by a strict parser of the Prometheus text format 0.0.4 written here,
and :mod:`yotonnet.service.logs` (text and JSON lines carrying the structured fields
of the events yotonnet really emits).
"""

from __future__ import annotations

import io
import json
import math
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.logger import LogBeginner, Logger, LogPublisher, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from yotonnet import (
    BINARY,
    ContextConfig,
    PubChannel,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
)
from yotonnet.core.names import printable
from yotonnet.core.wire import HEADER_SIZE
from yotonnet.service.logs import make_observer, start_logging
from yotonnet.service.status import node_status, prometheus_text
from yotonnet.testing import MemoryMesh, MeshTestCase

FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0)

# --- a strict parser of the Prometheus text exposition format 0.0.4

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter", "gauge", "untyped", "histogram", "summary"}


class PromError(AssertionError):
    pass


def _parse_labels(text: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` from ``text[pos]`` (an opening brace); return labels and end."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        if text.startswith("}", pos):
            return labels, pos + 1
        m = _LABEL.match(text, pos)
        if not m:
            raise PromError(f"line {lineno}: bad label name at {text[pos:]!r}")
        name = m.group()
        if name in labels:
            raise PromError(f"line {lineno}: label {name} twice")
        pos = m.end()
        if not text.startswith('="', pos):
            raise PromError(f"line {lineno}: expected =\" after label {name}")
        pos += 2
        value = []
        while True:
            if pos >= len(text):
                raise PromError(f"line {lineno}: unterminated label value")
            ch = text[pos]
            if ch == "\\":
                esc = text[pos + 1 : pos + 2]
                if esc not in ("\\", '"', "n"):
                    raise PromError(f"line {lineno}: bad escape \\{esc}")
                value.append("\n" if esc == "n" else esc)
                pos += 2
            elif ch == '"':
                pos += 1
                break
            else:
                value.append(ch)
                pos += 1
        labels[name] = "".join(value)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("}", pos):
            raise PromError(f"line {lineno}: expected , or }} after label {name}")


def _parse_value(text: str, lineno: int) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("+", ""))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise PromError(f"line {lineno}: bad sample value {text!r}")
    return float(text)


def parse_prometheus(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": {frozenset(labels): value}}.

    Strict: the text ends in a newline, no blank lines, HELP and TYPE at most
    once and before the family's samples, a family's samples contiguous,
    no duplicate series, counters named *_total with finite values >= 0.
    """
    if not text.endswith("\n"):
        raise PromError("exposition must end with a newline")
    families: dict[str, dict] = {}
    current: str | None = None
    finished: set[str] = set()

    def family(name: str) -> dict:
        nonlocal current
        if name != current:
            if name in finished:
                raise PromError(f"family {name} is not contiguous")
            if current is not None:
                finished.add(current)
            current = name
        return families.setdefault(name, {"type": None, "help": None, "samples": {}})

    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        if not line:
            raise PromError(f"line {lineno}: blank line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not _NAME.fullmatch(name):
                    raise PromError(f"line {lineno}: bad metric name {name!r}")
                fam = family(name)
                rest = parts[3] if len(parts) == 4 else ""
                if parts[1] == "HELP":
                    if fam["help"] is not None:
                        raise PromError(f"line {lineno}: second HELP for {name}")
                    if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                        raise PromError(f"line {lineno}: bad escape in HELP")
                    fam["help"] = rest
                else:
                    if fam["type"] is not None or fam["samples"]:
                        raise PromError(f"line {lineno}: TYPE for {name} late or twice")
                    if rest not in _TYPES:
                        raise PromError(f"line {lineno}: unknown type {rest!r}")
                    fam["type"] = rest
            continue
        m = _NAME.match(line)
        if not m:
            raise PromError(f"line {lineno}: bad sample {line!r}")
        name, pos = m.group(), m.end()
        labels: dict[str, str] = {}
        if line.startswith("{", pos):
            labels, pos = _parse_labels(line, pos, lineno)
        if not line.startswith(" ", pos):
            raise PromError(f"line {lineno}: expected a space before the value")
        fields = line[pos + 1 :].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and not fields[1].lstrip("-").isdigit()):
            raise PromError(f"line {lineno}: expected value [timestamp], got {fields!r}")
        value = _parse_value(fields[0], lineno)
        fam = family(name)
        key = frozenset(labels.items())
        if key in fam["samples"]:
            raise PromError(f"line {lineno}: duplicate series {name}{labels}")
        if fam["type"] == "counter" and not (math.isfinite(value) and value >= 0):
            raise PromError(f"line {lineno}: counter {name} = {value}")
        fam["samples"][key] = value
    for name, fam in families.items():
        if fam["type"] == "counter" and not name.endswith("_total"):
            raise PromError(f"counter {name} does not end in _total")
    return families


def sample(families: dict, metric: str, /, **labels: str) -> float:
    """The value of the one series of ``metric`` whose labels include ``labels``."""
    found = [
        v for k, v in families[metric]["samples"].items() if set(labels.items()) <= set(k)
    ]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} series of {metric} match {labels}")
    return found[0]


class ParserTests(SynchronousTestCase):
    """The parser itself refuses what the format forbids (or it would prove nothing)."""

    def test_refuses_malformed_expositions(self) -> None:
        good = '# HELP x_total h\n# TYPE x_total counter\nx_total{a="1"} 3\n'
        self.assertEqual(sample(parse_prometheus(good), "x_total", a="1"), 3)
        for bad in (
            good[:-1],  # no final newline
            good + "\n",  # blank line
            good + 'x_total{a="1"} 4\n',  # duplicate series
            good + "# TYPE y gauge\ny 1\nx_total 2\n",  # family not contiguous
            '# TYPE x counter\nx 1\n',  # counter without _total
            '# TYPE x_total counter\nx_total -1\n',  # negative counter
            'x{a="\n"} 1\n',  # raw newline in a label value
            'x{a="\\t"} 1\n',  # unknown escape
            'x{a="1",a="2"} 1\n',  # label twice
            "x 1\n# TYPE x gauge\n",  # TYPE after samples
            "x one\n",  # not a number
            "9x 1\n",  # bad name
        ):
            self.assertRaises(PromError, parse_prometheus, bad)


_CHANNEL_NAMES = st.lists(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,8}", fullmatch=True), min_size=1, max_size=3
).map(".".join)


class StatusTests(MeshTestCase):
    mesh_config = FAST

    def test_links_routes_and_mesh(self) -> None:
        mesh = self.make_mesh(names=["a", "b", "c", "d"])
        mesh.link_chain()  # a - b - c - d
        status = node_status(mesh["b"])
        self.assertEqual(status["name"], "b")
        self.assertEqual(status["id"], f"{mesh['b'].node_id:016x}")
        self.assertEqual(json.loads(json.dumps(status)), status)  # plain data only
        self.assertEqual(
            sorted((x["peer_name"], x["direction"], x["status"]) for x in status["links"]),
            [("a", "in", "up"), ("c", "out", "up")],
        )
        self.assertEqual((status["links_up"], status["links_busy"]), (2, 0))
        routes = {r["dest_name"]: (r["next_hop_name"], r["distance"]) for r in status["routes"]}
        self.assertEqual(routes, {"a": ("a", 1), "c": ("c", 1), "d": ("c", 2)})
        self.assertEqual([n["name"] for n in status["nodes"] if n["local"]], ["b"])
        self.assertTrue(all(n["reachable"] for n in status["nodes"]))
        edges = {frozenset((e["a_name"], e["b_name"])) for e in status["edges"]}
        self.assertEqual(edges, {frozenset("ab"), frozenset("bc"), frozenset("cd")})
        self.assertTrue(all(e["confirmed"] and not e["busy"] for e in status["edges"]))
        # Every key the context counts is reported, whatever it is.
        self.assertEqual(status["counters"], mesh["b"].counters)

    def test_counters_move_with_traffic(self) -> None:
        mesh = self.make_mesh(names=["a", "b", "c", "d"])
        mesh.link_chain()
        SubChannel(mesh["d"], "news")
        mesh.settle()
        pub = PubChannel(mesh["a"], "news")
        before = node_status(mesh["b"])
        prom_before = parse_prometheus(prometheus_text(mesh["b"]))
        for i in range(20):
            pub.send(f"message {i}")
        mesh.settle()
        after = node_status(mesh["b"])
        prom_after = parse_prometheus(prometheus_text(mesh["b"]))

        self.assertEqual(after["counters"]["forwarded"] - before["counters"]["forwarded"], 20)
        to_c = {x["peer_name"]: x for x in before["links"]}["c"]
        to_c_after = {x["peer_name"]: x for x in after["links"]}["c"]
        # Each message is a 44-byte header and its payload, on every hop.
        self.assertGreaterEqual(to_c_after["bytes_out"] - to_c["bytes_out"], 20 * (44 + 9))
        self.assertGreater(to_c_after["frames_out"], to_c["frames_out"])
        self.assertGreater(after["traffic"]["frames_in"], before["traffic"]["frames_in"])
        from_c = {x["peer_name"]: x for x in node_status(mesh["d"])["links"]}["c"]
        self.assertGreaterEqual(from_c["frames_in"], 20)
        self.assertEqual(
            sample(prom_after, "yotonnet_forwarded_total")
            - sample(prom_before, "yotonnet_forwarded_total"),
            20,
        )
        self.assertEqual(
            sample(prom_after, "yotonnet_link_bytes_out_total", peer_name="c"),
            to_c_after["bytes_out"],
        )
        # The ends: the publisher counts what it sent, the subscriber what it got.
        (news_a,) = node_status(mesh["a"])["channels"]
        # The core keeps its publishers (for flow control): their channel has its name.
        self.assertEqual(news_a["name"], "news")
        self.assertEqual((news_a["published"], news_a["publishers"]), (20, 1))
        news_d = {c["name"]: c for c in node_status(mesh["d"])["channels"]}["news"]
        self.assertEqual(
            (news_d["pattern"], news_d["roles"], news_d["subscribers"], news_d["received"]),
            ("pubsub", ["sub"], 1, 20),
        )
        self.assertEqual(news_d["pending"], 20)  # nobody called recv()
        prom_d = parse_prometheus(prometheus_text(mesh["d"]))
        self.assertEqual(sample(prom_d, "yotonnet_channel_received_total", channel="news"), 20)

    def test_figures_asked_in_the_turn_that_published_count_every_message(self) -> None:
        # Messages on the publish lane are charged to the retention when it closes; a
        # status asked before that (a timer published, an HTTP read follows in the same
        # reactor turn) must still count them.
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")
        SubChannel(mesh["b"], "news", BINARY)
        mesh.settle()
        pub = PubChannel(mesh["a"], "news", BINARY)
        mesh.settle()
        for _ in range(20):
            pub.send(b"x" * 50)
        self.assertIsNotNone(mesh["a"].node.pubsub.lane.outlet)  # (they took the lane)
        retained = node_status(mesh["a"])["repair"]["retained_bytes"]
        self.assertEqual(retained, 20 * (HEADER_SIZE + 50))
        self.assertEqual(node_status(mesh["a"])["repair"]["retained_bytes"], retained)

    def test_request_and_state_channels(self) -> None:
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")

        class Math(RepChannel):
            def add(self, x: int, y: int) -> int:
                return x + y

        Math(mesh["b"], "math")
        Math(mesh["b"], "math")
        StateChannel(mesh["a"], "settings").send({"theme": "dark"})
        StateChannel(mesh["b"], "settings")
        mesh.settle()
        results: list[int] = []
        req = ReqChannel(mesh["a"], "math")
        for i in range(3):
            req.add(i, 1).addCallback(results.append)
        self.assertEqual(node_status(mesh["a"])["calls_pending"], 3)
        mesh.settle()
        self.assertEqual(results, [1, 2, 3])
        chans = {c["name"]: c for c in node_status(mesh["b"])["channels"]}
        self.assertEqual(sorted(chans), ["math", "settings"])
        self.assertEqual((chans["math"]["repliers"], chans["math"]["served"]), (2, 3))
        self.assertEqual((chans["settings"]["states"], chans["settings"]["remote_holders"]), (1, 1))
        self.assertEqual(chans["settings"]["type"], "OBJECT")
        prom = parse_prometheus(prometheus_text(mesh["b"]))
        self.assertEqual(
            sample(prom, "yotonnet_channel_local_ends", channel="math", role="rep"), 2
        )
        self.assertEqual(sample(prom, "yotonnet_channel_served_total", channel="math"), 3)
        self.assertEqual(node_status(mesh["a"])["calls_pending"], 0)

    def test_busy_link_is_reported(self) -> None:
        mesh = self.make_mesh(names=["a", "b", "c"])
        mesh.link_chain()
        conn = mesh.connection("a", "b")
        conn.hold(mesh["b"])  # b looks stuck to a: its socket is open but nothing arrives
        mesh.advance(FAST.busy_timeout + 2)
        status = node_status(mesh["a"])
        link = {x["peer_name"]: x for x in status["links"]}["b"]
        self.assertEqual((link["status"], link["busy"], link["up"]), ("busy", True, True))
        self.assertGreaterEqual(link["silent_for"], FAST.busy_timeout)
        self.assertEqual(status["links_busy"], 1)
        self.assertEqual([e["busy"] for e in status["edges"] if "a" in (e["a_name"], e["b_name"])],
                         [True])
        prom = parse_prometheus(prometheus_text(mesh["a"]))
        self.assertEqual(sample(prom, "yotonnet_link_busy", peer_name="b"), 1)
        self.assertEqual(sample(prom, "yotonnet_links_busy"), 1)
        conn.release(mesh["b"])
        mesh.advance(FAST.heartbeat * 2)
        prom = parse_prometheus(prometheus_text(mesh["a"]))
        self.assertEqual(sample(prom, "yotonnet_link_busy", peer_name="b"), 0)

    def test_cut_link_leaves_the_status(self) -> None:
        mesh = self.make_mesh(names=["a", "b", "c"])
        mesh.link_chain()
        mesh.cut("b", "c")
        mesh.settle()  # b's new record reaches a
        status = node_status(mesh["a"])
        self.assertEqual([r["dest_name"] for r in status["routes"]], ["b"])
        unreachable = [n["name"] for n in status["nodes"] if not n["reachable"]]
        self.assertEqual(unreachable, ["c"])
        prom = parse_prometheus(prometheus_text(mesh["a"]))
        self.assertEqual(sample(prom, "yotonnet_nodes_reachable"), 1)

    def test_every_counter_key_is_reported(self) -> None:
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")
        ctx = mesh["a"]
        # Keys the flow-control work may add; and a value that is not a number.
        ctx.counters["drops_by_policy"] = 7
        ctx.counters["odd key-name.x"] = 2
        ctx.counters["not_a_number"] = {"nested": object()}
        status = node_status(ctx)
        self.assertEqual(status["counters"]["drops_by_policy"], 7)
        self.assertIn("nested", status["counters"]["not_a_number"])
        json.dumps(status)
        prom = parse_prometheus(prometheus_text(ctx))
        self.assertEqual(sample(prom, "yotonnet_drops_by_policy_total"), 7)
        self.assertEqual(sample(prom, "yotonnet_odd_key_name_x_total"), 2)
        self.assertEqual(prom["yotonnet_drops_by_policy_total"]["type"], "counter")
        self.assertFalse([name for name in prom if "not_a_number" in name])

    def test_drops_by_policy_per_channel(self) -> None:
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")
        SubChannel(mesh["b"], "ticks", policy="latest", keep=2)
        SubChannel(mesh["b"], "ticks")  # lossless: keeps all five
        mesh.settle()
        pub = PubChannel(mesh["a"], "ticks")
        for i in range(5):
            pub.send(f"t{i}")
        mesh.settle()
        ticks = {c["name"]: c for c in node_status(mesh["b"])["channels"]}["ticks"]
        self.assertEqual(sorted(ticks["policies"]), ["latest", "lossless"])
        self.assertEqual((ticks["received"], ticks["dropped"], ticks["pending"]), (10, 3, 7))
        self.assertGreater(ticks["backlog"], 0)  # the lossless end's bytes not yet taken
        prom = parse_prometheus(prometheus_text(mesh["b"]))
        self.assertEqual(sample(prom, "yotonnet_channel_dropped_total", channel="ticks"), 3)
        self.assertEqual(
            sample(prom, "yotonnet_channel_backlog_bytes", channel="ticks"), ticks["backlog"]
        )

    def test_new_link_fields_are_exported(self) -> None:
        mesh = self.make_mesh(names=["a", "b"])
        mesh.link("a", "b")
        link = mesh["a"].links[mesh["b"].node_id]
        info = link.info

        def more() -> dict:  # what a newer Link.info() might add
            return {**info(), "queued_bytes": 1234, "flag": True, "label": "x"}

        link.info = more  # type: ignore[method-assign]
        status = node_status(mesh["a"])
        self.assertEqual(status["links"][0]["queued_bytes"], 1234)
        prom = parse_prometheus(prometheus_text(mesh["a"]))
        self.assertEqual(sample(prom, "yotonnet_link_queued_bytes", peer_name="b"), 1234)
        self.assertEqual(prom["yotonnet_link_queued_bytes"]["type"], "untyped")
        self.assertNotIn("yotonnet_link_flag", prom)
        self.assertNotIn("yotonnet_link_label", prom)

    def test_uptime_follows_the_context_clock(self) -> None:
        mesh = self.make_mesh(names=["a"])
        first = node_status(mesh["a"])["uptime"]
        mesh.advance(12.5)
        self.assertEqual(node_status(mesh["a"])["uptime"] - first, 12.5)
        prom = parse_prometheus(prometheus_text(mesh["a"]))
        self.assertEqual(sample(prom, "yotonnet_uptime_seconds"), first + 12.5)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.text(min_size=1, max_size=40), channel=_CHANNEL_NAMES)
    @example(name='a\x1b[2J\n"b"\\', channel="news")
    @example(name='<b>"q"</b>\\', channel="news")
    def test_hostile_names_stay_valid(self, name: str, channel: str) -> None:
        """Peer names come from other nodes: quotes and backslashes are escaped; a name
        with control characters never gets in (its HELLO is refused)."""
        mesh = MemoryMesh(names=["a", name], config=FAST)
        try:
            mesh.link("a", 1)
            SubChannel(mesh["a"], channel)
            mesh.settle()
            prom = parse_prometheus(prometheus_text(mesh["a"]))
            if name.isprintable():
                self.assertEqual(sample(prom, "yotonnet_link_up", peer_name=name), 1)
            else:
                self.assertEqual(prom["yotonnet_link_up"]["samples"], {})
            self.assertEqual(
                sample(prom, "yotonnet_channel_local_ends", channel=channel, role="sub"), 1
            )
            # The node's own name is not checked by a HELLO: its label is escaped instead.
            text = prometheus_text(mesh[1])
            self.assertTrue(all(line.isprintable() for line in text.splitlines()), text)
            peer_side = parse_prometheus(text)
            shown = name if name.isprintable() else printable(name, 1000)
            self.assertEqual(sample(peer_side, "yotonnet_node_info", name=shown), 1)
            status = node_status(mesh["a"])
            self.assertEqual(json.loads(json.dumps(status)), status)
        finally:
            mesh.close()


class LogTests(SynchronousTestCase):
    def capture_global(self, fmt: str) -> io.StringIO:
        """Send the process's real log events (globalLogPublisher) to a buffer while testing."""
        out = io.StringIO()
        observer = make_observer(fmt, out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return out

    def test_json_lines_keep_the_structured_fields(self) -> None:
        out = self.capture_global("json")
        mesh = MemoryMesh(names=["a", "b"], config=FAST)
        mesh.link("a", "b")
        mesh.cut("a", "b")
        mesh.close()
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        up = [e for e in events if e.get("log_format") == "{node}: link up to {peer}"]
        self.assertEqual(sorted(e["node"] for e in up), ["a", "b"])
        a_up = [e for e in up if e["node"] == "a"][0]
        self.assertEqual(a_up["peer"], "b@memory:b")
        self.assertEqual(a_up["log_namespace"], "yotonnet.context")
        self.assertEqual(a_up["log_level"]["name"], "info")
        self.assertEqual(a_up["log_text"], "a: link up to b@memory:b")
        down = [e for e in events if e.get("log_format", "").startswith("{node}: link down")]
        self.assertTrue(down)
        self.assertTrue(all("reason" in e and "peer" in e for e in down))

    def test_text_lines(self) -> None:
        out = self.capture_global("text")
        mesh = MemoryMesh(names=["a", "b"], config=FAST)
        mesh.link("a", "b")
        mesh.close()
        lines = [x for x in out.getvalue().splitlines() if "link up to" in x]
        self.assertEqual(len(lines), 2)
        self.assertIn("[yotonnet.context#info] a: link up to b@memory:b", "\n".join(lines))

    def test_failures_carry_their_traceback_in_json(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="yotonnet.test", observer=make_observer("json", out))
        try:
            raise KeyError("boom")
        except KeyError:
            log.failure("watcher {name} failed", name="w1")
        event = json.loads(out.getvalue())
        self.assertEqual(event["name"], "w1")
        self.assertIn("watcher w1 failed", event["log_text"])
        self.assertIn("KeyError: 'boom'", event["log_text"])

    def test_start_logging(self) -> None:
        publisher = LogPublisher()
        errors = io.StringIO()
        beginner = LogBeginner(publisher, errors, type("Std", (), {})(), _NoWarnings())
        Logger(namespace="yotonnet.test", observer=publisher).info("early {x}", x=1)
        out = io.StringIO()
        start_logging("json", out, beginner=beginner)
        Logger(namespace="yotonnet.test", observer=publisher).warn("late {x}", x=2)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        # Events logged before logging began are buffered and written too.
        self.assertEqual([(e["log_text"], e["x"]) for e in events], [("early 1", 1), ("late 2", 2)])

    def test_bad_format(self) -> None:
        e = self.assertRaises(ValueError, start_logging, "yaml", io.StringIO())
        self.assertIn("'yaml'", str(e))
        self.assertIn("text", str(e))
        self.assertIn("json", str(e))


class _NoWarnings:
    """A stand-in warnings module for a private LogBeginner (it replaces showwarning)."""

    showwarning = None
