"""Prompt sources: JSONL, text, CSV, Parquet, `datasets` directories and the Hugging Face Hub.

Every source is read as a stream of `PromptItem`s, so a million-prompt file is never held in
memory. Each item carries where it came from, so a bad row is reported by file and line.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import InputError
from cai.rundir import GENERATIONS_FILE, PROMPTS_FILE

__all__ = [
    "MemorySource",
    "PromptItem",
    "PromptSource",
    "memory_spec",
    "normalize_prompt",
    "prompt_id",
]

ROLES = ("system", "user", "assistant")
_NOT_UTF8 = "not UTF-8 text; save the file as UTF-8"
_BAD = object()  # what _pick returns for a row it has reported
_JSONL_HINT = "; .jsonl and .json files hold one JSON object per line"
_TRANSCRIPT = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?", re.IGNORECASE)
# Fillers that draw nothing but are not format characters (Unicode category Cf).
_BLANK_LETTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")
# Fields of a row kept with its prompt as tags (`PromptItem.tags`), so users can balance or
# filter on them after export.
TAG_FIELDS = ("principle", "style", "kind")
# What JSON's "\\ud800" reads as: half of a pair, no character of its own, and no UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class PromptItem:
    """One prompt: the chat turns to answer, its stable id, and where it was read."""

    id: str
    messages: list[dict[str, str]]
    line: int
    # The row's own labels of the prompt (TAG_FIELDS, e.g. a `cai prompts` run's principle,
    # style and kind); records and export rows carry them.
    tags: dict[str, str] | None = field(default=None, compare=False)


def prompt_id(messages: list[dict[str, str]]) -> str:
    """A stable id from the prompt's content alone, so reruns and shards agree on it."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _parse_transcript(text: str) -> list[dict[str, str]] | None:
    """Split an hh-rlhf style 'Human: ... Assistant: ...' transcript into turns, or None."""
    if not re.match(r"\s*Human:", text):
        return None
    parts = _TRANSCRIPT.split(text.strip())
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=False):
        role = "user" if speaker.lower() == "human" else "assistant"
        turns.append({"role": role, "content": content.strip()})
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()  # a trailing answer is what we are here to generate
    return turns or None


def _blank(text: str) -> bool:
    """True when the text shows nothing: whitespace and invisible characters only.

    Zero-width spaces and joiners, byte-order marks, word joiners, direction marks and soft
    hyphens are format characters (Unicode category Cf); they are no more a prompt than spaces.
    """
    return all(c.isspace() or c in _BLANK_LETTERS or unicodedata.category(c) == "Cf" for c in text)


def _empty(text: str) -> str:
    """The message for a prompt with no text, saying why when the reason is invisible."""
    return (
        "empty prompt" if not text.strip() else "empty prompt: it holds only invisible characters"
    )


def _check_turns(messages: list[dict[str, str]]) -> None:
    """A conversation to answer: an optional system turn first, then user and assistant
    turns taking turns, ending with the user's; every turn has text."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    if users and all(_blank(text) for text in users):
        raise ValueError(_empty("".join(users)))
    for i, message in enumerate(messages):
        if message["role"] == "system" and i > 0:
            raise ValueError(
                f"message {i + 1} is a 'system' turn; a system turn may only come first"
            )
        if _blank(message["content"]):
            why = "" if not message["content"].strip() else ": it holds only invisible characters"
            raise ValueError(f"message {i + 1} has no text{why}")
        if (half := _SURROGATE.search(message["content"])) is not None:
            code = ord(half[0])
            raise ValueError(
                f"message {i + 1} holds a lone surrogate (\\u{code:04x}), which is no character "
                "and cannot be sent; write the character it was meant to be (or its surrogate "
                "pair), or pass --skip-bad-lines"
            )
    first = 1 if messages[0]["role"] == "system" else 0  # a later system turn is refused above
    if first < len(messages) and messages[first]["role"] == "assistant":
        raise ValueError(
            f"message {first + 1} is an 'assistant' turn, but the conversation must open with "
            "the user's (after an optional system turn)"
        )
    for (i, a), (_, b) in itertools.pairwise(enumerate(messages)):
        if a["role"] == b["role"]:
            raise ValueError(
                f"messages {i + 1} and {i + 2} are both '{a['role']}' turns; "
                "user and assistant turns must alternate"
            )
    if messages[-1]["role"] != "user":
        if messages[-1]["role"] == "assistant":
            raise ValueError(
                "the conversation ends with an 'assistant' turn; the last turn must be the user's"
            )
        raise ValueError("the last message must be a 'user' turn")


def normalize_prompt(value: Any) -> list[dict[str, str]]:
    """Turn a prompt string or a list of {role, content} messages into checked chat turns.

    Raises ValueError with a message fit for the user; the caller adds file and line.
    """
    if isinstance(value, str):
        if _blank(value):
            raise ValueError(_empty(value))
        messages = _parse_transcript(value) or [{"role": "user", "content": value}]
        if not messages:
            raise ValueError("empty prompt")
        _check_turns(messages)
        return messages
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"a prompt must be a string or a non-empty list of messages, not {type(value).__name__}"
        )
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i + 1} must be an object with string 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i + 1} has role {role!r}; use one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": message["content"]})
    _check_turns(messages)
    return messages


@dataclass
class PromptSource:
    """Where prompts come from: a path or `hf:NAME[:SPLIT]`, and which field holds them.

    `skip_bad_lines` turns a bad row from an error into a skip, counted in `skipped`.
    """

    spec: str
    prompt_field: str | None = None
    skip_bad_lines: bool = False
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.spec.startswith("hf:"):
            return
        path = Path(self.spec)
        if not path.exists():
            raise InputError(self.spec, None, "no such file or directory; check the --prompts path")
        is_dataset = (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
        if path.is_dir() and not is_dataset and (path / PROMPTS_FILE).is_file():
            self.spec = str(path / PROMPTS_FILE)  # a `cai prompts generate` run
            return
        if path.is_dir() and not is_dataset and (path / GENERATIONS_FILE).is_file():
            raise InputError(
                self.spec,
                None,
                "is a cai prompts run that has not written prompts.jsonl yet (it was killed); "
                "run its cai prompts generate command again to finish it",
            )
        if path.is_dir():
            if (
                not (path / "dataset_info.json").exists()
                and not (path / "dataset_dict.json").exists()
            ):
                raise InputError(
                    self.spec, None, "is a directory but not one written by datasets' save_to_disk"
                )
        elif path.suffix.lower() not in (".jsonl", ".json", ".txt", ".csv", ".parquet"):
            raise InputError(
                self.spec,
                None,
                "unknown prompt file type; use .jsonl, .txt, .csv, .parquet, a datasets directory or hf:NAME",
            )

    def __iter__(self) -> Iterator[PromptItem]:
        self.skipped = []  # each pass counts afresh
        self._tags = None
        for line, value in self._rows():
            tags, self._tags = self._tags, None  # set by `_pick` for the row just read
            try:
                messages = normalize_prompt(value)
            except ValueError as e:
                self._bad(line, str(e))
                continue
            yield PromptItem(prompt_id(messages), messages, line, tags)

    _tags = None  # not a field: the tags of the row `_pick` read last

    def _error(self, line: int, message: str) -> InputError:
        return InputError(self.spec, line, message)

    def _bad(self, line: int, message: str) -> None:
        error = self._error(line, message)
        if not self.skip_bad_lines:
            raise error
        self.skipped.append(str(error))

    def _pick(self, row: dict[str, Any], line: int) -> Any:
        self._tags = {k: row[k] for k in TAG_FIELDS if isinstance(row.get(k), str)} or None
        if self.prompt_field is not None:
            if self.prompt_field not in row:
                self._bad(
                    line, f"no '{self.prompt_field}' field; choose the field with --prompt-field"
                )
                return _BAD
            return row[self.prompt_field]
        for name in ("messages", "prompt"):
            if name in row and row[name] is not None:
                return row[name]
        self._bad(line, "no 'prompt' or 'messages' field; choose the field with --prompt-field")
        return _BAD

    def _rows(self) -> Iterator[tuple[int, Any]]:
        if self.spec.startswith("hf:"):
            yield from self._hub_rows()
            return
        path = Path(self.spec)
        if path.is_dir():
            yield from self._dataset_rows(path)
            return
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".json"):
                yield from self._jsonl_rows(path)
            elif suffix == ".txt":
                for lineno, text in self._lines(path):
                    if text.strip():
                        yield lineno, text.rstrip("\r\n")
            elif suffix == ".csv":
                yield from self._csv_rows(path)
            elif suffix == ".parquet":
                yield from self._parquet_rows(path)
        except UnicodeDecodeError:
            raise InputError(self.spec, _first_non_utf8_line(path), _NOT_UTF8) from None
        except OSError as e:
            raise InputError(self.spec, None, f"cannot read: {e.strerror or e}") from None

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """Lines of a UTF-8 file, numbered from 1; a line that is not UTF-8 is a bad line."""
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    self._bad(lineno, _NOT_UTF8)

    def _jsonl_rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        for lineno, text in self._lines(path):
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                self._bad(lineno, f"not valid JSON: {e.msg} (column {e.colno}){_JSONL_HINT}")
                continue
            except (ValueError, RecursionError) as e:  # e.g. a number with too many digits
                self._bad(lineno, f"not usable JSON ({type(e).__name__}: {str(e)[:80]})")
                continue
            if not isinstance(row, dict):
                self._bad(lineno, f"each line must be a JSON object{_JSONL_HINT}")
                continue
            value = self._pick(row, lineno)
            if value is not _BAD:
                yield lineno, value

    def _csv_rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        # A prompt can be longer than the csv module's default field limit of 128 KiB.
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    value = self._pick(row, reader.line_num)
                    column = self.prompt_field or (
                        "messages" if row.get("messages") is not None else "prompt"
                    )
                    if column == "messages" and isinstance(value, str):
                        value = self._csv_messages(value, reader.line_num)
                    if value is not _BAD:
                        yield reader.line_num, value
            except csv.Error as e:
                raise InputError(
                    self.spec, reader.line_num or None, f"not valid CSV: {e}"
                ) from None

    def _csv_messages(self, text: str, line: int) -> Any:
        """A CSV cell of a `messages` column: the JSON list of turns it holds (a CSV cell has
        no other way to hold one), or the text itself as the user's turn."""
        if not re.match(r"\s*\[\s*\{", text):
            return text
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as e:
            self._bad(line, f"the messages column holds a list that is not valid JSON ({e})")
            return _BAD

    def _parquet_rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:
            raise InputError(self.spec, None, f"not a readable Parquet file: {e}") from None
        row_number = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row_number += 1
                value = self._pick(row, row_number)
                if value is not _BAD:
                    yield row_number, value

    def _dataset_rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except Exception as e:
            raise InputError(self.spec, None, f"cannot load the dataset: {e}") from None
        if isinstance(data, datasets.DatasetDict):
            split = "train" if "train" in data else next(iter(data))
            data = data[split]
        for index, row in enumerate(data, 1):
            value = self._pick(row, index)
            if value is not _BAD:
                yield index, value

    def _hub_rows(self) -> Iterator[tuple[int, Any]]:
        import datasets

        _, _, rest = self.spec.partition(":")
        name, _, split = rest.partition(":")
        try:
            data = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as e:
            raise InputError(
                self.spec,
                None,
                f"cannot load from the Hub ({type(e).__name__}); are you online, and is the name right?",
            ) from None
        for index, row in enumerate(data, 1):
            value = self._pick(row, index)
            if value is not _BAD:
                yield index, value


def _first_non_utf8_line(path: Path) -> int | None:
    """The number of the first line of `path` that is not UTF-8, if any."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


@dataclass
class MemorySource(PromptSource):
    """Prompts held in memory: a list (or other sequence) of strings, message lists or rows
    (dicts, read like JSONL objects), or a `datasets.Dataset`, `DatasetDict` (its train split)
    or `IterableDataset`. A bad item is reported as `prompts[i]`, i counted from 0.

    `spec` names the prompts in messages and the manifest; `memory_spec` makes one from the
    content, so the same prompts given again find the same unfinished run.
    """

    rows: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        is_dict = isinstance(self.rows, dict) and not hasattr(self.rows, "column_names")
        if is_dict or not hasattr(self.rows, "__iter__") or isinstance(self.rows, str | bytes):
            raise InputError(
                "prompts",
                None,
                f"must be a path, a list or a Dataset, not a {type(self.rows).__name__}",
            )

    def _error(self, line: int, message: str) -> InputError:
        return InputError(f"prompts[{line - 1}]", None, message)

    def _rows(self) -> Iterator[tuple[int, Any]]:
        rows = self.rows
        if hasattr(rows, "keys") and hasattr(rows, "column_names"):  # a DatasetDict
            rows = rows["train" if "train" in rows else next(iter(rows))]
        for index, row in enumerate(rows, 1):
            if isinstance(row, dict):
                value = self._pick(row, index)
                if value is not _BAD:
                    yield index, value
            else:
                yield index, row


def memory_spec(rows: Any) -> str:
    """A name for in-memory prompts: the dataset's fingerprint, else a hash of the items."""
    fingerprint = getattr(rows, "_fingerprint", None)
    if isinstance(fingerprint, str):
        return f"dataset:{fingerprint}"
    digest = hashlib.sha256()
    try:
        for row in rows:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode())
            digest.update(b"\n")
    except TypeError:
        return f"{type(rows).__name__}:unnamed"
    return f"list:{digest.hexdigest()[:16]}"
