"""Anthropic Messages API (Claude), with prompt caching of the constitution's stable prefix."""

from __future__ import annotations

import json
import re
from typing import Any

from cai import errors
from cai.providers.base import PROVIDERS, Completion, Sampling, Usage
from cai.providers.sdk import SDKProvider, translate_sdk_error
from cai.records import clean_count

__all__ = ["DEFAULT_MODEL", "AnthropicProvider", "parse_message", "to_messages_request"]

INFO = PROVIDERS["anthropic"]
DEFAULT_MODEL = INFO.default_model
KEY_VARIABLE = INFO.key_variable or ""
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}
_CACHE = {"type": "ephemeral"}
_EMPTY = "(empty response)"
# Models released after Claude Opus 4.6 refuse `temperature` and `top_p` (HTTP 400), and the
# SDK no longer takes them as arguments; older models still honour them, sent in the body.
_SAMPLING_MODELS = re.compile(
    r"claude-(3|instant|(opus|sonnet|haiku)-4-[015](\b|-)|opus-4-6|(opus|sonnet)-4-20)"
)


def to_messages_request(messages: list[dict[str, str]]) -> dict[str, Any]:
    """`system` and `messages` for the Messages API, with a cache breakpoint after the prefix.

    `messages` may carry `cached_prefix` (see `cai.prompts.Conversation`): the number of
    leading turns that are the same on every call. The breakpoint goes on the last of them,
    so the system prompt and few-shot examples are written to the cache once and read after.
    """
    prefix = getattr(messages, "cached_prefix", 0)
    system: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    for index, m in enumerate(messages):
        cached = index == prefix - 1
        # The API refuses empty turns; an empty (refused or filtered) answer is still critiqued.
        text = m["content"] or _EMPTY
        if m["role"] == "system":
            system.append({"type": "text", "text": text})
            if cached:
                system[-1]["cache_control"] = _CACHE
        elif cached:
            block = {"type": "text", "text": text, "cache_control": _CACHE}
            chat.append({"role": m["role"], "content": [block]})
        else:
            chat.append({"role": m["role"], "content": text})
    request: dict[str, Any] = {"messages": chat}
    if system:
        request["system"] = system
    return request


class AnthropicProvider(SDKProvider):
    name = "anthropic"
    info = INFO
    sdk_module = "anthropic"
    client_class = "AsyncAnthropic"
    supports_batch = True

    @property
    def takes_sampling(self) -> bool:
        """Whether the model accepts `temperature` and `top_p` (newer models reject them)."""
        return _SAMPLING_MODELS.match(self.model) is not None

    def request_body(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> dict[str, Any]:
        """The Messages API body of one call (also a Message Batches request's `params`)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_tokens,
            **to_messages_request(messages),
        }
        if self.takes_sampling:
            body["temperature"] = sampling.temperature
            if sampling.top_p is not None:
                body["top_p"] = sampling.top_p
        return body

    async def _complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None
    ) -> Completion:
        import anthropic

        client = self._get_client()
        kwargs = self.request_body(messages, sampling)
        extra = {k: kwargs.pop(k) for k in ("temperature", "top_p") if k in kwargs}
        if extra:
            kwargs["extra_body"] = extra
        try:
            # The raw reply, parsed here: a reply of any shape is checked, never half-trusted
            # (the SDK's models take whatever the server sends, unvalidated).
            response = await client.messages.with_raw_response.create(**kwargs)
            raw = await response.read()
            data = json.loads(raw)
        except (anthropic.APIError, ValueError) as e:
            raise translate_sdk_error(e, anthropic, KEY_VARIABLE) from None
        return parse_message(data, raw, response.request_id)


def _bad(
    what: str, data: Any, raw: bytes | None, request_id: str | None
) -> errors.BadResponseError:
    if raw is None:
        raw = json.dumps(data).encode()
    return errors.BadResponseError(
        f"the server's reply is not a message ({what}; request id {request_id}): {raw[:200]!r}",
        request_id=request_id,
    )


def parse_message(data: Any, raw: bytes | None = None, request_id: str | None = None) -> Completion:
    """A `Completion` from a Messages API reply body; `BadResponseError` for any other shape.

    `raw`, the body as received, is quoted in that error (without it, `data` as JSON)."""
    if not isinstance(data, dict):
        raise _bad(f"a JSON {type(data).__name__}, not an object", data, raw, request_id)
    if not isinstance(request_id, str):
        request_id = data.get("id") if isinstance(data.get("id"), str) else None
    content = data.get("content")
    if not isinstance(content, list):
        raise _bad("no content", data, raw, request_id)
    texts = []
    for block in content:
        if not isinstance(block, dict):
            raise _bad("a content block is not an object", data, raw, request_id)
        if block.get("type") == "text":
            if not isinstance(block.get("text"), str):
                raise _bad("a text block holds no text", data, raw, request_id)
            texts.append(block["text"])
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise _bad("no usage", data, raw, request_id)
    counts = {}
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ):
        # Paid for whatever the count says: an absurd one is read as 0, never a refusal.
        counts[name] = clean_count(usage.get(name))
    stop = data.get("stop_reason")
    return Completion(
        text="".join(texts),
        finish_reason=_FINISH.get(stop, "stop") if isinstance(stop, str) else "stop",
        usage=Usage(**counts, calls=1),
        request_id=request_id,
    )
