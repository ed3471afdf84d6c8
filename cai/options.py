"""The options of `cai generate` and `cai label`, declared once for the CLI and the Python API.

Each option is a field of a keyword-only dataclass, declared as
`name: type = field(default=..., metadata=meta("help line", ...))`: its name is the Python
keyword (`cai.generate(..., max_tokens=256)`) and, with dashes, the CLI flag
(`--max-tokens 256`); its default is both defaults; its help is the `--help` line; a field
with no default is required. The CLI builds its click
options from these fields (`cai/cli/options.py`); `cai.api` builds the run's configs from an
instance. `__post_init__` reads the forms the CLI takes as text (`shard="1/4"`,
`clamp="0.4,0.6"`) and raises the same `ConfigError` in both. An option added here (with the
code that uses it, in `cai.api`) reaches both at once.

This module imports nothing heavy, so `cai --help` can read it.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConfigError

__all__ = [
    "PROVIDER_NAMES",
    "BatchOptions",
    "CallOptions",
    "CompareOptions",
    "CostOptions",
    "EngineOptions",
    "FilterOptions",
    "GenerateOptions",
    "LabelOptions",
    "ModelOptions",
    "PromptsOptions",
    "meta",
    "option_fields",
]

PROVIDER_NAMES = ("local", "anthropic", "openai")
ENGINE_NAMES = ("default", "ray")


def meta(
    help: str,
    *,
    type: Any = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    param: str | None = None,
) -> Any:
    """A field's metadata: its `help` line; for the CLI, its `type` (int, float, str, Path)
    when the default does not say it, `choices`, and `param` when click's parameter has
    another name than the field."""
    return {"help": help, "type": type, "choices": choices, "metavar": metavar, "param": param}


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """`cls`'s fields in the order `--help` lists them: its own first, then each group's."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    ordered: list[dataclasses.Field[Any]] = []
    for klass in cls.__mro__:
        for name in inspect.get_annotations(klass):
            if name in by_name and by_name[name] not in ordered:
                ordered.append(by_name[name])
    return ordered


def parse_pair(value: Any, option: str, sep: str, example: str, cast: Any) -> Any:
    """`"1/4"` or `(1, 4)` as a tuple of two; None stays None."""
    if value is None or isinstance(value, tuple | list):
        return tuple(value) if value is not None else None
    try:
        first, second = (cast(x) for x in str(value).split(sep))
    except ValueError:
        raise ConfigError(f"{option} takes {example}, not '{value}'") from None
    return first, second


def parse_clamp(value: Any) -> tuple[float, float] | None:
    """--clamp's `"0.4,0.6"` or `(0.4, 0.6)` as a tuple of two floats; None stays None."""
    return parse_pair(value, "--clamp", ",", "LO,HI such as 0.4,0.6", float)


def parse_out(out: Any, fresh: bool) -> Path | None:
    """A run's --out as a Path (None stays None); refused with --fresh, which picks a new one."""
    if out is None:
        return None
    if fresh:
        raise ConfigError(
            "--fresh goes without --out: --out DIR resumes the run in DIR; "
            "to start afresh, pass --out with a new directory"
        )
    return Path(out)


@dataclass(kw_only=True)
class ModelOptions:
    """Which model answers (generate) or judges (label)."""

    provider: Any = field(
        default="local", metadata=meta("Model backend.", choices=PROVIDER_NAMES)
    )  # from Python, also a Provider object
    model: str | None = field(
        default=None, metadata=meta("Model name (default per provider).", type=str)
    )
    model_path: str | None = field(
        default=None,
        metadata=meta(
            "GGUF file for --provider local (default: the bundled SmolLM2-135M-Instruct).", type=str
        ),
    )
    base_url: str | None = field(
        default=None,
        metadata=meta(
            "API base URL, e.g. an OpenAI-compatible server (vLLM, Ollama, llama.cpp).", type=str
        ),
    )


@dataclass(kw_only=True)
class CallOptions:
    """What every command that calls a model shares."""

    seed: int = field(default=0, metadata=meta("Seed for principle and model sampling."))
    limit: int | None = field(
        default=None, metadata=meta("Use only the first N prompts.", type=int)
    )
    max_tokens: int = field(default=512, metadata=meta("Most tokens per reply."))
    concurrency: int = field(default=32, metadata=meta("Most calls in flight at once."))
    max_retries: int = field(
        default=6,
        metadata=meta("Retries per call on rate limits, overload, timeouts, dropped connections."),
    )
    timeout: float = field(default=600.0, metadata=meta("Seconds before a call times out."))
    shard: Any = field(
        default=None,
        metadata=meta("K/N: take the K-th of N deterministic shards of the prompts.", type=str),
    )
    no_retry_failed: bool = field(
        default=False, metadata=meta("On resume, keep prompts that failed before as they are.")
    )
    rpm: float | None = field(
        default=None, metadata=meta("Most requests a minute (client-side).", type=float)
    )
    tpm: float | None = field(
        default=None, metadata=meta("Most tokens a minute (client-side).", type=float)
    )

    def __post_init__(self) -> None:
        self.shard = parse_pair(self.shard, "--shard", "/", "K/N such as 1/4", int)


@dataclass(kw_only=True)
class BatchOptions:
    batch: bool = field(
        default=False,
        metadata=meta(
            "Send the calls through the provider's batch API (anthropic, openai): half the "
            "price, results within 24 hours; see docs/batch.md."
        ),
    )
    batch_size: int = field(
        default=10_000,
        metadata=meta("--batch: most requests per batch (and items in progress at once)."),
    )
    poll_interval: float = field(
        default=60.0, metadata=meta("--batch: seconds between looks at the open batches.")
    )


@dataclass(kw_only=True)
class CostOptions:
    price_table: Path | None = field(
        default=None,
        metadata=meta(
            "JSON file of model prices, added to the bundled table (see cai/data/prices.json).",
            type=Path,
        ),
    )
    dry_run: bool = field(
        default=False,
        metadata=meta(
            "Print the number of calls and an estimate of tokens and cost; call nothing."
        ),
    )
    max_cost: float | None = field(
        default=None,
        metadata=meta(
            "Most USD the run may spend, its earlier invocations included: each call's worst "
            "case is reserved before it is sent, and the run stops (exit 4) before one that "
            "would pass it.",
            type=float,
            metavar="USD",
        ),
    )


@dataclass(kw_only=True)
class EngineOptions:
    engine: str = field(
        default="default",
        metadata=meta(
            "Where chains run: in this process, or on Ray workers (pip install 'cai[ray]'; "
            "see docs/distributed.md).",
            choices=ENGINE_NAMES,
            # `engine` names the engine object in the commands
            param="engine_name",
        ),
    )
    ray_address: str | None = field(
        default=None,
        metadata=meta(
            "--engine ray: the cluster to join (default: $RAY_ADDRESS, else a local instance).",
            type=str,
        ),
    )
    workers: int | None = field(
        default=None,
        metadata=meta(
            "--engine ray: worker actors (default 2); --concurrency, --rpm, --tpm are shared out.",
            type=int,
        ),
    )


@dataclass(kw_only=True)
class FilterOptions:
    """Export's quality filters; `cai label` picks a run's pairs with the same ones."""

    keep_truncated: bool = field(
        default=False, metadata=meta("Keep records whose first answer was cut off.")
    )
    keep_empty: bool = field(
        default=False, metadata=meta("Keep records whose first answer is empty.")
    )
    keep_meta: bool = field(
        default=False, metadata=meta("Keep revisions that are meta-text or echoes.")
    )
    keep_commentary: bool = field(
        default=False,
        metadata=meta("Keep revisions that talk about 'the response' instead of being one."),
    )
    keep_copied: bool = field(
        default=False,
        metadata=meta("Keep revisions that copy the constitution's few-shot text or requests."),
    )
    keep_unchanged: bool = field(
        default=False, metadata=meta("Keep pairs whose revision barely changed the answer.")
    )
    keep_duplicates: bool = field(
        default=False, metadata=meta("Keep records with a repeated prompt.")
    )
    similarity: float = field(
        default=0.95,
        metadata=meta("Word similarity at or above which a revision counts as unchanged."),
    )

    def filter_config(self) -> Any:
        """The `cai.filters.FilterConfig`: each filter on unless its --keep-* is set."""
        from cai.filters import FilterConfig

        return FilterConfig(
            truncated=not self.keep_truncated,
            empty=not self.keep_empty,
            meta=not self.keep_meta,
            commentary=not self.keep_commentary,
            copied=not self.keep_copied,
            unchanged=not self.keep_unchanged,
            duplicate=not self.keep_duplicates,
            similarity=self.similarity,
        )


@dataclass(kw_only=True)
class GenerateOptions(ModelOptions, CallOptions, BatchOptions, CostOptions, EngineOptions):
    """`cai generate`'s options; from Python, `prompts` may also be a list or a Dataset and
    `constitution` a `Constitution`."""

    constitution: Any = field(
        metadata=meta("Constitution: a Markdown file or a shipped name.", type=str)
    )
    prompts: Any = field(
        metadata=meta(
            "Prompts: .jsonl, .txt, .csv, .parquet, a datasets directory, or hf:NAME[:SPLIT].",
            type=str,
        )
    )
    prompt_field: str | None = field(
        default=None,
        metadata=meta(
            "Field or column holding the prompt (default: 'messages', else 'prompt').", type=str
        ),
    )
    out: Path | None = field(
        default=None,
        metadata=meta(
            "Run directory (default: outputs/<constitution>-<timestamp>, or the unfinished run of "
            "the same command).",
            type=Path,
        ),
    )
    fresh: bool = field(
        default=False,
        metadata=meta("Start a new run directory instead of resuming the same command's run."),
    )
    rounds: int = field(default=2, metadata=meta("Critique-and-revision rounds per prompt."))
    temperature: float = field(default=0.7, metadata=meta("Sampling temperature."))
    skip_bad_lines: bool = field(
        default=False, metadata=meta("Skip and count malformed prompt lines instead of stopping.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = parse_out(self.out, self.fresh)


@dataclass(kw_only=True)
class LabelOptions(
    ModelOptions, FilterOptions, CallOptions, BatchOptions, CostOptions, EngineOptions
):
    """`cai label`'s options; from Python, `source` may also be a `Run`, a list or a Dataset."""

    source: Any = field(metadata=meta("A run directory or a prompts source.", type=str))
    # The feedback model defaults to a source run's: None here means "not given".
    provider: Any = field(
        default=None,
        metadata=meta(
            "Feedback model backend (default: a source run's provider, model and base URL; "
            "else local).",
            choices=PROVIDER_NAMES,
        ),
    )
    out: Path = field(
        metadata=meta("Label run directory (running the same command again resumes it).", type=Path)
    )
    constitution: Any = field(
        default=None,
        metadata=meta(
            "Constitution whose principles the votes draw (default for a run: the run's own).",
            type=str,
        ),
    )
    prompt_field: str | None = field(
        default=None, metadata=meta("Prompts source: field or column holding the prompt.", type=str)
    )
    skip_bad_lines: bool = field(
        default=False,
        metadata=meta("Prompts source: skip and count malformed lines instead of stopping."),
    )
    votes: int = field(default=4, metadata=meta("Votes per pair (each asked in both orders)."))
    cot: bool = field(
        default=False,
        metadata=meta(
            "Chain of thought instead of log-probabilities (always so without log-probabilities)."
        ),
    )
    clamp: Any = field(
        default=None,
        metadata=meta(
            "LO,HI: keep each vote's probability within (default with chain of thought: 0.4,0.6).",
            type=str,
        ),
    )
    temperature: float = field(
        default=0.0, metadata=meta("Sampling temperature of the feedback model.")
    )
    responses: int = field(
        default=2,
        metadata=meta(
            "Prompts source: responses sampled per prompt; every pair of them is labelled."
        ),
    )
    policy_provider: str | None = field(
        default=None,
        metadata=meta(
            "Prompts source: the model that writes the responses (default: the feedback model's).",
            choices=PROVIDER_NAMES,
        ),
    )
    policy_model: str | None = field(
        default=None, metadata=meta("Prompts source: the policy model's name.", type=str)
    )
    policy_base_url: str | None = field(
        default=None,
        metadata=meta(
            "Prompts source: the policy model's URL (default: --base-url, for the same provider).",
            type=str,
        ),
    )
    policy_temperature: float = field(
        default=1.0, metadata=meta("Prompts source: the policy model's sampling temperature.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.clamp = parse_clamp(self.clamp)
        self.out = Path(self.out)


@dataclass(kw_only=True)
class PromptsOptions(ModelOptions, CallOptions, BatchOptions, CostOptions):
    """`cai prompts generate`'s options (`cai.generate_prompts`); `limit` and `shard` are not
    among its flags. docs/redteam.md has the method."""

    constitution: Any = field(
        metadata=meta("Constitution: a Markdown file or a shipped name.", type=str)
    )
    out: Path | None = field(
        default=None,
        metadata=meta(
            "Run directory (default: outputs/prompts-<constitution>-<timestamp>, or the "
            "unfinished run of the same command).",
            type=Path,
        ),
    )
    fresh: bool = field(
        default=False,
        metadata=meta("Start a new run directory instead of resuming the same command's run."),
    )
    n: int = field(default=100, metadata=meta("Prompts wanted, after deduplication."))
    seeds: Any = field(
        default=None,
        metadata=meta(
            "Few-shot seed prompts, in any form --prompts of cai generate takes (default: the "
            "constitution's example requests and a small built-in set).",
            type=str,
        ),
    )
    per_call: int = field(default=10, metadata=meta("Prompts asked for in each call."))
    shots: int = field(default=3, metadata=meta("Seed prompts shown in each call as examples."))
    styles: Path | None = field(
        default=None,
        metadata=meta(
            "Attack styles: a JSON list or 'name: description' lines (default: the ten "
            "built-in styles of docs/redteam.md).",
            type=Path,
        ),
    )
    benign: float = field(
        default=0.1,
        metadata=meta("Share of benign look-alikes: harmless prompts that sound unsafe."),
    )
    multi_turn: float = field(
        default=0.1,
        metadata=meta("Share of prompts written as short conversations that escalate."),
    )
    near_threshold: float = field(
        default=0.7,
        metadata=meta(
            "Similarity (MinHash estimate of Jaccard over character 5-grams) at which a prompt "
            "is a near duplicate of one kept before, or of a seed."
        ),
    )
    max_calls: int | None = field(
        default=None,
        metadata=meta(
            "Most calls in all, every invocation counted (default: 4x the calls --n needs, at "
            "least 20); the summary says when it stopped the run.",
            type=int,
        ),
    )
    no_structured: bool = field(
        default=False,
        metadata=meta("Ask for no JSON schema (structured output) on OpenAI-compatible servers."),
    )
    temperature: float = field(default=1.0, metadata=meta("Sampling temperature."))
    max_tokens: int = field(default=2048, metadata=meta("Most tokens per reply."))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = parse_out(self.out, self.fresh)


@dataclass(kw_only=True)
class CompareOptions(
    ModelOptions, FilterOptions, CallOptions, BatchOptions, CostOptions, EngineOptions
):
    """`cai compare`'s options: the runs, and the judge's model, votes and calls (the judge is
    a label run; `--keep-*` pick each run's final answer as export would)."""

    runs: Any = field(
        metadata=meta("Run directories made on the same prompts (the first is the baseline).")
    )
    judge: bool = field(
        default=False,
        metadata=meta(
            "Have a feedback model compare each run's final answers with the first run's."
        ),
    )
    judge_out: Path | None = field(
        default=None,
        metadata=meta(
            "The judge's run directory (default: beside the first run, named after the runs); "
            "the same command again resumes it. Without --judge, its votes are read, none asked.",
            type=Path,
        ),
    )
    constitution: Any = field(
        default=None,
        metadata=meta(
            "Constitution whose principles the judge's votes draw (default: the first run's).",
            type=str,
        ),
    )
    # The judge's model defaults to the first run's: None here means "not given".
    provider: Any = field(
        default=None,
        metadata=meta("Judge: model backend (default: the first run's).", choices=PROVIDER_NAMES),
    )
    votes: int = field(default=4, metadata=meta("Judge: votes per prompt and run."))
    cot: bool = field(
        default=False, metadata=meta("Judge: chain of thought instead of log-probabilities.")
    )
    clamp: Any = field(
        default=None,
        metadata=meta("Judge: LO,HI each vote's probability is kept within.", type=str),
    )
    temperature: float = field(
        default=0.0, metadata=meta("Judge: sampling temperature of the feedback model.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.clamp = parse_clamp(self.clamp)
        if isinstance(self.runs, str | Path):
            self.runs = [self.runs]
        self.runs = [getattr(run, "dir", run) for run in self.runs]  # a `Run` or a path
        if len(self.runs) < 2:
            raise ConfigError("cai compare needs at least two run directories")
        if self.judge_out is not None:
            self.judge_out = Path(self.judge_out)
