"""Ring 1: the IOPub log of a Jupyter frontend process (what waits, what is kept, rewinds).

* messages go out in order, each once, and stay kept after they went;
* the bounds (messages, bytes) drop the oldest; those dropped before they
  were sent are counted as lost and skipped, the newest is kept whatever
  its size;
* ``rewind_after`` moves the cursor back to just after a kept message, never
  forward, and says how many go out again and how many waited anyway; an
  unknown or dropped id changes nothing.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from yotonnet.kernel.iopub_log import IOPubLog


def frames(n: int, size: int = 1) -> list[bytes]:
    return [b"h", str(n).encode().ljust(size, b".")]


def send_all(log: IOPubLog) -> list[int]:
    sent = []
    while (f := log.to_send()) is not None:
        sent.append(int(f[1].rstrip(b".")))
        log.advance()
    return sent


class IOPubLogTests(TestCase):
    def test_in_order_once_and_kept(self) -> None:
        log = IOPubLog()
        for n in range(5):
            log.append(f"m{n}", frames(n))
        self.assertEqual(log.waiting(), 5)
        self.assertEqual(send_all(log), [0, 1, 2, 3, 4])
        self.assertEqual((log.waiting(), send_all(log)), (0, []))
        self.assertTrue(log.holds("m0"))
        log.advance()  # nothing to advance past: no harm
        self.assertEqual(log.cursor, 5)

    def test_rewind_sends_what_followed_again_then_the_rest(self) -> None:
        log = IOPubLog()
        for n in range(6):
            log.append(f"m{n}", frames(n))
        for _ in range(4):
            log.advance()  # m0..m3 sent; m4, m5 wait
        self.assertEqual(log.rewind_after("m1"), (2, 2))
        self.assertEqual(send_all(log), [2, 3, 4, 5])
        # Never forward: a rewind to after a message not sent yet keeps the cursor.
        log.append("m6", frames(6))
        log.append("m7", frames(7))
        log.advance()
        self.assertEqual(log.rewind_after("m6"), (0, 1))
        self.assertEqual(send_all(log), [7])
        self.assertIsNone(log.rewind_after("nobody"))
        self.assertEqual(log.cursor, log.end)

    def test_message_bound_drops_the_oldest_and_counts_unsent_ones_lost(self) -> None:
        log = IOPubLog(keep_messages=3)
        for n in range(3):
            log.append(f"m{n}", frames(n))
        log.advance()  # m0 went
        log.append("m3", frames(3))  # drops m0 (sent: not lost)
        self.assertEqual((log.base, log.lost), (1, 0))
        log.append("m4", frames(4))  # drops m1, which never went
        self.assertEqual((log.base, log.lost, log.cursor), (2, 1, 2))
        self.assertFalse(log.holds("m1"))
        self.assertIsNone(log.rewind_after("m0"))
        self.assertEqual(send_all(log), [2, 3, 4])
        self.assertEqual(log.oldest_id(), "m2")

    def test_byte_bound_keeps_the_newest_whatever_its_size(self) -> None:
        log = IOPubLog(keep_bytes=100)
        log.append("a", frames(1, 40))
        log.append("b", frames(2, 40))
        self.assertEqual(log.bytes, 82)
        log.append("c", frames(3, 40))  # 123 > 100: "a" goes
        self.assertEqual((log.base, log.bytes, log.lost), (1, 82, 1))
        log.append("huge", frames(4, 1000))
        self.assertEqual((log.base, log.waiting(), log.oldest_id()), (3, 1, "huge"))
        self.assertEqual(send_all(log), [4])

    def test_messages_without_an_id_and_bad_bounds(self) -> None:
        log = IOPubLog()
        log.append(None, frames(0))
        log.append("x", frames(1))
        self.assertEqual(log.oldest_id(), "x")
        self.assertEqual(send_all(log), [0, 1])
        with self.assertRaises(ValueError):
            IOPubLog(keep_messages=0)
