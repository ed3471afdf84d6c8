"""Model backends behind one async interface; `create_provider` picks one by name."""

from __future__ import annotations

from cai.errors import ConfigError
from cai.providers.base import Completion, Provider, Sampling, Usage

__all__ = [
    "PROVIDERS",
    "Completion",
    "Provider",
    "Sampling",
    "Usage",
    "create_provider",
    "default_model",
]

PROVIDERS = ("local", "anthropic", "openai")


def default_model(name: str) -> str | None:
    if name == "anthropic":
        from cai.providers.anthropic import DEFAULT_MODEL

        return DEFAULT_MODEL
    if name == "openai":
        from cai.providers.openai import DEFAULT_MODEL

        return DEFAULT_MODEL
    return None


def create_provider(
    name: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    model_path: str | None = None,
    timeout: float = 600.0,
    connections: int = 100,
) -> Provider:
    """Build a provider; a missing key or model file raises a `CaiError` before any work starts.

    `connections` sizes a cloud provider's HTTP connection pool (the run's concurrency).
    """
    if name == "local":
        from cai.providers.local import LocalProvider

        if base_url:
            raise ConfigError("--base-url goes with --provider openai or anthropic, not local")
        return LocalProvider(model_path or model)
    if model_path:
        raise ConfigError("--model-path goes with --provider local")
    if name == "anthropic":
        from cai.providers.anthropic import AnthropicProvider

        return AnthropicProvider(model, base_url=base_url, timeout=timeout, connections=connections)
    if name == "openai":
        from cai.providers.openai import OpenAIProvider

        return OpenAIProvider(model, base_url=base_url, timeout=timeout, connections=connections)
    raise ConfigError(f"unknown provider '{name}'; choose one of: {', '.join(PROVIDERS)}")
