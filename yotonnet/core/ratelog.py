"""A budget for log lines that peers can cause, so that they cannot flood the log.

Sans-IO. A refused login, a denied claim or a dropped frame is worth a log
line, but a hostile peer can cause them by the thousand. :class:`LogBudget`
is a token bucket: ``burst`` lines at once, then ``per_second``; what it
holds back is counted, and the next line it lets through says how many were
held back, so nothing goes unnoticed and the log stays readable.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LogBudget"]


class LogBudget:
    def __init__(self, clock: Callable[[], float], per_second: float = 5.0,
                 burst: int = 50) -> None:
        self.clock = clock
        self.per_second = per_second
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = clock()
        #: lines held back since the last one let through
        self.held = 0
        #: lines held back in all
        self.held_total = 0

    def take(self) -> int | None:
        """None: hold this line back; else log it, adding that this many were held back
        before it (usually 0)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now
        if self.tokens < 1:
            self.held += 1
            self.held_total += 1
            return None
        self.tokens -= 1
        held, self.held = self.held, 0
        return held
