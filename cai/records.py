"""What a run writes: one `Record` per prompt in `records.jsonl`, a call journal, a manifest.

Files in a run directory:

- `records.jsonl`: one finished `Record` per line, appended and flushed as each prompt ends.
- `calls.jsonl`: every model reply, appended and flushed the moment it arrives, so a reply
  that was paid for survives a crash and is reused when the run resumes.
- `manifest.json`: the run's settings, versions and counts, replaced atomically.
- `.lock`: held while a process writes the run, so two processes never write one run.

A process killed at any moment leaves at most a torn last line in a JSONL file;
`RunStore.repair` cuts it and `RunStore.compact` leaves one line per prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConfigError

__all__ = [
    "CALLS_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "RECORDS_FILE",
    "Record",
    "Round",
    "RunStore",
    "best_lines",
    "read_jsonl",
    "read_records",
    "record_lines",
    "redact_secrets",
    "write_json_atomic",
    "write_lines_atomic",
]

RECORDS_FILE = "records.jsonl"
CALLS_FILE = "calls.jsonl"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"

# Environment variables whose values must never reach a file, whatever a server echoes back.
_SECRET_SUFFIXES = ("_API_KEY", "_AUTH_TOKEN", "_ACCESS_TOKEN", "_SECRET_KEY")
_REDACTED = "[REDACTED]"


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


def _secrets() -> list[str]:
    return [
        value
        for name, value in os.environ.items()
        if name.upper().endswith(_SECRET_SUFFIXES) and len(value) >= 8
    ]


def redact_secrets(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with the value of every API-key environment variable replaced by [REDACTED]."""
    for secret in _secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_lines_atomic(path: Path, lines: Iterable[bytes]) -> None:
    """Replace `path` with `lines` (each ending in a newline) so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            for line in lines:
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON so a reader never sees half a file."""
    text = redact_secrets(json.dumps(data, indent=2, ensure_ascii=False)) + "\n"
    write_lines_atomic(path, [text.encode("utf-8")])


def read_jsonl(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
    """(line number, raw line, object) for each line; a line that is not a JSON object yields None."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                data = None
            yield lineno, raw, data if isinstance(data, dict) else None


def record_lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The lines of a records file that hold a record (an object with a string id)."""
    for lineno, raw, data in read_jsonl(path):
        if data is not None and isinstance(data.get("id"), str):
            yield lineno, raw, data


def read_records(run_dir: str | Path) -> Iterator[Record]:
    """The records of a run, in file order; a torn line (from a killed process) is left out."""
    for _, _, data in record_lines(Path(run_dir) / RECORDS_FILE):
        try:
            record = Record.from_dict(data)
        except (TypeError, ValueError):
            continue  # a line written by something else; compact() drops it
        yield record


# How `append_call` starts each line; the id follows.
_CALL_PREFIX = b'{"id": "'

# Which line wins when one prompt has several: a usable record, then a skip, then a failure.
_RANK = {"ok": 0, "skipped": 1}


def best_lines(lines: Iterable[tuple[Any, dict[str, Any]]]) -> dict[str, tuple[int, Any, str]]:
    """For each record id, (rank, position, status) of its best line: the first `ok` line,
    else the first `skipped`, else the first of any other status (rank 2, e.g. failed).

    `lines` gives (position, record dict) pairs in file order; positions are the caller's.
    """
    best: dict[str, tuple[int, Any, str]] = {}
    for position, data in lines:
        status = str(data.get("status", "ok"))
        rank = _RANK.get(status, 2)
        if data["id"] not in best or rank < best[data["id"]][0]:
            best[data["id"]] = (rank, position, status)
    return best


class RunStore:
    """Append-only storage for one run directory.

    Problems found and fixed on the way (a torn line cut, duplicates dropped) are added to
    `notices`, one line each, for the caller to report.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.records_path = self.dir / RECORDS_FILE
        self.calls_path = self.dir / CALLS_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self.notices: list[str] = []
        self._records: Any = None
        self._calls: Any = None
        self._lock: Any = None
        self._secrets: list[str] = []

    def lock(self) -> None:
        """Take the run for this process; raises `ConfigError` if another process has it.

        The kernel drops the lock when its process dies, even by SIGKILL.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return
        handle = (self.dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"{self.dir} is being written by another cai process; wait for it to end "
                "or pass --out with another directory"
            ) from None
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._secrets = _secrets()
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

    def _append(self, f: Any, data: dict[str, Any]) -> None:
        line = redact_secrets(json.dumps(data, ensure_ascii=False), self._secrets)
        # One write of one whole line, then flush: a kill can tear only the line being written.
        f.write(line.encode("utf-8") + b"\n")
        f.flush()

    def append_record(self, record: Record) -> None:
        self._append(self._records, record.to_dict())

    def append_call(self, record_id: str, step: str, completion: dict[str, Any]) -> None:
        self._append(self._calls, {"id": record_id, "step": step, **completion})

    def has_data(self) -> bool:
        """True when the directory holds records or journaled calls."""
        return any(p.exists() and p.stat().st_size for p in (self.records_path, self.calls_path))

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return None
        return data if isinstance(data, dict) else None

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
                size = f.seek(0, os.SEEK_END)
                if not size:
                    continue
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    continue
                keep = _last_newline_end(f, size)
                f.seek(keep)
                tail = f.read()
                if _is_object(tail):
                    # Killed between a line and its newline: the record is whole, keep it.
                    f.write(b"\n")
                    self.notices.append(f"{path}: added the newline missing after the last line")
                    continue
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            dropped += size - keep
            self.notices.append(
                f"{path}: cut a torn last line ({size - keep} bytes) left by a process that "
                "was killed while writing it"
            )
        return dropped

    def compact(self, *, retry_failed: bool = True) -> dict[str, str]:
        """Leave one line per prompt in records.jsonl; returns the status of each, by id.

        When a prompt has several lines the best one stays (ok, then skipped, then failed);
        failed records go too when `retry_failed`, so the run makes them again. Lines that
        are not records are dropped. The file is rewritten, atomically, only if needed.
        """
        return self._compact(retry_failed)[0]

    def drop_failed(self) -> int:
        """Remove failed records from records.jsonl, so their retries replace them."""
        return self._compact(True)[1]

    def _compact(self, retry_failed: bool) -> tuple[dict[str, str], int]:
        lines = bad = 0

        def numbered() -> Iterator[tuple[int, dict[str, Any]]]:
            nonlocal lines, bad
            for lineno, _, data in read_jsonl(self.records_path):
                lines += 1
                if data is None or not isinstance(data.get("id"), str):
                    bad += 1
                else:
                    yield lineno, data

        best = best_lines(numbered())
        failed = [i for i, (rank, _, _) in best.items() if rank == 2] if retry_failed else []
        for record_id in failed:
            del best[record_id]
        duplicates = lines - bad - len(best) - len(failed)
        if bad or duplicates or failed:
            keep = {lineno for _, lineno, _ in best.values()}
            write_lines_atomic(
                self.records_path,
                (raw for lineno, raw, _ in read_jsonl(self.records_path) if lineno in keep),
            )
        if bad or duplicates:
            self.notices.append(
                f"{self.records_path}: dropped {bad} unreadable line(s) and "
                f"{duplicates} duplicate record(s)"
            )
        return {record_id: status for record_id, (_, _, status) in best.items()}, len(failed)

    def finished(self) -> dict[str, str]:
        """The status of each record already written, by id (the best line for an id wins)."""
        best = best_lines((n, data) for n, _, data in record_lines(self.records_path))
        return {record_id: status for record_id, (_, _, status) in best.items()}

    def journal(self, done: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """Replies already paid for, by (record id, step), for records not in `done`."""
        calls = {}
        if not self.calls_path.exists():
            return calls
        with self.calls_path.open("rb") as f:
            for raw in f:
                # Most lines belong to finished prompts: skip those without parsing them.
                if raw.startswith(_CALL_PREFIX):
                    end = raw.find(b'"', len(_CALL_PREFIX))
                    if end > 0 and raw[len(_CALL_PREFIX) : end].decode("utf-8", "replace") in done:
                        continue
                try:
                    data = json.loads(raw)
                except (ValueError, RecursionError):
                    continue
                if not isinstance(data, dict):
                    continue
                record_id, step = data.get("id"), data.get("step")
                if (
                    isinstance(record_id, str)
                    and isinstance(step, str)
                    and isinstance(data.get("text"), str)
                    and record_id not in done
                ):
                    calls[(record_id, step)] = data
        return calls


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def _last_newline_end(f: Any, size: int) -> int:
    """The offset just after the last newline in `f` (0 if none), read backwards in blocks."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        block = f.read(end - start)
        at = block.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0
