"""`cai generate --dry-run`: how many calls, tokens and dollars a run would take, calling nothing.

Figures are upper bounds: every critique is assumed to ask for a revision and every reply
to use all of `--max-tokens`. Tokens are estimated at about four characters each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cai.constitution import Constitution
from cai.pipeline import GenerateConfig, in_shard, pick_principles
from cai.pricing import Price, estimate_tokens, format_cost
from cai.prompts import build_critique_messages, build_initial_messages
from cai.providers.base import Usage
from cai.sources import PromptItem

__all__ = ["MIN_CACHED_PREFIX", "RunPlan", "format_plan", "plan_run"]

# Below this many tokens the APIs do not cache a prefix (Anthropic's and OpenAI's minimum).
MIN_CACHED_PREFIX = 1024


@dataclass
class RunPlan:
    prompts: int = 0
    rounds: int = 0
    initial_calls: int = 0
    critique_calls: int = 0
    revision_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    price: Price | None = None
    prices_as_of: str | None = None

    @property
    def calls(self) -> int:
        return self.initial_calls + self.critique_calls + self.revision_calls

    @property
    def cost_usd(self) -> float | None:
        return None if self.price is None else self.price.cost(self.usage)


def plan_run(
    prompts: Iterable[PromptItem],
    constitution: Constitution,
    config: GenerateConfig,
    *,
    model: str | None = None,
    price: Price | None = None,
    prices_as_of: str | None = None,
    caching: bool = True,
) -> RunPlan:
    """The calls and tokens a run of `prompts` would take at most (see the module docstring)."""
    plan = RunPlan(rounds=config.rounds, model=model, price=price, prices_as_of=prices_as_of)
    reply = config.max_tokens
    # The reply text itself is unknown; a turn of `reply` tokens stands in for it.
    stand_in = "x" * (4 * reply)
    seen: set[str] = set()
    prefix_cached = False
    for item in prompts:
        if config.limit is not None and plan.prompts >= config.limit:
            break
        if item.id in seen or not in_shard(item.id, config.shard):
            continue
        seen.add(item.id)
        plan.prompts += 1
        plan.initial_calls += 1
        plan.usage.input_tokens += estimate_tokens(
            build_initial_messages(constitution, item.messages)
        )
        plan.usage.output_tokens += reply
        for principle in pick_principles(constitution, config.rounds, config.seed, item.id):
            critique = build_critique_messages(constitution, item.messages, stand_in, principle)
            prefix = estimate_tokens(critique[: critique.cached_prefix])
            # The revision call is the critique call plus the critique and a short request.
            sizes = (estimate_tokens(critique), estimate_tokens(critique) + reply + 64)
            for size in sizes:
                if caching and prefix >= MIN_CACHED_PREFIX:
                    if prefix_cached:
                        plan.usage.cache_read_input_tokens += prefix
                    else:
                        plan.usage.cache_creation_input_tokens += prefix
                        prefix_cached = True
                    size -= prefix
                plan.usage.input_tokens += size
                plan.usage.output_tokens += reply
            plan.critique_calls += 1
            plan.revision_calls += 1
    plan.usage.calls = plan.calls
    return plan


def format_plan(plan: RunPlan) -> str:
    u = plan.usage
    lines = [
        "Dry run: no model was called and no run directory was made.",
        f"Prompts: {plan.prompts:,} ({plan.rounds} round(s) each)",
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
    cost = plan.cost_usd
    if cost is not None:
        when = f", prices as of {plan.prices_as_of}" if plan.prices_as_of else ""
        lines.append(f"Cost: at most {format_cost(cost)} ({plan.model}{when})")
    else:
        lines.append(
            f"Cost: unknown - no price for model '{plan.model}'; add it with --price-table FILE"
        )
    return "\n".join(lines)
