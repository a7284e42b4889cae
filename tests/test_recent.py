"""Ring 1: the table that serves each idempotent request once (yotonnet.core.recent)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core.recent import ANSWERED, SERVING, RecentRequests


class RecentRequestsTests(SynchronousTestCase):
    def test_a_request_is_serving_then_answered_with_its_reply(self) -> None:
        recent = RecentRequests(10, 100)
        self.assertNotIn((1, 5), recent)
        recent.taken((1, 5))
        self.assertIn((1, 5), recent)
        self.assertIs(recent.get((1, 5)), SERVING)
        recent.answered((1, 5), 0, b"reply")
        self.assertEqual(recent.get((1, 5)), (0, b"reply"))
        self.assertEqual(recent.reply_bytes, 5)
        recent.answered((1, 5), 0, b"second")  # answered once: the first reply stays
        self.assertEqual(recent.get((1, 5)), (0, b"reply"))

    def test_replies_of_requests_not_taken_are_not_kept(self) -> None:
        recent = RecentRequests(10, 100)
        recent.answered((1, 6), 0, b"reply")
        self.assertEqual((len(recent), recent.reply_bytes), (0, 0))

    def test_the_oldest_are_forgotten_past_the_entry_bound(self) -> None:
        recent = RecentRequests(3, 100)
        for req_id in range(5):
            recent.taken((1, req_id))
            recent.answered((1, req_id), 0, b"ab")
        self.assertEqual(sorted(k for k in recent.entries), [(1, 2), (1, 3), (1, 4)])
        self.assertEqual(recent.reply_bytes, 6)

    def test_the_oldest_replies_are_forgotten_past_the_byte_bound(self) -> None:
        recent = RecentRequests(100, 10)
        for req_id in range(4):
            recent.taken((1, req_id))
            recent.answered((1, req_id), 0, b"abcd")
        self.assertLessEqual(recent.reply_bytes, 10)
        self.assertEqual(sorted(recent.entries), [(1, 2), (1, 3)])
        # A reply larger than the whole budget: answered, not kept.
        recent.taken((1, 9))
        recent.answered((1, 9), 0, b"x" * 11)
        self.assertEqual(recent.get((1, 9)), ANSWERED)
        self.assertEqual(recent.reply_bytes, 8)
