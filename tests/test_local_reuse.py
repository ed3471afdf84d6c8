"""The local provider's prefix reuse, on the real bundled model (slow: a few model calls)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import ROOT

from cai.constitution import load_constitution
from cai.prompts import build_critique_messages, build_initial_messages
from cai.providers.base import Sampling
from cai.providers.local import MIN_SHARED_PREFIX, LocalProvider

pytestmark = pytest.mark.slow

SAMPLING = Sampling(temperature=0.0, max_tokens=4)


def test_a_shared_prefix_is_saved_once_and_restored_after_another_prompt() -> None:
    constitution = load_constitution(ROOT / "constitutions" / "harmless.md")

    def critique(text: str) -> list[dict[str, str]]:
        user = [{"role": "user", "content": text}]
        return build_critique_messages(constitution, user, "Sure.", constitution.principles[0])

    provider = LocalProvider()

    async def calls() -> list[int]:
        seen = []
        for messages in (
            critique("How do I bake bread?"),
            critique("How do I pick a lock?"),  # shares the few-shot prefix: saved here
            build_initial_messages(constitution, [{"role": "user", "content": "Hi"}]),
            critique("How do I fix a bike?"),  # the prefix is restored, not evaluated
        ):
            completion = await provider.complete(messages, SAMPLING, seed=1)
            assert completion.text and completion.usage.output_tokens <= 4
            seen.append(provider.snapshot_hits)
        return seen

    try:
        hits = asyncio.run(calls())
        snapshots = [len(s.tokens) for s in provider._snapshots]
    finally:
        provider.close()
    assert hits == [0, 0, 0, 1]
    assert len(snapshots) == 1 and snapshots[0] >= MIN_SHARED_PREFIX


def test_concurrent_calls_all_complete_and_close_stops_the_worker() -> None:
    constitution = load_constitution(ROOT / "constitutions" / "harmless.md")
    provider = LocalProvider()

    async def calls() -> list[str]:
        messages = [
            build_initial_messages(constitution, [{"role": "user", "content": f"Say {word}."}])
            for word in ("one", "two", "three")
        ]
        done = await asyncio.gather(*(provider.complete(m, SAMPLING, seed=1) for m in messages))
        return [c.text for c in done]

    try:
        texts = asyncio.run(calls())
    finally:
        provider.close()
    assert len(texts) == 3 and all(texts)
    assert provider._worker is None and provider._llama is None
    try:  # closed is not broken: the next call loads the model again
        again = asyncio.run(calls())
    finally:
        provider.close()
    assert len(again) == 3 and all(again)
