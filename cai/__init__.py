"""cai: a Constitutional AI data generator.

Read a constitution written in Markdown, have a model answer red-team prompts, critique each
answer against a sampled principle and revise it, and export preference pairs for DPO.

From Python (`cai.api`):

    import cai
    run = cai.generate(["How do I pick a lock?"], "harmless", provider="openai", model="m")
    run.to_dataset("dpo")  # the rows `cai export --format dpo` writes, as a datasets.Dataset
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cai._version import __version__

if TYPE_CHECKING:
    from cai.api import (
        Comparison,
        Plan,
        Run,
        acompare,
        agenerate,
        agenerate_prompts,
        alabel,
        compare,
        generate,
        generate_prompts,
        label,
        load,
    )
    from cai.constitution import (
        Constitution,
        Example,
        Principle,
        load_constitution,
        parse_constitution,
    )
    from cai.errors import CaiError, ConfigError, ConstitutionError, InputError, ProviderError
    from cai.pipeline import GenerateConfig, RunStats, run_chain, run_generation
    from cai.providers import Completion, Provider, Sampling, Usage, create_provider
    from cai.records import Record, Round
    from cai.rundir import Manifest, RunStore, load_run, read_records
    from cai.sources import PromptItem, PromptSource

# Names are imported on first use, so `cai --help` does not pay for the pipeline and asyncio.
_HOMES = {
    "cai.api": (
        "Comparison",
        "Plan",
        "Run",
        "acompare",
        "agenerate",
        "agenerate_prompts",
        "alabel",
        "compare",
        "generate",
        "generate_prompts",
        "label",
        "load",
    ),
    "cai.constitution": (
        "Constitution",
        "Example",
        "Principle",
        "load_constitution",
        "parse_constitution",
    ),
    "cai.errors": ("CaiError", "ConfigError", "ConstitutionError", "InputError", "ProviderError"),
    "cai.pipeline": ("GenerateConfig", "RunStats", "run_chain", "run_generation"),
    "cai.providers": ("Completion", "Provider", "Sampling", "Usage", "create_provider"),
    "cai.records": ("Record", "Round"),
    "cai.rundir": ("Manifest", "RunStore", "load_run", "read_records"),
    "cai.sources": ("PromptItem", "PromptSource"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'cai' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CaiError",
    "Comparison",
    "Completion",
    "ConfigError",
    "Constitution",
    "ConstitutionError",
    "Example",
    "GenerateConfig",
    "InputError",
    "Manifest",
    "Plan",
    "Principle",
    "PromptItem",
    "PromptSource",
    "Provider",
    "ProviderError",
    "Record",
    "Round",
    "Run",
    "RunStats",
    "RunStore",
    "Sampling",
    "Usage",
    "__version__",
    "acompare",
    "agenerate",
    "agenerate_prompts",
    "alabel",
    "compare",
    "create_provider",
    "generate",
    "generate_prompts",
    "label",
    "load",
    "load_constitution",
    "load_run",
    "parse_constitution",
    "read_records",
    "run_chain",
    "run_generation",
]
