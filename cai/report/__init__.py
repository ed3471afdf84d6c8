"""`cai report`: one self-contained HTML file to look at a run before training on it.

The file holds its CSS, its script, its data and its plots; it loads nothing from the network
(its Content-Security-Policy forbids it). It has a summary, plots, and a pair viewer that
pages through every record, searchable and filterable, rendered by the script as the reader
asks for it.

Data is built by pure functions over plain records and the manifest (`build_report_data`);
the numbers come from the same code as `cai stats` (`compute_stats`) and the verdicts from the
same code as `cai export` (`apply_filters`). Model and prompt text reaches the page only as
JSON inside a `<script type="application/json">` block with every `<`, `>` and `&` escaped,
and the script writes it with `textContent`, so a prompt holding `<script>` stays text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai.errors import ConfigError
from cai.filters import FilterConfig, apply_filters, for_run, similarity
from cai.ledger import STEP_NAMES, Ledger, format_ledger, read_ledger, step_kind
from cai.records import Record, Round, clean_count
from cai.rundir import (
    CALLS_FILE,
    LABELS_FILE,
    RECORDS_FILE,
    load_run,
    read_manifest,
    record_lines,
)
from cai.stats import compute_stats

__all__ = [
    "REPORT_FILE",
    "build_report_data",
    "render_plots",
    "render_report",
    "round_kind",
    "write_report",
]

REPORT_FILE = "report.html"
_TEMPLATES = Path(__file__).parent / "templates"
# The viewer's verdict for records `cai export` keeps.
_USE_LABELS = {"pref": "preference pair", "sft": "SFT only"}


def round_kind(round_: Round) -> str:
    """What a round led to: "revised", "no_change", or "problem:<why>" (its critique or its
    revision was cut off, refused or empty), from `Round.state` as `cai stats` counts it."""
    if round_.state in ("revised", "no_change"):
        return round_.state
    return f"problem:{round_.problem or round_.state}"


def _problem_step(round_: Round) -> str:
    """Which call of a failed round went wrong: "critique" or "revision"."""
    return round_.state.split("_")[0]


def _words(text: str) -> int:
    return len(text.split())


class _Table:
    """Interns repeated strings (principle names, requests): each is stored once, then indexed."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int:
        if text is None:
            return -1
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def _verdicts(records: list[Record], config: FilterConfig) -> list[tuple[str, str, int]]:
    """For each record, as `cai export` judges it: (use or drop reason, label, chosen round)."""
    result = apply_filters(records, config)
    kept = {id(v.record): v for v in result.kept}
    dropped = {id(v.record): v.reason or "unknown" for v in result.dropped}
    out = []
    for record in records:
        verdict = kept.get(id(record))
        if verdict is not None:
            out.append((verdict.use, _USE_LABELS[verdict.use], verdict.chosen_round))
        else:
            reason = dropped[id(record)]
            out.append((f"drop:{reason}", f"dropped: {reason}", 0))
    return out


def _final_round(record: Record) -> int:
    """The round the pipeline's final answer came from; 0 when it is the first answer."""
    good = [r.index for r in record.rounds if round_kind(r) == "revised"]
    return good[-1] if good else 0


def _hist(values: list[float], bins: int, lo: float, hi: float) -> list[int]:
    counts = [0] * bins
    width = (hi - lo) / bins or 1.0
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    return counts


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(s[-1], 3)}


def _failures(records: list[Record]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for r in records:
        if r.status != "ok":
            kind = (r.error or {}).get("kind") or "unknown"
            kinds[f"{r.status}: {kind}"] += 1
            continue
        if r.initial_finish_reason not in ("stop", "empty"):
            kinds[f"first answer: {r.initial_finish_reason}"] += 1
        for round_ in r.rounds:
            kind = round_kind(round_)
            if kind.startswith("problem:"):
                kinds[f"{_problem_step(round_)}: {kind.split(':', 1)[1]}"] += 1
    return dict(kinds.most_common())


def _label_failures(labels: list[dict[str, Any]]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for label in labels:
        status = str(label.get("status", "ok"))
        if status != "ok":
            error = label.get("error") if isinstance(label.get("error"), dict) else {}
            kinds[f"pair {status}: {error.get('kind') or 'unknown'}"] += 1
        for vote in label.get("votes") or []:
            if isinstance(vote, dict) and vote.get("problem"):
                kinds[f"vote: {vote['problem']}"] += 1
    return dict(kinds.most_common())


def _timings(records: list[Record], labels: list[dict[str, Any]]) -> list[tuple[Any, Any, int]]:
    """(started_at, seconds, calls) of each record's chain, or each pair's votes in a label run."""
    rows = [(r.timings, r.usage) for r in records]
    rows += [
        (label.get("timings"), label.get("usage"))
        for label in labels
        if isinstance(label.get("timings"), dict) and isinstance(label.get("usage"), dict)
    ]
    return [
        (timings.get("started_at"), timings.get("seconds"), clean_count(usage.get("calls")))
        for timings, usage in rows
    ]


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _call_stats(
    records: list[Record], calls: Iterable[dict[str, Any]], labels: list[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Seconds per call (each chain's time over its calls, or each labelled pair's) and tokens
    per call, by kind of step (`cai.ledger.step_kind`: initial, critique, revision, vote, ...)."""
    seconds = [float(t) / n for _, t, n in _timings(records, list(labels)) if n and _number(t)]
    tokens: dict[str, dict[str, list[int]]] = {}
    for call in calls:
        kind = step_kind(str(call.get("step", "")))
        usage = call.get("usage") if isinstance(call.get("usage"), dict) else {}
        entry = tokens.setdefault(kind, {"in": [], "out": []})
        entry["in"].append(clean_count(usage.get("input_tokens")))
        entry["out"].append(clean_count(usage.get("output_tokens")))
    return {"seconds_per_call": seconds, "tokens": tokens}


def _label_data(labels: list[dict[str, Any]]) -> dict[str, Any]:
    """p_a distribution, position bias and order consistency of a label run; the counts are
    `cai stats`'s (`label_stats`)."""
    from cai.feedback import label_stats

    stats = label_stats(labels)
    p_a = [float(x["p_a"]) for x in labels if isinstance(x.get("p_a"), int | float)]
    return {
        "pairs": stats["pairs"],
        "status": stats["statuses"],
        "p_a": p_a,
        "p_a_hist": _hist(p_a, 20, 0.0, 1.0),
        "b_preferred": sum(p < 0.5 for p in p_a),
        "votes": stats["votes"],
        "decided_votes": stats["decided_votes"],
        "first_preferred": stats["first_option_votes"],
        "mean_p_first": stats["mean_p_first"],
        "consistent": stats["position_consistent"],
        "consistency_known": stats["labelled"],
        "answered_votes": stats["answered_votes"],
        "vote_problems": stats["vote_problems"],
        "revision_pairs": stats["revision_pairs"],
        "revision_preferred": stats["revision_preferred"],
        "modes": dict(Counter(str(x.get("mode")) for x in labels if x.get("mode"))),
    }


def _label_entry(label: dict[str, Any], names: _Table) -> dict[str, Any]:
    votes = []
    for v in label.get("votes") or []:
        if isinstance(v, dict):
            p = v.get("p_first")
            votes.append(
                [
                    names(str(v.get("principle", ""))),
                    str(v.get("order", "")),
                    round(p, 4) if isinstance(p, int | float) else None,
                    str(v.get("reply") or ""),
                    str(v.get("problem") or ""),
                ]
            )
    p_a = label.get("p_a")
    entry = {
        "pa": round(p_a, 4) if isinstance(p_a, int | float) else None,
        "pc": label.get("position_consistent"),
        "vt": votes,
    }
    error = label.get("error")
    if isinstance(error, dict):
        entry["le"] = f"{error.get('kind', 'error')}: {error.get('message', '')}"
    return entry


def _label_verdict(label: dict[str, Any]) -> str:
    """What `cai export` makes of a label with its default flags: which response it prefers,
    or why it makes no pair."""
    from cai.feedback import label_skip_reason

    reason = label_skip_reason(label)
    if reason is not None:
        return f"dropped: {reason}"
    if label.get("chosen_round") is not None:
        # A pair of a generate run: A is its first answer, B the revision export would choose.
        return "prefers the first answer" if float(label["p_a"]) > 0.5 else "prefers the revision"
    return "prefers A" if float(label["p_a"]) > 0.5 else "prefers B"


def _label_run_note(labels: list[dict[str, Any]]) -> str | None:
    """What A and B are in a label run: a generate run's first answer and its revision, or two
    sampled responses."""
    if any(label.get("chosen_round") is not None for label in labels):
        return "A is the run's first answer, B the revision export would choose"
    return None


def _messages(prompt: Any) -> list[list[str]]:
    if isinstance(prompt, str):
        return [["user", prompt]]
    out = []
    for m in prompt or []:
        if isinstance(m, dict):
            out.append([str(m.get("role", "")), str(m.get("content", ""))])
    return out


def _viewer_records(
    records: list[Record],
    verdicts: list[tuple[str, str, int]],
    labels: list[dict[str, Any]],
    names: _Table,
    texts: _Table,
) -> tuple[list[dict[str, Any]], dict[str, list[int]], dict[int, list[float]]]:
    """The viewer's entry of each record (with its label, where there is one); the word counts
    of each ok record's first and chosen answer; each round's similarity to the answer before
    it, by round index."""
    label_by_id = {str(x.get("id")): x for x in labels}
    viewer_records = []
    lengths: dict[str, list[int]] = {"first": [], "chosen": []}
    change: dict[int, list[float]] = {}
    for record, (use, verdict_label, chosen_round) in zip(records, verdicts, strict=True):
        rounds = []
        answer = record.initial_response
        positions = {}
        for position, r in enumerate(record.rounds):
            positions[r.index] = position
            kind = round_kind(r)
            entry: dict[str, Any] = {
                "n": names(r.principle),
                "k": kind,
                "q": texts(r.critique_request),
                "c": r.critique,
            }
            if r.revision is not None:
                entry["rq"] = texts(r.revision_request)
                entry["rv"] = r.revision
            if kind == "revised" and record.status == "ok":
                sim = round(similarity(answer, r.revision or ""), 3)
                entry["sim"] = sim
                change.setdefault(r.index, []).append(sim)
                answer = r.revision or ""
            rounds.append(entry)
        if use == "sft":
            chosen_round = 0
        elif not use.startswith("pref"):
            chosen_round = _final_round(record)
        chosen_pos = positions.get(chosen_round, -1) if chosen_round else -1
        item: dict[str, Any] = {
            "id": record.id,
            "s": record.status,
            "v": verdict_label,
            "c": chosen_pos,
            "p": _messages(record.prompt),
            "a": record.initial_response,
            "r": rounds,
        }
        if record.initial_finish_reason != "stop":
            item["af"] = record.initial_finish_reason
        if record.error:
            item["e"] = f"{record.error.get('kind', 'error')}: {record.error.get('message', '')}"
        if record.id in label_by_id:
            item.update(_label_entry(label_by_id[record.id], names))
        if record.status == "ok":
            chosen = rounds[chosen_pos]["rv"] if chosen_pos >= 0 else record.initial_response
            lengths["first"].append(_words(record.initial_response))
            lengths["chosen"].append(_words(chosen))
        viewer_records.append(item)
    return viewer_records, lengths, change


def _label_only(
    labels: list[dict[str, Any]], record_ids: set[str], names: _Table
) -> list[dict[str, Any]]:
    """The viewer's entry of each label whose pair is not one of the page's records."""
    label_only = []
    for label in labels:
        if str(label.get("id")) in record_ids:
            continue
        entry = {
            "id": str(label.get("id", "")),
            "s": str(label.get("status", "ok")),
            "p": _messages(label.get("prompt")),
            "A": str(label.get("response_a", "") or ""),
            "B": str(label.get("response_b", "") or ""),
            **_label_entry(label, names),
        }
        entry["v"] = _label_verdict(label)
        if label.get("chosen_round") is not None:
            entry["rev"] = 1  # B is the revision
        label_only.append(entry)
    return label_only


def build_report_data(
    records: list[Record],
    manifest: dict[str, Any] | None = None,
    *,
    calls: Iterable[dict[str, Any]] = (),
    labels: list[dict[str, Any]] | None = None,
    constitution_text: str | None = None,
    name: str = "",
    filters: FilterConfig | None = None,
    ledger: Ledger | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data.

    `summary` and `plots` are drawn by Python; `viewer` is embedded for the page's script.
    Tokens, calls and cost are the run's `ledger` (`cai.ledger.read_ledger`) when given.
    """
    manifest = manifest or {}
    config = filters or FilterConfig()
    labels = labels or []
    # A generate run's labels (its own, or a label run of it) judge each principle's revisions.
    stats = compute_stats(
        records, manifest, config, ledger=ledger, labels=labels if records and labels else None
    )
    verdicts = _verdicts(records, config)
    names, texts = _Table(), _Table()
    viewer_records, lengths, change = _viewer_records(records, verdicts, labels, names, texts)
    label_only = _label_only(labels, {r.id for r in records}, names)

    calls_data = _call_stats(records, calls, [] if records else labels)
    calls_data["unit"] = "records" if records or not labels else "pairs"
    cfg = manifest.get("config") or {}
    constitution = manifest.get("constitution") or {}
    first = records[0] if records else None
    starts = [
        (s, t)
        for s, t, _ in _timings(records, [] if records else labels)
        if _number(s) and _number(t)
    ]
    wall = max(s + t for s, t in starts) - min(s for s, _ in starts) if starts else None
    sampling = {
        k: cfg[k] for k in ("temperature", "top_p", "max_tokens", "rounds", "seed") if k in cfg
    } or (dict(first.sampling) if first else {})
    # As the provider was sent them (a label run's votes are sent their own few tokens, not
    # the run's --max-tokens); a setting the model takes none of says so.
    sent_sampling = cfg.get("sampling_sent") or {}
    sampling.update(sent_sampling.get("sent") or {})
    not_sent = sent_sampling.get("not_sent") or {}
    sampling.update({k: f"not sent ({why})" for k, why in not_sent.items() if k in sampling})
    summary = {
        "name": name,
        # A label run's page leads with its pairs and votes, not a generate run's records.
        "kind": "label" if labels and not records else "generate",
        "status": manifest.get("status"),
        "created": manifest.get("created"),
        "provider": cfg.get("provider") or (first.provider if first else None),
        "model": cfg.get("model") or (first.model if first else None),
        "sampling": sampling,
        "constitution": {
            "name": constitution.get("name") or (first.constitution.get("name") if first else None),
            "sha256": constitution.get("sha256")
            or (first.constitution.get("sha256") if first else None),
            "text": constitution_text,
        },
        "stats": stats,
        "chain_seconds": round(sum(t for _, t in starts), 1),
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "similarity_threshold": config.similarity,
    }
    plots = {
        "principles": stats["principles"],
        "lengths": lengths,
        "change": {str(k): v for k, v in sorted(change.items())},
        "calls": calls_data,
        "call_quantiles": _quantiles(calls_data["seconds_per_call"]),
        "failures": {**_failures(records), **_label_failures(labels)},
    }
    if labels:
        plots["labels"] = _label_data(labels)
        summary["kind_note"] = _label_run_note(labels) if not records else None
    viewer = {
        "mode": "records" if records else "labels",
        "principles": names.items,
        "texts": texts.items,
        "records": viewer_records or label_only,
        "page_size": 50,
    }
    return {"summary": summary, "plots": plots, "viewer": viewer}


# -- plots ----------------------------------------------------------------------------------

_COLORS = {"revised": "#2a9d8f", "no_change": "#adb5bd", "problem": "#e76f51"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _svg(fig: Any) -> str:
    import io

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays text: small, and searchable
            "svg.hashsalt": "cai-report",  # the same run gives the same file
            "text.parse_math": False,  # a principle named "$5" is not TeX
            "font.size": 9,
            "font.family": "sans-serif",
        }
    ):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    # The file's XML prologue and doctype have no place inside an HTML page.
    return text[text.index("<svg") :]


def _principles_plot(principles: dict[str, dict[str, int]]) -> Any:
    names = list(principles)[:30]
    fig = _figure(7, max(1.6, 0.28 * len(names) + 0.9))
    ax = fig.add_subplot()
    left = [0] * len(names)
    ys = list(range(len(names)))[::-1]
    for key, label in (("revised", "revised"), ("no_change", "no change"), ("problem", "problem")):
        widths = [principles[n][key] for n in names]
        ax.barh(ys, widths, left=left, color=_COLORS[key], label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(ys, [n if len(n) <= 40 else n[:39] + "…" for n in names])
    ax.set_xlabel("rounds")
    fig.legend(loc="outside upper right", frameon=False, ncols=3)
    fig.suptitle("Principles drawn, and what each led to", x=0.01, ha="left")
    return fig


def _lengths_plot(lengths: dict[str, list[int]]) -> Any:
    fig = _figure(7, 2.6)
    ax = fig.add_subplot()
    hi = max([*lengths["first"], *lengths["chosen"], 1])
    bins = [hi * i / 30 for i in range(31)]
    ax.hist(lengths["first"], bins=bins, alpha=0.6, color="#e76f51", label="first answer")
    ax.hist(lengths["chosen"], bins=bins, alpha=0.6, color="#2a9d8f", label="chosen answer")
    ax.set_xlabel("words")
    ax.set_ylabel("records")
    ax.legend(frameon=False)
    ax.set_title("Length of the first and the chosen answers", loc="left")
    return fig


def _change_plot(change: dict[str, list[float]]) -> Any:
    fig = _figure(7, 2.6)
    ax = fig.add_subplot()
    bins = [i / 20 for i in range(21)]
    for index, sims in change.items():
        ax.hist(sims, bins=bins, histtype="step", linewidth=1.5, label=f"round {index}")
    ax.set_xlabel("word-level similarity to the answer before (1 = unchanged)")
    ax.set_ylabel("rounds")
    ax.set_xlim(0, 1)
    ax.legend(frameon=False, loc="upper left")
    ax.set_title("How much each revision changed the answer", loc="left")
    return fig


def _calls_plot(calls: dict[str, Any]) -> Any:
    fig = _figure(7, max(2.6, 0.3 * 2 * len(calls["tokens"]) + 1.0))
    left, right = fig.subplots(1, 2)
    seconds = calls["seconds_per_call"]
    if seconds:
        left.hist(seconds, bins=30, color="#457b9d")
    left.locator_params(axis="x", nbins=5)  # a narrow spread would crowd its tick labels
    left.set_xlabel("seconds per call (chain time / its calls)")
    left.set_ylabel(calls.get("unit", "records"))
    left.set_title("Latency", loc="left")
    tokens = calls["tokens"]
    # In the order a chain makes its calls; a vote's input is the pair, its output a letter.
    kinds = [k for k in STEP_NAMES if k in tokens] + sorted(set(tokens) - set(STEP_NAMES))
    if kinds:
        rows = [
            (f"{STEP_NAMES.get(k, k)} {io}", tokens[k][io]) for k in kinds for io in ("in", "out")
        ]
        right.boxplot(
            [data for _, data in rows][::-1],
            tick_labels=[name for name, _ in rows][::-1],
            orientation="horizontal",
            showfliers=False,
        )
    right.set_xlabel("tokens per call (in: prompt, out: reply)")
    right.set_title("Tokens per call, by step", loc="left")
    return fig


def _failures_plot(failures: dict[str, int]) -> Any:
    names = list(failures)[:20]
    fig = _figure(7, max(1.4, 0.28 * len(names) + 0.8))
    ax = fig.add_subplot()
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, [failures[n] for n in names], color=_COLORS["problem"])
    ax.set_yticks(ys, names)
    ax.set_xlabel("count")
    ax.set_title("Failures by kind", loc="left")
    return fig


def _labels_plot(labels: dict[str, Any]) -> Any:
    fig = _figure(7, 2.6)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    bins = [i / 20 for i in range(21)]
    left.hist(labels["p_a"], bins=bins, color="#457b9d")
    left.axvline(0.5, color="black", linewidth=0.8)
    left.set_xlabel(
        "p_a (P that the first answer beats the revision)"
        if labels.get("revision_pairs")
        else "p_a (probability that response A is better)"
    )
    left.set_ylabel("pairs")
    left.set_title("Soft labels", loc="left")
    shares, names = [], []
    if labels["decided_votes"]:
        shares.append(labels["first_preferred"] / labels["decided_votes"])
        names.append("decided votes for the\noption shown first")
    if labels["consistency_known"]:
        shares.append(labels["consistent"] / labels["consistency_known"])
        names.append("pairs consistent\nin both orders")
    if shares:
        right.barh(range(len(shares))[::-1], shares, color=["#e9c46a", "#2a9d8f"][: len(shares)])
        right.set_yticks(range(len(shares))[::-1], names)
        right.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
    right.set_xlim(0, 1)
    right.set_title("Position bias and order", loc="left")
    return fig


def render_plots(plots: dict[str, Any]) -> dict[str, str]:
    """Each plot as an inline SVG element (text kept as text), by name; empty plots are left out."""
    figures: dict[str, Any] = {}
    if plots["principles"]:
        figures["principles"] = _principles_plot(plots["principles"])
    if plots["lengths"]["first"]:
        figures["lengths"] = _lengths_plot(plots["lengths"])
    if plots["change"]:
        figures["change"] = _change_plot(plots["change"])
    if plots["calls"]["seconds_per_call"] or plots["calls"]["tokens"]:
        figures["calls"] = _calls_plot(plots["calls"])
    if plots["failures"]:
        figures["failures"] = _failures_plot(plots["failures"])
    if plots.get("labels") and plots["labels"]["pairs"]:
        figures["labels"] = _labels_plot(plots["labels"])
    return {name: _svg(fig) for name, fig in figures.items()}


# -- HTML -----------------------------------------------------------------------------------


def _script_json(data: Any) -> str:
    """JSON that cannot end its <script> block or open a comment: <, > and & are escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda part, whole: f"{part / whole:.0%}" if whole else "-"
    env.filters["num"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    return env


def render_report(data: dict[str, Any], svgs: dict[str, str] | None = None) -> str:
    """The report page: `data` from `build_report_data`, plots from `render_plots`."""
    import markupsafe

    if svgs is None:
        svgs = render_plots(data["plots"])
    script = (_TEMPLATES / "report.js").read_text(encoding="utf-8")
    style = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
    env = _environment()
    from cai.filters import FILTERS
    from cai.pricing import format_cost

    stats = data["summary"]["stats"]
    cost = stats.get("cost_usd")
    html = env.get_template("report.html.j2").render(
        s=data["summary"],
        stats=stats,
        plots=data["plots"],
        labels=data["plots"].get("labels"),
        cost=format_cost(cost) if isinstance(cost, int | float) else "unknown",
        # The ledger's cost by mode and by step, after its first line (the tokens).
        cost_lines=format_ledger(stats["ledger"])[1:] if stats.get("ledger") else [],
        filters=FILTERS,
        # matplotlib escapes the text it writes into its SVG.
        svgs={k: markupsafe.Markup(v) for k, v in svgs.items()},
        viewer_json=markupsafe.Markup(_script_json(data["viewer"])),
        script=markupsafe.Markup(script),
        style=markupsafe.Markup(style),
        script_hash=_csp_hash(script),
        records=len(data["viewer"]["records"]),
    )
    return html


# -- files ----------------------------------------------------------------------------------


def _calls(path: Path) -> Iterable[dict[str, Any]]:
    for _, _, data in record_lines(path):
        data.pop("text", None)  # only the step and its usage are plotted
        yield data


def _load(run_dir: Path) -> tuple[dict[str, Any], list[Record], list[dict[str, Any]]]:
    """The run's manifest, records and labels (one line per pair, as `cai stats` reads them)."""
    from cai import feedback

    labels = feedback.read_labels(run_dir) if feedback.is_label_run(run_dir) else []
    if (run_dir / RECORDS_FILE).exists():
        manifest, records = load_run(run_dir)
        return manifest.to_dict(), records, labels
    if not feedback.is_label_run(run_dir):
        raise ConfigError(
            f"{run_dir}: neither {RECORDS_FILE} nor {LABELS_FILE} here; pass a directory "
            "made by cai generate or cai label"
        )
    manifest = read_manifest(run_dir)
    return (manifest.to_dict() if manifest is not None else {}), [], labels


def write_report(
    run_dir: str | Path, out: str | Path | None = None, label_run: str | Path | None = None
) -> Path:
    """Write the report of the run in `run_dir` to `out` (default RUN_DIR/report.html).

    A generate run's report shows the labels of `label_run`, else of a label run of it found
    beside it (`find_label_run`), if any: in each principle's figures and beside each pair.

    The file is written whole or not at all; an existing file is replaced only if it is
    a report (so a command never overwrites a file it did not write).
    """
    from cai.rundir import check_out_path, find_constitution_text, write_atomic

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; pass --out with a file name ending in .html")
    # Never a run's own file (RUN/labels.jsonl would make the run a label run of HTML).
    check_out_path(out, folder=False)
    if out.exists() and not _is_report(out):
        raise ConfigError(f"{out} exists and is not a cai report; pass --out with a new file name")
    from cai.redteam import is_prompts_run

    if is_prompts_run(run_dir):
        from cai.redteam import prompts_stats, read_prompts
        from cai.report.prompts import render_prompts_report

        page = render_prompts_report(
            prompts_stats(run_dir), read_prompts(run_dir), run_dir.resolve().name
        )
        write_atomic(out, page.encode("utf-8"))
        return out
    manifest, records, labels = _load(run_dir)
    if label_run is not None and not records:
        raise ConfigError(f"{run_dir} holds no records; --labels goes with a generate run")
    if records and (label_run is not None or not labels):
        from cai.effectiveness import find_label_run
        from cai.feedback import read_labels

        label_dir = Path(label_run) if label_run is not None else find_label_run(run_dir)
        labels = read_labels(label_dir) if label_dir is not None else labels
    # A label run has the constitution copied beside it too.
    text, _ = find_constitution_text(run_dir, manifest, records)
    data = build_report_data(
        records,
        manifest,
        calls=_calls(run_dir / CALLS_FILE),
        labels=labels,
        constitution_text=text,
        name=run_dir.resolve().name,
        # The run's constitution, so the few-shot copy filter judges as `cai export` does.
        filters=for_run(FilterConfig(), run_dir, manifest, records),
        ledger=read_ledger(run_dir, manifest),
    )
    html = render_report(data)
    write_atomic(out, html.encode("utf-8"))
    return out


_MARK = b'<meta name="generator" content="cai report">'


def _is_report(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return _MARK in f.read(4096)
    except OSError:
        return False
