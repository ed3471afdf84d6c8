"""What a run writes: one `Record` per prompt in `records.jsonl`, a call journal, a manifest.

Files in a run directory:

- `records.jsonl`: one finished `Record` per line, appended and flushed as each prompt ends.
- `calls.jsonl`: every model reply, appended and flushed the moment it arrives, so a reply
  that was paid for survives a crash and is reused when the run resumes.
- `manifest.json`: the run's settings, versions and counts, replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CALLS_FILE",
    "MANIFEST_FILE",
    "RECORDS_FILE",
    "Record",
    "Round",
    "RunStore",
    "read_records",
    "write_json_atomic",
]

RECORDS_FILE = "records.jsonl"
CALLS_FILE = "calls.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass
class Round:
    """One critique-and-revision round. `skipped` means the critique found nothing to change."""

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


@dataclass
class Record:
    """Everything about one prompt's chain, from the first answer to the final revision."""

    id: str
    prompt: list[dict[str, str]]
    status: str = "ok"  # "ok" | "failed"
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

    @property
    def principles(self) -> list[str]:
        return [r.principle for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["rounds"] = [Round(**r) for r in known.get("rounds", [])]
        return cls(**known)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, object) for each line; a line that is not whole JSON yields None."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield lineno, None


def read_records(run_dir: str | Path) -> Iterator[Record]:
    """The records of a run, in file order; a torn line (from a killed process) is left out."""
    for _, data in _read_jsonl(Path(run_dir) / RECORDS_FILE):
        if data is not None:
            yield Record.from_dict(data)


class RunStore:
    """Append-only storage for one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.records_path = self.dir / RECORDS_FILE
        self.calls_path = self.dir / CALLS_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self._records: Any = None
        self._calls: Any = None

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._records = self.records_path.open("ab")
        self._calls = self.calls_path.open("ab")

    def close(self) -> None:
        for f in (self._records, self._calls):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._records = self._calls = None

    def __enter__(self) -> RunStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _append(f: Any, data: dict[str, Any]) -> None:
        # One write of one whole line, then flush: a kill can tear only the line being written.
        f.write(json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n")
        f.flush()

    def append_record(self, record: Record) -> None:
        self._append(self._records, record.to_dict())

    def append_call(self, record_id: str, step: str, completion: dict[str, Any]) -> None:
        self._append(self._calls, {"id": record_id, "step": step, **completion})

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest_path, manifest)

    def repair(self) -> int:
        """Cut a torn last line from the JSONL files; returns how many bytes were dropped."""
        dropped = 0
        for path in (self.records_path, self.calls_path):
            if not path.exists():
                continue
            with path.open("rb+") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    continue
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                dropped += len(data) - keep
        return dropped

    def drop_failed(self) -> int:
        """Rewrite records.jsonl without its failed records, so their retries replace them."""
        if not self.records_path.exists():
            return 0
        kept, dropped = [], 0
        for _, data in _read_jsonl(self.records_path):
            if data is None:
                continue
            if data.get("status") == "failed":
                dropped += 1
            else:
                kept.append(json.dumps(data, ensure_ascii=False))
        if dropped:
            tmp = self.records_path.with_name(f".{RECORDS_FILE}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.records_path)
        return dropped

    def finished(self) -> dict[str, str]:
        """The status of each record already written, by id (the last line for an id wins)."""
        return {r.id: r.status for r in read_records(self.dir)}

    def journal(self, done: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """Replies already paid for, by (record id, step), for records not in `done`."""
        calls = {}
        for _, data in _read_jsonl(self.calls_path):
            if data is not None and data.get("id") not in done:
                calls[(data["id"], data["step"])] = data
        return calls
