"""The run directory: its files, its manifest, its record store, its lock and its atomic writes.

Files in a run directory:

- `records.jsonl`: one finished `Record` per line, appended and flushed as each prompt ends.
- `calls.jsonl`: every model reply, appended and flushed the moment it arrives, so a reply
  that was paid for survives a crash and is reused when the run resumes.
- `manifest.json`: the run's kind, settings, versions and counts (`Manifest`), replaced
  atomically.
- `constitution.md`: the exact bytes of the constitution the run was made with.
- `.lock`: held while a process writes the run, so two processes never write one run; it names
  the process holding it, so a run whose process died can be told from a live one.

A process killed at any moment leaves at most a torn last line in a JSONL file;
`RunStore.repair` cuts it and `RunStore.compact` leaves one line per prompt. Every other file
cai writes, here or elsewhere (exports included), goes through `write_atomic`: a temporary
file, fsync, rename. Temporary files and folders carry the writer's pid, so the next writer
of the same path removes those a killed process left.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cai._version import __version__
from cai.errors import ConfigError, RunMismatchError
from cai.records import (
    Record,
    call_problem,
    clean_text,
    generation_problem,
    label_problem,
    record_problem,
)
from cai.redact import redact_secrets, secret_values
from cai.words import plural

__all__ = [
    "BATCHES_FILE",
    "CALLS_FILE",
    "CONSTITUTION_COPY",
    "GENERATIONS_FILE",
    "LABELS_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "PROMPTS_FILE",
    "RECORDS_FILE",
    "RUN_FILES",
    "LockState",
    "Manifest",
    "RunStore",
    "atomic_dir",
    "best_lines",
    "check_not_writing",
    "check_out_path",
    "check_run_dir",
    "check_run_path",
    "choose_run_dir",
    "counting_skips",
    "file_sha256",
    "find_constitution_text",
    "held_for_reading",
    "load_run",
    "lock_state",
    "open_run_file",
    "public_url",
    "read_jsonl",
    "read_manifest",
    "read_records",
    "read_run_bytes",
    "record_lines",
    "redact_secrets",
    "safe_name",
    "save_constitution_copy",
    "valid_lines",
    "write_atomic",
    "write_json_atomic",
    "write_run_file",
]

RECORDS_FILE = "records.jsonl"
CALLS_FILE = "calls.jsonl"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
CONSTITUTION_COPY = "constitution.md"
# A label run (`cai label`) keeps one line per labelled pair here instead of records.jsonl.
LABELS_FILE = "labels.jsonl"
# A prompts run (`cai prompts generate`) keeps one line per call here, and the prompts made
# of them in prompts.jsonl.
GENERATIONS_FILE = "generations.jsonl"
PROMPTS_FILE = "prompts.jsonl"
# Batch mode (`cai.batch`): each provider batch the run created, appended and fsynced the
# moment the provider returns its id, and each batch whose results are all taken.
BATCHES_FILE = "batches.jsonl"
RUN_FILES = frozenset(
    {
        RECORDS_FILE,
        LABELS_FILE,
        CALLS_FILE,
        MANIFEST_FILE,
        LOCK_FILE,
        CONSTITUTION_COPY,
        BATCHES_FILE,
        GENERATIONS_FILE,
        PROMPTS_FILE,
    }
)
# What each kind of run writes besides the files every run has: a folder with no manifest
# may hold only these (a run killed before its manifest), so a user's own prompts.jsonl is
# never taken for a prompts run's when a generate run is pointed at its folder.
_COMMON_FILES = frozenset({CALLS_FILE, MANIFEST_FILE, LOCK_FILE, CONSTITUTION_COPY, BATCHES_FILE})
_KIND_FILES = {
    "generate": frozenset({RECORDS_FILE}),
    "label": frozenset({LABELS_FILE}),
    "prompts": frozenset({GENERATIONS_FILE, PROMPTS_FILE}),
}
OUTPUTS = Path("outputs")

# -- secrets ------------------------------------------------------------------------------


def public_url(url: str | None) -> str | None:
    """`url` without a user, password or query string, which may hold credentials."""
    if url is None:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- atomic writes ------------------------------------------------------------------------

_TEMP = re.compile(r"\.cai-(tmp|old)-(\d+)$")


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- run files ----------------------------------------------------------------------------

_OPEN_FLAGS = {
    "rb": os.O_RDONLY,
    "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    "r+b": os.O_RDWR,
}
_SAFE_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _not_regular(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{path} is {what}, not a regular file; cai reads and writes only its own files in a "
        "run folder: remove it, or pass --out with another directory"
    )


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def check_run_path(path: str | Path) -> bool:
    """Whether the run file `path` exists; a one-line `ConfigError` when it is anything but a
    regular file (a symlink, a FIFO, a directory...), which cai never writes through."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise _not_regular(Path(path), _kind_of(mode))
    return True


def open_run_file(
    path: str | Path, mode: str = "rb", *, create: bool = False, buffering: int = -1
) -> Any:
    """Open a file of a run folder ("rb", "ab" or "r+b"; `create` for "r+b") as a binary file.

    The one way cai opens its run files: a symlink is never followed (`O_NOFOLLOW`), and
    anything but a regular file is refused with a `ConfigError` before a byte is read or
    written; the open never blocks (`O_NONBLOCK`), so a FIFO cannot hang it. A file with
    other hard links is not written to, as that would change the other names' file too.
    A missing file raises `FileNotFoundError`, as `open` does.
    """
    path = Path(path)
    flags = _OPEN_FLAGS[mode] | _SAFE_FLAGS | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except NotADirectoryError:
        if mode != "rb":
            raise
        # Nothing to read where a folder of the path is a file: as missing as it gets.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP):
            with contextlib.suppress(OSError):
                raise _not_regular(path, _kind_of(os.lstat(path).st_mode)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, _kind_of(info.st_mode))
        if mode != "rb" and info.st_nlink > 1:
            raise ConfigError(
                f"{path} has {plural(info.st_nlink - 1, 'other hard link')}, so writing it would change "
                "another file too; cai writes only its own files: copy it to a file of its own"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_run_bytes(path: str | Path) -> bytes:
    """The bytes of the run file `path`, opened as `open_run_file` does."""
    with open_run_file(path) as f:
        return f.read()


def _through_link(path: Path) -> Path:
    """Where a write to `path` lands: through a symlink to its target, never over the link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _temp_path(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.cai-{tag}-{os.getpid()}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files and folders of `path` that a killed writer left behind."""
    removed = []
    prefix = f".{path.name}.cai-"
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            match = _TEMP.search(entry.name)
            if match is None or entry.name != f"{prefix}{match[1]}-{match[2]}":
                continue
            if _alive(int(match[2])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _is_temp(name: str) -> bool:
    return name.startswith(".") and _TEMP.search(name) is not None


def write_atomic(path: str | Path, data: bytes | str | Iterable[bytes]) -> Path:
    """Replace `path` with `data` so a reader never sees half a file; returns where it wrote.

    The data goes to a temporary file beside `path`, is fsynced and renamed over it. A symlink
    is written through. Temporary files a killed writer left for `path` are removed first.
    """
    return _replace(_through_link(Path(path)), data)


def write_run_file(path: str | Path, data: bytes | str | Iterable[bytes]) -> Path:
    """`write_atomic` for a file of a run folder: refused (`check_run_path`) when `path` is
    a symlink, a FIFO or anything but a regular file, never written through."""
    path = Path(path)
    check_run_path(path)
    return _replace(path, data)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: mended, never a crash after a paid call
        return clean_text(text).encode("utf-8")


def _replace(path: Path, data: bytes | str | Iterable[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_path(path)
    chunks: Iterable[bytes] = (
        [_utf8(data)] if isinstance(data, str) else [data] if isinstance(data, bytes) else data
    )
    # Our own name, made afresh: whatever lies there (a link planted there included) is gone
    # before the file is created, and the create follows no link.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE_FLAGS, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Replace the run file `path` with `data` as JSON, secrets redacted, so a reader never
    sees half a file (`write_run_file`)."""
    write_run_file(path, redact_secrets(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary folder (yielded), then swap it in for `out` at once.

    On an error or a kill `out` is left as it was; the next `atomic_dir` of `out` removes the
    temporary folders a killed process left. A symlink `out` is written through.
    """
    out = _through_link(Path(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp, old = _temp_path(out), _temp_path(out, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- JSONL --------------------------------------------------------------------------------


def _mended(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_mended(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): _mended(v) for k, v in value.items()}
    return value


def _loads(raw: bytes) -> Any:
    """A run-file line's JSON, each lone surrogate (`"\\ud800"`, which cai never writes but a
    hand edit may) mended to U+FFFD, so what is read can be written again."""
    data = json.loads(raw)
    if b"\\ud" in raw or b"\\uD" in raw:
        data = _mended(data)
    return data


def read_jsonl(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
    """(line number, raw line, object) for each line; a line that is not a JSON object yields None."""
    try:
        f = open_run_file(path)
    except FileNotFoundError:
        return
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                data = _loads(raw)
            except (ValueError, RecursionError):
                data = None
            yield lineno, raw, data if isinstance(data, dict) else None


# The lines each command skipped, by file: set while a command runs (`counting_skips`).
_SKIPPED: contextvars.ContextVar[dict[str, set[int]] | None] = contextvars.ContextVar(
    "cai_skipped_lines", default=None
)


@contextlib.contextmanager
def counting_skips() -> Iterator[dict[str, set[int]]]:
    """Collect, by file, the numbers of the lines the run-file readers skip meanwhile, so a
    command can say how many lines of which file it could not read."""
    skipped: dict[str, set[int]] = {}
    token = _SKIPPED.set(skipped)
    try:
        yield skipped
    finally:
        _SKIPPED.reset(token)


def _skip(path: Path, lineno: int) -> None:
    skipped = _SKIPPED.get()
    if skipped is not None:
        skipped.setdefault(str(path), set()).add(lineno)


def valid_lines(
    path: Path,
    problem: Callable[[dict[str, Any]], str | None],
    skipped: list[int] | None = None,
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The lines of a run file that `problem` finds nothing wrong with; each other line (not
    a JSON object, or of another shape) is skipped and counted (`counting_skips`, and in
    `skipped` when given). A torn last line, which a resume cuts, is skipped too."""
    for lineno, raw, data in read_jsonl(path):
        try:
            wrong = "not a JSON object" if data is None else problem(data)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError):
            wrong = "unreadable"
        if wrong is None and data is not None:
            yield lineno, raw, data
        else:
            if data is not None or raw.endswith(b"\n"):  # not a torn last line being written
                _skip(path, lineno)
            if skipped is not None:
                skipped.append(lineno)


# Which check each run file's lines pass: the one reader of each file.
_LINE_PROBLEMS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    RECORDS_FILE: record_problem,
    LABELS_FILE: label_problem,
    CALLS_FILE: call_problem,
    GENERATIONS_FILE: generation_problem,
}


def record_lines(
    path: Path, skipped: list[int] | None = None
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """The lines of a records (or labels, or calls) file that read back whole: each of the
    shape its file holds (`cai.records.record_problem`, `label_problem`, `call_problem`);
    the others are skipped and counted."""
    yield from valid_lines(path, _LINE_PROBLEMS.get(path.name, record_problem), skipped)


def read_records(run_dir: str | Path) -> Iterator[Record]:
    """The records of a run, one per prompt (its best line), in file order.

    A torn line (from a killed process) is left out, and so is a failed record that a later
    retry replaced but a kill kept `compact` from removing.
    """
    path = Path(run_dir) / RECORDS_FILE
    keep = {
        lineno for _, lineno, _ in best_lines((n, d) for n, _, d in record_lines(path)).values()
    }
    for lineno, _, data in record_lines(path):
        if lineno in keep:
            yield Record.from_dict(data)


# How `append_call` starts each line; the id follows.
_CALL_PREFIX = b'{"id": "'

# Which line wins when one prompt has several: a usable record, then a skip, then a failure.
_RANK = {"ok": 0, "skipped": 1}


def best_lines(lines: Iterable[tuple[Any, dict[str, Any]]]) -> dict[str, tuple[int, Any, str]]:
    """For each record id, (rank, position, status) of its best line: the first `ok` line,
    else the first `skipped`, else the last of any other status (rank 2, e.g. failed).

    `lines` gives (position, record dict) pairs in file order; positions are the caller's.
    """
    best: dict[str, tuple[int, Any, str]] = {}
    for position, data in lines:
        status = str(data.get("status", "ok"))
        rank = _RANK.get(status, 2)
        held = best.get(data["id"])
        # Of several failures the latest says best why the prompt fails now.
        if held is None or rank < held[0] or rank == held[0] == 2:
            best[data["id"]] = (rank, position, status)
    return best


# -- manifest -----------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Manifest:
    """What `manifest.json` holds: what made the run, with which settings, and how it went.

    `kind` says which command writes the run ("generate"; a merged run is a generate run that
    can be resumed). `created` is kept across invocations; `updated` is the last write.
    Keys this version does not know are kept in `extra` and written back as they were.
    """

    kind: str = "generate"
    cai_version: str = __version__
    created: str = ""
    updated: str = ""
    status: str = "new"
    constitution: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    writer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = MANIFEST_FILE) -> Manifest:
        """A manifest from its JSON; a `ConfigError` naming the file when it is not cai's."""
        # Runs made through the library before manifests carried cai_version have settings.
        ours = isinstance(data, dict) and (
            isinstance(data.get("cai_version"), str)
            or (isinstance(data.get("settings"), dict) and isinstance(data.get("status"), str))
        )
        if not ours:
            raise ConfigError(
                f"{path} was not written by cai (it has no cai_version or run settings); "
                "pass --out with a directory of its own for the run"
            )
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {"extra": {k: v for k, v in data.items() if k not in known}}
        for name, value in data.items():
            if name not in known or value is None:
                continue
            want = (
                dict if name not in ("kind", "cai_version", "created", "updated", "status") else str
            )
            if not isinstance(value, want):
                raise ConfigError(
                    f"{path}: '{name}' should be a {'JSON object' if want is dict else 'string'}; "
                    "was it edited by hand?"
                )
            values[name] = value
        return cls(**values)

    def touch(self) -> None:
        self.updated = _now()
        self.created = self.created or self.updated


def read_manifest(run_dir: str | Path) -> Manifest | None:
    """The run's manifest, None when it has none; a one-line `ConfigError` for a bad one."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        text = read_run_bytes(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; was it written by cai?") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); was it edited by hand?") from None
    return Manifest.from_dict(data, path)


def write_manifest(run_dir: str | Path, manifest: Manifest) -> None:
    manifest.touch()
    write_json_atomic(Path(run_dir) / MANIFEST_FILE, manifest.to_dict())


# -- the lock -----------------------------------------------------------------------------


def writer_info(command: str = "") -> dict[str, Any]:
    """Who writes a run: this process's pid, host and start time."""
    info: dict[str, Any] = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": _now()}
    if command:
        info["command"] = command
    return info


@dataclass
class LockState:
    """Whether a live process holds a run's lock, and who holds or last held it."""

    held: bool
    writer: dict[str, Any] | None = None

    def who(self) -> str:
        w = self.writer or {}
        if not w.get("pid"):
            return "another cai process"
        what = f"cai {w['command']}" if w.get("command") else "cai"
        return f"process {w['pid']} ({what}) on {w.get('hostname', '?')}, since {w.get('started', '?')}"


def _read_writer(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_run_bytes(path).decode("utf-8") or "null")
    except (OSError, ValueError, UnicodeDecodeError, ConfigError):
        return None
    return data if isinstance(data, dict) else None


def lock_state(run_dir: str | Path) -> LockState:
    """Whether a process holds the run's lock right now (by asking the kernel, not the file)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return LockState(False, _read_writer(path))
    try:
        handle = open_run_file(path)
    except FileNotFoundError:
        return LockState(False, None)
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return LockState(True, _read_writer(path))
        fcntl.flock(handle, fcntl.LOCK_UN)
    return LockState(False, _read_writer(path))


@contextlib.contextmanager
def held_for_reading(run_dir: str | Path, command: str = "") -> Iterator[None]:
    """Keep writers out of a run while it is read, writing nothing: a shared lock on its
    `.lock` opened read-only (so a run on read-only storage can be read); a `ConfigError`
    when a live process is writing it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        import fcntl

        handle = open_run_file(path)
    except (ImportError, FileNotFoundError):  # not POSIX, or never written by a process
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"{run_dir} is being written by {LockState(True, _read_writer(path)).who()}; "
                f"wait for it to end{f', then {command}' if command else ''}"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def describe_status(run_dir: str | Path, manifest: Manifest | None) -> str | None:
    """The run's status, with a dead writer told apart from a live one."""
    if manifest is None:
        return None
    if manifest.status != "running":
        return manifest.status
    state = lock_state(run_dir)
    if state.held:
        return f"running: {state.who()}"
    writer = state.writer or manifest.writer or {}
    who = f"process {writer['pid']}" if writer.get("pid") else "the process writing it"
    if writer.get("hostname") and writer["hostname"] != socket.gethostname():
        who += f" on {writer['hostname']}"
    return f"interrupted: {who} is gone; run the same command to resume"


# -- the run directory --------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """`name` as one safe folder name: letters, digits, '.', '_' and '-', never '..' or hidden."""
    cleaned = _UNSAFE.sub("-", name).strip(".-_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:64].strip(".-_")
    return cleaned or "run"


def new_run_dir(name: str, root: Path = OUTPUTS) -> Path:
    """root/<name>-<timestamp>, with a suffix if a run of that second exists."""
    base = root / f"{safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def find_run_dir(
    name: str, settings: dict[str, Any], source: str, shard: Any, root: Path = OUTPUTS
) -> Path | None:
    """The newest run under `root` made by the same command, to resume it."""
    for path in sorted(root.glob(f"{safe_name(name)}-*/{MANIFEST_FILE}"), reverse=True):
        try:
            manifest = read_manifest(path.parent)
        except ConfigError:
            continue
        if (
            manifest is not None
            and manifest.settings == settings
            and manifest.prompts.get("source") == source
            and manifest.config.get("shard") == (list(shard) if shard else None)
        ):
            return path.parent
    return None


def choose_run_dir(
    out: Path | None,
    *,
    fresh: bool,
    name: str,
    settings: dict[str, Any],
    source: str,
    shard: Any,
) -> Path:
    """--out when given; else a new run under outputs/ (--fresh), else the same command's run."""
    if out is not None:
        check_out_path(out, folder=True, run=True)
        if fresh:
            raise ConfigError(
                "--fresh goes without --out: --out DIR resumes the run in DIR; "
                "to start afresh, pass --out with a new directory"
            )
        return out
    if not fresh:
        found = find_run_dir(name, settings, source, shard)
        if found is not None:
            return found
    return new_run_dir(name)


def check_out_path(out: str | Path, *, folder: bool, run: bool = False) -> Path:
    """The one check every --out goes through first (generate, label and merge write a run
    folder, `run`; export a file or a folder, report a file): one line with the fix, never a
    traceback, and never a write over a file of a run. Each command then applies its own
    rule on what it may replace."""
    path = Path(out)
    new = "pass --out with a new path"
    if path.name in ("", ".", ".."):
        what = "folder" if folder else "file name"
        raise ConfigError(f"--out {str(out)!r} has no {what} of its own; {new}")
    if path.is_dir() and not folder:
        raise ConfigError(f"--out {out} is a directory; pass a file name")
    if path.exists() and not path.is_dir() and folder:
        raise ConfigError(f"--out {out} is a file; pass a directory" + " for the run" * run)
    if path.name in RUN_FILES and is_run_dir(path.parent):
        raise ConfigError(f"--out {out} is a file of the run {path.parent}; {new}")
    return path


def check_run_dir(run_dir: Path, kind: str = "generate") -> Manifest | None:
    """Refuse a run directory that is not new, empty, or a `kind` run of cai's; its manifest."""
    check_out_path(run_dir, folder=True, run=True)
    manifest = read_manifest(run_dir)
    if manifest is not None:
        if manifest.kind != kind:
            raise RunMismatchError(
                f"{run_dir} is a cai {manifest.kind} run, not a {kind} run; "
                "pass --out with a new directory"
            )
        return manifest
    if run_dir.is_dir():
        own = _COMMON_FILES | _KIND_FILES.get(kind, RUN_FILES)
        foreign = sorted(
            p.name for p in run_dir.iterdir() if p.name not in own and not _is_temp(p.name)
        )
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(
                f"--out {run_dir} is not empty and is not a cai run (it holds {listed}); "
                "pass a new or empty directory"
            )
    return None


def is_run_dir(path: Path) -> bool:
    return (path / RECORDS_FILE).is_file() or (path / MANIFEST_FILE).is_file()


def save_constitution_copy(run_dir: Path, source: Path, sha256: str) -> None:
    """Keep the constitution's exact bytes in the run, so its card can quote it later.

    Written only when the bytes still hash to the run's sha256, and never over a copy that
    belongs to another constitution (that run's settings check will refuse the mix).
    """
    try:
        data = source.read_bytes()
    except OSError:
        return
    copy = run_dir / CONSTITUTION_COPY
    if hashlib.sha256(data).hexdigest() != sha256 or check_run_path(copy):
        return
    write_run_file(copy, data)


def find_constitution_text(
    run_dir: Path, manifest: dict[str, Any], records: list[Record]
) -> tuple[str | None, str]:
    """The constitution text the run was made with, if it can be found, and where it came from."""
    info = manifest.get("constitution") or {}
    sha = info.get("sha256") or next(
        (r.constitution.get("sha256") for r in records if r.constitution.get("sha256")), ""
    )
    candidates = [run_dir / CONSTITUTION_COPY]
    if info.get("path"):
        candidates.append(Path(info["path"]))
    changed = []
    for path in candidates:
        try:
            # The run's copy is a run file; the path the manifest names is the user's own.
            data = read_run_bytes(path) if path == candidates[0] else path.read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if not sha or digest == sha:
            return data.decode("utf-8", errors="replace"), f"read from `{path}`"
        changed.append(f"`{path}` has changed since the run (its sha256 is now {digest})")
    if changed:
        return None, "; ".join(changed) + ", so its text is not shown here"
    where = f" at `{info['path']}`" if info.get("path") else ""
    return None, f"the constitution file{where} was not found, so its text is not shown here"


def load_run(run_dir: str | Path, *, while_running: bool = True) -> tuple[Manifest, list[Record]]:
    """A run's manifest (an empty one if it has none) and records; a clear error if it is not
    a run, or, unless `while_running`, if a live process is writing it."""
    run_dir = Path(run_dir)
    if not (run_dir / RECORDS_FILE).exists():
        raise ConfigError(
            f"{run_dir}: no {RECORDS_FILE} here; pass a directory made by cai generate"
        )
    if not while_running:
        check_not_writing(run_dir)
    manifest = read_manifest(run_dir) or Manifest(cai_version="")
    return manifest, list(read_records(run_dir))


def check_not_writing(run_dir: str | Path, then: str = "export") -> None:
    """Refuse a run that a live process is still writing; `then`: what to do once it ends."""
    state = lock_state(run_dir)
    if state.held:
        raise ConfigError(
            f"{run_dir} is still being written by {state.who()}; wait for it to end "
            f"(or stop it), then {then}"
        )


# -- the record store ---------------------------------------------------------------------


# `json.dumps(data, ensure_ascii=False)`, without making an encoder for every line.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)


class RunStore:
    """Append-only storage for one run directory.

    Problems found and fixed on the way (a torn line cut, duplicates dropped) are added to
    `notices`, one line each, for the caller to report.
    """

    def __init__(self, run_dir: str | Path, records_file: str = RECORDS_FILE) -> None:
        self.dir = Path(run_dir)
        # Where the run's lines go: records.jsonl, or labels.jsonl for a label run.
        self.records_path = self.dir / records_file
        self.calls_path = self.dir / CALLS_FILE
        self.manifest_path = self.dir / MANIFEST_FILE
        self.notices: list[str] = []
        self._records: Any = None
        self._calls: Any = None
        self._lock: Any = None
        self._secrets: tuple[str, ...] = ()

    def lock(self, command: str = "") -> None:
        """Take the run for this process; raises `ConfigError` if another process has it.

        The kernel drops the lock when its process dies, even by SIGKILL; the lock file keeps
        naming that process, so a run it left `running` can be told from a live one.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return
        path = self.dir / LOCK_FILE
        handle = open_run_file(path, "r+b", create=True)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"{self.dir} is being written by {LockState(True, _read_writer(path)).who()}; "
                "wait for it to end or pass --out with another directory"
            ) from None
        self.previous_writer = _read_writer(path)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(writer_info(command)).encode())
        handle.flush()
        self._lock = handle

    previous_writer: dict[str, Any] | None = None

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.truncate(0)  # ended cleanly: no one to report as gone
            self._lock.close()
            self._lock = None

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._secrets = tuple(secret_values())
        # Unbuffered: each line goes to the kernel in its own write, with no copy and no flush.
        self._records = open_run_file(self.records_path, "ab", buffering=0)
        try:
            self._calls = open_run_file(self.calls_path, "ab", buffering=0)
        except BaseException:
            self._records.close()
            self._records = None
            raise

    def sync(self) -> None:
        """Every line written so far on disk, surviving a reboot (a batch is noted collected
        only once its answers are)."""
        for f in (self._records, self._calls):
            if f is not None:
                os.fsync(f.fileno())

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
        line = _utf8(redact_secrets(_LINE_ENCODER.encode(data), self._secrets) + "\n")
        # One write of one whole line: a kill can tear only the line being written.
        try:
            written = f.write(line)
            while written < len(line):  # a short write (e.g. a signal mid-write): the rest
                written += f.write(line[written:])
        except OSError as e:
            # A write to an open file says no path (a full disk: "No space left on device").
            path = self.records_path if f is self._records else self.calls_path
            raise OSError(e.errno, e.strerror, str(path)) from e

    def append_record(self, record: Record | dict[str, Any]) -> None:
        self._append(self._records, record if isinstance(record, dict) else record.to_dict())

    def append_call(self, record_id: str, step: str, completion: dict[str, Any]) -> None:
        self._append(self._calls, {"id": record_id, "step": step, **completion})

    def has_data(self) -> bool:
        """True when the directory holds records or journaled calls."""
        return any(
            check_run_path(p) and p.stat().st_size for p in (self.records_path, self.calls_path)
        )

    def read_manifest(self) -> Manifest | None:
        return read_manifest(self.dir)

    def write_manifest(self, manifest: Manifest) -> None:
        write_manifest(self.dir, manifest)

    def repair(self) -> int:
        """Cut a torn last line from the JSONL files; returns how many bytes were dropped."""
        dropped = 0
        for path in (self.records_path, self.calls_path):
            try:
                f = open_run_file(path, "r+b")
            except FileNotFoundError:
                continue
            with f:
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

    def compact(self) -> dict[str, str]:
        """Leave one line per prompt in records.jsonl; returns the status of each, by id.

        When a prompt has several lines the best one stays (ok, then skipped, then failed).
        A failed record stays until a retry replaces it, so a resume that does not reach it
        (a lower --limit, an interruption) never loses it. Lines that are not records are
        dropped. The file is rewritten, atomically, only if needed.
        """
        lines = 0
        skipped: list[int] = []

        def numbered() -> Iterator[tuple[int, dict[str, Any]]]:
            nonlocal lines
            # A line of the wrong shape does not count as done: its prompt is made again.
            for lineno, _, data in record_lines(self.records_path, skipped):
                lines += 1
                yield lineno, data

        best = best_lines(numbered())
        bad, duplicates = len(skipped), lines - len(best)
        # Said below, as dropped: not also as lines left in the file.
        (_SKIPPED.get() or {}).pop(str(self.records_path), None)
        if bad or duplicates:
            keep = {lineno for _, lineno, _ in best.values()}
            write_run_file(
                self.records_path,
                (raw for lineno, raw, _ in read_jsonl(self.records_path) if lineno in keep),
            )
            self.notices.append(
                f"{self.records_path}: dropped {plural(bad, 'line')} unreadable or not of the "
                f"shape cai writes (their prompts are made again) and "
                f"{plural(duplicates, 'duplicate record')}"
            )
        return {record_id: status for record_id, (_, _, status) in best.items()}

    def journal(self, done: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """Replies already paid for, by (record id, step), for records not in `done`."""
        calls: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            f = open_run_file(self.calls_path)
        except FileNotFoundError:
            return calls
        with f:
            for lineno, raw in enumerate(f, 1):
                # Most lines belong to finished prompts: skip those without parsing them.
                if raw.startswith(_CALL_PREFIX):
                    end = raw.find(b'"', len(_CALL_PREFIX))
                    if end > 0 and raw[len(_CALL_PREFIX) : end].decode("utf-8", "replace") in done:
                        continue
                if not raw.strip():
                    continue
                try:
                    data = _loads(raw)
                    wrong = call_problem(data) if isinstance(data, dict) else "not an object"
                except (ValueError, RecursionError, TypeError):
                    wrong = "not JSON"
                if wrong is not None:
                    _skip(self.calls_path, lineno)  # not reused: its call is made again
                elif data["id"] not in done:
                    calls[(data["id"], data["step"])] = data
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
