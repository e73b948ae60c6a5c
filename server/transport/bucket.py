"""The rate limiter of one connection: a token bucket.

The bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second; each frame the
client sends takes one. A frame that finds less than one token is refused and counted as a
strike; the next frame let through clears the strikes. The clock is the caller's
(``time.monotonic()`` seconds), so the bucket is tested without waiting.
"""

from __future__ import annotations


class TokenBucket:
    """A token bucket, full at ``now`` (seconds, monotonic). ``strikes``: frames refused in
    a row."""

    __slots__ = ("_tokens", "_updated", "strikes")

    def __init__(self, burst: float, now: float) -> None:
        self._tokens = float(burst)
        self._updated = now
        self.strikes = 0

    def take(self, rate: float, burst: float, now: float) -> bool:
        """Take a token at ``now`` after refilling at ``rate`` tokens per second, up to
        ``burst``; whether there was one."""
        self._tokens = min(burst, self._tokens + (now - self._updated) * rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.strikes = 0
            return True
        self.strikes += 1
        return False
