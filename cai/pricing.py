"""What calls cost: the price table (cai/data/prices.json, or the user's), token estimates, and
the cost of a run's records."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.errors import CaiError, InputError
from cai.providers.base import Usage

if TYPE_CHECKING:
    from cai.records import Record

__all__ = [
    "BATCH_DISCOUNT",
    "FREE",
    "PRICES_FILE",
    "Price",
    "PriceTable",
    "batch_price",
    "call_price",
    "estimate_tokens",
    "find_cost",
    "format_cost",
    "load_price_table",
    "run_cost",
    "run_price_table",
]

PRICES_FILE = Path(__file__).parent / "data" / "prices.json"
_RATES = ("input", "output", "cache_read", "cache_write")
# A dated snapshot of a model: "-20251001" or "-2026-03-17" after the base name.
_SNAPSHOT = re.compile(r"-\d{4}(-?\d{2}){2}$")
# Chat formats add a few tokens of framing to every turn.
_TURN_OVERHEAD = 4


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind, for one model."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0

    def cost(self, usage: Usage) -> float:
        """USD for `usage`; its `input_tokens` exclude cache reads and writes, as the APIs report."""
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_input_tokens * self.cache_read
            + usage.cache_creation_input_tokens * self.cache_write
        ) / 1e6


FREE = Price(0.0, 0.0)
# Both batch APIs bill half the interactive price. Anthropic applies the discount to every
# rate, cache reads and writes included (its cache multipliers stack on the batch price);
# OpenAI's batch price list halves input, cached input and output alike.
BATCH_DISCOUNT = 0.5


def batch_price(price: Price) -> Price:
    """What `price` becomes through the Message Batches or Batch API."""
    return Price(
        *(
            getattr(price, rate) * BATCH_DISCOUNT
            for rate in ("input", "output", "cache_read", "cache_write")
        )
    )


@dataclass
class PriceTable:
    models: dict[str, Price]
    as_of: str | None = None

    def lookup(self, model: str) -> Price | None:
        """The price of `model`, or of its base name when it is a dated snapshot; else None."""
        if model in self.models:
            return self.models[model]
        base = _SNAPSHOT.sub("", model)
        return self.models.get(base)


def _read_table(path: Path) -> tuple[dict[str, Price], str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(str(path), None, f"cannot read the price table ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(str(path), e.lineno, f"not valid JSON: {e.msg}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise InputError(
            str(path),
            None,
            'a price table is a JSON object with "models": {"<model>": {"input": 3.0, '
            '"output": 15.0, "cache_read": 0.3, "cache_write": 3.75}} (USD per million tokens)',
        )
    prices = {}
    for name, rates in models.items():
        if not isinstance(rates, dict) or not all(
            isinstance(rates.get(k, 0), int | float) and rates.get(k, 0) >= 0 for k in _RATES
        ):
            raise InputError(str(path), None, f"model '{name}': rates must be non-negative numbers")
        if "input" not in rates or "output" not in rates:
            raise InputError(str(path), None, f"model '{name}': needs at least input and output")
        prices[name] = Price(**{k: float(rates.get(k, 0.0)) for k in _RATES})
    return prices, data.get("as_of")


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """The bundled table, with the models of the user's file at `path` added or replaced."""
    models, as_of = _read_table(PRICES_FILE)
    if path is not None:
        extra, extra_as_of = _read_table(Path(path))
        models.update(extra)
        as_of = extra_as_of or as_of
    return PriceTable(models, as_of)


def run_price_table(path: str | Path | None) -> PriceTable:
    """The price table of a run made with the user's table at `path`: `load_price_table`, or
    the bundled table alone when the user's has moved since the run."""
    try:
        return load_price_table(path)
    except CaiError:
        return load_price_table()


def call_price(table: PriceTable, provider: str, model: str, batch: bool = False) -> Price | None:
    """The price of a call to `model` through `provider` (a local model is free), at the batch
    rate when `batch`; None when `table` has no price for `model`."""
    price = FREE if provider == "local" else table.lookup(model)
    return batch_price(price) if price is not None and batch else price


def estimate_tokens(messages: Iterable[dict[str, str]] | str) -> int:
    """A tokenizer-free estimate: about four characters a token, plus framing per turn."""
    if isinstance(messages, str):
        return (len(messages) + 3) // 4
    return sum((len(m["content"]) + 3) // 4 + _TURN_OVERHEAD for m in messages)


def format_cost(usd: float) -> str:
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


def find_cost(manifest: dict[str, Any]) -> float | None:
    """The cost in USD that `cai generate` wrote to the manifest, if any."""
    stats = manifest.get("stats") or {}
    for value in (stats.get("cost_usd"), manifest.get("cost_usd")):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def run_cost(records: Iterable[Record], manifest: dict[str, Any]) -> float | None:
    """The cost in USD of every call behind `records`, priced from their summed usage.

    The records' usage covers every session of a resumed run, where the manifest's figure
    covers only the last; the manifest's figure is the fallback when a model has no price.
    """
    by_model: dict[tuple[str, str], Usage] = {}
    for r in records:
        by_model.setdefault((r.provider, r.model), Usage()).add(Usage.from_dict(r.usage))
    config = manifest.get("config") or {}
    table = run_price_table(config.get("price_table"))
    total = 0.0
    for (provider, model), usage in by_model.items():
        # At the batch rate when the run's last invocation used a batch API.
        price = call_price(table, provider, model, bool(config.get("batch")))
        if price is None:
            return find_cost(manifest)
        total += price.cost(usage)
    return total if by_model else find_cost(manifest)
