"""OpenAI Chat Completions, and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import json
import os
from typing import Any

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.sdk import SDKProvider, translate_sdk_error

__all__ = ["DEFAULT_MODEL", "OpenAIProvider"]

DEFAULT_MODEL = "gpt-5.4-mini"
KEY_VARIABLE = "OPENAI_API_KEY"
# Local servers take any key; the SDK insists on one.
_NO_KEY = "no-key-needed"
# Compatible servers send other values too (e.g. "eos"); those count as a normal stop.
_FINISH = {"length": "length", "content_filter": "content_filter", "refusal": "refusal"}


class OpenAIProvider(SDKProvider):
    name = "openai"
    sdk_module = "openai"
    client_class = "AsyncOpenAI"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 600.0,
        connections: int = 100,
    ) -> None:
        key = os.environ.get(KEY_VARIABLE)
        if not key and not base_url:
            raise errors.MissingKeyError(
                f"No key found - set {KEY_VARIABLE}, or pass --base-url for a server that needs none"
            )
        super().__init__(
            model or DEFAULT_MODEL,
            key=key or _NO_KEY,
            base_url=base_url,
            timeout=timeout,
            connections=connections,
        )

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        import openai

        client = self._get_client()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": sampling.temperature,
        }
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if seed is not None:
            body["seed"] = seed
        # OpenAI's reasoning models refuse `max_tokens`; compatible servers may not know
        # `max_completion_tokens` yet.
        body["max_tokens" if self.base_url else "max_completion_tokens"] = sampling.max_tokens
        try:
            # The SDK still makes the request, authenticates it and turns HTTP errors into its
            # exceptions; but `chat.completions.create` runs every message through its type
            # transformer and every reply through its models, which for few-shot prompts cost
            # more client CPU than the rest of the call (benchmarks/throughput.py). So the plain
            # JSON body goes through the client's documented `post`, and the reply comes back
            # as bytes.
            raw = await client.post(
                "/chat/completions",
                cast_to=bytes,
                body=body,
                options={"security": {"bearer_auth": True}},
            )
            data = json.loads(raw)
        except (openai.APIError, ValueError) as e:
            raise translate_sdk_error(e, openai, KEY_VARIABLE) from None
        try:
            return _completion(data)
        except (AttributeError, IndexError, KeyError, TypeError):
            request_id = data.get("id") if isinstance(data, dict) else None
            raise errors.BadResponseError(
                f"the server's reply is not a chat completion (id {request_id}): {raw[:200]!r}",
                request_id=request_id,
            ) from None


def _completion(data: dict[str, Any]) -> Completion:
    """A `Completion` from a Chat Completions reply body."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    finish = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
    text = message.get("content") or ""
    if message.get("refusal"):
        finish, text = "refusal", message["refusal"]
    usage = data.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Completion(
        text=text,
        finish_reason=finish,
        usage=Usage(
            input_tokens=(usage.get("prompt_tokens") or 0) - cached,
            output_tokens=usage.get("completion_tokens") or 0,
            cache_read_input_tokens=cached,
            calls=1,
        ),
        request_id=data.get("id"),
    )
