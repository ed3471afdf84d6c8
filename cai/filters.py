"""Quality filters: which records make training data, and which revision is the chosen answer.

Each record is judged on its own (`judge_record`), then duplicates are removed across records
(`apply_filters`). A verdict sends a record to the preference data (a chosen revision that
differs from the initial answer), to SFT only (every critique found nothing to change), or
drops it and names the filter that did.

The chosen answer is the last revision that passes the checks, not blindly the last one: when
the final round's revision is meta-text or an echo of its critique, an earlier good revision is
still a better answer than the initial one, so it is used instead and the fallback is counted.
Revisions the pipeline itself rejected (cut off, refused, empty) are never used.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from cai.errors import ConfigError
from cai.prompts import NO_CHANGE_MARKER
from cai.records import Record, Round

__all__ = [
    "ECHO_THRESHOLD",
    "FILTERS",
    "SIMILARITY_THRESHOLD",
    "FilterConfig",
    "FilterResult",
    "Verdict",
    "apply_filters",
    "echoes",
    "is_meta_text",
    "judge_record",
    "normalize_text",
    "prompt_key",
    "similar",
    "similarity",
]

# Word-level similarity at or above which a revision counts as the initial answer unchanged.
SIMILARITY_THRESHOLD = 0.95
# Word-level similarity at or above which a revision is an echo of its critique or request.
ECHO_THRESHOLD = 0.8

# Filter name -> (what it removes, the export flag that turns it off). "failed" has no flag:
# a failed record holds no answer to keep.
FILTERS: dict[str, tuple[str, str | None]] = {
    "failed": (
        "records never answered: generation failed (provider error) or the prompt was skipped "
        "(too long)",
        None,
    ),
    "no_revision": (
        "records with no usable revision: every critique or revision was cut off, refused or empty",
        None,
    ),
    "truncated": (
        "records whose initial answer was cut off at max_tokens or stopped by the provider "
        "(refusal, content filter)",
        "--keep-truncated",
    ),
    "empty": ("records whose initial answer has no text", "--keep-empty"),
    "meta": (
        "revisions that are meta-text instead of an answer ('Here is a revised response', "
        "'Revision:', 'Sure, here's', an echo of the critique or of the request)",
        "--keep-meta",
    ),
    "unchanged": (
        "preference pairs whose chosen answer is identical or nearly identical to the rejected "
        "one (word similarity at or above the threshold): no preference signal",
        "--keep-unchanged",
    ),
    "duplicate": (
        "records whose prompt repeats another kept record's (ignoring case, spacing and "
        "punctuation); the one first in the prompts file stays",
        "--keep-duplicates",
    ),
}

_META_START = re.compile(
    r"""^(?:
        (?:sure|certainly|of\ course|okay|ok|absolutely)\b[\s,!.:-]*
            (?:here(?:'s|\ is|\ are)|i(?:'ve|\ have)|below)
      | here(?:'s|\ is|\ are)\ (?:the|a|an|my|your)\ (?:\w+\ )?
            (?:revised|rewritten|updated|improved|corrected|edited|new)\b
      | (?:revised|rewritten|updated|improved|corrected|new)\ (?:response|answer|version)\b
      | (?:revision|revised|response|answer|critique|rewrite|rewritten)\s*:
      | i(?:'ve|\ have)\ (?:revised|rewritten|updated|edited)\b
      | (?:the|this)\ (?:revised|rewritten)\ (?:response|answer|version)\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# Talk about the critique or the request is about the task, not an answer to the user.
_META_ANYWHERE = re.compile(
    r"\b(?:the|this|your|my)\ (?:critique|revision\ request|critique\ request)\b"
    + "|"
    + re.escape(NO_CHANGE_MARKER),
    re.IGNORECASE,
)
_LEADING_NOISE = re.compile(r"^[\s\"'*#>`_-]+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class FilterConfig:
    """Which filters are on (all by default) and the similarity threshold for `unchanged`."""

    truncated: bool = True
    empty: bool = True
    meta: bool = True
    unchanged: bool = True
    duplicate: bool = True
    similarity: float = SIMILARITY_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 < self.similarity <= 1:
            raise ConfigError(f"similarity threshold must be in (0, 1], got {self.similarity}")


@dataclass(frozen=True)
class Verdict:
    """Where one record goes: "pref" (a preference pair, or SFT), "sft" (SFT only) or "drop"."""

    record: Record
    use: str
    response: str = ""  # the chosen answer ("pref") or the SFT answer ("sft")
    chosen_round: int = 0  # the round the response comes from; 0 is the initial answer
    reason: str | None = None  # the filter that dropped the record
    fell_back: bool = False  # chosen is an earlier revision because later ones failed a check


@dataclass
class FilterResult:
    """The records kept, in file order, and how many each filter removed."""

    kept: list[Verdict] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)
    sft_only: int = 0
    fell_back: int = 0


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))


def normalize_text(text: str) -> str:
    """Lowercase words only: case, spacing and punctuation do not make two texts differ.

    Apostrophes go first, so "neighbor's" and "neighbors" are one word.
    """
    return " ".join(_words(text))


# The same texts come up again and again (a record's first answer against each revision, the
# requests of every round), and splitting them into words is most of a comparison's cost.
_cached_words = functools.lru_cache(maxsize=4096)(lambda text: tuple(_words(text)))


def similarity(a: str, b: str) -> float:
    """Word-level similarity of two texts in [0, 1] (difflib ratio over normalized words)."""
    wa, wb = _cached_words(a), _cached_words(b)
    if not (wa or wb):
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def similar(a: str, b: str, threshold: float) -> bool:
    """`similarity(a, b) >= threshold`, settled by cheap upper bounds where they can."""
    wa, wb = _cached_words(a), _cached_words(b)
    if not (wa or wb):
        return True
    # The ratio is at most 2 * min(len) / (len + len): texts of unlike lengths are unlike.
    if 2 * min(len(wa), len(wb)) < threshold * (len(wa) + len(wb)):
        return False
    # Nor can it beat the share of words the two have in common, in any order.
    if 2 * sum((Counter(wa) & Counter(wb)).values()) < threshold * (len(wa) + len(wb)):
        return False
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio() >= threshold


def echoes(revision: str, round_: Round) -> bool:
    """True when the revision repeats its critique or one of the requests instead of answering."""
    sources = [round_.critique, round_.critique_request, round_.revision_request or ""]
    return any(s.strip() and similar(revision, s, ECHO_THRESHOLD) for s in sources)


def is_meta_text(revision: str, round_: Round | None = None) -> bool:
    """True when a revision talks about revising (or echoes the critique) instead of answering."""
    text = _LEADING_NOISE.sub("", revision)
    if _META_START.match(text) or _META_ANYWHERE.search(text):
        return True
    return round_ is not None and echoes(revision, round_)


def prompt_key(messages: list[dict[str, str]]) -> str:
    """The prompt's identity for duplicate removal and for splitting: normalized turns."""
    return json.dumps([[m["role"], normalize_text(m["content"])] for m in messages])


def _cut_off(finish_reason: str) -> bool:
    return finish_reason not in ("stop", "empty")


def _revision_reason(round_: Round, config: FilterConfig) -> str | None:
    """Why this round's revision cannot be the chosen answer, or None when it can."""
    text = round_.revision or ""
    if round_.problem is not None or not text.strip():
        return "no_revision"
    if config.meta and is_meta_text(text, round_):
        return "meta"
    return None


def judge_record(record: Record, config: FilterConfig = FilterConfig()) -> Verdict:
    """Where one record goes, by every filter but `duplicate` (which needs the other records)."""
    if record.status != "ok":
        return Verdict(record, "drop", reason="failed")
    initial = record.initial_response
    if config.empty and not initial.strip():
        return Verdict(record, "drop", reason="empty")
    if config.truncated and _cut_off(record.initial_finish_reason):
        return Verdict(record, "drop", reason="truncated")
    revised = [r for r in record.rounds if r.revision is not None]
    if not revised and all(r.skipped and r.problem is None for r in record.rounds):
        # Every critique found nothing to change: a vetted answer, but no pair to prefer.
        return Verdict(record, "sft", response=initial)
    reasons = [_revision_reason(r, config) for r in revised]
    good = [r for r, why in zip(revised, reasons, strict=True) if why is None]
    if not good:
        # Blame the filter that could be turned off, if one took part.
        return Verdict(record, "drop", reason="meta" if "meta" in reasons else "no_revision")
    chosen = good[-1]
    text = chosen.revision or ""
    if config.unchanged and similar(text, initial, config.similarity):
        return Verdict(record, "drop", reason="unchanged")
    return Verdict(
        record,
        "pref",
        response=text,
        chosen_round=chosen.index,
        fell_back=chosen is not revised[-1],
    )


def _rank(record: Record) -> tuple[float, str]:
    return (record.source_line if record.source_line is not None else math.inf, record.id)


def apply_filters(
    records: Iterable[Record],
    config: FilterConfig = FilterConfig(),
) -> FilterResult:
    """Judge every record, then drop repeated prompts.

    Of records with the same prompt, the one read first from the prompts file is kept (then the
    lowest id), not the first in records.jsonl, whose order depends on which chain ended first.
    """
    result = FilterResult()
    judged: list[tuple[str, Verdict]] = []
    winners: dict[str, tuple[float, str]] = {}
    for record in records:
        verdict = judge_record(record, config)
        if verdict.use == "drop":
            result.removed[verdict.reason or "unknown"] += 1
            continue
        key = prompt_key(record.prompt)
        winners[key] = min(winners.get(key, _rank(record)), _rank(record))
        judged.append((key, verdict))
    taken: set[str] = set()
    for key, verdict in judged:
        if config.duplicate and (key in taken or _rank(verdict.record) != winners[key]):
            result.removed["duplicate"] += 1
            continue
        taken.add(key)
        result.kept.append(verdict)
        result.sft_only += verdict.use == "sft"
        result.fell_back += verdict.fell_back
    return result
