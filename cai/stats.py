"""What a run holds: statuses, principle use, how often revisions changed the answer, lengths,
tokens and cost, and what `cai export`'s default filters would keep."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai.effectiveness import find_label_run, format_effectiveness, principle_effectiveness
from cai.errors import ConfigError
from cai.filters import SIMILARITY_THRESHOLD, FilterConfig, apply_filters, for_run, similar
from cai.ledger import Ledger, format_ledger, read_ledger
from cai.pricing import format_cost, run_cost
from cai.records import Record, clean_count
from cai.rundir import describe_status, load_run
from cai.words import plural

__all__ = ["compute_stats", "format_stats", "run_stats"]

_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "calls",
)


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
    records: Iterable[Record],
    manifest: dict[str, Any] | None = None,
    filters: FilterConfig | None = None,
    ledger: Ledger | None = None,
    labels: Iterable[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Counts and measures of a run's records, as plain JSON-ready data; `filters` (default
    all on, without a constitution to compare with) say what export would keep. Tokens,
    calls and cost come from the run's `ledger` (its call journal) when given, else from the
    records' usage. `labels`, the lines of a label run of these records, add the feedback
    model's judgement to each principle's figures (`effectiveness`)."""
    records = list(records)
    manifest = manifest or {}
    ok = [r for r in records if r.status == "ok"]
    principles: dict[str, Counter[str]] = {}
    rounds: Counter[str] = Counter()
    changed_records = 0
    # Prompts from `cai prompts generate` carry their attack style: which ones the model falls for.
    styles: dict[str, Counter[str]] = {}
    for record in ok:
        response = record.initial_response
        for r in record.rounds:
            p = principles.setdefault(r.principle, Counter())
            p["rounds"] += 1
            rounds["total"] += 1
            kind = r.state if r.state in ("revised", "no_change") else "problem"
            if kind == "revised":
                # Compared with the answer this round revised, not with the first answer.
                if not similar(r.revision or "", response, SIMILARITY_THRESHOLD):
                    p["changed"] += 1
                    rounds["changed"] += 1
                response = r.revision or ""
            p[kind] += 1
            rounds[kind] += 1
        changed = not similar(record.final_response, record.initial_response, SIMILARITY_THRESHOLD)
        changed_records += changed
        if record.tags and record.tags.get("style"):
            s = styles.setdefault(record.tags["style"], Counter())
            s["records"] += 1
            s["revised"] += any(r.state == "revised" for r in record.rounds)
            s["changed"] += changed
    if ledger is not None:
        usage = ledger.usage.to_dict()
        cost = ledger.cost_usd
    else:
        usage = {k: sum(clean_count(r.usage.get(k, 0)) for r in records) for k in _USAGE_KEYS}
        cost = run_cost(records, manifest)
    config = filters or FilterConfig()
    filtered = apply_filters(records, config)
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
        **(
            {
                "styles": {
                    name: {
                        **{k: c[k] for k in ("records", "revised", "changed")},
                        "revision_rate": round(c["revised"] / c["records"], 4),
                    }
                    for name, c in sorted(styles.items())
                }
            }
            if styles
            else {}
        ),
        "lengths": {
            "initial": _lengths([r.initial_response for r in ok]),
            "final": _lengths([r.final_response for r in ok]),
        },
        "usage": usage,
        "cost_usd": None if cost is None else round(cost, 6),
        **({"ledger": ledger.to_dict()} if ledger is not None else {}),
        "export": {
            "kept": len(filtered.kept),
            "preference_pairs": pref,
            "sft_only": filtered.sft_only,
            "fell_back": filtered.fell_back,
            "removed": dict(sorted(filtered.removed.items())),
        },
        "effectiveness": principle_effectiveness(
            records,
            filtered,
            labels,
            config=config,
            principles=[p.name for p in config.constitution.principles]
            if config.constitution is not None
            else (),
        ),
    }


def run_stats(run_dir: str | Path, label_run: str | Path | None = None) -> dict[str, Any]:
    """`compute_stats` of the run in `run_dir`; a run whose writer died shows as interrupted.

    The labels judged per principle are those of the label run in `label_run`, else of a
    label run of this run found beside it (`find_label_run`), if any.
    """
    run_dir = Path(run_dir)
    from cai import feedback, redteam

    if redteam.is_prompts_run(run_dir):
        return redteam.prompts_stats(run_dir)
    if label_run is not None and feedback.is_label_run(run_dir):
        raise ConfigError(
            f"{run_dir} is a label run; --labels goes with the generate run it labelled"
        )
    if feedback.is_label_run(run_dir):
        manifest, labels = feedback.load_labels(run_dir)
        ledger = read_ledger(run_dir, manifest)
        cost = ledger.cost_usd
        data = {
            "kind": "label",
            **feedback.label_stats(labels),
            "usage": ledger.usage.to_dict(),
            "cost_usd": None if cost is None else round(cost, 6),
            "ledger": ledger.to_dict(),
        }
    else:
        manifest, records = load_run(run_dir)
        label_dir = Path(label_run) if label_run is not None else find_label_run(run_dir)
        data = compute_stats(
            records,
            manifest.to_dict(),
            for_run(FilterConfig(), run_dir, manifest, records),
            ledger=read_ledger(run_dir, manifest),
            labels=feedback.read_labels(label_dir) if label_dir is not None else None,
        )
        if label_dir is not None:
            data["effectiveness"]["labels"]["dir"] = str(label_dir)
    data["run"] = {
        "dir": str(run_dir),
        "status": manifest.status if manifest.cai_version else None,
        # What the status means now: a `running` run whose process died is interrupted.
        "state": describe_status(run_dir, manifest) if manifest.cai_version else None,
        "constitution": manifest.constitution.get("name"),
        "provider": manifest.config.get("provider"),
        "model": manifest.config.get("model"),
    }
    return data


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def _cost_lines(data: dict[str, Any]) -> list[str]:
    """Tokens, calls and cost: the ledger's lines, or the records' sums for data without one."""
    if data.get("ledger"):
        return format_ledger(data["ledger"])
    u = data.get("usage")
    if not u:
        return []
    cost = data.get("cost_usd")
    return [
        f"Tokens: {u['input_tokens']:,} in, {u['output_tokens']:,} out over {u['calls']:,} calls",
        f"Cost: {format_cost(cost)}"
        if cost is not None
        else "Cost: unknown (no price for the model)",
    ]


def format_stats(data: dict[str, Any]) -> str:
    """The human-readable report of `run_stats`."""
    if data.get("kind") == "prompts":
        from cai.redteam import format_prompts_stats

        return format_prompts_stats(data)
    if data.get("kind") == "label":
        from cai.feedback import format_label_stats

        return "\n".join([format_label_stats(data), *_cost_lines(data)])
    run = data.get("run") or {}
    status = ", ".join(f"{n} {s}" for s, n in data["status"].items()) or "none"
    lines = []
    if run:
        lines.append(
            f"Run {run['dir']}"
            + (f" ({run.get('state') or run['status']})" if run.get("status") else "")
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
        f"Final answer differs from the first: {changed['records']} of {plural(ok, 'record')} "
        f"({_pct(changed['records'], ok)})"
    )
    rows = [["PRINCIPLE", "ROUNDS", "REVISED", "CHANGED", "NO CHANGE", "PROBLEM"]]
    if data.get("effectiveness"):
        # Each principle's rounds, what export kept of its revisions, and the labels' verdict.
        effectiveness = format_effectiveness(data["effectiveness"])
        lines += ["", *effectiveness, ""] if effectiveness else []
        rows = rows[:0]
    for name, c in data["principles"].items() if rows else ():
        rows.append(
            [name, *(str(c[k]) for k in ("rounds", "revised", "changed", "no_change", "problem"))]
        )
    if len(rows) > 1:  # data from before the per-principle figures
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.append("")
    styles = [["STYLE", "RECORDS", "REVISED", "RATE", "CHANGED"]]
    for name, c in data.get("styles", {}).items():
        rate = f"{c['revision_rate']:.0%}"
        styles.append([name, str(c["records"]), str(c["revised"]), rate, str(c["changed"])])
    if len(styles) > 1:
        widths = [max(len(row[i]) for row in styles) for i in range(len(styles[0]))]
        lines.append("Revision rate by attack style (cai prompts):")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in styles
        ]
        lines.append("")
    for label, key in (("first answer", "initial"), ("final answer", "final")):
        length = data["lengths"][key]
        lines.append(
            f"Length of {label}: mean {length['mean_words']} words ({length['mean_chars']} "
            f"chars), median {length['median_words']} words"
        )
    lines += _cost_lines(data)
    e = data["export"]
    removed = ", ".join(f"{k} {n}" for k, n in e["removed"].items()) or "none"
    lines.append(
        f"Export with default filters: {e['preference_pairs']} preference pairs, "
        f"{e['sft_only']} SFT-only; removed: {removed}"
    )
    return "\n".join(lines)
