"""OpenAI Chat Completions, and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import os
from typing import Any

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.sdk_errors import translate_sdk_error

__all__ = ["DEFAULT_MODEL", "OpenAIProvider"]

DEFAULT_MODEL = "gpt-4.1-mini"
KEY_VARIABLE = "OPENAI_API_KEY"
# Local servers take any key; the SDK insists on one.
_NO_KEY = "no-key-needed"


class OpenAIProvider:
    name = "openai"

    def __init__(
        self, model: str | None = None, *, base_url: str | None = None, timeout: float = 600.0
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
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            import openai

            # Retries are ours (cai.retry), so the SDK makes exactly one attempt per call.
            self._client = openai.AsyncOpenAI(
                api_key=self._key, base_url=self.base_url, max_retries=0, timeout=self._timeout
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
        try:
            response = await client.chat.completions.create(
                model=self.model,
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                **kwargs,
            )
        except openai.APIError as e:
            raise translate_sdk_error(e, openai, KEY_VARIABLE) from None
        if not getattr(response, "choices", None):
            raise errors.BadResponseError("the server's reply has no choices")
        choice = response.choices[0]
        message = choice.message
        finish = choice.finish_reason or "stop"
        text = message.content or ""
        if getattr(message, "refusal", None):
            finish, text = "refusal", message.refusal
        usage = response.usage
        cached = 0
        if usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        return Completion(
            text=text,
            finish_reason=finish
            if finish in ("stop", "length", "content_filter", "refusal")
            else "stop",
            usage=Usage(
                input_tokens=(usage.prompt_tokens if usage else 0) - cached,
                output_tokens=usage.completion_tokens if usage else 0,
                cache_read_input_tokens=cached,
                calls=1,
            ),
            request_id=getattr(response, "_request_id", None) or response.id,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
