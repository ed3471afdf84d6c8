"""The rate limiter and the retry loop, on a fake clock: exact waits, no real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from cai.errors import BadRequestError, RateLimitError, ServerError
from cai.ratelimit import RateLimiter
from cai.retry import backoff_delay, call_with_retries


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_rpm_allows_a_one_second_burst_then_paces() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=120, clock=clock, sleep=clock.sleep)

    async def run() -> None:
        for _ in range(5):
            await limiter.acquire()

    asyncio.run(run())
    # 2 a second: two at once, then one every half second.
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert limiter.waited == pytest.approx(1.5)


def test_tpm_reserves_and_settles() -> None:
    clock = Clock()
    limiter = RateLimiter(tpm=6000, clock=clock, sleep=clock.sleep)  # 100 tokens a second

    async def run() -> None:
        await limiter.acquire(100)  # the whole bucket
        limiter.settle(100, 40)  # 60 unused come back
        await limiter.acquire(60)  # no wait
        await limiter.acquire(50)  # half a second for 50 tokens

    asyncio.run(run())
    assert clock.sleeps == [0.5]


def test_a_call_bigger_than_the_bucket_waits_for_a_full_bucket_not_forever() -> None:
    clock = Clock()
    limiter = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)  # 10 a second, holds 10

    async def run() -> None:
        await limiter.acquire(35)  # full bucket: goes at once, 25 in debt
        await limiter.acquire(5)  # waits out the debt and its own 5: 3 s

    asyncio.run(run())
    assert clock.sleeps == [3.0]


def test_pause_holds_everyone_back() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    assert not limiter.limited

    async def run() -> None:
        await limiter.acquire()
        limiter.pause(2.5)
        await limiter.acquire()
        await limiter.acquire()

    asyncio.run(run())
    assert clock.sleeps == [2.5]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rpm must be positive"):
        RateLimiter(rpm=0)


def test_retries_honour_retry_after_and_stop_at_the_limit() -> None:
    clock = Clock()
    outcomes: list[Exception | str] = [
        RateLimitError("slow down", status=429, retry_after=7.0),
        ServerError("oops", status=500),
        "done",
    ]
    seen: list[tuple[str, float]] = []

    async def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = asyncio.run(
        call_with_retries(
            call,
            max_retries=2,
            on_retry=lambda e, d: seen.append((e.kind, d)),
            sleep=clock.sleep,
        )
    )
    assert result == "done"
    assert [kind for kind, _ in seen] == ["rate_limit", "server_error"]
    assert clock.sleeps[0] == 7.0  # the server's retry-after wins
    assert 0 <= clock.sleeps[1] <= 1.0  # full jitter over 0.5 * 2**1


def test_retries_give_up_and_never_retry_a_bad_request() -> None:
    clock = Clock()
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ServerError("still down", status=503)

    with pytest.raises(ServerError):
        asyncio.run(call_with_retries(failing, max_retries=3, sleep=clock.sleep))
    assert calls == 4 and len(clock.sleeps) == 3

    async def bad() -> None:
        raise BadRequestError("no", status=400)

    with pytest.raises(BadRequestError):
        asyncio.run(call_with_retries(bad, max_retries=3, sleep=clock.sleep))
    assert len(clock.sleeps) == 3


def test_backoff_is_capped() -> None:
    assert backoff_delay(30, ServerError("x")) <= 60.0
    assert backoff_delay(1, RateLimitError("x", retry_after=600)) == 60.0
