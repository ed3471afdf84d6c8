"""What a run holds: statuses, principle use, how often revisions changed the answer, lengths,
tokens and cost, and what `cai export`'s default filters would keep."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai.errors import CaiError
from cai.filters import SIMILARITY_THRESHOLD, FilterConfig, apply_filters, similar
from cai.records import Record

__all__ = ["compute_stats", "find_cost", "format_stats", "run_cost", "run_stats"]

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "calls",
)


def find_cost(manifest: dict[str, Any]) -> float | None:
    """The cost in USD that `cai generate` wrote to the manifest, if any."""
    stats = manifest.get("stats") or {}
    for value in (stats.get("cost_usd"), manifest.get("cost_usd")):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def run_cost(records: list[Record], manifest: dict[str, Any]) -> float | None:
    """The cost in USD of every call behind `records`, priced from their summed usage.

    The records' usage covers every session of a resumed run, where the manifest's figure
    covers only the last; the manifest's figure is the fallback when a model has no price.
    """
    from cai.pricing import FREE, load_price_table
    from cai.providers.base import Usage

    by_model: dict[tuple[str, str], Usage] = {}
    for r in records:
        by_model.setdefault((r.provider, r.model), Usage()).add(Usage.from_dict(r.usage))
    table_path = (manifest.get("config") or {}).get("price_table")
    try:
        table = load_price_table(table_path)
    except CaiError:
        table = load_price_table()  # the user's table has moved since the run
    total = 0.0
    for (provider, model), usage in by_model.items():
        price = FREE if provider == "local" else table.lookup(model)
        if price is None:
            return find_cost(manifest)
        total += price.cost(usage)
    return total if by_model else find_cost(manifest)


def _lengths(texts: list[str]) -> dict[str, float]:
    chars = [len(t) for t in texts]
    words = [len(t.split()) for t in texts]
    if not texts:
        return {"mean_chars": 0, "median_chars": 0, "mean_words": 0, "median_words": 0}
    return {
        "mean_chars": round(statistics.fmean(chars), 1),
        "median_chars": statistics.median(chars),
        "mean_words": round(statistics.fmean(words), 1),
        "median_words": statistics.median(words),
    }


def compute_stats(
    records: Iterable[Record], manifest: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Counts and measures of a run's records, as plain JSON-ready data."""
    records = list(records)
    manifest = manifest or {}
    ok = [r for r in records if r.status == "ok"]
    principles: dict[str, Counter[str]] = {}
    rounds: Counter[str] = Counter()
    changed_records = 0
    for record in ok:
        response = record.initial_response
        for r in record.rounds:
            p = principles.setdefault(r.principle, Counter())
            p["rounds"] += 1
            rounds["total"] += 1
            if r.problem is not None:
                kind = "problem"
            elif r.skipped:
                kind = "no_change"
            else:
                kind = "revised"
                # Compared with the answer this round revised, not with the first answer.
                if not similar(r.revision or "", response, SIMILARITY_THRESHOLD):
                    p["changed"] += 1
                    rounds["changed"] += 1
                response = r.revision or ""
            p[kind] += 1
            rounds[kind] += 1
        changed_records += not similar(
            record.final_response, record.initial_response, SIMILARITY_THRESHOLD
        )
    usage = {k: sum(int(r.usage.get(k, 0)) for r in records) for k in _USAGE_KEYS}
    filtered = apply_filters(records, FilterConfig())
    pref = sum(v.use == "pref" for v in filtered.kept)
    return {
        "records": len(records),
        "status": dict(sorted(Counter(r.status for r in records).items())),
        "initial_finish_reasons": dict(
            sorted(Counter(r.initial_finish_reason for r in ok).items())
        ),
        "rounds": {k: rounds[k] for k in ("total", "revised", "changed", "no_change", "problem")},
        "principles": {
            name: {k: c[k] for k in ("rounds", "revised", "changed", "no_change", "problem")}
            for name, c in sorted(principles.items(), key=lambda kv: (-kv[1]["rounds"], kv[0]))
        },
        "answer_changed": {
            "records": changed_records,
            "share": round(changed_records / len(ok), 4) if ok else 0.0,
        },
        "lengths": {
            "initial": _lengths([r.initial_response for r in ok]),
            "final": _lengths([r.final_response for r in ok]),
        },
        "usage": usage,
        "cost_usd": run_cost(records, manifest),
        "export": {
            "kept": len(filtered.kept),
            "preference_pairs": pref,
            "sft_only": filtered.sft_only,
            "fell_back": filtered.fell_back,
            "removed": dict(sorted(filtered.removed.items())),
        },
    }


def run_stats(run_dir: str | Path) -> dict[str, Any]:
    """`compute_stats` of the run in `run_dir`."""
    from cai.export import load_run

    run_dir = Path(run_dir)
    manifest, records = load_run(run_dir)
    data = compute_stats(records, manifest)
    config = manifest.get("config") or {}
    data["run"] = {
        "dir": str(run_dir),
        "status": manifest.get("status"),
        "constitution": (manifest.get("constitution") or {}).get("name"),
        "provider": config.get("provider"),
        "model": config.get("model"),
    }
    return data


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def format_stats(data: dict[str, Any]) -> str:
    """The human-readable report of `run_stats`."""
    run = data.get("run") or {}
    status = ", ".join(f"{n} {s}" for s, n in data["status"].items()) or "none"
    lines = []
    if run:
        lines.append(
            f"Run {run['dir']}"
            + (f" ({run['status']})" if run.get("status") else "")
            + (f": constitution {run['constitution']}" if run.get("constitution") else "")
            + (f", {run['provider']} {run['model']}" if run.get("model") else "")
        )
    lines.append(f"Records: {data['records']} ({status})")
    reasons = data["initial_finish_reasons"]
    if set(reasons) - {"stop"}:
        lines.append(
            "Initial answers: "
            + ", ".join(f"{n} {'complete' if k == 'stop' else k}" for k, n in reasons.items())
        )
    r = data["rounds"]
    lines.append(
        f"Rounds: {r['total']}: {r['revised']} revised ({r['changed']} changed the answer), "
        f"{r['no_change']} found nothing to change, {r['problem']} cut off or refused"
    )
    changed = data["answer_changed"]
    ok = data["status"].get("ok", 0)
    lines.append(
        f"Final answer differs from the first: {changed['records']} of {ok} records "
        f"({_pct(changed['records'], ok)})"
    )
    rows = [["PRINCIPLE", "ROUNDS", "REVISED", "CHANGED", "NO CHANGE", "PROBLEM"]]
    for name, c in data["principles"].items():
        rows.append(
            [name, *(str(c[k]) for k in ("rounds", "revised", "changed", "no_change", "problem"))]
        )
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.append("")
    for label, key in (("first answer", "initial"), ("final answer", "final")):
        length = data["lengths"][key]
        lines.append(
            f"Length of {label}: mean {length['mean_words']} words ({length['mean_chars']} "
            f"chars), median {length['median_words']} words"
        )
    u = data["usage"]
    lines.append(
        f"Tokens: {u['input_tokens']} in, {u['output_tokens']} out over {u['calls']} calls"
        + (
            f", {u['cache_read_input_tokens']} cache read, "
            f"{u['cache_creation_input_tokens']} cache write"
            if u["cache_read_input_tokens"] or u["cache_creation_input_tokens"]
            else ""
        )
    )
    cost = data["cost_usd"]
    from cai.pricing import format_cost

    lines.append(
        f"Cost: {format_cost(cost)}"
        if cost is not None
        else "Cost: unknown (no price for the model)"
    )
    e = data["export"]
    removed = ", ".join(f"{k} {n}" for k, n in e["removed"].items()) or "none"
    lines.append(
        f"Export with default filters: {e['preference_pairs']} preference pairs, "
        f"{e['sft_only']} SFT-only; removed: {removed}"
    )
    return "\n".join(lines)
