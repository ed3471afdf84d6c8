"""`cai compare`: runs made on the same prompts, side by side, and a judge between them.

The runs are matched by prompt id (a hash of the prompt's content, so two runs of one prompts
file agree on it); only the prompts every run holds are compared, and how many each run holds
beyond them is said. Each run's figures come from the same code as `cai stats`
(`compute_stats`) and `cai export` (`judge_record`), over the shared records only.

A run's final answer is the answer its chain ended with, as export would train on it: the
revision export chooses, or the first answer when no revision survived the filters.

The judge is a label run (`cai.feedback.run_labels`): the feedback model compares the first
run's final answer (response A) with each other run's (response B) for every shared prompt,
with the votes, both orders, journal, resume, batch and cost limits of `cai label`. A pair's
id holds a hash of both answers, so a rerun after a run changed judges only the new answers,
and two runs with the same answer to a prompt share one judgement. Identical answers are a
tie without a call. docs/writing-a-constitution.md shows the loop this serves.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.effectiveness import find_label_run
from cai.errors import ConfigError
from cai.feedback import PairItem, p_a_of, read_labels
from cai.filters import FilterConfig, Verdict, for_run, judge_record, similarity
from cai.ledger import read_ledger
from cai.records import Record
from cai.rundir import LABELS_FILE, Manifest, load_run, safe_name
from cai.stats import compute_stats

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "RunSide",
    "compare_runs",
    "default_judge_dir",
    "format_comparison",
    "judge_info",
    "judge_items",
    "judge_pairs",
    "load_runs",
    "shared_ids",
    "word_diff",
]

BOOTSTRAP_SAMPLES = 2000
# Why a prompt has no judgement: a run holds no answer to it, or the judge has not (yet)
# labelled its pair, or every vote failed.
_NO_ANSWER = "no_answer"


@dataclass
class RunSide:
    """One run as compare reads it: its records by prompt id and the filters export would use."""

    dir: Path
    name: str
    manifest: Manifest
    records: dict[str, Record]
    filters: FilterConfig
    _verdicts: dict[str, Verdict] = field(default_factory=dict, repr=False)

    def verdict(self, record_id: str) -> Verdict:
        if record_id not in self._verdicts:
            self._verdicts[record_id] = judge_record(self.records[record_id], self.filters)
        return self._verdicts[record_id]

    def final_answer(self, record_id: str) -> str | None:
        """The answer the chain ended with: export's chosen revision, else the first answer;
        None when the record has no answer (failed, or skipped as too long)."""
        record = self.records.get(record_id)
        if record is None or record.status != "ok":
            return None
        verdict = self.verdict(record_id)
        return verdict.response if verdict.use == "pref" else record.initial_response

    @property
    def constitution_name(self) -> str | None:
        return self.manifest.constitution.get("name")


def _names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: each directory's name, or more of its path where two share one."""
    names = [p.name or str(p) for p in paths]
    for depth in range(2, 6):
        if len(set(names)) == len(names):
            break
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
    return names


def load_runs(paths: Sequence[str | Path], filters: FilterConfig | None = None) -> list[RunSide]:
    """The runs to compare, each with its own constitution's filters (`cai export`'s, default
    all on); a one-line `ConfigError` when there are fewer than two, one is given twice, or
    one is not a generate run."""
    dirs = [Path(p) for p in paths]
    if len(dirs) < 2:
        raise ConfigError("cai compare needs at least two run directories")
    seen: dict[Path, Path] = {}
    for path in dirs:
        if path.resolve() in seen:
            raise ConfigError(f"{path} is given twice; compare distinct runs")
        seen[path.resolve()] = path
        if (path / LABELS_FILE).is_file() and not (path / "records.jsonl").is_file():
            raise ConfigError(
                f"{path} is a cai label run; cai compare takes runs made by cai generate"
            )
    runs = []
    for path, name in zip(dirs, _names(dirs), strict=True):
        manifest, records = load_run(path)
        if manifest.cai_version and manifest.kind != "generate":
            raise ConfigError(
                f"{path} is a cai {manifest.kind} run; cai compare takes runs made by cai generate"
            )
        by_id = {record.id: record for record in records}
        config = for_run(filters or FilterConfig(), path, manifest, records)
        runs.append(RunSide(path, name, manifest, by_id, config))
    if not shared_ids(runs):
        held = ", ".join(f"{run.name} {len(run.records)}" for run in runs)
        raise ConfigError(
            f"no prompt is in every run (records: {held}); compare runs made from the same "
            "prompts (records are matched by prompt id, a hash of the prompt's text)"
        )
    return runs


def _order(record: Record) -> tuple[float, str]:
    return (record.source_line if record.source_line is not None else math.inf, record.id)


def shared_ids(runs: Sequence[RunSide]) -> list[str]:
    """The prompt ids every run holds, in the first run's prompts-file order."""
    common = set(runs[0].records).intersection(*(run.records for run in runs[1:]))
    return sorted(common, key=lambda i: _order(runs[0].records[i]))


# -- the judge's pairs -----------------------------------------------------------------------


@dataclass(frozen=True)
class JudgePair:
    """One shared prompt of one run against the first: the item judging it, if any."""

    run: int  # index of the run compared with the first
    prompt_id: str
    first: str | None
    other: str | None
    item_id: str | None  # None: no call is needed (identical answers) or possible (no answer)
    why: str | None = None  # "identical" or "no_answer" when there is no item


def pair_item_id(prompt_id: str, first: str, other: str) -> str:
    """The judge's id of a pair: the prompt's id and a hash of both answers, in order.

    Letters, digits and '-' only, as a batch request's custom_id must be (cai.batch), and no
    ':', which would split it (`feedback.unit_of`)."""
    digest = hashlib.sha256(f"{first}\x1f{other}".encode()).hexdigest()[:12]
    return f"{prompt_id}-{digest}"


def judge_pairs(runs: Sequence[RunSide], ids: Sequence[str]) -> list[JudgePair]:
    """Every (other run, shared prompt) pair, and the judge item each needs."""
    pairs = []
    for k, run in enumerate(runs[1:], 1):
        for prompt_id in ids:
            first, other = runs[0].final_answer(prompt_id), run.final_answer(prompt_id)
            if first is None or other is None:
                pairs.append(JudgePair(k, prompt_id, first, other, None, _NO_ANSWER))
            elif first == other:
                pairs.append(JudgePair(k, prompt_id, first, other, None, "identical"))
            else:
                item = pair_item_id(prompt_id, first, other)
                pairs.append(JudgePair(k, prompt_id, first, other, item))
    return pairs


def judge_items(runs: Sequence[RunSide], pairs: Sequence[JudgePair]) -> list[PairItem]:
    """The label items of `pairs` (one per distinct pair of answers), for `run_labels`."""
    items: dict[str, PairItem] = {}
    for pair in pairs:
        if pair.item_id is None or pair.item_id in items:
            continue
        record = runs[0].records[pair.prompt_id]
        items[pair.item_id] = PairItem(
            pair.item_id,
            list(record.prompt),
            [pair.first or "", pair.other or ""],
            record.source_line,
        )
    return list(items.values())


def default_judge_dir(paths: Sequence[str | Path]) -> Path:
    """Beside the first run, named after the runs: `<first>-vs-<second>[-<third>...]`."""
    first = Path(paths[0])
    others = "-".join(safe_name(Path(p).resolve().name) for p in paths[1:])
    name = safe_name(f"{first.resolve().name}-vs-{others}")
    # As the user named the first run (relative stays relative), unless it is "." or "..".
    beside = first.parent if first.name not in ("", ".", "..") else first.resolve().parent
    return beside / name


def judge_info(
    judge_dir: str | Path, manifest: Manifest, labels: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """What the comparison says of its judge run: where, which model, how, and its cost."""
    settings = manifest.settings
    # Every call of the judge run, each priced at its mode (cai.ledger), resumes included.
    ledger = read_ledger(judge_dir, manifest)
    return {
        "dir": str(judge_dir),
        "status": manifest.status,
        "provider": settings.get("provider"),
        "model": settings.get("model"),
        "mode": settings.get("mode"),
        "votes": settings.get("votes"),
        "seed": settings.get("seed"),
        "constitution": settings.get("constitution"),
        "pairs": len(labels),
        "calls": ledger.usage.calls,
        "cost_usd": ledger.cost_usd,
    }


# -- figures -----------------------------------------------------------------------------------


def _lengths(texts: Sequence[str]) -> dict[str, float]:
    words = [len(t.split()) for t in texts]
    if not words:
        return {"mean_words": 0, "median_words": 0, "mean_chars": 0}
    return {
        "mean_words": round(statistics.fmean(words), 1),
        "median_words": statistics.median(words),
        "mean_chars": round(statistics.fmean(len(t) for t in texts), 1),
    }


def _share(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def run_figures(run: RunSide, ids: Sequence[str]) -> dict[str, Any]:
    """A run's figures over the shared records: what `cai stats` says of them, and how far
    its final answers moved from its first answers."""
    records = [run.records[i] for i in ids]
    manifest = run.manifest.to_dict()
    # Priced from the shared records alone: never the whole run's figure from the manifest.
    shared_only = {k: v for k, v in manifest.items() if k not in ("stats", "cost_usd")}
    # Tokens and cost: the journal's calls for these records, each at its own mode.
    ledger = read_ledger(run.dir, run.manifest, ids=set(ids))
    label_dir = find_label_run(run.dir)
    stats = compute_stats(
        records,
        shared_only,
        run.filters,
        ledger=ledger,
        labels=read_labels(label_dir) if label_dir is not None else None,
    )
    ok = [r for r in records if r.status == "ok"]
    finals = [run.final_answer(r.id) or "" for r in ok]
    revised = sum(any(r.state == "revised" for r in record.rounds) for record in ok)
    final_is_revision = sum(run.verdict(r.id).use == "pref" for r in ok)
    sims = [similarity(final, r.initial_response) for final, r in zip(finals, ok, strict=True)]
    # Per principle, labels included: what `cai stats` says of these records.
    effectiveness = stats["effectiveness"]
    return {
        "dir": str(run.dir),
        "name": run.name,
        "constitution": run.constitution_name,
        "provider": run.manifest.config.get("provider"),
        "model": run.manifest.config.get("model"),
        "rounds": run.manifest.settings.get("rounds"),
        "records": len(records),
        "not_shared": len(run.records) - len(ids),
        "status": stats["status"],
        # Records where some round revised the answer, and where export keeps a revision.
        "revision_rate": _share(revised, len(ok)),
        "final_is_revision": _share(final_is_revision, len(ok)),
        "answer_changed": stats["answer_changed"]["share"],
        "rounds_summary": stats["rounds"],
        "filter_drops": stats["export"]["removed"],
        "export_rows": {
            "preference_pairs": stats["export"]["preference_pairs"],
            "sft_only": stats["export"]["sft_only"],
            "kept": stats["export"]["kept"],
        },
        "lengths": {"first": _lengths([r.initial_response for r in ok]), "final": _lengths(finals)},
        "similarity_to_first": round(statistics.fmean(sims), 4) if sims else None,
        "usage": stats["usage"],
        "cost_usd": stats["cost_usd"] if records else 0.0,
        # The run's ledger: every call it paid for, each at its own mode (cai.ledger).
        "cost_usd_all_records": read_ledger(run.dir, run.manifest).cost_usd,
        "principles": effectiveness["principles"],
        "principle_flags": effectiveness["flags"],
    }


def bootstrap_interval(
    scores: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> list[float] | None:
    """The 95% percentile bootstrap interval of the mean of `scores` (resampling prompts)."""
    import numpy as np

    if not scores:
        return None
    values = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    # Chunked, so a run of many prompts needs no samples x prompts matrix at once.
    chunk = max(1, 2_000_000 // len(values))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _win(preference: float) -> float:
    return 1.0 if preference > 0.5 else 0.0 if preference < 0.5 else 0.5


def _vote_preferences(label: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(principle, preference for response B, both orders agree) of each answered vote."""
    by_vote: dict[int, list[dict[str, Any]]] = {}
    for vote in label.get("votes") or ():
        by_vote.setdefault(vote["vote"], []).append(vote)
    result = []
    for votes in by_vote.values():
        prefs = [1.0 - p for p in map(p_a_of, votes) if p is not None]
        if not prefs:
            continue
        agree = len(prefs) == 2 and (prefs[0] - 0.5) * (prefs[1] - 0.5) > 0
        result.append((str(votes[0].get("principle")), statistics.fmean(prefs), agree))
    return result


def _judge_run(
    pairs: Sequence[JudgePair], labels: dict[str, dict[str, Any]], seed: int
) -> dict[str, Any]:
    """One run's figures against the first from the judge's labels."""
    prefs: list[float] = []
    consistent: list[bool] = []
    unjudged: dict[str, int] = {}
    principles: dict[str, list[tuple[float, bool]]] = {}
    per_prompt: dict[str, float] = {}
    for pair in pairs:
        if pair.why == "identical":
            prefs.append(0.5)
            per_prompt[pair.prompt_id] = 0.5
            continue
        label = labels.get(pair.item_id) if pair.item_id else None
        if pair.why == _NO_ANSWER or label is None or label.get("p_a") is None:
            why = pair.why or ("not_judged" if label is None else str(label.get("status")))
            unjudged[why] = unjudged.get(why, 0) + 1
            continue
        preference = 1.0 - float(label["p_a"])
        prefs.append(preference)
        per_prompt[pair.prompt_id] = round(preference, 6)
        consistent.append(bool(label.get("position_consistent")))
        for name, vote_pref, agree in _vote_preferences(label):
            principles.setdefault(name, []).append((vote_pref, agree))
    wins = [_win(p) for p in prefs]
    by_principle = {
        name: {
            "votes": len(votes),
            "win_rate": round(statistics.fmean(_win(p) for p, _ in votes), 4),
            "mean_preference": round(statistics.fmean(p for p, _ in votes), 4),
            "position_consistency": round(statistics.fmean(a for _, a in votes), 4),
        }
        for name, votes in sorted(principles.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    }
    return {
        "judged": len(prefs),
        "identical": sum(p.why == "identical" for p in pairs),
        "unjudged": dict(sorted(unjudged.items())),
        "wins": sum(w == 1.0 for w in wins),
        "ties": sum(w == 0.5 for w in wins),
        "losses": sum(w == 0.0 for w in wins),
        "win_rate": round(statistics.fmean(wins), 4) if wins else None,
        "win_rate_ci": bootstrap_interval(wins, seed=seed),
        "mean_preference": round(statistics.fmean(prefs), 4) if prefs else None,
        "mean_preference_ci": bootstrap_interval(prefs, seed=seed),
        "position_consistency": round(statistics.fmean(consistent), 4) if consistent else None,
        "by_principle": by_principle,
        "preferences": per_prompt,
    }


_JUDGE_KEYS = ("win_rate", "win_rate_ci", "mean_preference", "position_consistency")


def compare_runs(
    runs: Sequence[RunSide],
    *,
    labels: Sequence[dict[str, Any]] | None = None,
    judge: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison as plain JSON-ready data.

    `labels` are the judge run's lines (`feedback.read_labels`), `judge` what to say of it
    (directory, model, votes); without them the runs are compared without a judge. Each run
    after the first carries `win_rate`, `win_rate_ci`, `mean_preference` and
    `position_consistency` against the first (None without a judge), and `judge` the rest.
    """
    ids = shared_ids(runs)
    entries = [run_figures(run, ids) for run in runs]
    pairs = judge_pairs(runs, ids)
    by_id = {str(label["id"]): label for label in labels or ()}
    for k, entry in enumerate(entries):
        entry.update(dict.fromkeys(_JUDGE_KEYS))
        entry["judge"] = None
        if k and labels is not None:
            figures = _judge_run([p for p in pairs if p.run == k], by_id, seed)
            entry["judge"] = figures
            entry.update({key: figures[key] for key in _JUDGE_KEYS})
    shared_principles = set(entries[0]["principles"]).intersection(
        *(e["principles"] for e in entries[1:])
    )
    return {
        "shared": len(ids),
        "not_shared": {e["name"]: e["not_shared"] for e in entries},
        "ids": ids,
        "runs": entries,
        "shared_principles": sorted(shared_principles),
        "judge": judge if labels is not None else None,
    }


# -- text --------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _judge_lines(judge: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """`format_comparison`'s judge section: the judge's model and cost, each later run against
    the first, and by principle."""
    from cai.pricing import format_cost

    lines = [
        "",
        f"Judge: {judge.get('provider')} {judge.get('model')}, {judge.get('votes')} votes "
        f"each in both orders ({judge.get('mode')}); votes in {judge.get('dir')}",
        f"Judge cost: {judge.get('calls', 0)} calls over {judge.get('pairs', 0)} pairs, "
        + (
            "unknown (no price for the model)"
            if judge.get("cost_usd") is None
            else format_cost(judge["cost_usd"])
        ),
    ]
    first = runs[0]["name"]
    jrows = [["", *(f"{run['name']} vs {first}" for run in runs[1:])]]
    others = [run["judge"] for run in runs[1:]]

    def jrow(label: str, value: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *(value(j) for j in others)]

    def interval(j: dict[str, Any]) -> str:
        ci = j["win_rate_ci"]
        return f"{_pct(j['win_rate'])}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")

    def unjudged(j: dict[str, Any]) -> str:
        missing = sum(j["unjudged"].values())
        return f"{j['judged']} ({j['identical']} identical, {missing} not judged)"

    jrows += [
        jrow("judged prompts", unjudged),
        jrow("wins/ties/losses", lambda j: f"{j['wins']}/{j['ties']}/{j['losses']}"),
        jrow("win rate [95% CI]", interval),
        jrow("mean preference", lambda j: _num(j["mean_preference"])),
        jrow("position consistency", lambda j: _pct(j["position_consistency"])),
    ]
    lines += _table(jrows)
    names = sorted({n for j in others for n in j["by_principle"]})
    if names:
        lines += ["", "By principle (win rate, mean preference, votes):"]
        prow = [["PRINCIPLE", *(run["name"] for run in runs[1:])]]
        for name in names:
            cells = []
            for j in others:
                c = j["by_principle"].get(name)
                cells.append(
                    "-"
                    if c is None
                    else f"{_pct(c['win_rate'])} {c['mean_preference']:.2f} n={c['votes']}"
                )
            prow.append([name, *cells])
        lines += _table(prow)
    return lines


def format_comparison(data: dict[str, Any]) -> str:
    """`compare_runs`'s data as the text `cai compare` prints."""
    from cai.pricing import format_cost

    runs = data["runs"]
    not_shared = ", ".join(f"{name} {n}" for name, n in data["not_shared"].items())
    lines = [
        f"Compared on {data['shared']} shared prompts (records not shared: {not_shared})",
        "",
    ]

    def row(label: str, value: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *(value(run) for run in runs)]

    def drops(run: dict[str, Any]) -> str:
        return ", ".join(f"{k} {n}" for k, n in run["filter_drops"].items()) or "none"

    rows = [
        ["", *(run["name"] for run in runs)],
        row("constitution", lambda r: str(r["constitution"] or "-")),
        row("model", lambda r: f"{r['provider'] or '?'} {r['model'] or '?'}"),
        row("rounds", lambda r: _num(r["rounds"])),
        row("records", lambda r: str(r["records"])),
        row("ok", lambda r: str(r["status"].get("ok", 0))),
        row("revision rate", lambda r: _pct(r["revision_rate"])),
        row("final is a revision", lambda r: _pct(r["final_is_revision"])),
        row(
            "export rows (pref/sft)",
            lambda r: "{preference_pairs}/{sft_only}".format(**r["export_rows"]),
        ),
        row("filter drops", drops),
        row("first answer, mean words", lambda r: f"{r['lengths']['first']['mean_words']:.1f}"),
        row("final answer, mean words", lambda r: f"{r['lengths']['final']['mean_words']:.1f}"),
        row("similarity to first", lambda r: _num(r["similarity_to_first"])),
        row(
            "cost",
            lambda r: "unknown" if r["cost_usd"] is None else format_cost(r["cost_usd"]),
        ),
    ]
    lines += _table(rows)
    if data["shared_principles"]:
        lines += [
            "",
            "Per principle (rounds drawn: revised / no change / failed, kept in export; with a "
            "label run of the run, how often the feedback model preferred the revision):",
        ]
        prow = [["PRINCIPLE", *(run["name"] for run in runs)]]
        for name in data["shared_principles"]:
            cells = []
            for run in runs:
                c = run["principles"].get(name) or {}
                wins = c.get("labels") or {}
                cells.append(
                    f"{c.get('drawn', 0)}: {c.get('revised', 0)}/{c.get('no_change', 0)}/"
                    f"{c.get('failed', 0)}, {c.get('kept', 0)} kept"
                    + (
                        f", revision wins {wins['revision_preferred']}/{wins['pairs']}"
                        if wins.get("pairs")
                        else ""
                    )
                )
            prow.append([name, *cells])
        lines += _table(prow)
    # A run of 0 rounds draws no principle: saying so of each would only be noise.
    flags = [
        (run["name"], flag["message"])
        for run in runs
        if run["rounds_summary"]["total"]
        for flag in run["principle_flags"]
    ]
    if flags:
        lines += ["", "Flagged:", *(f"  {name}: {message}" for name, message in flags)]
    judge = data.get("judge")
    if judge is not None:
        lines += _judge_lines(judge, runs)
    return "\n".join(lines)


# -- the page's word diffs -----------------------------------------------------------------------


def word_diff(before: str, after: str) -> list[list[Any]]:
    """`after` against `before` as [op, text] runs of words: op 0 same, 1 added, -1 removed."""
    import difflib
    import re

    # Each word carries the space after it, so spaces alone never match and interleave.
    a, b = re.findall(r"\s+|\S+\s*", before), re.findall(r"\s+|\S+\s*", after)
    ops: list[list[Any]] = []

    def add(op: int, text: str) -> None:
        if not text:
            return
        if ops and ops[-1][0] == op:
            ops[-1][1] += text
        else:
            ops.append([op, text])

    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            add(0, "".join(a[i1:i2]))
        else:
            add(-1, "".join(a[i1:i2]))
            add(1, "".join(b[j1:j2]))
    return ops


def prompt_details(
    runs: Sequence[RunSide], labels: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each shared prompt with every run's final answer, each other run's word diff against
    the first's, and the judge's label of each pair (votes included), for the page's viewer."""
    ids = shared_ids(runs)
    by_id = {str(label["id"]): label for label in labels or ()}
    by_prompt: dict[str, dict[int, JudgePair]] = {}
    for pair in judge_pairs(runs, ids):
        by_prompt.setdefault(pair.prompt_id, {})[pair.run] = pair
    details = []
    for prompt_id in ids:
        record = runs[0].records[prompt_id]
        answers = [run.final_answer(prompt_id) for run in runs]
        judged: list[dict[str, Any] | None] = []
        for k in range(1, len(runs)):
            pair = by_prompt[prompt_id][k]
            label = by_id.get(pair.item_id) if pair.item_id else None
            if pair.why is not None or label is None:
                judged.append({"why": pair.why or "not_judged"} if labels is not None else None)
                continue
            judged.append(
                {
                    "preference": None if label.get("p_a") is None else 1.0 - label["p_a"],
                    "consistent": bool(label.get("position_consistent")),
                    "status": label.get("status"),
                    "votes": [
                        [v.get("vote"), v.get("principle"), v.get("order"), v.get("p_first")]
                        for v in label.get("votes") or ()
                    ],
                }
            )
        details.append(
            {
                "id": prompt_id,
                "prompt": [[m.get("role", ""), m.get("content", "")] for m in record.prompt],
                "answers": answers,
                "sources": [
                    run.verdict(prompt_id).chosen_round
                    if answers[i] is not None and run.verdict(prompt_id).use == "pref"
                    else 0
                    for i, run in enumerate(runs)
                ],
                "diffs": [
                    word_diff(answers[0], answer)
                    if answers[0] is not None and answer is not None
                    else None
                    for answer in answers[1:]
                ],
                "judge": judged,
            }
        )
    return details
