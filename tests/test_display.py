"""Ring 2: text from peers is refused at the door or escaped wherever it is shown.

Node names arrive in HELLOs and routing records, link reasons and error texts
in ERROR frames and replies; all of it reaches terminals (``yotonnet status``,
the notes of every client command), log lines and the status page. These
tests check that a HELLO with a terminal escape never makes a link, and that
the text forms escape control characters in whatever they are given: a
clipboard write (OSC 52), a screen clear, a newline that fakes a line.
"""

from __future__ import annotations

import contextlib
import io
import json

from twisted.trial.unittest import SynchronousTestCase

from yotonnet import ContextConfig, LinkEvent
from yotonnet.cli import output
from yotonnet.cli.output import note, peer_text
from yotonnet.cli.status_text import format_status
from yotonnet.testing import MemoryMesh

FAST = ContextConfig(heartbeat=1.0, busy_timeout=3.0, handshake_timeout=5.0)

#: a clipboard write, a screen clear and a fake line in one node name
EVIL_NAME = "evil\x1b]52;c;aGk=\x07\x1b[2J\nall links healthy"


class HelloTests(SynchronousTestCase):
    def test_a_name_with_terminal_escapes_makes_no_link(self) -> None:
        mesh = MemoryMesh(names=["a", EVIL_NAME], config=FAST)
        self.addCleanup(mesh.close)
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
                       "direction": "in\r", "frames_in": 12, "frames_out": "x\x9b2J",
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
    def test_non_printable_characters_are_json_escapes(self) -> None:
        value = ["\x1b[2J", "\x9b2J", "a\u202eb", "\u2028", "\U000e0041", "é ü", "tab\there"]
        line = output.dumps(value)
        self.assertTrue(line.isprintable(), repr(line))
        self.assertEqual(json.loads(line), value)  # the same value for a JSON reader
        self.assertIn("é ü", line)  # printable text stays readable
        self.assertIn("\\udb40\\udc41", line)  # beyond the BMP: a surrogate pair
