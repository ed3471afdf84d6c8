"""Errors meant for users: each message says what went wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BadResponseError",
    "BatchCanceledError",
    "BatchExpiredError",
    "CaiError",
    "ConfigError",
    "ConflictError",
    "ConnectionRefused",
    "ConstitutionError",
    "InputError",
    "MissingKeyError",
    "OverloadedError",
    "Problem",
    "ProviderError",
    "RateLimitError",
    "RunMismatchError",
    "ServerError",
    "os_error_message",
    "os_error_reason",
    "status_error_class",
    "unwritable_run",
]

import errno
import os
from dataclasses import dataclass


class CaiError(Exception):
    """Base class of every error `cai` reports to a user; the CLI shows its message, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a file, at a line (1-based) where there is one."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


class InputError(CaiError):
    """A file the user gave cannot be used; names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.problem = Problem(str(path), line, message)
        super().__init__(str(self.problem))

    @property
    def path(self) -> str:
        return self.problem.path

    @property
    def line(self) -> int | None:
        return self.problem.line


class ConstitutionError(InputError):
    """A constitution file is invalid; `problems` lists every problem found, first one first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(first.path, first.line, first.message)
        if len(problems) > 1:
            more = len(problems) - 1
            self.args = (f"{first} (and {more} more problem{'s' if more > 1 else ''})",)


class ConfigError(CaiError):
    """An option or combination of options is invalid."""


class MissingKeyError(ConfigError):
    """An API key is missing from the environment."""


class RunMismatchError(CaiError):
    """An existing run was made with other settings than the ones asked for now."""


class ProviderError(CaiError):
    """A model call failed; `kind` names the failure, `retryable` says whether to try again."""

    kind = "provider_error"
    retryable = False
    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        if retryable is not None:
            # The server said so (`x-should-retry`), which wins over the kind's default.
            self.retryable = retryable

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": str(self),
            "status": self.status,
            "request_id": self.request_id,
        }


class RateLimitError(ProviderError):
    kind = "rate_limit"
    retryable = True


class OverloadedError(ProviderError):
    kind = "overloaded"
    retryable = True


class ServerError(ProviderError):
    kind = "server_error"
    retryable = True


class APITimeoutError(ProviderError):
    kind = "timeout"
    retryable = True


class APIConnectionError(ProviderError):
    kind = "connection"
    retryable = True


class ConnectionRefused(APIConnectionError):
    """Nothing listens at the address (wrong URL, or the server is down)."""

    kind = "connection_refused"


class ConflictError(ProviderError):
    """409: the request conflicted with another in progress; the SDKs retry it."""

    kind = "conflict"
    retryable = True


class BadResponseError(ProviderError):
    """The server answered with something that is not a valid completion (e.g. malformed JSON)."""

    kind = "bad_response"
    retryable = True


class BatchExpiredError(ProviderError):
    """A batch request the provider did not run before the batch expired (24 hours)."""

    kind = "batch_expired"
    retryable = True


class BatchCanceledError(ProviderError):
    """A batch request that was not run because its batch was canceled."""

    kind = "batch_canceled"
    retryable = True


class AuthenticationError(ProviderError):
    kind = "authentication"
    exit_code = 2


class BadRequestError(ProviderError):
    kind = "bad_request"


def status_error_class(status: int) -> type[ProviderError]:
    """The kind of a failed HTTP request by its status, as the SDKs sort them (408, 409, 429
    and 5xx are worth another try)."""
    if status == 429:
        return RateLimitError
    if status in (401, 403):
        return AuthenticationError
    if status == 408:
        return APITimeoutError
    if status == 409:
        return ConflictError
    if status == 529:
        return OverloadedError
    if status >= 500:
        return ServerError
    return BadRequestError


def os_error_reason(e: OSError) -> str:
    """Why an OS call failed, in words (never a bare `[Errno N]`)."""
    from pathlib import Path

    reason = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    if e.errno == errno.ENOTDIR and e.filename:
        path = Path(os.fsdecode(e.filename))
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{blocker} is not a folder"
    return reason


def os_error_message(e: OSError) -> str:
    """`e` as one line: the path, then why."""
    if not e.filename:
        return os_error_reason(e)
    return f"{os.fsdecode(e.filename)}: {os_error_reason(e)}"


def unwritable_run(e: OSError, run_dir: str | os.PathLike[str]) -> CaiError | None:
    """The error to show when `e` came from writing into `run_dir`, else None."""
    from pathlib import Path

    if not e.filename:
        return None
    path = Path(os.fsdecode(e.filename)).absolute()
    folder = Path(run_dir).absolute()
    if path != folder and folder not in path.parents and path not in folder.parents:
        return None
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        # Every reply paid for before the failed write is in the journal: nothing is lost.
        return ConfigError(
            f"cannot write {os.fsdecode(e.filename)}: {os_error_reason(e)}; free some space, "
            "then run the same command again: the run resumes where it stopped"
        )
    return ConfigError(
        f"cannot write the run to {run_dir}: {os_error_reason(e)} - "
        "pass --out with a folder you can write to"
    )
