"""The OpenAI and Anthropic providers, through the real SDKs, against the loopback fake server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_server import FakeServer, count_tokens

from cai import errors
from cai.constitution import load_constitution
from cai.prompts import build_critique_messages, build_initial_messages, build_revision_messages
from cai.providers import create_provider
from cai.providers.anthropic import AnthropicProvider, to_messages_request
from cai.providers.base import Sampling
from cai.providers.openai import OpenAIProvider

SAMPLING = Sampling(temperature=0.5, max_tokens=64)
HELLO = [{"role": "user", "content": "Tell me about bread."}]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def _provider(kind: str, server: FakeServer, **kwargs):
    if kind == "openai":
        return OpenAIProvider("gpt-test", base_url=server.url + "/v1", **kwargs)
    return AnthropicProvider("claude-test", base_url=server.url, **kwargs)


async def _complete(provider, messages=HELLO, sampling=SAMPLING):
    try:
        return await provider.complete(messages, sampling, seed=7)
    finally:
        await provider.aclose()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_plain_reply(kind: str, keys: None) -> None:
    with FakeServer() as server:
        completion = asyncio.run(_complete(_provider(kind, server)))
        body = server.log[0].body
    assert completion.text == "Answer to: Tell me about bread."
    assert completion.finish_reason == "stop" and completion.problem is None
    assert completion.usage.input_tokens == count_tokens(HELLO[0]["content"])
    assert completion.usage.output_tokens == count_tokens(completion.text)
    assert completion.usage.calls == 1
    # OpenAI: the completion's id; Anthropic: the request id header.
    assert completion.request_id == (
        "chatcmpl-fake000001" if kind == "openai" else "req_fake_000001"
    )
    assert body["model"] == ("gpt-test" if kind == "openai" else "claude-test")
    if kind == "openai":
        # A compatible server gets the classic parameter; the seed goes along.
        assert body["max_tokens"] == 64 and body["seed"] == 7
        assert body["temperature"] == 0.5
    else:
        assert body["max_tokens"] == 64 and "seed" not in body
        assert "temperature" not in body and "top_p" not in body


@pytest.mark.parametrize(
    ("model", "sent"),
    [("claude-haiku-4-5-20251001", True), ("claude-sonnet-4-5", True), ("claude-opus-4-7", False)],
)
def test_anthropic_sampling_only_to_models_that_take_it(model: str, sent: bool, keys: None) -> None:
    sampling = Sampling(temperature=0.3, max_tokens=32, top_p=0.9)
    with FakeServer() as server:
        provider = AnthropicProvider(model, base_url=server.url)
        asyncio.run(_complete(provider, sampling=sampling))
        body = server.log[0].body
    assert provider.takes_sampling is sent
    if sent:
        assert (body["temperature"], body["top_p"]) == (0.3, 0.9)
    else:
        assert "temperature" not in body and "top_p" not in body


def test_openai_proper_gets_max_completion_tokens(
    keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeServer() as server:
        # No --base-url: the official API, reached here through the SDK's own variable.
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        completion = asyncio.run(_complete(OpenAIProvider()))
        body = server.log[0].body
    assert completion.text.startswith("Answer to:")
    assert body["model"] == "gpt-5.4-mini"
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("429", errors.RateLimitError, 429),
        ("500", errors.ServerError, 500),
        ("529", errors.OverloadedError, 529),
        ("drop", errors.APIConnectionError, None),
        ("slow", errors.APITimeoutError, None),
        ("malformed", errors.BadResponseError, None),
    ],
)
def test_faults_map_to_error_kinds(
    kind: str, fault: str, error: type, status: int | None, keys: None
) -> None:
    with FakeServer(fault_rate=1.0, faults=[fault], retry_after=1.5, slow_seconds=10) as server:
        with pytest.raises(error) as caught:
            asyncio.run(_complete(_provider(kind, server, timeout=1.5)))
        assert server.requests == 1, "the SDK must not retry on its own"
    e = caught.value
    assert e.retryable
    assert e.status == status
    assert e.to_dict()["kind"] == error.kind
    if status is not None:
        assert e.request_id == "req_fake_000001"
        assert "req_fake_000001" in str(e)
    assert e.retry_after == (1.5 if fault == "429" else None)


@pytest.mark.parametrize(
    ("kind", "fault", "finish"),
    [
        ("openai", "truncated", "length"),
        ("anthropic", "truncated", "length"),
        ("openai", "refused", "content_filter"),
        ("anthropic", "refused", "refusal"),
    ],
)
def test_replies_that_are_not_answers(kind: str, fault: str, finish: str, keys: None) -> None:
    with FakeServer(fault_rate=1.0, faults=[fault]) as server:
        completion = asyncio.run(_complete(_provider(kind, server)))
    assert completion.finish_reason == finish
    assert completion.problem == finish
    if fault == "truncated":
        assert completion.text == "Answer to: Tell me about bread."[:15]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_refused_key_says_which_variable(kind: str, keys: None) -> None:
    with (
        FakeServer(api_key="the-right-key") as server,
        pytest.raises(errors.AuthenticationError) as caught,
    ):
        asyncio.run(_complete(_provider(kind, server)))
    variable = "OPENAI_API_KEY" if kind == "openai" else "ANTHROPIC_API_KEY"
    assert f"check {variable}" in str(caught.value)
    assert caught.value.exit_code == 2 and not caught.value.retryable


def test_the_right_key_is_sent(keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "the-right-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "the-right-key")
    with FakeServer(api_key="the-right-key") as server:
        for kind in ("openai", "anthropic"):
            assert asyncio.run(_complete(_provider(kind, server))).text.startswith("Answer")


def test_missing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(errors.MissingKeyError, match="set ANTHROPIC_API_KEY"):
        create_provider("anthropic")
    with pytest.raises(errors.MissingKeyError, match="set OPENAI_API_KEY, or pass --base-url"):
        create_provider("openai")
    # A compatible server needs no key.
    assert create_provider("openai", base_url="http://127.0.0.1:9/v1").model == "gpt-5.4-mini"


def test_provider_repr_hides_the_key(keys: None) -> None:
    for provider in (OpenAIProvider(), AnthropicProvider()):
        assert "sk-" not in repr(provider) and "sk-" not in str(vars(provider).get("model"))


def test_anthropic_caches_the_constitution_prefix(keys: None, mini_constitution: Path) -> None:
    constitution = load_constitution(mini_constitution)
    principle = constitution.principles[0]
    prompt = [{"role": "user", "content": "How do I whittle a spoon?"}]
    critique_turns = build_critique_messages(constitution, prompt, "Use a knife.", principle)
    revision_turns = build_revision_messages(
        constitution, prompt, "Use a knife.", principle, "Mention safety."
    )
    prefix = critique_turns.cached_prefix
    assert prefix == len(critique_turns) - 3  # all but the prompt, the answer and the request

    async def run(server: FakeServer) -> list:
        provider = _provider("anthropic", server)
        try:
            return [
                await provider.complete(turns, SAMPLING)
                for turns in (critique_turns, revision_turns, critique_turns)
            ]
        finally:
            await provider.aclose()

    with FakeServer() as server:
        first, second, third = asyncio.run(run(server))
        bodies = [entry.body for entry in server.log]

    for body in bodies:
        assert body["system"] == [{"type": "text", "text": constitution.system}]
        marked = [
            (i, m)
            for i, m in enumerate(body["messages"])
            if isinstance(m["content"], list) and "cache_control" in m["content"][0]
        ]
        # One breakpoint, on the last few-shot turn (the system turn is not in `messages`).
        assert [i for i, _ in marked] == [prefix - 2]
        assert marked[0][1]["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert marked[0][1]["content"][0]["text"] == critique_turns[prefix - 1]["content"]
        assert all(isinstance(m["content"], str) for m in body["messages"][prefix - 1 :])
    prefix_tokens = sum(count_tokens(m["content"]) for m in critique_turns[:prefix])
    assert first.usage.cache_creation_input_tokens == prefix_tokens
    assert first.usage.cache_read_input_tokens == 0
    for later in (second, third):
        assert later.usage.cache_read_input_tokens == prefix_tokens
        assert later.usage.cache_creation_input_tokens == 0
    rest = sum(count_tokens(m["content"]) for m in critique_turns[prefix:])
    assert first.usage.input_tokens == third.usage.input_tokens == rest


def test_initial_call_caches_the_system_prompt(keys: None, mini_constitution: Path) -> None:
    constitution = load_constitution(mini_constitution)
    turns = build_initial_messages(constitution, HELLO)
    with FakeServer() as server:
        asyncio.run(_complete(_provider("anthropic", server), turns))
        body = server.log[0].body
    assert body["system"] == [
        {"type": "text", "text": constitution.system, "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"] == HELLO


def test_openai_ignores_the_cache_marker(keys: None, mini_constitution: Path) -> None:
    constitution = load_constitution(mini_constitution)
    turns = build_critique_messages(
        constitution, HELLO, "Bread is baked.", constitution.principles[0]
    )
    with FakeServer() as server:
        asyncio.run(_complete(_provider("openai", server), turns))
        body = server.log[0].body
    assert body["messages"] == [dict(m) for m in turns]
    assert "cache_control" not in str(body)


def test_anthropic_never_sends_an_empty_turn() -> None:
    request = to_messages_request(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Critique that."},
        ]
    )
    assert request == {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "(empty response)"},
            {"role": "user", "content": "Critique that."},
        ]
    }
