"""The OpenAI and Anthropic providers, through the real SDKs, against the loopback fake server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fake_server import Canned, FakeServer, count_tokens

from cai import errors
from cai.constitution import load_constitution
from cai.prompts import build_critique_messages, build_initial_messages, build_revision_messages
from cai.providers import create_provider
from cai.providers.anthropic import AnthropicProvider, to_messages_request
from cai.providers.base import Completion, Sampling
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


# -- replies of the wrong shape ---------------------------------------------------------------

_OPENAI_OK = {
    "id": "chatcmpl-x",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}
_ANTHROPIC_OK = {
    "id": "msg_x",
    "type": "message",
    "content": [{"type": "text", "text": "Hi."}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 5, "output_tokens": 2},
}


def _with(base: dict, path: tuple, value: object) -> dict:
    """A deep copy of `base` with the value at `path` replaced (or deleted, for `...`)."""
    import copy

    data = copy.deepcopy(base)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


WRONG_SHAPES = [
    ("openai", _with(_OPENAI_OK, ("choices", 0, "message", "content"), ["a", "list"])),
    ("openai", _with(_OPENAI_OK, ("choices", 0, "message", "content"), 42)),
    ("openai", _with(_OPENAI_OK, ("choices", 0, "message", "content"), None)),
    ("openai", _with(_OPENAI_OK, ("choices", 0, "message"), "Hi.")),
    ("openai", _with(_OPENAI_OK, ("choices",), ...)),
    ("openai", _with(_OPENAI_OK, ("choices",), [])),
    ("openai", _with(_OPENAI_OK, ("usage",), ...)),
    ("openai", [_OPENAI_OK]),
    ("openai", 7),
    ("openai", None),
    ("anthropic", _with(_ANTHROPIC_OK, ("content",), ...)),
    ("anthropic", _with(_ANTHROPIC_OK, ("content",), 42)),
    ("anthropic", _with(_ANTHROPIC_OK, ("content",), "Hi.")),
    ("anthropic", _with(_ANTHROPIC_OK, ("content", 0), "Hi.")),
    ("anthropic", _with(_ANTHROPIC_OK, ("content", 0, "text"), None)),
    ("anthropic", _with(_ANTHROPIC_OK, ("content", 0, "text"), ["a"])),
    ("anthropic", _with(_ANTHROPIC_OK, ("usage",), ...)),
    ("anthropic", _with(_ANTHROPIC_OK, ("usage",), None)),
    ("anthropic", [_ANTHROPIC_OK]),
    ("anthropic", 7),
    ("anthropic", None),
]


# A reply is paid for whatever its counts say (issue 19): an absurd count is read as 0, the
# answer kept, rather than refused and bought again.
ABSURD_COUNTS = [
    ("openai", _with(_OPENAI_OK, ("usage", "completion_tokens"), "many")),
    ("anthropic", _with(_ANTHROPIC_OK, ("usage", "output_tokens"), "2")),
]


@pytest.mark.parametrize(("kind", "body"), ABSURD_COUNTS)
def test_a_reply_with_absurd_counts_is_kept_with_the_counts_read_as_zero(
    kind: str, body: object, keys: None
) -> None:
    with FakeServer() as server:
        server.enqueue(Canned(body=body))
        completion = asyncio.run(_complete(_provider(kind, server)))
    assert completion.text and completion.usage.output_tokens == 0


@pytest.mark.parametrize(("kind", "body"), WRONG_SHAPES)
def test_a_reply_of_the_wrong_shape_is_a_retryable_bad_response(
    kind: str, body: object, keys: None
) -> None:
    with FakeServer() as server:
        server.enqueue(Canned(body=body))
        with pytest.raises(errors.BadResponseError) as caught:
            asyncio.run(_complete(_provider(kind, server)))
    assert caught.value.retryable and caught.value.kind == "bad_response"


@pytest.mark.parametrize(("kind", "body"), [("openai", _OPENAI_OK), ("anthropic", _ANTHROPIC_OK)])
def test_the_canned_good_reply_parses(kind: str, body: dict, keys: None) -> None:
    # The shapes above differ from this one in one place only; this one is an answer.
    with FakeServer() as server:
        server.enqueue(Canned(body=body))
        completion = asyncio.run(_complete(_provider(kind, server)))
    assert (completion.text, completion.usage.output_tokens) == ("Hi.", 2)


_GOOD = json.dumps(_OPENAI_OK)
# Replies that orjson refuses or reads otherwise than json: the provider reads them first with
# orjson, then lets json decide, so the outcome must be json's reading, exactly.
ODD_REPLIES = [
    b"\xef\xbb\xbf" + _GOOD.encode(),  # a byte-order mark
    _GOOD.replace('"id"', '"x": NaN, "id"').encode(),  # NaN, which json accepts
    _GOOD.replace('"Hi."', '"Hi.\\ud800"').encode(),  # a lone surrogate
    _GOOD.replace(
        '"completion_tokens": 2', '"completion_tokens": 123456789012345678901234'
    ).encode(),
    _GOOD.replace('"prompt_tokens": 5', '"prompt_tokens": 5, "big": 99999999999999999999').encode(),
]


@pytest.mark.parametrize("raw", ODD_REPLIES)
def test_odd_replies_read_as_json_reads_them(raw: bytes, keys: None) -> None:
    from cai.providers.openai import parse_chat_completion

    try:
        expected: object = parse_chat_completion(json.loads(raw), raw).to_dict()
    except errors.BadResponseError as e:
        expected = e.kind
    with FakeServer() as server:
        server.enqueue(Canned(body=raw))
        try:
            got: object = asyncio.run(_complete(_provider("openai", server))).to_dict()
        except errors.BadResponseError as e:
            got = e.kind
    if isinstance(expected, dict) and isinstance(got, dict):
        expected.pop("request_id"), got.pop("request_id")
    assert got == expected


def test_a_completion_is_always_well_formed() -> None:
    with pytest.raises(TypeError):
        Completion(["not", "text"])  # type: ignore[arg-type]
    assert (
        Completion.from_dict({"text": "hi", "usage": {"output_tokens": "many"}}).usage.output_tokens
        == 0
    )
    with pytest.raises(ValueError):
        Completion.from_dict({"text": None})


# -- the whole call is bounded by --timeout ---------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_timeout_bounds_a_body_that_trickles_in(kind: str, keys: None) -> None:
    body = _OPENAI_OK if kind == "openai" else _ANTHROPIC_OK
    with FakeServer() as server:
        # ~200 bytes at one every 0.5 s: 100 s, each read well inside the SDK's read timeout.
        # Only a deadline on the whole call ends it early; half the body's time is a bound no
        # busy machine comes near.
        server.enqueue(Canned(body=body, trickle=0.5))
        started = time.monotonic()
        with pytest.raises(errors.APITimeoutError, match="within 1s"):
            asyncio.run(_complete(_provider(kind, server, timeout=1.0)))
        elapsed = time.monotonic() - started
    assert elapsed < 50, f"the call ran {elapsed:.1f}s past a 1s --timeout"


# -- retries follow the SDKs' rules -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "headers", "retryable", "error_kind"),
    [
        (408, {}, True, "timeout"),
        (409, {}, True, "conflict"),
        (500, {"x-should-retry": "false"}, False, "server_error"),
        (429, {"x-should-retry": "false"}, False, "rate_limit"),
        (400, {"x-should-retry": "true"}, True, "bad_request"),
        (400, {}, False, "bad_request"),
    ],
)
def test_which_statuses_are_retried(
    kind: str, status: int, headers: dict, retryable: bool, error_kind: str, keys: None
) -> None:
    with FakeServer() as server:
        server.enqueue(Canned(status=status, body={"error": {"message": "no"}}, headers=headers))
        with pytest.raises(errors.ProviderError) as caught:
            asyncio.run(_complete(_provider(kind, server)))
    assert (caught.value.kind, caught.value.retryable) == (error_kind, retryable)
    assert caught.value.status == status


def test_408_then_409_then_an_answer_through_the_retry_loop(keys: None) -> None:
    from cai.retry import call_with_retries

    async def run(provider) -> Completion:
        try:
            return await call_with_retries(
                lambda: provider.complete(HELLO, SAMPLING), max_retries=2, base_delay=0.001
            )
        finally:
            await provider.aclose()

    with FakeServer() as server:
        server.enqueue(Canned(status=408, body={}), Canned(status=409, body={}))
        completion = asyncio.run(run(_provider("openai", server)))
        assert server.requests == 3
    assert completion.text.startswith("Answer to:")


def test_retry_after_as_seconds_milliseconds_and_an_http_date() -> None:
    from email.utils import formatdate

    from cai.providers.sdk import parse_retry_after

    now = 1_800_000_000.0
    assert parse_retry_after({"retry-after": "2.5"}, now) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5
    date = formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now) == pytest.approx(7, abs=1)
    assert parse_retry_after({"retry-after": formatdate(now - 60, usegmt=True)}, now) == 0
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_429_with_an_http_date_waits_that_long(kind: str, keys: None) -> None:
    from email.utils import formatdate

    with FakeServer() as server:
        when = formatdate(time.time() + 30, usegmt=True)
        server.enqueue(Canned(status=429, body={}, headers={"retry-after": when}))
        with pytest.raises(errors.RateLimitError) as caught:
            asyncio.run(_complete(_provider(kind, server)))
    assert caught.value.retry_after == pytest.approx(30, abs=2)


# -- capabilities, the table, an injected HTTP client -----------------------------------------


def test_capabilities_are_declared_on_the_base_class(keys: None) -> None:
    from cai.providers import PROVIDERS, Provider

    openai_, anthropic_ = OpenAIProvider(), AnthropicProvider("claude-opus-4-7")
    assert isinstance(openai_, Provider) and isinstance(anthropic_, Provider)
    assert (openai_.supports_seed, openai_.supports_logprobs) == (True, True)
    assert (anthropic_.supports_seed, anthropic_.supports_logprobs) == (False, False)
    assert anthropic_.takes_sampling is False and openai_.takes_sampling is True
    assert openai_.context_window is None and not openai_.has_tokenizer
    assert openai_.count_tokens("12345678") == 2  # the estimate
    assert set(PROVIDERS) == {"local", "openai", "anthropic"}
    assert openai_.model == PROVIDERS["openai"].default_model
    assert anthropic_.info.key_variable == "ANTHROPIC_API_KEY"


def test_logprobs_only_from_providers_that_support_them(keys: None) -> None:
    with pytest.raises(errors.ConfigError, match="cannot return logprobs"):
        asyncio.run(_complete(AnthropicProvider(), sampling=Sampling(max_tokens=5, logprobs=2)))


def _mock_client(handler):
    import httpx2

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_injected_http_client_carries_the_calls(kind: str, keys: None) -> None:
    import httpx2

    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = _OPENAI_OK if kind == "openai" else _ANTHROPIC_OK
        return httpx2.Response(200, json=body, headers={"request-id": "req_mock"})

    provider = create_provider(
        kind, base_url="http://mock.invalid/v1" if kind == "openai" else "http://mock.invalid",
        http_client=_mock_client(handler),
    )  # fmt: skip
    completion = asyncio.run(_complete(provider))
    assert completion.text == "Hi." and len(seen) == 1
    sent = json.loads(seen[0].content)
    assert sent["messages"][-1]["content"] == HELLO[0]["content"]
    if kind == "openai":
        assert seen[0].url.path == "/v1/chat/completions"
        assert seen[0].headers["authorization"] == "Bearer sk-openai-test"
        assert completion.request_id == "chatcmpl-x"
    else:
        assert seen[0].url.path == "/v1/messages"
        # The SDK sends the key as `x-api-key` or, in newer versions, as a bearer token.
        headers = seen[0].headers
        sent_key = headers.get("x-api-key") or headers["authorization"].removeprefix("Bearer ")
        assert sent_key == "sk-ant-test"
        assert completion.request_id == "req_mock"


def test_logprobs_come_back_with_the_completion(keys: None) -> None:
    import httpx2

    reply = _with(
        _OPENAI_OK,
        ("choices", 0, "logprobs"),
        {
            "content": [
                {
                    "token": "Hi",
                    "logprob": -0.1,
                    "top_logprobs": [
                        {"token": "Hi", "logprob": -0.1},
                        {"token": "Yo", "logprob": -2.5},
                    ],
                }
            ]
        },
    )
    bodies: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json=reply)

    provider = OpenAIProvider(base_url="http://mock.invalid/v1", http_client=_mock_client(handler))
    completion = asyncio.run(_complete(provider, sampling=Sampling(max_tokens=5, logprobs=2)))
    assert (bodies[0]["logprobs"], bodies[0]["top_logprobs"]) == (True, 2)
    assert completion.logprobs == [
        {
            "token": "Hi",
            "logprob": -0.1,
            "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo", "logprob": -2.5}],
        }
    ]
    assert Completion.from_dict(completion.to_dict()) == completion
