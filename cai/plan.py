"""`cai generate --dry-run`: how many calls, tokens and dollars a run would take, calling nothing.

The high figures are upper bounds: every critique is assumed to ask for a revision and every
reply to use all of `--max-tokens`. The low cost assumes one round of critique and revision
with replies of typical length. With `--batch` both are priced at the batch rate. Tokens are
estimated at about four characters each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cai.constitution import Constitution
from cai.pipeline import GenerateConfig, in_shard, pick_principles
from cai.pricing import Price, batch_price, estimate_tokens, format_cost
from cai.prompts import build_critique_messages, build_initial_messages
from cai.providers.base import Usage
from cai.sources import PromptItem
from cai.words import plural

__all__ = ["MIN_CACHED_PREFIX", "TYPICAL_REPLY_TOKENS", "RunPlan", "format_plan", "plan_run"]

# Below this many tokens the APIs do not cache a prefix (Anthropic's and OpenAI's minimum).
MIN_CACHED_PREFIX = 1024
# The low estimate's reply length (or --max-tokens if less): a chat answer, critique or
# revision of a few paragraphs.
TYPICAL_REPLY_TOKENS = 256


@dataclass
class RunPlan:
    prompts: int = 0
    rounds: int = 0
    initial_calls: int = 0
    critique_calls: int = 0
    revision_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    # The low estimate: one round of critique and revision, replies of typical length.
    low: Usage = field(default_factory=Usage)
    model: str | None = None
    price: Price | None = None
    prices_as_of: str | None = None
    batch: bool = False  # priced at the batch APIs' rate
    typical_reply: int = TYPICAL_REPLY_TOKENS  # the low estimate's reply length

    @property
    def calls(self) -> int:
        return self.initial_calls + self.critique_calls + self.revision_calls

    @property
    def rate(self) -> Price | None:
        """The price the calls are made at: the model's, halved through a batch API."""
        if self.price is None:
            return None
        return batch_price(self.price) if self.batch else self.price

    @property
    def cost_usd(self) -> float | None:
        """The high estimate."""
        return None if self.rate is None else self.rate.cost(self.usage)

    @property
    def low_cost_usd(self) -> float | None:
        return None if self.rate is None else self.rate.cost(self.low)


class _Cache:
    """Whether the few-shot prefix is cached yet, as a run's first call with it writes it."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.written = False

    def add(self, usage: Usage, size: int, prefix: int) -> None:
        if self.on and prefix >= MIN_CACHED_PREFIX:
            if self.written:
                usage.cache_read_input_tokens += prefix
            else:
                usage.cache_creation_input_tokens += prefix
                self.written = True
            size -= prefix
        usage.input_tokens += size


def _add_item(
    usage: Usage,
    cache: _Cache,
    item: PromptItem,
    constitution: Constitution,
    principles: list[Any],
    reply: int,
) -> None:
    """One prompt's calls: its answer, then a critique and a revision for each principle,
    every reply `reply` tokens long."""
    # The reply text itself is unknown; a turn of `reply` tokens stands in for it.
    stand_in = "x" * (4 * reply)
    usage.input_tokens += estimate_tokens(build_initial_messages(constitution, item.messages))
    usage.output_tokens += reply
    for principle in principles:
        critique = build_critique_messages(constitution, item.messages, stand_in, principle)
        prefix = estimate_tokens(critique[: critique.cached_prefix])
        # The revision call is the critique call plus the critique and a short request.
        for size in (estimate_tokens(critique), estimate_tokens(critique) + reply + 64):
            cache.add(usage, size, prefix)
            usage.output_tokens += reply


def plan_run(
    prompts: Iterable[PromptItem],
    constitution: Constitution,
    config: GenerateConfig,
    *,
    model: str | None = None,
    price: Price | None = None,
    prices_as_of: str | None = None,
    caching: bool = True,
    batch: bool = False,
) -> RunPlan:
    """The calls and tokens a run of `prompts` would take: at most (`usage`, see the module
    docstring), and at least about (`low`)."""
    plan = RunPlan(
        rounds=config.rounds, model=model, price=price, prices_as_of=prices_as_of, batch=batch
    )
    reply = config.max_tokens
    typical = plan.typical_reply = min(reply, TYPICAL_REPLY_TOKENS)
    seen: set[str] = set()
    high_cache, low_cache = _Cache(caching), _Cache(caching)
    for item in prompts:
        if config.limit is not None and plan.prompts >= config.limit:
            break
        if item.id in seen or not in_shard(item.id, config.shard):
            continue
        seen.add(item.id)
        plan.prompts += 1
        plan.initial_calls += 1
        principles = pick_principles(constitution, config.rounds, config.seed, item.id)
        _add_item(plan.usage, high_cache, item, constitution, principles, reply)
        _add_item(plan.low, low_cache, item, constitution, principles[:1], typical)
        plan.critique_calls += len(principles)
        plan.revision_calls += len(principles)
    plan.usage.calls = plan.calls
    plan.low.calls = plan.prompts * (1 + 2 * min(config.rounds, 1))
    return plan


def format_plan(plan: RunPlan) -> str:
    u = plan.usage
    lines = [
        "Dry run: no model was called and no run directory was made.",
        f"Prompts: {plan.prompts:,} ({plural(plan.rounds, 'round')} each)",
        f"Calls: at most {plan.calls:,} ({plan.initial_calls:,} initial, "
        f"{plan.critique_calls:,} critiques, {plan.revision_calls:,} revisions; "
        "fewer when a critique finds nothing to change)",
        f"Tokens (estimate): input at most {u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens:,}"
        + (
            f" ({u.cache_read_input_tokens:,} of them cache reads, "
            f"{u.cache_creation_input_tokens:,} cache writes)"
            if u.cache_read_input_tokens or u.cache_creation_input_tokens
            else ""
        )
        + f", output at most {u.output_tokens:,}",
    ]
    high, low = plan.cost_usd, plan.low_cost_usd
    if high is not None and low is not None:
        when = f", prices as of {plan.prices_as_of}" if plan.prices_as_of else ""
        rate = "the batch rate (half the interactive price)" if plan.batch else "interactive rates"
        lines.append(
            f"Cost: {format_cost(low)} to {format_cost(high)} ({plan.model} at {rate}{when})"
        )
        lines.append(
            f"  low: one round of critique and revision, replies of {plan.typical_reply} "
            "tokens; high: every round revised, every reply --max-tokens long"
        )
    else:
        lines.append(
            f"Cost: unknown - no price for model '{plan.model}'; add it with --price-table FILE"
        )
    return "\n".join(lines)
