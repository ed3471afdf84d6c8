"""Client-side request and token rate limits (`--rpm`, `--tpm`), and a shared pause after a 429.

Two token buckets, refilled continuously. A bucket holds at most one second's worth of its
per-minute rate, so calls are spread out rather than sent in a burst that trips the server's
own shorter windows. A call that needs more tokens than the bucket holds waits for a full
bucket and leaves it in debt, so one big call is never blocked forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["RateLimiter"]


class _Bucket:
    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` (capped at the capacity) is available."""
        need = min(amount, self.capacity) - self.level
        return max(need / self.rate, 0.0)


class RateLimiter:
    """Makes callers wait for `rpm` requests and `tpm` tokens a minute (either may be None).

    `acquire(tokens)` before each call; `settle(reserved, used)` after it, to give back what
    the call did not use (calls reserve their prompt plus `max_tokens`, and most replies are
    shorter). `pause(seconds)` holds every caller back, as a 429's `retry-after` asks.
    Waiters are served in arrival order.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(rpm, now) if rpm else None
        self._tokens = _Bucket(tpm, now) if tpm else None
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited = 0.0

    @property
    def limited(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, tokens: int = 0) -> None:
        if not self.limited and self._clock() >= self._paused_until:
            return
        async with self._lock:
            while True:
                now = self._clock()
                delay = self._paused_until - now
                for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        delay = max(delay, bucket.wait_for(amount))
                if delay <= 0:
                    break
                self.waited += delay
                await self._sleep(delay)
            if self._requests is not None:
                self._requests.level -= 1
            if self._tokens is not None:
                self._tokens.level -= tokens

    def settle(self, reserved: int, used: int) -> None:
        """Give back the tokens a call reserved but did not use."""
        if self._tokens is not None and used < reserved:
            self._tokens.refill(self._clock())
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + reserved - used)

    def pause(self, seconds: float) -> None:
        """Hold every caller back for `seconds` from now."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
