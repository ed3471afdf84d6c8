"""Batch mode: the same calls through Anthropic's Message Batches or OpenAI's Batch API, at
half the price, resumable across Ctrl-C, SIGKILL and reboots.

`BatchProvider` stands in for a cloud provider inside `cai.pipeline.run_job` (a generate run's
chains, a label run's votes), so the chains, the call journal and the records are the
interactive mode's own. Its `complete` queues the request under a `custom_id` naming the
record and the step (so the same call has the same id in every process) and waits. A
collector task sends the queue as one wave once no chain has added to it for a moment (every
running chain is then waiting on a reply), or when it reaches `--batch-size`; a wave is split
at the provider's limits (`LIMITS`). An `intent` line (a token, the custom_ids) goes to
`batches.jsonl` (fsynced) before each batch is created, and the batch's id the moment the
provider returns it; a resumed run looks for the batch of an intent with no id at the provider
(OpenAI: by the token in its metadata; Anthropic: by its custom_ids, once it has ended) before
sending those requests again. Batches are polled every `--poll-interval`; as one ends, its
results wake their chains, and the pipeline journals each reply exactly as it does an
interactive one. A label run's votes of a pair are asked at once (`gather`), so they go out in
the same wave; a prompts source's policy responses go in one wave before them.

A resumed run reads `batches.jsonl` first: a request that belongs to a batch not yet taken in
is waited for there (or read from its results), never sent again. A request that came back
errored, expired or canceled raises a retryable error, so the pipeline's retries send it in
the next wave, up to `--max-retries`; then its record fails with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cai import errors
from cai.errors import BatchCanceledError, BatchExpiredError, ConfigError, ProviderError
from cai.pipeline import CURRENT_CALL, _Abandoned
from cai.providers.base import Completion, Provider, Sampling
from cai.redact import redact_secrets
from cai.retry import call_with_retries
from cai.rundir import BATCHES_FILE, open_run_file, public_url, valid_lines

__all__ = [
    "LIMITS",
    "BatchJournal",
    "BatchProvider",
    "BatchState",
    "BatchStats",
    "batch_api",
    "batch_states",
    "cancel_batches",
    "check_batch_options",
    "check_no_open_batches",
    "custom_id",
    "describe_batches",
    "run_batch_api",
]

# Per batch: (most requests, most bytes of requests), as each provider documents them.
LIMITS = {"anthropic": (100_000, 256 * 1024 * 1024), "openai": (50_000, 200 * 1024 * 1024)}
# Room left under the byte limit for the envelope around the requests.
_BYTES_MARGIN = 1024 * 1024


def custom_id(record_id: str, step: str) -> str:
    """The request's name inside a batch: its record and step, as both APIs allow
    (`^[a-zA-Z0-9_-]{1,64}$`), e.g. `3f2a...-round1_critique`."""
    return f"{record_id}-{step.replace('.', '_')}"


@dataclass
class BatchState:
    """A batch as its provider last described it."""

    id: str
    status: str  # the provider's own word: in_progress, ended, completed, cancelled, ...
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float | None = None  # Unix seconds
    raw: Any = None

    @property
    def done(self) -> int:
        """Requests that have an outcome."""
        return sum(v for k, v in self.counts.items() if k not in ("processing", "total"))


@dataclass
class BatchStats:
    """What batch mode did in this invocation; the manifest keeps it under stats.batch."""

    batches: int = 0
    requests: int = 0
    reattached: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0
    waves: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class BatchJournal:
    """`batches.jsonl`: one `intent` line before each batch is created (its token and
    custom_ids), one `created` line with its id as soon as the provider returns it (or an
    `unsent` line when it surely was not created), and one `collected` line once all its
    results are taken in; each appended and fsynced."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / BATCHES_FILE

    def entries(self) -> list[dict[str, Any]]:
        """Every whole line of the right shape (`batch_entry_problem`); a torn last line (a
        killed write) and a line of another shape are left out, and counted as skipped."""
        return [data for _, _, data in valid_lines(self.path, batch_entry_problem)]

    def batches(self) -> list[dict[str, Any]]:
        """The `created` entries, oldest first, each with `collected` set."""
        entries = self.entries()
        collected = {e["id"] for e in entries if e.get("event") == "collected"}
        return [
            {**e, "collected": e["id"] in collected} for e in entries if e.get("event") == "created"
        ]

    def intents(self) -> list[dict[str, Any]]:
        """The `intent` entries (written just before a batch is created) that no `created` or
        `unsent` line settles: their batch may exist at the provider, unknown to the run."""
        entries = self.entries()
        settled = {e.get("token") for e in entries if e.get("event") in ("created", "unsent")}
        return [e for e in entries if e.get("event") == "intent" and e.get("token") not in settled]

    def append(self, entry: dict[str, Any]) -> None:
        data = (redact_secrets(json.dumps(entry)) + "\n").encode()
        with open_run_file(self.path, "ab") as f:
            if f.tell() and not self._ends_with_newline():
                f.write(b"\n")  # after a torn line, so this one stays whole
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open_run_file(self.path) as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


_EVENTS = ("intent", "created", "unsent", "collected")


def batch_entry_problem(entry: dict[str, Any]) -> str | None:
    """What is wrong with a `batches.jsonl` line, or None when it has the shape cai writes."""
    if not isinstance(entry.get("id"), str) or entry.get("event") not in _EVENTS:
        return "no batch id or event"
    if entry["event"] == "collected":
        return None
    if not isinstance(entry.get("token"), str if entry["event"] != "created" else str | None):
        return "token is not a string"
    if entry["event"] == "unsent":
        return None
    ids = entry.get("custom_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "custom_ids is not a list of strings"
    wave, created = entry.get("wave", 0), entry.get("created", 0)
    if not isinstance(wave, int) or isinstance(wave, bool) or not 0 <= wave < 2**63:
        return "wave is not a count"
    if not isinstance(created, int | float) or isinstance(created, bool):
        return "created is not a time"
    if not math.isfinite(created):
        return "created is not a time"
    return None


# -- the two batch APIs ----------------------------------------------------------------------


class _BatchAPI:
    """One provider's batch endpoints through its SDK client, with `cai.retry`'s retries."""

    name = ""

    def __init__(self, provider: Any, max_retries: int = 6, timeout: float | None = None) -> None:
        self.provider = provider
        self.max_retries = max_retries
        # Seconds one attempt may take as a whole (a server may answer a byte at a time);
        # None: only the SDK's own timeouts, as a large upload may take long.
        self.timeout = timeout
        self.max_requests, self.max_bytes = LIMITS[self.name]

    @property
    def client(self) -> Any:
        return self.provider._get_client()

    @property
    def url(self) -> str:
        """The server these endpoints are at, without credentials: part of a batch's identity
        in the journal."""
        return public_url(str(self.client.base_url).rstrip("/")) or ""

    def gone(self, batch_id: str, error: ProviderError) -> ConfigError | None:
        """The error that stops a run when the server does not know `batch_id` (404): it is
        gone, or this is not the server that created it; polling it again would never end."""
        if error.status != 404:
            return None
        return ConfigError(
            f"batch {batch_id} is not known at {self.url} (404): it was deleted, or created "
            "at another --base-url; resume with the --base-url that created it"
        )

    async def _call(self, fn: Callable[[], Any]) -> Any:
        import importlib

        from cai.providers.sdk import translate_sdk_error

        sdk = importlib.import_module(self.provider.sdk_module)
        key = self.provider.info.key_variable or ""

        async def attempt() -> Any:
            try:
                if self.timeout is None:
                    return await fn()
                return await asyncio.wait_for(fn(), self.timeout)
            except asyncio.TimeoutError:
                raise errors.APITimeoutError(
                    f"no complete reply within {self.timeout:g}s (--timeout)"
                ) from None
            except sdk.APIError as e:
                raise translate_sdk_error(e, sdk, key) from None

        return await call_with_retries(attempt, max_retries=self.max_retries)

    def line(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def create(self, lines: list[dict[str, Any]], token: str) -> BatchState:
        raise NotImplementedError

    async def retrieve(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    def results(self, state: BatchState) -> AsyncIterator[tuple[str, Completion | ProviderError]]:
        raise NotImplementedError

    async def find(
        self, intent: dict[str, Any], known: set[str]
    ) -> tuple[BatchState | None, list[str]]:
        """The batch an `intent` line announced, if the provider created it: (its state, [])
        when found for sure, (None, ids of batches that may be it but cannot be told yet), or
        (None, []) when the provider has no such batch. `known`: batch ids the run journaled."""
        raise NotImplementedError

    async def _listed(self, pager: Callable[[], Any], since: float) -> AsyncIterator[Any]:
        """Every batch the provider lists, newest first, down to one created before `since`."""
        page = await self._call(pager)
        while True:
            for batch in page.data:
                yield batch
                created = self._state(batch).created_at
                if created is not None and created < since:
                    return
            if not page.has_next_page():
                return
            page = await self._call(page.get_next_page)

    def _state(self, batch: Any) -> BatchState:
        raise NotImplementedError


def _rfc3339(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    from datetime import datetime

    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


# How far the provider's clock may be behind ours when looking for a batch created after an
# intent line was written.
_CLOCK_SKEW = 600.0

# Anthropic's error types inside an errored batch result, as cai's error kinds.
_ANTHROPIC_ERRORS: dict[str, type[ProviderError]] = {
    "invalid_request_error": errors.BadRequestError,
    "authentication_error": errors.AuthenticationError,
    "permission_error": errors.AuthenticationError,
    "rate_limit_error": errors.RateLimitError,
    "overloaded_error": errors.OverloadedError,
    "timeout_error": errors.APITimeoutError,
}


class AnthropicBatches(_BatchAPI):
    name = "anthropic"

    def line(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": cid, "params": body}

    def _state(self, batch: Any) -> BatchState:
        counts = batch.request_counts
        return BatchState(
            id=batch.id,
            status=batch.processing_status,
            ended=batch.processing_status == "ended",
            counts={
                k: getattr(counts, k, 0)
                for k in ("processing", "succeeded", "errored", "canceled", "expired")
            },
            created_at=_rfc3339(batch.created_at),
            raw=batch,
        )

    async def create(self, lines: list[dict[str, Any]], token: str) -> BatchState:
        batch = await self._call(lambda: self.client.messages.batches.create(requests=lines))
        return self._state(batch)

    async def retrieve(self, batch_id: str) -> BatchState:
        return self._state(
            await self._call(lambda: self.client.messages.batches.retrieve(batch_id))
        )

    async def cancel(self, batch_id: str) -> BatchState:
        return self._state(await self._call(lambda: self.client.messages.batches.cancel(batch_id)))

    async def find(
        self, intent: dict[str, Any], known: set[str]
    ) -> tuple[BatchState | None, list[str]]:
        # Message Batches carry no metadata: a candidate is one created since the intent with
        # as many requests, and it is ours only if its results name exactly our custom_ids,
        # which can be read once it has ended.
        wanted = set(intent.get("custom_ids") or [])
        since = float(intent.get("created") or 0) - _CLOCK_SKEW
        unsure = []
        async for batch in self._listed(
            lambda: self.client.messages.batches.list(limit=100), since
        ):
            state = self._state(batch)
            if (
                batch.id in known
                or (state.created_at or 0) < since
                or sum(state.counts.values()) != len(wanted)
            ):
                continue
            if not state.ended:
                unsure.append(batch.id)
                continue
            decoder = await self._call(partial(self.client.messages.batches.results, batch.id))
            if {item.custom_id async for item in decoder} == wanted:
                return state, []
        return None, unsure

    async def results(
        self, state: BatchState
    ) -> AsyncIterator[tuple[str, Completion | ProviderError]]:
        from cai.providers.anthropic import parse_message

        decoder = await self._call(lambda: self.client.messages.batches.results(state.id))
        async for item in decoder:
            result = item.result
            kind = getattr(result, "type", None)
            outcome: Completion | ProviderError
            if kind not in ("succeeded", "errored", "expired", "canceled"):
                # A result of another shape says nothing usable: the request goes again.
                outcome = errors.ServerError(
                    f"batch {state.id}: the result of {item.custom_id} is of another shape "
                    f"({str(result)[:200]}); the request is sent again",
                    retry_after=0.0,
                )
            elif kind == "succeeded":
                message = getattr(result, "message", None)
                message = message.to_dict() if hasattr(message, "to_dict") else message
                try:
                    outcome = parse_message(message)
                except ProviderError as e:
                    e.retryable = False  # it was paid for: sending it again would pay twice
                    outcome = e
            elif kind == "errored":
                error = getattr(getattr(result, "error", None), "error", None)
                etype = getattr(error, "type", "api_error")
                cls = _ANTHROPIC_ERRORS.get(etype, errors.ServerError)
                outcome = cls(
                    f"batch {state.id}: {etype}: {getattr(error, 'message', '')}",
                    retry_after=0.0,
                )
            elif kind == "expired":
                outcome = BatchExpiredError(
                    f"batch {state.id} expired before this request ran", retry_after=0.0
                )
            else:
                outcome = BatchCanceledError(
                    f"batch {state.id} was canceled before this request ran", retry_after=0.0
                )
            yield item.custom_id, outcome


class _BatchRefused(errors.BadRequestError):
    """The provider refused a whole batch: every request in it fails with this reason."""


_OPENAI_ENDED = {"completed", "failed", "expired", "cancelled"}


class OpenAIBatches(_BatchAPI):
    name = "openai"
    endpoint = "/v1/chat/completions"

    def line(self, cid: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": cid, "method": "POST", "url": self.endpoint, "body": body}

    def _state(self, batch: Any) -> BatchState:
        counts = batch.request_counts
        return BatchState(
            id=batch.id,
            status=batch.status,
            ended=batch.status in _OPENAI_ENDED,
            counts={
                "total": getattr(counts, "total", 0) if counts else 0,
                "completed": getattr(counts, "completed", 0) if counts else 0,
                "failed": getattr(counts, "failed", 0) if counts else 0,
            },
            created_at=float(batch.created_at) if batch.created_at else None,
            raw=batch,
        )

    async def create(self, lines: list[dict[str, Any]], token: str) -> BatchState:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = await self._call(
            lambda: self.client.files.create(
                file=(f"cai-{token}.jsonl", data, "application/jsonl"), purpose="batch"
            )
        )
        batch = await self._call(
            lambda: self.client.batches.create(
                input_file_id=upload.id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata={"cai_wave": token},
            )
        )
        return self._state(batch)

    async def retrieve(self, batch_id: str) -> BatchState:
        return self._state(await self._call(lambda: self.client.batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> BatchState:
        return self._state(await self._call(lambda: self.client.batches.cancel(batch_id)))

    async def find(
        self, intent: dict[str, Any], known: set[str]
    ) -> tuple[BatchState | None, list[str]]:
        # Each batch carries its wave's token in metadata.cai_wave: a match is certain.
        since = float(intent.get("created") or 0) - _CLOCK_SKEW
        async for batch in self._listed(lambda: self.client.batches.list(limit=100), since):
            if (batch.metadata or {}).get("cai_wave") == intent.get("token"):
                return self._state(batch), []
        return None, []

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self._call(lambda: self.client.files.content(file_id))
        out = []
        for line in content.text.splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                    out.append(item)
        return out

    async def results(
        self, state: BatchState
    ) -> AsyncIterator[tuple[str, Completion | ProviderError]]:
        from cai.providers.openai import parse_chat_completion

        batch = state.raw
        if batch.status == "failed":
            # The whole input was refused (validation); no request ran.
            problems = [e.message for e in (getattr(batch.errors, "data", None) or [])]
            raise _BatchRefused(
                f"batch {state.id} failed: {'; '.join(map(str, problems)) or 'no reason given'}"
            )
        for item in await self._lines(batch.output_file_id) + await self._lines(
            batch.error_file_id
        ):
            cid = item["custom_id"]
            response = item.get("response") or {}
            error = item.get("error") or {}
            outcome: Completion | ProviderError
            if not isinstance(response, dict) or not isinstance(error, dict):
                # A result line of another shape says nothing usable: the request goes again.
                yield (
                    cid,
                    errors.ServerError(
                        f"batch {state.id}: the result of {cid} is of another shape "
                        f"({json.dumps(item)[:200]}); the request is sent again",
                        retry_after=0.0,
                    ),
                )
                continue
            if response.get("status_code") == 200:
                body = response.get("body")
                try:
                    outcome = parse_chat_completion(body)
                except ProviderError as e:
                    e.retryable = False  # it was paid for: sending it again would pay twice
                    outcome = e
            elif error.get("code") == "batch_expired":
                outcome = BatchExpiredError(
                    f"batch {state.id}: {error.get('message')}", retry_after=0.0
                )
            elif error.get("code") == "batch_cancelled":
                outcome = BatchCanceledError(
                    f"batch {state.id}: {error.get('message')}", retry_after=0.0
                )
            elif response:
                body = response.get("body")
                detail = body.get("error") if isinstance(body, dict) else None
                detail = detail if isinstance(detail, dict) else {}
                code = response.get("status_code")
                valid = isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600
                status = code if valid else 500
                outcome = errors.status_error_class(status)(
                    f"batch {state.id}: {detail.get('message') or 'request failed'}",
                    status=status,
                    retry_after=0.0,
                )
            else:
                outcome = errors.ServerError(
                    f"batch {state.id}: {error.get('code')}: {error.get('message')}",
                    retry_after=0.0,
                )
            yield cid, outcome


def batch_api(provider: Any, max_retries: int = 6, timeout: float | None = None) -> _BatchAPI:
    """The batch endpoints of `provider` (an Anthropic or OpenAI provider)."""
    apis = {"anthropic": AnthropicBatches, "openai": OpenAIBatches}
    if not provider.supports_batch or provider.name not in apis:
        raise ConfigError(
            f"--batch goes with --provider anthropic or openai, not {provider.name}; "
            "drop --batch to call it directly"
        )
    return apis[provider.name](provider, max_retries, timeout)


# -- the provider that batches ---------------------------------------------------------------


@dataclass
class _Open:
    """A batch whose results are not yet taken in."""

    id: str
    ids: list[str]
    wave: int
    created: float
    state: BatchState | None = None


class BatchProvider(Provider):
    """A provider whose calls go out in batches; see the module docstring.

    `stop`, when set, ends the waiting: no wave is sent, batches are left running, and every
    waiting chain is abandoned (the pipeline writes no record for it). `on_event(kind, data)`
    gets "wave" ((wave number, the `BatchState`s just created)), "poll" ([(wave, state)] of
    the open batches), "ended" ((wave, state) of a batch whose results were read), "notice"
    (a line for the user).
    """

    batched = True

    def __init__(
        self,
        provider: Any,
        run_dir: str | Path,
        *,
        batch_size: int = 10_000,
        poll_interval: float = 60.0,
        max_retries: int = 6,
        settle: float | None = None,
        on_event: Callable[[str, Any], None] = lambda kind, data: None,
        api: _BatchAPI | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        _check_wave_options(batch_size, poll_interval)
        self.provider = provider
        self.name = provider.name
        self.model = provider.model
        self.api = api or batch_api(provider, max_retries)
        self.batch_size = min(batch_size, self.api.max_requests)
        self.poll_interval = poll_interval
        # A wave goes once no chain has added to it for this long: all are waiting on it.
        self.settle = settle if settle is not None else min(0.25, poll_interval)
        self.on_event = on_event
        self.journal = BatchJournal(run_dir)
        self.stop: asyncio.Event | None = None
        self.stats = BatchStats()
        # The manifest's `config.batch`, kept up to date, so the run's last manifest has it.
        self.report = report if report is not None else {}
        self._pending: dict[str, tuple[dict[str, Any], asyncio.Future[Any]]] = {}
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._members: dict[str, str] = {}  # custom_id -> the open batch it is in
        self._open: dict[str, _Open] = {}
        # Results read that no chain has asked for yet (a success is in the journal already).
        self._results: dict[str, tuple[str, Completion | ProviderError]] = {}
        # custom_id -> (record id, step): where a result goes in the call journal.
        self._calls: dict[str, tuple[str, str]] = {}
        self._journaled: set[str] = set()  # results this provider journaled, not yet taken
        # A batch journaled by an older cai (no `steps`): its answers no chain asked for yet,
        # which only a chain can journal; it is collected once they are all taken.
        self._untaken: dict[str, set[str]] = {}
        self._taken_before: set[str] = set()
        # The run's store while `run_job` has it open (`use_store`): results go to its journal.
        self._store: Any = None
        self._last_added = 0.0
        self._collector: asyncio.Task[None] | None = None
        self._waves = 0
        for entry in self.journal.batches():
            if entry["collected"]:
                continue
            ids = [i for i in entry.get("custom_ids", []) if isinstance(i, str)]
            self._check_url(entry)
            self._remember_calls(entry)
            self._open[entry["id"]] = _Open(
                entry["id"], ids, int(entry.get("wave", 0)), float(entry.get("created", 0))
            )
            self._waves = max(self._waves, int(entry.get("wave", 0)))
            for cid in ids:
                self._members[cid] = entry["id"]
        self.stats.reattached = len(self._open)
        # A kill between creating a batch and journaling its id leaves only its intent line:
        # its requests wait (bodies in `_held`) until the collector finds that batch or learns
        # the provider has none.
        self._intents = {e["id"]: e for e in self.journal.intents()}
        self._held: dict[str, dict[str, Any]] = {}
        self._told: set[str] = set()
        for entry in self._intents.values():
            self._check_url(entry)
            self._remember_calls(entry)
            self._waves = max(self._waves, int(entry.get("wave", 0)))
            for cid in entry.get("custom_ids") or []:
                self._members[cid] = entry["id"]
        self._report()

    def _report(self) -> None:
        self.report.update(self.stats.to_dict())

    def _remember_calls(self, entry: dict[str, Any]) -> None:
        """Each custom_id's (record id, step) from a journal line's `steps`, so its result can
        be journaled even when no chain of this invocation asks for it."""
        ids, steps = entry.get("custom_ids"), entry.get("steps")
        if not isinstance(ids, list) or not isinstance(steps, list) or len(ids) != len(steps):
            return  # a line of an older cai: its results are journaled as chains take them
        for cid, step in zip(ids, steps, strict=True):
            suffix = "-" + step.replace(".", "_") if isinstance(step, str) else None
            if isinstance(cid, str) and suffix and cid.endswith(suffix):
                self._calls[cid] = (cid[: -len(suffix)], step)

    def _check_url(self, entry: dict[str, Any]) -> None:
        """Refuse to look for a batch at another server than the one that created it: it
        would answer 404 there, or be another server's batch of the same id."""
        made_at = entry.get("base_url")
        if isinstance(made_at, str) and made_at != self.api.url:
            raise ConfigError(
                f"batch {entry.get('id')} was created at {made_at}, and this run talks to "
                f"{self.api.url}: resume with --base-url {made_at}"
            )

    def use_store(self, store: Any) -> None:
        """Journal each result into `store` (a `RunStore`, open) as it is read, or stop
        reading results (None): `run_job` hands its store over while it has it open."""
        self._store = store

    # -- what the pipeline sees ------------------------------------------------------------

    @property
    def takes_sampling(self) -> bool:
        return self.provider.takes_sampling

    @property
    def context_window(self) -> int | None:
        return self.provider.context_window

    @property
    def has_tokenizer(self) -> bool:  # type: ignore[override]
        return self.provider.has_tokenizer

    @property
    def supports_logprobs(self) -> bool:  # type: ignore[override]
        return self.provider.supports_logprobs

    @property
    def supports_seed(self) -> bool:  # type: ignore[override]
        return self.provider.supports_seed

    @property
    def supports_json_schema(self) -> bool:  # type: ignore[override]
        return self.provider.supports_json_schema

    def count_tokens(self, text: str) -> int:
        return self.provider.count_tokens(text)

    @property
    def open_batches(self) -> list[str]:
        """Ids of the batches created and not yet taken in (still running, or ended unread)."""
        return list(self._open)

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        call = CURRENT_CALL.get()
        if call is None:
            raise ConfigError("BatchProvider works inside cai.pipeline.run_job only")
        if self.stop is not None and self.stop.is_set():
            raise _Abandoned
        cid = custom_id(*call)
        self._calls[cid] = call
        if cid in self._results:
            return self._take(cid)
        self._start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if cid in self._members:
            self._waiters[cid] = future  # in a batch already: wait for it, never send it again
            if self._members[cid] in self._intents:
                self._held[cid] = self.provider.request_body(messages, sampling, seed=seed)
        else:
            body = self.provider.request_body(messages, sampling, seed=seed)
            self._pending[cid] = (body, future)
            self._last_added = time.monotonic()
        result = await future
        return result

    def _take(self, cid: str) -> Completion:
        batch_id, result = self._results.pop(cid)
        self._untaken.get(batch_id, set()).discard(cid)
        if isinstance(result, ProviderError):
            raise result
        return result

    def _start(self) -> None:
        if self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect())

    # -- the collector ---------------------------------------------------------------------

    async def _collect(self) -> None:
        next_poll = next_find = 0.0
        try:
            while True:
                if self.stop is not None and self.stop.is_set():
                    self._abandon()
                    return
                self._mark_collected()
                if self._intents and time.monotonic() >= next_find:
                    next_find = time.monotonic() + self.poll_interval
                    await self._find_intents()
                now = time.monotonic()
                if self._pending and (
                    len(self._pending) >= self.batch_size or now - self._last_added >= self.settle
                ):
                    await self._send_wave()
                    next_poll = min(next_poll, time.monotonic() + self.poll_interval)
                if self._open and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_interval
                    await self._poll()
                await asyncio.sleep(min(self.settle, self.poll_interval) / 2)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._fail_all(e)
            raise

    def _fail_all(self, error: BaseException) -> None:
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._waiters.clear()

    def _abandon(self) -> None:
        """Stop waiting: what was never sent is dropped (nothing was paid), batches run on."""
        self._fail_all(_Abandoned())

    async def _send_wave(self) -> None:
        pending, self._pending = self._pending, {}
        self._waves += 1
        self.stats.waves += 1
        chunks: list[list[str]] = [[]]
        size = 0
        lines: dict[str, dict[str, Any]] = {}
        for cid, (body, _) in pending.items():
            lines[cid] = self.api.line(cid, body)
            n = len(json.dumps(lines[cid])) + 1
            if chunks[-1] and (
                len(chunks[-1]) >= self.batch_size or size + n > self.api.max_bytes - _BYTES_MARGIN
            ):
                chunks.append([])
                size = 0
            chunks[-1].append(cid)
            size += n
        states = []
        for ids in chunks:
            token = uuid.uuid4().hex[:16]
            intent = {
                "event": "intent",
                "id": f"intent-{token}",
                "provider": self.name,
                "model": self.model,
                "wave": self._waves,
                "created": time.time(),
                "requests": len(ids),
                "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
                "token": token,
                "custom_ids": ids,
                # Each request's step (its record is the custom_id's start): where its answer
                # goes in calls.jsonl, whichever invocation reads it.
                "steps": [self._calls[cid][1] for cid in ids],
                "base_url": self.api.url,
            }
            # Before the batch exists: a kill before its id is journaled leaves this, and the
            # next run looks for the batch instead of paying for the requests again.
            self.journal.append(intent)
            try:
                state = await self.api.create([lines[cid] for cid in ids], token)
            except ProviderError as e:
                self.journal.append({"event": "unsent", "id": intent["id"], "token": token})
                for cid in ids:
                    future = pending[cid][1]
                    if not future.done():
                        future.set_exception(e)
                continue
            # On disk before anything else: this batch is being paid for.
            self.journal.append(
                {
                    "event": "created",
                    "id": state.id,
                    "provider": self.name,
                    "model": self.model,
                    "wave": self._waves,
                    "created": time.time(),
                    "requests": len(ids),
                    "token": token,
                    "custom_ids": ids,
                    "steps": intent["steps"],
                    "base_url": intent["base_url"],
                }
            )
            self.stats.batches += 1
            self.stats.requests += len(ids)
            self._open[state.id] = _Open(state.id, ids, self._waves, time.time(), state)
            for cid in ids:
                self._members[cid] = state.id
                self._waiters[cid] = pending[cid][1]
            states.append(state)
        self._report()
        if states:
            self.on_event("wave", (self._waves, states))

    async def _find_intents(self) -> None:
        """Settle each intent left by a killed run: re-attach to its batch, or send its
        requests again once the provider surely has no such batch."""
        known = {e["id"] for e in self.journal.batches()}
        for intent_id, intent in list(self._intents.items()):
            ids = [c for c in intent.get("custom_ids") or [] if isinstance(c, str)]
            wave = int(intent.get("wave", 0))
            try:
                state, unsure = await self.api.find(intent, known)
            except errors.AuthenticationError as e:
                self._fail_all(e)
                raise
            except ProviderError as e:
                self.on_event("notice", f"could not list batches ({e}); trying again")
                return
            if state is None and unsure:
                if intent_id not in self._told:
                    self._told.add(intent_id)
                    self.on_event(
                        "notice",
                        f"wave {wave}'s batch of {len(ids)} requests was created by a run "
                        f"killed before it journaled the id; it may be {', '.join(unsure)} "
                        "(same request count, created since), but Anthropic batches carry no "
                        "tag, so cai holds those requests until that batch ends and its "
                        "custom_ids can be compared. To stop waiting, cancel it at the provider "
                        "(cai batch cancel knows only journaled batches); its canceled requests "
                        "then go out again",
                    )
                continue
            del self._intents[intent_id]
            if state is not None:
                self.journal.append(
                    {
                        **{k: v for k, v in intent.items() if k != "digest"},
                        "event": "created",
                        "id": state.id,
                        "found": True,
                    }
                )
                self.stats.reattached += 1
                self.stats.batches += 1
                self._open[state.id] = _Open(state.id, ids, wave, time.time(), state)
                for cid in ids:
                    self._members[cid] = state.id
                self.on_event(
                    "notice",
                    f"re-attached to {state.id}, wave {wave}'s batch, found at the "
                    "provider (a run was killed before journaling its id)",
                )
                continue
            self.journal.append({"event": "unsent", "id": intent_id, "token": intent["token"]})
            for cid in ids:
                if self._members.get(cid) == intent_id:
                    del self._members[cid]
                if cid in self._held and cid in self._waiters:
                    self._pending[cid] = (self._held.pop(cid), self._waiters.pop(cid))
                    self._last_added = time.monotonic()
        self._report()

    async def _poll(self) -> None:
        for batch in list(self._open.values()):
            if self.stop is not None and self.stop.is_set():
                return
            try:
                state = await self.api.retrieve(batch.id)
            except errors.AuthenticationError as e:
                self._fail_all(e)
                raise
            except ProviderError as e:
                self._stop_if_gone(batch.id, e)
                self.on_event("notice", f"could not look at batch {batch.id} ({e}); trying again")
                continue
            batch.state = state
            if not state.ended or self._store is None:
                continue  # results are read only while they can be journaled at once
            try:
                await self._take_in(batch, state)
            except errors.AuthenticationError as e:
                self._fail_all(e)
                raise
            except ProviderError as e:  # results stay with the provider: read them next time
                self._stop_if_gone(batch.id, e)
                self.on_event("notice", f"could not read batch {batch.id}'s results ({e})")
        self.on_event("poll", [(b.wave, b.state) for b in self._open.values() if b.state])

    def _stop_if_gone(self, batch_id: str, error: ProviderError) -> None:
        gone = self.api.gone(batch_id, error)
        if gone is not None:
            self._fail_all(gone)
            raise gone from None

    async def _take_in(self, batch: _Open, state: BatchState) -> None:
        """Journal an ended batch's answers, then hand its results to the chains waiting on
        them and keep the rest for chains that may ask later. The batch is collected once
        every answer is in the call journal."""
        outcomes: dict[str, Completion | ProviderError] = {}
        try:
            async for cid, outcome in self.api.results(state):
                # One id answered twice (an error, then a success): the success was paid for.
                if not isinstance(outcomes.get(cid), Completion):
                    outcomes[cid] = outcome
        except _BatchRefused as e:
            for cid in batch.ids:
                outcomes.setdefault(cid, e)
        for cid in batch.ids:
            if cid not in outcomes:  # no line at all: not run before the batch stopped
                cls = BatchExpiredError if state.status == "expired" else BatchCanceledError
                outcome = cls(f"batch {batch.id} ({state.status}) did not run this request")
                outcome.retry_after = 0.0
                outcomes[cid] = outcome
        # A result another batch answers (sent again there after failing here) is not ours.
        ours = {c: o for c, o in outcomes.items() if self._members.get(c) == batch.id}
        unmapped = set()
        # On disk before anything else, needed by this invocation or not: each was paid for.
        for cid, outcome in ours.items():
            if not isinstance(outcome, Completion):
                continue
            if cid in self._calls:
                # Named as the pipeline names its lines, so the ledger prices it at batch rate.
                tag = {"provider": self.name, "model": self.model, "mode": "batch"}
                self._store.append_call(*self._calls[cid], {**outcome.to_dict(), **tag})
                self._journaled.add(cid)
            elif cid not in self._waiters:
                unmapped.add(cid)
        if unmapped:
            self._untaken[batch.id] = unmapped
        else:
            self._store.sync()
            self.journal.append({"event": "collected", "id": batch.id})
        for cid, outcome in ours.items():
            self._settle_one(batch.id, cid, outcome)
        del self._open[batch.id]
        self.on_event("ended", (batch.wave, state))
        self._report()

    def _settle_one(self, batch_id: str, cid: str, outcome: Completion | ProviderError) -> None:
        del self._members[cid]
        kind = (
            "succeeded"
            if isinstance(outcome, Completion)
            else {"batch_expired": "expired", "batch_canceled": "canceled"}.get(
                outcome.kind, "errored"
            )
        )
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        future = self._waiters.pop(cid, None)
        if future is not None and not future.done():
            if isinstance(outcome, ProviderError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        else:
            self._results[cid] = (batch_id, outcome)

    def _mark_collected(self) -> None:
        """Note each batch of an older cai's journal whose answers were all taken, one tick
        after the last: by then each chain woken has journaled its reply."""
        for batch_id in [b for b, rest in self._untaken.items() if not rest]:
            if batch_id in self._taken_before:
                self.journal.append({"event": "collected", "id": batch_id})
                del self._untaken[batch_id]
                self._taken_before.discard(batch_id)
            else:
                self._taken_before.add(batch_id)

    def journaled(self, record_id: str, step: str) -> bool:
        """Whether the reply to this call is in the run's journal already: a batch's answers
        are journaled as they are read."""
        cid = custom_id(record_id, step)
        if cid in self._journaled:
            self._journaled.discard(cid)
            return True
        return False

    async def finish(self) -> None:
        """After a run that ended by itself: the answers no chain asked for are in the
        journal, or (a batch of an older cai) stay with the provider for the next run."""
        self._results.clear()

    async def aclose(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(BaseException):
                await self._collector
            self._collector = None
        await self.provider.aclose()

    def close(self) -> None:
        self.provider.close()


# -- managing a run's batches ----------------------------------------------------------------


async def batch_states(api: _BatchAPI, run_dir: str | Path) -> list[tuple[dict[str, Any], Any]]:
    """Each batch of the run, as journaled, with its provider state (or the error getting it)."""
    out: list[tuple[dict[str, Any], Any]] = []
    for entry in BatchJournal(run_dir).batches():
        try:
            out.append((entry, await api.retrieve(entry["id"])))
        except ProviderError as e:
            out.append((entry, e))
    return out


async def cancel_batches(api: _BatchAPI, run_dir: str | Path) -> list[tuple[str, Any]]:
    """Cancel every batch of the run that has not ended; (id, new state or error) for each."""
    out: list[tuple[str, Any]] = []
    for entry, state in await batch_states(api, run_dir):
        if isinstance(state, BatchState) and not state.ended:
            try:
                out.append((entry["id"], await api.cancel(entry["id"])))
            except ProviderError as e:
                out.append((entry["id"], e))
    return out


def check_batch_options(
    provider: str,
    batch_size: int,
    poll_interval: float,
    *,
    engine: str = "default",
    rpm: float | None = None,
    tpm: float | None = None,
) -> int:
    """Refuse options that do not go with --batch; the number of chains to run at once (each
    waits on one request of a wave, so this many fill a wave of --batch-size)."""
    if provider not in LIMITS:
        raise ConfigError(
            f"--batch goes with --provider anthropic or openai, not {provider}; "
            "drop --batch to call it directly"
        )
    if engine != "default":
        raise ConfigError("--batch runs in this process: drop --engine, or drop --batch")
    if rpm is not None or tpm is not None:
        raise ConfigError(
            "--rpm and --tpm pace interactive calls; a batch API queues requests itself: "
            "drop them with --batch"
        )
    _check_wave_options(batch_size, poll_interval)
    return min(batch_size, LIMITS[provider][0])


def _check_wave_options(batch_size: int, poll_interval: float) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    # nan and inf too: an infinite wait would never look at a batch again.
    if not (math.isfinite(poll_interval) and poll_interval > 0):
        raise ConfigError(
            f"--poll-interval must be a positive number of seconds, got {poll_interval}"
        )


def run_batch_api(
    run_dir: str | Path,
    base_url: str | None = None,
    *,
    timeout: float = 600.0,
    max_retries: int = 6,
) -> tuple[Any, _BatchAPI]:
    """The provider a batch run used (from its manifest) and its batch endpoints, to look at
    or cancel its batches, each call bounded by `timeout` seconds; `ConfigError` when the run
    made none."""
    from cai.providers import create_provider
    from cai.rundir import read_manifest

    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    run_dir = Path(run_dir)
    if not BatchJournal(run_dir).batches():
        raise ConfigError(
            f"{run_dir} has no batches ({BATCHES_FILE} is missing or empty): "
            "was it run with cai generate --batch or cai label --batch?"
        )
    manifest = read_manifest(run_dir)
    config = manifest.config if manifest is not None else {}
    provider = create_provider(
        str(config.get("provider")),
        model=config.get("model"),
        base_url=base_url or config.get("base_url"),
        timeout=timeout,
        connections=4,
    )
    return provider, batch_api(provider, max_retries, timeout)


def describe_batches(rows: list[tuple[dict[str, Any], Any]], now: float | None = None) -> str:
    """`cai batch status`: one line per batch: id, provider status, counts, age, and ours."""
    now = time.time() if now is None else now
    lines = []
    for entry, state in rows:
        age = _age(now - float(entry.get("created") or now))
        ours = "taken in" if entry.get("collected") else "not taken in"
        if isinstance(state, BatchState):
            counts = ", ".join(f"{k} {v}" for k, v in state.counts.items() if v or k == "total")
            lines.append(
                f"{state.id}  {state.status:<11} wave {entry.get('wave', '?')}, "
                f"{entry.get('requests', '?')} requests ({counts}), {age} old, results {ours}"
            )
        else:
            lines.append(f"{entry['id']}  unknown     could not be looked up: {state}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def check_no_open_batches(run_dir: str | Path) -> None:
    """Refuse an interactive resume while batches of the run are not taken in: their requests
    would be bought a second time."""
    journal = BatchJournal(run_dir)
    waiting = [b["id"] for b in journal.batches() if not b["collected"]]
    # An intent not settled may be a batch the provider created: only --batch looks for it.
    waiting += [e["id"] for e in journal.intents()]
    if waiting:
        raise ConfigError(
            f"{run_dir} has {len(waiting)} batch(es) whose results are not taken in yet "
            f"({', '.join(waiting[:3])}{', ...' if len(waiting) > 3 else ''}); resume it with "
            "--batch first, so that nothing is paid twice (cai batch status shows them)"
        )
