"""The run's ledger and its budget: tokens, calls and cost of every call the run paid for.

One source: the call journal (`calls.jsonl`), which holds every reply of every invocation of
a run (resumes, batch and interactive calls, feedback votes, policy samples) the moment it
arrives, and which `cai merge` carries over from each shard. Each line is priced at the mode
it was made in (batch at half) and by the model that wrote it; lines written before the
journal recorded them take the run's model, and the batch mode when their request went out in
one of the run's batches (`batches.jsonl`).

`Budget` is `--max-cost`: each call's worst case is reserved before it is sent and replaced by
its real cost when the reply comes (cai.pipeline's `_Caller`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import CaiError, ConfigError
from cai.pricing import Price, PriceTable, call_price, format_cost, run_price_table
from cai.providers.base import Usage
from cai.rundir import BATCHES_FILE, CALLS_FILE, Manifest, read_jsonl, read_manifest

__all__ = [
    "BATCH",
    "INTERACTIVE",
    "STEP_NAMES",
    "Budget",
    "BudgetExhausted",
    "CallPricer",
    "Ledger",
    "Tally",
    "custom_id",
    "format_ledger",
    "read_ledger",
    "run_pricer",
    "step_kind",
    "tagged_journal",
    "worst_case_tokens",
]

INTERACTIVE = "interactive"
BATCH = "batch"
# What each kind of step is called where a person reads it, in the order they are shown.
STEP_NAMES = {
    "initial": "initial answer",
    "critique": "critique",
    "revision": "revision",
    "vote": "feedback vote",
    "policy": "policy sample",
    "prompts": "prompt generation",
    "other": "other",
}
_VOTE = re.compile(r"(^|\.)vote\d+(\.|$)")
# Chat formats wrap each message in a few tokens of their own.
_FRAMING_TOKENS = 8


def custom_id(record_id: str, step: str) -> str:
    """A call's name inside a batch: its record and step, as both batch APIs allow
    (`^[a-zA-Z0-9_-]{1,64}$`), e.g. `3f2a...-round1_critique`."""
    return f"{record_id}-{step.replace('.', '_')}"


def step_kind(step: str) -> str:
    """The kind of a journaled step: "initial", "critique", "revision" (generate), "vote",
    "policy" (label), "prompts" (prompt generation) or "other"."""
    if step == "initial":
        return "initial"
    last = step.rsplit(".", 1)[-1]
    if last in ("critique", "revision"):
        return last
    if _VOTE.search(step):
        return "vote"
    if step.startswith("response"):
        return "policy"
    if step.startswith("prompt") or step.split(".", 1)[0] == "generate":
        return "prompts"  # cai prompts (cai.redteam): "generate", "generate.retry1", ...
    return "other"


class CallPricer:
    """The price of a call by its provider, model and mode, from one price table."""

    def __init__(self, table: PriceTable) -> None:
        self.table = table
        self._cache: dict[tuple[str, str, str], Price | None] = {}

    def price(self, provider: str, model: str, mode: str = INTERACTIVE) -> Price | None:
        key = (provider, model, mode)
        if key not in self._cache:
            self._cache[key] = call_price(self.table, provider, model, mode == BATCH)
        return self._cache[key]


def run_pricer(manifest: Manifest | Mapping[str, Any] | None) -> CallPricer:
    """The pricer of a run: the bundled table plus the user's (`config.price_table`), or the
    bundled one alone when the user's has moved since the run."""
    return CallPricer(run_price_table(_part_of(manifest, "config").get("price_table")))


def _part_of(manifest: Manifest | Mapping[str, Any] | None, part: str) -> dict[str, Any]:
    """A copy of the manifest's `config` or `settings`, from a `Manifest` or its JSON."""
    if manifest is None:
        return {}
    if isinstance(manifest, Manifest):
        return dict(getattr(manifest, part))
    return dict(manifest.get(part) or {})


@dataclass
class Tally:
    """Usage and cost of a group of calls; `cost_usd` sums the priced ones only."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    unpriced_calls: int = 0

    def add(self, usage: Usage, cost: float | None) -> None:
        self.usage.add(usage)
        if cost is None:
            self.unpriced_calls += usage.calls
        else:
            self.cost_usd += cost

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.usage.to_dict(),
            "cost_usd": round(self.cost_usd, 6),
            "unpriced_calls": self.unpriced_calls,
        }


@dataclass
class Ledger:
    """Every journaled call of a run, summed: in all, by kind of step, and by mode."""

    total: Tally = field(default_factory=Tally)
    by_step: dict[str, Tally] = field(default_factory=dict)
    by_mode: dict[str, Tally] = field(default_factory=dict)
    unpriced_models: set[str] = field(default_factory=set)

    @property
    def usage(self) -> Usage:
        return self.total.usage

    @property
    def cost_usd(self) -> float | None:
        """USD for every call, or None when a call's model has no price."""
        return None if self.unpriced_models else self.total.cost_usd

    def add(self, step: str, mode: str, usage: Usage, cost: float | None, model: str) -> None:
        """One journal line: one call paid for, whatever its usage's own count says."""
        usage = Usage(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
            1,
        )
        self.total.add(usage, cost)
        self.by_step.setdefault(step_kind(step), Tally()).add(usage, cost)
        self.by_mode.setdefault(mode, Tally()).add(usage, cost)
        if cost is None:
            self.unpriced_models.add(model)

    def to_dict(self) -> dict[str, Any]:
        """The ledger as JSON-ready data (`cai stats --json`'s "ledger")."""
        cost = self.cost_usd
        return {
            "usage": self.usage.to_dict(),
            "cost_usd": None if cost is None else round(cost, 6),
            "by_step": {k: self.by_step[k].to_dict() for k in STEP_NAMES if k in self.by_step},
            "by_mode": {
                k: self.by_mode[k].to_dict() for k in (INTERACTIVE, BATCH) if k in self.by_mode
            },
            "unpriced_models": sorted(self.unpriced_models),
        }


def _batched_ids(run_dir: Path) -> set[str]:
    """The custom_ids of every request the run sent in a batch (`batches.jsonl`)."""
    ids: set[str] = set()
    for _, _, entry in read_jsonl(run_dir / BATCHES_FILE):
        if isinstance(entry, dict) and entry.get("event") == "created":
            ids.update(c for c in entry.get("custom_ids") or () if isinstance(c, str))
    return ids


def _journal(
    run_dir: Path, manifest: Manifest | Mapping[str, Any] | None
) -> Iterator[tuple[bytes, dict[str, Any], str, str, str]]:
    """(raw line, line, provider, model, mode) of each call the journal of `run_dir` holds.

    A line names its provider, model and mode; a line from before they were journaled takes
    the run's provider and model (a label run's policy samples, its policy model), and the
    batch mode when its request is in one of the run's batches.
    """
    if manifest is None:
        manifest = read_manifest(run_dir)
    config, settings = _part_of(manifest, "config"), _part_of(manifest, "settings")
    provider = str(config.get("provider") or settings.get("provider") or "")
    model = str(config.get("model") or settings.get("model") or "")
    policy = (
        str(settings.get("policy_provider") or provider),
        str(settings.get("policy_model") or model),
    )
    batched: set[str] | None = None
    for _, raw, line in read_jsonl(run_dir / CALLS_FILE):
        if line is None or not isinstance(line.get("step"), str):
            continue
        step = line["step"]
        mode = line.get("mode")
        if mode not in (INTERACTIVE, BATCH):
            if batched is None:
                batched = _batched_ids(run_dir)
            mode = BATCH if custom_id(str(line.get("id")), step) in batched else INTERACTIVE
        default = policy if step_kind(step) == "policy" else (provider, model)
        yield (
            raw,
            line,
            str(line.get("provider") or default[0]),
            str(line.get("model") or default[1]),
            mode,
        )


def read_ledger(
    run_dir: str | Path,
    manifest: Manifest | Mapping[str, Any] | None = None,
    *,
    pricer: CallPricer | None = None,
    ids: Container[str] | None = None,
) -> Ledger:
    """The ledger of the run in `run_dir`: every line of its call journal (of the records
    `ids` only, when given), each priced at its model and mode."""
    run_dir = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run_dir)
    pricer = pricer or run_pricer(manifest)
    ledger = Ledger()
    for _, line, provider, model, mode in _journal(run_dir, manifest):
        if ids is not None and line.get("id") not in ids:
            continue
        usage_data = line.get("usage")
        usage = Usage.from_dict(usage_data if isinstance(usage_data, dict) else {})
        price = pricer.price(provider, model, mode)
        ledger.add(line["step"], mode, usage, None if price is None else price.cost(usage), model)
    return ledger


def tagged_journal(
    run_dir: str | Path, manifest: Manifest | Mapping[str, Any] | None = None
) -> Iterator[bytes]:
    """The call journal of `run_dir`, each line naming its provider, model and mode (an older
    line gets them as `read_ledger` reads it), so it prices the same in another directory
    (`cai merge`)."""
    for raw, line, provider, model, mode in _journal(Path(run_dir), manifest):
        if line.get("mode") == mode and line.get("model") == model and line.get("provider"):
            yield raw if raw.endswith(b"\n") else raw + b"\n"
        else:
            tagged = {**line, "provider": provider, "model": model, "mode": mode}
            yield (json.dumps(tagged, ensure_ascii=False) + "\n").encode("utf-8")


def format_ledger(ledger: Ledger | Mapping[str, Any]) -> list[str]:
    """The ledger as lines of text: tokens and calls, cost, and cost by step and by mode."""
    data = ledger.to_dict() if isinstance(ledger, Ledger) else dict(ledger)
    u = data["usage"]
    calls = u["calls"]
    lines = [
        f"Tokens: {u['input_tokens']:,} in, {u['output_tokens']:,} out over {calls:,} "
        f"call{'' if calls == 1 else 's'}"
        + (
            f"; {u['cache_read_input_tokens']:,} cached input read, "
            f"{u['cache_creation_input_tokens']:,} written to the cache"
            if u["cache_read_input_tokens"] or u["cache_creation_input_tokens"]
            else ""
        )
    ]
    cost = data["cost_usd"]
    if cost is None:
        models = ", ".join(data["unpriced_models"])
        lines.append(f"Cost: unknown (no price for {models}; add it with --price-table FILE)")
        return lines
    modes = data["by_mode"]
    how = ""
    if set(modes) == {BATCH}:
        how = " (all at the batch rate, half)"
    elif BATCH in modes:
        how = (
            f" ({modes[BATCH]['calls']:,} batch calls at half price "
            f"{format_cost(modes[BATCH]['cost_usd'])}, {modes[INTERACTIVE]['calls']:,} "
            f"interactive {format_cost(modes[INTERACTIVE]['cost_usd'])})"
        )
    lines.append(f"Cost: {format_cost(cost)}{how}")
    steps = data["by_step"]
    if steps:
        lines.append(
            "Cost by step: "
            + ", ".join(
                f"{STEP_NAMES[k]} {format_cost(v['cost_usd'])} ({v['calls']:,})"
                for k, v in steps.items()
            )
        )
    return lines


def worst_case_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Most input tokens `messages` can be: no tokenizer makes more tokens than UTF-8 bytes,
    and chat formats add a few per message."""
    return sum(len(str(m.get("content", "")).encode("utf-8")) + _FRAMING_TOKENS for m in messages)


class BudgetExhausted(CaiError):
    """The run stopped at `max_cost` (the CLI's --max-cost, exit 4): its message says what was
    spent and left and how to go on; `run_dir` keeps what was done."""

    exit_code = 4

    def __init__(self, message: str, run_dir: str | Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


# A reservation's float sums may drift by a rounding error; no call is refused for that.
_EPSILON = 1e-9


class Budget:
    """`--max-cost`: the most a run may spend, its whole ledger counted.

    `reserve(worst)` waits until the call's worst case fits beside what was spent and what
    calls in flight may still cost; it returns False, and closes the budget, when nothing in
    flight could free enough. `settle(worst, real)` replaces a reservation by the call's real
    cost; it never awaits, so a paid reply reaches its journal line with no await between.
    Once closed, every reservation is refused, and `on_closed` runs when the last call in
    flight has settled (its reply journaled right after), so the run stops with none lost.
    """

    def __init__(self, limit: float, spent: float = 0.0) -> None:
        if not (math.isfinite(limit) and limit >= 0):
            raise ConfigError(f"--max-cost must be a non-negative number of USD, got {limit}")
        self.limit = limit
        self.spent = spent
        self.spent_before = spent  # by earlier invocations of the run
        self.reserved = 0.0
        self.in_flight = 0
        self.closed = False
        self.refused_worst: float | None = None  # the worst case of the call refused
        self.on_closed: Callable[[], None] | None = None
        self._settled: asyncio.Event | None = None

    @property
    def left(self) -> float:
        return max(self.limit - self.spent, 0.0)

    async def reserve(self, worst: float) -> bool:
        while True:
            if self.closed:
                return False
            if self.spent + self.reserved + worst <= self.limit + _EPSILON:
                self.reserved += worst
                self.in_flight += 1
                return True
            # Waiting helps only if the calls in flight may leave room when they settle.
            if self.in_flight == 0 or self.spent + worst > self.limit + _EPSILON:
                self.closed = True
                self.refused_worst = worst
                if self.in_flight == 0:
                    self._closed_now()
                return False
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()

    def settle(self, worst: float, real: float) -> None:
        """The call reserved at `worst` cost `real` (0 when it failed: nothing was billed)."""
        self.reserved = max(self.reserved - worst, 0.0)
        self.in_flight -= 1
        self.spent += real
        if self._settled is not None:
            # Wake every waiter to look again; later ones wait on a new event.
            self._settled.set()
            self._settled = None
        if self.closed and self.in_flight == 0:
            self._closed_now()

    def _closed_now(self) -> None:
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()

    def describe(self) -> str:
        """What a person reads when the budget stopped the run: spent, left, how to go on."""
        worst = self.refused_worst or 0.0
        return (
            f"Stopped at --max-cost {format_cost(self.limit)}: the run has spent "
            f"{format_cost(self.spent)} in all ({format_cost(self.spent - self.spent_before)} "
            f"this time), {format_cost(self.left)} is left, and the next call could cost up to "
            f"{format_cost(worst)}. Calls in flight finished and are saved. To go on, run the "
            "same command with a higher --max-cost (what was spent counts against it)."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_cost_usd": self.limit,
            "spent_usd": round(self.spent, 6),
            "spent_before_usd": round(self.spent_before, 6),
            "left_usd": round(self.left, 6),
            "stopped": self.closed,
            "refused_worst_usd": None
            if self.refused_worst is None
            else round(self.refused_worst, 6),
        }
