"""Retry a model call on failures worth another try, with exponential backoff and jitter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cai.errors import ProviderError

__all__ = ["backoff_delay", "call_with_retries"]

T = TypeVar("T")


def backoff_delay(
    attempt: int, error: ProviderError, *, base: float = 0.5, cap: float = 60.0
) -> float:
    """Seconds to wait before retry number `attempt` (1-based).

    A server's `retry-after` wins; otherwise full jitter over an exponential window, which
    keeps many clients that failed together from retrying together.
    """
    if error.retry_after is not None:
        return min(max(error.retry_after, 0.0), cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    on_retry: Callable[[ProviderError, float], None] | None = None,
    base_delay: float = 0.5,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await `call()`, retrying retryable `ProviderError`s up to `max_retries` times."""
    attempt = 0
    while True:
        try:
            return await call()
        except ProviderError as e:
            attempt += 1
            if not e.retryable or attempt > max_retries:
                raise
            delay = backoff_delay(attempt, e, base=base_delay)
            if on_retry is not None:
                on_retry(e, delay)
            await sleep(delay)
