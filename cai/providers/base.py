"""The one interface every model backend implements, and what a call returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Completion", "Provider", "Sampling", "Usage"]

# Normalised finish reasons; anything but "stop" means the text is not a usable answer.
FINISH_REASONS = ("stop", "length", "refusal", "content_filter", "empty")


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with every call."""

    temperature: float = 0.7
    max_tokens: int = 512
    top_p: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Usage:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    """One model reply: its text, why it stopped (normalised), and what it cost."""

    text: str
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=lambda: Usage(calls=1))
    request_id: str | None = None

    @property
    def problem(self) -> str | None:
        """Why this reply is not a usable answer, or None when it is."""
        if self.finish_reason != "stop":
            return self.finish_reason
        return None if self.text.strip() else "empty"

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "request_id": self.request_id,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Completion:
        return cls(
            text=data["text"],
            finish_reason=data.get("finish_reason", "stop"),
            usage=Usage.from_dict(data.get("usage", {})),
            request_id=data.get("request_id"),
        )


@runtime_checkable
class Provider(Protocol):
    """A model backend. `complete` takes chat messages and returns one `Completion`.

    Implementations raise `cai.errors.ProviderError` subclasses, with `retryable` set for
    failures worth another try (rate limits, overload, timeouts, dropped connections).
    """

    name: str
    model: str

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion: ...
