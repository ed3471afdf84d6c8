"""The price table, cost arithmetic, token estimates and the dry-run planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.constitution import load_constitution
from cai.errors import InputError
from cai.pipeline import GenerateConfig
from cai.plan import MIN_CACHED_PREFIX, format_plan, plan_run
from cai.pricing import FREE, Price, estimate_tokens, format_cost, load_price_table
from cai.providers import default_model
from cai.providers.base import Usage
from cai.sources import PromptItem, prompt_id


def test_the_bundled_table_prices_both_default_models() -> None:
    table = load_price_table()
    assert table.as_of == "2026-11-22"
    for provider in ("anthropic", "openai"):
        assert table.lookup(default_model(provider)) is not None
    assert table.lookup("claude-sonnet-5-5") == Price(2.0, 10.0, 0.1, 2.5)
    assert table.lookup("gpt-5.4-mini") == Price(0.75, 4.5, 0.075, 0.75)


def test_snapshots_take_their_base_price_and_unknown_models_have_none() -> None:
    table = load_price_table()
    assert table.lookup("claude-haiku-4-5-20251001") == table.lookup("claude-haiku-4-5")
    assert table.lookup("gpt-5.4-mini-2026-03-17") == table.lookup("gpt-5.4-mini")
    assert table.lookup("gpt-5.4-mini-turbo") is None
    assert table.lookup("my-local-model") is None


def test_cost_counts_each_kind_of_token_at_its_rate() -> None:
    price = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=200_000,
        cache_read_input_tokens=2_000_000,
        cache_creation_input_tokens=100_000,
    )
    assert price.cost(usage) == pytest.approx(3.0 + 3.0 + 0.6 + 0.375)
    assert FREE.cost(usage) == 0.0
    assert format_cost(0.012345) == "$0.0123"
    assert format_cost(1234.5) == "$1,234.50"


def test_a_user_table_adds_and_replaces_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "as_of": "2027-01-01",
                "models": {
                    "mine": {"input": 1, "output": 2},
                    "gpt-5.4-mini": {"input": 9, "output": 9},
                },
            }
        )
    )
    table = load_price_table(path)
    assert table.as_of == "2027-01-01"
    assert table.lookup("mine") == Price(1.0, 2.0, 0.0, 0.0)
    assert table.lookup("gpt-5.4-mini") == Price(9.0, 9.0, 0.0, 0.0)
    assert table.lookup("claude-sonnet-5-5") == Price(2.0, 10.0, 0.1, 2.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"models": [1, 2]}', 'a price table is a JSON object with "models"'),
        ('{"models": {"m": {"input": "cheap", "output": 1}}}', "model 'm': rates must be"),
        ('{"models": {"m": {"input": -1, "output": 1}}}', "model 'm': rates must be"),
        ('{"models": {"m": {"input": 1}}}', "model 'm': needs at least input and output"),
    ],
)
def test_bad_tables_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_price_table(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_a_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the price table"):
        load_price_table(tmp_path / "nope.json")


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    turns = [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": ""}]
    assert estimate_tokens(turns) == 10 + 4 + 0 + 4


def _prompts(count: int) -> list[PromptItem]:
    turns = [[{"role": "user", "content": f"q{i}"}] for i in range(count)]
    return [PromptItem(prompt_id(t), t, i + 1) for i, t in enumerate(turns)]


def _constitution(tmp_path: Path, system: str) -> Path:
    path = tmp_path / "c.md"
    path.write_text(
        "---\nname: plan\n---\n# Plan\n\n## System\n"
        + system
        + "\n\n## Principle: one\nCritique: Find faults.\nRevision: Fix them.\n",
        encoding="utf-8",
    )
    return path


def test_plan_counts_calls_and_bounds_tokens(tmp_path: Path) -> None:
    constitution = load_constitution(_constitution(tmp_path, "Be kind."))
    prompts = _prompts(3)
    config = GenerateConfig(rounds=2, max_tokens=50)
    plan = plan_run(prompts + prompts[:1], constitution, config, model="m", price=Price(1, 2))
    assert (plan.prompts, plan.initial_calls, plan.critique_calls, plan.revision_calls) == (
        3,
        3,
        6,
        6,
    )
    assert plan.calls == plan.usage.calls == 15
    assert plan.usage.output_tokens == 15 * 50
    # A short prefix is never cached.
    assert plan.usage.cache_read_input_tokens == plan.usage.cache_creation_input_tokens == 0
    assert plan.cost_usd == pytest.approx(
        (plan.usage.input_tokens * 1 + plan.usage.output_tokens * 2) / 1e6
    )
    assert plan_run(prompts, constitution, GenerateConfig(rounds=2, limit=2)).prompts == 2
    text = format_plan(plan)
    assert "Calls: at most 15 (3 initial, 6 critiques, 6 revisions;" in text
    assert f"output at most {15 * 50:,}" in text


def test_plan_prices_a_long_prefix_as_cached_after_the_first_call(tmp_path: Path) -> None:
    system = "Answer with care. " * 300  # 5,400 characters: above the caching minimum
    constitution = load_constitution(_constitution(tmp_path, system))
    prefix = estimate_tokens([{"role": "system", "content": constitution.system}])
    assert prefix >= MIN_CACHED_PREFIX
    prompts = _prompts(4)
    plan = plan_run(prompts, constitution, GenerateConfig(rounds=1, max_tokens=10))
    critique_and_revision_calls = 4 * 2
    assert plan.usage.cache_creation_input_tokens == prefix
    assert plan.usage.cache_read_input_tokens == prefix * (critique_and_revision_calls - 1)
    uncached = plan_run(
        prompts, constitution, GenerateConfig(rounds=1, max_tokens=10), caching=False
    )
    assert uncached.usage.input_tokens == (
        plan.usage.input_tokens
        + plan.usage.cache_read_input_tokens
        + plan.usage.cache_creation_input_tokens
    )
    assert format_plan(uncached).endswith(
        "Cost: unknown - no price for model 'None'; add it with --price-table FILE"
    )
