"""A scripted provider for unit tests: queue replies with `enqueue`, read calls from `history`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from cai.errors import ProviderError
from cai.providers.base import Completion, Provider, Sampling, Usage

Reply = str | Completion | ProviderError


@dataclass
class Call:
    messages: list[dict[str, str]]
    sampling: Sampling
    seed: int | None


@dataclass
class FakeProvider(Provider):
    """Returns queued replies in order; when the queue is empty, `respond(messages)` answers."""

    name: str = "fake"
    model: str = "fake-model"
    respond: Callable[[list[dict[str, str]]], Reply] | None = None
    delay: float = 0.0
    queue: list[Reply] = field(default_factory=list)
    history: list[Call] = field(default_factory=list)

    def enqueue(self, *replies: Reply) -> FakeProvider:
        self.queue.extend(replies)
        return self

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        self.history.append(Call(messages, sampling, seed))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.queue:
            reply = self.queue.pop(0)
        elif self.respond is not None:
            reply = self.respond(messages)
        else:
            raise AssertionError("FakeProvider: no reply queued")
        if isinstance(reply, ProviderError):
            raise reply
        if isinstance(reply, str):
            return Completion(reply, "stop", Usage(input_tokens=10, output_tokens=5, calls=1))
        return reply


def echo_reply(messages: list[dict[str, str]]) -> str:
    """A deterministic stand-in model: says which kind of turn it answers, and to what."""
    last = messages[-1]["content"]
    if "revised response only" in last:
        return "revised: " + messages[-4]["content"][:40]
    if "NO CHANGES NEEDED" in last:
        return "The response could be kinder."
    return "answer to: " + last[:40]
