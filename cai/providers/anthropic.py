"""Anthropic Messages API (Claude), with prompt caching of the constitution's stable prefix."""

from __future__ import annotations

import os
import re
from typing import Any

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.sdk import SDKProvider, translate_sdk_error

__all__ = ["DEFAULT_MODEL", "AnthropicProvider", "to_messages_request"]

DEFAULT_MODEL = "claude-sonnet-5-5"
KEY_VARIABLE = "ANTHROPIC_API_KEY"
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
    sdk_module = "anthropic"
    client_class = "AsyncAnthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 600.0,
        connections: int = 100,
    ) -> None:
        key = os.environ.get(KEY_VARIABLE)
        if not key:
            raise errors.MissingKeyError(f"No key found - set {KEY_VARIABLE}")
        super().__init__(
            model or DEFAULT_MODEL,
            key=key,
            base_url=base_url,
            timeout=timeout,
            connections=connections,
        )

    @property
    def takes_sampling(self) -> bool:
        """Whether the model accepts `temperature` and `top_p` (newer models reject them)."""
        return _SAMPLING_MODELS.match(self.model) is not None

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        import anthropic

        client = self._get_client()
        kwargs = to_messages_request(messages)
        if self.takes_sampling:
            extra = {"temperature": sampling.temperature}
            if sampling.top_p is not None:
                extra["top_p"] = sampling.top_p
            kwargs["extra_body"] = extra
        try:
            response = await client.messages.create(
                model=self.model, max_tokens=sampling.max_tokens, **kwargs
            )
        except (anthropic.APIError, ValueError) as e:
            raise translate_sdk_error(e, anthropic, KEY_VARIABLE) from None
        text = "".join(
            block.text for block in response.content or [] if getattr(block, "type", "") == "text"
        )
        usage = response.usage
        return Completion(
            text=text,
            finish_reason=_FINISH.get(response.stop_reason or "end_turn", "stop"),
            usage=Usage(
                input_tokens=usage.input_tokens or 0,
                output_tokens=usage.output_tokens or 0,
                cache_read_input_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
                cache_creation_input_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
                calls=1,
            ),
            request_id=getattr(response, "_request_id", None) or response.id,
        )
