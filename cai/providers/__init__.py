"""Model backends behind one base class; `create_provider` makes one by name from the table."""

from __future__ import annotations

import importlib
from typing import Any

from cai.errors import ConfigError
from cai.providers.base import PROVIDERS, Completion, Provider, ProviderInfo, Sampling, Usage

__all__ = [
    "PROVIDERS",
    "Completion",
    "Provider",
    "ProviderInfo",
    "Sampling",
    "Usage",
    "create_provider",
    "default_model",
]


def default_model(name: str) -> str | None:
    return _info(name).default_model


def _info(name: str) -> ProviderInfo:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown provider '{name}'; choose one of: {', '.join(PROVIDERS)}"
        ) from None


def create_provider(
    name: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    model_path: str | None = None,
    timeout: float = 600.0,
    connections: int = 100,
    http_client: Any = None,
) -> Provider:
    """Build a provider; a missing key or model file raises a `CaiError` before any work starts.

    `connections` sizes a cloud provider's HTTP connection pool (the run's concurrency);
    `http_client` (an `httpx.AsyncClient`) replaces that pool, e.g. in tests.
    """
    info = _info(name)
    module, _, class_name = info.target.partition(":")
    cls = getattr(importlib.import_module(module), class_name)
    if name == "local":
        if base_url:
            raise ConfigError("--base-url goes with --provider openai or anthropic, not local")
        return cls(model_path or model)
    if model_path:
        raise ConfigError("--model-path goes with --provider local")
    return cls(
        model,
        base_url=base_url,
        timeout=timeout,
        connections=connections,
        http_client=http_client,
    )
