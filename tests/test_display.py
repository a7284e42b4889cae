"""Ring 2: text from peers is refused at the door or escaped wherever it is shown.

Node names arrive in HELLOs and routing records, link reasons and error texts
in ERROR frames and replies; all of it reaches terminals (``yotonnet status``,
the notes of every client command), log lines and the status page. These
tests check that a HELLO with a terminal escape never makes a link, and that
the text forms escape control characters in whatever they are given: a
clipboard write (OSC 52), a screen clear, a newline that fakes a line. The
JSON the client commands print is terminal-safe and reads back as the same
value, ints of any size included (in hex beyond 4300 digits); log lines in
every format hold no control character.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from yotonnet import ContextConfig, LinkEvent
from yotonnet.cli import output
from yotonnet.cli.client_logs import client_log_line
from yotonnet.cli.output import note, peer_text
from yotonnet.cli.status_text import format_status
from yotonnet.service.logs import make_observer, visible
from yotonnet.testing import MeshTestCase

FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0, handshake_timeout=5.0)

#: a clipboard write, a screen clear and a fake line in one node name
EVIL_NAME = "evil\x1b]52;c;aGk=\x07\x1b[2J\nall links healthy"


class HelloTests(MeshTestCase):
    def test_a_name_with_terminal_escapes_makes_no_link(self) -> None:
        mesh = self.make_mesh(names=["a", EVIL_NAME], config=FAST)
        a, evil = mesh
        seen: list[LinkEvent] = []
        evil.watch_links(seen.append)
        a_seen: list[LinkEvent] = []
        a.watch_links(a_seen.append)
        mesh.link(evil, a)
        mesh.advance(1.0)
        self.assertEqual(a.links, {})
        self.assertEqual(evil.links, {})
        self.assertEqual([e.status for e in a_seen if e.status == "up"], [])
        # The refusal reached the evil node in an ERROR frame, saying what to change.
        reasons = [e.reason or "" for e in seen if e.status == "closed"]
        self.assertTrue(any("HELLO refused: node name" in r for r in reasons), reasons)
        self.assertTrue(all(r.isprintable() for r in reasons), reasons)


def hostile_report() -> dict:
    """A ``yotonnet status`` report whose every text is hostile (a node may send anything)."""
    return {
        "endpoint": "tcp:127.0.0.1:7117",
        "client": {"id": "00000000000000aa", "name": "cli"},
        "node": {
            "name": EVIL_NAME, "id": "00000000000000bb\x1b[2J", "uptime": 3.25,
            "listening": ["tcp:127.0.0.1:7117\x07"],
            "links": [{"peer_name": EVIL_NAME, "peer": "00000000000000cc", "status": "up\x1b[K",
                       "direction": "in\r", "frames_in": 10**5000, "frames_out": "x\x9b2J",
                       "bytes_in": 2048, "bytes_out": "\x1b[31mred"}],
            "routes": [{"dest": "00000000000000cc", "dest_name": EVIL_NAME,
                        "next_hop": "00000000000000cc", "next_hop_name": "hop\u202eevil",
                        "distance": 1}],
            "channels": [{"name": "news\x1b]0;title\x07", "id": "01", "pattern": "pubsub\n",
                          "roles": ["sub\n"], "published": 1, "received": 2, "served": 0,
                          "remote_holders": 1}],
            "counters": {"forwarded\x1b[2J": 4, "no_route": "\x1b[1A"},
        },
        "mesh": {"nodes": [{"id": "00000000000000cc", "name": EVIL_NAME, "reachable": True,
                            "distance": 1, "links": ["00000000000000aa"], "interests": []}]},
    }


class StatusTextTests(SynchronousTestCase):
    def test_every_value_is_escaped(self) -> None:
        text = format_status(hostile_report())
        lines = text.splitlines()
        # Nothing hostile started a line of its own, and nothing a terminal acts on is left.
        self.assertEqual(len(lines), 11, text)
        for line in lines:
            self.assertTrue(line.isprintable(), repr(line))
        self.assertIn("evil\\x1b]52;c;aGk=\\x07\\x1b[2J\\nall links healthy", lines[0])
        self.assertIn("hop\\u202eevil", text)
        self.assertIn("this command", lines[-1])
        # An int too long for decimal shows in hex instead of failing.
        self.assertIn("frames 0x", text)

    def test_wrong_types_show_as_text(self) -> None:
        report = hostile_report()
        report["node"]["uptime"] = "soon"
        report["node"]["links"][0]["bytes_in"] = None
        text = format_status(report)
        self.assertIn("up soon s", text)
        self.assertIn("bytes None/\\x1b[31mred", text)


class NoteTests(SynchronousTestCase):
    def note(self, text: str) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            note(text)
        return err.getvalue()

    def test_own_line_breaks_stay_and_control_characters_are_escaped(self) -> None:
        self.assertEqual(self.note("plain\n  second"), "plain\n  second\n")
        self.assertEqual(self.note("a\x1b[2J\nb\x07"), "a\\x1b[2J\nb\\x07\n")

    def test_peer_text_cannot_start_a_line(self) -> None:
        reason = "closed\nyotonnet sub: link to tcp:127.0.0.1:7117 back"
        shown = self.note(f"yotonnet sub: link lost ({peer_text(reason)}); reconnecting")
        self.assertEqual(shown.count("\n"), 1)
        self.assertIn("closed\\nyotonnet sub", shown)


class JSONOutputTests(SynchronousTestCase):
    def test_ints_beyond_4300_digits_print_in_hex(self) -> None:
        self.assertEqual(output.MAX_DECIMAL_DIGITS, 4300)
        widest = 10**4300 - 1
        for value in (0, -1, 2**64, widest, -widest):
            self.assertEqual(output.dumps(value), str(value))
        for value in (10**4300, -(10**4300), 10**5000 + 1):
            self.assertEqual(json.loads(output.dumps(value)), {"$bigint": hex(value)})
            self.assertEqual(output.loads(output.dumps(value)), value)

    def test_a_16_mib_int_prints_in_hex(self) -> None:
        # The largest int a frame can carry: its decimal form would be 40 million digits.
        value = -(1 << (8 * 16 * 2**20 - 1)) + 12345
        line = output.dumps([value, {"k": value}])
        self.assertEqual(output.loads(line), [value, {"k": value}])

    def test_nested_ints_and_keys(self) -> None:
        big = 10**5000
        value = {big: [1, (big,)], 3: "x", None: b"\x00", (1, 2): True, "s": 1.5}
        shown = json.loads(output.dumps(value))
        self.assertEqual(shown, {
            json.dumps({"$bigint": hex(big)}): [1, [{"$bigint": hex(big)}]], "3": "x",
            "null": {"$base64": "AA=="}, "[1, 2]": True, "s": 1.5,
        })
        self.assertIs(output.to_json(True), True)  # a bool is not an int here

    def test_the_interpreters_own_lower_limit_is_kept(self) -> None:
        # PYTHONINTMAXSTRDIGITS may lower the limit; decimal must stay convertible.
        before = sys.get_int_max_str_digits()
        self.addCleanup(sys.set_int_max_str_digits, before)
        sys.set_int_max_str_digits(640)
        self.assertEqual(output.dumps(10**639), str(10**639))
        self.assertEqual(json.loads(output.dumps(10**640)), {"$bigint": hex(10**640)})
        sys.set_int_max_str_digits(0)  # no limit: still at most 4300 digits in decimal
        self.assertEqual(json.loads(output.dumps(10**4300)), {"$bigint": hex(10**4300)})

    def test_non_printable_characters_are_json_escapes(self) -> None:
        value = ["\x1b[2J", "\x9b2J", "a\u202eb", "\u2028", "\U000e0041", "é ü", "tab\there"]
        line = output.dumps(value)
        self.assertTrue(line.isprintable(), repr(line))
        self.assertEqual(json.loads(line), value)  # the same value for a JSON reader
        self.assertIn("é ü", line)  # printable text stays readable
        self.assertIn("\\udb40\\udc41", line)  # beyond the BMP: a surrogate pair

    def test_loads_reads_bigint_objects_and_refuses_bad_ones(self) -> None:
        self.assertEqual(output.loads('{"$bigint": "-0x1F"}'), -31)
        self.assertEqual(output.loads('{"$bigint": "0x1f", "other": 1}'),
                         {"$bigint": "0x1f", "other": 1})  # not the marker: a plain dict
        for bad in ('{"$bigint": 31}', '{"$bigint": "31"}', '{"$bigint": "0x"}',
                    '{"$bigint": "0xZZ"}', '{"$bigint": "--0x1"}'):
            e = self.assertRaises(ValueError, output.loads, bad)
            self.assertIn('must hold a hex string such as "0x1f"', str(e))
        e = self.assertRaises(ValueError, output.loads, "1" * 4301)
        self.assertIn("an int of 4301 decimal digits", str(e))
        self.assertEqual(output.loads("-" + "9" * 4300), -(10**4300 - 1))


class LogLineTests(SynchronousTestCase):
    """Whatever reaches a log field, the lines written hold no control character."""

    def log_to(self, observer: object) -> Logger:
        return Logger(namespace="yotonnet.test", observer=observer)

    def test_text_lines(self) -> None:
        out = io.StringIO()
        self.log_to(make_observer("text", out)).warn(
            "link to {peer} closed: {why}", peer=EVIL_NAME, why="bye\r2026-01-01 [-] fine")
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 2, text)  # the name's newline: an indented line
        for line in text.splitlines():
            self.assertTrue(line.replace("\t", " ").isprintable(), repr(line))
        self.assertIn("evil\\x1b]52;c;aGk=\\x07\\x1b[2J\n\tall links healthy", text)
        self.assertIn("bye\\r2026-01-01", text)

    def test_json_lines_keep_the_field_and_escape_log_text(self) -> None:
        out = io.StringIO()
        self.log_to(make_observer("json", out)).info("hello from {peer}", peer=EVIL_NAME)
        event = json.loads(out.getvalue())
        self.assertEqual(event["peer"], EVIL_NAME)  # the data, JSON-escaped on the line
        self.assertTrue(event["log_text"].replace("\n", " ").isprintable(), event["log_text"])
        self.assertTrue(out.getvalue().rstrip("\n").isprintable())

    def test_client_lines(self) -> None:
        lines: list[str | None] = []
        self.log_to(lambda event: lines.append(client_log_line(event))).warn(
            "link to {peer} lost", peer=EVIL_NAME)
        (line,) = lines
        self.assertTrue(line.startswith("yotonnet: link to evil\\x1b]52"), line)
        self.assertEqual(line.count("\n"), 2)
        self.assertIn("\n\tall links healthy lost\n", line)

    def test_printable_text_is_unchanged(self) -> None:
        self.assertEqual(visible("plain é text\n\tnext"), "plain é text\n\tnext")
        self.assertEqual(visible("\x1b[2J\x9b\u202e"), "\\x1b[2J\\x9b\\u202e")
