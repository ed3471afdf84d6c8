"""The base class every model backend extends, what a call returns, and the provider table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cai.records import FINISH_REASONS, clean_count, clean_text

__all__ = [
    "FINISH_REASONS",
    "PROVIDERS",
    "Completion",
    "Provider",
    "ProviderInfo",
    "Sampling",
    "Usage",
]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with every call.

    `logprobs`: how many most likely tokens to return with each output token's log
    probability (for AI-feedback labels); only providers with `supports_logprobs` take it.
    `json_schema`: an OpenAI `response_format.json_schema` ({"name", "strict", "schema"}) the
    reply must follow; only providers with `supports_json_schema` send it (cai.redteam).
    """

    temperature: float = 0.7
    max_tokens: int = 512
    top_p: float | None = None
    logprobs: int | None = None
    json_schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict:
        # Spelled out: `asdict` deep-copies, and this runs for every record.
        data = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "logprobs": self.logprobs,
        }
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.calls += other.calls

    def to_dict(self) -> dict:
        # Spelled out: `asdict` deep-copies, and this runs for every call.
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "calls": self.calls,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Usage:
        # Counts as stored: whatever a server or a hand edit put there never stops a read.
        return cls(**{k: clean_count(data.get(k, 0)) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    """One model reply: its text, why it stopped (normalised), and what it cost.

    `logprobs`, when asked for (`Sampling.logprobs`): one dict per output token,
    `{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}`.
    A `Completion` is always well formed (checked on creation): a reply of another shape
    is a `BadResponseError` in the provider, never a record or journal line.
    """

    text: str
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=lambda: Usage(calls=1))
    request_id: str | None = None
    logprobs: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Completion.text must be a string, not {type(self.text).__name__}")
        # A reply is paid for whatever it holds: one with a lone surrogate is kept, mended.
        self.text = clean_text(self.text)
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {self.finish_reason!r}")
        if not isinstance(self.usage, Usage):
            raise TypeError("Completion.usage must be a Usage")
        if self.request_id is not None and not isinstance(self.request_id, str):
            raise TypeError("Completion.request_id must be a string or None")

    @property
    def problem(self) -> str | None:
        """Why this reply is not a usable answer, or None when it is."""
        if self.finish_reason != "stop":
            return self.finish_reason
        return None if self.text.strip() else "empty"

    def to_dict(self) -> dict:
        data = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "request_id": self.request_id,
        }
        if self.logprobs is not None:
            data["logprobs"] = self.logprobs
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Completion:
        """The `Completion` of `to_dict`; `ValueError` when `data` is of another shape."""
        try:
            return cls(
                text=data["text"],
                finish_reason=data.get("finish_reason", "stop"),
                usage=Usage.from_dict(data.get("usage") or {}),
                request_id=data.get("request_id"),
                logprobs=data.get("logprobs"),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a completion: {e}") from None


class Provider:
    """A model backend. `complete` takes chat messages and returns one `Completion`.

    Implementations raise `cai.errors.ProviderError` subclasses, with `retryable` set for
    failures worth another try (rate limits, overload, timeouts, dropped connections, replies
    of the wrong shape). What a backend can do is declared here, with the defaults of a
    backend that can do little; subclasses override what they support.
    """

    name: ClassVar[str] = ""
    model: str = ""
    # The provider sends `seed` to the model, so a call can be repeated exactly.
    supports_seed: ClassVar[bool] = False
    # `Sampling.logprobs` is honoured: replies carry `Completion.logprobs`.
    supports_logprobs: ClassVar[bool] = False
    # `Sampling.json_schema` is sent as structured output (`response_format`).
    supports_json_schema: ClassVar[bool] = False
    # `count_tokens` is the model's own tokenizer, not an estimate.
    has_tokenizer: ClassVar[bool] = False
    # The provider has a batch API that `cai.batch` drives (`request_body` gives a call's body).
    supports_batch: ClassVar[bool] = False
    # Calls go out in batches (`cai.batch.BatchProvider`): a run waits on batches, and a stop
    # leaves them running at the provider.
    batched: ClassVar[bool] = False

    @property
    def takes_sampling(self) -> bool:
        """Whether the model accepts `temperature` and `top_p`."""
        return True

    @property
    def context_window(self) -> int | None:
        """The model's context window in tokens, where the provider knows it."""
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`: exact where `has_tokenizer`, else about four characters a token."""
        return (len(text) + 3) // 4

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        raise NotImplementedError

    def use_store(self, store: Any) -> None:
        """`run_job` hands over the run's open `RunStore` (None once it closes it), for a
        provider that journals replies itself (`journaled`)."""

    def journaled(self, record_id: str, step: str) -> bool:
        """Whether this provider wrote the reply to (record id, step) into the run's call
        journal itself, so its caller must not write it twice (`cai.batch.BatchProvider`
        journals a batch's answers as it reads them, needed by this run or not)."""
        return False

    async def aclose(self) -> None:
        """Release what the provider holds inside the event loop (e.g. HTTP connections)."""

    def close(self) -> None:
        """Release what the provider holds outside any event loop (e.g. a loaded model)."""


@dataclass(frozen=True)
class ProviderInfo:
    """One row of the provider table."""

    name: str
    target: str  # "module:Class", imported only when the provider is made
    default_model: str | None
    key_variable: str | None  # the environment variable holding the API key
    package: str  # the distribution that does the work, for the manifest's versions
    # A key is needed even with --base-url (False: compatible servers take any key).
    key_required_with_base_url: bool = True


PROVIDERS: dict[str, ProviderInfo] = {
    info.name: info
    for info in (
        ProviderInfo(
            "local",
            "cai.providers.local:LocalProvider",
            default_model=None,
            key_variable=None,
            package="llama-cpp-python",
        ),
        ProviderInfo(
            "anthropic",
            "cai.providers.anthropic:AnthropicProvider",
            default_model="claude-sonnet-5-5",
            key_variable="ANTHROPIC_API_KEY",
            package="anthropic",
        ),
        ProviderInfo(
            "openai",
            "cai.providers.openai:OpenAIProvider",
            default_model="gpt-5.4-mini",
            key_variable="OPENAI_API_KEY",
            package="openai",
            key_required_with_base_url=False,
        ),
    )
}
