"""A token bucket per connection."""

import time


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = clock()

    def credit(self, seconds):
        """Add what `seconds` refill, above the burst too: the time the server kept the client
        waiting (a Redis stall) must not count against the frames it sent meanwhile."""
        self.tokens += seconds * self.rate

    def take(self, now=None):
        """Spend one token; False when the bucket is empty."""
        now = time.monotonic() if now is None else now
        self.tokens = max(self.tokens, min(self.burst, self.tokens + (now - self.stamp) * self.rate))
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
