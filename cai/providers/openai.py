"""OpenAI Chat Completions, and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from cai import errors
from cai.providers.base import PROVIDERS, Completion, Sampling, Usage
from cai.providers.direct import encode_body
from cai.providers.sdk import SDKProvider, translate_sdk_error
from cai.records import clean_count

__all__ = ["DEFAULT_MODEL", "OpenAIProvider", "parse_chat_completion"]

INFO = PROVIDERS["openai"]
DEFAULT_MODEL = INFO.default_model
KEY_VARIABLE = INFO.key_variable or ""
try:  # a reply read in a quarter of json's time; json still decides whatever orjson refuses
    from orjson import loads as _loads_fast
except ImportError:  # pragma: no cover - depends on the environment
    _loads_fast = None
# Compatible servers send other values too (e.g. "eos"); those count as a normal stop.
_FINISH = {"length": "length", "content_filter": "content_filter", "refusal": "refusal"}


class OpenAIProvider(SDKProvider):
    name = "openai"
    info = INFO
    sdk_module = "openai"
    client_class = "AsyncOpenAI"
    supports_seed = True
    supports_logprobs = True
    supports_batch = True
    supports_json_schema = True

    def request_body(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> dict[str, Any]:
        """The Chat Completions body of one call (also a Batch API input line's `body`)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": sampling.temperature,
        }
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if seed is not None:
            body["seed"] = seed
        if sampling.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = sampling.logprobs
        if sampling.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": sampling.json_schema}
        # OpenAI's reasoning models refuse `max_tokens`; compatible servers may not know
        # `max_completion_tokens` yet.
        body["max_tokens" if self.base_url else "max_completion_tokens"] = sampling.max_tokens
        return body

    async def _complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None
    ) -> Completion:
        import openai

        body = self.request_body(messages, sampling, seed=seed)
        direct = self._direct_post("/chat/completions")
        try:
            # `chat.completions.create` runs every message through the SDK's type transformer
            # and every reply through its models, which for few-shot prompts cost more client
            # CPU than the rest of the call. So the plain JSON body is sent and the reply comes
            # back as bytes: straight over aiohttp with the SDK's headers and error mapping
            # where that is exact (cai.providers.direct), else through the client's `post`.
            if direct is not None:
                raw = await direct.post(encode_body(body))
            else:
                raw = await self._get_client().post(
                    "/chat/completions",
                    cast_to=bytes,
                    body=body,
                    options={"security": {"bearer_auth": True}},
                )
            if _loads_fast is not None:
                # orjson refuses what json accepts (NaN, lone surrogates, a BOM) and turns
                # integers past 64 bits into floats, which `parse_chat_completion` refuses as
                # token counts: any refusal is decided again from json's reading, as before.
                with contextlib.suppress(ValueError, errors.BadResponseError):
                    return parse_chat_completion(_loads_fast(raw), raw)
            data = json.loads(raw)
        except (openai.APIError, ValueError) as e:
            raise translate_sdk_error(e, openai, KEY_VARIABLE) from None
        return parse_chat_completion(data, raw)


def _bad(what: str, data: Any, raw: bytes | None) -> errors.BadResponseError:
    request_id = data.get("id") if isinstance(data, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    if raw is None:
        raw = json.dumps(data).encode()
    return errors.BadResponseError(
        f"the server's reply is not a chat completion ({what}; id {request_id}): {raw[:200]!r}",
        request_id=request_id,
    )


def _tokens(usage: dict[str, Any], name: str) -> int:
    # A reply is paid for whatever its counts say: an absurd count (a string, a negative,
    # 1e400) is read as 0 rather than refusing, and so buying again, the answer.
    return clean_count(usage.get(name))


def parse_chat_completion(data: Any, raw: bytes | None = None) -> Completion:
    """A `Completion` from a Chat Completions reply body; `BadResponseError` for any other shape.

    `raw`, the body as received, is quoted in that error (without it, `data` as JSON)."""
    if not isinstance(data, dict):
        raise _bad(f"a JSON {type(data).__name__}, not an object", data, raw)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _bad("no choices", data, raw)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _bad("no message", data, raw)
    reason = choice.get("finish_reason")
    finish = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        finish, text = "refusal", refusal
    elif text is None and finish != "stop":
        text = ""  # cut off or filtered before any text
    if not isinstance(text, str):
        raise _bad(f"content is {type(text).__name__}, not text", data, raw)
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise _bad("no usage", data, raw)
    request_id = data.get("id")
    details = usage.get("prompt_tokens_details") or {}
    cached = _tokens(details, "cached_tokens") if isinstance(details, dict) else 0
    counted = Usage(
        input_tokens=max(_tokens(usage, "prompt_tokens") - cached, 0),
        output_tokens=_tokens(usage, "completion_tokens"),
        cache_read_input_tokens=cached,
        calls=1,
    )
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    return Completion(
        text=text,
        finish_reason=finish,
        usage=counted,
        request_id=request_id if isinstance(request_id, str) else None,
        logprobs=_logprobs(tokens) if isinstance(tokens, list) else None,
    )


def _finite(value: Any) -> float | None:
    """A log-probability as a float; None for anything that is not a finite number (NaN,
    Infinity, a 400-digit integer, a string), which makes its vote `no_answer`."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _logprobs(tokens: list[Any]) -> list[dict[str, Any]] | None:
    """Each token's log probability and its top alternatives, as plain dicts."""
    out = []
    for t in tokens:
        if not isinstance(t, dict) or not isinstance(t.get("token"), str):
            return None
        top = [
            {"token": a["token"], "logprob": _finite(a.get("logprob"))}
            for a in t.get("top_logprobs") or []
            if isinstance(a, dict) and isinstance(a.get("token"), str)
        ]
        out.append({"token": t["token"], "logprob": _finite(t.get("logprob")), "top_logprobs": top})
    return out
