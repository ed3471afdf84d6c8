"""cai: a Constitutional AI data generator.

Read a constitution written in Markdown, have a model answer red-team prompts, critique each
answer against a sampled principle and revise it, and export preference pairs for DPO.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cai.constitution import Constitution, Example, Principle, load_constitution, parse_constitution
from cai.errors import CaiError, ConfigError, ConstitutionError, InputError, ProviderError
from cai.pipeline import GenerateConfig, RunStats, run_chain, run_generation
from cai.providers import Completion, Provider, Sampling, Usage, create_provider
from cai.records import Record, Round, RunStore, read_records
from cai.sources import PromptItem, PromptSource

__all__ = [
    "CaiError",
    "Completion",
    "ConfigError",
    "Constitution",
    "ConstitutionError",
    "Example",
    "GenerateConfig",
    "InputError",
    "Principle",
    "PromptItem",
    "PromptSource",
    "Provider",
    "ProviderError",
    "Record",
    "Round",
    "RunStats",
    "RunStore",
    "Sampling",
    "Usage",
    "__version__",
    "create_provider",
    "load_constitution",
    "parse_constitution",
    "read_records",
    "run_chain",
    "run_generation",
]
