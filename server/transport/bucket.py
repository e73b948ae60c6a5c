"""The token bucket every rate limit uses: a connection's frames, and per client address its
upgrades and new rooms (:mod:`.limits`).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; each thing it
limits takes one. A take that finds less than one token is refused and counted as a strike;
the next take let through clears the strikes. The clock is the caller's
(``time.monotonic()`` seconds), so a bucket is tested without waiting.
"""

from __future__ import annotations

import math


class TokenBucket:
    """``rate`` tokens per second up to ``burst``, full at ``now``. ``strikes``: takes
    refused in a row."""

    __slots__ = ("burst", "rate", "strikes", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now
        self.strikes = 0

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float) -> bool:
        """Take a token at ``now``; whether there was one."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            self.strikes = 0
            return True
        self.strikes += 1
        return False

    def wait(self) -> int:
        """Whole seconds until the next token, at least 1 (after a refused take)."""
        return max(1, math.ceil((1 - self.tokens) / self.rate))

    def full(self, now: float) -> bool:
        """Whether the bucket is full at ``now`` (taking it changes nothing)."""
        self.refill(now)
        return self.tokens >= self.burst
