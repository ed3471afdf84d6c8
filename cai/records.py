"""What a run makes of each prompt: a `Record`, with one `Round` per critique and revision.

Plain dataclasses; where they are stored (`records.jsonl` of a run directory) is
`cai.rundir`'s business.
"""

from __future__ import annotations

import re
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

__all__ = [
    "FINISH_REASONS",
    "MAX_COUNT",
    "Record",
    "Round",
    "call_problem",
    "clean_count",
    "clean_text",
    "clean_usage",
    "generation_problem",
    "label_problem",
    "record_problem",
]

# Normalised finish reasons; anything but "stop" means the text is not a usable answer.
FINISH_REASONS = ("stop", "length", "refusal", "content_filter", "empty")

# A token or call count past this is not believed (no call or run comes near): read as 0.
MAX_COUNT = 2**53 - 1


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with each lone surrogate (JSON allows `"\\ud800"`; UTF-8 has no such character)
    replaced by U+FFFD, so it can be written anywhere."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def clean_count(value: Any) -> int:
    """A usage count as read from a server or a file: a whole number from 0 to `MAX_COUNT`,
    else 0 (a string, a negative, NaN, 1e400 or a 400-digit integer is no count at all)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else 0
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_COUNT:
        return int(value)
    return 0


def clean_usage(usage: Any) -> dict[str, int]:
    """A usage object read back, each count cleaned (`clean_count`); {} when it is not one."""
    if not isinstance(usage, dict):
        return {}
    return {str(k): clean_count(v) for k, v in usage.items()}


@dataclass
class Round:
    """One critique-and-revision round, in one of four states (`state`):

    - "revised": the revision is the new answer;
    - "no_change": `skipped` - the critique found nothing to change (NO CHANGES NEEDED);
    - "critique_failed": the critique was cut off, refused or empty, so no revision was
      asked for; `problem` says why;
    - "revision_failed": the revision was cut off, refused or empty; `problem` says why.
    """

    index: int
    principle: str
    critique_request: str
    critique: str
    revision_request: str | None = None
    revision: str | None = None
    skipped: bool = False
    critique_finish_reason: str = "stop"
    revision_finish_reason: str | None = None
    # Why this round's output was not used: "length", "refusal", "content_filter", "empty".
    problem: str | None = None
    critique_failed: bool = False

    def __post_init__(self) -> None:
        if self.skipped and self.problem is not None and not self.critique_failed:
            # The form written before `critique_failed`, when `skipped` also meant a failed
            # critique: read it with today's meaning, whether built here or loaded.
            self.skipped, self.critique_failed = False, True

    @property
    def state(self) -> str:
        if self.critique_failed:
            return "critique_failed"
        if self.skipped:
            return "no_change"
        return "revision_failed" if self.problem is not None else "revised"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Round:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Record:
    """Everything about one prompt's chain, from the first answer to the final revision."""

    id: str
    prompt: list[dict[str, str]]
    status: str = "ok"  # "ok" | "failed" | "skipped" (never sent, e.g. too long)
    initial_response: str = ""
    initial_finish_reason: str = "stop"
    rounds: list[Round] = field(default_factory=list)
    final_response: str = ""
    provider: str = ""
    model: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    constitution: dict[str, str] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    source_line: int | None = None
    # The prompt source's tags of the prompt (`cai.sources.TAG_FIELDS`: a `cai prompts` run's
    # principle, style and kind), carried into export rows as columns.
    tags: dict[str, str] | None = None

    @property
    def principles(self) -> list[str]:
        return [r.principle for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        """What `dataclasses.asdict` gives, made about five times faster for the JSON-like
        values a record holds: one is written for every prompt of a run."""
        data = {
            name: None if name == "rounds" else _copy(getattr(self, name))
            for name in _RECORD_FIELDS
        }
        data["rounds"] = [  # keeps its place among the keys
            {name: getattr(r, name) for name in _ROUND_FIELDS} if type(r) is Round else asdict(r)
            for r in self.rounds
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record a line holds; `ValueError` when it is not of the shape cai writes."""
        problem = record_problem(data)
        if problem is not None:
            raise ValueError(f"not a record: {problem}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["rounds"] = [Round.from_dict(r) for r in known.get("rounds", [])]
        known["usage"] = clean_usage(known.get("usage"))
        return cls(**known)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON-like value (as `asdict` copies a field); others via `deepcopy`."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return asdict(value) if is_dataclass(value) else deepcopy(value)


# Rounds hold only strings, numbers, booleans and None, so their fields need no copy.
_ROUND_FIELDS = tuple(f.name for f in fields(Round))
_RECORD_FIELDS = tuple(f.name for f in fields(Record))


# -- the shape of each run file's lines ----------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wrong(data: dict[str, Any], types: dict[str, Any]) -> str | None:
    """The first field of `data` present with another type than `types` gives, or None."""
    for name, want in types.items():
        if name in data and not isinstance(data[name], want):
            return f"{name} is {type(data[name]).__name__}"
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        return "prompt is not a list of messages"
    return None


_ROUND_TYPES: dict[str, Any] = {
    "index": int,
    "principle": str,
    "critique_request": str,
    "critique": str,
    "revision_request": str | None,
    "revision": str | None,
    "skipped": bool,
    "critique_finish_reason": str,
    "revision_finish_reason": str | None,
    "problem": str | None,
    "critique_failed": bool,
}
_RECORD_TYPES: dict[str, Any] = {
    "status": str,
    "initial_response": str,
    "initial_finish_reason": str,
    "final_response": str,
    "provider": str,
    "model": str,
    "sampling": dict,
    "seed": int,
    "constitution": dict,
    "usage": dict,
    "timings": dict,
    "error": dict | None,
    "source_line": int | None,
}


def record_problem(data: dict[str, Any]) -> str | None:
    """What keeps a `records.jsonl` line from reading back as a `Record`, or None."""
    if not isinstance(data.get("id"), str):
        return "no string id"
    problem = _messages_problem(data.get("prompt")) or _wrong(data, _RECORD_TYPES)
    if problem is not None:
        return problem
    rounds = data.get("rounds", [])
    if not isinstance(rounds, list):
        return f"rounds is {type(rounds).__name__}"
    for r in rounds:
        if not isinstance(r, dict):
            return "a round is not an object"
        if not all(name in r for name in ("index", "principle", "critique_request", "critique")):
            return "a round lacks its index, principle or critique"
        problem = _wrong(r, _ROUND_TYPES)
        if problem is not None:
            return f"a round's {problem}"
    return None


_LABEL_TYPES: dict[str, Any] = {
    "source_id": str,
    "response_a": str,
    "response_b": str,
    "position_consistent": bool,
    "status": str,
    "error": dict | None,
    "mode": str,
    "provider": str,
    "model": str,
    "constitution_sha256": str,
    "chosen_round": int | None,
    "source_line": int | None,
    "usage": dict,
    "timings": dict,
    "votes": list,
}
_VOTE_TYPES: dict[str, Any] = {"principle": str, "reply": str, "problem": str | None}


def _probability_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        return f"{name} is not a probability"
    return None


_GENERATION_TYPES: dict[str, Any] = {
    "index": int,
    "principle": str,
    "style": str,
    "kind": str,
    "turns": bool,
    "seed_ids": list,
    "asked": int,
    "status": str,
    "items": list,
    "attempts": int,
    "usage": dict,
    "error": dict | None,
}


def generation_problem(data: dict[str, Any]) -> str | None:
    """What keeps a `generations.jsonl` line (one `cai prompts generate` call) from being
    read, or None."""
    if not isinstance(data.get("id"), str):
        return "no string id"
    return _wrong(data, _GENERATION_TYPES)


def label_problem(data: dict[str, Any]) -> str | None:
    """What keeps a `labels.jsonl` line from being read as a label, or None."""
    if not isinstance(data.get("id"), str):
        return "no string id"
    problem = (
        _messages_problem(data.get("prompt", []))
        or _wrong(data, _LABEL_TYPES)
        or _probability_problem("p_a", data.get("p_a"))
    )
    if problem is not None:
        return problem
    for vote in data.get("votes", []):
        if not isinstance(vote, dict) or not _is_int(vote.get("vote")):
            return "a vote is not an object with a number"
        if vote.get("order") not in ("ab", "ba"):
            return "a vote's order is not ab or ba"
        problem = _wrong(vote, _VOTE_TYPES) or _probability_problem(
            "a vote's p_first", vote.get("p_first")
        )
        if problem is not None:
            return problem
    responses = data.get("responses")
    if responses is not None and not (
        isinstance(responses, list) and all(_is_int(i) for i in responses)
    ):
        return "responses is not a list of numbers"
    return None


def call_problem(data: dict[str, Any]) -> str | None:
    """What keeps a `calls.jsonl` line from being reused as a paid-for reply, or None."""
    if not isinstance(data.get("id"), str) or not isinstance(data.get("step"), str):
        return "no string id and step"
    if not isinstance(data.get("text"), str):
        return "no reply text"
    if data.get("finish_reason", "stop") not in FINISH_REASONS:
        return "an unknown finish reason"
    problem = _wrong(
        data, {"usage": dict | None, "request_id": str | None, "logprobs": list | None}
    )
    if problem is not None:
        return problem
    for token in data.get("logprobs") or ():
        if not isinstance(token, dict) or not isinstance(token.get("top_logprobs", []), list):
            return "a logprobs entry is not an object"
    return None
