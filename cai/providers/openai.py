"""OpenAI Chat Completions, and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import os
from typing import Any

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.sdk_errors import make_http_client, translate_sdk_error

__all__ = ["DEFAULT_MODEL", "OpenAIProvider"]

DEFAULT_MODEL = "gpt-5.4-mini"
KEY_VARIABLE = "OPENAI_API_KEY"
# Local servers take any key; the SDK insists on one.
_NO_KEY = "no-key-needed"
# Compatible servers send other values too (e.g. "eos"); those count as a normal stop.
_FINISH = {"length": "length", "content_filter": "content_filter", "refusal": "refusal"}


class OpenAIProvider:
    name = "openai"

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
        self.model = model or DEFAULT_MODEL
        self.base_url = base_url
        self._key = key or _NO_KEY
        self._timeout = timeout
        self._connections = connections
        self._client: Any = None

    def __repr__(self) -> str:
        # Never the key.
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    def _get_client(self) -> Any:
        if self._client is None:
            import openai

            # Retries are ours (cai.retry), so the SDK makes exactly one attempt per call.
            self._client = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url,
                max_retries=0,
                timeout=self._timeout,
                http_client=make_http_client(openai, self._connections, self._timeout),
            )
        return self._client

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        import openai

        client = self._get_client()
        kwargs: dict[str, Any] = {}
        if sampling.top_p is not None:
            kwargs["top_p"] = sampling.top_p
        if seed is not None:
            kwargs["seed"] = seed
        # OpenAI's reasoning models refuse `max_tokens`; compatible servers may not know
        # `max_completion_tokens` yet.
        limit = "max_tokens" if self.base_url else "max_completion_tokens"
        kwargs[limit] = sampling.max_tokens
        try:
            response = await client.chat.completions.create(
                model=self.model,
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                temperature=sampling.temperature,
                **kwargs,
            )
        except (openai.APIError, ValueError) as e:
            raise translate_sdk_error(e, openai, KEY_VARIABLE) from None
        request_id = getattr(response, "_request_id", None) or getattr(response, "id", None)
        if not getattr(response, "choices", None):
            raise errors.BadResponseError(
                f"the server's reply has no choices (request id {request_id})",
                request_id=request_id,
            )
        choice = response.choices[0]
        message = choice.message
        finish = _FINISH.get(choice.finish_reason or "stop", "stop")
        text = message.content or ""
        if getattr(message, "refusal", None):
            finish, text = "refusal", message.refusal
        usage = response.usage
        cached = 0
        if usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        return Completion(
            text=text,
            finish_reason=finish,
            usage=Usage(
                input_tokens=(usage.prompt_tokens or 0) - cached if usage else 0,
                output_tokens=(usage.completion_tokens or 0) if usage else 0,
                cache_read_input_tokens=cached,
                calls=1,
            ),
            request_id=request_id,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
