"""Quality filters: which records make training data, and which revision is the chosen answer.

Each record is judged on its own (`judge_record`), then duplicates are removed across records
(`apply_filters`). A verdict sends a record to the preference data (a chosen revision that
differs from the initial answer), to SFT only (every critique found nothing to change), or
drops it and names the filter that did.

The chosen answer is the last revision that passes the checks, not blindly the last one: when
the final round's revision is meta-text or an echo of its critique, an earlier good revision is
still a better answer than the initial one, so it is used instead and the fallback is counted.
Revisions the pipeline itself rejected (cut off, refused, empty) are never used.

Two checks need the run's constitution (`FilterConfig(constitution=...)`, or `for_run` to read
it from a run directory): a revision that copies the constitution's few-shot text or requests
instead of answering is `copied`. Without it, that check has nothing to compare with and passes.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cai.constitution import Constitution, parse_constitution
from cai.errors import CaiError, ConfigError
from cai.prompts import NO_CHANGE_MARKER
from cai.records import Record, Round

__all__ = [
    "COPY_SHARE",
    "ECHO_THRESHOLD",
    "FILTERS",
    "SIMILARITY_THRESHOLD",
    "CopyIndex",
    "FilterConfig",
    "FilterResult",
    "Verdict",
    "apply_filters",
    "echoes",
    "for_run",
    "is_commentary",
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
# Share of a revision's words, in runs of COPY_RUN words or more found in the constitution, at or
# above which the revision is a copy (and the share of one constitution text that a revision may
# hold before it is a copy of that text).
COPY_SHARE = 0.5
COPY_RUN = 6

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
    "commentary": (
        "revisions that talk about the response instead of being one ('The response helps the "
        "user...', '...I will respond with the revised response', 'The request is...'), "
        "anywhere in the text",
        "--keep-commentary",
    ),
    "copied": (
        "revisions that copy, or nearly copy, text of the constitution: a few-shot example's "
        "answer, critique or revision given as the answer to another prompt, or a principle's "
        f"request (half the revision or more in runs of {COPY_RUN}+ words it holds)",
        "--keep-copied",
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
# A response judged in the third person: "the response helps", "this revised answer is".
_RESPONSE_JUDGED = re.compile(
    r"""\b(?:the|this|that|my|its|your)\s+
        (?:(?:revised|original|initial|previous|above|last|first|rewritten|assistant'?s?|ai'?s?|
            model'?s?)\s+)?
        response\s+(?:(?:also|still|itself|clearly|only|really|now)\s+)?
        (?:is|was|are|isn'?t|wasn'?t|does|did|doesn'?t|didn'?t|has|had|hasn'?t|helps|helped|
           contains|provides|includes|offers|gives|fails|seems|appears|uses|lacks|avoids|
           addresses|encourages|promotes|suggests|should|could|would|can|cannot|can'?t|may|
           might|must|will|won'?t|remains|needs|makes|violates|focuses|tries|attempts|explains|
           states|mentions|describes|acknowledges|reads|sounds|sticks|stays|goes|answers|
           refuses|declines|complies|assumes|ignores|misses|reinforces|respects|shows|showed|
           reflects|demonstrates|expresses|feels|points|treats|takes|keeps|becomes|maintains|
           adds|removes|highlights|emphasi[sz]es|supports|recommends|advises|warns|clarifies|
           implies|ensures|allows|enables|follows|meets|matches|aligns|fits|lists|covers|omits|
           finds|brings|gets|comes|puts|creates|presents|delivers|shares|mentioned|stated)\b""",
    re.IGNORECASE | re.VERBOSE,
)
# Words after which "response" is the topic of an answer (an immune response, an HTTP
# response), not the answer itself: then "the response is..." may well be about that topic.
_NOT_A_TOPIC = frozenset(
    [
        "the",
        "this",
        "that",
        "my",
        "its",
        "your",
        "a",
        "an",
        "revised",
        "original",
        "initial",
        "previous",
        "above",
        "last",
        "first",
        "rewritten",
        "new",
        "assistants",
        "assistant",
        "ais",
        "ai",
        "models",
        "model",
    ]
)
_TOPICAL_RESPONSE = re.compile(r"\b(\w+)['\u2019]?s?\s+responses?\b", re.IGNORECASE)
_COMMENTARY_ANYWHERE = re.compile(
    r"\b(?:the|a|my|this|your)\s+(?:revised|rewritten|improved|corrected|updated)\s+"
    r"(?:response|answer|version|reply)\b"
    r"|\bI\ will\ respond\ with\b"
    r"|\bthe\ (?:user|assistant)'?s\ (?:request|question|prompt|message|response|answer)\b",
    re.IGNORECASE,
)
# At the start only: an answer speaks to the user, it does not open by describing the request.
_COMMENTARY_START = re.compile(
    r"^(?:the|this)\s+(?:user|request|question|prompt|assistant)\s+"
    r"(?:is|was|wants|asks|asked|has|had|can|could|may|might|should|seems|appears|needs|"
    r"requests|requested|mentions|describes)\b",
    re.IGNORECASE,
)
_LEADING_NOISE = re.compile(r"^[\s\"'*#>`_-]+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class FilterConfig:
    """Which filters are on (all by default), the similarity threshold for `unchanged`, and the
    run's constitution, whose text `copied` compares revisions with (None: nothing to compare)."""

    truncated: bool = True
    empty: bool = True
    meta: bool = True
    commentary: bool = True
    copied: bool = True
    unchanged: bool = True
    duplicate: bool = True
    similarity: float = SIMILARITY_THRESHOLD
    constitution: Constitution | None = field(default=None, repr=False, compare=False)
    # Derived from `constitution` once per config, not once per record.
    copy_index: CopyIndex | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.similarity <= 1:
            raise ConfigError(f"similarity threshold must be in (0, 1], got {self.similarity}")
        index = CopyIndex.of(self.constitution) if self.constitution is not None else None
        object.__setattr__(self, "copy_index", index)


class CopyIndex:
    """The constitution's texts as runs of words, to find a revision that copies them.

    Every text a model is shown as a model of what to write: the system prompt, each few-shot
    example's turns, critique and revision, and each principle's requests. A revision is a copy
    when half its words or more lie in runs of COPY_RUN words that occur in one of these texts,
    or when it holds half or more of one text's runs. An example's own texts are not counted
    against a record whose prompt is that example's question.
    """

    def __init__(self, texts: Iterable[tuple[str, str | None]]) -> None:
        self.grams: dict[tuple[str, ...], set[int]] = {}
        self.sizes: list[int] = []
        self.questions: list[str | None] = []
        for text, question in texts:
            words = _words(text)
            grams = {tuple(words[i : i + COPY_RUN]) for i in range(len(words) - COPY_RUN + 1)}
            if not grams:
                continue
            for gram in grams:
                self.grams.setdefault(gram, set()).add(len(self.sizes))
            self.sizes.append(len(grams))
            self.questions.append(question)

    @classmethod
    def of(cls, constitution: Constitution) -> CopyIndex:
        texts: list[tuple[str, str | None]] = []
        if constitution.system:
            texts.append((constitution.system, None))
        for principle in constitution.principles:
            texts += [(principle.critique, None), (principle.revision, None)]
        for example in constitution.examples:
            question = next((text for role, text in example.turns if role == "user"), None)
            texts += [(text, question) for _, text in example.turns]
            texts += [(example.critique, question), (example.revision or "", question)]
        return cls(texts)

    def copies(self, text: str, prompt: str = "") -> bool:
        """True when `text` copies, or nearly copies, the constitution (see the class)."""
        words = _cached_words(text)
        if len(words) < COPY_RUN:
            return False
        asked = {
            q for q in set(self.questions) if q and prompt and similar(prompt, q, ECHO_THRESHOLD)
        }
        exempt = {i for i, question in enumerate(self.questions) if question in asked}
        covered = [False] * len(words)
        found: Counter[int] = Counter()
        seen: set[tuple[str, ...]] = set()
        for i in range(len(words) - COPY_RUN + 1):
            gram = words[i : i + COPY_RUN]
            owners = self.grams.get(gram)
            if owners and exempt:
                owners = owners - exempt
            if not owners:
                continue
            covered[i : i + COPY_RUN] = [True] * COPY_RUN
            if gram not in seen:
                seen.add(gram)
                found.update(owners)
        if sum(covered) >= COPY_SHARE * len(words):
            return True
        return any(n >= COPY_SHARE * self.sizes[i] for i, n in found.items())


@dataclass(frozen=True)
class Verdict:
    """Where one record goes: "pref" (a preference pair, or SFT), "sft" (SFT only) or "drop"."""

    record: Record
    use: str
    response: str = ""  # the chosen answer ("pref") or the SFT answer ("sft")
    chosen_round: int = 0  # the round the response comes from; 0 is the initial answer
    reason: str | None = None  # the filter that dropped the record
    fell_back: bool = False  # chosen is an earlier revision because later ones failed a check
    # (round index, filter) of each revision that could not be the chosen answer, so per-round
    # figures (cai.effectiveness) need not judge the revisions again.
    rejected: tuple[tuple[int, str], ...] = ()


@dataclass
class FilterResult:
    """The records kept, in file order, and how many each filter removed."""

    kept: list[Verdict] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)
    # Each record removed, with the filter that removed it ("duplicate" for a repeated prompt).
    dropped: list[Verdict] = field(default_factory=list)
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


def is_commentary(revision: str, prompt: str = "") -> bool:
    """True when a revision talks about "the response" (or the request) instead of being one.

    "The response is..." counts only where nothing else in the revision or the prompt makes a
    response its topic: "your immune response... the response is usually helpful" is an answer.
    """
    text = _LEADING_NOISE.sub("", revision)
    if _COMMENTARY_START.match(text) or _COMMENTARY_ANYWHERE.search(text):
        return True
    if not _RESPONSE_JUDGED.search(text):
        return False
    topical = any(
        m.group(1).lower() not in _NOT_A_TOPIC
        for m in _TOPICAL_RESPONSE.finditer(f"{prompt}\n{text}")
    )
    return not topical and not re.search(r"\bresponses?\b", prompt, re.IGNORECASE)


def prompt_key(messages: list[dict[str, str]]) -> str:
    """The prompt's identity for duplicate removal and for splitting: normalized turns."""
    return json.dumps([[m["role"], normalize_text(m["content"])] for m in messages])


def _cut_off(finish_reason: str) -> bool:
    return finish_reason not in ("stop", "empty")


def _revision_reason(round_: Round, config: FilterConfig, prompt: str) -> str | None:
    """Why this round's revision cannot be the chosen answer, or None when it can."""
    text = round_.revision or ""
    if round_.problem is not None or not text.strip():
        return "no_revision"
    if config.meta and is_meta_text(text, round_):
        return "meta"
    if config.commentary and is_commentary(text, prompt):
        return "commentary"
    index = config.copy_index
    if config.copied and index is not None and index.copies(text, prompt):
        return "copied"
    return None


def _last_user_text(record: Record) -> str:
    return next((m["content"] for m in reversed(record.prompt) if m["role"] == "user"), "")


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
    prompt = _last_user_text(record)
    reasons = [_revision_reason(r, config, prompt) for r in revised]
    good = [r for r, why in zip(revised, reasons, strict=True) if why is None]
    rejected = tuple(
        (r.index, why) for r, why in zip(revised, reasons, strict=True) if why is not None
    )
    if not good:
        # Blame a filter that could be turned off, if one took part: the last round's first.
        for why in reversed(reasons):
            if why != "no_revision":
                return Verdict(record, "drop", reason=why, rejected=rejected)
        return Verdict(record, "drop", reason="no_revision", rejected=rejected)
    chosen = good[-1]
    text = chosen.revision or ""
    if config.unchanged and similar(text, initial, config.similarity):
        return Verdict(record, "drop", reason="unchanged", rejected=rejected)
    return Verdict(
        record,
        "pref",
        response=text,
        chosen_round=chosen.index,
        fell_back=chosen is not revised[-1],
        rejected=rejected,
    )


def for_run(
    config: FilterConfig, run_dir: str | Path, manifest: Any, records: list[Record]
) -> FilterConfig:
    """`config` with the run's constitution, read from the copy in the run directory (or the
    file it was made from, if unchanged), unless `config` has one already or none is found."""
    from cai.rundir import find_constitution_text

    if config.constitution is not None:
        return config
    info = manifest if isinstance(manifest, dict) else manifest.to_dict()
    text, source = find_constitution_text(Path(run_dir), info, records)
    if text is None:
        return config
    try:
        constitution = parse_constitution(text, path=source)
    except CaiError:
        return config
    return replace(config, constitution=constitution)


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
            result.dropped.append(verdict)
            continue
        key = prompt_key(record.prompt)
        winners[key] = min(winners.get(key, _rank(record)), _rank(record))
        judged.append((key, verdict))
    taken: set[str] = set()
    for key, verdict in judged:
        if config.duplicate and (key in taken or _rank(verdict.record) != winners[key]):
            result.removed["duplicate"] += 1
            result.dropped.append(
                Verdict(verdict.record, "drop", reason="duplicate", rejected=verdict.rejected)
            )
            continue
        taken.add(key)
        result.kept.append(verdict)
        result.sft_only += verdict.use == "sft"
        result.fell_back += verdict.fell_back
    return result
