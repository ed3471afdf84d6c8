"""Anthropic Messages API (Claude)."""

from __future__ import annotations

import os
from typing import Any

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.sdk_errors import translate_sdk_error

__all__ = ["DEFAULT_MODEL", "AnthropicProvider"]

DEFAULT_MODEL = "claude-sonnet-4-5"
KEY_VARIABLE = "ANTHROPIC_API_KEY"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "refusal",
}


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self, model: str | None = None, *, base_url: str | None = None, timeout: float = 600.0
    ) -> None:
        key = os.environ.get(KEY_VARIABLE)
        if not key:
            raise errors.MissingKeyError(f"No key found - set {KEY_VARIABLE}")
        self.model = model or DEFAULT_MODEL
        self.base_url = base_url
        self._key = key
        self._timeout = timeout
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=self._key, base_url=self.base_url, max_retries=0, timeout=self._timeout
            )
        return self._client

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        import anthropic

        client = self._get_client()
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        chat = [
            {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
        ]
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        if sampling.top_p is not None:
            kwargs["top_p"] = sampling.top_p
        try:
            response = await client.messages.create(
                model=self.model,
                messages=chat,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                **kwargs,
            )
        except anthropic.APIError as e:
            raise translate_sdk_error(e, anthropic, KEY_VARIABLE) from None
        text = "".join(getattr(block, "text", "") for block in response.content or [])
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

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
