"""The generation job: for each prompt, an initial answer, then rounds of critique and revision.

Every prompt's chain runs on its own; at most `concurrency` calls are in flight and a slow
prompt never holds the others back. Each reply goes to the call journal the moment it
arrives, and each record is appended as its chain ends, so a crash loses only calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from cai._version import __version__
from cai.constitution import Constitution, Principle
from cai.errors import AuthenticationError, ConfigError, ProviderError, RunMismatchError
from cai.idset import IdSet
from cai.ledger import (
    BATCH,
    INTERACTIVE,
    Budget,
    CallPricer,
    read_ledger,
    run_pricer,
    worst_case_tokens,
)
from cai.pricing import Price, estimate_tokens
from cai.prompts import (
    build_critique_messages,
    build_initial_messages,
    build_revision_messages,
    critique_request,
    is_no_change,
    revision_request,
)
from cai.providers.base import PROVIDERS, Completion, Provider, Sampling, Usage
from cai.ratelimit import RateLimiter
from cai.records import Record, Round
from cai.retry import call_with_retries
from cai.rundir import (
    Manifest,
    RunStore,
    check_run_dir,
    file_sha256,
    public_url,
    save_constitution_copy,
    writer_info,
)
from cai.sources import PromptItem

__all__ = [
    "CURRENT_CALL",
    "CallConfig",
    "ChainRunner",
    "GenerateConfig",
    "Job",
    "RunStats",
    "build_manifest",
    "check_prices",
    "context_window",
    "count_message_tokens",
    "finished_items",
    "generate_chain",
    "generation_job",
    "pick_principles",
    "run_chain",
    "run_generation",
    "run_job",
    "run_settings",
    "sent_sampling",
]


@dataclass
class CallConfig:
    """What every job that calls a model shares: sampling, concurrency, retries, limits, shard."""

    seed: int = field(
        default=0, metadata={"help": "Seed for principle sampling and model sampling."}
    )
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature for every call."}
    )
    max_tokens: int = field(default=512, metadata={"help": "Most tokens a single reply may have."})
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus sampling; provider default if unset."}
    )
    concurrency: int = field(default=32, metadata={"help": "Most model calls in flight at once."})
    max_retries: int = field(
        default=6, metadata={"help": "Retries of a call that failed for a passing reason."}
    )
    rpm: float | None = field(
        default=None, metadata={"help": "Most requests a minute (client-side limit)."}
    )
    tpm: float | None = field(
        default=None, metadata={"help": "Most tokens a minute (client-side limit)."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Use only the first N prompts of the source."}
    )
    shard: tuple[int, int] | None = field(
        default=None, metadata={"help": "(K, N): take the K-th of N shards."}
    )
    retry_failed: bool = field(
        default=True, metadata={"help": "On resume, retry prompts that failed before."}
    )
    max_cost: float | None = field(
        default=None,
        metadata={
            "help": "Most USD the run may spend, its earlier invocations counted; it stops "
            "before a call whose worst case would pass it."
        },
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise ConfigError(f"temperature must be between 0 and 2, got {self.temperature}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {self.max_retries}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.max_cost is not None and not (math.isfinite(self.max_cost) and self.max_cost > 0):
            raise ConfigError(f"--max-cost must be a positive number of USD, got {self.max_cost}")
        if self.shard is not None:
            k, n = self.shard
            if not 1 <= k <= n:
                raise ConfigError(f"shard must be K/N with 1 <= K <= N, got {k}/{n}")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.max_tokens, self.top_p)


@dataclass
class GenerateConfig(CallConfig):
    """Settings of a generation job; the CLI's options map one to one onto these fields."""

    rounds: int = field(default=2, metadata={"help": "Critique-and-revision rounds per prompt."})

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"rounds must be 0 or more, got {self.rounds}")
        super().__post_init__()


def run_settings(
    config: GenerateConfig, constitution: Constitution, provider: Provider
) -> dict[str, Any]:
    """The settings that change outputs: a run may only be resumed with the same ones."""
    return {
        "constitution": constitution.name,
        "constitution_sha256": constitution.sha256,
        "provider": provider.name,
        "model": provider.model,
        "rounds": config.rounds,
        "seed": config.seed,
        "sampling": config.sampling.to_dict(),
    }


def build_manifest(
    constitution: Constitution,
    prompts: Any,
    config: CallConfig,
    provider: Provider,
    *,
    count: int | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    price_table: str | Path | None = None,
    prices_as_of: str | None = None,
) -> Manifest:
    """The manifest of a run: what made it, from which prompts, with which settings (`run_job`
    sets its `kind` from the job's).

    `prompts` is a `PromptSource`; a prompts file is recorded by name and sha256, so the card
    never shows the user's directory layout.
    """
    spec = str(getattr(prompts, "spec", prompts))
    info: dict[str, Any] = {"source": spec, "name": spec}
    path = Path(spec)
    if not spec.startswith("hf:") and path.exists():
        info["name"] = path.name
        if path.is_file():
            info["sha256"] = file_sha256(path)
    info.update(
        field=getattr(prompts, "prompt_field", None),
        count=count,
        skipped_bad_lines=len(getattr(prompts, "skipped", ())),
    )
    return Manifest(
        kind="generate",
        constitution={
            "name": constitution.name,
            "path": constitution.path,
            "sha256": constitution.sha256,
        },
        prompts=info,
        config={
            **{k: v for k, v in vars(config).items() if k != "shard"},
            "shard": list(config.shard) if config.shard else None,
            "provider": provider.name,
            "model": provider.model,
            "base_url": public_url(base_url),
            "timeout": timeout,
            "price_table": str(price_table) if price_table else None,
            "prices_as_of": prices_as_of,
        },
        versions=_versions(provider.name),
    )


# The settings a person reads in the manifest, card and report, and the request fields they
# travel in.
_SENT_FIELDS = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "max_tokens": ("max_tokens", "max_completion_tokens"),
    "seed": ("seed",),
}


def sent_sampling(provider: Provider, sampling: Sampling, seed: int) -> dict[str, Any]:
    """Each sampling setting as `provider` sends it: {"sent": {name: value}, "not_sent":
    {name: why}}. A provider that builds request bodies (`request_body`) is asked for one;
    `seed` is sent as a per-call seed drawn from it."""
    inner = getattr(provider, "provider", provider) if provider.batched else provider
    build = getattr(inner, "request_body", None)
    call_seed = _stable_int(seed, "record", "step") if provider.supports_seed else None
    if callable(build):
        body = build([{"role": "user", "content": "."}], sampling, seed=call_seed)
    else:
        body = {"temperature": sampling.temperature, "max_tokens": sampling.max_tokens}
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if call_seed is not None:
            body["seed"] = call_seed
    asked = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": seed,
    }
    sent: dict[str, Any] = {}
    not_sent: dict[str, str] = {}
    for name, keys in _SENT_FIELDS.items():
        if any(k in body for k in keys):
            sent[name] = f"per call, drawn from {seed}" if name == "seed" else asked[name]
        elif asked[name] is None:
            not_sent[name] = "unset: the provider's default applies"
        elif name == "seed":
            not_sent[name] = f"{inner.name} takes no seed"
        else:
            not_sent[name] = f"{provider.model} takes no {name}"
    return {"sent": sent, "not_sent": not_sent}


def _versions(provider: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    result = {"python": sys.version.split()[0], "cai": __version__}
    if provider in PROVIDERS:
        package = PROVIDERS[provider].package
        with contextlib.suppress(PackageNotFoundError):
            result[package] = version(package)
    return result


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def pick_principles(
    constitution: Constitution, rounds: int, seed: int, record_id: str
) -> list[Principle]:
    """The principles for each round, by weight, from an RNG seeded by the seed and the prompt.

    All rounds are drawn up front so that a skipped round never shifts the later draws.
    """
    rng = random.Random(_stable_int(seed, record_id))
    return rng.choices(constitution.principles, weights=constitution.weights, k=rounds)


@dataclass
class RunStats:
    """Counts kept while a run goes; the CLI's progress bar and summary read them."""

    total: int | None = None
    done: int = 0
    failed: int = 0
    already_done: int = 0
    duplicates: int = 0
    too_long: int = 0
    calls: int = 0
    journal_hits: int = 0
    retries: int = 0
    retries_by_kind: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    revised: int = 0
    skipped_rounds: int = 0
    problem_rounds: int = 0
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    throttled_seconds: float = 0.0
    # The model's price, when known: the cost is exact from the summed usage of one model.
    price: Price | None = None
    # The run's records by status once it ends (this invocation's and earlier ones), as in
    # the manifest's `counts`: failures kept by --no-retry-failed count here, not in `failed`.
    run_counts: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None  # "kind: message" of this invocation's first failed prompt
    # This invocation's calls, each priced at its own model and mode as its reply came; None
    # where the calls were summed elsewhere (the Ray engine's driver sums usage only).
    spent_usd: float | None = None
    unpriced_calls: int = 0
    budget: Budget | None = None  # --max-cost

    @property
    def over_budget(self) -> bool:
        """The run stopped at --max-cost: a call's worst case did not fit what was left."""
        return self.budget is not None and self.budget.closed

    @property
    def failed_in_run(self) -> int:
        """Failed records in the run after this invocation (at least this one's failures)."""
        return max(self.failed, self.run_counts.get("failed", 0))

    @property
    def cost_usd(self) -> float | None:
        """Estimated USD for this invocation's calls (journal reuse is free), None if unpriced."""
        if self.unpriced_calls:
            return None
        if self.spent_usd is not None:
            return self.spent_usd
        return None if self.price is None else self.price.cost(self.usage)

    def to_dict(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("usage", "started", "price", "run_counts", "spent_usd", "budget")
        }
        data["usage"] = self.usage.to_dict()
        if self.budget is not None:
            data["budget"] = self.budget.to_dict()
        cost = self.cost_usd
        data["cost_usd"] = None if cost is None else round(cost, 6)
        data["seconds"] = round(time.monotonic() - self.started, 3)
        return data


# The call being made, (record id, step), for a provider that names its requests (cai.batch).
CURRENT_CALL: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "cai_current_call", default=None
)


class _Caller:
    """Makes one chain's calls: journal first, then the provider under the semaphore, with retries."""

    def __init__(
        self,
        provider: Provider,
        config: CallConfig,
        store: RunStore | None,
        journal: dict[tuple[str, str], dict[str, Any]],
        semaphore: asyncio.Semaphore,
        stats: RunStats,
        on_event: Callable[[str, Any], None],
        pricer: CallPricer | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.provider = provider
        self.config = config
        self.store = store
        self.journal = journal
        self.semaphore = semaphore
        self.stats = stats
        self.on_event = on_event
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.pricer = pricer
        self.budget = budget
        if pricer is not None and stats.spent_usd is None:
            stats.spent_usd = 0.0
        # What each journal line says of the call beside the reply: who answered, in which mode.
        self._tags: dict[int, tuple[dict[str, str], Price | None]] = {}

    def _tag(self, served: Any) -> tuple[dict[str, str], Price | None]:
        """(the journal line's provider, model and mode; the price of a call) of `served`."""
        key = id(served)
        if key not in self._tags:
            mode = BATCH if getattr(served, "batched", False) else INTERACTIVE
            tag = {"provider": served.name, "model": served.model, "mode": mode}
            price = (
                None if self.pricer is None else self.pricer.price(served.name, served.model, mode)
            )
            self._tags[key] = (tag, price)
        return self._tags[key]

    def _worst_case(
        self, price: Price | None, messages: list[dict[str, str]], sampling: Sampling
    ) -> float:
        """USD a call can cost at most: every input token at the dearest input rate (a cache
        write costs more than a plain read), and a reply of all of --max-tokens."""
        if price is None:
            return 0.0
        dearest = max(price.input, price.cache_write, price.cache_read)
        return (worst_case_tokens(messages) * dearest + sampling.max_tokens * price.output) / 1e6

    async def __call__(
        self,
        record_id: str,
        step: str,
        messages: list[dict[str, str]],
        usage: Usage,
        *,
        sampling: Sampling | None = None,
        via: Provider | None = None,
    ) -> Completion:
        """One call; `sampling` replaces the config's, `via` calls another provider (a label
        job's policy model) under the same semaphore, limits and journal."""
        sampling = sampling or self.config.sampling
        cached = self.journal.pop((record_id, step), None)
        if cached is not None:
            try:
                completion = Completion.from_dict(cached)
            except ValueError:
                pass  # a journal line of another shape (e.g. an older version's): call again
            else:
                self.stats.journal_hits += 1
                usage.add(completion.usage)
                return completion
        seed = _stable_int(self.config.seed, record_id, step)
        CURRENT_CALL.set((record_id, step))
        limiter = self.limiter
        # Reserve the prompt and the longest reply; `settle` gives back what was not used.
        reserve = estimate_tokens(messages) + sampling.max_tokens if limiter.limited else 0
        tag, price = self._tag(via if via is not None else self.provider)
        budget = self.budget
        worst = self._worst_case(price, messages, sampling) if budget is not None else 0.0

        async def attempt() -> Completion:
            async with self.semaphore:
                if budget is not None and not await budget.reserve(worst):
                    raise _OverBudget
                used = 0
                cost = 0.0
                try:
                    await limiter.acquire(reserve)
                    self.stats.throttled_seconds = round(limiter.waited, 3)
                    # Only the run's in-flight wrapper knows `via`; a bare provider never needs it.
                    extra = {} if via is None else {"via": via}
                    completion = await self.provider.complete(
                        messages, sampling, seed=seed, **extra
                    )
                    u = completion.usage
                    used = u.input_tokens + u.cache_creation_input_tokens + u.output_tokens
                    if budget is not None and price is not None:
                        cost = price.cost(u)
                    return completion
                finally:
                    # No await here: a paid reply goes on to its journal line with none between.
                    limiter.settle(reserve, used)
                    if budget is not None:
                        budget.settle(worst, cost)

        def on_retry(error: ProviderError, delay: float) -> None:
            if error.kind == "rate_limit" and error.retry_after:
                # The server asked every caller to wait, not just this one.
                limiter.pause(error.retry_after)
            self.stats.retries += 1
            self.stats.retries_by_kind[error.kind] = (
                self.stats.retries_by_kind.get(error.kind, 0) + 1
            )
            self.on_event("retry", error)

        completion = await call_with_retries(
            attempt, max_retries=self.config.max_retries, on_retry=on_retry
        )
        # On disk before anything else: this reply has been paid for.
        if self.store is not None and not (via or self.provider).journaled(record_id, step):
            self.store.append_call(record_id, step, {**completion.to_dict(), **tag})
        self.stats.calls += 1
        self.stats.usage.add(completion.usage)
        if self.stats.spent_usd is not None:
            if price is None:
                self.stats.unpriced_calls += 1
            else:
                self.stats.spent_usd += price.cost(completion.usage)
        usage.add(completion.usage)
        self.on_event("call", completion)
        return completion


async def run_chain(
    item: PromptItem,
    constitution: Constitution,
    config: GenerateConfig,
    call: Callable[..., Any],
    provider: Provider,
) -> Record:
    """Answer one prompt, then critique and revise the answer for `config.rounds` rounds."""
    started = time.time()
    usage = Usage()
    record = _new_record(item, constitution, config, provider)
    try:
        initial = await call(
            item.id, "initial", build_initial_messages(constitution, item.messages), usage
        )
        record.initial_response = response = initial.text
        record.initial_finish_reason = initial.problem or "stop"
        for index, principle in enumerate(
            pick_principles(constitution, config.rounds, config.seed, item.id), 1
        ):
            record.rounds.append(
                await _run_round(item, constitution, principle, index, response, call, usage)
            )
            latest = record.rounds[-1]
            if latest.revision is not None and latest.problem is None:
                response = latest.revision
        record.final_response = response
    except ProviderError as e:
        if isinstance(e, AuthenticationError):
            raise  # a refused key fails every call alike: stop the run, not each prompt
        record.status = "failed"
        record.error = e.to_dict()
    record.usage = usage.to_dict()
    record.timings = {"started_at": round(started, 3), "seconds": round(time.time() - started, 3)}
    return record


async def _run_round(
    item: PromptItem,
    constitution: Constitution,
    principle: Principle,
    index: int,
    response: str,
    call: Callable[..., Any],
    usage: Usage,
) -> Round:
    critique = await call(
        item.id,
        f"round{index}.critique",
        build_critique_messages(constitution, item.messages, response, principle),
        usage,
    )
    round_ = Round(
        index=index,
        principle=principle.name,
        critique_request=critique_request(principle),
        critique=critique.text,
        critique_finish_reason=critique.problem or "stop",
    )
    if critique.problem is not None:
        # A cut-off or refused critique is no basis for a revision.
        round_.problem, round_.critique_failed = critique.problem, True
        return round_
    if is_no_change(critique.text):
        round_.skipped = True
        return round_
    revision = await call(
        item.id,
        f"round{index}.revision",
        build_revision_messages(constitution, item.messages, response, principle, critique.text),
        usage,
    )
    round_.revision_request = revision_request(principle)
    round_.revision = revision.text
    round_.revision_finish_reason = revision.problem or "stop"
    round_.problem = revision.problem
    return round_


def _new_record(
    item: PromptItem, constitution: Constitution, config: GenerateConfig, provider: Provider
) -> Record:
    return Record(
        id=item.id,
        prompt=item.messages,
        provider=provider.name,
        model=provider.model,
        sampling=config.sampling.to_dict(),
        seed=config.seed,
        constitution={"name": constitution.name, "sha256": constitution.sha256},
        source_line=item.line,
        tags=getattr(item, "tags", None),
    )


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether prompt `record_id` belongs to shard (K, N): its id, as a number, modulo N is K-1."""
    return shard is None or int(record_id, 16) % shard[1] == shard[0] - 1


# Context windows of well-known hosted models, by model-name prefix (longest match wins), for
# the too-long check when a provider does not state its own (`Provider.context_window`). A
# model not listed here is not checked: its server will refuse what does not fit.
KNOWN_CONTEXT_WINDOWS = {
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-5": 400_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude-": 200_000,
}
# Chat templates add a few tokens per message around its content.
_TOKENS_PER_MESSAGE = 4


def context_window(provider: Provider) -> int | None:
    """The provider's context window in tokens, where it is known."""
    window = provider.context_window
    if isinstance(window, int) and window > 0:
        return window
    model = provider.model or ""
    matches = [prefix for prefix in KNOWN_CONTEXT_WINDOWS if model.startswith(prefix)]
    return KNOWN_CONTEXT_WINDOWS[max(matches, key=len)] if matches else None


def count_message_tokens(provider: Provider, messages: list[dict[str, str]]) -> int:
    """A call's prompt tokens: by the provider's own tokenizer where it has one, else about four
    characters a token (English text)."""
    if not provider.has_tokenizer:
        return estimate_tokens(messages)
    text = "\n".join(m["content"] for m in messages)
    return provider.count_tokens(text) + _TOKENS_PER_MESSAGE * len(messages)


class _ContextCheck:
    """Says why a prompt cannot fit the model's context window, or None when it can.

    A chain's longest call is a revision: few-shot prefix, prompt, answer, critique and
    requests, plus room for the reply. The prompt is skipped when that could exceed the window
    with every reply --max-tokens long, so no call of its chain is ever refused for length.
    """

    def __init__(self, provider: Provider, constitution: Constitution, config: GenerateConfig):
        self.provider = provider
        self.window = context_window(provider)
        self.constitution = constitution
        self.config = config
        self.fixed: dict[str, int] = {}
        if self.window is not None:
            # Counting first here loads a local model's tokenizer before any call runs.
            self.initial = self._tokens(build_initial_messages(constitution, []))

    def _tokens(self, messages: list[dict[str, str]]) -> int:
        return count_message_tokens(self.provider, messages)

    def _round(self, principle: Principle) -> int:
        if principle.name not in self.fixed:
            messages = build_revision_messages(self.constitution, [], "", principle, "")
            self.fixed[principle.name] = self._tokens(messages)
        return self.fixed[principle.name]

    def __call__(self, item: PromptItem) -> str | None:
        if self.window is None:
            return None
        reply = self.config.max_tokens
        prompt = self._tokens(item.messages)
        need = self.initial + prompt + reply
        principles = pick_principles(
            self.constitution, self.config.rounds, self.config.seed, item.id
        )
        if principles:
            need = max(need, max(map(self._round, principles)) + prompt + 3 * reply)
        if need <= self.window:
            return None
        about = "" if self.provider.has_tokenizer else "about "
        return (
            f"too long for the model's context: its longest call needs {about}{need} tokens "
            f"(prompt {about}{prompt}, up to {reply} per reply) but the window is {self.window}; "
            "shorten the prompt or lower --max-tokens"
        )


class _InFlight:
    """The provider, noting which tasks are inside one of its calls right now."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.tasks: set[asyncio.Task[Any]] = set()
        # A chain's task awaiting `gather`, and the tasks making its calls.
        self.groups: dict[asyncio.Task[Any], list[asyncio.Task[Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)

    def busy(self, task: asyncio.Task[Any]) -> bool:
        """Whether `task`, or a call it is gathering, is inside a model call."""
        return task in self.tasks or any(t in self.tasks for t in self.groups.get(task, ()))

    async def gather(self, *calls: Any) -> list[Any]:
        """A chain's independent calls made at once; their results or exceptions, in order.

        The chain's task counts as inside a call while any of them is, so a stopping run
        waits for replies in flight and cancels only calls that are still waiting.
        """
        task = asyncio.current_task()
        assert task is not None
        children = [asyncio.ensure_future(call) for call in calls]
        self.groups[task] = children
        try:
            return await asyncio.gather(*children, return_exceptions=True)
        finally:
            del self.groups[task]

    async def complete(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        *,
        seed: int | None = None,
        via: Provider | None = None,
    ) -> Completion:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await (via or self.provider).complete(messages, sampling, seed=seed)
        finally:
            self.tasks.discard(task)


async def _abandon_waits(
    stop: asyncio.Event, tasks: list[asyncio.Task[Any]], in_flight: _InFlight
) -> None:
    """Once `stop` is set, cancel each task that is not inside a model call.

    Such a task is waiting - to retry, for the rate limiter, for a prompt - with nothing
    paid for in flight, so it can go at once. A task inside a call is left to finish it: the
    reply is journaled (no await lies between a reply and its journal line), and its chain
    stops at its next call. Tasks are checked again until all are done, as a call that fails
    goes on to wait for its retry.
    """
    await stop.wait()
    while not all(task.done() for task in tasks):
        for task in tasks:
            if not task.done() and not in_flight.busy(task):
                task.cancel()
        await asyncio.sleep(0.05)


class _Abandoned(Exception):
    """The run is stopping: this chain's next call is not made, and its record not written."""


class _OverBudget(_Abandoned):
    """--max-cost is reached: this call's worst case does not fit what is left."""


async def generate_chain(
    constitution: Constitution,
    config: GenerateConfig,
    item: PromptItem,
    call: Callable[..., Any],
    provider: Provider,
) -> Record:
    """`run_chain` as a chain function, `partial(generate_chain, constitution, config)`."""
    return await run_chain(item, constitution, config, call, provider)


class ChainRunner:
    """Runs one item's chain at a time in this process, any number at once, through one caller.

    `chain(item, call, provider)` makes the chain's calls with `call(record_id, step, messages,
    usage, via=NAME)`: journal first, then the provider (or `others[NAME]`, e.g. a label job's
    policy model) under the `config.concurrency` semaphore and the rate limits, with retries;
    each reply goes to `store.append_call` as it arrives. Once `stop`
    is set no new call starts and `run` returns None for the chains that needed one. The
    default engine is one runner; each worker of the Ray engine (cai/engines/ray.py) is another.
    """

    def __init__(
        self,
        provider: Provider,
        config: CallConfig,
        store: Any,
        journal: dict[tuple[str, str], dict[str, Any]],
        stats: RunStats,
        on_event: Callable[[str, Any], None],
        stop: asyncio.Event,
        chain: Callable[..., Any],
        others: dict[str, Provider] | None = None,
        *,
        pricer: CallPricer | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.in_flight = _InFlight(provider)
        self.others = others or {}
        self.caller = _Caller(
            self.in_flight,
            config,
            store,
            journal,
            asyncio.Semaphore(config.concurrency),
            stats,
            on_event,
            pricer,
            budget,
        )
        self.journal, self.stop, self.chain = journal, stop, chain

    async def call(
        self,
        record_id: str,
        step: str,
        messages: list[dict[str, str]],
        usage: Usage,
        **options: Any,
    ) -> Completion:
        if self.stop.is_set() and (record_id, step) not in self.journal:
            raise _Abandoned
        if isinstance(options.get("via"), str):  # a provider named in `others`, not an object
            options["via"] = self.others[options["via"]]
        return await self.caller(record_id, step, messages, usage, **options)

    async def run(self, item: Any) -> Any:
        """The item's record (or lines); None when the run stopped before its chain could end."""
        try:
            return await self.chain(item, self.call, self.in_flight)
        except _Abandoned:
            return None

    def watch(self, tasks: list[asyncio.Task[Any]]) -> asyncio.Future[None]:
        """Once `stop` is set, cancel those of `tasks` that wait with no call in flight."""
        return asyncio.ensure_future(_abandon_waits(self.stop, tasks, self.in_flight))

    async def close(self) -> None:
        """Nothing to drain: every call ran in this process's tasks."""


@dataclass
class Job:
    """What a run makes of each item; `run_job` does the rest (lock, manifest, journal, resume,
    shard, workers, Ctrl-C), the same for `cai generate` and `cai label`.

    `chain(item, call, provider)` makes an item's calls through `call` and returns its line for
    the run's records file, or a list of lines (a record, or a dict with an `id`). `check(item)`
    returns a line to write instead of running the chain (e.g. a prompt too long for the model),
    or None. `count(line)` adds a written line to the stats. A line's item is `unit_of(line id)`,
    and an item is finished when it has `lines_per_item` lines, none failed (when retrying).
    """

    kind: str
    settings: dict[str, Any]
    provider: Provider
    chain: Callable[..., Any]
    check: Callable[[Any], Any] = lambda item: None
    count: Callable[[Any], None] = lambda line: None
    unit_of: Callable[[str], str] = str
    lines_per_item: int = 1
    constitution: Constitution | None = None
    # Providers the chain's calls name with `via=NAME` (a label job's "policy").
    others: dict[str, Provider] = field(default_factory=dict)


def generation_job(
    constitution: Constitution, provider: Provider, config: GenerateConfig, stats: RunStats
) -> Job:
    """The `cai generate` job: one critique-and-revision chain, one record, per prompt."""
    too_long = _ContextCheck(provider, constitution, config)

    def check(item: PromptItem) -> Record | None:
        reason = too_long(item)
        if reason is None:
            return None
        record = _new_record(item, constitution, config, provider)
        record.status, record.error = "skipped", {"kind": "too_long", "message": reason}
        return record

    def count(record: Record) -> None:
        if record.status == "skipped":
            stats.too_long += 1
        elif record.status == "failed":
            stats.failed += 1
            if stats.first_error is None and record.error:
                stats.first_error = f"{record.error['kind']}: {record.error['message']}"
        else:
            stats.done += 1
            stats.revised += any(
                r.revision is not None and r.problem is None for r in record.rounds
            )
            stats.skipped_rounds += sum(r.skipped for r in record.rounds)
            stats.problem_rounds += sum(r.problem is not None for r in record.rounds)

    return Job(
        kind="generate",
        settings=run_settings(config, constitution, provider),
        provider=provider,
        chain=partial(generate_chain, constitution, config),
        check=check,
        count=count,
        constitution=constitution,
    )


async def run_generation(
    prompts: Any,
    constitution: Constitution,
    provider: Provider,
    config: GenerateConfig,
    store: RunStore,
    *,
    manifest: Manifest | dict[str, Any] | None = None,
    on_event: Callable[[str, Any], None] = lambda kind, data: None,
    stop: asyncio.Event | None = None,
    stats: RunStats | None = None,
    engine: Any = None,
) -> RunStats:
    """Run (or resume) a job into `store`; returns the counts. `prompts` is an iterable of `PromptItem`.

    Raises `ConfigError` when the directory is neither new, empty, nor a run of cai's, and
    `RunMismatchError` when it holds a run made with other settings; nothing is written then.
    Once the run is taken, `on_event("start", run_dir)` is sent. Setting `stop` ends the run
    cleanly: no new prompt or call starts, calls in flight finish and are journaled, chains
    they belong to are left for the next run to continue. `engine` (e.g. `RayEngine`) runs
    the chains elsewhere; by default they run in this process.
    """
    stats = stats or RunStats()
    job = generation_job(constitution, provider, config, stats)
    return await run_job(
        prompts,
        job,
        config,
        store,
        manifest=manifest,
        on_event=on_event,
        stop=stop,
        stats=stats,
        engine=engine,
    )


async def run_job(
    items: Any,
    job: Job,
    config: CallConfig,
    store: RunStore,
    *,
    manifest: Manifest | dict[str, Any] | None = None,
    on_event: Callable[[str, Any], None] = lambda kind, data: None,
    stop: asyncio.Event | None = None,
    stats: RunStats | None = None,
    engine: Any = None,
) -> RunStats:
    """Run (or resume) `job` over `items` (each with an `id`) into `store`; see `run_generation`."""
    if config.max_cost is not None:
        check_prices(job, run_pricer(manifest), engine)
    check_run_dir(store.dir, job.kind)  # before the lock file, which is a write into the directory
    store.lock(job.kind)
    try:
        return await _run_locked(
            items, job, config, store, manifest, on_event, stop, stats or RunStats(), engine
        )
    finally:
        store.unlock()


def check_prices(job: Job, pricer: CallPricer, engine: Any = None) -> None:
    """Refuse --max-cost where it cannot be kept: a model with no price, or calls made in
    other processes (an engine's workers), whose spending this process cannot hold back."""
    if engine is not None:
        raise ConfigError(
            "--max-cost holds calls back in this process: drop --engine, or drop --max-cost"
        )
    for provider in [job.provider, *job.others.values()]:
        if pricer.price(provider.name, provider.model) is None:
            raise ConfigError(
                f"--max-cost needs the price of model '{provider.model}', and the price table "
                "has none: add it with --price-table FILE (USD per million tokens), or drop "
                "--max-cost"
            )


def _budget(
    config: CallConfig, store: RunStore, manifest: Manifest, pricer: CallPricer
) -> Budget | None:
    """--max-cost, less what the run's earlier invocations spent (its whole ledger)."""
    if config.max_cost is None:
        return None
    ledger = read_ledger(store.dir, manifest, pricer=pricer)
    if ledger.cost_usd is None:
        raise ConfigError(
            f"{store.dir} holds calls of models with no price "
            f"({', '.join(sorted(ledger.unpriced_models))}), so --max-cost cannot count them: "
            "add their price with --price-table FILE, or drop --max-cost"
        )
    return Budget(config.max_cost, ledger.cost_usd)


def finished_items(statuses: dict[str, str], job: Job, retry_failed: bool) -> set[str]:
    """The items whose lines are all written; with `retry_failed`, none of them failed.

    A failed line stays in the file until a retry replaces it.
    """
    lines: dict[str, list[str]] = {}
    for line_id, status in statuses.items():
        lines.setdefault(job.unit_of(line_id), []).append(status)
    return {
        item
        for item, found in lines.items()
        if len(found) >= job.lines_per_item and not (retry_failed and "failed" in found)
    }


def _running_manifest(
    manifest: Manifest | dict[str, Any] | None,
    previous: Manifest | None,
    job: Job,
    config: CallConfig,
    engine: Any,
) -> Manifest:
    """The manifest of a run starting (status "running"): the job's kind and settings, this
    process as the writer, the engine, and the sampling settings each model is sent; a resumed
    run keeps its first creation time."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict({"cai_version": __version__, **(manifest or {})})
    if previous is not None:
        manifest.created = previous.created
    manifest.kind = job.kind
    manifest.settings, manifest.status = job.settings, "running"
    manifest.writer = writer_info(job.kind)
    manifest.config.update(engine.info if engine is not None else {"engine": "default"})
    sampling = job.settings.get("sampling")
    if isinstance(sampling, dict):
        manifest.config["sampling_sent"] = sent_sampling(
            job.provider, Sampling(**sampling), config.seed
        )
    policy, policy_sampling = job.others.get("policy"), job.settings.get("policy_sampling")
    if policy is not None and isinstance(policy_sampling, dict):
        manifest.config["policy_sampling_sent"] = sent_sampling(
            policy, Sampling(**policy_sampling), config.seed
        )
    return manifest


def _take_run(
    job: Job, config: CallConfig, store: RunStore, on_event: Callable[[str, Any], None]
) -> tuple[Manifest | None, set[str], dict[tuple[str, str], dict[str, Any]]]:
    """Take the run in `store` (its lock held): refuse other settings, say "start" (and that the
    last run was killed, if so), copy the constitution, repair and compact the files. The
    previous manifest (None for a new run), the items done, the journal of the rest."""
    previous = check_resumable(store, job.settings)
    on_event("start", store.dir)
    if previous is not None and previous.status == "running":
        gone = store.previous_writer or previous.writer or {}
        who = f"process {gone['pid']}" if gone.get("pid") else "its process"
        on_event(
            "notice",
            f"the last run of {store.dir} ended without cleaning up ({who} is gone, killed?); resuming it",
        )
    constitution = job.constitution
    if constitution is not None and constitution.path and Path(constitution.path).is_file():
        save_constitution_copy(store.dir, Path(constitution.path), constitution.sha256)
    store.repair()
    statuses = store.compact()
    for notice in store.notices:
        on_event("notice", notice)
    done = finished_items(statuses, job, config.retry_failed)
    del statuses
    return previous, done, store.journal(done)


async def _run_locked(
    items: Any,
    job: Job,
    config: CallConfig,
    store: RunStore,
    manifest: Manifest | dict[str, Any] | None,
    on_event: Callable[[str, Any], None],
    stop: asyncio.Event | None,
    stats: RunStats,
    engine: Any = None,
) -> RunStats:
    previous, done, journal = _take_run(job, config, store, on_event)
    manifest = _running_manifest(manifest, previous, job, config, engine)
    pricer = run_pricer(manifest)
    budget = _budget(config, store, manifest, pricer)
    stats.budget = budget
    store.write_manifest(manifest)
    stop = stop or asyncio.Event()
    if budget is not None:
        budget.on_closed = stop.set
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=config.concurrency * 2)

    async def produce() -> None:
        seen = IdSet()
        taken = 0
        async for item in _each(items):
            if stop.is_set() or (config.limit is not None and taken >= config.limit):
                break
            if not in_shard(item.id, config.shard):
                continue
            if item.id in seen:
                stats.duplicates += 1
                continue
            seen.add(item.id)
            taken += 1
            if item.id in done:
                stats.already_done += 1
                on_event("skip", item)
                continue
            await queue.put(item)
        for _ in range(workers):
            await queue.put(None)

    async def work() -> None:
        while (item := await queue.get()) is not None:
            if stop.is_set():
                continue
            lines = job.check(item)
            if lines is None:
                lines = await runner.run(item)
                if lines is None:
                    continue
            for line in lines if isinstance(lines, list) else [lines]:
                store.append_record(line)
                job.count(line)
                on_event("record", line)

    workers = config.concurrency
    store.open()
    # A provider that journals replies itself (a batch's answers, as they are read) writes
    # them here while the store is open.
    providers = [job.provider, *(p for p in job.others.values() if p is not job.provider)]
    for provider in providers:
        provider.use_store(store)
    args = (config, store, journal, stats, on_event, stop, job.chain)
    try:
        runner = (
            ChainRunner(job.provider, *args, others=job.others, pricer=pricer, budget=budget)
            if engine is None
            else await engine.start(job.provider, *args)
        )
    except BaseException:  # e.g. no Ray cluster at the address: nothing ran
        for provider in providers:
            provider.use_store(None)
        store.close()
        manifest.status = "error"
        store.write_manifest(manifest)
        raise
    tasks = [
        asyncio.ensure_future(produce()),
        *(asyncio.ensure_future(work()) for _ in range(workers)),
    ]
    watcher = runner.watch(tasks)
    ended = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        ended = True
    finally:
        # On an error or cancellation no task may outlive the open files.
        for task in [*tasks, watcher]:
            task.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)
        try:
            await runner.close()  # replies still on their way are journaled before the close
        finally:
            for provider in providers:
                provider.use_store(None)
            store.close()
        stats.interrupted = stop.is_set() or stats.over_budget
        # Counted from the file, where a retried prompt's new record replaces its failure.
        manifest.counts = count_statuses(store.compact())
        stats.run_counts = dict(manifest.counts)
        manifest.status = _final_status(stats, ended)
        manifest.stats = stats.to_dict()
        store.write_manifest(manifest)
    return stats


async def _each(items: Any) -> AsyncIterator[Any]:
    """The items of an iterable, or of an async one: a job that decides what to ask next from
    the answers so far (cai.redteam) waits inside its iterator."""
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _final_status(stats: RunStats, ended: bool) -> str:
    if stats.interrupted:
        return "interrupted"
    if not ended:
        return "error"  # stopped by an exception, e.g. a bad row of a streamed dataset
    return "partial" if stats.failed_in_run else "complete"


def count_statuses(statuses: dict[str, str]) -> dict[str, int]:
    """{"records": N, "<status>": n, ...} from the status of each record, by id."""
    counts: dict[str, int] = {"records": len(statuses)}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def check_resumable(store: RunStore, settings: dict[str, Any]) -> Manifest | None:
    """Refuse to add to a run made with other settings, or with unknown ones; the run's
    manifest, None for a new run."""
    previous = store.read_manifest()
    if previous is not None:
        check_settings(previous.settings, settings, store.dir)
    elif store.has_data():
        raise RunMismatchError(
            f"{store.dir} holds records but no readable manifest.json, so the settings they "
            "were made with are unknown; to start a new run, pass --out with a new directory"
        )
    return previous


def settings_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two runs' settings, one "KEY was A, now B" phrase per setting."""
    return [
        f"{key} was {previous.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(previous) | set(current))
        if previous.get(key) != current.get(key)
    ]


def check_settings(previous: dict[str, Any], current: dict[str, Any], run_dir: Any) -> None:
    """Refuse to mix records made with different settings into one run."""
    differ = settings_differences(previous, current)
    if differ:
        raise RunMismatchError(
            f"{run_dir} was made with other settings ({'; '.join(differ)}); "
            "to start a new run, pass --out with a new directory"
        )
