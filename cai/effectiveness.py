"""Per-principle effectiveness: what each principle's critique-and-revision rounds led to.

For each principle: how often it was drawn, and how each of those rounds ended - revised (and
whether the revision changed the answer), no change, failed (critique or revision cut off,
refused or empty) - and, of the revisions, how many reached the export and how many each
export filter dropped. With labels from a label run of the same run, how often the feedback
model preferred the revision to the first answer, and by what margin.

A revised round's export fate, from `cai.filters`' verdict of its record:

- the revision failed a check of its own (meta, commentary, copied): that filter;
- else, when the record is kept as a preference pair: "kept" if the round is the chosen one
  or before it (its revision is part of the chosen answer);
- else the filter that dropped the record (unchanged, duplicate, truncated, ...).

A label compares a record's first answer with its chosen revision, so with several rounds it
counts for every principle that revised the answer on the way there, once per record.

Pure functions over records, verdicts and label lines, returning plain JSON-ready dicts;
`cai stats`, `cai report` and `cai compare` show them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cai.errors import CaiError
from cai.filters import FilterConfig, FilterResult, Verdict, apply_filters, similar
from cai.records import Record
from cai.rundir import LABELS_FILE, read_manifest
from cai.words import plural

__all__ = ["FLAGS", "find_label_run", "format_effectiveness", "principle_effectiveness"]

# Flag -> what it means, for the docs and the report's legend.
FLAGS = {
    "never_drawn": "in the constitution, but no round drew it",
    "never_changes": "drawn, but none of its rounds changed the answer",
    "revisions_dropped": "most of its revisions were dropped by export's checks of the revision "
    "(meta, commentary, copied, unchanged)",
    "revisions_lose": "the feedback model preferred the first answer to most of its revisions",
}
# Filters that judge a revision itself, not the record's prompt or first answer.
_REVISION_FILTERS = ("meta", "commentary", "copied", "unchanged")


def _new_row() -> dict[str, Any]:
    return {
        "drawn": 0,
        "records": 0,
        "revised": 0,
        "changed": 0,
        "no_change": 0,
        "failed": 0,
        "kept": 0,
        "dropped": Counter(),
        "labels": None,
    }


def _verdicts(filtered: FilterResult) -> dict[int, Verdict]:
    """Each record's verdict, by the record object's identity (ids may repeat in a merged run)."""
    return {id(v.record): v for v in (*filtered.kept, *filtered.dropped)}


def _fate(index: int, verdict: Verdict | None) -> str:
    """ "kept", or the filter that kept a revised round's revision out of the export."""
    if verdict is None:
        return "unknown"
    rejected = dict(verdict.rejected)
    if index in rejected:
        return rejected[index]
    if verdict.use == "pref" and index <= verdict.chosen_round:
        return "kept"
    if verdict.use == "pref":
        # A later revision that is not rejected would have been chosen: cannot happen.
        return "unknown"
    return verdict.reason or "unknown"


def _label_principles(
    labels: Iterable[dict[str, Any]], records: list[Record]
) -> tuple[list[tuple[dict[str, Any], list[str]]], int]:
    """Each label of exactly one of these records' pairs, with the principles it counts for;
    and how many labels are of pairs these records do not hold (another revision, another run)."""
    by_id: dict[str, list[Record]] = {}
    for record in records:
        by_id.setdefault(record.id, []).append(record)
    matched = []
    unmatched = 0
    for label in labels:
        chosen = label.get("chosen_round")
        if chosen is None:
            continue  # sampled responses of a prompts source: no record's rounds behind it
        found = None
        for record in by_id.get(str(label.get("id")), ()):
            if record.initial_response != label.get("response_a"):
                continue
            rounds = {r.index: r for r in record.rounds}
            chosen_round = rounds.get(chosen)
            if chosen_round is not None and chosen_round.revision == label.get("response_b"):
                found = record
                break
        if found is None:
            unmatched += 1
            continue
        names = [r.principle for r in found.rounds if r.state == "revised" and r.index <= chosen]
        matched.append((label, list(dict.fromkeys(names))))
    return matched, unmatched


def _label_row(values: list[float]) -> dict[str, Any]:
    """The label figures of one principle from its labels' p_a (probability A, the first
    answer, is better)."""
    n = len(values)
    return {
        "pairs": n,
        "revision_preferred": sum(p < 0.5 for p in values),
        "first_preferred": sum(p > 0.5 for p in values),
        "preferred_share": round(sum(p < 0.5 for p in values) / n, 4) if n else None,
        "mean_preference": round(sum(1.0 - p for p in values) / n, 4) if n else None,
        "mean_margin": round(sum(abs(p - 0.5) for p in values) / n, 4) if n else None,
    }


def _flags(rows: dict[str, dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    flags = []
    for name, row in rows.items():

        def flag(kind: str, message: str, name: str = name) -> None:
            flags.append({"principle": name, "flag": kind, "message": message})

        if row["drawn"] == 0:
            if name in known:
                flag("never_drawn", f"'{name}' was never drawn")
            continue
        if row["changed"] == 0:
            ended = [
                f"{row[k]} {text}"
                for k, text in (
                    ("no_change", "no change"),
                    ("failed", "failed"),
                    ("revised", "revised but nearly identical"),
                )
                if row[k]
            ]
            flag(
                "never_changes",
                f"'{name}' never changed an answer in {plural(row['drawn'], 'round')} "
                f"({', '.join(ended)})",
            )
        own = sum(row["dropped"].get(k, 0) for k in _REVISION_FILTERS)
        if row["revised"] and own * 2 > row["revised"]:
            reasons = ", ".join(
                f"{k} {row['dropped'][k]}" for k in _REVISION_FILTERS if row["dropped"].get(k)
            )
            flag(
                "revisions_dropped",
                f"export drops most revisions of '{name}': {own} of {row['revised']} ({reasons})",
            )
        labels = row["labels"]
        if labels and labels["pairs"] and labels["first_preferred"] * 2 > labels["pairs"]:
            flag(
                "revisions_lose",
                f"the feedback model preferred the first answer to the revision of '{name}' in "
                f"{labels['first_preferred']} of {labels['pairs']} labelled pairs (mean "
                f"p(revision better) {labels['mean_preference']:.2f})",
            )
    return flags


def principle_effectiveness(
    records: Iterable[Record],
    filtered: FilterResult | None = None,
    labels: Iterable[dict[str, Any]] | None = None,
    *,
    config: FilterConfig | None = None,
    principles: Sequence[str] = (),
) -> dict[str, Any]:
    """Per-principle counts of a generate run's rounds (see the module's docstring).

    `filtered` is `apply_filters(records, config)` where the caller has it already (computed
    here otherwise); `labels` are a label run's lines (`feedback.read_labels`), None when there
    are none; `principles` are the constitution's names, so that one never drawn gets a row.
    Returns {"principles": {name: row}, "flags": [...], "labels": None or {"matched",
    "unmatched"}}, rows in the constitution's order, then by rounds drawn.
    """
    records = list(records)
    config = config or FilterConfig()
    if filtered is None:
        filtered = apply_filters(records, config)
    verdicts = _verdicts(filtered)
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        verdict = verdicts.get(id(record))
        answer = record.initial_response
        seen: set[str] = set()
        for r in record.rounds:
            row = rows.setdefault(r.principle, _new_row())
            row["drawn"] += 1
            if r.principle not in seen:
                seen.add(r.principle)
                row["records"] += 1
            state = r.state
            if state == "no_change":
                row["no_change"] += 1
                continue
            if state != "revised":
                row["failed"] += 1
                continue
            row["revised"] += 1
            revision = r.revision or ""
            # Compared with the answer this round revised, not with the first answer.
            if not similar(revision, answer, config.similarity):
                row["changed"] += 1
            answer = revision
            fate = _fate(r.index, verdict)
            if fate == "kept":
                row["kept"] += 1
            else:
                row["dropped"][fate] += 1
    for name in principles:
        rows.setdefault(name, _new_row())
    order = {name: i for i, name in enumerate(principles)}
    rows = dict(
        sorted(
            rows.items(),
            key=lambda kv: (order.get(kv[0], len(order)), -kv[1]["drawn"], kv[0]),
        )
    )
    summary = None
    if labels is not None:
        matched, unmatched = _label_principles(labels, records)
        values: dict[str, list[float]] = {name: [] for name in rows}
        for label, names in matched:
            p_a = label.get("p_a")
            if label.get("status") != "ok" or not isinstance(p_a, int | float):
                continue
            for name in names:
                values.setdefault(name, []).append(float(p_a))
        for name, row in rows.items():
            row["labels"] = _label_row(values.get(name, []))
        summary = {"matched": len(matched), "unmatched": unmatched}
    for row in rows.values():
        row["dropped"] = dict(sorted(row["dropped"].items()))
    return {"principles": rows, "flags": _flags(rows, set(principles)), "labels": summary}


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def format_effectiveness(data: dict[str, Any]) -> list[str]:
    """`principle_effectiveness` as the lines of a table, then its flags."""
    rows = data["principles"]
    if not rows:
        return []
    labelled = data.get("labels") is not None
    head = ["PRINCIPLE", "DRAWN", "REVISED", "CHANGED", "NO CHANGE", "FAILED", "KEPT", "DROPPED"]
    if labelled:
        head += ["REVISION WINS", "P(REVISION)", "MARGIN"]
    table = [head]
    for name, row in rows.items():
        dropped = ", ".join(f"{k} {n}" for k, n in row["dropped"].items()) or "-"
        cells = [
            name,
            *(str(row[k]) for k in ("drawn", "revised", "changed", "no_change", "failed", "kept")),
            dropped,
        ]
        if labelled:
            lb = row["labels"] or {"pairs": 0}
            if lb["pairs"]:
                cells += [
                    f"{lb['revision_preferred']}/{lb['pairs']} "
                    f"({_pct(lb['revision_preferred'], lb['pairs'])})",
                    f"{lb['mean_preference']:.2f}",
                    f"{lb['mean_margin']:.2f}",
                ]
            else:
                cells += ["-", "-", "-"]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    if labelled:
        summary = data["labels"]
        lines.append(
            f"Labels: {summary['matched']} of this run's pairs labelled"
            + (f" (from {summary['dir']})" if summary.get("dir") else "")
            + (
                f"; {summary['unmatched']} labels are of other pairs (another revision or run) "
                "and are not counted"
                if summary["unmatched"]
                else ""
            )
        )
    for flag in data["flags"]:
        lines.append(f"Flag: {flag['message']}")
    return lines


def find_label_run(run_dir: str | Path) -> Path | None:
    """A label run of the generate run in `run_dir`, for its per-principle preferences: the
    run directory itself when it holds labels, else a directory beside it made by `cai label`
    from it (its manifest names a source with this run's name), the newest if several."""
    run_dir = Path(run_dir)
    if (run_dir / LABELS_FILE).is_file():
        return run_dir
    name = run_dir.resolve().name
    found = []
    try:
        siblings = list(run_dir.resolve().parent.iterdir())
    except OSError:
        return None
    for other in siblings:
        labels = other / LABELS_FILE
        if other.resolve() == run_dir.resolve() or not labels.is_file():
            continue
        try:
            manifest = read_manifest(other)
        except CaiError:
            continue
        source = str((manifest.prompts if manifest else {}).get("source") or "")
        if manifest is not None and manifest.kind == "label" and Path(source).name == name:
            found.append((labels.stat().st_mtime, str(other), other))
    if not found:
        return None
    other = max(found)[2]
    # Named as the run was, so that output shows "outputs/run-labels" beside "outputs/run".
    return run_dir.parent / other.name if run_dir.name not in ("", ".", "..") else other
