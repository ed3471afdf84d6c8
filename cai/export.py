"""Turn a run's records into training data: TRL preference rows (DPO) and SFT conversations.

Formats are defined by their keys, as TRL defines them:

- preference: {"prompt", "chosen", "rejected"}; conversational (message lists) or standard
  (plain strings).
- SFT: {"messages"}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cai.records import Record

__all__ = [
    "FORMATS",
    "record_to_dpo",
    "record_to_sft",
    "write_jsonl",
]

FORMATS = ("dpo", "sft")


def _extra_columns(record: Record) -> dict[str, Any]:
    # TRL ignores columns it does not know; these let users trace a row back to its record.
    return {
        "id": record.id,
        "principles": record.principles,
        "rounds": len(record.rounds),
        "constitution_sha256": record.constitution.get("sha256", ""),
    }


def record_to_dpo(record: Record, *, style: str = "conversational") -> dict[str, Any]:
    """A TRL preference row: chosen = the final revision, rejected = the initial response."""
    if style == "standard":
        prompt = record.prompt[-1]["content"]
        row: dict[str, Any] = {
            "prompt": prompt,
            "chosen": record.final_response,
            "rejected": record.initial_response,
        }
    else:
        row = {
            "prompt": record.prompt,
            "chosen": [{"role": "assistant", "content": record.final_response}],
            "rejected": [{"role": "assistant", "content": record.initial_response}],
        }
    row.update(_extra_columns(record))
    return row


def record_to_sft(record: Record) -> dict[str, Any]:
    """An SFT conversation: the prompt's turns, then the final revision as the answer."""
    row: dict[str, Any] = {
        "messages": [*record.prompt, {"role": "assistant", "content": record.final_response}]
    }
    row.update(_extra_columns(record))
    return row


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows to `path` atomically (a temp file renamed into place); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def iter_rows(
    records: Iterable[Record], fmt: str, *, style: str = "conversational"
) -> Iterator[dict[str, Any]]:
    """Rows of format `fmt` for the usable records (status ok)."""
    for record in records:
        if record.status != "ok":
            continue
        yield record_to_dpo(record, style=style) if fmt == "dpo" else record_to_sft(record)
