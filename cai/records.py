"""What a run makes of each prompt: a `Record`, with one `Round` per critique and revision.

Plain dataclasses; where they are stored (`records.jsonl` of a run directory) is
`cai.rundir`'s business.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

__all__ = ["Record", "Round"]


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
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["rounds"] = [Round.from_dict(r) for r in known.get("rounds", [])]
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
