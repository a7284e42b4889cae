"""Ring 2: text from peers is refused at the door or escaped wherever it is shown.

Node names arrive in HELLOs and routing records, link reasons and error texts
in ERROR frames and replies; all of it reaches terminals (``yotonnet status``,
the notes of every client command), log lines and the status page. These
tests check that a HELLO with a terminal escape never makes a link, and that
the text forms escape control characters in whatever they are given: a
clipboard write (OSC 52), a screen clear, a newline that fakes a line.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from yotonnet import ContextConfig, LinkEvent
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
